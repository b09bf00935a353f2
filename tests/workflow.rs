//! The admission workflow over HTTP (contract §3): dossiers, `$send`, every move as an
//! operation and as a plain `PUT`, who may move, the side effects, on both engines and in
//! both formats.

mod common;

use common::{Acting, Gateway};
use serde_json::{Value, json};

const CS: &str = "https://passerelle.dev/fhir/CodeSystem/";
const TASK_PROFILE: &str = "https://passerelle.dev/fhir/StructureDefinition/AdmissionTask";
const SR_PROFILE: &str = "https://passerelle.dev/fhir/StructureDefinition/AdmissionRequest";

/// The roles of the test world (PractitionerRole ids).
const DOC: &str = "role-doc"; // prescripteur médical, prescribing structure
const ADMIN: &str = "role-admin"; // gestionnaire administratif et social, same structure
const U1: &str = "role-u1"; // responsable admission of unit u1
const U2: &str = "role-u2";
const U3: &str = "role-u3";
const REFERENT: &str = "role-ref";

fn role(id: &str, profile: &str, org: &str, unit: Option<&str>) -> Value {
    let mut r = json!({
        "resourceType": "PractitionerRole",
        "id": id,
        "active": true,
        "practitioner": {"reference": format!("Practitioner/p-{id}")},
        "organization": {"reference": format!("Organization/{org}")},
        "code": [{"coding": [{"system": format!("{CS}habilitation-profile"), "code": profile}]}]
    });
    if let Some(u) = unit {
        r["healthcareService"] = json!([{"reference": format!("HealthcareService/{u}")}]);
    }
    r
}

/// The directory and accounts (written anonymously, as dev mode allows), a patient, the three
/// completed parts and a draft dossier written by the prescriber. Returns the dossier's id.
async fn world(gw: &Gateway) -> String {
    let put = |rtype: &str, body: Value| {
        let path = format!("{rtype}/{}", body["id"].as_str().unwrap());
        async move { gw.put(&path, &body).await.expect(201) }
    };
    put(
        "Organization",
        json!({"resourceType": "Organization", "id": "org-chu", "name": "CHU Test"}),
    )
    .await;
    put(
        "Organization",
        json!({"resourceType": "Organization", "id": "org-smr", "name": "Clinique SMR"}),
    )
    .await;
    for u in ["u1", "u2", "u3"] {
        put(
            "HealthcareService",
            json!({"resourceType": "HealthcareService", "id": u, "active": true,
                   "providedBy": {"reference": "Organization/org-smr"}, "name": format!("Unité {u}")}),
        )
        .await;
    }
    for (id, profile, org, unit) in [
        (DOC, "prescripteur-medical", "org-chu", None),
        (ADMIN, "gestionnaire-administratif-social", "org-chu", None),
        (REFERENT, "referent", "org-chu", None),
        (U1, "responsable-admission", "org-smr", Some("u1")),
        (U2, "responsable-admission", "org-smr", Some("u2")),
        (U3, "responsable-admission", "org-smr", Some("u3")),
    ] {
        put("PractitionerRole", role(id, profile, org, unit)).await;
    }
    let doc = gw.acting(DOC);
    doc.put(
        "Patient/pat",
        &json!({"resourceType": "Patient", "id": "pat", "name": [{"family": "Martin", "given": ["Jeanne"]}]}),
    )
    .await
    .expect(201);
    let mut parts = Vec::new();
    for q in [
        "volet-medical",
        "volet-soins-projet",
        "volet-administratif-social",
    ] {
        let qr = doc
            .post("QuestionnaireResponse", &part(q, "completed"))
            .await
            .expect(201)
            .json();
        parts.push(
            json!({"reference": format!("QuestionnaireResponse/{}", qr["id"].as_str().unwrap())}),
        );
    }
    let sr = doc
        .post("ServiceRequest", &dossier(json!(parts)))
        .await
        .expect(201)
        .json();
    sr["id"].as_str().unwrap().to_owned()
}

/// A part answered completely for an SMR dossier.
fn part(questionnaire: &str, status: &str) -> Value {
    let rules = passerelle::workflow::rules::Rules::load().unwrap();
    let q = &rules.files[&format!("Questionnaire-{questionnaire}.json")];
    json!({"resourceType": "QuestionnaireResponse", "status": status,
           "questionnaire": format!("https://passerelle.dev/fhir/Questionnaire/{questionnaire}"),
           "subject": {"reference": "Patient/pat"},
           "item": passerelle::workflow::parts::example_items(q, "smr")})
}

fn dossier(parts: Value) -> Value {
    let mut d = json!({
        "resourceType": "ServiceRequest",
        "meta": {"profile": [SR_PROFILE]},
        "status": "draft",
        "intent": "order",
        "category": [{"coding": [{"system": format!("{CS}orientation-module"), "code": "smr"}]}],
        "subject": {"reference": "Patient/pat"},
        "requester": {"reference": format!("PractitionerRole/{DOC}")},
        "occurrenceDateTime": "2026-12-01",
        "supportingInfo": parts
    });
    if d["supportingInfo"] == json!([]) {
        d.as_object_mut().unwrap().remove("supportingInfo");
    }
    d
}

fn params(list: Value) -> Value {
    json!({"resourceType": "Parameters", "parameter": list})
}

fn none() -> Value {
    json!({"resourceType": "Parameters"})
}

fn reason(system: &str, code: &str) -> Value {
    params(
        json!([{"name": "reason", "valueCoding": {"system": format!("{CS}{system}"), "code": code}}]),
    )
}

/// Sends the dossier to u1, u2, u3; returns their Task ids in that order.
async fn send(gw: &Gateway, sr: &str) -> Vec<String> {
    let units = json!([
        {"name": "unit", "valueReference": {"reference": "HealthcareService/u1"}},
        {"name": "unit", "valueReference": {"reference": "HealthcareService/u2"}},
        {"name": "unit", "valueReference": {"reference": "HealthcareService/u3"}}
    ]);
    let b = gw
        .acting(DOC)
        .post(&format!("ServiceRequest/{sr}/$send"), &params(units))
        .await
        .expect(200)
        .json();
    b["entry"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["resource"]["id"].as_str().unwrap().to_owned())
        .collect()
}

async fn state(gw: &Gateway, task: &str) -> (String, String, i64) {
    let t = gw
        .acting(DOC)
        .get(&format!("Task/{task}"))
        .await
        .expect(200)
        .json();
    let bs = t["businessStatus"]["coding"][0]["code"]
        .as_str()
        .unwrap_or("")
        .to_owned();
    let v = t["meta"]["versionId"].as_str().unwrap().parse().unwrap();
    (t["status"].as_str().unwrap().to_owned(), bs, v)
}

async fn op(who: &Acting<'_>, task: &str, name: &str, body: &Value) -> common::Answer {
    who.post(&format!("Task/{task}/${name}"), body).await
}

async fn provenances(gw: &Gateway, task: &str) -> usize {
    let b = gw
        .acting(DOC)
        .get(&format!("Provenance?target=Task/{task}&_count=100"))
        .await
        .expect(200)
        .json();
    b["entry"].as_array().map_or(0, Vec::len)
}

on_both_engines!(a_dossier_gets_a_number_and_is_sent_to_three_units, |gw| {
    let sr = world(&gw).await;
    let doc = gw.acting(DOC);
    let d = doc
        .get(&format!("ServiceRequest/{sr}"))
        .await
        .expect(200)
        .json();
    assert_eq!(
        d["identifier"][0]["system"],
        "https://passerelle.dev/fhir/sid/dossier"
    );
    assert_eq!(d["identifier"][0]["value"], "s0000001");
    let tasks = send(&gw, &sr).await;
    assert_eq!(tasks.len(), 3);
    for t in &tasks {
        let task = doc.get(&format!("Task/{t}")).await.expect(200).json();
        assert_eq!(task["status"], "requested");
        assert_eq!(task["businessStatus"]["coding"][0]["code"], "sent");
        assert_eq!(task["groupIdentifier"]["value"], "s0000001");
        assert_eq!(task["focus"]["reference"], format!("ServiceRequest/{sr}"));
        assert_eq!(task["meta"]["profile"][0], TASK_PROFILE);
        assert_eq!(provenances(&gw, t).await, 1);
    }
    let d = doc
        .get(&format!("ServiceRequest/{sr}"))
        .await
        .expect(200)
        .json();
    assert_eq!(d["status"], "active");
    // a second dossier takes the next number of its module
    let parts = d["supportingInfo"].clone();
    let d2 = doc
        .post("ServiceRequest", &dossier(parts))
        .await
        .expect(201)
        .json();
    assert_eq!(d2["identifier"][0]["value"], "s0000002");
    // sending again to a unit with an open request is a conflict, and changes nothing
    let again =
        params(json!([{"name": "unit", "valueReference": {"reference": "HealthcareService/u1"}}]));
    doc.post(&format!("ServiceRequest/{sr}/$send"), &again)
        .await
        .expect(409);
    assert_eq!(
        gw.acting(DOC).get("Task?_summary=count").await.json()["total"],
        3
    );
});

