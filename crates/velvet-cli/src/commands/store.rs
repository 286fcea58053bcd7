//! Commands that work directly on the store, without a server: `migrate`, `audit verify`,
//! `tokens import`, `keys status|rotate`.

use super::Context;
use crate::exit::{Code, Failure};
use crate::output::{emit, table};
use chrono::Utc;
use serde_json::json;
use std::collections::BTreeMap;
use std::io::{IsTerminal, Read};
use std::sync::Arc;
use velvet_core::audit::AuditDraft;
use velvet_core::config::{Config, SourceSpec};
use velvet_core::keyring::{Keyring, KeyringOrigin, version_aad};
use velvet_core::secret::{SecretString, SecretValue};
use velvet_store::{MigrationSet, Store};
use zeroize::Zeroizing;

/// The actor recorded for commands run on this machine.
pub(crate) fn local_actor() -> String {
    let user = std::env::var("USER").unwrap_or_else(|_| "unknown".into());
    format!("cli:{user}")
}

pub(crate) async fn open(
    config: &Config,
    keyring: Option<Arc<Keyring>>,
) -> Result<Arc<dyn Store>, Failure> {
    Ok(velvet_store::open(&config.store, keyring, &super::store_options()?).await?)
}

/// Opens a store for a command that writes, applying pending migrations first as `serve` does.
pub(crate) async fn open_migrated(
    config: &Config,
    keyring: Arc<Keyring>,
) -> Result<Arc<dyn Store>, Failure> {
    let store = open(config, Some(keyring)).await?;
    store
        .migrate(&MigrationSet::embedded(store.dialect()), false)
        .await?;
    Ok(store)
}

pub async fn migrate(ctx: &Context, list: bool, dry_run: bool) -> Result<(), Failure> {
    let config = ctx.load_config_for_store()?;
    let store = open(&config, None).await?;
    let set = MigrationSet::embedded(store.dialect());
    let (states, verb) = if list {
        (store.migrations(&set).await?, "")
    } else {
        (
            store.migrate(&set, dry_run).await?,
            if dry_run { "would apply" } else { "applied" },
        )
    };
    emit(
        ctx.output,
        &json!({"store": config.store.to_string(), "migrations": states}),
        |_| {
            if list {
                let rows: Vec<Vec<String>> = states
                    .iter()
                    .map(|s| {
                        vec![
                            format!("{:03}", s.version),
                            s.name.clone(),
                            s.status.to_string(),
                            s.applied_at.map(|t| t.to_rfc3339()).unwrap_or_default(),
                        ]
                    })
                    .collect();
                table(&["version", "name", "status", "applied at"], &rows);
            } else if states.is_empty() {
                println!("{}: up to date, nothing to apply", config.store);
            } else {
                for s in &states {
                    println!("{verb} {:03}_{}", s.version, s.name);
                }
            }
        },
    );
    Ok(())
}

pub async fn audit_verify(
    ctx: &Context,
    export_head: bool,
    expect_head: Option<&str>,
) -> Result<(), Failure> {
    // `SEQ:HASH`, as `--export-head` prints it: a usage error before anything is opened.
    if let Some(h) = expect_head {
        velvet_core::audit::parse_head(h)
            .map_err(|e| Failure::usage(format!("--expect-head: {e}")))?;
    }
    let config = ctx.load_config_for_store()?;
    let keyring = Arc::new(velvet_server::open_keyring(&config)?);
    let store = open(&config, Some(keyring.clone())).await?;
    let report = store.verify_audit(&keyring, expect_head).await?;
    if export_head && report.ok {
        match (&report.head, ctx.output) {
            (Some(h), crate::Output::Text) => println!("{h}"),
            _ => emit(ctx.output, &json!({"head": report.head}), |_| {}),
        }
        return Ok(());
    }
    emit(ctx.output, &report, |r| {
        println!("entries:       {}", r.entries);
        let head = match (&r.head, r.ok, r.entries) {
            (Some(h), _, _) => h.as_str(),
            (None, true, 0) => "(empty chain)",
            // A broken chain has no head to trust.
            (None, _, _) => "(none: the chain is broken)",
        };
        println!("head:          {head}");
        match r.first_bad_seq {
            None => println!("first bad seq: none — the chain is intact"),
            Some(seq) => println!(
                "first bad seq: {seq} — {}",
                r.problem.as_deref().unwrap_or("")
            ),
        }
    });
    if report.ok {
        Ok(())
    } else {
        Err(Failure::failed(format!(
            "the audit chain is broken at seq {}",
            report.first_bad_seq.unwrap_or_default()
        )))
    }
}

