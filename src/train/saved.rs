//! A saved model — a run directory (`config.toml` and the final `model.safetensors`) or a
//! checkpoint directory (its `state.json` holds the config) — loaded to score a dataset:
//! `micn eval` (metrics), `micn predict` (one score per sample, with its user and item) and
//! `micn export interests` (a MIND model's user interest vectors and item vectors).
use std::io::Write as _;
use std::path::{Path, PathBuf};

use tch::{Device, Tensor};

use super::trainer::{
    build_saved_model, check_history, evaluate_on, pick_device, score, validation_split, Built, EvalResult, EvalSet,
    TrainError,
};
use crate::checkpoint;
use crate::config::{Config, Device as DeviceChoice};
use crate::data::samples::ArchivedSamples;
use crate::data::Dataset;
use crate::dist::Communicator;
use crate::metrics::retrieval::{merge_top_n, retrieval_metrics, RetrievalMetrics};
use crate::model::embeddings::BatchIds;
use crate::network::Network;
use crate::run_dir::{RunDir, RunDirError};

/// Which samples `micn eval` and `micn predict` score.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Split {
    /// The test archive.
    Test,
    /// The validation split the run held out of the training archive (`data.valid_share`):
    /// reproduces the scores recorded in checkpoints.
    Valid,
    /// The rest of the training archive: the samples the run trained on.
    Train,
}

impl Split {
    /// How messages name it.
    pub fn name(self) -> &'static str {
        match self {
            Split::Test => "test",
            Split::Valid => "validation",
            Split::Train => "training",
        }
    }
}

/// A saved model loaded for scoring, with the dataset it scores.
struct Saved {
    cfg: Config,
    dataset: Dataset,
    net: Network,
    device: Device,
}

impl Saved {
    /// The model in `dir`, on `device` (else its configured one), for `data_dir` (else the
    /// dataset it was trained on, which another must match: the same vocabularies, histories
    /// long enough).
    fn load(
        dir: &Path,
        data_dir: Option<&Path>,
        device: Option<DeviceChoice>,
        comm: &dyn Communicator,
    ) -> Result<Self, TrainError> {
        // The vocabularies' digest recorded with the model, where it was.
        let (cfg, recorded, edited) = if dir.join("state.json").exists() {
            let state = checkpoint::verify_reading(dir)?;
            let cfg =
                Config::from_toml(&state.config, &dir.join("state.json")).map_err(checkpoint::CheckpointError::from)?;
            (cfg, state.vocabularies, None)
        } else {
            let run = RunDir::new(dir);
            let cfg = run.read_config()?;
            let damaged = |path: PathBuf, why: &dyn std::fmt::Display| -> TrainError {
                let message = format!("{why}: the run's summary is damaged; {}", run.newest_checkpoint());
                RunDirError::Invalid { path, message }.into()
            };
            // The run's end is its model, then its summary (which vouches for the model file,
            // the configuration and the vocabularies): without either, the run has not finished.
            let summary = match run.model().exists().then(|| run.read_summary()).transpose() {
                Ok(Some(Some(summary))) if summary.is_object() => summary,
                Ok(Some(Some(_))) => return Err(damaged(run.summary(), &"not a JSON object")),
                Ok(_) => {
                    // A run training now (exit status 1: the same command works once it ends).
                    let training = run.writer();
                    return Err(TrainError::Unfinished {
                        dir: dir.to_path_buf(),
                        remedy: run.newest_checkpoint(),
                        training,
                    });
                }
                Err(RunDirError::Invalid { path, message }) => return Err(damaged(path, &message)),
                Err(RunDirError::Io(e)) if e.source.kind() == std::io::ErrorKind::InvalidData => {
                    return Err(damaged(e.path, &e.source))
                }
                Err(e) => return Err(e.into()),
            };
            run.check_model(&summary)?;
            let edited = edited_config(&run, &cfg, &summary);
            (cfg, summary["vocabularies"].as_str().map(String::from), edited)
        };
        // A `--data` that names no dataset is the argument's fault, whatever the configuration.
        if let Some(given) = data_dir {
            super::run::check_dataset_there(given, "--data")?;
        }
        // What cannot be found or built from a configuration edited since is said to come from it
        // (an empty `config.toml` names the default dataset "trained on", and a default model).
        Self::load_configured(dir, cfg, recorded, data_dir, device, comm).map_err(|source| match edited {
            Some(how) => TrainError::EditedConfig { config: RunDir::new(dir).config(), how, source: Box::new(source) },
            None => source,
        })
    }

