//! Interaction files as ComiRec (Cen et al., KDD 2020) ships Amazon Books and Taobao: one
//! `user,item,time` line per interaction, its users split into training, validation and test
//! files. `micn prepare --input-format interactions` reads a training file like any reviews
//! file; [`HeldOut::read`] reads a validation or test file as ComiRec's evaluation does: each
//! user's items sorted by time (stably), the first `⌊0.8 n⌋` seen as the history (its last
//! `max_hist_len`), the rest to be retrieved.
//!
//! The same users may also come already split, one line per user, as PaddleRec's MIND example
//! ships them: `user_id:U target_item:0 hist_item:I … eval_item:J …` (history then the items to
//! retrieve, in time order). Either form is recognised from the file's first line.
//!
//! A file whose first line names its columns is read by those names ([`Columns`]): RecBole's
//! atomic `.inter` files (tab-separated, typed names: `user_id:token  item_id:token
//! rating:float  timestamp:float`) and Amazon Reviews'23's benchmark files
//! (`user_id,parent_asin,rating,timestamp[,history]`) are read as they come.
//!
//! Held-out items are looked up in the model's item vocabulary by name. A history item it lacks
//! is dropped (the model has no vector for it); an item to retrieve that it lacks stays in the
//! user's list under an id of its own above the vocabulary ([`unknown_item`]), which no
//! retrieval returns, so recall counts it as missed rather than quietly leaving it out, and two
//! unknown items count as two items to retrieve (in the usual NDCG's ideal list too), one item
//! named twice as one. Every bad line is an error naming the file and line.
use std::collections::HashMap;
use std::path::Path;

use super::input::{self, Bad, BadKind, Strictness};
use super::DataError;

/// The id of the `k`-th distinct held-out item (from 0) that the model's vocabulary does not
/// hold: counted down from `u32::MAX`, far above any vocabulary id, so never retrieved.
pub fn unknown_item(k: usize) -> u32 {
    u32::MAX - k as u32
}

/// One `user,item,time` line: what a review line gives, so `prepare` reads both alike.
pub type Interaction = super::amazon::Review;

/// A line's fields, trimmed: separated by tabs where it holds one (RecBole's atomic files, which
/// quote nothing), else by commas as CSV writes them (a field in double quotes may hold commas,
/// and `""` for a quote). An empty field first or last is a field (the empty history of a user's
/// first row). Which field is what, [`Columns`] says, in file order. (Never an error: a `Result`
/// for [`input::parse_lines_checked`].)
pub fn split_row(line: &str) -> Result<Vec<String>, Bad> {
    let plain = |delimiter| line.split(delimiter).map(|f: &str| f.trim().to_string()).collect();
    if line.contains('\t') {
        return Ok(plain('\t'));
    }
    // Most comma files quote nothing: a plain split then (ComiRec's logs run to hundreds of
    // millions of lines).
    if !line.contains('"') {
        return Ok(plain(','));
    }
    let (mut fields, mut field, mut quoted) = (Vec::new(), String::new(), false);
    let mut chars = line.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '"' if quoted && chars.peek() == Some(&'"') => {
                field.push('"');
                chars.next();
            }
            '"' if quoted => quoted = false,
            '"' if field.trim().is_empty() => {
                field.clear();
                quoted = true;
            }
            ',' if !quoted => fields.push(std::mem::take(&mut field).trim().to_string()),
            c => field.push(c),
        }
    }
    fields.push(field.trim().to_string());
    Ok(fields)
}

/// The names a header may give each column, lower case, most specific first (Amazon'23's
/// `parent_asin` is the item where `asin` is beside it: the variant reviewed).
const USER_NAMES: [&str; 5] = ["user_id", "userid", "user", "reviewerid", "uid"];
const ITEM_NAMES: [&str; 8] = ["parent_asin", "item_id", "itemid", "item", "asin", "iid", "movie_id", "movieid"];
const TIME_NAMES: [&str; 4] = ["timestamp", "time", "unixreviewtime", "ts"];
/// The types RecBole's atomic files append to a column's name (`user_id:token`).
const RECBOLE_TYPES: [&str; 4] = ["token", "token_seq", "float", "float_seq"];

