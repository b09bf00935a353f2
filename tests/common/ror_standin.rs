//! A stand-in of the ROR FHIR API on loopback, for the directory tests: an OAuth2 token
//! endpoint (client credentials, tokens that can be made to expire), the four `Ror-*`
//! headers checked on every FHIR call (401/403 otherwise), searches paged by `link next`
//! with `_lastUpdated`, `_tag`, the `_include`s of the ROR and the one `_filter` its
//! documentation gives for deltas (any other is refused), the bulk `$export` route (202,
//! `Content-Location`, polling, ndjson files), faults to inject, and an HTTPS mode that
//! requires a client certificate ([`Standin::start_tls`], with a [`TestPki`] made by the
//! `openssl` command at test time).
#![allow(dead_code)]

use std::collections::{BTreeMap, HashSet};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use axum::Router;
use axum::extract::{Path, RawQuery, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde_json::{Value, json};

pub const CLIENT_ID: &str = "passerelle";
pub const CLIENT_SECRET: &str = "s3cret-never-logged";
pub const PROFILE: &str = "CU20";
pub const ROLE: &str = "AUTOMATE";
pub const REGION_SYSTEM: &str =
    "https://mos.esante.gouv.fr/NOS/TRE_R30-RegionOM/FHIR/TRE-R30-RegionOM";
pub const OLD: &str = "2026-01-01T00:00:00Z";

#[derive(Default)]
pub struct Faults {
    /// Answer 500 to the HealthcareService page of this index (0-based), this many times.
    pub fail_page: Option<(usize, u32)>,
    /// Answer 429 (with `Retry-After: 30`) to this many FHIR requests first.
    pub throttle: u32,
    /// Every token stops working after this many FHIR requests made with it.
    pub token_uses: Option<u64>,
    /// Polls of an export job answered 202 before the manifest.
    pub export_polls: u32,
}

#[derive(Default)]
pub struct Stats {
    pub tokens_issued: u64,
    pub fhir_requests: u64,
    pub unauthorized: u64,
    pub forbidden: u64,
    pub throttled: u64,
    pub failed: u64,
    pub pages: u64,
    pub export_kickoffs: u64,
    /// The query strings of the searches received, as `Type?query`.
    pub queries: Vec<String>,
    /// Per search page answered: `Type?query` and the ids it matched (includes left out).
    pub matched: Vec<(String, Vec<String>)>,
    /// TLS handshakes refused, with the reason (HTTPS mode).
    pub tls_refused: Vec<String>,
}

#[derive(Default)]
pub struct Ror {
    /// `(type, id)` → resource.
    pub resources: BTreeMap<(String, String), Value>,
    /// Token → requests made with it.
    tokens: BTreeMap<String, u64>,
    pub faults: Faults,
    pub stats: Stats,
    polls_left: u32,
}

impl Ror {
    pub fn put(&mut self, r: Value) {
        let t = r["resourceType"].as_str().unwrap_or("").to_owned();
        let id = r["id"].as_str().unwrap_or("").to_owned();
        self.resources.insert((t, id), r);
    }
    pub fn get_mut(&mut self, t: &str, id: &str) -> &mut Value {
        self.resources
            .get_mut(&(t.to_owned(), id.to_owned()))
            .unwrap_or_else(|| panic!("stand-in has no {t}/{id}"))
    }
    pub fn remove(&mut self, t: &str, id: &str) {
        self.resources.remove(&(t.to_owned(), id.to_owned()));
    }
    /// Marks a resource changed now (for `_lastUpdated`).
    pub fn touch(&mut self, t: &str, id: &str) {
        let now = time::OffsetDateTime::now_utc()
            .format(&time::format_description::well_known::Rfc3339)
            .unwrap();
        self.get_mut(t, id)["meta"]["lastUpdated"] = json!(now);
    }
    pub fn expire_tokens(&mut self) {
        self.tokens.clear();
    }
}

pub struct Standin {
    pub base: String,
    pub token_url: String,
    pub ror: Arc<Mutex<Ror>>,
}

impl Standin {
    pub async fn start(ror: Ror) -> Standin {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let ror = Arc::new(Mutex::new(ror));
        let app = router(&ror, format!("http://{addr}/fhir"), false);
        tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Standin {
            base: format!("http://{addr}/fhir"),
            token_url: format!("http://{addr}/token"),
            ror,
        }
    }

    /// The stand-in over HTTPS (certificate of `pki.server`, signed by `pki.ca`), token
    /// endpoint and FHIR API alike, requiring a client certificate signed by `pki.ca` on
    /// every connection (a handshake without one, or with another, is refused and noted in
    /// `stats.tls_refused`). The token endpoint then authenticates the client by its
    /// certificate (`tls_client_auth`): no secret.
    pub async fn start_tls(ror: Ror, pki: &TestPki) -> Standin {
        passerelle::install_crypto_provider();
        let tcp = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = tcp.local_addr().unwrap();
        let ror = Arc::new(Mutex::new(ror));
        let listener = TlsListener {
            tcp,
            acceptor: tokio_rustls::TlsAcceptor::from(Arc::new(pki.server_config())),
            ror: ror.clone(),
        };
        let app = router(&ror, format!("https://{addr}/fhir"), true);
        tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Standin {
            base: format!("https://{addr}/fhir"),
            token_url: format!("https://{addr}/token"),
            ror,
        }
    }

    pub fn with<T>(&self, f: impl FnOnce(&mut Ror) -> T) -> T {
        f(&mut self.ror.lock().unwrap())
    }

    /// A `[ror]` configuration pointing here, with tiny back-off delays.
    pub fn config(&self) -> passerelle::config::RorConfig {
        passerelle::config::RorConfig {
            base_url: Some(self.base.clone()),
            token_url: Some(self.token_url.clone()),
            client_id: Some(CLIENT_ID.into()),
            client_secret: Some(CLIENT_SECRET.into()),
            user_profile_code: Some(PROFILE.into()),
            business_role_code: Some(ROLE.into()),
            use_export: false,
            page_size: 7,
            timeout_seconds: 10,
            max_retries: 3,
            retry_base_ms: 1,
            retry_max_ms: 20,
            export_poll_ms: 1,
            ..Default::default()
        }
    }
}

fn router(ror: &Arc<Mutex<Ror>>, base: String, mtls: bool) -> Router {
    Router::new()
        .route("/token", post(token))
        .route("/fhir/{*path}", get(fhir))
        .with_state(Shared {
            ror: ror.clone(),
            base,
            mtls,
        })
}

#[derive(Clone)]
struct Shared {
    ror: Arc<Mutex<Ror>>,
    base: String,
    /// Every connection came with a client certificate the stand-in trusts.
    mtls: bool,
}

async fn token(State(s): State<Shared>, body: String) -> Response {
    let form: BTreeMap<String, String> = form_urlencoded::parse(body.as_bytes())
        .map(|(k, v)| (k.into_owned(), v.into_owned()))
        .collect();
    let secret = form.get("client_secret").map(String::as_str);
    let authenticated = secret == Some(CLIENT_SECRET) || (s.mtls && secret.is_none());
    if form.get("grant_type").map(String::as_str) != Some("client_credentials")
        || form.get("client_id").map(String::as_str) != Some(CLIENT_ID)
        || !authenticated
    {
        return (
            StatusCode::UNAUTHORIZED,
            axum::Json(json!({"error": "invalid_client"})),
        )
            .into_response();
    }
    let mut ror = s.ror.lock().unwrap();
    ror.stats.tokens_issued += 1;
    let t = format!("tok-{}", ror.stats.tokens_issued);
    ror.tokens.insert(t.clone(), 0);
    axum::Json(json!({"access_token": t, "token_type": "Bearer", "expires_in": 300}))
        .into_response()
}

fn outcome(status: StatusCode, msg: &str) -> Response {
    (
        status,
        axum::Json(json!({"resourceType": "OperationOutcome",
            "issue": [{"severity": "error", "code": "security", "diagnostics": msg}]})),
    )
        .into_response()
}

fn header<'h>(h: &'h HeaderMap, name: &str) -> &'h str {
    h.get(name).and_then(|v| v.to_str().ok()).unwrap_or("")
}