    /// [`load`](Self::load) once the configuration is read.
    fn load_configured(
        dir: &Path,
        mut cfg: Config,
        recorded: Option<String>,
        data_dir: Option<&Path>,
        device: Option<DeviceChoice>,
        comm: &dyn Communicator,
    ) -> Result<Self, TrainError> {
        let trained_on = cfg.data.dir.clone();
        // MFN's pretrained E and C are buffers of the model file: read from there, so that
        // scoring needs no other file (nor is changed by one that changed since).
        if cfg.model.mfn_pretrained.is_some() {
            cfg.model.mfn_pretrained = Some(RunDir::new(dir).model());
        }
        if let Some(choice) = device {
            cfg.device = choice;
        }
        if let Some(d) = data_dir {
            cfg.data.dir = d.to_path_buf();
        }
        super::run::use_threads(cfg.train.threads, comm);
        let device = pick_device(cfg.device, comm.local_rank())?;
        // (A `--data` was checked before the configuration was read.)
        if data_dir.is_none() && !cfg.data.dir.join("dataset.json").exists() {
            let relative = if cfg.data.dir.is_relative() { ", relative to the current directory" } else { "" };
            return Err(TrainError::DatasetGone { saved: dir.to_path_buf(), data: cfg.data.dir.clone(), relative });
        }
        let dataset = Dataset::open(&cfg.data.dir)?;
        check_history(&cfg, &dataset)?;
        // The digest recorded with the model decides (also where `data.dir` is the path trained
        // on, and a dataset was prepared there again since); the dataset at the path trained on,
        // where it still is the one, names the first difference. A model from before digests
        // were kept is compared with that path's vocabularies.
        match recorded {
            Some(recorded) if recorded != dataset.vocab.digest() => {
                let original = crate::data::vocab::Vocabularies::read(&trained_on).ok();
                if cfg.data.dir != trained_on && original.is_some_and(|v| v.digest() == recorded) {
                    check_same_vocabularies(&trained_on, &cfg.data.dir, &dataset)?;
                }
                return Err(TrainError::VocabulariesChanged { path: cfg.data.dir.clone(), saved: dir.to_path_buf() });
            }
            Some(_) => {}
            None if cfg.data.dir != trained_on => check_same_vocabularies(&trained_on, &cfg.data.dir, &dataset)?,
            None => {}
        }
        // A checkpoint directory keeps its model under the same name as a run directory.
        let model = RunDir::new(dir).model();
        let gone = |e| if dir.exists() { e } else { checkpoint::CheckpointError::Removed { path: dir.to_path_buf() } };
        let Built { mut vs, net } = build_saved_model(&cfg, &dataset, &model, device).map_err(|e| match e {
            TrainError::Checkpoint(e) => TrainError::Checkpoint(gone(e)),
            e => e,
        })?;
        checkpoint::load_var_store(&mut vs, &model).map_err(gone)?;
        Ok(Self { cfg, dataset, net, device })
    }

    /// The files it was read from: the saved model's in `dir`, the dataset's.
    fn inputs<'a>(&'a self, dir: &'a Path) -> impl Iterator<Item = PathBuf> + 'a {
        let data = &self.dataset;
        let data_files = std::iter::once("dataset.json").chain(data.meta.files().into_iter().map(|(name, _)| name));
        model_files(dir).chain(data_files.map(|f| data.dir.join(f)))
    }

    /// The MIND model, or why this saved model (in `dir`) has no interests.
    fn mind(&self, dir: &Path) -> Result<&crate::model::Mind, TrainError> {
        match &self.net.main {
            crate::model::MainModel::Mind(mind) => Ok(mind),
            _ => Err(TrainError::NoInterests { dir: dir.to_path_buf(), kind: self.cfg.model.kind.name() }),
        }
    }

    /// The archive `split` reads and its archive indices (every test sample for the test set).
    fn split_samples(&self, split: Split) -> Result<(&ArchivedSamples, Vec<u32>), TrainError> {
        let ids = self.ids(split)?;
        let (samples, set_ids) = eval_set(split, &ids).samples(&self.dataset);
        Ok((samples, set_ids.into_owned()))
    }

    /// Every item's vector `e` (row = item id, its category from the vocabulary), `[items, w]` on
    /// the model's device.
    fn item_vectors(&self) -> Tensor {
        let item_cat: Vec<i64> = self.dataset.vocab.item_cat.iter().map(|&c| i64::from(c)).collect();
        let items: Vec<i64> = (0..item_cat.len() as i64).collect();
        let upload = |v: &[i64]| crate::transfer::upload_i64(v, self.device);
        self.net.embeddings.item_vectors(&upload(&items), &upload(&item_cat))
    }

    /// The archive indices `split` scores (the test set's are all of its archive).
    fn ids(&self, split: Split) -> Result<Option<Vec<u32>>, TrainError> {
        Ok(match split {
            Split::Test => None,
            Split::Valid => {
                let valid = validation_split(&self.cfg, &self.dataset)?.valid;
                if valid.is_empty() {
                    return Err(TrainError::NoValidationSplit { share: self.cfg.data.valid_share });
                }
                Some(valid)
            }
            Split::Train => Some(validation_split(&self.cfg, &self.dataset)?.train),
        })
    }
}

fn eval_set(split: Split, ids: &Option<Vec<u32>>) -> EvalSet<'_> {
    match (split, ids) {
        (Split::Valid, Some(ids)) => EvalSet::Valid(ids),
        (Split::Train, Some(ids)) => EvalSet::Train(ids),
        _ => EvalSet::Test,
    }
}

