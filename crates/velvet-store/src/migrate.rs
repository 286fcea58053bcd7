//! Migrations: the embedded SQL files of each dialect, their checksums, and the plan that says
//! what to apply, refusing gaps, duplicates and files edited after they were applied.

use chrono::{DateTime, Utc};
use serde::Serialize;
use sha2::{Digest, Sha256};

mod embedded {
    include!(concat!(env!("OUT_DIR"), "/migrations.rs"));
}

/// The SQL dialect a migration set is written for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dialect {
    Sqlite,
    Postgres,
}

/// One migration file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Migration {
    pub version: i64,
    pub name: String,
    pub sql: String,
    /// SHA-256 of the file, hex.
    pub checksum: String,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MigrationError {
    #[error("migration file `{0}` is not named NNN_name.sql")]
    BadName(String),
    #[error("migrations {0} appears twice; each number must be used once")]
    Duplicate(i64),
    #[error(
        "migration {expected} is missing (found {found} after {previous}); migrations must be numbered without gaps"
    )]
    Gap {
        previous: i64,
        expected: i64,
        found: i64,
    },
    #[error(
        "migration {version} ({name}) was edited after it was applied (checksum {applied} in the database, {file} in this build); restore the original file and add a new migration instead"
    )]
    Changed {
        version: i64,
        name: String,
        applied: String,
        file: String,
    },
    #[error(
        "the database has migration {version} ({name}), which this build of Velvet does not know: it was migrated by a newer version"
    )]
    Unknown { version: i64, name: String },
    #[error("{count} migration(s) are pending; run `velvet migrate` or start without --no-migrate")]
    Pending { count: usize },
}

/// An ordered, gap-free set of migrations for one dialect.
#[derive(Debug, Clone)]
pub struct MigrationSet {
    pub dialect: Dialect,
    pub migrations: Vec<Migration>,
}

impl MigrationSet {
    /// The migrations compiled into this binary.
    pub fn embedded(dialect: Dialect) -> Self {
        let files = match dialect {
            Dialect::Sqlite => embedded::SQLITE,
            Dialect::Postgres => embedded::POSTGRES,
        };
        Self::from_files(
            dialect,
            files.iter().map(|(n, s)| (n.to_string(), s.to_string())),
        )
        .expect("embedded migrations are checked by tests")
    }

    /// Builds a set from `(file name, sql)` pairs, refusing bad names, duplicates and gaps.
    pub fn from_files(
        dialect: Dialect,
        files: impl IntoIterator<Item = (String, String)>,
    ) -> Result<Self, MigrationError> {
        let mut migrations = Vec::new();
        for (file, sql) in files {
            let stem = file
                .strip_suffix(".sql")
                .ok_or_else(|| MigrationError::BadName(file.clone()))?;
            let (num, name) = stem
                .split_once('_')
                .ok_or_else(|| MigrationError::BadName(file.clone()))?;
            if num.len() < 3 || !num.chars().all(|c| c.is_ascii_digit()) || name.is_empty() {
                return Err(MigrationError::BadName(file));
            }
            let checksum = hex::encode(Sha256::digest(sql.as_bytes()));
            migrations.push(Migration {
                version: num
                    .parse()
                    .map_err(|_| MigrationError::BadName(file.clone()))?,
                name: name.to_string(),
                sql,
                checksum,
            });
        }
        migrations.sort_by_key(|m| m.version);
        let mut previous = 0;
        for m in &migrations {
            if m.version == previous {
                return Err(MigrationError::Duplicate(m.version));
            }
            if m.version != previous + 1 {
                return Err(MigrationError::Gap {
                    previous,
                    expected: previous + 1,
                    found: m.version,
                });
            }
            previous = m.version;
        }
        Ok(Self {
            dialect,
            migrations,
        })
    }
}

