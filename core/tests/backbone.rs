//! The backbone on the real model: determinism, expert mixtures, KV reuse,
//! long prompts, cancellation.

mod common;

use common::*;
use l2rec::backbone::{
    Backbone, BackboneConfig, BackboneError, Expert, KvCache, Session, INITIAL_CELLS,
};
use l2rec::lora::{validate_expert, LoraSpec};
use l2rec::prompt::{ItemRef, View};
use l2rec_dev::random::write_random_expert;

fn state(session: &mut Session, bb: &Backbone, text: &str) -> Vec<f32> {
    session.state_fresh(&bb.tokenize(text).unwrap()).unwrap()
}

fn experts(bb: &Backbone, dir: &std::path::Path, n: u64, amplitude: f32) -> Vec<Expert> {
    let spec = LoraSpec {
        rank: 8,
        alpha: 16.0,
        layers: vec![15, 16, 17],
        modules: vec!["attn_q".into(), "ffn_up".into()],
    };
    (0..n)
        .map(|seed| {
            let path = dir.join(format!("e{seed}-{amplitude}.gguf"));
            write_random_expert(&path, bb.info(), &spec, seed, amplitude).unwrap();
            validate_expert(&path, bb.info(), &spec).unwrap();
            bb.load_expert(&path).unwrap()
        })
        .collect()
}

fn history_prompt(items: usize) -> String {
    let data = dataset();
    let (_, template) = l2rec_dev::zeroshot::default_templates();
    let longest = data.histories.iter().max_by_key(|h| h.rows.len()).unwrap();
    let rows = &longest.rows[..items];
    template.render(
        View::Semantic,
        rows.iter()
            .map(|&r| ItemRef::text_only(&data.catalog.texts[r as usize])),
    )
}

const TEXT: &str = "Movies a user watched, oldest first:\nToy Story (1995)\nHeat (1995)\n";

#[test]
fn view_state_is_deterministic_and_zero_scales_are_the_base() {
    let bb = backbone();
    let dir = tempfile::tempdir().unwrap();
    let e = experts(&bb, dir.path(), 1, 0.05);
    let mut s = bb.session().unwrap();
    let a = state(&mut s, &bb, TEXT);
    assert_eq!(a.len(), bb.n_embd());
    assert_eq!(
        a,
        state(&mut s, &bb, TEXT),
        "same input, same layout: bit-identical"
    );
    assert_eq!(
        a,
        bb.session()
            .unwrap()
            .state_fresh(&bb.tokenize(TEXT).unwrap())
            .unwrap(),
        "a second session agrees"
    );

    s.set_mixture(&[(&e[0], 0.0)]).unwrap();
    assert_eq!(
        state(&mut s, &bb, TEXT),
        a,
        "every scale 0 is the base model"
    );
    s.set_mixture(&[(&e[0], 1.0)]).unwrap();
    assert!(
        rel_diff(&a, &state(&mut s, &bb, TEXT)) > 1e-3,
        "an expert at scale 1 moves the state"
    );
}

#[test]
fn two_experts_differ_from_either_alone_and_order_does_not_matter() {
    let bb = backbone();
    let dir = tempfile::tempdir().unwrap();
    let e = experts(&bb, dir.path(), 2, 0.05);
    let mut s = bb.session().unwrap();
    let mut with = |mix: &[(&Expert, f32)]| {
        s.set_mixture(mix).unwrap();
        state(&mut s, &bb, TEXT)
    };
    let first = with(&[(&e[0], 0.6)]);
    let second = with(&[(&e[1], 0.4)]);
    let both = with(&[(&e[0], 0.6), (&e[1], 0.4)]);
    let swapped = with(&[(&e[1], 0.4), (&e[0], 0.6)]);
    assert!(rel_diff(&both, &first) > 1e-3 && rel_diff(&both, &second) > 1e-3);
    assert!(
        rel_diff(&both, &swapped) < 1e-6,
        "order changed the state by {}",
        rel_diff(&both, &swapped)
    );
}

#[test]
fn a_merged_mixture_is_the_mixture_of_its_experts() {
    // F16 weights: Q4_K's activation quantization would blur rounding-level
    // differences into noise (as in the linearity test below).
    let bb = f16_backbone();
    let dir = tempfile::tempdir().unwrap();
    let e = experts(&bb, dir.path(), 3, 0.05);
    let mut s = bb.session().unwrap();
    let mix = [(&e[0], 0.5), (&e[1], 0.3), (&e[2], 0.2)];
    s.set_mixture(&mix).unwrap();
    let merged = state(&mut s, &bb, TEXT);
    s.set_merge_mixtures(false);
    s.set_mixture(&[]).unwrap();
    s.set_mixture(&mix).unwrap();
    let separate = state(&mut s, &bb, TEXT);
    let base = {
        s.set_mixture(&[]).unwrap();
        state(&mut s, &bb, TEXT)
    };
    let (gap, moved) = (rel_diff(&merged, &separate), rel_diff(&separate, &base));
    assert!(
        gap < moved / 100.0,
        "merged differs from separate adapters by {gap}, the mixture moves the state by {moved}"
    );
}