/// `micn eval`: the metrics of a saved model on `split`.
pub fn eval_saved(
    dir: &Path,
    data_dir: Option<&Path>,
    split: Split,
    device: Option<DeviceChoice>,
    comm: &dyn Communicator,
) -> Result<EvalResult, TrainError> {
    let (ids, saved) = loaded_on_every_rank(Saved::load(dir, data_dir, device, comm), split, comm)?;
    let set = eval_set(split, &ids);
    evaluate_on(&saved.net, &saved.dataset, set, comm, saved.device, saved.cfg.data.max_hist_len).map_err(|e| match e {
        TrainError::Scores { source: crate::metrics::MetricError::NanScores { nan, total }, .. } => {
            not_finite(dir, set, nan, total)
        }
        e => e,
    })
}

/// The model every rank `loaded` (with its checks), the same dataset on every rank (hosts holding
/// other data at the same path would score other samples), and the samples of `split`: each
/// refusal said once, by the lowest rank that meets it.
fn loaded_on_every_rank(
    loaded: Result<Saved, TrainError>,
    split: Split,
    comm: &dyn Communicator,
) -> Result<(Option<Vec<u32>>, Saved), TrainError> {
    use super::run::{agree_all, same_dataset};
    let saved = agree_all(comm, loaded, "load the model")?;
    agree_all(comm, same_dataset(comm, &saved.dataset), "compare the ranks' datasets")?;
    let ids = agree_all(comm, saved.ids(split), "take the split's samples")?;
    Ok((ids, saved))
}

/// The error of a saved model (in `dir`) whose scores of `set` are NaN.
fn not_finite(dir: &Path, set: EvalSet<'_>, nan: usize, total: usize) -> TrainError {
    TrainError::ScoresNotFinite { path: RunDir::new(dir).model(), set: set.name(), nan, total }
}

/// How `micn predict` writes its scores.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    /// `sample,user,user_key,item,label,score` with a header line.
    Csv,
    /// One JSON object per line with the same fields.
    Jsonl,
}

impl Format {
    /// The format a file name implies (`.csv`, `.jsonl` or `.json`), if any.
    pub fn of(path: &Path) -> Option<Self> {
        match path.extension()?.to_str()? {
            "csv" => Some(Self::Csv),
            "jsonl" | "json" => Some(Self::Jsonl),
            _ => None,
        }
    }
}

/// What `micn predict` wrote.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Predicted {
    pub out: PathBuf,
    pub samples: u64,
    pub split: &'static str,
}

/// `micn predict`: every sample of `split` scored by the saved model, written to `out` by rank 0
/// (whole or not at all) with its archive index, user (its name in the vocabulary, and the key
/// that tells apart users the vocabulary maps to its unknown entry), item, label and click
/// probability — the same scores `micn eval` computes its metrics from.
pub fn predict(
    dir: &Path,
    data_dir: Option<&Path>,
    split: Split,
    device: Option<DeviceChoice>,
    comm: &dyn Communicator,
    (out, format): (&Path, Format),
) -> Result<Predicted, TrainError> {
    let loaded = check_not_in_a_run(out).and_then(|()| {
        let saved = Saved::load(dir, data_dir, device, comm)?;
        check_not_an_input(out, saved.inputs(dir))?;
        Ok(saved)
    });
    let (ids, saved) = loaded_on_every_rank(loaded, split, comm)?;
    let set = eval_set(split, &ids);
    let scores = score(&saved.net, &saved.dataset, set, comm, saved.device, saved.cfg.data.max_hist_len)?;
    let nan = scores.probs.iter().filter(|p| p.is_nan()).count();
    if nan > 0 {
        return Err(not_finite(dir, set, nan, scores.probs.len()));
    }
    if comm.rank() == 0 {
        let samples = match split {
            Split::Test => saved.dataset.test.samples(),
            Split::Valid | Split::Train => saved.dataset.train.samples(),
        };
        let vocab = &saved.dataset.vocab;
        crate::io_error::replace_file(out, |tmp| {
            let mut w = std::io::BufWriter::new(std::fs::File::create(tmp)?);
            if format == Format::Csv {
                writeln!(w, "sample,user,user_key,item,label,score")?;
            }
            for (k, &i) in scores.ids.iter().enumerate() {
                let i = i as usize;
                let user = &vocab.users.names[samples.users[i].to_native() as usize];
                let item = &vocab.items.names[samples.items[i].to_native() as usize];
                let (key, label, p) = (scores.user_keys[k], scores.labels[k], scores.probs[k]);
                match format {
                    Format::Csv => writeln!(w, "{i},{},{key},{},{label},{p}", csv_field(user), csv_field(item))?,
                    Format::Jsonl => {
                        let line = serde_json::json!({
                            "sample": i, "user": user, "user_key": key, "item": item, "label": label, "score": p,
                        });
                        writeln!(w, "{line}")?
                    }
                }
            }
            w.into_inner().map_err(|e| e.into_error())?.sync_all()
        })?;
    }
    comm.barrier()?;
    Ok(Predicted { out: out.to_path_buf(), samples: scores.ids.len() as u64, split: set.name() })
}

