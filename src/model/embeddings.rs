//! The framework-owned embedding tables (SPEC §2.1) and what they produce for one batch: the
//! main model's input `e = e_orig ⊕ e_aux` and, with MICN on, the `e_aux` part on its own.
//!
//! Tables (variables under this module's path): `user [n_users, d]`, `item [n_items, d]`,
//! `cat [n_cats, d]` and, with MICN, `item_aux [n_items, d]`, `cat_aux [n_cats, d]`. Id 0 is
//! padding / unknown; its rows are ordinary rows, and padded history slots are removed by the
//! mask wherever the history is pooled, never by the tables. The main models never see which
//! part of `e` is which.
//!
//! A training step reads the tables through row leaves ([`RowLeaf`]): the rows the batch's
//! lookups read, copied out per table and per task, so the backward pass yields dense per-lookup
//! gradients (summed per row on the host or on the device) and one pass keeps the main and
//! auxiliary gradients apart.
use tch::{nn, Kind, Tensor};

use super::ModelError;

/// Vocabulary sizes, id 0 (padding / unknown) included.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Vocab {
    pub users: i64,
    pub items: i64,
    pub cats: i64,
}

/// The sampled no-click behaviours of DIEN's auxiliary loss, one per history slot.
#[derive(Debug)]
pub struct NoClick {
    /// `[b, T]` i64
    pub items: Tensor,
    /// `[b, T]` i64
    pub cats: Tensor,
}

/// The ids of one batch, as the loader collates them. Real behaviours are left-aligned, oldest
/// first.
#[derive(Debug)]
pub struct BatchIds {
    /// `[b]` i64
    pub users: Tensor,
    /// Target items, `[b]` i64.
    pub items: Tensor,
    /// Target categories, `[b]` i64.
    pub cats: Tensor,
    /// `[b, T]` i64
    pub hist_items: Tensor,
    /// `[b, T]` i64
    pub hist_cats: Tensor,
    /// `[b, T]` f32: 1 for a real behaviour, 0 for padding.
    pub hist_mask: Tensor,
    /// DIEN's no-click samples (training only).
    pub noclick: Option<NoClick>,
}

impl BatchIds {
    /// A copy sharing the same storage.
    pub fn shallow_clone(&self) -> Self {
        Self {
            users: self.users.shallow_clone(),
            items: self.items.shallow_clone(),
            cats: self.cats.shallow_clone(),
            hist_items: self.hist_items.shallow_clone(),
            hist_cats: self.hist_cats.shallow_clone(),
            hist_mask: self.hist_mask.shallow_clone(),
            noclick: self
                .noclick
                .as_ref()
                .map(|n| NoClick { items: n.items.shallow_clone(), cats: n.cats.shallow_clone() }),
        }
    }

