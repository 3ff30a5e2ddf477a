//! The long fault cases, ignored in CI: `scripts/faults.sh` runs them on a
//! release build and docs/reliability.md records the results. Each prints
//! what it measured and fails when memory does not stay bounded.

use std::process::Command;
use std::time::{Duration, Instant};

use crate::common::{TestServer, metric, parse_metrics, test_set};
use mnister::proto::v1::{ClassifyRequest, classify_request::Input};
use tokio_stream::StreamExt;

fn env_or<T: std::str::FromStr>(name: &str, default: T) -> T {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn mnist_req(id: usize) -> ClassifyRequest {
    ClassifyRequest {
        id: id.to_string(),
        input: Some(Input::Mnist(
            test_set().images.image(id % 2000).to_vec().into(),
        )),
        ..Default::default()
    }
}

/// Runs the real load generator (`mnister bench`) against the server.
fn bench(server: &TestServer, args: &[&str]) -> serde_json::Value {
    let out = Command::new(crate::common::bin("mnister"))
        .args(["--addr", &server.url(), "bench", "--json"])
        .args(args)
        .output()
        .expect("running mnister bench");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("bench JSON")
}

fn errors(r: &serde_json::Value) -> u64 {
    r["errors"]
        .as_object()
        .map(|m| m.values().filter_map(|v| v.as_u64()).sum())
        .unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "a 5-minute soak; scripts/faults.sh runs it"]
async fn soak_at_half_load_keeps_memory_flat() {
    let secs: u64 = env_or("MNISTER_SOAK_SECS", 300);
    let rps: u64 = env_or("MNISTER_SOAK_RPS", 1100);
    // The model the server serves by default (int8), unless told otherwise.
    let model = std::env::var("MNISTER_SOAK_MODEL")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|_| crate::common::root().join("models/mnist-cnn.int8.onnx"));
    println!("model: {}", model.display());
    let server = TestServer::start_with_model(&model, &[]);
    server.wait_serving().await;
    // Let allocator pools and ORT arenas reach their working size first.
    let warm = bench(
        &server,
        &[
            "--rps",
            &rps.to_string(),
            "--concurrency",
            "512",
            "--duration",
            "15s",
        ],
    );
    assert_eq!(errors(&warm), 0, "{warm}");
    let rss0 = server.rss_mib();
    println!("soak: {rps} req/s open loop for {secs} s; RSS after warm-up {rss0:.1} MiB");
    println!("| minute | req/s | p50 ms | p99 ms | errors | RSS MiB |");
    println!("|---|---|---|---|---|---|");
    let chunks = secs.div_ceil(60);
    let mut rss = Vec::new();
    let mut total_errors = 0;
    for k in 0..chunks {
        let d = (secs - k * 60).min(60);
        let r = bench(
            &server,
            &[
                "--rps",
                &rps.to_string(),
                "--concurrency",
                "512",
                "--duration",
                &format!("{d}s"),
            ],
        );
        let now = server.rss_mib();
        rss.push(now);
        total_errors += errors(&r);
        println!(
            "| {} | {:.0} | {:.2} | {:.2} | {} | {:.1} |",
            k + 1,
            r["throughput"].as_f64().unwrap_or(0.0),
            r["latency"]["p50_us"].as_f64().unwrap_or(0.0) / 1000.0,
            r["latency"]["p99_us"].as_f64().unwrap_or(0.0) / 1000.0,
            errors(&r),
            now
        );
    }
    let last = *rss.last().unwrap();
    println!("RSS {rss0:.1} -> {last:.1} MiB ({:+.1} MiB)", last - rss0);
    assert_eq!(total_errors, 0);
    assert!(
        last - rss0 < (rss0 * 0.1).max(16.0),
        "RSS grew from {rss0:.1} to {last:.1} MiB"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "long; scripts/faults.sh runs it"]
async fn slow_readers_keep_server_memory_bounded() {
    let streams: usize = env_or("MNISTER_SLOW_STREAMS", 16);
    let server = TestServer::start(&[]);
    server.wait_serving().await;
    let mut c = server.client().await;
    for i in 0..200 {
        c.classify(mnist_req(i)).await.unwrap();
    }
    let rss0 = server.rss_mib();
    // Each stream offers 50,000 frames, reads one answer, then stalls.
    let mut held = Vec::new();
    for _ in 0..streams {
        // 64 KiB stream windows, so each stalled client stops accepting
        // after a few hundred answers (tonic's default 2 MiB would let the
        // server compute ~16,000 per stream first).
        let ch = tonic::transport::Endpoint::from_shared(server.url())
            .unwrap()
            .initial_stream_window_size(65_535)
            .initial_connection_window_size(4 << 20)
            .connect()
            .await
            .unwrap();
        let mut c = mnister::proto::v1::digit_classifier_client::DigitClassifierClient::new(ch);
        let frames = tokio_stream::iter((0..50_000).map(mnist_req));
        let mut out = c.classify_stream(frames).await.unwrap().into_inner();
        assert!(out.next().await.unwrap().is_ok());
        held.push((c, out));
    }
    // Until the server has stopped for all of them (the count holds still
    // for 3 s), at most 2 minutes.
    let mut peak = rss0;
    let mut answered: Vec<f64> = Vec::new();
    for _ in 0..120 {
        tokio::time::sleep(Duration::from_secs(1)).await;
        peak = peak.max(server.rss_mib());
        let m = parse_metrics(&server.scrape());
        answered.push(metric(
            &m,
            "mnister_requests_total",
            &[("rpc", "ClassifyStream"), ("code", "OK")],
        ));
        let n = answered.len();
        if n > 3 && answered[n - 1] == answered[n - 4] {
            break;
        }
    }
    // Once stalled, nothing grows: sample again a few seconds later.
    let stalled = server.rss_mib();
    tokio::time::sleep(Duration::from_secs(5)).await;
    let stalled_later = server.rss_mib();
    // The server still serves others while the stalled streams sit there.
    let started = Instant::now();
    c.classify(mnist_req(7)).await.unwrap();
    let other_call = started.elapsed();
    drop(held);
    crate::common::wait_idle(&server).await;
    let after = server.rss_mib();
    println!(
        "slow readers: {streams} streams x 50,000 frames offered, none read after the first answer"
    );
    println!(
        "answered (cumulative, per second): {:?}",
        answered.iter().map(|v| *v as u64).collect::<Vec<_>>()
    );
    println!(
        "RSS before {rss0:.1} MiB, peak {peak:.1} MiB ({:.1} MiB per stream), stalled {stalled:.1} -> {stalled_later:.1} MiB 5 s later, after dropping them {after:.1} MiB; another client's call took {other_call:?}",
        (peak - rss0) / streams as f64
    );
    assert!(
        answered[answered.len() - 1] == answered[answered.len() - 4],
        "the server kept working for stalled readers: {answered:?}"
    );
    // Bounded per stream (the frames in flight, the answers waiting, and
    // HTTP/2's receive window of requests the server has not read), and flat
    // while they stall.
    assert!(
        (peak - rss0) / (streams as f64) < 8.0,
        "each stalled stream costs {:.1} MiB",
        (peak - rss0) / streams as f64
    );
    assert!(
        stalled_later - stalled < 2.0,
        "RSS grew while the streams stalled: {stalled:.1} -> {stalled_later:.1} MiB"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "long; scripts/faults.sh runs it"]
async fn a_thousand_vanishing_clients_leak_nothing() {
    let server = TestServer::start(&[]);
    server.wait_serving().await;
    let mut c = server.client().await;
    for i in 0..200 {
        c.classify(mnist_req(i)).await.unwrap();
    }
    let rss_start = server.rss_mib();
    let mut rss0 = rss_start;
    for round in 0..10 {
        let mut tasks = Vec::new();
        for k in 0..100 {
            let c = server.client().await;
            tasks.push(tokio::spawn(async move {
                let mut c = c;
                let frames = tokio_stream::iter((0..300).map(mnist_req));
                let mut out = c.classify_stream(frames).await.unwrap().into_inner();
                let _ = out.next().await;
                if k % 3 == 0 {
                    // An abandoned unary call too.
                    let mut req = tonic::Request::new(mnist_req(k));
                    req.set_timeout(Duration::from_micros(50));
                    let _ = c.classify(req).await;
                }
            }));
        }
        for t in tasks {
            t.await.unwrap();
        }
        let m = crate::common::wait_idle(&server).await;
        if round == 2 {
            // The first rounds size the allocator's arenas for 100
            // concurrent connections (glibc keeps what it grew); a leak shows
            // as growth that goes on after that.
            rss0 = server.rss_mib();
        }
        println!(
            "round {}: RSS {:.1} MiB, dropped cancelled {} / deadline {}",
            round + 1,
            server.rss_mib(),
            metric(
                &m,
                "mnister_dropped_requests_total",
                &[("reason", "cancelled")]
            ),
            metric(
                &m,
                "mnister_dropped_requests_total",
                &[("reason", "deadline_exceeded")]
            )
        );
    }
    let after = server.rss_mib();
    println!(
        "1,000 vanishing clients: RSS {rss_start:.1} MiB before, {rss0:.1} after the first 300, {after:.1} after all 1,000"
    );
    assert!(
        after - rss0 < 8.0,
        "RSS grew from {rss0:.1} to {after:.1} MiB"
    );
    c.classify(mnist_req(1)).await.unwrap();
}
