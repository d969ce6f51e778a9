//! Batch statistics over every data-parallel rank (synchronised batch normalisation), for Dice
//! and [`BatchNorm`](super::layers::BatchNorm): the forward cut and the segmented backward pass.
//!
//! A training forward pass in [`Mode::Global`] makes every normalising layer take the mean and
//! variance of its input over the **global** batch (one all-reduce through the [`Global`]'s
//! communicator) and cut the graph there: it computes from a leaf copy of its input, with the
//! statistics as leaves too. [`backward`] then runs the backward pass one segment at a time, from
//! the last layer down: at each cut it sums `∂L/∂mean` and `∂L/∂var` over ranks, adds their part
//! to the input's gradient ([`Trace::input_gradient`]) and continues below. N ranks × b samples
//! thus compute exactly what one rank with N·b samples computes, in one pass over the graph.
//! [`Mode::Train`] takes each layer's own batch (one rank's batch is the global batch) and
//! [`Mode::Eval`] the running statistics.
use std::cell::RefCell;

use tch::{Kind, Tensor};

use crate::dist::{CommError, Communicator};
use crate::transfer::{download_f32, upload_f32};

/// How a forward pass takes the statistics of its normalising layers.
#[derive(Clone, Copy)]
pub enum Mode<'a> {
    /// Evaluation: the running statistics, left as they are.
    Eval,
    /// Training: each layer's own batch; the running statistics follow it.
    Train,
    /// Training on one rank's part of a global batch: statistics over every rank, each layer's
    /// cut recorded in the [`Global`].
    Global(&'a Global<'a>),
}

impl Mode<'_> {
    /// Whether this is a training pass (batch statistics, running statistics updated).
    pub fn is_train(self) -> bool {
        !matches!(self, Mode::Eval)
    }
}

impl std::fmt::Debug for Mode<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Mode::Eval => "Eval",
            Mode::Train => "Train",
            Mode::Global(_) => "Global",
        })
    }
}

/// One Dice layer's cut in the graph.
pub struct Trace {
    /// The layer's input in the graph below the cut: the segment below starts from it.
    pub input: Tensor,
    /// The copy of the input the layer computed from (a leaf).
    pub leaf: Tensor,
    /// The global statistics as leaves (their gradients are `∂L_local/∂mean`, `/∂var`).
    pub mean_leaf: Tensor,
    pub var_leaf: Tensor,
    /// Rows over all ranks.
    pub global_rows: f64,
}

impl Trace {
    /// The gradient of the input, given its gradient through the leaf (`None`: none reached
    /// it) and the global `∂L/∂mean` and `∂L/∂var` (summed over ranks):
    /// `∂/∂x_i = g_leaf,i + g_mean/N + g_var·2·(x_i − mean)/N` for every local row `x_i` (the
    /// variance's path through the mean sums to zero over the global batch).
    pub fn input_gradient(&self, g_leaf: Option<&Tensor>, g_mean: &[f32], g_var: &[f32]) -> Tensor {
        tch::no_grad(|| {
            let n = self.global_rows;
            // Both vectors in one upload.
            let both = upload_f32(&[g_mean, g_var].concat(), self.leaf.device()).to_kind(self.leaf.kind());
            let width = g_mean.len() as i64;
            let (g_mean, g_var) = (both.narrow(0, 0, width), both.narrow(0, width, g_var.len() as i64));
            let centered = self.leaf.detach() - self.mean_leaf.detach();
            let through_stats = g_mean / n + centered * g_var * (2.0 / n);
            match g_leaf {
                Some(g) => through_stats + g,
                None => through_stats,
            }
        })
    }
}

/// One training forward pass's statistics over every rank: the communicator, and the cut of
/// every normalising layer that ran, in order.
pub struct Global<'a> {
    comm: &'a dyn Communicator,
    traces: RefCell<Vec<Trace>>,
    error: RefCell<Option<CommError>>,
}

impl<'a> Global<'a> {
    pub fn new(comm: &'a dyn Communicator) -> Self {
        Self { comm, traces: RefCell::new(Vec::new()), error: RefCell::new(None) }
    }

    /// The cuts of the layers that ran, or the first error of their exchanges.
    pub fn finish(self) -> Result<Vec<Trace>, CommError> {
        match self.error.into_inner() {
            Some(e) => Err(e),
            None => Ok(self.traces.into_inner()),
        }
    }

