//! B4: N clients follow one job over SSE from a real `velvet serve`; while the job distributes
//! to 10 file consumers, each client notes how long every live event took from being stored
//! (its `updated_at`) to reaching it. Reports the p99 delay and the server's resident memory
//! growth from before the clients connected to when all were following.

use crate::Row;
use chrono::{DateTime, Utc};
use serde_json::{Value, json};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub(crate) const KEY: &str = "bench-bootstrap-key-0123456789abcdef";
const CONSUMERS: usize = 10;

pub(crate) struct ServerProc {
    pub(crate) child: Child,
    pub(crate) base: String,
    _dir: tempfile::TempDir,
}

impl Drop for ServerProc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn velvet_bin() -> String {
    concat!(env!("CARGO_MANIFEST_DIR"), "/../../target/release/velvet").to_string()
}

fn start_server() -> ServerProc {
    let mut yaml = String::from(
        // Every subscriber comes from this one address, so the per-client stream cap is lifted.
        "server: {max_streams_per_client: 100000, max_connections: 10000}\ndefaults: {grace_period: 0s}\ntokens:\n  - name: api\n    flow: staged\n    source: {kind: random}\n    consumers:\n",
    );
    for i in 0..CONSUMERS {
        yaml.push_str(&format!(
            "      - {{name: f{i}, kind: file, path: f{i}.env, format: dotenv, key: TOKEN}}\n"
        ));
    }
    start_server_with(&yaml)
}

/// The server's log (warnings and errors) goes to `VELVET_BENCH_SERVER_LOG` (appended) when set, so a
/// failing figure can be explained; by default they are dropped.
fn server_log() -> Stdio {
    match std::env::var_os("VELVET_BENCH_SERVER_LOG") {
        Some(path) => std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .map(Stdio::from)
            .unwrap_or_else(|_| Stdio::null()),
        None => Stdio::null(),
    }
}

/// A real `velvet serve` on a free loopback port, in a fresh directory, with `yaml`.
pub(crate) fn start_server_with(yaml: &str) -> ServerProc {
    start_server_env(yaml, &[])
}

/// As [`start_server_with`], with more environment (a `VELVET_DATABASE_URL`, say).
pub(crate) fn start_server_env(yaml: &str, env: &[(&str, &str)]) -> ServerProc {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().display().to_string();
    let ok = Command::new(velvet_bin())
        .args(["init", "--dir", &d])
        .stdout(Stdio::null())
        .status()
        .expect("target/release/velvet exists (scripts/bench builds it)");
    assert!(ok.success());
    std::fs::write(dir.path().join("velvet.yaml"), yaml).unwrap();
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let child = Command::new(velvet_bin())
        .args(["--config", &format!("{d}/velvet.yaml"), "serve"])
        .env("VELVET_API_KEY", KEY)
        .env("VELVET_LISTEN", format!("127.0.0.1:{port}"))
        .env("VELVET_LOG", "warn")
        .envs(env.iter().copied())
        .current_dir(dir.path())
        .stdout(server_log())
        .stderr(server_log())
        .spawn()
        .unwrap();
    let start = Instant::now();
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "velvet serve did not listen"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    ServerProc {
        child,
        base: format!("http://127.0.0.1:{port}"),
        _dir: dir,
    }
}

/// CPU seconds (user + system) a process has used, from `/proc/PID/stat` (100 ticks a second).
fn cpu_secs(pid: &str) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let rest = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or("");
    let f: Vec<f64> = rest
        .split_whitespace()
        .skip(11)
        .take(2)
        .map(|x| x.parse().unwrap_or(0.0))
        .collect();
    f.iter().sum::<f64>() / 100.0
}

fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

async fn call(
    http: &reqwest::Client,
    method: reqwest::Method,
    url: String,
    body: Option<Value>,
) -> Value {
    let mut req = http.request(method, url).bearer_auth(KEY);
    if let Some(b) = body {
        req = req.json(&b);
    }
    req.send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap_or(Value::Null)
}

