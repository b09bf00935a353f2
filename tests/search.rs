//! Search over HTTP on both engines: parameter types, modifiers, prefixes, chains, includes,
//! sorting, paging, summaries, and the handling of unknown parameters.

mod common;

use serde_json::{Value, json};

async fn seed(gw: &common::Gateway) -> (String, String, String, String) {
    let org = gw
        .create(
            &json!({"resourceType": "Organization", "name": "Hôpital Saint-Louis",
            "identifier": [{"system": "https://finess.esante.gouv.fr", "value": "750100208"}]}),
        )
        .await;
    let org_id = org["id"].as_str().unwrap().to_owned();
    let unit = gw
        .create(
            &json!({"resourceType": "HealthcareService", "name": "SMR gériatrique",
            "providedBy": {"reference": format!("Organization/{org_id}")}, "active": true}),
        )
        .await;
    let unit_id = unit["id"].as_str().unwrap().to_owned();
    let p1 = gw
        .create(&json!({"resourceType": "Patient", "name": [{"family": "Lefèvre", "given": ["Hélène"]}],
            "gender": "female", "birthDate": "1941-03-02",
            "identifier": [{"system": "urn:oid:1.2.250.1.213.1.4.10", "value": "241039912345678"}]}))
        .await;
    let p2 = gw
        .create(
            &json!({"resourceType": "Patient", "name": [{"family": "Martin", "given": ["Louis"]}],
            "gender": "male", "birthDate": "1950-07-14"}),
        )
        .await;
    let (p1, p2) = (
        p1["id"].as_str().unwrap().to_owned(),
        p2["id"].as_str().unwrap().to_owned(),
    );
    for (i, (patient, status, day)) in [
        (&p1, "requested", "2026-11-01"),
        (&p1, "accepted", "2026-11-05"),
        (&p2, "requested", "2026-11-10"),
        (&p2, "rejected", "2026-11-20"),
    ]
    .into_iter()
    .enumerate()
    {
        gw.create(&json!({"resourceType": "Task", "status": status, "intent": "order",
            "groupIdentifier": {"system": "https://passerelle.dev/dossier", "value": format!("s{i}")},
            "businessStatus": {"coding": [{"system": "https://passerelle.dev/fhir/CodeSystem/business-status", "code": if status == "requested" {"sent"} else {"other"}}]},
            "for": {"reference": format!("Patient/{patient}")},
            "owner": {"reference": format!("HealthcareService/{unit_id}")},
            "authoredOn": format!("{day}T09:00:00+01:00")}))
            .await;
    }
    (org_id, unit_id, p1, p2)
}

fn count(b: &Value, mode: &str) -> usize {
    b["entry"].as_array().map_or(0, |e| {
        e.iter().filter(|x| x["search"]["mode"] == mode).count()
    })
}

on_both_engines!(strings_tokens_dates, |gw| {
    let (_, _, p1, p2) = seed(&gw).await;
    // string: prefix, accent- and case-insensitive; :exact; :contains
    assert_eq!(gw.search_ids("Patient?name=helene").await, vec![p1.clone()]);
    assert_eq!(gw.search_ids("Patient?family=LEF").await, vec![p1.clone()]);
    assert!(
        gw.search_ids("Patient?family:exact=Lefevre")
            .await
            .is_empty()
    );
    assert_eq!(
        gw.search_ids("Patient?family:exact=Lefèvre").await,
        vec![p1.clone()]
    );
    assert_eq!(
        gw.search_ids("Patient?name:contains=arti").await,
        vec![p2.clone()]
    );
    // token: code, system|code, |code, :not, OR
    assert_eq!(gw.search_ids("Patient?gender=male").await, vec![p2.clone()]);
    assert_eq!(
        gw.search_ids("Patient?identifier=urn:oid:1.2.250.1.213.1.4.10|241039912345678")
            .await,
        vec![p1.clone()]
    );
    assert!(
        gw.search_ids("Patient?identifier=urn:oid:9|241039912345678")
            .await
            .is_empty()
    );
    assert_eq!(
        gw.search_ids("Patient?identifier=241039912345678").await,
        vec![p1.clone()]
    );
    assert_eq!(
        gw.search_ids("Patient?gender:not=male").await,
        vec![p1.clone()]
    );
    assert_eq!(
        gw.search_ids("Task?status=requested,accepted").await.len(),
        3
    );
    assert_eq!(gw.search_ids("Task?business-status=sent").await.len(), 2);
    assert_eq!(
        gw.search_ids(
            "Task?business-status=https://passerelle.dev/fhir/CodeSystem/business-status|sent"
        )
        .await
        .len(),
        2
    );
    assert_eq!(gw.search_ids("Task?group-identifier=s1").await.len(), 1);
    // :missing
    assert_eq!(
        gw.search_ids("Patient?identifier:missing=true").await,
        vec![p2.clone()]
    );
    assert_eq!(
        gw.search_ids("Patient?identifier:missing=false").await,
        vec![p1.clone()]
    );
    // dates: precision ranges and prefixes
    assert_eq!(
        gw.search_ids("Patient?birthdate=1941").await,
        vec![p1.clone()]
    );
    assert_eq!(
        gw.search_ids("Patient?birthdate=1941-03").await,
        vec![p1.clone()]
    );
    assert_eq!(
        gw.search_ids("Patient?birthdate=lt1945-01-01").await,
        vec![p1.clone()]
    );
    assert_eq!(
        gw.search_ids("Patient?birthdate=ge1950-07-14").await,
        vec![p2.clone()]
    );
    assert_eq!(
        gw.search_ids("Patient?birthdate=ne1950-07-14").await,
        vec![p1.clone()]
    );
    assert_eq!(
        gw.search_ids("Task?authored-on=ge2026-11-05&authored-on=lt2026-11-20")
            .await
            .len(),
        2
    );
    assert_eq!(
        gw.search_ids("Task?authored-on=gt2026-11-20").await.len(),
        0
    );
    assert_eq!(gw.search_ids("Task?authored-on=2026-11").await.len(), 4);
    // _id and _lastUpdated
    assert_eq!(
        gw.search_ids(&format!("Patient?_id={p2}")).await,
        vec![p2.clone()]
    );
    assert_eq!(
        gw.search_ids(&format!("Patient?_id={p1},{p2}")).await.len(),
        2
    );
    assert_eq!(
        gw.search_ids("Patient?_lastUpdated=gt2000-01-01")
            .await
            .len(),
        2
    );
    assert!(
        gw.search_ids("Patient?_lastUpdated=lt2000-01-01")
            .await
            .is_empty()
    );
    // bad values are 400, not empty results
    gw.get("Patient?birthdate=1941-13").await.expect(400);
    gw.get("Patient?identifier:missing=maybe").await.expect(400);
    gw.get("Patient?_count=x").await.expect(400);
});

