//! The master's signature on the weight vector it serves, so that a
//! validator's submitter can tell the master's vector from one a man in the
//! middle (or a hijacked proxy in front of the master) made up.
//!
//! Scheme (docs/chain.md, "Verifying the master's signature"):
//! - sr25519 (schnorrkel), the signature scheme of every Substrate key and
//!   of Bittensor hotkeys, over the signing context `substrate` — so any
//!   Substrate library (`@polkadot/util-crypto` `signatureVerify`,
//!   `substrate-interface` `Keypair.verify`) can check it.
//! - The signed message is `base-weights-v1:` followed by the exact bytes
//!   of the `/v1/weights/latest` response body. No canonical JSON form is
//!   needed: the verifier checks the bytes it received, then parses those
//!   same bytes.
//! - The signature travels in the `X-Base-Weights-Signature` header
//!   (`0x` + 128 hex), beside `X-Base-Weights-Key` (`0x` + 64 hex, the key
//!   that signed; informative only — a verifier uses the key it was given).

use std::fmt;
use std::path::Path;
use std::str::FromStr;

use rand::RngCore;
use schnorrkel::{ExpansionMode, Keypair, MiniSecretKey, PublicKey, Signature};
use secrecy::{ExposeSecret, SecretString};

use crate::proxy::signature::{ss58_decode, ss58_encode};

/// Header carrying the signature of the response body.
pub const SIGNATURE_HEADER: &str = "x-base-weights-signature";
/// Header naming the public key that signed (informative).
pub const KEY_HEADER: &str = "x-base-weights-key";
/// Prefix of the signed message: binds the signature to this use, so a
/// weights signature can never pass for any other sr25519-signed message.
pub const DOMAIN: &[u8] = b"base-weights-v1:";
const CONTEXT: &[u8] = b"substrate";

/// Why a weights key could not be read or a signature does not check.
#[derive(Debug, thiserror::Error)]
pub enum SigningError {
    /// The secret key text is not a 32-byte seed (the text is never echoed).
    #[error(
        "{setting}: invalid weights signing key: expected a 32-byte sr25519 seed as 64 hex characters (optionally 0x-prefixed) or base64"
    )]
    BadKey {
        /// The setting it came from.
        setting: &'static str,
    },
    /// The public key text is neither hex nor ss58.
    #[error(
        "invalid master public key '{0}': expected 0x followed by 64 hex characters, or an ss58 address"
    )]
    BadPublicKey(String),
    /// The key file could not be read or written.
    #[error("weights key file '{path}': {source}")]
    KeyFile {
        /// The file.
        path: String,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The response carries no signature.
    #[error("the weights response is unsigned (no X-Base-Weights-Signature header)")]
    Unsigned,
    /// The signature header is not 64 bytes of hex.
    #[error("malformed X-Base-Weights-Signature: expected 0x followed by 128 hex characters")]
    Malformed,
    /// The signature does not verify under the expected key.
    #[error(
        "the weights signature does not verify with the master public key {expected}: the vector was altered or signed by another key"
    )]
    Invalid {
        /// The key the verifier trusts.
        expected: String,
    },
}

/// The master's signing key. `Debug` shows the public key only.
pub struct WeightsKey {
    keypair: Keypair,
}

impl fmt::Debug for WeightsKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("WeightsKey")
            .field("public", &self.public().to_string())
            .finish_non_exhaustive()
    }
}

impl WeightsKey {
    /// A key from its 32-byte seed (a Substrate "mini secret key"; the same
    /// seed gives the same key as `subkey` and `subxt-signer`).
    pub fn from_seed(seed: &[u8; 32]) -> Self {
        // from_bytes only fails on a length other than 32.
        let mini = match MiniSecretKey::from_bytes(seed) {
            Ok(m) => m,
            Err(_) => unreachable_seed(),
        };
        Self {
            keypair: mini.expand_to_keypair(ExpansionMode::Ed25519),
        }
    }

    /// Parses a seed given as hex (optionally `0x`) or base64, naming
    /// `setting` — and never the text — when it is not one.
    pub fn from_text(text: &SecretString, setting: &'static str) -> Result<Self, SigningError> {
        let seed = crate::vault::decode_key32(text.expose_secret())
            .ok_or(SigningError::BadKey { setting })?;
        Ok(Self::from_seed(&seed))
    }

    /// A new random seed, as `0x` + hex text.
    pub fn generate_seed() -> SecretString {
        let mut seed = [0u8; 32];
        rand::rngs::OsRng.fill_bytes(&mut seed);
        SecretString::from(format!("0x{}", hex::encode(seed)))
    }

    /// Reads the seed file, creating it (mode 0600, atomically) with a
    /// random seed if it does not exist. Only `base-server dev` uses this:
    /// `master` must be given its key.
    pub fn load_or_create(path: &Path) -> Result<Self, SigningError> {
        let err = |source| SigningError::KeyFile {
            path: path.display().to_string(),
            source,
        };
        match std::fs::read_to_string(path) {
            Ok(text) => Self::from_text(&SecretString::from(text), "BASE_WEIGHTS_KEY_FILE"),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                if let Some(dir) = path.parent() {
                    std::fs::create_dir_all(dir).map_err(err)?;
                }
                let seed = Self::generate_seed();
                crate::vault::write_private(path, seed.expose_secret()).map_err(err)?;
                Self::from_text(&seed, "BASE_WEIGHTS_KEY_FILE")
            }
            Err(e) => Err(err(e)),
        }
    }

    /// The public key.
    pub fn public(&self) -> WeightsPublicKey {
        WeightsPublicKey(self.keypair.public.to_bytes())
    }

    /// The `X-Base-Weights-Signature` value for a response `body`.
    pub fn sign(&self, body: &[u8]) -> String {
        let sig = self.keypair.sign_simple(CONTEXT, &message(body));
        format!("0x{}", hex::encode(sig.to_bytes()))
    }
}

