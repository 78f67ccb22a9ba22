//! Model bundles (SPEC "Bundle layout", docs/BUNDLE.md): opened only after
//! every byte is checked, so nothing unchecked reaches llama.cpp.

#[cfg(any(fuzzing, test))]
pub mod fuzzing;
mod manifest;
mod tensors;

use std::collections::HashMap;
use std::path::{Path, PathBuf};

pub use manifest::*;
pub use tensors::{Gru, Heads, Items, Linear, Users};

use crate::backbone::{sha256_file, ModelInfo};
use crate::lora::{validate_expert, LoraError};
use crate::per_view::PerView;
use crate::prompt::{Render, View};

#[derive(Debug, thiserror::Error)]
pub enum BundleError {
    #[error("{0}: not a directory; a bundle is a directory holding manifest.json")]
    NotADirectory(PathBuf),
    #[error("{0}: missing")]
    Missing(PathBuf),
    #[error("{file}: {source}")]
    Io {
        file: PathBuf,
        source: std::io::Error,
    },
    #[error("{file}: invalid JSON at line {line}, column {column}: {msg}")]
    Json {
        file: PathBuf,
        line: usize,
        column: usize,
        msg: String,
    },
    #[error("{file}: format is {found:?}, expected \"l2rec-bundle\"; is this an l2rec bundle?")]
    Format { file: PathBuf, found: String },
    #[error("{file}: bundle version {found} is not supported (this runtime reads versions 1 to {supported}); re-export the bundle or update l2rec")]
    Version {
        file: PathBuf,
        found: u32,
        supported: u32,
    },
    #[error("{file}: {what}")]
    Invalid { file: PathBuf, what: String },
    #[error("{file}: required by the bundle but not listed in manifest.json `files`")]
    Unlisted { file: PathBuf },
    #[error("{file}: {found} bytes, the manifest says {expected} (truncated or replaced?)")]
    Size {
        file: PathBuf,
        expected: u64,
        found: u64,
    },
    #[error("{file}: sha256 is {found}, the manifest says {expected} (corrupted?)")]
    Checksum {
        file: PathBuf,
        expected: String,
        found: String,
    },
    #[error("{file}: not a valid safetensors file: {msg}")]
    Safetensors { file: PathBuf, msg: String },
    #[error("{file}: tensor `{name}` is missing")]
    MissingTensor { file: PathBuf, name: String },
    #[error("{file}: tensor `{name}` is {found}, expected F32")]
    Dtype {
        file: PathBuf,
        name: String,
        found: String,
    },
    #[error("{file}: tensor `{name}` has shape {found:?}, expected {expected:?}")]
    Shape {
        file: PathBuf,
        name: String,
        expected: Vec<usize>,
        found: Vec<usize>,
    },
    #[error("{file}: tensor `{name}` holds NaN or infinite values")]
    NonFinite { file: PathBuf, name: String },
    #[error("{file}: metadata `{key}`: {what}")]
    Metadata {
        file: PathBuf,
        key: String,
        what: String,
    },
    #[error("the bundle was made for backbone {field} {bundle}, but the model has {model}; use the bundle's backbone ({file})")]
    Backbone {
        field: &'static str,
        bundle: String,
        model: String,
        file: String,
    },
    #[error("expert file: {0}")]
    Expert(#[from] LoraError),
}

/// A bundle whose every file has been verified.
#[derive(Debug)]
pub struct Bundle {
    pub dir: PathBuf,
    pub manifest: Manifest,
    pub heads: Heads,
    pub items: Items,
    pub users: Option<Users>,
    /// Verified expert files per view, in expert order.
    pub experts: PerView<Vec<PathBuf>>,
}

impl Bundle {
    /// Reads and checks a bundle against the backbone it will run on: manifest,
    /// backbone identity, every listed file's size and sha256, tensor names,
    /// shapes and dtypes, and every expert file.
    pub fn open(dir: &Path, model: &ModelInfo) -> Result<Self, BundleError> {
        Self::open_with(dir, Self::read_manifest(dir)?, model)
    }

