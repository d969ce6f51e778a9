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
//! lookups read, copied out per table and per task, so the backward pass yields each table's
//! gradient at those rows, dense, and one pass keeps the main and auxiliary gradients apart.
use tch::{nn, Kind, Tensor};

use super::ModelError;
use crate::data::batch::Batch;
use crate::transfer::{Piece, Upload, Uploaded};

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
    /// Where the real behaviours are.
    pub real: RealSlots,
}

/// The real slots of a batch's left-aligned histories `[b, T]`, worked out on the host where the
/// mask is ([`RealSlots::lists`]), so that the layers that score each behaviour (the attention
/// units, DIEN's auxiliary loss) compute on real behaviours only, and DIEN's recurrences on the
/// rows whose history still runs, with no data-dependent shape to read back from the device.
#[derive(Debug)]
pub struct RealSlots {
    /// `[n]` i64: every real slot as the flat index `i·T + t`, in row-major order.
    pub slots: Tensor,
    /// `[n]` i64: the sample `i` of each of them.
    pub samples: Tensor,
    /// `[m]` i64: the real slots `t` whose next slot `t + 1` is real too (DIEN's transitions).
    pub transitions: Tensor,
    /// `[n]` i64: the real slots again (flat indices `i·T + t`), packed step by step as
    /// PyTorch's packed sequences are: step 0's rows, then step 1's, …, each step's rows by
    /// decreasing history length (ties in row order), so that the rows still running at step
    /// `t` are the first `active[t]` of those running at `t − 1`.
    pub packed: Tensor,
    /// `[b]` i64: each row's last real slot as a position in `packed`; `n` for an empty history.
    pub last: Tensor,
    /// For every step `t`, how many rows have a behaviour there.
    pub active: Vec<i64>,
}

/// The index lists of [`RealSlots`] on the host, in field order, and its `active` counts.
pub type RealSlotLists = ([Vec<i64>; 5], Vec<i64>);

impl RealSlots {
    /// The lists from a row-major `[b, T]` mask on the host (1 for a real behaviour; real
    /// behaviours left-aligned, as the loader collates them).
    pub fn lists(hist_mask: &[f32], steps: usize) -> RealSlotLists {
        let real = |k: usize| hist_mask[k] > 0.0;
        let slots: Vec<i64> = (0..hist_mask.len()).filter(|&k| real(k)).map(|k| k as i64).collect();
        let samples = slots.iter().map(|&k| k / steps.max(1) as i64).collect();
        let transitions =
            slots.iter().filter(|&&k| (k as usize + 1) % steps != 0 && real(k as usize + 1)).copied().collect();
        let lengths: Vec<usize> =
            hist_mask.chunks(steps.max(1)).map(|row| row.iter().filter(|&&m| m > 0.0).count()).collect();
        debug_assert!(
            hist_mask.chunks(steps.max(1)).zip(&lengths).all(|(row, &n)| row[..n].iter().all(|&m| m > 0.0)),
            "real behaviours are left-aligned"
        );
        let mut by_length: Vec<usize> = (0..lengths.len()).collect();
        by_length.sort_by_key(|&i| std::cmp::Reverse(lengths[i]));
        let active: Vec<i64> = (0..steps).map(|t| lengths.iter().filter(|&&n| n > t).count() as i64).collect();
        let mut packed = Vec::with_capacity(slots.len());
        let mut last = vec![slots.len() as i64; lengths.len()];
        for (t, &running) in active.iter().enumerate() {
            for &row in &by_length[..running as usize] {
                if lengths[row] == t + 1 {
                    last[row] = packed.len() as i64;
                }
                packed.push((row * steps + t) as i64);
            }
        }
        ([slots, samples, transitions, packed, last], active)
    }

    /// From the lists on the device, in field order.
    pub fn from_parts([slots, samples, transitions, packed, last]: [Tensor; 5], active: Vec<i64>) -> Self {
        Self { slots, samples, transitions, packed, last, active }
    }

    /// From a mask on the host, in one upload to `device` (the training step and
    /// [`BatchIds::from_batch`] add the lists to their own upload instead).
    pub fn from_host_mask(hist_mask: &[f32], steps: usize, device: tch::Device) -> Self {
        let (lists, active) = Self::lists(hist_mask, steps);
        let mut upload = Upload::new();
        let pieces = lists.map(|list| upload.i64(&list));
        let sent = upload.send(device);
        Self::from_parts(pieces.map(|piece| sent.get(piece)), active)
    }

