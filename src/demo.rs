//! `passerelle demo`: a realistic data set in one command, so that a new user sees a living
//! system (establishments and units, prescribers and unit managers, generated French patients
//! with test INS, and dossiers in every state).
//!
//! Everything goes through the FHIR layer in process ([`interaction::run`]) as the right
//! people, so the demo exercises the real rules: the directory and accounts anonymously (as dev
//! mode allows), dossiers by prescribers, answers by each unit's `responsable-admission`, the
//! automatic reminders, cancellations and archiving by the real timers. The store's clock is a
//! [`ManualClock`] started about four months in the past and moved forward event by event, so
//! the timestamps look lived-in and the timers act on their real delays.

use std::collections::BTreeMap;
use std::sync::{Arc, OnceLock};

use axum::http::Method;
use serde_json::{Value, json};

use crate::auth::{self, Caller, PROFILE_SYSTEM};
use crate::config::{Config, WorkflowConfig};
use crate::fhir::interaction::{self, Body, Fhir, Req};
use crate::server::{App, ServeError};
use crate::time::{Clock, ManualClock, Micros, SystemClock, format_instant};
use crate::workflow::moves::TAG_SYSTEM;
use crate::workflow::parts;
use crate::workflow::rules::code_system;

const HOUR: Micros = 3_600_000_000;
const DAY: Micros = 24 * HOUR;
const MINUTE: Micros = 60_000_000;

/// The resource whose presence says the demo is already loaded.
const MARKER: (&str, &str) = ("Organization", "demo-chu");

const INS_TEST_SYSTEM: &str = "urn:oid:1.2.250.1.213.1.4.10";
const FR_CORE: &str = "https://hl7.fr/ig/fhir/core/";
const RPPS_SYSTEM: &str = "https://rpps.esante.gouv.fr";
const IDNPS_SYSTEM: &str = "urn:oid:1.2.250.1.71.4.2.1";
const FINESS_SYSTEM: &str = "https://finess.esante.gouv.fr";
const IDNST_SYSTEM: &str = "urn:oid:1.2.250.1.71.4.2.2";
const QUESTIONNAIRE: &str = "https://passerelle.dev/fhir/Questionnaire/";
const SR_PROFILE: &str = "https://passerelle.dev/fhir/StructureDefinition/AdmissionRequest";

#[derive(Debug, thiserror::Error)]
pub enum DemoError {
    #[error(
        "{0} already holds the demo data set ({m0}/{m1} exists); nothing was written. Point DATABASE_URL at another database, or delete this one, to load it again",
        m0 = MARKER.0,
        m1 = MARKER.1
    )]
    AlreadyLoaded(String),
    #[error(transparent)]
    Open(#[from] ServeError),
    /// A request of the demo was refused: the demo and the rules disagree.
    #[error("{what}: {source}")]
    Step {
        what: String,
        source: crate::fhir::error::Error,
    },
    #[error("workflow timers: {0}")]
    Timers(crate::fhir::error::Error),
    #[error("demo data: {0}")]
    Data(String),
}

/// What to load.
#[derive(Debug, Clone, Copy)]
pub struct Options {
    /// Number of dossiers (and of patients); every state appears from 16 on.
    pub dossiers: usize,
    /// Seed of the generator: the same seed gives the same data set.
    pub seed: u64,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            dossiers: 50,
            seed: 1,
        }
    }
}

/// What was loaded.
#[derive(Debug, Clone, Default)]
pub struct Summary {
    pub database: String,
    pub organizations: usize,
    pub units: usize,
    pub roles: usize,
    pub patients: usize,
    pub dossiers: usize,
    pub drafts: usize,
    /// Requests (Tasks) per business status, in the workflow's order.
    pub by_status: Vec<(String, usize)>,
    /// Requests carrying the `archived` tag (their business status is unchanged).
    pub archived: usize,
    /// Automatic reminders sent by the timer.
    pub reminders: usize,
    /// Ready-to-paste commands against `passerelle serve`.
    pub examples: Vec<String>,
}

impl std::fmt::Display for Summary {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(f, "Demo data set loaded into {}:", self.database)?;
        writeln!(
            f,
            "  {} establishments, {} units, {} habilitations, {} patients",
            self.organizations, self.units, self.roles, self.patients
        )?;
        writeln!(
            f,
            "  {} dossiers ({} drafts not sent yet)",
            self.dossiers, self.drafts
        )?;
        writeln!(f, "  requests per business status:")?;
        for (status, n) in &self.by_status {
            writeln!(f, "    {status:<22}{n:>4}")?;
        }
        writeln!(
            f,
            "    {:<22}{:>4}  (tag; status kept)",
            "archived", self.archived
        )?;
        writeln!(f, "  automatic reminders sent: {}", self.reminders)?;
        writeln!(f)?;
        writeln!(
            f,
            "Start the gateway (`passerelle serve`, same configuration), then try:"
        )?;
        for e in &self.examples {
            writeln!(f, "  {e}")?;
        }
        Ok(())
    }
}

/// A database URL without its password, for messages.
pub fn display_url(url: &str) -> String {
    if let Some((scheme, rest)) = url.split_once("://")
        && let Some((userinfo, host)) = rest.split_once('@')
        && let Some((user, _)) = userinfo.split_once(':')
    {
        return format!("{scheme}://{user}:***@{host}");
    }
    url.to_owned()
}

/// Opens the configured database with a clock in the past and loads the demo.
///
/// The story is told with the workflow delays of domain.md (the defaults), whatever the
/// configuration says: the scenarios are timed on them (a proposal left two months is reminded,
/// then cancelled a month later, then archived two weeks after). A gateway configured with
/// other delays applies its own from its first timer pass.
pub async fn run(config: &Config, opts: &Options) -> Result<Summary, DemoError> {
    let mut config = config.clone();
    config.workflow = WorkflowConfig {
        timer_interval_seconds: config.workflow.timer_interval_seconds,
        ..WorkflowConfig::default()
    };
    let config = &config;
    let end = SystemClock.now();
    let window = window(&config.workflow.delays());
    let clock = ManualClock::new(end - window - DAY);
    let base = config
        .base_url
        .clone()
        .unwrap_or_else(|| format!("http://{}", config.listen));
    let app = App::open(config, base.clone(), Arc::new(clock.clone())).await?;
    let database = display_url(&config.database_url);
    let mut summary = load(&app, &clock, end, opts).await.map_err(|e| match e {
        DemoError::AlreadyLoaded(_) => DemoError::AlreadyLoaded(database.clone()),
        e => e,
    })?;
    summary.database = database;
    summary.examples = examples(&base);
    Ok(summary)
}

/// Loads the demo into `app`, whose store runs on `clock` (somewhere before `end`, far enough
/// back for the timers: see [`run`]); leaves the clock at `end`. The summary's `database` and
/// `examples` are left for the caller, who knows the configuration.
pub async fn load(
    app: &App,
    clock: &ManualClock,
    end: Micros,
    opts: &Options,
) -> Result<Summary, DemoError> {
    let fhir = &app.fhir;
    if let Some(s) = app
        .store
        .current(MARKER.0, MARKER.1)
        .await
        .map_err(|e| DemoError::Data(e.to_string()))?
        && !s.deleted
    {
        return Err(DemoError::AlreadyLoaded(String::new()));
    }
    let mut rng = Rng::new(opts.seed);
    let mut sim = Sim {
        fhir,
        clock,
        next_tick: clock.now() - clock.now().rem_euclid(DAY) + DAY + 2 * HOUR,
    };
    let dir = directory(&sim).await?;
    let delays = fhir.workflow.delays.clone();
    let scenarios = assign(&mut rng, opts.dossiers);
    let mut dossiers = Vec::new();
    let mut events = Vec::new();
    for (i, s) in scenarios.iter().enumerate() {
        let d = plan_dossier(&mut rng, &dir, i, *s, end, &delays)?;
        for (seq, (at, action)) in d.steps.iter().enumerate() {
            events.push(Event {
                at: *at,
                dossier: i,
                seq,
                action: action.clone(),
            });
        }
        dossiers.push(d);
    }
    events.sort_by_key(|e| (e.at, e.dossier, e.seq));
    let mut tasks: Vec<Vec<String>> = vec![Vec::new(); dossiers.len()];
    for e in &events {
        sim.until(e.at).await?;
        let d = &dossiers[e.dossier];
        perform(&sim, &dir, d, &e.action, &mut tasks[e.dossier]).await?;
    }
    sim.until(end).await?;
    sim.tick().await?;
    summarize(&sim, dossiers.len()).await
}

/// How far back the demo starts: enough for a request to be reminded, cancelled and archived
/// by the timers (four months with the default delays).
fn window(delays: &crate::workflow::Delays) -> Micros {
    days_of(delays.auto_reminder_after)
        + days_of(delays.auto_cancel_after)
        + days_of(delays.archive_after)
        + 14 * DAY
}

/// A delay in whole days (rounded up), as Micros.
fn days_of(delay: Micros) -> Micros {
    (delay + DAY - 1).div_euclid(DAY).max(1) * DAY
}

// ----------------------------------------------------------------------------------------
// The generator

/// xorshift64* seeded through splitmix64: tiny, deterministic, good enough for a data set.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        let mut z = seed.wrapping_add(0x9E37_79B9_7F4A_7C15);
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^= z >> 31;
        Rng(if z == 0 { 0x2545_F491_4F6C_DD1D } else { z })
    }

    pub fn next_u64(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    /// A number in `0..n` (`n` > 0).
    pub fn below(&mut self, n: usize) -> usize {
        (self.next_u64() % n.max(1) as u64) as usize
    }

    /// A number in `lo..=hi`.
    pub fn range(&mut self, lo: i64, hi: i64) -> i64 {
        if hi <= lo {
            return lo;
        }
        lo + (self.next_u64() % (hi - lo + 1) as u64) as i64
    }

    pub fn pick<'a, T>(&mut self, list: &'a [T]) -> &'a T {
        &list[self.below(list.len())]
    }

    /// One of a list of words.
    pub fn one<'a>(&mut self, list: &[&'a str]) -> &'a str {
        list[self.below(list.len())]
    }

    pub fn chance(&mut self, percent: u64) -> bool {
        self.next_u64() % 100 < percent
    }
}

