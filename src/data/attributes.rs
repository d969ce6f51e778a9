//! The item-attribute table: `k` attribute columns per item (0 = none), for the models that read
//! item attributes as well as ids and categories.
//!
//! From Amazon meta (`amazon2014`, `amazon2018`, `amazon2023`) the columns are [`META_FIELDS`]:
//! the brand, the first [`CATEGORY_LEVELS`] levels of the item's category path (top level first)
//! and a price bucket ([`price_bucket`]). From a sequences dataset's attributes file (`--item-attributes`)
//! they are `attribute_1` … `attribute_k`: each item's list in its own order, `k` the longest
//! list (at most `--max-attributes`; longer lists are cut, and `prepare` says how many).
//!
//! On disk, covered by `dataset.json` like every other file of the directory:
//!
//! ```text
//! DIR/attributes.tsv       `field \t value \t items` per attribute id, in id order; id 0 is none
//! DIR/item_attributes.u32  [items, k] little-endian u32, row-major, row = item id (row 0 zeros)
//! ```
//!
//! Attribute ids run by descending number of items (in the item vocabulary) that have them, ties
//! by field and value. A meta value is an attribute of its own field (a brand and a category of
//! the same name are two attributes); a sequences dataset's attribute ids are one vocabulary
//! over every column (their field is `attribute`).
use std::collections::HashMap;
use std::io::Write as _;
use std::path::Path;

use super::amazon::ItemMeta;
use super::DataError;

/// The columns filled from Amazon meta.
pub const META_FIELDS: [&str; 6] = ["brand", "category_1", "category_2", "category_3", "category_4", "price"];
/// Category levels kept as columns.
pub const CATEGORY_LEVELS: usize = 4;
/// Upper edges (dollars) of the price buckets below the last, open one.
const PRICE_EDGES: [f64; 7] = [5.0, 10.0, 20.0, 50.0, 100.0, 200.0, 500.0];
/// The field name of every value of a sequences dataset's attributes.
const SHARED_FIELD: &str = "attribute";
/// The name of attribute id 0.
const NONE: &str = "none";

/// The price bucket of `dollars`: `<5`, `5-10`, `10-20`, `20-50`, `50-100`, `100-200`,
/// `200-500`, `500+` (a bucket holds its lower edge).
pub fn price_bucket(dollars: f64) -> String {
    match PRICE_EDGES.iter().position(|&edge| dollars < edge) {
        Some(0) => format!("<{}", PRICE_EDGES[0]),
        Some(i) => format!("{}-{}", PRICE_EDGES[i - 1], PRICE_EDGES[i]),
        None => format!("{}+", PRICE_EDGES[PRICE_EDGES.len() - 1]),
    }
}

/// A value as the TSV can hold it: tabs and line breaks become spaces.
fn clean(value: &str) -> String {
    super::vocab::tsv_field(value).into_owned()
}

/// Attributes as read from the input, by intern item id (before the vocabularies exist).
#[derive(Debug, Default)]
pub struct RawAttributes {
    pub fields: Vec<String>,
    /// Whether a value is the same attribute in every column (a sequences dataset's ids).
    shared_values: bool,
    /// Per intern item id, one value per field (`None`: none); empty for an item without any.
    rows: Vec<Vec<Option<String>>>,
    /// Items whose list was longer than the columns (sequences), and the longest list.
    pub cut: u64,
    pub longest: usize,
}

impl RawAttributes {
    /// The meta columns, for `items` intern ids, none of them filled yet.
    pub fn for_meta(items: usize) -> Self {
        Self { fields: META_FIELDS.map(String::from).to_vec(), rows: vec![vec![]; items], ..Default::default() }
    }

    /// Fill item `item`'s row from its meta line.
    pub fn set_meta(&mut self, item: u32, meta: &ItemMeta) {
        let mut row = vec![meta.brand.as_deref().map(clean)];
        row.extend((0..CATEGORY_LEVELS).map(|level| meta.path.get(level).map(|c| clean(c))));
        row.push(meta.price.map(price_bucket));
        self.rows[item as usize] = row;
    }