async fn fhir(
    State(s): State<Shared>,
    Path(path): Path<String>,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
) -> Response {
    let mut ror = s.ror.lock().unwrap();
    ror.stats.fhir_requests += 1;
    let bearer = header(&headers, "authorization")
        .strip_prefix("Bearer ")
        .unwrap_or("")
        .to_owned();
    let uses = ror.faults.token_uses;
    match ror.tokens.get_mut(&bearer) {
        Some(n) if uses.is_none_or(|max| *n < max) => *n += 1,
        _ => {
            ror.stats.unauthorized += 1;
            return outcome(StatusCode::UNAUTHORIZED, "invalid or expired token");
        }
    }
    if header(&headers, "ror-profil-utilisateur-code") != PROFILE
        || header(&headers, "ror-profil-utilisateur-system") != "1.2.250.1.213.1.6.1.66"
        || header(&headers, "ror-role-metier-code") != ROLE
        || header(&headers, "ror-role-metier-system") != "1.2.250.1.213.1.1.4.6"
    {
        ror.stats.forbidden += 1;
        return outcome(StatusCode::FORBIDDEN, "missing or wrong Ror-* headers");
    }
    if ror.faults.throttle > 0 {
        ror.faults.throttle -= 1;
        ror.stats.throttled += 1;
        return (
            StatusCode::TOO_MANY_REQUESTS,
            [("retry-after", "30")],
            "slow down",
        )
            .into_response();
    }
    let params: Vec<(String, String)> =
        form_urlencoded::parse(query.as_deref().unwrap_or("").as_bytes())
            .map(|(k, v)| (k.into_owned(), v.into_owned()))
            .collect();
    let param = |k: &str| params.iter().find(|(n, _)| n == k).map(|(_, v)| v.clone());
    match path.as_str() {
        "$export" => {
            ror.stats.export_kickoffs += 1;
            if header(&headers, "prefer") != "respond-async" {
                return outcome(StatusCode::BAD_REQUEST, "Prefer: respond-async expected");
            }
            ror.polls_left = ror.faults.export_polls;
            let tag = param("_typeFilter")
                .and_then(|f| f.strip_prefix("HealthcareService?_tag=").map(str::to_owned));
            let loc = format!(
                "{}/$export-poll-status?_jobId=1{}",
                s.base,
                tag.map(|t| format!("&tag={}", enc(&t))).unwrap_or_default()
            );
            (StatusCode::ACCEPTED, [("content-location", loc)], "").into_response()
        }
        "$export-poll-status" => {
            if ror.polls_left > 0 {
                ror.polls_left -= 1;
                return (
                    StatusCode::ACCEPTED,
                    [("retry-after", "120"), ("x-progress", "in progress")],
                    "",
                )
                    .into_response();
            }
            let tag = param("tag")
                .map(|t| format!("?tag={}", enc(&t)))
                .unwrap_or_default();
            let out: Vec<Value> = ["Organization", "Location", "HealthcareService"]
                .iter()
                .map(|t| json!({"type": t, "url": format!("{}/export-files/{t}.ndjson{tag}", s.base)}))
                .collect();
            axum::Json(json!({"transactionTime": OLD, "request": "x", "requiresAccessToken": true, "output": out}))
                .into_response()
        }
        p if p.starts_with("export-files/") => {
            let t = p
                .trim_start_matches("export-files/")
                .trim_end_matches(".ndjson");
            let tag = param("tag");
            let mut text = String::new();
            for ((rt, _), r) in &ror.resources {
                if rt == t
                    && (t != "HealthcareService" || tag.as_ref().is_none_or(|tg| has_tag(r, tg)))
                {
                    text.push_str(&r.to_string());
                    text.push('\n');
                }
            }
            ([("content-type", "application/fhir+ndjson")], text).into_response()
        }
        t @ ("HealthcareService" | "Location" | "Organization") => {
            ror.stats
                .queries
                .push(format!("{t}?{}", query.clone().unwrap_or_default()));
            // the delta `_filter` of the ROR's documentation, on offers; no other is known
            let changed_since = match param("_filter") {
                None => None,
                Some(f) => match (t, delta_filter(&f)) {
                    ("HealthcareService", Some(since)) => Some(since),
                    _ => {
                        return outcome(
                            StatusCode::BAD_REQUEST,
                            &format!("unsupported _filter on {t}: {f}"),
                        );
                    }
                },
            };
            let count: usize = param("_count").and_then(|c| c.parse().ok()).unwrap_or(200);
            let offset: usize = param("_offset").and_then(|c| c.parse().ok()).unwrap_or(0);
            if t == "HealthcareService" {
                let page = offset / count.max(1);
                if let Some((p, n)) = ror.faults.fail_page.as_mut()
                    && *p == page
                    && *n > 0
                {
                    *n -= 1;
                    ror.stats.failed += 1;
                    return outcome(StatusCode::INTERNAL_SERVER_ERROR, "injected failure");
                }
            }
            ror.stats.pages += 1;
            let since = param("_lastUpdated").map(|v| {
                let v = v.trim_start_matches("ge").to_owned();
                time::OffsetDateTime::parse(&v, &time::format_description::well_known::Rfc3339)
                    .unwrap_or_else(|e| panic!("_lastUpdated {v}: {e}"))
            });
            let tag = param("_tag");
            let matches: Vec<&Value> = ror
                .resources
                .iter()
                .filter(|((rt, _), _)| rt == t)
                .map(|(_, r)| r)
                .filter(|r| since.is_none_or(|s| updated(r) >= s))
                .filter(|r| {
                    changed_since.is_none_or(|s| {
                        updated(r) >= s || organisations_above(&ror, r).any(|o| updated(o) >= s)
                    })
                })
                .filter(|r| tag.as_ref().is_none_or(|tg| has_tag(r, tg)))
                .collect();
            let total = matches.len();
            let includes: Vec<&str> = params
                .iter()
                .filter(|(k, _)| k.starts_with("_include"))
                .map(|(_, v)| v.as_str())
                .collect();
            let mut entries = Vec::new();
            let mut included = HashSet::new();
            let mut matched = Vec::new();
            for r in matches.iter().skip(offset).take(count) {
                matched.push(r["id"].as_str().unwrap_or("").to_owned());
                entries.push(json!({"resource": r, "search": {"mode": "match"}}));
                if t != "HealthcareService" {
                    continue;
                }
                let mut refs: Vec<String> = Vec::new();
                if includes.contains(&"HealthcareService:organization")
                    && let Some(o) = r["providedBy"]["reference"].as_str()
                {
                    refs.push(o.to_owned());
                }
                if includes.contains(&"HealthcareService:location") {
                    for l in r["location"].as_array().into_iter().flatten() {
                        if let Some(x) = l["reference"].as_str() {
                            refs.push(x.to_owned());
                        }
                    }
                }
                while let Some(rf) = refs.pop() {
                    let Some((rt, id)) = rf.split_once('/') else {
                        continue;
                    };
                    let Some(res) = ror.resources.get(&(rt.to_owned(), id.to_owned())) else {
                        continue;
                    };
                    if included.insert(rf.clone()) {
                        entries.push(json!({"resource": res, "search": {"mode": "include"}}));
                    }
                    if rt == "Organization"
                        && includes.contains(&"Organization:partof")
                        && let Some(p) = res["partOf"]["reference"].as_str()
                    {
                        refs.push(p.to_owned());
                    }
                }
            }
            let mut links = vec![
                json!({"relation": "self", "url": format!("{}/{t}?{}", s.base, query.clone().unwrap_or_default())}),
            ];
            if offset + count < total {
                let mut next: Vec<(String, String)> = params
                    .iter()
                    .filter(|(k, _)| k != "_offset")
                    .cloned()
                    .collect();
                next.push(("_offset".into(), (offset + count).to_string()));
                let q: String = form_urlencoded::Serializer::new(String::new())
                    .extend_pairs(next)
                    .finish();
                links.push(json!({"relation": "next", "url": format!("{}/{t}?{q}", s.base)}));
            }
            let page = json!({"resourceType": "Bundle", "type": "searchset", "total": total, "link": links, "entry": entries});
            ror.stats
                .matched
                .push((format!("{t}?{}", query.unwrap_or_default()), matched));
            axum::Json(page).into_response()
        }
        _ => outcome(StatusCode::NOT_FOUND, "no such endpoint"),
    }
}

