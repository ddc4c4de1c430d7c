//! Results: medians over rounds per scenario and broker, the ratios dataloom/rumqttd and
//! dataloom/mosquitto, the issue-3 targets checked against them, printed as text tables and
//! written as markdown and JSON.

use std::fmt::Write as _;

use serde_json::{Value, json};

use super::brokers::Kind;
use super::scenario::Outcome;

#[derive(Clone, Copy, PartialEq, Eq)]
enum Better {
    Higher,
    Lower,
    Neither,
}

struct MetricDef {
    key: &'static str,
    label: &'static str,
    decimals: usize,
    better: Better,
}

const fn m(key: &'static str, label: &'static str, decimals: usize, better: Better) -> MetricDef {
    MetricDef { key, label, decimals, better }
}

/// Every metric a scenario may report, in display order.
const METRICS: &[MetricDef] = &[
    m("throughput", "deliveries/s", 0, Better::Higher),
    m("window_throughput", "deliveries/s in window", 0, Better::Neither),
    m("published_per_s", "published/s", 0, Better::Neither),
    m("time_s", "time (s)", 3, Better::Lower),
    m("count", "retained received", 0, Better::Higher),
    m("p50_ms", "p50 latency (ms)", 3, Better::Lower),
    m("p99_ms", "p99 latency (ms)", 3, Better::Lower),
    m("sent", "expected deliveries", 0, Better::Neither),
    m("loss", "lost", 0, Better::Lower),
    m("loss_pct", "lost (%)", 2, Better::Lower),
    m("backlog", "still queued at cut-off", 0, Better::Neither),
    m("dups", "duplicates", 0, Better::Lower),
    m("late_sends", "late sends (pacer)", 0, Better::Neither),
    m("connections", "connections", 0, Better::Neither),
    m("rss_per_conn_kib", "RSS/connection (KiB)", 2, Better::Lower),
    m("connects_per_s", "connects/s", 0, Better::Higher),
    m("connect_p50_ms", "connect p50 (ms)", 3, Better::Lower),
    m("connect_p99_ms", "connect p99 (ms)", 3, Better::Lower),
    m("peak_rss_mib", "broker peak RSS (MiB)", 1, Better::Lower),
    m("broker_cpu_pct", "broker CPU (%)", 0, Better::Neither),
    m("gen_cpu_pct", "generator CPU (%)", 0, Better::Neither),
];

/// One run of one scenario against one broker.
pub struct Run {
    pub scenario: String,
    pub broker: Kind,
    pub round: usize,
    pub outcome: Result<Outcome, String>,
}

fn median(mut v: Vec<f64>) -> Option<f64> {
    if v.is_empty() {
        return None;
    }
    v.sort_by(f64::total_cmp);
    let n = v.len();
    Some(if n % 2 == 1 { v[n / 2] } else { (v[n / 2 - 1] + v[n / 2]) / 2.0 })
}

/// Median of `key` over the successful runs of `scenario` on `broker`.
fn med(runs: &[Run], scenario: &str, broker: Kind, key: &str) -> Option<f64> {
    let vals = runs
        .iter()
        .filter(|r| r.scenario == scenario && r.broker == broker)
        .filter_map(|r| r.outcome.as_ref().ok())
        .filter_map(|o| o.metrics.iter().find(|(k, _)| *k == key).map(|&(_, v)| v))
        .collect();
    median(vals)
}

fn fmt_num(v: Option<f64>, decimals: usize) -> String {
    match v {
        None => "-".into(),
        Some(v) if decimals == 0 => {
            let s = format!("{:.0}", v.abs());
            let mut out = String::new();
            for (i, ch) in s.chars().enumerate() {
                if i > 0 && (s.len() - i) % 3 == 0 {
                    out.push(',');
                }
                out.push(ch);
            }
            if v < 0.0 { format!("-{out}") } else { out }
        }
        Some(v) => format!("{v:.decimals$}"),
    }
}

fn ratio(a: Option<f64>, b: Option<f64>) -> String {
    match (a, b) {
        (Some(a), Some(b)) if b != 0.0 => format!("{:.2}x", a / b),
        _ => "-".into(),
    }
}