    /// A leaf copy of `xs` to compute from, and the global `(mean, var)` of `xs`'s rows as
    /// leaves; `None` once an exchange failed (the layer then uses its own batch, and
    /// [`Global::finish`] reports the error).
    pub(super) fn statistics(&self, xs: &Tensor) -> Option<(Tensor, Tensor, Tensor)> {
        if self.error.borrow().is_some() {
            return None;
        }
        let width = *xs.size().last().expect("Dice needs at least one dimension");
        let flat = xs.detach().reshape([-1, width]).to_kind(Kind::Float);
        // One round: every rank's row count, sums and squares about its own mean, each in its
        // own slot of a summed buffer (adding zeros is exact), then combined in f64 by
        // Chan et al.'s formula, the same bits on every rank.
        let w = width as usize;
        let rows = flat.size()[0] as f64;
        // The local mean on the device, as an elementwise f32 division by a tensor (a division
        // by a scalar would multiply by its reciprocal): correctly rounded, the same bits as
        // the division in f64 rounded to f32. Sums and squares then come down in one piece.
        let sums = flat.sum_dim_intlist(0, false, Kind::Float);
        let local_mean = &sums / sums.full_like(rows.max(1.0));
        let local_m2 = (&flat - local_mean).square().sum_dim_intlist(0, false, Kind::Float);
        let host = download_f32(&Tensor::cat(&[sums, local_m2], 0));
        let (sums, local_m2) = host.split_at(w);
        let (rank, size) = (self.comm.rank(), self.comm.size());
        let slot = 2 * w + 1;
        let mut all = vec![0f32; size * slot];
        all[rank * slot..][..w].copy_from_slice(sums);
        all[rank * slot + w..][..w].copy_from_slice(local_m2);
        all[rank * slot + 2 * w] = rows as f32;
        if let Err(e) = self.comm.all_reduce_sum_f32(&mut all) {
            self.error.borrow_mut().get_or_insert(e);
            return None;
        }
        let slots: Vec<&[f32]> = all.chunks_exact(slot).collect();
        let n: f64 = slots.iter().map(|r| r[2 * w] as f64).sum();
        let mut mean = vec![0f32; w];
        let mut var = vec![0f32; w];
        for c in 0..w {
            let m = slots.iter().map(|r| r[c] as f64).sum::<f64>() / n;
            let within: f64 = slots.iter().map(|r| r[w + c] as f64).sum();
            let between: f64 = slots
                .iter()
                .filter(|r| r[2 * w] > 0.0)
                .map(|r| {
                    let rows = r[2 * w] as f64;
                    rows * (r[c] as f64 / rows - m).powi(2)
                })
                .sum();
            mean[c] = m as f32;
            var[c] = ((within + between) / n) as f32;
        }
        // Both statistics in one upload, each then a leaf of its own.
        let both = upload_f32(&[mean, var].concat(), xs.device()).to_kind(xs.kind());
        let leaf_of = |start: i64| both.narrow(0, start, width).copy().set_requires_grad(true);
        let (mean_leaf, var_leaf) = (leaf_of(0), leaf_of(width));
        let leaf = xs.detach().set_requires_grad(true);
        self.traces.borrow_mut().push(Trace {
            input: xs.shallow_clone(),
            leaf: leaf.shallow_clone(),
            mean_leaf: mean_leaf.shallow_clone(),
            var_leaf: var_leaf.shallow_clone(),
            global_rows: n,
        });
        Some((leaf, mean_leaf, var_leaf))
    }
}

