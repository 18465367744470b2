//! Sealing of the token cleartexts the master itself must present.
//!
//! Tokens are stored as hashes so that a stolen database cannot be used to
//! call the broker. But the master must still present each challenge's
//! token to `get_weights`, and hand both tokens to a challenge service
//! whenever the orchestrator (re)creates it — long after the one response
//! that showed them. So each token is also kept sealed with
//! XChaCha20-Poly1305 under a key that lives outside the database
//! (`BASE_SECRET_KEY` / `BASE_SECRET_KEY_FILE`, or a generated key file in
//! the data dir in development). The row's identity (slug and kind) is the
//! associated data, so a sealed token cannot be moved to another row.

use std::path::Path;

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use chacha20poly1305::aead::{Aead, KeyInit, OsRng, Payload};
use chacha20poly1305::{AeadCore, XChaCha20Poly1305, XNonce};
use secrecy::{ExposeSecret, SecretString};

/// Why sealing or opening failed.
#[derive(Debug, thiserror::Error)]
pub enum VaultError {
    /// The key is not 32 bytes of base64 or hex.
    #[error("invalid secret key: expected 32 bytes as base64 or 64 hex characters")]
    BadKey,
    /// The key file could not be read or written.
    #[error("secret key file '{path}': {source}")]
    KeyFile {
        /// The file.
        path: String,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The sealed value is malformed or was sealed under another key.
    #[error("sealed value cannot be opened (wrong BASE_SECRET_KEY, or corrupted)")]
    Open,
    /// The cipher refused to seal (a value too large for it).
    #[error("the value could not be sealed")]
    Seal,
}

/// 32 key bytes from text: 64 hex characters (optionally `0x`-prefixed)
/// or base64 (standard or URL-safe, padded or not). `None` says only that
/// it is not one, so no caller can echo the text by accident.
pub fn decode_key32(text: &str) -> Option<[u8; 32]> {
    let t = text.trim();
    let h = t.strip_prefix("0x").unwrap_or(t);
    let bytes = if h.len() == 64 && h.bytes().all(|b| b.is_ascii_hexdigit()) {
        hex::decode(h).ok()?
    } else {
        use base64::engine::general_purpose::{URL_SAFE, URL_SAFE_NO_PAD};
        STANDARD
            .decode(t)
            .or_else(|_| URL_SAFE.decode(t))
            .or_else(|_| URL_SAFE_NO_PAD.decode(t))
            .ok()?
    };
    bytes.try_into().ok()
}

const PREFIX: &str = "v1:";

/// The sealing key.
pub struct Vault {
    cipher: XChaCha20Poly1305,
}

impl std::fmt::Debug for Vault {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Vault([REDACTED])")
    }
}

impl Vault {
    /// A vault over raw key bytes.
    pub fn from_bytes(key: &[u8; 32]) -> Self {
        Self {
            cipher: XChaCha20Poly1305::new(key.into()),
        }
    }

    /// Parses a key given as base64 (standard or URL-safe) or hex. The
    /// error never contains the text.
    pub fn from_text(text: &SecretString) -> Result<Self, VaultError> {
        let key = decode_key32(text.expose_secret()).ok_or(VaultError::BadKey)?;
        Ok(Self::from_bytes(&key))
    }

    /// A new random key, as base64 text.
    pub fn generate_key() -> SecretString {
        let key = XChaCha20Poly1305::generate_key(&mut OsRng);
        SecretString::from(STANDARD.encode(key))
    }

    /// Reads the key file, creating it (mode 0600) with a random key if it
    /// does not exist. For development: production passes the key in.
    pub fn load_or_create(path: &Path) -> Result<Self, VaultError> {
        let err = |source| VaultError::KeyFile {
            path: path.display().to_string(),
            source,
        };
        match std::fs::read_to_string(path) {
            Ok(text) => Self::from_text(&SecretString::from(text)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                if let Some(dir) = path.parent() {
                    std::fs::create_dir_all(dir).map_err(err)?;
                }
                let key = Self::generate_key();
                write_private(path, key.expose_secret()).map_err(err)?;
                Self::from_text(&key)
            }
            Err(e) => Err(err(e)),
        }
    }

