//! Swarm nodes: worker enrolment and labels (being written).
