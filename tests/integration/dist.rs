//! Data parallelism over in-process thread ranks: replicas stay identical after every step,
//! evaluation over N ranks equals a single-process one exactly, and a batch the world size does
//! not divide is refused with the numbers.
use micn::config::{Config, Override};
use micn::data::Dataset;
use micn::dist::{SingleProcess, ThreadRanks};
use micn::train::train;
use micn::train::trainer::{build_model, evaluate, Built};
use tch::Device;

use crate::train::dataset_dir;

fn config(run: &std::path::Path, extra: &[&str]) -> Config {
    let mut sets = vec![
        format!("data.dir={:?}", dataset_dir().display().to_string()),
        format!("run.dir={:?}", run.display().to_string()),
        "device=cpu".into(),
        "data.max_hist_len=10".into(),
        "model.kind=dien".into(),
        "micn.num_negatives=8".into(),
        "train.global_batch_size=48".into(),
        "train.lr=0.001".into(),
        "train.threads=1".into(),
        "train.check_replicas_every_steps=1".into(),
    ];
    sets.extend(extra.iter().map(|s| s.to_string()));
    let overrides: Vec<Override> = sets.iter().map(|s| Override::parse(s).unwrap()).collect();
    Config::load(None, &overrides).unwrap()
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
fn a_global_batch_the_world_size_does_not_divide_is_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let cfg = config(tmp.path(), &["train.global_batch_size=32"]);
    let errors = ThreadRanks::run(3, |comm| train(&cfg, &comm).err().map(|e| e.to_string()));
    for e in errors {
        let e = e.expect("training must refuse");
        assert!(e.contains("global_batch_size = 32") && e.contains("world size 3"), "{e}");
    }
}
