//! `micn report`: finished runs under some directories, grouped by the configuration keys whose
//! values differ between them (`train.seed` and `run.dir` aside, so repeats fall into one group),
//! as a markdown table and a CSV of test AUC / GAUC / log-loss (mean ± sample std over the
//! repeats, with their number), and plots as PNG and SVG: the training loss of every task over
//! steps, validation AUC over steps, and test AUC against every swept numeric key with error bars.
//!
//! A run directory is one with a `config.toml`. One without a `summary.json`, or stopped by a
//! signal, is unfinished; unfinished runs, unreadable runs and directories that hold no run are
//! named under "Left out" and kept out of the table.
use std::cmp::Ordering;
use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use super::plot::{self, Panel, PlotError, Point, Series};
use crate::config::flatten;
use crate::data::prepare::Staging;
use crate::io_error::PathIo;
use crate::metrics::mean_std;
use crate::run_dir::RunDir;

#[derive(Debug, thiserror::Error)]
pub enum ReportError {
    #[error("no finished run under {dirs}{}", if left_out.is_empty() { String::new() } else { format!(": {left_out}") })]
    NoRuns { dirs: String, left_out: String },
    #[error(transparent)]
    Io(#[from] PathIo),
    #[error("{0}")]
    Plot(#[from] PlotError),
    #[error(transparent)]
    Output(#[from] crate::data::DataError),
    /// An `--out` that is part of a run ([`crate::run_dir::RunDir::part_of_a_run`]): that run's
    /// `--overwrite` or retention would delete the report.
    #[error(
        "{out}: {what}, which only the run writes (and its --overwrite or retention deletes): choose another --out"
    )]
    OutputInRun { out: PathBuf, what: String },
}

impl ReportError {
    /// Whether running the same command again would fail the same way: no finished run under
    /// the directories given, or a file that is missing or may not be read or written.
    pub fn is_input_error(&self) -> bool {
        match self {
            Self::NoRuns { .. } | Self::OutputInRun { .. } => true,
            Self::Io(e) => e.is_lasting(),
            Self::Plot(_) => false,
            Self::Output(e) => e.is_input_error(),
        }
    }
}

/// Keys that differ between repeats of one setting.
const NOT_GROUPED: [&str; 2] = ["train.seed", "run.dir"];

/// The training-loss fields of `metrics.jsonl` and their task names.
const LOSSES: [(&str, &str); 3] =
    [("loss_main", "main task"), ("loss_micn", "MICN"), ("loss_model_aux", "model auxiliary (DIEN, CAMN)")];

/// One finished run.
#[derive(Debug, Clone)]
pub struct Run {
    pub dir: PathBuf,
    /// The run's resolved configuration, flattened to dotted keys.
    pub config: BTreeMap<String, toml::Value>,
    pub test_auc: f64,
    pub test_gauc: f64,
    pub test_logloss: f64,
    pub seconds: f64,
    pub oracle_auc: Option<f64>,
    /// Training loss per `metrics.jsonl` field (`loss_main`, ...): (step, loss).
    pub losses: BTreeMap<&'static str, Vec<(u64, f64)>>,
    /// Test AUC of every evaluation: (step, AUC).
    pub evals: Vec<(u64, f64)>,
}

/// A directory kept out of the table, and why.
#[derive(Debug, Clone, PartialEq)]
pub struct LeftOut {
    pub dir: PathBuf,
    pub why: String,
}

/// Everything found under the directories given.
#[derive(Debug, Default)]
pub struct Found {
    pub runs: Vec<Run>,
    pub left_out: Vec<LeftOut>,
}

/// `dir`'s real path (itself where it has none).
fn canonical(dir: &Path) -> PathBuf {
    dir.canonicalize().unwrap_or_else(|_| dir.to_path_buf())
}

/// Walk `dirs` for runs.
pub fn discover(dirs: &[PathBuf]) -> Found {
    let mut found = Found::default();
    // The real path of every run counted (or left out): overlapping arguments (`OUT OUT/point`)
    // name some runs twice; each counts once.
    let mut counted = HashSet::new();
    for dir in dirs {
        if !dir.is_dir() {
            let why = if dir.exists() { "not a directory" } else { "no such directory" };
            found.left_out.push(LeftOut { dir: dir.clone(), why: why.into() });
        } else if !visit(dir, &mut found, &mut counted, &mut HashMap::new()) {
            found
                .left_out
                .push(LeftOut { dir: dir.clone(), why: "not a run directory (no config.toml) and holds none".into() });
        }
    }
    found
}

/// Record `dir` if it is a run, else look below it; true when it is or holds a run (or a report).
/// `walked`: the real path of every directory this walk entered, with whether it holds a run
/// (`None` while it is walked: the directories above `dir`). Each is walked once, whatever the
/// links that lead to it: a link back to one above is not followed, so links that loop end the
/// walk, and links that lead to one directory many ways (each level of a tree linking twice to
/// the next) do not make it walk forever.
fn visit(
    dir: &Path,
    found: &mut Found,
    counted: &mut HashSet<PathBuf>,
    walked: &mut HashMap<PathBuf, Option<bool>>,
) -> bool {
    if RunDir::new(dir).holds_run() {
        if !counted.insert(canonical(dir)) {
            return true;
        }
        match read_run(dir) {
            Ok(run) => found.runs.push(run),
            // One line each in the report's list (a TOML error spans several).
            Err(why) => found
                .left_out
                .push(LeftOut { dir: dir.to_path_buf(), why: why.split_whitespace().collect::<Vec<_>>().join(" ") }),
        }
        return true;
    }
    // A report's own directory is neither a run nor left out; runs beside its files still count
    // (`micn report DIR --out DIR`).
    let report = dir.join("report.md").is_file();
    let real = canonical(dir);
    walked.insert(real.clone(), None);
    let mut subdirs: Vec<PathBuf> = std::fs::read_dir(dir)
        .map(|rd| rd.filter_map(|e| e.ok()).map(|e| e.path()).filter(|p| p.is_dir()).collect())
        .unwrap_or_default();
    subdirs.sort();
    let mut held: Vec<(PathBuf, bool)> = Vec::new();
    for sub in subdirs {
        match walked.get(&canonical(&sub)) {
            // Above this one: a loop.
            Some(None) => {}
            // Walked through another link: what it holds counts again, what it lacks is said
            // once (left out once, below, whichever link names it).
            Some(&Some(holds)) => held.push((sub, holds)),
            None => {
                let holds = visit(&sub, found, counted, walked);
                held.push((sub, holds));
            }
        }
    }
    let holds = held.iter().any(|(_, holds)| *holds);
    walked.insert(real, Some(holds || report));
    if !holds {
        return report;
    }
    for (sub, _) in held.into_iter().filter(|(_, holds)| !holds) {
        if !found.left_out.iter().any(|l| canonical(&l.dir) == canonical(&sub)) {
            found
                .left_out
                .push(LeftOut { dir: sub, why: "not a run directory (no config.toml) and holds none".into() });
        }
    }
    true
}

/// A finished run, or why it cannot be used.
pub(super) fn read_run(dir: &Path) -> Result<Run, String> {
    let run_dir = RunDir::new(dir);
    // Grouped by the keys as written: a report reads runs of older versions too.
    let config = run_dir.read_config_table().map_err(|e| e.to_string())?;
    let checkpoint_note = || {
        crate::checkpoint::list(&run_dir.checkpoints())
            .first()
            .map(|c| format!("; its newest checkpoint is {}", c.file_name().unwrap_or_default().to_string_lossy()))
            .unwrap_or_default()
    };
    let summary = run_dir
        .read_summary()
        .map_err(|e| e.to_string())?
        .ok_or_else(|| format!("unfinished: no summary.json{}", checkpoint_note()))?;
    if summary["stopped_by_signal"] == true {
        return Err(format!(
            "unfinished: stopped by a signal after step {}{}",
            summary["steps"].as_u64().unwrap_or(0),
            checkpoint_note()
        ));
    }
    let number = |key: &str| summary[key].as_f64().ok_or_else(|| format!("summary.json: no number {key}"));
    // The model selected by validation AUC, where the run has one; else the final model. An
    // undefined metric (a GAUC with no user of both classes) is `null`: NaN in the table.
    let selected = |key: &str| {
        let (value, name) = match &summary["selected"] {
            serde_json::Value::Null => (summary.get(key), key.to_string()),
            chosen => (chosen.get(key), format!("selected.{key}")),
        };
        match value {
            Some(serde_json::Value::Null) if key != "test_auc" => Ok(f64::NAN),
            value => value.and_then(serde_json::Value::as_f64).ok_or_else(|| format!("summary.json: no number {name}")),
        }
    };
    let mut run = Run {
        dir: dir.to_path_buf(),
        config: flatten(&config).into_iter().map(same_path_same_text).collect(),
        test_auc: selected("test_auc")?,
        test_gauc: selected("test_gauc")?,
        test_logloss: selected("test_logloss")?,
        seconds: number("seconds")?,
        oracle_auc: summary["oracle_auc"].as_f64(),
        losses: BTreeMap::new(),
        evals: Vec::new(),
    };
    for v in run_dir.read_metrics().map_err(|e| e.to_string())? {
        let Some(step) = v["step"].as_u64() else { continue };
        for (field, _) in LOSSES {
            if let Some(loss) = v[field].as_f64() {
                run.losses.entry(field).or_default().push((step, loss));
            }
        }
        // Mid-run evaluations: the validation split's (`eval_auc` in runs made before it existed).
        if let Some(auc) = v["valid_auc"].as_f64().or_else(|| v["eval_auc"].as_f64()) {
            run.evals.push((step, auc));
        }
    }
    Ok(run)
}

/// Mean and sample standard deviation of one metric over a group's runs.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Stat {
    pub mean: f64,
    pub std: f64,
}

