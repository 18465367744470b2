//! The validator loop that puts the master's vector on-chain: fetch
//! `/v1/weights/latest`, check it, respect the subnet's rate limit, then
//! `set_weights` — or commit now and reveal in the right epoch, with the
//! pending commit kept on disk so a restart can still reveal it.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use backon::{ExponentialBuilder, Retryable};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use super::commit::{self, CommitError};
use super::wallet::ss58_from_account;
use super::{ChainError, ChainSubmitter, Inclusion, SubmitMode, WeightsPolicy};
use crate::model::WeightsSnapshot;

/// Why a submitter tick did nothing useful.
#[derive(Debug, thiserror::Error)]
pub enum SubmitterError {
    /// The master could not be asked (after the retries).
    #[error("fetching the weights from the master: {0}")]
    Feed(String),
    /// The snapshot is not fit to submit.
    #[error("refusing the weights snapshot: {0}")]
    Snapshot(String),
    /// The vector could not be converted.
    #[error(transparent)]
    Commit(#[from] CommitError),
    /// The chain refused or could not be reached.
    #[error(transparent)]
    Chain(#[from] ChainError),
    /// The master's signature is missing or does not verify.
    #[error("refusing the weights snapshot: {0}")]
    Signature(#[source] crate::weights::signing::SigningError),
    /// The pending-commit file could not be read or written.
    #[error("pending commit file '{path}': {reason}")]
    Store {
        /// The file.
        path: String,
        /// Why.
        reason: String,
    },
}

/// Where the latest vector comes from: the master over HTTP, a fake in tests.
#[cfg_attr(any(test, feature = "mocks"), mockall::automock)]
#[async_trait]
pub trait WeightsFeed: Send + Sync {
    /// The master's latest snapshot.
    async fn latest(&self) -> Result<WeightsSnapshot, SubmitterError>;
}

/// Largest `/v1/weights/latest` body the submitter reads by default: a
/// vector for 65,536 uids with hotkeys and sources stays well under it, and
/// a hostile (or intercepted) master cannot make the validator buffer more.
pub const DEFAULT_MAX_RESPONSE_BYTES: usize = 4 << 20;

/// `GET <master>/v1/weights/latest` with bounded, jittered retries per
/// call; the loop calls again next interval, so it keeps trying for as
/// long as the master is down.
///
/// With the master's public key ([`HttpWeightsFeed::with_master_key`]),
/// every body must carry a valid `X-Base-Weights-Signature` over its exact
/// bytes or it is refused before it is parsed. The body is read as a
/// stream and refused once over [`DEFAULT_MAX_RESPONSE_BYTES`] (or the
/// configured cap). `https://` masters are verified against the system's
/// roots plus an optional CA file ([`HttpWeightsFeed::with_ca_file`]).
#[derive(Debug, Clone)]
pub struct HttpWeightsFeed {
    client: reqwest::Client,
    url: String,
    /// `url` as printed: credentials in it are masked.
    shown: String,
    retries: usize,
    timeout: Duration,
    master_key: Option<crate::weights::signing::WeightsPublicKey>,
    max_body: usize,
}

impl HttpWeightsFeed {
    /// A feed from the master at `base_url` (e.g. `http://127.0.0.1:18080`).
    pub fn new(base_url: &str, timeout: Duration, retries: usize) -> Result<Self, SubmitterError> {
        let url = format!("{}/v1/weights/latest", base_url.trim_end_matches('/'));
        Ok(Self {
            client: Self::client(timeout, Vec::new())?,
            shown: crate::config::redact_url(&url),
            url,
            retries,
            timeout,
            master_key: None,
            max_body: DEFAULT_MAX_RESPONSE_BYTES,
        })
    }

    fn client(
        timeout: Duration,
        cas: Vec<reqwest::Certificate>,
    ) -> Result<reqwest::Client, SubmitterError> {
        let mut b = reqwest::Client::builder()
            .timeout(timeout)
            // A redirect could lead to a plain-HTTP or foreign host.
            .redirect(reqwest::redirect::Policy::none());
        for ca in cas {
            b = b.add_root_certificate(ca);
        }
        b.build().map_err(|e| SubmitterError::Feed(e.to_string()))
    }

    /// Trusts the PEM CA certificate(s) in `path` (besides the system's
    /// roots) for an `https://` master.
    pub fn with_ca_file(mut self, path: &Path) -> Result<Self, SubmitterError> {
        let bad = |why: String| {
            SubmitterError::Feed(format!(
                "BASE_SUBMITTER_CA_FILE '{}': {why}",
                path.display()
            ))
        };
        let pem = std::fs::read(path).map_err(|e| bad(e.to_string()))?;
        let cas = reqwest::Certificate::from_pem_bundle(&pem)
            .map_err(|e| bad(format!("not PEM certificates: {e}")))?;
        if cas.is_empty() {
            return Err(bad("holds no PEM certificate".into()));
        }
        self.client = Self::client(self.timeout, cas)?;
        Ok(self)
    }

    /// Refuses every vector not signed by `key`.
    pub fn with_master_key(mut self, key: crate::weights::signing::WeightsPublicKey) -> Self {
        self.master_key = Some(key);
        self
    }

    /// Caps the body read (default [`DEFAULT_MAX_RESPONSE_BYTES`]).
    pub fn with_max_body(mut self, bytes: usize) -> Self {
        self.max_body = bytes;
        self
    }

    async fn once(&self) -> Result<WeightsSnapshot, SubmitterError> {
        use crate::weights::signing::SIGNATURE_HEADER;
        let mut resp =
            self.client.get(&self.url).send().await.map_err(|e| {
                SubmitterError::Feed(format!("{}: {}", self.shown, e.without_url()))
            })?;
        let status = resp.status();
        let too_big = || {
            SubmitterError::Snapshot(format!(
                "{} sent a response larger than {} bytes",
                self.shown, self.max_body
            ))
        };
        if resp
            .content_length()
            .is_some_and(|n| n > self.max_body as u64)
        {
            return Err(too_big());
        }
        let signature = resp
            .headers()
            .get(SIGNATURE_HEADER)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string);
        let mut body = Vec::new();
        while let Some(chunk) = resp
            .chunk()
            .await
            .map_err(|e| SubmitterError::Feed(format!("{}: {}", self.shown, e.without_url())))?
        {
            if body.len() + chunk.len() > self.max_body {
                return Err(too_big());
            }
            body.extend_from_slice(&chunk);
        }
        if !status.is_success() {
            let body: String = String::from_utf8_lossy(&body).chars().take(300).collect();
            return Err(SubmitterError::Feed(format!(
                "{} answered {status}: {body}",
                self.shown
            )));
        }
        match &self.master_key {
            Some(key) => key
                .verify(&body, signature.as_deref())
                .map_err(SubmitterError::Signature)?,
            None => tracing::warn!(
                url = %self.shown,
                "NOT VERIFYING the master's signature: no master public key configured (BASE_MASTER_PUBKEY); anyone between this validator and the master can change the vector"
            ),
        }
        serde_json::from_slice::<WeightsSnapshot>(&body).map_err(|e| {
            SubmitterError::Snapshot(format!("{} returned invalid JSON: {e}", self.shown))
        })
    }
}

#[async_trait]
impl WeightsFeed for HttpWeightsFeed {
    async fn latest(&self) -> Result<WeightsSnapshot, SubmitterError> {
        let backoff = ExponentialBuilder::default()
            .with_min_delay(Duration::from_millis(500))
            .with_max_delay(Duration::from_secs(10))
            .with_max_times(self.retries)
            .with_jitter();
        (|| self.once())
            .retry(backoff)
            // A bad body will not get better by asking again this tick.
            .when(|e| matches!(e, SubmitterError::Feed(_)))
            .await
    }
}

/// A checked vector, ready for the chain.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Prepared {
    /// The subnet.
    pub netuid: u16,
    /// The master's uids.
    pub uids: Vec<u16>,
    /// The master's float weights.
    pub weights: Vec<f64>,
    /// Uids as sent (zeros dropped).
    pub chain_uids: Vec<u16>,
    /// u16 values as sent (max upscaled to 65535).
    pub chain_values: Vec<u16>,
    /// When the master computed it.
    pub computed_at: DateTime<Utc>,
    /// When it stops being usable.
    pub expires_at: DateTime<Utc>,
}

/// Checks a snapshot (CONTRACTS §6: netuid, `expires_at` in the future,
/// freshness, equal non-empty lengths) and converts it for the chain.
pub fn prepare(
    snapshot: &WeightsSnapshot,
    netuid: u16,
    now: DateTime<Utc>,
    max_age: Duration,
) -> Result<Prepared, SubmitterError> {
    let bad = |m: String| Err(SubmitterError::Snapshot(m));
    if snapshot.netuid != netuid {
        return bad(format!(
            "it is for netuid {}, this submitter serves netuid {netuid}",
            snapshot.netuid
        ));
    }
    if snapshot.expires_at <= now {
        return bad(format!("it expired at {}", snapshot.expires_at));
    }
    let age = now.signed_duration_since(snapshot.computed_at);
    let max = chrono::Duration::from_std(max_age).unwrap_or(chrono::Duration::MAX);
    if age > max {
        return bad(format!(
            "it is stale: computed at {}, {}s ago (limit {}s)",
            snapshot.computed_at,
            age.num_seconds(),
            max_age.as_secs()
        ));
    }
    if snapshot.uids.is_empty() {
        return bad("it has no uids".into());
    }
    if snapshot.uids.len() != snapshot.weights.len() {
        return bad(format!(
            "{} uids but {} weights",
            snapshot.uids.len(),
            snapshot.weights.len()
        ));
    }
    let (chain_uids, chain_values) = commit::to_u16_weights(&snapshot.uids, &snapshot.weights)?;
    if chain_uids.is_empty() {
        return bad("every weight is zero".into());
    }
    Ok(Prepared {
        netuid,
        uids: snapshot.uids.clone(),
        weights: snapshot.weights.clone(),
        chain_uids,
        chain_values,
        computed_at: snapshot.computed_at,
        expires_at: snapshot.expires_at,
    })
}

/// A commit made but not yet revealed: everything the reveal needs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PendingCommit {
    /// The subnet.
    pub netuid: u16,
    /// The hotkey that committed (ss58), so another key never reveals it.
    pub hotkey: String,
    /// `0x…` blake2-256 commit hash.
    pub commit_hash: String,
    /// Committed uids.
    pub uids: Vec<u16>,
    /// Committed u16 values.
    pub values: Vec<u16>,
    /// The salt.
    pub salt: Vec<u16>,
    /// The version key hashed in.
    pub version_key: u64,
    /// The block the commit landed in.
    pub commit_block: u64,
    /// The block hash it landed in (empty until the commit is confirmed).
    pub commit_block_hash: String,
    /// Whether the commit extrinsic is known to have landed. The record is
    /// written before the extrinsic is sent (so a crash cannot lose the
    /// salt of a commit that landed); until then `commit_block` is the
    /// block it was sent at. Files without the field were written after
    /// inclusion.
    #[serde(default = "confirmed_default")]
    pub confirmed: bool,
}

