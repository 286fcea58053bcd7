//! Console login and sessions through the binary: name + password + TOTP (or a backup code),
//! each code once; an HttpOnly SameSite=Strict cookie; CSRF on every change; logout, idle and
//! absolute limits, and an admin ending an operator's sessions.

use crate::common::*;
use serde_json::{Value, json};
use velvet_core::operator::totp_code;

const KEY: &str = "test-bootstrap-key-0123456789abcdef";

fn client() -> reqwest::blocking::Client {
    let _ = rustls::crypto::ring::default_provider().install_default();
    reqwest::blocking::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap()
}

fn now() -> u64 {
    chrono::Utc::now().timestamp() as u64
}

struct Enrolled {
    password: String,
    secret: String,
    codes: Vec<String>,
}

fn setup() -> (Workdir, Server, Enrolled) {
    let w = Workdir::new();
    w.write_config(
        "
defaults: {grace_period: 0s}
tokens:
  - name: api
    flow: staged
    description: '<img src=x onerror=alert(1)> & ''quoted'' \"too\"'
    tags: ['<b>bold</b>']
    source: {kind: random}
",
    );
    let out = w.run(
        &[
            "--output", "json", "operator", "add", "alice", "--role", "operator",
        ],
        &[],
        None,
    );
    assert_eq!(out.code, 0, "{}", out.all());
    let v: Value = serde_json::from_str(&out.stdout).unwrap();
    let s = w.serve(&[], &[("VELVET_API_KEY", KEY)]);
    let e = Enrolled {
        password: v["password"].as_str().unwrap().into(),
        secret: v["totp_secret"].as_str().unwrap().into(),
        codes: v["backup_codes"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| c.as_str().unwrap().to_string())
            .collect(),
    };
    (w, s, e)
}

fn login(s: &Server, password: &str, code: &str) -> reqwest::blocking::Response {
    console_login(s, "alice", password, code)
}

/// The session cookie a successful login set.
fn session_of(r: &reqwest::blocking::Response) -> String {
    let set = r.headers()["set-cookie"].to_str().unwrap().to_string();
    for attr in ["HttpOnly", "SameSite=Strict", "Path=/", "Max-Age=43200"] {
        assert!(set.contains(attr), "{set}");
    }
    assert!(!set.contains("Secure"), "no Secure on loopback: {set}");
    set.split(';').next().unwrap().to_string()
}

fn get(s: &Server, path: &str, cookie: &str) -> reqwest::blocking::Response {
    client()
        .get(s.url(path))
        .header("cookie", cookie)
        .send()
        .unwrap()
}

#[test]
fn an_operator_logs_in_with_a_code_once_and_the_session_obeys_csrf_and_logout() {
    let (_w, s, e) = setup();
    // Signed out: the console sends you to log in; the page carries a strict policy.
    let r = client().get(s.url("/console")).send().unwrap();
    assert_eq!(r.status(), 303);
    assert_eq!(r.headers()["location"], "/console/login");
    let r = client().get(s.url("/console/login")).send().unwrap();
    assert_eq!(r.status(), 200);
    let csp = r.headers()["content-security-policy"]
        .to_str()
        .unwrap()
        .to_string();
    assert!(
        csp.contains("script-src 'self'") && csp.contains("frame-ancestors 'none'"),
        "{csp}"
    );
    let html = r.text().unwrap();
    assert!(
        html.contains("<label for=\"code\">") && !html.contains("<script>"),
        "{html}"
    );

    // A wrong password, then the right one with a fresh code.
    let code = totp_code(&e.secret, now()).unwrap();
    assert_eq!(login(&s, "wrong-password", &code).status(), 401);
    // Typed as an authenticator shows it, with a space.
    let r = login(&s, &e.password, &format!("{} {}", &code[..3], &code[3..]));
    assert_eq!(r.status(), 303, "{:?}", r.text());
    let cookie = session_of(&r);
    // The same code again is a replay.
    assert_eq!(login(&s, &e.password, &code).status(), 401);

    let page = get(&s, "/console", &cookie).text().unwrap();
    assert!(page.contains("alice (operator)"), "{page}");
    let csrf = page
        .split("name=\"csrf-token\" content=\"")
        .nth(1)
        .unwrap()
        .split('"')
        .next()
        .unwrap()
        .to_string();

    // The session reaches the API; a change needs the CSRF token.
    assert_eq!(get(&s, "/api/v1/tokens", &cookie).status(), 200);
    let rotate = |csrf: Option<&str>| {
        let mut req = client()
            .post(s.url("/api/v1/tokens/api/rotate"))
            .header("cookie", &cookie);
        if let Some(c) = csrf {
            req = req.header("x-csrf-token", c);
        }
        req.send().unwrap()
    };
    assert_eq!(rotate(None).status(), 403);
    assert_eq!(rotate(Some("0123")).status(), 403);
    let r = rotate(Some(&csrf));
    assert_eq!(r.status(), 202);
    let job: Value = r.json().unwrap();
    let (_, j) = s.call(
        "GET",
        &format!("/api/v1/rotations/{}", job["job_id"].as_str().unwrap()),
        Some(KEY),
        None,
    );
    assert_eq!(j["requested_by"], "operator:alice", "{j}");

    // Logout needs the form's token, then the cookie is dead everywhere.
    let logout = |token: &str| {
        client()
            .post(s.url("/console/logout"))
            .header("cookie", &cookie)
            .form(&[("csrf", token)])
            .send()
            .unwrap()
    };
    assert_eq!(logout("nope").status(), 403);
    let r = logout(&csrf);
    assert_eq!(r.status(), 303);
    assert!(
        r.headers()["set-cookie"]
            .to_str()
            .unwrap()
            .contains("Max-Age=0")
    );
    assert_eq!(get(&s, "/api/v1/tokens", &cookie).status(), 401);
    assert_eq!(get(&s, "/console", &cookie).status(), 303);

    // A backup code works once.
    let r = login(&s, &e.password, &e.codes[0].to_uppercase());
    assert_eq!(r.status(), 303);
    assert_eq!(login(&s, &e.password, &e.codes[0]).status(), 401);

    let (_, events) = s.call(
        "GET",
        "/api/v1/audit/security-events?limit=1000",
        Some(KEY),
        None,
    );
    let kinds = events.to_string();
    assert!(
        kinds.contains("login_failed") && kinds.contains("totp_replayed"),
        "{kinds}"
    );
    let (_, audit) = s.call("GET", "/api/v1/audit?limit=1000", Some(KEY), None);
    let audit = audit.to_string();
    assert!(audit.contains("operator.logged_in") && audit.contains("operator.logged_out"));
    let logs = s.logs();
    assert!(!logs.contains(&e.password) && !logs.contains(&e.secret));
    assert!(!logs.contains(cookie.split('=').nth(1).unwrap()));
}