/// Reads the value to import: from a terminal without echo, else all of stdin.
fn read_secret_input() -> Result<Zeroizing<String>, Failure> {
    if std::io::stdin().is_terminal() {
        let v = rpassword::prompt_password("Value (input hidden): ")?;
        return Ok(Zeroizing::new(v));
    }
    let mut buf = Zeroizing::new(String::new());
    std::io::stdin().read_to_string(&mut buf)?;
    let trimmed = buf
        .strip_suffix('\n')
        .map(|s| s.strip_suffix('\r').unwrap_or(s))
        .unwrap_or(&buf);
    Ok(Zeroizing::new(trimmed.to_string()))
}

/// Random sources take the raw value; database sources a JSON object of their fields.
fn parse_value(source: &SourceSpec, input: &str) -> Result<SecretValue, Failure> {
    let fields = source.fields();
    if fields == ["value"] {
        if input.is_empty() {
            return Err(Failure::usage("the value on stdin is empty"));
        }
        return Ok(SecretValue::single(input.to_string()));
    }
    let map: BTreeMap<String, String> = serde_json::from_str(input).map_err(|_| {
        Failure::usage(format!(
            "a {} token's value is a JSON object with the fields {}, e.g. {{\"username\": \"app\", \"password\": \"…\"}}",
            source.kind(),
            fields.join(", ")
        ))
    })?;
    let mut names: Vec<&str> = map.keys().map(String::as_str).collect();
    names.sort_unstable();
    let mut want = fields.to_vec();
    want.sort_unstable();
    if names != want {
        return Err(Failure::usage(format!(
            "expected exactly the fields {}, got {}",
            fields.join(", "),
            names.join(", ")
        )));
    }
    Ok(SecretValue::from_fields(
        map.into_iter()
            .map(|(k, v)| (k, SecretString::new(v)))
            .collect(),
    ))
}

pub async fn import(ctx: &Context, name: &str) -> Result<(), Failure> {
    let config = ctx.load_config_for_store()?;
    let spec = config.token(name).ok_or_else(|| {
        Failure::new(
            Code::NotFound,
            format!(
                "token `{name}` is not declared in {}",
                config.file.display()
            ),
        )
    })?;
    let value = parse_value(&spec.source, &read_secret_input()?)?;
    let keyring = Arc::new(velvet_server::open_keyring(&config)?);
    let store = open_migrated(&config, keyring.clone()).await?;
    velvet_store::check_keyring(&*store, &keyring).await?;
    store.reconcile(&config.tokens, Utc::now()).await?;
    let now = Utc::now();
    let sealed = keyring.seal(&value, &version_aad(name, 1), now)?;
    let fingerprint = keyring.fingerprint(&value, now)?;
    let v = store
        .import_version(name, &sealed, &fingerprint, &local_actor())
        .await?;
    emit(
        ctx.output,
        &json!({"token": name, "version": v.version, "label": v.label, "fingerprint": v.fingerprint}),
        |_| {
            println!(
                "imported `{name}` as version {} (current), fingerprint {}",
                v.version, v.fingerprint
            );
        },
    );
    Ok(())
}

