//! `velvet.yaml`: the schema of design §3, its environment overrides, and validation that
//! reports every problem at once with its path and line.

mod consumers;
mod declare;
mod decode;
mod notifications;
mod providers;
mod schedules;
mod server;
mod sources;
mod spec;

pub use decode::{EnvLookup, valid_name};
pub use notifications::{ChannelKind, ChannelSpec, EVENTS, NOTIFY_REPEAT, SmtpSpec, SmtpTls};
pub use server::ServerConfig;
pub use spec::*;

use crate::secret::SecretString;
use decode::{Cx, Map};
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Flags Velvet knows, with their defaults when the file does not set them.
pub const KNOWN_FLAGS: &[(&str, bool)] = &[
    ("velvet_v2_rotation", true),
    ("velvet_v2_rotation_ui", true),
];

/// One problem found in the configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    /// Where, as `tokens[1].consumers[0].path`; empty for the whole file.
    pub path: String,
    pub line: Option<usize>,
    pub column: Option<usize>,
    pub message: String,
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if !self.path.is_empty() {
            write!(f, "{}: ", self.path)?;
        }
        f.write_str(&self.message)?;
        if let Some(line) = self.line {
            write!(f, " (line {line}")?;
            if let Some(col) = self.column {
                write!(f, ", column {col}")?;
            }
            f.write_str(")")?;
        }
        Ok(())
    }
}

/// Every problem in one file.
#[derive(Debug, Clone, thiserror::Error)]
pub struct ConfigError {
    pub file: PathBuf,
    pub problems: Vec<Problem>,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let n = self.problems.len();
        write!(
            f,
            "{}: {n} problem{}",
            self.file.display(),
            if n == 1 { "" } else { "s" }
        )?;
        for p in &self.problems {
            write!(f, "\n  - {p}")?;
        }
        Ok(())
    }
}

/// Where the store lives, resolved from `store.url`.
#[derive(Clone, PartialEq, Eq)]
pub enum StoreUrl {
    Sqlite(PathBuf),
    Postgres(String),
}

impl fmt::Debug for StoreUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{self}")
    }
}

impl fmt::Display for StoreUrl {
    /// Never shows a password that an environment-supplied URL may carry.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Sqlite(p) => write!(f, "sqlite://{}", p.display()),
            Self::Postgres(url) => f.write_str(&redact_url(url)),
        }
    }
}

/// `postgres://user:secret@host/db` → `postgres://user:***@host/db`.
pub fn redact_url(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_string();
    };
    let (authority, tail) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
    match authority.rsplit_once('@') {
        Some((userinfo, host)) => match userinfo.split_once(':') {
            Some((user, _)) => format!("{scheme}://{user}:***@{host}{tail}"),
            None => url.to_string(),
        },
        None => url.to_string(),
    }
}

fn url_has_password(url: &str) -> bool {
    redact_url(url) != url
}

/// Where the keyring comes from.
#[derive(Debug, Clone)]
pub enum KeyringSource {
    File(PathBuf),
    /// `VELVET_MASTER_KEY`: a one-key keyring.
    MasterKey(SecretString),
}

#[derive(Debug, Clone)]
pub struct Config {
    /// The file this was read from, and the directory relative paths resolve against.
    pub file: PathBuf,
    pub base_dir: PathBuf,
    pub listen: SocketAddr,
    /// Connection limits and who may name the client address (design §10).
    pub server: ServerConfig,
    pub store: StoreUrl,
    pub keyring: KeyringSource,
    /// `VELVET_API_KEY`, the bootstrap admin bearer.
    pub api_key: Option<SecretString>,
    pub flags: BTreeMap<String, bool>,
    /// Flags the file sets (the rest keep their built-in default).
    pub flags_in_file: BTreeSet<String>,
    pub defaults: Defaults,
    pub engine: EngineConfig,
    pub tokens: Vec<TokenSpec>,
    pub revocation_gates: Vec<GateSpec>,
    /// No scheduled rotation starts inside one (design §11).
    pub blackouts: Vec<BlackoutSpec>,
    /// Channels that tell people what needs them (design §11).
    pub notifications: Vec<ChannelSpec>,
    /// Position of each token in `tokens`: the engine looks a token up at every step.
    token_index: HashMap<String, usize>,
}