on_both_engines!(dossier_writes_and_sends_are_checked, |gw| {
    let sr = world(&gw).await;
    let d = gw
        .acting(DOC)
        .get(&format!("ServiceRequest/{sr}"))
        .await
        .expect(200)
        .json();
    // the number is the gateway's
    let mut own = dossier(d["supportingInfo"].clone());
    own["identifier"] =
        json!([{"system": "https://passerelle.dev/fhir/sid/dossier", "value": "s9"}]);
    let a = gw
        .acting(DOC)
        .post("ServiceRequest", &own)
        .await
        .expect(422);
    assert!(
        a.diagnostics().contains("dossier-number"),
        "{}",
        a.diagnostics()
    );
    // a profile rule: no module
    let mut bad = dossier(d["supportingInfo"].clone());
    bad["category"] = json!([{"text": "SMR"}]);
    gw.acting(DOC)
        .post("ServiceRequest", &bad)
        .await
        .expect(422);
    // who: anonymous, a receiving unit, a referent
    gw.anonymous()
        .post("ServiceRequest", &dossier(json!([])))
        .await
        .expect(401);
    gw.acting(U1)
        .post("ServiceRequest", &dossier(json!([])))
        .await
        .expect(403);
    gw.acting(REFERENT)
        .post("ServiceRequest", &dossier(json!([])))
        .await
        .expect(403);
    // a dossier without its parts is not sent
    let empty = gw
        .acting(DOC)
        .post("ServiceRequest", &dossier(json!([])))
        .await
        .expect(201)
        .json();
    let unit =
        params(json!([{"name": "unit", "valueReference": {"reference": "HealthcareService/u1"}}]));
    let a = gw
        .acting(DOC)
        .post(
            &format!("ServiceRequest/{}/$send", empty["id"].as_str().unwrap()),
            &unit,
        )
        .await
        .expect(422);
    assert!(
        a.diagnostics().contains("parts-completed"),
        "{}",
        a.diagnostics()
    );
    // an unknown unit, a missing parameter, an unknown parameter
    let ghost = params(
        json!([{"name": "unit", "valueReference": {"reference": "HealthcareService/nope"}}]),
    );
    gw.acting(DOC)
        .post(&format!("ServiceRequest/{sr}/$send"), &ghost)
        .await
        .expect(422);
    gw.acting(DOC)
        .post(&format!("ServiceRequest/{sr}/$send"), &none())
        .await
        .expect(422);
    let odd = params(json!([{"name": "units", "valueString": "u1"}]));
    gw.acting(DOC)
        .post(&format!("ServiceRequest/{sr}/$send"), &odd)
        .await
        .expect(400);
    // the receiving side does not send
    gw.acting(U1)
        .post(&format!("ServiceRequest/{sr}/$send"), &unit)
        .await
        .expect(403);
    // nothing was sent by any of that
    assert_eq!(
        gw.acting(DOC).get("Task?_summary=count").await.json()["total"],
        0
    );
    // AdmissionTasks are made by $send only
    let t = json!({"resourceType": "Task", "meta": {"profile": [TASK_PROFILE]}, "status": "requested", "intent": "order"});
    let a = gw.acting(DOC).post("Task", &t).await.expect(422);
    assert!(
        a.diagnostics().contains("tasks-by-send"),
        "{}",
        a.diagnostics()
    );
});

on_both_engines!(the_whole_story_of_a_dossier, |gw| {
    let sr = world(&gw).await;
    let t = send(&gw, &sr).await;
    let (u1, u2, u3) = (gw.acting(U1), gw.acting(U2), gw.acting(U3));
    // one reads, one agrees in principle, one refuses
    op(&u1, &t[0], "mark-read", &none()).await.expect(200);
    let window = params(
        json!([{"name": "window", "valuePeriod": {"start": "2026-12-01", "end": "2026-12-15"}}]),
    );
    let agreed = op(&u2, &t[1], "agree-in-principle", &window)
        .await
        .expect(200)
        .json();
    assert_eq!(agreed["output"][0]["valuePeriod"]["end"], "2026-12-15");
    let refused = op(&u3, &t[2], "refuse", &reason("refusal-reason", "no-bed"))
        .await
        .expect(200)
        .json();
    assert_eq!(refused["status"], "rejected");
    assert_eq!(refused["statusReason"]["coding"][0]["code"], "no-bed");
    assert_eq!(refused["statusReason"]["coding"][1]["code"], "114");
    // the agreeing one proposes a date; the prescriber confirms
    let date = params(json!([{"name": "date", "valueDateTime": "2026-12-03T10:00:00+01:00"}]));
    op(&u2, &t[1], "propose-admission", &date).await.expect(200);
    assert_eq!(state(&gw, &t[1]).await.1, "admission-proposed");
    op(&gw.acting(DOC), &t[1], "confirm", &none())
        .await
        .expect(200);
    // the others are cancelled (not selected) and their units told
    let (s, bs, _) = state(&gw, &t[0]).await;
    assert_eq!((s.as_str(), bs.as_str()), ("cancelled", "cancelled"));
    let t0 = gw.acting(DOC).get(&format!("Task/{}", t[0])).await.json();
    assert_eq!(t0["statusReason"]["coding"][0]["code"], "not-selected");
    let notes = gw
        .acting(U1)
        .get(&format!(
            "Communication?part-of=Task/{}&category={CS}communication-category|update-notice",
            t[0]
        ))
        .await
        .expect(200)
        .json();
    assert_eq!(notes["entry"].as_array().map_or(0, Vec::len), 1, "{notes}");
    assert_eq!(
        state(&gw, &t[2]).await.1,
        "refused",
        "a refused request stays refused"
    );
    // the patient is admitted; the dossier is completed
    let admitted = op(
        &u2,
        &t[1],
        "admit",
        &params(json!([{"name": "date", "valueDateTime": "2026-12-03T11:20:00+01:00"}])),
    )
    .await
    .expect(200)
    .json();
    assert_eq!(admitted["status"], "completed");
    let d = gw
        .acting(DOC)
        .get(&format!("ServiceRequest/{sr}"))
        .await
        .json();
    assert_eq!(d["status"], "completed");
    // every move left a Provenance: send + 5 moves on t[1]
    assert_eq!(provenances(&gw, &t[1]).await, 5);
    assert_eq!(provenances(&gw, &t[0]).await, 3, "send, mark-read, cancel");
});

on_both_engines!(bad_moves_change_nothing, |gw| {
    let sr = world(&gw).await;
    let t = send(&gw, &sr).await;
    let u1 = gw.acting(U1);
    let before = state(&gw, &t[0]).await;
    let check = |a: common::Answer, status: u16, needle: &str| {
        let a = a.expect(status);
        assert!(
            a.diagnostics().contains(needle),
            "{needle}: {}",
            a.diagnostics()
        );
    };
    // an agreement without a window
    check(
        op(&u1, &t[0], "agree-in-principle", &none()).await,
        422,
        "window",
    );
    // a refusal without a reason, and `other` without a comment
    check(op(&u1, &t[0], "refuse", &none()).await, 422, "reason");
    check(
        op(&u1, &t[0], "refuse", &reason("refusal-reason", "other")).await,
        422,
        "comment",
    );
    check(
        op(
            &u1,
            &t[0],
            "refuse",
            &reason("cancellation-reason", "death"),
        )
        .await,
        422,
        "reason",
    );
    // a date in the wrong format
    let bad_date = params(json!([{"name": "date", "valueDateTime": "03/12/2026"}]));
    let a = op(&u1, &t[0], "propose-admission", &bad_date).await;
    assert!(a.status == 400 || a.status == 422, "{}", a.text);
    // on a Task of another unit; by the wrong side; anonymously
    check(op(&u1, &t[1], "mark-read", &none()).await, 403, "receiving");
    check(
        op(&gw.acting(DOC), &t[0], "mark-read", &none()).await,
        403,
        "request-answer",
    );
    op(
        &gw.acting(REFERENT),
        &t[0],
        "cancel",
        &reason("cancellation-reason", "death"),
    )
    .await
    .expect(403);
    gw.anonymous()
        .post(&format!("Task/{}/$mark-read", t[0]), &none())
        .await
        .expect(401);
    // from the wrong state
    check(
        op(&gw.acting(DOC), &t[0], "confirm", &none()).await,
        422,
        "move-from",
    );
    assert_eq!(state(&gw, &t[0]).await, before, "nothing changed");
    assert_eq!(provenances(&gw, &t[0]).await, 1);
    // twice in a row
    op(&u1, &t[0], "mark-read", &none()).await.expect(200);
    check(op(&u1, &t[0], "mark-read", &none()).await, 409, "already");
    // a stale If-Match
    let a = u1
        .post_if_match(
            &format!("Task/{}/$request-info", t[0]),
            &params(json!([{"name": "message", "valueString": "Bilan ?"}])),
            1,
        )
        .await;
    a.expect(412);
    assert_eq!(state(&gw, &t[0]).await.1, "read");
    // the archived tag is the timer's
    let mut task = u1.get(&format!("Task/{}", t[0])).await.json();
    task["meta"]["tag"] = json!([{"system": format!("{CS}task-tag"), "code": "archived"}]);
    check(
        u1.put(&format!("Task/{}", t[0]), &task).await,
        422,
        "archive-by-timer",
    );
});

on_both_engines!(a_put_that_makes_a_legal_move_is_that_move, |gw| {
    let sr = world(&gw).await;
    let t = send(&gw, &sr).await;
    let u1 = gw.acting(U1);
    let path = format!("Task/{}", t[0]);
    let mut task = u1.get(&path).await.expect(200).json();
    task["status"] = json!("received");
    task["businessStatus"] =
        json!({"coding": [{"system": format!("{CS}business-status"), "code": "read"}]});
    let read = u1.put_if_match(&path, &task, 1).await.expect(200).json();
    assert_eq!(read["businessStatus"]["coding"][0]["code"], "read");
    assert_eq!(provenances(&gw, &t[0]).await, 2);
    // refusing by PUT: the reason travels in statusReason, the NOS coding is added
    let mut task = read.clone();
    task["status"] = json!("rejected");
    task["businessStatus"] =
        json!({"coding": [{"system": format!("{CS}business-status"), "code": "refused"}]});
    let a = u1.put(&path, &task).await.expect(422);
    assert!(a.diagnostics().contains("reason"), "{}", a.diagnostics());
    task["statusReason"] =
        json!({"coding": [{"system": format!("{CS}refusal-reason"), "code": "age"}]});
    let refused = u1.put(&path, &task).await.expect(200).json();
    assert_eq!(refused["statusReason"]["coding"][1]["code"], "122");
    // a PUT that changes anything else is refused
    let mut other = gw.acting(U2).get(&format!("Task/{}", t[1])).await.json();
    other["owner"] = json!({"reference": "HealthcareService/u1"});
    let a = gw
        .acting(U2)
        .put(&format!("Task/{}", t[1]), &other)
        .await
        .expect(422);
    assert!(a.diagnostics().contains("owner"), "{}", a.diagnostics());
    // a stale version loses
    let mut stale = gw.acting(U3).get(&format!("Task/{}", t[2])).await.json();
    stale["status"] = json!("received");
    stale["businessStatus"] =
        json!({"coding": [{"system": format!("{CS}business-status"), "code": "read"}]});
    gw.acting(U3)
        .put_if_match(&format!("Task/{}", t[2]), &stale, 7)
        .await
        .expect(412);
    // and the wrong unit may not move by PUT either (it does not even see the request)
    let a = gw.acting(U1).put(&format!("Task/{}", t[2]), &stale).await;
    assert!(a.status == 403 || a.status == 404, "{}", a.text);
});

