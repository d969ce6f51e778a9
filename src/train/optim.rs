//! Adam, written here so that its moments can be checkpointed (tch's optimizer hides them):
//! dense Adam for dense parameters, and for embedding tables either row-sparse ("lazy") Adam on
//! the rows a step touched — untouched rows, and their moments, stay exactly as they were — or
//! exact dense Adam. Bias correction uses the global step count in both cases.
//!
//! Update (Kingma & Ba 2015, as PyTorch writes it): `m ← β1·m + (1−β1)·g`,
//! `v ← β2·v + (1−β2)·g²`, `p ← p − lr · (m / (1−β1ᵗ)) / (sqrt(v / (1−β2ᵗ)) + ε)`.
use tch::{Kind, Tensor};

/// Adam's hyper-parameters.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct AdamConfig {
    pub lr: f64,
    pub beta1: f64,
    pub beta2: f64,
    pub eps: f64,
}

/// Moments of one parameter.
#[derive(Debug)]
pub struct Moments {
    pub m: Tensor,
    pub v: Tensor,
}

impl AdamConfig {
    /// One Adam step as tensor operations, the same ones for every update: the new moments and
    /// the amount to subtract from the parameter, from the old moments `m`, `v`, the gradient `g`
    /// and the bias corrections.
    fn step(self, m: &Tensor, v: &Tensor, g: &Tensor, (bc1, bc2): (f64, f64)) -> (Tensor, Tensor, Tensor) {
        let AdamConfig { lr, beta1, beta2, eps } = self;
        let m = m * beta1 + g * (1.0 - beta1);
        let v = v * beta2 + g.square() * (1.0 - beta2);
        let update = (&m / bc1) / ((&v / bc2).sqrt() + eps) * lr;
        (m, v, update)
    }

    /// The run's settings (`train.lr`, `train.adam_beta1`, `train.adam_beta2`, `train.adam_eps`).
    pub fn from_train(train: &crate::config::TrainConfig) -> Self {
        Self { lr: train.lr, beta1: train.adam_beta1, beta2: train.adam_beta2, eps: train.adam_eps }
    }
}

/// Adam over a fixed list of parameters (by index).
#[derive(Debug)]
pub struct Adam {
    pub cfg: AdamConfig,
    /// Steps taken so far (`t` of the bias correction after the next step is `step + 1`).
    pub step: u64,
    pub moments: Vec<Moments>,
}

impl Adam {
    /// Zero moments shaped like `params`.
    pub fn new(cfg: AdamConfig, params: &[Tensor]) -> Self {
        let moments =
            params.iter().map(|p| Moments { m: p.zeros_like().detach(), v: p.zeros_like().detach() }).collect();
        Self { cfg, step: 0, moments }
    }

    /// Start a step: returns the bias corrections `(1 − β1ᵗ, 1 − β2ᵗ)` of the new step.
    pub fn begin_step(&mut self) -> (f64, f64) {
        self.step += 1;
        let t = self.step as i32;
        (1.0 - self.cfg.beta1.powi(t), 1.0 - self.cfg.beta2.powi(t))
    }

    /// Dense update of parameter `i` with gradient `g` (same shape).
    pub fn update_dense(&mut self, i: usize, param: &mut Tensor, g: &Tensor, bc: (f64, f64)) {
        let cfg = self.cfg;
        let mo = &mut self.moments[i];
        tch::no_grad(|| {
            let (m, v, update) = cfg.step(&mo.m, &mo.v, g, bc);
            mo.m.copy_(&m);
            mo.v.copy_(&v);
            let _ = param.f_sub_(&update).expect("update has the parameter's shape");
        });
    }

    /// Row-sparse update of table `i`: only `rows` (`[r]` i64, distinct) with gradients
    /// `g_rows` (`[r, d]`) change.
    pub fn update_rows(&mut self, i: usize, table: &mut Tensor, rows: &Tensor, g_rows: &Tensor, bc: (f64, f64)) {
        if rows.numel() == 0 {
            return;
        }
        let cfg = self.cfg;
        let mo = &mut self.moments[i];
        tch::no_grad(|| {
            let (m, v, update) = cfg.step(&mo.m.index_select(0, rows), &mo.v.index_select(0, rows), g_rows, bc);
            let new_rows = table.index_select(0, rows) - update;
            let _ = mo.m.index_copy_(0, rows, &m);
            let _ = mo.v.index_copy_(0, rows, &v);
            let _ = table.index_copy_(0, rows, &new_rows);
        });
    }

