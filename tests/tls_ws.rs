//! TLS and WebSocket listeners end to end: rumqttc and mosquitto_pub/sub over TLS and mutual
//! TLS, TLS 1.2 and 1.3, the client certificate's CN as username, MQTT over WebSocket with
//! packets split across and packed into frames, WebSocket over TLS, bad input on every port,
//! the connect deadline including the handshake, and certificate reload without dropping
//! connections. Certificates are made at test time with rcgen.

mod common;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use common::{TestBroker, WAIT, from_hex, mosquitto};
use dataloom::metrics::Transport;
use dataloom::net::listener::handshake_failures;
use futures_util::{SinkExt, StreamExt};
use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, ExtendedKeyUsagePurpose, IsCa, KeyPair,
    KeyUsagePurpose,
};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tokio_rustls::rustls::crypto::ring;
use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use tokio_rustls::rustls::{self, ClientConfig, RootCertStore};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;

/// v3.1.1 CONNECT, client id "c1", clean session, keep alive 60 s.
const CONNECT: &str = "10 0e 00 04 4d 51 54 54 04 02 00 3c 00 02 63 31";
const CONNACK: &str = "20 02 00 00";
/// SUBSCRIBE id 1 to `a/b` at QoS 0, and its SUBACK.
const SUBSCRIBE: &str = "82 08 00 01 00 03 61 2f 62 00";
const SUBACK: &str = "90 03 00 01 00";
const PINGREQ: &str = "c0 00";
const PINGRESP: &str = "d0 00";

/// A CA, a server certificate for 127.0.0.1/localhost and client certificates, as PEM files.
struct Pki {
    dir: tempfile::TempDir,
    ca: CertifiedIssuer<'static, KeyPair>,
}

/// A certificate and key made by [`Pki`].
struct Issued {
    cert: PathBuf,
    key: PathBuf,
    der: CertificateDer<'static>,
    key_der: PrivateKeyDer<'static>,
}

impl Pki {
    fn new() -> Pki {
        let dir = tempfile::tempdir().expect("tempdir");
        let ca = ca("dataloom test CA");
        std::fs::write(dir.path().join("ca.pem"), ca.pem()).expect("write ca");
        Pki { dir, ca }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    fn ca_file(&self) -> PathBuf {
        self.path("ca.pem")
    }

    fn ca_der(&self) -> CertificateDer<'static> {
        self.ca.der().clone()
    }

    /// A server certificate for 127.0.0.1 and localhost with `cn`, written as `name`.pem/.key.
    fn server(&self, name: &str, cn: &str) -> Issued {
        issue(&self.ca, self.dir.path(), name, cn, ExtendedKeyUsagePurpose::ServerAuth)
    }

    /// A client certificate with `cn`, signed by this CA.
    fn client(&self, name: &str, cn: &str) -> Issued {
        issue(&self.ca, self.dir.path(), name, cn, ExtendedKeyUsagePurpose::ClientAuth)
    }
}

fn ca(cn: &str) -> CertifiedIssuer<'static, KeyPair> {
    let mut params = CertificateParams::new(Vec::<String>::new()).expect("params");
    params.distinguished_name.push(DnType::CommonName, cn);
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.key_usages =
        vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign, KeyUsagePurpose::DigitalSignature];
    CertifiedIssuer::self_signed(params, KeyPair::generate().expect("key")).expect("ca")
}

fn issue(
    ca: &CertifiedIssuer<'static, KeyPair>,
    dir: &Path,
    name: &str,
    cn: &str,
    usage: ExtendedKeyUsagePurpose,
) -> Issued {
    let mut params =
        CertificateParams::new(vec!["localhost".to_string(), "127.0.0.1".to_string()]).expect("params");
    params.distinguished_name.push(DnType::CommonName, cn);
    params.extended_key_usages = vec![usage];
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    let key = KeyPair::generate().expect("key");
    let cert = params.signed_by(&key, ca).expect("sign");
    let (cert_path, key_path) = (dir.join(format!("{name}.pem")), dir.join(format!("{name}.key")));
    std::fs::write(&cert_path, cert.pem()).expect("write cert");
    std::fs::write(&key_path, key.serialize_pem()).expect("write key");
    let key_der = PrivateKeyDer::try_from(key.serialize_der()).expect("key der");
    Issued { cert: cert_path, key: key_path, der: cert.der().clone(), key_der }
}

