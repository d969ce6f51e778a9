//! What a run is made of, apart from its loop ([`super::run`]): the errors, the summary, the
//! device, building the network, the [`Replica`] (model, parameters, optimizer; one step), exact
//! evaluation over all ranks, and `micn eval` on a saved model.
use std::borrow::Cow;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use tch::nn::VarStore;
use tch::{Device, Kind, Tensor};

use super::optim::{Adam, AdamConfig};
use super::step::{
    broadcast_from_root, replica_digest, train_step, StepContext, StepError, StepPath, StepStats, Trainable,
};
use crate::checkpoint;
use crate::config::{Config, Device as DeviceChoice};
use crate::data::batch::Batch;
use crate::data::loader::eval_batches;
use crate::data::samples::ArchivedSamples;
use crate::data::{shard, DataError, Dataset};
use crate::dist::{self, Communicator, CommunicatorExt};
use crate::io_error::PathIo;
use crate::model::batch_stats::Mode;
use crate::model::embeddings::{BatchIds, Vocab};
use crate::model::{ItemAttributeIds, NoAttributeTable};
use crate::network::{Network, MAIN_PATH};

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
    /// The dataset at `path` lacks what the model needs (`why` says what).
    #[error("{path}: {why}")]
    NoAttributes { path: PathBuf, why: crate::model::ModelError },
    #[error("{dir}: {samples} training samples and {items} items: too few to place {k} MFN centres")]
    TooFewForCentres { dir: PathBuf, samples: usize, items: i64, k: usize },
    #[error(
        "{dir}: Algorithm 1 diverged: its objective went from {first:.4} to {last} in {steps} steps, or its centres \
         are not finite; nothing was written: lower --lr (now {lr})"
    )]
    CentresDiverged { dir: PathBuf, first: f64, last: f64, steps: usize, lr: f64 },
    #[error(transparent)]
    Io(#[from] PathIo),
    #[error(transparent)]
    Thread(#[from] crate::io_error::NoThread),
    #[error("device = \"cuda\" but libtorch sees no CUDA device on this machine")]
    NoCuda,
    #[error(transparent)]
    Deterministic(#[from] super::deterministic::MissingSymbol),
    #[error(transparent)]
    Checkpoint(#[from] crate::checkpoint::CheckpointError),
    #[error(transparent)]
    LogFile(#[from] crate::logging::LogFileError),
    #[error("{path}: no valid checkpoint to resume from{refused}")]
    NothingToResume { path: PathBuf, refused: String },
    #[error("{path}: the checkpoint was made with another model or data; these keys differ: {keys}")]
    IncompatibleResume { path: PathBuf, keys: String },
    #[error(
        "{path}: the checkpoint is at step {step}, past step {total}, where train.epochs / train.max_steps end the \
         run now: a run is not cut back below its checkpoint (nothing was changed); resume with train.max_steps of \
         at least {step}, or an earlier checkpoint with --resume PATH"
    )]
    ResumedPastTheEnd { path: PathBuf, step: u64, total: u64 },
    /// A run directory's file (configuration, summary, metrics) that cannot be used.
    #[error(transparent)]
    RunDir(#[from] crate::run_dir::RunDirError),
    /// `counted` says which samples count, where not all of the training archive's do.
    #[error("{path}: {samples} training samples{counted}, fewer than one global batch of {batch}")]
    TooFewSamples { path: PathBuf, samples: usize, counted: String, batch: usize },
    #[error(
        "{0}: its training split is empty (as `micn prepare` said): nothing to train on; prepare it from more data \
         (users with more behaviours)"
    )]
    NoTrainingSamples(PathBuf),
    #[error("data.max_hist_len = {wanted}, but {path} keeps histories of at most {kept} items: {remedy}")]
    HistoryTooShort { path: PathBuf, wanted: usize, kept: usize, remedy: String },
    #[error("scoring the {set} set")]
    Scores {
        set: &'static str,
        #[source]
        source: crate::metrics::MetricError,
    },
    #[error("{0}: is a file this command reads (the saved model's or the dataset's): choose another --out")]
    OutputIsInput(PathBuf),
    #[error(
        "{out}: {what}, which only the run writes (and its --overwrite or retention deletes): choose another --out"
    )]
    OutputInRun { out: PathBuf, what: String },
    #[error(
        "{data}: no dataset there (no dataset.json), and {saved} was trained on it (its data.dir{relative}): give the \
         dataset with --data DIR"
    )]
    DatasetGone { saved: PathBuf, data: PathBuf, relative: &'static str },
    /// `micn train` where `data.dir` names no dataset: one not prepared yet, or a relative path
    /// run from another directory.
    #[error("{data}: no dataset there (no dataset.json{export}), and {key} names it{relative}: {remedy}")]
    NoDataset { data: PathBuf, key: &'static str, export: &'static str, relative: &'static str, remedy: String },
    /// A saved model whose scores are NaN: `eval` and `predict` refuse it alike.
    #[error(
        "{path}: the model's scores of the {set} set are not finite ({nan} of {total} are NaN): its parameters hold \
         NaN or infinity (a damaged file, or a run that diverged)"
    )]
    ScoresNotFinite { path: PathBuf, set: &'static str, nan: usize, total: usize },
    #[error("the {set} set has only one class; AUC is undefined")]
    OneClass { set: &'static str },
    #[error(
        "{path}: data.valid_share = {share} holds out {samples} training samples, too few to score (one class or \
         none): raise it, or set it to 0 to validate nothing",
        share = crate::config::Compact(*.share)
    )]
    ValidationTooSmall { path: PathBuf, share: f64, samples: usize },
    #[error(
        "{path}: the test split holds {samples} samples, {positives} of them clicked: the run ends by scoring it, and \
         AUC needs clicked and unclicked samples; prepare the dataset from more users"
    )]
    TestSetUnscorable { path: PathBuf, samples: usize, positives: usize },
    /// A click model learns from clicked and unclicked samples; an archive of one class (a file
    /// of DIEN's whose negatives were left out) teaches it to answer the same for every sample.
    #[error(
        "{path}: the training archive holds {samples} samples, {positives} of them clicked: a click model learns \
         from clicked and unclicked samples, and no validation share can change that; prepare the dataset with its \
         unclicked samples (DIEN's files give both labels), or train MIND for retrieval, which learns from clicks \
         alone (model.kind = \"mind\", model.mind_objective = \"retrieval\", data.valid_share = 0)"
    )]
    TrainingOneClass { path: PathBuf, samples: usize, positives: usize },
    #[error(
        "{path}: {detail}, the vocabulary of {trained_on} that the model was trained on: its ids would mean other \
         users, items or categories"
    )]
    VocabularyMismatch { path: PathBuf, trained_on: PathBuf, detail: String },
    #[error(
        "{path}: its vocabularies are not those {saved} was trained with (their digest, recorded with the model, \
         differs): its ids would mean other users, items or categories; give the dataset it was trained on with \
         --data DIR"
    )]
    VocabulariesChanged { path: PathBuf, saved: PathBuf },
    /// A run's `config.toml` that is not the one the run saved, and the model could not be
    /// built or found from it.
    #[error("{config}: not the configuration the run saved ({how}): edited or damaged; {source}")]
    EditedConfig {
        config: PathBuf,
        how: String,
        #[source]
        source: Box<TrainError>,
    },
    /// What only rank 0 does (claim the run directory, write a checkpoint), or what every rank
    /// does alike (check the dataset), failed on rank `rank`, which reports why. `input`: its
    /// error is one that retrying cannot fix.
    #[error("rank {rank} could not {what}; its error says why")]
    PeerFailed { rank: usize, what: &'static str, input: bool },
    #[error("run.dir is empty: set it to the directory the run should be written to")]
    NoRunDir,
    #[error("run.dir {path}: {what}; give the run a directory of its own")]
    RunDirHoldsOthers { path: PathBuf, what: String },
    #[error(
        "{path}: too long a path for a run directory: the run writes paths of {longest} bytes below it (such as \
         {example}), more than the {max} a path may have; choose a shorter run.dir"
    )]
    RunDirTooLong { path: PathBuf, longest: usize, example: PathBuf, max: usize },
    #[error(
        "{path}: already holds a run ({files}); continue it with --resume auto, or replace it with --overwrite \
         (which deletes those files)"
    )]
    RunExists { path: PathBuf, files: String },
    #[error(
        "{path}: holds a finished run ({files}) but no checkpoint to resume from: replace it with --overwrite \
         (which deletes those files)"
    )]
    NoCheckpointToResume { path: PathBuf, files: String },
    #[error(
        "{path}: none of its checkpoints ({names}) is complete (no COMPLETE marker), so --resume auto neither \
         resumes nor starts the run again over them; check them with `micn checkpoint verify`, or replace the run \
         with --overwrite (which deletes them)"
    )]
    UnfinishedCheckpoints { path: PathBuf, names: String },
    #[error(
        "{path}: already holds another run ({files}); resume from {from} into a run.dir of its own, or remove that \
         run first"
    )]
    ResumeIntoAnotherRun { path: PathBuf, files: String, from: PathBuf },
    #[error(
        "{from}: a checkpoint of a history this run left (set aside under {path}): resumed there it would mix \
         with the run's current checkpoints; resume from it into a run.dir of its own"
    )]
    ResumeFromAbandoned { path: PathBuf, from: PathBuf },
    #[error("after step {step} the replicas differ: digests by rank {digests:x?}")]
    ReplicasDiffer { step: u64, digests: Vec<u64> },
    /// Ranks whose `data.dir` holds other data (a copy on another host prepared with another
    /// seed, or from other files): they would train on other splits, exchange buffers of other
    /// sizes, and hang at the end of the shorter epoch.
    #[error(
        "{dir}: the ranks read different datasets there ({ranks} from rank 0's): every host must hold the same \
         dataset at data.dir (copy rank 0's, or prepare it with the same input files and --seed)"
    )]
    DatasetsDiffer { dir: PathBuf, ranks: String },
    #[error(
        "{dir}: a {kind} model has no interest vectors, which retrieval and `export interests` need (model.kind = \
         \"mind\" has)"
    )]
    NoInterests { dir: PathBuf, kind: &'static str },
    #[error(
        "--retrieval {n}: the model knows {items} items, so a list of {n} would hold every one of them (recall 1 by \
         construction); give N below {items}"
    )]
    RetrievalListTooLong { n: usize, items: usize },
    #[error(
        "{dir}: the run has not finished{} (its model.safetensors and summary.json are written at the end): {remedy}",
        training.as_ref().map(|holder| format!(": it is training now ({holder})")).unwrap_or_default()
    )]
    Unfinished { dir: PathBuf, remedy: String, training: Option<String> },
    #[error(
        "the run holds out no validation samples (data.valid_share = {share}): give --split test or --split train"
    )]
    NoValidationSplit { share: f64 },
}