    /// Seals `plaintext`, bound to `context` (e.g. `slug/kind`). An error
    /// is an error: never an empty string that would be stored as if it
    /// were a sealed token.
    pub fn seal(&self, plaintext: &str, context: &str) -> Result<String, VaultError> {
        let nonce = XChaCha20Poly1305::generate_nonce(&mut OsRng);
        let payload = Payload {
            msg: plaintext.as_bytes(),
            aad: context.as_bytes(),
        };
        let ct = self
            .cipher
            .encrypt(&nonce, payload)
            .map_err(|_| VaultError::Seal)?;
        let mut out = nonce.to_vec();
        out.extend_from_slice(&ct);
        Ok(format!("{PREFIX}{}", STANDARD.encode(out)))
    }

    /// Opens a value sealed with the same key and context.
    pub fn open(&self, sealed: &str, context: &str) -> Result<SecretString, VaultError> {
        let body = sealed.strip_prefix(PREFIX).ok_or(VaultError::Open)?;
        let raw = STANDARD.decode(body).map_err(|_| VaultError::Open)?;
        if raw.len() < 24 {
            return Err(VaultError::Open);
        }
        let (nonce, ct) = raw.split_at(24);
        let payload = Payload {
            msg: ct,
            aad: context.as_bytes(),
        };
        let pt = self
            .cipher
            .decrypt(XNonce::from_slice(nonce), payload)
            .map_err(|_| VaultError::Open)?;
        String::from_utf8(pt)
            .map(SecretString::from)
            .map_err(|_| VaultError::Open)
    }
}

/// Writes a file readable only by its owner, atomically (temp + rename).
pub fn write_private(path: &Path, contents: &str) -> std::io::Result<()> {
    use std::io::Write;
    let dir = path.parent().unwrap_or_else(|| Path::new("."));
    let mut tmp = tempfile_in(dir)?;
    tmp.1.write_all(contents.as_bytes())?;
    tmp.1.sync_all()?;
    std::fs::rename(&tmp.0, path)
}

fn tempfile_in(dir: &Path) -> std::io::Result<(std::path::PathBuf, std::fs::File)> {
    let name = format!(".tmp-{}", uuid::Uuid::new_v4().simple());
    let path = dir.join(name);
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        opts.mode(0o600);
    }
    let file = opts.open(&path)?;
    Ok((path, file))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seal_open_round_trip_and_binding() {
        let v = Vault::from_text(&Vault::generate_key()).unwrap();
        let s = v.seal("tok3n", "quiz/challenge").unwrap();
        assert!(!s.contains("tok3n"));
        assert_eq!(
            v.open(&s, "quiz/challenge").unwrap().expose_secret(),
            "tok3n"
        );
        assert!(v.open(&s, "other/challenge").is_err(), "bound to its row");
        let other = Vault::from_text(&Vault::generate_key()).unwrap();
        assert!(
            other.open(&s, "quiz/challenge").is_err(),
            "bound to its key"
        );
        assert!(v.open("v1:!!!", "x").is_err());
        assert!(v.open("garbage", "x").is_err());
        assert_ne!(
            s,
            v.seal("tok3n", "quiz/challenge").unwrap(),
            "fresh nonce each time"
        );
    }

    #[test]
    fn keys_parse_and_files_are_private() {
        assert!(Vault::from_text(&SecretString::from("00".repeat(32))).is_ok());
        assert!(Vault::from_text(&SecretString::from("short".to_string())).is_err());
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sub/secret.key");
        let a = Vault::load_or_create(&path).unwrap();
        let b = Vault::load_or_create(&path).unwrap();
        assert_eq!(
            b.open(&a.seal("x", "c").unwrap(), "c")
                .unwrap()
                .expose_secret(),
            "x",
            "same key reloaded"
        );
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
            assert_eq!(mode, 0o600);
        }
    }
}
