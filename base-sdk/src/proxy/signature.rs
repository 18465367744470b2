//! Miner signatures of CONTRACTS.md §3.3: the signed message, the four
//! headers that carry it, ss58 addresses and sr25519 verification.
//!
//! Everything here is pure (no clock, no store), so the rules can be
//! property-tested and fuzzed; [`super::bridge`] adds the metagraph, the
//! nonce store and the clock. Signatures use Substrate's `substrate`
//! signing context, as Bittensor's `Keypair.sign` and polkadot.js do; a
//! message wrapped in `<Bytes>…</Bytes>` (what browser wallets' `signRaw`
//! produce) is accepted too.

use std::fmt;

use blake2::{Blake2b512, Digest as _};
use schnorrkel::{ExpansionMode, MiniSecretKey, PublicKey, Signature};
use secrecy::{ExposeSecret, SecretSlice};
use sha2::Sha256;

/// First field of every signed message; a new format gets a new tag.
pub const MESSAGE_TAG: &str = "base-upload-v1";

/// Substrate's sr25519 signing context.
const SIGNING_CONTEXT: &[u8] = b"substrate";

/// The ss58 prefix BASE prints addresses with (Substrate's generic 42,
/// which Bittensor uses).
pub const SS58_PREFIX: u16 = 42;

/// Longest nonce accepted, in bytes.
pub const MAX_NONCE_BYTES: usize = 128;

/// Why a signed request was refused. The `Display` text is the `detail`
/// the API answers with.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SignatureError {
    /// A header is absent or empty (`missing x-hotkey`, …).
    #[error("missing {0}")]
    Missing(&'static str),
    /// A header is present but malformed.
    #[error("invalid {header}: {reason}")]
    Malformed {
        /// The header, lowercase.
        header: &'static str,
        /// What is wrong.
        reason: String,
    },
    /// The timestamp is outside the accepted window.
    #[error("stale signature")]
    Stale,
    /// The signature does not verify for this hotkey and message.
    #[error("invalid signature")]
    Invalid,
}

fn malformed(header: &'static str, reason: impl Into<String>) -> SignatureError {
    SignatureError::Malformed {
        header,
        reason: reason.into(),
    }
}

/// Why an ss58 address could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Ss58Error {
    /// Not base58.
    #[error("not base58")]
    Base58,
    /// Wrong length or prefix encoding for a 32-byte account.
    #[error("not a 32-byte ss58 account")]
    Length,
    /// The checksum does not match.
    #[error("bad ss58 checksum")]
    Checksum,
}

fn ss58_checksum(data: &[u8]) -> [u8; 2] {
    let mut h = Blake2b512::new();
    h.update(b"SS58PRE");
    h.update(data);
    let out = h.finalize();
    [out[0], out[1]]
}

/// The 32-byte public key of an ss58 address (any network prefix).
pub fn ss58_decode(address: &str) -> Result<[u8; 32], Ss58Error> {
    let raw = bs58::decode(address)
        .into_vec()
        .map_err(|_| Ss58Error::Base58)?;
    let prefix_len = match raw.first() {
        Some(0..=63) => 1,
        Some(64..=127) => 2,
        _ => return Err(Ss58Error::Length),
    };
    if raw.len() != prefix_len + 32 + 2 {
        return Err(Ss58Error::Length);
    }
    let (body, checksum) = raw.split_at(prefix_len + 32);
    if ss58_checksum(body) != checksum {
        return Err(Ss58Error::Checksum);
    }
    let mut key = [0u8; 32];
    key.copy_from_slice(&body[prefix_len..]);
    Ok(key)
}

/// The ss58 address of a public key under `prefix` (< 16384).
pub fn ss58_encode(public: &[u8; 32], prefix: u16) -> String {
    let mut data = Vec::with_capacity(36);
    if prefix < 64 {
        // Checked just above: fits one byte.
        data.push(prefix.to_le_bytes()[0]);
    } else {
        // The two-byte form of the ss58 spec.
        let first = ((prefix & 0b1111_1100) >> 2) | 0b0100_0000;
        let second = (prefix >> 8) | ((prefix & 0b11) << 6);
        data.push(first.to_le_bytes()[0]);
        data.push(second.to_le_bytes()[0]);
    }
    data.extend_from_slice(public);
    let checksum = ss58_checksum(&data);
    data.extend_from_slice(&checksum);
    bs58::encode(data).into_string()
}

