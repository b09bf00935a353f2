//! The store: resources as JSON text with every version kept, the search-index tables of the
//! current versions, and one write path.
//!
//! - Reads run on a pool (many readers).
//! - Writes run as jobs: a closure given a [`Tx`]. On SQLite one writer task runs the jobs of
//!   all concurrent requests in one database transaction and replies only after the single
//!   durable `COMMIT`: group commit. The rows of new resources are held back in a [`Batch`]
//!   and written as a few multi-row INSERTs just before the COMMIT (each statement is a hop
//!   to sqlx's worker thread, which was most of the cost); up to 128 rows go with the
//!   batch's `BEGIN IMMEDIATE` and `COMMIT` as one text ([`Script`]): one hop for a create.
//!   A failing job drops its held-back rows, and what a job writes directly goes into its own
//!   savepoint, so a failing job rolls back alone (a job alone in its batch needs none).
//! - On PostgreSQL each job is its own transaction on a pooled connection; rows of the
//!   resources being changed are locked (`FOR UPDATE`), so concurrent writers serialise per
//!   resource, and several gateways may share the database.
//!
//! The store knows SQL and versions, not FHIR rules: the FHIR layer gives it the body to keep,
//! the index rows to write and the expected current version.

mod query;
mod schema;

use std::any::Any;
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use futures::FutureExt;
use futures::future::BoxFuture;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::sqlite::{
    SqliteArguments, SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous,
};
use sqlx::{
    Arguments, AssertSqlSafe, Connection, PgConnection, PgPool, Row, SqliteConnection, SqlitePool,
};
use tokio::sync::{mpsc, oneshot};
use tracing::Instrument;

pub use query::{Arg, Check, Cmp, Filter, Query, Sort, SortKey, Table, like_escape};
pub use sync_state::SyncState;

use crate::time::{Clock, Micros, to_millis_precision};

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("database error: {0}")]
    Database(#[from] sqlx::Error),
    /// Another write changed the resource first (version or identity taken).
    #[error("conflicting concurrent write on {rtype}/{id}")]
    Conflict { rtype: String, id: String },
    #[error("migration {version} failed: {message}")]
    Migration { version: i64, message: String },
    #[error("the database writer has stopped")]
    WriterGone,
    #[error("a write job panicked")]
    JobPanicked,
    #[error("cannot open database {url}: {message}")]
    Open { url: String, message: String },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Engine {
    Sqlite,
    Postgres,
}

/// A version of a resource as kept.
#[derive(Debug, Clone)]
pub struct Stored {
    pub rid: i64,
    pub rtype: String,
    pub id: String,
    pub version: i64,
    pub last_updated: Micros,
    pub deleted: bool,
    /// The resource JSON as served; `None` for a deletion.
    pub body: Option<String>,
}

/// One row of history.
#[derive(Debug, Clone)]
pub struct HistoryEntry {
    pub rtype: String,
    pub id: String,
    pub version: i64,
    pub last_updated: Micros,
    pub method: String,
    pub body: Option<String>,
}

/// A value of a search parameter of the current version, as indexed.
#[derive(Debug, Clone, PartialEq)]
pub enum IndexRow {
    String {
        param: String,
        norm: String,
        exact: String,
    },
    Token {
        param: String,
        system: String,
        code: String,
    },
    Reference {
        param: String,
        target_type: String,
        target_id: String,
    },
    Date {
        param: String,
        lo: i64,
        hi: i64,
    },
    Number {
        param: String,
        lo: f64,
        hi: f64,
        system: String,
        code: String,
    },
    Uri {
        param: String,
        value: String,
    },
}

/// What a write job asks the store to keep.
pub struct NewVersion<'a> {
    pub rtype: &'a str,
    pub id: &'a str,
    /// The current row the write replaces (`None`: the resource is new). The write fails
    /// with [`StoreError::Conflict`] if it is no longer current.
    pub previous: Option<&'a Stored>,
    pub version: i64,
    pub method: &'a str,
    pub body: Option<&'a str>,
    pub index: &'a [IndexRow],
}

#[derive(Clone)]
pub struct Store {
    inner: Arc<Inner>,
}

struct Inner {
    backend: Backend,
    clock: Arc<dyn Clock>,
    /// Current versions recently written or read (SQLite only: one process owns the file,
    /// so it sees every write; several gateways may share a PostgreSQL).
    cache: Option<Arc<Cache>>,
}

/// Most resources the read cache keeps; past it the cache starts again empty.
const CACHE_CAPACITY: usize = 20_000;

/// The current version of recently used resources, keyed `Type/id`. Only the writer puts
/// what it wrote, after the commit; a reader puts what it read only if no write was applied
/// meanwhile (`generation`), so a slow reader cannot bring back an older version.
struct Cache {
    map: std::sync::Mutex<std::collections::HashMap<String, Arc<Stored>>>,
    generation: std::sync::atomic::AtomicU64,
}

impl Cache {
    fn key(rtype: &str, id: &str) -> String {
        let mut k = String::with_capacity(rtype.len() + id.len() + 1);
        k.push_str(rtype);
        k.push('/');
        k.push_str(id);
        k
    }

    fn get(&self, rtype: &str, id: &str) -> Option<Arc<Stored>> {
        let map = self.map.lock().ok()?;
        map.get(&Self::key(rtype, id)).cloned()
    }

    fn generation(&self) -> u64 {
        self.generation.load(std::sync::atomic::Ordering::SeqCst)
    }

    /// After a commit: what the committed jobs wrote.
    fn apply(&self, written: Vec<Stored>) {
        if written.is_empty() {
            return;
        }
        self.generation
            .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        if let Ok(mut map) = self.map.lock() {
            if map.len() + written.len() > CACHE_CAPACITY {
                map.clear();
            }
            for s in written {
                map.insert(Self::key(&s.rtype, &s.id), Arc::new(s));
            }
        }
    }

    /// A reader's result, kept only if nothing was written since `generation`.
    fn offer(&self, generation: u64, s: &Stored) {
        if let Ok(mut map) = self.map.lock()
            && self.generation() == generation
            && map.len() < CACHE_CAPACITY
        {
            map.insert(Self::key(&s.rtype, &s.id), Arc::new(s.clone()));
        }
    }
}

enum Backend {
    Sqlite {
        readers: SqlitePool,
        writer: mpsc::Sender<Job>,
    },
    Postgres {
        pool: PgPool,
        /// Reads of one resource by its key (`Store::current`, `Store::version`), on
        /// connections that keep each statement's plan (see `Store::open`).
        lookups: PgPool,
    },
}

type Erased = Box<dyn Any + Send>;
type JobFn =
    Box<dyn for<'a, 'c> FnOnce(&'a mut Tx<'c>) -> BoxFuture<'a, Result<Erased, Erased>> + Send>;

struct Job {
    run: JobFn,
    reply: oneshot::Sender<Result<Result<Erased, Erased>, StoreError>>,
    /// The requester's span: what the job logs carries its request id.
    span: tracing::Span,
}

/// Most jobs one SQLite commit carries.
const MAX_BATCH: usize = 128;
/// SQLite commits between two `PRAGMA optimize`.
const OPTIMIZE_EVERY: u64 = 5000;
/// WAL pages after which a SQLite commit copies the log back into the database file (SQLite's
/// default is 1,000). The commit that crosses the mark does the copy and an `fsync` of the
/// file before it is answered; a create writes ~30 pages (a dossier transaction several times
/// that), so at 1,000 one create in 30 paid for it. Fewer, larger checkpoints also copy a page
/// rewritten by many commits once. Measured (BENCHMARKS.md, "Fewer WAL checkpoints"):
/// creates at c=16 ×1.19, transactions at c=1 ×1.32, audited reads at c=16 ×1.08. The
/// log stays under ~40 MB per file (it is reused from its start after a checkpoint).
const WAL_AUTOCHECKPOINT_PAGES: u32 = 10_000;

#[derive(Debug, Clone)]
pub struct StoreOptions {
    pub pool_size: u32,
    /// SQLite `synchronous=FULL` (every acknowledged commit is on disk) or `NORMAL`.
    pub sqlite_durable: bool,
    /// How much of the SQLite file the readers map into memory (`PRAGMA mmap_size`); 0 reads
    /// with `pread` only.
    pub sqlite_mmap_bytes: u64,
}

