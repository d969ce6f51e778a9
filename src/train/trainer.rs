//! The training loop: the run directory claimed (a fresh run never replaces one), the validation
//! split held out, epochs of steps from the prefetching loader, evaluations on the validation split
//! before every checkpoint, the test set scored once at the end, `metrics.jsonl`, `summary.json`
//! and the final model in the run directory (written by rank 0), and the checkpoint selected by
//! validation AUC. Every rank makes the same collective calls in the same order: those of
//! [`super::step::train_step`] and [`evaluate_on`]; the broadcasts by which every rank learns
//! the outcome of what only rank 0 does (claiming the directory, choosing the checkpoint to resume
//! from, writing a checkpoint); the start's broadcast of rank 0's parameters; and the replica
//! check every `train.check_replicas_every_steps`. A rank-0 failure writing `metrics.jsonl` or the
//! summary stops the job through `main`'s abort.
use std::io::{IsTerminal, Write as _};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use serde::Serialize;
use tch::nn::VarStore;
use tch::{Device, Tensor};

use super::optim::{Adam, AdamConfig};
use super::step::{
    broadcast_from_root, replica_digest, train_step, Control, StepContext, StepError, StepPath, StepStats, Trainable,
};
use super::Interrupter;
use crate::checkpoint;
use crate::config::{Config, Device as DeviceChoice, ModelKind};
use crate::data::batch::Batch;
use crate::data::loader::{eval_batches, EpochLoader, LoaderConfig};
use crate::data::{shard, DataError, Dataset};
use crate::dist::{self, Communicator, CommunicatorExt};
use crate::io_error::PathIo;
use crate::model::batch_stats::Mode;
use crate::model::embeddings::{BatchIds, Vocab};
use crate::network::Network;

