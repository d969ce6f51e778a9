//! Data parallelism over in-process thread ranks: replicas stay identical after every step,
//! evaluation over N ranks equals a single-process one exactly, and a batch the world size does
//! not divide is refused with the numbers.
use micn::config::Config;
use micn::data::Dataset;
use micn::dist::{SingleProcess, ThreadRanks};
use micn::train::train;
use micn::train::trainer::{build_model, evaluate, Built};
use tch::Device;

use crate::train::dataset_dir;

fn config(run: &std::path::Path, extra: &[&str]) -> Config {
    let mut sets = vec!["train.check_replicas_every_steps=1"];
    sets.extend_from_slice(extra);
    crate::small_config(run, &sets)
}

#[test]
fn thread_ranks_hold_identical_replicas_after_every_step() {
    let tmp = tempfile::tempdir().unwrap();
    for world in [2, 3] {
        let cfg = config(&tmp.path().join(format!("w{world}")), &["train.max_steps=6"]);
        let summaries = ThreadRanks::run(world, |comm| train(&cfg, &comm).unwrap_or_else(|e| panic!("{e}")));
        assert!(summaries.iter().all(|s| s.replica_digest == summaries[0].replica_digest));
        assert!(summaries.iter().all(|s| s.test_auc == summaries[0].test_auc && s.steps == 6));
    }
}

#[test]
fn evaluation_over_three_ranks_equals_a_single_process() {
    tch::set_num_threads(1);
    let cfg = config(std::path::Path::new("unused"), &[]);
    let dataset = Dataset::open(dataset_dir()).unwrap();
    let Built { net, .. } = build_model(&cfg, &dataset, Device::Cpu).unwrap();
    let single = evaluate(&net, &dataset, &SingleProcess, Device::Cpu, 10).unwrap();
    let ranks = ThreadRanks::run(3, |comm| {
        let dataset = Dataset::open(dataset_dir()).unwrap();
        let Built { net, .. } = build_model(&cfg, &dataset, Device::Cpu).unwrap();
        evaluate(&net, &dataset, &comm, Device::Cpu, 10).unwrap()
    });
    for r in ranks {
        assert_eq!(r, single);
    }
}

#[test]
fn a_training_split_smaller_than_one_batch_is_refused() {
    let tmp = tempfile::tempdir().unwrap();
    // Also where the last batch is kept, which would fill it with copies of the same samples.
    for drop_remainder in [true, false] {
        let sets = ["train.global_batch_size=10000000".to_string(), format!("data.drop_remainder={drop_remainder}")];
        let cfg = config(tmp.path(), &sets.iter().map(String::as_str).collect::<Vec<_>>());
        let e = train(&cfg, &SingleProcess).unwrap_err().to_string();
        assert!(e.contains("fewer than one global batch of 10000000"), "{e}");
    }
    // The count says which samples count: what the validation split leaves, the clicked ones.
    let refused = |sets: &[&str]| {
        let cfg = config(tmp.path(), &[&["train.global_batch_size=10000000"], sets].concat());
        train(&cfg, &SingleProcess).unwrap_err().to_string()
    };
    let whole = refused(&["data.valid_share=0"]);
    assert!(whole.contains(" training samples, fewer than one global batch"), "{whole}");
    let archive: usize = whole.split(": ").nth(1).unwrap().split(' ').next().unwrap().parse().unwrap();
    let e = refused(&["data.valid_share=0.5"]);
    assert!(e.contains(&format!(" training samples (of {archive}: data.valid_share = 0.5 holds out ")), "{e}");
    for (share, left) in [("0", ""), ("0.5", " left when data.valid_share = 0.5 holds out ")] {
        let e = refused(&["model.kind=mind", "model.mind_objective=retrieval", &format!("data.valid_share={share}")]);
        assert!(e.contains(&format!("training samples (the clicked ones of {archive}{left}")), "{e}");
        assert!(e.contains("MIND's retrieval objective learns from those), fewer than one global batch"), "{e}");
    }
}

#[test]
fn a_global_batch_the_world_size_does_not_divide_is_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let cfg = config(tmp.path(), &["train.global_batch_size=32"]);
    let errors = ThreadRanks::run(3, |comm| train(&cfg, &comm).err().map(|e| e.to_string()));
    for e in errors {
        let e = e.expect("training must refuse");
        assert!(e.contains("global_batch_size = 32") && e.contains("world size 3"), "{e}");
    }
}

