//! Gradients on the host between backward and update: dense parameters as one flat buffer per
//! task, embedding tables as row gradients (only the rows a step touched), the exchange between
//! ranks (one fused all-reduce for every dense gradient of both tasks and the step's losses; one
//! all-gather for every table's rows, summed identically on every rank), and the φ combination
//! (SPEC §2.4, §3).
//!
//! Everything here is a pure function over slices.

use crate::dist::{self, Communicator};

/// Row gradients of one table: distinct ids in increasing order and their rows, row-major.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct RowGrads {
    pub ids: Vec<i64>,
    pub rows: Vec<f32>,
    pub dim: usize,
}

impl RowGrads {
    pub fn len(&self) -> usize {
        self.ids.len()
    }

    pub fn is_empty(&self) -> bool {
        self.ids.is_empty()
    }

    pub fn row(&self, k: usize) -> &[f32] {
        &self.rows[k * self.dim..(k + 1) * self.dim]
    }

    /// Sum row gradients from several sources (ranks, in rank order): equal ids are added in
    /// the order given, so every rank computes the same bits.
    pub fn merge<'a>(parts: impl IntoIterator<Item = (&'a [i64], &'a [f32])>, dim: usize) -> Self {
        let mut entries: Vec<(i64, &[f32])> = Vec::new();
        for (ids, rows) in parts {
            entries.extend(ids.iter().enumerate().map(|(k, &id)| (id, &rows[k * dim..(k + 1) * dim])));
        }
        entries.sort_by_key(|(id, _)| *id); // stable: keeps rank order within an id
        let mut out = RowGrads { dim, ..Default::default() };
        for (id, row) in entries {
            if out.ids.last() == Some(&id) {
                let start = out.rows.len() - dim;
                out.rows[start..].iter_mut().zip(row).for_each(|(a, b)| *a += b);
            } else {
                out.ids.push(id);
                out.rows.extend_from_slice(row);
            }
        }
        out
    }

    /// `(1 − φ)·aux + φ·main` over the union of rows (a row missing on one side counts as 0).
    pub fn combine(main: &RowGrads, aux: &RowGrads, phi: f32) -> RowGrads {
        let dim = main.dim.max(aux.dim);
        let mut out = RowGrads { dim, ..Default::default() };
        let (mut i, mut j) = (0, 0);
        while i < main.len() || j < aux.len() {
            let (a, b) = (main.ids.get(i).copied().unwrap_or(i64::MAX), aux.ids.get(j).copied().unwrap_or(i64::MAX));
            let id = a.min(b);
            out.ids.push(id);
            for c in 0..dim {
                let m = if a == id { main.rows[i * dim + c] } else { 0.0 };
                let x = if b == id { aux.rows[j * dim + c] } else { 0.0 };
                out.rows.push((1.0 - phi) * x + phi * m);
            }
            i += usize::from(a == id);
            j += usize::from(b == id);
        }
        out
    }

    /// Scale every row.
    pub fn scaled(mut self, s: f32) -> RowGrads {
        self.rows.iter_mut().for_each(|x| *x *= s);
        self
    }

    pub fn norm_sq(&self) -> f64 {
        self.rows.iter().map(|&x| (x as f64) * (x as f64)).sum()
    }
}

/// One task's gradients: every dense parameter in one flat buffer, every table as rows.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct TaskGrads {
    pub dense: Vec<f32>,
    pub tables: Vec<RowGrads>,
}