#[test]
fn a_mixture_is_merged_only_from_experts_that_are_still_sound() {
    let bb = backbone();
    let dir = tempfile::tempdir().unwrap();
    let e = experts(&bb, dir.path(), 2, 0.05);
    let other = {
        let spec = LoraSpec {
            rank: 4,
            alpha: 8.0,
            layers: vec![3],
            modules: vec!["attn_v".into()],
        };
        let path = dir.path().join("other.gguf");
        write_random_expert(&path, bb.info(), &spec, 9, 0.05).unwrap();
        bb.load_expert(&path).unwrap()
    };
    let mut s = bb.session().unwrap();
    let err = s.set_mixture(&[(&e[0], 0.5), (&other, 0.5)]).unwrap_err();
    assert!(
        matches!(err, BackboneError::Mixture(_)) && err.to_string().contains("same weights"),
        "{err}"
    );
    // A file changed after loading is read again, and refused, not merged.
    std::fs::write(e[1].path(), b"GGUF but not really").unwrap();
    let err = s.set_mixture(&[(&e[0], 0.5), (&e[1], 0.5)]).unwrap_err();
    assert!(matches!(err, BackboneError::Mixture(_)), "{err}");
    // The session still serves its last good mixture's model: the base.
    assert_eq!(state(&mut s, &bb, TEXT).len(), bb.n_embd());
}

#[test]
fn on_f16_weights_an_expert_acts_linearly_for_small_scales() {
    // On an f16 cache: a q8_0 cache rounds each state differently at each
    // scale, noise of ~20% of a 0.2-scale step (measured), which would hide
    // the model's own curvature this test is about.
    let bb = f16_backbone_with(BackboneConfig {
        kv_cache: Some(KvCache::F16),
        ..config()
    });
    let dir = tempfile::tempdir().unwrap();
    let e = experts(&bb, dir.path(), 1, 0.05);
    let mut s = bb.session().unwrap();
    let base = state(&mut s, &bb, TEXT);
    let mut delta = |scale: f32| {
        s.set_mixture(&[(&e[0], scale)]).unwrap();
        let h = state(&mut s, &bb, TEXT);
        h.iter()
            .zip(&base)
            .map(|(a, b)| a - b)
            .collect::<Vec<f32>>()
    };
    // ggml rounds activations to f16 for f16 weights (~1e-3 relative), so the
    // step must be large against that and small against the curvature: at
    // scale 0.2 the state moves ~2% and the linear prediction is ~4% off.
    let (d1, d2) = (delta(0.2), delta(0.4));
    let doubled: Vec<f32> = d1.iter().map(|x| 2.0 * x).collect();
    assert!(
        d1.iter().any(|x| *x != 0.0),
        "a small scale moves the state"
    );
    let err = rel_diff(&d2, &doubled);
    eprintln!("F16: |h(0.4) - h0 - 2 (h(0.2) - h0)| / |h(0.4) - h0| = {err:.4}");
    assert!(err < 0.08, "not linear: {err}");
}

/// Appending an item and evaluating only its tokens against a full re-encode.
fn append_vs_reencode(bb: &Backbone) -> (f32, usize, usize) {
    let mut s = bb.session().unwrap();
    let shorter = bb.tokenize(&history_prompt(19)).unwrap();
    let longer = bb.tokenize(&history_prompt(20)).unwrap();
    assert_eq!(
        &longer[..shorter.len()],
        &shorter[..],
        "appending an item keeps the token prefix"
    );
    s.state(&shorter).unwrap();
    let appended = s.state(&longer).unwrap();
    let evaluated = s.tokens_evaluated_last();
    let full = s.state_fresh(&longer).unwrap();
    (
        rel_diff(&appended, &full),
        evaluated,
        longer.len() - shorter.len(),
    )
}

