//! Velvet's domain: everything that is true about tokens, versions, keys and the audit chain
//! without a database, an HTTP server or a network in sight.

pub mod attention;
pub mod audit;
pub mod config;
pub mod decision;
pub mod duration;
pub mod fs;
pub mod gate;
pub mod identity;
pub mod job;
pub mod job_view;
pub mod keyring;
pub mod limiter;
pub mod model;
pub mod operator;
pub mod rotation;
pub mod schedule;
pub mod secret;
pub mod template;
