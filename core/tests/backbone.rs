//! The backbone on the real model: determinism, expert mixtures, KV reuse.

use l2rec::assets;
use l2rec::backbone::{Backbone, BackboneConfig, Session};
use l2rec::lora::{write_random_expert, LoraSpec};

fn backbone() -> Backbone {
    let path = assets::model_path().expect("the model (scripts/fetch-assets)");
    let config = BackboneConfig {
        expected_sha256: Some(assets::MODEL_SHA256.into()),
        threads: Some(1),
        ..Default::default()
    };
    Backbone::open(&path, config).expect("open the backbone")
}

fn rel_diff(a: &[f32], b: &[f32]) -> f32 {
    let num: f32 = a.iter().zip(b).map(|(x, y)| (x - y) * (x - y)).sum::<f32>().sqrt();
    let den: f32 = a.iter().map(|x| x * x).sum::<f32>().sqrt();
    num / den
}

fn state(session: &mut Session, bb: &Backbone, text: &str) -> Vec<f32> {
    session.state_fresh(&bb.tokenize(text).unwrap()).unwrap()
}

#[test]
fn view_state_is_deterministic_and_zero_scales_are_the_base() {
    let bb = backbone();
    let dir = tempfile::tempdir().unwrap();
    let spec = LoraSpec { rank: 8, alpha: 16.0, layers: vec![16, 17], modules: vec!["attn_q".into(), "ffn_up".into()] };
    let path = dir.path().join("e0.gguf");
    write_random_expert(&path, bb.info(), &spec, 1, 0.05).unwrap();
    l2rec::lora::validate_expert(&path, bb.info(), &spec).unwrap();
    let expert = bb.load_expert(&path).unwrap();

    let mut s = bb.session().unwrap();
    let text = "Movies a user watched:\nToy Story (1995)\nHeat (1995)\n";
    let a = state(&mut s, &bb, text);
    let b = state(&mut s, &bb, text);
    assert_eq!(a.len(), bb.n_embd());
    assert_eq!(a, b, "same input, same layout: bit-identical");

    s.set_mixture(&[(&expert, 0.0)]).unwrap();
    assert_eq!(state(&mut s, &bb, text), a, "every scale 0 is the base model");

    s.set_mixture(&[(&expert, 1.0)]).unwrap();
    let c = state(&mut s, &bb, text);
    assert!(rel_diff(&a, &c) > 1e-3, "an expert at scale 1 moves the state");
}