/// The one `_filter` the ROR documents for deltas (`consommation-api.md`):
/// `(_lastUpdated ge X or organization._lastUpdated:above ge X)`; its instant, or `None` for
/// anything else.
fn delta_filter(f: &str) -> Option<time::OffsetDateTime> {
    let inner = f.strip_prefix('(')?.strip_suffix(')')?;
    let (own, above) = inner.split_once(" or ")?;
    let x = own.strip_prefix("_lastUpdated ge ")?;
    let y = above.strip_prefix("organization._lastUpdated:above ge ")?;
    if x != y {
        return None;
    }
    time::OffsetDateTime::parse(x, &time::format_description::well_known::Rfc3339).ok()
}

/// The organisation providing an offer and those above it (`partOf`), as the stand-in has
/// them.
fn organisations_above<'r>(ror: &'r Ror, offer: &Value) -> impl Iterator<Item = &'r Value> {
    let mut next = offer["providedBy"]["reference"].as_str().map(str::to_owned);
    let mut hops = 0;
    std::iter::from_fn(move || {
        let r = next.take()?;
        hops += 1;
        let id = r.strip_prefix("Organization/")?;
        let org = ror
            .resources
            .get(&("Organization".to_owned(), id.to_owned()))?;
        if hops < 10 {
            next = org["partOf"]["reference"].as_str().map(str::to_owned);
        }
        Some(org)
    })
}