/// Exchange both tasks' gradients: sum over ranks, in two collectives. The dense gradients of
/// both tasks, `scalars` (the step's losses and run-control flags) and the length of every rank's
/// row message travel in one fused all-reduce; every table's rows then in one all-gather of
/// `[row count per (task, table)] [ids] [rows]` whose lengths every rank now knows, merged
/// identically on every rank. With one rank the result equals the input (and the same code runs).
pub fn exchange(
    comm: &dyn Communicator,
    main: TaskGrads,
    aux: TaskGrads,
    scalars: &mut [f32],
) -> dist::Result<(TaskGrads, TaskGrads)> {
    let tables: Vec<&RowGrads> = main.tables.iter().chain(&aux.tables).collect();
    let counts: Vec<i64> = tables.iter().map(|t| t.len() as i64).collect();
    let id_bytes = 8 * (counts.len() + counts.iter().sum::<i64>() as usize);
    let mut message = Vec::with_capacity(id_bytes + 4 * tables.iter().map(|t| t.rows.len()).sum::<usize>());
    message.extend_from_slice(bytemuck::cast_slice(&counts));
    for t in &tables {
        message.extend_from_slice(bytemuck::cast_slice(&t.ids));
    }
    for t in &tables {
        message.extend_from_slice(bytemuck::cast_slice(&t.rows));
    }

    let split = main.dense.len();
    let mut flat = main.dense;
    flat.extend_from_slice(&aux.dense);
    flat.extend_from_slice(scalars);
    let lengths_at = flat.len();
    flat.extend(std::iter::repeat_n(0.0, 2 * comm.size()));
    flat[lengths_at + 2 * comm.rank()..][..2].copy_from_slice(&length_slots(message.len()));
    comm.all_reduce_sum_f32(&mut flat)?;
    let lengths: Vec<usize> = flat[lengths_at..].chunks(2).map(length_from_slots).collect();
    flat.truncate(lengths_at);
    scalars.copy_from_slice(&flat[flat.len() - scalars.len()..]);
    flat.truncate(flat.len() - scalars.len());
    let aux_dense = flat.split_off(split);

    let gathered = comm.all_gather_bytes_sized(&message, &lengths)?;
    // Per rank: its ids (header first) and rows, copied out of the byte stream to align them.
    let per_rank: Vec<(Vec<i64>, Vec<f32>)> = gathered
        .parts()
        .map(|part| {
            let header: Vec<i64> = bytemuck::pod_collect_to_vec(&part[..8 * tables.len()]);
            let ids_end = 8 * (tables.len() + header.iter().sum::<i64>() as usize);
            (bytemuck::pod_collect_to_vec(&part[..ids_end]), bytemuck::pod_collect_to_vec(&part[ids_end..]))
        })
        .collect();
    // Cut each rank's ids and rows into tables.
    let cut: Vec<Vec<(&[i64], &[f32])>> = per_rank
        .iter()
        .map(|(ids, rows)| {
            let (header, mut ids) = ids.split_at(tables.len());
            let mut rows = rows.as_slice();
            header
                .iter()
                .zip(&tables)
                .map(|(&n, t)| {
                    let (mine, rest) = ids.split_at(n as usize);
                    let (my_rows, rest_rows) = rows.split_at(n as usize * t.dim);
                    ids = rest;
                    rows = rest_rows;
                    (mine, my_rows)
                })
                .collect()
        })
        .collect();
    let mut merged: Vec<RowGrads> =
        (0..tables.len()).map(|k| RowGrads::merge(cut.iter().map(|r| r[k]), tables[k].dim)).collect();
    let aux_tables = merged.split_off(main.tables.len());
    Ok((TaskGrads { dense: flat, tables: merged }, TaskGrads { dense: aux_dense, tables: aux_tables }))
}

/// A byte length as two f32 slots of a summed buffer (every other rank adds zeros there), each
/// below 2^24 and so exact: the high part and the low 20 bits.
fn length_slots(len: usize) -> [f32; 2] {
    assert!(len < 1 << 44, "a row message of {len} bytes");
    [(len >> 20) as f32, (len & 0xF_FFFF) as f32]
}

fn length_from_slots(slots: &[f32]) -> usize {
    ((slots[0] as usize) << 20) + slots[1] as usize
}

