//! The weight pipeline: each challenge's raw scores become one vector per
//! epoch. [`aggregate`] is the pure math, [`http`] asks the challenges,
//! [`epoch`] ties them to the registry and the metagraph, [`signing`] is
//! the master's signature validators check.

pub mod aggregate;
pub mod epoch;
pub mod http;
pub mod signing;

pub use epoch::{EpochConfig, EpochRunner};
pub use http::{HttpWeightSource, WeightSource, WeightTarget, WeightsError};
pub use signing::{WeightsKey, WeightsPublicKey};