/// How an interactions file's rows are read: ComiRec's `user,item,time`, or by the names its
/// first row gives its columns. Fed every row in file order ([`Columns::read`]).
#[derive(Debug, Default)]
pub struct Columns {
    /// `None` before the first row.
    layout: Option<ColumnLayout>,
}

#[derive(Debug)]
enum ColumnLayout {
    /// `user,item,time`, no header.
    Comirec,
    /// Named by a header: its fields as written, and where the user, the item and the time are.
    Named { header: Vec<String>, user: usize, item: usize, time: usize },
    /// A first row that names some of the columns but not all three: every row is refused with
    /// this.
    Unusable(String),
}

impl Columns {
    /// The interaction of `row` (fields of [`split_row`]); `None` for a header: the first row's,
    /// or one further down (files concatenated with their headers, which then name the columns
    /// of the rows after them).
    pub fn read(&mut self, mut row: Vec<String>) -> Result<Option<Interaction>, Bad> {
        if self.layout.is_none() {
            let (layout, header) = ColumnLayout::of_row(&row);
            self.layout = Some(layout);
            if header {
                return Ok(None);
            }
        }
        match self.interaction(&mut row) {
            Ok(interaction) => Ok(Some(interaction)),
            // A row that is no interaction may be a header naming all three columns (none reads
            // as one); one naming fewer is a bad row here, not a reason to refuse the rest.
            Err(bad) => match ColumnLayout::of_row(&row) {
                (layout @ ColumnLayout::Named { .. }, _) => {
                    self.layout = Some(layout);
                    Ok(None)
                }
                _ => Err(bad),
            },
        }
    }

    fn interaction(&self, row: &mut [String]) -> Result<Interaction, Bad> {
        let (user, item, time) = match self.layout.as_ref().expect("set by the first row") {
            ColumnLayout::Unusable(why) => return Err(Bad::new(BadKind::MissingField, why.clone())),
            ColumnLayout::Named { header, user, item, time } => {
                if row.len() != header.len() {
                    return Err(Bad::new(
                        if row.len() < header.len() { BadKind::MissingField } else { BadKind::Malformed },
                        format!("{} fields where the header names {}", row.len(), header.len()),
                    ));
                }
                (*user, *item, *time)
            }
            ColumnLayout::Comirec if row.len() < 3 => {
                return Err(Bad::new(
                    BadKind::MissingField,
                    format!("expected `user,item,time` (3 fields), found {}", row.len()),
                ))
            }
            ColumnLayout::Comirec if row.len() > 3 => {
                return Err(Bad::new(
                    BadKind::Malformed,
                    format!(
                        "expected `user,item,time` (3 fields), found {} (a first line naming the columns has them \
                         read by name: {})",
                        row.len(),
                        names_read()
                    ),
                ))
            }
            ColumnLayout::Comirec => (0, 1, 2),
        };
        if row[user].is_empty() || row[item].is_empty() {
            return Err(Bad::new(BadKind::MissingField, "an empty user or item"));
        }
        let time = parse_time(&row[time])?;
        Ok(Interaction { user: std::mem::take(&mut row[user]), item: std::mem::take(&mut row[item]), time })
    }

    /// Which columns are read, for the log: `None` for ComiRec's three.
    pub fn describe(&self) -> Option<String> {
        match &self.layout {
            Some(ColumnLayout::Named { header, user, item, time }) => Some(format!(
                "columns named by its header: user `{}` (column {}), item `{}` ({}), time `{}` ({})",
                header[*user],
                user + 1,
                header[*item],
                item + 1,
                header[*time],
                time + 1
            )),
            _ => None,
        }
    }
}

