//! The store on real sled files: round trips, retention, encryption at rest,
//! crypto-shredding on forget, key errors, tamper detection, schema versions,
//! compaction and concurrent appends.

use std::fs;
use std::path::Path;
use std::sync::{Arc, Mutex, MutexGuard};

use l2rec::store::{
    Durability, Event, Store, StoreConfig, StoreError, StoredItem, UserRecord, ViewStateKey,
    DATABASE_DIR, KEYRING_FILE, LEDGER_FILE, SCHEMA_VERSION,
};

const KEY: [u8; 32] = [0x5a; 32];

/// sled 0.34 shares one I/O thread pool between databases, and two stores
/// written hard at once in one process can deadlock in it (sled issue 1412;
/// seen here as a hang of two concurrent tests). An app has one store; these
/// tests take turns.
fn serial() -> MutexGuard<'static, ()> {
    static SERIAL: Mutex<()> = Mutex::new(());
    SERIAL.lock().unwrap_or_else(|p| p.into_inner())
}

fn config(dir: &Path, key: Option<[u8; 32]>) -> StoreConfig {
    StoreConfig {
        path: dir.to_path_buf(),
        master_key: key,
        durability: Durability::Immediate,
        max_events_per_user: 1000,
    }
}

fn event(item_id: &str, ts: i64) -> Event {
    Event {
        item_id: item_id.to_owned(),
        timestamp_ms: ts,
        kind: "click".to_owned(),
    }
}

fn view_key(history: &str) -> ViewStateKey {
    ViewStateKey {
        view: "behavioral".into(),
        history_hash: history.into(),
        bundle_id: "bundle-1".into(),
    }
}

/// phi values whose little-endian bytes are distinctive enough to grep for.
fn distinctive_phi(seed: f32) -> Vec<f32> {
    (0..16).map(|i| seed + i as f32 * 0.001_953_125).collect()
}

fn f32_bytes(values: &[f32]) -> Vec<u8> {
    values.iter().flat_map(|v| v.to_le_bytes()).collect()
}

/// Fills a user with a record, events (item ids `<user>-secret-item-<n>`) and a view state.
fn fill_user(store: &Store, user: &str, phi_seed: f32) -> Vec<String> {
    store
        .put_user(
            user,
            &UserRecord {
                phi: distinctive_phi(phi_seed),
                version: 3,
            },
        )
        .unwrap();
    let ids: Vec<String> = (0..20).map(|n| format!("{user}-secret-item-{n}")).collect();
    for (n, id) in ids.iter().enumerate() {
        store.append_event(user, &event(id, n as i64)).unwrap();
    }
    store
        .put_view_state(user, &view_key("h1"), &distinctive_phi(phi_seed + 1.0))
        .unwrap();
    ids
}

fn copy_dir(from: &Path, to: &Path) {
    fs::create_dir_all(to).unwrap();
    for entry in fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let target = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            copy_dir(&entry.path(), &target);
        } else {
            fs::copy(entry.path(), &target).unwrap();
        }
    }
}

/// The wrapped data keys (hex) in the keyring file of the store at `dir`.
fn wrapped_keys(dir: &Path) -> std::collections::BTreeSet<String> {
    let keyring: serde_json::Value =
        serde_json::from_slice(&fs::read(dir.join(KEYRING_FILE)).unwrap()).unwrap();
    let keys = keyring["keys"].as_object().unwrap();
    keys.values()
        .map(|k| k["wrapped"].as_str().unwrap().to_owned())
        .collect()
}

/// Every file under `dir` whose raw bytes contain `needle`.
fn files_containing(dir: &Path, needle: &[u8]) -> Vec<String> {
    let mut hits = Vec::new();
    for entry in fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            hits.extend(files_containing(&path, needle));
        } else if fs::read(&path)
            .unwrap()
            .windows(needle.len())
            .any(|w| w == needle)
        {
            hits.push(path.display().to_string());
        }
    }
    hits
}

