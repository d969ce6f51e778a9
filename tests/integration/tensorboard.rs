//! TensorBoard event files, read back by TensorBoard's own reader (`EventAccumulator`, from the
//! virtual environment `cluster/setup-node.sh` makes): every figure of `metrics.jsonl` is there
//! under its tag and step, also after resumes from an earlier checkpoint (what an earlier attempt
//! logged past it, and the test-set figures of an attempt that ended there, are gone).
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
    // A first attempt to step 15; a second resumes from step 10's checkpoint and ends there (its
    // test-set figures at step 10, as a stop there leaves them); a third goes on to step 20.
    let to = |steps: &str| crate::small_config(&run, &[&sets[..], &[steps]].concat());
    train_from(&to("train.max_steps=15"), &SingleProcess, &Resume::Fresh).unwrap();
    let checkpoint = run.join("checkpoints").join(micn::checkpoint::dir_name(10));
    train_from(&to("train.max_steps=10"), &SingleProcess, &Resume::Path(checkpoint)).unwrap();
    train_from(&to("train.max_steps=20"), &SingleProcess, &Resume::Auto).unwrap();
    assert_eq!(micn::run_dir::events::event_files(&run).len(), 1, "one event file, the earlier ones replaced");

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
    // The first attempt's steps 15 were dropped, and the second's test figures: each step once.
    assert_eq!(got["train/loss_main"].iter().map(|p| p.0).collect::<Vec<_>>(), [5, 10, 15, 20]);
    assert_eq!(got["test/auc"].iter().map(|p| p.0).collect::<Vec<_>>(), [20]);
}
