//! TLS, mutual TLS, callers by token and by certificate identity, certificate rotation under
//! load, and connection age: through real clients (tonic, curl, a raw rustls handshake, a raw
//! HTTP/2 client) against a real server, with certificates made here by rcgen.

mod common;

use std::{
    net::SocketAddr,
    path::{Path, PathBuf},
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::Duration,
};

use common::{
    TASK, TestServer, eventually, golden, http_get, metric_value, model_root, predict_request, test_config, to_pb,
};
use modeld::{
    config::{Config, TlsFiles},
    pb::{self, inference_client::InferenceClient},
};
use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, ExtendedKeyUsagePurpose, IsCa, KeyPair, SanType,
};
use sha2::{Digest, Sha256};
use tonic::{
    Code,
    transport::{Certificate, Channel, ClientTlsConfig, Identity},
};

/// A certificate authority that signs server and client certificates into a directory.
struct Ca {
    issuer: CertifiedIssuer<'static, KeyPair>,
    dir: PathBuf,
    name: &'static str,
}

/// A certificate and key as PEM, and where they were written.
struct Leaf {
    cert: String,
    key: String,
    cert_path: PathBuf,
    key_path: PathBuf,
    der: Vec<u8>,
}

impl Ca {
    fn new(dir: &Path, name: &'static str) -> Ca {
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.distinguished_name.push(DnType::CommonName, format!("modeld test {name}"));
        let issuer = CertifiedIssuer::self_signed(params, KeyPair::generate().unwrap()).unwrap();
        std::fs::write(dir.join(format!("{name}.pem")), issuer.pem()).unwrap();
        Ca { issuer, dir: dir.to_owned(), name }
    }

    fn pem_path(&self) -> PathBuf {
        self.dir.join(format!("{}.pem", self.name))
    }

    fn pem(&self) -> String {
        self.issuer.pem()
    }

    /// A server certificate for localhost and 127.0.0.1.
    fn server(&self, file: &str) -> Leaf {
        let mut params = CertificateParams::new(vec!["localhost".to_owned(), "127.0.0.1".to_owned()]).unwrap();
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        self.sign(params, file)
    }

    /// A client certificate with a SAN URI, or with only a subject CN.
    fn client(&self, file: &str, uri: Option<&str>, cn: &str) -> Leaf {
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.distinguished_name.push(DnType::CommonName, cn);
        if let Some(uri) = uri {
            params.subject_alt_names = vec![SanType::URI(uri.try_into().unwrap())];
        }
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        self.sign(params, file)
    }

    fn sign(&self, params: CertificateParams, file: &str) -> Leaf {
        let key = KeyPair::generate().unwrap();
        let cert = params.signed_by(&key, &self.issuer).unwrap();
        let (cert_path, key_path) = (self.dir.join(format!("{file}.crt")), self.dir.join(format!("{file}.key")));
        std::fs::write(&cert_path, cert.pem()).unwrap();
        std::fs::write(&key_path, key.serialize_pem()).unwrap();
        Leaf { cert: cert.pem(), key: key.serialize_pem(), cert_path, key_path, der: cert.der().to_vec() }
    }
}

fn tls_config(root: &Path, server: &Leaf, client_ca: Option<&Ca>) -> Config {
    let mut config = test_config(root);
    config.tls = Some(TlsFiles {
        cert: server.cert_path.clone(),
        key: server.key_path.clone(),
        client_ca: client_ca.map(Ca::pem_path),
    });
    config
}

async fn tls_channel(addr: SocketAddr, ca: &Ca, client: Option<&Leaf>) -> Result<Channel, tonic::transport::Error> {
    let mut tls = ClientTlsConfig::new().ca_certificate(Certificate::from_pem(ca.pem())).domain_name("localhost");
    if let Some(leaf) = client {
        tls = tls.identity(Identity::from_pem(&leaf.cert, &leaf.key));
    }
    Channel::from_shared(format!("https://localhost:{}", addr.port())).unwrap().tls_config(tls)?.connect().await
}

fn one_row() -> pb::PredictRequest {
    predict_request(vec![to_pb(&golden("v2")[0].row)])
}

