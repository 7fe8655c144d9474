//! The SQL pool: a SQLite file per service under the data directory by default, Postgres when
//! the configured URL says `postgres://`. Each service brings its own migrations (one folder per
//! backend where the DDL differs) and its own migrations table, so services can share a Postgres
//! database without sharing a table.

use std::borrow::Cow;
use std::path::Path;
use std::time::Duration;

use sqlx::any::AnyPoolOptions;
use sqlx::migrate::{Migration, MigrationType, Migrator};
use sqlx::{AnyPool, Executor, SqlSafeStr};

use crate::config::DatabaseConfig;

/// Times SQL calls into `automl_sql_query_duration_seconds{statement}`:
/// `query.execute(&pool).timed("insert").await`. Timing here, at the call, costs a clock read
/// and an atomic add; sqlx's own per-statement events would format every statement's text.
pub trait Timed: Future + Sized {
    /// This call, recorded under `statement` (`select`, `insert`, `update`, `delete`,
    /// `transaction`) when it completes.
    fn timed(self, statement: &'static str) -> impl Future<Output = Self::Output> {
        async move {
            if !crate::telemetry::instrumented() {
                return self.await;
            }
            let started = std::time::Instant::now();
            let output = self.await;
            sql_histogram(statement).observe(started.elapsed().as_secs_f64());
            output
        }
    }
}

impl<F: Future> Timed for F {}

/// The histogram of `statement`, resolved once for the usual kinds (every SQL call records one).
fn sql_histogram(statement: &'static str) -> &'static crate::metrics::Histogram {
    use std::sync::OnceLock;
    const KINDS: [&str; 5] = ["select", "insert", "update", "delete", "transaction"];
    static RESOLVED: [OnceLock<crate::metrics::Histogram>; 6] = [const { OnceLock::new() }; 6];
    let family = &crate::metrics::metrics().storage.sql_duration;
    // Any other kind shares the last slot, labelled `other`.
    let (index, label) = match KINDS.iter().position(|kind| *kind == statement) {
        Some(index) => (index, statement),
        None => (KINDS.len(), "other"),
    };
    RESOLVED[index].get_or_init(|| family.with(&[label]))
}

/// Which SQL dialect a pool speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    /// A SQLite file (WAL mode).
    Sqlite,
    /// A Postgres server.
    Postgres,
}

/// One migration of a service: version, description and the SQL for each backend.
#[derive(Debug, Clone, Copy)]
pub struct MigrationSource {
    /// Version, increasing from 1.
    pub version: i64,
    /// One line on what it does.
    pub description: &'static str,
    /// DDL for SQLite.
    pub sqlite: &'static str,
    /// DDL for Postgres.
    pub postgres: &'static str,
}

/// Why the database could not be opened or migrated.
#[derive(Debug, thiserror::Error)]
pub enum DbError {
    /// Connecting or a query failed.
    #[error("database: {0}")]
    Sql(#[from] sqlx::Error),
    /// A migration failed.
    #[error("database migration: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    /// The data directory could not be created.
    #[error("data directory: {0}")]
    Io(#[from] std::io::Error),
}

/// A pool and the dialect it speaks.
#[derive(Debug, Clone)]
pub struct Database {
    /// The pool; SQLite uses a single connection so writes never contend for the file lock.
    pub pool: AnyPool,
    /// The dialect, for the few statements that differ.
    pub backend: Backend,
}

impl Database {
    /// Opens the database of `service` (a short name such as `metadata_store`) and applies its
    /// migrations. With an empty URL the file is `<data_dir>/<service>.db`.
    pub async fn open(
        config: &DatabaseConfig,
        data_dir: &Path,
        service: &'static str,
        migrations: &[MigrationSource],
    ) -> Result<Self, DbError> {
        sqlx::any::install_default_drivers();
        let (url, backend) = if config.url.is_empty() {
            std::fs::create_dir_all(data_dir)?;
            let file = data_dir.join(format!("{service}.db"));
            (
                format!("sqlite://{}?mode=rwc", file.display()),
                Backend::Sqlite,
            )
        } else if config.url.starts_with("sqlite:") {
            (config.url.clone(), Backend::Sqlite)
        } else {
            (config.url.clone(), Backend::Postgres)
        };
        let options = match backend {
            Backend::Sqlite => {
                AnyPoolOptions::new()
                    .max_connections(1)
                    .after_connect(|conn, _meta| {
                        Box::pin(async move {
                            conn.execute(
                                "PRAGMA journal_mode = WAL; PRAGMA synchronous = NORMAL; \
                             PRAGMA busy_timeout = 10000; PRAGMA foreign_keys = ON;",
                            )
                            .await?;
                            Ok(())
                        })
                    })
            }
            Backend::Postgres => AnyPoolOptions::new().max_connections(config.max_connections),
        };
        let pool = options
            .acquire_timeout(Duration::from_secs(30))
            .connect(&url)
            .await?;
        let database = Self { pool, backend };
        database.migrate(service, migrations).await?;
        tracing::info!(service, backend = ?backend, "database ready");
        Ok(database)
    }

    async fn migrate(
        &self,
        service: &'static str,
        sources: &[MigrationSource],
    ) -> Result<(), DbError> {
        let migrations = sources
            .iter()
            .map(|source| {
                let sql = match self.backend {
                    Backend::Sqlite => source.sqlite,
                    Backend::Postgres => source.postgres,
                };
                Migration::new(
                    source.version,
                    Cow::Borrowed(source.description),
                    MigrationType::Simple,
                    sql.into_sql_str(),
                    false,
                )
            })
            .collect();
        let mut migrator = Migrator::with_migrations(migrations);
        migrator.dangerous_set_table_name(format!("_{service}_migrations"));
        migrator.run(&self.pool).await?;
        Ok(())
    }

    /// Closes the pool, waiting for connections in use.
    pub async fn close(&self) {
        self.pool.close().await;
    }
}

/// Whether `error` is a unique-constraint violation (a duplicate key), on either backend.
pub fn is_unique_violation(error: &sqlx::Error) -> bool {
    match error {
        sqlx::Error::Database(db) => db.is_unique_violation(),
        _ => false,
    }
}