#[derive(Debug, thiserror::Error)]
pub enum TrainError {
    #[error(transparent)]
    Data(#[from] DataError),
    #[error(transparent)]
    Batch(#[from] shard::Indivisible),
    #[error(transparent)]
    Step(#[from] StepError),
    #[error(transparent)]
    Comm(#[from] dist::CommError),
    #[error("building the model: {0}")]
    Model(#[from] crate::network::NetworkError),
    #[error(transparent)]
    Io(#[from] PathIo),
    #[error("device = \"cuda\" but libtorch sees no CUDA device on this machine")]
    NoCuda,
    #[error(transparent)]
    Checkpoint(#[from] crate::checkpoint::CheckpointError),
    #[error("{path}: no valid checkpoint to resume from{refused}")]
    NothingToResume { path: PathBuf, refused: String },
    #[error("{path}: the checkpoint was made with another model or data; these keys differ: {keys}")]
    IncompatibleResume { path: PathBuf, keys: String },
    /// A run directory's file (configuration, saved model, summary) that cannot be used.
    #[error("{path}: {message}")]
    RunFile { path: PathBuf, message: String },
    #[error("{path}: {samples} training samples, fewer than one global batch of {batch}")]
    TooFewSamples { path: PathBuf, samples: usize, batch: usize },
    #[error("data.max_hist_len = {wanted}, but {path} keeps histories of at most {kept} items: {remedy}")]
    HistoryTooShort { path: PathBuf, wanted: usize, kept: usize, remedy: String },
    #[error("scoring the {set} set")]
    Scores {
        set: &'static str,
        #[source]
        source: crate::metrics::MetricError,
    },
    #[error("the {set} set has only one class; AUC is undefined")]
    OneClass { set: &'static str },
    #[error(
        "{path}: data.valid_share = {share} holds out {samples} training samples, too few to score (one class or \
         none): raise it, or set it to 0 to validate nothing"
    )]
    ValidationTooSmall { path: PathBuf, share: f64, samples: usize },
    #[error(
        "{path}: {detail}, the vocabulary of {trained_on} that the model was trained on: its ids would mean other \
         users, items or categories"
    )]
    VocabularyMismatch { path: PathBuf, trained_on: PathBuf, detail: String },
    /// What only rank 0 does (claim the run directory, write a checkpoint) failed there; rank 0
    /// reports why. `input`: its error is one that retrying cannot fix.
    #[error("rank 0 could not {what}; its error says why")]
    PeerFailed { what: &'static str, input: bool },
    #[error("run.dir is empty: set it to the directory the run should be written to")]
    NoRunDir,
    #[error(
        "{path}: already holds a run ({files}); continue it with --resume auto, or replace it with --overwrite \
         (which deletes those files)"
    )]
    RunExists { path: PathBuf, files: String },
    #[error("after step {step} the replicas differ: digests by rank {digests:x?}")]
    ReplicasDiffer { step: u64, digests: Vec<u64> },
}

impl TrainError {
    /// Whether the same command would fail the same way again (a dataset, checkpoint or device
    /// that does not fit the configuration), as opposed to a crash or an I/O failure.
    pub fn is_input_error(&self) -> bool {
        match self {
            Self::PeerFailed { input, .. } => return *input,
            Self::Data(e) => return e.is_input_error(),
            Self::Checkpoint(e) => return e.is_input_error(),
            Self::Step(StepError::NonFinite { .. }) => return true,
            _ => {}
        }
        matches!(
            self,
            Self::Batch(_)
                | Self::Model(_)
                | Self::NoCuda
                | Self::NothingToResume { .. }
                | Self::IncompatibleResume { .. }
                | Self::NoRunDir
                | Self::RunExists { .. }
                | Self::VocabularyMismatch { .. }
                | Self::TooFewSamples { .. }
                | Self::HistoryTooShort { .. }
                | Self::OneClass { .. }
                | Self::ValidationTooSmall { .. }
                | Self::Scores { .. }
        )
    }
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> TrainError + '_ {
    move |source| TrainError::Io(PathIo { path: path.to_path_buf(), source })
}

/// Test-set metrics over all ranks.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct EvalResult {
    pub auc: f64,
    pub gauc: f64,
    pub logloss: f64,
    pub samples: u64,
}

/// `summary.json`.
#[derive(Debug, Clone, Serialize)]
pub struct Summary {
    /// Test metrics of the final model.
    pub test_auc: f64,
    pub test_gauc: f64,
    pub test_logloss: f64,
    /// Validation AUC of the final model (none without a validation split, or after a stop).
    pub valid_auc: Option<f64>,
    /// The checkpoint with the best validation AUC and its test metrics: the model an honest
    /// report quotes (none without a validation split).
    pub selected: Option<Selected>,
    pub steps: u64,
    pub epochs_completed: u64,
    /// Training samples per second of the training loop (evaluations excluded).
    pub samples_per_sec: f64,
    /// Training samples per second after a warm-up of up to 5 steps, checkpoints and evaluations
    /// excluded (see [`SteadyRate`]); `samples_per_sec` when the run is too short for a warm-up.
    pub steady_samples_per_sec: f64,
    /// Wall-clock seconds of the whole run.
    pub seconds: f64,
    pub world_size: usize,
    pub oracle_auc: Option<f64>,
    pub model: String,
    pub micn: bool,
    /// Share of the training steps' wall-clock time spent in the gradient exchange (see
    /// [`crate::train::step::StepStats::comm_seconds`]).
    pub comm_share: f64,
    /// Share of the training steps' wall-clock time spent in the optimizer update.
    pub update_share: f64,
    /// Mean bytes one rank sent per step in the gradient exchange.
    pub bytes_sent_per_step: f64,
    /// Mean host↔device transfers (uploads and downloads, see [`crate::transfer`]) of rank 0's
    /// training steps in this process.
    pub transfers_per_step: f64,
    /// Digest of the final parameters, buffers and optimizer state (see `replica_digest`).
    pub replica_digest: String,
    /// The run was stopped by a signal (after checkpointing) before its last step.
    pub stopped_by_signal: bool,
}

/// The model selected by validation AUC among the run's checkpoints.
#[derive(Debug, Clone, Serialize)]
pub struct Selected {
    pub step: u64,
    pub checkpoint: String,
    pub valid_auc: f64,
    pub test_auc: f64,
    pub test_gauc: f64,
    pub test_logloss: f64,
}

/// Throughput after a warm-up. A run's first steps are slower (libtorch's first allocations, the
/// loader filling its queue), which weighs more the shorter the run, and a checkpoint at the end
/// is a fixed cost too; benchmarks comparing runs of different speeds want neither. Each step is
/// timed from the end of the previous iteration's work, so its wait for the batch counts, but
/// checkpoints and evaluations do not.
struct SteadyRate {
    warmup: u64,
    steps: u64,
    samples: u64,
    seconds: f64,
    resumed: Instant,
}

impl SteadyRate {
    /// For a run of `steps` steps in this process: a warm-up of a tenth of them, at most 5.
    fn new(steps: u64) -> Self {
        Self { warmup: (steps / 10).min(5), steps: 0, samples: 0, seconds: 0.0, resumed: Instant::now() }
    }

    /// A step of `samples` global samples has just finished.
    fn step_done(&mut self, samples: u64) {
        self.steps += 1;
        if self.steps > self.warmup {
            self.seconds += self.resumed.elapsed().as_secs_f64();
            self.samples += samples;
        }
    }

    /// The work after a step (checkpoint, evaluation) is done: the next step's time starts.
    fn resume(&mut self) {
        self.resumed = Instant::now();
    }

    fn rate(&self) -> Option<f64> {
        (self.samples > 0 && self.seconds > 0.0).then(|| self.samples as f64 / self.seconds)
    }
}

/// The device a rank trains on: `cuda` picks GPU `local_rank mod device_count`. Logs the choice
/// (every rank, with the GPU's name and memory), so a run's logs say where each rank ran.
pub fn pick_device(choice: DeviceChoice, local_rank: usize) -> Result<Device, TrainError> {
    let gpus = tch::Cuda::device_count() as usize;
    let device = match choice {
        DeviceChoice::Cpu => Device::Cpu,
        DeviceChoice::Cuda if gpus == 0 => return Err(TrainError::NoCuda),
        DeviceChoice::Cuda | DeviceChoice::Auto if gpus > 0 => Device::Cuda(local_rank % gpus),
        _ => Device::Cpu,
    };
    match device {
        Device::Cuda(index) => {
            let gpu = crate::doctor::cuda::gpu(index);
            tracing::info!(
                device = %format!("cuda:{index}"),
                gpu = gpu.as_ref().map_or("unknown", |g| g.name.as_str()),
                memory_gib = gpu.as_ref().map(|g| (g.memory_bytes as f64 / (1u64 << 30) as f64 * 10.0).round() / 10.0),
                local_rank,
                configured = ?choice,
                "device"
            );
        }
        _ => tracing::info!(device = "cpu", cuda_devices = gpus, configured = ?choice, "device"),
    }
    Ok(device)
}

/// A model built for a dataset.
pub struct Built {
    pub vs: VarStore,
    pub net: Network,
}

/// Build the network for `dataset` on `device` (initial values from `train.seed`).
pub fn build_model(cfg: &Config, dataset: &Dataset, device: Device) -> Result<Built, TrainError> {
    let vocab = Vocab {
        users: dataset.vocab.users.len() as i64,
        items: dataset.vocab.items.len() as i64,
        cats: dataset.vocab.cats.len() as i64,
    };
    build_network(cfg, vocab, &dataset.vocab.item_cat, device)
}

/// Build the network for vocabularies of the given sizes (`item_cat`: category of every item).
pub fn build_network(cfg: &Config, vocab: Vocab, item_cat: &[u32], device: Device) -> Result<Built, TrainError> {
    // libtorch's generator is global: hold it for the whole construction, so that models built
    // at the same time on other threads (thread ranks, tests) cannot interleave their draws.
    static INIT: std::sync::Mutex<()> = std::sync::Mutex::new(());
    let _guard = INIT.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
    tch::manual_seed(cfg.train.seed as i64);
    let vs = VarStore::new(device);
    let item_cats = Tensor::from_slice(&item_cat.iter().map(|&c| c as i64).collect::<Vec<_>>());
    let net = Network::new(&vs.root(), &cfg.model, &cfg.micn, &vocab, &item_cats)?;
    Ok(Built { vs, net })
}

/// One rank's copy of the model and its optimizer (SPEC §3): every rank starts from rank 0's
/// parameters and takes the same steps. Built by the trainer, the benchmarks and the tests alike.
pub struct Replica {
    pub vs: VarStore,
    pub net: Network,
    pub trainable: Trainable,
    pub adam: Adam,
}

impl Replica {
    /// A built network's replica, with rank 0's parameters on every rank, stepped on the path
    /// `train.device_path` selects (on the device path the dense parameters live in one flat
    /// buffer), by Adam with the run's settings.
    pub fn new(built: Built, cfg: &Config, comm: &dyn Communicator) -> Result<Self, TrainError> {
        let Built { vs, net } = built;
        broadcast_from_root(comm, &vs)?;
        let mut trainable = Trainable::new(&vs, &net)?.with_path(StepPath::from_config(&cfg.train));
        let mut adam = Adam::new(AdamConfig::from_train(&cfg.train), &trainable.tensors);
        trainable.flatten_dense(&mut adam);
        Ok(Self { vs, net, trainable, adam })
    }

    /// Parameters, buffers and optimizer state from the checkpoint `dir` (of step `step`).
    pub fn load_checkpoint(&mut self, dir: &Path, step: u64, device: Device) -> Result<(), TrainError> {
        checkpoint::load_var_store(&mut self.vs, &dir.join("model.safetensors"))?;
        let opt_path = dir.join("optimizer.safetensors");
        let saved = checkpoint::load_tensors_like(&opt_path, self.adam.named_state(&self.trainable.names))?;
        self.adam
            .load_state(&self.trainable.names, step, |k| saved.get(k).map(|t| t.to_device(device)))
            .map_err(|message| TrainError::RunFile { path: opt_path.clone(), message })
    }

    /// One training step on `batch`.
    pub fn step(&mut self, batch: &Batch, ctx: &StepContext<'_>) -> Result<StepStats, StepError> {
        train_step(&self.net, &mut self.trainable, &mut self.adam, batch, ctx)
    }

    /// A digest of every parameter, buffer and moment: equal on every rank when in sync.
    pub fn digest(&self) -> u64 {
        replica_digest(&self.trainable, &self.adam)
    }
}

/// The samples an evaluation scores.
#[derive(Debug, Clone, Copy)]
pub enum EvalSet<'a> {
    /// The whole test archive.
    Test,
    /// These samples of the training archive: the validation split.
    Valid(&'a [u32]),
}

impl EvalSet<'_> {
    fn name(&self) -> &'static str {
        match self {
            Self::Test => "test",
            Self::Valid(_) => "validation",
        }
    }
}

