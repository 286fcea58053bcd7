//! The store conformance suite: every behaviour of the `Store` trait, run against SQLite and
//! PostgreSQL alike. Each case is one async fn; `conformance!` makes a test per dialect.

use chrono::Utc;
use std::path::Path;
use std::sync::Arc;
use velvet_core::audit::AuditDraft;
use velvet_core::config::{Config, LoadOptions, TokenSpec};
use velvet_core::keyring::{Keyring, version_aad};
use velvet_core::model::TokenStatus;
use velvet_core::secret::SecretValue;
use velvet_store::{Dialect, MigrationError, MigrationSet, StoreError, check_keyring, reseal_all};
use velvet_testkit::Fixture;

velvet_testkit::both_dialects!(
    migrations_are_applied_once_and_listed,
    edited_or_unknown_migrations_are_refused,
    concurrent_migrations_apply_once,
    reconcile_declares_updates_and_retires,
    import_stores_sealed_current_version,
    ciphertexts_are_bound_to_their_row,
    audit_chain_verifies_and_detects_edits,
    audit_chain_detects_deletes_and_reorders,
    audit_chain_detects_truncated_tail_with_exported_head,
    audit_chain_survives_key_rotation,
    concurrent_audit_appends_keep_one_chain,
    reseal_is_resumable_and_old_versions_still_open,
    keyring_check_refuses_the_wrong_keyring,
    one_unfinished_job_per_token_is_enforced_by_the_database,
    service_tokens_keep_only_a_hash_and_revocation_is_seen_at_once,
    decisions_keep_their_ordered_steps_and_events_their_links,
);

mod erased {
    /// Serialises any record to JSON text, to compare records that have no `PartialEq`.
    pub trait Ser {
        fn json(&self) -> String;
    }
    impl<T: serde::Serialize> Ser for T {
        fn json(&self) -> String {
            serde_json::to_string(self).unwrap()
        }
    }
}

fn specs(yaml: &str) -> Vec<TokenSpec> {
    let env = |_: &str| None;
    Config::parse(
        yaml,
        Path::new("/tmp/velvet.yaml"),
        LoadOptions {
            env: &env,
            check_env: false,
        },
    )
    .unwrap_or_else(|e| panic!("{e}"))
    .tokens
}

const TWO_TOKENS: &str = "
tokens:
  - name: alpha
    tags: [prod]
    source: {kind: random}
    rotate_every: 30d
    consumers:
      - {name: a-file, kind: file, path: /tmp/a, format: dotenv, key: A}
      - {name: a-hook, kind: exec, command: [cat]}
  - name: beta
    source: {kind: random, bytes: 16, encoding: base64}
";

async fn import(f: &Fixture, token: &str, value: &str) {
    let v = SecretValue::single(value.into());
    let sealed = f
        .keyring
        .seal(&v, &version_aad(token, 1), Utc::now())
        .unwrap();
    let fp = f.keyring.fingerprint(&v, Utc::now()).unwrap();
    f.store
        .import_version(token, &sealed, &fp, "test")
        .await
        .unwrap();
}

async fn migrations_are_applied_once_and_listed(f: Fixture) {
    let set = MigrationSet::embedded(f.store.dialect());
    let states = f.store.migrations(&set).await.unwrap();
    assert!(
        states
            .iter()
            .all(|s| s.status == "applied" && s.applied_at.is_some())
    );
    assert!(
        f.store.migrate(&set, false).await.unwrap().is_empty(),
        "re-run is a no-op"
    );
    assert!(f.store.migrate(&set, true).await.unwrap().is_empty());

    let fresh = Fixture::unmigrated(f.store.dialect()).await;
    let pending = fresh.store.migrate(&set, true).await.unwrap();
    assert_eq!(
        pending.len(),
        set.migrations.len(),
        "dry run lists every pending migration"
    );
    assert!(
        fresh
            .store
            .migrations(&set)
            .await
            .unwrap()
            .iter()
            .all(|s| s.status == "pending"),
        "dry run applied nothing"
    );
}

