//! TLS, mutual TLS and bearer tokens, with certificates made at test time.

use std::path::Path;

use crate::common::{TestServer, test_set};
use mnister::proto::v1::digit_classifier_client::DigitClassifierClient;
use mnister::proto::v1::{ClassifyRequest, classify_request::Input};
use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair};
use tonic::Code;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity};

pub struct Pki {
    pub ca: String,
    pub server_cert: String,
    pub server_key: String,
    pub client_cert: String,
    pub client_key: String,
}

fn ca() -> (String, Issuer<'static, KeyPair>) {
    let mut p = CertificateParams::new(Vec::<String>::new()).unwrap();
    p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let key = KeyPair::generate().unwrap();
    let pem = p.self_signed(&key).unwrap().pem();
    (pem, Issuer::new(p, key))
}

fn leaf(issuer: &Issuer<'static, KeyPair>, names: &[&str]) -> (String, String) {
    let p =
        CertificateParams::new(names.iter().map(|s| s.to_string()).collect::<Vec<_>>()).unwrap();
    let key = KeyPair::generate().unwrap();
    (
        p.signed_by(&key, issuer).unwrap().pem(),
        key.serialize_pem(),
    )
}

pub fn pki() -> Pki {
    let (ca, issuer) = ca();
    let (server_cert, server_key) = leaf(&issuer, &["localhost", "127.0.0.1"]);
    let (client_cert, client_key) = leaf(&issuer, &["client"]);
    Pki {
        ca,
        server_cert,
        server_key,
        client_cert,
        client_key,
    }
}

pub fn write(dir: &Path, name: &str, s: &str) -> String {
    let p = dir.join(name);
    std::fs::write(&p, s).unwrap();
    p.display().to_string()
}

async fn tls_channel(
    server: &TestServer,
    ca: &str,
    identity: Option<(&str, &str)>,
) -> Result<Channel, String> {
    let mut tls = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(ca))
        .domain_name("localhost");
    if let Some((c, k)) = identity {
        tls = tls.identity(Identity::from_pem(c, k));
    }
    Endpoint::from_shared(format!("https://{}", server.grpc_addr))
        .unwrap()
        .tls_config(tls)
        .unwrap()
        .connect()
        .await
        .map_err(|e| format!("{e:?}"))
}

fn req() -> ClassifyRequest {
    ClassifyRequest {
        input: Some(Input::Mnist(test_set().images.image(0).to_vec().into())),
        ..Default::default()
    }
}