impl Store {
    /// Opens (creating a SQLite file on first use) and migrates.
    pub async fn open(
        url: &str,
        options: &StoreOptions,
        clock: Arc<dyn Clock>,
    ) -> Result<Store, StoreError> {
        let open_err = |e: &dyn std::fmt::Display| StoreError::Open {
            url: redact(url),
            message: e.to_string(),
        };
        let mut cache = None;
        let backend = if url.starts_with("sqlite:") {
            let opts = SqliteConnectOptions::from_str(url)
                .map_err(|e| open_err(&e))?
                .create_if_missing(true)
                .journal_mode(SqliteJournalMode::Wal)
                .synchronous(if options.sqlite_durable {
                    SqliteSynchronous::Full
                } else {
                    SqliteSynchronous::Normal
                })
                .busy_timeout(Duration::from_secs(10))
                .pragma("cache_size", "-16000")
                // Savepoints keep a statement journal: in memory rather than a temporary file
                // written page by page. It is not part of crash recovery (the WAL is).
                .pragma("temp_store", "MEMORY");
            // the only connection that commits, so the only one that checkpoints (for the
            // main file and the attached audit file alike)
            let writer_opts = opts
                .clone()
                .pragma("wal_autocheckpoint", WAL_AUTOCHECKPOINT_PAGES.to_string());
            let mut writer_conn = SqliteConnection::connect_with(&writer_opts)
                .await
                .map_err(|e| open_err(&e))?;
            let audit_file = audit_path(opts.get_filename());
            attach_audit(&mut writer_conn, &audit_file).await?;
            {
                let mut conn = Conn::Sqlite(&mut writer_conn, None);
                schema::migrate(&mut conn, clock.now()).await?;
                let synchronous = if options.sqlite_durable {
                    "FULL"
                } else {
                    "NORMAL"
                };
                conn.execute_script(&format!(
                    "PRAGMA audit.journal_mode = WAL; PRAGMA audit.synchronous = {synchronous};"
                ))
                .await?;
                schema::audit_file(&mut conn).await?;
                // Planner statistics, so that index lookups drive searches (sqlite.org/lang_analyze.html).
                conn.execute_script("PRAGMA optimize=0x10002").await?;
            }
            // Readers share the page cache of the OS; a small private cache each keeps the
            // footprint low (the writer keeps the larger one above). In WAL mode every commit
            // empties each reader's private cache: reading through a memory map, a search then
            // costs page lookups instead of one `pread` per page (~480 for a dashboard page).
            let readers = SqlitePoolOptions::new()
                .max_connections(options.pool_size.max(1))
                // A file connection does not go stale like a socket: pinging it before each
                // read would cost one more hand-off to its worker thread per request.
                .test_before_acquire(false)
                .after_connect(move |conn, _| {
                    let file = audit_file.clone();
                    Box::pin(async move { attach_audit(conn, &file).await })
                })
                .connect_with(
                    opts.read_only(true)
                        .pragma("cache_size", "-2000")
                        .pragma("mmap_size", options.sqlite_mmap_bytes.to_string()),
                )
                .await
                .map_err(|e| open_err(&e))?;
            let (tx, rx) = mpsc::channel(1024);
            let c = Arc::new(Cache {
                map: std::sync::Mutex::new(std::collections::HashMap::new()),
                generation: std::sync::atomic::AtomicU64::new(0),
            });
            cache = Some(c.clone());
            tokio::spawn(sqlite_writer(writer_conn, rx, clock.clone(), c));
            Backend::Sqlite {
                readers,
                writer: tx,
            }
        } else {
            // Searches are the same SQL text with very different selectivities per value: a
            // generic plan (PostgreSQL's choice after five runs of a prepared statement) turns
            // a 4 ms dashboard query into 35 ms. Plan each execution with its values.
            let opts = PgConnectOptions::from_str(url).map_err(|e| open_err(&e))?;
            let pool_options = || {
                PgPoolOptions::new()
                    .max_connections(options.pool_size.max(2))
                    .acquire_timeout(Duration::from_secs(10))
            };
            let pool = pool_options()
                .connect_with(
                    opts.clone()
                        .options([("plan_cache_mode", "force_custom_plan")]),
                )
                .await
                .map_err(|e| open_err(&e))?;
            // A read by key has one good plan, and planning it again at each execution took
            // 0.17 ms of PostgreSQL's 0.2 (BENCHMARKS.md, "PostgreSQL plans a read by id
            // once"): those reads run on connections with PostgreSQL's default plan cache,
            // opened when first needed.
            let lookups = pool_options().connect_lazy_with(opts);
            let mut c = pool.acquire().await?;
            schema::migrate(&mut Conn::Pg(&mut c), clock.now()).await?;
            Backend::Postgres { pool, lookups }
        };
        Ok(Store {
            inner: Arc::new(Inner {
                backend,
                clock,
                cache,
            }),
        })
    }

    pub fn engine(&self) -> Engine {
        match self.inner.backend {
            Backend::Sqlite { .. } => Engine::Sqlite,
            Backend::Postgres { .. } => Engine::Postgres,
        }
    }

    pub fn clock(&self) -> &Arc<dyn Clock> {
        &self.inner.clock
    }

    /// Pool gauges for `/metrics`: (connections open, idle).
    pub fn pool_state(&self) -> (u32, usize) {
        match &self.inner.backend {
            Backend::Sqlite { readers, .. } => (readers.size(), readers.num_idle()),
            Backend::Postgres { pool, lookups } => (
                pool.size() + lookups.size(),
                pool.num_idle() + lookups.num_idle(),
            ),
        }
    }

    /// Runs `f` on a reading connection.
    pub async fn read<T, F>(&self, f: F) -> Result<T, StoreError>
    where
        F: for<'a, 'c> FnOnce(&'a mut Conn<'c>) -> BoxFuture<'a, Result<T, StoreError>>,
    {
        self.read_on(false, f).await
    }

    /// Runs `f` on a reading connection; on PostgreSQL, one of the `lookups` pool when
    /// `lookup` (reads by key only: those connections keep generic plans).
    async fn read_on<T, F>(&self, lookup: bool, f: F) -> Result<T, StoreError>
    where
        F: for<'a, 'c> FnOnce(&'a mut Conn<'c>) -> BoxFuture<'a, Result<T, StoreError>>,
    {
        match &self.inner.backend {
            Backend::Sqlite { readers, .. } => {
                let mut c = readers.acquire().await?;
                f(&mut Conn::Sqlite(&mut c, None)).await
            }
            Backend::Postgres { pool, lookups } => {
                let mut c = if lookup { lookups } else { pool }.acquire().await?;
                f(&mut Conn::Pg(&mut c)).await
            }
        }
    }

    /// Runs the write job `f` atomically: everything it wrote is committed (durably) before
    /// this returns `Ok`, and nothing of it is kept if it returns `Err`.
    pub async fn write<T, E, F>(&self, f: F) -> Result<T, E>
    where
        T: Send + 'static,
        E: From<StoreError> + Send + 'static,
        F: for<'a, 'c> FnOnce(&'a mut Tx<'c>) -> BoxFuture<'a, Result<T, E>> + Send + 'static,
    {
        match &self.inner.backend {
            Backend::Sqlite { writer, .. } => {
                let run: JobFn = Box::new(move |tx| {
                    Box::pin(async move {
                        match f(tx).await {
                            Ok(v) => Ok(Box::new(v) as Erased),
                            Err(e) => Err(Box::new(e) as Erased),
                        }
                    })
                });
                let (reply, rx) = oneshot::channel();
                writer
                    .send(Job {
                        run,
                        reply,
                        span: tracing::Span::current(),
                    })
                    .await
                    .map_err(|_| E::from(StoreError::WriterGone))?;
                let done = rx.await.map_err(|_| E::from(StoreError::WriterGone))?;
                match done.map_err(E::from)? {
                    Ok(v) => Ok(*v.downcast::<T>().expect("job output type")),
                    Err(e) => Err(*e.downcast::<E>().expect("job error type")),
                }
            }
            Backend::Postgres { pool, .. } => {
                // The transaction runs in a task of its own, so that a request cancelled
                // halfway (its client gone) cannot cancel it: sqlx 0.9.0 leaves a pooled
                // connection inside a transaction when `begin` is cancelled at the wrong
                // moment (transact-rs/sqlx#4393), and the next borrower would run in it. As on
                // SQLite, a write once started ends with its commit or rollback whether or not
                // anyone still waits for the answer.
                let pool = pool.clone();
                let now = to_millis_precision(self.inner.clock.now());
                let job = tokio::spawn(
                    async move {
                        let mut t = pool.begin().await.map_err(StoreError::from)?;
                        let out = {
                            let mut tx = Tx {
                                conn: Conn::Pg(&mut t),
                                now,
                                written: None,
                            };
                            f(&mut tx).await
                        };
                        match out {
                            Ok(v) => {
                                t.commit().await.map_err(StoreError::from)?;
                                Ok(v)
                            }
                            Err(e) => {
                                t.rollback().await.map_err(StoreError::from)?;
                                Err(e)
                            }
                        }
                    }
                    .in_current_span(),
                );
                match job.await {
                    Ok(out) => out,
                    Err(_) => {
                        tracing::error!("a write job panicked; its changes are rolled back");
                        Err(E::from(StoreError::JobPanicked))
                    }
                }
            }
        }
    }

    /// The current row of a resource (deleted ones included), with its body; from the read
    /// cache when it has it.
    pub async fn current(&self, rtype: &str, id: &str) -> Result<Option<Stored>, StoreError> {
        let cache = self.inner.cache.as_ref();
        if let Some(hit) = cache.and_then(|c| c.get(rtype, id)) {
            return Ok(Some((*hit).clone()));
        }
        let generation = cache.map(|c| c.generation());
        let (t, i) = (rtype.to_owned(), id.to_owned());
        let found = self
            .read_on(true, move |c| {
                Box::pin(async move { c.current(&t, &i, false).await })
            })
            .await?;
        if let (Some(c), Some(g), Some(s)) = (cache, generation, &found) {
            c.offer(g, s);
        }
        Ok(found)
    }