/// The key of a 13-character NIR: 97 − (NIR mod 97), Corsica's `2A`/`2B` read as 19/18.
/// `None` when the text is not a NIR.
pub fn nir_key(nir: &str) -> Option<u8> {
    if nir.len() != 13 || !nir.is_ascii() {
        return None;
    }
    let digits = match &nir[5..7] {
        "2A" | "2a" => format!("{}19{}", &nir[..5], &nir[7..]),
        "2B" | "2b" => format!("{}18{}", &nir[..5], &nir[7..]),
        _ => nir.to_owned(),
    };
    if !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let n: u64 = digits.parse().ok()?;
    Some((97 - n % 97) as u8)
}

/// The Luhn check digit of a string of digits (RPPS and FINESS numbers end with one).
fn luhn_digit(digits: &str) -> u32 {
    let sum: u32 = digits
        .bytes()
        .rev()
        .enumerate()
        .map(|(i, b)| {
            let d = u32::from(b - b'0');
            if i % 2 == 0 {
                let x = d * 2;
                if x > 9 { x - 9 } else { x }
            } else {
                d
            }
        })
        .sum();
    (10 - sum % 10) % 10
}

fn with_luhn(digits: String) -> String {
    let k = luhn_digit(&digits);
    format!("{digits}{k}")
}

fn rpps(rng: &mut Rng) -> String {
    // the RPPS test range 899700xxxxx (shared/data/README.md)
    with_luhn(format!("899700{:04}", rng.below(10_000)))
}

// ----------------------------------------------------------------------------------------
// The directory: establishments, units, practitioners and their habilitations

