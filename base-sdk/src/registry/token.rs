//! Challenge and broker tokens: made once, shown once, stored as a hash.
//!
//! Tokens are 32 random bytes, so a single SHA-256 is enough to store them
//! (there is nothing to brute-force); comparisons of hashes are constant
//! time so response timing says nothing about how close a guess was.

use base64::Engine;
use rand::RngCore;
use secrecy::{ExposeSecret, SecretString};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use crate::model::{Slug, TokenKind, TokenRecord};

/// A freshly issued token: the cleartext (shown once) and what is stored.
pub struct IssuedToken {
    /// The cleartext, for the one response that shows it.
    pub cleartext: SecretString,
    /// Hash and hint for the store.
    pub record: TokenRecord,
}

impl std::fmt::Debug for IssuedToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IssuedToken")
            .field("cleartext", &"[REDACTED]")
            .field("record", &self.record)
            .finish()
    }
}

/// Issues a new random token of `kind` for `slug`.
pub fn issue(slug: &Slug, kind: TokenKind) -> IssuedToken {
    let mut bytes = [0u8; 32];
    rand::rngs::OsRng.fill_bytes(&mut bytes);
    let text = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes);
    let record = TokenRecord {
        slug: slug.clone(),
        kind,
        hash: hash(&text),
        hint: hint(&text),
        sealed: None,
        created_at: crate::model::now(),
    };
    IssuedToken {
        cleartext: SecretString::from(text),
        record,
    }
}

/// Hex SHA-256 of a token.
pub fn hash(token: &str) -> String {
    hex::encode(Sha256::digest(token.as_bytes()))
}

/// `abcd…wxyz`: enough to tell tokens apart, too little to use.
pub fn hint(token: &str) -> String {
    let chars: Vec<char> = token.chars().collect();
    if chars.len() < 12 {
        return "…".to_string();
    }
    let head: String = chars[..4].iter().collect();
    let tail: String = chars[chars.len() - 4..].iter().collect();
    format!("{head}…{tail}")
}

/// Whether `presented` hashes to `stored_hash`, in constant time.
pub fn verify(presented: &str, stored_hash: &str) -> bool {
    let h = hash(presented);
    h.as_bytes().ct_eq(stored_hash.as_bytes()).into()
}

/// Constant-time equality of two secrets, by comparing their hashes (so the
/// lengths leak nothing either).
pub fn secrets_equal(a: &SecretString, b: &str) -> bool {
    verify(b, &hash(a.expose_secret()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn issued_tokens_verify_and_differ() {
        let slug = Slug::parse("ab").unwrap();
        let a = issue(&slug, TokenKind::Challenge);
        let b = issue(&slug, TokenKind::Challenge);
        let at = a.cleartext.expose_secret();
        assert_eq!(at.len(), 43, "32 bytes in unpadded URL-safe base64");
        assert!(
            at.bytes()
                .all(|c| c.is_ascii_alphanumeric() || c == b'-' || c == b'_')
        );
        assert!(verify(at, &a.record.hash));
        assert!(!verify(b.cleartext.expose_secret(), &a.record.hash));
        assert_ne!(a.record.hash, b.record.hash);
        assert!(a.record.hint.starts_with(&at[..4]) && a.record.hint.ends_with(&at[39..]));
        assert!(!format!("{a:?}").contains(at));
    }

    #[test]
    fn secrets_compare() {
        let s = SecretString::from("s3cret".to_string());
        assert!(secrets_equal(&s, "s3cret"));
        assert!(!secrets_equal(&s, "s3cre"));
        assert!(!secrets_equal(&s, ""));
    }
}