async fn edited_or_unknown_migrations_are_refused(f: Fixture) {
    let d = f.store.dialect();
    let fresh = Fixture::unmigrated(d).await;
    let v1 = MigrationSet::from_files(
        d,
        [(
            "001_a.sql".to_string(),
            "CREATE TABLE t1 (x INTEGER);".to_string(),
        )],
    )
    .unwrap();
    fresh.store.migrate(&v1, false).await.unwrap();
    let edited = MigrationSet::from_files(
        d,
        [(
            "001_a.sql".to_string(),
            "CREATE TABLE t1 (x INTEGER, y INTEGER);".to_string(),
        )],
    )
    .unwrap();
    let e = fresh.store.migrate(&edited, false).await.unwrap_err();
    assert!(
        matches!(
            e,
            StoreError::Migration(MigrationError::Changed { version: 1, .. })
        ),
        "{e}"
    );
    assert!(e.to_string().contains("edited after it was applied"));
    let older = MigrationSet::from_files(d, Vec::<(String, String)>::new()).unwrap();
    let e = fresh.store.migrations(&older).await.unwrap_err();
    assert!(
        matches!(
            e,
            StoreError::Migration(MigrationError::Unknown { version: 1, .. })
        ),
        "{e}"
    );
    // A failing migration keeps the ones before it and records nothing for itself.
    let broken = MigrationSet::from_files(
        d,
        [
            (
                "001_a.sql".to_string(),
                "CREATE TABLE t1 (x INTEGER);".to_string(),
            ),
            (
                "002_b.sql".to_string(),
                "CREATE TABLE t2 (x INTEGER); THIS IS NOT SQL;".to_string(),
            ),
        ],
    )
    .unwrap();
    assert!(fresh.store.migrate(&broken, false).await.is_err());
    let states = fresh.store.migrations(&broken).await.unwrap();
    assert_eq!(
        states.iter().map(|s| s.status).collect::<Vec<_>>(),
        ["applied", "pending"]
    );
}

async fn concurrent_migrations_apply_once(f: Fixture) {
    let d = f.store.dialect();
    let fresh = Fixture::unmigrated(d).await;
    let other = fresh.another_handle().await;
    let set = MigrationSet::embedded(d);
    let (a, b) = tokio::join!(fresh.store.migrate(&set, false), other.migrate(&set, false));
    let (a, b) = (a.unwrap(), b.unwrap());
    assert_eq!(
        a.len() + b.len(),
        set.migrations.len(),
        "each migration applied by exactly one replica"
    );
}

async fn reconcile_declares_updates_and_retires(f: Fixture) {
    let now = Utc::now();
    let r = f.store.reconcile(&specs(TWO_TOKENS), now).await.unwrap();
    assert_eq!(r.declared, ["alpha", "beta"]);
    let tokens = f.store.list_tokens().await.unwrap();
    assert_eq!(tokens.len(), 2);
    let alpha = &tokens[0];
    assert_eq!(
        (alpha.consumer_count, alpha.tags.clone()),
        (2, vec!["prod".to_string()])
    );
    assert!(alpha.next_rotation_at.is_some() && tokens[1].next_rotation_at.is_none());
    assert_eq!(
        f.store.list_consumers("alpha").await.unwrap()[1].kind,
        "exec"
    );

    let audit_before = f.store.audit_page(0, 1000).await.unwrap().len();
    let r = f.store.reconcile(&specs(TWO_TOKENS), now).await.unwrap();
    assert_eq!((r.unchanged, r.declared.len(), r.updated.len()), (2, 0, 0));
    assert_eq!(
        f.store.audit_page(0, 1000).await.unwrap().len(),
        audit_before,
        "no change, no audit noise"
    );

    import(&f, "beta", "beta-value").await;
    let changed = TWO_TOKENS
        .replace("- {name: a-hook, kind: exec, command: [cat]}\n", "")
        .replace(
            "  - name: beta\n    source: {kind: random, bytes: 16, encoding: base64}\n",
            "",
        );
    let r = f.store.reconcile(&specs(&changed), now).await.unwrap();
    assert_eq!(
        (r.updated.clone(), r.retired.clone()),
        (vec!["alpha".to_string()], vec!["beta".to_string()])
    );
    assert_eq!(f.store.list_consumers("alpha").await.unwrap().len(), 1);
    let beta = f
        .store
        .get_token("beta")
        .await
        .unwrap()
        .expect("retired, not deleted");
    assert_eq!(beta.status, TokenStatus::Retired);
    assert_eq!(
        f.store.list_versions("beta").await.unwrap().len(),
        1,
        "versions stay for audit"
    );

    let r = f.store.reconcile(&specs(TWO_TOKENS), now).await.unwrap();
    assert_eq!(r.updated, ["alpha", "beta"], "re-declared tokens come back");
    assert_eq!(
        f.store.get_token("beta").await.unwrap().unwrap().status,
        TokenStatus::Active
    );
    let actions: Vec<String> = f
        .store
        .audit_page(0, 1000)
        .await
        .unwrap()
        .into_iter()
        .map(|e| e.action)
        .collect();
    assert!(
        actions.contains(&"token.retired".to_string())
            && actions.contains(&"token.declared".to_string())
    );
}