pub async fn keys_status(ctx: &Context) -> Result<(), Failure> {
    let config = ctx.load_config_for_store()?;
    let keyring = Arc::new(velvet_server::open_keyring(&config)?);
    let store = open(&config, Some(keyring.clone())).await?;
    let counts: BTreeMap<String, i64> = store.sealed_counts().await?.into_iter().collect();
    let current = keyring.current(Utc::now())?.id.clone();
    let origin = match keyring.origin() {
        KeyringOrigin::File(p) => p.display().to_string(),
        KeyringOrigin::MasterKeyEnv => "VELVET_MASTER_KEY".into(),
    };
    let keys: Vec<_> = keyring
        .keys()
        .iter()
        .map(|k| {
            json!({
                "id": k.id,
                "current": k.id == current,
                "not_before": k.not_before,
                "not_after": k.not_after,
                "sealed_values": counts.get(&k.id).copied().unwrap_or(0),
            })
        })
        .collect();
    let stale: i64 = counts
        .iter()
        .filter(|(id, _)| **id != current)
        .map(|(_, n)| n)
        .sum();
    emit(
        ctx.output,
        &json!({"keyring": origin, "current": current, "keys": keys, "values_under_older_keys": stale}),
        |_| {
            println!("keyring: {origin}");
            let rows: Vec<Vec<String>> = keyring
                .keys()
                .iter()
                .map(|k| {
                    vec![
                        k.id.clone(),
                        if k.id == current {
                            "yes".into()
                        } else {
                            String::new()
                        },
                        k.not_before.to_rfc3339(),
                        k.not_after
                            .map(|t| t.to_rfc3339())
                            .unwrap_or_else(|| "-".into()),
                        counts.get(&k.id).copied().unwrap_or(0).to_string(),
                    ]
                })
                .collect();
            table(
                &["id", "current", "not before", "not after", "sealed values"],
                &rows,
            );
            if stale > 0 {
                println!(
                    "{stale} value(s) are sealed under older keys: `velvet keys rotate` finishes moving them"
                );
            }
        },
    );
    Ok(())
}

pub async fn keys_rotate(ctx: &Context, batch: i64) -> Result<(), Failure> {
    let config = ctx.load_config_for_store()?;
    let mut keyring = velvet_server::open_keyring(&config)?;
    if *keyring.origin() == KeyringOrigin::MasterKeyEnv {
        return Err(Failure::usage(
            "the keyring comes from VELVET_MASTER_KEY and cannot be rotated in place; move to a keyring file (velvet init writes one)",
        ));
    }
    let store = open_migrated(&config, Arc::new(velvet_server::open_keyring(&config)?)).await?;
    velvet_store::check_keyring(&*store, &keyring).await?;
    let current = keyring.current(Utc::now())?.id.clone();
    let leftover = store.sealed_not_under(&current, 1).await?;
    let resumed = !leftover.is_empty() && keyring.keys().len() > 1;
    if resumed {
        eprintln!(
            "resuming: values remain under older keys; moving them to the current key {current}"
        );
    } else {
        let id = keyring.add_key(Utc::now())?.id.clone();
        // The new key is on disk before anything is sealed under it.
        keyring.save()?;
        eprintln!("added key {id}");
    }
    let keyring = Arc::new(keyring);
    let store = open_migrated(&config, keyring.clone()).await?;
    let total_before: i64 = store.sealed_counts().await?.iter().map(|(_, n)| n).sum();
    let interactive = std::io::stderr().is_terminal();
    let moved = velvet_store::reseal_all(&*store, &keyring, batch, |n| {
        if interactive {
            eprint!("\rre-sealed {n}/{total_before}");
        } else {
            eprintln!("re-sealed {n}/{total_before}");
        }
    })
    .await?;
    if interactive && moved > 0 {
        eprintln!();
    }
    let key_id = keyring.current(Utc::now())?.id.clone();
    store
        .append_audit(&AuditDraft::keys_rotated(&local_actor(), &key_id, moved))
        .await?;
    emit(
        ctx.output,
        &json!({"current": key_id, "resealed": moved, "resumed": resumed}),
        |_| {
            println!(
                "current key {key_id}; re-sealed {moved} value(s); older keys are kept to read older audit records"
            );
        },
    );
    Ok(())
}
