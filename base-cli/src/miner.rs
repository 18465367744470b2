//! `base miner sign`: the four signature headers a miner sends to the
//! master's signed upload bridge (CONTRACTS.md §3.3), so a submission can
//! be made with plain curl.
//!
//! The hotkey seed is read from a file (`--key-file` or
//! `BASE_MINER_KEY_FILE`) or from `BASE_MINER_SEED`, never from an
//! argument: arguments are visible to every user in `ps`. The signing
//! itself is `base_sdk::proxy::signature::MinerKey::sign_request`.

use std::path::{Path, PathBuf};

use base_sdk::proxy::signature::{KeyError, MinerHeaders, MinerKey, SignedTarget, random_nonce};
use clap::{Args, Subcommand};

/// Env var naming a file with the miner's hotkey seed.
pub const KEY_FILE_VAR: &str = "BASE_MINER_KEY_FILE";
/// Env var holding the miner's hotkey seed itself.
pub const SEED_VAR: &str = "BASE_MINER_SEED";

/// `base miner …`.
#[derive(Debug, Subcommand)]
pub enum MinerCommand {
    /// Print the X-Hotkey, X-Signature, X-Nonce and X-Timestamp headers for
    /// a signed request (one `Name: value` per line, for `curl -H @file`;
    /// `--json` for an object).
    Sign(SignArgs),
}

/// `base miner sign`.
#[derive(Debug, Args)]
pub struct SignArgs {
    /// Challenge slug.
    #[arg(long)]
    pub slug: String,
    /// HTTP method of the request.
    #[arg(long, default_value = "POST")]
    pub method: String,
    /// Request path as it will be sent (default: the upload bridge,
    /// /v1/challenges/<slug>/submissions).
    #[arg(long)]
    pub path: Option<String>,
    /// File with the exact body that will be sent (default: empty body).
    #[arg(long, value_name = "PATH")]
    pub body_file: Option<PathBuf>,
    /// Subnet id.
    #[arg(long, env = "BASE_NETUID", default_value_t = 100)]
    pub netuid: u16,
    /// Nonce (default: 128 random bits as hex).
    #[arg(long)]
    pub nonce: Option<String>,
    /// Unix seconds (default: now).
    #[arg(long)]
    pub timestamp: Option<i64>,
    /// File with the hotkey seed: 32 bytes hex, or a Bittensor hotkey JSON
    /// with "secretSeed" [env: BASE_MINER_KEY_FILE]. BASE_MINER_SEED may
    /// hold the hex seed instead.
    #[arg(long, value_name = "PATH")]
    pub key_file: Option<PathBuf>,
}

/// Why the headers could not be made.
#[derive(Debug, thiserror::Error)]
pub enum MinerError {
    /// No key source given.
    #[error("no miner key: pass --key-file or set {KEY_FILE_VAR} (or {SEED_VAR})")]
    NoKey,
    /// A file could not be read.
    #[error("cannot read {what} '{path}': {reason}")]
    Read {
        /// What the file was for.
        what: &'static str,
        /// The file.
        path: PathBuf,
        /// The I/O error, as text.
        reason: String,
    },
    /// The seed is malformed (its text is never shown).
    #[error("miner key from {source_name}: {error}")]
    Key {
        /// Where it came from.
        source_name: String,
        /// What is wrong.
        error: KeyError,
    },
}

fn read(what: &'static str, path: &Path) -> Result<Vec<u8>, MinerError> {
    std::fs::read(path).map_err(|e| MinerError::Read {
        what,
        path: path.to_path_buf(),
        reason: e.to_string(),
    })
}

/// Loads the key: `--key-file`, then `BASE_MINER_KEY_FILE`, then
/// `BASE_MINER_SEED` (`env` looks a variable up).
pub fn load_key(
    key_file: Option<&Path>,
    env: impl Fn(&str) -> Option<String>,
) -> Result<MinerKey, MinerError> {
    let env_file = env(KEY_FILE_VAR)
        .filter(|v| !v.is_empty())
        .map(PathBuf::from);
    let (text, source_name) = if let Some(p) = key_file.map(Path::to_path_buf).or(env_file) {
        let bytes = read("the miner key file", &p)?;
        (
            String::from_utf8_lossy(&bytes).into_owned(),
            p.display().to_string(),
        )
    } else if let Some(seed) = env(SEED_VAR).filter(|v| !v.is_empty()) {
        (seed, SEED_VAR.to_string())
    } else {
        return Err(MinerError::NoKey);
    };
    MinerKey::from_text(&text).map_err(|error| MinerError::Key { source_name, error })
}