async fn import_stores_sealed_current_version(f: Fixture) {
    f.store
        .reconcile(&specs(TWO_TOKENS), Utc::now())
        .await
        .unwrap();
    import(&f, "alpha", "the-imported-secret").await;
    let versions = f.store.list_versions("alpha").await.unwrap();
    assert_eq!(versions.len(), 1);
    assert_eq!(
        (versions[0].version, versions[0].label.as_str()),
        (1, "current")
    );
    assert_eq!(
        f.store
            .get_token("alpha")
            .await
            .unwrap()
            .unwrap()
            .current_version,
        Some(1)
    );
    // The one-snapshot view is the three reads it stands for.
    let view = f.store.token_view("alpha").await.unwrap().unwrap();
    use erased::Ser;
    assert_eq!(
        view.token.json(),
        f.store.get_token("alpha").await.unwrap().unwrap().json()
    );
    assert_eq!(
        view.consumers.json(),
        f.store.list_consumers("alpha").await.unwrap().json()
    );
    assert_eq!(view.versions.json(), versions.json());
    assert!(!view.consumers.is_empty());
    assert!(f.store.token_view("nope").await.unwrap().is_none());
    let sealed = f.store.sealed_version("alpha", 1).await.unwrap();
    assert!(
        !sealed
            .ciphertext
            .windows(19)
            .any(|w| w == b"the-imported-secret"),
        "stored encrypted"
    );
    let opened = f.keyring.open(&sealed, &version_aad("alpha", 1)).unwrap();
    assert_eq!(opened.get("value").unwrap().expose(), "the-imported-secret");

    let v = SecretValue::single("again".into());
    let s = f
        .keyring
        .seal(&v, &version_aad("alpha", 1), Utc::now())
        .unwrap();
    let e = f
        .store
        .import_version("alpha", &s, "fp", "test")
        .await
        .unwrap_err();
    assert!(matches!(e, StoreError::Conflict(_)), "{e}");
    let e = f
        .store
        .import_version("nope", &s, "fp", "test")
        .await
        .unwrap_err();
    assert!(matches!(e, StoreError::NotFound(_)), "{e}");
    let last = f.store.audit_page(0, 1000).await.unwrap().pop().unwrap();
    assert_eq!(
        (last.action.as_str(), last.target.as_str()),
        ("version.imported", "alpha")
    );
    assert!(!last.detail.contains("the-imported-secret"));
}

async fn ciphertexts_are_bound_to_their_row(f: Fixture) {
    f.store
        .reconcile(&specs(TWO_TOKENS), Utc::now())
        .await
        .unwrap();
    import(&f, "alpha", "value-of-alpha").await;
    import(&f, "beta", "value-of-beta").await;
    // Swap the two ciphertexts between rows, as an attacker with database access might.
    f.raw
        .exec("CREATE TABLE swap AS SELECT token_id, ciphertext FROM secret_versions")
        .await;
    f.raw.exec("UPDATE secret_versions SET ciphertext = (SELECT s.ciphertext FROM swap s WHERE s.token_id <> secret_versions.token_id)").await;
    for (token, version) in [("alpha", 1), ("beta", 1)] {
        let sealed = f.store.sealed_version(token, version).await.unwrap();
        let e = f
            .keyring
            .open(&sealed, &version_aad(token, version))
            .unwrap_err();
        assert!(e.to_string().contains("decryption failed"), "{e}");
    }
}

