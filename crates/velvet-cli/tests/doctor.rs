//! `velvet doctor`: every check in one table, nothing changed, the exit code telling whether
//! rotation can work.

mod common;

use common::*;
use serde_json::Value;

fn results(out: &Out) -> Vec<(String, String, String)> {
    let rows: Value = serde_json::from_str(&out.stdout).unwrap_or_else(|_| panic!("{}", out.all()));
    rows.as_array()
        .unwrap()
        .iter()
        .map(|r| {
            (
                r["check"].as_str().unwrap().to_string(),
                r["target"].as_str().unwrap().to_string(),
                format!(
                    "{}: {}",
                    r["result"].as_str().unwrap(),
                    r["detail"].as_str().unwrap()
                ),
            )
        })
        .collect()
}

fn find<'a>(rows: &'a [(String, String, String)], check: &str, target: &str) -> &'a str {
    rows.iter()
        .find(|(c, t, _)| c == check && t == target)
        .map(|(_, _, r)| r.as_str())
        .unwrap_or_else(|| panic!("no {check} {target} in {rows:?}"))
}

#[test]
fn doctor_names_what_cannot_be_reached_and_changes_nothing() {
    let w = Workdir::new();
    let missing_role = velvet_testkit::unique_name("doctor_missing");
    w.write_config(&format!(
        "
tokens:
  - name: api
    source: {{kind: random}}
    consumers:
      - {{name: env, kind: file, path: app.env, format: dotenv, key: TOKEN}}
      - {{name: hook, kind: exec, command: [no-such-program-velvet]}}
      - {{name: web, kind: webhook, url: 'http://127.0.0.1:9/hook', signing_secret_env: HOOK_SECRET}}
  - name: db
    source: {{kind: postgres_role, admin_url_env: PG_ADMIN, role: {missing_role}}}
"
    ));
    let admin = velvet_testkit::admin_url();
    let env = [
        ("PG_ADMIN", admin.as_str()),
        ("HOOK_SECRET", "s3cret-hook-signing"),
    ];
    let out = w.run(&["doctor", "--output", "json"], &env, None);
    assert_eq!(out.code, 1, "{}", out.all());
    let rows = results(&out);
    assert!(find(&rows, "config", &w.config()).starts_with("ok"));
    assert!(find(&rows, "keyring", "").starts_with("ok"));
    assert!(
        find(
            &rows,
            "store",
            &format!("sqlite://{}", w.path("velvet.db").display())
        )
        .starts_with("warn"),
        "{rows:?}"
    );
    assert!(find(&rows, "source random", "api").starts_with("ok"));
    assert!(find(&rows, "consumer file", "api/env").starts_with("ok: "));
    assert!(find(&rows, "consumer exec", "api/hook").starts_with("fail"));
    assert!(find(&rows, "consumer webhook", "api/web").starts_with("fail"));
    let db = find(&rows, "source postgres_role", "db");
    assert!(
        db.starts_with("fail") && db.contains("does not exist"),
        "{db}"
    );
    assert!(!w.path("velvet.db").exists(), "doctor created no store");
    assert!(!w.path("app.env").exists(), "nor any consumer file");
    assert!(!out.all().contains("s3cret-hook-signing"));

    // Text output is a table; a broken file is a usage error.
    let out = w.run(&["doctor"], &env, None);
    assert!(
        out.stdout.contains("RESULT") && out.stdout.contains("consumer exec"),
        "{}",
        out.stdout
    );
    w.write_config("tokens: [{name: x}]");
    assert_eq!(w.run(&["doctor"], &env, None).code, 2);
}

#[test]
fn doctor_passes_on_a_working_setup() {
    let w = Workdir::new();
    w.write_config(
        "
tokens:
  - name: api
    source: {kind: random}
    consumers:
      - {name: env, kind: file, path: app.env, format: dotenv, key: TOKEN}
      - {name: hook, kind: exec, command: [cat]}
",
    );
    let s = w.serve(&[], &[]);
    s.url("/");
    drop(s);
    let out = w.run(&["doctor", "--output", "json"], &[], None);
    assert_eq!(out.code, 0, "{}", out.all());
    let rows = results(&out);
    let store = format!("sqlite://{}", w.path("velvet.db").display());
    assert!(find(&rows, "store", &store).starts_with("ok"), "{rows:?}");
    assert!(find(&rows, "keyring opens stored values", "").starts_with("ok"));
    assert!(find(&rows, "consumer exec", "api/hook").starts_with("ok: runs /"));
}
