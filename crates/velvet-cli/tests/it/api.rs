//! The API beyond rotations: the audit log pages and verification, and feature flags with
//! overrides that are stored, audited and obeyed.

use crate::common::*;
use serde_json::{Value, json};

const KEY: &str = "test-bootstrap-key-0123456789abcdef";

fn serve() -> (Workdir, Server) {
    let w = Workdir::new();
    w.write_config(
        "
defaults: {grace_period: 0s}
flags: {velvet_v2_rotation_ui: false}
tokens:
  - name: api
    flow: staged
    source: {kind: random}
",
    );
    let s = w.serve(&[], &[("VELVET_API_KEY", KEY)]);
    s.url("/");
    (w, s)
}

fn token_for(s: &Server, role: &str) -> String {
    let (code, body) = s.call(
        "POST",
        "/api/v1/auth/tokens",
        Some(KEY),
        Some(json!({"name": role, "role": role})),
    );
    assert_eq!(code, 201, "{body}");
    body["token"].as_str().unwrap().to_string()
}

#[test]
fn the_audit_log_pages_by_seq_and_verifies() {
    let (_w, s) = serve();
    let auditor = token_for(&s, "auditor");
    let viewer = token_for(&s, "viewer");
    let (code, all) = s.call("GET", "/api/v1/audit", Some(&auditor), None);
    assert_eq!(code, 200, "{all}");
    let events = all["events"].as_array().unwrap();
    assert!(events.len() >= 2, "token creations are audited: {all}");
    assert!(all["next_after_seq"].is_null(), "a short page is the end");
    let actions: Vec<&str> = events
        .iter()
        .map(|e| e["action"].as_str().unwrap())
        .collect();
    assert!(actions.contains(&"auth.token_created"), "{actions:?}");
    for f in [
        "seq",
        "at",
        "actor",
        "action",
        "target",
        "outcome",
        "detail",
        "key_id",
        "prev_hash",
        "hash",
    ] {
        assert!(events[0].get(f).is_some(), "{f} in {}", events[0]);
    }

    // Page one record at a time and get the same records back.
    let mut after = 0;
    let mut paged = Vec::new();
    loop {
        let (_, page) = s.call(
            "GET",
            &format!("/api/v1/audit?after_seq={after}&limit=1"),
            Some(&auditor),
            None,
        );
        paged.extend(
            page["events"]
                .as_array()
                .unwrap()
                .iter()
                .map(|e| e["seq"].clone()),
        );
        match page["next_after_seq"].as_i64() {
            Some(n) => after = n,
            None => break,
        }
    }
    let seqs: Vec<Value> = events.iter().map(|e| e["seq"].clone()).collect();
    assert_eq!(paged, seqs);

    for (q, field) in [
        ("limit=0", "limit"),
        ("after_seq=x", "after_seq"),
        ("since=1", "since"),
    ] {
        let (code, body) = s.call("GET", &format!("/api/v1/audit?{q}"), Some(&auditor), None);
        assert_eq!(code, 422, "{q}: {body}");
        assert!(
            body["message"].as_str().unwrap().starts_with(field),
            "{body}"
        );
    }
    assert_eq!(s.call("GET", "/api/v1/audit", Some(&viewer), None).0, 403);

    let (code, v) = s.call("GET", "/api/v1/audit/verify", Some(&auditor), None);
    assert_eq!(code, 200);
    assert_eq!(v["ok"], true, "{v}");
    assert_eq!(v["entries"].as_u64().unwrap() as usize, events.len());
    assert!(v["first_bad_seq"].is_null());
    assert!(v["head"].as_str().unwrap().contains(':'));
}

#[test]
fn a_flag_override_is_stored_audited_and_obeyed() {
    let (w, s) = serve();
    let viewer = token_for(&s, "viewer");
    let (_, flags) = s.call("GET", "/api/v1/flags", Some(&viewer), None);
    let find = |flags: &Value, name: &str| -> Value {
        flags["flags"]
            .as_array()
            .unwrap()
            .iter()
            .find(|f| f["name"] == name)
            .cloned()
            .unwrap()
    };
    assert_eq!(
        find(&flags, "velvet_v2_rotation"),
        json!({"name": "velvet_v2_rotation", "enabled": true, "source": "default"})
    );
    assert_eq!(find(&flags, "velvet_v2_rotation_ui")["source"], "file");

    let put = |who: &str, body: Value| {
        s.call(
            "PUT",
            "/api/v1/flags/velvet_v2_rotation",
            Some(who),
            Some(body),
        )
    };
    assert_eq!(put(&viewer, json!({"enabled": false})).0, 403);
    let (code, body) = put(KEY, json!({"enabled": "no"}));
    assert_eq!(code, 422, "{body}");
    let (code, body) = s.call(
        "PUT",
        "/api/v1/flags/no_such_flag",
        Some(KEY),
        Some(json!({"enabled": true})),
    );
    assert_eq!(code, 404, "{body}");

    let (code, body) = put(KEY, json!({"enabled": false}));
    assert_eq!(code, 200, "{body}");
    assert_eq!(
        body,
        json!({"name": "velvet_v2_rotation", "enabled": false, "source": "override"})
    );
    let (code, body) = s.call("POST", "/api/v1/tokens/api/rotate", Some(KEY), None);
    assert_eq!(
        (code, body["error"].as_str()),
        (501, Some("not_enabled")),
        "{body}"
    );
    let (code, _) = s.call(
        "POST",
        "/api/v1/rotations/rot_aaaaaaaaaaaaaaaaaaaaaaaaaa/stage",
        Some(KEY),
        Some(json!({"action": "abort"})),
    );
    assert_eq!(code, 501);
    let (_, audit) = s.call("GET", "/api/v1/audit", Some(KEY), None);
    let set = audit["events"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["action"] == "flag.set")
        .expect("the override is audited")
        .clone();
    assert_eq!(set["actor"], "bootstrap-admin");

    // The CLI turns it back on; the override outlives a restart.
    let addr = s.url("");
    let env = [("VELVET_ADDR", addr.as_str()), ("VELVET_TOKEN", KEY)];
    let out = w.run(&["flags", "set", "velvet_v2_rotation", "on"], &env, None);
    assert_eq!(out.code, 0, "{}", out.all());
    let out = w.run(&["flags", "list"], &env, None);
    assert!(
        out.stdout.contains("velvet_v2_rotation ") && out.stdout.contains("override"),
        "{}",
        out.stdout
    );
    let out = w.run(&["flags", "set", "nope", "on"], &env, None);
    assert_eq!(out.code, 3, "{}", out.all());
    drop(s);
    let s = w.serve(&[], &[("VELVET_API_KEY", KEY)]);
    let (code, body) = s.call("POST", "/api/v1/tokens/api/rotate", Some(KEY), None);
    assert_eq!(code, 202, "{body}");
    let (_, flags) = s.call("GET", "/api/v1/flags", Some(KEY), None);
    assert_eq!(find(&flags, "velvet_v2_rotation")["source"], "override");
}