/// Score this rank's block of the test set, gather everything, compute exact global metrics.
pub fn evaluate(
    net: &Network,
    dataset: &Dataset,
    comm: &dyn Communicator,
    device: Device,
    max_hist_len: usize,
) -> Result<EvalResult, TrainError> {
    evaluate_on(net, dataset, EvalSet::Test, comm, device, max_hist_len)
}

/// Score this rank's block of `set`, gather everything, compute exact global metrics.
pub fn evaluate_on(
    net: &Network,
    dataset: &Dataset,
    set: EvalSet<'_>,
    comm: &dyn Communicator,
    device: Device,
    max_hist_len: usize,
) -> Result<EvalResult, TrainError> {
    let every_test_sample: Vec<u32>;
    let (samples, set_ids) = match set {
        EvalSet::Test => {
            every_test_sample = (0..dataset.test.samples().len() as u32).collect();
            (dataset.test.samples(), every_test_sample.as_slice())
        }
        EvalSet::Valid(ids) => (dataset.train.samples(), ids),
    };
    let (mut ids, mut keys, mut probs, mut labels) =
        (Vec::<u32>::new(), Vec::<u32>::new(), Vec::<f32>::new(), Vec::<f32>::new());
    tch::no_grad(|| {
        for batch in eval_batches(samples, set_ids, comm.rank(), comm.size(), 1024, max_hist_len) {
            let embedded = net.embeddings.forward(&BatchIds::from_batch(&batch, device));
            let logit = net.main.forward(&embedded.main, Mode::Eval).logit;
            probs.extend(crate::transfer::download_f32(&logit.sigmoid()));
            ids.extend(&batch.sample_ids);
            keys.extend(&batch.user_keys);
            labels.extend(&batch.labels);
        }
    });
    // Gather everything and put it back in test-set order, so the metrics see the same sequence
    // whatever the world size.
    let ids = comm.all_gather(&ids)?.data;
    let mut order: Vec<usize> = (0..ids.len()).collect();
    order.sort_by_key(|&k| ids[k]);
    let reorder = |v: Vec<f32>| order.iter().map(|&k| v[k]).collect::<Vec<f32>>();
    let probs = reorder(comm.all_gather(&probs)?.data);
    let labels: Vec<u8> = reorder(comm.all_gather(&labels)?.data).iter().map(|&l| l as u8).collect();
    let keys_all = comm.all_gather(&keys)?.data;
    let keys: Vec<u32> = order.iter().map(|&k| keys_all[k]).collect();
    let m = crate::metrics::test_metrics(&keys, &probs, &labels).map_err(|e| match e {
        crate::metrics::MetricError::OneClass { .. } => TrainError::OneClass { set: set.name() },
        source => TrainError::Scores { set: set.name(), source },
    })?;
    Ok(EvalResult { auc: m.auc, gauc: m.gauc, logloss: m.logloss, samples: probs.len() as u64 })
}

/// One line of `metrics.jsonl`: training lines carry the mean losses over the steps since the
/// previous line (or since the resume) and the last step's gradient norms; evaluation lines the
/// metrics of the validation split (during the run) or of the test set (at the end).
#[derive(Debug, Clone, Serialize)]
struct MetricsLine {
    step: u64,
    epoch: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    loss_main: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    loss_micn: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    loss_dien_aux: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    grad_norm_main_e_aux: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    grad_norm_aux_e_aux: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    lr: Option<f64>,
    /// Wall-clock throughput since the previous line (the one field that varies between runs).
    #[serde(skip_serializing_if = "Option::is_none")]
    samples_per_sec: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    valid_auc: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    valid_gauc: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    valid_logloss: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    test_auc: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    test_gauc: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    test_logloss: Option<f64>,
}

impl MetricsLine {
    fn new(step: u64, epoch: u64) -> Self {
        Self {
            step,
            epoch,
            loss_main: None,
            loss_micn: None,
            loss_dien_aux: None,
            grad_norm_main_e_aux: None,
            grad_norm_aux_e_aux: None,
            lr: None,
            samples_per_sec: None,
            valid_auc: None,
            valid_gauc: None,
            valid_logloss: None,
            test_auc: None,
            test_gauc: None,
            test_logloss: None,
        }
    }
}

/// Appends lines to `metrics.jsonl` on rank 0 (other ranks hold `None`).
struct MetricsLog {
    file: Option<std::fs::File>,
    path: PathBuf,
}

impl MetricsLog {
    fn write(&mut self, line: &MetricsLine) -> Result<(), TrainError> {
        if let Some(f) = &mut self.file {
            let text = serde_json::to_string(line).expect("plain data") + "\n";
            f.write_all(text.as_bytes()).map_err(io_err(&self.path))?;
        }
        Ok(())
    }
}

/// The files of a run directory, written by rank 0 only: `config.toml`, `metrics.jsonl` (through
/// the [`MetricsLog`] it opens), and at the end `model.safetensors` and `summary.json`; each file
/// replaced whole, never half-written. (Checkpoints are [`Checkpointing`]'s, logs `main`'s.)
struct RunFiles {
    dir: PathBuf,
    rank0: bool,
}

