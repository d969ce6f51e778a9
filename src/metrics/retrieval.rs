//! Retrieval metrics of multi-interest models as ComiRec (Cen et al., KDD 2020) computes them in
//! its evaluation code: each of a user's interests retrieves its top N items by inner product over
//! the whole item set; the `(item, score)` pairs of all interests are merged by descending score,
//! each item kept once, into the user's top N. Then, with `hits` the recommended items among the
//! user's held-out items `truth`:
//!
//! - recall@N = `hits / |truth|`;
//! - HR@N (hit rate) = 1 when `hits > 0`;
//! - NDCG@N = `Σ_{hit at position p} 1/log₂(p + 2) / Σ_{p < hits} 1/log₂(p + 2)` (positions from
//!   0; ComiRec's ideal ranking is that of the items found, not of all held-out items, which
//!   makes its NDCG the quality of the order of the hits);
//!
//! each averaged over users (a user without hits counts 0 in all three).

/// The mean recall, hit rate and NDCG at one N over users.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize)]
pub struct RetrievalMetrics {
    pub n: usize,
    pub recall: f64,
    pub hit_rate: f64,
    pub ndcg: f64,
    pub users: u64,
}

/// A user's top `n` from each interest's retrieved `(item, score)` pairs: by descending score
/// (ties by ascending item id), each item once, the first `n`.
pub fn merge_top_n(per_interest: &[Vec<(u32, f32)>], n: usize) -> Vec<u32> {
    let mut pairs: Vec<(u32, f32)> = per_interest.iter().flatten().copied().collect();
    pairs.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
    let mut seen = std::collections::HashSet::new();
    pairs.into_iter().map(|(item, _)| item).filter(|item| seen.insert(*item)).take(n).collect()
}

/// `(recall, hit, ndcg)` of one user's recommended list against the held-out items (an empty
/// `truth` counts as no hit).
pub fn user_metrics(recommended: &[u32], truth: &[u32]) -> (f64, bool, f64) {
    let truth: std::collections::HashSet<u32> = truth.iter().copied().collect();
    let gain = |p: usize| 1.0 / ((p + 2) as f64).log2();
    let hit_positions: Vec<usize> = (0..recommended.len()).filter(|&p| truth.contains(&recommended[p])).collect();
    let hits = hit_positions.len();
    if hits == 0 {
        return (0.0, false, 0.0);
    }
    let dcg: f64 = hit_positions.iter().map(|&p| gain(p)).sum();
    let ideal: f64 = (0..hits).map(gain).sum();
    (hits as f64 / truth.len() as f64, true, dcg / ideal)
}

/// The metrics at `n` over users, each given as (its merged top list, its held-out items); the
/// lists may be longer than `n` (they are cut).
pub fn retrieval_metrics<'a>(users: impl IntoIterator<Item = (&'a [u32], &'a [u32])>, n: usize) -> RetrievalMetrics {
    let (mut recall, mut hits, mut ndcg, mut count) = (0.0, 0u64, 0.0, 0u64);
    for (recommended, truth) in users {
        let (r, hit, g) = user_metrics(&recommended[..recommended.len().min(n)], truth);
        recall += r;
        hits += u64::from(hit);
        ndcg += g;
        count += 1;
    }
    let mean = |x: f64| if count == 0 { 0.0 } else { x / count as f64 };
    RetrievalMetrics { n, recall: mean(recall), hit_rate: mean(hits as f64), ndcg: mean(ndcg), users: count }
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
    fn per_user_values_follow_comirec_s_definitions() {
        // Hits at positions 0 and 2 of [1, 5, 2, 8], 3 held-out items:
        // recall 2/3, DCG = 1/log₂2 + 1/log₂4 = 1.5, ideal = 1/log₂2 + 1/log₂3 = 1.630930,
        // NDCG = 0.919721.
        let (recall, hit, ndcg) = user_metrics(&[1, 5, 2, 8], &[2, 1, 4]);
        assert!((recall - 2.0 / 3.0).abs() < 1e-12 && hit);
        assert!((ndcg - 1.5 / (1.0 + 1.0 / 3f64.log2())).abs() < 1e-12, "{ndcg}");
        assert!((ndcg - 0.919_721).abs() < 1e-6);
        // One hit at position 2: DCG 1/log₂4 = 0.5 against the ideal 1/log₂2 = 1.
        assert_eq!(user_metrics(&[9, 8, 3], &[3]), (1.0, true, 0.5));
        assert_eq!(user_metrics(&[1, 2], &[3]), (0.0, false, 0.0));
        assert_eq!(user_metrics(&[1, 2], &[]), (0.0, false, 0.0));
    }

    #[test]
    fn means_over_users_cut_the_lists_at_n() {
        let users: Vec<(Vec<u32>, Vec<u32>)> =
            vec![(vec![1, 2, 3], vec![3]), (vec![4, 5, 6], vec![4, 6]), (vec![], vec![1])];
        let at = |n| retrieval_metrics(users.iter().map(|(r, t)| (r.as_slice(), t.as_slice())), n);
        // N = 2: user 0 misses (3 is third), user 1 finds 4 at position 0: recall 1/2, NDCG 1.
        let m = at(2);
        assert_eq!((m.users, m.n), (3, 2));
        assert!((m.recall - 0.5 / 3.0).abs() < 1e-12 && (m.hit_rate - 1.0 / 3.0).abs() < 1e-12);
        assert!((m.ndcg - 1.0 / 3.0).abs() < 1e-12);
        // N = 3: user 0 hits at position 2 (NDCG 0.5), user 1 finds both (positions 0, 2):
        // NDCG (1 + 0.5) / (1 + 1/log₂3).
        let m = at(3);
        assert!((m.recall - 2.0 / 3.0).abs() < 1e-12 && (m.hit_rate - 2.0 / 3.0).abs() < 1e-12);
        let user1 = 1.5 / (1.0 + 1.0 / 3f64.log2());
        assert!((m.ndcg - (0.5 + user1) / 3.0).abs() < 1e-12, "{}", m.ndcg);
        assert_eq!(retrieval_metrics(std::iter::empty(), 5).users, 0);
    }
}
