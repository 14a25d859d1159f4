//! mistral (in progress)