on_both_engines!(cancel_revoke_and_reactivate, |gw| {
    let sr = world(&gw).await;
    let t = send(&gw, &sr).await;
    let doc = gw.acting(DOC);
    let window = params(json!([{"name": "approximate-date", "valueDate": "2026-12-10"}]));
    let agreed = op(&gw.acting(U2), &t[1], "agree-in-principle", &window)
        .await
        .expect(200)
        .json();
    assert_eq!(
        agreed["output"][0]["valuePeriod"],
        json!({"start": "2026-12-10", "end": "2026-12-10"})
    );
    // cancel one, then reactivate it: the exact state it left
    op(
        &doc,
        &t[1],
        "cancel",
        &reason("cancellation-reason", "patient-wish"),
    )
    .await
    .expect(200);
    let back = op(&doc, &t[1], "reactivate", &none())
        .await
        .expect(200)
        .json();
    for k in ["status", "businessStatus", "output"] {
        assert_eq!(back[k], agreed[k], "{k}");
    }
    assert!(back.get("statusReason").is_none());
    op(&doc, &t[1], "reactivate", &none()).await.expect(422);
    // cancelling the whole dossier cancels every open request and revokes it
    let b = doc
        .post(
            &format!("ServiceRequest/{sr}/$cancel"),
            &reason("cancellation-reason", "death"),
        )
        .await
        .expect(200)
        .json();
    assert_eq!(b["entry"].as_array().unwrap().len(), 3);
    let d = doc.get(&format!("ServiceRequest/{sr}")).await.json();
    assert_eq!(d["status"], "revoked");
    // reactivating one brings the dossier back
    op(&doc, &t[0], "reactivate", &none()).await.expect(200);
    assert_eq!(state(&gw, &t[0]).await.1, "sent");
    let d = doc.get(&format!("ServiceRequest/{sr}")).await.json();
    assert_eq!(d["status"], "active");
    // `other` needs its comment
    let mut other = reason("cancellation-reason", "other");
    op(&doc, &t[0], "cancel", &other).await.expect(422);
    other["parameter"]
        .as_array_mut()
        .unwrap()
        .push(json!({"name": "comment", "valueString": "transfert en réanimation"}));
    let c = op(&doc, &t[0], "cancel", &other).await.expect(200).json();
    assert_eq!(c["statusReason"]["text"], "transfert en réanimation");
});

on_both_engines!(update_tells_every_open_unit_and_keeps_the_send_date, |gw| {
    let sr = world(&gw).await;
    let t = send(&gw, &sr).await;
    let doc = gw.acting(DOC);
    let authored = doc.get(&format!("Task/{}", t[0])).await.json()["authoredOn"].clone();
    op(
        &gw.acting(U3),
        &t[2],
        "refuse",
        &reason("refusal-reason", "age"),
    )
    .await
    .expect(200);
    let qr = doc
        .post("QuestionnaireResponse", &part("volet-medical", "completed"))
        .await
        .expect(201)
        .json();
    let p = params(json!([
        {"name": "part", "valueReference": {"reference": format!("QuestionnaireResponse/{}", qr["id"].as_str().unwrap())}},
        {"name": "message", "valueString": "Aggravation : oxygène 2 L/min."}
    ]));
    let b = doc
        .post(&format!("ServiceRequest/{sr}/$update"), &p)
        .await
        .expect(200)
        .json();
    assert_eq!(
        b["entry"].as_array().unwrap().len(),
        2,
        "the two open requests are told"
    );
    let d = doc.get(&format!("ServiceRequest/{sr}")).await.json();
    assert_eq!(d["supportingInfo"].as_array().unwrap().len(), 4);
    assert_eq!(
        doc.get(&format!("Task/{}", t[0])).await.json()["authoredOn"],
        authored
    );
    // a unit does not update a dossier
    gw.acting(U1)
        .post(&format!("ServiceRequest/{sr}/$update"), &p)
        .await
        .expect(403);
});

/// Two clicks racing on the same version: one wins, the other gets 412.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn racing_moves_leave_one_winner() {
    for engine in [common::Engine::Sqlite, common::Engine::Postgres] {
        let Some(gw) = common::spawn(engine).await else {
            continue;
        };
        let sr = world(&gw).await;
        let t = send(&gw, &sr).await;
        let u1 = gw.acting(U1);
        let path = format!("Task/{}/$mark-read", t[0]);
        let empty = none();
        let (a, b) = tokio::join!(
            u1.post_if_match(&path, &empty, 1),
            u1.post_if_match(&path, &empty, 1)
        );
        let mut statuses = [a.status, b.status];
        statuses.sort();
        assert_eq!(statuses, [200, 412], "{engine:?}: {} / {}", a.text, b.text);
        // two prescribers confirming two units at once: one confirmation, one refusal
        let date = params(json!([{"name": "date", "valueDateTime": "2026-12-03"}]));
        op(&gw.acting(U2), &t[1], "propose-admission", &date)
            .await
            .expect(200);
        op(&gw.acting(U3), &t[2], "propose-admission", &date)
            .await
            .expect(200);
        let doc = gw.acting(DOC);
        let (p1, p2) = (
            format!("Task/{}/$confirm", t[1]),
            format!("Task/{}/$confirm", t[2]),
        );
        let (a, b) = tokio::join!(doc.post(&p1, &empty), doc.post(&p2, &empty));
        let mut statuses = [a.status, b.status];
        statuses.sort();
        assert_eq!(statuses, [200, 422], "{engine:?}: {} / {}", a.text, b.text);
        let confirmed = [state(&gw, &t[1]).await.1, state(&gw, &t[2]).await.1];
        assert_eq!(confirmed.iter().filter(|s| *s == "confirmed").count(), 1);
    }
}

#[tokio::test]
async fn reminders_wait_for_72_hours() {
    for engine in [common::Engine::Sqlite, common::Engine::Postgres] {
        let clock = passerelle::time::ManualClock::new(1_795_000_000_000_000);
        let opts = common::Options {
            clock: Some(clock.clone()),
            ..Default::default()
        };
        let Some(gw) = common::spawn_with(engine, opts).await else {
            continue;
        };
        let sr = world(&gw).await;
        let t = send(&gw, &sr).await;
        let window = params(json!([{"name": "window", "valuePeriod": {"start": "2026-12-01"}}]));
        op(&gw.acting(U1), &t[0], "agree-in-principle", &window)
            .await
            .expect(200);
        let doc = gw.acting(DOC);
        let a = op(&doc, &t[0], "remind", &none()).await.expect(422);
        assert!(
            a.diagnostics().contains("remind-72h"),
            "{}",
            a.diagnostics()
        );
        clock.advance(71 * 3_600_000_000);
        op(&doc, &t[0], "remind", &none()).await.expect(422);
        clock.advance(2 * 3_600_000_000);
        let c = op(
            &doc,
            &t[0],
            "remind",
            &params(json!([{"name": "message", "valueString": "Une date ?"}])),
        )
        .await
        .expect(201)
        .json();
        assert_eq!(c["resourceType"], "Communication");
        assert_eq!(c["recipient"][0]["reference"], "HealthcareService/u1");
        assert_eq!(c["category"][0]["coding"][0]["code"], "reminder");
        // the unit reminds only about its own unconfirmed proposal
        op(&gw.acting(U1), &t[0], "remind", &none())
            .await
            .expect(422);
    }
}

const DAY: i64 = 24 * 3_600_000_000;

async fn clocked(engine: common::Engine) -> Option<(Gateway, passerelle::time::ManualClock)> {
    let clock = passerelle::time::ManualClock::new(1_795_000_000_000_000);
    let opts = common::Options {
        clock: Some(clock.clone()),
        ..Default::default()
    };
    common::spawn_with(engine, opts).await.map(|gw| (gw, clock))
}

async fn tick(gw: &Gateway) -> passerelle::workflow::timers::Report {
    passerelle::workflow::timers::tick(&gw.app.fhir)
        .await
        .expect("timers")
}

async fn count(gw: &Gateway, query: &str) -> i64 {
    let sep = if query.contains('?') { '&' } else { '?' };
    gw.acting(DOC)
        .get(&format!("{query}{sep}_summary=count"))
        .await
        .expect(200)
        .json()["total"]
        .as_i64()
        .unwrap()
}

#[tokio::test]
async fn timers_remind_then_cancel_then_archive() {
    for engine in [common::Engine::Sqlite, common::Engine::Postgres] {
        let Some((gw, clock)) = clocked(engine).await else {
            continue;
        };
        let sr = world(&gw).await;
        let t = send(&gw, &sr).await;
        let date = params(json!([{"name": "date", "valueDateTime": "2027-01-10"}]));
        op(&gw.acting(U1), &t[0], "propose-admission", &date)
            .await
            .expect(200);
        op(
            &gw.acting(U3),
            &t[2],
            "refuse",
            &reason("refusal-reason", "distance"),
        )
        .await
        .expect(200);
        let reminders = format!(
            "Communication?based-on=ServiceRequest/{sr}&category={CS}communication-category|reminder"
        );
        // two months without action: one reminder to the prescriber, once
        clock.advance(59 * DAY);
        assert_eq!(tick(&gw).await.reminded, 0);
        clock.advance(2 * DAY);
        assert_eq!(tick(&gw).await.reminded, 1, "{engine:?}");
        assert_eq!(tick(&gw).await.reminded, 0, "idempotent");
        assert_eq!(count(&gw, &reminders).await, 1);
        let c = gw.acting(DOC).get(&reminders).await.json();
        assert_eq!(
            c["entry"][0]["resource"]["recipient"][0]["reference"],
            format!("PractitionerRole/{DOC}")
        );
        // thirty days without action: the open requests are cancelled automatically
        clock.advance(29 * DAY);
        assert_eq!(tick(&gw).await.cancelled, 0);
        clock.advance(2 * DAY);
        let r = tick(&gw).await;
        assert_eq!(
            r.cancelled, 2,
            "{engine:?}: u1 (proposed) and u2 (sent); u3 was refused"
        );
        let t0 = gw.acting(DOC).get(&format!("Task/{}", t[0])).await.json();
        assert_eq!(t0["businessStatus"]["coding"][0]["code"], "auto-cancelled");
        assert_eq!(t0["statusReason"]["coding"][0]["code"], "auto-cancel");
        assert_eq!(t0["statusReason"]["coding"][1]["code"], "95");
        let d = gw
            .acting(DOC)
            .get(&format!("ServiceRequest/{sr}"))
            .await
            .json();
        assert_eq!(d["status"], "revoked");
        assert!(
            d.get("extension").is_none(),
            "the reminder mark is cleared: {d}"
        );
        assert_eq!(tick(&gw).await, Default::default(), "nothing twice");
        // until archived, a request can be reactivated; after, never
        op(&gw.acting(DOC), &t[0], "reactivate", &none())
            .await
            .expect(200);
        assert_eq!(state(&gw, &t[0]).await.1, "admission-proposed");
        clock.advance(16 * DAY);
        assert_eq!(tick(&gw).await.archived, 1, "{engine:?}: u2's request");
        let a = op(&gw.acting(DOC), &t[1], "reactivate", &none())
            .await
            .expect(409);
        assert!(a.diagnostics().contains("archived"), "{}", a.diagnostics());
        let t1 = gw.acting(DOC).get(&format!("Task/{}", t[1])).await.json();
        assert_eq!(t1["meta"]["tag"][0]["code"], "archived");
        // the archived tab lists it, the cancelled tab no longer does
        assert_eq!(
            count(&gw, "Task?owner=HealthcareService/u2&tab=archived").await,
            1
        );
        assert_eq!(
            count(&gw, "Task?owner=HealthcareService/u2&tab=cancelled").await,
            0
        );
    }
}