impl RunFiles {
    /// Writes the run's configuration and opens its metrics log: kept up to the step a run
    /// resumes from (lines a run that then died wrote later are dropped), else empty.
    fn start(cfg: &Config, rank0: bool, resumed_step: Option<u64>) -> Result<(Self, MetricsLog), TrainError> {
        let dir = cfg.run.dir.clone();
        let metrics_path = dir.join("metrics.jsonl");
        let mut file = None;
        if rank0 {
            std::fs::create_dir_all(&dir).map_err(io_err(&dir))?;
            let config = cfg.to_toml();
            replace_file(&dir.join("config.toml"), |tmp| std::fs::write(tmp, &config))?;
            let kept: String = match resumed_step {
                Some(step) => read_if_present(&metrics_path)?
                    .lines()
                    .filter(|l| {
                        serde_json::from_str::<serde_json::Value>(l)
                            .ok()
                            .and_then(|v| v["step"].as_u64())
                            .is_some_and(|s| s <= step)
                    })
                    .map(|l| format!("{l}\n"))
                    .collect(),
                None => String::new(),
            };
            replace_file(&metrics_path, |tmp| std::fs::write(tmp, &kept))?;
            file = Some(std::fs::OpenOptions::new().append(true).open(&metrics_path).map_err(io_err(&metrics_path))?);
        }
        Ok((Self { dir, rank0 }, MetricsLog { file, path: metrics_path }))
    }

    /// The final model and the summary.
    fn finish(&self, vs: &VarStore, summary: &Summary) -> Result<(), TrainError> {
        if !self.rank0 {
            return Ok(());
        }
        let variables: Vec<(String, Tensor)> = vs.variables().into_iter().collect();
        replace_file(&self.dir.join("model.safetensors"), |tmp| checkpoint::write_tensors(tmp, &variables))?;
        let text = serde_json::to_string_pretty(summary).expect("plain data") + "\n";
        replace_file(&self.dir.join("summary.json"), |tmp| std::fs::write(tmp, &text))
    }
}

/// What the steps since the last metrics line (and since the start) measured.
#[derive(Default)]
struct StepTotals {
    /// Sums of the (main, MICN, DIEN auxiliary) losses since the last line, over `logged_steps`.
    loss_sums: [f64; 3],
    logged_steps: u64,
    /// Samples since the last line, and when it was written.
    window_samples: u64,
    step_seconds: f64,
    comm_seconds: f64,
    update_seconds: f64,
    bytes_sent: u64,
    transfers: u64,
}

impl StepTotals {
    fn add(&mut self, stats: &StepStats, seconds: f64, transfers: u64, samples: u64) {
        self.step_seconds += seconds;
        self.transfers += transfers;
        self.comm_seconds += stats.comm_seconds;
        self.update_seconds += stats.update_seconds;
        self.bytes_sent += stats.bytes_sent;
        self.window_samples += samples;
        for (sum, loss) in self.loss_sums.iter_mut().zip([stats.loss_main, stats.loss_micn, stats.loss_dien_aux]) {
            *sum += loss;
        }
        self.logged_steps += 1;
    }

    /// The metrics line of `step` (the mean losses since the last line; `stats`, the last step's,
    /// for the gradient norms), starting a new window.
    fn line(&mut self, cfg: &Config, step: u64, epoch: u64, stats: &StepStats, window_seconds: f64) -> MetricsLine {
        let [loss_main, loss_micn, loss_dien_aux] = self.loss_sums.map(|sum| sum / self.logged_steps.max(1) as f64);
        let mut line = MetricsLine::new(step, epoch);
        line.loss_main = Some(loss_main);
        line.loss_dien_aux = (cfg.model.kind == ModelKind::Dien).then_some(loss_dien_aux);
        if cfg.micn.enabled {
            line.loss_micn = Some(loss_micn);
            line.grad_norm_main_e_aux = Some(stats.grad_norm_main_e_aux);
            line.grad_norm_aux_e_aux = Some(stats.grad_norm_aux_e_aux);
        }
        line.lr = Some(cfg.train.lr);
        line.samples_per_sec = Some(self.window_samples as f64 / window_seconds.max(1e-9));
        (self.loss_sums, self.logged_steps, self.window_samples) = ([0.0; 3], 0, 0);
        line
    }
}

/// Where a run starts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Resume {
    /// From freshly initialised parameters, into a run directory that holds no run yet.
    Fresh,
    /// From freshly initialised parameters, deleting the run already in the run directory.
    Overwrite,
    /// From the newest valid checkpoint under `run.dir/checkpoints` (fresh when there is none).
    Auto,
    /// From this checkpoint directory.
    Path(PathBuf),
}

/// Train as configured from freshly initialised parameters; returns the summary on every rank.
pub fn train(cfg: &Config, comm: &dyn Communicator) -> Result<Summary, TrainError> {
    train_from(cfg, comm, &Resume::Fresh)
}

/// Rank 0 picks the checkpoint to resume from, every rank checks it and learns the same path.
fn resume_point(
    cfg: &Config,
    comm: &dyn Communicator,
    resume: &Resume,
) -> Result<Option<(PathBuf, checkpoint::State)>, TrainError> {
    let root = cfg.run.dir.join("checkpoints");
    let chosen: Result<Option<PathBuf>, TrainError> = match resume {
        _ if comm.rank() != 0 => Ok(None),
        Resume::Fresh | Resume::Overwrite => Ok(None),
        Resume::Path(p) => Ok(Some(p.clone())),
        Resume::Auto => {
            let (found, refused) = checkpoint::latest(&root);
            for e in &refused {
                tracing::warn!("skipping checkpoint: {e}");
            }
            if found.is_none() && !refused.is_empty() {
                let reasons: Vec<String> = refused.iter().map(|e| e.to_string()).collect();
                Err(TrainError::NothingToResume { path: root, refused: format!(": {}", reasons.join("; ")) })
            } else {
                Ok(found.map(|(dir, _)| dir))
            }
        }
    };
    let (chosen, outcome) = match chosen {
        Ok(chosen) => (chosen, Ok(())),
        Err(e) => (None, Err(e)),
    };
    agree_on_rank0(comm, outcome, "choose the checkpoint to resume from")?;
    let text = chosen.as_ref().map(|p| p.display().to_string()).unwrap_or_default();
    let agreed = String::from_utf8(comm.broadcast_vec(0, text.as_bytes())?).unwrap_or_default();
    if agreed.is_empty() {
        return Ok(None);
    }
    let dir = PathBuf::from(agreed);
    let state = checkpoint::verify(&dir)?;
    let saved = Config::from_toml(&state.config, &dir.join("state.json")).map_err(checkpoint::CheckpointError::from)?;
    let keys = checkpoint::incompatible_keys(&saved, cfg);
    if !keys.is_empty() {
        return Err(TrainError::IncompatibleResume { path: dir, keys: keys.join(", ") });
    }
    Ok(Some((dir, state)))
}