impl ColumnLayout {
    /// The layout a row gives as the first, and whether it is a header (it names a user, an item
    /// or a time column; one that does not name all three refuses every row).
    fn of_row(row: &[String]) -> (ColumnLayout, bool) {
        let names: Vec<String> = row
            .iter()
            .map(|field| match field.rsplit_once(':') {
                Some((name, kind)) if RECBOLE_TYPES.contains(&kind) => name.to_ascii_lowercase(),
                _ => field.to_ascii_lowercase(),
            })
            .collect();
        let find = |candidates: &[&str]| candidates.iter().find_map(|c| names.iter().position(|n| n == c));
        let layout = match (find(&USER_NAMES), find(&ITEM_NAMES), find(&TIME_NAMES)) {
            (None, None, None) => return (ColumnLayout::Comirec, false),
            (Some(user), Some(item), Some(time)) => ColumnLayout::Named { header: row.to_vec(), user, item, time },
            (user, item, _) => {
                let missing = match (user, item) {
                    (None, _) => format!("no user column ({})", USER_NAMES.join(", ")),
                    (_, None) => format!("no item column ({})", ITEM_NAMES.join(", ")),
                    _ => format!(
                        "no time column ({}): the order of a user's interactions is unknown",
                        TIME_NAMES.join(", ")
                    ),
                };
                ColumnLayout::Unusable(format!("the header (`{}`) names {missing}", row.join(",")))
            }
        };
        (layout, true)
    }
}

/// The names a header may give its columns, for messages.
fn names_read() -> String {
    format!("user {}; item {}; time {}", USER_NAMES.join(", "), ITEM_NAMES.join(", "), TIME_NAMES.join(", "))
}

/// A time: an integer, or a whole number written as a float (RecBole's `timestamp:float`).
fn parse_time(text: &str) -> Result<i64, Bad> {
    if let Ok(time) = text.parse::<i64>() {
        return Ok(time);
    }
    match text.parse::<f64>() {
        Ok(time) if time.is_finite() && time.fract() == 0.0 && time.abs() < 2f64.powi(53) => Ok(time as i64),
        Ok(time) if time.is_finite() && time.fract() == 0.0 => {
            Err(Bad::new(BadKind::WrongType, format!("time `{text}` is out of range (beyond ±2^53)")))
        }
        Ok(_) => Err(Bad::new(BadKind::WrongType, format!("time `{text}` is not a whole number"))),
        Err(_) => Err(Bad::new(BadKind::WrongType, format!("time `{text}` is not an integer"))),
    }
}

/// How a held-out file gives its users.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum HeldOutForm {
    /// `user,item,time` lines, split 80 / 20 here.
    Interactions,
    /// `user_id:… hist_item:… eval_item:…` lines, already split.
    Split,
}

/// One held-out user: the history the model sees (vocabulary ids, oldest first, at most
/// `max_hist_len`) and the items to retrieve (vocabulary ids, an [`unknown_item`] where unknown).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HeldOutUser {
    pub user: String,
    pub history: Vec<u32>,
    pub truth: Vec<u32>,
}

/// The held-out users of a file, with what the vocabulary lacked.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct HeldOut {
    #[serde(skip)]
    pub users: Vec<HeldOutUser>,
    pub form: HeldOutForm,
    /// Items of the seen histories (before the cut to `max_hist_len`) and how many of them
    /// the vocabulary lacks (dropped).
    pub history_items: u64,
    pub unknown_history_items: u64,
    /// Items to retrieve and how many of them the vocabulary lacks (never retrievable).
    pub truth_items: u64,
    pub unknown_truth_items: u64,
    /// Users left without a known history item: no interest can be computed, every list is
    /// empty and they count as misses.
    pub users_without_history: u64,
}

/// A parsed line of either form: a row of fields (the interactions form, or its header) or a
/// split user.
enum Line {
    Row(Vec<String>),
    Split { user: String, history: Vec<String>, truth: Vec<String> },
}

fn parse_line(line: &str) -> Result<Line, Bad> {
    // RecBole's header (`user_id:token<TAB>…`, or with commas) opens as a split line does, but
    // holds tabs or commas, which split lines separate nothing with.
    let line_start = line.trim_start();
    if !line_start.starts_with("user_id:") || line_start.contains(['\t', ',']) {
        return split_row(line).map(Line::Row);
    }
    let (mut user, mut history, mut truth) = (None, Vec::new(), Vec::new());
    for token in line.split_whitespace() {
        let Some((key, value)) = token.split_once(':').filter(|(_, v)| !v.is_empty()) else {
            return Err(Bad::new(BadKind::Malformed, format!("`{token}` is not `key:value`")));
        };
        match key {
            "user_id" if user.is_none() => user = Some(value.to_string()),
            "user_id" => return Err(Bad::new(BadKind::Malformed, "a second user_id")),
            "target_item" => {}
            "hist_item" => history.push(value.to_string()),
            "eval_item" => truth.push(value.to_string()),
            _ => {
                return Err(Bad::new(
                    BadKind::Malformed,
                    format!("unknown key `{key}` (expected user_id, target_item, hist_item, eval_item)"),
                ))
            }
        }
    }
    let user = user.ok_or_else(|| Bad::new(BadKind::MissingField, "no user_id"))?;
    if truth.is_empty() {
        return Err(Bad::new(BadKind::MissingField, "no eval_item: nothing to retrieve"));
    }
    Ok(Line::Split { user, history, truth })
}

