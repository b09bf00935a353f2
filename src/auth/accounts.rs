//! Accounts (contract §4): a Practitioner per person, made at the first PSC sign-in (browser
//! or token exchange) from the userinfo claims and brought up to date when they change —
//! keyed on `SubjectNameID` (identifier `urn:oid:1.2.250.1.71.4.2.1`), never on PSC's `sub`.
//! Written through the FHIR write path as `Caller::System("psc")`, one per `SubjectNameID`
//! even when two first sign-ins race (the conditional writes' lock on the same criteria),
//! untouched when nothing changed; each version it makes has its Provenance, so the account's
//! history is its Provenance trail.

use std::sync::Arc;

use serde_json::{Value, json};

use super::Caller;
use super::psc::{IDNAT_PS_SYSTEM, Identity};
use crate::fhir::error::{Error, Result};
use crate::fhir::interaction::{self, Fhir, criteria_key, new_id, put_resource};
use crate::store::Tx;

/// The RPPS number (11 digits), FR Core's `identifier[rpps]`.
pub const RPPS_SYSTEM: &str = "https://rpps.esante.gouv.fr";
/// Professions (TRE_G15), professional categories (TRE_R09), spécialités ordinales (TRE_R38).
pub const PROFESSION_SYSTEM: &str =
    "https://mos.esante.gouv.fr/NOS/TRE_G15-ProfessionSante/FHIR/TRE-G15-ProfessionSante";
pub const CATEGORY_SYSTEM: &str = "https://mos.esante.gouv.fr/NOS/TRE_R09-CategorieProfessionnelle/FHIR/TRE-R09-CategorieProfessionnelle";
pub const SPECIALTY_SYSTEM: &str =
    "https://mos.esante.gouv.fr/NOS/TRE_R38-SpecialiteOrdinale/FHIR/TRE-R38-SpecialiteOrdinale";

/// Keeps a new version of the account `Practitioner/id`, written by the system "psc" through
/// the FHIR write path (its checks, index rows and history).
pub async fn save_account(
    fhir: &Fhir,
    tx: &mut Tx<'_>,
    id: &str,
    body: Value,
) -> Result<interaction::Resp> {
    let psc = Caller::System("psc".into());
    let body = fhir.check_body("Practitioner", body)?;
    interaction::update(fhir, tx, &psc, "Practitioner", id, body, None, "PUT").await
}

/// A person's account as it stands after a sign-in.
#[derive(Debug, Clone)]
pub struct Account {
    pub id: String,
    pub version: i64,
    pub body: Value,
    /// Made by this sign-in.
    pub created: bool,
    /// A new version was written (made, or the claims changed).
    pub changed: bool,
}

impl Account {
    pub fn reference(&self) -> String {
        format!("Practitioner/{}", self.id)
    }
}

/// The RPPS number the claims give: `otherIds` of origin RPPS, as 11 digits (PSC writes
/// it there in its idNat_PS form, `8` + RPPS).
pub fn rpps(identity: &Identity) -> Option<String> {
    identity
        .claims
        .other_ids
        .iter()
        .flatten()
        .filter(|o| o.origine.as_deref() == Some("RPPS"))
        .filter_map(|o| o.identifiant.as_deref())
        .find_map(|v| {
            let digits = v.trim();
            let rpps = match digits.len() {
                11 => digits,
                12 if digits.starts_with('8') => &digits[1..],
                _ => return None,
            };
            rpps.bytes()
                .all(|b| b.is_ascii_digit())
                .then(|| rpps.to_owned())
        })
}

fn text(v: &Option<String>) -> Option<&str> {
    v.as_deref().map(str::trim).filter(|s| !s.is_empty())
}

