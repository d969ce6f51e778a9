//! The raw Amazon review dumps: reviews (JSON lines: 2014 and 2018 alike with `reviewerID`,
//! `asin` and `unixReviewTime` in seconds; 2023 with `user_id`, `parent_asin` and `timestamp` in
//! milliseconds) and item metadata (2014: Python dict literals with nested `categories`; 2018:
//! JSON with a flat `category` list; 2023: JSON with a flat `categories` list, keyed by
//! `parent_asin`). Each line parser is a pure function from text to a record or a [`Bad`]; a
//! line of another release is told apart by its keys and named as such.
use std::borrow::Cow;

use serde::Deserialize;

use super::input::{Bad, BadKind};
use super::pyliteral::{self, PyValue};

/// Which release the files come from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Release {
    Amazon2014,
    Amazon2018,
    /// Amazon Reviews'23 (McAuley Lab): an item is its `parent_asin`, which the earlier
    /// releases called `asin` (a product's colours and sizes are one item).
    Amazon2023,
}

impl Release {
    /// How its meta lines are written, for messages.
    pub fn meta_form(self) -> &'static str {
        match self {
            Release::Amazon2014 => "2014 (Python dict literal)",
            Release::Amazon2018 => "2018 (JSON, `asin` and `category`)",
            Release::Amazon2023 => "2023 (JSON, `parent_asin` and `categories`)",
        }
    }
}

/// One review: who, what, when.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Review {
    pub user: String,
    pub item: String,
    pub time: i64,
}

#[derive(Deserialize)]
struct RawReview<'a> {
    #[serde(rename = "reviewerID", borrow)]
    user: Cow<'a, str>,
    #[serde(borrow)]
    asin: Cow<'a, str>,
    #[serde(rename = "unixReviewTime")]
    time: i64,
}

/// Parse one 2014 or 2018 review line (both use `reviewerID`, `asin`, `unixReviewTime`).
pub fn parse_review(line: &str) -> Result<Review, Bad> {
    let raw: RawReview = serde_json::from_str(line).map_err(|e| review_refused(line, Release::Amazon2018, &e))?;
    if raw.user.is_empty() || raw.asin.is_empty() {
        return Err(Bad::new(BadKind::MissingField, "empty reviewerID or asin"));
    }
    Ok(Review { user: raw.user.into_owned(), item: raw.asin.into_owned(), time: raw.time })
}

#[derive(Deserialize)]
struct RawReview2023<'a> {
    #[serde(borrow)]
    user_id: Cow<'a, str>,
    #[serde(borrow)]
    parent_asin: Cow<'a, str>,
    /// Milliseconds since 1970; only orders a user's reviews.
    timestamp: i64,
}

/// Parse one 2023 review line: `user_id`, `parent_asin` (the item), `timestamp` (milliseconds).
pub fn parse_review_2023(line: &str) -> Result<Review, Bad> {
    let raw: RawReview2023 = serde_json::from_str(line).map_err(|e| review_refused(line, Release::Amazon2023, &e))?;
    if raw.user_id.is_empty() || raw.parent_asin.is_empty() {
        return Err(Bad::new(BadKind::MissingField, "empty user_id or parent_asin"));
    }
    Ok(Review { user: raw.user_id.into_owned(), item: raw.parent_asin.into_owned(), time: raw.timestamp })
}

/// Why a line that `release`'s review parser could not read is no review of its: what its keys
/// show it is (another release's review, with the `--input-format` that reads it, or item
/// metadata), else the JSON error (a review of its own release, malformed).
fn review_refused(line: &str, release: Release, e: &serde_json::Error) -> Bad {
    let has = |key: &str| line.contains(&format!("\"{key}\""));
    let named = |detail: &str| Bad::new(BadKind::WrongType, detail);
    match (has("parent_asin"), has("user_id"), has("reviewerID"), has("asin")) {
        (true, true, _, _) if release != Release::Amazon2023 => {
            named("an Amazon 2023 review (`user_id`, `parent_asin`, `timestamp`): read with --input-format amazon2023")
        }
        (false, _, true, _) if release == Release::Amazon2023 => named(
            "an Amazon 2014 or 2018 review (`reviewerID`, `asin`, `unixReviewTime`): read with --input-format \
             amazon2014 or amazon2018",
        ),
        // Metadata has no user, and none of a review's own keys either: a review that lacks only
        // its user is a review missing a field.
        (true, false, false, _) if !has("rating") && !has("timestamp") => {
            named("Amazon 2023 item metadata (`parent_asin`, no user), not a review")
        }
        (false, false, false, true) if !has("overall") && !has("unixReviewTime") => {
            named("Amazon 2018 item metadata (`asin`, no user), not a review")
        }
        _ => Bad::from_json(e),
    }
}

