//! Parse and serialise costs of FHIR JSON and FHIR XML, side by side, for one admission Task
//! and a 100-entry searchset Bundle of them. Run by `bench/run.sh`; alone:
//!
//!     cargo run --release --example formats [-- path/to/task.json]

use std::time::{Duration, Instant};

use passerelle::fhir::model::Model;
use passerelle::fhir::xml::{from_xml, to_xml};
use serde_json::{Value, json};

/// Runs `f` repeatedly for about `budget`; returns operations per second.
fn rate(budget: Duration, mut f: impl FnMut()) -> f64 {
    for _ in 0..50 {
        f();
    }
    let start = Instant::now();
    let mut n = 0u64;
    while start.elapsed() < budget {
        for _ in 0..20 {
            f();
        }
        n += 20;
    }
    n as f64 / start.elapsed().as_secs_f64()
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let path = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "bench/data/task.json".to_owned());
    let task: Value = serde_json::from_str(&std::fs::read_to_string(&path)?)?;
    let entries: Vec<Value> = (0..100)
        .map(|i| {
            let mut t = task.clone();
            t["id"] = json!(format!("task-{i}"));
            json!({"fullUrl": format!("http://127.0.0.1/fhir/Task/task-{i}"), "resource": t, "search": {"mode": "match"}})
        })
        .collect();
    let bundle =
        json!({"resourceType": "Bundle", "type": "searchset", "total": 100, "entry": entries});
    let model = Model::r4();
    let budget = Duration::from_millis(
        std::env::var("FORMATS_MILLIS")
            .ok()
            .and_then(|m| m.parse().ok())
            .unwrap_or(1500),
    );
    println!(
        "| document | bytes JSON / XML | JSON parse /s | XML parse /s | parse XML÷JSON time | JSON write /s | XML write /s | write XML÷JSON time |"
    );
    println!("| --- | --- | --- | --- | --- | --- | --- | --- |");
    for (name, doc) in [("Task", &task), ("searchset Bundle, 100 Tasks", &bundle)] {
        let json_text = serde_json::to_string(doc)?;
        let xml_text = to_xml(model, doc)?;
        // the XML must read back to the same resource, or the comparison means nothing
        assert_eq!(
            &from_xml(model, &xml_text)?,
            doc,
            "XML round trip of {name}"
        );
        let jp = rate(budget, || {
            let v: Value = serde_json::from_str(&json_text).unwrap_or_default();
            std::hint::black_box(v);
        });
        let xp = rate(budget, || {
            let v = from_xml(model, &xml_text).unwrap_or_default();
            std::hint::black_box(v);
        });
        let jw = rate(budget, || {
            std::hint::black_box(serde_json::to_string(doc).unwrap_or_default());
        });
        let xw = rate(budget, || {
            std::hint::black_box(to_xml(model, doc).unwrap_or_default());
        });
        println!(
            "| {name} | {} / {} | {jp:.0} | {xp:.0} | {:.2} | {jw:.0} | {xw:.0} | {:.2} |",
            json_text.len(),
            xml_text.len(),
            jp / xp,
            jw / xw
        );
    }
    Ok(())
}
