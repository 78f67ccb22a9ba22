//! Encryption at rest: key derivation from the host's master key, per-user data
//! keys, and XChaCha20-Poly1305 sealing.
//!
//! Key hierarchy:
//! - the master key (32 bytes, from the iOS Keychain / Android Keystore) is never
//!   used directly; HMAC-SHA256 derives a *wrap key* (wraps data keys and seals
//!   the key-check record) and a *tag key* (turns user ids into opaque 32-byte
//!   tags, so sled keys reveal nothing about who the users are);
//! - each user has a random 32-byte *data key* with a random 16-byte id; it
//!   seals every record of that user and lives, wrapped, only in the keyring file.
//!
//! Sealed blobs are `nonce (24 bytes) || ciphertext+tag`; the nonce is random per
//! record (XChaCha's 192-bit nonce makes random nonces safe).

use chacha20poly1305::aead::rand_core::RngCore;
use chacha20poly1305::aead::{Aead, KeyInit, OsRng, Payload};
use chacha20poly1305::{XChaCha20Poly1305, XNonce};
use hmac::{Hmac, Mac};
use sha2::{Digest, Sha256};
use zeroize::Zeroizing;

use super::layout::UserTag;

const NONCE_LEN: usize = 24;
/// Length of a data key's public id, bound into every record's AAD.
pub(crate) const KEY_ID_LEN: usize = 16;

const WRAP_LABEL: &[u8] = b"l2rec/store/wrap-key/v1";
const TAG_LABEL: &[u8] = b"l2rec/store/user-tag/v1";
const KEY_CHECK_AAD: &[u8] = b"l2rec/store/key-check/v1";
const KEY_CHECK_MSG: &[u8] = b"l2rec store master key check v1";
const KEYRING_AAD: &[u8] = b"l2rec/store/keyring/v1";
const RECORD_AAD: &[u8] = b"l2rec/store/record/v1";
const LEDGER_AAD: &[u8] = b"l2rec/store/ledger/v1";

type HmacSha256 = Hmac<Sha256>;

fn hmac(key: &[u8], parts: &[&[u8]]) -> [u8; 32] {
    // HMAC accepts keys of any length, so this cannot fail.
    let mut mac = <HmacSha256 as Mac>::new_from_slice(key).expect("HMAC takes any key length");
    for part in parts {
        mac.update(part);
    }
    mac.finalize().into_bytes().into()
}

/// Seals `msg` under `key` with a fresh random nonce: `nonce || ciphertext`.
fn seal(key: &[u8; 32], aad: &[u8], msg: &[u8]) -> Vec<u8> {
    let cipher = XChaCha20Poly1305::new(key.into());
    let mut nonce = [0u8; NONCE_LEN];
    OsRng.fill_bytes(&mut nonce);
    let ciphertext = cipher
        .encrypt(XNonce::from_slice(&nonce), Payload { msg, aad })
        // Encryption only fails for messages beyond the AEAD's ~256 GiB limit.
        .expect("XChaCha20-Poly1305 encrypts any record size the store writes");
    let mut out = Vec::with_capacity(NONCE_LEN + ciphertext.len());
    out.extend_from_slice(&nonce);
    out.extend_from_slice(&ciphertext);
    out
}

/// Opens a blob made by [`seal`]; `None` when it was tampered with, truncated,
/// bound to other AAD, or sealed under another key.
fn open(key: &[u8; 32], aad: &[u8], blob: &[u8]) -> Option<Vec<u8>> {
    if blob.len() < NONCE_LEN {
        return None;
    }
    let (nonce, ciphertext) = blob.split_at(NONCE_LEN);
    let cipher = XChaCha20Poly1305::new(key.into());
    cipher
        .decrypt(
            XNonce::from_slice(nonce),
            Payload {
                msg: ciphertext,
                aad,
            },
        )
        .ok()
}

/// Keys derived from the host's master key; the master key itself is dropped.
pub(crate) struct MasterKeys {
    wrap: Zeroizing<[u8; 32]>,
    tag: Zeroizing<[u8; 32]>,
}

impl MasterKeys {
    pub(crate) fn derive(master: &[u8; 32]) -> Self {
        MasterKeys {
            wrap: Zeroizing::new(hmac(master, &[WRAP_LABEL])),
            tag: Zeroizing::new(hmac(master, &[TAG_LABEL])),
        }
    }

    /// The opaque tag under which a user's records are keyed in sled.
    pub(crate) fn user_tag(&self, user: &str) -> UserTag {
        hmac(self.tag.as_ref(), &[user.as_bytes()])
    }

    /// The record written at creation that proves a later key is the same one.
    pub(crate) fn key_check(&self) -> Vec<u8> {
        seal(&self.wrap, KEY_CHECK_AAD, KEY_CHECK_MSG)
    }

    pub(crate) fn verify_key_check(&self, blob: &[u8]) -> bool {
        open(&self.wrap, KEY_CHECK_AAD, blob).is_some_and(|msg| msg == KEY_CHECK_MSG)
    }

