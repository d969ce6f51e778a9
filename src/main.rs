//! The `micn` command: parse arguments, start the communicator (MPI under `mpirun`), set up
//! logging with the rank, and call the library. No logic of its own.
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand};
use micn::bench::BenchDevice;
use micn::data::protocol::Protocol;
use micn::data::synth::Preset;
use micn::dist::{self, Backend, Communicator};
use micn::doctor::MpiInfo;
use micn::logging::{self, LogFormat};

/// Command-line errors as JSON lines, shared with `micn-launch` (which never links libtorch, so it
/// cannot use this crate).
#[path = "../launcher/src/usage.rs"]
mod usage;

#[derive(Parser)]
#[command(name = "micn", version = env!("MICN_CODE_VERSION"), about = "Data-parallel CTR training with the MICN auxiliary task")]
struct Cli {
    /// Log lines as readable text or as JSON objects (standard error).
    #[arg(long, value_enum, default_value_t = LogFormat::Text, global = true)]
    log_format: LogFormat,
    /// Communicator: `auto` uses MPI when started by mpirun, else a single process.
    #[arg(long, value_enum, default_value_t = Backend::Auto, global = true)]
    comm: Backend,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Report libtorch, CUDA, MPI, the rank layout and thread settings.
    Doctor {
        /// Print the report as JSON.
        #[arg(long)]
        json: bool,
        /// Also run every collective operation across the ranks and check the results.
        #[arg(long)]
        check_comm: bool,
    },
    /// Generate synthetic Amazon-like raw files (2014 formats) with the generator's oracle.
    Synth(SynthArgs),
    /// Turn raw Amazon dumps or DIEN's files into a dataset directory.
    Prepare(PrepareArgs),
    /// Train a model (single process, or every rank under mpirun).
    Train(TrainArgs),
    /// Score a test set with a saved model: the end of a run, or a checkpoint.
    Eval(EvalArgs),
    /// Score every sample of a split with a saved model: one line per sample with its user,
    /// item, label and click probability (CSV or JSON lines), the scores `eval` measures.
    Predict(PredictArgs),
    /// What a saved model computes, for other tools.
    Export {
        #[command(subcommand)]
        command: ExportCommand,
    },
    /// Train a configuration over a grid of settings, each repeated with another seed; re-running
    /// the same command skips finished runs and resumes unfinished ones. Ends with a report.
    Sweep(SweepArgs),
    /// Tables (mean ± std over repeats) and plots of the finished runs under some directories.
    Report {
        /// Run directories, or directories that hold them (a sweep's --out).
        #[arg(required = true)]
        dirs: Vec<PathBuf>,
        /// Where report.md, report.csv and the figures go.
        #[arg(long)]
        out: PathBuf,
    },
    /// Benchmarks (results as tables on standard output).
    Bench {
        #[command(subcommand)]
        command: BenchCommand,
    },
    /// Inspect or verify a checkpoint directory.
    Checkpoint {
        #[command(subcommand)]
        command: CheckpointCommand,
    },
    /// Inspect a prepared dataset.
    Data {
        #[command(subcommand)]
        command: DataCommand,
    },
}

#[derive(Args)]
struct TrainArgs {
    /// Configuration file (TOML).
    #[arg(long)]
    config: PathBuf,
    /// Override `section.key=value` (repeatable; the value is read as TOML).
    #[arg(long = "set")]
    sets: Vec<String>,
    /// Continue from a checkpoint: `auto` (the newest valid one under run.dir/checkpoints, or a
    /// fresh start when run.dir holds no run) or a checkpoint directory (of this run.dir, whose
    /// later checkpoints are then moved to run.dir/abandoned/, or of another run into a new run.dir).
    #[arg(long, conflicts_with = "overwrite")]
    resume: Option<String>,
    /// Start afresh in a run directory that already holds a run, deleting that run
    /// (without it, such a directory is refused).
    #[arg(long)]
    overwrite: bool,
    /// Check the configuration and the arguments, print the configuration as the run would save
    /// it in run.dir/config.toml (every key, defaults filled in) and exit: nothing is trained or
    /// written.
    #[arg(long)]
    print_config: bool,
}

/// A saved model and what it scores: `micn eval` and `micn predict`.
#[derive(Args)]
#[command(group = clap::ArgGroup::new("model").required(true).args(["run", "checkpoint"]))]
struct SavedArgs {
    /// Run directory (holds config.toml and the final model.safetensors).
    #[arg(long)]
    run: Option<PathBuf>,
    /// Checkpoint directory (run.dir/checkpoints/step-…).
    #[arg(long)]
    checkpoint: Option<PathBuf>,
    /// Dataset directory (default: the run's data.dir).
    #[arg(long)]
    data: Option<PathBuf>,
    /// The test set, the validation split the run held out (the scores checkpoints record), or
    /// the rest of the training archive.
    #[arg(long, value_enum, default_value_t = micn::train::saved::Split::Test)]
    split: micn::train::saved::Split,
    /// Score on this device instead of the run's configured one (`cpu`, `cuda`, `auto`).
    #[arg(long, value_enum)]
    device: Option<micn::config::Device>,
}

/// A checkpoint directory given as `flag`: refused, before anything is written, where it holds no
/// `state.json`.
fn check_checkpoint_arg(flag: &str, checkpoint: &Path) -> Result<(), UsageError> {
    check_dir_arg(
        flag,
        checkpoint,
        ("state.json", "a checkpoint"),
        "a checkpoint is a directory run.dir/checkpoints/step-N",
    )
}

/// `dir`, given as `flag`, holds its `marker` file (`(file, what it makes the directory)`), or
/// the error says what `dir` is instead, and `hint` (what `flag` wants) where that helps.
fn check_dir_arg(flag: &str, dir: &Path, (marker, kind): (&str, &str), hint: &str) -> Result<(), UsageError> {
    let what = match std::fs::metadata(dir.join(marker)) {
        Ok(m) if m.is_file() => return Ok(()),
        // What cannot be looked into (a directory of another user's) is not called missing.
        Err(e) if e.kind() == std::io::ErrorKind::PermissionDenied => {
            return Err(UsageError(format!("{flag} {}: {e}", dir.display())))
        }
        _ if dir.is_dir() => format!("not {kind} (no {marker})"),
        _ if dir.exists() => "not a directory".into(),
        _ => "no such directory".into(),
    };
    Err(UsageError(format!("{flag} {}: {what}; {hint}", dir.display())))
}

/// `--run DIR` names a run's directory (its `config.toml` is written first), or says what it is
/// (a checkpoint's is `--checkpoint`'s).
fn check_run_arg(run: &Path) -> Result<(), UsageError> {
    let hint = match run.join("state.json").is_file() {
        true => "it is a checkpoint: give it as --checkpoint",
        false => "a run is the directory `micn train` wrote (its run.dir)",
    };
    check_dir_arg("--run", run, ("config.toml", "a run directory"), hint)
}

impl SavedArgs {
    /// The run or checkpoint directory.
    fn dir(&self) -> Result<&Path, UsageError> {
        if let Some(checkpoint) = self.checkpoint.as_deref() {
            check_checkpoint_arg("--checkpoint", checkpoint)?;
        }
        if let Some(run) = self.run.as_deref() {
            check_run_arg(run)?;
        }
        self.run
            .as_deref()
            .or(self.checkpoint.as_deref())
            .ok_or_else(|| UsageError("give --run DIR or --checkpoint DIR".into()))
    }
}

#[derive(Args)]
struct EvalArgs {
    #[command(flatten)]
    saved: SavedArgs,
    /// Print the metrics as one JSON document.
    #[arg(long)]
    json: bool,
    /// Instead of click metrics, a MIND model's next-item retrieval at these N (`20,50`): every
    /// clicked sample's target among all items, retrieved by its interests (top N each, merged),
    /// as recall, hit rate and NDCG at N.
    #[arg(long, value_delimiter = ',')]
    retrieval: Vec<usize>,
    /// With --retrieval: ComiRec's protocol on held-out users instead of the dataset's split.
    /// The file is ComiRec's validation or test file (`user,item,time`; each user's first 80 %
    /// by time seen, the rest retrieved) or PaddleRec's already split form (`user_id:…
    /// hist_item:… eval_item:…`). Printed beside the most popular items as a baseline.
    #[arg(long, requires = "retrieval", conflicts_with = "split")]
    heldout: Option<PathBuf>,
}

#[derive(Args)]
struct PredictArgs {
    #[command(flatten)]
    saved: SavedArgs,
    /// Where the scores go (replaced whole).
    #[arg(long)]
    out: PathBuf,
    /// `csv` or `jsonl` (default: from --out's extension, .csv or .jsonl/.json).
    #[arg(long, value_enum)]
    format: Option<micn::train::saved::Format>,
}

#[derive(Subcommand)]
enum ExportCommand {
    /// A MIND model's user interest vectors for every sample of a split, and every item's
    /// vector, as NumPy arrays (`OUT/interests.npy`, `active.npy`, `sample.npy`, `users.npy`,
    /// `items.npy`, `interests.json`): for an approximate nearest-neighbour index and retrieval
    /// per interest.
    Interests {
        #[command(flatten)]
        saved: SavedArgs,
        /// Directory to write (created; its files are replaced).
        #[arg(long)]
        out: PathBuf,
    },
    /// MFN's pretrained similarity weights: a trained model's item vectors as the fixed
    /// embeddings `E`, and `K` interest centres fitted to them by the MFN paper's Algorithm 1 over
    /// histories of the run's training samples. Writes one safetensors file (`items`, `centres`)
    /// for `model.mfn_pretrained`.
    MfnCentres(MfnCentresArgs),
}

