//! Wide & Deep (Cheng et al., DLRS 2016) as DIEN's reference code builds it: a deep PReLU MLP
//! over the batch-normalised `[user, e_target, masked-sum(history)]`, plus a wide linear layer
//! over `[e_target, Σ history, e_target ⊙ Σ history]`, their logits added.
//!
//! The normalisation matters: the summed history's values are about 30 times larger than the
//! target's embedding, which carries the signal, so without it the deep part barely learns.
//! DIEN's script calls its batch normalisation without `training=True`, which never normalises;
//! here it is real, over the global batch (as Dice's statistics are).
//!
//! `model.wide_crosses` adds the hashed cross-product features of SPEC §2.2 to the wide part. The
//! crosses are (target item × history category) and (target category × history category),
//! one pair of features per real history slot. Each is hashed into `wide_buckets` weights by a
//! fixed Carter–Wegman hash `((a·A + b·B + C) mod P) mod buckets` with `P = 2³¹ − 1` and
//! constants per cross kind; all arithmetic stays below 2⁶³, so it is exact in i64 on any device.
use tch::nn::{self, Module};
use tch::{Kind, Tensor};

use super::batch_stats::Mode;
use super::embeddings::{HostIds, MainInput};
use super::layers::{masked_sum, ActivationKind, BatchNorm, Mlp};
use super::{InputDims, MainOutput, RowLookups};
use crate::config::ModelConfig;

/// Path of the hashed cross weights under the model's path.
const CROSS_WEIGHTS: &str = "crosses.weights";
/// The Mersenne prime 2³¹ − 1.
const PRIME: i64 = (1 << 31) - 1;
/// `(A, B, C)` of the item × category cross; arbitrary constants below 2³⁰.
const ITEM_CROSS: (i64, i64, i64) = (0x2545_F491, 0x1B87_3593, 0x0CC9_E2D5);
/// `(A, B, C)` of the category × category cross.
const CAT_CROSS: (i64, i64, i64) = (0x3C6E_F372, 0x27D4_EB2F, 0x165E_C3B9);

/// Bucket of the cross `(a, b)`.
///
/// # Shapes
/// `a`, `b` broadcastable i64 → their broadcast shape, values in `0..buckets`
pub fn cross_bucket(a: &Tensor, b: &Tensor, constants: (i64, i64, i64), buckets: i64) -> Tensor {
    let (ka, kb, kc) = constants;
    // Each product is below 2³¹·2³⁰ = 2⁶¹, so the sum stays below 2⁶³.
    ((a.remainder(PRIME) * ka + b.remainder(PRIME) * kb + kc).remainder(PRIME)).remainder(buckets)
}

/// [`cross_bucket`] of one pair, on the host: the same arithmetic (`rem_euclid` is libtorch's
/// `remainder` on integers, whose result takes the divisor's sign).
fn cross_bucket_of(a: i64, b: i64, (ka, kb, kc): (i64, i64, i64), buckets: i64) -> i64 {
    (a.rem_euclid(PRIME) * ka + b.rem_euclid(PRIME) * kb + kc).rem_euclid(PRIME).rem_euclid(buckets)
}

/// The hashed crosses: one weight per bucket and a bias.
#[derive(Debug)]
struct Wide {
    /// `[buckets, 1]`, zero-initialised as a linear model's weights usually are.
    weights: Tensor,
    bias: Tensor,
    buckets: i64,
}

impl Wide {
    fn new(p: &nn::Path, buckets: i64) -> Self {
        Self { weights: p.zeros("weights", &[buckets, 1]), bias: p.zeros("bias", &[1]), buckets }
    }

    /// The buckets a batch looks up, from its ids on the host: every slot's item cross, then
    /// every slot's category cross (`[2, b, T]`, row-major), as [`Wide::forward`] reads them.
    fn buckets_of(&self, host: &HostIds<'_>) -> Vec<i64> {
        let steps = host.hist_cats.len().checked_div(host.items.len()).unwrap_or(0);
        [(host.items, ITEM_CROSS), (host.cats, CAT_CROSS)]
            .into_iter()
            .flat_map(|(firsts, constants)| {
                firsts.iter().zip(host.hist_cats.chunks(steps.max(1))).flat_map(move |(&a, hist_cats)| {
                    hist_cats.iter().map(move |&c| cross_bucket_of(a, c, constants, self.buckets))
                })
            })
            .collect()
    }

    /// The wide logit: the sum of the weights of every real slot's two crosses, plus the bias;
    /// the weights read from `planned` (`[2·b·T, 1]`, in the order of [`Wide::buckets_of`]) when
    /// a training step gives them.
    ///
    /// # Shapes
    /// `items [b]`, `cats [b]`, `hist_cats [b, T]`, `mask [b, T]` → `[b]`
    fn forward(
        &self,
        items: &Tensor,
        cats: &Tensor,
        hist_cats: &Tensor,
        mask: &Tensor,
        planned: Option<&Tensor>,
    ) -> Tensor {
        let per_slot = match planned {
            Some(rows) => {
                let rows = rows.view([2, mask.size()[0], mask.size()[1]]);
                rows.get(0) + rows.get(1)
            }
            None => {
                let weight = |a: &Tensor, constants| {
                    let buckets = cross_bucket(&a.unsqueeze(1), hist_cats, constants, self.buckets); // [b, T]
                    Tensor::embedding(&self.weights, &buckets, -1, false, true).squeeze_dim(-1)
                    // [b, T]
                };
                weight(items, ITEM_CROSS) + weight(cats, CAT_CROSS)
            }
        } * mask;
        per_slot.sum_dim_intlist(1, false, Kind::Float) + &self.bias
    }
}

