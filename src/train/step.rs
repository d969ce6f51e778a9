//! One training step, top to bottom (SPEC §2.4–2.5, §3): forward from the step's row leaves;
//! one backward pass of `L_main + λ·L_micn` that leaves the main and auxiliary gradients in two
//! buffers (the tasks read separate leaves of the `e_aux` tables); exchange of both buffers
//! between ranks; the φ combination on the shared `e_aux` tables; the Adam update. Losses are
//! normalised by global counts (global batch; global positives for MICN), so N ranks × b samples
//! compute what one rank with N·b samples does.
//!
//! Every host↔device copy goes through [`crate::transfer`], counted. Per step: one upload (the
//! batch, MICN's negatives, the row leaves' plan) and one download (with one rank on the device
//! path ([`StepPath`]), the losses alone: gradients, φ and Adam stay on the device; otherwise
//! every gradient with the losses, for the host exchange). With more ranks, each normalising
//! layer adds two transfers each way (its statistics cross ranks on the host) and the device
//! path one upload for the update. `tests/integration/device_path.rs` asserts the counts.
//!
//! With one rank on the device path a step may also leave its losses on the device
//! ([`StepContext::defer_read`]): it then makes no download and never waits for the device, and
//! [`read_unread`] reads many steps' losses in one download when they are wanted (training reads
//! them when it logs, evaluates or checkpoints).
use tch::nn::VarStore;
use tch::{Device, Kind, Reduction, Tensor};

use super::grads::{self, RowGrads, TaskGrads};
use super::optim::{scatter_rows, Adam, FlatDense};
use crate::config::{Config, EmbeddingOptimizer, TrainConfig};
use crate::data::batch::Batch;
use crate::dist::{self, Communicator};
use crate::micn::loss::{positive_mask, sampled_softmax, Candidates};
use crate::micn::rng::StepSeed;
use crate::model::batch_stats::{self, Mode};
use crate::model::embeddings::{BatchIds, HostIds, LeafPlan, PlannedRows, RowLeaf, TableOwner, Task};
use crate::network::{Network, NetworkError, VarGroup, EMBEDDINGS_PATH, MAIN_PATH};
use crate::transfer::{download_f32, upload_f32, Piece, Upload, Uploaded};

/// A failed step.
#[derive(Debug, thiserror::Error)]
pub enum StepError {
    #[error("step {step}: the {which} loss is {value}; stopping (the last checkpoint, if any, is intact)")]
    NonFinite { step: u64, which: &'static str, value: f64 },
    /// A finite loss whose update broke the model (a learning rate far too high), found by the
    /// check before an evaluation or a checkpoint: the loss might never show it (an infinite
    /// running variance leaves the training loss finite). `what` says how it shows; `passed`, the
    /// step of the last check it passed (the breaking step lies after it).
    #[error(
        "step {step}: the model diverged after {}: {what} (lower train.lr); stopping (the last checkpoint, if any, \
         is intact)",
        match passed { 0 => "its start".to_string(), n => format!("step {n}, its last check passed") }
    )]
    Diverged { step: u64, passed: u64, what: String },
    #[error("the model trains for retrieval but gave no user vector or no embedded negatives")]
    NoRetrievalInputs,
    #[error(transparent)]
    Comm(#[from] dist::CommError),
    #[error(transparent)]
    Micn(#[from] crate::micn::MicnError),
}

/// Where the end of a step runs: the φ combination and the Adam update.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum StepPath {
    /// On the CPU, the host fast paths: the gradients come down in one piece and Adam makes one
    /// pass over each parameter's memory. On any other device, [`StepPath::Device`].
    #[default]
    Host,
    /// What a GPU runs, on every device, the CPU included (`train.device_path = true`): with one
    /// rank the gradients stay on the device, where the φ combination and Adam run as tensor
    /// operations (the dense parameters in one flat buffer). Equal to the host path up to
    /// rounding (the order of additions differs).
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
    /// Where the φ combination and the update run ([`StepPath::Host`] unless set).
    pub path: StepPath,
    /// The dense variables as one flat buffer, updated at once (on the device path, see
    /// [`Trainable::flatten_dense`]).
    pub flat: Option<FlatDense>,
}

