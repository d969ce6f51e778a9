//! One training step, top to bottom (SPEC §2.4–2.5, §3): forward from the step's row leaves;
//! one backward pass of `L_main + λ·L_micn` that leaves the main and auxiliary gradients in two
//! buffers (the tasks read separate leaves of the `e_aux` tables); exchange of both buffers
//! between ranks; the φ combination on the shared `e_aux` tables; the Adam update. Losses are
//! normalised by global counts (global batch; global positives for MICN), so N ranks × b samples
//! compute what one rank with N·b samples does.
//!
//! Every host↔device copy goes through [`crate::transfer`], counted: per step two uploads of
//! the batch (with MICN's negatives and routing logits), one of the row leaves' lookup indices,
//! and one download of every gradient with the losses; two more each way per normalising layer
//! (its statistics cross ranks on the host); and on the device path ([`StepPath`]) two uploads for
//! the update. `tests/integration/device_path.rs` asserts the counts and says what remains.
use tch::nn::VarStore;
use tch::{Device, Kind, Reduction, Tensor};

use super::grads::{self, RowGrads, TaskGrads};
use super::optim::{scatter_rows, Adam};
use crate::config::{EmbeddingOptimizer, TrainConfig};
use crate::data::batch::Batch;
use crate::dist::{self, Communicator};
use crate::micn::rng::StepSeed;
use crate::model::embeddings::{BatchIds, HostIds, Negatives, NoClick, RowLeaf, Task};
use crate::model::layers::batch_stats;
use crate::model::{classify, Network, VarGroup, EMBEDDINGS_PATH};
use crate::transfer::{self, download_f32, download_i64, upload_f32, upload_i64};

/// A failed step.
#[derive(Debug, thiserror::Error)]
pub enum StepError {
    #[error("step {step}: the {which} loss is {value}; stopping (the last checkpoint, if any, is intact)")]
    NonFinite { step: u64, which: &'static str, value: f64 },
    #[error(transparent)]
    Comm(#[from] dist::CommError),
    #[error(transparent)]
    Micn(#[from] crate::micn::MicnError),
    #[error("combining Dice's batch statistics over ranks: {0}")]
    Stats(String),
}

/// Dice's statistics summed over every rank through the communicator.
pub(crate) struct CommReducer<'a>(pub(crate) &'a dyn Communicator);

impl batch_stats::Reducer for CommReducer<'_> {
    fn sum(&self, values: &mut [f32]) -> Result<(), String> {
        self.0.all_reduce_sum_f32(values).map_err(|e| e.to_string())
    }

    fn rank_and_size(&self) -> (usize, usize) {
        (self.0.rank(), self.0.size())
    }
}

/// Which code computes the parts of a step that have a host fast path: the per-row sums of the
/// lookups' gradients and the Adam update.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum StepPath {
    /// On the CPU, the host fast paths: row sums over the downloaded lookup gradients and Adam in
    /// one pass over each parameter's memory. On any other device, [`StepPath::Device`].
    #[default]
    Host,
    /// What a GPU runs, on every device, the CPU included (`train.device_path = true`): row sums
    /// with `index_add_` and Adam as tensor operations, on the tensors' device. Equal to the
    /// host path up to rounding (the order of additions differs).
    Device,
}

impl StepPath {
    /// The path `train.device_path` selects.
    pub fn from_config(train: &TrainConfig) -> Self {
        if train.device_path {
            StepPath::Device
        } else {
            StepPath::Host
        }
    }

    /// Whether a step on `device` takes the device path.
    pub fn on_device(self, device: Device) -> bool {
        self == StepPath::Device || device != Device::Cpu
    }
}

/// The trainable variables in a fixed order (by name), with their update rule.
pub struct Trainable {
    pub names: Vec<String>,
    pub tensors: Vec<Tensor>,
    pub groups: Vec<VarGroup>,
    /// Embedding-like tables (row gradients, row-sparse Adam).
    pub is_table: Vec<bool>,
    /// Non-trainable buffers (Dice running statistics), by name.
    pub buffers: Vec<(String, Tensor)>,
    /// Where the row sums and the update run ([`StepPath::Host`] unless set).
    pub path: StepPath,
}

