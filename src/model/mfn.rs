//! MFN (Xie et al., 2021): multiple interests from two relations among the behaviours, aggregated
//! against the target.
//!
//! - **Similarity** (Eq. 4–5): each behaviour is assigned to `K` interest centres `C` by
//!   `P = softmax_K(E Cᵀ)`, where `E` are *fixed* item embeddings; the interests are
//!   `R_s = Pᵀ ℰ` over the *trainable* behaviour vectors `ℰ`. `E` and `C` come pretrained from a
//!   file (`model.mfn_pretrained`, written by `micn mfn-centres`: `E` = the item vectors of a
//!   trained vanilla model, `C` by Algorithm 1, [`pretrain_centres`]); without one, `E` is `ℰ`'s
//!   item vectors with the gradient stopped and `C` is learned by the main task (the paper's
//!   "MFN w/o pretrain").
//! - **Combination** (Eq. 6–7): `A = softmax_T(W₂ᵀ swish(W₁ MSA(ℰ)ᵀ))` over the real behaviours,
//!   `R_c = A ℰ`; MSA is multi-head scaled dot-product self-attention over the real behaviours
//!   (`model.mfn_heads`, with an output projection, no residual or normalisation).
//! - **Aggregation** (Eq. 9–11): one feed-forward scorer per relation reads
//!   `[r_j, e_t, r_j − e_t, r_j·e_t]` (DIN's features, sigmoid MLP of `attention_hidden`), a softmax
//!   within each relation gives `w_1j`, `w_2j`, and `R(e_t) = Σ w_1j r_j + Σ w_2j r_{K+j}`.
//! - **Fine-grained features**: with `model.mfn_attributes` and a dataset with an item-attribute
//!   table, `ℰ_t = e_t + Σ_c a_c(t)`, the sum of the behaviour's attribute embeddings.
//! - **Head**: a Dice MLP over `[user, e_t, Σ hist, e_t·Σ hist, R(e_t)]` (DIN's head input with
//!   `R(e_t)` in place of the attended history).
use std::path::Path;

use tch::nn::{self, Module};
use tch::{Kind, Tensor};

use super::batch_stats::Mode;
use super::embeddings::{HostIds, MainInput};
use super::item_attributes::{AttributeEmbeddings, ItemAttributeIds, ATTRIBUTE_TABLE};
use super::layers::{masked_softmax, masked_sum, ActivationKind, Mlp};
use super::{InputDims, MainOutput, ModelError, RowLookups};
use crate::config::ModelConfig;

/// Names of the tensors in a pretrained file.
pub const PRETRAINED_ITEMS: &str = "items";
pub const PRETRAINED_CENTRES: &str = "centres";
/// Paths of the fixed embeddings and the pretrained centres under the model's path (buffers).
const FIXED_ITEMS: &str = "fixed_items";
const CENTRES: &str = "centres";

/// Fixed item embeddings `E` `[items, w_E]` and interest centres `C` `[K, w_E]`.
#[derive(Debug)]
pub struct Pretrained {
    pub items: Tensor,
    pub centres: Tensor,
}

impl Pretrained {
    /// Read `path` (safetensors with [`PRETRAINED_ITEMS`] and [`PRETRAINED_CENTRES`], f32; or the
    /// model file of an MFN trained with pretrained ones, which keeps them as buffers), for a
    /// model over `items` items with `k` centres.
    pub fn read(path: &Path, items: i64, k: i64) -> Result<Self, ModelError> {
        let error = |why: String| ModelError::Pretrained { path: path.to_path_buf(), why };
        let mut tensors = crate::checkpoint::read_tensors(path).map_err(|e| {
            // The reader names the file already; said once.
            let why = e.to_string();
            error(why.strip_prefix(&format!("{}: ", path.display())).map_or(why.clone(), str::to_string))
        })?;
        let mut take = |name: &str, saved: &str| {
            let saved = format!("{}.{saved}", crate::network::MAIN_PATH);
            (tensors.remove(name).or_else(|| tensors.remove(&saved)))
                .ok_or_else(|| error(format!("has no tensor `{name}`")))
        };
        let (e, c) = (take(PRETRAINED_ITEMS, FIXED_ITEMS)?, take(PRETRAINED_CENTRES, CENTRES)?);
        let (es, cs) = (e.size(), c.size());
        if e.kind() != Kind::Float || c.kind() != Kind::Float || es.len() != 2 || cs.len() != 2 {
            return Err(error(format!("needs two f32 matrices, has {:?} {es:?} and {:?} {cs:?}", e.kind(), c.kind())));
        }
        if es[0] != items {
            return Err(error(format!(
                "holds embeddings of {} items, and this dataset has {items}: pretrain on the same dataset",
                es[0]
            )));
        }
        if cs[0] != k || cs[1] != es[1] {
            return Err(error(format!(
                "holds centres of shape {cs:?}; the model needs [{k}, {}] (model.mfn_interests = {k})",
                es[1]
            )));
        }
        if !bool::try_from(e.isfinite().all().logical_and(&c.isfinite().all())).unwrap_or(false) {
            return Err(error("holds a value that is not finite".into()));
        }
        Ok(Self { items: e, centres: c })
    }

