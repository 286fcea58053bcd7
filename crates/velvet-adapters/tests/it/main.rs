//! The integration tests of velvet-adapters, as one binary (one link instead of one per file).

mod consumers;
mod mysql;
mod sources;
mod vault;
