//! The cluster files a user applies as they are: `cluster/kubeflow/mpijob.yaml` checked against
//! the MPIJob v2beta1 schema the MPI Operator installs (vendored in `cluster/kubeflow/schema/`),
//! with unknown fields refused as `kubectl --validate=strict` does; its launcher's arguments
//! accepted by `micn-launch`; the image's ssh set-up and build context.
use std::path::Path;

use serde_yaml::Value;

fn repo_file(path: &str) -> String {
    let full = Path::new(env!("CARGO_MANIFEST_DIR")).join(path);
    std::fs::read_to_string(&full).unwrap_or_else(|e| panic!("{}: {e}", full.display()))
}

fn yaml(path: &str) -> Value {
    serde_yaml::from_str(&repo_file(path)).unwrap_or_else(|e| panic!("{path}: {e}"))
}

/// Check `value` against an OpenAPI v3 schema as a CRD's structural schema reads: `type`,
/// `properties` (other fields refused unless `x-kubernetes-preserve-unknown-fields`),
/// `required`, `items`, `enum`, `minimum`, `maximum`. Every violation, with its path.
fn violations(schema: &Value, value: &Value, path: &str) -> Vec<String> {
    let mut found = Vec::new();
    let kind_ok = match schema["type"].as_str() {
        Some("object") => value.is_mapping(),
        Some("array") => value.is_sequence(),
        Some("integer") => value.as_i64().is_some(),
        Some("string") => value.is_string(),
        Some("boolean") => value.is_bool(),
        Some("number") => value.as_f64().is_some(),
        _ => true,
    };
    if !kind_ok {
        return vec![format!("{path}: expected {}, found {value:?}", schema["type"].as_str().unwrap_or("?"))];
    }
    if let Some(allowed) = schema["enum"].as_sequence() {
        if !allowed.contains(value) {
            found.push(format!("{path}: {value:?} is not one of {allowed:?}"));
        }
    }
    if let (Some(n), Some(min)) = (value.as_i64(), schema["minimum"].as_i64()) {
        if n < min {
            found.push(format!("{path}: {n} is below the minimum {min}"));
        }
    }
    if let (Some(n), Some(max)) = (value.as_i64(), schema["maximum"].as_i64()) {
        if n > max {
            found.push(format!("{path}: {n} is above the maximum {max}"));
        }
    }
    if let Some(map) = value.as_mapping() {
        let properties = schema["properties"].as_mapping();
        let open = schema["x-kubernetes-preserve-unknown-fields"].as_bool() == Some(true);
        for (key, inner) in map {
            let key = key.as_str().unwrap_or("?");
            match properties.and_then(|p| p.get(key)) {
                Some(sub) => found.extend(violations(sub, inner, &format!("{path}.{key}"))),
                None if open || properties.is_none() => {}
                None => found.push(format!("{path}.{key}: unknown field")),
            }
        }
        for key in schema["required"].as_sequence().into_iter().flatten() {
            if !map.contains_key(key) {
                found.push(format!("{path}: missing required field {}", key.as_str().unwrap_or("?")));
            }
        }
    }
    if let (Some(items), Some(list)) = (schema.get("items"), value.as_sequence()) {
        for (i, inner) in list.iter().enumerate() {
            found.extend(violations(items, inner, &format!("{path}[{i}]")));
        }
    }
    found
}

/// The MPIJob's violations of the vendored CRD's v2beta1 schema (its kind and API version too).
fn mpijob_violations(job: &Value) -> Vec<String> {
    let crd = yaml("cluster/kubeflow/schema/mpijobs.kubeflow.org-v2beta1.yaml");
    let version = crd["spec"]["versions"].as_sequence().unwrap().iter().find(|v| v["name"] == "v2beta1").unwrap();
    let schema = &version["schema"]["openAPIV3Schema"];
    let mut found = Vec::new();
    let api_version = format!("{}/v2beta1", crd["spec"]["group"].as_str().unwrap());
    if job["apiVersion"].as_str() != Some(&api_version) {
        found.push(format!("apiVersion: {:?}, expected {api_version}", job["apiVersion"]));
    }
    if job["kind"] != crd["spec"]["names"]["kind"] {
        found.push(format!("kind: {:?}, expected MPIJob", job["kind"]));
    }
    // apiVersion, kind and metadata are Kubernetes' own, outside the CRD's schema.
    let mut body = job.as_mapping().unwrap().clone();
    for key in ["apiVersion", "kind", "metadata"] {
        body.remove(key);
    }
    found.extend(violations(schema, &Value::Mapping(body), "MPIJob"));
    found
}

