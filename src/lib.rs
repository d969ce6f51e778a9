//! micn: a data-parallel trainer for click-through-rate models on user-behaviour sequences
//! (Wide&Deep, DIN, DIEN), each joined by the Multi-Interest Capsule Network (MICN) auxiliary
//! task.
//!
//! Map of the crate:
//! - [`bench`]: the benchmarks behind `micn bench`.
//! - [`checkpoint`]: atomic, checksummed checkpoints and their selection for `--resume`.
//! - [`config`]: TOML configuration, defaults from the papers, one validation pass, `--set`.
//! - [`dist`]: the [`dist::Communicator`] interface and its back-ends (single, threads, MPI).
//! - [`experiment`]: `micn sweep` (grids of settings × repeats) and `micn report` (tables, plots).
//! - [`doctor`]: what this build and machine offer (libtorch, CUDA, MPI, threads).
//! - [`io_error`]: the one I/O error type, which names its path.
//! - [`json_doc`]: the JSON documents `--json` prints, arrays of plain values on one line.
//! - [`logging`]: `tracing` set-up, with the rank on every line.
//! - [`metrics`]: exact AUC, GAUC and log-loss, pure functions over slices.
//! - [`progress`]: progress lines for long work (training's bar, reading raw inputs).
//! - [`data`]: raw Amazon / DIEN / synthetic inputs → prepared rkyv archives → batches.
//! - [`train`]: the training step (two gradient buffers, φ, exchange), Adam, the loop.
//! - [`rng`]: the project's own seeded generators; every random draw derives from a seed.
//! - [`transfer`]: every host↔device copy, counted per thread.
//! - [`micn`]: the MICN auxiliary task: capsule routing, label-aware attention, sampled softmax.
//! - [`model`]: embedding tables (`e_orig ⊕ e_aux`), layers, Wide&Deep / DIN / DIEN.
//! - [`network`]: the main model and MICN assembled under fixed paths, and each variable's role
//!   (its gradient group, whether it is updated by rows).
//! - [`oom`]: running out of memory, in libtorch or in micn's own code, as one error line.
pub mod bench;
pub mod checkpoint;
pub mod config;
pub mod data;
pub mod dist;
pub mod doctor;
pub mod experiment;
pub mod io_error;
pub mod json_doc;
pub mod logging;
pub mod metrics;
pub mod micn;
pub mod model;
pub mod network;
pub mod oom;
pub mod progress;
pub mod rng;
pub mod run_dir;
pub mod train;
pub mod transfer;
