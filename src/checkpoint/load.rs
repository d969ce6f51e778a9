//! Reading checkpoints back: [`verify`] (marker, checksums and the meaning of `state.json`),
//! [`latest`] for `--resume auto`, and loaders that check a tensor file against the tensors it
//! must fill before anything reaches libtorch.
use std::collections::HashMap;
use std::path::{Path, PathBuf};

use tch::nn::VarStore;
use tch::{Kind, Tensor};

use super::format::{Manifest, SafetensorsLayout};
use super::{io, CheckpointError, State, FILES, FORMAT_VERSION, MARKER};
use crate::config::Config;
use crate::io_error::PathIo;

/// Check that `dir` is a finished, undamaged checkpoint whose state makes sense; returns the
/// state.
///
/// In order: the directory exists, the completion marker is there, every file's size and
/// checksum match the manifest, and `state.json` parses, has this micn's format version, a
/// config hash equal to the hash of its config, a config that passes
/// [`Config`]'s validation, and a step, epoch and position that training with that config can
/// reach (see [`check_state`]).
pub fn verify(dir: &Path) -> Result<State, CheckpointError> {
    use std::os::unix::fs::MetadataExt as _;
    // A checkpoint written again at its step is swapped in whole ([`super::save`]): a check that
    // began on the earlier one and read on into the new one would find their files disagree. A
    // check during which another directory took the name is made again.
    let identity = |dir: &Path| std::fs::metadata(dir).ok().map(|m| (m.dev(), m.ino()));
    for _ in 0..3 {
        let before = identity(dir);
        let verified = verify_once(dir);
        if verified.is_ok() || identity(dir) == before {
            return verified;
        }
    }
    verify_once(dir)
}

/// [`verify`] for a command that reads a checkpoint while a run may be writing it (`eval`,
/// `predict`, `checkpoint verify`): one not finished yet while a process of this machine trains
/// into its run is said to be so, an error that passes (exit status 1), not a damaged one.
/// One that the run's retention removes while it is checked is said to be so.
pub fn verify_reading(dir: &Path) -> Result<State, CheckpointError> {
    let existed = dir.is_dir();
    let verified = verify(dir);
    if verified.is_err() && existed && !dir.exists() {
        return Err(CheckpointError::Removed { path: dir.to_path_buf() });
    }
    if verified.is_err() && dir.is_dir() && !dir.join(MARKER).is_file() {
        // Its run is found from where it is, whatever path names it (a link, `.`).
        let run = std::fs::canonicalize(dir).ok().and_then(|dir| Some(dir.parent()?.parent()?.to_path_buf()));
        if let Some(holder) = run.and_then(|run| crate::run_dir::RunDir::new(&run).writer()) {
            return Err(CheckpointError::BeingWritten { path: dir.to_path_buf(), holder });
        }
    }
    verified
}

