//! The PyTorch twin (`python/micn_twin`): for every model ± MICN (Wide&Deep with its hashed
//! crosses, MIND with either objective), the twin's scores of the test set, and those of its
//! TorchScript form and of its ONNX file in onnxruntime, equal `micn predict`'s to 1e-5, sample by sample; the validation split too, by `micn predict`'s
//! sample numbers, and a checkpoint's; `micn export interests` of a MIND run equals the twin's
//! interests, and `micn eval --retrieval` the retrieval written out over them (also ComiRec's
//! held-out users, `--heldout`, against its evaluation code written out); MFN with centres
//! pretrained by `micn export mfn-centres`. Refused by name in one line with exit status 3 (no
//! traceback): a damaged model file, header, tensor shape or setting; an export `micn predict`
//! would score otherwise (other history lengths, validation share or dataset); a TorchScript or
//! ONNX file of another model; an unfinished or damaged checkpoint; a bad command line or `--out`.
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

use micn::dist::SingleProcess;
use micn::train::{train_from, Resume};

use crate::{micn_bin, run_ok};

/// The Python with PyTorch: `MICN_TORCH_PYTHON`, else the torch that set-up installs.
fn torch_python() -> PathBuf {
    crate::cached_python("MICN_TORCH_PYTHON", "torch-2.11.0", "torch")
}

/// `python -m micn_twin ARGS` from the repository's `python/` directory.
fn twin(args: &[&str]) -> Command {
    let mut cmd = Command::new(torch_python());
    cmd.args(["-W", "ignore", "-m", "micn_twin"])
        .args(args)
        .current_dir(Path::new(env!("CARGO_MANIFEST_DIR")).join("python"))
        .env("OMP_NUM_THREADS", "1");
    cmd
}

/// `sample → score` of a CSV with `sample` first and `score` last (`micn predict`'s, the twin's).
fn read_scores(path: &Path) -> BTreeMap<u32, f64> {
    let text = std::fs::read_to_string(path).unwrap();
    let mut lines = text.lines();
    let header = lines.next().unwrap();
    assert!(header.starts_with("sample,") && header.ends_with(",score"), "{header}");
    lines
        .map(|line| {
            let (sample, score) = (line.split(',').next().unwrap(), line.rsplit(',').next().unwrap());
            (sample.parse().unwrap(), score.parse().unwrap())
        })
        .collect()
}

fn assert_same_scores(what: &str, micn: &BTreeMap<u32, f64>, twin: &BTreeMap<u32, f64>) {
    assert_eq!(micn.keys().collect::<Vec<_>>(), twin.keys().collect::<Vec<_>>(), "{what}: other samples");
    let worst = micn.iter().map(|(k, p)| (p - twin[k]).abs()).fold(0.0, f64::max);
    assert!(worst <= 1e-5, "{what}: scores differ by up to {worst}");
    let spread = micn.values().fold(f64::NAN, |m, &p| m.max(p)) - micn.values().fold(f64::NAN, |m, &p| m.min(p));
    assert!(spread > 1e-3, "{what}: the scores hardly vary ({spread}); the comparison would prove little");
}

/// The models the twin computes: each model kind, and MIND trained for retrieval.
const VARIANTS: [&str; 7] = ["wide_deep", "din", "dien", "mind", "mind-retrieval", "mfn", "camn"];

/// A variant of `VARIANTS` ± MICN trained for 25 steps on the shared small dataset (history
/// length 10) into `dir/NAME`, with settings the twin must read from the run: its name and run.
fn train_variant(dir: &Path, variant: &str, micn: bool) -> (String, PathBuf) {
    let name = format!("{variant}{}", if micn { "-micn" } else { "" });
    let run = dir.join(&name);
    let kind = variant.trim_end_matches("-retrieval");
    let (kind_set, micn_set) = (format!("model.kind={kind}"), format!("micn.enabled={micn}"));
    let objective = if variant.ends_with("-retrieval") { "retrieval" } else { "ctr" };
    let objective_set = format!("model.mind_objective=\"{objective}\"");
    let sets = [
        objective_set.as_str(),
        kind_set.as_str(),
        micn_set.as_str(),
        "model.wide_crosses=true",
        "model.wide_buckets=512",
        // MIND: 3 interests, 2 iterations, attention power 2 (hard with MICN); the twin reads
        // them from the run.
        "model.mind_interests=3",
        "model.mind_routing_iters=2",
        if micn { "model.mind_pow_p=\"inf\"" } else { "model.mind_pow_p=2" },
        // CAMN: the top 2 of its sequences kept; without MICN the attention unscaled
        // (CAMN-loss); the twin reads both from the run.
        "model.camn_top_q=2",
        // MFN: 3 heads over its item vectors (width 36, or 72 with MICN).
        "model.mfn_heads=3",
        if micn { "model.camn_routing=true" } else { "model.camn_routing=false" },
        "train.max_steps=25",
        "train.epochs=1",
        "checkpoint.every_steps=20",
    ];
    train_from(&crate::small_config(&run, &sets), &SingleProcess, &Resume::Fresh).unwrap();
    (name, run)
}

/// `micn data export` of the shared small dataset (histories of 10, a validation share) into `out`.
fn export_samples(out: &Path) {
    let data = crate::train::dataset_dir().display().to_string();
    run_ok(
        Command::new(micn_bin())
            .args(["data", "export", &data, "--max-hist-len", "10", "--valid-share", "0.1"])
            .arg("--out")
            .arg(out),
    );
}

/// `micn predict`'s scores of `split` by the model of `run`, written to `out`.
fn micn_predict(run: &Path, split: &str, out: &Path) -> BTreeMap<u32, f64> {
    run_ok(Command::new(micn_bin()).args(["predict", "--split", split, "--run"]).arg(run).arg("--out").arg(out));
    read_scores(out)
}

