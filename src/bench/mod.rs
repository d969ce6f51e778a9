//! Benchmarks behind `micn bench`: measurements a user can rerun, reported as tables (nothing
//! here is a pass/fail test).
//! - [`prepare`]: MB/s, reviews/s and peak memory of `micn prepare` on synthetic dumps.
//! - [`checkpoint`]: save and load time of a Books-sized checkpoint.
//! - [`dist`]: bytes per step against vocabulary size, 1 vs 2 ranks, communication share.
//! - [`quality`]: test AUC of every model ± MICN over seeds on Books-style synthetic data.
//! - [`throughput`]: samples/s of a training step, every model ± MICN.
pub mod checkpoint;
pub mod dist;
pub mod prepare;
pub mod quality;
pub mod throughput;
