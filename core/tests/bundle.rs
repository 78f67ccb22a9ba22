//! Bundles: a valid one opens and serves; every defect gets its own typed
//! error naming the file, and nothing aborts the process.

mod common;

use std::path::{Path, PathBuf};

use common::*;
use l2rec::backbone::sha256_file;
use l2rec::bundle::{Bundle, BundleError, Manifest};
use l2rec::ffi::gguf::{GgufError, GgufWriter, GGML_TYPE_F32};
use l2rec::lora::LoraError;
use l2rec::model::L2Rec;
use l2rec::progress::Progress;

/// A fresh copy of the small bundle to damage.
fn fresh() -> (tempfile::TempDir, PathBuf) {
    static TEMPLATE: std::sync::OnceLock<(tempfile::TempDir, PathBuf)> = std::sync::OnceLock::new();
    let (_keep, template) = TEMPLATE.get_or_init(|| {
        let dir = tempfile::tempdir().unwrap();
        let path = write_small_bundle(&dir.path().join("small"));
        (dir, path)
    });
    let dir = tempfile::tempdir().unwrap();
    let copy = dir.path().join("bundle");
    copy_dir(template, &copy);
    (dir, copy)
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let target = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            copy_dir(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), target).unwrap();
        }
    }
}

fn open(dir: &Path) -> Result<Bundle, BundleError> {
    Bundle::open(dir, &model_info())
}

fn manifest(dir: &Path) -> Manifest {
    serde_json::from_str(&std::fs::read_to_string(dir.join("manifest.json")).unwrap()).unwrap()
}

fn save(dir: &Path, m: &Manifest) {
    std::fs::write(
        dir.join("manifest.json"),
        serde_json::to_string_pretty(m).unwrap(),
    )
    .unwrap();
}

/// Records a tampered file's new size and hash, so the check under test is
/// the one that must catch it (not the checksum).
fn rehash(dir: &Path, name: &str) {
    let mut m = manifest(dir);
    let file = dir.join(name);
    let entry = m.files.get_mut(name).unwrap();
    entry.bytes = std::fs::metadata(&file).unwrap().len();
    entry.sha256 = sha256_file(&file).unwrap();
    save(dir, &m);
}

fn edit_json(dir: &Path, f: impl FnOnce(&mut serde_json::Value)) {
    let path = dir.join("manifest.json");
    let mut v: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    f(&mut v);
    std::fs::write(path, v.to_string()).unwrap();
}

const EXPERT: &str = "experts/semantic-1.gguf";

#[test]
fn a_valid_bundle_opens_and_serves_recommendations() {
    let (_d, dir) = fresh();
    let bundle = open(&dir).expect("a valid bundle");
    assert_eq!(bundle.items.ids.len(), SMALL_ITEMS);
    assert_eq!(bundle.experts[l2rec::prompt::View::Semantic].len(), 2);
    let mut model = L2Rec::new(backbone(), bundle, &mut Progress::none()).unwrap();
    let phi = model.bundle().heads.phi_mean.clone();
    let history = [3u32, 7, 1, 12];
    let mut pref = model.preference(&phi, &history).unwrap();
    assert_eq!(pref.u.len(), D_R);
    for (_, g) in pref.scales.iter() {
        assert_eq!(
            g.iter().filter(|&&s| s > 0.0).count(),
            1,
            "k = 1 expert active: {g:?}"
        );
        assert!((g.iter().sum::<f32>() - 1.0).abs() < 1e-5);
    }
    let hits = model.top_k(&mut pref, &history, 10).unwrap();
    assert_eq!(hits.len(), 10);
    assert!(
        hits.iter().all(|h| !history.contains(&h.row)),
        "history excluded"
    );
    assert!(
        hits.windows(2).all(|w| w[0].score >= w[1].score),
        "sorted by score"
    );
    assert!(hits.iter().any(|h| h.score != 0.0), "real scores: {hits:?}");
    let mut again = model.preference(&phi, &history).unwrap();
    assert_eq!(again.u, pref.u, "a cache hit gives the same preference");
    assert_eq!(model.top_k(&mut again, &history, 10).unwrap(), hits);
    // A phi aligned with the difference of the two gate rows picks the other
    // expert than its opposite does.
    let gate = &model.bundle().heads.gate_semantic;
    let toward_first: Vec<f32> = (0..D_PHI)
        .map(|j| 50.0 * (gate.weight[j] - gate.weight[D_PHI + j]))
        .collect();
    let toward_second: Vec<f32> = toward_first.iter().map(|p| -p).collect();
    let first = model.preference(&toward_first, &history).unwrap();
    let second = model.preference(&toward_second, &history).unwrap();
    let semantic = l2rec::prompt::View::Semantic;
    assert_eq!(first.scales[semantic], vec![1.0, 0.0]);
    assert_eq!(second.scales[semantic], vec![0.0, 1.0]);
    assert_ne!(
        first.u, second.u,
        "the expert mixture changes the preference"
    );
}