fn enc(s: &str) -> String {
    form_urlencoded::byte_serialize(s.as_bytes()).collect()
}

fn has_tag(r: &Value, tag: &str) -> bool {
    let (sys, code) = tag.split_once('|').unwrap_or(("", tag));
    r["meta"]["tag"]
        .as_array()
        .into_iter()
        .flatten()
        .any(|t| t["system"] == sys && t["code"] == code)
}

fn updated(r: &Value) -> time::OffsetDateTime {
    let v = r["meta"]["lastUpdated"].as_str().unwrap_or(OLD);
    time::OffsetDateTime::parse(v, &time::format_description::well_known::Rfc3339)
        .unwrap_or(time::OffsetDateTime::UNIX_EPOCH)
}

const NOS: &str = "https://mos.esante.gouv.fr/NOS";

fn coding(system: &str, code: &str) -> Value {
    json!({"coding": [{"system": format!("{NOS}/{system}"), "code": code}]})
}

fn capacity(status: &str, n: i64) -> Value {
    let cc = |url: &str, sys: &str, code: &str| json!({"url": url, "valueCodeableConcept": coding(sys, code)});
    json!({
        "url": "https://interop.esante.gouv.fr/ig/fhir/ror/StructureDefinition/ror-location-supported-capacity",
        "extension": [
            cc("capacityType", "TRE_R329-NatureCapacite/FHIR/TRE-R329-NatureCapacite", "01"),
            cc("capacityStatus", "TRE_R330-TypeStatutCapacite/FHIR/TRE-R330-TypeStatutCapacite", status),
            cc("temporalityCapacity", "TRE_R331-TemporaliteCapacite/FHIR/TRE-R331-TemporaliteCapacite", "01"),
            {"url": "nbCapacity", "valueInteger": n},
            cc("capacitySourceType", "TRE_R332-TypeSourceCapacite/FHIR/TRE-R332-TypeSourceCapacite", "02"),
            {"url": "capacityUpdateDate", "valueDateTime": "2026-11-20T08:00:00+01:00"},
            cc("temporaryAssignement", "TRE_R333-AffectationTemporaire/FHIR/TRE-R333-AffectationTemporaire", "01")
        ]
    })
}

