//! `velvet operator add|list|reset-totp` (directly on the store, like `migrate`: the first
//! operator needs no server) and `velvet totp`, which prints the current code of a secret.

use super::Context;
use super::store::{local_actor, open, open_migrated};
use crate::exit::Failure;
use crate::output::{emit, table};
use chrono::Utc;
use serde_json::json;
use std::sync::Arc;
use velvet_core::identity::Role;
use velvet_core::keyring::Keyring;
use velvet_core::operator;
use velvet_core::secret::{SecretString, SecretValue};
use velvet_store::Store;

/// A new TOTP secret and backup codes, sealed and hashed for the store.
struct Enrolment {
    secret: SecretString,
    sealed: velvet_core::keyring::Sealed,
    codes: Vec<SecretString>,
    hashes: Vec<String>,
}

fn enrol(keyring: &Keyring, name: &str) -> Result<Enrolment, Failure> {
    let secret = operator::new_totp_secret();
    let sealed = keyring.seal(
        &SecretValue::single(secret.expose().to_string()),
        &operator::totp_aad(name),
        Utc::now(),
    )?;
    let codes = operator::new_backup_codes();
    let hashes = codes
        .iter()
        .map(|c| operator::hash_backup_code(c.expose()))
        .collect();
    Ok(Enrolment {
        secret,
        sealed,
        codes,
        hashes,
    })
}

/// The QR code of `uri` in block characters, light on dark as scanners expect from a terminal.
fn qr(uri: &str) -> String {
    use qrcode::render::unicode::Dense1x2;
    qrcode::QrCode::new(uri)
        .map(|q| {
            q.render::<Dense1x2>()
                .dark_color(Dense1x2::Light)
                .light_color(Dense1x2::Dark)
                .quiet_zone(true)
                .build()
        })
        .unwrap_or_default()
}

/// Prints what is shown once: password (on add), enrolment and backup codes.
fn show_once(
    ctx: &Context,
    name: &str,
    role: &str,
    password: Option<&SecretString>,
    e: &Enrolment,
) {
    let uri = operator::otpauth_uri(e.secret.expose(), name);
    let codes: Vec<&str> = e.codes.iter().map(|c| c.expose()).collect();
    emit(
        ctx.output,
        &json!({
            "name": name,
            "role": role,
            "password": password.map(|p| p.expose()),
            "totp_secret": e.secret.expose(),
            "otpauth_uri": uri,
            "backup_codes": codes,
        }),
        |_| {
            if let Some(p) = password {
                println!("operator {name} ({role})\n\npassword: {}\n", p.expose());
            }
            println!("TOTP: scan this with an authenticator app, or type the secret in:\n");
            println!("{}", qr(&uri));
            println!("{uri}\nsecret: {}\n", e.secret.expose());
            println!("backup codes, each works once:");
            for c in &codes {
                println!("  {c}");
            }
            println!(
                "\nThis is shown once: Velvet keeps only the password's argon2id hash, the sealed \
                 secret and the codes' hashes."
            );
        },
    );
}

async fn store_with_keyring(ctx: &Context) -> Result<(Arc<dyn Store>, Arc<Keyring>), Failure> {
    let config = ctx.load_config_for_store()?;
    let keyring = Arc::new(velvet_server::open_keyring(&config)?);
    let store = open_migrated(&config, keyring.clone()).await?;
    Ok((store, keyring))
}

/// Adds an operator to `store`; the password and enrolment, to show once.
pub(crate) async fn create(
    store: &dyn Store,
    keyring: &Keyring,
    name: &str,
    role: Role,
    actor: &str,
) -> Result<(SecretString, SecretString), Failure> {
    let password = operator::new_password();
    let e = enrol(keyring, name)?;
    store
        .create_operator(&velvet_store::NewOperator {
            name,
            role: role.as_str(),
            password_hash: &operator::hash_password(password.expose()),
            totp: &e.sealed,
            backup_code_hashes: &e.hashes,
            created_by: actor,
        })
        .await?;
    Ok((password, e.secret))
}

pub async fn add(ctx: &Context, name: &str, role: &str) -> Result<(), Failure> {
    if !operator::valid_name(name) {
        return Err(Failure::usage(format!(
            "NAME: `{name}` is not a valid operator name; use 1 to 64 of a-z, 0-9, `.`, `_`, `-`, starting with a letter"
        )));
    }
    let role = Role::parse(role).ok_or_else(|| {
        let roles: Vec<&str> = Role::ALL.iter().map(|r| r.as_str()).collect();
        Failure::usage(format!(
            "--role: `{role}` is not one of {}",
            roles.join(", ")
        ))
    })?;
    let (store, keyring) = store_with_keyring(ctx).await?;
    let password = operator::new_password();
    let e = enrol(&keyring, name)?;
    store
        .create_operator(&velvet_store::NewOperator {
            name,
            role: role.as_str(),
            password_hash: &operator::hash_password(password.expose()),
            totp: &e.sealed,
            backup_code_hashes: &e.hashes,
            created_by: &local_actor(),
        })
        .await?;
    show_once(ctx, name, role.as_str(), Some(&password), &e);
    Ok(())
}

pub async fn reset_totp(ctx: &Context, name: &str) -> Result<(), Failure> {
    let (store, keyring) = store_with_keyring(ctx).await?;
    let op = store.operator(name).await?.ok_or_else(|| {
        Failure::new(
            crate::exit::Code::NotFound,
            format!("operator `{name}` not found"),
        )
    })?;
    let e = enrol(&keyring, name)?;
    store
        .reset_totp(name, &e.sealed, &e.hashes, &local_actor())
        .await?;
    // Whoever held the old secret may hold a session too.
    store.end_sessions_of(name, &local_actor()).await?;
    show_once(ctx, name, &op.role, None, &e);
    Ok(())
}

pub async fn list(ctx: &Context) -> Result<(), Failure> {
    let config = ctx.load_config_for_store()?;
    let store = open(&config, None).await?;
    let ops = store.list_operators().await?;
    let view: Vec<_> = ops
        .iter()
        .map(|o| {
            json!({
                "name": o.name,
                "role": o.role,
                "created_at": o.created_at,
                "created_by": o.created_by,
                "backup_codes_left": o.backup_codes_left,
                "disabled_at": o.disabled_at,
            })
        })
        .collect();
    emit(ctx.output, &json!({"operators": view}), |_| {
        let rows: Vec<Vec<String>> = ops
            .iter()
            .map(|o| {
                vec![
                    o.name.clone(),
                    o.role.clone(),
                    o.backup_codes_left.to_string(),
                    o.created_at.to_rfc3339(),
                ]
            })
            .collect();
        table(&["name", "role", "backup codes left", "created"], &rows);
    });
    Ok(())
}

/// `velvet totp --secret S`: the current code, as an authenticator app would show it.
pub fn code(ctx: &Context, secret: &str) -> Result<(), Failure> {
    let now = Utc::now().timestamp().max(0) as u64;
    let code = operator::totp_code(secret, now)
        .ok_or_else(|| Failure::usage("--secret: not a base32 TOTP secret"))?;
    let left = 30 - now % 30;
    emit(
        ctx.output,
        &json!({"code": code, "valid_for_seconds": left}),
        |_| {
            println!("{code}");
        },
    );
    Ok(())
}
