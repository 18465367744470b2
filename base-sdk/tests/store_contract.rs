//! One backend-agnostic contract suite for `Store`, run against SQLite and
//! PostgreSQL so the two backends cannot drift apart.
//!
//! Each case is an `async fn(Arc<dyn Store>)`; the `contract!` macro stamps
//! a SQLite test and a PostgreSQL test (ignored unless a server is given,
//! which `scripts/test.sh` does) for every case.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeMap;
use std::sync::Arc;

use base_sdk::config::Environment;
use base_sdk::model::{
    self, AuditEntry, Challenge, ChallengeStatus, NonceKey, Slug, SourceChallenge, TokenKind,
    WeightsSnapshot,
};
use base_sdk::registry::{self, NewChallenge, Policy, token};
use base_sdk::store::{Backend, Store, StoreError};
use chrono::Duration;

base_sdk::backend_tests!(
    create_get_list_round_trip,
    duplicate_create_leaves_nothing_behind,
    failed_token_insert_rolls_back_challenge,
    update_and_delete,
    tokens_replace_and_find,
    audit_log_records_every_write,
    nonces_are_single_use_until_expiry,
    snapshots_keep_the_newest,
    jobs_admission_quota_and_gpu_leases,
    job_outputs_belong_to_the_ending_and_are_purged,
    finished_jobs_are_purged_after_retention,
);

fn challenge(slug: &str) -> Challenge {
    let policy = Policy {
        environment: Environment::Development,
        backend: Backend::Sqlite,
    };
    let mut metadata = serde_json::Map::new();
    metadata.insert("tagline".into(), "solve things".into());
    metadata.insert(
        "nested".into(),
        serde_json::json!({"a": [1, 2, {"b": null}]}),
    );
    registry::validate_new(
        NewChallenge {
            slug: slug.into(),
            name: format!("Challenge {slug}"),
            image: "registry:5000/x/y:1.2.3@sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef".into(),
            version: "1.2.3".into(),
            description: Some("ünïcode ✓ and 'quotes'".into()),
            emission_percent: Some(model::EmissionPercent(37.5)),
            env: Some(BTreeMap::from([("MODE".into(), "fast".into())])),
            secrets: Some(vec!["hf_token".into()]),
            resources: Some(BTreeMap::from([("cpus".into(), "2".into())])),
            metadata: Some(metadata),
            ..Default::default()
        },
        &policy,
        model::now(),
    )
    .expect("valid challenge")
}

fn audit(action: &str, slug: &Slug) -> AuditEntry {
    AuditEntry::new("test", action, Some(slug), serde_json::json!({"k": action}))
}

fn both_tokens(slug: &Slug) -> Vec<model::TokenRecord> {
    TokenKind::ALL
        .iter()
        .map(|k| token::issue(slug, *k).record)
        .collect()
}

async fn create_get_list_round_trip(store: Arc<dyn Store>) {
    let b = challenge("bravo");
    let a = challenge("alpha");
    for c in [&b, &a] {
        store
            .create_challenge(c, &both_tokens(&c.slug), &audit("create", &c.slug))
            .await
            .unwrap();
    }
    let got = store.get_challenge(&a.slug).await.unwrap().expect("stored");
    assert_eq!(got, a, "a challenge reads back exactly as written");
    let slugs: Vec<String> = store
        .list_challenges()
        .await
        .unwrap()
        .iter()
        .map(|c| c.slug.to_string())
        .collect();
    assert_eq!(slugs, ["alpha", "bravo"], "ordered by slug");
    assert!(
        store
            .get_challenge(&Slug::parse("zz").unwrap())
            .await
            .unwrap()
            .is_none()
    );
    store.ping().await.unwrap();
    store.migrate().await.expect("migrations are idempotent");
}

async fn duplicate_create_leaves_nothing_behind(store: Arc<dyn Store>) {
    let c = challenge("dup");
    store
        .create_challenge(&c, &both_tokens(&c.slug), &audit("create", &c.slug))
        .await
        .unwrap();
    let mut again = c.clone();
    again.name = "second".into();
    let t2 = both_tokens(&c.slug);
    let err = store
        .create_challenge(&again, &t2, &audit("create", &c.slug))
        .await
        .unwrap_err();
    assert!(matches!(err, StoreError::Conflict(_)), "{err:?}");
    assert_eq!(
        store.get_challenge(&c.slug).await.unwrap().unwrap().name,
        c.name
    );
    let hashes: Vec<String> = store
        .tokens(&c.slug)
        .await
        .unwrap()
        .into_iter()
        .map(|t| t.hash)
        .collect();
    assert_eq!(hashes.len(), 2);
    for t in &t2 {
        assert!(
            !hashes.contains(&t.hash),
            "the failed create's tokens were stored"
        );
    }
    assert_eq!(
        store
            .audit_log(Some(c.slug.clone()), 10)
            .await
            .unwrap()
            .len(),
        1,
        "no audit row for the failed create"
    );
}

