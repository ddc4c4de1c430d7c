//! Test harness: real brokers on `127.0.0.1:0`, a raw-bytes MQTT client for malformed input,
//! and helpers for the mosquitto command-line clients. Shared by every integration test.
#![allow(dead_code)]

pub mod binary;
pub mod flows;
pub mod nats;

use std::net::SocketAddr;
use std::time::Duration;

use bytes::BytesMut;
use dataloom::codec::{self, Packet, ProtocolVersion};
use dataloom::config::Config;
use dataloom::server::Running;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// How long any single expected event may take before a test fails.
pub const WAIT: Duration = Duration::from_secs(5);

/// A broker running inside the test's runtime.
pub struct TestBroker {
    pub addr: SocketAddr,
    pub running: Option<Running>,
}

impl TestBroker {
    /// A broker on the defaults (memory store) bound to a free loopback port.
    pub async fn start() -> TestBroker {
        Self::start_with(|_| {}).await
    }

    /// A broker on the defaults changed by `edit`, bound to a free loopback port.
    pub async fn start_with(edit: impl FnOnce(&mut Config)) -> TestBroker {
        let mut cfg = Config::default();
        // Tests that need durability choose fjall and a temporary data dir themselves.
        cfg.storage.backend = dataloom::config::Backend::Memory;
        cfg.listeners.tcp.bind = "127.0.0.1:0".into();
        cfg.http.bind = "127.0.0.1:0".into();
        // Hermetic: the repository's schemas/ examples are not loaded unless a test asks.
        cfg.schemas.dir = std::path::PathBuf::new();
        edit(&mut cfg);
        cfg.validate().expect("test config is valid");
        let running = dataloom::server::start(&cfg).await.expect("broker starts");
        TestBroker { addr: running.mqtt_addr, running: Some(running) }
    }

    pub fn port(&self) -> u16 {
        self.addr.port()
    }

    /// Graceful shutdown (clients get DISCONNECT 0x8B).
    pub async fn stop(mut self) {
        if let Some(r) = self.running.take() {
            r.shutdown(Duration::from_secs(2)).await;
        }
    }
}

/// A client that speaks raw bytes, for malformed input and exact wire checks.
pub struct RawClient {
    pub stream: TcpStream,
    pub buf: BytesMut,
    pub version: ProtocolVersion,
}

impl RawClient {
    pub async fn connect(addr: SocketAddr) -> RawClient {
        let stream = TcpStream::connect(addr).await.expect("tcp connect");
        stream.set_nodelay(true).expect("nodelay");
        RawClient { stream, buf: BytesMut::new(), version: ProtocolVersion::V5 }
    }

    /// Sends raw bytes.
    pub async fn send(&mut self, bytes: &[u8]) {
        self.stream.write_all(bytes).await.expect("write");
    }

    /// Sends bytes given as hex (spaces allowed).
    pub async fn send_hex(&mut self, hex: &str) {
        self.send(&from_hex(hex)).await;
    }

    /// Encodes and sends a packet in this client's protocol version.
    pub async fn send_packet(&mut self, p: &Packet) {
        let mut out = BytesMut::new();
        codec::encode(p, self.version, &mut out);
        self.send(&out).await;
    }

    /// Next packet from the server, or `None` if the connection closed first. Panics after [`WAIT`].
    pub async fn recv(&mut self) -> Option<Packet> {
        tokio::time::timeout(WAIT, self.recv_inner()).await.expect("server answered in time")
    }

    async fn recv_inner(&mut self) -> Option<Packet> {
        let limits = codec::Limits { max_packet_size: 268_435_460, ..codec::Limits::default() };
        loop {
            match codec::decode_from_server(&mut self.buf, self.version, &limits) {
                Ok(Some(p)) => return Some(p),
                Ok(None) => {}
                Err(e) => panic!("server sent a malformed packet: {e}"),
            }
            match self.stream.read_buf(&mut self.buf).await {
                Ok(0) | Err(_) => return None,
                Ok(_) => {}
            }
        }
    }

    /// Waits until the server closes the connection, returning every packet it sent before.
    pub async fn until_closed(&mut self) -> Vec<Packet> {
        let mut got = Vec::new();
        while let Some(p) = self.recv().await {
            got.push(p);
        }
        got
    }
}

