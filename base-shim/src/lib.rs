//! The way back for a broker job's writable mounts: the line format that
//! carries a packed output directory through a job's log, and the packing.
//!
//! A job on Swarm may run on any worker, and once its task has ended the
//! manager cannot read that worker's filesystem. The one channel that
//! reaches the manager from every node, whatever the job's network, is the
//! job's log. So the shim (this crate's binary, running as the job's
//! entrypoint) packs each writable mount as a gzip tar once the job's
//! command has exited and prints it as [`frame`] lines on stdout; the
//! broker reads them back with [`frame::Decoder`] and removes them from the
//! output the caller sees.
//!
//! The library has no dependency on the rest of BASE so that the binary
//! stays small enough to travel as a Swarm config (under 500 KiB).

pub mod frame;
pub mod pack;

/// Most compressed bytes of all of a job's outputs together: 6 MiB, whose
/// base64 (8 MiB) is what the broker accepts for an input archive, so an
/// output can be sent back as an input unchanged.
pub const MAX_OUTPUT_COMPRESSED_BYTES: usize = 6 * 1024 * 1024;
/// Most entries (files and directories) in one output archive, as for an
/// input archive.
pub const MAX_OUTPUT_MEMBERS: usize = 1000;
/// Largest file in an output, as for an input archive: 16 MiB.
pub const MAX_OUTPUT_FILE_BYTES: u64 = 16 * 1024 * 1024;
/// Most uncompressed bytes of one output, as for an input archive: 64 MiB.
pub const MAX_OUTPUT_TOTAL_BYTES: u64 = 64 * 1024 * 1024;
/// Deepest path in an output, in components, as for an input archive.
pub const MAX_OUTPUT_DEPTH: usize = 32;
/// Longest path in an output, in bytes, as for an input archive.
pub const MAX_OUTPUT_PATH_LEN: usize = 255;