    /// A sequences dataset's lists (`lists[intern item]`, the values as text), in at most
    /// `max_columns` columns.
    pub fn from_lists(lists: Vec<Vec<String>>, max_columns: usize) -> Self {
        let longest = lists.iter().map(Vec::len).max().unwrap_or(0);
        let k = longest.min(max_columns);
        let cut = lists.iter().filter(|l| l.len() > k).count() as u64;
        let rows = lists
            .into_iter()
            .map(|list| {
                if list.is_empty() {
                    return vec![];
                }
                let mut row: Vec<Option<String>> = list.into_iter().take(k).map(|v| Some(clean(&v))).collect();
                row.resize(k, None);
                row
            })
            .collect();
        Self { fields: (1..=k).map(|i| format!("attribute_{i}")).collect(), shared_values: true, rows, cut, longest }
    }

    /// The key of a value in column `column`: its field and the value.
    fn key<'a>(&'a self, column: usize, value: &'a str) -> (&'a str, &'a str) {
        (if self.shared_values { SHARED_FIELD } else { &self.fields[column] }, value)
    }
}

/// The item-attribute table in vocabulary ids.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ItemAttributes {
    /// The column names.
    pub fields: Vec<String>,
    /// `(field, value)` of every attribute id; id 0 is none.
    pub names: Vec<(String, String)>,
    /// Items (of the item vocabulary) that have each attribute.
    pub counts: Vec<u64>,
    /// `[items, k]`, row-major.
    pub table: Vec<u32>,
}

/// One column's coverage, for `data stats`.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct FieldStats {
    pub field: String,
    /// Items of the vocabulary (padding aside) with a value in this column.
    pub items_with_value: u64,
    /// Distinct values in this column.
    pub distinct_values: u64,
}

impl ItemAttributes {
    /// The table of the item vocabulary: `item_map[intern id]` is the item's vocabulary id (0
    /// when the item is not in the vocabulary), `n_items` the vocabulary's size.
    pub fn build(raw: &RawAttributes, item_map: &[u32], n_items: usize) -> Self {
        let k = raw.fields.len();
        let in_vocab = || raw.rows.iter().enumerate().filter(|&(intern, _)| item_map[intern] != 0);
        let mut counts: HashMap<(&str, &str), u64> = HashMap::new();
        for (_, row) in in_vocab() {
            // An item counts once per attribute, however many of its columns list it.
            let mut keys: Vec<(&str, &str)> =
                row.iter().enumerate().filter_map(|(column, value)| Some(raw.key(column, value.as_deref()?))).collect();
            keys.sort_unstable();
            keys.dedup();
            for key in keys {
                *counts.entry(key).or_default() += 1;
            }
        }
        let mut ranked: Vec<((&str, &str), u64)> = counts.into_iter().collect();
        ranked.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
        let ids: HashMap<(&str, &str), u32> =
            ranked.iter().enumerate().map(|(i, (key, _))| (*key, i as u32 + 1)).collect();
        let mut table = vec![0u32; n_items * k];
        for (intern, row) in in_vocab() {
            let item = item_map[intern] as usize;
            for (column, value) in row.iter().enumerate() {
                if let Some(value) = value {
                    table[item * k + column] = ids[&raw.key(column, value)];
                }
            }
        }
        let mut names = vec![(String::new(), NONE.to_string())];
        let mut item_counts = vec![0];
        for ((field, value), count) in ranked {
            names.push((field.to_string(), value.to_string()));
            item_counts.push(count);
        }
        Self { fields: raw.fields.clone(), names, counts: item_counts, table }
    }

    /// Columns per item.
    pub fn k(&self) -> usize {
        self.fields.len()
    }

    /// Items in the table (the item vocabulary's size).
    pub fn items(&self) -> usize {
        self.table.len().checked_div(self.k()).unwrap_or(0)
    }

    /// The attribute ids of `item` (0 = none).
    pub fn row(&self, item: usize) -> &[u32] {
        &self.table[item * self.k()..][..self.k()]
    }