    /// One version of a resource.
    pub async fn version(
        &self,
        rtype: &str,
        id: &str,
        version: i64,
    ) -> Result<Option<Stored>, StoreError> {
        let (rtype, id) = (rtype.to_owned(), id.to_owned());
        self.read_on(true, move |c| {
            Box::pin(async move { c.version(&rtype, &id, version).await })
        })
        .await
    }
}

/// The file of a SQLite database's audit trail: `NAME-audit.EXT` beside `NAME.EXT`.
fn audit_path(main: &std::path::Path) -> std::path::PathBuf {
    let stem = main.file_stem().map_or_else(
        || std::ffi::OsString::from("passerelle"),
        |s| s.to_os_string(),
    );
    let mut name = stem;
    name.push("-audit");
    if let Some(ext) = main.extension() {
        name.push(".");
        name.push(ext);
    }
    main.with_file_name(name)
}

/// Attaches the audit trail's file as schema `audit` (created by the writer if missing; a
/// read-only connection attaches it read-only).
async fn attach_audit(conn: &mut SqliteConnection, file: &std::path::Path) -> sqlx::Result<()> {
    sqlx::query("ATTACH DATABASE $1 AS audit")
        .bind(file.to_string_lossy().into_owned())
        .execute(&mut *conn)
        .await?;
    Ok(())
}

/// Keeps the password out of logs and errors.
fn redact(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(s), Some(at)) if at > s => {
            let creds = &url[s + 3..at];
            match creds.find(':') {
                Some(colon) => format!("{}{}:***{}", &url[..s + 3], &creds[..colon], &url[at..]),
                None => url.to_owned(),
            }
        }
        _ => url.to_owned(),
    }
}

async fn sqlite_writer(
    mut conn: SqliteConnection,
    mut rx: mpsc::Receiver<Job>,
    clock: Arc<dyn Clock>,
    cache: Arc<Cache>,
) {
    let mut batch: Vec<Job> = Vec::with_capacity(MAX_BATCH);
    let mut commits: u64 = 0;
    // The next free `rid`: new resources are numbered here, since their rows are written only
    // at the end of the batch. Read again after any batch that did not commit.
    let mut next_rid: Option<i64> = None;
    while let Some(first) = rx.recv().await {
        batch.push(first);
        while batch.len() < MAX_BATCH {
            match rx.try_recv() {
                Ok(j) => batch.push(j),
                Err(_) => break,
            }
        }
        let mut results = Vec::with_capacity(batch.len());
        let first_rid = match next_rid {
            Some(r) => Ok(r),
            None => {
                sqlx::query_scalar::<_, i64>("SELECT COALESCE(MAX(rid), 0) + 1 FROM resources")
                    .fetch_one(&mut conn)
                    .await
            }
        };
        let first_rid = match first_rid {
            Ok(r) => r,
            Err(e) => {
                let msg = e.to_string();
                for job in batch.drain(..) {
                    let _ = job
                        .reply
                        .send(Err(StoreError::Database(sqlx::Error::Protocol(
                            msg.clone(),
                        ))));
                }
                continue;
            }
        };
        next_rid = None;
        let mut replies = Vec::with_capacity(batch.len());
        let mut written = Vec::new();
        // A job alone in its batch needs no savepoint: the transaction is its own.
        let mut rows = Batch {
            alone: batch.len() == 1,
            next_rid: first_rid,
            ..Batch::default()
        };
        for job in batch.drain(..) {
            let outcome = run_job(&mut conn, job.run, &*clock, &mut written, &mut rows)
                .instrument(job.span)
                .await;
            results.push(outcome);
            replies.push(job.reply);
        }
        let committed = if rows.broken {
            Err(sqlx::Error::Protocol(
                "rows of the batch could not be written".into(),
            ))
        } else if rows.alone && !matches!(results.first(), Some(Ok(Ok(_)))) {
            if rows.begun {
                sqlx::raw_sql("ROLLBACK")
                    .execute(&mut conn)
                    .await
                    .map(|_| ())
            } else {
                Ok(())
            }
        } else if !rows.begun && rows.done.is_empty() {
            // The jobs only read: there is nothing to commit.
            next_rid = Some(rows.next_rid);
            Ok(())
        } else {
            // The new rows of every successful job, then the one durable commit.
            match rows.flush(&mut conn, Some("COMMIT")).await {
                Err(StoreError::Database(e)) => Err(e),
                Err(other) => Err(sqlx::Error::Protocol(other.to_string())),
                Ok(()) => {
                    next_rid = Some(rows.next_rid);
                    Ok(())
                }
            }
        };
        commits += 1;
        if commits.is_multiple_of(OPTIMIZE_EVERY) {
            // Statistics follow the data as it grows; cheap when nothing changed much.
            let _ = sqlx::raw_sql("PRAGMA optimize").execute(&mut conn).await;
        }
        match committed {
            Ok(_) => {
                // readers see the new versions from the moment the writers are answered
                cache.apply(written);
                for (reply, r) in replies.into_iter().zip(results) {
                    let _ = reply.send(r);
                }
            }
            Err(e) => {
                let _ = sqlx::raw_sql("ROLLBACK").execute(&mut conn).await;
                tracing::error!(error = %e, "group commit failed; every write of the batch is refused");
                let msg = e.to_string();
                for reply in replies {
                    let _ = reply.send(Err(StoreError::Database(sqlx::Error::Protocol(
                        msg.clone(),
                    ))));
                }
            }
        }
    }
}

/// Runs one job inside the batch's transaction. The versions it keeps (new resources and
/// changes) stay in `rows.job` until the end of the batch; anything it writes to the database
/// directly (a counter, or its own rows flushed before a read) goes into `SAVEPOINT job`, so
/// that a failing job rolls back alone; unless it is `rows.alone` in the batch (the caller
/// then ends the transaction with ROLLBACK when it fails). A failing job's buffered rows are
/// simply dropped.
async fn run_job(
    conn: &mut SqliteConnection,
    run: JobFn,
    clock: &dyn Clock,
    written: &mut Vec<Stored>,
    rows: &mut Batch,
) -> Result<Result<Erased, Erased>, StoreError> {
    let now = to_millis_precision(clock.now());
    let mut job_written = Vec::new();
    rows.job.clear();
    rows.savepoint = false;
    let outcome = {
        let mut tx = Tx {
            conn: Conn::Sqlite(&mut *conn, Some(&mut *rows)),
            now,
            written: Some(&mut job_written),
        };
        // A panicking job must not take the writer (and every later write) down with it.
        match std::panic::AssertUnwindSafe(run(&mut tx))
            .catch_unwind()
            .await
        {
            Ok(outcome) => Ok(outcome),
            Err(_) => {
                tracing::error!("a write job panicked; its changes are rolled back");
                Err(StoreError::JobPanicked)
            }
        }
    };
    if matches!(outcome, Ok(Ok(_))) {
        written.append(&mut job_written);
        let mut job = std::mem::take(&mut rows.job);
        rows.done.append(&mut job);
    } else {
        rows.job.clear();
        if rows.savepoint {
            // what the job read after writing to the database may be undone now
            rows.read.clear();
            sqlx::raw_sql("ROLLBACK TO job").execute(&mut *conn).await?;
        }
    }
    if rows.savepoint {
        rows.savepoint = false;
        sqlx::raw_sql("RELEASE job").execute(&mut *conn).await?;
    }
    outcome
}

/// Versions kept by jobs of a SQLite batch and not yet written (new resources and changes of
/// stored ones): their `resources`, `versions` and index rows, and the jobs' audit events.
#[derive(Default)]
struct Rows {
    resources: Vec<NewResource>,
    /// Each row with the `rid` and version it indexes: a resource changed twice in a batch
    /// writes only its last version's rows.
    index: Vec<(i64, i64, IndexRow)>,
    audit: Vec<AuditRow>,
}

struct NewResource {
    rid: i64,
    rtype: String,
    id: String,
    version: i64,
    /// The version this one replaces; `None` for a new resource.
    previous: Option<i64>,
    last_updated: Micros,
    method: String,
    body: Option<String>,
}

impl Rows {
    fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn len(&self) -> usize {
        self.resources.len() + self.index.len() + self.audit.len()
    }

    fn clear(&mut self) {
        self.resources.clear();
        self.index.clear();
        self.audit.clear();
    }

    fn append(&mut self, other: &mut Rows) {
        self.resources.append(&mut other.resources);
        self.index.append(&mut other.index);
        self.audit.append(&mut other.audit);
    }

    fn has(&self, rtype: &str, id: &str) -> bool {
        self.find(rtype, id).is_some()
    }

    /// The latest pending version of a resource.
    fn find(&self, rtype: &str, id: &str) -> Option<&NewResource> {
        self.resources
            .iter()
            .rev()
            .find(|r| r.rtype == rtype && r.id == id)
    }