async fn append(f: &Fixture, n: usize) {
    for i in 0..n {
        f.store
            .append_audit(
                &AuditDraft::new("tester", "test.action", &format!("t{i}"), "success")
                    .detail(serde_json::json!({"i": i})),
            )
            .await
            .unwrap();
    }
}

async fn audit_chain_verifies_and_detects_edits(f: Fixture) {
    append(&f, 5).await;
    let r = f.store.verify_audit(&f.keyring, None).await.unwrap();
    assert!(r.ok && r.entries == 5 && r.first_bad_seq.is_none(), "{r:?}");
    f.raw
        .exec("UPDATE audit_events SET outcome = 'failure' WHERE seq = 3")
        .await;
    let r = f.store.verify_audit(&f.keyring, None).await.unwrap();
    assert_eq!((r.ok, r.first_bad_seq), (false, Some(3)), "{r:?}");
    f.raw
        .exec("UPDATE audit_events SET outcome = 'success' WHERE seq = 3")
        .await;
    assert!(f.store.verify_audit(&f.keyring, None).await.unwrap().ok);
    f.raw
        .exec("UPDATE audit_events SET detail = '{\"i\":99}' WHERE seq = 4")
        .await;
    assert_eq!(
        f.store
            .verify_audit(&f.keyring, None)
            .await
            .unwrap()
            .first_bad_seq,
        Some(4)
    );
}

async fn audit_chain_detects_deletes_and_reorders(f: Fixture) {
    append(&f, 6).await;
    f.raw.exec("DELETE FROM audit_events WHERE seq = 2").await;
    let r = f.store.verify_audit(&f.keyring, None).await.unwrap();
    assert_eq!((r.ok, r.first_bad_seq), (false, Some(3)), "{r:?}");

    let g = Fixture::new(f.store.dialect()).await;
    append(&g, 6).await;
    // Reorder: swap the contents of records 4 and 5, keeping their seq numbers.
    g.raw
        .exec("UPDATE audit_events SET seq = -4 WHERE seq = 4")
        .await;
    g.raw
        .exec("UPDATE audit_events SET seq = 4 WHERE seq = 5")
        .await;
    g.raw
        .exec("UPDATE audit_events SET seq = 5 WHERE seq = -4")
        .await;
    let r = g.store.verify_audit(&g.keyring, None).await.unwrap();
    assert_eq!((r.ok, r.first_bad_seq), (false, Some(4)), "{r:?}");

    let h = Fixture::new(f.store.dialect()).await;
    append(&h, 3).await;
    h.raw.exec("DELETE FROM audit_events WHERE seq = 1").await;
    assert_eq!(
        h.store
            .verify_audit(&h.keyring, None)
            .await
            .unwrap()
            .first_bad_seq,
        Some(2),
        "deleting the first record is seen"
    );
}

async fn audit_chain_detects_truncated_tail_with_exported_head(f: Fixture) {
    append(&f, 5).await;
    let head = f
        .store
        .verify_audit(&f.keyring, None)
        .await
        .unwrap()
        .head
        .unwrap();
    assert!(head.starts_with("5:"));
    append(&f, 2).await;
    assert!(
        f.store
            .verify_audit(&f.keyring, Some(&head))
            .await
            .unwrap()
            .ok,
        "growth past the head is fine"
    );
    f.raw.exec("DELETE FROM audit_events WHERE seq >= 5").await;
    let plain = f.store.verify_audit(&f.keyring, None).await.unwrap();
    assert!(
        plain.ok,
        "without the head a clean truncation is invisible, which is why it is exported"
    );
    let r = f.store.verify_audit(&f.keyring, Some(&head)).await.unwrap();
    assert_eq!((r.ok, r.first_bad_seq), (false, Some(5)), "{r:?}");
    assert!(r.problem.unwrap().contains("removed from the end"));
    let forged = format!("3:{}", "0".repeat(64));
    assert!(
        !f.store
            .verify_audit(&f.keyring, Some(&forged))
            .await
            .unwrap()
            .ok
    );
}

