//! `psc` auth mode end to end: a real OpenID Connect provider configured like Pro Santé
//! Connect (`tests/oidc/provider.mjs`, the npm package `oidc-provider`) on loopback, over
//! http or over https with a test CA (and mutual TLS), and the gateway spoken to over HTTP:
//! bearer-only FHIR API, client credentials with `private_key_jwt`, RFC 8693 token exchange
//! of a PSC access token, browser sign-in, accounts made at first sign-in, the terms of use,
//! sign-in state shared by instances, the audit of authentication, and every refusal.
//!
//! Without `tests/oidc/node_modules` the provider tests are skipped with a note, unless
//! `TEST_REQUIRE_OIDC=1` (set by `scripts/test.sh`), which makes them fail.

mod common;

use std::collections::HashMap;
use std::io::BufRead;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use common::{Engine, Guard, fresh_database};
use jsonwebtoken::jwk::{Jwk, JwkSet};
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use passerelle::auth::secret::Secret;
use passerelle::config::{ClientConfig, Config, PscConfig};
use passerelle::server::App;
use passerelle::time::{Clock, SystemClock};
use serde_json::{Value, json};
use sha2::Digest;

const CLIENT_SECRET: &str = "psc-test-client-secret-0123456789abcdef";
const EXCHANGE: &str = "urn:ietf:params:oauth:grant-type:token-exchange";
const AT_TYPE: &str = "urn:ietf:params:oauth:token-type:access_token";
const JWT_BEARER: &str = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer";
const IDNAT: &str = "urn:oid:1.2.250.1.71.4.2.1";
/// The provider's first account (signed in when no `login_hint` is given).
const OTHER_DOCTOR: &str = "899700218896";
/// A hospital doctor with an RPPS, a profession and a specialty in his claims.
const DOCTOR: &str = "899700366240";
const SYSTEM_SCOPES: &str = "system/Organization.cruds system/Practitioner.cruds system/PractitionerRole.cruds system/Task.rs system/AuditEvent.rs system/Provenance.rs";

fn data(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/data/psc")
        .join(name)
}

fn now() -> u64 {
    jsonwebtoken::get_current_timestamp()
}

