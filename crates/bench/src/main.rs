//! `dataloom-bench`: the load generator behind `make bench` (issues 3 to 6). It runs every scenario
//! against dataloom, Mosquitto and rumqttd, alternating A B C A B C, each broker started fresh
//! on its own port and pinned to one core, the generator pinned to another; it prints one table
//! per scenario (medians over rounds, ratios dataloom/rumqttd and dataloom/mosquitto), the
//! issue's targets, and writes `results.md` and `results.json` to the output directory.
//!
//! The generator is a single-threaded tokio runtime with one TCP connection per simulated
//! client, using dataloom's codec: PUBLISH frames are encoded once and patched, many per write.

mod bench;

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::Context;
use clap::Parser;
use dataloom_codec::QoS;
use serde_json::json;

use bench::brokers::{self, BrokerBin, Kind};
use bench::report::{self, Run};
use bench::scenario::{self, Params, Scenario};

#[derive(Parser, Debug)]
#[command(name = "dataloom-bench", about = "Benchmarks dataloom against Mosquitto and rumqttd")]
struct Args {
    /// Short version for development: 1 round, 1.5 s windows, smaller counts.
    #[arg(long)]
    quick: bool,
    /// Rounds of A B C (median over rounds). Default 2 (1 with --quick).
    #[arg(long)]
    rounds: Option<usize>,
    /// Measurement window of the flow scenarios, seconds. Default 5 (1.5 with --quick).
    #[arg(long)]
    duration: Option<f64>,
    /// Brokers to run, comma-separated.
    #[arg(long, value_delimiter = ',', default_value = "dataloom,mosquitto,rumqttd")]
    brokers: Vec<String>,
    /// Scenarios, comma-separated: fanin-qos0, fanin-qos1, fanin-qos2, fanout, mesh-N, rate, idle,
    /// state (issue 3), durable, restart-1m (issue 4), schema (issue 5), connect-auth, tls (issue 6),
    /// hostile-subscribe, hostile-slow-sub, subs-rss (issue 14; `hostile` selects the group),
    /// state-api (issue 17).
    /// Default all (mesh-300 and mesh-1000; mesh-100 and mesh-300 with --quick).
    #[arg(long, value_delimiter = ',')]
    scenarios: Vec<String>,
    /// Idle connections. Default 10000 (2000 with --quick).
    #[arg(long)]
    idle: Option<usize>,
    /// Retained topics of the state-sync scenario. Default 100000 (20000 with --quick).
    #[arg(long)]
    state: Option<usize>,
    /// Retained topics of restart-1m. Default 1000000 (100000 with --quick).
    #[arg(long)]
    restart: Option<usize>,
    /// Unrelated schemas registered by the schema scenario.
    #[arg(long, default_value_t = 10_000)]
    schemas: usize,
    /// CONNECTs per variant of connect-auth and tls. Default 10000 (2000 with --quick).
    #[arg(long)]
    connects: Option<usize>,
    /// QoS of the state-sync subscriber (0 or 1; also restart-1m's).
    #[arg(long, default_value_t = 0)]
    state_qos: u8,
    /// Messages per second of each of the 20 fixed-rate clients.
    #[arg(long, default_value_t = 500)]
    rate: u64,
    /// dataloom binary. Default: `dataloom` next to this binary.
    #[arg(long)]
    dataloom: Option<PathBuf>,
    #[arg(long, default_value = "/usr/sbin/mosquitto")]
    mosquitto: PathBuf,
    #[arg(long, default_value = "target/bench-tools/bin/rumqttd")]
    rumqttd: PathBuf,
    /// Where results.md, results.json and the brokers' files and logs go.
    #[arg(long, default_value = "target/bench")]
    out: PathBuf,
    /// CPU list (taskset -c) for the brokers.
    #[arg(long, default_value = "0")]
    broker_cpu: String,
    /// CPU list for this generator.
    #[arg(long, default_value = "1")]
    client_cpu: String,
    /// Do not pin anything.
    #[arg(long)]
    no_pin: bool,
    /// Longest one run (one scenario on one broker) may take, seconds.
    #[arg(long, default_value_t = 90)]
    run_timeout: u64,
    /// Runs not started within this many seconds of the start are skipped. Default 1200
    /// (300 with --quick).
    #[arg(long)]
    time_limit: Option<u64>,
}

