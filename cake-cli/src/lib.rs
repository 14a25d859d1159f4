//! cake-cli (work in progress)
