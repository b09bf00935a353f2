//! Observability: request metrics in the Prometheus text format, and the request-id span
//! every log line of a request carries.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use axum::extract::{Request, State};
use axum::http::HeaderValue;
use axum::middleware::Next;
use axum::response::Response;
use tracing::Instrument;

/// Upper bounds of the latency histogram, in seconds.
const BUCKETS: [f64; 12] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 5.0,
];
const METHODS: [&str; 6] = ["GET", "POST", "PUT", "PATCH", "DELETE", "OTHER"];
const CLASSES: [&str; 5] = ["1xx", "2xx", "3xx", "4xx", "5xx"];

#[derive(Default)]
pub struct Metrics {
    requests: [[AtomicU64; 5]; 6],
    buckets: [AtomicU64; BUCKETS.len()],
    count: AtomicU64,
    sum_micros: AtomicU64,
}

impl Metrics {
    fn record(&self, method: &str, status: u16, seconds: f64) {
        let m = METHODS.iter().position(|x| *x == method).unwrap_or(5);
        let c = (status / 100).clamp(1, 5) as usize - 1;
        self.requests[m][c].fetch_add(1, Ordering::Relaxed);
        for (i, b) in BUCKETS.iter().enumerate() {
            if seconds <= *b {
                self.buckets[i].fetch_add(1, Ordering::Relaxed);
            }
        }
        self.count.fetch_add(1, Ordering::Relaxed);
        self.sum_micros
            .fetch_add((seconds * 1e6) as u64, Ordering::Relaxed);
    }

    /// The Prometheus exposition, with the database pool gauges given.
    pub fn render(&self, pool_size: u32, pool_idle: usize) -> String {
        use std::fmt::Write;
        let mut out = String::new();
        out.push_str("# HELP passerelle_http_requests_total HTTP requests answered.\n");
        out.push_str("# TYPE passerelle_http_requests_total counter\n");
        for (m, row) in self.requests.iter().enumerate() {
            for (c, n) in row.iter().enumerate() {
                let n = n.load(Ordering::Relaxed);
                if n > 0 {
                    let _ = writeln!(
                        out,
                        "passerelle_http_requests_total{{method=\"{}\",status=\"{}\"}} {n}",
                        METHODS[m], CLASSES[c]
                    );
                }
            }
        }
        out.push_str("# HELP passerelle_http_request_duration_seconds Time to answer.\n");
        out.push_str("# TYPE passerelle_http_request_duration_seconds histogram\n");
        for (i, b) in BUCKETS.iter().enumerate() {
            let _ = writeln!(
                out,
                "passerelle_http_request_duration_seconds_bucket{{le=\"{b}\"}} {}",
                self.buckets[i].load(Ordering::Relaxed)
            );
        }
        let count = self.count.load(Ordering::Relaxed);
        let _ = writeln!(
            out,
            "passerelle_http_request_duration_seconds_bucket{{le=\"+Inf\"}} {count}"
        );
        let _ = writeln!(
            out,
            "passerelle_http_request_duration_seconds_sum {}",
            self.sum_micros.load(Ordering::Relaxed) as f64 / 1e6
        );
        let _ = writeln!(
            out,
            "passerelle_http_request_duration_seconds_count {count}"
        );
        out.push_str("# HELP passerelle_db_pool_connections Database connections open.\n");
        out.push_str("# TYPE passerelle_db_pool_connections gauge\n");
        let _ = writeln!(out, "passerelle_db_pool_connections {pool_size}");
        out.push_str("# HELP passerelle_db_pool_idle Database connections idle.\n");
        out.push_str("# TYPE passerelle_db_pool_idle gauge\n");
        let _ = writeln!(out, "passerelle_db_pool_idle {pool_idle}");
        out
    }
}

/// Gives each request an id (the client's `X-Request-Id` if sane, else a new one), a
/// tracing span carrying it, an access log line and its metrics.
pub async fn middleware(
    State(metrics): State<Arc<Metrics>>,
    mut req: Request,
    next: Next,
) -> Response {
    let id = req
        .headers()
        .get("x-request-id")
        .and_then(|v| v.to_str().ok())
        .filter(|v| v.len() <= 64 && v.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-'))
        .map(str::to_owned)
        .unwrap_or_else(|| uuid::Uuid::new_v4().simple().to_string());
    if let Ok(h) = HeaderValue::from_str(&id) {
        req.headers_mut().insert("x-request-id", h);
    }
    let method = req.method().as_str().to_owned();
    // The path only: query strings may carry patient identifiers.
    let path = req.uri().path().to_owned();
    let span = tracing::info_span!("request", request_id = %id, method = %method, path = %path);
    let start = Instant::now();
    let mut resp = next.run(req).instrument(span.clone()).await;
    let elapsed = start.elapsed().as_secs_f64();
    metrics.record(&method, resp.status().as_u16(), elapsed);
    span.in_scope(|| {
        tracing::info!(
            status = resp.status().as_u16(),
            micros = (elapsed * 1e6) as u64,
            "answered"
        )
    });
    if let Ok(h) = HeaderValue::from_str(&id) {
        resp.headers_mut().insert("x-request-id", h);
    }
    resp
}