#[derive(Args)]
struct MfnCentresArgs {
    /// The trained (vanilla) model's run directory or checkpoint directory.
    #[arg(long)]
    run: PathBuf,
    /// Dataset directory (default: the run's data.dir).
    #[arg(long)]
    data: Option<PathBuf>,
    /// Centres K (the MFN model's model.mfn_interests).
    #[arg(long, default_value_t = 4)]
    interests: usize,
    /// Gradient steps of Algorithm 1.
    #[arg(long, default_value_t = 1000)]
    steps: usize,
    /// Histories per step, drawn uniformly.
    #[arg(long, default_value_t = 256)]
    batch: usize,
    /// Learning rate of Algorithm 1's (Adam) step.
    #[arg(long, default_value_t = 0.01)]
    lr: f64,
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Compute on this device instead of the run's configured one.
    #[arg(long, value_enum)]
    device: Option<micn::config::Device>,
    /// The file to write (replaced whole).
    #[arg(long)]
    out: PathBuf,
}

#[derive(Args)]
struct SweepArgs {
    /// Sweep file (TOML: configs, grid, set, repeats, np, out); the flags below add to it.
    file: Option<PathBuf>,
    /// Base configuration (repeatable: each is a point of the sweep).
    #[arg(long = "config")]
    configs: Vec<PathBuf>,
    /// Swept key and its values, `KEY=[v1,v2,...]` (repeatable; replaces the file's values).
    #[arg(long = "grid")]
    grid: Vec<String>,
    /// Override `section.key=value` for every run (repeatable).
    #[arg(long = "set")]
    sets: Vec<String>,
    /// Runs per grid point; repeat r trains with train.seed + r.
    #[arg(long)]
    repeats: Option<usize>,
    /// Ranks per run (more than 1 runs each through micn-launch).
    #[arg(long)]
    np: Option<usize>,
    /// Passed to micn-launch (repeatable), e.g. --launch-arg=--hostfile --launch-arg=hosts.
    #[arg(long = "launch-arg", allow_hyphen_values = true)]
    launch_args: Vec<String>,
    /// Directory of the run directories and the report.
    #[arg(long)]
    out: Option<PathBuf>,
    /// List the runs and where each stands; train nothing.
    #[arg(long)]
    dry_run: bool,
}

#[derive(Subcommand)]
enum DataCommand {
    /// Counts, vocabulary sizes, label balance and history lengths of a dataset directory.
    Stats {
        /// The prepared dataset's directory (holds dataset.json).
        dir: PathBuf,
        /// Print the statistics as one JSON document.
        #[arg(long)]
        json: bool,
    },
    /// Write the samples as NumPy arrays (`OUT/{train,valid,test}/*.npy`), collated as micn's
    /// loader collates them, for another trainer to learn from the same samples.
    Export {
        /// The prepared dataset's directory (holds dataset.json).
        dir: PathBuf,
        /// Directory to write (built beside it, then moved into place whole, replacing an
        /// earlier export; another directory is refused).
        #[arg(long)]
        out: PathBuf,
        /// Behaviours kept per history (the most recent; default: as many as the dataset keeps).
        #[arg(long)]
        max_hist_len: Option<usize>,
        /// Share of the training samples held out as `valid/`, as `data.valid_share` holds them
        /// out of a run.
        #[arg(long, default_value_t = 0.0)]
        valid_share: f64,
        /// Seed of DIEN's no-click draws in `train/`.
        #[arg(long, default_value_t = 1)]
        seed: u64,
    },
}

#[derive(Subcommand)]
enum CheckpointCommand {
    /// What a checkpoint holds: step, epoch, position, world size, config hash, last evaluation.
    Inspect { path: PathBuf },
    /// Check the completion marker and every checksum.
    Verify { path: PathBuf },
}

#[derive(Subcommand)]
enum BenchCommand {
    /// Save and load time (MB/s) of a checkpoint of a Books-sized DIEN + MICN model.
    Checkpoint {
        #[arg(long, default_value = "runs/bench-checkpoint")]
        work_dir: PathBuf,
        /// Where the model lives (`cuda`: GPU 0; an error where there is none).
        #[arg(long, value_enum, default_value_t = BenchDevice::Cpu)]
        device: BenchDevice,
    },
    /// Raw-input MB/s and reviews/s, peak memory and loader batches/s of `micn prepare` on a
    /// synthetic dump (books-like by default: ~9M reviews, ~5 GB of JSON; needs ~12 GB of disk).
    Prepare {
        #[arg(long, value_enum, default_value_t = Preset::BooksLike)]
        preset: Preset,
        #[arg(long)]
        users: Option<usize>,
        #[arg(long)]
        items: Option<usize>,
        #[arg(long, value_enum, default_value_t = Protocol::Dien)]
        protocol: Protocol,
        /// Where the dumps and datasets go (default: the system temporary directory).
        #[arg(long)]
        work_dir: Option<PathBuf>,
        /// Keep the dumps and datasets (a later run with the same settings reuses the dumps).
        #[arg(long)]
        keep: bool,
    },
    /// Bytes per step for 10k vs 1M items, samples/s of 1 vs 2 ranks (the same global batch
    /// split, and the same batch per rank), communication share.
    Dist {
        #[arg(long, default_value = "runs/bench-dist")]
        work_dir: PathBuf,
        /// Training samples of each timed run.
        #[arg(long, default_value_t = 51_200)]
        samples: u64,
        /// Global batch sizes to time (repeatable).
        #[arg(long = "batch", default_values_t = [128usize, 512])]
        batches: Vec<usize>,
        /// Alternating trials per setting (the median is reported).
        #[arg(long, default_value_t = 3)]
        trials: usize,
        /// Where every rank trains (`cuda`: GPU local rank mod GPUs; an error where there is none).
        #[arg(long, value_enum, default_value_t = BenchDevice::Cpu)]
        device: BenchDevice,
    },
    /// Test AUC of every model ± MICN over several seeds on synthetic data (Books-style: 60k
    /// users, 20k items, 400 clusters, `dien` protocol; or the quickstart's, `din` protocol).
    Quality {
        /// Where the synthetic data, the runs and quality.json go.
        #[arg(long, default_value = "runs/bench-quality")]
        work_dir: PathBuf,
        /// `books-like` (reduced) or `quickstart`.
        #[arg(long, value_enum, default_value_t = Preset::BooksLike)]
        preset: Preset,
        /// Users of the synthetic data (default: the preset's, reduced for books-like).
        #[arg(long)]
        users: Option<usize>,
        /// Items of the synthetic data (default: the preset's, reduced for books-like).
        #[arg(long)]
        items: Option<usize>,
        /// Hidden interest clusters of the synthetic data (default: the preset's).
        #[arg(long)]
        clusters: Option<usize>,
        /// Runs of each model and variant, seeds 1 to N.
        #[arg(long, default_value_t = 3)]
        seeds: u64,
        /// Epochs of each run.
        #[arg(long, default_value_t = 2)]
        epochs: usize,
        /// Adam's learning rate of each run.
        #[arg(long, default_value_t = 1e-3)]
        lr: f64,
        /// Where the runs train (`cuda`: GPU 0; an error where there is none).
        #[arg(long, value_enum, default_value_t = BenchDevice::Cpu)]
        device: BenchDevice,
    },
    /// Samples/s of a training step for every model ± MICN (random batches, Books-sized vocabularies).
    Throughput {
        /// Timed steps per model and batch.
        #[arg(long, default_value_t = 40)]
        steps: usize,
        /// Untimed steps before them.
        #[arg(long, default_value_t = 5)]
        warmup: usize,
        #[arg(long, default_value_t = 1)]
        threads: i32,
        #[arg(long, default_value_t = 367_983)]
        items: i64,
        #[arg(long, default_value_t = 603_668)]
        users: i64,
        /// Batch size (repeatable: one row per model and batch).
        #[arg(long = "batch", default_values_t = [128usize])]
        batches: Vec<usize>,
        /// Model to time, e.g. `din` or `din+micn` (repeatable; default: every model ± MICN).
        #[arg(long = "model")]
        models: Vec<micn::bench::throughput::Variant>,
        /// Where the step runs (`cuda`: GPU 0; an error where there is none).
        #[arg(long, value_enum, default_value_t = BenchDevice::Cpu)]
        device: BenchDevice,
        /// Print the rows as JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
}

#[derive(clap::Args)]
struct SynthArgs {
    /// Sizes and settings to start from; the flags below change them.
    #[arg(long, value_enum, default_value_t = Preset::Quickstart)]
    preset: Preset,
    /// Seed of every draw: the same seed writes the same bytes.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Directory for the raw files (created if missing).
    #[arg(long)]
    out: PathBuf,
    /// Users (default: the preset's).
    #[arg(long)]
    users: Option<usize>,
    /// Items (default: the preset's).
    #[arg(long)]
    items: Option<usize>,
    /// Categories the meta names (default: the preset's).
    #[arg(long)]
    categories: Option<usize>,
    /// Hidden interest clusters.
    #[arg(long)]
    clusters: Option<usize>,
    /// Most interests per user.
    #[arg(long)]
    interests: Option<usize>,
    /// Fewest reviews per user (default: the preset's; 5, as in a 5-core).
    #[arg(long)]
    min_history: Option<usize>,
    /// Mean reviews per user (default: the preset's).
    #[arg(long)]
    mean_history: Option<f64>,
    /// Probability that a review is a popularity-drawn noise item.
    #[arg(long)]
    noise: Option<f64>,
    /// Probability of staying on the current interest between reviews.
    #[arg(long)]
    stay: Option<f64>,
    /// Probability that an item shows its cluster's category instead of the dominant one.
    #[arg(long)]
    category_signal: Option<f64>,
    /// Brands named in the meta (0: none); each cluster has a home brand.
    #[arg(long)]
    brands: Option<usize>,
    /// Probability that an item carries its cluster's home brand instead of a random one.
    #[arg(long)]
    brand_signal: Option<f64>,
}

#[derive(Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum InputFormat {
    /// Amazon reviews 2014 (McAuley et al.): `reviewerID`, `asin`, `unixReviewTime`.
    Amazon2014,
    /// Amazon reviews 2018 (Ni et al.): as 2014, meta in JSON.
    Amazon2018,
    /// Amazon Reviews'23 (Hou et al.): `user_id`, `parent_asin`, `timestamp` in milliseconds.
    Amazon2023,
    /// `user item item …` per line, time-ordered (SASRec, S3-Rec, RecBole's Amazon sets).
    Sequences,
    /// `user,item,time` per line (ComiRec's Amazon Books and Taobao training files), or the
    /// columns a header line names (RecBole's `.inter`, Amazon Reviews'23's benchmark files).
    Interactions,
    Dien,
}