/// The four signature headers of a request, parsed but not yet verified.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SignedHeaders {
    /// `X-Hotkey`: the miner's ss58 address, as sent.
    pub hotkey: String,
    /// Its decoded public key.
    pub public_key: [u8; 32],
    /// `X-Signature`: 64 bytes.
    pub signature: [u8; 64],
    /// `X-Nonce`, as sent.
    pub nonce: String,
    /// `X-Timestamp`, as sent (it is part of the signed message).
    pub timestamp_text: String,
    /// `X-Timestamp` as unix seconds.
    pub timestamp: i64,
}

fn present<'a>(header: &'static str, value: Option<&'a str>) -> Result<&'a str, SignatureError> {
    value
        .map(str::trim)
        .filter(|v| !v.is_empty())
        .ok_or(SignatureError::Missing(header))
}

impl SignedHeaders {
    /// Parses the header values (`None` when absent). Presence is checked
    /// first for all four, in the order of the contract, then shapes.
    pub fn parse(
        hotkey: Option<&str>,
        signature: Option<&str>,
        nonce: Option<&str>,
        timestamp: Option<&str>,
    ) -> Result<Self, SignatureError> {
        let hotkey = present("x-hotkey", hotkey)?;
        let signature = present("x-signature", signature)?;
        let nonce = present("x-nonce", nonce)?;
        let timestamp_text = present("x-timestamp", timestamp)?;

        let public_key = ss58_decode(hotkey).map_err(|e| malformed("x-hotkey", format!("{e}")))?;
        let hex_sig = signature
            .strip_prefix("0x")
            .or_else(|| signature.strip_prefix("0X"))
            .unwrap_or(signature);
        let mut sig = [0u8; 64];
        hex::decode_to_slice(hex_sig, &mut sig)
            .map_err(|_| malformed("x-signature", "expected 64 bytes as hex"))?;
        if nonce.len() > MAX_NONCE_BYTES {
            return Err(malformed(
                "x-nonce",
                format!("longer than {MAX_NONCE_BYTES} bytes"),
            ));
        }
        // The message is `:`-separated: a nonce with `:` or spaces could
        // make two different requests sign the same text.
        if !nonce.bytes().all(|b| b.is_ascii_graphic() && b != b':') {
            return Err(malformed(
                "x-nonce",
                "only printable ASCII without ':' is allowed",
            ));
        }
        if !timestamp_text.bytes().all(|b| b.is_ascii_digit()) || timestamp_text.len() > 12 {
            return Err(malformed("x-timestamp", "expected unix seconds"));
        }
        let timestamp = timestamp_text
            .parse::<i64>()
            .map_err(|_| malformed("x-timestamp", "expected unix seconds"))?;
        Ok(Self {
            hotkey: hotkey.to_string(),
            public_key,
            signature: sig,
            nonce: nonce.to_string(),
            timestamp_text: timestamp_text.to_string(),
            timestamp,
        })
    }

    /// Checks the timestamp against `now` (unix seconds) and the window.
    pub fn check_fresh(&self, now: i64, window_seconds: i64) -> Result<(), SignatureError> {
        if (now - self.timestamp).abs() > window_seconds {
            return Err(SignatureError::Stale);
        }
        Ok(())
    }

    /// Verifies the signature over the message these headers describe.
    pub fn verify(
        &self,
        target: &SignedTarget<'_>,
        body_sha256_hex: &str,
    ) -> Result<(), SignatureError> {
        let message = message(
            target,
            &self.hotkey,
            &self.nonce,
            &self.timestamp_text,
            body_sha256_hex,
        );
        verify(&self.public_key, message.as_bytes(), &self.signature)
    }
}

