//! A dataset as docs/DATA.md defines it: `dataset.json`, an items table and
//! an interactions table (RecBole atomic files, CSV or JSON Lines), checked,
//! filtered and put in time order per user. The trainer's `dataset.py` is the
//! twin; both are tested against `golden/datasets/`.
//!
//! The phone library never parses datasets (an app feeds `upsert_items` and
//! `observe`); this is for `eval`, `demo`, the benches and the tests.

mod config;
mod filter;
mod read;
mod time;

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

pub use config::{DataConfig, Format, Prompts, TimeKey, GENERIC_PREFIX};
pub use time::parse_timestamp;

use read::{for_each_row, Value};

/// The fix for a bad id: the engine's rule at its default limits (docs/LIMITS.md).
const ID_RULE: &str = "ids are what the engine takes: 1 to 256 bytes, no control characters";
/// How many line numbers an error lists.
const EXAMPLES: usize = 5;

/// What is wrong with a dataset, where, and what to do.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{}: {what} ({fix})", where_(file, lines))]
pub struct DataError {
    pub file: PathBuf,
    /// Lines (1-based, header included), every one found; the message shows five.
    pub lines: Vec<usize>,
    pub what: String,
    pub fix: String,
}

fn where_(file: &Path, lines: &[usize]) -> String {
    let mut at = file.display().to_string();
    if !lines.is_empty() {
        let shown: Vec<String> = lines.iter().take(EXAMPLES).map(usize::to_string).collect();
        at = format!("{at}:{}", shown.join(","));
    }
    at
}

impl DataError {
    fn new(file: &Path, what: impl Into<String>, fix: impl Into<String>) -> Self {
        Self {
            file: file.to_owned(),
            lines: Vec::new(),
            what: what.into(),
            fix: fix.into(),
        }
    }

    fn at(mut self, lines: Vec<usize>) -> Self {
        self.lines = lines;
        self
    }
}

/// Items in catalog-row order (the items file's order).
#[derive(Debug, Clone, Default)]
pub struct Catalog {
    pub ids: Vec<String>,
    /// The item text without categories (MODEL.md v1's, and the zero-shot
    /// bundle's): title, year and the extra fields.
    pub texts: Vec<String>,
    /// Each item's categories (ml-100k: genres), in file order.
    pub categories: Vec<Vec<String>>,
    titles: Vec<(String, String, Vec<String>)>,
}

impl Catalog {
    pub fn len(&self) -> usize {
        self.ids.len()
    }

    pub fn is_empty(&self) -> bool {
        self.ids.is_empty()
    }

    pub fn rows_by_id(&self) -> HashMap<&str, u32> {
        self.ids
            .iter()
            .enumerate()
            .map(|(i, id)| (id.as_str(), i as u32))
            .collect()
    }

    /// Row `row`'s text with its categories (MODEL.md v2, uncapped).
    pub fn text_with_categories(&self, row: usize) -> String {
        let (title, year, fields) = &self.titles[row];
        item_text(title, year, &self.categories[row], fields)
    }

    fn push(
        &mut self,
        id: String,
        title: String,
        year: String,
        cats: Vec<String>,
        fields: Vec<String>,
    ) {
        self.ids.push(id);
        self.texts.push(item_text(&title, &year, &[], &fields));
        self.categories.push(cats);
        self.titles.push((title, year, fields));
    }
}

/// docs/DATA.md's item text, uncapped: `<title> (<year>); <category>, <category>; <field>`,
/// empty parts left out with their separator.
pub fn item_text(title: &str, year: &str, categories: &[String], fields: &[String]) -> String {
    let (title, year) = (title.trim(), year.trim());
    let mut text = if year.is_empty() {
        title.to_owned()
    } else {
        format!("{title} ({year})")
    };
    if !categories.is_empty() {
        text = format!("{text}; {}", categories.join(", "));
    }
    for field in fields.iter().map(|f| f.trim()).filter(|f| !f.is_empty()) {
        text = format!("{text}; {field}");
    }
    text
}

/// One user's kept interactions, in time order, as catalog rows.
#[derive(Debug, Clone)]
pub struct History {
    pub user: String,
    pub rows: Vec<u32>,
}

