//! How the store lays data out in sled: tree names, key formats, value framing.
//!
//! Per-user trees are keyed by a 32-byte user tag (see `crypto`), never by the
//! user id itself: fixed-length prefixes make per-user prefix scans exact, and in
//! an encrypted store the tag is keyed (HMAC) so the files do not name users.
//!
//! | tree           | key                                   | value                            |
//! | -------------- | ------------------------------------- | -------------------------------- |
//! | `meta`         | `schema_version`, `mode`, `key_check`, `check_key` | u32 BE / text / sealed check / 32 bytes |
//! | `items`        | item id                               | checked `StoredItem`             |
//! | `text_states`  | postcard `(backbone_sha256, item_id)` | checked `Vec<f32>`               |
//! | `users`        | tag                                   | framed `UserEntry` (the user id) |
//! | `user_records` | tag                                   | framed `UserRecord`              |
//! | `events`       | tag, seq (u64 BE)                     | framed `Event`                   |
//! | `view_states`  | tag, sha256(postcard `ViewStateKey`)  | framed `ViewStateEntry`          |
//!
//! "Framed" values start with one byte: [`CHECKED`] then the postcard bytes
//! and their keyed checksum (see `checksum`), or [`SEALED`] then the
//! XChaCha20-Poly1305 blob of the postcard bytes. Per-user values are sealed
//! in an encrypted store and checked in a plaintext one; catalog values are
//! checked in both. Either way a value is bound to its tree and sled key, so
//! a damaged, moved or swapped record fails to open. ([`PLAIN`], postcard
//! with nothing to verify it, is what schema 1 wrote; migration rewrites it.)

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::ViewStateKey;

/// A user's opaque key prefix in the per-user trees.
pub(crate) type UserTag = [u8; TAG_LEN];
pub(crate) const TAG_LEN: usize = 32;

pub(crate) const META: &str = "meta";
pub(crate) const ITEMS: &str = "items";
pub(crate) const TEXT_STATES: &str = "text_states";
pub(crate) const USERS: &str = "users";
pub(crate) const USER_RECORDS: &str = "user_records";
pub(crate) const EVENTS: &str = "events";
pub(crate) const VIEW_STATES: &str = "view_states";

/// The trees whose keys start with a user tag, in the order `forget_user`
/// deletes them (the `users` entry first: once it is gone the user is gone).
pub(crate) const PER_USER_TREES: [&str; 4] = [USERS, USER_RECORDS, EVENTS, VIEW_STATES];

pub(crate) const META_SCHEMA_VERSION: &[u8] = b"schema_version";
pub(crate) const META_MODE: &[u8] = b"mode";
pub(crate) const META_KEY_CHECK: &[u8] = b"key_check";
pub(crate) const META_CHECK_KEY: &[u8] = b"check_key";
pub(crate) const MODE_PLAINTEXT: &[u8] = b"plaintext";
pub(crate) const MODE_ENCRYPTED: &[u8] = b"encrypted";

/// First byte of an unverifiable value, as schema 1 framed plaintext records.
pub(crate) const PLAIN: u8 = 0;
/// First byte of a value sealed under its user's data key.
pub(crate) const SEALED: u8 = 1;
/// First byte of a value followed by its keyed checksum.
pub(crate) const CHECKED: u8 = 2;

/// The file that marks a directory as a store, written once its database is
/// initialized: a marker without a database means the database was lost.
pub(crate) const STORE_MARKER: &str = "l2rec-store.json";

/// What the `users` tree holds: the id behind a tag (sealed in encrypted stores).
#[derive(Serialize, Deserialize)]
pub(crate) struct UserEntry {
    pub(crate) id: String,
}

/// A cached view state together with its key, so `export_user` can list them.
#[derive(Serialize, Deserialize)]
pub(crate) struct ViewStateEntry {
    pub(crate) key: ViewStateKey,
    pub(crate) state: Vec<f32>,
}

pub(crate) fn event_key(tag: &UserTag, seq: u64) -> Vec<u8> {
    [tag.as_slice(), &seq.to_be_bytes()].concat()
}

/// The sequence number in an `events` key, `None` if the key is malformed.
pub(crate) fn event_seq(key: &[u8]) -> Option<u64> {
    let bytes: [u8; 8] = key.get(TAG_LEN..)?.try_into().ok()?;
    Some(u64::from_be_bytes(bytes))
}

/// One slot per user, view and bundle: a new history replaces the cached state
/// of the old one instead of piling up (the entry keeps the full key, history
/// hash included, and a read checks it).
pub(crate) fn view_state_key(tag: &UserTag, key: &ViewStateKey) -> Vec<u8> {
    let encoded =
        postcard::to_stdvec(&(&key.view, &key.bundle_id)).expect("postcard encodes strings");
    let digest: [u8; 32] = Sha256::digest(&encoded).into();
    [tag.as_slice(), &digest].concat()
}

pub(crate) fn text_state_key(backbone_sha256: &str, item_id: &str) -> Vec<u8> {
    // postcard length-prefixes strings, so no pair can collide with another.
    postcard::to_stdvec(&(backbone_sha256, item_id)).expect("postcard encodes strings")
}

/// The user tag a per-user key starts with.
pub(crate) fn tag_of(key: &[u8]) -> Option<UserTag> {
    key.get(..TAG_LEN)?.try_into().ok()
}

/// The smallest tag greater than `tag` (as a big-endian number), to skip from
/// one user's key range to the next; `None` past the last possible tag.
pub(crate) fn next_tag(tag: &UserTag) -> Option<UserTag> {
    let mut next = *tag;
    for byte in next.iter_mut().rev() {
        if *byte == u8::MAX {
            *byte = 0;
        } else {
            *byte += 1;
            return Some(next);
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn next_tag_carries() {
        let mut tag = [0u8; TAG_LEN];
        tag[31] = 0xff;
        tag[30] = 0x01;
        let next = next_tag(&tag).unwrap();
        assert_eq!(next[31], 0);
        assert_eq!(next[30], 2);
        assert!(next_tag(&[0xff; TAG_LEN]).is_none());
    }

    #[test]
    fn event_keys_sort_by_seq() {
        let tag = [3u8; TAG_LEN];
        assert!(event_key(&tag, 255) < event_key(&tag, 256));
        assert_eq!(event_seq(&event_key(&tag, 42)), Some(42));
    }
}