#[test]
fn plaintext_round_trip() {
    let _one_store_at_a_time = serial();
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(config(dir.path(), None)).unwrap();
    assert!(!store.is_encrypted());

    let items = vec![
        StoredItem {
            id: "b".into(),
            text: "Item B".into(),
            row: 1,
        },
        StoredItem {
            id: "a".into(),
            text: "Item A".into(),
            row: 0,
        },
    ];
    store.upsert_items(&items).unwrap();
    store.put_text_state("a", "sha-1", &[1.0, 2.0]).unwrap();
    assert_eq!(
        store.text_state("a", "sha-1").unwrap(),
        Some(vec![1.0, 2.0])
    );
    assert_eq!(store.text_state("a", "sha-2").unwrap(), None);

    let ids = fill_user(&store, "alice", 0.5);
    assert_eq!(store.users().unwrap(), vec!["alice".to_string()]);
    drop(store);

    let store = Store::open(config(dir.path(), None)).unwrap();
    let listed = store.items().unwrap();
    assert_eq!(listed.iter().map(|i| i.row).collect::<Vec<_>>(), vec![0, 1]);
    assert_eq!(store.item("b").unwrap().unwrap().text, "Item B");
    assert_eq!(store.item("zzz").unwrap(), None);
    let record = store.user("alice").unwrap().unwrap();
    assert_eq!(
        record,
        UserRecord {
            phi: distinctive_phi(0.5),
            version: 3
        }
    );
    let events = store.events("alice").unwrap();
    assert_eq!(
        events.iter().map(|e| e.item_id.clone()).collect::<Vec<_>>(),
        ids
    );
    assert_eq!(
        store.view_state("alice", &view_key("h1")).unwrap(),
        Some(distinctive_phi(1.5))
    );
    assert_eq!(store.view_state("alice", &view_key("h2")).unwrap(), None);
    assert_eq!(store.user("nobody").unwrap(), None);
    assert!(store.events("nobody").unwrap().is_empty());

    let export = store.export_user("alice").unwrap();
    assert_eq!(export.events.len(), 20);
    assert_eq!(export.events[3].seq, 3);
    assert_eq!(export.record.as_ref().unwrap().version, 3);
    assert_eq!(export.view_states[0].history_hash, "h1");
    assert!(!export.encrypted_at_rest);
    // The typed export serializes to the documented JSON shape.
    let json = serde_json::to_value(&export).unwrap();
    assert_eq!(json["events"][3]["seq"], 3);
    assert_eq!(json["record"]["version"], 3);
}

#[test]
fn empty_user_ids_are_rejected() {
    let _one_store_at_a_time = serial();
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(config(dir.path(), None)).unwrap();
    let err = store.append_event("", &event("x", 0)).unwrap_err();
    assert!(matches!(err, StoreError::InvalidInput { .. }), "{err}");
}

#[test]
fn retention_keeps_the_newest_events() {
    let _one_store_at_a_time = serial();
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = config(dir.path(), Some(KEY));
    cfg.max_events_per_user = 5;
    let store = Store::open(cfg.clone()).unwrap();
    for n in 0..12 {
        assert_eq!(
            store
                .append_event("u", &event(&format!("i{n}"), n))
                .unwrap(),
            n as u64
        );
    }
    let kept: Vec<_> = store
        .events("u")
        .unwrap()
        .into_iter()
        .map(|e| e.timestamp_ms)
        .collect();
    assert_eq!(kept, vec![7, 8, 9, 10, 11]);
    drop(store);

    // A smaller bound takes effect on the next append.
    cfg.max_events_per_user = 2;
    let store = Store::open(cfg).unwrap();
    assert_eq!(store.append_event("u", &event("i12", 12)).unwrap(), 12);
    let kept: Vec<_> = store
        .events("u")
        .unwrap()
        .into_iter()
        .map(|e| e.timestamp_ms)
        .collect();
    assert_eq!(kept, vec![11, 12]);
}

#[test]
fn encrypted_round_trip_and_export() {
    let _one_store_at_a_time = serial();
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(config(dir.path(), Some(KEY))).unwrap();
    assert!(store.is_encrypted());
    let ids = fill_user(&store, "alice", 0.25);
    fill_user(&store, "bob", 0.75);
    drop(store);

    let store = Store::open(config(dir.path(), Some(KEY))).unwrap();
    assert_eq!(
        store.users().unwrap(),
        vec!["alice".to_string(), "bob".to_string()]
    );
    let events = store.events("alice").unwrap();
    assert_eq!(
        events.iter().map(|e| e.item_id.clone()).collect::<Vec<_>>(),
        ids
    );
    assert_eq!(
        store.user("bob").unwrap().unwrap().phi,
        distinctive_phi(0.75)
    );
    let export = store.export_user("alice").unwrap();
    assert!(export.encrypted_at_rest);
    assert_eq!(export.events[0].item_id, "alice-secret-item-0");

    // Nothing personal is in the files in the clear, not even user ids.
    for needle in [
        b"alice-secret-item-7".as_slice(),
        b"alice",
        &f32_bytes(&distinctive_phi(0.25)),
    ] {
        assert!(files_containing(dir.path(), needle).is_empty());
    }
}

