//! `$observatory` (contract §3): indicators per unit over a period, computed from each
//! request's history of versions (every move is a version), for one unit, one
//! establishment's units, or every unit.

use std::collections::BTreeMap;

use serde_json::{Value, json};

use super::moves::{business_status, output};
use super::{Workflow, reference_id};
use crate::export::Table;
use crate::fhir::error::{Error, Result};
use crate::fhir::interaction::{Fhir, Req};
use crate::store::Conn;
use crate::time::{Micros, fhir_date_range};

const HOUR: f64 = 3_600.0 * 1_000_000.0;
const DAY: f64 = 24.0 * HOUR;

/// The statuses that count as the unit's first answer (reading is not an answer).
const ANSWERS: &[&str] = &[
    "info-requested",
    "agreed-in-principle",
    "admission-proposed",
    "refused",
];

/// What one unit's requests add up to.
#[derive(Debug, Default, Clone)]
struct Tally {
    received: u64,
    read: u64,
    agreed: u64,
    proposed: u64,
    admitted: u64,
    refused: u64,
    refused_reasons: BTreeMap<String, u64>,
    cancelled: u64,
    auto_cancelled: u64,
    open: u64,
    first_answer_hours: Vec<f64>,
    admission_days: Vec<f64>,
    wished_to_actual_days: Vec<f64>,
}

impl Tally {
    fn add(&mut self, o: &Tally) {
        self.received += o.received;
        self.read += o.read;
        self.agreed += o.agreed;
        self.proposed += o.proposed;
        self.admitted += o.admitted;
        self.refused += o.refused;
        for (k, v) in &o.refused_reasons {
            *self.refused_reasons.entry(k.clone()).or_default() += v;
        }
        self.cancelled += o.cancelled;
        self.auto_cancelled += o.auto_cancelled;
        self.open += o.open;
        self.first_answer_hours.extend(&o.first_answer_hours);
        self.admission_days.extend(&o.admission_days);
        self.wished_to_actual_days.extend(&o.wished_to_actual_days);
    }
}

/// The `p`-th percentile (nearest rank) of `values`; `None` when empty.
pub fn percentile(values: &[f64], p: f64) -> Option<f64> {
    if values.is_empty() {
        return None;
    }
    let mut v = values.to_vec();
    v.sort_by(f64::total_cmp);
    let rank = ((p / 100.0) * v.len() as f64).ceil().max(1.0) as usize;
    v.get(rank - 1).copied()
}

fn round1(x: f64) -> f64 {
    (x * 10.0).round() / 10.0
}

fn at(s: Option<&str>) -> Option<Micros> {
    s.and_then(fhir_date_range).map(|r| r.0)
}

/// The indicators' names and values, in order (for Parameters parts and table columns).
fn indicators(t: &Tally) -> Vec<(String, Value)> {
    let mut out: Vec<(String, Value)> = vec![
        ("received".into(), json!(t.received)),
        ("read".into(), json!(t.read)),
        ("agreed".into(), json!(t.agreed)),
        ("proposed".into(), json!(t.proposed)),
        ("admitted".into(), json!(t.admitted)),
        ("refused".into(), json!(t.refused)),
        ("cancelled".into(), json!(t.cancelled)),
        ("auto-cancelled".into(), json!(t.auto_cancelled)),
        ("open".into(), json!(t.open)),
    ];
    let rate = if t.received == 0 {
        None
    } else {
        Some(round1(100.0 * t.admitted as f64 / t.received as f64))
    };
    out.push((
        "admission-rate".into(),
        rate.map_or(Value::Null, |r| json!(r)),
    ));
    for (name, values) in [
        ("first-answer-hours", &t.first_answer_hours),
        ("admission-days", &t.admission_days),
        ("wished-to-actual-days", &t.wished_to_actual_days),
    ] {
        for (suffix, p) in [("median", 50.0), ("p90", 90.0)] {
            let v = percentile(values, p).map(round1);
            out.push((
                format!("{name}-{suffix}"),
                v.map_or(Value::Null, |x| json!(x)),
            ));
        }
    }
    out
}

fn part(name: &str, v: &Value) -> Option<Value> {
    match v {
        Value::Null => None,
        Value::Number(n) if n.is_u64() => Some(json!({"name": name, "valueInteger": n})),
        v => Some(json!({"name": name, "valueDecimal": v})),
    }
}

