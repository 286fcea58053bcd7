//! Runs the real `velvet` binary: one-shot commands, and servers awaited by their "listening"
//! log line (never by sleeping), stopped by real signals.

#![allow(dead_code)]

pub mod receiver;

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

pub const BIN: &str = env!("CARGO_BIN_EXE_velvet");

/// A directory initialised with `velvet init`.
#[derive(Debug)]
pub struct Workdir {
    pub dir: tempfile::TempDir,
}

#[derive(Debug)]
pub struct Out {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

impl Out {
    pub fn all(&self) -> String {
        format!("{}{}", self.stdout, self.stderr)
    }
}

impl Workdir {
    pub fn new() -> Self {
        let w = Self {
            dir: tempfile::tempdir().unwrap(),
        };
        let out = w.run(
            &["init", "--dir", w.dir.path().to_str().unwrap()],
            &[],
            None,
        );
        assert_eq!(out.code, 0, "{}", out.all());
        w
    }

    pub fn path(&self, p: &str) -> PathBuf {
        self.dir.path().join(p)
    }

    pub fn config(&self) -> String {
        self.path("velvet.yaml").display().to_string()
    }

    pub fn write_config(&self, text: &str) {
        std::fs::write(self.path("velvet.yaml"), text).unwrap();
    }

    pub fn command(&self, args: &[&str], env: &[(&str, &str)]) -> Command {
        let mut c = Command::new(BIN);
        c.arg("--config").arg(self.config()).args(args);
        for var in [
            "VELVET_LISTEN",
            "VELVET_DATABASE_URL",
            "VELVET_KEYRING",
            "VELVET_MASTER_KEY",
            "VELVET_API_KEY",
            "VELVET_CONFIG",
        ] {
            c.env_remove(var);
        }
        c.envs(env.iter().copied());
        c.current_dir(self.dir.path());
        c
    }

    /// Runs a command to completion, optionally feeding `stdin`.
    pub fn run(&self, args: &[&str], env: &[(&str, &str)], stdin: Option<&str>) -> Out {
        let mut c = self.command(args, env);
        c.stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = c.spawn().unwrap();
        {
            let mut input = child.stdin.take().unwrap();
            // A command that exits before reading its input closes the pipe; its exit code and
            // output, asserted by the caller, say why.
            if let Some(s) = stdin {
                let _ = input.write_all(s.as_bytes());
            }
        }
        let out = child.wait_with_output().unwrap();
        Out {
            code: out.status.code().unwrap_or(-1),
            stdout: String::from_utf8_lossy(&out.stdout).into(),
            stderr: String::from_utf8_lossy(&out.stderr).into(),
        }
    }

    pub fn serve(&self, args: &[&str], env: &[(&str, &str)]) -> Server {
        let mut full = vec!["serve"];
        full.extend_from_slice(args);
        let mut env = env.to_vec();
        if !env.iter().any(|(k, _)| *k == "VELVET_LISTEN") {
            env.push(("VELVET_LISTEN", "127.0.0.1:0"));
        }
        Server::spawn(self.command(&full, &env))
    }
}

/// A running `velvet serve` (or `demo`) with its log collected.
#[derive(Debug)]
pub struct Server {
    pub child: Child,
    pub addr: Option<String>,
    pub log: Arc<Mutex<Vec<String>>>,
}

impl Server {
    pub fn spawn(mut cmd: Command) -> Self {
        cmd.stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = cmd.spawn().unwrap();
        let log = Arc::new(Mutex::new(Vec::new()));
        for stream in [
            Box::new(child.stdout.take().unwrap()) as Box<dyn std::io::Read + Send>,
            Box::new(child.stderr.take().unwrap()),
        ] {
            let log = log.clone();
            std::thread::spawn(move || {
                for line in BufReader::new(stream).lines().map_while(Result::ok) {
                    log.lock().unwrap().push(line);
                }
            });
        }
        let mut s = Self {
            child,
            addr: None,
            log,
        };
        s.addr = s
            .wait_for("velvet listening", Duration::from_secs(60))
            .and_then(|l| {
                let v: serde_json::Value = serde_json::from_str(&l).ok()?;
                v["fields"]["addr"].as_str().map(str::to_string)
            });
        s
    }