#[test]
fn missing_file() {
    let (_d, dir) = fresh();
    std::fs::remove_file(dir.join("heads.safetensors")).unwrap();
    assert!(matches!(open(&dir), Err(BundleError::Missing(p)) if p.ends_with("heads.safetensors")));
    let (_d, dir) = fresh();
    std::fs::remove_file(dir.join("manifest.json")).unwrap();
    assert!(matches!(open(&dir), Err(BundleError::Missing(p)) if p.ends_with("manifest.json")));
    assert!(matches!(
        open(&dir.join("nope")),
        Err(BundleError::NotADirectory(_))
    ));
}

#[test]
fn truncated_file_fails_its_size_check() {
    let (_d, dir) = fresh();
    let path = dir.join(EXPERT);
    let bytes = std::fs::read(&path).unwrap();
    std::fs::write(&path, &bytes[..bytes.len() / 2]).unwrap();
    assert!(matches!(open(&dir), Err(BundleError::Size { file, .. }) if file.ends_with(EXPERT)));
}

#[test]
fn truncated_gguf_with_a_matching_manifest_fails_in_the_gguf_check() {
    for keep in [16usize, 100, 4000, 20_000] {
        let (_d, dir) = fresh();
        let path = dir.join(EXPERT);
        let bytes = std::fs::read(&path).unwrap();
        std::fs::write(&path, &bytes[..keep.min(bytes.len() - 1)]).unwrap();
        rehash(&dir, EXPERT);
        match open(&dir) {
            Err(BundleError::Expert(LoraError::Gguf(
                GgufError::NotGguf { .. } | GgufError::Parse { .. } | GgufError::OutOfBounds { .. },
            ))) => {}
            other => panic!("keep {keep}: {other:?}"),
        }
    }
}

#[test]
fn random_bytes_instead_of_an_expert() {
    let (_d, dir) = fresh();
    let path = dir.join(EXPERT);
    let len = std::fs::metadata(&path).unwrap().len() as usize;
    let mut rng = l2rec_dev::random::SplitMix(5);
    std::fs::write(
        &path,
        (0..len).map(|_| rng.next_u64() as u8).collect::<Vec<u8>>(),
    )
    .unwrap();
    rehash(&dir, EXPERT);
    assert!(matches!(
        open(&dir),
        Err(BundleError::Expert(LoraError::Gguf(
            GgufError::NotGguf { .. }
        )))
    ));
    // GGUF magic and version followed by garbage: ggml's parser must refuse it.
    let mut bytes = b"GGUF\x03\x00\x00\x00".to_vec();
    bytes.extend((0..len).map(|_| rng.next_u64() as u8));
    std::fs::write(&path, bytes).unwrap();
    rehash(&dir, EXPERT);
    assert!(matches!(
        open(&dir),
        Err(BundleError::Expert(LoraError::Gguf(
            GgufError::Parse { .. }
        )))
    ));
}

#[test]
fn wrong_checksum() {
    let (_d, dir) = fresh();
    let path = dir.join("items.safetensors");
    let mut bytes = std::fs::read(&path).unwrap();
    let last = bytes.len() - 1;
    bytes[last] ^= 0x40;
    std::fs::write(&path, bytes).unwrap();
    assert!(
        matches!(open(&dir), Err(BundleError::Checksum { file, .. }) if file.ends_with("items.safetensors"))
    );
}

fn write_heads_with(
    dir: &Path,
    tweak: impl FnOnce(&mut Vec<(String, Vec<usize>, safetensors::Dtype, Vec<u8>)>),
) {
    let path = dir.join("heads.safetensors");
    let bytes = std::fs::read(&path).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let mut tensors: Vec<(String, Vec<usize>, safetensors::Dtype, Vec<u8>)> = st
        .tensors()
        .into_iter()
        .map(|(n, v)| (n, v.shape().to_vec(), v.dtype(), v.data().to_vec()))
        .collect();
    tweak(&mut tensors);
    let views: Vec<(String, safetensors::tensor::TensorView)> = tensors
        .iter()
        .map(|(n, s, d, data)| {
            (
                n.clone(),
                safetensors::tensor::TensorView::new(*d, s.clone(), data).unwrap(),
            )
        })
        .collect();
    safetensors::serialize_to_file(views, None, &path).unwrap();
    rehash(dir, "heads.safetensors");
}