#[derive(clap::Args)]
struct PrepareArgs {
    #[arg(long, value_enum)]
    input_format: InputFormat,
    /// Reviews file (JSON lines, gzip or plain).
    #[arg(long)]
    reviews: Option<PathBuf>,
    /// Sequences file (`--input-format sequences`: `user item item …` per line, in time order).
    #[arg(long)]
    sequences: Option<PathBuf>,
    /// Interactions file (`--input-format interactions`: `user,item,time` per line, or the
    /// columns a header line names, tab- or comma-separated).
    #[arg(long)]
    interactions: Option<PathBuf>,
    /// Item attributes for sequences: JSON `{"item": [attribute ids]}` (S3-Rec's item2attributes).
    #[arg(long)]
    item_attributes: Option<PathBuf>,
    /// Which attribute of an item is its category (0-based position in its list; S3-Rec's lists
    /// hold the brand first, then category levels, so 1). Without it every item is in `default_cat`.
    #[arg(long)]
    category_attribute: Option<usize>,
    /// Most attributes of an item kept in the dataset's attribute table (`--item-attributes`);
    /// longer lists are cut, and `prepare` says how many were.
    /// [default: 8]
    #[arg(long)]
    max_attributes: Option<usize>,
    /// Meta file (2014: Python literals; 2018 and 2023: JSON; gzip or plain; beside interactions,
    /// each line read as its release writes it). Optional: without it every item is in
    /// `default_cat` (no category signal).
    #[arg(long)]
    meta: Option<PathBuf>,
    /// Directory with DIEN's local_train_splitByUser, local_test_splitByUser, ... files.
    #[arg(long)]
    dien_dir: Option<PathBuf>,
    /// Which samples a history makes (SPEC §1.2) [default: dien].
    #[arg(long, value_enum)]
    protocol: Option<Protocol>,
    /// The longest history kept [default: 20].
    #[arg(long)]
    max_hist_len: Option<usize>,
    /// Draws the no-click samples and the split [default: 1].
    #[arg(long)]
    seed: Option<u64>,
    /// The synthetic generator's oracle-model.json (default: found beside the reviews file).
    #[arg(long)]
    oracle: Option<PathBuf>,
    /// Stop at the first bad line instead of skipping and counting.
    #[arg(long)]
    strict: bool,
    /// Directory to write the dataset to (must not exist; built beside it, then moved into
    /// place whole).
    #[arg(long)]
    out: PathBuf,
}

/// Exit status of a failure that running again cannot fix (a bad configuration, argument or
/// input file): `micn-launch --max-restarts` does not retry it. Other failures exit with 1.
const EXIT_INPUT_ERROR: u8 = 3;

/// The largest batch the benchmarks and `export mfn-centres` take (a larger one would only
/// exhaust memory).
const MAX_BATCH: usize = 1 << 20;

/// A failed allocation in micn's own code ends the process with an error line and exit status
/// 1, as libtorch's do, not with the standard library's abort.
#[global_allocator]
static ALLOCATOR: micn::oom::Reporting = micn::oom::Reporting;

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) if !e.use_stderr() => {
            // Help and version, printed as asked.
            let _ = e.print();
            return ExitCode::SUCCESS;
        }
        Err(e) => {
            // A command line that cannot work fails the same way every time; under
            // `--log-format json` its error is one JSON line like every other error. Under a
            // launcher, every rank of one command line fails alike: the first says why.
            if first_rank_of_its_command_line() {
                let args: Vec<String> = std::env::args_os().map(|a| a.to_string_lossy().into_owned()).collect();
                match usage::log_format_json(&args) {
                    true => {
                        report_error(&anyhow::Error::new(UsageError(usage::clap_sentence(&e))), None, LogFormat::Json)
                    }
                    false => drop(e.print()),
                }
            }
            return ExitCode::from(EXIT_INPUT_ERROR);
        }
    };
    // A file-size limit (`ulimit -f`) would kill the process at the first write past it, without
    // a word; ignored, the write fails with EFBIG and the error names the file.
    // SAFETY: setting a signal's disposition before any thread starts.
    unsafe {
        libc::signal(libc::SIGXFSZ, libc::SIG_IGN);
    }
    let trains = match &cli.command {
        Command::Train(args) => !args.print_config,
        Command::Sweep(args) => !args.dry_run,
        _ => false,
    };
    if trains {
        // A stop signal from the very start (`micn-launch` passing on a Ctrl-C while the ranks
        // start) asks for a graceful stop; the default action would end the process unsaid.
        // While a run starts, the same one again ends it at once (a start-up read may never
        // return).
        if matches!(cli.command, Command::Train { .. }) {
            micn::train::interrupt::mark_starting();
        }
        micn::train::Interrupter::on_signals();
    } else {
        // Default SIGPIPE for commands that only print (a sweep's dry run too): `micn data stats
        // DIR | head` ends quietly when `head` closes the pipe. Training keeps it ignored, so a log
        // pipe closed by the same Ctrl-C (`micn train ... | tee log`) cannot kill it before its
        // checkpoint.
        // SAFETY: restoring the default disposition of a signal before any thread starts.
        unsafe {
            libc::signal(libc::SIGPIPE, libc::SIG_DFL);
        }
    }
    if micn::run_dir::this_launch().is_some() {
        // What a stop signal does is settled now (a graceful stop for training, the default end
        // for other commands): `micn-launch` holds a stop asked for while the job starts until
        // every rank has said so (mpirun's SIGUSR1 would reach no rank before, or end a training
        // rank unsaid), and shows this line to nobody. One write; a closed stderr is no error.
        let _ = std::io::Write::write_all(&mut std::io::stderr(), format!("{STARTED_LINE}\n").as_bytes());
    }
    let (comm, mpi_versions) = match start_comm(cli.comm) {
        Ok(started) => started,
        Err(e) => {
            report_error(&e, None, cli.log_format);
            let code = if is_input_error(&e) { EXIT_INPUT_ERROR } else { 1 };
            return ExitCode::from(code);
        }
    };
    logging::init(cli.log_format, comm.rank());
    micn::oom::describe_process((comm.size() > 1).then(|| comm.rank()), cli.log_format == LogFormat::Json);
    quiet_known_panics();
    let ran = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| run(cli.command, comm.as_ref(), mpi_versions)));
    let ran = ran.unwrap_or_else(|payload| {
        if let Some(message) = out_of_memory(payload.as_ref()) {
            return Err(anyhow::Error::new(OutOfMemory(message)));
        }
        match stdout_failure(payload.as_ref()) {
            Some(message) => Err(anyhow::Error::new(StdoutFailed(message))),
            None => std::panic::resume_unwind(payload),
        }
    });
    match ran {
        Ok(()) => ExitCode::SUCCESS,
        // A failure every rank knows of: said once, and every rank ends alone with its status.
        Err(e) if e.is::<Agreed>() => {
            let agreed = e.downcast::<Agreed>().expect("checked");
            if let Some(cause) = &agreed.shown {
                report_error(cause, Some(comm.rank()), cli.log_format);
            }
            ExitCode::from(agreed.code)
        }
        Err(e) => {
            let e = match is_out_of_memory(&e) {
                true => anyhow::Error::new(OutOfMemory(message_of(&e))),
                false => e,
            };
            let code = if is_input_error(&e) { EXIT_INPUT_ERROR } else { 1 };
            if micn::train::run::failure_agreed() {
                // Every rank knows: rank 0 says why, and each ends with the status, together.
                if !is_peer_failure(&e) {
                    report_error(&e, (comm.size() > 1).then(|| comm.rank()), cli.log_format);
                }
                return ExitCode::from(code);
            }
            report_error(&e, (comm.size() > 1).then(|| comm.rank()), cli.log_format);
            // Peers may wait in a collective for this rank: stop the whole job.
            comm.abort(i32::from(code));
            ExitCode::from(code)
        }
    }
}

/// An allocation failed (libtorch's, which `tch` turns into a panic, or a read of a file too
/// large for the memory left): the model, a batch or a table is too large for this machine.
#[derive(Debug, thiserror::Error)]
#[error("out of memory: {0}; {remedy}", remedy = micn::oom::REMEDY)]
struct OutOfMemory(String);

