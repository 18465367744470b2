//! `base-shim`: the entrypoint of a broker job with writable mounts. It
//! fills each writable mount from its seed files, runs the job's command,
//! and once that has exited prints each mount back as output lines on
//! stdout (see `base_shim::frame`), exiting with the command's status.
//!
//! ```text
//! base-shim run --token <job id> [--seed-root DIR] [--max-bytes N]
//!               [--mount <n>=<target>]... -- <argv>...
//! ```
//!
//! The command's stdout and stderr are relayed through pipes rather than
//! inherited, so the shim knows when the command's output has ended and
//! its own lines always start a fresh line of the log, never glued to a
//! half line of the job's. Termination signals are passed on to the
//! command. Exit codes: the command's; 128 + n when it died of signal n;
//! 127 when it could not be started; 125 when the shim itself could not
//! prepare the job (bad arguments, seeding failed).

use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode, Stdio};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use base_shim::frame;
use base_shim::pack::{PackLimits, pack_dir};

/// How long the command's output may go on after it exited (a process it
/// left behind still holding the pipes) before the shim stops relaying it.
const DRAIN_GRACE: Duration = Duration::from_secs(2);

struct Args {
    token: String,
    seed_root: PathBuf,
    max_bytes: usize,
    mounts: Vec<(usize, PathBuf)>,
    argv: Vec<String>,
}

fn parse(mut args: impl Iterator<Item = String>) -> Result<Args, String> {
    if args.next().as_deref() != Some("run") {
        return Err("usage: base-shim run --token T [--mount N=TARGET]... -- ARGV...".into());
    }
    let mut out = Args {
        token: String::new(),
        seed_root: PathBuf::from("/.base/seed"),
        max_bytes: base_shim::MAX_OUTPUT_COMPRESSED_BYTES,
        mounts: Vec::new(),
        argv: Vec::new(),
    };
    while let Some(flag) = args.next() {
        if flag == "--" {
            out.argv = args.collect();
            break;
        }
        let value = args.next().ok_or_else(|| format!("{flag} needs a value"))?;
        match flag.as_str() {
            "--token" => out.token = value,
            "--seed-root" => out.seed_root = PathBuf::from(value),
            "--max-bytes" => {
                out.max_bytes = value
                    .parse()
                    .map_err(|_| format!("--max-bytes '{value}' is not a number"))?
            }
            "--mount" => {
                let (n, target) = value
                    .split_once('=')
                    .ok_or_else(|| format!("--mount '{value}' is not N=TARGET"))?;
                let n = n
                    .parse()
                    .map_err(|_| format!("--mount '{value}': '{n}' is not a number"))?;
                out.mounts.push((n, PathBuf::from(target)));
            }
            other => return Err(format!("unknown option '{other}'")),
        }
    }
    if out.token.is_empty() || out.token.contains(char::is_whitespace) {
        return Err("--token is required and has no spaces".into());
    }
    if out.argv.is_empty() {
        return Err("no command after --".into());
    }
    Ok(out)
}

/// Copies the seed tree `from` into `to` (created if missing).
fn seed(from: &Path, to: &Path) -> io::Result<()> {
    std::fs::create_dir_all(to)?;
    if !from.exists() {
        return Ok(());
    }
    for entry in std::fs::read_dir(from)? {
        let entry = entry?;
        let dest = to.join(entry.file_name());
        if entry.file_type()?.is_dir() {
            seed(&entry.path(), &dest)?;
        } else {
            // Seed files arrive read-only (Swarm configs); the copies are
            // the job's to change.
            std::fs::write(&dest, std::fs::read(entry.path())?)?;
        }
    }
    Ok(())
}

/// Where relayed output goes, shared with the shim's own lines.
struct Sink {
    closed: bool,
    at_line_start: bool,
}

/// Copies `from` to stdout or stderr until EOF or the sink is closed.
fn relay(mut from: impl Read, sink: Arc<Mutex<Sink>>, stderr: bool, done: mpsc::Sender<()>) {
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        let n = match from.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        let Ok(mut state) = sink.lock() else { break };
        if state.closed {
            break;
        }
        let written = if stderr {
            io::stderr().write_all(&buf[..n])
        } else {
            io::stdout()
                .write_all(&buf[..n])
                .and_then(|()| io::stdout().flush())
        };
        if written.is_err() {
            break;
        }
        state.at_line_start = buf[n - 1] == b'\n';
    }
    let _ = done.send(());
}

/// The termination signals the shim passes on, caught from before the
/// command starts so none is lost in between.
fn catch_signals() -> Option<signal_hook::iterator::Signals> {
    use signal_hook::consts::{SIGHUP, SIGINT, SIGQUIT, SIGTERM, SIGUSR1, SIGUSR2};
    signal_hook::iterator::Signals::new([SIGTERM, SIGINT, SIGHUP, SIGQUIT, SIGUSR1, SIGUSR2]).ok()
}

