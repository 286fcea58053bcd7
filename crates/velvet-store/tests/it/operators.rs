//! The store's operators, backup codes, TOTP watermarks, approvals and the re-sealing of TOTP
//! secrets, on SQLite and PostgreSQL alike (the conformance suite's operator half).

use chrono::Utc;
use std::path::Path;
use velvet_core::config::{Config, LoadOptions, TokenSpec};
use velvet_core::keyring::Keyring;
use velvet_core::secret::SecretValue;
use velvet_store::{StoreError, reseal_all};
use velvet_testkit::Fixture;

velvet_testkit::both_dialects!(
    operators_keep_hashes_sealed_totp_and_single_use_codes,
    a_totp_step_is_accepted_once_even_under_concurrency,
    key_rotation_reseals_operators_totp_secrets,
);

fn alpha() -> Vec<TokenSpec> {
    let env = |_: &str| None;
    Config::parse(
        "tokens:\n  - name: alpha\n    source: {kind: random}\n",
        Path::new("/tmp/velvet.yaml"),
        LoadOptions {
            env: &env,
            check_env: false,
        },
    )
    .unwrap_or_else(|e| panic!("{e}"))
    .tokens
}

async fn add_operator(f: &Fixture, name: &str) -> (String, Vec<String>) {
    use velvet_core::operator;
    let secret = operator::new_totp_secret();
    let sealed = f
        .keyring
        .seal(
            &SecretValue::single(secret.expose().to_string()),
            &operator::totp_aad(name),
            Utc::now(),
        )
        .unwrap();
    let codes: Vec<String> = operator::new_backup_codes()
        .iter()
        .map(|c| c.expose().to_string())
        .collect();
    let hashes: Vec<String> = codes
        .iter()
        .map(|c| operator::hash_backup_code(c))
        .collect();
    f.store
        .create_operator(&velvet_store::NewOperator {
            name,
            role: "revoker",
            password_hash: &operator::hash_password("pw-0123456789"),
            totp: &sealed,
            backup_code_hashes: &hashes,
            created_by: "test",
        })
        .await
        .unwrap();
    (secret.expose().to_string(), codes)
}

async fn operators_keep_hashes_sealed_totp_and_single_use_codes(f: Fixture) {
    use velvet_core::operator;
    let (secret, codes) = add_operator(&f, "alice").await;
    let err = f
        .store
        .create_operator(&velvet_store::NewOperator {
            name: "alice",
            role: "viewer",
            password_hash: "x",
            totp: &f.store.operator("alice").await.unwrap().unwrap().totp,
            backup_code_hashes: &[],
            created_by: "test",
        })
        .await;
    assert!(matches!(err, Err(StoreError::Conflict(_))), "{err:?}");
    let op = f.store.operator("alice").await.unwrap().unwrap();
    assert_eq!((op.role.as_str(), op.backup_codes_left), ("revoker", 10));
    assert!(operator::verify_password(
        "pw-0123456789",
        &op.password_hash
    ));
    assert!(!op.password_hash.contains("pw-0123456789"));
    // The secret opens only as alice's.
    let opened = f
        .keyring
        .open(&op.totp, &operator::totp_aad("alice"))
        .unwrap();
    assert_eq!(opened.get("value").unwrap().expose(), secret);
    assert!(
        f.keyring
            .open(&op.totp, &operator::totp_aad("bob"))
            .is_err()
    );
    // A backup code works once.
    let h = operator::hash_backup_code(&codes[3]);
    assert!(f.store.use_backup_code("alice", &h).await.unwrap());
    assert!(!f.store.use_backup_code("alice", &h).await.unwrap());
    assert!(!f.store.use_backup_code("alice", "nope").await.unwrap());
    assert_eq!(
        f.store
            .operator("alice")
            .await
            .unwrap()
            .unwrap()
            .backup_codes_left,
        9
    );
    // A reset replaces the secret and every code.
    let fresh = operator::new_totp_secret();
    let sealed = f
        .keyring
        .seal(
            &SecretValue::single(fresh.expose().to_string()),
            &operator::totp_aad("alice"),
            Utc::now(),
        )
        .unwrap();
    f.store
        .reset_totp("alice", &sealed, &["h1".into(), "h2".into()], "admin")
        .await
        .unwrap();
    let op = f.store.operator("alice").await.unwrap().unwrap();
    assert_eq!(op.backup_codes_left, 2);
    assert!(
        !f.store
            .use_backup_code("alice", &operator::hash_backup_code(&codes[0]))
            .await
            .unwrap()
    );
    assert!(matches!(
        f.store.reset_totp("nobody", &sealed, &[], "admin").await,
        Err(StoreError::NotFound(_))
    ));
    let names: Vec<String> = f
        .store
        .list_operators()
        .await
        .unwrap()
        .into_iter()
        .map(|o| o.name)
        .collect();
    assert_eq!(names, ["alice"]);
    let actions: Vec<String> = f
        .store
        .audit_page(0, 1000)
        .await
        .unwrap()
        .into_iter()
        .map(|e| e.action)
        .collect();
    assert!(
        actions.contains(&"operator.added".into())
            && actions.contains(&"operator.totp_reset".into())
    );

    // Approvals: one per operator and job, in order.
    f.store.reconcile(&alpha(), Utc::now()).await.unwrap();
    f.raw.exec(
        "INSERT INTO rotation_jobs (id, token_id, flow_type, stage, status, requested_by, created_at, updated_at)
         SELECT 'rot_a', id, 'staged', 'revoke', 'awaiting_confirmation', 'test', '2026-01-01T00:00:00Z', '2026-01-01T00:00:00Z' FROM tokens WHERE name = 'alpha'",
    ).await;
    add_operator(&f, "bob").await;
    f.store
        .approve_revoke("rot_a", "bob", "operator:bob")
        .await
        .unwrap();
    f.store
        .approve_revoke("rot_a", "bob", "operator:bob")
        .await
        .unwrap();
    f.store
        .approve_revoke("rot_a", "alice", "operator:alice")
        .await
        .unwrap();
    let who: Vec<String> = f
        .store
        .approvals("rot_a")
        .await
        .unwrap()
        .into_iter()
        .map(|a| a.operator)
        .collect();
    assert_eq!(who, ["bob", "alice"]);
    assert!(f.store.approvals("rot_b").await.unwrap().is_empty());
}

