//! Every item's attribute ids (the dataset's item-attribute table, [`crate::data::attributes`])
//! as a model's input, and their embeddings: what the attribute-aware main models (CAMN, MFN's
//! fine-grained features) read beside the framework's item vectors.
//!
//! The ids travel inside the model, as the buffer [`ITEM_ATTRIBUTES`] (f32, exact below 2²⁴), so
//! a model file carries the table it was trained with (for `micn predict` and the twin); the
//! embedding table [`ATTRIBUTE_TABLE`] is updated by rows, as the framework's tables are. Columns
//! that hold no value for any item are left out; id 0 (no value) has a learned row.
use tch::nn;
use tch::Tensor;

use super::{ModelError, RowLookups};

/// Path of the attribute-embedding table under the model's path.
pub const ATTRIBUTE_TABLE: &str = "attributes";
/// Path of every item's attribute ids under the model's path.
pub const ITEM_ATTRIBUTES: &str = "item_attributes";
/// Attribute ids a model may hold: all exact in f32.
const MAX_VALUES: i64 = 1 << 24;

/// Every item's attribute ids, the model's input beside the embeddings.
#[derive(Debug)]
pub struct ItemAttributeIds {
    /// `[items, columns]` i64, row 0 (padding) all 0.
    pub table: Tensor,
    /// Attribute ids in use, 0 (no value) included.
    pub values: i64,
}

impl ItemAttributeIds {
    /// From the dataset's table (`[items, columns]` row-major u32): the columns that hold a value
    /// for at least one item.
    pub fn from_rows(table: &[u32], columns: usize, values: usize) -> Self {
        let items = table.len().checked_div(columns).unwrap_or(0);
        let used: Vec<usize> = (0..columns).filter(|&c| (0..items).any(|i| table[i * columns + c] != 0)).collect();
        let ids: Vec<i64> = (0..items).flat_map(|i| used.iter().map(move |&c| table[i * columns + c] as i64)).collect();
        Self { table: Tensor::from_slice(&ids).view([items as i64, used.len() as i64]), values: values as i64 }
    }

    /// Columns with a value for some item.
    pub fn columns(&self) -> i64 {
        self.table.size()[1]
    }

    fn check(&self, items: i64) -> Result<(), ModelError> {
        let size = self.table.size();
        let why = if size.len() != 2 || size[0] != items {
            format!("has shape {size:?}, not [{items}, columns]")
        } else if size[1] == 0 {
            "has no column with a value for any item".to_string()
        } else if self.values > MAX_VALUES {
            format!("has {} attribute ids, more than {MAX_VALUES}", self.values)
        } else if self.table.numel() > 0
            && (self.table.min().int64_value(&[]) < 0 || self.table.max().int64_value(&[]) >= self.values)
        {
            format!("holds ids outside 0..{}", self.values)
        } else {
            return Ok(());
        };
        Err(ModelError::Attributes { why })
    }
}

/// The attribute ids of every item and an embedding of every id.
#[derive(Debug)]
pub struct AttributeEmbeddings {
    /// `[values, w]`.
    table: Tensor,
    /// `[items, columns]` ids, f32.
    ids: Tensor,
    /// The same ids on the host, row-major, to plan a training step's row leaf (see
    /// [`AttributeEmbeddings::host_ids_agree`]).
    host_ids: Vec<i64>,
}

impl AttributeEmbeddings {
    /// Embeddings of width `width` for the ids of `items` items, under `p`.
    pub fn new(p: &nn::Path, ids: &ItemAttributeIds, items: i64, width: i64) -> Result<Self, ModelError> {
        ids.check(items)?;
        let bound = (6.0 / (ids.values + width) as f64).sqrt();
        let table = p.var(ATTRIBUTE_TABLE, &[ids.values, width], nn::Init::Uniform { lo: -bound, up: bound });
        let stored = p.zeros_no_train(ITEM_ATTRIBUTES, &[items, ids.table.size()[1]]);
        tch::no_grad(|| stored.shallow_clone().copy_(&ids.table.to_kind(stored.kind())));
        Ok(Self { table, ids: stored, host_ids: crate::transfer::download_i64(&ids.table) })
    }

    /// Whether the ids the model holds are still those it was built with, which plan its training
    /// steps: a checkpoint loaded into it overwrites them (one download).
    pub fn host_ids_agree(&self) -> bool {
        crate::transfer::download_i64(&self.ids) == self.host_ids
    }

    /// The lookups of the attributes of `items` (each group in turn, in order), from their ids
    /// on the host: every item's `columns` attribute ids.
    pub fn row_lookups(&self, name: &'static str, items: &[&[i64]]) -> RowLookups {
        let columns = self.columns() as usize;
        let ids = items
            .iter()
            .flat_map(|group| group.iter())
            .flat_map(|&item| &self.host_ids[item as usize * columns..][..columns])
            .copied()
            .collect();
        RowLookups { table: name, variable: self.table.shallow_clone(), ids }
    }

    /// Attribute columns per item.
    pub fn columns(&self) -> i64 {
        self.ids.size()[1]
    }

    /// The embeddings of the attributes of `items` (any shape `S`): `[S…, columns, w]`. In a
    /// training step, read from `planned` (the rows of every lookup planned by
    /// [`AttributeEmbeddings::row_lookups`]) from lookup `first` on.
    pub fn embed(&self, items: &Tensor, planned: Option<&Tensor>, first: i64) -> Tensor {
        let mut shape = items.size();
        shape.push(self.columns());
        match planned {
            Some(rows) => {
                let lookups = shape.iter().product();
                shape.push(*rows.size().last().expect("[lookups, w]"));
                rows.narrow(0, first, lookups).view(shape.as_slice())
            }
            None => {
                let ids = self.ids.index_select(0, &items.flatten(0, -1)).to_kind(tch::Kind::Int64);
                Tensor::embedding(&self.table, &ids.view(shape.as_slice()), -1, false, true)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn columns_without_any_value_are_dropped() {
        // Three columns; the middle one is empty for every item.
        let ids = ItemAttributeIds::from_rows(&[0, 0, 0, 1, 0, 2, 3, 0, 0], 3, 4);
        assert_eq!(ids.table.size(), [3, 2]);
        assert_eq!(Vec::<i64>::try_from(ids.table.view([-1])).unwrap(), [0, 0, 1, 2, 3, 0]);
        assert_eq!(ids.values, 4);
    }

    #[test]
    fn ids_overwritten_by_a_load_no_longer_agree_with_the_host_copy() {
        let vs = tch::nn::VarStore::new(tch::Device::Cpu);
        let ids = ItemAttributeIds::from_rows(&[0, 0, 1, 2, 3, 1], 2, 4);
        let embeddings = AttributeEmbeddings::new(&vs.root(), &ids, 3, 2).unwrap();
        assert!(embeddings.host_ids_agree());
        assert_eq!(embeddings.row_lookups(ATTRIBUTE_TABLE, &[&[2, 1], &[0]]).ids, [3, 1, 1, 2, 0, 0]);
        // Another dataset's table of the same shape, as a checkpoint would load it.
        tch::no_grad(|| {
            embeddings.ids.shallow_clone().copy_(&Tensor::from_slice(&[0f32, 0., 1., 3., 3., 1.]).view([3, 2]))
        });
        assert!(!embeddings.host_ids_agree());
    }
}