/// What the claims say of the person, as the Practitioner elements PSC owns: identifiers,
/// the official name, qualifications (profession with its category, spécialité ordinale).
fn from_claims(identity: &Identity) -> (Vec<Value>, Value, Vec<Value>) {
    let mut identifiers = vec![
        json!({"use": "official", "system": IDNAT_PS_SYSTEM, "value": identity.subject_name_id}),
    ];
    if let Some(r) = rpps(identity) {
        identifiers.push(json!({"system": RPPS_SYSTEM, "value": r}));
    }
    let exercices = identity
        .claims
        .ref_pro
        .as_ref()
        .map(|r| r.exercices.as_slice())
        .unwrap_or_default();
    let family = text(&identity.family_name).map(str::to_owned).or_else(|| {
        exercices
            .iter()
            .find_map(|e| text(&e.nom_dexercice))
            .map(str::to_owned)
    });
    let given = text(&identity.given_name).map(str::to_owned).or_else(|| {
        exercices
            .iter()
            .find_map(|e| text(&e.prenom_dexercice))
            .map(str::to_owned)
    });
    let mut name = json!({"use": "official"});
    if let Some(f) = family {
        name["family"] = json!(f);
    }
    if let Some(g) = given {
        name["given"] = json!([g]);
    }
    let mut qualifications: Vec<Value> = Vec::new();
    let mut add = |q: Value| {
        if !qualifications.contains(&q) {
            qualifications.push(q);
        }
    };
    for e in exercices {
        if let Some(p) = text(&e.code_profession) {
            let mut coding = vec![json!({"system": PROFESSION_SYSTEM, "code": p})];
            if let Some(c) = text(&e.code_categorie_professionnelle) {
                coding.push(json!({"system": CATEGORY_SYSTEM, "code": c}));
            }
            add(json!({"code": {"coding": coding}}));
        }
        // `S`: a spécialité ordinale; other know-how types are not mapped yet
        if text(&e.code_type_savoir_faire) == Some("S")
            && let Some(s) = text(&e.code_savoir_faire)
        {
            add(json!({"code": {"coding": [{"system": SPECIALTY_SYSTEM, "code": s}]}}));
        }
    }
    (identifiers, name, qualifications)
}

/// `items` with the elements `owned` picks replaced by `new`: kept in place when they are
/// already `new` (so an unchanged account gives an identical body), else the others keep
/// their order and `new` follows them.
fn replace_owned(
    items: Option<&Value>,
    owned: impl Fn(&Value) -> bool,
    new: Vec<Value>,
) -> Vec<Value> {
    let items: Vec<Value> = items.and_then(Value::as_array).cloned().unwrap_or_default();
    let current: Vec<&Value> = items.iter().filter(|v| owned(v)).collect();
    if current.len() == new.len() && current.iter().zip(&new).all(|(a, b)| *a == b) {
        return items;
    }
    let mut out: Vec<Value> = items.into_iter().filter(|v| !owned(v)).collect();
    out.extend(new);
    out
}

fn codes_in(q: &Value, systems: &[&str]) -> bool {
    q["code"]["coding"]
        .as_array()
        .into_iter()
        .flatten()
        .any(|c| c["system"].as_str().is_some_and(|s| systems.contains(&s)))
}

/// The Practitioner of these claims: `existing` (the stored account, if any) with the
/// elements PSC owns replaced and everything else (other identifiers and names, contact
/// details, the terms-of-use acceptance, `active`) kept; a new account is `active`.
pub fn practitioner_from_claims(existing: Option<&Value>, identity: &Identity) -> Value {
    let (identifiers, name, qualifications) = from_claims(identity);
    let mut p = existing
        .cloned()
        .unwrap_or_else(|| json!({"resourceType": "Practitioner", "active": true}));
    let ids = replace_owned(
        p.get("identifier"),
        |i| i["system"] == IDNAT_PS_SYSTEM || i["system"] == RPPS_SYSTEM,
        identifiers,
    );
    p["identifier"] = json!(ids);
    let has_name = name.get("family").is_some() || name.get("given").is_some();
    let names = replace_owned(
        p.get("name"),
        |n| n["use"] == "official",
        if has_name { vec![name] } else { Vec::new() },
    );
    set_or_remove(&mut p, "name", names);
    let quals = replace_owned(
        p.get("qualification"),
        |q| codes_in(q, &[PROFESSION_SYSTEM, CATEGORY_SYSTEM, SPECIALTY_SYSTEM]),
        qualifications,
    );
    set_or_remove(&mut p, "qualification", quals);
    p
}