/// ComiRec's cut of a held-out history of `n` items: `int(n * 0.8)` in Python's double
/// arithmetic (`int()` truncates).
pub fn seen_count(n: usize) -> usize {
    (n as f64 * 0.8) as usize
}

impl HeldOut {
    /// Read `path` (gzip or plain), looking items up in `items` (name → vocabulary id, the
    /// padding id 0 excluded). A user of the interactions form whose history is one item
    /// has nothing seen, all to retrieve.
    pub fn read(path: &Path, items: &HashMap<&str, u32>, max_hist_len: usize) -> Result<Self, DataError> {
        let mut form = None;
        let mut columns = Columns::default();
        let mut split: Vec<(String, Vec<String>, Vec<String>)> = Vec::new();
        let mut interactions: Vec<(Interaction, u64)> = Vec::new();
        let summary = input::parse_lines_checked(path, Strictness::Strict, parse_line, |line, number| {
            let this = match line {
                Line::Row(_) => HeldOutForm::Interactions,
                Line::Split { .. } => HeldOutForm::Split,
            };
            if *form.get_or_insert(this) != this {
                return Err(Bad::new(
                    BadKind::Malformed,
                    "this line's form differs from the first line's (`user,item,time` lines and \
                     `user_id:… eval_item:…` lines cannot be mixed)",
                ));
            }
            match line {
                Line::Row(row) => interactions.extend(columns.read(row)?.map(|i| (i, number))),
                Line::Split { user, history, truth } => split.push((user, history, truth)),
            }
            Ok(())
        })?;
        let Some(form) = form else {
            return Err(DataError::Invalid {
                path: path.to_path_buf(),
                message: format!("no held-out user (the file has {} lines, all blank)", summary.lines),
            });
        };
        if form == HeldOutForm::Interactions {
            split = split_interactions(interactions);
        }
        if split.is_empty() {
            return Err(DataError::Invalid {
                path: path.to_path_buf(),
                message: format!("no held-out user (the file has {} lines: only headers)", summary.lines),
            });
        }
        let mut held = HeldOut {
            users: Vec::with_capacity(split.len()),
            form,
            history_items: 0,
            unknown_history_items: 0,
            truth_items: 0,
            unknown_truth_items: 0,
            users_without_history: 0,
        };
        // The distinct unknown items to retrieve, by name, with their ids.
        let mut unknown: HashMap<String, u32> = HashMap::new();
        for (user, history, truth) in split {
            let known: Vec<u32> = history.iter().filter_map(|name| items.get(name.as_str()).copied()).collect();
            held.history_items += history.len() as u64;
            held.unknown_history_items += (history.len() - known.len()) as u64;
            held.users_without_history += u64::from(known.is_empty());
            let truth: Vec<u32> = truth
                .into_iter()
                .map(|name| match items.get(name.as_str()) {
                    Some(&id) => id,
                    None => {
                        held.unknown_truth_items += 1;
                        let k = unknown.len();
                        *unknown.entry(name).or_insert_with(|| unknown_item(k))
                    }
                })
                .collect();
            held.truth_items += truth.len() as u64;
            let history = known[known.len().saturating_sub(max_hist_len)..].to_vec();
            held.users.push(HeldOutUser { user, history, truth });
        }
        Ok(held)
    }
}

