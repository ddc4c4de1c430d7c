//! Results: medians over rounds per scenario and broker, the ratios dataloom/rumqttd and
//! dataloom/mosquitto, the issues' targets checked against dataloom's figures (issue 3's,
//! fanin-qos2's exactly once, issues 4-6; issue 14's hostile figures, reported), printed as
//! text tables and written as markdown and JSON.

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
    m("qos2_reused_ids", "QoS 2 ids reused before PUBREL (lost)", 0, Better::Lower),
    m("unknown_pubrels", "PUBRELs for no message", 0, Better::Lower),
    m("late_sends", "late sends (pacer)", 0, Better::Neither),
    m("connections", "connections", 0, Better::Neither),
    m("rss_per_conn_kib", "RSS/connection (KiB)", 2, Better::Lower),
    m("connects_per_s", "connects/s", 0, Better::Higher),
    m("connect_p50_ms", "connect p50 (ms)", 3, Better::Lower),
    m("connect_p99_ms", "connect p99 (ms)", 3, Better::Lower),
    // durable (issue 4)
    m("acked_per_s", "acked updates/s", 0, Better::Higher),
    m("acked_in_window_per_s", "acked updates/s in window", 0, Better::Neither),
    m("ack_p50_ms", "ack p50 (ms)", 3, Better::Lower),
    m("ack_p99_ms", "ack p99 (ms)", 3, Better::Lower),
    m("buffered_acked_per_s", "acked updates/s, buffered", 0, Better::Higher),
    m("buffered_ack_p50_ms", "ack p50 (ms), buffered", 3, Better::Lower),
    m("buffered_ack_p99_ms", "ack p99 (ms), buffered", 3, Better::Lower),
    // restart-1m (issue 4)
    m("fill_per_s", "retained stored/s (QoS 1, acked)", 0, Better::Higher),
    m("state_rss_mib", "RSS with all retained (MiB)", 1, Better::Lower),
    m("disk_mib", "data directory (MiB)", 1, Better::Neither),
    m("shutdown_s", "SIGTERM to exit (s)", 3, Better::Lower),
    m("restart_listen_s", "restart: listening after (s)", 3, Better::Lower),
    m("restart_ready_s", "restart: first CONNACK after (s)", 3, Better::Lower),
    m("restart_rss_mib", "RSS after restart (MiB)", 1, Better::Lower),
    // schema (issue 5)
    m("plain_per_s", "plain (64 B binary) deliveries/s", 0, Better::Higher),
    m("plain_p99_ms", "plain p99 (ms)", 3, Better::Lower),
    m("json_per_s", "JSON, no schema deliveries/s", 0, Better::Higher),
    m("json_p99_ms", "JSON, no schema p99 (ms)", 3, Better::Lower),
    m("schema_per_s", "JSON under schema deliveries/s", 0, Better::Higher),
    m("schema_p99_ms", "JSON under schema p99 (ms)", 3, Better::Lower),
    m("schema_ratio", "ratio schema / no schema", 2, Better::Higher),
    m("schema_vs_plain", "ratio schema / plain", 2, Better::Neither),
    m("schemas_per_s", "schemas registered/s", 0, Better::Neither),
    m("after_per_s", "plain with schemas registered deliveries/s", 0, Better::Higher),
    m("after_p99_ms", "plain with schemas registered p99 (ms)", 3, Better::Lower),
    m("after_ratio", "ratio with / without schemas", 2, Better::Higher),
    // connect-auth (issue 6)
    m("anon_connects_per_s", "anonymous connects/s", 0, Better::Higher),
    m("anon_connect_p50_ms", "anonymous connect p50 (ms)", 3, Better::Lower),
    m("anon_connect_p99_ms", "anonymous connect p99 (ms)", 3, Better::Lower),
    m("auth_connects_per_s", "API key connects/s", 0, Better::Higher),
    m("auth_connect_p50_ms", "API key connect p50 (ms)", 3, Better::Lower),
    m("auth_connect_p99_ms", "API key connect p99 (ms)", 3, Better::Lower),
    m("auth_ratio", "ratio API key / anonymous", 2, Better::Higher),
    m("anon_broker_cpu_pct", "broker CPU, anonymous (%)", 0, Better::Neither),
    m("anon_gen_cpu_pct", "generator CPU, anonymous (%)", 0, Better::Neither),
    m("auth_broker_cpu_pct", "broker CPU, API key (%)", 0, Better::Neither),
    m("auth_gen_cpu_pct", "generator CPU, API key (%)", 0, Better::Neither),
    // tls (issue 6)
    m("tcp_connects_per_s", "TCP connects/s", 0, Better::Higher),
    m("tcp_connect_p50_ms", "TCP connect p50 (ms)", 3, Better::Lower),
    m("tcp_connect_p99_ms", "TCP connect p99 (ms)", 3, Better::Lower),
    m("tls_connects_per_s", "TLS handshakes+connects/s", 0, Better::Higher),
    m("tls_connect_p50_ms", "TLS connect p50 (ms)", 3, Better::Lower),
    m("tls_connect_p99_ms", "TLS connect p99 (ms)", 3, Better::Lower),
    m("tls_connect_ratio", "ratio TLS / TCP connects", 2, Better::Neither),
    m("tls_broker_cpu_pct", "broker CPU during TLS connects (%)", 0, Better::Neither),
    m("tls_gen_cpu_pct", "generator CPU during TLS connects (%)", 0, Better::Neither),
    m("tcp_fanin_per_s", "fan-in QoS 0 over TCP deliveries/s", 0, Better::Higher),
    m("tcp_gen_cpu_pct", "generator CPU, TCP fan-in (%)", 0, Better::Neither),
    m("tls_fanin_per_s", "fan-in QoS 0 over TLS deliveries/s", 0, Better::Higher),
    m("tls_fanin_broker_cpu_pct", "broker CPU, TLS fan-in (%)", 0, Better::Neither),
    m("tls_fanin_gen_cpu_pct", "generator CPU, TLS fan-in (%)", 0, Better::Neither),
    m("tls_fanin_ratio", "ratio TLS / TCP fan-in", 2, Better::Neither),
    // hostile group (issue 14)
    m("subscribe_bytes", "SUBSCRIBE size (bytes)", 0, Better::Neither),
    m("filters_sent", "filters sent", 0, Better::Neither),
    m("filters_granted", "filters granted", 0, Better::Neither),
    m("sub_time_s", "time to SUBACK or close (s)", 3, Better::Lower),
    m("rss_growth_mib", "broker RSS growth (MiB)", 1, Better::Lower),
    m("peak_rss_growth_mib", "broker peak RSS growth (MiB)", 1, Better::Lower),
    m("flood_mib", "flood published (MiB)", 0, Better::Neither),
    m("flood_s", "flood taken in (s)", 3, Better::Lower),
    m("flood_mib_per_s", "flood rate (MiB/s)", 0, Better::Neither),
    m("subscriptions", "subscriptions granted", 0, Better::Neither),
    m("subscribe_per_s", "subscriptions/s", 0, Better::Higher),
    m("rss_per_1k_subs_kib", "RSS per 1,000 subscriptions (KiB)", 1, Better::Lower),
    m("probe_connects", "good CONNECTs meanwhile", 0, Better::Neither),
    m("probe_failed", "good CONNECTs failed", 0, Better::Lower),
    m("good_connect_p50_ms", "good CONNECT p50 (ms)", 3, Better::Lower),
    m("good_connect_p99_ms", "good CONNECT p99 (ms)", 3, Better::Lower),
    m("good_connect_max_ms", "good CONNECT max (ms)", 3, Better::Lower),
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
        if brokers.len() < 2 {
            out.push(row);
            continue;
        }
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
    if brokers.len() > 1 {
        h.push("dl/rumqttd".into());
        h.push("dl/mosquitto".into());
    }
    h
}