/// A loaded dataset.
#[derive(Debug, Clone)]
pub struct Dataset {
    pub name: String,
    pub catalog: Catalog,
    /// Users in the order they first appear in the interactions file.
    pub histories: Vec<History>,
    /// What the filter dropped, by reason (the trainer's names).
    pub dropped: BTreeMap<String, usize>,
    /// The first line of each view's prompt, in the data's words.
    pub prompts: Prompts,
}

/// Why an id is not one the engine would accept (its own rule, with the
/// default limits, so every id a dataset loads with can be observed), or `None`.
fn id_problem(id: &str) -> Option<String> {
    l2rec::engine::Limits::default()
        .check_id(id)
        .err()
        .map(|e| e.to_string())
}

fn split_categories(value: &Value, separator: &str) -> Vec<String> {
    let parts: Vec<String> = match value {
        Value::List(items) => items.clone(),
        Value::Text(t) if separator.is_empty() => t.split_whitespace().map(str::to_owned).collect(),
        Value::Text(t) => t.split(separator).map(str::to_owned).collect(),
    };
    parts
        .into_iter()
        .map(|p| p.trim().to_owned())
        .filter(|p| !p.is_empty())
        .collect()
}

fn columns<'a>(names: impl IntoIterator<Item = &'a str>) -> Vec<&'a str> {
    let mut out: Vec<&str> = Vec::new();
    for name in names.into_iter().filter(|n| !n.is_empty()) {
        if !out.contains(&name) {
            out.push(name);
        }
    }
    out
}

fn load_catalog(cfg: &DataConfig) -> Result<Catalog, DataError> {
    let c = &cfg.items;
    let path = cfg.root.join(&c.file);
    let cols = columns(
        [c.id.as_str(), &c.title, &c.year, &c.categories]
            .into_iter()
            .chain(c.fields.iter().map(String::as_str)),
    );
    let col = |name: &str| cols.iter().position(|c| *c == name);
    let separator = match (c.category_separator.as_str(), cfg.format) {
        ("", Format::Atomic) => "",
        ("", _) => "|",
        (s, _) => s,
    };
    let (mut catalog, mut first) = (Catalog::default(), HashMap::new());
    let (mut bad_ids, mut dups, mut untitled) = (Vec::new(), Vec::new(), Vec::new());
    let text_of =
        |row: &[Value], name: &str| col(name).map_or("", |i| row[i].text()).trim().to_owned();
    for_each_row(&path, cfg.format, cfg.delimiter, &cols, |n, row| {
        let id = row[0].text().to_owned();
        if let Some(why) = id_problem(&id) {
            bad_ids.push((n, id, why));
            return;
        }
        if let Some(&line) = first.get(&id) {
            dups.extend([line, n]);
            return;
        }
        first.insert(id.clone(), n);
        let title = text_of(&row, &c.title);
        if title.is_empty() {
            untitled.push(n);
        }
        let cats = col(&c.categories)
            .filter(|_| !c.categories.is_empty())
            .map_or_else(Vec::new, |i| split_categories(&row[i], separator));
        let fields = c.fields.iter().map(|f| text_of(&row, f)).collect();
        catalog.push(id, title, text_of(&row, &c.year), cats, fields);
    })?;
    if let Some((_, id, why)) = bad_ids.first() {
        return Err(DataError::new(
            &path,
            format!(
                "{} item id(s) are invalid, e.g. {id:?} ({why})",
                bad_ids.len()
            ),
            ID_RULE,
        )
        .at(bad_ids.iter().map(|b| b.0).collect()));
    }
    if !dups.is_empty() {
        return Err(DataError::new(
            &path,
            format!("{} duplicate item id(s)", dups.len() / 2),
            "keep one row per item id",
        )
        .at(dups));
    }
    if !untitled.is_empty() {
        return Err(DataError::new(
            &path,
            format!(
                "{} item(s) have an empty title `{}`",
                untitled.len(),
                c.title
            ),
            "give every item a title: the semantic view reads it",
        )
        .at(untitled));
    }
    if catalog.is_empty() {
        return Err(DataError::new(
            &path,
            "no items",
            "the items table needs at least one row",
        ));
    }
    Ok(catalog)
}

