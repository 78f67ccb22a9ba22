//! The bundle's safetensors files: heads, items, users (all f32).

use std::collections::HashMap;
use std::path::Path;

use safetensors::tensor::{Dtype, TensorView};
use safetensors::SafeTensors;

use super::{BundleError, Encoder, Manifest};
use crate::per_view::PerView;
use crate::prompt::View;

/// `y = W x + b` with `W` `[rows, cols]` row-major.
#[derive(Debug, Clone, PartialEq)]
pub struct Linear {
    pub weight: Vec<f32>,
    pub bias: Vec<f32>,
    pub rows: usize,
    pub cols: usize,
}

impl Linear {
    pub fn zeros(rows: usize, cols: usize) -> Self {
        Self {
            weight: vec![0.0; rows * cols],
            bias: vec![0.0; rows],
            rows,
            cols,
        }
    }
}

/// MODEL.md step 0's GRU (PyTorch's layout: gates r, z, n stacked by rows).
#[derive(Debug, Clone, PartialEq)]
pub struct Gru {
    /// `[3 d_r, d_r]` row-major, and `[3 d_r]`.
    pub weight_ih: Vec<f32>,
    pub weight_hh: Vec<f32>,
    pub bias_ih: Vec<f32>,
    pub bias_hh: Vec<f32>,
    pub d_r: usize,
}

/// Everything of MODEL.md steps 0, 1, 5, 6 and 7 that is not per item.
#[derive(Debug, Clone, PartialEq)]
pub struct Heads {
    pub gate_behavioral: Linear,
    pub gate_semantic: Linear,
    /// Version 2: each view's `A_v`, `[K_v, d_r]` row-major (empty in version 1).
    pub gate_read: PerView<Vec<f32>>,
    /// Version 2: the collaborative encoder.
    pub encoder: Option<Gru>,
    /// Where a user without a stored `phi` starts: the training users' mean
    /// (version 1) or zero (version 2, where `phi` is an offset).
    pub phi_mean: Vec<f32>,
    pub proj_behavioral: Linear,
    pub proj_semantic: Linear,
    pub fusion: Linear,
    pub text_proj: Linear,
}

impl Heads {
    pub fn gate(&self, view: View) -> &Linear {
        match view {
            View::Behavioral => &self.gate_behavioral,
            View::Semantic => &self.gate_semantic,
        }
    }

    pub fn proj(&self, view: View) -> &Linear {
        match view {
            View::Behavioral => &self.proj_behavioral,
            View::Semantic => &self.proj_semantic,
        }
    }
}

/// The catalog as the bundle knows it, in catalog-row order.
#[derive(Debug, Clone, PartialEq)]
pub struct Items {
    pub ids: Vec<String>,
    pub texts: Vec<String>,
    /// `E`, `[N, d_r]`.
    pub id_embedding: Vec<f32>,
    pub bias: Vec<f32>,
    /// `t_i`, `[N, d]`, when the bundle ships it.
    pub text_state: Option<Vec<f32>>,
    /// Version 2 `render: codes`: each item's semantic ID, rendered (`K d Q`).
    pub codes: Option<Vec<String>>,
}

/// Training users' gate parameters, for evaluation.
#[derive(Debug, Clone, PartialEq)]
pub struct Users {
    pub ids: Vec<String>,
    /// `[U, d_phi]`.
    pub phi: Vec<f32>,
}

struct Reader<'a> {
    file: &'a Path,
    tensors: SafeTensors<'a>,
}

impl<'a> Reader<'a> {
    fn parse(file: &'a Path, bytes: &'a [u8]) -> Result<Self, BundleError> {
        let tensors = SafeTensors::deserialize(bytes).map_err(|e| BundleError::Safetensors {
            file: file.to_owned(),
            msg: e.to_string(),
        })?;
        Ok(Self { file, tensors })
    }

    fn has(&self, name: &str) -> bool {
        self.tensors.names().contains(&name)
    }

