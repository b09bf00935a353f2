//! Parse and serialise costs of FHIR JSON and FHIR XML, side by side, for one admission Task
//! and a 100-entry searchset Bundle of them. Run by `bench/run.sh`; alone:
//!
//!     cargo run --release --example formats [-- path/to/task.json]
//!
//! Each operation runs FORMATS_MILLIS (1500) in all, in FORMATS_ROUNDS (5) turns taken with
//! the others; the best turn counts.
//!
//! Instruction counts (steady on a busy machine) come from the `count` mode under callgrind,
//! which runs one operation N times inside `measured` and nothing else:
//!
//!     valgrind --tool=callgrind --toggle-collect='*formats*measured*' \
//!         target/release/examples/formats count xml-parse task 100
//!
//! (operations: json-parse, xml-parse, json-write, xml-write, and json-body, xml-body and
//! validate for a request body's whole path; documents: task, bundle); the collected total
//! divided by N is the cost of one operation.

use std::time::{Duration, Instant};

use passerelle::fhir::json::parse_resource;
use passerelle::fhir::model::Model;
use passerelle::fhir::validate::validate_resource;
use passerelle::fhir::xml::{from_xml, to_xml};
use serde_json::{Value, json};

/// Runs `f` repeatedly for about `budget`; returns operations per second.
fn rate(budget: Duration, mut f: impl FnMut()) -> f64 {
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

/// The best rate of each operation over `rounds` runs of `budget / rounds`, the operations
/// taking turns: on a shared machine a busy stretch then slows one side only by chance, and
/// the best run of each is the least disturbed.
fn best_rates<const N: usize>(budget: Duration, rounds: u32, ops: [&dyn Fn(); N]) -> [f64; N] {
    for f in ops {
        for _ in 0..50 {
            f();
        }
    }
    let slice = budget / rounds.max(1);
    let mut best = [0f64; N];
    for _ in 0..rounds.max(1) {
        for (b, f) in best.iter_mut().zip(ops) {
            *b = b.max(rate(slice, f));
        }
    }
    best
}

/// The benchmark's two documents: the Task read from `path` and a 100-entry searchset Bundle
/// of copies of it.
fn documents(path: &str) -> Result<(Value, Value), Box<dyn std::error::Error>> {
    let task: Value = serde_json::from_str(&std::fs::read_to_string(path)?)?;
    let entries: Vec<Value> = (0..100)
        .map(|i| {
            let mut t = task.clone();
            t["id"] = json!(format!("task-{i}"));
            json!({"fullUrl": format!("http://127.0.0.1/fhir/Task/task-{i}"), "resource": t, "search": {"mode": "match"}})
        })
        .collect();
    let bundle =
        json!({"resourceType": "Bundle", "type": "searchset", "total": 100, "entry": entries});
    Ok((task, bundle))
}

/// The operations compared, on the same document in both formats.
#[derive(Clone, Copy)]
enum Op {
    /// `serde_json::from_str` alone (with `arbitrary_precision` and `preserve_order`, as the
    /// server builds it): the strictest JSON side, the one the table compares against.
    JsonParse,
    /// XML text to the JSON value, the XML reader's own checks included.
    XmlParse,
    JsonWrite,
    XmlWrite,
    /// What a request body costs before validation, in `rest::parse_body`: JSON through
    /// `json::parse_resource` (from bytes, nesting check), XML checked as UTF-8 then read.
    JsonBody,
    XmlBody,
    /// `validate::validate_resource`, which both formats run next on a request body.
    Validate,
}

/// The document in both forms, as each operation takes it.
struct Doc<'a> {
    value: &'a Value,
    json_text: String,
    xml_text: String,
}

