//! The validator's hotkey, read from a Bittensor wallet directory
//! (`<wallets>/<name>/hotkeys/<hotkey>`), so BASE signs with the same key
//! the operator registered with `btcli` — and never shows its seed.

use std::fmt;
use std::path::{Path, PathBuf};
use std::str::FromStr;

use secrecy::{ExposeSecret, ExposeSecretMut, SecretBox, SecretString};
use serde::Deserialize;
use subxt::utils::AccountId32;
use subxt_signer::sr25519::Keypair;

/// Why the hotkey could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum WalletError {
    /// The hotkey file does not exist or cannot be read.
    #[error("cannot read hotkey file '{path}': {source}")]
    Read {
        /// The file.
        path: String,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The file is encrypted (`btcli` `--use-password`); BASE needs an
    /// unencrypted hotkey, as validators run unattended.
    #[error("hotkey file '{path}' is encrypted; BASE needs an unencrypted hotkey file")]
    Encrypted {
        /// The file.
        path: String,
    },
    /// The file is not the JSON `btcli` writes.
    #[error("hotkey file '{path}' is not valid keyfile JSON: {reason}")]
    BadJson {
        /// The file.
        path: String,
        /// What is wrong (never the file's content).
        reason: String,
    },
    /// `secretSeed` is not 32 bytes of hex.
    #[error("hotkey file '{path}': secretSeed {reason}")]
    BadSeed {
        /// The file.
        path: String,
        /// What is wrong (never the value).
        reason: String,
    },
    /// The key derived from the seed is not the `ss58Address` in the file.
    #[error("hotkey file '{path}': the seed gives address {derived} but the file says {declared}")]
    AddressMismatch {
        /// The file.
        path: String,
        /// Derived from the seed.
        derived: String,
        /// `ss58Address` in the file.
        declared: String,
    },
    /// A wallet or hotkey name that would escape the wallet directory.
    #[error("invalid {what} name '{name}': use letters, digits, '-', '_' or '.'")]
    BadName {
        /// `wallet` or `hotkey`.
        what: &'static str,
        /// The name.
        name: String,
    },
}

/// Where the hotkey lives: `<path>/<name>/hotkeys/<hotkey>`, as `btcli`
/// lays out wallets (default path `~/.bittensor/wallets`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WalletLocation {
    /// The wallets directory.
    pub path: PathBuf,
    /// The wallet (coldkey) name.
    pub name: String,
    /// The hotkey name.
    pub hotkey: String,
}

impl WalletLocation {
    /// The hotkey file, after checking the names stay inside `path`.
    pub fn hotkey_file(&self) -> Result<PathBuf, WalletError> {
        check_name("wallet", &self.name)?;
        check_name("hotkey", &self.hotkey)?;
        Ok(self
            .path
            .join(&self.name)
            .join("hotkeys")
            .join(&self.hotkey))
    }
}

fn check_name(what: &'static str, name: &str) -> Result<(), WalletError> {
    let ok = !name.is_empty()
        && name != "."
        && name != ".."
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
    if ok {
        Ok(())
    } else {
        Err(WalletError::BadName {
            what,
            name: name.to_string(),
        })
    }
}

/// The subset of `btcli`'s keyfile JSON BASE reads. The other fields
/// (`accountId`, `publicKey`, `privateKey`, `secretPhrase`) are ignored
/// and never kept.
#[derive(Deserialize)]
struct KeyfileJson {
    #[serde(rename = "secretSeed")]
    secret_seed: Option<SecretString>,
    #[serde(rename = "ss58Address")]
    ss58_address: Option<String>,
}

/// A loaded sr25519 hotkey. `Debug` shows only the address.
#[derive(Clone)]
pub struct Hotkey {
    keypair: Keypair,
    address: String,
}

impl fmt::Debug for Hotkey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Hotkey")
            .field("address", &self.address)
            .finish_non_exhaustive()
    }
}

impl Hotkey {
    /// Loads the hotkey of `location`.
    pub fn load(location: &WalletLocation) -> Result<Self, WalletError> {
        Self::from_file(&location.hotkey_file()?)
    }