    /// Adds the rows to `script`: multi-row INSERTs, and for changed resources one UPDATE of
    /// `resources` and one DELETE of old index rows per index table, whatever their number.
    fn script(&self, script: &mut Script) -> Result<(), StoreError> {
        let (new, changed): (Vec<&NewResource>, Vec<&NewResource>) =
            self.resources.iter().partition(|r| r.previous.is_none());
        script.insert(
            "resources (rid, rtype, id, version, last_updated, deleted)",
            6,
            &new,
            |a, r| {
                a.add(r.rid)?;
                a.add(r.rtype.as_str())?;
                a.add(r.id.as_str())?;
                a.add(r.version)?;
                a.add(r.last_updated)?;
                a.add(r.body.is_none())
            },
        )?;
        if !changed.is_empty() {
            // One row per resource: the version it replaced first, the one it ends at. A
            // version that is not the one read means a job wrote from a stale read (the single
            // writer and `Batch::pending` rule that out): `version` would become NULL, which
            // fails the script and so the batch, rather than lose a version.
            // each `[rid, previous, version, last_updated, deleted]`, as the UPDATE reads it
            let mut moves: Vec<[i64; 5]> = Vec::new();
            for r in &changed {
                let (previous, gone) = (r.previous.unwrap_or(0), i64::from(r.body.is_none()));
                match moves.iter_mut().find(|m| m[0] == r.rid) {
                    Some(m) => {
                        m[2] = r.version;
                        m[3] = r.last_updated;
                        m[4] = gone;
                    }
                    None => moves.push([r.rid, previous, r.version, r.last_updated, gone]),
                }
            }
            let rids: Vec<i64> = moves.iter().map(|m| m[0]).collect();
            script.with_json(
                "UPDATE OR FAIL resources SET version = CASE resources.version \
                 WHEN u.previous THEN u.version END, last_updated = u.at, deleted = u.gone \
                 FROM (SELECT value ->> 0 AS rid, value ->> 1 AS previous, value ->> 2 AS version, \
                 value ->> 3 AS at, value ->> 4 AS gone FROM json_each(?)) AS u \
                 WHERE resources.rid = u.rid",
                &moves,
            )?;
            for table in &INDEX_TABLES {
                let sql = format!(
                    "DELETE FROM {} WHERE rid IN (SELECT value FROM json_each(?))",
                    table.name
                );
                script.with_json(&sql, &rids)?;
            }
        }
        script.insert(
            "versions (rid, version, last_updated, method, body)",
            5,
            &self.resources,
            |a, r| {
                a.add(r.rid)?;
                a.add(r.version)?;
                a.add(r.last_updated)?;
                a.add(r.method.as_str())?;
                a.add(r.body.as_deref())
            },
        )?;
        // each resource's last version (later entries win)
        let last: std::collections::HashMap<i64, i64> = if changed.is_empty() {
            Default::default()
        } else {
            self.resources.iter().map(|r| (r.rid, r.version)).collect()
        };
        let mut by_table: [Vec<(i64, &IndexRow)>; 6] = Default::default();
        for (rid, version, row) in &self.index {
            if last.is_empty() || last.get(rid) == Some(version) {
                by_table[index_slot(row)].push((*rid, row));
            }
        }
        for (table, rows) in INDEX_TABLES.iter().zip(&by_table) {
            if rows.is_empty() {
                continue;
            }
            script.insert(&table.target(), table.count, rows, |a, (rid, row)| {
                a.add(*rid)?;
                for arg in index_args(row) {
                    match arg {
                        Arg::Text(t) => a.add(t)?,
                        Arg::Int(n) => a.add(n)?,
                        Arg::Real(x) => a.add(x)?,
                    }
                }
                Ok(())
            })?;
        }
        audit::script(script, &self.audit)
    }
}

/// The most rows a [`Script`] sends as one text: one request's rows (a create has ~20, a
/// dossier transaction ~100) or a few requests'. A larger script (a batch of many creates,
/// the conformance resources published at start, a seeding Bundle, a full audit batch) goes
/// statement by statement: its shape rarely repeats, and preparing its long INSERTs again
/// cost more than the hand-offs saved; its arguments copied all at once also left a peak
/// that the allocator kept (+6 MB idle memory).
const COMBINE_MAX_ROWS: usize = 128;

/// SQLite statements for the writer's connection. Each statement sent to sqlx is a hand-off
/// to its worker thread, which wakes two threads: with one per INSERT these wake-ups were
/// about a third of a create's CPU time at concurrency 1 (BENCHMARKS.md). So a script of up
/// to [`COMBINE_MAX_ROWS`] rows goes as one text (`combine`): the rows of one request, or of
/// a few, have shapes that repeat, and sqlx keeps them prepared. A larger one sends each
/// statement alone, and the few texts that `chunks` makes stay prepared.
struct Script {
    combine: bool,
    statements: Vec<(String, SqliteArguments)>,
}

impl Script {
    fn new(combine: bool) -> Self {
        Script {
            combine,
            statements: Vec::new(),
        }
    }

    fn is_empty(&self) -> bool {
        self.statements.is_empty()
    }

    /// Where the next statement goes: the one text when combining, else a new one.
    fn next(&mut self) -> &mut (String, SqliteArguments) {
        if !self.combine || self.statements.is_empty() {
            self.statements.push(Default::default());
        }
        let last = self.statements.len() - 1;
        &mut self.statements[last]
    }

    /// A statement without arguments (`SAVEPOINT job`, `COMMIT`).
    fn statement(&mut self, sql: &str) {
        let (text, _) = self.next();
        text.push_str(sql);
        text.push_str(";\n");
    }

    /// A statement whose one `?` is `value` as JSON text, for `json_each`: one text however
    /// many values it carries.
    fn with_json<T: serde::Serialize>(&mut self, sql: &str, value: &T) -> Result<(), StoreError> {
        let json = serde_json::to_string(value)
            .map_err(|e| StoreError::Database(sqlx::Error::Encode(Box::new(e))))?;
        let (text, args) = self.next();
        text.push_str(sql);
        text.push_str(";\n");
        args.add(json)
            .map_err(|e| StoreError::Database(sqlx::Error::Encode(e)))
    }

    /// `sql` before everything else (`BEGIN IMMEDIATE`).
    fn prepend(&mut self, sql: &str) {
        match self.statements.first_mut() {
            Some((text, _)) if self.combine => text.insert_str(0, &format!("{sql};\n")),
            _ => self
                .statements
                .insert(0, (sql.to_owned(), Default::default())),
        }
    }

    /// INSERTs into `target` (`t (c1, c2, …)`) of `rows` in runs of fixed sizes, each row's
    /// `columns` values added by `add`, in order, to SQLite's anonymous `?` placeholders.
    ///
    /// Written `INSERT OR FAIL`: a multi-row INSERT that may abort makes SQLite copy every
    /// page it changes into a statement journal first, so that the statement alone can be
    /// undone (8 % of the writer thread at c=16, BENCHMARKS.md "Multi-row INSERTs without a
    /// statement journal"). Nothing needs that here: a script that fails breaks its whole
    /// batch (`Batch::broken`), which then rolls back.
    fn insert<T>(
        &mut self,
        target: &str,
        columns: usize,
        rows: &[T],
        mut add: impl FnMut(&mut SqliteArguments, &T) -> Result<(), sqlx::error::BoxDynError>,
    ) -> Result<(), StoreError> {
        let head = format!("INSERT OR FAIL INTO {target} VALUES ");
        for chunk in chunks(rows) {
            let (text, args) = self.next();
            text.push_str(&values_sql(&head, columns, chunk.len(), true));
            text.push_str(";\n");
            for r in chunk {
                add(args, r).map_err(|e| StoreError::Database(sqlx::Error::Encode(e)))?;
            }
        }
        Ok(())
    }

    /// Runs every statement in order; the first failure stops the rest.
    async fn run(self, conn: &mut SqliteConnection) -> Result<(), StoreError> {
        for (text, args) in self.statements {
            sqlx::query_with(AssertSqlSafe(text), args)
                .execute(&mut *conn)
                .await?;
        }
        Ok(())
    }
}

/// Splits rows into runs of 64, 32, …, 2 or 1 rows: few statements (7 rows are 4 + 2 + 1),
/// and at most seven SQL texts per table, which sqlx keeps prepared.
fn chunks<T>(mut rows: &[T]) -> impl Iterator<Item = &[T]> {
    std::iter::from_fn(move || {
        let n = [64, 32, 16, 8, 4, 2, 1]
            .into_iter()
            .find(|&n| rows.len() >= n)?;
        let (head, rest) = rows.split_at(n);
        rows = rest;
        Some(head)
    })
}

/// `head` followed by `rows` groups of `columns` placeholders: `$n` (both engines), or
/// SQLite's anonymous `?` when `positional` (with numbered or named ones, sqlx's bind asks
/// sqlite3_bind_parameter_name for each, which scans every parameter: quadratic in a
/// multi-row INSERT).
fn values_sql(head: &str, columns: usize, rows: usize, positional: bool) -> String {
    use std::fmt::Write;
    let mut sql = String::with_capacity(head.len() + rows * columns * 5);
    sql.push_str(head);
    let mut n = 0;
    for r in 0..rows {
        sql.push_str(if r == 0 { "(" } else { ", (" });
        for c in 0..columns {
            n += 1;
            let sep = if c == 0 { "" } else { ", " };
            if positional {
                let _ = write!(sql, "{sep}?");
            } else {
                let _ = write!(sql, "{sep}${n}");
            }
        }
        sql.push(')');
    }
    sql
}

