//! Training (issue: models and the MICN auxiliary task): the φ combination against a
//! single-backward oracle, which gradient reaches which variables, determinism, the NaN stop, and
//! every model ± MICN training end to end on small synthetic data.
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use micn::config::{Config, Device as DeviceChoice, ModelKind, Override};
use micn::data::batch::{Batch, NoClickSampler};
use micn::data::prepare::synthetic_dataset;
use micn::data::protocol::Protocol;
use micn::data::synth::{self, SynthConfig};
use micn::data::Dataset;
use micn::dist::SingleProcess;
use micn::network::{Network, VarGroup};
use micn::train::step::{gradients, step_seed, StepContext, Trainable, VarGrad};
use micn::train::trainer::{build_model, Built};
use tch::{Device, Kind, Reduction, Tensor};

use crate::{micn_bin, run_ok};

/// A small prepared synthetic dataset shared by the tests of this module.
pub fn dataset_dir() -> &'static Path {
    static DIR: OnceLock<(tempfile::TempDir, PathBuf)> = OnceLock::new();
    &DIR.get_or_init(|| {
        let tmp = tempfile::tempdir().unwrap();
        let cfg =
            SynthConfig { users: 300, items: 150, clusters: 10, categories: 6, ..synth::Preset::Quickstart.config(4) };
        let out = synthetic_dataset(&cfg, Protocol::Din, 10, tmp.path()).unwrap();
        (tmp, out)
    })
    .1
}

fn config(kind: ModelKind, micn: bool, extra: &[&str]) -> Config {
    let mut sets = vec![
        format!("data.dir={:?}", dataset_dir().display().to_string()),
        "data.max_hist_len=10".into(),
        format!("model.kind={}", kind.name()),
        format!("micn.enabled={micn}"),
        "micn.num_negatives=8".into(),
        "model.wide_buckets=4096".into(),
        "train.global_batch_size=32".into(),
        "train.lr=0.001".into(),
        "train.threads=1".into(),
    ];
    sets.extend(extra.iter().map(|s| s.to_string()));
    let overrides: Vec<Override> = sets.iter().map(|s| Override::parse(s).unwrap()).collect();
    let mut cfg = Config::load(None, &overrides).unwrap();
    cfg.device = DeviceChoice::Cpu;
    cfg
}

fn first_batch(cfg: &Config, dataset: &Dataset) -> Batch {
    let ids: Vec<u32> = (0..cfg.train.global_batch_size as u32).map(|i| i * 7).collect();
    let noclick = (cfg.model.kind == ModelKind::Dien)
        .then(|| NoClickSampler::new(&dataset.vocab.items.counts, &dataset.vocab.item_cat, 3).unwrap());
    Batch::collate(dataset.train.samples(), &ids, cfg.data.max_hist_len, (0, 0, 0), noclick.as_ref())
}

fn context<'a>(cfg: &Config, comm: &'a SingleProcess) -> StepContext<'a> {
    StepContext { seed: 11, ..StepContext::new(cfg, comm, Device::Cpu, 0, 0) }
}

/// The step's combined gradient of every variable, as dense tensors.
fn step_gradients(cfg: &Config) -> (Vec<String>, Vec<VarGroup>, Vec<Tensor>) {
    tch::set_num_threads(1);
    let dataset = Dataset::open(dataset_dir()).unwrap();
    let Built { vs, net } = build_model(cfg, &dataset, Device::Cpu).unwrap();
    let t = Trainable::new(&vs, &net).unwrap();
    let comm = SingleProcess;
    let (grads, _) = gradients(&net, &t, &first_batch(cfg, &dataset), &context(cfg, &comm)).unwrap();
    let dense = grads.into_iter().zip(&t.tensors).map(|(g, var)| as_dense(g, var)).collect();
    (t.names.clone(), t.groups.clone(), dense)
}

fn as_dense(g: VarGrad, var: &Tensor) -> Tensor {
    g.to_dense(var)
}

fn max_abs(t: &Tensor) -> f64 {
    t.abs().max().double_value(&[])
}