/// Names of variables updated by rows: every embedding table and Wide&Deep's hashed weights.
fn is_table(name: &str) -> bool {
    name.starts_with(&format!("{EMBEDDINGS_PATH}.")) || name == "main.crosses.weights"
}

impl Trainable {
    pub fn new(vs: &VarStore) -> Result<Self, crate::model::ModelError> {
        let mut vars: Vec<(String, Tensor)> = vs.variables().into_iter().collect();
        vars.sort_by(|a, b| a.0.cmp(&b.0));
        let mut t = Trainable {
            names: vec![],
            tensors: vec![],
            groups: vec![],
            is_table: vec![],
            buffers: vec![],
            path: StepPath::Host,
        };
        for (name, tensor) in vars {
            if !tensor.requires_grad() {
                t.buffers.push((name, tensor));
                continue;
            }
            t.groups.push(classify(&name)?);
            t.is_table.push(is_table(&name));
            t.names.push(name);
            t.tensors.push(tensor);
        }
        Ok(t)
    }

    /// The same variables, stepped on `path`.
    pub fn with_path(mut self, path: StepPath) -> Self {
        self.path = path;
        self
    }

    pub fn indices(&self, wanted: &[VarGroup]) -> Vec<usize> {
        (0..self.names.len()).filter(|&i| wanted.contains(&self.groups[i])).collect()
    }
}

/// What the step needs besides the model.
pub struct StepContext<'a> {
    pub comm: &'a dyn Communicator,
    pub device: Device,
    pub global_batch: usize,
    pub lambda: f64,
    pub phi: f64,
    pub embedding_optimizer: EmbeddingOptimizer,
    /// Run seed; the step's draws derive from it.
    pub seed: u64,
    /// Global step index (0-based) of this step.
    pub step: u64,
    /// Global sample position of this rank's first sample over the whole run.
    pub first_sample: u64,
    /// This rank's run-control flags, made global by the step's exchange.
    pub control: Control,
}

/// Run-control flags that ride in the step's gradient all-reduce instead of collectives of their
/// own (a step synchronises the ranks anyway; every extra collective is another wait).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Control {
    /// A stop was requested (a signal). In [`StepStats`]: on any rank.
    pub stop: bool,
    /// A time-triggered checkpoint is due. Rank 0's clock decides: in [`StepStats`], rank 0's flag.
    pub checkpoint_due: bool,
}

impl Control {
    /// This rank's contribution to the summed scalars.
    fn scalars(self, rank: usize) -> [f32; 2] {
        [f32::from(u8::from(self.stop)), f32::from(u8::from(self.checkpoint_due && rank == 0))]
    }

    /// The global flags from the summed scalars.
    fn from_sums(sums: &[f32]) -> Self {
        Control { stop: sums[0] > 0.0, checkpoint_due: sums[1] > 0.0 }
    }
}

/// Losses and gradient norms of one step (global values, equal on every rank).
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct StepStats {
    pub loss_main: f64,
    pub loss_dien_aux: f64,
    pub loss_micn: f64,
    /// ‖main-task gradient‖ on the `e_aux` tables, after the exchange.
    pub grad_norm_main_e_aux: f64,
    /// ‖λ·auxiliary gradient‖ on the `e_aux` tables, after the exchange.
    pub grad_norm_aux_e_aux: f64,
    pub positives: f64,
    /// Bytes this rank sent in the gradient exchange.
    pub bytes_sent: u64,
    /// Seconds this rank spent in the gradient exchange (and in counting MICN's positives over
    /// ranks, for batches that do not carry the global count). Dice's collectives, inside the
    /// forward and backward passes, count as computation.
    pub comm_seconds: f64,
    /// Seconds of the optimizer update (the same work on every rank, whatever the world size).
    pub update_seconds: f64,
    /// The run-control flags over all ranks.
    pub control: Control,
}

