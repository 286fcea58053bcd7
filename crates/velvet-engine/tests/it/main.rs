//! The engine's integration tests, one binary (a binary per file links the world again each).

mod flow;
mod fresh_mint;
mod harness;
mod notify;
mod probes;
mod schedules;
mod store_faults;
mod wakeups;