impl TrainError {
    /// Whether the same command would fail the same way again (a dataset, checkpoint or device
    /// that does not fit the configuration), as opposed to a crash or an I/O failure.
    pub fn is_input_error(&self) -> bool {
        match self {
            Self::PeerFailed { input, .. } => return *input,
            Self::EditedConfig { source, .. } => return source.is_input_error(),
            Self::Data(e) => return e.is_input_error(),
            Self::Checkpoint(e) => return e.is_input_error(),
            Self::Io(e) => return e.is_lasting(),
            Self::LogFile(e) => return crate::io_error::is_lasting(&e.source),
            Self::RunDir(e) => return e.is_input_error(),
            Self::Step(StepError::NonFinite { .. } | StepError::Diverged { .. }) => return true,
            _ => {}
        }
        matches!(
            self,
            Self::Batch(_)
                | Self::Model(_)
                | Self::NoCuda
                | Self::Deterministic(_)
                | Self::NothingToResume { .. }
                | Self::IncompatibleResume { .. }
                | Self::ResumedPastTheEnd { .. }
                | Self::NoRunDir
                | Self::RunDirHoldsOthers { .. }
                | Self::RunDirTooLong { .. }
                | Self::RunExists { .. }
                | Self::DatasetsDiffer { .. }
                | Self::NoCheckpointToResume { .. }
                | Self::UnfinishedCheckpoints { .. }
                | Self::ResumeIntoAnotherRun { .. }
                | Self::ResumeFromAbandoned { .. }
                | Self::VocabularyMismatch { .. }
                | Self::VocabulariesChanged { .. }
                | Self::TooFewSamples { .. }
                | Self::NoTrainingSamples(_)
                | Self::HistoryTooShort { .. }
                | Self::OneClass { .. }
                | Self::ValidationTooSmall { .. }
                | Self::TestSetUnscorable { .. }
                | Self::TrainingOneClass { .. }
                | Self::Scores { .. }
                | Self::ScoresNotFinite { .. }
                | Self::OutputIsInput(_)
                | Self::OutputInRun { .. }
                | Self::DatasetGone { .. }
                | Self::NoDataset { .. }
                | Self::NoInterests { .. }
                | Self::RetrievalListTooLong { .. }
                | Self::NoValidationSplit { .. }
                | Self::Unfinished { training: None, .. }
                | Self::NoAttributes { .. }
                | Self::TooFewForCentres { .. }
                | Self::CentresDiverged { .. }
        )
    }
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
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Summary {
    /// Test metrics of the final model (an undefined one, NaN, is `null` in JSON).
    #[serde(deserialize_with = "nan_if_null")]
    pub test_auc: f64,
    #[serde(deserialize_with = "nan_if_null")]
    pub test_gauc: f64,
    #[serde(deserialize_with = "nan_if_null")]
    pub test_logloss: f64,
    /// Validation AUC of the final model (none without a validation split, or after a stop).
    pub valid_auc: Option<f64>,
    /// The checkpoint with the best validation AUC and its test metrics: the model an honest
    /// report quotes (none without a validation split).
    pub selected: Option<Selected>,
    pub steps: u64,
    pub epochs_completed: u64,
    /// Training samples per second of this process's training loop (evaluations excluded; a
    /// resumed run: the steps since `resumed_from_step`). This and the other figures of this
    /// process's steps are NaN (`null`) when it trained none (resumed where the run ends).
    #[serde(deserialize_with = "nan_if_null")]
    pub samples_per_sec: f64,
    /// Training samples per second after a warm-up of up to 5 steps, checkpoints and evaluations
    /// excluded (see [`SteadyRate`]); `samples_per_sec` when the run is too short for a warm-up.
    #[serde(deserialize_with = "nan_if_null")]
    pub steady_samples_per_sec: f64,
    /// Wall-clock seconds of the run: this process's and, for a resumed run, those the earlier
    /// processes had taken up to the checkpoint it resumed from (work lost after that checkpoint
    /// is not counted).
    pub seconds: f64,
    /// The checkpoint's step this process resumed from; none when it trained from the start.
    /// The throughput figures cover this process's steps only.
    pub resumed_from_step: Option<u64>,
    pub world_size: usize,
    pub oracle_auc: Option<f64>,
    pub model: String,
    pub micn: bool,
    /// [`crate::checkpoint::config_hash`] of the run's `config.toml` as this process wrote it
    /// (absent from older summaries): a configuration edited since is told from the one trained.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub config_hash: Option<String>,
    /// The checksum of `model.safetensors` as written (xxh3-64, 16 hex digits, as a checkpoint's
    /// manifest records its files; rank 0's summary alone holds it, absent from older summaries):
    /// `eval`, `predict` and the exports refuse a model file that differs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model_xxh3: Option<String>,
    /// Share of the training steps' wall-clock time spent in the gradient exchange (see
    /// [`crate::train::step::StepStats::comm_seconds`]).
    #[serde(deserialize_with = "nan_if_null")]
    pub comm_share: f64,
    /// Share of the training steps' wall-clock time spent in the optimizer update (`null` on a
    /// GPU, which runs the update after the host has queued it: timing it would take a
    /// synchronisation every step).
    #[serde(deserialize_with = "nan_if_null")]
    pub update_share: f64,
    /// Mean bytes one rank sent per step in the gradient exchange.
    #[serde(deserialize_with = "nan_if_null")]
    pub bytes_sent_per_step: f64,
    /// Mean host↔device transfers (uploads and downloads, see [`crate::transfer`]) of rank 0's
    /// training steps in this process.
    #[serde(deserialize_with = "nan_if_null")]
    pub transfers_per_step: f64,
    /// Digest of the final parameters, buffers and optimizer state (see `replica_digest`).
    pub replica_digest: String,
    /// The run was stopped by a signal (after checkpointing) before its last step.
    pub stopped_by_signal: bool,
    /// The run stopped because its validation AUC stopped improving (`train.early_stop_patience`).
    pub early_stopped: bool,
    /// The step whose parameters `model.safetensors` holds: the last one, or with
    /// `train.restore_best` the selected checkpoint's.
    pub model_step: u64,
    /// The digest of the vocabularies the model was trained with ([`crate::data::vocab::Vocabularies::digest`]):
    /// `eval` and `predict` refuse a dataset whose ids mean other users, items or categories
    /// (absent from runs written before it was kept).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vocabularies: Option<String>,
}

/// The model selected by validation AUC among the run's checkpoints.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Selected {
    pub step: u64,
    pub checkpoint: String,
    pub valid_auc: f64,
    #[serde(deserialize_with = "nan_if_null")]
    pub test_auc: f64,
    #[serde(deserialize_with = "nan_if_null")]
    pub test_gauc: f64,
    #[serde(deserialize_with = "nan_if_null")]
    pub test_logloss: f64,
}

