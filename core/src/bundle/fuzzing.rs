//! Entry points for `cargo fuzz` (`fuzz/README.md`): the bundle's parsers on
//! arbitrary bytes, with no file system and no backbone. Compiled under the
//! fuzzer's `cfg` and for the unit tests that keep them building and write
//! the corpus's seeds.

use std::path::Path;

use super::{
    check_manifest, parse_manifest, required_files, safe_join, Encoder, Heads, Items, Linear,
    Manifest, Users,
};
use crate::per_view::PerView;
use crate::prompt::{Render, View};

const DIR: &str = "/fuzz/bundle";

/// `manifest.json`'s parser and checks, then every file name it lists.
pub fn manifest(data: &[u8]) {
    let _ = checked_manifest(data);
}

fn checked_manifest(data: &[u8]) -> Option<Manifest> {
    let text = std::str::from_utf8(data).ok()?;
    let dir = Path::new(DIR);
    let m = parse_manifest(dir.join("manifest.json"), text).ok()?;
    check_manifest(dir, &m).ok()?;
    for name in m.files.keys() {
        let _ = safe_join(dir, name);
    }
    let _ = required_files(&m);
    Some(m)
}

/// One tensor file read against a manifest that passed its checks. Input: a
/// selector byte (heads, items or users), the manifest's length (u16, little
/// endian), the manifest, the safetensors bytes.
pub fn tensors(data: &[u8]) {
    let [selector, lo, hi, rest @ ..] = data else {
        return;
    };
    let len = usize::from(u16::from_le_bytes([*lo, *hi])).min(rest.len());
    let (manifest, bytes) = rest.split_at(len);
    let Some(m) = checked_manifest(manifest) else {
        return;
    };
    let file = Path::new(DIR).join("tensors.safetensors");
    match selector % 3 {
        0 => drop(Heads::parse(&file, bytes, &m)),
        1 => drop(Items::parse(&file, bytes, &m)),
        _ => drop(Users::parse(&file, bytes, &m)),
    }
}

/// Valid inputs for both targets, written by the real writers: the shipped
/// bundle's manifest (version 1), then small version 1 and version 2
/// (encoder, codes) bundles' manifests with each of their tensor files.
/// `scratch` is a directory the writers may use.
pub fn seeds(scratch: &Path) -> Vec<(&'static str, Vec<u8>)> {
    let shipped = include_str!("../../../bundles/ml-100k/manifest.json");
    let mut seeds = vec![("manifest", shipped.as_bytes().to_vec())];
    for version in [1, 2] {
        let m = small_manifest(shipped, version);
        let text = serde_json::to_vec_pretty(&m).expect("a manifest serializes");
        let files = small_files(&m, scratch);
        for (selector, bytes) in files.into_iter().enumerate() {
            let len = u16::try_from(text.len()).expect("a small manifest");
            let mut input = vec![selector as u8];
            input.extend(len.to_le_bytes());
            input.extend(&text);
            input.extend(bytes);
            seeds.push(("tensors", input));
        }
        seeds.push(("manifest", text));
    }
    seeds
}

fn small_manifest(shipped: &str, version: u32) -> Manifest {
    let mut m: Manifest = serde_json::from_str(shipped).expect("the shipped manifest parses");
    m.version = version;
    m.dims.d_r = 2;
    m.dims.d_phi = 2;
    m.items.count = 3;
    for view in View::BOTH {
        m.views.get_mut(view).experts = 2;
        m.views.get_mut(view).k = 1;
    }
    if version >= 2 {
        m.encoder = Encoder::Gru;
        m.max_text_chars = 64;
        m.history.view_items = 10;
        m.views.behavioral.render = Render::Codes;
    }
    m
}