async fn failed_token_insert_rolls_back_challenge(store: Arc<dyn Store>) {
    // Two challenges cannot share a token hash: the second create fails on
    // its token row, after its challenge row was inserted in the same
    // transaction, and must leave no challenge behind.
    let first = challenge("first");
    let shared = token::issue(&first.slug, TokenKind::Challenge).record;
    store
        .create_challenge(
            &first,
            std::slice::from_ref(&shared),
            &audit("create", &first.slug),
        )
        .await
        .unwrap();
    let second = challenge("second");
    let mut clash = shared.clone();
    clash.slug = second.slug.clone();
    let err = store
        .create_challenge(&second, &[clash], &audit("create", &second.slug))
        .await
        .unwrap_err();
    assert!(matches!(err, StoreError::Conflict(_)), "{err:?}");
    assert!(
        store.get_challenge(&second.slug).await.unwrap().is_none(),
        "half-written challenge left behind"
    );
    assert!(store.tokens(&second.slug).await.unwrap().is_empty());
    assert!(
        store
            .audit_log(Some(second.slug.clone()), 10)
            .await
            .unwrap()
            .is_empty()
    );
}

async fn update_and_delete(store: Arc<dyn Store>) {
    let c = challenge("upd");
    store
        .create_challenge(&c, &both_tokens(&c.slug), &audit("create", &c.slug))
        .await
        .unwrap();
    let mut next = c.clone();
    next.status = ChallengeStatus::Active;
    next.emission_percent = model::EmissionPercent(12.25);
    next.env.insert("EXTRA".into(), "1".into());
    next.updated_at = model::now() + Duration::seconds(1);
    store
        .update_challenge(&next, &audit("update", &c.slug))
        .await
        .unwrap();
    assert_eq!(store.get_challenge(&c.slug).await.unwrap().unwrap(), next);

    let ghost = challenge("ghost");
    let err = store
        .update_challenge(&ghost, &audit("update", &ghost.slug))
        .await
        .unwrap_err();
    assert!(matches!(err, StoreError::NotFound(_)), "{err:?}");
    assert!(
        store
            .audit_log(Some(ghost.slug.clone()), 10)
            .await
            .unwrap()
            .is_empty(),
        "failed update left an audit row"
    );

    store
        .delete_challenge(&c.slug, &audit("delete", &c.slug))
        .await
        .unwrap();
    assert!(store.get_challenge(&c.slug).await.unwrap().is_none());
    assert!(
        store.tokens(&c.slug).await.unwrap().is_empty(),
        "tokens deleted with the challenge"
    );
    let err = store
        .delete_challenge(&c.slug, &audit("delete", &c.slug))
        .await
        .unwrap_err();
    assert!(matches!(err, StoreError::NotFound(_)));
}

async fn tokens_replace_and_find(store: Arc<dyn Store>) {
    let c = challenge("tok");
    let records = both_tokens(&c.slug);
    store
        .create_challenge(&c, &records, &audit("create", &c.slug))
        .await
        .unwrap();
    let found = store
        .find_token(TokenKind::DockerBroker, &records[1].hash)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(found.slug, c.slug);
    assert!(
        store
            .find_token(TokenKind::Challenge, &records[1].hash)
            .await
            .unwrap()
            .is_none(),
        "kind is part of the lookup"
    );

    let fresh = token::issue(&c.slug, TokenKind::Challenge).record;
    store
        .replace_tokens(std::slice::from_ref(&fresh), &audit("rotate", &c.slug))
        .await
        .unwrap();
    assert!(
        store
            .find_token(TokenKind::Challenge, &records[0].hash)
            .await
            .unwrap()
            .is_none(),
        "old token revoked"
    );
    assert!(
        store
            .find_token(TokenKind::Challenge, &fresh.hash)
            .await
            .unwrap()
            .is_some()
    );
    assert!(
        store
            .find_token(TokenKind::DockerBroker, &records[1].hash)
            .await
            .unwrap()
            .is_some(),
        "other kind untouched"
    );
    let stored = store.tokens(&c.slug).await.unwrap();
    assert_eq!(stored.len(), 2);
    assert!(stored.iter().all(|t| t.hint.contains('…')));

    let ghost = Slug::parse("ghost").unwrap();
    let orphan = token::issue(&ghost, TokenKind::Challenge).record;
    let err = store
        .replace_tokens(&[orphan], &audit("rotate", &ghost))
        .await
        .unwrap_err();
    assert!(matches!(err, StoreError::NotFound(_)), "{err:?}");
}