#[test]
fn appending_evaluates_only_new_tokens_and_matches_a_reencode() {
    let (q4_diff, evaluated, new_tokens) = append_vs_reencode(&backbone());
    eprintln!("Q4_K_M: appended vs re-encoded relative difference {q4_diff:.5}");
    assert_eq!(
        evaluated, new_tokens,
        "only the appended item's tokens are evaluated"
    );
    assert!(q4_diff < 0.08, "Q4_K_M append drifted by {q4_diff}");
    // The plain attention kernel on an f16 cache: exact up to float rounding.
    let exact = f16_backbone_with(BackboneConfig {
        kv_cache: Some(KvCache::F16),
        ..config()
    });
    let (f16_diff, _, _) = append_vs_reencode(&exact);
    eprintln!("F16 weights, f16 cache: appended vs re-encoded relative difference {f16_diff:.2e}");
    assert!(f16_diff < 1e-4, "F16 append drifted by {f16_diff}");
    // The default q8_0 cache rounds each cached token once, whichever way the
    // prompt was split, and flash attention sums in another order.
    let (q8_diff, _, _) = append_vs_reencode(&f16_backbone());
    eprintln!("F16 weights, q8_0 cache: appended vs re-encoded relative difference {q8_diff:.2e}");
    assert!(
        q8_diff < 0.02,
        "F16 append on a q8_0 cache drifted by {q8_diff}"
    );
}

#[test]
fn a_session_grows_to_its_longest_prompt_keeping_mixture_and_cancel_flag() {
    let bb = backbone();
    let dir = tempfile::tempdir().unwrap();
    let e = experts(&bb, dir.path(), 1, 0.05);
    let long = bb.tokenize(&history_prompt(40)).unwrap();
    assert!(long.len() > INITIAL_CELLS as usize, "{} tokens", long.len());

    let mut grown = bb.session().unwrap();
    assert_eq!(grown.cells(), INITIAL_CELLS, "a new session is small");
    let cancel = grown.cancel_handle();
    grown.set_mixture(&[(&e[0], 1.0)]).unwrap();
    let through_growth = grown.state(&long).unwrap();
    assert!(
        grown.cells() as usize >= long.len() && grown.cells() <= bb.config().n_ctx,
        "{} cells for {} tokens",
        grown.cells(),
        long.len()
    );

    // The same mixture set on a session that was already large.
    let mut large = bb.session().unwrap();
    large.state_fresh(&long).unwrap();
    large.set_mixture(&[(&e[0], 1.0)]).unwrap();
    let direct = large.state_fresh(&long).unwrap();
    assert!(
        rel_diff(&through_growth, &direct) < 1e-4,
        "the mixture survives growth: {}",
        rel_diff(&through_growth, &direct)
    );
    large.set_mixture(&[]).unwrap();
    assert!(rel_diff(&large.state_fresh(&long).unwrap(), &direct) > 1e-3);

    let canceller = std::thread::spawn(move || {
        std::thread::sleep(std::time::Duration::from_millis(30));
        cancel.cancel();
    });
    let result = grown.state_fresh(&long);
    canceller.join().unwrap();
    assert!(
        matches!(result, Err(BackboneError::Cancelled)),
        "a cancel handle taken before growth stops the grown session"
    );
}

#[test]
fn unchanged_prompt_is_a_cache_hit_and_a_shorter_one_rolls_back() {
    let bb = backbone();
    let mut s = bb.session().unwrap();
    let long = bb.tokenize(&history_prompt(6)).unwrap();
    let short = bb.tokenize(&history_prompt(3)).unwrap();
    let first = s.state(&long).unwrap();
    assert_eq!(s.state(&long).unwrap(), first);
    assert_eq!(s.tokens_evaluated_last(), 0);
    let rolled_back = s.state(&short).unwrap();
    assert_eq!(
        s.tokens_evaluated_last(),
        1,
        "only the last token is re-evaluated"
    );
    assert!(cosine(&rolled_back, &s.state_fresh(&short).unwrap()) > 0.99);
}

#[test]
fn prompts_longer_than_a_batch_are_split_and_longer_than_the_context_refused() {
    let bb = Backbone::open_verified(
        model_info(),
        BackboneConfig {
            n_ctx: 1024,
            n_batch: 128,
            ..config()
        },
    )
    .unwrap();
    let mut s = bb.session().unwrap();
    let tokens = bb.tokenize(&history_prompt(30)).unwrap();
    assert!(tokens.len() > 128, "{} tokens", tokens.len());
    let split = s.state_fresh(&tokens).unwrap();
    assert!(split.iter().all(|v| v.is_finite()));
    let too_long: Vec<i32> = tokens.iter().cycle().take(1100).copied().collect();
    match s.state_fresh(&too_long) {
        Err(BackboneError::PromptTooLong {
            tokens: 1100,
            n_ctx: 1024,
        }) => {}
        other => panic!("expected PromptTooLong, got {other:?}"),
    }
    assert_eq!(
        s.state_fresh(&tokens).unwrap(),
        split,
        "the session still works after a refusal"
    );
}

