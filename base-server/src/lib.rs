//! BASE server.