#[tokio::test]
async fn an_action_after_the_reminder_keeps_the_dossier() {
    for engine in [common::Engine::Sqlite, common::Engine::Postgres] {
        let Some((gw, clock)) = clocked(engine).await else {
            continue;
        };
        let sr = world(&gw).await;
        let t = send(&gw, &sr).await;
        let date = params(json!([{"name": "date", "valueDateTime": "2027-01-10"}]));
        op(&gw.acting(U1), &t[0], "propose-admission", &date)
            .await
            .expect(200);
        clock.advance(61 * DAY);
        assert_eq!(tick(&gw).await.reminded, 1);
        clock.advance(DAY);
        op(
            &gw.acting(DOC),
            &t[1],
            "cancel",
            &reason("cancellation-reason", "back-home"),
        )
        .await
        .expect(200);
        clock.advance(40 * DAY);
        let r = tick(&gw).await;
        assert_eq!(r.cancelled, 0, "{engine:?}: acted on since the reminder");
        assert_eq!(state(&gw, &t[0]).await.1, "admission-proposed");
    }
}

/// Two gateway instances on one PostgreSQL tick at the same moment: each thing happens once.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_schedulers_on_one_database_do_each_thing_once() {
    let Some((gw, clock)) = clocked(common::Engine::Postgres).await else {
        return;
    };
    let config = passerelle::config::Config {
        database_url: gw.database_url.clone(),
        db_pool_size: 4,
        ..passerelle::config::Config::default()
    };
    let other = passerelle::server::App::open(
        &config,
        "http://127.0.0.1:1".into(),
        std::sync::Arc::new(clock.clone()),
    )
    .await
    .expect("second instance");
    let mut dossiers = Vec::new();
    for _ in 0..3 {
        let sr = world_again(&gw).await;
        let t = send(&gw, &sr).await;
        let date = params(json!([{"name": "date", "valueDateTime": "2027-01-10"}]));
        op(&gw.acting(U1), &t[0], "propose-admission", &date)
            .await
            .expect(200);
        dossiers.push(sr);
    }
    let both = |gw: &Gateway| {
        let (a, b) = (gw.app.fhir.clone(), other.fhir.clone());
        async move {
            let (x, y) = tokio::join!(
                passerelle::workflow::timers::tick(&a),
                passerelle::workflow::timers::tick(&b)
            );
            let (x, y) = (x.expect("tick"), y.expect("tick"));
            (
                x.reminded + y.reminded,
                x.cancelled + y.cancelled,
                x.archived + y.archived,
            )
        }
    };
    clock.advance(61 * DAY);
    assert_eq!(both(&gw).await, (3, 0, 0));
    for sr in &dossiers {
        let q = format!(
            "Communication?based-on=ServiceRequest/{sr}&category={CS}communication-category|reminder"
        );
        assert_eq!(count(&gw, &q).await, 1, "one reminder for {sr}");
    }
    clock.advance(31 * DAY);
    assert_eq!(both(&gw).await, (0, 9, 0));
    clock.advance(16 * DAY);
    assert_eq!(both(&gw).await, (0, 0, 9));
}

/// A further dossier in an existing world.
async fn world_again(gw: &Gateway) -> String {
    if gw.get("Organization/org-chu").await.status == 404 {
        return world(gw).await;
    }
    let doc = gw.acting(DOC);
    let first = doc.get("ServiceRequest?_count=1").await.json();
    let parts = first["entry"][0]["resource"]["supportingInfo"].clone();
    let sr = doc
        .post("ServiceRequest", &dossier(parts))
        .await
        .expect(201)
        .json();
    sr["id"].as_str().unwrap().to_owned()
}

/// A tiny RFC 4180 reader, to compare exports cell by cell.
fn read_csv(text: &str) -> Vec<Vec<String>> {
    let text = text.trim_start_matches('\u{feff}');
    let (mut rows, mut row, mut cell) = (Vec::new(), Vec::new(), String::new());
    let mut chars = text.chars().peekable();
    let mut quoted = false;
    while let Some(c) = chars.next() {
        match (quoted, c) {
            (true, '"') if chars.peek() == Some(&'"') => {
                chars.next();
                cell.push('"');
            }
            (true, '"') => quoted = false,
            (true, c) => cell.push(c),
            (false, '"') => quoted = true,
            (false, ',') => row.push(std::mem::take(&mut cell)),
            (false, '\r') => {}
            (false, '\n') => {
                row.push(std::mem::take(&mut cell));
                rows.push(std::mem::take(&mut row));
            }
            (false, c) => cell.push(c),
        }
    }
    if !cell.is_empty() || !row.is_empty() {
        row.push(cell);
        rows.push(row);
    }
    rows
}

on_both_engines!(dashboard_tabs_searches_and_exports, |gw| {
    let sr = world(&gw).await;
    let t = send(&gw, &sr).await;
    op(&gw.acting(U1), &t[0], "mark-read", &none())
        .await
        .expect(200);
    op(
        &gw.acting(U2),
        &t[1],
        "refuse",
        &reason("refusal-reason", "care-load"),
    )
    .await
    .expect(200);
    let date = params(json!([{"name": "date", "valueDateTime": "2026-12-03T10:00:00+01:00"}]));
    op(&gw.acting(U3), &t[2], "propose-admission", &date)
        .await
        .expect(200);
    op(&gw.acting(DOC), &t[2], "confirm", &none())
        .await
        .expect(200);
    // receiver tabs
    assert_eq!(
        count(&gw, "Task?owner=HealthcareService/u1&tab=cancelled").await,
        1
    );
    assert_eq!(
        count(&gw, "Task?owner=HealthcareService/u1&tab=in-progress").await,
        0
    );
    assert_eq!(
        count(&gw, "Task?owner=HealthcareService/u2&tab=refused").await,
        1
    );
    assert_eq!(
        count(&gw, "Task?owner=HealthcareService/u3&tab=in-progress").await,
        1
    );
    assert_eq!(
        count(&gw, "Task?owner=HealthcareService/u3&tab=admitted").await,
        0
    );
    // prescriber tabs, by patient name and by dossier number
    let mine = format!("Task?requester=PractitionerRole/{DOC}");
    assert_eq!(
        count(&gw, &format!("{mine}&tab=in-progress,refused")).await,
        2
    );
    assert_eq!(count(&gw, &format!("{mine}&tab=cancelled")).await, 1);
    assert_eq!(count(&gw, "Task?patient.name=martin").await, 3);
    assert_eq!(count(&gw, "Task?patient.name=dupont").await, 0);
    assert_eq!(count(&gw, "Task?group-identifier=s0000001").await, 3);
    let ids = gw
        .acting(DOC)
        .get(&format!("{mine}&tab=in-progress&_sort=-_lastUpdated"))
        .await
        .json();
    assert_eq!(ids["entry"][0]["resource"]["id"], t[2].as_str());
    // the same search as CSV: one row per request, the dashboard's columns
    let a = gw
        .acting(DOC)
        .get(&format!("{mine}&_format=csv&_sort=_lastUpdated"))
        .await
        .expect(200);
    assert!(
        a.header("content-type").unwrap().starts_with("text/csv"),
        "{:?} {}",
        a.headers,
        a.text
    );
    let rows = read_csv(&a.text);
    assert_eq!(rows.len(), 4, "{}", a.text);
    assert_eq!(rows[0][0], "N° dossier");
    assert!(
        rows.iter()
            .skip(1)
            .all(|r| r[0] == "s0000001" && r[1] == "MARTIN Jeanne"),
        "{rows:?}"
    );
    let mut units: Vec<&str> = rows.iter().skip(1).map(|r| r[5].as_str()).collect();
    units.sort();
    assert_eq!(units, ["Unité u1", "Unité u2", "Unité u3"]);
    assert!(
        rows.iter().any(|r| r[6] == "Refusée" && r[7].is_empty()),
        "{rows:?}"
    );
    // XLSX: a real spreadsheet; LibreOffice reads it back as the same table
    let x = gw
        .send(
            gw.anon
                .get(gw.url(&format!("{mine}&_sort=_lastUpdated")))
                .header("accept", passerelle::export::XLSX_MIME)
                .header("x-passerelle-role", format!("PractitionerRole/{DOC}")),
        )
        .await;
    assert_eq!(x.status, 200, "{}", x.text);
    let bytes = gw
        .anon
        .get(gw.url(&format!("{mine}&_sort=_lastUpdated&_format=xlsx")))
        .header("x-passerelle-role", format!("PractitionerRole/{DOC}"))
        .send()
        .await
        .unwrap()
        .bytes()
        .await
        .unwrap();
    assert_eq!(&bytes[..2], b"PK");
    if let Some(back) = libreoffice_to_csv(&bytes) {
        assert_eq!(read_csv(&back), rows);
    }
    // exports are for searches; other formats are refused
    gw.acting(DOC)
        .get(&format!("Task/{}?_format=csv", t[0]))
        .await
        .expect(406);
    gw.acting(DOC).get("Patient?_format=csv").await.expect(406);
});

/// Converts an XLSX file to CSV with LibreOffice (`None`, with a note, when it is not
/// installed and the suite does not require it: scripts/test.sh installs it and requires it).
fn libreoffice_to_csv(xlsx: &[u8]) -> Option<String> {
    let found = std::process::Command::new("libreoffice")
        .arg("--version")
        .output()
        .is_ok();
    if !found {
        assert!(
            std::env::var("TEST_REQUIRE_LIBREOFFICE").is_err(),
            "libreoffice is required (scripts/test.sh installs libreoffice-calc-nogui)"
        );
        eprintln!("libreoffice not installed: XLSX read-back skipped");
        return None;
    }
    let dir = std::env::temp_dir().join(format!(
        "passerelle-xlsx-{}-{}",
        std::process::id(),
        rand_suffix()
    ));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("export.xlsx");
    std::fs::write(&file, xlsx).unwrap();
    // its own profile directory, so parallel conversions do not share a lock
    let profile = format!(
        "-env:UserInstallation=file://{}",
        dir.join("profile").display()
    );
    let out = std::process::Command::new("libreoffice")
        .args([
            profile.as_str(),
            "--headless",
            "--convert-to",
            "csv:Text - txt - csv (StarCalc):44,34,76",
            "--outdir",
        ])
        .arg(&dir)
        .arg(&file)
        .output()
        .unwrap();
    let csv = std::fs::read_to_string(dir.join("export.csv")).unwrap_or_else(|e| {
        panic!(
            "libreoffice did not convert ({e}): {}",
            String::from_utf8_lossy(&out.stderr)
        )
    });
    let _ = std::fs::remove_dir_all(&dir);
    Some(csv)
}