on_both_engines!(references_and_chains, |gw| {
    let (org_id, unit_id, p1, _) = seed(&gw).await;
    let owner = format!("HealthcareService/{unit_id}");
    assert_eq!(gw.search_ids(&format!("Task?owner={owner}")).await.len(), 4);
    assert_eq!(
        gw.search_ids(&format!("Task?owner={unit_id}")).await.len(),
        4
    );
    assert_eq!(
        gw.search_ids(&format!("Task?owner:HealthcareService={unit_id}"))
            .await
            .len(),
        4
    );
    assert_eq!(
        gw.search_ids(&format!("Task?owner={}/{owner}", gw.base))
            .await
            .len(),
        4,
        "absolute URL to this server"
    );
    assert_eq!(
        gw.search_ids(&format!("Task?patient=Patient/{p1}&status=requested"))
            .await
            .len(),
        1
    );
    assert_eq!(gw.search_ids(&format!("Task?subject={p1}")).await.len(), 2);
    // chains, one and two levels
    assert_eq!(
        gw.search_ids("Task?patient.identifier=241039912345678")
            .await
            .len(),
        2
    );
    assert_eq!(gw.search_ids("Task?patient.name=martin").await.len(), 2);
    assert_eq!(
        gw.search_ids("Task?owner:HealthcareService.name=smr")
            .await
            .len(),
        4
    );
    assert_eq!(
        gw.search_ids("Task?owner:HealthcareService.organization.name=hopital")
            .await
            .len(),
        4
    );
    assert_eq!(
        gw.search_ids(&format!("HealthcareService?organization={org_id}"))
            .await,
        vec![unit_id.clone()]
    );
    // reverse chain
    assert_eq!(
        gw.search_ids("Patient?_has:Task:patient:status=rejected")
            .await
            .len(),
        1
    );
});

