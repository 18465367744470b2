//! End-to-end tests of `base`: a real master (the server library, in this
//! process, on a loopback port) and the real binary run against it as a
//! child process, exactly as an operator would run it.

use std::process::Stdio;
use std::time::Duration;

use base_sdk::auth::AdminAuth;
use base_sdk::config::Environment;
use base_sdk::registry::Registry;
use secrecy::SecretString;
use serde_json::Value;
use tokio::net::TcpListener;
use tokio::sync::oneshot;

const ADMIN_TOKEN: &str = "test-admin-token-0123456789abcdef";
const IMAGE: &str = "ghcr.io/platformnetwork/quiz:1.0.0";

/// A master serving until dropped.
struct Master {
    url: String,
    /// The served state, for publishing weights as an epoch would.
    state: base_server::AppState,
    stop: Option<oneshot::Sender<()>>,
    _db: base_sdk::testing::TempSqlite,
}

impl Drop for Master {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}

async fn start_master() -> Master {
    let db = base_sdk::testing::sqlite()
        .await
        .expect("temporary sqlite store");
    let registry = Registry::new(db.store.clone(), Environment::Development);
    let admin = AdminAuth::new(Some(SecretString::from(ADMIN_TOKEN)));
    let state = base_server::AppState::new(registry, admin, 100);
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("local addr");
    let (stop, stopped) = oneshot::channel::<()>();
    tokio::spawn(base_server::serve(listener, state.clone(), async {
        let _ = stopped.await;
    }));
    Master {
        url: format!("http://{addr}"),
        state,
        stop: Some(stop),
        _db: db,
    }
}

/// What one run of the binary did.
#[derive(Debug)]
struct Run {
    success: bool,
    stdout: String,
    stderr: String,
}

impl Run {
    fn json(&self) -> Value {
        serde_json::from_str(&self.stdout)
            .unwrap_or_else(|e| panic!("stdout is not JSON ({e}):\n{}", self.stdout))
    }

    #[track_caller]
    fn assert_ok(&self) -> &Self {
        assert!(self.success, "command failed: {self:#?}");
        self
    }

    #[track_caller]
    fn assert_failed_with(&self, needle: &str) -> &Self {
        assert!(!self.success, "command succeeded: {self:#?}");
        assert!(
            self.stderr.contains(needle),
            "stderr lacks {needle:?}: {self:#?}"
        );
        self
    }
}

