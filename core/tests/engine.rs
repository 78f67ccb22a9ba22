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
    let mut config = config_in(dir.path())();
    config.master_key = key;
    config.durability = Durability::Immediate;
    let engine = Engine::open(config, &mut Progress::none()).unwrap();
    Fixture { _dir: dir, engine }
}

/// Configs for one engine: the small bundle, written once under `dir`, its
/// store at `dir/store`, one llama.cpp thread.
fn config_in(dir: &std::path::Path) -> impl Fn() -> EngineConfig {
    let bundle = write_small_bundle_with(&dir.join("bundle"), 2);
    let store = dir.join("store");
    move || {
        let mut c = EngineConfig::new(model_info().path, bundle.clone(), store.clone());
        c.threads = Some(1);
        c
    }
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
    let weights: f32 = why.view_weight.behavioral + why.view_weight.semantic;
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
        .personalize("ann", PersonalizeOptions::default(), &mut Progress::none())
        .unwrap();
    eprintln!("personalize: {report:?}");
    assert!(
        report.train_loss_after <= report.train_loss_before,
        "{report:?}"
    );
    // Per view: the current mixture, each of 2 experts alone, the new mixture,
    // all through the upper layer (the experts adapt layer 17 only) after one
    // full pass per view for the stream below it.
    assert_eq!(report.upper_passes, 2 * (1 + 2 + 1));
    assert_eq!(report.backbone_passes, 2);

    let exported = serde_json::to_string(&e.export_user("ann").unwrap()).unwrap();
    assert!(exported.contains("\"5\""), "{exported}");
    let stats = e.stats().unwrap();
    assert!(stats.store_encrypted && stats.users >= 2, "{stats:?}");

    e.forget_user("ann").unwrap();
    assert!(!serde_json::to_string(&e.export_user("ann").unwrap())
        .unwrap()
        .contains("\"5\""));
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
        &mut Progress::none(),
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
        e.upsert_items(&[huge], &mut Progress::none()),
        Err(EngineError::Invalid(_))
    ));
    let cancelled = CancelToken::default();
    cancelled.cancel();
    let items = [ItemInput {
        id: "c1".into(),
        text: "Cancelled (2026)".into(),
    }];
    assert!(matches!(
        e.upsert_items(&items, &mut Progress::cancellable(&cancelled)),
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
        let got = e.personalize("u", options, &mut Progress::none());
        assert!(
            matches!(got, Err(EngineError::Invalid(_))),
            "{options:?}: {got:?}"
        );
    }
    let bad_events = [
        EventInput {
            timestamp_ms: i64::MIN,
            ..event("1", 0)
        },
        EventInput {
            timestamp_ms: i64::MAX,
            ..event("1", 0)
        },
        EventInput {
            kind: "k".repeat(1 << 20),
            ..event("1", 0)
        },
        EventInput {
            kind: "vi\0ew".into(),
            ..event("1", 0)
        },
        EventInput {
            item_text: Some(" ".into()),
            ..event("unknown-item", 0)
        },
        event("new\nline", 0),
    ];
    for bad in &bad_events {
        let got = e.observe("u", bad);
        assert!(
            matches!(got, Err(EngineError::Invalid(_))),
            "{bad:?}: {got:?}"
        );
    }
    assert_eq!(
        e.export_user("u").unwrap().events.len(),
        0,
        "nothing stored"
    );
    let twice = [
        ItemInput {
            id: "d".into(),
            text: "D".into(),
        },
        ItemInput {
            id: "d".into(),
            text: "D again".into(),
        },
    ];
    let got = e.upsert_items(&twice, &mut Progress::none());
    assert!(
        matches!(&got, Err(EngineError::Invalid(m)) if m.contains("`d` appears twice")),
        "{got:?}"
    );
}