/// A search index table: its name, its columns as an INSERT names them, and how many
/// (`rid` included).
struct IndexTable {
    name: &'static str,
    columns: &'static str,
    count: usize,
}

impl IndexTable {
    /// What an INSERT names: `t (c1, c2, …)`.
    fn target(&self) -> String {
        format!("{} {}", self.name, self.columns)
    }
}

/// The index tables, in the order of [`index_slot`].
const INDEX_TABLES: [IndexTable; 6] = [
    IndexTable {
        name: "idx_string",
        columns: "(rid, param, norm, exact)",
        count: 4,
    },
    IndexTable {
        name: "idx_token",
        columns: "(rid, param, system, code)",
        count: 4,
    },
    IndexTable {
        name: "idx_reference",
        columns: "(rid, param, target_type, target_id)",
        count: 4,
    },
    IndexTable {
        name: "idx_date",
        columns: "(rid, param, lo, hi)",
        count: 4,
    },
    IndexTable {
        name: "idx_number",
        columns: "(rid, param, lo, hi, system, code)",
        count: 6,
    },
    IndexTable {
        name: "idx_uri",
        columns: "(rid, param, value)",
        count: 3,
    },
];

/// An index row's table, as its place in [`INDEX_TABLES`].
fn index_slot(row: &IndexRow) -> usize {
    match row {
        IndexRow::String { .. } => 0,
        IndexRow::Token { .. } => 1,
        IndexRow::Reference { .. } => 2,
        IndexRow::Date { .. } => 3,
        IndexRow::Number { .. } => 4,
        IndexRow::Uri { .. } => 5,
    }
}

/// A value bound to [`version_pg`]'s statement: one value, or one column of a table's index
/// rows as an array.
enum PgArg {
    One(Arg),
    Texts(Vec<String>),
    Ints(Vec<i64>),
    Reals(Vec<f64>),
}

/// A version (a deletion too: no body, no index rows) on PostgreSQL as one statement: the
/// `resources` row inserted
/// (a new resource) or moved on (an update, only from the version it replaces), the version,
/// the old index rows deleted and the new ones inserted, each table's from its columns bound
/// as arrays (`UNNEST`), so that the text depends only on which tables get rows and stays
/// prepared. Each statement is a round trip: a Task's create made five between `BEGIN` and
/// `COMMIT`, an update eleven (BENCHMARKS.md, "A new resource in one statement on
/// PostgreSQL"). The sub-statements see the same snapshot, so the deletions take the old rows
/// only. It returns no row, and writes nothing, when the name is taken or the version is no
/// longer current.
fn version_pg(v: &NewVersion<'_>, now: Micros) -> (String, Vec<PgArg>) {
    use std::fmt::Write as _;
    // written into the text, not bound: a deletion's statement is one more text, kept prepared
    let deleted = if v.body.is_none() { "TRUE" } else { "FALSE" };
    let mut text = String::new();
    let mut args: Vec<PgArg> = Vec::new();
    /// The next placeholder, its value kept.
    fn bind(args: &mut Vec<PgArg>, a: PgArg) -> String {
        args.push(a);
        format!("${}", args.len())
    }
    match v.previous {
        None => {
            let _ = write!(
                text,
                "WITH r AS (INSERT INTO resources (rtype, id, version, last_updated, deleted) \
                 VALUES ({}, {}, {}, {}, {deleted}) ON CONFLICT (rtype, id) DO NOTHING RETURNING rid)",
                bind(&mut args, PgArg::One(Arg::Text(v.rtype.to_owned()))),
                bind(&mut args, PgArg::One(Arg::Text(v.id.to_owned()))),
                bind(&mut args, PgArg::One(Arg::Int(v.version))),
                bind(&mut args, PgArg::One(Arg::Int(now))),
            );
        }
        Some(prev) => {
            let _ = write!(
                text,
                "WITH r AS (UPDATE resources SET version = {}, last_updated = {}, deleted = {deleted} \
                 WHERE rid = {} AND version = {} RETURNING rid)",
                bind(&mut args, PgArg::One(Arg::Int(v.version))),
                bind(&mut args, PgArg::One(Arg::Int(now))),
                bind(&mut args, PgArg::One(Arg::Int(prev.rid))),
                bind(&mut args, PgArg::One(Arg::Int(prev.version))),
            );
            for (slot, table) in INDEX_TABLES.iter().enumerate() {
                let _ = write!(
                    text,
                    ", d{slot} AS (DELETE FROM {} WHERE rid IN (SELECT rid FROM r))",
                    table.name
                );
            }
        }
    }
    let _ = write!(
        text,
        ", v AS (INSERT INTO versions (rid, version, last_updated, method, body) \
         SELECT rid, {}, {}, {}, {} FROM r)",
        bind(&mut args, PgArg::One(Arg::Int(v.version))),
        bind(&mut args, PgArg::One(Arg::Int(now))),
        bind(&mut args, PgArg::One(Arg::Text(v.method.to_owned()))),
        match v.body {
            Some(body) => bind(&mut args, PgArg::One(Arg::Text(body.to_owned()))),
            None => "NULL".to_owned(),
        },
    );
    let mut by_table: [Vec<&IndexRow>; 6] = Default::default();
    for row in v.index {
        by_table[index_slot(row)].push(row);
    }
    for (slot, rows) in by_table.iter().enumerate() {
        let Some(first) = rows.first() else {
            continue;
        };
        // one array per column, typed as the first row's values (a table's are all alike)
        let mut columns: Vec<PgArg> = index_args(first)
            .iter()
            .map(|a| match a {
                Arg::Text(_) => PgArg::Texts(Vec::with_capacity(rows.len())),
                Arg::Int(_) => PgArg::Ints(Vec::with_capacity(rows.len())),
                Arg::Real(_) => PgArg::Reals(Vec::with_capacity(rows.len())),
            })
            .collect();
        for row in rows {
            for (column, arg) in columns.iter_mut().zip(index_args(row)) {
                match (column, arg) {
                    (PgArg::Texts(c), Arg::Text(t)) => c.push(t),
                    (PgArg::Ints(c), Arg::Int(n)) => c.push(n),
                    (PgArg::Reals(c), Arg::Real(x)) => c.push(x),
                    _ => {}
                }
            }
        }
        let _ = write!(
            text,
            ", i{slot} AS (INSERT INTO {} SELECT r.rid, x.* FROM r, UNNEST(",
            INDEX_TABLES[slot].target()
        );
        for (j, column) in columns.into_iter().enumerate() {
            let ty = match column {
                PgArg::Ints(_) => "BIGINT[]",
                PgArg::Reals(_) => "DOUBLE PRECISION[]",
                _ => "TEXT[]",
            };
            let placeholder = bind(&mut args, column);
            let _ = write!(
                text,
                "{}CAST({placeholder} AS {ty})",
                if j > 0 { ", " } else { "" }
            );
        }
        text.push_str(") AS x)");
    }
    text.push_str(" SELECT rid FROM r");
    (text, args)
}

/// An index row's values after its `rid`, in the order of its table's INSERT head.
fn index_args(row: &IndexRow) -> Vec<Arg> {
    let text = |v: &String| Arg::Text(v.clone());
    match row {
        IndexRow::String { param, norm, exact } => vec![text(param), text(norm), text(exact)],
        IndexRow::Token {
            param,
            system,
            code,
        } => vec![text(param), text(system), text(code)],
        IndexRow::Reference {
            param,
            target_type,
            target_id,
        } => vec![text(param), text(target_type), text(target_id)],
        IndexRow::Date { param, lo, hi } => vec![text(param), Arg::Int(*lo), Arg::Int(*hi)],
        IndexRow::Number {
            param,
            lo,
            hi,
            system,
            code,
        } => vec![
            text(param),
            Arg::Real(*lo),
            Arg::Real(*hi),
            text(system),
            text(code),
        ],
        IndexRow::Uri { param, value } => vec![text(param), text(value)],
    }
}

/// The SQLite writer's state during one batch (one transaction), lent to each job's `Tx`.
#[derive(Default)]
pub struct Batch {
    /// Rows of the batch's finished, successful jobs, not yet written.
    done: Rows,
    /// Rows of the running job, not yet written (dropped if it fails).
    job: Rows,
    /// The batch's transaction has begun (`BEGIN IMMEDIATE` comes with its first write:
    /// until then, jobs read outside a transaction, which is safe because this connection
    /// is the database's only writer).
    begun: bool,
    /// The running job is inside `SAVEPOINT job`.
    savepoint: bool,
    /// The batch has one job: no savepoint, a failure rolls the transaction back.
    alone: bool,
    /// The `rid` of the next new resource.
    next_rid: i64,
    /// Writing rows failed part way: the batch must not commit.
    broken: bool,
    /// The version of each resource (`rid`) the batch's jobs read from the database: what a
    /// change's `previous` is checked against without asking the database again. Emptied
    /// whenever the database changes under it (held-back rows written, a job rolled back).
    read: std::collections::HashMap<i64, i64>,
}

