//! Writing checkpoints atomically, and removing the ones retention no longer keeps.
use std::path::{Path, PathBuf};

use super::format::Manifest;
use super::{dir_name, io, policy, CheckpointError, State, FILES, MARKER};

/// Name of the directory a checkpoint is written into before it is renamed into place.
fn partial_dir_name(step: u64) -> String {
    format!(".{}.partial", dir_name(step))
}

/// An unfinished checkpoint's name, or the name of one being removed ([`remove`]).
fn is_leftover_name(p: &Path) -> bool {
    p.file_name()
        .and_then(|n| n.to_str())
        .is_some_and(|n| n.starts_with(".step-") && (n.ends_with(".partial") || n.ends_with(".removed")))
}

/// Remove a checkpoint: renamed to `.step-N.removed` first, so that a kill midway leaves a
/// leftover the next save removes, not a half-deleted `step-N` that nothing would ever remove
/// (without its marker it is no checkpoint, and not retention's to count).
fn remove(dir: &Path) -> Result<(), CheckpointError> {
    let name = dir.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    let doomed = dir.with_file_name(format!(".{name}.removed"));
    discard(&doomed);
    std::fs::rename(dir, &doomed).map_err(io(dir))?;
    std::fs::remove_dir_all(&doomed).map_err(io(&doomed))
}

/// Remove what killed runs left under `root`: checkpoints cut short while written
/// (`.step-N.partial`) or while removed (`.step-N.removed`). Each save starts with it, and so
/// does a run's start, which may save nothing (a resume with nothing left to train).
pub fn remove_leftovers(root: &Path) -> Result<(), CheckpointError> {
    let entries = match std::fs::read_dir(root) {
        // None there, or a file in its place (the run's own error to name).
        Err(e) if e.kind() == std::io::ErrorKind::NotFound || e.raw_os_error() == Some(libc::ENOTDIR) => return Ok(()),
        entries => entries.map_err(io(root))?,
    };
    for stale in entries.filter_map(|e| e.ok().map(|e| e.path())) {
        if is_leftover_name(&stale) {
            tracing::info!(path = %stale.display(), "removing what a killed run left of a checkpoint");
            discard(&stale);
        }
    }
    Ok(())
}

fn sync_dir(dir: &Path) -> Result<(), CheckpointError> {
    std::fs::File::open(dir).and_then(|f| f.sync_all()).map_err(io(dir))
}

/// Remove a directory this module made, when what it holds is of no use; failing to is only
/// logged, since the error that made it useless is the one to report.
fn discard(dir: &Path) {
    if let Err(e) = std::fs::remove_dir_all(dir) {
        if e.kind() != std::io::ErrorKind::NotFound {
            tracing::warn!(path = %dir.display(), error = %e, "cannot remove an unfinished checkpoint");
        }
    }
}

/// Write a checkpoint under `root`. `write_model` and `write_optimizer` write the two tensor
/// files at the paths they are given.
///
/// Everything goes into `.step-….partial` first, which is fsynced, renamed into place and then
/// marked complete. On any failure (a full disk, say) the partial directory is removed, so a
/// failed save leaves no bytes behind; partial directories left by killed runs are removed when
/// the next save starts. Only one process (rank 0) saves into a root at a time.
pub fn save(
    root: &Path,
    state: &State,
    write_model: impl FnOnce(&Path) -> std::io::Result<()>,
    write_optimizer: impl FnOnce(&Path) -> std::io::Result<()>,
) -> Result<PathBuf, CheckpointError> {
    crate::io_error::create_dirs(root)?;
    remove_leftovers(root)?;
    let tmp = root.join(partial_dir_name(state.step));
    let done = root.join(dir_name(state.step));
    std::fs::create_dir(&tmp).map_err(io(&tmp))?;
    if let Err(e) = write_files(&tmp, state, write_model, write_optimizer) {
        discard(&tmp);
        return Err(e);
    }
    if done.exists() {
        // Written again at its step (a stop's checkpoint, scored once the run resumed): the new
        // one, marker and all, takes the old one's place in one atomic exchange, so that a kill
        // at any moment leaves a complete checkpoint there; the old one, swapped out, then goes.
        let marker = tmp.join(MARKER);
        if let Err(e) = write_marker(&tmp).and_then(|()| sync_dir(&tmp)) {
            discard(&tmp);
            return Err(e);
        }
        match crate::io_error::exchange(&tmp, &done) {
            Ok(true) => {
                sync_dir(root)?;
                discard(&tmp);
                return Ok(done);
            }
            // A file system without the exchange (NFS, say): the old one goes first, so that a
            // kill meanwhile leaves no checkpoint at this step (a resume then takes the one
            // before it); the new one is marked once in place, as a first one is.
            Ok(false) => {
                let cleared = std::fs::remove_file(&marker).map_err(io(&marker)).and_then(|()| remove(&done));
                if let Err(e) = cleared {
                    discard(&tmp);
                    return Err(e);
                }
            }
            Err(e) => {
                discard(&tmp);
                return Err(io(&done)(e));
            }
        }
    }
    if let Err(e) = std::fs::rename(&tmp, &done).map_err(io(&done)) {
        discard(&tmp);
        return Err(e);
    }
    let finish = || {
        sync_dir(root)?;
        write_marker(&done)?;
        sync_dir(&done)
    };
    if let Err(e) = finish() {
        // Without its marker the directory would never be loaded; it would only take space.
        discard(&done);
        return Err(e);
    }
    Ok(done)
}

