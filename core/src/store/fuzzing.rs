//! Entry points for `cargo fuzz` (`fuzz/README.md`): the store's decoders on
//! arbitrary bytes. Compiled under the fuzzer's `cfg` and for the unit tests
//! that keep them building and write the corpus's seeds. The keys are fixed,
//! so a committed seed's checksum and seal stay valid from run to run.

use std::sync::{Arc, OnceLock};

use super::checksum::{checked_frame, RecordCheck};
use super::crypto::{plain_user_tag, DataKey, MasterKeys};
use super::keyring::Keyring;
use super::layout::{
    event_key, text_state_key, view_state_key, UserEntry, ViewStateEntry, EVENTS, ITEMS,
    TEXT_STATES, USERS, USER_RECORDS, VIEW_STATES,
};
use super::{decode_frame, sealed_frame, Event, StoredItem, UserKey, UserRecord, ViewStateKey};

const TREES: [&str; 6] = [USERS, USER_RECORDS, EVENTS, VIEW_STATES, ITEMS, TEXT_STATES];
/// Selector bits: the low nibble picks the tree.
const SEALED: u8 = 0x10;
const REFRAME: u8 = 0x20;

fn keys() -> &'static (RecordCheck, Arc<DataKey>) {
    static KEYS: OnceLock<(RecordCheck, Arc<DataKey>)> = OnceLock::new();
    KEYS.get_or_init(|| {
        let check = RecordCheck::from_bytes(&[0x5a; 32]).expect("32 bytes make a key");
        (check, Arc::new(DataKey::fixed([0x11; 16], [0x22; 32])))
    })
}

/// One record value through the store's decoder. Input: a selector byte
/// (tree, plain or sealed, raw or re-framed), a key length byte, the sled
/// key, the value. "Re-framed" wraps the value in a valid frame first, so
/// the fuzzer reaches the postcard decoding behind the checksum.
pub fn decode_record(data: &[u8]) {
    let [selector, key_len, rest @ ..] = data else {
        return;
    };
    let key_len = usize::from(*key_len).min(rest.len());
    let (record_key, value) = rest.split_at(key_len);
    let data_key = &keys().1;
    let sealed = selector & SEALED != 0;
    let key = if sealed {
        UserKey::Sealed(Arc::clone(data_key))
    } else {
        UserKey::Plain
    };
    let tree = TREES[usize::from(selector & 0x0f) % TREES.len()];
    let framed;
    let value = if selector & REFRAME != 0 {
        framed = frame(sealed, tree, record_key, value);
        &framed[..]
    } else {
        value
    };
    let _ = decode(tree, &key, record_key, value);
}

/// `value` decoded as a record of `tree`, the way the store reads it.
fn decode(tree: &str, key: &UserKey, record_key: &[u8], value: &[u8]) -> Result<(), String> {
    let check = &keys().0;
    match tree {
        USERS => decode_frame::<UserEntry>(check, key, tree, record_key, value).map(drop),
        USER_RECORDS => decode_frame::<UserRecord>(check, key, tree, record_key, value).map(drop),
        EVENTS => decode_frame::<Event>(check, key, tree, record_key, value).map(drop),
        VIEW_STATES => {
            decode_frame::<ViewStateEntry>(check, key, tree, record_key, value).map(drop)
        }
        ITEMS => decode_frame::<StoredItem>(check, key, tree, record_key, value).map(drop),
        _ => decode_frame::<Vec<f32>>(check, key, tree, record_key, value).map(drop),
    }
}

fn frame(sealed: bool, tree: &str, record_key: &[u8], body: &[u8]) -> Vec<u8> {
    let (check, data_key) = keys();
    if sealed {
        sealed_frame(data_key, tree, record_key, body)
    } else {
        checked_frame(check, tree, record_key, body)
    }
}

/// The keyring file's parser on arbitrary bytes.
pub fn parse_keyring(data: &[u8]) {
    let _ = Keyring::parse(std::path::Path::new("/fuzz"), data);
}