    /// The batch size `b`.
    pub fn len(&self) -> i64 {
        self.items.size()[0]
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// What a main model receives: `w` is `2d` without MICN and `4d` with it.
#[derive(Debug)]
pub struct MainInput {
    /// `[b, d]`
    pub user: Tensor,
    /// `e` of the target item, `[b, w]`.
    pub target: Tensor,
    /// `e` of every history slot, `[b, T, w]` (padded slots hold the padding row).
    pub hist: Tensor,
    /// `[b, T]` f32
    pub hist_mask: Tensor,
    /// `e` of the no-click samples, `[b, T, w]`, when the batch has them.
    pub noclick: Option<Tensor>,
    /// The ids themselves, for models with id features (Wide&Deep's crosses).
    pub ids: BatchIds,
}

/// What MICN receives: the `e_aux` vectors only (`h = 2d`).
#[derive(Debug)]
pub struct AuxInput {
    /// `[b, h]`
    pub target: Tensor,
    /// `[b, T, h]`
    pub hist: Tensor,
    /// `[b, T]` f32
    pub hist_mask: Tensor,
}

/// One batch, embedded.
#[derive(Debug)]
pub struct Embedded {
    pub main: MainInput,
    /// Present when MICN is on.
    pub aux: Option<AuxInput>,
}

/// The second pair of tables, present when MICN is on.
#[derive(Debug)]
struct AuxTables {
    item_aux: Tensor,
    cat_aux: Tensor,
}

/// Variable names (under this module's path) of the `e_aux` tables.
pub const AUX_TABLES: [&str; 2] = ["item_aux", "cat_aux"];

/// The embedding tables.
#[derive(Debug)]
pub struct Embeddings {
    user: Tensor,
    item: Tensor,
    cat: Tensor,
    aux: Option<AuxTables>,
    /// Category of every item, `[n_items]` i64; not a variable (it is data, not trained).
    item_cats: Tensor,
    /// The same on the host, to embed MICN's negatives from row leaves.
    item_cats_host: Vec<i64>,
    dim: i64,
    /// Gradient scales (main, aux) applied to the `e_aux` lookups; `None` in training. See
    /// [`Embeddings::with_gradient_scales`].
    grad_scales: Option<(f64, f64)>,
}

/// `x` in the forward pass, `s · ∂` in the backward pass.
fn scale_gradient(x: &Tensor, s: f64) -> Tensor {
    x * s + x.detach() * (1.0 - s)
}

impl Embeddings {
    /// Tables of width `dim`, with the `e_aux` pair when `with_aux`. `item_cats [n_items]` (i64,
    /// values in `0..n_cats`) gives each item's category, to embed MICN's sampled negatives.
    ///
    /// Tables start from Glorot-uniform values, `tf.get_variable`'s default that DIN's and DIEN's
    /// code rely on: `U(±sqrt(6 / (rows + dim)))`.
    pub fn new(p: &nn::Path, vocab: &Vocab, dim: i64, with_aux: bool, item_cats: &Tensor) -> Result<Self, ModelError> {
        for (name, size) in [("users", vocab.users), ("items", vocab.items), ("cats", vocab.cats)] {
            if size < 1 {
                return Err(ModelError::Vocab { name, size });
            }
        }
        if dim < 1 {
            return Err(ModelError::Dim { dim });
        }
        check_item_cats(item_cats, vocab)?;
        let table = |name: &str, rows: i64| {
            let bound = (6.0 / (rows + dim) as f64).sqrt();
            p.var(name, &[rows, dim], nn::Init::Uniform { lo: -bound, up: bound })
        };
        let aux = with_aux.then(|| AuxTables {
            item_aux: table(AUX_TABLES[0], vocab.items),
            cat_aux: table(AUX_TABLES[1], vocab.cats),
        });
        Ok(Self {
            user: table("user", vocab.users),
            item: table("item", vocab.items),
            cat: table("cat", vocab.cats),
            aux,
            item_cats: item_cats.to_device(p.device()),
            item_cats_host: crate::transfer::download_i64(item_cats),
            dim,
            grad_scales: None,
        })
    }

    /// The single-backward formulation of the φ combination (SPEC §2.4), used as a test
    /// oracle: the `e_aux` vectors the main model receives pass their gradient on scaled by
    /// `main` (φ), those MICN receives by `aux` (1 − φ), so one backward pass of
    /// `L_main + λ·L_micn` leaves `φ·main + (1 − φ)·aux` on the `e_aux` tables.
    pub fn with_gradient_scales(mut self, main: f64, aux: f64) -> Self {
        self.grad_scales = Some((main, aux));
        self
    }

    fn for_main(&self, x: Tensor) -> Tensor {
        match self.grad_scales {
            Some((main, _)) => scale_gradient(&x, main),
            None => x,
        }
    }

    fn for_aux(&self, x: Tensor) -> Tensor {
        match self.grad_scales {
            Some((_, aux)) => scale_gradient(&x, aux),
            None => x,
        }
    }

    /// The width `d` of one table.
    pub fn dim(&self) -> i64 {
        self.dim
    }

    /// The width `w` of the main model's item vector `e`: `2d`, or `4d` with MICN.
    pub fn item_width(&self) -> i64 {
        if self.aux.is_some() {
            4 * self.dim
        } else {
            2 * self.dim
        }
    }

    /// The width `h = 2d` of `e_aux`, when MICN is on.
    pub fn aux_width(&self) -> Option<i64> {
        self.aux.as_ref().map(|_| 2 * self.dim)
    }

    /// The category of every item, `[n_items]` i64.
    pub fn item_cats(&self) -> &Tensor {
        &self.item_cats
    }

    /// `e_orig = [item; cat]` of the given ids.
    ///
    /// # Shapes
    /// `items [..]`, `cats [..]` (same shape) → `[.., 2d]`
    pub fn orig(&self, items: &Tensor, cats: &Tensor) -> Tensor {
        Tensor::cat(&[lookup(&self.item, items), lookup(&self.cat, cats)], -1)
    }

    /// `e_aux = [item_aux; cat_aux]` of the given ids, when MICN is on.
    ///
    /// # Shapes
    /// `items [..]`, `cats [..]` (same shape) → `[.., 2d]`
    pub fn aux(&self, items: &Tensor, cats: &Tensor) -> Option<Tensor> {
        self.aux.as_ref().map(|aux| Tensor::cat(&[lookup(&aux.item_aux, items), lookup(&aux.cat_aux, cats)], -1))
    }

    /// `e_aux` of arbitrary items (MICN's sampled negatives), their categories read from the
    /// item→category table; `None` without MICN.
    ///
    /// # Shapes
    /// `items [..]` → `[.., 2d]`
    pub fn aux_items(&self, items: &Tensor) -> Option<Tensor> {
        let cats = self.item_cats.index_select(0, &items.flatten(0, -1)).view_as(items);
        self.aux(items, &cats).map(|x| self.for_aux(x))
    }

    /// Embeds one batch: `e = e_orig ⊕ e_aux` for the main model, and `e_aux` alone for MICN
    /// (the same lookups). Evaluation and the test oracles use it; training uses
    /// [`Embeddings::forward_train`], which gives the same values.
    pub fn forward(&self, ids: &BatchIds) -> Embedded {
        let target_aux = self.aux(&ids.items, &ids.cats);
        let hist_aux = self.aux(&ids.hist_items, &ids.hist_cats);
        let join = |orig: Tensor, aux: Option<&Tensor>| match aux {
            Some(aux) => Tensor::cat(&[orig, self.for_main(aux.shallow_clone())], -1),
            None => orig,
        };
        let main = MainInput {
            user: lookup(&self.user, &ids.users),
            target: join(self.orig(&ids.items, &ids.cats), target_aux.as_ref()),
            hist: join(self.orig(&ids.hist_items, &ids.hist_cats), hist_aux.as_ref()),
            hist_mask: ids.hist_mask.shallow_clone(),
            noclick: ids
                .noclick
                .as_ref()
                .map(|n| join(self.orig(&n.items, &n.cats), self.aux(&n.items, &n.cats).as_ref())),
            ids: ids.shallow_clone(),
        };
        let aux = target_aux.zip(hist_aux).map(|(target, hist)| AuxInput {
            target: self.for_aux(target),
            hist: self.for_aux(hist),
            hist_mask: ids.hist_mask.shallow_clone(),
        });
        Embedded { main, aux }
    }
}

/// Which gradient buffer a lookup feeds (SPEC §2.4): the main task's or MICN's.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Task {
    Main,
    Aux,
}

/// The rows of one table that one task reads in a training step, copied out of the table into a
/// leaf tensor, one row per lookup: the backward pass leaves each lookup's gradient in it, dense,
/// and [`RowLeaf::sum_rows_host`] (on the host) or [`RowLeaf::sum_rows`] (on the leaf's device)
/// sums them per distinct id (no sparse gradient to coalesce). The `e_aux` tables get one leaf
/// per task, so a single backward pass keeps the two tasks' gradients apart.
#[derive(Debug)]
pub struct RowLeaf {
    /// The table's variable name under [`super::EMBEDDINGS_PATH`] (`user`, `item`, `cat_aux`, ...).
    pub table: &'static str,
    pub task: Task,
    /// Distinct ids, ascending.
    pub ids: Vec<i64>,
    /// For every lookup (row of the leaf), the index of its id in `ids`.
    pub index: Vec<usize>,
    /// `index` on the leaf's device, `[lookups]` i64.
    pub index_on_device: Tensor,
    /// `[lookups, d]`, requires grad.
    pub leaf: Tensor,
}

impl RowLeaf {
    /// The gradient of every distinct row (`[ids.len(), d]`, row-major) from the leaf's gradient:
    /// the lookups' gradients summed in lookup order, the same bits every time.
    pub fn row_gradients(&self, grad: &Tensor) -> Vec<f32> {
        self.sum_rows_host(&crate::transfer::download_f32(grad))
    }

