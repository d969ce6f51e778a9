//! Columnar sample sets: one row per (label, user, target item, history) with the histories in
//! one flat pool (offset + length per sample). The same struct holds samples in intern-id space
//! while preparing and in vocabulary-id space in the archive.
use rkyv::{Archive, Deserialize, Serialize};

/// Samples, columnar. `hist_offsets` has one more entry than there are samples.
#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct Samples {
    pub labels: Vec<u8>,
    pub users: Vec<u32>,
    /// A per-user key that survives vocabulary mapping (unknown test users all map to id 0),
    /// so that GAUC can group by user.
    pub user_keys: Vec<u32>,
    pub items: Vec<u32>,
    pub cats: Vec<u32>,
    pub hist_offsets: Vec<u64>,
    pub hist_items: Vec<u32>,
    pub hist_cats: Vec<u32>,
}

impl Default for Samples {
    fn default() -> Self {
        Self {
            labels: Vec::new(),
            users: Vec::new(),
            user_keys: Vec::new(),
            items: Vec::new(),
            cats: Vec::new(),
            hist_offsets: vec![0],
            hist_items: Vec::new(),
            hist_cats: Vec::new(),
        }
    }
}

/// One sample being added.
pub struct Row<'a> {
    pub label: u8,
    pub user: u32,
    pub user_key: u32,
    pub item: u32,
    pub cat: u32,
    pub hist_items: &'a [u32],
    pub hist_cats: &'a [u32],
}

impl Samples {
    pub fn len(&self) -> usize {
        self.labels.len()
    }

    pub fn is_empty(&self) -> bool {
        self.labels.is_empty()
    }

    pub fn push(&mut self, row: Row<'_>) {
        debug_assert_eq!(row.hist_items.len(), row.hist_cats.len());
        self.labels.push(row.label);
        self.users.push(row.user);
        self.user_keys.push(row.user_key);
        self.items.push(row.item);
        self.cats.push(row.cat);
        self.hist_items.extend_from_slice(row.hist_items);
        self.hist_cats.extend_from_slice(row.hist_cats);
        self.hist_offsets.push(self.hist_items.len() as u64);
    }

    /// History of sample `i`: (items, categories).
    pub fn history(&self, i: usize) -> (&[u32], &[u32]) {
        let (a, b) = (self.hist_offsets[i] as usize, self.hist_offsets[i + 1] as usize);
        (&self.hist_items[a..b], &self.hist_cats[a..b])
    }

    /// The same samples with every id mapped through the three tables (user keys unchanged).
    /// Mapped in place: at Books size a copy would cost as much memory as the samples.
    pub fn remap(mut self, users: &[u32], items: &[u32], cats: &[u32]) -> Samples {
        let map = |ids: &mut [u32], table: &[u32]| ids.iter_mut().for_each(|id| *id = table[*id as usize]);
        map(&mut self.users, users);
        map(&mut self.items, items);
        map(&mut self.cats, cats);
        map(&mut self.hist_items, items);
        map(&mut self.hist_cats, cats);
        self
    }
}

impl ArchivedSamples {
    pub fn len(&self) -> usize {
        self.labels.len()
    }

    pub fn is_empty(&self) -> bool {
        self.labels.is_empty()
    }

    /// Range of sample `i`'s history in the pool.
    pub fn history_range(&self, i: usize) -> std::ops::Range<usize> {
        self.hist_offsets[i].to_native() as usize..self.hist_offsets[i + 1].to_native() as usize
    }
}