fn rand_suffix() -> u128 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos()
}

fn indicators(part: &Value) -> std::collections::BTreeMap<String, Value> {
    part["part"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|p| p.get("part").is_none() && p.get("valueReference").is_none())
        .map(|p| {
            let v = p
                .get("valueInteger")
                .or(p.get("valueDecimal"))
                .cloned()
                .unwrap();
            (p["name"].as_str().unwrap().to_owned(), v)
        })
        .collect()
}

fn observed(obs: &Value, which: &str) -> std::collections::BTreeMap<String, Value> {
    let p = obs["parameter"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| match which {
            "total" => p["name"] == "total",
            unit => {
                p["name"] == "unit"
                    && p["part"][0]["valueReference"]["reference"]
                        == format!("HealthcareService/{unit}")
            }
        })
        .unwrap_or_else(|| panic!("no {which} in {obs}"));
    indicators(p)
}

#[tokio::test]
async fn the_observatory_counts_every_indicator() {
    for engine in [common::Engine::Sqlite, common::Engine::Postgres] {
        let Some((gw, clock)) = clocked(engine).await else {
            continue;
        };
        let sr = world(&gw).await;
        let t = send(&gw, &sr).await;
        const HOUR: i64 = 3_600_000_000;
        clock.advance(2 * HOUR);
        let window = params(json!([{"name": "window", "valuePeriod": {"start": "2026-12-01"}}]));
        op(&gw.acting(U1), &t[0], "agree-in-principle", &window)
            .await
            .expect(200);
        clock.advance(HOUR);
        op(
            &gw.acting(U2),
            &t[1],
            "refuse",
            &reason("refusal-reason", "age"),
        )
        .await
        .expect(200);
        clock.advance(21 * HOUR);
        let date = params(json!([{"name": "date", "valueDateTime": "2026-12-03T10:00:00Z"}]));
        op(&gw.acting(U1), &t[0], "propose-admission", &date)
            .await
            .expect(200);
        op(&gw.acting(DOC), &t[0], "confirm", &none())
            .await
            .expect(200);
        op(&gw.acting(U1), &t[0], "admit", &date).await.expect(200);
        let obs = gw
            .acting(DOC)
            .get("$observatory?establishment=Organization/org-smr")
            .await
            .expect(200)
            .json();
        assert_eq!(obs["resourceType"], "Parameters");
        let total = observed(&obs, "total");
        let int =
            |m: &std::collections::BTreeMap<String, Value>, k: &str| m[k].as_i64().unwrap_or(-1);
        let dec =
            |m: &std::collections::BTreeMap<String, Value>, k: &str| m[k].as_f64().unwrap_or(-1.0);
        for (k, v) in [
            ("received", 3),
            ("read", 2),
            ("agreed", 1),
            ("proposed", 1),
            ("admitted", 1),
            ("refused", 1),
            ("cancelled", 1),
            ("auto-cancelled", 0),
            ("open", 0),
        ] {
            assert_eq!(int(&total, k), v, "{engine:?} {k}: {total:?}");
        }
        assert_eq!(dec(&total, "admission-rate"), 33.3);
        assert_eq!(dec(&total, "first-answer-hours-median"), 2.0);
        assert_eq!(dec(&total, "first-answer-hours-p90"), 3.0);
        // sent 2026-11-18 11:06:40Z, admitted 2026-12-03 10:00Z, wished 2026-12-01
        assert_eq!(dec(&total, "admission-days-median"), 15.0);
        assert_eq!(dec(&total, "wished-to-actual-days-median"), 2.4);
        let reasons: Vec<&Value> = obs["parameter"]
            .as_array()
            .unwrap()
            .iter()
            .find(|p| p["name"] == "total")
            .unwrap()["part"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|p| p["name"] == "refused-reason")
            .collect();
        assert_eq!(reasons.len(), 1);
        assert_eq!(reasons[0]["part"][0]["valueCoding"]["code"], "age");
        let u1 = observed(&obs, "u1");
        assert_eq!((int(&u1, "received"), int(&u1, "admitted")), (1, 1));
        assert_eq!(dec(&u1, "admission-rate"), 100.0);
        // scoped to one unit, to a period
        let one = gw
            .acting(DOC)
            .get("$observatory?unit=HealthcareService/u2")
            .await
            .expect(200)
            .json();
        assert_eq!(int(&observed(&one, "total"), "received"), 1);
        let later = gw
            .acting(DOC)
            .get("$observatory?from=2026-11-19")
            .await
            .expect(200)
            .json();
        assert_eq!(int(&observed(&later, "total"), "received"), 0);
        let before = gw
            .acting(DOC)
            .get("$observatory?from=2026-11-01&to=2026-11-30")
            .await
            .expect(200)
            .json();
        assert_eq!(int(&observed(&before, "total"), "received"), 3);
        // as a spreadsheet: a row per unit and the total
        let csv = gw
            .acting(DOC)
            .get("$observatory?_format=csv")
            .await
            .expect(200);
        let rows = read_csv(&csv.text);
        assert_eq!(rows.len(), 5, "{}", csv.text);
        assert_eq!(rows[4][0], "total");
        gw.acting(DOC)
            .get("$observatory?_format=xlsx")
            .await
            .expect(200);
        // bad input
        gw.acting(DOC)
            .get("$observatory?from=yesterday")
            .await
            .expect(400);
        gw.acting(DOC)
            .get("$observatory?colour=blue")
            .await
            .expect(400);
        gw.anonymous().get("$observatory").await.expect(401);
    }
}

on_both_engines!(messages_unread_and_unit_notes, |gw| {
    let sr = world(&gw).await;
    let t = send(&gw, &sr).await;
    let (u1, u2, doc) = (gw.acting(U1), gw.acting(U2), gw.acting(DOC));
    // the unit asks for information: a message to the prescriber, unread
    let ask = params(
        json!([{"name": "message", "valueString": "Merci de préciser le traitement anticoagulant."}]),
    );
    op(&u1, &t[0], "request-info", &ask).await.expect(200);
    let unread = format!("Communication?part-of=Task/{}&received:missing=true", t[0]);
    let b = doc.get(&unread).await.expect(200).json();
    assert_eq!(b["entry"].as_array().map_or(0, Vec::len), 1, "{b}");
    let mut msg = b["entry"][0]["resource"].clone();
    assert_eq!(
        msg["recipient"][0]["reference"],
        format!("PractitionerRole/{DOC}")
    );
    assert_eq!(msg["sender"]["reference"], format!("PractitionerRole/{U1}"));
    // reading it sets `received`: it leaves the unread list
    msg["received"] = json!("2026-11-23T10:00:00Z");
    doc.put(
        &format!("Communication/{}", msg["id"].as_str().unwrap()),
        &msg,
    )
    .await
    .expect(200);
    assert_eq!(count(&gw, &unread).await, 0);
    // a unit note: only the unit sees it
    let note = json!({
        "resourceType": "Communication", "status": "completed",
        "category": [{"coding": [{"system": format!("{CS}communication-category"), "code": "unit-note"}]}],
        "partOf": [{"reference": format!("Task/{}", t[0])}],
        "payload": [{"contentString": "Lit 12 libéré jeudi."}]
    });
    u2.post("Communication", &note).await.expect(403);
    doc.post("Communication", &note).await.expect(403);
    let created = u1.post("Communication", &note).await.expect(201).json();
    let id = created["id"].as_str().unwrap();
    assert_eq!(
        created["meta"]["security"][0]["code"],
        "HealthcareService/u1"
    );
    u1.get(&format!("Communication/{id}")).await.expect(200);
    doc.get(&format!("Communication/{id}")).await.expect(404);
    u2.get(&format!("Communication/{id}/_history/1"))
        .await
        .expect(404);
    let notes = format!(
        "Communication?part-of=Task/{}&category={CS}communication-category|unit-note",
        t[0]
    );
    assert_eq!(
        u1.get(&notes).await.json()["entry"]
            .as_array()
            .map_or(0, Vec::len),
        1
    );
    assert_eq!(
        doc.get(&notes).await.json()["entry"]
            .as_array()
            .map_or(0, Vec::len),
        0
    );
    // nor through an include, nor in a history
    let with = doc
        .get(&format!(
            "Task?_id={}&_revinclude=Communication:part-of",
            t[0]
        ))
        .await
        .json();
    let ids: Vec<&str> = with["entry"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|e| e["resource"]["id"].as_str())
        .collect();
    assert!(!ids.contains(&id), "{ids:?}");
    assert_eq!(ids.len(), 2, "the Task and the message: {ids:?}");
    let h = doc.get(&format!("Communication/{id}/_history")).await;
    assert!(
        h.status == 404 || h.json()["entry"].as_array().map_or(0, Vec::len) == 0,
        "{}",
        h.text
    );
    // the label cannot be removed by an update
    let mut changed = created.clone();
    changed.as_object_mut().unwrap().remove("meta");
    changed["payload"][0]["contentString"] = json!("Lit 12 libéré vendredi.");
    let after = u1
        .put(&format!("Communication/{id}"), &changed)
        .await
        .expect(200)
        .json();
    assert_eq!(after["meta"]["security"][0]["code"], "HealthcareService/u1");
});

