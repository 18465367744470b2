//! The submitter loop against a fake chain and a fake master: every rule
//! of CONTRACTS §6 (master down, stale or foreign vectors, rejected
//! extrinsics, rate limit, commit → restart → reveal) without a node.

#![allow(clippy::unwrap_used, clippy::expect_used)]
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use base_sdk::chain::commit::commit_hash;
use base_sdk::chain::submitter::{
    Action, HttpWeightsFeed, MockWeightsFeed, PendingStore, Submitter, SubmitterConfig,
    SubmitterError, TickOutcome, WeightsFeed, render,
};
use base_sdk::chain::{ChainError, ChainSubmitter, Inclusion, WeightsPolicy};
use base_sdk::model::WeightsSnapshot;
use chrono::Utc;

const ACCOUNT: [u8; 32] = [7u8; 32];

fn snapshot(netuid: u16) -> WeightsSnapshot {
    let now = Utc::now();
    WeightsSnapshot {
        netuid,
        chain_endpoint: "ws://127.0.0.1:9944".into(),
        uids: vec![1, 2, 3],
        weights: vec![0.15, 0.65, 0.20],
        hotkey_weights: Default::default(),
        computed_at: now,
        expires_at: now + chrono::Duration::seconds(720),
        source_challenges: vec![],
        metagraph_updated_at: None,
        status: Default::default(),
        last_epoch: None,
    }
}

fn policy(commit_reveal: bool) -> WeightsPolicy {
    WeightsPolicy {
        netuid: 1,
        current_block: 1000,
        commit_reveal_enabled: commit_reveal,
        commit_reveal_version: None,
        reveal_period_epochs: 1,
        version_key: 42,
        weights_rate_limit: 100,
        tempo: 99,
        min_allowed_weights: 1,
        max_weight_limit: u16::MAX,
        uid: Some(9),
        last_update: 0,
    }
}

#[derive(Default)]
struct FakeState {
    policy: Option<WeightsPolicy>,
    sets: Vec<(Vec<u16>, Vec<u16>, u64)>,
    commits: Vec<([u8; 32], u64)>,
    reveals: Vec<Vec<u16>>,
    reject_next: Option<String>,
    /// The pending-commit file, looked at when `commit_weights` is called.
    watch_pending: Option<std::path::PathBuf>,
    /// What that file held at that moment: (mode, content).
    pending_at_commit: Option<(u32, String)>,
}

/// A chain that enforces what subtensor enforces for these calls: the
/// rate limit, the commit hash on reveal and the reveal window.
#[derive(Clone, Default)]
struct FakeChain(Arc<Mutex<FakeState>>);

impl FakeChain {
    fn with(policy: WeightsPolicy) -> Self {
        let me = Self::default();
        me.0.lock().unwrap().policy = Some(policy);
        me
    }
    fn advance(&self, blocks: u64) {
        let mut s = self.0.lock().unwrap();
        if let Some(p) = s.policy.as_mut() {
            p.current_block += blocks;
        }
    }
    fn inclusion(block: u64) -> Inclusion {
        Inclusion {
            block_hash: format!("0x{block:064x}"),
            block_number: Some(block),
            extrinsic_hash: "0xabc".into(),
        }
    }
    fn reject_if_asked(s: &mut FakeState, call: &str) -> Result<(), ChainError> {
        match s.reject_next.take() {
            Some(reason) => Err(ChainError::Rejected {
                call: call.into(),
                reason,
            }),
            None => Ok(()),
        }
    }
}