/// A row of `velvet_schema_migrations`.
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct AppliedMigration {
    pub version: i64,
    pub name: String,
    pub checksum: String,
    pub applied_at: DateTime<Utc>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct MigrationState {
    pub version: i64,
    pub name: String,
    /// `applied` or `pending`.
    pub status: &'static str,
    pub applied_at: Option<DateTime<Utc>>,
}

/// Compares the files with what the database applied; returns every migration's state, or the
/// first inconsistency.
pub fn plan(
    set: &MigrationSet,
    applied: &[AppliedMigration],
) -> Result<Vec<MigrationState>, MigrationError> {
    for a in applied {
        match set.migrations.iter().find(|m| m.version == a.version) {
            None => {
                return Err(MigrationError::Unknown {
                    version: a.version,
                    name: a.name.clone(),
                });
            }
            Some(m) if m.checksum != a.checksum => {
                return Err(MigrationError::Changed {
                    version: m.version,
                    name: m.name.clone(),
                    applied: a.checksum[..12.min(a.checksum.len())].to_string(),
                    file: m.checksum[..12].to_string(),
                });
            }
            Some(_) => {}
        }
    }
    Ok(set
        .migrations
        .iter()
        .map(|m| {
            let a = applied.iter().find(|a| a.version == m.version);
            MigrationState {
                version: m.version,
                name: m.name.clone(),
                status: if a.is_some() { "applied" } else { "pending" },
                applied_at: a.map(|a| a.applied_at),
            }
        })
        .collect())
}

/// The first migration still to apply.
pub fn next_pending<'s>(set: &'s MigrationSet, states: &[MigrationState]) -> Option<&'s Migration> {
    states
        .iter()
        .find(|s| s.status == "pending")
        .and_then(|s| set.migrations.iter().find(|m| m.version == s.version))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn files(names: &[&str]) -> Vec<(String, String)> {
        names
            .iter()
            .map(|n| (n.to_string(), format!("-- {n}")))
            .collect()
    }

    #[test]
    fn both_dialects_have_identical_numbering() {
        let a = MigrationSet::embedded(Dialect::Sqlite);
        let b = MigrationSet::embedded(Dialect::Postgres);
        let key = |s: &MigrationSet| {
            s.migrations
                .iter()
                .map(|m| (m.version, m.name.clone()))
                .collect::<Vec<_>>()
        };
        assert!(!a.migrations.is_empty());
        assert_eq!(key(&a), key(&b));
    }

    #[test]
    fn gaps_duplicates_and_bad_names_are_refused() {
        let d = Dialect::Sqlite;
        assert_eq!(
            MigrationSet::from_files(d, files(&["001_a.sql", "003_c.sql"])).unwrap_err(),
            MigrationError::Gap {
                previous: 1,
                expected: 2,
                found: 3
            }
        );
        assert_eq!(
            MigrationSet::from_files(d, files(&["001_a.sql", "001_b.sql"])).unwrap_err(),
            MigrationError::Duplicate(1)
        );
        assert!(matches!(
            MigrationSet::from_files(d, files(&["1_a.sql"])).unwrap_err(),
            MigrationError::BadName(_)
        ));
        assert!(MigrationSet::from_files(d, files(&["002_b.sql", "001_a.sql"])).is_ok());
    }

    #[test]
    fn plan_detects_edits_and_unknown_versions() {
        let set =
            MigrationSet::from_files(Dialect::Sqlite, files(&["001_a.sql", "002_b.sql"])).unwrap();
        let applied = |v: i64, sum: &str| AppliedMigration {
            version: v,
            name: "a".into(),
            checksum: sum.into(),
            applied_at: Utc::now(),
        };
        let ok = plan(&set, &[applied(1, &set.migrations[0].checksum)]).unwrap();
        assert_eq!(ok[0].status, "applied");
        assert_eq!(next_pending(&set, &ok).unwrap().version, 2);
        assert!(matches!(
            plan(&set, &[applied(1, "beef")]),
            Err(MigrationError::Changed { version: 1, .. })
        ));
        assert!(matches!(
            plan(&set, &[applied(3, "beef")]),
            Err(MigrationError::Unknown { version: 3, .. })
        ));
    }
}