/// Gradients of `L_main + λ·L_micn` (`head_loss` + `rest`) with respect to `targets`, in one pass
/// over the graph cut at every Dice layer (see [`batch_stats`]): from `head_loss` down to the
/// last Dice layer's cut, where that layer's statistics gradients are summed over ranks and their
/// part added to its input's gradient; then on to the cut below, and so on; the last segment
/// starts from the first Dice layer's input with `rest` added (DIEN's auxiliary loss and MICN's
/// loss, which reach below the head only). Without Dice layers it is one ordinary pass.
fn backward_through_cuts(
    head_loss: &Tensor,
    rest: Option<Tensor>,
    traces: &[batch_stats::Trace],
    targets: &[&Tensor],
    comm: &dyn Communicator,
) -> Result<Vec<Tensor>, StepError> {
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

/// What a variable's gradient is taken with respect to: an embedding table's row leaf for the
/// task, or the variable itself (dense parameters; Wide&Deep's hashed weights).
enum Target<'a> {
    Var(&'a Tensor),
    Rows(&'a RowLeaf),
}

impl Target<'_> {
    fn tensor(&self) -> &Tensor {
        match self {
            Target::Var(v) => v,
            Target::Rows(r) => &r.leaf,
        }
    }
}

/// The targets of the variables `which` for `task`.
fn targets<'a>(t: &'a Trainable, which: &[usize], leaves: &'a [RowLeaf], task: Task) -> Vec<Target<'a>> {
    which
        .iter()
        .map(|&i| {
            let table = t.names[i].strip_prefix(EMBEDDINGS_PATH).and_then(|rest| rest.strip_prefix('.'));
            match table.and_then(|table| leaves.iter().find(|l| l.table == table && l.task == task)) {
                Some(leaf) => Target::Rows(leaf),
                None => Target::Var(&t.tensors[i]),
            }
        })
        .collect()
}

/// Where one variable's host gradient comes from, once the step's single download is back.
enum Pending<'a> {
    /// A table no gradient reached.
    NoRows {
        dim: usize,
    },
    /// Per-lookup gradients of a row leaf (`len` values), summed per row on the host.
    LookupsToSum {
        leaf: &'a RowLeaf,
        len: usize,
        dim: usize,
    },
    /// A row leaf's gradient already summed per row on the device.
    SummedRows {
        leaf: &'a RowLeaf,
        len: usize,
        dim: usize,
    },
    /// The coalesced sparse gradient of a table read without row leaves: its ids, downloaded on
    /// their own, and its rows.
    SparseRows {
        ids: Vec<i64>,
        len: usize,
        dim: usize,
    },
    /// A table gradient of some other form, already on the host.
    Ready(RowGrads),
    /// A dense gradient (`len` values), or zeros where none reached the variable.
    Dense {
        len: usize,
    },
    Zeros {
        len: usize,
    },
}

/// Plans the host gradients of the variables `which` (in order): adds what must be downloaded
/// to `parts` (flattened f32) and says how to read it back.
fn plan_host_grads<'a>(
    t: &Trainable,
    which: &[usize],
    targets: &[Target<'a>],
    grads: &[Tensor],
    on_device: bool,
    parts: &mut Vec<Tensor>,
) -> Vec<Pending<'a>> {
    let mut flat = |g: &Tensor| {
        let g = g.to_kind(Kind::Float).flatten(0, -1);
        let len = g.numel();
        parts.push(g);
        len
    };
    which
        .iter()
        .zip(targets)
        .zip(grads)
        .map(|((&i, target), g)| {
            let var = &t.tensors[i];
            if !t.is_table[i] {
                return if g.defined() { Pending::Dense { len: flat(g) } } else { Pending::Zeros { len: var.numel() } };
            }
            let dim = var.size()[1] as usize;
            match target {
                _ if !g.defined() => Pending::NoRows { dim },
                Target::Rows(leaf) if on_device => Pending::SummedRows { leaf, len: flat(&leaf.sum_rows(g)), dim },
                Target::Rows(leaf) => Pending::LookupsToSum { leaf, len: flat(g), dim },
                Target::Var(_) if g.is_sparse() => {
                    let g = g.coalesce();
                    let ids = download_i64(&g.indices().select(0, 0));
                    Pending::SparseRows { ids, len: flat(&g.values()), dim }
                }
                Target::Var(_) => Pending::Ready(RowGrads::from_grad(g)),
            }
        })
        .collect()
}

