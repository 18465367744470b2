//! The line format of outputs in a job's log, written by the shim and read
//! by the broker.
//!
//! Every line starts with [`MARK`] and the job's token (its broker id), so
//! the broker can take the lines out of the output the caller sees and can
//! tell them from anything the job printed itself:
//!
//! ```text
//! \x1eBASE-OUT1 <token> D <mount> <seq> <base64 of up to 2,304 bytes>
//! \x1eBASE-OUT1 <token> E <mount> <length> <sha256 hex>
//! \x1eBASE-OUT1 <token> X <mount> <base64 of a UTF-8 message>
//! ```
//!
//! `D` carries the `seq`-th chunk (from 0) of mount `mount`'s archive, `E`
//! ends it with its length and digest, `X` says why it could not be packed.
//! A line stays under 4,096 bytes, so it is one atomic pipe write and far
//! below the 16 KiB at which Docker splits a log message. Anything out of
//! order, missing, or failing its digest makes that mount's output an
//! error; it is never returned half.

use std::io::{self, Write};

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use sha2::{Digest, Sha256};

/// The start of every output line (an ASCII record separator, then a
/// versioned tag no ordinary output begins with).
pub const MARK: &str = "\u{1e}BASE-OUT1 ";
/// Raw bytes per data line (3,072 characters of base64).
pub const CHUNK_BYTES: usize = 2304;

/// Why a mount's output could not be read back.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum OutputError {
    /// The shim reported a failure for this mount.
    #[error("{0}")]
    Reported(String),
    /// No complete output arrived (the job was stopped before its command
    /// ended, it did not run under the shim, or its log lost lines).
    #[error("no output came back from the job (it was stopped, or its log lost lines)")]
    Missing,
    /// The lines arrived but do not form the archive they announce.
    #[error("the output arrived damaged: {0}")]
    Damaged(String),
    /// More than the broker accepts.
    #[error("the outputs exceed {max} compressed bytes")]
    TooLarge {
        /// The limit.
        max: usize,
    },
}

fn line_prefix(token: &str, kind: char, mount: usize) -> String {
    format!("{MARK}{token} {kind} {mount} ")
}

/// Writes mount `mount`'s archive as `D` lines and an `E` line, each with
/// one `write_all`.
pub fn write_output(
    w: &mut impl Write,
    token: &str,
    mount: usize,
    archive: &[u8],
) -> io::Result<()> {
    let prefix = line_prefix(token, 'D', mount);
    let mut line = String::with_capacity(prefix.len() + CHUNK_BYTES * 4 / 3 + 16);
    for (seq, chunk) in archive.chunks(CHUNK_BYTES).enumerate() {
        line.clear();
        line.push_str(&prefix);
        line.push_str(&seq.to_string());
        line.push(' ');
        STANDARD.encode_string(chunk, &mut line);
        line.push('\n');
        w.write_all(line.as_bytes())?;
    }
    let digest = Sha256::digest(archive);
    let end = format!(
        "{}{} {}\n",
        line_prefix(token, 'E', mount),
        archive.len(),
        hex(&digest)
    );
    w.write_all(end.as_bytes())
}