    /// A tensor, checked to be F32 of exactly `shape` and finite.
    fn f32(&self, name: &str, shape: &[usize]) -> Result<Vec<f32>, BundleError> {
        let file = self.file.to_owned();
        let view = self
            .tensors
            .tensor(name)
            .map_err(|_| BundleError::MissingTensor {
                file: file.clone(),
                name: name.to_owned(),
            })?;
        if view.dtype() != Dtype::F32 {
            return Err(BundleError::Dtype {
                file,
                name: name.to_owned(),
                found: format!("{:?}", view.dtype()),
            });
        }
        if view.shape() != shape {
            return Err(BundleError::Shape {
                file,
                name: name.to_owned(),
                expected: shape.to_vec(),
                found: view.shape().to_vec(),
            });
        }
        let values: Vec<f32> = view
            .data()
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect();
        if values.iter().any(|v| !v.is_finite()) {
            return Err(BundleError::NonFinite {
                file,
                name: name.to_owned(),
            });
        }
        Ok(values)
    }

    fn linear(&self, stem: &str, rows: usize, cols: usize) -> Result<Linear, BundleError> {
        Ok(Linear {
            weight: self.f32(&format!("{stem}.weight"), &[rows, cols])?,
            bias: self.f32(&format!("{stem}.bias"), &[rows])?,
            rows,
            cols,
        })
    }

    fn string_list(
        &self,
        metadata: &Option<HashMap<String, String>>,
        key: &str,
        len: usize,
    ) -> Result<Vec<String>, BundleError> {
        let problem = |what: String| BundleError::Metadata {
            file: self.file.to_owned(),
            key: key.to_owned(),
            what,
        };
        let text = metadata
            .as_ref()
            .and_then(|m| m.get(key))
            .ok_or_else(|| problem("missing".into()))?;
        let list: Vec<String> = serde_json::from_str(text)
            .map_err(|e| problem(format!("not a JSON list of strings: {e}")))?;
        if list.len() != len {
            return Err(problem(format!("{} entries, expected {len}", list.len())));
        }
        Ok(list)
    }
}

fn read_file(file: &Path) -> Result<Vec<u8>, BundleError> {
    std::fs::read(file).map_err(|source| match source.kind() {
        std::io::ErrorKind::NotFound => BundleError::Missing(file.to_owned()),
        _ => BundleError::Io {
            file: file.to_owned(),
            source,
        },
    })
}

fn metadata(file: &Path, bytes: &[u8]) -> Result<Option<HashMap<String, String>>, BundleError> {
    let (_, meta) = SafeTensors::read_metadata(bytes).map_err(|e| BundleError::Safetensors {
        file: file.to_owned(),
        msg: e.to_string(),
    })?;
    Ok(meta.metadata().clone())
}

impl Heads {
    pub fn read(file: &Path, m: &Manifest) -> Result<Self, BundleError> {
        Self::parse(file, &read_file(file)?, m)
    }

    /// [`Heads::read`] of bytes already read (`file` names them in errors).
    pub fn parse(file: &Path, bytes: &[u8], m: &Manifest) -> Result<Self, BundleError> {
        let r = Reader::parse(file, bytes)?;
        let (d, d_r, d_phi) = (m.dims.d, m.dims.d_r, m.dims.d_phi);
        let gate = |view: View| -> Result<Linear, BundleError> {
            match m.views.get(view).experts {
                0 => Ok(Linear::zeros(0, d_phi)),
                k => r.linear(&format!("gate.{view}"), k, d_phi),
            }
        };
        let gru = m.encoder == Encoder::Gru;
        let gate_read = PerView::try_from_fn(|view| match m.views.get(view).experts {
            k if gru && k > 0 => r.f32(&format!("gate.{view}.read"), &[k, d_r]),
            _ => Ok(Vec::new()),
        })?;
        let encoder = gru
            .then(|| -> Result<Gru, BundleError> {
                Ok(Gru {
                    weight_ih: r.f32("encoder.gru.weight_ih", &[3 * d_r, d_r])?,
                    weight_hh: r.f32("encoder.gru.weight_hh", &[3 * d_r, d_r])?,
                    bias_ih: r.f32("encoder.gru.bias_ih", &[3 * d_r])?,
                    bias_hh: r.f32("encoder.gru.bias_hh", &[3 * d_r])?,
                    d_r,
                })
            })
            .transpose()?;
        let stored_mean = r.f32("user.phi_mean", &[d_phi])?;
        Ok(Self {
            gate_behavioral: gate(View::Behavioral)?,
            gate_semantic: gate(View::Semantic)?,
            gate_read,
            encoder,
            phi_mean: if m.version >= 2 {
                vec![0.0; d_phi]
            } else {
                stored_mean
            },
            proj_behavioral: r.linear("proj.behavioral", d_r, d)?,
            proj_semantic: r.linear("proj.semantic", d_r, d)?,
            fusion: r.linear("fusion", d_r, 3 * d_r)?,
            text_proj: r.linear("item.text_proj", d_r, d)?,
        })
    }

