//! The integration tests of velvet-store, as one binary (one link instead of one per file).

mod conformance;
mod jobs;
mod operators;
mod sqlite_open;
