//! Batch and transaction Bundles on both engines: `urn:uuid:` references, conditional
//! references and creates, processing order, atomicity.

mod common;

use serde_json::{Value, json};

/// A dossier as an EHR sends it: the patient (created once), the request, three unit
/// requests and a questionnaire response, all linked by `urn:uuid:`.
fn dossier(ins: &str) -> Value {
    let task = |n: u32| {
        json!({"fullUrl": format!("urn:uuid:00000000-0000-4000-8000-00000000001{n}"),
            "resource": {"resourceType": "Task", "status": "requested", "intent": "order",
                "focus": {"reference": "urn:uuid:00000000-0000-4000-8000-000000000002"},
                "for": {"reference": "urn:uuid:00000000-0000-4000-8000-000000000001"},
                "owner": {"display": format!("unit {n}")}},
            "request": {"method": "POST", "url": "Task"}})
    };
    json!({
        "resourceType": "Bundle", "type": "transaction",
        "entry": [
            {"fullUrl": "urn:uuid:00000000-0000-4000-8000-000000000001",
             "resource": {"resourceType": "Patient", "identifier": [{"system": "urn:oid:1.2.250.1.213.1.4.10", "value": ins}],
                          "name": [{"family": "Durand"}]},
             "request": {"method": "POST", "url": "Patient", "ifNoneExist": format!("identifier=urn:oid:1.2.250.1.213.1.4.10|{ins}")}},
            {"fullUrl": "urn:uuid:00000000-0000-4000-8000-000000000002",
             "resource": {"resourceType": "ServiceRequest", "status": "active", "intent": "order",
                          "subject": {"reference": "urn:uuid:00000000-0000-4000-8000-000000000001"}},
             "request": {"method": "POST", "url": "ServiceRequest"}},
            task(1), task(2), task(3),
            {"fullUrl": "urn:uuid:00000000-0000-4000-8000-000000000003",
             "resource": {"resourceType": "QuestionnaireResponse", "status": "completed",
                          "subject": {"reference": "urn:uuid:00000000-0000-4000-8000-000000000001"},
                          "basedOn": [{"reference": "urn:uuid:00000000-0000-4000-8000-000000000002"}]},
             "request": {"method": "POST", "url": "QuestionnaireResponse"}}
        ]
    })
}

fn statuses(b: &Value) -> Vec<String> {
    b["entry"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["response"]["status"].as_str().unwrap().to_owned())
        .collect()
}

on_both_engines!(transaction_links_and_conditional_creates, |gw| {
    let r = gw
        .post("", &dossier("1840399987654"))
        .await
        .expect(200)
        .json();
    assert_eq!(r["type"], "transaction-response");
    assert!(
        statuses(&r).iter().all(|s| s.starts_with("201")),
        "{:?}",
        statuses(&r)
    );
    let patient_loc = r["entry"][0]["response"]["location"].as_str().unwrap();
    let patient_id = patient_loc.split('/').nth(1).unwrap().to_owned();
    let sr_id = r["entry"][1]["response"]["location"]
        .as_str()
        .unwrap()
        .split('/')
        .nth(1)
        .unwrap()
        .to_owned();
    let task = &r["entry"][2]["resource"];
    assert_eq!(
        task["focus"]["reference"],
        format!("ServiceRequest/{sr_id}")
    );
    assert_eq!(task["for"]["reference"], format!("Patient/{patient_id}"));
    // its audit event names the patient the entries touched, once
    gw.app.audit.flush().await;
    let events = gw
        .search_ids(&format!(
            "AuditEvent?patient=Patient/{patient_id}&subtype=transaction"
        ))
        .await;
    assert_eq!(events.len(), 1, "{events:?}");
    // the references are searchable as written
    assert_eq!(
        gw.search_ids(&format!("Task?focus=ServiceRequest/{sr_id}"))
            .await
            .len(),
        3
    );
    assert_eq!(
        gw.search_ids(&format!("QuestionnaireResponse?based-on={sr_id}"))
            .await
            .len(),
        1
    );
    // again: the patient is found, not duplicated, and the new dossier points at it
    let again = gw
        .post("", &dossier("1840399987654"))
        .await
        .expect(200)
        .json();
    assert!(
        statuses(&again)[0].starts_with("200"),
        "{:?}",
        statuses(&again)
    );
    assert_eq!(
        again["entry"][0]["response"]["location"]
            .as_str()
            .unwrap()
            .split('/')
            .nth(1)
            .unwrap(),
        patient_id
    );
    let sr2 = again["entry"][1]["resource"]["subject"]["reference"].clone();
    assert_eq!(sr2, format!("Patient/{patient_id}"));
    assert_eq!(gw.search_ids("Patient").await.len(), 1);
    assert_eq!(gw.search_ids("Task").await.len(), 6);
});

