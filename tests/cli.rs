//! The command line: help everywhere, `migrate` on a fresh database, configuration errors that
//! name the file and the key.

use std::process::Command;

fn passerelle() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_passerelle"));
    c.env_remove("PASSERELLE_CONFIG").env_remove("DATABASE_URL");
    c
}

fn temp_dir(name: &str) -> std::path::PathBuf {
    let d = std::env::temp_dir().join(format!("passerelle-cli-{name}-{}", std::process::id()));
    std::fs::create_dir_all(&d).unwrap();
    d
}

#[test]
fn help_for_every_subcommand() {
    for args in [
        &["--help"][..],
        &["serve", "--help"],
        &["migrate", "--help"],
        &["demo", "--help"],
        &["ror", "--help"],
        &["ror", "sync", "--help"],
        &["admin", "--help"],
        &["admin", "token", "--help"],
        &["admin", "grant", "--help"],
    ] {
        let out = passerelle().args(args).output().unwrap();
        assert!(out.status.success(), "{args:?}");
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(text.contains("Usage"), "{args:?}: {text}");
    }
}

/// `passerelle migrate` on the SQLite file `db`, which must succeed.
fn migrate(db: &std::path::Path) {
    let out = passerelle()
        .arg("migrate")
        .env("DATABASE_URL", format!("sqlite://{}", db.display()))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn migrate_creates_the_sqlite_database() {
    let dir = temp_dir("migrate");
    let db = dir.join("fresh.db");
    migrate(&db);
    assert!(db.exists());
    // the audit trail has its own file beside the database
    assert!(dir.join("fresh-audit.db").exists());
    // running it again is a no-op
    migrate(&db);
    let _ = std::fs::remove_dir_all(dir);
}

/// A database made before migration 6 (`versions` WITHOUT ROWID) keeps every version, bodies
/// larger than a page and deletions included, when `migrate` rebuilds the table; its audit
/// trail moves to the audit file with its sequence numbers.
#[tokio::test]
async fn migrate_keeps_the_versions_of_an_older_database() {
    use sqlx::{Connection, Row, sqlite::SqliteConnection};
    let dir = temp_dir("migrate-old");
    let db = dir.join("old.db");
    let url = format!("sqlite://{}?mode=rwc", db.display());
    let migrations = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("migrations/sqlite");
    let mut files: Vec<_> = std::fs::read_dir(&migrations)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "sql"))
        .collect();
    files.sort();
    let big = format!(
        r#"{{"resourceType":"Task","id":"t1","note":[{{"text":"{}"}}]}}"#,
        "x".repeat(9000)
    );
    {
        let mut c = SqliteConnection::connect(&url).await.unwrap();
        sqlx::raw_sql(
            "CREATE TABLE schema_migrations (version BIGINT PRIMARY KEY, name TEXT NOT NULL, applied_at BIGINT NOT NULL)",
        )
        .execute(&mut c)
        .await
        .unwrap();
        // the schema as it was before migration 6
        for (i, f) in files.iter().take(5).enumerate() {
            let script = std::fs::read_to_string(f).unwrap();
            sqlx::raw_sql(sqlx::AssertSqlSafe(script))
                .execute(&mut c)
                .await
                .unwrap();
            sqlx::query("INSERT INTO schema_migrations VALUES ($1, 'old', 0)")
                .bind(i as i64 + 1)
                .execute(&mut c)
                .await
                .unwrap();
        }
        sqlx::raw_sql(
            "INSERT INTO resources VALUES (1, 'Task', 't1', 3, 30, TRUE);
             INSERT INTO versions VALUES (1, 1, 10, 'POST', '{\"resourceType\":\"Task\",\"id\":\"t1\"}');
             INSERT INTO versions VALUES (1, 3, 30, 'DELETE', NULL);
             INSERT INTO idx_token VALUES (1, 'Task.status', 'http://hl7.org/fhir/task-status', 'done');",
        )
        .execute(&mut c)
        .await
        .unwrap();
        sqlx::query("INSERT INTO versions VALUES (1, 2, 20, 'PUT', $1)")
            .bind(&big)
            .execute(&mut c)
            .await
            .unwrap();
        // the audit trail as migration 5 kept it, in the main file
        sqlx::raw_sql(
            "INSERT INTO audit_events VALUES (7, 70, NULL, NULL, 'Patient', 'p1', 'Task', 't1',
                's', 'rest', 's', 'read', 'R', '0', '{\"action\":\"R\"}');
             INSERT INTO audit_events VALUES (9, 90, NULL, NULL, NULL, NULL, 'Task', 't1',
                's', 'rest', 's', 'delete', 'D', '0', '{\"action\":\"D\"}');",
        )
        .execute(&mut c)
        .await
        .unwrap();
        c.close().await.unwrap();
    }
    migrate(&db);
    // ... its rows moved to the audit file, and only there; a second start moves nothing
    migrate(&db);
    let audit_url = format!("sqlite://{}", dir.join("old-audit.db").display());
    let mut a = SqliteConnection::connect(&audit_url).await.unwrap();
    let events: Vec<(i64, i64, String)> =
        sqlx::query_as("SELECT seq, recorded, body FROM audit_events ORDER BY seq")
            .fetch_all(&mut a)
            .await
            .unwrap();
    assert_eq!(
        events,
        vec![
            (7, 70, r#"{"action":"R"}"#.into()),
            (9, 90, r#"{"action":"D"}"#.into())
        ]
    );
    a.close().await.unwrap();
    let mut c = SqliteConnection::connect(&url).await.unwrap();
    let rows = sqlx::query(
        "SELECT version, last_updated, method, body FROM versions WHERE rid = 1 ORDER BY version",
    )
    .fetch_all(&mut c)
    .await
    .unwrap();
    let got: Vec<(i64, i64, String, Option<String>)> = rows
        .iter()
        .map(|r| (r.get(0), r.get(1), r.get(2), r.get(3)))
        .collect();
    assert_eq!(
        got,
        vec![
            (
                1,
                10,
                "POST".into(),
                Some(r#"{"resourceType":"Task","id":"t1"}"#.into())
            ),
            (2, 20, "PUT".into(), Some(big)),
            (3, 30, "DELETE".into(), None),
        ]
    );
    let table: String = sqlx::query_scalar("SELECT sql FROM sqlite_master WHERE name = 'versions'")
        .fetch_one(&mut c)
        .await
        .unwrap();
    assert!(!table.to_uppercase().contains("WITHOUT ROWID"), "{table}");
    // migration 7: the search indexes cover their queries, and still find what was indexed
    let index: String =
        sqlx::query_scalar("SELECT sql FROM sqlite_master WHERE name = 'idx_token_lookup'")
            .fetch_one(&mut c)
            .await
            .unwrap();
    assert!(index.contains("(param, code, system, rid)"), "{index}");
    let found: Vec<i64> = sqlx::query_scalar(
        "SELECT rid FROM idx_token INDEXED BY idx_token_lookup WHERE param = 'Task.status' AND code = 'done'",
    )
    .fetch_all(&mut c)
    .await
    .unwrap();
    assert_eq!(found, [1]);
    let count = |kind: &'static str, name: &'static str| {
        sqlx::query_scalar::<_, i64>(
            "SELECT COUNT(*) FROM sqlite_master WHERE type = $1 AND name = $2",
        )
        .bind(kind)
        .bind(name)
    };
    assert_eq!(
        count("index", "versions_updated")
            .fetch_one(&mut c)
            .await
            .unwrap(),
        1
    );
    // the main file no longer holds the audit trail
    assert_eq!(
        count("table", "audit_events")
            .fetch_one(&mut c)
            .await
            .unwrap(),
        0
    );
    // a second version (1, 2) is refused: the key is still unique
    assert!(
        sqlx::query("INSERT INTO versions VALUES (1, 2, 40, 'PUT', '{}')")
            .execute(&mut c)
            .await
            .is_err()
    );
    c.close().await.unwrap();
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn configuration_errors_name_the_file_and_key() {
    let dir = temp_dir("config");
    let file = dir.join("passerelle.toml");
    std::fs::write(&file, "listen = \"not an address\"\n").unwrap();
    let out = passerelle()
        .args(["--config", file.to_str().unwrap(), "migrate"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("listen") && err.contains("not an address"),
        "{err}"
    );
    std::fs::write(&file, "databse_url = \"sqlite://x\"\n").unwrap();
    let out = passerelle()
        .args(["--config", file.to_str().unwrap(), "migrate"])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("passerelle.toml") && err.contains("databse_url"),
        "{err}"
    );
    let out = passerelle()
        .args(["--config", "/nonexistent/p.toml", "serve"])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("/nonexistent/p.toml"), "{err}");
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn dev_auth_mode_refuses_to_listen_beyond_loopback() {
    let dir = temp_dir("devmode");
    let out = passerelle()
        .arg("serve")
        .env("PASSERELLE_LISTEN", "0.0.0.0:0")
        .env(
            "DATABASE_URL",
            format!("sqlite://{}", dir.join("x.db").display()),
        )
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("0.0.0.0") && err.contains("loopback"), "{err}");
    assert!(
        !dir.join("x.db").exists(),
        "refused before touching the database"
    );
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn admin_grants_the_first_referent_and_mints_tokens() {
    let dir = temp_dir("admin");
    let db = format!("sqlite://{}", dir.join("admin.db").display());
    let run = |args: &[&str]| {
        passerelle()
            .args(args)
            .env("DATABASE_URL", &db)
            .output()
            .unwrap()
    };
    // the account and the structure exist (as after a first sign-in and a directory sync)
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let config = passerelle::config::Config {
            database_url: db.clone(),
            ..Default::default()
        };
        let app = passerelle::server::App::open(
            &config,
            "http://127.0.0.1".into(),
            std::sync::Arc::new(passerelle::time::SystemClock),
        )
        .await
        .unwrap();
        for body in [
            serde_json::json!({"resourceType": "Practitioner", "id": "p-first", "active": true}),
            serde_json::json!({"resourceType": "Organization", "id": "o-first", "name": "CH"}),
        ] {
            let rtype = body["resourceType"].as_str().unwrap().to_owned();
            let id = body["id"].as_str().unwrap().to_owned();
            let mut req = passerelle::fhir::interaction::Req::new(
                axum::http::Method::PUT,
                passerelle::fhir::interaction::Route::Instance(rtype, id),
            );
            req.caller = passerelle::auth::Caller::System("test".into());
            req.body = Some(body);
            passerelle::fhir::interaction::run(&app.fhir, req)
                .await
                .unwrap();
        }
    });
    let out = run(&[
        "admin",
        "grant",
        "--practitioner",
        "Practitioner/p-first",
        "--organization",
        "Organization/o-first",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let role = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    assert!(role.starts_with("PractitionerRole/"), "{role}");
    // what does not exist is named
    let out = run(&[
        "admin",
        "grant",
        "--practitioner",
        "Practitioner/nobody",
        "--organization",
        "Organization/o-first",
    ]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("Practitioner/nobody does not exist"));
    let out = run(&[
        "admin",
        "grant",
        "--practitioner",
        "Practitioner/p-first",
        "--organization",
        "Organization/o-first",
        "--profile",
        "chef",
    ]);
    assert!(String::from_utf8_lossy(&out.stderr).contains("`chef` is not a habilitation profile"));
    // a token needs the shared signing key and a registered client
    let out = run(&["admin", "token", "--client", "his"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("signing_key_file"));
    let config = dir.join("passerelle.toml");
    std::fs::write(
        &config,
        format!(
            "[auth]\nsigning_key_file = {:?}\n[[auth.clients]]\nclient_id = \"his\"\njwks_file = {:?}\nscopes = [\"system/Task.rs\"]\n",
            dir.join("key.pem"),
            std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("tests/data/psc/test-client-es384.jwks.json")
        ),
    )
    .unwrap();
    let with = |args: &[&str]| {
        passerelle()
            .args(args)
            .arg("--config")
            .arg(&config)
            .env("DATABASE_URL", &db)
            .output()
            .unwrap()
    };
    let out = with(&["admin", "token", "--client", "nobody"]);
    assert!(
        String::from_utf8_lossy(&out.stderr)
            .contains("no [[auth.clients]] with client_id `nobody`")
    );
    let out = with(&[
        "admin",
        "token",
        "--client",
        "his",
        "--scope",
        "system/Patient.cruds",
    ]);
    assert!(String::from_utf8_lossy(&out.stderr).contains("invalid_scope"));
    let out = with(&["admin", "token", "--client", "his"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let token = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    assert_eq!(token.split('.').count(), 3, "a JWT: {token}");
    let _ = std::fs::remove_dir_all(dir);
}