/// The single-backward oracle: gradient scaling in the graph, one backward of L_main + λ·L_micn.
fn oracle_gradients(cfg: &Config) -> Vec<Tensor> {
    tch::set_num_threads(1);
    let dataset = Dataset::open(dataset_dir()).unwrap();
    let Built { vs, net } = build_model(cfg, &dataset, Device::Cpu).unwrap();
    let (phi, lambda) = (cfg.micn.phi, cfg.micn.lambda);
    let Network { embeddings, main, micn } = net;
    let net = Network { embeddings: embeddings.with_gradient_scales(phi, 1.0 - phi), main, micn };
    let t = Trainable::new(&vs, &net).unwrap();
    let batch = first_batch(cfg, &dataset);
    let comm = SingleProcess;
    let ctx = context(cfg, &comm);
    let ids = micn::model::embeddings::BatchIds::from_batch(&batch, Device::Cpu);
    let labels = batch.labels(Device::Cpu);
    let b = cfg.train.global_batch_size as f64;
    let embedded = net.embeddings.forward(&ids);
    let out = net.main.forward(&embedded.main, micn::model::batch_stats::Mode::Train);
    let positives = batch.labels.iter().zip(&batch.items).filter(|(&l, &i)| l > 0.5 && i >= 1).count() as f64;
    let mut loss = match (&out.user_vector, net.main.retrieval_negatives(step_seed(&ctx))) {
        // A retrieval objective (MIND's), written out: for every clicked sample with a real
        // target, −log of the softmax of `v_u · e − ln Q` over its target and the step's
        // negatives (those equal to the target left out), summed and divided by their count.
        (Some(user), Some((sampler, negatives))) => {
            let negatives_t = Tensor::from_slice(&negatives);
            let cats: Vec<i64> = negatives.iter().map(|&i| i64::from(dataset.vocab.item_cat[i as usize])).collect();
            let vectors = net.embeddings.main_item_vectors(&negatives_t, &Tensor::from_slice(&cats));
            let mut sum = Tensor::zeros([], (Kind::Float, Device::Cpu));
            for (row, (&label, &item)) in batch.labels.iter().zip(&batch.items).enumerate() {
                if label < 0.5 || item < 1 {
                    continue;
                }
                let u = user.get(row as i64);
                let target =
                    (&u * embedded.main.target.get(row as i64)).sum(Kind::Float) - sampler.probability(item).ln();
                let mut logits = vec![target.shallow_clone()];
                for (k, &negative) in negatives.iter().enumerate().filter(|(_, &n)| n != item) {
                    logits.push((&u * vectors.get(k as i64)).sum(Kind::Float) - sampler.probability(negative).ln());
                }
                sum += Tensor::stack(&logits, 0).logsumexp(0, false) - target;
            }
            sum / positives
        }
        _ => out.logit.binary_cross_entropy_with_logits::<Tensor>(&labels, None, None, Reduction::Sum) / b,
    };
    if let Some(aux) = &out.aux_loss {
        loss += aux.sum(Kind::Float) / b;
    }
    if let (Some(m), Some(aux)) = (&net.micn, &embedded.aux) {
        loss += m.loss(&net.embeddings, aux, &ids.items, &labels, step_seed(&ctx), positives).unwrap().loss * lambda;
    }
    let grads = Tensor::run_backward(&[&loss], &t.tensors, false, false);
    grads
        .into_iter()
        .zip(&t.tensors)
        .map(|(g, v)| match (g.defined(), g.is_sparse()) {
            (false, _) => v.zeros_like(),
            (true, true) => g.to_dense(None, false),
            (true, false) => g,
        })
        .collect()
}

/// `batch` padded with `extra` more history columns (id 0, mask 0).
fn widened(batch: &Batch, extra: usize) -> Batch {
    let (t, wide) = (batch.hist_len, batch.hist_len + extra);
    let widen = |values: &[i64]| -> Vec<i64> {
        values.chunks(t).flat_map(|row| row.iter().copied().chain(std::iter::repeat_n(0, extra))).collect()
    };
    let mut out = batch.clone();
    out.hist_len = wide;
    out.hist_items = widen(&batch.hist_items);
    out.hist_cats = widen(&batch.hist_cats);
    out.hist_mask =
        batch.hist_mask.chunks(t).flat_map(|row| row.iter().copied().chain(std::iter::repeat_n(0.0, extra))).collect();
    out.noclick = batch.noclick.as_ref().map(|(items, cats)| (widen(items), widen(cats)));
    out
}