#[test]
fn forget_user_shreds_an_encrypted_user() {
    let _one_store_at_a_time = serial();
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(config(dir.path(), Some(KEY))).unwrap();
    let alice_ids = fill_user(&store, "alice", 0.25);
    fill_user(&store, "bob", 0.75);
    let wrapped_before = wrapped_keys(dir.path());
    store.forget_user("alice").unwrap();
    let wrapped_after = wrapped_keys(dir.path());
    let shredded: Vec<_> = wrapped_before.difference(&wrapped_after).cloned().collect();
    assert_eq!((wrapped_before.len(), shredded.len()), (2, 1));
    assert_eq!(store.user("alice").unwrap(), None);
    assert!(store.events("alice").unwrap().is_empty());
    assert_eq!(store.users().unwrap(), vec!["bob".to_string()]);

    // A copy of the files taken after forget, opened with the master key.
    let copy = tempfile::tempdir().unwrap();
    copy_dir(dir.path(), copy.path());
    drop(store);
    let reopened = Store::open(config(copy.path(), Some(KEY))).unwrap();
    assert_eq!(reopened.users().unwrap(), vec!["bob".to_string()]);
    assert_eq!(reopened.user("alice").unwrap(), None);
    assert!(reopened.events("alice").unwrap().is_empty());
    assert_eq!(reopened.view_state("alice", &view_key("h1")).unwrap(), None);
    assert_eq!(reopened.events("bob").unwrap().len(), 20);
    let export = reopened.export_user("alice").unwrap();
    assert!(export.record.is_none() && export.events.is_empty());
    drop(reopened);

    // And the raw bytes: no plaintext of alice anywhere.
    let mut needles: Vec<Vec<u8>> = alice_ids.iter().map(|id| id.clone().into_bytes()).collect();
    needles.push(f32_bytes(&distinctive_phi(0.25)));
    needles.push(f32_bytes(&distinctive_phi(1.25)));
    // Nor alice's wrapped data key, in hex or raw.
    needles.push(shredded[0].clone().into_bytes());
    needles.push(hex::decode(&shredded[0]).unwrap());
    for needle in &needles {
        let hits = files_containing(copy.path(), needle);
        assert!(
            hits.is_empty(),
            "{:?} found in {hits:?}",
            String::from_utf8_lossy(needle)
        );
    }
}

#[test]
fn forget_user_in_a_plaintext_store_deletes_and_compaction_drops_the_bytes() {
    let _one_store_at_a_time = serial();
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(config(dir.path(), None)).unwrap();
    let alice_ids = fill_user(&store, "alice", 0.25);
    let bob_ids = fill_user(&store, "bob", 0.75);
    // Positive control: the grep does see plaintext.
    assert!(!files_containing(dir.path(), bob_ids[5].as_bytes()).is_empty());

    store.forget_user("alice").unwrap();
    assert_eq!(store.users().unwrap(), vec!["bob".to_string()]);
    assert_eq!(store.user("alice").unwrap(), None);
    // sled may keep the deleted bytes in its log until the segment is
    // rewritten; `compact` rewrites the database with live data only.
    let lingering = files_containing(dir.path(), alice_ids[5].as_bytes());
    eprintln!("plaintext forget: before compaction, alice's bytes linger in {lingering:?}");
    let report = store.compact().unwrap();
    assert!(report.bytes_after > 0);
    for id in &alice_ids {
        assert!(
            files_containing(dir.path(), id.as_bytes()).is_empty(),
            "{id} lingers"
        );
    }
    assert!(files_containing(dir.path(), &f32_bytes(&distinctive_phi(0.25))).is_empty());
    assert_eq!(store.events("bob").unwrap().len(), 20);
}

#[test]
fn key_errors_are_typed() {
    let _one_store_at_a_time = serial();
    let dir = tempfile::tempdir().unwrap();
    drop(Store::open(config(dir.path(), Some(KEY))).unwrap());
    let wrong = Store::open(config(dir.path(), Some([1; 32])))
        .err()
        .unwrap();
    assert!(matches!(wrong, StoreError::WrongKey { .. }), "{wrong}");
    let missing = Store::open(config(dir.path(), None)).err().unwrap();
    assert!(
        matches!(missing, StoreError::KeyRequired { .. }),
        "{missing}"
    );

    let plain = tempfile::tempdir().unwrap();
    drop(Store::open(config(plain.path(), None)).unwrap());
    let unexpected = Store::open(config(plain.path(), Some(KEY))).err().unwrap();
    assert!(
        matches!(unexpected, StoreError::NotEncrypted { .. }),
        "{unexpected}"
    );

    fs::remove_file(dir.path().join(KEYRING_FILE)).unwrap();
    let no_keyring = Store::open(config(dir.path(), Some(KEY))).err().unwrap();
    assert!(
        matches!(no_keyring, StoreError::KeyringMissing { .. }),
        "{no_keyring}"
    );
}

#[test]
fn a_second_open_is_refused_while_the_first_holds_the_store() {
    let _one_store_at_a_time = serial();
    let dir = tempfile::tempdir().unwrap();
    let _store = Store::open(config(dir.path(), None)).unwrap();
    let err = Store::open(config(dir.path(), None)).err().unwrap();
    assert!(matches!(err, StoreError::Locked { .. }), "{err}");
}

