//! The weight pipeline: each challenge's raw scores become one vector per
//! epoch.

pub mod aggregate;