/// The hostile group of issue 14 (`--scenarios hostile`).
const HOSTILE: [&str; 3] = ["hostile-subscribe", "hostile-slow-sub", "subs-rss"];

fn parse_scenario(s: &str) -> anyhow::Result<Scenario> {
    Ok(match s {
        "fanin-qos0" => Scenario::FanInQos0,
        "fanin-qos1" => Scenario::FanInQos1,
        "fanin-qos2" => Scenario::FanInQos2,
        "fanout" => Scenario::FanOut,
        "rate" => Scenario::Rate,
        "idle" => Scenario::Idle,
        "state" => Scenario::State,
        "durable" => Scenario::Durable,
        "restart-1m" | "restart" => Scenario::Restart,
        "schema" => Scenario::Schema,
        "connect-auth" => Scenario::ConnectAuth,
        "tls" => Scenario::Tls,
        "hostile-subscribe" => Scenario::HostileSubscribe,
        "hostile-slow-sub" => Scenario::HostileSlowSub,
        "subs-rss" => Scenario::SubsRss,
        "state-api" => Scenario::StateApi,
        s => match s.strip_prefix("mesh-").and_then(|n| n.parse().ok()) {
            Some(n) if n > 0 => Scenario::Mesh(n),
            _ => anyhow::bail!("unknown scenario {s:?}"),
        },
    })
}