impl Workflow {
    async fn tally_task(
        &self,
        conn: &mut Conn<'_>,
        id: &str,
        wished: Option<Micros>,
    ) -> Result<Tally> {
        let (versions, _) = conn
            .history(Some("Task"), Some(id), None, 10_000, 0)
            .await?;
        let mut t = Tally {
            received: 1,
            ..Tally::default()
        };
        let mut seen: Vec<(String, Micros)> = Vec::new();
        let mut last: Option<Value> = None;
        for v in versions.iter().rev() {
            let Some(body) = v
                .body
                .as_deref()
                .and_then(|b| serde_json::from_str::<Value>(b).ok())
            else {
                continue;
            };
            if let Some(bs) = business_status(&body)
                && seen.last().is_none_or(|(s, _)| s != bs)
            {
                seen.push((bs.to_owned(), v.last_updated));
            }
            last = Some(body);
        }
        let Some(last) = last else { return Ok(t) };
        let sent = at(last["authoredOn"].as_str())
            .or(seen.first().map(|s| s.1))
            .unwrap_or(0);
        let reached = |s: &str| seen.iter().any(|(x, _)| x == s);
        // read: the unit opened it (any state but sent, or cancelled before it was opened)
        t.read = u64::from(
            seen.iter()
                .any(|(s, _)| !matches!(s.as_str(), "sent" | "cancelled" | "auto-cancelled")),
        );
        t.agreed = u64::from(reached("agreed-in-principle"));
        t.proposed = u64::from(reached("admission-proposed"));
        if let Some((_, when)) = seen.iter().find(|(s, _)| ANSWERS.contains(&s.as_str())) {
            t.first_answer_hours.push((when - sent) as f64 / HOUR);
        }
        let now = business_status(&last).unwrap_or_default().to_owned();
        match now.as_str() {
            "admitted" => {
                t.admitted = 1;
                let admitted_at = at(output(&last, "admission-date").and_then(Value::as_str))
                    .or(seen.last().map(|s| s.1))
                    .unwrap_or(sent);
                t.admission_days.push((admitted_at - sent) as f64 / DAY);
                if let Some(w) = wished {
                    t.wished_to_actual_days.push((admitted_at - w) as f64 / DAY);
                }
            }
            "refused" => {
                t.refused = 1;
                let reason = last["statusReason"]["coding"][0]["code"]
                    .as_str()
                    .unwrap_or("unknown");
                t.refused_reasons.insert(reason.to_owned(), 1);
            }
            "auto-cancelled" => t.auto_cancelled = 1,
            "cancelled" | "withdrawn" => t.cancelled = 1,
            s if self.rules.status(s).is_some_and(|x| x.open) => t.open = 1,
            _ => {}
        }
        Ok(t)
    }

    /// Runs `$observatory`: the per-unit tallies and the total.
    async fn observe(
        &self,
        fhir: &Fhir,
        conn: &mut Conn<'_>,
        req: &Req,
    ) -> Result<(Vec<(String, String, Tally)>, Tally, Value)> {
        if matches!(req.caller, crate::auth::Caller::Anonymous) {
            return Err(Error::Unauthorized(
                "$observatory needs an identified caller (X-Passerelle-Role in dev mode)".into(),
            ));
        }
        let mut params: Vec<(String, String)> =
            vec![("_count".into(), fhir.paging.max_count.to_string())];
        let mut period = json!({});
        for (k, v) in &req.query {
            match k.as_str() {
                "unit" => params.push(("owner".into(), v.clone())),
                "establishment" => {
                    params.push(("owner:HealthcareService.organization".into(), v.clone()))
                }
                "from" => {
                    params.push(("authored-on".into(), format!("ge{v}")));
                    period["start"] = json!(v);
                }
                "to" => {
                    params.push(("authored-on".into(), format!("le{v}")));
                    period["end"] = json!(v);
                }
                "_format" | "_pretty" => {}
                other => {
                    return Err(Error::invalid(
                        "not-supported",
                        format!(
                            "$observatory has no parameter `{other}` (unit, establishment, from, to)"
                        ),
                    ));
                }
            }
        }
        for (k, v) in &req.query {
            if (k == "from" || k == "to") && fhir_date_range(v).is_none() {
                return Err(Error::invalid(
                    "invalid",
                    format!("`{k}={v}` is not a FHIR date"),
                ));
            }
        }
        params.push(("_profile".into(), super::profile::ADMISSION_TASK.into()));
        let s = fhir.parse_search("Task", &params, true)?;
        let mut query = s.query;
        let mut tasks = Vec::new();
        loop {
            let page = conn.search(&query).await?;
            let n = page.len();
            tasks.extend(page);
            if n < query.limit {
                break;
            }
            query.offset += n;
        }
        let mut wished: BTreeMap<String, Option<Micros>> = BTreeMap::new();
        let mut units: BTreeMap<String, (String, Tally)> = BTreeMap::new();
        for stored in &tasks {
            let Some(body) = stored
                .body
                .as_deref()
                .and_then(|b| serde_json::from_str::<Value>(b).ok())
            else {
                continue;
            };
            let unit = reference_id(&body["owner"], "HealthcareService").unwrap_or_default();
            let sr = reference_id(&body["focus"], "ServiceRequest").unwrap_or_default();
            if !wished.contains_key(&sr) {
                let w = conn
                    .current("ServiceRequest", &sr, false)
                    .await?
                    .and_then(|s| s.body)
                    .and_then(|b| serde_json::from_str::<Value>(&b).ok())
                    .and_then(|b| {
                        at(b["occurrenceDateTime"]
                            .as_str()
                            .or(b["occurrencePeriod"]["start"].as_str()))
                    });
                wished.insert(sr.clone(), w);
            }
            let t = self.tally_task(conn, &stored.id, wished[&sr]).await?;
            let entry = units
                .entry(unit.clone())
                .or_insert_with(|| (String::new(), Tally::default()));
            entry.1.add(&t);
        }
        for (unit, (name, _)) in units.iter_mut() {
            *name = conn
                .current("HealthcareService", unit, false)
                .await?
                .and_then(|s| s.body)
                .and_then(|b| serde_json::from_str::<Value>(&b).ok())
                .and_then(|b| b["name"].as_str().map(str::to_owned))
                .unwrap_or_default();
        }
        let mut total = Tally::default();
        let list: Vec<(String, String, Tally)> = units
            .into_iter()
            .map(|(id, (name, t))| {
                total.add(&t);
                (id, name, t)
            })
            .collect();
        Ok((list, total, period))
    }