    /// Reads and parses `dir/manifest.json` alone (format and version
    /// first), for a caller that needs the bundle's backbone before it loads
    /// one; [`Bundle::open_with`] then checks the rest.
    pub fn read_manifest(dir: &Path) -> Result<Manifest, BundleError> {
        if !dir.is_dir() {
            return Err(BundleError::NotADirectory(dir.to_owned()));
        }
        read_manifest(dir)
    }

    /// [`Bundle::open`] with a manifest read by [`Bundle::read_manifest`].
    pub fn open_with(
        dir: &Path,
        manifest: Manifest,
        model: &ModelInfo,
    ) -> Result<Self, BundleError> {
        check_manifest(dir, &manifest)?;
        check_backbone(&manifest.backbone, model)?;
        check_listed_files(dir, &manifest)?;
        let heads = Heads::read(&dir.join("heads.safetensors"), &manifest)?;
        let items = Items::read(&dir.join("items.safetensors"), &manifest)?;
        let users_path = dir.join("users.safetensors");
        let users = manifest
            .files
            .contains_key("users.safetensors")
            .then(|| Users::read(&users_path, &manifest))
            .transpose()?;
        let experts = PerView::try_from_fn(|view| {
            (0..manifest.views.get(view).experts)
                .map(|k| {
                    let path = dir.join(expert_file(view, k));
                    validate_expert(&path, model, &manifest.lora)?;
                    Ok(path)
                })
                .collect::<Result<Vec<_>, BundleError>>()
        })?;
        Ok(Self {
            dir: dir.to_owned(),
            manifest,
            heads,
            items,
            users,
            experts,
        })
    }

    /// Catalog rows by item id.
    pub fn item_rows(&self) -> HashMap<&str, usize> {
        self.items
            .ids
            .iter()
            .enumerate()
            .map(|(i, id)| (id.as_str(), i))
            .collect()
    }
}

fn io_error(file: &Path) -> impl FnOnce(std::io::Error) -> BundleError + '_ {
    move |source| {
        if source.kind() == std::io::ErrorKind::NotFound {
            BundleError::Missing(file.to_owned())
        } else {
            BundleError::Io {
                file: file.to_owned(),
                source,
            }
        }
    }
}

fn read_manifest(dir: &Path) -> Result<Manifest, BundleError> {
    let file = dir.join("manifest.json");
    let text = std::fs::read_to_string(&file).map_err(io_error(&file))?;
    parse_manifest(file, &text)
}

fn parse_manifest(file: PathBuf, text: &str) -> Result<Manifest, BundleError> {
    let json_error = |e: serde_json::Error| BundleError::Json {
        file: file.clone(),
        line: e.line(),
        column: e.column(),
        msg: e.to_string(),
    };
    // Format and version first: a future manifest must say "update l2rec",
    // not fail on a field it renamed.
    #[derive(serde::Deserialize)]
    struct Header {
        format: Option<String>,
        version: Option<u32>,
    }
    let header: Header = serde_json::from_str(text).map_err(json_error)?;
    let format = header.format.unwrap_or_default();
    if format != FORMAT {
        return Err(BundleError::Format {
            file,
            found: format,
        });
    }
    let version = header.version.unwrap_or(0);
    if !(1..=VERSION).contains(&version) {
        return Err(BundleError::Version {
            file,
            found: version,
            supported: VERSION,
        });
    }
    serde_json::from_str(text).map_err(json_error)
}