/// How the run's `config.toml`, read as `cfg`, is not the one the run saved, as its summary
/// tells: another hash of the file, or (an older summary) another model.
fn edited_config(run: &RunDir, cfg: &Config, summary: &serde_json::Value) -> Option<String> {
    let text = std::fs::read_to_string(run.config()).ok()?;
    match summary["config_hash"].as_str() {
        Some(saved) => {
            let hash = checkpoint::config_hash(&text);
            (hash != saved).then(|| format!("its hash is {hash}, summary.json's config_hash {saved}"))
        }
        None => {
            let (model, micn) = (summary["model"].as_str()?, summary["micn"].as_bool()?);
            let configured = (cfg.model.kind.name(), cfg.micn.enabled);
            (configured != (model, micn)).then(|| {
                let plus = |micn: bool| if micn { " + MICN" } else { "" };
                format!(
                    "it configures {}{}, summary.json says {model}{} was trained",
                    configured.0,
                    plus(configured.1),
                    plus(micn)
                )
            })
        }
    }
}

/// The files of a saved model (a run's end or a checkpoint) in `dir`.
fn model_files(dir: &Path) -> impl Iterator<Item = PathBuf> + '_ {
    ["model.safetensors", "state.json", "manifest.json", "config.toml", "summary.json"].into_iter().map(|f| dir.join(f))
}

/// Refuse an `out` that is part of a run ([`RunDir::part_of_a_run`]): its model, metrics or log,
/// a checkpoint, whichever run it is (the scored one or another).
fn check_not_in_a_run(out: &Path) -> Result<(), TrainError> {
    match crate::run_dir::RunDir::part_of_a_run(out) {
        Some(what) => Err(TrainError::OutputInRun { out: out.to_path_buf(), what }),
        None => Ok(()),
    }
}

/// Refuse an `out` that is one of `inputs` (the saved model's files, the dataset's), which writing
/// it would replace before the next command reads them; other files beside them (an earlier
/// prediction) may be replaced.
fn check_not_an_input(out: &Path, mut inputs: impl Iterator<Item = PathBuf>) -> Result<(), TrainError> {
    use std::os::unix::fs::MetadataExt as _;
    let Ok(target) = std::fs::metadata(out) else { return Ok(()) };
    let is_target = |path: PathBuf| {
        std::fs::metadata(path).is_ok_and(|m| m.is_file() && (m.dev(), m.ino()) == (target.dev(), target.ino()))
    };
    match inputs.any(is_target) {
        true => Err(TrainError::OutputIsInput(out.to_path_buf())),
        false => Ok(()),
    }
}

/// Settings of Algorithm 1 for `micn export mfn-centres`.
#[derive(Debug, Clone)]
pub struct CentreSettings {
    /// Centres `K` (the MFN model's `model.mfn_interests`).
    pub interests: usize,
    /// Gradient steps.
    pub steps: usize,
    /// Histories per step, drawn uniformly with replacement.
    pub batch: usize,
    /// Learning rate of Algorithm 1's step (Adam's).
    pub lr: f64,
    /// Seed of the draws (histories and the initial centres).
    pub seed: u64,
}

/// What `micn export mfn-centres` wrote.
#[derive(Debug, Clone, serde::Serialize)]
pub struct ExportedCentres {
    pub out: PathBuf,
    pub items: i64,
    pub width: i64,
    pub interests: usize,
    /// Algorithm 1's objective (Eq. 3) at the first and the last step.
    pub first_objective: f64,
    pub last_objective: f64,
    /// Items of the vocabulary (padding aside) closest to each centre.
    pub items_per_centre: Vec<i64>,
}

/// `micn export mfn-centres`: MFN's fixed item embeddings and pretrained interest centres from a
/// trained model in `dir` (a vanilla model of any kind; its item vectors `e` become `E`), the
/// centres by Algorithm 1 over histories of the run's training samples (its validation split left
/// out). Writes `out` (safetensors: `items [items, w]`, `centres [K, w]`) for `model.mfn_pretrained`.
pub fn export_mfn_centres(
    dir: &Path,
    data_dir: Option<&Path>,
    device: Option<DeviceChoice>,
    settings: &CentreSettings,
    out: &Path,
) -> Result<ExportedCentres, TrainError> {
    use crate::model::mfn::{pretrain_centres, Pretrained};
    check_not_in_a_run(out)?;
    let saved = Saved::load(dir, data_dir, device, &crate::dist::SingleProcess)?;
    check_not_an_input(out, saved.inputs(dir))?;
    let (samples, train_ids) = saved.split_samples(Split::Train)?;
    let items = tch::no_grad(|| saved.item_vectors());
    let (n, width) = (items.size()[0], items.size()[1]);
    let k = settings.interests;
    if train_ids.is_empty() || n <= k as i64 {
        return Err(TrainError::TooFewForCentres { dir: dir.to_path_buf(), samples: train_ids.len(), items: n, k });
    }
    let mut rng = crate::rng::Rng::new(settings.seed);
    // Initial centres: the vectors of K distinct items (padding aside), as k-means starts.
    let mut chosen: Vec<i64> = Vec::with_capacity(k);
    while chosen.len() < k {
        let item = 1 + rng.below(n as u64 - 1) as i64;
        if !chosen.contains(&item) {
            chosen.push(item);
        }
    }
    let initial = items.index_select(0, &crate::transfer::upload_i64(&chosen, saved.device));
    let max_hist_len = saved.cfg.data.max_hist_len;
    let batches = (0..settings.steps).map(|_| {
        let ids: Vec<u32> =
            (0..settings.batch).map(|_| train_ids[rng.below(train_ids.len() as u64) as usize]).collect();
        let batch = crate::data::loader::eval_batches(samples, &ids, 0, 1, ids.len(), max_hist_len)
            .next()
            .expect("--batch is at least 1: one batch of its samples");
        let x = BatchIds::from_batch(&batch, saved.device);
        (x.hist_items, x.hist_mask)
    });
    let (centres, objective) = pretrain_centres(&items, &initial, batches, settings.lr);
    let (first, last) = (objective.first().copied().unwrap_or(f64::NAN), objective.last().copied().unwrap_or(f64::NAN));
    if !last.is_finite() || crate::transfer::download_i64(&centres.isfinite().all()) != [1] {
        return Err(TrainError::CentresDiverged {
            dir: dir.to_path_buf(),
            first,
            last,
            steps: settings.steps,
            lr: settings.lr,
        });
    }
    let nearest = items.narrow(0, 1, n - 1).matmul(&centres.tr()).argmax(-1, false);
    let items_per_centre = crate::transfer::download_i64(&nearest.bincount::<Tensor>(None, k as i64));
    let pretrained =
        Pretrained { items: items.to_device(tch::Device::Cpu), centres: centres.to_device(tch::Device::Cpu) };
    pretrained.write(out)?;
    Ok(ExportedCentres {
        out: out.to_path_buf(),
        items: n,
        width,
        interests: k,
        first_objective: first,
        last_objective: last,
        items_per_centre,
    })
}