/// One task's host gradients from the planned pieces, reading `host` (the download) in order.
fn finish_host_grads(pending: Vec<Pending<'_>>, host: &mut &[f32]) -> TaskGrads {
    let mut take = |len: usize| {
        let (mine, rest) = host.split_at(len);
        *host = rest;
        mine
    };
    let mut out = TaskGrads::default();
    for p in pending {
        match p {
            Pending::NoRows { dim } => out.tables.push(RowGrads { dim, ..Default::default() }),
            Pending::LookupsToSum { leaf, len, dim } => {
                out.tables.push(RowGrads { ids: leaf.ids.clone(), rows: leaf.sum_rows_host(take(len)), dim })
            }
            Pending::SummedRows { leaf, len, dim } => {
                out.tables.push(RowGrads { ids: leaf.ids.clone(), rows: take(len).to_vec(), dim })
            }
            Pending::SparseRows { ids, len, dim } => out.tables.push(RowGrads { ids, rows: take(len).to_vec(), dim }),
            Pending::Ready(rows) => out.tables.push(rows),
            Pending::Dense { len } => out.dense.extend_from_slice(take(len)),
            Pending::Zeros { len } => out.dense.extend(std::iter::repeat_n(0.0, len)),
        }
    }
    out
}

/// The gradient one variable is updated with.
#[derive(Debug, Clone, PartialEq)]
pub enum VarGrad {
    Dense(Vec<f32>),
    Rows(RowGrads),
}

fn per_variable(t: &Trainable, which: &[usize], g: TaskGrads) -> Vec<(usize, VarGrad)> {
    let mut dense = g.dense.into_iter();
    let mut tables = g.tables.into_iter();
    which
        .iter()
        .map(|&i| {
            if t.is_table[i] {
                (i, VarGrad::Rows(tables.next().expect("one row set per table")))
            } else {
                (i, VarGrad::Dense(dense.by_ref().take(t.tensors[i].numel()).collect()))
            }
        })
        .collect()
}

/// One step on `batch`: [`gradients`] then [`apply`]. Updates `t`'s tensors and `adam`.
pub fn train_step(
    net: &Network,
    t: &mut Trainable,
    adam: &mut Adam,
    batch: &Batch,
    ctx: &StepContext<'_>,
) -> Result<StepStats, StepError> {
    let (grads, mut stats) = gradients(net, t, batch, ctx)?;
    let update_started = std::time::Instant::now();
    apply(t, adam, grads, ctx);
    stats.update_seconds = update_started.elapsed().as_secs_f64();
    Ok(stats)
}