    /// `$observatory` as a `Parameters` resource.
    pub async fn observatory(&self, fhir: &Fhir, conn: &mut Conn<'_>, req: &Req) -> Result<Value> {
        let (units, total, period) = self.observe(fhir, conn, req).await?;
        let parts = |t: &Tally| -> Vec<Value> {
            let mut p: Vec<Value> = indicators(t)
                .iter()
                .filter_map(|(n, v)| part(n, v))
                .collect();
            for (reason, n) in &t.refused_reasons {
                p.push(json!({"name": "refused-reason", "part": [
                    {"name": "reason", "valueCoding": {"system": super::rules::code_system("refusal-reason"), "code": reason}},
                    {"name": "count", "valueInteger": n}
                ]}));
            }
            p
        };
        let mut out = Vec::new();
        if period != json!({}) {
            out.push(json!({"name": "period", "valuePeriod": period}));
        }
        for (id, name, t) in &units {
            let mut p = vec![
                json!({"name": "unit", "valueReference": {"reference": format!("HealthcareService/{id}"), "display": name}}),
            ];
            p.extend(parts(t));
            out.push(json!({"name": "unit", "part": p}));
        }
        out.push(json!({"name": "total", "part": parts(&total)}));
        Ok(json!({"resourceType": "Parameters", "parameter": out}))
    }

    /// `$observatory` as a table: one row per unit, then the total.
    pub async fn observatory_table(
        &self,
        fhir: &Fhir,
        conn: &mut Conn<'_>,
        req: &Req,
    ) -> Result<Table> {
        let (units, total, _) = self.observe(fhir, conn, req).await?;
        let names: Vec<String> = indicators(&total).into_iter().map(|(n, _)| n).collect();
        let mut header = vec!["unit".to_owned(), "name".to_owned()];
        header.extend(names);
        header.push("refused-reasons".into());
        let row = |id: &str, name: &str, t: &Tally| {
            let mut r = vec![id.to_owned(), name.to_owned()];
            r.extend(indicators(t).into_iter().map(|(_, v)| match v {
                Value::Null => String::new(),
                v => v.to_string(),
            }));
            r.push(
                t.refused_reasons
                    .iter()
                    .map(|(k, v)| format!("{k}: {v}"))
                    .collect::<Vec<_>>()
                    .join("; "),
            );
            r
        };
        let mut rows: Vec<Vec<String>> = units
            .iter()
            .map(|(id, name, t)| row(&format!("HealthcareService/{id}"), name, t))
            .collect();
        rows.push(row("total", "", &total));
        Ok(Table {
            sheet: "Observatoire".into(),
            header,
            rows,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nearest_rank_percentiles() {
        assert_eq!(percentile(&[], 50.0), None);
        assert_eq!(percentile(&[3.0], 90.0), Some(3.0));
        let v = [5.0, 1.0, 4.0, 2.0, 3.0];
        assert_eq!(percentile(&v, 50.0), Some(3.0));
        assert_eq!(percentile(&v, 90.0), Some(5.0));
        let ten: Vec<f64> = (1..=10).map(f64::from).collect();
        assert_eq!(percentile(&ten, 90.0), Some(9.0));
        assert_eq!(percentile(&ten, 50.0), Some(5.0));
    }
}