/// libtorch's message when `payload` is the panic of a failed allocation (on the host or a GPU).
fn out_of_memory(payload: &(dyn std::any::Any + Send)) -> Option<String> {
    micn::oom::libtorch_sentence(panic_text(payload)?)
}

/// Whether `e` comes from a failed allocation ([`micn::oom`]: an I/O error of that kind, which
/// reading a file too large for the memory left and a libtorch allocation made while loading
/// tensors give), rather than from what the command was given.
fn is_out_of_memory(e: &anyhow::Error) -> bool {
    e.chain().any(|cause| {
        cause.downcast_ref::<std::io::Error>().is_some_and(|io| io.kind() == std::io::ErrorKind::OutOfMemory)
    })
}

/// A panic's message, when it has one.
fn panic_text(payload: &(dyn std::any::Any + Send)) -> Option<&str> {
    payload.downcast_ref::<String>().map(String::as_str).or(payload.downcast_ref::<&str>().copied())
}

/// Standard output could not be written (a full disk under `> file`; a closed pipe where SIGPIPE
/// is ignored): `println!` panics with this, turned into an error ([`StdoutFailed`]).
#[derive(Debug, thiserror::Error)]
#[error("writing to standard output: {0}")]
struct StdoutFailed(String);

/// The cause when `payload` is the panic of `println!` failing to write standard output.
fn stdout_failure(payload: &(dyn std::any::Any + Send)) -> Option<String> {
    let text = panic_text(payload)?;
    text.strip_prefix("failed printing to stdout: ").map(str::to_string)
}

/// Failed allocations and failed writes to standard output are reported as errors
/// ([`OutOfMemory`], [`StdoutFailed`]), not as a panic with a backtrace; every other panic is
/// printed as before.
fn quiet_known_panics() {
    let default = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        if out_of_memory(info.payload()).is_none() && stdout_failure(info.payload()).is_none() {
            default(info);
        }
    }));
}

/// A command line that cannot work (a missing or out-of-range argument).
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
struct UsageError(String);

/// Fail with a [`UsageError`] unless `cond` holds.
macro_rules! ensure_usage {
    ($cond:expr, $($fmt:tt)+) => {
        if !$cond {
            return Err(UsageError(format!($($fmt)+)).into());
        }
    };
}

/// Refuse the root directory (however named: `/`, `/..`, a link to it) as the directory a command
/// fills with its own files: `flag` names the argument, `whose` the files' owner.
fn ensure_not_root(dir: &Path, flag: &str, whose: &str) -> anyhow::Result<()> {
    ensure_usage!(
        dir.canonicalize().map_or(true, |p| p.parent().is_some()),
        "{flag} {}: the root directory; give {whose} a directory of its own",
        dir.display()
    );
    Ok(())
}

/// This process's rank as the launcher set it in the environment (OpenMPI's mpirun, Slurm's
/// srun), for errors before the communicator exists.
fn launcher_rank() -> Option<usize> {
    ["OMPI_COMM_WORLD_RANK", "PMIX_RANK", "SLURM_PROCID"].iter().find_map(|var| std::env::var(var).ok()?.parse().ok())
}

/// Whether this process is the lowest rank started with its command line: rank 0, or under
/// `mpirun a : b` (one command line per application context) the first rank of its context,
/// as OpenMPI numbers them (`OMPI_MCA_orte_app_num`, and the ranks of each context in
/// `OMPI_APP_CTX_NUM_PROCS`). Any process not started by a launcher is.
fn first_rank_of_its_command_line() -> bool {
    let Some(rank) = launcher_rank() else { return true };
    let number = |var: &str| std::env::var(var).ok()?.trim().parse::<usize>().ok();
    let contexts = number("OMPI_NUM_APP_CTX").unwrap_or(1);
    let Some(context) = number("OMPI_MCA_orte_app_num").or((contexts <= 1).then_some(0)) else {
        // Several command lines, and not which is this one's (Open MPI 5 names it otherwise).
        return true;
    };
    let sizes: Option<Vec<usize>> = std::env::var("OMPI_APP_CTX_NUM_PROCS")
        .ok()
        .and_then(|sizes| sizes.split_whitespace().map(|n| n.parse().ok()).collect());
    match sizes {
        Some(sizes) if context < sizes.len() => rank == sizes[..context].iter().sum::<usize>(),
        // Contexts that cannot be told apart: each rank says it.
        _ => context > 0 || rank == 0,
    }
}

/// Print `error: [rank N: ]message` as one line, written at once (under mpirun another rank's
/// output cannot land inside it). Each cause is added once: a message that already quotes its
/// source (`{path}: {source}`) does not repeat it.
fn report_error(e: &anyhow::Error, rank: Option<usize>, format: LogFormat) {
    use std::io::Write as _;
    let message = message_of(e);
    let line = match (format, rank) {
        // A JSON line like the logs' (`micn-launch --log-format json` keeps standard error JSON).
        (LogFormat::Json, rank) => {
            let time = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
            let object = serde_json::json!({
                "time": time.as_secs_f64(),
                "level": "ERROR",
                "target": "micn",
                // Before the communicator is up (a bad argument), mpirun's word for the rank.
                "rank": rank.or_else(launcher_rank).unwrap_or(0),
                "message": format!("error: {message}"),
            });
            format!("{object}\n")
        }
        (LogFormat::Text, Some(rank)) => format!("error: rank {rank}: {message}\n"),
        (LogFormat::Text, None) => format!("error: {message}\n"),
    };
    let _ = std::io::stderr().lock().write_all(line.as_bytes());
    logging::append_to_file(&line);
}

/// `e`'s causes joined by `: `, each once (a message that already quotes its source does not
/// repeat it), on one line.
fn message_of(e: &anyhow::Error) -> String {
    let mut message = String::new();
    for cause in e.chain() {
        let text = cause.to_string().trim_end().to_string();
        if message.contains(&text) {
            continue;
        }
        if !message.is_empty() {
            message.push_str(": ");
        }
        message.push_str(&text);
    }
    message.replace('\n', " ")
}

/// Whether this rank failed only because rank 0 did ([`micn::train::trainer::TrainError::PeerFailed`]).
fn is_peer_failure(e: &anyhow::Error) -> bool {
    use micn::train::trainer::TrainError;
    e.chain().any(|cause| matches!(cause.downcast_ref::<TrainError>(), Some(TrainError::PeerFailed { .. })))
}

/// Whether running the same command again would fail the same way: a bad configuration, a bad
/// argument, a dataset or checkpoint that does not fit the configuration.
fn is_input_error(e: &anyhow::Error) -> bool {
    use micn::train::trainer::TrainError;
    e.chain().any(|cause| {
        cause.is::<UsageError>()
            || cause.downcast_ref::<dist::CommError>().is_some_and(|c| matches!(c, dist::CommError::MpiNotBuilt))
            || cause.is::<micn::config::ConfigError>()
            || cause.downcast_ref::<micn::data::DataError>().is_some_and(micn::data::DataError::is_input_error)
            || cause.downcast_ref::<micn::checkpoint::CheckpointError>().is_some_and(|c| c.is_input_error())
            || cause.is::<micn::network::NetworkError>()
            || cause.is::<micn::model::ModelError>()
            || cause.downcast_ref::<TrainError>().is_some_and(TrainError::is_input_error)
            || cause.downcast_ref::<micn::experiment::sweep::SweepError>().is_some_and(|e| e.is_input_error())
            || cause.downcast_ref::<micn::experiment::report::ReportError>().is_some_and(|e| e.is_input_error())
            || cause.downcast_ref::<micn::bench::prepare::BenchError>().is_some_and(|e| e.is_input_error())
            || cause.downcast_ref::<micn::io_error::PathIo>().is_some_and(micn::io_error::PathIo::is_lasting)
    })
}

/// The communicator with, for MPI, the library's version strings.
fn start_comm(backend: Backend) -> anyhow::Result<(Box<dyn Communicator>, Option<MpiInfo>)> {
    let started = start_backend(backend)?;
    let by_mpirun = std::env::var_os("OMPI_COMM_WORLD_SIZE").is_some();
    check_slurm_tasks(std::env::var("SLURM_STEP_NUM_TASKS").ok().as_deref(), by_mpirun, started.0.size())?;
    Ok(started)
}

/// Slurm's `srun` without an MPI plugin starts N tasks that each find no MPI peers: each would
/// train alone as rank 0 of 1, all writing the same run directory. Refused, naming the fix.
/// Ranks that `mpirun` started (OpenMPI sets `OMPI_COMM_WORLD_SIZE` in each) are not Slurm's
/// tasks: inside an allocation mpirun starts its daemons with `srun --ntasks=<other nodes>`,
/// whose step size the ranks on those nodes inherit.
fn check_slurm_tasks(step_tasks: Option<&str>, by_mpirun: bool, world_size: usize) -> Result<(), UsageError> {
    let tasks = step_tasks.and_then(|n| n.trim().parse::<usize>().ok()).unwrap_or(1);
    if tasks > 1 && world_size != tasks && !by_mpirun {
        return Err(UsageError(format!(
            "Slurm started {tasks} tasks (SLURM_STEP_NUM_TASKS) but MPI sees a world of {world_size}: start micn with \
             `srun --mpi=pmix ...` (OpenMPI's PMIx), as cluster/slurm.sbatch does, or through micn-launch / mpirun"
        )));
    }
    Ok(())
}

