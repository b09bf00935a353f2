//! Test harness: a real gateway on an ephemeral port, on SQLite (a fresh file) or on
//! PostgreSQL (a fresh schema in `TEST_DATABASE_URL`), spoken to over HTTP.
#![allow(dead_code)]

pub mod ror_standin;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use passerelle::config::Config;
use passerelle::server::App;
use passerelle::time::{Clock, ManualClock, SystemClock};
use serde_json::Value;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Engine {
    Sqlite,
    Postgres,
}

/// The wire format the `Gateway` helpers speak: every scenario runs in both.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    Json,
    Xml,
}

pub struct Gateway {
    pub base: String,
    /// Speaks as the system: every request carries the test client's gateway token.
    pub client: reqwest::Client,
    /// Carries no credentials: for the habilitations of dev mode (`X-Passerelle-Role`) and
    /// the anonymous caller.
    pub anon: reqwest::Client,
    pub app: App,
    pub engine: Engine,
    pub format: Format,
    pub clock: Option<ManualClock>,
    /// The database this gateway uses (a second instance may share it).
    pub database_url: String,
    _guard: Guard,
}

pub enum Guard {
    Dir(std::path::PathBuf),
    Schema(String, String),
}

impl Drop for Guard {
    fn drop(&mut self) {
        match self {
            Guard::Dir(d) => {
                let _ = std::fs::remove_dir_all(d);
            }
            Guard::Schema(url, schema) => {
                let (url, schema) = (url.clone(), schema.clone());
                // Drop runs inside the test's runtime: use a thread with its own.
                let _ = std::thread::spawn(move || {
                    let rt = tokio::runtime::Builder::new_current_thread()
                        .enable_all()
                        .build();
                    if let Ok(rt) = rt {
                        rt.block_on(async {
                            use sqlx::Connection;
                            if let Ok(mut c) = sqlx::PgConnection::connect(&url).await {
                                // The gateway's connections may be inside a transaction that
                                // will never finish (a background writer on a runtime this
                                // drop now blocks): end them, or the DROP waits on their locks.
                                let _ = sqlx::query(
                                    "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name = $1",
                                )
                                .bind(&schema)
                                .execute(&mut c)
                                .await;
                                let sql = format!("DROP SCHEMA IF EXISTS {schema} CASCADE");
                                let _ = sqlx::raw_sql(sqlx::AssertSqlSafe(sql))
                                    .execute(&mut c)
                                    .await;
                            }
                        });
                    }
                })
                .join();
            }
        }
    }
}

/// A reqwest client. The gateway's reqwest has no default TLS crypto provider (it is built
/// with rustls on ring): install it first.
pub fn http_client() -> reqwest::Client {
    passerelle::install_crypto_provider();
    reqwest::Client::new()
}

/// A reqwest client whose every request carries `Authorization: Bearer <token>`.
pub fn bearer_client(token: &str) -> reqwest::Client {
    passerelle::install_crypto_provider();
    let mut headers = reqwest::header::HeaderMap::new();
    headers.insert(
        reqwest::header::AUTHORIZATION,
        reqwest::header::HeaderValue::from_str(&format!("Bearer {token}")).expect("token"),
    );
    reqwest::Client::builder()
        .default_headers(headers)
        .build()
        .expect("client")
}

/// The system client the test gateways register (`tests/data/psc/test-client-es384.*`):
/// every scope, no structure. Tests speak as it unless they act as a habilitation.
pub const TEST_CLIENT: &str = "tests";

pub fn test_client_config() -> passerelle::config::ClientConfig {
    passerelle::config::ClientConfig {
        client_id: TEST_CLIENT.into(),
        jwks_file: Some(
            std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("tests/data/psc/test-client-es384.jwks.json"),
        ),
        jwks_url: None,
        scopes: vec!["system/*.cruds".into()],
        organization: None,
    }
}

static COUNTER: AtomicUsize = AtomicUsize::new(0);

fn unique(prefix: &str) -> String {
    format!(
        "{prefix}_{}_{}_{}",
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::SeqCst),
        uuid::Uuid::new_v4()
            .simple()
            .to_string()
            .get(..8)
            .unwrap_or("x")
    )
}

/// `TEST_DATABASE_URL`, or `None` (the PostgreSQL tests then say they were skipped).
pub fn pg_url() -> Option<String> {
    std::env::var("TEST_DATABASE_URL")
        .ok()
        .filter(|u| !u.is_empty())
}

