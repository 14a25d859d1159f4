//! GGUF container (in progress)
