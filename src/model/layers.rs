//! Building blocks of the main models: MLPs, the Dice and PReLU activations, DIN's attention unit
//! with its masked softmax, and the GRU / AUGRU cells unrolled over a masked history.
//!
//! Nothing here knows about ids, embedding tables or MICN: every layer takes dense tensors and a
//! `[b, T]` float mask (1 = real behaviour, 0 = padding).
use tch::nn::{self, Module};
use tch::{Kind, Tensor};

use super::batch_stats::Mode;
use super::embeddings::RealSlots;

/// Score given to padded positions before a softmax: `exp` of it next to any real score is
/// exactly 0 in f32, and it stays finite, so a row with no real position gives a uniform softmax
/// (which the mask then zeroes) instead of NaN.
const MASKED_SCORE: f64 = -1e9;

/// Share of the running statistics kept at each Dice update: DIN's code uses batch
/// normalisation with momentum 0.99 (TensorFlow's convention; PyTorch would call it 0.01).
pub const DICE_MOMENTUM: f64 = 0.99;
/// Added to the variance inside Dice's square root.
pub const DICE_EPS: f64 = 1e-8;
/// Initial PReLU slope, as DIEN's `utils.prelu` (`tf.constant_initializer(0.1)`).
const PRELU_INIT: f64 = 0.1;

/// Softmax over the last dimension restricted to the positions where `mask` is 1: masked
/// positions get exactly zero weight, and a row with no unmasked position gets all zeros.
///
/// # Shapes
/// `scores [.., n]`, `mask [.., n]` (float, 0/1) → `[.., n]`
pub fn masked_softmax(scores: &Tensor, mask: &Tensor) -> Tensor {
    let padded = mask.le(0.5);
    scores.masked_fill(&padded, MASKED_SCORE).softmax(-1, scores.kind()) * mask
}

/// Sum over the history of the real behaviours only.
///
/// # Shapes
/// `xs [b, T, w]`, `mask [b, T]` → `[b, w]`
pub fn masked_sum(xs: &Tensor, mask: &Tensor) -> Tensor {
    (xs * mask.unsqueeze(-1)).sum_dim_intlist(1, false, xs.kind())
}

/// Parametric ReLU with one slope per channel: `max(0, x) + α·min(0, x)`.
#[derive(Debug)]
pub struct Prelu {
    alpha: Tensor,
}

impl Prelu {
    pub fn new(p: &nn::Path, width: i64) -> Self {
        Self { alpha: p.var("alpha", &[width], nn::Init::Const(PRELU_INIT)) }
    }

    /// # Shapes
    /// `xs [.., width]` → same
    pub fn forward(&self, xs: &Tensor) -> Tensor {
        xs.relu() + &self.alpha * xs.clamp_max(0.0)
    }
}

/// Dice (Zhou et al., DIN, KDD 2018): `p(s)·s + (1 − p(s))·α·s` with
/// `p(s) = sigmoid((s − E[s]) / sqrt(Var[s] + ε))`, one α per channel (initialised to 0 as in
/// DIN's code).
///
/// In training `E[s]` and `Var[s]` are the batch's (over every leading dimension, biased
/// variance) and the running statistics move towards them:
/// `running ← 0.99·running + 0.01·batch` (the same biased variance). In evaluation the running
/// statistics are used. They are non-trainable variables (`running_mean`, `running_var`) so
/// checkpoints and rank broadcasts carry them.
#[derive(Debug)]
pub struct Dice {
    alpha: Tensor,
    stats: RunningStats,
}

impl Dice {
    pub fn new(p: &nn::Path, width: i64) -> Self {
        Self { alpha: p.zeros("alpha", &[width]), stats: RunningStats::new(p, width, DICE_MOMENTUM) }
    }

    /// # Shapes
    /// `xs [.., width]` → same
    pub fn forward(&self, xs: &Tensor, mode: Mode) -> Tensor {
        let (xs, mean, var) = self.stats.select(xs, mode);
        let p = ((&xs - &mean) / (var + DICE_EPS).sqrt()).sigmoid();
        &p * &xs + (1.0 - &p) * &self.alpha * &xs
    }

    /// The running `(mean, variance)`.
    pub fn running_stats(&self) -> (Tensor, Tensor) {
        self.stats.running()
    }

    #[cfg(test)]
    pub(crate) fn alpha(&self) -> &Tensor {
        &self.alpha
    }
}

/// Batch normalisation (Ioffe & Szegedy, ICML 2015) over the last dimension:
/// `γ·(x − E[x]) / sqrt(Var[x] + ε) + β`, with the statistics of the global batch in training
/// (see [`super::batch_stats`]) and the running ones in evaluation.
#[derive(Debug)]
pub struct BatchNorm {
    gamma: Tensor,
    beta: Tensor,
    stats: RunningStats,
}

impl BatchNorm {
    pub fn new(p: &nn::Path, width: i64) -> Self {
        Self {
            gamma: p.ones("gamma", &[width]),
            beta: p.zeros("beta", &[width]),
            stats: RunningStats::new(p, width, BATCH_NORM_MOMENTUM),
        }
    }