struct Unit {
    id: &'static str,
    name: &'static str,
    org: &'static str,
    kind: &'static str,
    manager: (&'static str, &'static str, &'static str),
}

const ORGS: &[(&str, &str, &str, &str, &str, &str)] = &[
    // id, name, street, postcode, town, FINESS département
    (
        "demo-chu",
        "CHU Seine-Normandie (démo)",
        "37 boulevard Gambetta",
        "76000",
        "Rouen",
        "76",
    ),
    (
        "demo-clinique-tilleuls",
        "Clinique de réadaptation Les Tilleuls (démo)",
        "12 chemin des Tilleuls",
        "76230",
        "Bois-Guillaume",
        "76",
    ),
    (
        "demo-ch-belvedere",
        "Centre hospitalier du Belvédère (démo)",
        "8 rue de l'Hôpital",
        "76500",
        "Elbeuf",
        "76",
    ),
    (
        "demo-had-seine-eure",
        "HAD Seine-Eure (démo)",
        "5 rue Georges Clemenceau",
        "27400",
        "Louviers",
        "27",
    ),
];

const UNITS: &[Unit] = &[
    Unit {
        id: "demo-smr-polyvalent",
        name: "SMR polyvalent — hospitalisation complète",
        org: "demo-clinique-tilleuls",
        kind: "Soins médicaux et de réadaptation polyvalents",
        manager: ("Vasseur", "Claire", "Médecin coordonnateur"),
    },
    Unit {
        id: "demo-smr-locomoteur",
        name: "SMR locomoteur — hospitalisation complète",
        org: "demo-clinique-tilleuls",
        kind: "Soins médicaux et de réadaptation de l'appareil locomoteur",
        manager: ("Deschamps", "Olivier", "Médecin MPR"),
    },
    Unit {
        id: "demo-smr-geriatrique",
        name: "SMR gériatrique",
        org: "demo-ch-belvedere",
        kind: "Soins médicaux et de réadaptation gériatriques",
        manager: ("Renaud", "Isabelle", "Gériatre"),
    },
    Unit {
        id: "demo-usp",
        name: "Unité de soins palliatifs",
        org: "demo-ch-belvedere",
        kind: "Unité de soins palliatifs",
        manager: ("Lemoine", "François", "Médecin de soins palliatifs"),
    },
    Unit {
        id: "demo-ehpad-glycines",
        name: "EHPAD Les Glycines — hébergement permanent",
        org: "demo-ch-belvedere",
        kind: "Établissement d'hébergement pour personnes âgées dépendantes",
        manager: ("Caron", "Nathalie", "Cadre de santé"),
    },
    Unit {
        id: "demo-ehpad-glycines-up",
        name: "EHPAD Les Glycines — unité protégée",
        org: "demo-ch-belvedere",
        kind: "Unité de vie protégée (maladie d'Alzheimer et apparentées)",
        manager: ("Perrot", "Sylvie", "Médecin coordonnateur"),
    },
    Unit {
        id: "demo-had",
        name: "HAD Seine-Eure — secteur Rouen-Elbeuf",
        org: "demo-had-seine-eure",
        kind: "Hospitalisation à domicile",
        manager: ("Hamon", "Cécile", "Infirmière de coordination"),
    },
];

/// Prescribing side (CHU): role id, family, given, specialty, profile.
const PRESCRIBERS: &[(&str, &str, &str, &str, &str)] = &[
    (
        "demo-role-geriatrie",
        "Marchand",
        "Hélène",
        "Gériatrie",
        "prescripteur-medical",
    ),
    (
        "demo-role-neurologie",
        "Leclercq",
        "Antoine",
        "Neurologie",
        "prescripteur-medical",
    ),
    (
        "demo-role-orthopedie",
        "Bertin",
        "Sophie",
        "Chirurgie orthopédique",
        "prescripteur-medical",
    ),
    (
        "demo-role-oncologie",
        "Benali",
        "Karim",
        "Oncologie médicale",
        "prescripteur-medical",
    ),
    (
        "demo-role-social",
        "Fontaine",
        "Laure",
        "Service social",
        "gestionnaire-administratif-social",
    ),
];

/// The social worker of the prescribing side (in [`PRESCRIBERS`]).
const SOCIAL_WORKER: usize = 4;

/// The modules of the demo: code, units (indexes in [`UNITS`]), prescribers (in
/// [`PRESCRIBERS`]), birth years.
/// A module of the demo: code, units, prescribers, birth years.
type Module = (&'static str, &'static [usize], &'static [usize], (i64, i64));

const MODULES: &[Module] = &[
    ("smr", &[0, 1, 2], &[0, 1, 2], (1935, 1970)),
    ("had", &[6], &[3, 0], (1938, 1990)),
    ("usp", &[3, 6], &[3, 1], (1940, 1975)),
    ("ehpad", &[4, 5], &[0, 4], (1930, 1946)),
];

struct Directory {
    /// Per prescriber, its caller.
    prescribers: Vec<Caller>,
    /// Per prescriber, the RPPS number.
    rpps: Vec<String>,
    /// Per unit, its manager's caller.
    managers: Vec<Caller>,
}

fn unit_role(u: &Unit) -> String {
    format!("demo-role-{}", u.id.trim_start_matches("demo-"))
}

async fn directory(sim: &Sim<'_>) -> Result<Directory, DemoError> {
    let mut rng = Rng::new(0x5eed);
    for (i, (id, name, street, postcode, town, dept)) in ORGS.iter().enumerate() {
        let finess = with_luhn(format!("{dept}00{:04}", 1000 + i * 137 + rng.below(100)));
        let org = json!({
            "resourceType": "Organization",
            "id": id,
            "active": true,
            "identifier": [
                {"use": "official", "type": {"coding": [{"system": "https://hl7.fr/ig/fhir/core/CodeSystem/fr-core-cs-v2-0203", "code": "FINEG"}]},
                 "system": FINESS_SYSTEM, "value": finess},
                {"use": "official", "system": IDNST_SYSTEM, "value": format!("1{finess}")}
            ],
            "name": name,
            "telecom": [{"system": "phone", "value": format!("02 35 {:02} {:02} {:02}", 10 + i, rng.below(100), rng.below(100))}],
            "address": [{"use": "work", "line": [street], "postalCode": postcode, "city": town, "country": "FRA"}]
        });
        sim.call(
            &Caller::Anonymous,
            Method::PUT,
            &format!("Organization/{id}"),
            Some(org),
        )
        .await?;
    }
    for (i, u) in UNITS.iter().enumerate() {
        let hs = json!({
            "resourceType": "HealthcareService",
            "id": u.id,
            "active": true,
            "identifier": [{"type": {"coding": [{"system": "https://mos.esante.gouv.fr/NOS/TRE_R355-TypeIdentifiantOffre/FHIR/TRE-R355-TypeIdentifiantOffre", "code": "35", "display": "Identifiant fonctionnel de l'offre connu par l'instance ROR"}]},
                            "value": format!("28/{:07}", 4_200_100 + i * 13)}],
            "providedBy": {"reference": format!("Organization/{}", u.org)},
            "type": [{"text": u.kind}],
            "name": u.name,
            "telecom": [{"system": "phone", "value": format!("02 35 {:02} {:02} {:02}", 40 + i, rng.below(100), rng.below(100))}]
        });
        sim.call(
            &Caller::Anonymous,
            Method::PUT,
            &format!("HealthcareService/{}", u.id),
            Some(hs),
        )
        .await?;
    }
    let mut prescribers = Vec::new();
    let mut numbers = Vec::new();
    for (role_id, family, given, specialty, profile) in PRESCRIBERS {
        let (caller, number) = account(
            sim, &mut rng, role_id, family, given, specialty, profile, "demo-chu", None,
        )
        .await?;
        prescribers.push(caller);
        numbers.push(number);
    }
    let mut managers = Vec::new();
    for u in UNITS {
        let (family, given, job) = u.manager;
        let (caller, _) = account(
            sim,
            &mut rng,
            &unit_role(u),
            family,
            given,
            job,
            "responsable-admission",
            u.org,
            Some(u.id),
        )
        .await?;
        managers.push(caller);
    }
    Ok(Directory {
        prescribers,
        rpps: numbers,
        managers,
    })
}

/// A Practitioner and their PractitionerRole (a habilitation), written anonymously; returns
/// the caller the role stands for and the practitioner's RPPS number.
#[allow(clippy::too_many_arguments)]
async fn account(
    sim: &Sim<'_>,
    rng: &mut Rng,
    role_id: &str,
    family: &str,
    given: &str,
    specialty: &str,
    profile: &str,
    org: &str,
    unit: Option<&str>,
) -> Result<(Caller, String), DemoError> {
    let rpps = rpps(rng);
    let pr_id = role_id.replace("demo-role-", "demo-pr-");
    let doctor = profile == "prescripteur-medical" || specialty.starts_with("Médecin");
    let mut name = json!({"use": "official", "family": family, "given": [given]});
    if doctor {
        name["prefix"] = json!(["Dr"]);
    }
    let practitioner = json!({
        "resourceType": "Practitioner",
        "id": pr_id,
        "active": true,
        "identifier": [
            {"type": {"coding": [{"system": "https://hl7.fr/ig/fhir/core/CodeSystem/fr-core-cs-v2-0203", "code": "RPPS"}]},
             "system": RPPS_SYSTEM, "value": rpps},
            {"type": {"coding": [{"system": "https://hl7.fr/ig/fhir/core/CodeSystem/fr-core-cs-v2-0203", "code": "IDNPS"}]},
             "system": IDNPS_SYSTEM, "value": format!("8{rpps}")}
        ],
        "name": [name]
    });
    sim.call(
        &Caller::Anonymous,
        Method::PUT,
        &format!("Practitioner/{pr_id}"),
        Some(practitioner),
    )
    .await?;
    let display = match profile {
        "prescripteur-medical" => "Prescripteur médical",
        "gestionnaire-administratif-social" => "Gestionnaire administratif et social",
        _ => "Responsable d'admission",
    };
    let mut role = json!({
        "resourceType": "PractitionerRole",
        "id": role_id,
        "active": true,
        "practitioner": {"reference": format!("Practitioner/{pr_id}"), "display": format!("{given} {family}")},
        "organization": {"reference": format!("Organization/{org}")},
        "code": [{"coding": [{"system": PROFILE_SYSTEM, "code": profile, "display": display}]}],
        "specialty": [{"text": specialty}]
    });
    if let Some(u) = unit {
        role["healthcareService"] = json!([{"reference": format!("HealthcareService/{u}")}]);
    }
    sim.call(
        &Caller::Anonymous,
        Method::PUT,
        &format!("PractitionerRole/{role_id}"),
        Some(role.clone()),
    )
    .await?;
    let caller = auth::habilitation(role_id, &role, sim.clock.now())
        .map(Caller::Person)
        .ok_or_else(|| {
            DemoError::Data(format!("PractitionerRole/{role_id} is not a habilitation"))
        })?;
    Ok((caller, rpps))
}

// ----------------------------------------------------------------------------------------
// Patients

const WOMEN: &[&str] = &[
    "Jeanne",
    "Marie",
    "Monique",
    "Françoise",
    "Jacqueline",
    "Nicole",
    "Simone",
    "Denise",
    "Suzanne",
    "Colette",
    "Odette",
    "Madeleine",
    "Christiane",
    "Yvette",
    "Michèle",
    "Danielle",
    "Josiane",
    "Martine",
    "Catherine",
    "Sylvie",
    "Isabelle",
    "Nathalie",
    "Brigitte",
    "Chantal",
    "Évelyne",
    "Geneviève",
    "Thérèse",
    "Annick",
];
const MEN: &[&str] = &[
    "Jean",
    "Pierre",
    "Michel",
    "André",
    "Jacques",
    "René",
    "Marcel",
    "Roger",
    "Robert",
    "Bernard",
    "Claude",
    "Gérard",
    "Daniel",
    "Alain",
    "Yves",
    "Guy",
    "Serge",
    "Patrick",
    "Philippe",
    "Christian",
    "Jean-Pierre",
    "Jean-Claude",
    "Didier",
    "Thierry",
    "Pascal",
    "Gilbert",
    "Lucien",
    "Raymond",
];
const FAMILIES: &[&str] = &[
    "Martin",
    "Bernard",
    "Thomas",
    "Petit",
    "Robert",
    "Richard",
    "Durand",
    "Dubois",
    "Moreau",
    "Laurent",
    "Simon",
    "Michel",
    "Lefebvre",
    "Leroy",
    "Roux",
    "David",
    "Morel",
    "Fournier",
    "Girard",
    "Bonnet",
    "Dupont",
    "Lambert",
    "Rousseau",
    "Vincent",
    "Lefèvre",
    "Mercier",
    "Guérin",
    "Boyer",
    "Garnier",
    "Chevalier",
    "Legrand",
    "Gauthier",
    "Perrin",
    "Robin",
    "Clément",
    "Morin",
    "Henry",
    "Roussel",
    "Mathieu",
    "Masson",
    "Duval",
    "Lemaire",
    "Noël",
    "Dufour",
    "Meunier",
    "Blanchard",
    "Lecomte",
    "Hébert",
    "Lebrun",
    "Lecoq",
    "Delamare",
    "Quesnel",
    "Le Gall",
    "Leroux",
    "Letellier",
    "Vautier",
];
/// Where patients live: town, postcode.
const TOWNS: &[(&str, &str)] = &[
    ("Rouen", "76000"),
    ("Sotteville-lès-Rouen", "76300"),
    ("Le Grand-Quevilly", "76120"),
    ("Le Petit-Quevilly", "76140"),
    ("Mont-Saint-Aignan", "76130"),
    ("Bois-Guillaume", "76230"),
    ("Déville-lès-Rouen", "76250"),
    ("Maromme", "76150"),
    ("Darnétal", "76160"),
    ("Canteleu", "76380"),
    ("Barentin", "76360"),
    ("Yvetot", "76190"),
    ("Elbeuf", "76500"),
    ("Saint-Étienne-du-Rouvray", "76800"),
    ("Oissel", "76350"),
    ("Louviers", "27400"),
    ("Évreux", "27000"),
    ("Vernon", "27200"),
    ("Le Havre", "76600"),
    ("Fécamp", "76400"),
    ("Dieppe", "76200"),
];
const STREETS: &[&str] = &[
    "rue Jeanne d'Arc",
    "rue du Gros-Horloge",
    "avenue de Bretagne",
    "rue de la République",
    "rue Victor Hugo",
    "rue des Carmes",
    "boulevard de l'Yser",
    "rue Saint-Julien",
    "chemin des Sapins",
    "impasse des Tilleuls",
    "rue Jean Jaurès",
    "allée des Peupliers",
    "route de Neufchâtel",
    "rue Pasteur",
    "rue du Général Leclerc",
    "rue des Écoles",
];
/// Birth places: name, INSEE code (`99` + country code abroad), country.
const BIRTHPLACES: &[(&str, &str, &str)] = &[
    ("Rouen", "76540", "FRA"),
    ("Rouen", "76540", "FRA"),
    ("Le Havre", "76351", "FRA"),
    ("Dieppe", "76217", "FRA"),
    ("Elbeuf", "76231", "FRA"),
    ("Fécamp", "76259", "FRA"),
    ("Évreux", "27229", "FRA"),
    ("Caen", "14118", "FRA"),
    ("Amiens", "80021", "FRA"),
    ("Paris 12e Arrondissement", "75112", "FRA"),
    ("Paris 14e Arrondissement", "75114", "FRA"),
    ("Lille", "59350", "FRA"),
    ("Nantes", "44109", "FRA"),
    ("Brest", "29019", "FRA"),
    ("Ajaccio", "2A004", "FRA"),
    ("Bastia", "2B033", "FRA"),
    ("Maroc", "99350", "MAR"),
    ("Portugal", "99139", "PRT"),
];

struct Person {
    family: String,
    given: Vec<String>,
    female: bool,
    birth: (i64, i64, i64),
    town: (&'static str, &'static str),
    line: String,
}

fn date(y: i64, m: i64, d: i64) -> String {
    format!("{y:04}-{m:02}-{d:02}")
}

fn day_of(t: Micros) -> String {
    format_instant(t)[..10].to_owned()
}

fn person(rng: &mut Rng, years: (i64, i64)) -> Person {
    let female = rng.chance(55);
    let names = if female { WOMEN } else { MEN };
    let first = rng.pick(names).to_string();
    let mut given = vec![first.clone()];
    if rng.chance(60) {
        let second = rng.pick(names).to_string();
        if second != first {
            given.push(second);
        }
    }
    let town = *rng.pick(TOWNS);
    Person {
        family: rng.pick(FAMILIES).to_string(),
        given,
        female,
        birth: (
            rng.range(years.0, years.1),
            rng.range(1, 12),
            rng.range(1, 28),
        ),
        town,
        line: format!("{} {}", rng.range(1, 140), rng.pick(STREETS)),
    }
}

fn patient(rng: &mut Rng, id: &str, p: &Person, validated: Micros) -> Result<Value, DemoError> {
    let (bname, insee, country) = *rng.pick(BIRTHPLACES);
    let (y, m, d) = p.birth;
    let nir = format!(
        "{}{:02}{:02}{}{:03}",
        if p.female { 2 } else { 1 },
        y % 100,
        m,
        insee,
        rng.range(1, 998)
    );
    let key = nir_key(&nir).ok_or_else(|| DemoError::Data(format!("bad NIR {nir}")))?;
    let ins = format!("{nir}{key:02}");
    let mut birth_place = json!({
        "extension": [{"url": format!("{FR_CORE}StructureDefinition/fr-core-address-insee-code"),
                       "valueCoding": {"system": "https://mos.esante.gouv.fr/NOS/TRE_R13-CommuneOM/FHIR/TRE-R13-CommuneOM", "code": insee}}],
        "country": country
    });
    if country == "FRA" {
        birth_place["city"] = json!(bname);
    }
    let mut names = vec![json!({
        "extension": [{"url": format!("{FR_CORE}StructureDefinition/fr-core-birth-list-given-name"),
                       "valueString": p.given.join(" ")}],
        "use": "official",
        "family": p.family,
        "given": [p.given[0]]
    })];
    if p.female && rng.chance(40) {
        names.push(json!({"use": "usual", "family": rng.pick(FAMILIES), "given": [p.given[0]]}));
    }
    Ok(json!({
        "resourceType": "Patient",
        "id": id,
        "meta": {"profile": [format!("{FR_CORE}StructureDefinition/fr-core-patient-ins")]},
        "extension": [
            {"url": "http://hl7.org/fhir/StructureDefinition/patient-birthPlace", "valueAddress": birth_place},
            {"url": format!("{FR_CORE}StructureDefinition/fr-core-identity-reliability"),
             "extension": [
                {"url": "identityStatus", "valueCoding": {"system": format!("{FR_CORE}CodeSystem/fr-core-cs-identity-status"), "code": "QUAL", "display": "Identité qualifiée"}},
                {"url": "validationDate", "valueDate": day_of(validated)}
             ]}
        ],
        "identifier": [{
            "use": "official",
            "type": {"coding": [{"system": format!("{FR_CORE}CodeSystem/fr-core-cs-v2-0203"), "code": "INS-NIR-TEST", "display": "NIR de test"}]},
            "system": INS_TEST_SYSTEM,
            "value": ins
        }],
        "name": names,
        "gender": if p.female { "female" } else { "male" },
        "birthDate": date(y, m, d),
        "address": [{"use": "home", "line": [p.line], "postalCode": p.town.1, "city": p.town.0, "country": "FRA"}]
    }))
}

// ----------------------------------------------------------------------------------------
// Clinical stories and the dossier's parts

/// Per module: orientation reason, main diagnosis, care goal, treatments, dependency level.
const STORIES: &[(&str, &str, &str, &str, &str, &str)] = &[
    (
        "smr",
        "Rééducation après prothèse totale de hanche",
        "Coxarthrose droite, prothèse totale de hanche posée en urgence différée",
        "Reprise de la marche avec aide technique, autonomie pour les transferts",
        "Enoxaparine 4000 UI/j (35 jours), paracétamol, tramadol si besoin",
        "partial",
    ),
    (
        "smr",
        "Rééducation après accident vasculaire cérébral",
        "AVC ischémique sylvien gauche avec hémiparésie droite et aphasie modérée",
        "Rééducation motrice et orthophonique intensive, retour à domicile envisagé",
        "Aspirine 75 mg, atorvastatine 80 mg, ramipril 5 mg",
        "severe",
    ),
    (
        "smr",
        "Fracture du col du fémur après chute à domicile",
        "Fracture du col fémoral gauche, ostéosynthèse par vis-plaque",
        "Reprise de l'appui complet, prévention des chutes, bilan de l'isolement",
        "Enoxaparine, cholécalciférol, paracétamol",
        "partial",
    ),
    (
        "smr",
        "Déconditionnement après décompensation cardiaque",
        "Insuffisance cardiaque à fraction d'éjection altérée décompensée",
        "Réentraînement à l'effort, éducation thérapeutique, équilibrage des diurétiques",
        "Furosémide 40 mg, bisoprolol 2,5 mg, sacubitril/valsartan",
        "partial",
    ),
    (
        "smr",
        "Syndrome de glissement après pneumopathie",
        "Pneumopathie d'inhalation traitée, dénutrition protéino-énergétique",
        "Renutrition, remise au fauteuil puis à la marche",
        "Amoxicilline-acide clavulanique (fin J7), compléments nutritionnels oraux",
        "severe",
    ),
    (
        "had",
        "Antibiothérapie intraveineuse prolongée",
        "Spondylodiscite L3-L4 à staphylocoque doré sensible",
        "Poursuite de l'antibiothérapie IV 6 semaines sur PICC line à domicile",
        "Céfazoline IV continue, paracétamol",
        "partial",
    ),
    (
        "had",
        "Pansements complexes",
        "Ulcère veineux de jambe surinfecté, diabète de type 2",
        "Pansements quotidiens, thérapie par pression négative, équilibre glycémique",
        "Insuline glargine, metformine, antalgiques de palier 2",
        "partial",
    ),
    (
        "had",
        "Chimiothérapie et surveillance à domicile",
        "Adénocarcinome colique métastatique hépatique",
        "Administration de la chimiothérapie orale, surveillance de la tolérance",
        "Capécitabine, ondansétron, héparine de bas poids moléculaire",
        "autonomous",
    ),
    (
        "usp",
        "Douleurs réfractaires en situation palliative",
        "Cancer bronchique non à petites cellules métastatique osseux",
        "Contrôle de la douleur et de la dyspnée, accompagnement du patient et de ses proches",
        "Oxycodone LP et LI, dexaméthasone, midazolam si besoin",
        "severe",
    ),
    (
        "usp",
        "Épuisement de l'entourage, symptômes difficiles",
        "Sclérose latérale amyotrophique évoluée, ventilation non invasive nocturne",
        "Soulagement des symptômes respiratoires, répit de l'aidant",
        "Morphine, scopolamine, VNI nocturne",
        "total",
    ),
    (
        "usp",
        "Fin de vie, maintien à domicile impossible",
        "Cancer du pancréas métastatique, occlusion digestive",
        "Soins de confort, accompagnement de fin de vie",
        "Morphine SC continue, octréotide, halopéridol",
        "total",
    ),
    (
        "ehpad",
        "Maintien à domicile impossible",
        "Maladie d'Alzheimer à un stade modéré à sévère, errance",
        "Hébergement permanent en unité adaptée, sécurité",
        "Donépézil, mémantine",
        "severe",
    ),
    (
        "ehpad",
        "Perte d'autonomie après chutes répétées",
        "Syndrome post-chute, arthrose diffuse, isolement social",
        "Hébergement permanent, prévention des chutes",
        "Paracétamol, cholécalciférol",
        "partial",
    ),
    (
        "ehpad",
        "Aggravation d'une maladie de Parkinson",
        "Maladie de Parkinson évoluée avec fluctuations motrices",
        "Hébergement permanent, ajustement des horaires de traitement",
        "Lévodopa/bensérazide, rasagiline",
        "severe",
    ),
];

const QUESTIONNAIRES: &[(&str, &str)] = &[
    (
        "volet-medical",
        include_str!("../profiles/Questionnaire-volet-medical.json"),
    ),
    (
        "volet-soins-projet",
        include_str!("../profiles/Questionnaire-volet-soins-projet.json"),
    ),
    (
        "volet-administratif-social",
        include_str!("../profiles/Questionnaire-volet-administratif-social.json"),
    ),
];

/// The shipped Questionnaires, parsed once.
fn questionnaires() -> Result<&'static [(&'static str, Value)], DemoError> {
    static PARSED: OnceLock<Vec<(&'static str, Value)>> = OnceLock::new();
    if let Some(p) = PARSED.get() {
        return Ok(p);
    }
    let mut parsed = Vec::new();
    for (id, text) in QUESTIONNAIRES {
        let q = serde_json::from_str(text).map_err(|e| DemoError::Data(format!("{id}: {e}")))?;
        parsed.push((*id, q));
    }
    Ok(PARSED.get_or_init(|| parsed))
}

fn find_item<'a>(items: &'a Value, link_id: &str) -> Option<&'a Value> {
    items.as_array()?.iter().find_map(|i| {
        if i["linkId"] == link_id {
            Some(i)
        } else {
            find_item(&i["item"], link_id)
        }
    })
}