/// The brokers that ran `scenario` (dataloom-only scenarios have one column).
fn ran(runs: &[Run], scenario: &str, brokers: &[Kind]) -> Vec<Kind> {
    brokers
        .iter()
        .copied()
        .filter(|&b| runs.iter().any(|r| r.scenario == scenario && r.broker == b))
        .collect()
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
    let brokers = &ran(runs, scenario, brokers);
    let mut t = vec![header(brokers)];
    t.extend(rows(runs, scenario, brokers));
    let mut s = format!("\n== {scenario}: {title}\n{}", text_table(&t));
    for n in notes(runs, scenario) {
        let _ = writeln!(s, "  note: {n}");
    }
    s
}

/// The issues' targets whose scenario ran: (target, dataloom's figure and the reference, verdict).
fn targets(runs: &[Run]) -> Vec<[String; 3]> {
    let mut all = issue3_targets(runs);
    all.extend(later_targets(runs));
    all.extend(hostile_targets(runs));
    all.into_iter().filter(|(s, _)| runs.iter().any(|r| r.scenario == *s)).map(|(_, t)| t).collect()
}

fn verdict(ok: Option<bool>) -> String {
    match ok {
        Some(true) => "met".to_string(),
        Some(false) => "NOT met".to_string(),
        None => "n/a".to_string(),
    }
}

