//! MovieLens-100K as RecBole ships it (atomic files): the catalog and every
//! user's history in time order.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

#[derive(Debug, thiserror::Error)]
pub enum CatalogError {
    #[error("{file}: {source}")]
    Io {
        file: PathBuf,
        source: std::io::Error,
    },
    #[error("{file}:{line}: {what}")]
    Parse {
        file: PathBuf,
        line: usize,
        what: String,
    },
}

/// Items in catalog-row order (the order of `ml-100k.item`).
#[derive(Debug, Clone, Default)]
pub struct Catalog {
    pub ids: Vec<String>,
    /// `"<title> (<year>)"`, the semantic view's item text.
    pub texts: Vec<String>,
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
}

/// One user's interactions, oldest first, as catalog rows.
#[derive(Debug, Clone)]
pub struct History {
    pub user: String,
    pub rows: Vec<u32>,
}

/// The ml-100k data set.
#[derive(Debug, Clone)]
pub struct Dataset {
    pub catalog: Catalog,
    /// Users in the order they first appear in `ml-100k.inter`.
    pub histories: Vec<History>,
}

fn read(file: &Path) -> Result<String, CatalogError> {
    std::fs::read_to_string(file).map_err(|source| CatalogError::Io {
        file: file.to_owned(),
        source,
    })
}

/// The semantic text of an item: its title, and its year when known.
pub fn item_text(title: &str, year: &str) -> String {
    if year.trim().is_empty() {
        title.trim().to_owned()
    } else {
        format!("{} ({})", title.trim(), year.trim())
    }
}

/// The columns of a RecBole atomic file by field name (`name:type` headers),
/// so a reordered or widened file still reads right (the trainer reads them
/// the same way).
fn columns<const N: usize>(
    file: &Path,
    header: Option<&str>,
    names: [&str; N],
) -> Result<[usize; N], CatalogError> {
    let fields: Vec<&str> = header
        .unwrap_or("")
        .split('\t')
        .map(|f| f.split(':').next().unwrap_or(""))
        .collect();
    let mut found = [0; N];
    for (slot, name) in found.iter_mut().zip(names) {
        *slot = fields
            .iter()
            .position(|f| *f == name)
            .ok_or_else(|| CatalogError::Parse {
                file: file.to_owned(),
                line: 1,
                what: format!(
                    "no `{name}` column in the header (found: {}); is this a RecBole atomic file?",
                    fields.join(", ")
                ),
            })?;
    }
    Ok(found)
}

fn parse_catalog(file: &Path) -> Result<Catalog, CatalogError> {
    let text = read(file)?;
    let mut lines = text.lines();
    let [id, title, year] = columns(
        file,
        lines.next(),
        ["item_id", "movie_title", "release_year"],
    )?;
    let mut catalog = Catalog::default();
    for (n, line) in lines.enumerate() {
        let cols: Vec<&str> = line.split('\t').collect();
        let field = |c: usize| cols.get(c).copied();
        let (Some(id), Some(title)) = (field(id), field(title)) else {
            return Err(CatalogError::Parse {
                file: file.to_owned(),
                line: n + 2,
                what: "fewer columns than the header".into(),
            });
        };
        catalog.ids.push(id.to_owned());
        catalog
            .texts
            .push(item_text(title, field(year).unwrap_or("")));
    }
    Ok(catalog)
}