impl Batch {
    /// The latest version of a resource the batch holds back, as `current` would read it
    /// once written.
    fn pending(&self, rtype: &str, id: &str) -> Option<Stored> {
        let r = self
            .job
            .find(rtype, id)
            .or_else(|| self.done.find(rtype, id))?;
        Some(Stored {
            rid: r.rid,
            rtype: r.rtype.clone(),
            id: r.id.clone(),
            version: r.version,
            last_updated: r.last_updated,
            deleted: r.body.is_none(),
            body: r.body.clone(),
        })
    }

    /// Writes every pending row, so that the database shows what the batch has done so far
    /// (before a job reads, or at the end of the batch, where `then` is the COMMIT), in one
    /// [`Script`]. The running job's rows go inside its savepoint.
    async fn flush(
        &mut self,
        conn: &mut SqliteConnection,
        then: Option<&str>,
    ) -> Result<(), StoreError> {
        let rows = self.done.len() + self.job.len();
        let mut script = Script::new(rows <= COMBINE_MAX_ROWS);
        let mut opens = false;
        let mut begins = false;
        let result = async {
            self.done.script(&mut script)?;
            if !self.job.is_empty() {
                opens = !self.alone && !self.savepoint;
                if opens {
                    script.statement("SAVEPOINT job");
                }
                self.job.script(&mut script)?;
            }
            if let Some(sql) = then {
                script.statement(sql);
            }
            if !self.begun && !script.is_empty() {
                script.prepend("BEGIN IMMEDIATE");
                begins = true;
            }
            script.run(conn).await
        }
        .await;
        match result {
            Ok(()) => {
                // the versions read before are not the current ones for what was written
                self.read.clear();
                self.done.clear();
                self.job.clear();
                self.savepoint |= opens;
                self.begun |= begins;
            }
            // Nothing of the batch may commit now: the caller rolls it all back (the
            // transaction may have begun before the failing statement).
            Err(_) => {
                self.broken = true;
                self.begun |= begins;
            }
        }
        result
    }

    /// Before the running job writes to the database directly: the batch's transaction
    /// (begun at the first write, so that a batch of creates costs one hand-off: see
    /// [`Script`]) and the job's savepoint.
    async fn direct(&mut self, conn: &mut SqliteConnection) -> Result<(), StoreError> {
        let begins = !self.begun;
        let opens = !self.alone && !self.savepoint;
        let sql = match (begins, opens) {
            (false, false) => return Ok(()),
            (true, false) => "BEGIN IMMEDIATE",
            (false, true) => "SAVEPOINT job",
            (true, true) => "BEGIN IMMEDIATE; SAVEPOINT job",
        };
        let result = sqlx::raw_sql(sql).execute(&mut *conn).await;
        self.begun |= begins;
        match result {
            Ok(_) => {
                self.savepoint |= opens;
                Ok(())
            }
            Err(e) => {
                self.broken = true;
                Err(e.into())
            }
        }
    }
}

/// A connection of either engine. The SQL below is written once: `$n` placeholders and the
/// types used (BIGINT, TEXT, BOOLEAN, DOUBLE) mean the same on both.
pub enum Conn<'c> {
    /// Inside the SQLite writer, with the batch whose new rows are not written yet: every
    /// read writes them first (`sync`), so that a job sees what the batch did.
    Sqlite(&'c mut SqliteConnection, Option<&'c mut Batch>),
    Pg(&'c mut PgConnection),
}

/// Runs the same code on either engine; `$c` is the concrete connection.
macro_rules! on_conn {
    ($conn:expr, |$c:ident| $body:expr) => {
        match $conn {
            Conn::Sqlite($c, _) => $body,
            Conn::Pg($c) => $body,
        }
    };
}

macro_rules! bind_args {
    ($q:expr, $args:expr) => {{
        let mut q = $q;
        for a in $args {
            q = match a {
                Arg::Text(s) => q.bind(s.clone()),
                Arg::Int(i) => q.bind(*i),
                Arg::Real(f) => q.bind(*f),
            };
        }
        q
    }};
}

// after `on_conn!` and `bind_args!`, which they use
mod audit;
mod auth_state;
mod sync_state;
pub use audit::{AuditRow, LogColumn, LogQueryError, LoggedEvent};
pub use auth_state::{PendingSignIn, SessionRow};

const STORED_COLUMNS: &str = "r.rid, r.rtype, r.id, r.version, r.last_updated, r.deleted, v.body";

fn stored_from<R: Row>(row: &R) -> Result<Stored, sqlx::Error>
where
    for<'r> i64: sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
    for<'r> bool: sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
    for<'r> String: sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
    for<'r> Option<String>: sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
    usize: sqlx::ColumnIndex<R>,
{
    Ok(Stored {
        rid: row.try_get(0)?,
        rtype: row.try_get(1)?,
        id: row.try_get(2)?,
        version: row.try_get(3)?,
        last_updated: row.try_get(4)?,
        deleted: row.try_get(5)?,
        body: row.try_get(6)?,
    })
}