    /// Write `path` whole or not at all (see [`crate::io_error::replace_file`]).
    pub fn write(&self, path: &Path) -> Result<(), crate::io_error::PathIo> {
        let tensors = [
            (PRETRAINED_ITEMS.to_string(), self.items.shallow_clone()),
            (PRETRAINED_CENTRES.to_string(), self.centres.shallow_clone()),
        ];
        crate::io_error::replace_file(path, |tmp| crate::checkpoint::write_tensors(tmp, &tensors))
    }
}

/// Algorithm 1's objective per history (Eq. 1–3): `L_E = L_SE − L_ME` of the assignments
/// `P = softmax_K(E Cᵀ)` of its real behaviours, with
/// `L_ME = −1/K Σ_j p̄_j log p̄_j` (`p̄_j` the mean of `P_tj` over the behaviours) and
/// `L_SE = −1/(K·N) Σ_j Σ_t P_tj log P_tj`.
///
/// # Shapes
/// `hist [b, T, w_E]` (fixed embeddings), `mask [b, T]`, `centres [K, w_E]` → `[b]`; a history
/// without behaviours gives 0.
pub fn entropy_objective(hist: &Tensor, mask: &Tensor, centres: &Tensor) -> Tensor {
    let k = centres.size()[0] as f64;
    let p = hist.matmul(&centres.tr()).softmax(-1, Kind::Float) * mask.unsqueeze(-1); // [b, T, K]
    let n = mask.sum_dim_intlist(1, false, Kind::Float).clamp_min(1.0); // [b]
    let plogp = |x: &Tensor| x * x.clamp_min(1e-30).log();
    let mean = p.sum_dim_intlist(1, false, Kind::Float) / n.unsqueeze(-1); // [b, K]
    let l_me = -plogp(&mean).sum_dim_intlist(1, false, Kind::Float) / k;
    let l_se = -plogp(&p).sum_dim_intlist([1i64, 2].as_slice(), false, Kind::Float) / (&n * k);
    l_se - l_me
}

/// Algorithm 1: the centres `C` (`initial [K, w_E]`) moved by gradient steps on the mean of
/// [`entropy_objective`] over each batch of histories (`hist_items [b, T]`, `mask [b, T]`) whose
/// fixed embeddings are rows of `items [n, w_E]`. The step is Adam's (β₁ 0.9, β₂ 0.999) with rate
/// `lr` where the paper writes a plain one: the objective's gradient scales with the square of
/// the embeddings' norm, which differs by orders of magnitude between trained models, and Adam's
/// step does not. Returns the centres and the objective of every step.
pub fn pretrain_centres(
    items: &Tensor,
    initial: &Tensor,
    batches: impl Iterator<Item = (Tensor, Tensor)>,
    lr: f64,
) -> (Tensor, Vec<f64>) {
    const BETA1: f64 = 0.9;
    const BETA2: f64 = 0.999;
    const EPS: f64 = 1e-8;
    let mut centres = initial.detach().copy().set_requires_grad(true);
    let (mut m, mut v) = (centres.zeros_like(), centres.zeros_like());
    let mut losses = Vec::new();
    for (step, (hist_items, mask)) in batches.enumerate() {
        let (b, steps) = (hist_items.size()[0], hist_items.size()[1]);
        let hist = items.index_select(0, &hist_items.flatten(0, -1)).view([b, steps, items.size()[1]]);
        let loss = entropy_objective(&hist, &mask, &centres).mean(Kind::Float);
        let grad = Tensor::run_backward(&[&loss], &[&centres], false, false).remove(0);
        // Read once, at the end: a read per step would wait for the device each step.
        losses.push(loss.detach());
        let t = step as i32 + 1;
        m = &m * BETA1 + &grad * (1.0 - BETA1);
        v = &v * BETA2 + grad.square() * (1.0 - BETA2);
        let (m_hat, v_hat) = (&m / (1.0 - BETA1.powi(t)), &v / (1.0 - BETA2.powi(t)));
        centres = tch::no_grad(|| &centres - m_hat / (v_hat.sqrt() + EPS) * lr).set_requires_grad(true);
    }
    let losses = if losses.is_empty() {
        Vec::new()
    } else {
        crate::transfer::download_f32(&Tensor::stack(&losses, 0)).into_iter().map(f64::from).collect()
    };
    (centres.detach(), losses)
}