/// Runs `base` with `args` and exactly the `env` given on top of a cleaned
/// environment (no inherited `BASE_*`, no proxies), without blocking the
/// runtime the master is served on.
async fn base(args: &[&str], env: &[(&str, &str)]) -> Run {
    let mut cmd = tokio::process::Command::new(env!("CARGO_BIN_EXE_base"));
    for (k, _) in std::env::vars() {
        if k.starts_with("BASE_") || k.to_ascii_lowercase().ends_with("_proxy") {
            cmd.env_remove(k);
        }
    }
    cmd.args(args)
        .envs(env.iter().copied())
        .stdin(Stdio::null())
        .kill_on_drop(true);
    let out = tokio::time::timeout(Duration::from_secs(60), cmd.output())
        .await
        .expect("base did not finish within 60 s")
        .expect("spawn base");
    Run {
        success: out.status.success(),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

/// Runs `base` against `m` with the right admin token in the environment.
async fn admin(m: &Master, args: &[&str]) -> Run {
    base(
        args,
        &[
            ("BASE_MASTER_URL", &m.url),
            ("BASE_ADMIN_TOKEN", ADMIN_TOKEN),
        ],
    )
    .await
}

/// The value of a `label: value` line.
fn line_value(text: &str, label: &str) -> String {
    text.lines()
        .find_map(|l| l.strip_prefix(&format!("{label}: ")))
        .unwrap_or_else(|| panic!("no '{label}:' line in:\n{text}"))
        .to_string()
}

/// The hint the master shows for a token (`abcd…wxyz`).
fn hint(token: &str) -> String {
    format!("{}…{}", &token[..4], &token[token.len() - 4..])
}

fn register_args<'a>(slug: &'a str, extra: &[&'a str]) -> Vec<&'a str> {
    let mut args = vec![
        "challenge",
        "register",
        "--slug",
        slug,
        "--name",
        "Quiz",
        "--image",
        IMAGE,
        "--version",
        "1.0.0",
    ];
    args.extend_from_slice(extra);
    args
}

#[tokio::test(flavor = "multi_thread")]
async fn a_challenge_goes_through_its_whole_life() {
    let m = start_master().await;

    // register: the record, then both tokens once, with the warning.
    let reg = admin(
        &m,
        &register_args(
            "quiz",
            &[
                "--emission-percent",
                "40",
                "--description",
                "Answer questions",
                "--env",
                "LOG_LEVEL=very-private-value",
                "--secret",
                "quiz-api-key",
                "--metadata-json",
                r#"{"tagline":"Answer questions"}"#,
                "--capability",
                "get_weights",
            ],
        ),
    )
    .await;
    reg.assert_ok();
    assert!(reg.stdout.contains("will not be shown again"), "{reg:#?}");
    let challenge_token = line_value(&reg.stdout, "challenge token");
    let broker_token = line_value(&reg.stdout, "docker broker token");
    assert!(challenge_token.len() >= 40 && broker_token.len() >= 40);
    assert_ne!(challenge_token, broker_token);
    assert!(!reg.stdout.contains(ADMIN_TOKEN) && !reg.stderr.contains(ADMIN_TOKEN));

    // register --json: the server's body, tokens included.
    let reg2 = admin(&m, &{
        let mut a = vec!["--json"];
        a.extend(register_args("second", &[]));
        a
    })
    .await;
    reg2.assert_ok();
    let body = reg2.json();
    assert!(body["challenge_token"].is_string(), "{body}");
    assert!(body["docker_broker_token"].is_string(), "{body}");
    assert_eq!(body["challenge"]["slug"], "second");
    assert_eq!(body["challenge"]["status"], "draft");

    // A second register of the same slug is refused with the server's detail.
    admin(&m, &register_args("quiz", &[]))
        .await
        .assert_failed_with("Challenge 'quiz' already exists");

    // list
    let list = admin(&m, &["challenge", "list"]).await;
    list.assert_ok();
    for needle in ["quiz", "second", "40.0", "draft", IMAGE, "emission %"] {
        assert!(list.stdout.contains(needle), "{needle} missing: {list:#?}");
    }
    let list_json = admin(&m, &["challenge", "list", "--json"]).await;
    list_json.assert_ok();
    assert_eq!(
        list_json.json()["challenges"].as_array().map(Vec::len),
        Some(2)
    );

    // show: token hints, never hashes; env names without values.
    let show = admin(&m, &["challenge", "show", "quiz"]).await;
    show.assert_ok();
    assert!(show.stdout.contains(&hint(&challenge_token)), "{show:#?}");
    assert!(show.stdout.contains("docker_broker token"), "{show:#?}");
    assert!(show.stdout.contains("LOG_LEVEL"), "{show:#?}");
    assert!(!show.stdout.contains("very-private-value"), "{show:#?}");
    assert!(!show.stdout.contains(&challenge_token), "{show:#?}");
    let show_json = admin(&m, &["--json", "challenge", "show", "quiz"]).await;
    show_json.assert_ok();
    assert!(!show_json.stdout.contains("hash"), "{show_json:#?}");
    let tokens = show_json.json()["tokens"].clone();
    assert_eq!(tokens.as_array().map(Vec::len), Some(2), "{tokens}");
    assert!(tokens[0]["hint"].as_str().is_some_and(|h| h.contains('…')));

    // Drafts are not public; activation makes the challenge appear.
    let before = base(&["registry", "--master", &m.url], &[]).await;
    before.assert_ok();
    assert!(!before.stdout.contains("quiz"), "{before:#?}");
    let act = admin(&m, &["challenge", "activate", "quiz"]).await;
    act.assert_ok();
    assert!(act.stdout.contains("'quiz' is now active"), "{act:#?}");
    // The registry needs no token at all.
    let after = base(&["registry"], &[("BASE_MASTER_URL", &m.url)]).await;
    after.assert_ok();
    assert!(after.stdout.contains("quiz"), "{after:#?}");
    assert!(after.stdout.contains("active"), "{after:#?}");
    assert!(!after.stdout.contains("second"), "{after:#?}");
    let after_json = base(&["registry", "--json", "--master", &m.url], &[]).await;
    after_json.assert_ok();
    assert_eq!(after_json.json()["challenges"][0]["slug"], "quiz");
    assert!(!after_json.stdout.contains("very-private-value"));

    // rotate-token: only the kind asked for, a new value, shown once.
    let rot = admin(
        &m,
        &["challenge", "rotate-token", "quiz", "--kind", "challenge"],
    )
    .await;
    rot.assert_ok();
    let rotated = line_value(&rot.stdout, "challenge token");
    assert_ne!(rotated, challenge_token);
    assert!(!rot.stdout.contains("docker broker token"), "{rot:#?}");
    assert!(rot.stdout.contains("will not be shown again"), "{rot:#?}");
    let rot_all = admin(&m, &["--json", "challenge", "rotate-token", "quiz"]).await;
    rot_all.assert_ok();
    let both = rot_all.json();
    assert!(both["challenge_token"].is_string() && both["docker_broker_token"].is_string());
    // `show` now carries the hint of the last rotation's challenge token.
    let last = both["challenge_token"].as_str().unwrap_or_default();
    let show = admin(&m, &["challenge", "show", "quiz"]).await;
    show.assert_ok();
    assert!(show.stdout.contains(&hint(last)), "{show:#?}");

    // update: only what is given changes.
    let upd = admin(
        &m,
        &[
            "challenge",
            "update",
            "quiz",
            "--emission-percent",
            "12.5",
            "--name",
            "Quiz 2",
        ],
    )
    .await;
    upd.assert_ok();
    assert!(
        upd.stdout.contains("12.5") && upd.stdout.contains("Quiz 2"),
        "{upd:#?}"
    );
    assert!(upd.stdout.contains("quiz-api-key"), "{upd:#?}");
    admin(&m, &["challenge", "update", "quiz"])
        .await
        .assert_failed_with("nothing to update");
    admin(&m, &["challenge", "update", "quiz", "--env", "BASE_URL=x"])
        .await
        .assert_failed_with("reserved");

    // deactivate
    let deact = admin(&m, &["challenge", "deactivate", "quiz"]).await;
    deact.assert_ok();
    assert!(deact.stdout.contains("now inactive"), "{deact:#?}");

    // audit
    let audit = admin(&m, &["audit", "--slug", "quiz", "--limit", "50"]).await;
    audit.assert_ok();
    for action in [
        "challenge.create",
        "challenge.set_status",
        "challenge.rotate_tokens",
        "challenge.update",
    ] {
        assert!(
            audit.stdout.contains(action),
            "{action} missing: {audit:#?}"
        );
    }
    assert!(!audit.stdout.contains("very-private-value"));
    let audit_json = admin(&m, &["audit", "--json", "--limit", "1"]).await;
    audit_json.assert_ok();
    assert_eq!(
        audit_json.json()["entries"].as_array().map(Vec::len),
        Some(1)
    );

    // delete, then it is gone.
    let del = admin(&m, &["challenge", "delete", "quiz", "--purge-volumes"]).await;
    del.assert_ok();
    assert!(del.stdout.contains("deleted challenge 'quiz'"), "{del:#?}");
    admin(&m, &["challenge", "show", "quiz"])
        .await
        .assert_failed_with("404 Not Found: Challenge 'quiz' not found");
    let del_json = admin(&m, &["--json", "challenge", "delete", "second"]).await;
    del_json.assert_ok();
    assert_eq!(del_json.json()["volumes_retained"], true);
    let empty = admin(&m, &["challenge", "list"]).await;
    empty.assert_ok();
    assert!(
        empty.stdout.contains("no challenges registered"),
        "{empty:#?}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_wrong_token_is_refused_with_a_clear_message() {
    let m = start_master().await;
    let wrong = "wrong-token-that-must-not-be-echoed";
    let run = base(
        &["challenge", "list"],
        &[("BASE_MASTER_URL", &m.url), ("BASE_ADMIN_TOKEN", wrong)],
    )
    .await;
    run.assert_failed_with(
        "the master refused the admin token (check BASE_ADMIN_TOKEN / --admin-token-file",
    );
    assert!(
        !run.stderr.contains(wrong) && !run.stdout.contains(wrong),
        "{run:#?}"
    );

    // The flag form too.
    base(
        &[
            "challenge",
            "list",
            "--master",
            &m.url,
            "--admin-token",
            wrong,
        ],
        &[],
    )
    .await
    .assert_failed_with("refused the admin token");
}

#[tokio::test(flavor = "multi_thread")]
async fn no_token_at_all_says_so() {
    let m = start_master().await;
    base(&["challenge", "list"], &[("BASE_MASTER_URL", &m.url)])
        .await
        .assert_failed_with("no admin token given");
}

#[tokio::test(flavor = "multi_thread")]
async fn the_token_can_come_from_a_file() {
    let m = start_master().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("admin-token");
    std::fs::write(&file, format!("{ADMIN_TOKEN}\n")).expect("write token file");
    let path = file.to_str().expect("utf-8 path");

    base(
        &["challenge", "list", "--admin-token-file", path],
        &[("BASE_MASTER_URL", &m.url)],
    )
    .await
    .assert_ok();
    // The env var form, and it beats a wrong BASE_ADMIN_TOKEN.
    base(
        &["challenge", "list"],
        &[
            ("BASE_MASTER_URL", &m.url),
            ("BASE_ADMIN_TOKEN_FILE", path),
            ("BASE_ADMIN_TOKEN", "wrong"),
        ],
    )
    .await
    .assert_ok();
    base(
        &[
            "challenge",
            "list",
            "--admin-token-file",
            "/nonexistent/base-token",
        ],
        &[("BASE_MASTER_URL", &m.url)],
    )
    .await
    .assert_failed_with("cannot read the admin token file '/nonexistent/base-token'");
}

#[tokio::test(flavor = "multi_thread")]
async fn an_unreachable_master_is_named_with_a_hint() {
    // A port that was just free: bind, note it, release it.
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        l.local_addr().expect("addr").port()
    };
    let url = format!("http://127.0.0.1:{port}");
    let run = base(&["registry", "--master", &url], &[]).await;
    run.assert_failed_with(&format!("cannot reach the BASE master at {url}"));
    assert!(run.stderr.contains("BASE_MASTER_URL"), "{run:#?}");
    admin_down(&url).await;
}

async fn admin_down(url: &str) {
    base(
        &["challenge", "list"],
        &[("BASE_MASTER_URL", url), ("BASE_ADMIN_TOKEN", ADMIN_TOKEN)],
    )
    .await
    .assert_failed_with("is `base-server master` running?");
}

#[tokio::test(flavor = "multi_thread")]
async fn bad_flags_fail_before_any_request() {
    // Port 1: a request, if one were made, would fail differently.
    let env = [
        ("BASE_MASTER_URL", "http://127.0.0.1:1"),
        ("BASE_ADMIN_TOKEN", ADMIN_TOKEN),
    ];
    base(&register_args("quiz", &["--env", "NOEQUALS"]), &env)
        .await
        .assert_failed_with("NAME=VALUE");
    base(&register_args("quiz", &["--metadata-json", "[1]"]), &env)
        .await
        .assert_failed_with("JSON object");
    base(&["registry", "--master", "localhost:18080"], &[])
        .await
        .assert_failed_with("http:// or https://");
}

#[tokio::test(flavor = "multi_thread")]
async fn help_never_shows_the_token() {
    let run = base(&["--help"], &[("BASE_ADMIN_TOKEN", ADMIN_TOKEN)]).await;
    run.assert_ok();
    assert!(!run.stdout.contains(ADMIN_TOKEN), "{run:#?}");
    assert!(
        run.stdout.contains("ps"),
        "the help must warn about argv: {run:#?}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn db_migrate_names_the_database_it_migrated() {
    let dir = tempfile::tempdir().expect("tempdir");
    let dir_str = dir.path().to_str().expect("utf-8 path");

    // Default: a SQLite file in BASE_DATA_DIR, directory created.
    let data = format!("{dir_str}/data");
    let run = base(&["db", "migrate"], &[("BASE_DATA_DIR", &data)]).await;
    run.assert_ok();
    assert!(
        run.stdout.contains(&format!("{data}/base.sqlite3")),
        "{run:#?}"
    );
    assert!(run.stdout.contains("sqlite"), "{run:#?}");
    assert!(dir.path().join("data/base.sqlite3").exists());

    // An explicit URL; migrating twice is fine.
    let url = format!("sqlite://{dir_str}/other/db.sqlite3");
    for _ in 0..2 {
        let run = base(&["db", "migrate", "--json"], &[("BASE_DATABASE_URL", &url)]).await;
        run.assert_ok();
        let v = run.json();
        assert_eq!(v["migrated"], true);
        assert_eq!(v["backend"], "sqlite");
    }

    // Passwords never show, even when the connection fails.
    let run = base(
        &["db", "migrate"],
        &[(
            "BASE_DATABASE_URL",
            "postgres://base:hunter2@127.0.0.1:1/base",
        )],
    )
    .await;
    run.assert_failed_with("postgres://base:***@127.0.0.1:1/base");
    assert!(!run.stderr.contains("hunter2"), "{run:#?}");

    // Production needs an explicit URL.
    base(&["db", "migrate"], &[("BASE_ENVIRONMENT", "production")])
        .await
        .assert_failed_with("BASE_DATABASE_URL is required in production");
}

/// A vector as an epoch would publish it: CONTRACTS.md §5's first test
/// vector, one challenge that answered and one that failed.
fn snapshot(expires_in_seconds: i64) -> base_sdk::model::WeightsSnapshot {
    use base_sdk::model::{EmissionPercent, SourceChallenge, WeightsSnapshot};
    use std::collections::BTreeMap;
    let now = chrono::Utc::now();
    WeightsSnapshot {
        netuid: 100,
        chain_endpoint: "ws://127.0.0.1:9944".into(),
        uids: vec![1, 2, 3],
        weights: vec![0.15, 0.65, 0.2],
        hotkey_weights: BTreeMap::from([
            ("5HotkeyA".into(), 0.15),
            ("5HotkeyB".into(), 0.65),
            ("5HotkeyC".into(), 0.2),
        ]),
        computed_at: now,
        expires_at: now + chrono::TimeDelta::seconds(expires_in_seconds),
        source_challenges: vec![
            SourceChallenge {
                slug: "quiz-a".into(),
                emission_percent: EmissionPercent(60.0),
                weights: BTreeMap::from([("5HotkeyA".into(), 0.25), ("5HotkeyB".into(), 0.75)]),
                ok: true,
                error: None,
            },
            SourceChallenge {
                slug: "quiz-b".into(),
                emission_percent: EmissionPercent(40.0),
                weights: BTreeMap::new(),
                ok: false,
                error: Some("connection refused after 3 attempts".into()),
            },
        ],
        metagraph_updated_at: Some(now),
        status: Default::default(),
        last_epoch: None,
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn weights_latest_shows_the_published_vector() {
    let m = start_master().await;
    // No token anywhere, and a broken token file must not matter.
    let env = [
        ("BASE_MASTER_URL", m.url.as_str()),
        ("BASE_ADMIN_TOKEN_FILE", "/nonexistent/base-token"),
    ];

    // Before the first epoch: the master's 503 detail, and a failure.
    base(&["weights", "latest"], &env)
        .await
        .assert_failed_with("503 Service Unavailable: no weights computed yet");
    base(&["weights", "latest", "--json"], &env)
        .await
        .assert_failed_with("no weights computed yet");

    let published = snapshot(720);
    m.state.weights().publish(&published);

    let run = base(&["weights", "latest"], &env).await;
    run.assert_ok();
    let out = &run.stdout;
    for needle in [
        "netuid 100",
        "valid for 1",
        "metagraph_updated_at: 20",
        "3 uids, weights sum to 1.000000",
        "0.650000",
        "65535",
        "15123",
        "20165",
        "quiz-a",
        "60.0",
        "quiz-b",
        "connection refused after 3 attempts",
    ] {
        assert!(out.contains(needle), "{needle} missing: {run:#?}");
    }
    assert!(!out.contains("EXPIRED"), "{run:#?}");
    // One row per uid, in uid order, with the float and the u16 value.
    let rows: Vec<&str> = out.lines().filter(|l| l.contains("┆ 0.")).collect();
    assert_eq!(rows.len(), 3, "{run:#?}");
    assert!(
        rows[0].contains("│ 1 ") && rows[0].contains("0.150000 ┆ 15123"),
        "{run:#?}"
    );
    assert!(
        rows[1].contains("│ 2 ") && rows[1].contains("0.650000 ┆ 65535"),
        "{run:#?}"
    );
    assert!(
        rows[2].contains("│ 3 ") && rows[2].contains("0.200000 ┆ 20165"),
        "{run:#?}"
    );

    // --json: the server's body byte for byte.
    let json = base(&["--json", "weights", "latest"], &env).await;
    json.assert_ok();
    let served = serde_json::to_string(&published).expect("serialize");
    assert_eq!(json.stdout, format!("{served}\n"));
    assert_eq!(json.json()["uids"], serde_json::json!([1, 2, 3]));

    // A vector past its expiry is shown, flagged, and still exits 0.
    m.state.weights().publish(&snapshot(-90));
    let run = base(&["weights", "latest"], &env).await;
    run.assert_ok();
    assert!(run.stdout.contains("(EXPIRED 1m 30s ago"), "{run:#?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn weights_submit_dry_run_prints_the_u16_values_and_checks_the_netuid() {
    let m = start_master().await;
    let env = [("BASE_MASTER_URL", m.url.as_str())];
    m.state.weights().publish(&snapshot(720));

    let run = base(&["weights", "submit", "--dry-run"], &env).await;
    run.assert_ok();
    for needle in [
        "dry run: netuid 100",
        "0.650000",
        "set_weights(netuid=100, dests=[1, 2, 3], weights=[15123, 65535, 20165])",
    ] {
        assert!(run.stdout.contains(needle), "{needle} missing: {run:#?}");
    }

    // A vector for another subnet is refused, by name.
    base(&["weights", "submit", "--dry-run", "--netuid", "7"], &env)
        .await
        .assert_failed_with("it is for netuid 100, this submitter serves netuid 7");

    // An expired vector is refused.
    m.state.weights().publish(&snapshot(-5));
    base(&["weights", "submit", "--dry-run"], &env)
        .await
        .assert_failed_with("expired");
}

/// `base weights pubkey` prints the public key validators configure, from
/// the weights key on this host, and nothing secret; without a key it
/// names the setting.
#[tokio::test]
async fn weights_pubkey_prints_the_public_key_only() {
    let seed = format!("0x{}", "5a".repeat(32));
    let expected = base_sdk::weights::WeightsKey::from_seed(&[0x5a; 32]).public();
    let run = base(&["weights", "pubkey"], &[("BASE_WEIGHTS_KEY", &seed)]).await;
    run.assert_ok();
    assert!(run.stdout.contains(&expected.to_string()), "{run:#?}");
    assert!(run.stdout.contains(&expected.ss58()), "{run:#?}");
    assert!(!run.stdout.contains(&"5a".repeat(32)), "{run:#?}");
    let v = base(
        &["--json", "weights", "pubkey"],
        &[("BASE_WEIGHTS_KEY", &seed)],
    )
    .await
    .json();
    assert_eq!(v["public_key"], expected.to_string());
    base(&["weights", "pubkey"], &[])
        .await
        .assert_failed_with("BASE_WEIGHTS_KEY");
}

/// With BASE_MASTER_PUBKEY, `base weights submit --dry-run` verifies the
/// master's signature like the submitter: an unsigned vector is refused,
/// a signed one shown.
#[tokio::test(flavor = "multi_thread")]
async fn weights_submit_dry_run_verifies_the_signature_when_given_the_key() {
    let m = start_master().await;
    let key = base_sdk::weights::WeightsKey::from_seed(&[0x33; 32]);
    let public = key.public().to_string();
    let env = [
        ("BASE_MASTER_URL", m.url.as_str()),
        ("BASE_MASTER_PUBKEY", public.as_str()),
    ];
    m.state.weights().publish(&snapshot(720));
    base(&["weights", "submit", "--dry-run"], &env)
        .await
        .assert_failed_with("unsigned");
    m.state.weights().set_key(std::sync::Arc::new(key));
    m.state.weights().publish(&snapshot(720));
    base(&["weights", "submit", "--dry-run"], &env)
        .await
        .assert_ok();
    let other = base_sdk::weights::WeightsKey::from_seed(&[0x34; 32])
        .public()
        .to_string();
    base(
        &["weights", "submit", "--dry-run"],
        &[
            ("BASE_MASTER_URL", m.url.as_str()),
            ("BASE_MASTER_PUBKEY", other.as_str()),
        ],
    )
    .await
    .assert_failed_with("does not verify");
}