/// Mark the checkpoint in `dir` complete (an empty, fsynced `COMPLETE` file).
fn write_marker(dir: &Path) -> Result<(), CheckpointError> {
    let marker = dir.join(MARKER);
    std::fs::write(&marker, b"").and_then(|_| std::fs::File::open(&marker)?.sync_all()).map_err(io(&marker))
}

/// The tensor files, `state.json` and `manifest.json`, each fsynced, into `dir`.
fn write_files(
    dir: &Path,
    state: &State,
    write_model: impl FnOnce(&Path) -> std::io::Result<()>,
    write_optimizer: impl FnOnce(&Path) -> std::io::Result<()>,
) -> Result<(), CheckpointError> {
    let (model, optimizer) = (dir.join(FILES[0]), dir.join(FILES[1]));
    write_model(&model).map_err(io(&model))?;
    write_optimizer(&optimizer).map_err(io(&optimizer))?;
    let state_path = dir.join(FILES[2]);
    std::fs::write(&state_path, serde_json::to_string_pretty(state).expect("plain data")).map_err(io(&state_path))?;
    let mut manifest = Manifest { files: Vec::new() };
    for f in FILES {
        let path = dir.join(f);
        // Read a piece at a time: the optimizer's file is twice the model's.
        let file_digest = super::format::file_digest(&path).map_err(io(&path))?;
        let file = std::fs::File::open(&path).map_err(io(&path))?;
        file.sync_all().map_err(io(&path))?;
        let len = file.metadata().map_err(io(&path))?.len();
        manifest.files.push((f.to_string(), len, file_digest));
    }
    let manifest_path = dir.join("manifest.json");
    std::fs::write(&manifest_path, serde_json::to_string_pretty(&manifest).expect("plain data"))
        .and_then(|_| std::fs::File::open(&manifest_path)?.sync_all())
        .map_err(io(&manifest_path))
}

