//! The ROR directory sync against a real HTTP stand-in of the ROR (tests/common/ror_standin.rs)
//! on loopback, on SQLite and PostgreSQL: full sync (paging and `$export`), delta (the ROR's
//! `_filter`), unchanged re-sync, closure and reopening of units, organisations and places
//! (nationally and by region), failure half-way then resume, token expiry, 429 back-off,
//! malformed resources, unknown codes, mutual TLS, the module rules (USP, EHPAD…) and the
//! prescribers' directory search.

mod common;

use std::sync::Arc;

use common::ror_standin::{self, Ror, Standin, TestPki};
use passerelle::directory::Directory;
use passerelle::directory::client::RorClient;
use passerelle::directory::sync::{self, Mode, Report, SyncError};
use serde_json::{Value, json};

macro_rules! on_engines {
    ($name:ident, |$gw:ident| $body:block) => {
        mod $name {
            use super::*;
            async fn scenario($gw: common::Gateway) $body

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn sqlite() {
                if let Some(gw) = common::spawn(common::Engine::Sqlite).await {
                    scenario(gw).await;
                }
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn postgres() {
                if let Some(gw) = common::spawn(common::Engine::Postgres).await {
                    scenario(gw).await;
                }
            }
        }
    };
}

fn standin_data(n: usize) -> Ror {
    let mut ror = Ror::default();
    for r in ror_standin::generated(n) {
        ror.put(r);
    }
    ror
}

struct Setup {
    ror: Standin,
    directory: Arc<Directory>,
    client: Arc<RorClient>,
}

async fn setup(ror: Ror, tweak: impl FnOnce(&mut passerelle::config::RorConfig)) -> Setup {
    let standin = Standin::start(ror).await;
    let mut config = standin.config();
    tweak(&mut config);
    let (directory, client) = Directory::from_config(&config).expect("directory");
    Setup {
        ror: standin,
        directory,
        client: client.expect("client"),
    }
}

impl Setup {
    async fn sync(&self, gw: &common::Gateway, mode: Mode) -> Result<Report, SyncError> {
        let opts = self.directory.options(mode, "test", false);
        sync::run(&gw.app.fhir, &self.client, &self.directory.mapping, &opts).await
    }
}

async fn version(gw: &common::Gateway, path: &str) -> String {
    gw.get(path).await.expect(200).json()["meta"]["versionId"]
        .as_str()
        .unwrap_or("")
        .to_owned()
}

on_engines!(full_sync_then_unchanged_resync, |gw| {
    let mut ror = standin_data(10);
    for r in ror_standin::examples() {
        ror.put(r);
    }
    let s = setup(ror, |_| {}).await;
    let r = s.sync(&gw, Mode::Full).await.expect("full sync");
    // 10 units, 10 places, 10 OI + 5 EG + 3 EJ, and the two shared examples
    // (the example Location is referenced by no offer: a paged listing does not reach it)
    assert_eq!(r.created, 39, "{}", r.summary());
    assert_eq!(
        (r.updated, r.unchanged, r.closed, r.malformed_count),
        (0, 0, 0, 0)
    );
    assert!(r.full);
    // pages of 7 followed through `link next`: 11 offers, then the 18 organisations on
    // their own (all already met through the offers' includes; ej-1 was also included by
    // both pages of offers)
    assert_eq!(s.ror.with(|r| r.stats.pages), 2 + 3);
    assert_eq!(r.repeated, 18 + 1, "{}", r.summary());

    let hs = gw
        .get("HealthcareService/ror-hs-0")
        .await
        .expect(200)
        .json();
    assert_eq!(hs["meta"]["source"], s.ror.base.as_str());
    assert_eq!(hs["providedBy"]["reference"], "Organization/ror-oi-0");
    assert_eq!(hs["location"][0]["reference"], "Location/ror-loc-0");
    assert!(
        hs["identifier"]
            .as_array()
            .unwrap()
            .iter()
            .any(
                |i| i["system"] == "https://passerelle.dev/fhir/NamingSystem/ror-id"
                    && i["value"] == "hs-0"
            )
    );
    assert_eq!(hs["program"][0]["coding"][0]["code"], "SMR");
    let oi = gw.get("Organization/ror-oi-3").await.expect(200).json();
    assert_eq!(oi["partOf"]["reference"], "Organization/ror-eg-1");
    // the shared examples went through too
    let ex = gw
        .get("HealthcareService/ror-1234564")
        .await
        .expect(200)
        .json();
    assert_eq!(ex["identifier"][0]["value"], "06/0099999");

    // nothing changed: nothing written
    let again = s.sync(&gw, Mode::Full).await.expect("second sync");
    assert_eq!(
        (again.created, again.updated, again.closed),
        (0, 0, 0),
        "{}",
        again.summary()
    );
    assert_eq!(again.unchanged, 39);
    assert_eq!(version(&gw, "HealthcareService/ror-hs-0").await, "1");
    let delta = s.sync(&gw, Mode::Delta).await.expect("delta");
    assert!(!delta.full);
    assert_eq!(
        (delta.created, delta.updated, delta.fetched),
        (0, 0, 0),
        "{}",
        delta.summary()
    );
    let hist = gw
        .get("HealthcareService/_history")
        .await
        .expect(200)
        .json();
    assert_eq!(hist["total"], 11);
});

on_engines!(export_full_sync, |gw| {
    let s = setup(standin_data(8), |c| c.use_export = true).await;
    s.ror.with(|r| r.faults.export_polls = 2);
    let r = s.sync(&gw, Mode::Full).await.expect("export sync");
    assert_eq!(s.ror.with(|r| r.stats.export_kickoffs), 1);
    // no paging of offers when exporting; the organisations' own listing (14, pages of 7)
    let searched = s.ror.with(|r| r.stats.queries.clone());
    assert!(
        searched.iter().all(|q| q.starts_with("Organization?")),
        "{searched:?}"
    );
    assert_eq!(s.ror.with(|r| r.stats.pages), 2);
    assert_eq!(r.created, 8 + 8 + 8 + 4 + 2, "{}", r.summary());
    let again = s.sync(&gw, Mode::Full).await.expect("again");
    assert_eq!((again.created, again.updated), (0, 0));
    // a region: only its offers (the organisation and place files are whole)
    let mut c = s.ror.config();
    c.use_export = true;
    c.region = Some("06".into());
    let (d, client) = Directory::from_config(&c).unwrap();
    let opts = d.options(Mode::Full, "test", false);
    let r = sync::run(&gw.app.fhir, &client.unwrap(), &d.mapping, &opts)
        .await
        .expect("region");
    // hs-4 is the one unit of region 06 among 8; oi-4, eg-2 and ej-1 are the region's
    // organisations, listed again on their own
    assert_eq!(r.fetched, 8 + 8 + 4 + 2 + 1 + 3, "{}", r.summary());
    assert_eq!((r.unchanged, r.closed), (23, 0), "{}", r.summary());
});

on_engines!(delta_brings_changes_and_new_units, |gw| {
    let s = setup(standin_data(6), |_| {}).await;
    s.sync(&gw, Mode::Full).await.expect("full");
    s.ror.with(|r| {
        r.get_mut("HealthcareService", "hs-1")["name"] = json!("Offre 1 renommée");
        r.touch("HealthcareService", "hs-1");
        // an EG renamed: the offers under it come with the ROR's `_filter`, unchanged
        r.get_mut("Organization", "eg-1")["name"] = json!("EG 1 bis");
        r.touch("Organization", "eg-1");
        // a place whose capacities changed (the capacity delta)
        r.get_mut("Location", "loc-5")["name"] = json!("Lieu 5 bis");
        r.touch("Location", "loc-5");
        let mut fresh = ror_standin::generated(7).pop().unwrap();
        fresh["meta"]["lastUpdated"] = json!("2099-01-01T00:00:00Z");
        r.put(fresh);
        r.put(json!({"resourceType": "Location", "id": "loc-6", "meta": {"lastUpdated": "2099-01-01T00:00:00Z"}, "name": "Lieu 6"}));
        r.put(json!({"resourceType": "Organization", "id": "oi-6", "meta": {"lastUpdated": "2099-01-01T00:00:00Z"}, "name": "Unité 6"}));
    });
    let searched_before = s.ror.with(|r| r.stats.queries.len());
    let r = s.sync(&gw, Mode::Delta).await.expect("delta");
    assert!(!r.full);
    // hs-1, loc-5, eg-1 changed; hs-6, loc-6, oi-6 new
    assert_eq!(r.updated, 3, "{}", r.summary());
    assert_eq!(r.created, 3, "{}", r.summary());
    // the offers: the ROR's documented delta, `_filter` on the offer's and its organisations'
    // `_lastUpdated`, with the includes; then places and organisations on their own
    let q: Vec<String> = s.ror.with(|r| r.stats.queries[searched_before..].to_vec());
    assert_eq!(q.len(), 3, "{q:?}");
    let offers = form_urlencoded::parse(q[0].trim_start_matches("HealthcareService?").as_bytes())
        .map(|(k, v)| (k.into_owned(), v.into_owned()))
        .collect::<Vec<_>>();
    let filter = &offers
        .iter()
        .find(|(k, _)| k == "_filter")
        .expect("_filter")
        .1;
    let since = filter
        .strip_prefix("(_lastUpdated ge ")
        .and_then(|f| f.split_once(" or organization._lastUpdated:above ge "))
        .map(|(a, b)| (a.to_owned(), b.trim_end_matches(')').to_owned()));
    assert!(since.as_ref().is_some_and(|(a, b)| a == b), "{filter}");
    assert!(
        !offers.iter().any(|(k, _)| k == "_lastUpdated"),
        "{offers:?}"
    );
    for include in [
        ("_include", "HealthcareService:organization"),
        ("_include:iterate", "Organization:partof"),
        ("_include", "HealthcareService:location"),
    ] {
        assert!(
            offers.contains(&(include.0.to_owned(), include.1.to_owned())),
            "{include:?} in {offers:?}"
        );
    }
    assert!(
        q[1].starts_with("Location?") && q[1].contains("_lastUpdated=ge"),
        "{q:?}"
    );
    assert!(
        q[2].starts_with("Organization?") && q[2].contains("_lastUpdated=ge"),
        "{q:?}"
    );
    // what the filter matched: hs-1 (changed), hs-2 and hs-3 (their EG changed), hs-6 (new)
    let matched = s.ror.with(|r| r.stats.matched.clone());
    let mut offers_matched: Vec<&str> = matched
        .iter()
        .rev()
        .find(|(q, _)| q.starts_with("HealthcareService?"))
        .map(|(_, ids)| ids.iter().map(String::as_str).collect())
        .unwrap_or_default();
    offers_matched.sort();
    assert_eq!(offers_matched, ["hs-1", "hs-2", "hs-3", "hs-6"]);
    assert_eq!(
        gw.get("Organization/ror-eg-1").await.expect(200).json()["name"],
        "EG 1 bis"
    );
    assert_eq!(version(&gw, "HealthcareService/ror-hs-2").await, "1");
    assert_eq!(version(&gw, "HealthcareService/ror-hs-1").await, "2");
    assert_eq!(version(&gw, "HealthcareService/ror-hs-0").await, "1");
    let hs6 = gw
        .get("HealthcareService/ror-hs-6")
        .await
        .expect(200)
        .json();
    assert_eq!(hs6["name"], "Offre 6");
});

on_engines!(units_gone_from_the_ror_are_closed_not_deleted, |gw| {
    let mut ror = standin_data(6);
    // an EJ no offer reaches: still in the ROR, so never closed
    ror.put(json!({"resourceType": "Organization", "id": "ej-9",
        "meta": {"lastUpdated": ror_standin::OLD, "tag": [{"system": ror_standin::REGION_SYSTEM, "code": "11"}]},
        "active": true, "name": "EJ sans offre"}));
    let s = setup(ror, |_| {}).await;
    s.sync(&gw, Mode::Full).await.expect("full");
    assert_eq!(
        gw.get("Organization/ror-ej-9").await.expect(200).json()["active"],
        true
    );
    // a request open on the unit
    let task = gw
        .create(
            &json!({"resourceType": "Task", "status": "requested", "intent": "order",
            "owner": {"reference": "HealthcareService/ror-hs-2"}}),
        )
        .await;
    let gone = s.ror.with(|r| {
        let gone: Vec<Value> = [
            ("HealthcareService", "hs-2"),
            ("Location", "loc-2"),
            ("Organization", "oi-2"),
        ]
        .iter()
        .map(|(t, id)| r.get_mut(t, id).clone())
        .collect();
        r.remove("HealthcareService", "hs-2");
        r.remove("Location", "loc-2");
        r.remove("Organization", "oi-2");
        gone
    });
    // a delta cannot see a disappearance: nothing closed
    let d = s.sync(&gw, Mode::Delta).await.expect("delta");
    assert_eq!(d.closed, 0);
    let r = s.sync(&gw, Mode::Full).await.expect("full");
    assert_eq!(r.closed, 3, "{}", r.summary());
    let hs = gw
        .get("HealthcareService/ror-hs-2")
        .await
        .expect(200)
        .json();
    assert_eq!(hs["active"], false);
    assert_eq!(hs["meta"]["versionId"], "2");
    let loc = gw.get("Location/ror-loc-2").await.expect(200).json();
    assert_eq!(loc["status"], "inactive");
    // its internal organisation likewise, never deleted; its EG (still used by hs-3) and the
    // EJ without offers stay open
    let oi = gw.get("Organization/ror-oi-2").await.expect(200).json();
    assert_eq!(
        (&oi["active"], &oi["meta"]["versionId"]),
        (&json!(false), &json!("2"))
    );
    for open in ["Organization/ror-eg-1", "Organization/ror-ej-9"] {
        let o = gw.get(open).await.expect(200).json();
        assert_eq!(
            (&o["active"], &o["meta"]["versionId"]),
            (&json!(true), &json!("1")),
            "{open}"
        );
    }
    assert!(
        !gw.search_ids("Organization?active=true&_count=100")
            .await
            .contains(&"ror-oi-2".to_owned())
    );
    // the request still points at it, and reads
    let t = gw
        .get(&format!("Task/{}", task["id"].as_str().unwrap()))
        .await
        .expect(200)
        .json();
    assert_eq!(t["owner"]["reference"], "HealthcareService/ror-hs-2");
    let active = gw
        .search_ids("HealthcareService?active=true&_count=100")
        .await;
    assert!(!active.contains(&"ror-hs-2".to_owned()));
    // closing again changes nothing
    let r = s.sync(&gw, Mode::Full).await.expect("full");
    assert_eq!((r.closed, r.updated), (0, 0));
    // back in the ROR: open again, as the ROR has them
    s.ror.with(|r| gone.into_iter().for_each(|g| r.put(g)));
    let r = s.sync(&gw, Mode::Full).await.expect("full");
    assert_eq!(
        (r.closed, r.updated, r.created),
        (0, 3, 0),
        "{}",
        r.summary()
    );
    let hs = gw
        .get("HealthcareService/ror-hs-2")
        .await
        .expect(200)
        .json();
    assert_eq!(
        (&hs["active"], &hs["meta"]["versionId"]),
        (&json!(true), &json!("3"))
    );
    let oi = gw.get("Organization/ror-oi-2").await.expect(200).json();
    assert_eq!(
        (&oi["active"], &oi["meta"]["versionId"]),
        (&json!(true), &json!("3"))
    );
    assert_eq!(
        gw.get("Location/ror-loc-2").await.expect(200).json()["status"],
        "active"
    );
    // a unit closed in the ROR itself (active false) comes through as it is
    s.ror.with(|r| {
        r.get_mut("HealthcareService", "hs-3")["active"] = json!(false);
        r.touch("HealthcareService", "hs-3");
    });
    s.sync(&gw, Mode::Delta).await.expect("delta");
    assert_eq!(
        gw.get("HealthcareService/ror-hs-3")
            .await
            .expect(200)
            .json()["active"],
        false
    );
});

on_engines!(a_regional_full_sync_closes_its_region_only, |gw| {
    // units 4 and 9 are region 06's, the others 11's; places carry no region tag (as in the
    // ROR): loc-shared is a place of hs-9 (06) and of hs-0 (11)
    let mut ror = standin_data(10);
    ror.put(json!({"resourceType": "Location", "id": "loc-shared",
        "meta": {"lastUpdated": ror_standin::OLD}, "status": "active", "name": "Plateau partagé"}));
    for hs in ["hs-9", "hs-0"] {
        ror.get_mut("HealthcareService", hs)["location"]
            .as_array_mut()
            .unwrap()
            .push(json!({"reference": "Location/loc-shared"}));
    }
    let s = setup(ror, |_| {}).await;
    let r = s.sync(&gw, Mode::Full).await.expect("national full");
    assert_eq!(r.created, 10 + 11 + 10 + 5 + 3, "{}", r.summary());
    // gone from the ROR: a unit of 06 and one of 11, each with its place and OI; the
    // shared place too
    s.ror.with(|r| {
        for i in [9, 3] {
            r.remove("HealthcareService", &format!("hs-{i}"));
            r.remove("Location", &format!("loc-{i}"));
            r.remove("Organization", &format!("oi-{i}"));
        }
        r.remove("Location", "loc-shared");
    });
    let mut c = s.ror.config();
    c.region = Some("06".into());
    let (d, client) = Directory::from_config(&c).unwrap();
    let opts = d.options(Mode::Full, "test", false);
    let r = sync::run(&gw.app.fhir, &client.unwrap(), &d.mapping, &opts)
        .await
        .expect("regional full");
    // region 06's unit, its OI and its place are closed
    assert_eq!(
        (r.closed, r.updated, r.created),
        (3, 0, 0),
        "{}",
        r.summary()
    );
    let hs9 = gw
        .get("HealthcareService/ror-hs-9")
        .await
        .expect(200)
        .json();
    assert_eq!(
        (&hs9["active"], &hs9["meta"]["versionId"]),
        (&json!(false), &json!("2"))
    );
    assert_eq!(
        gw.get("Organization/ror-oi-9").await.expect(200).json()["active"],
        false
    );
    assert_eq!(
        gw.get("Location/ror-loc-9").await.expect(200).json()["status"],
        "inactive"
    );
    // nothing of region 11 is touched, though gone too; nor the place a unit of 11 still
    // points at; nor eg-2 (tagged 06, parent of oi-5 of region 11, still in the ROR)
    for open in [
        "HealthcareService/ror-hs-3",
        "Organization/ror-oi-3",
        "Location/ror-loc-3",
        "Location/ror-loc-shared",
        "Organization/ror-eg-2",
        "HealthcareService/ror-hs-4",
    ] {
        assert_eq!(version(&gw, open).await, "1", "{open}");
    }
    // the regional listing asked for the region's offers and organisations only
    let q = s.ror.with(|r| r.stats.queries.clone());
    let tagged = format!(
        "_tag={}",
        form_urlencoded::byte_serialize(format!("{}|06", ror_standin::REGION_SYSTEM).as_bytes())
            .collect::<String>()
    );
    let regional: Vec<&String> = q.iter().filter(|q| q.contains(&tagged)).collect();
    assert!(
        regional.iter().any(|q| q.starts_with("HealthcareService?"))
            && regional.iter().any(|q| q.starts_with("Organization?")),
        "{q:?}"
    );
    // a national full sync then closes the rest
    let r = s.sync(&gw, Mode::Full).await.expect("national full");
    assert_eq!(r.closed, 4, "{}", r.summary());
    assert_eq!(
        gw.get("Location/ror-loc-shared").await.expect(200).json()["status"],
        "inactive"
    );
    assert_eq!(
        gw.get("HealthcareService/ror-hs-3")
            .await
            .expect(200)
            .json()["active"],
        false
    );
});

/// A ROR offer with its champ d'activité, mode de prise en charge, type d'offre and
/// activité opérationnelle, at unit 0's organisation and place.
fn offer(id: &str, activity: &str, mode: &str, offer_type: &str, specialty: &str) -> Value {
    let cc = |system: &str, code: &str| json!([{"coding": [{"system": format!("https://mos.esante.gouv.fr/NOS/{system}"), "code": code}]}]);
    json!({"resourceType": "HealthcareService", "id": id,
        "meta": {"lastUpdated": ror_standin::OLD, "tag": [{"system": ror_standin::REGION_SYSTEM, "code": "11"}]},
        "identifier": [{"value": format!("11/{id}")}], "active": true, "name": id,
        "providedBy": {"reference": "Organization/oi-0"},
        "location": [{"reference": "Location/loc-0"}],
        "type": cc("TRE_R227-ChampActivite/FHIR/TRE-R227-ChampActivite", activity),
        "characteristic": cc("TRE_R213-ModePriseEnCharge/FHIR/TRE-R213-ModePriseEnCharge", mode),
        "category": cc("TRE_R244-CategorieOrganisation/FHIR/TRE-R244-CategorieOrganisation", offer_type),
        "specialty": cc("TRE_R211-ActiviteOperationnelle/FHIR/TRE-R211-ActiviteOperationnelle", specialty)})
}

on_engines!(palliative_and_ehpad_units_by_their_nos_codes, |gw| {
    let mut ror = standin_data(4);
    // USP: type d'offre TRE_R244 175, activité TRE_R211 170 "Soins palliatifs"
    ror.put(offer("usp", "01", "28", "175", "170"));
    // lits identifiés de soins palliatifs (TRE_R211 076) in a medicine unit: not an USP
    ror.put(offer("lisp", "01", "28", "238", "076"));
    // équipe mobile de soins palliatifs (TRE_R244 252): not an USP
    ror.put(offer("emsp", "01", "52", "252", "170"));
    // médico-social hébergement of a MAS (TRE_R244 40): not an EHPAD
    ror.put(offer("mas", "04", "46", "40", "293"));
    let s = setup(ror, |_| {}).await;
    let r = s.sync(&gw, Mode::Full).await.expect("sync");
    assert_eq!(r.unknown_code_count, 0, "{:?}", r.unknown_codes);
    let sorted = |mut v: Vec<String>| {
        v.sort();
        v
    };
    assert_eq!(
        gw.search_ids("HealthcareService?module=USP").await,
        ["ror-usp"]
    );
    assert_eq!(
        gw.search_ids("HealthcareService?module=EHPAD").await,
        ["ror-hs-2"]
    );
    assert_eq!(
        sorted(gw.search_ids("HealthcareService?module=SMR").await),
        ["ror-hs-0"]
    );
    let usp = gw.get("HealthcareService/ror-usp").await.expect(200).json();
    assert_eq!(
        usp["program"],
        json!([{"coding": [{"system": "https://passerelle.dev/fhir/CodeSystem/directory-module",
            "code": "USP", "display": "Unité de soins palliatifs"}]}])
    );
    for other in ["lisp", "emsp", "mas"] {
        let hs = gw
            .get(&format!("HealthcareService/ror-{other}"))
            .await
            .expect(200)
            .json();
        assert!(hs.get("program").is_none(), "{other}: {hs}");
    }
    // the type d'offre is searchable by the ROR's parameter name
    assert_eq!(
        gw.search_ids("HealthcareService?service-category=175")
            .await,
        ["ror-usp"]
    );
});

on_engines!(mutual_tls_with_a_client_certificate, |gw| {
    let pki = tokio::task::spawn_blocking(TestPki::generate)
        .await
        .unwrap();
    let standin = Standin::start_tls(standin_data(3), &pki).await;
    // with a certificate, no secret (tls_client_auth); without, the secret of profile 0
    let config = |cert: Option<(&std::path::Path, &std::path::Path)>, trust: bool| {
        let mut c = standin.config();
        if cert.is_some() {
            c.client_secret = None;
        }
        c.tls_client_cert = cert.map(|(c, _)| c.to_owned());
        c.tls_client_key = cert.map(|(_, k)| k.to_owned());
        c.tls_ca_file = trust.then(|| pki.ca.clone());
        // TLS 1.3: the ROR refuses a client certificate after the client's side of the
        // handshake; on loopback its alert may close the connection before the request is
        // sent ("connection was not ready", cause unknown), which is retried, while the
        // refusal itself is not: enough retries that the test always sees the refusal
        c.max_retries = 12;
        c
    };
    let sync = |c: passerelle::config::RorConfig| {
        let fhir = gw.app.fhir.clone();
        async move {
            let (d, client) = Directory::from_config(&c).expect("directory");
            let opts = d.options(Mode::Full, "test", false);
            sync::run(&fhir, &client.expect("client"), &d.mapping, &opts).await
        }
    };
    let client = (pki.client_cert.as_path(), pki.client_key.as_path());
    let rogue = (pki.rogue_cert.as_path(), pki.rogue_key.as_path());
    // a secret but no client certificate; one from another CA; the right one, but the
    // server's CA not trusted: each fails at the token endpoint, the error says what TLS
    // refused, and a refusal is not retried
    for (case, c, says) in [
        ("no certificate", config(None, true), "CertificateRequired"),
        (
            "untrusted certificate",
            config(Some(rogue), true),
            "UnknownCA",
        ),
        (
            "server not trusted",
            config(Some(client), false),
            "UnknownIssuer",
        ),
    ] {
        let before = standin.with(|r| r.stats.tls_refused.len());
        let e = sync(c).await.expect_err(case).to_string();
        assert!(
            e.starts_with("ROR token endpoint") && e.contains(says),
            "{case}: {e}"
        );
        let refusals = standin.with(|r| r.stats.tls_refused.len()) - before;
        assert!(
            refusals < 12,
            "{case}: {refusals} handshakes: retried a refusal"
        );
    }
    let refused = standin.with(|r| r.stats.tls_refused.clone());
    assert!(
        refused.iter().any(|r| r.contains("no certificate")),
        "{refused:?}"
    );
    assert!(
        refused.iter().any(|r| r.contains("UnknownIssuer")),
        "{refused:?}"
    );
    assert_eq!(standin.with(|r| r.stats.tokens_issued), 0);
    // nothing was written
    for t in ["HealthcareService", "Organization", "Location"] {
        assert!(gw.search_ids(t).await.is_empty(), "{t}");
    }
    // with the right certificate: a token by tls_client_auth (no secret), the whole sync
    let r = sync(config(Some(client), true)).await.expect("mutual TLS");
    assert_eq!(r.created, 3 + 3 + 3 + 2 + 1, "{}", r.summary());
    assert_eq!(standin.with(|r| r.stats.tokens_issued), 1);
    let hs = gw
        .get("HealthcareService/ror-hs-0")
        .await
        .expect(200)
        .json();
    assert_eq!(hs["meta"]["source"], standin.base.as_str());
    assert!(standin.base.starts_with("https://127.0.0.1:"));
});

on_engines!(failure_half_way_then_resume, |gw| {
    // 21 units: pages of 7 offers; the third page fails beyond the retries
    let s = setup(standin_data(21), |_| {}).await;
    s.ror.with(|r| r.faults.fail_page = Some((2, 10)));
    let e = s.sync(&gw, Mode::Full).await.unwrap_err();
    assert!(e.to_string().contains("500"), "{e}");
    assert_eq!(
        s.ror.with(|r| r.stats.failed),
        4,
        "the first try and 3 retries"
    );
    // what the first two pages brought is there, whole (and is not closed)
    assert_eq!(
        gw.search_ids("HealthcareService?_count=100").await.len(),
        14
    );
    assert_eq!(
        gw.search_ids("HealthcareService?active=false").await.len(),
        0
    );
    // no high-water mark was recorded: the next delta is a full sync, and completes
    s.ror.with(|r| r.faults.fail_page = None);
    let r = s.sync(&gw, Mode::Delta).await.expect("resume");
    assert!(r.full, "no completed run yet: full");
    assert_eq!(r.closed, 0);
    assert_eq!(r.created + r.unchanged, 21 * 3 + 11 + 6, "{}", r.summary());
    assert!(r.unchanged > 0 && r.created > 0, "{}", r.summary());
    assert_eq!(
        gw.search_ids("HealthcareService?_count=100").await.len(),
        21
    );
    assert_eq!(version(&gw, "HealthcareService/ror-hs-0").await, "1");
    // and the next delta starts from this completed run
    let d = s.sync(&gw, Mode::Delta).await.expect("delta");
    assert!(!d.full && d.fetched == 0, "{}", d.summary());
});

on_engines!(token_expiring_mid_sync_and_429_back_off, |gw| {
    let s = setup(standin_data(21), |_| {}).await;
    s.ror.with(|r| {
        r.faults.token_uses = Some(2);
        r.faults.throttle = 2;
    });
    let started = std::time::Instant::now();
    let r = s.sync(&gw, Mode::Full).await.expect("sync");
    assert_eq!(r.created, 21 + 21 + 21 + 11 + 6, "{}", r.summary());
    let stats = s.ror.with(|r| {
        (
            r.stats.tokens_issued,
            r.stats.unauthorized,
            r.stats.throttled,
        )
    });
    assert!(
        stats.0 >= 2 && stats.1 >= 1,
        "tokens renewed on 401: {stats:?}"
    );
    assert_eq!(stats.2, 2);
    assert!(r.retries >= 2 && r.tokens >= 2, "{}", r.summary());
    // Retry-After: 30 was capped by retry_max_ms
    assert!(started.elapsed() < std::time::Duration::from_secs(10));
});

on_engines!(malformed_skipped_unknown_codes_kept, |gw| {
    let mut ror = standin_data(4);
    ror.put(json!({"resourceType": "HealthcareService", "id": "bad-1", "meta": {"lastUpdated": ror_standin::OLD},
        "name": 12, "active": true}));
    ror.put(json!({"resourceType": "HealthcareService", "id": "bad-2", "meta": {"lastUpdated": ror_standin::OLD},
        "active": "yes"}));
    ror.put(json!({"resourceType": "HealthcareService", "id": "odd-1", "meta": {"lastUpdated": ror_standin::OLD},
        "name": "Code inconnu",
        "characteristic": [{"coding": [{"system": "https://mos.esante.gouv.fr/NOS/TRE_R213-ModePriseEnCharge/FHIR/TRE-R213-ModePriseEnCharge", "code": "99"}]}]}));
    let s = setup(ror, |_| {}).await;
    let r = s.sync(&gw, Mode::Full).await.expect("sync");
    assert_eq!(r.malformed_count, 2, "{}", r.summary());
    let ids: Vec<&str> = r.malformed.iter().map(|(id, _)| id.as_str()).collect();
    assert!(
        ids.contains(&"HealthcareService/bad-1") && ids.contains(&"HealthcareService/bad-2"),
        "{ids:?}"
    );
    assert!(
        r.malformed.iter().any(|(_, why)| why.contains("name")),
        "{:?}",
        r.malformed
    );
    assert_eq!(
        r.unknown_codes,
        vec![(
            "HealthcareService/odd-1".to_owned(),
            "care_mode 99".to_owned()
        )]
    );
    gw.get("HealthcareService/ror-bad-1").await.expect(404);
    let odd = gw
        .get("HealthcareService/ror-odd-1")
        .await
        .expect(200)
        .json();
    assert_eq!(odd["characteristic"][0]["coding"][0]["code"], "99");
    gw.get("HealthcareService/ror-hs-3").await.expect(200);
});

on_engines!(headers_and_credentials_are_required, |gw| {
    let s = setup(standin_data(2), |c| {
        c.business_role_code = Some("WRONG".into())
    })
    .await;
    let e = s.sync(&gw, Mode::Full).await.unwrap_err().to_string();
    assert!(e.contains("403"), "{e}");
    assert_eq!(s.ror.with(|r| r.stats.forbidden), 1, "403 is not retried");
    let s = setup(standin_data(2), |c| c.client_secret = Some("wrong".into())).await;
    let e = s.sync(&gw, Mode::Full).await.unwrap_err().to_string();
    assert!(
        e.contains("token") && e.contains("401") && !e.contains("wrong"),
        "{e}"
    );
    gw.get("HealthcareService/ror-hs-0").await.expect(404);
});

on_engines!(directory_search_for_prescribers, |gw| {
    let s = setup(standin_data(12), |_| {}).await;
    s.sync(&gw, Mode::Full).await.expect("sync");
    let sorted = |mut v: Vec<String>| {
        v.sort();
        v
    };
    let module = "https://passerelle.dev/fhir/CodeSystem/directory-module";
    assert_eq!(
        sorted(
            gw.search_ids(&format!("HealthcareService?module={module}|SMR"))
                .await
        ),
        ["ror-hs-0", "ror-hs-4", "ror-hs-8"]
    );
    assert_eq!(
        sorted(gw.search_ids("HealthcareService?module=HAD").await),
        ["ror-hs-1", "ror-hs-5", "ror-hs-9"]
    );
    assert_eq!(
        sorted(gw.search_ids("HealthcareService?module=EHPAD").await).len(),
        3
    );
    // champ d'activité and mode de prise en charge, by the ROR's parameter names
    assert_eq!(
        gw.search_ids("HealthcareService?service-type=02")
            .await
            .len(),
        3
    );
    assert_eq!(
        gw.search_ids("HealthcareService?characteristic=28")
            .await
            .len(),
        6
    );
    // place: postcode and town, on Location and chained from the unit
    assert_eq!(
        sorted(
            gw.search_ids("HealthcareService?location.address-postalcode=75001&module=HAD")
                .await
        ),
        ["ror-hs-1"]
    );
    assert_eq!(gw.search_ids("Location?address-city=Paris").await.len(), 4);
    // beds available now: records with status 02, temporality 01 (i % 3 beds for unit i)
    assert_eq!(
        sorted(gw.search_ids("Location?available-beds=gt1").await),
        ["ror-loc-11", "ror-loc-2", "ror-loc-5", "ror-loc-8"]
    );
    assert_eq!(
        sorted(
            gw.search_ids("HealthcareService?location.available-beds=gt0&module=SMR")
                .await
        ),
        ["ror-hs-4", "ror-hs-8"]
    );
    // distance from a point: unit i is i/1000 degree of latitude north of 48.85|2.35
    let near = sorted(
        gw.search_ids("Location?near=48.85|2.35|0.5|km&_count=50")
            .await,
    );
    assert_eq!(
        near,
        [
            "ror-loc-0",
            "ror-loc-1",
            "ror-loc-2",
            "ror-loc-3",
            "ror-loc-4"
        ]
    );
    assert_eq!(
        gw.search_ids("Location?near=48.85|2.35|500|m").await.len(),
        5
    );
    assert_eq!(
        gw.search_ids("Location?near=48.85|2.35|1.2").await.len(),
        11
    );
    assert_eq!(
        gw.search_ids("Location?near=43.3|5.4|100|km").await.len(),
        0
    );
    assert_eq!(
        sorted(
            gw.search_ids("HealthcareService?location.near=48.85|2.35|0.5|km&module=SMR")
                .await
        ),
        ["ror-hs-0", "ror-hs-4"]
    );
    gw.get("Location?near=north").await.expect(400);
    let loc = gw.get("Location/ror-loc-5").await.expect(200).json();
    let beds: Vec<&Value> = loc["extension"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["url"] == "https://passerelle.dev/fhir/StructureDefinition/available-beds")
        .collect();
    assert_eq!(beds[0]["valueInteger"], 2);
});

#[tokio::test]
async fn two_syncs_at_once_take_turns() {
    let Some(gw) = common::spawn(common::Engine::Sqlite).await else {
        return;
    };
    let s = setup(standin_data(3), |_| {}).await;
    let fhir = gw.app.fhir.clone();
    // another instance holds the lease
    fhir.store
        .write(|tx| {
            Box::pin(async move { tx.conn().take_sync_lease("ror", "other", 0, i64::MAX).await })
        })
        .await
        .unwrap();
    let e = s.sync(&gw, Mode::Full).await.unwrap_err();
    assert!(matches!(e, SyncError::Busy), "{e}");
    fhir.store
        .write(|tx| Box::pin(async move { tx.conn().release_sync_lease("ror", "other").await }))
        .await
        .unwrap();
    s.sync(&gw, Mode::Full).await.expect("free again");
}

/// The real binary: `passerelle ror sync` configured by environment, its summary and its
/// list of malformed resources on stderr, and never the secret, even at debug level.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_command_line_syncs_and_reports() {
    let mut ror = standin_data(4);
    ror.put(json!({"resourceType": "HealthcareService", "id": "bad-1", "name": 12}));
    let s = Standin::start(ror).await;
    let (url, _guard) = common::fresh_database(common::Engine::Sqlite)
        .await
        .unwrap();
    let c = s.config();
    type Changes = &'static [(&'static str, Option<&'static str>)];
    let run = move |args: &'static [&'static str], changes: Changes| {
        let c = c.clone();
        let url = url.clone();
        tokio::task::spawn_blocking(move || {
            let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_passerelle"));
            cmd.args(args)
                .env_remove("PASSERELLE_CONFIG")
                .env("DATABASE_URL", url)
                .env("PASSERELLE_LOG", "debug")
                .env("PASSERELLE_ROR__BASE_URL", c.base_url.unwrap())
                .env("PASSERELLE_ROR__TOKEN_URL", c.token_url.unwrap())
                .env("PASSERELLE_ROR__CLIENT_ID", ror_standin::CLIENT_ID)
                .env("PASSERELLE_ROR__CLIENT_SECRET", ror_standin::CLIENT_SECRET)
                .env("PASSERELLE_ROR__USER_PROFILE_CODE", ror_standin::PROFILE)
                .env("PASSERELLE_ROR__BUSINESS_ROLE_CODE", ror_standin::ROLE)
                .env("PASSERELLE_ROR__USE_EXPORT", "false");
            for (k, v) in changes {
                match v {
                    Some(v) => cmd.env(k, v),
                    None => cmd.env_remove(k),
                };
            }
            cmd.output().unwrap()
        })
    };
    // a credential is required, and a client certificate goes with its key: refused at
    // start, naming the keys, before anything is asked of the ROR
    let out = run(
        &["ror", "sync", "--full"],
        &[("PASSERELLE_ROR__CLIENT_SECRET", None)],
    )
    .await
    .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("client_secret") && err.contains("tls_client_cert"),
        "{err}"
    );
    let out = run(
        &["ror", "sync", "--full"],
        &[(
            "PASSERELLE_ROR__TLS_CLIENT_CERT",
            Some("/etc/passerelle/ror.crt"),
        )],
    )
    .await
    .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("tls_client_key"),
        "{err}"
    );
    assert_eq!(s.with(|r| r.stats.tokens_issued), 0);
    let out = run(&["ror", "sync", "--full"], &[]).await.unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{err}");
    assert!(
        err.contains("full sync: fetched") && err.contains("created 15"),
        "{err}"
    );
    assert!(err.contains("malformed HealthcareService/bad-1"), "{err}");
    assert!(
        !err.contains(ror_standin::CLIENT_SECRET),
        "the secret leaked: {err}"
    );
    assert!(!err.contains("tok-1"), "the token leaked");
    let out = run(&["ror", "sync"], &[]).await.unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success() && err.contains("delta sync: fetched 0"),
        "{err}"
    );
    let out = run(&["ror", "sync", "--full", "--delta"], &[])
        .await
        .unwrap();
    assert!(!out.status.success());
}
