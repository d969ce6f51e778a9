//! Deep Interest Network (Zhou et al., KDD 2018) as SPEC §2.2 fixes it: an attention unit scores
//! each history item against the target, and a Dice head reads
//! `[user, e_target, sum(history), e_target·sum(history), attended]`.
use tch::{nn, Tensor};

use super::batch_stats::Mode;
use super::embeddings::MainInput;
use super::layers::{masked_sum, ActivationKind, AttentionUnit, Mlp};
use super::{InputDims, MainOutput};
use crate::config::ModelConfig;

/// DIN.
#[derive(Debug)]
pub struct Din {
    attention: AttentionUnit,
    head: Mlp,
}

impl Din {
    pub fn new(p: &nn::Path, cfg: &ModelConfig, dims: InputDims) -> Self {
        let w = dims.item;
        Self {
            attention: AttentionUnit::new(&(p / "attention"), w, w, &cfg.attention_hidden),
            head: Mlp::new(&(p / "head"), dims.user + 4 * w, &cfg.head_hidden, 1, ActivationKind::Dice),
        }
    }

    /// # Shapes
    /// `user [b, d]`, `target [b, w]`, `hist [b, T, w]`, `hist_mask [b, T]` → `logit [b]`
    pub fn forward(&self, x: &MainInput, mode: Mode) -> MainOutput {
        let hist_sum = masked_sum(&x.hist, &x.hist_mask); // [b, w]
        let attended = self.attention.forward(&x.target, &x.hist, &x.hist_mask, &x.ids.real); // [b, w]
        let input = Tensor::cat(&[&x.user, &x.target, &hist_sum, &(&x.target * &hist_sum), &attended], -1);
        MainOutput { logit: self.head.forward(&input, mode).squeeze_dim(-1), aux_loss: None, user_vector: None }
    }
}
