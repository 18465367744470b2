//! [`ChainSubmitter`] over Bittensor's subtensor with subxt's dynamic API:
//! calls and storage are named by string and checked against the metadata
//! the node serves, so a runtime upgrade that keeps the names and shapes
//! keeps working without regenerating code.

use std::sync::Arc;

use async_trait::async_trait;
use subxt::dynamic;
use subxt::transactions::TransactionStatus;
use subxt::utils::AccountId32;
use subxt::{OnlineClient, OnlineClientAtBlock, SubstrateConfig};

use super::wallet::Hotkey;
use super::{ChainError, ChainSubmitter, Inclusion, WeightsPolicy};

/// The pallet that holds everything BASE touches (index 7 on Finney).
pub const PALLET: &str = "SubtensorModule";

/// Subtensor signs and hashes like a standard Substrate chain (AccountId32,
/// MultiSignature, BlakeTwo256); its own transaction extensions carry no
/// data and are skipped by subxt's defaults.
pub type SubtensorConfig = SubstrateConfig;

/// The arguments of `reveal_weights`: netuid, uids, values, salt, version key.
pub type RevealArgs = (u16, Vec<u16>, Vec<u16>, Vec<u16>, u64);

/// `SubtensorModule::set_weights(netuid, dests, weights, version_key)`.
pub fn set_weights_call(
    netuid: u16,
    uids: &[u16],
    values: &[u16],
    version_key: u64,
) -> subxt::transactions::DynamicPayload<(u16, Vec<u16>, Vec<u16>, u64)> {
    dynamic::tx(
        PALLET,
        "set_weights",
        (netuid, uids.to_vec(), values.to_vec(), version_key),
    )
}

/// `SubtensorModule::commit_weights(netuid, commit_hash)`.
pub fn commit_weights_call(
    netuid: u16,
    commit_hash: [u8; 32],
) -> subxt::transactions::DynamicPayload<(u16, [u8; 32])> {
    dynamic::tx(PALLET, "commit_weights", (netuid, commit_hash))
}

/// `SubtensorModule::reveal_weights(netuid, uids, values, salt, version_key)`.
pub fn reveal_weights_call(
    netuid: u16,
    uids: &[u16],
    values: &[u16],
    salt: &[u16],
    version_key: u64,
) -> subxt::transactions::DynamicPayload<RevealArgs> {
    dynamic::tx(
        PALLET,
        "reveal_weights",
        (
            netuid,
            uids.to_vec(),
            values.to_vec(),
            salt.to_vec(),
            version_key,
        ),
    )
}

/// Blocks a submitted extrinsic stays valid (about 13 minutes at 12 s).
pub const MORTALITY_BLOCKS: u64 = 64;

/// `SubtensorModule::Uids`: (netuid, hotkey) → uid.
pub fn uids_address() -> subxt::storage::DynamicAddress<(u16, AccountId32), u16> {
    dynamic::storage(PALLET, "Uids")
}

/// `SubtensorModule::Keys`: (netuid, uid) → hotkey.
pub fn keys_address() -> subxt::storage::DynamicAddress<(u16, u16), AccountId32> {
    dynamic::storage(PALLET, "Keys")
}

/// A `SubtensorModule` map keyed by netuid (`Tempo`, `LastUpdate`, …).
pub fn netuid_map_address<V: subxt::ext::scale_decode::DecodeAsType>(
    item: &str,
) -> subxt::storage::DynamicAddress<(u16,), V> {
    dynamic::storage(PALLET, item)
}

/// When a submitted extrinsic counts as done.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum WaitFor {
    /// Included in a best block (faster; may be re-orged out).
    InBlock,
    /// In a finalized block (GRANDPA; a few blocks later).
    #[default]
    Finalized,
}

/// A connection to a subtensor node: storage reads, no key.
#[derive(Clone)]
pub struct Subtensor {
    endpoint: String,
    client: OnlineClient<SubtensorConfig>,
}

impl std::fmt::Debug for Subtensor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Subtensor")
            .field("endpoint", &self.endpoint)
            .finish_non_exhaustive()
    }
}

fn conn(endpoint: &str, e: impl std::fmt::Display) -> ChainError {
    ChainError::Connection {
        endpoint: endpoint.to_string(),
        reason: e.to_string(),
    }
}

fn storage_err(item: &str, e: impl std::fmt::Display) -> ChainError {
    ChainError::Storage {
        item: format!("{PALLET}::{item}"),
        reason: e.to_string(),
    }
}

impl Subtensor {
    /// Connects (`ws://` or `wss://`) and downloads the runtime metadata.
    pub async fn connect(endpoint: &str) -> Result<Self, ChainError> {
        let client = if endpoint.starts_with("ws://") {
            // subxt refuses plain ws:// to non-local hosts unless asked; a
            // local or private node is a normal validator setup.
            OnlineClient::<SubtensorConfig>::from_insecure_url(endpoint).await
        } else {
            OnlineClient::<SubtensorConfig>::from_url(endpoint).await
        }
        .map_err(|e| conn(endpoint, e))?;
        let me = Self {
            endpoint: endpoint.to_string(),
            client,
        };
        let at = me.at().await?;
        check_metadata(at.metadata_ref())?;
        Ok(me)
    }