/// Opens the sled database of the closed store at `dir` directly. Retries
/// while the store's background threads still hold the lock for a moment.
fn raw_db(dir: &Path) -> sled::Db {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(2);
    loop {
        match sled::open(dir.join(DATABASE_DIR)) {
            Ok(db) => return db,
            Err(_) if std::time::Instant::now() < deadline => {
                std::thread::sleep(std::time::Duration::from_millis(10))
            }
            Err(e) => panic!("opening the raw database: {e}"),
        }
    }
}

/// Rewrites raw sled values of the closed store at `dir`.
fn with_raw_tree(dir: &Path, tree: &str, edit: impl FnOnce(&sled::Tree)) {
    let db = raw_db(dir);
    edit(&db.open_tree(tree).unwrap());
    db.flush().unwrap();
}

/// The users among `users` whose events fail with `UserDamaged` naming them.
fn users_with_damaged_events(store: &Store, users: &[&str]) -> Vec<String> {
    let mut damaged = Vec::new();
    for user in users {
        match store.events(user) {
            Ok(_) => {}
            Err(StoreError::UserDamaged { user: named, .. }) => {
                assert_eq!(named, *user, "the error names the user");
                damaged.push(named);
            }
            Err(other) => panic!("expected UserDamaged, got {other}"),
        }
    }
    damaged
}

/// Flips one bit of the last byte of the first value of `tree`.
fn flip_first_value(dir: &Path, tree: &str) {
    with_raw_tree(dir, tree, |records| {
        let (key, value) = records.iter().next().unwrap().unwrap();
        let mut bytes = value.to_vec();
        let last = bytes.len() - 1;
        bytes[last] ^= 0x01;
        records.insert(key, bytes).unwrap();
    });
}

/// Tampering and swapped records, in both modes: open reports the damaged
/// user by name, only that user's reads fail (naming them), the others are
/// served, forget clears it, and nothing panics.
#[test]
fn damaged_or_swapped_records_fail_for_their_user_alone() {
    let _one_store_at_a_time = serial();
    for key in [Some(KEY), None] {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(config(dir.path(), key)).unwrap();
        fill_user(&store, "alice", 0.25);
        fill_user(&store, "bob", 0.75);
        fill_user(&store, "carol", 1.25);
        drop(store);

        flip_first_value(dir.path(), "events");
        let store = Store::open(config(dir.path(), key)).unwrap();
        let report = store.integrity();
        assert_eq!(report.damaged_users.len(), 1, "{key:?}: {report:?}");
        assert_eq!(report.damaged_users[0].damaged_records, 1);
        let named = report.damaged_users[0].user.clone().unwrap();
        assert!(report.summary().contains(&named), "{}", report.summary());
        let damaged = users_with_damaged_events(&store, &["alice", "bob", "carol"]);
        assert_eq!(damaged, vec![named.clone()]);
        let err = store.events(&named).unwrap_err().to_string();
        assert!(err.contains("forget_user") && err.contains(&named), "{err}");
        assert_eq!(store.users().unwrap().len(), 3, "listing still works");
        store.forget_user(&named).unwrap();
        assert!(store.integrity().is_clean());
        assert!(users_with_damaged_events(&store, &["alice", "bob", "carol"]).is_empty());
        drop(store);

        // One user's record copied over another's: refused, not served as theirs.
        with_raw_tree(dir.path(), "user_records", |records| {
            let all: Vec<_> = records.iter().map(|r| r.unwrap()).collect();
            assert_eq!(all.len(), 2);
            records.insert(all[1].0.clone(), all[0].1.clone()).unwrap();
        });
        let store = Store::open(config(dir.path(), key)).unwrap();
        assert_eq!(store.integrity().damaged_users.len(), 1, "{key:?}");
        let remaining: Vec<String> = store.users().unwrap();
        let errors: Vec<String> = remaining
            .iter()
            .filter_map(|u| store.user(u).err())
            .map(|e| e.to_string())
            .collect();
        assert_eq!(errors.len(), 1, "{key:?}: {errors:?}");
        drop(store);

        // Events moved between users' key ranges: refused as well.
        with_raw_tree(dir.path(), "events", |events| {
            let all: Vec<_> = events.iter().map(|r| r.unwrap()).collect();
            let (first, last) = (&all[0], &all[all.len() - 1]);
            assert_ne!(first.0[..32], last.0[..32], "two users' events");
            events.insert(first.0.clone(), last.1.clone()).unwrap();
        });
        let store = Store::open(config(dir.path(), key)).unwrap();
        let users: Vec<String> = store.users().unwrap();
        let refs: Vec<&str> = users.iter().map(String::as_str).collect();
        assert_eq!(users_with_damaged_events(&store, &refs).len(), 1, "{key:?}");
    }
}

