//! The declarations in `velvet.yaml` as types: tokens with their source and consumers,
//! revocation gates, defaults and engine tuning. Decoding and checks live in `declare.rs`.

use serde::{Deserialize, Serialize};
use std::path::PathBuf;
use std::time::Duration;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum FlowType {
    /// Pauses for confirmation before distribute and before revoke.
    Staged,
    /// No pauses; waits `grace_period` before revoke.
    Auto,
    /// No pauses, no grace: for a leaked credential.
    Emergency,
}

impl FlowType {
    pub const ALL: &[(&str, FlowType)] = &[
        ("staged", Self::Staged),
        ("auto", Self::Auto),
        ("emergency", Self::Emergency),
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Staged => "staged",
            Self::Auto => "auto",
            Self::Emergency => "emergency",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RetryPolicy {
    pub attempts: u32,
    #[serde(with = "crate::duration::serde_str")]
    pub initial_backoff: Duration,
    #[serde(with = "crate::duration::serde_str")]
    pub max_backoff: Duration,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Defaults {
    pub flow: FlowType,
    #[serde(with = "crate::duration::serde_str")]
    pub grace_period: Duration,
    pub retry: RetryPolicy,
    #[serde(with = "crate::duration::serde_str::option")]
    pub max_age: Option<Duration>,
    #[serde(with = "crate::duration::serde_str::option")]
    pub remind_before: Option<Duration>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EngineConfig {
    /// Consumers written at once, across all jobs.
    pub concurrency: usize,
    /// Consumers sharing a `lock_key` written at once.
    pub per_lock_key: usize,
    /// A job whose replica stops renewing its lease is taken over after this.
    #[serde(with = "crate::duration::serde_str")]
    pub lease: Duration,
    /// Drift and staleness probes run this often; zero turns them off.
    #[serde(with = "crate::duration::serde_str")]
    pub probe_every: Duration,
}

/// One credential under management, as declared.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TokenSpec {
    pub name: String,
    pub description: String,
    pub tags: Vec<String>,
    /// Effective values: the token's own, else `defaults`.
    pub flow: FlowType,
    #[serde(with = "crate::duration::serde_str")]
    pub grace_period: Duration,
    pub retry: RetryPolicy,
    pub source: SourceSpec,
    #[serde(with = "crate::duration::serde_str::option")]
    pub rotate_every: Option<Duration>,
    /// Cron slots instead of `rotate_every` (the two are exclusive).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub schedule: Option<ScheduleSpec>,
    /// Older than this, the current version is `overdue` (the token's own, else `defaults`).
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        with = "crate::duration::serde_str::option"
    )]
    pub max_age: Option<Duration>,
    /// `due_soon` this long before the next rotation or `max_age` (the token's own, else
    /// `defaults`, else [`REMIND_BEFORE`]).
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        with = "crate::duration::serde_str::option"
    )]
    pub remind_before: Option<Duration>,
    pub consumers: Vec<ConsumerSpec>,
}

/// How long before a rotation or `max_age` a token is `due_soon` when nothing says.
pub const REMIND_BEFORE: Duration = Duration::from_secs(14 * 86400);

impl TokenSpec {
    /// The token's cadence, if it has a schedule (`None` also for a cron that no longer
    /// parses, which `validate` refused when it was loaded).
    pub fn cadence(&self) -> Option<crate::schedule::Cadence> {
        if let Some(s) = &self.schedule {
            return crate::schedule::Slots::new(&s.cron, &s.timezone, s.window, s.jitter)
                .ok()
                .map(|s| crate::schedule::Cadence::Slots(Box::new(s)));
        }
        self.rotate_every.map(crate::schedule::Cadence::every)
    }

    pub fn remind_before(&self) -> Duration {
        self.remind_before.unwrap_or(REMIND_BEFORE)
    }
}

/// `schedule`: a cron expression on a zone's wall clock, and when within each slot a job may
/// start.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ScheduleSpec {
    pub cron: String,
    pub timezone: String,
    /// A job starts only within `[slot, slot + window)`.
    #[serde(with = "crate::duration::serde_str")]
    pub window: Duration,
    /// At a stable random moment this long after its slot at most.
    #[serde(with = "crate::duration::serde_str")]
    pub jitter: Duration,
}

/// A span of time in which no scheduled rotation starts.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BlackoutSpec {
    pub name: String,
    #[serde(flatten)]
    pub when: BlackoutWhen,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum BlackoutWhen {
    Between {
        from: chrono::DateTime<chrono::Utc>,
        to: chrono::DateTime<chrono::Utc>,
    },
    Recurring {
        cron: String,
        timezone: String,
        #[serde(with = "crate::duration::serde_str")]
        duration: Duration,
    },
}

