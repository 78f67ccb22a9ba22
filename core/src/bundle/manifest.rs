//! `manifest.json`: the bundle's table of contents (docs/BUNDLE.md).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::lora::LoraSpec;
use crate::per_view::PerView;
use crate::prompt::{Template, View};

pub const FORMAT: &str = "l2rec-bundle";
pub const VERSION: u32 = 1;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Manifest {
    pub format: String,
    pub version: u32,
    #[serde(default)]
    pub name: String,
    pub backbone: BackboneRef,
    pub views: Views,
    pub lora: LoraSpec,
    pub dims: Dims,
    pub history: HistorySpec,
    pub items: ItemsSpec,
    #[serde(default)]
    pub files: BTreeMap<String, FileEntry>,
}

/// The backbone a bundle was trained on.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BackboneRef {
    pub file: String,
    pub sha256: String,
    pub arch: String,
    pub n_embd: usize,
    pub n_layer: usize,
}

/// Each view's experts and prompt.
pub type Views = PerView<ViewSpec>;

/// A view's experts and prompt.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ViewSpec {
    /// `K_v`, the number of experts (0: the view runs on the base backbone).
    pub experts: usize,
    /// `k_v`, experts active per user.
    pub k: usize,
    pub template: Template,
}

#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Dims {
    pub d: usize,
    pub d_r: usize,
    pub d_phi: usize,
}

#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct HistorySpec {
    pub max_items: usize,
}

#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct ItemsSpec {
    pub count: usize,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileEntry {
    pub sha256: String,
    pub bytes: u64,
}

/// The file name of expert `k` of `view`, relative to the bundle.
pub fn expert_file(view: View, k: usize) -> String {
    format!("experts/{}-{k}.gguf", view.name())
}