fn verify_once(dir: &Path) -> Result<State, CheckpointError> {
    let invalid = |message: String| CheckpointError::Invalid { path: dir.to_path_buf(), message };
    match std::fs::metadata(dir) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Err(CheckpointError::NotFound { path: dir.to_path_buf() })
        }
        // Another user's directory that cannot be looked into, say: named as it is.
        Err(e) => return Err(io(dir)(e)),
        Ok(m) if m.is_dir() => {
            std::fs::read_dir(dir).map_err(io(dir))?;
        }
        Ok(_) => {}
    }
    if !dir.is_dir() {
        return Err(invalid("not a directory (a checkpoint is a directory `step-…`)".into()));
    }
    // The marker is a file (`finished` counts only those).
    if !dir.join(MARKER).is_file() {
        if !dir.join("manifest.json").exists() && !dir.join(FILES[2]).exists() {
            return Err(invalid(
                "not a checkpoint: no state.json, manifest.json or completion marker (a checkpoint is a directory \
                 run.dir/checkpoints/step-N)"
                    .into(),
            ));
        }
        return Err(invalid("no completion marker: the checkpoint was not finished".into()));
    }
    let manifest_path = dir.join("manifest.json");
    let text = std::fs::read_to_string(&manifest_path).map_err(io(&manifest_path))?;
    let manifest: Manifest = serde_json::from_str(&text).map_err(|e| invalid(format!("manifest.json: {e}")))?;
    // A checkpoint holds exactly its files: the manifest of anything else (an edited or foreign
    // one) is not this checkpoint's.
    if let Some((name, ..)) = manifest.files.iter().find(|(n, ..)| !FILES.contains(&n.as_str())) {
        return Err(invalid(format!("manifest.json lists {name:?}, which is not a checkpoint file")));
    }
    if let Some(twice) = FILES.iter().find(|f| manifest.files.iter().filter(|(n, ..)| n == *f).count() > 1) {
        return Err(invalid(format!("manifest.json lists {twice:?} twice")));
    }
    for f in FILES {
        let entry = manifest
            .files
            .iter()
            .find(|(n, ..)| n == f)
            .ok_or_else(|| invalid(format!("{f} is not in the manifest")))?;
        let path = dir.join(f);
        // Streamed: a model file of gigabytes is not held in memory to be checked.
        let bytes = std::fs::metadata(&path).map_err(io(&path))?.len();
        if bytes != entry.1 || super::format::file_digest(&path).map_err(io(&path))? != entry.2 {
            return Err(invalid(format!("{f}: size or checksum differs from the manifest (damaged)")));
        }
    }
    let state_path = dir.join(FILES[2]);
    let state: State = serde_json::from_str(&std::fs::read_to_string(&state_path).map_err(io(&state_path))?)
        .map_err(|e| invalid(format!("state.json: {e}")))?;
    if state.format_version != FORMAT_VERSION {
        return Err(invalid(format!("format version {} (this micn reads {FORMAT_VERSION})", state.format_version)));
    }
    let hash = super::config_hash(&state.config);
    if state.config_hash != hash {
        return Err(invalid(format!(
            "state.json: config_hash {} is not the hash of its config ({hash}): the state was edited or damaged",
            state.config_hash
        )));
    }
    let config = Config::from_toml(&state.config, &state_path)?;
    check_state(&state, &config).map_err(|why| invalid(format!("state.json: {why}")))?;
    // Resume orders checkpoints, and sets later ones aside, by the step their name gives.
    if let Some(named) = step_of(dir).filter(|&named| named != state.step) {
        return Err(invalid(format!(
            "named for step {named}, but state.json holds step {} (renamed?): name it {}",
            state.step,
            super::dir_name(state.step)
        )));
    }
    Ok(state)
}

/// Steps one epoch can have at most with `global_batch` samples a step: sample indices are u32,
/// so an epoch holds at most 2³² samples.
fn max_steps_per_epoch(global_batch: u64) -> u64 {
    (1u64 << 32).div_ceil(global_batch)
}

/// Whether `state` is one training with `config` (the checkpoint's own) can have written:
///
/// - the world size is at least 1 and divides the global batch (each rank takes an equal share);
/// - the seed is the config's;
/// - the position is a whole number of global batches, at most one epoch's worth;
/// - the epoch is at most `train.epochs`;
/// - `step` lies between `epoch + position/batch` (each finished epoch took at least one step)
///   and `epoch · S + position/batch` with S the most steps an epoch can have (2³² samples),
///   and within `train.max_steps`;
/// - every recorded evaluation was made at or before `step`, with an AUC in [0, 1].
///
/// Returns why not.
pub fn check_state(state: &State, config: &Config) -> Result<(), String> {
    let batch = config.train.global_batch_size as u64;
    let (step, epoch, position) = (state.step, state.epoch, state.position);
    if state.world_size == 0 || batch % state.world_size as u64 != 0 {
        return Err(format!("world size {} does not divide the global batch of {batch}", state.world_size));
    }
    if state.seed != config.train.seed {
        return Err(format!("seed {} differs from its config's train.seed = {}", state.seed, config.train.seed));
    }
    let per_epoch = max_steps_per_epoch(batch);
    if position % batch != 0 || position / batch > per_epoch {
        return Err(format!(
            "position {position} is not a whole number of global batches of {batch} within one epoch (at most \
             {per_epoch} of them)"
        ));
    }
    let into_epoch = position / batch;
    if epoch > config.train.epochs as u64 {
        return Err(format!("epoch {epoch} is past its config's train.epochs = {}", config.train.epochs));
    }
    let (low, high) = (epoch as u128 + into_epoch as u128, epoch as u128 * per_epoch as u128 + into_epoch as u128);
    if (step as u128) < low || step as u128 > high {
        return Err(format!(
            "step {step} cannot be reached: epoch {epoch} and {into_epoch} batches into it allow {low} to {high} steps \
             (at most {per_epoch} steps an epoch of ≤ 2^32 samples)"
        ));
    }
    if let Some(max) = config.train.max_steps.filter(|&max| step > max) {
        return Err(format!("step {step} is past its config's train.max_steps = {max}"));
    }
    for &(at, auc, _, _) in &state.evaluations {
        if at > step || !(0.0..=1.0).contains(&auc) {
            return Err(format!("an evaluation at step {at} with AUC {auc} (the checkpoint is at step {step})"));
        }
    }
    // Wall-clock time so far: at most a century.
    if !(0.0..=3.2e9).contains(&state.seconds) {
        return Err(format!("{} seconds of training is not a time a run can have taken", state.seconds));
    }
    Ok(())
}

