//! 8 threads, 10,000 operations mixing observe, recommend, explain,
//! personalize and forget on one engine: no panic, no broken invariant.

mod common;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use common::*;
use l2rec::engine::*;
use l2rec::store::Durability;
use l2rec_dev::random::SplitMix;

const THREADS: usize = 8;
const USERS: usize = 8;
const MAX_EVENTS: usize = 30;

fn ops() -> usize {
    std::env::var("L2REC_STRESS_OPS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(10_000)
}

#[test]
fn eight_threads_ten_thousand_operations() {
    let dir = tempfile::tempdir().unwrap();
    let bundle = write_small_bundle_with(&dir.path().join("bundle"), 2);
    // Short histories keep each backbone pass small: the test is about
    // concurrency, not throughput.
    let manifest = bundle.join("manifest.json");
    let text = std::fs::read_to_string(&manifest).unwrap();
    let mut value: serde_json::Value = serde_json::from_str(&text).unwrap();
    value["history"]["max_items"] = 3.into();
    std::fs::write(&manifest, value.to_string()).unwrap();

    let mut config = EngineConfig::new(model_info().path, bundle, dir.path().join("store"));
    config.threads = Some(1);
    config.master_key = Some([3u8; 32]);
    config.durability = Durability::Batched { flush_every_ms: 50 };
    config.max_events_per_user = MAX_EVENTS;
    let engine = Arc::new(Engine::open(config, &mut Progress::none()).unwrap());
    let done = Arc::new(AtomicUsize::new(0));
    let total = ops();

    let workers: Vec<_> = (0..THREADS)
        .map(|t| {
            let (engine, done) = (engine.clone(), done.clone());
            std::thread::spawn(move || {
                let mut rng = SplitMix(t as u64 + 1);
                let mut counts = [0usize; 5];
                while done.fetch_add(1, Ordering::Relaxed) < total {
                    let user = format!("user-{}", rng.next_u64() % USERS as u64);
                    let roll = rng.next_u64() % 1000;
                    let kind = match roll {
                        0..=960 => 0,
                        961..=980 => 1,
                        981..=985 => 2,
                        986..=998 => 3,
                        _ => 4,
                    };
                    counts[kind] += 1;
                    match kind {
                        0 => {
                            let item = (rng.next_u64() % SMALL_ITEMS as u64 + 1).to_string();
                            let event = EventInput {
                                item_id: item,
                                timestamp_ms: 0,
                                kind: "view".into(),
                                item_text: None,
                            };
                            engine.observe(&user, &event).unwrap();
                        }
                        1 => {
                            let recs = engine
                                .recommend(&user, 5, RecommendOptions::default())
                                .unwrap();
                            assert!(!recs.is_empty() && recs.len() <= 5);
                            assert!(recs.iter().all(|r| r.score.is_finite()));
                        }
                        2 => {
                            engine.explain(&user).unwrap();
                        }
                        3 => engine.forget_user(&user).unwrap(),
                        _ => {
                            let opts = PersonalizeOptions {
                                steps: 5,
                                ..Default::default()
                            };
                            let report = engine
                                .personalize(&user, opts, &mut Progress::none())
                                .unwrap();
                            assert!(
                                report.held_out_loss_before.is_finite()
                                    && report.train_loss_after.is_finite()
                            );
                        }
                    }
                }
                counts
            })
        })
        .collect();
    let mut counts = [0usize; 5];
    for w in workers {
        let c = w.join().expect("no worker panicked");
        counts.iter_mut().zip(c).for_each(|(a, b)| *a += b);
    }
    eprintln!("observe, recommend, explain, forget, personalize: {counts:?}");
    assert_eq!(counts.iter().sum::<usize>(), total);

    engine.flush().unwrap();
    for u in 0..USERS {
        let exported = engine.export_user(&format!("user-{u}")).unwrap();
        let events = exported.events.len();
        assert!(events <= MAX_EVENTS, "retention bound broken: {events}");
    }
    let stats = engine.stats().unwrap();
    assert!(stats.users <= USERS, "{stats:?}");
}