#[test]
fn an_idempotency_key_makes_a_retried_kickoff_safe() {
    let (_w, s) = serve();
    let kick = |key: &str, reason: &str| {
        let r = http()
            .post(s.url("/api/v1/tokens/api/rotate"))
            .bearer_auth(KEY)
            .header("Idempotency-Key", key)
            .json(&json!({"reason": reason}))
            .send()
            .unwrap();
        let code = r.status().as_u16();
        (code, r.json::<Value>().unwrap())
    };
    let (code, first) = kick("nightly-2026-11-23", "nightly");
    assert_eq!(code, 202, "{first}");
    let (code, again) = kick("nightly-2026-11-23", "nightly");
    assert_eq!(code, 202, "{again}");
    assert_eq!(again["job_id"], first["job_id"]);
    let (code, body) = kick("nightly-2026-11-23", "something else");
    assert_eq!(code, 422, "{body}");
    assert!(
        body["message"]
            .as_str()
            .unwrap()
            .starts_with("Idempotency-Key")
    );
    let (code, body) = kick(&"k".repeat(300), "nightly");
    assert_eq!(code, 422, "{body}");
    // Without a key, a second kickoff meets the active job.
    let (code, body) = s.call("POST", "/api/v1/tokens/api/rotate", Some(KEY), None);
    assert_eq!(
        (code, body["job_id"].clone()),
        (409, first["job_id"].clone())
    );
}

#[test]
fn rotations_list_with_filters_and_checked_parameters() {
    let (_w, s) = serve();
    let viewer = token_for(&s, "viewer");
    let (code, job) = s.call("POST", "/api/v1/tokens/api/rotate", Some(KEY), None);
    assert_eq!(code, 202, "{job}");
    let (code, list) = s.call("GET", "/api/v1/rotations", Some(&viewer), None);
    assert_eq!(code, 200, "{list}");
    assert_eq!(list["rotations"][0]["job_id"], job["job_id"]);
    assert!(
        list["rotations"][0]["consumers"].is_array(),
        "full job objects"
    );
    assert!(list["next_cursor"].is_null());
    let (_, only) = s.call("GET", "/api/v1/rotations?token=other", Some(&viewer), None);
    assert_eq!(only["rotations"].as_array().unwrap().len(), 0);
    for (q, field) in [
        ("status=bogus", "status"),
        ("limit=0", "limit"),
        ("cursor=xyz", "cursor"),
        ("order=asc", "order"),
    ] {
        let (code, body) = s.call(
            "GET",
            &format!("/api/v1/rotations?{q}"),
            Some(&viewer),
            None,
        );
        assert_eq!(code, 422, "{q}: {body}");
        assert!(
            body["message"].as_str().unwrap().starts_with(field),
            "{body}"
        );
    }
}

#[test]
fn an_oversized_body_is_refused_with_413() {
    let (_w, s) = serve();
    let big = "x".repeat(2 << 20);
    let r = http()
        .post(s.url("/api/v1/auth/tokens"))
        .bearer_auth(KEY)
        .header("content-type", "application/json")
        .body(format!("{{\"name\": \"{big}\", \"role\": \"viewer\"}}"))
        .send()
        .unwrap();
    assert_eq!(r.status().as_u16(), 413);
    let (_, list) = s.call("GET", "/api/v1/auth/tokens", Some(KEY), None);
    assert_eq!(list["tokens"].as_array().unwrap().len(), 0);
}

/// A kickoff's body is optional, but a body that is there must be JSON: whitespace is not.
#[test]
fn a_whitespace_body_is_not_an_empty_one() {
    let (_w, s) = serve();
    let r = http()
        .post(s.url("/api/v1/tokens/api/rotate"))
        .bearer_auth(KEY)
        .header("content-type", "application/json")
        .body("\r")
        .send()
        .unwrap();
    assert_eq!(r.status().as_u16(), 422);
    let (code, _) = s.call("POST", "/api/v1/tokens/api/rotate", Some(KEY), None);
    assert_eq!(code, 202, "no body at all is fine");
}