/// Keep freed memory in the heap instead of returning it to the kernel: a training step frees and
/// reallocates the same large activation buffers every time, and glibc's defaults (`mmap` for
/// blocks from 128 KiB, trimming the heap top) turn each into fresh zeroed pages, which cost a
/// tenth of a CPU step in page faults (`micn bench dist` shows the difference). Process-wide;
/// the heap then stays at its peak.
pub fn keep_freed_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        static ONCE: std::sync::Once = std::sync::Once::new();
        // SAFETY: mallopt only changes allocator parameters; called once, before training allocates.
        ONCE.call_once(|| unsafe {
            libc::mallopt(libc::M_MMAP_THRESHOLD, 1 << 30);
            libc::mallopt(libc::M_TRIM_THRESHOLD, i32::MAX);
            libc::mallopt(libc::M_TOP_PAD, 256 << 20);
        });
    }
}

/// The files of a run in its directory: a fresh run refuses a directory that holds any of them
/// (`logs/` alone is not a run), `--overwrite` deletes them.
const RUN_FILES: [&str; 5] = ["config.toml", "metrics.jsonl", "summary.json", "model.safetensors", "checkpoints"];

/// Make sure a fresh run replaces nothing by accident: refuse an empty `run.dir` and, unless the
/// run resumes or `--overwrite` was given, a directory that already holds a run. Rank 0 decides;
/// every rank learns the outcome.
fn claim_run_dir(cfg: &Config, comm: &dyn Communicator, resume: &Resume) -> Result<(), TrainError> {
    let dir = &cfg.run.dir;
    if dir.as_os_str().is_empty() {
        return Err(TrainError::NoRunDir);
    }
    let result = if comm.rank() == 0 {
        let present: Vec<&str> = RUN_FILES.into_iter().filter(|f| dir.join(f).exists()).collect();
        match resume {
            Resume::Fresh if !present.is_empty() => {
                Err(TrainError::RunExists { path: dir.clone(), files: present.join(", ") })
            }
            Resume::Overwrite => present.iter().try_for_each(|f| {
                let path = dir.join(f);
                tracing::warn!(path = %path.display(), "--overwrite: deleting");
                if path.is_dir() {
                    std::fs::remove_dir_all(&path).map_err(io_err(&path))
                } else {
                    std::fs::remove_file(&path).map_err(io_err(&path))
                }
            }),
            _ => Ok(()),
        }
    } else {
        Ok(())
    };
    agree_on_rank0(comm, result, "claim the run directory")
}

/// Every rank learns the outcome of what only rank 0 did: rank 0 returns its own error, the
/// others [`TrainError::PeerFailed`], classified alike, so every rank exits with the same status.
fn agree_on_rank0(
    comm: &dyn Communicator,
    result: Result<(), TrainError>,
    what: &'static str,
) -> Result<(), TrainError> {
    let code = match &result {
        Ok(()) => 0u8,
        Err(e) if e.is_input_error() => 3,
        Err(_) => 1,
    };
    let agreed = comm.broadcast_vec(0, &[code])?[0];
    result?;
    match agreed {
        0 => Ok(()),
        code => Err(TrainError::PeerFailed { what, input: code == 3 }),
    }
}

/// The dataset must keep histories at least as long as the model reads.
fn check_history(cfg: &Config, dataset: &Dataset) -> Result<(), TrainError> {
    if cfg.data.max_hist_len <= dataset.meta.max_hist_len {
        return Ok(());
    }
    let remedy = if dataset.meta.source == "dien_files" {
        format!("DIEN's files fix the history length; set data.max_hist_len to {} or less", dataset.meta.max_hist_len)
    } else {
        format!("prepare it again with --max-hist-len {} (or more)", cfg.data.max_hist_len)
    };
    Err(TrainError::HistoryTooShort {
        path: cfg.data.dir.clone(),
        wanted: cfg.data.max_hist_len,
        kept: dataset.meta.max_hist_len,
        remedy,
    })
}

/// Train as configured, starting as `resume` says; returns the summary on every rank.
pub fn train_from(cfg: &Config, comm: &dyn Communicator, resume: &Resume) -> Result<Summary, TrainError> {
    train_until(cfg, comm, resume, &Interrupter::new())
}

