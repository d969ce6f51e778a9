//! Deep Interest Evolution Network (Zhou et al., AAAI 2019) as SPEC §2.2 fixes it: a GRU over
//! the history (interest extractor) trained also by DIEN's auxiliary loss, attention of every
//! GRU state to the target, an AUGRU (interest evolving layer) driven by that attention, and a
//! Dice head over `[user, e_target, sum(history), e_target·sum(history), final AUGRU state]`
//! (the input of `model_dien` in DIEN's code).
use tch::{nn, Reduction, Tensor};

use super::batch_stats::Mode;
use super::embeddings::MainInput;
use super::layers::{masked_sum, ActivationKind, AttentionUnit, Augru, Gru, Mlp};
use super::{InputDims, MainOutput};
use crate::config::ModelConfig;

/// DIEN.
#[derive(Debug)]
pub struct Dien {
    gru: Gru,
    auxiliary: Mlp,
    attention: AttentionUnit,
    augru: Augru,
    head: Mlp,
    aux_alpha: f64,
}

impl Dien {
    pub fn new(p: &nn::Path, cfg: &ModelConfig, dims: InputDims) -> Self {
        let (w, hidden) = (dims.item, cfg.gru_hidden as i64);
        Self {
            gru: Gru::new(&(p / "gru"), w, hidden),
            auxiliary: Mlp::new(&(p / "auxiliary"), hidden + w, &cfg.dien_aux_hidden, 1, ActivationKind::Sigmoid),
            attention: AttentionUnit::new(&(p / "attention"), w, hidden, &cfg.attention_hidden),
            augru: Augru::new(&(p / "augru"), hidden, hidden),
            head: Mlp::new(&(p / "head"), dims.user + 3 * w + hidden, &cfg.head_hidden, 1, ActivationKind::Dice),
            aux_alpha: cfg.dien_aux_alpha,
        }
    }

    /// # Shapes
    /// `user [b, d]`, `target [b, w]`, `hist [b, T, w]`, `hist_mask [b, T]`,
    /// `noclick [b, T, w]` → `logit [b]`, `aux_loss [b]`
    pub fn forward(&self, x: &MainInput, mode: Mode) -> MainOutput {
        let (states, _) = self.gru.forward(&x.hist, &x.ids.real); // [b, T, H]
        let aux_loss = x
            .noclick
            .as_ref()
            .map(|noclick| self.auxiliary_loss(&states, &x.hist, noclick, &x.ids.real.transitions) * self.aux_alpha);
        let attention = self.attention.weights(&x.target, &states, &x.hist_mask, &x.ids.real); // [b, T]
        let last = self.augru.forward(&states, &attention, &x.ids.real); // [b, H]
        let hist_sum = masked_sum(&x.hist, &x.hist_mask); // [b, w]
        let input = Tensor::cat(&[&x.user, &x.target, &hist_sum, &(&x.target * &hist_sum), &last], -1);
        MainOutput { logit: self.head.forward(&input, mode).squeeze_dim(-1), aux_loss, user_vector: None }
    }

