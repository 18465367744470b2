//! Load generator for the broker benchmark (`benches/broker_jobs.sh`):
//! submits N trivial jobs at once through `base_sdk::broker::submit_job`,
//! waits for every one to end, and prints one JSON line with the wall time,
//! jobs/s and per-job latency percentiles (submit → terminal state).
//!
//! ```text
//! BASE_BROKER_URL=http://127.0.0.1:18082 BASE_BROKER_SLUG=bench \
//! BASE_BROKER_TOKEN_FILE=/path/token BASE_JOB_IMAGE=base.local/quiz-challenge:0.1.0 \
//! cargo run --release --example broker_load -- 200 exit 0
//! ```
//!
//! Everything after the job count is the job's command.

use std::time::{Duration, Instant};

use anyhow::Context;
use base_sdk::broker::client::BrokerClient;
use base_sdk::broker::request::BrokerRunRequest;
use base_sdk::broker::submit_job;
use base_sdk::orchestrator::JobState;
use secrecy::SecretString;

fn env_or(name: &str, default: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| default.to_string())
}

/// The `p`-th percentile (0..=100) of sorted `values`.
fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let rank = (p / 100.0 * (sorted.len() - 1) as f64).round() as usize;
    sorted[rank.min(sorted.len() - 1)]
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    let count: usize = args
        .next()
        .unwrap_or_else(|| "200".into())
        .parse()
        .context("the first argument is the number of jobs")?;
    let command: Vec<String> = args.collect();
    let command = if command.is_empty() {
        vec!["exit".to_string(), "0".to_string()]
    } else {
        command
    };
    let token_file = env_or("BASE_BROKER_TOKEN_FILE", ".base/quiz.broker-token");
    let token = std::fs::read_to_string(&token_file)
        .with_context(|| format!("reading the broker token from {token_file}"))?;
    let client = BrokerClient::new(
        env_or("BASE_BROKER_URL", "http://127.0.0.1:18082"),
        env_or("BASE_BROKER_SLUG", "quiz"),
        SecretString::from(token.trim().to_string()),
    )?;
    let image = env_or("BASE_JOB_IMAGE", "base.local/quiz-challenge:0.1.0");

    let started = Instant::now();
    let jobs = (0..count).map(|i| {
        let client = client.clone();
        let request: anyhow::Result<BrokerRunRequest> = serde_json::from_value(serde_json::json!({
            "job_id": format!("load-{i}"),
            "image": image,
            "image_pull_policy": "Never",
            "command": command,
            "timeout_seconds": 600,
            "limits": {"cpus": 0.1, "memory": "32m"},
        }))
        .map_err(Into::into);
        tokio::spawn(async move {
            let request = request?;
            let t = Instant::now();
            let job = submit_job(&client, &request).await?;
            let submitted = t.elapsed();
            let done = client.wait(&job.id, Some(Duration::from_secs(900))).await?;
            anyhow::Ok((submitted, t.elapsed(), done.state))
        })
    });
    let results = futures::future::join_all(jobs).await;
    let wall = started.elapsed();

    let mut latencies = Vec::new();
    let mut submits = Vec::new();
    let mut failed = 0usize;
    for result in results {
        match result {
            Ok(Ok((submit, total, JobState::Succeeded))) => {
                submits.push(submit.as_secs_f64() * 1000.0);
                latencies.push(total.as_secs_f64() * 1000.0);
            }
            Ok(Ok((_, _, state))) => {
                failed += 1;
                eprintln!("job ended {state:?}");
            }
            Ok(Err(e)) => {
                failed += 1;
                eprintln!("job error: {e:#}");
            }
            Err(e) => {
                failed += 1;
                eprintln!("task error: {e}");
            }
        }
    }
    latencies.sort_by(f64::total_cmp);
    submits.sort_by(f64::total_cmp);
    println!(
        "{}",
        serde_json::json!({
            "path": "broker",
            "jobs": count,
            "succeeded": latencies.len(),
            "failed": failed,
            "wall_s": wall.as_secs_f64(),
            "jobs_per_s": count as f64 / wall.as_secs_f64(),
            "latency_ms_p50": percentile(&latencies, 50.0),
            "latency_ms_p99": percentile(&latencies, 99.0),
            "submit_ms_p50": percentile(&submits, 50.0),
            "submit_ms_p99": percentile(&submits, 99.0),
        })
    );
    if failed > 0 {
        anyhow::bail!("{failed} of {count} jobs did not succeed");
    }
    Ok(())
}
