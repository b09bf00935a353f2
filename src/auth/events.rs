//! The AuditEvents of authentication (IHE BALP "User Authentication": DICOM type `110114`,
//! subtype `110122` Login or `110123` Logout): browser sign-ins and their failures, logouts,
//! gateway tokens issued or refused at `/auth/token`. Who (the clinician's `SubjectNameID` and
//! Practitioner, the habilitation asked, or the system client), from which address, the
//! outcome, the reason of a failure — never a token, a code, an assertion or a secret.
//! Recorded through `audit::Auditor::record` like every other event.

use serde_json::{Value, json};

use super::psc::IDNAT_PS_SYSTEM;
use crate::time::{Micros, format_instant};

const DCM: &str = "http://dicom.nema.org/resources/ontology/DCM";
/// The gateway's own codes for the flow that authenticated (beside BALP's subtype).
pub const FLOW_SYSTEM: &str = "https://passerelle.dev/fhir/CodeSystem/authentication-flow";
/// The identifier system of system clients (`[[auth.clients]] client_id`).
pub const CLIENT_ID_SYSTEM: &str = "https://passerelle.dev/fhir/sid/client-id";
/// Longest text kept from what a caller claims (an unverified `iss`, say).
const MAX_TEXT: usize = 200;

/// How someone authenticated.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Flow {
    /// `/auth/callback`: a browser sign-in with PSC.
    BrowserSignIn,
    /// `/auth/logout`.
    Logout,
    /// `/auth/token`, RFC 8693 exchange of a PSC access token.
    TokenExchange,
    /// `/auth/token`, `client_credentials` with `private_key_jwt`.
    ClientCredentials,
}

impl Flow {
    fn code(self) -> &'static str {
        match self {
            Flow::BrowserSignIn => "browser-sign-in",
            Flow::Logout => "logout",
            Flow::TokenExchange => "token-exchange",
            Flow::ClientCredentials => "client-credentials",
        }
    }
}

/// Who authenticated, as far as it is known when the event is made.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Who {
    pub subject_name_id: Option<String>,
    /// `Practitioner/<id>`.
    pub practitioner: Option<String>,
    /// `PractitionerRole/<id>`: the habilitation a token was asked for.
    pub role: Option<String>,
    /// A system client (what its assertion claims, when refused).
    pub client_id: Option<String>,
}

fn bounded(s: &str) -> String {
    s.chars().take(MAX_TEXT).collect()
}

/// The AuditEvent of one authentication, for an answer of HTTP `status` (the outcome) with
/// the reason of a refusal.
pub fn authentication(
    flow: Flow,
    who: &Who,
    address: Option<&str>,
    status: u16,
    reason: Option<&str>,
    now: Micros,
) -> Value {
    let outcome = match status {
        0..=399 => "0",
        400..=499 => "4",
        _ => "8",
    };
    let (sub_code, sub_display) = match flow {
        Flow::Logout => ("110123", "Logout"),
        _ => ("110122", "Login"),
    };
    let mut whom = json!({});
    let agent_type;
    if let Some(client) = &who.client_id {
        let client = bounded(client);
        whom["identifier"] = json!({"system": CLIENT_ID_SYSTEM, "value": client});
        whom["display"] = json!(format!("system: {client}"));
        agent_type =
            json!({"coding": [{"system": DCM, "code": "110150", "display": "Application"}]});
    } else {
        if let Some(p) = &who.practitioner {
            whom["reference"] = json!(p);
        }
        match &who.subject_name_id {
            Some(id) => {
                whom["identifier"] = json!({"system": IDNAT_PS_SYSTEM, "value": bounded(id)})
            }
            None if who.practitioner.is_none() => whom["display"] = json!("unknown"),
            None => {}
        }
        agent_type = json!({"coding": [{
            "system": "http://terminology.hl7.org/CodeSystem/extra-security-role-type",
            "code": "humanuser", "display": "human user"
        }]});
    }
    let mut user = json!({"type": agent_type, "who": whom, "requestor": true});
    if let Some(a) = address {
        user["network"] = json!({"address": a, "type": "2"});
    }
    let mut e = json!({
        "resourceType": "AuditEvent",
        "type": {"system": DCM, "code": "110114", "display": "User Authentication"},
        "subtype": [
            {"system": DCM, "code": sub_code, "display": sub_display},
            {"system": FLOW_SYSTEM, "code": flow.code()}
        ],
        "action": "E",
        "recorded": format_instant(now),
        "outcome": outcome,
        "agent": [user, {
            "type": {"coding": [{"system": DCM, "code": "110153", "display": "Source Role ID"}]},
            "who": {"display": "Passerelle"},
            "requestor": false
        }],
        "source": {
            "observer": {"display": "Passerelle"},
            "type": [{"system": "http://terminology.hl7.org/CodeSystem/security-source-type", "code": "4", "display": "Application Server"}]
        },
    });
    if let Some(r) = &who.role {
        e["entity"] = json!([{
            "what": {"reference": r},
            "type": {"system": "http://terminology.hl7.org/CodeSystem/audit-entity-type", "code": "2", "display": "System Object"},
            "role": {"system": "http://terminology.hl7.org/CodeSystem/object-role", "code": "13", "display": "Security Resource"}
        }]);
    }
    if let Some(r) = reason {
        e["outcomeDesc"] = json!(format!("{status}: {}", bounded(r)));
    }
    e
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn balp_user_authentication_shape() {
        let who = Who {
            subject_name_id: Some("899700366240".into()),
            practitioner: Some("Practitioner/p1".into()),
            role: Some("PractitionerRole/r1".into()),
            client_id: None,
        };
        let e = authentication(Flow::TokenExchange, &who, Some("10.0.0.1"), 200, None, 0);
        assert_eq!(e["type"]["code"], "110114");
        assert_eq!(e["subtype"][0]["code"], "110122");
        assert_eq!(e["subtype"][1]["code"], "token-exchange");
        assert_eq!(e["outcome"], "0");
        assert_eq!(e["agent"][0]["who"]["reference"], "Practitioner/p1");
        assert_eq!(e["agent"][0]["who"]["identifier"]["value"], "899700366240");
        assert_eq!(e["agent"][0]["network"]["address"], "10.0.0.1");
        assert_eq!(e["entity"][0]["what"]["reference"], "PractitionerRole/r1");
        assert!(e.get("outcomeDesc").is_none());
        let out = authentication(Flow::Logout, &Who::default(), None, 303, None, 0);
        assert_eq!(out["subtype"][0]["code"], "110123");
        assert_eq!(out["agent"][0]["who"]["display"], "unknown");
        let client = Who {
            client_id: Some("x".repeat(500)),
            ..Who::default()
        };
        let refused = authentication(
            Flow::ClientCredentials,
            &client,
            None,
            401,
            Some("client_assertion replayed"),
            0,
        );
        assert_eq!(refused["outcome"], "4");
        assert_eq!(refused["outcomeDesc"], "401: client_assertion replayed");
        assert_eq!(
            refused["agent"][0]["who"]["identifier"]["value"]
                .as_str()
                .unwrap()
                .len(),
            MAX_TEXT
        );
        assert_eq!(
            authentication(
                Flow::BrowserSignIn,
                &Who::default(),
                None,
                502,
                Some("x"),
                0
            )["outcome"],
            "8"
        );
    }
}