#[test]
fn every_rank_knows_the_global_batchs_micn_positives_without_a_collective() {
    use micn::data::loader::{EpochLoader, LoaderConfig};
    let dataset = std::sync::Arc::new(Dataset::open(dataset_dir()).unwrap());
    let loader = |world: usize, rank: usize| {
        let cfg = LoaderConfig {
            seed: 9,
            global_batch: 12,
            world,
            rank,
            max_hist_len: 10,
            drop_remainder: true,
            prefetch: 2,
            noclick: false,
        };
        EpochLoader::new(std::sync::Arc::clone(&dataset), &cfg, 1, 0).unwrap().take(5).collect::<Vec<_>>()
    };
    let local = |b: &micn::data::batch::Batch| b.micn_positives() as u32;
    let whole = loader(1, 0);
    let ranks: Vec<_> = (0..3).map(|r| loader(3, r)).collect();
    let mut seen = 0;
    for (step, one) in whole.iter().enumerate() {
        assert_eq!(one.global_positives, Some(local(one)), "one rank: its own count");
        let sum: u32 = ranks.iter().map(|r| local(&r[step])).sum();
        assert_eq!(sum, local(one), "the three slices make up the whole batch");
        for r in &ranks {
            assert_eq!(r[step].global_positives, Some(sum), "step {step}: every rank holds the global count");
        }
        seen += sum;
    }
    assert!(seen > 0, "the fixture batches must hold positives");
}

/// Per rank: every trainable variable after the steps, and what `observe` returned for each step.
pub type RankSteps<T> = (Vec<(String, Vec<f32>)>, Vec<T>);

/// 4 steps of `cfg` (on the path `train.device_path` selects) on `world` thread ranks, where rank r
/// passes the run-control flags `control(r)` every step; `observe` runs each step and says what
/// to keep of it.
pub fn drive_steps<T: Send>(
    cfg: &Config,
    world: usize,
    control: impl Fn(usize) -> micn::train::step::Control + Sync,
    observe: impl Fn(&mut dyn FnMut() -> micn::train::step::StepStats) -> T + Sync,
) -> Vec<RankSteps<T>> {
    use micn::train::step::StepContext;
    use micn::train::trainer::Replica;
    ThreadRanks::run(world, |comm| {
        tch::set_num_threads(1);
        let rank = micn::dist::Communicator::rank(&comm);
        let dataset = std::sync::Arc::new(Dataset::open(dataset_dir()).unwrap());
        let mut replica = Replica::new(build_model(cfg, &dataset, Device::Cpu).unwrap(), cfg, &comm).unwrap();
        let loader_cfg = micn::data::loader::LoaderConfig::from_config(cfg, world, rank);
        let mut observed = Vec::new();
        for (step, batch) in
            micn::data::loader::EpochLoader::new(dataset, &loader_cfg, 0, 0).unwrap().take(4).enumerate()
        {
            let ctx = StepContext {
                control: control(rank),
                ..StepContext::new(cfg, &comm, Device::Cpu, step as u64, batch.first_position)
            };
            observed.push(observe(&mut || replica.step(&batch, &ctx).unwrap()));
        }
        let t = &replica.trainable;
        let parameters = t
            .names
            .iter()
            .cloned()
            .zip(t.tensors.iter().map(|x| Vec::<f32>::try_from(x.flatten(0, -1)).unwrap()))
            .collect::<Vec<_>>();
        (parameters, observed)
    })
}

/// Each rank's variables after 4 steps and each step's global run-control flags.
fn run_steps(
    cfg: &Config,
    world: usize,
    control: impl Fn(usize) -> micn::train::step::Control + Sync,
) -> Vec<RankSteps<micn::train::step::Control>> {
    drive_steps(cfg, world, control, |step| step().control)
}

/// Every trainable variable of a model trained 4 steps on `world` thread ranks.
fn parameters_after(cfg: &Config, world: usize) -> Vec<(String, Vec<f32>)> {
    run_steps(cfg, world, |_| Default::default()).swap_remove(0).0
}