/// The review parser of a release.
pub fn review_parser(release: Release) -> fn(&str) -> Result<Review, Bad> {
    match release {
        Release::Amazon2014 | Release::Amazon2018 => parse_review,
        Release::Amazon2023 => parse_review_2023,
    }
}

/// One item's meta: its category as the protocols define it (`None`: the item has meta but no
/// category, which maps to `default_cat` like a missing meta line), and the attributes kept in
/// the dataset's item-attribute table.
#[derive(Debug, Clone, PartialEq)]
pub struct ItemMeta {
    pub item: String,
    pub category: Option<String>,
    /// The category path the category is the last level of (2014: the first path of
    /// `categories`; 2018: `category`; 2023: `categories`), top level first.
    pub path: Vec<String>,
    /// `brand`, when a non-empty string (2023: `details.Brand`, else `store`).
    pub brand: Option<String>,
    /// `price` in dollars, when one can be read (2014 and 2023: a number; 2018: text such as
    /// `$12.99` or `$10.00 - $20.00`, whose lower bound is taken).
    pub price: Option<f64>,
}

/// A non-empty string field of a 2014 meta dict (anything else counts as absent: these fields
/// only feed the attribute table).
fn py_text(value: &PyValue, key: &str) -> Option<String> {
    match value.get(key) {
        Some(PyValue::Str(s)) if !s.trim().is_empty() => Some(s.trim().to_string()),
        _ => None,
    }
}

/// A price as 2018 meta writes it: `$12.99`, `$1,299.00`, `$10.00 - $20.00` (the lower bound);
/// `None` for empty text and for what is not a price (some lines hold page markup there).
pub fn parse_price_text(text: &str) -> Option<f64> {
    let first = text.trim().split(" - ").next()?.trim();
    let digits = first.strip_prefix('$').unwrap_or(first).replace(',', "");
    digits.parse::<f64>().ok().filter(|p| p.is_finite() && *p >= 0.0)
}

/// Parse one 2014 meta line: a Python dict literal; category = last element of the first path
/// in `categories`.
pub fn parse_meta_2014(line: &str) -> Result<ItemMeta, Bad> {
    let value = pyliteral::parse(line).map_err(|e| {
        // JSON's null and true do not parse here: 2023's files hold them.
        if line.contains("\"user_id\"") {
            return review_not_meta("user_id");
        }
        if line.contains("\"parent_asin\"") {
            return meta_of_2023();
        }
        let kind = if e.message.contains("unterminated") || e.message.contains("end of input") {
            BadKind::Truncated
        } else {
            BadKind::Malformed
        };
        Bad::new(kind, e.to_string())
    })?;
    if !matches!(value, PyValue::Dict(_)) {
        return Err(Bad::new(BadKind::WrongType, "a meta line must be a dict"));
    }
    // JSON without true/false/null is also a Python literal, so a reviews file or a 2018 meta
    // file would parse here and silently give every item `default_cat`; their keys tell them apart.
    if let Some(key) = ["reviewerID", "user_id"].into_iter().find(|key| value.get(key).is_some()) {
        return Err(review_not_meta(key));
    }
    if value.get("category").is_some() && value.get("categories").is_none() {
        return Err(Bad::new(BadKind::WrongType, "2018 metadata (flat `category`), not 2014 (`categories`)"));
    }
    let item = match value.get("asin") {
        Some(PyValue::Str(s)) if !s.is_empty() => s.clone(),
        Some(_) => return Err(Bad::new(BadKind::WrongType, "`asin` must be a non-empty string")),
        None if value.get("parent_asin").is_some() => return Err(meta_of_2023()),
        None => return Err(Bad::new(BadKind::MissingField, "missing field `asin`")),
    };
    let path = match value.get("categories") {
        None => vec![],
        Some(PyValue::List(paths)) => match paths.first() {
            None => vec![],
            Some(PyValue::List(path)) => path
                .iter()
                .map(|level| match level {
                    PyValue::Str(c) => Ok(c.clone()),
                    _ => Err(Bad::new(BadKind::WrongType, "`categories` paths must hold strings")),
                })
                .collect::<Result<Vec<_>, _>>()?,
            Some(_) => return Err(Bad::new(BadKind::WrongType, "`categories` must be a list of lists")),
        },
        Some(_) => return Err(Bad::new(BadKind::WrongType, "`categories` must be a list of lists")),
    };
    let price = match value.get("price") {
        Some(PyValue::Float(p)) => Some(*p),
        Some(PyValue::Int(p)) => Some(*p as f64),
        _ => None,
    }
    .filter(|p| p.is_finite() && *p >= 0.0);
    Ok(ItemMeta { item, category: path.last().cloned(), path, brand: py_text(&value, "brand"), price })
}