fn confirmed_default() -> bool {
    true
}

/// The pending commit on disk: one JSON file, replaced atomically
/// (written to a temporary file, synced, renamed), so a crash leaves the
/// old or the new content, never half of either.
#[derive(Debug, Clone)]
pub struct PendingStore {
    path: PathBuf,
}

impl PendingStore {
    /// A store at `path` (its directory is created on first save).
    pub fn new(path: impl Into<PathBuf>) -> Self {
        Self { path: path.into() }
    }

    /// The file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    fn err(&self, e: impl std::fmt::Display) -> SubmitterError {
        SubmitterError::Store {
            path: self.path.display().to_string(),
            reason: e.to_string(),
        }
    }

    /// The pending commit, if any.
    pub fn load(&self) -> Result<Option<PendingCommit>, SubmitterError> {
        match std::fs::read(&self.path) {
            Ok(bytes) => serde_json::from_slice(&bytes)
                .map(Some)
                .map_err(|e| self.err(e)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(self.err(e)),
        }
    }

    /// Records `pending`, replacing what was there.
    pub fn save(&self, pending: &PendingCommit) -> Result<(), SubmitterError> {
        use std::io::Write;
        let dir = self
            .path
            .parent()
            .filter(|p| !p.as_os_str().is_empty())
            .unwrap_or(Path::new("."));
        std::fs::create_dir_all(dir).map_err(|e| self.err(e))?;
        let body = serde_json::to_vec_pretty(pending).map_err(|e| self.err(e))?;
        let mut tmp = tempfile_in(dir).map_err(|e| self.err(e))?;
        tmp.1.write_all(&body).map_err(|e| self.err(e))?;
        tmp.1.sync_all().map_err(|e| self.err(e))?;
        std::fs::rename(&tmp.0, &self.path).map_err(|e| {
            let _ = std::fs::remove_file(&tmp.0);
            self.err(e)
        })?;
        // The rename itself is durable only once the directory is synced.
        #[cfg(unix)]
        std::fs::File::open(dir)
            .and_then(|d| d.sync_all())
            .map_err(|e| self.err(e))?;
        Ok(())
    }

    /// Forgets the pending commit (revealed or expired).
    pub fn clear(&self) -> Result<(), SubmitterError> {
        match std::fs::remove_file(&self.path) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(self.err(e)),
        }
    }
}

