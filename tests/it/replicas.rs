//! More than one machine, on loopback: three real servers behind real
//! balancers, driven by Python grpcio (tests/replicas/client.py), each
//! replica's share counted from its own /metrics.
//!
//! - client-side `round_robin` over the three addresses;
//! - nginx's `grpc_pass` (Debian's nginx) with `deploy/nginx/mnister-grpc.conf`
//!   as shipped;
//! - a rolling SIGTERM restart of all three under a steady load, with the
//!   retry policy of docs/operations.md: zero failed calls; then a SIGKILL
//!   of one replica, whose cost the test prints.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::common::{TestServer, default_model, metric, parse_metrics, root};

fn three() -> Vec<TestServer> {
    (0..3).map(|_| TestServer::start(&[])).collect()
}

/// Classify calls each replica answered OK.
fn answered(s: &TestServer) -> f64 {
    metric(
        &parse_metrics(&s.scrape()),
        "mnister_requests_total",
        &[("rpc", "Classify"), ("code", "OK")],
    )
}

fn python() -> String {
    crate::kserve::python()
}

/// The Python client with `args`; returns its JSON summary.
fn client(stubs: &Path, args: &[&str]) -> serde_json::Value {
    let out = client_cmd(stubs, args).output().unwrap();
    summary(out)
}

fn client_cmd(stubs: &Path, args: &[&str]) -> Command {
    let mut c = Command::new(python());
    c.arg(root().join("tests/replicas/client.py"))
        .arg("--stubs")
        .arg(stubs)
        .args(args);
    c
}

fn summary(out: std::process::Output) -> serde_json::Value {
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "client failed: {text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_str(text.lines().last().unwrap_or(""))
        .unwrap_or_else(|e| panic!("{e}: {text}"))
}

fn targets(servers: &[TestServer]) -> String {
    let addrs: Vec<String> = servers.iter().map(|s| s.grpc_addr.to_string()).collect();
    format!("ipv4:{}", addrs.join(","))
}