#[test]
fn run_control_flags_ride_in_the_step_and_reach_every_rank() {
    use micn::train::step::Control;
    let cfg = config(std::path::Path::new("unused"), &[]);
    let global = |control: fn(usize) -> Control| {
        let ranks = run_steps(&cfg, 3, control);
        let flags = ranks[0].1[0];
        assert!(ranks.iter().all(|(_, f)| f.iter().all(|x| *x == flags)), "every rank, every step, the same flags");
        flags
    };
    let stop_on_2 = global(|r| Control { stop: r == 2, checkpoint_due: false });
    assert_eq!(stop_on_2, Control { stop: true, checkpoint_due: false }, "a stop on any rank stops all");
    let due_on_1 = global(|r| Control { stop: false, checkpoint_due: r == 1 });
    assert_eq!(due_on_1, Control::default(), "only rank 0's clock decides a time-triggered checkpoint");
    let due_on_0 = global(|r| Control { stop: false, checkpoint_due: r == 0 });
    assert_eq!(due_on_0, Control { stop: false, checkpoint_due: true });
    assert_eq!(global(|_| Control::default()), Control::default());
}

#[test]
fn n_thread_ranks_end_where_one_rank_with_the_whole_batch_ends() {
    // With MICN on (and DIEN's auxiliary loss for DIEN): routing logits keyed by global sample,
    // shared negatives, global-count normalisation and Dice's statistics over the global batch
    // make 2 and 3 ranks × b samples equal 1 rank × N·b.
    let tmp = tempfile::tempdir().unwrap();
    let retrieval = "model.mind_objective=\"retrieval\"";
    for (kind, objective) in
        [("wide_deep", ""), ("din", ""), ("dien", ""), ("mind", ""), ("mind", retrieval), ("mfn", ""), ("camn", "")]
    {
        let kind_set = format!("model.kind={kind}");
        // Adam divides by `sqrt(v) + eps`: with the default eps (1e-8) a gradient component of
        // rounding size (1e-9, as a sum of terms that nearly cancel) still moves its weight by a
        // tenth of the learning rate, in a direction the rounding decides (with eps 1e-6 one
        // Wide&Deep item weight still moved by a quarter of it). A larger eps keeps rounding at
        // rounding size; real differences between the ranks' gradients (of the gradients' own
        // size, moving weights by about lr) still show.
        let sets = [kind_set.as_str(), "model.wide_buckets=4096", "train.adam_eps=1e-5", objective];
        let cfg = config(tmp.path(), &sets[..if objective.is_empty() { 3 } else { 4 }]);
        let one = parameters_after(&cfg, 1);
        for world in [2, 3] {
            let what = format!("{kind} {objective}, {world} ranks");
            assert_same_parameters(&one, &parameters_after(&cfg, world), &what);
        }
    }
}

/// Every variable of `a` equals `b`'s to 1e-5 of its scale (see the test above for why).
fn assert_same_parameters(a: &[(String, Vec<f32>)], b: &[(String, Vec<f32>)], what: &str) {
    for ((name, a), (_, b)) in a.iter().zip(b) {
        // A softmax over the history ignores a shift of all scores, so the attention
        // MLP's output bias has a gradient of exactly zero in theory: what it gets is
        // rounding noise, which Adam turns into lr-sized steps of either sign.
        if name.ends_with("attention.mlp.output.bias") {
            continue;
        }
        // Relative to the tensor's largest value, or absolute for tensors whose values
        // are all below 1 (biases near zero, where Adam turns rounding-level gradients
        // into lr-sized steps).
        let scale = a.iter().fold(0f32, |m, x| m.max(x.abs())).max(1.0);
        let diff = a.iter().zip(b).fold(0f32, |m, (x, y)| m.max((x - y).abs()));
        let at = a.iter().zip(b).position(|(x, y)| (x - y).abs() == diff).unwrap_or(0);
        assert!(
            diff <= 1e-5 * scale,
            "{what}, {name}: difference {diff} at scale {scale} (element {at}: {} vs {})",
            a[at],
            b[at]
        );
    }
}