/// Pins this process (all its threads: only the main one exists yet) with taskset.
fn pin_self(cpu: &str) {
    let pid = std::process::id().to_string();
    let ok = std::process::Command::new("taskset")
        .args(["-a", "-p", "-c", cpu, &pid])
        .stdout(std::process::Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !ok {
        eprintln!("dataloom-bench: warning: could not pin the generator to CPU {cpu} (taskset)");
    }
}

/// Raises the soft open-file limit towards `want`, up to the hard limit (the idle scenario needs
/// one descriptor per connection here, and as many in the broker, which inherits the limit).
fn raise_nofile(want: u64) {
    let limits = || -> Option<(u64, u64)> {
        let l = std::fs::read_to_string("/proc/self/limits").ok()?;
        let line = l.lines().find(|l| l.starts_with("Max open files"))?;
        let f: Vec<&str> = line.split_whitespace().collect();
        let parse = |s: &str| if s == "unlimited" { Some(u64::MAX) } else { s.parse().ok() };
        Some((parse(f.get(3)?)?, parse(f.get(4)?)?))
    };
    let Some((soft, hard)) = limits() else { return };
    let target = want.min(hard);
    if soft < target {
        let pid = std::process::id().to_string();
        let _ = std::process::Command::new("prlimit")
            .args(["--pid", &pid, &format!("--nofile={target}:")])
            .status();
    }
    if let Some((soft, _)) = limits()
        && soft < want
    {
        println!("dataloom-bench: open-file limit is {soft} (hard limit {hard}); wanted {want}");
    }
}

fn headline(s: Scenario, o: &scenario::Outcome) -> String {
    let get = |k: &str| o.metrics.iter().find(|(m, _)| *m == k).map(|&(_, v)| v);
    let f = |k: &str, d: usize| get(k).map_or("-".into(), |v| format!("{v:.d$}"));
    match s {
        Scenario::Idle => format!(
            "{} connections, {} KiB/connection, connect p99 {} ms",
            f("connections", 0),
            f("rss_per_conn_kib", 2),
            f("connect_p99_ms", 3)
        ),
        Scenario::State => format!("{} of {} in {} s", f("count", 0), f("sent", 0), f("time_s", 3)),
        Scenario::Mesh(_) => format!("{} s, lost {}, dups {}", f("time_s", 3), f("loss", 0), f("dups", 0)),
        Scenario::Durable => format!(
            "{} acked updates/s, ack p99 {} ms; buffered {} /s, p99 {} ms",
            f("acked_per_s", 0),
            f("ack_p99_ms", 3),
            f("buffered_acked_per_s", 0),
            f("buffered_ack_p99_ms", 3)
        ),
        Scenario::Restart => format!(
            "RSS {} MiB, ready after {} s, {} of {} in {} s",
            f("state_rss_mib", 1),
            f("restart_ready_s", 3),
            f("count", 0),
            f("sent", 0),
            f("time_s", 3)
        ),
        Scenario::Schema => format!(
            "json {} /s, schema {} /s ({}), plain {} /s, plain with many schemas {} /s ({}), lost {}",
            f("json_per_s", 0),
            f("schema_per_s", 0),
            f("schema_ratio", 2),
            f("plain_per_s", 0),
            f("after_per_s", 0),
            f("after_ratio", 2),
            f("loss", 0)
        ),
        Scenario::ConnectAuth => format!(
            "anonymous {} /s, API key {} /s ({})",
            f("anon_connects_per_s", 0),
            f("auth_connects_per_s", 0),
            f("auth_ratio", 2)
        ),
        Scenario::Tls => format!(
            "connects TCP {} /s, TLS {} /s; fan-in QoS 0 TCP {} /s, TLS {} /s ({})",
            f("tcp_connects_per_s", 0),
            f("tls_connects_per_s", 0),
            f("tcp_fanin_per_s", 0),
            f("tls_fanin_per_s", 0),
            f("tls_fanin_ratio", 2)
        ),
        Scenario::HostileSubscribe => format!(
            "{} of {} filters granted in {} s, RSS +{} MiB, good CONNECT p99 {} ms",
            f("filters_granted", 0),
            f("filters_sent", 0),
            f("sub_time_s", 3),
            f("rss_growth_mib", 1),
            f("good_connect_p99_ms", 3)
        ),
        Scenario::HostileSlowSub => format!(
            "{} MiB taken in {} s, RSS peak +{} MiB, held +{} MiB, good CONNECT p99 {} ms, {} failed",
            f("flood_mib", 0),
            f("flood_s", 3),
            f("peak_rss_growth_mib", 1),
            f("rss_growth_mib", 1),
            f("good_connect_p99_ms", 3),
            f("probe_failed", 0)
        ),
        Scenario::StateApi => format!(
            "GET {} items in {} s vs fresh # subscriber {} s; PUT {} /s vs QoS 1 {} /s; replay first {} ms, \
             last {} s ({} items)",
            f("http_items", 0),
            f("http_read_s", 3),
            f("mqtt_read_s", 3),
            f("put_per_s", 0),
            f("qos1_per_s", 0),
            f("replay_first_ms", 1),
            f("replay_last_s", 3),
            f("replay_items", 0)
        ),
        Scenario::SubsRss => format!(
            "{} subscriptions, {} KiB per 1,000, {} /s",
            f("subscriptions", 0),
            f("rss_per_1k_subs_kib", 1),
            f("subscribe_per_s", 0)
        ),
        _ => format!(
            "{} deliveries/s, p50 {} ms, p99 {} ms, lost {}, dups {}",
            f("throughput", 0),
            f("p50_ms", 3),
            f("p99_ms", 3),
            f("loss", 0),
            f("dups", 0)
        ),
    }
}

fn main() -> ExitCode {
    let args = Args::parse();
    bench::stats::now_ns(); // start the generator's clock
    if !args.no_pin {
        pin_self(&args.client_cpu);
    }
    raise_nofile(65_536);
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("tokio runtime");
    let local = tokio::task::LocalSet::new();
    match local.block_on(&rt, run(args)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("dataloom-bench: {e:#}");
            ExitCode::from(1)
        }
    }
}