/// A database URL for a fresh, empty database of `engine`.
pub async fn fresh_database(engine: Engine) -> Option<(String, Guard)> {
    match engine {
        Engine::Sqlite => {
            let dir = std::env::temp_dir().join(unique("passerelle-test"));
            std::fs::create_dir_all(&dir).expect("temp dir");
            let url = format!("sqlite://{}", dir.join("db.sqlite").display());
            Some((url, Guard::Dir(dir)))
        }
        Engine::Postgres => {
            let url = match pg_url() {
                Some(u) => u,
                None => {
                    eprintln!("TEST_DATABASE_URL is not set: the PostgreSQL suite was skipped");
                    return None;
                }
            };
            use sqlx::Connection;
            let mut c = sqlx::PgConnection::connect(&url).await.unwrap_or_else(|e| {
                panic!("TEST_DATABASE_URL is set but PostgreSQL is unreachable: {e}")
            });
            let schema = unique("t");
            sqlx::raw_sql(sqlx::AssertSqlSafe(format!("CREATE SCHEMA {schema}")))
                .execute(&mut c)
                .await
                .expect("create schema");
            let sep = if url.contains('?') { '&' } else { '?' };
            // the application name lets the guard find this test's connections
            let scoped =
                format!("{url}{sep}options=-c%20search_path%3D{schema}&application_name={schema}");
            Some((scoped, Guard::Schema(url, schema)))
        }
    }
}

pub struct Options {
    pub clock: Option<ManualClock>,
    pub format: Format,
    /// System clients registered besides the test client (whose tokens the test mints with
    /// `gw.app.auth.gateway.issue_for_client`).
    pub clients: Vec<passerelle::config::ClientConfig>,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            clock: None,
            format: Format::Json,
            clients: Vec::new(),
        }
    }
}

/// Starts a gateway; `None` when the engine is not available (PostgreSQL without URL).
pub async fn spawn(engine: Engine) -> Option<Gateway> {
    spawn_with(engine, Options::default()).await
}

pub async fn spawn_with(engine: Engine, opts: Options) -> Option<Gateway> {
    let (url, guard) = fresh_database(engine).await?;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    let base = format!("http://{addr}");
    let mut config = Config {
        database_url: url.clone(),
        listen: addr.to_string(),
        base_url: Some(base.clone()),
        db_pool_size: 4,
        ..Config::default()
    };
    config.auth.clients = vec![test_client_config()];
    config.auth.clients.extend(opts.clients.iter().cloned());
    let clock: Arc<dyn Clock> = match &opts.clock {
        Some(c) => Arc::new(c.clone()),
        None => Arc::new(SystemClock),
    };
    let app = App::open(&config, base.clone(), clock)
        .await
        .expect("open app");
    let router = app.router(config.max_body_bytes);
    tokio::spawn(async move {
        let _ = axum::serve(
            listener,
            router.into_make_service_with_connect_info::<std::net::SocketAddr>(),
        )
        .await;
    });
    let token = app
        .auth
        .gateway
        .issue_for_client(TEST_CLIENT, "system/*.cruds")
        .expect("a token for the test client")
        .access_token;
    Some(Gateway {
        base: format!("{base}/fhir"),
        client: bearer_client(&token),
        anon: http_client(),
        app,
        engine,
        format: opts.format,
        clock: opts.clock,
        database_url: url,
        _guard: guard,
    })
}

pub const FHIR_JSON: &str = "application/fhir+json";
pub const FHIR_XML: &str = "application/fhir+xml";

pub struct Answer {
    pub url: String,
    pub status: u16,
    pub headers: reqwest::header::HeaderMap,
    pub text: String,
}

impl Answer {
    /// The body as JSON, read from XML when the server answered XML.
    pub fn json(&self) -> Value {
        if self
            .header("content-type")
            .is_some_and(|c| c.contains("xml"))
        {
            let model = passerelle::fhir::model::Model::r4();
            return passerelle::fhir::xml::from_xml(model, &self.text)
                .unwrap_or_else(|e| panic!("not FHIR XML ({e}): {}", self.text));
        }
        serde_json::from_str(&self.text).unwrap_or_else(|e| panic!("not JSON ({e}): {}", self.text))
    }
    pub fn header(&self, name: &str) -> Option<String> {
        self.headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned)
    }
    /// Asserts the status, showing the body when it differs.
    pub fn expect(self, status: u16) -> Answer {
        assert_eq!(
            self.status, status,
            "unexpected status from {}; body: {}",
            self.url, self.text
        );
        self
    }
    /// The first issue's diagnostics of an OperationOutcome body.
    pub fn diagnostics(&self) -> String {
        let v = self.json();
        assert_eq!(v["resourceType"], "OperationOutcome", "{}", self.text);
        v["issue"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|i| {
                format!(
                    "{} @ {}",
                    i["diagnostics"].as_str().unwrap_or(""),
                    i["expression"]
                )
            })
            .collect::<Vec<_>>()
            .join("; ")
    }
}