on_both_engines!(includes_sorting_paging, |gw| {
    let (_, unit_id, p1, _) = seed(&gw).await;
    let b = gw
        .get("Task?status=requested&_include=Task:patient&_include=Task:owner")
        .await
        .expect(200)
        .json();
    assert_eq!(count(&b, "match"), 2);
    assert_eq!(count(&b, "include"), 3, "two patients and the unit");
    let b = gw
        .get(&format!("Patient?_id={p1}&_revinclude=Task:patient"))
        .await
        .expect(200)
        .json();
    assert_eq!(count(&b, "match"), 1);
    assert_eq!(count(&b, "include"), 2);
    let b = gw
        .get(&format!(
            "HealthcareService?_id={unit_id}&_include=HealthcareService:organization"
        ))
        .await
        .json();
    assert_eq!(count(&b, "include"), 1);
    gw.get("Task?_include=Task:nope").await.expect(400);

    // sorting
    let b = gw.get("Task?_sort=-authored-on").await.expect(200).json();
    let dates: Vec<&str> = b["entry"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["resource"]["authoredOn"].as_str().unwrap())
        .collect();
    let mut sorted = dates.clone();
    sorted.sort();
    sorted.reverse();
    assert_eq!(dates, sorted);
    let b = gw.get("Patient?_sort=family").await.json();
    assert_eq!(b["entry"][0]["resource"]["name"][0]["family"], "Lefèvre");

    // paging: follow next links to the end, no duplicates, previous link
    let mut url = "Task?_count=3&_sort=authored-on".to_owned();
    let mut seen = Vec::new();
    let mut pages = 0;
    loop {
        let page = gw.get(&url).await.expect(200).json();
        pages += 1;
        for e in page["entry"].as_array().into_iter().flatten() {
            seen.push(e["resource"]["id"].as_str().unwrap().to_owned());
        }
        let next = page["link"]
            .as_array()
            .unwrap()
            .iter()
            .find(|l| l["relation"] == "next");
        match next {
            Some(l) => url = l["url"].as_str().unwrap().to_owned(),
            None => {
                if pages > 1 {
                    assert!(
                        page["link"]
                            .as_array()
                            .unwrap()
                            .iter()
                            .any(|l| l["relation"] == "previous")
                    );
                }
                break;
            }
        }
    }
    assert_eq!(pages, 2);
    let mut dedup = seen.clone();
    dedup.sort();
    dedup.dedup();
    assert_eq!(dedup.len(), 4);
    assert_eq!(seen.len(), 4);

    // totals and summaries
    let b = gw.get("Task?_count=1&_total=accurate").await.json();
    assert_eq!(b["total"], 4);
    assert_eq!(b["entry"].as_array().unwrap().len(), 1);
    let b = gw.get("Task?_summary=count").await.json();
    assert_eq!(b["total"], 4);
    assert!(b.get("entry").is_none());
    let b = gw.get("Task?_elements=status").await.json();
    let r = &b["entry"][0]["resource"];
    assert!(r.get("status").is_some() && r.get("authoredOn").is_none());
    assert_eq!(r["meta"]["tag"][0]["code"], "SUBSETTED");
    // POST _search with a form body
    let a = gw
        .send(
            gw.client
                .post(gw.url("Task/_search"))
                .header("content-type", "application/x-www-form-urlencoded")
                .body("status=rejected"),
        )
        .await
        .expect(200);
    assert_eq!(a.json()["total"], 1);
});

on_both_engines!(unknown_parameters_are_reported_or_refused, |gw| {
    seed(&gw).await;
    let b = gw.get("Task?statuss=requested").await.expect(200).json();
    assert_eq!(count(&b, "match"), 4, "an unknown parameter is ignored");
    let outcome = b["entry"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["search"]["mode"] == "outcome")
        .unwrap();
    assert!(
        outcome["resource"]["issue"][0]["diagnostics"]
            .as_str()
            .unwrap()
            .contains("statuss")
    );
    assert!(
        !b["link"][0]["url"].as_str().unwrap().contains("statuss"),
        "self link shows what was used"
    );
    let strict = gw
        .send(
            gw.client
                .get(gw.url("Task?statuss=requested"))
                .header("prefer", "handling=strict"),
        )
        .await
        .expect(400);
    assert!(strict.diagnostics().contains("statuss"));
    gw.get("Task?_sort=nope").await.expect(200);
    gw.get("Task?status:text=x").await.expect(400);
});

on_both_engines!(include_iterate_follows_organisation_hierarchy, |gw| {
    let ej = gw
        .create(&json!({"resourceType": "Organization", "name": "EJ AP-HP"}))
        .await;
    let eg = gw
        .create(&json!({"resourceType": "Organization", "name": "EG Bichat", "partOf": {"reference": format!("Organization/{}", ej["id"].as_str().unwrap())}}))
        .await;
    let service = gw
        .create(&json!({"resourceType": "Organization", "name": "Pôle gériatrie", "partOf": {"reference": format!("Organization/{}", eg["id"].as_str().unwrap())}}))
        .await;
    let unit = gw
        .create(&json!({"resourceType": "HealthcareService", "name": "SMR", "providedBy": {"reference": format!("Organization/{}", service["id"].as_str().unwrap())}}))
        .await;
    let q = format!(
        "HealthcareService?_id={}&_include=HealthcareService:organization&_include:iterate=Organization:partof",
        unit["id"].as_str().unwrap()
    );
    let b = gw.get(&q).await.expect(200).json();
    assert_eq!(count(&b, "include"), 3, "service, EG and EJ");
    let q = format!(
        "HealthcareService?_id={}&_include=HealthcareService:organization&_include=Organization:partof",
        unit["id"].as_str().unwrap()
    );
    // without :iterate an include applies to the matches only
    assert_eq!(count(&gw.get(&q).await.json(), "include"), 1);
});