async fn run(args: Args) -> anyhow::Result<()> {
    let q = args.quick;
    let rounds = args.rounds.unwrap_or(if q { 1 } else { 2 }).max(1);
    let params = Params {
        duration: Duration::from_secs_f64(args.duration.unwrap_or(if q { 1.5 } else { 5.0 })),
        rate: args.rate.max(1),
        idle: args.idle.unwrap_or(if q { 2_000 } else { 10_000 }).max(1),
        state: args.state.unwrap_or(if q { 20_000 } else { 100_000 }).max(1),
        state_qos: if args.state_qos >= 1 { QoS::AtLeastOnce } else { QoS::AtMostOnce },
        run_timeout: Duration::from_secs(args.run_timeout),
        restart: args.restart.unwrap_or(if q { 100_000 } else { 1_000_000 }).max(1),
        schemas: args.schemas,
        connects: args.connects.unwrap_or(if q { 2_000 } else { 10_000 }).max(1),
    };
    let scenario_names: Vec<String> = if args.scenarios.is_empty() {
        let mesh = if q { ["mesh-100", "mesh-300"] } else { ["mesh-300", "mesh-1000"] };
        let mut all = vec!["fanin-qos0", "fanin-qos1", "fanin-qos2", "fanout", mesh[0], mesh[1]];
        all.extend(["rate", "idle", "state"]);
        all.extend(["durable", "restart-1m", "schema", "connect-auth", "tls", "state-api"]);
        all.extend(HOSTILE);
        all.into_iter().map(String::from).collect()
    } else {
        args.scenarios
            .iter()
            .flat_map(|s| if s == "hostile" { HOSTILE.map(String::from).to_vec() } else { vec![s.clone()] })
            .collect()
    };
    let scenarios = scenario_names.iter().map(|s| parse_scenario(s)).collect::<anyhow::Result<Vec<_>>>()?;
    let dataloom = match &args.dataloom {
        Some(p) => p.clone(),
        None => std::env::current_exe()?.with_file_name("dataloom"),
    };
    let mut bins = Vec::new();
    for name in &args.brokers {
        let kind = Kind::parse(name).with_context(|| format!("unknown broker {name:?}"))?;
        let path = match kind {
            Kind::Dataloom => dataloom.clone(),
            Kind::Mosquitto => args.mosquitto.clone(),
            Kind::Rumqttd => args.rumqttd.clone(),
        };
        if path.is_file() {
            bins.push(BrokerBin { kind, path });
        } else if kind == Kind::Dataloom {
            anyhow::bail!("dataloom binary {} not found (cargo build --release)", path.display());
        } else {
            eprintln!("dataloom-bench: {} not found at {}: skipped", kind.name(), path.display());
        }
    }
    let kinds: Vec<Kind> = bins.iter().map(|b| b.kind).collect();
    let broker_cpu = (!args.no_pin).then_some(args.broker_cpu.as_str());
    let time_limit = Duration::from_secs(args.time_limit.unwrap_or(if q { 300 } else { 1200 }));
    let started = Instant::now();
    println!(
        "dataloom-bench: {} round(s), brokers {}, broker CPU {}, generator CPU {}, window {:.1} s{}",
        rounds,
        kinds.iter().map(|k| k.name()).collect::<Vec<_>>().join(" "),
        broker_cpu.unwrap_or("any"),
        if args.no_pin { "any" } else { &args.client_cpu },
        params.duration.as_secs_f64(),
        if q { " (QUICK)" } else { "" },
    );
    let mut runs: Vec<Run> = Vec::new();
    let mut titled = Vec::new();
    for &s in &scenarios {
        let key = s.key();
        let title = s.describe(&params);
        titled.push((key.clone(), title.clone()));
        let bins: Vec<&BrokerBin> =
            bins.iter().filter(|b| !s.dataloom_only() || b.kind == Kind::Dataloom).collect();
        let kinds: Vec<Kind> = bins.iter().map(|b| b.kind).collect();
        for round in 0..rounds {
            for &bin in &bins {
                let t = Instant::now();
                let outcome = if started.elapsed() > time_limit {
                    Err(format!("skipped: overall time limit of {} s reached", time_limit.as_secs()))
                } else {
                    let dir = args.out.join("runs").join(format!("{key}-{}-r{}", bin.kind.name(), round + 1));
                    one_run(s, &params, bin, &dir, broker_cpu).await
                };
                let line = match &outcome {
                    Ok(o) => headline(s, o),
                    Err(e) => format!("FAILED: {e}"),
                };
                println!(
                    "  [{key} round {}] {:<9} {line} ({:.1} s)",
                    round + 1,
                    bin.kind.name(),
                    t.elapsed().as_secs_f64()
                );
                runs.push(Run { scenario: key.clone(), broker: bin.kind, round, outcome });
            }
        }
        print!("{}", report::scenario_text(&runs, &key, &title, &kinds));
    }
    print!("{}", report::targets_text(&runs));
    let preamble = format!(
        "Command: `dataloom-bench {}`; {} round(s), median; broker pinned to CPU {}, generator to CPU {}; \
         total {:.0} s. Ratios are dataloom / other (↑ higher is better, ↓ lower is better).",
        std::env::args().skip(1).collect::<Vec<_>>().join(" "),
        rounds,
        broker_cpu.unwrap_or("any"),
        if args.no_pin { "any" } else { &args.client_cpu },
        started.elapsed().as_secs_f64()
    );
    std::fs::create_dir_all(&args.out)?;
    let md = args.out.join("results.md");
    std::fs::write(&md, report::markdown(&runs, &titled, &kinds, &preamble))?;
    let config = json!({"rounds": rounds, "quick": q, "duration_s": params.duration.as_secs_f64(),
        "idle": params.idle, "state": params.state, "rate": params.rate, "scenarios": scenario_names,
        "restart": params.restart, "schemas": params.schemas, "connects": params.connects,
        "brokers": kinds.iter().map(|k| k.name()).collect::<Vec<_>>()});
    let js = args.out.join("results.json");
    std::fs::write(&js, serde_json::to_string_pretty(&report::json(&runs, &titled, &kinds, config))?)?;
    println!("\nwrote {} and {} ({:.0} s)", md.display(), js.display(), started.elapsed().as_secs_f64());
    Ok(())
}

