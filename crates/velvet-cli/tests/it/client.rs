//! The CLI as a client of a running server: tokens, rotations with live progress, staged
//! confirmation, and the exit codes of §6.

use crate::common::*;
use serde_json::Value;
use std::time::{Duration, Instant};

const KEY: &str = "test-bootstrap-key-0123456789abcdef";

fn setup() -> (Workdir, Server, Vec<(&'static str, String)>) {
    let w = Workdir::new();
    w.write_config(
        "
defaults: {grace_period: 0s}
tokens:
  - name: api
    flow: staged
    source: {kind: random}
    consumers:
      - {name: env, kind: file, path: app.env, format: dotenv, key: API_TOKEN}
      - {name: cfg, kind: file, path: app.json, format: json, key: token}
",
    );
    let s = w.serve(&[], &[("VELVET_API_KEY", KEY)]);
    let env = vec![
        ("VELVET_ADDR", s.url("")),
        ("VELVET_TOKEN", KEY.to_string()),
    ];
    (w, s, env)
}

fn run(w: &Workdir, env: &[(&'static str, String)], args: &[&str]) -> Out {
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    w.run(args, &env, None)
}

fn awaiting(w: &Workdir, env: &[(&'static str, String)], id: &str, what: &str) {
    let start = Instant::now();
    loop {
        let out = run(w, env, &["rotations", "show", id, "--output", "json"]);
        let j: Value = serde_json::from_str(&out.stdout).unwrap();
        if j["awaiting"] == what {
            return;
        }
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "waited for {what}: {j}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn rotate_follow_yes_runs_every_stage_and_shows_each_consumer() {
    let (w, _s, env) = setup();
    let out = run(
        &w,
        &env,
        &["rotate", "api", "--follow", "--yes", "--reason", "drill"],
    );
    assert_eq!(out.code, 0, "{}", out.all());
    assert!(
        out.stdout.contains("consumer env: verified"),
        "{}",
        out.stdout
    );
    assert!(
        out.stdout.contains("consumer cfg: verified"),
        "{}",
        out.stdout
    );
    assert!(out.stdout.contains("end: succeeded"), "{}", out.stdout);

    let out = run(&w, &env, &["tokens", "show", "api"]);
    assert_eq!(out.code, 0, "{}", out.all());
    assert!(
        out.stdout.contains("FINGERPRINT") && out.stdout.contains("current"),
        "{}",
        out.stdout
    );
    let out = run(&w, &env, &["tokens", "list"]);
    assert!(
        out.stdout.contains("api") && out.stdout.contains("SOURCE"),
        "{}",
        out.stdout
    );
    let out = run(&w, &env, &["rotations", "list", "--output", "json"]);
    let list: Value = serde_json::from_str(&out.stdout).unwrap();
    assert_eq!(list["rotations"][0]["status"], "succeeded");

    let out = run(&w, &env, &["audit", "tail", "-n", "3", "--output", "json"]);
    assert_eq!(out.code, 0, "{}", out.all());
    let tail: Vec<Value> = out
        .stdout
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(tail.len(), 3);
    let seqs: Vec<i64> = tail.iter().map(|e| e["seq"].as_i64().unwrap()).collect();
    assert!(seqs.windows(2).all(|w| w[1] == w[0] + 1), "{seqs:?}");
    assert_eq!(
        tail[2]["action"], "rotation.revoked",
        "the newest last: {tail:?}"
    );
    let out = run(&w, &env, &["audit", "tail"]);
    assert!(out.stdout.contains("rotation.requested"), "{}", out.stdout);
}

#[test]
fn a_staged_rotation_waits_for_a_yes_and_the_stages_go_by_hand() {
    let (w, _s, env) = setup();
    // No terminal and no --yes: it stops at the first awaited stage, says how to go on, and
    // exits 1: only a succeeded rotation exits 0.
    let out = run(&w, &env, &["rotate", "api", "--follow"]);
    assert_eq!(out.code, 1, "{}", out.all());
    assert!(
        out.stderr.contains("awaits proceed_distribute")
            && out.stderr.contains("velvet rotations stage"),
        "{}",
        out.stderr
    );
    let id = out
        .stderr
        .split_whitespace()
        .find(|w| w.starts_with("rot_"))
        .unwrap()
        .to_string();

    let out = run(&w, &env, &["rotations", "stage", &id, "proceed_distribute"]);
    assert_eq!(out.code, 0, "{}", out.all());
    awaiting(&w, &env, &id, "proceed_revoke");
    let out = run(&w, &env, &["rotations", "stage", &id, "retire"]);
    assert_eq!(
        out.code,
        2,
        "an unknown action is a usage error: {}",
        out.all()
    );
    let out = run(&w, &env, &["rotations", "stage", &id, "proceed_distribute"]);
    assert_eq!(out.code, 4, "not what the job awaits: {}", out.all());
    let out = run(&w, &env, &["rotations", "stage", &id, "proceed_revoke"]);
    assert_eq!(out.code, 0, "{}", out.all());
    let out = run(&w, &env, &["rotations", "watch", &id, "--output", "json"]);
    assert_eq!(out.code, 0, "{}", out.all());
    let last: Value = serde_json::from_str(out.stdout.lines().last().unwrap()).unwrap();
    assert_eq!(last["event"], "end", "{}", out.stdout);
    let out = run(&w, &env, &["rotations", "show", &id]);
    assert!(
        out.stdout.contains("succeeded") && out.stdout.contains("CONSUMER"),
        "{}",
        out.stdout
    );
    let out = run(
        &w,
        &env,
        &["rotations", "show", "rot_aaaaaaaaaaaaaaaaaaaaaaaaaa"],
    );
    assert_eq!(out.code, 3, "{}", out.all());
    let out = run(&w, &env, &["rotate", "nope"]);
    assert_eq!(out.code, 3, "{}", out.all());
}

#[test]
fn on_a_terminal_follow_draws_a_bar_and_asks_before_each_stage() {
    let (w, _s, env) = setup();
    // `script` gives the command a pseudo-terminal, as a person at a shell has.
    let line = format!("{BIN} --config {} rotate api --follow", w.config());
    let mut child = std::process::Command::new("script")
        .args(["-qec", &line, "/dev/null"])
        .envs(env.iter().map(|(k, v)| (*k, v.as_str())))
        .env("TERM", "xterm")
        .current_dir(w.dir.path())
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("script (util-linux) runs");
    {
        use std::io::Write;
        // Both answers wait in the terminal's line buffer until each question reads one.
        child.stdin.take().unwrap().write_all(b"y\ny\n").unwrap();
    }
    let out = child.wait_with_output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(out.status.success(), "{text}");
    assert!(
        text.contains("Distribute the new value to every consumer? [y/N]"),
        "{text}"
    );
    assert!(
        text.contains("Revoke the previous value now? [y/N]"),
        "{text}"
    );
    assert!(
        text.contains("2/2 verified"),
        "the bar counts verified consumers: {text}"
    );
    assert!(text.contains("— succeeded"), "{text}");
    // The bar, not the line-per-event output of a pipe.
    assert!(!text.contains("consumer env: verified"), "{text}");
}

/// A failed job sends no `end`: following it ends with exit 1 and the commands that go on.
#[test]
fn following_a_failed_rotation_ends_and_says_what_to_do_next() {
    let w = Workdir::new();
    w.write_config(
        "
defaults: {grace_period: 0s, retry: {attempts: 1}}
tokens:
  - name: api
    flow: auto
    source: {kind: random}
    consumers:
      - {name: broken, kind: exec, command: [sh, -c, 'echo refused >&2; exit 3']}
",
    );
    let s = w.serve(&[], &[("VELVET_API_KEY", KEY)]);
    let env = vec![
        ("VELVET_ADDR", s.url("")),
        ("VELVET_TOKEN", KEY.to_string()),
    ];
    let start = Instant::now();
    let out = run(&w, &env, &["rotate", "api", "--follow"]);
    assert!(start.elapsed() < Duration::from_secs(30));
    assert_eq!(out.code, 1, "{}", out.all());
    for next in ["retry_failed", "rollback", "rotations show"] {
        assert!(out.stderr.contains(next), "{next}: {}", out.stderr);
    }
    assert!(
        out.stderr.contains("refused") || out.stderr.contains("failed"),
        "{}",
        out.stderr
    );
    let id = out
        .stderr
        .split_whitespace()
        .find(|w| w.starts_with("rot_"))
        .unwrap()
        .to_string();
    let out = run(&w, &env, &["rotations", "watch", &id]);
    assert_eq!(out.code, 1, "watch ends too: {}", out.all());
    // Rollback answers with how it ended, not with the state before it.
    let out = run(&w, &env, &["rotations", "stage", &id, "rollback"]);
    assert_eq!(out.code, 0, "{}", out.all());
    assert!(out.stdout.contains("rolled_back"), "{}", out.stdout);
}

#[test]
fn errors_are_json_with_output_json_and_a_closed_pipe_is_no_panic() {
    let (w, _s, env) = setup();
    let out = run(
        &w,
        &env,
        &[
            "rotations",
            "show",
            "rot_aaaaaaaaaaaaaaaaaaaaaaaaaa",
            "--output",
            "json",
        ],
    );
    assert_eq!(out.code, 3, "{}", out.all());
    let e: Value =
        serde_json::from_str(out.stderr.trim()).unwrap_or_else(|_| panic!("{}", out.stderr));
    assert_eq!(e["error"], "not_found", "{e}");
    assert!(e["message"].as_str().unwrap().contains("not found"), "{e}");
    let out = run(&w, &env, &["rotations", "show", "nope", "--output", "json"]);
    let e: Value =
        serde_json::from_str(out.stderr.trim()).unwrap_or_else(|_| panic!("{}", out.stderr));
    assert_eq!((out.code, e["error"].as_str()), (2, Some("usage")));

    // Abort prints the state it ended in.
    let out = run(&w, &env, &["rotate", "api"]);
    let id = out.stdout.trim().to_string();
    awaiting(&w, &env, &id, "proceed_distribute");
    let out = run(&w, &env, &["rotations", "stage", &id, "abort"]);
    assert_eq!(out.code, 0, "{}", out.all());
    assert!(out.stdout.contains("aborted"), "{}", out.stdout);

    // `audit tail | head -1` ends quietly: here the reader is gone before the first write.
    let line = format!(
        "{BIN} --config {} audit tail | true; echo \"${{PIPESTATUS[0]}}\"",
        w.config()
    );
    let out = std::process::Command::new("bash")
        .args(["-c", &line])
        .envs(env.iter().map(|(k, v)| (*k, v.as_str())))
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!stderr.contains("panicked"), "{stderr}");
    let status = String::from_utf8_lossy(&out.stdout).trim().to_string();
    assert!(
        status == "141" || status == "0",
        "exit status {status}: {stderr}"
    );

    // A malformed --expect-head is a usage error.
    let out = run(&w, &env, &["audit", "verify", "--expect-head", "12:nothex"]);
    assert_eq!(out.code, 2, "{}", out.all());
}

/// A loopback server that answers every request with `body`, as a server of another version.
fn answering(body: &'static str) -> String {
    let app = axum::Router::new()
        .fallback(move || async move { ([("content-type", "application/json")], body) });
    format!("http://{}", receiver::serve_on_loopback(app))
}

#[test]
fn an_answer_of_a_shape_the_cli_does_not_know_fails_naming_the_field_instead_of_printing_blanks() {
    let w = Workdir::new();
    let job = "rot_aaaaaaaaaaaaaaaaaaaaaaaaaa";
    // A job object without `token`.
    let addr = answering(r#"{"job_id":"rot_aaaaaaaaaaaaaaaaaaaaaaaaaa"}"#);
    let env = [("VELVET_ADDR", addr.as_str()), ("VELVET_TOKEN", KEY)];
    let out = w.run(&["rotations", "show", job], &env, None);
    assert_eq!(out.code, 1, "{}", out.stderr);
    assert!(
        out.stderr.contains("missing field `token`"),
        "{}",
        out.stderr
    );
    assert!(
        out.stdout.trim().is_empty(),
        "nothing half-printed: {}",
        out.stdout
    );
    // A page whose job has a status this CLI does not know.
    let addr =
        answering(r#"{"rotations":[{"job_id":"x","status":"half_done"}],"next_cursor":null}"#);
    let env = [("VELVET_ADDR", addr.as_str()), ("VELVET_TOKEN", KEY)];
    let out = w.run(&["rotations", "list"], &env, None);
    assert_eq!(out.code, 1, "{}", out.stderr);
    assert!(
        out.stderr.contains("not in the shape this velvet knows"),
        "{}",
        out.stderr
    );
}