#[test]
fn wrong_shape_dtype_or_values_in_the_heads() {
    let (_d, dir) = fresh();
    write_heads_with(&dir, |t| {
        let fusion = t.iter_mut().find(|t| t.0 == "fusion.bias").unwrap();
        fusion.1 = vec![D_R / 2, 2];
    });
    assert!(matches!(open(&dir), Err(BundleError::Shape { name, .. }) if name == "fusion.bias"));

    let (_d, dir) = fresh();
    write_heads_with(&dir, |t| {
        let phi = t.iter_mut().find(|t| t.0 == "user.phi_mean").unwrap();
        phi.2 = safetensors::Dtype::I32;
    });
    assert!(matches!(open(&dir), Err(BundleError::Dtype { name, .. }) if name == "user.phi_mean"));

    let (_d, dir) = fresh();
    write_heads_with(&dir, |t| {
        let proj = t.iter_mut().find(|t| t.0 == "proj.semantic.bias").unwrap();
        proj.3[..4].copy_from_slice(&f32::NAN.to_le_bytes());
    });
    assert!(
        matches!(open(&dir), Err(BundleError::NonFinite { name, .. }) if name == "proj.semantic.bias")
    );

    let (_d, dir) = fresh();
    write_heads_with(&dir, |t| t.retain(|t| t.0 != "gate.semantic.weight"));
    assert!(
        matches!(open(&dir), Err(BundleError::MissingTensor { name, .. }) if name == "gate.semantic.weight")
    );

    let (_d, dir) = fresh();
    std::fs::write(
        dir.join("heads.safetensors"),
        b"\x08\x00\x00\x00\x00\x00\x00\x00{\"a\":1}",
    )
    .unwrap();
    rehash(&dir, "heads.safetensors");
    assert!(matches!(open(&dir), Err(BundleError::Safetensors { .. })));
}

#[test]
fn wrong_backbone() {
    let (_d, dir) = fresh();
    let mut m = manifest(&dir);
    m.backbone.sha256 = "00".repeat(32);
    save(&dir, &m);
    assert!(matches!(
        open(&dir),
        Err(BundleError::Backbone {
            field: "sha256",
            ..
        })
    ));
    let (_d, dir) = fresh();
    let mut m = manifest(&dir);
    m.backbone.n_layer = 26;
    save(&dir, &m);
    assert!(matches!(
        open(&dir),
        Err(BundleError::Backbone {
            field: "n_layer",
            ..
        })
    ));
}

fn write_expert_with(dir: &Path, arch: &str, rank: u64) {
    let info = model_info();
    let mut w = GgufWriter::new();
    w.set_str("general.type", "adapter").unwrap();
    w.set_str("general.architecture", arch).unwrap();
    w.set_str("adapter.type", "lora").unwrap();
    w.set_f32("adapter.lora.alpha", small_lora().alpha).unwrap();
    for target in small_lora().targets() {
        let shape = &info.tensors[&target];
        let a = vec![0.01f32; (shape[0] * rank) as usize];
        let b = vec![0.01f32; (rank * shape[1]) as usize];
        w.add_tensor(
            &format!("{target}.lora_a"),
            &[shape[0], rank],
            &a,
            GGML_TYPE_F32,
        )
        .unwrap();
        w.add_tensor(
            &format!("{target}.lora_b"),
            &[rank, shape[1]],
            &b,
            GGML_TYPE_F32,
        )
        .unwrap();
    }
    w.write(&dir.join(EXPERT)).unwrap();
    rehash(dir, EXPERT);
}

#[test]
fn expert_for_another_architecture_or_rank() {
    let (_d, dir) = fresh();
    write_expert_with(&dir, "llama", small_lora().rank as u64);
    match open(&dir) {
        Err(BundleError::Expert(LoraError::Metadata {
            key: "general.architecture",
            found,
            ..
        })) => {
            assert_eq!(found.as_deref(), Some("llama"))
        }
        other => panic!("{other:?}"),
    }
    let (_d, dir) = fresh();
    write_expert_with(&dir, &model_info().arch, small_lora().rank as u64 * 2);
    assert!(matches!(
        open(&dir),
        Err(BundleError::Expert(LoraError::Shape { .. }))
    ));
}