/// A metric that JSON holds as `null` where it is undefined (serde_json writes NaN so: a GAUC
/// with no user of both classes), read back as NaN.
fn nan_if_null<'de, D: serde::Deserializer<'de>>(d: D) -> Result<f64, D::Error> {
    Ok(Option::<f64>::deserialize(d)?.unwrap_or(f64::NAN))
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
    let attributes = (dataset.attributes.as_ref())
        .filter(|_| cfg.model.kind.reads_attributes())
        .map(|a| ItemAttributeIds::from_rows(&a.table, a.k(), a.names.len()));
    // A table whose every column is empty (meta lines without brand, category or price) gives a
    // model that needs attributes nothing to read either.
    let lacking = match &attributes {
        None => Some(NoAttributeTable::Missing),
        Some(ids) if ids.columns() == 0 => Some(NoAttributeTable::Empty),
        Some(_) => None,
    };
    if let Some(has) = lacking.filter(|_| cfg.model.kind.needs_attributes()) {
        let why = crate::model::ModelError::NoAttributes { model: cfg.model.kind.name(), has };
        return Err(TrainError::NoAttributes { path: dataset.dir.clone(), why });
    }
    build_network(cfg, vocab_of(dataset), &dataset.vocab.item_cat, attributes.as_ref(), device)
}