impl Gateway {
    pub fn url(&self, path: &str) -> String {
        if path.starts_with("http") {
            path.to_owned()
        } else {
            format!("{}/{}", self.base, path.trim_start_matches('/'))
        }
    }

    pub async fn send(&self, req: reqwest::RequestBuilder) -> Answer {
        let r = req.send().await.expect("request");
        Answer {
            url: r.url().to_string(),
            status: r.status().as_u16(),
            headers: r.headers().clone(),
            text: r.text().await.expect("body"),
        }
    }

    fn mime(&self) -> &'static str {
        match self.format {
            Format::Json => FHIR_JSON,
            Format::Xml => FHIR_XML,
        }
    }

    /// A body in the gateway's format, with its content type. What has no XML form (a
    /// resource with an unknown element, a non-resource) goes as JSON: the server must refuse
    /// those the same way in both formats.
    fn encode(&self, body: &Value) -> (String, &'static str) {
        if self.format == Format::Xml && body.get("resourceType").is_some_and(Value::is_string) {
            let model = passerelle::fhir::model::Model::r4();
            if let Ok(xml) = passerelle::fhir::xml::to_xml(model, body) {
                return (xml, FHIR_XML);
            }
        }
        (body.to_string(), FHIR_JSON)
    }

    pub async fn get(&self, path: &str) -> Answer {
        self.acting_as(None).get(path).await
    }

    pub async fn post(&self, path: &str, body: &Value) -> Answer {
        self.acting_as(None).post(path, body).await
    }

    pub async fn put(&self, path: &str, body: &Value) -> Answer {
        self.acting_as(None).put(path, body).await
    }

    pub async fn delete(&self, path: &str) -> Answer {
        self.acting_as(None).delete(path).await
    }

    /// The same requests, made by the holder of a habilitation (`X-Passerelle-Role`).
    pub fn acting(&self, role: &str) -> Acting<'_> {
        self.acting_as(Some(role))
    }

    /// The same requests, made by nobody (dev mode's anonymous caller).
    pub fn anonymous(&self) -> Acting<'_> {
        Acting {
            gw: self,
            role: None,
            system: false,
        }
    }

    fn acting_as(&self, role: Option<&str>) -> Acting<'_> {
        Acting {
            gw: self,
            system: role.is_none(),
            role: role.map(|r| {
                format!(
                    "PractitionerRole/{}",
                    r.trim_start_matches("PractitionerRole/")
                )
            }),
        }
    }

    /// Creates and returns the stored resource.
    pub async fn create(&self, body: &Value) -> Value {
        let rtype = body["resourceType"].as_str().expect("resourceType");
        self.post(rtype, body).await.expect(201).json()
    }

    /// The ids of a searchset's `match` entries.
    pub async fn search_ids(&self, query: &str) -> Vec<String> {
        let b = self.get(query).await.expect(200).json();
        b["entry"]
            .as_array()
            .into_iter()
            .flatten()
            .filter(|e| e["search"]["mode"] == "match")
            .map(|e| e["resource"]["id"].as_str().unwrap_or("").to_owned())
            .collect()
    }
}

/// Requests made as one caller: a habilitation (`role`), the system (the test client's
/// token), or nobody.
pub struct Acting<'g> {
    pub gw: &'g Gateway,
    pub role: Option<String>,
    pub system: bool,
}

impl Acting<'_> {
    fn request(&self, method: reqwest::Method, path: &str) -> reqwest::RequestBuilder {
        let client = if self.system {
            &self.gw.client
        } else {
            &self.gw.anon
        };
        let mut r = client
            .request(method, self.gw.url(path))
            .header("accept", self.gw.mime());
        if let Some(role) = &self.role {
            r = r.header("x-passerelle-role", role);
        }
        r
    }

    fn with_body(&self, r: reqwest::RequestBuilder, body: &Value) -> reqwest::RequestBuilder {
        let (text, mime) = self.gw.encode(body);
        r.header("content-type", mime).body(text)
    }

    pub async fn get(&self, path: &str) -> Answer {
        self.gw.send(self.request(reqwest::Method::GET, path)).await
    }

    pub async fn post(&self, path: &str, body: &Value) -> Answer {
        let r = self.request(reqwest::Method::POST, path);
        self.gw.send(self.with_body(r, body)).await
    }

    pub async fn put(&self, path: &str, body: &Value) -> Answer {
        let r = self.request(reqwest::Method::PUT, path);
        self.gw.send(self.with_body(r, body)).await
    }

    pub async fn delete(&self, path: &str) -> Answer {
        self.gw
            .send(self.request(reqwest::Method::DELETE, path))
            .await
    }

    /// `POST path` with an `If-Match` precondition.
    pub async fn post_if_match(&self, path: &str, body: &Value, version: i64) -> Answer {
        let r = self
            .request(reqwest::Method::POST, path)
            .header("if-match", format!("W/\"{version}\""));
        self.gw.send(self.with_body(r, body)).await
    }

    /// `PUT path` with an `If-Match` precondition.
    pub async fn put_if_match(&self, path: &str, body: &Value, version: i64) -> Answer {
        let r = self
            .request(reqwest::Method::PUT, path)
            .header("if-match", format!("W/\"{version}\""));
        self.gw.send(self.with_body(r, body)).await
    }
}