/// The `answerOption` coding of a choice item of the shipped Questionnaires.
fn option(link_id: &str, code: &str) -> Result<Value, DemoError> {
    for (_, q) in questionnaires()? {
        if let Some(item) = find_item(&q["item"], link_id) {
            return item["answerOption"]
                .as_array()
                .into_iter()
                .flatten()
                .map(|o| &o["valueCoding"])
                .find(|c| c["code"] == code)
                .cloned()
                .ok_or_else(|| {
                    DemoError::Data(format!("no option `{code}` for item `{link_id}`"))
                });
        }
    }
    Err(DemoError::Data(format!(
        "no Questionnaire item `{link_id}`"
    )))
}

/// The answers of a tree of answered items, by linkId (the `{"valueX": …}` objects).
fn flatten(items: &Value, out: &mut BTreeMap<String, Value>) {
    for i in items.as_array().into_iter().flatten() {
        if let (Some(id), Some(a)) = (i["linkId"].as_str(), i["answer"][0].as_object()) {
            out.insert(id.to_owned(), Value::Object(a.clone()));
        }
        flatten(&i["item"], out);
    }
}

/// The items of a response to a Questionnaire: the answers given, in the Questionnaire's
/// order and nesting, for the items enabled by the answers before them (`enableWhen`); a
/// required, enabled item without an answer gets a neutral one (first option, `false`,
/// today). An optional group appears only when it holds a given answer. Returns the items
/// and whether any given answer is among them.
fn fill(
    q_items: &Value,
    given: &BTreeMap<String, Value>,
    seen: &mut BTreeMap<String, Vec<Value>>,
    today: &str,
) -> (Vec<Value>, bool) {
    let mut out = Vec::new();
    let mut touched = false;
    for qi in q_items.as_array().into_iter().flatten() {
        let Some(id) = qi["linkId"].as_str() else {
            continue;
        };
        if qi["type"] == "display" || !parts::enabled(qi, seen) {
            continue;
        }
        let required = qi["required"] == true;
        if qi["type"] == "group" {
            let (items, t) = fill(&qi["item"], given, seen, today);
            if t || required {
                out.push(json!({"linkId": id, "item": items}));
                touched |= t;
            }
            continue;
        }
        let value = match given.get(id) {
            Some(v) => {
                touched = true;
                v.clone()
            }
            None if required => match qi["type"].as_str().unwrap_or_default() {
                "choice" | "open-choice" => match &qi["answerOption"][0]["valueCoding"] {
                    Value::Null => json!({"valueString": "Non renseigné"}),
                    c => json!({"valueCoding": c}),
                },
                "boolean" => json!({"valueBoolean": false}),
                "date" => json!({"valueDate": today}),
                "integer" => json!({"valueInteger": 0}),
                "decimal" => json!({"valueDecimal": 0}),
                _ => json!({"valueString": "Non renseigné"}),
            },
            None => continue,
        };
        if let Some((_, v)) = value.as_object().and_then(|o| o.iter().next()) {
            seen.entry(id.to_owned()).or_default().push(v.clone());
        }
        out.push(json!({"linkId": id, "answer": [value]}));
    }
    (out, touched)
}

/// One answered item: a JSON boolean is a `valueBoolean`, a Coding (an object with a `code`)
/// a `valueCoding`, [`d`]'s marker a `valueDate`, a number a `valueDecimal`, anything else a
/// `valueString`.
fn answer(link_id: &str, value: Value) -> Value {
    let (k, v) = match value {
        Value::Bool(b) => ("valueBoolean", json!(b)),
        Value::Object(o) if o.contains_key("code") => ("valueCoding", Value::Object(o)),
        Value::Object(o) => match o.get("date") {
            Some(d) => ("valueDate", d.clone()),
            None => ("valueString", Value::Object(o)),
        },
        Value::Number(n) => ("valueDecimal", Value::Number(n)),
        other => ("valueString", other),
    };
    json!({"linkId": link_id, "answer": [{ k: v }]})
}