#[test]
fn unknown_version_wrong_format_and_bad_json() {
    let (_d, dir) = fresh();
    edit_json(&dir, |v| v["version"] = 99.into());
    assert!(matches!(
        open(&dir),
        Err(BundleError::Version {
            found: 99,
            supported: 2,
            ..
        })
    ));
    let (_d, dir) = fresh();
    edit_json(&dir, |v| v["format"] = "tflite".into());
    assert!(matches!(open(&dir), Err(BundleError::Format { .. })));
    let (_d, dir) = fresh();
    std::fs::write(
        dir.join("manifest.json"),
        "{\"format\": \"l2rec-bundle\", \"version\": 1,",
    )
    .unwrap();
    assert!(matches!(open(&dir), Err(BundleError::Json { line: 1, .. })));
    let (_d, dir) = fresh();
    edit_json(&dir, |v| {
        v.as_object_mut().unwrap().remove("dims").map(drop).unwrap()
    });
    assert!(matches!(open(&dir), Err(BundleError::Json { .. })));
}

#[test]
fn inconsistent_manifest() {
    let (_d, dir) = fresh();
    edit_json(&dir, |v| v["views"]["semantic"]["k"] = 3.into());
    assert!(
        matches!(open(&dir), Err(BundleError::Invalid { what, .. }) if what.contains("semantic"))
    );
    let (_d, dir) = fresh();
    edit_json(&dir, |v| {
        let files = v["files"].as_object_mut().unwrap();
        let entry = files.remove("heads.safetensors").unwrap();
        files.insert("../heads.safetensors".into(), entry);
    });
    assert!(matches!(open(&dir), Err(BundleError::Unlisted { .. })));
    let (_d, dir) = fresh();
    edit_json(&dir, |v| {
        let entry = v["files"]["heads.safetensors"].clone();
        v["files"]
            .as_object_mut()
            .unwrap()
            .insert("../../etc/passwd".into(), entry);
    });
    assert!(
        matches!(open(&dir), Err(BundleError::Invalid { what, .. }) if what.contains("outside"))
    );
    let (_d, dir) = fresh();
    edit_json(&dir, |v| v["items"]["count"] = (SMALL_ITEMS + 1).into());
    assert!(matches!(
        open(&dir),
        Err(BundleError::Metadata { .. } | BundleError::Shape { .. })
    ));
    let (_d, dir) = fresh();
    edit_json(&dir, |v| {
        v["lora"]["modules"] = serde_json::json!(["attn_qq"])
    });
    assert!(matches!(
        open(&dir),
        Err(BundleError::Expert(LoraError::Spec(_)))
    ));
}

#[test]
fn errors_name_the_file_and_say_what_to_do() {
    let (_d, dir) = fresh();
    edit_json(&dir, |v| v["version"] = 3.into());
    let msg = open(&dir).unwrap_err().to_string();
    assert!(
        msg.contains("manifest.json") && msg.contains("update l2rec"),
        "{msg}"
    );
}

#[test]
fn version_2_fields_are_checked() {
    // A version 1 manifest may not use version 2's fields.
    let (_d, dir) = fresh();
    edit_json(&dir, |v| v["encoder"] = "gru".into());
    let msg = open(&dir).unwrap_err().to_string();
    assert!(msg.contains("need version 2"), "{msg}");
    // Codes are for the behavioral view only.
    let (_d, dir) = fresh();
    edit_json(&dir, |v| {
        v["version"] = 2.into();
        v["views"]["semantic"]["render"] = "codes".into();
    });
    let msg = open(&dir).unwrap_err().to_string();
    assert!(msg.contains("behavioral view"), "{msg}");
    // A version 2 encoder needs its tensors; codes need the items' codes.
    let (_d, dir) = fresh();
    edit_json(&dir, |v| {
        v["version"] = 2.into();
        v["encoder"] = "gru".into();
    });
    assert!(matches!(
        open(&dir),
        Err(BundleError::MissingTensor { name, .. }) if name == "gate.behavioral.read"
    ));
    let (_d, dir) = fresh();
    edit_json(&dir, |v| {
        v["version"] = 2.into();
        v["views"]["behavioral"]["render"] = "codes".into();
    });
    assert!(matches!(
        open(&dir),
        Err(BundleError::Metadata { key, .. }) if key == "item_codes"
    ));
}