#[test]
fn a_running_evaluation_can_be_cancelled() {
    let bb = backbone();
    let mut s = bb.session().unwrap();
    let tokens = bb.tokenize(&history_prompt(50)).unwrap();
    let cancel = s.cancel_handle();
    let canceller = std::thread::spawn(move || {
        std::thread::sleep(std::time::Duration::from_millis(30));
        cancel.cancel();
    });
    let result = s.state_fresh(&tokens);
    canceller.join().unwrap();
    assert!(
        matches!(result, Err(BackboneError::Cancelled)),
        "got {:?}",
        result.map(|v| v.len())
    );
    assert!(
        s.state_fresh(&bb.tokenize(TEXT).unwrap()).is_ok(),
        "the session works after a cancel"
    );
}

#[test]
fn a_corrupted_model_is_refused_before_llama_cpp_loads_it() {
    let dir = tempfile::tempdir().unwrap();
    let copy = dir.path().join("model.gguf");
    std::fs::copy(model_info().path, &copy).unwrap();
    // Random bytes in the middle of the weights: llama.cpp would load this.
    let mut bytes = std::fs::read(&copy).unwrap();
    let mid = bytes.len() / 2;
    bytes[mid..mid + 4096]
        .iter_mut()
        .enumerate()
        .for_each(|(i, b)| *b = (i * 31) as u8);
    std::fs::write(&copy, bytes).unwrap();
    let config = BackboneConfig {
        expected_sha256: Some(l2rec_dev::assets::MODEL_SHA256.into()),
        ..config()
    };
    match Backbone::open(&copy, config) {
        Err(BackboneError::Checksum { .. }) => {}
        other => panic!("expected a checksum error, got {:?}", other.err()),
    }
}

#[test]
fn the_upper_layers_alone_give_the_full_pass_under_any_mixture() {
    // Experts on layers 15-17: the upper model is layers 15.. (one global
    // layer, 17, and sliding-window ones), fed the stream after layer 14.
    let bb = backbone();
    let dir = tempfile::tempdir().unwrap();
    let e = experts(&bb, dir.path(), 2, 0.05);
    // Over 256 tokens: the full session grows its cache, the upper one is
    // sized to n_ctx from the start.
    let tokens = bb.tokenize(&history_prompt(30)).unwrap();
    assert!(tokens.len() > 256, "{} tokens", tokens.len());
    let positions = [3, tokens.len() / 2, tokens.len() - 1];
    let upper = bb.upper_layers(15).unwrap().expect("Gemma 3 is supported");
    let mut up = upper.session().unwrap();
    let mut full = bb.session().unwrap();
    let lower = full.lower_states(&tokens, &positions, 15).unwrap();
    assert_eq!(lower.tokens(), tokens.len());
    let at_base = full.states_at(&tokens, &positions).unwrap();
    let mixtures: [&[(&Expert, f32)]; 3] = [&[], &[(&e[0], 1.0)], &[(&e[0], 0.7), (&e[1], 0.3)]];
    for mix in mixtures {
        full.set_mixture(mix).unwrap();
        let expected = full.states_at(&tokens, &positions).unwrap();
        up.set_mixture(mix).unwrap();
        let got = up.states_at(&lower, &positions).unwrap();
        for (g, x) in got.iter().zip(&expected) {
            assert!(
                rel_diff(g, x) < 1e-6, // measured: 0, bit-identical
                "{} experts: the upper layers differ from the full pass by {}",
                mix.len(),
                rel_diff(g, x)
            );
        }
        if !mix.is_empty() {
            assert!(
                rel_diff(&got[2], &at_base[2]) > 1e-3,
                "the mixture moves the state"
            );
        }
    }
    assert!(bb.upper_layers(0).unwrap().is_none(), "nothing to skip");

    // Layer 17 alone is a global layer: llama.cpp needs a sliding-window
    // layer in the model, so it starts at 16.
    let top = bb.upper_layers(17).unwrap().unwrap();
    assert_eq!(top.from_layer(), 16);
    full.set_mixture(&[]).unwrap(); // the experts adapt layer 15 too
    let lower = full.lower_states(&tokens, &positions, 16).unwrap();
    let expected = full.states_at(&tokens, &positions).unwrap();
    let got = top
        .session()
        .unwrap()
        .states_at(&lower, &positions)
        .unwrap();
    let gaps: Vec<f32> = got
        .iter()
        .zip(&expected)
        .map(|(g, x)| rel_diff(g, x))
        .collect();
    assert!(
        gaps.iter().all(|&g| g < 1e-6),
        "layer 17 alone differs by {gaps:?}"
    );
}
