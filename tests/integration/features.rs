//! Training features users of other trainers expect: a learning-rate schedule (warm-up, then
//! constant, step or cosine) that a resumed run continues exactly; early stopping on the
//! validation AUC with patience; the selected model restored at the end.
use std::path::Path;
use std::process::Command;

use micn::dist::SingleProcess;
use micn::train::schedule::Schedule;
use micn::train::{train_from, Resume};

use crate::{micn_bin, run_ok};

fn metrics(run: &Path) -> Vec<serde_json::Value> {
    let text = std::fs::read_to_string(run.join("metrics.jsonl")).unwrap();
    text.lines().map(|l| serde_json::from_str(l).unwrap()).collect()
}

#[test]
fn every_step_takes_the_schedules_rate_and_a_resumed_run_continues_it_exactly() {
    let tmp = tempfile::tempdir().unwrap();
    let sets = [
        "train.max_steps=12",
        "train.epochs=1",
        "train.log_every_steps=1",
        "train.warmup_steps=4",
        "train.lr_schedule=\"cosine\"",
        "train.lr_min=0.0001",
    ];
    let whole = tmp.path().join("whole");
    let cfg = crate::small_config(&whole, &sets);
    train_from(&cfg, &SingleProcess, &Resume::Fresh).unwrap();
    let schedule = Schedule::new(&cfg.train, 12);
    let logged: Vec<(u64, f64)> =
        metrics(&whole).iter().filter_map(|v| Some((v["step"].as_u64()?, v["lr"].as_f64()?))).collect();
    assert_eq!(logged.len(), 12);
    for (step, lr) in &logged {
        assert_eq!(*lr, schedule.lr(step - 1), "step {step}");
    }
    assert_eq!(logged[0].1, cfg.train.lr / 4.0, "the first warm-up step");
    assert_eq!(logged[4].1, cfg.train.lr, "the first step after the warm-up");
    assert!((logged[11].1 - 0.0001).abs() < 1e-12, "the last step: lr_min");
    // Stopped after step 7 and resumed (a step schedule: it does not depend on the run's
    // length, which the first part shortens): the same rates, the same model.
    let step_decay =
        ["train.warmup_steps=3", "train.lr_schedule=\"step\"", "train.lr_step_every=2", "train.lr_step_gamma=0.5"];
    let base = ["train.max_steps=12", "train.epochs=1", "train.log_every_steps=1"];
    let sets = [&base[..], &step_decay[..]].concat();
    let (whole, parts) = (tmp.path().join("whole-step"), tmp.path().join("parts"));
    train_from(&crate::small_config(&whole, &sets), &SingleProcess, &Resume::Fresh).unwrap();
    let first = crate::small_config(&parts, &[&sets[..], &["train.max_steps=7", "checkpoint.every_steps=7"]].concat());
    train_from(&first, &SingleProcess, &Resume::Fresh).unwrap();
    train_from(&crate::small_config(&parts, &sets), &SingleProcess, &Resume::Auto).unwrap();
    let model = |run: &Path| std::fs::read(run.join("model.safetensors")).unwrap();
    assert!(model(&whole) == model(&parts), "a resumed scheduled run differs from an uninterrupted one");
    let lrs = |run: &Path| metrics(run).iter().filter_map(|v| v["lr"].as_f64()).collect::<Vec<_>>();
    assert_eq!(lrs(&whole), lrs(&parts));
    let want = [1.0 / 3.0, 2.0 / 3.0, 1.0, 1.0, 1.0, 0.5, 0.5, 0.25].map(|f| f * cfg.train.lr);
    assert!(lrs(&whole).iter().zip(want).all(|(a, b)| (a - b).abs() < 1e-15), "{:?}", lrs(&whole));
}

/// The validation AUCs a run's metrics recorded, in order.
fn valid_aucs(run: &Path) -> Vec<f64> {
    metrics(run).iter().filter_map(|v| v["valid_auc"].as_f64()).collect()
}

#[test]
fn a_run_stops_when_validation_stops_improving_and_can_end_with_its_best_model() {
    let tmp = tempfile::tempdir().unwrap();
    let run = tmp.path().join("run");
    // A rate this high makes the validation AUC wander: it soon stops improving.
    let sets = [
        "train.max_steps=400",
        "train.epochs=20",
        "train.lr=0.05",
        "train.eval_every_steps=4",
        "checkpoint.every_steps=12",
        "checkpoint.keep_last=2",
        "train.early_stop_patience=3",
        "train.restore_best=true",
    ];
    let cfg = crate::small_config(&run, &sets);
    let summary = train_from(&cfg, &SingleProcess, &Resume::Fresh).unwrap();
    assert!(summary.early_stopped && summary.steps < 400, "{} steps", summary.steps);
    // It stopped at the first evaluation that made 3 in a row without a better AUC.
    let aucs = valid_aucs(&run);
    let since_best = |n: usize| {
        let best = (0..n).reduce(|a, b| if aucs[b] > aucs[a] { b } else { a }).unwrap();
        n - 1 - best
    };
    assert_eq!(since_best(aucs.len()), 3, "{aucs:?}");
    assert!((1..aucs.len()).all(|n| since_best(n) < 3), "it should have stopped earlier: {aucs:?}");
    // The saved model is the selected checkpoint's, and `micn eval` scores it.
    let selected = summary.selected.as_ref().expect("a selected checkpoint");
    assert_eq!(summary.model_step, selected.step);
    assert!(selected.step < summary.steps, "the best model came before the last step");
    let best_auc = aucs.iter().cloned().fold(f64::MIN, f64::max);
    assert_eq!(selected.valid_auc, best_auc);
    // The best evaluation fell between regular checkpoints (every 12 steps): with `restore_best`
    // a better model than any before is checkpointed when scored, so the run ends with it.
    assert!(selected.step % 12 != 0, "the best model is a regular checkpoint's: step {}", selected.step);
    let out = run_ok(Command::new(micn_bin()).args(["eval", "--json", "--run"]).arg(&run));
    let eval: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(eval["auc"].as_f64(), Some(selected.test_auc));
    let written: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(run.join("summary.json")).unwrap()).unwrap();
    assert_eq!((written["early_stopped"].as_bool(), written["model_step"].as_u64()), (Some(true), Some(selected.step)));
}

#[test]
fn schedule_and_early_stopping_settings_are_checked_by_key() {
    let tmp = tempfile::tempdir().unwrap();
    let refused = |sets: &[&str]| {
        let overrides: Vec<micn::config::Override> =
            sets.iter().map(|s| micn::config::Override::parse(s).unwrap()).collect();
        micn::config::Config::load(None, &overrides).unwrap_err().to_string()
    };
    let _ = tmp;
    assert!(refused(&["train.lr_schedule=\"step\""]).contains("train.lr_step_every"));
    assert!(refused(&["train.lr_step_gamma=1.5"]).contains("train.lr_step_gamma"));
    assert!(refused(&["train.lr_min=1.0"]).contains("train.lr_min"));
    assert!(refused(&["train.lr_schedule=\"linear\""]).contains("train.lr_schedule"));
    assert!(refused(&["train.early_stop_patience=2", "data.valid_share=0"]).contains("train.early_stop_patience"));
}