/// Resident set size of process `pid` (`"self"` for this one) in bytes, from `/proc`; 0 once
/// the process is gone.
pub fn rss_of(pid: &str) -> usize {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let kib: usize = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0);
    kib * 1024
}

/// GET `path` over HTTP/1.0 (no chunking, the server closes); returns (status, body).
pub async fn http_get(addr: SocketAddr, path: &str) -> (u16, String) {
    let mut s = TcpStream::connect(addr).await.expect("http connect");
    let req = format!("GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n");
    s.write_all(req.as_bytes()).await.expect("http write");
    let mut buf = Vec::new();
    tokio::time::timeout(WAIT, s.read_to_end(&mut buf))
        .await
        .expect("http answer in time")
        .expect("http read");
    let text = String::from_utf8_lossy(&buf).into_owned();
    let (head, body) = text.split_once("\r\n\r\n").expect("http response has a header");
    let status = head.split_whitespace().nth(1).and_then(|s| s.parse().ok()).expect("http status");
    (status, body.to_string())
}

/// Parses hex with optional whitespace: `"10 0c 00 04"`.
pub fn from_hex(hex: &str) -> Vec<u8> {
    let clean: String = hex.chars().filter(|c| !c.is_whitespace()).collect();
    (0..clean.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&clean[i..i + 2], 16).expect("valid hex"))
        .collect()
}

/// Runs a mosquitto command-line client to completion (bounded by [`WAIT`] x 2) and returns
/// (exit status success, stdout).
pub async fn mosquitto(program: &str, args: &[&str]) -> (bool, String) {
    let child = tokio::process::Command::new(program).args(args).kill_on_drop(true).output();
    let out = tokio::time::timeout(WAIT * 2, child)
        .await
        .unwrap_or_else(|_| panic!("{program} finished in time"))
        .unwrap_or_else(|e| panic!("{program} runs (apt-get install mosquitto-clients): {e}"));
    (out.status.success(), String::from_utf8_lossy(&out.stdout).into_owned())
}

/// One HTTP/1.0 request (the server closes after answering) with `headers` and `body`; returns
/// the status and the body parsed as JSON (panics when it is not JSON).
pub async fn http_json(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> (u16, serde_json::Value) {
    let mut s = TcpStream::connect(addr).await.expect("http connect");
    let mut req = format!("{method} {path} HTTP/1.0\r\nHost: {addr}\r\nContent-Length: {}\r\n", body.len());
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str("\r\n");
    let mut bytes = req.into_bytes();
    bytes.extend_from_slice(body);
    s.write_all(&bytes).await.expect("http write");
    let mut buf = Vec::new();
    tokio::time::timeout(WAIT, s.read_to_end(&mut buf)).await.expect("answer in time").expect("http read");
    let text = String::from_utf8_lossy(&buf).into_owned();
    let (head, body) = text.split_once("\r\n\r\n").expect("an HTTP header");
    let status = head.split_whitespace().nth(1).and_then(|s| s.parse().ok()).expect("HTTP status");
    let json =
        serde_json::from_str(body).unwrap_or_else(|e| panic!("{method} {path}: not JSON ({e}): {body}"));
    (status, json)
}

/// The `[[auth.keys]]` block `dataloom key create --print-config` prints for a key named
/// `name` with `secret` (given on stdin) and the extra `args` (permissions, `--admin`), as the
/// README's "API keys" section shows.
pub async fn key_block(name: &str, secret: &str, args: &[&str]) -> String {
    use std::process::Stdio;
    let mut cmd = tokio::process::Command::new(env!("CARGO_BIN_EXE_dataloom"));
    cmd.args(["key", "create", "--name", name])
        .args(args)
        .args(["--print-config", "--secret-stdin"])
        .env_remove("DATALOOM_ADMIN_KEY")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    let mut child = cmd.spawn().expect("dataloom key create runs");
    let mut stdin = child.stdin.take().expect("stdin piped");
    stdin.write_all(secret.as_bytes()).await.expect("write the secret");
    drop(stdin);
    let out =
        tokio::time::timeout(WAIT * 6, child.wait_with_output()).await.expect("in time").expect("output");
    let block = String::from_utf8(out.stdout).expect("utf8");
    assert!(
        out.status.success() && block.contains("[[auth.keys]]"),
        "{block}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    block
}
