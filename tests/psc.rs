//! `psc` auth mode end to end: a real OpenID Connect provider configured like Pro Santé
//! Connect (`tests/oidc/provider.mjs`, the npm package `oidc-provider`) on loopback, and the
//! gateway spoken to over HTTP: bearer-only FHIR API, client credentials with
//! `private_key_jwt`, RFC 8693 token exchange of a PSC access token, and every refusal.
//!
//! Without `tests/oidc/node_modules` the provider tests are skipped with a note, unless
//! `TEST_REQUIRE_OIDC=1` (set by `scripts/test.sh`), which makes them fail.

mod common;

use std::collections::HashMap;
use std::io::BufRead;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use common::{Engine, Guard, fresh_database};
use jsonwebtoken::jwk::{Jwk, JwkSet};
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use passerelle::config::{ClientConfig, Config, PscConfig};
use passerelle::server::App;
use passerelle::time::SystemClock;
use serde_json::{Value, json};
use sha2::Digest;

const CLIENT_SECRET: &str = "psc-test-client-secret-0123456789abcdef";
const EXCHANGE: &str = "urn:ietf:params:oauth:grant-type:token-exchange";
const AT_TYPE: &str = "urn:ietf:params:oauth:token-type:access_token";
const JWT_BEARER: &str = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer";
const DOCTOR: &str = "899700366240";
const OTHER_DOCTOR: &str = "899700218896";

fn data(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/data/psc")
        .join(name)
}

fn now() -> u64 {
    jsonwebtoken::get_current_timestamp()
}

// ---------------------------------------------------------------------------------------
// The provider

/// The running provider; killed on drop.
struct Provider {
    issuer: String,
    child: Child,
}

impl Drop for Provider {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

/// Starts `tests/oidc/provider.mjs`; `None` (skipped, with a note) when its node modules are
/// not installed, unless `TEST_REQUIRE_OIDC=1`.
fn provider(redirect_uri: &str) -> Option<Provider> {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/oidc");
    if !dir.join("node_modules/oidc-provider").is_dir() {
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
    let port = free_port();
    let mut child = Command::new("node")
        .arg(dir.join("provider.mjs"))
        .arg(port.to_string())
        .arg(data("accounts.json"))
        .arg(redirect_uri)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
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
                let _ = tx.send(());
            }
        }
    });
    if rx.recv_timeout(std::time::Duration::from_secs(30)).is_err() {
        let _ = child.kill();
        panic!("the OpenID provider did not start within 30 s");
    }
    Some(Provider {
        issuer: format!("http://127.0.0.1:{port}"),
        child,
    })
}

// ---------------------------------------------------------------------------------------
// The gateway in psc mode

struct Psc {
    base: String,
    http: reqwest::Client,
    _app: App,
    _guard: Guard,
}

fn client_key() -> (EncodingKey, JwkSet) {
    let pem = std::fs::read(data("test-client-es384.pem")).expect("key");
    let key = EncodingKey::from_ec_pem(&pem).expect("EC key");
    let mut jwk = Jwk::from_encoding_key(&key, Algorithm::ES384).expect("jwk");
    jwk.common.key_id = Some("his-1".into());
    (key, JwkSet { keys: vec![jwk] })
}

/// A gateway whose PSC issuer is `issuer`, with one system client `his` (ES384 key,
/// directory and Task scopes).
async fn gateway(engine: Engine, issuer: &str, listener: tokio::net::TcpListener) -> Option<Psc> {
    gateway_with_clock(engine, issuer, listener, Arc::new(SystemClock)).await
}

async fn gateway_with_clock(
    engine: Engine,
    issuer: &str,
    listener: tokio::net::TcpListener,
    clock: Arc<dyn passerelle::time::Clock>,
) -> Option<Psc> {
    gateway_with(engine, issuer, None, listener, clock).await
}

async fn gateway_with(
    engine: Engine,
    issuer: &str,
    discovery_url: Option<String>,
    listener: tokio::net::TcpListener,
    clock: Arc<dyn passerelle::time::Clock>,
) -> Option<Psc> {
    gateway_as(engine, issuer, discovery_url, "passerelle", listener, clock).await
}