impl Trainable {
    /// The variables of `vs`, which holds `net`, with their roles.
    pub fn new(vs: &VarStore, net: &Network) -> Result<Self, NetworkError> {
        let mut vars: Vec<(String, Tensor)> = vs.variables().into_iter().collect();
        vars.sort_by(|a, b| a.0.cmp(&b.0));
        let mut t = Trainable {
            names: vec![],
            tensors: vec![],
            groups: vec![],
            is_table: vec![],
            buffers: vec![],
            path: StepPath::Host,
            flat: None,
        };
        for (name, tensor) in vars {
            if !tensor.requires_grad() {
                t.buffers.push((name, tensor));
                continue;
            }
            let role = net.role(&name)?;
            t.groups.push(role.group);
            t.is_table.push(role.by_rows);
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

    /// Lays the dense variables (and their moments in `adam`) out as one flat buffer, so that
    /// the device path updates them in one pass; values unchanged. Only on the device path: the
    /// host path's update already makes one pass over each variable's memory.
    pub fn flatten_dense(&mut self, adam: &mut Adam) {
        let device = self.tensors.first().map_or(Device::Cpu, Tensor::device);
        if self.path.on_device(device) && self.flat.is_none() {
            let dense: Vec<usize> = (0..self.names.len()).filter(|&i| !self.is_table[i]).collect();
            self.flat = adam.flatten(&mut self.tensors, &dense);
        }
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
    /// Adam's learning rate for this step (`train.lr`, or the schedule's).
    pub lr: f64,
    /// Scale the combined gradients down to this global L2 norm when above it (0: never).
    pub clip_norm: f64,
    /// Decoupled weight decay of the dense (non-table) parameters: `p ← p·(1 − lr·weight_decay)`
    /// before Adam's update, as AdamW.
    pub weight_decay: f64,
    /// With one rank on the device path: leave the step's losses and norms on the device, in
    /// [`StepStats::unread`], instead of reading them before the update (false: read them, and
    /// a non-finite loss stops the step before the update).
    pub defer_read: bool,
}

impl<'a> StepContext<'a> {
    /// The context of global step `step` of the run `cfg`, whose local batch starts at global
    /// sample `first_sample`; no run-control flag set.
    pub fn new(cfg: &Config, comm: &'a dyn Communicator, device: Device, step: u64, first_sample: u64) -> Self {
        Self {
            comm,
            device,
            global_batch: cfg.train.global_batch_size,
            lambda: cfg.micn.lambda,
            phi: cfg.micn.phi,
            embedding_optimizer: cfg.train.embedding_optimizer,
            seed: cfg.train.seed,
            step,
            first_sample,
            control: Control::default(),
            lr: cfg.train.lr,
            clip_norm: cfg.train.clip_grad_norm,
            weight_decay: cfg.train.weight_decay,
            defer_read: false,
        }
    }

    /// Which tasks' gradients take part in the φ combination on the shared (`e_aux`) tables,
    /// `[main, aux]`. A task of weight 0 (the main task at φ = 0; MICN at φ = 1, or at λ = 0,
    /// when its gradient is 0 everywhere) is left out with its rows, so that a row only it read
    /// is not updated: lazy Adam would move such a row by its momentum alone. So with λ = 0 or
    /// φ = 1 the main model is the same whatever MICN's own settings (its negatives, say), and
    /// with φ = 0 the `e_aux` tables learn from MICN alone.
    pub fn combined_tasks(&self) -> [bool; 2] {
        [self.phi > 0.0, self.phi < 1.0 && self.lambda > 0.0]
    }
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
#[derive(Debug, Clone, Default)]
pub struct StepStats {
    pub loss_main: f64,
    /// The main model's own auxiliary loss (DIEN's, CAMN's diversity loss; 0 for the others).
    pub loss_model_aux: f64,
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
    /// Seconds the host spent building the step's upload (MICN's and a retrieval objective's
    /// negatives, the row leaves' plan, the packing): work a GPU cannot take off the host, so a
    /// step on a GPU takes at least this long.
    pub prepare_seconds: f64,
    /// Global L2 norm of the combined gradients before clipping (computed only when
    /// `train.clip_grad_norm` is set; 0 otherwise).
    pub grad_norm: f64,
    /// The run-control flags over all ranks.
    pub control: Control,
    /// A step that left its losses on the device ([`StepContext::defer_read`]): they, the norms
    /// above and `grad_norm` are zero here until [`read_unread`] reads them.
    pub unread: Option<Unread>,
}

/// The losses and norms of one step, left on the device: `[BCE, model aux, MICN, ‖main‖²,
/// ‖aux‖²]` on the `e_aux` tables, and the global norm before clipping when clipped.
#[derive(Debug)]
pub struct Unread {
    /// The step's number (1-based, as errors and metrics name it).
    step: u64,
    values: Tensor,
}

impl Unread {
    /// Step `step`'s values (1-based), as a device step leaves them.
    #[cfg(test)]
    pub(crate) fn new(step: u64, values: Tensor) -> Self {
        Self { step, values }
    }
}

impl Clone for Unread {
    fn clone(&self) -> Self {
        Self { step: self.step, values: self.values.shallow_clone() }
    }
}

/// The losses and norms of the steps `unread` (in order), in one download; the first non-finite
/// loss among them is an error naming its own step. Each result holds only what was unread.
pub fn read_unread(unread: &[Unread]) -> Result<Vec<StepStats>, StepError> {
    if unread.is_empty() {
        return Ok(Vec::new());
    }
    let values: Vec<Tensor> = unread.iter().map(|u| u.values.shallow_clone()).collect();
    let mut host = download_f32(&Tensor::cat(&values, 0)).into_iter();
    unread
        .iter()
        .map(|u| {
            let mut stats = StepStats::default();
            fill_read(&mut stats, &host.by_ref().take(u.values.numel()).collect::<Vec<f32>>());
            check_finite(&stats, u.step)?;
            Ok(stats)
        })
        .collect()
}

/// `stats` with the values of an [`Unread`], read.
fn fill_read(stats: &mut StepStats, host: &[f32]) {
    let [main, model_aux, micn, norm_main, norm_aux] = [0, 1, 2, 3, 4].map(|k| host[k] as f64);
    stats.loss_main = main + model_aux;
    stats.loss_model_aux = model_aux;
    stats.loss_micn = micn;
    stats.grad_norm_main_e_aux = norm_main.sqrt();
    stats.grad_norm_aux_e_aux = norm_aux.sqrt();
    if let Some(&clipped) = host.get(5) {
        stats.grad_norm = clipped as f64;
    }
}

/// What a variable's gradient is taken with respect to: a table's row leaf for the task (the
/// embeddings', the main model's own table), or the variable itself (dense parameters).
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

/// A table whose gradient reached the variable itself: the model read it in a training step
/// without planning its lookups ([`crate::model::MainModel::row_lookups`]), a defect of the
/// model's code that no input can cause.
fn unplanned(t: &Trainable, i: usize) -> ! {
    panic!("{}: read in a training step without a row leaf (MainModel::row_lookups plans none for it)", t.names[i])
}

/// The targets of the variables `which` for `task`.
fn targets<'a>(t: &'a Trainable, which: &[usize], leaves: &'a [RowLeaf], task: Task) -> Vec<Target<'a>> {
    which
        .iter()
        .map(|&i| {
            let (owner, table) = t.names[i].split_once('.').unwrap_or_default();
            let owner = match owner {
                EMBEDDINGS_PATH => Some(TableOwner::Embeddings),
                MAIN_PATH => Some(TableOwner::MainModel),
                _ => None,
            };
            match leaves.iter().find(|l| Some(l.owner) == owner && l.table == table && l.task == task) {
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
    /// A row leaf's gradient: the table's gradient at the leaf's rows (`len` values).
    Rows {
        leaf: &'a RowLeaf,
        len: usize,
        dim: usize,
    },
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
                Target::Rows(leaf) => Pending::Rows { leaf, len: flat(g), dim },
                Target::Var(_) => unplanned(t, i),
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
            Pending::Rows { leaf, len, dim } => {
                out.tables.push(RowGrads { ids: leaf.ids.clone(), rows: take(len).to_vec(), dim })
            }
            Pending::Dense { len } => out.dense.extend_from_slice(take(len)),
            Pending::Zeros { len } => out.dense.extend(std::iter::repeat_n(0.0, len)),
        }
    }
    out
}

/// The gradient one variable is updated with: on the host (after an exchange between ranks, or
/// on the CPU's host path), or still on the device (one rank on the device path).
#[derive(Debug)]
pub enum VarGrad {
    Dense(Vec<f32>),
    Rows(RowGrads),
    /// The variable's shape.
    DenseOnDevice(Tensor),
    /// Distinct row ids `[r]` (i64) and their gradients `[r, d]`.
    RowsOnDevice {
        ids: Tensor,
        rows: Tensor,
    },
}

impl VarGrad {
    /// The same gradient, dense, as a tensor shaped like `var` (on the host for host values):
    /// for tests.
    pub fn to_dense(&self, var: &Tensor) -> Tensor {
        match self {
            VarGrad::Dense(values) => Tensor::from_slice(values).view(var.size().as_slice()),
            VarGrad::Rows(rows) => {
                let (ids, values) = (Tensor::from_slice(&rows.ids), Tensor::from_slice(&rows.rows));
                scatter_rows(&var.size(), &ids, &values.view([rows.len() as i64, rows.dim as i64]))
            }
            VarGrad::DenseOnDevice(g) => g.view(var.size().as_slice()),
            VarGrad::RowsOnDevice { ids, rows } => scatter_rows(&var.size(), ids, rows),
        }
    }
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
    let (mut grads, mut stats) = gradients(net, t, batch, ctx)?;
    let update_started = std::time::Instant::now();
    if ctx.clip_norm > 0.0 {
        match (clip_global_norm(&mut grads, ctx.clip_norm), &mut stats.unread) {
            (Norm::Host(norm), _) => stats.grad_norm = norm,
            (Norm::Device(norm), Some(unread)) => unread.values = Tensor::cat(&[&unread.values, &norm], 0),
            (Norm::Device(norm), None) => stats.grad_norm = download_f32(&norm)[0] as f64,
        }
    }
    if !ctx.defer_read {
        if let Some(unread) = stats.unread.take() {
            fill_read(&mut stats, &download_f32(&unread.values));
            check_finite(&stats, unread.step)?;
        }
    }
    apply(t, adam, grads, ctx);
    stats.update_seconds = update_started.elapsed().as_secs_f64();
    Ok(stats)
}

/// Forward, the backward pass, exchange and φ combination: the gradient of every trainable
/// variable (in [`Trainable`] order) as the update will use it, summed over ranks.
///
/// With one rank on the device path the gradients never leave the device: the φ combination
/// runs there too (over the union of both tasks' rows, planned on the host), the losses stay
/// there ([`StepStats::unread`], read by [`train_step`] or, deferred, by [`read_unread`]), and
/// the step's only transfer is its one upload.
pub fn gradients(
    net: &Network,
    t: &Trainable,
    batch: &Batch,
    ctx: &StepContext<'_>,
) -> Result<(Vec<VarGrad>, StepStats), StepError> {
    let device = ctx.device;
    let alone = ctx.comm.size() == 1;
    let resident = alone && t.path.on_device(device);
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

    // The batch, MICN's and a retrieval objective's negatives (drawn on the host) and the row
    // leaves' plan, in one upload.
    let prepare_started = std::time::Instant::now();
    let seed = step_seed(ctx);
    let negative_ids = net.micn.as_ref().map(|micn| micn.negative_ids(seed));
    let retrieval = net.main.retrieval_negatives(seed);
    let mut upload = Upload::new();
    let (ids, labels) = (BatchIds::add_to(batch, &mut upload), upload.f32(&batch.labels));
    let host_ids = HostIds {
        users: &batch.users,
        items: &batch.items,
        cats: &batch.cats,
        hist_items: &batch.hist_items,
        hist_cats: &batch.hist_cats,
        noclick: batch.noclick.as_ref().map(|(items, cats)| (items.as_slice(), cats.as_slice())),
    };
    let main_negative_ids = retrieval.as_ref().map(|(_, ids)| ids.as_slice());
    let plan = net.embeddings.plan_leaves(&host_ids, negative_ids.as_deref(), main_negative_ids, &mut upload);
    let model_rows = net.main.row_lookups(&host_ids).map(|lookups| {
        let planned = PlannedRows::new(&lookups.ids, &mut upload);
        (lookups, planned)
    });
    let unions = if resident { plan_unions(t, &plan, ctx.combined_tasks(), &mut upload) } else { Vec::new() };
    let sent = upload.send(device);
    let prepare_seconds = prepare_started.elapsed().as_secs_f64();
    let (ids, labels) = (ids.read(&sent), sent.get(labels));
    let routing_logits =
        net.micn.as_ref().map(|micn| micn.routing_logits(seed, ids.len(), batch.hist_len as i64, device));

    // Forward from the step's row leaves, with the normalising layers' statistics over the global
    // batch (one rank's own batch is the global batch: nothing to combine).
    let global = (!alone).then(|| batch_stats::Global::new(ctx.comm));
    let mode = global.as_ref().map_or(Mode::Train, Mode::Global);
    let mut input = net.embeddings.forward_train_planned(&ids, plan, &sent);
    if let Some((lookups, planned)) = model_rows {
        let (leaf, rows) = planned.gather(&lookups.variable, (TableOwner::MainModel, lookups.table), Task::Main, &sent);
        input.leaves.push(leaf);
        input.embedded.main.planned_rows = Some(rows);
    }
    let out = net.main.forward(&input.embedded.main, mode);
    let traces = match global {
        Some(global) => global.finish()?,
        None => Vec::new(),
    };
    // The main loss: binary cross-entropy of the logits, or a retrieval objective's sampled softmax
    // over the clicked samples (normalised by their global count, as MICN's).
    let main_loss = match (&retrieval, &out.user_vector, &input.embedded.main.negatives) {
        (None, ..) => {
            out.logit.binary_cross_entropy_with_logits::<Tensor>(&labels, None, None, Reduction::Sum) / b_global
        }
        (Some((sampler, _)), Some(user), Some((negative_ids, vectors))) => {
            let main = &input.embedded.main;
            let target = Candidates {
                vectors: main.target.shallow_clone(),
                ids: ids.items.shallow_clone(),
                log_q: sampler.log_q(&ids.items),
            };
            let negatives = Candidates {
                vectors: vectors.shallow_clone(),
                ids: negative_ids.shallow_clone(),
                log_q: sampler.log_q(negative_ids),
            };
            sampled_softmax(user, &target, &negatives, &positive_mask(&labels, &ids.items), positives)
        }
        (Some(_), ..) => return Err(StepError::NoRetrievalInputs),
    };
    let model_aux = out.aux_loss.as_ref().map(|a| a.sum(Kind::Float) / b_global);
    let micn = match (&net.micn, &input.embedded.aux, &input.negatives, &routing_logits) {
        (Some(micn), Some(aux), Some((negative_ids, vectors)), Some(logits)) => {
            Some(micn.loss_with_negatives(aux, (negative_ids, vectors), &ids.items, &labels, logits, positives))
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
    let below_head = [model_aux.as_ref().map(Tensor::shallow_clone), micn.as_ref().map(|loss| loss * ctx.lambda)]
        .into_iter()
        .flatten()
        .reduce(|a, b| a + b);
    let grads = batch_stats::backward(&main_loss, below_head, &traces, &all, ctx.comm)?;
    let (main_g, aux_g) = grads.split_at(main_targets.len());
    let zero = || main_loss.zeros_like();
    let losses: Vec<Tensor> = [Some(&main_loss), model_aux.as_ref(), micn.as_ref()]
        .into_iter()
        .map(|loss| loss.map_or_else(zero, |l| l.detach()).to_kind(Kind::Float).reshape([1]))
        .collect();

    let backward = Backward { main_vars, aux_vars, main_targets, aux_targets, main: main_g, aux: aux_g, losses };
    let counted = (positives, comm_seconds);
    let (grads, stats) = match resident {
        true => finish_on_device(t, backward, (&unions, &sent), counted, ctx)?,
        false => exchange_on_host(t, backward, counted, ctx)?,
    };
    Ok((grads, StepStats { prepare_seconds, ..stats }))
}

/// The backward pass's gradients of both tasks, with what they are taken with respect to, and
/// the step's local losses.
struct Backward<'a> {
    main_vars: Vec<usize>,
    aux_vars: Vec<usize>,
    main_targets: Vec<Target<'a>>,
    aux_targets: Vec<Target<'a>>,
    main: &'a [Tensor],
    aux: &'a [Tensor],
    /// `[1]` each: BCE, DIEN's auxiliary loss, MICN's loss (zeros where absent).
    losses: Vec<Tensor>,
}

/// One rank on the device path: the gradients, combined on the device, and the losses with the
/// `e_aux` gradient norms left there, unread. `counted`: MICN's global positives and the seconds
/// spent counting them.
fn finish_on_device(
    t: &Trainable,
    backward: Backward<'_>,
    (unions, sent): (&[Union], &Uploaded),
    (positives, comm_seconds): (f64, f64),
    ctx: &StepContext<'_>,
) -> Result<(Vec<VarGrad>, StepStats), StepError> {
    let main_by_var = device_grads(t, &backward.main_vars, &backward.main_targets, backward.main);
    let aux_by_var = device_grads(t, &backward.aux_vars, &backward.aux_targets, backward.aux);
    let (combined, norms) = combine_on_device(t, main_by_var, aux_by_var, unions, sent, ctx.phi);
    let values = Tensor::cat(&[Tensor::cat(&backward.losses, 0), norms], 0);
    let stats = StepStats {
        positives,
        comm_seconds,
        control: ctx.control,
        unread: Some(Unread { step: ctx.step + 1, values }),
        ..Default::default()
    };
    Ok((combined, stats))
}

/// Every gradient down in one piece, exchanged between ranks on the host (one all-reduce with the
/// losses and run-control flags, one all-gather of the rows), combined by φ there.
fn exchange_on_host(
    t: &Trainable,
    backward: Backward<'_>,
    (positives, mut comm_seconds): (f64, f64),
    ctx: &StepContext<'_>,
) -> Result<(Vec<VarGrad>, StepStats), StepError> {
    let Backward { main_vars, aux_vars, main_targets, aux_targets, main: main_g, aux: aux_g, losses } = backward;
    // Every gradient the exchange needs and the three losses, in one download.
    let mut parts = Vec::new();
    let main_pending = plan_host_grads(t, &main_vars, &main_targets, main_g, &mut parts);
    let aux_pending = plan_host_grads(t, &aux_vars, &aux_targets, aux_g, &mut parts);
    parts.extend(losses);
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
        loss_model_aux: losses[1] as f64,
        loss_micn: losses[2] as f64,
        positives,
        control: Control::from_sums(control),
        ..Default::default()
    };
    check_finite(&stats, ctx.step + 1)?;

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
                let [main_part, aux_part] = ctx.combined_tasks();
                let none = RowGrads { dim: m.dim.max(a.dim), ..Default::default() };
                let (m, a) = (if main_part { &m } else { &none }, if aux_part { &a } else { &none });
                VarGrad::Rows(RowGrads::combine(m, a, ctx.phi as f32))
            }
            (group, ..) => unreachable!("variable {} of group {group:?} without its gradient", t.names[i]),
        });
    }
    stats.grad_norm_main_e_aux = stats.grad_norm_main_e_aux.sqrt();
    stats.grad_norm_aux_e_aux = stats.grad_norm_aux_e_aux.sqrt();
    Ok((combined, stats))
}

/// A non-finite loss of step `step` (1-based) stops the run: before the update when read in its
/// own step, before the next evaluation or checkpoint when deferred.
fn check_finite(stats: &StepStats, step: u64) -> Result<(), StepError> {
    for (which, value) in [("main", stats.loss_main), ("MICN", stats.loss_micn)] {
        if !value.is_finite() {
            return Err(StepError::NonFinite { step, which, value });
        }
    }
    Ok(())
}

/// The gradients of the variables `which` (by variable index) as device tensors, `None` for a
/// table no gradient reached.
fn device_grads(t: &Trainable, which: &[usize], targets: &[Target<'_>], grads: &[Tensor]) -> Vec<Option<VarGrad>> {
    let mut out: Vec<Option<VarGrad>> = (0..t.names.len()).map(|_| None).collect();
    for ((&i, target), g) in which.iter().zip(targets).zip(grads) {
        let var = &t.tensors[i];
        out[i] = if !t.is_table[i] {
            Some(VarGrad::DenseOnDevice(if g.defined() { g.to_kind(var.kind()) } else { var.zeros_like() }))
        } else if !g.defined() {
            None
        } else {
            Some(match target {
                Target::Rows(leaf) => {
                    VarGrad::RowsOnDevice { ids: leaf.ids_on_device.shallow_clone(), rows: g.shallow_clone() }
                }
                Target::Var(_) => unplanned(t, i),
            })
        };
    }
    out
}

/// For one shared (`e_aux`) table: the union of the ids the tasks that take part in the φ
/// combination read, and where each such task's rows go in it, in the step's upload.
struct Union {
    var: usize,
    len: usize,
    ids: Piece,
    /// The main task's, then MICN's; `None` for a task left out ([`StepContext::combined_tasks`]).
    positions: [Option<Piece>; 2],
}

/// Plans the φ combination of every shared table on the device: the union of the ids that the
/// tasks taking part (`combined`, see [`StepContext::combined_tasks`]) read, computed on the host.
fn plan_unions(t: &Trainable, plan: &LeafPlan, combined: [bool; 2], upload: &mut Upload) -> Vec<Union> {
    let shared = t.indices(&[VarGroup::Shared]);
    shared
        .into_iter()
        .filter_map(|i| {
            let table = t.names[i].strip_prefix(EMBEDDINGS_PATH)?.strip_prefix('.')?;
            let ids = [plan.ids(table, Task::Main)?, plan.ids(table, Task::Aux)?];
            let mut union: Vec<i64> = (0..2).filter(|&k| combined[k]).flat_map(|k| ids[k]).copied().collect();
            union.sort_unstable();
            union.dedup();
            let mut positions = [None; 2];
            for k in (0..2).filter(|&k| combined[k]) {
                let at: Vec<i64> =
                    ids[k].iter().map(|id| union.binary_search(id).expect("in the union") as i64).collect();
                positions[k] = Some(upload.i64(&at));
            }
            Some(Union { var: i, len: union.len(), ids: upload.i64(&union), positions })
        })
        .collect()
}

/// The φ combination on the device: `φ·main + (1 − φ)·aux` on the shared tables' union of rows,
/// each task's gradient elsewhere; and `[‖main‖², ‖aux‖²]` on the shared tables.
fn combine_on_device(
    t: &Trainable,
    mut main: Vec<Option<VarGrad>>,
    mut aux: Vec<Option<VarGrad>>,
    unions: &[Union],
    sent: &Uploaded,
    phi: f64,
) -> (Vec<VarGrad>, Tensor) {
    let device = t.tensors.first().map_or(Device::Cpu, Tensor::device);
    let mut norms = [0, 1].map(|_| Tensor::zeros([1], (Kind::Float, device)));
    let combined = (0..t.names.len())
        .map(|i| match t.groups[i] {
            VarGroup::Orig => main[i].take(),
            VarGroup::Aux => aux[i].take(),
            VarGroup::Shared => {
                let union = unions.iter().find(|u| u.var == i).expect("every shared table has a planned union");
                let dim = t.tensors[i].size()[1];
                let mut rows = Tensor::zeros([union.len as i64, dim], (Kind::Float, device));
                let tasks = [(main[i].take(), union.positions[0], phi), (aux[i].take(), union.positions[1], 1.0 - phi)];
                for (norm, (grad, at, scale)) in norms.iter_mut().zip(tasks) {
                    if let Some(VarGrad::RowsOnDevice { rows: g, .. }) = grad {
                        *norm = &*norm + g.square().sum(Kind::Float).reshape([1]);
                        if let Some(at) = at {
                            rows = rows.index_add(0, &sent.get(at), &(g * scale));
                        }
                    }
                }
                Some(VarGrad::RowsOnDevice { ids: sent.get(union.ids), rows })
            }
        })
        .enumerate()
        .map(|(i, g)| {
            g.unwrap_or_else(|| VarGrad::Rows(RowGrads { dim: t.tensors[i].size()[1] as usize, ..Default::default() }))
        })
        .collect();
    (combined, Tensor::cat(&norms, 0))
}

/// A global gradient norm: computed on the host, or left on the device (`[1]`, f32).
pub enum Norm {
    Host(f64),
    Device(Tensor),
}

/// Scale `grads` so that their global L2 norm is at most `max_norm` (as
/// `torch.nn.utils.clip_grad_norm_`, with its 1e-6 guard); returns the norm before. The combined
/// gradients are the same on every rank, so every rank scales by the same factor. Gradients that
/// all live on the device are clipped there, without a transfer; with some on the host, the
/// device's part of the norm comes down in one download.
pub fn clip_global_norm(grads: &mut [VarGrad], max_norm: f64) -> Norm {
    let squares = |v: &[f32]| v.iter().map(|&x| x as f64 * x as f64).sum::<f64>();
    let mut on_host = 0.0;
    let mut on_device = Vec::new();
    for g in grads.iter() {
        match g {
            VarGrad::Dense(v) => on_host += squares(v),
            VarGrad::Rows(r) => on_host += squares(&r.rows),
            VarGrad::DenseOnDevice(g) | VarGrad::RowsOnDevice { rows: g, .. } => {
                on_device.push(g.square().sum(Kind::Double).reshape([1]));
            }
        }
    }
    let device_squares = (!on_device.is_empty()).then(|| Tensor::cat(&on_device, 0).sum(Kind::Double).reshape([1]));
    match device_squares {
        // Every nonzero gradient on the device (a table no gradient reached has empty host rows).
        Some(squares) if on_host == 0.0 => {
            let norm = squares.sqrt();
            let scale = (max_norm / (&norm + 1e-6)).clamp_max(1.0).to_kind(Kind::Float);
            for g in grads.iter_mut() {
                if let VarGrad::DenseOnDevice(g) | VarGrad::RowsOnDevice { rows: g, .. } = g {
                    *g = &*g * &scale;
                }
            }
            Norm::Device(norm.to_kind(Kind::Float))
        }
        device_squares => {
            let total = on_host + device_squares.map_or(0.0, |t| download_f32(&t)[0] as f64);
            let norm = total.sqrt();
            let scale = max_norm / (norm + 1e-6);
            if scale < 1.0 {
                for g in grads.iter_mut() {
                    match g {
                        VarGrad::Dense(v) => v.iter_mut().for_each(|x| *x = (*x as f64 * scale) as f32),
                        VarGrad::Rows(r) => r.rows.iter_mut().for_each(|x| *x = (*x as f64 * scale) as f32),
                        VarGrad::DenseOnDevice(g) | VarGrad::RowsOnDevice { rows: g, .. } => *g = &*g * scale,
                    }
                }
            }
            Norm::Host(norm)
        }
    }
}

/// MICN's randomness for this step: the same seed on every rank, sample-indexed routing logits.
pub fn step_seed(ctx: &StepContext<'_>) -> StepSeed {
    let seed = crate::rng::Rng::derive(ctx.seed, &[crate::rng::stream::MICN_NEGATIVES, ctx.step]).next_u64();
    StepSeed { seed, first_sample: ctx.first_sample }
}

/// The Adam update with the combined gradients.
pub fn apply(t: &mut Trainable, adam: &mut Adam, grads: Vec<VarGrad>, ctx: &StepContext<'_>) {
    adam.cfg.lr = ctx.lr;
    if ctx.weight_decay > 0.0 {
        let keep = 1.0 - ctx.lr * ctx.weight_decay;
        tch::no_grad(|| match &mut t.flat {
            // The dense variables are views of one buffer: decay them at once.
            Some(flat) => flat.scale_params(keep),
            None => (0..t.tensors.len()).filter(|&i| !t.is_table[i]).for_each(|i| {
                let _ = t.tensors[i].f_mul_scalar_(keep);
            }),
        });
    }
    let bc = adam.begin_step();
    let lazy = ctx.embedding_optimizer == EmbeddingOptimizer::Lazy;
    // On the host path the gradients are already host slices and the parameters CPU memory:
    // update in place, in one pass, instead of a dozen libtorch operations per variable (a
    // fixed cost of every step). What is left runs as tensor operations on the device.
    let host = !t.path.on_device(ctx.device);
    let mut upload = Upload::new();
    let mut rest = Vec::new();
    for (i, g) in grads.into_iter().enumerate() {
        let var = &mut t.tensors[i];
        let done = host
            && match &g {
                VarGrad::Dense(values) => adam.update_dense_host(i, var, values, bc),
                VarGrad::Rows(rows) => lazy && adam.update_rows_host(i, var, &rows.ids, &rows.rows, bc),
                VarGrad::DenseOnDevice(_) | VarGrad::RowsOnDevice { .. } => false,
            };
        if done {
            continue;
        }
        // Host gradients go to the device in the one upload below.
        let g = match g {
            VarGrad::Dense(values) => Grad::Sent { values: upload.f32(&values), ids: None, dim: 0 },
            VarGrad::Rows(rows) => {
                Grad::Sent { values: upload.f32(&rows.rows), ids: Some(upload.i64(&rows.ids)), dim: rows.dim }
            }
            VarGrad::DenseOnDevice(g) => Grad::Dense(g),
            VarGrad::RowsOnDevice { ids, rows } => Grad::Rows(ids, rows),
        };
        rest.push((i, g));
    }
    let sent = (!upload.is_empty()).then(|| upload.send(ctx.device));
    let mut flat_grads: Vec<Option<Tensor>> = Vec::new();
    if let Some(flat) = &t.flat {
        flat_grads = flat.indices.iter().map(|_| None).collect();
    }
    for (i, g) in rest {
        let var = &mut t.tensors[i];
        let g = match g {
            Grad::Sent { values, ids, dim } => {
                let sent = sent.as_ref().expect("host gradients were uploaded");
                let values = sent.get(values);
                match ids {
                    None => Grad::Dense(values),
                    Some(ids) => {
                        let ids = sent.get(ids);
                        let rows = values.view([ids.numel() as i64, dim as i64]);
                        Grad::Rows(ids, rows)
                    }
                }
            }
            g => g,
        };
        let in_flat = t.flat.as_ref().and_then(|flat| flat.indices.iter().position(|&k| k == i));
        match (g, in_flat) {
            (Grad::Dense(values), Some(k)) => flat_grads[k] = Some(values.flatten(0, -1)),
            (g, _) => update_one(adam, i, var, g, lazy, bc),
        }
    }
    // The dense variables in one pass over their flat buffer (every one of them has a gradient:
    // zeros where none reached it).
    if let (Some(flat), false) = (t.flat.as_mut(), flat_grads.is_empty()) {
        let grads: Vec<Tensor> =
            flat_grads.into_iter().map(|g| g.expect("a gradient for every dense variable")).collect();
        adam.update_flat(flat, &Tensor::cat(&grads, 0), bc);
    }
    // Dice's running statistics follow the global batch statistics: identical on every rank.
}

/// The update of one variable with its gradient on the device.
fn update_one(adam: &mut Adam, i: usize, var: &mut Tensor, g: Grad, lazy: bool, bc: (f64, f64)) {
    match g {
        Grad::Dense(values) => adam.update_dense(i, var, &values.view(var.size().as_slice()), bc),
        Grad::Rows(ids, rows) if lazy => adam.update_rows(i, var, &ids, &rows, bc),
        Grad::Rows(ids, rows) => adam.update_dense(i, var, &scatter_rows(&var.size(), &ids, &rows), bc),
        Grad::Sent { .. } => unreachable!("read above"),
    }
}

/// A gradient on its way to the update.
enum Grad {
    /// In the update's upload: f32 values, and for a table its row ids and row width.
    Sent {
        values: Piece,
        ids: Option<Piece>,
        dim: usize,
    },
    Dense(Tensor),
    Rows(Tensor, Tensor),
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clipping_scales_every_kind_of_gradient_by_one_factor_to_the_global_norm() {
        let host_norm = |norm: Norm| match norm {
            Norm::Host(norm) => norm,
            Norm::Device(_) => panic!("host gradients: the norm is the host's"),
        };
        // 3² + 4² + 12² = 13²: host dense, host rows and a device tensor together.
        let grads = || {
            vec![
                VarGrad::Dense(vec![3.0]),
                VarGrad::Rows(RowGrads { ids: vec![7], rows: vec![4.0], dim: 1 }),
                VarGrad::DenseOnDevice(Tensor::from_slice(&[12.0f32])),
            ]
        };
        let mut g = grads();
        let before = crate::transfer::counts();
        assert!((host_norm(clip_global_norm(&mut g, 6.5)) - 13.0).abs() < 1e-9);
        assert_eq!(crate::transfer::counts().since(before).downloads, 1, "the device's part in one download");
        let scale = 6.5 / (13.0 + 1e-6);
        let VarGrad::Dense(d) = &g[0] else { unreachable!() };
        let VarGrad::Rows(r) = &g[1] else { unreachable!() };
        let VarGrad::DenseOnDevice(t) = &g[2] else { unreachable!() };
        assert_eq!(d[0], (3.0 * scale) as f32);
        assert_eq!(r.rows[0], (4.0 * scale) as f32);
        assert!((t.double_value(&[0]) - 12.0 * scale).abs() < 1e-5);
        // Under the limit nothing changes.
        let mut g = grads();
        clip_global_norm(&mut g, 20.0);
        let VarGrad::Dense(d) = &g[0] else { unreachable!() };
        assert_eq!(d[0], 3.0);

        // Every gradient on the device (beside a table's empty host rows): clipped there, with no
        // transfer, by the same factor; 3² + 4² = 5².
        let on_device = |max_norm: f64| {
            let mut g = vec![
                VarGrad::DenseOnDevice(Tensor::from_slice(&[3.0f32])),
                VarGrad::RowsOnDevice { ids: Tensor::from_slice(&[2i64]), rows: Tensor::from_slice(&[4.0f32]) },
                VarGrad::Rows(RowGrads { dim: 1, ..Default::default() }),
            ];
            let before = crate::transfer::counts();
            let Norm::Device(norm) = clip_global_norm(&mut g, max_norm) else { panic!("the norm stays on the device") };
            assert_eq!(crate::transfer::counts().since(before).total(), 0);
            let values: Vec<f64> = g[..2]
                .iter()
                .map(|g| match g {
                    VarGrad::DenseOnDevice(t) | VarGrad::RowsOnDevice { rows: t, .. } => t.double_value(&[0]),
                    _ => unreachable!(),
                })
                .collect();
            (norm.double_value(&[0]), values)
        };
        let (norm, clipped) = on_device(2.5);
        let scale = 2.5 / (5.0 + 1e-6);
        assert!((norm - 5.0).abs() < 1e-6);
        assert!((clipped[0] - 3.0 * scale).abs() < 1e-6 && (clipped[1] - 4.0 * scale).abs() < 1e-6, "{clipped:?}");
        assert_eq!(on_device(20.0).1, [3.0, 4.0], "under the limit nothing changes");
    }
}