#[test]
fn the_twin_and_its_torchscript_form_score_as_micn_predict_for_every_model() {
    let tmp = tempfile::tempdir().unwrap();
    let export = tmp.path().join("export");
    export_samples(&export);
    for (variant, micn) in VARIANTS.into_iter().flat_map(|k| [(k, false), (k, true)]) {
        let (name, run) = train_variant(tmp.path(), variant, micn);
        let kind = variant.trim_end_matches("-retrieval");
        let scripted = tmp.path().join(format!("{name}.pt"));
        run_ok(twin(&["torchscript"]).arg(&run).arg("--out").arg(&scripted));
        for split in ["test", "valid"] {
            let micn_scores = micn_predict(&run, split, &tmp.path().join(format!("{name}-{split}-micn.csv")));
            let twin_scores = tmp.path().join(format!("{name}-{split}-twin.csv"));
            run_ok(
                twin(&["score", "--split", split, "--export"]).arg(&export).arg(&run).arg("--out").arg(&twin_scores),
            );
            assert_same_scores(&format!("{name} {split}"), &micn_scores, &read_scores(&twin_scores));
            if split == "test" {
                let ts_scores = tmp.path().join(format!("{name}-ts.csv"));
                run_ok(
                    twin(&["score", "--export"])
                        .arg(&export)
                        .arg(&run)
                        .arg("--torchscript")
                        .arg(&scripted)
                        .arg("--out")
                        .arg(&ts_scores),
                );
                assert_same_scores(&format!("{name} TorchScript"), &micn_scores, &read_scores(&ts_scores));
            }
        }
        if kind == "camn" || variant == "mind" {
            // From a checkpoint: its weights, and the model's settings from its `state.json`.
            let checkpoint = run.join("checkpoints").join(micn::checkpoint::dir_name(20));
            let (predicted, twin_scores) = (tmp.path().join("ckpt-micn.csv"), tmp.path().join("ckpt-twin.csv"));
            run_ok(
                Command::new(micn_bin())
                    .arg("predict")
                    .arg("--checkpoint")
                    .arg(&checkpoint)
                    .arg("--out")
                    .arg(&predicted),
            );
            run_ok(twin(&["score", "--export"]).arg(&export).arg(&checkpoint).arg("--out").arg(&twin_scores));
            assert_same_scores(&format!("{name} checkpoint"), &read_scores(&predicted), &read_scores(&twin_scores));
            if variant == "mind" {
                check_exported_interests(&run, &export, &tmp.path().join(format!("{name}-interests")));
            }
        }
    }
}

/// Every model ± MICN exported to ONNX (`python -m micn_twin onnx`, for the run's history length)
/// scores the test set in onnxruntime as `micn predict` does (1e-5); a file made for longer
/// histories pads the export's (same scores); one made for shorter ones refuses them, naming the
/// fix; a model file without its run needs `--history-length`, and scoring with the file and
/// such a model refuses histories of another length than the file's run trained on (recorded in
/// its metadata); an unreadable file is named.
#[test]
fn every_model_exported_to_onnx_scores_in_onnxruntime_as_micn_predict() {
    let tmp = tempfile::tempdir().unwrap();
    let export = tmp.path().join("export");
    export_samples(&export);
    let onnx_scores = |run: &Path, onnx: &Path, out: &str| {
        let out = tmp.path().join(out);
        run_ok(twin(&["score", "--export"]).arg(&export).arg(run).arg("--onnx").arg(onnx).arg("--out").arg(&out));
        read_scores(&out)
    };
    for (variant, micn) in VARIANTS.into_iter().flat_map(|k| [(k, false), (k, true)]) {
        let (name, run) = train_variant(tmp.path(), variant, micn);
        let micn_scores = micn_predict(&run, "test", &tmp.path().join(format!("{name}-micn.csv")));
        let onnx = tmp.path().join(format!("{name}.onnx"));
        let done = run_ok(twin(&["onnx"]).arg(&run).arg("--out").arg(&onnx));
        let said = String::from_utf8_lossy(&done.stdout);
        assert!(said.contains("histories of 10") && said.contains("within 1e-5"), "{said}");
        assert_same_scores(
            &format!("{name} ONNX"),
            &micn_scores,
            &onnx_scores(&run, &onnx, &format!("{name}-onnx.csv")),
        );
        if name == "dien-micn" {
            // Histories of 10 padded to the 12 the file takes: DIEN's recurrent loops run over
            // the padding, which must change nothing.
            let longer = tmp.path().join("longer.onnx");
            run_ok(twin(&["onnx", "--history-length", "12"]).arg(&run).arg("--out").arg(&longer));
            assert_same_scores("padded to 12", &micn_scores, &onnx_scores(&run, &longer, "longer.csv"));
        }
        if name == "din" {
            let shorter = tmp.path().join("shorter.onnx");
            run_ok(twin(&["onnx", "--history-length", "4"]).arg(&run).arg("--out").arg(&shorter));
            let out = twin(&["score", "--export"])
                .arg(&export)
                .arg(&run)
                .arg("--onnx")
                .arg(&shorter)
                .arg("--out")
                .arg(tmp.path().join("refused.csv"))
                .output()
                .unwrap();
            let stderr = String::from_utf8_lossy(&out.stderr);
            assert_eq!(out.status.code(), Some(3), "{stderr}");
            // Refused for the history length its model's run trained on, which score compares with
            // (an export cut to 4 would be refused next, for that same reason).
            assert!(stderr.contains("shorter.onnx takes histories of 4 behaviours, and the run of "), "{stderr}");
            assert!(stderr.contains("trained on 10 (data.max_hist_len)"), "{stderr}");
            assert!(stderr.contains("python -m micn_twin onnx "), "{stderr}");
            // The weights alone do not say the history length.
            let bare = tmp.path().join("bare.safetensors");
            std::fs::copy(run.join("model.safetensors"), &bare).unwrap();
            let out = twin(&["onnx"]).arg(&bare).arg("--out").arg(tmp.path().join("bare.onnx")).output().unwrap();
            let stderr = String::from_utf8_lossy(&out.stderr);
            assert_eq!(out.status.code(), Some(3), "{stderr}");
            assert!(stderr.contains("bare.safetensors") && stderr.contains("--history-length"), "{stderr}");
            assert!(!tmp.path().join("bare.onnx").exists());
            // With the weights alone, the file still says what its run trained on: an export of
            // histories of 5 is refused for it, naming the file.
            let short = tmp.path().join("export5");
            let data = crate::train::dataset_dir().display().to_string();
            run_ok(
                Command::new(micn_bin()).args(["data", "export", &data, "--max-hist-len", "5", "--out"]).arg(&short),
            );
            let mut cmd = twin(&["score", "--export"]);
            refused_with(
                cmd.arg(&short).arg(&bare).arg("--onnx").arg(&onnx).arg("--out").arg(tmp.path().join("short.csv")),
                3,
                &["histories cut to 5", "din.onnx was made from a model trained on histories of 10"],
            );
            let damaged = tmp.path().join("damaged.onnx");
            std::fs::write(&damaged, &std::fs::read(&shorter).unwrap()[..1000]).unwrap();
            let out = twin(&["score", "--export"])
                .arg(&export)
                .arg(&run)
                .arg("--onnx")
                .arg(&damaged)
                .arg("--out")
                .arg(tmp.path().join("damaged.csv"))
                .output()
                .unwrap();
            let stderr = String::from_utf8_lossy(&out.stderr);
            assert_eq!(out.status.code(), Some(3), "{stderr}");
            assert!(stderr.contains("damaged.onnx: onnxruntime cannot load it"), "{stderr}");
            assert!(!tmp.path().join("damaged.csv").exists());
        }
    }
}