fn install_provider() {
    let _ = ring::default_provider().install_default();
}

/// A rustls client trusting `ca`, with the given TLS versions and optional client certificate.
fn client_config(
    ca: CertificateDer<'static>,
    versions: &[&'static rustls::SupportedProtocolVersion],
    client: Option<&Issued>,
) -> Arc<ClientConfig> {
    let mut roots = RootCertStore::empty();
    roots.add(ca).expect("ca");
    let builder = ClientConfig::builder_with_provider(Arc::new(ring::default_provider()))
        .with_protocol_versions(versions)
        .expect("versions")
        .with_root_certificates(roots);
    let config = match client {
        None => builder.with_no_client_auth(),
        Some(c) => {
            builder.with_client_auth_cert(vec![c.der.clone()], c.key_der.clone_key()).expect("client cert")
        }
    };
    Arc::new(config)
}

/// A TLS 1.3 rustls client trusting the test CA of `pki`, with an optional client certificate.
fn tls13_client(pki: &Pki, client: Option<&Issued>) -> Arc<ClientConfig> {
    client_config(pki.ca_der(), &[&rustls::version::TLS13], client)
}

async fn tls_connect(
    addr: SocketAddr,
    config: Arc<ClientConfig>,
) -> std::io::Result<tokio_rustls::client::TlsStream<TcpStream>> {
    let tcp = TcpStream::connect(addr).await?;
    let name = ServerName::try_from("127.0.0.1").expect("server name");
    tokio::time::timeout(WAIT, TlsConnector::from(config).connect(name, tcp))
        .await
        .expect("handshake in time")
}

/// Writes `hex`, then reads exactly the bytes of `expect_hex` (panics after [`WAIT`]).
async fn exchange<S: AsyncRead + AsyncWrite + Unpin>(s: &mut S, hex: &str, expect_hex: &str) {
    s.write_all(&from_hex(hex)).await.expect("write");
    s.flush().await.expect("flush");
    let want = from_hex(expect_hex);
    let mut got = vec![0; want.len()];
    tokio::time::timeout(WAIT, s.read_exact(&mut got)).await.expect("answer in time").expect("read");
    assert_eq!(got, want);
}

/// True when the server closes the stream (EOF or reset) before [`WAIT`], reading anything sent.
async fn closed_by_server<S: AsyncRead + Unpin>(s: &mut S) -> bool {
    let mut buf = [0u8; 1024];
    let wait = async {
        loop {
            match s.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
        }
    };
    tokio::time::timeout(WAIT, wait).await.is_ok()
}

async fn tls_broker(server: &Issued, edit: impl FnOnce(&mut dataloom::config::Config)) -> TestBroker {
    install_provider();
    let (cert, key) = (server.cert.clone(), server.key.clone());
    TestBroker::start_with(move |c| {
        c.listeners.tls.bind = "127.0.0.1:0".into();
        c.listeners.tls.certfile = cert.clone();
        c.listeners.tls.keyfile = key.clone();
        c.listeners.ws.bind = "127.0.0.1:0".into();
        c.listeners.wss.bind = "127.0.0.1:0".into();
        c.listeners.wss.certfile = cert;
        c.listeners.wss.keyfile = key;
        edit(c);
    })
    .await
}

fn addrs(b: &TestBroker) -> (SocketAddr, SocketAddr, SocketAddr) {
    let r = b.running.as_ref().expect("running");
    (r.tls_addr.expect("tls listener"), r.ws_addr.expect("ws listener"), r.wss_addr.expect("wss listener"))
}

/// Checks that a plain TCP client is still served normally.
async fn plain_client_still_served(b: &TestBroker) {
    let mut s = TcpStream::connect(b.addr).await.expect("tcp");
    exchange(&mut s, CONNECT, CONNACK).await;
    exchange(&mut s, PINGREQ, PINGRESP).await;
}

#[tokio::test]
async fn rumqttc_publishes_and_subscribes_over_tls() {
    let pki = Pki::new();
    let server = pki.server("server", "localhost");
    let broker = tls_broker(&server, |_| {}).await;
    let (tls, _, _) = addrs(&broker);
    let config = client_config(pki.ca_der(), &[&rustls::version::TLS13, &rustls::version::TLS12], None);
    let mut opts = rumqttc::MqttOptions::new("tls-client", "127.0.0.1", tls.port());
    opts.set_transport(rumqttc::Transport::tls_with_config(rumqttc::TlsConfiguration::Rustls(config)));
    let (client, mut events) = rumqttc::AsyncClient::new(opts, 10);
    client.subscribe("t/tls", rumqttc::QoS::AtLeastOnce).await.expect("subscribe");
    let got = tokio::time::timeout(WAIT, async {
        loop {
            match events.poll().await.expect("event loop") {
                rumqttc::Event::Incoming(rumqttc::Packet::SubAck(_)) => {
                    client
                        .publish("t/tls", rumqttc::QoS::AtLeastOnce, false, "over tls")
                        .await
                        .expect("publish");
                }
                rumqttc::Event::Incoming(rumqttc::Packet::Publish(p)) => return p,
                _ => {}
            }
        }
    })
    .await
    .expect("message in time");
    assert_eq!(got.payload, Bytes::from_static(b"over tls"));
    broker.stop().await;
}

#[tokio::test]
async fn tls_1_2_and_1_3_are_both_negotiated() {
    let pki = Pki::new();
    let server = pki.server("server", "localhost");
    let broker = tls_broker(&server, |_| {}).await;
    let (tls, _, _) = addrs(&broker);
    for (version, want) in [
        (&rustls::version::TLS12, rustls::ProtocolVersion::TLSv1_2),
        (&rustls::version::TLS13, rustls::ProtocolVersion::TLSv1_3),
    ] {
        let mut s = tls_connect(tls, client_config(pki.ca_der(), &[version], None)).await.expect("tls");
        assert_eq!(s.get_ref().1.protocol_version(), Some(want));
        exchange(&mut s, CONNECT, CONNACK).await;
        exchange(&mut s, PINGREQ, PINGRESP).await;
    }
    broker.stop().await;
}

#[tokio::test]
async fn mosquitto_clients_over_tls_and_mutual_tls() {
    let pki = Pki::new();
    let server = pki.server("server", "localhost");
    let client = pki.client("client", "device-1");
    let broker = tls_broker(&server, |c| {
        c.listeners.tls.cafile = pki.ca_file();
        c.listeners.tls.require_certificate = true;
        c.listeners.tls.use_identity_as_username = true;
    })
    .await;
    let (tls, _, _) = addrs(&broker);
    let port = tls.port().to_string();
    let (ca, cert, key) = (pki.ca_file(), client.cert.clone(), client.key.clone());
    let (ca, cert, key) =
        (ca.to_str().expect("utf8"), cert.to_str().expect("utf8"), key.to_str().expect("utf8"));
    let base = ["-h", "127.0.0.1", "-p", &port, "--cafile", ca];
    let with_cert = [&base[..], &["--cert", cert, "--key", key]].concat();
    let publish = [&with_cert[..], &["-t", "m/tls", "-m", "hello mtls", "-r", "-q", "1"]].concat();
    let (ok, _) = mosquitto("mosquitto_pub", &publish).await;
    assert!(ok, "mosquitto_pub with a client certificate");
    let subscribe = [&with_cert[..], &["-t", "m/tls", "-C", "1", "-W", "5"]].concat();
    let (ok, out) = mosquitto("mosquitto_sub", &subscribe).await;
    assert!(ok, "mosquitto_sub with a client certificate");
    assert_eq!(out.trim(), "hello mtls");
    // Without a client certificate the handshake is refused.
    let before = handshake_failures(Transport::Tls);
    let no_cert = [&base[..], &["-t", "m/tls", "-C", "1", "-W", "3"]].concat();
    let (ok, _) = mosquitto("mosquitto_sub", &no_cert).await;
    assert!(!ok, "mosquitto_sub without a certificate must fail");
    assert!(handshake_failures(Transport::Tls) > before);
    broker.stop().await;
}

#[tokio::test]
async fn mosquitto_sub_with_cafile_only() {
    let pki = Pki::new();
    let server = pki.server("server", "localhost");
    let broker = tls_broker(&server, |_| {}).await;
    let (tls, _, _) = addrs(&broker);
    let port = tls.port().to_string();
    let ca = pki.ca_file();
    let ca = ca.to_str().expect("utf8");
    let args = ["-h", "127.0.0.1", "-p", &port, "--cafile", ca, "-t", "s/x", "-m", "v", "-r"];
    assert!(mosquitto("mosquitto_pub", &args).await.0);
    let args = ["-h", "localhost", "-p", &port, "--cafile", ca, "-t", "s/x", "-C", "1", "-W", "5"];
    let (ok, out) = mosquitto("mosquitto_sub", &args).await;
    assert!(ok && out.trim() == "v", "{out:?}");
    broker.stop().await;
}

#[tokio::test]
async fn client_certificate_cn_is_the_identity() {
    install_provider();
    let pki = Pki::new();
    let server = pki.server("server", "localhost");
    let client = pki.client("client", "device-42");
    assert_eq!(dataloom::net::tls::common_name(&client.der).as_deref(), Some("device-42"));
    let expiry = dataloom::net::tls::not_after(&client.der).expect("not after");
    assert!(expiry > std::time::SystemTime::now());
    let settings = dataloom::net::tls::TlsSettings {
        section: "listeners.tls",
        certfile: server.cert.clone(),
        keyfile: server.key.clone(),
        cafile: Some(pki.ca_file()),
        require_certificate: true,
        use_identity_as_username: true,
    };
    let tls = dataloom::net::tls::Tls::load(settings).expect("load");
    let (client_io, server_io) = tokio::io::duplex(64 * 1024);
    let config = tls13_client(&pki, Some(&client));
    let name = ServerName::try_from("localhost").expect("name");
    let (server_side, client_side) =
        tokio::join!(tls.accept(server_io), TlsConnector::from(config).connect(name, client_io));
    client_side.expect("client handshake");
    let (_, identity) = server_side.expect("server handshake");
    assert_eq!(identity.as_deref(), Some("device-42"));
}

#[tokio::test]
async fn client_certificate_from_another_ca_is_refused() {
    let pki = Pki::new();
    let server = pki.server("server", "localhost");
    let rogue_ca = ca("rogue CA");
    let rogue = issue(&rogue_ca, pki.dir.path(), "rogue", "device-1", ExtendedKeyUsagePurpose::ClientAuth);
    let good = pki.client("good", "device-1");
    let broker = tls_broker(&server, |c| {
        c.listeners.tls.cafile = pki.ca_file();
        c.listeners.tls.require_certificate = true;
    })
    .await;
    let (tls, _, _) = addrs(&broker);
    let before = handshake_failures(Transport::Tls);
    // TLS 1.3: the client finishes first, so the refusal shows on the first read or write.
    let refused = match tls_connect(tls, tls13_client(&pki, Some(&rogue))).await {
        Err(_) => true,
        Ok(mut s) => {
            let _ = s.write_all(&from_hex(CONNECT)).await;
            closed_by_server(&mut s).await
        }
    };
    assert!(refused, "a certificate from another CA must be refused");
    let mut s = tls_connect(tls, tls13_client(&pki, Some(&good))).await.expect("tls");
    exchange(&mut s, CONNECT, CONNACK).await;
    assert!(handshake_failures(Transport::Tls) > before);
    plain_client_still_served(&broker).await;
    broker.stop().await;
}

#[tokio::test]
async fn garbage_and_plaintext_on_the_tls_port_are_closed() {
    let pki = Pki::new();
    let server = pki.server("server", "localhost");
    let broker = tls_broker(&server, |_| {}).await;
    let (tls, _, _) = addrs(&broker);
    let before = handshake_failures(Transport::Tls);
    for bytes in
        [from_hex(CONNECT), b"\x16\x03\x01\xff\xffgarbage garbage garbage".to_vec(), vec![0xff; 4096]]
    {
        let mut s = TcpStream::connect(tls).await.expect("tcp");
        let _ = s.write_all(&bytes).await;
        assert!(closed_by_server(&mut s).await, "closed after {:02x?}", &bytes[..4]);
    }
    assert!(handshake_failures(Transport::Tls) >= before + 3);
    let mut s = tls_connect(tls, tls13_client(&pki, None)).await.expect("tls");
    exchange(&mut s, CONNECT, CONNACK).await;
    plain_client_still_served(&broker).await;
    broker.stop().await;
}

#[tokio::test]
async fn connect_deadline_includes_the_handshake() {
    let pki = Pki::new();
    let server = pki.server("server", "localhost");
    let broker = tls_broker(&server, |c| {
        c.listeners.tls.connect_timeout = Some(Duration::from_millis(300));
        c.listeners.ws.connect_timeout = Some(Duration::from_millis(300));
    })
    .await;
    let (tls, ws, _) = addrs(&broker);
    for addr in [tls, ws] {
        let started = std::time::Instant::now();
        let mut s = TcpStream::connect(addr).await.expect("tcp");
        assert!(closed_by_server(&mut s).await);
        assert!(started.elapsed() < Duration::from_secs(3), "{addr}: {:?}", started.elapsed());
    }
    broker.stop().await;
}

fn ws_request(addr: SocketAddr, path: &str) -> tokio_tungstenite::tungstenite::handshake::client::Request {
    let mut req = format!("ws://{addr}{path}").into_client_request().expect("request");
    req.headers_mut().insert("Sec-WebSocket-Protocol", "mqtt".parse().expect("header"));
    req
}

/// Opens a TCP connection to `addr` and upgrades it to a WebSocket on `path`.
async fn ws_connect(
    addr: SocketAddr,
    path: &str,
) -> Result<
    (
        tokio_tungstenite::WebSocketStream<TcpStream>,
        tokio_tungstenite::tungstenite::handshake::client::Response,
    ),
    tokio_tungstenite::tungstenite::Error,
> {
    let tcp = TcpStream::connect(addr).await.expect("tcp");
    tokio_tungstenite::client_async(ws_request(addr, path), tcp).await
}

/// Reads binary messages until `want` bytes arrived; returns them.
async fn ws_read<S: AsyncRead + AsyncWrite + Unpin>(
    ws: &mut tokio_tungstenite::WebSocketStream<S>,
    want: usize,
) -> Vec<u8> {
    let mut got = Vec::new();
    tokio::time::timeout(WAIT, async {
        while got.len() < want {
            match ws.next().await {
                Some(Ok(Message::Binary(b))) => got.extend_from_slice(&b),
                Some(Ok(_)) => {}
                other => panic!("websocket ended: {other:?}"),
            }
        }
    })
    .await
    .expect("answer in time");
    got
}

/// CONNECT split across two messages, SUBSCRIBE and PINGREQ packed into one, a ping.
async fn ws_session<S: AsyncRead + AsyncWrite + Unpin>(ws: &mut tokio_tungstenite::WebSocketStream<S>) {
    let connect = from_hex(CONNECT);
    ws.send(Message::Binary(Bytes::copy_from_slice(&connect[..5]))).await.expect("send");
    ws.send(Message::Binary(Bytes::copy_from_slice(&connect[5..]))).await.expect("send");
    assert_eq!(ws_read(ws, 4).await, from_hex(CONNACK));
    let mut two = from_hex(SUBSCRIBE);
    two.extend(from_hex(PINGREQ));
    ws.send(Message::Binary(two.into())).await.expect("send");
    let mut want = from_hex(SUBACK);
    want.extend(from_hex(PINGRESP));
    assert_eq!(ws_read(ws, want.len()).await, want);
    ws.send(Message::Ping(Bytes::from_static(b"hi"))).await.expect("ping");
    let pong = tokio::time::timeout(WAIT, async {
        loop {
            if let Some(Ok(Message::Pong(p))) = ws.next().await {
                return p;
            }
        }
    })
    .await
    .expect("pong in time");
    assert_eq!(pong, Bytes::from_static(b"hi"));
}

#[tokio::test]
async fn mqtt_over_websocket_ignores_frame_boundaries() {
    let pki = Pki::new();
    let server = pki.server("server", "localhost");
    let broker = tls_broker(&server, |_| {}).await;
    let (_, ws_addr, _) = addrs(&broker);
    let (mut ws, resp) = ws_connect(ws_addr, "/mqtt").await.expect("upgrade");
    assert_eq!(resp.headers().get("Sec-WebSocket-Protocol").map(|v| v.as_bytes()), Some(&b"mqtt"[..]));
    ws_session(&mut ws).await;
    broker.stop().await;
}

#[tokio::test]
async fn mqtt_over_websocket_over_tls() {
    let pki = Pki::new();
    let server = pki.server("server", "localhost");
    let broker = tls_broker(&server, |_| {}).await;
    let (_, _, wss) = addrs(&broker);
    let tls = tls_connect(wss, tls13_client(&pki, None)).await.expect("tls");
    let (mut ws, _) = tokio_tungstenite::client_async(ws_request(wss, "/mqtt"), tls).await.expect("upgrade");
    ws_session(&mut ws).await;
    broker.stop().await;
}

#[tokio::test]
async fn bad_websocket_requests_are_closed() {
    let pki = Pki::new();
    let server = pki.server("server", "localhost");
    let broker = tls_broker(&server, |_| {}).await;
    let (_, ws_addr, _) = addrs(&broker);
    let before = handshake_failures(Transport::Ws);
    // Plain HTTP without upgrade.
    let mut s = TcpStream::connect(ws_addr).await.expect("tcp");
    s.write_all(b"GET /mqtt HTTP/1.1\r\nHost: x\r\n\r\n").await.expect("write");
    assert!(closed_by_server(&mut s).await);
    // Raw MQTT on the WebSocket port.
    let mut s = TcpStream::connect(ws_addr).await.expect("tcp");
    s.write_all(&from_hex(CONNECT)).await.expect("write");
    assert!(closed_by_server(&mut s).await);
    // Wrong path: 404.
    let err = ws_connect(ws_addr, "/other").await.expect_err("404");
    match err {
        tokio_tungstenite::tungstenite::Error::Http(resp) => assert_eq!(resp.status(), 404),
        other => panic!("expected HTTP 404, got {other}"),
    }
    assert!(handshake_failures(Transport::Ws) >= before + 3);
    // A text message ends the connection with close code 1003.
    let (mut ws, _) = ws_connect(ws_addr, "/mqtt").await.expect("upgrade");
    ws.send(Message::Text("hello".into())).await.expect("send");
    let close = tokio::time::timeout(WAIT, async {
        loop {
            match ws.next().await {
                Some(Ok(Message::Close(frame))) => return frame,
                Some(Ok(_)) => {}
                other => panic!("expected a close frame, got {other:?}"),
            }
        }
    })
    .await
    .expect("close in time");
    assert_eq!(close.map(|f| u16::from(f.code)), Some(1003));
    // The broker still serves WebSocket and TCP clients.
    let (mut ws, _) = ws_connect(ws_addr, "/mqtt").await.expect("upgrade");
    ws_session(&mut ws).await;
    plain_client_still_served(&broker).await;
    broker.stop().await;
}

#[tokio::test]
async fn reloaded_certificate_serves_new_connections_and_keeps_old_ones() {
    let pki = Pki::new();
    let first = pki.server("server", "first");
    let broker = tls_broker(&first, |_| {}).await;
    let (tls, _, _) = addrs(&broker);
    let config = tls13_client(&pki, None);
    let mut old = tls_connect(tls, config.clone()).await.expect("tls");
    exchange(&mut old, CONNECT, CONNACK).await;
    assert_eq!(old.get_ref().1.peer_certificates().expect("cert")[0], first.der);
    // Replace the files in place (as certbot does), then reload (what SIGHUP does).
    let second = pki.server("next", "second");
    std::fs::copy(&second.cert, &first.cert).expect("copy cert");
    std::fs::copy(&second.key, &first.key).expect("copy key");
    broker.running.as_ref().expect("running").reload_certs().expect("reload");
    let mut new = tls_connect(tls, config).await.expect("tls");
    let seen = &new.get_ref().1.peer_certificates().expect("cert")[0];
    assert_eq!(*seen, second.der);
    assert_eq!(dataloom::net::tls::common_name(seen).as_deref(), Some("second"));
    exchange(&mut new, "10 0e 00 04 4d 51 54 54 04 02 00 3c 00 02 63 32", CONNACK).await;
    // The connection made before the reload still works.
    exchange(&mut old, PINGREQ, PINGRESP).await;
    // A broken file keeps the current certificate.
    std::fs::write(&first.key, "not a key").expect("write");
    assert!(broker.running.as_ref().expect("running").reload_certs().is_err());
    let s = tls_connect(tls, tls13_client(&pki, None)).await.expect("tls");
    assert_eq!(s.get_ref().1.peer_certificates().expect("cert")[0], second.der);
    broker.stop().await;
}

#[test]
fn listener_config_is_checked() {
    use dataloom::config::Config;
    let mut c = Config::default();
    c.listeners.tls.certfile = "server.pem".into();
    let e = c.validate().expect_err("keyfile missing").to_string();
    assert!(e.contains("listeners.tls"), "{e}");
    c.listeners.tls.keyfile = "server.key".into();
    let e = c.validate().expect_err("0.0.0.0 without allow_anonymous").to_string();
    assert!(e.contains("listeners.tls.bind") && e.contains("allow_anonymous"), "{e}");
    c.listeners.tls.bind = "127.0.0.1:8883".into();
    c.validate().expect("loopback TLS listener");
    c.listeners.tls.require_certificate = true;
    let e = c.validate().expect_err("cafile missing").to_string();
    assert!(e.contains("cafile"), "{e}");
    c.listeners.tls.cafile = "ca.pem".into();
    c.validate().expect("mutual TLS");
    c.listeners.ws.bind = "0.0.0.0:8083".into();
    let e = c.validate().expect_err("ws on the network").to_string();
    assert!(e.contains("listeners.ws.bind"), "{e}");
    c.auth.allow_anonymous = true;
    c.validate().expect("explicit opt-in");
    c.listeners.ws.path = "mqtt".into();
    assert!(c.validate().expect_err("path").to_string().contains("listeners.ws.path"));
}

#[tokio::test]
async fn listener_connection_limit_is_its_own() {
    let pki = Pki::new();
    let server = pki.server("server", "localhost");
    let broker = tls_broker(&server, |c| c.listeners.tls.max_connections = 1).await;
    let (tls, _, _) = addrs(&broker);
    let config = tls13_client(&pki, None);
    let mut first = tls_connect(tls, config.clone()).await.expect("tls");
    exchange(&mut first, CONNECT, CONNACK).await;
    // The second waits in the backlog: no handshake while the first holds the only permit.
    let tcp = TcpStream::connect(tls).await.expect("tcp");
    let name = ServerName::try_from("127.0.0.1").expect("name");
    let second = tokio::spawn(TlsConnector::from(config).connect(name, tcp));
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(!second.is_finished(), "second TLS connection must wait for a permit");
    // Other listeners are not limited by it.
    plain_client_still_served(&broker).await;
    drop(first);
    let mut second = tokio::time::timeout(WAIT, second).await.expect("in time").expect("task").expect("tls");
    exchange(&mut second, CONNECT, CONNACK).await;
    broker.stop().await;
}