/// A review line read as meta: it names a user (`key`).
fn review_not_meta(key: &str) -> Bad {
    Bad::new(BadKind::WrongType, format!("a review (it has `{key}`), not item metadata"))
}

/// The key of a JSON meta line that says it is a review: `reviewerID` or `user_id`.
fn user_key(
    reviewer_id: &Option<serde::de::IgnoredAny>,
    user_id: &Option<serde::de::IgnoredAny>,
) -> Option<&'static str> {
    match (reviewer_id, user_id) {
        (Some(_), _) => Some("reviewerID"),
        (_, Some(_)) => Some("user_id"),
        _ => None,
    }
}

/// A 2023 meta line read as an earlier release's.
fn meta_of_2023() -> Bad {
    Bad::new(BadKind::WrongType, "2023 metadata (`parent_asin`, no `asin`): read with --input-format amazon2023")
}

/// A non-empty string, trimmed (these fields only feed the attribute table: anything else counts
/// as absent).
fn json_text(value: Option<serde_json::Value>) -> Option<String> {
    match value {
        Some(serde_json::Value::String(s)) if !s.trim().is_empty() => Some(s.trim().to_string()),
        _ => None,
    }
}

/// A price given as a number, or as text the way 2018 writes it.
fn json_price(value: Option<serde_json::Value>) -> Option<f64> {
    match value {
        Some(serde_json::Value::Number(n)) => n.as_f64().filter(|p| *p >= 0.0),
        other => json_text(other).as_deref().and_then(parse_price_text),
    }
}

#[derive(Deserialize)]
struct RawMeta2018<'a> {
    #[serde(borrow, default)]
    asin: Option<Cow<'a, str>>,
    /// Only to recognise 2023 metadata (see [`parse_meta_2018`]).
    #[serde(default)]
    parent_asin: Option<serde::de::IgnoredAny>,
    #[serde(default)]
    category: Vec<String>,
    /// Only to recognise a line that is not 2018 metadata (see [`parse_meta_2018`]).
    #[serde(default)]
    categories: Option<serde::de::IgnoredAny>,
    #[serde(default, rename = "reviewerID")]
    reviewer_id: Option<serde::de::IgnoredAny>,
    /// Only to recognise a 2023 review (see [`parse_meta_2018`]).
    #[serde(default)]
    user_id: Option<serde::de::IgnoredAny>,
    /// Read as any JSON value: only a string counts (the attribute table's brand).
    #[serde(default)]
    brand: Option<serde_json::Value>,
    #[serde(default)]
    price: Option<serde_json::Value>,
}

/// Parse one 2018 meta line: JSON; category = last element of `category`.
pub fn parse_meta_2018(line: &str) -> Result<ItemMeta, Bad> {
    let raw: RawMeta2018 = serde_json::from_str(line).map_err(|e| Bad::from_json(&e))?;
    // Without these checks a reviews file, or 2014 metadata converted to JSON, would be read as
    // metadata without categories: every item `default_cat`, silently.
    if let Some(key) = user_key(&raw.reviewer_id, &raw.user_id) {
        return Err(review_not_meta(key));
    }
    let asin = match raw.asin {
        None if raw.parent_asin.is_some() => return Err(meta_of_2023()),
        None => return Err(Bad::new(BadKind::MissingField, "missing field `asin`")),
        Some(asin) => asin,
    };
    if raw.categories.is_some() && raw.category.is_empty() {
        return Err(Bad::new(BadKind::WrongType, "2014 metadata (nested `categories`), not 2018 (`category`)"));
    }
    if asin.is_empty() {
        return Err(Bad::new(BadKind::MissingField, "empty asin"));
    }
    Ok(ItemMeta {
        item: asin.into_owned(),
        category: raw.category.last().cloned(),
        path: raw.category,
        brand: json_text(raw.brand),
        price: json_price(raw.price),
    })
}

