//! `velvet demo`: the showcase, with nothing else to install. A throwaway directory holds a
//! config with three tokens (one behind a TOTP revocation gate, one the runbook of design §1),
//! the embedded SQLite store and a keyring; a built-in webhook receiver and the Infisical, Heroku
//! and Cloudflare fakes on loopback answer after an adjustable delay (`VELVET_DEMO_LATENCY`,
//! default 300ms) so the console's live table visibly fills; a demo operator is enrolled and its
//! password and TOTP secret printed. Ctrl-C stops it and removes the directory.

use super::Context;
use crate::exit::Failure;
use chrono::Utc;
use std::time::Duration;
use velvet_core::config::{Config, LoadOptions};
use velvet_core::identity::Role;
use velvet_core::keyring::version_aad;
use velvet_core::secret::SecretValue;
use velvet_fakes::runbook::Runbook;
use velvet_server::ServeOptions;

const SERVICES: &[&str] = &[
    "billing", "search", "mailer", "reports", "ledger", "gateway",
];

fn config(hook: &str, runbook: &str) -> String {
    let hooks = |names: &[&str]| -> String {
        names
            .iter()
            .map(|n| {
                format!(
                    "      - {{name: {n}, kind: webhook, url: '{hook}/{n}', signing_secret_env: DEMO_HOOK_SECRET}}\n"
                )
            })
            .collect()
    };
    format!(
        "# velvet demo: written by `velvet demo` into a throwaway directory.
server: {{listen: 127.0.0.1:8700}}
store: {{url: sqlite://velvet.db}}
keyring: velvet-keys.json
defaults: {{flow: staged, grace_period: 30s, retry: {{attempts: 3, initial_backoff: 1s, max_backoff: 5s}}}}
tokens:
  - name: example-api-token
    description: Service token shared by the web app and six internal services
    tags: [demo]
    source: {{kind: random, bytes: 32, encoding: hex}}
    consumers:
      - {{name: app-env, kind: file, path: app.env, format: dotenv, key: API_TOKEN, previous_key: API_TOKEN_PREVIOUS}}
{}  - name: payments-api-key
    description: Production payments key, behind the revocation gate
    tags: [prod]
    source: {{kind: random, bytes: 32, encoding: base64url}}
    consumers:
      - {{name: payments-env, kind: file, path: payments.env, format: dotenv, key: PAYMENTS_KEY}}
{}{runbook}revocation_gates:
  - name: production
    match: {{tags: [prod]}}
    require: {{totp: true, roles: [revoker, admin]}}
",
        hooks(SERVICES),
        hooks(&SERVICES[..3])
    )
}

/// A loopback webhook receiver that answers 200 after `delay`; its base URL.
async fn receiver(delay: Duration) -> Result<String, Failure> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let app = axum::Router::new().route(
        "/hook/{service}",
        axum::routing::post(move || async move {
            tokio::time::sleep(delay).await;
            axum::http::StatusCode::OK
        }),
    );
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    Ok(format!("http://{addr}/hook"))
}

/// The runbook's token from `examples/`, its consumers pointed at the fakes: the entries under
/// the example's `tokens:`.
fn runbook_tokens(rb: &Runbook) -> String {
    let example = rb.config(velvet_fakes::runbook::EXAMPLE);
    match example.split_once("\ntokens:\n") {
        Some((_, tokens)) => tokens.to_string(),
        None => String::new(),
    }
}

fn random_hex(n: usize) -> Result<String, Failure> {
    let mut raw = vec![0u8; n];
    getrandom::fill(&mut raw).map_err(|e| Failure::failed(format!("no OS randomness: {e}")))?;
    Ok(hex::encode(raw))
}

pub async fn run(_ctx: &Context) -> Result<(), Failure> {
    let delay = match std::env::var("VELVET_DEMO_LATENCY") {
        Ok(v) => velvet_core::duration::parse(&v)
            .map_err(|e| Failure::usage(format!("VELVET_DEMO_LATENCY: {e}")))?,
        Err(_) => Duration::from_millis(300),
    };
    let dir = tempfile::Builder::new().prefix("velvet-demo-").tempdir()?;
    super::init::write_starter(dir.path(), false)?;
    let hook = receiver(delay).await?;
    let runbook_value = random_hex(32)?;
    let rb = Runbook::start(&runbook_value).await;
    rb.heroku.set_delay(delay);
    rb.cloudflare.set_delay(delay);
    rb.infisical.set_delay(delay);
    std::fs::write(
        dir.path().join("velvet.yaml"),
        config(&hook, &runbook_tokens(&rb)),
    )?;
    let hook_secret = random_hex(24)?;
    let fakes = rb.env();
    // Self-contained: only the listen address may come from the environment.
    let env = move |name: &str| match name {
        "VELVET_LISTEN" => std::env::var(name).ok(),
        "DEMO_HOOK_SECRET" => Some(hook_secret.clone()),
        _ => fakes
            .iter()
            .find(|(k, _)| *k == name)
            .map(|(_, v)| v.to_string()),
    };
    let env: velvet_server::EnvLookup = std::sync::Arc::new(env);
    let config = Config::load(
        &dir.path().join("velvet.yaml"),
        LoadOptions {
            env: &*env,
            check_env: true,
        },
    )?;
    let prepared = velvet_server::prepare(
        config,
        &ServeOptions {
            no_migrate: false,
            store: super::store_options()?,
            env: Some(env.clone()),
        },
    )
    .await?;
    let state = &prepared.state;
    // A current value for each token, so a rotation has a previous one to retire; the
    // runbook's is the one its fakes hold.
    for (token, value) in [
        ("example-api-token", random_hex(32)?),
        ("payments-api-key", random_hex(32)?),
        (velvet_fakes::runbook::TOKEN, runbook_value),
    ] {
        let value = SecretValue::single(value);
        let sealed = state
            .keyring
            .seal(&value, &version_aad(token, 1), Utc::now())?;
        let fp = state.keyring.fingerprint(&value, Utc::now())?;
        state
            .store
            .import_version(token, &sealed, &fp, "demo")
            .await?;
    }
    let (password, secret) =
        super::operators::create(&*state.store, &state.keyring, "demo", Role::Revoker, "demo")
            .await?;
    // Service tokens for the CLI: one that reads, one of the demo operator's that rotates and
    // passes the gate with its TOTP code.
    let mut cli_tokens = vec![];
    for (name, role, operator) in [
        ("demo-viewer", Role::Viewer, None),
        ("demo-cli", Role::Revoker, Some("demo")),
    ] {
        let minted = velvet_core::identity::mint_service_token();
        state
            .store
            .create_service_token(&velvet_store::NewServiceToken {
                id: &velvet_core::identity::new_service_token_id(),
                name,
                role: role.as_str(),
                prefix: &minted.prefix,
                hash: &minted.hash,
                operator,
                created_by: "demo",
                expires_at: None,
            })
            .await?;
        cli_tokens.push((role, minted.token));
    }
    let dir_shown = dir.path().display().to_string();
    velvet_server::serve(prepared, |addr| {
        println!();
        println!("  Velvet demo is running at http://{addr}");
        println!("    console:   http://{addr}/console");
        println!("    operator:  demo");
        println!("    password:  {}", password.expose());
        println!(
            "    TOTP secret: {} (add it to an authenticator app, or:)",
            secret.expose()
        );
        println!("    current code: velvet totp --secret {}", secret.expose());
        println!("  Rotate example-api-token to watch six webhooks answer after {delay:?} each;");
        println!("  payments-api-key asks for a TOTP code before it revokes.");
        println!(
            "  {} is the runbook of examples/: two Infisical environments, two Heroku",
            velvet_fakes::runbook::TOKEN
        );
        println!("  apps and a Cloudflare Worker (local fakes), then the console probed: 200 for");
        println!("  the new token, 401 for a wrong one.");
        println!("    API:       curl http://{addr}/api/v1/openapi.json");
        println!("  The CLI, from another terminal (a read-only token, then one that rotates):");
        println!("    export VELVET_ADDR=http://{addr}");
        for (role, token) in &cli_tokens {
            println!(
                "    export VELVET_TOKEN={}   # {}",
                token.expose(),
                if *role == Role::Viewer {
                    "viewer: tokens list, rotations show"
                } else {
                    "operator demo's: velvet rotate example-api-token --follow"
                }
            );
        }
        println!("  Its files (config, keyring, SQLite store) are in {dir_shown}");
        println!("  Inspect them: velvet --config {dir_shown}/velvet.yaml audit verify");
        println!("  Press Ctrl-C to stop; the directory is removed on exit.");
        println!();
    })
    .await?;
    Ok(())
}
