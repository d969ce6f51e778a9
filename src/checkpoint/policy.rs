//! Which checkpoints retention keeps: a pure function of their own evaluations.

/// The index of the best checkpoint, given each checkpoint's AUC from an evaluation made at its
/// own step (see [`State::own_auc`](super::State::own_auc)), newest first: the highest own AUC.
/// One without an evaluation at its own step (or with a non-finite AUC) is never the best, since
/// any other AUC in its history scored an earlier model than the one it holds. Among equal AUCs
/// the newest is the best.
pub fn best(own_auc_newest_first: &[Option<f64>]) -> Option<usize> {
    let mut best: Option<(usize, f64)> = None;
    for (i, auc) in own_auc_newest_first.iter().enumerate() {
        if let Some(auc) = auc.filter(|a| a.is_finite()) {
            if best.is_none_or(|(_, b)| auc > b) {
                best = Some((i, auc));
            }
        }
    }
    best.map(|(i, _)| i)
}

/// The indices of the checkpoints to remove, given their own AUCs newest first (see [`best`]):
/// every one past the newest `keep`, except the best.
pub fn to_remove(own_auc_newest_first: &[Option<f64>], keep: usize) -> Vec<usize> {
    let best = best(own_auc_newest_first);
    (keep..own_auc_newest_first.len()).filter(|&i| Some(i) != best).collect()
}

#[cfg(test)]
mod tests {
    use super::to_remove;

    #[test]
    fn the_newest_are_kept_and_the_rest_removed() {
        assert_eq!(to_remove(&[None, None, None, None], 2), [2, 3]);
        assert_eq!(to_remove(&[None, None], 3), Vec::<usize>::new());
    }

    #[test]
    fn the_best_by_own_auc_is_kept_however_old() {
        // Newest first: steps 15, 12, 9, 6, 3 with own AUCs; 6 has the best (0.71).
        let aucs = [None, Some(0.69), Some(0.70), Some(0.71), Some(0.65)];
        assert_eq!(to_remove(&aucs, 2), [2, 4]);
    }

    #[test]
    fn a_checkpoint_without_an_evaluation_at_its_own_step_is_never_the_best() {
        // Issue 13 item 2: ranked by the latest evaluation in its history, the checkpoint at
        // step 9 (whose state recorded step 6's AUC of 0.9) was kept as the best though its own
        // model was never scored. With own AUCs only, step 3's 0.6 is the best.
        let aucs = [Some(0.5), None, None, Some(0.6)];
        assert_eq!(to_remove(&aucs, 1), [1, 2]);
        assert_eq!(to_remove(&[None, None, Some(f64::NAN)], 1), [1, 2]);
    }

    #[test]
    fn among_equal_aucs_the_newest_is_the_best() {
        assert_eq!(to_remove(&[None, Some(0.7), Some(0.7)], 1), [2]);
    }
}