fn check_manifest(dir: &Path, m: &Manifest) -> Result<(), BundleError> {
    let invalid = |what: String| BundleError::Invalid {
        file: dir.join("manifest.json"),
        what,
    };
    for view in View::BOTH {
        let v = m.views.get(view);
        let k_ok = if v.experts == 0 {
            v.k == 0
        } else {
            (1..=v.experts).contains(&v.k)
        };
        if !k_ok {
            return Err(invalid(format!(
                "views.{view}: k = {} with {} experts",
                v.k, v.experts
            )));
        }
    }
    if m.version < 2
        && (m.encoder != Encoder::None || m.max_text_chars != 0 || m.history.view_items != 0)
    {
        return Err(invalid(
            "`encoder`, `max_text_chars` and `history.view_items` need version 2 (docs/MODEL.md)"
                .into(),
        ));
    }
    if m.history.view_items > m.history.max_items {
        return Err(invalid(format!(
            "history.view_items {} is more than history.max_items {}",
            m.history.view_items, m.history.max_items
        )));
    }
    if m.views.semantic.render != Render::Id
        || (m.version < 2 && m.views.behavioral.render != Render::Id)
    {
        return Err(invalid(
            "`render: codes` is for the behavioral view of a version 2 bundle".into(),
        ));
    }
    check_bounds(m).map_err(invalid)?;
    let d = m.dims;
    if d.d != m.backbone.n_embd || d.d_r == 0 || d.d_phi == 0 {
        return Err(invalid(format!(
            "dims {d:?} do not fit backbone n_embd {}",
            m.backbone.n_embd
        )));
    }
    if m.history.max_items == 0 || m.items.count == 0 {
        return Err(invalid(
            "history.max_items and items.count must be positive".into(),
        ));
    }
    Ok(())
}

/// Bounds far above any real bundle's (Gemma 3 270M: d 640; ml-100k: 1682
/// items), so that no size computed from the manifest overflows, even on a
/// 32-bit phone, and nothing it sizes is absurd. The fuzzer's `3 * d_r`
/// overflow on a `d_r` near `usize::MAX / 3` is why they exist.
const MAX_DIM: usize = 16_384;
const MAX_ITEMS: usize = 50_000_000;
const MAX_HISTORY: usize = 100_000;
const MAX_EXPERTS: usize = 64;

fn check_bounds(m: &Manifest) -> Result<(), String> {
    let d = m.dims;
    let bounds = [
        ("dims.d", d.d, MAX_DIM),
        ("dims.d_r", d.d_r, MAX_DIM),
        ("dims.d_phi", d.d_phi, MAX_DIM),
        ("items.count", m.items.count, MAX_ITEMS),
        ("history.max_items", m.history.max_items, MAX_HISTORY),
        (
            "views.behavioral.experts",
            m.views.behavioral.experts,
            MAX_EXPERTS,
        ),
        (
            "views.semantic.experts",
            m.views.semantic.experts,
            MAX_EXPERTS,
        ),
    ];
    match bounds.iter().find(|(_, value, max)| value > max) {
        Some((name, value, max)) => Err(format!("{name} = {value} is over its bound {max}")),
        None => Ok(()),
    }
}

fn check_backbone(b: &BackboneRef, model: &ModelInfo) -> Result<(), BundleError> {
    let mismatch = |field, bundle: String, model: String| BundleError::Backbone {
        field,
        bundle,
        model,
        file: b.file.clone(),
    };
    if !b.sha256.eq_ignore_ascii_case(&model.sha256) {
        return Err(mismatch("sha256", b.sha256.clone(), model.sha256.clone()));
    }
    if b.arch != model.arch {
        return Err(mismatch("arch", b.arch.clone(), model.arch.clone()));
    }
    if b.n_embd != model.n_embd {
        return Err(mismatch(
            "n_embd",
            b.n_embd.to_string(),
            model.n_embd.to_string(),
        ));
    }
    if b.n_layer != model.n_layer {
        return Err(mismatch(
            "n_layer",
            b.n_layer.to_string(),
            model.n_layer.to_string(),
        ));
    }
    Ok(())
}

/// The files a bundle must list: heads, items and every expert.
fn required_files(m: &Manifest) -> Vec<String> {
    let mut files = vec![
        "heads.safetensors".to_owned(),
        "items.safetensors".to_owned(),
    ];
    for view in View::BOTH {
        files.extend((0..m.views.get(view).experts).map(|k| expert_file(view, k)));
    }
    files
}

