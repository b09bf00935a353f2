//! `passerelle demo`: the real binary loads the data set into a fresh database; the data set
//! is then read back through the FHIR layer: dossiers with numbers, requests in every
//! business status (archived included), valid INS keys; a second run is refused and changes
//! nothing. On SQLite, and on PostgreSQL when `TEST_DATABASE_URL` is set.

mod common;

use std::process::{Command, Output};
use std::sync::Arc;

use axum::http::Method;
use common::{Engine, fresh_database};
use passerelle::auth::Caller;
use passerelle::config::Config;
use passerelle::demo::nir_key;
use passerelle::fhir::interaction::{self, Body, Req};
use passerelle::server::App;
use passerelle::time::SystemClock;
use passerelle::workflow::rules::{DOSSIER_SYSTEM, code_system};
use serde_json::Value;

const SR_PROFILE: &str = "https://passerelle.dev/fhir/StructureDefinition/AdmissionRequest";
const TAG_SYSTEM: &str = "https://passerelle.dev/fhir/CodeSystem/task-tag";
const INS_TEST: &str = "urn:oid:1.2.250.1.213.1.4.10";

fn demo(url: &str, args: &[&str]) -> Output {
    demo_with(url, args, &[])
}

fn demo_with(url: &str, args: &[&str], env: &[(&str, &str)]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_passerelle"))
        .env_remove("PASSERELLE_CONFIG")
        .env("DATABASE_URL", url)
        .envs(env.iter().copied())
        .arg("demo")
        .args(args)
        .output()
        .expect("run passerelle demo")
}

async fn get(app: &App, path: &str) -> Value {
    let (p, q) = path.split_once('?').unwrap_or((path, ""));
    let mut req = Req::new(Method::GET, interaction::route(p).expect("route"));
    req.query = interaction::parse_query_string(q);
    req.caller = Caller::System("test".into());
    let resp = interaction::run(&app.fhir, req).await.expect(path);
    match resp.body {
        Body::Raw(s) => serde_json::from_str(&s).expect("json"),
        Body::Json(v) => v,
        other => panic!("{path}: {other:?}"),
    }
}

async fn count(app: &App, query: &str) -> u64 {
    let sep = if query.contains('?') { '&' } else { '?' };
    get(app, &format!("{query}{sep}_summary=count")).await["total"]
        .as_u64()
        .unwrap_or(0)
}

fn entries(bundle: &Value) -> Vec<Value> {
    bundle["entry"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|e| e["resource"].clone())
        .collect()
}