#[test]
fn clipping_and_weight_decay_act_on_the_global_gradient_so_two_ranks_still_equal_one() {
    let tmp = tempfile::tempdir().unwrap();
    let sets = ["model.kind=din", "train.adam_eps=1e-5", "train.lr=0.01"];
    let with = [&sets[..], &["train.clip_grad_norm=0.01", "train.weight_decay=0.5"]].concat();
    let cfg = config(tmp.path(), &with);
    let norms = |world: usize| drive_steps(&cfg, world, |_| Default::default(), |step| step().grad_norm);
    let (one, two) = (norms(1).swap_remove(0), norms(2).swap_remove(0));
    assert!(one.1.iter().all(|&n| n > 0.01), "clipping engaged at every step: {:?}", one.1);
    for (a, b) in one.1.iter().zip(&two.1) {
        assert!((a - b).abs() <= 1e-4 * a, "the global norm differs between 1 and 2 ranks: {a} vs {b}");
    }
    assert_same_parameters(&one.0, &two.0, "clipped and decayed, 2 ranks");
    // And they change the run: the same steps without them end elsewhere.
    let plain = parameters_after(&config(tmp.path(), &sets), 1);
    let moved = one.0.iter().zip(&plain).any(|((_, a), (_, b))| a.iter().zip(b).any(|(x, y)| (x - y).abs() > 1e-4));
    assert!(moved, "clipping and weight decay changed nothing");
}

fn write_config(path: &std::path::Path, cfg: &Config) {
    std::fs::write(path, cfg.to_toml()).unwrap();
}

#[test]
fn mpirun_two_ranks_match_two_thread_ranks_bit_for_bit() {
    let tmp = tempfile::tempdir().unwrap();
    let args = ["model.kind=dien", "train.max_steps=5"];
    let threads_cfg = config(&tmp.path().join("threads"), &args);
    let summaries = ThreadRanks::run(2, |comm| train(&threads_cfg, &comm).unwrap());
    let mpi_cfg = config(&tmp.path().join("mpi"), &args);
    let path = tmp.path().join("mpi.toml");
    write_config(&path, &mpi_cfg);
    crate::run_ok(crate::mpirun(2).arg(crate::micn_bin()).args(["train", "--config"]).arg(&path));
    let text = std::fs::read_to_string(tmp.path().join("mpi").join("summary.json")).unwrap();
    let mpi: serde_json::Value = serde_json::from_str(&text).unwrap();
    assert_eq!(mpi["world_size"], 2);
    assert_eq!(
        mpi["replica_digest"],
        summaries[0].replica_digest.as_str(),
        "MPI and thread ranks computed the same bits"
    );
}

#[test]
fn a_rank_that_fails_stops_the_mpirun_job_with_its_message() {
    // Rank 1 finds no dataset at data.dir (as on a node without the data: the same relative
    // path, from another working directory); rank 0 would wait for it in the first collective.
    // The job must end, not hang, and say why.
    let tmp = tempfile::tempdir().unwrap();
    let mut cfg = config(&tmp.path().join("run"), &["train.max_steps=5"]);
    let (with_data, without) = (tmp.path().join("node0"), tmp.path().join("node1"));
    std::fs::create_dir_all(&with_data).unwrap();
    std::fs::create_dir_all(&without).unwrap();
    std::os::unix::fs::symlink(&cfg.data.dir, with_data.join("node-data")).unwrap();
    cfg.data.dir = "node-data".into();
    let path = tmp.path().join("run.toml");
    write_config(&path, &cfg);
    let mut cmd = crate::mpirun(1);
    cmd.arg("-wdir").arg(&with_data).arg(crate::micn_bin()).args(["train", "--config"]).arg(&path);
    cmd.args([":", "-np", "1", "-wdir"]).arg(&without).arg(crate::micn_bin()).args(["train", "--config"]).arg(&path);
    cmd.stdout(std::process::Stdio::piped()).stderr(std::process::Stdio::piped());
    let mut child = cmd.spawn().unwrap();
    let started = std::time::Instant::now();
    while child.try_wait().unwrap().is_none() {
        if started.elapsed() > std::time::Duration::from_secs(120) {
            child.kill().unwrap();
            panic!("the job hung after one rank failed");
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    let out = child.wait_with_output().unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("error: rank 1: node-data: no dataset there"), "{stderr}");
    assert_eq!(out.status.code(), Some(3), "{stderr}");
}