/// Multi-head scaled dot-product self-attention over the real behaviours.
#[derive(Debug)]
struct SelfAttention {
    query: nn::Linear,
    key: nn::Linear,
    value: nn::Linear,
    output: nn::Linear,
    heads: i64,
}

impl SelfAttention {
    fn new(p: &nn::Path, width: i64, heads: i64) -> Self {
        let layer = |name: &str| nn::linear(p / name, width, width, Default::default());
        Self { query: layer("query"), key: layer("key"), value: layer("value"), output: layer("output"), heads }
    }

    /// `xs [b, T, w]`, `mask [b, T]` → `[b, T, w]`
    fn forward(&self, xs: &Tensor, mask: &Tensor) -> Tensor {
        let (b, steps, w) = (xs.size()[0], xs.size()[1], xs.size()[2]);
        let (h, d) = (self.heads, w / self.heads);
        let split = |t: Tensor| t.view([b, steps, h, d]).transpose(1, 2); // [b, h, T, d]
        let (q, k, v) = (split(self.query.forward(xs)), split(self.key.forward(xs)), split(self.value.forward(xs)));
        let logits = q.matmul(&k.transpose(-1, -2)) / (d as f64).sqrt(); // [b, h, T, T]
        let keys = mask.view([b, 1, 1, steps]).expand([b, h, steps, steps], false);
        let mixed = masked_softmax(&logits, &keys).matmul(&v); // [b, h, T, d]
        self.output.forward(&mixed.transpose(1, 2).reshape([b, steps, w]))
    }
}

/// Where the similarity weights come from.
#[derive(Debug)]
enum Weighing {
    /// Pretrained fixed embeddings (`[items, w_E]`) and centres (`[K, w_E]`), both buffers.
    Pretrained { items: Tensor, centres: Tensor },
    /// The behaviour's own item vector with the gradient stopped, and learned centres `[K, w]`.
    Learned { centres: Tensor },
}

/// MFN.
#[derive(Debug)]
pub struct Mfn {
    weighing: Weighing,
    attributes: Option<AttributeEmbeddings>,
    attention: SelfAttention,
    /// `W₁`, `[w] → [d_h]`, and `W₂`, `[d_h] → [K]` (Eq. 6).
    w1: nn::Linear,
    w2: nn::Linear,
    /// `a_1`, `a_2` (Eq. 10).
    similarity_scorer: Mlp,
    combination_scorer: Mlp,
    head: Mlp,
}