    /// Loads a hotkey file.
    pub fn from_file(path: &Path) -> Result<Self, WalletError> {
        let shown = path.display().to_string();
        let bytes = std::fs::read(path).map_err(|source| WalletError::Read {
            path: shown.clone(),
            source,
        })?;
        // btcli's encrypted formats start with these markers; name them
        // rather than report a JSON syntax error.
        if bytes.starts_with(b"$NACL") || bytes.starts_with(b"$BT") || bytes.starts_with(b"gAAAAA")
        {
            return Err(WalletError::Encrypted { path: shown });
        }
        // serde_json's message names a line and column, never the content.
        let parsed: KeyfileJson =
            serde_json::from_slice(&bytes).map_err(|e| WalletError::BadJson {
                path: shown.clone(),
                reason: e.to_string(),
            })?;
        drop(bytes);
        let seed = parsed.secret_seed.ok_or_else(|| WalletError::BadJson {
            path: shown.clone(),
            reason: "missing field `secretSeed`".into(),
        })?;
        let hotkey = Self::from_seed_hex(&seed).map_err(|reason| WalletError::BadSeed {
            path: shown.clone(),
            reason,
        })?;
        if let Some(declared) = parsed.ss58_address
            && declared != hotkey.address
        {
            return Err(WalletError::AddressMismatch {
                path: shown,
                derived: hotkey.address,
                declared,
            });
        }
        Ok(hotkey)
    }

    /// A hotkey from a `0x`-prefixed (or bare) 32-byte hex seed — the
    /// `secretSeed` of a keyfile. The error text never contains the seed.
    pub fn from_seed_hex(seed: &SecretString) -> Result<Self, String> {
        let text = seed.expose_secret().trim();
        let text = text.strip_prefix("0x").unwrap_or(text);
        if text.len() != 64 {
            return Err(format!(
                "must be 32 bytes of hex (64 digits), got {} characters",
                text.len()
            ));
        }
        let mut raw = SecretBox::new(Box::new([0u8; 32]));
        hex::decode_to_slice(text, raw.expose_secret_mut().as_mut_slice())
            .map_err(|_| "is not valid hex".to_string())?;
        Self::from_seed(&raw)
    }

    /// A hotkey from its 32-byte mini secret (the Substrate seed).
    pub fn from_seed(seed: &SecretBox<[u8; 32]>) -> Result<Self, String> {
        let keypair = Keypair::from_secret_key(*seed.expose_secret())
            .map_err(|_| "is not a valid sr25519 seed".to_string())?;
        let address = AccountId32(keypair.public_key().0).to_string();
        Ok(Self { keypair, address })
    }

    /// The ss58 address (generic prefix 42, as `btcli` shows it).
    pub fn address(&self) -> &str {
        &self.address
    }

    /// The 32-byte public key / account id.
    pub fn account_id(&self) -> [u8; 32] {
        self.keypair.public_key().0
    }

    /// The signer subxt uses.
    pub fn keypair(&self) -> &Keypair {
        &self.keypair
    }
}

/// The 32-byte account id of an ss58 address.
pub fn account_from_ss58(address: &str) -> Option<[u8; 32]> {
    AccountId32::from_str(address).ok().map(|a| a.0)
}