/// Valid inputs for both targets, made by the real encoders: one record of
/// every tree, plain and sealed, as a whole frame and as a body to re-frame;
/// and a keyring file holding one user (written in `scratch`).
pub fn seeds(scratch: &std::path::Path) -> Vec<(&'static str, Vec<u8>)> {
    let mut seeds = Vec::new();
    for (index, tree) in TREES.iter().enumerate() {
        let (record_key, body) = record(tree);
        for sealed in [false, true] {
            let selector = index as u8 | if sealed { SEALED } else { 0 };
            let key_len = u8::try_from(record_key.len()).expect("record keys are short");
            let head = |selector: u8| [selector, key_len].into_iter().chain(record_key.clone());
            let whole = frame(sealed, tree, &record_key, &body);
            seeds.push(("record", head(selector).chain(whole).collect()));
            seeds.push((
                "record",
                head(selector | REFRAME).chain(body.clone()).collect(),
            ));
        }
    }
    let mut keyring = Keyring::create(scratch).expect("a keyring in the scratch dir");
    let master = MasterKeys::derive(&[0x33; 32]);
    keyring
        .get_or_create(&master, &master.user_tag("u1"))
        .expect("a key for u1");
    let file = std::fs::read(Keyring::path(scratch)).expect("the keyring was written");
    seeds.push(("keyring", file));
    seeds
}

/// A sled key and a postcard body of `tree`, as the store writes them.
fn record(tree: &str) -> (Vec<u8>, Vec<u8>) {
    let tag = plain_user_tag("u1");
    let state_key = ViewStateKey {
        view: "semantic".into(),
        history_hash: "ab".repeat(32),
        bundle_id: "cd".repeat(32),
    };
    match tree {
        USERS => (tag.to_vec(), encode(&UserEntry { id: "u1".into() })),
        USER_RECORDS => (
            tag.to_vec(),
            encode(&UserRecord {
                phi: vec![0.5, -0.25],
                version: 3,
            }),
        ),
        EVENTS => (
            event_key(&tag, 7),
            encode(&Event {
                item_id: "m42".into(),
                timestamp_ms: 1_700_000_000_000,
                kind: "view".into(),
            }),
        ),
        VIEW_STATES => (
            view_state_key(&tag, &state_key),
            encode(&ViewStateEntry {
                key: state_key.clone(),
                state: vec![1.0, 2.0, 3.0],
            }),
        ),
        ITEMS => (
            b"m42".to_vec(),
            encode(&StoredItem {
                id: "m42".into(),
                text: "Heat (1995)".into(),
                row: 41,
            }),
        ),
        _ => (
            text_state_key(&"ef".repeat(32), "m42"),
            encode(&vec![0.125f32; 4]),
        ),
    }
}

/// A record's bytes, as the store's encoder writes them.
fn encode<T: serde::Serialize>(value: &T) -> Vec<u8> {
    postcard::to_allocvec(value).expect("a record serializes")
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every seed decodes (so the fuzzer starts past the checks), garbage is
    /// refused without a panic, and with `L2REC_FUZZ_SEEDS=DIR` the seeds
    /// are written to `DIR/<target>/` (scripts/fuzz).
    #[test]
    fn the_store_fuzz_seeds_decode_and_garbage_is_refused() {
        let scratch = tempfile::tempdir().unwrap();
        let seeds = seeds(scratch.path());
        let data_key = &keys().1;
        for (target, input) in &seeds {
            if *target == "keyring" {
                assert!(Keyring::parse(scratch.path(), input).is_ok());
                continue;
            }
            let (selector, key_len) = (input[0], usize::from(input[1]));
            let (record_key, value) = input[2..].split_at(key_len);
            let tree = TREES[usize::from(selector & 0x0f)];
            let key = match selector & SEALED {
                0 => UserKey::Plain,
                _ => UserKey::Sealed(Arc::clone(data_key)),
            };
            let framed = match selector & REFRAME {
                0 => value.to_vec(),
                _ => frame(selector & SEALED != 0, tree, record_key, value),
            };
            let decoded = decode(tree, &key, record_key, &framed);
            assert!(decoded.is_ok(), "seed {selector:#x} of {tree}: {decoded:?}");
        }
        let mut garbage: Vec<Vec<u8>> = vec![vec![], vec![0], vec![0x30, 4, 1, 2, 3, 4, 5]];
        for selector in 0u8..0x40 {
            garbage.push([&[selector, 3][..], b"tag", &[2, 0xff, 0xff, 0xff, 0x0f]].concat());
            garbage.push([&[selector, 0][..], &[5, b'a', b'b']].concat());
        }
        for input in &garbage {
            decode_record(input);
            parse_keyring(input);
        }
        parse_keyring(br#"{"format": "l2rec-store-keyring", "version": 1, "keys": {"zz": {"id": "", "wrapped": ""}}}"#);
        crate::fuzz_seeds::write_if_asked("store", &seeds);
    }
}