impl Stat {
    fn of(xs: impl Iterator<Item = f64>) -> Self {
        let (mean, std) = mean_std(&xs.collect::<Vec<_>>());
        Self { mean, std }
    }
}

/// Runs that share the values of every grouping key.
#[derive(Debug, Clone)]
pub struct Group {
    /// Values of `Table::keys`, in order.
    pub values: Vec<toml::Value>,
    /// Indices into the runs.
    pub runs: Vec<usize>,
    pub auc: Stat,
    pub gauc: Stat,
    pub logloss: Stat,
    pub seconds: Stat,
}

/// The report table.
#[derive(Debug, Clone)]
pub struct Table {
    /// The configuration keys whose values differ between runs.
    pub keys: Vec<String>,
    pub groups: Vec<Group>,
}

/// Numbers in numeric order, then everything else by its text.
fn compare_values(a: &toml::Value, b: &toml::Value) -> Ordering {
    match (number(a), number(b)) {
        (Some(x), Some(y)) => x.total_cmp(&y),
        (Some(_), None) => Ordering::Less,
        (None, Some(_)) => Ordering::Greater,
        (None, None) => a.to_string().cmp(&b.to_string()),
    }
}

fn number(v: &toml::Value) -> Option<f64> {
    match v {
        toml::Value::Integer(i) => Some(*i as f64),
        toml::Value::Float(f) => Some(*f),
        _ => None,
    }
}

/// The configuration's paths, written as the same path (`./data`, `data/`, `data/./x` as
/// `data`, `data/x`), so that runs on one dataset spelt two ways group as repeats of one setting.
/// Only the spelling goes: `..` and links stay (what they lead to depends on where the run ran).
fn same_path_same_text((key, value): (String, toml::Value)) -> (String, toml::Value) {
    const PATHS: [&str; 2] = ["data.dir", "model.mfn_pretrained"];
    match value {
        toml::Value::String(path) if PATHS.contains(&key.as_str()) && !path.is_empty() => {
            let same: PathBuf = Path::new(&path).components().filter(|c| *c != std::path::Component::CurDir).collect();
            let same = if same.as_os_str().is_empty() { ".".into() } else { same };
            (key, toml::Value::String(same.to_string_lossy().into_owned()))
        }
        other => (key, other),
    }
}

