//! Packing a writable mount's directory as the gzip tar the caller gets
//! back, within the limits the broker applies to any archive.
//!
//! Only directories and regular files are packed: the broker refuses
//! links, devices and FIFOs in archives, so they are left out here and
//! named in [`Packed::skipped`] rather than failing the whole output.

use std::fs;
use std::io::{self, Write};
use std::path::Path;

use flate2::Compression;
use flate2::write::GzEncoder;

/// The limits of one packing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PackLimits {
    /// Most compressed bytes.
    pub max_compressed: usize,
    /// Most entries.
    pub max_members: usize,
    /// Largest file.
    pub max_file_bytes: u64,
    /// Most file bytes in all.
    pub max_total_bytes: u64,
    /// Deepest path, in components.
    pub max_depth: usize,
    /// Longest path, in bytes.
    pub max_path_len: usize,
}

impl Default for PackLimits {
    fn default() -> Self {
        Self {
            max_compressed: crate::MAX_OUTPUT_COMPRESSED_BYTES,
            max_members: crate::MAX_OUTPUT_MEMBERS,
            max_file_bytes: crate::MAX_OUTPUT_FILE_BYTES,
            max_total_bytes: crate::MAX_OUTPUT_TOTAL_BYTES,
            max_depth: crate::MAX_OUTPUT_DEPTH,
            max_path_len: crate::MAX_OUTPUT_PATH_LEN,
        }
    }
}

/// Why a directory could not be packed.
#[derive(Debug, thiserror::Error)]
pub enum PackError {
    /// Reading the directory failed.
    #[error("reading '{path}': {source}")]
    Io {
        /// Where.
        path: String,
        /// What.
        #[source]
        source: io::Error,
    },
    /// A limit was passed.
    #[error("{0}")]
    Limit(String),
}

/// A packed directory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Packed {
    /// The gzip tar.
    pub archive: Vec<u8>,
    /// Entries left out (not a directory or regular file), relative paths.
    pub skipped: Vec<String>,
}

/// A writer that refuses to grow past its limit.
struct Capped {
    buf: Vec<u8>,
    max: usize,
}

