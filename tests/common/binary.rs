//! The real `dataloom` binary for black-box tests: a temporary site (working directory and
//! data directory), start and wait for the listening lines, SIGKILL and SIGTERM, the stderr log.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncRead, BufReader};
use tokio::process::{Child, Command};
use tokio::sync::{oneshot, watch};

/// How long the binary may take to start listening, or to exit after a signal.
pub const START: Duration = Duration::from_secs(20);

/// A temporary directory for one broker "installation": the process's working directory (so no
/// `./schemas` is picked up) with the data directory `data/` inside.
pub struct Site {
    pub tmp: tempfile::TempDir,
    /// Extra `serve` arguments.
    pub args: Vec<String>,
    /// Extra environment (`DATALOOM_*` of the test's own environment is never passed on).
    pub env: Vec<(String, String)>,
}

/// The result of starting the binary.
pub enum Started {
    Up(Box<Proc>),
    Exited { status: ExitStatus, stderr: Vec<String> },
}

impl Site {
    pub fn new() -> Site {
        Site { tmp: tempfile::tempdir().expect("tempdir"), args: Vec::new(), env: Vec::new() }
    }

    pub fn data_dir(&self) -> PathBuf {
        self.tmp.path().join("data")
    }

    pub fn command(&self) -> Command {
        let mut cmd = self.bare_command();
        cmd.args(["--bind", "127.0.0.1:0", "--http-bind", "127.0.0.1:0", "--data-dir"])
            .arg(self.data_dir())
            .args(&self.args);
        cmd
    }

    /// `dataloom serve` as `make run` starts it: no flags, so the defaults (`./data`,
    /// `./schemas` of the site's directory) apply; only the two listeners move to free ports
    /// through the environment (`DATALOOM_LISTENERS__TCP__BIND`, `DATALOOM_HTTP__BIND`).
    pub fn make_run_command(&self) -> Command {
        let mut cmd = self.bare_command();
        cmd.env("DATALOOM_LISTENERS__TCP__BIND", "127.0.0.1:0").env("DATALOOM_HTTP__BIND", "127.0.0.1:0");
        cmd
    }

    /// `dataloom serve` in the site's directory with a clean environment plus `env`.
    fn bare_command(&self) -> Command {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_dataloom"));
        cmd.arg("serve").current_dir(self.tmp.path());
        for (k, _) in std::env::vars() {
            if k.starts_with("DATALOOM_") {
                cmd.env_remove(k);
            }
        }
        cmd.env_remove("RUST_LOG").env("NO_COLOR", "1").envs(self.env.iter().map(|(k, v)| (k, v)));
        cmd.stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::piped()).kill_on_drop(true);
        cmd
    }

    /// Starts the broker and waits for its listening line; panics if it does not come up.
    pub async fn start(&self) -> Proc {
        Self::up(self.try_start().await)
    }

    /// Starts the broker as `make run` does ([`Site::make_run_command`]); panics if it does
    /// not come up.
    pub async fn start_as_make_run(&self) -> Proc {
        Self::up(Self::spawn(self.make_run_command()).await)
    }

    fn up(started: Started) -> Proc {
        match started {
            Started::Up(p) => *p,
            Started::Exited { status, stderr } => {
                panic!("dataloom exited at start with {status}; stderr:\n{}", stderr.join("\n"))
            }
        }
    }

    /// Starts the broker: up once it prints `dataloom listening on mqtt://ADDR`, or its exit
    /// status and complete stderr if it exits first.
    pub async fn try_start(&self) -> Started {
        Self::spawn(self.command()).await
    }

    async fn spawn(mut cmd: Command) -> Started {
        let mut child = cmd.spawn().expect("spawn the dataloom binary");
        let stdout = child.stdout.take().expect("stdout piped");
        let (addr_tx, addr_rx) = oneshot::channel();
        let (listening_tx, listening) = watch::channel(Vec::new());
        tokio::spawn(async move {
            let mut lines = BufReader::new(stdout).lines();
            let mut tx = Some(addr_tx);
            while let Ok(Some(line)) = lines.next_line().await {
                if let Some(a) = line.strip_prefix("dataloom listening on mqtt://")
                    && let Some(tx) = tx.take()
                {
                    let _ = tx.send(a.parse::<SocketAddr>().expect("listening line has an address"));
                } else if let Some((scheme, a)) =
                    line.strip_prefix("dataloom listening on ").and_then(|l| l.split_once("://"))
                {
                    let a = a.parse::<SocketAddr>().expect("listening line has an address");
                    listening_tx.send_modify(|all| all.push((scheme.to_owned(), a)));
                }
            }
        });
        let stderr = StderrLog::default();
        let done = tokio::spawn(stderr.clone().collect(child.stderr.take().expect("stderr piped")));
        match tokio::time::timeout(START, addr_rx).await {
            Ok(Ok(addr)) => Started::Up(Box::new(Proc { child, addr, listening, stderr })),
            Ok(Err(_)) => {
                let status = tokio::time::timeout(START, child.wait())
                    .await
                    .expect("dataloom exits after closing stdout")
                    .expect("wait for dataloom");
                tokio::time::timeout(START, done).await.expect("stderr closes").expect("stderr reader");
                Started::Exited { status, stderr: stderr.lines() }
            }
            Err(_) => {
                panic!("dataloom did not listen within {START:?}; stderr:\n{}", stderr.lines().join("\n"))
            }
        }
    }
}