fn run(model: &Model, op: Op, d: &Doc) {
    match op {
        Op::JsonParse => {
            let v: Value = serde_json::from_str(&d.json_text).unwrap_or_default();
            std::hint::black_box(v);
        }
        Op::XmlParse => {
            std::hint::black_box(from_xml(model, &d.xml_text).unwrap_or_default());
        }
        Op::JsonBody => {
            std::hint::black_box(parse_resource(d.json_text.as_bytes()).unwrap_or_default());
        }
        Op::XmlBody => {
            let v = std::str::from_utf8(d.xml_text.as_bytes())
                .ok()
                .and_then(|t| from_xml(model, t).ok())
                .unwrap_or_default();
            std::hint::black_box(v);
        }
        Op::Validate => {
            std::hint::black_box(validate_resource(model, d.value));
        }
        Op::JsonWrite => {
            std::hint::black_box(serde_json::to_string(d.value).unwrap_or_default());
        }
        Op::XmlWrite => {
            std::hint::black_box(to_xml(model, d.value).unwrap_or_default());
        }
    }
}

/// The only code callgrind collects in `count` mode.
#[inline(never)]
fn measured(model: &Model, op: Op, d: &Doc, n: u64) {
    for _ in 0..n {
        run(model, op, d);
    }
}

fn doc<'a>(model: &Model, value: &'a Value) -> Result<Doc<'a>, Box<dyn std::error::Error>> {
    let d = Doc {
        value,
        json_text: serde_json::to_string(value)?,
        xml_text: to_xml(model, value)?,
    };
    // the XML must read back to the same resource, or the comparison means nothing
    if &from_xml(model, &d.xml_text)? != value {
        return Err("the XML does not read back to the same resource".into());
    }
    Ok(d)
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let model = Model::r4();
    if args.first().map(String::as_str) == Some("count") {
        let op = match args.get(1).map(String::as_str) {
            Some("json-parse") => Op::JsonParse,
            Some("xml-parse") => Op::XmlParse,
            Some("json-write") => Op::JsonWrite,
            Some("xml-write") => Op::XmlWrite,
            Some("json-body") => Op::JsonBody,
            Some("xml-body") => Op::XmlBody,
            Some("validate") => Op::Validate,
            _ => {
                return Err(
                    "count OP DOC N: OP is json-parse, xml-parse, json-write, xml-write, json-body, xml-body or validate".into(),
                );
            }
        };
        let (task, bundle) = documents("bench/data/task.json")?;
        let value = match args.get(2).map(String::as_str) {
            Some("task") => &task,
            Some("bundle") => &bundle,
            _ => return Err("count OP DOC N: DOC is task or bundle".into()),
        };
        let n = args.get(3).and_then(|n| n.parse().ok()).unwrap_or(100);
        let d = doc(model, value)?;
        // warm: the model, the allocator's pools
        measured(model, op, &d, 0);
        run(model, op, &d);
        measured(model, op, &d, n);
        return Ok(());
    }
    let path = args
        .first()
        .cloned()
        .unwrap_or_else(|| "bench/data/task.json".to_owned());
    let (task, bundle) = documents(&path)?;
    let env = |name: &str, default: u64| {
        std::env::var(name)
            .ok()
            .and_then(|m| m.parse().ok())
            .unwrap_or(default)
    };
    // FORMATS_MILLIS per operation in all, in FORMATS_ROUNDS turns
    let budget = Duration::from_millis(env("FORMATS_MILLIS", 1500));
    let rounds = env("FORMATS_ROUNDS", 5) as u32;
    println!(
        "| document | bytes JSON / XML | JSON parse /s | XML parse /s | parse XML÷JSON time | JSON write /s | XML write /s | write XML÷JSON time |"
    );
    println!("| --- | --- | --- | --- | --- | --- | --- | --- |");
    for (name, value) in [("Task", &task), ("searchset Bundle, 100 Tasks", &bundle)] {
        let d = doc(model, value)?;
        let d = &d;
        let op = |op| move || run(model, op, d);
        let [jp, xp, jw, xw] = best_rates(
            budget,
            rounds,
            [
                &op(Op::JsonParse),
                &op(Op::XmlParse),
                &op(Op::JsonWrite),
                &op(Op::XmlWrite),
            ],
        );
        println!(
            "| {name} | {} / {} | {jp:.0} | {xp:.0} | {:.2} | {jw:.0} | {xw:.0} | {:.2} |",
            d.json_text.len(),
            d.xml_text.len(),
            jp / xp,
            jw / xw
        );
    }
    Ok(())
}