    /// # Shapes
    /// `xs [.., width]` → same
    pub fn forward(&self, xs: &Tensor, mode: Mode) -> Tensor {
        self.forward_with_input(xs, mode).1
    }

    /// The normalised input, and the input as the layer computed from it: in a [`Mode::Global`]
    /// pass a leaf copy below the graph's cut, which other layers reading the same input must
    /// use too (the graph below the cut is walked once, from the cut).
    pub fn forward_with_input(&self, xs: &Tensor, mode: Mode) -> (Tensor, Tensor) {
        let (xs, mean, var) = self.stats.select(xs, mode);
        let normalised = (&xs - mean) / (var + BATCH_NORM_EPS).sqrt() * &self.gamma + &self.beta;
        (xs, normalised)
    }

    /// The running `(mean, variance)`.
    pub fn running_stats(&self) -> (Tensor, Tensor) {
        self.stats.running()
    }
}

/// Share of the running statistics kept at each batch-normalisation update (PyTorch's default,
/// `momentum = 0.1` in its convention): a run of a few hundred steps ends with running statistics
/// close to the batches'.
pub const BATCH_NORM_MOMENTUM: f64 = 0.9;
/// Added to the variance of batch normalisation (TensorFlow's default, which DIEN's code uses).
pub const BATCH_NORM_EPS: f64 = 1e-3;

/// The statistics a normalising layer (Dice, batch normalisation) uses. In training `E[x]` and
/// `Var[x]` are the batch's (over every leading dimension, biased variance; over the global batch
/// in [`Mode::Global`]), and the running statistics move towards them:
/// `running ← momentum·running + (1 − momentum)·batch`. In evaluation the running statistics are
/// used. They are non-trainable variables (`running_mean`, `running_var`) so checkpoints and rank
/// broadcasts carry them.
#[derive(Debug)]
struct RunningStats {
    mean: Tensor,
    var: Tensor,
    momentum: f64,
}

impl RunningStats {
    fn new(p: &nn::Path, width: i64, momentum: f64) -> Self {
        Self {
            mean: p.zeros_no_train("running_mean", &[width]),
            var: p.ones_no_train("running_var", &[width]),
            momentum,
        }
    }

    /// `(input to compute from, mean, variance)`: over every rank ([`Mode::Global`]) the input is
    /// a leaf copy and the statistics are global leaves (the graph is cut here).
    fn select(&self, xs: &Tensor, mode: Mode) -> (Tensor, Tensor, Tensor) {
        if !mode.is_train() {
            return (xs.shallow_clone(), self.mean.shallow_clone(), self.var.shallow_clone());
        }
        if let Some((leaf, mean, var)) = match mode {
            Mode::Global(global) => global.statistics(xs),
            _ => None,
        } {
            self.update(&mean, &var);
            return (leaf, mean, var);
        }
        // The arithmetic of the global statistics on one rank (see `batch_stats::Global`): f32
        // sums, the mean by an element-wise division, the squares about it summed in f32 and
        // divided in f64; so one rank computes the same values as ranks that combine theirs.
        let width = *xs.size().last().expect("a normalising layer needs at least one dimension");
        let flat = xs.reshape([-1, width]).to_kind(Kind::Float); // [n, width]
        let rows = flat.size()[0] as f64;
        let sums = flat.sum_dim_intlist(0, false, Kind::Float);
        let mean = &sums / sums.full_like(rows.max(1.0));
        let m2 = (&flat - &mean).square().sum_dim_intlist(0, false, Kind::Float);
        let var = (m2.to_kind(Kind::Double) / rows.max(1.0)).to_kind(Kind::Float);
        let (mean, var) = (mean.to_kind(xs.kind()), var.to_kind(xs.kind()));
        self.update(&mean, &var);
        (xs.shallow_clone(), mean, var)
    }

    fn update(&self, mean: &Tensor, var: &Tensor) {
        tch::no_grad(|| {
            let keep = self.momentum;
            let mut running_mean = self.mean.shallow_clone();
            let mut running_var = self.var.shallow_clone();
            running_mean.copy_(&(&self.mean * keep + mean.detach() * (1.0 - keep)));
            running_var.copy_(&(&self.var * keep + var.detach() * (1.0 - keep)));
        });
    }

    fn running(&self) -> (Tensor, Tensor) {
        (self.mean.shallow_clone(), self.var.shallow_clone())
    }
}

/// Which non-linearity follows each hidden layer of an [`Mlp`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ActivationKind {
    Sigmoid,
    Relu,
    Prelu,
    Dice,
}

/// One hidden layer's non-linearity, with its parameters when it has any.
#[derive(Debug)]
pub enum Activation {
    Sigmoid,
    Relu,
    Prelu(Prelu),
    Dice(Dice),
}