    pub fn write(&self, file: &Path) -> Result<(), BundleError> {
        let mut t = TensorSet::default();
        for (view, gate) in [
            (View::Behavioral, &self.gate_behavioral),
            (View::Semantic, &self.gate_semantic),
        ] {
            if gate.rows > 0 {
                t.linear(&format!("gate.{view}"), gate);
            }
        }
        for view in View::BOTH {
            let read = &self.gate_read[view];
            if !read.is_empty() {
                let k = self.gate(view).rows;
                t.add(&format!("gate.{view}.read"), vec![k, read.len() / k], read);
            }
        }
        if let Some(g) = &self.encoder {
            let d = g.d_r;
            t.add("encoder.gru.weight_ih", vec![3 * d, d], &g.weight_ih);
            t.add("encoder.gru.weight_hh", vec![3 * d, d], &g.weight_hh);
            t.add("encoder.gru.bias_ih", vec![3 * d], &g.bias_ih);
            t.add("encoder.gru.bias_hh", vec![3 * d], &g.bias_hh);
        }
        t.add("user.phi_mean", vec![self.phi_mean.len()], &self.phi_mean);
        t.linear("proj.behavioral", &self.proj_behavioral);
        t.linear("proj.semantic", &self.proj_semantic);
        t.linear("fusion", &self.fusion);
        t.linear("item.text_proj", &self.text_proj);
        t.write(file, None)
    }
}

impl Items {
    pub fn read(file: &Path, m: &Manifest) -> Result<Self, BundleError> {
        Self::parse(file, &read_file(file)?, m)
    }

    /// [`Items::read`] of bytes already read (`file` names them in errors).
    pub fn parse(file: &Path, bytes: &[u8], m: &Manifest) -> Result<Self, BundleError> {
        let r = Reader::parse(file, bytes)?;
        let meta = metadata(file, bytes)?;
        let n = m.items.count;
        let text_state = if r.has("item.text_state") {
            Some(r.f32("item.text_state", &[n, m.dims.d])?)
        } else {
            None
        };
        let codes = match m.views.behavioral.render {
            crate::prompt::Render::Codes => Some(r.string_list(&meta, "item_codes", n)?),
            crate::prompt::Render::Id => None,
        };
        if let Some(bad) = codes.iter().flatten().find(|c| !valid_code(c)) {
            return Err(BundleError::Metadata {
                file: file.to_owned(),
                key: "item_codes".into(),
                what: format!("{bad:?} is not a code (MODEL.md step 3: `K d Q`)"),
            });
        }
        Ok(Self {
            codes,
            ids: r.string_list(&meta, "item_ids", n)?,
            texts: r.string_list(&meta, "item_texts", n)?,
            id_embedding: r.f32("item.id_embedding", &[n, m.dims.d_r])?,
            bias: r.f32("item.bias", &[n])?,
            text_state,
        })
    }