impl Conn<'_> {
    pub fn engine(&self) -> Engine {
        match self {
            Conn::Sqlite(..) => Engine::Sqlite,
            Conn::Pg(_) => Engine::Postgres,
        }
    }

    /// Writes the rows the SQLite batch holds back, before a read (see [`Batch`]).
    async fn sync(&mut self) -> Result<(), StoreError> {
        if let Conn::Sqlite(c, Some(b)) = self {
            b.flush(c, None).await?;
        }
        Ok(())
    }

    /// Before a job writes a table of its own directly (not a resource): inside the SQLite
    /// batch, its transaction and the job's savepoint, so that a failing job rolls back alone.
    async fn before_direct_write(&mut self) -> Result<(), StoreError> {
        if let Conn::Sqlite(c, Some(b)) = self {
            b.direct(c).await?;
        }
        Ok(())
    }

    async fn execute_script(&mut self, sql: &str) -> Result<(), StoreError> {
        on_conn!(self, |c| {
            sqlx::raw_sql(AssertSqlSafe(sql)).execute(&mut **c).await?;
        });
        Ok(())
    }

    /// Whether the main SQLite file holds the table `name`.
    async fn main_has_table(&mut self, name: &str) -> Result<bool, StoreError> {
        let sql = "SELECT COUNT(*) FROM main.sqlite_master WHERE type = 'table' AND name = $1";
        Ok(on_conn!(self, |c| {
            sqlx::query_scalar::<_, i64>(sql)
                .bind(name)
                .fetch_one(&mut **c)
                .await?
        }) > 0)
    }

    async fn applied_migrations(&mut self) -> Result<Vec<i64>, StoreError> {
        let sql = "SELECT version FROM schema_migrations";
        Ok(on_conn!(self, |c| {
            sqlx::query_scalar::<_, i64>(sql)
                .fetch_all(&mut **c)
                .await?
        }))
    }

    async fn record_migration(&mut self, v: i64, name: &str, now: i64) -> Result<(), StoreError> {
        let sql = "INSERT INTO schema_migrations (version, name, applied_at) VALUES ($1, $2, $3)";
        on_conn!(self, |c| {
            sqlx::query(sql)
                .bind(v)
                .bind(name)
                .bind(now)
                .execute(&mut **c)
                .await?;
        });
        Ok(())
    }

    /// `SELECT 1` — for `/ready`.
    pub async fn ping(&mut self) -> Result<(), StoreError> {
        self.execute_script("SELECT 1").await
    }

    /// The current row of a resource. `lock` takes a row lock on PostgreSQL (writers only).
    pub async fn current(
        &mut self,
        rtype: &str,
        id: &str,
        lock: bool,
    ) -> Result<Option<Stored>, StoreError> {
        if let Conn::Sqlite(_, Some(b)) = self {
            // The latest version the batch holds back, or else the database already has the
            // answer (no need to write the pending rows first).
            if let Some(s) = b.pending(rtype, id) {
                return Ok(Some(s));
            }
        }
        // the values cast: planned once, not at every execution (`query::Sql::bind_fixed`)
        let sql = format!(
            "SELECT {STORED_COLUMNS} FROM resources r JOIN versions v \
             ON v.rid = r.rid AND v.version = r.version \
             WHERE r.rtype = CAST($1 AS TEXT) AND r.id = CAST($2 AS TEXT)"
        );
        if let (true, Conn::Pg(c)) = (lock, &mut *self) {
            let locked = format!("{sql} FOR UPDATE OF r");
            if let Some(row) = sqlx::query(AssertSqlSafe(locked))
                .bind(rtype)
                .bind(id)
                .fetch_optional(&mut **c)
                .await?
            {
                return Ok(Some(stored_from(&row)?));
            }
            // No row: the resource is absent, or another transaction was changing it and we
            // waited for its lock: its row then comes back joined to the version it replaced,
            // which no longer matches. The lock again, alone, then a read whose snapshot holds
            // what that transaction committed.
            sqlx::query("SELECT 1 FROM resources WHERE rtype = $1 AND id = $2 FOR UPDATE")
                .bind(rtype)
                .bind(id)
                .execute(&mut **c)
                .await?;
        }
        let found = on_conn!(self, |c| {
            match sqlx::query(AssertSqlSafe(sql.as_str()))
                .bind(rtype)
                .bind(id)
                .fetch_optional(&mut **c)
                .await?
            {
                Some(row) => Some(stored_from(&row)?),
                None => None,
            }
        });
        if let (Conn::Sqlite(_, Some(b)), Some(s)) = (self, &found) {
            b.read.insert(s.rid, s.version);
        }
        Ok(found)
    }

    pub async fn version(
        &mut self,
        rtype: &str,
        id: &str,
        version: i64,
    ) -> Result<Option<Stored>, StoreError> {
        self.sync().await?;
        let sql = "SELECT r.rid, r.rtype, r.id, v.version, v.last_updated, v.body IS NULL, v.body \
             FROM resources r JOIN versions v ON v.rid = r.rid \
             WHERE r.rtype = CAST($1 AS TEXT) AND r.id = CAST($2 AS TEXT) AND v.version = $3";
        Ok(on_conn!(self, |c| {
            match sqlx::query(sql)
                .bind(rtype)
                .bind(id)
                .bind(version)
                .fetch_optional(&mut **c)
                .await?
            {
                Some(row) => Some(stored_from(&row)?),
                None => None,
            }
        }))
    }

    /// Current, not deleted resources by type and id, in no particular order.
    pub async fn many(&mut self, keys: &[(String, String)]) -> Result<Vec<Stored>, StoreError> {
        let mut out = Vec::new();
        for chunk in keys.chunks(200) {
            let mut sql = query::Sql::default();
            sql.push(&format!(
                "SELECT {STORED_COLUMNS} FROM resources r JOIN versions v \
                 ON v.rid = r.rid AND v.version = r.version WHERE r.deleted = FALSE AND ("
            ));
            for (i, (t, id)) in chunk.iter().enumerate() {
                if i > 0 {
                    sql.push(" OR ");
                }
                sql.push("(r.rtype = ");
                sql.bind(Arg::Text(t.clone()));
                sql.push(" AND r.id = ");
                sql.bind(Arg::Text(id.clone()));
                sql.push(")");
            }
            sql.push(")");
            out.extend(self.fetch_stored(&sql).await?);
        }
        Ok(out)
    }

    async fn fetch_stored(&mut self, sql: &query::Sql) -> Result<Vec<Stored>, StoreError> {
        self.sync().await?;
        Ok(on_conn!(self, |c| {
            let q = bind_args!(sqlx::query(AssertSqlSafe(sql.text.as_str())), &sql.args);
            let rows = q.fetch_all(&mut **c).await?;
            rows.iter()
                .map(stored_from)
                .collect::<Result<Vec<_>, _>>()?
        }))
    }

    /// One page of a search, in the query's order.
    pub async fn search(&mut self, q: &Query) -> Result<Vec<Stored>, StoreError> {
        self.fetch_stored(&query::select_page(q)).await
    }

    pub async fn count(&mut self, q: &Query) -> Result<i64, StoreError> {
        self.sync().await?;
        let sql = query::select_count(q);
        Ok(on_conn!(self, |c| {
            let q = bind_args!(
                sqlx::query_scalar::<_, i64>(AssertSqlSafe(sql.text.as_str())),
                &sql.args
            );
            q.fetch_one(&mut **c).await?
        }))
    }

    /// Targets of the reference parameter `param` of the resources `rids`.
    pub async fn references_of(
        &mut self,
        rids: &[i64],
        param: &str,
        target_type: Option<&str>,
    ) -> Result<Vec<(String, String)>, StoreError> {
        if rids.is_empty() {
            return Ok(Vec::new());
        }
        self.sync().await?;
        let mut sql = query::Sql::default();
        sql.push("SELECT DISTINCT target_type, target_id FROM idx_reference WHERE param = ");
        sql.bind(Arg::Text(param.to_owned()));
        if let Some(t) = target_type {
            sql.push(" AND target_type = ");
            sql.bind(Arg::Text(t.to_owned()));
        }
        sql.push(" AND rid IN ");
        sql.bind_list(rids.iter().copied().map(Arg::Int));
        Ok(on_conn!(self, |c| {
            let q = bind_args!(
                sqlx::query_as::<_, (String, String)>(AssertSqlSafe(sql.text.as_str())),
                &sql.args
            );
            q.fetch_all(&mut **c).await?
        }))
    }

    /// Current resources of `source_type` whose `param` points at one of `targets`.
    pub async fn referencing(
        &mut self,
        source_type: &str,
        param: &str,
        targets: &[(String, String)],
        limit: usize,
    ) -> Result<Vec<Stored>, StoreError> {
        if targets.is_empty() {
            return Ok(Vec::new());
        }
        let mut sql = query::Sql::default();
        sql.push(&format!(
            "SELECT {STORED_COLUMNS} FROM resources r JOIN versions v \
             ON v.rid = r.rid AND v.version = r.version WHERE r.deleted = FALSE AND r.rtype = "
        ));
        sql.bind(Arg::Text(source_type.to_owned()));
        sql.push(" AND EXISTS (SELECT 1 FROM idx_reference x WHERE x.rid = r.rid AND x.param = ");
        sql.bind(Arg::Text(param.to_owned()));
        sql.push(" AND (");
        for (i, (t, id)) in targets.iter().enumerate() {
            if i > 0 {
                sql.push(" OR ");
            }
            sql.push("(x.target_type = ");
            sql.bind(Arg::Text(t.clone()));
            sql.push(" AND x.target_id = ");
            sql.bind(Arg::Text(id.clone()));
            sql.push(")");
        }
        sql.push(")) ORDER BY r.rid");
        sql.limit(limit, 0);
        self.fetch_stored(&sql).await
    }

    /// History, newest first: of one resource (`rtype` and `id`), of a type, or of everything.
    pub async fn history(
        &mut self,
        rtype: Option<&str>,
        id: Option<&str>,
        since: Option<Micros>,
        limit: usize,
        offset: usize,
    ) -> Result<(Vec<HistoryEntry>, i64), StoreError> {
        self.sync().await?;
        let mut cond = query::Sql::default();
        cond.push(" WHERE 1 = 1");
        if let Some(t) = rtype {
            cond.push(" AND r.rtype = ");
            cond.bind(Arg::Text(t.to_owned()));
        }
        if let Some(i) = id {
            cond.push(" AND r.id = ");
            cond.bind(Arg::Text(i.to_owned()));
        }
        if let Some(s) = since {
            cond.push(" AND v.last_updated >= ");
            cond.bind(Arg::Int(s));
        }
        let from = "FROM versions v JOIN resources r ON r.rid = v.rid";
        let count_sql = format!("SELECT COUNT(*) {from}{}", cond.text);
        let mut page = query::Sql {
            text: format!(
                "SELECT r.rtype, r.id, v.version, v.last_updated, v.method, v.body {from}{} \
                 ORDER BY v.last_updated DESC, v.rid DESC, v.version DESC",
                cond.text
            ),
            args: cond.args.clone(),
        };
        page.limit(limit, offset);
        Ok(on_conn!(self, |c| {
            let total = bind_args!(
                sqlx::query_scalar::<_, i64>(AssertSqlSafe(count_sql.as_str())),
                &cond.args
            )
            .fetch_one(&mut **c)
            .await?;
            let rows = bind_args!(sqlx::query(AssertSqlSafe(page.text.as_str())), &page.args)
                .fetch_all(&mut **c)
                .await?;
            let mut out = Vec::with_capacity(rows.len());
            for row in rows {
                out.push(HistoryEntry {
                    rtype: row.try_get(0)?,
                    id: row.try_get(1)?,
                    version: row.try_get(2)?,
                    last_updated: row.try_get(3)?,
                    method: row.try_get(4)?,
                    body: row.try_get(5)?,
                });
            }
            (out, total)
        }))
    }
}

/// The write side of a job: a [`Conn`] inside a transaction, and the job's timestamp.
pub struct Tx<'c> {
    conn: Conn<'c>,
    now: Micros,
    /// What this job wrote, for the read cache once committed (SQLite only).
    written: Option<&'c mut Vec<Stored>>,
}

impl<'c> Tx<'c> {
    /// The time this job writes as `lastUpdated` (millisecond precision).
    pub fn now(&self) -> Micros {
        self.now
    }