/// Forward, both backward passes, exchange and φ combination: the gradient of every trainable
/// variable (in [`Trainable`] order) as the update will use it, summed over ranks.
pub fn gradients(
    net: &Network,
    t: &Trainable,
    batch: &Batch,
    ctx: &StepContext<'_>,
) -> Result<(Vec<VarGrad>, StepStats), StepError> {
    let device = ctx.device;
    let on_device = t.path.on_device(device);
    let b_global = ctx.global_batch as f64;

    // Global number of MICN positives: from the loader, else summed over ranks.
    let mut comm_seconds = 0.0;
    let positives = match batch.global_positives {
        Some(n) => n as f64,
        None => {
            let mut counts = [batch.micn_positives() as f32];
            let comm_started = std::time::Instant::now();
            ctx.comm.all_reduce_sum_f32(&mut counts)?;
            comm_seconds += comm_started.elapsed().as_secs_f64();
            counts[0] as f64
        }
    };

    // The batch, MICN's negatives and routing logits, drawn on the host, in two uploads.
    let seed = step_seed(ctx);
    let negative_ids = net.micn.as_ref().map(|micn| micn.negative_ids(seed));
    let routing_logits = net.micn.as_ref().map(|micn| micn.routing_logits(seed, &batch.hist_mask, batch.hist_len));
    let inputs = upload_batch(batch, negative_ids.as_deref(), routing_logits.as_deref(), net, device);
    let (ids, labels) = (&inputs.ids, &inputs.labels);
    let host_ids = HostIds {
        users: &batch.users,
        items: &batch.items,
        cats: &batch.cats,
        hist_items: &batch.hist_items,
        hist_cats: &batch.hist_cats,
        noclick: batch.noclick.as_ref().map(|(items, cats)| (items.as_slice(), cats.as_slice())),
    };
    let negatives =
        negative_ids.as_deref().zip(inputs.negatives.as_ref()).map(|(host, tensor)| Negatives { host, tensor });

    // Forward from the step's row leaves, with Dice's batch statistics over the global batch.
    let ((input, out), traces) = batch_stats::synchronised(&CommReducer(ctx.comm), || {
        let input = net.embeddings.forward_train_planned(ids, &host_ids, negatives);
        let out = net.main.forward(&input.embedded.main, true);
        (input, out)
    })
    .map_err(StepError::Stats)?;
    let bce = out.logit.binary_cross_entropy_with_logits::<Tensor>(labels, None, None, Reduction::Sum) / b_global;
    let dien_aux = out.aux_loss.as_ref().map(|a| a.sum(Kind::Float) / b_global);
    let micn = match (&net.micn, &input.embedded.aux, &input.negatives, &inputs.negatives, &inputs.routing_logits) {
        (Some(micn), Some(aux), Some(vectors), Some(negatives), Some(logits)) => {
            Some(micn.loss_with_negatives(aux, (negatives, vectors), &ids.items, labels, logits, positives))
        }
        (Some(_), ..) => return Err(StepError::Micn(crate::micn::MicnError::NoAuxTables)),
        _ => None,
    };

    // One backward pass for both tasks: main + λ·aux. The tasks share no leaf (the `e_aux` tables
    // have one row leaf per task), so the main gradient lands in Orig + Shared[main] and the
    // auxiliary one in Aux + Shared[aux], as two separate buffers.
    let main_vars = t.indices(&[VarGroup::Orig, VarGroup::Shared]);
    let aux_vars = if micn.is_some() { t.indices(&[VarGroup::Aux, VarGroup::Shared]) } else { Vec::new() };
    let main_targets = targets(t, &main_vars, &input.leaves, Task::Main);
    let aux_targets = targets(t, &aux_vars, &input.leaves, Task::Aux);
    let all: Vec<&Tensor> = main_targets.iter().chain(&aux_targets).map(Target::tensor).collect();
    let below_head = [dien_aux.as_ref().map(Tensor::shallow_clone), micn.as_ref().map(|loss| loss * ctx.lambda)]
        .into_iter()
        .flatten()
        .reduce(|a, b| a + b);
    let grads = backward_through_cuts(&bce, below_head, &traces, &all, ctx.comm)?;
    let (main_g, aux_g) = grads.split_at(main_targets.len());

    // Every gradient the exchange needs and the three losses, in one download.
    let mut parts = Vec::new();
    let main_pending = plan_host_grads(t, &main_vars, &main_targets, main_g, on_device, &mut parts);
    let aux_pending = plan_host_grads(t, &aux_vars, &aux_targets, aux_g, on_device, &mut parts);
    let zero = || bce.zeros_like();
    for loss in [Some(&bce), dien_aux.as_ref(), micn.as_ref()] {
        parts.push(loss.map_or_else(zero, |l| l.detach()).to_kind(Kind::Float).reshape([1]));
    }
    let host = download_f32(&Tensor::cat(&parts, 0));
    let (host, losses) = host.split_at(host.len() - 3);
    let mut host = host;
    let main_grads = finish_host_grads(main_pending, &mut host);
    let aux_grads = finish_host_grads(aux_pending, &mut host);

    // Local losses and control flags become global sums.
    let [stop, checkpoint_due] = ctx.control.scalars(ctx.comm.rank());
    let mut scalars = [losses[0], losses[1], losses[2], stop, checkpoint_due];
    let bytes_sent = grads::bytes_sent(&main_grads, &aux_grads) as u64;
    let comm_started = std::time::Instant::now();
    let (main_grads, aux_grads) = grads::exchange(ctx.comm, main_grads, aux_grads, &mut scalars)?;
    let (losses, control) = scalars.split_at(3);
    comm_seconds += comm_started.elapsed().as_secs_f64();
    let mut stats = StepStats {
        bytes_sent,
        comm_seconds,
        loss_main: losses[0] as f64 + losses[1] as f64,
        loss_dien_aux: losses[1] as f64,
        loss_micn: losses[2] as f64,
        positives,
        control: Control::from_sums(control),
        ..Default::default()
    };
    for (which, value) in [("main", stats.loss_main), ("MICN", stats.loss_micn)] {
        if !value.is_finite() {
            return Err(StepError::NonFinite { step: ctx.step + 1, which, value });
        }
    }

    let mut main_by_var: Vec<Option<VarGrad>> = (0..t.names.len()).map(|_| None).collect();
    for (i, g) in per_variable(t, &main_vars, main_grads) {
        main_by_var[i] = Some(g);
    }
    let mut aux_by_var: Vec<Option<VarGrad>> = (0..t.names.len()).map(|_| None).collect();
    for (i, g) in per_variable(t, &aux_vars, aux_grads) {
        aux_by_var[i] = Some(g);
    }

    // φ combination on the shared tables; per-task norms there.
    let mut combined = Vec::with_capacity(t.names.len());
    for i in 0..t.names.len() {
        combined.push(match (t.groups[i], main_by_var[i].take(), aux_by_var[i].take()) {
            (VarGroup::Orig, Some(g), _) | (VarGroup::Aux, _, Some(g)) => g,
            (VarGroup::Shared, Some(VarGrad::Rows(m)), Some(VarGrad::Rows(a))) => {
                stats.grad_norm_main_e_aux += m.norm_sq();
                stats.grad_norm_aux_e_aux += a.norm_sq();
                VarGrad::Rows(RowGrads::combine(&m, &a, ctx.phi as f32))
            }
            (group, ..) => unreachable!("variable {} of group {group:?} without its gradient", t.names[i]),
        });
    }
    stats.grad_norm_main_e_aux = stats.grad_norm_main_e_aux.sqrt();
    stats.grad_norm_aux_e_aux = stats.grad_norm_aux_e_aux.sqrt();
    Ok((combined, stats))
}