async fn gateway_as(
    engine: Engine,
    issuer: &str,
    discovery_url: Option<String>,
    client_id: &str,
    listener: tokio::net::TcpListener,
    clock: Arc<dyn passerelle::time::Clock>,
) -> Option<Psc> {
    let (url, guard) = fresh_database(engine).await?;
    let addr = listener.local_addr().expect("addr");
    let base = format!("http://{addr}");
    let dir = std::env::temp_dir().join(format!("passerelle-psc-{}", uuid::Uuid::new_v4()));
    std::fs::create_dir_all(&dir).expect("dir");
    let jwks_file = dir.join("his.jwks.json");
    std::fs::write(
        &jwks_file,
        serde_json::to_string(&client_key().1).expect("json"),
    )
    .expect("write");
    let mut config = Config {
        database_url: url,
        listen: addr.to_string(),
        base_url: Some(base.clone()),
        db_pool_size: 4,
        ..Config::default()
    };
    config.psc = Some(PscConfig {
        issuer: issuer.to_owned(),
        client_id: client_id.into(),
        discovery_url,
        client_secret: Some(passerelle::auth::secret::Secret::new(CLIENT_SECRET)),
        ..PscConfig::default()
    });
    config.auth.clients = vec![ClientConfig {
        client_id: "his".into(),
        jwks_file: Some(jwks_file),
        jwks_url: None,
        scopes: vec![
            "system/Organization.cruds".into(),
            "system/Practitioner.cruds".into(),
            "system/PractitionerRole.cruds".into(),
            "system/Task.rs".into(),
        ],
        organization: None,
    }];
    let app = App::open(&config, base.clone(), clock)
        .await
        .expect("open app");
    let router = app.router(config.max_body_bytes);
    tokio::spawn(async move {
        let _ = axum::serve(listener, router).await;
    });
    Some(Psc {
        base,
        http: {
            passerelle::install_crypto_provider();
            reqwest::Client::builder()
        }
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .expect("client"),
        _app: app,
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

    /// A system token with the directory scopes.
    async fn system_token(&self) -> String {
        let a = self.assertion(&client_key().0, json!({}));
        let t = self
            .client_credentials(
                &a,
                "system/Organization.cruds system/Practitioner.cruds system/PractitionerRole.cruds system/Task.rs",
            )
            .await;
        assert_eq!(t.status, 200, "{}", t.body);
        t.body["access_token"].as_str().expect("token").to_owned()
    }
}

fn assert_oauth_error(a: &Answer, status: u16, error: &str) {
    assert_eq!(a.status, status, "{}", a.body);
    assert_eq!(a.body["error"], error, "{}", a.body);
    assert_eq!(a.header("cache-control"), "no-store");
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
    let http = {
        passerelle::install_crypto_provider();
        reqwest::Client::builder()
    }
    .redirect(reqwest::redirect::Policy::none())
    .build()
    .expect("client");
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
/// SubjectNameID, a habilitation; returns the PractitionerRole id.
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
    let p = gw
        .write(
            reqwest::Method::POST,
            "Practitioner",
            system,
            json!({
                "resourceType": "Practitioner",
                "identifier": [{"system": "urn:oid:1.2.250.1.71.4.2.1", "value": subject_name_id}],
                "name": [{"family": "DOC"}]
            }),
        )
        .await;
    assert_eq!(p.status, 201, "{}", p.body);
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
    assert_oauth_error(&exchange(at, role).await, 400, "invalid_target");
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
    let Some(gw) = gateway_with_clock(engine, &p.issuer, l, Arc::new(clock.clone())).await else {
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
    let Some(gw) = gateway_with(
        Engine::Sqlite,
        &wrong,
        Some(discovery),
        l,
        Arc::new(SystemClock),
    )
    .await
    else {
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
    let Some(gw) = gateway_as(
        Engine::Sqlite,
        &p.issuer,
        None,
        "passerelle-rs256",
        l,
        Arc::new(SystemClock),
    )
    .await
    else {
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
    let Some(gw) = gateway_as(
        Engine::Sqlite,
        &p.issuer,
        None,
        "passerelle-rs256",
        l,
        Arc::new(SystemClock),
    )
    .await
    else {
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