/// Build the network of the saved model whose file is `model`, for `dataset`: as [`build_model`],
/// but with the item-attribute table the file carries (the one it was trained with, whatever
/// table the dataset holds now: prepared again with other attributes, or another dataset of the
/// same vocabularies), so that the file loads into it and scores as it was trained.
pub fn build_saved_model(cfg: &Config, dataset: &Dataset, model: &Path, device: Device) -> Result<Built, TrainError> {
    use crate::model::item_attributes::{ATTRIBUTE_TABLE, ITEM_ATTRIBUTES};
    if !cfg.model.kind.reads_attributes() {
        return build_model(cfg, dataset, device);
    }
    let (ids, table) = (format!("{MAIN_PATH}.{ITEM_ATTRIBUTES}"), format!("{MAIN_PATH}.{ATTRIBUTE_TABLE}"));
    let stored = checkpoint::read_tensors_where(model, |name| name == ids || name == table)?;
    let attributes = match (stored.get(&ids), stored.get(&table)) {
        (Some(ids), Some(table)) => ItemAttributeIds { table: ids.to_kind(Kind::Int64), values: table.size()[0] },
        // A model that needs them and has none: the load names what its file lacks.
        _ if cfg.model.kind.needs_attributes() => return build_model(cfg, dataset, device),
        // MFN trained without them.
        _ => return build_network(cfg, vocab_of(dataset), &dataset.vocab.item_cat, None, device),
    };
    build_network(cfg, vocab_of(dataset), &dataset.vocab.item_cat, Some(&attributes), device)
}

