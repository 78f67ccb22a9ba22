//! The engine end to end on the real model, store and bundle.

mod common;

use common::*;
use l2rec::engine::*;
use l2rec::store::Durability;

struct Fixture {
    _dir: tempfile::TempDir,
    engine: Engine,
}

fn open(key: Option<[u8; 32]>) -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let bundle = write_small_bundle_with(&dir.path().join("bundle"), 2);
    let mut config = EngineConfig::new(model_info().path, bundle, dir.path().join("store"));
    config.master_key = key;
    config.threads = Some(1);
    config.durability = Durability::Immediate;
    let engine = Engine::open(config, &mut |_, _| {}, &CancelToken::default()).unwrap();
    Fixture { _dir: dir, engine }
}

fn event(item: &str, t: i64) -> EventInput {
    EventInput {
        item_id: item.into(),
        timestamp_ms: t,
        kind: "view".into(),
        item_text: None,
    }
}

fn ids(recs: &[Recommendation]) -> Vec<&str> {
    recs.iter().map(|r| r.item_id.as_str()).collect()
}

#[test]
fn the_whole_flow() {
    let f = open(Some([7u8; 32]));
    let e = &f.engine;
    // A new user gets the popular items; nothing is popular yet: bias order.
    let cold_start = e.recommend("ann", 5, RecommendOptions::default()).unwrap();
    assert_eq!(cold_start.len(), 5);

    let history = ["1", "2", "3", "4", "5", "6", "7", "8"];
    for (t, item) in history.iter().enumerate() {
        e.observe("ann", &event(item, t as i64)).unwrap();
    }
    let recs = e.recommend("ann", 10, RecommendOptions::default()).unwrap();
    assert_eq!(recs.len(), 10);
    assert!(
        ids(&recs).iter().all(|id| !history.contains(id)),
        "history excluded: {:?}",
        ids(&recs)
    );
    assert_eq!(
        e.recommend("ann", 10, RecommendOptions::default()).unwrap(),
        recs,
        "same state, same answer"
    );
    let with_history = e
        .recommend(
            "ann",
            40,
            RecommendOptions {
                include_history: true,
            },
        )
        .unwrap();
    assert!(ids(&with_history).contains(&"3"));

    let why = e.explain("ann").unwrap();
    assert_eq!(why.reasons.len(), 10);
    let weights: f32 = why.view_weight.values().sum();
    assert!((weights - 1.0).abs() < 1e-5);
    assert!(why
        .reasons
        .iter()
        .all(|(_, pulls)| pulls.iter().all(|p| history.contains(&p.as_str()))));

    // Another user's events make "9" popular for newcomers.
    for t in 0..3 {
        e.observe("bob", &event("9", t)).unwrap();
    }
    assert_eq!(
        e.recommend("newcomer", 1, RecommendOptions::default())
            .unwrap()[0]
            .item_id,
        "9"
    );

    let report = e
        .personalize(
            "ann",
            PersonalizeOptions::default(),
            &mut |_, _| {},
            &CancelToken::default(),
        )
        .unwrap();
    eprintln!("personalize: {report:?}");
    assert!(
        report.train_loss_after <= report.train_loss_before,
        "{report:?}"
    );
    assert_eq!(report.backbone_passes, 2 * (2 + 2) + 4);

    let exported = e.export_user("ann").unwrap().to_string();
    assert!(exported.contains("\"5\""), "{exported}");
    let stats = e.stats().unwrap();
    assert!(stats.store_encrypted && stats.users >= 2, "{stats:?}");

    e.forget_user("ann").unwrap();
    assert!(!e.export_user("ann").unwrap().to_string().contains("\"5\""));
    let after = e.recommend("ann", 5, RecommendOptions::default()).unwrap();
    assert_eq!(after[0].item_id, "9", "a forgotten user is a new user");
}