/// Kept events in file order: (user, row, time), each user an index into
/// `user_ids` (first appearance first): one word per event, not a string.
#[derive(Default)]
struct Events {
    user_ids: Vec<String>,
    users: Vec<u32>,
    rows: Vec<u32>,
    times: Vec<f64>,
}

impl Events {
    fn push(&mut self, index: &mut HashMap<String, u32>, user: &str, row: u32, time: f64) {
        let next = self.user_ids.len() as u32;
        let u = match index.get(user) {
            Some(&u) => u,
            None => {
                index.insert(user.to_owned(), next);
                self.user_ids.push(user.to_owned());
                next
            }
        };
        self.users.push(u);
        self.rows.push(row);
        self.times.push(time);
    }
}

fn load_events(
    cfg: &DataConfig,
    rows_by_id: &HashMap<&str, u32>,
    dropped: &mut BTreeMap<String, usize>,
) -> Result<Events, DataError> {
    let c = &cfg.interactions;
    let path = cfg.root.join(&c.file);
    let cols = columns([c.user.as_str(), &c.item, &c.timestamp, &c.kind, &c.weight]);
    let col = |name: &str| cols.iter().position(|c| *c == name);
    let (kind_col, weight_col) = (
        col(&c.kind).filter(|_| !c.kind.is_empty()),
        col(&c.weight).filter(|_| !c.weight.is_empty()),
    );
    let (mut events, mut index) = (Events::default(), HashMap::new());
    let (mut bad_users, mut bad_times, mut bad_weights) = (Vec::new(), Vec::new(), Vec::new());
    let mut unknown: BTreeMap<String, Vec<usize>> = BTreeMap::new();
    let mut drop = |reason: &str| *dropped.entry(reason.to_owned()).or_default() += 1;
    for_each_row(&path, cfg.format, cfg.delimiter, &cols, |n, row| {
        let (user, item) = (row[0].text(), row[1].text());
        if matches!(row[0], Value::List(_)) || id_problem(user).is_some() {
            bad_users.push(n);
            return;
        }
        let Some(time) =
            parse_timestamp(row[2].text()).filter(|_| matches!(row[2], Value::Text(_)))
        else {
            bad_times.push(n);
            return;
        };
        if let Some(w) = weight_col {
            let Ok(weight) = row[w].text().trim().parse::<f64>() else {
                bad_weights.push(n);
                return;
            };
            if cfg.filter.min_weight.is_some_and(|min| weight < min) {
                drop("interactions below min_weight");
                return;
            }
        }
        if let (Some(kinds), Some(k)) = (&cfg.filter.kinds, kind_col) {
            if !kinds.iter().any(|kind| kind == row[k].text()) || matches!(row[k], Value::List(_)) {
                drop("interactions of other kinds");
                return;
            }
        }
        let Some(&r) = rows_by_id
            .get(item)
            .filter(|_| matches!(row[1], Value::Text(_)))
        else {
            unknown.entry(item.to_owned()).or_default().push(n);
            return;
        };
        events.push(&mut index, user, r, time);
    })?;
    let fail = |what: String, fix: &str, lines: Vec<usize>| {
        Err(DataError::new(&path, what, fix).at(lines))
    };
    if !bad_users.is_empty() {
        return fail(
            format!("{} row(s) have an invalid user id", bad_users.len()),
            ID_RULE,
            bad_users,
        );
    }
    if !bad_times.is_empty() {
        return fail(
            format!(
                "{} timestamp(s) in `{}` are neither a number nor ISO 8601",
                bad_times.len(),
                c.timestamp
            ),
            "write seconds or YYYY-MM-DD[THH:MM[:SS]][Z|+HH:MM]",
            bad_times,
        );
    }
    if !bad_weights.is_empty() {
        return fail(
            format!(
                "{} weight(s) in `{}` are not numbers",
                bad_weights.len(),
                c.weight
            ),
            "fix them",
            bad_weights,
        );
    }
    if !unknown.is_empty() {
        let rows: usize = unknown.values().map(Vec::len).sum();
        let ids = unknown.len();
        let names: Vec<String> = unknown.keys().take(EXAMPLES).cloned().collect();
        let mut lines: Vec<usize> = unknown.into_values().flatten().collect();
        lines.sort_unstable();
        return fail(
            format!(
                "{rows} interaction(s) name {ids} item id(s) that the items table lacks, e.g. {names:?}"
            ),
            "add them to the items file or remove those rows",
            lines,
        );
    }
    Ok(events)
}