async fn audit_log_records_every_write(store: Arc<dyn Store>) {
    let c = challenge("aud");
    store
        .create_challenge(&c, &[], &audit("create", &c.slug))
        .await
        .unwrap();
    store
        .update_challenge(&c, &audit("update", &c.slug))
        .await
        .unwrap();
    let other = challenge("other");
    store
        .create_challenge(&other, &[], &audit("create", &other.slug))
        .await
        .unwrap();
    let mine = store.audit_log(Some(c.slug.clone()), 10).await.unwrap();
    let actions: Vec<&str> = mine.iter().map(|e| e.action.as_str()).collect();
    assert_eq!(
        actions,
        ["update", "create"],
        "newest first, one challenge only"
    );
    assert_eq!(mine[0].detail, serde_json::json!({"k": "update"}));
    assert_eq!(store.audit_log(None, 10).await.unwrap().len(), 3);
    assert_eq!(store.audit_log(None, 1).await.unwrap().len(), 1);
}

async fn nonces_are_single_use_until_expiry(store: Arc<dyn Store>) {
    let key = NonceKey {
        netuid: 100,
        slug: Slug::parse("ab").unwrap(),
        hotkey: "5Hk".into(),
        nonce: "n1".into(),
    };
    let t0 = model::now();
    let ttl = Duration::hours(24);
    assert!(store.reserve_nonce(&key, t0, t0 + ttl).await.unwrap());
    assert!(
        !store
            .reserve_nonce(&key, t0 + Duration::seconds(5), t0 + ttl)
            .await
            .unwrap(),
        "replay refused"
    );
    let other_slug = NonceKey {
        slug: Slug::parse("cd").unwrap(),
        ..key.clone()
    };
    assert!(
        store
            .reserve_nonce(&other_slug, t0, t0 + ttl)
            .await
            .unwrap(),
        "scope includes the slug"
    );
    let later = t0 + ttl + Duration::seconds(1);
    assert!(
        store.reserve_nonce(&key, later, later + ttl).await.unwrap(),
        "usable again after expiry"
    );
    assert_eq!(
        store.purge_nonces(later).await.unwrap(),
        1,
        "only the expired other-slug nonce"
    );
    assert_eq!(
        store
            .purge_nonces(later + ttl + Duration::seconds(1))
            .await
            .unwrap(),
        1
    );
}

async fn snapshots_keep_the_newest(store: Arc<dyn Store>) {
    assert!(store.latest_snapshot().await.unwrap().is_none());
    let base = model::now();
    let mk = |i: u16| {
        let at = base + Duration::seconds(i64::from(i));
        WeightsSnapshot {
            netuid: 100,
            chain_endpoint: "ws://x".into(),
            uids: vec![i, i + 1],
            weights: vec![0.25, 0.75],
            hotkey_weights: BTreeMap::from([("hk".into(), 1.0)]),
            computed_at: at,
            expires_at: at + Duration::seconds(720),
            source_challenges: vec![SourceChallenge {
                slug: "a".into(),
                emission_percent: model::EmissionPercent(50.0),
                weights: BTreeMap::new(),
                ok: false,
                error: Some("timeout".into()),
            }],
            metagraph_updated_at: Some(base),
            status: Default::default(),
            last_epoch: None,
        }
    };
    for i in 1..=5 {
        store.put_snapshot(&mk(i), 3).await.unwrap();
    }
    let latest = store.latest_snapshot().await.unwrap().unwrap();
    assert_eq!(latest, mk(5), "the newest snapshot reads back exactly");
}