/// Makes the headers for `args` with `key`; `now` is the default timestamp.
pub fn sign(args: &SignArgs, key: &MinerKey, now: i64) -> Result<MinerHeaders, MinerError> {
    let body = match &args.body_file {
        Some(p) => read("the body file", p)?,
        None => Vec::new(),
    };
    let path = args
        .path
        .clone()
        .unwrap_or_else(|| format!("/v1/challenges/{}/submissions", args.slug));
    let target = SignedTarget {
        netuid: args.netuid,
        slug: &args.slug,
        method: &args.method,
        path: &path,
    };
    let nonce = args.nonce.clone().unwrap_or_else(random_nonce);
    Ok(key.sign_request(&target, &body, &nonce, args.timestamp.unwrap_or(now)))
}

/// `Name: value` lines.
pub fn header_lines(h: &MinerHeaders) -> String {
    h.pairs()
        .iter()
        .map(|(k, v)| format!("{k}: {v}\n"))
        .collect()
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use base_sdk::proxy::signature::{SignedHeaders, body_sha256_hex};

    fn args(body: Option<PathBuf>) -> SignArgs {
        SignArgs {
            slug: "quiz".into(),
            method: "post".into(),
            path: None,
            body_file: body,
            netuid: 100,
            nonce: Some("n-1".into()),
            timestamp: None,
            key_file: None,
        }
    }

    #[test]
    fn signs_what_the_bridge_verifies() {
        let dir = tempfile::tempdir().unwrap();
        let body = dir.path().join("body.json");
        std::fs::write(&body, b"{\"a\":1}").unwrap();
        let key_file = dir.path().join("seed");
        std::fs::write(&key_file, format!("0x{}\n", "11".repeat(32))).unwrap();
        let key = load_key(Some(&key_file), |_| None).unwrap();
        let h = sign(&args(Some(body)), &key, 1_700_000_000).unwrap();
        assert_eq!(h.timestamp, "1700000000");
        assert_eq!(h.nonce, "n-1");
        let parsed = SignedHeaders::parse(
            Some(&h.hotkey),
            Some(&h.signature),
            Some(&h.nonce),
            Some(&h.timestamp),
        )
        .unwrap();
        let target = SignedTarget {
            netuid: 100,
            slug: "quiz",
            method: "POST",
            path: "/v1/challenges/quiz/submissions",
        };
        parsed
            .verify(&target, &body_sha256_hex(b"{\"a\":1}"))
            .unwrap();
        let lines = header_lines(&h);
        assert!(lines.starts_with("X-Hotkey: 5"), "{lines}");
        assert_eq!(lines.lines().count(), 4);
    }

    #[test]
    fn key_sources_and_errors() {
        let seed = "22".repeat(32);
        let from_env = load_key(None, |k| (k == SEED_VAR).then(|| seed.clone())).unwrap();
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("k");
        std::fs::write(&f, &seed).unwrap();
        let f2 = f.clone();
        let from_env_file = load_key(None, move |k| {
            (k == KEY_FILE_VAR).then(|| f2.display().to_string())
        })
        .unwrap();
        assert_eq!(from_env.public_key(), from_env_file.public_key());
        assert!(matches!(load_key(None, |_| None), Err(MinerError::NoKey)));
        let e = load_key(None, |k| (k == SEED_VAR).then(|| "not-hex-secret".into()))
            .unwrap_err()
            .to_string();
        assert!(e.contains(SEED_VAR) && !e.contains("not-hex-secret"), "{e}");
        let e = load_key(Some(&dir.path().join("missing")), |_| None).unwrap_err();
        assert!(e.to_string().contains("missing"), "{e}");
    }
}