/// What a signature is bound to besides the miner's own fields.
#[derive(Debug, Clone, Copy)]
pub struct SignedTarget<'a> {
    /// Subnet id.
    pub netuid: u16,
    /// Challenge slug.
    pub slug: &'a str,
    /// HTTP method (uppercased in the message).
    pub method: &'a str,
    /// Request path as sent (e.g. `/v1/challenges/quiz/submissions`).
    pub path: &'a str,
}

/// The signed message:
/// `base-upload-v1:{netuid}:{slug}:{METHOD}:{path}:{hotkey}:{nonce}:{timestamp}:{sha256 hex of body}`.
pub fn message(
    target: &SignedTarget<'_>,
    hotkey: &str,
    nonce: &str,
    timestamp: &str,
    body_sha256_hex: &str,
) -> String {
    format!(
        "{MESSAGE_TAG}:{}:{}:{}:{}:{hotkey}:{nonce}:{timestamp}:{body_sha256_hex}",
        target.netuid,
        target.slug,
        target.method.to_ascii_uppercase(),
        target.path,
    )
}

/// Lowercase hex SHA-256 of a body.
pub fn body_sha256_hex(body: &[u8]) -> String {
    hex::encode(Sha256::digest(body))
}

/// The SHA-256 of a body fed in the pieces it arrives in, so the bridge
/// hashes an upload while reading it instead of in a second pass; the
/// result is the same text [`body_sha256_hex`] gives for the whole body.
#[derive(Debug, Clone, Default)]
pub struct BodyDigest(Sha256);

impl BodyDigest {
    /// A digest of nothing yet.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds the next piece of the body.
    pub fn update(&mut self, piece: &[u8]) {
        self.0.update(piece);
    }

    /// Lowercase hex of the digest of everything added.
    pub fn finish_hex(self) -> String {
        hex::encode(self.0.finalize())
    }
}

/// Verifies an sr25519 signature of `message` by `public_key`, accepting
/// the plain message or the `<Bytes>…</Bytes>` wrapping of wallets.
pub fn verify(
    public_key: &[u8; 32],
    message: &[u8],
    signature: &[u8; 64],
) -> Result<(), SignatureError> {
    let pk = PublicKey::from_bytes(public_key).map_err(|_| SignatureError::Invalid)?;
    let sig = Signature::from_bytes(signature).map_err(|_| SignatureError::Invalid)?;
    if pk.verify_simple(SIGNING_CONTEXT, message, &sig).is_ok() {
        return Ok(());
    }
    let mut wrapped = Vec::with_capacity(message.len() + 15);
    wrapped.extend_from_slice(b"<Bytes>");
    wrapped.extend_from_slice(message);
    wrapped.extend_from_slice(b"</Bytes>");
    pk.verify_simple(SIGNING_CONTEXT, &wrapped, &sig)
        .map_err(|_| SignatureError::Invalid)
}

/// A miner's sr25519 hotkey, from its 32-byte seed (the `secretSeed` of a
/// Bittensor hotkey file). The seed never appears in `Debug`.
pub struct MinerKey {
    seed: SecretSlice<u8>,
    public: [u8; 32],
}

impl fmt::Debug for MinerKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MinerKey")
            .field("hotkey", &self.hotkey())
            .finish_non_exhaustive()
    }
}

/// Why a miner key could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KeyError {
    /// Not 32 bytes of hex, nor a hotkey file with `secretSeed`.
    #[error(
        "expected a 32-byte seed as hex (optionally 0x-prefixed) or a Bittensor hotkey JSON with \"secretSeed\""
    )]
    BadSeed,
}

impl MinerKey {
    /// A key from a 32-byte mini secret key.
    pub fn from_seed(seed: [u8; 32]) -> Result<Self, KeyError> {
        let mini = MiniSecretKey::from_bytes(&seed).map_err(|_| KeyError::BadSeed)?;
        let public = mini.expand_to_public(ExpansionMode::Ed25519).to_bytes();
        Ok(Self {
            seed: SecretSlice::from(seed.to_vec()),
            public,
        })
    }

