//! Experiments: `micn sweep` runs a configuration over a grid of settings with repeats, and
//! `micn report` turns finished runs into tables (mean ± std over repeats) and plots.
//!
//! - [`sweep`]: plan (grid × repeats → run directories), skip finished runs, resume unfinished
//!   ones, run each as a child `micn train` / `micn-launch` job.
//! - [`report`]: find runs, group them by the configuration keys that differ, write markdown,
//!   CSV and figures.
//! - [`plot`]: line charts with error bars as PNG and SVG.
pub mod plot;
pub mod report;
pub mod sweep;
