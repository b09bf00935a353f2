//! The store seen from its callers, on both engines.

mod common;

use std::sync::Arc;

use passerelle::store::{Store, StoreError, StoreOptions};
use passerelle::time::SystemClock;

/// A write job runs to its commit even when whoever asked for it stops waiting (a client gone,
/// its request cancelled): on PostgreSQL a cancelled `begin` could otherwise leave its pooled
/// connection inside a transaction that the next borrower would run in (sqlx 0.9.0,
/// transact-rs/sqlx#4393).
async fn a_write_finishes_when_its_requester_goes_away(engine: common::Engine) {
    let Some((url, _guard)) = common::fresh_database(engine).await else {
        return;
    };
    let options = StoreOptions {
        pool_size: 2,
        sqlite_durable: true,
        sqlite_mmap_bytes: 0,
    };
    let store = Store::open(&url, &options, Arc::new(SystemClock))
        .await
        .expect("open");
    let (started_tx, started) = tokio::sync::oneshot::channel::<()>();
    let (go, go_rx) = tokio::sync::oneshot::channel::<()>();
    let requester = {
        let store = store.clone();
        tokio::spawn(async move {
            store
                .write(move |tx| {
                    Box::pin(async move {
                        // the counter's row stays locked by this transaction until it ends
                        let n = tx.next_number("abandoned").await?;
                        let _ = started_tx.send(());
                        let _ = go_rx.await;
                        Ok::<i64, StoreError>(n)
                    })
                })
                .await
        })
    };
    started.await.expect("the job started");
    // the requester goes away while its job is inside its transaction
    requester.abort();
    assert!(requester.await.is_err_and(|e| e.is_cancelled()));
    go.send(()).expect("the job still runs");
    // the next write of the same counter waits for it (the row is locked until its commit)
    let next: Result<i64, StoreError> = store
        .write(|tx| Box::pin(async move { tx.next_number("abandoned").await }))
        .await;
    assert_eq!(next.expect("next write"), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_finishes_when_its_requester_goes_away_sqlite() {
    a_write_finishes_when_its_requester_goes_away(common::Engine::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_finishes_when_its_requester_goes_away_postgres() {
    a_write_finishes_when_its_requester_goes_away(common::Engine::Postgres).await;
}