    /// A key from text: hex seed (with or without `0x`), or the JSON of a
    /// Bittensor hotkey file (its `secretSeed`).
    pub fn from_text(text: &str) -> Result<Self, KeyError> {
        let text = text.trim();
        let hex_seed = if text.starts_with('{') {
            #[derive(serde::Deserialize)]
            struct HotkeyFile {
                #[serde(rename = "secretSeed")]
                secret_seed: String,
            }
            serde_json::from_str::<HotkeyFile>(text)
                .map_err(|_| KeyError::BadSeed)?
                .secret_seed
        } else {
            text.to_string()
        };
        let h = hex_seed.strip_prefix("0x").unwrap_or(&hex_seed);
        let mut seed = [0u8; 32];
        hex::decode_to_slice(h, &mut seed).map_err(|_| KeyError::BadSeed)?;
        Self::from_seed(seed)
    }

    /// The public key.
    pub fn public_key(&self) -> [u8; 32] {
        self.public
    }

    /// The ss58 address (prefix 42).
    pub fn hotkey(&self) -> String {
        ss58_encode(&self.public, SS58_PREFIX)
    }

    /// Signs `message` in the `substrate` context.
    pub fn sign(&self, message: &[u8]) -> [u8; 64] {
        let mut seed = [0u8; 32];
        seed.copy_from_slice(self.seed.expose_secret());
        // from_bytes only fails on a wrong length, which from_seed ruled out.
        match MiniSecretKey::from_bytes(&seed) {
            Ok(mini) => mini
                .expand_to_keypair(ExpansionMode::Ed25519)
                .sign_simple(SIGNING_CONTEXT, message)
                .to_bytes(),
            Err(_) => [0u8; 64],
        }
    }

    /// The four headers for a request to `target` with `body`, with this
    /// `nonce` and `timestamp` (unix seconds).
    pub fn sign_request(
        &self,
        target: &SignedTarget<'_>,
        body: &[u8],
        nonce: &str,
        timestamp: i64,
    ) -> MinerHeaders {
        let hotkey = self.hotkey();
        let timestamp = timestamp.to_string();
        let msg = message(target, &hotkey, nonce, &timestamp, &body_sha256_hex(body));
        MinerHeaders {
            hotkey,
            signature: format!("0x{}", hex::encode(self.sign(msg.as_bytes()))),
            nonce: nonce.to_string(),
            timestamp,
        }
    }
}

/// The four headers a miner sends with a signed request.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct MinerHeaders {
    /// `X-Hotkey`.
    #[serde(rename = "X-Hotkey")]
    pub hotkey: String,
    /// `X-Signature`.
    #[serde(rename = "X-Signature")]
    pub signature: String,
    /// `X-Nonce`.
    #[serde(rename = "X-Nonce")]
    pub nonce: String,
    /// `X-Timestamp`.
    #[serde(rename = "X-Timestamp")]
    pub timestamp: String,
}

impl MinerHeaders {
    /// `(name, value)` pairs in contract order.
    pub fn pairs(&self) -> [(&'static str, &str); 4] {
        [
            ("X-Hotkey", &self.hotkey),
            ("X-Signature", &self.signature),
            ("X-Nonce", &self.nonce),
            ("X-Timestamp", &self.timestamp),
        ]
    }
}

/// A fresh random nonce (128 bits, hex).
pub fn random_nonce() -> String {
    hex::encode(rand::random::<[u8; 16]>())
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// Substrate's well-known dev account Alice: public key and address.
    const ALICE_PUBLIC: &str = "d43593c715fdd31c61141abd04a99fd6822c8558854ccde39a5684e7a56da27d";
    const ALICE_SS58: &str = "5GrwvaEF5zXb26Fz9rcQpDWS57CtERHpNehXCPcNoHGKutQY";

    fn key() -> MinerKey {
        MinerKey::from_seed([7u8; 32]).unwrap()
    }

    fn target() -> SignedTarget<'static> {
        SignedTarget {
            netuid: 100,
            slug: "quiz",
            method: "post",
            path: "/v1/challenges/quiz/submissions",
        }
    }