    /// Wraps a data key; the AAD binds it to its user tag and key id, so a
    /// wrapped key moved to another user's keyring slot fails to unwrap.
    pub(crate) fn wrap(&self, tag: &UserTag, key: &DataKey) -> Vec<u8> {
        seal(&self.wrap, &keyring_aad(tag, &key.id), key.key.as_ref())
    }

    /// Seals the ledger file (it names users, so it is sealed like their records).
    pub(crate) fn seal_ledger(&self, msg: &[u8]) -> Vec<u8> {
        seal(&self.wrap, LEDGER_AAD, msg)
    }

    pub(crate) fn open_ledger(&self, blob: &[u8]) -> Option<Vec<u8>> {
        open(&self.wrap, LEDGER_AAD, blob)
    }

    pub(crate) fn unwrap(
        &self,
        tag: &UserTag,
        id: [u8; KEY_ID_LEN],
        blob: &[u8],
    ) -> Option<DataKey> {
        let raw = Zeroizing::new(open(&self.wrap, &keyring_aad(tag, &id), blob)?);
        let key: [u8; 32] = raw.as_slice().try_into().ok()?;
        Some(DataKey {
            id,
            key: Zeroizing::new(key),
        })
    }
}

fn keyring_aad(tag: &UserTag, id: &[u8; KEY_ID_LEN]) -> Vec<u8> {
    [KEYRING_AAD, tag.as_slice(), id.as_slice()].concat()
}

/// The user tag of a plaintext store: a plain hash, fixed-length so that user
/// ids containing separators cannot collide with other users' key prefixes.
pub(crate) fn plain_user_tag(user: &str) -> UserTag {
    let mut hasher = Sha256::new();
    hasher.update(TAG_LABEL);
    hasher.update(user.as_bytes());
    hasher.finalize().into()
}

/// One user's data key. Zeroed when the last reference is dropped.
pub(crate) struct DataKey {
    pub(crate) id: [u8; KEY_ID_LEN],
    key: Zeroizing<[u8; 32]>,
}

impl DataKey {
    /// A key of given bytes, for the fuzz targets' committed seeds.
    #[cfg(any(fuzzing, test))]
    pub(crate) fn fixed(id: [u8; KEY_ID_LEN], key: [u8; 32]) -> Self {
        DataKey {
            id,
            key: Zeroizing::new(key),
        }
    }

    pub(crate) fn generate() -> Self {
        let mut id = [0u8; KEY_ID_LEN];
        OsRng.fill_bytes(&mut id);
        let mut key = Zeroizing::new([0u8; 32]);
        OsRng.fill_bytes(key.as_mut());
        DataKey { id, key }
    }

    /// Seals one record. The AAD binds it to its tree and its full sled key
    /// (which starts with the user's tag) and to this key's id, so a record
    /// copied to another user, another slot or another tree fails to open.
    pub(crate) fn seal(&self, tree: &str, record_key: &[u8], msg: &[u8]) -> Vec<u8> {
        seal(&self.key, &self.record_aad(tree, record_key), msg)
    }

    pub(crate) fn open(&self, tree: &str, record_key: &[u8], blob: &[u8]) -> Option<Vec<u8>> {
        open(&self.key, &self.record_aad(tree, record_key), blob)
    }

    fn record_aad(&self, tree: &str, record_key: &[u8]) -> Vec<u8> {
        // Length prefixes keep (tree, key) pairs unambiguous.
        let tree_len = u8::try_from(tree.len()).expect("tree names are short");
        [
            RECORD_AAD,
            &[tree_len],
            tree.as_bytes(),
            &(record_key.len() as u32).to_be_bytes(),
            record_key,
            &self.id,
        ]
        .concat()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_are_bound_to_their_slot_and_key() {
        let key = DataKey::generate();
        let other = DataKey::generate();
        let blob = key.seal("events", b"slot-a", b"hello");
        assert_eq!(
            key.open("events", b"slot-a", &blob).as_deref(),
            Some(&b"hello"[..])
        );
        assert!(key.open("events", b"slot-b", &blob).is_none());
        assert!(key.open("users", b"slot-a", &blob).is_none());
        assert!(other.open("events", b"slot-a", &blob).is_none());
        let mut tampered = blob.clone();
        *tampered.last_mut().unwrap() ^= 1;
        assert!(key.open("events", b"slot-a", &tampered).is_none());
    }

    #[test]
    fn wrapped_keys_are_bound_to_their_user() {
        let master = MasterKeys::derive(&[7u8; 32]);
        let key = DataKey::generate();
        let (alice, bob) = (master.user_tag("alice"), master.user_tag("bob"));
        let wrapped = master.wrap(&alice, &key);
        assert!(master.unwrap(&alice, key.id, &wrapped).is_some());
        assert!(master.unwrap(&bob, key.id, &wrapped).is_none());
        let wrong = MasterKeys::derive(&[8u8; 32]);
        assert!(!wrong.verify_key_check(&master.key_check()));
        assert!(master.verify_key_check(&master.key_check()));
    }
}