/// `"<num> vs <den> <unit> (<ratio as %>)"`: dataloom's figure beside its reference.
fn versus(num: Option<f64>, den: Option<f64>, unit: &str, ratio: Option<f64>) -> String {
    let pct = ratio.map_or("-".into(), |r| format!("{:.0}%", 100.0 * r));
    format!("{} vs {} {unit} ({pct})", fmt_num(num, 0), fmt_num(den, 0))
}

/// Issues 4, 5 and 6.
fn later_targets(runs: &[Run]) -> Vec<(&'static str, [String; 3])> {
    let dl = |s: &str, k: &str| med(runs, s, Kind::Dataloom, k);
    let f = |v: Option<f64>, d: usize| fmt_num(v, d);
    let mut out = Vec::new();
    let s = "durable";
    let a = dl(s, "acked_per_s");
    out.push((
        s,
        [
            "durable (issue 4): >= 150,000 acked updates/s with fsync; p99 reported".into(),
            format!(
                "{} /s, p99 {} ms (buffered {} /s, p99 {} ms; rumqttd {} /s, mosquitto {} /s, in memory)",
                f(a, 0),
                f(dl(s, "ack_p99_ms"), 3),
                f(dl(s, "buffered_acked_per_s"), 0),
                f(dl(s, "buffered_ack_p99_ms"), 3),
                f(med(runs, s, Kind::Rumqttd, "acked_per_s"), 0),
                f(med(runs, s, Kind::Mosquitto, "acked_per_s"), 0)
            ),
            verdict(a.map(|a| a >= 150_000.0)),
        ],
    ));
    let s = "restart-1m";
    let (ready, t, n, sent) = (dl(s, "restart_ready_s"), dl(s, "time_s"), dl(s, "count"), dl(s, "sent"));
    out.push((
        s,
        [
            "restart-1m (issue 4): ready < 5 s; fresh # subscriber gets all in < 3 s".into(),
            format!(
                "ready {} s (listening {} s), {} of {} in {} s",
                f(ready, 3),
                f(dl(s, "restart_listen_s"), 3),
                f(n, 0),
                f(sent, 0),
                f(t, 3)
            ),
            verdict(ready.zip(t).zip(n.zip(sent)).map(|((r, t), (n, s))| r < 5.0 && t < 3.0 && n == s)),
        ],
    ));
    let rss = dl(s, "state_rss_mib");
    out.push((
        s,
        [
            "restart-1m (issue 4): broker RSS with the retained topics reported".into(),
            format!(
                "{} MiB before, {} MiB after restart, data dir {} MiB (mosquitto {} MiB, rumqttd {} MiB)",
                f(rss, 1),
                f(dl(s, "restart_rss_mib"), 1),
                f(dl(s, "disk_mib"), 1),
                f(med(runs, s, Kind::Mosquitto, "state_rss_mib"), 1),
                f(med(runs, s, Kind::Rumqttd, "state_rss_mib"), 1)
            ),
            if rss.is_some() { "reported".into() } else { "n/a".into() },
        ],
    ));
    let s = "schema";
    let (r, after) = (dl(s, "schema_ratio"), dl(s, "after_ratio"));
    out.push((
        s,
        [
            "schema (issue 5): fan-in QoS 1 under a schema >= 70% of without".into(),
            format!(
                "{}, lost {}",
                versus(dl(s, "schema_per_s"), dl(s, "json_per_s"), "deliveries/s", r),
                f(dl(s, "loss"), 0)
            ),
            verdict(r.zip(dl(s, "loss")).map(|(r, l)| r >= 0.7 && l == 0.0)),
        ],
    ));
    out.push((
        s,
        [
            "schema (issue 5): with many schemas registered, plain fan-in unchanged (>= 90%)".into(),
            versus(dl(s, "after_per_s"), dl(s, "plain_per_s"), "deliveries/s", after),
            verdict(after.map(|r| r >= 0.9)),
        ],
    ));
    let s = "connect-auth";
    let r = dl(s, "auth_ratio");
    out.push((
        s,
        [
            "connect-auth (issue 6): CONNECT rate with API keys >= 80% of without".into(),
            versus(dl(s, "auth_connects_per_s"), dl(s, "anon_connects_per_s"), "connects/s", r),
            verdict(r.map(|r| r >= 0.8)),
        ],
    ));
    let s = "tls";
    let (h, fin) = (dl(s, "tls_connects_per_s"), dl(s, "tls_fanin_per_s"));
    out.push((
        s,
        [
            "tls (issue 6): TLS handshake rate and fan-in over TLS reported".into(),
            format!(
                "{} handshakes/s (TCP {} connects/s); fan-in QoS 0 TLS {} vs TCP {} deliveries/s",
                f(h, 0),
                f(dl(s, "tcp_connects_per_s"), 0),
                f(fin, 0),
                f(dl(s, "tcp_fanin_per_s"), 0)
            ),
            if h.is_some() && fin.is_some() { "reported".into() } else { "n/a".into() },
        ],
    ));
    out
}