impl BlackoutSpec {
    /// As the scheduler uses it (`None` for a cron that no longer parses).
    pub fn compile(&self) -> Option<crate::schedule::Blackout> {
        let name = self.name.clone();
        Some(match &self.when {
            BlackoutWhen::Between { from, to } => crate::schedule::Blackout::Between {
                name,
                from: *from,
                to: *to,
            },
            BlackoutWhen::Recurring {
                cron,
                timezone,
                duration,
            } => crate::schedule::Blackout::Recurring {
                name,
                starts: Box::new(
                    crate::schedule::Slots::new(cron, timezone, *duration, Duration::ZERO).ok()?,
                ),
                duration: chrono::TimeDelta::from_std(*duration).ok()?,
            },
        })
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Encoding {
    Hex,
    Base64,
    Base64url,
    Alnum,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "strategy", rename_all = "snake_case")]
pub enum PgStrategy {
    /// One role whose password changes in place at mint.
    Single { role: String },
    /// Two roles with the same grants; each rotation re-keys the one not in use.
    Alternating { roles: [String; 2] },
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "strategy", rename_all = "snake_case")]
pub enum MysqlStrategy {
    /// One user that holds the old and the new password between mint and revoke.
    Single { user: String },
    /// Two users with the same grants; each rotation re-keys the one not in use.
    Alternating { users: [String; 2] },
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum SourceSpec {
    Random {
        bytes: usize,
        encoding: Encoding,
    },
    PostgresRole {
        admin_url_env: String,
        #[serde(flatten)]
        strategy: PgStrategy,
    },
    RedisAcl {
        admin_url_env: String,
        user: String,
    },
    MysqlUser {
        admin_url_env: String,
        #[serde(flatten)]
        strategy: MysqlStrategy,
        /// The account's host part (`'user'@'host'`).
        host: String,
    },
    /// A value only a person can issue (design §11): given at kickoff, distributed, verified;
    /// reminders keep it fresh.
    Manual,
}

impl SourceSpec {
    pub fn kind(&self) -> &'static str {
        match self {
            Self::Random { .. } => "random",
            Self::PostgresRole { .. } => "postgres_role",
            Self::RedisAcl { .. } => "redis_acl",
            Self::MysqlUser { .. } => "mysql_user",
            Self::Manual => "manual",
        }
    }