fn start_backend(backend: Backend) -> anyhow::Result<(Box<dyn Communicator>, Option<MpiInfo>)> {
    dist::check_mpi_built(backend.wants_mpi(), cfg!(feature = "mpi"))?;
    if !backend.wants_mpi() {
        return Ok((Box::new(dist::SingleProcess), None));
    }
    #[cfg(feature = "mpi")]
    {
        use anyhow::Context as _;
        let limit = dist::watchdog::start_limit(std::env::var(dist::watchdog::START_TIMEOUT_ENV).ok().as_deref())
            .map_err(UsageError)?;
        let comm = dist::watchdog::start_within(limit, "starting MPI (MPI_Init)", dist::MpiCommunicator::init)
            .context("starting MPI")?;
        let (major, minor) = dist::MpiCommunicator::standard_version();
        let versions =
            MpiInfo { library: dist::MpiCommunicator::library_version(), standard: format!("{major}.{minor}") };
        Ok((Box::new(comm), Some(versions)))
    }
    #[cfg(not(feature = "mpi"))]
    unreachable!("check_mpi_built refused MPI in a build without it")
}

fn run(command: Command, comm: &dyn Communicator, mpi_versions: Option<MpiInfo>) -> anyhow::Result<()> {
    tracing::debug!(
        backend = comm.backend(),
        world_size = comm.size(),
        local_rank = comm.local_rank(),
        "communicator ready"
    );
    agreed(comm, same_command(comm))?;
    // Commands that read or write files as one process: under mpirun every rank would print the
    // same lines (one JSON document after another) and write the same files at once. Refused by
    // every rank alike, said once by rank 0.
    let one_process = match &command {
        Command::Synth(_) => Some("synth"),
        Command::Prepare(_) => Some("prepare"),
        Command::Report { .. } => Some("report"),
        Command::Bench { .. } => Some("bench"),
        Command::Checkpoint { .. } => Some("checkpoint"),
        Command::Data { .. } => Some("data"),
        Command::Export { command: ExportCommand::Interests { .. } } => Some("export interests"),
        Command::Export { command: ExportCommand::MfnCentres(_) } => Some("export mfn-centres"),
        Command::Eval(args) if !args.retrieval.is_empty() => Some("eval --retrieval"),
        Command::Sweep(_) => Some("sweep"),
        _ => None,
    };
    if let Some(name) = one_process.filter(|_| comm.size() > 1) {
        let refused = UsageError(match name {
            "sweep" => "micn sweep starts its own jobs: run it as one process, not under mpirun".into(),
            name => format!("micn {name} runs as one process, not under mpirun"),
        });
        agreed(comm, Err::<(), _>(anyhow::Error::new(refused)))?;
    }
    match command {
        Command::Doctor { json, check_comm } => doctor(comm, mpi_versions, json, check_comm),
        Command::Synth(args) => synth(args),
        Command::Prepare(args) => prepare(args),
        Command::Train(args) => train(args, comm),
        Command::Eval(args) => eval(args, comm),
        Command::Predict(args) => predict(args, comm),
        Command::Export { command: ExportCommand::Interests { saved, out } } => {
            let done = micn::train::saved::export_interests(
                saved.dir()?,
                saved.data.as_deref(),
                saved.split,
                saved.device,
                &out,
            )?;
            println!(
                "{} samples of the {} set: up to {} interests of width {} each, and {} item vectors, written to {}",
                done.samples,
                done.split,
                done.interests,
                done.width,
                done.items,
                done.out.display()
            );
            Ok(())
        }
        Command::Export { command: ExportCommand::MfnCentres(args) } => {
            // A run's directory, or a checkpoint's.
            if !args.run.join("state.json").is_file() {
                check_run_arg(&args.run)?;
            }
            ensure_usage!(
                args.interests >= 1 && args.steps >= 1 && args.batch >= 1,
                "--interests, --steps and --batch must be at least 1"
            );
            ensure_usage!(args.batch <= MAX_BATCH, "--batch must be at most {MAX_BATCH}, got {}", args.batch);
            // No configuration could read more centres (model.mfn_interests has this bound).
            let most = micn::config::limits::K_MAX;
            ensure_usage!(args.interests <= most, "--interests must be at most {most}, got {}", args.interests);
            ensure_usage!(
                (args.lr as f32) > 0.0 && (args.lr as f32).is_finite(),
                "--lr must stay above 0 and finite rounded to f32, as Algorithm 1 computes (at most 3.4e38), got {}",
                args.lr
            );
            let settings = micn::train::saved::CentreSettings {
                interests: args.interests,
                steps: args.steps,
                batch: args.batch,
                lr: args.lr,
                seed: args.seed,
            };
            let done = micn::train::saved::export_mfn_centres(
                &args.run,
                args.data.as_deref(),
                args.device,
                &settings,
                &args.out,
            )?;
            println!(
                "{} centres of width {} over {} items (items nearest each: {:?}); Algorithm 1's objective {:.4} → {:.4} in {} steps; written to {}",
                done.interests,
                done.width,
                done.items,
                done.items_per_centre,
                done.first_objective,
                done.last_objective,
                settings.steps,
                done.out.display()
            );
            Ok(())
        }
        Command::Sweep(args) => sweep(args),
        Command::Report { dirs, out } => report(&dirs, &out),
        Command::Bench { command } => bench(command),
        Command::Checkpoint { command } => checkpoint(command),
        Command::Data { command } => data(command),
    }
}

/// `micn train`'s configuration and resume choice, checked as far as they can be before the run
/// claims its directory (a refused run writes nothing there).
fn train_inputs(
    config: &Path,
    sets: &[String],
    resume: Option<String>,
    overwrite: bool,
    comm: &dyn Communicator,
) -> anyhow::Result<(micn::config::Config, micn::train::Resume)> {
    use micn::train::{trainer::TrainError, Resume};
    let resume = match resume.as_deref() {
        None if overwrite => Resume::Overwrite,
        None => Resume::Fresh,
        Some("auto") => Resume::Auto,
        Some("") => return Err(UsageError("--resume is empty: give `auto` or a checkpoint directory".into()).into()),
        Some(path) => Resume::Path(PathBuf::from(path)),
    };
    let overrides = sets.iter().map(|s| micn::config::Override::parse(s)).collect::<Result<Vec<_>, _>>()?;
    let cfg = micn::config::Config::load(Some(config), &overrides)?;
    // Before the run claims its directory: a refused run writes nothing there. A restart of the
    // job that claimed it and checkpointed there goes on from its newest checkpoint, not from
    // --resume's (which retention may have removed since).
    if let Resume::Path(p) = &resume {
        let run_dir = micn::run_dir::RunDir::new(&cfg.run.dir);
        let checkpointed = || !micn::checkpoint::finished(&run_dir.checkpoints()).is_empty();
        if !(run_dir.claimed_by_this_launch() && checkpointed()) {
            check_checkpoint_arg("--resume", p)?;
        }
    }
    ensure_usage!(
        !cfg.data.dir.as_os_str().is_empty(),
        "data.dir is empty: set it to the directory `micn prepare` wrote"
    );
    ensure_usage!(
        !cfg.run.dir.exists() || cfg.run.dir.is_dir(),
        "run.dir = {}: is a file, not a directory",
        cfg.run.dir.display()
    );
    ensure_not_root(&cfg.run.dir, "run.dir =", "the run")?;
    // The global batch splits evenly over the ranks.
    micn::data::shard::local_batch(cfg.train.global_batch_size, comm.size()).map_err(TrainError::from)?;
    Ok((cfg, resume))
}

/// What a rank that `micn-launch` started says once its stop signals are set (the launcher's
/// `STARTED_LINE`, word for word).
const STARTED_LINE: &str = "micn: this rank now takes stop signals (micn-launch)";

/// A failure that every rank of the job knows of ([`agreed`]): the cause this rank prints, if
/// any, and the status every rank exits with.
#[derive(Debug, thiserror::Error)]
#[error("the ranks agreed to stop (status {code})")]
struct Agreed {
    shown: Option<anyhow::Error>,
    code: u8,
}

/// `outcome`, once every rank of a job has reached the same point with its own: when any failed,
/// each cause is printed once (by the lowest rank that found it: every rank reads the same
/// configuration and checks it alike) and every rank exits with the status of the lowest failed
/// rank, together, without `MPI_Abort` (whose banner would follow the cause). The same as
/// `outcome` in a process alone.
fn agreed<T>(comm: &dyn Communicator, outcome: anyhow::Result<T>) -> anyhow::Result<T> {
    if comm.size() == 1 {
        return outcome;
    }
    let own = outcome.as_ref().err().map(|e| (if is_input_error(e) { EXIT_INPUT_ERROR } else { 1 }, message_of(e)));
    let first = match micn::dist::first_failure(comm, own) {
        Ok(first) => first,
        // This rank's own cause first, where it has one.
        Err(e) => return outcome.and(Err(e.into())),
    };
    let Some(first) = first else {
        return outcome;
    };
    let shown = outcome.err().filter(|_| !first.said_below);
    Err(Agreed { shown, code: first.status }.into())
}

/// Every rank runs the command rank 0 does (`mpirun a : b` may give the ranks other settings,
/// not other commands): ranks that ran another would wait for ever in collectives of their own,
/// or read each other's messages. The first collective of every command, so that it cannot hang.
fn same_command(comm: &dyn Communicator) -> anyhow::Result<()> {
    if comm.size() == 1 {
        return Ok(());
    }
    let own = command_words();
    let gathered = comm.all_gather_bytes(own.as_bytes())?;
    let parts: Vec<String> = gathered.parts().map(|p| String::from_utf8_lossy(p).into_owned()).collect();
    let differ: Vec<String> =
        (1..parts.len()).filter(|&r| parts[r] != parts[0]).map(|r| format!("rank {r} `micn {}`", parts[r])).collect();
    ensure_usage!(
        differ.is_empty(),
        "the ranks run different commands ({} where rank 0 runs `micn {}`): mpirun must start the same micn command \
         on every rank (with `mpirun a : b`, the same command with other settings)",
        differ.join(", "),
        parts[0]
    );
    Ok(())
}