fn job(
    id: &str,
    slug: &str,
    job_id: &str,
    gpus: u32,
    at: chrono::DateTime<chrono::Utc>,
) -> model::JobRecord {
    model::JobRecord {
        id: id.into(),
        slug: Slug::parse(slug).unwrap(),
        job_id: job_id.into(),
        task_id: Some("t".into()),
        image: "ghcr.io/x/y:1".into(),
        state: base_sdk::orchestrator::JobState::Queued,
        spec: serde_json::json!({"timeout_seconds": 60, "labels": {"a": "b"}}),
        node_id: None,
        gpu_count: gpus,
        exit_code: None,
        error: None,
        stdout_tail: String::new(),
        stderr_tail: String::new(),
        created_at: at,
        started_at: None,
        finished_at: None,
        deadline_at: Some(at + Duration::seconds(660)),
    }
}

async fn jobs_admission_quota_and_gpu_leases(store: Arc<dyn Store>) {
    use base_sdk::model::{Admission, JobFilter};
    use base_sdk::orchestrator::JobState;
    let t0 = model::now();
    // Quota: two active jobs at most for "aa".
    assert_eq!(
        store
            .admit_job(&job("j1", "aa", "x", 0, t0), Some(2), 0)
            .await
            .unwrap(),
        Admission::Admitted
    );
    assert_eq!(
        store
            .admit_job(
                &job("j2", "aa", "y", 1, t0 + Duration::seconds(1)),
                Some(2),
                2
            )
            .await
            .unwrap(),
        Admission::Admitted
    );
    assert_eq!(
        store
            .admit_job(&job("j3", "aa", "x", 0, t0), Some(2), 0)
            .await
            .unwrap(),
        Admission::TooManyJobs { active: 2, max: 2 }
    );
    // Another challenge is not counted against "aa"; GPUs are global.
    assert_eq!(
        store
            .admit_job(&job("j4", "bb", "x", 2, t0), None, 2)
            .await
            .unwrap(),
        Admission::NoGpuCapacity {
            requested: 2,
            leased: 1,
            capacity: 2
        }
    );
    assert!(
        store.get_job("j3").await.unwrap().is_none(),
        "a refused job leaves no record"
    );
    assert!(store.get_job("j4").await.unwrap().is_none());
    let leases = store.gpu_leases().await.unwrap();
    assert_eq!(leases.len(), 1);
    assert_eq!((leases[0].job_ref.as_str(), leases[0].gpus), ("j2", 1));
    // Duplicate ids conflict.
    assert!(matches!(
        store.admit_job(&job("j1", "aa", "x", 0, t0), None, 0).await,
        Err(StoreError::Conflict(_))
    ));

    // Progress keeps the lease; the terminal write releases it.
    let mut j2 = store.get_job("j2").await.unwrap().unwrap();
    assert_eq!(j2.spec["labels"]["a"], "b");
    j2.state = JobState::Running;
    j2.started_at = Some(t0 + Duration::seconds(5));
    j2.node_id = Some("n1".into());
    store.update_job(&j2).await.unwrap();
    assert_eq!(store.gpu_leases().await.unwrap().len(), 1);
    j2.state = JobState::TimedOut;
    j2.exit_code = Some(124);
    j2.stdout_tail = "out".into();
    j2.finished_at = Some(t0 + Duration::seconds(9));
    store.update_job(&j2).await.unwrap();
    assert!(store.gpu_leases().await.unwrap().is_empty());
    assert_eq!(store.get_job("j2").await.unwrap().unwrap(), j2);
    // A finished record is never rewritten: a second ending loses.
    let mut late = j2.clone();
    late.state = JobState::Failed;
    late.error = Some("lost".into());
    assert!(matches!(
        store.update_job(&late).await,
        Err(StoreError::JobFinished(id)) if id == "j2"
    ));
    assert_eq!(store.get_job("j2").await.unwrap().unwrap(), j2);
    let mut ghost = j2.clone();
    ghost.id = "nope".into();
    assert!(matches!(
        store.update_job(&ghost).await,
        Err(StoreError::NotFound(_))
    ));

    // Filters: slug, job id, active only, newest first, limit.
    let active = JobFilter {
        active_only: true,
        ..JobFilter::default()
    };
    let ids = |v: Vec<model::JobRecord>| v.into_iter().map(|j| j.id).collect::<Vec<_>>();
    assert_eq!(ids(store.list_jobs(&active).await.unwrap()), ["j1"]);
    assert_eq!(
        ids(store.list_jobs(&JobFilter::default()).await.unwrap()),
        ["j2", "j1"]
    );
    let by_job = JobFilter {
        job_id: Some("y".into()),
        ..JobFilter::default()
    };
    assert_eq!(ids(store.list_jobs(&by_job).await.unwrap()), ["j2"]);
    let other = JobFilter {
        slug: Some(Slug::parse("bb").unwrap()),
        ..JobFilter::default()
    };
    assert!(store.list_jobs(&other).await.unwrap().is_empty());
    let one = JobFilter {
        limit: Some(1),
        ..JobFilter::default()
    };
    assert_eq!(ids(store.list_jobs(&one).await.unwrap()), ["j2"]);
    // Updating a job that does not exist is an error, not a silent no-op.
    assert!(matches!(
        store.update_job(&job("nope", "aa", "x", 0, t0)).await,
        Err(StoreError::NotFound(_))
    ));
}

