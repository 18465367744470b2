//! Checking and unpacking the untrusted archives of broker job mounts.
//!
//! A challenge sends each mount of a job as `archive_b64`: base64 of a
//! gzip-compressed tar (CONTRACTS.md §4). The bytes are untrusted — they can
//! come straight from a miner's submission — so the broker refuses anything
//! unsafe before a single file or container exists. [`decode`] does all of
//! it in memory, never touches the filesystem, and returns the `files` map
//! of an [`crate::orchestrator::JobMount`]; [`single_file`] picks the one
//! file a `source_type: file` mount needs.
//!
//! # Rules
//!
//! Everything below is *rejected*, never repaired: an entry named
//! `./a/../../b` is an error, not `b`.
//!
//! - **Base64**: the standard alphabet with padding (RFC 4648 §4), no line
//!   breaks; whitespace around the whole text is ignored. The text length is
//!   checked against [`ArchiveLimits::max_encoded_bytes`] before decoding.
//! - **Gzip**: one or more concatenated members (RFC 1952). The stream is
//!   read to its end, so every member's CRC and length are verified and
//!   trailing garbage is an error.
//! - **Size**: decompressed bytes are counted *as they are read* (headers,
//!   padding and the data after the tar end marker included). The
//!   `max_total_bytes + 1`-th byte stops everything, so a gzip bomb is never
//!   inflated further than the limit. Each regular file is checked against
//!   [`ArchiveLimits::max_file_bytes`] from its header before its data is
//!   read, and again while reading.
//! - **Tar**: ustar, GNU and pax, as read by the `tar` crate (GNU long
//!   names, pax `path` and `size` records; header checksums verified).
//!   Reading stops at the first all-zero block.
//! - **Members**: regular files go into the map. Directory entries are
//!   checked like files and then skipped — directories are implied by the
//!   paths of their files, and a repeated directory entry is harmless. Pax
//!   global headers (`g`, written by `git archive`) are skipped. Symbolic
//!   links, hard links, character and block devices, FIFOs and every other
//!   type (GNU sparse, contiguous, volume labels, unknown) are rejected.
//!   Every entry the `tar` crate yields counts towards
//!   [`ArchiveLimits::max_members`]; the GNU long-name and pax headers it
//!   folds into their member do not, but their bytes count towards the
//!   total size.
//! - **Paths** (as written in the archive, after GNU/pax long names): UTF-8,
//!   not empty, no NUL byte, at most [`ArchiveLimits::max_path_len`] bytes,
//!   no `..` component anywhere, not starting with `/`. Backslashes are
//!   rejected rather than translated: `\` separates directories for Windows
//!   tooling and is an ordinary character for Linux, and an archive that
//!   means different things to different readers is refused. For the same
//!   reason a path starting with a drive letter (`C:`) counts as absolute.
//!   `.` and empty components (a leading `./`, `a//b`, the trailing `/` of a
//!   directory) have no meaning and are dropped, so `./a/b.txt` becomes
//!   `a/b.txt`; at most [`ArchiveLimits::max_depth`] components may remain.
//!   A regular file whose name ends in `/` or `/.`, or that names the mount
//!   root itself (`./`), is rejected.
//! - **Uniqueness**: a file path appears once, and no path is both a file
//!   and a directory (`a` and `a/b`).

use std::cell::RefCell;
use std::collections::{BTreeMap, BTreeSet};
use std::io::{self, Read};
use std::rc::Rc;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use flate2::bufread::MultiGzDecoder;
use tar::{Archive, EntryType};

/// Default [`ArchiveLimits::max_encoded_bytes`]: 8 MiB of base64 text.
pub const DEFAULT_MAX_ENCODED_BYTES: usize = 8 * 1024 * 1024;
/// Default [`ArchiveLimits::max_members`].
pub const DEFAULT_MAX_MEMBERS: usize = 1000;
/// Default [`ArchiveLimits::max_file_bytes`]: 16 MiB.
pub const DEFAULT_MAX_FILE_BYTES: u64 = 16 * 1024 * 1024;
/// Default [`ArchiveLimits::max_total_bytes`]: 64 MiB.
pub const DEFAULT_MAX_TOTAL_BYTES: u64 = 64 * 1024 * 1024;
/// Default [`ArchiveLimits::max_path_len`], in bytes.
pub const DEFAULT_MAX_PATH_LEN: usize = 255;
/// Default [`ArchiveLimits::max_depth`], in path components.
pub const DEFAULT_MAX_DEPTH: usize = 32;

/// Longest member name (in characters) quoted in an error message.
const SHOWN_PATH_CHARS: usize = 200;

/// How much an archive may hold. [`Default`] gives the broker's limits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ArchiveLimits {
    /// Longest accepted base64 text, in bytes, checked before decoding.
    pub max_encoded_bytes: usize,
    /// Most tar entries (files, directories, global headers).
    pub max_members: usize,
    /// Largest regular file, in bytes.
    pub max_file_bytes: u64,
    /// Most decompressed bytes read, counted while inflating: the gzip-bomb
    /// guard.
    pub max_total_bytes: u64,
    /// Longest member path, in bytes, as written in the archive.
    pub max_path_len: usize,
    /// Most components in a normalized member path.
    pub max_depth: usize,
}

impl Default for ArchiveLimits {
    fn default() -> Self {
        Self {
            max_encoded_bytes: DEFAULT_MAX_ENCODED_BYTES,
            max_members: DEFAULT_MAX_MEMBERS,
            max_file_bytes: DEFAULT_MAX_FILE_BYTES,
            max_total_bytes: DEFAULT_MAX_TOTAL_BYTES,
            max_path_len: DEFAULT_MAX_PATH_LEN,
            max_depth: DEFAULT_MAX_DEPTH,
        }
    }
}

/// Tar framing allowed per member on top of its data when an archive's
/// decompressed total is derived from a byte budget: a 512-byte header,
/// up to 511 bytes of padding, and a GNU long-name or pax header.
const FRAMING_PER_MEMBER: u64 = 2048;
/// Framing of the archive as a whole: the end marker and the padding of
/// the last 10 KiB record.
const FRAMING_PER_ARCHIVE: u64 = 10_240;