async fn scenario(engine: Engine, n: usize) {
    let Some((url, _guard)) = fresh_database(engine).await else {
        return;
    };
    let n_arg = n.to_string();
    let out = demo(&url, &["--dossiers", &n_arg, "--seed", "7"]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{engine:?}: {}\n{stdout}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains(&format!("{n} dossiers")), "{stdout}");
    assert!(stdout.contains("X-Passerelle-Role"), "{stdout}");

    // a second run is refused, names the database, and writes nothing
    let again = demo(&url, &["--dossiers", &n_arg, "--seed", "7"]);
    assert!(!again.status.success());
    let err = String::from_utf8_lossy(&again.stderr);
    assert!(err.contains("already"), "{err}");
    let shown = passerelle::demo::display_url(&url);
    assert!(err.contains(&shown), "{err} should name {shown}");

    let config = Config {
        database_url: url.clone(),
        db_pool_size: 2,
        ..Config::default()
    };
    let app = App::open(&config, "http://127.0.0.1:1".into(), Arc::new(SystemClock))
        .await
        .expect("open the demo database");

    // n dossiers, each with its number
    let srs = entries(
        &get(
            &app,
            &format!("ServiceRequest?_profile={SR_PROFILE}&_count=1000"),
        )
        .await,
    );
    assert_eq!(srs.len(), n, "{engine:?}: nothing duplicated");
    for sr in &srs {
        let number = sr["identifier"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|i| i["system"] == DOSSIER_SYSTEM);
        assert!(number.is_some(), "{sr}");
    }
    assert!(srs.iter().any(|s| s["status"] == "draft"), "a few drafts");
    assert!(srs.iter().any(|s| s["status"] == "completed"), "admitted");
    assert!(srs.iter().any(|s| s["status"] == "revoked"), "cancelled");

    // requests in every business status, and archived ones
    let bs = code_system("business-status");
    for s in [
        "sent",
        "read",
        "info-requested",
        "agreed-in-principle",
        "admission-proposed",
        "confirmed",
        "admitted",
        "refused",
        "withdrawn",
        "cancelled",
        "auto-cancelled",
    ] {
        let c = count(&app, &format!("Task?business-status={bs}|{s}")).await;
        assert!(c > 0, "{engine:?}: no request `{s}`");
    }
    assert!(count(&app, &format!("Task?_tag={TAG_SYSTEM}|archived")).await > 0);
    // the timers did their part: reminders, automatic cancellations
    let comm = code_system("communication-category");
    assert!(count(&app, &format!("Communication?category={comm}|reminder")).await > 0);
    // lived in: the requests were sent over months, not in one instant
    let tasks = entries(&get(&app, "Task?_count=1000").await);
    let mut authored: Vec<&str> = tasks
        .iter()
        .filter_map(|t| t["authoredOn"].as_str())
        .collect();
    authored.sort();
    let (first, last) = (authored[0], authored[authored.len() - 1]);
    assert!(first[..7] != last[..7], "{first} .. {last}");

    // n patients, each with a test INS whose key is right, and a qualified identity
    let patients = entries(&get(&app, "Patient?_count=1000").await);
    assert_eq!(patients.len(), n, "{engine:?}: nothing duplicated");
    for p in &patients {
        let ins = p["identifier"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|i| i["system"] == INS_TEST)
            .and_then(|i| i["value"].as_str())
            .unwrap_or_else(|| panic!("no test INS: {p}"));
        assert_eq!(ins.len(), 15, "{ins}");
        let key: u8 = ins[13..].parse().expect("key digits");
        assert_eq!(nir_key(&ins[..13]), Some(key), "{ins}");
        let reliability = p["extension"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|e| {
                e["url"] == "https://hl7.fr/ig/fhir/core/StructureDefinition/fr-core-identity-reliability"
            })
            .unwrap_or_else(|| panic!("no identity reliability: {p}"));
        assert_eq!(reliability["extension"][0]["valueCoding"]["code"], "QUAL");
        let year: i32 = p["birthDate"].as_str().expect("birthDate")[..4]
            .parse()
            .expect("year");
        assert!((1930..=1990).contains(&year), "{year}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn demo_on_sqlite() {
    scenario(Engine::Sqlite, 50).await;
}

/// The same seed gives the same people and the same stories.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_seed_makes_it_deterministic() {
    let mut seen = Vec::new();
    for seed in ["11", "11", "12"] {
        let Some((url, _guard)) = fresh_database(Engine::Sqlite).await else {
            return;
        };
        let out = demo(&url, &["--dossiers", "16", "--seed", seed]);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let config = Config {
            database_url: url.clone(),
            db_pool_size: 2,
            ..Config::default()
        };
        let app = App::open(&config, "http://127.0.0.1:1".into(), Arc::new(SystemClock))
            .await
            .expect("open");
        let mut people: Vec<String> = entries(&get(&app, "Patient?_count=100").await)
            .iter()
            .map(|p| {
                format!(
                    "{} {} {}",
                    p["id"], p["name"][0]["family"], p["identifier"][0]["value"]
                )
            })
            .collect();
        people.sort();
        let mut states: Vec<String> = entries(&get(&app, "Task?_count=1000").await)
            .iter()
            .map(|t| {
                format!(
                    "{} {}",
                    t["focus"]["reference"], t["businessStatus"]["coding"][0]["code"]
                )
            })
            .collect();
        states.sort();
        seen.push((people, states));
    }
    assert_eq!(seen[0], seen[1], "same seed, same data set");
    assert_ne!(seen[0].0, seen[2].0, "another seed, other people");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn demo_on_postgres() {
    scenario(Engine::Postgres, 20).await;
}

/// The story is timed on the default delays: other configured delays do not break it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn configured_delays_do_not_break_the_story() {
    let Some((url, _guard)) = fresh_database(Engine::Sqlite).await else {
        return;
    };
    let short = [
        ("PASSERELLE_WORKFLOW__AUTO_REMINDER_AFTER_DAYS", "3"),
        ("PASSERELLE_WORKFLOW__AUTO_CANCEL_AFTER_DAYS", "2"),
        ("PASSERELLE_WORKFLOW__ARCHIVE_AFTER_DAYS", "1"),
    ];
    let out = demo_with(&url, &["--dossiers", "16"], &short);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // every state is still there, the open ones included
    let stdout = String::from_utf8_lossy(&out.stdout);
    for state in ["admission-proposed", "confirmed", "sent"] {
        let n: u32 = stdout
            .lines()
            .find_map(|l| l.trim().strip_prefix(state))
            .and_then(|rest| rest.trim().parse().ok())
            .unwrap_or(0);
        assert!(n > 0, "no `{state}` request:\n{stdout}");
    }
}