fn temp_dir(prefix: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("{prefix}-{}", uuid::Uuid::new_v4()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    dir
}

// ---------------------------------------------------------------------------------------
// A test CA, a server certificate for 127.0.0.1 and a client certificate, made with the
// openssl command line

struct Tls {
    dir: PathBuf,
}

impl Tls {
    fn path(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }
}

impl Drop for Tls {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn openssl(dir: &Path, args: &[&str]) {
    let out = Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .output()
        .expect("the openssl command runs");
    assert!(
        out.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// `ca.pem`; `server.pem`/`server-key.pem` (127.0.0.1); `client.pem`/`client-key.pem`
/// (CN=passerelle-mtls), all P-256, issued by the CA; and `stranger.pem`/`stranger-key.pem`,
/// a client certificate of another CA.
fn tls_fixture() -> Tls {
    let dir = temp_dir("passerelle-tls");
    std::fs::write(
        dir.join("server.ext"),
        "subjectAltName=IP:127.0.0.1,DNS:localhost\nbasicConstraints=critical,CA:FALSE\nkeyUsage=critical,digitalSignature\nextendedKeyUsage=serverAuth\n",
    )
    .expect("write");
    std::fs::write(
        dir.join("client.ext"),
        "basicConstraints=critical,CA:FALSE\nkeyUsage=critical,digitalSignature\nextendedKeyUsage=clientAuth\n",
    )
    .expect("write");
    let ec = [
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:P-256",
        "-nodes",
    ];
    for ca in ["ca", "other-ca"] {
        let key = format!("{ca}-key.pem");
        let cert = format!("{ca}.pem");
        let mut args = vec!["req", "-x509"];
        args.extend(ec);
        args.extend([
            "-keyout",
            &key,
            "-out",
            &cert,
            "-days",
            "2",
            "-subj",
            "/CN=Passerelle test CA",
            "-addext",
            "basicConstraints=critical,CA:TRUE",
            "-addext",
            "keyUsage=critical,keyCertSign,cRLSign",
        ]);
        openssl(&dir, &args);
    }
    for (name, subject, ext, ca) in [
        ("server", "/CN=127.0.0.1", "server.ext", "ca"),
        ("client", "/CN=passerelle-mtls", "client.ext", "ca"),
        ("stranger", "/CN=passerelle-mtls", "client.ext", "other-ca"),
    ] {
        let (key, csr, cert) = (
            format!("{name}-key.pem"),
            format!("{name}.csr"),
            format!("{name}.pem"),
        );
        let mut args = vec!["req"];
        args.extend(ec);
        args.extend(["-keyout", &key, "-out", &csr, "-subj", subject]);
        openssl(&dir, &args);
        let serial = format!("{}", uuid::Uuid::new_v4().as_u128() >> 68);
        let (ca_cert, ca_key) = (format!("{ca}.pem"), format!("{ca}-key.pem"));
        openssl(
            &dir,
            &[
                "x509",
                "-req",
                "-in",
                &csr,
                "-CA",
                &ca_cert,
                "-CAkey",
                &ca_key,
                "-set_serial",
                &serial,
                "-days",
                "2",
                "-out",
                &cert,
                "-extfile",
                ext,
            ],
        );
    }
    Tls { dir }
}

// ---------------------------------------------------------------------------------------
// The provider

/// The running provider (its own copy of the accounts, which a test may change); killed on
/// drop.
struct Provider {
    issuer: String,
    child: Child,
    dir: PathBuf,
    /// The CA of its server certificate, when it serves https.
    ca: Option<PathBuf>,
}

impl Drop for Provider {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

impl Provider {
    /// Changes one userinfo claim of `who` (read again by the provider at its next login).
    fn set_claim(&self, who: &str, claim: &str, value: Value) {
        let path = self.dir.join("accounts.json");
        let mut accounts: Value =
            serde_json::from_str(&std::fs::read_to_string(&path).expect("accounts")).expect("json");
        accounts[who][claim] = value;
        std::fs::write(&path, accounts.to_string()).expect("write");
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

/// Starts `tests/oidc/provider.mjs` over http; `None` (skipped, with a note) when its node
/// modules are not installed, unless `TEST_REQUIRE_OIDC=1`.
fn provider(redirect_uri: &str) -> Option<Provider> {
    start_provider(redirect_uri, None)
}

/// Starts the provider, over https with the fixture's server certificate when `tls` is given
/// (and its mutual-TLS aliases on a second port).
fn start_provider(redirect_uri: &str, tls: Option<&Tls>) -> Option<Provider> {
    let oidc = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/oidc");
    if !oidc.join("node_modules/oidc-provider").is_dir() {
        if std::env::var("TEST_REQUIRE_OIDC").is_ok_and(|v| v == "1") {
            panic!(
                "TEST_REQUIRE_OIDC=1 but tests/oidc/node_modules is missing: run scripts/test.sh (npm ci in tests/oidc)"
            );
        }
        eprintln!(
            "SKIPPED: tests/oidc/node_modules is missing (npm ci in tests/oidc): the OpenID provider tests did not run"
        );
        return None;
    }
    let dir = temp_dir("passerelle-oidc");
    std::fs::copy(data("accounts.json"), dir.join("accounts.json")).expect("copy accounts");
    // A port taken between `free_port` and node's bind makes node exit at once: try again
    // with other ports. The wait is bounded generously: node loads slowly on a busy machine.
    let mut failures = Vec::new();
    for _ in 0..3 {
        let port = free_port();
        let mut command = Command::new("node");
        command
            .arg(oidc.join("provider.mjs"))
            .arg(port.to_string())
            .arg(dir.join("accounts.json"))
            .arg(redirect_uri);
        if let Some(t) = tls {
            command.arg(&t.dir).arg(free_port().to_string());
        }
        let stderr = std::fs::File::create(dir.join("stderr.log")).expect("stderr file");
        let mut child = command
            .stdout(Stdio::piped())
            .stderr(stderr)
            .spawn()
            .expect("node runs");
        let stdout = child.stdout.take().expect("stdout");
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in std::io::BufReader::new(stdout)
                .lines()
                .map_while(Result::ok)
            {
                if line.trim() == "ready" {
                    let _ = tx.send(true);
                }
            }
            // the process ended (or closed its output) without saying ready
            let _ = tx.send(false);
        });
        match rx.recv_timeout(std::time::Duration::from_secs(120)) {
            Ok(true) => {
                let scheme = if tls.is_some() { "https" } else { "http" };
                return Some(Provider {
                    issuer: format!("{scheme}://127.0.0.1:{port}"),
                    child,
                    dir,
                    ca: tls.map(|t| t.path("ca.pem")),
                });
            }
            outcome => {
                let _ = child.kill();
                let _ = child.wait();
                let why = std::fs::read_to_string(dir.join("stderr.log")).unwrap_or_default();
                failures.push(format!("{outcome:?}: {why}"));
            }
        }
    }
    panic!("the OpenID provider did not start: {failures:#?}");
}

/// An HTTP client that follows no redirect, trusting `ca` beside the system's roots, and
/// presenting `identity` (PEM certificate then key) when given.
fn http_client(ca: Option<&Path>, identity: Option<(&Path, &Path)>) -> reqwest::Client {
    passerelle::install_crypto_provider();
    let mut b = reqwest::Client::builder().redirect(reqwest::redirect::Policy::none());
    if let Some(ca) = ca {
        let pem = std::fs::read(ca).expect("ca");
        b = b.tls_certs_merge(reqwest::Certificate::from_pem_bundle(&pem).expect("ca pem"));
    }
    if let Some((cert, key)) = identity {
        let mut pem = std::fs::read(cert).expect("cert");
        pem.extend(std::fs::read(key).expect("key"));
        b = b.identity(reqwest::Identity::from_pem(&pem).expect("identity"));
    }
    b.build().expect("client")
}

// ---------------------------------------------------------------------------------------
// The gateway in psc mode

struct Psc {
    base: String,
    http: reqwest::Client,
    app: App,
    database_url: String,
    /// The system client's key set file (removed on drop).
    dir: PathBuf,
    _guard: Option<Guard>,
}

impl Drop for Psc {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn client_key() -> (EncodingKey, JwkSet) {
    let pem = std::fs::read(data("test-client-es384.pem")).expect("key");
    let key = EncodingKey::from_ec_pem(&pem).expect("EC key");
    let mut jwk = Jwk::from_encoding_key(&key, Algorithm::ES384).expect("jwk");
    jwk.common.key_id = Some("his-1".into());
    (key, JwkSet { keys: vec![jwk] })
}

/// How a test gateway is set up: the PSC client (`passerelle` with its secret by default)
/// and one system client `his` (ES384 key, directory, Task, AuditEvent and Provenance scopes).
#[derive(Clone)]
struct Opts {
    engine: Engine,
    issuer: String,
    discovery_url: Option<String>,
    client_id: String,
    client_secret: Option<String>,
    tls_client: Option<(PathBuf, PathBuf)>,
    tls_ca: Option<PathBuf>,
    exchange_clients: Vec<String>,
    clock: Arc<dyn Clock>,
    /// Another instance's database (shared), instead of a fresh one.
    database_url: Option<String>,
    /// The public base (`base_url`) when it is not this instance's own address: instances
    /// behind one load balancer share it.
    public_base: Option<String>,
    signing_key_file: Option<PathBuf>,
    terms_version: Option<String>,
}

impl Opts {
    fn new(engine: Engine, issuer: &str) -> Opts {
        Opts {
            engine,
            issuer: issuer.to_owned(),
            discovery_url: None,
            client_id: "passerelle".into(),
            client_secret: Some(CLIENT_SECRET.into()),
            tls_client: None,
            tls_ca: None,
            exchange_clients: Vec::new(),
            clock: Arc::new(SystemClock),
            database_url: None,
            public_base: None,
            signing_key_file: None,
            terms_version: None,
        }
    }

    /// Over https: the gateway (and the test's browser) trust the provider's CA.
    fn trusting(mut self, p: &Provider) -> Opts {
        self.tls_ca = p.ca.clone();
        self
    }
}

/// A gateway whose PSC issuer is `issuer`.
async fn gateway(engine: Engine, issuer: &str, listener: tokio::net::TcpListener) -> Option<Psc> {
    start(Opts::new(engine, issuer), listener).await
}

async fn start(o: Opts, listener: tokio::net::TcpListener) -> Option<Psc> {
    let (url, guard) = match &o.database_url {
        Some(url) => (url.clone(), None),
        None => {
            let (url, guard) = fresh_database(o.engine).await?;
            (url, Some(guard))
        }
    };
    let addr = listener.local_addr().expect("addr");
    let local = format!("http://{addr}");
    let base = o.public_base.clone().unwrap_or_else(|| local.clone());
    let dir = temp_dir("passerelle-psc");
    let jwks_file = dir.join("his.jwks.json");
    std::fs::write(
        &jwks_file,
        serde_json::to_string(&client_key().1).expect("json"),
    )
    .expect("write");
    let mut config = Config {
        database_url: url.clone(),
        listen: addr.to_string(),
        base_url: Some(base.clone()),
        db_pool_size: 4,
        ..Config::default()
    };
    config.psc = Some(PscConfig {
        issuer: o.issuer.clone(),
        client_id: o.client_id.clone(),
        discovery_url: o.discovery_url.clone(),
        client_secret: o.client_secret.clone().map(Secret::new),
        tls_client_cert: o.tls_client.as_ref().map(|c| c.0.clone()),
        tls_client_key: o.tls_client.as_ref().map(|c| c.1.clone()),
        tls_ca_file: o.tls_ca.clone(),
        exchange_clients: o.exchange_clients.clone(),
        ..PscConfig::default()
    });
    config.auth.signing_key_file = o.signing_key_file.clone();
    config.auth.terms_version = o.terms_version.clone();
    config.auth.clients = vec![ClientConfig {
        client_id: "his".into(),
        jwks_file: Some(jwks_file),
        jwks_url: None,
        scopes: SYSTEM_SCOPES.split(' ').map(str::to_owned).collect(),
        organization: None,
    }];
    let app = App::open(&config, base.clone(), o.clock.clone())
        .await
        .expect("open app");
    let router = app.router(config.max_body_bytes);
    tokio::spawn(async move {
        // with the peer address, as `serve` does: it goes into the audit trail
        let _ = axum::serve(
            listener,
            router.into_make_service_with_connect_info::<std::net::SocketAddr>(),
        )
        .await;
    });
    Some(Psc {
        base: local,
        http: http_client(o.tls_ca.as_deref(), None),
        app,
        database_url: url,
        dir,
        _guard: guard,
    })
}

async fn listener() -> tokio::net::TcpListener {
    tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind")
}

struct Answer {
    status: u16,
    headers: reqwest::header::HeaderMap,
    body: Value,
}

impl Answer {
    fn header(&self, name: &str) -> String {
        self.headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_owned()
    }
}

async fn answer(r: reqwest::RequestBuilder) -> Answer {
    let r = r.send().await.expect("request");
    let status = r.status().as_u16();
    let headers = r.headers().clone();
    let text = r.text().await.expect("body");
    Answer {
        status,
        headers,
        body: serde_json::from_str(&text).unwrap_or(Value::String(text)),
    }
}

impl Psc {
    async fn token(&self, form: &[(&str, &str)]) -> Answer {
        answer(
            self.http
                .post(format!("{}/auth/token", self.base))
                .form(form),
        )
        .await
    }

    async fn get(&self, path: &str, token: Option<&str>) -> Answer {
        let mut r = self.http.get(format!("{}/fhir/{path}", self.base));
        if let Some(t) = token {
            r = r.bearer_auth(t);
        }
        answer(r).await
    }

    async fn write(&self, method: reqwest::Method, path: &str, token: &str, body: Value) -> Answer {
        answer(
            self.http
                .request(method, format!("{}/fhir/{path}", self.base))
                .bearer_auth(token)
                .header("content-type", "application/fhir+json")
                .body(body.to_string()),
        )
        .await
    }

    /// A client assertion of `his` (or of `iss`) with claims overridden by `extra`.
    fn assertion(&self, key: &EncodingKey, extra: Value) -> String {
        let mut claims = json!({
            "iss": "his", "sub": "his", "aud": format!("{}/auth/token", self.base),
            "exp": now() + 120, "iat": now(), "jti": uuid::Uuid::new_v4().to_string()
        });
        for (k, v) in extra.as_object().into_iter().flatten() {
            claims[k] = v.clone();
        }
        let mut header = Header::new(Algorithm::ES384);
        header.kid = Some("his-1".into());
        jsonwebtoken::encode(&header, &claims, key).expect("sign")
    }

    async fn client_credentials(&self, assertion: &str, scope: &str) -> Answer {
        self.token(&[
            ("grant_type", "client_credentials"),
            ("client_assertion_type", JWT_BEARER),
            ("client_assertion", assertion),
            ("scope", scope),
        ])
        .await
    }

    /// A system token with the directory, audit and provenance scopes.
    async fn system_token(&self) -> String {
        let a = self.assertion(&client_key().0, json!({}));
        let t = self.client_credentials(&a, SYSTEM_SCOPES).await;
        assert_eq!(t.status, 200, "{}", t.body);
        t.body["access_token"].as_str().expect("token").to_owned()
    }

    /// The resources a search finds (as the system).
    async fn search(&self, system: &str, query: &str) -> Vec<Value> {
        let a = self.get(query, Some(system)).await;
        assert_eq!(a.status, 200, "{query}: {}", a.body);
        a.body["entry"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|e| e["resource"].clone())
            .collect()
    }

    /// The authentication AuditEvents stored so far (BALP User Authentication), oldest first.
    async fn auth_events(&self, system: &str) -> Vec<Value> {
        self.app.audit.flush().await;
        let mut events = self
            .search(system, "AuditEvent?type=110114&_count=500")
            .await;
        events.sort_by(|a, b| a["recorded"].as_str().cmp(&b["recorded"].as_str()));
        events
    }

    /// The signed-in user's `/auth/session`.
    async fn session(&self, cookie: &str) -> Answer {
        answer(
            self.http
                .get(format!("{}/auth/session", self.base))
                .header("cookie", cookie),
        )
        .await
    }

    /// Accepts the terms in force from the gateway's own page (its `Origin`).
    async fn accept_terms(&self, cookie: &str) -> Answer {
        let terms = answer(self.http.get(format!("{}/auth/terms", self.base))).await;
        let version = terms.body["version"].as_str().expect("version").to_owned();
        answer(
            self.http
                .post(format!("{}/auth/terms", self.base))
                .header("cookie", cookie)
                .header("origin", &self.base)
                .form(&[("version", version.as_str())]),
        )
        .await
    }
}

fn assert_oauth_error(a: &Answer, status: u16, error: &str) {
    assert_eq!(a.status, status, "{}", a.body);
    assert_eq!(a.body["error"], error, "{}", a.body);
    assert_eq!(a.header("cache-control"), "no-store");
}

/// The events of one flow (`browser-sign-in`, `logout`, `token-exchange`,
/// `client-credentials`).
fn of_flow<'a>(events: &'a [Value], flow: &str) -> Vec<&'a Value> {
    events
        .iter()
        .filter(|e| e["subtype"][1]["code"] == flow)
        .collect()
}

// ---------------------------------------------------------------------------------------
// Bearer-only FHIR API (no provider needed: PSC is only called by the token exchange)

#[tokio::test]
async fn the_fhir_api_takes_bearer_gateway_tokens_only() {
    let l = listener().await;
    let unused = format!("http://127.0.0.1:{}", free_port());
    let Some(gw) = gateway(Engine::Sqlite, &unused, l).await else {
        return;
    };
    // metadata is public
    assert_eq!(gw.get("metadata", None).await.status, 200);
    // anything else needs a token; the dev header is ignored
    let a = gw.get("Patient", None).await;
    assert_eq!(a.status, 401, "{}", a.body);
    assert_eq!(a.header("www-authenticate"), "Bearer realm=\"passerelle\"");
    let a = answer(
        gw.http
            .get(format!("{}/fhir/Patient", gw.base))
            .header("x-passerelle-role", "PractitionerRole/x"),
    )
    .await;
    assert_eq!(a.status, 401);
    // a malformed token, and a well-formed one signed by another key
    let a = gw.get("Patient", Some("not-a-jwt")).await;
    assert_eq!(a.status, 401);
    assert_eq!(
        a.header("www-authenticate"),
        "Bearer realm=\"passerelle\", error=\"invalid_token\""
    );
    let other = passerelle::auth::keys::SigningKey::generate().expect("key");
    let forged = jsonwebtoken::encode(
        &Header::new(Algorithm::EdDSA),
        &json!({"iss": gw.base, "aud": format!("{}/fhir", gw.base), "sub": "his",
                "client_id": "his", "scope": "system/*.cruds", "exp": now() + 60,
                "iat": now(), "jti": "x"}),
        other.encoding(),
    )
    .expect("sign");
    let a = gw.get("Patient", Some(&forged)).await;
    assert_eq!(a.status, 401);
    assert!(a.body.to_string().contains("bad signature"), "{}", a.body);
    // the public key and the SMART configuration
    let jwks = answer(gw.http.get(format!("{}/auth/jwks", gw.base))).await;
    assert_eq!(jwks.body["keys"][0]["kty"], "OKP");
    assert_eq!(jwks.body["keys"][0]["crv"], "Ed25519");
    assert!(jwks.body["keys"][0].get("d").is_none());
    for path in [
        "/.well-known/smart-configuration",
        "/fhir/.well-known/smart-configuration",
    ] {
        let c = answer(gw.http.get(format!("{}{path}", gw.base))).await;
        assert_eq!(c.status, 200);
        assert_eq!(c.body["token_endpoint"], format!("{}/auth/token", gw.base));
        assert!(
            c.body["token_endpoint_auth_methods_supported"]
                .to_string()
                .contains("private_key_jwt")
        );
    }
}

#[tokio::test]
async fn client_credentials_with_private_key_jwt() {
    let l = listener().await;
    let unused = format!("http://127.0.0.1:{}", free_port());
    let Some(gw) = gateway(Engine::Sqlite, &unused, l).await else {
        return;
    };
    let (key, _) = client_key();
    // granted: the requested scopes the registration covers
    let a = gw.assertion(&key, json!({}));
    let t = gw
        .client_credentials(
            &a,
            "system/Organization.cru system/Task.rs system/Patient.r",
        )
        .await;
    assert_eq!(t.status, 200, "{}", t.body);
    assert_eq!(t.body["token_type"], "Bearer");
    assert_eq!(t.body["scope"], "system/Organization.cru system/Task.rs");
    assert_eq!(t.header("cache-control"), "no-store");
    let token = t.body["access_token"].as_str().expect("token").to_owned();
    // the token works within its scopes…
    let org = gw
        .write(
            reqwest::Method::POST,
            "Organization",
            &token,
            json!({"resourceType": "Organization", "name": "CH"}),
        )
        .await;
    assert_eq!(org.status, 201, "{}", org.body);
    assert_eq!(gw.get("Task", Some(&token)).await.status, 200);
    // …and not beyond: 403
    assert_eq!(gw.get("Patient", Some(&token)).await.status, 403);
    let id = org.body["id"].as_str().expect("id");
    let del = answer(
        gw.http
            .delete(format!("{}/fhir/Organization/{id}", gw.base))
            .bearer_auth(&token),
    )
    .await;
    assert_eq!(del.status, 403, "{}", del.body);
    // a batch needs system/*: 403
    let batch = gw
        .write(
            reqwest::Method::POST,
            "",
            &token,
            json!({"resourceType": "Bundle", "type": "batch", "entry": []}),
        )
        .await;
    assert_eq!(batch.status, 403, "{}", batch.body);

    // refusals
    assert_oauth_error(
        &gw.client_credentials(&a, "system/Task.rs").await,
        401,
        "invalid_client",
    ); // replayed jti
    let unknown = gw.assertion(&key, json!({"iss": "nobody", "sub": "nobody"}));
    assert_oauth_error(
        &gw.client_credentials(&unknown, "system/Task.rs").await,
        401,
        "invalid_client",
    );
    let aud = gw.assertion(&key, json!({"aud": "https://elsewhere/token"}));
    assert_oauth_error(
        &gw.client_credentials(&aud, "system/Task.rs").await,
        401,
        "invalid_client",
    );
    let expired = gw.assertion(&key, json!({"exp": now() - 120}));
    assert_oauth_error(
        &gw.client_credentials(&expired, "system/Task.rs").await,
        401,
        "invalid_client",
    );
    let long = gw.assertion(&key, json!({"exp": now() + 3600}));
    assert_oauth_error(
        &gw.client_credentials(&long, "system/Task.rs").await,
        401,
        "invalid_client",
    );
    let sub = gw.assertion(&key, json!({"sub": "someone-else"}));
    assert_oauth_error(
        &gw.client_credentials(&sub, "system/Task.rs").await,
        401,
        "invalid_client",
    );
    let no_jti = gw.assertion(&key, json!({"jti": ""}));
    assert_oauth_error(
        &gw.client_credentials(&no_jti, "system/Task.rs").await,
        401,
        "invalid_client",
    );
    let other =
        EncodingKey::from_ec_pem(&std::fs::read(data("test-other-es384.pem")).expect("key"))
            .expect("key");
    let forged = gw.assertion(&other, json!({}));
    let r = gw.client_credentials(&forged, "system/Task.rs").await;
    assert_oauth_error(&r, 401, "invalid_client");
    assert!(
        r.body["error_description"]
            .as_str()
            .unwrap_or("")
            .contains("bad signature"),
        "{}",
        r.body
    );
    let fresh = gw.assertion(&key, json!({}));
    assert_oauth_error(
        &gw.client_credentials(&fresh, "system/Patient.r").await,
        400,
        "invalid_scope",
    );
    let fresh = gw.assertion(&key, json!({}));
    assert_oauth_error(
        &gw.client_credentials(&fresh, "").await,
        400,
        "invalid_scope",
    );
    let fresh = gw.assertion(&key, json!({}));
    let no_type = gw
        .token(&[
            ("grant_type", "client_credentials"),
            ("client_assertion", &fresh),
            ("scope", "system/Task.rs"),
        ])
        .await;
    assert_oauth_error(&no_type, 401, "invalid_client");
    assert_oauth_error(
        &gw.token(&[("grant_type", "password")]).await,
        400,
        "unsupported_grant_type",
    );
    assert_oauth_error(
        &gw.token(&[
            ("grant_type", "client_credentials"),
            ("grant_type", "client_credentials"),
        ])
        .await,
        400,
        "invalid_request",
    );

    // each issue and refusal is an AuditEvent (BALP User Authentication): the client, its
    // address, the outcome and the reason; never a token or an assertion
    let system = gw.system_token().await;
    let events = gw.auth_events(&system).await;
    let cc = of_flow(&events, "client-credentials");
    let by = |e: &Value| e["agent"][0]["who"]["identifier"]["value"].clone();
    let reason = |e: &Value| e["outcomeDesc"].as_str().unwrap_or("").to_owned();
    let issued = cc
        .iter()
        .find(|e| e["outcome"] == "0")
        .expect("an issue is audited");
    assert_eq!(by(issued), "his");
    assert_eq!(issued["subtype"][0]["code"], "110122");
    assert_eq!(issued["agent"][0]["network"]["address"], "127.0.0.1");
    let replay = cc
        .iter()
        .find(|e| reason(e).contains("replayed"))
        .expect("the replay is audited");
    assert_eq!(replay["outcome"], "4");
    assert_eq!(by(replay), "his");
    assert!(
        reason(replay).starts_with("401: invalid_client"),
        "{}",
        reason(replay)
    );
    assert!(
        cc.iter()
            .any(|e| by(e) == "nobody" && reason(e).contains("unknown client"))
    );
    assert!(cc.iter().any(|e| reason(e).contains("invalid_scope")));
    let text = serde_json::to_string(&events).expect("json");
    assert!(!text.contains(&token) && !text.contains(&a) && !text.contains(&forged));
}

// ---------------------------------------------------------------------------------------
// Token exchange of a PSC access token (the provider is needed)

/// A minimal cookie jar for the provider's interaction cookies.
#[derive(Default)]
struct Jar(HashMap<String, String>);

impl Jar {
    fn take(&mut self, headers: &reqwest::header::HeaderMap) {
        for v in headers.get_all("set-cookie") {
            if let Some((pair, _)) = v.to_str().unwrap_or("").split_once(';')
                && let Some((k, v)) = pair.split_once('=')
            {
                self.0.insert(k.trim().to_owned(), v.to_owned());
            }
        }
    }
    fn header(&self) -> String {
        self.0
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect::<Vec<_>>()
            .join("; ")
    }
}

/// Signs in at the provider as `who` (at level `acr`) the way a PSC client application
/// does (authorization code + PKCE S256, `scope=openid scope_all`, `acr_values=eidas1`),
/// and returns the PSC access token.
async fn psc_access_token(p: &Provider, redirect: &str, who: &str, acr: &str) -> String {
    let http = http_client(p.ca.as_deref(), None);
    let verifier = URL_SAFE_NO_PAD.encode(uuid::Uuid::new_v4().as_bytes().repeat(2));
    let challenge = URL_SAFE_NO_PAD.encode(sha2::Sha256::digest(verifier.as_bytes()));
    let mut url = reqwest::Url::parse(&format!("{}/auth", p.issuer)).expect("url");
    url.query_pairs_mut()
        .append_pair("client_id", "passerelle")
        .append_pair("response_type", "code")
        .append_pair("scope", "openid scope_all")
        .append_pair("redirect_uri", redirect)
        .append_pair("state", "st")
        .append_pair("nonce", "nn")
        .append_pair("code_challenge", &challenge)
        .append_pair("code_challenge_method", "S256")
        .append_pair("acr_values", "eidas1")
        .append_pair("login_hint", who)
        .append_pair("test_acr", acr);
    let mut jar = Jar::default();
    let mut next = url.to_string();
    let code = loop {
        let r = http
            .get(&next)
            .header("cookie", jar.header())
            .send()
            .await
            .expect("provider");
        jar.take(r.headers());
        let location = r
            .headers()
            .get("location")
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned)
            .unwrap_or_else(|| panic!("no redirect from {next}: {}", r.status()));
        let location = reqwest::Url::parse(&p.issuer)
            .expect("url")
            .join(&location)
            .expect("url");
        if location.as_str().starts_with(redirect) {
            break location
                .query_pairs()
                .find(|(k, _)| k == "code")
                .map(|(_, v)| v.into_owned())
                .expect("code");
        }
        next = location.to_string();
    };
    let t: Value = http
        .post(format!("{}/token", p.issuer))
        .basic_auth("passerelle", Some(CLIENT_SECRET))
        .form(&[
            ("grant_type", "authorization_code"),
            ("code", &code),
            ("redirect_uri", redirect),
            ("code_verifier", &verifier),
        ])
        .send()
        .await
        .expect("token")
        .json()
        .await
        .expect("json");
    t["access_token"]
        .as_str()
        .unwrap_or_else(|| panic!("{t}"))
        .to_owned()
}

/// The directory a clinician acts in: a structure, the Practitioner keyed on its
/// SubjectNameID (the one made at their first sign-in, if any), a habilitation; returns the
/// PractitionerRole id.
async fn habilitation(gw: &Psc, system: &str, subject_name_id: &str) -> String {
    let org = gw
        .write(
            reqwest::Method::POST,
            "Organization",
            system,
            json!({"resourceType": "Organization", "name": "CH Test"}),
        )
        .await;
    assert_eq!(org.status, 201, "{}", org.body);
    let p = answer(
        gw.http
            .post(format!("{}/fhir/Practitioner", gw.base))
            .bearer_auth(system)
            .header("content-type", "application/fhir+json")
            .header(
                "if-none-exist",
                format!("identifier={IDNAT}|{subject_name_id}"),
            )
            .body(
                json!({
                    "resourceType": "Practitioner",
                    "identifier": [{"system": IDNAT, "value": subject_name_id}],
                    "name": [{"family": "DOC"}]
                })
                .to_string(),
            ),
    )
    .await;
    assert!(p.status == 201 || p.status == 200, "{}", p.body);
    let role = gw
        .write(reqwest::Method::POST, "PractitionerRole", system, json!({
            "resourceType": "PractitionerRole",
            "active": true,
            "practitioner": {"reference": format!("Practitioner/{}", p.body["id"].as_str().expect("id"))},
            "organization": {"reference": format!("Organization/{}", org.body["id"].as_str().expect("id"))},
            "code": [{"coding": [{"system": passerelle::auth::PROFILE_SYSTEM, "code": "prescripteur-medical"}]}]
        }))
        .await;
    assert_eq!(role.status, 201, "{}", role.body);
    role.body["id"].as_str().expect("id").to_owned()
}

async fn token_exchange(engine: Engine) {
    let l = listener().await;
    let base = format!("http://{}", l.local_addr().expect("addr"));
    let redirect = format!("{base}/auth/callback");
    let Some(p) = provider(&redirect) else { return };
    let Some(gw) = gateway(engine, &p.issuer, l).await else {
        return;
    };
    let system = gw.system_token().await;
    let role = habilitation(&gw, &system, DOCTOR).await;
    let other_role = habilitation(&gw, &system, OTHER_DOCTOR).await;

    let at = psc_access_token(&p, &redirect, DOCTOR, "eidas1").await;
    let exchange = |token: String, role: String| {
        let gw = &gw;
        async move {
            gw.token(&[
                ("grant_type", EXCHANGE),
                ("subject_token", &token),
                ("subject_token_type", AT_TYPE),
                ("practitioner_role", &format!("PractitionerRole/{role}")),
            ])
            .await
        }
    };
    // The exchange is a sign-in: the account (the one the directory made, not a second one)
    // is brought up to date from the claims; but no token before the terms are accepted.
    let refused = exchange(at.clone(), role.clone()).await;
    assert_oauth_error(&refused, 400, "invalid_grant");
    assert!(
        refused.body["error_description"]
            .as_str()
            .unwrap_or("")
            .contains("terms of use"),
        "{}",
        refused.body
    );
    let accounts = gw
        .search(
            &system,
            &format!("Practitioner?identifier={IDNAT}%7C{DOCTOR}"),
        )
        .await;
    assert_eq!(accounts.len(), 1, "{accounts:?}");
    let pid = accounts[0]["id"].as_str().expect("id").to_owned();
    assert_eq!(accounts[0]["meta"]["versionId"], "2");
    assert_eq!(accounts[0]["name"][1]["family"], "DOC0036624");
    assert_eq!(
        accounts[0]["qualification"][0]["code"]["coding"][0]["code"],
        "10"
    );
    // the clinician signs in with a browser and accepts the terms: then tokens are issued
    let (cb, _) = browser_sign_in(&gw, &p, &format!("&login_hint={DOCTOR}")).await;
    assert_eq!(cb.status, 303, "{}", cb.body);
    let accepted = gw.accept_terms(&session_cookie(&cb)).await;
    assert_eq!(accepted.status, 200, "{}", accepted.body);
    // someone else's habilitation: invalid_target
    assert_oauth_error(
        &exchange(at.clone(), other_role.clone()).await,
        400,
        "invalid_target",
    );
    let t = exchange(at.clone(), role.clone()).await;
    assert_eq!(t.status, 200, "{}", t.body);
    assert_eq!(t.body["issued_token_type"], AT_TYPE);
    assert_eq!(t.header("cache-control"), "no-store");
    let token = t.body["access_token"].as_str().expect("token").to_owned();
    // the gateway token carries the clinician (SubjectNameID, never PSC's sub) and the role
    let claims: Value = jsonwebtoken::dangerous::insecure_decode_claims(&token).expect("claims");
    assert_eq!(claims["sub"], DOCTOR);
    assert_eq!(
        claims["practitioner_role"],
        format!("PractitionerRole/{role}")
    );
    // the PSC token is not usable at the FHIR API, the gateway token is
    assert_eq!(gw.get("PractitionerRole", Some(&at)).await.status, 401);
    let read = gw
        .get(&format!("PractitionerRole/{role}"), Some(&token))
        .await;
    assert_eq!(read.status, 200, "{}", read.body);

    // refusals
    let wrong_type = gw
        .token(&[
            ("grant_type", EXCHANGE),
            ("subject_token", &at),
            (
                "subject_token_type",
                "urn:ietf:params:oauth:token-type:id_token",
            ),
            ("practitioner_role", &format!("PractitionerRole/{role}")),
        ])
        .await;
    assert_oauth_error(&wrong_type, 400, "invalid_request");
    let no_role = gw
        .token(&[
            ("grant_type", EXCHANGE),
            ("subject_token", &at),
            ("subject_token_type", AT_TYPE),
        ])
        .await;
    assert_oauth_error(&no_role, 400, "invalid_request");
    // a token PSC does not know (inactive at introspection)
    assert_oauth_error(
        &exchange("forged-token".into(), role.clone()).await,
        400,
        "invalid_request",
    );
    // an authentication level that is not accepted
    let weak = psc_access_token(&p, &redirect, DOCTOR, "eidas3").await;
    let r = exchange(weak, role.clone()).await;
    assert_oauth_error(&r, 400, "invalid_request");
    assert!(
        r.body["error_description"]
            .as_str()
            .unwrap_or("")
            .contains("eidas3"),
        "{}",
        r.body
    );
    // a habilitation that ends makes its tokens useless at once
    let patched = answer(
        gw.http
            .patch(format!("{}/fhir/PractitionerRole/{role}", gw.base))
            .bearer_auth(&system)
            .header("content-type", "application/json-patch+json")
            .body(json!([{"op": "replace", "path": "/active", "value": false}]).to_string()),
    )
    .await;
    assert_eq!(patched.status, 200, "{}", patched.body);
    let after = gw
        .get(&format!("PractitionerRole/{role}"), Some(&token))
        .await;
    assert_eq!(after.status, 401, "{}", after.body);
    // its only habilitation ended, the account is deactivated by the gateway: no exchange
    let refused = exchange(at.clone(), role.clone()).await;
    assert_oauth_error(&refused, 400, "invalid_grant");
    assert!(
        refused.body["error_description"]
            .as_str()
            .unwrap_or("")
            .contains("not active"),
        "{}",
        refused.body
    );

    // each issue and refusal is an AuditEvent: the clinician (SubjectNameID and account),
    // the habilitation asked, the outcome and the reason; never a token
    let events = gw.auth_events(&system).await;
    let ex = of_flow(&events, "token-exchange");
    let reason = |e: &Value| e["outcomeDesc"].as_str().unwrap_or("").to_owned();
    let issued = ex
        .iter()
        .find(|e| e["outcome"] == "0")
        .expect("the issue is audited");
    assert_eq!(issued["type"]["code"], "110114");
    assert_eq!(issued["subtype"][0]["code"], "110122");
    assert_eq!(issued["agent"][0]["who"]["identifier"]["system"], IDNAT);
    assert_eq!(issued["agent"][0]["who"]["identifier"]["value"], DOCTOR);
    assert_eq!(
        issued["agent"][0]["who"]["reference"],
        format!("Practitioner/{pid}")
    );
    assert_eq!(
        issued["entity"][0]["what"]["reference"],
        format!("PractitionerRole/{role}")
    );
    assert_eq!(issued["agent"][0]["network"]["address"], "127.0.0.1");
    for word in [
        "invalid_grant",
        "terms of use",
        "invalid_target",
        "eidas3",
        "not active",
    ] {
        assert!(
            ex.iter()
                .any(|e| e["outcome"] == "4" && reason(e).contains(word)),
            "no refusal saying `{word}`: {ex:?}"
        );
    }
    let text = serde_json::to_string(&events).expect("json");
    assert!(!text.contains(&at) && !text.contains(&token));
}

#[tokio::test]
async fn token_exchange_on_sqlite() {
    token_exchange(Engine::Sqlite).await;
}

#[tokio::test]
async fn token_exchange_on_postgres() {
    token_exchange(Engine::Postgres).await;
}

// ---------------------------------------------------------------------------------------
// Browser sign-in (the provider is needed)

/// Plays a browser: `/auth/login` at the gateway, the provider's (automatic) login and
/// consent, back to `/auth/callback`. `tamper` may change the authorization URL the gateway
/// sent (a test-only `test_acr`). Returns the callback's answer and its URL.
async fn browser_sign_in(gw: &Psc, p: &Provider, tamper: &str) -> (Answer, String) {
    let login = answer(gw.http.get(format!("{}/auth/login", gw.base))).await;
    assert_eq!(login.status, 303, "{}", login.body);
    let mut next = format!("{}{tamper}", login.header("location"));
    let mut jar = Jar::default();
    loop {
        if next.starts_with(&gw.base) {
            let a = answer(gw.http.get(&next)).await;
            return (a, next);
        }
        let r = gw
            .http
            .get(&next)
            .header("cookie", jar.header())
            .send()
            .await
            .expect("provider");
        jar.take(r.headers());
        let location = r
            .headers()
            .get("location")
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned)
            .unwrap_or_else(|| panic!("no redirect from {next}: {}", r.status()));
        next = reqwest::Url::parse(&p.issuer)
            .expect("url")
            .join(&location)
            .expect("url")
            .to_string();
    }
}

fn session_cookie(a: &Answer) -> String {
    let set = a.header("set-cookie");
    set.split(';').next().unwrap_or("").to_owned()
}

async fn browser(engine: Engine) {
    let l = listener().await;
    let base = format!("http://{}", l.local_addr().expect("addr"));
    let Some(p) = provider(&format!("{base}/auth/callback")) else {
        return;
    };
    let clock = passerelle::time::ManualClock::new(i64::try_from(now()).expect("now") * 1_000_000);
    let opts = Opts {
        clock: Arc::new(clock.clone()),
        ..Opts::new(engine, &p.issuer)
    };
    let Some(gw) = start(opts, l).await else {
        return;
    };

    // the authorization request is PSC's: code + PKCE S256, state, nonce, scope_all, eidas1
    let login = answer(gw.http.get(format!("{}/auth/login", gw.base))).await;
    let to = reqwest::Url::parse(&login.header("location")).expect("url");
    let q: HashMap<String, String> = to.query_pairs().into_owned().collect();
    assert_eq!(to.path(), "/auth");
    assert_eq!(q["response_type"], "code");
    assert_eq!(q["scope"], "openid scope_all");
    assert_eq!(q["acr_values"], "eidas1");
    assert_eq!(q["code_challenge_method"], "S256");
    assert!(q["state"].len() >= 43 && q["nonce"].len() >= 43 && q["code_challenge"].len() == 43);
    assert_eq!(q["redirect_uri"], format!("{}/auth/callback", gw.base));

    // a full sign-in: a session cookie, HttpOnly, SameSite=Lax, not Secure on http
    let (cb, cb_url) = browser_sign_in(&gw, &p, "").await;
    assert_eq!(cb.status, 303, "{}", cb.body);
    assert_eq!(cb.header("location"), "/auth/session");
    let set = cb.header("set-cookie");
    assert!(
        set.contains("HttpOnly") && set.contains("SameSite=Lax") && set.contains("Path=/"),
        "{set}"
    );
    assert!(!set.contains("Secure"), "{set}");
    let cookie = session_cookie(&cb);
    let me = answer(
        gw.http
            .get(format!("{}/auth/session", gw.base))
            .header("cookie", &cookie),
    )
    .await;
    assert_eq!(me.status, 200, "{}", me.body);
    // keyed on SubjectNameID (PSC's sub is a federated id)
    assert_eq!(me.body["SubjectNameID"], OTHER_DOCTOR);
    assert_eq!(me.body["acr"], "eidas1");
    // the database holds the session id's hash, never the id
    let id = cookie.split_once('=').expect("cookie").1;
    let keys = session_keys(&gw.database_url).await;
    assert!(keys.contains(&URL_SAFE_NO_PAD.encode(sha2::Sha256::digest(id.as_bytes()))));
    assert!(!keys.iter().any(|k| k == id));
    // the FHIR API never takes the cookie
    let fhir = answer(
        gw.http
            .get(format!("{}/fhir/Patient", gw.base))
            .header("cookie", &cookie),
    )
    .await;
    assert_eq!(fhir.status, 401);
    // a replayed callback (same state and code): 400
    assert_eq!(answer(gw.http.get(&cb_url)).await.status, 400);
    // a forged state: 400
    let forged = answer(
        gw.http
            .get(format!("{}/auth/callback?state=forged&code=x", gw.base)),
    )
    .await;
    assert_eq!(forged.status, 400);

    // idle limit: 30 minutes without a request ends the session
    clock.advance(29 * 60 * 1_000_000);
    let still = answer(
        gw.http
            .get(format!("{}/auth/session", gw.base))
            .header("cookie", &cookie),
    )
    .await;
    assert_eq!(still.status, 200);
    clock.advance(31 * 60 * 1_000_000);
    let idle = answer(
        gw.http
            .get(format!("{}/auth/session", gw.base))
            .header("cookie", &cookie),
    )
    .await;
    assert_eq!(idle.status, 401);

    // absolute limit: 4 hours even when active
    let (cb, _) = browser_sign_in(&gw, &p, "").await;
    assert_eq!(cb.status, 303, "{}", cb.body);
    let cookie = session_cookie(&cb);
    for _ in 0..9 {
        clock.advance(25 * 60 * 1_000_000);
        let a = answer(
            gw.http
                .get(format!("{}/auth/session", gw.base))
                .header("cookie", &cookie),
        )
        .await;
        assert_eq!(a.status, 200);
    }
    clock.advance(25 * 60 * 1_000_000);
    let old = answer(
        gw.http
            .get(format!("{}/auth/session", gw.base))
            .header("cookie", &cookie),
    )
    .await;
    assert_eq!(old.status, 401);

    // logout: the session ends here, the browser goes to PSC's end_session_endpoint
    let (cb, _) = browser_sign_in(&gw, &p, "").await;
    assert_eq!(cb.status, 303, "{}", cb.body);
    let cookie = session_cookie(&cb);
    let out = answer(
        gw.http
            .get(format!("{}/auth/logout", gw.base))
            .header("cookie", &cookie),
    )
    .await;
    assert_eq!(out.status, 303);
    let to = reqwest::Url::parse(&out.header("location")).expect("url");
    assert!(
        to.as_str()
            .starts_with(&format!("{}/session/end", p.issuer)),
        "{to}"
    );
    let q: HashMap<String, String> = to.query_pairs().into_owned().collect();
    assert!(q.contains_key("id_token_hint"));
    assert_eq!(
        q["post_logout_redirect_uri"],
        format!("{}/auth/logged-out", gw.base)
    );
    assert!(out.header("set-cookie").contains("Max-Age=0"));
    let gone = answer(
        gw.http
            .get(format!("{}/auth/session", gw.base))
            .header("cookie", &cookie),
    )
    .await;
    assert_eq!(gone.status, 401);

    // an authentication level that is not accepted: 401, no session
    let (weak, _) = browser_sign_in(&gw, &p, "&test_acr=eidas3").await;
    assert_eq!(weak.status, 401, "{}", weak.body);
    assert!(weak.body.to_string().contains("eidas3"), "{}", weak.body);
    assert!(weak.header("set-cookie").is_empty());

    // sign-ins, their failures and the logout are AuditEvents (BALP User Authentication)
    let system = gw.system_token().await;
    let events = gw.auth_events(&system).await;
    let reason = |e: &Value| e["outcomeDesc"].as_str().unwrap_or("").to_owned();
    let sign_ins = of_flow(&events, "browser-sign-in");
    let ok: Vec<_> = sign_ins.iter().filter(|e| e["outcome"] == "0").collect();
    assert_eq!(ok.len(), 3, "{sign_ins:?}");
    assert_eq!(ok[0]["subtype"][0]["code"], "110122");
    assert_eq!(
        ok[0]["agent"][0]["who"]["identifier"]["value"],
        OTHER_DOCTOR
    );
    assert!(
        ok[0]["agent"][0]["who"]["reference"]
            .as_str()
            .unwrap_or("")
            .starts_with("Practitioner/")
    );
    assert_eq!(ok[0]["agent"][0]["network"]["address"], "127.0.0.1");
    for (status, word) in [("400", "already used"), ("401", "eidas3")] {
        assert!(
            sign_ins.iter().any(|e| e["outcome"] == "4"
                && reason(e).starts_with(status)
                && reason(e).contains(word)),
            "no failure `{status} … {word}`: {sign_ins:?}"
        );
    }
    let out = of_flow(&events, "logout");
    assert_eq!(out.len(), 1, "{out:?}");
    assert_eq!(out[0]["subtype"][0]["code"], "110123");
    assert_eq!(
        out[0]["agent"][0]["who"]["identifier"]["value"],
        OTHER_DOCTOR
    );
    assert!(!serde_json::to_string(&events).expect("json").contains(id));
}

/// The `id_hash` column of the sessions table.
async fn session_keys(database_url: &str) -> Vec<String> {
    use sqlx::Connection;
    let sql = "SELECT id_hash FROM auth_sessions";
    if database_url.starts_with("sqlite:") {
        let mut c = sqlx::SqliteConnection::connect(database_url)
            .await
            .expect("sqlite");
        sqlx::query_scalar(sql)
            .fetch_all(&mut c)
            .await
            .expect("select")
    } else {
        let mut c = sqlx::PgConnection::connect(database_url)
            .await
            .expect("postgres");
        sqlx::query_scalar(sql)
            .fetch_all(&mut c)
            .await
            .expect("select")
    }
}

#[tokio::test]
async fn browser_sign_in_on_sqlite() {
    browser(Engine::Sqlite).await;
}

#[tokio::test]
async fn browser_sign_in_on_postgres() {
    browser(Engine::Postgres).await;
}

#[tokio::test]
async fn a_discovery_document_naming_another_issuer_is_refused() {
    let l = listener().await;
    let base = format!("http://{}", l.local_addr().expect("addr"));
    let Some(p) = provider(&format!("{base}/auth/callback")) else {
        return;
    };
    // PSC's discovery path, but the configured issuer is not the one the document names
    let discovery = format!("{}/.well-known/wallet-openid-configuration", p.issuer);
    let wrong = format!("{}/auth/realms/esante-wallet", p.issuer);
    let opts = Opts {
        discovery_url: Some(discovery),
        ..Opts::new(Engine::Sqlite, &wrong)
    };
    let Some(gw) = start(opts, l).await else {
        return;
    };
    let login = answer(gw.http.get(format!("{}/auth/login", gw.base))).await;
    assert_eq!(login.status, 502, "{}", login.body);
    assert!(
        login.body.to_string().contains("names issuer"),
        "{}",
        login.body
    );
}

/// The provider's second client gets RS256 ID tokens (checked with the provider's JWKS) and
/// userinfo as a signed JWT (`application/jwt`).
#[tokio::test]
async fn browser_sign_in_with_rs256_id_token_and_signed_userinfo() {
    let l = listener().await;
    let base = format!("http://{}", l.local_addr().expect("addr"));
    let Some(p) = provider(&format!("{base}/auth/callback")) else {
        return;
    };
    let opts = Opts {
        client_id: "passerelle-rs256".into(),
        ..Opts::new(Engine::Sqlite, &p.issuer)
    };
    let Some(gw) = start(opts, l).await else {
        return;
    };
    let (cb, _) = browser_sign_in(&gw, &p, "").await;
    assert_eq!(cb.status, 303, "{}", cb.body);
    let cookie = session_cookie(&cb);
    let me = answer(
        gw.http
            .get(format!("{}/auth/session", gw.base))
            .header("cookie", &cookie),
    )
    .await;
    assert_eq!(me.status, 200, "{}", me.body);
    assert_eq!(me.body["SubjectNameID"], OTHER_DOCTOR);
}

/// Only the configured PSC clients' tokens may be exchanged (default: the gateway's own).
#[tokio::test]
async fn tokens_of_other_psc_clients_are_not_exchanged() {
    let l = listener().await;
    let base = format!("http://{}", l.local_addr().expect("addr"));
    let redirect = format!("{base}/auth/callback");
    let Some(p) = provider(&redirect) else { return };
    // this gateway is the PSC client passerelle-rs256; the token below is passerelle's
    let opts = Opts {
        client_id: "passerelle-rs256".into(),
        ..Opts::new(Engine::Sqlite, &p.issuer)
    };
    let Some(gw) = start(opts, l).await else {
        return;
    };
    let system = gw.system_token().await;
    let role = habilitation(&gw, &system, DOCTOR).await;
    let at = psc_access_token(&p, &redirect, DOCTOR, "eidas1").await;
    let r = gw
        .token(&[
            ("grant_type", EXCHANGE),
            ("subject_token", &at),
            ("subject_token_type", AT_TYPE),
            ("practitioner_role", &format!("PractitionerRole/{role}")),
        ])
        .await;
    assert_oauth_error(&r, 400, "invalid_request");
    assert!(
        r.body["error_description"]
            .as_str()
            .unwrap_or("")
            .contains("passerelle"),
        "{}",
        r.body
    );
}

// ---------------------------------------------------------------------------------------
// Accounts: the first sign-in makes the Practitioner

async fn first_sign_in(engine: Engine) {
    let l = listener().await;
    let base = format!("http://{}", l.local_addr().expect("addr"));
    let Some(p) = provider(&format!("{base}/auth/callback")) else {
        return;
    };
    let Some(gw) = gateway(engine, &p.issuer, l).await else {
        return;
    };
    let system = gw.system_token().await;
    let accounts = |who: &'static str| {
        let (gw, system) = (&gw, &system);
        async move {
            gw.search(system, &format!("Practitioner?identifier={IDNAT}%7C{who}"))
                .await
        }
    };
    let trail = |id: String| {
        let (gw, system) = (&gw, &system);
        async move {
            gw.search(
                system,
                &format!("Provenance?target=Practitioner/{id}&_count=50"),
            )
            .await
        }
    };
    assert!(accounts(DOCTOR).await.is_empty());

    // a browser sign-in makes the account from the claims, keyed on SubjectNameID
    let (cb, _) = browser_sign_in(&gw, &p, &format!("&login_hint={DOCTOR}")).await;
    assert_eq!(cb.status, 303, "{}", cb.body);
    let me = gw.session(&session_cookie(&cb)).await;
    let found = accounts(DOCTOR).await;
    assert_eq!(found.len(), 1);
    let a = &found[0];
    let id = a["id"].as_str().expect("id").to_owned();
    assert_eq!(me.body["practitioner"], format!("Practitioner/{id}"));
    assert_eq!(a["active"], true);
    assert_eq!(a["meta"]["versionId"], "1");
    assert_eq!(a["identifier"][0]["system"], IDNAT);
    assert_eq!(a["identifier"][0]["value"], DOCTOR);
    assert_eq!(a["identifier"][1]["system"], "https://rpps.esante.gouv.fr");
    assert_eq!(a["identifier"][1]["value"], "99700366240");
    assert!(
        !a.to_string().contains("f:550dc1c8"),
        "PSC's sub is not an identifier"
    );
    assert_eq!(a["name"][0]["family"], "DOC0036624");
    assert_eq!(a["name"][0]["given"][0], "KIT");
    let q = &a["qualification"];
    assert_eq!(
        q[0]["code"]["coding"][0]["system"],
        passerelle::auth::accounts::PROFESSION_SYSTEM
    );
    assert_eq!(q[0]["code"]["coding"][0]["code"], "10");
    assert_eq!(
        q[1]["code"]["coding"][0]["system"],
        passerelle::auth::accounts::SPECIALTY_SYSTEM
    );
    assert_eq!(q[1]["code"]["coding"][0]["code"], "SM26");
    let prov = trail(id.clone()).await;
    assert_eq!(prov.len(), 1, "{prov:?}");
    assert_eq!(
        prov[0]["reason"][0]["text"],
        "account created at first sign-in with Pro Santé Connect"
    );
    assert_eq!(prov[0]["activity"]["coding"][0]["code"], "created");
    assert_eq!(
        prov[0]["target"][0]["reference"],
        format!("Practitioner/{id}/_history/1")
    );

    // the same claims again: the same account, untouched (no new version, no Provenance)
    let (cb, _) = browser_sign_in(&gw, &p, &format!("&login_hint={DOCTOR}")).await;
    assert_eq!(cb.status, 303, "{}", cb.body);
    let again = accounts(DOCTOR).await;
    assert_eq!(again.len(), 1);
    assert_eq!(again[0]["meta"]["versionId"], "1");
    assert_eq!(trail(id.clone()).await.len(), 1);

    // changed claims: a new version, and its Provenance
    p.set_claim(DOCTOR, "family_name", json!("DOC-EPOUSE"));
    let (cb, _) = browser_sign_in(&gw, &p, &format!("&login_hint={DOCTOR}")).await;
    assert_eq!(cb.status, 303, "{}", cb.body);
    let changed = accounts(DOCTOR).await;
    assert_eq!(changed.len(), 1);
    assert_eq!(changed[0]["id"], id.as_str());
    assert_eq!(changed[0]["meta"]["versionId"], "2");
    assert_eq!(changed[0]["name"][0]["family"], "DOC-EPOUSE");
    let prov = trail(id.clone()).await;
    assert_eq!(prov.len(), 2, "{prov:?}");
    assert!(prov.iter().any(|p| {
        p["activity"]["coding"][0]["code"] == "updated"
            && p["target"][0]["reference"] == format!("Practitioner/{id}/_history/2")
    }));

    // the token exchange makes the account too (here refused: no terms, no habilitation)
    let redirect = format!("{}/auth/callback", gw.base);
    let at = psc_access_token(&p, &redirect, OTHER_DOCTOR, "eidas1").await;
    let r = gw
        .token(&[
            ("grant_type", EXCHANGE),
            ("subject_token", &at),
            ("subject_token_type", AT_TYPE),
            ("practitioner_role", "PractitionerRole/none"),
        ])
        .await;
    assert_oauth_error(&r, 400, "invalid_grant");
    let other = accounts(OTHER_DOCTOR).await;
    assert_eq!(other.len(), 1);
    assert_eq!(other[0]["name"][0]["family"], "SPECIALISTE0021889");
    // no RPPS in this one's claims
    assert_eq!(other[0]["identifier"].as_array().map(Vec::len), Some(1));

    // concurrent first sign-ins of one person make one account
    let bytes = std::fs::read(data("userinfo-edit-test-identity-podologue.json")).expect("claims");
    let identity = passerelle::auth::psc::identity_from_json(&bytes).expect("identity");
    let mut tasks = Vec::new();
    for _ in 0..8 {
        let (fhir, identity) = (gw.app.fhir.clone(), identity.clone());
        tasks.push(tokio::spawn(async move {
            passerelle::auth::accounts::ensure_practitioner(&fhir, &identity).await
        }));
    }
    let mut ids = Vec::new();
    for t in tasks {
        ids.push(t.await.expect("task").expect("account").id);
    }
    ids.sort();
    ids.dedup();
    assert_eq!(ids.len(), 1, "{ids:?}");
    let edit = gw
        .search(
            &system,
            &format!(
                "Practitioner?identifier={IDNAT}%7C{}",
                identity.subject_name_id
            ),
        )
        .await;
    assert_eq!(edit.len(), 1);
    assert_eq!(edit[0]["meta"]["versionId"], "1");
    assert_eq!(trail(ids[0].clone()).await.len(), 1);
}

#[tokio::test]
async fn first_sign_in_creates_the_practitioner_on_sqlite() {
    first_sign_in(Engine::Sqlite).await;
}

#[tokio::test]
async fn first_sign_in_creates_the_practitioner_on_postgres() {
    first_sign_in(Engine::Postgres).await;
}

// ---------------------------------------------------------------------------------------
// Terms of use

async fn terms_of_use(engine: Engine) {
    let l = listener().await;
    let base = format!("http://{}", l.local_addr().expect("addr"));
    let redirect = format!("{base}/auth/callback");
    let Some(p) = provider(&redirect) else { return };
    let Some(gw) = gateway(engine, &p.issuer, l).await else {
        return;
    };
    let system = gw.system_token().await;
    let role = habilitation(&gw, &system, OTHER_DOCTOR).await;

    // the text and its version, for anyone
    let terms = answer(gw.http.get(format!("{}/auth/terms", gw.base))).await;
    assert_eq!(terms.status, 200);
    let version = terms.body["version"].as_str().expect("version").to_owned();
    assert_eq!(version, passerelle::auth::terms::SHIPPED_VERSION);
    assert!(terms.body["text"].as_str().unwrap_or("").contains("charte"));
    assert_eq!(terms.body["signedIn"], false);

    // signed in: acceptance pending, at /auth/terms and /auth/session
    let (cb, _) = browser_sign_in(&gw, &p, "").await;
    assert_eq!(cb.status, 303, "{}", cb.body);
    let cookie = session_cookie(&cb);
    let me = gw.session(&cookie).await;
    assert_eq!(me.body["terms"]["status"], "pending", "{}", me.body);
    let mine = answer(
        gw.http
            .get(format!("{}/auth/terms", gw.base))
            .header("cookie", &cookie),
    )
    .await;
    assert_eq!(mine.body["signedIn"], true);
    assert_eq!(mine.body["accepted"], false);
    // no token until accepted
    let exchange = |at: String| {
        let (gw, role) = (&gw, &role);
        async move {
            gw.token(&[
                ("grant_type", EXCHANGE),
                ("subject_token", &at),
                ("subject_token_type", AT_TYPE),
                ("practitioner_role", &format!("PractitionerRole/{role}")),
            ])
            .await
        }
    };
    let at = psc_access_token(&p, &redirect, OTHER_DOCTOR, "eidas1").await;
    let r = exchange(at).await;
    assert_oauth_error(&r, 400, "invalid_grant");
    assert!(
        r.body["error_description"]
            .as_str()
            .unwrap_or("")
            .contains(&version)
    );

    // accepting is a same-origin form post of the version in force, by a signed-in user
    let post = |origin: Option<&str>, cookie: Option<&str>, version: &str| {
        let mut r = gw
            .http
            .post(format!("{}/auth/terms", gw.base))
            .form(&[("version", version)]);
        if let Some(o) = origin {
            r = r.header("origin", o);
        }
        if let Some(c) = cookie {
            r = r.header("cookie", c);
        }
        answer(r)
    };
    assert_eq!(post(None, Some(&cookie), &version).await.status, 403);
    assert_eq!(
        post(Some("https://evil.example"), Some(&cookie), &version)
            .await
            .status,
        403
    );
    assert_eq!(post(Some(&gw.base), None, &version).await.status, 401);
    assert_eq!(
        post(Some(&gw.base), Some(&cookie), "0-old").await.status,
        409
    );
    let ok = post(Some(&gw.base), Some(&cookie), &version).await;
    assert_eq!(ok.status, 200, "{}", ok.body);
    assert_eq!(ok.body["version"], version.as_str());
    let me = gw.session(&cookie).await;
    assert_eq!(me.body["terms"]["status"], "accepted", "{}", me.body);
    let pid = me.body["practitioner"]
        .as_str()
        .expect("practitioner")
        .trim_start_matches("Practitioner/")
        .to_owned();
    // recorded on the Practitioner, with a Provenance naming the person
    let account = gw
        .get(&format!("Practitioner/{pid}"), Some(&system))
        .await
        .body;
    let ext = account["extension"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|e| e["url"] == passerelle::auth::terms::TERMS_EXTENSION)
        .expect("the acceptance extension")
        .clone();
    assert_eq!(ext["extension"][0]["valueString"], version.as_str());
    assert!(ext["extension"][1]["valueDateTime"].is_string());
    let prov = gw
        .search(
            &system,
            &format!("Provenance?target=Practitioner/{pid}&_count=50"),
        )
        .await;
    assert!(prov.iter().any(|p| {
        p["reason"][0]["text"] == format!("terms of use accepted (version {version})")
            && p["agent"][0]["who"]["reference"] == format!("Practitioner/{pid}")
    }));
    let at = psc_access_token(&p, &redirect, OTHER_DOCTOR, "eidas1").await;
    let t = exchange(at).await;
    assert_eq!(t.status, 200, "{}", t.body);

    // a new version of the terms needs a new acceptance
    let l2 = listener().await;
    let opts = Opts {
        database_url: Some(gw.database_url.clone()),
        terms_version: Some("2099-01".into()),
        ..Opts::new(engine, &p.issuer)
    };
    let Some(gw2) = start(opts, l2).await else {
        return;
    };
    let at = psc_access_token(&p, &redirect, OTHER_DOCTOR, "eidas1").await;
    let r = gw2
        .token(&[
            ("grant_type", EXCHANGE),
            ("subject_token", &at),
            ("subject_token_type", AT_TYPE),
            ("practitioner_role", &format!("PractitionerRole/{role}")),
        ])
        .await;
    assert_oauth_error(&r, 400, "invalid_grant");
    assert!(
        r.body["error_description"]
            .as_str()
            .unwrap_or("")
            .contains("2099-01")
    );
    let shown = answer(gw2.http.get(format!("{}/auth/terms", gw2.base))).await;
    assert_eq!(shown.body["version"], "2099-01");
}

#[tokio::test]
async fn terms_of_use_are_accepted_once_per_version_on_sqlite() {
    terms_of_use(Engine::Sqlite).await;
}

#[tokio::test]
async fn terms_of_use_are_accepted_once_per_version_on_postgres() {
    terms_of_use(Engine::Postgres).await;
}

// ---------------------------------------------------------------------------------------
// Several instances on one PostgreSQL share sessions, sign-ins and the jti cache

#[tokio::test]
async fn instances_on_one_postgres_share_sign_in_state() {
    let (la, lb) = (listener().await, listener().await);
    let base = format!("http://{}", la.local_addr().expect("addr"));
    let Some(p) = provider(&format!("{base}/auth/callback")) else {
        return;
    };
    let keys = temp_dir("passerelle-keys");
    let opts = Opts {
        signing_key_file: Some(keys.join("gateway.pem")),
        ..Opts::new(Engine::Postgres, &p.issuer)
    };
    let Some(a) = start(opts.clone(), la).await else {
        return;
    };
    // B is A's twin behind one load balancer: one public base, one database, one key file
    let b = start(
        Opts {
            database_url: Some(a.database_url.clone()),
            public_base: Some(a.base.clone()),
            ..opts
        },
        lb,
    )
    .await
    .expect("second instance");

    // signed in through A, the session works at B
    let (cb, _) = browser_sign_in(&a, &p, "").await;
    assert_eq!(cb.status, 303, "{}", cb.body);
    let cookie = session_cookie(&cb);
    let at_b = b.session(&cookie).await;
    assert_eq!(at_b.status, 200, "{}", at_b.body);
    assert_eq!(at_b.body["SubjectNameID"], OTHER_DOCTOR);

    // a sign-in started at A may be finished at B (the pending sign-in is shared) — but once
    let login = answer(a.http.get(format!("{}/auth/login", a.base))).await;
    let state = reqwest::Url::parse(&login.header("location"))
        .expect("url")
        .query_pairs()
        .find(|(k, _)| k == "state")
        .map(|(_, v)| v.into_owned())
        .expect("state");
    let forged = format!("{}/auth/callback?state={state}&code=not-a-code", b.base);
    assert_eq!(
        answer(b.http.get(&forged)).await.status,
        401,
        "B knows A's state"
    );
    assert_eq!(
        answer(a.http.get(forged.replace(&b.base, &a.base)))
            .await
            .status,
        400,
        "used once"
    );

    // a client assertion used at A is refused at B
    let (key, _) = client_key();
    let assertion = a.assertion(&key, json!({}));
    let t = a.client_credentials(&assertion, "system/Task.rs").await;
    assert_eq!(t.status, 200, "{}", t.body);
    let replay = b.client_credentials(&assertion, "system/Task.rs").await;
    assert_oauth_error(&replay, 401, "invalid_client");
    assert!(
        replay.body["error_description"]
            .as_str()
            .unwrap_or("")
            .contains("replayed")
    );
    // A's gateway token works at B (one signing key file)
    let token = t.body["access_token"].as_str().expect("token");
    assert_eq!(b.get("Task", Some(token)).await.status, 200);

    // logged out at B, the session is dead at A too
    let out = answer(
        b.http
            .get(format!("{}/auth/logout", b.base))
            .header("cookie", &cookie),
    )
    .await;
    assert_eq!(out.status, 303);
    assert_eq!(a.session(&cookie).await.status, 401);
    assert_eq!(b.session(&cookie).await.status, 401);
    let _ = std::fs::remove_dir_all(keys);
}

// ---------------------------------------------------------------------------------------
// PSC over https, and mutual TLS

/// Signs in over https with `client_secret_basic`: the gateway trusts the test CA.
#[tokio::test]
async fn https_sign_in_with_client_secret_basic() {
    let tls = tls_fixture();
    let l = listener().await;
    let base = format!("http://{}", l.local_addr().expect("addr"));
    let Some(p) = start_provider(&format!("{base}/auth/callback"), Some(&tls)) else {
        return;
    };
    assert!(p.issuer.starts_with("https://"));
    let opts = Opts::new(Engine::Sqlite, &p.issuer).trusting(&p);
    let Some(gw) = start(opts, l).await else {
        return;
    };
    let (cb, _) = browser_sign_in(&gw, &p, &format!("&login_hint={DOCTOR}")).await;
    assert_eq!(cb.status, 303, "{}", cb.body);
    let me = gw.session(&session_cookie(&cb)).await;
    assert_eq!(me.status, 200, "{}", me.body);
    assert_eq!(me.body["SubjectNameID"], DOCTOR);
}

/// `tls_client_auth`: no client secret, the client certificate authenticates the gateway at
/// PSC's `mtls_endpoint_aliases` (the main https port asks for no certificate, so the code
/// exchange, userinfo and introspection succeed only through the aliases).
#[tokio::test]
async fn mutual_tls_sign_in_and_token_exchange() {
    let tls = tls_fixture();
    let l = listener().await;
    let base = format!("http://{}", l.local_addr().expect("addr"));
    let redirect = format!("{base}/auth/callback");
    let Some(p) = start_provider(&redirect, Some(&tls)) else {
        return;
    };
    let opts = Opts {
        client_id: "passerelle-mtls".into(),
        client_secret: None,
        tls_client: Some((tls.path("client.pem"), tls.path("client-key.pem"))),
        exchange_clients: vec!["passerelle".into()],
        ..Opts::new(Engine::Sqlite, &p.issuer).trusting(&p)
    };
    let Some(gw) = start(opts, l).await else {
        return;
    };
    // the browser sign-in: code exchange and userinfo over mutual TLS
    let (cb, _) = browser_sign_in(&gw, &p, &format!("&login_hint={DOCTOR}")).await;
    assert_eq!(cb.status, 303, "{}", cb.body);
    let cookie = session_cookie(&cb);
    let me = gw.session(&cookie).await;
    assert_eq!(me.body["SubjectNameID"], DOCTOR);
    assert_eq!(gw.accept_terms(&cookie).await.status, 200);
    // the token exchange: introspection and userinfo over mutual TLS
    let system = gw.system_token().await;
    let role = habilitation(&gw, &system, DOCTOR).await;
    let at = psc_access_token(&p, &redirect, DOCTOR, "eidas1").await;
    let t = gw
        .token(&[
            ("grant_type", EXCHANGE),
            ("subject_token", &at),
            ("subject_token_type", AT_TYPE),
            ("practitioner_role", &format!("PractitionerRole/{role}")),
        ])
        .await;
    assert_eq!(t.status, 200, "{}", t.body);
}

/// The refusals of TLS towards PSC, each with a clear reason.
#[tokio::test]
async fn psc_tls_refusals() {
    let tls = tls_fixture();
    let (l1, l2, l3) = (listener().await, listener().await, listener().await);
    let redirects: Vec<String> = [&l1, &l2, &l3]
        .iter()
        .map(|l| format!("http://{}/auth/callback", l.local_addr().expect("addr")))
        .collect();
    let Some(p) = start_provider(&redirects.join(","), Some(&tls)) else {
        return;
    };
    // a PSC whose server certificate the gateway does not trust: 502, and why
    let Some(untrusting) = start(Opts::new(Engine::Sqlite, &p.issuer), l1).await else {
        return;
    };
    let login = answer(
        untrusting
            .http
            .get(format!("{}/auth/login", untrusting.base)),
    )
    .await;
    assert_eq!(login.status, 502, "{}", login.body);
    let text = login.body.to_string();
    assert!(
        text.contains("Pro Santé Connect is unavailable") && text.contains("certificate"),
        "{text}"
    );
    // the mutual-TLS client without a client certificate: PSC refuses the code exchange
    let opts = Opts {
        client_id: "passerelle-mtls".into(),
        ..Opts::new(Engine::Sqlite, &p.issuer).trusting(&p)
    };
    let no_cert = start(opts, l2).await.expect("gateway");
    let (cb, _) = browser_sign_in(&no_cert, &p, "").await;
    assert_eq!(cb.status, 401, "{}", cb.body);
    let text = cb.body.to_string();
    assert!(
        text.contains("invalid_client") && text.contains("TLS client certificate"),
        "{text}"
    );
    assert!(cb.header("set-cookie").is_empty());
    // a client certificate of a CA PSC does not trust: refused likewise
    let opts = Opts {
        client_id: "passerelle-mtls".into(),
        client_secret: None,
        tls_client: Some((tls.path("stranger.pem"), tls.path("stranger-key.pem"))),
        ..Opts::new(Engine::Sqlite, &p.issuer).trusting(&p)
    };
    let stranger = start(opts, l3).await.expect("gateway");
    let (cb, _) = browser_sign_in(&stranger, &p, "").await;
    assert_eq!(cb.status, 401, "{}", cb.body);
    assert!(
        cb.body.to_string().contains("invalid_client"),
        "{}",
        cb.body
    );
}
