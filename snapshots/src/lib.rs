//! Snapshots
