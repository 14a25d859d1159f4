//! cake-scoring-fit (work in progress)