    /// [`RowLeaf::row_gradients`] of a leaf gradient already on the host (`[lookups, d]`,
    /// row-major).
    pub fn sum_rows_host(&self, g: &[f32]) -> Vec<f32> {
        let dim = g.len() / self.index.len().max(1);
        let mut rows = vec![0f32; self.ids.len() * dim];
        for (lookup, &row) in g.chunks_exact(dim.max(1)).zip(&self.index) {
            rows[row * dim..][..dim].iter_mut().zip(lookup).for_each(|(a, b)| *a += b);
        }
        rows
    }

    /// The same sums on the gradient's device (`index_add_`), `[ids.len(), d]`: no transfer.
    /// The order of the additions is the device's (on a GPU, atomics in any order).
    pub fn sum_rows(&self, grad: &Tensor) -> Tensor {
        let dim = grad.size()[1];
        let sums = Tensor::zeros([self.ids.len() as i64, dim], (grad.kind(), grad.device()));
        sums.index_add(0, &self.index_on_device, grad)
    }
}

/// A training batch embedded from row leaves ([`Embeddings::forward_train`]).
#[derive(Debug)]
pub struct TrainingInput {
    pub embedded: Embedded,
    /// `e_aux` of MICN's sampled negatives, `[K, 2d]`, when negatives were given.
    pub negatives: Option<Tensor>,
    /// Every leaf the batch's lookups read from.
    pub leaves: Vec<RowLeaf>,
}

/// The ids of one batch on the host, the same values as the [`BatchIds`] tensors (the loader
/// collated them there): the row leaves are planned from them, so the ids are never read back
/// from the device.
#[derive(Debug, Clone, Copy)]
pub struct HostIds<'a> {
    pub users: &'a [i64],
    pub items: &'a [i64],
    pub cats: &'a [i64],
    /// `[b, T]`, row-major.
    pub hist_items: &'a [i64],
    pub hist_cats: &'a [i64],
    pub noclick: Option<(&'a [i64], &'a [i64])>,
}

