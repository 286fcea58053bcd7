//! The `velvet` binary end to end, as one test binary: each module was its own binary once,
//! and linking fifteen copies of the crate cost more than running them.

mod api;
mod auth;
mod browser;
mod cli;
mod client;
mod common;
mod console;
mod doctor;
mod events;
mod gate;
mod leaks;
mod openapi;
mod postgres;
mod replicas;
mod rotation;
mod runbook;
mod safety;
mod schedules;
