//! The OpenAPI document: it names every route of the contract with its errors, and schemathesis
//! (PyPI) fuzzes a live server against it: no 5xx, every status, header and body as documented.

use crate::common::*;
use serde_json::Value;
use std::collections::BTreeSet;
use std::process::Command;

const KEY: &str = "test-bootstrap-key-0123456789abcdef";

fn serve() -> (Workdir, Server) {
    let w = Workdir::new();
    let out = w.path("api.env");
    w.write_config(&format!(
        "
defaults: {{grace_period: 0s, retry: {{attempts: 2, initial_backoff: 10ms, max_backoff: 20ms}}}}
tokens:
  - name: api
    flow: auto
    source: {{kind: random}}
    consumers:
      - {{name: env, kind: file, path: {}, format: dotenv, key: API_TOKEN}}
  - name: staged
    flow: staged
    source: {{kind: random, encoding: base64url}}
",
        out.display()
    ));
    let s = w.serve(&[], &[("VELVET_API_KEY", KEY)]);
    s.url("/");
    (w, s)
}

fn document(s: &Server) -> Value {
    let (code, doc) = s.call("GET", "/api/v1/openapi.json", None, None);
    assert_eq!(code, 200, "the document needs no credential: {doc}");
    doc
}

/// Every `$ref` in `v`.
fn refs(v: &Value, out: &mut BTreeSet<String>) {
    match v {
        Value::Object(m) => {
            for (k, x) in m {
                match (k.as_str(), x) {
                    ("$ref", Value::String(r)) => {
                        out.insert(r.clone());
                    }
                    _ => refs(x, out),
                }
            }
        }
        Value::Array(a) => a.iter().for_each(|x| refs(x, out)),
        _ => {}
    }
}

#[test]
fn the_document_covers_every_route_of_the_contract_with_its_errors() {
    let (_w, s) = serve();
    let doc = document(&s);
    assert_eq!(doc["openapi"], "3.1.0");
    let contract = [
        ("get", "/healthz"),
        ("get", "/readyz"),
        ("get", "/metrics"),
        ("get", "/api/v1/openapi.json"),
        ("get", "/api/v1/tokens"),
        ("get", "/api/v1/tokens/{name}"),
        ("post", "/api/v1/tokens/{name}/rotate"),
        ("get", "/api/v1/rotations"),
        ("get", "/api/v1/rotations/{job_id}"),
        ("post", "/api/v1/rotations/{job_id}/stage"),
        ("get", "/api/v1/rotations/{job_id}/events"),
        ("post", "/api/v1/rotations/{job_id}/approvals"),
        ("get", "/api/v1/audit"),
        ("get", "/api/v1/audit/verify"),
        ("get", "/api/v1/audit/decisions"),
        ("get", "/api/v1/audit/security-events"),
        ("get", "/api/v1/flags"),
        ("put", "/api/v1/flags/{name}"),
        ("post", "/api/v1/auth/tokens"),
        ("get", "/api/v1/auth/tokens"),
        ("delete", "/api/v1/auth/tokens/{id}"),
    ];
    let mut ids = BTreeSet::new();
    for (method, path) in contract {
        let op = &doc["paths"][path][method];
        assert!(op.is_object(), "{method} {path} is missing");
        assert!(
            ids.insert(op["operationId"].as_str().unwrap().to_string()),
            "operationIds are unique: {op}"
        );
        let responses = op["responses"].as_object().unwrap();
        if path.starts_with("/api/v1/") && path != "/api/v1/openapi.json" {
            assert_eq!(op["security"][0]["bearer"], serde_json::json!([]), "{path}");
            for status in ["401", "403", "429"] {
                assert!(responses.contains_key(status), "{method} {path}: {status}");
            }
            assert!(
                responses["429"]["headers"]["Retry-After"].is_object(),
                "{path}"
            );
        }
        if method != "get" {
            for status in ["413", "422"] {
                let bodyless = method == "delete";
                assert_eq!(
                    responses.contains_key(status),
                    !bodyless,
                    "{method} {path}: {status}"
                );
            }
        }
        // Every error answers the one error body.
        for (status, r) in responses {
            if status.starts_with('4') || (status.starts_with('5') && path != "/readyz") {
                assert_eq!(
                    r["content"]["application/json"]["schema"]["$ref"],
                    "#/components/schemas/ErrorBody",
                    "{method} {path} {status}"
                );
            }
        }
    }
    // The contract's statuses, where they apply.
    let statuses = |method: &str, path: &str| -> BTreeSet<String> {
        doc["paths"][path][method]["responses"]
            .as_object()
            .unwrap()
            .keys()
            .cloned()
            .collect()
    };
    let rotate = statuses("post", "/api/v1/tokens/{name}/rotate");
    for s in ["202", "404", "409", "501", "503"] {
        assert!(rotate.contains(s), "rotate: {s}");
    }
    let stage = statuses("post", "/api/v1/rotations/{job_id}/stage");
    for s in ["200", "404", "409", "501", "503"] {
        assert!(stage.contains(s), "stage: {s}");
    }
    assert!(statuses("post", "/api/v1/auth/tokens").contains("201"));
    assert!(statuses("delete", "/api/v1/auth/tokens/{id}").contains("204"));
    let kickoff = &doc["paths"]["/api/v1/tokens/{name}/rotate"]["post"];
    assert!(kickoff["responses"]["202"]["headers"]["Location"].is_object());
    assert!(
        kickoff["parameters"]
            .as_array()
            .unwrap()
            .iter()
            .any(|p| p["name"] == "Idempotency-Key" && p["in"] == "header")
    );

    // Every reference resolves, and the job object carries the contract's fields.
    let mut found = BTreeSet::new();
    refs(&doc, &mut found);
    for r in &found {
        let name = r.strip_prefix("#/components/schemas/").unwrap();
        assert!(doc["components"]["schemas"][name].is_object(), "{r}");
    }
    let job = serde_json::to_string(&doc["components"]["schemas"]["RotationJob"]).unwrap();
    let view = serde_json::to_string(&doc["components"]["schemas"]["JobStateView"]).unwrap();
    for f in [
        "job_id",
        "token",
        "flow_type",
        "new_version",
        "previous_version",
        "requested_by",
        "reason",
        "created_at",
        "updated_at",
        "finished_at",
        "error",
        "gate",
        "consumers",
    ] {
        assert!(job.contains(&format!("\"{f}\"")), "RotationJob.{f}");
    }
    for f in ["stage", "status", "awaiting"] {
        assert!(view.contains(&format!("\"{f}\"")), "RotationJob.{f}");
    }
    // Internals stay out of the document as they stay out of responses.
    for internal in ["lease_owner", "lease_expires_at", "wake_at"] {
        assert!(!job.contains(internal), "{internal}");
    }
    assert!(!view.contains("revoke_started") && !view.contains("reverting"));
    let consumer = serde_json::to_string(&doc["components"]["schemas"]["JobConsumer"]).unwrap();
    assert!(!consumer.contains("lock_key") && !consumer.contains("next_attempt_at"));
    // The gate is typed in the document, not an open object.
    assert!(job.contains("#/components/schemas/GateView"), "{job}");
    assert!(
        doc["components"]["securitySchemes"]["bearer"]["scheme"] == "bearer",
        "{}",
        doc["components"]
    );
}

