//! The broker: evaluation jobs from challenges, checked and run on the
//! Swarm (CONTRACTS.md §4).
//!
//! Challenges send untrusted job requests — images, commands, mounts with
//! archives — and the broker must refuse anything unsafe before a single
//! container or file exists. This module holds those pure checks; the
//! HTTP routes and the orchestrator call into them.

pub mod archive;
pub mod request;