/// The command this process runs, as its subcommands and the flags that change what it does
/// with its peers (`train --print-config`, `sweep --dry-run`, `doctor --check-comm`, `eval --retrieval`).
fn command_words() -> String {
    use clap::CommandFactory as _;
    let Ok(matches) = Cli::command().try_get_matches_from(std::env::args_os()) else {
        return String::new();
    };
    let mut words = Vec::new();
    let mut at = &matches;
    while let Some((name, sub)) = at.subcommand() {
        words.push(name.to_string());
        at = sub;
    }
    for flag in ["print_config", "dry_run", "check_comm"] {
        if at.try_get_one::<bool>(flag).ok().flatten() == Some(&true) {
            words.push(format!("--{}", flag.replace('_', "-")));
        }
    }
    if at.try_get_raw("retrieval").ok().flatten().is_some() {
        words.push("--retrieval".into());
    }
    words.join(" ")
}

/// Every rank trains the configuration rank 0 does, or each says how they differ: ranks that
/// read another one (a copy that differs on another host; `--config /dev/stdin`, which mpirun
/// gives rank 0 alone) would build other models and exchange buffers of other sizes.
fn same_configuration(comm: &dyn Communicator, cfg: &micn::config::Config) -> anyhow::Result<()> {
    if comm.size() == 1 {
        return Ok(());
    }
    let text = cfg.to_toml();
    let gathered = comm.all_gather_bytes(text.as_bytes())?;
    let parts: Vec<&[u8]> = gathered.parts().collect();
    let table = |bytes: &[u8]| toml::from_str::<toml::Table>(&String::from_utf8_lossy(bytes)).unwrap_or_default();
    let first = table(parts[0]);
    let differ: Vec<String> = (1..parts.len())
        .filter(|&r| parts[r] != parts[0])
        .map(|r| format!("rank {r} in {}", micn::config::diff(&first, &table(parts[r])).join(", ")))
        .collect();
    ensure_usage!(
        differ.is_empty(),
        "the ranks read different configurations ({} from rank 0's): every rank must read the same (a copy that \
         differs on another host, or --config /dev/stdin, which mpirun gives rank 0 alone)",
        differ.join("; ")
    );
    Ok(())
}

fn train(args: TrainArgs, comm: &dyn Communicator) -> anyhow::Result<()> {
    let TrainArgs { config, sets, resume, overwrite, print_config } = args;
    let (cfg, resume) = agreed(comm, train_inputs(&config, &sets, resume, overwrite, comm))?;
    agreed(comm, same_configuration(comm, &cfg))?;
    if print_config {
        if comm.rank() == 0 {
            for unread in cfg.unread_settings() {
                tracing::warn!("{unread}, so it changes nothing");
            }
            // What `train` would refuse on what is there, in its words.
            use micn::train::trainer::TrainError;
            let run_dir = micn::run_dir::RunDir::new(&cfg.run.dir);
            let path = cfg.run.dir.clone();
            // What is in run.dir matters only where its path is one (an empty one is not the
            // working directory).
            let refused_path = micn::train::check_run_dir_path(&cfg.run.dir).err();
            let (foreign, present) = match refused_path {
                Some(_) => (None, Vec::new()),
                None => (run_dir.foreign_contents(), run_dir.present_files()),
            };
            // Another `micn train` of this machine writing into it (seen without taking its lock).
            let in_use = run_dir
                .writer()
                .map(|holder| TrainError::RunDir(micn::run_dir::RunDirError::InUse { path: path.clone(), holder }));
            let refusals = [
                in_use,
                micn::train::dataset_refusal(&cfg),
                foreign.map(|what| TrainError::RunDirHoldsOthers { path: path.clone(), what }),
                refused_path,
                (resume == micn::train::Resume::Fresh && !present.is_empty())
                    .then(|| TrainError::RunExists { path, files: present.join(", ") }),
            ];
            for refusal in refusals.into_iter().flatten() {
                tracing::warn!("train would refuse this: {refusal}");
            }
            print!("{}", cfg.to_toml());
        }
        return Ok(());
    }
    agreed(comm, micn::train::check_dataset_there(&cfg.data.dir, "data.dir").map_err(anyhow::Error::from))?;
    if !cfg.run.dir.as_os_str().is_empty() {
        logging::also_to_file(&micn::run_dir::RunDir::new(&cfg.run.dir).log(comm.rank()));
    }
    let interrupter = micn::train::Interrupter::on_signals();
    let summary = micn::train::train_until(&cfg, comm, &resume, &interrupter)?;
    if comm.rank() == 0 {
        let pace = match summary.samples_per_sec {
            rate if rate.is_nan() => "none of them trained by this process".to_string(),
            rate => format!("{rate:.0} samples/s"),
        };
        let mut text = format!(
            "test AUC {:.4}  GAUC {:.4}  log-loss {:.4}  after {} steps ({pace}, {:.1} s){}\n",
            summary.test_auc,
            summary.test_gauc,
            summary.test_logloss,
            summary.steps,
            summary.seconds,
            summary.oracle_auc.map(|o| format!("; oracle AUC {o:.4}")).unwrap_or_default()
        );
        if let Some(best) = &summary.selected {
            text += &format!(
                "selected by validation AUC {:.4}: step {} ({}), test AUC {:.4}  GAUC {:.4}  log-loss {:.4}\n",
                best.valid_auc, best.step, best.checkpoint, best.test_auc, best.test_gauc, best.test_logloss
            );
        }
        if summary.model_step != summary.steps {
            text +=
                &format!("model.safetensors holds that selected step {} (train.restore_best)\n", summary.model_step);
        }
        text += &format!("run directory {}\n", cfg.run.dir.display());
        if summary.stopped_by_signal {
            text += &format!(
                "stopped by a signal after checkpointing step {}; continue with --resume auto\n",
                summary.steps
            );
        }
        // After a hang-up the terminal is gone (EIO, or a closed pipe): the run directory holds
        // all of this. Output that cannot be written otherwise (a full disk) is said.
        let written = std::io::Write::write_all(&mut std::io::stdout(), text.as_bytes())
            .and_then(|()| std::io::Write::flush(&mut std::io::stdout()));
        if let Err(e) = written {
            let terminal_gone = e.kind() == std::io::ErrorKind::BrokenPipe || e.raw_os_error() == Some(libc::EIO);
            if !terminal_gone {
                return Err(StdoutFailed(e.to_string()).into());
            }
        }
    }
    Ok(())
}

fn eval(args: EvalArgs, comm: &dyn Communicator) -> anyhow::Result<()> {
    let EvalArgs { saved, json, retrieval, heldout } = args;
    let split = saved.split;
    if !retrieval.is_empty() {
        use micn::metrics::retrieval::RetrievalMetrics;
        ensure_usage!(retrieval.iter().all(|&n| n > 0), "--retrieval: every N must be at least 1");
        let row = |name: &str, m: &RetrievalMetrics| {
            println!(
                "{name:<13} recall@{n} {:.4}  HR@{n} {:.4}  NDCG@{n} {:.4}  (ComiRec's NDCG@{n} {:.4})",
                m.recall,
                m.hit_rate,
                m.ndcg,
                m.ndcg_comirec,
                n = m.n
            )
        };
        let Some(file) = heldout else {
            let (results, unknown) = micn::train::saved::retrieval_saved(
                saved.dir()?,
                saved.data.as_deref(),
                split,
                saved.device,
                &retrieval,
            )?;
            let clicked = results.first().map_or(0, |m| m.users);
            if json {
                let value = serde_json::json!({ "samples": clicked, "unknown_targets": unknown, "model": results });
                println!("{}", micn::json_doc::to_string(&value)?);
            } else {
                let unknown = match unknown {
                    0 => String::new(),
                    n => format!(" ({n} of them a target the vocabulary does not hold: a miss each)"),
                };
                println!("{clicked} clicked samples of the {} set, each its target to retrieve{unknown}", split.name());
                results.iter().for_each(|m| row("model", m));
            }
            return Ok(());
        };
        let done = micn::train::saved::retrieval_heldout(
            saved.dir()?,
            saved.data.as_deref(),
            saved.device,
            &file,
            &retrieval,
        )?;
        if json {
            println!("{}", micn::json_doc::to_string(&done)?);
            return Ok(());
        }
        let h = &done.held_out;
        println!(
            "{} held-out users in {}: {} history items seen ({} not in the model's vocabulary, dropped; {} users \
             left with none count as misses), {} items to retrieve ({} not in the vocabulary, never found)",
            done.users,
            file.display(),
            h.history_items,
            h.unknown_history_items,
            h.users_without_history,
            h.truth_items,
            h.unknown_truth_items
        );
        for (model, popular) in done.model.iter().zip(&done.most_popular) {
            row("model", model);
            row("most popular", popular);
        }
        if done.most_popular_by == micn::train::saved::Popularity::ClickedSamples {
            println!(
                "(most popular: by the clicked training samples, as this dataset keeps no interaction counts: \
                 DIEN's files have none, and a dataset prepared by an earlier micn can be prepared again to \
                 rank by every interaction, as ComiRec does)"
            );
        }
        return Ok(());
    }
    let result = micn::train::saved::eval_saved(saved.dir()?, saved.data.as_deref(), split, saved.device, comm)?;
    if comm.rank() == 0 {
        if json {
            println!("{}", micn::json_doc::to_string(&result)?);
        } else {
            println!(
                "{} AUC {:.4}  GAUC {:.4}  log-loss {:.4}  on {} samples",
                split.name(),
                result.auc,
                result.gauc,
                result.logloss,
                result.samples
            );
        }
    }
    Ok(())
}