fn group(link_id: &str, items: Vec<Value>) -> Value {
    json!({"linkId": link_id, "item": items})
}

/// A date answer, for [`answer`].
fn d(s: String) -> Value {
    json!({ "date": s })
}

struct Story<'a> {
    module: &'a str,
    reason: &'a str,
    diagnosis: &'a str,
    goal: &'a str,
    treatments: &'a str,
    dependency: &'a str,
}

#[allow(clippy::too_many_arguments)]
fn parts(
    rng: &mut Rng,
    story: &Story<'_>,
    p: &Person,
    doctor: (&str, &str),
    doctor_rpps: &str,
    author: &str,
    at: Micros,
    wished: &str,
) -> Result<Vec<(&'static str, Value)>, DemoError> {
    let module = {
        let mut c = json!({"system": code_system("orientation-module"), "code": story.module});
        c["display"] = json!(match story.module {
            "smr" => "Soins médicaux et de réadaptation (SMR)",
            "had" => "Hospitalisation à domicile (HAD)",
            "usp" => "Unité de soins palliatifs (USP)",
            _ => "Établissement d'hébergement pour personnes âgées dépendantes (EHPAD)",
        });
        answer("module", c)
    };
    let today = day_of(at);
    let cognition = match story.module {
        "ehpad" => *rng.pick(&["moderate", "severe", "mild"]),
        _ => *rng.pick(&["none", "none", "mild"]),
    };
    let bmr = rng.chance(15);
    let mut medical = vec![
        module.clone(),
        group(
            "care-goal",
            vec![
                answer("orientation-reason", json!(story.reason)),
                answer("care-goal-description", json!(story.goal)),
                answer("medically-ready-date", d(today.clone())),
            ],
        ),
        group(
            "diagnoses",
            vec![
                answer("main-diagnosis", json!(story.diagnosis)),
                answer(
                    "comorbidities",
                    json!(*rng.pick(&[
                        "Hypertension artérielle, diabète de type 2",
                        "Fibrillation atriale anticoagulée, insuffisance rénale chronique modérée",
                        "BPCO stade 2, tabagisme sevré",
                        "Hypothyroïdie substituée",
                        "Aucune comorbidité notable"
                    ])),
                ),
            ],
        ),
        group(
            "clinical-state",
            vec![
                answer(
                    "clinical-summary",
                    json!(format!(
                        "{}. État stable ce jour, apyrétique, constantes correctes.",
                        story.diagnosis
                    )),
                ),
                answer("current-treatments", json!(story.treatments)),
                answer("expensive-treatments", json!(false)),
                answer("allergies", json!(false)),
                group(
                    "infection",
                    vec![answer(
                        "infection-carriage",
                        option("infection-carriage", if bmr { "bmr" } else { "none" })?,
                    )],
                ),
                group(
                    "devices",
                    vec![
                        answer("oxygen", json!(false)),
                        answer("ventilation", option("ventilation", "none")?),
                        answer("tracheostomy", json!(false)),
                        answer("gastrostomy", json!(false)),
                        answer("dialysis", option("dialysis", "none")?),
                        answer("pca", json!(story.module == "usp")),
                    ],
                ),
            ],
        ),
        group(
            "autonomy",
            vec![answer(
                "dependency-level",
                option("dependency-level", story.dependency)?,
            )],
        ),
        group(
            "cognition",
            vec![
                answer(
                    "cognitive-impairment",
                    option("cognitive-impairment", cognition)?,
                ),
                answer("behavioural-disorders", json!(false)),
            ],
        ),
        group(
            "prognosis",
            vec![answer(
                "vital-prognosis",
                option(
                    "vital-prognosis",
                    if story.module == "usp" {
                        "weeks"
                    } else {
                        "not-engaged"
                    },
                )?,
            )],
        ),
    ];
    if story.module == "usp" {
        medical.push(group(
            "palliative",
            vec![
                answer(
                    "palliative-situation",
                    json!(format!(
                        "{} ; traitements spécifiques arrêtés en réunion de concertation.",
                        story.diagnosis
                    )),
                ),
                answer(
                    "palliative-stay-type",
                    option("palliative-stay-type", "conventional")?,
                ),
                answer(
                    "palliative-prognosis",
                    option("palliative-prognosis", "weeks")?,
                ),
                answer("performance-scale", option("performance-scale", "pps")?),
                answer(
                    "complexity-criteria",
                    option("complexity-criteria", "refractory-symptoms")?,
                ),
                answer(
                    "patient-knows-diagnosis",
                    option("patient-knows-diagnosis", "yes")?,
                ),
                answer(
                    "patient-informed-palliative",
                    option("patient-informed-palliative", "yes")?,
                ),
                answer(
                    "family-informed-palliative",
                    option("family-informed-palliative", "yes")?,
                ),
                answer("advance-directives", option("advance-directives", "yes")?),
                answer(
                    "palliative-trusted-person",
                    option("palliative-trusted-person", "yes")?,
                ),
            ],
        ));
    }
    medical.push(group(
        "medical-validation",
        vec![
            answer(
                "validating-doctor-name",
                json!(format!("{} {}", doctor.1, doctor.0)),
            ),
            answer("validating-doctor-rpps", json!(doctor_rpps)),
            answer("validation-date", d(today.clone())),
        ],
    ));
    let rehab = story.module == "smr";
    let wound = story.diagnosis.contains("Ulcère");
    let soins = vec![
        module.clone(),
        group(
            "nursing-care",
            vec![
                answer(
                    "wound-care",
                    option("wound-care", if wound { "complex" } else { "none" })?,
                ),
                answer(
                    "nursing-frequency",
                    option("nursing-frequency", rng.one(&["daily", "several-daily"]))?,
                ),
            ],
        ),
        group(
            "daily-living",
            vec![
                answer(
                    "feeding",
                    option(
                        "feeding",
                        rng.one(&["autonomous", "preparation", "assisted"]),
                    )?,
                ),
                answer("swallowing-disorders", json!(false)),
                answer(
                    "hygiene",
                    option("hygiene", rng.one(&["partial-help", "full-help"]))?,
                ),
                answer(
                    "urinary-continence",
                    option("urinary-continence", rng.one(&["continent", "occasional"]))?,
                ),
                answer(
                    "faecal-continence",
                    option("faecal-continence", "continent")?,
                ),
                answer(
                    "mobility",
                    option(
                        "mobility",
                        rng.one(&["walking-aid", "human-help", "wheelchair"]),
                    )?,
                ),
                answer(
                    "transfers",
                    option("transfers", rng.one(&["autonomous", "one-person"]))?,
                ),
                answer("falls", json!(rng.chance(40))),
            ],
        ),
        group(
            "rehabilitation",
            vec![answer("rehabilitation-needed", json!(rehab))],
        ),
        group(
            "life-project",
            vec![
                answer(
                    "patient-expectations",
                    json!(match story.module {
                        "ehpad" => "Souhaite une chambre individuelle, proche de sa fille",
                        "usp" => "Être soulagé, que sa famille puisse rester auprès de lui",
                        "had" => "Rentrer chez soi le plus tôt possible",
                        _ => "Remarcher et rentrer à domicile",
                    }),
                ),
                answer(
                    "discharge-plan",
                    option(
                        "discharge-plan",
                        match story.module {
                            "ehpad" => "nursing-home",
                            "usp" => "undetermined",
                            _ => "home-with-support",
                        },
                    )?,
                ),
            ],
        ),
        group(
            "admission-wish",
            vec![
                answer(
                    "care-mode",
                    option(
                        "care-mode",
                        match story.module {
                            "had" => "home",
                            "ehpad" => "permanent-accommodation",
                            _ => "full-hospitalisation",
                        },
                    )?,
                ),
                answer("wished-admission-date", d(wished.to_owned())),
                answer(
                    "date-flexibility",
                    option("date-flexibility", rng.one(&["few-days", "weeks", "asap"]))?,
                ),
            ],
        ),
        group(
            "consent",
            vec![
                answer("patient-consent", option("patient-consent", "yes")?),
                answer("informed-persons", option("informed-persons", "family")?),
            ],
        ),
        group(
            "care-author",
            vec![
                answer("care-author-name", json!(author)),
                answer("care-author-role", json!("Infirmier(e) du service")),
                answer("care-completion-date", d(today.clone())),
            ],
        ),
    ];
    let trusted = rng.chance(60);
    let lives = rng.one(&["alone", "couple", "family", "alone"]);
    let admin = vec![
        module,
        group(
            "identity-complement",
            vec![
                answer(
                    "marital-status",
                    option(
                        "marital-status",
                        rng.one(&["married", "widowed", "single", "divorced"]),
                    )?,
                ),
                answer("spoken-languages", json!("Français")),
            ],
        ),
        group(
            "previous-address",
            vec![
                answer("address-line", json!(p.line)),
                answer("postal-code", json!(p.town.1)),
                answer("city", json!(p.town.0)),
            ],
        ),
        group(
            "living-situation",
            vec![
                answer("lives", option("lives", lives)?),
                answer(
                    "housing-type",
                    option("housing-type", rng.one(&["house", "apartment"]))?,
                ),
            ],
        ),
        group(
            "contacts",
            vec![answer(
                "trusted-person-designated",
                option(
                    "trusted-person-designated",
                    if trusted { "yes" } else { "no" },
                )?,
            )],
        ),
        group(
            "legal-protection",
            vec![answer(
                "protection-measure",
                option("protection-measure", "none")?,
            )],
        ),
        group(
            "health-insurance",
            vec![
                answer(
                    "insurance-scheme",
                    option("insurance-scheme", rng.one(&["general", "general", "msa"]))?,
                ),
                answer("insurance-fund", json!("CPAM de Rouen-Elbeuf-Dieppe")),
                answer("long-term-condition", json!(true)),
                answer(
                    "complementary-coverage",
                    option("complementary-coverage", rng.one(&["mutual", "css"]))?,
                ),
                answer("rights-status", option("rights-status", "open")?),
            ],
        ),
        group(
            "admin-author",
            vec![
                answer("admin-author-name", json!("Laure Fontaine")),
                answer("admin-completion-date", d(today.clone())),
            ],
        ),
    ];
    let mut medical = medical;
    let mut soins = soins;
    let mut admin = admin;
    // the answers the ones above make required (enableWhen)
    if bmr {
        medical.push(answer(
            "infection-details",
            json!(format!(
                "Entérobactérie BLSE, portage rectal, dépistage du {today}"
            )),
        ));
        medical.push(answer(
            "isolation-precautions",
            option("isolation-precautions", "contact")?,
        ));
    }
    if story.module == "ehpad" {
        medical.push(answer("gir", option("gir", rng.one(&["2", "3", "4"]))?));
        medical.push(answer("gir-date", d(today.clone())));
        admin.push(answer(
            "apa",
            option("apa", rng.one(&["granted", "requested"]))?,
        ));
        admin.push(answer(
            "social-accommodation-aid",
            option("social-accommodation-aid", rng.one(&["no", "planned"]))?,
        ));
    }
    if story.module == "usp" {
        let score = 10 * rng.range(2, 5);
        medical.push(json!({"linkId": "performance-score", "answer": [{"valueInteger": score}]}));
        medical.push(answer(
            "pain",
            option("pain", rng.one(&["controlled", "uncontrolled"]))?,
        ));
        medical.push(answer(
            "dyspnoea",
            option("dyspnoea", rng.one(&["absent", "controlled"]))?,
        ));
        medical.push(answer(
            "advance-directives-location",
            json!("Dans le dossier du service, copie remise à la personne de confiance"),
        ));
    }
    if wound {
        soins.push(answer(
            "wound-care-details",
            json!("Ulcère de la jambe droite : détersion et pansement quotidiens, thérapie par pression négative"),
        ));
    }
    if rehab {
        soins.push(answer(
            "rehabilitation-types",
            option(
                "rehabilitation-types",
                rng.one(&["physiotherapy", "occupational-therapy"]),
            )?,
        ));
        soins.push(answer(
            "rehabilitation-intensity",
            option("rehabilitation-intensity", "moderate")?,
        ));
        soins.push(answer("rehabilitation-goals", json!(story.goal)));
    }
    if story.module == "had" {
        soins.push(answer("caregiver-present", json!(true)));
        soins.push(answer("home-suitable", json!(true)));
        soins.push(answer("gp-agreement", option("gp-agreement", "yes")?));
    }
    if trusted {
        admin.push(answer(
            "trusted-person-name",
            json!(format!("{} {}", rng.one(WOMEN), p.family)),
        ));
        admin.push(answer(
            "trusted-person-relationship",
            json!(rng.one(&["Fille", "Fils", "Conjoint(e)", "Nièce"])),
        ));
        admin.push(answer(
            "trusted-person-phone",
            json!(format!(
                "06 {:02} {:02} {:02} {:02}",
                rng.below(100),
                rng.below(100),
                rng.below(100),
                rng.below(100)
            )),
        ));
    }
    admin.push(answer("social-worker-involved", json!(true)));
    admin.push(answer("social-worker-name", json!("Laure Fontaine")));
    admin.push(answer("social-worker-phone", json!("02 35 10 42 17")));
    let mut out = Vec::new();
    for (id, given) in [
        ("volet-medical", medical),
        ("volet-soins-projet", soins),
        ("volet-administratif-social", admin),
    ] {
        let q = questionnaires()?
            .iter()
            .find(|(q, _)| *q == id)
            .map(|(_, q)| q)
            .ok_or_else(|| DemoError::Data(format!("no Questionnaire {id}")))?;
        let mut answers = BTreeMap::new();
        flatten(&json!(given), &mut answers);
        let (items, _) = fill(&q["item"], &answers, &mut BTreeMap::new(), &today);
        out.push((id, json!(items)));
    }
    Ok(out)
}