fn check_listed_files(dir: &Path, m: &Manifest) -> Result<(), BundleError> {
    for name in required_files(m) {
        if !m.files.contains_key(&name) {
            return Err(BundleError::Unlisted {
                file: dir.join(name),
            });
        }
    }
    for (name, entry) in &m.files {
        let file = safe_join(dir, name)?;
        let found = std::fs::metadata(&file).map_err(io_error(&file))?.len();
        if found != entry.bytes {
            return Err(BundleError::Size {
                file,
                expected: entry.bytes,
                found,
            });
        }
        let sha = sha256_file(&file).map_err(io_error(&file))?;
        if !sha.eq_ignore_ascii_case(&entry.sha256) {
            return Err(BundleError::Checksum {
                file,
                expected: entry.sha256.clone(),
                found: sha,
            });
        }
    }
    Ok(())
}

/// Joins a manifest-relative name, refusing names that leave the bundle.
fn safe_join(dir: &Path, name: &str) -> Result<PathBuf, BundleError> {
    let rel = Path::new(name);
    let inside = rel
        .components()
        .all(|c| matches!(c, std::path::Component::Normal(_)));
    if !inside {
        return Err(BundleError::Invalid {
            file: dir.join("manifest.json"),
            what: format!("file name {name:?} points outside the bundle"),
        });
    }
    Ok(dir.join(rel))
}

/// Writes a bundle: the caller fills the directory (tensors, experts) through
/// this writer, then [`BundleWriter::finish`] hashes every file into the
/// manifest. The directory is built beside `dir` and renamed into place, so a
/// killed process leaves either the old bundle or the new one.
pub struct BundleWriter {
    dir: PathBuf,
    staging: PathBuf,
    manifest: Manifest,
}

impl BundleWriter {
    pub fn new(dir: &Path, mut manifest: Manifest) -> Result<Self, BundleError> {
        let staging = dir.with_extension("partial");
        let _ = std::fs::remove_dir_all(&staging);
        std::fs::create_dir_all(staging.join("experts")).map_err(io_error(&staging))?;
        manifest.files.clear();
        Ok(Self {
            dir: dir.to_owned(),
            staging,
            manifest,
        })
    }

    /// Where expert `k` of `view` must be written.
    pub fn expert_path(&self, view: View, k: usize) -> PathBuf {
        self.staging.join(expert_file(view, k))
    }

    pub fn write_heads(&self, heads: &Heads) -> Result<(), BundleError> {
        heads.write(&self.staging.join("heads.safetensors"))
    }

    pub fn write_items(&self, items: &Items) -> Result<(), BundleError> {
        items.write(&self.staging.join("items.safetensors"))
    }

    pub fn write_users(&self, users: &Users) -> Result<(), BundleError> {
        users.write(&self.staging.join("users.safetensors"))
    }

    pub fn finish(mut self) -> Result<PathBuf, BundleError> {
        let mut names = required_files(&self.manifest);
        if self.staging.join("users.safetensors").exists() {
            names.push("users.safetensors".into());
        }
        for name in names {
            let file = self.staging.join(&name);
            let bytes = std::fs::metadata(&file).map_err(io_error(&file))?.len();
            let sha256 = sha256_file(&file).map_err(io_error(&file))?;
            self.manifest
                .files
                .insert(name, FileEntry { sha256, bytes });
        }
        let manifest = self.staging.join("manifest.json");
        let text = serde_json::to_string_pretty(&self.manifest).expect("a manifest serializes");
        std::fs::write(&manifest, text).map_err(io_error(&manifest))?;
        let _ = std::fs::remove_dir_all(&self.dir);
        std::fs::rename(&self.staging, &self.dir).map_err(io_error(&self.dir))?;
        Ok(self.dir)
    }
}