impl Write for Capped {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        if self.buf.len().saturating_add(data.len()) > self.max {
            return Err(io::Error::other(OVER_COMPRESSED));
        }
        self.buf.extend_from_slice(data);
        Ok(data.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

const OVER_COMPRESSED: &str = "compressed size over the limit";

struct Walk<'a> {
    limits: &'a PackLimits,
    builder: tar::Builder<GzEncoder<Capped>>,
    members: usize,
    total: u64,
    skipped: Vec<String>,
}

/// Packs `dir`'s contents (not `dir` itself) as a gzip tar, entries in
/// name order, owned by root, with their permission bits and mtimes.
pub fn pack_dir(dir: &Path, limits: &PackLimits) -> Result<Packed, PackError> {
    let capped = Capped {
        buf: Vec::new(),
        max: limits.max_compressed,
    };
    let mut walk = Walk {
        limits,
        builder: tar::Builder::new(GzEncoder::new(capped, Compression::default())),
        members: 0,
        total: 0,
        skipped: Vec::new(),
    };
    walk.dir(dir, "", 0)?;
    let finish = |e: io::Error| over_or_io(e, limits, dir);
    let gz = walk.builder.into_inner().map_err(finish)?;
    let capped = gz.finish().map_err(finish)?;
    Ok(Packed {
        archive: capped.buf,
        skipped: walk.skipped,
    })
}

fn over_or_io(e: io::Error, limits: &PackLimits, path: &Path) -> PackError {
    if e.to_string() == OVER_COMPRESSED {
        PackError::Limit(format!(
            "the output is over {} bytes compressed",
            limits.max_compressed
        ))
    } else {
        PackError::Io {
            path: path.display().to_string(),
            source: e,
        }
    }
}

impl Walk<'_> {
    fn io(path: &Path) -> impl FnOnce(io::Error) -> PackError + '_ {
        move |source| PackError::Io {
            path: path.display().to_string(),
            source,
        }
    }

    fn dir(&mut self, dir: &Path, rel: &str, depth: usize) -> Result<(), PackError> {
        let mut entries = fs::read_dir(dir)
            .map_err(Self::io(dir))?
            .collect::<Result<Vec<_>, _>>()
            .map_err(Self::io(dir))?;
        entries.sort_by_key(|e| e.file_name());
        for entry in entries {
            let path = entry.path();
            let name = entry.file_name();
            let Some(name) = name.to_str() else {
                self.skipped
                    .push(format!("{rel}{}", name.to_string_lossy()));
                continue;
            };
            let child = format!("{rel}{name}");
            let meta = fs::symlink_metadata(&path).map_err(Self::io(&path))?;
            let kind = meta.file_type();
            if !kind.is_dir() && !kind.is_file() {
                self.skipped.push(child);
                continue;
            }
            self.members += 1;
            if self.members > self.limits.max_members {
                return Err(PackError::Limit(format!(
                    "the output has more than {} entries",
                    self.limits.max_members
                )));
            }
            // As written in the archive: a directory's name ends in `/`.
            let written = child.len() + usize::from(kind.is_dir());
            if depth + 1 > self.limits.max_depth || written > self.limits.max_path_len {
                return Err(PackError::Limit(format!(
                    "'{child}' is deeper than {} levels or longer than {} bytes",
                    self.limits.max_depth, self.limits.max_path_len
                )));
            }
            let mut header = tar::Header::new_gnu();
            header.set_mode(std::os::unix::fs::PermissionsExt::mode(&meta.permissions()) & 0o777);
            header.set_mtime(
                meta.modified()
                    .ok()
                    .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
                    .map_or(0, |d| d.as_secs()),
            );
            header.set_uid(0);
            header.set_gid(0);
            let over = |e| over_or_io(e, self.limits, &path);
            if kind.is_dir() {
                header.set_entry_type(tar::EntryType::Directory);
                header.set_size(0);
                let dir_name = format!("{child}/");
                self.builder
                    .append_data(&mut header, &dir_name, io::empty())
                    .map_err(over)?;
                self.dir(&path, &dir_name, depth + 1)?;
            } else {
                let size = meta.len();
                if size > self.limits.max_file_bytes {
                    return Err(PackError::Limit(format!(
                        "'{child}' has {size} bytes; an output file may have at most {}",
                        self.limits.max_file_bytes
                    )));
                }
                self.total = self.total.saturating_add(size);
                if self.total > self.limits.max_total_bytes {
                    return Err(PackError::Limit(format!(
                        "the output's files have more than {} bytes in all",
                        self.limits.max_total_bytes
                    )));
                }
                let data = fs::read(&path).map_err(Self::io(&path))?;
                header.set_entry_type(tar::EntryType::Regular);
                header.set_size(data.len() as u64);
                self.builder
                    .append_data(&mut header, &child, data.as_slice())
                    .map_err(over)?;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use flate2::read::GzDecoder;
    use std::io::Read;

    fn listing(archive: &[u8]) -> Vec<(String, Vec<u8>)> {
        let mut tar = tar::Archive::new(GzDecoder::new(archive));
        tar.entries()
            .unwrap()
            .map(|e| {
                let mut e = e.unwrap();
                let path = e.path().unwrap().to_string_lossy().into_owned();
                let mut data = Vec::new();
                e.read_to_end(&mut data).unwrap();
                (path, data)
            })
            .collect()
    }

    #[test]
    fn files_and_directories_are_packed_in_order_and_links_skipped() {
        let dir = tempfile::tempdir().unwrap();
        fs::create_dir_all(dir.path().join("b/c")).unwrap();
        fs::write(dir.path().join("b/c/x.txt"), b"deep").unwrap();
        fs::write(dir.path().join("a.txt"), b"top").unwrap();
        std::os::unix::fs::symlink("/etc/passwd", dir.path().join("link")).unwrap();
        let packed = pack_dir(dir.path(), &PackLimits::default()).unwrap();
        assert_eq!(
            listing(&packed.archive),
            vec![
                ("a.txt".into(), b"top".to_vec()),
                ("b/".into(), vec![]),
                ("b/c/".into(), vec![]),
                ("b/c/x.txt".into(), b"deep".to_vec()),
            ]
        );
        assert_eq!(packed.skipped, vec!["link".to_string()]);
    }

    #[test]
    fn an_empty_directory_packs_to_an_empty_archive() {
        let dir = tempfile::tempdir().unwrap();
        let packed = pack_dir(dir.path(), &PackLimits::default()).unwrap();
        assert!(listing(&packed.archive).is_empty());
    }

    #[test]
    fn every_limit_is_enforced_with_a_message() {
        let dir = tempfile::tempdir().unwrap();
        for i in 0..3 {
            fs::write(dir.path().join(format!("f{i}")), vec![b'x'; 100]).unwrap();
        }
        let cases = [
            (
                PackLimits {
                    max_members: 2,
                    ..Default::default()
                },
                "more than 2 entries",
            ),
            (
                PackLimits {
                    max_file_bytes: 99,
                    ..Default::default()
                },
                "at most 99",
            ),
            (
                PackLimits {
                    max_total_bytes: 250,
                    ..Default::default()
                },
                "more than 250 bytes",
            ),
            (
                PackLimits {
                    max_compressed: 40,
                    ..Default::default()
                },
                "over 40 bytes compressed",
            ),
            (
                PackLimits {
                    max_path_len: 1,
                    ..Default::default()
                },
                "longer than 1 bytes",
            ),
        ];
        for (limits, want) in cases {
            let err = pack_dir(dir.path(), &limits).unwrap_err().to_string();
            assert!(err.contains(want), "{err} should say {want}");
        }
    }
}