// ----------------------------------------------------------------------------------------
// Scenarios: what happens to each dossier, and when

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Scenario {
    Draft,
    Sent,
    Read,
    InfoRequested,
    Agreed,
    Proposed,
    ProposedReminded,
    Confirmed,
    Admitted,
    AdmittedDirect,
    Refused,
    Withdrawn,
    Cancelled,
    CancelledArchived,
    AutoCancelled,
    AutoCancelledArchived,
}

/// Every scenario, with its weight once each has appeared.
const SCENARIOS: &[(Scenario, usize)] = &[
    (Scenario::Draft, 2),
    (Scenario::Sent, 3),
    (Scenario::Read, 3),
    (Scenario::InfoRequested, 2),
    (Scenario::Agreed, 2),
    (Scenario::Proposed, 2),
    (Scenario::ProposedReminded, 1),
    (Scenario::Confirmed, 2),
    (Scenario::Admitted, 5),
    (Scenario::AdmittedDirect, 2),
    (Scenario::Refused, 3),
    (Scenario::Withdrawn, 1),
    (Scenario::Cancelled, 2),
    (Scenario::CancelledArchived, 2),
    (Scenario::AutoCancelled, 1),
    (Scenario::AutoCancelledArchived, 1),
];

/// One scenario per dossier: each scenario once (in a seeded order), then by weight.
fn assign(rng: &mut Rng, n: usize) -> Vec<Scenario> {
    let mut first: Vec<Scenario> = SCENARIOS.iter().map(|(s, _)| *s).collect();
    for i in (1..first.len()).rev() {
        first.swap(i, rng.below(i + 1));
    }
    let total: usize = SCENARIOS.iter().map(|(_, w)| w).sum();
    (0..n)
        .map(|i| match first.get(i) {
            Some(s) => *s,
            None => {
                let mut r = rng.below(total);
                SCENARIOS
                    .iter()
                    .find(|(_, w)| {
                        if r < *w {
                            true
                        } else {
                            r -= w;
                            false
                        }
                    })
                    .map_or(Scenario::Sent, |(s, _)| *s)
            }
        })
        .collect()
}

#[derive(Debug, Clone)]
enum Action {
    /// The patient, the parts and the draft dossier, by the prescriber.
    Create,
    Send,
    /// A move of the request to the dossier's unit `unit`, by that unit's manager.
    Unit {
        unit: usize,
        op: &'static str,
        params: Value,
    },
    /// A move of a request by the prescriber.
    Prescriber {
        unit: usize,
        op: &'static str,
        params: Value,
    },
    /// `$cancel` of the whole dossier by the prescriber.
    CancelDossier {
        params: Value,
    },
}

struct Event {
    at: Micros,
    dossier: usize,
    seq: usize,
    action: Action,
}

