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

fn parse_catalog(file: &Path) -> Result<Catalog, CatalogError> {
    let text = read(file)?;
    let mut catalog = Catalog::default();
    for (n, line) in text.lines().enumerate().skip(1) {
        let cols: Vec<&str> = line.split('\t').collect();
        if cols.len() < 3 {
            return Err(CatalogError::Parse {
                file: file.to_owned(),
                line: n + 1,
                what: "expected item_id, title, year".into(),
            });
        }
        catalog.ids.push(cols[0].to_owned());
        catalog.texts.push(item_text(cols[1], cols[2]));
    }
    Ok(catalog)
}

/// Every rating is an interaction; each user's items sorted by time, ties in
/// file order (a stable sort), as RecBole's sequential protocol does.
fn parse_histories(file: &Path, rows: &HashMap<&str, u32>) -> Result<Vec<History>, CatalogError> {
    let text = read(file)?;
    let mut order: Vec<String> = Vec::new();
    let mut events: HashMap<String, Vec<(f64, u32)>> = HashMap::new();
    for (n, line) in text.lines().enumerate().skip(1) {
        let bad = |what: &str| CatalogError::Parse {
            file: file.to_owned(),
            line: n + 1,
            what: what.to_owned(),
        };
        let cols: Vec<&str> = line.split('\t').collect();
        let [user, item, _rating, time] = cols[..] else {
            return Err(bad("expected 4 columns"));
        };
        let row = *rows.get(item).ok_or_else(|| bad("unknown item id"))?;
        let time: f64 = time.parse().map_err(|_| bad("bad timestamp"))?;
        let list = events.entry(user.to_owned()).or_insert_with(|| {
            order.push(user.to_owned());
            Vec::new()
        });
        list.push((time, row));
    }
    Ok(order
        .into_iter()
        .map(|user| {
            let mut list = events.remove(&user).unwrap_or_default();
            list.sort_by(|a, b| a.0.total_cmp(&b.0));
            History {
                user,
                rows: list.into_iter().map(|(_, r)| r).collect(),
            }
        })
        .collect())
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
