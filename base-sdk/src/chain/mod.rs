//! The validator's side of the chain: what the subnet allows
//! ([`WeightsPolicy`]), how weights get there ([`ChainSubmitter`]), and the
//! pieces behind it — [`commit`] (pure conversion and hashing), [`wallet`]
//! (the hotkey), [`subtensor`] (subxt), [`metagraph`] (hotkeys → uids from
//! chain storage) and [`submitter`] (the loop that puts the master's vector
//! on-chain).

pub mod commit;
pub mod metagraph;
pub mod submitter;
pub mod subtensor;
pub mod wallet;

use async_trait::async_trait;
use serde::{Deserialize, Serialize};

pub use commit::CommitError;
pub use wallet::{Hotkey, WalletError};

/// Why a chain operation failed.
#[derive(Debug, thiserror::Error)]
pub enum ChainError {
    /// The node could not be reached or answered with an RPC error.
    #[error("subtensor endpoint {endpoint}: {reason}")]
    Connection {
        /// The endpoint (no credentials are ever part of it).
        endpoint: String,
        /// What went wrong.
        reason: String,
    },
    /// The runtime does not look like subtensor (a pallet, call or storage
    /// item BASE relies on is missing or has another shape).
    #[error("incompatible runtime metadata: {0}")]
    Metadata(String),
    /// A storage read failed or decoded to something unexpected.
    #[error("reading {item}: {reason}")]
    Storage {
        /// `Pallet::Item`.
        item: String,
        /// Why.
        reason: String,
    },
    /// The extrinsic was built and sent but the chain refused it (invalid
    /// transaction, or a dispatch error such as
    /// `SubtensorModule::SettingWeightsTooFast`).
    #[error("{call} rejected by the chain: {reason}")]
    Rejected {
        /// The call, e.g. `set_weights`.
        call: String,
        /// The chain's error, as it names it.
        reason: String,
    },
    /// Our hotkey has no uid on the subnet.
    #[error("hotkey {hotkey} is not registered on netuid {netuid}")]
    NotRegistered {
        /// The ss58 address.
        hotkey: String,
        /// The subnet.
        netuid: u16,
    },
    /// The subnet requires a commit-reveal scheme BASE does not implement.
    #[error(
        "netuid {netuid} requires timelocked commit-reveal (commit-reveal version {version}, drand/CRv3+); \
         BASE supports direct set_weights and commit-reveal v2 (commit_weights/reveal_weights) only"
    )]
    UnsupportedCommitReveal {
        /// The subnet.
        netuid: u16,
        /// `SubtensorModule::CommitRevealWeightsVersion`.
        version: u16,
    },
    /// The hotkey could not be loaded.
    #[error(transparent)]
    Wallet(#[from] WalletError),
    /// The vector could not be converted.
    #[error(transparent)]
    Commit(#[from] CommitError),
}

/// The subnet's weight-setting rules and where our uid stands, read at one
/// block.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WeightsPolicy {
    /// The subnet.
    pub netuid: u16,
    /// The block these values were read at.
    pub current_block: u64,
    /// `CommitRevealWeightsEnabled`.
    pub commit_reveal_enabled: bool,
    /// `CommitRevealWeightsVersion` where the runtime has it (≥ 3 means
    /// timelocked commits, which BASE does not implement).
    pub commit_reveal_version: Option<u16>,
    /// `RevealPeriodEpochs`: reveal happens this many epochs after commit.
    pub reveal_period_epochs: u64,
    /// `WeightsVersionKey`: extrinsics must carry at least this.
    pub version_key: u64,
    /// `WeightsSetRateLimit`, in blocks.
    pub weights_rate_limit: u64,
    /// `Tempo`, in blocks.
    pub tempo: u16,
    /// `MinAllowedWeights`.
    pub min_allowed_weights: u16,
    /// `MaxWeightsLimit` (u16 scale; 65535 = no limit).
    pub max_weight_limit: u16,
    /// Our uid on the subnet, if registered.
    pub uid: Option<u16>,
    /// `LastUpdate[uid]`: the block our uid last set or committed weights
    /// (0 = never).
    pub last_update: u64,
}

/// How weights go on-chain for a subnet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SubmitMode {
    /// `set_weights` directly.
    Direct,
    /// `commit_weights` now, `reveal_weights` in the reveal window.
    CommitReveal,
}