/// The configuration in force, shared by the server and the engine. A reload swaps it whole;
/// a reader keeps the one it loaded for as long as it holds it, without a lock.
pub type LiveConfig = std::sync::Arc<arc_swap::ArcSwap<Config>>;

/// `config` as the one in force.
pub fn live(config: Config) -> LiveConfig {
    std::sync::Arc::new(arc_swap::ArcSwap::from_pointee(config))
}

/// Options for reading a config.
#[derive(Clone, Copy)]
pub struct LoadOptions<'e> {
    pub env: EnvLookup<'e>,
    /// Whether variables named by `*_env` fields must be set (off for `validate --skip-env`).
    pub check_env: bool,
}

impl fmt::Debug for LoadOptions<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LoadOptions")
            .field("check_env", &self.check_env)
            .finish()
    }
}

/// The process environment.
pub fn process_env(name: &str) -> Option<String> {
    std::env::var(name).ok()
}

/// The config path: `--config`, else `VELVET_CONFIG`, else `./velvet.yaml`.
pub fn resolve_path(flag: Option<&Path>, env: EnvLookup) -> PathBuf {
    flag.map(Path::to_path_buf)
        .or_else(|| {
            env("VELVET_CONFIG")
                .filter(|s| !s.is_empty())
                .map(PathBuf::from)
        })
        .unwrap_or_else(|| PathBuf::from("velvet.yaml"))
}

impl Config {
    /// Reads and validates `path`.
    pub fn load(path: &Path, opts: LoadOptions) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|e| ConfigError {
            file: path.to_path_buf(),
            problems: vec![Problem {
                path: String::new(),
                line: None,
                column: None,
                message: if e.kind() == std::io::ErrorKind::NotFound {
                    "no such file; create one with `velvet init` or pass --config".into()
                } else {
                    format!("cannot read: {e}")
                },
            }],
        })?;
        Self::parse(&text, path, opts)
    }

    /// Validates `text` as if read from `path`.
    pub fn parse(text: &str, path: &Path, opts: LoadOptions) -> Result<Self, ConfigError> {
        let fail = |problems| ConfigError {
            file: path.to_path_buf(),
            problems,
        };
        let base_dir = path
            .parent()
            .filter(|p| !p.as_os_str().is_empty())
            .unwrap_or(Path::new("."))
            .to_path_buf();
        if text.trim().is_empty() {
            return Err(fail(vec![Problem {
                path: String::new(),
                line: None,
                column: None,
                message: "the file is empty; `velvet init` writes a starter".into(),
            }]));
        }
        let options = marked_yaml::LoaderOptions::default().error_on_duplicate_keys(true);
        let root = marked_yaml::parse_yaml_with_options(0, text, options)
            .map_err(|e| fail(vec![yaml_problem(e)]))?;
        let mut cx = Cx {
            problems: Vec::new(),
            env: opts.env,
            check_env: opts.check_env,
        };
        let config = decode_root(&mut cx, &root, base_dir, path);
        match config {
            Some(c) if cx.problems.is_empty() => Ok(c),
            _ => Err(fail(cx.problems)),
        }
    }

    /// The token declared under `name`.
    pub fn token(&self, name: &str) -> Option<&TokenSpec> {
        self.token_index
            .get(name)
            .and_then(|&i| self.tokens.get(i))
            .filter(|t| t.name == name)
            // `tokens` is public: should someone edit it, a scan still finds the truth.
            .or_else(|| self.tokens.iter().find(|t| t.name == name))
    }

    /// Resolves a path written in the file against the file's directory.
    pub fn resolve(&self, p: &Path) -> PathBuf {
        resolve_against(&self.base_dir, p)
    }
}

fn resolve_against(base: &Path, p: &Path) -> PathBuf {
    if p.is_absolute() {
        p.to_path_buf()
    } else {
        base.join(p)
    }
}

