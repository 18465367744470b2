//! The broker: evaluation jobs from challenges, checked and run on the
//! Swarm (CONTRACTS.md §4).
//!
//! Challenges send untrusted job requests — images, commands, mounts with
//! archives — and the broker must refuse anything unsafe before a single
//! container or file exists. [`request`] and [`archive`] hold those pure
//! checks; [`service`] admits, runs, follows and reaps the jobs; [`client`]
//! is what challenges and integrators call.

pub mod archive;
pub mod client;
pub mod request;
pub mod service;

pub use client::{BrokerClient, submit_job};
pub use service::{Broker, BrokerConfig};
