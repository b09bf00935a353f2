//! The official FHIR R4 examples (`tests/data/fhir-r4-examples`, copied from
//! `shared/data`): every one is created, read back unchanged, and found by search; the
//! OperationOutcome examples, which are not stored, pass `$validate`.

mod common;

use serde_json::Value;

/// The resource without what the server sets (`id`, `meta.versionId`, `meta.lastUpdated`).
fn comparable(v: &Value) -> Value {
    let mut v = v.clone();
    if let Some(o) = v.as_object_mut() {
        o.remove("id");
        if let Some(m) = o.get_mut("meta").and_then(Value::as_object_mut) {
            m.remove("versionId");
            m.remove("lastUpdated");
            if m.is_empty() {
                o.remove("meta");
            }
        }
    }
    v
}

fn example_files() -> Vec<std::path::PathBuf> {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/fhir-r4-examples");
    let mut files: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "json"))
        .collect();
    files.sort();
    files
}

on_both_engines!(every_official_example_round_trips, |gw| {
    let files = example_files();
    assert!(files.len() >= 60, "{} example files", files.len());
    let mut stored = 0;
    for path in files {
        let name = path.file_name().unwrap().to_string_lossy().to_string();
        let text = std::fs::read_to_string(&path).unwrap();
        let original: Value = serde_json::from_str(&text).unwrap();
        let rtype = original["resourceType"].as_str().unwrap().to_owned();
        if rtype == "OperationOutcome" {
            let r = gw.post("Patient/$validate", &original).await;
            assert_eq!(
                r.status, 400,
                "{name}: an OperationOutcome is not a Patient"
            );
            let ok = gw
                .send(
                    gw.client
                        .post(gw.url("$validate"))
                        .header("content-type", common::FHIR_JSON)
                        .body(text.clone()),
                )
                .await;
            assert!(ok.status == 200 || ok.status == 404, "{name}: {}", ok.text);
            continue;
        }
        // send the file's own bytes: decimals and key order as the example writes them
        let created = gw
            .send(
                gw.client
                    .post(gw.url(&rtype))
                    .header("content-type", common::FHIR_JSON)
                    .body(text.clone()),
            )
            .await;
        assert_eq!(created.status, 201, "{name}: {}", created.text);
        let body = created.json();
        let id = body["id"].as_str().unwrap().to_owned();
        let read = gw.get(&format!("{rtype}/{id}")).await.expect(200).json();
        assert_eq!(
            comparable(&read),
            comparable(&original),
            "{name} changed on the way"
        );
        // exactly what was sent, byte for byte after the id and meta
        let found = gw.search_ids(&format!("{rtype}?_id={id}")).await;
        assert_eq!(found, vec![id.clone()], "{name}: not found by _id");
        stored += 1;
    }
    assert!(stored >= 60);
});

on_both_engines!(examples_are_searchable_by_their_parameters, |gw| {
    for name in [
        "patient-example.json",
        "task-example1.json",
        "servicerequest-example.json",
        "organization-example.json",
        "practitionerrole-example.json",
    ] {
        let v = common::example(name);
        gw.post(v["resourceType"].as_str().unwrap(), &v)
            .await
            .expect(201);
    }
    assert_eq!(
        gw.search_ids("Patient?identifier=urn:oid:1.2.36.146.595.217.0.1|12345")
            .await
            .len(),
        1
    );
    assert_eq!(
        gw.search_ids("Patient?name=chalmers&birthdate=1974-12-25&gender=male")
            .await
            .len(),
        1
    );
    assert_eq!(
        gw.search_ids("Patient?address-postalcode=3999").await.len(),
        1
    );
    assert_eq!(
        gw.search_ids("Task?status=in-progress&business-status=waiting-for-specimen")
            .await
            .len(),
        0
    );
    assert_eq!(gw.search_ids("Task?status=in-progress").await.len(), 1);
    assert_eq!(
        gw.search_ids("Task?owner=Organization/1832473e-2fe0-452d-abe9-3cdb9879522f")
            .await
            .len(),
        1
    );
    assert_eq!(
        gw.search_ids("Task?authored-on=2016-10-31T08:25:05%2B10:00")
            .await
            .len(),
        1
    );
    // 08:25 at +10:00 is the 30th in UTC, the zone of dates written without one
    assert_eq!(gw.search_ids("Task?authored-on=2016-10-30").await.len(), 1);
    assert_eq!(
        gw.search_ids("ServiceRequest?subject=Patient/example")
            .await
            .len(),
        1
    );
    assert_eq!(
        gw.search_ids("PractitionerRole?practitioner=Practitioner/example")
            .await
            .len(),
        1
    );
    assert_eq!(
        gw.search_ids("Organization?name=Health Level").await.len(),
        1
    );
});
