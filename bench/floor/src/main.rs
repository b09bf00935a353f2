//! The HTTP floor of the benchmark: `GET /` answers the bytes of a FHIR resource held in
//! memory, with the FHIR JSON content type, on the same runtime settings as the server
//! (tokio multi-thread, one worker per core). No parsing, no storage: whatever a FHIR read
//! costs above this is the server's own work.
//!
//! Usage: passerelle-bench-floor ADDR FILE   (e.g. 127.0.0.1:18081 task.json)

use axum::Router;
use axum::body::Bytes;
use axum::http::header;
use axum::routing::get;

#[tokio::main]
async fn main() {
    let mut args = std::env::args().skip(1);
    let (Some(addr), Some(file)) = (args.next(), args.next()) else {
        eprintln!("usage: passerelle-bench-floor ADDR FILE");
        std::process::exit(2);
    };
    let body = match std::fs::read(&file) {
        Ok(b) => Bytes::from(b),
        Err(e) => {
            eprintln!("passerelle-bench-floor: cannot read {file}: {e}");
            std::process::exit(2);
        }
    };
    let app = Router::new().route(
        "/",
        get(move || {
            let body = body.clone();
            async move {
                (
                    [(header::CONTENT_TYPE, "application/fhir+json; charset=utf-8")],
                    body,
                )
            }
        }),
    );
    let listener = match tokio::net::TcpListener::bind(&addr).await {
        Ok(l) => l,
        Err(e) => {
            eprintln!("passerelle-bench-floor: cannot listen on {addr}: {e}");
            std::process::exit(1);
        }
    };
    if let Err(e) = axum::serve(listener, app).await {
        eprintln!("passerelle-bench-floor: {e}");
        std::process::exit(1);
    }
}
