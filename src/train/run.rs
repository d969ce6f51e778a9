//! A training run: the run directory claimed (a fresh run never replaces one), the checkpoint to
//! resume from agreed, epochs of steps from the prefetching loader, after each step the triggers
//! (replica check, metrics line, evaluation on the validation split, checkpoint), the test set
//! scored once at the end, the checkpoint selected by validation AUC, and the final model and
//! summary written through [`RunDir`] by rank 0. [`Run`] holds the state between those phases;
//! [`train_until`] drives it.
//!
//! Every rank makes the same collective calls in the same order: those of each step and
//! evaluation; the broadcasts by which every rank learns the outcome of what only rank 0 does
//! (claiming the directory, choosing the checkpoint to resume from, writing a checkpoint,
//! selecting the best one); the start's broadcast of rank 0's parameters; the replica check every
//! `train.check_replicas_every_steps`; and the final barrier. A rank-0 failure writing
//! `metrics.jsonl` or the summary stops the job through `main`'s abort.
use std::io::IsTerminal as _;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::Serialize;
use tch::{Device, Tensor};

use super::deterministic;
use super::schedule::Schedule;
use super::step::{read_unread, Control, StepContext, StepError, StepStats, Unread};
use super::trainer::{
    build_model, check_history, check_test_set, check_training_classes, eval_logits, evaluate_on, keep_freed_memory,
    pick_device, validation_split, Built, EvalResult, EvalSet, Replica, Selected, Summary, TrainError,
};
use super::Interrupter;
use crate::checkpoint::{self, LossWindow};
use crate::config::{Config, ModelKind};
use crate::data::batch::Batch;
use crate::data::loader::{EpochLoader, LoaderConfig};
use crate::data::{shard, Dataset};
use crate::dist::watchdog::{self, Watched};
use crate::dist::{Communicator, CommunicatorExt};
use crate::network::Network;
use crate::progress::{bar, clock, remaining_seconds, TerminalLine};
use crate::run_dir::{MetricsLog, RunDir, RunLock};

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

    /// Time spent waiting for steps that had returned before the device finished them (reading
    /// their losses): theirs, though spent after them.
    fn waited(&mut self, seconds: f64) {
        if self.steps > self.warmup {
            self.seconds += seconds;
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
    loss_model_aux: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    grad_norm_main_e_aux: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    grad_norm_aux_e_aux: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    lr: Option<f64>,
    /// Global gradient norm before clipping (with `train.clip_grad_norm`).
    #[serde(skip_serializing_if = "Option::is_none")]
    grad_norm: Option<f64>,
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
            loss_model_aux: None,
            grad_norm_main_e_aux: None,
            grad_norm_aux_e_aux: None,
            lr: None,
            grad_norm: None,
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

/// What the steps since the last metrics line (and since the start) measured.
#[derive(Default)]
struct StepTotals {
    /// Sums of the (main, MICN, DIEN auxiliary) losses since the last line, over `logged_steps`.
    loss_sums: [f64; 3],
    logged_steps: u64,
    /// The gradient norms of the last step read.
    last_read: StepStats,
    /// Whether `last_read` holds them: a step was read, or the checkpoint resumed from kept them.
    norms_known: bool,
    /// Steps whose losses are still on the device, in order.
    unread: Vec<Unread>,
    /// Samples since the last line, and when it was written.
    window_samples: u64,
    step_seconds: f64,
    comm_seconds: f64,
    update_seconds: f64,
    bytes_sent: u64,
    transfers: u64,
}

/// The most steps whose losses stay unread on the device: a run that logs rarely still reads
/// them (and finds a non-finite loss) within this many steps.
const MAX_UNREAD_STEPS: usize = 1024;

impl StepTotals {
    /// Totals that go on from the loss window a checkpoint kept (none: from nothing).
    fn resumed(window: Option<LossWindow>) -> Self {
        let LossWindow { sums, steps, grad_norms } = window.unwrap_or_default();
        let mut totals = Self { loss_sums: sums, logged_steps: steps, ..Self::default() };
        if let Some([main_e_aux, aux_e_aux, global]) = grad_norms {
            let last = &mut totals.last_read;
            (last.grad_norm_main_e_aux, last.grad_norm_aux_e_aux, last.grad_norm) = (main_e_aux, aux_e_aux, global);
            totals.norms_known = true;
        }
        totals
    }

    fn add(&mut self, stats: StepStats, seconds: f64, transfers: u64, samples: u64) -> Result<(), TrainError> {
        self.step_seconds += seconds;
        self.transfers += transfers;
        self.comm_seconds += stats.comm_seconds;
        self.update_seconds += stats.update_seconds;
        self.bytes_sent += stats.bytes_sent;
        self.window_samples += samples;
        match stats.unread {
            Some(unread) => {
                self.unread.push(unread);
                if self.unread.len() >= MAX_UNREAD_STEPS {
                    return self.read().map(drop);
                }
            }
            None => self.add_losses(stats),
        }
        Ok(())
    }

    fn add_losses(&mut self, stats: StepStats) {
        for (sum, loss) in self.loss_sums.iter_mut().zip([stats.loss_main, stats.loss_micn, stats.loss_model_aux]) {
            *sum += loss;
        }
        self.logged_steps += 1;
        self.last_read = stats;
        self.norms_known = true;
    }

    /// The losses the device still holds, in one download (counted as the steps' transfers); a
    /// non-finite one is an error naming its step.
    /// Returns the seconds it waited (for the device to finish those steps, on a GPU), which
    /// count as the steps' time.
    fn read(&mut self) -> Result<f64, TrainError> {
        let (before, started) = (crate::transfer::counts(), Instant::now());
        let read = read_unread(&std::mem::take(&mut self.unread))?;
        let waited = started.elapsed().as_secs_f64();
        self.step_seconds += waited;
        self.transfers += crate::transfer::counts().since(before).total();
        read.into_iter().for_each(|stats| self.add_losses(stats));
        Ok(waited)
    }

    /// The metrics line of `step` (the mean losses since the last line; the last step's gradient
    /// norms), starting a new window. Every step's losses must have been read.
    fn line(&mut self, cfg: &Config, (step, epoch): (u64, u64), lr: f64, window_seconds: f64) -> MetricsLine {
        debug_assert!(self.unread.is_empty(), "a metrics line of unread losses");
        let [loss_main, loss_micn, loss_model_aux] = self.loss_sums.map(|sum| sum / self.logged_steps.max(1) as f64);
        let stats = &self.last_read;
        let mut line = MetricsLine::new(step, epoch);
        line.loss_main = Some(loss_main);
        line.loss_model_aux = matches!(cfg.model.kind, ModelKind::Dien | ModelKind::Camn).then_some(loss_model_aux);
        if cfg.micn.enabled {
            line.loss_micn = Some(loss_micn);
            line.grad_norm_main_e_aux = Some(stats.grad_norm_main_e_aux);
            line.grad_norm_aux_e_aux = Some(stats.grad_norm_aux_e_aux);
        }
        line.lr = Some(lr);
        line.grad_norm = (cfg.train.clip_grad_norm > 0.0).then_some(stats.grad_norm);
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

/// Where a run starts.
enum StartPoint {
    /// From freshly initialised parameters.
    Fresh,
    /// From a checkpoint: its directory and state.
    Checkpoint(PathBuf, checkpoint::State),
    /// Nowhere: the run ended at the checkpoint it would resume from and nothing is left to
    /// train (a requeued job that had finished); its summary, as written, and nothing rewritten;
    /// and the configuration the checkpoint was trained with.
    Finished(Summary, Box<Config>),
}

/// Rank 0 picks the checkpoint to resume from, every rank checks it and learns the same path.
/// A resume within the run directory sets aside what belongs to the history it leaves or to
/// the run's earlier end ([`RunDir::set_aside_after`]), unless that end is where it resumes
/// and `total_steps` leave nothing to train.
fn resume_point(
    cfg: &Config,
    comm: &dyn Communicator,
    resume: &Resume,
    dataset: &Dataset,
    total_steps: u64,
) -> Result<StartPoint, TrainError> {
    let root = cfg.run.dir.join("checkpoints");
    let chosen: Result<Option<PathBuf>, TrainError> = match resume {
        _ if comm.rank() != 0 => Ok(None),
        Resume::Fresh | Resume::Overwrite => Ok(None),
        Resume::Path(p) => Ok(Some(p.clone())),
        Resume::Auto => {
            let (found, mut refused) = checkpoint::latest(&root);
            // A checkpoint unread for a passing reason (too little memory, a failing read) is not
            // given up for an older one, which retention would then take for the newer history:
            // the same command may read it (`--resume PATH` names an older one).
            let passing = refused.iter().position(|e| !e.is_input_error());
            if passing.is_none() {
                refused.iter().for_each(|e| tracing::warn!("skipping checkpoint: {e}"));
            }
            if let Some(i) = passing {
                Err(refused.swap_remove(i).into())
            } else if found.is_none() && !refused.is_empty() {
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
        return Ok(StartPoint::Fresh);
    }
    let dir = PathBuf::from(agreed);
    let (state, saved) = agree_all(comm, resumable(&dir, cfg, dataset), "resume from the checkpoint")?;
    // Settings a resume may change (the learning rate, the schedule): said, since config.toml
    // will hold only the new ones (each checkpoint keeps the settings it was made with). A longer
    // or shorter run is what resuming is for.
    let mut changed = crate::config::diff(&saved.to_table(), &cfg.to_table());
    changed.retain(|k| !["run.dir", "data.dir", "train.max_steps", "train.epochs"].contains(&k.as_str()));
    if comm.rank() == 0 && !changed.is_empty() {
        tracing::warn!("resuming with settings other than the checkpoint's: {}", changed.join(", "));
    }
    let run_dir = RunDir::new(&cfg.run.dir);
    // An early stop ends a run as its last step does, unless the patience was raised (or the
    // early stop turned off) to train on.
    let patience = (saved.train.early_stop_patience, cfg.train.early_stop_patience);
    let stops_early_again = patience.1 > 0 && patience.1 <= patience.0;
    if let Some(summary) = ended_at(comm, &run_dir, state.step)? {
        if state.step >= total_steps || (summary.early_stopped && stops_early_again) {
            return Ok(StartPoint::Finished(summary, Box::new(saved)));
        }
    }
    // Trained past where the run now ends (a `--set train.max_steps` below a stop's step): its
    // checkpoint, rewritten with that configuration, would contradict it; nothing is changed.
    let ends_before = if state.step > total_steps {
        Err(TrainError::ResumedPastTheEnd { path: dir.clone(), step: state.step, total: total_steps })
    } else {
        Ok(())
    };
    agree_all(comm, ends_before, "compare the checkpoint with the run's end")?;
    // Later checkpoints of this run directory belong to the history this resume leaves, and the
    // summary and model of an earlier end no longer describe the run (were this attempt to die,
    // they would pass for its result).
    // And a kill between a checkpoint and the retention that follows it left checkpoints that
    // retention removes now, so that the same ones are kept as in a run never killed.
    let set_aside = match comm.rank() == 0 && within(&dir, &run_dir.checkpoints()) {
        true => run_dir.set_aside_after(state.step).map_err(TrainError::from).and_then(|moved| {
            checkpoint::retain(&run_dir.checkpoints(), cfg.checkpoint.keep_last, state.step)?;
            Ok(moved)
        }),
        false => Ok(None),
    };
    if let Ok(Some((names, to))) = &set_aside {
        tracing::warn!(
            "resuming from step {}: moved {} to {} (later checkpoints belong to the history this run leaves; an \
             earlier end's summary and model no longer describe the run)",
            state.step,
            names.join(", "),
            to.display()
        );
    }
    agree_on_rank0(comm, set_aside.map(drop), "set aside the run's history after the checkpoint")?;
    Ok(StartPoint::Checkpoint(dir, state))
}

/// Every rank reads the dataset rank 0 does (its files' sizes and checksums, its seed): ranks on
/// hosts of their own each open their own copy at `data.dir`.
pub(crate) fn same_dataset(comm: &dyn Communicator, dataset: &Dataset) -> Result<(), TrainError> {
    if comm.size() == 1 {
        return Ok(());
    }
    let gathered = comm.all_gather_bytes(dataset.meta.fingerprint().as_bytes())?;
    let parts: Vec<&[u8]> = gathered.parts().collect();
    let differ: Vec<String> = (1..parts.len()).filter(|&r| parts[r] != parts[0]).map(|r| r.to_string()).collect();
    match differ.as_slice() {
        [] => Ok(()),
        ranks => Err(TrainError::DatasetsDiffer {
            dir: dataset.dir.clone(),
            ranks: format!("rank{} {}", if ranks.len() > 1 { "s" } else { "" }, ranks.join(", ")),
        }),
    }
}

/// The checkpoint `dir`, verified, and the configuration it was trained with, when the run
/// configured as `cfg` on `dataset` may resume from it.
fn resumable(dir: &Path, cfg: &Config, dataset: &Dataset) -> Result<(checkpoint::State, Config), TrainError> {
    let state = checkpoint::verify(dir)?;
    let saved = Config::from_toml(&state.config, &dir.join("state.json")).map_err(checkpoint::CheckpointError::from)?;
    let mut keys = checkpoint::incompatible_keys(&saved, cfg);
    // The same dataset wherever data.dir now names it (`data` or `./data`, moved, copied); not
    // a dataset prepared again under the same name.
    if let Some(trained_on) = &state.dataset {
        keys.retain(|k| k != "data.dir");
        if *trained_on != dataset.meta.fingerprint() {
            keys.push(format!(
                "data.dir ({} is not the dataset the checkpoint was trained on)",
                cfg.data.dir.display()
            ));
        }
    }
    if !keys.is_empty() {
        return Err(TrainError::IncompatibleResume { path: dir.to_path_buf(), keys: keys.join(", ") });
    }
    Ok((state, saved))
}

/// The summary of a run that ended at `step`, as written (rank 0 reads it, every rank learns
/// it); none when the run did not end there (no summary, a stop, another step, no model, or a
/// model file other than the summary records, which the resume then writes again).
fn ended_at(comm: &dyn Communicator, run_dir: &RunDir, step: u64) -> Result<Option<Summary>, TrainError> {
    let text = match comm.rank() {
        0 if run_dir.model().is_file() => {
            let text = std::fs::read_to_string(run_dir.summary()).unwrap_or_default();
            match serde_json::from_str(&text).map(|summary| run_dir.check_model(&summary)) {
                Ok(Err(e)) => {
                    tracing::warn!("{e}: the run's end is set aside and written again from its last checkpoint");
                    String::new()
                }
                _ => text,
            }
        }
        _ => String::new(),
    };
    let agreed = String::from_utf8(comm.broadcast_vec(0, text.as_bytes())?).unwrap_or_default();
    Ok(serde_json::from_str::<Summary>(&agreed).ok().filter(|s| s.steps == step && !s.stopped_by_signal))
}

/// What `micn train` would refuse in the dataset at `data.dir` for `cfg` (`--print-config`'s
/// look): no dataset there, or one it cannot open, a history or batch it cannot give, a
/// validation or test split it cannot score, a model it cannot build on it (CAMN without an
/// attribute table). The first such refusal, in the words `train` would use.
pub fn dataset_refusal(cfg: &Config) -> Option<TrainError> {
    let dataset = match open_dataset(cfg) {
        Ok(dataset) => dataset,
        Err(e) => return Some(e),
    };
    let single = crate::dist::SingleProcess;
    Run::split(cfg, &single, &dataset).err().or_else(|| build_model(cfg, &dataset, Device::Cpu).err())
}

/// The dataset at `data.dir`, or why there is none to open (named as `data.dir`'s).
fn open_dataset(cfg: &Config) -> Result<Dataset, TrainError> {
    check_dataset_there(&cfg.data.dir, "data.dir")?;
    Ok(Dataset::open(&cfg.data.dir)?)
}

/// `data_dir` holds a dataset (its `dataset.json`), or the error names `key` (`data.dir`,
/// `--data`) and the way out (a file there is no dataset either, nor `micn data export`'s
/// arrays). What cannot be looked into is left to [`Dataset::open`], which names the OS's reason.
pub fn check_dataset_there(data_dir: &Path, key: &'static str) -> Result<(), TrainError> {
    let not_a_directory = |e: &std::io::Error| e.raw_os_error() == Some(libc::ENOTDIR);
    let relative = match data_dir.join("dataset.json").try_exists() {
        Ok(false) if data_dir.is_relative() => ", relative to the current directory",
        Ok(false) => "",
        Err(e) if not_a_directory(&e) => "",
        _ => return Ok(()),
    };
    let data = data_dir.to_path_buf();
    let (export, remedy) = match data_dir.join(crate::data::export::EXPORT_FILE).is_file() {
        true => (
            ": it holds `micn data export`'s arrays, written for other trainers",
            format!("give {key} the dataset's directory they were exported from"),
        ),
        false => (
            "",
            format!(
                "prepare one there first (`micn prepare ... --out {}`), or give {key} a prepared dataset's directory",
                data.display()
            ),
        ),
    };
    Err(TrainError::NoDataset { data, key, export, relative, remedy })
}

/// Make sure a run replaces nothing by accident: refuse an empty `run.dir`, a directory another
/// `micn train` writes into (rank 0 locks it, [`RunDir::lock`]) and, unless the run resumes or
/// `--overwrite` was given, a directory that already holds a run; `--resume auto` in one that
/// holds a finished run but no checkpoint, and `--resume PATH` from elsewhere into one that holds
/// a run, are refused too. Rank 0 decides; every rank learns the outcome. Rank 0 gets the lock, to hold
/// until the run ends, and what it resumes from (see [`continuation`]).
fn claim_run_dir(
    cfg: &Config,
    comm: &dyn Communicator,
    resume: &Resume,
) -> Result<(Option<RunLock>, Resume), TrainError> {
    check_run_dir_path(&cfg.run.dir)?;
    let run_dir = RunDir::new(&cfg.run.dir);
    let mut lock = None;
    let mut effective = resume.clone();
    let mut claim = || -> Result<(), TrainError> {
        // Before the lock, whose file would be left there.
        if let Some(what) = run_dir.foreign_contents() {
            return Err(TrainError::RunDirHoldsOthers { path: cfg.run.dir.clone(), what });
        }
        lock = Some(run_dir.lock()?);
        // Before anything looks at the checkpoints: a resume killed while it set later ones
        // aside left some of them in place, for `--resume auto` to take up the left history.
        if let Some((names, to)) = run_dir.finish_set_aside()? {
            tracing::warn!(
                "finished setting aside {} into {}, which a kill cut short (the history a resume left)",
                names.join(", "),
                to.display()
            );
        }
        checkpoint::remove_leftovers(&run_dir.checkpoints())?;
        let ours = run_dir.claimed_by_this_launch();
        if ours {
            effective = continuation(&run_dir, resume);
            tracing::info!(resume = ?effective, "an earlier attempt of this job claimed the run directory");
        }
        // Before anything is deleted: a log file that could not be opened would refuse the run
        // after `--overwrite` or a start over had removed it.
        crate::logging::check_rank_file()?;
        let present = run_dir.present_files();
        let exists = || TrainError::RunExists { path: cfg.run.dir.clone(), files: present.join(", ") };
        match &effective {
            Resume::Fresh if !present.is_empty() => return Err(exists()),
            Resume::Overwrite => run_dir.remove_run_files()?,
            // Nothing to resume: a finished run is kept, a start that wrote no checkpoint (killed
            // in its first minutes, requeued with `--resume auto`) starts again.
            // A checkpoint directory without its completion marker (killed while writing it) is none.
            Resume::Auto if !present.is_empty() && checkpoint::finished(&run_dir.checkpoints()).is_empty() => {
                if run_dir.model().exists() || run_dir.summary().exists() {
                    return Err(TrainError::NoCheckpointToResume {
                        path: cfg.run.dir.clone(),
                        files: present.join(", "),
                    });
                }
                // A kill leaves one at most (the first, before its marker): several are a run
                // that went further, whose markers were lost, not one to start again over.
                let unfinished = checkpoint::list(&run_dir.checkpoints());
                if unfinished.len() > 1 {
                    let names: Vec<String> =
                        unfinished.iter().filter_map(|d| d.file_name()).map(|n| n.to_string_lossy().into()).collect();
                    return Err(TrainError::UnfinishedCheckpoints {
                        path: run_dir.checkpoints(),
                        names: names.join(", "),
                    });
                }
                tracing::warn!(
                    files = present.join(", "),
                    "--resume auto: the run stopped before its first checkpoint; starting it again"
                );
                run_dir.remove_run_files()?;
            }
            Resume::Path(from) if !ours && !present.is_empty() && !within(from, run_dir.path()) => {
                return Err(TrainError::ResumeIntoAnotherRun {
                    path: cfg.run.dir.clone(),
                    files: present.join(", "),
                    from: from.clone(),
                });
            }
            // A checkpoint set aside (`abandoned/`) belongs to a history this run left: resumed
            // here, the current history's checkpoints and end would mix with it.
            Resume::Path(from) if within(from, run_dir.path()) && !within(from, &run_dir.checkpoints()) => {
                return Err(TrainError::ResumeFromAbandoned { path: cfg.run.dir.clone(), from: from.clone() });
            }
            _ => {}
        }
        if let Some(id) = &crate::run_dir::this_launch() {
            run_dir.record_launch(id)?;
        }
        Ok(())
    };
    let result = if comm.rank() == 0 { claim() } else { Ok(()) };
    agree_on_rank0(comm, result, "claim the run directory")?;
    crate::logging::open_rank_file()?;
    Ok((lock, effective))
}

/// What a restart of a job (`micn-launch`'s, whose earlier attempt claimed the run directory)
/// resumes from: the newest checkpoint there when there is one (every checkpoint there is this
/// job's: an `--overwrite` or fresh start removed or found none before it, and a resume from an
/// earlier checkpoint set later ones aside); else what the first attempt was asked, the run files
/// there being its own to replace (`--resume PATH` again; a fresh start, `--overwrite` or
/// `--resume auto` start over).
fn continuation(run_dir: &RunDir, asked: &Resume) -> Resume {
    match (checkpoint::finished(&run_dir.checkpoints()).is_empty(), asked) {
        (false, _) => Resume::Auto,
        (true, Resume::Path(from)) => Resume::Path(from.clone()),
        (true, _) => Resume::Overwrite,
    }
}

/// Whether `path` lies inside `dir`, both as they resolve on disk ([`crate::io_error::resolved`]:
/// links followed as far as the path exists).
fn within(path: &Path, dir: &Path) -> bool {
    crate::io_error::resolved(path).starts_with(crate::io_error::resolved(dir))
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
    if agreed != 0 {
        FAILURE_AGREED.store(true, std::sync::atomic::Ordering::SeqCst);
    }
    result?;
    match agreed {
        0 => Ok(()),
        code => Err(TrainError::PeerFailed { rank: 0, what, input: code == 3 }),
    }
}

/// Every rank learns whether any failed at what each did alike (its checks of the dataset, of a
/// checkpoint, of a saved model): a failed rank keeps its error unless a lower rank failed with
/// the same words (then [`TrainError::PeerFailed`], which is not reported), and a rank that passed
/// ends with the failure's status, so the job ends with each cause said once, and no MPI_Abort.
pub(crate) fn agree_all<T>(
    comm: &dyn Communicator,
    result: Result<T, TrainError>,
    what: &'static str,
) -> Result<T, TrainError> {
    if comm.size() == 1 {
        return result;
    }
    let own = result.as_ref().err().map(|e| (if e.is_input_error() { 3 } else { 1 }, e.to_string()));
    let Some(first) = crate::dist::first_failure(comm, own)? else {
        return result;
    };
    FAILURE_AGREED.store(true, std::sync::atomic::Ordering::SeqCst);
    match result {
        Err(e) if !first.said_below => Err(e),
        _ => Err(TrainError::PeerFailed { rank: first.rank, what, input: first.status == 3 }),
    }
}

/// Set once every rank has learnt through [`agree_on_rank0`] that rank 0 failed: each then ends
/// with that failure's status, none waiting in a collective for another, so the job needs no
/// `MPI_Abort` (whose banner would follow rank 0's cause).
static FAILURE_AGREED: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// Whether every rank of the job knows of the failure that ends it ([`FAILURE_AGREED`]).
pub fn failure_agreed() -> bool {
    FAILURE_AGREED.load(std::sync::atomic::Ordering::SeqCst)
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
    if comm.rank() == 0 {
        for unread in cfg.unread_settings() {
            tracing::warn!("{unread}, so it changes nothing");
        }
    }
    keep_freed_memory();
    use_threads(cfg.train.threads, comm);
    if cfg.train.deterministic {
        // Before the first CUDA operation: cuBLAS reads its workspace setting when it starts.
        deterministic::turn_on()?;
        tracing::info!(on = deterministic::is_on()?, "libtorch's deterministic algorithms (train.deterministic)");
    }
    let device = pick_device(cfg.device, comm.local_rank())?;
    let dataset = Arc::new(agree_all(comm, open_dataset(cfg), "open the dataset")?);
    let watchdog = match cfg.train.watchdog_seconds {
        0 => None,
        seconds => Some(Watched::new(comm, Duration::from_secs(seconds), watchdog::abort_rank)?),
    };
    let comm: &dyn Communicator = watchdog.as_ref().map_or(comm, |w| w);
    let mut run = match Run::start(cfg, comm, resume, &dataset, device, started)? {
        Started::Run(run) => run,
        Started::Finished(summary) => return Ok(*summary),
    };
    run.watchdog = watchdog.as_ref();
    run.catch_up()?;
    run.steady.resume();
    // A run resumed from the checkpoint at which its patience ran out (killed before it wrote
    // its summary, or stopped by a signal before it scored that step) stops there, as it did.
    let epochs = if run.patience_ran_out() { 0 } else { cfg.train.epochs as u64 };
    super::interrupt::mark_training();
    for epoch in run.position.epoch..epochs {
        if run.epoch(epoch, interrupter)? == Flow::Stop {
            break;
        }
    }
    run.finish()
}

/// Sets libtorch's threads for this process as [`threads_per_rank`] says. Scoring a model
/// (`micn eval`, `predict`) does so too, with the run's `train.threads`, so that it repeats the
/// training's reductions and reproduces its validation figures to the last bit.
pub(crate) fn use_threads(configured: usize, comm: &dyn Communicator) {
    let omp_threads = std::env::var_os("OMP_NUM_THREADS").is_some();
    if let Some(threads) = threads_per_rank(configured, omp_threads, comm.local_size(), cores()) {
        tch::set_num_threads(threads as i32);
    }
}

/// Refuses what makes `run.dir` no place for a run, whatever is there: an empty path, or one too
/// long ([`check_path_room`]).
pub fn check_run_dir_path(dir: &Path) -> Result<(), TrainError> {
    if dir.as_os_str().is_empty() {
        return Err(TrainError::NoRunDir);
    }
    check_path_room(dir)
}

/// Refuses a run directory whose path leaves too little room for the paths the run writes below
/// it (a path may have at most `PATH_MAX` − 1 bytes), which would otherwise fail only at the first
/// checkpoint, after the training up to it.
fn check_path_room(dir: &Path) -> Result<(), TrainError> {
    const MAX: usize = libc::PATH_MAX as usize - 1;
    // The longest: a checkpoint being removed, and its longest file; the event file, whose name
    // holds the host name.
    let removing = dir.join("checkpoints").join(format!(".{}.removed", checkpoint::dir_name(u64::MAX)));
    let candidates = [
        removing.join("optimizer.safetensors"),
        dir.join(format!("events.out.tfevents.{}.{}.micn", u64::MAX, crate::dist::hostname())),
    ];
    let example = candidates.into_iter().max_by_key(|p| p.as_os_str().len()).expect("two candidates");
    let longest = example.as_os_str().len();
    if longest > MAX {
        return Err(TrainError::RunDirTooLong { path: dir.to_path_buf(), longest, example, max: MAX });
    }
    Ok(())
}

/// libtorch threads for this rank: `train.threads` when set; else what `OMP_NUM_THREADS` says
/// (libtorch reads it: `None`); else, when several processes of the job share this host, its
/// cores divided among them (libtorch would give each of them every core); else its default.
fn threads_per_rank(configured: usize, omp_threads: bool, ranks_here: usize, cores: usize) -> Option<usize> {
    match configured {
        0 if omp_threads || ranks_here <= 1 => None,
        0 => Some((cores / ranks_here).max(1)),
        n => Some(n),
    }
}

fn cores() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

/// Where the next step starts: its epoch and its position (in samples) in that epoch.
#[derive(Debug, Clone, Copy)]
struct Position {
    epoch: u64,
    sample: u64,
}

/// Whether the epochs go on.
#[derive(Debug, PartialEq, Eq)]
enum Flow {
    Continue,
    Stop,
}

/// One training run from its first step to its summary: the replica, the run directory's files,
/// the evaluations and checkpoints, and the counters [`train_until`]'s loop advances.
struct Run<'a> {
    cfg: &'a Config,
    comm: &'a dyn Communicator,
    /// The watchdog `comm` reports to, told when each step starts and ends.
    watchdog: Option<&'a Watched<'a>>,
    dataset: &'a Arc<Dataset>,
    scorer: Scorer<'a>,
    replica: Replica,
    run_dir: RunDir,
    metrics: MetricsLog,
    validation: Validation,
    checkpoints: Checkpointing,
    train_ids: Arc<[u32]>,
    loader_cfg: LoaderConfig,
    steps_per_epoch: u64,
    total_steps: u64,
    /// The learning rate of every step.
    schedule: Schedule,
    /// Steps taken so far (a resumed run counts those before the resume).
    step: u64,
    resumed_at: u64,
    /// The last step whose model passed [`Run::divergence`] (a resumed run's checkpoint did).
    checked_at: u64,
    /// When this process started, and the seconds earlier processes of the run took up to the
    /// checkpoint it resumed from.
    started: Instant,
    seconds_before: f64,
    /// Where the run (re)started, and where the next step starts.
    started_at: Position,
    position: Position,
    epochs_completed: u64,
    stopped_by_signal: bool,
    /// Stopped because the validation AUC stopped improving (`train.early_stop_patience`).
    early_stopped: bool,
    totals: StepTotals,
    steady: SteadyRate,
    progress: Progress,
    loop_started: Instant,
    window_started: Instant,
    /// Rank 0's lock on `run.dir`, held until the run ends.
    lock: Option<RunLock>,
}

/// What [`Run::start`] found.
enum Started<'a> {
    /// A run to train (or whose end is to be written again).
    Run(Box<Run<'a>>),
    /// A run that had ended where it would resume: see [`StartPoint::Finished`].
    Finished(Box<Summary>),
}

impl<'a> Run<'a> {
    /// The checks of the dataset against the configuration, and the training samples split
    /// into those trained on and those held out for validation, with the samples trained on and
    /// the steps of an epoch.
    fn split(
        cfg: &Config,
        comm: &dyn Communicator,
        dataset: &Dataset,
    ) -> Result<(shard::Split, usize, u64), TrainError> {
        check_history(cfg, dataset)?;
        check_test_set(cfg, dataset)?;
        check_training_classes(cfg, dataset)?;
        let mut split = validation_split(cfg, dataset)?;
        if cfg.train.restore_best && split.valid.is_empty() && comm.rank() == 0 {
            // Not refused: runs saved with it must still load for eval and predict.
            tracing::warn!(
                "train.restore_best: no validation split to choose a checkpoint by (data.valid_share = 0), so the \
                 run's model is its final one"
            );
        }
        // The sampled softmax draws negatives from the vocabulary; with a single item (id 0
        // aside) every draw is the target, left out as an accidental hit: MICN's loss is 0.
        if cfg.micn.enabled && dataset.vocab.items.len() <= 2 && comm.rank() == 0 {
            tracing::warn!(
                "{}: the vocabulary holds {} item(s) besides id 0: MICN's sampled softmax has no other item to draw as \
                 a negative, so its loss is 0 and it shapes nothing (micn.enabled = true changes nothing here)",
                cfg.data.dir.display(),
                dataset.vocab.items.len().saturating_sub(1)
            );
        }
        if cfg.model.learns_from_clicks_only() {
            let samples = dataset.train.samples();
            split.train.retain(|&i| crate::data::batch::is_positive_sample(samples, i));
        }
        let n_train = split.train.len();
        let steps_per_epoch = shard::steps_per_epoch(n_train, cfg.train.global_batch_size, cfg.data.drop_remainder);
        // Also with `data.drop_remainder = false`, which would fill such a batch with copies of
        // the same samples (hundreds of them for a batch far past the data).
        if n_train < cfg.train.global_batch_size {
            let archive = dataset.train.samples().len();
            let held_out = match split.valid.len() {
                0 => String::new(),
                n => format!("data.valid_share = {} holds out {n}", crate::config::Compact(cfg.data.valid_share)),
            };
            let counted = match (cfg.model.learns_from_clicks_only(), held_out.as_str()) {
                (false, "") => String::new(),
                (false, held_out) => format!(" (of {archive}: {held_out})"),
                (true, held_out) => {
                    let left = if held_out.is_empty() { String::new() } else { format!(" left when {held_out}") };
                    format!(" (the clicked ones of {archive}{left}: MIND's retrieval objective learns from those)")
                }
            };
            return Err(TrainError::TooFewSamples {
                path: cfg.data.dir.clone(),
                samples: n_train,
                counted,
                batch: cfg.train.global_batch_size,
            });
        }
        Ok((split, n_train, steps_per_epoch))
    }

    /// Every check that needs no file of the run, the replica built, then the run directory
    /// claimed, the replica loaded from the checkpoint it resumes from, the run's files started
    /// (or, where nothing is left to train of a run that ended there, its summary). `started`:
    /// when this process began (its seconds count towards the run's).
    fn start(
        cfg: &'a Config,
        comm: &'a dyn Communicator,
        resume: &Resume,
        dataset: &'a Arc<Dataset>,
        device: Device,
        started: Instant,
    ) -> Result<Started<'a>, TrainError> {
        let local_batch = shard::local_batch(cfg.train.global_batch_size, comm.size())?;
        agree_all(comm, same_dataset(comm, dataset), "compare the ranks' datasets")?;
        let (split, n_train, steps_per_epoch) = agree_all(comm, Self::split(cfg, comm, dataset), "split the dataset")?;
        // The model is built before the claim: what it reads (`model.mfn_pretrained`, the item
        // attributes) may be refused, and `--overwrite` must not have deleted the run by then.
        let built = agree_all(comm, build_model(cfg, dataset, device), "build the model")?;
        let mut replica = Replica::new(built, cfg, comm)?;
        let (lock, resume) = claim_run_dir(cfg, comm, resume)?;
        let total_steps = (steps_per_epoch * cfg.train.epochs as u64).min(cfg.train.max_steps.unwrap_or(u64::MAX));
        let resumed = match resume_point(cfg, comm, &resume, dataset, total_steps)? {
            StartPoint::Finished(summary, trained) => {
                tracing::info!(
                    steps = summary.steps,
                    "the run ended at this step already (its last step, or an early stop) and nothing is left to \
                     train: its summary and model stay as they are"
                );
                // A run directory tells a run by its configuration: one that lost it gets back the
                // one it was trained with, where it now lies.
                let config = RunDir::new(&cfg.run.dir).config();
                if comm.rank() == 0 && !config.is_file() {
                    let mut trained = *trained;
                    (trained.run.dir, trained.data.dir) = (cfg.run.dir.clone(), cfg.data.dir.clone());
                    crate::io_error::replace_file(&config, |tmp| std::fs::write(tmp, trained.to_toml()))?;
                    tracing::warn!(path = %config.display(), "the run's configuration was missing: written again");
                }
                return Ok(Started::Finished(Box::new(summary)));
            }
            StartPoint::Checkpoint(dir, state) => {
                replica.load_checkpoint(&dir, state.step, device)?;
                tracing::info!(checkpoint = %dir.display(), step = state.step, epoch = state.epoch, "resuming");
                Some(state)
            }
            StartPoint::Fresh => None,
        };
        let state = resumed.as_ref();
        let run_dir = RunDir::new(&cfg.run.dir);
        let rank0 = comm.rank() == 0;
        let metrics = match rank0 {
            // Lines at a stop's step are written when the run catches up with it (`catch_up`).
            true => {
                run_dir.start_writing(&cfg.to_toml(), state.map(|s| s.step.saturating_sub(u64::from(s.stopped))))?
            }
            false => MetricsLog::discard(),
        };
        if let Some(state) = state.filter(|s| s.step >= total_steps) {
            tracing::warn!(
                "the checkpoint is at step {}, and train.epochs / train.max_steps end the run at step {total_steps}: \
                 nothing is left to train",
                state.step
            );
        }
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
        let step = state.map_or(0, |s| s.step);
        let started_at =
            state.map_or(Position { epoch: 0, sample: 0 }, |s| Position { epoch: s.epoch, sample: s.position });
        Ok(Started::Run(Box::new(Self {
            cfg,
            comm,
            watchdog: None,
            dataset,
            scorer: Scorer { dataset, comm, device, max_hist_len: cfg.data.max_hist_len },
            replica,
            checkpoints: Checkpointing {
                root: run_dir.checkpoints(),
                rank0,
                last: Instant::now(),
                // A resumed run has its checkpoint at the step it starts from already.
                last_step: state.map(|s| s.step),
                last_scored: state.is_some_and(|s| s.own_evaluation().is_some()),
                last_stopped: state.is_some_and(|s| s.stopped),
                dataset: dataset.meta.fingerprint(),
                vocabularies: dataset.vocab.digest(),
            },
            run_dir,
            metrics,
            validation: Validation {
                ids: split.valid,
                evaluations: state.map(|s| s.evaluations.clone()).unwrap_or_default(),
                seconds: 0.0,
            },
            train_ids: split.train.into(),
            loader_cfg: LoaderConfig::from_config(cfg, comm.size(), comm.rank()),
            steps_per_epoch,
            total_steps,
            schedule: Schedule::new(&cfg.train, total_steps),
            step,
            resumed_at: step,
            checked_at: step,
            started,
            seconds_before: state.map_or(0.0, |s| s.seconds),
            started_at,
            position: started_at,
            epochs_completed: started_at.epoch,
            stopped_by_signal: false,
            early_stopped: false,
            totals: StepTotals::resumed(state.and_then(|s| s.loss_window)),
            steady: SteadyRate::new(total_steps.saturating_sub(step)),
            progress: Progress::new(rank0, (step, total_steps)),
            loop_started: Instant::now(),
            window_started: Instant::now(),
            lock,
        })))
    }

    /// The steps of `epoch` (from where the run resumed, in its first epoch), then the epoch's
    /// evaluation and checkpoint; stops early at the last step or on a stop request.
    fn epoch(&mut self, epoch: u64, interrupter: &Interrupter) -> Result<Flow, TrainError> {
        let batch_size = self.cfg.train.global_batch_size as u64;
        let first_step = if epoch == self.started_at.epoch { self.started_at.sample / batch_size } else { 0 };
        let dataset = Arc::clone(self.dataset);
        for batch in EpochLoader::over(dataset, Arc::clone(&self.train_ids), &self.loader_cfg, epoch, first_step)? {
            if self.step >= self.total_steps {
                return Ok(Flow::Stop);
            }
            let control = self.train_step(&batch, epoch, interrupter)?;
            if control.stop {
                self.stopped_by_signal = true;
                tracing::warn!(step = self.step, "stop requested: checkpointing and stopping");
                return Ok(Flow::Stop);
            }
            self.after_step(control, epoch)?;
            if self.patience_ran_out() {
                return Ok(Flow::Stop);
            }
        }
        self.epochs_completed += 1;
        self.position = Position { epoch: epoch + 1, sample: 0 };
        self.validate(epoch)?;
        // Every epoch ends with a checkpoint, unless this step has one already (its position, the
        // epoch's end, resumes to the same place).
        self.checkpoint_unless_written()?;
        self.steady.resume();
        Ok(if self.patience_ran_out() { Flow::Stop } else { Flow::Continue })
    }

    /// Resumed from a stop's checkpoint: do what the stop left undone at its step, as a run
    /// that went on there would have done it. A stop checkpoints right after its step, without
    /// the step's metrics line (its losses stay in the checkpoint), evaluation or checkpoint;
    /// here each is done when it was due ([`Run::due_at_step`]; the line without the step's
    /// gradient norms and throughput, which ended with the process that trained it), so that
    /// retention, the selection of the best checkpoint and early stopping see what they would
    /// have seen. The epoch's end and the run's, when the stop fell on them, follow as ever
    /// ([`Run::epoch`], [`Run::finish`]).
    fn catch_up(&mut self) -> Result<(), TrainError> {
        // Called before the first step: the last checkpoint is the one resumed from.
        if !self.checkpoints.last_stopped {
            return Ok(());
        }
        self.due_at_step(false, self.last_steps_epoch(), false)
    }

    /// Whether the last `train.early_stop_patience` validation evaluations have not improved on
    /// the best before them (the same on every rank: the scores are exact and global). Marks
    /// the run as stopped early.
    fn patience_ran_out(&mut self) -> bool {
        let patience = self.cfg.train.early_stop_patience;
        // Called after every step: nothing to look at without early stopping.
        if patience == 0 || self.early_stopped {
            return self.early_stopped;
        }
        let aucs: Vec<f64> = self.validation.evaluations.iter().map(|e| e.1).collect();
        let Some(best) = (0..aucs.len()).reduce(|a, b| if aucs[b] > aucs[a] { b } else { a }) else { return false };
        let since_best = (aucs.len() - 1 - best) as u64;
        if since_best >= patience {
            self.early_stopped = true;
            tracing::warn!(
                step = self.step,
                best_step = self.validation.evaluations[best].0,
                best_auc = aucs[best],
                "early stop: {since_best} validation evaluations without a better AUC (train.early_stop_patience)"
            );
        }
        self.early_stopped
    }

    /// One step on `batch` of `epoch`, counted; its run-control flags over all ranks. With one
    /// rank on the device path its losses stay on the device until [`Run::read_losses`]: the
    /// host never waits for the device within a step, and prepares the next step's upload while
    /// the device computes this one.
    fn train_step(&mut self, batch: &Batch, epoch: u64, interrupter: &Interrupter) -> Result<Control, TrainError> {
        let cfg = self.cfg;
        let batch_size = cfg.train.global_batch_size as u64;
        let minutes = cfg.checkpoint.every_minutes;
        let first_sample = epoch * self.steps_per_epoch * batch_size + batch.first_position;
        let ctx = StepContext {
            // Made global by the step's own exchange: a signal on any rank stops every rank
            // after this same step; rank 0's clock decides a time-triggered checkpoint.
            control: Control {
                stop: interrupter.is_stopped(),
                checkpoint_due: minutes > 0.0 && self.checkpoints.last.elapsed().as_secs_f64() >= 60.0 * minutes,
            },
            lr: self.schedule.lr(self.step),
            defer_read: true,
            ..StepContext::new(cfg, self.comm, self.scorer.device, self.step, first_sample)
        };
        let step_started = Instant::now();
        let transfers_before = crate::transfer::counts();
        let watched = self.watchdog.map(|w| w.step(self.step));
        let stats = self.replica.step(batch, &ctx)?;
        drop(watched);
        let transfers = crate::transfer::counts().since(transfers_before).total();
        let control = stats.control;
        self.totals.add(stats, step_started.elapsed().as_secs_f64(), transfers, batch_size)?;
        self.steady.step_done(batch_size);
        self.step += 1;
        self.position = Position { epoch, sample: (batch.step + 1) * batch_size };
        Ok(control)
    }

    /// The losses of the steps whose losses are still on the device; a non-finite one stops the
    /// run here, before anything is evaluated or saved from the model it led to.
    fn read_losses(&mut self) -> Result<(), TrainError> {
        // Reading them waits for a GPU to finish the steps queued on it: a hung device is the
        // last of those steps overdue.
        let watched = self.watchdog.map(|w| w.step(self.step.saturating_sub(1)));
        let waited = self.totals.read()?;
        drop(watched);
        self.steady.waited(waited);
        Ok(())
    }

    /// The validation split scored after the last step (of `epoch`), its losses read first and
    /// the model checked ([`Run::divergence`]): a broken model's scores are no measure.
    fn validate(&mut self, epoch: u64) -> Result<(), TrainError> {
        self.read_losses()?;
        if self.validation.is_due(self.step) {
            let checked = self.check_model();
            agree_on_rank0(self.comm, checked, "check the model")?;
        }
        self.validation.run(&self.scorer, &self.replica.net, (self.step, epoch), &mut self.metrics)
    }

    /// Rank 0's [`Run::divergence`] of the model after the last step (unless that step's model
    /// was checked already) as the run's error, or the step noted as checked. The other ranks'
    /// outcome is Ok: they learn rank 0's through an agreement.
    fn check_model(&mut self) -> Result<(), TrainError> {
        let due = self.comm.rank() == 0 && self.checked_at != self.step;
        match if due { self.divergence() } else { None } {
            Some(what) => Err(StepError::Diverged { step: self.step, passed: self.checked_at, what }.into()),
            None => {
                self.checked_at = self.step;
                Ok(())
            }
        }
    }

    /// What follows a step: the replica check, then what is due at the step.
    fn after_step(&mut self, control: Control, epoch: u64) -> Result<(), TrainError> {
        let step = self.step;
        let every = self.cfg.train.check_replicas_every_steps;
        // One rank has no other replica to compare with (its digest reads the whole model back).
        if every > 0 && step % every == 0 && self.comm.size() > 1 {
            let digests = self.comm.all_gather(&[self.replica.digest()])?.data;
            if digests.iter().any(|d| *d != digests[0]) {
                return Err(TrainError::ReplicasDiffer { step, digests });
            }
        }
        self.due_at_step(control.checkpoint_due, epoch, true)?;
        self.steady.resume();
        Ok(())
    }

    /// The metrics line, the evaluation and the checkpoint, each when due at the last step (of
    /// `epoch`); a checkpoint also when `time_due` (`checkpoint.every_minutes`). `measured`: this
    /// process trained the step, so the line has its throughput (and its gradient norms, which
    /// otherwise come from the checkpoint resumed from, where it kept them).
    fn due_at_step(&mut self, time_due: bool, epoch: u64, measured: bool) -> Result<(), TrainError> {
        let (cfg, step) = (self.cfg, self.step);
        if step % cfg.train.log_every_steps == 0 || step == self.total_steps {
            self.log_losses(epoch, measured)?;
        }
        // A checkpoint records the validation score of its own model: evaluate first.
        let every = |n: u64| n > 0 && step % n == 0;
        let checkpoint_due = every(cfg.checkpoint.every_steps) || time_due;
        let evaluated = checkpoint_due || every(cfg.train.eval_every_steps);
        if evaluated {
            self.validate(epoch)?;
        }
        // With `restore_best`, a model that scores better than every one before it is kept,
        // so that the run can end with the best model it scored, not only the best of those a
        // regular checkpoint happened to hold.
        if checkpoint_due || (evaluated && cfg.train.restore_best && self.validation.is_new_best(step)) {
            self.checkpoint_unless_written()?;
        }
        Ok(())
    }

    /// The metrics line of the losses since the previous one, if any step is left to log (a run
    /// resumed from a stop after such a line was written has none); whether one was written.
    /// `measured` as in [`Run::due_at_step`].
    fn log_losses(&mut self, epoch: u64, measured: bool) -> Result<bool, TrainError> {
        let (cfg, step) = (self.cfg, self.step);
        self.read_losses()?;
        let written = self.totals.logged_steps > 0;
        if written {
            let secs = self.window_started.elapsed().as_secs_f64().max(1e-9);
            let mut line = self.totals.line(cfg, (step, epoch), self.schedule.lr(step - 1), secs);
            if measured {
                self.progress.update(
                    step,
                    line.loss_main.unwrap_or_default(),
                    line.samples_per_sec.unwrap_or_default(),
                );
            } else {
                line.samples_per_sec = None;
                if !self.totals.norms_known {
                    (line.grad_norm_main_e_aux, line.grad_norm_aux_e_aux, line.grad_norm) = (None, None, None);
                }
            }
            self.metrics.write(&line)?;
        }
        self.window_started = Instant::now();
        Ok(written)
    }

    /// A checkpoint of the last step, unless it has one already: one with its score, or one
    /// without a score there is none to add to. A stop's checkpoint resumed from is written again
    /// (with its score, its step's losses logged, its position past the epoch's end).
    fn checkpoint_unless_written(&mut self) -> Result<(), TrainError> {
        let written = self.checkpoints.last_step == Some(self.step)
            && !self.checkpoints.last_stopped
            && (self.checkpoints.last_scored || !self.validation.scored(self.step));
        match written {
            true => Ok(()),
            false => self.checkpoint(),
        }
    }

    /// A checkpoint of the model after the last step, resuming at [`Run::position`].
    fn checkpoint(&mut self) -> Result<(), TrainError> {
        self.read_losses()?;
        let in_place = self.lock.as_ref().map_or(Ok(()), RunLock::check).map_err(TrainError::from);
        agree_on_rank0(self.comm, in_place, "write into the run directory")?;
        let Position { epoch, sample } = self.position;
        let totals = &self.totals;
        let last = &totals.last_read;
        let window = LossWindow {
            sums: totals.loss_sums,
            steps: totals.logged_steps,
            grad_norms: (totals.logged_steps > 0 && totals.norms_known).then_some([
                last.grad_norm_main_e_aux,
                last.grad_norm_aux_e_aux,
                last.grad_norm,
            ]),
        };
        let seconds = self.run_seconds();
        let position = (self.step, epoch, sample);
        let diverged = self.check_model();
        let (replica, validation) = (&self.replica, &self.validation);
        self.checkpoints.save(
            self.cfg,
            self.comm,
            replica,
            position,
            validation,
            (window, seconds, self.stopped_by_signal),
            diverged,
        )
    }

    /// How the model after the last step shows that an update broke it, when it does: a
    /// parameter or buffer NaN or infinite (an infinite running variance leaves the training
    /// loss finite and every evaluation off), an Adam moment that is (an overflowed `v` leaves
    /// its parameter finite but frozen for good: `m / sqrt(inf)` is 0), or logits of the first
    /// training samples that are (a validation score takes an infinite logit for a sure click, so
    /// it is no such check). A checkpoint of it could only be resumed into the same failure, or a
    /// model that no longer learns; its evaluation would be no measure.
    fn divergence(&self) -> Option<String> {
        let parameters = self.replica.vs.variables().into_iter();
        if let Some((variable, count)) = first_not_finite(parameters) {
            return Some(format!("{count} values of {variable} are NaN or infinite"));
        }
        let moments = self.replica.adam.named_state(&self.replica.trainable.names).map(|(k, v)| (k, v.shallow_clone()));
        if let Some((moment, count)) = first_not_finite(moments) {
            return Some(format!(
                "{count} values of Adam's moment {moment} are NaN or infinite, which stops the parameter learning"
            ));
        }
        let probe = &self.train_ids[..self.train_ids.len().min(PROBE_SAMPLES)];
        let (bad, n) = self.scorer.count_not_finite(&self.replica.net, probe)?;
        Some(format!("its scores of the first {n} training samples are not finite ({bad} of {n})"))
    }

    /// The epoch the last step trained in, as every metrics line of that step names it (once an
    /// epoch is done, the position is the next one's start).
    fn last_steps_epoch(&self) -> u64 {
        match self.position {
            Position { epoch, sample: 0 } if epoch > 0 => epoch - 1,
            Position { epoch, .. } => epoch,
        }
    }

    /// Wall-clock seconds of the run so far: this process's, and those of the earlier ones up to
    /// the checkpoint it resumed from.
    fn run_seconds(&self) -> f64 {
        self.seconds_before + self.started.elapsed().as_secs_f64()
    }

    /// The end: a last checkpoint, the test set scored, the checkpoint selected by validation
    /// AUC, the final model and the summary written.
    fn finish(mut self) -> Result<Summary, TrainError> {
        self.read_losses()?;
        let (cfg, step) = (self.cfg, self.step);
        // The end of the run is a checkpoint too (a later, longer run resumes from it), with its
        // score (a stop's checkpoint resumed from is scored and written again). A stop signal
        // leaves no time for a validation pass: its checkpoint has no score.
        if step > 0 && self.stopped_by_signal {
            if self.checkpoints.last_step != Some(step) {
                self.checkpoint()?;
            }
        } else if step > 0 {
            // An early stop ends the run where no metrics line may be due: the losses since the
            // last one are logged, as at a run's last step, and a checkpoint of this step made at
            // its evaluation, which holds them still, is written again without them.
            if self.early_stopped
                && self.log_losses(self.last_steps_epoch(), step > self.resumed_at)?
                && self.checkpoints.last_step == Some(step)
            {
                self.checkpoint()?;
            }
            // Both do nothing where this step was scored and checkpointed already.
            self.validate(self.last_steps_epoch())?;
            self.checkpoint_unless_written()?;
        }
        self.progress.finish();
        let loop_seconds = self.loop_started.elapsed().as_secs_f64();
        // Steps trained by this process (a resumed run's earlier steps took no time here). One
        // that trained none (resumed where the run ends) measured nothing: NaN, `null` in JSON.
        let steps_here = step - self.resumed_at;
        let measured = |value: f64| if steps_here == 0 { f64::NAN } else { value };
        let samples_per_sec = measured(
            (steps_here * cfg.train.global_batch_size as u64) as f64
                / (loop_seconds - self.validation.seconds).max(1e-9),
        );
        let final_eval = self.scorer.score(&self.replica.net, EvalSet::Test)?;
        let epoch = self.last_steps_epoch();
        write_eval(&mut self.metrics, step, epoch, EvalSet::Test, &final_eval)?;
        // After a stop signal there may be little time left: no other checkpoint is loaded and scored.
        let selected = match self.stopped_by_signal {
            true => None,
            false => select_best(cfg, &self.scorer, &self.checkpoints.root, (step, &final_eval))?,
        };
        let replica_digest = format!("{:016x}", self.replica.digest());
        let model_step = match &selected {
            Some(best) if cfg.train.restore_best && best.step != step => {
                let model = Path::new(&best.checkpoint).join("model.safetensors");
                checkpoint::load_var_store(&mut self.replica.vs, &model)?;
                tracing::info!(step = best.step, checkpoint = %best.checkpoint, "restored the selected model");
                best.step
            }
            _ => step,
        };
        let totals = &self.totals;
        let mut summary = Summary {
            test_auc: final_eval.auc,
            test_gauc: final_eval.gauc,
            test_logloss: final_eval.logloss,
            valid_auc: self.validation.evaluations.last().filter(|e| e.0 == step).map(|e| e.1),
            selected,
            steps: step,
            epochs_completed: self.epochs_completed,
            samples_per_sec,
            steady_samples_per_sec: self.steady.rate().unwrap_or(samples_per_sec),
            seconds: self.run_seconds(),
            resumed_from_step: (self.resumed_at > 0).then_some(self.resumed_at),
            world_size: self.comm.size(),
            oracle_auc: self.scorer.dataset.meta.oracle_auc,
            model: cfg.model.kind.name().to_string(),
            micn: cfg.micn.enabled,
            config_hash: Some(checkpoint::config_hash(&cfg.to_toml())),
            model_xxh3: None,
            comm_share: measured(totals.comm_seconds / totals.step_seconds.max(1e-12)),
            // A GPU runs the update after the host has queued it: its time is not known here.
            update_share: match self.scorer.device {
                Device::Cpu => measured(totals.update_seconds / totals.step_seconds.max(1e-12)),
                _ => f64::NAN,
            },
            bytes_sent_per_step: measured(totals.bytes_sent as f64 / steps_here.max(1) as f64),
            transfers_per_step: measured(totals.transfers as f64 / steps_here.max(1) as f64),
            replica_digest,
            stopped_by_signal: self.stopped_by_signal,
            early_stopped: self.early_stopped,
            model_step,
            vocabularies: Some(self.checkpoints.vocabularies.clone()),
        };
        if self.comm.rank() == 0 {
            if let Some(lock) = &self.lock {
                lock.check()?;
            }
            let variables: Vec<(String, Tensor)> = self.replica.vs.variables().into_iter().collect();
            summary.model_xxh3 = Some(self.run_dir.write_model(&variables)?);
            self.run_dir.write_summary(&summary)?;
        }
        self.comm.barrier()?;
        Ok(summary)
    }
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

    /// This rank's scores of the training samples `ids` (one batch): how many are not finite,
    /// of how many, when any is not.
    fn count_not_finite(&self, net: &Network, ids: &[u32]) -> Option<(usize, usize)> {
        let samples = self.dataset.train.samples();
        let batches = crate::data::loader::eval_batches(samples, ids, 0, 1, ids.len(), self.max_hist_len);
        let logits: Vec<f32> =
            batches.flat_map(|batch| crate::transfer::download_f32(&eval_logits(net, &batch, self.device))).collect();
        let bad = logits.iter().filter(|s| !s.is_finite()).count();
        (bad > 0).then_some((bad, logits.len()))
    }
}

/// Training samples scored before every checkpoint, to find a model its last update broke.
const PROBE_SAMPLES: usize = 1024;

/// Mid-run evaluations on the validation split: `metrics.jsonl` gets each one, and every later
/// checkpoint records all of them.
struct Validation {
    ids: Vec<u32>,
    /// Every evaluation so far, carried over a resume.
    evaluations: Vec<checkpoint::Evaluation>,
    seconds: f64,
}

impl Validation {
    /// Whether the model after `step` has been scored.
    fn scored(&self, step: u64) -> bool {
        self.evaluations.iter().any(|e| e.0 == step)
    }

    /// Whether [`Validation::run`] would score the model after `step`.
    fn is_due(&self, step: u64) -> bool {
        !self.ids.is_empty() && self.evaluations.last().is_none_or(|e| e.0 != step)
    }

    /// Whether the model after `step` was scored, with a (finite) AUC above every earlier one.
    fn is_new_best(&self, step: u64) -> bool {
        match self.evaluations.split_last() {
            Some((&(last, auc, ..), earlier)) => {
                last == step && auc.is_finite() && earlier.iter().all(|e| e.1.is_nan() || e.1 < auc)
            }
            None => false,
        }
    }

    /// Score the model after `step` on the validation split, unless there is none or this step
    /// was scored already.
    fn run(
        &mut self,
        scorer: &Scorer<'_>,
        net: &Network,
        (step, epoch): (u64, u64),
        metrics: &mut MetricsLog,
    ) -> Result<(), TrainError> {
        if !self.is_due(step) {
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
    /// Step of the last checkpoint written by this run (or resumed from).
    last_step: Option<u64>,
    /// Whether that checkpoint holds its own validation score (a stop's has none).
    last_scored: bool,
    /// Whether it is a stop's, written before what was due at its step.
    last_stopped: bool,
    /// The fingerprint of the dataset trained on, recorded in every checkpoint.
    dataset: String,
    /// The digest of its vocabularies, recorded in every checkpoint and in the summary.
    vocabularies: String,
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
        (loss_window, seconds, stopped): (LossWindow, f64, bool),
        diverged: Result<(), TrainError>,
    ) -> Result<(), TrainError> {
        // `diverged`: rank 0's finding that the model is broken ([`Run::diverged`]), refused
        // here so that the other ranks learn it in the agreement every checkpoint makes anyway.
        let (vs, t, adam) = (&replica.vs, &replica.trainable, &replica.adam);
        let result: Result<(), TrainError> = if let Err(e) = diverged {
            Err(e)
        } else if self.rank0 {
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
                code_version: env!("MICN_CODE_VERSION").into(),
                evaluations: validation.evaluations.clone(),
                loss_window: Some(loss_window),
                seconds,
                dataset: Some(self.dataset.clone()),
                vocabularies: Some(self.vocabularies.clone()),
                stopped,
            };
            let saved = checkpoint::save(
                &self.root,
                &state,
                |path| {
                    let variables: Vec<(String, Tensor)> = vs.variables().into_iter().collect();
                    checkpoint::write_tensors(path, &variables)
                },
                |path| {
                    let named: Vec<(String, Tensor)> =
                        adam.named_state(&t.names).map(|(k, v)| (k, v.to_device(Device::Cpu).contiguous())).collect();
                    checkpoint::write_tensors(path, &named)
                },
            )
            .and_then(|dir| checkpoint::retain(&self.root, cfg.checkpoint.keep_last, step).map(|_| dir));
            if let Ok(dir) = &saved {
                tracing::info!(checkpoint = %dir.display(), step, "checkpoint written");
            }
            saved.map(drop).map_err(TrainError::from)
        } else {
            Ok(())
        };
        self.last = Instant::now();
        self.last_step = Some(step);
        self.last_scored = validation.scored(step);
        self.last_stopped = stopped;
        // Everyone learns whether rank 0 succeeded, so a failure stops every rank.
        agree_on_rank0(comm, result, "check the model and write a checkpoint")
    }
}

/// The first tensor (by name) holding NaN or infinity, with how many such values: a
/// checkpoint of it could only be resumed into the same failure. Each variable's sum is read
/// back (in one piece, with no temporary the size of a table); only one whose sum is not finite,
/// which large finite values may make too, is looked into.
fn first_not_finite(named: impl Iterator<Item = (String, Tensor)>) -> Option<(String, i64)> {
    let mut variables: Vec<(String, Tensor)> = named.collect();
    variables.sort_by(|a, b| a.0.cmp(&b.0));
    tch::no_grad(|| {
        let sums: Vec<Tensor> = variables.iter().map(|(_, v)| v.sum(tch::Kind::Float)).collect();
        let sums = Vec::<f32>::try_from(Tensor::stack(&sums, 0).to_device(Device::Cpu)).expect("one f32 per variable");
        variables.iter().zip(sums).filter(|(_, sum)| !sum.is_finite()).find_map(|((name, v), _)| {
            let count = v.isfinite().logical_not().sum(tch::Kind::Int64).int64_value(&[]);
            (count > 0).then(|| (name.clone(), count))
        })
    })
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
        EvalSet::Valid(_) | EvalSet::Train(_) => (&mut line.valid_auc, &mut line.valid_gauc, &mut line.valid_logloss),
    };
    (*auc, *gauc, *logloss) = (Some(r.auc), Some(r.gauc), Some(r.logloss));
    tracing::info!(step, set = set.name(), auc = r.auc, gauc = r.gauc, logloss = r.logloss, "evaluation");
    Ok(metrics.write(&line)?)
}

/// A progress bar on a terminal (rank 0); a log line otherwise.
struct Progress {
    terminal: Option<TerminalLine>,
    total: u64,
    /// The step this process started from (a resumed run's earlier steps took no time here).
    first: u64,
    started: Instant,
}

impl Progress {
    fn new(rank0: bool, (first, total): (u64, u64)) -> Self {
        let bar = rank0 && std::io::stderr().is_terminal() && !crate::logging::json_lines();
        let terminal = bar.then(TerminalLine::default);
        Self { terminal, total, first, started: Instant::now() }
    }

    fn update(&mut self, step: u64, loss: f64, samples_per_sec: f64) {
        let elapsed = self.started.elapsed().as_secs_f64();
        let eta = remaining_seconds(elapsed, step.saturating_sub(self.first), self.total.saturating_sub(step));
        match &mut self.terminal {
            Some(line) => line.draw(&format!(
                "{} {step}/{} loss {loss:.4} {samples_per_sec:.0} samples/s {} ETA {}",
                bar(step as f64 / self.total.max(1) as f64, 30),
                self.total,
                clock(elapsed),
                eta.map_or_else(|| "?".into(), clock),
            )),
            None => tracing::info!(step, total = self.total, loss, samples_per_sec, eta_seconds = eta, "progress"),
        }
    }

    fn finish(&mut self) {
        if let Some(line) = &mut self.terminal {
            line.keep();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::{check_path_room, first_not_finite, threads_per_rank, SteadyRate, StepTotals, MAX_UNREAD_STEPS};
    use crate::train::step::{StepStats, Unread};
    use tch::Device;

    #[test]
    fn a_run_directory_too_long_for_its_checkpoints_paths_is_refused_before_training() {
        check_path_room(std::path::Path::new("runs/din")).unwrap();
        // 4,049 bytes: room for the directory itself, not for a checkpoint's files below it.
        let long = std::path::PathBuf::from(format!("/tmp/{}", "d/".repeat(2022)));
        let e = check_path_room(&long).unwrap_err().to_string();
        assert!(e.contains("too long a path for a run directory") && e.contains("choose a shorter run.dir"), "{e}");
        assert!(e.contains("more than the 4095 a path may have"), "{e}");
    }

    /// Step `step`'s stats as a device step leaves them: BCE `loss`, no model or MICN loss, norms 3² and 4².
    fn unread(step: u64, loss: f32) -> StepStats {
        let values = tch::Tensor::from_slice(&[loss, 0.0, 0.0, 9.0, 16.0]);
        StepStats { unread: Some(Unread::new(step, values)), ..Default::default() }
    }

    #[test]
    fn the_first_variable_holding_nan_or_infinity_is_named_with_its_count() {
        let vs = tch::nn::VarStore::new(Device::Cpu);
        let root = vs.root();
        let (b, a) = (root.zeros("b", &[3]), root.zeros("a", &[2, 2]));
        assert_eq!(first_not_finite(vs.variables().into_iter()), None);
        tch::no_grad(|| {
            let _ = b.shallow_clone().fill_(f64::INFINITY);
            let _ = a.shallow_clone().get(1).fill_(f64::NAN);
        });
        assert_eq!(first_not_finite(vs.variables().into_iter()), Some(("a".to_string(), 2)));
    }

    #[test]
    fn losses_left_on_the_device_are_read_within_the_bound_in_one_download_and_averaged_as_read_ones() {
        let mut totals = StepTotals::default();
        let before = crate::transfer::counts();
        for step in 1..MAX_UNREAD_STEPS as u64 {
            totals.add(unread(step, step as f32), 0.0, 0, 1).unwrap();
        }
        assert_eq!((totals.unread.len(), totals.logged_steps), (MAX_UNREAD_STEPS - 1, 0), "nothing read yet");
        totals.add(unread(MAX_UNREAD_STEPS as u64, MAX_UNREAD_STEPS as f32), 0.0, 0, 1).unwrap();
        assert_eq!((totals.unread.len(), totals.logged_steps), (0, MAX_UNREAD_STEPS as u64), "read at the bound");
        assert_eq!(crate::transfer::counts().since(before).downloads, 1);
        assert_eq!(totals.transfers, 1, "the read counts among the steps' transfers");
        let line = totals.line(&crate::config::Config::default(), (1024, 0), 0.1, 1.0);
        assert_eq!(line.loss_main, Some((1 + MAX_UNREAD_STEPS) as f64 / 2.0), "the mean of 1..=1024");
        assert_eq!(totals.last_read.grad_norm_main_e_aux, 3.0);
        assert_eq!(totals.last_read.grad_norm_aux_e_aux, 4.0);

        // A non-finite loss among them is named by its own step when read.
        totals.add(unread(1025, 0.5), 0.0, 0, 1).unwrap();
        totals.add(unread(1026, f32::NAN), 0.0, 0, 1).unwrap();
        totals.add(unread(1027, f32::INFINITY), 0.0, 0, 1).unwrap();
        let err = totals.read().unwrap_err().to_string();
        assert!(err.starts_with("step 1026: the main loss is NaN"), "{err}");
    }

    #[test]
    fn ranks_sharing_a_host_share_its_cores_unless_told_otherwise() {
        // (train.threads, OMP_NUM_THREADS set, processes on this host, cores) → threads
        let table = [
            ((0, false, 1, 16), None),
            ((0, false, 4, 16), Some(4)),
            ((0, false, 3, 16), Some(5)),
            ((0, false, 32, 16), Some(1)),
            ((0, true, 4, 16), None),
            ((2, false, 4, 16), Some(2)),
            ((2, true, 1, 16), Some(2)),
        ];
        for ((configured, omp, ranks, cores), want) in table {
            assert_eq!(threads_per_rank(configured, omp, ranks, cores), want, "{configured} {omp} {ranks} {cores}");
        }
    }

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
        std::thread::sleep(100 * nap); // a checkpoint, say
        r.resume();
        std::thread::sleep(nap);
        r.step_done(64);
        assert_eq!(r.samples, 128);
        // Two steps of ≥ 20 ms each; the 2 s pause between them is not counted (a loaded machine
        // may stretch the steps, never by that much).
        assert!(r.seconds >= 0.04 && r.seconds < 1.0, "{}", r.seconds);
    }
}