#[test]
fn the_mpijob_manifest_fits_the_mpi_operators_v2beta1_schema() {
    let job = yaml("cluster/kubeflow/mpijob.yaml");
    assert_eq!(mpijob_violations(&job), Vec::<String>::new());
    // The check would catch what a cluster refuses: a misspelt field, a value out of its enum.
    let mut broken = job.clone();
    broken["spec"]["slotsPerWorkers"] = Value::from(1);
    broken["spec"]["mpiImplementation"] = Value::from("MPICH2");
    broken["spec"]["mpiReplicaSpecs"]["Launcher"]["replicas"] = Value::from(2);
    let found = mpijob_violations(&broken);
    assert_eq!(found.len(), 3, "{found:?}");
    for wanted in
        ["slotsPerWorkers: unknown field", "\"MPICH2\") is not one of", "Launcher.replicas: 2 is above the maximum 1"]
    {
        assert!(found.iter().any(|f| f.contains(wanted)), "{wanted}: {found:?}");
    }
}

#[test]
fn the_mpijob_pods_run_sshd_and_the_launcher_runs_a_command_micn_launch_accepts() {
    let job = yaml("cluster/kubeflow/mpijob.yaml");
    let specs = &job["spec"]["mpiReplicaSpecs"];
    let container = |role: &str| specs[role]["template"]["spec"]["containers"][0].clone();
    for role in ["Launcher", "Worker"] {
        let c = container(role);
        let image = c["image"].as_str().unwrap();
        // `:latest` (or no tag) makes Kubernetes pull on every start, which fails for a local image.
        assert!(!image.ends_with(":latest") && image.contains(':'), "{role}: image {image}");
        assert_eq!(c["imagePullPolicy"], "IfNotPresent", "{role}");
    }
    assert_eq!(container("Worker")["command"][0], "/usr/sbin/sshd", "workers must serve ssh for mpirun");
    let launcher = container("Launcher");
    assert_eq!(launcher["command"][0], "micn-launch");
    let args: Vec<String> =
        launcher["args"].as_sequence().unwrap().iter().map(|a| a.as_str().unwrap().into()).collect();
    let config = args[args.iter().position(|a| a == "--config").unwrap() + 1].clone();
    let in_repo = config.strip_prefix("/opt/micn/").expect("the image keeps the checkout at /opt/micn");
    assert!(Path::new(env!("CARGO_MANIFEST_DIR")).join(in_repo).is_file(), "{config} is not in the repository");
    // The operator writes the hostfile at start; a stand-in with the workers' slots here.
    let tmp = tempfile::tempdir().unwrap();
    let hostfile = tmp.path().join("hostfile");
    std::fs::write(&hostfile, "micn-worker-0 slots=1\nmicn-worker-1 slots=1\n").unwrap();
    let args: Vec<String> = args
        .into_iter()
        .map(|a| if a == "/etc/mpi/hostfile" { hostfile.display().to_string() } else { a })
        .map(
            |a| if a == config { Path::new(env!("CARGO_MANIFEST_DIR")).join(in_repo).display().to_string() } else { a },
        )
        .collect();
    let out = crate::run_ok(crate::launch::launcher().arg("--dry-run").args(&args));
    let command = String::from_utf8(out.stdout).unwrap();
    assert!(command.starts_with("mpirun -np 2 ") && command.contains(" --hostfile "), "{command}");
    // A launcher pod started again continues the run instead of being refused by it.
    assert!(command.trim_end().ends_with(" --resume auto"), "{command}");
}

#[test]
fn the_image_serves_ssh_as_the_operator_needs_and_builds_from_a_small_context() {
    let containerfile = repo_file("cluster/kubeflow/Containerfile");
    for needed in ["/run/sshd", "StrictModes no", "StrictHostKeyChecking no", "ssh-keygen -A"] {
        assert!(containerfile.contains(needed), "the Containerfile lacks {needed}");
    }
    for ignore in [".containerignore", ".dockerignore"] {
        let listed: Vec<String> =
            repo_file(ignore).lines().map(|l| l.trim().trim_end_matches('/').to_string()).collect();
        for dir in ["target", "data", "runs", ".libtorch"] {
            assert!(listed.iter().any(|l| l == dir), "{ignore} does not leave out {dir}/");
        }
    }
}