#[test]
fn unknown_items_need_text_and_then_serve_as_cold_items() {
    let f = open(None);
    let e = &f.engine;
    match e.observe("u", &event("no-such-item", 1)) {
        Err(EngineError::UnknownItem(id)) => assert_eq!(id, "no-such-item"),
        other => panic!("{other:?}"),
    }
    let mut with_text = event("brand-new", 1);
    with_text.item_text = Some("A Brand New Film (2026)".into());
    e.observe("u", &with_text).unwrap();
    assert_eq!(e.stats().unwrap().cold_items, 1);
    for (t, item) in ["1", "2", "3"].iter().enumerate() {
        e.observe("u", &event(item, 2 + t as i64)).unwrap();
    }
    let all = e
        .recommend(
            "u",
            40,
            RecommendOptions {
                include_history: true,
            },
        )
        .unwrap();
    assert!(
        ids(&all).contains(&"brand-new"),
        "the cold item is in the catalog"
    );
    e.upsert_items(
        &[ItemInput {
            id: "other-new".into(),
            text: "Another One (2026)".into(),
        }],
        &mut |_, _| {},
        &CancelToken::default(),
    )
    .unwrap();
    assert_eq!(e.stats().unwrap().cold_items, 2);
}

#[test]
fn bad_arguments_get_typed_errors() {
    let f = open(None);
    let e = &f.engine;
    let invalid =
        |r: Result<Vec<Recommendation>, EngineError>| matches!(r, Err(EngineError::Invalid(_)));
    assert!(invalid(e.recommend("u", 0, RecommendOptions::default())));
    assert!(invalid(e.recommend("u", 1001, RecommendOptions::default())));
    assert!(invalid(e.recommend(
        &"x".repeat(300),
        5,
        RecommendOptions::default()
    )));
    assert!(invalid(e.recommend("", 5, RecommendOptions::default())));
    let huge = ItemInput {
        id: "big".into(),
        text: "t".repeat(10_000),
    };
    assert!(matches!(
        e.upsert_items(&[huge], &mut |_, _| {}, &CancelToken::default()),
        Err(EngineError::Invalid(_))
    ));
    let cancelled = CancelToken::default();
    cancelled.cancel();
    let items = [ItemInput {
        id: "c1".into(),
        text: "Cancelled (2026)".into(),
    }];
    assert!(matches!(
        e.upsert_items(&items, &mut |_, _| {}, &cancelled),
        Err(EngineError::Cancelled)
    ));
    let good = PersonalizeOptions::default();
    let bad = [
        PersonalizeOptions { steps: 0, ..good },
        PersonalizeOptions {
            steps: u32::MAX as usize,
            ..good
        },
        PersonalizeOptions {
            learning_rate: f32::NAN,
            ..good
        },
        PersonalizeOptions {
            learning_rate: f32::INFINITY,
            ..good
        },
        PersonalizeOptions {
            learning_rate: -1e30,
            ..good
        },
        PersonalizeOptions {
            l2: f32::NAN,
            ..good
        },
        PersonalizeOptions {
            l2: f32::NEG_INFINITY,
            ..good
        },
        PersonalizeOptions {
            holdout: f32::NAN,
            ..good
        },
        PersonalizeOptions {
            holdout: -1.0,
            ..good
        },
        PersonalizeOptions {
            holdout: 2.0,
            ..good
        },
        PersonalizeOptions {
            holdout: f32::INFINITY,
            ..good
        },
    ];
    for options in bad {
        let got = e.personalize("u", options, &mut |_, _| {}, &CancelToken::default());
        assert!(
            matches!(got, Err(EngineError::Invalid(_))),
            "{options:?}: {got:?}"
        );
    }
}

#[test]
fn threads_above_ggmls_limit_are_refused_at_open() {
    let dir = tempfile::tempdir().unwrap();
    let bundle = write_small_bundle_with(&dir.path().join("bundle"), 2);
    for threads in [0, MAX_THREADS + 1, 1_000_000] {
        let mut config =
            EngineConfig::new(model_info().path, bundle.clone(), dir.path().join("store"));
        config.threads = Some(threads);
        let got = Engine::open(config, &mut |_, _| {}, &CancelToken::default());
        assert!(
            matches!(got, Err(EngineError::Invalid(_))),
            "threads {threads}: {:?}",
            got.err()
        );
    }
}

#[test]
fn a_huge_history_keeps_only_the_last_max_items() {
    let f = open(None);
    let e = &f.engine;
    for t in 0..500 {
        e.observe("heavy", &event(&((t % 40) + 1).to_string(), t))
            .unwrap();
    }
    let recs = e
        .recommend(
            "heavy",
            5,
            RecommendOptions {
                include_history: true,
            },
        )
        .unwrap();
    assert_eq!(recs.len(), 5);
}

#[test]
fn the_engine_is_send_and_sync() {
    fn check<T: Send + Sync>() {}
    check::<Engine>();
}
