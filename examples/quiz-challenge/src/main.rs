//! `quiz-challenge`: the example challenge as a container entry point.
//!
//! Deliberately thin: logging setup and a call to
//! [`quiz_challenge::run_from_env`], which reads the `CHALLENGE_*` (and
//! `QUIZ_*`) environment and serves until Ctrl-C or SIGTERM, so this binary
//! and `base-server dev` run exactly the same service.
//!
//! Two small extra modes exist for the real-Swarm tests, because the image
//! is built `FROM scratch` and holds no shell or curl (see docs/swarm.md):
//!
//! - `quiz-challenge probe <base-url> <slug> <version> <token-file>` checks a
//!   challenge's readiness and calls its `get_weights` with the token read
//!   from `<token-file>` (a mounted secret, so the token is never in argv),
//!   prints one line of JSON and exits 0 when both succeed, 1 otherwise.
//! - `quiz-challenge evaluate` is the evaluation job the challenge itself
//!   runs through the broker: it reads a batch from `QUIZ_EVAL_INPUT` and
//!   prints one JSON result line (see `quiz_challenge::evaluate`).
//! - `quiz-challenge exit <code>` writes a line to stdout and one to stderr
//!   and exits with `<code>`: a job with a known outcome.
//! - `quiz-challenge cat <path>…` copies files to stdout (exit 1 naming the
//!   path when one cannot be read): how a test sees what a job's mounts hold.
//! - `quiz-challenge append <path> <text>` appends `<text>` and a newline to
//!   a file, creating it and its directories: how a test writes into a
//!   job's writable mount.

use std::io::IsTerminal;
use std::time::Duration;

use tracing_subscriber::EnvFilter;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.first().map(String::as_str) {
        Some("exit") => exit_mode(&args[1..]),
        Some("probe") => probe_mode(&args[1..]).await,
        Some("sleep") => sleep_mode(&args[1..]).await,
        Some("cat") => cat_mode(&args[1..]),
        Some("append") => append_mode(&args[1..]),
        // The broker job that scores a batch (see quiz_challenge::evaluate).
        Some("evaluate") => std::process::exit(quiz_challenge::evaluate_main()),
        _ => serve().await,
    }
}

/// The challenge service (the image's normal life).
async fn serve() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info")),
        )
        // Colours only on a terminal: `docker logs` shows escape codes verbatim.
        .with_ansi(std::io::stdout().is_terminal())
        .init();
    quiz_challenge::run_from_env().await?;
    Ok(())
}

/// `exit <code>`: known output on both streams, then the chosen exit code.
fn exit_mode(args: &[String]) -> anyhow::Result<()> {
    let code: i32 = match args.first().map(|c| c.parse()) {
        Some(Ok(code)) => code,
        _ => anyhow::bail!("usage: quiz-challenge exit <code>"),
    };
    println!("quiz-challenge exit mode: stdout, code {code}");
    eprintln!("quiz-challenge exit mode: stderr, code {code}");
    std::process::exit(code);
}

/// `cat <path>…`: each file's bytes to stdout, in order; a file that
/// cannot be read is named on stderr and the exit code is 1.
fn cat_mode(paths: &[String]) -> anyhow::Result<()> {
    use std::io::Write;
    if paths.is_empty() {
        anyhow::bail!("usage: quiz-challenge cat <path>...");
    }
    let mut out = std::io::stdout().lock();
    let mut failed = false;
    for path in paths {
        match std::fs::read(path) {
            Ok(bytes) => out.write_all(&bytes)?,
            Err(e) => {
                eprintln!("cat mode: {path}: {e}");
                failed = true;
            }
        }
    }
    out.flush()?;
    std::process::exit(i32::from(failed));
}

/// `append <path> <text>`: appends a line to a file (creating it).
fn append_mode(args: &[String]) -> anyhow::Result<()> {
    use std::io::Write;
    let [path, text] = args else {
        anyhow::bail!("usage: quiz-challenge append <path> <text>");
    };
    let path = std::path::Path::new(path);
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let mut file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)?;
    writeln!(file, "{text}")?;
    println!("append mode: wrote {}", path.display());
    Ok(())
}

/// `probe <base-url> <slug> <version> <token-file>`: readiness plus one
/// authenticated `get_weights`, reported as one JSON line.
async fn probe_mode(args: &[String]) -> anyhow::Result<()> {
    use base_sdk::orchestrator::readiness::probe_readiness;
    use base_sdk::weights::WeightSource;
    use base_sdk::weights::http::{HttpWeightSource, WeightTarget};

    let [base_url, slug, version, token_file] = args else {
        anyhow::bail!("usage: quiz-challenge probe <base-url> <slug> <version> <token-file>");
    };
    let slug = base_sdk::model::Slug::parse(slug)?;
    let token = std::fs::read_to_string(token_file)?;
    let required = base_sdk::registry::default_capabilities();
    let readiness = probe_readiness(base_url, slug.as_str(), version, &required).await;
    let source = HttpWeightSource::new(Duration::from_secs(5), 3)?;
    let target = WeightTarget {
        slug,
        base_url: base_url.clone(),
        token: token.trim().to_string().into(),
    };
    let weights = source.fetch(&target).await;
    let ok = readiness.is_ready() && weights.is_ok();
    let report = serde_json::json!({
        "ok": ok,
        "readiness": readiness,
        "weights": weights.as_ref().ok(),
        "error": weights.as_ref().err().map(ToString::to_string),
    });
    println!("{report}");
    std::process::exit(if ok { 0 } else { 1 });
}

/// `sleep <seconds> [exit code]`: a long-running job for broker tests
/// (timeouts, cancel, crash recovery) in an image with no shell: prints a
/// line, sleeps, prints another and exits with the code (default 0).
async fn sleep_mode(args: &[String]) -> anyhow::Result<()> {
    let seconds: f64 = args.first().and_then(|s| s.parse().ok()).unwrap_or(1.0);
    let code: i32 = args.get(1).and_then(|s| s.parse().ok()).unwrap_or(0);
    println!("sleep mode: sleeping {seconds} s");
    tokio::time::sleep(std::time::Duration::from_secs_f64(seconds.max(0.0))).await;
    println!("sleep mode: done");
    std::process::exit(code);
}