/// The sizes of `dataset`'s vocabularies.
fn vocab_of(dataset: &Dataset) -> Vocab {
    Vocab {
        users: dataset.vocab.users.len() as i64,
        items: dataset.vocab.items.len() as i64,
        cats: dataset.vocab.cats.len() as i64,
    }
}

/// Build the network for vocabularies of the given sizes (`item_cat`: category of every item,
/// `attributes`: every item's attribute ids, for the models that read them).
pub fn build_network(
    cfg: &Config,
    vocab: Vocab,
    item_cat: &[u32],
    attributes: Option<&ItemAttributeIds>,
    device: Device,
) -> Result<Built, TrainError> {
    // libtorch's generator is global: hold it for the whole construction, so that models built
    // at the same time on other threads (thread ranks, tests) cannot interleave their draws.
    static INIT: std::sync::Mutex<()> = std::sync::Mutex::new(());
    let _guard = INIT.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
    tch::manual_seed(cfg.train.seed as i64);
    let vs = VarStore::new(device);
    let item_cats = Tensor::from_slice(&item_cat.iter().map(|&c| c as i64).collect::<Vec<_>>());
    let net = Network::new(&vs.root(), &cfg.model, &cfg.micn, &vocab, &item_cats, attributes)?;
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
        if !self.net.main.attribute_ids_agree() {
            // A checkpoint from before datasets were fingerprinted, of a dataset prepared again.
            let keys = "data.dir (its item-attribute table is not the one the checkpoint holds)".to_string();
            return Err(TrainError::IncompatibleResume { path: dir.to_path_buf(), keys });
        }
        let opt_path = dir.join("optimizer.safetensors");
        let saved = checkpoint::load_tensors_like(&opt_path, self.adam.named_state(&self.trainable.names))?;
        self.adam
            .load_state(&self.trainable.names, step, |k| saved.get(k).map(|t| t.to_device(device)))
            .map_err(|e| checkpoint::CheckpointError::Invalid { path: opt_path.clone(), message: e.to_string() })?;
        Ok(())
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
    /// These samples of the training archive: the training split (what a run trained on).
    Train(&'a [u32]),
}

impl<'a> EvalSet<'a> {
    pub(super) fn name(&self) -> &'static str {
        match self {
            Self::Test => "test",
            Self::Valid(_) => "validation",
            Self::Train(_) => "training",
        }
    }

    /// The archive the set reads and its archive indices (every one, for the test set).
    pub(super) fn samples<'d>(&self, dataset: &'d Dataset) -> (&'d ArchivedSamples, Cow<'a, [u32]>) {
        match *self {
            Self::Test => (dataset.test.samples(), Cow::Owned((0..dataset.test.samples().len() as u32).collect())),
            Self::Valid(ids) | Self::Train(ids) => (dataset.train.samples(), Cow::Borrowed(ids)),
        }
    }
}

