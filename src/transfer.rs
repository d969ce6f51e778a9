//! Every copy between the host and the device that a training step makes goes through here, and
//! is counted. (Evaluation, model building, loading and saving still copy by themselves: they are
//! not per-step costs.)
//!
//! On a GPU each of these is a blocking copy (a download always waits for the device; an upload
//! from pageable memory waits too), so their number per step is what keeps a device busy or
//! idle. The count is per thread (a thread rank, a test) and counts a call the same way whatever
//! the tensor's device, so a test on the CPU measures what a CUDA step would do. Code that copies
//! between host and device calls these functions instead of `to_device`, `Vec::try_from`,
//! `double_value` or `int64_value`.
use std::cell::Cell;

use tch::{Device, Kind, Tensor};

/// Transfers made so far on this thread.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Counts {
    /// Host → device copies.
    pub uploads: u64,
    /// Device → host copies (reads of values, scalars included).
    pub downloads: u64,
}

impl Counts {
    pub fn total(self) -> u64 {
        self.uploads + self.downloads
    }

    /// The transfers made since `earlier` (a snapshot of [`counts`]).
    pub fn since(self, earlier: Counts) -> Counts {
        Counts { uploads: self.uploads - earlier.uploads, downloads: self.downloads - earlier.downloads }
    }
}

thread_local! {
    static COUNTS: Cell<Counts> = const { Cell::new(Counts { uploads: 0, downloads: 0 }) };
}

/// The transfers this thread has made so far (subtract two snapshots with [`Counts::since`]).
pub fn counts() -> Counts {
    COUNTS.with(Cell::get)
}

fn record(upload: bool) {
    COUNTS.with(|c| {
        let mut n = c.get();
        if upload {
            n.uploads += 1;
        } else {
            n.downloads += 1;
        }
        c.set(n);
    });
}

/// A tensor's values on the host as f32, flattened (from any device and kind): one download.
pub fn download_f32(t: &Tensor) -> Vec<f32> {
    record(false);
    Vec::<f32>::try_from(t.to_device(Device::Cpu).to_kind(Kind::Float).flatten(0, -1)).expect("f32 values")
}

/// A tensor's values on the host as i64, flattened: one download.
pub fn download_i64(t: &Tensor) -> Vec<i64> {
    record(false);
    Vec::<i64>::try_from(t.to_device(Device::Cpu).to_kind(Kind::Int64).flatten(0, -1)).expect("i64 values")
}

/// `values` as a 1-D f32 tensor on `device`: one upload.
pub fn upload_f32(values: &[f32], device: Device) -> Tensor {
    record(true);
    Tensor::from_slice(values).to_device(device)
}

/// `values` as a 1-D i64 tensor on `device`: one upload.
pub fn upload_i64(values: &[i64], device: Device) -> Tensor {
    record(true);
    Tensor::from_slice(values).to_device(device)
}

/// Consecutive pieces of a 1-D tensor (one packed transfer cut back into its parts), as views.
pub fn split(packed: &Tensor, lengths: &[usize]) -> Vec<Tensor> {
    let mut start = 0;
    lengths
        .iter()
        .map(|&n| {
            let piece = packed.narrow(0, start, n as i64);
            start += n as i64;
            piece
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_transfer_is_counted_on_its_own_thread() {
        let before = counts();
        let t = upload_f32(&[1.0, 2.0, 3.0], Device::Cpu);
        let ids = upload_i64(&[4, 5], Device::Cpu);
        assert_eq!(download_f32(&t), [1.0, 2.0, 3.0]);
        assert_eq!(download_i64(&ids), [4, 5]);
        assert_eq!(download_f32(&ids), [4.0, 5.0]);
        assert_eq!(counts().since(before), Counts { uploads: 2, downloads: 3 });
        // Another thread counts its own.
        let other = std::thread::spawn(|| {
            let _ = download_f32(&Tensor::from_slice(&[1.0f32]));
            counts()
        });
        assert_eq!(other.join().unwrap(), Counts { uploads: 0, downloads: 1 });
        assert_eq!(counts().since(before).total(), 5);
    }

    #[test]
    fn a_packed_transfer_splits_back_into_its_parts() {
        let parts = split(&Tensor::from_slice(&[1i64, 2, 3, 4, 5, 6]), &[2, 0, 4]);
        assert_eq!(parts.iter().map(download_i64).collect::<Vec<_>>(), [vec![1, 2], vec![], vec![3, 4, 5, 6]]);
    }
}