/// A new file beside the target, named so two processes never collide.
fn tempfile_in(dir: &Path) -> std::io::Result<(PathBuf, std::fs::File)> {
    let name = format!(
        ".pending-{}-{}.tmp",
        std::process::id(),
        uuid::Uuid::new_v4()
    );
    let path = dir.join(name);
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create_new(true);
    // The salt is what lets anyone holding it reveal (or predict) the
    // committed vector: readable by this user only, from the first byte.
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        opts.mode(0o600);
    }
    let file = opts.open(&path)?;
    Ok((path, file))
}

/// What the chain's rules say to do now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// `set_weights` now.
    SetWeights,
    /// Commit now.
    Commit,
    /// Reveal the pending commit now.
    Reveal,
    /// The pending commit's window has not opened: wait.
    WaitForReveal {
        /// First block of the reveal window.
        first_block: u64,
    },
    /// The rate limit forbids another update yet.
    RateLimited {
        /// Blocks still to wait.
        blocks: u64,
    },
}

/// The decision, from the chain's policy and the pending commit (if any):
/// a pending commit is revealed in its window (or waited for) before any
/// new commit; otherwise the rate limit decides between acting and waiting.
/// An expired pending commit must be dropped by the caller first.
pub fn plan(policy: &WeightsPolicy, pending: Option<&PendingCommit>) -> Result<Action, ChainError> {
    let mode = policy.mode()?;
    if mode == SubmitMode::CommitReveal
        && let Some(p) = pending
    {
        let (first, last) = policy.reveal_window(p.commit_block);
        return Ok(if policy.current_block < first {
            Action::WaitForReveal { first_block: first }
        } else if policy.current_block <= last {
            Action::Reveal
        } else {
            // Past the window: the caller should have dropped it; say when
            // it would have been, rather than pretend.
            Action::WaitForReveal { first_block: first }
        });
    }
    let wait = policy.rate_limit_wait();
    if wait > 0 {
        return Ok(Action::RateLimited { blocks: wait });
    }
    Ok(match mode {
        SubmitMode::Direct => Action::SetWeights,
        SubmitMode::CommitReveal => Action::Commit,
    })
}

