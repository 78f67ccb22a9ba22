//! `dataset.json` (docs/DATA.md): where the two tables are and which columns
//! mean what. Unknown keys are refused, so a misspelt option is not ignored.

use std::path::{Path, PathBuf};

use serde::Deserialize;

use super::DataError;

/// The repository's MovieLens-100K config, built in so the command line finds
/// it from any directory (its files are in the asset cache, `{cache}`).
pub const ML100K: &str = include_str!("../../../datasets/ml-100k/dataset.json");

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Format {
    Atomic,
    Csv,
    Jsonl,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ItemColumns {
    pub file: String,
    pub id: String,
    pub title: String,
    #[serde(default)]
    pub year: String,
    #[serde(default)]
    pub categories: String,
    /// Empty: whitespace for atomic files, `|` otherwise.
    #[serde(default)]
    pub category_separator: String,
    #[serde(default)]
    pub fields: Vec<String>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InteractionColumns {
    pub file: String,
    pub user: String,
    pub item: String,
    pub timestamp: String,
    #[serde(default)]
    pub kind: String,
    #[serde(default)]
    pub weight: String,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Filter {
    pub min_user_interactions: usize,
    pub min_item_interactions: usize,
    pub min_weight: Option<f64>,
    pub kinds: Option<Vec<String>>,
}

impl Default for Filter {
    fn default() -> Self {
        Self {
            min_user_interactions: 3,
            min_item_interactions: 1,
            min_weight: None,
            kinds: None,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TimeKey {
    /// RecBole's: min-max normalized in f64, stored as f32 (close times tie).
    Recbole,
    Exact,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SplitOptions {
    pub method: String,
    pub time_key: TimeKey,
}

impl Default for SplitOptions {
    fn default() -> Self {
        Self {
            method: "leave-one-out".into(),
            time_key: TimeKey::Recbole,
        }
    }
}

/// The first line of each view's prompt: what the items are, in the data's own
/// words ("Movies a user watched, oldest first:"). Each ends with a newline, as
/// the prompt rule needs (docs/MODEL.md, prompts).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Prompts {
    pub behavioral: String,
    pub semantic: String,
}

/// Both views' prefix when a dataset names none: words that fit any catalog.
pub const GENERIC_PREFIX: &str = "Items a user interacted with, oldest first:\n";

/// The longest prefix accepted, in characters.
pub const MAX_PREFIX_CHARS: usize = 200;

impl Default for Prompts {
    fn default() -> Self {
        Self {
            behavioral: GENERIC_PREFIX.into(),
            semantic: GENERIC_PREFIX.into(),
        }
    }
}

impl Prompts {
    /// Why a prefix cannot start a prompt, or `None`.
    fn problem(&self) -> Option<String> {
        for (view, prefix) in [
            ("behavioral", &self.behavioral),
            ("semantic", &self.semantic),
        ] {
            let Some(line) = prefix.strip_suffix('\n') else {
                return Some(format!("prompts.{view} does not end with a newline"));
            };
            let one_line = !line.trim().is_empty() && !line.chars().any(char::is_control);
            if !one_line || prefix.chars().count() > MAX_PREFIX_CHARS {
                return Some(format!(
                    "prompts.{view} is not one line of at most {MAX_PREFIX_CHARS} characters"
                ));
            }
        }
        None
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct Raw {
    name: String,
    format: Format,
    #[serde(default)]
    root: String,
    items: ItemColumns,
    interactions: InteractionColumns,
    #[serde(default)]
    filter: Filter,
    #[serde(default)]
    split: SplitOptions,
    #[serde(default = "comma")]
    delimiter: String,
    #[serde(default)]
    prompts: Prompts,
}

fn comma() -> String {
    ",".into()
}

/// A parsed, checked `dataset.json`.
#[derive(Debug, Clone)]
pub struct DataConfig {
    pub name: String,
    pub format: Format,
    /// Where the tables are.
    pub root: PathBuf,
    pub items: ItemColumns,
    pub interactions: InteractionColumns,
    pub filter: Filter,
    pub split: SplitOptions,
    pub delimiter: u8,
    pub prompts: Prompts,
    /// The file this came from (for messages).
    pub source: PathBuf,
}

impl DataConfig {
    /// `path`: a `dataset.json` or the directory holding one; `None`: ml-100k's.
    pub fn load(path: Option<&Path>) -> Result<Self, DataError> {
        let Some(path) = path else {
            let source = PathBuf::from("datasets/ml-100k/dataset.json");
            return Self::parse(ML100K, &source, Path::new("."));
        };
        let file = if path.is_dir() {
            path.join("dataset.json")
        } else {
            path.to_owned()
        };
        let text = std::fs::read_to_string(&file).map_err(|e| {
            DataError::new(
                &file,
                format!("cannot read it: {e}"),
                "pass --data a dataset.json or its directory",
            )
        })?;
        let dir = file.parent().unwrap_or(Path::new(".")).to_owned();
        Self::parse(&text, &file, &dir)
    }

    fn parse(text: &str, source: &Path, dir: &Path) -> Result<Self, DataError> {
        let raw: Raw = serde_json::from_str(text).map_err(|e| {
            DataError::new(source, e.to_string(), "see docs/DATA.md").at(vec![e.line()])
        })?;
        let bad = |what: &str, fix: &str| Err(DataError::new(source, what, fix));
        let f = &raw.filter;
        if f.min_user_interactions < 3 {
            return bad(
                "filter.min_user_interactions is below 3",
                "leave-one-out needs 3",
            );
        }
        if f.min_weight.is_some() && raw.interactions.weight.is_empty() {
            return bad(
                "filter.min_weight needs interactions.weight",
                "map the column",
            );
        }
        if f.kinds.is_some() && raw.interactions.kind.is_empty() {
            return bad("filter.kinds needs interactions.kind", "map the column");
        }
        if raw.split.method != "leave-one-out" {
            return bad(
                &format!("split.method {:?} is unknown", raw.split.method),
                "use leave-one-out",
            );
        }
        if let Some(problem) = raw.prompts.problem() {
            return bad(&problem, "write one line of text that ends with \"\\n\"");
        }
        let delimiter = match raw.delimiter.as_bytes() {
            [d] => *d,
            _ if raw.format != Format::Csv => b',',
            _ => return bad("delimiter must be one character", "for example \",\""),
        };
        Ok(Self {
            name: raw.name,
            format: raw.format,
            root: resolve_root(&raw.root, dir),
            items: raw.items,
            interactions: raw.interactions,
            filter: raw.filter,
            split: raw.split,
            delimiter,
            prompts: raw.prompts,
            source: source.to_owned(),
        })
    }
}

fn resolve_root(root: &str, dir: &Path) -> PathBuf {
    if root.is_empty() {
        return dir.to_owned();
    }
    let cache = crate::assets::cache_dir();
    let path = PathBuf::from(root.replace("{cache}", &cache.to_string_lossy()));
    if path.is_absolute() {
        path
    } else {
        dir.join(path)
    }
}
