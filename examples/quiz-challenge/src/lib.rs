//! Example BASE challenge (being written).