/// Writes an `X` line: mount `mount` has no output, for `message`'s reason.
pub fn write_error(w: &mut impl Write, token: &str, mount: usize, message: &str) -> io::Result<()> {
    let mut line = line_prefix(token, 'X', mount);
    // Cut long messages so the line stays one atomic write.
    let mut cut = message.len().min(2048);
    while !message.is_char_boundary(cut) {
        cut -= 1;
    }
    STANDARD.encode_string(&message.as_bytes()[..cut], &mut line);
    line.push('\n');
    w.write_all(line.as_bytes())
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Whether `line` is an output line of any job (the broker hides these
/// from the output it shows; a job cannot print one by accident).
pub fn is_frame(line: &[u8]) -> bool {
    line.starts_with(MARK.as_bytes())
}

#[derive(Debug)]
enum Mount {
    Receiving { next_seq: u64, data: Vec<u8> },
    Done(Vec<u8>),
    Failed(OutputError),
}

/// Reads a job's output lines back, mount by mount.
#[derive(Debug)]
pub struct Decoder {
    prefix: String,
    mounts: Vec<Mount>,
    received: usize,
    max_bytes: usize,
}

impl Decoder {
    /// A decoder for the job with `token` and `mounts` writable mounts,
    /// accepting at most `max_bytes` of archives in all.
    pub fn new(token: &str, mounts: usize, max_bytes: usize) -> Self {
        Self {
            prefix: format!("{MARK}{token} "),
            mounts: (0..mounts)
                .map(|_| Mount::Receiving {
                    next_seq: 0,
                    data: Vec::new(),
                })
                .collect(),
            received: 0,
            max_bytes,
        }
    }

    /// Takes one log line (with or without its newline). Returns whether
    /// it was one of this job's output lines; other lines are left to the
    /// caller.
    pub fn feed(&mut self, line: &[u8]) -> bool {
        let Some(rest) = line.strip_prefix(self.prefix.as_bytes()) else {
            return false;
        };
        let rest = rest.strip_suffix(b"\n").unwrap_or(rest);
        let rest = rest.strip_suffix(b"\r").unwrap_or(rest);
        // A line that names this job but not a mount is still this job's
        // line: it is consumed, and the mount it garbles (if any) fails.
        let Ok(text) = std::str::from_utf8(rest) else {
            return true;
        };
        let mut parts = text.splitn(4, ' ');
        let (Some(kind), Some(mount)) = (parts.next(), parts.next()) else {
            return true;
        };
        let Some(index) = mount
            .parse::<usize>()
            .ok()
            .filter(|i| *i < self.mounts.len())
        else {
            return true;
        };
        let fields: Vec<&str> = parts.collect();
        let next =
            match std::mem::replace(&mut self.mounts[index], Mount::Failed(OutputError::Missing)) {
                Mount::Receiving { next_seq, data } => self.step(kind, &fields, next_seq, data),
                settled => settled,
            };
        self.mounts[index] = next;
        true
    }

    fn step(&mut self, kind: &str, fields: &[&str], next_seq: u64, mut data: Vec<u8>) -> Mount {
        let damaged = |why: String| Mount::Failed(OutputError::Damaged(why));
        match (kind, fields) {
            ("D", [seq, chunk]) => {
                if seq.parse::<u64>().ok() != Some(next_seq) {
                    return damaged(format!(
                        "chunk {seq} arrived where chunk {next_seq} was due"
                    ));
                }
                let Ok(bytes) = STANDARD.decode(chunk) else {
                    return damaged(format!("chunk {seq} is not base64"));
                };
                self.received = self.received.saturating_add(bytes.len());
                if self.received > self.max_bytes {
                    return Mount::Failed(OutputError::TooLarge {
                        max: self.max_bytes,
                    });
                }
                data.extend_from_slice(&bytes);
                Mount::Receiving {
                    next_seq: next_seq + 1,
                    data,
                }
            }
            ("E", [len, digest]) => {
                if len.parse::<usize>().ok() != Some(data.len()) {
                    return damaged(format!("{} bytes arrived of {len}", data.len()));
                }
                if hex(&Sha256::digest(&data)) != *digest {
                    return damaged("its digest does not match".to_string());
                }
                Mount::Done(data)
            }
            ("X", [message]) => {
                let text = STANDARD
                    .decode(message)
                    .map(|m| String::from_utf8_lossy(&m).into_owned())
                    .unwrap_or_else(|_| "the job's shim reported an unreadable error".to_string());
                Mount::Failed(OutputError::Reported(text))
            }
            _ => damaged(format!(
                "a line of kind '{}' is not understood",
                kind.escape_debug()
            )),
        }
    }

    /// Each mount's archive (gzip tar), or why there is none.
    pub fn finish(self) -> Vec<Result<Vec<u8>, OutputError>> {
        self.mounts
            .into_iter()
            .map(|m| match m {
                Mount::Done(data) => Ok(data),
                Mount::Failed(e) => Err(e),
                Mount::Receiving { .. } => Err(OutputError::Missing),
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn lines(bytes: &[u8]) -> Vec<&[u8]> {
        bytes.split_inclusive(|b| *b == b'\n').collect()
    }

    fn decode(
        token: &str,
        mounts: usize,
        log: &[u8],
    ) -> (Vec<Result<Vec<u8>, OutputError>>, Vec<u8>) {
        let mut d = Decoder::new(token, mounts, 1 << 30);
        let mut rest = Vec::new();
        for line in lines(log) {
            if !d.feed(line) {
                rest.extend_from_slice(line);
            }
        }
        (d.finish(), rest)
    }

    #[test]
    fn outputs_round_trip_between_the_jobs_own_lines() {
        let mut log = b"hello\n".to_vec();
        write_output(&mut log, "job1", 0, &[7u8; 5000]).unwrap();
        log.extend_from_slice(b"between\n");
        write_error(&mut log, "job1", 1, "too big: 9 MiB").unwrap();
        write_output(&mut log, "job1", 2, b"").unwrap();
        let (out, rest) = decode("job1", 3, &log);
        assert_eq!(out[0].as_deref(), Ok(&[7u8; 5000][..]));
        assert_eq!(out[1], Err(OutputError::Reported("too big: 9 MiB".into())));
        assert_eq!(out[2].as_deref(), Ok(&[][..]));
        assert_eq!(rest, b"hello\nbetween\n");
    }

    #[test]
    fn lines_stay_under_one_atomic_pipe_write() {
        let mut log = Vec::new();
        write_output(&mut log, &"j".repeat(128), 999, &[255u8; 3 * CHUNK_BYTES]).unwrap();
        write_error(&mut log, &"j".repeat(128), 999, &"é".repeat(5000)).unwrap();
        assert!(lines(&log).iter().all(|l| l.len() < 4096));
    }

    #[test]
    fn another_jobs_lines_are_not_taken() {
        let mut log = Vec::new();
        write_output(&mut log, "other", 0, b"x").unwrap();
        let (out, rest) = decode("job1", 1, &log);
        assert_eq!(out, vec![Err(OutputError::Missing)]);
        assert_eq!(rest, log);
        assert!(lines(&log).iter().all(|l| is_frame(l)));
    }

    #[test]
    fn a_missing_reordered_or_altered_chunk_fails_the_mount() {
        let mut log = Vec::new();
        write_output(&mut log, "j", 0, &[1u8; 3 * CHUNK_BYTES]).unwrap();
        let all = lines(&log);
        // Without the second chunk.
        let dropped: Vec<u8> = all
            .iter()
            .enumerate()
            .filter(|(i, _)| *i != 1)
            .flat_map(|(_, l)| l.to_vec())
            .collect();
        assert!(matches!(
            decode("j", 1, &dropped).0[0],
            Err(OutputError::Damaged(_))
        ));
        // Without the end line.
        let unended: Vec<u8> = all[..all.len() - 1].concat();
        assert_eq!(decode("j", 1, &unended).0[0], Err(OutputError::Missing));
        // One chunk altered (still valid base64): the digest catches it.
        let text = String::from_utf8(log.clone()).unwrap();
        let altered = text.replacen("AQEB", "AQEC", 1);
        assert!(matches!(
            decode("j", 1, altered.as_bytes()).0[0],
            Err(OutputError::Damaged(_))
        ));
    }

    #[test]
    fn the_size_limit_counts_all_mounts() {
        let mut log = Vec::new();
        write_output(&mut log, "j", 0, &[1u8; 3000]).unwrap();
        write_output(&mut log, "j", 1, &[1u8; 3000]).unwrap();
        let mut d = Decoder::new("j", 2, 5000);
        for line in lines(&log) {
            d.feed(line);
        }
        let out = d.finish();
        assert!(out[0].is_ok());
        assert_eq!(out[1], Err(OutputError::TooLarge { max: 5000 }));
    }

    proptest! {
        #[test]
        fn any_archives_round_trip(
            archives in prop::collection::vec(prop::collection::vec(any::<u8>(), 0..6000), 1..4),
            noise in prop::collection::vec("[^\u{1e}\n]{0,40}\n", 0..4),
        ) {
            let mut log = Vec::new();
            for (i, a) in archives.iter().enumerate() {
                log.extend_from_slice(noise.get(i).map_or("", String::as_str).as_bytes());
                write_output(&mut log, "tok", i, a).unwrap();
            }
            let (out, rest) = decode("tok", archives.len(), &log);
            for (got, want) in out.iter().zip(&archives) {
                prop_assert_eq!(got.as_deref(), Ok(want.as_slice()));
            }
            let shown: String = noise.iter().take(archives.len()).cloned().collect();
            prop_assert_eq!(rest, shown.into_bytes());
        }

        #[test]
        fn arbitrary_lines_never_panic(line in prop::collection::vec(any::<u8>(), 0..200)) {
            let mut d = Decoder::new("t", 2, 100);
            let mut framed = format!("{MARK}t ").into_bytes();
            framed.extend_from_slice(&line);
            d.feed(&framed);
            d.feed(&line);
            let _ = d.finish();
        }
    }
}