/// Runs schemathesis against the live server; `extra` selects operations and the config.
fn schemathesis(s: &Server, dir: &std::path::Path, label: &str, config: &str, extra: &[&str]) {
    let config_path = dir.join(format!("schemathesis-{label}.toml"));
    std::fs::write(&config_path, config).unwrap();
    let mut cmd = Command::new("schemathesis");
    cmd.current_dir(dir)
        .arg("--config-file")
        .arg(&config_path)
        .arg("run")
        .arg(s.url("/api/v1/openapi.json"))
        .args(["-H", &format!("Authorization: Bearer {KEY}")])
        .args([
            "--checks",
            "not_a_server_error,status_code_conformance,content_type_conformance,\
             response_headers_conformance,response_schema_conformance,negative_data_rejection",
            "--phases",
            "examples,coverage,fuzzing,stateful",
            "--max-examples",
            "40",
            "--request-timeout",
            "3",
            "--no-color",
        ])
        .args(extra)
        .env("SCHEMATHESIS_TELEMETRY", "false");
    let out = cmd.output().unwrap_or_else(|e| {
        panic!(
            "cannot run schemathesis ({e}): install it with `python3 -m pip install schemathesis==4.32.5` (.ci/run does)"
        )
    });
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "schemathesis failed:\n{text}");
    assert!(text.contains("passed"), "schemathesis ran no test:\n{text}");
    assert!(
        !s.logs().contains("\"internal error\""),
        "the server logged an internal error:\n{}",
        s.logs()
    );
}

#[test]
fn schemathesis_finds_no_server_error_and_no_response_off_the_document() {
    let (w, s) = serve();
    // Real names for path parameters half the time, so fuzzing reaches past the lookups.
    schemathesis(
        &s,
        w.dir.path(),
        "all-but-flags",
        r#"
[dictionaries.tokens]
values = ["api", "staged"]

[parameters]
"path.name" = { dictionary = "tokens", probability = 0.5 }
"#,
        &["--exclude-path", "/api/v1/flags/{name}"],
    );
    // Flags last: turning rotation off makes rotate and stage answer 501 by design.
    schemathesis(
        &s,
        w.dir.path(),
        "flags",
        r#"
[dictionaries.flags]
values = ["velvet_v2_rotation", "velvet_v2_rotation_ui"]

[parameters]
"path.name" = { dictionary = "flags", probability = 0.7 }
"#,
        &[
            "--include-path",
            "/api/v1/flags/{name}",
            "--include-path",
            "/api/v1/flags",
        ],
    );
}