#[async_trait]
impl ChainSubmitter for FakeChain {
    fn account_id(&self) -> [u8; 32] {
        ACCOUNT
    }
    async fn policy(&self, _netuid: u16) -> Result<WeightsPolicy, ChainError> {
        Ok(self.0.lock().unwrap().policy.clone().unwrap())
    }
    async fn set_weights(
        &self,
        _netuid: u16,
        uids: &[u16],
        values: &[u16],
        version_key: u64,
    ) -> Result<Inclusion, ChainError> {
        let mut s = self.0.lock().unwrap();
        Self::reject_if_asked(&mut s, "set_weights")?;
        let p = s.policy.as_mut().unwrap();
        if p.rate_limit_wait() > 0 {
            return Err(ChainError::Rejected {
                call: "set_weights".into(),
                reason: "SubtensorModule::SettingWeightsTooFast".into(),
            });
        }
        p.last_update = p.current_block;
        let block = p.current_block;
        s.sets.push((uids.to_vec(), values.to_vec(), version_key));
        Ok(Self::inclusion(block))
    }
    async fn commit_weights(&self, _netuid: u16, hash: [u8; 32]) -> Result<Inclusion, ChainError> {
        let mut s = self.0.lock().unwrap();
        if let Some(path) = s.watch_pending.clone() {
            use std::os::unix::fs::PermissionsExt;
            s.pending_at_commit = std::fs::metadata(&path).ok().map(|m| {
                (
                    m.permissions().mode() & 0o777,
                    std::fs::read_to_string(&path).unwrap_or_default(),
                )
            });
        }
        Self::reject_if_asked(&mut s, "commit_weights")?;
        let p = s.policy.as_mut().unwrap();
        p.last_update = p.current_block;
        let block = p.current_block;
        s.commits.push((hash, block));
        Ok(Self::inclusion(block))
    }
    async fn reveal_weights(
        &self,
        netuid: u16,
        uids: &[u16],
        values: &[u16],
        salt: &[u16],
        version_key: u64,
    ) -> Result<Inclusion, ChainError> {
        let mut s = self.0.lock().unwrap();
        Self::reject_if_asked(&mut s, "reveal_weights")?;
        let p = s.policy.clone().unwrap();
        let h = commit_hash(&ACCOUNT, netuid, uids, values, salt, version_key);
        let Some((_, block)) = s.commits.iter().find(|(c, _)| *c == h).copied() else {
            return Err(ChainError::Rejected {
                call: "reveal_weights".into(),
                reason: "SubtensorModule::InvalidRevealCommitHashNotMatch".into(),
            });
        };
        let (first, last) = p.reveal_window(block);
        if p.current_block < first || p.current_block > last {
            return Err(ChainError::Rejected {
                call: "reveal_weights".into(),
                reason: "SubtensorModule::RevealTooEarly".into(),
            });
        }
        s.reveals.push(values.to_vec());
        Ok(Self::inclusion(p.current_block))
    }
}

fn feed_of(s: WeightsSnapshot) -> Arc<dyn WeightsFeed> {
    let mut f = MockWeightsFeed::new();
    f.expect_latest().returning(move || Ok(s.clone()));
    Arc::new(f)
}

fn config(dry_run: bool) -> SubmitterConfig {
    SubmitterConfig {
        netuid: 1,
        max_age: Duration::from_secs(1800),
        dry_run,
    }
}

fn submitter(feed: Arc<dyn WeightsFeed>, chain: &FakeChain, dir: &tempfile::TempDir) -> Submitter {
    Submitter::new(
        feed,
        Some(Arc::new(chain.clone())),
        PendingStore::new(dir.path().join("pending.json")),
        config(false),
    )
}

#[tokio::test]
async fn sets_weights_with_u16_values_and_the_chain_version_key() {
    let dir = tempfile::tempdir().unwrap();
    let chain = FakeChain::with(policy(false));
    let s = submitter(feed_of(snapshot(1)), &chain, &dir);
    let out = s.tick().await.unwrap();
    assert!(matches!(out, TickOutcome::Set(_)), "{out:?}");
    let state = chain.0.lock().unwrap();
    assert_eq!(
        state.sets,
        vec![(vec![1, 2, 3], vec![15123, 65535, 20165], 42)]
    );
}