/// [`train_from`], stopping after the step during which `interrupter` is set (with a checkpoint,
/// and `stopped_by_signal` in the summary); every rank stops after the same step.
pub fn train_until(
    cfg: &Config,
    comm: &dyn Communicator,
    resume: &Resume,
    interrupter: &Interrupter,
) -> Result<Summary, TrainError> {
    let started = Instant::now();
    keep_freed_memory();
    if cfg.train.threads > 0 {
        tch::set_num_threads(cfg.train.threads as i32);
    }
    let device = pick_device(cfg.device, comm.local_rank())?;
    let local_batch = shard::local_batch(cfg.train.global_batch_size, comm.size())?;
    let dataset = Arc::new(Dataset::open(&cfg.data.dir)?);
    check_history(cfg, &dataset)?;
    let split = validation_split(cfg, &dataset)?;
    let n_train = split.train.len();
    let steps_per_epoch = shard::steps_per_epoch(n_train, cfg.train.global_batch_size, cfg.data.drop_remainder);
    if steps_per_epoch == 0 {
        return Err(TrainError::TooFewSamples {
            path: cfg.data.dir.clone(),
            samples: n_train,
            batch: cfg.train.global_batch_size,
        });
    }
    // Every check that needs no file of the run is made: now the run directory is claimed.
    claim_run_dir(cfg, comm, resume)?;
    let mut replica = Replica::new(build_model(cfg, &dataset, device)?, cfg, comm)?;
    let resumed = resume_point(cfg, comm, resume)?;
    if let Some((dir, state)) = &resumed {
        replica.load_checkpoint(dir, state.step, device)?;
        tracing::info!(checkpoint = %dir.display(), step = state.step, epoch = state.epoch, "resuming");
    }
    let rank0 = comm.rank() == 0;
    let (files, mut metrics) = RunFiles::start(cfg, rank0, resumed.as_ref().map(|(_, state)| state.step))?;
    let total_steps = (steps_per_epoch * cfg.train.epochs as u64).min(cfg.train.max_steps.unwrap_or(u64::MAX));
    tracing::info!(
        world_size = comm.size(),
        local_batch,
        train_samples = n_train,
        valid_samples = split.valid.len(),
        steps_per_epoch,
        total_steps,
        device = ?device,
        model = ?cfg.model.kind,
        micn = cfg.micn.enabled,
        "training"
    );
    let loader_cfg = LoaderConfig::from_config(cfg, comm.size(), comm.rank());
    let train_ids: Arc<[u32]> = split.train.into();
    let scorer = Scorer { dataset: &dataset, comm, device, max_hist_len: cfg.data.max_hist_len };
    let mut validation = Validation {
        ids: split.valid,
        evaluations: resumed.as_ref().map(|(_, state)| state.evaluations.clone()).unwrap_or_default(),
        seconds: 0.0,
    };
    let progress = Progress::new(rank0, total_steps);
    let loop_started = Instant::now();
    let (mut step, start_epoch, start_position) = match &resumed {
        Some((_, state)) => (state.step, state.epoch, state.position),
        None => (0, 0, 0),
    };
    let mut epochs_completed = start_epoch;
    let mut checkpoints = Checkpointing {
        root: cfg.run.dir.join("checkpoints"),
        rank0,
        last: Instant::now(),
        // A resumed run has its checkpoint at the step it starts from already.
        last_step: resumed.as_ref().map(|(_, state)| state.step),
    };
    // (epoch, position in the epoch) of the next step.
    let mut next_point = (start_epoch, start_position);
    let mut stopped_by_signal = false;
    let mut window_started = Instant::now();
    let mut steady = SteadyRate::new(total_steps.saturating_sub(step));
    let resumed_at = step;
    let mut totals = StepTotals::default();
    'epochs: for epoch in start_epoch..cfg.train.epochs as u64 {
        let first_step = if epoch == start_epoch { start_position / cfg.train.global_batch_size as u64 } else { 0 };
        for batch in EpochLoader::over(Arc::clone(&dataset), Arc::clone(&train_ids), &loader_cfg, epoch, first_step) {
            if step >= total_steps {
                break 'epochs;
            }
            let minutes = cfg.checkpoint.every_minutes;
            let first_sample = epoch * steps_per_epoch * cfg.train.global_batch_size as u64 + batch.first_position;
            let ctx = StepContext {
                // Made global by the step's own exchange: a signal on any rank stops every rank
                // after this same step; rank 0's clock decides a time-triggered checkpoint.
                control: Control {
                    stop: interrupter.is_stopped(),
                    checkpoint_due: minutes > 0.0 && checkpoints.last.elapsed().as_secs_f64() >= 60.0 * minutes,
                },
                ..StepContext::new(cfg, comm, device, step, first_sample)
            };
            let step_started = Instant::now();
            let transfers_before = crate::transfer::counts();
            let stats = replica.step(&batch, &ctx)?;
            let samples = cfg.train.global_batch_size as u64;
            let transfers = crate::transfer::counts().since(transfers_before).total();
            totals.add(&stats, step_started.elapsed().as_secs_f64(), transfers, samples);
            steady.step_done(samples);
            step += 1;
            next_point = (epoch, (batch.step + 1) * samples);
            if stats.control.stop {
                stopped_by_signal = true;
                tracing::warn!(step, "stop requested: checkpointing and stopping");
                break 'epochs;
            }
            let every = cfg.train.check_replicas_every_steps;
            if every > 0 && step % every == 0 {
                let digests = comm.all_gather(&[replica.digest()])?.data;
                if digests.iter().any(|d| *d != digests[0]) {
                    return Err(TrainError::ReplicasDiffer { step, digests });
                }
            }
            if step % cfg.train.log_every_steps == 0 || step == total_steps {
                let secs = window_started.elapsed().as_secs_f64().max(1e-9);
                let line = totals.line(cfg, step, epoch, &stats, secs);
                metrics.write(&line)?;
                progress.update(step, line.loss_main.unwrap_or_default(), line.samples_per_sec.unwrap_or_default());
                window_started = Instant::now();
            }
            // A checkpoint records the validation score of its own model: evaluate first.
            let every = cfg.checkpoint.every_steps;
            let checkpoint_due = (every > 0 && step % every == 0) || stats.control.checkpoint_due;
            let every = cfg.train.eval_every_steps;
            if (every > 0 && step % every == 0) || checkpoint_due {
                validation.run(&scorer, &replica.net, (step, epoch), &mut metrics)?;
            }
            if checkpoint_due {
                checkpoints.save(cfg, comm, &replica, (step, next_point.0, next_point.1), &validation)?;
            }
            steady.resume();
        }
        epochs_completed += 1;
        next_point = (epoch + 1, 0);
        validation.run(&scorer, &replica.net, (step, epoch), &mut metrics)?;
        // Every epoch ends with a checkpoint, unless this step has one already (its position, the
        // epoch's end, resumes to the same place).
        if checkpoints.last_step != Some(step) {
            checkpoints.save(cfg, comm, &replica, (step, epoch + 1, 0), &validation)?;
        }
        steady.resume();
    }
    if step > 0 && checkpoints.last_step != Some(step) {
        // The end of the run is a checkpoint too (a later, longer run resumes from it). A stop
        // signal leaves no time for a validation pass: that checkpoint then has no score.
        if !stopped_by_signal {
            validation.run(&scorer, &replica.net, (step, next_point.0), &mut metrics)?;
        }
        let (epoch, position) = next_point;
        checkpoints.save(cfg, comm, &replica, (step, epoch, position), &validation)?;
    }
    progress.finish();
    let loop_seconds = loop_started.elapsed().as_secs_f64();
    // Steps trained by this process (a resumed run's earlier steps took no time here).
    let steps_here = step - resumed_at;
    let samples_per_sec =
        (steps_here * cfg.train.global_batch_size as u64) as f64 / (loop_seconds - validation.seconds).max(1e-9);
    let final_eval = scorer.score(&replica.net, EvalSet::Test)?;
    write_eval(&mut metrics, step, epochs_completed, EvalSet::Test, &final_eval)?;
    // After a stop signal there may be little time left: no other checkpoint is loaded and scored.
    let selected =
        if stopped_by_signal { None } else { select_best(cfg, &scorer, &checkpoints.root, (step, &final_eval))? };
    let seconds = started.elapsed().as_secs_f64();
    let summary = Summary {
        test_auc: final_eval.auc,
        test_gauc: final_eval.gauc,
        test_logloss: final_eval.logloss,
        valid_auc: validation.evaluations.last().filter(|e| e.0 == step).map(|e| e.1),
        selected,
        steps: step,
        epochs_completed,
        samples_per_sec,
        steady_samples_per_sec: steady.rate().unwrap_or(samples_per_sec),
        seconds,
        world_size: comm.size(),
        oracle_auc: dataset.meta.oracle_auc,
        model: format!("{:?}", cfg.model.kind).to_lowercase(),
        micn: cfg.micn.enabled,
        comm_share: totals.comm_seconds / totals.step_seconds.max(1e-12),
        update_share: totals.update_seconds / totals.step_seconds.max(1e-12),
        bytes_sent_per_step: totals.bytes_sent as f64 / steps_here.max(1) as f64,
        transfers_per_step: totals.transfers as f64 / steps_here.max(1) as f64,
        replica_digest: format!("{:016x}", replica.digest()),
        stopped_by_signal,
    };
    files.finish(&replica.vs, &summary)?;
    comm.barrier()?;
    Ok(summary)
}

/// The text of `path`, or nothing when there is no such file (any other error is one).
fn read_if_present(path: &Path) -> Result<String, TrainError> {
    match std::fs::read_to_string(path) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(String::new()),
        read => read.map_err(io_err(path)),
    }
}