impl Mfn {
    /// MFN for inputs of `dims` over `items` items; `attributes` are used as fine-grained features
    /// when given and `model.mfn_attributes` is on.
    pub fn new(
        p: &nn::Path,
        cfg: &ModelConfig,
        dims: InputDims,
        attributes: Option<&ItemAttributeIds>,
        items: i64,
    ) -> Result<Self, ModelError> {
        let (w, k) = (dims.item, cfg.mfn_interests as i64);
        let weighing = match &cfg.mfn_pretrained {
            Some(path) => {
                let pretrained = Pretrained::read(path, items, k)?;
                let buffer = |name: &str, value: &Tensor| {
                    let t = p.zeros_no_train(name, &value.size());
                    tch::no_grad(|| t.shallow_clone().copy_(value));
                    t
                };
                Weighing::Pretrained {
                    items: buffer(FIXED_ITEMS, &pretrained.items),
                    centres: buffer(CENTRES, &pretrained.centres),
                }
            }
            None => Weighing::Learned {
                centres: p.var(CENTRES, &[k, w], nn::Init::Randn { mean: 0.0, stdev: 1.0 / (w as f64).sqrt() }),
            },
        };
        let attributes = match attributes {
            Some(ids) if cfg.mfn_attributes && ids.columns() > 0 => Some(AttributeEmbeddings::new(p, ids, items, w)?),
            _ => None,
        };
        let hidden = cfg.mfn_hidden as i64;
        let no_bias = nn::LinearConfig { bias: false, ..Default::default() };
        let scorer = |name: &str| Mlp::new(&(p / name), 4 * w, &cfg.attention_hidden, 1, ActivationKind::Sigmoid);
        Ok(Self {
            weighing,
            attributes,
            attention: SelfAttention::new(&(p / "attention"), w, cfg.mfn_heads as i64),
            w1: nn::linear(p / "w1", w, hidden, no_bias),
            w2: nn::linear(p / "w2", hidden, k, no_bias),
            similarity_scorer: scorer("similarity_scorer"),
            combination_scorer: scorer("combination_scorer"),
            head: Mlp::new(&(p / "head"), dims.user + 4 * w, &cfg.head_hidden, 1, ActivationKind::Dice),
        })
    }

    /// The attribute embeddings, when read as fine-grained features.
    pub fn attributes(&self) -> Option<&AttributeEmbeddings> {
        self.attributes.as_ref()
    }