/// Gradients of `head_loss + rest` with respect to `targets`, in one pass over the graph cut at
/// every normalising layer (`traces`, from [`Global::finish`]): from `head_loss` down to the last
/// layer's cut, where that layer's statistics gradients are summed over ranks and their part
/// added to its input's gradient; then on to the cut below, and so on; the last segment starts
/// from the first layer's input with `rest` added (losses that reach below the head only).
/// Without cuts it is one ordinary pass.
pub fn backward(
    head_loss: &Tensor,
    rest: Option<Tensor>,
    traces: &[Trace],
    targets: &[&Tensor],
    comm: &dyn Communicator,
) -> Result<Vec<Tensor>, CommError> {
    let mut sums: Vec<Option<Tensor>> = (0..targets.len()).map(|_| None).collect();
    let mut add = |grads: &[Tensor]| {
        for (sum, g) in sums.iter_mut().zip(grads).filter(|(_, g)| g.defined()) {
            *sum = Some(match sum.take() {
                Some(s) => s + g,
                None => g.shallow_clone(),
            });
        }
    };
    let mut root = head_loss.shallow_clone();
    for trace in traces.iter().rev() {
        let mut inputs = targets.to_vec();
        inputs.extend([&trace.leaf, &trace.mean_leaf, &trace.var_leaf]);
        let grads = Tensor::run_backward(&[&root], &inputs, false, false);
        let (to_targets, at_cut) = grads.split_at(targets.len());
        add(to_targets);
        let or_zeros = |g: &Tensor, leaf: &Tensor| {
            if g.defined() { g.shallow_clone() } else { leaf.zeros_like() }.to_kind(Kind::Float).flatten(0, -1)
        };
        // Both statistics' gradients in one download.
        let width = trace.mean_leaf.numel();
        let mut stats = download_f32(&Tensor::cat(
            &[or_zeros(&at_cut[1], &trace.mean_leaf), or_zeros(&at_cut[2], &trace.var_leaf)],
            0,
        ));
        comm.all_reduce_sum_f32(&mut stats)?;
        let g_leaf = at_cut[0].defined().then_some(&at_cut[0]);
        let g_input = trace.input_gradient(g_leaf, &stats[..width], &stats[width..]);
        root = (&trace.input * g_input).sum(Kind::Float);
    }
    let root = match rest {
        Some(rest) => root + rest,
        None => root,
    };
    add(&Tensor::run_backward(&[&root], targets, false, false));
    Ok(sums.into_iter().map(|g| g.unwrap_or_else(Tensor::new)).collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::layers::Dice;
    use tch::{nn, Device};

    #[test]
    fn statistics_over_uneven_ranks_equal_those_of_the_whole_batch() {
        // Rows far from zero with a small spread (where E[x²] − E[x]² would lose every digit in
        // f32), split 2 / 0 / 5 over three ranks, one of them empty.
        let rows: Vec<[f32; 2]> =
            (0..7).map(|i| [1000.0 + 0.01 * (i * i) as f32, -3.0 + 0.5 * ((i * 5) % 7) as f32]).collect();
        let (mean, var): (Vec<f64>, Vec<f64>) = (0..2)
            .map(|c| {
                let m = rows.iter().map(|r| r[c] as f64).sum::<f64>() / 7.0;
                (m, rows.iter().map(|r| (r[c] as f64 - m).powi(2)).sum::<f64>() / 7.0)
            })
            .unzip();
        let split = [0..2, 2..2, 2..7];
        let results = crate::dist::ThreadRanks::run(3, |comm| {
            crate::model::testing::one_thread();
            let mine: Vec<f32> =
                rows[split[crate::dist::Communicator::rank(&comm)].clone()].iter().flatten().copied().collect();
            let xs = Tensor::from_slice(&mine).view([-1, 2]);
            let global = Global::new(&comm);
            let stats = global.statistics(&xs);
            let traces = global.finish().unwrap();
            let (_, m, v) = stats.unwrap();
            assert_eq!(traces[0].global_rows, 7.0);
            (Vec::<f32>::try_from(&m).unwrap(), Vec::<f32>::try_from(&v).unwrap())
        });
        assert!(results.iter().all(|r| r == &results[0]), "every rank holds the same bits");
        for c in 0..2 {
            let (m, v) = (results[0].0[c] as f64, results[0].1[c] as f64);
            assert!((m - mean[c]).abs() <= 1e-6 * mean[c].abs(), "mean {m} vs {}", mean[c]);
            assert!((v - var[c]).abs() <= 1e-4 * var[c], "variance {v} vs {}", var[c]);
        }
    }

    #[test]
    fn synchronised_statistics_on_one_rank_give_the_ordinary_gradient() {
        tch::manual_seed(3);
        let vs = nn::VarStore::new(Device::Cpu);
        let dice = Dice::new(&vs.root(), 4);
        tch::no_grad(|| {
            dice.alpha().shallow_clone().copy_(&Tensor::from_slice(&[0.3f32, -0.2, 0.5, 0.1]));
        });
        let x = (Tensor::randn([6, 4], (Kind::Float, Device::Cpu)) * 2.0 + 1.0).set_requires_grad(true);
        let w = Tensor::randn([6, 4], (Kind::Float, Device::Cpu));
        let plain = (dice.forward(&x, Mode::Train) * &w).sum(Kind::Float);
        let expected = Tensor::run_backward(&[&plain], &[&x, dice.alpha()], false, false);

        let comm = crate::dist::SingleProcess;
        let global = Global::new(&comm);
        let y = dice.forward(&x, Mode::Global(&global));
        let traces = global.finish().unwrap();
        let loss = (y * &w).sum(Kind::Float);
        let tr = &traces[0];
        assert!(tr.input.equal(&x), "the cut's input is the layer's input");
        let g = Tensor::run_backward(&[&loss], &[&tr.leaf, dice.alpha(), &tr.mean_leaf, &tr.var_leaf], false, false);
        let host = |t: &Tensor| Vec::<f32>::try_from(t).unwrap();
        let x_grad = tr.input_gradient(Some(&g[0]), &host(&g[2]), &host(&g[3]));
        let diff = (&x_grad - &expected[0]).abs().max().double_value(&[]);
        assert!(diff < 1e-5, "x gradient differs by {diff}");
        let diff = (&g[1] - &expected[1]).abs().max().double_value(&[]);
        assert!(diff < 1e-5, "alpha gradient differs by {diff}");
    }
}
