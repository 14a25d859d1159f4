//! qwen2 (in progress)
