//! The sign-in state of `psc` mode (migration 4), shared by every instance on one database:
//! sign-ins under way (`auth_pending`), browser sessions (`auth_sessions`) and the client
//! assertion ids already used (`auth_jti`). Keys are given hashed by the caller; each call is
//! one statement or two, atomic on both engines, so two instances never both take the same
//! sign-in or both accept the same `jti`. Expired rows are purged as new ones are written.

use super::{Conn, StoreError};

/// A sign-in under way.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PendingSignIn {
    pub nonce: String,
    pub verifier: String,
    /// Microseconds.
    pub created: i64,
}

/// A browser session as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionRow {
    pub subject_name_id: String,
    /// `Practitioner/<id>`.
    pub practitioner: String,
    pub given_name: Option<String>,
    pub family_name: Option<String>,
    pub acr: String,
    pub id_token: String,
    /// Microseconds.
    pub created: i64,
    pub last_seen: i64,
}

type SessionTuple = (
    String,
    String,
    Option<String>,
    Option<String>,
    String,
    String,
    i64,
    i64,
);

fn session_of(t: SessionTuple) -> SessionRow {
    SessionRow {
        subject_name_id: t.0,
        practitioner: t.1,
        given_name: t.2,
        family_name: t.3,
        acr: t.4,
        id_token: t.5,
        created: t.6,
        last_seen: t.7,
    }
}

const SESSION_COLUMNS: &str =
    "subject_name_id, practitioner, given_name, family_name, acr, id_token, created, last_seen";

impl Conn<'_> {
    /// Keeps a new sign-in; drops those started before `expired_before`.
    pub async fn put_pending_sign_in(
        &mut self,
        state_hash: &str,
        p: &PendingSignIn,
        expired_before: i64,
    ) -> Result<(), StoreError> {
        self.before_direct_write().await?;
        let purge = "DELETE FROM auth_pending WHERE created < $1";
        let insert = "INSERT INTO auth_pending (state_hash, nonce, verifier, created) VALUES ($1, $2, $3, $4)";
        on_conn!(self, |c| {
            sqlx::query(purge)
                .bind(expired_before)
                .execute(&mut **c)
                .await?;
            sqlx::query(insert)
                .bind(state_hash)
                .bind(&p.nonce)
                .bind(&p.verifier)
                .bind(p.created)
                .execute(&mut **c)
                .await?;
        });
        Ok(())
    }

    /// Takes a sign-in (it is gone afterwards, whoever asks).
    pub async fn take_pending_sign_in(
        &mut self,
        state_hash: &str,
    ) -> Result<Option<PendingSignIn>, StoreError> {
        self.before_direct_write().await?;
        let sql =
            "DELETE FROM auth_pending WHERE state_hash = $1 RETURNING nonce, verifier, created";
        let row: Option<(String, String, i64)> = on_conn!(self, |c| {
            sqlx::query_as(sql)
                .bind(state_hash)
                .fetch_optional(&mut **c)
                .await?
        });
        Ok(row.map(|(nonce, verifier, created)| PendingSignIn {
            nonce,
            verifier,
            created,
        }))
    }

    /// Keeps a new session; drops the sessions past their limits (`idle_before`: last seen
    /// before it; `absolute_before`: created before it).
    pub async fn put_session(
        &mut self,
        id_hash: &str,
        s: &SessionRow,
        idle_before: i64,
        absolute_before: i64,
    ) -> Result<(), StoreError> {
        self.before_direct_write().await?;
        let purge = "DELETE FROM auth_sessions WHERE last_seen < $1 OR created < $2";
        let insert = format!(
            "INSERT INTO auth_sessions (id_hash, {SESSION_COLUMNS}) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)"
        );
        on_conn!(self, |c| {
            sqlx::query(purge)
                .bind(idle_before)
                .bind(absolute_before)
                .execute(&mut **c)
                .await?;
            sqlx::query(sqlx::AssertSqlSafe(insert.as_str()))
                .bind(id_hash)
                .bind(&s.subject_name_id)
                .bind(&s.practitioner)
                .bind(&s.given_name)
                .bind(&s.family_name)
                .bind(&s.acr)
                .bind(&s.id_token)
                .bind(s.created)
                .bind(s.last_seen)
                .execute(&mut **c)
                .await?;
        });
        Ok(())
    }

    /// The session, when within its limits, seen now (`last_seen = now`); a session past them
    /// is deleted and `None` returned.
    pub async fn touch_session(
        &mut self,
        id_hash: &str,
        now: i64,
        idle_before: i64,
        absolute_before: i64,
    ) -> Result<Option<SessionRow>, StoreError> {
        self.before_direct_write().await?;
        let touch = format!(
            "UPDATE auth_sessions SET last_seen = $1 WHERE id_hash = $2 AND last_seen >= $3 \
             AND created >= $4 RETURNING {SESSION_COLUMNS}"
        );
        let row: Option<SessionTuple> = on_conn!(self, |c| {
            sqlx::query_as(sqlx::AssertSqlSafe(touch.as_str()))
                .bind(now)
                .bind(id_hash)
                .bind(idle_before)
                .bind(absolute_before)
                .fetch_optional(&mut **c)
                .await?
        });
        if row.is_none() {
            let sql = "DELETE FROM auth_sessions WHERE id_hash = $1";
            on_conn!(self, |c| {
                sqlx::query(sql).bind(id_hash).execute(&mut **c).await?;
            });
        }
        Ok(row.map(session_of))
    }

    /// Ends a session; returns it if it existed.
    pub async fn end_session(&mut self, id_hash: &str) -> Result<Option<SessionRow>, StoreError> {
        self.before_direct_write().await?;
        let sql =
            format!("DELETE FROM auth_sessions WHERE id_hash = $1 RETURNING {SESSION_COLUMNS}");
        let row: Option<SessionTuple> = on_conn!(self, |c| {
            sqlx::query_as(sqlx::AssertSqlSafe(sql.as_str()))
                .bind(id_hash)
                .fetch_optional(&mut **c)
                .await?
        });
        Ok(row.map(session_of))
    }

    /// Records a client assertion id until `expires` (seconds); false when it was already
    /// recorded (a replay). Ids whose assertions expired before `expired_before` are dropped.
    pub async fn use_assertion_id(
        &mut self,
        key: &str,
        expires: i64,
        expired_before: i64,
    ) -> Result<bool, StoreError> {
        self.before_direct_write().await?;
        let purge = "DELETE FROM auth_jti WHERE expires < $1";
        let insert =
            "INSERT INTO auth_jti (key, expires) VALUES ($1, $2) ON CONFLICT (key) DO NOTHING";
        let n = on_conn!(self, |c| {
            sqlx::query(purge)
                .bind(expired_before)
                .execute(&mut **c)
                .await?;
            sqlx::query(insert)
                .bind(key)
                .bind(expires)
                .execute(&mut **c)
                .await?
                .rows_affected()
        });
        Ok(n == 1)
    }
}
