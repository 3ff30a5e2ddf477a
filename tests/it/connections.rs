//! Connection management (gRFC A9): connection age with a graceful GOAWAY,
//! the idle limit, and sockets that never finish their handshake, against
//! the real server. Counts, not times: each wait is bounded, and the bar
//! is what the server did within it.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use crate::common::{TestServer, metric, parse_metrics, test_set};
use mnister::proto::v1::{ClassifyRequest, classify_request::Input};

fn req(i: usize) -> ClassifyRequest {
    let ds = test_set();
    ClassifyRequest {
        id: i.to_string(),
        input: Some(Input::Mnist(ds.images.image(i % ds.len()).to_vec().into())),
        ..Default::default()
    }
}

fn closed(server: &TestServer, port: &str, reason: &str) -> f64 {
    metric(
        &parse_metrics(&server.scrape()),
        "mnister_connections_closed_total",
        &[("port", port), ("reason", reason)],
    )
}

fn accepted(server: &TestServer, port: &str) -> f64 {
    metric(
        &parse_metrics(&server.scrape()),
        "mnister_connections_accepted_total",
        &[("port", port)],
    )
}

/// One Python grpcio channel (a client the project did not write; grpc's
/// own clients move calls to a new connection on GOAWAY) calls for 6 s
/// against a 2 s connection age.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_channel_calling_across_the_connection_age_moves_to_new_connections_without_a_failed_call()
 {
    let server = TestServer::start(&[
        "--max-connection-age",
        "2s",
        "--max-connection-age-grace",
        "5s",
    ]);
    server.wait_serving().await;
    let before = accepted(&server, "grpc");
    let stubs = tempfile::tempdir().unwrap();
    let out = std::process::Command::new(crate::kserve::python())
        .arg(crate::common::root().join("tests/replicas/client.py"))
        .arg("--stubs")
        .arg(stubs.path())
        .args(["--target", &server.grpc_addr.to_string(), "--seconds", "6"])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let r: serde_json::Value = serde_json::from_str(text.lines().last().unwrap()).unwrap();
    let connections = accepted(&server, "grpc") - before;
    assert_eq!(r["failed"], serde_json::json!({}), "{r}");
    assert!(r["ok"].as_u64().unwrap() > 100, "{r}");
    // Six seconds, an age of 2 s ±10%: at least two connections served
    // the one channel, and the server ended the old ones by age.
    assert!(
        connections >= 2.0,
        "{connections} connections served the channel: {r}"
    );
    assert!(closed(&server, "grpc", "max_age") >= 1.0);
    assert_eq!(
        closed(&server, "grpc", "max_age_grace"),
        0.0,
        "a call outlived the grace"
    );
}

/// A socket that sends `first` and then nothing.
fn stalled(addr: SocketAddr, first: &[u8]) -> TcpStream {
    let mut s = TcpStream::connect(addr).unwrap();
    s.write_all(first).unwrap();
    s
}

/// Whether the server closed `s` within `within` (a read gives EOF or a
/// reset, never data: these clients asked for nothing).
fn closed_by_server(s: &mut TcpStream, within: Duration) -> bool {
    let end = Instant::now() + within;
    let mut buf = [0u8; 4096];
    loop {
        let left = end.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return false;
        }
        s.set_read_timeout(Some(left)).unwrap();
        match s.read(&mut buf) {
            Ok(0) => return true,
            // The server's own SETTINGS or a GOAWAY may come first.
            Ok(_) => continue,
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => return true,
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                return false;
            }
            Err(e) => panic!("reading a stalled socket: {e}"),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sockets_that_stall_before_their_handshake_are_closed_and_idle_connections_end() {
    let server = TestServer::start(&["--handshake-timeout", "2s", "--max-connection-idle", "3s"]);
    server.wait_serving().await;
    const HALF_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n";
    let mut socks: Vec<(&str, TcpStream)> = Vec::new();
    for _ in 0..10 {
        socks.push(("grpc", stalled(server.grpc_addr, b"")));
        socks.push(("grpc", stalled(server.grpc_addr, HALF_PREFACE)));
        socks.push(("http", stalled(server.http_addr, b"")));
        socks.push((
            "http",
            stalled(server.http_addr, b"GET / HTTP/1.1\r\nHost: x\r\n"),
        ));
        socks.push(("metrics", stalled(server.metrics_addr, b"")));
    }
    // The server keeps serving beside them.
    let mut client = server.client().await;
    assert!(client.classify(req(0)).await.is_ok());
    // Bar: every stalled socket closed within 10 s of opening.
    let opened = Instant::now();
    let mut open = Vec::new();
    for (port, s) in &mut socks {
        let left = Duration::from_secs(10).saturating_sub(opened.elapsed());
        if !closed_by_server(s, left) {
            open.push(*port);
        }
    }
    assert!(open.is_empty(), "still open after 10 s: {open:?}");
    let by_port = |p| closed(&server, p, "handshake_timeout");
    assert_eq!(by_port("grpc"), 20.0);
    assert_eq!(by_port("http"), 20.0);
    assert_eq!(by_port("metrics"), 10.0);

    // A connection that did its preface and a call, then went quiet, is
    // ended after the idle limit (3 s), gracefully: the server reports it
    // as an idle close, and the channel reconnects for the next call.
    let idle_before = closed(&server, "grpc", "max_idle");
    let end = Instant::now() + Duration::from_secs(10);
    while closed(&server, "grpc", "max_idle") <= idle_before && Instant::now() < end {
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(
        closed(&server, "grpc", "max_idle") > idle_before,
        "the idle channel was not ended"
    );
    assert!(client.classify(req(1)).await.is_ok());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tls_handshake_that_never_comes_is_closed() {
    let dir = tempfile::tempdir().unwrap();
    let pki = crate::security::pki();
    let cert = crate::security::write(dir.path(), "server.pem", &pki.server_cert);
    let key = crate::security::write(dir.path(), "server.key", &pki.server_key);
    let server = TestServer::start(&[
        "--tls-cert",
        &cert,
        "--tls-key",
        &key,
        "--handshake-timeout",
        "2s",
    ]);
    // Half a ClientHello's record header, then nothing; and nothing at all.
    let mut socks = vec![
        stalled(server.grpc_addr, &[0x16, 0x03, 0x01]),
        stalled(server.grpc_addr, b""),
    ];
    for s in &mut socks {
        assert!(
            closed_by_server(s, Duration::from_secs(10)),
            "a stalled TLS socket stayed open"
        );
    }
    assert_eq!(closed(&server, "grpc", "handshake_timeout"), 2.0);
}