/// MICN's sampled negatives, on the host and on the device (the same ids).
#[derive(Debug, Clone, Copy)]
pub struct Negatives<'a> {
    pub host: &'a [i64],
    /// `[K]` i64
    pub tensor: &'a Tensor,
}

/// The distinct ids of `lookups`, ascending, and for every lookup the index of its id among them.
fn distinct_rows(lookups: &[i64]) -> (Vec<i64>, Vec<usize>) {
    let mut distinct = lookups.to_vec();
    distinct.sort_unstable();
    distinct.dedup();
    let index =
        lookups.iter().map(|id| distinct.binary_search(id).expect("every id is among the distinct ones")).collect();
    (distinct, index)
}

/// The lookups of one or more tables that share their ids (`item` and `item_aux`, say): the
/// groups of ids in turn, on the host (to plan the leaf) and on the device (to read the rows).
struct Gather<'a> {
    tables: Vec<(&'static str, &'a Tensor)>,
    task: Task,
    host: Vec<&'a [i64]>,
    device: Vec<Tensor>,
}

impl Embeddings {
    /// Embeds a training batch through row leaves ([`RowLeaf`]): the same values as
    /// [`Embeddings::forward`], with the main task's lookups (the `e_orig` tables and its
    /// `e_aux` half of `e`) reading the [`Task::Main`] leaves and MICN's (`e_aux` of the target,
    /// the history and the sampled `negatives`) the [`Task::Aux`] ones.
    ///
    /// Reads the ids back from the tensors (counted downloads); the training step, which has them
    /// on the host, calls [`Embeddings::forward_train_planned`].
    pub fn forward_train(&self, ids: &BatchIds, negatives: Option<&[i64]>) -> TrainingInput {
        use crate::transfer::download_i64;
        let (items, cats) = (download_i64(&ids.items), download_i64(&ids.cats));
        let (hist_items, hist_cats) = (download_i64(&ids.hist_items), download_i64(&ids.hist_cats));
        let noclick = ids.noclick.as_ref().map(|n| (download_i64(&n.items), download_i64(&n.cats)));
        let users = download_i64(&ids.users);
        let host = HostIds {
            users: &users,
            items: &items,
            cats: &cats,
            hist_items: &hist_items,
            hist_cats: &hist_cats,
            noclick: noclick.as_ref().map(|(i, c)| (i.as_slice(), c.as_slice())),
        };
        let negative_tensor = negatives.map(|n| crate::transfer::upload_i64(n, self.item.device()));
        let negatives = negatives.zip(negative_tensor.as_ref()).map(|(host, tensor)| Negatives { host, tensor });
        self.forward_train_planned(ids, &host, negatives)
    }