/// What `micn export interests` wrote.
#[derive(Debug, Clone, serde::Serialize)]
pub struct ExportedInterests {
    pub out: PathBuf,
    pub split: &'static str,
    pub samples: u64,
    pub items: u64,
    /// Most interests per user (`model.mind_interests`).
    pub interests: i64,
    /// Width of an interest and an item vector.
    pub width: i64,
}

/// `micn export interests`: for every sample of `split`, the interest vectors a MIND model
/// extracts from the sample's history and which of them are active, and every item's vector `e`
/// in the same space (the label-aware attention compares them there): what an approximate
/// nearest-neighbour index of items and a retrieval per interest need. Written to `out` whole or
/// not at all (replacing an earlier export of interests; another directory is refused) as NumPy
/// arrays: `interests.npy`
/// `[n, K, w]` f32, `active.npy` `[n, K]` f32 (1 for the user's `K_u` interests),
/// `sample.npy` `[n]` i64 (archive index, `micn predict`'s number), `users.npy` `[n]` i64,
/// `items.npy` `[items, w]` f32 (row = item id, its category from the vocabulary) and
/// `interests.json`. One process.
pub fn export_interests(
    dir: &Path,
    data_dir: Option<&Path>,
    split: Split,
    device: Option<DeviceChoice>,
    out: &Path,
) -> Result<ExportedInterests, TrainError> {
    use crate::data::export::NpyWriter;
    check_not_in_a_run(out)?;
    let saved = Saved::load(dir, data_dir, device, &crate::dist::SingleProcess)?;
    let mind = saved.mind(dir)?;
    let (samples, set_ids) = saved.split_samples(split)?;
    // Built beside `out`, which it replaces whole: an earlier export of interests, or an empty
    // directory; anything else there (another tool's arrays) is refused, untouched.
    let written = ["interests.json", "interests.npy", "active.npy", "sample.npy", "users.npy", "items.npy"];
    let staging = crate::data::prepare::Staging::replacing(out, &written)?;
    let file = |name: &str| staging.tmp.join(name);
    let (n, max_hist_len) = (set_ids.len(), saved.cfg.data.max_hist_len);
    let (k, item_vectors) = tch::no_grad(|| (mind.k_max(), saved.item_vectors()));
    let (n_items, width) = (item_vectors.size()[0], item_vectors.size()[1]);
    let (k_usize, w_usize) = (k as usize, width as usize);
    // Each batch's arrays are written as they are computed: the export holds one batch.
    let mut interests = NpyWriter::<f32>::create(&file("interests.npy"), &[n, k_usize, w_usize]);
    let mut active = NpyWriter::<f32>::create(&file("active.npy"), &[n, k_usize]);
    let [mut sample, mut users] = ["sample.npy", "users.npy"].map(|name| NpyWriter::<i64>::create(&file(name), &[n]));
    tch::no_grad(|| {
        for batch in crate::data::loader::eval_batches(samples, &set_ids, 0, 1, 1024, max_hist_len) {
            let x = saved.net.embeddings.forward(&BatchIds::from_batch(&batch, saved.device)).main;
            let (vectors, is_active) = mind.interests(&x.hist, &x.hist_mask);
            interests.put(&crate::transfer::download_f32(&vectors));
            active.put(&crate::transfer::download_f32(&is_active));
            sample.put(&batch.sample_ids.iter().map(|&i| i64::from(i)).collect::<Vec<_>>());
            users.put(&batch.users);
        }
    });
    let mut items = NpyWriter::<f32>::create(&file("items.npy"), &[n_items as usize, w_usize]);
    items.put(&crate::transfer::download_f32(&item_vectors));
    for writer in [interests, active, items] {
        writer.finish()?;
    }
    for writer in [sample, users] {
        writer.finish()?;
    }
    let done = ExportedInterests {
        out: out.to_path_buf(),
        split: split.name(),
        samples: n as u64,
        items: n_items as u64,
        interests: k,
        width,
    };
    let text = serde_json::to_string_pretty(&done).expect("plain values serialise") + "\n";
    staging.write("interests.json", text.as_bytes())?;
    staging.commit()?;
    Ok(done)
}