/// Moves a session's clock in the store, as if time had passed.
fn age_sessions(w: &Workdir, column: &str, by: chrono::Duration) {
    let conn = rusqlite::Connection::open(w.path("velvet.db")).unwrap();
    conn.busy_timeout(std::time::Duration::from_secs(10))
        .unwrap();
    let at = (chrono::Utc::now() - by).to_rfc3339_opts(chrono::SecondsFormat::AutoSi, false);
    conn.execute(&format!("UPDATE operator_sessions SET {column} = ?1"), [at])
        .unwrap();
}

#[test]
fn sessions_end_when_idle_too_long_past_their_limit_or_ended_by_an_admin() {
    let (w, s, e) = setup();
    // Each login spends a backup code: TOTP codes would each need their own 30 s step.
    let fresh = |i: usize| {
        let r = login(&s, &e.password, &e.codes[i]);
        assert_eq!(r.status(), 303);
        session_of(&r)
    };
    // Idle 31 minutes.
    let cookie = fresh(0);
    assert_eq!(get(&s, "/api/v1/tokens", &cookie).status(), 200);
    age_sessions(&w, "last_seen_at", chrono::Duration::minutes(31));
    assert_eq!(get(&s, "/api/v1/tokens", &cookie).status(), 401);
    // Past the absolute limit, however active.
    let cookie = fresh(1);
    age_sessions(&w, "expires_at", chrono::Duration::seconds(1));
    assert_eq!(get(&s, "/api/v1/tokens", &cookie).status(), 401);
    // Ended by an admin.
    let cookie = fresh(2);
    assert_eq!(get(&s, "/api/v1/tokens", &cookie).status(), 200);
    let (code, body) = s.call("DELETE", "/api/v1/auth/sessions/alice", Some(KEY), None);
    assert_eq!(code, 200, "{body}");
    // Every session not ended before, the two past their limits included.
    assert_eq!(body, json!({"operator": "alice", "ended": 3}));
    assert_eq!(get(&s, "/api/v1/tokens", &cookie).status(), 401);
    assert_eq!(
        s.call("DELETE", "/api/v1/auth/sessions/nobody", Some(KEY), None)
            .0,
        404
    );
    // Failed logins are limited per address like failed API credentials.
    let mut statuses = Vec::new();
    for _ in 0..10 {
        statuses.push(login(&s, "wrong-password", "000000").status().as_u16());
    }
    assert!(statuses.iter().all(|c| *c == 401), "{statuses:?}");
    let r = login(&s, &e.password, &e.codes[5]);
    assert_eq!(
        r.status(),
        429,
        "even the right password waits out the window"
    );
    assert!(r.headers().contains_key("retry-after"));
}