/// Rows of one scenario's table: label, value per broker, dl/rumqttd, dl/mosquitto.
fn rows(runs: &[Run], scenario: &str, brokers: &[Kind]) -> Vec<Vec<String>> {
    let mut out = Vec::new();
    for d in METRICS {
        let vals: Vec<Option<f64>> = brokers.iter().map(|&b| med(runs, scenario, b, d.key)).collect();
        if vals.iter().all(Option::is_none) {
            continue;
        }
        let arrow = match d.better {
            Better::Higher => " ↑",
            Better::Lower => " ↓",
            Better::Neither => "",
        };
        let mut row = vec![format!("{}{arrow}", d.label)];
        row.extend(vals.iter().map(|v| fmt_num(*v, d.decimals)));
        let dl = med(runs, scenario, Kind::Dataloom, d.key);
        for other in [Kind::Rumqttd, Kind::Mosquitto] {
            row.push(if d.better == Better::Neither {
                String::new()
            } else {
                ratio(dl, med(runs, scenario, other, d.key))
            });
        }
        out.push(row);
    }
    out
}

fn header(brokers: &[Kind]) -> Vec<String> {
    let mut h = vec!["metric (median)".to_string()];
    h.extend(brokers.iter().map(|b| b.name().to_string()));
    h.push("dl/rumqttd".into());
    h.push("dl/mosquitto".into());
    h
}

fn text_table(rows: &[Vec<String>]) -> String {
    let cols = rows.iter().map(Vec::len).max().unwrap_or(0);
    let widths: Vec<usize> = (0..cols)
        .map(|c| rows.iter().filter_map(|r| r.get(c)).map(|s| s.chars().count()).max().unwrap_or(0))
        .collect();
    let mut s = String::new();
    for r in rows {
        for (c, cell) in r.iter().enumerate() {
            let pad = widths[c] - cell.chars().count();
            if c == 0 {
                let _ = write!(s, "  {cell}{}", " ".repeat(pad));
            } else {
                let _ = write!(s, "  {}{cell}", " ".repeat(pad));
            }
        }
        s.push('\n');
    }
    s
}

fn md_table(rows: &[Vec<String>]) -> String {
    let mut s = String::new();
    for (i, r) in rows.iter().enumerate() {
        let _ = writeln!(s, "| {} |", r.join(" | "));
        if i == 0 {
            let _ = writeln!(s, "|{}", " --- |".repeat(r.len()));
        }
    }
    s
}

/// Notes (errors, timeouts) of the runs of `scenario`.
fn notes(runs: &[Run], scenario: &str) -> Vec<String> {
    let mut out = Vec::new();
    for r in runs.iter().filter(|r| r.scenario == scenario) {
        let tag = format!("{} round {}", r.broker.name(), r.round + 1);
        match &r.outcome {
            Err(e) => out.push(format!("{tag}: FAILED: {e}")),
            Ok(o) => out.extend(o.notes.iter().map(|n| format!("{tag}: {n}"))),
        }
    }
    out
}

/// The text block of one scenario: title, table, notes.
pub fn scenario_text(runs: &[Run], scenario: &str, title: &str, brokers: &[Kind]) -> String {
    let mut t = vec![header(brokers)];
    t.extend(rows(runs, scenario, brokers));
    let mut s = format!("\n== {scenario}: {title}\n{}", text_table(&t));
    for n in notes(runs, scenario) {
        let _ = writeln!(s, "  note: {n}");
    }
    s
}

