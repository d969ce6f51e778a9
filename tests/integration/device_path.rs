//! The device path (`train.device_path = true`) on the CPU: the code a GPU runs (gradients, the φ
//! combination and Adam as tensor operations on the device; with two ranks, the exchange on the
//! host between one download and one upload) ends where the host fast paths end, for every model
//! with and without MICN, on one and two thread ranks; and every step makes the number of
//! host↔device transfers counted below.
use micn::config::Config;
use micn::transfer::{self, Counts};

/// Per rank: every trainable variable after 4 steps, and each step's transfers.
type Ranks = Vec<crate::dist::RankSteps<Counts>>;

/// 4 steps of `cfg` on `world` thread ranks, on the path `cfg.train.device_path` selects.
fn run_steps(cfg: &Config, world: usize) -> Ranks {
    crate::dist::drive_steps(
        cfg,
        world,
        |_| Default::default(),
        |step| {
            let before = transfer::counts();
            step();
            transfer::counts().since(before)
        },
    )
}

/// `kind` is a model's name, or `mind-retrieval` for MIND with its retrieval objective.
fn config(kind: &str, micn: bool, device_path: bool) -> Config {
    let objective = if kind == "mind-retrieval" { "retrieval" } else { "ctr" };
    let sets = [
        format!("model.kind={}", kind.trim_end_matches("-retrieval")),
        format!("model.mind_objective=\"{objective}\""),
        format!("micn.enabled={micn}"),
        format!("train.device_path={device_path}"),
        "model.wide_buckets=4096".into(),
        // Wide&Deep's hashed crosses: the main model's own table updated by rows.
        format!("model.wide_crosses={}", kind == "wide_deep"),
        // As in `dist::n_thread_ranks_end_where_one_rank_with_the_whole_batch_ends`: Adam's default
        // eps turns rounding-sized gradient differences into lr-sized steps.
        "train.adam_eps=1e-6".into(),
    ];
    let sets: Vec<&str> = sets.iter().map(String::as_str).collect();
    crate::small_config(std::path::Path::new("unused"), &sets)
}