/// What the kind of unit `i` is: (champ d'activité, mode de prise en charge, type d'offre).
pub fn kind(i: usize) -> (&'static str, &'static str, &'static str) {
    match i % 4 {
        0 => ("02", "28", "100"), // SMR polyvalent, hospitalisation complète
        1 => ("01", "31", "128"), // HAD socle
        2 => ("04", "46", "21"),  // EHPAD: médico-social, hébergement, personnes âgées dépendantes
        _ => ("01", "28", "238"), // MCO, unité de médecine polyvalente
    }
}

/// `n` units with their EJ/EG/OI organisations and places: unit `i` is `HealthcareService/hs-i`
/// provided by `oi-i` (part of `eg-i/2`, part of `ej-i/4`), at `Location/loc-i` (postcode
/// `7500{i%3}`, `i%3` beds available, position 48.85+i/1000, 2.35); region 11, or 06 when
/// `i % 5 == 4`.
pub fn generated(n: usize) -> Vec<Value> {
    let mut out = Vec::new();
    let region = |i: usize| if i % 5 == 4 { "06" } else { "11" };
    let meta = |i: usize| json!({"lastUpdated": OLD, "tag": [{"system": REGION_SYSTEM, "code": region(i)}]});
    for i in 0..n {
        if i % 4 == 0 {
            out.push(json!({"resourceType": "Organization", "id": format!("ej-{}", i / 4), "meta": meta(i),
                "identifier": [{"system": "urn:oid:1.2.250.1.71.4.2.2", "value": format!("1{:08}", i / 4)}],
                "active": true, "name": format!("EJ {}", i / 4)}));
        }
        if i % 2 == 0 {
            out.push(json!({"resourceType": "Organization", "id": format!("eg-{}", i / 2), "meta": meta(i),
                "identifier": [{"system": "https://finess.esante.gouv.fr", "value": format!("2{:08}", i / 2)}],
                "active": true, "name": format!("EG {}", i / 2),
                "partOf": {"reference": format!("Organization/ej-{}", i / 4)}}));
        }
        out.push(
            json!({"resourceType": "Organization", "id": format!("oi-{i}"), "meta": meta(i),
            "identifier": [{"system": "https://oi.esante.gouv.fr", "value": format!("OI-{i}")}],
            "active": true, "name": format!("Unité {i}"),
            "partOf": {"reference": format!("Organization/eg-{}", i / 2)}}),
        );
        out.push(json!({"resourceType": "Location", "id": format!("loc-{i}"), "meta": {"lastUpdated": OLD},
            "extension": [capacity("02", (i % 3) as i64), capacity("01", 20)],
            "status": "active", "name": format!("Lieu {i}"),
            "address": {"line": [format!("{i} rue de la Paix")], "city": if i % 3 == 0 { "Paris" } else { "Versailles" }, "postalCode": format!("7500{}", i % 3)},
            "position": {"latitude": 48.85 + i as f64 / 1000.0, "longitude": 2.35}}));
        let (activity, mode, offer_type) = kind(i);
        out.push(json!({"resourceType": "HealthcareService", "id": format!("hs-{i}"), "meta": meta(i),
            "extension": [{"url": "https://interop.esante.gouv.fr/ig/fhir/ror/StructureDefinition/ror-healthcareservice-sensitive-unit", "valueBoolean": false}],
            "identifier": [{"value": format!("{}/{i:07}", region(i))}],
            "active": true,
            "providedBy": {"reference": format!("Organization/oi-{i}")},
            "category": [coding("TRE_R244-CategorieOrganisation/FHIR/TRE-R244-CategorieOrganisation", offer_type)],
            "type": [coding("TRE_R227-ChampActivite/FHIR/TRE-R227-ChampActivite", activity)],
            "characteristic": [coding("JDV_J19-ModePriseEnCharge-ROR/FHIR/JDV-J19-ModePriseEnCharge-ROR/", mode)],
            "location": [{"reference": format!("Location/loc-{i}")}],
            "name": format!("Offre {i}")}));
    }
    out
}