/// Every rating is an interaction; each user's items sorted by time, ties in
/// file order (a stable sort), as RecBole's sequential protocol does. The sort
/// key is RecBole's, not the raw timestamp: min-max normalized in f64 and
/// stored as f32, which merges timestamps about a second apart into ties (on
/// ml-100k that moves 5 users' held-out items; the trainer does the same).
fn parse_histories(file: &Path, rows: &HashMap<&str, u32>) -> Result<Vec<History>, CatalogError> {
    let text = read(file)?;
    let mut order: Vec<String> = Vec::new();
    let mut events: HashMap<String, Vec<(f64, u32)>> = HashMap::new();
    let (mut first, mut last) = (f64::INFINITY, f64::NEG_INFINITY);
    let mut lines = text.lines();
    let [user_col, item_col, time_col] =
        columns(file, lines.next(), ["user_id", "item_id", "timestamp"])?;
    for (n, line) in lines.enumerate() {
        let bad = |what: &str| CatalogError::Parse {
            file: file.to_owned(),
            line: n + 2,
            what: what.to_owned(),
        };
        let cols: Vec<&str> = line.split('\t').collect();
        let (Some(&user), Some(&item), Some(&time)) =
            (cols.get(user_col), cols.get(item_col), cols.get(time_col))
        else {
            return Err(bad("fewer columns than the header"));
        };
        let row = *rows.get(item).ok_or_else(|| bad("unknown item id"))?;
        let time: f64 = time.parse().map_err(|_| bad("bad timestamp"))?;
        (first, last) = (first.min(time), last.max(time));
        let list = events.entry(user.to_owned()).or_insert_with(|| {
            order.push(user.to_owned());
            Vec::new()
        });
        list.push((time, row));
    }
    Ok(order
        .into_iter()
        .map(|user| {
            let mut list: Vec<(f32, u32)> = events
                .remove(&user)
                .unwrap_or_default()
                .into_iter()
                .map(|(t, r)| (recbole_time_key(t, first, last), r))
                .collect();
            list.sort_by(|a, b| a.0.total_cmp(&b.0));
            History {
                user,
                rows: list.into_iter().map(|(_, r)| r).collect(),
            }
        })
        .collect())
}

/// RecBole's time-order key: `(t - first) / (last - first)` in f64, rounded to f32.
fn recbole_time_key(t: f64, first: f64, last: f64) -> f32 {
    if last > first {
        ((t - first) / (last - first)) as f32
    } else {
        1.0
    }
}

impl Dataset {
    /// Loads `ml-100k.item` and `ml-100k.inter` from `dir`.
    pub fn load_ml100k(dir: &Path) -> Result<Self, CatalogError> {
        let catalog = parse_catalog(&dir.join("ml-100k.item"))?;
        let histories = parse_histories(&dir.join("ml-100k.inter"), &catalog.rows_by_id())?;
        Ok(Self { catalog, histories })
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
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(dir: &Path, name: &str, text: &str) {
        std::fs::write(dir.join(name), text).unwrap();
    }

    #[test]
    fn timestamps_that_round_to_one_f32_keep_file_order() {
        let dir = tempfile::tempdir().unwrap();
        write(
            dir.path(),
            "ml-100k.item",
            "release_year:token\titem_id:token\tmovie_title:token_seq\n1990\ta\tA\n1991\tb\tB\n\tc\tC\n",
        );
        // Over a 2e8 s span an f32 step is ~12 s: b (5 s later in time, first in the file)
        // ties with a and stays first; c, 1000 s later, sorts after both.
        write(
            dir.path(),
            "ml-100k.inter",
            "user_id:token\titem_id:token\trating:float\ttimestamp:float\n\
             9\tc\t1\t0\n\
             1\tc\t1\t100001000\n\
             1\tb\t1\t100000005\n\
             1\ta\t1\t100000000\n\
             9\ta\t1\t200000000\n",
        );
        let data = Dataset::load_ml100k(dir.path()).unwrap();
        assert_eq!(data.history("1").unwrap().rows, vec![1, 0, 2]);
        assert_eq!(data.history("9").unwrap().rows, vec![2, 0]);
        assert_eq!(data.catalog.texts[..], ["A (1990)", "B (1991)", "C"]);
        write(
            dir.path(),
            "ml-100k.item",
            "item_id:token\ttitle:token_seq\n",
        );
        let err = Dataset::load_ml100k(dir.path()).unwrap_err().to_string();
        assert!(err.contains("no `movie_title` column"), "{err}");
    }
}