    /// `attributes.tsv` and `item_attributes.u32`, names and bytes.
    pub fn to_files(&self) -> [(&'static str, Vec<u8>); 2] {
        let mut tsv = Vec::new();
        for ((field, value), count) in self.names.iter().zip(&self.counts) {
            writeln!(tsv, "{field}\t{value}\t{count}").expect("writing to a Vec cannot fail");
        }
        let table = self.table.iter().flat_map(|id| id.to_le_bytes()).collect();
        [("attributes.tsv", tsv), ("item_attributes.u32", table)]
    }

    /// Read both files back (already checked against their sizes and checksums): every line
    /// well-formed, a table of `items` rows of `fields.len()` columns whose ids are all in the
    /// vocabulary, row 0 empty. Errors name the file and line.
    pub fn parse(dir: &Path, fields: &[String], tsv: &[u8], table: &[u8], items: usize) -> Result<Self, DataError> {
        let tsv_path = dir.join("attributes.tsv");
        let invalid = |path: &Path, message: String| DataError::Invalid { path: path.to_path_buf(), message };
        let text = std::str::from_utf8(tsv).map_err(|e| invalid(&tsv_path, format!("not UTF-8: {e}")))?;
        let mut names = Vec::new();
        let mut counts = Vec::new();
        for (i, line) in text.lines().enumerate() {
            let parts: Vec<&str> = line.split('\t').collect();
            let count = match parts[..] {
                [_, _, count] => count.parse::<u64>().ok(),
                _ => None,
            };
            let Some(count) = count else {
                return Err(invalid(&tsv_path, format!("line {}: expected `field \\t value \\t items`", i + 1)));
            };
            names.push((parts[0].to_string(), parts[1].to_string()));
            counts.push(count);
        }
        if names.first().is_none_or(|(field, value)| !field.is_empty() || value != NONE) {
            return Err(invalid(&tsv_path, format!("line 1 must be the empty attribute (`\\t{NONE}\\t0`)")));
        }
        let table_path = dir.join("item_attributes.u32");
        let k = fields.len();
        if table.len() != 4 * items * k {
            return Err(invalid(
                &table_path,
                format!("{} bytes; {items} items × {k} attributes need {}", table.len(), 4 * items * k),
            ));
        }
        let table: Vec<u32> = table.chunks_exact(4).map(|c| u32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect();
        if let Some(at) = table.iter().position(|&id| id as usize >= names.len()) {
            let (item, column) = (at / k, at % k);
            return Err(invalid(
                &table_path,
                format!(
                    "item {item}, {}: attribute {} is outside the {} of attributes.tsv",
                    fields[column],
                    table[at],
                    names.len()
                ),
            ));
        }
        if table.iter().take(k).any(|&id| id != 0) {
            return Err(invalid(&table_path, "row 0 (padding) must hold no attribute".into()));
        }
        Ok(Self { fields: fields.to_vec(), names, counts, table })
    }

    /// How many items have a value in each column, and how many distinct values it holds.
    pub fn coverage(&self) -> Vec<FieldStats> {
        let k = self.k();
        (0..k)
            .map(|column| {
                let values = self.table.chunks_exact(k).skip(1).map(|row| row[column]).filter(|&id| id != 0);
                let mut distinct: Vec<u32> = values.clone().collect();
                distinct.sort_unstable();
                distinct.dedup();
                FieldStats {
                    field: self.fields[column].clone(),
                    items_with_value: values.count() as u64,
                    distinct_values: distinct.len() as u64,
                }
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn meta(brand: Option<&str>, path: &[&str], price: Option<f64>) -> ItemMeta {
        ItemMeta {
            item: String::new(),
            category: path.last().map(|c| c.to_string()),
            path: path.iter().map(|c| c.to_string()).collect(),
            brand: brand.map(String::from),
            price,
        }
    }

    #[test]
    fn price_buckets_hold_their_lower_edge() {
        let buckets: Vec<String> = [0.0, 4.99, 5.0, 19.99, 20.0, 499.0, 500.0, 9e9].map(price_bucket).to_vec();
        assert_eq!(buckets, ["<5", "<5", "5-10", "10-20", "20-50", "200-500", "500+", "500+"]);
    }

    #[test]
    fn meta_fills_brand_levels_and_price_ranked_by_items() {
        // Intern items 0..4; vocabulary ids: item 3 is not in the vocabulary.
        let mut raw = RawAttributes::for_meta(4);
        raw.set_meta(0, &meta(Some("Lego"), &["Toys", "Building", "Sets", "Bricks", "Small"], Some(12.0)));
        raw.set_meta(1, &meta(Some("Lego"), &["Toys"], None));
        // Item 2 has no meta line. Item 3 has one but is not in the vocabulary.
        raw.set_meta(3, &meta(Some("Mattel"), &["Toys", "Dolls"], Some(30.0)));
        let attrs = ItemAttributes::build(&raw, &[2, 1, 3, 0], 4);
        assert_eq!(attrs.k(), 6);
        // `brand=Lego` and `category_1=Toys` are on two items (ranked first, by field), the rest
        // on one, by field then value: Bricks, Building, Sets, 10-20.
        let names: Vec<String> = attrs.names.iter().map(|(f, v)| format!("{f}={v}")).collect();
        assert_eq!(
            names,
            [
                "=none",
                "brand=Lego",
                "category_1=Toys",
                "category_2=Building",
                "category_3=Sets",
                "category_4=Bricks",
                "price=10-20"
            ]
        );
        assert_eq!(attrs.counts, [0, 2, 2, 1, 1, 1, 1]);
        assert_eq!(attrs.row(0), [0; 6]);
        assert_eq!(attrs.row(1), [1, 2, 0, 0, 0, 0], "intern item 1");
        assert_eq!(attrs.row(2), [1, 2, 3, 4, 5, 6], "intern item 0: the fifth level is cut");
        assert_eq!(attrs.row(3), [0; 6], "intern item 2 has no meta");
        let coverage = attrs.coverage();
        assert_eq!((coverage[0].items_with_value, coverage[0].distinct_values), (2, 1));
        assert_eq!((coverage[5].field.as_str(), coverage[5].items_with_value), ("price", 1));
    }

    #[test]
    fn sequences_lists_share_one_vocabulary_and_are_cut_to_the_columns() {
        let lists = vec![
            vec!["1".to_string(), "2".into(), "3".into()],
            vec!["2".into(), "1".into()],
            vec![],
            vec!["9".into(), "8".into(), "7".into(), "6".into()],
        ];
        let raw = RawAttributes::from_lists(lists, 3);
        assert_eq!((raw.fields.len(), raw.cut, raw.longest), (3, 1, 4));
        let attrs = ItemAttributes::build(&raw, &[1, 2, 3, 4], 5);
        // "1" and "2" on two items each, in different columns: one id each.
        assert_eq!(attrs.names[1..3], [("attribute".into(), "1".into()), ("attribute".into(), "2".into())]);
        assert_eq!(attrs.row(1), [1, 2, 3]);
        assert_eq!(attrs.row(2), [2, 1, 0]);
        assert_eq!(attrs.row(3), [0, 0, 0]);
        assert_eq!(attrs.row(4).len(), 3);
        // An item listing an attribute twice counts once in `items` (and so in the id order):
        // "5" is on one item, "4" on two.
        let raw = RawAttributes::from_lists(vec![vec!["5".into(), "5".into(), "4".into()], vec!["4".into()]], 3);
        let attrs = ItemAttributes::build(&raw, &[1, 2], 3);
        assert_eq!(attrs.names[1..], [("attribute".into(), "4".into()), ("attribute".into(), "5".into())]);
        assert_eq!(attrs.counts[1..], [2, 1]);
        assert_eq!(attrs.row(1), [2, 2, 1]);
    }

    #[test]
    fn the_files_read_back_and_damage_is_named() {
        let mut raw = RawAttributes::for_meta(2);
        raw.set_meta(0, &meta(Some("A\tB"), &["Toys"], Some(3.0)));
        let attrs = ItemAttributes::build(&raw, &[1, 0], 2);
        let [(_, tsv), (_, table)] = attrs.to_files();
        let dir = Path::new("/data");
        let back = ItemAttributes::parse(dir, &attrs.fields, &tsv, &table, 2).unwrap();
        assert_eq!(back, attrs);
        assert!(back.names.iter().any(|(_, v)| v == "A B"), "a tab in a value became a space");
        let e = ItemAttributes::parse(dir, &attrs.fields, &tsv, &table, 3).unwrap_err().to_string();
        assert!(e.starts_with("/data/item_attributes.u32: 48 bytes; 3 items × 6 attributes need 72"), "{e}");
        let mut bad = table.clone();
        bad[24..28].copy_from_slice(&99u32.to_le_bytes());
        let e = ItemAttributes::parse(dir, &attrs.fields, &tsv, &bad, 2).unwrap_err().to_string();
        assert!(e.contains("item 1, brand: attribute 99 is outside the 4 of attributes.tsv"), "{e}");
        let e = ItemAttributes::parse(dir, &attrs.fields, b"\tnone\t0\nbrand\tX\n", &table, 2).unwrap_err().to_string();
        assert!(e.starts_with("/data/attributes.tsv: line 2: expected"), "{e}");
    }
}
