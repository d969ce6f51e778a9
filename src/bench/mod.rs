//! Benchmarks behind `micn bench`: measurements a user can rerun, reported as tables (nothing
//! here is a pass/fail test).
//! - [`prepare`]: MB/s, reviews/s and peak memory of `micn prepare` on synthetic dumps.
//! - [`checkpoint`]: save and load time of a Books-sized checkpoint.
//! - [`dist`]: bytes per step against vocabulary size, 1 vs 2 ranks, communication share.
//! - [`quality`]: test AUC of every model ± MICN over seeds on Books-style synthetic data.
//! - [`throughput`]: samples/s of a training step, every model ± MICN.
//!
//! Every benchmark that trains takes a [`BenchDevice`] (`--device cpu|cuda`, CPU by default).
pub mod checkpoint;
pub mod dist;
pub mod prepare;
pub mod quality;
pub mod throughput;

use crate::train::TrainError;

/// Where a benchmark computes, from `--device`. No `auto`: a benchmark states what it measured.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, clap::ValueEnum, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum BenchDevice {
    #[default]
    Cpu,
    /// GPU 0 (`CUDA_VISIBLE_DEVICES` chooses another); an error where libtorch sees none.
    Cuda,
}

impl BenchDevice {
    /// The same choice as a configuration's `device`.
    pub fn config(self) -> crate::config::Device {
        match self {
            BenchDevice::Cpu => crate::config::Device::Cpu,
            BenchDevice::Cuda => crate::config::Device::Cuda,
        }
    }

    /// The libtorch device, chosen (and logged) as training chooses it; asking for CUDA where
    /// there is none is [`TrainError::NoCuda`].
    pub fn resolve(self) -> Result<tch::Device, TrainError> {
        crate::train::trainer::pick_device(self.config(), 0)
    }
}

/// Wait for the device's queued work, so that a clock read next measures it.
pub fn synchronize(device: tch::Device) {
    if let tch::Device::Cuda(index) = device {
        tch::Cuda::synchronize(index as i64);
    }
}

/// A short name of a device for tables: "cpu", "cuda:0 (NVIDIA H200)".
pub fn device_label(device: tch::Device) -> String {
    match device {
        tch::Device::Cuda(index) => match crate::doctor::cuda::gpu(index) {
            Some(gpu) => format!("cuda:{index} ({})", gpu.name),
            None => format!("cuda:{index}"),
        },
        _ => "cpu".into(),
    }
}
