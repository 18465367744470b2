//! The shim binary end to end: seeding, running, relaying, exit codes and
//! the outputs it prints, read back with the broker's decoder.
#![allow(clippy::unwrap_used)]

use std::collections::BTreeMap;
use std::io::Read;
use std::process::Command;

use base_shim::frame::{Decoder, OutputError, is_frame};
use flate2::read::GzDecoder;

struct Run {
    code: Option<i32>,
    shown: String,
    stderr: String,
    outputs: Vec<Result<Vec<u8>, OutputError>>,
}

fn shim(args: &[&str], mounts: usize) -> Run {
    let out = Command::new(env!("CARGO_BIN_EXE_base-shim"))
        .args(args)
        .output()
        .unwrap();
    let mut decoder = Decoder::new("job-1", mounts, base_shim::MAX_OUTPUT_COMPRESSED_BYTES);
    let mut shown = Vec::new();
    for line in out.stdout.split_inclusive(|b| *b == b'\n') {
        if !decoder.feed(line) {
            assert!(!is_frame(line));
            shown.extend_from_slice(line);
        }
    }
    Run {
        code: out.status.code(),
        shown: String::from_utf8(shown).unwrap(),
        stderr: String::from_utf8(out.stderr).unwrap(),
        outputs: decoder.finish(),
    }
}

fn files(archive: &[u8]) -> BTreeMap<String, String> {
    let mut tar = tar::Archive::new(GzDecoder::new(archive));
    let mut out = BTreeMap::new();
    for entry in tar.entries().unwrap() {
        let mut entry = entry.unwrap();
        let path = entry.path().unwrap().to_string_lossy().into_owned();
        let mut text = String::new();
        entry.read_to_string(&mut text).unwrap();
        out.insert(path, text);
    }
    out
}

#[test]
fn seeds_runs_and_returns_every_writable_mount() {
    let seeds = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(seeds.path().join("0/sub")).unwrap();
    std::fs::write(seeds.path().join("0/sub/in.txt"), "seeded").unwrap();
    let work = tempfile::tempdir().unwrap();
    let (a, b) = (work.path().join("a"), work.path().join("b"));
    let script = format!(
        "cat {a}/sub/in.txt; printf ' and changed' >> {a}/sub/in.txt; echo new > {b}/made.txt; \
         echo to-stderr >&2; printf 'no newline at the end'; exit 3",
        a = a.display(),
        b = b.display()
    );
    let seed_root = seeds.path().display().to_string();
    let m0 = format!("0={}", a.display());
    let m1 = format!("1={}", b.display());
    let run = shim(
        &[
            "run",
            "--token",
            "job-1",
            "--seed-root",
            &seed_root,
            "--mount",
            &m0,
            "--mount",
            &m1,
            "--",
            "sh",
            "-c",
            &script,
        ],
        2,
    );
    assert_eq!(run.code, Some(3), "the command's exit code comes through");
    // The job's own output is relayed unchanged (the shim ends the last
    // half line before its own lines).
    assert_eq!(run.shown, "seededno newline at the end\n");
    assert_eq!(run.stderr, "to-stderr\n");
    let first = files(run.outputs[0].as_ref().unwrap());
    assert_eq!(
        first.get("sub/in.txt").map(String::as_str),
        Some("seeded and changed")
    );
    assert!(first.contains_key("sub/"));
    let second = files(run.outputs[1].as_ref().unwrap());
    assert_eq!(second.get("made.txt").map(String::as_str), Some("new\n"));
}

#[test]
fn a_command_that_cannot_start_is_127_and_outputs_still_come_back() {
    let work = tempfile::tempdir().unwrap();
    let m0 = format!("0={}", work.path().join("out").display());
    let run = shim(
        &[
            "run",
            "--token",
            "job-1",
            "--mount",
            &m0,
            "--",
            "/no/such/program",
        ],
        1,
    );
    assert_eq!(run.code, Some(127));
    assert!(
        run.stderr.contains("cannot run '/no/such/program'"),
        "{}",
        run.stderr
    );
    assert!(files(run.outputs[0].as_ref().unwrap()).is_empty());
}

#[test]
fn an_output_over_the_budget_is_reported_not_cut() {
    let work = tempfile::tempdir().unwrap();
    let out = work.path().join("out");
    let m0 = format!("0={}", out.display());
    let script = format!("head -c 200000 /dev/urandom > {}/noise", out.display());
    let run = shim(
        &[
            "run",
            "--token",
            "job-1",
            "--max-bytes",
            "100000",
            "--mount",
            &m0,
            "--",
            "sh",
            "-c",
            &script,
        ],
        1,
    );
    assert_eq!(run.code, Some(0));
    match &run.outputs[0] {
        Err(OutputError::Reported(msg)) => {
            assert!(msg.contains("over 100000 bytes compressed"), "{msg}")
        }
        other => panic!("expected a reported error, got {other:?}"),
    }
}

#[test]
fn a_signal_reaches_the_command_and_the_shim_waits_for_it() {
    let mut child = Command::new(env!("CARGO_BIN_EXE_base-shim"))
        .args([
            "run",
            "--token",
            "job-1",
            "--",
            "sh",
            "-c",
            "trap 'exit 42' TERM; echo ready; while :; do sleep 0.05; done",
        ])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdout = child.stdout.take().unwrap();
    let mut first = [0u8; 6];
    stdout.read_exact(&mut first).unwrap();
    assert_eq!(&first, b"ready\n");
    let pid = rustix::process::Pid::from_raw(child.id() as i32).unwrap();
    rustix::process::kill_process(pid, rustix::process::Signal::TERM).unwrap();
    // The command's trap ran (exit 42) rather than the shim dying of it.
    assert_eq!(child.wait().unwrap().code(), Some(42));
    let _ = stdout.read_to_end(&mut Vec::new());
}

#[test]
fn bad_arguments_are_125_with_a_message() {
    let run = shim(
        &[
            "run", "--token", "job-1", "--mount", "nonsense", "--", "true",
        ],
        0,
    );
    assert_eq!(run.code, Some(125));
    assert!(
        run.stderr.contains("--mount 'nonsense' is not N=TARGET"),
        "{}",
        run.stderr
    );
}