#[tokio::test]
async fn respects_the_rate_limit() {
    let dir = tempfile::tempdir().unwrap();
    let mut p = policy(false);
    p.last_update = 950;
    let chain = FakeChain::with(p);
    let s = submitter(feed_of(snapshot(1)), &chain, &dir);
    let out = s.tick().await.unwrap();
    assert_eq!(
        out,
        TickOutcome::Waiting(Action::RateLimited { blocks: 50 })
    );
    assert!(chain.0.lock().unwrap().sets.is_empty());
    chain.advance(50);
    assert!(matches!(s.tick().await.unwrap(), TickOutcome::Set(_)));
}

#[tokio::test]
async fn refuses_stale_expired_and_foreign_vectors() {
    let dir = tempfile::tempdir().unwrap();
    let chain = FakeChain::with(policy(false));

    let mut stale = snapshot(1);
    stale.computed_at = Utc::now() - chrono::Duration::seconds(3600);
    let e = submitter(feed_of(stale), &chain, &dir)
        .tick()
        .await
        .unwrap_err();
    assert!(e.to_string().contains("stale"), "{e}");

    let mut expired = snapshot(1);
    expired.expires_at = Utc::now() - chrono::Duration::seconds(1);
    let e = submitter(feed_of(expired), &chain, &dir)
        .tick()
        .await
        .unwrap_err();
    assert!(e.to_string().contains("expired"), "{e}");

    let e = submitter(feed_of(snapshot(2)), &chain, &dir)
        .tick()
        .await
        .unwrap_err();
    assert!(e.to_string().contains("netuid 2"), "{e}");

    let mut uneven = snapshot(1);
    uneven.weights.pop();
    let e = submitter(feed_of(uneven), &chain, &dir)
        .tick()
        .await
        .unwrap_err();
    assert!(e.to_string().contains("3 uids but 2 weights"), "{e}");

    assert!(chain.0.lock().unwrap().sets.is_empty());
}

#[tokio::test]
async fn a_rejected_extrinsic_is_an_error_and_retried_next_tick() {
    let dir = tempfile::tempdir().unwrap();
    let chain = FakeChain::with(policy(false));
    chain.0.lock().unwrap().reject_next = Some("Invalid Transaction: Stale".into());
    let s = submitter(feed_of(snapshot(1)), &chain, &dir);
    let e = s.tick().await.unwrap_err();
    assert!(
        matches!(&e, SubmitterError::Chain(ChainError::Rejected { call, .. }) if call == "set_weights"),
        "{e}"
    );
    assert!(matches!(s.tick().await.unwrap(), TickOutcome::Set(_)));
}