#[test]
fn assets_are_content_hashed_immutable_and_listed_with_their_sha256() {
    use sha2::{Digest, Sha256};
    let (_w, s, _) = setup();
    let manifest: Value = client()
        .get(s.url("/console/assets/manifest.json"))
        .send()
        .unwrap()
        .json()
        .unwrap();
    let files = manifest["files"].as_array().unwrap();
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../velvet-server/assets");
    let on_disk: Vec<_> = std::fs::read_dir(&root)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    assert_eq!(
        files.len(),
        on_disk.len(),
        "every asset file is listed: {manifest}"
    );
    for f in files {
        let name = f["name"].as_str().unwrap();
        let bytes = std::fs::read(root.join(name)).unwrap();
        let sha = hex::encode(Sha256::digest(&bytes));
        assert_eq!(f["sha256"], sha.as_str(), "{name}");
        let path = f["path"].as_str().unwrap();
        assert!(path.contains(&sha[..8]), "{path}");
        let r = client().get(s.url(path)).send().unwrap();
        assert_eq!(r.status(), 200);
        assert!(
            r.headers()["cache-control"]
                .to_str()
                .unwrap()
                .contains("immutable")
        );
        assert_eq!(r.bytes().unwrap().as_ref(), bytes.as_slice(), "{name}");
    }
    assert_eq!(
        client()
            .get(s.url("/console/assets/console.00000000.js"))
            .send()
            .unwrap()
            .status(),
        404
    );
}

#[test]
fn the_rotation_modal_follows_the_ui_flag_and_pages_need_a_session() {
    let (_w, s, e) = setup();
    for page in [
        "/console/tokens/api",
        "/console/audit",
        "/console/rotations/rot_x",
    ] {
        let r = client().get(s.url(page)).send().unwrap();
        assert_eq!(r.status(), 303, "{page} without a session");
    }
    let r = login(&s, &e.password, &e.codes[0]);
    let cookie = session_of(&r);
    let page = get(&s, "/console/tokens/api", &cookie).text().unwrap();
    assert!(page.contains("id=\"open-rotation\"") && page.contains("<dialog id=\"rotation\""));
    let (code, _) = s.call(
        "PUT",
        "/api/v1/flags/velvet_v2_rotation_ui",
        Some(KEY),
        Some(json!({"enabled": false})),
    );
    assert_eq!(code, 200);
    let page = get(&s, "/console/tokens/api", &cookie).text().unwrap();
    assert!(
        !page.contains("open-rotation") && !page.contains("<dialog"),
        "{page}"
    );
    // Alice is an operator: without audit.read the audit page is refused, as the API does.
    assert_eq!(get(&s, "/console/audit", &cookie).status(), 403);
    assert_eq!(get(&s, "/console/tokens/nope", &cookie).status(), 404);
}

/// The tokens table has a header for every cell, and a token whose job awaits a person says so
/// instead of "rotating".
#[test]
fn the_tokens_table_lines_up_and_names_what_a_job_waits_for() {
    let (_w, s, e) = setup();
    let (code, kicked) = s.call("POST", "/api/v1/tokens/api/rotate", Some(KEY), None);
    assert_eq!(code, 202, "{kicked}");
    let job = kicked["job_id"].as_str().unwrap().to_string();
    let start = std::time::Instant::now();
    loop {
        let (_, j) = s.call("GET", &format!("/api/v1/rotations/{job}"), Some(KEY), None);
        if j["awaiting"] == "proceed_distribute" {
            assert!(j["consumers"].as_array().is_some());
            break;
        }
        assert!(start.elapsed() < std::time::Duration::from_secs(20), "{j}");
        std::thread::sleep(std::time::Duration::from_millis(30));
    }
    let cookie = session_of(&login(&s, &e.password, &e.codes[0]));
    let page = get(&s, "/console", &cookie).text().unwrap();
    let headers = page.matches("<th scope").count();
    let row = page
        .split("<tbody>")
        .nth(1)
        .unwrap()
        .split("</tr>")
        .next()
        .unwrap();
    assert_eq!(row.matches("<td").count(), headers, "{page}");
    assert!(row.contains("awaiting distribute"), "{row}");
    assert!(page.contains("rel=\"icon\""), "a favicon");
}

/// What a person wrote in velvet.yaml is text on every page, never markup.
#[test]
fn written_text_is_escaped_on_the_pages() {
    let (_w, s, e) = setup();
    let cookie = session_of(&login(&s, &e.password, &e.codes[0]));
    for path in ["/console", "/console/tokens/api"] {
        let page = get(&s, path, &cookie).text().unwrap();
        assert!(
            !page.contains("<b>bold") && page.contains("&lt;b&gt;bold&lt;/b&gt;"),
            "{path}: {page}"
        );
    }
    let page = get(&s, "/console/tokens/api", &cookie).text().unwrap();
    assert!(
        page.contains("&lt;img src=x onerror=alert(1)&gt; &amp; 'quoted' &quot;too&quot;"),
        "{page}"
    );
    assert!(!page.contains("<img"), "{page}");
}