    /// [`Embeddings::forward_train`] with the batch's ids also on the host (`host`, the values of
    /// `ids`). The rows are read with the device's ids; the only transfer is one upload of every
    /// leaf's row index (for [`RowLeaf::sum_rows`]).
    pub fn forward_train_planned(
        &self,
        ids: &BatchIds,
        host: &HostIds<'_>,
        negatives: Option<Negatives<'_>>,
    ) -> TrainingInput {
        let (b, steps) = (ids.len(), ids.hist_items.size()[1]);
        let flat = |t: &Tensor| t.flatten(0, -1);
        let mut gathers = vec![Gather {
            tables: vec![("user", &self.user)],
            task: Task::Main,
            host: vec![host.users],
            device: vec![ids.users.shallow_clone()],
        }];
        // e = [item; cat; item_aux; cat_aux] of the targets, the history and the no-clicks at once.
        let mut item = Gather {
            tables: vec![("item", &self.item)],
            task: Task::Main,
            host: vec![host.items, host.hist_items],
            device: vec![ids.items.shallow_clone(), flat(&ids.hist_items)],
        };
        let mut cat = Gather {
            tables: vec![("cat", &self.cat)],
            task: Task::Main,
            host: vec![host.cats, host.hist_cats],
            device: vec![ids.cats.shallow_clone(), flat(&ids.hist_cats)],
        };
        if let (Some((noclick_items, noclick_cats)), Some(n)) = (host.noclick, &ids.noclick) {
            item.host.push(noclick_items);
            item.device.push(flat(&n.items));
            cat.host.push(noclick_cats);
            cat.device.push(flat(&n.cats));
        }
        if let Some(aux) = &self.aux {
            item.tables.push((AUX_TABLES[0], &aux.item_aux));
            cat.tables.push((AUX_TABLES[1], &aux.cat_aux));
        }
        gathers.extend([item, cat]);
        // MICN: e_aux of the targets, the history and the negatives, from its own leaves.
        let negative_cats: Option<Vec<i64>> = match (&self.aux, negatives) {
            (Some(_), Some(n)) => Some(n.host.iter().map(|&id| self.item_cats_host[id as usize]).collect()),
            _ => None,
        };
        if let (Some(aux), Some(n), Some(negative_cats)) = (&self.aux, negatives, &negative_cats) {
            gathers.push(Gather {
                tables: vec![(AUX_TABLES[0], &aux.item_aux)],
                task: Task::Aux,
                host: vec![host.items, host.hist_items, n.host],
                device: vec![ids.items.shallow_clone(), flat(&ids.hist_items), n.tensor.shallow_clone()],
            });
            gathers.push(Gather {
                tables: vec![(AUX_TABLES[1], &aux.cat_aux)],
                task: Task::Aux,
                host: vec![host.cats, host.hist_cats, negative_cats],
                device: vec![ids.cats.shallow_clone(), flat(&ids.hist_cats), self.item_cats.index_select(0, n.tensor)],
            });
        }
        let rows = self.gather_all(&gathers);
        let (user, main_items, main_cats) = (&rows[0].0[0], &rows[1].0, &rows[2].0);

        let mut parts = vec![&main_items[0], &main_cats[0]];
        if self.aux.is_some() {
            parts.extend([&main_items[1], &main_cats[1]]);
        }
        let e = Tensor::cat(&parts, -1); // [b + b·T (+ b·T), w]
        debug_assert_eq!(e.size()[1], self.item_width());
        let history = |rows: &Tensor, start: i64| rows.narrow(0, start, b * steps).view([b, steps, -1]);
        let main = MainInput {
            user: user.shallow_clone(),
            target: e.narrow(0, 0, b),
            hist: history(&e, b),
            hist_mask: ids.hist_mask.shallow_clone(),
            noclick: (host.noclick.is_some() && ids.noclick.is_some()).then(|| history(&e, b + b * steps)),
            ids: ids.shallow_clone(),
        };
        let (aux, negatives) = match (rows.get(3), rows.get(4), negatives) {
            (Some((item_rows, _)), Some((cat_rows, _)), Some(n)) => {
                let e_aux = Tensor::cat(&[&item_rows[0], &cat_rows[0]], -1);
                let input = AuxInput {
                    target: e_aux.narrow(0, 0, b),
                    hist: history(&e_aux, b),
                    hist_mask: ids.hist_mask.shallow_clone(),
                };
                (Some(input), Some(e_aux.narrow(0, b + b * steps, n.host.len() as i64)))
            }
            _ => (None, None),
        };
        let leaves = rows.into_iter().flat_map(|(_, leaves)| leaves).collect();
        TrainingInput { embedded: Embedded { main, aux }, negatives, leaves }
    }

