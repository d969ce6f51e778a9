//! The raw Amazon review dumps: reviews (strict JSON lines, 2014 and 2018 releases alike) and
//! item metadata (2014: Python dict literals with nested `categories`; 2018: JSON with a flat
//! `category` list). Each line parser is a pure function from text to a record or a [`Bad`].
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

/// Parse one review line (both releases use `reviewerID`, `asin`, `unixReviewTime`).
pub fn parse_review(line: &str) -> Result<Review, Bad> {
    let raw: RawReview = serde_json::from_str(line).map_err(|e| Bad::from_json(&e))?;
    if raw.user.is_empty() || raw.asin.is_empty() {
        return Err(Bad::new(BadKind::MissingField, "empty reviewerID or asin"));
    }
    Ok(Review { user: raw.user.into_owned(), item: raw.asin.into_owned(), time: raw.time })
}

/// One item's meta: its category as the protocols define it (`None`: the item has meta but no
/// category, which maps to `default_cat` like a missing meta line), and the attributes kept in
/// the dataset's item-attribute table.
#[derive(Debug, Clone, PartialEq)]
pub struct ItemMeta {
    pub item: String,
    pub category: Option<String>,
    /// The category path the category is the last level of (2014: the first path of
    /// `categories`; 2018: `category`), top level first.
    pub path: Vec<String>,
    /// `brand`, when a non-empty string.
    pub brand: Option<String>,
    /// `price` in dollars, when one can be read (2014: a number; 2018: text such as `$12.99` or
    /// `$10.00 - $20.00`, whose lower bound is taken).
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
    if value.get("reviewerID").is_some() {
        return Err(Bad::new(BadKind::WrongType, "a review (it has `reviewerID`), not item metadata"));
    }
    if value.get("category").is_some() && value.get("categories").is_none() {
        return Err(Bad::new(BadKind::WrongType, "2018 metadata (flat `category`), not 2014 (`categories`)"));
    }
    let item = match value.get("asin") {
        Some(PyValue::Str(s)) if !s.is_empty() => s.clone(),
        Some(_) => return Err(Bad::new(BadKind::WrongType, "`asin` must be a non-empty string")),
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

#[derive(Deserialize)]
struct RawMeta2018<'a> {
    #[serde(borrow)]
    asin: Cow<'a, str>,
    #[serde(default)]
    category: Vec<String>,
    /// Only to recognise a line that is not 2018 metadata (see [`parse_meta_2018`]).
    #[serde(default)]
    categories: Option<serde::de::IgnoredAny>,
    #[serde(default, rename = "reviewerID")]
    reviewer_id: Option<serde::de::IgnoredAny>,
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
    if raw.reviewer_id.is_some() {
        return Err(Bad::new(BadKind::WrongType, "a review (it has `reviewerID`), not item metadata"));
    }
    if raw.categories.is_some() && raw.category.is_empty() {
        return Err(Bad::new(BadKind::WrongType, "2014 metadata (nested `categories`), not 2018 (`category`)"));
    }
    if raw.asin.is_empty() {
        return Err(Bad::new(BadKind::MissingField, "empty asin"));
    }
    let text = |v: Option<serde_json::Value>| match v {
        Some(serde_json::Value::String(s)) if !s.trim().is_empty() => Some(s.trim().to_string()),
        _ => None,
    };
    let price = match raw.price {
        Some(serde_json::Value::Number(n)) => n.as_f64().filter(|p| *p >= 0.0),
        other => text(other).as_deref().and_then(parse_price_text),
    };
    Ok(ItemMeta {
        item: raw.asin.into_owned(),
        category: raw.category.last().cloned(),
        path: raw.category,
        brand: text(raw.brand),
        price,
    })
}

/// The meta parser of a release.
pub fn meta_parser(release: Release) -> fn(&str) -> Result<ItemMeta, Bad> {
    match release {
        Release::Amazon2014 => parse_meta_2014,
        Release::Amazon2018 => parse_meta_2018,
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
    }
}