impl Activation {
    pub fn new(p: &nn::Path, kind: ActivationKind, width: i64) -> Self {
        match kind {
            ActivationKind::Sigmoid => Activation::Sigmoid,
            ActivationKind::Relu => Activation::Relu,
            ActivationKind::Prelu => Activation::Prelu(Prelu::new(p, width)),
            ActivationKind::Dice => Activation::Dice(Dice::new(p, width)),
        }
    }

    pub fn forward(&self, xs: &Tensor, mode: Mode) -> Tensor {
        match self {
            Activation::Sigmoid => xs.sigmoid(),
            Activation::Relu => xs.relu(),
            Activation::Prelu(prelu) => prelu.forward(xs),
            Activation::Dice(dice) => dice.forward(xs, mode),
        }
    }
}

/// Linear layers with an activation after each hidden one and a linear output.
///
/// Variables: `layers.{i}.{weight,bias}`, `activations.{i}.…`, `output.{weight,bias}`.
#[derive(Debug)]
pub struct Mlp {
    layers: Vec<nn::Linear>,
    activations: Vec<Activation>,
    output: nn::Linear,
}

impl Mlp {
    pub fn new(p: &nn::Path, input: i64, hidden: &[usize], output: i64, activation: ActivationKind) -> Self {
        let mut layers = Vec::with_capacity(hidden.len());
        let mut activations = Vec::with_capacity(hidden.len());
        let mut width = input;
        for (i, &next) in hidden.iter().enumerate() {
            let next = next as i64;
            layers.push(nn::linear(p / "layers" / i, width, next, Default::default()));
            activations.push(Activation::new(&(p / "activations" / i), activation, next));
            width = next;
        }
        Self { layers, activations, output: nn::linear(p / "output", width, output, Default::default()) }
    }

    /// # Shapes
    /// `xs [.., input]` → `[.., output]`
    pub fn forward(&self, xs: &Tensor, mode: Mode) -> Tensor {
        match self.layers.first() {
            Some(first) => self.forward_from_first(&first.forward(xs), mode),
            None => self.output.forward(xs),
        }
    }

    /// The first hidden layer (its weight is `[hidden, input]`), when there is one.
    pub fn first_layer(&self) -> Option<&nn::Linear> {
        self.layers.first()
    }

    /// The rest of [`Mlp::forward`] from the first hidden layer's output (before its activation),
    /// for callers that compute that layer in their own way.
    ///
    /// # Shapes
    /// `first [.., hidden_0]` → `[.., output]`
    pub fn forward_from_first(&self, first: &Tensor, mode: Mode) -> Tensor {
        let hidden = self.activations[0].forward(first, mode);
        let hidden = self.layers[1..]
            .iter()
            .zip(&self.activations[1..])
            .fold(hidden, |h, (layer, activation)| activation.forward(&layer.forward(&h), mode));
        self.output.forward(&hidden)
    }
}

/// A dense layer followed by PReLU: how DIEN's `din_fcn_attention` brings the query to the
/// width of the keys when they differ.
#[derive(Debug)]
struct QueryProjection {
    linear: nn::Linear,
    prelu: Prelu,
}

/// DIN's activation unit: an MLP with sigmoid activations (80-40-1 by default) scores each
/// history position from `[q, k, q − k, q·k]`, and a masked softmax over the history turns the
/// scores into weights. When the query is not as wide as the keys (DIEN: target item vs GRU
/// state) it is first projected to their width by a dense layer and PReLU, as in DIEN's code.
#[derive(Debug)]
pub struct AttentionUnit {
    query_projection: Option<QueryProjection>,
    mlp: Mlp,
}

impl AttentionUnit {
    pub fn new(p: &nn::Path, query_width: i64, key_width: i64, hidden: &[usize]) -> Self {
        let query_projection = (query_width != key_width).then(|| {
            let p = p / "query_projection";
            QueryProjection {
                linear: nn::linear(&p / "linear", query_width, key_width, Default::default()),
                prelu: Prelu::new(&(&p / "prelu"), key_width),
            }
        });
        Self { query_projection, mlp: Mlp::new(&(p / "mlp"), 4 * key_width, hidden, 1, ActivationKind::Sigmoid) }
    }