/// What one tick did.
#[derive(Debug, Clone, PartialEq)]
pub enum TickOutcome {
    /// Dry run: what would have been sent (and the plan, when a chain was
    /// asked).
    DryRun {
        /// The checked vector.
        prepared: Prepared,
        /// The decision, if a chain was available to decide.
        action: Option<Action>,
    },
    /// `set_weights` landed.
    Set(Inclusion),
    /// `commit_weights` landed; the reveal is pending.
    Committed(Inclusion),
    /// `reveal_weights` landed.
    Revealed(Inclusion),
    /// Nothing to do yet.
    Waiting(Action),
}

/// Submitter settings.
#[derive(Debug, Clone)]
pub struct SubmitterConfig {
    /// The subnet.
    pub netuid: u16,
    /// Oldest `computed_at` accepted.
    pub max_age: Duration,
    /// Print instead of submitting.
    pub dry_run: bool,
}

/// One validator's submitter.
pub struct Submitter {
    feed: Arc<dyn WeightsFeed>,
    chain: Option<Arc<dyn ChainSubmitter>>,
    store: PendingStore,
    config: SubmitterConfig,
}

impl Submitter {
    /// A submitter; `chain` may be `None` only for a dry run.
    pub fn new(
        feed: Arc<dyn WeightsFeed>,
        chain: Option<Arc<dyn ChainSubmitter>>,
        store: PendingStore,
        config: SubmitterConfig,
    ) -> Self {
        Self {
            feed,
            chain,
            store,
            config,
        }
    }

