//! A real SMTP server for notification tests: Python's aiosmtpd on a loopback port, requiring
//! a login (one user and password; any other login is refused with 535) and keeping every
//! message it accepts, stopped on drop.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};

const SERVER: &str = r#"
import sys, json, time
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import AuthResult, LoginPassword
port, out, user, password = int(sys.argv[1]), sys.argv[2], sys.argv[3], sys.argv[4]
class Keep:
    async def handle_DATA(self, server, session, envelope):
        with open(out, "a") as f:
            f.write(json.dumps({"from": envelope.mail_from, "to": envelope.rcpt_tos,
                                "data": envelope.content.decode("utf-8", "replace")}) + "\n")
        return "250 OK"
def login(server, session, envelope, mechanism, data):
    ok = isinstance(data, LoginPassword) and data.login == user.encode() and data.password == password.encode()
    return AuthResult(success=ok, handled=False)
c = Controller(Keep(), hostname="127.0.0.1", port=port, authenticator=login,
               auth_required=True, auth_require_tls=False)
c.start()
while True:
    time.sleep(3600)
"#;

/// One message the server accepted.
#[derive(Debug, Clone)]
pub struct Mail {
    pub from: String,
    pub to: Vec<String>,
    /// Headers and body as received.
    pub data: String,
}

#[derive(Debug)]
pub struct Smtp {
    pub port: u16,
    pub user: String,
    pub password: String,
    out: PathBuf,
    _dir: tempfile::TempDir,
    child: Child,
}

impl Smtp {
    /// Starts the server; panics with the install command when aiosmtpd is missing.
    pub fn start() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("mail.jsonl");
        let port = crate::servers::free_port();
        let (user, password) = ("velvet".to_string(), crate::unique_name("pw"));
        let mut child = Command::new("python3")
            .args([
                "-c",
                SERVER,
                &port.to_string(),
                out.to_str().unwrap(),
                &user,
                &password,
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("python3 runs");
        let start = std::time::Instant::now();
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            if let Ok(Some(_)) = child.try_wait() {
                let mut err = String::new();
                std::io::Read::read_to_string(child.stderr.as_mut().unwrap(), &mut err).ok();
                panic!("aiosmtpd did not start (install it with `pip install aiosmtpd`): {err}");
            }
            assert!(start.elapsed().as_secs() < 30, "aiosmtpd did not listen");
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
        Self {
            port,
            user,
            password,
            out,
            _dir: dir,
            child,
        }
    }

    /// Every message accepted so far.
    pub fn mails(&self) -> Vec<Mail> {
        std::fs::read_to_string(&self.out)
            .unwrap_or_default()
            .lines()
            .map(|l| {
                let v: serde_json::Value = serde_json::from_str(l).unwrap();
                Mail {
                    from: v["from"].as_str().unwrap_or("").into(),
                    to: v["to"]
                        .as_array()
                        .into_iter()
                        .flatten()
                        .filter_map(|a| a.as_str().map(str::to_string))
                        .collect(),
                    data: v["data"].as_str().unwrap_or("").into(),
                }
            })
            .collect()
    }
}

impl Drop for Smtp {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
