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
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_dataloom"));
        cmd.arg("serve")
            .args(["--bind", "127.0.0.1:0", "--http-bind", "127.0.0.1:0", "--data-dir"])
            .arg(self.data_dir())
            .args(&self.args)
            .current_dir(self.tmp.path());
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
        match self.try_start().await {
            Started::Up(p) => *p,
            Started::Exited { status, stderr } => {
                panic!("dataloom exited at start with {status}; stderr:\n{}", stderr.join("\n"))
            }
        }
    }

    /// Starts the broker: up once it prints `dataloom listening on mqtt://ADDR`, or its exit
    /// status and complete stderr if it exits first.
    pub async fn try_start(&self) -> Started {
        let mut child = self.command().spawn().expect("spawn the dataloom binary");
        let stdout = child.stdout.take().expect("stdout piped");
        let (addr_tx, addr_rx) = oneshot::channel();
        let (http_tx, http) = watch::channel(None);
        tokio::spawn(async move {
            let mut lines = BufReader::new(stdout).lines();
            let mut tx = Some(addr_tx);
            while let Ok(Some(line)) = lines.next_line().await {
                if let Some(a) = line.strip_prefix("dataloom listening on mqtt://")
                    && let Some(tx) = tx.take()
                {
                    let _ = tx.send(a.parse::<SocketAddr>().expect("listening line has an address"));
                } else if let Some(a) = line.strip_prefix("dataloom listening on http://") {
                    http_tx
                        .send_replace(Some(a.parse::<SocketAddr>().expect("listening line has an address")));
                }
            }
        });
        let stderr = StderrLog::default();
        let done = tokio::spawn(stderr.clone().collect(child.stderr.take().expect("stderr piped")));
        match tokio::time::timeout(START, addr_rx).await {
            Ok(Ok(addr)) => Started::Up(Box::new(Proc { child, addr, http, stderr })),
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
    /// The HTTP listener's address, once its listening line (printed after MQTT's) is read.
    http: watch::Receiver<Option<SocketAddr>>,
    pub stderr: StderrLog,
}

impl Proc {
    /// The address of the HTTP listener (`/metrics`); waits (bounded) for its listening line.
    pub async fn http_addr(&self) -> SocketAddr {
        let mut rx = self.http.clone();
        let got = tokio::time::timeout(START, rx.wait_for(Option::is_some)).await;
        match got {
            Ok(Ok(a)) => a.expect("wait_for returned a listening address"),
            _ => panic!("no `dataloom listening on http://` line within {START:?}"),
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
