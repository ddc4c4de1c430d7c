//! The brokers under test as child processes: dataloom (memory storage, default limits),
//! Mosquitto and rumqttd with configuration files written here. Each is started fresh on its
//! own port, pinned with `taskset`, checked with a real CONNECT/CONNACK, and killed after the run.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use anyhow::{Context, anyhow, bail};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

use super::client::Client;
use super::stats::{cpu_seconds, rss_bytes};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Dataloom,
    Mosquitto,
    Rumqttd,
}

impl Kind {
    pub const ALL: [Kind; 3] = [Kind::Dataloom, Kind::Mosquitto, Kind::Rumqttd];

    pub fn name(self) -> &'static str {
        match self {
            Kind::Dataloom => "dataloom",
            Kind::Mosquitto => "mosquitto",
            Kind::Rumqttd => "rumqttd",
        }
    }

    pub fn parse(s: &str) -> Option<Kind> {
        Kind::ALL.into_iter().find(|k| k.name() == s)
    }
}

/// A broker binary to run.
#[derive(Debug, Clone)]
pub struct BrokerBin {
    pub kind: Kind,
    pub path: PathBuf,
}

/// How to start a broker beyond the defaults (dataloom only; the others ignore it).
#[derive(Debug, Clone, Default)]
pub struct Opts {
    /// Run dataloom on the fjall store in this directory (default: `--storage memory`).
    pub data_dir: Option<PathBuf>,
    /// TOML appended to dataloom's configuration file (after `[mqtt]`: start with a section).
    pub toml: String,
    /// Name of the log and config files (default: the broker's name), so that several starts in
    /// one run directory keep their logs.
    pub name: Option<String>,
    /// Wait for an `mqtts://` listening line too.
    pub tls: bool,
    /// Longest wait for the listening line and then for the first CONNACK (default 10 s each).
    pub start_timeout: Option<Duration>,
    /// Username and password of the readiness probe (when API keys exist).
    pub login: Option<(String, String)>,
}

/// A running broker process.
pub struct Running {
    child: Child,
    pub kind: Kind,
    pub pid: u32,
    pub addr: SocketAddr,
    /// The MQTT/TLS listener (dataloom with `Opts::tls`).
    pub tls_addr: Option<SocketAddr>,
    pub log: PathBuf,
    cpu_at_start: f64,
    /// From spawning the process to its `listening on mqtt://` line (dataloom).
    pub listening_after: Option<Duration>,
    /// From spawning the process to the first successful CONNACK.
    pub ready_after: Duration,
}

fn free_port() -> anyhow::Result<u16> {
    let l = std::net::TcpListener::bind("127.0.0.1:0").context("cannot find a free port")?;
    Ok(l.local_addr()?.port())
}

/// rumqttd's in-flight window (unacknowledged QoS 1/2 messages per client) as in its shipped
/// demo configuration, which it needs to start. dataloom and Mosquitto run on their own
/// defaults (dataloom: 1,000 messages and 1 MiB, Mosquitto: 20): the bench compares brokers as
/// shipped, not tuned alike (issue 18).
pub const RUMQTTD_INFLIGHT: u16 = 100;

fn mosquitto_conf(port: u16) -> String {
    format!(
        "# written by dataloom-bench\n\
         listener {port} 127.0.0.1\n\
         allow_anonymous true\n\
         persistence false\n\
         log_dest none\n\
         max_queued_messages 1000000\n\
         max_connections -1\n"
    )
}

fn rumqttd_conf(port: u16) -> String {
    format!(
        "# written by dataloom-bench\n\
         id = 0\n\
         [router]\n\
         id = 0\n\
         max_connections = 20010\n\
         max_outgoing_packet_count = 200\n\
         max_segment_size = 104857600\n\
         max_segment_count = 10\n\
         [v4.1]\n\
         name = \"v4-1\"\n\
         listen = \"127.0.0.1:{port}\"\n\
         next_connection_delay_ms = 0\n\
         [v4.1.connections]\n\
         connection_timeout_ms = 60000\n\
         max_payload_size = 1048576\n\
         max_inflight_count = {RUMQTTD_INFLIGHT}\n\
         dynamic_filters = true\n"
    )
}

