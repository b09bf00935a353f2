//! REST semantics over HTTP, on SQLite and PostgreSQL: versioning and preconditions,
//! conditional operations, strict input, Prefer, negotiation.

mod common;

use serde_json::{Value, json};

/// A Task with a decimal written `4.50` (parsed from text: `json!` would make it 4.5).
fn task(status: &str) -> Value {
    serde_json::from_str(&format!(
        r#"{{
        "resourceType": "Task",
        "status": "{status}",
        "intent": "order",
        "code": {{"coding": [{{"system": "http://hl7.org/fhir/CodeSystem/task-code", "code": "fulfill"}}]}},
        "_status": {{"extension": [{{"url": "https://passerelle.dev/fhir/StructureDefinition/x", "valueString": "kept"}}]}},
        "input": [{{"type": {{"text": "weight"}}, "valueDecimal": 4.50}}],
        "authoredOn": "2026-11-23T10:00:00+01:00"
    }}"#
    ))
    .unwrap()
}

on_both_engines!(create_read_update_delete_history, |gw| {
    let created = gw.post("Task", &task("requested")).await.expect(201);
    assert_eq!(created.header("etag").as_deref(), Some("W/\"1\""));
    let body = created.json();
    let id = body["id"].as_str().unwrap().to_owned();
    let location = created.header("location").unwrap();
    assert_eq!(location, format!("{}/Task/{id}/_history/1", gw.base));
    assert!(created.header("last-modified").is_some());
    // what the client sent comes back: decimals as written, primitive extensions
    assert_eq!(
        body["input"][0]["valueDecimal"].to_string(),
        "4.50",
        "{}",
        created.text
    );
    assert_eq!(body["_status"]["extension"][0]["valueString"], "kept");
    assert_eq!(body["meta"]["versionId"], "1");

    let read = gw.get(&format!("Task/{id}")).await.expect(200);
    assert_eq!(read.json(), body);
    assert_eq!(read.header("etag").as_deref(), Some("W/\"1\""));

    let mut changed = body.clone();
    changed["status"] = json!("received");
    let updated = gw.put(&format!("Task/{id}"), &changed).await.expect(200);
    assert_eq!(updated.header("etag").as_deref(), Some("W/\"2\""));
    assert_eq!(updated.json()["status"], "received");

    // an update that changes nothing makes no version
    let same = gw
        .put(&format!("Task/{id}"), &updated.json())
        .await
        .expect(200);
    assert_eq!(same.header("etag").as_deref(), Some("W/\"2\""));

    let v1 = gw
        .get(&format!("Task/{id}/_history/1"))
        .await
        .expect(200)
        .json();
    assert_eq!(v1["status"], "requested");
    gw.get(&format!("Task/{id}/_history/9")).await.expect(404);

    gw.delete(&format!("Task/{id}")).await.expect(200);
    let gone = gw.get(&format!("Task/{id}")).await.expect(410);
    assert!(gone.diagnostics().contains("deleted"));
    gw.get("Task/does-not-exist").await.expect(404);

    let hist = gw
        .get(&format!("Task/{id}/_history"))
        .await
        .expect(200)
        .json();
    assert_eq!(hist["type"], "history");
    assert_eq!(hist["total"], 3);
    let methods: Vec<&str> = hist["entry"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["request"]["method"].as_str().unwrap())
        .collect();
    assert_eq!(methods, ["DELETE", "PUT", "POST"]);
    let type_hist = gw.get("Task/_history").await.expect(200).json();
    assert_eq!(type_hist["total"], 3);
    let sys = gw.get("_history?_count=1").await.expect(200).json();
    assert_eq!(sys["entry"].as_array().unwrap().len(), 1);
    assert!(
        sys["link"]
            .as_array()
            .unwrap()
            .iter()
            .any(|l| l["relation"] == "next")
    );

    // re-created after deletion: a new version, 201
    let mut again = body.clone();
    again["status"] = json!("ready");
    gw.put(&format!("Task/{id}"), &again).await.expect(201);
    assert_eq!(
        gw.get(&format!("Task/{id}")).await.expect(200).json()["meta"]["versionId"],
        "4"
    );
});