    /// One round: a pending reveal first (it needs no new vector), else
    /// fetch, check and submit or commit.
    pub async fn tick(&self) -> Result<TickOutcome, SubmitterError> {
        let netuid = self.config.netuid;
        let Some(chain) = self.chain.clone() else {
            let snapshot = self.feed.latest().await?;
            let prepared = prepare(&snapshot, netuid, Utc::now(), self.config.max_age)?;
            return if self.config.dry_run {
                Ok(TickOutcome::DryRun {
                    prepared,
                    action: None,
                })
            } else {
                Err(SubmitterError::Chain(ChainError::Connection {
                    endpoint: "(none)".into(),
                    reason: "no chain configured; only --dry-run works without one".into(),
                }))
            };
        };
        let policy = chain.policy(netuid).await?;
        if policy.uid.is_none() {
            return Err(ChainError::NotRegistered {
                hotkey: ss58_from_account(&chain.account_id()),
                netuid,
            }
            .into());
        }
        let me = ss58_from_account(&chain.account_id());
        let mut pending = self.store.load()?;
        if let Some(p) = &pending
            && (p.netuid != netuid || p.hotkey != me || policy.commit_expired(p.commit_block))
        {
            tracing::warn!(
                commit_block = p.commit_block,
                current_block = policy.current_block,
                "dropping a pending commit that can no longer be revealed by this hotkey"
            );
            if !self.config.dry_run {
                self.store.clear()?;
            }
            pending = None;
        }
        let action = plan(&policy, pending.as_ref())?;
        match (action, pending) {
            (Action::Reveal, Some(p)) => {
                if self.config.dry_run {
                    let prepared = Prepared {
                        netuid,
                        uids: p.uids.clone(),
                        weights: Vec::new(),
                        chain_uids: p.uids.clone(),
                        chain_values: p.values.clone(),
                        computed_at: Utc::now(),
                        expires_at: Utc::now(),
                    };
                    return Ok(TickOutcome::DryRun {
                        prepared,
                        action: Some(Action::Reveal),
                    });
                }
                let inc = match chain
                    .reveal_weights(netuid, &p.uids, &p.values, &p.salt, p.version_key)
                    .await
                {
                    Ok(inc) => inc,
                    Err(e @ ChainError::Rejected { .. }) if !p.confirmed => {
                        // The commit was never seen landing and the chain
                        // has no match for it: drop it so the next tick
                        // commits afresh instead of retrying until expiry.
                        tracing::warn!(error = %e, "dropping an unconfirmed commit the chain does not know");
                        self.store.clear()?;
                        return Err(e.into());
                    }
                    Err(e) => return Err(e.into()),
                };
                self.store.clear()?;
                Ok(TickOutcome::Revealed(inc))
            }
            (a @ (Action::WaitForReveal { .. } | Action::RateLimited { .. }), _) => {
                if self.config.dry_run {
                    let snapshot = self.feed.latest().await?;
                    let prepared = prepare(&snapshot, netuid, Utc::now(), self.config.max_age)?;
                    return Ok(TickOutcome::DryRun {
                        prepared,
                        action: Some(a),
                    });
                }
                Ok(TickOutcome::Waiting(a))
            }
            (action, _) => {
                let snapshot = self.feed.latest().await?;
                let prepared = prepare(&snapshot, netuid, Utc::now(), self.config.max_age)?;
                if self.config.dry_run {
                    return Ok(TickOutcome::DryRun {
                        prepared,
                        action: Some(action),
                    });
                }
                let version_key = policy.version_key;
                if action == Action::SetWeights {
                    let inc = chain
                        .set_weights(
                            netuid,
                            &prepared.chain_uids,
                            &prepared.chain_values,
                            version_key,
                        )
                        .await?;
                    return Ok(TickOutcome::Set(inc));
                }
                let salt = commit::generate_salt(&mut rand::thread_rng());
                let account = chain.account_id();
                let hash = commit::commit_hash(
                    &account,
                    netuid,
                    &prepared.chain_uids,
                    &prepared.chain_values,
                    &salt,
                    version_key,
                );
                // What the reveal needs goes to disk (0600, atomically,
                // synced) before the commit is sent: a commit whose salt
                // was lost to a crash could never be revealed.
                let mut record = PendingCommit {
                    netuid,
                    hotkey: me,
                    commit_hash: format!("0x{}", hex::encode(hash)),
                    uids: prepared.chain_uids,
                    values: prepared.chain_values,
                    salt,
                    version_key,
                    commit_block: policy.current_block,
                    commit_block_hash: String::new(),
                    confirmed: false,
                };
                self.store.save(&record)?;
                let inc = match chain.commit_weights(netuid, hash).await {
                    Ok(inc) => inc,
                    Err(e) => {
                        // Refused by the chain: nothing landed, nothing to
                        // reveal. Any other failure may have landed: keep it.
                        if matches!(e, ChainError::Rejected { .. }) {
                            self.store.clear()?;
                        }
                        return Err(e.into());
                    }
                };
                record.commit_block = inc.block_number.unwrap_or_else(|| {
                    tracing::warn!("commit block number unknown; using the policy's block");
                    policy.current_block
                });
                record.commit_block_hash = inc.block_hash.clone();
                record.confirmed = true;
                self.store.save(&record)?;
                Ok(TickOutcome::Committed(inc))
            }
        }
    }