/// Checkpoint directories (`step-…`) under `root`, newest first, finished or not.
pub fn list(root: &Path) -> Vec<PathBuf> {
    let mut dirs: Vec<PathBuf> = std::fs::read_dir(root)
        .map(|rd| rd.filter_map(|e| e.ok().map(|e| e.path())).filter(|p| is_checkpoint_name(p)).collect())
        .unwrap_or_default();
    dirs.sort();
    dirs.reverse();
    dirs
}

/// The checkpoint directories under `root` that were finished (their completion marker written),
/// newest first, whether or not their files verify.
pub fn finished(root: &Path) -> Vec<PathBuf> {
    list(root).into_iter().filter(|dir| dir.join(MARKER).is_file()).collect()
}

fn is_checkpoint_name(p: &Path) -> bool {
    p.file_name().and_then(|n| n.to_str()).is_some_and(|n| n.starts_with("step-"))
}

/// The step of a checkpoint directory's name (`step-00000042` → 42); `None` for other names.
pub fn step_of(p: &Path) -> Option<u64> {
    let digits = p.file_name()?.to_str()?.strip_prefix("step-")?;
    digits.bytes().all(|b| b.is_ascii_digit()).then(|| digits.parse().ok()).flatten()
}

/// The newest checkpoint that verifies; the refused ones with their reasons.
pub fn latest(root: &Path) -> (Option<(PathBuf, State)>, Vec<CheckpointError>) {
    let mut refused = Vec::new();
    for dir in list(root) {
        match verify(&dir) {
            Ok(state) => return (Some((dir, state)), refused),
            Err(e) => refused.push(e),
        }
    }
    (None, refused)
}

/// The safetensors dtype name of a libtorch kind, as `Tensor::write_safetensors` writes it.
fn dtype_name(kind: Kind) -> Option<&'static str> {
    Some(match kind {
        Kind::Bool => "BOOL",
        Kind::Uint8 => "U8",
        Kind::Int8 => "I8",
        Kind::Int16 => "I16",
        Kind::Int => "I32",
        Kind::Int64 => "I64",
        Kind::BFloat16 => "BF16",
        Kind::Half => "F16",
        Kind::Float => "F32",
        Kind::Double => "F64",
        _ => return None,
    })
}

/// Write `tensors` (name, tensor) as a safetensors file, readable by PyTorch's `safetensors`, by
/// tch and by [`load_tensors_like`], tensor by tensor without a copy of the whole model. Unlike
/// tch's writer it reports plain I/O errors ("No space left on device (os error 28)").
pub fn write_tensors(path: &Path, tensors: &[(String, Tensor)]) -> std::io::Result<()> {
    use std::io::Write as _;
    let mut order: Vec<&(String, Tensor)> = tensors.iter().collect();
    order.sort_by(|a, b| a.0.cmp(&b.0));
    let mut header = serde_json::Map::new();
    let mut offset = 0usize;
    for (name, t) in &order {
        let kind = t.kind();
        let dtype = dtype_name(kind).ok_or_else(|| {
            std::io::Error::new(std::io::ErrorKind::InvalidInput, format!("tensor `{name}`: {kind:?} cannot be stored"))
        })?;
        let bytes = t.numel() * kind.elt_size_in_bytes();
        let entry = serde_json::json!({ "dtype": dtype, "shape": t.size(), "data_offsets": [offset, offset + bytes] });
        header.insert(name.clone(), entry);
        offset += bytes;
    }
    // The header is padded with spaces to a multiple of 8 bytes, as the safetensors crate does.
    let mut head = serde_json::to_vec(&header).map_err(std::io::Error::other)?;
    head.resize(head.len().next_multiple_of(8), b' ');
    let mut file = std::io::BufWriter::new(std::fs::File::create(path)?);
    file.write_all(&(head.len() as u64).to_le_bytes())?;
    file.write_all(&head)?;
    let mut buffer = Vec::new();
    for (_, t) in order {
        let t = t.to_device(tch::Device::Cpu).contiguous();
        buffer.resize(t.numel() * t.kind().elt_size_in_bytes(), 0);
        t.f_copy_data_u8(&mut buffer, t.numel()).map_err(std::io::Error::other)?;
        file.write_all(&buffer)?;
    }
    file.into_inner().map_err(|e| e.into_error())?.sync_all()
}