/// `micn eval --retrieval N…`: next-item retrieval by a MIND model's interests. For every clicked
/// sample of `split` (label 1), each active interest retrieves its top N items by inner product
/// over every item of the vocabulary (the padding / unknown id 0 left out), the interests' lists
/// are merged as ComiRec merges them, and the sample's target is the held-out item
/// ([`crate::metrics::retrieval`]); one result per N. A target the vocabulary does not hold (id
/// 0) cannot be retrieved: a miss, as `--heldout` counts one; how many there were comes second.
/// One process.
pub fn retrieval_saved(
    dir: &Path,
    data_dir: Option<&Path>,
    split: Split,
    device: Option<DeviceChoice>,
    ns: &[usize],
) -> Result<(Vec<RetrievalMetrics>, usize), TrainError> {
    let saved = Saved::load(dir, data_dir, device, &crate::dist::SingleProcess)?;
    let retriever = Retriever::new(&saved, dir, ns)?;
    let (samples, set_ids) = saved.split_samples(split)?;
    let clicked = set_ids.iter().copied().filter(|&i| f32::from(samples.labels[i as usize]) > 0.5);
    let (known, unknown): (Vec<u32>, Vec<u32>) =
        clicked.partition(|&i| crate::data::batch::is_positive_sample(samples, i));
    let mut lists: Vec<(Vec<u32>, Vec<u32>)> = Vec::with_capacity(known.len() + unknown.len());
    for batch in crate::data::loader::eval_batches(samples, &known, 0, 1, retriever.rows, saved.cfg.data.max_hist_len) {
        let targets = batch.items.iter().map(|&target| vec![target as u32]);
        lists.extend(retriever.lists(&batch).into_iter().zip(targets));
    }
    lists.extend(unknown.iter().map(|_| (Vec::new(), vec![0])));
    Ok((metrics_at(ns, &lists), unknown.len()))
}

/// What `micn eval --retrieval N,… --heldout FILE` measured: ComiRec's protocol on users the
/// model never trained on, beside the most popular items as ComiRec's own baseline.
#[derive(Debug, Clone, serde::Serialize)]
pub struct HeldOutRetrieval {
    pub file: PathBuf,
    pub users: usize,
    #[serde(flatten)]
    pub held_out: crate::data::interactions::HeldOut,
    /// The model's retrieval at each N.
    pub model: Vec<RetrievalMetrics>,
    /// Every user offered the N most popular items (ties by vocabulary id): ComiRec's
    /// `MostPopular`.
    pub most_popular: Vec<RetrievalMetrics>,
    /// What ranked them ([`Popularity`]).
    pub most_popular_by: Popularity,
}

/// What ranks the items of ComiRec's `MostPopular` baseline.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Popularity {
    /// Every interaction the preparation read (ComiRec counts every line of its training file).
    Interactions,
    /// The clicked targets of the training samples: for datasets prepared before the
    /// interactions were kept, and DIEN's files.
    ClickedSamples,
}

/// `micn eval --retrieval N,… --heldout FILE`: the users of a held-out file
/// ([`crate::data::interactions::HeldOut`]), each retrieving by the interests of its seen
/// history, scored against the rest of its history.
pub fn retrieval_heldout(
    dir: &Path,
    data_dir: Option<&Path>,
    device: Option<DeviceChoice>,
    file: &Path,
    ns: &[usize],
) -> Result<HeldOutRetrieval, TrainError> {
    use crate::data::interactions::HeldOut;
    let saved = Saved::load(dir, data_dir, device, &crate::dist::SingleProcess)?;
    let retriever = Retriever::new(&saved, dir, ns)?;
    let vocab = &saved.dataset.vocab;
    let names: std::collections::HashMap<&str, u32> =
        vocab.items.names.iter().enumerate().skip(1).map(|(id, name)| (name.as_str(), id as u32)).collect();
    let held_out = HeldOut::read(file, &names, saved.cfg.data.max_hist_len)?;
    let with_history: Vec<&[u32]> =
        held_out.users.iter().map(|u| u.history.as_slice()).filter(|h| !h.is_empty()).collect();
    let mut retrieved = Vec::with_capacity(with_history.len());
    for chunk in with_history.chunks(retriever.rows) {
        let batch = crate::data::batch::Batch::of_histories(chunk, &vocab.item_cat);
        retrieved.extend(retriever.lists(&batch));
    }
    // A user without a known history item retrieves nothing.
    let mut retrieved = retrieved.into_iter();
    let lists: Vec<(Vec<u32>, &[u32])> = held_out
        .users
        .iter()
        .map(|u| {
            let list = if u.history.is_empty() { Vec::new() } else { retrieved.next().unwrap_or_default() };
            (list, u.truth.as_slice())
        })
        .collect();
    // Every user is offered the same most popular items.
    let (popular, most_popular_by) = saved.most_popular(retriever.top);
    let popular: Vec<(&[u32], &[u32])> = lists.iter().map(|&(_, truth)| (popular.as_slice(), truth)).collect();
    let (model, most_popular) = (metrics_at(ns, &lists), metrics_at(ns, &popular));
    let users = held_out.users.len();
    Ok(HeldOutRetrieval { file: file.to_path_buf(), users, model, most_popular, most_popular_by, held_out })
}