/// A call on the channel, or the reason it failed.
async fn call(ch: Channel) -> Result<u32, tonic::Status> {
    DigitClassifierClient::new(ch)
        .classify(req())
        .await
        .map(|r| r.into_inner().digit)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_serves_and_plaintext_fails_cleanly() {
    let dir = tempfile::tempdir().unwrap();
    let p = pki();
    let cert = write(dir.path(), "s.pem", &p.server_cert);
    let key = write(dir.path(), "s.key", &p.server_key);
    let server = TestServer::start(&["--tls-cert", &cert, "--tls-key", &key]);
    // Over TLS: works.
    let ch = tls_channel(&server, &p.ca, None).await.unwrap();
    server.wait_serving_on(ch.clone()).await;
    assert_eq!(call(ch).await.unwrap(), u32::from(test_set().labels[0]));
    // Plaintext to the TLS port: a clean error, and the server keeps serving.
    let plain = Channel::from_shared(format!("http://{}", server.grpc_addr)).unwrap();
    let r = match plain.connect().await {
        Ok(ch) => call(ch).await.map(|_| ()).map_err(|s| s.code()),
        Err(_) => Err(Code::Unavailable),
    };
    assert!(r.is_err(), "plaintext reached a TLS port");
    let ch = tls_channel(&server, &p.ca, None).await.unwrap();
    assert!(call(ch.clone()).await.is_ok());
    // TCP_NODELAY is set on the accept path, under TLS too.
    let on_grpc: Vec<_> = server
        .accepted_sockets()
        .into_iter()
        .filter(|(local, _, _)| local.port() == server.grpc_addr.port())
        .collect();
    assert!(!on_grpc.is_empty());
    assert!(
        on_grpc.iter().all(|(_, _, nodelay)| *nodelay),
        "{on_grpc:?}"
    );
    // The wrong CA does not trust the server.
    let (other_ca, _) = ca();
    let bad = match tls_channel(&server, &other_ca, None).await {
        Ok(ch) => call(ch).await.is_err(),
        Err(_) => true,
    };
    assert!(bad, "a client trusting another CA accepted the server");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mutual_tls_refuses_clients_from_another_ca() {
    let dir = tempfile::tempdir().unwrap();
    let p = pki();
    let (cert, key, ca_path) = (
        write(dir.path(), "s.pem", &p.server_cert),
        write(dir.path(), "s.key", &p.server_key),
        write(dir.path(), "ca.pem", &p.ca),
    );
    let server = TestServer::start(&[
        "--tls-cert",
        &cert,
        "--tls-key",
        &key,
        "--tls-client-ca",
        &ca_path,
    ]);
    // A client certificate from the right CA.
    let ch = tls_channel(&server, &p.ca, Some((&p.client_cert, &p.client_key)))
        .await
        .unwrap();
    server.wait_serving_on(ch.clone()).await;
    assert!(call(ch).await.is_ok());
    // From the wrong CA, and with none: refused.
    let (_, other) = ca();
    let (bad_cert, bad_key) = leaf(&other, &["intruder"]);
    for identity in [Some((bad_cert.as_str(), bad_key.as_str())), None] {
        let refused = match tls_channel(&server, &p.ca, identity).await {
            Ok(ch) => call(ch).await.is_err(),
            Err(_) => true,
        };
        assert!(
            refused,
            "mTLS accepted a client with identity {:?}",
            identity.map(|_| "wrong CA")
        );
    }
    let ch = tls_channel(&server, &p.ca, Some((&p.client_cert, &p.client_key)))
        .await
        .unwrap();
    assert!(
        call(ch).await.is_ok(),
        "the server stopped serving after refused clients"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bearer_token_guards_inference_but_not_health() {
    use tonic_health::pb::{HealthCheckRequest, health_client::HealthClient};
    let dir = tempfile::tempdir().unwrap();
    let token = write(dir.path(), "token", "  s3cret-token\n");
    let server = TestServer::start(&["--auth-token-file", &token]);
    server.wait_serving().await;
    let ch = server.channel().await;
    // Health stays open (wait_serving already used it without a token).
    let h = HealthClient::new(ch.clone())
        .check(HealthCheckRequest {
            service: String::new(),
        })
        .await;
    assert!(h.is_ok());
    let mut c = DigitClassifierClient::new(ch.clone());
    let e = c.classify(req()).await.unwrap_err();
    assert_eq!(e.code(), Code::Unauthenticated);
    assert!(
        e.message().contains("missing bearer token"),
        "{}",
        e.message()
    );
    let mut wrong = tonic::Request::new(req());
    wrong
        .metadata_mut()
        .insert("authorization", "Bearer s3cret-tokeN".parse().unwrap());
    assert_eq!(
        c.classify(wrong).await.unwrap_err().code(),
        Code::Unauthenticated
    );
    let mut right = tonic::Request::new(req());
    right
        .metadata_mut()
        .insert("authorization", "Bearer s3cret-token".parse().unwrap());
    assert!(c.classify(right).await.is_ok());
    // The KServe endpoint and the JSON API are guarded too.
    let mut k =
        mnister::proto::inference::grpc_inference_service_client::GrpcInferenceServiceClient::new(
            ch,
        );
    let e = k
        .model_metadata(mnister::proto::inference::ModelMetadataRequest {
            name: "mnist".into(),
            version: String::new(),
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::Unauthenticated);
    let (status, body) =
        crate::common::http_post(server.http_addr, "/v1/classify", "image/png", b"x");
    assert_eq!(status, 401, "{body}");
    let m = crate::common::parse_metrics(&server.scrape());
    assert!(crate::common::metric(&m, "mnister_unauthenticated_total", &[]) >= 3.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cli_speaks_tls_with_a_token() {
    let dir = tempfile::tempdir().unwrap();
    let p = pki();
    let (cert, key, ca_path) = (
        write(dir.path(), "s.pem", &p.server_cert),
        write(dir.path(), "s.key", &p.server_key),
        write(dir.path(), "ca.pem", &p.ca),
    );
    let token = write(dir.path(), "token", "cli-token\n");
    let server = TestServer::start(&[
        "--tls-cert",
        &cert,
        "--tls-key",
        &key,
        "--auth-token-file",
        &token,
    ]);
    server
        .wait_serving_on(tls_channel(&server, &p.ca, None).await.unwrap())
        .await;
    let ds = test_set();
    let img = dir.path().join("digit.png");
    std::fs::write(
        &img,
        crate::common::png(&image::DynamicImage::ImageLuma8(
            crate::common::canvas_gray(ds.images.image(0)),
        )),
    )
    .unwrap();
    let addr = format!("https://localhost:{}", server.grpc_addr.port());
    let run = |extra: &[&str]| {
        let out = std::process::Command::new(crate::common::bin("mnister"))
            .args(["--addr", &addr, "--tls-ca", &ca_path])
            .args(extra)
            .args(["classify", "--json"])
            .arg(&img)
            .output()
            .unwrap();
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned()
                + &String::from_utf8_lossy(&out.stderr),
        )
    };
    let (ok, out) = run(&["--token-file", &token]);
    assert!(ok, "{out}");
    let line: serde_json::Value = serde_json::from_str(out.lines().next().unwrap()).unwrap();
    assert_eq!(line["digit"], u64::from(ds.labels[0]), "{out}");
    let (ok, out) = run(&[]);
    assert!(!ok && out.contains("Unauthenticated"), "{out}");
    let missing = dir.path().join("nope").display().to_string();
    let (ok, out) = run(&["--token-file", &missing]);
    assert!(!ok && out.contains("token file"), "{out}");
}