/// (model, device path on, ranks).
type Case = (&'static str, bool, usize);

/// Transfers per step, measured (every step of every rank the same; with the small config's one
/// normalising layer for Wide&Deep, two Dice layers for DIN and DIEN; with and without MICN):
/// (model, device path, ranks) → (uploads, downloads).
///
/// One rank on the device path, the target of at most 2: one upload (the batch's ids,
/// labels and mask, MICN's negatives, every row leaf's ids and lookup indices, and the union of
/// each shared table's rows for the φ combination) and one download (the losses and the `e_aux`
/// gradient norms). The gradients, the φ combination and Adam stay on the device; MICN's routing
/// logits are drawn there; a single rank's Dice statistics need no host round trip. A main
/// model's own table (Wide&Deep's hashed crosses, MFN's and CAMN's attribute table) is read
/// through a row leaf planned on the host, as the embeddings are, so it adds no transfer.
/// One rank on the host path: the same upload, and one download of every gradient with the
/// losses.
/// Two ranks: the exchange runs on the host, so the gradients come down in one piece, are
/// exchanged (one all-reduce, one all-gather) and, on the device path, go back up in one upload;
/// each normalising layer adds two transfers each way (its local statistics down and the global
/// ones up in the forward pass, the gradients of its statistics down and the result up in the
/// backward pass).
///
/// Before these counts were kept (the code of commit d0cb6d2, counted by hand the same way), one
/// rank on the device path made: Wide&Deep 35 uploads and 27 downloads, with MICN 46 and 38; DIN
/// 40 and 31, with MICN 51 and 42; DIEN 56 and 48, with MICN 70 and 62. Before the main models'
/// own tables were read through row leaves (up to commit 7cf0d8e), each added a download on the device
/// path (its sparse gradient summed per row, `coalesce`, reads the row count back) and two on
/// the host path (with its ids).
const EXPECTED: [(Case, (u64, u64)); 28] = [
    (("wide_deep", false, 1), (1, 1)),
    (("wide_deep", true, 1), (1, 1)),
    (("wide_deep", false, 2), (3, 3)),
    (("wide_deep", true, 2), (4, 3)),
    (("din", false, 1), (1, 1)),
    (("din", true, 1), (1, 1)),
    (("din", false, 2), (5, 5)),
    (("din", true, 2), (6, 5)),
    (("dien", false, 1), (1, 1)),
    (("dien", true, 1), (1, 1)),
    (("dien", false, 2), (5, 5)),
    (("dien", true, 2), (6, 5)),
    // MIND's head has DIN's Dice layers and its routing draws nothing from the host.
    (("mind", false, 1), (1, 1)),
    (("mind", true, 1), (1, 1)),
    (("mind", false, 2), (5, 5)),
    (("mind", true, 2), (6, 5)),
    // MIND trained for retrieval: no Dice head, so no statistics to exchange between ranks (its
    // negatives travel in the step's one upload).
    (("mind-retrieval", false, 1), (1, 1)),
    (("mind-retrieval", true, 1), (1, 1)),
    (("mind-retrieval", false, 2), (1, 1)),
    (("mind-retrieval", true, 2), (2, 1)),
    // MFN (with the data's attributes as fine-grained features) and CAMN: DIN's Dice head, and an
    // attribute table updated by rows (on the host path its rows in the step's one download,
    // between ranks in the one row message).
    (("mfn", false, 1), (1, 1)),
    (("mfn", true, 1), (1, 1)),
    (("mfn", false, 2), (5, 5)),
    (("mfn", true, 2), (6, 5)),
    (("camn", false, 1), (1, 1)),
    (("camn", true, 1), (1, 1)),
    (("camn", false, 2), (5, 5)),
    (("camn", true, 2), (6, 5)),
];

fn expected(kind: &str, device_path: bool, world: usize) -> Counts {
    let (_, (uploads, downloads)) =
        EXPECTED.iter().find(|(k, _)| *k == (kind, device_path, world)).expect("every case is listed");
    Counts { uploads: *uploads, downloads: *downloads }
}

/// The largest difference between two runs' parameters, each relative to its tensor's largest
/// value (or absolute below 1), as `dist` compares ranks; the attention MLP's output bias, whose
/// gradient is rounding noise in theory (a softmax ignores a shift), is left out.
fn assert_close(a: &[(String, Vec<f32>)], b: &[(String, Vec<f32>)], what: &str) {
    assert_eq!(a.len(), b.len());
    for ((name, x), (other, y)) in a.iter().zip(b) {
        assert_eq!(name, other);
        if name.ends_with("attention.mlp.output.bias") {
            continue;
        }
        let scale = x.iter().fold(0f32, |m, v| m.max(v.abs())).max(1.0);
        let diff = x.iter().zip(y).fold(0f32, |m, (p, q)| m.max((p - q).abs()));
        assert!(diff <= 1e-5 * scale, "{what}, {name}: difference {diff} at scale {scale}");
    }
}

fn check(kind: &str) {
    let mut measured = Vec::new();
    for micn in [false, true] {
        for world in [1, 2] {
            let host = run_steps(&config(kind, micn, false), world);
            let device = run_steps(&config(kind, micn, true), world);
            let what = format!("{kind}, MICN {micn}, {world} ranks");
            assert_close(&host[0].0, &device[0].0, &what);
            for (path, ranks) in [(false, host), (true, device)] {
                for (rank, (_, counts)) in ranks.into_iter().enumerate() {
                    measured.push((
                        format!("{what}, device path {path}, rank {rank}"),
                        expected(kind, path, world),
                        counts,
                    ));
                }
            }
        }
    }
    for (what, _, counts) in &measured {
        eprintln!("{what}: {counts:?}");
    }
    for (what, expected, counts) in &measured {
        assert!(counts.iter().all(|c| c == expected), "{what}: {counts:?}, expected {expected:?} every step");
    }
}

#[test]
fn wide_deep_on_the_device_path_ends_where_the_host_path_ends_with_the_counted_transfers() {
    check("wide_deep");
}

#[test]
fn din_on_the_device_path_ends_where_the_host_path_ends_with_the_counted_transfers() {
    check("din");
}

#[test]
fn dien_on_the_device_path_ends_where_the_host_path_ends_with_the_counted_transfers() {
    check("dien");
}

#[test]
fn mind_on_the_device_path_ends_where_the_host_path_ends_with_the_counted_transfers() {
    check("mind");
}

#[test]
fn mind_trained_for_retrieval_on_the_device_path_ends_where_the_host_path_ends_with_the_counted_transfers() {
    check("mind-retrieval");
}

#[test]
fn mfn_on_the_device_path_ends_where_the_host_path_ends_with_the_counted_transfers() {
    check("mfn");
}

#[test]
fn camn_on_the_device_path_ends_where_the_host_path_ends_with_the_counted_transfers() {
    check("camn");
}

#[test]
fn micn_train_takes_the_device_path_when_configured_and_ends_where_the_host_path_ends() {
    let tmp = tempfile::tempdir().unwrap();
    let train = |name: &str, device_path: bool| -> serde_json::Value {
        let run = tmp.path().join(name);
        let sets = [
            "model.kind=wide_deep",
            "model.wide_crosses=true",
            "train.max_steps=8",
            "train.adam_eps=1e-6",
            &format!("train.device_path={device_path}"),
        ];
        micn::train::train(&crate::small_config(&run, &sets), &micn::dist::SingleProcess).unwrap();
        serde_json::from_str(&std::fs::read_to_string(run.join("summary.json")).unwrap()).unwrap()
    };
    let (host, device) = (train("host", false), train("device", true));
    // The same model to rounding: the same test AUC to 1e-4.
    let auc = |s: &serde_json::Value| s["test_auc"].as_f64().unwrap();
    assert!((auc(&host) - auc(&device)).abs() < 1e-4, "{host} vs {device}");
    // The trainer took the device path: summary.json reports the steps' own transfers, 1 + 1 on
    // the host path and on the device path one upload a step, the losses staying on the device
    // until the one metrics line of the 8 steps reads them all in one download: (8 + 1) / 8.
    assert_eq!((host["transfers_per_step"].as_f64(), device["transfers_per_step"].as_f64()), (Some(2.0), Some(1.125)));
}

/// `metrics.jsonl` of a run, each line's values by key, without the wall-clock field.
fn metrics_lines(run: &std::path::Path) -> Vec<serde_json::Map<String, serde_json::Value>> {
    let text = std::fs::read_to_string(run.join("metrics.jsonl")).unwrap();
    let mut lines: Vec<serde_json::Map<String, serde_json::Value>> =
        text.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    lines.iter_mut().for_each(|l| drop(l.remove("samples_per_sec")));
    lines
}

#[test]
fn a_device_path_run_reads_its_losses_when_it_logs_and_logs_what_the_host_path_logs() {
    // With one rank on the device path a step leaves its losses (and norms) on the device; the run
    // reads every step's at each metrics line in one download. The lines must hold what the host
    // path, which reads them every step, writes: the mean losses over the window, the last step's
    // norms (MICN's, and the clipped global norm), with DIEN's auxiliary loss.
    let tmp = tempfile::tempdir().unwrap();
    let train = |name: &str, device_path: bool| {
        let run = tmp.path().join(name);
        let sets = [
            "micn.enabled=true",
            "train.max_steps=12",
            "train.log_every_steps=3",
            "train.eval_every_steps=0",
            "checkpoint.every_steps=0",
            "train.clip_grad_norm=0.05",
            "train.adam_eps=1e-6",
            &format!("train.device_path={device_path}"),
        ];
        let summary = micn::train::train(&crate::small_config(&run, &sets), &micn::dist::SingleProcess).unwrap();
        (metrics_lines(&run), summary.transfers_per_step)
    };
    let ((host, host_transfers), (device, device_transfers)) = (train("host", false), train("device", true));
    let logged = |lines: &[serde_json::Map<String, serde_json::Value>]| {
        lines.iter().filter(|l| l.contains_key("loss_main")).count()
    };
    assert_eq!((host.len(), logged(&host)), (device.len(), 4), "4 metrics lines, then the evaluations");
    let keys = ["loss_main", "loss_micn", "loss_model_aux", "grad_norm_main_e_aux", "grad_norm_aux_e_aux", "grad_norm"];
    for (h, d) in host.iter().zip(&device).filter(|(h, _)| h.contains_key("loss_main")) {
        for key in keys {
            let (x, y) = (h[key].as_f64().unwrap(), d[key].as_f64().unwrap());
            assert!(
                (x - y).abs() <= 1e-5 * x.abs().max(1.0),
                "step {}: {key} {x} on the host path, {y} on the device path",
                h["step"]
            );
        }
        assert!(h["grad_norm"].as_f64().unwrap() > 0.05, "the norm is measured before clipping, and clipping was on");
    }
    // Per step: the host path's upload and download; the device path's upload, and its 4 reads
    // over 12 steps.
    assert_eq!((host_transfers, device_transfers), (2.0, (12.0 + 4.0) / 12.0));
}

#[test]
fn a_non_finite_loss_left_on_the_device_is_named_by_its_own_step_and_nothing_after_it_is_saved() {
    // A learning rate of 1e30 leaves the first step's loss finite and makes the second one's
    // infinite or NaN. The host path finds it in step 2 itself; the device path goes on to step 4
    // and reads it at that step's metrics line, before its checkpoint: both name step 2 and save
    // nothing.
    let tmp = tempfile::tempdir().unwrap();
    for device_path in [false, true] {
        let run = tmp.path().join(format!("device-path-{device_path}"));
        let sets = [
            "model.kind=din",
            "train.lr=1e30",
            "train.max_steps=8",
            "train.log_every_steps=4",
            "checkpoint.every_steps=4",
            &format!("train.device_path={device_path}"),
        ];
        let err = micn::train::train(&crate::small_config(&run, &sets), &micn::dist::SingleProcess).unwrap_err();
        let err = err.to_string();
        assert!(err.contains("step 2: the main loss is"), "device path {device_path}: {err}");
        let saved = std::fs::read_dir(run.join("checkpoints")).map_or(0, |dir| dir.count());
        assert_eq!(saved, 0, "device path {device_path}: a checkpoint was saved");
        assert!(
            !run.join("metrics.jsonl").exists()
                || !std::fs::read_to_string(run.join("metrics.jsonl")).unwrap().contains("loss_main")
        );
    }
}

#[test]
fn an_update_that_breaks_the_model_writes_no_checkpoint_without_a_validation_split_either() {
    // A learning rate of 1e6 keeps step 1's loss and parameters finite, but its update makes every
    // score NaN. Without a validation split to score before the checkpoint of step 1, the first
    // training samples are scored: the run stops there, with nothing saved to resume into the
    // same failure.
    let tmp = tempfile::tempdir().unwrap();
    let run = tmp.path().join("run");
    let sets =
        ["model.kind=din", "train.lr=1e6", "train.max_steps=4", "checkpoint.every_steps=1", "data.valid_share=0"];
    let err = micn::train::train(&crate::small_config(&run, &sets), &micn::dist::SingleProcess).unwrap_err();
    let err = err.to_string();
    assert!(err.starts_with("step 1: the model diverged after its start: its scores of the first "), "{err}");
    assert!(err.ends_with("(lower train.lr); stopping (the last checkpoint, if any, is intact)"), "{err}");
    assert_eq!(std::fs::read_dir(run.join("checkpoints")).map_or(0, |dir| dir.count()), 0, "a checkpoint was saved");
}

/// A model an update broke is found at the next validation, not at the next checkpoint (which
/// may be half an hour away): its evaluations would be no measure. The error names the last step
/// whose check passed, so the breaking step is known to lie after it.
#[test]
fn a_broken_model_is_found_before_its_validation_not_only_at_its_checkpoint() {
    let tmp = tempfile::tempdir().unwrap();
    let run = tmp.path().join("run");
    let sets = ["model.kind=din", "train.lr=1e3", "train.max_steps=40", "train.eval_every_steps=3"];
    let err = micn::train::train(&crate::small_config(&run, &sets), &micn::dist::SingleProcess).unwrap_err();
    let err = err.to_string();
    let step: u64 = err.strip_prefix("step ").and_then(|e| e.split(':').next()).unwrap().parse().unwrap();
    assert!(step % 3 == 0 && step < 40, "found at a validation: {err}");
    let passed = match step - 3 {
        0 => "its start".to_string(),
        n => format!("step {n}, its last check passed"),
    };
    assert!(err.contains(&format!("the model diverged after {passed}: ")), "{err}");
    let metrics = std::fs::read_to_string(run.join("metrics.jsonl")).unwrap();
    let scored = metrics.lines().filter(|l| l.contains("valid_auc")).count() as u64;
    assert_eq!(scored, step / 3 - 1, "no evaluation of the broken model: {metrics}");
}

#[test]
fn a_device_path_run_resumed_from_its_checkpoint_ends_bit_identical_to_an_uninterrupted_one() {
    use micn::train::{train_from, Resume};
    // The device path keeps the dense parameters and their moments in flat buffers; a checkpoint
    // written from them and loaded back into them must resume exactly.
    let tmp = tempfile::tempdir().unwrap();
    let config = |run: &std::path::Path, steps: &str| {
        crate::small_config(
            run,
            &["train.device_path=true", "micn.enabled=true", "checkpoint.every_steps=4", steps, "data.valid_share=0"],
        )
    };
    let (whole, split) = (tmp.path().join("whole"), tmp.path().join("split"));
    train_from(&config(&whole, "train.max_steps=8"), &micn::dist::SingleProcess, &Resume::Fresh).unwrap();
    train_from(&config(&split, "train.max_steps=4"), &micn::dist::SingleProcess, &Resume::Fresh).unwrap();
    let resumed = config(&split, "train.max_steps=8");
    let checkpoint = split.join("checkpoints/step-00000004");
    train_from(&resumed, &micn::dist::SingleProcess, &Resume::Path(checkpoint)).unwrap();
    let read = |run: &std::path::Path| std::fs::read(run.join("model.safetensors")).unwrap();
    assert!(read(&whole) == read(&split), "the resumed model differs");
    let optimizer =
        |run: &std::path::Path| std::fs::read(run.join("checkpoints/step-00000008/optimizer.safetensors")).unwrap();
    assert!(optimizer(&whole) == optimizer(&split), "the resumed optimizer state differs");
}

#[test]
fn clipping_and_weight_decay_on_the_device_path_end_where_the_host_path_ends() {
    // The device path keeps the dense variables in one flat buffer (decayed at once) and its
    // gradients on the device (their norm downloaded): the same arithmetic as the host path.
    let with = |device_path: bool| {
        let mut cfg = config("din", true, device_path);
        (cfg.train.clip_grad_norm, cfg.train.weight_decay, cfg.train.lr) = (0.01, 0.5, 0.01);
        cfg
    };
    for world in [1, 2] {
        let host = run_steps(&with(false), world);
        let device = run_steps(&with(true), world);
        assert_close(&host[0].0, &device[0].0, &format!("DIN + MICN, clipped and decayed, {world} ranks"));
    }
}

/// `train.deterministic` turns libtorch's deterministic algorithms on (libtorch says so, read back
/// through the same symbols), and on the CPU, where every kernel micn uses is deterministic
/// already, changes no bit of a device-path run. libtorch's deterministic mode also fills every
/// new tensor's memory with NaN, so this would fail if a kernel read memory it had not written.
/// In a process of its own: the switch is global to libtorch.
#[test]
fn deterministic_algorithms_turn_on_in_libtorch_and_change_no_bit_on_the_cpu() {
    use std::process::Command;
    let tmp = tempfile::tempdir().unwrap();
    let model = |deterministic: bool| {
        let run = tmp.path().join(format!("deterministic-{deterministic}"));
        let sets = ["train.max_steps=6", "train.epochs=1", "train.device_path=true"];
        let mut cfg = crate::small_config(&run, &sets);
        cfg.train.deterministic = deterministic;
        let file = tmp.path().join(format!("deterministic-{deterministic}.toml"));
        std::fs::write(&file, cfg.to_toml()).unwrap();
        let out =
            crate::run_ok(Command::new(crate::micn_bin()).args(["train", "--comm", "single", "--config"]).arg(&file));
        let log = String::from_utf8_lossy(&out.stderr);
        let said = log.lines().find(|l| l.contains("deterministic algorithms"));
        match deterministic {
            true => {
                assert!(said.is_some_and(|l| l.contains("on=true")), "libtorch does not say the switch is on:\n{log}")
            }
            false => assert!(said.is_none(), "{log}"),
        }
        std::fs::read(run.join("model.safetensors")).unwrap()
    };
    assert!(model(false) == model(true), "DIEN + MICN on the device path differs with deterministic algorithms on");
}