/// The metrics at each of `ns` over `(recommended, held-out items)` lists.
fn metrics_at<R: AsRef<[u32]>, T: AsRef<[u32]>>(ns: &[usize], lists: &[(R, T)]) -> Vec<RetrievalMetrics> {
    ns.iter().map(|&n| retrieval_metrics(lists.iter().map(|(r, t)| (r.as_ref(), t.as_ref())), n)).collect()
}

/// A MIND model's retrieval over every item but padding (item 0, also the unknown item).
struct Retriever<'a> {
    saved: &'a Saved,
    mind: &'a crate::model::Mind,
    /// Every item's vector, `[I, w]`.
    items: Tensor,
    /// 1 for an item that may be retrieved, 0 for padding, `[1, 1, I]`.
    retrievable: Tensor,
    /// How many items each interest retrieves: the largest N, below the number of items.
    top: usize,
    /// Users scored at once: their `[rows, K, I]` scores stay within [`Retriever::SCORES`].
    rows: usize,
}

impl<'a> Retriever<'a> {
    /// Most scores held at once (256 MB of f32): ComiRec's Books has 367,982 items, so 256
    /// users' 4 interests would score 1.5 GB at once.
    const SCORES: usize = 1 << 26;

    fn new(saved: &'a Saved, dir: &Path, ns: &[usize]) -> Result<Self, TrainError> {
        let mind = saved.mind(dir)?;
        let items = tch::no_grad(|| saved.item_vectors());
        let n_items = items.size()[0];
        let padding = crate::transfer::upload_i64(&[0], saved.device);
        let retrievable =
            Tensor::ones([n_items], (items.kind(), saved.device)).index_fill(0, &padding, 0.0).view([1, 1, n_items]);
        // Row 0 is padding: never retrieved.
        let catalogue = n_items.saturating_sub(1) as usize;
        let top = ns.iter().copied().max().unwrap_or(0);
        if top >= catalogue {
            return Err(TrainError::RetrievalListTooLong { n: top, items: catalogue });
        }
        let rows = (Self::SCORES / (mind.k_max() * n_items).max(1) as usize).clamp(1, 256);
        Ok(Self { saved, mind, items, retrievable, top, rows })
    }

    /// Each row's merged top `top` items, retrieved by the active interests of its history.
    fn lists(&self, batch: &crate::data::batch::Batch) -> Vec<Vec<u32>> {
        let top = self.top;
        tch::no_grad(|| {
            let x = self.saved.net.embeddings.forward(&BatchIds::from_batch(batch, self.saved.device)).main;
            let (interests, active) = self.mind.interests(&x.hist, &x.hist_mask); // [b, K, w], [b, K]
            let scores = interests.matmul(&self.items.tr()); // [b, K, I]
            let usable = active.unsqueeze(-1) * &self.retrievable;
            let scores = scores.masked_fill(&usable.le(0.5), f64::NEG_INFINITY);
            let (values, indices) = top_by_score_then_id(&scores, top); // [b, K, top]
            let (values, indices) = (crate::transfer::download_f32(&values), crate::transfer::download_i64(&indices));
            let k = interests.size()[1] as usize;
            (0..batch.items.len())
                .map(|row| {
                    let per_interest: Vec<Vec<(u32, f32)>> = (0..k)
                        .map(|j| {
                            let at = (row * k + j) * top;
                            (at..at + top)
                                .filter(|&p| values[p].is_finite())
                                .map(|p| (indices[p] as u32, values[p]))
                                .collect()
                        })
                        .collect();
                    merge_top_n(&per_interest, top)
                })
                .collect()
        })
    }
}

/// The `top` highest scores along the last dimension (which holds more than `top`) and their
/// indices (item ids), equal scores by ascending id. `topk` alone picks arbitrarily among the
/// items whose score equals its last one; a tie crosses the end of the list exactly when the next
/// score equals that one (a finite score): only then does a stable sort decide.
fn top_by_score_then_id(scores: &Tensor, top: usize) -> (Tensor, Tensor) {
    let top = top as i64;
    debug_assert!(scores.size().last().is_some_and(|&n| n > top), "a list as long as the catalogue");
    let (values, indices) = scores.topk(top + 1, -1, true, true);
    let (last, next) = (values.select(-1, top - 1), values.select(-1, top));
    let tied = last.eq_tensor(&next).logical_and(&last.isfinite()).any();
    if crate::transfer::download_i64(&tied)[0] == 0 {
        return (values.narrow(-1, 0, top), indices.narrow(-1, 0, top));
    }
    let (sorted, order) = scores.sort_stable(true, -1, true);
    (sorted.narrow(-1, 0, top), order.narrow(-1, 0, top))
}