impl Dataset {
    /// `path`: a `dataset.json` or its directory; `None`: ml-100k (the
    /// repository's config, files in the asset cache).
    pub fn load(path: Option<&Path>) -> Result<Self, DataError> {
        Self::from_config(&DataConfig::load(path)?)
    }

    /// MovieLens-100K, from the asset cache.
    pub fn ml100k() -> Result<Self, DataError> {
        Self::load(None)
    }

    pub fn from_config(cfg: &DataConfig) -> Result<Self, DataError> {
        let catalog = load_catalog(cfg)?;
        let mut dropped = BTreeMap::new();
        let events = load_events(cfg, &catalog.rows_by_id(), &mut dropped)?;
        let keep = filter::core(
            &events.users,
            events.user_ids.len(),
            &events.rows,
            catalog.len(),
            &cfg.filter,
            &mut dropped,
        );
        dropped.retain(|_, n| *n > 0);
        let histories = histories(&events, &keep, cfg.split.time_key);
        if histories.is_empty() {
            return Err(DataError::new(
                &cfg.root.join(&cfg.interactions.file),
                "no interaction is left after filtering",
                "lower the filter's minimums",
            ));
        }
        Ok(Self {
            name: cfg.name.clone(),
            catalog,
            histories,
            dropped,
            prompts: cfg.prompts.clone(),
        })
    }

    pub fn history(&self, user: &str) -> Option<&History> {
        self.histories.iter().find(|h| h.user == user)
    }

    /// Interaction counts per catalog row.
    pub fn popularity(&self) -> Vec<u32> {
        let mut counts = vec![0u32; self.catalog.len()];
        for h in &self.histories {
            for &r in &h.rows {
                counts[r as usize] += 1;
            }
        }
        counts
    }

    /// Kept interactions.
    pub fn interactions(&self) -> usize {
        self.histories.iter().map(|h| h.rows.len()).sum()
    }

    /// Catalog items no kept interaction names (served by their text alone).
    pub fn cold_items(&self) -> usize {
        self.popularity().iter().filter(|&&c| c == 0).count()
    }
}

/// Each kept user's events sorted by the split's time key, ties in file order
/// (a stable sort, as RecBole's over the whole table), users in first-seen order.
fn histories(events: &Events, keep: &[bool], key: TimeKey) -> Vec<History> {
    let kept = || (0..events.rows.len()).filter(|&i| keep[i]);
    let (first, last) = kept().fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), i| {
        (lo.min(events.times[i]), hi.max(events.times[i]))
    });
    let sort_key = |t: f64| match key {
        TimeKey::Exact => t,
        TimeKey::Recbole => f64::from(recbole_time_key(t, first, last)),
    };
    // Users in the order of their first kept event (a user whose first events
    // were dropped comes where its first kept one is).
    let mut order: Vec<u32> = Vec::new();
    let mut per_user: Vec<Vec<(f64, u32)>> = vec![Vec::new(); events.user_ids.len()];
    for i in kept() {
        let list = &mut per_user[events.users[i] as usize];
        if list.is_empty() {
            order.push(events.users[i]);
        }
        list.push((sort_key(events.times[i]), events.rows[i]));
    }
    order
        .into_iter()
        .map(|u| {
            let mut list = std::mem::take(&mut per_user[u as usize]);
            list.sort_by(|a, b| a.0.total_cmp(&b.0));
            History {
                user: events.user_ids[u as usize].clone(),
                rows: list.into_iter().map(|(_, r)| r).collect(),
            }
        })
        .collect()
}

/// RecBole's time-order key: `(t - first) / (last - first)` in f64, rounded to f32.
fn recbole_time_key(t: f64, first: f64, last: f64) -> f32 {
    if last > first {
        ((t - first) / (last - first)) as f32
    } else {
        1.0
    }
}