async fn audit_chain_survives_key_rotation(f: Fixture) {
    append(&f, 3).await;
    let path = f.path("velvet-keys.json");
    let mut kr = Keyring::load(&path).unwrap();
    kr.add_key(Utc::now()).unwrap();
    kr.save().unwrap();
    let rotated = Arc::new(Keyring::load(&path).unwrap());
    let g = Fixture::open(f.url.clone(), rotated.clone(), tempfile::tempdir().unwrap()).await;
    append(&g, 3).await;
    let entries = g.store.audit_page(0, 100).await.unwrap();
    assert_ne!(
        entries[0].key_id, entries[5].key_id,
        "new records use the new key"
    );
    let r = g.store.verify_audit(&rotated, None).await.unwrap();
    assert!(r.ok && r.entries == 6, "{r:?}");
}

async fn concurrent_audit_appends_keep_one_chain(f: Fixture) {
    let other = f.another_handle().await;
    let mut tasks = Vec::new();
    for i in 0..20 {
        let s = if i % 2 == 0 {
            f.store.clone()
        } else {
            other.clone()
        };
        tasks.push(tokio::spawn(async move {
            s.append_audit(&AuditDraft::new(
                "t",
                "concurrent",
                &i.to_string(),
                "success",
            ))
            .await
            .unwrap();
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let r = f.store.verify_audit(&f.keyring, None).await.unwrap();
    assert!(r.ok && r.entries == 20, "{r:?}");
}

async fn reseal_is_resumable_and_old_versions_still_open(f: Fixture) {
    f.store
        .reconcile(&specs(TWO_TOKENS), Utc::now())
        .await
        .unwrap();
    import(&f, "alpha", "alpha-secret").await;
    import(&f, "beta", "beta-secret").await;
    let path = f.path("velvet-keys.json");
    let mut kr = Keyring::load(&path).unwrap();
    let old_id = kr.current(Utc::now()).unwrap().id.clone();
    let new_id = kr.add_key(Utc::now()).unwrap().id.clone();
    kr.save().unwrap();
    let kr = Keyring::load(&path).unwrap();
    // "Interrupted" after one batch of one row…
    let first = f.store.sealed_not_under(&new_id, 1).await.unwrap();
    assert_eq!(first.len(), 1);
    let row = &first[0];
    let aad = version_aad(&row.token, row.version);
    let value = kr.open(&row.sealed, &aad).unwrap();
    let batch = [velvet_store::Reseal {
        token: row.token.clone(),
        version: row.version,
        old_key_id: old_id.clone(),
        sealed: kr.seal(&value, &aad, Utc::now()).unwrap(),
        fingerprint: kr.fingerprint(&value, Utc::now()).unwrap(),
    }];
    assert_eq!(f.store.reseal(&batch).await.unwrap(), 1);
    assert_eq!(
        f.store.reseal(&batch).await.unwrap(),
        0,
        "already moved rows are left alone"
    );
    // …then re-run to completion.
    let mut seen = Vec::new();
    let moved = reseal_all(&*f.store, &kr, 1, |n| seen.push(n))
        .await
        .unwrap();
    assert_eq!((moved, seen), (1, vec![1]));
    assert!(
        f.store
            .sealed_not_under(&new_id, 10)
            .await
            .unwrap()
            .is_empty()
    );
    for t in ["alpha", "beta"] {
        let sealed = f.store.sealed_version(t, 1).await.unwrap();
        assert_eq!(sealed.key_id, new_id);
        assert_eq!(
            kr.open(&sealed, &version_aad(t, 1))
                .unwrap()
                .get("value")
                .unwrap()
                .expose(),
            format!("{t}-secret")
        );
    }
    let fp_now = f.store.list_versions("alpha").await.unwrap()[0]
        .fingerprint
        .clone();
    assert_eq!(
        fp_now,
        kr.fingerprint(&SecretValue::single("alpha-secret".into()), Utc::now())
            .unwrap(),
        "fingerprints follow the key"
    );
    check_keyring(&*f.store, &kr).await.unwrap();
}

async fn keyring_check_refuses_the_wrong_keyring(f: Fixture) {
    f.store
        .reconcile(&specs(TWO_TOKENS), Utc::now())
        .await
        .unwrap();
    import(&f, "alpha", "alpha-secret").await;
    check_keyring(&*f.store, &f.keyring).await.unwrap();
    let stranger = Keyring::generate(&f.path("other.json"), Utc::now());
    let e = check_keyring(&*f.store, &stranger).await.unwrap_err();
    assert!(e.to_string().contains("holds no key with id"), "{e}");
    // Same key id, different material: a swapped key file.
    let text = std::fs::read_to_string(f.path("velvet-keys.json")).unwrap();
    let mut json: serde_json::Value = serde_json::from_str(&text).unwrap();
    json["keys"][0]["material"] =
        serde_json::Value::String("AQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQE=".into());
    velvet_core::keyring::write_private_file(&f.path("swapped.json"), json.to_string().as_bytes())
        .unwrap();
    let swapped = Keyring::load(&f.path("swapped.json")).unwrap();
    let e = check_keyring(&*f.store, &swapped).await.unwrap_err();
    assert!(e.to_string().contains("not the keyring that sealed"), "{e}");
}

async fn one_unfinished_job_per_token_is_enforced_by_the_database(f: Fixture) {
    f.store
        .reconcile(&specs(TWO_TOKENS), Utc::now())
        .await
        .unwrap();
    let insert = |id: &str, status: &str| {
        format!(
        "INSERT INTO rotation_jobs (id, token_id, flow_type, stage, status, requested_by, created_at, updated_at)
         SELECT '{id}', id, 'staged', 'done', '{status}', 'test', '2026-01-01T00:00:00Z', '2026-01-01T00:00:00Z' FROM tokens WHERE name = 'alpha'"
    )
    };
    f.raw.exec(&insert("rot_1", "succeeded")).await;
    f.raw.exec(&insert("rot_2", "aborted")).await;
    f.raw.exec(&insert("rot_3", "running")).await;
    let e = f
        .raw
        .try_exec(&insert("rot_4", "failed"))
        .await
        .unwrap_err();
    assert!(e.to_string().to_lowercase().contains("unique"), "{e}");
    f.raw
        .exec("UPDATE rotation_jobs SET status = 'rolled_back' WHERE id = 'rot_3'")
        .await;
    f.raw.exec(&insert("rot_5", "pending")).await;
}

#[test]
fn conformance_runs_on_both_dialects() {
    // A guard against a dialect silently dropping out of the shared macro.
    let src = include_str!("../../../velvet-testkit/src/lib.rs");
    assert!(src.contains("Dialect::Sqlite") && src.contains("Dialect::Postgres"));
    let _ = Dialect::Sqlite;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_reconciles_from_two_replicas_agree_postgres() {
    concurrent_reconciles_agree(Fixture::new(Dialect::Postgres).await).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_reconciles_from_two_replicas_agree_sqlite() {
    concurrent_reconciles_agree(Fixture::new(Dialect::Sqlite).await).await
}

async fn concurrent_reconciles_agree(f: Fixture) {
    let other = f.another_handle().await;
    let tokens = specs(TWO_TOKENS);
    let (a, b) = tokio::join!(
        f.store.reconcile(&tokens, Utc::now()),
        other.reconcile(&tokens, Utc::now())
    );
    let (a, b) = (a.unwrap(), b.unwrap());
    assert_eq!(
        a.declared.len() + b.declared.len(),
        2,
        "each token declared once: {a:?} {b:?}"
    );
    assert_eq!(a.unchanged + b.unchanged, 2);
    assert!(f.store.verify_audit(&f.keyring, None).await.unwrap().ok);
}

async fn service_tokens_keep_only_a_hash_and_revocation_is_seen_at_once(f: Fixture) {
    use velvet_core::identity::{hash_service_token, mint_service_token};
    use velvet_store::NewServiceToken;
    let minted = mint_service_token();
    let expires = Utc::now() + chrono::Duration::days(90);
    let new = NewServiceToken {
        id: "st_1",
        name: "ci deploy",
        role: "operator",
        prefix: &minted.prefix,
        hash: &minted.hash,
        operator: None,
        created_by: "bootstrap-admin",
        expires_at: Some(expires),
    };
    let created = f.store.create_service_token(&new).await.unwrap();
    assert_eq!(created.role, "operator");
    assert!(created.is_live(Utc::now()));
    let found = f
        .store
        .service_token_by_hash(&hash_service_token(minted.token.expose()))
        .await
        .unwrap()
        .expect("found by its hash");
    assert_eq!(found.id, "st_1");
    assert!(
        (found.expires_at.unwrap() - expires)
            .num_milliseconds()
            .abs()
            < 1,
        "expiry kept"
    );
    assert!(
        f.store
            .service_token_by_hash(&hash_service_token("vlt_other"))
            .await
            .unwrap()
            .is_none()
    );
    assert!(
        f.store
            .create_service_token(&NewServiceToken {
                id: "st_2",
                ..new.clone()
            })
            .await
            .is_err(),
        "one row per hash"
    );
    f.store
        .touch_service_token("st_1", Utc::now())
        .await
        .unwrap();
    let listed = f.store.list_service_tokens().await.unwrap();
    assert_eq!(listed.len(), 1);
    assert!(listed[0].last_used_at.is_some());

    // Another handle stands for another replica: it sees the revocation on its next lookup.
    let other = f.another_handle().await;
    let revoked = f.store.revoke_service_token("st_1", "admin").await.unwrap();
    assert!(!revoked.is_live(Utc::now()));
    let seen = other
        .service_token_by_hash(&minted.hash)
        .await
        .unwrap()
        .unwrap();
    assert!(seen.revoked_at.is_some());
    // Revoking again changes nothing and adds no audit record; an unknown id is not found.
    f.store.revoke_service_token("st_1", "admin").await.unwrap();
    assert!(matches!(
        f.store.revoke_service_token("st_9", "admin").await,
        Err(StoreError::NotFound(_))
    ));
    let actions: Vec<String> = f
        .store
        .audit_page(0, 100)
        .await
        .unwrap()
        .into_iter()
        .map(|e| e.action)
        .collect();
    assert_eq!(actions, vec!["auth.token_created", "auth.token_revoked"]);
}

async fn decisions_keep_their_ordered_steps_and_events_their_links(f: Fixture) {
    use velvet_core::decision::{Decision, DecisionStep, SecurityEvent, Severity};
    let steps = |last: bool| {
        vec![
            DecisionStep::new("token_valid", true, "st_1"),
            DecisionStep::new("not_revoked", true, "live"),
            DecisionStep::new("permission", last, "operator"),
        ]
    };
    let allow = Decision::new(
        "token:a",
        "velvet.rotations.kickoff",
        "POST /x",
        steps(true),
    );
    let deny = Decision::new("token:b", "velvet.admin", "POST /y", steps(false));
    f.store.record_decision(&allow).await.unwrap();
    f.store.record_decision(&deny).await.unwrap();
    let all = f.store.list_decisions(None, None, 10).await.unwrap();
    assert_eq!(all.len(), 2);
    let back = all.iter().find(|d| d.id == allow.id).unwrap();
    assert_eq!(back.steps, allow.steps, "steps come back in order");
    assert_eq!(back.trace_hash, allow.trace_hash);
    assert_eq!(
        f.store
            .list_decisions(None, Some("deny"), 10)
            .await
            .unwrap(),
        vec![Decision {
            at: all.iter().find(|d| d.id == deny.id).unwrap().at,
            ..deny.clone()
        }]
    );
    assert_eq!(
        f.store
            .list_decisions(Some("token:a"), None, 10)
            .await
            .unwrap()
            .len(),
        1
    );
    let mut ev = SecurityEvent::new("permission_denied", Severity::Warning, "needs admin");
    ev.decision_id = Some(deny.id.clone());
    f.store.record_security_event(&ev).await.unwrap();
    let events = f.store.list_security_events(10).await.unwrap();
    assert_eq!(events.len(), 1);
    assert_eq!(events[0].decision_id.as_deref(), Some(deny.id.as_str()));
    assert_eq!(events[0].severity, "warning");
}