    /// For every gather, one leaf per table holding the rows of every id of every group in turn
    /// (also what the lookups return), and those rows. The row indices of all leaves travel in
    /// one upload.
    fn gather_all(&self, gathers: &[Gather<'_>]) -> Vec<(Vec<Tensor>, Vec<RowLeaf>)> {
        let plans: Vec<(Vec<i64>, Vec<usize>)> = gathers.iter().map(|g| distinct_rows(&g.host.concat())).collect();
        let packed: Vec<i64> = plans.iter().flat_map(|(_, index)| index.iter().map(|&i| i as i64)).collect();
        let packed = crate::transfer::upload_i64(&packed, self.item.device());
        let lengths: Vec<usize> = plans.iter().map(|(_, index)| index.len()).collect();
        let indices = crate::transfer::split(&packed, &lengths);
        gathers
            .iter()
            .zip(plans)
            .zip(indices)
            .map(|((g, (distinct, index)), index_on_device)| {
                let lookups = Tensor::cat(&g.device, 0);
                let mut rows = Vec::new();
                let mut leaves = Vec::new();
                for &(table, values) in &g.tables {
                    let leaf = tch::no_grad(|| values.index_select(0, &lookups)).set_requires_grad(true);
                    rows.push(leaf.shallow_clone());
                    leaves.push(RowLeaf {
                        table,
                        task: g.task,
                        ids: distinct.clone(),
                        index: index.clone(),
                        index_on_device: index_on_device.shallow_clone(),
                        leaf,
                    });
                }
                (rows, leaves)
            })
            .collect()
    }
}

/// Rows of `table` for `ids`, with a sparse gradient (one row per lookup): its cost grows with
/// the batch, not with the vocabulary.
fn lookup(table: &Tensor, ids: &Tensor) -> Tensor {
    Tensor::embedding(table, ids, -1, false, true)
}

fn check_item_cats(item_cats: &Tensor, vocab: &Vocab) -> Result<(), ModelError> {
    let bad = |why: String| Err(ModelError::ItemCats { why });
    if item_cats.kind() != Kind::Int64 {
        return bad(format!("must hold i64 ids, holds {:?}", item_cats.kind()));
    }
    if item_cats.size() != [vocab.items] {
        return bad(format!("must have shape [{}] (one category per item), has {:?}", vocab.items, item_cats.size()));
    }
    let range = crate::transfer::download_i64(&Tensor::stack(&[item_cats.min(), item_cats.max()], 0));
    let (lo, hi) = (range[0], range[1]);
    if lo < 0 || hi >= vocab.cats {
        return bad(format!("holds categories in {lo}..={hi}, outside 0..{}", vocab.cats));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::testing::batch;
    use tch::Device;

    const VOCAB: Vocab = Vocab { users: 5, items: 9, cats: 4 };

    fn item_cats() -> Tensor {
        Tensor::from_slice(&[0i64, 1, 1, 2, 2, 3, 3, 1, 2])
    }

    #[test]
    fn with_micn_the_main_input_is_four_tables_wide_and_its_aux_half_is_the_aux_rows() {
        let vs = nn::VarStore::new(Device::Cpu);
        let emb = Embeddings::new(&vs.root(), &VOCAB, 3, true, &item_cats()).unwrap();
        let ids = batch(1, 4, 5, &VOCAB, true);
        let out = emb.forward(&ids);
        assert_eq!(emb.item_width(), 12);
        assert_eq!(out.main.target.size(), [4, 12]);
        assert_eq!(out.main.hist.size(), [4, 5, 12]);
        assert_eq!(out.main.noclick.as_ref().unwrap().size(), [4, 5, 12]);
        assert_eq!(out.main.user.size(), [4, 3]);
        let aux = out.aux.unwrap();
        assert_eq!(aux.hist.size(), [4, 5, 6]);
        // The last 2d columns of e are [item_aux; cat_aux] rows of the ids, and they equal MICN's.
        let vars = vs.variables();
        let expected = Tensor::cat(
            &[vars["item_aux"].index_select(0, &ids.items), vars["cat_aux"].index_select(0, &ids.cats)],
            -1,
        );
        assert!(out.main.target.narrow(-1, 6, 6).equal(&expected));
        assert!(aux.target.equal(&expected));
        let expected_orig =
            Tensor::cat(&[vars["item"].index_select(0, &ids.items), vars["cat"].index_select(0, &ids.cats)], -1);
        assert!(out.main.target.narrow(-1, 0, 6).equal(&expected_orig));
        assert!(out.main.hist.narrow(-1, 6, 6).equal(&aux.hist));
    }

    #[test]
    fn training_from_row_leaves_gives_the_lookups_values_and_each_tasks_table_gradient() {
        let vs = nn::VarStore::new(Device::Cpu);
        let emb = Embeddings::new(&vs.root(), &VOCAB, 3, true, &item_cats()).unwrap();
        let ids = batch(4, 5, 6, &VOCAB, true);
        let negatives = [8i64, 2, 8, 5];
        let plain = emb.forward(&ids);
        let TrainingInput { embedded, negatives: negative_rows, leaves } = emb.forward_train(&ids, Some(&negatives));
        let (main, aux) = (&embedded.main, embedded.aux.as_ref().unwrap());
        assert!(main.user.equal(&plain.main.user) && main.target.equal(&plain.main.target));
        assert!(main.hist.equal(&plain.main.hist));
        assert!(main.noclick.as_ref().unwrap().equal(plain.main.noclick.as_ref().unwrap()));
        let plain_aux = plain.aux.as_ref().unwrap();
        assert!(aux.target.equal(&plain_aux.target) && aux.hist.equal(&plain_aux.hist));
        let negatives_t = Tensor::from_slice(&negatives);
        assert!(negative_rows.as_ref().unwrap().equal(&emb.aux_items(&negatives_t).unwrap()));

        // Weighted sums as losses: the main task reads e and the user, MICN e_aux and negatives.
        let weights = |x: &Tensor, seed: i64| {
            Tensor::arange(x.numel() as i64, (Kind::Float, Device::Cpu)).view_as(x).sin() * seed
        };
        let main_loss = |m: &MainInput| {
            (&m.user * weights(&m.user, 1)).sum(Kind::Float)
                + (&m.target * weights(&m.target, 2)).sum(Kind::Float)
                + (&m.hist * weights(&m.hist, 3)).sum(Kind::Float)
                + (m.noclick.as_ref().unwrap() * weights(m.noclick.as_ref().unwrap(), 4)).sum(Kind::Float)
        };
        let aux_loss = |a: &AuxInput, n: &Tensor| {
            (&a.target * weights(&a.target, 5)).sum(Kind::Float)
                + (&a.hist * weights(&a.hist, 6)).sum(Kind::Float)
                + (n * weights(n, 7)).sum(Kind::Float)
        };
        // Reference: each task's loss alone through the plain lookups, as dense table gradients.
        let tables = vs.variables();
        let reference = |loss: Tensor| {
            let names = ["user", "item", "cat", "item_aux", "cat_aux"];
            let vars: Vec<&Tensor> = names.iter().map(|n| &tables[*n]).collect();
            let grads = Tensor::run_backward(&[loss], &vars, false, false);
            names
                .iter()
                .zip(grads)
                .map(|(n, g)| (*n, if g.defined() { g.to_dense(None, false) } else { g }))
                .collect::<Vec<_>>()
        };
        let main_ref = reference(main_loss(&emb.forward(&ids).main));
        let aux_ref = reference(aux_loss(&emb.forward(&ids).aux.unwrap(), &emb.aux_items(&negatives_t).unwrap()));

        let total = main_loss(main) + aux_loss(aux, negative_rows.as_ref().unwrap());
        let leaf_tensors: Vec<&Tensor> = leaves.iter().map(|l| &l.leaf).collect();
        let grads = Tensor::run_backward(&[total], &leaf_tensors, false, false);
        for (leaf, g) in leaves.iter().zip(grads) {
            assert!(leaf.ids.windows(2).all(|w| w[0] < w[1]), "distinct ascending ids");
            let reference = match leaf.task {
                Task::Main => &main_ref,
                Task::Aux => &aux_ref,
            };
            let expected = &reference.iter().find(|(n, _)| *n == leaf.table).unwrap().1;
            let expected = expected.index_select(0, &Tensor::from_slice(&leaf.ids));
            let rows = Tensor::from_slice(&leaf.row_gradients(&g)).view_as(&expected);
            let diff = (&rows - &expected).abs().max().double_value(&[]);
            assert!(diff < 1e-5, "{} ({:?}): gradient differs by {diff}", leaf.table, leaf.task);
        }
        let count = |task| leaves.iter().filter(|l| l.task == task).count();
        assert_eq!(
            (count(Task::Main), count(Task::Aux)),
            (5, 2),
            "user, item, cat and both e_aux tables; e_aux for MICN"
        );
    }

    #[test]
    fn without_micn_the_main_input_is_two_tables_wide() {
        let vs = nn::VarStore::new(Device::Cpu);
        let emb = Embeddings::new(&vs.root(), &VOCAB, 3, false, &item_cats()).unwrap();
        let out = emb.forward(&batch(2, 4, 5, &VOCAB, false));
        assert_eq!(out.main.target.size(), [4, 6]);
        assert!(out.aux.is_none() && out.main.noclick.is_none());
        assert_eq!(vs.variables().len(), 3);
    }

    #[test]
    fn negatives_are_embedded_with_their_own_category() {
        let vs = nn::VarStore::new(Device::Cpu);
        let emb = Embeddings::new(&vs.root(), &VOCAB, 2, true, &item_cats()).unwrap();
        let ids = Tensor::from_slice(&[5i64, 1, 8]);
        let cats = Tensor::from_slice(&[3i64, 1, 2]); // item_cats()[5], [1], [8]
        assert!(emb.aux_items(&ids).unwrap().equal(&emb.aux(&ids, &cats).unwrap()));
    }

    #[test]
    fn padding_rows_do_not_leak_into_masked_sums() {
        let vs = nn::VarStore::new(Device::Cpu);
        let emb = Embeddings::new(&vs.root(), &VOCAB, 3, true, &item_cats()).unwrap();
        let ids = batch(3, 4, 5, &VOCAB, false);
        let before = crate::model::layers::masked_sum(&emb.forward(&ids).main.hist, &ids.hist_mask);
        // Huge values in every table's padding row change nothing once the mask is applied.
        tch::no_grad(|| {
            for (_, table) in vs.variables() {
                let _ = table.get(0).fill_(1e6);
            }
        });
        let out = emb.forward(&ids);
        let after = crate::model::layers::masked_sum(&out.main.hist, &ids.hist_mask);
        assert!(before.equal(&after), "{before} vs {after}");
        assert!(out.main.hist.abs().max().double_value(&[]) >= 1e6, "the batch must contain padding");
    }

    #[test]
    fn a_bad_item_category_table_is_refused_with_the_reason() {
        let vs = nn::VarStore::new(Device::Cpu);
        let short = Tensor::from_slice(&[0i64, 1]);
        let err = Embeddings::new(&vs.root(), &VOCAB, 3, true, &short).unwrap_err().to_string();
        assert!(err.contains("shape [9]"), "{err}");
        let out_of_range = Tensor::from_slice(&[0i64, 1, 1, 2, 2, 3, 3, 1, 4]);
        let err = Embeddings::new(&vs.root(), &VOCAB, 3, true, &out_of_range).unwrap_err().to_string();
        assert!(err.contains("outside 0..4"), "{err}");
    }
}