/// The ss58 address (prefix 42) of a 32-byte account id.
pub fn ss58_from_account(account: &[u8; 32]) -> String {
    AccountId32(*account).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    // Alice's well-known dev seed (`//Alice` derives to this mini secret)
    // and address: public test material, not a secret.
    const ALICE_SEED: &str = "0xe5be9a5092b81bca64be81d212e7f2f9eba183bb7a90954f7b76361f6edb5c0a";
    const ALICE: &str = "5GrwvaEF5zXb26Fz9rcQpDWS57CtERHpNehXCPcNoHGKutQY";

    fn write(dir: &Path, name: &str, hotkey: &str, body: &str) -> WalletLocation {
        let d = dir.join(name).join("hotkeys");
        std::fs::create_dir_all(&d).unwrap();
        std::fs::write(d.join(hotkey), body).unwrap();
        WalletLocation {
            path: dir.to_path_buf(),
            name: name.into(),
            hotkey: hotkey.into(),
        }
    }

    #[test]
    fn loads_a_btcli_keyfile_and_hides_the_seed() {
        let dir = tempfile::tempdir().unwrap();
        let loc = write(
            dir.path(),
            "validator",
            "default",
            &format!(
                r#"{{"accountId":"0xd43593c715fdd31c61141abd04a99fd6822c8558854ccde39a5684e7a56da27d","publicKey":"0xd43593c715fdd31c61141abd04a99fd6822c8558854ccde39a5684e7a56da27d","secretPhrase":"bottom drive obey lake curtain smoke basket hold race lonely fit walk","secretSeed":"{ALICE_SEED}","ss58Address":"{ALICE}"}}"#
            ),
        );
        let k = Hotkey::load(&loc).unwrap();
        assert_eq!(k.address(), ALICE);
        assert_eq!(
            hex::encode(k.account_id()),
            "d43593c715fdd31c61141abd04a99fd6822c8558854ccde39a5684e7a56da27d"
        );
        let shown = format!("{k:?}");
        assert!(!shown.contains("e5be9a50"), "{shown}");
        assert!(shown.contains(ALICE));
        assert_eq!(account_from_ss58(ALICE), Some(k.account_id()));
        assert_eq!(ss58_from_account(&k.account_id()), ALICE);
    }

    #[test]
    fn clear_errors_that_never_echo_the_seed() {
        let dir = tempfile::tempdir().unwrap();
        let missing = WalletLocation {
            path: dir.path().into(),
            name: "nope".into(),
            hotkey: "default".into(),
        };
        assert!(matches!(
            Hotkey::load(&missing),
            Err(WalletError::Read { .. })
        ));

        let loc = write(dir.path(), "w", "bad-json", "{not json");
        let e = Hotkey::load(&loc).unwrap_err();
        assert!(matches!(e, WalletError::BadJson { .. }), "{e}");

        let loc = write(dir.path(), "w", "no-seed", r#"{"ss58Address":"x"}"#);
        let e = Hotkey::load(&loc).unwrap_err().to_string();
        assert!(e.contains("secretSeed"), "{e}");

        let loc = write(
            dir.path(),
            "w",
            "bad-hex",
            r#"{"secretSeed":"0xzzbe9a5092b81bca64be81d212e7f2f9eba183bb7a90954f7b76361f6edb5c0a"}"#,
        );
        let e = Hotkey::load(&loc).unwrap_err().to_string();
        assert!(e.contains("not valid hex") && !e.contains("zzbe9a"), "{e}");

        let loc = write(dir.path(), "w", "short", r#"{"secretSeed":"0xabcd"}"#);
        let e = Hotkey::load(&loc).unwrap_err().to_string();
        assert!(e.contains("64 digits") && !e.contains("abcd"), "{e}");

        let loc = write(
            dir.path(),
            "w",
            "mismatch",
            &format!(
                r#"{{"secretSeed":"{ALICE_SEED}","ss58Address":"5FHneW46xGXgs5mUiveU4sbTyGBzmstUspZC92UhjJM694ty"}}"#
            ),
        );
        let e = Hotkey::load(&loc).unwrap_err();
        assert!(matches!(e, WalletError::AddressMismatch { .. }), "{e}");
        assert!(!e.to_string().contains("e5be9a50"));

        let loc = write(dir.path(), "w", "enc", "$NACL....");
        assert!(matches!(
            Hotkey::load(&loc),
            Err(WalletError::Encrypted { .. })
        ));

        let bad = WalletLocation {
            path: dir.path().into(),
            name: "..".into(),
            hotkey: "default".into(),
        };
        assert!(matches!(
            Hotkey::load(&bad),
            Err(WalletError::BadName { .. })
        ));
    }
}
