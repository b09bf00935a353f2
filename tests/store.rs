//! The store seen from its callers, on both engines.

mod common;

use std::sync::Arc;

use passerelle::store::{
    Arg, Check, Cmp, Filter, IndexRow, NewVersion, Query, Store, StoreError, StoreOptions, Stored,
    Table, Tx,
};
use passerelle::time::SystemClock;

/// One test per engine (`NAME::sqlite`, `NAME::postgres`) of the async fn `NAME(engine)`.
macro_rules! on_engines {
    ($scenario:ident) => {
        mod $scenario {
            #[tokio::test]
            async fn sqlite() {
                super::$scenario(crate::common::Engine::Sqlite).await;
            }

            #[tokio::test]
            async fn postgres() {
                super::$scenario(crate::common::Engine::Postgres).await;
            }
        }
    };
}

/// A store on a fresh database of `engine` (None: PostgreSQL not configured), with what keeps
/// that database alive.
async fn open(engine: common::Engine) -> Option<(Store, impl Sized)> {
    let (url, guard) = common::fresh_database(engine).await?;
    Some((open_at(&url).await, guard))
}

/// A store on the database at `url`, migrated.
async fn open_at(url: &str) -> Store {
    let options = StoreOptions {
        pool_size: 2,
        sqlite_durable: true,
        sqlite_mmap_bytes: 0,
    };
    Store::open(url, &options, Arc::new(SystemClock))
        .await
        .expect("open")
}

/// A write job runs to its commit even when whoever asked for it stops waiting (a client gone,
/// its request cancelled): on PostgreSQL a cancelled `begin` could otherwise leave its pooled
/// connection inside a transaction that the next borrower would run in (sqlx 0.9.0,
/// transact-rs/sqlx#4393).
async fn a_write_finishes_when_its_requester_goes_away(engine: common::Engine) {
    let Some((store, _guard)) = open(engine).await else {
        return;
    };
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

/// Jobs sent together (on SQLite one batch, one transaction) each keep or lose what they wrote
/// directly, alone: a failing job's counter increments are undone, so the jobs that succeed
/// get 1, 2, 3, 4 whatever their order; a job that only reads commits nothing and fails
/// nobody. On SQLite the batch's transaction begins at its first write.
async fn jobs_of_one_batch_keep_or_lose_their_own_writes(engine: common::Engine) {
    let Some((store, _guard)) = open(engine).await else {
        return;
    };
    // a batch of one job that only reads, then one that fails after writing
    let read: Result<bool, StoreError> = store
        .write(|tx| Box::pin(async move { Ok(tx.current("Patient", "nobody").await?.is_none()) }))
        .await;
    assert!(read.expect("a read-only job"));
    let failed: Result<i64, StoreError> = store
        .write(|tx| {
            Box::pin(async move {
                tx.next_number("n").await?;
                Err(StoreError::JobPanicked)
            })
        })
        .await;
    assert!(failed.is_err());
    // twelve jobs at once: every third only reads, the others alternately keep and fail
    let jobs = (0..12u32).map(|i| {
        store.write(move |tx| {
            Box::pin(async move {
                if i % 3 == 2 {
                    return Ok(tx.current("Patient", "nobody").await?.map(|_| -1));
                }
                let n = tx.next_number("n").await?;
                if i % 2 == 1 {
                    return Err(StoreError::JobPanicked);
                }
                Ok(Some(n))
            })
        })
    });
    let outcomes: Vec<Result<Option<i64>, StoreError>> = futures::future::join_all(jobs).await;
    let mut kept: Vec<i64> = outcomes
        .iter()
        .filter_map(|o| o.as_ref().ok().copied().flatten())
        .collect();
    kept.sort();
    assert_eq!(kept, [1, 2, 3, 4], "{outcomes:?}");
    assert_eq!(outcomes.iter().filter(|o| o.is_err()).count(), 4);
    let next: Result<i64, StoreError> = store
        .write(|tx| Box::pin(async move { tx.next_number("n").await }))
        .await;
    assert_eq!(next.expect("next write"), 5);
}

on_engines!(jobs_of_one_batch_keep_or_lose_their_own_writes);

/// A job's new resources whose rows cannot be written (here one claims the name of a resource
/// already stored, without having read it) fail the job, and nothing of it stays: not the
/// other resource it kept (written in the same multi-row INSERT, before the failing row), not
/// its index rows. The writer goes on.
async fn rows_that_cannot_be_written_leave_nothing(engine: common::Engine) {
    let Some((store, _guard)) = open(engine).await else {
        return;
    };
    let put = |id: &'static str| {
        let store = store.clone();
        async move {
            store
                .write(move |tx| Box::pin(async move { keep_patient(tx, id).await }))
                .await
        }
    };
    put("a").await.expect("the first write");
    let failed: Result<(), StoreError> = store
        .write(|tx| {
            Box::pin(async move {
                keep_patient(tx, "b").await?;
                keep_patient(tx, "a").await
            })
        })
        .await;
    assert!(failed.is_err(), "Patient/a is taken");
    let (b, kept, matched) = store
        .read(|c| {
            Box::pin(async move {
                let b = c.current("Patient", "b", false).await?;
                let kept = c.count(&Query::new("Patient")).await?;
                let matched = c.count(&by_code("b")).await?;
                Ok((b, kept, matched))
            })
        })
        .await
        .expect("read");
    assert!(b.is_none(), "nothing of the failed job is stored");
    assert_eq!((kept, matched), (1, 0));
    put("c").await.expect("the writer goes on");
    assert!(store.current("Patient", "c").await.expect("read").is_some());
}