impl ArchiveLimits {
    /// These limits, with the decompressed total lowered so that no more
    /// than `file_bytes` of file data (plus tar framing for
    /// [`ArchiveLimits::max_members`] members) can be inflated: how the
    /// budget a job's mounts share bounds each archive before it is read.
    pub fn capped_to(self, file_bytes: u64) -> Self {
        let framing = u64::try_from(self.max_members)
            .unwrap_or(u64::MAX)
            .saturating_mul(FRAMING_PER_MEMBER)
            .saturating_add(FRAMING_PER_ARCHIVE);
        Self {
            max_total_bytes: self.max_total_bytes.min(file_bytes.saturating_add(framing)),
            ..self
        }
    }
}

/// Why a mount archive was refused. Member names in the variants are
/// quoted for display: lossily decoded, control characters escaped and cut
/// at 200 characters.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ArchiveError {
    /// The base64 text is longer than the limit.
    #[error("mount archive is larger than {max} bytes of base64")]
    EncodedTooLarge {
        /// The limit, in bytes of base64 text.
        max: usize,
    },
    /// The text is not standard padded base64.
    #[error("mount archive is not valid base64")]
    BadBase64,
    /// The decoded bytes are not a valid gzip stream.
    #[error("mount archive is not valid gzip: {0}")]
    BadGzip(String),
    /// The decompressed bytes are not a valid tar archive.
    #[error("mount archive is not a valid tar archive: {0}")]
    BadTar(String),
    /// A member path starts with `/` or a drive letter.
    #[error("archive member '{0}' has an absolute path")]
    AbsolutePath(String),
    /// A member path has a `..` component.
    #[error("archive member '{0}' escapes the mount (..)")]
    ParentTraversal(String),
    /// A member is a symbolic link.
    #[error(
        "archive member '{0}' is a symbolic link; only regular files and directories are allowed"
    )]
    Symlink(String),
    /// A member is a hard link.
    #[error("archive member '{0}' is a hard link; only regular files and directories are allowed")]
    Hardlink(String),
    /// A member is a character device, block device or FIFO.
    #[error(
        "archive member '{0}' is a device or FIFO; only regular files and directories are allowed"
    )]
    Device(String),
    /// A member has any other type (GNU sparse, contiguous, volume label…).
    #[error(
        "archive member '{path}' has unsupported type {kind}; only regular files and directories are allowed"
    )]
    UnsupportedType {
        /// The member.
        path: String,
        /// The type byte and its name, e.g. `'S' (GNUSparse)`.
        kind: String,
    },
    /// The archive has more entries than the limit.
    #[error("mount archive has more than {max} members")]
    TooManyMembers {
        /// The limit.
        max: usize,
    },
    /// A regular file is larger than the limit.
    #[error("archive member '{path}' is larger than {max} bytes")]
    FileTooLarge {
        /// The member.
        path: String,
        /// The limit, in bytes.
        max: u64,
    },
    /// The archive decompresses to more than the limit.
    #[error("mount archive decompresses to more than {max} bytes")]
    TotalTooLarge {
        /// The limit, in decompressed bytes.
        max: u64,
    },
    /// A member path is longer than the limit.
    #[error("archive member '{path}' has a path longer than {max} bytes")]
    PathTooLong {
        /// The member (cut for display).
        path: String,
        /// The limit, in bytes.
        max: usize,
    },
    /// A member path has more components than the limit.
    #[error("archive member '{path}' is nested deeper than {max} directories")]
    TooDeep {
        /// The member.
        path: String,
        /// The limit, in path components.
        max: usize,
    },
    /// A member path is empty, not UTF-8, or holds a NUL or a backslash;
    /// or a regular file names a directory.
    #[error("archive member '{path}' has an invalid path: {reason}")]
    BadPath {
        /// The member.
        path: String,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// Two regular files have the same normalized path.
    #[error("archive member '{0}' appears more than once")]
    Duplicate(String),
    /// A path is used both as a file and as a directory.
    #[error("archive member '{0}' is both a file and a directory")]
    PathConflict(String),
    /// [`single_file`]: no file has the requested name.
    #[error("mount archive has no file named '{0}'")]
    MissingFile(String),
    /// [`single_file`] with source name `.`: the archive does not hold
    /// exactly one file.
    #[error("source name '.' needs an archive holding exactly one file, found {count}")]
    NotSingleFile {
        /// How many files the archive holds.
        count: usize,
    },
}

/// Checks and unpacks a mount's `archive_b64` entirely in memory.
///
/// Returns normalized relative paths (`a/b.txt`, no leading `./`) mapped to
/// the contents of the regular files; directories are implied. Every rule
/// of the [module documentation](self) is checked while reading, and the
/// first violation is returned.
pub fn decode(
    archive_b64: &str,
    limits: &ArchiveLimits,
) -> Result<BTreeMap<String, Vec<u8>>, ArchiveError> {
    if archive_b64.len() > limits.max_encoded_bytes {
        return Err(ArchiveError::EncodedTooLarge {
            max: limits.max_encoded_bytes,
        });
    }
    let compressed = STANDARD
        .decode(archive_b64.trim_ascii())
        .map_err(|_| ArchiveError::BadBase64)?;
    if compressed.is_empty() {
        return Err(ArchiveError::BadGzip("the archive is empty".to_owned()));
    }
    let state = Rc::new(RefCell::new(StreamState::default()));
    unpack(&compressed, limits, &state)
}

/// Picks the file a `source_type: file` mount places, by its `source_name`.
///
/// The name is normalized like a member path (`./model.bin` finds
/// `model.bin`; `..` and absolute names are rejected). The name `.` (the
/// default `source_name`) picks the only file of an archive holding exactly
/// one file.
pub fn single_file(
    mut files: BTreeMap<String, Vec<u8>>,
    source_name: &str,
) -> Result<Vec<u8>, ArchiveError> {
    match normalize(source_name.as_bytes(), usize::MAX, usize::MAX)? {
        Some(name) => files
            .remove(&name)
            .ok_or_else(|| ArchiveError::MissingFile(shown(source_name.as_bytes()))),
        None if files.len() == 1 => match files.pop_first() {
            Some((_, content)) => Ok(content),
            None => Err(ArchiveError::NotSingleFile { count: 0 }),
        },
        None => Err(ArchiveError::NotSingleFile { count: files.len() }),
    }
}

