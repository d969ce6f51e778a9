//! Vocabularies: ids by descending frequency in the training samples, ties by name, with id 0
//! reserved for padding and unknowns (`default_mid`, `default_cat`, an unknown user). Frequency
//! order makes a log-uniform sampler over ids approximate item popularity (MICN's negatives).
//!
//! On disk: `users.tsv`, `items.tsv`, `cats.tsv`, one `name \t count` line per id in id order
//! (`items.tsv` also holds the item's category id), beginning with the reserved id 0.
use std::io::Write as _;
use std::path::Path;

use super::protocol::{Interner, DEFAULT_CAT};
use super::samples::Samples;
use super::DataError;
use crate::io_error::{PathIo, WithPath};

pub const UNKNOWN_USER: &str = "unknown_user";
pub const DEFAULT_MID: &str = "default_mid";

/// A name or value as a TSV field can hold it: tabs and line breaks become spaces (a raw id or
/// category written with them would split its line).
pub fn tsv_field(value: &str) -> std::borrow::Cow<'_, str> {
    match value.contains(['\t', '\n', '\r']) {
        true => value.replace(['\t', '\n', '\r'], " ").into(),
        false => value.into(),
    }
}

/// One vocabulary: names and training frequencies by id.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Vocab {
    pub names: Vec<String>,
    pub counts: Vec<u64>,
}

impl Vocab {
    pub fn len(&self) -> usize {
        self.names.len()
    }

    pub fn is_empty(&self) -> bool {
        self.names.is_empty()
    }

    /// Order `counts` (indexed by intern id) by descending count then name; intern ids with no
    /// count, and `reserved` (if given), map to 0. Returns the vocabulary and the map
    /// intern id → vocabulary id.
    fn by_frequency(
        interner: &Interner,
        counts: &[u64],
        zero_name: &str,
        reserved: Option<u32>,
        file: &str,
    ) -> (Vocab, Vec<u32>) {
        let mut ranked: Vec<u32> =
            (0..interner.len() as u32).filter(|&i| counts[i as usize] > 0 && Some(i) != reserved).collect();
        ranked
            .sort_by(|&a, &b| counts[b as usize].cmp(&counts[a as usize]).then(interner.name(a).cmp(interner.name(b))));
        let mut map = vec![0u32; interner.len()];
        let mut vocab =
            Vocab { names: vec![zero_name.to_string()], counts: vec![reserved.map_or(0, |r| counts[r as usize])] };
        let mut respaced = None;
        for (rank, &i) in ranked.iter().enumerate() {
            map[i as usize] = rank as u32 + 1;
            let name = tsv_field(interner.name(i));
            if let std::borrow::Cow::Owned(_) = name {
                respaced.get_or_insert((interner.name(i), 0)).1 += 1;
            }
            vocab.names.push(name.into_owned());
            vocab.counts.push(counts[i as usize]);
        }
        if let Some((first, n)) = respaced {
            tracing::warn!(
                "{file}: {n} name(s) held a tab or a line break, written with spaces instead (first: {first:?})"
            );
        }
        (vocab, map)
    }
}

/// The three vocabularies and the item → category table, in vocabulary ids.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Vocabularies {
    pub users: Vocab,
    pub items: Vocab,
    pub cats: Vocab,
    /// Category id of every item id (`item_cat[0] = 0`).
    pub item_cat: Vec<u32>,
}

/// Maps from intern ids to vocabulary ids.
pub struct IdMaps {
    pub users: Vec<u32>,
    pub items: Vec<u32>,
    pub cats: Vec<u32>,
}

/// Count users, items (targets and history) and categories in `train` and rank them.
/// `item_cat` gives each item's category intern id.
pub fn build(
    train: &Samples,
    users: &Interner,
    items: &Interner,
    cats: &Interner,
    item_cat: &[u32],
) -> (Vocabularies, IdMaps) {
    let mut user_counts = vec![0u64; users.len()];
    let mut item_counts = vec![0u64; items.len()];
    let mut cat_counts = vec![0u64; cats.len()];
    train.users.iter().for_each(|&u| user_counts[u as usize] += 1);
    for &i in train.items.iter().chain(&train.hist_items) {
        item_counts[i as usize] += 1;
    }
    for &c in train.cats.iter().chain(&train.hist_cats) {
        cat_counts[c as usize] += 1;
    }
    let (user_vocab, user_map) = Vocab::by_frequency(users, &user_counts, UNKNOWN_USER, None, "users.tsv");
    let (item_vocab, item_map) = Vocab::by_frequency(items, &item_counts, DEFAULT_MID, None, "items.tsv");
    let (cat_vocab, cat_map) = Vocab::by_frequency(cats, &cat_counts, DEFAULT_CAT, cats.get(DEFAULT_CAT), "cats.tsv");
    let mut vocab_item_cat = vec![0u32; item_vocab.len()];
    for (intern, &id) in item_map.iter().enumerate() {
        if id != 0 {
            vocab_item_cat[id as usize] = cat_map[item_cat[intern] as usize];
        }
    }
    (
        Vocabularies { users: user_vocab, items: item_vocab, cats: cat_vocab, item_cat: vocab_item_cat },
        IdMaps { users: user_map, items: item_map, cats: cat_map },
    )
}

