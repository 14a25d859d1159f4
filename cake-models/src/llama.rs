//! llama (in progress)