/// Issue 14's hostile group: figures to report beside Mosquitto's and rumqttd's, no bounds.
fn hostile_targets(runs: &[Run]) -> Vec<(&'static str, [String; 3])> {
    let get = |s: &str, k: &str| Kind::ALL.map(|b| med(runs, s, b, k));
    let f = fmt_num;
    let each = |v: [Option<f64>; 3], d: usize, unit: &str| {
        let [dl, mq, rq] = v.map(|x| f(x, d));
        format!("{dl}{unit} (mosquitto {mq}, rumqttd {rq})")
    };
    let reported = |v: [Option<f64>; 3]| if v[0].is_some() { "reported" } else { "n/a" }.to_string();
    let s = "hostile-subscribe";
    let (t, rss, p99) = (get(s, "sub_time_s"), get(s, "rss_growth_mib"), get(s, "good_connect_p99_ms"));
    let sub = format!(
        "{}; RSS +{}; good CONNECT p99 {}",
        each(t, 3, " s"),
        each(rss, 1, " MiB"),
        each(p99, 3, " ms")
    );
    let s2 = "hostile-slow-sub";
    let (peak, held) = (get(s2, "peak_rss_growth_mib"), get(s2, "rss_growth_mib"));
    let slow = format!("peak +{}; held +{}", each(peak, 1, " MiB"), each(held, 1, " MiB"));
    let per_k = get("subs-rss", "rss_per_1k_subs_kib");
    vec![
        (s, ["hostile-subscribe (issue 14): time and RSS of one 100,000-filter SUBSCRIBE, good CONNECT p99".into(), sub, reported(t)]),
        (s2, ["hostile-slow-sub (issue 14): RSS growth under a never-reading subscriber".into(), slow, reported(peak)]),
        ("subs-rss", ["subs-rss (issue 14): RSS per 1,000 subscriptions".into(), each(per_k, 1, " KiB"), reported(per_k)]),
    ]
}

/// fanin-qos1: throughput against rumqttd, p99 against Mosquitto, no loss or duplicates.
fn fanin_qos1_target(runs: &[Run]) -> (&'static str, [String; 3]) {
    let s = "fanin-qos1";
    let (a, b) = (med(runs, s, Kind::Dataloom, "throughput"), med(runs, s, Kind::Rumqttd, "throughput"));
    let (loss, dups) = (med(runs, s, Kind::Dataloom, "loss"), med(runs, s, Kind::Dataloom, "dups"));
    let (p99, mp99) = (med(runs, s, Kind::Dataloom, "p99_ms"), med(runs, s, Kind::Mosquitto, "p99_ms"));
    let f = fmt_num;
    let ok = a.zip(b).zip(p99.zip(mp99)).zip(loss.zip(dups));
    (
        s,
        [
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
            verdict(ok.map(|(((a, b), (p, mp)), (l, d))| a >= 1.3 * b && p <= mp && l == 0.0 && d == 0.0)),
        ],
    )
}

/// fanin-qos2: the only bound is exactly once (no loss, no duplicates); throughput and p99 are
/// reported beside rumqttd's and Mosquitto's.
fn fanin_qos2_target(runs: &[Run]) -> (&'static str, [String; 3]) {
    let s = "fanin-qos2";
    let get = |b: Kind, k: &str| med(runs, s, b, k);
    let (a, r, m) = (
        get(Kind::Dataloom, "throughput"),
        get(Kind::Rumqttd, "throughput"),
        get(Kind::Mosquitto, "throughput"),
    );
    let (loss, dups) = (get(Kind::Dataloom, "loss"), get(Kind::Dataloom, "dups"));
    let f = fmt_num;
    (
        s,
        [
            format!("{s}: no loss, no dups (throughput, p99 reported)"),
            format!(
                "lost {}, dups {}; {} vs rumqttd {} ({}), mosquitto {} ({}); p99 {} ms (rumqttd {}, mosquitto {})",
                f(loss, 0),
                f(dups, 0),
                f(a, 0),
                f(r, 0),
                ratio(a, r),
                f(m, 0),
                ratio(a, m),
                f(get(Kind::Dataloom, "p99_ms"), 3),
                f(get(Kind::Rumqttd, "p99_ms"), 3),
                f(get(Kind::Mosquitto, "p99_ms"), 3)
            ),
            verdict(loss.zip(dups).map(|(l, d)| l == 0.0 && d == 0.0)),
        ],
    )
}