impl Vocabularies {
    /// What the ids mean, hashed (xxh3-64, hex): every user, item and category name in id order,
    /// and every item's category. Counts are left out: another dataset whose ids mean the same
    /// may score a model trained on this one. Recorded with every model, so that a dataset
    /// prepared again under the same path is told apart.
    pub fn digest(&self) -> String {
        let mut hasher = xxhash_rust::xxh3::Xxh3::new();
        for vocab in [&self.users, &self.items, &self.cats] {
            hasher.update(&(vocab.names.len() as u64).to_le_bytes());
            for name in &vocab.names {
                hasher.update(name.as_bytes());
                hasher.update(b"\n");
            }
        }
        for cat in &self.item_cat {
            hasher.update(&cat.to_le_bytes());
        }
        format!("{:016x}", hasher.digest())
    }

    /// The three TSV files, names and bytes, in the order [`Vocabularies::parse`] takes them.
    pub fn to_files(&self) -> [(&'static str, Vec<u8>); 3] {
        let tsv = |vocab: &Vocab, extra: Option<&[u32]>| -> Vec<u8> {
            let mut out = Vec::new();
            for (id, (n, c)) in vocab.names.iter().zip(&vocab.counts).enumerate() {
                match extra {
                    Some(cats) => writeln!(out, "{n}\t{c}\t{}", cats[id]),
                    None => writeln!(out, "{n}\t{c}"),
                }
                .expect("writing to a Vec cannot fail");
            }
            out
        };
        [
            ("users.tsv", tsv(&self.users, None)),
            ("items.tsv", tsv(&self.items, Some(&self.item_cat))),
            ("cats.tsv", tsv(&self.cats, None)),
        ]
    }

    /// Write the three TSV files into `dir` (a prepared dataset writes them through its staging
    /// directory instead, see `prepare::write_dataset`).
    pub fn write(&self, dir: &Path) -> Result<(), DataError> {
        for (name, bytes) in self.to_files() {
            let path = dir.join(name);
            std::fs::write(&path, bytes).with_path(&path)?;
        }
        Ok(())
    }

    /// Read what [`Vocabularies::write`] wrote, unchecked (`Dataset::open` checks the files
    /// against `dataset.json` first and calls [`Vocabularies::parse`]).
    pub fn read(dir: &Path) -> Result<Self, DataError> {
        let [users, items, cats] = ["users.tsv", "items.tsv", "cats.tsv"].map(|name| {
            let path = dir.join(name);
            std::fs::read(&path).map_err(|source| DataError::Io(PathIo { path, source }))
        });
        Self::parse(dir, [users?, items?, cats?])
    }

    /// Parse the bytes of `users.tsv`, `items.tsv` and `cats.tsv` of `dir` (named in errors).
    pub fn parse(dir: &Path, [users, items, cats]: [Vec<u8>; 3]) -> Result<Self, DataError> {
        let parse = |name: &str, bytes: &[u8], with_cat: bool| -> Result<(Vocab, Vec<u32>), DataError> {
            let path = dir.join(name);
            let text = std::str::from_utf8(bytes).map_err(|e| DataError::Invalid {
                path: path.clone(),
                message: format!("not UTF-8 (byte {})", e.valid_up_to()),
            })?;
            let (mut vocab, mut cats) = (Vocab::default(), Vec::new());
            for (i, line) in text.lines().enumerate() {
                let bad =
                    |what: &str| DataError::Invalid { path: path.clone(), message: format!("line {}: {what}", i + 1) };
                let fields: Vec<&str> = line.split('\t').collect();
                if fields.len() != 2 + usize::from(with_cat) {
                    return Err(bad("wrong number of fields"));
                }
                vocab.names.push(fields[0].to_string());
                vocab.counts.push(fields[1].parse().map_err(|_| bad("count is not a number"))?);
                if with_cat {
                    cats.push(fields[2].parse().map_err(|_| bad("category id is not a number"))?);
                }
            }
            if vocab.is_empty() {
                return Err(DataError::Invalid { path, message: "empty vocabulary (id 0 is always present)".into() });
            }
            Ok((vocab, cats))
        };
        let (users, _) = parse("users.tsv", &users, false)?;
        let (items, item_cat) = parse("items.tsv", &items, true)?;
        let (cats, _) = parse("cats.tsv", &cats, false)?;
        if let Some(bad) = item_cat.iter().position(|&c| c as usize >= cats.len()) {
            return Err(DataError::Invalid {
                path: dir.join("items.tsv"),
                message: format!("line {}: category id {} is outside cats.tsv", bad + 1, item_cat[bad]),
            });
        }
        Ok(Self { users, items, cats, item_cat })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::data::samples::Row;

    #[test]
    fn ids_follow_descending_frequency_with_zero_reserved() {
        let mut users = Interner::default();
        let mut items = Interner::default();
        let mut cats = Interner::default();
        let dc = cats.intern(DEFAULT_CAT);
        let (ua, ub) = (users.intern("ua"), users.intern("ub"));
        let (x, y, z, unused) = (items.intern("x"), items.intern("y"), items.intern("z"), items.intern("unused"));
        let c1 = cats.intern("c1");
        let item_cat = vec![c1, dc, c1, c1];
        let mut train = Samples::default();
        // Targets and histories count: x 3, y 3, z 2; the x–y tie is broken by name.
        train.push(Row {
            label: 1,
            user: ub,
            user_key: ub,
            item: y,
            cat: dc,
            hist_items: &[x, z],
            hist_cats: &[c1, c1],
        });
        train.push(Row {
            label: 0,
            user: ub,
            user_key: ub,
            item: y,
            cat: dc,
            hist_items: &[x, z, y],
            hist_cats: &[c1, c1, dc],
        });
        train.push(Row { label: 1, user: ua, user_key: ua, item: x, cat: c1, hist_items: &[], hist_cats: &[] });
        let (v, maps) = build(&train, &users, &items, &cats, &item_cat);
        assert_eq!(v.items.names, ["default_mid", "x", "y", "z"]);
        assert_eq!(v.items.counts, [0, 3, 3, 2]);
        assert_eq!(maps.items[unused as usize], 0, "an item never seen in training is unknown");
        assert_eq!(v.users.names, ["unknown_user", "ub", "ua"]);
        // default_cat is id 0 however frequent.
        assert_eq!(v.cats.names, ["default_cat", "c1"]);
        assert_eq!(v.item_cat, [0, 1, 0, 1]);
    }

    #[test]
    fn names_with_tabs_or_line_breaks_are_written_with_spaces_and_read_back() {
        let (mut users, mut items, mut cats) = (Interner::default(), Interner::default(), Interner::default());
        let user = users.intern("U\t1");
        let item = items.intern("I\r\n2");
        let cat = cats.intern("Arts\nCrafts");
        let mut train = Samples::default();
        let row = Row { label: 1, user, user_key: user, item, cat, hist_items: &[item], hist_cats: &[cat] };
        train.push(row);
        let (v, _) = build(&train, &users, &items, &cats, &[cat]);
        assert_eq!((v.users.names[1].as_str(), v.items.names[1].as_str()), ("U 1", "I  2"));
        assert_eq!(v.cats.names, ["default_cat", "Arts Crafts"]);
        let dir = tempfile::tempdir().unwrap();
        v.write(dir.path()).unwrap();
        assert_eq!(Vocabularies::read(dir.path()).unwrap(), v);
    }

    #[test]
    fn vocabularies_round_trip_through_tsv() {
        let v = Vocabularies {
            users: Vocab { names: vec!["unknown_user".into(), "A1".into()], counts: vec![0, 4] },
            items: Vocab { names: vec!["default_mid".into(), "B1".into()], counts: vec![0, 9] },
            cats: Vocab { names: vec!["default_cat".into(), "Books".into()], counts: vec![1, 8] },
            item_cat: vec![0, 1],
        };
        let dir = tempfile::tempdir().unwrap();
        v.write(dir.path()).unwrap();
        assert_eq!(Vocabularies::read(dir.path()).unwrap(), v);
        std::fs::write(dir.path().join("items.tsv"), "default_mid\t0\t0\nB1\t9\t7\n").unwrap();
        let e = Vocabularies::read(dir.path()).unwrap_err().to_string();
        assert!(e.contains("items.tsv") && e.contains("line 2"), "{e}");
        std::fs::write(dir.path().join("items.tsv"), b"default_mid\t0\t0\nB\xe91\t9\t1\n").unwrap();
        let e = Vocabularies::read(dir.path()).unwrap_err().to_string();
        assert!(e.contains("items.tsv: not UTF-8 (byte 17)"), "{e}");
    }
}