fn set_or_remove(p: &mut Value, key: &str, items: Vec<Value>) {
    if let Some(o) = p.as_object_mut() {
        if items.is_empty() {
            o.remove(key);
        } else {
            o.insert(key.to_owned(), Value::Array(items));
        }
    }
}

/// The criteria of the account of `subject_name_id` (those of a conditional write, so that
/// a conditional create through the API and a sign-in take the same lock).
fn criteria(subject_name_id: &str) -> Vec<(String, String)> {
    vec![(
        "identifier".into(),
        format!("{IDNAT_PS_SYSTEM}|{subject_name_id}"),
    )]
}

/// The account of `subject_name_id` inside a write job, after taking its lock: `None` when
/// there is none yet; an error when several Practitioners carry the identifier.
pub async fn locked_account(
    fhir: &Fhir,
    tx: &mut Tx<'_>,
    subject_name_id: &str,
) -> Result<Option<(String, i64, Value)>> {
    let criteria = criteria(subject_name_id);
    tx.lock_key(&criteria_key("Practitioner", &criteria))
        .await?;
    let mut search = fhir.parse_search("Practitioner", &criteria, true)?;
    search.query.limit = 2;
    search.query.offset = 0;
    let found = tx.conn().search(&search.query).await?;
    match found.as_slice() {
        [] => Ok(None),
        [one] => {
            let body = one
                .body
                .as_deref()
                .and_then(|b| serde_json::from_str::<Value>(b).ok())
                .ok_or_else(|| Error::invalid("exception", "stored Practitioner unreadable"))?;
            Ok(Some((one.id.clone(), one.version, body)))
        }
        _ => Err(Error::PreconditionFailed(format!(
            "several Practitioners carry the identifier {IDNAT_PS_SYSTEM}|{subject_name_id}"
        ))),
    }
}