/// Checks a member path as written in an archive and normalizes it.
///
/// Returns `None` for the mount root itself (`.`, `./`), otherwise the
/// relative path with `.` and empty components dropped. Useful to check a
/// `source_name` before decoding.
pub fn normalize_member_path(
    raw: &[u8],
    limits: &ArchiveLimits,
) -> Result<Option<String>, ArchiveError> {
    normalize(raw, limits.max_path_len, limits.max_depth)
}

fn normalize(raw: &[u8], max_len: usize, max_depth: usize) -> Result<Option<String>, ArchiveError> {
    let bad = |reason| ArchiveError::BadPath {
        path: shown(raw),
        reason,
    };
    if raw.is_empty() {
        return Err(bad("the name is empty"));
    }
    if raw.len() > max_len {
        return Err(ArchiveError::PathTooLong {
            path: shown(raw),
            max: max_len,
        });
    }
    if raw.contains(&0) {
        return Err(bad("the name contains a NUL byte"));
    }
    let Ok(text) = std::str::from_utf8(raw) else {
        return Err(bad("the name is not UTF-8"));
    };
    if text.contains('\\') {
        return Err(bad("the name contains a backslash"));
    }
    let bytes = text.as_bytes();
    let drive_letter = bytes.len() >= 2 && bytes[0].is_ascii_alphabetic() && bytes[1] == b':';
    if text.starts_with('/') || drive_letter {
        return Err(ArchiveError::AbsolutePath(shown(raw)));
    }
    if text.split('/').any(|part| part == "..") {
        return Err(ArchiveError::ParentTraversal(shown(raw)));
    }
    let parts: Vec<&str> = text
        .split('/')
        .filter(|part| !part.is_empty() && *part != ".")
        .collect();
    if parts.len() > max_depth {
        return Err(ArchiveError::TooDeep {
            path: shown(raw),
            max: max_depth,
        });
    }
    if parts.is_empty() {
        Ok(None)
    } else {
        Ok(Some(parts.join("/")))
    }
}

/// Quotes an untrusted name for an error message.
fn shown(raw: &[u8]) -> String {
    let text = String::from_utf8_lossy(raw);
    let mut out = String::new();
    for (index, c) in text.chars().enumerate() {
        if index == SHOWN_PATH_CHARS {
            out.push('…');
            break;
        }
        if c.is_control() {
            out.extend(c.escape_default());
        } else {
            out.push(c);
        }
    }
    out
}

/// What the decompressed stream has seen, shared between the reader (owned
/// by the tar parser) and [`unpack`], which turns I/O errors into
/// [`ArchiveError`]s.
#[derive(Debug, Default)]
struct StreamState {
    /// Decompressed bytes handed out so far.
    inflated: u64,
    /// The stream had more than the limit.
    over_limit: bool,
    /// The gzip decoder failed with this message.
    gzip_error: Option<String>,
}

/// The size-limited decompressed stream: like [`Read::take`], but going
/// past the limit is an error (recorded in the shared state) rather than a
/// silent end of file that would look like a truncated tar.
struct Inflated<R> {
    inner: R,
    remaining: u64,
    state: Rc<RefCell<StreamState>>,
}

impl<R: Read> Inflated<R> {
    fn read_inner(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.inner.read(buf).inspect_err(|err| {
            self.state
                .borrow_mut()
                .gzip_error
                .get_or_insert_with(|| err.to_string());
        })
    }
}

impl<R: Read> Read for Inflated<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if buf.is_empty() {
            return Ok(0);
        }
        if self.remaining == 0 {
            // The stream may end exactly at the limit: probe one byte.
            let mut probe = [0u8; 1];
            if self.read_inner(&mut probe)? == 0 {
                return Ok(0);
            }
            self.state.borrow_mut().over_limit = true;
            return Err(io::Error::other(
                "the decompressed archive exceeds the size limit",
            ));
        }
        let want = usize::try_from(self.remaining).map_or(buf.len(), |r| r.min(buf.len()));
        let read = self.read_inner(&mut buf[..want])?;
        self.remaining = self.remaining.saturating_sub(read as u64);
        self.state.borrow_mut().inflated += read as u64;
        Ok(read)
    }
}

/// Turns an I/O error of the tar parser into the cause it stands for.
fn classify(err: &io::Error, state: &RefCell<StreamState>, limits: &ArchiveLimits) -> ArchiveError {
    let state = state.borrow();
    if state.over_limit {
        ArchiveError::TotalTooLarge {
            max: limits.max_total_bytes,
        }
    } else if let Some(message) = &state.gzip_error {
        ArchiveError::BadGzip(message.clone())
    } else {
        ArchiveError::BadTar(err.to_string())
    }
}

/// Files seen so far and the directories they imply, to catch duplicates
/// and paths used both as a file and as a directory.
#[derive(Default)]
struct Tree {
    files: BTreeSet<String>,
    dirs: BTreeSet<String>,
}

impl Tree {
    fn add_parents(&mut self, path: &str) -> Result<(), ArchiveError> {
        for (end, _) in path.match_indices('/') {
            let parent = &path[..end];
            if self.files.contains(parent) {
                return Err(ArchiveError::PathConflict(shown(parent.as_bytes())));
            }
            self.dirs.insert(parent.to_owned());
        }
        Ok(())
    }

    fn add_dir(&mut self, path: &str) -> Result<(), ArchiveError> {
        if self.files.contains(path) {
            return Err(ArchiveError::PathConflict(shown(path.as_bytes())));
        }
        self.add_parents(path)?;
        self.dirs.insert(path.to_owned());
        Ok(())
    }

    fn add_file(&mut self, path: &str) -> Result<(), ArchiveError> {
        if self.files.contains(path) {
            return Err(ArchiveError::Duplicate(shown(path.as_bytes())));
        }
        if self.dirs.contains(path) {
            return Err(ArchiveError::PathConflict(shown(path.as_bytes())));
        }
        self.add_parents(path)?;
        self.files.insert(path.to_owned());
        Ok(())
    }
}

/// Describes an entry type for [`ArchiveError::UnsupportedType`].
fn describe(kind: EntryType) -> String {
    let byte = kind.as_byte();
    format!("'{}' ({kind:?})", char::from(byte).escape_default())
}

