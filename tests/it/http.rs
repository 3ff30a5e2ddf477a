//! The JSON API and the page: same engine, same limits, same errors as gRPC.

use crate::common::{TestServer, canvas_gray, http_get, http_post, png, test_set};
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_api_classifies_and_errors_like_grpc() {
    let server = TestServer::start(&["--max-image-bytes", "100000"]);
    server.wait_serving().await;
    let ds = test_set();
    let addr = server.http_addr;

    // A raw PNG body, as curl --data-binary sends it.
    let img = png(&image::DynamicImage::ImageLuma8(canvas_gray(
        ds.images.image(1),
    )));
    let (status, body) = http_post(addr, "/v1/classify?preprocessed=true", "image/png", &img);
    assert_eq!(status, 200, "{body}");
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["digit"], u64::from(ds.labels[1]));
    assert_eq!(
        B64.decode(v["preprocessed"].as_str().unwrap())
            .unwrap()
            .len(),
        784
    );
    assert!(v["timings"]["total_us"].as_u64().unwrap() > 0);

    // JSON with base64 mnist bytes.
    let req = serde_json::json!({"id": "j1", "mnist": B64.encode(ds.images.image(2))});
    let (status, body) = http_post(
        addr,
        "/v1/classify",
        "application/json",
        req.to_string().as_bytes(),
    );
    assert_eq!(status, 200, "{body}");
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(
        (v["id"].as_str().unwrap(), v["digit"].as_u64().unwrap()),
        ("j1", u64::from(ds.labels[2]))
    );

    // Errors: status, code and message.
    let cases: Vec<(&str, Vec<u8>, u16, &str)> = vec![
        (
            "application/json",
            br#"{"mnist": "AAAA"}"#.to_vec(),
            400,
            "784",
        ),
        (
            "application/json",
            br#"{"image": "AAAA", "mnist": "AAAA"}"#.to_vec(),
            400,
            "exactly one",
        ),
        ("application/json", br#"{}"#.to_vec(), 400, "no input"),
        (
            "application/json",
            br#"{"image": "%%%"}"#.to_vec(),
            400,
            "base64",
        ),
        ("application/json", b"not json".to_vec(), 400, "JSON"),
        ("image/png", vec![], 400, "empty"),
        ("image/png", vec![7u8; 150_000], 400, "limit"),
    ];
    for (ct, body, want, needle) in cases {
        let (status, text) = http_post(addr, "/v1/classify", ct, &body);
        assert_eq!(status, want, "{text}");
        let v: serde_json::Value = serde_json::from_str(&text).unwrap();
        assert_eq!(v["error"]["code"], "INVALID_ARGUMENT", "{text}");
        assert!(
            v["error"]["message"].as_str().unwrap().contains(needle),
            "{text}"
        );
    }

    let model: serde_json::Value = serde_json::from_str(&http_get(addr, "/v1/model")).unwrap();
    assert_eq!(model["sha256"].as_str().unwrap().len(), 64);
    let page = http_get(addr, "/");
    assert!(
        page.contains("<canvas id=\"pad\"")
            && !page.contains("http://")
            && !page.contains("https://")
    );
    let m = crate::common::parse_metrics(&server.scrape());
    assert_eq!(
        crate::common::metric(
            &m,
            "mnister_requests_total",
            &[("rpc", "HttpClassify"), ("code", "OK")]
        ),
        2.0
    );
}