/// Starts a fresh broker, runs one scenario under the run timeout, stops the broker.
async fn one_run(
    s: Scenario,
    p: &Params,
    bin: &BrokerBin,
    dir: &std::path::Path,
    cpu: Option<&str>,
) -> Result<scenario::Outcome, String> {
    if s.managed() {
        // The scenario starts and stops its brokers; a timeout drops (kills) them.
        let env = scenario::Env { bin, dir, cpu };
        let limit = s.timeout(p) + Duration::from_secs(5);
        let result = match tokio::time::timeout(limit, scenario::run_managed(s, p, &env)).await {
            Ok(Ok(o)) => Ok(o),
            Ok(Err(e)) => Err(format!("{e:#}")),
            Err(_) => Err(format!("no result within {} s", limit.as_secs())),
        };
        env.cleanup();
        tokio::time::sleep(Duration::from_millis(300)).await;
        return result;
    }
    let mut broker = brokers::start(bin, dir, cpu).await.map_err(|e| format!("{e:#}"))?;
    let limit = p.run_timeout + Duration::from_secs(5);
    let result = match tokio::time::timeout(limit, scenario::run(s, p, &mut broker)).await {
        Ok(Ok(o)) => Ok(o),
        Ok(Err(e)) => Err(format!("{e:#}")),
        Err(_) => Err(format!("no result within {} s", limit.as_secs())),
    };
    let died = broker.died();
    broker.stop().await;
    // Let the kernel finish closing the run's sockets before the next broker starts.
    tokio::time::sleep(Duration::from_millis(300)).await;
    match (result, died) {
        (Err(e), Some(d)) => Err(format!("{e}; {d}")),
        (r, _) => r,
    }
}