    /// Attention weights over the history; padded positions get exactly 0, and an all-padding
    /// history gets all zeros. Only the `real` slots are scored (the others' scores would be
    /// masked out): with short histories in a wide batch, most of the MLP's work is saved.
    ///
    /// # Shapes
    /// `query [b, q]`, `keys [b, T, k]`, `mask [b, T]` → `[b, T]`
    pub fn weights(&self, query: &Tensor, keys: &Tensor, mask: &Tensor, real: &RealSlots) -> Tensor {
        let query = match &self.query_projection {
            Some(projection) => projection.prelu.forward(&projection.linear.forward(query)),
            None => query.shallow_clone(),
        };
        let (b, steps, k) = (keys.size()[0], keys.size()[1], keys.size()[2]);
        let keys_real = keys.reshape([b * steps, k]).index_select(0, &real.slots); // [n, k]
        let query_real = query.index_select(0, &real.samples); // [n, k]
        let scores_real = match self.mlp.first_layer() {
            Some(first) => {
                // The first layer reads [q, k, q − k, q·k] through W = [W_q W_k W_d W_p]:
                // q·(W_q + W_d)ᵀ once per sample, k·(W_k − W_d)ᵀ + (q·k)·W_pᵀ per position, without
                // building the [n, 4k] features: half the layer's work per position, and far
                // less memory traffic.
                let block = |i: i64| first.ws.narrow(1, i * k, k);
                let (w_q, w_k, w_d, w_p) = (block(0), block(1), block(2), block(3));
                let per_sample = query.matmul(&(w_q + &w_d).tr()); // [b, h]
                let per_sample = match &first.bs {
                    Some(bias) => per_sample + bias,
                    None => per_sample,
                };
                let per_position = keys_real.matmul(&(w_k - &w_d).tr()) + (&query_real * &keys_real).matmul(&w_p.tr());
                self.mlp.forward_from_first(&(per_position + per_sample.index_select(0, &real.samples)), Mode::Eval)
            }
            None => {
                let features = Tensor::cat(
                    &[&query_real, &keys_real, &(&query_real - &keys_real), &(&query_real * &keys_real)],
                    -1,
                );
                self.mlp.forward(&features, Mode::Eval)
            }
        }
        .view([-1]); // [n]
        let scores = Tensor::zeros([b * steps], (scores_real.kind(), scores_real.device()))
            .index_copy(0, &real.slots, &scores_real)
            .view([b, steps]);
        masked_softmax(&scores, mask)
    }

    /// The attention-weighted sum of the keys (zero for an all-padding history).
    ///
    /// # Shapes
    /// `query [b, q]`, `keys [b, T, k]`, `mask [b, T]` → `[b, k]`
    pub fn forward(&self, query: &Tensor, keys: &Tensor, mask: &Tensor, real: &RealSlots) -> Tensor {
        let weights = self.weights(query, keys, mask, real); // [b, T]
        weights.unsqueeze(1).matmul(keys).squeeze_dim(1)
    }
}

/// A GRU cell in the form of DIEN's `GRUCell` / `VecAttGRUCell` (Cho et al. 2014):
/// `r, u = σ(W x + U h + b)`, `h̃ = tanh(W_c x + U_c (r·h) + b_c)`, `h' = (1 − u')·h + u'·h̃` with
/// `u' = u` (GRU) or `u' = a·u` (AUGRU, DIEN's attentional update gate).
///
/// Variables: `input.{weight,bias}` (x → [r, u, h̃], 3H), `hidden_gates.weight` (h → [r, u]),
/// `hidden_candidate.weight` (r·h → h̃).
#[derive(Debug)]
struct GruCell {
    input: nn::Linear,
    hidden_gates: nn::Linear,
    hidden_candidate: nn::Linear,
    hidden: i64,
}

impl GruCell {
    fn new(p: &nn::Path, input: i64, hidden: i64) -> Self {
        let no_bias = nn::LinearConfig { bias: false, ..Default::default() };
        Self {
            input: nn::linear(p / "input", input, 3 * hidden, Default::default()),
            hidden_gates: nn::linear(p / "hidden_gates", hidden, 2 * hidden, no_bias),
            hidden_candidate: nn::linear(p / "hidden_candidate", hidden, hidden, no_bias),
            hidden,
        }
    }