/// Passes every caught signal on to the command `pid`.
fn forward_signals(mut signals: signal_hook::iterator::Signals, pid: u32) {
    use signal_hook::consts::{SIGHUP, SIGINT, SIGQUIT, SIGTERM, SIGUSR1};
    let Some(pid) = i32::try_from(pid)
        .ok()
        .and_then(rustix::process::Pid::from_raw)
    else {
        return;
    };
    std::thread::spawn(move || {
        for raw in signals.forever() {
            let sig = match raw {
                SIGTERM => rustix::process::Signal::TERM,
                SIGINT => rustix::process::Signal::INT,
                SIGHUP => rustix::process::Signal::HUP,
                SIGQUIT => rustix::process::Signal::QUIT,
                SIGUSR1 => rustix::process::Signal::USR1,
                _ => rustix::process::Signal::USR2,
            };
            let _ = rustix::process::kill_process(pid, sig);
        }
    });
}

/// Runs the command; returns its exit code for the shim to exit with.
fn run_command(argv: &[String], out: &Arc<Mutex<Sink>>, err: &Arc<Mutex<Sink>>) -> u8 {
    let signals = catch_signals();
    let mut child = match Command::new(&argv[0])
        .args(&argv[1..])
        .stdin(Stdio::inherit())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
    {
        Ok(child) => child,
        Err(e) => {
            eprintln!("base-shim: cannot run '{}': {e}", argv[0]);
            return 127;
        }
    };
    if let Some(signals) = signals {
        forward_signals(signals, child.id());
    }
    let (done_tx, done_rx) = mpsc::channel();
    let mut relays = 0;
    if let Some(stdout) = child.stdout.take() {
        let (sink, done) = (out.clone(), done_tx.clone());
        std::thread::spawn(move || relay(stdout, sink, false, done));
        relays += 1;
    }
    if let Some(stderr) = child.stderr.take() {
        let (sink, done) = (err.clone(), done_tx.clone());
        std::thread::spawn(move || relay(stderr, sink, true, done));
        relays += 1;
    }
    let code = match child.wait() {
        Ok(status) => {
            use std::os::unix::process::ExitStatusExt as _;
            match (status.code(), status.signal()) {
                (Some(code), _) => code.clamp(0, 255) as u8,
                (None, Some(sig)) => (128 + sig).clamp(0, 255) as u8,
                (None, None) => 1,
            }
        }
        Err(e) => {
            eprintln!("base-shim: waiting for the command failed: {e}");
            1
        }
    };
    let deadline = std::time::Instant::now() + DRAIN_GRACE;
    for _ in 0..relays {
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        if done_rx.recv_timeout(left).is_err() {
            break;
        }
    }
    for sink in [out, err] {
        if let Ok(mut state) = sink.lock() {
            state.closed = true;
        }
    }
    code
}

/// Prints every mount back, within one shared byte budget.
fn emit_outputs(args: &Args, at_line_start: bool) -> io::Result<()> {
    let mut stdout = io::stdout().lock();
    if !at_line_start {
        stdout.write_all(b"\n")?;
    }
    let mut budget = args.max_bytes;
    for (n, target) in &args.mounts {
        let limits = PackLimits {
            max_compressed: budget,
            ..PackLimits::default()
        };
        match pack_dir(target, &limits) {
            Ok(packed) => {
                for skipped in &packed.skipped {
                    eprintln!(
                        "base-shim: left out of {}: {skipped} (not a regular file or directory)",
                        target.display()
                    );
                }
                budget -= packed.archive.len();
                frame::write_output(&mut stdout, &args.token, *n, &packed.archive)?;
            }
            Err(e) => frame::write_error(
                &mut stdout,
                &args.token,
                *n,
                &format!("output of {}: {e}", target.display()),
            )?,
        }
    }
    stdout.flush()
}

fn main() -> ExitCode {
    let args = match parse(std::env::args().skip(1)) {
        Ok(args) => args,
        Err(e) => {
            eprintln!("base-shim: {e}");
            return ExitCode::from(125);
        }
    };
    for (n, target) in &args.mounts {
        if let Err(e) = seed(&args.seed_root.join(n.to_string()), target) {
            eprintln!("base-shim: seeding {} failed: {e}", target.display());
            return ExitCode::from(125);
        }
    }
    let out = Arc::new(Mutex::new(Sink {
        closed: false,
        at_line_start: true,
    }));
    let err = Arc::new(Mutex::new(Sink {
        closed: false,
        at_line_start: true,
    }));
    let code = run_command(&args.argv, &out, &err);
    let at_line_start = out.lock().map(|s| s.at_line_start).unwrap_or(false);
    if let Err(e) = emit_outputs(&args, at_line_start) {
        eprintln!("base-shim: writing the outputs failed: {e}");
    }
    ExitCode::from(code)
}
