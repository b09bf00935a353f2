//! Schema migrations: the numbered files of `migrations/{sqlite,postgres}`, embedded in the
//! binary and applied in order, each in its own transaction, recorded in `schema_migrations`.

use super::{Conn, StoreError};

struct Migration {
    version: i64,
    name: &'static str,
    sqlite: &'static str,
    postgres: &'static str,
}

const MIGRATIONS: &[Migration] = &[
    Migration {
        version: 1,
        name: "resources",
        sqlite: include_str!("../../migrations/sqlite/0001_resources.sql"),
        postgres: include_str!("../../migrations/postgres/0001_resources.sql"),
    },
    Migration {
        version: 2,
        name: "counters",
        sqlite: include_str!("../../migrations/sqlite/0002_counters.sql"),
        postgres: include_str!("../../migrations/postgres/0002_counters.sql"),
    },
    Migration {
        version: 3,
        name: "sync_state",
        sqlite: include_str!("../../migrations/sqlite/0003_sync_state.sql"),
        postgres: include_str!("../../migrations/postgres/0003_sync_state.sql"),
    },
    Migration {
        version: 4,
        name: "auth_state",
        sqlite: include_str!("../../migrations/sqlite/0004_auth_state.sql"),
        postgres: include_str!("../../migrations/postgres/0004_auth_state.sql"),
    },
    Migration {
        version: 5,
        name: "audit_events",
        sqlite: include_str!("../../migrations/sqlite/0005_audit_events.sql"),
        postgres: include_str!("../../migrations/postgres/0005_audit_events.sql"),
    },
    Migration {
        version: 6,
        name: "versions_rowid",
        sqlite: include_str!("../../migrations/sqlite/0006_versions_rowid.sql"),
        postgres: include_str!("../../migrations/postgres/0006_versions_rowid.sql"),
    },
    Migration {
        version: 7,
        name: "covering_indexes",
        sqlite: include_str!("../../migrations/sqlite/0007_covering_indexes.sql"),
        postgres: include_str!("../../migrations/postgres/0007_covering_indexes.sql"),
    },
    Migration {
        version: 8,
        name: "search_statistics",
        sqlite: include_str!("../../migrations/sqlite/0008_search_statistics.sql"),
        postgres: include_str!("../../migrations/postgres/0008_search_statistics.sql"),
    },
];

/// Creates the audit trail's table in the attached `audit` file if missing, and moves there
/// the rows of the main file's table (migration 5) before dropping it. The copy ignores rows
/// already moved, so a crash between the two files' commits only repeats it at the next start.
pub(super) async fn audit_file(conn: &mut Conn<'_>) -> Result<(), StoreError> {
    conn.execute_script(include_str!("../../migrations/sqlite/audit.sql"))
        .await?;
    if conn.main_has_table("audit_events").await? {
        conn.execute_script(
            "BEGIN IMMEDIATE;
             INSERT OR IGNORE INTO audit.audit_events SELECT * FROM main.audit_events;
             DROP TABLE main.audit_events;
             COMMIT;",
        )
        .await?;
        tracing::info!("moved the audit trail to its own file");
    }
    Ok(())
}

/// Applies the missing migrations; returns how many ran.
pub(super) async fn migrate(conn: &mut Conn<'_>, now: i64) -> Result<usize, StoreError> {
    conn.execute_script(
        "CREATE TABLE IF NOT EXISTS schema_migrations (
            version BIGINT PRIMARY KEY, name TEXT NOT NULL, applied_at BIGINT NOT NULL)",
    )
    .await?;
    // Two gateways starting together against one PostgreSQL must not both migrate.
    let is_pg = matches!(conn, Conn::Pg(_));
    if is_pg {
        conn.execute_script("SELECT pg_advisory_lock(72100001)")
            .await?;
    }
    let result = apply_missing(conn, now, is_pg).await;
    if is_pg {
        conn.execute_script("SELECT pg_advisory_unlock(72100001)")
            .await?;
    }
    result
}

async fn apply_missing(conn: &mut Conn<'_>, now: i64, is_pg: bool) -> Result<usize, StoreError> {
    let applied = conn.applied_migrations().await?;
    let mut ran = 0;
    for m in MIGRATIONS {
        if applied.contains(&m.version) {
            continue;
        }
        let script = if is_pg { m.postgres } else { m.sqlite };
        conn.execute_script("BEGIN").await?;
        let outcome = async {
            conn.execute_script(script).await?;
            conn.record_migration(m.version, m.name, now).await
        }
        .await;
        match outcome {
            Ok(()) => conn.execute_script("COMMIT").await?,
            Err(e) => {
                conn.execute_script("ROLLBACK").await?;
                return Err(StoreError::Migration {
                    version: m.version,
                    message: e.to_string(),
                });
            }
        }
        tracing::info!(version = m.version, name = m.name, "applied migration");
        ran += 1;
    }
    Ok(ran)
}
