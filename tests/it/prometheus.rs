//! A real Prometheus (Debian's package) scrapes a real server; after some
//! traffic, every PromQL expression of the Grafana dashboard and of the
//! alert rules returns data through Prometheus' HTTP API. This proves they
//! use the series the server really exports.

use std::net::{SocketAddr, TcpListener};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::common::{TestServer, http_get, root, test_set};
use mnister::proto::v1::{ClassifyRequest, classify_request::Input};

struct Prometheus(Child);

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn free_addr() -> SocketAddr {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
}

fn query(prom: SocketAddr, expr: &str) -> serde_json::Value {
    let q: String = url_encode(expr);
    let body = http_get(prom, &format!("/api/v1/query?query={q}"));
    serde_json::from_str(&body).unwrap_or_else(|e| panic!("{e}: {body}"))
}

fn url_encode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// The expressions to check: every dashboard target, and every alert rule
/// with its final threshold comparison removed (a healthy server must not
/// fire the alerts, but their inputs must exist).
fn expressions() -> Vec<(String, String)> {
    let mut out = Vec::new();
    let dash: serde_json::Value = serde_json::from_slice(
        &std::fs::read(root().join("deploy/grafana/dashboards/mnister.json")).unwrap(),
    )
    .unwrap();
    for p in dash["panels"].as_array().unwrap() {
        for t in p["targets"].as_array().unwrap() {
            let e = t["expr"]
                .as_str()
                .unwrap()
                .replace("$__rate_interval", "1m");
            out.push((format!("dashboard: {}", p["title"].as_str().unwrap()), e));
        }
    }
    let rules = std::fs::read_to_string(root().join("deploy/prometheus/alerts.yml")).unwrap();
    let threshold = regex_lite_strip;
    let mut name = String::new();
    let mut lines = rules.lines().peekable();
    while let Some(l) = lines.next() {
        if let Some(n) = l.trim().strip_prefix("- alert: ") {
            name = n.to_string();
        }
        if l.trim() == "expr: |" {
            let mut e = String::new();
            while let Some(n) = lines.peek() {
                if n.trim().is_empty() || n.trim_start().starts_with("for:") {
                    break;
                }
                e.push_str(n.trim());
                e.push(' ');
                lines.next();
            }
            out.push((format!("alert: {name}"), threshold(e.trim())));
        } else if let Some(e) = l.trim().strip_prefix("expr: ") {
            out.push((format!("alert: {name}"), threshold(e)));
        }
    }
    out
}

/// Removes a trailing `> 0.01`, `== 0` and the like.
fn regex_lite_strip(e: &str) -> String {
    for op in [" > ", " < ", " == ", " != ", " >= ", " <= "] {
        if let Some(i) = e.rfind(op) {
            let tail = e[i + op.len()..].trim();
            if tail.parse::<f64>().is_ok() {
                return e[..i].trim().to_string();
            }
        }
    }
    e.to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_dashboard_and_alert_expression_returns_data_from_a_real_prometheus() {
    let prometheus = std::env::var("PROMETHEUS").unwrap_or_else(|_| "/usr/bin/prometheus".into());
    assert!(
        std::path::Path::new(&prometheus).exists(),
        "{prometheus} not found: install Debian's prometheus package (scripts/test.sh does) or set PROMETHEUS"
    );
    let server = TestServer::start(&[]);
    server.wait_serving().await;

    let dir = tempfile::tempdir().unwrap();
    std::fs::copy(
        root().join("deploy/prometheus/alerts.yml"),
        dir.path().join("alerts.yml"),
    )
    .unwrap();
    std::fs::write(
        dir.path().join("prometheus.yml"),
        format!(
            "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\nrule_files: [alerts.yml]\n\
             scrape_configs:\n  - job_name: mnister\n    static_configs:\n      - targets: [\"{}\"]\n",
            server.metrics_addr
        ),
    )
    .unwrap();
    let prom_addr = free_addr();
    let _prom = Prometheus(
        Command::new(&prometheus)
            .arg(format!(
                "--config.file={}",
                dir.path().join("prometheus.yml").display()
            ))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.path().join("data").display()
            ))
            .arg(format!("--web.listen-address={prom_addr}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("starting prometheus"),
    );

    // Traffic of every kind while Prometheus scrapes: good and bad requests,
    // unary and stream.
    let mut c = server.client().await;
    let ds = test_set();
    let deadline = Instant::now() + Duration::from_secs(12);
    let mut i = 0;
    while Instant::now() < deadline {
        let _ = c
            .classify(ClassifyRequest {
                input: Some(Input::Mnist(ds.images.image(i % 1000).to_vec().into())),
                ..Default::default()
            })
            .await;
        if i % 10 == 0 {
            let _ = c.classify(ClassifyRequest::default()).await;
        }
        i += 1;
        if i % 50 == 0 {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    // Wait until Prometheus has enough samples for rate() over 1m.
    let ready = Instant::now() + Duration::from_secs(30);
    loop {
        let v = query(prom_addr, "count_over_time(up{job=\"mnister\"}[1m])");
        if v["data"]["result"][0]["value"][1]
            .as_str()
            .and_then(|s| s.parse::<f64>().ok())
            .unwrap_or(0.0)
            >= 5.0
        {
            break;
        }
        assert!(
            Instant::now() < ready,
            "Prometheus never scraped the server: {v}"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }

    let mut missing = Vec::new();
    let exprs = expressions();
    assert!(exprs.len() >= 20, "found only {} expressions", exprs.len());
    for (what, e) in &exprs {
        let v = query(prom_addr, e);
        assert_eq!(v["status"], "success", "{what}: {e}: {v}");
        let result = v["data"]["result"].as_array().unwrap();
        let has_value = result
            .iter()
            .any(|r| r["value"][1].as_str().map(|s| s != "NaN").unwrap_or(false));
        if !has_value {
            missing.push(format!("{what}: {e} -> {v}"));
        }
    }
    assert!(
        missing.is_empty(),
        "expressions without data:\n{}",
        missing.join("\n")
    );
}