    /// Ticks every `interval` until `shutdown`; every failure is logged and
    /// retried at the next tick. Dry-run reports go to `report`.
    pub async fn run(
        self,
        interval: Duration,
        report: impl Fn(&TickOutcome) + Send + Sync,
        shutdown: impl std::future::Future<Output = ()> + Send,
    ) {
        tokio::pin!(shutdown);
        loop {
            match self.tick().await {
                Ok(outcome) => {
                    match &outcome {
                        TickOutcome::Set(i) => {
                            tracing::info!(block = %i.block_hash, extrinsic = %i.extrinsic_hash, "weights set")
                        }
                        TickOutcome::Committed(i) => {
                            tracing::info!(block = %i.block_hash, "weights committed; reveal pending")
                        }
                        TickOutcome::Revealed(i) => {
                            tracing::info!(block = %i.block_hash, "weights revealed")
                        }
                        TickOutcome::Waiting(a) => tracing::info!(?a, "waiting"),
                        TickOutcome::DryRun { .. } => {}
                    }
                    report(&outcome);
                }
                Err(e) => {
                    tracing::error!(error = %e, "submitter tick failed; retrying next interval")
                }
            }
            tokio::select! {
                _ = &mut shutdown => return,
                _ = tokio::time::sleep(interval) => {}
            }
        }
    }
}