/// Wide & Deep.
#[derive(Debug)]
pub struct WideDeep {
    /// The reference wide part: `[e_t, Σ hist, e_t ⊙ Σ hist] → 1`.
    wide: nn::Linear,
    crosses: Option<Wide>,
    norm: BatchNorm,
    deep: Mlp,
}

impl WideDeep {
    /// Its variables updated by rows (names under its path): the hashed cross weights, when on.
    pub fn row_tables(&self) -> &'static [&'static str] {
        if self.crosses.is_some() {
            &[CROSS_WEIGHTS]
        } else {
            &[]
        }
    }

    /// The lookups a training batch makes in its hashed weights (`model.wide_crosses`), from the
    /// batch's ids on the host.
    pub fn row_lookups(&self, host: &HostIds<'_>) -> Option<RowLookups> {
        let crosses = self.crosses.as_ref()?;
        Some(RowLookups {
            table: CROSS_WEIGHTS,
            variable: crosses.weights.shallow_clone(),
            ids: crosses.buckets_of(host),
        })
    }

    pub fn new(p: &nn::Path, cfg: &ModelConfig, dims: InputDims) -> Self {
        let deep_input = dims.user + 2 * dims.item;
        Self {
            wide: nn::linear(p / "wide", 3 * dims.item, 1, Default::default()),
            crosses: cfg.wide_crosses.then(|| Wide::new(&(p / "crosses"), cfg.wide_buckets as i64)),
            norm: BatchNorm::new(&(p / "norm"), deep_input),
            deep: Mlp::new(&(p / "deep"), deep_input, &cfg.head_hidden, 1, ActivationKind::Prelu),
        }
    }

    /// # Shapes
    /// `user [b, d]`, `target [b, w]`, `hist [b, T, w]`, `hist_mask [b, T]` → `logit [b]`
    pub fn forward(&self, x: &MainInput, mode: Mode) -> MainOutput {
        let hist_sum = masked_sum(&x.hist, &x.hist_mask); // [b, w]
        let (input, normalised) =
            self.norm.forward_with_input(&Tensor::cat(&[&x.user, &x.target, &hist_sum], -1), mode);
        let deep = self.deep.forward(&normalised, mode).squeeze_dim(-1);
        // `[e_t, Σ hist]` as the normalisation read it (below the cut of a [`Mode::Global`] pass).
        let width = *x.target.size().last().expect("[b, w]");
        let (target, hist_sum) = (input.narrow(-1, -2 * width, width), input.narrow(-1, -width, width));
        let wide_input = Tensor::cat(&[&target, &hist_sum, &(&target * &hist_sum)], -1); // [b, 3w]
        let mut logit = deep + self.wide.forward(&wide_input).squeeze_dim(-1);
        if let Some(crosses) = &self.crosses {
            logit +=
                crosses.forward(&x.ids.items, &x.ids.cats, &x.ids.hist_cats, &x.hist_mask, x.planned_rows.as_ref());
        }
        MainOutput { logit, aux_loss: None, user_vector: None }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cross_buckets_are_fixed_in_range_and_tell_the_cross_kinds_apart() {
        let a = Tensor::from_slice(&[1i64, 2, 367_981, (1 << 40) + 5]);
        let b = Tensor::from_slice(&[1i64, 1, 1_599, 3]);
        let buckets = 1 << 18;
        let h = cross_bucket(&a, &b, ITEM_CROSS, buckets);
        // Computed by hand from the definition for (1, 1): (0x2545F491 + 0x1B873593 + 0x0CC9E2D5)
        // mod (2³¹ − 1) mod 2¹⁸ = (625341585 + 461845907 + 214557397) mod 2147483647 mod 262144
        // = 1301744889 mod 262144 = 199929.
        assert_eq!(h.int64_value(&[0]), 199_929);
        let values: Vec<i64> = Vec::try_from(&h).unwrap();
        assert!(values.iter().all(|v| (0..buckets).contains(v)), "{values:?}");
        assert_ne!(values[0], values[1]);
        assert!(!h.equal(&cross_bucket(&a, &b, CAT_CROSS, buckets)));
        // The host's arithmetic (the training step plans the row leaves with it) gives the same.
        let (a, b) = (Vec::<i64>::try_from(&a).unwrap(), Vec::<i64>::try_from(&b).unwrap());
        for constants in [ITEM_CROSS, CAT_CROSS] {
            let on_host: Vec<i64> =
                a.iter().zip(&b).map(|(&a, &b)| cross_bucket_of(a, b, constants, buckets)).collect();
            let tensor = cross_bucket(&Tensor::from_slice(&a), &Tensor::from_slice(&b), constants, buckets);
            assert_eq!(on_host, Vec::<i64>::try_from(&tensor).unwrap());
        }
    }
}