/// Cached states that fail to verify are dropped at open and recomputed;
/// a damaged item reads as absent until it is upserted again.
#[test]
fn damaged_caches_are_dropped_and_damaged_items_reported() {
    let _one_store_at_a_time = serial();
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(config(dir.path(), Some(KEY))).unwrap();
    let item = |id: &str, row| StoredItem {
        id: id.into(),
        text: format!("{id} (1999)"),
        row,
    };
    store.upsert_items(&[item("m1", 0), item("m2", 1)]).unwrap();
    store.put_text_state("m1", "sha", &[1.0, 2.0]).unwrap();
    fill_user(&store, "alice", 0.25);
    drop(store);
    flip_first_value(dir.path(), "items");
    flip_first_value(dir.path(), "text_states");
    flip_first_value(dir.path(), "view_states");

    let store = Store::open(config(dir.path(), Some(KEY))).unwrap();
    let report = store.integrity();
    assert_eq!(report.damaged_items, vec!["m1".to_owned()]);
    assert_eq!(report.cached_states_dropped, 2);
    assert!(
        report.damaged_users.is_empty(),
        "a cache is not the user's data"
    );
    assert!(store.item("m1").unwrap().is_none());
    assert_eq!(store.items().unwrap().len(), 1);
    assert!(store.text_state("m1", "sha").unwrap().is_none());
    assert!(store
        .view_state("alice", &view_key("h1"))
        .unwrap()
        .is_none());
    assert_eq!(store.events("alice").unwrap().len(), 20);
    store.upsert_items(&[item("m1", 0)]).unwrap();
    assert!(store.integrity().is_clean());
    assert_eq!(store.items().unwrap().len(), 2);
}

/// A store whose database disappeared is not silently replaced by an empty one.
#[test]
fn a_lost_database_is_refused_not_recreated() {
    let _one_store_at_a_time = serial();
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(config(dir.path(), None)).unwrap();
    fill_user(&store, "alice", 0.25);
    drop(store);
    fs::remove_dir_all(dir.path().join(DATABASE_DIR)).unwrap();
    let err = Store::open(config(dir.path(), None)).err().unwrap();
    assert!(matches!(err, StoreError::Corrupt { .. }), "{err}");
    assert!(err.to_string().contains("missing or empty"), "{err}");
    // A directory never used as a store opens as a new one.
    let fresh = tempfile::tempdir().unwrap();
    Store::open(config(fresh.path(), None)).unwrap();
}

#[test]
fn a_newer_schema_is_refused_and_an_older_one_migrated() {
    let _one_store_at_a_time = serial();
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(config(dir.path(), None)).unwrap();
    fill_user(&store, "alice", 0.25);
    drop(store);

    with_raw_tree(dir.path(), "meta", |meta| {
        meta.insert("schema_version", &(SCHEMA_VERSION + 1).to_be_bytes())
            .unwrap();
    });
    let err = Store::open(config(dir.path(), None)).err().unwrap();
    match &err {
        StoreError::SchemaTooNew {
            found, supported, ..
        } => {
            assert_eq!((*found, *supported), (SCHEMA_VERSION + 1, SCHEMA_VERSION));
        }
        other => panic!("expected SchemaTooNew, got {other}"),
    }
    assert!(err.to_string().contains("newer than version"), "{err}");

    // Version 0: the pre-release layout without a mode record.
    with_raw_tree(dir.path(), "meta", |meta| {
        meta.insert("schema_version", &0u32.to_be_bytes()).unwrap();
        meta.remove("mode").unwrap();
    });
    let store = Store::open(config(dir.path(), None)).unwrap();
    assert!(!store.is_encrypted());
    assert_eq!(store.events("alice").unwrap().len(), 20);
    drop(store);
    with_raw_tree(dir.path(), "meta", |meta| {
        let version = meta.get("schema_version").unwrap().unwrap();
        assert_eq!(version.as_ref(), SCHEMA_VERSION.to_be_bytes());
        assert_eq!(meta.get("mode").unwrap().unwrap().as_ref(), b"plaintext");
    });
}

/// Rewrites the closed plaintext store at `dir` as schema 1 wrote it: per-user
/// values framed `0 || postcard`, catalog values bare postcard, no checksum key.
fn downgrade_to_schema_1(dir: &Path) {
    let db = raw_db(dir);
    for tree in ["users", "user_records", "events", "view_states", "items"] {
        let tree_handle = db.open_tree(tree).unwrap();
        for entry in tree_handle.iter() {
            let (key, value) = entry.unwrap();
            assert_eq!(value[0], 2, "schema 2 frames checked values");
            let body = &value[1..value.len() - 16];
            let old = if tree == "items" {
                body.to_vec()
            } else {
                [&[0u8][..], body].concat()
            };
            tree_handle.insert(key, old).unwrap();
        }
    }
    let meta = db.open_tree("meta").unwrap();
    meta.remove("check_key").unwrap();
    meta.insert("schema_version", &1u32.to_be_bytes()).unwrap();
    db.flush().unwrap();
}