/// Bytes this rank sends in [`exchange`] (for the communication benchmark).
pub fn bytes_sent(main: &TaskGrads, aux: &TaskGrads) -> usize {
    let rows: usize = main.tables.iter().chain(&aux.tables).map(|t| t.len() * (8 + 4 * t.dim)).sum();
    4 * (main.dense.len() + aux.dense.len()) + 8 * (main.tables.len() + aux.tables.len()) + rows
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dist::ThreadRanks;

    fn rows(ids: &[i64], values: &[f32]) -> RowGrads {
        RowGrads { ids: ids.to_vec(), rows: values.to_vec(), dim: values.len() / ids.len().max(1) }
    }

    #[test]
    fn merge_sums_equal_ids_and_sorts() {
        let a = rows(&[5, 1], &[1.0, 2.0, 3.0, 4.0]);
        let b = rows(&[1, 7], &[10.0, 20.0, 30.0, 40.0]);
        let m = RowGrads::merge([(&a.ids[..], &a.rows[..]), (&b.ids[..], &b.rows[..])], 2);
        assert_eq!(m.ids, [1, 5, 7]);
        assert_eq!(m.rows, [13.0, 24.0, 1.0, 2.0, 30.0, 40.0]);
    }

    #[test]
    fn phi_combination_over_the_union_of_rows() {
        let main = rows(&[1, 3], &[1.0, 2.0]);
        let aux = rows(&[2, 3], &[10.0, 20.0]);
        let c = RowGrads::combine(&main, &aux, 0.3);
        assert_eq!(c.ids, [1, 2, 3]);
        // 0.3·1; 0.7·10; 0.7·20 + 0.3·2
        let expected = [0.3f32, 7.0, 14.6];
        assert!(c.rows.iter().zip(expected).all(|(a, b)| (a - b).abs() < 1e-6), "{:?}", c.rows);
        assert_eq!(RowGrads::combine(&main, &aux, 0.0).rows, [0.0, 10.0, 20.0], "φ = 0: the main task sends nothing");
        assert_eq!(RowGrads::combine(&main, &aux, 1.0).rows, [1.0, 0.0, 2.0]);
    }

    #[test]
    fn exchange_over_threads_sums_like_one_rank_holding_everything() {
        // Rank r contributes dense [r, 2r] / [−r] and rows {r, 10} for both tasks.
        let local = |r: usize| {
            let r64 = r as i64;
            let rf = r as f32;
            let main = TaskGrads { dense: vec![rf, 2.0 * rf], tables: vec![rows(&[r64, 10], &[rf, 1.0])] };
            let aux = TaskGrads { dense: vec![-rf], tables: vec![rows(&[10], &[rf])] };
            (main, aux)
        };
        let results = ThreadRanks::run(3, |comm| {
            let (main, aux) = local(comm.rank());
            let mut losses = [comm.rank() as f32, 1.0];
            let out = exchange(&comm, main, aux, &mut losses).unwrap();
            assert_eq!(losses, [3.0, 3.0], "the scalars are summed with the dense gradients");
            out
        });
        assert!(results.iter().all(|r| r == &results[0]), "every rank holds the same sums");
        let (main, aux) = &results[0];
        assert_eq!(main.dense, [3.0, 6.0]);
        assert_eq!(aux.dense, [-3.0]);
        assert_eq!(main.tables[0].ids, [0, 1, 2, 10]);
        assert_eq!(main.tables[0].rows, [0.0, 1.0, 2.0, 3.0]);
        assert_eq!(aux.tables[0], rows(&[10], &[3.0]));
        // One rank: the exchange is the identity.
        let (m1, a1) = local(2);
        let single = exchange(&crate::dist::SingleProcess, m1.clone(), a1.clone(), &mut []).unwrap();
        assert_eq!(single, (m1, a1));
    }

    #[test]
    fn row_message_lengths_survive_the_f32_all_reduce_exactly() {
        // f32 holds integers exactly only below 2^24: one slot alone would round 2^24 + 1.
        for len in [0, 1, (1 << 20) - 1, 1 << 20, (1 << 24) + 1, (1 << 40) + 12_345, (1 << 44) - 1] {
            let slots = length_slots(len);
            // The other ranks add zeros to these slots.
            let summed = [slots[0] + 0.0 + 0.0, slots[1] + 0.0];
            assert_eq!(length_from_slots(&summed), len);
        }
    }

    #[test]
    fn ranks_with_different_numbers_of_rows_exchange_them_in_two_collectives() {
        // Rank r touched rows 0..r of the one table (rank 0 none): messages of different lengths,
        // announced through the all-reduce rather than an all-gather of their own.
        let results = ThreadRanks::run(3, |comm| {
            let r = comm.rank();
            let ids: Vec<i64> = (0..r as i64).collect();
            let values: Vec<f32> = ids.iter().flat_map(|&i| [i as f32, 1.0]).collect();
            let main = TaskGrads { dense: vec![1.0], tables: vec![RowGrads { ids, rows: values, dim: 2 }] };
            exchange(&comm, main, TaskGrads::default(), &mut [r as f32]).unwrap()
        });
        assert!(results.iter().all(|r| r == &results[0]));
        let (main, _) = &results[0];
        assert_eq!(main.dense, [3.0]);
        // Row 0 from ranks 1 and 2, row 1 from rank 2.
        assert_eq!(main.tables[0], RowGrads { ids: vec![0, 1], rows: vec![0.0, 2.0, 1.0, 1.0], dim: 2 });
    }

    #[test]
    fn bytes_sent_do_not_grow_with_the_vocabulary() {
        let grads =
            |dim: usize| TaskGrads { dense: vec![0.0; 100], tables: vec![rows(&[3, 999_999], &vec![1.0; 2 * dim])] };
        assert_eq!(bytes_sent(&grads(18), &grads(18)), 2 * (400 + 8 + 2 * (8 + 72)));
    }

    /// A table's gradient as row gradients: one entry per distinct id (ascending), its row the
    /// sum of the values given for it; and the same as a dense `[30, dim]` table.
    fn sparse_and_dense(entries: &[(i64, i8)], dim: usize) -> (RowGrads, Vec<f32>) {
        let mut by_id = std::collections::BTreeMap::<i64, Vec<f32>>::new();
        let mut dense = vec![0f32; 30 * dim];
        for &(id, v) in entries {
            let row = by_id.entry(id).or_insert_with(|| vec![0.0; dim]);
            for (c, x) in row.iter_mut().enumerate() {
                *x += f32::from(v) * (c + 1) as f32;
                dense[id as usize * dim + c] += f32::from(v) * (c + 1) as f32;
            }
        }
        let ids = by_id.keys().copied().collect();
        (RowGrads { ids, rows: by_id.into_values().flatten().collect(), dim }, dense)
    }

    fn densify(g: &RowGrads) -> Vec<f32> {
        let mut dense = vec![0f32; 30 * g.dim];
        for (k, &id) in g.ids.iter().enumerate() {
            dense[id as usize * g.dim..][..g.dim].copy_from_slice(g.row(k));
        }
        dense
    }

    proptest::proptest! {
        /// Merging the ranks' row gradients gives the sum of their dense gradients, over distinct
        /// ascending ids; the φ combination gives `(1 − φ)·aux + φ·main` of the dense ones.
        /// (Small integers: every sum is exact in f32.)
        #[test]
        fn merged_and_combined_row_gradients_equal_the_dense_computation(
            parts in proptest::collection::vec(proptest::collection::vec((0i64..30, -4i8..5), 0..12), 1..4),
            dim in 1usize..4,
            phi in 0.0f32..1.0,
        ) {
            let (sparse, dense): (Vec<RowGrads>, Vec<Vec<f32>>) = parts.iter().map(|p| sparse_and_dense(p, dim)).unzip();
            let merged = RowGrads::merge(sparse.iter().map(|g| (&g.ids[..], &g.rows[..])), dim);
            proptest::prop_assert!(merged.ids.windows(2).all(|w| w[0] < w[1]), "distinct ascending ids");
            let sum: Vec<f32> = (0..30 * dim).map(|k| dense.iter().map(|d| d[k]).sum()).collect();
            proptest::prop_assert_eq!(densify(&merged), sum);
            let (main, aux) = (&sparse[0], sparse.last().unwrap());
            let combined = RowGrads::combine(main, aux, phi);
            let expected: Vec<f32> = densify(aux).iter().zip(densify(main)).map(|(&a, m)| (1.0 - phi) * a + phi * m).collect();
            let got = densify(&combined);
            proptest::prop_assert!(got.iter().zip(&expected).all(|(g, e)| (g - e).abs() <= 1e-5 * e.abs().max(1.0)), "{:?} vs {:?}", got, expected);
        }
    }
}
