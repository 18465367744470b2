//! `base-server submitter`: wires the validator's submitter loop
//! (`base_sdk::chain::submitter`) to the operator's settings — the master
//! URL, the wallet hotkey, the chain endpoint and the pending-commit file.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use base_sdk::chain::submitter::{
    HttpWeightsFeed, PendingStore, Submitter, SubmitterConfig, SubmitterError, render,
};
use base_sdk::chain::subtensor::{Subtensor, SubtensorSubmitter, WaitFor};
use base_sdk::chain::wallet::{Hotkey, WalletLocation};
use base_sdk::chain::{ChainError, ChainSubmitter};
use base_sdk::config::Settings;

/// Flags of `base-server submitter`.
#[derive(Debug, Clone, Default)]
pub struct SubmitterOptions {
    /// Overrides `BASE_SUBMITTER_MASTER`.
    pub master: Option<String>,
    /// Print what would be submitted; submit nothing.
    pub dry_run: bool,
    /// In a dry run, also read the chain's policy with the hotkey (needs
    /// the endpoint and the wallet) to show the decision.
    pub check_chain: bool,
    /// One round, then exit (non-zero if it failed).
    pub once: bool,
    /// Overrides `BASE_SUBMITTER_INTERVAL_SECONDS`.
    pub interval: Option<u64>,
}

/// Why the submitter could not start or its single round failed.
#[derive(Debug, thiserror::Error)]
pub enum SubmitterRunError {
    /// The wallet or the chain.
    #[error(transparent)]
    Chain(#[from] ChainError),
    /// The round itself.
    #[error(transparent)]
    Submitter(#[from] SubmitterError),
    /// A setting (the master public key).
    #[error(transparent)]
    Config(#[from] base_sdk::config::ConfigError),
}

/// The wallet location from the settings (`~/.bittensor/wallets` unless
/// `BASE_WALLET_PATH` says otherwise).
pub fn wallet_location(settings: &Settings) -> WalletLocation {
    let path = settings.wallet_path.clone().unwrap_or_else(|| {
        std::env::var_os("HOME")
            .map(PathBuf::from)
            .unwrap_or_default()
            .join(".bittensor")
            .join("wallets")
    });
    WalletLocation {
        path,
        name: settings.wallet_name.clone(),
        hotkey: settings.wallet_hotkey.clone(),
    }
}

/// The feed from the master at `master`: verifying every vector with
/// `BASE_MASTER_PUBKEY` and trusting `BASE_SUBMITTER_CA_FILE` for HTTPS.
/// Staging and production refuse to run without the public key; a
/// development submitter runs unverified and says so every round.
pub fn feed(settings: &Settings, master: &str) -> Result<HttpWeightsFeed, SubmitterRunError> {
    let mut feed = HttpWeightsFeed::new(master, Duration::from_secs(10), 4)?;
    if let Some(ca) = &settings.submitter_ca_file {
        feed = feed.with_ca_file(ca)?;
    }
    match settings.master_public_key()? {
        Some(key) => {
            tracing::info!(master_pubkey = %key, "every weight vector must carry the master's signature");
            feed = feed.with_master_key(key);
        }
        None if settings.environment.is_strict() => {
            return Err(base_sdk::config::ConfigError::Invalid(format!(
                "BASE_MASTER_PUBKEY is required in {}: the master's weights public key \
                 (`base-server weights-pubkey` on the master), so that a vector altered on \
                 the way is refused",
                settings.environment.as_str()
            ))
            .into());
        }
        None => tracing::warn!(
            "BASE_MASTER_PUBKEY is not set: weight vectors will NOT be verified (development only)"
        ),
    }
    if master.starts_with("http://")
        && !master.starts_with("http://127.")
        && !master.starts_with("http://localhost")
    {
        tracing::warn!(
            master,
            "the master is reached over plain HTTP; prefer https://"
        );
    }
    Ok(feed)
}

/// Builds the submitter from `settings` and `opts`.
pub async fn build(
    settings: &Settings,
    opts: &SubmitterOptions,
) -> Result<Submitter, SubmitterRunError> {
    let master = opts
        .master
        .clone()
        .unwrap_or_else(|| settings.submitter_master.clone());
    let feed = feed(settings, &master)?;
    let chain: Option<Arc<dyn ChainSubmitter>> = if opts.dry_run && !opts.check_chain {
        None
    } else {
        let hotkey = Hotkey::load(&wallet_location(settings)).map_err(ChainError::from)?;
        tracing::info!(hotkey = hotkey.address(), endpoint = %settings.chain_endpoint, "connecting to subtensor");
        let chain = Subtensor::connect(&settings.chain_endpoint).await?;
        let wait = if settings.submitter_in_block {
            WaitFor::InBlock
        } else {
            WaitFor::Finalized
        };
        Some(Arc::new(SubtensorSubmitter::new(chain, hotkey, wait)))
    };
    let state = settings.submitter_state_file.clone().unwrap_or_else(|| {
        settings
            .data_dir
            .join("submitter")
            .join("pending-commit.json")
    });
    Ok(Submitter::new(
        Arc::new(feed),
        chain,
        PendingStore::new(state),
        SubmitterConfig {
            netuid: settings.netuid,
            max_age: Duration::from_secs(settings.submitter_max_age_seconds),
            dry_run: opts.dry_run,
        },
    ))
}

/// Runs the submitter until `shutdown` (or one round with `--once`);
/// reports go to standard output.
pub async fn run(
    settings: Settings,
    opts: SubmitterOptions,
    shutdown: impl std::future::Future<Output = ()> + Send,
) -> Result<(), SubmitterRunError> {
    let submitter = build(&settings, &opts).await?;
    if opts.once {
        let outcome = submitter.tick().await?;
        print!("{}", render(&outcome));
        return Ok(());
    }
    let interval = Duration::from_secs(
        opts.interval
            .unwrap_or(settings.submitter_interval_seconds)
            .max(1),
    );
    tracing::info!(
        netuid = settings.netuid,
        interval_s = interval.as_secs(),
        dry_run = opts.dry_run,
        "BASE submitter started"
    );
    submitter
        .run(interval, |o| print!("{}", render(o)), shutdown)
        .await;
    tracing::info!("BASE submitter stopped");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use figment::providers::Serialized;

    fn settings(extra: serde_json::Value) -> Settings {
        Settings::from_figment(Settings::figment_with(None, Serialized::defaults(extra)))
            .expect("settings")
    }

    /// Staging/production refuse to submit unverified vectors; development
    /// runs (and warns); a malformed key is named.
    #[test]
    fn the_master_public_key_is_required_outside_development() {
        let e = feed(
            &settings(serde_json::json!({"environment": "production"})),
            "https://master.example",
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("BASE_MASTER_PUBKEY"), "{e}");
        assert!(feed(&settings(serde_json::json!({})), "http://127.0.0.1:1").is_ok());
        let key = base_sdk::weights::WeightsKey::from_seed(&[1; 32]).public();
        assert!(
            feed(
                &settings(serde_json::json!({"environment": "production", "master_pubkey": key.to_string()})),
                "https://master.example",
            )
            .is_ok()
        );
        let e = feed(
            &settings(serde_json::json!({"master_pubkey": "0xnope"})),
            "http://127.0.0.1:1",
        )
        .unwrap_err()
        .to_string();
        assert!(
            e.contains("BASE_MASTER_PUBKEY") && e.contains("0xnope"),
            "{e}"
        );
    }
}