    /// Runs the cell over the history from a zero state; `last` is each row's state after its
    /// last real behaviour (zero for an empty history), `states` the state after every real
    /// behaviour (zero at padded slots, which every reader masks).
    ///
    /// Only what real behaviours need is computed, on the history packed step by step as
    /// PyTorch's packed sequences are ([`RealSlots::packed`]): the input's projection of every
    /// real slot in one matmul, then at step `t` the `active[t]` rows still running, each step's
    /// rows a prefix of the previous step's, so the running state is a narrowing of the last
    /// one, never copied. One step is `h' = h + u'·(h̃ − h)` (`lerp`), with `u' = a·u` in the
    /// AUGRU, a handful of fused operations (two `addmm`, two activations, a product, a `lerp`):
    /// at DIEN's sizes a step costs what its operations' dispatch costs. The states are gathered
    /// once at the end (one `cat`, one `index_select` for the last states, one `index_copy` for
    /// all of them when asked for).
    ///
    /// # Shapes
    /// `xs [b, T, I]`, `attention [b, T]` → (`states [b, T, H]` when `all_states`, `last [b, H]`)
    fn unroll(
        &self,
        xs: &Tensor,
        attention: Option<&Tensor>,
        real: &RealSlots,
        all_states: bool,
    ) -> (Option<Tensor>, Tensor) {
        let (batch, steps, width) = (xs.size()[0], xs.size()[1], xs.size()[2]);
        let (hidden, options) = (self.hidden, (xs.kind(), xs.device()));
        let running: Vec<i64> = real.active.iter().copied().take_while(|&n| n > 0).collect();
        if running.is_empty() {
            let states = all_states.then(|| Tensor::zeros([batch, steps, hidden], options));
            return (states, Tensor::zeros([batch, hidden], options));
        }
        let projected = self.input.forward(&xs.reshape([batch * steps, width]).index_select(0, &real.packed));
        // Views made once (one autograd node each), not per step.
        let projected = projected.split_with_sizes([2 * hidden, hidden], -1);
        let (x_gates, x_candidate) =
            (projected[0].split_with_sizes(&running, 0), projected[1].split_with_sizes(&running, 0));
        let scales = attention
            .map(|a| a.reshape([batch * steps, 1]).index_select(0, &real.packed).split_with_sizes(&running, 0));
        let (w_gates, w_candidate) = (self.hidden_gates.ws.tr(), self.hidden_candidate.ws.tr());
        let mut h = Tensor::zeros([running[0], hidden], options);
        let mut packed_states = Vec::with_capacity(running.len());
        for (t, &rows) in running.iter().enumerate() {
            let h_run = h.narrow(0, 0, rows);
            let gates = x_gates[t].addmm(&h_run, &w_gates).sigmoid().chunk(2, -1);
            let (reset, update) = (&gates[0], &gates[1]);
            let candidate = x_candidate[t].addmm(&(reset * &h_run), &w_candidate).tanh();
            let update = match &scales {
                Some(scales) => update * &scales[t],
                None => update.shallow_clone(),
            };
            h = h_run.lerp_tensor(&candidate, &update);
            packed_states.push(h.shallow_clone());
        }
        // [n, H]; `last` reads an empty history's zero state from a row n appended to them.
        let packed_states = Tensor::cat(&packed_states, 0);
        let last = Tensor::cat(&[&packed_states, &Tensor::zeros([1, hidden], options)], 0).index_select(0, &real.last);
        let states = all_states.then(|| {
            Tensor::zeros([batch * steps, hidden], options)
                .index_copy(0, &real.packed, &packed_states)
                .view([batch, steps, hidden])
        });
        (states, last)
    }
}

/// A GRU unrolled over a masked history (DIEN's interest extractor layer).
#[derive(Debug)]
pub struct Gru(GruCell);

impl Gru {
    pub fn new(p: &nn::Path, input: i64, hidden: i64) -> Self {
        Self(GruCell::new(p, input, hidden))
    }

    /// # Shapes
    /// `xs [b, T, I]` → (`states [b, T, H]`, zero at padded slots; `last [b, H]`); the real
    /// slots are `real`'s.
    pub fn forward(&self, xs: &Tensor, real: &RealSlots) -> (Tensor, Tensor) {
        let (states, last) = self.0.unroll(xs, None, real, true);
        (states.expect("asked for"), last)
    }
}

/// The GRU with attentional update gate (DIEN's interest evolving layer):
/// `h' = (1 − a·u)·h + a·u·h̃`, so a step with attention 0 keeps the state.
#[derive(Debug)]
pub struct Augru(GruCell);

impl Augru {
    pub fn new(p: &nn::Path, input: i64, hidden: i64) -> Self {
        Self(GruCell::new(p, input, hidden))
    }