    /// [`Adam::update_dense`] computed on the host, in one pass over the parameter's own memory,
    /// with the same f32 operations in the same order (the moments equal bit for bit, the
    /// parameters to the last bit of libtorch's vectorised sqrt; a test checks). Only
    /// for CPU tensors of f32 in one contiguous block: returns false, changing nothing, for any
    /// other, and the caller falls back to the tensor path.
    pub fn update_dense_host(&mut self, i: usize, param: &mut Tensor, g: &[f32], bc: (f64, f64)) -> bool {
        let mo = &mut self.moments[i];
        let (Some(p), Some(m), Some(v)) = (host_f32(param), host_f32(&mo.m), host_f32(&mo.v)) else {
            return false;
        };
        if g.len() != p.len() {
            return false;
        }
        let k = Coefficients::new(self.cfg, bc);
        for (((p, m), v), &g) in p.iter_mut().zip(m.iter_mut()).zip(v.iter_mut()).zip(g) {
            k.step(p, m, v, g);
        }
        true
    }

    /// [`Adam::update_rows`] on the host: rows `ids` (distinct) of table `i` with their
    /// gradients `g_rows` (row-major). Same conditions and fallback as
    /// [`Adam::update_dense_host`].
    pub fn update_rows_host(
        &mut self,
        i: usize,
        table: &mut Tensor,
        ids: &[i64],
        g_rows: &[f32],
        bc: (f64, f64),
    ) -> bool {
        let mo = &mut self.moments[i];
        let (Some(p), Some(m), Some(v)) = (host_f32(table), host_f32(&mo.m), host_f32(&mo.v)) else {
            return false;
        };
        let dim = table.size().last().copied().unwrap_or(0) as usize;
        let n_rows = p.len().checked_div(dim).unwrap_or(0);
        if dim == 0 || g_rows.len() != ids.len() * dim || ids.iter().any(|&r| r < 0 || r as usize >= n_rows) {
            return false;
        }
        let k = Coefficients::new(self.cfg, bc);
        for (&row, g) in ids.iter().zip(g_rows.chunks_exact(dim)) {
            let at = row as usize * dim..(row as usize + 1) * dim;
            let (p, m, v) = (&mut p[at.clone()], &mut m[at.clone()], &mut v[at]);
            for (((p, m), v), &g) in p.iter_mut().zip(m.iter_mut()).zip(v.iter_mut()).zip(g) {
                k.step(p, m, v, g);
            }
        }
        true
    }

    /// Restore moments saved by [`Adam::named_state`] (and the step count); every parameter's
    /// `m.<name>` and `v.<name>` must be present with the parameter's shape.
    pub fn load_state(
        &mut self,
        names: &[String],
        step: u64,
        mut lookup: impl FnMut(&str) -> Option<Tensor>,
    ) -> Result<(), StateMismatch> {
        for (name, mo) in names.iter().zip(self.moments.iter_mut()) {
            for (key, slot) in [(format!("m.{name}"), &mut mo.m), (format!("v.{name}"), &mut mo.v)] {
                let t = lookup(&key).ok_or_else(|| StateMismatch::Missing(key.clone()))?;
                if t.size() != slot.size() {
                    return Err(StateMismatch::Shape { key, saved: t.size(), parameter: slot.size() });
                }
                tch::no_grad(|| slot.copy_(&t));
            }
        }
        self.step = step;
        Ok(())
    }

    /// Named state for checkpoints: `m.<name>` and `v.<name>` per parameter.
    pub fn named_state<'a>(&'a self, names: &'a [String]) -> impl Iterator<Item = (String, &'a Tensor)> + 'a {
        names.iter().zip(&self.moments).flat_map(|(n, mo)| [(format!("m.{n}"), &mo.m), (format!("v.{n}"), &mo.v)])
    }
}