on_both_engines!(transaction_is_all_or_nothing, |gw| {
    let mut bad = dossier("2840399987654");
    bad["entry"][4]["resource"]["status"] = json!("not-a-status");
    let e = gw.post("", &bad).await.expect(400);
    assert!(
        e.diagnostics().contains("Bundle.entry[4].resource.status"),
        "{}",
        e.diagnostics()
    );
    for t in ["Patient", "ServiceRequest", "Task", "QuestionnaireResponse"] {
        assert_eq!(
            gw.get(&format!("{t}?_summary=count")).await.json()["total"],
            0,
            "{t}"
        );
    }
    // a failing precondition in the middle rolls everything back too
    let p = gw
        .create(&json!({"resourceType": "Patient", "id": "x"}))
        .await;
    let pid = p["id"].as_str().unwrap();
    let mut stale = dossier("3840399987654");
    stale["entry"].as_array_mut().unwrap().push(json!({
        "resource": {"resourceType": "Patient", "id": pid, "gender": "female"},
        "request": {"method": "PUT", "url": format!("Patient/{pid}"), "ifMatch": "W/\"9\""}}));
    gw.post("", &stale).await.expect(412);
    assert_eq!(gw.get("Task?_summary=count").await.json()["total"], 0);
    assert_eq!(
        gw.get(&format!("Patient/{pid}")).await.json()["meta"]["versionId"],
        "1"
    );
});

// Concurrent transactions share one SQLite commit (group commit): the rows of the failing
// ones must go, those of the others stay, whatever their order in the batch.
on_both_engines!(concurrent_transactions_fail_alone, |gw| {
    let p = gw
        .create(&json!({"resourceType": "Patient", "id": "x"}))
        .await;
    let pid = p["id"].as_str().unwrap().to_owned();
    let mut handles = Vec::new();
    for i in 0..16u32 {
        let mut b = dossier(&format!("4{:012}", i));
        if i % 2 == 1 {
            b["entry"].as_array_mut().unwrap().push(json!({
                "resource": {"resourceType": "Patient", "id": pid, "gender": "female"},
                "request": {"method": "PUT", "url": format!("Patient/{pid}"), "ifMatch": "W/\"9\""}}));
        }
        let client = gw.client.clone();
        let url = gw.url("");
        handles.push(tokio::spawn(async move {
            client
                .post(url)
                .header("content-type", common::FHIR_JSON)
                .body(b.to_string())
                .send()
                .await
                .unwrap()
                .status()
                .as_u16()
        }));
    }
    let mut codes = Vec::new();
    for h in handles {
        codes.push(h.await.unwrap());
    }
    codes.sort();
    assert_eq!(codes, [[200; 8], [412; 8]].concat(), "{codes:?}");
    assert_eq!(gw.get("Task?_summary=count").await.json()["total"], 24);
    assert_eq!(gw.get("Patient?_summary=count").await.json()["total"], 9);
    for i in 0..16u32 {
        let found = gw
            .search_ids(&format!(
                "Patient?identifier=urn:oid:1.2.250.1.213.1.4.10|4{:012}",
                i
            ))
            .await;
        assert_eq!(found.len(), usize::from(i % 2 == 0), "dossier {i}");
    }
});