/// Users in order of first appearance, each user's items sorted by time (ties in file order),
/// split into the seen `⌊0.8 n⌋` and the rest.
fn split_interactions(interactions: Vec<(Interaction, u64)>) -> Vec<(String, Vec<String>, Vec<String>)> {
    let mut order: Vec<String> = Vec::new();
    let mut by_user: HashMap<String, Vec<(i64, u64, String)>> = HashMap::new();
    for (Interaction { user, item, time }, line) in interactions {
        let entry = by_user.entry(user.clone()).or_insert_with(|| {
            order.push(user);
            Vec::new()
        });
        entry.push((time, line, item));
    }
    order
        .into_iter()
        .map(|user| {
            let mut items = by_user.remove(&user).unwrap_or_default();
            items.sort_by_key(|&(time, line, _)| (time, line));
            let mut items: Vec<String> = items.into_iter().map(|(_, _, item)| item).collect();
            let truth = items.split_off(seen_count(items.len()));
            (user, items, truth)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vocab() -> HashMap<&'static str, u32> {
        [("a", 1), ("b", 2), ("c", 3), ("d", 4), ("e", 5)].into_iter().collect()
    }

    fn read(text: &str, max_hist_len: usize) -> Result<HeldOut, DataError> {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("held-out.txt");
        std::fs::write(&path, text).unwrap();
        HeldOut::read(&path, &vocab(), max_hist_len)
    }

    #[test]
    fn the_seen_share_truncates_as_python_does() {
        // int(n * 0.8) for n = 1..=10 in Python: 0 1 2 3 4 4 5 6 7 8.
        let seen: Vec<usize> = (1..=10).map(seen_count).collect();
        assert_eq!(seen, [0, 1, 2, 3, 4, 4, 5, 6, 7, 8]);
        // Python gives ⌊4n / 5⌋ for every n below 3,000,000 (checked there); so does this.
        assert!((1..300_000).all(|n| seen_count(n) == 4 * n / 5));
    }

    #[test]
    fn interaction_lines_are_sorted_by_time_and_split_80_20() {
        // User 7's five items out of time order (ties in file order: b before e at time 3);
        // user 9 after; an unknown item in each part.
        let held = read("7,c,5\n7,b,3\n9,a,1\n7,e,3\n7,a,1\n9,zz,2\n7,d,9\n9,b,3\n9,yy,4\n9,c,5\n", 20).unwrap();
        assert_eq!(held.form, HeldOutForm::Interactions);
        let users: Vec<(&str, &[u32], &[u32])> =
            held.users.iter().map(|u| (u.user.as_str(), u.history.as_slice(), u.truth.as_slice())).collect();
        // 7: a b e c | d (4 of 5 seen); 9: a zz b yy | c (zz dropped from the history).
        assert_eq!(users, [("7", &[1, 2, 5, 3][..], &[4][..]), ("9", &[1, 2][..], &[3][..])]);
        assert_eq!((held.history_items, held.unknown_history_items), (8, 2));
        assert_eq!((held.truth_items, held.unknown_truth_items, held.users_without_history), (2, 0, 0));
        // The history keeps its last max_hist_len known items.
        let held = read("7,c,5\n7,b,3\n7,e,3\n7,a,1\n7,d,9\n", 2).unwrap();
        assert_eq!((held.users[0].history.as_slice(), held.users[0].truth.as_slice()), (&[5, 3][..], &[4][..]));
    }

    #[test]
    fn split_lines_keep_their_order_and_unknown_items_to_retrieve_stay_as_misses() {
        let held = read(
            "user_id:u1 target_item:0 hist_item:c hist_item:a eval_item:e eval_item:qq eval_item:zz eval_item:qq\n\
             user_id:u2 target_item:0 hist_item:xx eval_item:b eval_item:zz\n",
            20,
        )
        .unwrap();
        assert_eq!(held.form, HeldOutForm::Split);
        assert_eq!(held.users[0].history, [3, 1]);
        // Each distinct unknown item has an id of its own, the same wherever it is named.
        let (qq, zz) = (unknown_item(0), unknown_item(1));
        assert_eq!(held.users[0].truth, [5, qq, zz, qq]);
        assert_eq!(held.users[1].truth, [2, zz]);
        assert!(held.users[1].history.is_empty());
        assert_eq!((held.unknown_truth_items, held.users_without_history, held.unknown_history_items), (4, 1, 1));
    }

    #[test]
    fn bad_lines_are_errors_naming_the_line() {
        let line_of = |text: &str| match read(text, 20) {
            Err(DataError::BadLine { line, detail, .. }) => (line, detail),
            other => panic!("{other:?}"),
        };
        assert_eq!(line_of("7,a,1\n7,b\n").0, 2);
        assert!(line_of("7,a,1\n7,b,x\n").1.contains("not an integer"));
        assert!(line_of("7,a,1\nuser_id:1 eval_item:a\n").1.contains("cannot be mixed"));
        assert!(line_of("user_id:1 hist_item:a\n").1.contains("no eval_item"));
        assert!(line_of("user_id:1 hist:a eval_item:b\n").1.contains("unknown key `hist`"));
        assert!(line_of("user_id:1 hist_item: eval_item:b\n").1.contains("not `key:value`"));
        assert!(
            matches!(read("\n\n", 20), Err(DataError::Invalid { message, .. }) if message.contains("no held-out user"))
        );
    }

    /// Every line of `text` read in order by one [`Columns`].
    fn rows(text: &str) -> Vec<Result<Option<Interaction>, Bad>> {
        let mut columns = Columns::default();
        text.lines().map(|line| columns.read(split_row(line).unwrap())).collect()
    }

    fn interaction(user: &str, item: &str, time: i64) -> Option<Interaction> {
        Some(Interaction { user: user.into(), item: item.into(), time })
    }

    #[test]
    fn interactions_parse_with_their_errors_classified() {
        let mut columns = Columns::default();
        let mut parse = |line: &str| columns.read(split_row(line).unwrap());
        assert_eq!(parse(" 12, 345 ,6 ").unwrap(), interaction("12", "345", 6));
        assert_eq!(parse("1,2").unwrap_err().kind, BadKind::MissingField);
        let four = parse("1,2,3,4").unwrap_err();
        assert!(four.kind == BadKind::Malformed && four.detail.contains("read by name"), "{}", four.detail);
        assert_eq!(parse("1,,3").unwrap_err().kind, BadKind::MissingField);
        assert_eq!(parse("1,2,3.5").unwrap_err().kind, BadKind::WrongType);
        assert_eq!(parse("1,2,1.2e3").unwrap(), interaction("1", "2", 1200), "a whole number written as a float");
        assert!(parse("1,2,soon").unwrap_err().detail.contains("not an integer"));
        assert!(columns.describe().is_none(), "ComiRec's columns");
    }

    #[test]
    fn a_header_names_the_columns_as_recbole_and_amazon_2023_write_them() {
        // RecBole's atomic file (ml-100k.inter's header and its first row), tab-separated.
        let recbole = "user_id:token\titem_id:token\trating:float\ttimestamp:float\n196\t242\t3\t881250949.0\n";
        assert_eq!(rows(recbole), [Ok(None), Ok(interaction("196", "242", 881250949))]);
        // Amazon Reviews'23's benchmark file with histories: `parent_asin`, the time fourth.
        let amazon = "user_id,parent_asin,rating,timestamp,history\n\
                      AFKZENTNBQ7A7V7UXW5JJI6UGRYQ,B0BGXTQLL1,5.0,1523092443644,\n\
                      AFKZENTNBQ7A7V7UXW5JJI6UGRYQ,B0BV5ZGRRM,5.0,1564347303691,B0BGXTQLL1\n\
                      user_id,parent_asin,rating,timestamp,history\n\
                      U2,B1,4.0,7\n";
        let read = rows(amazon);
        assert_eq!(
            read[..4],
            [
                Ok(None),
                Ok(interaction("AFKZENTNBQ7A7V7UXW5JJI6UGRYQ", "B0BGXTQLL1", 1523092443644)),
                Ok(interaction("AFKZENTNBQ7A7V7UXW5JJI6UGRYQ", "B0BV5ZGRRM", 1564347303691)),
                Ok(None)
            ],
            "a repeated header is passed over"
        );
        let short = read[4].as_ref().unwrap_err();
        assert_eq!((short.kind, short.detail.as_str()), (BadKind::MissingField, "4 fields where the header names 5"));
        let mut columns = Columns::default();
        columns.read(split_row("reviewerID,asin,overall,unixReviewTime").unwrap()).unwrap();
        assert_eq!(
            columns.describe().unwrap(),
            "columns named by its header: user `reviewerID` (column 1), item `asin` (2), time `unixReviewTime` (4)"
        );
        // A header without a time column refuses every row, not reading the rating as a time.
        let read = rows("user_id,item_id,rating\n1,2,5\n");
        assert_eq!(read[0], Ok(None));
        let refused = read[1].as_ref().unwrap_err();
        assert!(
            refused.detail.contains("names no time column (timestamp, time, unixreviewtime, ts)"),
            "{}",
            refused.detail
        );
        // One without a user column too.
        let refused = rows("item,rating,timestamp\n2,5,1\n").pop().unwrap().unwrap_err();
        assert!(refused.detail.contains("names no user column (user_id,"), "{}", refused.detail);
    }

    #[test]
    fn quoted_fields_empty_edge_fields_and_a_second_header_are_read_as_written() {
        // A CSV writer's quotes (R's write.csv; Python's QUOTE_ALL), MovieLens' names.
        let quoted = "\"userId\",\"movieId\",\"rating\",\"timestamp\"\n\"1\",\"31\",\"2.5\",\"1260759144\"\n";
        assert_eq!(rows(quoted), [Ok(None), Ok(interaction("1", "31", 1260759144))]);
        // A tab-separated row whose first or last field is empty keeps it (a user's first row in
        // Amazon'23's benchmark file has no history).
        assert_eq!(split_row("U\tB\t5.0\t7\t").unwrap(), ["U", "B", "5.0", "7", ""]);
        let tsv = "user_id\tparent_asin\trating\ttimestamp\thistory\nU\tB\t5.0\t7\t\n";
        assert_eq!(rows(tsv), [Ok(None), Ok(interaction("U", "B", 7))]);
        // Files concatenated with headers of other orders: each header names the rows after it.
        let two = "user_id,item_id,timestamp\n1,a,5\ntimestamp,rating,item_id,user_id\n6,5.0,b,2\n";
        assert_eq!(rows(two), [Ok(None), Ok(interaction("1", "a", 5)), Ok(None), Ok(interaction("2", "b", 6))]);
        // CSV's quoting: a quoted field holds commas and doubled quotes.
        assert_eq!(split_row(r#" "a, b" ,"say ""hi""",,"",x"#).unwrap(), ["a, b", r#"say "hi""#, "", "", "x"]);
        // A bad row naming a column is a bad row, not a header that refuses the rest.
        let read = rows("user_id,item_id,timestamp\n1,a,5\n2,item,soon\n3,c,7\n");
        assert!(read[2].is_err() && read[3] == Ok(interaction("3", "c", 7)), "{read:?}");
        let huge = rows("1,2,1e300\n").pop().unwrap().unwrap_err();
        assert_eq!(huge.detail, "time `1e300` is out of range (beyond ±2^53)");
    }

    #[test]
    fn held_out_interactions_under_a_header_read_as_without_one() {
        let plain = read("7,c,5\n7,b,3\n9,a,1\n7,e,3\n7,a,1\n9,b,3\n9,c,5\n", 20).unwrap();
        let recbole = "user_id:token\titem_id:token\ttimestamp:float\n7\tc\t5.0\n7\tb\t3\n9\ta\t1\n7\te\t3\n\
                       7\ta\t1\n9\tb\t3\n9\tc\t5\n";
        assert_eq!(read(recbole, 20).unwrap(), plain);
        assert_eq!(plain.form, HeldOutForm::Interactions);
        // RecBole's typed names with commas are a header too, not a split line.
        let typed = "user_id:token,item_id:token,timestamp:float\n7,c,5\n7,b,3\n9,a,1\n7,e,3\n7,a,1\n9,b,3\n9,c,5\n";
        assert_eq!(read(typed, 20).unwrap(), plain);
        // A header alone holds no user.
        let alone = read("user_id,item_id,timestamp\n", 20).unwrap_err().to_string();
        assert!(alone.contains("no held-out user (the file has 1 lines: only headers)"), "{alone}");
    }
}