/// Issue 3's targets: (target, dataloom's figure and the reference, verdict).
fn targets(runs: &[Run]) -> Vec<[String; 3]> {
    let dl = |s: &str, k: &str| med(runs, s, Kind::Dataloom, k);
    let rq = |s: &str, k: &str| med(runs, s, Kind::Rumqttd, k);
    let mq = |s: &str, k: &str| med(runs, s, Kind::Mosquitto, k);
    let verdict = |ok: Option<bool>| match ok {
        Some(true) => "met".to_string(),
        Some(false) => "NOT met".to_string(),
        None => "n/a".to_string(),
    };
    let f = |v: Option<f64>, d: usize| fmt_num(v, d);
    let mut out = Vec::new();
    for s in ["fanin-qos0", "fanout"] {
        let (a, b) = (dl(s, "throughput"), rq(s, "throughput"));
        out.push([
            format!("{s}: >= 1.3x rumqttd deliveries/s"),
            format!("{} vs {} ({})", f(a, 0), f(b, 0), ratio(a, b)),
            verdict(a.zip(b).map(|(a, b)| a >= 1.3 * b)),
        ]);
    }
    let s = "fanin-qos1";
    let (a, b) = (dl(s, "throughput"), rq(s, "throughput"));
    let (loss, dups) = (dl(s, "loss"), dl(s, "dups"));
    let (p99, mp99) = (dl(s, "p99_ms"), mq(s, "p99_ms"));
    out.push([
        format!("{s}: >= 1.3x rumqttd, no loss/dups, p99 <= mosquitto"),
        format!(
            "{} vs {} ({}), lost {}, dups {}, p99 {} ms vs {} ms",
            f(a, 0),
            f(b, 0),
            ratio(a, b),
            f(loss, 0),
            f(dups, 0),
            f(p99, 3),
            f(mp99, 3)
        ),
        verdict(
            a.zip(b)
                .zip(p99.zip(mp99))
                .zip(loss.zip(dups))
                .map(|(((a, b), (p, mp)), (l, d))| a >= 1.3 * b && p <= mp && l == 0.0 && d == 0.0),
        ),
    ]);
    let (p99, loss) = (dl("rate", "p99_ms"), dl("rate", "loss"));
    out.push([
        "rate: 200k deliveries/s with p99 < 5 ms".into(),
        format!("{} deliveries/s, p99 {} ms, lost {}", f(dl("rate", "throughput"), 0), f(p99, 3), f(loss, 0)),
        verdict(p99.map(|p| p < 5.0)),
    ]);
    let (a, b) = (dl("mesh-1000", "time_s"), rq("mesh-1000", "time_s"));
    out.push([
        "mesh-1000: no slower than rumqttd".into(),
        format!("{} s vs {} s, lost {}", f(a, 3), f(b, 3), f(dl("mesh-1000", "loss"), 0)),
        verdict(a.zip(b).map(|(a, b)| a <= b)),
    ]);
    let (kib, p99) = (dl("idle", "rss_per_conn_kib"), dl("idle", "connect_p99_ms"));
    out.push([
        "idle: < 4 KiB per connection, connect p99 < 10 ms".into(),
        format!("{} KiB, p99 {} ms", f(kib, 2), f(p99, 3)),
        verdict(kib.zip(p99).map(|(k, p)| k < 4.0 && p < 10.0)),
    ]);
    let (t, n, sent) = (dl("state", "time_s"), dl("state", "count"), dl("state", "sent"));
    out.push([
        "state: all retained delivered in < 0.25 s".into(),
        format!("{} of {} in {} s", f(n, 0), f(sent, 0), f(t, 3)),
        verdict(t.zip(n.zip(sent)).map(|(t, (n, s))| t < 0.25 && n == s)),
    ]);
    out
}

pub fn targets_text(runs: &[Run]) -> String {
    let mut t = vec![vec!["target (issue 3)".to_string(), "dataloom (median)".into(), "verdict".into()]];
    t.extend(targets(runs).into_iter().map(Vec::from));
    format!("\n== targets\n{}", text_table(&t))
}

/// The whole report as markdown.
pub fn markdown(runs: &[Run], scenarios: &[(String, String)], brokers: &[Kind], preamble: &str) -> String {
    let mut s = format!("# dataloom benchmark results\n\n{preamble}\n");
    for (key, title) in scenarios {
        let _ = writeln!(s, "\n## {key}: {title}\n");
        let mut t = vec![header(brokers)];
        t.extend(rows(runs, key, brokers));
        s.push_str(&md_table(&t));
        for n in notes(runs, key) {
            let _ = writeln!(s, "\n- {n}");
        }
    }
    s.push_str("\n## Targets (issue 3)\n\n");
    let mut t = vec![vec!["target".to_string(), "dataloom (median)".into(), "verdict".into()]];
    t.extend(targets(runs).into_iter().map(Vec::from));
    s.push_str(&md_table(&t));
    s
}

/// Every run with its raw metrics, plus the medians.
pub fn json(runs: &[Run], scenarios: &[(String, String)], brokers: &[Kind], config: Value) -> Value {
    let raw: Vec<Value> = runs
        .iter()
        .map(|r| {
            let (metrics, notes, error) = match &r.outcome {
                Ok(o) => (
                    o.metrics.iter().map(|(k, v)| (k.to_string(), json!(v))).collect(),
                    o.notes.clone(),
                    None,
                ),
                Err(e) => (serde_json::Map::new(), Vec::new(), Some(e.clone())),
            };
            json!({"scenario": r.scenario, "broker": r.broker.name(), "round": r.round + 1,
                   "metrics": metrics, "notes": notes, "error": error})
        })
        .collect();
    let mut medians = serde_json::Map::new();
    for (key, _) in scenarios {
        let mut per_broker = serde_json::Map::new();
        for &b in brokers {
            let m: serde_json::Map<String, Value> = METRICS
                .iter()
                .filter_map(|d| med(runs, key, b, d.key).map(|v| (d.key.to_string(), json!(v))))
                .collect();
            per_broker.insert(b.name().into(), Value::Object(m));
        }
        medians.insert(key.clone(), Value::Object(per_broker));
    }
    json!({"config": config, "medians": medians, "runs": raw})
}
