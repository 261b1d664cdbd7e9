//! The publish API key (`PUBLISH_API_KEY`) and its check.
//!
//! The comparison must not tell an attacker, through its timing, how much of a guess was right
//! or how long the key is. Both sides are reduced to SHA-256 digests (the key's once, at start)
//! and the two 32-byte digests are compared with `subtle`, which examines every byte whatever
//! they hold. The time taken then depends only on the length of what the client sent, which the
//! client knows anyway.

use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

/// A configured API key, kept only as its digest.
pub struct ApiKey {
    /// SHA-256 of the key.
    digest: [u8; 32],
}

impl ApiKey {
    /// The key `key` (non-empty: configuration treats an empty key as unset).
    pub fn new(key: &str) -> Self {
        Self {
            digest: Sha256::digest(key.as_bytes()).into(),
        }
    }

    /// Whether an `Authorization` header value presents this key as `Bearer <key>` (the scheme
    /// name in any case, RFC 7235).
    pub fn accepts(&self, authorization: Option<&[u8]>) -> bool {
        let Some(value) = authorization else {
            return false;
        };
        let given = match value.split_at_checked(7) {
            Some((scheme, rest)) if scheme.eq_ignore_ascii_case(b"bearer ") => rest,
            _ => return false,
        };
        let given: [u8; 32] = Sha256::digest(given).into();
        given.ct_eq(&self.digest).into()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_only_the_exact_key() {
        let key = ApiKey::new("s3cret-key");
        assert!(key.accepts(Some(b"Bearer s3cret-key")));
        assert!(key.accepts(Some(b"bearer s3cret-key")));
        for wrong in [
            &b"Bearer s3cret-keY"[..],
            b"Bearer s3cret-key ",
            b"Bearer s3cret-ke",
            b"Bearer s3cret-key2",
            b"Bearer ",
            b"Bearer",
            b"",
            b"Basic s3cret-key",
            b"s3cret-key",
            b"Bearer  s3cret-key",
        ] {
            assert!(
                !key.accepts(Some(wrong)),
                "{:?}",
                String::from_utf8_lossy(wrong)
            );
        }
        assert!(!key.accepts(None));
    }

    /// What is compared has the same size whatever the client sent: a prefix of the key, the key
    /// with a suffix, or garbage of any length all end up as 32 bytes against 32 bytes.
    #[test]
    fn the_comparison_is_over_fixed_size_digests() {
        let key = ApiKey::new("k");
        for given in ["", "k", "kk", &"k".repeat(10_000)] {
            let digest: [u8; 32] = Sha256::digest(given.as_bytes()).into();
            assert_eq!(digest.len(), key.digest.len());
            assert_eq!(bool::from(digest.ct_eq(&key.digest)), given == "k");
        }
    }
}