/// Heads, items and users files for `m`, as bytes.
fn small_files(m: &Manifest, scratch: &Path) -> [Vec<u8>; 3] {
    let (d, d_r, d_phi, n) = (m.dims.d, m.dims.d_r, m.dims.d_phi, m.items.count);
    let gru = (m.encoder == Encoder::Gru).then(|| super::Gru {
        weight_ih: vec![0.5; 3 * d_r * d_r],
        weight_hh: vec![0.25; 3 * d_r * d_r],
        bias_ih: vec![0.0; 3 * d_r],
        bias_hh: vec![0.0; 3 * d_r],
        d_r,
    });
    let heads = Heads {
        gate_behavioral: Linear::zeros(2, d_phi),
        gate_semantic: Linear::zeros(2, d_phi),
        gate_read: PerView::from_fn(|_| match gru {
            Some(_) => vec![1.0; 2 * d_r],
            None => Vec::new(),
        }),
        encoder: gru.clone(),
        phi_mean: vec![0.0; d_phi],
        proj_behavioral: Linear::zeros(d_r, d),
        proj_semantic: Linear::zeros(d_r, d),
        fusion: Linear::zeros(d_r, 3 * d_r),
        text_proj: Linear::zeros(d_r, d),
    };
    let items = Items {
        ids: (0..n).map(|i| format!("m{i}")).collect(),
        texts: (0..n).map(|i| format!("Movie {i} (1995)")).collect(),
        id_embedding: vec![0.125; n * d_r],
        bias: vec![0.0; n],
        text_state: None,
        codes: (m.views.behavioral.render == Render::Codes)
            .then(|| ["A", "B c", "C d E"].map(String::from).to_vec()),
    };
    let users = Users {
        ids: vec!["u1".into(), "u2".into()],
        phi: vec![0.1; 2 * d_phi],
    };
    let file = scratch.join("seed.safetensors");
    let read = |file: &Path| std::fs::read(file).expect("the seed was written");
    heads.write(&file).expect("heads write");
    let heads = read(&file);
    items.write(&file).expect("items write");
    let items = read(&file);
    users.write(&file).expect("users write");
    [heads, items, read(&file)]
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The seeds are valid: every part parses, so the fuzzer starts from
    /// inputs that reach the deepest checks. With `L2REC_FUZZ_SEEDS=DIR`
    /// set, the seeds are also written to `DIR/<target>/` (scripts/fuzz).
    #[test]
    fn the_bundle_fuzz_seeds_parse_and_garbage_is_refused() {
        let scratch = tempfile::tempdir().unwrap();
        let seeds = seeds(scratch.path());
        for (target, input) in &seeds {
            match *target {
                "manifest" => assert!(checked_manifest(input).is_some()),
                _ => {
                    let len = usize::from(u16::from_le_bytes([input[1], input[2]]));
                    let m = checked_manifest(&input[3..3 + len]).expect("the seed's manifest");
                    let file = Path::new(DIR).join("seed.safetensors");
                    let bytes = &input[3 + len..];
                    match input[0] {
                        0 => drop(Heads::parse(&file, bytes, &m).unwrap()),
                        1 => drop(Items::parse(&file, bytes, &m).unwrap()),
                        _ => drop(Users::parse(&file, bytes, &m).unwrap()),
                    }
                }
            }
        }
        for garbage in [
            &b""[..],
            b"{",
            b"\xff\x00\x01",
            b"{\"format\": \"l2rec-bundle\"}",
        ] {
            manifest(garbage);
            tensors(garbage);
        }
        crate::fuzz_seeds::write_if_asked("bundle", &seeds);
    }

    /// A manifest whose sizes would overflow `3 * d_r` (or a 32-bit phone's
    /// `usize`) is refused by name before any tensor is read.
    #[test]
    fn absurd_manifest_sizes_are_refused_by_name() {
        let scratch = tempfile::tempdir().unwrap();
        let (_, text) = seeds(scratch.path()).into_iter().next().unwrap();
        let good: serde_json::Value = serde_json::from_slice(&text).unwrap();
        for (path, value) in [
            (&["dims", "d_r"][..], serde_json::json!(usize::MAX / 3 + 1)),
            (&["dims", "d_phi"][..], serde_json::json!(1u64 << 40)),
            (&["items", "count"][..], serde_json::json!(u64::MAX)),
            (
                &["views", "semantic", "experts"][..],
                serde_json::json!(1000),
            ),
        ] {
            let mut bad = good.clone();
            let (last, parents) = path.split_last().unwrap();
            let slot = parents.iter().fold(&mut bad, |v, key| &mut v[*key]);
            slot[*last] = value;
            let m: Manifest = serde_json::from_value(bad).unwrap();
            let err = check_manifest(Path::new(DIR), &m).unwrap_err().to_string();
            assert!(
                err.contains(&path.join(".")) && err.contains("bound"),
                "{err}"
            );
        }
    }
}