on_both_engines!(update_as_create_and_id_rules, |gw| {
    let mut p = json!({"resourceType": "Patient", "id": "pat-1", "name": [{"family": "Martin"}]});
    let r = gw.put("Patient/pat-1", &p).await.expect(201);
    assert_eq!(r.json()["id"], "pat-1");
    p["id"] = json!("other");
    let e = gw.put("Patient/pat-1", &p).await.expect(400);
    assert!(
        e.diagnostics().contains("does not match"),
        "{}",
        e.diagnostics()
    );
    let mut no_id = p.clone();
    no_id.as_object_mut().unwrap().remove("id");
    gw.put("Patient/pat-1", &no_id).await.expect(400);
    gw.put(
        "Task/pat-1",
        &json!({"resourceType": "Patient", "id": "pat-1"}),
    )
    .await
    .expect(400);
    gw.put("Patient/bad_id!", &p).await.expect(400);
});

on_both_engines!(if_match_guards_every_write, |gw| {
    let t = gw.create(&task("requested")).await;
    let id = t["id"].as_str().unwrap();
    let url = gw.url(&format!("Task/{id}"));
    let mut next = t.clone();
    next["status"] = json!("received");
    let stale = gw
        .send(
            gw.client
                .put(&url)
                .header("content-type", common::FHIR_JSON)
                .header("if-match", "W/\"7\"")
                .body(next.to_string()),
        )
        .await
        .expect(412);
    assert!(stale.diagnostics().contains("If-Match"));
    assert_eq!(
        gw.get(&format!("Task/{id}")).await.json()["status"],
        "requested"
    );
    gw.send(
        gw.client
            .put(&url)
            .header("content-type", common::FHIR_JSON)
            .header("if-match", "W/\"1\"")
            .body(next.to_string()),
    )
    .await
    .expect(200);
    // the second writer with the same version loses
    gw.send(
        gw.client
            .put(&url)
            .header("content-type", common::FHIR_JSON)
            .header("if-match", "W/\"1\"")
            .body(next.to_string()),
    )
    .await
    .expect(412);
    gw.send(gw.client.delete(&url).header("if-match", "W/\"1\""))
        .await
        .expect(412);
    gw.send(gw.client.delete(&url).header("if-match", "W/\"2\""))
        .await
        .expect(200);
});

// Writers of one resource at once, without If-Match: each update reads the version the one
// before it kept (on SQLite they share a group commit; on PostgreSQL they wait for each
// other's row lock: a read that took the lock once saw no resource at all, and the update
// became a create of a taken name, 409).
on_both_engines!(concurrent_updates_follow_each_other, |gw| {
    let gw = &gw;
    let t = gw.create(&task("requested")).await;
    let id = t["id"].as_str().unwrap().to_owned();
    let path = format!("Task/{id}");
    let answers = futures::future::join_all((0..12).map(|i| {
        let mut next = t.clone();
        next["description"] = json!(format!("update {i}"));
        let path = path.clone();
        async move { gw.put(&path, &next).await.status }
    }))
    .await;
    assert!(answers.iter().all(|s| *s == 200), "{answers:?}");
    let now = gw.get(&path).await.expect(200).json();
    assert_eq!(now["meta"]["versionId"], "13");
    let history = gw.get(&format!("{path}/_history")).await.expect(200).json();
    assert_eq!(history["total"], 13);
});