/// Saved optimizer state that does not fit the parameters it is loaded for.
#[derive(Debug, thiserror::Error)]
pub enum StateMismatch {
    #[error("optimizer state lacks `{0}`")]
    Missing(String),
    #[error("`{key}` has shape {saved:?}, the parameter {parameter:?}")]
    Shape { key: String, saved: Vec<i64>, parameter: Vec<i64> },
}

/// Dense parameters laid out in one flat buffer, their Adam moments likewise ([`Adam::flatten`]):
/// one update is a handful of operations over the whole buffer instead of a handful per
/// parameter, which is what a GPU wants (every operation is a kernel launch).
#[derive(Debug)]
pub struct FlatDense {
    /// The parameters' indices, in buffer order.
    pub indices: Vec<usize>,
    params: Tensor,
    m: Tensor,
    v: Tensor,
}

impl Adam {
    /// Makes the parameters `which` (dense ones, of one kind and device) and their moments views
    /// of three flat buffers; every value stays what it was.
    pub fn flatten(&mut self, params: &mut [Tensor], which: &[usize]) -> Option<FlatDense> {
        let first = params.get(*which.first()?)?;
        let total: i64 = which.iter().map(|&i| params[i].numel() as i64).sum();
        let zeros = || Tensor::zeros([total], (first.kind(), first.device()));
        let (flat_p, flat_m, flat_v) = (zeros(), zeros(), zeros());
        let mut start = 0;
        for &i in which {
            let (n, shape) = (params[i].numel() as i64, params[i].size());
            let at = |flat: &Tensor| flat.narrow(0, start, n).view(shape.as_slice());
            let mo = &mut self.moments[i];
            tch::no_grad(|| {
                at(&flat_p).copy_(&params[i]);
                at(&flat_m).copy_(&mo.m);
                at(&flat_v).copy_(&mo.v);
            });
            params[i].set_data(&at(&flat_p));
            (mo.m, mo.v) = (at(&flat_m), at(&flat_v));
            start += n;
        }
        Some(FlatDense { indices: which.to_vec(), params: flat_p, m: flat_m, v: flat_v })
    }

    /// [`Adam::update_dense`] of every parameter of `flat` at once, with their gradients `g` laid
    /// out in buffer order: the same operations, element by element, so the same values.
    pub fn update_flat(&mut self, flat: &mut FlatDense, g: &Tensor, bc: (f64, f64)) {
        let cfg = self.cfg;
        tch::no_grad(|| {
            let (m, v, update) = cfg.step(&flat.m, &flat.v, g, bc);
            flat.m.copy_(&m);
            flat.v.copy_(&v);
            let _ = flat.params.f_sub_(&update).expect("update has the buffer's shape");
        });
    }
}

impl FlatDense {
    /// Multiply every parameter in the buffer by `factor` (weight decay).
    pub fn scale_params(&mut self, factor: f64) {
        tch::no_grad(|| {
            let _ = self.params.f_mul_scalar_(factor);
        });
    }
}

/// The memory of a CPU f32 tensor stored as one contiguous block, as a mutable slice.
fn host_f32<'a>(t: &Tensor) -> Option<&'a mut [f32]> {
    let usable = t.device() == tch::Device::Cpu && t.kind() == Kind::Float && t.is_contiguous() && t.numel() > 0;
    // SAFETY: the tensor is a CPU f32 tensor whose `numel` elements lie contiguously from
    // `data_ptr`. Parameters and their two moments are distinct allocations, and nothing else
    // reads or writes them while the optimizer holds these slices (one update at a time, no
    // autograd graph alive between steps).
    usable.then(|| unsafe { std::slice::from_raw_parts_mut(t.data_ptr() as *mut f32, t.numel()) })
}

/// Adam's scalars as libtorch applies them to f32 tensors (each cast to f32 once).
struct Coefficients {
    beta1: f32,
    one_minus_beta1: f32,
    beta2: f32,
    one_minus_beta2: f32,
    bc1: f32,
    bc2: f32,
    eps: f32,
    lr: f32,
}