/// The human-readable dry-run report: the vector, the u16 values sent and
/// the decision.
pub fn render(outcome: &TickOutcome) -> String {
    use std::fmt::Write;
    let mut out = String::new();
    match outcome {
        TickOutcome::DryRun { prepared, action } => {
            let _ = writeln!(
                out,
                "dry run: netuid {} — vector computed {} (expires {})",
                prepared.netuid,
                prepared.computed_at.to_rfc3339(),
                prepared.expires_at.to_rfc3339()
            );
            let _ = writeln!(
                out,
                "action: {}",
                match action {
                    None => "set_weights or commit (no chain asked)".to_string(),
                    Some(a) => format!("{a:?}"),
                }
            );
            let _ = writeln!(out, "{:>6}  {:>12}  {:>6}", "uid", "weight", "u16");
            for (i, uid) in prepared.uids.iter().enumerate() {
                let w = prepared.weights.get(i).copied();
                let v = prepared
                    .chain_uids
                    .iter()
                    .position(|u| u == uid)
                    .and_then(|j| prepared.chain_values.get(j));
                let w = w.map_or_else(|| "-".to_string(), |w| format!("{w:.6}"));
                let v = v.map_or_else(|| "0 (dropped)".to_string(), |v| v.to_string());
                let _ = writeln!(out, "{uid:>6}  {w:>12}  {v:>6}");
            }
            let _ = writeln!(
                out,
                "set_weights(netuid={}, dests={:?}, weights={:?})",
                prepared.netuid, prepared.chain_uids, prepared.chain_values
            );
        }
        TickOutcome::Set(i) => {
            let _ = writeln!(out, "weights set in block {}", i.block_hash);
        }
        TickOutcome::Committed(i) => {
            let _ = writeln!(out, "weights committed in block {}", i.block_hash);
        }
        TickOutcome::Revealed(i) => {
            let _ = writeln!(out, "weights revealed in block {}", i.block_hash);
        }
        TickOutcome::Waiting(a) => {
            let _ = writeln!(out, "waiting: {a:?}");
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn policy(cr: bool, current: u64, last: u64) -> WeightsPolicy {
        WeightsPolicy {
            netuid: 1,
            current_block: current,
            commit_reveal_enabled: cr,
            commit_reveal_version: None,
            reveal_period_epochs: 1,
            version_key: 0,
            weights_rate_limit: 100,
            tempo: 99,
            min_allowed_weights: 1,
            max_weight_limit: u16::MAX,
            uid: Some(1),
            last_update: last,
        }
    }

    fn pending(block: u64) -> PendingCommit {
        PendingCommit {
            netuid: 1,
            hotkey: "5x".into(),
            commit_hash: "0x00".into(),
            uids: vec![1],
            values: vec![65535],
            salt: vec![1; 8],
            version_key: 0,
            commit_block: block,
            commit_block_hash: "0x01".into(),
            confirmed: true,
        }
    }

    #[test]
    fn plan_table() {
        // Direct: rate limit decides.
        assert_eq!(
            plan(&policy(false, 1000, 0), None).unwrap(),
            Action::SetWeights
        );
        assert_eq!(
            plan(&policy(false, 1000, 950), None).unwrap(),
            Action::RateLimited { blocks: 50 }
        );
        // A pending commit is ignored when commit-reveal is off.
        assert_eq!(
            plan(&policy(false, 1000, 0), Some(&pending(900))).unwrap(),
            Action::SetWeights
        );
        // Commit-reveal: commit, then wait for the window, then reveal.
        assert_eq!(plan(&policy(true, 1000, 0), None).unwrap(), Action::Commit);
        // Block 1000 is epoch 10 (blocks 998..=1097); reveal in epoch 11.
        assert_eq!(
            plan(&policy(true, 1000, 1000), Some(&pending(1000))).unwrap(),
            Action::WaitForReveal { first_block: 1098 }
        );
        assert_eq!(
            plan(&policy(true, 1098, 1000), Some(&pending(1000))).unwrap(),
            Action::Reveal
        );
        assert_eq!(
            plan(&policy(true, 1197, 1000), Some(&pending(1000))).unwrap(),
            Action::Reveal
        );
    }

    fn snapshot(uids: Vec<u16>, weights: Vec<f64>) -> WeightsSnapshot {
        let now = Utc::now();
        WeightsSnapshot {
            netuid: 1,
            chain_endpoint: String::new(),
            uids,
            weights,
            hotkey_weights: Default::default(),
            computed_at: now,
            expires_at: now + chrono::Duration::seconds(60),
            source_challenges: vec![],
            metagraph_updated_at: None,
            status: Default::default(),
            last_epoch: None,
        }
    }

    #[test]
    fn prepare_refuses_empty_and_all_zero_vectors() {
        let now = Utc::now();
        let max = Duration::from_secs(60);
        let e = prepare(&snapshot(vec![], vec![]), 1, now, max).unwrap_err();
        assert!(e.to_string().contains("no uids"), "{e}");
        let e = prepare(&snapshot(vec![1, 2], vec![0.0, 0.0]), 1, now, max).unwrap_err();
        assert!(e.to_string().contains("every weight is zero"), "{e}");
    }

    proptest! {
        #[test]
        fn prepared_values_are_a_subset_in_order(
            pairs in proptest::collection::btree_map(0u16..4096, 0.0f64..1.0, 1..100)
        ) {
            let (uids, weights): (Vec<u16>, Vec<f64>) = pairs.into_iter().unzip();
            let s = snapshot(uids.clone(), weights.clone());
            match prepare(&s, 1, Utc::now(), Duration::from_secs(60)) {
                Ok(p) => {
                    prop_assert_eq!(p.chain_uids.len(), p.chain_values.len());
                    let mut it = uids.iter();
                    for u in &p.chain_uids {
                        prop_assert!(it.any(|x| x == u), "order or membership broken");
                    }
                    prop_assert_eq!(p.chain_values.iter().max().copied(), Some(u16::MAX));
                }
                Err(e) => prop_assert!(weights.iter().all(|w| *w == 0.0), "{}", e),
            }
        }
    }
}
