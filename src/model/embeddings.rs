//! The framework-owned embedding tables (SPEC §2.1) and what they produce for one batch: the
//! main model's input `e = e_orig ⊕ e_aux` and, with MICN on, the `e_aux` part on its own.
//!
//! Tables (variables under this module's path): `user [n_users, d]`, `item [n_items, d]`,
//! `cat [n_cats, d]` and, with MICN, `item_aux [n_items, d]`, `cat_aux [n_cats, d]`. Id 0 is
//! padding / unknown; its rows are ordinary rows, and padded history slots are removed by the
//! mask wherever the history is pooled, never by the tables. The main models never see which
//! part of `e` is which.
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

    /// Embeds one batch: `e = e_orig ⊕ e_aux` for the main model, and `e_aux` alone for MICN.
    /// The `e_aux` half of `e` and [`Embedded::aux`] are the same lookups, so a training step
    /// that runs two backward passes (main, then aux) must keep the graph in the first one.
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
    let (lo, hi) = (item_cats.min().int64_value(&[]), item_cats.max().int64_value(&[]));
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