    /// From a `[b, T]` mask tensor (read back to the host: for tests and tools).
    pub fn from_mask(hist_mask: &Tensor) -> Self {
        let steps = hist_mask.size()[1] as usize;
        Self::from_host_mask(&crate::transfer::download_f32(hist_mask), steps, hist_mask.device())
    }

    pub fn shallow_clone(&self) -> Self {
        Self {
            slots: self.slots.shallow_clone(),
            samples: self.samples.shallow_clone(),
            transitions: self.transitions.shallow_clone(),
            packed: self.packed.shallow_clone(),
            last: self.last.shallow_clone(),
            active: self.active.clone(),
        }
    }
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
            real: self.real.shallow_clone(),
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

/// Where a batch's ids lie in an [`Upload`] ([`BatchIds::add_to`]).
#[derive(Debug)]
pub struct BatchPieces {
    shape: [i64; 2],
    users: Piece,
    items: Piece,
    cats: Piece,
    hist_items: Piece,
    hist_cats: Piece,
    hist_mask: Piece,
    noclick: Option<(Piece, Piece)>,
    /// The real slots' lists and active counts ([`RealSlots`]).
    real: ([Piece; 5], Vec<i64>),
}

impl BatchIds {
    /// Adds a host batch's ids, mask and real slots to `upload`.
    pub fn add_to(batch: &Batch, upload: &mut Upload) -> BatchPieces {
        let (lists, active) = RealSlots::lists(&batch.hist_mask, batch.hist_len);
        BatchPieces {
            shape: [batch.len() as i64, batch.hist_len as i64],
            users: upload.i64(&batch.users),
            items: upload.i64(&batch.items),
            cats: upload.i64(&batch.cats),
            hist_items: upload.i64(&batch.hist_items),
            hist_cats: upload.i64(&batch.hist_cats),
            hist_mask: upload.f32(&batch.hist_mask),
            noclick: batch.noclick.as_ref().map(|(items, cats)| (upload.i64(items), upload.i64(cats))),
            real: (lists.map(|list| upload.i64(&list)), active),
        }
    }