/// Every replica's share of `total` calls is at least 20%.
fn assert_spread(servers: &[TestServer], before: &[f64], total: f64, how: &str) {
    let got: Vec<f64> = servers
        .iter()
        .zip(before)
        .map(|(s, b)| answered(s) - b)
        .collect();
    let sum: f64 = got.iter().sum();
    assert_eq!(sum, total, "{how}: the replicas answered {got:?}");
    for g in &got {
        assert!(*g >= 0.2 * total, "{how}: shares {got:?} of {total}");
    }
    eprintln!("{how}: calls per replica {got:?} of {total}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn round_robin_in_the_client_spreads_calls_over_three_replicas() {
    let servers = three();
    for s in &servers {
        s.wait_serving().await;
    }
    let stubs = tempfile::tempdir().unwrap();
    let before: Vec<f64> = servers.iter().map(answered).collect();
    let r = client(
        stubs.path(),
        &[
            "--target",
            &targets(&servers),
            "--round-robin",
            "--calls",
            "300",
        ],
    );
    assert_eq!(r["ok"], 300, "{r}");
    assert_spread(&servers, &before, 300.0, "round_robin");
}

/// Debian's nginx with the shipped config, in front of `upstreams`.
struct Nginx {
    child: Child,
    addr: String,
    _dir: tempfile::TempDir,
}

impl Nginx {
    fn start(upstreams: &[&TestServer]) -> Nginx {
        let bin = std::env::var("NGINX").unwrap_or_else(|_| "/usr/sbin/nginx".into());
        assert!(
            Path::new(&bin).exists(),
            "{bin} not found: scripts/test.sh installs Debian's nginx (or set NGINX)"
        );
        let dir = tempfile::tempdir().unwrap();
        let port = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let d = dir.path().display();
        let shipped: PathBuf = root().join("deploy/nginx/mnister-grpc.conf");
        std::fs::write(
            dir.path().join("nginx.conf"),
            format!(
                "daemon off;\npid {d}/nginx.pid;\nerror_log {d}/error.log warn;\n\
                 events {{ worker_connections 1024; }}\n\
                 http {{\n  access_log off;\n  client_body_temp_path {d}/body;\n\
                 proxy_temp_path {d}/proxy;\n  fastcgi_temp_path {d}/fastcgi;\n\
                 uwsgi_temp_path {d}/uwsgi;\n  scgi_temp_path {d}/scgi;\n\
                 include {};\n}}\n",
                shipped.display()
            ),
        )
        .unwrap();
        let replicas: String = upstreams
            .iter()
            .map(|s| format!("server {};\n", s.grpc_addr))
            .collect();
        std::fs::write(dir.path().join("mnister-replicas.conf"), replicas).unwrap();
        std::fs::write(
            dir.path().join("mnister-listen.conf"),
            format!("listen 127.0.0.1:{port} http2;\n"),
        )
        .unwrap();
        let child = Command::new(&bin)
            .arg("-p")
            .arg(dir.path())
            .arg("-c")
            .arg(dir.path().join("nginx.conf"))
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("starting nginx");
        let addr = format!("127.0.0.1:{port}");
        let end = Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(&addr).is_err() {
            assert!(
                Instant::now() < end,
                "nginx did not listen: {}",
                std::fs::read_to_string(dir.path().join("error.log")).unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        Nginx {
            child,
            addr,
            _dir: dir,
        }
    }
}

impl Drop for Nginx {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nginx_grpc_pass_spreads_calls_over_three_replicas() {
    let servers = three();
    for s in &servers {
        s.wait_serving().await;
    }
    let nginx = Nginx::start(&servers.iter().collect::<Vec<_>>());
    let stubs = tempfile::tempdir().unwrap();
    let before: Vec<f64> = servers.iter().map(answered).collect();
    // One client channel, one connection to nginx: nginx spreads its calls.
    let r = client(stubs.path(), &["--target", &nginx.addr, "--calls", "300"]);
    assert_eq!(r["ok"], 300, "{r}");
    assert_spread(&servers, &before, 300.0, "nginx grpc_pass");
}

/// Restarts replica `i` on its own port, and waits until it serves.
async fn restart(servers: &mut [TestServer], i: usize, kill: bool) {
    let addr = servers[i].grpc_addr.to_string();
    if kill {
        servers[i].kill();
    } else {
        let status = servers[i].terminate();
        assert!(
            status.success(),
            "replica {i} exited with {status} on SIGTERM"
        );
    }
    servers[i] = TestServer::start_on(&default_model(), &addr, &[]);
    servers[i].wait_serving().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rolling_restart_under_load_fails_no_call() {
    let mut servers = three();
    for s in &servers {
        s.wait_serving().await;
    }
    let stubs = tempfile::tempdir().unwrap();
    let target = targets(&servers);
    let run = |stop: &Path| {
        client_cmd(
            stubs.path(),
            &[
                "--target",
                &target,
                "--round-robin",
                "--retry",
                "--concurrency",
                "4",
                "--seconds",
                "120",
                "--stop-file",
                &stop.display().to_string(),
            ],
        )
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap()
    };

    // SIGTERM each replica in turn, and start it again on its port.
    let stop = stubs.path().join("stop-term");
    let load = run(&stop);
    tokio::time::sleep(Duration::from_secs(2)).await;
    for i in 0..servers.len() {
        restart(&mut servers, i, false).await;
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    std::fs::write(&stop, "").unwrap();
    let r = summary(load.wait_with_output().unwrap());
    eprintln!("rolling SIGTERM restart of 3 replicas: {r}");
    assert_eq!(r["failed"], serde_json::json!({}), "{r}");
    assert!(r["ok"].as_u64().unwrap() > 200, "{r}");

    // SIGKILL one replica under the same load: what the retry policy
    // cannot save is stated, not asserted (calls in flight on the killed
    // replica that had their answer cut off).
    let stop = stubs.path().join("stop-kill");
    let load = run(&stop);
    tokio::time::sleep(Duration::from_secs(2)).await;
    restart(&mut servers, 1, true).await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    std::fs::write(&stop, "").unwrap();
    let r = summary(load.wait_with_output().unwrap());
    eprintln!("SIGKILL of one of 3 replicas under load: {r}");
    assert!(r["ok"].as_u64().unwrap() > 100, "{r}");
}
