//! What job mounts cost on Swarm: for jobs with 0, 16 and 256 mounted files
//! (1 KiB each, one Swarm config per file), the time `run_job` takes to
//! create the configs and the service, and `remove_job` to stop and delete
//! both, as medians over a few rounds. Figures go in docs/benchmarks.md.
//!
//! Needs an active swarm whose node is labelled `base.workload=cpu` and the
//! image `base.local/quiz-challenge:0.1.0` (scripts/build-example-image.sh):
//!
//! ```text
//! cargo run --release --example swarm_mount_cost -- [rounds=5]
//! ```
//!
//! With `BASE_JOB_SHIM` naming the static job shim (scripts/build-shim.sh),
//! it also measures writable mounts coming back: jobs whose mount at
//! `/work` is seeded with 0, 1 and 4 MiB of incompressible data, run to
//! completion with the mount read-only and then writable, timing the whole
//! run (create → ended) and `job_outputs` (reading the mount back through
//! the job's log).

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use anyhow::Context;
use base_sdk::model::{ImageRef, Slug};
use base_sdk::orchestrator::swarm::SwarmOrchestrator;
use base_sdk::orchestrator::{JobLimits, JobMount, JobNetwork, JobSpec, Orchestrator};

/// A trivial CPU job with `files` mounted files of 1 KiB.
fn job(id: &str, files: usize) -> anyhow::Result<JobSpec> {
    Ok(JobSpec {
        id: id.to_string(),
        slug: Slug::parse("bench-mounts")?,
        job_id: id.to_string(),
        task_id: None,
        image: ImageRef::parse("base.local/quiz-challenge:0.1.0")?,
        command: vec!["exit".into(), "0".into()],
        workdir: None,
        env: BTreeMap::new(),
        labels: BTreeMap::new(),
        limits: JobLimits {
            cpus: 0.2,
            memory_bytes: 64 << 20,
            pids: 64,
            gpus: None,
            network: JobNetwork::Default,
            read_only: true,
            user: Some("65534:65534".into()),
            tmpfs: vec![],
            ulimits: vec![],
            cap_drop: vec!["ALL".into()],
            security_opt: vec!["no-new-privileges".into()],
            init: true,
        },
        mounts: if files == 0 {
            vec![]
        } else {
            vec![JobMount {
                target: "/work/in".into(),
                read_only: true,
                files: (0..files)
                    .map(|i| (format!("f{i:03}.txt"), vec![b'x'; 1024]))
                    .collect(),
            }]
        },
        timeout_seconds: 60,
        deadline_at: base_sdk::model::now() + Duration::from_secs(300),
    })
}

/// `n` bytes nobody can compress (xorshift64; only the size matters).
fn noise(n: usize, seed: u64) -> Vec<u8> {
    let mut x = seed | 1;
    (0..n)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

/// Seeds `/work` with `bytes` of noise in files of 500,000 bytes.
fn seeded(id: &str, bytes: usize, writable: bool) -> anyhow::Result<JobSpec> {
    let mut spec = job(id, 0)?;
    spec.command = vec!["append".into(), "/work/done.txt".into(), "ok".into()];
    let files = (0..bytes.div_ceil(500_000))
        .map(|i| {
            let size = (bytes - i * 500_000).min(500_000);
            (format!("seed-{i}.bin"), noise(size, i as u64 + 7))
        })
        .collect();
    spec.mounts = vec![JobMount {
        target: "/work".into(),
        read_only: !writable,
        files,
    }];
    Ok(spec)
}

/// Medians of (run → ended, job_outputs) for writable mounts, against the
/// same job with the mount read-only (where `append` fails, so only the
/// run counts).
async fn writable_cost(shim: String, rounds: usize) -> anyhow::Result<()> {
    let o = SwarmOrchestrator::connect()
        .await?
        .with_job_shim(Some(shim));
    for mib in [0usize, 1, 4] {
        for writable in [false, true] {
            // A read-only mount needs a file (a config cannot make an
            // empty directory).
            if mib == 0 && !writable {
                continue;
            }
            let (mut whole, mut read_back) = (Vec::new(), Vec::new());
            let mut out_bytes = 0;
            for round in 0..rounds {
                let id = format!("bench-out-{mib}-{writable}-{round}");
                let spec = seeded(&id, mib << 20, writable)?;
                let t = Instant::now();
                o.run_job(&spec).await?;
                o.wait_job(&id, Duration::from_secs(120)).await?;
                whole.push(t.elapsed());
                if writable {
                    let t = Instant::now();
                    let outputs = o.job_outputs(&id, 1).await?;
                    read_back.push(t.elapsed());
                    out_bytes = outputs[0].as_ref().map_or(0, Vec::len);
                }
                o.remove_job(&id).await?;
            }
            println!(
                "{{\"seed_mib\": {mib}, \"writable\": {writable}, \"rounds\": {rounds}, \"run_to_end_ms_median\": {:.1}, \"job_outputs_ms_median\": {:.1}, \"output_bytes\": {out_bytes}}}",
                median(whole),
                median(read_back)
            );
        }
    }
    Ok(())
}

fn median(mut v: Vec<Duration>) -> f64 {
    v.sort();
    v.get(v.len() / 2)
        .map_or(f64::NAN, |d| d.as_secs_f64() * 1000.0)
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let rounds: usize = std::env::args()
        .nth(1)
        .map(|r| r.parse())
        .transpose()
        .context("rounds must be a number")?
        .unwrap_or(5);
    let o = SwarmOrchestrator::connect().await?;
    for files in [0usize, 16, 256] {
        let (mut create, mut remove) = (Vec::new(), Vec::new());
        for round in 0..rounds {
            let id = format!("bench-mounts-{files}-{round}");
            let spec = job(&id, files)?;
            let t = Instant::now();
            o.run_job(&spec).await?;
            create.push(t.elapsed());
            let t = Instant::now();
            o.remove_job(&id).await?;
            remove.push(t.elapsed());
        }
        println!(
            "{{\"files\": {files}, \"rounds\": {rounds}, \"run_job_ms_median\": {:.1}, \"remove_job_ms_median\": {:.1}}}",
            median(create),
            median(remove)
        );
    }
    if let Ok(shim) = std::env::var("BASE_JOB_SHIM") {
        writable_cost(shim, rounds).await?;
    }
    Ok(())
}