#[cold]
fn unreachable_seed() -> ! {
    // A `[u8; 32]` is always the length MiniSecretKey wants.
    unreachable!("a 32-byte array is a valid mini secret key")
}

fn message(body: &[u8]) -> Vec<u8> {
    let mut m = Vec::with_capacity(DOMAIN.len() + body.len());
    m.extend_from_slice(DOMAIN);
    m.extend_from_slice(body);
    m
}

/// The master's public key, as validators configure it
/// (`BASE_MASTER_PUBKEY`): `0x` + 64 hex, or an ss58 address.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct WeightsPublicKey(pub [u8; 32]);

impl fmt::Display for WeightsPublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "0x{}", hex::encode(self.0))
    }
}

impl fmt::Debug for WeightsPublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "WeightsPublicKey({self})")
    }
}

impl FromStr for WeightsPublicKey {
    type Err = SigningError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let t = s.trim();
        let h = t.strip_prefix("0x").unwrap_or(t);
        let mut key = [0u8; 32];
        if h.len() == 64 && hex::decode_to_slice(h, &mut key).is_ok() {
            return Ok(Self(key));
        }
        ss58_decode(t)
            .map(Self)
            .map_err(|_| SigningError::BadPublicKey(t.chars().take(80).collect()))
    }
}

impl WeightsPublicKey {
    /// The ss58 address of the key (generic prefix 42).
    pub fn ss58(&self) -> String {
        ss58_encode(&self.0, 42)
    }

    /// Checks `signature` (the `X-Base-Weights-Signature` value, if the
    /// response had one) over the exact response `body`.
    pub fn verify(&self, body: &[u8], signature: Option<&str>) -> Result<(), SigningError> {
        let raw = signature.ok_or(SigningError::Unsigned)?.trim();
        let h = raw.strip_prefix("0x").unwrap_or(raw);
        let mut bytes = [0u8; 64];
        hex::decode_to_slice(h, &mut bytes).map_err(|_| SigningError::Malformed)?;
        let sig = Signature::from_bytes(&bytes).map_err(|_| SigningError::Malformed)?;
        let invalid = || SigningError::Invalid {
            expected: self.to_string(),
        };
        let pk = PublicKey::from_bytes(&self.0).map_err(|_| invalid())?;
        pk.verify_simple(CONTEXT, &message(body), &sig)
            .map_err(|_| invalid())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn key(b: u8) -> WeightsKey {
        WeightsKey::from_seed(&[b; 32])
    }

    #[test]
    fn signs_and_verifies_the_exact_bytes() {
        let k = key(1);
        let body = br#"{"netuid":100,"uids":[1],"weights":[1.0]}"#;
        let sig = k.sign(body);
        k.public().verify(body, Some(&sig)).unwrap();
        assert!(matches!(
            k.public().verify(body, None),
            Err(SigningError::Unsigned)
        ));
        assert!(matches!(
            k.public().verify(body, Some("0xzz")),
            Err(SigningError::Malformed)
        ));
        assert!(matches!(
            key(2).public().verify(body, Some(&sig)),
            Err(SigningError::Invalid { .. })
        ));
        // Without the domain prefix it is not the same message.
        let plain = k.keypair.sign_simple(CONTEXT, body).to_bytes();
        assert!(
            k.public()
                .verify(body, Some(&format!("0x{}", hex::encode(plain))))
                .is_err()
        );
    }

    #[test]
    fn public_keys_parse_as_hex_or_ss58_and_bad_seeds_are_not_echoed() {
        let k = key(3);
        let p = k.public();
        assert_eq!(p.to_string().parse::<WeightsPublicKey>().unwrap(), p);
        assert_eq!(p.ss58().parse::<WeightsPublicKey>().unwrap(), p);
        assert!("0x1234".parse::<WeightsPublicKey>().is_err());
        let secret = "not-a-key-hunter2";
        let e = WeightsKey::from_text(&SecretString::from(secret), "BASE_WEIGHTS_KEY").unwrap_err();
        let text = e.to_string();
        assert!(text.contains("BASE_WEIGHTS_KEY"), "{text}");
        assert!(!text.contains("hunter2"), "{text}");
        assert!(!format!("{k:?}").contains(&hex::encode([3u8; 32])));
    }

    #[test]
    fn generated_seed_files_are_private_and_stable() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("w/weights.key");
        let a = WeightsKey::load_or_create(&path).unwrap();
        let b = WeightsKey::load_or_create(&path).unwrap();
        assert_eq!(a.public(), b.public());
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
            assert_eq!(mode, 0o600);
        }
    }

    proptest! {
        /// Any change to the signed bytes breaks the signature.
        #[test]
        fn any_tampered_byte_is_refused(
            body in proptest::collection::vec(any::<u8>(), 1..512),
            at in any::<prop::sample::Index>(),
            flip in 1u8..=255,
        ) {
            let k = key(7);
            let sig = k.sign(&body);
            prop_assert!(k.public().verify(&body, Some(&sig)).is_ok());
            let mut t = body.clone();
            let i = at.index(t.len());
            t[i] ^= flip;
            prop_assert!(k.public().verify(&t, Some(&sig)).is_err());
        }
    }
}
