//! TensorBoard event files, read back by TensorBoard's own reader (`EventAccumulator`, from the
//! virtual environment `cluster/setup-node.sh` makes): every figure of `metrics.jsonl` is there
//! under its tag and step, also after a resume from an earlier checkpoint (TensorBoard drops what
//! the first attempt logged past it).
use std::path::{Path, PathBuf};
use std::process::Command;

use micn::dist::SingleProcess;
use micn::train::{train_from, Resume};

/// The Python that has TensorBoard: `MICN_TENSORBOARD_PYTHON`, else set-up's environment.
fn tensorboard_python() -> PathBuf {
    crate::cached_python("MICN_TENSORBOARD_PYTHON", "tensorboard-2.21.0", "TensorBoard")
}

/// Every scalar TensorBoard reads from `run`: tag → [(step, value)].
fn read_with_tensorboard(run: &Path) -> serde_json::Value {
    let script = r#"
import json, sys
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
acc = EventAccumulator(sys.argv[1])
acc.Reload()
print(json.dumps({t: [[e.step, e.value] for e in acc.Scalars(t)] for t in acc.Tags()["scalars"]}))
"#;
    let out = crate::run_ok(Command::new(tensorboard_python()).args(["-c", script]).arg(run));
    serde_json::from_slice(&out.stdout).unwrap()
}

#[test]
fn tensorboard_reads_every_figure_of_metrics_jsonl_also_after_a_resume() {
    let tmp = tempfile::tempdir().unwrap();
    let run = tmp.path().join("run");
    let sets = ["train.epochs=1", "train.log_every_steps=5", "train.eval_every_steps=5", "checkpoint.every_steps=10"];
    // A first attempt to step 15; a second resumes from step 10's checkpoint, as after a crash.
    let first = crate::small_config(&run, &[&sets[..], &["train.max_steps=15"]].concat());
    train_from(&first, &SingleProcess, &Resume::Fresh).unwrap();
    let checkpoint = run.join("checkpoints").join(micn::checkpoint::dir_name(10));
    let second = crate::small_config(&run, &[&sets[..], &["train.max_steps=20"]].concat());
    train_from(&second, &SingleProcess, &Resume::Path(checkpoint)).unwrap();

    let read = read_with_tensorboard(&run);
    let mut expected: std::collections::BTreeMap<String, Vec<(u64, f32)>> = Default::default();
    for line in std::fs::read_to_string(run.join("metrics.jsonl")).unwrap().lines() {
        let v: serde_json::Value = serde_json::from_str(line).unwrap();
        let step = v["step"].as_u64().unwrap();
        for (tag, value) in micn::run_dir::events::scalars_of(&v) {
            expected.entry(tag).or_default().push((step, value as f32));
        }
    }
    for tag in ["train/loss_main", "train/loss_micn", "train/loss_model_aux", "train/lr", "valid/auc", "test/auc"] {
        assert!(expected.contains_key(tag), "metrics.jsonl has no {tag}");
    }
    let got: std::collections::BTreeMap<String, Vec<(u64, f32)>> = read
        .as_object()
        .unwrap()
        .iter()
        .map(|(tag, points)| {
            let points = points.as_array().unwrap();
            (tag.clone(), points.iter().map(|p| (p[0].as_u64().unwrap(), p[1].as_f64().unwrap() as f32)).collect())
        })
        .collect();
    assert_eq!(got, expected, "TensorBoard's reading differs from metrics.jsonl");
    // The first attempt's steps 15 were dropped: each step once.
    assert_eq!(got["train/loss_main"].iter().map(|p| p.0).collect::<Vec<_>>(), [5, 10, 15, 20]);
}