    /// A host batch on `device`, in one upload.
    pub fn from_batch(batch: &Batch, device: tch::Device) -> Self {
        let mut upload = Upload::new();
        let pieces = Self::add_to(batch, &mut upload);
        pieces.read(&upload.send(device))
    }
}

impl BatchPieces {
    /// The ids from the upload's buffer on the device (views of it).
    pub fn read(&self, sent: &Uploaded) -> BatchIds {
        let history = |piece: Piece| sent.get(piece).view(self.shape);
        BatchIds {
            users: sent.get(self.users),
            items: sent.get(self.items),
            cats: sent.get(self.cats),
            hist_items: history(self.hist_items),
            hist_cats: history(self.hist_cats),
            hist_mask: history(self.hist_mask),
            noclick: self.noclick.map(|(items, cats)| NoClick { items: history(items), cats: history(cats) }),
            real: RealSlots::from_parts(self.real.0.map(|piece| sent.get(piece)), self.real.1.clone()),
        }
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
    /// A retrieval objective's sampled negatives (MIND's), in training: their ids `[N]` (i64) and
    /// `e` `[N, w]`.
    pub negatives: Option<(Tensor, Tensor)>,
    /// The ids themselves, for models with id features (Wide&Deep's crosses).
    pub ids: BatchIds,
    /// In a training step, the rows of the main model's own table updated by rows (Wide&Deep's
    /// hashed weights, the attribute embeddings) at every lookup the model makes, in the order of
    /// [`crate::model::MainModel::row_lookups`], read from a row leaf. `None`: the model looks
    /// them up in its table.
    pub planned_rows: Option<Tensor>,
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

    /// The main model's item vectors `e = e_orig ⊕ e_aux` (`e_orig` alone without MICN), as
    /// [`Embeddings::forward`] gives the target's (evaluation: no gradient scaling).
    ///
    /// # Shapes
    /// `items [..]`, `cats [..]` (same shape) → `[.., w]`
    pub fn item_vectors(&self, items: &Tensor, cats: &Tensor) -> Tensor {
        match self.aux(items, cats) {
            Some(aux) => Tensor::cat(&[self.orig(items, cats), aux], -1),
            None => self.orig(items, cats),
        }
    }

    /// `e` of arbitrary items as the main task reads them: [`Embeddings::item_vectors`] with the
    /// main task's gradient scale on the `e_aux` half (see [`Embeddings::with_gradient_scales`]).
    pub fn main_item_vectors(&self, items: &Tensor, cats: &Tensor) -> Tensor {
        match self.aux(items, cats) {
            Some(aux) => Tensor::cat(&[self.orig(items, cats), self.for_main(aux)], -1),
            None => self.orig(items, cats),
        }
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
            negatives: None,
            ids: ids.shallow_clone(),
            planned_rows: None,
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

/// The rows of one table that one task reads in a training step: one row per distinct id,
/// copied out of the table into a leaf tensor that the lookups then index. The backward pass
/// sums every lookup's gradient into its row (`index_select`'s backward, an `index_add_`: on the
/// CPU in lookup order, the same bits every time), so the leaf's gradient is the table's gradient
/// at those rows, dense, with no sparse gradient to coalesce. The `e_aux` tables get one leaf per
/// task, so a single backward pass keeps the two tasks' gradients apart.
#[derive(Debug)]
pub struct RowLeaf {
    pub owner: TableOwner,
    /// The table's variable name under its owner's path (`user`, `item`, `cat_aux`, ...;
    /// `crosses.weights`, `attributes`).
    pub table: &'static str,
    pub task: Task,
    /// Distinct ids, ascending.
    pub ids: Vec<i64>,
    /// `ids` on the leaf's device, `[rows]` i64.
    pub ids_on_device: Tensor,
    /// `[ids.len(), d]`, requires grad.
    pub leaf: Tensor,
}

/// Who owns a table read through row leaves: the framework's embeddings, or the main model (its
/// own table updated by rows: Wide&Deep's hashed weights, the attribute embeddings).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TableOwner {
    Embeddings,
    MainModel,
}

/// A training batch embedded from row leaves ([`Embeddings::forward_train`]).
#[derive(Debug)]
pub struct TrainingInput {
    pub embedded: Embedded,
    /// MICN's sampled negatives when they were given: their ids `[K]` (i64) and `e_aux` `[K, 2d]`.
    pub negatives: Option<(Tensor, Tensor)>,
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

/// The ids of a batch read back from its tensors (counted downloads), for a [`HostIds`] of a
/// batch that is only on the device.
#[derive(Debug)]
pub struct DownloadedIds {
    users: Vec<i64>,
    items: Vec<i64>,
    cats: Vec<i64>,
    hist_items: Vec<i64>,
    hist_cats: Vec<i64>,
    noclick: Option<(Vec<i64>, Vec<i64>)>,
}

impl DownloadedIds {
    pub fn of(ids: &BatchIds) -> Self {
        use crate::transfer::download_i64;
        Self {
            users: download_i64(&ids.users),
            items: download_i64(&ids.items),
            cats: download_i64(&ids.cats),
            hist_items: download_i64(&ids.hist_items),
            hist_cats: download_i64(&ids.hist_cats),
            noclick: ids.noclick.as_ref().map(|n| (download_i64(&n.items), download_i64(&n.cats))),
        }
    }

    pub fn host(&self) -> HostIds<'_> {
        HostIds {
            users: &self.users,
            items: &self.items,
            cats: &self.cats,
            hist_items: &self.hist_items,
            hist_cats: &self.hist_cats,
            noclick: self.noclick.as_ref().map(|(items, cats)| (items.as_slice(), cats.as_slice())),
        }
    }
}

/// The distinct ids of `lookups`, ascending, and for every lookup the index of its id among them.
fn distinct_rows(lookups: &[i64]) -> (Vec<i64>, Vec<i64>) {
    let mut distinct = lookups.to_vec();
    distinct.sort_unstable();
    distinct.dedup();
    let index = lookups
        .iter()
        .map(|id| distinct.binary_search(id).expect("every id is among the distinct ones") as i64)
        .collect();
    (distinct, index)
}

/// Lookups planned on the host: their distinct ids (ascending) and every lookup's index among
/// them, both added to the step's upload.
#[derive(Debug)]
pub struct PlannedRows {
    ids: Vec<i64>,
    ids_piece: Piece,
    index_piece: Piece,
}

impl PlannedRows {
    /// Plans `lookups` (ids, in the order they are read) and adds them to `upload`.
    pub fn new(lookups: &[i64], upload: &mut Upload) -> Self {
        let (ids, index) = distinct_rows(lookups);
        let (ids_piece, index_piece) = (upload.i64(&ids), upload.i64(&index));
        Self { ids, ids_piece, index_piece }
    }

    /// A row leaf of `table` (the variable `owner`'s `name`) for `task` at the planned ids, and
    /// the rows of every lookup read from it, `[lookups, width]`, from the pieces `sent` holds
    /// on the device. No transfer.
    pub fn gather(
        &self,
        table: &Tensor,
        (owner, name): (TableOwner, &'static str),
        task: Task,
        sent: &Uploaded,
    ) -> (RowLeaf, Tensor) {
        let ids_on_device = sent.get(self.ids_piece);
        let leaf = tch::no_grad(|| table.index_select(0, &ids_on_device)).set_requires_grad(true);
        let rows = leaf.index_select(0, &sent.get(self.index_piece));
        (RowLeaf { owner, table: name, task, ids: self.ids.clone(), ids_on_device, leaf }, rows)
    }
}

/// The lookups of one or more tables that share their ids (`item` and `item_aux`, say).
#[derive(Debug)]
struct PlannedGather {
    tables: Vec<&'static str>,
    task: Task,
    rows: PlannedRows,
}

/// The row leaves of one training batch, planned on the host before the step's upload
/// ([`Embeddings::plan_leaves`]).
#[derive(Debug)]
pub struct LeafPlan {
    gathers: Vec<PlannedGather>,
    noclick: bool,
    /// MICN's negatives.
    negatives: Option<(Piece, usize)>,
    /// The main model's negatives (a retrieval objective's).
    main_negatives: Option<(Piece, usize)>,
}

impl LeafPlan {
    /// The distinct ids `task` reads from `table`, if it reads it.
    pub fn ids(&self, table: &str, task: Task) -> Option<&[i64]> {
        self.gathers.iter().find(|g| g.task == task && g.tables.contains(&table)).map(|g| g.rows.ids.as_slice())
    }
}

impl Embeddings {
    fn table(&self, name: &str) -> &Tensor {
        match (name, &self.aux) {
            ("user", _) => &self.user,
            ("item", _) => &self.item,
            ("cat", _) => &self.cat,
            ("item_aux", Some(aux)) => &aux.item_aux,
            ("cat_aux", Some(aux)) => &aux.cat_aux,
            _ => unreachable!("no embedding table {name}"),
        }
    }

    /// Plans the row leaves of a training batch from its ids on the host (`host`), MICN's
    /// sampled `negatives` and the main model's (`main_negatives`, a retrieval objective's): adds
    /// every leaf's distinct ids and lookup indices, and the negatives, to `upload`. The main
    /// task's lookups (the `e_orig` tables and its `e_aux` half of `e`, its negatives' too) read
    /// [`Task::Main`] leaves, MICN's (`e_aux` of the target, the history and the negatives) the
    /// [`Task::Aux`] ones.
    pub fn plan_leaves(
        &self,
        host: &HostIds<'_>,
        negatives: Option<&[i64]>,
        main_negatives: Option<&[i64]>,
        upload: &mut Upload,
    ) -> LeafPlan {
        let mut plan =
            LeafPlan { gathers: Vec::new(), noclick: host.noclick.is_some(), negatives: None, main_negatives: None };
        let mut add = |tables: Vec<&'static str>, task: Task, groups: &[&[i64]]| {
            plan.gathers.push(PlannedGather { tables, task, rows: PlannedRows::new(&groups.concat(), upload) });
        };
        add(vec!["user"], Task::Main, &[host.users]);
        // e = [item; cat; item_aux; cat_aux] of the targets, the history and the no-clicks at once.
        let (mut items, mut cats) = (vec![host.items, host.hist_items], vec![host.cats, host.hist_cats]);
        if let Some((noclick_items, noclick_cats)) = host.noclick {
            items.push(noclick_items);
            cats.push(noclick_cats);
        }
        let main_negative_cats: Vec<i64> =
            main_negatives.unwrap_or_default().iter().map(|&id| self.item_cats_host[id as usize]).collect();
        if let Some(ids) = main_negatives {
            items.push(ids);
            cats.push(&main_negative_cats);
        }
        let with_aux = |table: &'static str, aux: &'static str| match self.aux {
            Some(_) => vec![table, aux],
            None => vec![table],
        };
        add(with_aux("item", AUX_TABLES[0]), Task::Main, &items);
        add(with_aux("cat", AUX_TABLES[1]), Task::Main, &cats);
        // MICN: e_aux of the targets, the history and the negatives, from its own leaves.
        if let (Some(_), Some(negatives)) = (&self.aux, negatives) {
            let negative_cats: Vec<i64> = negatives.iter().map(|&id| self.item_cats_host[id as usize]).collect();
            add(vec![AUX_TABLES[0]], Task::Aux, &[host.items, host.hist_items, negatives]);
            add(vec![AUX_TABLES[1]], Task::Aux, &[host.cats, host.hist_cats, &negative_cats]);
            plan.negatives = Some((upload.i64(negatives), negatives.len()));
        }
        if let Some(ids) = main_negatives {
            plan.main_negatives = Some((upload.i64(ids), ids.len()));
        }
        plan
    }

    /// Embeds a training batch through the row leaves of `plan`, whose pieces `sent` holds on the
    /// device: the same values as [`Embeddings::forward`] of `ids`. No transfer.
    pub fn forward_train_planned(&self, ids: &BatchIds, plan: LeafPlan, sent: &Uploaded) -> TrainingInput {
        let (b, steps) = (ids.len(), ids.hist_items.size()[1]);
        let mut leaves = Vec::new();
        // Per gather, per table: the rows of every lookup in turn.
        let rows: Vec<Vec<Tensor>> = plan
            .gathers
            .into_iter()
            .map(|g| {
                g.tables
                    .iter()
                    .map(|&table| {
                        let (leaf, rows) =
                            g.rows.gather(self.table(table), (TableOwner::Embeddings, table), g.task, sent);
                        leaves.push(leaf);
                        rows
                    })
                    .collect()
            })
            .collect();
        let (user, main_items, main_cats) = (&rows[0][0], &rows[1], &rows[2]);
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
            noclick: (plan.noclick && ids.noclick.is_some()).then(|| history(&e, b + b * steps)),
            negatives: plan.main_negatives.map(|(piece, count)| {
                let start = b + b * steps * if plan.noclick { 2 } else { 1 };
                (sent.get(piece), e.narrow(0, start, count as i64))
            }),
            ids: ids.shallow_clone(),
            planned_rows: None,
        };
        let (aux, negatives) = match (rows.get(3), rows.get(4), plan.negatives) {
            (Some(item_rows), Some(cat_rows), Some((piece, count))) => {
                let e_aux = Tensor::cat(&[&item_rows[0], &cat_rows[0]], -1);
                let input = AuxInput {
                    target: e_aux.narrow(0, 0, b),
                    hist: history(&e_aux, b),
                    hist_mask: ids.hist_mask.shallow_clone(),
                };
                (Some(input), Some((sent.get(piece), e_aux.narrow(0, b + b * steps, count as i64))))
            }
            _ => (None, None),
        };
        TrainingInput { embedded: Embedded { main, aux }, negatives, leaves }
    }

    /// [`Embeddings::forward_train_planned`] for a batch whose ids are only on the device: reads
    /// them back (counted downloads) to plan the leaves, then uploads the plan (one upload).
    pub fn forward_train(&self, ids: &BatchIds, negatives: Option<&[i64]>) -> TrainingInput {
        let downloaded = DownloadedIds::of(ids);
        let mut upload = Upload::new();
        let plan = self.plan_leaves(&downloaded.host(), negatives, None, &mut upload);
        let sent = upload.send(self.item.device());
        self.forward_train_planned(ids, plan, &sent)
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
    fn real_slots_are_listed_row_major_and_packed_step_by_step() {
        // Rows of lengths 2, 0 and 3 over T = 3.
        let mask = [1.0f32, 1., 0., 0., 0., 0., 1., 1., 1.];
        let ([slots, samples, transitions, packed, last], active) = RealSlots::lists(&mask, 3);
        assert_eq!((slots, samples, transitions), (vec![0, 1, 6, 7, 8], vec![0, 0, 2, 2, 2], vec![0, 6, 7]));
        // By decreasing length: rows 2, 0 (1 is empty). Step 0: slots 6, 0; step 1: 7, 1; step 2: 8.
        assert_eq!(active, [2, 2, 1]);
        assert_eq!(packed, [6, 0, 7, 1, 8]);
        // Row 0 ends at packed position 3 (slot 1), row 2 at 4 (slot 8); row 1 at n = 5.
        assert_eq!(last, [3, 5, 4]);
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
        let (negative_ids, negative_rows) = negative_rows.unzip();
        assert_eq!(Vec::<i64>::try_from(negative_ids.unwrap()).unwrap(), negatives);
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
            assert!(leaf.ids_on_device.equal(&Tensor::from_slice(&leaf.ids)));
            let rows = g.view_as(&expected);
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