    /// The endpoint this client talks to.
    pub fn endpoint(&self) -> &str {
        &self.endpoint
    }

    async fn at(&self) -> Result<OnlineClientAtBlock<SubtensorConfig>, ChainError> {
        self.client
            .at_current_block()
            .await
            .map_err(|e| conn(&self.endpoint, e))
    }

    /// Every registered hotkey of `netuid` with its uid (`SubtensorModule::Keys`).
    pub async fn hotkeys(&self, netuid: u16) -> Result<Vec<(u16, [u8; 32])>, ChainError> {
        let at = self.at().await?;
        let mut entries = at
            .storage()
            .iter(keys_address(), (netuid,))
            .await
            .map_err(|e| storage_err("Keys", e))?;
        let mut out = Vec::new();
        while let Some(kv) = entries.next().await {
            let kv = kv.map_err(|e| storage_err("Keys", e))?;
            let key = kv.key().map_err(|e| storage_err("Keys", e))?;
            let uid = key
                .part(1)
                .ok_or_else(|| storage_err("Keys", "key has no uid part"))?
                .decode_as::<u16>()
                .map_err(|e| storage_err("Keys", e))?
                .ok_or_else(|| storage_err("Keys", "uid part is hashed, not readable"))?;
            let account = kv
                .value()
                .decode_as::<AccountId32>()
                .map_err(|e| storage_err("Keys", e))?;
            out.push((uid, account.0));
        }
        out.sort_unstable_by_key(|(uid, _)| *uid);
        Ok(out)
    }

    /// The subnet's `MinAllowedWeights`.
    pub async fn min_allowed_weights(&self, netuid: u16) -> Result<u16, ChainError> {
        let at = self.at().await?;
        Ok(read_map::<u16>(&at, "MinAllowedWeights", netuid)
            .await?
            .unwrap_or(0))
    }

    /// The weights policy for `netuid` and the standing of `account`.
    pub async fn policy_for(
        &self,
        netuid: u16,
        account: &[u8; 32],
    ) -> Result<WeightsPolicy, ChainError> {
        let at = self.at().await?;
        let current_block = at.block_number();
        let uid = {
            at.storage()
                .try_fetch(uids_address(), (netuid, AccountId32(*account)))
                .await
                .map_err(|e| storage_err("Uids", e))?
                .map(|v| v.decode())
                .transpose()
                .map_err(|e| storage_err("Uids", e))?
        };
        let last_update = match uid {
            Some(uid) => {
                let updates = read_map::<Vec<u64>>(&at, "LastUpdate", netuid)
                    .await?
                    .unwrap_or_default();
                updates.get(usize::from(uid)).copied().unwrap_or(0)
            }
            None => 0,
        };
        // Newer runtimes say which commit-reveal scheme is live; absent
        // means the pre-CRv3 runtime where commit-reveal is v2.
        let has_version = at
            .metadata_ref()
            .pallet_by_name(PALLET)
            .and_then(|p| p.storage())
            .and_then(|s| s.entry_by_name("CommitRevealWeightsVersion"))
            .is_some();
        let commit_reveal_version = if has_version {
            let addr = dynamic::storage::<(), u16>(PALLET, "CommitRevealWeightsVersion");
            at.storage()
                .try_fetch(addr, ())
                .await
                .map_err(|e| storage_err("CommitRevealWeightsVersion", e))?
                .map(|v| v.decode())
                .transpose()
                .map_err(|e| storage_err("CommitRevealWeightsVersion", e))?
        } else {
            None
        };
        Ok(WeightsPolicy {
            netuid,
            current_block,
            commit_reveal_enabled: read_map(&at, "CommitRevealWeightsEnabled", netuid)
                .await?
                .unwrap_or(false),
            commit_reveal_version,
            reveal_period_epochs: read_map(&at, "RevealPeriodEpochs", netuid)
                .await?
                .unwrap_or(1),
            version_key: read_map(&at, "WeightsVersionKey", netuid)
                .await?
                .unwrap_or(0),
            weights_rate_limit: read_map(&at, "WeightsSetRateLimit", netuid)
                .await?
                .unwrap_or(0),
            tempo: read_map(&at, "Tempo", netuid).await?.unwrap_or(0),
            min_allowed_weights: read_map(&at, "MinAllowedWeights", netuid)
                .await?
                .unwrap_or(0),
            max_weight_limit: read_map(&at, "MaxWeightsLimit", netuid)
                .await?
                .unwrap_or(u16::MAX),
            uid,
            last_update,
        })
    }
}