/// Remove the checkpoints retention no longer keeps, right after the one at step `written` was
/// saved: of the finished checkpoints (with their marker), all but the newest `keep` and the best
/// one by the AUC of an evaluation made at its own step (see [`policy::to_remove`]), and the stop
/// signals' checkpoints that a later regular one supersedes (below). The one just written is
/// never removed.
///
/// "Newest" follows the line of the checkpoint just written: one with a later step was written by
/// an earlier attempt that this run resumed from before it (after a damaged newest checkpoint, or
/// an explicit `--resume` of an older one), so it ranks after every checkpoint of this line, and
/// goes first. A stop signal's checkpoint, which an uninterrupted run would not have, goes once a
/// later checkpoint that is not a stop's is written, and until then ranks after every other one
/// but the one just written, so that the same checkpoints are kept in the end. Unfinished or
/// foreign entries (no marker, not a `step-N` directory) are not counted and not removed: they are
/// no checkpoint to keep, and not this function's to delete.
pub fn retain(root: &Path, keep: usize, written: u64) -> Result<(), CheckpointError> {
    let state = |dir: &Path| -> Option<State> {
        let text = std::fs::read_to_string(dir.join(FILES[2])).ok()?;
        serde_json::from_str(&text).ok()
    };
    // (directory, step, its own AUC, a stop's)
    let finished: Vec<(PathBuf, u64, Option<f64>, bool)> = super::finished(root)
        .into_iter()
        .filter_map(|dir| {
            let step = super::step_of(&dir)?;
            let state = state(&dir);
            let stopped = state.as_ref().is_some_and(|s| s.stopped);
            Some((dir, step, state.and_then(|s| s.own_auc()), stopped))
        })
        .collect();
    let written_by_stop = finished.iter().any(|&(_, step, _, stopped)| step == written && stopped);
    let (superseded, mut finished): (Vec<_>, Vec<_>) =
        finished.into_iter().partition(|&(_, step, _, stopped)| stopped && step < written && !written_by_stop);
    for (dir, ..) in &superseded {
        remove(dir)?;
    }
    finished
        .sort_by_key(|&(_, step, _, stopped)| (step > written, stopped && step != written, std::cmp::Reverse(step)));
    let aucs: Vec<Option<f64>> = finished.iter().map(|f| f.2).collect();
    for i in policy::to_remove(&aucs, keep) {
        let (dir, step, ..) = &finished[i];
        if *step != written {
            remove(dir)?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::checkpoint::FORMAT_VERSION;

    fn state(step: u64, evaluations: Vec<(u64, f64, f64, f64)>) -> State {
        let config = crate::config::Config::default().to_toml();
        State {
            format_version: FORMAT_VERSION,
            step,
            epoch: 0,
            position: step * 128,
            seed: 1,
            world_size: 1,
            config_hash: super::super::config_hash(&config),
            config,
            code_version: "test".into(),
            evaluations,
            loss_window: None,
            seconds: 0.0,
            dataset: None,
            vocabularies: None,
            stopped: false,
        }
    }

    fn write_bytes(n: usize) -> impl FnOnce(&Path) -> std::io::Result<()> {
        move |p: &Path| std::fs::write(p, vec![7u8; n])
    }

    fn entries(root: &Path) -> Vec<String> {
        let mut names: Vec<String> =
            std::fs::read_dir(root).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect();
        names.sort();
        names
    }

    #[test]
    fn a_save_that_fails_midway_leaves_no_partial_directory() {
        let root = tempfile::tempdir().unwrap();
        save(root.path(), &state(3, vec![]), write_bytes(10), write_bytes(10)).unwrap();
        // The optimizer's writer fails after writing 1 MiB, as on a disk that fills up.
        let failing = |p: &Path| {
            std::fs::write(p, vec![0u8; 1 << 20]).unwrap();
            Err(std::io::Error::from_raw_os_error(libc::ENOSPC))
        };
        let e = save(root.path(), &state(6, vec![]), write_bytes(10), failing).unwrap_err().to_string();
        assert!(e.contains(".step-00000006.partial/optimizer.safetensors") && e.contains("No space"), "{e}");
        assert_eq!(entries(root.path()), ["step-00000003"]);
        super::super::verify(&root.path().join("step-00000003")).unwrap();
        let e = save(root.path(), &state(9, vec![]), |_: &Path| Err(std::io::Error::other("boom")), write_bytes(1))
            .unwrap_err();
        assert!(e.to_string().contains("model.safetensors: boom"), "{e}");
        assert_eq!(entries(root.path()), ["step-00000003"]);
    }

    #[test]
    fn a_checkpoint_written_again_at_its_step_replaces_the_old_one_whole() {
        let root = tempfile::tempdir().unwrap();
        save(root.path(), &state(5, vec![]), write_bytes(10), write_bytes(10)).unwrap();
        // The same step again, now with its own evaluation (a stop's checkpoint, scored later).
        let dir = save(root.path(), &state(5, vec![(5, 0.7, 0.6, 0.5)]), write_bytes(12), write_bytes(12)).unwrap();
        assert_eq!(entries(root.path()), ["step-00000005"]);
        let state = super::super::verify(&dir).unwrap();
        assert_eq!(state.own_auc(), Some(0.7));
        assert_eq!(std::fs::metadata(dir.join(FILES[0])).unwrap().len(), 12);
    }

    #[test]
    fn partial_directories_of_killed_runs_are_removed_by_the_next_save() {
        let root = tempfile::tempdir().unwrap();
        // Two checkpoints a kill left unfinished, and one it left half-removed by retention.
        for stale in [".step-00000004.partial", ".step-00000008.partial", ".step-00000002.removed"] {
            std::fs::create_dir_all(root.path().join(stale)).unwrap();
            std::fs::write(root.path().join(stale).join("model.safetensors"), [0u8; 64]).unwrap();
        }
        // Unrelated entries stay.
        std::fs::write(root.path().join("notes.txt"), "mine").unwrap();
        save(root.path(), &state(9, vec![]), write_bytes(10), write_bytes(10)).unwrap();
        assert_eq!(entries(root.path()), ["notes.txt", "step-00000009"]);
    }

    #[test]
    fn retention_keeps_the_newest_and_the_best_by_an_evaluation_at_its_own_step() {
        let root = tempfile::tempdir().unwrap();
        // Each checkpoint records the evaluations up to its step, its own last (the trainer
        // evaluates before it checkpoints): own AUCs 0.60, 0.75, 0.70 and 0.65 at steps 3 to 12;
        // 15 has none (the final evaluation comes after the last checkpoint). Keeping 2: 15 and
        // 12 as the newest, 6 as the best.
        let evals = [(3, 0.60), (6, 0.75), (9, 0.70), (12, 0.65)];
        for step in [3u64, 6, 9, 12, 15] {
            let history: Vec<_> = evals.iter().filter(|e| e.0 <= step).map(|&(s, a)| (s, a, 0.5, 0.6)).collect();
            save(root.path(), &state(step, history), write_bytes(4), write_bytes(4)).unwrap();
        }
        retain(root.path(), 2, 15).unwrap();
        assert_eq!(entries(root.path()), ["step-00000006", "step-00000012", "step-00000015"]);
    }

    #[test]
    fn a_checkpoint_whose_latest_evaluation_is_older_than_it_is_not_kept_as_best() {
        // Written before its own step's evaluation (issue 13 item 2), step 9's state ends with
        // step 6's AUC of 0.9: the old retention kept 9 as "best" for a score its model never had.
        let root = tempfile::tempdir().unwrap();
        save(root.path(), &state(6, vec![(3, 0.6, 0.5, 0.6)]), write_bytes(4), write_bytes(4)).unwrap();
        save(root.path(), &state(9, vec![(3, 0.6, 0.5, 0.6), (6, 0.9, 0.5, 0.6)]), write_bytes(4), write_bytes(4))
            .unwrap();
        save(root.path(), &state(12, vec![(12, 0.7, 0.5, 0.6)]), write_bytes(4), write_bytes(4)).unwrap();
        retain(root.path(), 1, 12).unwrap();
        assert_eq!(entries(root.path()), ["step-00000012"]);
    }

    #[test]
    fn a_stops_checkpoint_goes_once_a_later_regular_one_is_written() {
        // Every 10 steps, keeping 3; stops at 25 and 26 (no score of their own): 25 makes way for
        // 26 rather than 10, and 26 goes at 30, leaving an uninterrupted run's 10, 20 and 30.
        let root = tempfile::tempdir().unwrap();
        let mut kept = Vec::new();
        for (step, stopped) in [(10, false), (20, false), (25, true), (26, true), (30, false)] {
            let state = State { stopped, ..state(step, vec![]) };
            save(root.path(), &state, write_bytes(4), write_bytes(4)).unwrap();
            retain(root.path(), 3, step).unwrap();
            kept.push(entries(root.path()).len());
        }
        assert_eq!(kept, [1, 2, 3, 3, 3]);
        assert_eq!(entries(root.path()), ["step-00000010", "step-00000020", "step-00000030"]);
    }

    #[test]
    fn retention_never_removes_the_checkpoint_just_written_for_one_an_earlier_attempt_wrote_later() {
        // An earlier attempt wrote steps 4 and 8 and a step 12 that cannot be loaded; the run
        // resumed from 8 and has just written 10. Keeping 1: 10 stays and 12 (another line) goes
        // first, then 8. Unfinished or foreign entries are neither counted nor removed.
        let root = tempfile::tempdir().unwrap();
        for step in [4u64, 8, 12, 10] {
            save(root.path(), &state(step, vec![]), write_bytes(4), write_bytes(4)).unwrap();
        }
        std::fs::write(root.path().join("step-00000012").join("model.safetensors"), [0u8; 1]).unwrap();
        std::fs::create_dir(root.path().join("step-00000099")).unwrap();
        std::fs::write(root.path().join("step-0000zzzz"), "mine").unwrap();
        retain(root.path(), 2, 10).unwrap();
        assert_eq!(entries(root.path()), ["step-00000008", "step-00000010", "step-00000099", "step-0000zzzz"]);
        retain(root.path(), 1, 10).unwrap();
        assert_eq!(entries(root.path()), ["step-00000010", "step-00000099", "step-0000zzzz"]);
        super::super::verify(&root.path().join("step-00000010")).unwrap();
    }
}