/// [`decode`] after base64: inflates, parses and checks, member by member.
fn unpack(
    compressed: &[u8],
    limits: &ArchiveLimits,
    state: &Rc<RefCell<StreamState>>,
) -> Result<BTreeMap<String, Vec<u8>>, ArchiveError> {
    let fail = |err: io::Error| classify(&err, state, limits);
    let reader = Inflated {
        inner: MultiGzDecoder::new(compressed),
        remaining: limits.max_total_bytes,
        state: Rc::clone(state),
    };
    let mut archive = Archive::new(reader);
    let mut files = BTreeMap::new();
    let mut tree = Tree::default();
    let mut members = 0usize;
    for entry in archive.entries().map_err(fail)? {
        let mut entry = entry.map_err(fail)?;
        members += 1;
        if members > limits.max_members {
            return Err(ArchiveError::TooManyMembers {
                max: limits.max_members,
            });
        }
        let kind = entry.header().entry_type();
        if kind == EntryType::XGlobalHeader {
            continue;
        }
        let raw = entry.path_bytes().into_owned();
        let path = normalize_member_path(&raw, limits)?;
        match kind {
            EntryType::Regular => {
                let last = raw.rsplit(|byte| *byte == b'/').next();
                let path = match path {
                    Some(path) if !matches!(last, Some(b"" | b".")) => path,
                    Some(_) => {
                        return Err(ArchiveError::BadPath {
                            path: shown(&raw),
                            reason: "a regular file's name ends with '/' or '.'",
                        });
                    }
                    None => {
                        return Err(ArchiveError::BadPath {
                            path: shown(&raw),
                            reason: "a regular file cannot be the mount root",
                        });
                    }
                };
                let size = entry.size();
                if size > limits.max_file_bytes {
                    return Err(ArchiveError::FileTooLarge {
                        path: shown(&raw),
                        max: limits.max_file_bytes,
                    });
                }
                let budget = limits
                    .max_total_bytes
                    .saturating_sub(state.borrow().inflated);
                if size > budget {
                    return Err(ArchiveError::TotalTooLarge {
                        max: limits.max_total_bytes,
                    });
                }
                tree.add_file(&path)?;
                let mut content = Vec::new();
                (&mut entry)
                    .take(limits.max_file_bytes.saturating_add(1))
                    .read_to_end(&mut content)
                    .map_err(fail)?;
                let read = content.len() as u64;
                if read > limits.max_file_bytes {
                    return Err(ArchiveError::FileTooLarge {
                        path: shown(&raw),
                        max: limits.max_file_bytes,
                    });
                }
                if read != size {
                    // A silent end of file inside a member: a truncated
                    // stream, maybe a truncated gzip member.
                    let state = state.borrow();
                    return Err(match &state.gzip_error {
                        Some(message) => ArchiveError::BadGzip(message.clone()),
                        None => ArchiveError::BadTar(format!(
                            "member '{}' is truncated ({read} of {size} bytes)",
                            shown(&raw)
                        )),
                    });
                }
                files.insert(path, content);
            }
            EntryType::Directory => {
                if let Some(path) = path {
                    tree.add_dir(&path)?;
                }
            }
            EntryType::Symlink => return Err(ArchiveError::Symlink(shown(&raw))),
            EntryType::Link => return Err(ArchiveError::Hardlink(shown(&raw))),
            EntryType::Char | EntryType::Block | EntryType::Fifo => {
                return Err(ArchiveError::Device(shown(&raw)));
            }
            other => {
                return Err(ArchiveError::UnsupportedType {
                    path: shown(&raw),
                    kind: describe(other),
                });
            }
        }
    }
    // Read to the end of the gzip stream: verifies every member's CRC and
    // length and rejects trailing garbage, still within the size limit.
    let mut rest = archive.into_inner();
    io::copy(&mut rest, &mut io::sink()).map_err(fail)?;
    if state.borrow().inflated == 0 {
        return Err(ArchiveError::BadTar(
            "the archive is empty (not even an end-of-archive block)".to_owned(),
        ));
    }
    Ok(files)
}

#[cfg(test)]
mod tests {
    use super::*;
    use flate2::Compression;
    use flate2::write::GzEncoder;
    use proptest::prelude::*;
    use std::io::Write;
    use tar::{Builder, Header};

    /// The shim packs outputs within the limits the broker then checks
    /// them against: the two sets of constants must not drift apart.
    #[test]
    fn output_limits_are_the_input_limits() {
        assert_eq!(base_shim::MAX_OUTPUT_MEMBERS, DEFAULT_MAX_MEMBERS);
        assert_eq!(base_shim::MAX_OUTPUT_FILE_BYTES, DEFAULT_MAX_FILE_BYTES);
        assert_eq!(base_shim::MAX_OUTPUT_TOTAL_BYTES, DEFAULT_MAX_TOTAL_BYTES);
        assert_eq!(base_shim::MAX_OUTPUT_DEPTH, DEFAULT_MAX_DEPTH);
        assert_eq!(base_shim::MAX_OUTPUT_PATH_LEN, DEFAULT_MAX_PATH_LEN);
        // Base64 of the largest output still fits an input archive.
        assert!(
            base_shim::MAX_OUTPUT_COMPRESSED_BYTES.div_ceil(3) * 4 <= DEFAULT_MAX_ENCODED_BYTES
        );
    }

    fn gz(data: &[u8]) -> Vec<u8> {
        let mut encoder = GzEncoder::new(Vec::new(), Compression::default());
        encoder.write_all(data).unwrap();
        encoder.finish().unwrap()
    }

    fn b64(data: &[u8]) -> String {
        STANDARD.encode(data)
    }

    fn file_header(size: usize) -> Header {
        let mut header = Header::new_gnu();
        header.set_size(size as u64);
        header.set_mode(0o644);
        header.set_entry_type(EntryType::Regular);
        header
    }

    /// A well-formed tar, through the tar crate's own checked API.
    fn tar_of(files: &[(&str, &[u8])]) -> Vec<u8> {
        let mut builder = Builder::new(Vec::new());
        for (path, data) in files {
            let mut header = file_header(data.len());
            builder.append_data(&mut header, path, *data).unwrap();
        }
        builder.into_inner().unwrap()
    }