/// A `StorageMap` keyed by netuid, decoded as `V`; `None` when the runtime
/// has neither a value nor a default.
async fn read_map<V: subxt::ext::scale_decode::DecodeAsType>(
    at: &OnlineClientAtBlock<SubtensorConfig>,
    item: &str,
    netuid: u16,
) -> Result<Option<V>, ChainError> {
    at.storage()
        .try_fetch(netuid_map_address::<V>(item), (netuid,))
        .await
        .map_err(|e| storage_err(item, e))?
        .map(|v| v.decode())
        .transpose()
        .map_err(|e| storage_err(item, e))
}

/// Checks that the runtime has the pallet, calls and storage BASE uses,
/// naming the first thing missing.
pub fn check_metadata(metadata: &subxt::Metadata) -> Result<(), ChainError> {
    let pallet = metadata
        .pallet_by_name(PALLET)
        .ok_or_else(|| ChainError::Metadata(format!("no pallet {PALLET}")))?;
    for call in ["set_weights", "commit_weights", "reveal_weights"] {
        if pallet.call_variant_by_name(call).is_none() {
            return Err(ChainError::Metadata(format!("no call {PALLET}::{call}")));
        }
    }
    Ok(())
}

/// Signs with a wallet hotkey and submits to subtensor.
#[derive(Clone, Debug)]
pub struct SubtensorSubmitter {
    chain: Subtensor,
    hotkey: Arc<Hotkey>,
    wait: WaitFor,
}

impl SubtensorSubmitter {
    /// A submitter signing with `hotkey`.
    pub fn new(chain: Subtensor, hotkey: Hotkey, wait: WaitFor) -> Self {
        Self {
            chain,
            hotkey: Arc::new(hotkey),
            wait,
        }
    }

    /// Signs, submits and waits per [`WaitFor`]; a dispatch error (such as
    /// `SubtensorModule::SettingWeightsTooFast`) is returned as
    /// [`ChainError::Rejected`] with the chain's own name for it.
    async fn submit<C>(&self, name: &str, call: &C) -> Result<Inclusion, ChainError>
    where
        C: subxt::transactions::Payload,
    {
        let endpoint = self.chain.endpoint();
        let rejected = |e: &dyn std::fmt::Display| ChainError::Rejected {
            call: name.to_string(),
            reason: e.to_string(),
        };
        let mut txs = self
            .chain
            .client
            .transactions()
            .await
            .map_err(|e| conn(endpoint, e))?;
        let mut progress = txs
            .sign_and_submit_then_watch(
                call,
                self.hotkey.keypair(),
                // Mortal: an extrinsic stuck in the pool expires instead of
                // landing much later with an outdated vector.
                subxt::config::SubstrateExtrinsicParamsBuilder::<SubtensorConfig>::new()
                    .mortal(MORTALITY_BLOCKS)
                    .build(),
            )
            .await
            .map_err(|e| rejected(&e))?;
        let extrinsic_hash = format!("{:?}", progress.extrinsic_hash());
        while let Some(status) = progress.next().await {
            let status = status.map_err(|e| conn(endpoint, e))?;
            let in_block = match status {
                TransactionStatus::InFinalizedBlock(b) => b,
                TransactionStatus::InBestBlock(b) if self.wait == WaitFor::InBlock => b,
                TransactionStatus::Error { message }
                | TransactionStatus::Invalid { message }
                | TransactionStatus::Dropped { message } => return Err(rejected(&message)),
                _ => continue,
            };
            in_block
                .wait_for_success()
                .await
                .map_err(|e| rejected(&e))?;
            let block_number = match in_block.at().await {
                Ok(at) => Some(at.block_number()),
                Err(e) => {
                    tracing::warn!(error = %e, "could not read the inclusion block's number");
                    None
                }
            };
            return Ok(Inclusion {
                block_hash: format!("{:?}", in_block.block_hash()),
                block_number,
                extrinsic_hash,
            });
        }
        Err(conn(
            endpoint,
            format!("the node closed the {name} status stream before inclusion"),
        ))
    }
}

#[async_trait]
impl ChainSubmitter for SubtensorSubmitter {
    fn account_id(&self) -> [u8; 32] {
        self.hotkey.account_id()
    }

    async fn policy(&self, netuid: u16) -> Result<WeightsPolicy, ChainError> {
        self.chain
            .policy_for(netuid, &self.hotkey.account_id())
            .await
    }

    async fn set_weights(
        &self,
        netuid: u16,
        uids: &[u16],
        values: &[u16],
        version_key: u64,
    ) -> Result<Inclusion, ChainError> {
        self.submit(
            "set_weights",
            &set_weights_call(netuid, uids, values, version_key),
        )
        .await
    }

    async fn commit_weights(
        &self,
        netuid: u16,
        commit_hash: [u8; 32],
    ) -> Result<Inclusion, ChainError> {
        self.submit("commit_weights", &commit_weights_call(netuid, commit_hash))
            .await
    }

    async fn reveal_weights(
        &self,
        netuid: u16,
        uids: &[u16],
        values: &[u16],
        salt: &[u16],
        version_key: u64,
    ) -> Result<Inclusion, ChainError> {
        self.submit(
            "reveal_weights",
            &reveal_weights_call(netuid, uids, values, salt, version_key),
        )
        .await
    }
}