/// The shared ROR examples (a HealthcareService and a Location), as the ROR serves them.
pub fn examples() -> Vec<Value> {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/ror");
    [
        "HealthcareService-1234564.json",
        "Location-ror-location-exemple.json",
    ]
    .iter()
    .map(|f| serde_json::from_str(&std::fs::read_to_string(dir.join(f)).unwrap()).unwrap())
    .collect()
}

/// A test PKI made with the `openssl` command in a temporary folder (removed on drop): a CA,
/// a server certificate for 127.0.0.1 signed by it, a client certificate signed by it, and a
/// rogue CA with a client certificate of its own.
pub struct TestPki {
    pub dir: PathBuf,
    pub ca: PathBuf,
    pub server_cert: PathBuf,
    pub server_key: PathBuf,
    pub client_cert: PathBuf,
    pub client_key: PathBuf,
    pub rogue_cert: PathBuf,
    pub rogue_key: PathBuf,
}

impl TestPki {
    pub fn generate() -> TestPki {
        let dir = std::env::temp_dir().join(format!(
            "passerelle-ror-pki-{}-{}",
            std::process::id(),
            uuid::Uuid::new_v4().simple()
        ));
        std::fs::create_dir_all(&dir).unwrap();
        let run = |args: &[&str]| {
            let out = std::process::Command::new("openssl")
                .args(args)
                .current_dir(&dir)
                .output()
                .unwrap_or_else(|e| panic!("the openssl command is needed for the TLS tests: {e}"));
            assert!(
                out.status.success(),
                "openssl {args:?}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        };
        let ec = [
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
        ];
        let ca = |name: &str| {
            let (key, crt, subj) = (
                format!("{name}.key"),
                format!("{name}.crt"),
                format!("/CN=Test {name}"),
            );
            let mut a = vec!["req", "-x509"];
            a.extend(ec);
            a.extend(["-keyout", &key, "-out", &crt, "-days", "2", "-subj", &subj]);
            a.extend(["-addext", "basicConstraints=critical,CA:TRUE"]);
            a.extend(["-addext", "keyUsage=critical,keyCertSign,cRLSign"]);
            run(&a);
        };
        let leaf = |name: &str, ca: &str, ext: &str, serial: &str| {
            let (key, csr, crt) = (
                format!("{name}.key"),
                format!("{name}.csr"),
                format!("{name}.crt"),
            );
            std::fs::write(dir.join(format!("{name}.ext")), ext).unwrap();
            let mut a = vec!["req"];
            a.extend(ec);
            let subj = format!("/CN={name}");
            a.extend(["-keyout", &key, "-out", &csr, "-subj", &subj]);
            run(&a);
            let (ca_crt, ca_key, ext_file) = (
                format!("{ca}.crt"),
                format!("{ca}.key"),
                format!("{name}.ext"),
            );
            run(&[
                "x509",
                "-req",
                "-in",
                &csr,
                "-CA",
                &ca_crt,
                "-CAkey",
                &ca_key,
                "-set_serial",
                serial,
                "-days",
                "2",
                "-out",
                &crt,
                "-extfile",
                &ext_file,
            ]);
        };
        ca("ca");
        ca("rogue-ca");
        let leaf_ext = "basicConstraints=critical,CA:FALSE\nkeyUsage=critical,digitalSignature\n";
        leaf(
            "server",
            "ca",
            &format!(
                "{leaf_ext}extendedKeyUsage=serverAuth\nsubjectAltName=IP:127.0.0.1,DNS:localhost\n"
            ),
            "2",
        );
        leaf(
            "client",
            "ca",
            &format!("{leaf_ext}extendedKeyUsage=clientAuth\n"),
            "3",
        );
        leaf(
            "rogue",
            "rogue-ca",
            &format!("{leaf_ext}extendedKeyUsage=clientAuth\n"),
            "4",
        );
        TestPki {
            ca: dir.join("ca.crt"),
            server_cert: dir.join("server.crt"),
            server_key: dir.join("server.key"),
            client_cert: dir.join("client.crt"),
            client_key: dir.join("client.key"),
            rogue_cert: dir.join("rogue.crt"),
            rogue_key: dir.join("rogue.key"),
            dir,
        }
    }

    /// The stand-in's TLS: its certificate, and client certificates of `ca` required.
    fn server_config(&self) -> rustls::ServerConfig {
        use rustls::pki_types::pem::PemObject;
        use rustls::pki_types::{CertificateDer, PrivateKeyDer};
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut roots = rustls::RootCertStore::empty();
        for ca in CertificateDer::pem_file_iter(&self.ca).unwrap() {
            roots.add(ca.unwrap()).unwrap();
        }
        let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
            Arc::new(roots),
            provider.clone(),
        )
        .build()
        .unwrap();
        let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(&self.server_cert)
            .unwrap()
            .map(Result::unwrap)
            .collect();
        let key = PrivateKeyDer::from_pem_file(&self.server_key).unwrap();
        rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_client_cert_verifier(verifier)
            .with_single_cert(chain, key)
            .unwrap()
    }
}

impl Drop for TestPki {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Accepts TCP connections and completes their TLS handshake before axum sees them; a
/// refused handshake (no client certificate, an untrusted one) is noted and skipped.
struct TlsListener {
    tcp: tokio::net::TcpListener,
    acceptor: tokio_rustls::TlsAcceptor,
    ror: Arc<Mutex<Ror>>,
}

impl axum::serve::Listener for TlsListener {
    type Io = tokio_rustls::server::TlsStream<tokio::net::TcpStream>;
    type Addr = std::net::SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        loop {
            let Ok((tcp, addr)) = self.tcp.accept().await else {
                continue;
            };
            let handshake = self.acceptor.accept(tcp);
            match tokio::time::timeout(std::time::Duration::from_secs(10), handshake).await {
                Ok(Ok(tls)) => return (tls, addr),
                Ok(Err(e)) => self
                    .ror
                    .lock()
                    .unwrap()
                    .stats
                    .tls_refused
                    .push(e.to_string()),
                Err(_) => self
                    .ror
                    .lock()
                    .unwrap()
                    .stats
                    .tls_refused
                    .push("handshake timed out".into()),
            }
        }
    }

    fn local_addr(&self) -> std::io::Result<Self::Addr> {
        self.tcp.local_addr()
    }
}