    /// Reading inside the transaction.
    pub fn conn(&mut self) -> &mut Conn<'c> {
        &mut self.conn
    }

    /// The current row of a resource, locked against concurrent writers until commit.
    pub async fn current(&mut self, rtype: &str, id: &str) -> Result<Option<Stored>, StoreError> {
        self.conn.current(rtype, id, true).await
    }

    /// Serialises the jobs that decide on the absence of the same thing (a conditional
    /// create's criteria, a start-up publication): on PostgreSQL a transaction-scoped advisory
    /// lock on the key; SQLite's single writer already serialises everything.
    pub async fn lock_key(&mut self, key: &str) -> Result<(), StoreError> {
        if let Conn::Pg(c) = &mut self.conn {
            sqlx::query("SELECT pg_advisory_xact_lock(72100002, hashtext($1))")
                .bind(key)
                .execute(&mut **c)
                .await?;
        }
        Ok(())
    }

    /// Appends events to the audit trail (on SQLite held back with the batch's new rows, and
    /// written just before its COMMIT).
    pub async fn append_audit(&mut self, rows: Vec<AuditRow>) -> Result<(), StoreError> {
        match &mut self.conn {
            Conn::Sqlite(_, Some(b)) => {
                b.job.audit.extend(rows);
                Ok(())
            }
            _ => audit::insert(&mut self.conn, &rows).await,
        }
    }

    /// The next value of a named counter (1, 2, …), taken inside this job: never given twice
    /// once committed.
    pub async fn next_number(&mut self, name: &str) -> Result<i64, StoreError> {
        let sql = "INSERT INTO counters (name, value) VALUES ($1, 1) \
                   ON CONFLICT (name) DO UPDATE SET value = counters.value + 1 RETURNING value";
        self.conn.before_direct_write().await?;
        Ok(on_conn!(&mut self.conn, |c| {
            sqlx::query_scalar(sql)
                .bind(name)
                .fetch_one(&mut **c)
                .await?
        }))
    }

    /// Keeps a new version and replaces the resource's index rows.
    pub async fn put(&mut self, v: NewVersion<'_>) -> Result<Stored, StoreError> {
        let conflict = || StoreError::Conflict {
            rtype: v.rtype.to_owned(),
            id: v.id.to_owned(),
        };
        let now = self.now;
        if let Conn::Sqlite(c, Some(b)) = &mut self.conn {
            // The version waits for the end of the batch (or the next read that needs the
            // database to show it). The single writer serialises everything: whoever decided
            // the name was free, or read `previous`, read the database after the earlier
            // jobs' rows were written, or else their pending rows (`Conn::current`).
            let rid = match v.previous {
                None if b.done.has(v.rtype, v.id) || b.job.has(v.rtype, v.id) => {
                    return Err(conflict());
                }
                None => {
                    let rid = b.next_rid;
                    b.next_rid += 1;
                    rid
                }
                Some(prev) => {
                    // `previous` must still be the current version: as pending, as read in
                    // this batch, or else as the database has it.
                    let pending = b
                        .job
                        .find(v.rtype, v.id)
                        .or_else(|| b.done.find(v.rtype, v.id));
                    let at = match pending
                        .map(|r| r.version)
                        .or(b.read.get(&prev.rid).copied())
                    {
                        Some(at) => Some(at),
                        None => {
                            sqlx::query_scalar("SELECT version FROM resources WHERE rid = $1")
                                .bind(prev.rid)
                                .fetch_optional(&mut **c)
                                .await?
                        }
                    };
                    if at != Some(prev.version) {
                        return Err(conflict());
                    }
                    prev.rid
                }
            };
            b.job.resources.push(NewResource {
                rid,
                rtype: v.rtype.to_owned(),
                id: v.id.to_owned(),
                version: v.version,
                previous: v.previous.map(|p| p.version),
                last_updated: now,
                method: v.method.to_owned(),
                body: v.body.map(str::to_owned),
            });
            b.job
                .index
                .extend(v.index.iter().map(|row| (rid, v.version, row.clone())));
            return Ok(self.kept(rid, &v, now));
        }
        let Conn::Pg(c) = &mut self.conn else {
            // a SQLite job's `Tx` always has the writer's batch
            return Err(StoreError::Database(sqlx::Error::Protocol(
                "a SQLite write outside the writer's batch".into(),
            )));
        };
        let (text, args) = version_pg(&v, now);
        let mut q = sqlx::query_scalar(AssertSqlSafe(text));
        for a in args {
            q = match a {
                PgArg::One(Arg::Text(t)) => q.bind(t),
                PgArg::One(Arg::Int(n)) => q.bind(n),
                PgArg::One(Arg::Real(x)) => q.bind(x),
                PgArg::Texts(c) => q.bind(c),
                PgArg::Ints(c) => q.bind(c),
                PgArg::Reals(c) => q.bind(c),
            };
        }
        // no row back, or a version that takes a stored (name, version): someone else wrote
        // it first
        let rid: Option<i64> = q.fetch_optional(&mut **c).await.map_err(|e| match &e {
            sqlx::Error::Database(d) if d.is_unique_violation() => conflict(),
            _ => StoreError::from(e),
        })?;
        let rid = rid.ok_or_else(conflict)?;
        Ok(self.kept(rid, &v, now))
    }

    /// The row `put` kept, noted for the read cache.
    fn kept(&mut self, rid: i64, v: &NewVersion<'_>, now: Micros) -> Stored {
        let stored = Stored {
            rid,
            rtype: v.rtype.to_owned(),
            id: v.id.to_owned(),
            version: v.version,
            last_updated: now,
            deleted: v.body.is_none(),
            body: v.body.map(str::to_owned),
        };
        if let Some(w) = self.written.as_mut() {
            w.push(stored.clone());
        }
        stored
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn open_at(url: &str) -> Store {
        let options = StoreOptions {
            pool_size: 2,
            sqlite_durable: true,
            sqlite_mmap_bytes: 0,
        };
        Store::open(url, &options, Arc::new(crate::time::SystemClock))
            .await
            .unwrap()
    }

    #[tokio::test]
    async fn the_sqlite_writer_checkpoints_every_10000_pages() {
        let dir = std::env::temp_dir().join(format!(
            "passerelle-store-wal-{}-{}",
            std::process::id(),
            crate::time::SystemClock.now()
        ));
        std::fs::create_dir_all(&dir).unwrap();
        let url = format!("sqlite://{}", dir.join("db.sqlite").display());
        let store = open_at(&url).await;
        let pages: i64 = store
            .write(|tx| {
                Box::pin(async move {
                    let Conn::Sqlite(c, _) = &mut tx.conn else {
                        unreachable!("a SQLite store")
                    };
                    let n = sqlx::query_scalar::<_, i64>("PRAGMA wal_autocheckpoint")
                        .fetch_one(&mut **c)
                        .await?;
                    Ok::<_, StoreError>(n)
                })
            })
            .await
            .unwrap();
        assert_eq!(pages, i64::from(WAL_AUTOCHECKPOINT_PAGES));
        drop(store);
        let _ = std::fs::remove_dir_all(&dir);
    }

    /// On PostgreSQL a read by key runs on a connection that keeps its plan (the default plan
    /// cache), any other read on one that plans each execution with its values.
    #[tokio::test]
    async fn postgres_plans_reads_by_key_once_and_searches_at_each_execution() {
        use sqlx::Connection;
        let Ok(url) = std::env::var("TEST_DATABASE_URL") else {
            eprintln!("TEST_DATABASE_URL is not set: the PostgreSQL unit test was skipped");
            return;
        };
        // a schema of its own, left by a failed run at worst until the next
        let schema = "unit_test_plans";
        let mut admin = sqlx::PgConnection::connect(&url).await.unwrap();
        sqlx::raw_sql(AssertSqlSafe(format!(
            "DROP SCHEMA IF EXISTS {schema} CASCADE; CREATE SCHEMA {schema}"
        )))
        .execute(&mut admin)
        .await
        .unwrap();
        let sep = if url.contains('?') { '&' } else { '?' };
        let scoped = format!("{url}{sep}options=-c%20search_path%3D{schema}");
        let store = open_at(&scoped).await;
        let Backend::Postgres { lookups, .. } = &store.inner.backend else {
            unreachable!("a PostgreSQL store")
        };
        assert_eq!(lookups.size(), 0, "opened when first needed");
        assert!(store.current("Task", "absent").await.unwrap().is_none());
        assert!(store.version("Task", "absent", 1).await.unwrap().is_none());
        assert!(lookups.size() > 0, "reads by key take the lookups pool");
        let mode = |lookup: bool| {
            store.read_on(lookup, |c| {
                Box::pin(async move {
                    let Conn::Pg(c) = c else {
                        unreachable!("a PostgreSQL store")
                    };
                    Ok(sqlx::query_scalar::<_, String>("SHOW plan_cache_mode")
                        .fetch_one(&mut **c)
                        .await?)
                })
            })
        };
        assert_eq!(mode(true).await.unwrap(), "auto");
        assert_eq!(mode(false).await.unwrap(), "force_custom_plan");
        drop(store);
        sqlx::raw_sql(AssertSqlSafe(format!("DROP SCHEMA {schema} CASCADE")))
            .execute(&mut admin)
            .await
            .unwrap();
    }

    #[test]
    fn passwords_are_redacted() {
        assert_eq!(
            super::redact("postgres://u:secret@h:5432/db"),
            "postgres://u:***@h:5432/db"
        );
        assert_eq!(super::redact("postgres://u@h/db"), "postgres://u@h/db");
        assert_eq!(super::redact("sqlite://x.db"), "sqlite://x.db");
    }
}