/// A value as the table shows it (strings without quotes; a missing key as "–").
fn show(v: &toml::Value) -> String {
    match v {
        toml::Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

/// Group runs by the keys that differ between them.
pub fn group(runs: &[Run]) -> Table {
    let all_keys: BTreeSet<&String> = runs.iter().flat_map(|r| r.config.keys()).collect();
    let missing = toml::Value::String("–".into());
    let keys: Vec<String> = all_keys
        .into_iter()
        .filter(|k| !NOT_GROUPED.contains(&k.as_str()))
        .filter(|k| runs.iter().any(|r| r.config.get(*k) != runs[0].config.get(*k)))
        .cloned()
        .collect();
    let mut by_values: Vec<(Vec<toml::Value>, Vec<usize>)> = Vec::new();
    for (i, run) in runs.iter().enumerate() {
        let values: Vec<toml::Value> = keys.iter().map(|k| run.config.get(k).unwrap_or(&missing).clone()).collect();
        match by_values.iter_mut().find(|(v, _)| *v == values) {
            Some((_, members)) => members.push(i),
            None => by_values.push((values, vec![i])),
        }
    }
    by_values.sort_by(|(a, _), (b, _)| {
        a.iter().zip(b).map(|(x, y)| compare_values(x, y)).find(|o| o.is_ne()).unwrap_or(Ordering::Equal)
    });
    let groups = by_values
        .into_iter()
        .map(|(values, members)| {
            let stat = |f: fn(&Run) -> f64| Stat::of(members.iter().map(|&i| f(&runs[i])));
            Group {
                values,
                auc: stat(|r| r.test_auc),
                gauc: stat(|r| r.test_gauc),
                logloss: stat(|r| r.test_logloss),
                seconds: stat(|r| r.seconds),
                runs: members,
            }
        })
        .collect();
    Table { keys, groups }
}

/// The fewest last parts of `path` that no path of `others` ends with (the whole path when
/// every tail is shared).
fn shortest_distinct_tail(path: &str, others: &[&str]) -> String {
    let parts: Vec<&std::ffi::OsStr> = Path::new(path).iter().collect();
    (1..parts.len())
        .map(|n| parts[parts.len() - n..].iter().collect::<PathBuf>())
        .find(|tail| others.iter().all(|other| !Path::new(other).ends_with(tail)))
        .map_or_else(|| path.to_string(), |tail| tail.to_string_lossy().into_owned())
}

impl Table {
    /// A short legend label of the group's values for every key but `except`: `phi=0.3`,
    /// `dien`, `micn on`, a path by as many of its last parts as tell it from the key's other
    /// paths (`data`, or `books/data` beside `electronics/data`); "all runs" when nothing is left.
    pub fn label(&self, group: &Group, except: &[&str]) -> String {
        let parts: Vec<String> = self
            .keys
            .iter()
            .enumerate()
            .zip(&group.values)
            .filter(|((_, k), _)| !except.contains(&k.as_str()))
            .map(|((index, key), value)| {
                let (section, last) = key.rsplit_once('.').unwrap_or(("", key));
                match value {
                    toml::Value::Boolean(on) if last == "enabled" => {
                        format!("{section} {}", if *on { "on" } else { "off" })
                    }
                    toml::Value::String(s) if last.ends_with("dir") => {
                        let others = self.groups.iter().filter_map(|g| g.values[index].as_str()).filter(|o| o != s);
                        shortest_distinct_tail(s, &others.collect::<Vec<_>>())
                    }
                    toml::Value::String(s) => s.clone(),
                    other => format!("{last}={other}"),
                }
            })
            .collect();
        if parts.is_empty() {
            "all runs".into()
        } else {
            parts.join(", ")
        }
    }

    /// The keys whose value is the same in every one of `groups`.
    fn constant_keys(&self, groups: &[&Group]) -> Vec<&str> {
        (0..self.keys.len())
            .filter(|&k| groups.iter().all(|g| g.values[k] == groups[0].values[k]))
            .map(|k| self.keys[k].as_str())
            .collect()
    }

    /// Curves of many groups are split into one panel per value of the first key (one per
    /// dataset in Table 2); each panel's title names what its groups share.
    fn partitions(&self) -> Vec<(String, Vec<&Group>)> {
        let all: Vec<&Group> = self.groups.iter().collect();
        if self.groups.len() <= 8 || self.keys.len() < 2 {
            return vec![(String::new(), all)];
        }
        let mut parts: Vec<(toml::Value, Vec<&Group>)> = Vec::new();
        for g in all {
            match parts.iter_mut().find(|(v, _)| *v == g.values[0]) {
                Some((_, members)) => members.push(g),
                None => parts.push((g.values[0].clone(), vec![g])),
            }
        }
        parts
            .into_iter()
            .map(|(_, members)| {
                let constant = self.constant_keys(&members);
                let varying: Vec<&str> =
                    self.keys.iter().map(String::as_str).filter(|k| !constant.contains(k)).collect();
                (format!(" ({})", self.label(members[0], &varying)), members)
            })
            .collect()
    }

    /// The markdown table.
    pub fn markdown(&self) -> String {
        let mut out = String::new();
        let mut header: Vec<String> = self.keys.iter().map(|k| format!("`{k}`")).collect();
        header.extend(["n", "test AUC", "test GAUC", "test log-loss", "seconds / run"].map(String::from));
        let _ = writeln!(out, "| {} |", header.join(" | "));
        let _ = writeln!(out, "|{}", header.iter().map(|_| "---|").collect::<String>());
        for g in &self.groups {
            // A `|` in a value (a path) would end its cell.
            let mut cells: Vec<String> = g.values.iter().map(|v| show(v).replace('|', "\\|")).collect();
            // One run has no spread to show (its sample standard deviation is undefined).
            let pm = |s: &Stat| match g.runs.len() {
                1 => format!("{:.4}", s.mean),
                _ => format!("{:.4} ± {:.4}", s.mean, s.std),
            };
            cells.extend([g.runs.len().to_string(), pm(&g.auc), pm(&g.gauc), pm(&g.logloss)]);
            // Whole seconds, but a tenth below 10 s (short runs would all read 0).
            let seconds = g.seconds.mean;
            cells.push(if seconds < 10.0 { format!("{seconds:.1}") } else { format!("{seconds:.0}") });
            let _ = writeln!(out, "| {} |", cells.join(" | "));
        }
        out
    }

    /// The same as CSV (full precision; a field with a comma or quote is quoted).
    pub fn csv(&self) -> String {
        let field = |s: String| {
            if s.contains([',', '"', '\n']) {
                format!("\"{}\"", s.replace('"', "\"\""))
            } else {
                s
            }
        };
        let mut header: Vec<String> = self.keys.iter().cloned().map(field).collect();
        header.extend(
            [
                "n",
                "test_auc_mean",
                "test_auc_std",
                "test_gauc_mean",
                "test_gauc_std",
                "test_logloss_mean",
                "test_logloss_std",
                "seconds_mean",
            ]
            .map(String::from),
        );
        let mut out = header.join(",") + "\n";
        for g in &self.groups {
            let mut cells: Vec<String> = g.values.iter().map(|v| field(show(v))).collect();
            cells.push(g.runs.len().to_string());
            for s in [&g.auc, &g.gauc, &g.logloss] {
                let std = if g.runs.len() > 1 { s.std.to_string() } else { String::new() };
                cells.extend([s.mean.to_string(), std]);
            }
            cells.push(g.seconds.mean.to_string());
            out += &(cells.join(",") + "\n");
        }
        out
    }
}

/// The mean curve of a group: at the steps every run of it has, the mean over its runs.
fn mean_curve<'r>(curves: impl Iterator<Item = &'r [(u64, f64)]>) -> Vec<Point> {
    let curves: Vec<&[(u64, f64)]> = curves.collect();
    let mut at: BTreeMap<u64, Vec<f64>> = BTreeMap::new();
    for curve in &curves {
        for &(step, y) in curve.iter() {
            at.entry(step).or_default().push(y);
        }
    }
    at.into_iter()
        .filter(|(_, ys)| ys.len() == curves.len())
        .map(|(step, ys)| Point { x: step as f64, y: mean_std(&ys).0, err: None })
        .collect()
}

/// The figures of a table: (file stem, panels, panels per row).
pub fn figures(runs: &[Run], table: &Table) -> Vec<(String, Vec<Panel>, usize)> {
    let mut figures = Vec::new();
    let parts = table.partitions();
    // Legend labels within a panel leave out what all its groups share.
    let labels = |groups: &[&Group]| {
        let shared = table.constant_keys(groups);
        groups.iter().map(|g| table.label(g, &shared)).collect::<Vec<_>>()
    };
    let tasks: Vec<&(&str, &str)> =
        LOSSES.iter().filter(|(field, _)| runs.iter().any(|r| r.losses.contains_key(field))).collect();
    let mut loss_panels = Vec::new();
    for (suffix, groups) in &parts {
        for (field, task) in &tasks {
            let with_task: Vec<&Group> =
                groups.iter().copied().filter(|g| g.runs.iter().all(|&i| runs[i].losses.contains_key(field))).collect();
            let series = with_task
                .iter()
                .zip(labels(&with_task))
                .map(|(g, label)| Series {
                    label,
                    points: mean_curve(g.runs.iter().map(|&i| runs[i].losses[field].as_slice())),
                })
                .collect();
            loss_panels.push(Panel {
                title: format!("training loss: {task}{suffix}"),
                x_label: "step".into(),
                y_label: format!("{task} loss (mean over repeats)"),
                x_whole: true,
                series,
            });
        }
    }
    if !tasks.is_empty() {
        figures.push(("loss".to_string(), loss_panels, tasks.len()));
    }
    let auc_panels: Vec<Panel> = parts
        .iter()
        .map(|(suffix, groups)| Panel {
            title: format!("validation AUC during training{suffix}"),
            x_label: "step".into(),
            y_label: "validation AUC (mean over repeats)".into(),
            x_whole: true,
            series: groups
                .iter()
                .zip(labels(groups))
                .map(|(g, label)| Series {
                    label,
                    points: mean_curve(g.runs.iter().map(|&i| runs[i].evals.as_slice())),
                })
                .collect(),
        })
        .collect();
    let per_row = auc_panels.len();
    figures.push(("auc-over-steps".to_string(), auc_panels, per_row));
    // AUC against every numeric key: one line per setting of the other keys, drawn when some
    // line has two points or more (a key that only follows another, like the history length of
    // each dataset, gets none).
    for (k, key) in table.keys.iter().enumerate() {
        if !table.groups.iter().all(|g| number(&g.values[k]).is_some()) {
            continue;
        }
        let mut lines: Vec<Series> = Vec::new();
        for g in &table.groups {
            let label = table.label(g, &[key.as_str()]);
            let point = Point { x: number(&g.values[k]).expect("numeric"), y: g.auc.mean, err: Some(g.auc.std) };
            match lines.iter_mut().find(|s| s.label == label) {
                Some(line) => line.points.push(point),
                None => lines.push(Series { label, points: vec![point] }),
            }
        }
        if lines.iter().all(|line| line.points.len() < 2) {
            continue;
        }
        for line in &mut lines {
            line.points.sort_by(|a, b| a.x.total_cmp(&b.x));
            if line.label == "all runs" {
                line.label = String::new();
            }
        }
        let n: BTreeSet<usize> = table.groups.iter().map(|g| g.runs.len()).collect();
        let n: Vec<String> = n.iter().map(usize::to_string).collect();
        let panel = Panel {
            title: format!("test AUC against {key}"),
            x_label: key.clone(),
            x_whole: false,
            y_label: format!("test AUC (mean ± std, n = {})", n.join("/")),
            series: lines,
        };
        figures.push((format!("auc-vs-{key}"), vec![panel], 1));
    }
    figures
}

/// Panels side by side in one figure, at most.
const MAX_COLUMNS: usize = 4;
/// Rows of panels in one figure file, at most: more go to `STEM-2`, `STEM-3`, ... so that no
/// image grows past what a viewer opens (800 groups drew one PNG 304,000 pixels wide).
const MAX_ROWS: usize = 4;

/// The files a figure of `panels` in rows of `per_row` is drawn into: (stem, its panels, panels
/// per row), at most [`MAX_ROWS`] rows of at most [`MAX_COLUMNS`] each.
fn figure_files<'p>(stem: &str, panels: &'p [Panel], per_row: usize) -> Vec<(String, &'p [Panel], usize)> {
    let per_row = per_row.clamp(1, MAX_COLUMNS);
    panels
        .chunks(per_row * MAX_ROWS)
        .enumerate()
        .map(|(k, chunk)| (if k == 0 { stem.to_string() } else { format!("{stem}-{}", k + 1) }, chunk, per_row))
        .collect()
}

