//! The console in a real browser: runs `e2e/console.mjs` (playwright-core driving Debian's
//! Chromium) against a live server with two enrolled operators. Screenshots land in
//! `target/e2e/`. `.ci/run` installs Chromium and the npm package when they are missing.

use crate::common::*;
use serde_json::{Value, json};
use std::path::PathBuf;
use std::process::Command;

const KEY: &str = "test-bootstrap-key-0123456789abcdef";

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn enrol(w: &Workdir, name: &str, role: &str) -> Value {
    let out = w.run(
        &["--output", "json", "operator", "add", name, "--role", role],
        &[],
        None,
    );
    assert_eq!(out.code, 0, "{}", out.all());
    let v: Value = serde_json::from_str(&out.stdout).unwrap();
    json!({
        "name": name,
        "password": v["password"],
        "secret": v["totp_secret"],
        "backup_code": v["backup_codes"][0],
    })
}

#[test]
fn an_operator_rotates_and_passes_the_gate_in_the_browser() {
    let e2e = repo().join("e2e");
    assert!(
        e2e.join("node_modules/playwright-core").exists(),
        "playwright-core is missing: run `npm ci --prefix e2e` (.ci/run does)"
    );
    assert!(
        std::path::Path::new("/usr/bin/chromium").exists(),
        "Chromium is missing: apt-get install chromium (.ci/run does)"
    );
    let w = Workdir::new();
    let dir = w.dir.path().display().to_string();
    let consumers = |token: &str| {
        format!(
            "    consumers:
      - {{name: app-env, kind: file, path: {dir}/{token}.env, format: dotenv, key: TOKEN}}
      - {{name: app-json, kind: file, path: {dir}/{token}.json, format: json, key: token}}
      - {{name: worker, kind: exec, command: [sh, -c, 'sleep 0.4; cat > {dir}/{token}.worker']}}
      - {{name: cron, kind: exec, command: [sh, -c, 'sleep 0.8; cat > {dir}/{token}.cron']}}
"
        )
    };
    w.write_config(&format!(
        "defaults: {{grace_period: 0s}}
tokens:
  - name: api
    description: Public API signing key
    flow: staged
    rotate_every: 30d
    max_age: 90d
    source: {{kind: random}}
{}  - name: prod-api
    description: Production API key
    tags: [prod]
    flow: staged
    source: {{kind: random}}
{}revocation_gates:
  - name: production
    match: {{tags: [prod]}}
    require: {{totp: true, approvals: 1, roles: [revoker, admin]}}
",
        consumers("api"),
        consumers("prod-api")
    ));
    // Alice reads the audit page at the end, which needs audit.read: an admin.
    let alice = enrol(&w, "alice", "admin");
    let bob = enrol(&w, "bob", "revoker");
    let s = w.serve(&[], &[("VELVET_API_KEY", KEY)]);
    let shots = repo().join("target/e2e");
    let out = Command::new("node")
        .arg(e2e.join("console.mjs"))
        .env("VELVET_URL", s.url(""))
        .env("SHOTS", &shots)
        .env("ALICE", alice.to_string())
        .env("BOB", bob.to_string())
        .output()
        .expect("node runs (install Node.js)");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.status.success(),
        "the browser run failed:\n{text}\nserver log:\n{}",
        s.logs()
    );
    assert!(text.contains("ok: "), "{text}");
    assert!(shots.join("01-login-refused.png").exists());
}