on_both_engines!(
    parts_are_written_and_validated_by_the_right_profiles,
    |gw| {
        world(&gw).await;
        let (doc, admin) = (gw.acting(DOC), gw.acting(ADMIN));
        // the administrative manager writes and validates the administrative part…
        admin
            .post(
                "QuestionnaireResponse",
                &part("volet-administratif-social", "completed"),
            )
            .await
            .expect(201);
        // …does not touch the medical part, and nobody validates an incomplete one
        let a = admin
            .post(
                "QuestionnaireResponse",
                &part("volet-medical", "in-progress"),
            )
            .await
            .expect(403);
        assert!(
            a.diagnostics().contains("medical-write"),
            "{}",
            a.diagnostics()
        );
        gw.acting(U1)
            .post(
                "QuestionnaireResponse",
                &part("volet-soins-projet", "in-progress"),
            )
            .await
            .expect(403);
        gw.anonymous()
            .post(
                "QuestionnaireResponse",
                &part("volet-medical", "in-progress"),
            )
            .await
            .expect(401);
        let mut draft = part("volet-medical", "in-progress");
        draft["item"]
            .as_array_mut()
            .unwrap()
            .retain(|i| i["linkId"] != "care-goal");
        let saved = doc
            .post("QuestionnaireResponse", &draft)
            .await
            .expect(201)
            .json();
        let mut done = saved.clone();
        done["status"] = json!("completed");
        let a = doc
            .put(
                &format!("QuestionnaireResponse/{}", saved["id"].as_str().unwrap()),
                &done,
            )
            .await
            .expect(422);
        assert!(a.diagnostics().contains("care-goal"), "{}", a.diagnostics());
        // $validate says the same without storing
        let v = doc
            .post("QuestionnaireResponse/$validate", &done)
            .await
            .expect(200)
            .json();
        assert!(
            v["issue"][0]["diagnostics"]
                .as_str()
                .unwrap()
                .contains("care-goal"),
            "{v}"
        );
        // the forms themselves are published, read-only
        let q = gw
            .get("Questionnaire?url=https://passerelle.dev/fhir/Questionnaire/volet-medical")
            .await
            .expect(200)
            .json();
        assert_eq!(q["entry"][0]["resource"]["id"], "volet-medical");
        gw.get("CodeSystem/business-status").await.expect(200);
        gw.get("OperationDefinition/agree-in-principle")
            .await
            .expect(200);
        gw.get("StructureDefinition/AdmissionTask")
            .await
            .expect(200);
    }
);

on_both_engines!(
    a_new_dossier_from_an_earlier_one_takes_its_administrative_part,
    |gw| {
        let sr = world(&gw).await;
        let doc = gw.acting(DOC);
        let had = params(
            json!([{"name": "module", "valueCoding": {"system": format!("{CS}orientation-module"), "code": "had"}}]),
        );
        let new = doc
            .post(&format!("ServiceRequest/{sr}/$copy"), &had)
            .await
            .expect(201)
            .json();
        assert_eq!(new["status"], "draft");
        assert_eq!(
            new["identifier"][0]["value"], "s0000002",
            "the module's next number"
        );
        assert_eq!(
            new["replaces"][0]["reference"],
            format!("ServiceRequest/{sr}")
        );
        assert_eq!(new["category"][0]["coding"][0]["code"], "had");
        let parts = new["supportingInfo"].as_array().unwrap();
        assert_eq!(parts.len(), 1, "the administrative part only");
        let qr = doc
            .get(parts[0]["reference"].as_str().unwrap())
            .await
            .expect(200)
            .json();
        assert_eq!(
            qr["questionnaire"],
            "https://passerelle.dev/fhir/Questionnaire/volet-administratif-social"
        );
        assert_eq!(qr["status"], "in-progress", "to be validated again");
        assert_eq!(qr["item"][0]["answer"][0]["valueCoding"]["code"], "had");
        // the earlier dossier is untouched; a unit cannot copy it; a wrong module is refused
        let old = doc.get(&format!("ServiceRequest/{sr}")).await.json();
        assert_eq!(old["meta"]["versionId"], "1");
        gw.acting(U1)
            .post(&format!("ServiceRequest/{sr}/$copy"), &none())
            .await
            .expect(403);
        let bad = params(
            json!([{"name": "module", "valueCoding": {"system": format!("{CS}orientation-module"), "code": "spa"}}]),
        );
        doc.post(&format!("ServiceRequest/{sr}/$copy"), &bad)
            .await
            .expect(422);
    }
);