/// What `write` produced.
#[derive(Debug, Clone)]
pub struct Written {
    pub markdown: PathBuf,
    pub table: String,
    pub runs: usize,
    pub left_out: Vec<LeftOut>,
}

/// A report written again must not keep figures the new one no longer draws: remove the figure
/// files that the `earlier` report links to and the new `report.md` in `out` does not (and
/// nothing else: a user's own file stays, whatever its name).
fn remove_old_figures(out: &Path, earlier: &str) -> std::io::Result<()> {
    let now = match std::fs::read(out.join("report.md")) {
        Ok(md) => String::from_utf8_lossy(&md).into_owned(),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => String::new(),
        Err(e) => return Err(e),
    };
    let drawn = figure_links(&now);
    for name in figure_links(earlier).into_iter().filter(|name| !drawn.contains(name)) {
        match std::fs::remove_file(out.join(name)) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(e),
            _ => {}
        }
    }
    Ok(())
}

/// The figure files a `report.md` links to: its image lines' `](NAME.png)` and `](NAME.svg)`
/// targets that are plain file names.
fn figure_links(md: &str) -> Vec<&str> {
    md.lines()
        .filter(|line| line.starts_with("!["))
        .flat_map(|line| line.split("](").skip(1))
        .filter_map(|rest| rest.split_once(')').map(|(target, _)| target))
        .filter(|t| (t.ends_with(".png") || t.ends_with(".svg")) && !t.contains(['/', '\\']) && !t.starts_with('.'))
        .collect()
}