    /// Waits for a log line containing `needle`; `None` if the process exits first or time runs out.
    pub fn wait_for(&mut self, needle: &str, limit: Duration) -> Option<String> {
        let start = Instant::now();
        loop {
            if let Some(l) = self.log.lock().unwrap().iter().find(|l| l.contains(needle)) {
                return Some(l.clone());
            }
            if start.elapsed() > limit || self.child.try_wait().unwrap().is_some() {
                std::thread::sleep(Duration::from_millis(100));
                return self
                    .log
                    .lock()
                    .unwrap()
                    .iter()
                    .find(|l| l.contains(needle))
                    .cloned();
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!(
            "http://{}{path}",
            self.addr
                .as_ref()
                .unwrap_or_else(|| panic!("server did not start:\n{}", self.logs()))
        )
    }

    pub fn get(&self, path: &str) -> (u16, String) {
        let r = http().get(self.url(path)).send().unwrap();
        (r.status().as_u16(), r.text().unwrap())
    }

    /// A JSON request with the bootstrap bearer `key`.
    pub fn call(
        &self,
        method: &str,
        path: &str,
        key: Option<&str>,
        body: Option<serde_json::Value>,
    ) -> (u16, serde_json::Value) {
        let mut req = http().request(method.parse().unwrap(), self.url(path));
        if let Some(k) = key {
            req = req.bearer_auth(k);
        }
        if let Some(b) = body {
            req = req.json(&b);
        }
        let r = req.send().unwrap();
        let code = r.status().as_u16();
        let text = r.text().unwrap();
        (
            code,
            serde_json::from_str(&text).unwrap_or(serde_json::Value::String(text)),
        )
    }

    pub fn signal(&self, sig: &str) {
        let ok = Command::new("kill")
            .args([&format!("-{sig}"), &self.child.id().to_string()])
            .status()
            .unwrap();
        assert!(ok.success());
    }

    /// Waits for exit and returns the code.
    pub fn wait(&mut self, limit: Duration) -> i32 {
        let start = Instant::now();
        loop {
            if let Some(s) = self.child.try_wait().unwrap() {
                std::thread::sleep(Duration::from_millis(100));
                return s.code().unwrap_or(-1);
            }
            assert!(
                start.elapsed() < limit,
                "process did not exit in {limit:?}:\n{}",
                self.logs()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn logs(&self) -> String {
        self.log.lock().unwrap().join("\n")
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A blocking HTTP client (reqwest is built without a default TLS provider; install ring's).
pub fn http() -> reqwest::blocking::Client {
    let _ = rustls::crypto::ring::default_provider().install_default();
    reqwest::blocking::Client::new()
}

pub fn mode_of(p: &Path) -> u32 {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(p).unwrap().permissions().mode() & 0o777
}

/// A client that shows redirects instead of following them.
pub fn no_redirects() -> reqwest::blocking::Client {
    let _ = http();
    reqwest::blocking::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap()
}

/// The login form's CSRF token and the cookie that carries it, as a browser gets them.
pub fn login_form(s: &Server) -> (String, String) {
    let r = no_redirects().get(s.url("/console/login")).send().unwrap();
    let cookie = r.headers()["set-cookie"].to_str().unwrap().to_string();
    assert!(
        cookie.contains("HttpOnly") && cookie.contains("SameSite=Strict"),
        "{cookie}"
    );
    let cookie = cookie.split(';').next().unwrap().to_string();
    let html = r.text().unwrap();
    let token = html
        .split("name=\"csrf\" value=\"")
        .nth(1)
        .and_then(|t| t.split('"').next())
        .unwrap()
        .to_string();
    (token, cookie)
}

/// Posts the console login form as a browser would: with the form's CSRF token and cookie.
pub fn console_login(
    s: &Server,
    name: &str,
    password: &str,
    code: &str,
) -> reqwest::blocking::Response {
    let (token, cookie) = login_form(s);
    no_redirects()
        .post(s.url("/console/login"))
        .header("cookie", cookie)
        .form(&[
            ("csrf", token.as_str()),
            ("name", name),
            ("password", password),
            ("code", code),
        ])
        .send()
        .unwrap()
}

/// Polls the job with `key` until `done` holds (60 s at most, then fails with the server's log).
pub fn wait_job(
    s: &Server,
    key: &str,
    job: &str,
    what: &str,
    done: impl Fn(&serde_json::Value) -> bool,
) -> serde_json::Value {
    let start = Instant::now();
    loop {
        let (code, j) = s.call("GET", &format!("/api/v1/rotations/{job}"), Some(key), None);
        if code == 200 && done(&j) {
            return j;
        }
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "waited for {what}: {j}\n{}",
            s.logs()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A job at `stage` with `status`.
pub fn at(stage: &'static str, status: &'static str) -> impl Fn(&serde_json::Value) -> bool {
    move |j| j["stage"] == stage && j["status"] == status
}
