//! The runbook of design §1 against the fakes: Infisical with the project's `prod` and `staging`
//! environments, Heroku with `console-prod` and `console-staging`, Cloudflare with the
//! `console-edge` Worker, and the console itself (an app on `console-prod` that accepts only the
//! token that app holds). [`Runbook::config`] points `examples/console-cross-env-read-token.yaml`
//! at them; the suite and `velvet demo` both run it.

use crate::app::AppEndpoint;
use crate::cloudflare::Cloudflare;
use crate::heroku::Heroku;
use crate::infisical::Infisical;

/// The example, as shipped.
pub const EXAMPLE: &str = include_str!("../../../examples/console-cross-env-read-token.yaml");
pub const TOKEN: &str = "console-cross-env-read-token";
pub const KEY: &str = "CONSOLE_READ_TOKEN";
pub const PROJECT: &str = "0f6a0c4e-7d1b-4c55-9f1e-2f9b6a1d3c42";
pub const ACCOUNT: &str = "023e105f4ecef8ad9ca31a8372d0c353";
pub const SCRIPT: &str = "console-edge";
pub const APPS: [&str; 2] = ["console-prod", "console-staging"];
pub const ENVIRONMENTS: [&str; 2] = ["prod", "staging"];
const PROBE_URL: &str = "https://console.example.com/api/me";

/// The fakes' credentials: local and throwaway, never a real provider's.
const HEROKU_KEY: &str = "fake-heroku-api-key-for-the-runbook";
const CF_TOKEN: &str = "fake-cloudflare-token-for-the-runbook";
const INF_ID: &str = "fake-infisical-client-id";
const INF_SECRET: &str = "fake-infisical-client-secret-for-the-runbook";

/// The five places and the console, running.
#[derive(Debug, Clone)]
pub struct Runbook {
    pub heroku: Heroku,
    pub cloudflare: Cloudflare,
    pub infisical: Infisical,
    pub console: AppEndpoint,
}

impl Runbook {
    /// Starts every fake on loopback with the targets the example names, each holding `current`.
    pub async fn start(current: &str) -> Self {
        let heroku = Heroku::start(HEROKU_KEY).await;
        for app in APPS {
            heroku.add_app(app, &[(KEY, current), ("DATABASE_URL", "postgres://kept")]);
        }
        let cloudflare = Cloudflare::start(CF_TOKEN).await;
        cloudflare.add_script(ACCOUNT, SCRIPT, &[(KEY, current), ("OTHER_SECRET", "kept")]);
        let infisical = Infisical::start("unused-static-token").await;
        infisical.add_client(INF_ID, INF_SECRET);
        infisical.add_project(PROJECT, &ENVIRONMENTS);
        for env in ENVIRONMENTS {
            infisical.put(PROJECT, env, "/console", KEY, current);
            infisical.put(PROJECT, env, "/console", "OTHER", "kept");
        }
        let console = AppEndpoint::start(&heroku, APPS[0], KEY).await;
        Self {
            heroku,
            cloudflare,
            infisical,
            console,
        }
    }

    /// The variables the example's `*_env` keys name.
    pub fn env(&self) -> Vec<(&'static str, &'static str)> {
        vec![
            ("HEROKU_API_KEY", HEROKU_KEY),
            ("CLOUDFLARE_API_TOKEN", CF_TOKEN),
            ("INFISICAL_CLIENT_ID", INF_ID),
            ("INFISICAL_CLIENT_SECRET", INF_SECRET),
        ]
    }

    /// `example` (the shipped one, or a variant) with every provider consumer's `api_url` and
    /// the probe's URL pointing at these fakes.
    pub fn config(&self, example: &str) -> String {
        let mut out = String::new();
        for line in example.lines() {
            let line = line.replace(PROBE_URL, &self.console.url());
            out.push_str(&line);
            out.push('\n');
            let t = line.trim_start();
            let url = match t.strip_prefix("kind: ") {
                Some("heroku_config_var") => self.heroku.url(),
                Some("cloudflare_worker_secret") => self.cloudflare.url(),
                Some("infisical_secret") => self.infisical.url(),
                _ => continue,
            };
            let indent = &line[..line.len() - t.len()];
            out.push_str(&format!("{indent}api_url: '{url}'\n"));
        }
        out
    }

    /// Every copy of the token, by place: the five the example writes.
    pub fn copies(&self) -> Vec<(String, Option<String>)> {
        let mut out = vec![];
        for env in ENVIRONMENTS {
            let v = self
                .infisical
                .get(PROJECT, env, "/console", KEY)
                .map(|x| x.0);
            out.push((format!("infisical {env}/console"), v));
        }
        for app in APPS {
            out.push((
                format!("heroku {app}"),
                self.heroku.vars(app).get(KEY).cloned(),
            ));
        }
        let v = self.cloudflare.secret(ACCOUNT, SCRIPT, KEY);
        out.push((format!("cloudflare {SCRIPT}"), v));
        out
    }
}
