//! Benchmarks behind `micn bench`: measurements a user can rerun, reported as tables (nothing
//! here is a pass/fail test).
//! - [`throughput`]: samples/s of a training step, every model ± MICN.
pub mod throughput;
