//! `velvet-bench`: the measurements of design §9. Each prints Velvet's figure, the reference it
//! is divided by (a bound or a peer measured in the same run), and the ratio against its target.
//! Run through `scripts/bench`, which builds in release mode.

mod b1_fanout;
mod b2_postgres;
mod b3_read;
mod b4_sse;
mod b5_audit;
mod b6_mixed;
mod b7_heroku;
mod b8_schedule;
mod b9_storm;
mod job;

use clap::{Parser, Subcommand};

#[derive(Parser, Debug)]
#[command(name = "velvet-bench")]
struct Cli {
    #[command(subcommand)]
    bench: Bench,
}

#[derive(Subcommand, Debug)]
enum Bench {
    /// B1: fan-out to N webhooks answering after 50 ms, concurrency 64 (target ≥ 0.90 of the bound).
    B1 {
        #[arg(long, default_value_t = 1000)]
        consumers: usize,
    },
    /// B2: PostgreSQL role rotations/s ÷ OpenBao rotate-role on raft (target ≥ 1.2).
    B2 {
        #[arg(long, default_value_t = 200)]
        roles: usize,
        /// Only Velvet's figures, and with `random` tokens beside them (for profiling).
        #[arg(long)]
        velvet_only: bool,
    },
    /// B3: GET a token at 64 connections (wrk) ÷ OpenBao static-role read (target ≥ 2.0, p99 < 10 ms).
    B3,
    /// B4: N SSE clients on one job: p99 delivery delay < 100 ms, RSS growth < 64 MiB.
    B4 {
        #[arg(long, default_value_t = 2000)]
        clients: usize,
    },
    /// B5: audit verify entries/s ÷ raw HMAC-SHA256 over the same bytes (target ≥ 0.5).
    B5 {
        #[arg(long, default_value_t = 200_000)]
        entries: usize,
    },
    /// B6: mixed load on SQLite and PostgreSQL: reads and kickoffs at fixed rates (0 errors,
    /// read p99 < 10 ms, every rotation started and succeeded).
    B6 {
        #[arg(long, default_value_t = 60)]
        seconds: u64,
        #[arg(long, default_value_t = 2000)]
        reads_per_s: u64,
        #[arg(long, default_value_t = 40)]
        rotations_per_s: u64,
    },
    /// B7: N Heroku apps behind a 100-request bucket refilled at 10/s: zero 429s, within 1.1× of
    /// the time the budget allows.
    B7 {
        #[arg(long, default_value_t = 200)]
        apps: usize,
    },
    /// B8: the scheduler's pass over N scheduled tokens ≤ 50 ms, and N×10 within 10× of it.
    B8 {
        #[arg(long, default_value_t = 10_000)]
        tokens: usize,
    },
    /// B9: 1,000 notifications drain within the channel's pace (16 at once) and B1 beside them
    /// keeps its time (target ≥ 0.9 of B1 alone).
    B9 {
        #[arg(long, default_value_t = 1000)]
        events: usize,
        #[arg(long, default_value_t = 1000)]
        consumers: usize,
    },
}

/// One result row: what was measured, the reference, and the target for the ratio.
#[derive(Debug)]
pub struct Row {
    pub id: &'static str,
    pub measure: String,
    pub velvet: f64,
    pub reference: f64,
    pub unit: &'static str,
    pub target: f64,
}

impl Row {
    pub fn print(&self) {
        let ratio = self.velvet / self.reference;
        let verdict = if ratio >= self.target { "PASS" } else { "FAIL" };
        println!(
            "{:<5} {:<58} {:>14.3} {:>14.3} {:<10} {:>7.2} {:>7} {}",
            self.id,
            self.measure,
            self.velvet,
            self.reference,
            self.unit,
            ratio,
            // Two decimals: a target such as 1 ÷ 1.1 prints as ≥0.91.
            format!("≥{}", (self.target * 100.0).round() / 100.0),
            verdict
        );
    }
}

pub fn header() {
    println!(
        "{:<5} {:<58} {:>14} {:>14} {:<10} {:>7} {:>7} verdict",
        "id", "measure", "velvet", "reference", "unit", "ratio", "target"
    );
}

#[tokio::main]
async fn main() {
    let cli = Cli::parse();
    header();
    match cli.bench {
        Bench::B1 { consumers } => b1_fanout::run(consumers).await.iter().for_each(Row::print),
        Bench::B2 { roles, velvet_only } => b2_postgres::run(roles, velvet_only)
            .await
            .iter()
            .for_each(Row::print),
        Bench::B3 => b3_read::run().await.iter().for_each(Row::print),
        Bench::B4 { clients } => b4_sse::run(clients).await.iter().for_each(Row::print),
        Bench::B5 { entries } => b5_audit::run(entries).await.print(),
        Bench::B6 {
            seconds,
            reads_per_s,
            rotations_per_s,
        } => b6_mixed::run(seconds, reads_per_s, rotations_per_s)
            .await
            .iter()
            .for_each(Row::print),
        Bench::B7 { apps } => b7_heroku::run(apps).await.iter().for_each(Row::print),
        Bench::B8 { tokens } => b8_schedule::run(tokens).await.iter().for_each(Row::print),
        Bench::B9 { events, consumers } => b9_storm::run(events, consumers)
            .await
            .iter()
            .for_each(Row::print),
    }
}
