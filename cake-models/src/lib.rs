//! cake-models (work in progress)
