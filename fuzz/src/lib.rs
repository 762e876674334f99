//! Harness code shared by the fuzz targets and the replay examples.

pub mod session;
