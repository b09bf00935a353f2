//! The `sync_state` table: per external source (`ror`), the high-water mark of the last
//! completed run and a lease so that, with several instances on one PostgreSQL, one syncs
//! at a time. Used inside write jobs (`tx.conn()`), so a lease is taken atomically.

use super::{Conn, StoreError};

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SyncState {
    /// Microseconds: a delta asks for what changed since then.
    pub high_water: Option<i64>,
    /// Microseconds: when the last completed full sync started.
    pub last_full: Option<i64>,
}

impl Conn<'_> {
    async fn ensure_sync_row(&mut self, name: &str) -> Result<(), StoreError> {
        self.before_direct_write().await?;
        let sql = "INSERT INTO sync_state (name) VALUES ($1) ON CONFLICT (name) DO NOTHING";
        on_conn!(self, |c| {
            sqlx::query(sql).bind(name).execute(&mut **c).await?;
        });
        Ok(())
    }

    pub async fn sync_state(&mut self, name: &str) -> Result<SyncState, StoreError> {
        let sql = "SELECT high_water, last_full FROM sync_state WHERE name = $1";
        let row: Option<(Option<i64>, Option<i64>)> = on_conn!(self, |c| {
            sqlx::query_as(sql)
                .bind(name)
                .fetch_optional(&mut **c)
                .await?
        });
        Ok(
            row.map_or_else(SyncState::default, |(high_water, last_full)| SyncState {
                high_water,
                last_full,
            }),
        )
    }

    /// Takes (or renews) the lease of `name` for `owner` until `until`, unless another owner
    /// holds one that has not expired at `now`. Returns whether it is now `owner`'s.
    pub async fn take_sync_lease(
        &mut self,
        name: &str,
        owner: &str,
        now: i64,
        until: i64,
    ) -> Result<bool, StoreError> {
        self.ensure_sync_row(name).await?;
        let sql = "UPDATE sync_state SET lease_owner = $1, lease_until = $2 WHERE name = $3 \
                   AND (lease_owner IS NULL OR lease_owner = $1 OR lease_until < $4)";
        let n = on_conn!(self, |c| {
            sqlx::query(sql)
                .bind(owner)
                .bind(until)
                .bind(name)
                .bind(now)
                .execute(&mut **c)
                .await?
                .rows_affected()
        });
        Ok(n == 1)
    }

    pub async fn release_sync_lease(&mut self, name: &str, owner: &str) -> Result<(), StoreError> {
        self.before_direct_write().await?;
        let sql = "UPDATE sync_state SET lease_owner = NULL, lease_until = NULL \
                   WHERE name = $1 AND lease_owner = $2";
        on_conn!(self, |c| {
            sqlx::query(sql)
                .bind(name)
                .bind(owner)
                .execute(&mut **c)
                .await?;
        });
        Ok(())
    }

    /// Records a completed run: deltas start from `high_water` next time.
    pub async fn record_sync(
        &mut self,
        name: &str,
        high_water: i64,
        full: bool,
    ) -> Result<(), StoreError> {
        self.ensure_sync_row(name).await?;
        let sql = if full {
            "UPDATE sync_state SET high_water = $1, last_full = $1 WHERE name = $2"
        } else {
            "UPDATE sync_state SET high_water = $1 WHERE name = $2"
        };
        on_conn!(self, |c| {
            sqlx::query(sql)
                .bind(high_water)
                .bind(name)
                .execute(&mut **c)
                .await?;
        });
        Ok(())
    }
}