/// A step's inputs on the device.
struct DeviceInputs {
    ids: BatchIds,
    /// `[b]` f32
    labels: Tensor,
    /// MICN's shared negatives, `[K]` i64.
    negatives: Option<Tensor>,
    /// MICN's initial routing logits, `[b, T, K_max]`.
    routing_logits: Option<Tensor>,
}

/// Uploads the batch with MICN's `negatives` and `routing_logits` in two transfers, one of every
/// i64 value and one of every f32 value, cut back into views on the device.
fn upload_batch(
    batch: &Batch,
    negatives: Option<&[i64]>,
    routing_logits: Option<&[f32]>,
    net: &Network,
    device: Device,
) -> DeviceInputs {
    let (b, steps) = (batch.len() as i64, batch.hist_len as i64);
    let noclick = batch.noclick.as_ref().map(|(items, cats)| [items.as_slice(), cats.as_slice()]);
    let mut longs: Vec<&[i64]> = vec![&batch.users, &batch.items, &batch.cats, &batch.hist_items, &batch.hist_cats];
    longs.extend(noclick.iter().flatten().copied());
    longs.extend(negatives);
    let floats: Vec<&[f32]> = [&batch.labels[..], &batch.hist_mask[..]].into_iter().chain(routing_logits).collect();
    let mut longs =
        transfer::split(&upload_i64(&longs.concat(), device), &longs.iter().map(|x| x.len()).collect::<Vec<_>>())
            .into_iter();
    let mut floats =
        transfer::split(&upload_f32(&floats.concat(), device), &floats.iter().map(|x| x.len()).collect::<Vec<_>>())
            .into_iter();
    let labels = floats.next().expect("the labels");
    let hist_mask = floats.next().expect("the mask").view([b, steps]);
    let mut next_long = || longs.next().expect("one piece per slice");
    let ids = BatchIds {
        users: next_long(),
        items: next_long(),
        cats: next_long(),
        hist_items: next_long().view([b, steps]),
        hist_cats: next_long().view([b, steps]),
        hist_mask,
        noclick: noclick.map(|_| NoClick { items: next_long().view([b, steps]), cats: next_long().view([b, steps]) }),
    };
    let negatives = negatives.map(|_| next_long());
    let k_max = net.micn.as_ref().map_or(0, |m| m.k_max());
    DeviceInputs { ids, labels, negatives, routing_logits: floats.next().map(|l| l.view([b, steps, k_max])) }
}

/// MICN's randomness for this step: the same seed on every rank, sample-indexed routing logits.
pub fn step_seed(ctx: &StepContext<'_>) -> StepSeed {
    let seed = crate::rng::Rng::derive(ctx.seed, &[crate::rng::stream::MICN_NEGATIVES, ctx.step]).next_u64();
    StepSeed { seed, first_sample: ctx.first_sample }
}