    /// DIEN's auxiliary loss, per sample: the state `h_t` must tell the clicked next behaviour
    /// `e_{t+1}` (label 1) from the sampled no-click one (label 0), by binary cross-entropy of
    /// an MLP (100-50-1, sigmoid) on `[h_t, e_{t+1}]`, over the transitions `t → t+1` whose both
    /// ends are real (`transitions`, the flat indices `i·T + t` of [`RealSlots`]): the MLP runs on
    /// those only.
    ///
    /// DIEN's code averages over all `b × (T − 1)` slots, padding included, which makes the value
    /// depend on how wide the batch was padded; here each sample averages over its own real
    /// transitions (0 when it has none), so padding changes nothing.
    ///
    /// [`RealSlots`]: super::embeddings::RealSlots
    ///
    /// # Shapes
    /// `states [b, T, H]`, `clicked [b, T, w]`, `noclick [b, T, w]`, `transitions [m]` → `[b]`
    fn auxiliary_loss(&self, states: &Tensor, clicked: &Tensor, noclick: &Tensor, transitions: &Tensor) -> Tensor {
        let (batch, steps) = (states.size()[0], states.size()[1]);
        let rows = |x: &Tensor, at: &Tensor| x.reshape([batch * steps, x.size()[2]]).index_select(0, at);
        let (h, next) = (rows(states, transitions), transitions + 1); // [m, H]
        let logit = |behaviours: &Tensor| {
            let input = Tensor::cat(&[&h, &rows(behaviours, &next)], -1);
            self.auxiliary.forward(&input, Mode::Train).view([-1]) // [m]
        };
        let bce = |logit: &Tensor, label: f64| {
            logit.binary_cross_entropy_with_logits::<Tensor>(&logit.full_like(label), None, None, Reduction::None)
        };
        let per_transition = bce(&logit(clicked), 1.0) + bce(&logit(noclick), 0.0); // [m]
        let sample = transitions.floor_divide_scalar(steps);
        let zeros = Tensor::zeros([batch], (per_transition.kind(), per_transition.device()));
        let sums = zeros.index_add(0, &sample, &per_transition);
        let counts = zeros.index_add(0, &sample, &per_transition.ones_like()).clamp_min(1.0);
        sums / counts
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::embeddings::{Embeddings, Vocab};
    use crate::model::testing::batch;
    use tch::{Device, Kind};

    #[test]
    fn auxiliary_loss_is_finite_and_ignores_padded_transitions() {
        let vocab = Vocab { users: 5, items: 11, cats: 4 };
        let item_cats = Tensor::from_slice(&[0i64, 1, 2, 3, 1, 2, 3, 1, 2, 3, 1]);
        crate::model::testing::one_thread();
        let vs = nn::VarStore::new(Device::Cpu);
        let emb = Embeddings::new(&(vs.root() / "embeddings"), &vocab, 3, true, &item_cats).unwrap();
        let cfg = ModelConfig {
            head_hidden: vec![8, 4],
            attention_hidden: vec![6, 3],
            gru_hidden: 5,
            dien_aux_hidden: vec![6, 3],
            dien_aux_alpha: 0.5,
            ..Default::default()
        };
        let dien = Dien::new(&(vs.root() / "main"), &cfg, InputDims { user: 3, item: emb.item_width() });
        // History width 4: lengths 4, 3, 2, 1, 0, 4, ...
        let ids = batch(5, 6, 4, &vocab, true);
        let x = emb.forward(&ids).main;
        let aux = dien.forward(&x, Mode::Train).aux_loss.unwrap();
        assert_eq!(aux.size(), [6]);
        assert!(bool::try_from(aux.isfinite().all()).unwrap());
        // The loss written out over every slot, masked (as DIEN's code computes it, with each
        // sample averaged over its own real transitions).
        let (states, _) = dien.gru.forward(&x.hist, &x.ids.real);
        let valid = x.hist_mask.narrow(1, 1, 3) * x.hist_mask.narrow(1, 0, 3); // [b, T − 1]
        let dense = |next: &Tensor, label: f64| {
            let input = Tensor::cat(&[&states.narrow(1, 0, 3), &next.narrow(1, 1, 3)], -1);
            let logit = dien.auxiliary.forward(&input, Mode::Train).squeeze_dim(-1);
            logit.binary_cross_entropy_with_logits::<Tensor>(&logit.full_like(label), None, None, Reduction::None)
        };
        let per_step = (dense(&x.hist, 1.0) + dense(x.noclick.as_ref().unwrap(), 0.0)) * &valid;
        let expected = per_step.sum_dim_intlist(1, false, Kind::Float)
            / valid.sum_dim_intlist(1, false, Kind::Float).clamp_min(1.0)
            * 0.5;
        assert!(aux.allclose(&expected, 1e-6, 1e-6, false), "{aux} vs {expected}");
        // Samples with fewer than two behaviours have no transition, hence no loss.
        assert_eq!(aux.double_value(&[3]), 0.0);
        assert_eq!(aux.double_value(&[4]), 0.0);
        assert!(aux.double_value(&[0]) > 0.0 && aux.double_value(&[2]) > 0.0);
        // Changing the no-click items of padded slots changes nothing.
        let mut other = ids.shallow_clone();
        let noclick = other.noclick.as_mut().unwrap();
        let padded = ids.hist_mask.le(0.5);
        noclick.items = noclick.items.masked_fill(&padded, 7);
        noclick.cats = noclick.cats.masked_fill(&padded, 2);
        let again = dien.forward(&emb.forward(&other).main, Mode::Train).aux_loss.unwrap();
        assert!(aux.allclose(&again, 1e-6, 1e-6, false), "{aux} vs {again}");
        // α weights it: α = 0.5 gives half of α = 1.
        let mut unweighted = dien;
        unweighted.aux_alpha = 1.0;
        let full = unweighted.forward(&x, Mode::Train).aux_loss.unwrap();
        assert!((full * 0.5).allclose(&aux, 1e-6, 1e-6, false));
    }
}