#[test]
fn a_batch_is_collated_as_wide_as_its_longest_history_and_padding_changes_no_gradient() {
    tch::set_num_threads(1);
    let dataset = Dataset::open(dataset_dir()).unwrap();
    for (kind, extra) in variants() {
        for micn in [false, true] {
            let cfg = config(kind, micn, extra);
            let batch = first_batch(&cfg, &dataset);
            let longest = batch.hist_mask.chunks(batch.hist_len).map(|row| row.iter().sum::<f32>() as usize).max();
            assert_eq!(Some(batch.hist_len), longest, "the width is the longest history");
            let Built { vs, net } = build_model(&cfg, &dataset, Device::Cpu).unwrap();
            let t = Trainable::new(&vs, &net).unwrap();
            let comm = SingleProcess;
            let dense = |batch: &Batch| -> Vec<Tensor> {
                let (grads, _) = gradients(&net, &t, batch, &context(&cfg, &comm)).unwrap();
                grads.into_iter().zip(&t.tensors).map(|(g, var)| as_dense(g, var)).collect()
            };
            let (narrow, wide) = (dense(&batch), dense(&widened(&batch, 7)));
            for ((name, a), b) in t.names.iter().zip(&narrow).zip(&wide) {
                let diff = max_abs(&(a - b));
                assert!(diff <= 1e-6 * max_abs(a).max(1.0), "{kind:?}, MICN {micn}, {name}: {diff}");
            }
        }
    }
}

/// Every model, and MIND with its retrieval objective.
fn variants() -> Vec<(ModelKind, &'static [&'static str])> {
    let mut all: Vec<(ModelKind, &[&str])> = ModelKind::ALL.into_iter().map(|k| (k, &[][..])).collect();
    all.push((ModelKind::Mind, &["model.mind_objective=\"retrieval\"", "model.mind_negatives=16"]));
    all
}