fn yaml_problem(e: marked_yaml::LoadError) -> Problem {
    use marked_yaml::LoadError as E;
    let (marker, message) = match &e {
        E::TopLevelMustBeMapping(m) => (
            Some(*m),
            "the file must be a YAML mapping of sections (server:, store:, tokens: …)".to_string(),
        ),
        E::ScanError(m, err) => (Some(*m), format!("invalid YAML: {err}")),
        E::DuplicateKey(d) => (
            d.key.span().start().copied(),
            format!(
                "key `{}` appears twice in the same mapping (first at line {})",
                d.key.as_str(),
                d.prev_key.span().start().map(|m| m.line()).unwrap_or(0)
            ),
        ),
        E::UnexpectedAnchor(m) => (
            Some(*m),
            "YAML anchors and aliases are not supported".into(),
        ),
        E::UnexpectedTag(m) => (Some(*m), "YAML tags are not supported".into()),
        E::MappingKeyMustBeScalar(m) => (Some(*m), "mapping keys must be plain words".into()),
        other => (None, format!("invalid YAML: {other}")),
    };
    Problem {
        path: String::new(),
        line: marker.map(|m| m.line()),
        column: marker.map(|m| m.column()),
        message,
    }
}

const ROOT_KEYS: &[&str] = &[
    "server",
    "store",
    "keyring",
    "flags",
    "defaults",
    "engine",
    "tokens",
    "revocation_gates",
    "blackouts",
    "notifications",
];

fn decode_root(
    cx: &mut Cx,
    root: &marked_yaml::Node,
    base_dir: PathBuf,
    file: &Path,
) -> Option<Config> {
    let root = Map::new(cx, root, "", ROOT_KEYS)?;
    let env = cx.env;

    // server
    let mut listen_text = "127.0.0.1:8700".to_string();
    let mut server_config = ServerConfig::default();
    if let Some(node) = root.get("server")
        && let Some(server) = Map::new(cx, node, "server", SERVER_KEYS)
    {
        if let Some(l) = server.str(cx, "listen") {
            listen_text = l;
        }
        server_config = server::decode(cx, &server);
    }
    let mut listen_origin = "server.listen".to_string();
    if let Some(v) = env("VELVET_LISTEN").filter(|v| !v.is_empty()) {
        listen_text = v;
        listen_origin = "VELVET_LISTEN".into();
    }
    let listen = match listen_text.parse::<SocketAddr>() {
        Ok(a) => Some(a),
        Err(_) => {
            let span = root
                .get("server")
                .map(|n| *n.span())
                .unwrap_or_else(marked_yaml::Span::new_blank);
            cx.err(
                &listen_origin,
                &span,
                format!("`{listen_text}` is not an address:port such as 127.0.0.1:8700"),
            );
            None
        }
    };

    // store
    let mut url = "sqlite://velvet.db".to_string();
    let mut url_origin = "store.url".to_string();
    let mut url_span = marked_yaml::Span::new_blank();
    if let Some(node) = root.get("store")
        && let Some(store) = Map::new(cx, node, "store", &["url"])
        && let Some(u) = store.str(cx, "url")
    {
        url_span = *store.get("url").expect("present").span();
        if url_has_password(&u) {
            cx.err(
                "store.url",
                &url_span,
                "the URL holds a password; secrets never go in the file: set VELVET_DATABASE_URL instead",
            );
        }
        url = u;
    }
    if let Some(v) = env("VELVET_DATABASE_URL").filter(|v| !v.is_empty()) {
        url = v;
        url_origin = "VELVET_DATABASE_URL".into();
    }
    let store = parse_store_url(&url, &base_dir)
        .map_err(|m| cx.err(&url_origin, &url_span, m))
        .ok();

    // keyring
    let keyring = if let Some(key) = env("VELVET_MASTER_KEY").filter(|v| !v.is_empty()) {
        KeyringSource::MasterKey(SecretString::new(key))
    } else {
        let mut p = root
            .str(cx, "keyring")
            .unwrap_or_else(|| "velvet-keys.json".into());
        if let Some(v) = env("VELVET_KEYRING").filter(|v| !v.is_empty()) {
            p = v;
        }
        KeyringSource::File(resolve_against(&base_dir, Path::new(&p)))
    };

    let (flags, flags_in_file) = decode_flags(cx, &root);
    let defaults = declare::decode_defaults(cx, &root);
    let engine = declare::decode_engine(cx, &root);
    let tokens = declare::decode_tokens(cx, &root, &defaults, &base_dir);
    let revocation_gates = declare::decode_gates(cx, &root);
    let blackouts = schedules::decode_blackouts(cx, &root);
    let notifications = notifications::decode_notifications(cx, &root);

    Some(Config {
        file: file.to_path_buf(),
        base_dir,
        listen: listen?,
        server: server_config,
        store: store?,
        keyring,
        api_key: api_key(cx, env),
        flags,
        flags_in_file,
        defaults,
        engine,
        token_index: tokens
            .iter()
            .enumerate()
            .map(|(i, t)| (t.name.clone(), i))
            .collect(),
        tokens,
        revocation_gates,
        blackouts,
        notifications,
    })
}

