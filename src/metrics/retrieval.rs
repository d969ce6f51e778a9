//! Retrieval metrics of multi-interest models as ComiRec (Cen et al., KDD 2020) computes them in
//! its evaluation code (`evaluate_full`): each of a user's interests retrieves its top N items by
//! inner product over the whole item set; the `(item, score)` pairs of all interests are merged
//! by descending score, each item kept once, into the user's top N. Then, with `truth` the
//! user's held-out items in time order (repeats counted as often as they occur) and `hits` the
//! entries of `truth` that are among the recommended items:
//!
//! - recall@N = `hits / |truth|`;
//! - HR@N (hit rate) = 1 when `hits > 0`;
//! - NDCG@N, ComiRec's (`ndcg_comirec`) = `Σ_{hit at position p of truth} 1/log₂(p + 2) /
//!   Σ_{p < hits} 1/log₂(p + 2)`: ComiRec's code takes the positions in the held-out list, not
//!   in the ranking (its recommendations are a set), so it measures whether the *earliest*
//!   held-out items were found, and with one held-out item it equals the hit rate. Reported so
//!   that figures compare with ComiRec's tables;
//! - NDCG@N, the usual one (`ndcg`) = `Σ_{recommended position p holds a held-out item}
//!   1/log₂(p + 2) / Σ_{p < min(|distinct truth|, N)} 1/log₂(p + 2)`: the ranking's quality;
//!
//! each averaged over users (a user without hits counts 0 in all of them).

/// The mean recall, hit rate and both NDCGs at one N over users.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize)]
pub struct RetrievalMetrics {
    pub n: usize,
    pub recall: f64,
    pub hit_rate: f64,
    pub ndcg: f64,
    pub ndcg_comirec: f64,
    pub users: u64,
}

/// One user's values at one N.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct UserMetrics {
    pub recall: f64,
    pub hit: bool,
    pub ndcg: f64,
    pub ndcg_comirec: f64,
}

/// A user's top `n` from each interest's retrieved `(item, score)` pairs: by descending score
/// (ties by ascending item id), each item once, the first `n`.
pub fn merge_top_n(per_interest: &[Vec<(u32, f32)>], n: usize) -> Vec<u32> {
    let mut pairs: Vec<(u32, f32)> = per_interest.iter().flatten().copied().collect();
    pairs.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
    let mut seen = std::collections::HashSet::new();
    pairs.into_iter().map(|(item, _)| item).filter(|item| seen.insert(*item)).take(n).collect()
}

/// `1/log₂(p + 2)`: the gain of position `p` (from 0).
fn gain(p: usize) -> f64 {
    1.0 / ((p + 2) as f64).log2()
}

/// One user's values for the recommended list `recommended` (its first `n`) against the
/// held-out items `truth` (an empty `truth` counts as no hit).
pub fn user_metrics(recommended: &[u32], truth: &[u32], n: usize) -> UserMetrics {
    use std::collections::HashSet;
    let recommended = &recommended[..recommended.len().min(n)];
    let found: HashSet<u32> = recommended.iter().copied().collect();
    let hit_positions: Vec<usize> = (0..truth.len()).filter(|&p| found.contains(&truth[p])).collect();
    let hits = hit_positions.len();
    if hits == 0 {
        return UserMetrics { recall: 0.0, hit: false, ndcg: 0.0, ndcg_comirec: 0.0 };
    }
    let ideal = |count: usize| (0..count).map(gain).sum::<f64>();
    let ndcg_comirec = hit_positions.iter().map(|&p| gain(p)).sum::<f64>() / ideal(hits);
    let distinct: HashSet<u32> = truth.iter().copied().collect();
    let dcg: f64 = (0..recommended.len()).filter(|&p| distinct.contains(&recommended[p])).map(gain).sum();
    let ndcg = dcg / ideal(distinct.len().min(n));
    UserMetrics { recall: hits as f64 / truth.len() as f64, hit: true, ndcg, ndcg_comirec }
}

