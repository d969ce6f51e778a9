//! A saved model — a run directory (`config.toml` and the final `model.safetensors`) or a
//! checkpoint directory (its `state.json` holds the config) — loaded to score a dataset:
//! `micn eval` (metrics) and `micn predict` (one score per sample, with its user and item).
use std::io::Write as _;
use std::path::{Path, PathBuf};

use tch::Device;

use super::trainer::{
    build_model, check_history, evaluate_on, pick_device, score, validation_split, Built, EvalResult, EvalSet,
    TrainError,
};
use crate::checkpoint;
use crate::config::{Config, Device as DeviceChoice};
use crate::data::Dataset;
use crate::dist::Communicator;
use crate::network::Network;
use crate::run_dir::RunDir;

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
        let mut cfg = if dir.join("state.json").exists() {
            let state = checkpoint::verify(dir)?;
            Config::from_toml(&state.config, &dir.join("state.json")).map_err(checkpoint::CheckpointError::from)?
        } else {
            RunDir::new(dir).read_config()?
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
        // A checkpoint directory keeps its model under the same name as a run directory.
        checkpoint::load_var_store(&mut vs, &RunDir::new(dir).model())?;
        Ok(Self { cfg, dataset, net, device })
    }

    /// The archive indices `split` scores (the test set's are all of its archive).
    fn ids(&self, split: Split) -> Result<Option<Vec<u32>>, TrainError> {
        Ok(match split {
            Split::Test => None,
            Split::Valid => Some(validation_split(&self.cfg, &self.dataset)?.valid),
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
    let saved = Saved::load(dir, data_dir, device, comm)?;
    let ids = saved.ids(split)?;
    evaluate_on(&saved.net, &saved.dataset, eval_set(split, &ids), comm, saved.device, saved.cfg.data.max_hist_len)
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
    let saved = Saved::load(dir, data_dir, device, comm)?;
    let ids = saved.ids(split)?;
    let set = eval_set(split, &ids);
    let scores = score(&saved.net, &saved.dataset, set, comm, saved.device, saved.cfg.data.max_hist_len)?;
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

#[cfg(test)]
mod tests {
    use super::*;

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
