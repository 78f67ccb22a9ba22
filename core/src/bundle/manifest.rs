//! `manifest.json`: the bundle's table of contents (docs/BUNDLE.md).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::lora::LoraSpec;
use crate::per_view::PerView;
use crate::prompt::{Render, Template, View};

pub const FORMAT: &str = "l2rec-bundle";
/// The newest MODEL.md version this runtime serves; it serves every version from 1.
pub const VERSION: u32 = 2;

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
    /// Version 2: the collaborative encoder (MODEL.md step 0); `none` in version 1.
    #[serde(default)]
    pub encoder: Encoder,
    /// Version 2: the cap on an item text's characters (0: none).
    #[serde(default)]
    pub max_text_chars: usize,
    #[serde(default)]
    pub files: BTreeMap<String, FileEntry>,
}

/// MODEL.md step 0's encoder.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Encoder {
    #[default]
    None,
    Gru,
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
    /// Version 2: how the behavioral view shows items (`id` in version 1).
    #[serde(default)]
    pub render: Render,
}

#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Dims {
    pub d: usize,
    pub d_r: usize,
    pub d_phi: usize,
}

#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct HistorySpec {
    /// The newest items the model reads (the collaborative encoder; v1: the prompts too).
    pub max_items: usize,
    /// Version 2: the newest items a view's prompt shows (0 or absent: `max_items`).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub view_items: usize,
}

impl HistorySpec {
    /// Items a view's prompt shows (MODEL.md step 3).
    pub fn view_window(&self) -> usize {
        match self.view_items {
            0 => self.max_items,
            v => v.min(self.max_items),
        }
    }
}

fn is_zero(v: &usize) -> bool {
    *v == 0
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
