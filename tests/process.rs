//! The gateway as a separate process: crash safety under SIGKILL, and a real third-party
//! client (Python fhirpy) driving it unchanged.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use serde_json::json;

/// Waits (bounded: about 30 s, for a loaded machine) until the server holds at least `n` Tasks.
async fn wait_for_tasks(client: &reqwest::Client, base: &str, n: i64) {
    for _ in 0..6000 {
        let count = match client
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
        if count >= n {
            return;
        }
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    }
}

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
        let (base, stop, client) = (base.clone(), stop.clone(), server.client());
        writers.push(tokio::spawn(async move {
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
    let client = server.client();
    wait_for_tasks(&client, &base, 300).await;
    server.kill();
    stop.store(true, Ordering::SeqCst);
    let mut acknowledged = Vec::new();
    for w in writers {
        acknowledged.extend(w.await.unwrap());
    }
    // 300 were committed; the last answers of the 8 writers may not have reached them
    assert!(
        acknowledged.len() >= 300 - 8,
        "only {} creates before the kill",
        acknowledged.len()
    );
    let restarted = common::Process::start(&url).await;
    let client = restarted.client();
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

/// Runs `tests/clients/<script>` with fhirpy against a real server process on `engine`;
/// `false` when it cannot (no Python with fhirpy outside CI, or no PostgreSQL configured).
async fn run_fhirpy(script: &str, engine: common::Engine) -> bool {
    let Some(python) = python() else {
        assert!(
            std::env::var_os("CI").is_none(),
            "CI must run the fhirpy tests: scripts/test.sh installs it"
        );
        eprintln!("no Python with fhirpy (run scripts/test.sh): {script} was skipped");
        return false;
    };
    let Some((url, _guard)) = common::fresh_database(engine).await else {
        return false;
    };
    let server = common::Process::start(&url).await;
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/clients")
        .join(script);
    let (base, token) = (server.base.clone(), server.token.clone());
    let out = tokio::task::spawn_blocking(move || {
        std::process::Command::new(python)
            .arg(path)
            .arg(base)
            .arg(token)
            .output()
    })
    .await
    .unwrap()
    .expect("run python");
    assert!(
        out.status.success(),
        "{script} on {engine:?} failed:\n{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    true
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fhirpy_drives_the_gateway() {
    run_fhirpy("fhirpy_client.py", common::Engine::Sqlite).await;
}

/// The story of domain.md, played by fhirpy against the real server process.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fhirpy_plays_the_whole_admission_story() {
    for engine in [common::Engine::Sqlite, common::Engine::Postgres] {
        run_fhirpy("fhirpy_workflow_story.py", engine).await;
    }
}

/// SIGTERM: the server stops accepting, finishes what it has, exits 0; nothing answered is lost.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_finishes_requests_under_way() {
    let (url, _guard) = common::fresh_database(common::Engine::Sqlite)
        .await
        .unwrap();
    let mut server = common::Process::start(&url).await;
    let base = server.base.clone();
    let mut writers = Vec::new();
    for w in 0..4 {
        let (base, client) = (base.clone(), server.client());
        writers.push(tokio::spawn(async move {
            let mut ok = Vec::new();
            for i in 0..400 {
                let body = json!({"resourceType": "Task", "status": "requested", "intent": "order", "description": format!("{w}-{i}")});
                match client.post(format!("{base}/Task")).header("content-type", "application/fhir+json").body(body.to_string()).send().await {
                    Ok(r) => {
                        let status = r.status().as_u16();
                        // an answer that started must arrive whole
                        let v: serde_json::Value = r.json().await.expect("a complete body");
                        assert_eq!(status, 201, "{v}");
                        ok.push(v["id"].as_str().unwrap().to_owned());
                    }
                    Err(_) => break,
                }
            }
            ok
        }));
    }
    let client = server.client();
    wait_for_tasks(&client, &base, 100).await;
    let pid = server.child.id().to_string();
    let killed = std::process::Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .unwrap();
    assert!(killed.success());
    let status = tokio::task::spawn_blocking(move || {
        let s = server.child.wait();
        (server, s)
    })
    .await
    .unwrap();
    let (_server, exit) = status;
    assert!(
        exit.unwrap().success(),
        "passerelle did not exit cleanly on SIGTERM"
    );
    let mut ok = Vec::new();
    for w in writers {
        ok.extend(w.await.unwrap());
    }
    let restarted = common::Process::start(&url).await;
    let client = restarted.client();
    for id in &ok {
        let r = client
            .get(format!("{}/Task/{id}", restarted.base))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status().as_u16(), 200, "Task/{id} answered 201 but lost");
    }
}