    /// Appends an entry with a hand-set name (no checks by the tar crate),
    /// preceded by a GNU long-name entry when the name needs one.
    fn raw_member(builder: &mut Builder<Vec<u8>>, path: &[u8], kind: EntryType, data: &[u8]) {
        if path.len() > 100 {
            let mut long = Header::new_gnu();
            long.as_old_mut().name[..13].copy_from_slice(b"././@LongLink");
            long.set_entry_type(EntryType::GNULongName);
            long.set_size(path.len() as u64 + 1);
            long.set_mode(0o644);
            long.set_cksum();
            builder
                .append(&long, [path, b"\0"].concat().as_slice())
                .unwrap();
        }
        let mut header = Header::new_gnu();
        let short = &path[..path.len().min(100)];
        header.as_old_mut().name[..short.len()].copy_from_slice(short);
        header.set_entry_type(kind);
        header.set_size(data.len() as u64);
        header.set_mode(0o644);
        header.set_cksum();
        builder.append(&header, data).unwrap();
    }

    /// A hand-made entry: raw name, type, data.
    type Member<'a> = (&'a [u8], EntryType, &'a [u8]);

    fn raw_tar(members: &[Member]) -> Vec<u8> {
        let mut builder = Builder::new(Vec::new());
        for (path, kind, data) in members {
            raw_member(&mut builder, path, *kind, data);
        }
        builder.into_inner().unwrap()
    }

    fn decode_tar(tar: &[u8]) -> Result<BTreeMap<String, Vec<u8>>, ArchiveError> {
        decode(&b64(&gz(tar)), &ArchiveLimits::default())
    }

    fn decode_raw(path: &str, kind: EntryType) -> Result<BTreeMap<String, Vec<u8>>, ArchiveError> {
        decode_tar(&raw_tar(&[(path.as_bytes(), kind, b"x")]))
    }

    #[test]
    fn round_trips_files_and_drops_dot_prefixes() {
        let tar = raw_tar(&[
            (b"./", EntryType::Directory, b""),
            (b"./a.txt", EntryType::Regular, b"hello"),
            (b"./dir/", EntryType::Directory, b""),
            (b"./dir/b.bin", EntryType::Regular, &[0, 1, 2, 255]),
            (b"dir/./c//d", EntryType::Regular, b""),
            (b"dir/", EntryType::Directory, b""),
        ]);
        let files = decode_tar(&tar).unwrap();
        let expected: BTreeMap<String, Vec<u8>> = [
            ("a.txt", b"hello".to_vec()),
            ("dir/b.bin", vec![0, 1, 2, 255]),
            ("dir/c/d", Vec::new()),
        ]
        .into_iter()
        .map(|(path, data)| (path.to_owned(), data))
        .collect();
        assert_eq!(files, expected);
    }

    #[test]
    fn an_empty_tar_is_an_empty_mount_but_an_empty_stream_is_not_a_tar() {
        assert_eq!(decode_tar(&tar_of(&[])).unwrap(), BTreeMap::new());
        assert!(matches!(decode_tar(b""), Err(ArchiveError::BadTar(_))));
    }

    #[test]
    fn long_names_through_gnu_and_pax_headers() {
        let long = format!("{}/file.txt", "d".repeat(150));
        // GNU long name, written by the tar crate itself.
        let files = decode_tar(&tar_of(&[(&long, b"gnu")])).unwrap();
        assert_eq!(files.get(&long).map(Vec::as_slice), Some(&b"gnu"[..]));
        // Pax `path` record.
        let mut builder = Builder::new(Vec::new());
        builder
            .append_pax_extensions([("path", long.as_bytes())])
            .unwrap();
        raw_member(&mut builder, b"short", EntryType::Regular, b"pax");
        let files = decode_tar(&builder.into_inner().unwrap()).unwrap();
        assert_eq!(files.keys().collect::<Vec<_>>(), [&long]);
    }

    #[test]
    fn pax_and_gnu_long_names_are_checked_not_the_short_header_name() {
        let mut builder = Builder::new(Vec::new());
        builder
            .append_pax_extensions([("path", &b"../evil"[..])])
            .unwrap();
        raw_member(&mut builder, b"innocent.txt", EntryType::Regular, b"x");
        assert_eq!(
            decode_tar(&builder.into_inner().unwrap()),
            Err(ArchiveError::ParentTraversal("../evil".to_owned()))
        );
        let long = format!("{}/../../../etc/passwd", "a".repeat(120));
        assert!(matches!(
            decode_raw(&long, EntryType::Regular),
            Err(ArchiveError::ParentTraversal(_))
        ));
    }

    #[test]
    fn git_archive_global_headers_are_skipped() {
        let tar = raw_tar(&[
            (
                b"pax_global_header",
                EntryType::XGlobalHeader,
                b"52 comment=0123456789abcdef0123456789abcdef01234567\n",
            ),
            (b"a", EntryType::Regular, b"1"),
        ]);
        assert_eq!(decode_tar(&tar).unwrap().len(), 1);
    }

    #[test]
    fn parent_traversal_is_rejected_not_sanitized() {
        for path in [
            "../x",
            "./a/../../b",
            "a/..",
            "a/../b",
            "..",
            "a/b/../../..",
        ] {
            assert_eq!(
                decode_raw(path, EntryType::Regular),
                Err(ArchiveError::ParentTraversal(path.to_owned())),
                "{path}"
            );
        }
        assert_eq!(
            ArchiveError::ParentTraversal("../x".to_owned()).to_string(),
            "archive member '../x' escapes the mount (..)"
        );
        // A directory entry is checked as well.
        assert!(matches!(
            decode_raw("../d/", EntryType::Directory),
            Err(ArchiveError::ParentTraversal(_))
        ));
    }

    #[test]
    fn absolute_and_windows_paths_are_rejected() {
        for path in ["/etc/passwd", "//x", "/", "C:/x", "c:x"] {
            assert_eq!(
                decode_raw(path, EntryType::Regular),
                Err(ArchiveError::AbsolutePath(path.to_owned())),
                "{path}"
            );
        }
        for path in ["a\\b", "..\\x", "C:\\x"] {
            assert!(
                matches!(
                    decode_raw(path, EntryType::Regular),
                    Err(ArchiveError::BadPath { .. })
                ),
                "{path}"
            );
        }
    }