/// Find the runs under `dirs` and write `report.md`, `report.csv` and the figures into `out`,
/// whole or not at all: built beside it (a failure, a full disk say, leaves `out` as it was),
/// then each file moved in, `report.md` last (stopped midway, `out` holds a `report.md` whose
/// every figure is there); figures of an earlier report that the new one does not draw are
/// removed once it is in, other files stay.
pub fn write(dirs: &[PathBuf], out: &Path) -> Result<Written, ReportError> {
    let found = discover(dirs);
    let list = |dirs: &[PathBuf]| dirs.iter().map(|d| d.display().to_string()).collect::<Vec<_>>().join(", ");
    if found.runs.is_empty() {
        // One line (errors are): each directory left out, and why.
        let left_out =
            found.left_out.iter().map(|l| format!("{} ({})", l.dir.display(), l.why)).collect::<Vec<_>>().join("; ");
        return Err(ReportError::NoRuns { dirs: list(dirs), left_out });
    }
    if let Some(what) = RunDir::part_of_a_run(out) {
        return Err(ReportError::OutputInRun { out: out.to_path_buf(), what });
    }
    let io = |path: &Path| {
        let path = path.to_path_buf();
        move |source| ReportError::Io(PathIo { path, source })
    };
    let staging = Staging::merging(out)?;
    let final_out = out;
    let out = staging.tmp.as_path();
    let table = group(&found.runs);
    let mut md = format!(
        "# micn report\n\n{} finished runs under {} in {} groups; the columns are the configuration keys \
         whose values differ between runs (`train.seed` and `run.dir` aside). Metrics are on the test set, \
         of each run's checkpoint with the best validation AUC (of the final model for runs without a \
         validation split): mean ± sample standard deviation over the n runs of a group.\n\n",
        found.runs.len(),
        list(dirs),
        table.groups.len()
    );
    let table_md = table.markdown();
    md += &table_md;
    // One oracle AUC per synthetic dataset.
    let oracles: BTreeSet<String> = found
        .runs
        .iter()
        .filter_map(|r| {
            let data = r.config.get("data.dir").map(|d| format!(" ({})", show(d))).unwrap_or_default();
            r.oracle_auc.map(|o| format!("{o:.4}{data}"))
        })
        .collect();
    if !oracles.is_empty() {
        let _ = writeln!(
            md,
            "\nAUC of the synthetic generator's own scores (the best any model can do): {}.",
            oracles.into_iter().collect::<Vec<_>>().join(", ")
        );
    }
    md += "\n## Plots\n\n";
    for (stem, panels, per_row) in figures(&found.runs, &table) {
        for (stem, panels, per_row) in figure_files(&stem, &panels, per_row) {
            plot::write_figure(&out.join(&stem), panels, per_row)?;
            let _ = writeln!(md, "![{stem}]({stem}.png) ([SVG]({stem}.svg))\n");
        }
    }
    if !found.left_out.is_empty() {
        md += "## Left out\n\n";
        for l in &found.left_out {
            let _ = writeln!(md, "- `{}`: {}", l.dir.display(), l.why);
        }
    }
    md += "\n## Runs\n\n";
    for g in &table.groups {
        let dirs: Vec<String> = g.runs.iter().map(|&i| format!("`{}`", found.runs[i].dir.display())).collect();
        let _ = writeln!(md, "- {}: {}", table.label(g, &[]), dirs.join(", "));
    }
    let markdown = out.join("report.md");
    std::fs::write(&markdown, &md).map_err(io(&markdown))?;
    let csv = out.join("report.csv");
    std::fs::write(&csv, table.csv()).map_err(io(&csv))?;
    staging.commit_into("report.md", remove_old_figures)?;
    let markdown = final_out.join("report.md");
    Ok(Written { markdown, table: table_md, runs: found.runs.len(), left_out: found.left_out })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A hand-made finished run directory.
    #[test]
    fn a_run_counts_with_the_test_metrics_of_its_checkpoint_selected_by_validation() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = run_dir(tmp.path(), "r", 0.3, 1, 0.70);
        assert_eq!(read_run(&dir).unwrap().test_auc, 0.70, "without `selected`: the final model");
        let summary = "{\"test_auc\": 0.70, \"test_gauc\": 0.69, \"test_logloss\": 0.5, \"seconds\": 10.0, \
             \"steps\": 20, \"stopped_by_signal\": false, \"selected\": {\"step\": 10, \"valid_auc\": 0.8, \
             \"test_auc\": 0.75, \"test_gauc\": 0.74, \"test_logloss\": 0.45}}";
        std::fs::write(dir.join("summary.json"), summary).unwrap();
        let run = read_run(&dir).unwrap();
        assert_eq!((run.test_auc, run.test_gauc, run.test_logloss), (0.75, 0.74, 0.45));
        // A damaged selection is named, not replaced by the final model's figures.
        std::fs::write(dir.join("summary.json"), summary.replace("\"test_auc\": 0.75", "\"test_auc\": \"x\"")).unwrap();
        assert_eq!(read_run(&dir).unwrap_err(), "summary.json: no number selected.test_auc");
    }

    fn run_dir(root: &Path, name: &str, phi: f64, seed: u64, auc: f64) -> PathBuf {
        run_with(root, name, &format!("[micn]\nphi = {phi:?}\nenabled = true\n[train]\nseed = {seed}\n"), auc)
    }

    /// A hand-made finished run directory with this configuration (its run.dir added).
    fn run_with(root: &Path, name: &str, config: &str, auc: f64) -> PathBuf {
        let dir = root.join(name);
        std::fs::create_dir_all(&dir).unwrap();
        let config = format!("{config}[run]\ndir = \"{}\"\n", dir.display());
        std::fs::write(dir.join("config.toml"), config).unwrap();
        let summary = format!(
            "{{\"test_auc\": {auc}, \"test_gauc\": {}, \"test_logloss\": 0.5, \"seconds\": 10.0, \"steps\": 20, \
             \"stopped_by_signal\": false, \"oracle_auc\": 0.9}}",
            auc - 0.01
        );
        std::fs::write(dir.join("summary.json"), summary).unwrap();
        let metrics = format!(
            "{{\"step\":10,\"epoch\":0,\"loss_main\":0.69,\"loss_micn\":3.0}}\n{{\"step\":10,\"epoch\":0,\"eval_auc\":0.6}}\n\
             {{\"step\":20,\"epoch\":1,\"loss_main\":0.6,\"loss_micn\":2.5}}\n{{\"step\":20,\"epoch\":1,\"valid_auc\":{auc}}}\n"
        );
        std::fs::write(dir.join("metrics.jsonl"), metrics).unwrap();
        dir
    }

    #[test]
    fn runs_on_one_dataset_spelt_two_ways_are_repeats_of_one_setting() {
        let root = tempfile::tempdir().unwrap();
        for (name, data, seed) in [("a", "ds", 1), ("b", "./ds/", 2), ("c", "other", 3)] {
            run_with(root.path(), name, &format!("[data]\ndir = \"{data}\"\n[train]\nseed = {seed}\n"), 0.7);
        }
        let table = group(&discover(&[root.path().to_path_buf()]).runs);
        assert_eq!(table.keys, ["data.dir"]);
        let groups: Vec<(String, usize)> = table.groups.iter().map(|g| (show(&g.values[0]), g.runs.len())).collect();
        assert_eq!(groups, [("ds".to_string(), 2), ("other".to_string(), 1)]);
    }

    #[test]
    fn groups_by_differing_keys_with_mean_and_sample_std() {
        let root = tempfile::tempdir().unwrap();
        // φ = 0.1: AUC 0.70, 0.72, 0.74 → mean 0.72, sample std 0.02 (numpy: np.std(x, ddof=1)).
        for (seed, auc) in [(1, 0.70), (2, 0.72), (3, 0.74)] {
            run_dir(root.path(), &format!("phi=0.1/repeat-{seed}"), 0.1, seed, auc);
        }
        // φ = 0.5: one run only; std 0.
        run_dir(root.path(), "phi=0.5/repeat-0", 0.5, 1, 0.8);
        let found = discover(&[root.path().to_path_buf()]);
        assert!(found.left_out.is_empty(), "{:?}", found.left_out);
        let table = group(&found.runs);
        assert_eq!(table.keys, ["micn.phi"]);
        assert_eq!(table.groups.len(), 2);
        // A run named twice (directly and through its parent) counts once.
        let twice = discover(&[root.path().to_path_buf(), root.path().join("phi=0.5/repeat-0")]);
        assert_eq!(twice.runs.len(), 4);
        let g = &table.groups[0];
        assert_eq!((g.values[0].clone(), g.runs.len()), (toml::Value::Float(0.1), 3));
        assert!((g.auc.mean - 0.72).abs() < 1e-12 && (g.auc.std - 0.02).abs() < 1e-12, "{:?}", g.auc);
        assert!((g.gauc.mean - 0.71).abs() < 1e-12);
        assert_eq!((table.groups[1].auc.mean, table.groups[1].auc.std), (0.8, 0.0));
        let md = table.markdown();
        assert!(md.contains("| 0.1 | 3 | 0.7200 ± 0.0200 | 0.7100 ± 0.0200 | 0.5000 ± 0.0000 | 10 |"), "{md}");
        let csv = table.csv();
        assert_eq!(csv.lines().next().unwrap().split(',').next(), Some("micn.phi"));
        // A group of one run: no spread (its sample standard deviation is undefined).
        assert!(md.contains("| 0.5 | 1 | 0.8000 | "), "{md}");
        assert!(csv.lines().nth(2).unwrap().starts_with("0.5,1,0.8,,"), "{csv}");
        // Curves: the mean of the repeats at each step; AUC against φ with error bars.
        let figs = figures(&found.runs, &table);
        let stems: Vec<&str> = figs.iter().map(|(s, ..)| s.as_str()).collect();
        assert_eq!(stems, ["loss", "auc-over-steps", "auc-vs-micn.phi"]);
        assert_eq!(figs[0].1.len(), 2, "main and MICN loss panels");
        let end = figs[1].1[0].series[0].points[1];
        assert!(end.x == 20.0 && (end.y - 0.72).abs() < 1e-12, "{end:?}");
        let vs = &figs[2].1[0].series[0];
        assert_eq!(vs.points.len(), 2);
        assert!((vs.points[0].err.unwrap() - 0.02).abs() < 1e-12);
    }

    #[test]
    fn a_figure_of_many_panels_is_drawn_into_files_of_a_few_rows_each() {
        let panel = |k: usize| Panel {
            title: format!("panel {k}"),
            x_label: "step".into(),
            y_label: "AUC".into(),
            x_whole: true,
            series: Vec::new(),
        };
        let panels: Vec<Panel> = (0..800).map(panel).collect();
        let files = figure_files("auc-over-steps", &panels, panels.len());
        assert_eq!(files.len(), 50, "16 panels a file");
        assert_eq!((files[0].0.as_str(), files[0].1.len(), files[0].2), ("auc-over-steps", 16, 4));
        assert_eq!((files[49].0.as_str(), files[49].1[15].title.as_str()), ("auc-over-steps-50", "panel 799"));
        // A few panels stay one file, as before.
        let files = figure_files("loss", &panels[..6], 2);
        assert_eq!(files.iter().map(|f| (f.0.as_str(), f.1.len(), f.2)).collect::<Vec<_>>(), [("loss", 6, 2)]);
    }

    #[test]
    fn groups_sort_numerically_and_label_briefly() {
        let root = tempfile::tempdir().unwrap();
        for phi in [1.0, 0.3, 0.05] {
            run_dir(root.path(), &format!("phi={phi}"), phi, 1, 0.7);
        }
        let table = group(&discover(&[root.path().to_path_buf()]).runs);
        let order: Vec<String> = table.groups.iter().map(|g| show(&g.values[0])).collect();
        assert_eq!(order, ["0.05", "0.3", "1.0"]);
        assert_eq!(table.label(&table.groups[0], &[]), "phi=0.05");
        assert_eq!(table.label(&table.groups[0], &["micn.phi"]), "all runs");
    }

    #[test]
    fn paths_are_labelled_by_as_many_last_parts_as_tell_them_apart() {
        assert_eq!(shortest_distinct_tail("/x/books/data", &["/x/electronics/data"]), "books/data");
        assert_eq!(shortest_distinct_tail("/x/books/data", &["/x/books/other"]), "data");
        assert_eq!(shortest_distinct_tail("/v1/books", &["/v2/books", "/v1/movies"]), "v1/books");
        assert_eq!(shortest_distinct_tail("data", &["x/data"]), "data");
        assert_eq!(shortest_distinct_tail("x/data", &["data"]), "x/data");
        assert_eq!(shortest_distinct_tail("/x/data", &[]), "data");
    }

    #[test]
    fn many_groups_are_split_by_the_first_key_and_tied_keys_get_no_curve() {
        // Table 2's shape: two datasets (each with its own history length) × 3 models × MICN.
        let root = tempfile::tempdir().unwrap();
        for (data, hist) in [("data/books", 20), ("data/electronics", 10)] {
            for kind in ["din", "dien", "wide_deep"] {
                for micn in [false, true] {
                    let config = format!(
                        "[data]\ndir = \"{data}\"\nmax_hist_len = {hist}\n[model]\nkind = \"{kind}\"\n\
                         [micn]\nenabled = {micn}\n"
                    );
                    run_with(root.path(), &format!("{hist}-{kind}-{micn}"), &config, 0.7);
                }
            }
        }
        let found = discover(&[root.path().to_path_buf()]);
        let table = group(&found.runs);
        assert_eq!(table.keys, ["data.dir", "data.max_hist_len", "micn.enabled", "model.kind"]);
        assert_eq!(table.groups.len(), 12);
        let figs = figures(&found.runs, &table);
        let stems: Vec<&str> = figs.iter().map(|(s, ..)| s.as_str()).collect();
        assert_eq!(stems, ["loss", "auc-over-steps"], "the history length only follows the dataset");
        let (_, auc, per_row) = &figs[1];
        assert_eq!((auc.len(), *per_row), (2, 2));
        assert_eq!(auc[0].title, "validation AUC during training (books, max_hist_len=20)");
        let labels: Vec<&str> = auc[0].series.iter().map(|s| s.label.as_str()).collect();
        assert_eq!(
            labels,
            [
                "micn off, dien",
                "micn off, din",
                "micn off, wide_deep",
                "micn on, dien",
                "micn on, din",
                "micn on, wide_deep"
            ]
        );
        // Loss: a row per dataset, a column per task (main and MICN).
        let (_, loss, per_row) = &figs[0];
        assert_eq!((loss.len(), *per_row), (4, 2));
        assert_eq!(loss[1].series.len(), 6, "every hand-made run logs a MICN loss");
    }

    #[test]
    fn unfinished_and_foreign_directories_are_named_not_fatal() {
        let root = tempfile::tempdir().unwrap();
        run_dir(root.path(), "a/repeat-0", 0.1, 1, 0.7);
        let stopped = run_dir(root.path(), "a/repeat-1", 0.1, 2, 0.7);
        let text = std::fs::read_to_string(stopped.join("summary.json")).unwrap();
        std::fs::write(
            stopped.join("summary.json"),
            text.replace("\"stopped_by_signal\": false", "\"stopped_by_signal\": true"),
        )
        .unwrap();
        let running = run_dir(root.path(), "a/repeat-2", 0.1, 3, 0.7);
        std::fs::remove_file(running.join("summary.json")).unwrap();
        std::fs::create_dir_all(running.join("checkpoints/step-0000000010")).unwrap();
        std::fs::create_dir_all(root.path().join("photos/2024")).unwrap();
        let garbled = run_dir(root.path(), "b", 0.2, 1, 0.7);
        std::fs::write(garbled.join("summary.json"), "{\"test_auc\": ").unwrap();
        let missing = root.path().join("nowhere");
        let found = discover(&[root.path().to_path_buf(), missing.clone()]);
        assert_eq!(found.runs.len(), 1);
        let why: BTreeMap<PathBuf, String> = found.left_out.iter().map(|l| (l.dir.clone(), l.why.clone())).collect();
        assert!(why[&stopped].contains("stopped by a signal after step 20"), "{why:?}");
        assert!(why[&running].contains("no summary.json") && why[&running].contains("step-0000000010"), "{why:?}");
        assert!(why[&root.path().join("photos")].contains("not a run directory"), "{why:?}");
        assert!(why[&garbled].contains("summary.json"), "{why:?}");
        assert_eq!(why[&missing], "no such directory");
        // A directory with no finished run at all is an error that names what was found.
        let e = write(&[root.path().join("photos"), missing.clone()], &root.path().join("report")).unwrap_err();
        let photos = root.path().join("photos").display().to_string();
        let expected = format!(
            "no finished run under {photos}, {}: {photos} (not a run directory (no config.toml) and holds none); {} \
             (no such directory)",
            missing.display(),
            missing.display()
        );
        assert_eq!(e.to_string(), expected, "one line, a cause each");
        // A directory that holds a report only: nothing left out, nothing to list.
        let reports = root.path().join("reports");
        std::fs::create_dir(&reports).unwrap();
        std::fs::write(reports.join("report.md"), "# an earlier report\n").unwrap();
        let e = write(std::slice::from_ref(&reports), &reports).unwrap_err();
        assert_eq!(e.to_string(), format!("no finished run under {}", reports.display()));
    }

    #[test]
    fn links_that_loop_are_walked_once_and_a_blank_metrics_line_holds_nothing() {
        let root = tempfile::tempdir().unwrap();
        let tree = root.path().join("tree");
        let run = run_dir(&tree, "phi=0.1/repeat-0", 0.1, 1, 0.7);
        // Two links to the tree's top: followed blindly, each level doubles the walk, for good.
        std::os::unix::fs::symlink(".", tree.join("self")).unwrap();
        std::os::unix::fs::symlink("..", tree.join("phi=0.1/up")).unwrap();
        // A link to the run from elsewhere counts it once.
        std::os::unix::fs::symlink(&run, root.path().join("linked-run")).unwrap();
        let metrics = std::fs::read_to_string(run.join("metrics.jsonl")).unwrap();
        std::fs::write(run.join("metrics.jsonl"), format!("{metrics}\n  \n")).unwrap();
        let found = discover(&[root.path().to_path_buf()]);
        assert_eq!(found.runs.len(), 1, "{found:?}");
        assert!(found.left_out.is_empty(), "{found:?}");
        assert_eq!(found.runs[0].evals.len(), 2);
        let file = run.join("summary.json");
        let found = discover(std::slice::from_ref(&file));
        assert_eq!(found.left_out[0].why, "not a directory");
        // Overlapping arguments, the run's own directory first: found once, nothing left out.
        let found = discover(&[run.clone(), tree.clone()]);
        assert_eq!((found.runs.len(), found.left_out.len()), (1, 0), "{found:?}");
        // An undefined GAUC (no user of both classes) is `null`: the run counts, with NaN.
        let summary = std::fs::read_to_string(&file).unwrap();
        std::fs::write(&file, summary.replace("\"test_gauc\": 0.69", "\"test_gauc\": null")).unwrap();
        let found = discover(&[tree]);
        assert!(found.runs.len() == 1 && found.runs[0].test_gauc.is_nan(), "{found:?}");
    }

    #[test]
    fn links_that_lead_to_one_directory_many_ways_walk_it_once() {
        // 40 levels, each linking twice to the next: 2^40 paths to the run at the bottom. A walk
        // of every path would not end; this one is given a minute.
        let root = tempfile::tempdir().unwrap();
        let level = |i: usize| root.path().join(format!("l{i}"));
        for i in 0..40 {
            std::fs::create_dir_all(level(i)).unwrap();
            for name in ["a", "b"] {
                std::os::unix::fs::symlink(format!("../l{}", i + 1), level(i).join(name)).unwrap();
            }
        }
        run_dir(&level(40), "run", 0.1, 1, 0.7);
        std::fs::create_dir(level(40).join("empty")).unwrap();
        let (done, walked) = std::sync::mpsc::channel();
        let top = level(0);
        std::thread::spawn(move || done.send(discover(&[top])).unwrap());
        let found = walked.recv_timeout(std::time::Duration::from_secs(60)).expect("the walk ends");
        assert_eq!(found.runs.len(), 1, "{found:?}");
        assert_eq!(found.left_out.len(), 1, "the empty directory, once: {found:?}");
        // Reached first through a link from a directory that holds no run, an empty directory
        // beside a run is still said, once.
        let top = root.path().join("top");
        run_dir(&top.join("c"), "r", 0.1, 1, 0.7);
        std::fs::create_dir_all(top.join("c/empty")).unwrap();
        std::fs::create_dir_all(top.join("a")).unwrap();
        std::os::unix::fs::symlink("../c/empty", top.join("a/l")).unwrap();
        let found = discover(std::slice::from_ref(&top));
        let mut left: Vec<_> = found.left_out.iter().map(|l| l.dir.strip_prefix(&top).unwrap().to_path_buf()).collect();
        left.sort();
        assert_eq!(left, [Path::new("a"), Path::new("c/empty")], "{found:?}");
    }

    #[test]
    fn writes_markdown_csv_and_figures_and_skips_its_own_output_later() {
        let root = tempfile::tempdir().unwrap();
        for (phi, seed, auc) in [(0.1, 1, 0.7), (0.1, 2, 0.71), (0.9, 1, 0.69), (0.9, 2, 0.7)] {
            run_dir(root.path(), &format!("phi={phi}/repeat-{seed}"), phi, seed, auc);
        }
        let out = root.path().join("report");
        let written = write(&[root.path().to_path_buf()], &out).unwrap();
        assert_eq!(written.runs, 4);
        for file in ["report.md", "report.csv", "loss.png", "loss.svg", "auc-over-steps.png", "auc-vs-micn.phi.svg"] {
            assert!(out.join(file).is_file(), "{file} missing");
        }
        let md = std::fs::read_to_string(&written.markdown).unwrap();
        assert!(md.contains("4 finished runs") && md.contains("0.9000"), "{md}");
        // The report directory inside the swept one is neither a run nor "left out"; a figure the
        // new report does not draw is gone, other files stay.
        // The earlier report drew `auc-vs-train.lr`; `auc-vs-mine.png` is the user's own.
        let mut earlier = md.clone();
        earlier += "![auc-vs-train.lr](auc-vs-train.lr.png) ([SVG](auc-vs-train.lr.svg))\n";
        std::fs::write(&written.markdown, earlier).unwrap();
        for file in ["auc-vs-train.lr.png", "auc-vs-train.lr.svg", "auc-vs-mine.png", "notes.txt"] {
            std::fs::write(out.join(file), b"earlier").unwrap();
        }
        let again = write(&[root.path().to_path_buf()], &out).unwrap();
        assert!(again.left_out.is_empty(), "{:?}", again.left_out);
        assert!(!out.join("auc-vs-train.lr.png").exists() && !out.join("auc-vs-train.lr.svg").exists());
        assert!(out.join("notes.txt").exists() && out.join("auc-vs-mine.png").exists());
        assert!(out.join("auc-vs-micn.phi.png").exists());
        assert_eq!(figure_links("![a](a.png) ([SVG](a.svg))\n![b](../b.png)\ntext](c.png)"), ["a.png", "a.svg"]);
        assert!(!out.join(".report.md.previous").exists(), "the earlier report.md is gone once tidied");

        // A report stopped after its report.md moved in, before the earlier one's figures were
        // removed (its copy `.report.md.previous` left): the next report removes them.
        std::fs::write(out.join(".report.md.previous"), "![old](old.png) ([SVG](old.svg))\n").unwrap();
        for file in ["old.png", "old.svg"] {
            std::fs::write(out.join(file), b"earlier").unwrap();
        }
        write(&[root.path().to_path_buf()], &out).unwrap();
        assert!(!out.join("old.png").exists() && !out.join("old.svg").exists());
        assert!(!out.join(".report.md.previous").exists());
        assert!(out.join("notes.txt").exists() && out.join("auc-vs-micn.phi.png").exists());
    }
}
