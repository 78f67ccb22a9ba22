//! Keyed checksums for every record that is not sealed: the per-user records
//! of a plaintext store and the catalog of every store.
//!
//! sled checks its own log (a CRC per message) but on recovery it silently
//! drops a damaged tail, and it knows nothing of which user a record belongs
//! to: a record copied under another user's key decodes as theirs. A keyed
//! checksum over (tree, sled key, value) makes a damaged, moved or swapped
//! record fail to verify, as the AEAD's associated data does for sealed ones.
//!
//! The key is random per store and kept in the `meta` tree: it protects
//! against damage and mix-ups, not against someone who can edit the files
//! (that is what encryption is for).

use chacha20poly1305::aead::rand_core::RngCore;
use chacha20poly1305::aead::OsRng;
use hmac::{Hmac, Mac};
use sha2::Sha256;
use zeroize::Zeroizing;

use super::layout::CHECKED;

/// Bytes of checksum appended to a value (HMAC-SHA256 truncated).
pub(crate) const CHECK_LEN: usize = 16;
/// Bytes of the per-store checksum key.
pub(crate) const CHECK_KEY_LEN: usize = 32;

const CHECK_LABEL: &[u8] = b"l2rec/store/record-check/v1";

/// A framed value: [`CHECKED`], the bytes, and their checksum.
pub(crate) fn checked_frame(
    check: &RecordCheck,
    tree: &str,
    record_key: &[u8],
    body: &[u8],
) -> Vec<u8> {
    [&[CHECKED][..], &check.append(tree, record_key, body)].concat()
}

/// The store's checksum key.
pub(crate) struct RecordCheck {
    key: Zeroizing<[u8; CHECK_KEY_LEN]>,
}

impl RecordCheck {
    /// A fresh random key (at store creation or migration).
    pub(crate) fn generate() -> Self {
        let mut key = Zeroizing::new([0u8; CHECK_KEY_LEN]);
        OsRng.fill_bytes(key.as_mut());
        RecordCheck { key }
    }

    /// The key as stored in `meta`; `None` when the record is malformed.
    pub(crate) fn from_bytes(bytes: &[u8]) -> Option<Self> {
        let key: [u8; CHECK_KEY_LEN] = bytes.try_into().ok()?;
        Some(RecordCheck {
            key: Zeroizing::new(key),
        })
    }

    pub(crate) fn as_bytes(&self) -> &[u8] {
        self.key.as_ref()
    }

    /// `body || checksum`, bound to the record's tree and sled key.
    pub(crate) fn append(&self, tree: &str, record_key: &[u8], body: &[u8]) -> Vec<u8> {
        let check = self.checksum(tree, record_key, body);
        [body, &check[..]].concat()
    }

    /// The body of a value made by [`RecordCheck::append`] for this tree and
    /// key; `None` when it was damaged, truncated or written elsewhere.
    pub(crate) fn verify<'a>(
        &self,
        tree: &str,
        record_key: &[u8],
        value: &'a [u8],
    ) -> Option<&'a [u8]> {
        let split = value.len().checked_sub(CHECK_LEN)?;
        let (body, check) = value.split_at(split);
        // Constant-time comparison, from the MAC crate.
        let verified = self
            .mac(tree, record_key, body)
            .verify_truncated_left(check);
        verified.is_ok().then_some(body)
    }

    fn checksum(&self, tree: &str, record_key: &[u8], body: &[u8]) -> [u8; CHECK_LEN] {
        let full = self.mac(tree, record_key, body).finalize().into_bytes();
        let mut out = [0u8; CHECK_LEN];
        out.copy_from_slice(&full[..CHECK_LEN]);
        out
    }

    fn mac(&self, tree: &str, record_key: &[u8], body: &[u8]) -> Hmac<Sha256> {
        // HMAC accepts keys of any length, so this cannot fail.
        let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(self.key.as_ref())
            .expect("HMAC takes any key length");
        // Length prefixes keep (tree, key, body) triples unambiguous.
        let tree_len = u8::try_from(tree.len()).expect("tree names are short");
        mac.update(CHECK_LABEL);
        mac.update(&[tree_len]);
        mac.update(tree.as_bytes());
        mac.update(&(record_key.len() as u32).to_be_bytes());
        mac.update(record_key);
        mac.update(body);
        mac
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_checked_value_is_bound_to_its_tree_key_and_bytes() {
        let check = RecordCheck::generate();
        let value = check.append("events", b"alice-0", b"hello");
        assert_eq!(
            check.verify("events", b"alice-0", &value),
            Some(&b"hello"[..])
        );
        assert!(check.verify("events", b"bob-0", &value).is_none());
        assert!(check.verify("users", b"alice-0", &value).is_none());
        assert!(RecordCheck::generate()
            .verify("events", b"alice-0", &value)
            .is_none());
        for i in 0..value.len() {
            let mut damaged = value.clone();
            damaged[i] ^= 0x10;
            assert!(check.verify("events", b"alice-0", &damaged).is_none());
        }
        assert!(check
            .verify("events", b"alice-0", &value[..value.len() - 1])
            .is_none());
        assert!(check.verify("events", b"alice-0", &[]).is_none());
    }

    #[test]
    fn the_key_round_trips_through_its_bytes() {
        let check = RecordCheck::generate();
        let again = RecordCheck::from_bytes(check.as_bytes()).unwrap();
        let value = check.append("items", b"m1", b"x");
        assert!(again.verify("items", b"m1", &value).is_some());
        assert!(RecordCheck::from_bytes(&[0; 5]).is_none());
    }
}