/// The metrics at `n` over users, each given as (its merged top list, its held-out items); the
/// lists may be longer than `n` (they are cut).
pub fn retrieval_metrics<'a>(users: impl IntoIterator<Item = (&'a [u32], &'a [u32])>, n: usize) -> RetrievalMetrics {
    let mut sum = RetrievalMetrics { n, recall: 0.0, hit_rate: 0.0, ndcg: 0.0, ndcg_comirec: 0.0, users: 0 };
    for (recommended, truth) in users {
        let m = user_metrics(recommended, truth, n);
        sum.recall += m.recall;
        sum.hit_rate += f64::from(u8::from(m.hit));
        sum.ndcg += m.ndcg;
        sum.ndcg_comirec += m.ndcg_comirec;
        sum.users += 1;
    }
    let count = sum.users.max(1) as f64;
    RetrievalMetrics {
        recall: sum.recall / count,
        hit_rate: sum.hit_rate / count,
        ndcg: sum.ndcg / count,
        ndcg_comirec: sum.ndcg_comirec / count,
        ..sum
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn interests_merge_by_score_keeping_each_item_once() {
        // Interest 0 found 7 (0.9), 3 (0.5), 5 (0.1); interest 1 found 3 (0.8), 9 (0.6), 7 (0.2).
        let lists = vec![vec![(7, 0.9), (3, 0.5), (5, 0.1)], vec![(3, 0.8), (9, 0.6), (7, 0.2)]];
        assert_eq!(merge_top_n(&lists, 3), [7, 3, 9]);
        assert_eq!(merge_top_n(&lists, 10), [7, 3, 9, 5], "each item once");
        // Equal scores: the lower id first.
        assert_eq!(merge_top_n(&[vec![(4, 1.0), (2, 1.0)]], 2), [2, 4]);
    }

    #[test]
    fn per_user_values_follow_comirec_s_definitions_and_the_usual_ndcg() {
        // Recommended [1, 5, 2, 8]; held out, in time order, [2, 1, 4]: 2 and 1 found.
        // recall 2/3. ComiRec's NDCG by positions in the held-out list (0 and 1): both found
        // first, so 1. The usual NDCG by the ranking: hits at 0 and 2, DCG 1 + 1/log₂4 = 1.5,
        // ideal for 3 held-out items 1 + 1/log₂3 + 1/log₂4 = 2.130930: 0.703918.
        let m = user_metrics(&[1, 5, 2, 8], &[2, 1, 4], 10);
        assert!((m.recall - 2.0 / 3.0).abs() < 1e-12 && m.hit);
        assert!((m.ndcg_comirec - 1.0).abs() < 1e-12, "{m:?}");
        assert!((m.ndcg - 1.5 / (1.5 + 1.0 / 3f64.log2())).abs() < 1e-12, "{m:?}");
        assert!((m.ndcg - 0.703_918).abs() < 1e-6);
        // Held out [4, 1, 2]: found at positions 1 and 2 of it: ComiRec's NDCG
        // (1/log₂3 + 1/log₂4) / (1 + 1/log₂3) = 0.693426; the ranking's is unchanged.
        let m = user_metrics(&[1, 5, 2, 8], &[4, 1, 2], 10);
        assert!((m.ndcg_comirec - 0.693_426).abs() < 1e-6, "{m:?}");
        assert!((m.ndcg - 0.703_918).abs() < 1e-6);
        // The list is cut at n: at n = 2 only 1 is found (ranked first, one of 2 ideal slots).
        let m = user_metrics(&[1, 5, 2, 8], &[2, 1, 4], 2);
        assert!((m.recall - 1.0 / 3.0).abs() < 1e-12);
        assert!((m.ndcg - 1.0 / (1.0 + 1.0 / 3f64.log2())).abs() < 1e-12, "{m:?}");
        assert!((m.ndcg_comirec - 1.0 / 3f64.log2()).abs() < 1e-12, "found at held-out position 1: {m:?}");
        // One held-out item found third: the usual NDCG 1/log₂4 = 0.5; ComiRec's equals the hit.
        assert_eq!(
            user_metrics(&[9, 8, 3], &[3], 10),
            UserMetrics { recall: 1.0, hit: true, ndcg: 0.5, ndcg_comirec: 1.0 }
        );
        // A held-out item that occurs twice counts twice, as ComiRec's loop over the list does.
        assert!((user_metrics(&[3], &[3, 3, 7], 10).recall - 2.0 / 3.0).abs() < 1e-12);
        let miss = UserMetrics { recall: 0.0, hit: false, ndcg: 0.0, ndcg_comirec: 0.0 };
        assert_eq!(user_metrics(&[1, 2], &[3], 10), miss);
        assert_eq!(user_metrics(&[1, 2], &[], 10), miss);
    }

    #[test]
    fn means_over_users_cut_the_lists_at_n() {
        let users: Vec<(Vec<u32>, Vec<u32>)> =
            vec![(vec![1, 2, 3], vec![3]), (vec![4, 5, 6], vec![4, 6]), (vec![], vec![1])];
        let at = |n| retrieval_metrics(users.iter().map(|(r, t)| (r.as_slice(), t.as_slice())), n);
        // N = 2: user 0 misses (3 is third), user 1 finds 4 at position 0: recall 1/2, its
        // usual NDCG 1 / (1 + 1/log₂3) (two held-out items fit in 2), ComiRec's 1.
        let m = at(2);
        assert_eq!((m.users, m.n), (3, 2));
        assert!((m.recall - 0.5 / 3.0).abs() < 1e-12 && (m.hit_rate - 1.0 / 3.0).abs() < 1e-12);
        let two_slots = 1.0 + 1.0 / 3f64.log2();
        assert!((m.ndcg - 1.0 / two_slots / 3.0).abs() < 1e-12);
        assert!((m.ndcg_comirec - 1.0 / 3.0).abs() < 1e-12);
        // N = 3: user 0 hits at position 2 (NDCG 0.5; ComiRec's 1), user 1 finds both
        // (ranked 0 and 2): NDCG (1 + 0.5) / (1 + 1/log₂3); ComiRec's 1.
        let m = at(3);
        assert!((m.recall - 2.0 / 3.0).abs() < 1e-12 && (m.hit_rate - 2.0 / 3.0).abs() < 1e-12);
        assert!((m.ndcg - (0.5 + 1.5 / two_slots) / 3.0).abs() < 1e-12, "{}", m.ndcg);
        assert!((m.ndcg_comirec - 2.0 / 3.0).abs() < 1e-12);
        assert_eq!(retrieval_metrics(std::iter::empty(), 5).users, 0);
    }
}