#[test]
fn a_schema_1_plaintext_store_gains_checksums() {
    let _one_store_at_a_time = serial();
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(config(dir.path(), None)).unwrap();
    let phi_events = fill_user(&store, "alice", 0.25);
    store
        .upsert_items(&[StoredItem {
            id: "m1".into(),
            text: "Heat (1995)".into(),
            row: 0,
        }])
        .unwrap();
    drop(store);
    downgrade_to_schema_1(dir.path());

    let store = Store::open(config(dir.path(), None)).unwrap();
    assert!(store.integrity().is_clean(), "{:?}", store.integrity());
    let events: Vec<String> = store
        .events("alice")
        .unwrap()
        .into_iter()
        .map(|e| e.item_id)
        .collect();
    assert_eq!(events, phi_events);
    assert_eq!(
        store.user("alice").unwrap().unwrap().phi,
        distinctive_phi(0.25)
    );
    assert_eq!(store.item("m1").unwrap().unwrap().text, "Heat (1995)");
    drop(store);
    // Migrated values now verify: a flipped byte is caught.
    flip_first_value(dir.path(), "events");
    let store = Store::open(config(dir.path(), None)).unwrap();
    assert_eq!(store.integrity().damaged_users.len(), 1);
}

#[test]
fn compaction_keeps_live_data_and_drops_the_dead() {
    let _one_store_at_a_time = serial();
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = config(dir.path(), Some(KEY));
    // Immediate: under long bursts of Batched writes sled 0.34.7 can deadlock
    // (docs/ARCHITECTURE.md, "Known issues"); this test is about compaction.
    cfg.durability = Durability::Immediate;
    cfg.max_events_per_user = 50;
    let store = Store::open(cfg).unwrap();
    let state = vec![0.5f32; 640];
    // The ml-100k catalog's text-state cache: 1682 items x 640 floats.
    for item in 0..1682 {
        store
            .put_text_state(&format!("{item}"), "backbone-sha", &state)
            .unwrap();
    }
    // Churn: the engine rewrites a view state on every event; a second user
    // with as much data is then forgotten, leaving dead records in the log.
    for round in 0..3000 {
        for user in ["u", "gone"] {
            store
                .append_event(user, &event(&format!("i{round}"), round))
                .unwrap();
            store.put_view_state(user, &view_key("h"), &state).unwrap();
        }
    }
    store.forget_user("gone").unwrap();
    store.flush().unwrap();
    let before = store.size_on_disk().unwrap();
    let live = store.live_bytes().unwrap();
    let report = store.compact().unwrap();
    let after = store.size_on_disk().unwrap();
    // Measured here: live 4.3 MB, on disk 10.0 MB before and 11.0 MB after.
    // sled's own GC keeps an Immediate-mode log near twice the live data, and
    // a fresh database preallocates segments, so at this scale compaction is
    // for dropping the bytes of the forgotten (tested with the plaintext
    // store below and in the engine), not for space.
    eprintln!("compaction: live {live} B, on disk {before} B -> {after} B ({report:?})");
    assert!(after < 3 * live + (16 << 20), "{after} B for {live} B live");
    assert_eq!(store.events("u").unwrap().len(), 50);
    assert!(store.events("gone").unwrap().is_empty());
    assert_eq!(store.view_state("u", &view_key("h")).unwrap(), Some(state));
    assert_eq!(store.live_bytes().unwrap(), live);
}

#[test]
fn concurrent_appends_get_unique_contiguous_seqs() {
    let _one_store_at_a_time = serial();
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(Store::open(config(dir.path(), Some(KEY))).unwrap());
    let threads: Vec<_> = (0..8)
        .map(|t| {
            let store = Arc::clone(&store);
            std::thread::spawn(move || {
                let mut seqs = Vec::new();
                for n in 0..25 {
                    seqs.push(
                        store
                            .append_event("shared", &event(&format!("t{t}-{n}"), n))
                            .unwrap(),
                    );
                    store
                        .append_event(&format!("own-{t}"), &event("x", n))
                        .unwrap();
                    if n % 10 == 0 {
                        store.forget_user(&format!("own-{t}")).unwrap();
                    }
                }
                seqs
            })
        })
        .collect();
    let mut seqs: Vec<u64> = threads
        .into_iter()
        .flat_map(|t| t.join().unwrap())
        .collect();
    seqs.sort_unstable();
    assert_eq!(seqs, (0..200).collect::<Vec<_>>());
    assert_eq!(store.events("shared").unwrap().len(), 200);
    assert_eq!(store.users().unwrap().len(), 9);
}