/// `micn export interests` of a MIND run equals what the twin computes: every test sample's
/// interest vectors and active interests, and the item vectors of the samples' targets.
fn check_exported_interests(run: &Path, export: &Path, out: &Path) {
    let done = run_ok(Command::new(micn_bin()).args(["export", "interests", "--run"]).arg(run).arg("--out").arg(out));
    assert!(String::from_utf8_lossy(&done.stdout).contains("up to 3 interests"), "{done:?}");
    // Into another tool's directory (the samples' export): refused, nothing there replaced.
    let before = std::fs::read(export.join("test/items.npy")).unwrap();
    let mut cmd = Command::new(micn_bin());
    let refused = cmd.args(["export", "interests", "--run"]).arg(run).arg("--out").arg(export.join("test"));
    let refused = refused.output().unwrap();
    assert_eq!(refused.status.code(), Some(3), "{}", String::from_utf8_lossy(&refused.stderr));
    assert!(String::from_utf8_lossy(&refused.stderr).contains("already exists"));
    assert_eq!(std::fs::read(export.join("test/items.npy")).unwrap(), before);
    let script = r#"
import json, sys, torch, micn_twin
from micn_twin import read_npy
run, export, out = sys.argv[1:4]
net = micn_twin.load(run)
b = micn_twin.read_export(export, "test")
emb = net.embeddings
with torch.no_grad():
    interests, active = net.main.interests(emb.items(b["hist_items"], b["hist_cats"]), b["hist_mask"])
    targets = emb.items(b["items"], b["cats"])
got = {name: read_npy(f"{out}/{name}.npy") for name in ["interests", "active", "sample", "items"]}
# Next-item retrieval written out: every clicked sample's active interests score all items but
# 0, each keeps its top N (by score, then id), merged by score keeping each item once; a target
# the vocabulary does not hold (0) is never found.
clicked = [i for i in range(len(b["items"])) if b["labels"][i] == 1]
retrieval = {}
for n in (5, 20):
    hits, ndcg = 0, 0.0
    for i in clicked:
        pairs = []
        for j in range(got["active"].shape[1]):
            if got["active"][i, j] > 0.5:
                scores = (got["items"] @ got["interests"][i, j]).tolist()
                ranked = sorted(range(1, len(scores)), key=lambda item: (-scores[item], item))[:n]
                pairs += [(item, scores[item]) for item in ranked]
        merged = []
        for item, _ in sorted(pairs, key=lambda p: (-p[1], p[0])):
            if item not in merged:
                merged.append(item)
        merged = merged[:n]
        target = int(b["items"][i])
        if target in merged:
            hits += 1
            ndcg += 1.0 / __import__("math").log2(merged.index(target) + 2)
    retrieval[n] = (hits / len(clicked), ndcg / len(clicked), len(clicked))
print(json.dumps({
    "retrieval": retrieval,
    "samples": bool(torch.equal(got["sample"], b["sample"])),
    "interests": float((got["interests"] - interests).abs().max()),
    "active": float((got["active"] - active).abs().max()),
    "items": float((got["items"][b["items"]] - targets).abs().max()),
    "spread": float(interests.std()),
}))
"#;
    let mut cmd = Command::new(torch_python());
    cmd.args(["-W", "ignore", "-c", script]).arg(run).arg(export).arg(out);
    let out = run_ok(cmd.current_dir(Path::new(env!("CARGO_MANIFEST_DIR")).join("python")));
    let d: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(d["samples"], true, "{d}");
    for key in ["interests", "active", "items"] {
        assert!(d[key].as_f64().unwrap() <= 1e-5, "{key} differ: {d}");
    }
    assert!(d["spread"].as_f64().unwrap() > 1e-3, "the interests hardly vary: {d}");
    // `micn eval --retrieval` equals the retrieval written out over the exported vectors.
    let eval = run_ok(Command::new(micn_bin()).args(["eval", "--json", "--retrieval", "5,20", "--run"]).arg(run));
    let eval: serde_json::Value = serde_json::from_slice(&eval.stdout).unwrap();
    let metrics = &eval["model"];
    assert_eq!(eval["samples"], metrics[0]["users"], "{eval}");
    assert!(eval["unknown_targets"].as_u64().is_some(), "{eval}");
    for (k, n) in [(0, "5"), (1, "20")] {
        let (m, expected) = (&metrics[k], &d["retrieval"][n]);
        assert_eq!(m["n"].as_u64().unwrap().to_string(), n);
        assert_eq!(m["users"], expected[2], "{m} vs {expected}");
        let close =
            |a: &serde_json::Value, b: &serde_json::Value| (a.as_f64().unwrap() - b.as_f64().unwrap()).abs() < 1e-9;
        assert!(close(&m["recall"], &expected[0]) && close(&m["hit_rate"], &expected[0]), "{m} vs {expected}");
        assert!(close(&m["ndcg"], &expected[1]), "{m} vs {expected}");
    }
    assert!(metrics[1]["recall"].as_f64().unwrap() > metrics[0]["recall"].as_f64().unwrap(), "{metrics}");
}