async fn job_outputs_belong_to_the_ending_and_are_purged(store: Arc<dyn Store>) {
    use base_sdk::model::JobOutput;
    use base_sdk::orchestrator::JobState;
    let t0 = model::now();
    store
        .admit_job(&job("o1", "aa", "x", 0, t0), None, 0)
        .await
        .unwrap();
    assert!(store.job_outputs("o1").await.unwrap().is_empty());
    let outs = vec![
        JobOutput {
            target: "/out".into(),
            archive_b64: Some("H4sIAAAAAAAAA+3BAQ0AAADCoPdPbQ8HFAAAAAAAAAAAAAAA".into()),
            error: None,
        },
        JobOutput {
            target: "/work/ü".into(),
            archive_b64: None,
            error: Some("the output is over 6291456 bytes compressed".into()),
        },
    ];
    // A second put replaces the first (a retried ending).
    store.put_job_outputs("o1", &outs[..1], t0).await.unwrap();
    store.put_job_outputs("o1", &outs, t0).await.unwrap();
    assert_eq!(store.job_outputs("o1").await.unwrap(), outs);

    // Once the job has ended, its outputs are fixed.
    let mut done = job("o1", "aa", "x", 0, t0);
    done.state = JobState::Succeeded;
    done.exit_code = Some(0);
    done.finished_at = Some(t0);
    store.update_job(&done).await.unwrap();
    assert!(matches!(
        store.put_job_outputs("o1", &outs[..1], t0).await,
        Err(StoreError::JobFinished(id)) if id == "o1"
    ));
    assert!(matches!(
        store.put_job_outputs("nope", &outs, t0).await,
        Err(StoreError::NotFound(_))
    ));
    assert_eq!(store.job_outputs("o1").await.unwrap(), outs);

    // Purged by age only.
    assert_eq!(store.purge_job_outputs(t0).await.unwrap(), 0);
    assert_eq!(
        store
            .purge_job_outputs(t0 + Duration::seconds(1))
            .await
            .unwrap(),
        2
    );
    assert!(store.job_outputs("o1").await.unwrap().is_empty());
}

async fn finished_jobs_are_purged_after_retention(store: Arc<dyn Store>) {
    use base_sdk::model::JobOutput;
    use base_sdk::orchestrator::JobState;
    let t0 = model::now();
    let long_ago = t0 - Duration::days(10);
    for id in ["old", "new", "open"] {
        store
            .admit_job(&job(id, "aa", id, 0, long_ago), None, 0)
            .await
            .unwrap();
    }
    store
        .put_job_outputs(
            "old",
            &[JobOutput {
                target: "/out".into(),
                archive_b64: None,
                error: Some("x".into()),
            }],
            long_ago,
        )
        .await
        .unwrap();
    for (id, at) in [("old", long_ago), ("new", t0)] {
        let mut done = job(id, "aa", id, 0, long_ago);
        done.state = JobState::Failed;
        done.exit_code = Some(1);
        done.finished_at = Some(at);
        store.update_job(&done).await.unwrap();
    }
    // Only the job that ended before the cutoff goes, with its outputs;
    // an unfinished job stays however old it is.
    assert_eq!(store.purge_jobs(t0 - Duration::days(1)).await.unwrap(), 1);
    assert!(store.get_job("old").await.unwrap().is_none());
    assert!(store.job_outputs("old").await.unwrap().is_empty());
    assert!(store.get_job("new").await.unwrap().is_some());
    assert_eq!(
        store.get_job("open").await.unwrap().unwrap().state,
        JobState::Queued
    );
    assert_eq!(store.purge_jobs(t0 - Duration::days(1)).await.unwrap(), 0);
}