/// Not a benchmark (the engine bench reports observe latency), but a record of
/// what each durability mode costs on this machine, printed with --nocapture.
#[test]
fn append_latency_per_durability_mode() {
    let _one_store_at_a_time = serial();
    for durability in [
        Durability::Immediate,
        Durability::Batched {
            flush_every_ms: 100,
        },
    ] {
        let dir = tempfile::tempdir().unwrap();
        let mut cfg = config(dir.path(), Some(KEY));
        cfg.durability = durability.clone();
        let store = Store::open(cfg).unwrap();
        let mut micros: Vec<u128> = (0..300)
            .map(|n| {
                let started = std::time::Instant::now();
                store.append_event("u", &event("item", n)).unwrap();
                started.elapsed().as_micros()
            })
            .collect();
        micros.sort_unstable();
        let (p50, p95) = (micros[150], micros[285]);
        eprintln!("append_event {durability:?}: p50 {p50} us, p95 {p95} us");
        assert_eq!(store.events("u").unwrap().len(), 300);
    }
}

#[test]
fn open_finishes_a_forget_cut_short_and_refuses_a_lost_key() {
    let _one_store_at_a_time = serial();
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(config(dir.path(), Some(KEY))).unwrap();
    fill_user(&store, "alice", 0.25);
    fill_user(&store, "bob", 0.75);
    drop(store);
    let count = |tree: &str| raw_db(dir.path()).open_tree(tree).unwrap().len();
    assert_eq!(count("events"), 40);

    // One key gone from the keyring, every record still in sled, and no
    // forget intent: damage (a replaced or edited keyring), not a forget.
    let path = dir.path().join(KEYRING_FILE);
    let intact = fs::read(&path).unwrap();
    let mut keyring: serde_json::Value = serde_json::from_slice(&intact).unwrap();
    let keys = keyring["keys"].as_object_mut().unwrap();
    let first = keys.keys().next().unwrap().clone();
    keys.remove(&first);
    fs::write(&path, serde_json::to_vec(&keyring).unwrap()).unwrap();
    let refused = Store::open(config(dir.path(), Some(KEY)));
    assert!(
        matches!(&refused, Err(StoreError::Corrupt { what, .. }) if what.contains("1 user(s)")),
        "{:?}",
        refused.err()
    );
    assert_eq!(count("events"), 40, "nothing deleted");
    // The right keyring back: both users are back.
    fs::write(&path, &intact).unwrap();
    let store = Store::open(config(dir.path(), Some(KEY))).unwrap();
    assert_eq!(store.users().unwrap().len(), 2);
    drop(store);

    // A forget killed right after shredding: its intent is recorded, the key
    // is gone, the records are still there. Open finishes the forget.
    fs::write(&path, serde_json::to_vec(&keyring).unwrap()).unwrap();
    {
        let db = raw_db(dir.path());
        let tag = hex::decode(&first).unwrap();
        let meta = db.open_tree("meta").unwrap();
        meta.insert([&b"forgetting/"[..], &tag].concat(), &[][..])
            .unwrap();
        db.flush().unwrap();
    }
    let store = Store::open(config(dir.path(), Some(KEY))).unwrap();
    assert_eq!(store.users().unwrap().len(), 1);
    drop(store);
    for tree in ["users", "user_records", "events", "view_states"] {
        let expected = if tree == "events" { 20 } else { 1 };
        assert_eq!(count(tree), expected, "{tree}");
    }
    let intents = raw_db(dir.path())
        .open_tree("meta")
        .unwrap()
        .scan_prefix(b"forgetting/")
        .count();
    assert_eq!(intents, 0, "the intent is cleared");
}

#[test]
fn open_recovers_an_interrupted_compaction() {
    let _one_store_at_a_time = serial();
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(config(dir.path(), None)).unwrap();
    fill_user(&store, "alice", 0.25);
    drop(store);
    // Killed between the two renames of the swap: only `sled.old` exists,
    // beside a half-built copy.
    fs::rename(dir.path().join(DATABASE_DIR), dir.path().join("sled.old")).unwrap();
    fs::create_dir(dir.path().join("sled.compact")).unwrap();
    let store = Store::open(config(dir.path(), None)).unwrap();
    assert_eq!(store.events("alice").unwrap().len(), 20);
    assert!(!dir.path().join("sled.old").exists());
    assert!(!dir.path().join("sled.compact").exists());
}

/// `n` catalog items `m0..`.
fn items(n: u32) -> Vec<StoredItem> {
    (0..n)
        .map(|row| StoredItem {
            id: format!("m{row}"),
            text: format!("Movie {row} (1999)"),
            row,
        })
        .collect()
}

/// What a reopened store serves of one user: events and record, or the
/// error that refused them.
fn served(store: &Store, user: &str) -> Result<(Vec<Event>, Option<UserRecord>), StoreError> {
    Ok((store.events(user)?, store.user(user)?))
}