/// A new resource is found through each kind of index row it was written with (on
/// PostgreSQL its rows go with it in one statement, a `VALUES` list per table).
async fn a_new_resource_is_found_by_each_kind_of_row(engine: common::Engine) {
    let Some((store, _guard)) = open(engine).await else {
        return;
    };
    let text = |s: &str| s.to_owned();
    let rows = vec![
        IndexRow::String {
            param: text("Location.name"),
            norm: text("ssr les tilleuls"),
            exact: text("SSR Les Tilleuls"),
        },
        IndexRow::Token {
            param: text("Location.identifier"),
            system: text("urn:test"),
            code: text("L1"),
        },
        IndexRow::Token {
            param: text("Location.type"),
            system: text("urn:test:type"),
            code: text("SMR"),
        },
        IndexRow::Reference {
            param: text("Location.organization"),
            target_type: text("Organization"),
            target_id: text("o1"),
        },
        IndexRow::Date {
            param: text("Location.date"),
            lo: 1_000_000,
            hi: 1_999_999,
        },
        IndexRow::Number {
            param: text("Location.near-lat"),
            lo: 45.75,
            hi: 45.75,
            system: String::new(),
            code: String::new(),
        },
        IndexRow::Uri {
            param: text("Location._profile"),
            value: text("https://passerelle.dev/fhir/StructureDefinition/location"),
        },
    ];
    let body = r#"{"resourceType":"Location","id":"l1"}"#;
    store
        .write(move |tx| {
            Box::pin(async move {
                tx.put(NewVersion {
                    rtype: "Location",
                    id: "l1",
                    previous: None,
                    version: 1,
                    method: "POST",
                    body: Some(body),
                    index: &rows,
                })
                .await
                .map(|_| ())
            })
        })
        .await
        .expect("write");
    let has = |table, param: &str, checks| Filter::Has {
        table,
        param: param.to_owned(),
        checks,
    };
    let filters = [
        has(
            Table::String,
            "Location.name",
            vec![Check::text("norm", Cmp::Eq, "ssr les tilleuls")],
        ),
        has(
            Table::Token,
            "Location.identifier",
            vec![Check::text("code", Cmp::Eq, "L1")],
        ),
        has(
            Table::Token,
            "Location.type",
            vec![Check::text("system", Cmp::Eq, "urn:test:type")],
        ),
        has(
            Table::Reference,
            "Location.organization",
            vec![Check::text("target_id", Cmp::Eq, "o1")],
        ),
        has(
            Table::Date,
            "Location.date",
            vec![Check::new("lo", Cmp::Eq, Arg::Int(1_000_000))],
        ),
        has(
            Table::Number,
            "Location.near-lat",
            vec![Check::new("hi", Cmp::Eq, Arg::Real(45.75))],
        ),
        has(
            Table::Uri,
            "Location._profile",
            vec![Check::text(
                "value",
                Cmp::Eq,
                "https://passerelle.dev/fhir/StructureDefinition/location",
            )],
        ),
    ];
    for filter in filters {
        let mut q = Query::new("Location");
        q.filters.push(filter.clone());
        let n = store
            .read(|c| Box::pin(async move { c.count(&q).await }))
            .await
            .expect("count");
        assert_eq!(n, 1, "{filter:?}");
    }
    let stored = store.current("Location", "l1").await.expect("read");
    assert_eq!(stored.and_then(|s| s.body).as_deref(), Some(body));
}