impl Coefficients {
    fn new(cfg: AdamConfig, (bc1, bc2): (f64, f64)) -> Self {
        Self {
            beta1: cfg.beta1 as f32,
            one_minus_beta1: (1.0 - cfg.beta1) as f32,
            beta2: cfg.beta2 as f32,
            one_minus_beta2: (1.0 - cfg.beta2) as f32,
            bc1: bc1 as f32,
            bc2: bc2 as f32,
            eps: cfg.eps as f32,
            lr: cfg.lr as f32,
        }
    }

    /// One element, in the order of `update_dense`'s tensor expressions.
    #[inline]
    fn step(&self, p: &mut f32, m: &mut f32, v: &mut f32, g: f32) {
        let m_new = *m * self.beta1 + g * self.one_minus_beta1;
        let v_new = *v * self.beta2 + (g * g) * self.one_minus_beta2;
        let update = (m_new / self.bc1) / ((v_new / self.bc2).sqrt() + self.eps) * self.lr;
        *m = m_new;
        *v = v_new;
        *p -= update;
    }
}

/// A dense gradient with the given rows set: the table-shaped form of row gradients, for the
/// exact dense update of embedding tables.
pub fn scatter_rows(shape: &[i64], rows: &Tensor, g_rows: &Tensor) -> Tensor {
    let dense = Tensor::zeros(shape, (Kind::Float, g_rows.device()));
    if rows.numel() > 0 {
        dense.index_copy(0, rows, g_rows)
    } else {
        dense
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tch::Device;

    const CFG: AdamConfig = AdamConfig { lr: 0.1, beta1: 0.9, beta2: 0.999, eps: 1e-8 };

    fn value(t: &Tensor) -> Vec<f64> {
        Vec::<f64>::try_from(t.to_kind(Kind::Double).flatten(0, -1)).unwrap()
    }

    #[test]
    fn dense_adam_matches_hand_computed_steps() {
        // p = 1, g = 0.5 then −1, lr 0.1 (by hand, in f64):
        // t=1: m = 0.05, v = 0.00025, m̂ = 0.5, v̂ = 0.25 → p = 1 − 0.1·0.5/(0.5 + 1e-8) = 0.90000000200
        // t=2: m = −0.055, v = 0.00124975, m̂ = −0.055/0.19 = −0.28947368, v̂ = 0.00124975/0.001999
        //      = 0.62518759, sqrt = 0.79068805 → p = 0.90000000200 + 0.1·0.28947368/0.79068805
        //      = 0.93661020
        let mut p = Tensor::from_slice(&[1.0f32]);
        let mut adam = Adam::new(CFG, &[p.shallow_clone()]);
        for (g, expected) in [(0.5f32, 0.900_000_002), (-1.0, 0.936_610_20)] {
            let bc = adam.begin_step();
            adam.update_dense(0, &mut p, &Tensor::from_slice(&[g]), bc);
            assert!((value(&p)[0] - expected).abs() < 1e-6, "{} vs {expected}", value(&p)[0]);
        }
        assert!((value(&adam.moments[0].m)[0] + 0.055).abs() < 1e-7);
        assert!((value(&adam.moments[0].v)[0] - 0.001_249_75).abs() < 1e-9);
    }

    #[test]
    fn row_sparse_adam_updates_only_touched_rows() {
        let mut table = Tensor::from_slice(&[1.0f32, 1.0, 2.0, 2.0, 3.0, 3.0]).view([3, 2]);
        let before = value(&table);
        let mut adam = Adam::new(CFG, &[table.shallow_clone()]);
        let bc = adam.begin_step();
        let rows = Tensor::from_slice(&[1i64]);
        adam.update_rows(0, &mut table, &rows, &Tensor::from_slice(&[0.5f32, -0.5]).view([1, 2]), bc);
        let after = value(&table);
        // Row 1 moves by lr·sign(g) on the first step (m̂/sqrt(v̂) = ±1); rows 0 and 2 stay.
        assert_eq!((after[0], after[1], after[4], after[5]), (before[0], before[1], before[4], before[5]));
        assert!((after[2] - 1.9).abs() < 1e-6 && (after[3] - 2.1).abs() < 1e-6, "{after:?}");
        assert_eq!(value(&adam.moments[0].m)[..2], [0.0, 0.0], "untouched moments stay zero");
        // The same step through the dense path with a scattered gradient agrees on row 1 and
        // also leaves rows with zero moments unchanged on the first step.
        let mut dense = Tensor::from_slice(&[1.0f32, 1.0, 2.0, 2.0, 3.0, 3.0]).view([3, 2]);
        let mut adam2 = Adam::new(CFG, &[dense.shallow_clone()]);
        let bc = adam2.begin_step();
        let g = scatter_rows(&[3, 2], &rows, &Tensor::from_slice(&[0.5f32, -0.5]).view([1, 2]));
        adam2.update_dense(0, &mut dense, &g, bc);
        assert_eq!(value(&dense), after);
    }

    #[test]
    fn the_host_updates_equal_the_tensor_updates() {
        tch::manual_seed(5);
        let init = Tensor::randn([50, 6], (Kind::Float, Device::Cpu));
        let (mut a, mut b) = (init.copy(), init.copy());
        let mut tensor_path = Adam::new(CFG, &[a.shallow_clone()]);
        let mut host_path = Adam::new(CFG, &[b.shallow_clone()]);
        let ids = [3i64, 7, 8, 41];
        for step in 0..5 {
            let g = Tensor::randn([50, 6], (Kind::Float, Device::Cpu)) * (step as f64 + 0.5);
            let g_host = Vec::<f32>::try_from(g.flatten(0, -1)).unwrap();
            let (bc_a, bc_b) = (tensor_path.begin_step(), host_path.begin_step());
            if step % 2 == 0 {
                tensor_path.update_dense(0, &mut a, &g, bc_a);
                assert!(host_path.update_dense_host(0, &mut b, &g_host, bc_b));
            } else {
                let rows = Tensor::from_slice(&ids);
                let g_rows = g.index_select(0, &rows);
                tensor_path.update_rows(0, &mut a, &rows, &g_rows, bc_a);
                let g_rows = Vec::<f32>::try_from(g_rows.flatten(0, -1)).unwrap();
                assert!(host_path.update_rows_host(0, &mut b, &ids, &g_rows, bc_b));
            }
            let bits = |t: &Tensor| {
                Vec::<f32>::try_from(t.flatten(0, -1)).unwrap().iter().map(|x| x.to_bits()).collect::<Vec<_>>()
            };
            // libtorch's vectorised sqrt (SLEEF, ≤ 0.5001 ULP) is not always correctly rounded,
            // Rust's is: a parameter may differ by the last bit of its update (of size ≤ lr).
            let (pa, pb) = (value(&a), value(&b));
            for (x, y) in pa.iter().zip(&pb) {
                assert!((x - y).abs() <= 2.0 * f32::EPSILON as f64 * x.abs().max(CFG.lr), "step {step}: {x} vs {y}");
            }
            assert_eq!(bits(&tensor_path.moments[0].m), bits(&host_path.moments[0].m), "m after step {step}");
            assert_eq!(bits(&tensor_path.moments[0].v), bits(&host_path.moments[0].v), "v after step {step}");
            // Continue both from the same parameters, so that last-bit differences do not grow.
            tch::no_grad(|| b.copy_(&a));
        }
        // What the host path cannot take is left to the tensor path, untouched.
        let mut doubles = Tensor::zeros([3], (Kind::Double, Device::Cpu));
        let mut adam = Adam::new(CFG, &[doubles.shallow_clone()]);
        assert!(!adam.update_dense_host(0, &mut doubles, &[1.0; 3], (0.1, 0.001)));
        let mut table = Tensor::zeros([4, 2], (Kind::Float, Device::Cpu));
        let mut adam = Adam::new(CFG, &[table.shallow_clone()]);
        assert!(!adam.update_rows_host(0, &mut table, &[9], &[1.0, 1.0], (0.1, 0.001)), "a row outside the table");
        assert_eq!(value(&table), vec![0.0; 8]);
    }

    #[test]
    fn state_exported_and_imported_continues_identically() {
        let names = vec!["p".to_string()];
        let mut a_param = Tensor::from_slice(&[1.0f32, -2.0]);
        let mut a = Adam::new(CFG, &[a_param.shallow_clone()]);
        let g = Tensor::from_slice(&[0.3f32, 0.1]);
        let bc = a.begin_step();
        a.update_dense(0, &mut a_param, &g, bc);
        let saved: std::collections::HashMap<String, Tensor> =
            a.named_state(&names).map(|(k, t)| (k, t.copy())).collect();
        let mut b_param = a_param.copy();
        let mut b = Adam::new(CFG, &[b_param.shallow_clone()]);
        b.load_state(&names, a.step, |k| saved.get(k).map(Tensor::copy)).unwrap();
        for opt in [(&mut a, &mut a_param), (&mut b, &mut b_param)] {
            let bc = opt.0.begin_step();
            opt.0.update_dense(0, opt.1, &g, bc);
        }
        assert_eq!(value(&a_param), value(&b_param));
        let missing = Adam::new(CFG, &[b_param.shallow_clone()]).load_state(&names, 1, |_| None).unwrap_err();
        assert!(missing.to_string().contains("m.p"), "{missing}");
    }

    #[test]
    fn dense_table_adam_keeps_moving_rows_with_momentum_lazy_does_not() {
        let rows = Tensor::from_slice(&[0i64]);
        let g_rows = Tensor::from_slice(&[1.0f32]).view([1, 1]);
        let mut lazy = Tensor::zeros([2, 1], (Kind::Float, Device::Cpu));
        let mut dense = lazy.copy();
        let (mut a, mut b) = (Adam::new(CFG, &[lazy.shallow_clone()]), Adam::new(CFG, &[dense.shallow_clone()]));
        let bc = a.begin_step();
        b.begin_step();
        a.update_rows(0, &mut lazy, &rows, &g_rows, bc);
        b.update_dense(0, &mut dense, &scatter_rows(&[2, 1], &rows, &g_rows), bc);
        // Step 2 touches nothing: lazy leaves row 0 alone, dense Adam moves it by its momentum.
        let bc = a.begin_step();
        b.begin_step();
        a.update_rows(
            0,
            &mut lazy,
            &Tensor::zeros([0], (Kind::Int64, Device::Cpu)),
            &Tensor::zeros([0, 1], (Kind::Float, Device::Cpu)),
            bc,
        );
        b.update_dense(0, &mut dense, &Tensor::zeros([2, 1], (Kind::Float, Device::Cpu)), bc);
        assert!((value(&lazy)[0] + 0.1).abs() < 1e-6);
        assert!(value(&dense)[0] < value(&lazy)[0] - 0.01, "dense Adam keeps moving a row with momentum");
    }

    #[test]
    fn adam_over_a_flat_buffer_gives_each_parameter_what_its_own_update_gives() {
        tch::manual_seed(9);
        let shapes: [&[i64]; 3] = [&[3, 2], &[4], &[1, 5]];
        let make = || shapes.iter().map(|s| Tensor::randn(*s, (Kind::Float, Device::Cpu))).collect::<Vec<_>>();
        let initial = make();
        let mut separate: Vec<Tensor> = initial.iter().map(|t| t.copy()).collect();
        let mut flat_params: Vec<Tensor> = initial.iter().map(|t| t.copy()).collect();
        let (mut a, mut b) = (Adam::new(CFG, &separate), Adam::new(CFG, &flat_params));
        let mut flat = b.flatten(&mut flat_params, &[0, 1, 2]).unwrap();
        assert!(flat_params.iter().zip(&initial).all(|(p, q)| p.equal(q)), "flattening keeps the values");
        for _ in 0..3 {
            let grads = make();
            let bc = a.begin_step();
            for (i, (p, g)) in separate.iter_mut().zip(&grads).enumerate() {
                a.update_dense(i, p, g, bc);
            }
            let g: Vec<Tensor> = grads.iter().map(|g| g.flatten(0, -1)).collect();
            let bc = b.begin_step();
            b.update_flat(&mut flat, &Tensor::cat(&g, 0), bc);
        }
        for i in 0..3 {
            assert!(flat_params[i].equal(&separate[i]), "parameter {i}, bit for bit");
            assert!(b.moments[i].m.equal(&a.moments[i].m) && b.moments[i].v.equal(&a.moments[i].v));
        }
    }
}