/// ComiRec's protocol on real held-out users: a MIND retrieval model (with MICN) trained on
/// the head of ComiRec's Amazon Books training file, prepared from its `user,item,time` lines,
/// then `micn eval --retrieval --heldout` over PaddleRec's validation users equals ComiRec's
/// `evaluate_full` written out in Python over the twin's interests (and its `MostPopular`, which
/// counts every line of the training file): recall, hit rate and both NDCGs at 50 and 1,000 (a
/// long list, so that many users find something and the merge of several interests decides;
/// unknown items to retrieve, each a miss and each its own item in the usual NDCG's ideal list).
#[test]
fn held_out_users_retrieve_as_comirec_s_evaluation_written_out_over_the_twin() {
    let tmp = tempfile::tempdir().unwrap();
    let fixtures = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/comirec-books-head");
    let (data, run) = (tmp.path().join("data"), tmp.path().join("run"));
    run_ok(
        Command::new(micn_bin())
            .args(["prepare", "--input-format", "interactions", "--protocol", "din", "--interactions"])
            .arg(fixtures.join("mind_train_demo.txt"))
            .arg("--out")
            .arg(&data),
    );
    let sets = [
        format!("data.dir={:?}", data.display().to_string()),
        "data.max_hist_len=20".into(),
        "model.kind=mind".into(),
        "model.embedding_dim=16".into(),
        "model.mind_objective=\"retrieval\"".into(),
        "model.mind_negatives=64".into(),
        "micn.enabled=true".into(),
        "train.global_batch_size=128".into(),
        "train.lr=0.01".into(),
        "train.max_steps=600".into(),
        "train.epochs=3".into(),
    ];
    let sets: Vec<&str> = sets.iter().map(String::as_str).collect();
    train_from(&crate::small_config(&run, &sets), &SingleProcess, &Resume::Fresh).unwrap();
    let heldout = fixtures.join("mind_valid_part-0");
    let eval = run_ok(
        Command::new(micn_bin())
            .args(["eval", "--json", "--retrieval", "50,1000", "--heldout"])
            .arg(&heldout)
            .arg("--run")
            .arg(&run),
    );
    let micn: serde_json::Value = serde_json::from_slice(&eval.stdout).unwrap();
    assert_eq!(micn["most_popular_by"], "interactions", "{micn}");
    let script = r#"
import json, math, sys, torch, micn_twin
from collections import Counter
run, data, heldout, training = sys.argv[1:5]
net = micn_twin.load(run)
names, item_cat = {}, []
for i, line in enumerate(open(f"{data}/items.tsv")):
    name, _count, cat = line.rstrip("\n").split("\t")
    item_cat.append(int(cat))
    if i > 0:
        names[name] = i
users = []
for line in open(heldout):
    tokens = [t.split(":") for t in line.split()]
    if tokens:
        hist = [names[v] for k, v in tokens if k == "hist_item" and v in names][-20:]
        users.append((hist, [names.get(v, "unknown " + v) for k, v in tokens if k == "eval_item"]))
emb = net.embeddings
with torch.no_grad():
    vectors = emb.items(torch.arange(len(item_cat)), torch.tensor(item_cat))
# ComiRec's mostpop.py: every line of the training file counts.
clicks = Counter(names[line.split(",")[1]] for line in open(training) if line.split(",")[1] in names)
popular = sorted(range(1, len(item_cat)), key=lambda i: (-clicks[i], i))

def retrieve(hist, n):
    if not hist:
        return []
    with torch.no_grad():
        x = emb.items(torch.tensor([hist]), torch.tensor([[item_cat[i] for i in hist]]))
        interests, active = net.main.interests(x, torch.ones(1, len(hist)))
    pairs = []
    for j in range(interests.shape[1]):
        if active[0, j] > 0.5:
            scores = (vectors @ interests[0, j]).tolist()
            pairs += [(i, scores[i]) for i in sorted(range(1, len(scores)), key=lambda i: (-scores[i], i))[:n]]
    merged = []
    for item, _ in sorted(pairs, key=lambda p: (-p[1], p[0])):
        if item not in merged:
            merged.append(item)
    return merged[:n]

def metrics(lists, n):
    # ComiRec's evaluate_full: positions in the held-out list; and the usual NDCG by rank.
    recall = hits = ndcg_comirec = ndcg = 0.0
    for recommended, truth in lists:
        found, count, dcg = set(recommended), 0, 0.0
        for no, iid in enumerate(truth):
            if iid in found:
                count += 1
                dcg += 1.0 / math.log(no + 2, 2)
        recall += count / len(truth)
        if count > 0:
            hits += 1
            ndcg_comirec += dcg / sum(1.0 / math.log(no + 2, 2) for no in range(count))
            ranked = sum(1.0 / math.log2(p + 2) for p, i in enumerate(recommended) if i in set(truth))
            ndcg += ranked / sum(1.0 / math.log2(p + 2) for p in range(min(len(set(truth)), n)))
    u = len(lists)
    return {"n": n, "recall": recall / u, "hit_rate": hits / u, "ndcg": ndcg / u, "ndcg_comirec": ndcg_comirec / u, "users": u}

out = {"model": [], "most_popular": [], "without_history": sum(1 for h, _ in users if not h)}
for n in (50, 1000):
    out["model"].append(metrics([(retrieve(h, n), t) for h, t in users], n))
    out["most_popular"].append(metrics([(popular[:n], t) for _, t in users], n))
print(json.dumps(out))
"#;
    let mut cmd = Command::new(torch_python());
    let training = fixtures.join("mind_train_demo.txt");
    cmd.args(["-W", "ignore", "-c", script]).arg(&run).arg(&data).arg(&heldout).arg(&training);
    let out = run_ok(cmd.current_dir(Path::new(env!("CARGO_MANIFEST_DIR")).join("python")).env("OMP_NUM_THREADS", "1"));
    let twin: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(micn["users"], 499, "{micn}");
    assert_eq!(micn["users_without_history"], twin["without_history"], "{micn}");
    for part in ["model", "most_popular"] {
        for (m, t) in micn[part].as_array().unwrap().iter().zip(twin[part].as_array().unwrap()) {
            assert_eq!((&m["n"], &m["users"]), (&t["n"], &t["users"]), "{part}: {m} vs {t}");
            for key in ["recall", "hit_rate", "ndcg", "ndcg_comirec"] {
                let (a, b) = (m[key].as_f64().unwrap(), t[key].as_f64().unwrap());
                assert!((a - b).abs() < 1e-9, "{part} {key}: micn {m} vs written out {t}");
            }
        }
    }
    // Something was found, by both, or the comparison proves little.
    for part in ["model", "most_popular"] {
        assert!(micn[part][1]["hit_rate"].as_f64().unwrap() > 0.0, "{micn}");
    }
}

/// Runs the twin command `cmd` and requires it to fail with exit status `status` and one line
/// `error: ...` holding every one of `needles`, without a Python traceback; returns that line.
fn refused_with(cmd: &mut Command, status: i32, needles: &[&str]) -> String {
    let out = cmd.output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr).to_string();
    assert_eq!(out.status.code(), Some(status), "{cmd:?}: {stderr}");
    assert!(stderr.starts_with("error: ") && stderr.trim_end().lines().count() == 1, "{cmd:?}: {stderr}");
    for needle in needles {
        assert!(stderr.contains(needle), "{cmd:?}: {needle:?} is not in {stderr}");
    }
    stderr
}

/// A copy at `out` of the safetensors file `model` whose header `edit` changed (the data unchanged).
fn edit_header(model: &Path, out: &Path, edit: impl FnOnce(&mut serde_json::Value)) {
    let bytes = std::fs::read(model).unwrap();
    let length = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
    let mut header: serde_json::Value = serde_json::from_slice(&bytes[8..8 + length]).unwrap();
    edit(&mut header);
    let text = serde_json::to_vec(&header).unwrap();
    let mut file = (text.len() as u64).to_le_bytes().to_vec();
    file.extend(text);
    file.extend(&bytes[8 + length..]);
    std::fs::write(out, file).unwrap();
}