#[derive(Deserialize)]
struct RawMeta2023<'a> {
    #[serde(borrow, default)]
    parent_asin: Option<Cow<'a, str>>,
    /// Read as any JSON value, so that 2014's nested lists are named as 2014 metadata first.
    #[serde(default)]
    categories: Option<serde_json::Value>,
    #[serde(default)]
    details: Option<Details2023>,
    #[serde(default)]
    store: Option<serde_json::Value>,
    #[serde(default)]
    price: Option<serde_json::Value>,
    /// Only to recognise a line that is not 2023 metadata (see [`parse_meta_2023`]).
    #[serde(default)]
    asin: Option<serde::de::IgnoredAny>,
    #[serde(default)]
    user_id: Option<serde::de::IgnoredAny>,
    #[serde(default, rename = "reviewerID")]
    reviewer_id: Option<serde::de::IgnoredAny>,
}

/// The one key of 2023's free-form `details` that is read.
#[derive(Deserialize)]
struct Details2023 {
    #[serde(default, rename = "Brand")]
    brand: Option<serde_json::Value>,
}

/// Parse one 2023 meta line: JSON keyed by `parent_asin`; category = last element of
/// `categories` (none when empty, as for many of 2023's categories: `default_cat`); brand =
/// `details.Brand`, else `store`; `price` a number or null.
pub fn parse_meta_2023(line: &str) -> Result<ItemMeta, Bad> {
    let raw: RawMeta2023 = serde_json::from_str(line).map_err(|e| Bad::from_json(&e))?;
    if let Some(key) = user_key(&raw.reviewer_id, &raw.user_id) {
        return Err(review_not_meta(key));
    }
    let item =
        match raw.parent_asin {
            Some(item) if !item.is_empty() => item.into_owned(),
            Some(_) => return Err(Bad::new(BadKind::MissingField, "empty parent_asin")),
            None if raw.asin.is_some() => return Err(Bad::new(
                BadKind::WrongType,
                "2014 or 2018 metadata (`asin`, no `parent_asin`): read with --input-format amazon2014 or amazon2018",
            )),
            None => return Err(Bad::new(BadKind::MissingField, "missing field `parent_asin`")),
        };
    let path = match raw.categories {
        None | Some(serde_json::Value::Null) => vec![],
        Some(serde_json::Value::Array(levels)) => levels
            .into_iter()
            .map(|level| match level {
                serde_json::Value::String(c) => Ok(c),
                _ => Err(Bad::new(BadKind::WrongType, "`categories` must be a list of strings")),
            })
            .collect::<Result<_, _>>()?,
        Some(_) => return Err(Bad::new(BadKind::WrongType, "`categories` must be a list of strings")),
    };
    let brand = raw.details.and_then(|d| json_text(d.brand)).or_else(|| json_text(raw.store));
    Ok(ItemMeta { item, category: path.last().cloned(), path, brand, price: json_price(raw.price) })
}

/// Parse one meta line of whichever release wrote it: 2014's Python literal by its quotes,
/// 2023's JSON by its `parent_asin`, else 2018's JSON; a line that release's parser refuses is
/// tried as the others' (2014 metadata written as JSON), and refused with the first refusal. For
/// files that come without a release of their own (interaction logs beside Amazon's meta).
pub fn parse_meta_any(line: &str) -> Result<ItemMeta, Bad> {
    if line.trim_start().starts_with("{'") {
        return parse_meta_2014(line);
    }
    type Parse = fn(&str) -> Result<ItemMeta, Bad>;
    let order: [Parse; 3] = if line.contains("\"parent_asin\"") {
        [parse_meta_2023, parse_meta_2018, parse_meta_2014]
    } else {
        [parse_meta_2018, parse_meta_2023, parse_meta_2014]
    };
    order[0](line).or_else(|bad| order[1..].iter().find_map(|parse| parse(line).ok()).ok_or(bad))
}

