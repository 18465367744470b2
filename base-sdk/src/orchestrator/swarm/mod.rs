//! The Docker Swarm orchestrator, over the Docker Engine API (bollard).
//! Bollard's types never leave this module.

pub mod nodes;
