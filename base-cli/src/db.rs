//! `base db migrate`: applies the control-plane schema without a running
//! master, so an operator can migrate before starting (or upgrading) it.
//!
//! It reads the same settings as `base-server` (`BASE_DATABASE_URL`,
//! `BASE_DATA_DIR`, `BASE_ENVIRONMENT`, `BASE_CONFIG`), so both always agree
//! on which database is meant.

use std::path::{Path, PathBuf};

use base_sdk::config::{ConfigError, DatabaseUrl, Settings};
use base_sdk::store::{Backend, StoreError};

/// Why the database could not be migrated.
#[derive(Debug, thiserror::Error)]
pub enum DbError {
    /// Settings are missing or malformed.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// The SQLite file's directory cannot be created.
    #[error("cannot create the data directory '{path}': {reason}")]
    DataDir {
        /// The directory.
        path: PathBuf,
        /// Why.
        reason: String,
    },
    /// Connecting or migrating failed.
    #[error("cannot migrate the control-plane database {database}: {source}")]
    Store {
        /// The URL with its password masked.
        database: String,
        /// What failed.
        #[source]
        source: StoreError,
    },
}

/// What was migrated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Migrated {
    /// The database URL with its password masked.
    pub database: String,
    /// `postgres` or `sqlite`.
    pub backend: &'static str,
}

/// Loads settings (from `config` and the environment), opens the database
/// and applies pending migrations.
pub async fn migrate(config: Option<&Path>) -> Result<Migrated, DbError> {
    let settings = Settings::load(config)?;
    let url = settings.effective_database_url()?;
    ensure_sqlite_dir(&url)?;
    let database = url.redacted();
    // `store::connect` applies migrations before returning.
    let store = base_sdk::store::connect(url.expose())
        .await
        .map_err(|source| DbError::Store {
            database: database.clone(),
            source,
        })?;
    let backend = match store.backend() {
        Backend::Postgres => "postgres",
        Backend::Sqlite => "sqlite",
    };
    Ok(Migrated { database, backend })
}

/// SQLite creates the file but not its directory; the default lives in
/// `./.base`, which does not exist on a fresh checkout. `base-server`
/// creates it the same way at start-up.
fn ensure_sqlite_dir(url: &DatabaseUrl) -> Result<(), DbError> {
    let Some(dir) = sqlite_dir(url.expose()) else {
        return Ok(());
    };
    std::fs::create_dir_all(&dir).map_err(|e| DbError::DataDir {
        path: dir,
        reason: e.to_string(),
    })
}

/// The directory of a `sqlite://` file URL, if it names one.
fn sqlite_dir(url: &str) -> Option<PathBuf> {
    let path = url.strip_prefix("sqlite://")?;
    // Drop connection options (`?mode=rwc`) and the in-memory form.
    let path = path.split('?').next().unwrap_or(path);
    if path.is_empty() || path.starts_with(':') {
        return None;
    }
    Path::new(path)
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .map(Path::to_path_buf)
}

// Tests may panic on anything unexpected: that is how they fail.
#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn sqlite_dirs_are_found_only_for_files() {
        assert_eq!(
            sqlite_dir("sqlite://./.base/base.sqlite3"),
            Some(PathBuf::from("./.base"))
        );
        assert_eq!(
            sqlite_dir("sqlite:///tmp/x/db.sqlite3?mode=rwc"),
            Some(PathBuf::from("/tmp/x"))
        );
        assert_eq!(sqlite_dir("sqlite://db.sqlite3"), None);
        assert_eq!(sqlite_dir("sqlite://:memory:"), None);
        assert_eq!(sqlite_dir("postgres://u:p@h/db"), None);
    }
}
