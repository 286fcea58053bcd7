//! The rotation engine. A runner claims jobs with a renewed lease and drives each through mint,
//! distribute and revoke; every decision comes from the pure state machine in
//! `velvet_core::rotation`, every step is persisted before the next, so a replica that dies at
//! any instant leaves a job another replica (or the same one, restarted) finishes.

mod actions;
mod backoff;
mod distribute;
mod gate;
mod notifier;
mod probes;
mod runner;
mod scheduler;
mod service;
mod step_error;
mod values;

pub use gate::raise;
pub use notifier::{
    ATTEMPTS as NOTIFY_ATTEMPTS, backoff as notify_backoff, summary as notice_summary,
};
pub use probes::{ProbeReport, Resynced, classify as classify_probe};
pub use runner::{CRASH_POINTS, Engine, EngineOptions, EnvLookup};
pub use scheduler::{PassReport, REQUESTER as SCHEDULER};
pub use service::{Person, ServiceError, StageRequest};