on_both_engines!(withdraw_admit_and_patch_moves, |gw| {
    let sr = world(&gw).await;
    let t = send(&gw, &sr).await;
    let (u1, u2, doc) = (gw.acting(U1), gw.acting(U2), gw.acting(DOC));
    // admitting a request nobody proposed or confirmed; a prescriber admitting
    let date = params(json!([{"name": "date", "valueDateTime": "2026-12-03T10:00:00+01:00"}]));
    let a = op(&u1, &t[0], "admit", &date).await.expect(422);
    assert!(a.diagnostics().contains("move-from"), "{}", a.diagnostics());
    op(&u1, &t[0], "propose-admission", &date).await.expect(200);
    op(&doc, &t[0], "admit", &date).await.expect(403);
    // the unit withdraws its proposal: a reason is required, from either code system
    let a = op(&u1, &t[0], "withdraw", &none()).await.expect(422);
    assert!(a.diagnostics().contains("reason"), "{}", a.diagnostics());
    op(&u2, &t[0], "withdraw", &reason("refusal-reason", "no-bed"))
        .await
        .expect(403);
    let w = op(&u1, &t[0], "withdraw", &reason("refusal-reason", "no-bed"))
        .await
        .expect(200)
        .json();
    assert_eq!(
        (
            w["status"].as_str(),
            w["businessStatus"]["coding"][0]["code"].as_str()
        ),
        (Some("cancelled"), Some("withdrawn"))
    );
    op(&u1, &t[0], "withdraw", &reason("refusal-reason", "no-bed"))
        .await
        .expect(409);
    let d = doc.get(&format!("ServiceRequest/{sr}")).await.json();
    assert_eq!(
        d["status"], "active",
        "a withdrawal leaves the dossier open"
    );
    // a move as a JSON Patch
    let patch = json!([
        {"op": "replace", "path": "/status", "value": "received"},
        {"op": "replace", "path": "/businessStatus", "value": {"coding": [{"system": format!("{CS}business-status"), "code": "read"}]}}
    ]);
    let r = gw
        .send(
            gw.anon
                .patch(gw.url(&format!("Task/{}", t[1])))
                .header("content-type", "application/json-patch+json")
                .header("x-passerelle-role", format!("PractitionerRole/{U2}"))
                .header("if-match", "W/\"1\"")
                .body(patch.to_string()),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(state(&gw, &t[1]).await.1, "read");
    assert_eq!(provenances(&gw, &t[1]).await, 2);
    // a patch that is no legal move
    let bad =
        json!([{"op": "replace", "path": "/owner/reference", "value": "HealthcareService/u3"}]);
    let r = gw
        .send(
            gw.anon
                .patch(gw.url(&format!("Task/{}", t[1])))
                .header("content-type", "application/json-patch+json")
                .header("x-passerelle-role", format!("PractitionerRole/{U2}"))
                .body(bad.to_string()),
        )
        .await;
    assert_eq!(r.status, 422, "{}", r.text);
});

on_both_engines!(every_access_to_patient_data_is_audited, |gw| {
    let sr = world(&gw).await;
    let t = send(&gw, &sr).await;
    let (doc, u1, referent) = (gw.acting(DOC), gw.acting(U1), gw.acting(REFERENT));
    doc.get(&format!("Task/{}", t[0])).await.expect(200);
    op(&u1, &t[1], "mark-read", &none()).await.expect(403);
    doc.get("Task?patient=Patient/pat&_format=csv")
        .await
        .expect(200);
    gw.get("Organization/org-chu").await.expect(200);
    gw.app.audit.flush().await;
    // the read: who, from where, what, which patient, outcome
    let b = referent
        .get(&format!("AuditEvent?entity=Task/{}&subtype=read", t[0]))
        .await
        .expect(200)
        .json();
    let e = &b["entry"].as_array().expect("an audit event")[0]["resource"];
    assert_eq!(e["action"], "R");
    assert_eq!(e["outcome"], "0");
    assert_eq!(
        e["agent"][0]["who"]["reference"],
        format!("PractitionerRole/{DOC}")
    );
    assert_eq!(e["agent"][0]["network"]["address"], "127.0.0.1");
    let whats: Vec<&str> = e["entity"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|x| x["what"]["reference"].as_str())
        .collect();
    assert!(whats.contains(&"Patient/pat"), "{whats:?}");
    // the refusal is audited too, with its outcome
    let b = referent
        .get(&format!(
            "AuditEvent?agent=PractitionerRole/{U1}&subtype=operation"
        ))
        .await
        .expect(200)
        .json();
    let refused = &b["entry"][0]["resource"];
    assert_eq!(refused["outcome"], "4", "{b}");
    assert!(refused["outcomeDesc"].as_str().unwrap().starts_with("403"));
    // the export: a search, with its query and the patient it was about
    let b = referent
        .get("AuditEvent?subtype=search-type&entity=Patient/pat")
        .await
        .expect(200)
        .json();
    let export = b["entry"]
        .as_array()
        .unwrap()
        .iter()
        .find(|x| x["resource"]["purposeOfEvent"].is_array());
    assert!(export.is_some(), "{b}");
    // the directory is not patient data: not audited
    let none_for_orgs = referent
        .get("AuditEvent?entity=Organization/org-chu")
        .await
        .json();
    assert_eq!(none_for_orgs["entry"].as_array().map_or(0, Vec::len), 0);
    // the trail is read-only, and read by référents only
    doc.get("AuditEvent").await.expect(403);
    gw.anonymous().get("AuditEvent").await.expect(401);
    let any = json!({"resourceType": "AuditEvent"});
    referent.post("AuditEvent", &any).await.expect(405);
    let id = e["id"].as_str().unwrap();
    referent
        .delete(&format!("AuditEvent/{id}"))
        .await
        .expect(405);
    // an event is read back by its id, as it was found
    let again = referent
        .get(&format!("AuditEvent/{id}"))
        .await
        .expect(200)
        .json();
    assert_eq!(&again, e);
    assert_eq!(again["meta"]["versionId"], "1");
    referent.get("AuditEvent/not-an-event").await.expect(404);
    referent.get("AuditEvent/999999999").await.expect(404);
    // the searches of the trail: date prefixes, codings, patient, totals, paging, sort
    let ids = |b: &Value| -> Vec<String> {
        b["entry"]
            .as_array()
            .into_iter()
            .flatten()
            .filter(|x| x["search"]["mode"] == "match")
            .map(|x| x["resource"]["id"].as_str().unwrap().to_owned())
            .collect()
    };
    let today = &e["recorded"].as_str().unwrap()[..10];
    let all = referent
        .get("AuditEvent?_total=accurate&_count=1000")
        .await
        .expect(200)
        .json();
    let n = all["total"].as_i64().unwrap();
    assert!(n >= 4, "{all}");
    assert_eq!(ids(&all).len() as i64, n);
    let checks = [
        (format!("AuditEvent?date=ge{today}&_count=1000"), n),
        ("AuditEvent?date=lt2000-01-01".into(), 0),
        (
            "AuditEvent?type=http://terminology.hl7.org/CodeSystem/audit-event-type|rest&_count=1000"
                .into(),
            n,
        ),
        ("AuditEvent?type=http://other|rest".into(), 0),
        ("AuditEvent?action=R&outcome=0&subtype=read".into(), 1),
        ("AuditEvent?outcome:not=0&outcome:not=8".into(), 1),
        ("AuditEvent?_tag=anything".into(), 0),
    ];
    for (q, want) in checks {
        let b = referent.get(&q).await.expect(200).json();
        assert_eq!(ids(&b).len() as i64, want, "{q}: {b}");
    }
    let about_pat = referent
        .get("AuditEvent?patient=Patient/pat&_count=1000")
        .await
        .expect(200)
        .json();
    assert!(ids(&about_pat).len() >= 3, "{about_pat}");
    let page = referent
        .get("AuditEvent?_count=2&_sort=-date")
        .await
        .expect(200)
        .json();
    assert_eq!(ids(&page).len(), 2);
    assert!(
        page["link"]
            .as_array()
            .unwrap()
            .iter()
            .any(|l| l["relation"] == "next"),
        "{page}"
    );
    let newest = ids(&page)[0].parse::<i64>().unwrap();
    assert!(
        ids(&all)
            .iter()
            .all(|i| i.parse::<i64>().unwrap() <= newest)
    );
    // what the trail does not keep is refused, not silently widened
    referent.get("AuditEvent?agent.name=x").await.expect(400);
});

on_both_engines!(each_place_sees_its_own_requests_only, |gw| {
    let sr = world(&gw).await;
    let t = send(&gw, &sr).await;
    // another prescribing structure, with its own prescriber
    gw.put(
        "Organization/org-other",
        &json!({"resourceType": "Organization", "id": "org-other", "name": "CH Ailleurs"}),
    )
    .await
    .expect(201);
    gw.put(
        "PractitionerRole/role-other",
        &role("role-other", "prescripteur-medical", "org-other", None),
    )
    .await
    .expect(201);
    let (doc, u1, other) = (gw.acting(DOC), gw.acting(U1), gw.acting("role-other"));
    // the unit sees its request and the dossier behind it, not the other units' requests
    u1.get(&format!("Task/{}", t[0])).await.expect(200);
    u1.get(&format!("Task/{}", t[1])).await.expect(404);
    u1.get(&format!("ServiceRequest/{sr}")).await.expect(200);
    assert_eq!(
        count(&gw, "Task?_summary=count").await,
        3,
        "the prescriber sees its three"
    );
    let mine = u1.get("Task").await.json();
    assert_eq!(mine["total"], 1, "{mine}");
    // another structure sees nothing of it, directly, by search or by include
    other.get(&format!("Task/{}", t[0])).await.expect(404);
    other.get(&format!("ServiceRequest/{sr}")).await.expect(404);
    assert_eq!(other.get("Task").await.json()["total"], 0);
    assert_eq!(other.get("ServiceRequest").await.json()["total"], 0);
    let inc = u1
        .get(&format!("ServiceRequest?_id={sr}&_revinclude=Task:focus"))
        .await
        .json();
    let tasks: Vec<&Value> = inc["entry"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["resource"]["resourceType"] == "Task")
        .collect();
    assert_eq!(tasks.len(), 1, "the unit's own request only: {inc}");
    // messages go where their request goes
    let ask = params(json!([{"name": "message", "valueString": "Poids du patient ?"}]));
    op(&u1, &t[0], "request-info", &ask).await.expect(200);
    let q = format!("Communication?part-of=Task/{}", t[0]);
    assert_eq!(doc.get(&q).await.json()["total"], 1);
    assert_eq!(u1.get(&q).await.json()["total"], 1);
    assert_eq!(gw.acting(U2).get(&q).await.json()["total"], 0);
    assert_eq!(other.get(&q).await.json()["total"], 0);
    // the patient and the parts go where the dossier goes
    u1.get("Patient/pat").await.expect(200);
    other.get("Patient/pat").await.expect(404);
    assert_eq!(u1.get("QuestionnaireResponse").await.json()["total"], 3);
    assert_eq!(other.get("QuestionnaireResponse").await.json()["total"], 0);
    // a part only for the profiles that may read it: no medical part for the administrative manager
    let seen = gw.acting(ADMIN).get("QuestionnaireResponse").await.json();
    let forms: Vec<&str> = seen["entry"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|e| e["resource"]["questionnaire"].as_str())
        .collect();
    assert_eq!(forms.len(), 2, "{forms:?}");
    assert!(
        !forms.iter().any(|f| f.ends_with("volet-medical")),
        "{forms:?}"
    );
    let medical = doc
        .get("QuestionnaireResponse?dossier-part=medical")
        .await
        .json();
    let med_id = medical["entry"][0]["resource"]["id"]
        .as_str()
        .unwrap()
        .to_owned();
    gw.acting(ADMIN)
        .get(&format!("QuestionnaireResponse/{med_id}"))
        .await
        .expect(404);
    let by_id = gw
        .acting(ADMIN)
        .get(&format!("QuestionnaireResponse?_id={med_id}"))
        .await
        .json();
    assert_eq!(by_id["total"], 0, "{by_id}");
    // …nor through an include: the patient's parts come without the medical one
    let with_parts = gw
        .acting(ADMIN)
        .get("Patient?_id=pat&_revinclude=QuestionnaireResponse:subject")
        .await
        .expect(200)
        .json();
    let included: Vec<&str> = with_parts["entry"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["search"]["mode"] == "include")
        .filter_map(|e| e["resource"]["id"].as_str())
        .collect();
    assert_eq!(included.len(), 2, "{with_parts}");
    assert!(!included.contains(&med_id.as_str()), "{with_parts}");
    // and the refused read is in the audit trail, as a failure
    gw.app.audit.flush().await;
    let refused = gw
        .acting(REFERENT)
        .get(&format!(
            "AuditEvent?agent=PractitionerRole/{ADMIN}&entity=QuestionnaireResponse/{med_id}&outcome=4"
        ))
        .await
        .expect(200)
        .json();
    assert_eq!(refused["total"], 1, "{refused}");
    // the labels are the gateway's: a PUT cannot widen them
    let mut d = doc.get(&format!("ServiceRequest/{sr}")).await.json();
    d["meta"]["security"] = json!([{"system": "https://passerelle.dev/fhir/CodeSystem/visibility", "code": "Organization/org-other"}]);
    d["note"] = json!([{"text": "à jour"}]);
    doc.put(&format!("ServiceRequest/{sr}"), &d)
        .await
        .expect(200);
    other.get(&format!("ServiceRequest/{sr}")).await.expect(404);
    u1.get(&format!("ServiceRequest/{sr}")).await.expect(200);
});

on_both_engines!(referents_grant_in_their_structure_only, |gw| {
    world(&gw).await;
    let referent = gw.acting(REFERENT);
    // a referent needs a structure: role-ref sits at org-chu
    let grant = |id: &str, profile: &str, org: &str, who: &str| {
        let mut r = role(id, profile, org, None);
        r["practitioner"] = json!({"reference": format!("Practitioner/{who}")});
        r
    };
    referent
        .put(
            "PractitionerRole/new-nurse",
            &grant("new-nurse", "equipe-soignante", "org-chu", "p-nurse"),
        )
        .await
        .expect(201);
    let a = referent
        .put(
            "PractitionerRole/far",
            &grant("far", "equipe-soignante", "org-smr", "p-far"),
        )
        .await
        .expect(403);
    assert!(
        a.diagnostics().contains("that structure only"),
        "{}",
        a.diagnostics()
    );
    let a = referent
        .put(
            "PractitionerRole/self",
            &grant(
                "self",
                "prescripteur-medical",
                "org-chu",
                &format!("p-{REFERENT}"),
            ),
        )
        .await
        .expect(403);
    assert!(
        a.diagnostics().contains("themselves"),
        "{}",
        a.diagnostics()
    );
    gw.acting(DOC)
        .put(
            "PractitionerRole/x",
            &grant("x", "equipe-soignante", "org-chu", "p-x"),
        )
        .await
        .expect(403);
    gw.get("PractitionerRole/far").await.expect(404);
    // the structures short of référents: org-chu has one, org-smr none
    let report = referent.get("$referents").await.expect(200).json();
    let short: Vec<&str> = report["parameter"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|p| p["part"][0]["valueReference"]["reference"].as_str())
        .collect();
    assert!(
        short.contains(&"Organization/org-chu") && short.contains(&"Organization/org-smr"),
        "{short:?}"
    );
    gw.put(
        "PractitionerRole/ref2",
        &grant("ref2", "referent", "org-chu", "p-ref2"),
    )
    .await
    .expect(201);
    let report = referent.get("$referents").await.json();
    assert!(
        !report.to_string().contains("Organization/org-chu"),
        "{report}"
    );
    gw.acting(DOC).get("$referents").await.expect(403);
});

/// The account history (Provenance) of `Practitioner/<pid>`: its activity codes, oldest first.
async fn account_history(gw: &Gateway, pid: &str) -> Vec<String> {
    let b = gw
        .acting(REFERENT)
        .get(&format!(
            "Provenance?target=Practitioner/{pid}&_sort=_lastUpdated&_count=100"
        ))
        .await
        .expect(200)
        .json();
    b["entry"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|e| {
            e["resource"]["activity"]["coding"][0]["code"]
                .as_str()
                .unwrap()
                .to_owned()
        })
        .collect()
}

async fn account(gw: &Gateway, pid: &str) -> Value {
    gw.get(&format!("Practitioner/{pid}"))
        .await
        .expect(200)
        .json()
}

fn deactivated_by_gateway(p: &Value) -> bool {
    p["active"] == false
        && p["meta"]["tag"]
            .as_array()
            .into_iter()
            .flatten()
            .any(|t| t["code"] == "deactivated")
}

#[tokio::test]
async fn accounts_follow_their_habilitations() {
    for engine in [common::Engine::Sqlite, common::Engine::Postgres] {
        let Some((gw, clock)) = clocked(engine).await else {
            continue;
        };
        world(&gw).await;
        let referent = gw.acting(REFERENT);
        let pid = "p-nurse";
        gw.put(
            &format!("Practitioner/{pid}"),
            &json!({"resourceType": "Practitioner", "id": pid, "active": true,
                    "name": [{"family": "Infirmière"}]}),
        )
        .await
        .expect(201);
        // a habilitation until the 28th (the clock starts on 2026-11-18), granted by the référent
        let mut nurse = role("role-nurse", "equipe-soignante", "org-chu", None);
        nurse["practitioner"] = json!({"reference": format!("Practitioner/{pid}")});
        nurse["period"] = json!({"start": "2026-11-01", "end": "2026-11-28"});
        referent
            .put("PractitionerRole/role-nurse", &nurse)
            .await
            .expect(201);
        assert_eq!(account(&gw, pid).await["active"], true);
        // the same PUT again changes nothing and adds nothing to the history
        referent
            .put("PractitionerRole/role-nurse", &nurse)
            .await
            .expect(200);
        assert_eq!(account_history(&gw, pid).await, ["habilitation-granted"]);
        // its period ends: the timer deactivates the account, once
        clock.advance(20 * DAY);
        assert_eq!(tick(&gw).await.accounts, 1, "{engine:?}");
        assert_eq!(tick(&gw).await.accounts, 0, "once");
        assert!(deactivated_by_gateway(&account(&gw, pid).await));
        // a new habilitation reactivates it ("réactivé par ajout d'une habilitation")
        nurse["period"] = json!({"start": "2026-11-01", "end": "2027-12-31"});
        referent
            .put("PractitionerRole/role-nurse", &nurse)
            .await
            .expect(200);
        let p = account(&gw, pid).await;
        assert_eq!(p["active"], true);
        assert!(!deactivated_by_gateway(&p));
        // ending it (deleting it) deactivates at once
        gw.acting(DOC)
            .delete("PractitionerRole/role-nurse")
            .await
            .expect(403);
        referent
            .delete("PractitionerRole/role-nurse")
            .await
            .expect(200);
        assert!(deactivated_by_gateway(&account(&gw, pid).await));
        assert_eq!(
            account_history(&gw, pid).await,
            [
                "habilitation-granted",
                "deactivated",
                "habilitation-changed",
                "reactivated",
                "habilitation-ended",
                "deactivated"
            ],
            "{engine:?}"
        );
        // an account a référent blocked stays blocked when a habilitation is granted
        let mut p = account(&gw, pid).await;
        p.as_object_mut().unwrap().remove("meta");
        referent
            .put(&format!("Practitioner/{pid}"), &p)
            .await
            .expect(200);
        let mut again = role("role-nurse-2", "equipe-soignante", "org-chu", None);
        again["practitioner"] = json!({"reference": format!("Practitioner/{pid}")});
        referent
            .put("PractitionerRole/role-nurse-2", &again)
            .await
            .expect(201);
        let p = account(&gw, pid).await;
        assert_eq!(p["active"], false, "blocked by a référent: not reactivated");
    }
}

on_both_engines!(a_habilitation_is_lent_for_a_while, |gw| {
    let sr = world(&gw).await;
    let t = send(&gw, &sr).await;
    let referent = gw.acting(REFERENT);
    for pid in ["p-locum", "p-role-u1"] {
        gw.put(
            &format!("Practitioner/{pid}"),
            &json!({"resourceType": "Practitioner", "id": pid, "active": true}),
        )
        .await
        .expect(201);
    }
    // U1's holder lends it to a locum until a date within its own period
    let mut u1 = role(U1, "responsable-admission", "org-smr", Some("u1"));
    u1["period"] = json!({"start": "2026-01-01", "end": "2030-12-31"});
    gw.put(&format!("PractitionerRole/{U1}"), &u1)
        .await
        .expect(200);
    let lend = |end: &str, to: &str| {
        params(json!([
            {"name": "practitioner", "valueReference": {"reference": format!("Practitioner/{to}")}},
            {"name": "end", "valueDateTime": end}
        ]))
    };
    let path = format!("PractitionerRole/{U1}/$delegate");
    let holder = gw.acting(U1);
    holder
        .post(&path, &lend("2031-06-30", "p-locum"))
        .await
        .expect(422);
    gw.acting(U2)
        .post(&path, &lend("2029-01-01", "p-locum"))
        .await
        .expect(403);
    holder
        .post(&path, &lend("2029-01-01", "p-role-u1"))
        .await
        .expect(403);
    referent
        .post(
            &format!("PractitionerRole/{REFERENT}/$delegate"),
            &lend("2029-01-01", "p-locum"),
        )
        .await
        .expect(403);
    let lent = holder
        .post(&path, &lend("2029-01-01", "p-locum"))
        .await
        .expect(201)
        .json();
    let lent_id = lent["id"].as_str().unwrap().to_owned();
    assert_eq!(lent["practitioner"]["reference"], "Practitioner/p-locum");
    assert_eq!(
        lent["healthcareService"][0]["reference"],
        "HealthcareService/u1"
    );
    assert_eq!(
        lent["extension"][0]["valueReference"]["reference"],
        format!("PractitionerRole/{U1}")
    );
    assert_eq!(account_history(&gw, "p-locum").await, ["delegated"]);
    // the locum answers u1's request, on behalf of the holder
    let locum = gw.acting(&lent_id);
    op(&locum, &t[0], "mark-read", &none()).await.expect(200);
    let b = gw
        .acting(DOC)
        .get(&format!("Provenance?target=Task/{}&_count=100", t[0]))
        .await
        .expect(200)
        .json();
    let read = b["entry"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| &e["resource"])
        .find(|p| p["agent"][0]["who"]["reference"] == format!("PractitionerRole/{lent_id}"))
        .expect("the locum's move");
    assert_eq!(
        read["agent"][0]["onBehalfOf"]["reference"],
        format!("PractitionerRole/{U1}")
    );
    // a delegation is not lent again, nor written by hand
    locum
        .post(
            &format!("PractitionerRole/{lent_id}/$delegate"),
            &lend("2028-01-01", "p-role-u1"),
        )
        .await
        .expect(422);
    let mut forged = role(
        "role-forged",
        "responsable-admission",
        "org-smr",
        Some("u1"),
    );
    forged["extension"] = lent["extension"].clone();
    gw.put("PractitionerRole/role-forged", &forged)
        .await
        .expect(422);
    // the delegation ends with the habilitation it came from
    u1["active"] = json!(false);
    gw.put(&format!("PractitionerRole/{U1}"), &u1)
        .await
        .expect(200);
    locum.get(&format!("Task/{}", t[0])).await.expect(401);
});

on_both_engines!(deletions_follow_the_write_rules, |gw| {
    let sr = world(&gw).await;
    let draft_parts = json!([]);
    let doc = gw.acting(DOC);
    let draft = doc
        .post("ServiceRequest", &dossier(draft_parts))
        .await
        .expect(201)
        .json();
    let t = send(&gw, &sr).await;
    // requests and sent dossiers are cancelled, never deleted
    doc.delete(&format!("Task/{}", t[0])).await.expect(422);
    doc.delete(&format!("ServiceRequest/{sr}"))
        .await
        .expect(422);
    // what a caller cannot see, it cannot delete
    gw.acting(U1)
        .delete(&format!("Task/{}", t[1]))
        .await
        .expect(404);
    // a draft dossier: by its prescribing side only
    let draft_id = draft["id"].as_str().unwrap();
    gw.acting(U1)
        .delete(&format!("ServiceRequest/{draft_id}"))
        .await
        .expect(404);
    doc.delete(&format!("ServiceRequest/{draft_id}"))
        .await
        .expect(200);
    doc.get(&format!("ServiceRequest/{draft_id}"))
        .await
        .expect(410);
    // a habilitation: by a référent of its structure only
    gw.acting(U2)
        .delete(&format!("PractitionerRole/{U3}"))
        .await
        .expect(403);
    gw.acting(DOC)
        .get(&format!("Task/{}", t[0]))
        .await
        .expect(200);
});

/// A system client registered for one structure (`[[auth.clients]] organization`).
fn bound_client(id: &str, org: &str) -> passerelle::config::ClientConfig {
    let mut c = common::test_client_config();
    c.client_id = id.into();
    c.organization = Some(format!("Organization/{org}"));
    c
}

#[tokio::test]
async fn a_client_bound_to_a_structure_stays_in_it() {
    for engine in [common::Engine::Sqlite, common::Engine::Postgres] {
        let opts = common::Options {
            clients: vec![
                bound_client("his-smr", "org-smr"),
                bound_client("his-other", "org-other"),
            ],
            ..Default::default()
        };
        let Some(gw) = common::spawn_with(engine, opts).await else {
            continue;
        };
        let sr = world(&gw).await;
        let t = send(&gw, &sr).await;
        let as_client = |id: &str| {
            let token = gw
                .app
                .auth
                .gateway
                .issue_for_client(id, "system/*.cruds")
                .expect("token")
                .access_token;
            common::bearer_client(&token)
        };
        let (smr, other) = (as_client("his-smr"), as_client("his-other"));
        let get = |c: &reqwest::Client, path: &str| gw.send(c.get(gw.url(path)));
        // the receiving establishment's system sees its units' requests, the dossier and
        // the patient; another structure's sees none of them
        for path in [
            format!("Task/{}", t[0]),
            format!("ServiceRequest/{sr}"),
            "Patient/pat".to_owned(),
        ] {
            get(&smr, &path).await.expect(200);
            get(&other, &path).await.expect(404);
        }
        let found = |b: Value| b["entry"].as_array().map_or(0, Vec::len);
        assert_eq!(found(get(&smr, "Task").await.expect(200).json()), 3);
        assert_eq!(found(get(&other, "Task").await.expect(200).json()), 0);
        // it makes the system's moves on its own requests only
        let date = params(json!([{"name": "date", "valueDateTime": "2027-01-10"}]));
        op(&gw.acting(U1), &t[0], "propose-admission", &date)
            .await
            .expect(200);
        let admit = |c: &reqwest::Client| {
            gw.send(
                c.post(gw.url(&format!("Task/{}/$admit", t[0])))
                    .header("content-type", common::FHIR_JSON)
                    .body(none().to_string()),
            )
        };
        assert_eq!(admit(&other).await.status, 403);
        admit(&smr).await.expect(200);
        assert_eq!(state(&gw, &t[0]).await.1, "admitted");
        let mark_read = gw
            .send(
                smr.post(gw.url(&format!("Task/{}/$mark-read", t[1])))
                    .header("content-type", common::FHIR_JSON)
                    .body(none().to_string()),
            )
            .await;
        assert_eq!(mark_read.status, 403, "{}", mark_read.text);
        // it sets up accounts in its structure only, and does not read the audit trail
        let put = |c: &reqwest::Client, body: Value| {
            gw.send(
                c.put(gw.url(&format!(
                    "PractitionerRole/{}",
                    body["id"].as_str().unwrap()
                )))
                .header("content-type", common::FHIR_JSON)
                .body(body.to_string()),
            )
        };
        put(
            &smr,
            role(
                "role-smr-new",
                "responsable-admission",
                "org-smr",
                Some("u1"),
            ),
        )
        .await
        .expect(201);
        put(
            &smr,
            role("role-chu-new", "prescripteur-medical", "org-chu", None),
        )
        .await
        .expect(403);
        get(&smr, "AuditEvent").await.expect(403);
    }
}