/// sled drops the tail of its log silently when a byte in it is damaged or
/// the file is cut short. The ledger beside the database catches that: over
/// a sweep of truncations and flipped bytes, every user whose data changed
/// is refused or reported (none lost in silence), the ledger is what
/// reports some of them, a lost user stays reported until forgotten, and a
/// forget is never mistaken for a loss.
#[test]
fn records_sled_drops_from_a_damaged_log_are_reported_by_the_ledger() {
    let _one_store_at_a_time = serial();
    let users = ["ann", "ben", "cid", "dee"];
    for key in [None, Some(KEY)] {
        let original = tempfile::tempdir().unwrap();
        let mut before = Vec::new();
        {
            let store = Store::open(config(original.path(), key)).unwrap();
            store.upsert_items(&items(40)).unwrap();
            for (n, user) in users.iter().enumerate() {
                fill_user(&store, user, n as f32);
            }
            for user in users {
                before.push(served(&store, user).unwrap());
            }
        }
        let mut by_ledger = 0;
        let cases: Vec<(&str, f64)> = [0.3, 0.5, 0.7, 0.8, 0.9, 0.95, 0.99]
            .iter()
            .map(|f| ("truncate", *f))
            .chain(
                [0.2, 0.4, 0.6, 0.75, 0.85, 0.95]
                    .iter()
                    .map(|f| ("flip", *f)),
            )
            .collect();
        for (damage, fraction) in cases {
            let dir = tempfile::tempdir().unwrap();
            copy_dir(original.path(), dir.path());
            let log = dir.path().join(DATABASE_DIR).join("db");
            let mut bytes = fs::read(&log).unwrap();
            let at = (bytes.len() as f64 * fraction) as usize;
            match damage {
                "truncate" => bytes.truncate(at),
                _ => bytes[at] ^= 0x5a,
            }
            fs::write(&log, bytes).unwrap();
            let mode = if key.is_some() {
                "encrypted"
            } else {
                "plaintext"
            };
            let case = format!("{mode}: {damage} at {fraction}");
            let Ok(store) = Store::open(config(dir.path(), key)) else {
                continue; // refused at open, typed: detected
            };
            let report = store.integrity();
            let reported: Vec<String> = report
                .damaged_users
                .iter()
                .filter_map(|u| u.user.clone())
                .collect();
            for (user, held) in users.iter().zip(&before) {
                match served(&store, user) {
                    Err(StoreError::UserDamaged { user: named, .. }) => {
                        assert_eq!(named, *user, "{case}");
                        assert!(reported.contains(&named), "{case}: {report:?}");
                    }
                    Err(other) => panic!("{case}: {user}: untyped refusal {other}"),
                    Ok(now) => assert!(
                        now == *held || reported.contains(&user.to_string()),
                        "{case}: {user} lost data in silence: {report:?}"
                    ),
                }
            }
            let lost: Vec<String> = report
                .damaged_users
                .iter()
                .filter(|u| u.lost_records > 0)
                .filter_map(|u| u.user.clone())
                .collect();
            if lost.is_empty() {
                continue;
            }
            by_ledger += 1;
            assert!(report.summary().contains("lost"), "{}", report.summary());
            // Reported again at the next open, until forgotten; then clean.
            drop(store);
            let store = Store::open(config(dir.path(), key)).unwrap();
            let again = store.integrity();
            for user in &lost {
                assert!(
                    again
                        .damaged_users
                        .iter()
                        .any(|u| u.user.as_ref() == Some(user)),
                    "{case}: {user} no longer reported: {again:?}"
                );
                store.forget_user(user).unwrap();
            }
            drop(store);
            let store = Store::open(config(dir.path(), key)).unwrap();
            assert!(
                store
                    .integrity()
                    .damaged_users
                    .iter()
                    .all(|u| u.lost_records == 0),
                "{case}: {:?}",
                store.integrity()
            );
        }
        assert!(by_ledger > 0, "no case lost records the ledger saw");

        // A forget and a clean reopen are no loss; a missing ledger is said.
        let store = Store::open(config(original.path(), key)).unwrap();
        store.forget_user("ann").unwrap();
        drop(store);
        let store = Store::open(config(original.path(), key)).unwrap();
        assert!(store.integrity().is_clean(), "{:?}", store.integrity());
        assert!(store.integrity().ledger_problem.is_none());
        drop(store);
        fs::remove_file(original.path().join(LEDGER_FILE)).unwrap();
        let store = Store::open(config(original.path(), key)).unwrap();
        let problem = store.integrity().ledger_problem.unwrap();
        assert!(problem.contains("missing"), "{problem}");
        drop(store);
        let store = Store::open(config(original.path(), key)).unwrap();
        assert!(
            store.integrity().ledger_problem.is_none(),
            "rewritten at open"
        );
    }
}