/// [`crate::io_error::replace_file`], its error a run's.
fn replace_file(path: &Path, write: impl FnOnce(&Path) -> std::io::Result<()>) -> Result<(), TrainError> {
    Ok(crate::io_error::replace_file(path, write)?)
}

/// Hold out the validation share of the training archive (see [`shard::validation_split`]),
/// drawn from the dataset's own seed so that every run on a dataset validates on the same
/// samples. A share that holds out too little to score is refused.
fn validation_split(cfg: &Config, dataset: &Dataset) -> Result<shard::Split, TrainError> {
    let train = dataset.train.samples();
    let by_user = dataset.meta.protocol == "dien";
    let key = |i: usize| train.user_keys[i].to_native();
    let split = shard::validation_split(train.len(), key, by_user, cfg.data.valid_share, dataset.meta.seed);
    let positives = split.valid.iter().filter(|&&i| train.labels[i as usize] > 0).count();
    if cfg.data.valid_share > 0.0 && (positives == 0 || positives == split.valid.len()) {
        return Err(TrainError::ValidationTooSmall {
            path: cfg.data.dir.clone(),
            share: cfg.data.valid_share,
            samples: split.valid.len(),
        });
    }
    Ok(split)
}

/// What scoring a model on a set of samples needs besides the model: the data, the ranks.
struct Scorer<'a> {
    dataset: &'a Dataset,
    comm: &'a dyn Communicator,
    device: Device,
    max_hist_len: usize,
}

impl Scorer<'_> {
    fn score(&self, net: &Network, set: EvalSet<'_>) -> Result<EvalResult, TrainError> {
        evaluate_on(net, self.dataset, set, self.comm, self.device, self.max_hist_len)
    }
}

/// Mid-run evaluations on the validation split: `metrics.jsonl` gets each one, and every later
/// checkpoint records all of them.
struct Validation {
    ids: Vec<u32>,
    /// Every evaluation so far, carried over a resume.
    evaluations: Vec<checkpoint::Evaluation>,
    seconds: f64,
}

impl Validation {
    /// Score the model after `step` on the validation split, unless there is none or this step
    /// was scored already.
    fn run(
        &mut self,
        scorer: &Scorer<'_>,
        net: &Network,
        (step, epoch): (u64, u64),
        metrics: &mut MetricsLog,
    ) -> Result<(), TrainError> {
        if self.ids.is_empty() || self.evaluations.last().is_some_and(|e| e.0 == step) {
            return Ok(());
        }
        let started = Instant::now();
        let result = scorer.score(net, EvalSet::Valid(&self.ids))?;
        self.seconds += started.elapsed().as_secs_f64();
        write_eval(metrics, step, epoch, EvalSet::Valid(&self.ids), &result)?;
        self.evaluations.push((step, result.auc, result.gauc, result.logloss));
        Ok(())
    }
}

/// The checkpoint with the best validation AUC of its own model (the one retention keeps), and
/// its test metrics: the final model's when it is the final checkpoint, else scored by loading it.
fn select_best(
    cfg: &Config,
    scorer: &Scorer<'_>,
    root: &Path,
    (final_step, final_eval): (u64, &EvalResult),
) -> Result<Option<Selected>, TrainError> {
    let chosen = if scorer.comm.rank() == 0 {
        // The one retention keeps as the best (`checkpoint::policy`).
        let dirs = checkpoint::list(root);
        let own_aucs: Vec<Option<f64>> =
            dirs.iter().map(|dir| checkpoint::verify(dir).ok().and_then(|state| state.own_auc())).collect();
        checkpoint::policy::best(&own_aucs).map(|i| dirs[i].display().to_string()).unwrap_or_default()
    } else {
        String::new()
    };
    let agreed = String::from_utf8(scorer.comm.broadcast_vec(0, chosen.as_bytes())?).unwrap_or_default();
    if agreed.is_empty() {
        return Ok(None);
    }
    let dir = PathBuf::from(agreed);
    let state = checkpoint::verify(&dir)?;
    let valid_auc = state.own_auc().unwrap_or(f64::NAN);
    let test = if state.step == final_step {
        *final_eval
    } else {
        let Built { mut vs, net } = build_model(cfg, scorer.dataset, scorer.device)?;
        let model = dir.join("model.safetensors");
        checkpoint::load_var_store(&mut vs, &model)?;
        scorer.score(&net, EvalSet::Test)?
    };
    Ok(Some(Selected {
        step: state.step,
        checkpoint: dir.display().to_string(),
        valid_auc,
        test_auc: test.auc,
        test_gauc: test.gauc,
        test_logloss: test.logloss,
    }))
}

/// When and where checkpoints go; rank 0 writes, every rank waits for it.
struct Checkpointing {
    root: PathBuf,
    rank0: bool,
    /// When the last checkpoint was written (for `checkpoint.every_minutes`).
    last: Instant,
    /// Step of the last checkpoint written by this run.
    last_step: Option<u64>,
}

impl Checkpointing {
    #[allow(clippy::too_many_arguments)]
    fn save(
        &mut self,
        cfg: &Config,
        comm: &dyn Communicator,
        replica: &Replica,
        (step, epoch, position): (u64, u64, u64),
        validation: &Validation,
    ) -> Result<(), TrainError> {
        let (vs, t, adam) = (&replica.vs, &replica.trainable, &replica.adam);
        let result = if self.rank0 {
            let config = cfg.to_toml();
            let state = checkpoint::State {
                format_version: checkpoint::FORMAT_VERSION,
                step,
                epoch,
                position,
                seed: cfg.train.seed,
                world_size: comm.size(),
                config_hash: checkpoint::config_hash(&config),
                config,
                code_version: env!("CARGO_PKG_VERSION").into(),
                evaluations: validation.evaluations.clone(),
            };
            let saved = checkpoint::save(
                &self.root,
                &state,
                |path| {
                    let variables: Vec<(String, Tensor)> = vs.variables().into_iter().collect();
                    checkpoint::write_tensors(path, &variables).map_err(|e| e.to_string())
                },
                |path| {
                    let named: Vec<(String, Tensor)> =
                        adam.named_state(&t.names).map(|(k, v)| (k, v.to_device(Device::Cpu).contiguous())).collect();
                    checkpoint::write_tensors(path, &named).map_err(|e| e.to_string())
                },
            )
            .and_then(|dir| checkpoint::retain(&self.root, cfg.checkpoint.keep_last).map(|_| dir));
            if let Ok(dir) = &saved {
                tracing::info!(checkpoint = %dir.display(), step, "checkpoint written");
            }
            saved.map(drop)
        } else {
            Ok(())
        };
        self.last = Instant::now();
        self.last_step = Some(step);
        // Everyone learns whether rank 0 succeeded, so a failure stops every rank.
        agree_on_rank0(comm, result.map_err(TrainError::from), "write a checkpoint")
    }
}