/// Makes or brings up to date the account of a signed-in clinician (one store job).
pub async fn ensure_practitioner(fhir: &Arc<Fhir>, identity: &Identity) -> Result<Account> {
    let f = fhir.clone();
    let identity = identity.clone();
    fhir.store
        .write(move |tx| {
            Box::pin(async move {
                let existing = locked_account(&f, tx, &identity.subject_name_id).await?;
                let (id, before, mut body) = match existing {
                    Some((id, version, body)) => {
                        let next = practitioner_from_claims(Some(&body), &identity);
                        (id, Some(version), next)
                    }
                    None => (new_id(), None, practitioner_from_claims(None, &identity)),
                };
                body["id"] = json!(id);
                let resp = save_account(&f, tx, &id, body).await?;
                let version = resp.version.unwrap_or(1);
                let changed = before != Some(version);
                if changed {
                    let (activity, reason) = match before {
                        None => (
                            "created",
                            "account created at first sign-in with Pro Santé Connect",
                        ),
                        Some(_) => (
                            "updated",
                            "account updated from the Pro Santé Connect claims",
                        ),
                    };
                    let target = format!("Practitioner/{id}/_history/{version}");
                    let p = f.workflow.history_entry(
                        &[target],
                        activity,
                        Some(reason),
                        json!({"display": "Passerelle (psc)"}),
                        tx.now(),
                    );
                    put_resource(&f, tx, "Provenance", None, p, "POST").await?;
                }
                let body = match &resp.body {
                    interaction::Body::Raw(t) => serde_json::from_str(t).unwrap_or(Value::Null),
                    interaction::Body::Json(v) => v.clone(),
                    _ => Value::Null,
                };
                Ok::<_, Error>(Account {
                    id,
                    version,
                    body,
                    created: before.is_none(),
                    changed,
                })
            })
        })
        .await
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::psc::identity_from_json;

    fn sample(name: &str) -> Identity {
        let bytes = std::fs::read(
            std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("tests/data/psc")
                .join(name),
        )
        .unwrap();
        identity_from_json(&bytes).unwrap()
    }

    #[test]
    fn a_new_account_from_the_claims() {
        let id = sample("userinfo-hospital-doctor-2-exercices.json");
        let p = practitioner_from_claims(None, &id);
        assert_eq!(p["active"], true);
        assert_eq!(p["identifier"][0]["system"], IDNAT_PS_SYSTEM);
        assert_eq!(p["identifier"][0]["value"], "899700366240");
        // otherIds gives the RPPS in its idNat form: the 11 digits after the 8
        assert_eq!(p["identifier"][1]["system"], RPPS_SYSTEM);
        assert_eq!(p["identifier"][1]["value"], "99700366240");
        assert_eq!(p["name"][0]["family"], "DOC0036624");
        assert_eq!(p["name"][0]["given"][0], "KIT");
        // the same exercise twice gives one qualification of each kind
        let q = p["qualification"].as_array().unwrap();
        assert_eq!(q.len(), 2, "{q:?}");
        assert_eq!(q[0]["code"]["coding"][0]["system"], PROFESSION_SYSTEM);
        assert_eq!(q[0]["code"]["coding"][0]["code"], "10");
        assert_eq!(q[0]["code"]["coding"][1]["code"], "C");
        assert_eq!(q[1]["code"]["coding"][0]["system"], SPECIALTY_SYSTEM);
        assert_eq!(q[1]["code"]["coding"][0]["code"], "SM26");
        // an EDIT test identity has no RPPS
        let edit =
            practitioner_from_claims(None, &sample("userinfo-edit-test-identity-podologue.json"));
        assert_eq!(edit["identifier"].as_array().unwrap().len(), 1);
        assert_eq!(edit["qualification"][0]["code"]["coding"][0]["code"], "80");
    }

    #[test]
    fn unchanged_claims_give_the_same_body_and_others_are_kept() {
        let id = sample("userinfo-hospital-doctor-2-exercices.json");
        let mut stored = practitioner_from_claims(None, &id);
        stored["id"] = json!("p1");
        // things the gateway does not own: a local identifier, a phone, inactive, accepted terms
        stored["identifier"]
            .as_array_mut()
            .unwrap()
            .push(json!({"system": "urn:local", "value": "42"}));
        stored["telecom"] = json!([{"system": "phone", "value": "0102030405"}]);
        stored["active"] = json!(false);
        stored["extension"] = json!([{"url": "x", "valueString": "y"}]);
        assert_eq!(practitioner_from_claims(Some(&stored), &id), stored);
        // a new family name changes the official name only
        let mut renamed = id.clone();
        renamed.family_name = Some("NOUVEAU".into());
        let p = practitioner_from_claims(Some(&stored), &renamed);
        assert_eq!(p["name"][0]["family"], "NOUVEAU");
        assert_eq!(p["telecom"], stored["telecom"]);
        assert_eq!(p["active"], false);
        assert_eq!(p["extension"], stored["extension"]);
        assert_eq!(p["identifier"], stored["identifier"]);
    }

    #[test]
    fn rpps_only_from_an_rpps_origin() {
        let mut id = sample("userinfo-hospital-doctor-2-exercices.json");
        assert_eq!(rpps(&id).as_deref(), Some("99700366240"));
        id.claims.other_ids = Some(vec![super::super::psc::OtherId {
            identifiant: Some("10001234567".into()),
            origine: Some("RPPS".into()),
        }]);
        assert_eq!(rpps(&id).as_deref(), Some("10001234567"));
        id.claims.other_ids = Some(vec![super::super::psc::OtherId {
            identifiant: Some("012345678".into()),
            origine: Some("ADELI".into()),
        }]);
        assert_eq!(rpps(&id), None);
    }
}