#[test]
fn configs_out_of_range_are_refused_at_open() {
    let dir = tempfile::tempdir().unwrap();
    let bundle = write_small_bundle_with(&dir.path().join("bundle"), 2);
    let base = EngineConfig::new(model_info().path, bundle, dir.path().join("store"));
    let mut bad = Vec::new();
    for threads in [0, MAX_THREADS + 1, 1_000_000] {
        bad.push(EngineConfig {
            threads: Some(threads),
            ..base.clone()
        });
    }
    for flush_every_ms in [0, MAX_FLUSH_EVERY_MS + 1, u64::MAX] {
        bad.push(EngineConfig {
            durability: Durability::Batched { flush_every_ms },
            ..base.clone()
        });
    }
    bad.push(EngineConfig {
        max_events_per_user: 0,
        ..base.clone()
    });
    bad.push(EngineConfig {
        limits: Limits {
            max_id_bytes: 0,
            max_text_bytes: 0,
            max_kind_bytes: 0,
            max_k: 0,
            max_items_per_call: 0,
        },
        ..base.clone()
    });
    for config in bad {
        let what = format!("{:?} {:?}", config.threads, config.durability);
        let got = Engine::open(config, &mut Progress::none());
        assert!(
            matches!(got, Err(EngineError::Invalid(_))),
            "{what}: {:?}",
            got.err()
        );
    }
    assert!(
        !dir.path().join("store").exists(),
        "refused before the store is made"
    );
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

/// Each long call, cancelled from another thread while a backbone pass runs,
/// returns `Cancelled` within a second and leaves the model free for the
/// next call.
#[test]
fn cancel_stops_each_long_call_within_a_second_and_frees_the_model() {
    use std::time::{Duration, Instant};

    let f = open(None);
    let e = &f.engine;
    // 40 events: every pass over this history takes seconds at one thread.
    for t in 0..40 {
        e.observe("long", &event(&(t + 1).to_string(), t)).unwrap();
    }
    type Call<'e> = Box<dyn Fn(&CancelToken) -> Result<(), EngineError> + 'e>;
    let calls: [(&str, Call); 3] = [
        (
            "recommend",
            Box::new(|c| {
                e.recommend_cancellable("long", 5, RecommendOptions::default(), c)
                    .map(drop)
            }),
        ),
        (
            "explain",
            Box::new(|c| e.explain_cancellable("long", c).map(drop)),
        ),
        (
            "personalize",
            Box::new(|c| {
                let options = PersonalizeOptions {
                    steps: PersonalizeOptions::MAX_STEPS,
                    ..Default::default()
                };
                e.personalize("long", options, &mut Progress::cancellable(c))
                    .map(drop)
            }),
        ),
    ];
    for (name, call) in calls {
        let cancel = CancelToken::default();
        let (result, waited) = std::thread::scope(|s| {
            let token = cancel.clone();
            let canceller = s.spawn(move || {
                std::thread::sleep(Duration::from_millis(300));
                token.cancel();
                Instant::now()
            });
            let result = call(&cancel);
            let returned = Instant::now();
            let cancelled_at = canceller.join().unwrap();
            (result, returned.saturating_duration_since(cancelled_at))
        });
        assert!(
            matches!(result, Err(EngineError::Cancelled)),
            "{name}: {result:?}"
        );
        assert!(
            waited < Duration::from_secs(1),
            "{name} stopped after {waited:?}"
        );
        let started = Instant::now();
        e.stats().unwrap();
        assert!(
            started.elapsed() < Duration::from_secs(1),
            "{name} left the model locked"
        );
    }
    // The sessions serve again after the cancelled passes (the user has seen
    // every item, so their history is allowed back).
    let options = RecommendOptions {
        include_history: true,
    };
    assert_eq!(e.recommend("long", 5, options).unwrap().len(), 5);
}

/// Every file under `dir` whose bytes contain `needle`.
fn files_containing(dir: &std::path::Path, needle: &[u8]) -> Vec<std::path::PathBuf> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            found.extend(files_containing(&path, needle));
        } else if std::fs::read(&path)
            .unwrap()
            .windows(needle.len())
            .any(|w| w == needle)
        {
            found.push(path);
        }
    }
    found
}

/// After `forget_user` (which compacts), no byte of the user's id or of
/// their events' kinds is left in any store file, plaintext or encrypted;
/// another user's data stays.
#[test]
fn forget_leaves_no_byte_of_the_user_in_the_store_files() {
    for key in [None, Some([9u8; 32])] {
        let f = open(key);
        let e = &f.engine;
        let store = f._dir.path().join("store");
        for t in 0..20 {
            let kind = |who: &str| format!("kind-of-{who}-q7z");
            e.observe(
                "gone-user-q7z",
                &EventInput {
                    kind: kind("gone"),
                    ..event(&(t % 40 + 1).to_string(), t)
                },
            )
            .unwrap();
            e.observe(
                "kept-user-q7z",
                &EventInput {
                    kind: kind("kept"),
                    ..event(&(t % 40 + 1).to_string(), t)
                },
            )
            .unwrap();
        }
        e.recommend("gone-user-q7z", 3, RecommendOptions::default())
            .unwrap();
        e.flush().unwrap();
        if key.is_none() {
            // Positive control: the scan sees plaintext.
            assert!(!files_containing(&store, b"kind-of-kept-q7z").is_empty());
        }
        e.forget_user("gone-user-q7z").unwrap();
        e.flush().unwrap();
        for needle in [&b"gone-user-q7z"[..], b"kind-of-gone-q7z"] {
            let left = files_containing(&store, needle);
            assert!(
                left.is_empty(),
                "key {}: {:?} left in {left:?}",
                key.is_some(),
                String::from_utf8_lossy(needle)
            );
        }
        assert_eq!(e.export_user("kept-user-q7z").unwrap().events.len(), 20);
    }
}

