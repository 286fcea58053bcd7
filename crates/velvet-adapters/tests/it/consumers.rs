//! Consumers against real files, real processes and a real HTTP receiver on loopback.

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::routing::{get, post};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use velvet_adapters::consumer::{self, Consumer};
use velvet_adapters::{AdapterError, Delivery};
use velvet_core::config::{ConsumerKind, ConsumerSpec, FileFormat, ProbeSpec};
use velvet_core::secret::{SecretString, SecretValue};

fn delivery<'a>(new: &'a SecretValue, previous: Option<&'a SecretValue>) -> Delivery<'a> {
    Delivery {
        token: "api-token",
        job_id: "rot_test",
        version: 2,
        new,
        new_fingerprint: "0123456789abcdef",
        previous,
        previous_version: previous.map(|_| 1),
        previous_fingerprint: previous.map(|_| "fedcba9876543210"),
    }
}

fn no_env(_: &str) -> Option<String> {
    None
}

fn file(
    path: &std::path::Path,
    format: FileFormat,
    key: Option<&str>,
    previous_key: Option<&str>,
) -> Box<dyn Consumer> {
    let spec = ConsumerSpec {
        name: "f".into(),
        lock_key: None,
        verify_probe: None,
        kind: ConsumerKind::File {
            path: path.to_path_buf(),
            format,
            key: key.map(str::to_string),
            previous_key: previous_key.map(str::to_string),
            template: None,
            mode: 0o600,
            follow_symlinks: false,
        },
    };
    consumer::build(&spec, &no_env).unwrap()
}

fn mode(p: &std::path::Path) -> u32 {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(p).unwrap().permissions().mode() & 0o777
}

#[tokio::test]
async fn dotenv_file_dual_acceptance_and_only_its_keys() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("app.env");
    let others = "# managed by hand\nDATABASE_URL=postgres://x\nexport FEATURE='on'\n";
    std::fs::write(&path, format!("{others}API_TOKEN=old-value\n")).unwrap();
    let c = file(
        &path,
        FileFormat::Dotenv,
        Some("API_TOKEN"),
        Some("API_TOKEN_PREVIOUS"),
    );
    let (old, new) = (
        SecretValue::single("old-value".into()),
        SecretValue::single("new-value".into()),
    );
    let d = delivery(&new, Some(&old));
    c.apply(&d).await.unwrap();
    c.apply(&d).await.unwrap();
    c.verify(&d).await.unwrap();
    let text = std::fs::read_to_string(&path).unwrap();
    assert_eq!(
        text,
        format!("{others}API_TOKEN=new-value\nAPI_TOKEN_PREVIOUS=old-value\n"),
        "I7: other lines byte for byte"
    );
    // The file existed (0644 from std::fs::write): its mode is kept, less access for others.
    assert_eq!(mode(&path), 0o640);
    c.revoke_previous(&d).await.unwrap();
    assert_eq!(
        std::fs::read_to_string(&path).unwrap(),
        format!("{others}API_TOKEN=new-value\n")
    );
    c.rollback(&d).await.unwrap();
    assert_eq!(
        std::fs::read_to_string(&path).unwrap(),
        format!("{others}API_TOKEN=old-value\n"),
        "rollback restores the file"
    );
    let e = c.verify(&d).await.unwrap_err();
    assert!(
        matches!(e, AdapterError::Permanent { .. }) && !e.to_string().contains("value\""),
        "{e}"
    );
    assert!(!e.to_string().contains("old-value") && !e.to_string().contains("new-value"));
}