    /// The model's variables updated by rows.
    pub fn row_tables(&self) -> &'static [&'static str] {
        if self.attributes.is_some() {
            &[ATTRIBUTE_TABLE]
        } else {
            &[]
        }
    }

    /// The lookups a training batch makes in the attribute table (with `model.mfn_attributes`):
    /// every history slot's attributes.
    pub fn row_lookups(&self, host: &HostIds<'_>) -> Option<RowLookups> {
        Some(self.attributes.as_ref()?.row_lookups(ATTRIBUTE_TABLE, &[host.hist_items]))
    }

    /// The behaviour vectors `ℰ`: `[b, T, w]`.
    fn values(&self, x: &MainInput) -> Tensor {
        match &self.attributes {
            Some(a) => {
                &x.hist
                    + a.embed(&x.ids.hist_items, x.planned_rows.as_ref(), 0).sum_dim_intlist(2, false, x.hist.kind())
            }
            None => x.hist.shallow_clone(),
        }
    }

    /// The similarity and combination interests, `[b, K, w]` each.
    pub fn interests(&self, x: &MainInput) -> (Tensor, Tensor) {
        let (b, steps) = (x.hist_mask.size()[0], x.hist_mask.size()[1]);
        let values = self.values(x);
        let (fixed, centres) = match &self.weighing {
            Weighing::Pretrained { items, centres } => {
                let width = items.size()[1];
                (items.index_select(0, &x.ids.hist_items.flatten(0, -1)).view([b, steps, width]), centres)
            }
            Weighing::Learned { centres } => (x.hist.detach(), centres),
        };
        let assignment = fixed.matmul(&centres.tr()).softmax(-1, values.kind()) * x.hist_mask.unsqueeze(-1); // [b, T, K]
        let similarity = assignment.transpose(1, 2).matmul(&values);
        let combination = self.combination_weights(&values, &x.hist_mask).matmul(&values);
        (similarity, combination)
    }

    /// `A` of Eq. 6: `[b, T, w]`, `[b, T]` → `[b, K, T]`, each row a softmax over the real
    /// behaviours.
    fn combination_weights(&self, values: &Tensor, mask: &Tensor) -> Tensor {
        let (b, steps) = (mask.size()[0], mask.size()[1]);
        let mixed = self.attention.forward(values, mask);
        let logits = self.w2.forward(&self.w1.forward(&mixed).silu()).transpose(1, 2); // [b, K, T]
        let k = logits.size()[1];
        masked_softmax(&logits, &mask.view([b, 1, steps]).expand([b, k, steps], false))
    }

    /// One relation's interests weighed against the target (Eq. 10): `[b, K, w]` → `[b, w]`.
    fn aggregate(scorer: &Mlp, interests: &Tensor, target: &Tensor) -> Tensor {
        let query = target.unsqueeze(1).expand_as(interests);
        let features = Tensor::cat(&[interests, &query, &(interests - &query), &(interests * &query)], -1);
        let weights = scorer.forward(&features, Mode::Eval).squeeze_dim(-1).softmax(-1, interests.kind()); // [b, K]
        weights.unsqueeze(1).matmul(interests).squeeze_dim(1)
    }

    /// # Shapes
    /// `user [b, d]`, `target [b, w]`, `hist [b, T, w]`, `hist_mask [b, T]` → `logit [b]`
    pub fn forward(&self, x: &MainInput, mode: Mode) -> MainOutput {
        let (similarity, combination) = self.interests(x);
        let user_vector = Self::aggregate(&self.similarity_scorer, &similarity, &x.target)
            + Self::aggregate(&self.combination_scorer, &combination, &x.target);
        let hist_sum = masked_sum(&x.hist, &x.hist_mask);
        let input = Tensor::cat(&[&x.user, &x.target, &hist_sum, &(&x.target * &hist_sum), &user_vector], -1);
        MainOutput { logit: self.head.forward(&input, mode).squeeze_dim(-1), aux_loss: None, user_vector: None }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::embeddings::{BatchIds, Embeddings};
    use crate::model::testing;
    use tch::Device;

    use crate::model::testing::VOCAB;

    fn close(a: &Tensor, b: &Tensor, tol: f64) -> bool {
        a.allclose(b, tol, tol, false)
    }

    fn small(cfg: ModelConfig, attributes: bool) -> (nn::VarStore, Embeddings, Mfn) {
        testing::one_thread();
        tch::manual_seed(7);
        let vs = nn::VarStore::new(Device::Cpu);
        let emb = testing::embeddings(&vs);
        let dims = InputDims { user: 3, item: emb.item_width() };
        let cfg =
            ModelConfig { mfn_interests: 3, mfn_hidden: 5, attention_hidden: vec![4], head_hidden: vec![4], ..cfg };
        let ids = testing::attributes(VOCAB.items);
        let mfn = Mfn::new(&(vs.root() / "main"), &cfg, dims, attributes.then_some(&ids), VOCAB.items).unwrap();
        (vs, emb, mfn)
    }

    /// Eq. 1–3 for one history of two behaviours (a third slot padded), written out.
    #[test]
    fn the_entropy_objective_follows_equations_1_to_3() {
        let hist = Tensor::from_slice(&[1.0f32, 0.0, 0.2, 0.9, 5.0, 5.0]).view([1, 3, 2]);
        let centres = Tensor::from_slice(&[1.0f32, 0.0, 0.0, 1.0, -1.0, -1.0]).view([3, 2]);
        let mask = Tensor::from_slice(&[1.0f32, 1.0, 0.0]).view([1, 3]);
        let p: Vec<Vec<f64>> = [[1.0, 0.0], [0.2, 0.9]]
            .iter()
            .map(|e| {
                let s: Vec<f64> =
                    [(1.0, 0.0), (0.0, 1.0), (-1.0, -1.0)].iter().map(|c| e[0] * c.0 + e[1] * c.1).collect();
                let z: f64 = s.iter().map(|v| v.exp()).sum();
                s.iter().map(|v| v.exp() / z).collect()
            })
            .collect();
        let (k, n) = (3.0, 2.0);
        let mean: Vec<f64> = (0..3).map(|j| (p[0][j] + p[1][j]) / n).collect();
        let l_me = -mean.iter().map(|m| m * m.ln()).sum::<f64>() / k;
        let l_se = -p.iter().flatten().map(|v| v * v.ln()).sum::<f64>() / (k * n);
        let got = entropy_objective(&hist, &mask, &centres).double_value(&[0]);
        assert!((got - (l_se - l_me)).abs() < 1e-6, "{got} vs {}", l_se - l_me);
        // No behaviour: 0.
        let none = entropy_objective(&hist, &mask.zeros_like(), &centres).double_value(&[0]);
        assert_eq!(none, 0.0);
    }

    /// Items in three well-separated clusters, histories mixing them: Algorithm 1 lowers the
    /// objective and, from this start, ends with one centre per cluster (every item of a cluster
    /// assigned to the same centre, different clusters to different centres).
    #[test]
    fn algorithm_1_finds_one_centre_per_cluster() {
        testing::one_thread();
        // A generator of its own: libtorch's is shared with the tests running beside this one.
        let mut rng = crate::rng::Rng::new(11);
        let mut noise = |len: usize, scale: f64| {
            Tensor::from_slice(&(0..len).map(|_| (rng.normal() * scale) as f32).collect::<Vec<f32>>())
        };
        let n = 31;
        let cluster = |i: i64| (i - 1) % 3;
        let homes = Tensor::from_slice(&[4.0f32, 0.0, 0.0, 4.0, -4.0, -4.0]).view([3, 2]);
        let rows: Vec<Tensor> = (0..n)
            .map(|i| {
                let home = homes.get(if i == 0 { 0 } else { cluster(i) });
                home + noise(2, 0.3)
            })
            .collect();
        let items = Tensor::stack(&rows, 0);
        // A start near the origin. From some starts two clusters end under one centre, a local
        // optimum of the objective (8 of 30 such starts; 23 of 40 starts at three random items'
        // vectors, as `micn export mfn-centres` starts): this start is one that separates them.
        let initial = noise(6, 0.1).view([3, 2]);
        let batches = (0..300).map(|step| {
            let ids: Vec<i64> = (0..16 * 6).map(|j| 1 + (step * 7 + j * 13) % (n - 1)).collect();
            (Tensor::from_slice(&ids).view([16, 6]), Tensor::ones([16, 6], (Kind::Float, Device::Cpu)))
        });
        let (centres, losses) = pretrain_centres(&items, &initial, batches, 0.05);
        assert!(losses.last().unwrap() < &(losses[0] - 0.1), "{} → {}", losses[0], losses.last().unwrap());
        let assigned: Vec<i64> = Vec::try_from(items.matmul(&centres.tr()).argmax(-1, false)).unwrap();
        let of_cluster =
            |c: i64| -> Vec<i64> { (1..n).filter(|&i| cluster(i) == c).map(|i| assigned[i as usize]).collect() };
        let firsts: Vec<i64> = (0..3).map(|c| of_cluster(c)[0]).collect();
        for c in 0..3 {
            assert!(of_cluster(c).iter().all(|&a| a == firsts[c as usize]), "cluster {c}: {:?}", of_cluster(c));
        }
        assert!(firsts[0] != firsts[1] && firsts[1] != firsts[2] && firsts[0] != firsts[2], "{firsts:?}");
    }

    fn batch(seed: u64, b: i64, t: i64) -> BatchIds {
        testing::batch(seed, b, t, &VOCAB, false)
    }

    /// Eq. 4–5 and 10–11 for one sample, written out from the variables (learned centres, no
    /// attributes): the similarity interests, the combination weights summing to one over the real
    /// behaviours, and the aggregation.
    #[test]
    fn interests_and_aggregation_follow_the_equations() {
        let (vs, emb, mfn) = small(ModelConfig::default(), false);
        let ids = batch(3, 3, 5); // lengths 5, 4, 3
        let x = emb.forward(&ids).main;
        let (similarity, combination) = mfn.interests(&x);
        let vars = vs.variables();
        let (sample, len) = (1, 4);
        let values = x.hist.get(sample).narrow(0, 0, len); // [4, w]
        let p = values.matmul(&vars["main.centres"].tr()).softmax(-1, Kind::Float); // [4, K]
        assert!(close(&similarity.get(sample), &p.tr().matmul(&values), 1e-5));
        // Combination (Eq. 6–7): two-head self-attention over the 4 real behaviours, W₁, swish,
        // W₂, a softmax over the behaviours.
        let layer = |name: &str, x: &Tensor| {
            x.matmul(&vars[&format!("main.{name}.weight")].tr()) + &vars[&format!("main.{name}.bias")]
        };
        let (q, k, v) =
            (layer("attention.query", &values), layer("attention.key", &values), layer("attention.value", &values));
        let head = |h: i64| {
            let part = |t: &Tensor| t.narrow(1, 3 * h, 3);
            (part(&q).matmul(&part(&k).tr()) / 3f64.sqrt()).softmax(-1, Kind::Float).matmul(&part(&v))
        };
        let mixed = layer("attention.output", &Tensor::cat(&[head(0), head(1)], 1)); // [4, w]
        let logits = mixed.matmul(&vars["main.w1.weight"].tr()).silu().matmul(&vars["main.w2.weight"].tr()); // [4, K]
        let a = logits.tr().softmax(-1, Kind::Float); // [K, 4]
        let got_a = mfn.combination_weights(&x.hist, &x.hist_mask).get(sample);
        assert!(close(&got_a.narrow(1, 0, len), &a, 1e-5), "{got_a} vs {a}");
        assert_eq!(got_a.narrow(1, len, 1).abs().sum(Kind::Float).double_value(&[]), 0.0, "the padded slot");
        assert!(close(&combination.get(sample), &a.matmul(&values), 1e-5));
        // Aggregation with the scorer written out.
        let target = x.target.get(sample);
        let score = |r: &Tensor, prefix: &str| -> Tensor {
            let f = Tensor::cat(&[r, &target, &(r - &target), &(r * &target)], 0);
            let h = (f.matmul(&vars[&format!("main.{prefix}.layers.0.weight")].tr())
                + &vars[&format!("main.{prefix}.layers.0.bias")])
                .sigmoid();
            h.matmul(&vars[&format!("main.{prefix}.output.weight")].tr()) + &vars[&format!("main.{prefix}.output.bias")]
        };
        let weigh = |rs: &Tensor, prefix: &str| {
            let scores = Tensor::cat(&(0..3).map(|j| score(&rs.get(j), prefix)).collect::<Vec<_>>(), 0);
            scores.softmax(0, Kind::Float).unsqueeze(0).matmul(rs).squeeze_dim(0)
        };
        let expected =
            weigh(&similarity.get(sample), "similarity_scorer") + weigh(&combination.get(sample), "combination_scorer");
        let got = Mfn::aggregate(&mfn.similarity_scorer, &similarity, &x.target)
            + Mfn::aggregate(&mfn.combination_scorer, &combination, &x.target);
        assert!(close(&got.get(sample), &expected, 1e-5), "{got} vs {expected}");
    }

    #[test]
    fn scores_do_not_depend_on_the_batch_and_an_empty_history_is_finite() {
        for attributes in [false, true] {
            let (_, emb, mfn) = small(ModelConfig::default(), attributes);
            assert_eq!(mfn.row_tables().len(), usize::from(attributes));
            let ids = batch(5, 6, 4); // lengths 4, 3, 2, 1, 0, 4
            let logits = mfn.forward(&emb.forward(&ids).main, Mode::Eval).logit;
            assert!(bool::try_from(logits.isfinite().all()).unwrap(), "{logits}");
            let alone = testing::rows(&ids, 3, 3);
            let alone = mfn.forward(&emb.forward(&alone).main, Mode::Eval).logit;
            assert!(close(&alone, &logits.narrow(0, 3, 3), 1e-6), "{alone} vs {logits}");
        }
    }

    #[test]
    fn pretrained_files_are_read_back_and_wrong_ones_refused_by_name() {
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join("centres.safetensors");
        let items = Tensor::randn([11, 4], (Kind::Float, Device::Cpu));
        let centres = Tensor::randn([3, 4], (Kind::Float, Device::Cpu));
        Pretrained { items: items.copy(), centres: centres.copy() }.write(&path).unwrap();
        let back = Pretrained::read(&path, 11, 3).unwrap();
        assert!(close(&back.items, &items, 0.0) && close(&back.centres, &centres, 0.0));
        let refused = |items: i64, k: i64| Pretrained::read(&path, items, k).unwrap_err().to_string();
        assert!(refused(12, 3).contains("of 11 items, and this dataset has 12"), "{}", refused(12, 3));
        assert!(refused(11, 4).contains("model.mfn_interests = 4"), "{}", refused(11, 4));
        std::fs::write(&path, b"not a safetensors file").unwrap();
        assert!(refused(11, 3).contains(&path.display().to_string()), "{}", refused(11, 3));
        // The model is built from it: fixed embeddings and centres as buffers, nothing learned.
        Pretrained { items, centres }.write(&path).unwrap();
        let cfg = ModelConfig { mfn_pretrained: Some(path), mfn_interests: 3, ..Default::default() };
        let vs = nn::VarStore::new(Device::Cpu);
        Mfn::new(&vs.root(), &cfg, InputDims { user: 3, item: 6 }, None, 11).unwrap();
        let vars = vs.variables();
        assert!(!vars["fixed_items"].requires_grad() && !vars["centres"].requires_grad());
    }
}
