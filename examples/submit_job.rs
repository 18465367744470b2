//! Runnable example of `base_sdk::broker::submit_job`: what an integrator
//! (or a challenge) does to run an evaluation job through the broker and
//! get its output back — logs, exit code, and the files it left in a
//! writable mount.
//!
//! Against `base-server dev` (which writes the quiz challenge's broker token
//! to `.base/quiz.broker-token` and runs jobs as local processes):
//!
//! ```text
//! cargo run -p base-server -- dev            # in one terminal
//! cargo run --example submit_job             # in another
//! ```
//!
//! Settings (env): `BASE_BROKER_URL` (default `http://127.0.0.1:18082`),
//! `BASE_BROKER_SLUG` (default `quiz`), `BASE_BROKER_TOKEN_FILE` (default
//! `.base/quiz.broker-token`), `BASE_JOB_IMAGE` (default
//! `base.local/eval:0.1.0`). Inside a challenge service,
//! `BrokerClient::from_env()` reads the `CHALLENGE_*` variables instead.

use std::time::Duration;

use anyhow::Context;
use base_sdk::broker::client::{BrokerClient, output_files};
use base_sdk::broker::request::BrokerRunRequest;
use base_sdk::broker::submit_job;
use futures::StreamExt;
use secrecy::SecretString;

fn env_or(name: &str, default: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| default.to_string())
}

/// A job request with the broker's hardened defaults: read-only root,
/// no network, all capabilities dropped, 512 pids, 2 CPUs, 4 GiB.
fn job(
    job_id: &str,
    image: &str,
    script: &str,
    timeout_seconds: i64,
) -> anyhow::Result<BrokerRunRequest> {
    Ok(serde_json::from_value(serde_json::json!({
        "job_id": job_id,
        "image": image,
        "command": ["sh", "-c", script],
        "timeout_seconds": timeout_seconds,
    }))?)
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let url = env_or("BASE_BROKER_URL", "http://127.0.0.1:18082");
    let slug = env_or("BASE_BROKER_SLUG", "quiz");
    let token_file = env_or("BASE_BROKER_TOKEN_FILE", ".base/quiz.broker-token");
    let image = env_or("BASE_JOB_IMAGE", "base.local/eval:0.1.0");
    let token = std::fs::read_to_string(&token_file).with_context(|| {
        format!("reading the broker token from {token_file} (is `base-server dev` running?)")
    })?;
    let client = BrokerClient::new(url, slug, SecretString::from(token.trim().to_string()))?;

    // 1. Submit, follow the output as it is produced, wait for the end.
    let script =
        "for i in 1 2 3; do echo \"step $i\"; sleep 0.2; done; echo 'a warning' >&2; exit 3";
    let submitted = submit_job(&client, &job("example-1", &image, script, 60)?).await?;
    println!("submitted job {} ({:?})", submitted.id, submitted.state);
    let mut lines = client.follow_logs(&submitted.id).await?;
    while let Some(line) = lines.next().await {
        let line = line?;
        print!("  [{:?}] {}", line.stream, line.data);
    }
    let done = client
        .wait(&submitted.id, Some(Duration::from_secs(60)))
        .await?;
    println!(
        "job {} ended {:?} with exit code {:?}",
        done.id, done.state, done.exit_code
    );

    // 2. A job that outlives its timeout is stopped and reported as 124.
    let slow = submit_job(&client, &job("example-2", &image, "sleep 30", 1)?).await?;
    let ended = client.wait(&slow.id, Some(Duration::from_secs(60))).await?;
    println!(
        "slow job ended {:?} with exit code {:?}",
        ended.state, ended.exit_code
    );

    // 3. Cancelling stops the job on its worker.
    let long = submit_job(&client, &job("example-3", &image, "sleep 300", 600)?).await?;
    let cancelled = client.cancel(&long.id).await?;
    println!("long job {:?} after cancel", cancelled.state);

    // 4. The Python-compatible synchronous call.
    let sync = client
        .run(&job("example-4", &image, "echo synchronous", 60)?)
        .await?;
    println!(
        "sync run: returncode {} stdout {:?}",
        sync.returncode, sync.stdout
    );

    // 5. A writable mount comes back: the job writes into it, the answer
    //    carries its contents as a gzip tar (checked like an input). Under
    //    `dev` mounts land under the job's working directory (`out/`); on
    //    Swarm the same mount is at `/out`.
    let mut with_output = job(
        "example-5",
        &image,
        "cd out 2>/dev/null || cd /out; echo 42 > answer.txt",
        60,
    )?;
    with_output.mounts = serde_json::from_value(serde_json::json!([
        {"target": "/out", "read_only": false, "archive_b64": ""}
    ]))?;
    let done = client.run(&with_output).await?;
    for output in &done.outputs {
        let files = output_files(output)?;
        for (path, contents) in files {
            println!(
                "{} came back with {path}: {:?}",
                output.target,
                String::from_utf8_lossy(&contents)
            );
        }
    }
    Ok(())
}
