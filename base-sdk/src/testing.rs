//! Helpers for test suites: throw-away stores on both backends.
//!
//! PostgreSQL tests get a fresh database each, created on the server named
//! by `BASE_TEST_POSTGRES_URL` (the test script starts one on loopback), so
//! tests run in parallel without seeing each other's rows.

use std::sync::Arc;

pub mod fake;
pub mod strict_http;

pub use fake::FakeOrchestrator;

use crate::store::{PgStore, SqliteStore, Store, StoreError};

/// Env var naming the PostgreSQL server that backend tests use.
pub const POSTGRES_URL_VAR: &str = "BASE_TEST_POSTGRES_URL";

/// A migrated SQLite store in a temporary directory (removed on drop).
pub struct TempSqlite {
    /// The store.
    pub store: Arc<dyn Store>,
    /// Its URL, for processes that open it themselves.
    pub url: String,
    _dir: tempfile::TempDir,
}

/// Opens a fresh SQLite store.
pub async fn sqlite() -> Result<TempSqlite, StoreError> {
    let dir = tempfile::tempdir().map_err(|e| StoreError::Unavailable(sqlx::Error::Io(e)))?;
    let url = format!("sqlite://{}", dir.path().join("base.sqlite3").display());
    let store = SqliteStore::connect(&url).await?;
    store.migrate().await?;
    Ok(TempSqlite {
        store: Arc::new(store),
        url,
        _dir: dir,
    })
}

/// A migrated PostgreSQL store in its own fresh database.
pub struct TempPostgres {
    /// The store.
    pub store: Arc<dyn Store>,
    /// Its URL.
    pub url: String,
}

/// Creates a fresh database on the server named by [`POSTGRES_URL_VAR`].
///
/// Fails (rather than skipping) when the variable is unset: tests that
/// call this are marked `#[ignore = "needs postgres"]` and the test script
/// runs them with a server it started.
pub async fn postgres() -> Result<TempPostgres, StoreError> {
    use sqlx::Connection;
    let admin_url = std::env::var(POSTGRES_URL_VAR).map_err(|_| {
        StoreError::Unavailable(sqlx::Error::Configuration(
            format!("{POSTGRES_URL_VAR} is not set; run the tests through scripts/test.sh").into(),
        ))
    })?;
    let name = format!("base_test_{}", uuid::Uuid::new_v4().simple());
    let mut admin = sqlx::PgConnection::connect(&admin_url)
        .await
        .map_err(StoreError::Unavailable)?;
    sqlx::query(&format!("CREATE DATABASE {name}"))
        .execute(&mut admin)
        .await
        .map_err(StoreError::Database)?;
    let _ = admin.close().await;
    let mut url = url::Url::parse(&admin_url)
        .map_err(|e| StoreError::Unavailable(sqlx::Error::Configuration(e.into())))?;
    url.set_path(&format!("/{name}"));
    let url = url.to_string();
    let store = PgStore::connect(&url).await?;
    store.migrate().await?;
    Ok(TempPostgres {
        store: Arc::new(store),
        url,
    })
}

/// Stamps a SQLite test and a PostgreSQL test for every listed case, an
/// `async fn(Arc<dyn Store>)` in the calling module. The PostgreSQL tests
/// are `#[ignore = "needs postgres …"]`; `scripts/test.sh` runs them with a
/// server it starts. The caller needs `tokio` with `macros`.
#[macro_export]
macro_rules! backend_tests {
    ($($case:ident),* $(,)?) => {
        mod sqlite {
            $(
                #[tokio::test]
                async fn $case() {
                    let db = $crate::testing::sqlite().await.expect("sqlite store");
                    super::$case(db.store.clone()).await;
                }
            )*
        }
        mod postgres {
            $(
                #[tokio::test]
                #[ignore = "needs postgres (BASE_TEST_POSTGRES_URL; run scripts/test.sh)"]
                async fn $case() {
                    let db = $crate::testing::postgres().await.expect("postgres store");
                    super::$case(db.store.clone()).await;
                }
            )*
        }
    };
}
