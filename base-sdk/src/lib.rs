//! BASE: run many independent evaluation challenges as one Bittensor subnet.
//!
//! This crate holds every concept and rule of the platform; the
//! `base-server` and `base` binaries are thin shells over it. Modules are
//! nouns (see `shared/ARCHITECTURE.md`): [`model`] for wire types,
//! [`store`] for persistence, [`registry`] for challenge rules, [`config`]
//! for settings and [`auth`] for credentials.

pub mod auth;
pub mod broker;
pub mod chain;
pub mod challenge;
pub mod config;
pub mod install;
pub mod metagraph;
pub mod model;
pub mod node;
pub mod orchestrator;
pub mod proxy;
pub mod registry;
pub mod store;
pub mod supervisor;
pub mod vault;
pub mod weights;

#[cfg(feature = "testing")]
pub mod testing;