/// The model's score of every sample of a set, over all ranks, in archive order.
#[derive(Debug, Clone, Default)]
pub struct Scores {
    /// Archive index of every sample (of the test archive, or of the training archive).
    pub ids: Vec<u32>,
    /// Click probability.
    pub probs: Vec<f32>,
    pub labels: Vec<u8>,
    /// The per-user key GAUC groups by.
    pub user_keys: Vec<u32>,
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
    let s = score(net, dataset, set, comm, device, max_hist_len)?;
    let m = crate::metrics::test_metrics(&s.user_keys, &s.probs, &s.labels).map_err(|e| match e {
        crate::metrics::MetricError::OneClass { .. } => TrainError::OneClass { set: set.name() },
        source => TrainError::Scores { set: set.name(), source },
    })?;
    Ok(EvalResult { auc: m.auc, gauc: m.gauc, logloss: m.logloss, samples: s.probs.len() as u64 })
}

/// The model's logit of every sample of `batch`, as evaluation computes it (no batch statistics
/// updated, no gradient).
pub(super) fn eval_logits(net: &Network, batch: &crate::data::batch::Batch, device: Device) -> tch::Tensor {
    tch::no_grad(|| {
        let embedded = net.embeddings.forward(&BatchIds::from_batch(batch, device));
        net.main.forward(&embedded.main, Mode::Eval).logit
    })
}