    /// The last state of every row (DIEN reads no other).
    ///
    /// # Shapes
    /// `xs [b, T, I]`, `attention [b, T]` → `last [b, H]`; the real slots are `real`'s.
    pub fn forward(&self, xs: &Tensor, attention: &Tensor, real: &RealSlots) -> Tensor {
        self.0.unroll(xs, Some(attention), real, false).1
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tch::{Device, Kind};

    fn close(a: &Tensor, b: &Tensor, tol: f64) -> bool {
        a.allclose(b, tol, tol, false)
    }

    #[test]
    fn masked_softmax_gives_padding_no_weight_and_sums_to_one_over_real_positions() {
        let scores = Tensor::from_slice(&[1.0f32, 2.0, 50.0, 0.0]).view([1, 4]);
        let mask = Tensor::from_slice(&[1.0f32, 1.0, 0.0, 0.0]).view([1, 4]);
        let w = masked_softmax(&scores, &mask);
        // softmax([1, 2]) = [1/(1+e), e/(1+e)] = [0.268941, 0.731059].
        let expected = Tensor::from_slice(&[0.268_941_4f32, 0.731_058_6, 0.0, 0.0]).view([1, 4]);
        assert!(close(&w, &expected, 1e-6), "{w}");
        assert_eq!(w.double_value(&[0, 2]), 0.0);
    }

    #[test]
    fn attention_scores_equal_the_mlp_over_the_concatenated_features() {
        tch::manual_seed(11);
        let vs = nn::VarStore::new(Device::Cpu);
        let unit = AttentionUnit::new(&vs.root(), 3, 3, &[8, 4]);
        let query = Tensor::randn([2, 3], (Kind::Float, Device::Cpu));
        let keys = Tensor::randn([2, 5, 3], (Kind::Float, Device::Cpu));
        let mask = Tensor::ones([2, 5], (Kind::Float, Device::Cpu));
        // DIN's definition: the MLP over [q, k, q − k, q·k] of every position, then a softmax.
        let queries = query.unsqueeze(1).expand_as(&keys);
        let features = Tensor::cat(&[&queries, &keys, &(&queries - &keys), &(&queries * &keys)], -1);
        let expected = masked_softmax(&unit.mlp.forward(&features, Mode::Eval).squeeze_dim(-1), &mask);
        let weights = unit.weights(&query, &keys, &mask, &RealSlots::from_mask(&mask));
        assert!(close(&weights, &expected, 1e-6), "{weights} vs {expected}");
        // And the first layer's weight gets the same gradient both ways.
        let first = &unit.mlp.first_layer().unwrap().ws;
        let g = |w: Tensor| Tensor::run_backward(&[(w * &keys.select(2, 0)).sum(Kind::Float)], &[first], false, false);
        let diff = (&g(weights)[0] - &g(expected)[0]).abs().max().double_value(&[]);
        assert!(diff < 1e-6, "first-layer gradient differs by {diff}");
    }

    #[test]
    fn attention_over_an_all_padding_history_is_zero_and_finite() {
        let vs = nn::VarStore::new(Device::Cpu);
        let unit = AttentionUnit::new(&vs.root(), 3, 3, &[8, 4]);
        let query = Tensor::randn([2, 3], (Kind::Float, Device::Cpu)).set_requires_grad(true);
        let keys = Tensor::randn([2, 5, 3], (Kind::Float, Device::Cpu)).set_requires_grad(true);
        let mask = Tensor::from_slice(&[0.0f32, 0., 0., 0., 0., 1., 1., 0., 0., 0.]).view([2, 5]);
        let out = unit.forward(&query, &keys, &mask, &RealSlots::from_mask(&mask));
        assert_eq!(out.size(), [2, 3]);
        assert_eq!(out.get(0).abs().sum(Kind::Float).double_value(&[]), 0.0);
        out.sum(Kind::Float).backward();
        for t in [&query.grad(), &keys.grad()] {
            assert!(bool::try_from(t.isfinite().all()).unwrap());
        }
        // The padded keys of the second sample get no gradient: they have no weight.
        assert_eq!(keys.grad().get(1).narrow(0, 2, 3).abs().sum(Kind::Float).double_value(&[]), 0.0);
    }

    #[test]
    fn attention_weights_are_zero_on_masked_positions_whatever_the_keys() {
        let vs = nn::VarStore::new(Device::Cpu);
        let unit = AttentionUnit::new(&vs.root(), 4, 3, &[8, 4]);
        let query = Tensor::randn([2, 4], (Kind::Float, Device::Cpu));
        let keys = Tensor::randn([2, 4, 3], (Kind::Float, Device::Cpu)) * 100.0;
        let mask = Tensor::from_slice(&[1.0f32, 1., 1., 0., 1., 0., 0., 0.]).view([2, 4]);
        let w = unit.weights(&query, &keys, &mask, &RealSlots::from_mask(&mask));
        assert_eq!((&w * mask.ones_like().g_sub(&mask)).abs().sum(Kind::Float).double_value(&[]), 0.0);
        let sums = w.sum_dim_intlist(1, false, Kind::Float);
        assert!(close(&sums, &Tensor::ones([2], (Kind::Float, Device::Cpu)), 1e-6), "{sums}");
    }

    #[test]
    fn dice_uses_batch_statistics_in_training_and_running_ones_in_evaluation() {
        let vs = nn::VarStore::new(Device::Cpu);
        let dice = Dice::new(&vs.root(), 1);
        let _ = tch::no_grad(|| dice.alpha.shallow_clone().fill_(0.5));
        let xs = Tensor::from_slice(&[1.0f32, 3.0]).view([2, 1]);
        // Batch mean 2, biased variance 1: p(1) = σ(−1) = 0.268941, p(3) = σ(1) = 0.731059;
        // out = p·s + (1 − p)·0.5·s → 1·(0.268941 + 0.365529) = 0.634471 and
        // 3·(0.731059 + 0.134471) = 2.596589.
        let train = dice.forward(&xs, Mode::Train);
        let expected = Tensor::from_slice(&[0.634_470_7f32, 2.596_588_6]).view([2, 1]);
        assert!(close(&train, &expected, 1e-5), "{train}");
        // Running stats after one update from (0, 1): mean 0.01·2 = 0.02, var 0.99 + 0.01·1 = 1.
        let (mean, var) = dice.running_stats();
        assert!((mean.double_value(&[0]) - 0.02).abs() < 1e-7);
        assert!((var.double_value(&[0]) - 1.0).abs() < 1e-7);
        // Evaluation with mean 0.02, var 1: p(1) = σ(0.98) = 0.727108, p(3) = σ(2.98) = 0.951662;
        // out(1) = 0.727108 + 0.272892·0.5 = 0.863554, out(3) = 3·(0.951662 + 0.024169) = 2.927494.
        let eval = dice.forward(&xs, Mode::Eval);
        let expected = Tensor::from_slice(&[0.863_554f32, 2.927_494]).view([2, 1]);
        assert!(close(&eval, &expected, 1e-5), "{eval}");
        // Evaluation leaves the running statistics alone.
        assert!((dice.running_stats().0.double_value(&[0]) - 0.02).abs() < 1e-7);
    }

    #[test]
    fn batch_norm_normalises_by_the_batch_in_training_and_by_the_running_statistics_after() {
        let vs = nn::VarStore::new(Device::Cpu);
        let bn = BatchNorm::new(&vs.root(), 2);
        // Column 0: [1, 3] → mean 2, biased variance 1 → (x − 2)/sqrt(1 + 0.001) = ∓0.999500.
        // Column 1: [10, 10] → mean 10, variance 0 → 0 (no division by zero).
        let xs = Tensor::from_slice(&[1.0f32, 10.0, 3.0, 10.0]).view([2, 2]);
        let y = bn.forward(&xs, Mode::Train);
        let expected = Tensor::from_slice(&[-0.999_500_4f32, 0.0, 0.999_500_4, 0.0]).view([2, 2]);
        assert!(close(&y, &expected, 1e-6), "{y}");
        // Running statistics moved by a tenth towards the batch's: mean 0.9·0 + 0.1·[2, 10],
        // variance 0.9·1 + 0.1·[1, 0].
        let (mean, var) = bn.running_stats();
        assert!(close(&mean, &Tensor::from_slice(&[0.2f32, 1.0]), 1e-6), "{mean}");
        assert!(close(&var, &Tensor::from_slice(&[1.0f32, 0.9]), 1e-6), "{var}");
        // Evaluation uses them and leaves them alone: (1 − 0.2)/sqrt(1.001) = 0.799600.
        let y = bn.forward(&xs, Mode::Eval);
        assert!((y.double_value(&[0, 0]) - 0.799_600_3).abs() < 1e-6, "{y}");
        assert!(close(&bn.running_stats().0, &mean, 0.0));
    }

    #[test]
    fn dice_running_statistics_follow_the_documented_momentum() {
        let vs = nn::VarStore::new(Device::Cpu);
        let dice = Dice::new(&vs.root(), 2);
        let xs = Tensor::from_slice(&[0.0f32, 10.0, 4.0, 10.0]).view([2, 2]);
        for _ in 0..3 {
            let _ = dice.forward(&xs, Mode::Train);
        }
        // Channel 0: batch mean 2, var 4; channel 1: mean 10, var 0. After n updates from
        // (m0, v0): m = 0.99ⁿ·m0 + (1 − 0.99ⁿ)·batch, with 0.99³ = 0.970299.
        let k = 0.970_299;
        let (mean, var) = dice.running_stats();
        let expected_mean = [2.0 * (1.0 - k), 10.0 * (1.0 - k)];
        let expected_var = [k + 4.0 * (1.0 - k), k];
        for c in 0..2 {
            assert!((mean.double_value(&[c]) - expected_mean[c as usize]).abs() < 1e-5);
            assert!((var.double_value(&[c]) - expected_var[c as usize]).abs() < 1e-5);
        }
        // The buffers are checkpointed but not trained.
        let names: Vec<String> = vs.variables().into_keys().collect();
        assert!(names.contains(&"running_mean".to_string()) && names.contains(&"running_var".to_string()));
        assert_eq!(vs.trainable_variables().len(), 1);
    }

    #[test]
    fn augru_with_zero_attention_keeps_the_state() {
        let vs = nn::VarStore::new(Device::Cpu);
        let augru = Augru::new(&vs.root(), 3, 4);
        let xs = Tensor::randn([2, 3, 3], (Kind::Float, Device::Cpu));
        let mask = Tensor::ones([2, 3], (Kind::Float, Device::Cpu));
        // Attention 0 at step 1: the state after step 1 equals the state after step 0.
        let attention = Tensor::from_slice(&[0.7f32, 0.0, 0.3, 1.0, 0.0, 0.0]).view([2, 3]);
        let (states, last) = augru.0.unroll(&xs, Some(&attention), &RealSlots::from_mask(&mask), true);
        let states = states.unwrap();
        assert!(close(&states.select(1, 1), &states.select(1, 0), 0.0));
        assert!(!close(&states.select(1, 2), &states.select(1, 1), 1e-6));
        assert!(close(&last.get(1), &states.get(1).get(0), 0.0));
        assert!(close(&last, &augru.forward(&xs, &attention, &RealSlots::from_mask(&mask)), 0.0));
        // Attention 0 everywhere: the zero initial state is never left.
        let last = augru.forward(&xs, &Tensor::zeros([2, 3], (Kind::Float, Device::Cpu)), &RealSlots::from_mask(&mask));
        assert_eq!(last.abs().sum(Kind::Float).double_value(&[]), 0.0);
    }

    #[test]
    fn gru_and_augru_compute_dien_s_gru_cell_written_out() {
        tch::manual_seed(5);
        let vs = nn::VarStore::new(Device::Cpu);
        let (gru, augru) = (Gru::new(&(vs.root() / "g"), 3, 4), Augru::new(&(vs.root() / "a"), 3, 4));
        let xs = Tensor::randn([2, 3, 3], (Kind::Float, Device::Cpu));
        let mask = Tensor::from_slice(&[1.0f32, 1.0, 1.0, 1.0, 1.0, 0.0]).view([2, 3]);
        let attention = Tensor::from_slice(&[0.2f32, 0.9, 0.5, 1.0, 0.4, 0.7]).view([2, 3]);
        // DIEN's GRUCell / VecAttGRUCell (TensorFlow's GRUCell form), step by step:
        // r, u = σ(W x + b + U h); h̃ = tanh(W_c x + b_c + U_c (r·h)); u' = a·u;
        // h' = (1 − u')·h + u'·h̃; a padded step keeps h.
        let reference = |cell: &GruCell, attention: Option<&Tensor>| {
            let vars = |l: &nn::Linear| (l.ws.shallow_clone(), l.bs.as_ref().map(Tensor::shallow_clone));
            let (w, b) = vars(&cell.input);
            let (u_gates, u_candidate) =
                (cell.hidden_gates.ws.shallow_clone(), cell.hidden_candidate.ws.shallow_clone());
            let mut h = Tensor::zeros([2, 4], (Kind::Float, Device::Cpu));
            let mut states = vec![];
            for t in 0..3 {
                let x = xs.select(1, t).matmul(&w.tr()) + b.as_ref().unwrap();
                let gates = (x.narrow(1, 0, 8) + h.matmul(&u_gates.tr())).sigmoid();
                let (r, u) = (gates.narrow(1, 0, 4), gates.narrow(1, 4, 4));
                let candidate = (x.narrow(1, 8, 4) + (&r * &h).matmul(&u_candidate.tr())).tanh();
                let u = match attention {
                    Some(a) => u * a.select(1, t).unsqueeze(1),
                    None => u,
                };
                let next = (1.0 - &u) * &h + &u * candidate;
                let keep = mask.select(1, t).unsqueeze(1);
                h = &keep * next + (1.0 - &keep) * &h;
                states.push(h.shallow_clone());
            }
            Tensor::stack(&states, 1)
        };
        // The states at real slots (zero at the padded one), and the last state of each row.
        let real = RealSlots::from_mask(&mask);
        let at_real = |states: &Tensor| states * mask.unsqueeze(-1);
        let (states, last) = gru.forward(&xs, &real);
        let expected = reference(&gru.0, None);
        assert!(close(&states, &at_real(&expected), 1e-6), "{states}");
        assert!(close(&last, &expected.select(1, 2), 1e-6));
        let (states, last) = augru.0.unroll(&xs, Some(&attention), &real, true);
        let expected = reference(&augru.0, Some(&attention));
        assert!(close(&states.unwrap(), &at_real(&expected), 1e-6));
        assert!(close(&last, &expected.select(1, 2), 1e-6));
    }

    #[test]
    fn padded_steps_change_nothing_and_their_states_are_zero() {
        let vs = nn::VarStore::new(Device::Cpu);
        let gru = Gru::new(&vs.root(), 3, 4);
        let short = Tensor::randn([1, 2, 3], (Kind::Float, Device::Cpu));
        let padded = Tensor::cat(&[&short, &(Tensor::randn([1, 3, 3], (Kind::Float, Device::Cpu)) * 9.0)], 1);
        let (_, last_short) =
            gru.forward(&short, &RealSlots::from_mask(&Tensor::ones([1, 2], (Kind::Float, Device::Cpu))));
        let mask = Tensor::from_slice(&[1.0f32, 1.0, 0.0, 0.0, 0.0]).view([1, 5]);
        let (states, last) = gru.forward(&padded, &RealSlots::from_mask(&mask));
        assert!(close(&last, &last_short, 1e-6));
        assert!(close(&last, &states.select(1, 1), 0.0));
        assert_eq!(states.narrow(1, 2, 3).abs().sum(Kind::Float).double_value(&[]), 0.0);
        // An empty history: zero states, zero last state.
        let none = Tensor::zeros([1, 5], (Kind::Float, Device::Cpu));
        let (states, last) = gru.forward(&padded, &RealSlots::from_mask(&none));
        assert_eq!((states.size(), last.abs().sum(Kind::Float).double_value(&[])), (vec![1, 5, 4], 0.0));
    }

    #[test]
    fn mlp_variables_are_named_after_their_fields() {
        let vs = nn::VarStore::new(Device::Cpu);
        let _ = Mlp::new(&(vs.root() / "head"), 5, &[4, 3], 1, ActivationKind::Dice);
        let mut names: Vec<String> = vs.variables().into_keys().collect();
        names.sort();
        let expected = [
            "head.activations.0.alpha",
            "head.activations.0.running_mean",
            "head.activations.0.running_var",
            "head.activations.1.alpha",
            "head.activations.1.running_mean",
            "head.activations.1.running_var",
            "head.layers.0.bias",
            "head.layers.0.weight",
            "head.layers.1.bias",
            "head.layers.1.weight",
            "head.output.bias",
            "head.output.weight",
        ];
        assert_eq!(names, expected);
    }
}
