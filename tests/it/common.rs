//! Test helpers: start the real `mnister-server` binary on ephemeral ports,
//! talk to it with real gRPC clients, scrape its real /metrics.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use mnister::proto::v1::digit_classifier_client::DigitClassifierClient;
use mnister_core::idx::{Dataset, Split, load_mnist};
use tonic::transport::Channel;

pub fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// A binary of another workspace package (the `mnister` client), built next
/// to this test binary: target/<profile>/NAME. `scripts/test.sh` builds it
/// first (`cargo build --workspace --bins`); cargo only builds the binaries
/// of the package whose tests it runs.
pub fn bin(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("the test binary's path");
    // target/<profile>/deps/it-<hash> -> target/<profile>/NAME
    let path = exe
        .parent()
        .and_then(|deps| deps.parent())
        .expect("target/<profile>/deps")
        .join(name);
    assert!(
        path.is_file(),
        "{} is missing; build it first: cargo build --workspace --bins",
        path.display()
    );
    path
}

/// A model file described by ONNX Runtime, as the server sees it.
pub fn model_file(path: &std::path::Path) -> mnister_core::backend::ModelFile {
    let env = mnister_core::backend::ort::init_runtime(None).expect("ONNX Runtime");
    mnister_core::backend::ort::load_model(env, path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

pub fn default_model() -> PathBuf {
    root().join("models/mnist-cnn.onnx")
}

/// One trained network, for tests that edit a network's layers by name: the
/// default model is an ensemble whose members' layers carry prefixes. This
/// is the default's third member, committed as its own fp32 file.
pub fn single_network_model() -> PathBuf {
    root().join("docs/model/ensemble-run/member2.onnx")
}

/// The committed MNIST sample's test set (2,000 images), read once.
pub fn test_set() -> &'static Dataset {
    static SET: std::sync::OnceLock<Dataset> = std::sync::OnceLock::new();
    SET.get_or_init(|| {
        load_mnist(&root().join("tests/data/mnist"), Split::Test).expect("tests/data/mnist")
    })
}

pub struct TestServer {
    child: Child,
    pub grpc_addr: SocketAddr,
    pub metrics_addr: SocketAddr,
    pub http_addr: SocketAddr,
    pub log: Arc<Mutex<Vec<String>>>,
}

impl TestServer {
    /// Starts the server with `extra` flags and waits until it listens.
    pub fn start(extra: &[&str]) -> TestServer {
        Self::start_with_model(&default_model(), extra)
    }

    pub fn start_with_model(model: &std::path::Path, extra: &[&str]) -> TestServer {
        Self::start_on(model, "127.0.0.1:0", extra)
    }

    /// Starts the server with its gRPC port at `grpc_addr` (a replica
    /// restarted on the port its clients know).
    pub fn start_on(model: &std::path::Path, grpc_addr: &str, extra: &[&str]) -> TestServer {
        Self::spawn(model, grpc_addr, &[], extra)
    }

    /// Starts the server with extra environment variables (RUST_LOG...).
    pub fn start_with_env(env: &[(&str, &str)], extra: &[&str]) -> TestServer {
        Self::spawn(&default_model(), "127.0.0.1:0", env, extra)
    }

    fn spawn(
        model: &std::path::Path,
        grpc_addr: &str,
        env: &[(&str, &str)],
        extra: &[&str],
    ) -> TestServer {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_mnister-server"));
        cmd.args([
            "--grpc-addr",
            grpc_addr,
            "--metrics-addr",
            "127.0.0.1:0",
            "--http-addr",
            "127.0.0.1:0",
        ])
        .arg("--model")
        .arg(model)
        .args(extra)
        .env("RUST_LOG", "info,ort=warn")
        .envs(env.iter().copied())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
        let mut child = cmd.spawn().expect("spawning mnister-server");
        let stderr = child.stderr.take().unwrap();
        let log = Arc::new(Mutex::new(Vec::new()));
        let (tx, rx) = std::sync::mpsc::channel();
        {
            let log = log.clone();
            std::thread::spawn(move || {
                for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                    if line.contains("listening") {
                        let _ = tx.send(line.clone());
                    }
                    log.lock().unwrap().push(line);
                }
            });
        }
        let line = rx
            .recv_timeout(Duration::from_secs(20))
            .unwrap_or_else(|_| panic!("server did not start: {:?}", log.lock().unwrap()));
        // The listening line, as text (`grpc_addr=...`) or JSON.
        let json: Option<serde_json::Value> = serde_json::from_str(&line).ok();
        let field = |name: &str| -> SocketAddr {
            if let Some(v) = &json {
                return v["fields"][name]
                    .as_str()
                    .unwrap_or_else(|| panic!("{name} in {line}"))
                    .parse()
                    .unwrap();
            }
            let at = line
                .find(&format!("{name}="))
                .unwrap_or_else(|| panic!("{name} in {line}"));
            line[at + name.len() + 1..]
                .split_whitespace()
                .next()
                .unwrap()
                .parse()
                .unwrap()
        };
        TestServer {
            grpc_addr: field("grpc_addr"),
            metrics_addr: field("metrics_addr"),
            http_addr: field("http_addr"),
            child,
            log,
        }
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.grpc_addr)
    }

    pub async fn channel(&self) -> Channel {
        Channel::from_shared(self.url())
            .unwrap()
            .connect()
            .await
            .expect("connecting")
    }

    pub async fn client(&self) -> DigitClassifierClient<Channel> {
        DigitClassifierClient::new(self.channel().await).max_decoding_message_size(64 << 20)
    }

    /// Waits until the health check reports SERVING.
    pub async fn wait_serving(&self) {
        self.wait_serving_on(self.channel().await).await;
    }

    /// Waits for SERVING over a given channel (e.g. a TLS one).
    pub async fn wait_serving_on(&self, channel: tonic::transport::Channel) {
        use tonic_health::pb::{
            HealthCheckRequest, health_check_response::ServingStatus, health_client::HealthClient,
        };
        let mut h = HealthClient::new(channel);
        let deadline = Instant::now() + Duration::from_secs(90);
        loop {
            let s = h
                .check(HealthCheckRequest {
                    service: "mnister.v1.DigitClassifier".into(),
                })
                .await
                .map(|r| r.into_inner().status);
            if matches!(s, Ok(v) if v == ServingStatus::Serving as i32) {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "never became SERVING: {:?}",
                self.log.lock().unwrap()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    pub fn scrape(&self) -> String {
        http_get(self.metrics_addr, "/metrics")
    }

    /// The server's connected TCP sockets (those its accept paths produced):
    /// (local address, peer address, TCP_NODELAY). Read from the server
    /// process itself: each socket is duplicated into this process with
    /// pidfd_getfd(2), and the option read back with getsockopt.
    pub fn accepted_sockets(&self) -> Vec<(SocketAddr, SocketAddr, bool)> {
        use std::os::fd::{FromRawFd, OwnedFd};
        let pid = self.child.id() as libc::pid_t;
        // SAFETY: plain syscalls; a returned fd is owned by us from here on.
        let pidfd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) };
        assert!(
            pidfd >= 0,
            "pidfd_open: {}",
            std::io::Error::last_os_error()
        );
        let pidfd = unsafe { OwnedFd::from_raw_fd(pidfd as i32) };
        let mut out = Vec::new();
        for entry in std::fs::read_dir(format!("/proc/{pid}/fd"))
            .unwrap()
            .flatten()
        {
            let is_socket = std::fs::read_link(entry.path())
                .is_ok_and(|t| t.to_string_lossy().starts_with("socket:"));
            let Ok(target) = entry.file_name().to_string_lossy().parse::<i32>() else {
                continue;
            };
            if !is_socket {
                continue;
            }
            use std::os::fd::AsRawFd;
            let fd = unsafe { libc::syscall(libc::SYS_pidfd_getfd, pidfd.as_raw_fd(), target, 0) };
            if fd < 0 {
                panic!("pidfd_getfd: {}", std::io::Error::last_os_error());
            }
            // Our duplicate shares the socket; dropping it closes only the duplicate.
            let s = TcpStream::from(unsafe { OwnedFd::from_raw_fd(fd as i32) });
            if let (Ok(local), Ok(peer), Ok(nodelay)) = (s.local_addr(), s.peer_addr(), s.nodelay())
            {
                out.push((local, peer, nodelay));
            }
        }
        out
    }

    /// Sends a signal (e.g. "HUP") to the server.
    pub fn signal(&self, name: &str) {
        let _ = Command::new("kill")
            .args([&format!("-{name}"), &self.child.id().to_string()])
            .status();
    }

    /// Resident memory of the server process, in MiB.
    pub fn rss_mib(&self) -> f64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id()))
            .expect("reading /proc status");
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|kb| kb.parse::<f64>().ok())
            .expect("VmRSS")
            / 1024.0
    }

    /// Sends SIGTERM and waits for the exit.
    pub fn terminate(&mut self) -> ExitStatus {
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(s) = self.child.try_wait().unwrap() {
                return s;
            }
            assert!(
                Instant::now() < deadline,
                "server did not exit after SIGTERM"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl TestServer {
    /// SIGKILL, and wait for the exit.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A minimal HTTP/1.0 GET, returning the body.
pub fn http_get(addr: SocketAddr, path: &str) -> String {
    let mut s = TcpStream::connect(addr).expect("connecting to the metrics port");
    write!(s, "GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n").unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    let (head, body) = out.split_once("\r\n\r\n").expect("an HTTP response");
    assert!(
        head.starts_with("HTTP/1.") && head.contains(" 200 "),
        "{head}"
    );
    body.to_string()
}

/// One sample of a Prometheus text exposition.
#[derive(Debug, Clone)]
pub struct Sample {
    pub name: String,
    pub labels: Vec<(String, String)>,
    pub value: f64,
}

/// Parses Prometheus' text format strictly enough to catch malformed output.
pub fn parse_metrics(text: &str) -> Vec<Sample> {
    let mut out = Vec::new();
    for line in text.lines() {
        if line.is_empty() || line.starts_with('#') {
            if let Some(rest) = line.strip_prefix("# TYPE ") {
                let kind = rest.split_whitespace().nth(1).expect("TYPE has a kind");
                assert!(
                    ["counter", "gauge", "histogram", "summary", "untyped"].contains(&kind),
                    "{line}"
                );
            }
            continue;
        }
        let (series, value) = line
            .rsplit_once(' ')
            .unwrap_or_else(|| panic!("bad line {line:?}"));
        let value: f64 = match value {
            "+Inf" => f64::INFINITY,
            v => v
                .parse()
                .unwrap_or_else(|_| panic!("bad value in {line:?}")),
        };
        let (name, labels) = match series.split_once('{') {
            Some((n, rest)) => {
                let body = rest
                    .strip_suffix('}')
                    .unwrap_or_else(|| panic!("bad labels in {line:?}"));
                let labels = body
                    .split("\",")
                    .filter(|s| !s.is_empty())
                    .map(|kv| {
                        let (k, v) = kv
                            .split_once("=\"")
                            .unwrap_or_else(|| panic!("bad label in {line:?}"));
                        (k.to_string(), v.trim_end_matches('"').to_string())
                    })
                    .collect();
                (n.to_string(), labels)
            }
            None => (series.to_string(), vec![]),
        };
        assert!(
            name.chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':'),
            "bad metric name {name:?}"
        );
        out.push(Sample {
            name,
            labels,
            value,
        });
    }
    out
}

/// Sum of the samples called `name` whose labels include `with`.
pub fn metric(samples: &[Sample], name: &str, with: &[(&str, &str)]) -> f64 {
    samples
        .iter()
        .filter(|s| s.name == name)
        .filter(|s| {
            with.iter()
                .all(|(k, v)| s.labels.iter().any(|(a, b)| a == k && b == v))
        })
        .map(|s| s.value)
        .sum()
}

/// Encodes an image as PNG.
pub fn png(img: &image::DynamicImage) -> Vec<u8> {
    let mut out = Vec::new();
    img.write_to(&mut std::io::Cursor::new(&mut out), image::ImageFormat::Png)
        .unwrap();
    out
}

/// A 28x28 MNIST image rendered as a 280x280 dark-on-light canvas.
pub fn canvas_gray(mnist: &[u8]) -> image::GrayImage {
    let small =
        image::GrayImage::from_raw(28, 28, mnist.iter().map(|v| 255 - v).collect()).unwrap();
    image::imageops::resize(&small, 280, 280, image::imageops::FilterType::Triangle)
}

/// A minimal HTTP/1.0 POST; returns (status, body).
pub fn http_post(addr: SocketAddr, path: &str, content_type: &str, body: &[u8]) -> (u16, String) {
    let mut s = TcpStream::connect(addr).expect("connecting to the HTTP port");
    write!(
        s,
        "POST {path} HTTP/1.0\r\nHost: {addr}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\n\r\n",
        body.len()
    )
    .unwrap();
    s.write_all(body).unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    let (head, body) = out.split_once("\r\n\r\n").expect("an HTTP response");
    let status = head.split_whitespace().nth(1).unwrap().parse().unwrap();
    (status, body.to_string())
}

/// Waits until nothing is admitted or queued any more.
pub async fn wait_idle(server: &TestServer) -> Vec<Sample> {
    for _ in 0..100 {
        let m = parse_metrics(&server.scrape());
        if metric(&m, "mnister_inflight_requests", &[]) == 0.0
            && metric(&m, "mnister_queue_depth", &[]) == 0.0
        {
            return m;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!(
        "the server never went idle: {}",
        server
            .scrape()
            .lines()
            .filter(|l| l.contains("inflight") || l.contains("queue_depth"))
            .collect::<Vec<_>>()
            .join("\n")
    );
}