async fn key_rotation_reseals_operators_totp_secrets(f: Fixture) {
    let (secret, _) = add_operator(&f, "dave").await;
    let path = f.path("velvet-keys.json");
    let mut kr = Keyring::load(&path).unwrap();
    let old_id = kr.current(Utc::now()).unwrap().id.clone();
    let new_id = kr.add_key(Utc::now()).unwrap().id.clone();
    kr.save().unwrap();
    let kr = Keyring::load(&path).unwrap();
    // Counted and required like any sealed value, so no one retires the key under it.
    assert!(
        f.store
            .sealed_counts()
            .await
            .unwrap()
            .contains(&(old_id.clone(), 1))
    );
    assert!(f.store.key_ids_in_use().await.unwrap().contains(&old_id));
    assert_eq!(reseal_all(&*f.store, &kr, 10, |_| {}).await.unwrap(), 1);
    let op = f.store.operator("dave").await.unwrap().unwrap();
    assert_eq!(op.totp.key_id, new_id);
    let opened = kr
        .open(&op.totp, &velvet_core::operator::totp_aad("dave"))
        .unwrap();
    assert_eq!(opened.get("value").unwrap().expose(), secret);
    assert_eq!(f.store.sealed_counts().await.unwrap(), vec![(new_id, 1)]);
    assert_eq!(reseal_all(&*f.store, &kr, 10, |_| {}).await.unwrap(), 0);
}

async fn a_totp_step_is_accepted_once_even_under_concurrency(f: Fixture) {
    add_operator(&f, "carol").await;
    assert!(f.store.accept_totp_step("carol", 100).await.unwrap());
    assert!(
        !f.store.accept_totp_step("carol", 100).await.unwrap(),
        "replayed"
    );
    assert!(
        !f.store.accept_totp_step("carol", 99).await.unwrap(),
        "older"
    );
    // Sixteen requests with the same fresh code, on two handles: exactly one wins.
    let other = f.another_handle().await;
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..16 {
        let store = if i % 2 == 0 {
            f.store.clone()
        } else {
            other.clone()
        };
        tasks.spawn(async move { store.accept_totp_step("carol", 101).await.unwrap() });
    }
    let mut won = 0;
    while let Some(r) = tasks.join_next().await {
        won += usize::from(r.unwrap());
    }
    assert_eq!(won, 1);
    assert!(f.store.accept_totp_step("carol", 102).await.unwrap());
}
