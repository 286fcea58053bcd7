//! The engine's test harness: a migrated store, a configuration, a running engine.

use chrono::Utc;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};
use velvet_core::config::{Config, FlowType, LoadOptions};
use velvet_core::job::RotationJob;
use velvet_core::keyring::version_aad;
use velvet_core::rotation::{JobStatus, Stage};
use velvet_core::secret::SecretValue;
use velvet_engine::{Engine, EngineOptions, Person};

use velvet_store::{Dialect, NewJob};
use velvet_testkit::Fixture;

/// An operator with every permission, as the API would pass one on.
pub const OPERATOR: Person<'static> = Person {
    actor: "operator",
    role: velvet_core::identity::Role::Admin,
    operator: None,
    client: "127.0.0.1",
    steps: &[],
};

pub struct Harness {
    pub f: Fixture,
    pub engine: Arc<Engine>,
    pub config: velvet_core::config::LiveConfig,
    _stop: tokio::sync::watch::Sender<bool>,
}

pub fn config(dir: &Path, extra_consumer: &str, flow: &str) -> Config {
    let yaml = format!(
        "
defaults: {{retry: {{attempts: 2, initial_backoff: 10ms, max_backoff: 20ms}}, grace_period: 0s}}
tokens:
  - name: api
    flow: {flow}
    source: {{kind: random, bytes: 16}}
    consumers:
      - {{name: env, kind: file, path: {dir}/app.env, format: dotenv, key: API_TOKEN, previous_key: API_TOKEN_PREVIOUS}}
      - {{name: hook, kind: exec, command: [sh, -c, 'cat > {dir}/hook.out; echo \"$VELVET_ACTION $VELVET_FINGERPRINT\" > {dir}/hook.meta']}}
{extra_consumer}",
        dir = dir.display()
    );
    parse(dir, &yaml)
}

/// A configuration as `velvet.yaml` in `dir` would give, with no environment.
pub fn parse(dir: &Path, yaml: &str) -> Config {
    let env = |_: &str| None;
    Config::parse(
        yaml,
        &dir.join("velvet.yaml"),
        LoadOptions {
            env: &env,
            check_env: false,
        },
    )
    .unwrap_or_else(|e| panic!("{e}"))
}

pub async fn harness(extra_consumer: &str, flow: &str) -> Harness {
    harness_on(Dialect::Sqlite, extra_consumer, flow).await
}

pub async fn harness_on(dialect: Dialect, extra_consumer: &str, flow: &str) -> Harness {
    harness_polling(dialect, extra_consumer, flow, Duration::from_millis(20)).await
}

/// A harness whose engine looks for work unasked every `poll`.
pub async fn harness_polling(
    dialect: Dialect,
    extra_consumer: &str,
    flow: &str,
    poll: Duration,
) -> Harness {
    let f = Fixture::new(dialect).await;
    let config = config(f.dir.path(), extra_consumer, flow);
    f.store.reconcile(&config.tokens, Utc::now()).await.unwrap();
    let v1 = SecretValue::single("version-one".into());
    let sealed = f
        .keyring
        .seal(&v1, &version_aad("api", 1), Utc::now())
        .unwrap();
    f.store
        .import_version("api", &sealed, "fp1", "test")
        .await
        .unwrap();
    std::fs::write(
        f.dir.path().join("app.env"),
        "OTHER=kept\nAPI_TOKEN=version-one\n",
    )
    .unwrap();
    let mut opts = EngineOptions::for_this_process();
    opts.poll_interval = poll;
    let config = velvet_core::config::live(config);
    let engine = Engine::new(f.store.clone(), f.keyring.clone(), config.clone(), opts);
    let (stop, rx) = tokio::sync::watch::channel(false);
    engine.start(rx);
    Harness {
        f,
        engine,
        config,
        _stop: stop,
    }
}

impl Harness {
    pub fn engine_config(&self) -> Arc<Config> {
        self.config.load_full()
    }

    pub async fn kickoff(&self, flow: FlowType) -> RotationJob {
        self.engine
            .kickoff(&NewJob {
                token: "api",
                flow,
                requested_by: "test",
                requested_role: Some(velvet_core::identity::Role::Admin),
                reason: None,
                idempotency: None,
                schedule_slot: None,
                given: None,
            })
            .await
            .unwrap()
    }

    /// An operator's stage action on `job_id`.
    pub async fn act(
        &self,
        job_id: &str,
        action: velvet_core::rotation::Action,
    ) -> Result<RotationJob, velvet_engine::ServiceError> {
        self.engine
            .stage(&OPERATOR, job_id, velvet_engine::StageRequest::new(action))
            .await
    }

    pub async fn until(
        &self,
        job_id: &str,
        what: &str,
        done: impl Fn(&RotationJob) -> bool,
    ) -> RotationJob {
        let start = Instant::now();
        loop {
            let job = self.f.store.get_job(job_id).await.unwrap().unwrap();
            if done(&job) {
                return job;
            }
            assert!(
                start.elapsed() < Duration::from_secs(20),
                "waited for {what}; job is {:?}/{:?}: {:?}",
                job.state.stage,
                job.state.status,
                job.error
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    pub fn env_file(&self) -> String {
        std::fs::read_to_string(self.f.dir.path().join("app.env")).unwrap()
    }

    pub async fn labels(&self) -> Vec<(i64, &'static str)> {
        self.f
            .store
            .list_versions("api")
            .await
            .unwrap()
            .iter()
            .map(|v| (v.version, v.label.as_str()))
            .collect()
    }

    pub async fn value(&self, version: i64) -> String {
        let sealed = self.f.store.sealed_version("api", version).await.unwrap();
        self.f
            .keyring
            .open(&sealed, &version_aad("api", version))
            .unwrap()
            .get("value")
            .unwrap()
            .expose()
            .to_string()
    }
}

pub fn is(stage: Stage, status: JobStatus) -> impl Fn(&RotationJob) -> bool {
    move |j| j.state.stage == stage && j.state.status == status
}