/// Opens the sled database of a closed store directly, waiting for the lock
/// that sled's background threads hold a moment after a close.
fn raw_store_db(store: &std::path::Path) -> sled::Db {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    loop {
        match sled::open(store.join(l2rec::store::DATABASE_DIR)) {
            Ok(db) => return db,
            Err(_) if std::time::Instant::now() < deadline => {
                std::thread::sleep(std::time::Duration::from_millis(20))
            }
            Err(e) => panic!("opening the raw database: {e}"),
        }
    }
}

#[test]
fn one_damaged_user_fails_alone_named_and_forget_repairs() {
    let dir = tempfile::tempdir().unwrap();
    let config = config_in(dir.path());
    let store = dir.path().join("store");
    {
        let e = Engine::open(config(), &mut Progress::none()).unwrap();
        for t in 0..6 {
            e.observe("ann", &event(&(t + 1).to_string(), t)).unwrap();
            e.observe("bob", &event(&(t + 11).to_string(), t)).unwrap();
        }
    }
    {
        // Flip one byte of one user's event (whichever sorts first).
        let db = raw_store_db(&store);
        let events = db.open_tree("events").unwrap();
        let (key, value) = events.iter().next().unwrap().unwrap();
        let mut bytes = value.to_vec();
        bytes[1] ^= 0x40;
        events.insert(key, bytes).unwrap();
        db.flush().unwrap();
    }
    let e = Engine::open(config(), &mut Progress::none()).unwrap();
    let stats = e.stats().unwrap();
    assert_eq!(stats.users, 2);
    assert_eq!(stats.damaged_users.len(), 1, "{stats:?}");
    let damaged = stats.damaged_users[0].clone();
    let other = if damaged == "ann" { "bob" } else { "ann" };
    let err = e
        .recommend(&damaged, 5, RecommendOptions::default())
        .unwrap_err();
    assert!(
        matches!(&err, EngineError::Store(l2rec::store::StoreError::UserDamaged { user, .. }) if *user == damaged),
        "{err}"
    );
    assert!(err.to_string().contains("forget"), "{err}");
    let served = |user: &str| e.recommend(user, 5, RecommendOptions::default()).unwrap();
    assert_eq!(served(other).len(), 5, "the other user is served");
    assert_eq!(served("newcomer").len(), 5, "the cold-start list too");
    e.forget_user(&damaged).unwrap();
    assert!(e.stats().unwrap().damaged_users.is_empty());
    assert_eq!(served(&damaged).len(), 5, "a forgotten user starts afresh");
}

#[test]
fn personalize_leaves_no_scratch_file_and_open_sweeps_a_dead_one() {
    let dir = tempfile::tempdir().unwrap();
    let config = config_in(dir.path());
    let store = dir.path().join("store");
    let scratch = |store: &std::path::Path| -> Vec<String> {
        std::fs::read_dir(store)
            .unwrap()
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|n| n.starts_with(".l2rec-upper-"))
            .collect()
    };
    {
        let e = Engine::open(config(), &mut Progress::none()).unwrap();
        for t in 0..6 {
            e.observe("u", &event(&(t + 1).to_string(), t)).unwrap();
        }
        let report = e
            .personalize("u", PersonalizeOptions::default(), &mut Progress::none())
            .unwrap();
        assert!(report.upper_passes > 0, "{report:?}");
        assert!(scratch(&store).is_empty(), "{:?}", scratch(&store));
    }
    // A process killed while loading the upper layers leaves its file.
    std::fs::write(store.join(".l2rec-upper-999999-0.gguf"), b"GGUF").unwrap();
    let _e = Engine::open(config(), &mut Progress::none()).unwrap();
    assert!(scratch(&store).is_empty(), "{:?}", scratch(&store));
}
