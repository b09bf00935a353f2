//! The HTTP application: the FHIR API under `/fhir`, the operations endpoints (`/health`,
//! `/ready`, `/metrics`), the middleware (request ids, tracing, metrics, panics as 500),
//! and serving with graceful shutdown.

use std::sync::Arc;

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{any, get};
use tokio::net::TcpListener;

use crate::config::Config;
use crate::fhir::error::Error;
use crate::fhir::interaction::Fhir;
use crate::fhir::rest::{self, Edge};
use crate::fhir::search::Paging;
use crate::observe::{self, Metrics};
use crate::store::{Store, StoreOptions};
use crate::time::{Clock, SystemClock};

#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error(transparent)]
    Config(#[from] crate::config::ConfigError),
    #[error(transparent)]
    Store(#[from] crate::store::StoreError),
    #[error(transparent)]
    Conformance(#[from] crate::fhir::search::registry::RegistryError),
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: String,
        source: std::io::Error,
    },
    #[error(
        "listen = {0}: without a Pro Santé Connect issuer the gateway runs in dev auth mode, which takes the caller from a header and so binds to loopback only (127.0.0.1 or ::1)"
    )]
    DevModeNotLoopback(String),
    #[error("authentication: {0}")]
    Auth(String),
    #[error("cannot publish the conformance resources: {0}")]
    Publish(String),
    #[error(transparent)]
    Directory(#[from] crate::directory::DirectoryError),
    #[error("server error: {0}")]
    Io(#[from] std::io::Error),
}

/// Everything a running gateway holds.
#[derive(Clone)]
pub struct App {
    pub fhir: Arc<Fhir>,
    /// The audit trail's writer (every access to patient data).
    pub audit: crate::audit::Auditor,
    pub metrics: Arc<Metrics>,
    pub store: Store,
    /// `dev` or `psc` auth mode.
    pub auth: crate::auth::Authenticator,
}

impl App {
    /// Opens the store (migrating it) and loads the conformance data.
    pub async fn open(
        config: &Config,
        base: String,
        clock: Arc<dyn Clock>,
    ) -> Result<App, ServeError> {
        let store = Store::open(
            &config.database_url,
            &StoreOptions {
                pool_size: config.db_pool_size,
                sqlite_durable: config.sqlite_durable,
                sqlite_mmap_bytes: config.sqlite_mmap_mb.saturating_mul(1 << 20),
            },
            clock,
        )
        .await?;
        let fhir = Fhir::new(
            store.clone(),
            format!("{}/fhir", base.trim_end_matches('/')),
            Paging {
                default_count: config.default_page_size,
                max_count: config.max_page_size,
            },
            config.workflow.delays(),
        )?;
        let fhir = Arc::new(fhir);
        let auth =
            crate::auth::Authenticator::from_config(config, &base).map_err(ServeError::Auth)?;
        crate::fhir::conformance::publish(&fhir)
            .await
            .map_err(|e| ServeError::Publish(e.to_string()))?;
        let audit = crate::audit::Auditor::start(fhir.store.clone());
        Ok(App {
            fhir,
            audit,
            metrics: Arc::new(Metrics::default()),
            store,
            auth,
        })
    }

    pub fn router(&self, max_body_bytes: usize) -> Router {
        let edge = Arc::new(Edge {
            fhir: self.fhir.clone(),
            audit: self.audit.clone(),
            max_body_bytes,
            auth: self.auth.clone(),
        });
        let fhir_routes = Router::new()
            .route("/fhir", any(rest::handle))
            .route("/fhir/", any(rest::handle))
            .route("/fhir/{*path}", any(rest::handle))
            .with_state(edge);
        let ops = Router::new()
            .route("/health", get(|| async { "ok" }))
            .route("/ready", get(ready))
            .route("/metrics", get(metrics))
            .with_state(self.clone());
        let fhir_routes = fhir_routes.merge(crate::auth::endpoints::router(
            self.auth.gateway.clone(),
            self.fhir.clone(),
            self.audit.clone(),
        ));
        fhir_routes
            .merge(ops)
            .fallback(|| async {
                rest::error_response(&Error::NotFound(
                    "nothing here: the FHIR API is under /fhir".into(),
                ))
            })
            .layer(axum::middleware::from_fn_with_state(
                self.metrics.clone(),
                observe::middleware,
            ))
            .layer(tower_http::catch_panic::CatchPanicLayer::custom(|_| {
                rest::error_response(&Error::NotImplemented("internal error".into()))
                    .into_response()
                    .map(|b| b)
            }))
    }
}

async fn ready(State(app): State<App>) -> Response {
    match app
        .store
        .read(|c| Box::pin(async move { c.ping().await }))
        .await
    {
        Ok(()) => (StatusCode::OK, "ready").into_response(),
        Err(e) => {
            tracing::warn!(error = %e, "not ready: database unreachable");
            (StatusCode::SERVICE_UNAVAILABLE, "database unreachable").into_response()
        }
    }
}

async fn metrics(State(app): State<App>) -> Response {
    let (size, idle) = app.store.pool_state();
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        app.metrics.render(size, idle),
    )
        .into_response()
}

/// Runs the gateway until SIGINT/SIGTERM, then finishes the requests under way.
pub async fn serve(config: Config) -> Result<(), ServeError> {
    let addr = config.listen_addr()?;
    let psc_mode = config.psc.as_ref().is_some_and(|p| !p.issuer.is_empty());
    if psc_mode {
        tracing::info!("psc auth mode: the FHIR API takes bearer gateway tokens only");
    } else {
        // Dev auth mode (contract §4): anyone who can reach the port can claim any habilitation.
        if !addr.ip().is_loopback() {
            return Err(ServeError::DevModeNotLoopback(addr.to_string()));
        }
        tracing::warn!(
            "dev auth mode: callers are taken from the X-Passerelle-Role header or a registered client's token; listening on loopback only"
        );
    }
    let listener = TcpListener::bind(addr)
        .await
        .map_err(|source| ServeError::Bind {
            addr: addr.to_string(),
            source,
        })?;
    let local = listener.local_addr()?;
    let base = config
        .base_url
        .clone()
        .unwrap_or_else(|| format!("http://{local}"));
    // the mapping is checked at start, even when no sync is configured
    let (directory, ror) = crate::directory::Directory::from_config(&config.ror)?;
    let app = App::open(&config, base.clone(), Arc::new(SystemClock)).await?;
    if let Some(client) = ror {
        tracing::info!(ror = %client.base(), "ror: directory synchronisation scheduled");
        tokio::spawn(crate::directory::schedule::run_forever(
            app.fhir.clone(),
            directory,
            client,
        ));
    }
    let router = app.router(config.max_body_bytes);
    if config.workflow.timer_interval_seconds > 0 {
        crate::workflow::timers::spawn(
            app.fhir.clone(),
            std::time::Duration::from_secs(u64::from(config.workflow.timer_interval_seconds)),
        );
    }
    tracing::info!(%local, base = %base, engine = ?app.store.engine(), "passerelle listening");
    axum::serve(
        listener,
        router.into_make_service_with_connect_info::<std::net::SocketAddr>(),
    )
    .with_graceful_shutdown(shutdown_signal())
    .await?;
    // the audit events of the last requests are stored before the process ends
    app.audit.flush().await;
    tracing::info!("stopped");
    Ok(())
}

async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {},
        _ = term => {},
    }
    tracing::info!("shutting down: finishing requests under way");
}
