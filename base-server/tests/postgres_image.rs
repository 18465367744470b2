//! BASE's PostgreSQL image (scripts/build-postgres-image.sh) as the installer
//! runs it: a Swarm service with its password as a Docker secret and its data
//! on a named volume. BASE's store migrations run against it, the data
//! survives a restart of the service (which stops with a fast shutdown), only
//! scram-sha-256 is accepted from TCP clients, and without the password file
//! the container refuses to start with a clear log line.
//!
//! Needs an active swarm (what `scripts/test.sh` sets up) and the
//! postgresql-15 package on the host (the build copies it into the image).

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::Write;
use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use base_sdk::config::Environment;
use base_sdk::registry::{NewChallenge, Registry};
use base_sdk::store::connect;

fn docker(args: &[&str]) -> Output {
    Command::new("docker").args(args).output().unwrap()
}

fn docker_ok(args: &[&str]) -> String {
    let out = docker(args);
    assert!(
        out.status.success(),
        "docker {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Everything the test creates, removed on drop (also when an assertion
/// fails), by the exact names it chose.
struct Objects {
    suffix: String,
}

impl Objects {
    fn image(&self) -> String {
        format!("base.local/postgres:15-test-{}", self.suffix)
    }
    fn service(&self) -> String {
        format!("base-pgtest-{}", self.suffix)
    }
    fn secret(&self) -> String {
        format!("base-pgtest-pw-{}", self.suffix)
    }
    fn network(&self) -> String {
        format!("base-pgtest-net-{}", self.suffix)
    }
    fn volume(&self) -> String {
        format!("base-pgtest-data-{}", self.suffix)
    }
    fn container(&self) -> String {
        format!("base-pgtest-nopw-{}", self.suffix)
    }
}

impl Drop for Objects {
    fn drop(&mut self) {
        let _ = docker(&["service", "rm", &self.service()]);
        let _ = docker(&["rm", "-f", &self.container()]);
        // The service's container goes away shortly after the service; the
        // volume and network can be removed only once it has.
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let left = docker(&[
                "ps",
                "-aq",
                "--filter",
                &format!("label=com.docker.swarm.service.name={}", self.service()),
            ]);
            if left.stdout.iter().all(u8::is_ascii_whitespace) || Instant::now() > deadline {
                break;
            }
            std::thread::sleep(Duration::from_millis(500));
        }
        let _ = docker(&["volume", "rm", &self.volume()]);
        let _ = docker(&["network", "rm", &self.network()]);
        let _ = docker(&["secret", "rm", &self.secret()]);
        let _ = docker(&["rmi", &self.image()]);
    }
}

/// Connects (migrations included) once the service accepts connections.
async fn connect_when_up(url: &str) -> std::sync::Arc<dyn base_sdk::store::Store> {
    let deadline = Instant::now() + Duration::from_secs(180);
    loop {
        match connect(url).await {
            Ok(store) => return store,
            Err(e) if Instant::now() < deadline => {
                let _ = e;
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
            Err(e) => panic!("the PostgreSQL service never accepted BASE's store: {e}"),
        }
    }
}

#[tokio::test]
#[ignore = "needs Docker Swarm"]
async fn postgres_image_runs_base_store_and_keeps_data_across_restarts() {
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    let objects = Objects {
        suffix: format!("{}-{}", std::process::id(), nanos % 1_000_000_000),
    };
    // A quote in the password: the entrypoint must escape it in SQL.
    let password = format!("pw'{nanos:x}");

    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let build = Command::new(root.join("scripts/build-postgres-image.sh"))
        .arg(objects.image())
        .stderr(Stdio::inherit())
        .output()
        .unwrap();
    assert!(build.status.success(), "build-postgres-image.sh failed");
    assert_eq!(
        String::from_utf8_lossy(&build.stdout).trim(),
        objects.image()
    );
    // Runs as the non-root postgres uid, with a health check.
    assert_eq!(
        docker_ok(&[
            "image",
            "inspect",
            "--format",
            "{{.Config.User}} {{json .Config.Healthcheck.Test}}",
            &objects.image()
        ]),
        "999:999 [\"CMD\",\"/usr/lib/postgresql/15/bin/pg_isready\",\"--host=127.0.0.1\",\"--port=5432\",\"--username=base\",\"--dbname=base\",\"--quiet\"]"
    );

    // No password file: refuses to start, saying why.
    let nopw = docker(&["run", "--name", &objects.container(), &objects.image()]);
    assert!(!nopw.status.success());
    let nopw_log = String::from_utf8_lossy(&nopw.stderr);
    assert!(
        nopw_log.contains("POSTGRES_PASSWORD_FILE is not set")
            && nopw_log.contains("refusing to start"),
        "unexpected log: {nopw_log}"
    );

    let mut secret = Command::new("docker")
        .args(["secret", "create", &objects.secret(), "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    secret
        .stdin
        .take()
        .unwrap()
        .write_all(password.as_bytes())
        .unwrap();
    assert!(secret.wait().unwrap().success());
    docker_ok(&[
        "network",
        "create",
        "--driver",
        "overlay",
        "--attachable",
        &objects.network(),
    ]);
    let port = free_port();
    docker_ok(&[
        "service",
        "create",
        "--detach",
        "--quiet",
        "--name",
        &objects.service(),
        "--network",
        &objects.network(),
        "--secret",
        &format!("source={},target=postgres_password", objects.secret()),
        "--env",
        "POSTGRES_PASSWORD_FILE=/run/secrets/postgres_password",
        "--mount",
        &format!(
            "type=volume,source={},target=/var/lib/postgresql/data",
            objects.volume()
        ),
        "--publish",
        &format!("mode=host,published={port},target=5432"),
        &objects.image(),
    ]);
    // The password never shows in the service's definition.
    let spec = docker_ok(&["service", "inspect", &objects.service()]);
    assert!(!spec.contains(&password));

    let encoded = password.replace('\'', "%27");
    let url = format!("postgres://base:{encoded}@127.0.0.1:{port}/base");
    let store = connect_when_up(&url).await;
    Registry::new(store.clone(), Environment::Development)
        .create(
            NewChallenge {
                slug: "kept-across-restarts".into(),
                name: "Kept".into(),
                image: "base.local/quiz-challenge:0.1.0".into(),
                version: "0.1.0".into(),
                ..Default::default()
            },
            "test",
        )
        .await
        .unwrap();
    drop(store);

    // Every TCP rule asks for scram-sha-256; a wrong password is refused.
    let pool = sqlx::PgPool::connect(&url).await.unwrap();
    let weak: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM pg_hba_file_rules WHERE auth_method <> 'scram-sha-256'",
    )
    .fetch_one(&pool)
    .await
    .unwrap();
    assert_eq!(weak, 0, "a pg_hba rule without scram-sha-256");
    pool.close().await;
    let wrong = format!("postgres://base:not-it@127.0.0.1:{port}/base");
    let refused = sqlx::PgPool::connect(&wrong).await.unwrap_err();
    assert!(
        refused
            .to_string()
            .contains("password authentication failed"),
        "{refused}"
    );

    // A restart replaces the task; the volume keeps the cluster.
    docker_ok(&[
        "service",
        "update",
        "--force",
        "--detach=false",
        "--quiet",
        &objects.service(),
    ]);
    let store = connect_when_up(&url).await;
    let slugs: Vec<String> = store
        .list_challenges()
        .await
        .unwrap()
        .into_iter()
        .map(|c| c.slug.to_string())
        .collect();
    assert_eq!(slugs, vec!["kept-across-restarts".to_string()]);
    drop(store);

    let logs = docker(&["service", "logs", "--raw", &objects.service()]);
    let logs = format!(
        "{}{}",
        String::from_utf8_lossy(&logs.stdout),
        String::from_utf8_lossy(&logs.stderr)
    );
    // The first task was stopped with a fast shutdown (the entrypoint turns
    // Docker's SIGTERM into SIGINT), and only the first start initialised.
    assert!(
        logs.contains("received fast shutdown request"),
        "no fast shutdown in the logs:\n{logs}"
    );
    assert_eq!(
        logs.matches("initialising a new cluster").count(),
        1,
        "{logs}"
    );
    assert!(!logs.contains(&password), "the password reached the logs");
}