/// A damaged model file, header or configuration is refused naming it, with exit status 3 and
/// no traceback: a cut file; a header whose shape or byte offsets are not sizes; tensors that do
/// not fit together (the tensor named); settings of the wrong type; and when scoring, a batch
/// size of 0, an export with a negative id, an ONNX or TorchScript file of another kind of model.
#[test]
fn the_twin_refuses_a_damaged_model_file_naming_it() {
    let tmp = tempfile::tempdir().unwrap();
    let run = tmp.path().join("run");
    crate::tiny_din_run(&run);
    let model = run.join("model.safetensors");
    let bytes = std::fs::read(&model).unwrap();
    let cut = tmp.path().join("cut.safetensors");
    std::fs::write(&cut, &bytes[..bytes.len() - 100]).unwrap();
    let x_pt = tmp.path().join("x.pt");
    refused_with(twin(&["torchscript"]).arg(&cut).arg("--out").arg(&x_pt), 3, &["cut.safetensors", "byte range"]);
    assert!(!x_pt.exists(), "nothing is written for a refused model");
    // Headers that are not what safetensors says, and tensors of shapes that do not fit the
    // model (the head's first layer transposed): each refused naming the file and the tensor.
    let head = "main.head.layers.0.weight";
    let edits: [(&str, serde_json::Value, &str); 4] = [
        ("shape", serde_json::json!("abc"), "not a list of sizes"),
        ("shape", serde_json::json!([-1, 4]), "not a list of sizes"),
        ("data_offsets", serde_json::json!([0]), "not two byte offsets"),
        ("shape", serde_json::Value::Null, "where the model needs [any, "),
    ];
    for (i, (field, value, why)) in edits.into_iter().enumerate() {
        let damaged = tmp.path().join(format!("damaged-{i}.safetensors"));
        edit_header(&model, &damaged, |header| {
            let entry = &mut header[head];
            let transposed: Vec<serde_json::Value> = entry["shape"].as_array().unwrap().iter().rev().cloned().collect();
            entry[field] = if value.is_null() { transposed.into() } else { value };
        });
        let name = format!("damaged-{i}.safetensors");
        refused_with(twin(&["torchscript"]).arg(&damaged).arg("--out").arg(&x_pt), 3, &[name.as_str(), head, why]);
    }
    // Scoring refuses what would give wrong scores or none: a batch size of 0, an export with a
    // negative id (Python would read a row from the end), an ONNX file of another kind of model.
    let export = tmp.path().join("export");
    export_samples(&export);
    let refused = |cmd: &mut Command, needle: &str| {
        refused_with(cmd.arg("--out").arg(tmp.path().join("refused.csv")), 3, &[needle]);
        assert!(!tmp.path().join("refused.csv").exists());
    };
    refused(twin(&["score", "--batch-size", "0", "--export"]).arg(&export).arg(&run), "--batch-size 0");
    // MIND (its settings in the run's configuration): an ONNX and a TorchScript file of it are
    // refused for the DIN run, and settings of the wrong type for itself, naming the key.
    let (_, mind) = train_variant(tmp.path(), "mind", false);
    let mind_onnx = tmp.path().join("mind.onnx");
    run_ok(twin(&["onnx"]).arg(&mind).arg("--out").arg(&mind_onnx));
    refused(
        twin(&["score", "--split", "valid", "--export"]).arg(&export).arg(&run).arg("--onnx").arg(&mind_onnx),
        "holds a mind model",
    );
    let mind_pt = tmp.path().join("mind.pt");
    run_ok(twin(&["torchscript"]).arg(&mind).arg("--out").arg(&mind_pt));
    refused(
        twin(&["score", "--export"]).arg(&export).arg(&run).arg("--torchscript").arg(&mind_pt),
        "holds a mind model",
    );
    let config = std::fs::read_to_string(mind.join("config.toml")).unwrap();
    for (key, value) in [("mind_interests", "\"x\""), ("mind_pow_p", "\"abc\""), ("mind_routing_iters", "[1, 2]")] {
        let edited = tmp.path().join(format!("mind-{key}"));
        std::fs::create_dir_all(&edited).unwrap();
        for file in ["model.safetensors", "summary.json"] {
            std::fs::copy(mind.join(file), edited.join(file)).unwrap();
        }
        let lines: Vec<String> = config
            .lines()
            .map(|l| if l.starts_with(&format!("{key} = ")) { format!("{key} = {value}") } else { l.to_string() })
            .collect();
        std::fs::write(edited.join("config.toml"), lines.join("\n")).unwrap();
        let setting = format!("model.{key} = ");
        refused(twin(&["score", "--export"]).arg(&export).arg(&edited), &setting);
    }
    let items = export.join("test/items.npy");
    let mut bytes = std::fs::read(&items).unwrap();
    let last = bytes.len() - 8;
    bytes[last..].copy_from_slice(&(-7i64).to_le_bytes());
    std::fs::write(&items, bytes).unwrap();
    refused(twin(&["score", "--export"]).arg(&export).arg(&run), "items.npy: a negative id (-7)");
    // Only MIND has interest vectors to export; a DIN run is refused as an input error.
    let out = Command::new(micn_bin())
        .args(["export", "interests", "--run"])
        .arg(&run)
        .arg("--out")
        .arg(tmp.path().join("interests"))
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(3), "{stderr}");
    assert!(stderr.contains("a din model has no interest vectors, which retrieval"), "{stderr}");
    assert!(!tmp.path().join("interests").exists());
}