struct DossierPlan {
    id: String,
    patient: Value,
    person_name: String,
    module: &'static str,
    prescriber: usize,
    /// Who writes and validates the medical and care parts (in [`PRESCRIBERS`]).
    doctor: usize,
    /// Indexes in [`UNITS`].
    units: Vec<usize>,
    parts: Vec<(&'static str, Value)>,
    /// Parts left `in-progress` (drafts only).
    unfinished: usize,
    wished: String,
    reason: String,
    created: Micros,
    steps: Vec<(Micros, Action)>,
}

fn params(list: Value) -> Value {
    json!({"resourceType": "Parameters", "parameter": list})
}

fn none() -> Value {
    json!({"resourceType": "Parameters"})
}

fn reason(system: &str, code: &str, comment: Option<&str>) -> Value {
    let mut p = vec![
        json!({"name": "reason", "valueCoding": {"system": code_system(system), "code": code}}),
    ];
    if let Some(c) = comment {
        p.push(json!({"name": "comment", "valueString": c}));
    }
    params(json!(p))
}

const REFUSALS: &[(&str, Option<&str>)] = &[
    ("no-bed", None),
    ("out-of-scope", None),
    ("care-load", None),
    ("distance", None),
    ("technical-platform", None),
    ("isolation", None),
    ("incomplete-file", None),
    ("patient-refusal", None),
    (
        "other",
        Some(
            "Projet de rééducation non compatible avec le plateau de l'unité, à revoir avec le médecin traitant",
        ),
    ),
];

const INFO_REQUESTS: &[&str] = &[
    "Merci de nous transmettre le dernier bilan biologique (NFS, ionogramme, créatinine).",
    "Pouvez-vous préciser les consignes d'appui et la date de la prochaine consultation chirurgicale ?",
    "Le patient est-il porteur d'une BMR ? Merci de joindre le dernier dépistage.",
    "Merci de préciser le projet de sortie envisagé avec la famille.",
];

fn plan_dossier(
    rng: &mut Rng,
    dir: &Directory,
    i: usize,
    scenario: Scenario,
    end: Micros,
    delays: &crate::workflow::Delays,
) -> Result<DossierPlan, DemoError> {
    let &(module, units, prescribers, years) = rng.pick(MODULES);
    let stories: Vec<_> = STORIES.iter().filter(|s| s.0 == module).collect();
    let s = **rng.pick(&stories);
    let story = Story {
        module: s.0,
        reason: s.1,
        diagnosis: s.2,
        goal: s.3,
        treatments: s.4,
        dependency: s.5,
    };
    let prescriber = *rng.pick(prescribers);
    // one to three units of the module, in a random order
    let mut chosen: Vec<usize> = units.to_vec();
    for k in (1..chosen.len()).rev() {
        chosen.swap(k, rng.below(k + 1));
    }
    let wanted = match scenario {
        Scenario::Confirmed | Scenario::Admitted | Scenario::Agreed => 2,
        _ => 1,
    };
    let n = rng.range(wanted as i64, 3).max(1) as usize;
    chosen.truncate(n.min(chosen.len()).max(1));

    // when: the age of the dossier (days before `end`), as the scenario needs for the timers
    let r = days_of(delays.auto_reminder_after) / DAY;
    let c = days_of(delays.auto_cancel_after) / DAY;
    let a = days_of(delays.archive_after) / DAY;
    let (lo, hi) = match scenario {
        Scenario::Draft => (1, 12),
        Scenario::Sent => (2, 6),
        Scenario::Read => (3, 12),
        Scenario::InfoRequested => (4, 20),
        Scenario::Agreed => (5, 25),
        Scenario::Proposed => (6, 28),
        Scenario::ProposedReminded => (r + 5, r + c - 3),
        Scenario::Confirmed => (6, 20),
        Scenario::Admitted => (10, 110),
        Scenario::AdmittedDirect => (8, 110),
        Scenario::Refused => (6, 100),
        Scenario::Withdrawn => (7, 60),
        Scenario::Cancelled => (4, a + 1),
        Scenario::CancelledArchived => (a + 5, 110),
        Scenario::AutoCancelled => (r + c + 5, r + c + a + 1),
        Scenario::AutoCancelledArchived => (r + c + a + 4, r + c + a + 10),
    };
    let age = rng.range(lo, hi.max(lo));
    let day0 = end.div_euclid(DAY) - age;
    let mut last = 0;
    let mut at = |rng: &mut Rng, day: i64| -> Micros {
        // working hours, 8:00–18:00 in France (7:00–17:00 UTC)
        let mut t = (day0 + day) * DAY + rng.range(7, 16) * HOUR + rng.range(0, 59) * MINUTE;
        if t <= last {
            t = last + rng.range(15, 90) * MINUTE;
        }
        last = t;
        t
    };
    let created = at(rng, 0);
    let wished_day = created + rng.range(5, 15) * DAY;
    let wished = day_of(wished_day);
    let mut steps = vec![(created, Action::Create)];
    if scenario != Scenario::Draft {
        steps.push((at(rng, 0), Action::Send));
    }
    let unit = |unit: usize, op: &'static str, params: Value| Action::Unit { unit, op, params };
    let date_param =
        |t: Micros| params(json!([{"name": "date", "valueDateTime": format_instant(t)}]));
    let others = chosen.len();
    match scenario {
        Scenario::Draft | Scenario::Sent => {}
        Scenario::Read => {
            steps.push((at(rng, 1), unit(0, "mark-read", none())));
            if others > 1 && rng.chance(50) {
                steps.push((at(rng, 2), unit(1, "mark-read", none())));
            }
        }
        Scenario::InfoRequested => {
            steps.push((at(rng, 1), unit(0, "mark-read", none())));
            let msg = *rng.pick(INFO_REQUESTS);
            steps.push((
                at(rng, 1),
                unit(
                    0,
                    "request-info",
                    params(json!([{"name": "message", "valueString": msg}])),
                ),
            ));
            if others > 1 {
                steps.push((at(rng, 2), unit(1, "mark-read", none())));
            }
        }
        Scenario::Agreed => {
            steps.push((at(rng, 1), unit(0, "mark-read", none())));
            let start = wished_day + rng.range(0, 5) * DAY;
            let window = if rng.chance(50) {
                json!([{"name": "window", "valuePeriod": {"start": day_of(start), "end": day_of(start + 14 * DAY)}}])
            } else {
                json!([{"name": "approximate-date", "valueDate": day_of(start)}])
            };
            steps.push((at(rng, 2), unit(0, "agree-in-principle", params(window))));
            steps.push((
                at(rng, 3),
                unit(1, "refuse", reason("refusal-reason", "no-bed", None)),
            ));
        }
        Scenario::Proposed => {
            steps.push((at(rng, 1), unit(0, "mark-read", none())));
            let when = (end.div_euclid(DAY) + rng.range(2, 12)) * DAY + 10 * HOUR;
            steps.push((at(rng, 3), unit(0, "propose-admission", date_param(when))));
            if others > 1 {
                steps.push((at(rng, 2), unit(1, "mark-read", none())));
            }
        }
        Scenario::ProposedReminded => {
            let when = wished_day + 10 * HOUR;
            steps.push((at(rng, 2), unit(0, "propose-admission", date_param(when))));
        }
        Scenario::Confirmed => {
            steps.push((at(rng, 1), unit(0, "mark-read", none())));
            steps.push((at(rng, 1), unit(1, "mark-read", none())));
            let when = (end.div_euclid(DAY) + rng.range(2, 12)) * DAY + 9 * HOUR;
            steps.push((at(rng, 3), unit(0, "propose-admission", date_param(when))));
            steps.push((
                at(rng, 4),
                Action::Prescriber {
                    unit: 0,
                    op: "confirm",
                    params: none(),
                },
            ));
        }
        Scenario::Admitted => {
            steps.push((at(rng, 1), unit(0, "mark-read", none())));
            if rng.chance(50) {
                let (code, comment) = *rng.pick(REFUSALS);
                steps.push((
                    at(rng, 2),
                    unit(1, "refuse", reason("refusal-reason", code, comment)),
                ));
            }
            let admission = (day0 + 7) * DAY + 14 * HOUR;
            steps.push((
                at(rng, 3),
                unit(0, "propose-admission", date_param(admission)),
            ));
            steps.push((
                at(rng, 4),
                Action::Prescriber {
                    unit: 0,
                    op: "confirm",
                    params: none(),
                },
            ));
            let t = at(rng, 7).max(admission);
            steps.push((t, unit(0, "admit", date_param(t))));
        }
        Scenario::AdmittedDirect => {
            let start = day_of((day0 + 5) * DAY);
            steps.push((
                at(rng, 1),
                unit(
                    0,
                    "agree-in-principle",
                    params(json!([{"name": "approximate-date", "valueDate": start}])),
                ),
            ));
            let admission = (day0 + 6) * DAY + 14 * HOUR;
            steps.push((
                at(rng, 3),
                unit(0, "propose-admission", date_param(admission)),
            ));
            let t = at(rng, 6).max(admission);
            steps.push((t, unit(0, "admit", date_param(t))));
        }
        Scenario::Refused => {
            let mut codes: Vec<usize> = (0..REFUSALS.len()).collect();
            for k in (1..codes.len()).rev() {
                codes.swap(k, rng.below(k + 1));
            }
            for u in 0..others {
                let (code, comment) = REFUSALS[codes[u]];
                let day = rng.range(1, 4);
                steps.push((
                    at(rng, day),
                    unit(u, "refuse", reason("refusal-reason", code, comment)),
                ));
            }
        }
        Scenario::Withdrawn => {
            let when = (day0 + 10) * DAY + 10 * HOUR;
            steps.push((at(rng, 2), unit(0, "propose-admission", date_param(when))));
            let (system, code, comment) = *rng.pick(&[
                ("refusal-reason", "no-bed", None),
                ("refusal-reason", "care-load", None),
                (
                    "cancellation-reason",
                    "other",
                    Some("Lit réattribué à une admission urgente de l'établissement"),
                ),
            ]);
            steps.push((
                at(rng, 5),
                unit(0, "withdraw", reason(system, code, comment)),
            ));
        }
        Scenario::Cancelled | Scenario::CancelledArchived => {
            steps.push((at(rng, 1), unit(0, "mark-read", none())));
            let (code, comment) = *rng.pick(&[
                ("death", None),
                ("back-home", None),
                ("orientation-change", None),
                ("patient-wish", None),
                (
                    "other",
                    Some("Transfert vers l'établissement de son département d'origine"),
                ),
            ]);
            steps.push((
                at(rng, 2),
                Action::CancelDossier {
                    params: reason("cancellation-reason", code, comment),
                },
            ));
        }
        Scenario::AutoCancelled | Scenario::AutoCancelledArchived => {
            let when = wished_day + 9 * HOUR;
            steps.push((at(rng, 1), unit(0, "propose-admission", date_param(when))));
        }
    }
    // what the steps of a unit beyond the dossier's units would be: dropped
    steps.retain(|(_, a)| match a {
        Action::Unit { unit, .. } | Action::Prescriber { unit, .. } => *unit < others,
        _ => true,
    });
    steps.sort_by_key(|(t, _)| *t);
    if steps.last().is_some_and(|(t, _)| *t >= end) {
        return Err(DemoError::Data(format!(
            "dossier {} ({scenario:?}) would end in the future",
            i + 1
        )));
    }

    let p = person(rng, years);
    let id = format!("demo-d{:02}", i + 1);
    let validated = created - rng.range(1, 400) * DAY;
    let patient = patient(rng, &format!("demo-pat-{:02}", i + 1), &p, validated)?;
    // the medical part is validated by a doctor: the prescriber, or the geriatrician
    let doctor = if PRESCRIBERS[prescriber].4 == "prescripteur-medical" {
        prescriber
    } else {
        0
    };
    let (_, family, given, _, _) = PRESCRIBERS[doctor];
    let rpps = dir.rpps.get(doctor).cloned().unwrap_or_default();
    let author = format!("{} {}", rng.pick(WOMEN), rng.pick(FAMILIES));
    let parts = parts(
        rng,
        &story,
        &p,
        (family, given),
        &rpps,
        &author,
        created,
        &wished,
    )?;
    Ok(DossierPlan {
        id,
        patient,
        person_name: format!("{} {}", p.given[0], p.family),
        module,
        prescriber,
        doctor,
        units: chosen,
        parts,
        unfinished: if scenario == Scenario::Draft {
            rng.range(0, 2) as usize
        } else {
            0
        },
        wished,
        reason: story.reason.to_owned(),
        created,
        steps,
    })
}

// ----------------------------------------------------------------------------------------
// Running it

struct Sim<'a> {
    fhir: &'a Arc<Fhir>,
    clock: &'a ManualClock,
    /// When the timers run next (every day at 02:00 UTC).
    next_tick: Micros,
}

impl Sim<'_> {
    /// Runs one FHIR request in process as `caller`; the answer's body.
    async fn call(
        &self,
        caller: &Caller,
        method: Method,
        path: &str,
        body: Option<Value>,
    ) -> Result<Value, DemoError> {
        let what = format!("{method} {path}");
        let step = |source| DemoError::Step {
            what: what.clone(),
            source,
        };
        let (p, q) = path.split_once('?').unwrap_or((path, ""));
        let mut req = Req::new(method.clone(), interaction::route(p).map_err(step)?);
        req.query = interaction::parse_query_string(q);
        req.body = body;
        req.caller = caller.clone();
        let resp = interaction::run(self.fhir, req).await.map_err(step)?;
        Ok(match resp.body {
            Body::Raw(s) => serde_json::from_str(&s).unwrap_or(Value::Null),
            Body::Json(v) => v,
            _ => Value::Null,
        })
    }

    async fn tick(&self) -> Result<(), DemoError> {
        crate::workflow::timers::tick(self.fhir)
            .await
            .map(|_| ())
            .map_err(DemoError::Timers)
    }

    /// Moves the clock to `t`, running the daily timers on the way.
    async fn until(&mut self, t: Micros) -> Result<(), DemoError> {
        while self.next_tick <= t {
            self.set(self.next_tick);
            self.tick().await?;
            self.next_tick += DAY;
        }
        self.set(t);
        Ok(())
    }

    fn set(&self, t: Micros) {
        let now = self.clock.now();
        if t > now {
            self.clock.advance(t - now);
        }
    }
}