/// Issue 3's targets.
fn issue3_targets(runs: &[Run]) -> Vec<(&'static str, [String; 3])> {
    let dl = |s: &str, k: &str| med(runs, s, Kind::Dataloom, k);
    let rq = |s: &str, k: &str| med(runs, s, Kind::Rumqttd, k);
    let f = |v: Option<f64>, d: usize| fmt_num(v, d);
    let mut out = Vec::new();
    for s in ["fanin-qos0", "fanout"] {
        let (a, b) = (dl(s, "throughput"), rq(s, "throughput"));
        out.push((
            s,
            [
                format!("{s}: >= 1.3x rumqttd deliveries/s"),
                format!("{} vs {} ({})", f(a, 0), f(b, 0), ratio(a, b)),
                verdict(a.zip(b).map(|(a, b)| a >= 1.3 * b)),
            ],
        ));
    }
    out.push(fanin_qos1_target(runs));
    out.push(fanin_qos2_target(runs));
    let (p99, loss) = (dl("rate", "p99_ms"), dl("rate", "loss"));
    out.push((
        "rate",
        [
            "rate: 200k deliveries/s with p99 < 5 ms".into(),
            format!(
                "{} deliveries/s, p99 {} ms, lost {}",
                f(dl("rate", "throughput"), 0),
                f(p99, 3),
                f(loss, 0)
            ),
            verdict(p99.map(|p| p < 5.0)),
        ],
    ));
    let (a, b) = (dl("mesh-1000", "time_s"), rq("mesh-1000", "time_s"));
    out.push((
        "mesh-1000",
        [
            "mesh-1000: no slower than rumqttd".into(),
            format!("{} s vs {} s, lost {}", f(a, 3), f(b, 3), f(dl("mesh-1000", "loss"), 0)),
            verdict(a.zip(b).map(|(a, b)| a <= b)),
        ],
    ));
    let (kib, p99) = (dl("idle", "rss_per_conn_kib"), dl("idle", "connect_p99_ms"));
    out.push((
        "idle",
        [
            "idle: < 4 KiB per connection, connect p99 < 10 ms".into(),
            format!("{} KiB, p99 {} ms", f(kib, 2), f(p99, 3)),
            verdict(kib.zip(p99).map(|(k, p)| k < 4.0 && p < 10.0)),
        ],
    ));
    let (t, n, sent) = (dl("state", "time_s"), dl("state", "count"), dl("state", "sent"));
    out.push((
        "state",
        [
            "state: all retained delivered in < 0.25 s".into(),
            format!("{} of {} in {} s", f(n, 0), f(sent, 0), f(t, 3)),
            verdict(t.zip(n.zip(sent)).map(|(t, (n, s))| t < 0.25 && n == s)),
        ],
    ));
    out
}

pub fn targets_text(runs: &[Run]) -> String {
    let mut t = vec![vec!["target".to_string(), "dataloom (median)".into(), "verdict".into()]];
    t.extend(targets(runs).into_iter().map(Vec::from));
    format!("\n== targets\n{}", text_table(&t))
}

/// The whole report as markdown.
pub fn markdown(runs: &[Run], scenarios: &[(String, String)], brokers: &[Kind], preamble: &str) -> String {
    let mut s = format!("# dataloom benchmark results\n\n{preamble}\n");
    for (key, title) in scenarios {
        let _ = writeln!(s, "\n## {key}: {title}\n");
        let brokers = &ran(runs, key, brokers);
        let mut t = vec![header(brokers)];
        t.extend(rows(runs, key, brokers));
        s.push_str(&md_table(&t));
        for n in notes(runs, key) {
            let _ = writeln!(s, "\n- {n}");
        }
    }
    s.push_str("\n## Targets\n\n");
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
        for b in ran(runs, key, brokers) {
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