#[tokio::test]
async fn json_and_raw_files() {
    let dir = tempfile::tempdir().unwrap();
    let json = dir.path().join("app.json");
    std::fs::write(&json, r#"{"keep": {"a": [1, 2.0]}, "TOKEN": "old"}"#).unwrap();
    let c = file(&json, FileFormat::Json, Some("TOKEN"), None);
    let (old, new) = (
        SecretValue::single("old".into()),
        SecretValue::single("n\"ew".into()),
    );
    let d = delivery(&new, Some(&old));
    c.apply(&d).await.unwrap();
    c.verify(&d).await.unwrap();
    let text = std::fs::read_to_string(&json).unwrap();
    assert!(text.contains(r#""keep": {"a": [1, 2.0]}"#), "{text}");
    let raw = dir.path().join("token");
    let c = file(&raw, FileFormat::Raw, None, None);
    c.apply(&d).await.unwrap();
    assert_eq!(std::fs::read_to_string(&raw).unwrap(), "n\"ew");
    c.verify(&d).await.unwrap();
    let first = delivery(&new, None);
    c.rollback(&first).await.unwrap();
    assert!(
        !raw.exists(),
        "rolling back a first version removes what it wrote"
    );
    let missing = file(
        &dir.path().join("nope/x.env"),
        FileFormat::Dotenv,
        Some("A"),
        None,
    );
    let e = missing.apply(&d).await.unwrap_err();
    assert!(
        !e.is_retryable() && e.to_string().contains("does not exist"),
        "{e}"
    );
}

fn exec(command: &[&str], verify: Option<&[&str]>, timeout: Duration) -> Box<dyn Consumer> {
    exec_with_env(command, verify, timeout, &[])
}

fn exec_with_env(
    command: &[&str],
    verify: Option<&[&str]>,
    timeout: Duration,
    env: &[(&str, &str)],
) -> Box<dyn Consumer> {
    let spec = ConsumerSpec {
        name: "e".into(),
        lock_key: None,
        verify_probe: None,
        kind: ConsumerKind::Exec {
            command: command.iter().map(|s| s.to_string()).collect(),
            verify_command: verify.map(|v| v.iter().map(|s| s.to_string()).collect()),
            timeout,
            env: env
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        },
    };
    consumer::build(&spec, &no_env).unwrap()
}

fn db_value(user: &str, password: &str) -> SecretValue {
    let mut m = std::collections::BTreeMap::new();
    m.insert("username".to_string(), SecretString::new(user.into()));
    m.insert("password".to_string(), SecretString::new(password.into()));
    SecretValue::from_fields(m)
}

/// Design §10: the command sees PATH, HOME, LANG, the delivery's VELVET_* facts and its own
/// `env`, nothing of the server's environment (which may hold VELVET_API_KEY or the master key).
#[tokio::test]
async fn exec_runs_with_a_cleared_environment() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("env");
    let dump = format!("env > {}", out.display());
    let c = exec_with_env(
        &["sh", "-c", &dump],
        None,
        Duration::from_secs(10),
        &[("DB_PASS", "{{password}}"), ("MODE", "literal text")],
    );
    let new = db_value("app_a", "pw-of-app-a");
    c.apply(&delivery(&new, None)).await.unwrap();
    let seen: std::collections::BTreeMap<String, String> = std::fs::read_to_string(&out)
        .unwrap()
        .lines()
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    assert_eq!(seen.get("DB_PASS").map(String::as_str), Some("pw-of-app-a"));
    assert_eq!(seen.get("MODE").map(String::as_str), Some("literal text"));
    assert_eq!(seen.get("VELVET_ACTION").map(String::as_str), Some("apply"));
    // The shell itself sets a few; everything else the test process has must be gone.
    let own = ["PATH", "HOME", "LANG", "PWD", "OLDPWD", "SHLVL", "_"];
    let leaked: Vec<String> = std::env::vars()
        .map(|(k, _)| k)
        .filter(|k| !own.contains(&k.as_str()) && seen.contains_key(k))
        .collect();
    assert!(
        std::env::vars().count() > 3,
        "the test process has an environment"
    );
    assert!(leaked.is_empty(), "inherited from the server: {leaked:?}");
    for k in seen.keys() {
        assert!(
            own.contains(&k.as_str()) || k.starts_with("VELVET_") || k == "DB_PASS" || k == "MODE",
            "unexpected variable {k}"
        );
    }
}

/// A command that prints one field of a database value (not the whole stdin text) has that
/// field masked before its stderr becomes an error.
#[tokio::test]
async fn exec_masks_every_field_of_the_value_in_stderr() {
    let c = exec(
        &[
            "sh",
            "-c",
            r#"sed 's/.*"password":"\([^"]*\)".*/login failed: password \1/' >&2; exit 3"#,
        ],
        None,
        Duration::from_secs(10),
    );
    let new = db_value("app_a", "Pw-9f8e7d6c5b4a");
    let e = c.apply(&delivery(&new, None)).await.unwrap_err();
    let text = e.to_string();
    assert!(text.contains("login failed"), "{text}");
    assert!(!text.contains("Pw-9f8e7d6c5b4a"), "{text}");
    assert!(!text.contains("9f8e7d6c"), "{text}");
}

#[tokio::test]
async fn exec_gets_the_value_on_stdin_and_failures_are_classified() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("got");
    let o = out.display().to_string();
    let write = format!("cat > {o}; echo \"$VELVET_ACTION $VELVET_VERSION\" > {o}.meta");
    let verify = format!("test \"$(cat)\" = \"$(cat {o})\"");
    let c = exec(
        &["sh", "-c", &write],
        Some(&["sh", "-c", &verify]),
        Duration::from_secs(10),
    );
    let (old, new) = (
        SecretValue::single("old-secret".into()),
        SecretValue::single("new-secret".into()),
    );
    let d = delivery(&new, Some(&old));
    c.apply(&d).await.unwrap();
    c.verify(&d).await.unwrap();
    assert_eq!(std::fs::read_to_string(&out).unwrap(), "new-secret");
    assert_eq!(
        std::fs::read_to_string(format!("{o}.meta")).unwrap(),
        "apply 2\n"
    );
    c.rollback(&d).await.unwrap();
    assert_eq!(std::fs::read_to_string(&out).unwrap(), "old-secret");
    assert!(
        c.verify(&d).await.is_err(),
        "verify fails once the consumer holds something else"
    );

    let echoing = exec(
        &["sh", "-c", "echo \"refused $(cat)\" >&2; exit 3"],
        None,
        Duration::from_secs(10),
    );
    let e = echoing.apply(&d).await.unwrap_err();
    assert!(!e.is_retryable(), "{e}");
    assert!(
        e.to_string().contains("refused ***") && !e.to_string().contains("new-secret"),
        "{e}"
    );
    let tempfail = exec(&["sh", "-c", "exit 75"], None, Duration::from_secs(10));
    assert!(tempfail.apply(&d).await.unwrap_err().is_retryable());
    let slow = exec(&["sleep", "5"], None, Duration::from_millis(200));
    let e = slow.apply(&d).await.unwrap_err();
    assert!(
        e.is_retryable() && e.to_string().contains("did not finish"),
        "{e}"
    );
    let missing = exec(&["/nonexistent/cmd"], None, Duration::from_secs(1));
    assert!(!missing.apply(&d).await.unwrap_err().is_retryable());
}

/// Requests received: headers and body.
type Received = Arc<Mutex<Vec<(HeaderMap, Vec<u8>)>>>;
/// Scripted answers, popped per request: status and an optional `Retry-After`.
type Answers = Arc<Mutex<Vec<(u16, Option<&'static str>)>>>;

#[derive(Clone, Default)]
struct Receiver {
    bodies: Received,
    answer: Answers,
    accepted_token: Arc<Mutex<String>>,
}

async fn hook(
    State(r): State<Receiver>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> (StatusCode, HeaderMap) {
    r.bodies.lock().unwrap().push((headers, body.to_vec()));
    let (code, retry) = r.answer.lock().unwrap().pop().unwrap_or((200, None));
    let mut h = HeaderMap::new();
    if let Some(ra) = retry {
        h.insert("retry-after", ra.parse().unwrap());
    }
    if code == 200 {
        let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
        *r.accepted_token.lock().unwrap() = v["value"].as_str().unwrap_or_default().to_string();
    }
    (StatusCode::from_u16(code).unwrap(), h)
}

async fn probe(State(r): State<Receiver>, headers: HeaderMap) -> StatusCode {
    let want = format!("Bearer {}", r.accepted_token.lock().unwrap());
    if headers.get("authorization").and_then(|v| v.to_str().ok()) == Some(want.as_str()) {
        StatusCode::OK
    } else {
        StatusCode::UNAUTHORIZED
    }
}

async fn receiver() -> (Receiver, String) {
    let r = Receiver::default();
    let app = axum::Router::new()
        .route("/hook", post(hook))
        .route("/probe", get(probe))
        .with_state(r.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (r, format!("http://{addr}"))
}

#[tokio::test]
async fn webhook_is_signed_classified_and_probed() {
    let (r, base) = receiver().await;
    let spec = ConsumerSpec {
        name: "w".into(),
        lock_key: None,
        verify_probe: Some(ProbeSpec {
            url: format!("{base}/probe"),
            header: Some("Authorization: Bearer {{value}}".into()),
            expect_status: 200,
            reject_status: None,
        }),
        kind: ConsumerKind::Webhook {
            url: format!("{base}/hook"),
            signing_secret_env: "HOOK_SECRET".into(),
            timeout: Duration::from_secs(5),
        },
    };
    let env = |n: &str| (n == "HOOK_SECRET").then(|| "shh".to_string());
    let c = consumer::build(&spec, &env).unwrap();
    let (old, new) = (
        SecretValue::single("old-tok".into()),
        SecretValue::single("new-tok".into()),
    );
    let d = delivery(&new, Some(&old));

    c.apply(&d).await.unwrap();
    c.verify(&d).await.unwrap();
    let (headers, body) = r.bodies.lock().unwrap()[0].clone();
    let sig = headers
        .get("velvet-signature")
        .unwrap()
        .to_str()
        .unwrap()
        .to_string();
    let t: i64 = sig
        .split(',')
        .next()
        .unwrap()
        .strip_prefix("t=")
        .unwrap()
        .parse()
        .unwrap();
    assert_eq!(
        sig,
        velvet_adapters::consumer::webhook_signature("shh", t, &body),
        "HMAC over t.body"
    );
    let json: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(
        (
            json["token"].as_str(),
            json["version"].as_i64(),
            json["fingerprint"].as_str(),
            json["value"].as_str()
        ),
        (
            Some("api-token"),
            Some(2),
            Some("0123456789abcdef"),
            Some("new-tok")
        )
    );

    r.answer.lock().unwrap().push((503, Some("7")));
    let e = c.apply(&d).await.unwrap_err();
    assert_eq!(
        (e.is_retryable(), e.retry_after()),
        (true, Some(Duration::from_secs(7))),
        "{e}"
    );
    r.answer.lock().unwrap().push((429, None));
    assert!(c.apply(&d).await.unwrap_err().is_retryable());
    r.answer.lock().unwrap().push((400, None));
    assert!(!c.apply(&d).await.unwrap_err().is_retryable());

    c.rollback(&d).await.unwrap();
    let e = c.verify(&d).await.unwrap_err();
    assert!(
        e.is_retryable() && e.to_string().contains("expected 200"),
        "the probe refuses the new token after rollback: {e}"
    );
    let dead = ConsumerSpec {
        verify_probe: None,
        kind: ConsumerKind::Webhook {
            url: "http://127.0.0.1:1/x".into(),
            signing_secret_env: "HOOK_SECRET".into(),
            timeout: Duration::from_secs(2),
        },
        ..spec
    };
    let e = consumer::build(&dead, &env)
        .unwrap()
        .apply(&d)
        .await
        .unwrap_err();
    assert!(
        e.is_retryable() && !e.to_string().contains("127.0.0.1:1"),
        "{e}"
    );
    assert!(
        consumer::build(&dead, &no_env).is_err(),
        "a missing signing secret is named at build time"
    );
}

/// Design §10: a webhook or probe answering 3xx is a permanent failure naming the Location
/// host; the value and its signature never reach the host it points to.
#[tokio::test]
async fn webhook_and_probe_never_follow_a_redirect() {
    let (elsewhere, other) = receiver().await;
    let to = format!("{other}/hook");
    let probe_to = format!("{other}/probe");
    let app = axum::Router::new()
        .route(
            "/hook",
            post(move || {
                let to = to.clone();
                async move { (StatusCode::TEMPORARY_REDIRECT, [("location", to)]) }
            }),
        )
        .route(
            "/probe",
            get(move || {
                let to = probe_to.clone();
                async move { (StatusCode::FOUND, [("location", to)]) }
            }),
        );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    let spec = |url: String, probe: Option<ProbeSpec>| ConsumerSpec {
        name: "w".into(),
        lock_key: None,
        verify_probe: probe,
        kind: ConsumerKind::Webhook {
            url,
            signing_secret_env: "HOOK_SECRET".into(),
            timeout: Duration::from_secs(5),
        },
    };
    let env = |n: &str| (n == "HOOK_SECRET").then(|| "shh".to_string());
    let new = SecretValue::single("redirected-secret".into());
    let d = delivery(&new, None);

    let c = consumer::build(&spec(format!("{base}/hook"), None), &env).unwrap();
    let e = c.apply(&d).await.unwrap_err();
    assert!(!e.is_retryable(), "{e}");
    assert!(
        e.to_string().contains("307") && e.to_string().contains("127.0.0.1"),
        "{e}"
    );
    assert!(
        elsewhere.bodies.lock().unwrap().is_empty(),
        "the redirect target received the value"
    );

    let probed = consumer::build(
        &spec(
            format!("{other}/hook"),
            Some(ProbeSpec {
                url: format!("{base}/probe"),
                header: Some("Authorization: Bearer {{value}}".into()),
                expect_status: 200,
                reject_status: Some(401),
            }),
        ),
        &env,
    )
    .unwrap();
    probed.apply(&d).await.unwrap();
    let e = probed.verify(&d).await.unwrap_err();
    assert!(
        !e.is_retryable() && e.to_string().contains("302"),
        "a redirected probe is not verified: {e}"
    );
}

fn file_following(path: &std::path::Path, follow: bool) -> Box<dyn Consumer> {
    let spec = ConsumerSpec {
        name: "f".into(),
        lock_key: None,
        verify_probe: None,
        kind: ConsumerKind::File {
            path: path.to_path_buf(),
            format: FileFormat::Dotenv,
            key: Some("TOKEN".into()),
            previous_key: None,
            template: None,
            mode: 0o600,
            follow_symlinks: follow,
        },
    };
    consumer::build(&spec, &no_env).unwrap()
}

/// Design §10: the file consumer keeps what it does not own: an existing file's owner, group
/// and mode; it refuses a symbolic link unless told; it removes temp files a crash left.
#[tokio::test]
async fn file_keeps_owner_and_mode_refuses_links_and_cleans_up_after_a_crash() {
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("app.env");
    std::fs::write(&path, "OTHER=1\nTOKEN=old\n").unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o640)).unwrap();
    let root = std::process::Command::new("id")
        .arg("-u")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
        .unwrap_or(false);
    if root {
        std::os::unix::fs::chown(&path, Some(4321), Some(4322)).unwrap();
    }
    let before = std::fs::metadata(&path).unwrap();
    // What a crash between write and rename leaves behind, holding a secret.
    let leftover = dir.path().join(".app.env.0123456789ab.tmp");
    std::fs::write(&leftover, "TOKEN=secret-from-a-crash\n").unwrap();
    let new = SecretValue::single("new-value".into());
    let d = delivery(&new, None);
    let c = file_following(&path, false);
    c.apply(&d).await.unwrap();
    c.verify(&d).await.unwrap();
    let after = std::fs::metadata(&path).unwrap();
    assert_eq!(
        (after.uid(), after.gid(), after.mode() & 0o777),
        (before.uid(), before.gid(), 0o640),
        "owner, group and mode kept"
    );
    assert!(!leftover.exists(), "the crash's temp file is gone");

    // A link at the path: refused for reading and writing alike, unless allowed.
    let real = dir.path().join("real.env");
    std::fs::write(&real, "TOKEN=old\n").unwrap();
    let link = dir.path().join("link.env");
    std::os::unix::fs::symlink(&real, &link).unwrap();
    let refused = file_following(&link, false);
    let e = refused.apply(&d).await.unwrap_err();
    assert!(
        !e.is_retryable() && e.to_string().contains("symbolic link"),
        "{e}"
    );
    assert!(refused.verify(&d).await.is_err());
    assert_eq!(std::fs::read_to_string(&real).unwrap(), "TOKEN=old\n");
    let followed = file_following(&link, true);
    followed.apply(&d).await.unwrap();
    followed.verify(&d).await.unwrap();
    assert_eq!(std::fs::read_to_string(&real).unwrap(), "TOKEN=new-value\n");
    assert!(
        std::fs::symlink_metadata(&link)
            .unwrap()
            .file_type()
            .is_symlink(),
        "the link stays a link"
    );
}