/// The shortest `VELVET_API_KEY` accepted: a bootstrap admin bearer must not be guessable.
pub const MIN_API_KEY_LEN: usize = 32;

fn api_key(cx: &mut Cx, env: EnvLookup) -> Option<SecretString> {
    let key = env("VELVET_API_KEY").filter(|v| !v.is_empty())?;
    if key.chars().count() < MIN_API_KEY_LEN {
        cx.err(
            "VELVET_API_KEY",
            &marked_yaml::Span::new_blank(),
            format!(
                "is {} characters; the bootstrap admin key needs at least {MIN_API_KEY_LEN} \
                 (make one with `openssl rand -hex 32`), or unset it and use service tokens",
                key.chars().count()
            ),
        );
        return None;
    }
    Some(SecretString::new(key))
}

const SERVER_KEYS: &[&str] = &[
    "listen",
    "trusted_proxies",
    "header_timeout",
    "max_connections",
    "max_streams_per_client",
];

fn decode_flags(cx: &mut Cx, root: &Map) -> (BTreeMap<String, bool>, BTreeSet<String>) {
    let mut flags: BTreeMap<String, bool> = KNOWN_FLAGS
        .iter()
        .map(|(n, d)| (n.to_string(), *d))
        .collect();
    let mut in_file = BTreeSet::new();
    let names: Vec<&str> = KNOWN_FLAGS.iter().map(|(n, _)| *n).collect();
    if let Some(node) = root.get("flags")
        && let Some(map) = Map::new(cx, node, "flags", &names)
    {
        for name in &names {
            if let Some(v) = map.bool(cx, name) {
                flags.insert(name.to_string(), v);
                in_file.insert(name.to_string());
            }
        }
    }
    (flags, in_file)
}

/// `sqlite://velvet.db` (relative to the config file), `sqlite:///abs.db`, `postgres://…`.
fn parse_store_url(url: &str, base: &Path) -> Result<StoreUrl, String> {
    if let Some(rest) = url
        .strip_prefix("sqlite://")
        .or_else(|| url.strip_prefix("sqlite:"))
    {
        if rest.is_empty() || rest.contains('?') || rest == ":memory:" {
            return Err(format!(
                "`{url}` is not a SQLite file URL: write sqlite://velvet.db or sqlite:///var/lib/velvet/velvet.db"
            ));
        }
        return Ok(StoreUrl::Sqlite(resolve_against(base, Path::new(rest))));
    }
    if url.starts_with("postgres://") || url.starts_with("postgresql://") {
        return Ok(StoreUrl::Postgres(url.to_string()));
    }
    Err(format!(
        "`{}` has an unsupported scheme: use sqlite://FILE or postgres://USER@HOST/DB",
        redact_url(url)
    ))
}

impl Defaults {
    /// Built-in defaults of design §3.
    pub fn builtin() -> Self {
        Self {
            flow: FlowType::Staged,
            grace_period: Duration::from_secs(15 * 60),
            retry: RetryPolicy {
                attempts: 5,
                initial_backoff: Duration::from_secs(2),
                max_backoff: Duration::from_secs(300),
            },
            max_age: None,
            remind_before: None,
        }
    }
}

#[cfg(test)]
mod provider_tests;
#[cfg(test)]
mod schedule_tests;
#[cfg(test)]
mod tests;
