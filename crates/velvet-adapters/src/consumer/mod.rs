//! Consumers: the places that hold a copy of a token's value.
//!
//! For one (job, version) the engine calls `apply` then `verify` (each may be repeated), later
//! `revoke_previous` once every consumer is verified, or `rollback` to put the previous value
//! back. A consumer touches only the keys it declares (I7).

mod aws;
mod cloudflare;
mod exec;
mod file;
mod github;
mod heroku;
mod infisical;
mod k8s;
mod probe;
mod vault;
pub(crate) mod webhook;

pub use aws::{AwsSecretsManager, Keys as AwsKeys, Target as AwsTarget};
pub use cloudflare::{CloudflareWorkerSecret, Target as CloudflareTarget};
pub use exec::Exec;
pub use file::File;
pub use github::GithubActionsSecret;
pub use heroku::{HerokuConfigVar, Var as HerokuVar};
pub use infisical::{
    Credential as InfisicalCredential, InfisicalSecret, Target as InfisicalTarget,
};
pub use k8s::{K8sSecret, Target as K8sTarget};
pub use probe::{PROBE_TIMEOUT, Probed};
pub use vault::VaultKv;
pub use webhook::{Webhook, signature as webhook_signature};

use crate::{AdapterError, Delivery, Result};
use async_trait::async_trait;
use velvet_core::config::ConsumerSpec;
use velvet_core::secret::{SecretString, SecretValue};
use velvet_core::template::Template;
use zeroize::Zeroizing;