#[test]
fn phi_combination_equals_the_single_backward_oracle() {
    for (kind, extra) in variants() {
        let with = |sets: &[&'static str]| -> Vec<&'static str> { [sets, extra].concat() };
        let cfg = config(kind, true, &with(&["micn.phi=0.3", "micn.lambda=0.7"]));
        let (names, groups, ours) = step_gradients(&cfg);
        let oracle = oracle_gradients(&cfg);
        assert!(groups.contains(&VarGroup::Shared));
        for ((name, a), b) in names.iter().zip(&ours).zip(&oracle) {
            let diff = max_abs(&(a - b));
            assert!(diff <= 1e-6 * (1.0 + max_abs(b)), "{kind:?} {name}: differs by {diff}");
        }
        // The comparison can fail: φ matters on the shared tables.
        let other = step_gradients(&config(kind, true, &with(&["micn.phi=0.9", "micn.lambda=0.7"])));
        let shared = groups.iter().position(|g| *g == VarGroup::Shared).unwrap();
        assert!(max_abs(&(&other.2[shared] - &ours[shared])) > 1e-7, "{kind:?}: φ changed nothing");
    }
}

#[test]
fn with_phi_zero_the_main_loss_sends_nothing_to_e_aux() {
    // λ = 0 silences MICN; with φ = 0 the shared tables then get exactly nothing, although the
    // main model reads e_aux (φ = 1 shows that it does).
    let (_, groups, zero) = step_gradients(&config(ModelKind::Din, true, &["micn.phi=0", "micn.lambda=0"]));
    let (_, _, one) = step_gradients(&config(ModelKind::Din, true, &["micn.phi=1", "micn.lambda=0"]));
    for (k, g) in groups.iter().enumerate().filter(|(_, g)| **g == VarGroup::Shared) {
        assert_eq!(max_abs(&zero[k]), 0.0, "{g:?}");
        assert!(max_abs(&one[k]) > 0.0);
    }
}

#[test]
fn e_orig_never_gets_micn_gradient_and_micn_never_gets_main_gradient() {
    let (names, groups, l1) = step_gradients(&config(ModelKind::Dien, true, &["micn.lambda=1"]));
    let (_, _, l1000) = step_gradients(&config(ModelKind::Dien, true, &["micn.lambda=1000"]));
    let (_, _, l0) = step_gradients(&config(ModelKind::Dien, true, &["micn.lambda=0"]));
    for (k, group) in groups.iter().enumerate() {
        match group {
            // Whatever λ, the e_orig tables and main-model parameters see the same gradient (up
            // to the summation order of libtorch's threaded embedding backward; a MICN leak
            // scaled by 1000 would be far larger).
            VarGroup::Orig => {
                let diff = max_abs(&(&l1[k] - &l1000[k]));
                assert!(diff <= 1e-6 * max_abs(&l1[k]).max(1e-12), "{}: {diff}", names[k]);
            }
            // MICN's parameters see only λ·∂L_micn: zero at λ = 0, linear in λ.
            VarGroup::Aux => {
                assert_eq!(max_abs(&l0[k]), 0.0, "{}", names[k]);
                let diff = max_abs(&(&l1000[k] - &l1[k] * 1000.0));
                assert!(diff <= 1e-5 * max_abs(&l1000[k]).max(1e-12), "{}: {diff}", names[k]);
            }
            VarGroup::Shared => {}
        }
    }
    assert!(groups.contains(&VarGroup::Aux) && groups.contains(&VarGroup::Orig));
}

#[test]
fn a_non_finite_loss_stops_with_the_step_and_the_loss_named() {
    tch::set_num_threads(1);
    let cfg = config(ModelKind::Din, true, &[]);
    let dataset = Dataset::open(dataset_dir()).unwrap();
    let Built { vs, net } = build_model(&cfg, &dataset, Device::Cpu).unwrap();
    let t = Trainable::new(&vs, &net).unwrap();
    let head = t.names.iter().position(|n| n.starts_with("main.") && n.ends_with("weight")).unwrap();
    tch::no_grad(|| {
        let _ = t.tensors[head].shallow_clone().fill_(f64::NAN);
    });
    let comm = SingleProcess;
    let err = gradients(&net, &t, &first_batch(&cfg, &dataset), &context(&cfg, &comm)).unwrap_err().to_string();
    assert!(err.contains("step 1") && err.contains("main loss is NaN"), "{err}");
}

pub(crate) fn train_cli(run: &Path, extra: &[&str]) -> serde_json::Value {
    let cfg = config(ModelKind::Din, true, &[]);
    let config_path = run.with_extension("toml");
    std::fs::write(&config_path, cfg.to_toml()).unwrap();
    let mut cmd = std::process::Command::new(micn_bin());
    cmd.args(["train", "--config"])
        .arg(&config_path)
        .arg("--set")
        .arg(format!("run.dir={:?}", run.display().to_string()));
    for e in extra {
        cmd.args(["--set", e]);
    }
    run_ok(&mut cmd);
    serde_json::from_str(&std::fs::read_to_string(run.join("summary.json")).unwrap()).unwrap()
}

/// `metrics.jsonl` without its one wall-clock field.
fn deterministic_metrics(run: &Path) -> Vec<serde_json::Value> {
    std::fs::read_to_string(run.join("metrics.jsonl"))
        .unwrap()
        .lines()
        .map(|l| {
            let mut v: serde_json::Value = serde_json::from_str(l).unwrap();
            v.as_object_mut().unwrap().remove("samples_per_sec");
            v
        })
        .collect()
}

/// With λ = 0 (MICN's loss off: the "width only" ablation) or φ = 1 (`e_aux` learns from the
/// main task alone) the main model is the same whatever MICN's own settings, on both paths: the
/// rows only MICN read (its negatives) take no part in the φ combination, so lazy Adam does not
/// move them by their momentum alone.
#[test]
fn with_lambda_zero_or_phi_one_micn_settings_never_reach_the_main_model() {
    let tmp = tempfile::tempdir().unwrap();
    let main_tensors = |run: &Path| -> Vec<(String, Tensor)> {
        let all = Tensor::read_safetensors(run.join("model.safetensors")).unwrap();
        let mut main: Vec<_> = all.into_iter().filter(|(name, _)| !name.starts_with("micn.")).collect();
        main.sort_by(|a, b| a.0.cmp(&b.0));
        main
    };
    let device_path = "train.device_path=true";
    let cases: [&[&str]; 4] =
        [&["micn.lambda=0"], &["micn.lambda=0", device_path], &["micn.phi=1"], &["micn.phi=1", device_path]];
    for (k, sets) in cases.iter().enumerate() {
        let [a, b] = [4, 16].map(|negatives| {
            let run = tmp.path().join(format!("{k}-{negatives}"));
            let negatives = format!("micn.num_negatives={negatives}");
            train_cli(&run, &[&["train.max_steps=30", &negatives][..], sets].concat());
            main_tensors(&run)
        });
        assert!(a.iter().any(|(name, _)| name.ends_with("item_aux")) && a.len() == b.len());
        for ((name, x), (other, y)) in a.iter().zip(&b) {
            assert!(name == other && x.equal(y), "{sets:?}: {name} depends on micn.num_negatives");
        }
    }
}

#[test]
fn same_seed_gives_bit_identical_metrics_on_cpu() {
    let tmp = tempfile::tempdir().unwrap();
    let args = ["train.max_steps=24", "train.log_every_steps=4", "train.eval_every_steps=12", "model.kind=dien"];
    let (a, b, c) = (tmp.path().join("a"), tmp.path().join("b"), tmp.path().join("c"));
    train_cli(&a, &args);
    train_cli(&b, &args);
    let metrics = deterministic_metrics(&a);
    assert!(metrics.len() >= 6, "{metrics:?}");
    assert_eq!(metrics, deterministic_metrics(&b));
    let mut other_seed = args.to_vec();
    other_seed.push("train.seed=2");
    train_cli(&c, &other_seed);
    assert_ne!(metrics, deterministic_metrics(&c));
}

#[test]
fn every_model_with_and_without_micn_trains_evaluates_and_reevaluates() {
    let tmp = tempfile::tempdir().unwrap();
    for (kind, extra) in variants() {
        let name = format!("{}{}", kind.name(), if extra.is_empty() { "" } else { "-retrieval" });
        for micn in [false, true] {
            let run = tmp.path().join(format!("{name}-{micn}"));
            let kind_set = format!("model.kind={}", kind.name());
            let micn_set = format!("micn.enabled={micn}");
            let summary = train_cli(&run, &[&["train.max_steps=20", &kind_set, &micn_set], extra].concat());
            let auc = summary["test_auc"].as_f64().unwrap();
            assert!(auc.is_finite() && (0.0..=1.0).contains(&auc), "{kind:?} micn={micn}: {summary}");
            assert_eq!(summary["steps"], 20);
            let line = std::fs::read_to_string(run.join("metrics.jsonl")).unwrap();
            assert_eq!(line.contains("loss_micn"), micn, "{kind:?}");
            assert_eq!(line.contains("loss_model_aux"), matches!(kind, ModelKind::Dien | ModelKind::Camn));
            // `micn eval` on the saved model reproduces the final AUC exactly.
            let out = run_ok(std::process::Command::new(micn_bin()).args(["eval", "--json", "--run"]).arg(&run));
            let eval: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
            assert_eq!(eval["auc"], summary["test_auc"], "{kind:?} micn={micn}");
        }
    }
}

/// MIND trained for retrieval learns nothing from an unclicked sample (its sampled softmax and
/// MICN's have terms for clicked samples only), so an epoch is its clicked samples; MIND trained
/// for CTR takes them all.
#[test]
fn retrieval_training_skips_unclicked_samples() {
    let tmp = tempfile::tempdir().unwrap();
    let dataset = micn::data::Dataset::open(dataset_dir()).unwrap();
    let samples = dataset.train.samples();
    let all = samples.labels.len();
    let clicked = (0..all as u32).filter(|&i| micn::data::batch::is_positive_sample(samples, i)).count();
    assert!(clicked > 0 && clicked < all, "{clicked} of {all}");
    for (objective, expected) in [("retrieval", clicked), ("ctr", all)] {
        let run = tmp.path().join(objective);
        let objective = format!("model.mind_objective={objective:?}");
        let sets =
            ["model.kind=mind", &objective, "data.valid_share=0", "train.epochs=1", "train.global_batch_size=256"];
        let summary = train_cli(&run, &sets);
        let steps = micn::data::shard::steps_per_epoch(expected, 256, true);
        assert_eq!(summary["steps"], steps, "{objective}: {summary}");
    }
}

#[test]
fn a_history_longer_than_the_dataset_keeps_is_refused_by_name() {
    let tmp = tempfile::tempdir().unwrap();
    let cfg = crate::small_config(&tmp.path().join("run"), &["data.max_hist_len=50"]);
    let e = micn::train::train(&cfg, &SingleProcess).unwrap_err().to_string();
    assert!(e.contains("data.max_hist_len = 50") && e.contains("at most 10") && e.contains("--max-hist-len 50"), "{e}");
    assert!(!tmp.path().join("run").exists(), "nothing is written for a refused run");
}