/// An evaluation line of `metrics.jsonl`: `valid_*` or `test_*` fields.
fn write_eval(
    metrics: &mut MetricsLog,
    step: u64,
    epoch: u64,
    set: EvalSet<'_>,
    r: &EvalResult,
) -> Result<(), TrainError> {
    let mut line = MetricsLine::new(step, epoch);
    let (auc, gauc, logloss) = match set {
        EvalSet::Test => (&mut line.test_auc, &mut line.test_gauc, &mut line.test_logloss),
        EvalSet::Valid(_) => (&mut line.valid_auc, &mut line.valid_gauc, &mut line.valid_logloss),
    };
    (*auc, *gauc, *logloss) = (Some(r.auc), Some(r.gauc), Some(r.logloss));
    tracing::info!(step, set = set.name(), auc = r.auc, gauc = r.gauc, logloss = r.logloss, "evaluation");
    metrics.write(&line)
}

/// `micn eval`: score the test set (or the validation split) with a saved model — a run directory (`config.toml` and the
/// final `model.safetensors`) or a checkpoint directory (its `state.json` holds the config).
pub fn eval_saved(
    dir: &Path,
    data_dir: Option<&Path>,
    split: Split,
    device: Option<DeviceChoice>,
    comm: &dyn Communicator,
) -> Result<EvalResult, TrainError> {
    let mut cfg = if dir.join("state.json").exists() {
        let state = checkpoint::verify(dir)?;
        Config::from_toml(&state.config, &dir.join("state.json")).map_err(checkpoint::CheckpointError::from)?
    } else {
        let config_path = dir.join("config.toml");
        Config::load(Some(&config_path), &[])
            .map_err(|e| TrainError::RunFile { path: config_path.clone(), message: e.to_string() })?
    };
    let trained_on = cfg.data.dir.clone();
    if let Some(choice) = device {
        cfg.device = choice;
    }
    if let Some(d) = data_dir {
        cfg.data.dir = d.to_path_buf();
    }
    let device = pick_device(cfg.device, comm.local_rank())?;
    let dataset = Dataset::open(&cfg.data.dir)?;
    check_history(&cfg, &dataset)?;
    if cfg.data.dir != trained_on {
        check_same_vocabularies(&trained_on, &cfg.data.dir, &dataset)?;
    }
    let Built { mut vs, net } = build_model(&cfg, &dataset, device)?;
    let model_path = dir.join("model.safetensors");
    checkpoint::load_var_store(&mut vs, &model_path)?;
    let held_out;
    let set = match split {
        Split::Test => EvalSet::Test,
        Split::Valid => {
            held_out = validation_split(&cfg, &dataset)?.valid;
            EvalSet::Valid(&held_out)
        }
    };
    evaluate_on(&net, &dataset, set, comm, device, cfg.data.max_hist_len)
}

/// Which samples `micn eval` scores.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Split {
    /// The test archive.
    Test,
    /// The validation split the run held out of the training archive (`data.valid_share`):
    /// reproduces the scores recorded in checkpoints.
    Valid,
}

/// A model scores another dataset only if its ids mean the same users, items and categories:
/// the vocabularies must equal those of the dataset it was trained on (only its vocabulary files
/// are read, not its archives). When that dataset is gone, only the sizes can be checked (by the
/// model file's table shapes at load).
fn check_same_vocabularies(trained_on: &Path, given: &Path, dataset: &Dataset) -> Result<(), TrainError> {
    let Ok(original) = crate::data::vocab::Vocabularies::read(trained_on) else {
        tracing::warn!(
            trained_on = %trained_on.display(),
            "the model's training vocabularies cannot be read: only vocabulary sizes are checked"
        );
        return Ok(());
    };
    let (a, b) = (&original, &dataset.vocab);
    let differing = [
        ("user", a.users.names != b.users.names, a.users.names.len(), b.users.names.len()),
        ("item", a.items.names != b.items.names, a.items.names.len(), b.items.names.len()),
        ("category", a.cats.names != b.cats.names, a.cats.names.len(), b.cats.names.len()),
        ("item → category", a.item_cat != b.item_cat, a.item_cat.len(), b.item_cat.len()),
    ];
    match differing.iter().find(|d| d.1) {
        None => Ok(()),
        Some((which, _, trained, now)) => Err(TrainError::VocabularyMismatch {
            path: given.to_path_buf(),
            trained_on: trained_on.to_path_buf(),
            detail: format!("its {which} vocabulary ({now} entries) differs from the model's ({trained} entries)"),
        }),
    }
}

/// A progress line on a terminal (rank 0), nothing otherwise (metrics and logs carry progress).
struct Progress {
    on: bool,
    total: u64,
    started: Instant,
}

impl Progress {
    fn new(rank0: bool, total: u64) -> Self {
        Self { on: rank0 && std::io::stderr().is_terminal(), total, started: Instant::now() }
    }

    fn update(&self, step: u64, loss: f64, samples_per_sec: f64) {
        if self.on {
            let done = step as f64 / self.total.max(1) as f64;
            let width = 30;
            let filled = (done * width as f64) as usize;
            // A closed terminal (EIO) must not stop the run: errors are ignored.
            let _ = write!(
                std::io::stderr().lock(),
                "\r[{}{}] {step}/{} loss {loss:.4} {samples_per_sec:.0} samples/s {:.0}s",
                "#".repeat(filled),
                " ".repeat(width - filled),
                self.total,
                self.started.elapsed().as_secs_f64()
            );
        } else {
            tracing::info!(step, total = self.total, loss, samples_per_sec, "progress");
        }
    }

    fn finish(&self) {
        if self.on {
            let _ = writeln!(std::io::stderr().lock());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::SteadyRate;

    #[test]
    fn the_steady_rate_leaves_out_the_warm_up_and_the_pauses_between_steps() {
        assert_eq!([100, 30, 9].map(|n| SteadyRate::new(n).warmup), [5, 3, 0]);
        let mut r = SteadyRate::new(30);
        for _ in 0..3 {
            r.step_done(64);
        }
        assert_eq!((r.samples, r.rate()), (0, None), "the warm-up counts nothing");
        let nap = std::time::Duration::from_millis(20);
        r.resume();
        std::thread::sleep(nap);
        r.step_done(64);
        std::thread::sleep(10 * nap); // a checkpoint, say
        r.resume();
        std::thread::sleep(nap);
        r.step_done(64);
        assert_eq!(r.samples, 128);
        // Two steps of ≥ 20 ms each; the 200 ms pause between them is not counted.
        assert!(r.seconds >= 0.04 && r.seconds < 0.2, "{}", r.seconds);
    }
}
