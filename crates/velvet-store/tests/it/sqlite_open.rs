//! Opening the embedded store: what a newcomer meets first.

use velvet_core::config::StoreUrl;
use velvet_store::StoreOptions;

#[tokio::test]
async fn a_missing_file_is_created_in_wal_mode_and_a_file_that_is_no_database_is_named() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("new.db");
    let store = velvet_store::open(
        &StoreUrl::Sqlite(path.clone()),
        None,
        &StoreOptions::default(),
    )
    .await
    .unwrap();
    store.ping().await.unwrap();
    let mode: String = rusqlite::Connection::open(&path)
        .unwrap()
        .query_row("PRAGMA journal_mode", [], |r| r.get(0))
        .unwrap();
    assert_eq!(mode, "wal");

    let junk = dir.path().join("notes.txt");
    std::fs::write(&junk, "these are not the pages of a database ".repeat(200)).unwrap();
    let e = velvet_store::open(
        &StoreUrl::Sqlite(junk.clone()),
        None,
        &StoreOptions::default(),
    )
    .await
    .unwrap_err()
    .to_string();
    assert!(
        e.contains("cannot open SQLite store") && e.contains(&junk.display().to_string()),
        "{e}"
    );
}