/// Starts `bin` pinned to `cpu` (a `taskset -c` list) with its files under `dir`.
pub async fn start(bin: &BrokerBin, dir: &Path, cpu: Option<&str>) -> anyhow::Result<Running> {
    start_with(bin, dir, cpu, &Opts::default()).await
}

/// [`start`] with options (storage, extra configuration, TLS).
pub async fn start_with(
    bin: &BrokerBin,
    dir: &Path,
    cpu: Option<&str>,
    opts: &Opts,
) -> anyhow::Result<Running> {
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let name = opts.name.clone().unwrap_or_else(|| bin.kind.name().to_string());
    let log = dir.join(format!("{name}.log"));
    let start_timeout = opts.start_timeout.unwrap_or(Duration::from_secs(10));
    let mut args: Vec<String> = Vec::new();
    let mut port = 0;
    match bin.kind {
        Kind::Dataloom => {
            for a in ["serve", "--bind", "127.0.0.1:0", "--http-bind", "127.0.0.1:0"] {
                args.push(a.into());
            }
            match &opts.data_dir {
                Some(d) => args.extend([
                    "--storage".into(),
                    "fjall".into(),
                    "--data-dir".into(),
                    d.display().to_string(),
                ]),
                None => args.extend(["--storage".into(), "memory".into()]),
            }
            args.extend(["--log-level".into(), "warn".into()]);
            args.push("--config".into());
            let conf = dir.join(format!("{name}.toml"));
            std::fs::write(&conf, &opts.toml)?;
            args.push(conf.display().to_string());
        }
        Kind::Mosquitto => {
            port = free_port()?;
            let conf = dir.join("mosquitto.conf");
            std::fs::write(&conf, mosquitto_conf(port))?;
            args.extend(["-c".into(), conf.display().to_string()]);
        }
        Kind::Rumqttd => {
            port = free_port()?;
            let conf = dir.join("rumqttd.toml");
            std::fs::write(&conf, rumqttd_conf(port))?;
            args.extend(["--quiet".into(), "--config".into(), conf.display().to_string()]);
        }
    }
    let mut cmd = match cpu {
        Some(cpu) => {
            let mut c = Command::new("taskset");
            c.arg("-c").arg(cpu).arg(&bin.path);
            c
        }
        None => Command::new(&bin.path),
    };
    cmd.args(&args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(std::fs::File::create(&log)?)
        .kill_on_drop(true);
    let spawned = std::time::Instant::now();
    let mut child = cmd.spawn().with_context(|| format!("cannot run {}", bin.path.display()))?;
    let pid = child.id().ok_or_else(|| anyhow!("{} exited at once", bin.kind.name()))?;
    let stdout = child.stdout.take().expect("piped stdout");
    let mut listening_after = None;
    let mut tls_addr = None;
    let addr = if bin.kind == Kind::Dataloom {
        let mut lines = BufReader::new(stdout).lines();
        let wait = async {
            let mut addr = None;
            while let Some(line) = lines.next_line().await? {
                if let Some(a) = line.strip_prefix("dataloom listening on mqtt://") {
                    listening_after = Some(spawned.elapsed());
                    addr = Some(a.trim().parse::<SocketAddr>()?);
                } else if let Some(a) = line.strip_prefix("dataloom listening on mqtts://") {
                    tls_addr = Some(a.trim().parse::<SocketAddr>()?);
                }
                if let Some(a) = addr
                    && (!opts.tls || tls_addr.is_some())
                {
                    return Ok::<_, anyhow::Error>(a);
                }
            }
            bail!("dataloom exited before it was listening (see {})", log.display())
        };
        let addr = tokio::time::timeout(start_timeout, wait).await.map_err(|_| {
            anyhow!("dataloom did not print its address within {} s", start_timeout.as_secs())
        })??;
        // Keep draining stdout so the broker never blocks on a full pipe.
        tokio::task::spawn_local(async move { while let Ok(Some(_)) = lines.next_line().await {} });
        addr
    } else {
        tokio::task::spawn_local(async move {
            let mut lines = BufReader::new(stdout).lines();
            while let Ok(Some(_)) = lines.next_line().await {}
        });
        SocketAddr::from(([127, 0, 0, 1], port))
    };
    let mut running = Running {
        child,
        kind: bin.kind,
        pid,
        addr,
        tls_addr,
        log,
        cpu_at_start: 0.0,
        listening_after,
        ready_after: Duration::ZERO,
    };
    let login = opts.login.as_ref().map(|(u, p)| (u.as_str(), p.as_str()));
    running.wait_ready(bin.kind, start_timeout, login).await?;
    running.ready_after = spawned.elapsed();
    running.cpu_at_start = running.cpu_seconds();
    Ok(running)
}

impl Running {
    /// Retries a full MQTT CONNECT/CONNACK for up to `limit`.
    async fn wait_ready(
        &mut self,
        kind: Kind,
        limit: Duration,
        login: Option<(&str, &str)>,
    ) -> anyhow::Result<()> {
        let deadline = tokio::time::Instant::now() + limit;
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                bail!("{} exited with {status} (see {})", kind.name(), self.log.display());
            }
            let attempt = tokio::time::timeout(
                Duration::from_secs(2),
                Client::connect_as(self.addr, "bench-probe", login),
            );
            match attempt.await {
                Ok(Ok(_)) => return Ok(()),
                Ok(Err(e)) if tokio::time::Instant::now() > deadline => {
                    bail!("{} does not accept MQTT connections on {}: {e}", kind.name(), self.addr)
                }
                Err(_) if tokio::time::Instant::now() > deadline => {
                    bail!("{} does not answer CONNECT on {}", kind.name(), self.addr)
                }
                _ => tokio::time::sleep(Duration::from_millis(20)).await,
            }
        }
    }

    /// (VmRSS, VmHWM) in bytes.
    pub fn rss(&self) -> Option<(u64, u64)> {
        rss_bytes(self.pid)
    }

    /// CPU seconds used since the broker was ready.
    pub fn cpu_seconds(&self) -> f64 {
        cpu_seconds(&self.pid.to_string()).unwrap_or(0.0) - self.cpu_at_start
    }

    /// `Some(description)` if the broker process has died.
    pub fn died(&mut self) -> Option<String> {
        match self.child.try_wait() {
            Ok(Some(status)) => Some(format!("broker exited with {status} (see {})", self.log.display())),
            _ => None,
        }
    }

    /// Stops the broker with SIGTERM and waits up to `limit` for it to exit (then SIGKILL).
    /// Returns how long it took and its exit status, or an error if it had to be killed.
    pub async fn terminate(
        mut self,
        limit: Duration,
    ) -> anyhow::Result<(Duration, std::process::ExitStatus)> {
        let t = std::time::Instant::now();
        let sent = std::process::Command::new("kill")
            .args(["-TERM", &self.pid.to_string()])
            .status()
            .is_ok_and(|s| s.success());
        if !sent {
            bail!("could not send SIGTERM to {}", self.pid);
        }
        match tokio::time::timeout(limit, self.child.wait()).await {
            Ok(Ok(status)) => Ok((t.elapsed(), status)),
            Ok(Err(e)) => Err(e.into()),
            Err(_) => {
                let _ = self.child.start_kill();
                let _ = self.child.wait().await;
                bail!(
                    "did not exit within {} s of SIGTERM (killed; see {})",
                    limit.as_secs(),
                    self.log.display()
                )
            }
        }
    }

    /// Kills the broker (SIGKILL: nothing of its state is needed) and reaps it.
    pub async fn stop(mut self) {
        let _ = self.child.start_kill();
        let _ = tokio::time::timeout(Duration::from_secs(5), self.child.wait()).await;
    }
}