async fn predict(channel: Channel, token: Option<&str>) -> Result<pb::PredictResponse, tonic::Status> {
    let mut request = tonic::Request::new(one_row());
    if let Some(token) = token {
        request.metadata_mut().insert("authorization", format!("Bearer {token}").parse().unwrap());
    }
    InferenceClient::new(channel).predict(request).await.map(tonic::Response::into_inner)
}

/// curl over HTTPS to the HTTP face: (HTTP status, response headers and body), or None when
/// curl could not connect (a refused handshake).
fn curl(addr: SocketAddr, path: &str, ca: &Ca, client: Option<&Leaf>, token: Option<&str>) -> Option<(u16, String)> {
    let mut command = std::process::Command::new("curl");
    command.args(["-sS", "-i", "--cacert"]).arg(ca.pem_path());
    if let Some(leaf) = client {
        command.arg("--cert").arg(&leaf.cert_path).arg("--key").arg(&leaf.key_path);
    }
    if let Some(token) = token {
        command.args(["-H", &format!("authorization: Bearer {token}")]);
    }
    if path.ends_with("/predict") {
        let body = serde_json::json!({ "rows": [common::json_row(&golden("v2")[0].row)] });
        command.args(["-H", "content-type: application/json", "--data-binary", &body.to_string()]);
    }
    let out = command.arg(format!("https://127.0.0.1:{}{path}", addr.port())).output().expect("curl");
    if !out.status.success() {
        return None;
    }
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let status = text.split_whitespace().nth(1)?.parse().ok()?;
    Some((status, text))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_serves_both_faces_and_plaintext_callers_are_refused() {
    let root = model_root(Some("v2"));
    let pki = tempfile::tempdir().unwrap();
    let ca = Ca::new(pki.path(), "ca");
    let server = TestServer::start_ready(tls_config(root.path(), &ca.server("server"), None)).await;

    let channel = tls_channel(server.grpc, &ca, None).await.unwrap();
    let answer = predict(channel, None).await.unwrap();
    assert_eq!(answer.predictions[0].label, golden("v2")[0].label);

    let plain = Channel::from_shared(format!("http://{}", server.grpc)).unwrap().connect().await;
    if let Ok(plain) = plain {
        assert!(predict(plain, None).await.is_err(), "a plaintext call must not be answered");
    }
    let (status, _) = curl(server.http, &format!("/v1/tasks/{TASK}/predict"), &ca, None, None).expect("https works");
    assert_eq!(status, 200);
    // The admin port stays plaintext for probes and scrapes.
    assert_eq!(http_get(server.admin, "/readyz").await.0, 200);
    let metrics = http_get(server.admin, "/metrics").await.1;
    assert!(metric_value(&metrics, "modeld_tls_certificate_expiry_seconds", &[("listener", "grpc")]).unwrap() > 1e9);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mutual_tls_admits_only_certificates_from_the_client_ca() {
    let root = model_root(Some("v2"));
    let pki = tempfile::tempdir().unwrap();
    let (ca, other) = (Ca::new(pki.path(), "ca"), Ca::new(pki.path(), "other"));
    let server = TestServer::start_ready(tls_config(root.path(), &ca.server("server"), Some(&ca))).await;
    let good = ca.client("good", Some("spiffe://bank/scoring"), "scoring");
    let foreign = other.client("foreign", Some("spiffe://bank/scoring"), "scoring");

    assert!(predict(tls_channel(server.grpc, &ca, Some(&good)).await.unwrap(), None).await.is_ok());
    for (what, client) in [("no client certificate", None), ("a certificate from another CA", Some(&foreign))] {
        let refused = match tls_channel(server.grpc, &ca, client).await {
            Ok(channel) => predict(channel, None).await.is_err(),
            Err(_) => true,
        };
        assert!(refused, "{what} must be refused");
    }
    let path = format!("/v1/tasks/{TASK}/predict");
    assert_eq!(curl(server.http, &path, &ca, Some(&good), None).map(|r| r.0), Some(200));
    assert_eq!(curl(server.http, &path, &ca, None, None), None, "curl without a certificate is refused");
    assert_eq!(curl(server.http, &path, &ca, Some(&foreign), None), None, "a foreign certificate is refused");
}

fn sha256_hex(token: &str) -> String {
    Sha256::digest(token.as_bytes()).iter().map(|b| format!("{b:02x}")).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn callers_by_token_and_by_certificate_identity_are_allowed_and_denied_per_task() {
    let root = model_root(Some("v2"));
    let pki = tempfile::tempdir().unwrap();
    let ca = Ca::new(pki.path(), "ca");
    let callers = pki.path().join("callers.yaml");
    let write_callers = |other_tasks: &str| {
        let yaml = format!(
            "callers:\n\
             \x20 - {{name: engine, token_sha256: {}, tasks: [{TASK}]}}\n\
             \x20 - {{name: other, token_sha256: {}, tasks: [{other_tasks}]}}\n\
             \x20 - {{name: labeller, identity: 'spiffe://bank/labeller', tasks: ['*']}}\n\
             \x20 - {{name: batch, identity: batch-job, tasks: [{TASK}]}}\n",
            sha256_hex("tok-engine"),
            sha256_hex("tok-other"),
        );
        std::fs::write(&callers, yaml).unwrap();
    };
    write_callers("fraud");
    let mut config = tls_config(root.path(), &ca.server("server"), Some(&ca));
    config.callers_file = Some(callers.clone());
    let audit_log = pki.path().join("audit.log");
    config.audit = Some(modeld::config::AuditConfig { features: Some(Vec::new()), ..common::audit_to(&audit_log) });
    let server = TestServer::start_ready(config).await;
    let by_uri = ca.client("labeller", Some("spiffe://bank/labeller"), "ignored-cn");
    let by_cn = ca.client("batch", None, "batch-job");
    let stranger = ca.client("stranger", None, "stranger");
    let channel = |leaf: &Leaf| {
        let (cert, key) = (leaf.cert.clone(), leaf.key.clone());
        let ca_pem = ca.pem();
        let addr = server.grpc;
        async move {
            let tls = ClientTlsConfig::new()
                .ca_certificate(Certificate::from_pem(ca_pem))
                .domain_name("localhost")
                .identity(Identity::from_pem(cert, key));
            Channel::from_shared(format!("https://localhost:{}", addr.port()))
                .unwrap()
                .tls_config(tls)
                .unwrap()
                .connect()
                .await
                .unwrap()
        }
    };

    assert!(predict(channel(&by_uri).await, None).await.is_ok(), "identity by SAN URI");
    assert!(predict(channel(&by_cn).await, None).await.is_ok(), "identity by subject CN");
    let strange = channel(&stranger).await;
    let code = |r: Result<pb::PredictResponse, tonic::Status>| r.err().map(|s| s.code());
    assert_eq!(code(predict(strange.clone(), None).await), Some(Code::Unauthenticated));
    assert_eq!(code(predict(strange.clone(), Some("guess")).await), Some(Code::Unauthenticated));
    let denied = predict(strange.clone(), Some("tok-other")).await.unwrap_err();
    assert_eq!(denied.code(), Code::PermissionDenied);
    assert!(denied.message().contains("caller `other` may not call task `credit_risk`"), "{}", denied.message());
    assert!(predict(strange.clone(), Some("tok-engine")).await.is_ok(), "a token decides over the certificate");

    // A stream is authenticated at its start and authorised on its first chunk.
    let chunk =
        pb::BatchPredictRequest { task: TASK.into(), rows: vec![to_pb(&golden("v2")[0].row)], ..Default::default() };
    let mut request = tonic::Request::new(tokio_stream::iter(vec![chunk]));
    request.metadata_mut().insert("authorization", "Bearer tok-other".parse().unwrap());
    let status = match InferenceClient::new(strange.clone()).batch_predict(request).await {
        Ok(response) => response.into_inner().message().await.unwrap_err(),
        Err(status) => status,
    };
    assert_eq!(status.code(), Code::PermissionDenied);

    // Health stays open to anyone with a connection.
    let mut health = tonic_health::pb::health_client::HealthClient::new(strange.clone());
    let check = health.check(tonic_health::pb::HealthCheckRequest { service: String::new() }).await.unwrap();
    assert_eq!(check.into_inner().status, 1);

    // The HTTP face: 401 with a challenge, 403, 200.
    let path = format!("/v1/tasks/{TASK}/predict");
    let (status, text) = curl(server.http, &path, &ca, Some(&stranger), None).unwrap();
    assert_eq!(status, 401, "{text}");
    assert!(text.to_ascii_lowercase().contains("www-authenticate: bearer"), "{text}");
    assert_eq!(curl(server.http, &path, &ca, Some(&stranger), Some("tok-other")).unwrap().0, 403);
    assert_eq!(curl(server.http, &path, &ca, Some(&stranger), Some("tok-engine")).unwrap().0, 200);
    let task_path = format!("/v1/tasks/{TASK}");
    assert_eq!(curl(server.http, &task_path, &ca, Some(&stranger), Some("tok-other")).unwrap().0, 403);
    assert_eq!(curl(server.http, &task_path, &ca, Some(&stranger), Some("tok-engine")).unwrap().0, 200);
    let mut version = tonic::Request::new(pb::GetVersionRequest { task: TASK.into() });
    version.metadata_mut().insert("authorization", "Bearer tok-other".parse().unwrap());
    let denied = InferenceClient::new(strange.clone()).get_version(version).await.unwrap_err();
    assert_eq!(denied.code(), Code::PermissionDenied);
    let (status, listing) = curl(server.http, "/v1/tasks", &ca, Some(&stranger), Some("tok-other")).unwrap();
    assert_eq!(status, 200);
    assert!(!listing.contains(TASK), "a caller sees only the tasks it may call: {listing}");

    let metrics = http_get(server.admin, "/metrics").await.1;
    let calls = |caller: &str, code: &str| {
        let labels = [("caller", caller), ("code", code), ("task", TASK)];
        metric_value(&metrics, "modeld_caller_requests_total", &labels).unwrap_or(0.0)
    };
    assert!(
        calls("engine", "OK") >= 2.0 && calls("other", "PERMISSION_DENIED") >= 2.0 && calls("labeller", "OK") >= 1.0
    );

    // The file is reread: a new grant takes effect, a broken file is rejected and the callers stay.
    write_callers(&format!("fraud, {TASK}"));
    eventually("the new grant", || {
        let strange = strange.clone();
        async move { predict(strange, Some("tok-other")).await.is_ok() }
    })
    .await;
    std::fs::write(&callers, "callers: [this is not a caller\n").unwrap();
    let admin = server.admin;
    eventually("the broken file counted", || async move {
        let metrics = http_get(admin, "/metrics").await.1;
        metric_value(&metrics, "modeld_callers_file_loads_total", &[("result", "failure")]).unwrap_or(0.0) >= 1.0
    })
    .await;
    assert!(predict(strange.clone(), Some("tok-other")).await.is_ok(), "the callers loaded before stay");

    // The audit log names the caller of each call, and records the refused ones.
    server.stop().await.unwrap();
    let records: Vec<serde_json::Value> =
        std::fs::read_to_string(&audit_log).unwrap().lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    let outcome = |r: &serde_json::Value| {
        (r["caller"].as_str().map(String::from), r["outcome"]["code"].as_str().map(String::from))
    };
    let seen: Vec<_> = records.iter().map(outcome).collect();
    for expected in [
        (Some("labeller"), "OK"),
        (Some("batch"), "OK"),
        (Some("engine"), "OK"),
        (Some("other"), "PERMISSION_DENIED"),
        (None, "UNAUTHENTICATED"),
    ] {
        let wanted = (expected.0.map(String::from), Some(expected.1.to_owned()));
        assert!(seen.contains(&wanted), "no record {expected:?} in {seen:?}");
    }
}

/// The certificate a fresh TLS handshake is served.
async fn served_certificate(addr: SocketAddr, ca: &Ca) -> Vec<u8> {
    use rustls::pki_types::{CertificateDer, ServerName};
    let mut roots = rustls::RootCertStore::empty();
    roots.add(CertificateDer::from(ca.issuer.der().to_vec())).unwrap();
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = vec![b"h2".to_vec()];
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let tls = connector.connect(ServerName::try_from("localhost").unwrap(), tcp).await.unwrap();
    tls.get_ref().1.peer_certificates().unwrap()[0].to_vec()
}

/// Writes `content` to `path` by rename, as a Secret mount update replaces files whole.
fn replace(path: &Path, content: &str) {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, content).unwrap();
    std::fs::rename(tmp, path).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_renewed_certificate_serves_new_connections_with_no_failed_call_and_a_bad_one_is_ignored() {
    let root = model_root(Some("v2"));
    let pki = tempfile::tempdir().unwrap();
    let ca = Ca::new(pki.path(), "ca");
    let first = ca.server("server");
    let server = TestServer::start_ready(tls_config(root.path(), &first, None)).await;
    assert_eq!(served_certificate(server.grpc, &ca).await, first.der);

    // Load: callers on kept connections and callers opening a new connection per call.
    let stop = Arc::new(AtomicBool::new(false));
    let (ok, failed) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let ca_pem = ca.pem();
    let mut load = Vec::new();
    for fresh in [false, false, true, true] {
        let (stop, ok, failed, ca_pem, addr) = (stop.clone(), ok.clone(), failed.clone(), ca_pem.clone(), server.grpc);
        load.push(tokio::spawn(async move {
            let connect = || async {
                let tls =
                    ClientTlsConfig::new().ca_certificate(Certificate::from_pem(&ca_pem)).domain_name("localhost");
                Channel::from_shared(format!("https://localhost:{}", addr.port()))
                    .unwrap()
                    .tls_config(tls)
                    .unwrap()
                    .connect()
                    .await
            };
            let mut kept = connect().await.ok();
            // Bounded: at most 100000 calls per caller.
            for _ in 0..100_000 {
                if stop.load(Ordering::Relaxed) {
                    break;
                }
                let channel = if fresh { connect().await.ok() } else { kept.clone() };
                let result = match channel {
                    Some(channel) => predict(channel, None).await.map(|_| ()),
                    None => Err(tonic::Status::unavailable("connect failed")),
                };
                match result {
                    Ok(()) => ok.fetch_add(1, Ordering::Relaxed),
                    Err(_) => failed.fetch_add(1, Ordering::Relaxed),
                };
                if kept.is_none() {
                    kept = connect().await.ok();
                }
            }
        }));
    }
    let seen = ok.clone();
    eventually("load running", || {
        let n = seen.load(Ordering::Relaxed);
        async move { n > 50 }
    })
    .await;

    let renewed = ca.server("renewed");
    replace(&first.key_path, &renewed.key);
    replace(&first.cert_path, &renewed.cert);
    let (addr, ca_ref, renewed_der) = (server.grpc, &ca, &renewed.der);
    eventually("new connections get the renewed certificate", || async move {
        served_certificate(addr, ca_ref).await == *renewed_der
    })
    .await;

    replace(&first.cert_path, "-----BEGIN CERTIFICATE-----\nnot a certificate\n-----END CERTIFICATE-----\n");
    let admin = server.admin;
    eventually("the bad file counted", || async move {
        let metrics = http_get(admin, "/metrics").await.1;
        metric_value(&metrics, "modeld_tls_certificate_loads_total", &[("listener", "grpc"), ("result", "failure")])
            .unwrap_or(0.0)
            >= 1.0
    })
    .await;
    assert_eq!(served_certificate(server.grpc, &ca).await, renewed.der, "the last good certificate keeps serving");

    let before = ok.load(Ordering::Relaxed);
    eventually("more calls after the bad file", || {
        let n = ok.load(Ordering::Relaxed);
        async move { n > before + 50 }
    })
    .await;
    stop.store(true, Ordering::Relaxed);
    for task in load {
        task.await.unwrap();
    }
    assert_eq!(
        failed.load(Ordering::Relaxed),
        0,
        "failed calls during rotation ({} succeeded)",
        ok.load(Ordering::Relaxed)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_past_its_age_is_closed_gracefully_and_its_call_completes() {
    let root = model_root(Some("v2"));
    let mut config = test_config(root.path());
    config.max_connection_age = Some(Duration::from_millis(300));
    config.max_connection_age_grace = Duration::from_secs(30);
    let server = TestServer::start_ready(config).await;

    let mut call = common::HalfSentCall::start(server.grpc, &one_row(), &[]).await;
    let client = call.client.clone();

    // Past the age the server sends GOAWAY: the connection takes no new call.
    eventually("GOAWAY after the connection's age", || {
        let client = client.clone();
        let addr = server.grpc;
        async move {
            let head = http::Request::post(format!("http://{addr}/grpc.health.v1.Health/Check"))
                .header("content-type", "application/grpc")
                .header("te", "trailers")
                .body(())
                .unwrap();
            let Ok(mut ready) = client.ready().await else { return true };
            match ready.send_request(head, true) {
                Ok((response, _)) => response.await.is_err(),
                Err(_) => true,
            }
        }
    })
    .await;
    assert!(!call.connection.is_finished(), "the connection waits for its call in flight");
    // The connection's task is kept to watch; the call goes on to finish.
    let connection = std::mem::replace(&mut call.connection, tokio::spawn(async { Ok(()) }));
    let (answer, status) = call.finish().await;
    assert_eq!(status, "0", "the call in flight completes");
    assert_eq!(answer.predictions.len(), 1);
    drop(client);
    eventually("the connection closed", || {
        let finished = connection.is_finished();
        async move { finished }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn modeld_verify_passes_over_mutual_tls_with_a_token_and_fails_without_one() {
    let root = model_root(Some("v2"));
    let pki = tempfile::tempdir().unwrap();
    let ca = Ca::new(pki.path(), "ca");
    let callers = pki.path().join("callers.yaml");
    let yaml =
        format!("callers:\n  - {{name: release, token_sha256: {}, tasks: [{TASK}]}}\n", sha256_hex("tok-release"));
    std::fs::write(&callers, yaml).unwrap();
    let token = pki.path().join("token");
    std::fs::write(&token, "tok-release\n").unwrap();
    let mut config = tls_config(root.path(), &ca.server("server"), Some(&ca));
    config.callers_file = Some(callers);
    let server = TestServer::start_ready(config).await;
    let client = ca.client("pipeline", None, "release-pipeline");
    let (port, ca_pem) = (server.grpc.port(), ca.pem_path());
    let verify = move |with_token: bool| {
        let mut command = std::process::Command::new(env!("CARGO_BIN_EXE_modeld"));
        command
            .arg("verify")
            .args(["--addr", &format!("https://localhost:{port}")])
            .arg("--bundle")
            .arg(common::repo_models().join(TASK).join("v2"))
            .args(["--wait-secs", "5", "--ca-cert"])
            .arg(&ca_pem)
            .arg("--client-cert")
            .arg(&client.cert_path)
            .arg("--client-key")
            .arg(&client.key_path);
        if with_token {
            command.arg("--token-file").arg(&token);
        }
        command.output().unwrap()
    };
    let (passed, refused) = tokio::task::spawn_blocking(move || (verify(true), verify(false))).await.unwrap();
    let stdout = String::from_utf8_lossy(&passed.stdout);
    assert!(passed.status.success(), "{stdout}{}", String::from_utf8_lossy(&passed.stderr));
    assert!(stdout.contains("PASS"), "{stdout}");
    assert!(!refused.status.success());
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(stderr.contains("unauthenticated"), "{stderr}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_http1_connection_past_its_age_is_told_to_close_after_a_response() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let root = model_root(Some("v2"));
    let mut config = test_config(root.path());
    config.max_connection_age = Some(Duration::from_millis(200));
    let server = TestServer::start_ready(config).await;
    let mut tcp = tokio::net::TcpStream::connect(server.http).await.unwrap();
    let request = format!("GET /v1/tasks HTTP/1.1\r\nhost: {}\r\n\r\n", server.http);
    // Keep-alive requests on one connection until a response says it is the last.
    let mut told = false;
    for _ in 0..2_000 {
        tcp.write_all(request.as_bytes()).await.unwrap();
        let mut response = Vec::new();
        let mut buf = [0u8; 4096];
        while !String::from_utf8_lossy(&response).contains("\r\n\r\n") {
            let n = tcp.read(&mut buf).await.unwrap();
            assert!(n > 0, "the connection closed before a response");
            response.extend_from_slice(&buf[..n]);
        }
        let text = String::from_utf8_lossy(&response).to_ascii_lowercase();
        let length: usize =
            text.lines().find_map(|l| l.strip_prefix("content-length:")).map(|v| v.trim().parse().unwrap()).unwrap();
        let head = text.find("\r\n\r\n").unwrap() + 4;
        let mut body = response.len() - head;
        while body < length {
            body += tcp.read(&mut buf).await.unwrap();
        }
        if text.contains("connection: close") {
            told = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await; // pacing the loop, not timing a result
    }
    assert!(told, "no response said connection: close");
    let mut rest = [0u8; 16];
    assert_eq!(tcp.read(&mut rest).await.unwrap(), 0, "the server closes the connection after it");
}
