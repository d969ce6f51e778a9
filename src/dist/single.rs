//! The world of one rank: every collective is the identity. The training step still calls it,
//! so a single-process run takes the same code path as a distributed one.
use super::{CommError, Communicator, Gathered, Result};

/// World size 1.
#[derive(Debug, Default, Clone, Copy)]
pub struct SingleProcess;

impl Communicator for SingleProcess {
    fn rank(&self) -> usize {
        0
    }
    fn size(&self) -> usize {
        1
    }
    fn local_rank(&self) -> usize {
        0
    }
    fn backend(&self) -> &'static str {
        "single"
    }
    fn all_reduce_sum_f32(&self, _buf: &mut [f32]) -> Result<()> {
        Ok(())
    }
    fn all_gather_bytes(&self, local: &[u8]) -> Result<Gathered<u8>> {
        Ok(Gathered { data: local.to_vec(), counts: vec![local.len()] })
    }
    fn broadcast_bytes(&self, root: usize, _buf: &mut [u8]) -> Result<()> {
        if root != 0 {
            return Err(CommError::BadRoot { rank: 0, root, size: 1 });
        }
        Ok(())
    }
    fn barrier(&self) -> Result<()> {
        Ok(())
    }
}