    #[test]
    fn ss58_known_answer() {
        let pk: [u8; 32] = hex::decode(ALICE_PUBLIC).unwrap().try_into().unwrap();
        assert_eq!(ss58_encode(&pk, 42), ALICE_SS58);
        assert_eq!(ss58_decode(ALICE_SS58).unwrap(), pk);
        // One changed character breaks the checksum (or the base58).
        let bad = ALICE_SS58.replace("5Grw", "5Grx");
        assert!(ss58_decode(&bad).is_err());
        assert_eq!(ss58_decode("0OIl"), Err(Ss58Error::Base58));
        assert_eq!(ss58_decode("5Grw"), Err(Ss58Error::Length));
    }

    #[test]
    fn message_shape() {
        let m = message(&target(), "5H", "n1", "1700000000", "ab");
        assert_eq!(
            m,
            "base-upload-v1:100:quiz:POST:/v1/challenges/quiz/submissions:5H:n1:1700000000:ab"
        );
    }

    #[test]
    fn signed_request_round_trip_and_forgeries_fail() {
        let k = key();
        let body = b"{\"answer\":42}";
        let h = k.sign_request(&target(), body, "nonce-1", 1_700_000_000);
        let parsed = SignedHeaders::parse(
            Some(&h.hotkey),
            Some(&h.signature),
            Some(&h.nonce),
            Some(&h.timestamp),
        )
        .unwrap();
        let sha = body_sha256_hex(body);
        assert_eq!(parsed.verify(&target(), &sha), Ok(()));
        // Any change to what was signed fails.
        assert_eq!(
            parsed.verify(&target(), &body_sha256_hex(b"other")),
            Err(SignatureError::Invalid)
        );
        let other_slug = SignedTarget {
            slug: "quiz-hard",
            ..target()
        };
        assert_eq!(
            parsed.verify(&other_slug, &sha),
            Err(SignatureError::Invalid)
        );
        let other_net = SignedTarget {
            netuid: 1,
            ..target()
        };
        assert_eq!(
            parsed.verify(&other_net, &sha),
            Err(SignatureError::Invalid)
        );
        // Another key's address with this signature fails.
        let mallory = MinerKey::from_seed([9u8; 32]).unwrap();
        let forged = SignedHeaders::parse(
            Some(&mallory.hotkey()),
            Some(&h.signature),
            Some(&h.nonce),
            Some(&h.timestamp),
        )
        .unwrap();
        assert_eq!(forged.verify(&target(), &sha), Err(SignatureError::Invalid));
    }

    #[test]
    fn wallet_wrapped_messages_verify() {
        let k = key();
        let msg = message(&target(), &k.hotkey(), "n", "1", "00");
        let wrapped = format!("<Bytes>{msg}</Bytes>");
        let sig = k.sign(wrapped.as_bytes());
        assert_eq!(verify(&k.public_key(), msg.as_bytes(), &sig), Ok(()));
    }

    #[test]
    fn header_errors_are_named() {
        let k = key();
        let hk = k.hotkey();
        let sig = format!("0x{}", "00".repeat(64));
        let p = |h: Option<&str>, s: Option<&str>, n: Option<&str>, t: Option<&str>| {
            SignedHeaders::parse(h, s, n, t).unwrap_err().to_string()
        };
        assert_eq!(p(None, None, None, None), "missing x-hotkey");
        assert_eq!(
            p(Some(&hk), None, Some("n"), Some("1")),
            "missing x-signature"
        );
        assert_eq!(
            p(Some(&hk), Some(&sig), Some(" "), Some("1")),
            "missing x-nonce"
        );
        assert_eq!(
            p(Some(&hk), Some(&sig), Some("n"), None),
            "missing x-timestamp"
        );
        assert!(p(Some("nope"), Some(&sig), Some("n"), Some("1")).starts_with("invalid x-hotkey"));
        assert!(
            p(Some(&hk), Some("0x12"), Some("n"), Some("1")).starts_with("invalid x-signature")
        );
        assert!(p(Some(&hk), Some(&sig), Some("a:b"), Some("1")).starts_with("invalid x-nonce"));
        assert!(p(Some(&hk), Some(&sig), Some("n"), Some("-5")).starts_with("invalid x-timestamp"));
        assert!(
            p(Some(&hk), Some(&sig), Some("n"), Some("1e9")).starts_with("invalid x-timestamp")
        );
        let long = "n".repeat(MAX_NONCE_BYTES + 1);
        assert!(p(Some(&hk), Some(&sig), Some(&long), Some("1")).starts_with("invalid x-nonce"));
        // Without 0x is fine too.
        assert!(SignedHeaders::parse(Some(&hk), Some(&sig[2..]), Some("n"), Some("1")).is_ok());
    }