    #[test]
    fn bad_names_are_rejected() {
        let empty = decode_tar(&raw_tar(&[(b"", EntryType::Regular, b"x")]));
        assert!(matches!(empty, Err(ArchiveError::BadPath { .. })));
        let latin1 = decode_tar(&raw_tar(&[(b"caf\xe9", EntryType::Regular, b"x")]));
        assert!(matches!(
            latin1,
            Err(ArchiveError::BadPath {
                reason: "the name is not UTF-8",
                ..
            })
        ));
        // A pax path may hold a NUL, a header name cannot.
        let mut builder = Builder::new(Vec::new());
        builder
            .append_pax_extensions([("path", &b"a\0b"[..])])
            .unwrap();
        raw_member(&mut builder, b"ok", EntryType::Regular, b"x");
        assert!(matches!(
            decode_tar(&builder.into_inner().unwrap()),
            Err(ArchiveError::BadPath {
                reason: "the name contains a NUL byte",
                ..
            })
        ));
        for path in ["./", ".", "a/", "a/."] {
            assert!(
                matches!(
                    decode_raw(path, EntryType::Regular),
                    Err(ArchiveError::BadPath { .. })
                ),
                "{path}"
            );
        }
    }

    #[test]
    fn links_devices_and_other_types_are_rejected() {
        assert_eq!(
            decode_raw("l", EntryType::Symlink),
            Err(ArchiveError::Symlink("l".to_owned()))
        );
        assert_eq!(
            decode_raw("h", EntryType::Link),
            Err(ArchiveError::Hardlink("h".to_owned()))
        );
        for kind in [EntryType::Char, EntryType::Block, EntryType::Fifo] {
            assert_eq!(
                decode_raw("dev", kind),
                Err(ArchiveError::Device("dev".to_owned()))
            );
        }
        for kind in [
            EntryType::Continuous,
            EntryType::new(b'V'),
            EntryType::new(b'Z'),
        ] {
            assert!(
                matches!(
                    decode_raw("odd", kind),
                    Err(ArchiveError::UnsupportedType { .. })
                ),
                "{kind:?}"
            );
        }
        // A link is rejected even when it sits behind a harmless file.
        let tar = raw_tar(&[
            (b"a", EntryType::Regular, b"1"),
            (b"b", EntryType::Symlink, b""),
        ]);
        assert_eq!(decode_tar(&tar), Err(ArchiveError::Symlink("b".to_owned())));
    }

    #[test]
    fn duplicates_and_file_directory_conflicts_are_rejected() {
        let dup = raw_tar(&[
            (b"a", EntryType::Regular, b"1"),
            (b"./a", EntryType::Regular, b"2"),
        ]);
        assert_eq!(
            decode_tar(&dup),
            Err(ArchiveError::Duplicate("a".to_owned()))
        );
        let cases: [&[Member]; 3] = [
            &[
                (b"a", EntryType::Regular, b"1"),
                (b"a/b", EntryType::Regular, b"2"),
            ],
            &[
                (b"a/b", EntryType::Regular, b"1"),
                (b"a", EntryType::Regular, b"2"),
            ],
            &[
                (b"a/", EntryType::Directory, b""),
                (b"a", EntryType::Regular, b"2"),
            ],
        ];
        for members in cases {
            assert!(
                matches!(
                    decode_tar(&raw_tar(members)),
                    Err(ArchiveError::PathConflict(_))
                ),
                "{members:?}"
            );
        }
        let file_then_dir = raw_tar(&[
            (b"a", EntryType::Regular, b"1"),
            (b"a/", EntryType::Directory, b""),
        ]);
        assert!(matches!(
            decode_tar(&file_then_dir),
            Err(ArchiveError::PathConflict(_))
        ));
    }

    #[test]
    fn member_count_path_length_and_depth_limits() {
        let limits = ArchiveLimits {
            max_members: 3,
            max_path_len: 20,
            max_depth: 3,
            ..ArchiveLimits::default()
        };
        let four = tar_of(&[("a", b""), ("b", b""), ("c", b""), ("d", b"")]);
        assert_eq!(
            decode(&b64(&gz(&four)), &limits),
            Err(ArchiveError::TooManyMembers { max: 3 })
        );
        let three = tar_of(&[("a", b""), ("b", b""), ("c", b"")]);
        assert_eq!(decode(&b64(&gz(&three)), &limits).unwrap().len(), 3);
        let long = tar_of(&[(&"x".repeat(21), b"")]);
        assert!(matches!(
            decode(&b64(&gz(&long)), &limits),
            Err(ArchiveError::PathTooLong { max: 20, .. })
        ));
        let deep = tar_of(&[("a/b/c/d", b"")]);
        assert!(matches!(
            decode(&b64(&gz(&deep)), &limits),
            Err(ArchiveError::TooDeep { max: 3, .. })
        ));
        let ok = tar_of(&[("./a/b/c", b"")]);
        assert!(decode(&b64(&gz(&ok)), &limits).is_ok());
    }

    #[test]
    fn file_size_limit_from_the_header_and_while_reading() {
        let limits = ArchiveLimits {
            max_file_bytes: 10,
            ..ArchiveLimits::default()
        };
        let eleven = tar_of(&[("big", &[7u8; 11])]);
        assert_eq!(
            decode(&b64(&gz(&eleven)), &limits),
            Err(ArchiveError::FileTooLarge {
                path: "big".to_owned(),
                max: 10
            })
        );
        let ten = tar_of(&[("ok", &[7u8; 10])]);
        assert_eq!(
            decode(&b64(&gz(&ten)), &limits).unwrap()["ok"],
            vec![7u8; 10]
        );
        // A header claiming 200 MiB, with no data behind it: refused from
        // the header, before anything is read or allocated.
        let mut header = file_header(0);
        header.as_old_mut().name[..4].copy_from_slice(b"huge");
        header.set_size(200 << 20);
        header.set_cksum();
        let mut lying = header.as_bytes().to_vec();
        lying.extend_from_slice(&[0u8; 1024]);
        assert!(matches!(
            decode_tar(&lying),
            Err(ArchiveError::FileTooLarge { .. })
        ));
    }