on_both_engines!(
    transaction_order_put_delete_get_and_conditional_references,
    |gw| {
        let org = gw
        .create(&json!({"resourceType": "Organization", "identifier": [{"system": "https://finess.esante.gouv.fr", "value": "930110051"}], "name": "Avicenne"}))
        .await;
        let doomed = gw
            .create(&json!({"resourceType": "Patient", "name": [{"family": "Old"}]}))
            .await;
        let tx = json!({
            "resourceType": "Bundle", "type": "transaction",
            "entry": [
                {"request": {"method": "GET", "url": "Organization?identifier=930110051"}},
                {"resource": {"resourceType": "HealthcareService", "id": "smr-1", "name": "SMR",
                              "providedBy": {"reference": "Organization?identifier=https://finess.esante.gouv.fr|930110051"}},
                 "request": {"method": "PUT", "url": "HealthcareService/smr-1"}},
                {"request": {"method": "DELETE", "url": format!("Patient/{}", doomed["id"].as_str().unwrap())}}
            ]
        });
        let r = gw.post("", &tx).await.expect(200).json();
        let s = statuses(&r);
        assert!(
            s[0].starts_with("200") && s[1].starts_with("201") && s[2].starts_with("200"),
            "{s:?}"
        );
        assert_eq!(r["entry"][0]["resource"]["total"], 1);
        let hs = gw.get("HealthcareService/smr-1").await.expect(200).json();
        assert_eq!(
            hs["providedBy"]["reference"],
            format!("Organization/{}", org["id"].as_str().unwrap())
        );
        gw.get(&format!("Patient/{}", doomed["id"].as_str().unwrap()))
            .await
            .expect(410);
        // a conditional reference that matches nothing fails the transaction
        let dangling = json!({"resourceType": "Bundle", "type": "transaction", "entry": [
        {"resource": {"resourceType": "HealthcareService", "providedBy": {"reference": "Organization?identifier=nope"}},
         "request": {"method": "POST", "url": "HealthcareService"}}]});
        let e = gw.post("", &dangling).await.expect(412);
        assert!(e.diagnostics().contains("matches 0"), "{}", e.diagnostics());
    }
);

on_both_engines!(batch_entries_stand_alone, |gw| {
    let batch = json!({"resourceType": "Bundle", "type": "batch", "entry": [
        {"resource": {"resourceType": "Patient", "name": [{"family": "Ok"}]}, "request": {"method": "POST", "url": "Patient"}},
        {"resource": {"resourceType": "Patient", "bogus": true}, "request": {"method": "POST", "url": "Patient"}},
        {"request": {"method": "GET", "url": "Patient/missing"}},
        {"request": {"method": "GET", "url": "Patient?family=ok"}}
    ]});
    let r = gw.post("", &batch).await.expect(200).json();
    assert_eq!(r["type"], "batch-response");
    let s = statuses(&r);
    assert!(
        s[0].starts_with("201")
            && s[1].starts_with("400")
            && s[2].starts_with("404")
            && s[3].starts_with("200"),
        "{s:?}"
    );
    assert_eq!(
        r["entry"][1]["response"]["outcome"]["resourceType"],
        "OperationOutcome"
    );
    assert_eq!(gw.search_ids("Patient").await.len(), 1);
    // only batch and transaction are processed
    gw.post("", &json!({"resourceType": "Bundle", "type": "collection"}))
        .await
        .expect(400);
    gw.post("", &json!({"resourceType": "Patient"}))
        .await
        .expect(400);
});

on_both_engines!(transaction_entries_pass_the_same_checks, |gw| {
    // a habilitation without the right to read the audit trail
    gw.put(
        "Organization/o-bundle",
        &json!({"resourceType": "Organization", "id": "o-bundle", "name": "CH"}),
    )
    .await
    .expect(201);
    gw.put(
        "PractitionerRole/r-bundle",
        &json!({"resourceType": "PractitionerRole", "id": "r-bundle", "active": true,
                "organization": {"reference": "Organization/o-bundle"},
                "code": [{"coding": [{"system": "https://passerelle.dev/fhir/CodeSystem/habilitation-profile",
                                      "code": "prescripteur-medical"}]}]}),
    )
    .await
    .expect(201);
    let doc = gw.acting("r-bundle");
    doc.get("AuditEvent").await.expect(403);
    // the same read inside a transaction refuses the transaction, inside a batch its entry
    let entry = json!({"request": {"method": "GET", "url": "AuditEvent"}});
    let tx = json!({"resourceType": "Bundle", "type": "transaction", "entry": [entry]});
    doc.post("", &tx).await.expect(403);
    let batch = json!({"resourceType": "Bundle", "type": "batch", "entry": [entry]});
    let b = doc.post("", &batch).await.expect(200).json();
    let status = b["entry"][0]["response"]["status"].as_str().unwrap_or("");
    assert!(status.starts_with("403"), "{b}");
});
