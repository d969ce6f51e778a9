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

/// Host values gathered for one upload: i64 pieces as they are, f32 pieces two to an i64 word
/// (their bits, in the host's byte order, which the device shares), each piece read back on the
/// device as a view of the one buffer.
#[derive(Debug, Default)]
pub struct Upload {
    words: Vec<i64>,
    pieces: Vec<PieceAt>,
}

/// A piece of an [`Upload`], to read back from its [`Uploaded`] buffer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Piece(usize);

#[derive(Debug, Clone, Copy)]
struct PieceAt {
    /// First word.
    start: usize,
    /// Values (not words).
    len: usize,
    float: bool,
}

impl Upload {
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds i64 values.
    pub fn i64(&mut self, values: &[i64]) -> Piece {
        self.pieces.push(PieceAt { start: self.words.len(), len: values.len(), float: false });
        self.words.extend_from_slice(values);
        Piece(self.pieces.len() - 1)
    }

    /// Adds f32 values (padded to a whole word).
    pub fn f32(&mut self, values: &[f32]) -> Piece {
        self.pieces.push(PieceAt { start: self.words.len(), len: values.len(), float: true });
        self.words.extend(values.chunks(2).map(|pair| {
            let mut bytes = [0u8; 8];
            for (k, x) in pair.iter().enumerate() {
                bytes[4 * k..][..4].copy_from_slice(&x.to_ne_bytes());
            }
            i64::from_ne_bytes(bytes)
        }));
        Piece(self.pieces.len() - 1)
    }

    /// Whether nothing was added.
    pub fn is_empty(&self) -> bool {
        self.pieces.is_empty()
    }

    /// Every piece on `device`: one upload (none when empty). On a GPU the words go through
    /// page-locked memory, copied without blocking the host: the copy is queued on the device's
    /// stream ahead of the step's kernels, and the host goes on building the step meanwhile.
    pub fn send(self, device: Device) -> Uploaded {
        if self.words.is_empty() {
            return Uploaded { buffer: Tensor::zeros([0], (Kind::Int64, device)), pieces: self.pieces, _staging: None };
        }
        if !device.is_cuda() {
            return Uploaded { buffer: upload_i64(&self.words, device), pieces: self.pieces, _staging: None };
        }
        record(true);
        // `_pin_memory`, not `pin_memory`: libtorch 2.11 deprecates the device argument tch
        // always passes to `pin_memory` (and its `is_pinned` check), with a warning at every call.
        let staging = Tensor::from_slice(&self.words).internal_pin_memory(device);
        let buffer = staging.to_device_(device, Kind::Int64, true, false);
        Uploaded { buffer, pieces: self.pieces, _staging: Some(staging) }
    }
}

/// The buffer of an [`Upload`] on the device.
#[derive(Debug)]
pub struct Uploaded {
    buffer: Tensor,
    pieces: Vec<PieceAt>,
    /// The page-locked host copy a non-blocking upload reads from, kept until the step ends.
    _staging: Option<Tensor>,
}

impl Uploaded {
    /// A piece as a 1-D view: i64 or f32, as it was added.
    pub fn get(&self, piece: Piece) -> Tensor {
        let at = self.pieces[piece.0];
        if !at.float {
            return self.buffer.narrow(0, at.start as i64, at.len as i64);
        }
        let words = at.len.div_ceil(2) as i64;
        self.buffer.narrow(0, at.start as i64, words).view_dtype(Kind::Float).narrow(0, 0, at.len as i64)
    }
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
    fn one_upload_carries_i64_and_f32_pieces_back_bit_for_bit() {
        let before = counts();
        let mut upload = Upload::new();
        let odd = [1.5f32, -0.0, f32::MIN_POSITIVE];
        let (a, b, c, d, e) = (
            upload.i64(&[7, -3, i64::MAX]),
            upload.f32(&odd),
            upload.i64(&[]),
            upload.f32(&[f32::NAN, 2.25]),
            upload.i64(&[i64::MIN]),
        );
        let sent = upload.send(Device::Cpu);
        assert_eq!(counts().since(before), Counts { uploads: 1, downloads: 0 });
        assert_eq!(Vec::<i64>::try_from(sent.get(a)).unwrap(), [7, -3, i64::MAX]);
        let floats = Vec::<f32>::try_from(sent.get(b)).unwrap();
        assert_eq!(floats.iter().map(|x| x.to_bits()).collect::<Vec<_>>(), odd.map(f32::to_bits));
        assert_eq!(sent.get(c).size(), [0]);
        let floats = Vec::<f32>::try_from(sent.get(d)).unwrap();
        assert!(floats[0].is_nan() && floats[1] == 2.25);
        assert_eq!(Vec::<i64>::try_from(sent.get(e)).unwrap(), [i64::MIN]);
        assert_eq!((sent.get(b).kind(), sent.get(e).kind()), (Kind::Float, Kind::Int64));
    }
}