    #[test]
    fn total_size_limit_across_files() {
        let limits = ArchiveLimits {
            max_file_bytes: 1000,
            max_total_bytes: 4096,
            ..ArchiveLimits::default()
        };
        let names: Vec<String> = (0..8).map(|i| format!("f{i}")).collect();
        let data = [1u8; 1000];
        let members: Vec<(&str, &[u8])> = names.iter().map(|n| (n.as_str(), &data[..])).collect();
        assert_eq!(
            decode(&b64(&gz(&tar_of(&members))), &limits),
            Err(ArchiveError::TotalTooLarge { max: 4096 })
        );
        // Exactly at the limit is fine, one byte less is not: the limit
        // counts every decompressed byte (headers, padding, end blocks).
        let one = tar_of(&[("f", &[1u8; 512])]);
        let at_limit = ArchiveLimits {
            max_total_bytes: one.len() as u64,
            ..limits
        };
        assert_eq!(decode(&b64(&gz(&one)), &at_limit).unwrap().len(), 1);
        let below = ArchiveLimits {
            max_total_bytes: one.len() as u64 - 1,
            ..limits
        };
        assert_eq!(
            decode(&b64(&gz(&one)), &below),
            Err(ArchiveError::TotalTooLarge {
                max: one.len() as u64 - 1
            })
        );
    }

    /// A real gzip bomb: 200 MiB of tar (25 files of 8 MiB zeros, each under
    /// the file limit) in about 200 KB of gzip. Built from concatenated gzip
    /// members so the test compresses 8 MiB once, not 200 MiB.
    #[test]
    fn gzip_bomb_is_stopped_while_inflating() {
        let limits = ArchiveLimits::default();
        let chunk = 8usize << 20;
        let zeros = gz(&vec![0u8; chunk]);
        let mut bomb = Vec::new();
        for i in 0..25 {
            let mut header = file_header(chunk);
            header.set_path(format!("zeros-{i}")).unwrap();
            header.set_cksum();
            bomb.extend_from_slice(&gz(header.as_bytes()));
            bomb.extend_from_slice(&zeros);
        }
        bomb.extend_from_slice(&gz(&[0u8; 1024]));
        assert!(bomb.len() < 400_000, "bomb is {} bytes", bomb.len());
        let state = Rc::new(RefCell::new(StreamState::default()));
        assert_eq!(
            unpack(&bomb, &limits, &state),
            Err(ArchiveError::TotalTooLarge {
                max: limits.max_total_bytes
            })
        );
        // Stopped before reading past the limit, and refused from the
        // header of the first file that would not fit.
        let inflated = state.borrow().inflated;
        assert!(inflated <= limits.max_total_bytes, "{inflated}");
        // Through the public entry point, too.
        assert!(matches!(
            decode(&b64(&bomb), &limits),
            Err(ArchiveError::TotalTooLarge { .. })
        ));
    }

    /// A single-stream bomb whose tar headers are garbage-free zeros: the
    /// tar parser stops at the first zero block, and the drain to the end
    /// of the gzip stream is what meets the limit.
    #[test]
    fn zeros_after_the_end_marker_still_count() {
        let limits = ArchiveLimits {
            max_total_bytes: 1 << 20,
            ..ArchiveLimits::default()
        };
        let bomb = gz(&vec![0u8; 4 << 20]);
        let state = Rc::new(RefCell::new(StreamState::default()));
        assert_eq!(
            unpack(&bomb, &limits, &state),
            Err(ArchiveError::TotalTooLarge { max: 1 << 20 })
        );
        assert_eq!(state.borrow().inflated, 1 << 20);
    }

    #[test]
    fn bad_base64_and_oversized_text() {
        assert_eq!(
            decode("not base64!!", &ArchiveLimits::default()),
            Err(ArchiveError::BadBase64)
        );
        assert_eq!(
            decode("QUJD=", &ArchiveLimits::default()),
            Err(ArchiveError::BadBase64)
        );
        assert!(matches!(
            decode("", &ArchiveLimits::default()),
            Err(ArchiveError::BadGzip(_))
        ));
        let limits = ArchiveLimits {
            max_encoded_bytes: 8,
            ..ArchiveLimits::default()
        };
        assert_eq!(
            decode("QUJDREVGR0hJ", &limits),
            Err(ArchiveError::EncodedTooLarge { max: 8 })
        );
        // Surrounding whitespace is fine.
        let archive = format!("  {}\n", b64(&gz(&tar_of(&[("a", b"1")]))));
        assert_eq!(
            decode(&archive, &ArchiveLimits::default()).unwrap().len(),
            1
        );
    }

    #[test]
    fn bad_gzip_is_rejected() {
        let good = gz(&tar_of(&[("a.txt", &[42u8; 3000])]));
        // Not gzip at all.
        assert!(matches!(
            decode_b(b"hello, not gzip"),
            Err(ArchiveError::BadGzip(_))
        ));
        // Truncated at every length.
        for cut in [1, 5, 10, 20, good.len() / 2, good.len() - 8, good.len() - 1] {
            let result = decode_b(&good[..cut]);
            assert!(
                matches!(result, Err(ArchiveError::BadGzip(_))),
                "cut at {cut}: {result:?}"
            );
        }
        // Corrupted CRC (last 8 bytes are CRC32 and length).
        let mut bad_crc = good.clone();
        let at = bad_crc.len() - 8;
        bad_crc[at] ^= 0xff;
        assert!(matches!(decode_b(&bad_crc), Err(ArchiveError::BadGzip(_))));
        // Trailing garbage after the gzip stream.
        let mut trailing = good.clone();
        trailing.extend_from_slice(b"garbage");
        assert!(matches!(decode_b(&trailing), Err(ArchiveError::BadGzip(_))));
        assert!(decode_b(&good).is_ok());
    }

    fn decode_b(compressed: &[u8]) -> Result<BTreeMap<String, Vec<u8>>, ArchiveError> {
        decode(&b64(compressed), &ArchiveLimits::default())
    }

    #[test]
    fn non_tar_payloads_are_rejected() {
        let text = "this is plain text, not a tar archive\n".repeat(40);
        assert!(matches!(
            decode_tar(text.as_bytes()),
            Err(ArchiveError::BadTar(_))
        ));
        assert!(matches!(decode_tar(b"short"), Err(ArchiveError::BadTar(_))));
        // A member whose data is cut short.
        let tar = tar_of(&[("a", &[1u8; 2000])]);
        assert!(matches!(
            decode_tar(&tar[..1024]),
            Err(ArchiveError::BadTar(_))
        ));
        // A broken header checksum.
        let mut tar = tar_of(&[("a", b"1")]);
        tar[0] = b'b';
        assert!(matches!(decode_tar(&tar), Err(ArchiveError::BadTar(_))));
    }