    #[test]
    fn freshness_window() {
        let h = SignedHeaders {
            hotkey: String::new(),
            public_key: [0; 32],
            signature: [0; 64],
            nonce: "n".into(),
            timestamp_text: "1000".into(),
            timestamp: 1000,
        };
        assert!(h.check_fresh(1300, 300).is_ok());
        assert!(h.check_fresh(700, 300).is_ok());
        assert_eq!(h.check_fresh(1301, 300), Err(SignatureError::Stale));
        assert_eq!(h.check_fresh(699, 300), Err(SignatureError::Stale));
    }

    #[test]
    fn keys_from_text_and_debug_hides_the_seed() {
        let hex_seed = hex::encode([7u8; 32]);
        let a = MinerKey::from_text(&format!("0x{hex_seed}\n")).unwrap();
        let b = MinerKey::from_text(&format!(
            "{{\"secretSeed\": \"0x{hex_seed}\", \"ss58Address\": \"x\"}}"
        ))
        .unwrap();
        assert_eq!(a.public_key(), key().public_key());
        assert_eq!(b.public_key(), key().public_key());
        assert_eq!(MinerKey::from_text("zz").unwrap_err(), KeyError::BadSeed);
        let dbg = format!("{a:?}");
        assert!(!dbg.contains(&hex_seed) && !dbg.contains("0707"), "{dbg}");
    }

    proptest! {
        /// The header parser never panics.
        #[test]
        fn parse_is_total(
            h in proptest::option::of(".{0,60}"),
            s in proptest::option::of("(0x)?[0-9a-fA-F]{0,140}"),
            n in proptest::option::of(".{0,140}"),
            t in proptest::option::of(".{0,20}"),
        ) {
            let _ = SignedHeaders::parse(h.as_deref(), s.as_deref(), n.as_deref(), t.as_deref());
        }

        /// ss58 encode then decode is the identity for any key and prefix.
        #[test]
        fn ss58_round_trip(pk in any::<[u8; 32]>(), prefix in 0u16..16384) {
            prop_assert_eq!(ss58_decode(&ss58_encode(&pk, prefix)), Ok(pk));
        }

        /// Hashing a body piece by piece, however it is cut, gives the
        /// hash of the whole body.
        #[test]
        fn streamed_digest_equals_whole_body_digest(
            body in proptest::collection::vec(any::<u8>(), 0..4096),
            cuts in proptest::collection::vec(any::<usize>(), 0..8),
        ) {
            let mut points: Vec<usize> = cuts.iter().map(|c| c % (body.len() + 1)).collect();
            points.push(0);
            points.push(body.len());
            points.sort_unstable();
            let mut d = BodyDigest::new();
            for w in points.windows(2) {
                d.update(&body[w[0]..w[1]]);
            }
            prop_assert_eq!(d.finish_hex(), body_sha256_hex(&body));
        }

        /// Flipping any bit of a valid signature makes it invalid.
        #[test]
        fn flipped_signature_bits_fail(bit in 0usize..512) {
            let k = key();
            let mut sig = k.sign(b"m");
            sig[bit / 8] ^= 1 << (bit % 8);
            prop_assert!(verify(&k.public_key(), b"m", &sig).is_err());
        }
    }
}