impl WeightsPolicy {
    /// Which path to take, or the error naming the unsupported version.
    pub fn mode(&self) -> Result<SubmitMode, ChainError> {
        if !self.commit_reveal_enabled {
            return Ok(SubmitMode::Direct);
        }
        match self.commit_reveal_version {
            Some(v) if v >= 3 => Err(ChainError::UnsupportedCommitReveal {
                netuid: self.netuid,
                version: v,
            }),
            _ => Ok(SubmitMode::CommitReveal),
        }
    }

    /// Blocks to wait before the rate limit lets our uid set weights again.
    pub fn rate_limit_wait(&self) -> u64 {
        commit::rate_limit_wait(
            self.last_update,
            self.current_block,
            self.weights_rate_limit,
        )
    }

    /// The inclusive block range where a commit made at `commit_block` can
    /// be revealed.
    pub fn reveal_window(&self, commit_block: u64) -> (u64, u64) {
        commit::reveal_window(
            self.netuid,
            self.tempo,
            self.reveal_period_epochs,
            commit_block,
        )
    }

    /// Whether a commit made at `commit_block` can no longer be revealed.
    pub fn commit_expired(&self, commit_block: u64) -> bool {
        commit::commit_expired(
            self.netuid,
            self.tempo,
            self.reveal_period_epochs,
            commit_block,
            self.current_block,
        )
    }
}

/// Where an extrinsic landed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Inclusion {
    /// The block hash, `0x…`.
    pub block_hash: String,
    /// Its number when known (used to place a commit's reveal window).
    pub block_number: Option<u64>,
    /// The extrinsic hash, `0x…`.
    pub extrinsic_hash: String,
}

/// Puts weights on-chain for one hotkey. Implemented over subxt by
/// [`subtensor::SubtensorClient`]; tests use the mockall mock or a fake.
#[cfg_attr(any(test, feature = "mocks"), mockall::automock)]
#[async_trait]
pub trait ChainSubmitter: Send + Sync {
    /// The signing hotkey's 32-byte account id (the `who` of the commit hash).
    fn account_id(&self) -> [u8; 32];

    /// The subnet's weights policy and our uid's standing, at the best block.
    async fn policy(&self, netuid: u16) -> Result<WeightsPolicy, ChainError>;

    /// `SubtensorModule::set_weights(netuid, dests, weights, version_key)`;
    /// waits for inclusion.
    async fn set_weights(
        &self,
        netuid: u16,
        uids: &[u16],
        values: &[u16],
        version_key: u64,
    ) -> Result<Inclusion, ChainError>;

    /// `SubtensorModule::commit_weights(netuid, commit_hash)`; waits for
    /// inclusion.
    async fn commit_weights(
        &self,
        netuid: u16,
        commit_hash: [u8; 32],
    ) -> Result<Inclusion, ChainError>;

    /// `SubtensorModule::reveal_weights(netuid, uids, values, salt,
    /// version_key)`; waits for inclusion.
    async fn reveal_weights(
        &self,
        netuid: u16,
        uids: &[u16],
        values: &[u16],
        salt: &[u16],
        version_key: u64,
    ) -> Result<Inclusion, ChainError>;
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy() -> WeightsPolicy {
        WeightsPolicy {
            netuid: 1,
            current_block: 1000,
            commit_reveal_enabled: false,
            commit_reveal_version: None,
            reveal_period_epochs: 1,
            version_key: 0,
            weights_rate_limit: 100,
            tempo: 99,
            min_allowed_weights: 1,
            max_weight_limit: u16::MAX,
            uid: Some(3),
            last_update: 950,
        }
    }

    #[test]
    fn mode_names_the_unsupported_version() {
        let mut p = policy();
        assert_eq!(p.mode().unwrap(), SubmitMode::Direct);
        p.commit_reveal_enabled = true;
        assert_eq!(p.mode().unwrap(), SubmitMode::CommitReveal);
        p.commit_reveal_version = Some(2);
        assert_eq!(p.mode().unwrap(), SubmitMode::CommitReveal);
        p.commit_reveal_version = Some(4);
        let e = p.mode().unwrap_err().to_string();
        assert!(e.contains("version 4") && e.contains("netuid 1"), "{e}");
    }

    #[test]
    fn rate_limit_from_policy() {
        assert_eq!(policy().rate_limit_wait(), 50);
    }
}