/// Read the safetensors file `path`, requiring exactly the tensors of `like`, each with the
/// dtype and shape of its namesake there; returns them by name, on the CPU.
///
/// `like` is typically the tensors about to be overwritten: a var store's variables, or the
/// optimizer's `named_state`. A missing, extra, relabelled or reshaped tensor is an error naming
/// the file and the tensor, found before any byte reaches libtorch.
pub fn load_tensors_like<'a>(
    path: &Path,
    like: impl IntoIterator<Item = (String, &'a Tensor)>,
) -> Result<HashMap<String, Tensor>, CheckpointError> {
    let (bytes, layout) = read_layout(path)?;
    let tensor_error = |tensor: &str, message: String| CheckpointError::Tensor {
        path: path.to_path_buf(),
        tensor: tensor.to_string(),
        message,
    };
    let mut out = HashMap::new();
    for (name, target) in like {
        let header = layout.tensors.get(&name).ok_or_else(|| tensor_error(&name, "missing from the file".into()))?;
        let kind = target.kind();
        let expected = dtype_name(kind).ok_or_else(|| tensor_error(&name, format!("{kind:?} cannot be stored")))?;
        if header.dtype != expected {
            return Err(tensor_error(&name, format!("stored as {}, expected {expected}", header.dtype)));
        }
        let shape: Vec<i64> = target.size();
        if header.shape.len() != shape.len() || header.shape.iter().zip(&shape).any(|(&a, &b)| a as i64 != b) {
            return Err(tensor_error(&name, format!("stored with shape {:?}, expected {shape:?}", header.shape)));
        }
        let tensor = Tensor::f_from_data_size(layout.data(&bytes, header), &shape, kind)
            .map_err(|e| torch_failure(path, &name, e))?;
        out.insert(name, tensor);
    }
    if let Some(extra) = layout.tensors.keys().find(|name| !out.contains_key(*name)) {
        return Err(tensor_error(extra, "is in the file but not in the model it is loaded into".into()));
    }
    Ok(out)
}

/// The bytes of the safetensors file `path` and its parsed header.
fn read_layout(path: &Path) -> Result<(Vec<u8>, SafetensorsLayout), CheckpointError> {
    // Read whole: a device or a pipe (`/dev/zero` by mistake) could fill memory first.
    if !std::fs::metadata(path).map_err(io(path))?.is_file() {
        let message = "not a regular file (a device, a pipe or a directory): a safetensors file is read whole".into();
        return Err(CheckpointError::Invalid { path: path.into(), message });
    }
    let bytes = crate::oom::fallible(|| std::fs::read(path)).map_err(io(path))?;
    let layout =
        SafetensorsLayout::parse(&bytes).map_err(|message| CheckpointError::Invalid { path: path.into(), message })?;
    Ok((bytes, layout))
}

/// Every f32 tensor of the safetensors file `path`, by name, on the CPU (for files micn writes
/// itself beside its models, such as MFN's pretrained centres); another dtype is an error naming
/// the tensor.
pub fn read_tensors(path: &Path) -> Result<HashMap<String, Tensor>, CheckpointError> {
    read_tensors_where(path, |_| true)
}

/// [`read_tensors`] of the tensors whose names `wanted` accepts (those of them the file holds).
pub fn read_tensors_where(
    path: &Path,
    wanted: impl Fn(&str) -> bool,
) -> Result<HashMap<String, Tensor>, CheckpointError> {
    let (bytes, layout) = read_layout(path)?;
    let mut out = HashMap::new();
    for (name, header) in layout.tensors.iter().filter(|(name, _)| wanted(name)) {
        let tensor_error =
            |message: String| CheckpointError::Tensor { path: path.to_path_buf(), tensor: name.clone(), message };
        if header.dtype != "F32" {
            return Err(tensor_error(format!("stored as {}, expected F32", header.dtype)));
        }
        let shape: Vec<i64> = header.shape.iter().map(|&d| d as i64).collect();
        let tensor = Tensor::f_from_data_size(layout.data(&bytes, header), &shape, Kind::Float)
            .map_err(|e| torch_failure(path, name, e))?;
        out.insert(name.clone(), tensor);
    }
    Ok(out)
}

