//! FHIR XML at the HTTP edge: bad XML is a 400 naming the element and the line, nothing is
//! stored; XML transactions; pretty output; XML and JSON views of one resource agree.

mod common;

use serde_json::json;

async fn post_xml(gw: &common::Gateway, path: &str, xml: &str) -> common::Answer {
    gw.send(
        gw.client
            .post(gw.url(path))
            .header("content-type", "application/fhir+xml")
            .header("accept", "application/fhir+xml")
            .body(xml.to_owned()),
    )
    .await
}

on_both_engines!(bad_xml_is_refused_with_its_place, |gw| {
    let cases = [
        // not well-formed
        (
            "<Patient xmlns=\"http://hl7.org/fhir\"><active value=\"true\"></Patient>",
            "line 1",
        ),
        // a DTD and an external entity
        (
            "<?xml version=\"1.0\"?>\n<!DOCTYPE Patient [<!ENTITY x SYSTEM \"file:///etc/passwd\">]>\n<Patient xmlns=\"http://hl7.org/fhir\"><name><family value=\"&x;\"/></name></Patient>",
            "line 2",
        ),
        // no FHIR namespace
        ("<Patient><active value=\"true\"/></Patient>", "namespace"),
        // unknown element, on line 3
        (
            "<Patient xmlns=\"http://hl7.org/fhir\">\n  <active value=\"true\"/>\n  <colour value=\"blue\"/>\n</Patient>",
            "Patient.colour",
        ),
        // a value that breaks its type
        (
            "<Patient xmlns=\"http://hl7.org/fhir\"><active value=\"yes\"/></Patient>",
            "Patient.active",
        ),
        (
            "<Patient xmlns=\"http://hl7.org/fhir\"><birthDate value=\"2020-13-01\"/></Patient>",
            "Patient.birthDate",
        ),
        // out of order: gender comes before birthDate
        (
            "<Patient xmlns=\"http://hl7.org/fhir\"><birthDate value=\"2020-01-01\"/><gender value=\"male\"/></Patient>",
            "gender",
        ),
    ];
    for (xml, needle) in cases {
        let a = post_xml(&gw, "Patient", xml).await.expect(400);
        let text = a.diagnostics();
        assert!(text.contains(needle), "`{needle}` not in {text}");
        assert!(
            a.text.starts_with("<?xml"),
            "the error is XML too: {}",
            a.text
        );
    }
    let a = post_xml(&gw, "Patient", "<Patient xmlns=\"http://hl7.org/fhir\">\n  <active value=\"true\"/>\n  <colour value=\"blue\"/>\n</Patient>").await;
    assert!(a.diagnostics().contains("line 3"), "{}", a.diagnostics());
    assert_eq!(
        gw.get("Patient?_summary=count").await.json()["total"],
        0,
        "nothing stored"
    );
});

on_both_engines!(xml_round_trips_through_the_server, |gw| {
    let xml = r#"<?xml version="1.0" encoding="UTF-8"?>
<!-- a comment is ignored -->
<Task xmlns="http://hl7.org/fhir">
  <status value="requested">
    <extension url="https://passerelle.dev/fhir/StructureDefinition/x"><valueString value="kept &amp; escaped"/></extension>
  </status>
  <intent value="order"/>
  <input>
    <type><text value="poids"/></type>
    <valueDecimal value="4.50"/>
  </input>
</Task>"#;
    let created = post_xml(&gw, "Task", xml).await.expect(201);
    let v = created.json();
    let id = v["id"].as_str().unwrap();
    assert!(
        created.text.contains(r#"<valueDecimal value="4.50"/>"#),
        "{}",
        created.text
    );
    // the JSON view of what was sent as XML
    let json_view: serde_json::Value = gw
        .send(
            gw.client
                .get(gw.url(&format!("Task/{id}")))
                .header("accept", "application/fhir+json"),
        )
        .await
        .expect(200)
        .json();
    assert_eq!(
        json_view["_status"]["extension"][0]["valueString"],
        "kept & escaped"
    );
    assert_eq!(json_view["input"][0]["valueDecimal"].to_string(), "4.50");
    let pretty = gw
        .send(
            gw.client
                .get(gw.url(&format!("Task/{id}?_pretty=true")))
                .header("accept", "application/fhir+xml"),
        )
        .await
        .expect(200);
    assert!(
        pretty.text.contains("\n  <status value=\"requested\">"),
        "{}",
        pretty.text
    );
    // an XML transaction with urn:uuid references
    let tx = json!({"resourceType": "Bundle", "type": "transaction", "entry": [
        {"fullUrl": "urn:uuid:6d0a6b7e-1b8e-4e55-9d0f-0f3c7a5a6e01",
         "resource": {"resourceType": "Patient", "name": [{"family": "Dupont"}]},
         "request": {"method": "POST", "url": "Patient"}},
        {"resource": {"resourceType": "Task", "status": "requested", "intent": "order",
                      "for": {"reference": "urn:uuid:6d0a6b7e-1b8e-4e55-9d0f-0f3c7a5a6e01"}},
         "request": {"method": "POST", "url": "Task"}}]});
    let body = passerelle::fhir::xml::to_xml(passerelle::fhir::model::Model::r4(), &tx).unwrap();
    let r = post_xml(&gw, "", &body).await.expect(200).json();
    assert_eq!(r["type"], "transaction-response");
    let task = &r["entry"][1]["resource"];
    assert!(
        task["for"]["reference"]
            .as_str()
            .unwrap()
            .starts_with("Patient/")
    );
    // an XML body that is not a resource the URL names
    post_xml(&gw, "Task", "<Patient xmlns=\"http://hl7.org/fhir\"/>")
        .await
        .expect(400);
});