/// Everything a broker wrote to stderr, line by line, with a signal for each new line.
#[derive(Clone)]
pub struct StderrLog {
    lines: Arc<Mutex<Vec<String>>>,
    count: watch::Sender<usize>,
}

impl Default for StderrLog {
    fn default() -> StderrLog {
        StderrLog { lines: Arc::default(), count: watch::channel(0).0 }
    }
}

impl StderrLog {
    pub async fn collect(self, pipe: impl AsyncRead + Unpin) {
        let mut lines = BufReader::new(pipe).lines();
        while let Ok(Some(line)) = lines.next_line().await {
            let n = {
                let mut all = self.lines.lock().expect("stderr lines");
                all.push(line);
                all.len()
            };
            self.count.send_replace(n);
        }
    }

    pub fn lines(&self) -> Vec<String> {
        self.lines.lock().expect("stderr lines").clone()
    }

    /// Waits (bounded) for a line matching `pred` and returns it.
    pub async fn wait_for(&self, what: &str, pred: impl Fn(&str) -> bool) -> String {
        let mut rx = self.count.subscribe();
        let found = tokio::time::timeout(START, async {
            loop {
                if let Some(l) = self.lines().into_iter().find(|l| pred(l)) {
                    return l;
                }
                rx.changed().await.expect("stderr reader alive");
            }
        })
        .await;
        found.unwrap_or_else(|_| panic!("no stderr line {what}; stderr:\n{}", self.lines().join("\n")))
    }
}

/// A running `dataloom serve` (killed when dropped).
pub struct Proc {
    pub child: Child,
    pub addr: SocketAddr,
    /// The other listeners' schemes (`http`, `ws`, `mqtts`, `wss`) and addresses, as their
    /// listening lines (printed after MQTT's) are read.
    listening: watch::Receiver<Vec<(String, SocketAddr)>>,
    pub stderr: StderrLog,
}

impl Proc {
    /// The address of the HTTP listener (`/metrics`); waits (bounded) for its listening line.
    pub async fn http_addr(&self) -> SocketAddr {
        self.listener_addr("http").await
    }

    /// The address of the listener printed as `dataloom listening on SCHEME://ADDR` (`http`,
    /// `ws`, `mqtts`, `wss`); waits (bounded) for that line.
    pub async fn listener_addr(&self, scheme: &str) -> SocketAddr {
        let mut rx = self.listening.clone();
        let found = |all: &Vec<(String, SocketAddr)>| all.iter().find(|(s, _)| s == scheme).map(|(_, a)| *a);
        let got = tokio::time::timeout(START, rx.wait_for(|all| found(all).is_some())).await;
        match got {
            Ok(Ok(all)) => found(&all).expect("wait_for returned a listening address"),
            _ => panic!("no `dataloom listening on {scheme}://` line within {START:?}"),
        }
    }

    /// `kill -9`: SIGKILL, then reap it.
    pub async fn kill_9(mut self) {
        self.child.start_kill().expect("SIGKILL");
        let status = tokio::time::timeout(START, self.child.wait()).await.expect("dies").expect("wait");
        assert!(!status.success(), "SIGKILLed broker reported success");
    }

    /// SIGTERM, then waits (bounded) for the exit status.
    pub async fn terminate(mut self) -> ExitStatus {
        let pid = self.child.id().expect("still running").to_string();
        let sent = Command::new("kill").args(["-TERM", &pid]).status().await.expect("run kill");
        assert!(sent.success(), "kill -TERM {pid}");
        tokio::time::timeout(START, self.child.wait())
            .await
            .unwrap_or_else(|_| panic!("no exit within {START:?} of SIGTERM"))
            .expect("wait")
    }

    /// SIGTERM and asserts a clean stop: exit code 0, nothing alarming on stderr.
    pub async fn stop(self) {
        let log = self.stderr.clone();
        let status = self.terminate().await;
        let lines = log.lines();
        assert_eq!(status.code(), Some(0), "SIGTERM exit status {status}; stderr:\n{}", lines.join("\n"));
        assert!(
            !lines.iter().any(|l| l.contains("panicked") || l.contains("ERROR")),
            "graceful stop logged an error:\n{}",
            lines.join("\n")
        );
    }
}