    #[test]
    fn single_file_picks_by_name() {
        let files: BTreeMap<String, Vec<u8>> = [
            ("a/model.bin".to_owned(), vec![1]),
            ("b".to_owned(), vec![2]),
        ]
        .into_iter()
        .collect();
        assert_eq!(single_file(files.clone(), "a/model.bin").unwrap(), vec![1]);
        assert_eq!(
            single_file(files.clone(), "./a/model.bin").unwrap(),
            vec![1]
        );
        assert_eq!(
            single_file(files.clone(), "missing"),
            Err(ArchiveError::MissingFile("missing".to_owned()))
        );
        assert_eq!(
            single_file(files.clone(), "."),
            Err(ArchiveError::NotSingleFile { count: 2 })
        );
        assert!(matches!(
            single_file(files.clone(), "../b"),
            Err(ArchiveError::ParentTraversal(_))
        ));
        assert!(matches!(
            single_file(files, "/b"),
            Err(ArchiveError::AbsolutePath(_))
        ));
        let one: BTreeMap<String, Vec<u8>> = [("only".to_owned(), vec![3])].into_iter().collect();
        assert_eq!(single_file(one, ".").unwrap(), vec![3]);
    }

    #[test]
    fn error_messages_quote_names_safely() {
        let name = format!("evil\n\u{1b}[31m{}", "x".repeat(500));
        let shown = shown(name.as_bytes());
        assert!(shown.starts_with("evil\\n\\u{1b}[31m"));
        assert!(shown.ends_with('…'));
        assert!(shown.chars().count() < 230);
    }

    /// A path component that is never `.` or `..`; directories start with
    /// `d` and files with `f`, so no path is both.
    fn dir_part() -> impl Strategy<Value = String> {
        "d[a-zA-Z0-9_.-]{0,8}"
    }

    fn file_part() -> impl Strategy<Value = String> {
        "f[a-zA-Z0-9_. -]{0,12}"
    }

    fn safe_path() -> impl Strategy<Value = String> {
        (prop::collection::vec(dir_part(), 0..5), file_part()).prop_map(|(dirs, file)| {
            let mut parts = dirs;
            parts.push(file);
            parts.join("/")
        })
    }

    /// Any path with a `..` component somewhere, or an absolute one.
    fn unsafe_path() -> impl Strategy<Value = String> {
        prop_oneof![
            (
                prop::collection::vec(dir_part(), 0..6),
                any::<prop::sample::Index>(),
                any::<bool>()
            )
                .prop_map(|(mut parts, at, dot_prefix)| {
                    let at = at.index(parts.len() + 1);
                    parts.insert(at, "..".to_owned());
                    let path = parts.join("/");
                    if dot_prefix {
                        format!("./{path}")
                    } else {
                        path
                    }
                }),
            safe_path().prop_map(|path| format!("/{path}")),
        ]
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(128))]

        /// A job's remaining budget only ever lowers an archive's limits,
        /// and always leaves room for that much file data.
        #[test]
        fn capped_limits_never_widen_and_fit_the_budget(budget in 0u64..(1 << 40)) {
            let limits = ArchiveLimits::default();
            let capped = limits.capped_to(budget);
            prop_assert!(capped.max_total_bytes <= limits.max_total_bytes);
            prop_assert!(
                capped.max_total_bytes >= budget.min(limits.max_total_bytes)
            );
            prop_assert_eq!(
                ArchiveLimits { max_total_bytes: limits.max_total_bytes, ..capped },
                limits
            );
        }

        #[test]
        fn safe_archives_round_trip_exactly(
            files in prop::collection::btree_map(safe_path(), prop::collection::vec(any::<u8>(), 0..1500), 0..20),
            dot_prefix in any::<bool>(),
            with_dirs in any::<bool>(),
        ) {
            let mut builder = Builder::new(Vec::new());
            for (path, data) in &files {
                let prefix = if dot_prefix { "./" } else { "" };
                if with_dirs && let Some((dir, _)) = path.rsplit_once('/') {
                    let mut header = Header::new_gnu();
                    header.set_entry_type(EntryType::Directory);
                    header.set_mode(0o755);
                    header.set_size(0);
                    builder.append_data(&mut header, format!("{prefix}{dir}/"), &[][..]).unwrap();
                }
                let mut header = file_header(data.len());
                builder.append_data(&mut header, format!("{prefix}{path}"), data.as_slice()).unwrap();
            }
            let archive = b64(&gz(&builder.into_inner().unwrap()));
            prop_assert_eq!(decode(&archive, &ArchiveLimits::default()).unwrap(), files);
        }

        #[test]
        fn decode_never_panics_on_arbitrary_bytes(bytes in prop::collection::vec(any::<u8>(), 0..4096)) {
            let _ = decode(&b64(&bytes), &ArchiveLimits::default());
            // The same bytes as a tar, so the tar parser sees them too.
            let _ = decode(&b64(&gz(&bytes)), &ArchiveLimits::default());
        }

        #[test]
        fn decode_never_panics_on_mutated_archives(
            flips in prop::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..8),
        ) {
            let mut builder = Builder::new(Vec::new());
            let long = format!("{}/f", "d".repeat(120));
            builder.append_data(&mut file_header(3), &long, &b"abc"[..]).unwrap();
            builder.append_data(&mut file_header(600), "g", &[9u8; 600][..]).unwrap();
            let mut tar = builder.into_inner().unwrap();
            for (at, byte) in flips {
                let at = at.index(tar.len());
                tar[at] = byte;
            }
            let _ = decode(&b64(&gz(&tar)), &ArchiveLimits::default());
        }

        #[test]
        fn traversal_and_absolute_paths_are_always_rejected(
            path in unsafe_path(),
            kind in prop::sample::select(vec![EntryType::Regular, EntryType::Directory]),
        ) {
            let result = decode_tar(&raw_tar(&[(path.as_bytes(), kind, b"")]));
            prop_assert!(
                matches!(result, Err(ArchiveError::ParentTraversal(_) | ArchiveError::AbsolutePath(_))),
                "{} -> {:?}", path, result
            );
        }
    }
}