#[async_trait]
pub trait Consumer: Send + Sync + std::fmt::Debug {
    /// Writes the new value (and, where declared, keeps the previous under its own key).
    async fn apply(&self, d: &Delivery<'_>) -> Result<()>;

    /// Proves the consumer holds the new value.
    async fn verify(&self, d: &Delivery<'_>) -> Result<()>;

    /// Drops the previous value's copy, once every consumer holds the new one.
    async fn revoke_previous(&self, d: &Delivery<'_>) -> Result<()>;

    /// Puts the previous value back where the new one landed (or removes the new one if the
    /// token had no previous value).
    async fn rollback(&self, d: &Delivery<'_>) -> Result<()>;

    /// The resource this consumer writes, for the per-lock-key limit when none is declared.
    fn default_lock_key(&self) -> String;

    /// Checks, changing nothing, that the consumer can be reached; says what was found.
    async fn probe(&self) -> Result<String>;

    /// Whether `verify` reads the copy back (or runs a check that uses it), so a probe can
    /// tell drift; a webhook without `verify.probe` cannot.
    fn checkable(&self) -> bool {
        true
    }
}

/// Builds the consumer a token declares, on its own.
pub fn build(
    spec: &ConsumerSpec,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<Box<dyn Consumer>> {
    build_among(spec, &[], env)
}

/// Builds the consumer `spec` of a token whose consumers are `all`: consumers that write one
/// resource in one request (Heroku config vars of one app) learn their siblings' keys, so each
/// step makes one write there.
pub fn build_among(
    spec: &ConsumerSpec,
    all: &[ConsumerSpec],
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<Box<dyn Consumer>> {
    use velvet_core::config::ConsumerKind as K;
    let need = |name: &str| {
        env(name).filter(|v| !v.is_empty()).ok_or_else(|| {
            AdapterError::permanent(format!("environment variable `{name}` is not set"))
        })
    };
    let mut probe_timeout = PROBE_TIMEOUT;
    let built: Box<dyn Consumer> = match &spec.kind {
        K::File {
            path,
            format,
            key,
            previous_key,
            template,
            mode,
            follow_symlinks,
        } => Box::new(File::new(
            path.clone(),
            *format,
            key.clone(),
            previous_key.clone(),
            Renderer::new(template.as_deref())?,
            *mode,
            *follow_symlinks,
        )),
        K::Exec {
            command,
            verify_command,
            timeout,
            env,
        } => Box::new(Exec::new(
            command.clone(),
            verify_command.clone(),
            *timeout,
            env,
        )?),
        K::Webhook {
            url,
            signing_secret_env,
            timeout,
        } => {
            probe_timeout = *timeout;
            Box::new(Webhook::new(
                url.clone(),
                SecretString::new(need(signing_secret_env)?),
                *timeout,
            ))
        }
        K::VaultKv {
            address,
            token_env,
            mount,
            path,
            field,
            previous_field,
        } => Box::new(VaultKv::new(
            address,
            SecretString::new(need(token_env)?),
            mount,
            path,
            field,
            previous_field.clone(),
        )),
        K::HerokuConfigVar {
            app,
            key,
            previous_key,
            api_key_env,
            api_url,
            template,
        } => Box::new(
            HerokuConfigVar::new(
                api_url,
                app,
                key,
                previous_key.clone(),
                SecretString::new(need(api_key_env)?),
                api_key_env,
                Renderer::new(template.as_deref())?,
            )
            .with_siblings(heroku::siblings(spec, all)),
        ),
        K::CloudflareWorkerSecret {
            account_id,
            script,
            secret_name,
            api_token_env,
            api_url,
            template,
        } => Box::new(CloudflareWorkerSecret::new(
            api_url,
            cloudflare::Target {
                account_id,
                script,
                secret_name,
            },
            SecretString::new(need(api_token_env)?),
            api_token_env,
            Renderer::new(template.as_deref())?,
        )),
        K::GithubActionsSecret {
            scope,
            secret_name,
            token_env,
            api_url,
            template,
        } => Box::new(GithubActionsSecret::new(
            api_url,
            scope.clone(),
            secret_name,
            SecretString::new(need(token_env)?),
            token_env,
            Renderer::new(template.as_deref())?,
        )),
        K::K8sSecret {
            namespace,
            secret,
            key,
            token_env,
            ca_file,
            restart,
            rollout_timeout,
            api_url,
            template,
        } => {
            let (token, from, ca) =
                k8s::credentials(token_env.as_deref(), ca_file.as_deref(), &need)?;
            Box::new(K8sSecret::new(
                api_url,
                K8sTarget {
                    namespace: namespace.clone(),
                    secret: secret.clone(),
                    key: key.clone(),
                    restart: restart.clone(),
                    rollout_timeout: *rollout_timeout,
                },
                token,
                &from,
                ca.as_deref(),
                Renderer::new(template.as_deref())?,
            )?)
        }
        K::AwsSecretsManager {
            region,
            secret_id,
            field,
            access_key_id_env,
            secret_access_key_env,
            session_token_env,
            api_url,
            template,
        } => Box::new(AwsSecretsManager::new(
            api_url,
            AwsTarget {
                region: region.clone(),
                secret_id: secret_id.clone(),
                field: field.clone(),
            },
            AwsKeys {
                access_key_id: SecretString::new(need(access_key_id_env)?),
                secret_access_key: SecretString::new(need(secret_access_key_env)?),
                session_token: session_token_env
                    .as_deref()
                    .map(|e| need(e).map(SecretString::new))
                    .transpose()?,
                envs: format!("`{access_key_id_env}` + `{secret_access_key_env}`"),
            },
            Renderer::new(template.as_deref())?,
        )),
        K::InfisicalSecret {
            project_id,
            environment,
            secret_path,
            key,
            auth,
            api_url,
            template,
        } => {
            use velvet_core::config::InfisicalAuth as A;
            let credential = match auth {
                A::Token { token_env } => InfisicalCredential::Token {
                    token: SecretString::new(need(token_env)?),
                    env: token_env.clone(),
                },
                A::UniversalAuth {
                    client_id_env,
                    client_secret_env,
                } => InfisicalCredential::UniversalAuth {
                    client_id: SecretString::new(need(client_id_env)?),
                    client_secret: SecretString::new(need(client_secret_env)?),
                    envs: (client_id_env.clone(), client_secret_env.clone()),
                },
            };
            Box::new(InfisicalSecret::new(
                api_url,
                InfisicalTarget {
                    project_id: project_id.clone(),
                    environment: environment.clone(),
                    secret_path: secret_path.clone(),
                    key: key.clone(),
                },
                credential,
                Renderer::new(template.as_deref())?,
            ))
        }
    };
    Ok(match &spec.verify_probe {
        Some(p) => Box::new(Probed::new(built, p, probe_timeout)?),
        None => built,
    })
}

/// The text of a value for consumers without a template: the single `value` field, else the
/// canonical JSON of all fields.
pub fn value_text(v: &SecretValue) -> Zeroizing<String> {
    match v.get(velvet_core::secret::VALUE_FIELD) {
        Some(s) => Zeroizing::new(s.expose().to_string()),
        None => Zeroizing::new(String::from_utf8_lossy(&v.to_bytes()).into_owned()),
    }
}

/// Turns a value into the text a consumer stores: the template if declared, else the single
/// `value` field.
#[derive(Debug, Clone)]
pub struct Renderer {
    template: Option<Template>,
}

impl Renderer {
    pub fn new(template: Option<&str>) -> Result<Self> {
        let template = template
            .map(Template::parse)
            .transpose()
            .map_err(|e| AdapterError::permanent(format!("template: {e}")))?;
        Ok(Self { template })
    }

    pub fn render(&self, v: &SecretValue) -> Result<Zeroizing<String>> {
        match &self.template {
            Some(t) => t.render(v).map_err(AdapterError::permanent),
            None => v
                .get(velvet_core::secret::VALUE_FIELD)
                .map(|s| Zeroizing::new(s.expose().to_string()))
                .ok_or_else(|| {
                    AdapterError::permanent("the value has several fields; declare a template")
                }),
        }
    }
}