/// The Adam update with the combined gradients.
pub fn apply(t: &mut Trainable, adam: &mut Adam, grads: Vec<VarGrad>, ctx: &StepContext<'_>) {
    let bc = adam.begin_step();
    let lazy = ctx.embedding_optimizer == EmbeddingOptimizer::Lazy;
    // On the host path the gradients are already host slices and the parameters CPU memory:
    // update in place, in one pass, instead of a dozen libtorch operations per variable (a
    // fixed cost of every step). What is left runs as tensor operations on the device.
    let host = !t.path.on_device(ctx.device);
    let mut rest = Vec::new();
    for (i, g) in grads.into_iter().enumerate() {
        let var = &mut t.tensors[i];
        let done = host
            && match &g {
                VarGrad::Dense(values) => adam.update_dense_host(i, var, values, bc),
                VarGrad::Rows(rows) => lazy && adam.update_rows_host(i, var, &rows.ids, &rows.rows, bc),
            };
        if !done {
            rest.push((i, g));
        }
    }
    if rest.is_empty() {
        return;
    }
    // The remaining gradients in two uploads: every f32 value, every row id.
    let mut floats: Vec<&[f32]> = Vec::new();
    let mut longs: Vec<&[i64]> = Vec::new();
    for (_, g) in &rest {
        match g {
            VarGrad::Dense(values) => floats.push(values),
            VarGrad::Rows(rows) => {
                floats.push(&rows.rows);
                longs.push(&rows.ids);
            }
        }
    }
    let float_lengths: Vec<usize> = floats.iter().map(|p| p.len()).collect();
    let long_lengths: Vec<usize> = longs.iter().map(|p| p.len()).collect();
    let mut floats = transfer::split(&upload_f32(&floats.concat(), ctx.device), &float_lengths).into_iter();
    let mut longs = if longs.is_empty() {
        Vec::new().into_iter()
    } else {
        transfer::split(&upload_i64(&longs.concat(), ctx.device), &long_lengths).into_iter()
    };
    for (i, g) in rest {
        let var = &mut t.tensors[i];
        let values = floats.next().expect("one piece per gradient");
        match g {
            VarGrad::Dense(_) => adam.update_dense(i, var, &values.view(var.size().as_slice()), bc),
            VarGrad::Rows(rows) => {
                let row_ids = longs.next().expect("one piece per table");
                let row_values = values.view([rows.len() as i64, rows.dim as i64]);
                if lazy {
                    adam.update_rows(i, var, &row_ids, &row_values, bc);
                } else {
                    let g = scatter_rows(&var.size(), &row_ids, &row_values);
                    adam.update_dense(i, var, &g, bc);
                }
            }
        }
    }
    // Dice's running statistics follow the global batch statistics: identical on every rank.
}

/// Make every rank start from rank 0's parameters and buffers.
pub fn broadcast_from_root(comm: &dyn Communicator, vs: &VarStore) -> dist::Result<()> {
    if comm.size() == 1 {
        return Ok(());
    }
    let mut vars: Vec<(String, Tensor)> = vs.variables().into_iter().collect();
    vars.sort_by(|a, b| a.0.cmp(&b.0));
    for (_, v) in vars {
        let mut host = download_f32(&v);
        dist::CommunicatorExt::broadcast(comm, 0, &mut host)?;
        tch::no_grad(|| {
            let mut v = v.shallow_clone();
            v.copy_(&upload_f32(&host, v.device()).view(v.size().as_slice()));
        });
    }
    Ok(())
}

/// xxh3 of every parameter, buffer and Adam moment, in name order, plus the step count: equal on
/// every rank when the replicas are in sync.
pub fn replica_digest(t: &Trainable, adam: &Adam) -> u64 {
    let mut h = xxhash_rust::xxh3::Xxh3::new();
    let mut feed = |x: &Tensor| {
        h.update(bytemuck::cast_slice(&download_f32(x)));
    };
    t.tensors.iter().for_each(&mut feed);
    t.buffers.iter().for_each(|(_, b)| feed(b));
    adam.moments.iter().for_each(|m| {
        feed(&m.m);
        feed(&m.v)
    });
    h.update(&adam.step.to_le_bytes());
    h.digest()
}