/// Load `model.safetensors` (or any file `VarStore::save` wrote) into `vs`, checking first that
/// it holds exactly the store's variables with their dtypes and shapes (see
/// [`load_tensors_like`]). Use instead of `VarStore::load`, which adopts a relabelled tensor's
/// dtype and so panics later inside libtorch.
pub fn load_var_store(vs: &mut VarStore, path: &Path) -> Result<(), CheckpointError> {
    // By name, so that a file of another model is refused naming the same tensor every time.
    let variables: std::collections::BTreeMap<String, Tensor> = vs.variables().into_iter().collect();
    let saved = load_tensors_like(path, variables.iter().map(|(name, t)| (name.clone(), t)))?;
    for (name, mut variable) in variables {
        let source = &saved[&name];
        tch::no_grad(|| variable.f_copy_(source)).map_err(|e| torch_failure(path, &name, e))?;
    }
    Ok(())
}

/// libtorch failed on tensor `name` of the file `path`: where an allocation failed, an I/O error
/// of that kind (the file is fine, the memory short: see [`crate::oom`]) quoting libtorch's
/// sentence without its backtrace; else a [`CheckpointError::Tensor`].
fn torch_failure(path: &Path, name: &str, e: tch::TchError) -> CheckpointError {
    let message = e.to_string();
    match crate::oom::libtorch_sentence(&message) {
        Some(sentence) => {
            let source = std::io::Error::new(std::io::ErrorKind::OutOfMemory, format!("tensor `{name}`: {sentence}"));
            CheckpointError::Io(PathIo { path: path.to_path_buf(), source })
        }
        None => CheckpointError::Tensor { path: path.to_path_buf(), tensor: name.to_string(), message },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::checkpoint::format::tests::file;

    #[test]
    fn written_tensors_read_back_bit_for_bit_through_tch_and_the_checked_loader() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t.safetensors");
        let tensors = vec![
            ("b.weight".to_string(), Tensor::from_slice(&[1.5f32, -2.0, 3.25, 0.0, 7.0, -0.125]).view([2, 3])),
            ("a.steps".to_string(), Tensor::from_slice(&[7i64, 9])),
            ("c.scalar".to_string(), Tensor::from_slice(&[0.5f64]).view([])),
        ];
        write_tensors(&path, &tensors).unwrap();
        let by_tch: HashMap<String, Tensor> = Tensor::read_safetensors(&path).unwrap().into_iter().collect();
        let checked = load_tensors_like(&path, tensors.iter().map(|(n, t)| (n.clone(), t))).unwrap();
        for (name, t) in &tensors {
            assert!(by_tch[name].equal(t) && checked[name].equal(t), "{name}");
        }
        // The header is a multiple of 8 bytes, as the safetensors crate writes it.
        let bytes = std::fs::read(&path).unwrap();
        assert_eq!(u64::from_le_bytes(bytes[..8].try_into().unwrap()) % 8, 0);
    }

    #[test]
    fn a_full_disk_is_reported_as_the_plain_os_error() {
        // /dev/full fails every write with ENOSPC.
        let big = vec![("x".to_string(), Tensor::zeros([1 << 16], (tch::Kind::Float, tch::Device::Cpu)))];
        let e = write_tensors(Path::new("/dev/full"), &big).unwrap_err().to_string();
        assert_eq!(e, "No space left on device (os error 28)");
    }

    fn state(config: &Config, step: u64, epoch: u64, position: u64) -> State {
        let text = config.to_toml();
        State {
            format_version: FORMAT_VERSION,
            step,
            epoch,
            position,
            seed: config.train.seed,
            world_size: 2,
            config_hash: super::super::config_hash(&text),
            config: text,
            code_version: "test".into(),
            evaluations: vec![],
            loss_window: None,
            seconds: 0.0,
            dataset: None,
            vocabularies: None,
            stopped: false,
        }
    }

    #[test]
    fn states_the_trainer_writes_are_plausible() {
        // Global batch 128, 2 epochs, 100 steps an epoch: mid-epoch 0 after 3 steps; the end of
        // epoch 0 saved in the loop and after it; 5 steps into epoch 1; the end of the run.
        let c = Config::default();
        for (step, epoch, position) in [(3, 0, 384), (100, 0, 12_800), (100, 1, 0), (105, 1, 640), (200, 2, 0)] {
            check_state(&state(&c, step, epoch, position), &c).unwrap_or_else(|e| panic!("{step}: {e}"));
        }
    }

    #[test]
    fn impossible_steps_positions_epochs_and_world_sizes_are_named() {
        let c = Config::default();
        let cases: [(State, &str); 7] = [
            // Issue 13: step 10^15 passed verify, then `--resume auto` failed instead of falling back.
            (state(&c, 1_000_000_000_000_000, 0, 384), "step 1000000000000000 cannot be reached"),
            // 2^32 samples / 128 = 33554432 steps an epoch at most: one epoch plus 3 allows 33554435.
            (state(&c, 33_554_436, 1, 384), "allow 4 to 33554435 steps"),
            (state(&c, 2, 0, 384), "step 2 cannot be reached"),
            (State { world_size: 0, ..state(&c, 3, 0, 384) }, "world size 0"),
            (State { world_size: 3, ..state(&c, 3, 0, 384) }, "world size 3 does not divide"),
            (state(&c, 3, 0, 100), "position 100"),
            (state(&c, 300, 3, 0), "epoch 3 is past"),
        ];
        for (s, want) in cases {
            let e = check_state(&s, &c).unwrap_err();
            assert!(e.contains(want), "{e}");
        }
        let capped =
            Config { train: crate::config::TrainConfig { max_steps: Some(5), ..Default::default() }, ..c.clone() };
        assert!(check_state(&state(&capped, 6, 0, 768), &capped).unwrap_err().contains("train.max_steps = 5"));
        let late = State { evaluations: vec![(4, 0.7, 0.6, 0.5)], ..state(&c, 3, 0, 384) };
        assert!(check_state(&late, &c).unwrap_err().contains("evaluation at step 4"));
        let other_seed = State { seed: 2, ..state(&c, 3, 0, 384) };
        assert!(check_state(&other_seed, &c).unwrap_err().contains("seed 2"));
        for seconds in [-5.0, 1.7e308, f64::NAN] {
            let odd = State { seconds, ..state(&c, 3, 0, 384) };
            assert!(check_state(&odd, &c).unwrap_err().contains("seconds of training"), "{seconds}");
        }
    }

    #[test]
    fn a_relabelled_tensor_is_refused_by_name_before_reaching_libtorch() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("model.safetensors");
        let like = Tensor::zeros([2], (Kind::Float, tch::Device::Cpu));
        // The same 8 bytes relabelled from F32 to I32: the layout is valid, the dtype is not.
        std::fs::write(&path, file(&[("w", "I32", &[2], &[0; 8])])).unwrap();
        let e = load_tensors_like(&path, [("w".to_string(), &like)]).unwrap_err().to_string();
        assert!(e.contains("model.safetensors") && e.contains("`w`") && e.contains("stored as I32, expected F32"));
        std::fs::write(&path, file(&[("w", "F32", &[1, 2], &[0; 8])])).unwrap();
        let e = load_tensors_like(&path, [("w".to_string(), &like)]).unwrap_err().to_string();
        assert!(e.contains("`w`") && e.contains("shape [1, 2], expected [2]"), "{e}");
        std::fs::write(&path, file(&[("w", "F32", &[2], &[0; 8]), ("x", "F32", &[0], &[])])).unwrap();
        let e = load_tensors_like(&path, [("w".to_string(), &like)]).unwrap_err().to_string();
        assert!(e.contains("`x`") && e.contains("not in the model"), "{e}");
        let e = load_tensors_like(&path, [("v".to_string(), &like)]).unwrap_err().to_string();
        assert!(e.contains("`v`") && e.contains("missing"), "{e}");
    }

    #[test]
    fn a_var_store_round_trips_through_the_checked_loader_bit_for_bit() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("model.safetensors");
        let vs = VarStore::new(tch::Device::Cpu);
        let w = vs.root().randn("w", &[3, 2], 0.0, 1.0);
        let n = vs.root().zeros_no_train("n", &[4]);
        vs.save(&path).unwrap();
        let mut other = VarStore::new(tch::Device::Cpu);
        let w2 = other.root().zeros("w", &[3, 2]);
        let n2 = other.root().ones_no_train("n", &[4]);
        load_var_store(&mut other, &path).unwrap();
        assert!(w2.equal(&w) && n2.equal(&n));
        assert!(w2.requires_grad(), "loading keeps the variable trainable");
    }
}