/// What `micn predict` would score otherwise, or refuse, the twin refuses too (exit status 3,
/// one line naming both sides and the fix): an export of other history lengths than the run
/// trained with, of another validation share (for `valid` and `train`), of another dataset whose
/// ids happen to fit the model's tables, a TorchScript file of another dataset's model, an
/// unfinished or damaged checkpoint. A bad command line exits 3 without argparse's usage; `--out`
/// that is a directory or under a file is refused before any work, a failed write names `--out`
/// (status 1 for a full device), and a closed standard output ends quietly with 141.
#[test]
fn the_twin_refuses_what_micn_predict_would_score_otherwise_or_refuse() {
    let tmp = tempfile::tempdir().unwrap();
    let run = tmp.path().join("run");
    crate::tiny_din_run(&run);
    let export = tmp.path().join("export");
    export_samples(&export);
    let data = crate::train::dataset_dir().display().to_string();
    let out = tmp.path().join("refused.csv");
    let score = |export: &Path, split: &str| {
        let mut cmd = twin(&["score", "--split", split, "--export"]);
        cmd.arg(export).arg(&run).arg("--out").arg(&out);
        cmd
    };
    // Histories of 5 for a run trained on 10: refused naming both lengths and the fix.
    let short = tmp.path().join("export5");
    run_ok(
        Command::new(micn_bin())
            .args(["data", "export", &data, "--max-hist-len", "5", "--valid-share", "0.1", "--out"])
            .arg(&short),
    );
    refused_with(&mut score(&short, "test"), 3, &["histories cut to 5", "histories of 10", "--max-hist-len 10"]);
    // The command named for a run whose relative data.dir is not found from here says so.
    let elsewhere = tmp.path().join("trained-elsewhere");
    crate::copy_dir(&run, &elsewhere);
    let config = std::fs::read_to_string(elsewhere.join("config.toml")).unwrap();
    let relative = config.replace(&format!("dir = {data:?}"), "dir = \"data/books\"");
    assert_ne!(relative, config);
    std::fs::write(elsewhere.join("config.toml"), relative).unwrap();
    let mut cmd = twin(&["score", "--export"]);
    refused_with(
        cmd.arg(&short).arg(&elsewhere).arg("--out").arg(&out),
        3,
        &[
            "`micn data export DATA --max-hist-len 10",
            "(DATA: the run's data.dir, 'data/books', relative to where it trained)",
        ],
    );
    // Another validation share: its valid/ and train/ are other samples; its test set is the same.
    let share = tmp.path().join("export30");
    run_ok(
        Command::new(micn_bin())
            .args(["data", "export", &data, "--max-hist-len", "10", "--valid-share", "0.3", "--out"])
            .arg(&share),
    );
    for split in ["valid", "train"] {
        refused_with(
            &mut score(&share, split),
            3,
            &["export30/export.json: holds out", "data.valid_share = 0.1", "--valid-share 0.1"],
        );
    }
    assert!(!out.exists());
    // What a write SIGKILL cut short is replaced by the next one, not left beside it.
    let partial = tmp.path().join(".refused.csv.partial");
    std::fs::write(&partial, "sample,score\n0,0.5\n").unwrap();
    run_ok(&mut score(&share, "test"));
    assert!(!partial.exists(), "a partial file was left beside --out");
    std::fs::remove_file(&out).unwrap();
    // An export of a dataset prepared again (vocabularies as large, other ids: another digest
    // than the run recorded) is refused, as micn predict refuses that dataset.
    let info_of = |export: &Path| -> serde_json::Value {
        serde_json::from_slice(&std::fs::read(export.join("export.json")).unwrap()).unwrap()
    };
    let summary: serde_json::Value = serde_json::from_slice(&std::fs::read(run.join("summary.json")).unwrap()).unwrap();
    assert_eq!(info_of(&export)["vocabularies"], summary["vocabularies"], "the export records the run's digest");
    let relabelled = tmp.path().join("relabelled");
    crate::copy_dir(&export, &relabelled);
    let mut info = info_of(&export);
    info["vocabularies"] = "0123456789abcdef".into();
    std::fs::write(relabelled.join("export.json"), serde_json::to_vec(&info).unwrap()).unwrap();
    refused_with(
        &mut score(&relabelled, "test"),
        3,
        &[
            "relabelled/export.json: exported from a dataset whose vocabularies (digest 0123456789abcdef)",
            "export the model's own",
        ],
    );
    // A run that has not finished: its newest checkpoint named.
    let unfinished_run = tmp.path().join("unfinished-run");
    crate::copy_dir(&run, &unfinished_run);
    std::fs::remove_file(unfinished_run.join("model.safetensors")).unwrap();
    let newest = unfinished_run.join("checkpoints").join(micn::checkpoint::dir_name(2));
    let mut cmd = twin(&["score", "--export"]);
    refused_with(
        cmd.arg(&export).arg(&unfinished_run).arg("--out").arg(&out),
        3,
        &["the run has not finished", &format!("score its newest checkpoint, {}", newest.display())],
    );
    // A TorchScript file of another model of the same kind and data (another seed): refused by
    // its weights, naming the run it was made from.
    let reseeded = tmp.path().join("reseeded");
    let cfg =
        crate::small_config(&reseeded, &["model.kind=din", "train.max_steps=2", "train.epochs=1", "train.seed=7"]);
    train_from(&cfg, &SingleProcess, &Resume::Fresh).unwrap();
    let reseeded_pt = tmp.path().join("reseeded.pt");
    run_ok(twin(&["torchscript"]).arg(&reseeded).arg("--out").arg(&reseeded_pt));
    let made = format!("holds other weights than {} (it was made from {})", run.display(), reseeded.display());
    refused_with(score(&export, "test").arg("--torchscript").arg(&reseeded_pt), 3, &[made.as_str()]);
    // Its own checkpoint of the last step holds the same weights: accepted.
    let own_pt = tmp.path().join("own.pt");
    run_ok(
        twin(&["torchscript"])
            .arg(run.join("checkpoints").join(micn::checkpoint::dir_name(2)))
            .arg("--out")
            .arg(&own_pt),
    );
    run_ok(score(&export, "test").arg("--torchscript").arg(&own_pt));
    std::fs::remove_file(&out).unwrap();
    // A stop signal while `--out` is written (sent where the scores are synced to disk): nothing
    // of it is left, neither the file nor its partial form; a signal ignored by whoever started
    // the command (`nohup`) stays ignored, and the scores are written.
    let script = r#"
import os, sys
import micn_twin.__main__ as cli
number = int(sys.argv[1])
def fsync_and_signal(fd):
    os.kill(os.getpid(), number)
cli.os.fsync = fsync_and_signal
sys.exit(cli.main(sys.argv[2:]))
"#;
    let signalled = |signal: libc::c_int, ignored: bool| {
        let mut cmd = Command::new(torch_python());
        cmd.current_dir(Path::new(env!("CARGO_MANIFEST_DIR")).join("python"))
            .args(["-W", "ignore", "-c", script, &signal.to_string(), "score", "--export"])
            .arg(&export)
            .arg(&run)
            .arg("--out")
            .arg(&out);
        if ignored {
            use std::os::unix::process::CommandExt as _;
            // SAFETY: `signal` is async-signal-safe; it changes only the child about to exec.
            unsafe {
                cmd.pre_exec(move || {
                    libc::signal(signal, libc::SIG_IGN);
                    Ok(())
                });
            }
        }
        cmd.output().unwrap()
    };
    let stopped = signalled(libc::SIGTERM, false);
    assert_eq!(stopped.status.code(), Some(128 + libc::SIGTERM), "{}", String::from_utf8_lossy(&stopped.stderr));
    assert!(!out.exists() && !partial.exists(), "a stopped write left a file");
    let kept_on = signalled(libc::SIGHUP, true);
    assert!(kept_on.status.success(), "{}", String::from_utf8_lossy(&kept_on.stderr));
    assert!(out.exists() && !partial.exists());
    std::fs::remove_file(&out).unwrap();
    // Another dataset whose ids fit the model's tables: refused by its vocabulary sizes.
    let other_dir = tmp.path().join("other");
    let synth_cfg = micn::data::synth::SynthConfig {
        users: 200,
        items: 120,
        clusters: 8,
        categories: 5,
        ..micn::data::synth::Preset::Quickstart.config(9)
    };
    let other = micn::data::prepare::synthetic_dataset(&synth_cfg, micn::data::protocol::Protocol::Din, 10, &other_dir)
        .unwrap();
    let other_export = tmp.path().join("other-export");
    let other_data = other.display().to_string();
    run_ok(
        Command::new(micn_bin())
            .args(["data", "export", &other_data, "--max-hist-len", "10", "--out"])
            .arg(&other_export),
    );
    let users = |export: &Path| {
        let info: serde_json::Value =
            serde_json::from_slice(&std::fs::read(export.join("export.json")).unwrap()).unwrap();
        info["users"].as_u64().unwrap()
    };
    let (theirs, ours) = (users(&other_export), users(&export));
    assert!(theirs < ours, "the other dataset's user ids must fit the model's table");
    let sizes = format!("its user vocabulary has {theirs} entries, the model's ({}) {ours}", run.display());
    refused_with(&mut score(&other_export, "test"), 3, &["other-export/export.json", sizes.as_str()]);
    // The serving benchmark makes the same checks before it times anything.
    for (export, needle) in [(&other_export, sizes.as_str()), (&short, "histories cut to 5")] {
        let mut cmd = Command::new(torch_python());
        cmd.arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("bench/serving.py")).arg(&run).arg("--export").arg(export);
        refused_with(cmd.args(["--seconds", "0.1", "--batch", "4"]), 3, &[needle]);
    }
    // And its other refusals take the twin's statuses: a bad argument, a run that is not there.
    let missing = tmp.path().join("no-such-run");
    for (args, needle) in [
        (
            vec![run.as_os_str(), "--export".as_ref(), export.as_os_str(), "--threads".as_ref(), "0".as_ref()],
            "--threads",
        ),
        (vec![missing.as_os_str(), "--export".as_ref(), export.as_os_str()], "no-such-run"),
    ] {
        let mut cmd = Command::new(torch_python());
        cmd.arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("bench/serving.py")).args(args);
        refused_with(&mut cmd, 3, &[needle]);
    }
    // Every timed call holds the batch size asked for: one that does not divide the split, and
    // one larger than the split (which is repeated), as much as one that fits.
    let mut cmd = Command::new(torch_python());
    cmd.arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("bench/serving.py")).arg(&run).arg("--export").arg(&export);
    let timed = run_ok(cmd.args(["--json", "--seconds", "0.05", "--batch", "7", "--batch", "100000"]));
    let report: serde_json::Value = serde_json::from_slice(&timed.stdout).unwrap();
    let rows = report["rows"].as_array().unwrap();
    assert_eq!(rows.len(), 6, "{report}");
    for row in rows {
        let (batch, calls, samples) = (row["batch"].as_u64(), row["calls"].as_u64(), row["samples"].as_u64());
        assert_eq!(samples, Some(batch.unwrap() * calls.unwrap()), "{row}");
    }
    // A TorchScript file of a model of that dataset, for this run and its export.
    let other_run = tmp.path().join("other-run");
    let other_set = format!("data.dir={other_data:?}");
    let cfg =
        crate::small_config(&other_run, &[other_set.as_str(), "model.kind=din", "train.max_steps=2", "train.epochs=1"]);
    train_from(&cfg, &SingleProcess, &Resume::Fresh).unwrap();
    let other_pt = tmp.path().join("other.pt");
    run_ok(twin(&["torchscript"]).arg(&other_run).arg("--out").arg(&other_pt));
    let sizes = format!("other.pt: its user vocabulary has {theirs} entries, the model's ({}) {ours}", run.display());
    refused_with(score(&export, "test").arg("--torchscript").arg(&other_pt), 3, &[sizes.as_str()]);
    // A checkpoint micn refuses: unfinished (no completion marker), or damaged (a flipped byte).
    let checkpoint = run.join("checkpoints").join(micn::checkpoint::dir_name(2));
    run_ok(twin(&["score", "--export"]).arg(&export).arg(&checkpoint).arg("--out").arg(tmp.path().join("ckpt.csv")));
    let unfinished = tmp.path().join("unfinished");
    crate::copy_dir(&checkpoint, &unfinished);
    std::fs::remove_file(unfinished.join("COMPLETE")).unwrap();
    let mut cmd = twin(&["score", "--export"]);
    refused_with(cmd.arg(&export).arg(&unfinished).arg("--out").arg(&out), 3, &["unfinished: no completion marker"]);
    let damaged = tmp.path().join("damaged");
    crate::copy_dir(&checkpoint, &damaged);
    let mut bytes = std::fs::read(damaged.join("model.safetensors")).unwrap();
    let middle = bytes.len() / 2;
    bytes[middle] ^= 1;
    std::fs::write(damaged.join("model.safetensors"), bytes).unwrap();
    let mut cmd = twin(&["score", "--export"]);
    refused_with(
        cmd.arg(&export).arg(&damaged).arg("--out").arg(&out),
        3,
        &["damaged/model.safetensors", "checkpoint is damaged"],
    );
    // A run's model of another checksum than its summary records, as micn refuses it.
    let damaged_run = tmp.path().join("damaged-run");
    for file in ["config.toml", "summary.json", "model.safetensors"] {
        std::fs::create_dir_all(&damaged_run).unwrap();
        std::fs::copy(run.join(file), damaged_run.join(file)).unwrap();
    }
    let mut bytes = std::fs::read(damaged_run.join("model.safetensors")).unwrap();
    *bytes.last_mut().unwrap() ^= 1;
    std::fs::write(damaged_run.join("model.safetensors"), bytes).unwrap();
    let mut cmd = twin(&["score", "--export"]);
    refused_with(
        cmd.arg(&export).arg(&damaged_run).arg("--out").arg(&out),
        3,
        &["damaged-run/model.safetensors", "model_xxh3", "not the one the run wrote"],
    );
    // Without its summary (killed between its model and its summary), the run has not finished.
    std::fs::remove_file(damaged_run.join("summary.json")).unwrap();
    let mut cmd = twin(&["score", "--export"]);
    refused_with(
        cmd.arg(&export).arg(&damaged_run).arg("--out").arg(&out),
        3,
        &["damaged-run: the run has not finished (its model.safetensors and summary.json are written at the end)"],
    );
    assert!(!out.exists());
    // The command line: argparse's errors in one line with status 3; `--out` checked first.
    refused_with(
        twin(&["score"]).arg(&run).arg("--out").arg(&out),
        3,
        &["the following arguments are required: --export"],
    );
    refused_with(twin(&["onnx"]).arg(&run).arg("--out").arg(tmp.path()), 3, &["is a directory; name a file"]);
    let under_file = run.join("config.toml").join("scores.csv");
    let mut cmd = twin(&["score", "--export"]);
    refused_with(cmd.arg(&export).arg(&run).arg("--out").arg(&under_file), 3, &["config.toml is not a directory"]);
    refused_with(
        twin(&["torchscript"]).arg(&run).arg("--out").arg("/dev/full"),
        1,
        &["--out /dev/full: No space left on device"],
    );
    // Standard output closed by its reader (`| head`): quiet, status 141, the scores written.
    let piped = tmp.path().join("piped.csv");
    let mut cmd = twin(&["score", "--export"]);
    cmd.arg(&export)
        .arg(&run)
        .arg("--out")
        .arg(&piped)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped());
    let mut child = cmd.spawn().unwrap();
    drop(child.stdout.take());
    let done = child.wait_with_output().unwrap();
    assert_eq!(done.status.code(), Some(141), "{}", String::from_utf8_lossy(&done.stderr));
    assert!(done.stderr.is_empty(), "{}", String::from_utf8_lossy(&done.stderr));
    assert!(piped.exists());
}