    /// The fields a value minted by this source has.
    pub fn fields(&self) -> &'static [&'static str] {
        match self {
            Self::Random { .. } | Self::Manual => &["value"],
            Self::PostgresRole { .. } | Self::RedisAcl { .. } | Self::MysqlUser { .. } => {
                &["username", "password"]
            }
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FileFormat {
    Raw,
    Dotenv,
    Json,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProbeSpec {
    pub url: String,
    /// `Name: value`, where the value may use `{{value}}`.
    pub header: Option<String>,
    pub expect_status: u16,
    /// Sent again with a random wrong value, the probe must answer this (e.g. 401).
    #[serde(default)]
    pub reject_status: Option<u16>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConsumerSpec {
    pub name: String,
    /// Consumers sharing a lock key are never written at the same time.
    pub lock_key: Option<String>,
    /// `verify.probe`: checked after the consumer's own verify.
    #[serde(default)]
    pub verify_probe: Option<ProbeSpec>,
    #[serde(flatten)]
    pub kind: ConsumerKind,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum ConsumerKind {
    File {
        path: PathBuf,
        format: FileFormat,
        key: Option<String>,
        previous_key: Option<String>,
        template: Option<String>,
        mode: u32,
        /// Write through a symbolic link at `path` (refused unless set).
        #[serde(default)]
        follow_symlinks: bool,
    },
    Exec {
        command: Vec<String>,
        verify_command: Option<Vec<String>>,
        #[serde(with = "crate::duration::serde_str")]
        timeout: Duration,
        /// Variables the command sees besides PATH, HOME and LANG: a literal or a template
        /// over the value's fields.
        #[serde(default)]
        env: Vec<(String, String)>,
    },
    Webhook {
        url: String,
        signing_secret_env: String,
        #[serde(with = "crate::duration::serde_str")]
        timeout: Duration,
    },
    VaultKv {
        address: String,
        token_env: String,
        mount: String,
        path: String,
        field: String,
        previous_field: Option<String>,
    },
    HerokuConfigVar {
        app: String,
        key: String,
        previous_key: Option<String>,
        api_key_env: String,
        /// `https://api.heroku.com` unless pointed elsewhere (tests, proxies).
        api_url: String,
        template: Option<String>,
    },
    CloudflareWorkerSecret {
        account_id: String,
        script: String,
        secret_name: String,
        api_token_env: String,
        /// `https://api.cloudflare.com/client/v4` unless pointed elsewhere.
        api_url: String,
        template: Option<String>,
    },
    InfisicalSecret {
        project_id: String,
        environment: String,
        /// A folder such as `/` or `/console/read`.
        secret_path: String,
        key: String,
        auth: InfisicalAuth,
        /// `https://us.infisical.com` unless pointed elsewhere (EU, self-hosted, tests).
        api_url: String,
        template: Option<String>,
    },
    GithubActionsSecret {
        scope: GithubScope,
        secret_name: String,
        token_env: String,
        /// `https://api.github.com` unless pointed elsewhere (GitHub Enterprise Server, tests).
        api_url: String,
        template: Option<String>,
    },
    K8sSecret {
        namespace: String,
        secret: String,
        key: String,
        /// A bearer token; `None`: the pod's service account token.
        token_env: Option<String>,
        /// The API server's CA; `None`: the service account's `ca.crt` in a pod, else the
        /// system roots.
        ca_file: Option<PathBuf>,
        /// Workloads restarted after the write, whose rollout must complete for verify.
        restart: Vec<RestartTarget>,
        #[serde(with = "crate::duration::serde_str")]
        rollout_timeout: Duration,
        /// `https://kubernetes.default.svc` unless pointed elsewhere.
        api_url: String,
        template: Option<String>,
    },
    AwsSecretsManager {
        region: String,
        secret_id: String,
        /// A key of the JSON object in `SecretString`; `None`: the whole string.
        field: Option<String>,
        access_key_id_env: String,
        secret_access_key_env: String,
        session_token_env: Option<String>,
        /// `https://secretsmanager.{region}.amazonaws.com` unless pointed elsewhere.
        api_url: String,
        template: Option<String>,
    },
}

/// A workload restarted so its pods read a Secret again.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RestartTarget {
    /// `Deployment`, `StatefulSet` or `DaemonSet`.
    pub kind: String,
    pub name: String,
}

impl RestartTarget {
    /// The API's resource name: `deployments`, `statefulsets`, `daemonsets`.
    pub fn resource(&self) -> String {
        format!("{}s", self.kind.to_lowercase())
    }
}

/// Where a GitHub Actions secret lives.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum GithubScope {
    /// A repository's secret (`owner/name`), or one of its environment's.
    Repository {
        repository: String,
        environment: Option<String>,
    },
    /// An organisation's secret, seen by `all`, `private` or `selected` repositories.
    Organization {
        organization: String,
        visibility: String,
    },
}

impl GithubScope {
    /// The API path under which its secrets live, e.g. `/repos/o/r/actions/secrets`.
    pub fn secrets_path(&self) -> String {
        match self {
            Self::Repository {
                repository,
                environment: None,
            } => format!("/repos/{repository}/actions/secrets"),
            Self::Repository {
                repository,
                environment: Some(env),
            } => format!("/repos/{repository}/environments/{env}/secrets"),
            Self::Organization { organization, .. } => {
                format!("/orgs/{organization}/actions/secrets")
            }
        }
    }

    /// The repository or organisation: the lock key's resource.
    pub fn owner(&self) -> &str {
        match self {
            Self::Repository { repository, .. } => repository,
            Self::Organization { organization, .. } => organization,
        }
    }
}

/// How the Infisical consumer authenticates.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum InfisicalAuth {
    /// An access token in this variable.
    Token { token_env: String },
    /// A machine identity's universal-auth client id and secret, traded for an access token.
    UniversalAuth {
        client_id_env: String,
        client_secret_env: String,
    },
}

impl ConsumerKind {
    pub fn as_str(&self) -> &'static str {
        match self {
            Self::File { .. } => "file",
            Self::Exec { .. } => "exec",
            Self::Webhook { .. } => "webhook",
            Self::VaultKv { .. } => "vault_kv",
            Self::HerokuConfigVar { .. } => "heroku_config_var",
            Self::CloudflareWorkerSecret { .. } => "cloudflare_worker_secret",
            Self::InfisicalSecret { .. } => "infisical_secret",
            Self::GithubActionsSecret { .. } => "github_actions_secret",
            Self::K8sSecret { .. } => "k8s_secret",
            Self::AwsSecretsManager { .. } => "aws_secrets_manager",
        }
    }
}

/// Consumer kinds on the roadmap: named so the error says "not yet" rather than "unknown".
pub(super) const LATER_CONSUMERS: &[&str] = &[];

/// Roles of design §7, and those that hold `rotations.revoke`.
pub const ROLES: &[&str] = &["viewer", "operator", "revoker", "auditor", "admin"];
pub const REVOKE_ROLES: &[&str] = &["revoker", "admin"];

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GateMatch {
    pub tags: Vec<String>,
    /// Globs over token names (`stripe-*`).
    pub tokens: Vec<String>,
}

impl GateMatch {
    /// Whether `token` carries one of the tags or its name matches one of the globs.
    pub fn matches(&self, token: &TokenSpec) -> bool {
        self.tags.iter().any(|t| token.tags.contains(t))
            || self
                .tokens
                .iter()
                .any(|g| wildmatch::WildMatch::new(g).matches(&token.name))
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GateRequire {
    pub totp: bool,
    pub approvals: u32,
    pub roles: Vec<String>,
}

/// A revocation gate: the policy in front of `proceed_revoke`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GateSpec {
    pub name: String,
    #[serde(rename = "match")]
    pub matches: GateMatch,
    pub require: GateRequire,
    pub allow_force: bool,
}

impl GateSpec {
    pub fn applies_to(&self, token: &TokenSpec) -> bool {
        self.matches.matches(token)
    }
}

/// The first gate that matches `token`, if any.
pub fn gate_for<'g>(gates: &'g [GateSpec], token: &TokenSpec) -> Option<&'g GateSpec> {
    gates.iter().find(|g| g.applies_to(token))
}