    pub fn write(&self, file: &Path) -> Result<(), BundleError> {
        let n = self.ids.len();
        let mut t = TensorSet::default();
        t.add(
            "item.id_embedding",
            vec![n, self.id_embedding.len() / n.max(1)],
            &self.id_embedding,
        );
        t.add("item.bias", vec![n], &self.bias);
        if let Some(states) = &self.text_state {
            t.add("item.text_state", vec![n, states.len() / n.max(1)], states);
        }
        let mut meta = HashMap::from([
            (
                "item_ids".to_owned(),
                serde_json::to_string(&self.ids).expect("strings serialize"),
            ),
            (
                "item_texts".to_owned(),
                serde_json::to_string(&self.texts).expect("strings serialize"),
            ),
        ]);
        if let Some(codes) = &self.codes {
            meta.insert(
                "item_codes".to_owned(),
                serde_json::to_string(codes).expect("strings serialize"),
            );
        }
        t.write(file, Some(meta))
    }
}

/// MODEL.md step 3's code shape: one to three levels, `A`-`Z`, then ` a`-` z`,
/// then ` A`-` Z`.
fn valid_code(code: &str) -> bool {
    let b = code.as_bytes();
    let level = |i: usize, lower: bool| {
        let c = b[i];
        if lower {
            c.is_ascii_lowercase()
        } else {
            c.is_ascii_uppercase()
        }
    };
    match b.len() {
        1 => level(0, false),
        3 => level(0, false) && b[1] == b' ' && level(2, true),
        5 => level(0, false) && b[1] == b' ' && level(2, true) && b[3] == b' ' && level(4, false),
        _ => false,
    }
}

impl Users {
    /// The trained `phi` of user `id`, if the bundle has one.
    pub fn phi_of(&self, id: &str) -> Option<&[f32]> {
        let d_phi = self.phi.len() / self.ids.len().max(1);
        let row = self.ids.iter().position(|u| u == id)?;
        Some(&self.phi[row * d_phi..(row + 1) * d_phi])
    }

    pub fn read(file: &Path, m: &Manifest) -> Result<Self, BundleError> {
        Self::parse(file, &read_file(file)?, m)
    }

    /// [`Users::read`] of bytes already read (`file` names them in errors).
    pub fn parse(file: &Path, bytes: &[u8], m: &Manifest) -> Result<Self, BundleError> {
        let r = Reader::parse(file, bytes)?;
        let meta = metadata(file, bytes)?;
        let rows = r
            .tensors
            .tensor("user.phi")
            .map(|v| v.shape().first().copied().unwrap_or(0))
            .unwrap_or(0);
        let ids = r.string_list(&meta, "user_ids", rows)?;
        Ok(Self {
            phi: r.f32("user.phi", &[rows, m.dims.d_phi])?,
            ids,
        })
    }

    pub fn write(&self, file: &Path) -> Result<(), BundleError> {
        let mut t = TensorSet::default();
        t.add(
            "user.phi",
            vec![self.ids.len(), self.phi.len() / self.ids.len().max(1)],
            &self.phi,
        );
        let meta = HashMap::from([(
            "user_ids".to_owned(),
            serde_json::to_string(&self.ids).expect("strings serialize"),
        )]);
        t.write(file, Some(meta))
    }
}

/// Named f32 tensors on their way to a safetensors file.
#[derive(Default)]
struct TensorSet {
    tensors: Vec<(String, Vec<usize>, Vec<u8>)>,
}

impl TensorSet {
    fn add(&mut self, name: &str, shape: Vec<usize>, values: &[f32]) {
        self.tensors.push((
            name.to_owned(),
            shape,
            bytemuck::cast_slice(values).to_vec(),
        ));
    }

    fn linear(&mut self, stem: &str, l: &Linear) {
        self.add(&format!("{stem}.weight"), vec![l.rows, l.cols], &l.weight);
        self.add(&format!("{stem}.bias"), vec![l.rows], &l.bias);
    }

    fn write(&self, file: &Path, meta: Option<HashMap<String, String>>) -> Result<(), BundleError> {
        let views = self.tensors.iter().map(|(name, shape, data)| {
            let view =
                TensorView::new(Dtype::F32, shape.clone(), data).expect("shape matches the data");
            (name.clone(), view)
        });
        safetensors::serialize_to_file(views, meta, file).map_err(|e| BundleError::Safetensors {
            file: file.to_owned(),
            msg: e.to_string(),
        })
    }
}