/// MFN with pretrained similarity weights, end to end: `micn export mfn-centres` of a trained DIN
/// writes the DIN's item vectors `[item ‖ category]` as the fixed embeddings and centres that
/// lower Algorithm 1's objective; an MFN trained with them keeps both unchanged, and the twin
/// scores it as `micn predict` does; a file with other centres or items is refused naming it.
#[test]
fn mfn_trains_with_centres_pretrained_from_a_din_run_and_the_twin_scores_it() {
    let tmp = tempfile::tempdir().unwrap();
    let din = tmp.path().join("din");
    let sets = ["model.kind=din", "micn.enabled=false", "train.max_steps=30", "train.epochs=1"];
    train_from(&crate::small_config(&din, &sets), &SingleProcess, &Resume::Fresh).unwrap();
    let centres = tmp.path().join("centres.safetensors");
    let done = run_ok(
        Command::new(micn_bin())
            .args(["export", "mfn-centres", "--interests", "3", "--steps", "60", "--batch", "64", "--run"])
            .arg(&din)
            .arg("--out")
            .arg(&centres),
    );
    let line = String::from_utf8_lossy(&done.stdout).to_string();
    let objective: Vec<f64> = line
        .split("objective ")
        .nth(1)
        .and_then(|rest| rest.split(" in ").next())
        .map(|pair| pair.split(" → ").map(|v| v.parse().unwrap()).collect())
        .unwrap_or_else(|| panic!("{line}"));
    assert!(objective[1] < objective[0], "Algorithm 1 lowered nothing: {line}");
    // Refused (exit 3), the earlier file kept: a step so large that Algorithm 1 diverges, and more
    // centres than model.mfn_interests may have (a file no configuration could read).
    let before = std::fs::read(&centres).unwrap();
    let refused = |args: &[&str]| {
        let out = Command::new(micn_bin())
            .args(["export", "mfn-centres"])
            .args(args)
            .arg("--run")
            .arg(&din)
            .arg("--out")
            .arg(&centres)
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(3), "{}", String::from_utf8_lossy(&out.stderr));
        assert_eq!(std::fs::read(&centres).unwrap(), before, "the earlier centres were replaced");
        String::from_utf8_lossy(&out.stderr).into_owned()
    };
    let stderr = refused(&["--interests", "3", "--steps", "20", "--lr", "1e38"]);
    assert!(stderr.contains("Algorithm 1 diverged") && stderr.contains("lower --lr"), "{stderr}");
    let stderr = refused(&["--interests", "63"]);
    assert!(stderr.contains("--interests must be at most 62, got 63"), "{stderr}");
    // The fixed embeddings are the DIN's item vectors: its item row beside its category's row.
    let file = micn::checkpoint::read_tensors(&centres).unwrap();
    let model = micn::checkpoint::read_tensors(&din.join("model.safetensors")).unwrap();
    let dataset = micn::data::Dataset::open(crate::train::dataset_dir()).unwrap();
    let cats: Vec<i64> = dataset.vocab.item_cat.iter().map(|&c| i64::from(c)).collect();
    let expected = tch::Tensor::cat(
        &[&model["embeddings.item"], &model["embeddings.cat"].index_select(0, &tch::Tensor::from_slice(&cats))],
        1,
    );
    assert!(file["items"].equal(&expected), "the fixed embeddings are not the DIN's item vectors");
    assert_eq!(file["centres"].size(), [3, expected.size()[1]]);

    let mfn = tmp.path().join("mfn");
    let pretrained = format!("model.mfn_pretrained={:?}", centres.display().to_string());
    let sets = [
        "model.kind=mfn",
        "micn.enabled=true",
        "model.mfn_interests=3",
        pretrained.as_str(),
        "train.max_steps=25",
        "train.epochs=1",
    ];
    train_from(&crate::small_config(&mfn, &sets), &SingleProcess, &Resume::Fresh).unwrap();
    let trained = micn::checkpoint::read_tensors(&mfn.join("model.safetensors")).unwrap();
    assert!(trained["main.fixed_items"].equal(&file["items"]) && trained["main.centres"].equal(&file["centres"]));
    let export = tmp.path().join("export");
    let data = crate::train::dataset_dir().display().to_string();
    run_ok(Command::new(micn_bin()).args(["data", "export", &data, "--max-hist-len", "10"]).arg("--out").arg(&export));
    let (predicted, twin_scores) = (tmp.path().join("micn.csv"), tmp.path().join("twin.csv"));
    run_ok(Command::new(micn_bin()).args(["predict", "--run"]).arg(&mfn).arg("--out").arg(&predicted));
    run_ok(twin(&["score", "--export"]).arg(&export).arg(&mfn).arg("--out").arg(&twin_scores));
    assert_same_scores("MFN with pretrained centres", &read_scores(&predicted), &read_scores(&twin_scores));
    // Scoring takes E and C from the model file: the centres file is not needed any more.
    let moved = tmp.path().join("centres-moved.safetensors");
    std::fs::rename(&centres, &moved).unwrap();
    let again = tmp.path().join("again.csv");
    run_ok(Command::new(micn_bin()).args(["predict", "--run"]).arg(&mfn).arg("--out").arg(&again));
    assert_eq!(std::fs::read(&again).unwrap(), std::fs::read(&predicted).unwrap());
    std::fs::rename(&moved, &centres).unwrap();

    // Four centres asked of a file with three: refused, naming the file and the key.
    let other_run = format!("run.dir={:?}", tmp.path().join("mfn4").display().to_string());
    let out = Command::new(micn_bin())
        .args(["train", "--set", "model.mfn_interests=4", "--set", &other_run, "--config"])
        .arg(mfn.join("config.toml"))
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(3), "{stderr}");
    assert!(stderr.contains(&centres.display().to_string()) && stderr.contains("model.mfn_interests = 4"), "{stderr}");
}