fn predict(args: PredictArgs, comm: &dyn Communicator) -> anyhow::Result<()> {
    use micn::train::saved::Format;
    let PredictArgs { saved, out, format } = args;
    ensure_usage!(!out.is_dir(), "--out {}: is a directory; name a file (in it, say)", out.display());
    let format = format.or_else(|| Format::of(&out)).ok_or_else(|| {
        UsageError(format!("--out {}: give --format csv|jsonl, or a name ending in .csv or .jsonl", out.display()))
    })?;
    let (dir, data) = (saved.dir()?, saved.data.as_deref());
    let done = micn::train::saved::predict(dir, data, saved.split, saved.device, comm, (&out, format))?;
    // A diagnostic, not a result: `--out /dev/stdout` must hold the scores alone.
    if comm.rank() == 0 {
        tracing::info!("{} scores of the {} set written to {}", done.samples, done.split, done.out.display());
    }
    Ok(())
}

fn sweep(args: SweepArgs) -> anyhow::Result<()> {
    let SweepArgs { file, configs, grid, sets, repeats, np, launch_args, out, dry_run } = args;

    use micn::experiment::sweep::{self, SweepSpec};
    let mut spec = match &file {
        Some(path) => SweepSpec::from_file(path)?,
        None => SweepSpec { repeats: 1, np: 1, ..Default::default() },
    };
    spec.configs.extend(configs);
    let mut swept = std::collections::HashSet::new();
    for arg in &grid {
        let (key, values) = sweep::parse_grid(arg)?;
        ensure_usage!(swept.insert(key.clone()), "--grid {key}=… given twice: put all its values in one list");
        spec.set_grid(key, values);
    }
    for arg in &sets {
        spec.sets.push(micn::config::Override::parse(arg)?);
    }
    spec.repeats = repeats.unwrap_or(spec.repeats);
    spec.np = np.unwrap_or(spec.np);
    spec.out = out.unwrap_or(spec.out);
    spec.launch_args.extend(launch_args);
    ensure_not_root(&spec.out, "--out", "the sweep")?;
    ensure_usage!(
        spec.launch_args.is_empty() || spec.np > 1,
        "--launch-arg (or the sweep file's launch_args) goes to micn-launch, which only runs of more than one rank \
         go through: set --np (or np) above 1, or leave them out"
    );
    if dry_run {
        for run in sweep::plan(&spec)? {
            println!("{}: {}", run.dir.display(), sweep::run_state(&run)?);
        }
        return Ok(());
    }
    let runner = sweep::Runner::beside_current_exe(spec.np, spec.launch_args.clone())?;
    let outcome = sweep::run(&spec, &runner, &micn::train::Interrupter::on_signals())?;
    println!("{} runs trained, {} finished earlier", outcome.trained, outcome.skipped);
    print!("{}", outcome.report.table);
    println!("report: {}", outcome.report.markdown.display());
    Ok(())
}

fn report(dirs: &[PathBuf], out: &Path) -> anyhow::Result<()> {
    let written = micn::experiment::report::write(dirs, out)?;
    print!("{}", written.table);
    for l in &written.left_out {
        println!("left out {}: {}", l.dir.display(), l.why);
    }
    println!("{} runs; report: {}", written.runs, written.markdown.display());
    Ok(())
}

fn bench(command: BenchCommand) -> anyhow::Result<()> {
    let work_dir = match &command {
        BenchCommand::Quality { work_dir, .. }
        | BenchCommand::Checkpoint { work_dir, .. }
        | BenchCommand::Dist { work_dir, .. } => Some(work_dir),
        BenchCommand::Prepare { work_dir, .. } => work_dir.as_ref(),
        _ => None,
    };
    if let Some(dir) = work_dir {
        ensure_not_root(dir, "--work-dir", "the benchmark")?;
    }
    match command {
        BenchCommand::Quality { work_dir, preset, users, items, clusters, seeds, epochs, lr, device } => {
            use micn::bench::quality;
            ensure_usage!(seeds > 0 && epochs > 0, "--seeds and --epochs must be at least 1");
            ensure_usage!(lr > 0.0 && lr.is_finite(), "--lr must be > 0, got {lr}");
            let opts = quality::QualityOptions {
                work_dir,
                preset,
                users,
                items,
                clusters,
                seeds,
                epochs,
                lr,
                device,
                ..Default::default()
            };
            let report = quality::run(&opts)?;
            // The table first: a results file that cannot be written loses none of it.
            print!("{report}");
            let json = opts.work_dir.join("quality.json");
            let text = serde_json::to_string_pretty(&report)?;
            micn::io_error::replace_file(&json, |tmp| std::fs::write(tmp, &text))?;
            println!("(results: {})", json.display());
        }
        BenchCommand::Prepare { preset, users, items, protocol, work_dir, keep } => {
            use micn::bench::prepare;
            ensure_usage!(users != Some(0) && !matches!(items, Some(0 | 1)), "--users must be ≥ 1 and --items ≥ 2");
            let defaults = prepare::PrepareBenchOptions::default();
            let opts = prepare::PrepareBenchOptions {
                preset,
                users,
                items,
                protocol,
                keep,
                work_dir: work_dir.unwrap_or(defaults.work_dir.clone()),
                ..defaults
            };
            let report = prepare::run(&opts)?;
            print!("{report}");
        }
        BenchCommand::Checkpoint { work_dir, device } => {
            print!("{}", micn::bench::checkpoint::run(&work_dir, device)?);
        }
        BenchCommand::Dist { work_dir, samples, batches, trials, device } => {
            use micn::bench::dist;
            ensure_usage!(trials > 0, "--trials must be at least 1");
            ensure_usage!(
                batches.iter().all(|&b| b >= 2 && b % 2 == 0 && b <= MAX_BATCH),
                "--batch must be even (two ranks split it), at least 2 and at most {MAX_BATCH}"
            );
            ensure_usage!(
                batches.iter().all(|&b| b as u64 <= samples),
                "--samples must hold at least one batch (--samples {samples})"
            );
            let opts = dist::DistOptions { work_dir, samples, batches, trials, device, ..Default::default() };
            print!("{}", dist::run(&opts)?);
        }
        BenchCommand::Throughput { steps, warmup, threads, items, users, batches, models, device, json } => {
            use micn::bench::throughput;
            ensure_usage!(steps > 0, "--steps must be at least 1");
            // More would run for days (and their sum could overflow, timing no step).
            const MOST_STEPS: usize = 10_000_000;
            ensure_usage!(
                steps <= MOST_STEPS && warmup <= MOST_STEPS,
                "--steps and --warmup must be at most {MOST_STEPS} each, got {steps} and {warmup}"
            );
            ensure_usage!(batches.iter().all(|&b| b > 0), "--batch must be at least 1");
            // Bounds that keep the model (tables and Adam's moments) within a machine's memory.
            ensure_usage!((2..=10_000_000).contains(&items), "--items must lie in [2, 10000000], got {items}");
            ensure_usage!((2..=10_000_000).contains(&users), "--users must lie in [2, 10000000], got {users}");
            let most = micn::config::limits::THREADS as i32;
            ensure_usage!((1..=most).contains(&threads), "--threads must lie in [1, {most}], got {threads}");
            ensure_usage!(batches.iter().all(|&b| b <= MAX_BATCH), "--batch must be at most {MAX_BATCH}");
            let opts =
                throughput::ThroughputOptions { steps, warmup, threads, items, users, device, ..Default::default() };
            let rows = throughput::run(&opts, &models, &batches)?;
            if json {
                println!("{}", micn::json_doc::to_string(&rows)?);
            } else {
                print!("{}", throughput::table(&opts, &rows));
            }
        }
    }
    Ok(())
}

fn checkpoint(command: CheckpointCommand) -> anyhow::Result<()> {
    match command {
        CheckpointCommand::Verify { path } => {
            let state = micn::checkpoint::verify_reading(&path)?;
            println!("{}: complete, every checksum holds (step {})", path.display(), state.step);
        }
        CheckpointCommand::Inspect { path } => {
            let state = micn::checkpoint::verify_reading(&path)?;
            println!("checkpoint {}", path.display());
            println!("step {}  epoch {}  position in epoch {} samples", state.step, state.epoch, state.position);
            println!("world size {}  seed {}  micn {}", state.world_size, state.seed, state.code_version);
            println!("config hash {}", state.config_hash);
            for (step, auc, gauc, logloss) in &state.evaluations {
                println!("validation at step {step}: AUC {auc:.4}  GAUC {gauc:.4}  log-loss {logloss:.4}");
            }
            match state.own_evaluation() {
                Some((_, auc, ..)) => {
                    println!("own evaluation at step {}: AUC {auc:.4} (retention ranks it by this)", state.step)
                }
                None => println!("no evaluation at step {}: retention never keeps it as the best", state.step),
            }
            for entry in std::fs::read_dir(&path)? {
                let entry = entry?;
                println!("  {:<24} {:>12} bytes", entry.file_name().to_string_lossy(), entry.metadata()?.len());
            }
        }
    }
    Ok(())
}

