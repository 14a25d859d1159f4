//! cake-longbench (work in progress)