#[tokio::test]
async fn master_down_is_an_error_and_the_loop_keeps_trying() {
    // A port nothing listens on: the HTTP feed fails after its retries.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    drop(listener);
    let feed = HttpWeightsFeed::new(&url, Duration::from_millis(200), 1).unwrap();
    let e = feed.latest().await.unwrap_err();
    assert!(matches!(e, SubmitterError::Feed(_)), "{e}");

    // The loop: down twice, then up; it must get to `set_weights`.
    let calls = Arc::new(Mutex::new(0u32));
    let mut f = MockWeightsFeed::new();
    let c = calls.clone();
    f.expect_latest().returning(move || {
        let mut n = c.lock().unwrap();
        *n += 1;
        if *n <= 2 {
            Err(SubmitterError::Feed("connection refused".into()))
        } else {
            Ok(snapshot(1))
        }
    });
    let dir = tempfile::tempdir().unwrap();
    let chain = FakeChain::with(policy(false));
    let s = submitter(Arc::new(f), &chain, &dir);
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    let done = chain.clone();
    let watcher = tokio::spawn(async move {
        for _ in 0..500 {
            if !done.0.lock().unwrap().sets.is_empty() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        let _ = tx.send(());
    });
    s.run(Duration::from_millis(5), |_| {}, async {
        let _ = rx.await;
    })
    .await;
    watcher.await.unwrap();
    assert!(*calls.lock().unwrap() >= 3);
    assert_eq!(chain.0.lock().unwrap().sets.len(), 1);
}

#[tokio::test]
async fn commit_then_restart_then_reveal_in_the_window() {
    let dir = tempfile::tempdir().unwrap();
    let chain = FakeChain::with(policy(true));
    let first = submitter(feed_of(snapshot(1)), &chain, &dir);
    let out = first.tick().await.unwrap();
    assert!(matches!(out, TickOutcome::Committed(_)), "{out:?}");
    let pending = PendingStore::new(dir.path().join("pending.json"))
        .load()
        .unwrap()
        .unwrap();
    assert_eq!(pending.values, vec![15123, 65535, 20165]);
    assert_eq!(pending.salt.len(), 8);
    assert_eq!(pending.commit_block, 1000);
    drop(first); // the process stops

    // Still the commit epoch: a new process waits for the window.
    let second = submitter(feed_of(snapshot(1)), &chain, &dir);
    let (w_first, _) = policy(true).reveal_window(1000);
    assert_eq!(
        second.tick().await.unwrap(),
        TickOutcome::Waiting(Action::WaitForReveal {
            first_block: w_first
        })
    );
    // In the window: it reveals what it committed, with the stored salt.
    chain.advance(w_first - 1000);
    let out = second.tick().await.unwrap();
    assert!(matches!(out, TickOutcome::Revealed(_)), "{out:?}");
    assert_eq!(
        chain.0.lock().unwrap().reveals,
        vec![vec![15123, 65535, 20165]]
    );
    assert!(
        PendingStore::new(dir.path().join("pending.json"))
            .load()
            .unwrap()
            .is_none()
    );
}

#[tokio::test]
async fn an_expired_commit_is_dropped_and_a_new_one_made() {
    let dir = tempfile::tempdir().unwrap();
    let chain = FakeChain::with(policy(true));
    let s = submitter(feed_of(snapshot(1)), &chain, &dir);
    assert!(matches!(s.tick().await.unwrap(), TickOutcome::Committed(_)));
    chain.advance(10_000);
    assert!(matches!(s.tick().await.unwrap(), TickOutcome::Committed(_)));
    assert_eq!(chain.0.lock().unwrap().commits.len(), 2);
}

#[tokio::test]
async fn timelocked_commit_reveal_is_refused_by_name() {
    let dir = tempfile::tempdir().unwrap();
    let mut p = policy(true);
    p.commit_reveal_version = Some(4);
    let chain = FakeChain::with(p);
    let e = submitter(feed_of(snapshot(1)), &chain, &dir)
        .tick()
        .await
        .unwrap_err();
    assert!(e.to_string().contains("commit-reveal version 4"), "{e}");
}

#[tokio::test]
async fn an_unregistered_hotkey_is_named() {
    let dir = tempfile::tempdir().unwrap();
    let mut p = policy(false);
    p.uid = None;
    let chain = FakeChain::with(p);
    let e = submitter(feed_of(snapshot(1)), &chain, &dir)
        .tick()
        .await
        .unwrap_err();
    assert!(e.to_string().contains("not registered on netuid 1"), "{e}");
}

#[tokio::test]
async fn dry_run_without_a_chain_prints_the_u16_values() {
    let dir = tempfile::tempdir().unwrap();
    let s = Submitter::new(
        feed_of(snapshot(1)),
        None,
        PendingStore::new(dir.path().join("pending.json")),
        config(true),
    );
    let out = s.tick().await.unwrap();
    let text = render(&out);
    assert!(
        text.contains("15123") && text.contains("65535") && text.contains("20165"),
        "{text}"
    );
    assert!(text.contains("0.650000"), "{text}");
}

#[tokio::test]
async fn dry_run_with_a_chain_submits_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let chain = FakeChain::with(policy(true));
    let s = Submitter::new(
        feed_of(snapshot(1)),
        Some(Arc::new(chain.clone())),
        PendingStore::new(dir.path().join("pending.json")),
        config(true),
    );
    let out = s.tick().await.unwrap();
    assert!(
        matches!(
            &out,
            TickOutcome::DryRun {
                action: Some(Action::Commit),
                ..
            }
        ),
        "{out:?}"
    );
    let st = chain.0.lock().unwrap();
    assert!(st.commits.is_empty() && st.sets.is_empty());
}

