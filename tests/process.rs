//! The gateway as a separate process: crash safety under SIGKILL, and a real third-party
//! client (Python fhirpy) driving it unchanged.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use serde_json::json;

/// Every create answered 201 before a SIGKILL is there after restart.
async fn crash_safety(engine: common::Engine) {
    let Some((url, _guard)) = common::fresh_database(engine).await else {
        return;
    };
    let mut server = common::Process::start(&url).await;
    let base = server.base.clone();
    let stop = Arc::new(AtomicBool::new(false));
    let mut writers = Vec::new();
    for w in 0..8 {
        let (base, stop) = (base.clone(), stop.clone());
        writers.push(tokio::spawn(async move {
            let client = reqwest::Client::new();
            let mut acknowledged = Vec::new();
            let mut i = 0;
            while !stop.load(Ordering::SeqCst) && i < 5000 {
                i += 1;
                let body = json!({"resourceType": "Task", "status": "requested", "intent": "order",
                    "description": format!("writer {w} create {i}")});
                let sent = client
                    .post(format!("{base}/Task"))
                    .header("content-type", "application/fhir+json")
                    .body(body.to_string())
                    .send()
                    .await;
                match sent {
                    Ok(r) if r.status().as_u16() == 201 => {
                        if let Ok(v) = r.json::<serde_json::Value>().await {
                            acknowledged.push(v["id"].as_str().unwrap_or_default().to_owned());
                        }
                    }
                    _ => break, // the server is gone
                }
            }
            acknowledged
        }));
    }
    // kill once a good number of creates were acknowledged, while writers are still going
    let client = reqwest::Client::new();
    for _ in 0..2000 {
        let n = match client
            .get(format!("{base}/Task?_summary=count"))
            .send()
            .await
        {
            Ok(r) => r
                .json::<serde_json::Value>()
                .await
                .ok()
                .and_then(|v| v["total"].as_i64())
                .unwrap_or(0),
            Err(_) => 0,
        };
        if n >= 300 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    }
    server.kill();
    stop.store(true, Ordering::SeqCst);
    let mut acknowledged = Vec::new();
    for w in writers {
        acknowledged.extend(w.await.unwrap());
    }
    assert!(
        acknowledged.len() >= 300,
        "only {} creates before the kill",
        acknowledged.len()
    );
    let restarted = common::Process::start(&url).await;
    let mut missing = Vec::new();
    for id in &acknowledged {
        let r = client
            .get(format!("{}/Task/{id}", restarted.base))
            .send()
            .await
            .unwrap();
        if r.status().as_u16() != 200 {
            missing.push(id.clone());
        }
    }
    assert!(
        missing.is_empty(),
        "{} of {} acknowledged creates lost: {:?}",
        missing.len(),
        acknowledged.len(),
        &missing[..missing.len().min(5)]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_loses_no_acknowledged_create_sqlite() {
    crash_safety(common::Engine::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_loses_no_acknowledged_create_postgres() {
    crash_safety(common::Engine::Postgres).await;
}

/// The Python interpreter with fhirpy that `scripts/test.sh` prepares.
fn python() -> Option<std::path::PathBuf> {
    let p = std::env::var_os("PASSERELLE_TEST_PYTHON")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| {
            std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("target/pyenv/bin/python")
        });
    p.exists().then_some(p)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fhirpy_drives_the_gateway() {
    let Some(python) = python() else {
        assert!(
            std::env::var_os("CI").is_none(),
            "CI must run the fhirpy test: scripts/test.sh installs it"
        );
        eprintln!(
            "no Python with fhirpy (run scripts/test.sh): the third-party client test was skipped"
        );
        return;
    };
    let (url, _guard) = common::fresh_database(common::Engine::Sqlite)
        .await
        .unwrap();
    let server = common::Process::start(&url).await;
    let script =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/clients/fhirpy_client.py");
    let base = server.base.clone();
    let out = tokio::task::spawn_blocking(move || {
        std::process::Command::new(python)
            .arg(script)
            .arg(base)
            .output()
    })
    .await
    .unwrap()
    .expect("run python");
    assert!(
        out.status.success(),
        "fhirpy run failed:\n{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}