async fn wait_awaiting(http: &reqwest::Client, url: &str, what: &str) {
    let start = Instant::now();
    while call(http, reqwest::Method::GET, url.to_string(), None).await["awaiting"] != what {
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "waited for {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The event's `updated_at` (a job's own comes before its consumers'), found without parsing
/// the whole JSON: the clients share two cores with the server they measure, so every pass
/// over the bytes is a SIMD search (memchr) rather than a parse.
fn stored_at(data: &[u8]) -> Option<DateTime<Utc>> {
    let from = memchr::memmem::find(data, b"\"updated_at\":\"")? + 14;
    let to = from + memchr::memchr(b'"', &data[from..])?;
    DateTime::parse_from_rfc3339(std::str::from_utf8(&data[from..to]).ok()?)
        .ok()
        .map(|t| t.with_timezone(&Utc))
}

/// One event block's id, whether it is `end`, and its data's `updated_at`.
fn parse_block(block: &[u8]) -> (Option<i64>, bool, Option<DateTime<Utc>>) {
    let (mut id, mut end, mut at) = (None, false, None);
    for line in block.split(|&b| b == b'\n') {
        if let Some(v) = line.strip_prefix(b"id:") {
            id = std::str::from_utf8(v)
                .ok()
                .and_then(|v| v.trim().parse().ok());
        } else if let Some(v) = line.strip_prefix(b"event:") {
            end = v.trim_ascii() == b"end";
        } else if let Some(v) = line.strip_prefix(b"data:") {
            at = stored_at(v);
        }
    }
    (id, end, at)
}

/// Follows the stream to `end`: signals once the snapshot is in; returns live delays (ms) and
/// how many reads the live part took.
///
/// A raw HTTP/1.1 reader, not a client library: 2,000 of them share the two cores with the
/// server they measure, and a library's per-read work made the harness cost more than the
/// server. The body's chunk-size lines fall between events (the server writes whole events
/// per frame), so they are skipped as lines that are not `id:`, `event:` or `data:`.
async fn follow(
    addr: std::net::SocketAddr,
    path: String,
    ready: tokio::sync::mpsc::Sender<()>,
) -> (Vec<f64>, usize) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut conn = tokio::net::TcpStream::connect(addr).await.unwrap();
    conn.set_nodelay(true).unwrap();
    conn.write_all(
        format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nAuthorization: Bearer {KEY}\r\n\r\n")
            .as_bytes(),
    )
    .await
    .unwrap();
    let blank = memchr::memmem::Finder::new(b"\n\n");
    let mut buf: Vec<u8> = Vec::new();
    let mut chunk = vec![0u8; 64 * 1024];
    let mut delays = Vec::new();
    let mut snapshot_id: Option<i64> = None;
    let mut signalled = false;
    let mut reads = 0;
    loop {
        let n = conn.read(&mut chunk).await.unwrap_or(0);
        if n == 0 {
            break;
        }
        let now = Utc::now();
        if signalled {
            reads += 1;
        }
        if buf.is_empty() && !chunk[..n].starts_with(b"HTTP/1.1 200") && snapshot_id.is_none() {
            panic!("{}", String::from_utf8_lossy(&chunk[..n]));
        }
        buf.extend_from_slice(&chunk[..n]);
        // Blocks are read in place and the buffer shifted once per chunk: a batch of events
        // arrives as one chunk, and draining it block by block would copy it over and over.
        let mut start = 0;
        while let Some(len) = blank.find(&buf[start..]) {
            let (id, end, at) = parse_block(&buf[start..start + len]);
            start += len + 2;
            let Some(id) = id else { continue };
            if end {
                return (delays, reads);
            }
            match snapshot_id {
                None => snapshot_id = Some(id),
                Some(s) if id == s => {}
                Some(_) => {
                    if let Some(at) = at {
                        delays.push((now - at).num_microseconds().unwrap_or(0) as f64 / 1000.0);
                    }
                }
            }
            if !signalled && snapshot_id.is_some() {
                signalled = true;
                let _ = ready.send(()).await;
            }
        }
        buf.drain(..start);
    }
    (delays, reads)
}

pub async fn run(clients: usize) -> Vec<Row> {
    let server = tokio::task::spawn_blocking(start_server).await.unwrap();
    let http = velvet_adapters::http::client().clone();
    let base = server.base.clone();
    let job = call(
        &http,
        reqwest::Method::POST,
        format!("{base}/api/v1/tokens/api/rotate"),
        None,
    )
    .await;
    let id = job["job_id"]
        .as_str()
        .expect("kickoff answers a job")
        .to_string();
    let job_url = format!("{base}/api/v1/rotations/{id}");
    wait_awaiting(&http, &job_url, "proceed_distribute").await;
    let pid = server.child.id();
    let before = rss_kib(pid);
    eprintln!(
        "B4: {clients} clients connecting (server RSS {} MiB)…",
        before / 1024
    );
    let (ready_tx, mut ready_rx) = tokio::sync::mpsc::channel(clients);
    let mut tasks = tokio::task::JoinSet::new();
    let addr: std::net::SocketAddr = base.trim_start_matches("http://").parse().unwrap();
    let path = format!("/api/v1/rotations/{id}/events");
    for _ in 0..clients {
        tasks.spawn(follow(addr, path.clone(), ready_tx.clone()));
    }
    drop(ready_tx);
    for _ in 0..clients {
        ready_rx
            .recv()
            .await
            .expect("every client gets its snapshot");
    }
    let following = rss_kib(pid);
    eprintln!(
        "B4: all following (server RSS {} MiB); distributing to {CONSUMERS} consumers…",
        following / 1024
    );
    let cpu0 = (cpu_secs(&pid.to_string()), cpu_secs("self"));
    let started = Instant::now();
    let stage = format!("{job_url}/stage");
    call(
        &http,
        reqwest::Method::POST,
        stage.clone(),
        Some(json!({"action": "proceed_distribute"})),
    )
    .await;
    wait_awaiting(&http, &job_url, "proceed_revoke").await;
    call(
        &http,
        reqwest::Method::POST,
        stage,
        Some(json!({"action": "proceed_revoke"})),
    )
    .await;
    let (mut delays, mut reads) = (Vec::new(), 0);
    while let Some(d) = tasks.join_next().await {
        let (d, r) = d.unwrap();
        delays.extend(d);
        reads += r;
    }
    let wall = started.elapsed().as_secs_f64();
    eprintln!(
        "B4: distribute to end took {wall:.2} s; CPU meanwhile: server {:.2} s, the {clients} clients {:.2} s",
        cpu_secs(&pid.to_string()) - cpu0.0,
        cpu_secs("self") - cpu0.1
    );
    let peak = rss_kib(pid).max(following);
    delays.sort_by(f64::total_cmp);
    let p99 = delays[(delays.len() * 99 / 100).min(delays.len() - 1)];
    let p50 = delays[delays.len() / 2];
    eprintln!(
        "B4: {} deliveries in {:.1} reads per client, delay p50 {p50:.1} ms, p99 {p99:.1} ms; RSS growth {:.1} MiB (peak {:.1} MiB over the start)",
        delays.len(),
        reads as f64 / clients as f64,
        (following.saturating_sub(before)) as f64 / 1024.0,
        (peak.saturating_sub(before)) as f64 / 1024.0
    );
    let growth = (peak.saturating_sub(before)) as f64 / 1024.0;
    // Bounds over measurements, as B1 does: a ratio ≥ 1 is within the bound.
    vec![
        Row {
            id: "B4",
            measure: format!("100 ms ÷ SSE p99 delivery delay, {clients} clients on one job"),
            velvet: 100.0,
            reference: p99,
            unit: "ms / ms",
            target: 1.0,
        },
        Row {
            id: "B4mem",
            measure: format!("64 MiB ÷ server RSS growth with {clients} clients"),
            velvet: 64.0,
            reference: growth.max(0.001),
            unit: "MiB / MiB",
            target: 1.0,
        },
    ]
}