#[test]
fn pending_store_survives_garbage_with_a_named_error() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("pending.json");
    std::fs::write(&path, "{half").unwrap();
    let e = PendingStore::new(&path).load().unwrap_err();
    assert!(e.to_string().contains("pending.json"), "{e}");
}

#[test]
fn pending_store_round_trips_and_leaves_no_temporary_files() {
    use base_sdk::chain::submitter::PendingCommit;
    let dir = tempfile::tempdir().unwrap();
    let store = PendingStore::new(dir.path().join("state").join("pending.json"));
    assert_eq!(store.load().unwrap(), None);
    let mut p = PendingCommit {
        netuid: 1,
        hotkey: "5Grw".into(),
        commit_hash: "0xab".into(),
        uids: vec![1, 2],
        values: vec![65535, 3],
        salt: vec![1, 2, 3, 4, 5, 6, 7, 8],
        version_key: 9,
        commit_block: 1000,
        commit_block_hash: "0x01".into(),
        confirmed: true,
    };
    store.save(&p).unwrap();
    p.commit_block = 2000;
    store.save(&p).unwrap();
    assert_eq!(store.load().unwrap(), Some(p));
    let names: Vec<_> = std::fs::read_dir(dir.path().join("state"))
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    assert_eq!(names, vec!["pending.json"]);
    store.clear().unwrap();
    store.clear().unwrap();
    assert_eq!(store.load().unwrap(), None);
}

/// The salt (and everything the reveal needs) is on disk, mode 0600,
/// before the commit extrinsic is sent: a crash right after the commit
/// lands can still reveal it. (Failed before the fix: the file was written
/// only after `commit_weights` returned.)
#[tokio::test]
async fn the_salt_is_on_disk_0600_before_the_commit_is_sent() {
    use base_sdk::chain::submitter::PendingCommit;
    let dir = tempfile::tempdir().unwrap();
    let chain = FakeChain::with(policy(true));
    let path = dir.path().join("pending.json");
    chain.0.lock().unwrap().watch_pending = Some(path.clone());
    let s = submitter(feed_of(snapshot(1)), &chain, &dir);
    assert!(matches!(s.tick().await.unwrap(), TickOutcome::Committed(_)));
    let state = chain.0.lock().unwrap();
    let (mode, text) = state
        .pending_at_commit
        .clone()
        .expect("the pending file existed when commit_weights was called");
    assert_eq!(mode, 0o600, "readable by the submitter's user only");
    let at_commit: PendingCommit = serde_json::from_str(&text).unwrap();
    assert!(!at_commit.confirmed);
    // It is the commit that was sent: its salt reproduces the hash.
    let (hash, block) = state.commits[0];
    assert_eq!(
        commit_hash(
            &ACCOUNT,
            1,
            &at_commit.uids,
            &at_commit.values,
            &at_commit.salt,
            at_commit.version_key
        ),
        hash
    );
    // After inclusion the record is confirmed with the real block.
    let after = PendingStore::new(&path).load().unwrap().unwrap();
    assert!(after.confirmed);
    assert_eq!(after.commit_block, block);
    assert_eq!(after.salt, at_commit.salt);
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(
        std::fs::metadata(&path).unwrap().permissions().mode() & 0o777,
        0o600
    );
}

/// A commit the chain refused leaves no pending record behind.
#[tokio::test]
async fn a_rejected_commit_leaves_no_pending_record() {
    let dir = tempfile::tempdir().unwrap();
    let chain = FakeChain::with(policy(true));
    chain.0.lock().unwrap().reject_next = Some("SubtensorModule::TooManyUnrevealedCommits".into());
    let s = submitter(feed_of(snapshot(1)), &chain, &dir);
    assert!(s.tick().await.is_err());
    assert!(
        PendingStore::new(dir.path().join("pending.json"))
            .load()
            .unwrap()
            .is_none()
    );
    assert!(matches!(s.tick().await.unwrap(), TickOutcome::Committed(_)));
}
