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
    Ok(())
}