fn data(command: DataCommand) -> anyhow::Result<()> {
    match command {
        DataCommand::Export { dir, out, max_hist_len, valid_share, seed } => {
            if !(0.0..1.0).contains(&valid_share) {
                return Err(UsageError(format!("--valid-share {valid_share}: must be in [0, 1)")).into());
            }
            let dataset = micn::data::Dataset::open(&dir)?;
            let max_hist_len = max_hist_len.unwrap_or(dataset.meta.max_hist_len);
            let opts = micn::data::export::ExportOptions { max_hist_len, valid_share, seed };
            let n = micn::data::export::export(&dataset, &out, &opts)?;
            println!("{}: {} train, {} valid, {} test samples", out.display(), n.train, n.valid, n.test);
        }
        DataCommand::Stats { dir, json } => {
            let dataset = micn::data::Dataset::open(&dir)?;
            let stats = micn::data::stats::compute(&dataset);
            if json {
                println!("{}", micn::json_doc::to_string(&stats)?);
            } else {
                print!("{stats}");
            }
        }
    }
    Ok(())
}

fn doctor(comm: &dyn Communicator, mpi: Option<MpiInfo>, json: bool, check_comm: bool) -> anyhow::Result<()> {
    tracing::info!(world_size = comm.size(), "collecting every rank's facts");
    let report = micn::doctor::collect(comm, mpi)?;
    let check = if check_comm {
        Some(dist::check::run(comm).map_err(|e| anyhow::anyhow!("communicator check failed: {e}"))?)
    } else {
        None
    };
    if comm.rank() != 0 {
        return Ok(());
    }
    if json {
        let mut value = serde_json::to_value(&report)?;
        if let Some(outcome) = &check {
            value["comm_check"] = serde_json::to_value(outcome)?;
        }
        println!("{}", micn::json_doc::to_string(&value)?);
    } else {
        print!("{report}");
        if check.is_some() {
            println!("communicator check: every collective gave the expected result on {} rank(s)", comm.size());
        }
    }
    Ok(())
}

fn synth(a: SynthArgs) -> anyhow::Result<()> {
    let mut cfg = a.preset.config(a.seed);
    macro_rules! set {
        ($($field:ident),*) => { $(if let Some(v) = a.$field { cfg.$field = v; })* };
    }
    set!(users, items, categories, clusters, interests, min_history, mean_history, noise, stay, category_signal);
    set!(brands, brand_signal);
    for (name, p) in [
        ("--noise", cfg.noise),
        ("--stay", cfg.stay),
        ("--category-signal", cfg.category_signal),
        ("--brand-signal", cfg.brand_signal),
    ] {
        ensure_usage!((0.0..=1.0).contains(&p), "{name} must lie in [0, 1], got {p}");
    }
    let started = std::time::Instant::now();
    let summary = micn::data::synth::generate(&cfg, &a.out)?;
    tracing::info!(
        reviews = summary.reviews,
        megabytes = summary.review_bytes as f64 / 1e6,
        seconds = started.elapsed().as_secs_f64(),
        "synthetic data written"
    );
    println!("reviews  {}", summary.reviews_file.display());
    println!("meta     {}", summary.meta_file.display());
    println!("oracle   {}", summary.oracle_file.display());
    Ok(())
}

fn prepare(a: PrepareArgs) -> anyhow::Result<()> {
    use micn::data::amazon::Release;
    use micn::data::input::Strictness;
    use micn::data::prepare;
    let strictness = if a.strict { Strictness::Strict } else { Strictness::Lenient };
    // A flag the format does not read is refused rather than left without effect.
    let given = [
        ("--reviews", a.reviews.is_some()),
        ("--meta", a.meta.is_some()),
        ("--oracle", a.oracle.is_some()),
        ("--sequences", a.sequences.is_some()),
        ("--item-attributes", a.item_attributes.is_some()),
        ("--category-attribute", a.category_attribute.is_some()),
        ("--max-attributes", a.max_attributes.is_some()),
        ("--interactions", a.interactions.is_some()),
        ("--dien-dir", a.dien_dir.is_some()),
        ("--protocol", a.protocol.is_some()),
        ("--max-hist-len", a.max_hist_len.is_some()),
        ("--seed", a.seed.is_some()),
    ];
    let common = ["--protocol", "--max-hist-len", "--seed"];
    // Why the format reads none of `why_for`, when a flag among them is given.
    let (format, reads, why_for, why): (&str, Vec<&str>, &[&str], &str) = match a.input_format {
        InputFormat::Amazon2014 | InputFormat::Amazon2018 | InputFormat::Amazon2023 => {
            ("amazon2014|amazon2018|amazon2023", [&["--reviews", "--meta", "--oracle"][..], &common].concat(), &[], "")
        }
        InputFormat::Sequences => (
            "sequences",
            [&["--sequences", "--item-attributes", "--category-attribute", "--max-attributes"][..], &common].concat(),
            &[],
            "",
        ),
        InputFormat::Interactions => (
            "interactions",
            [&["--interactions", "--meta"][..], &common].concat(),
            &["--item-attributes", "--category-attribute", "--max-attributes"],
            " (its items' categories come from Amazon meta, --meta)",
        ),
        InputFormat::Dien => (
            "dien",
            vec!["--dien-dir"],
            &common,
            " (DIEN's files fix the protocol, the history length and the samples)",
        ),
    };
    let ignored: Vec<&str> = given.iter().filter(|(flag, is)| *is && !reads.contains(flag)).map(|(f, _)| *f).collect();
    let why = if ignored.iter().any(|flag| why_for.contains(flag)) { why } else { "" };
    ensure_usage!(ignored.is_empty(), "--input-format {format} does not read {}{why}", ignored.join(", "));
    let protocol = a.protocol.unwrap_or(Protocol::Dien);
    let (max_hist_len, seed) = (a.max_hist_len.unwrap_or(20), a.seed.unwrap_or(1));
    let max_attributes = a.max_attributes.unwrap_or(8);
    let report = match a.input_format {
        InputFormat::Amazon2014 | InputFormat::Amazon2018 | InputFormat::Amazon2023 => {
            let release = match a.input_format {
                InputFormat::Amazon2014 => Release::Amazon2014,
                InputFormat::Amazon2018 => Release::Amazon2018,
                InputFormat::Amazon2023 => Release::Amazon2023,
                InputFormat::Sequences | InputFormat::Interactions | InputFormat::Dien => {
                    unreachable!("an Amazon input format")
                }
            };
            ensure_usage!(max_hist_len > 0, "--max-hist-len must be at least 1");
            let job = prepare::AmazonJob {
                release,
                reviews: a.reviews.ok_or_else(|| UsageError("--reviews FILE is required".into()))?,
                meta: a.meta,
                protocol,
                max_hist_len,
                seed,
                strictness,
                oracle: a.oracle,
                layout: prepare::Layout::Reviews,
            };
            prepare::prepare_amazon(&job, &a.out)?
        }
        InputFormat::Sequences => {
            ensure_usage!(max_hist_len > 0, "--max-hist-len must be at least 1");
            for (flag, given) in
                [("--category-attribute", a.category_attribute), ("--max-attributes", a.max_attributes)]
            {
                ensure_usage!(given.is_none() || a.item_attributes.is_some(), "{flag} needs --item-attributes FILE");
            }
            ensure_usage!(max_attributes > 0, "--max-attributes must be at least 1");
            let job = prepare::AmazonJob {
                release: Release::Amazon2014,
                reviews: a
                    .sequences
                    .ok_or_else(|| UsageError("--input-format sequences needs --sequences FILE".into()))?,
                meta: a.item_attributes,
                protocol,
                max_hist_len,
                seed,
                strictness,
                oracle: None,
                layout: prepare::Layout::Sequences(prepare::Sequences {
                    category_attribute: a.category_attribute,
                    max_attributes,
                }),
            };
            prepare::prepare_amazon(&job, &a.out)?
        }
        InputFormat::Interactions => {
            ensure_usage!(max_hist_len > 0, "--max-hist-len must be at least 1");
            let job = prepare::AmazonJob {
                release: Release::Amazon2014,
                reviews: a
                    .interactions
                    .ok_or_else(|| UsageError("--input-format interactions needs --interactions FILE".into()))?,
                meta: a.meta,
                protocol,
                max_hist_len,
                seed,
                strictness,
                oracle: None,
                layout: prepare::Layout::Interactions,
            };
            prepare::prepare_amazon(&job, &a.out)?
        }
        InputFormat::Dien => {
            let dir = a.dien_dir.ok_or_else(|| UsageError("--input-format dien needs --dien-dir DIR".into()))?;
            micn::data::dien_files::prepare(&dir, strictness, &a.out)?
        }
    };
    for w in &report.warnings {
        tracing::warn!("{w}");
    }
    let c = &report.meta.counts;
    println!("dataset  {}", report.out.display());
    println!(
        "samples  train {}  test {}  vocabularies: users {}  items {}  categories {}",
        c.train_samples, c.test_samples, c.users, c.items, c.cats
    );
    println!(
        "speed    {:.2} s in all; input read at {:.0} MB/s, {:.0} records/s (reviews, interactions or samples)",
        report.seconds, report.review_mb_per_s, report.reviews_per_s
    );
    println!("categories: {}", report.meta.categories);
    if let Some(auc) = report.meta.oracle_auc {
        println!("oracle   test AUC {auc:.4} (the generator's own scores: a ceiling for any model)");
    }
    Ok(())
}