impl Saved {
    /// The `top` most popular items, most popular first (ties by vocabulary id; never item 0):
    /// by every interaction the preparation read where the dataset kept them, as ComiRec ranks
    /// them, else by how often each is the clicked target of a training sample.
    fn most_popular(&self, top: usize) -> (Vec<u32>, Popularity) {
        let (counts, by) = match &self.dataset.item_interactions {
            Some(counts) => (std::borrow::Cow::Borrowed(counts), Popularity::Interactions),
            None => {
                let samples = self.dataset.train.samples();
                let mut clicks = vec![0u64; self.dataset.vocab.items.len()];
                for i in (0..samples.len() as u32).filter(|&i| crate::data::batch::is_positive_sample(samples, i)) {
                    clicks[samples.items[i as usize].to_native() as usize] += 1;
                }
                (std::borrow::Cow::Owned(clicks), Popularity::ClickedSamples)
            }
        };
        let mut items: Vec<u32> = (1..counts.len() as u32).collect();
        items.sort_by_key(|&i| (std::cmp::Reverse(counts[i as usize]), i));
        items.truncate(top);
        (items, by)
    }
}

/// A CSV field, quoted when it holds a comma, a quote or a line break (RFC 4180).
fn csv_field(text: &str) -> std::borrow::Cow<'_, str> {
    if text.contains([',', '"', '\n', '\r']) {
        format!("\"{}\"", text.replace('"', "\"\"")).into()
    } else {
        text.into()
    }
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
        ("user", describe_difference(&a.users.names, &b.users.names)),
        ("item", describe_difference(&a.items.names, &b.items.names)),
        ("category", describe_difference(&a.cats.names, &b.cats.names)),
        ("item → category", describe_difference(&a.item_cat, &b.item_cat)),
    ];
    match differing.into_iter().find_map(|(which, d)| Some((which, d?))) {
        None => Ok(()),
        Some((which, how)) => Err(TrainError::VocabularyMismatch {
            path: given.to_path_buf(),
            trained_on: trained_on.to_path_buf(),
            detail: format!("its {which} vocabulary {how}"),
        }),
    }
}

/// How the vocabulary `now` differs from the model's `trained`, or nothing when they are equal.
fn describe_difference<T: PartialEq>(trained: &[T], now: &[T]) -> Option<String> {
    if trained.len() != now.len() {
        return Some(format!("has {} entries, the model's {}", now.len(), trained.len()));
    }
    let at = trained.iter().zip(now).position(|(a, b)| a != b)?;
    Some(format!("differs from the model's at entry {at} (of {} in both)", now.len()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_vocabulary_difference_is_said_by_size_or_by_its_first_differing_entry() {
        assert_eq!(describe_difference(&["a", "b"], &["a", "b"]), None);
        assert_eq!(describe_difference(&["a", "b"], &["a"]).unwrap(), "has 1 entries, the model's 2");
        let same_size = describe_difference(&[0u32, 1, 2], &[0, 2, 1]).unwrap();
        assert_eq!(same_size, "differs from the model's at entry 1 (of 3 in both)");
    }

    #[test]
    fn retrieval_takes_tied_items_by_id_whatever_the_list_length() {
        crate::model::testing::one_thread();
        // One interest scores item 700 highest and every other item 0 (a tie far longer than any
        // list); another is inactive (-inf everywhere); padding (item 0) is -inf.
        let items = 2000;
        let mut tied = vec![0f32; items];
        (tied[0], tied[700]) = (f32::NEG_INFINITY, 1.0);
        let scores = Tensor::stack(
            &[
                Tensor::from_slice(&tied),
                Tensor::full([items as i64], f64::NEG_INFINITY, (tch::Kind::Float, Device::Cpu)),
            ],
            0,
        )
        .view([1, 2, items as i64]);
        for top in [3, 10, 50, 200] {
            let (values, indices) = top_by_score_then_id(&scores, top);
            let ids = Vec::<i64>::try_from(indices.get(0).get(0)).unwrap();
            let expected: Vec<i64> = std::iter::once(700).chain(1..top as i64).collect();
            assert_eq!(ids, expected, "top {top}");
            assert!(Vec::<f32>::try_from(values.get(0).get(1)).unwrap().iter().all(|v| v.is_infinite()));
        }
        // Without ties at its end, topk's own list.
        let distinct = Tensor::arange(items as i64, (tch::Kind::Float, Device::Cpu)).view([1, 1, items as i64]);
        let (_, indices) = top_by_score_then_id(&distinct, 4);
        assert_eq!(Vec::<i64>::try_from(indices.flatten(0, -1)).unwrap(), [1999, 1998, 1997, 1996]);
    }

    #[test]
    fn csv_fields_are_quoted_only_when_they_must_be() {
        assert_eq!(csv_field("B000031KIM"), "B000031KIM");
        assert_eq!(csv_field("a,b"), "\"a,b\"");
        assert_eq!(csv_field("say \"hi\""), "\"say \"\"hi\"\"\"");
        assert_eq!(Format::of(Path::new("x/scores.csv")), Some(Format::Csv));
        assert_eq!(Format::of(Path::new("scores.jsonl")), Some(Format::Jsonl));
        assert_eq!(Format::of(Path::new("scores.txt")), None);
    }
}