on_both_engines!(concurrent_if_match_has_one_winner, |gw| {
    let t = gw.create(&task("requested")).await;
    let id = t["id"].as_str().unwrap().to_owned();
    let mut handles = Vec::new();
    for i in 0..8 {
        let client = gw.client.clone();
        let url = gw.url(&format!("Task/{id}"));
        let mut body = t.clone();
        body["description"] = json!(format!("writer {i}"));
        handles.push(tokio::spawn(async move {
            client
                .put(url)
                .header("content-type", common::FHIR_JSON)
                .header("if-match", "W/\"1\"")
                .body(body.to_string())
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
    assert_eq!(codes.iter().filter(|c| **c == 200).count(), 1, "{codes:?}");
    assert!(codes.iter().all(|c| *c == 200 || *c == 412), "{codes:?}");
    assert_eq!(
        gw.get(&format!("Task/{id}")).await.json()["meta"]["versionId"],
        "2"
    );
});

on_both_engines!(conditional_create_update_delete, |gw| {
    let p = json!({"resourceType": "Patient", "identifier": [{"system": "urn:oid:1.2.250.1.213.1.4.10", "value": "1840399987654"}]});
    let first = gw
        .send(
            gw.client
                .post(gw.url("Patient"))
                .header("content-type", common::FHIR_JSON)
                .header(
                    "if-none-exist",
                    "identifier=urn:oid:1.2.250.1.213.1.4.10|1840399987654",
                )
                .body(p.to_string()),
        )
        .await
        .expect(201);
    let id = first.json()["id"].clone();
    let second = gw
        .send(
            gw.client
                .post(gw.url("Patient"))
                .header("content-type", common::FHIR_JSON)
                .header(
                    "if-none-exist",
                    "identifier=urn:oid:1.2.250.1.213.1.4.10|1840399987654",
                )
                .body(p.to_string()),
        )
        .await
        .expect(200);
    assert_eq!(second.json()["id"], id);
    // the query-string form some clients send
    let third = gw
        .post(
            "Patient?identifier=urn:oid:1.2.250.1.213.1.4.10|1840399987654",
            &p,
        )
        .await
        .expect(200);
    assert_eq!(third.json()["id"], id);
    // unknown criteria never widen a conditional operation
    let e = gw
        .send(
            gw.client
                .post(gw.url("Patient"))
                .header("content-type", common::FHIR_JSON)
                .header("if-none-exist", "identifer=x")
                .body(p.to_string()),
        )
        .await
        .expect(400);
    assert!(e.diagnostics().contains("identifer"));
    gw.create(&p).await;
    // two matches now
    gw.send(
        gw.client
            .post(gw.url("Patient"))
            .header("content-type", common::FHIR_JSON)
            .header(
                "if-none-exist",
                "identifier=urn:oid:1.2.250.1.213.1.4.10|1840399987654",
            )
            .body(p.to_string()),
    )
    .await
    .expect(412);
    gw.put(
        "Patient?identifier=urn:oid:1.2.250.1.213.1.4.10|1840399987654",
        &p,
    )
    .await
    .expect(412);
    gw.delete("Patient?identifier=urn:oid:1.2.250.1.213.1.4.10|1840399987654")
        .await
        .expect(412);

    // conditional update: no match creates, one match updates
    let o = json!({"resourceType": "Organization", "identifier": [{"system": "https://finess.esante.gouv.fr", "value": "750712184"}], "name": "AP-HP"});
    let c = gw
        .put(
            "Organization?identifier=https://finess.esante.gouv.fr|750712184",
            &o,
        )
        .await
        .expect(201);
    let oid = c.json()["id"].as_str().unwrap().to_owned();
    let mut o2 = o.clone();
    o2["name"] = json!("Assistance Publique");
    let u = gw
        .put(
            "Organization?identifier=https://finess.esante.gouv.fr|750712184",
            &o2,
        )
        .await
        .expect(200);
    assert_eq!(u.json()["id"], oid.as_str());
    gw.delete("Organization?identifier=https://finess.esante.gouv.fr|750712184")
        .await
        .expect(200);
    gw.get(&format!("Organization/{oid}")).await.expect(410);
});

on_both_engines!(conditional_reads, |gw| {
    let t = gw.create(&task("requested")).await;
    let url = gw.url(&format!("Task/{}", t["id"].as_str().unwrap()));
    gw.send(gw.client.get(&url).header("if-none-match", "W/\"1\""))
        .await
        .expect(304);
    gw.send(gw.client.get(&url).header("if-none-match", "W/\"0\""))
        .await
        .expect(200);
    let lm = gw.get(&url).await.header("last-modified").unwrap();
    gw.send(gw.client.get(&url).header("if-modified-since", lm))
        .await
        .expect(304);
    gw.send(
        gw.client
            .get(&url)
            .header("if-modified-since", "Sat, 01 Jan 2000 00:00:00 GMT"),
    )
    .await
    .expect(200);
});

on_both_engines!(prefer_return, |gw| {
    let minimal = gw
        .send(
            gw.client
                .post(gw.url("Task"))
                .header("content-type", common::FHIR_JSON)
                .header("prefer", "return=minimal")
                .body(task("requested").to_string()),
        )
        .await
        .expect(201);
    assert!(minimal.text.is_empty());
    assert!(minimal.header("location").is_some());
    let oo = gw
        .send(
            gw.client
                .post(gw.url("Task"))
                .header("content-type", common::FHIR_JSON)
                .header("prefer", "return=OperationOutcome")
                .body(task("requested").to_string()),
        )
        .await
        .expect(201);
    assert_eq!(oo.json()["resourceType"], "OperationOutcome");
});

on_both_engines!(bad_input_is_refused_and_nothing_is_stored, |gw| {
    let cases: Vec<(Value, &str)> = vec![
        (
            json!({"resourceType": "Task", "status": "requested", "intent": "order", "bogus": 1}),
            "Task.bogus",
        ),
        (
            json!({"resourceType": "Task", "status": "nope", "intent": "order"}),
            "Task.status",
        ),
        (
            json!({"resourceType": "Task", "status": "requested", "intent": "order", "authoredOn": "2026-02-30"}),
            "Task.authoredOn",
        ),
        (
            json!({"resourceType": "Task", "status": "requested", "intent": "order", "input": [{"type": {"text": "x"}, "valueDecimal": "4.5"}]}),
            "Task.input[0].valueDecimal",
        ),
        (
            json!({"resourceType": "Task", "intent": "order"}),
            "Task.status",
        ),
        (json!({"resourceType": "Patient"}), "resourceType"),
    ];
    for (body, at) in cases {
        let a = gw.post("Task", &body).await.expect(400);
        assert!(
            a.diagnostics().contains(at),
            "{at} not in {}",
            a.diagnostics()
        );
    }
    let not_json = gw
        .send(
            gw.client
                .post(gw.url("Task"))
                .header("content-type", common::FHIR_JSON)
                .body("{\"resourceType\": "),
        )
        .await
        .expect(400);
    assert!(not_json.diagnostics().contains("JSON"));
    let deep = format!("{}{}", "{\"a\":".repeat(200), "}".repeat(200));
    gw.send(
        gw.client
            .post(gw.url("Task"))
            .header("content-type", common::FHIR_JSON)
            .body(deep),
    )
    .await
    .expect(400);
    let huge = format!(
        "{{\"resourceType\":\"Task\",\"description\":\"{}\"}}",
        "x".repeat(9 * 1024 * 1024)
    );
    gw.send(
        gw.client
            .post(gw.url("Task"))
            .header("content-type", common::FHIR_JSON)
            .body(huge),
    )
    .await
    .expect(413);
    gw.send(
        gw.client
            .post(gw.url("Task"))
            .header("content-type", "text/plain")
            .body("x"),
    )
    .await
    .expect(415);
    // fhirVersion parameters of both generations are accepted
    for ct in [
        "application/fhir+json; fhirVersion=4.0",
        "application/json; fhirVersion=4.3",
        "application/json",
    ] {
        gw.send(
            gw.client
                .post(gw.url("Task"))
                .header("content-type", ct)
                .body(task("draft").to_string()),
        )
        .await
        .expect(201);
    }
    let count = gw.get("Task?_summary=count").await.expect(200).json();
    assert_eq!(count["total"], 3, "only the three valid creates are stored");
});

on_both_engines!(negotiation_and_unknown_paths, |gw| {
    // XML and JSON, by Accept (with q-values) or _format; anything else is 406
    let xml = gw
        .send(
            gw.client
                .get(gw.url("metadata"))
                .header("accept", "application/fhir+xml"),
        )
        .await
        .expect(200);
    assert_eq!(
        xml.header("content-type").as_deref(),
        Some("application/fhir+xml; charset=utf-8")
    );
    assert!(
        xml.text.starts_with("<?xml")
            && xml
                .text
                .contains("<CapabilityStatement xmlns=\"http://hl7.org/fhir\">")
    );
    assert_eq!(xml.json()["fhirVersion"], "4.0.1");
    let x = gw
        .send(gw.client.get(gw.url("metadata?_format=xml")))
        .await
        .expect(200);
    assert!(x.text.starts_with("<?xml"));
    let q = gw
        .send(gw.client.get(gw.url("metadata")).header(
            "accept",
            "application/fhir+json;q=0.5, application/fhir+xml",
        ))
        .await
        .expect(200);
    assert!(q.text.starts_with("<?xml"), "the higher q wins");
    let refused = gw
        .send(
            gw.client
                .get(gw.url("metadata"))
                .header("accept", "application/pdf"),
        )
        .await
        .expect(406);
    assert!(refused.diagnostics().contains("application/pdf"));
    gw.get("metadata?_format=turtle").await.expect(406);
    // errors come back in the format asked for
    let e = gw
        .send(
            gw.client
                .get(gw.url("Task/nope"))
                .header("accept", "application/fhir+xml"),
        )
        .await
        .expect(404);
    assert!(e.text.contains("<OperationOutcome"), "{}", e.text);
    let cs = gw
        .send(
            gw.client
                .get(gw.url("metadata"))
                .header("accept", "application/fhir+json"),
        )
        .await
        .expect(200);
    assert_eq!(
        cs.header("content-type").as_deref(),
        Some("application/fhir+json; charset=utf-8")
    );
    assert_eq!(cs.json()["fhirVersion"], "4.0.1");
    let pretty = gw.get("metadata?_pretty=true").await.expect(200);
    assert!(pretty.text.contains("\n  "));
    gw.get("Foo").await.expect(404);
    gw.get("Foo/1").await.expect(404);
    gw.send(
        gw.client
            .put(gw.url("AuditEvent/1"))
            .header("content-type", common::FHIR_JSON)
            .body(json!({"resourceType": "AuditEvent", "id": "1"}).to_string()),
    )
    .await
    .expect(405);
    gw.post(
        "StructureDefinition",
        &json!({"resourceType": "StructureDefinition"}),
    )
    .await
    .expect(405);
});

on_both_engines!(validate_operation, |gw| {
    let ok = gw
        .post("Task/$validate", &task("requested"))
        .await
        .expect(200)
        .json();
    assert_eq!(ok["issue"][0]["severity"], "information");
    let bad = gw
        .post(
            "Task/$validate",
            &json!({"resourceType": "Task", "status": "x", "intent": "order"}),
        )
        .await
        .expect(200)
        .json();
    assert_eq!(bad["issue"][0]["severity"], "error");
    assert_eq!(bad["issue"][0]["expression"][0], "Task.status");
    let params = json!({"resourceType": "Parameters", "parameter": [{"name": "resource", "resource": task("requested")}]});
    gw.post("Task/$validate", &params).await.expect(200);
    // nothing was stored
    assert_eq!(gw.get("Task?_summary=count").await.json()["total"], 0);
});

on_both_engines!(operations_endpoints, |gw| {
    let root = gw.base.trim_end_matches("/fhir").to_owned();
    let h = gw
        .send(gw.client.get(format!("{root}/health")))
        .await
        .expect(200);
    assert_eq!(h.text, "ok");
    gw.send(gw.client.get(format!("{root}/ready")))
        .await
        .expect(200);
    gw.get("Task?_count=1").await.expect(200);
    let m = gw
        .send(gw.client.get(format!("{root}/metrics")))
        .await
        .expect(200);
    assert!(
        m.text
            .contains("passerelle_http_requests_total{method=\"GET\",status=\"2xx\"}"),
        "{}",
        m.text
    );
    assert!(m.text.contains("passerelle_db_pool_connections"));
    let id = gw
        .send(
            gw.client
                .get(format!("{root}/health"))
                .header("x-request-id", "abc-123"),
        )
        .await;
    assert_eq!(id.header("x-request-id").as_deref(), Some("abc-123"));
    gw.send(gw.client.get(format!("{root}/nothing")))
        .await
        .expect(404);
});

on_both_engines!(json_patch_and_fhirpath_patch, |gw| {
    let t = gw.create(&task("requested")).await;
    let id = t["id"].as_str().unwrap().to_owned();
    let url = gw.url(&format!("Task/{id}"));
    let json_patch = |body: Value, etag: Option<&str>| {
        let mut r = gw
            .client
            .patch(&url)
            .header("content-type", "application/json-patch+json")
            .body(body.to_string());
        if let Some(e) = etag {
            r = r.header("if-match", e);
        }
        r
    };
    // JSON Patch with the right version
    let a = gw
        .send(json_patch(
            json!([{"op": "replace", "path": "/status", "value": "received"},
            {"op": "add", "path": "/businessStatus", "value": {"text": "lue"}}]),
            Some("W/\"1\""),
        ))
        .await
        .expect(200);
    assert_eq!(a.header("etag").as_deref(), Some("W/\"2\""));
    let v = a.json();
    assert_eq!(
        (v["status"].as_str(), v["businessStatus"]["text"].as_str()),
        (Some("received"), Some("lue"))
    );
    // a stale version, a failing test op, a result the model refuses: nothing changes
    gw.send(json_patch(
        json!([{"op": "replace", "path": "/status", "value": "accepted"}]),
        Some("W/\"1\""),
    ))
    .await
    .expect(412);
    gw.send(json_patch(
        json!([{"op": "test", "path": "/status", "value": "draft"}]),
        None,
    ))
    .await
    .expect(422);
    let bad = gw
        .send(json_patch(
            json!([{"op": "replace", "path": "/status", "value": "nope"}]),
            None,
        ))
        .await
        .expect(422);
    assert!(
        bad.diagnostics().contains("Task.status"),
        "{}",
        bad.diagnostics()
    );
    gw.send(json_patch(json!({"op": "replace"}), None))
        .await
        .expect(400);
    gw.send(json_patch(
        json!([{"op": "replace", "path": "/id", "value": "other"}]),
        None,
    ))
    .await
    .expect(422);
    assert_eq!(
        gw.get(&format!("Task/{id}")).await.json()["meta"]["versionId"],
        "2"
    );

    // FHIRPath Patch (a Parameters resource)
    let params = json!({"resourceType": "Parameters", "parameter": [
        {"name": "operation", "part": [
            {"name": "type", "valueCode": "replace"},
            {"name": "path", "valueString": "Task.status"},
            {"name": "value", "valueCode": "accepted"}]},
        {"name": "operation", "part": [
            {"name": "type", "valueCode": "add"},
            {"name": "path", "valueString": "Task"},
            {"name": "name", "valueString": "note"},
            {"name": "value", "part": [{"name": "text", "valueString": "date proposée"}]}]}
    ]});
    let body = match gw.format {
        common::Format::Json => params.to_string(),
        common::Format::Xml => {
            passerelle::fhir::xml::to_xml(passerelle::fhir::model::Model::r4(), &params).unwrap()
        }
    };
    let ct = match gw.format {
        common::Format::Json => common::FHIR_JSON,
        common::Format::Xml => common::FHIR_XML,
    };
    let p = gw
        .send(
            gw.client
                .patch(&url)
                .header("content-type", ct)
                .header("if-match", "W/\"2\"")
                .body(body),
        )
        .await
        .expect(200)
        .json();
    assert_eq!(p["status"], "accepted");
    assert_eq!(p["note"][0]["text"], "date proposée");
    // conditional patch
    let cond = gw
        .send(
            gw.client
                .patch(gw.url(&format!("Task?_id={id}")))
                .header("content-type", "application/json-patch+json")
                .body(
                    json!([{"op": "replace", "path": "/status", "value": "completed"}]).to_string(),
                ),
        )
        .await
        .expect(200);
    assert_eq!(cond.json()["status"], "completed");
    gw.send(
        gw.client
            .patch(gw.url("Task?_id=missing"))
            .header("content-type", "application/json-patch+json")
            .body("[]"),
    )
    .await
    .expect(404);
});

on_both_engines!(anonymous_callers_touch_no_patient_data, |gw| {
    let anon = gw.anonymous();
    // the directory and accounts: set up anonymously, as dev mode allows
    anon.put(
        "Organization/o-anon",
        &json!({"resourceType": "Organization", "id": "o-anon", "name": "Clinique"}),
    )
    .await
    .expect(201);
    // patient data: the system (the test client's token) writes it, nobody anonymous reads it
    let patient = gw
        .create(&json!({"resourceType": "Patient", "name": [{"family": "Anonyme"}]}))
        .await;
    let pid = patient["id"].as_str().unwrap();
    gw.put(
        "Encounter/e-anon",
        &json!({"resourceType": "Encounter", "id": "e-anon", "status": "finished",
                "class": {"system": "http://terminology.hl7.org/CodeSystem/v3-ActCode", "code": "IMP"},
                "subject": {"reference": format!("Patient/{pid}")},
                "serviceProvider": {"reference": "Organization/o-anon"}}),
    )
    .await
    .expect(201);
    for path in [
        format!("Patient/{pid}"),
        format!("Patient/{pid}/_history"),
        "Patient?name=anonyme".to_owned(),
        "Encounter".to_owned(),
        "_history".to_owned(),
    ] {
        anon.get(&path).await.expect(401);
    }
    anon.post(
        "Patient",
        &json!({"resourceType": "Patient", "name": [{"family": "X"}]}),
    )
    .await
    .expect(401);
    anon.delete(&format!("Patient/{pid}")).await.expect(401);
    // an include does not bring it either
    let b = anon
        .get("Organization?_id=o-anon&_revinclude=Encounter:service-provider")
        .await
        .expect(200)
        .json();
    let types: Vec<&str> = b["entry"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|e| e["resource"]["resourceType"].as_str())
        .collect();
    assert_eq!(types, ["Organization"], "{b}");
    // nor a Bundle: a transaction is refused whole, a batch entry alone
    let tx = json!({"resourceType": "Bundle", "type": "transaction", "entry": [
        {"fullUrl": "urn:uuid:0a8a6c77-6e4b-4a1c-9d0b-1f1d1f1d1f1d",
         "resource": {"resourceType": "Patient", "name": [{"family": "Y"}]},
         "request": {"method": "POST", "url": "Patient"}}
    ]});
    anon.post("", &tx).await.expect(401);
    let batch = json!({"resourceType": "Bundle", "type": "batch", "entry": [
        {"request": {"method": "GET", "url": format!("Patient/{pid}")}},
        {"request": {"method": "GET", "url": "Organization/o-anon"}}
    ]});
    let b = anon.post("", &batch).await.expect(200).json();
    let status = |i: usize| b["entry"][i]["response"]["status"].as_str().unwrap_or("");
    assert!(status(0).starts_with("401"), "{b}");
    assert!(status(1).starts_with("200"), "{b}");
    // a token and a habilitation header together: which caller is meant?
    let both = gw
        .send(
            gw.client
                .get(gw.url("Organization/o-anon"))
                .header("x-passerelle-role", "PractitionerRole/any"),
        )
        .await;
    assert_eq!(both.status, 400, "{}", both.text);
});