/// Declares one test per engine and wire format (JSON, XML) from one async body taking a
/// `Gateway`: the same scenario runs four times.
#[macro_export]
macro_rules! on_both_engines {
    ($name:ident, |$gw:ident| $body:block) => {
        mod $name {
            use super::*;
            async fn scenario($gw: common::Gateway) $body

            async fn run(engine: common::Engine, format: common::Format) {
                let opts = common::Options {
                    format,
                    ..Default::default()
                };
                if let Some(gw) = common::spawn_with(engine, opts).await {
                    scenario(gw).await;
                }
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn sqlite() {
                run(common::Engine::Sqlite, common::Format::Json).await;
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn postgres() {
                run(common::Engine::Postgres, common::Format::Json).await;
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn sqlite_xml() {
                run(common::Engine::Sqlite, common::Format::Xml).await;
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn postgres_xml() {
                run(common::Engine::Postgres, common::Format::Xml).await;
            }
        }
    };
}

/// An official R4 example from `../shared/data/fhir-r4-examples` (copied into tests/data).
pub fn example(name: &str) -> Value {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/data/fhir-r4-examples")
        .join(name);
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_json::from_str(&text).expect("example JSON")
}

/// The gateway as a separate process (the real binary), for tests that kill it or drive it
/// from another program.
pub struct Process {
    pub child: std::process::Child,
    pub base: String,
    pub database_url: String,
    pub port: u16,
    /// A gateway token of the test client (`passerelle admin token`).
    pub token: String,
    /// Its configuration file and signing key.
    dir: std::path::PathBuf,
}

pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("free port")
}

impl Process {
    pub async fn start(database_url: &str) -> Process {
        Self::start_on(database_url, free_port()).await
    }

    pub async fn start_on(database_url: &str, port: u16) -> Process {
        // the test client registered, and a signing key shared with `admin token`
        let dir = std::env::temp_dir().join(unique("passerelle-process"));
        std::fs::create_dir_all(&dir).expect("temp dir");
        let jwks = test_client_config().jwks_file.expect("jwks");
        let config = dir.join("passerelle.toml");
        std::fs::write(
            &config,
            format!(
                "[auth]\nsigning_key_file = {:?}\n\n[[auth.clients]]\nclient_id = \"{TEST_CLIENT}\"\njwks_file = {:?}\nscopes = [\"system/*.cruds\"]\n",
                dir.join("signing-key.pem"),
                jwks
            ),
        )
        .expect("config");
        let command = |args: &[&str]| {
            let mut c = std::process::Command::new(env!("CARGO_BIN_EXE_passerelle"));
            c.args(args)
                .arg("--config")
                .arg(&config)
                .env("DATABASE_URL", database_url)
                .env("PASSERELLE_LISTEN", format!("127.0.0.1:{port}"))
                .env("PASSERELLE_LOG", "warn")
                .env_remove("PASSERELLE_CONFIG");
            c
        };
        let minted = command(&["admin", "token", "--client", TEST_CLIENT])
            .output()
            .expect("passerelle admin token");
        assert!(
            minted.status.success(),
            "admin token: {}",
            String::from_utf8_lossy(&minted.stderr)
        );
        let token = String::from_utf8_lossy(&minted.stdout).trim().to_owned();
        let child = command(&["serve"])
            .stdout(std::process::Stdio::null())
            .spawn()
            .expect("start passerelle");
        let mut p = Process {
            child,
            base: format!("http://127.0.0.1:{port}/fhir"),
            database_url: database_url.to_owned(),
            port,
            token,
            dir,
        };
        p.wait_ready().await;
        p
    }

    /// A client speaking as the test client (every request with its token).
    pub fn client(&self) -> reqwest::Client {
        bearer_client(&self.token)
    }

    /// Polls `/ready` (bounded: 30 s) — start-up time is not what is under test.
    async fn wait_ready(&mut self) {
        let url = format!("http://127.0.0.1:{}/ready", self.port);
        let client = http_client();
        for _ in 0..600 {
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!("passerelle exited at start: {status}");
            }
            if let Ok(r) = client.get(&url).send().await
                && r.status().is_success()
            {
                return;
            }
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
        panic!("passerelle did not become ready at {url}");
    }

    /// SIGKILL: no shutdown, no flush.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        self.kill();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
