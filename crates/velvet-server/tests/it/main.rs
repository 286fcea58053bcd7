//! The server in process: a real store, engine and router on `127.0.0.1:0`, driven over HTTP.
//! No process boundary is under test here (the CLI suite covers `velvet serve` as a binary), so
//! these start in milliseconds and await what they check instead of sleeping for it.

mod api;
mod harness;