on_engines!(a_new_resource_is_found_by_each_kind_of_row);

/// An update replaces the resource's index rows, and only from the version it read: a
/// stale one fails and changes nothing (on PostgreSQL both go in one statement).
async fn an_update_replaces_the_index_rows_of_the_version_it_read(engine: common::Engine) {
    let Some((store, _guard)) = open(engine).await else {
        return;
    };
    store
        .write(|tx| Box::pin(async move { keep_patient(tx, "p").await }))
        .await
        .expect("create");
    let first = store
        .current("Patient", "p")
        .await
        .expect("read")
        .expect("stored");
    let update = |previous: Stored, code: &'static str| {
        let store = store.clone();
        async move {
            store
                .write(move |tx| {
                    Box::pin(async move {
                        put_version(tx, "p", Some(&previous), code)
                            .await
                            .map(|_| ())
                    })
                })
                .await
        }
    };
    update(first.clone(), "p-2").await.expect("update");
    let stale = update(first, "p-3").await;
    assert!(
        matches!(stale, Err(StoreError::Conflict { .. })),
        "{stale:?}"
    );
    let count = |code: &'static str| {
        let store = store.clone();
        async move {
            let q = by_code(code);
            store
                .read(|c| Box::pin(async move { c.count(&q).await }))
                .await
                .expect("count")
        }
    };
    assert_eq!(
        (count("p").await, count("p-2").await, count("p-3").await),
        (0, 1, 0)
    );
    let now = store.current("Patient", "p").await.expect("read");
    assert_eq!(now.map(|s| s.version), Some(2));
}

on_engines!(an_update_replaces_the_index_rows_of_the_version_it_read);

/// Changes kept in one batch follow each other. In one job: Patient/q created, changed, found
/// by a search inside the job (which writes what the batch holds back), changed again, and a
/// change from its first version refused; Patient/r, stored before, read, changed, and
/// changed again after the search from the version the job kept. Then twelve jobs at once (on
/// SQLite one batch, each reading what the one before kept) change q again. It ends at its
/// last version, with every version in its history and only the last one's index rows.
async fn changes_in_one_batch_follow_each_other(engine: common::Engine) {
    let Some((store, _guard)) = open(engine).await else {
        return;
    };
    store
        .write(|tx| Box::pin(async move { keep_patient(tx, "r").await }))
        .await
        .expect("Patient/r");
    store
        .write(|tx| {
            Box::pin(async move {
                let Some(r1) = tx.current("Patient", "r").await? else {
                    return Err(StoreError::JobPanicked);
                };
                let r2 = put_version(tx, "r", Some(&r1), "r-2").await?;
                let v1 = put_version(tx, "q", None, "a").await?;
                let v2 = put_version(tx, "q", Some(&v1), "b").await?;
                assert_eq!(tx.conn().count(&by_code("b")).await?, 1);
                assert_eq!(tx.conn().count(&by_code("a")).await?, 0);
                put_version(tx, "q", Some(&v2), "c").await?;
                put_version(tx, "r", Some(&r2), "r-3").await?;
                let stale = put_version(tx, "q", Some(&v1), "x").await;
                assert!(
                    matches!(stale, Err(StoreError::Conflict { .. })),
                    "{stale:?}"
                );
                let now = tx.current("Patient", "q").await?.map(|s| s.version);
                assert_eq!(now, Some(3));
                Ok::<(), StoreError>(())
            })
        })
        .await
        .expect("the first job");
    let jobs = (0..12).map(|_| {
        store.write(|tx| {
            Box::pin(async move {
                let Some(cur) = tx.current("Patient", "q").await? else {
                    return Err(StoreError::JobPanicked);
                };
                let code = format!("v{}", cur.version + 1);
                put_version(tx, "q", Some(&cur), &code)
                    .await
                    .map(|s| s.version)
            })
        })
    });
    let mut versions: Vec<i64> = futures::future::join_all(jobs)
        .await
        .into_iter()
        .collect::<Result<_, _>>()
        .expect("every change");
    versions.sort();
    assert_eq!(versions, (4..=15).collect::<Vec<_>>());
    let (history, counts) = store
        .read(|c| {
            Box::pin(async move {
                let (h, total) = c.history(Some("Patient"), Some("q"), None, 100, 0).await?;
                let mut counts = Vec::new();
                for code in ["a", "b", "c", "x", "v14", "v15", "r", "r-2", "r-3"] {
                    counts.push(c.count(&by_code(code)).await?);
                }
                Ok::<_, StoreError>((h.len() as i64 + 100 * total, counts))
            })
        })
        .await
        .expect("read back");
    assert_eq!(history, 15 + 100 * 15);
    assert_eq!(counts, [0, 0, 0, 0, 0, 1, 0, 0, 1]);
    let now = store.current("Patient", "q").await.expect("read");
    assert_eq!(now.map(|s| s.version), Some(15));
}