async fn perform(
    sim: &Sim<'_>,
    dir: &Directory,
    d: &DossierPlan,
    action: &Action,
    tasks: &mut Vec<String>,
) -> Result<(), DemoError> {
    let doc = &dir.prescribers[d.prescriber];
    match action {
        Action::Create => {
            let pid = d.patient["id"].as_str().unwrap_or_default().to_owned();
            sim.call(
                doc,
                Method::PUT,
                &format!("Patient/{pid}"),
                Some(d.patient.clone()),
            )
            .await?;
            let requester = format!("PractitionerRole/{}", PRESCRIBERS[d.prescriber].0);
            let mut refs = Vec::new();
            let n = d.parts.len();
            for (k, (q, items)) in d.parts.iter().enumerate() {
                // each part by a profile with the right to write it: the medical and care
                // parts by a doctor, the administrative and social part by the social worker
                let author = match *q {
                    "volet-administratif-social" => SOCIAL_WORKER,
                    _ => d.doctor,
                };
                let writer = &dir.prescribers[author];
                let qr_id = format!("{}-{}", d.id, q.trim_start_matches("volet-"));
                let status = if k + d.unfinished >= n {
                    "in-progress"
                } else {
                    "completed"
                };
                let qr = json!({
                    "resourceType": "QuestionnaireResponse",
                    "id": qr_id,
                    "questionnaire": format!("{QUESTIONNAIRE}{q}"),
                    "status": status,
                    "subject": {"reference": format!("Patient/{pid}"), "display": d.person_name},
                    "authored": format_instant(d.created - (n - k) as i64 * 20 * MINUTE),
                    "author": {"reference": format!("PractitionerRole/{}", PRESCRIBERS[author].0)},
                    "item": items
                });
                sim.call(
                    writer,
                    Method::PUT,
                    &format!("QuestionnaireResponse/{qr_id}"),
                    Some(qr),
                )
                .await?;
                refs.push(json!({"reference": format!("QuestionnaireResponse/{qr_id}")}));
            }
            let (code, display) = match d.module {
                "smr" => ("smr", "Soins médicaux et de réadaptation (SMR)"),
                "had" => ("had", "Hospitalisation à domicile (HAD)"),
                "usp" => ("usp", "Unité de soins palliatifs (USP)"),
                _ => (
                    "ehpad",
                    "Établissement d'hébergement pour personnes âgées dépendantes (EHPAD)",
                ),
            };
            let sr = json!({
                "resourceType": "ServiceRequest",
                "id": d.id,
                "meta": {"profile": [SR_PROFILE]},
                "status": "draft",
                "intent": "order",
                "category": [{"coding": [{"system": code_system("orientation-module"), "code": code, "display": display}]}],
                "subject": {"reference": format!("Patient/{pid}"), "display": d.person_name},
                "occurrenceDateTime": d.wished,
                "authoredOn": format_instant(d.created),
                "requester": {"reference": requester},
                "reasonCode": [{"text": d.reason}],
                "supportingInfo": refs
            });
            sim.call(
                doc,
                Method::PUT,
                &format!("ServiceRequest/{}", d.id),
                Some(sr),
            )
            .await?;
        }
        Action::Send => {
            let units: Vec<Value> = d
                .units
                .iter()
                .map(|u| json!({"name": "unit", "valueReference": {"reference": format!("HealthcareService/{}", UNITS[*u].id)}}))
                .collect();
            let b = sim
                .call(
                    doc,
                    Method::POST,
                    &format!("ServiceRequest/{}/$send", d.id),
                    Some(params(json!(units))),
                )
                .await?;
            *tasks = b["entry"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|e| e["resource"]["id"].as_str().map(str::to_owned))
                .collect();
            if tasks.len() != d.units.len() {
                return Err(DemoError::Data(format!(
                    "$send of ServiceRequest/{} made {} requests for {} units",
                    d.id,
                    tasks.len(),
                    d.units.len()
                )));
            }
        }
        Action::Unit { unit, op, params } | Action::Prescriber { unit, op, params } => {
            let who = match action {
                Action::Unit { .. } => &dir.managers[d.units[*unit]],
                _ => doc,
            };
            let task = tasks
                .get(*unit)
                .ok_or_else(|| DemoError::Data(format!("{}: no request {unit}", d.id)))?;
            sim.call(
                who,
                Method::POST,
                &format!("Task/{task}/${op}"),
                Some(params.clone()),
            )
            .await?;
        }
        Action::CancelDossier { params } => {
            sim.call(
                doc,
                Method::POST,
                &format!("ServiceRequest/{}/$cancel", d.id),
                Some(params.clone()),
            )
            .await?;
        }
    }
    Ok(())
}

async fn count(sim: &Sim<'_>, query: &str) -> Result<usize, DemoError> {
    let system = Caller::System("demo".into());
    let sep = if query.contains('?') { '&' } else { '?' };
    let b = sim
        .call(
            &system,
            Method::GET,
            &format!("{query}{sep}_summary=count"),
            None,
        )
        .await?;
    Ok(b["total"].as_u64().unwrap_or(0) as usize)
}

async fn summarize(sim: &Sim<'_>, n: usize) -> Result<Summary, DemoError> {
    let bs = code_system("business-status");
    let mut by_status = Vec::new();
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
        by_status.push((
            s.to_owned(),
            count(sim, &format!("Task?business-status={bs}|{s}")).await?,
        ));
    }
    let comm = code_system("communication-category");
    Ok(Summary {
        database: String::new(),
        organizations: ORGS.len(),
        units: UNITS.len(),
        roles: PRESCRIBERS.len() + UNITS.len(),
        patients: n,
        dossiers: count(sim, &format!("ServiceRequest?_profile={SR_PROFILE}")).await?,
        drafts: count(
            sim,
            &format!("ServiceRequest?_profile={SR_PROFILE}&status=draft"),
        )
        .await?,
        by_status,
        archived: count(sim, &format!("Task?_tag={TAG_SYSTEM}|archived")).await?,
        reminders: count(sim, &format!("Communication?category={comm}|reminder")).await?,
        examples: Vec::new(),
    })
}

fn examples(base: &str) -> Vec<String> {
    let base = base.trim_end_matches('/');
    let unit = UNITS[0].id;
    let manager = unit_role(&UNITS[0]);
    let doc = PRESCRIBERS[0].0;
    vec![
        format!(
            "curl -s '{base}/fhir/Task?owner=HealthcareService/{unit}&tab=in-progress' -H 'X-Passerelle-Role: PractitionerRole/{manager}'"
        ),
        format!(
            "curl -s '{base}/fhir/Task?owner=HealthcareService/{unit}&tab=archived&_format=csv' -H 'X-Passerelle-Role: PractitionerRole/{manager}'"
        ),
        format!(
            "curl -s '{base}/fhir/Task?requester=PractitionerRole/{doc}&tab=in-progress' -H 'X-Passerelle-Role: PractitionerRole/{doc}'"
        ),
        format!(
            "curl -s '{base}/fhir/ServiceRequest/demo-d01?_pretty=true' -H 'X-Passerelle-Role: PractitionerRole/{doc}'"
        ),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nir_keys() {
        assert_eq!(nir_key("1841276451089"), Some(46));
        assert_eq!(nir_key("2550814168025"), Some(38));
        // the FR Core test INS 279035121518989
        assert_eq!(nir_key("2790351215189"), Some(89));
        // Corsica: 2A counts as 19, 2B as 18
        assert_eq!(nir_key("185052A004123"), Some(56));
        assert_eq!(nir_key("185051900412"), None);
        assert_eq!(nir_key("1850519004123"), Some(56));
        assert_eq!(nir_key("185052B004123"), Some(83));
        assert_eq!(nir_key("1850518004123"), Some(83));
        assert_eq!(nir_key("18505200412"), None);
        assert_eq!(nir_key("18505X0004123"), None);
    }

    #[test]
    fn the_generator_is_deterministic() {
        let (mut a, mut b) = (Rng::new(7), Rng::new(7));
        for _ in 0..100 {
            assert_eq!(a.next_u64(), b.next_u64());
        }
        assert_ne!(Rng::new(7).next_u64(), Rng::new(8).next_u64());
        let mut z = Rng::new(0);
        assert_ne!(z.next_u64(), 0);
        for _ in 0..1000 {
            let x = z.range(3, 5);
            assert!((3..=5).contains(&x));
        }
    }

    #[test]
    fn every_scenario_appears_from_sixteen_dossiers() {
        let s = assign(&mut Rng::new(3), 16);
        for (want, _) in SCENARIOS {
            assert!(s.contains(want), "{want:?}");
        }
    }

    #[test]
    fn the_social_worker_is_the_social_worker() {
        assert_eq!(
            PRESCRIBERS[SOCIAL_WORKER].4,
            "gestionnaire-administratif-social"
        );
        assert_eq!(PRESCRIBERS[0].4, "prescripteur-medical");
    }

    #[test]
    fn luhn_and_passwords() {
        assert_eq!(luhn_digit("7992739871"), 3);
        assert_eq!(
            display_url("postgres://u:secret@h:5432/db"),
            "postgres://u:***@h:5432/db"
        );
        assert_eq!(display_url("sqlite://x.db"), "sqlite://x.db");
    }

    #[test]
    fn every_part_is_complete_with_answers_of_its_own() {
        let mut rng = Rng::new(1);
        for round in 0..20 {
            for s in STORIES {
                let story = Story {
                    module: s.0,
                    reason: s.1,
                    diagnosis: s.2,
                    goal: s.3,
                    treatments: s.4,
                    dependency: s.5,
                };
                let p = person(&mut rng, (1930, 1990));
                let got = parts(
                    &mut rng,
                    &story,
                    &p,
                    ("Martin", "Jeanne"),
                    "89970012345",
                    "A B",
                    0,
                    "2026-12-01",
                );
                let got = match got {
                    Ok(g) => g,
                    Err(e) => panic!("{e}"),
                };
                for (id, items) in got {
                    let q = &questionnaires()
                        .unwrap()
                        .iter()
                        .find(|(q, _)| *q == id)
                        .unwrap()
                        .1;
                    let r = json!({"resourceType": "QuestionnaireResponse", "item": items});
                    let missing = parts::missing(q, &r);
                    assert!(missing.is_empty(), "{round} {} {id}: {missing:?}", s.0);
                    assert!(
                        !r.to_string().contains("Non renseigné"),
                        "{id}: a default answer"
                    );
                }
            }
        }
    }
}