/// The meta parser of a release.
pub fn meta_parser(release: Release) -> fn(&str) -> Result<ItemMeta, Bad> {
    match release {
        Release::Amazon2014 => parse_meta_2014,
        Release::Amazon2018 => parse_meta_2018,
        Release::Amazon2023 => parse_meta_2023,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn real_2014_review_line_parses() {
        // First line of the real reviews_Electronics_5.json (shared fixtures), shortened text.
        let line = r#"{"reviewerID": "AO94DHGC771SJ", "asin": "0528881469", "reviewerName": "amazdnu", "helpful": [0, 0], "reviewText": "We got this GPS \"trucker\"", "overall": 5.0, "summary": "Gotta have GPS!", "unixReviewTime": 1370131200, "reviewTime": "06 2, 2013"}"#;
        assert_eq!(
            parse_review(line).unwrap(),
            Review { user: "AO94DHGC771SJ".into(), item: "0528881469".into(), time: 1370131200 }
        );
    }

    #[test]
    fn real_2023_review_line_parses_its_parent_asin_as_the_item() {
        // The first line of the real All_Beauty.jsonl (Amazon Reviews'23), text shortened.
        let line = r#"{"rating": 5.0, "title": "Such a lovely scent but not overpowering.", "text": "This spray is really nice.", "images": [], "asin": "B00YQ6X8EO", "parent_asin": "B00YQ6X8EO", "user_id": "AGKHLEW2SOWHNMFQIJGBECAF7INQ", "timestamp": 1588687728923, "helpful_vote": 0, "verified_purchase": true}"#;
        assert_eq!(
            parse_review_2023(line).unwrap(),
            Review { user: "AGKHLEW2SOWHNMFQIJGBECAF7INQ".into(), item: "B00YQ6X8EO".into(), time: 1588687728923 }
        );
        let variant = r#"{"asin": "B0VARIANT1", "parent_asin": "B0PARENT01", "user_id": "U", "timestamp": 1}"#;
        assert_eq!(parse_review_2023(variant).unwrap().item, "B0PARENT01", "a colour or size is its parent item");
        let kind = |l: &str| parse_review_2023(l).unwrap_err().kind;
        assert_eq!(kind(r#"{"user_id": "U", "parent_asin": "P", "timestamp": 1.52309e+12}"#), BadKind::WrongType);
        assert_eq!(kind(r#"{"user_id": "U", "asin": "P", "timestamp": 1}"#), BadKind::MissingField);
        assert_eq!(kind(r#"{"user_id": "", "parent_asin": "P", "timestamp": 1}"#), BadKind::MissingField);
        assert_eq!(kind(r#"{"user_id": "U", "parent_asin": "P", "timestamp": 1"#), BadKind::Truncated);
    }

    #[test]
    fn a_review_of_another_release_is_named_with_the_format_that_reads_it() {
        let r2023 = r#"{"rating": 5.0, "asin": "B1", "parent_asin": "B1", "user_id": "U", "timestamp": 1588687728923}"#;
        let r2014 =
            r#"{"reviewerID": "AO94DHGC771SJ", "asin": "0528881469", "overall": 5.0, "unixReviewTime": 1370131200}"#;
        for (bad, format) in
            [(parse_review(r2023), "amazon2023"), (parse_review_2023(r2014), "amazon2014 or amazon2018")]
        {
            let bad = bad.unwrap_err();
            assert_eq!(bad.kind, BadKind::WrongType);
            assert!(bad.detail.ends_with(&format!("read with --input-format {format}")), "{}", bad.detail);
        }
        assert_eq!(review_parser(Release::Amazon2023)(r2023).unwrap().time, 1588687728923);
        assert_eq!(review_parser(Release::Amazon2018)(r2014).unwrap().time, 1370131200);
    }

    #[test]
    fn review_errors_are_classified() {
        let kind = |l: &str| parse_review(l).unwrap_err().kind;
        assert_eq!(kind(r#"{"reviewerID": "A", "asin": "B", "unixReviewTime": 1"#), BadKind::Truncated);
        assert_eq!(kind(r#"{"reviewerID": "A", "asin": "B" "unixReviewTime": 1}"#), BadKind::Malformed);
        assert_eq!(kind(r#"{"reviewerID": "A", "unixReviewTime": 1}"#), BadKind::MissingField);
        assert_eq!(kind(r#"{"reviewerID": "A", "asin": "B", "unixReviewTime": "soon"}"#), BadKind::WrongType);
        assert_eq!(kind(r#"{"reviewerID": "", "asin": "B", "unixReviewTime": 1}"#), BadKind::MissingField);
    }

    #[test]
    fn meta_2014_takes_the_last_element_of_the_first_path() {
        // The real first line of meta_Electronics.json (shared fixtures README), title shortened.
        let line = "{'asin': '0132793040', 'imUrl': 'http://ecx.images-amazon.com/images/I/31JIPhp%2BGIL.jpg', 'categories': [['Electronics', 'Computers & Accessories', 'Cables & Accessories', 'Monitor Accessories']], 'title': 'Kelby Training DVD: ...'}";
        let meta = parse_meta_2014(line).unwrap();
        assert_eq!(meta.item, "0132793040");
        assert_eq!(meta.category.as_deref(), Some("Monitor Accessories"));
        assert_eq!(parse_meta_2014("{'asin': 'X', 'title': \"Bob's\"}").unwrap().category, None);
        assert_eq!(
            parse_meta_2014("{'asin': 'X', 'categories': [['Books'], ['Toys', 'Cars']]}").unwrap().category.as_deref(),
            Some("Books")
        );
    }

    #[test]
    fn meta_2014_errors_are_classified() {
        let kind = |l: &str| parse_meta_2014(l).unwrap_err().kind;
        assert_eq!(kind("{'asin': '01327"), BadKind::Truncated);
        assert_eq!(kind("{'title': 'x'}"), BadKind::MissingField);
        assert_eq!(kind("{'asin': 5}"), BadKind::WrongType);
        assert_eq!(kind("{'asin': 'X', 'categories': 'Books'}"), BadKind::WrongType);
        assert_eq!(kind("['asin', 'X']"), BadKind::WrongType);
        assert_eq!(kind("{\"asin\": \"X\", \"on\": true}"), BadKind::Malformed, "JSON true is not a Python literal");
    }

    #[test]
    fn meta_2018_uses_the_flat_category_list() {
        let line = r#"{"category": ["Books", "Literature & Fiction", "Poetry"], "title": "x", "asin": "0000092878", "main_cat": "Books"}"#;
        assert_eq!(parse_meta_2018(line).unwrap().category.as_deref(), Some("Poetry"));
        assert_eq!(parse_meta_2018(r#"{"asin": "X", "category": []}"#).unwrap().category, None);
        assert_eq!(parse_meta_2018(r#"{"asin": "X", "category": "Books"}"#).unwrap_err().kind, BadKind::WrongType);
    }

    #[test]
    fn meta_keeps_the_path_brand_and_price_of_both_releases() {
        // The first line of the real 2018 Gift Cards meta (tests/fixtures), long fields left out.
        let line = r#"{"category": ["Gift Cards", "Gift Cards"], "tech1": "", "fit": "", "title": "Serendipity 3 $100.00 Gift Card", "also_buy": [], "tech2": "", "brand": "Serendipity 3", "feature": [], "rank": [], "also_view": [], "main_cat": "Grocery", "similar_item": "", "date": "", "price": "", "asin": "B001BKEWF2"}"#;
        let meta = parse_meta_2018(line).unwrap();
        assert_eq!(meta.path, ["Gift Cards", "Gift Cards"]);
        assert_eq!((meta.brand.as_deref(), meta.price), (Some("Serendipity 3"), None), "its price is empty");
        assert_eq!(parse_meta_2018(r#"{"asin": "X", "price": "$25.00"}"#).unwrap().price, Some(25.0));
        let meta =
            parse_meta_2018(r#"{"asin": "X", "brand": "  ", "price": ".a-box-inner{background-color:#fff}"}"#).unwrap();
        assert_eq!((meta.brand, meta.price), (None, None));
        assert_eq!(parse_meta_2018(r#"{"asin": "X", "price": 12.5, "brand": 7}"#).unwrap().price, Some(12.5));
        let meta = parse_meta_2014(
            "{'asin': 'X', 'categories': [['Toys & Games', 'Puzzles']], 'brand': 'Ravensburger', 'price': 12.99}",
        )
        .unwrap();
        assert_eq!(meta.path, ["Toys & Games", "Puzzles"]);
        assert_eq!((meta.brand.as_deref(), meta.price), (Some("Ravensburger"), Some(12.99)));
        assert_eq!(parse_meta_2014("{'asin': 'X', 'price': 7}").unwrap().price, Some(7.0));
        assert_eq!(parse_meta_2014("{'asin': 'X', 'price': -1.0, 'brand': ''}").unwrap().price, None);
    }

    #[test]
    fn meta_2023_reads_categories_brand_and_price_keyed_by_parent_asin() {
        // The example meta line of the Amazon Reviews'23 dataset card (All_Beauty), images left
        // out: like every All_Beauty item, it lists no categories.
        let line = r#"{"main_category": "All Beauty", "title": "Howard LC0008 Leather Conditioner, 8-Ounce (4-Pack)", "average_rating": 4.8, "rating_number": 10, "features": [], "description": [], "price": null, "images": [], "videos": [], "store": "Howard Products", "categories": [], "details": {"Package Dimensions": "7.1 x 5.5 x 3 inches; 2.38 Pounds", "UPC": "617390882781"}, "parent_asin": "B01CUPMQZE", "bought_together": null}"#;
        let meta = parse_meta_2023(line).unwrap();
        assert_eq!((meta.item.as_str(), meta.category, meta.path.len()), ("B01CUPMQZE", None, 0));
        assert_eq!((meta.brand.as_deref(), meta.price), (Some("Howard Products"), None), "the store, no price");
        let line = r#"{"categories": ["Electronics", "Computers & Accessories", "Cables"], "store": "AnkerDirect", "details": {"Brand": "Anker", "Color": "Black"}, "price": 12.99, "parent_asin": "B0X"}"#;
        let meta = parse_meta_2023(line).unwrap();
        assert_eq!(meta.category.as_deref(), Some("Cables"));
        assert_eq!(meta.path, ["Electronics", "Computers & Accessories", "Cables"]);
        assert_eq!((meta.brand.as_deref(), meta.price), (Some("Anker"), Some(12.99)), "details.Brand before store");
        let meta =
            parse_meta_2023(r#"{"parent_asin": "X", "price": "None", "store": " ", "categories": null}"#).unwrap();
        assert_eq!((meta.brand, meta.price, meta.category), (None, None, None));
        let kind = |l: &str| parse_meta_2023(l).unwrap_err().kind;
        assert_eq!(kind(r#"{"parent_asin": "", "categories": []}"#), BadKind::MissingField);
        assert_eq!(kind(r#"{"title": "x"}"#), BadKind::MissingField);
        assert_eq!(kind(r#"{"parent_asin": "X", "categories": "Books"}"#), BadKind::WrongType);
    }

    #[test]
    fn meta_of_any_release_is_read_as_its_line_shows() {
        let lines = [
            "{'asin': 'A', 'categories': [['Toys & Games', 'Puzzles']]}",
            r#"{"asin": "B", "categories": [["Books", "Poetry"]]}"#,
            r#"{"asin": "C", "category": ["Books", "Fiction"], "note": "parent_asin"}"#,
            r#"{"parent_asin": "D", "categories": ["Electronics", "Cables"], "price": null}"#,
        ];
        let read: Vec<(String, Option<String>)> =
            lines.iter().map(|l| parse_meta_any(l).map(|m| (m.item, m.category)).unwrap()).collect();
        let expected = [("A", "Puzzles"), ("B", "Poetry"), ("C", "Fiction"), ("D", "Cables")];
        assert_eq!(read, expected.map(|(item, cat)| (item.to_string(), Some(cat.to_string()))));
        let review = r#"{"reviewerID": "A1", "asin": "B", "unixReviewTime": 1}"#;
        assert_eq!(parse_meta_any(review).unwrap_err().detail, "a review (it has `reviewerID`), not item metadata");
    }

    #[test]
    fn price_text_reads_dollars_thousands_and_ranges() {
        assert_eq!(parse_price_text("$12.99"), Some(12.99));
        assert_eq!(parse_price_text("$1,299.00"), Some(1299.0));
        assert_eq!(parse_price_text("$10.00 - $20.00"), Some(10.0));
        assert_eq!(parse_price_text(""), None);
        assert_eq!(parse_price_text("<span>"), None);
    }

    #[test]
    fn a_review_or_the_other_releases_meta_is_not_taken_for_meta() {
        // A review line is valid JSON and (without true/false/null) a valid Python literal.
        let review = r#"{"reviewerID": "A1", "asin": "0528881469", "helpful": [0, 0], "overall": 5.0, "unixReviewTime": 1370131200}"#;
        assert_eq!(parse_meta_2014(review).unwrap_err().kind, BadKind::WrongType);
        assert_eq!(parse_meta_2018(review).unwrap_err().kind, BadKind::WrongType);
        let meta_2018 = r#"{"asin": "X", "category": ["Books", "Poetry"], "main_cat": "Books"}"#;
        assert_eq!(parse_meta_2014(meta_2018).unwrap_err().kind, BadKind::WrongType);
        let meta_2014_as_json = r#"{"asin": "X", "categories": [["Books", "Poetry"]]}"#;
        assert_eq!(parse_meta_2018(meta_2014_as_json).unwrap_err().kind, BadKind::WrongType);
        // 2014 metadata written as JSON is still 2014 metadata.
        assert_eq!(parse_meta_2014(meta_2014_as_json).unwrap().category.as_deref(), Some("Poetry"));
        // 2023 metadata is keyed by `parent_asin`: the earlier parsers name it, and the 2023 parser
        // names theirs and any review.
        let meta_2023 = r#"{"main_category": "Books", "categories": ["Books", "Poetry"], "parent_asin": "X"}"#;
        for bad in [parse_meta_2014(meta_2023), parse_meta_2018(meta_2023)] {
            let bad = bad.unwrap_err();
            assert!(bad.kind == BadKind::WrongType && bad.detail.contains("amazon2023"), "{}", bad.detail);
        }
        for line in [meta_2018, meta_2014_as_json] {
            let bad = parse_meta_2023(line).unwrap_err();
            assert!(
                bad.kind == BadKind::WrongType && bad.detail.contains("amazon2014 or amazon2018"),
                "{}",
                bad.detail
            );
        }
        let review_2023 = r#"{"asin": "B1", "parent_asin": "B1", "user_id": "U", "timestamp": 1}"#;
        for line in [review, review_2023] {
            assert_eq!(parse_meta_2023(line).unwrap_err().kind, BadKind::WrongType, "{line}");
        }
        // 2023's reviews hold an `asin` (the variant): they are reviews to the earlier parsers too,
        // JSON's true in them (the real line of the 2023 test above) or not.
        let real_2023 = r#"{"rating": 5.0, "asin": "B00YQ6X8EO", "parent_asin": "B00YQ6X8EO", "user_id": "AGKHLEW2SOWHNMFQIJGBECAF7INQ", "timestamp": 1588687728923, "helpful_vote": 0, "verified_purchase": true}"#;
        for bad in [parse_meta_2018(review_2023), parse_meta_2014(review_2023), parse_meta_2014(real_2023)] {
            assert_eq!(bad.unwrap_err().detail, "a review (it has `user_id`), not item metadata");
        }
        // 2023's meta, with JSON's null, is named as 2023's by the 2014 parser, and as meta by
        // the review parser.
        let meta_2023_null = r#"{"main_category": "Books", "price": null, "categories": [], "parent_asin": "X"}"#;
        assert!(parse_meta_2014(meta_2023_null).unwrap_err().detail.contains("amazon2023"));
        for bad in [parse_review(meta_2023_null), parse_review_2023(meta_2023_null)] {
            assert_eq!(bad.unwrap_err().detail, "Amazon 2023 item metadata (`parent_asin`, no user), not a review");
        }
        for bad in [parse_review(meta_2018), parse_review_2023(meta_2018)] {
            assert_eq!(bad.unwrap_err().detail, "Amazon 2018 item metadata (`asin`, no user), not a review");
        }
        // A review that lacks only its user is a review missing a field, as one without `asin` is.
        let no_user = r#"{"overall": 5.0, "asin": "B001", "unixReviewTime": 1393545600}"#;
        let bad = parse_review(no_user).unwrap_err();
        assert_eq!(bad.kind, BadKind::MissingField, "{}", bad.detail);
        assert!(bad.detail.contains("reviewerID"), "{}", bad.detail);
        let no_user_2023 = r#"{"rating": 5.0, "parent_asin": "B001", "timestamp": 1588687728923}"#;
        let bad = parse_review_2023(no_user_2023).unwrap_err();
        assert_eq!(bad.kind, BadKind::MissingField, "{}", bad.detail);
        assert!(bad.detail.contains("user_id"), "{}", bad.detail);
    }
}