on_engines!(changes_in_one_batch_follow_each_other);

/// Keeps version `previous + 1` of Patient `id` (1 without one) with one identifier row `code`,
/// without looking the id up first.
async fn put_version(
    tx: &mut Tx<'_>,
    id: &str,
    previous: Option<&Stored>,
    code: &str,
) -> Result<Stored, StoreError> {
    let index = [IndexRow::Token {
        param: "Patient.identifier".into(),
        system: "urn:test".into(),
        code: code.into(),
    }];
    tx.put(NewVersion {
        rtype: "Patient",
        id,
        previous,
        version: previous.map_or(1, |p| p.version + 1),
        method: if previous.is_some() { "PUT" } else { "POST" },
        body: Some(&format!(r#"{{"resourceType":"Patient","id":"{id}"}}"#)),
        index: &index,
    })
    .await
}

/// Patients with the identifier row `code`.
fn by_code(code: &str) -> Query {
    let mut q = Query::new("Patient");
    q.filters.push(Filter::Has {
        table: Table::Token,
        param: "Patient.identifier".into(),
        checks: vec![Check::text("code", Cmp::Eq, code)],
    });
    q
}

/// Keeps a new Patient `id` with one identifier row, without looking the id up first.
async fn keep_patient(tx: &mut Tx<'_>, id: &str) -> Result<(), StoreError> {
    put_version(tx, id, None, id).await.map(|_| ())
}

on_engines!(rows_that_cannot_be_written_leave_nothing);

/// On PostgreSQL the planner has statistics on the search index tables' columns taken together
/// (migration 8): estimating them as independent, it expected 8 of an owner's 206 Tasks and
/// fetched every match's body before sorting out the first page (BENCHMARKS.md).
#[tokio::test]
async fn postgres_plans_searches_with_statistics_on_index_columns_together() {
    use sqlx::Connection;
    let Some((url, _guard)) = common::fresh_database(common::Engine::Postgres).await else {
        return;
    };
    let store = open_at(&url).await;
    let mut c = sqlx::PgConnection::connect(&url).await.expect("connect");
    let names: Vec<String> = sqlx::query_scalar(
        "SELECT stxname::text FROM pg_statistic_ext \
         WHERE stxnamespace = current_schema()::regnamespace ORDER BY 1",
    )
    .fetch_all(&mut c)
    .await
    .expect("statistics");
    assert_eq!(names, ["idx_reference_values", "idx_token_values"]);
    c.close().await.expect("close");
    drop(store);
}