/// Score this rank's block of `set` and gather every rank's scores, in archive order (the same
/// sequence whatever the world size), on every rank.
pub fn score(
    net: &Network,
    dataset: &Dataset,
    set: EvalSet<'_>,
    comm: &dyn Communicator,
    device: Device,
    max_hist_len: usize,
) -> Result<Scores, TrainError> {
    let (samples, set_ids) = set.samples(dataset);
    let mut local = Scores::default();
    let mut labels = Vec::<f32>::new();
    // Shown by rank 0 when scoring takes a while (millions of samples), its share for all.
    let mut meter = (comm.rank() == 0).then(|| crate::progress::ScoreMeter::new(set.name(), set_ids.len() as u64));
    for batch in eval_batches(samples, &set_ids, comm.rank(), comm.size(), 1024, max_hist_len) {
        if let Some(meter) = &mut meter {
            meter.update(((local.probs.len() * comm.size()) as u64).min(set_ids.len() as u64));
        }
        local.probs.extend(crate::transfer::download_f32(&eval_logits(net, &batch, device).sigmoid()));
        local.ids.extend(&batch.sample_ids);
        local.user_keys.extend(&batch.user_keys);
        labels.extend(&batch.labels);
    }
    drop(meter);
    let ids = comm.all_gather(&local.ids)?.data;
    let mut order: Vec<usize> = (0..ids.len()).collect();
    order.sort_by_key(|&k| ids[k]);
    let probs = comm.all_gather(&local.probs)?.data;
    let labels = comm.all_gather(&labels)?.data;
    let keys = comm.all_gather(&local.user_keys)?.data;
    Ok(Scores {
        ids: order.iter().map(|&k| ids[k]).collect(),
        probs: order.iter().map(|&k| probs[k]).collect(),
        labels: order.iter().map(|&k| labels[k] as u8).collect(),
        user_keys: order.iter().map(|&k| keys[k]).collect(),
    })
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

/// The dataset must keep histories at least as long as the model reads.
pub(super) fn check_history(cfg: &Config, dataset: &Dataset) -> Result<(), TrainError> {
    if cfg.data.max_hist_len <= dataset.meta.max_hist_len {
        return Ok(());
    }
    let remedy = if dataset.meta.max_hist_len == 0 {
        "every history in it is empty, so there is nothing to learn from behaviours".to_string()
    } else if dataset.meta.source == "dien_files" {
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

/// The run ends by scoring the test split: one without clicked or without unclicked samples (a
/// dataset of very few users) is refused before the first step, not after the last.
pub(super) fn check_test_set(cfg: &Config, dataset: &Dataset) -> Result<(), TrainError> {
    match one_class(dataset.test.samples()) {
        Some((samples, positives)) => {
            Err(TrainError::TestSetUnscorable { path: cfg.data.dir.clone(), samples, positives })
        }
        None => Ok(()),
    }
}

/// `(samples, clicked ones)` of `samples` when they are all of one class (none of one, or none).
fn one_class(samples: &crate::data::samples::ArchivedSamples) -> Option<(usize, usize)> {
    let clicked = samples.labels.iter().filter(|&&l| l > 0).count();
    (clicked == 0 || clicked == samples.len()).then_some((samples.len(), clicked))
}

/// A click model's training archive holds clicked and unclicked samples (MIND trained for
/// retrieval learns from the clicked ones alone). Checked by `train` only: a saved model still
/// scores such data.
pub(super) fn check_training_classes(cfg: &Config, dataset: &Dataset) -> Result<(), TrainError> {
    match one_class(dataset.train.samples()) {
        // An empty archive is `validation_split`'s to name.
        Some((samples, positives)) if samples > 0 && !cfg.model.learns_from_clicks_only() => {
            Err(TrainError::TrainingOneClass { path: cfg.data.dir.clone(), samples, positives })
        }
        _ => Ok(()),
    }
}

/// Hold out the validation share of the training archive (see [`shard::validation_split`]),
/// drawn from the dataset's own seed so that every run on a dataset validates on the same
/// samples. A share that holds out too little to score is refused.
pub(super) fn validation_split(cfg: &Config, dataset: &Dataset) -> Result<shard::Split, TrainError> {
    let train = dataset.train.samples();
    if train.is_empty() {
        return Err(TrainError::NoTrainingSamples(cfg.data.dir.clone()));
    }
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_summary_with_an_undefined_metric_reads_back_as_written() {
        // serde_json writes NaN as `null`; a finished run whose GAUC is undefined must still be
        // read as finished (else `--resume auto` would train its end again).
        let text = r#"{"test_auc": 0.7, "test_gauc": null, "test_logloss": 0.6, "valid_auc": null,
            "selected": {"step": 4, "checkpoint": "c", "valid_auc": 0.7, "test_auc": 0.7, "test_gauc": null,
            "test_logloss": 0.6}, "steps": 4, "epochs_completed": 0, "samples_per_sec": 1.0,
            "steady_samples_per_sec": 1.0, "seconds": 1.0, "resumed_from_step": null, "world_size": 1,
            "oracle_auc": null, "model": "din", "micn": false, "comm_share": 0.0, "update_share": 0.0,
            "bytes_sent_per_step": 0.0, "transfers_per_step": 0.0, "replica_digest": "0", "stopped_by_signal": false,
            "early_stopped": false, "model_step": 4}"#;
        let s: Summary = serde_json::from_str(text).unwrap();
        assert!(s.test_gauc.is_nan() && s.selected.unwrap().test_gauc.is_nan() && s.test_auc == 0.7);
        assert!(serde_json::to_string(&Summary { test_gauc: f64::NAN, ..serde_json::from_str(text).unwrap() })
            .unwrap()
            .contains("\"test_gauc\":null"));
    }
}
