//! The integration tests of velvet-adapters, as one binary (one link instead of one per file).

mod cloudflare;
mod consumers;
mod github;
mod heroku;
mod infisical;
mod mysql;
mod probe;
mod sources;
mod vault;
