//! BASE CLI.
