//! A corpus of hostile requests and connections, sent twice through a real `modeld serve`
//! process while a well-behaved client scores golden rows beside it: each case gets its
//! documented status (or its connection closed), the good client sees no error, and memory
//! stays bounded.

mod common;

use std::{
    collections::BTreeMap,
    net::SocketAddr,
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::Duration,
};

use common::*;
use modeld::pb::{self, value::Kind};
use prost::Message;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tonic::Code;

/// Longest any one case may take; a case that hangs fails the test.
const CASE_TIMEOUT: Duration = Duration::from_secs(15);

/// Passes over the corpus: the first warms every path (thread heaps, buffers, metric series
/// grow to their working size), then two measured passes: the second must end no higher than
/// the first.
const PASSES: usize = 3;

/// How far apart two readings of the same steady state fall (allocator caches), measured over
/// forty runs at 4.5 MiB at most. A leak of 42 KiB per case (a megabyte string kept by one case
/// in twenty) exceeds it.
const RSS_NOISE_MIB: f64 = 8.0;

/// Readings of memory after each pass, and good calls between two readings.
const SETTLE_READINGS: usize = 10;
const SETTLE_CALLS: u64 = 200;

/// The daemon's handshake timeout here, so silent connections are closed quickly.
const HANDSHAKE_MS: &str = "300";

const INTEGER_FIELDS: [&str; 7] = [
    "duration_in_month",
    "credit_amount",
    "installment_rate_in_percentage_of_disposable_income",
    "present_residence_since",
    "age_in_years",
    "number_of_existing_credits_at_this_bank",
    "number_of_people_being_liable_to_provide_maintenance_for",
];

/// What a case is answered with.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Outcome {
    /// A gRPC status (OK included) and its message.
    Status(Code, String),
    /// The server closed the connection (or reset the stream) without a gRPC status.
    Closed,
}

/// What a case must get.
#[derive(Debug, Clone, Copy)]
enum Expect {
    Code(Code),
    /// INVALID_ARGUMENT whose message names this field.
    BadField(&'static str),
    Closed,
}

struct Case {
    name: String,
    send: Send,
    expect: Expect,
}

enum Send {
    /// A Predict request through a real gRPC client.
    Predict(pb::PredictRequest),
    /// One BatchPredict stream of these chunks through a real gRPC client.
    Stream(Vec<pb::BatchPredictRequest>),
    /// Raw bytes as the body of one call at `path` (a gRPC frame, or not) over raw HTTP/2.
    Raw { path: &'static str, headers: Vec<(&'static str, String)>, body: Vec<u8> },
    /// Raw bytes on a fresh TCP connection, then silence: the server must close it.
    Tcp(Vec<u8>),
}

fn good_row() -> pb::Row {
    to_pb(&golden("v2")[0].row)
}

fn row_with(field: &str, kind: Kind) -> pb::Row {
    let mut row = good_row();
    row.features.insert(field.to_owned(), pb::Value { kind: Some(kind) });
    row
}

fn frame(message: &[u8]) -> Vec<u8> {
    let mut out = vec![0u8];
    out.extend_from_slice(&(message.len() as u32).to_be_bytes());
    out.extend_from_slice(message);
    out
}

/// A protobuf length-delimited field.
fn field(number: u32, bytes: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    prost::encoding::encode_key(number, prost::encoding::WireType::LengthDelimited, &mut out);
    prost::encoding::encode_varint(bytes.len() as u64, &mut out);
    out.extend_from_slice(bytes);
    out
}

/// The example schema's fields that may be left out.
fn optional_fields() -> Vec<String> {
    let path = repo_models().join(TASK).join("v2").join("feature_schema.yaml");
    let schema: serde_yaml::Value = serde_yaml::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    let fields = schema["fields"].as_sequence().unwrap();
    let optional: Vec<String> = fields
        .iter()
        .filter(|f| f["required"].as_bool() == Some(false))
        .map(|f| f["name"].as_str().unwrap().to_owned())
        .collect();
    assert!(!optional.is_empty() && optional.len() < fields.len(), "{optional:?}");
    optional
}

fn corpus() -> Vec<Case> {
    let mut cases = Vec::new();
    let mut predict = |name: String, rows: Vec<pb::Row>, expect| {
        cases.push(Case { name, send: Send::Predict(predict_request(rows)), expect });
    };

    // Numbers the schema must refuse (or, for -0.0 where zero is allowed, take).
    for name in INTEGER_FIELDS {
        let values: [(&str, Kind); 12] = [
            ("NaN", Kind::Number(f64::NAN)),
            ("+Inf", Kind::Number(f64::INFINITY)),
            ("-Inf", Kind::Number(f64::NEG_INFINITY)),
            ("subnormal", Kind::Number(5e-324)),
            ("max double", Kind::Number(f64::MAX)),
            ("i64 max", Kind::Integer(i64::MAX)),
            ("i64 min", Kind::Integer(i64::MIN)),
            ("fraction", Kind::Number(2.5)),
            ("text", Kind::Text("12".into())),
            ("bool", Kind::Flag(true)),
            ("megabyte text", Kind::Text("9".repeat(1 << 20))),
            ("-0.0", Kind::Number(-0.0)),
        ];
        for (what, kind) in values {
            let takes_zero = name == "credit_amount";
            let expect = if what == "-0.0" && takes_zero { Expect::Code(Code::Ok) } else { Expect::BadField(name) };
            predict(format!("{name} = {what}"), vec![row_with(name, kind)], expect);
        }
    }
    // Categories: wrong types, unknown words, a megabyte of text. `purpose` maps unknown words
    // to its fallback category; the others refuse them.
    let categorical: Vec<String> = good_row()
        .features
        .iter()
        .filter(|(_, v)| matches!(v.kind, Some(Kind::Text(_))))
        .map(|(k, _)| k.clone())
        .collect();
    assert!(categorical.len() >= 10, "{categorical:?}");
    let optional = optional_fields();
    for name in &categorical {
        let name: &'static str = Box::leak(name.clone().into_boxed_str());
        let unknown = if name == "purpose" { Expect::Code(Code::Ok) } else { Expect::BadField(name) };
        predict(format!("{name} = integer"), vec![row_with(name, Kind::Integer(1))], Expect::BadField(name));
        predict(format!("{name} = NaN"), vec![row_with(name, Kind::Number(f64::NAN))], Expect::BadField(name));
        predict(format!("{name} = megabyte text"), vec![row_with(name, Kind::Text("x".repeat(1 << 20)))], unknown);
        predict(format!("{name} = empty text"), vec![row_with(name, Kind::Text(String::new()))], unknown);
        let mut missing = good_row();
        missing.features.remove(name);
        let absent = if optional.iter().any(|o| o == name) { Expect::Code(Code::Ok) } else { Expect::BadField(name) };
        predict(format!("{name} missing"), vec![missing], absent);
    }
    // Shapes of rows and requests.
    let mut wide = good_row();
    for i in 0..100_000 {
        wide.features.insert(format!("extra_{i:06}"), pb::Value { kind: Some(Kind::Integer(i)) });
    }
    predict("100k unknown features".into(), vec![wide], Expect::Code(Code::InvalidArgument));
    let mut long_name = good_row();
    long_name.features.insert("n".repeat(1 << 20), pb::Value { kind: Some(Kind::Integer(1)) });
    predict("megabyte feature name".into(), vec![long_name], Expect::Code(Code::InvalidArgument));
    let mut long_id = row_with("age_in_years", Kind::Integer(7));
    long_id.row_id = "r".repeat(1 << 20);
    predict("megabyte row id on a bad row".into(), vec![long_id], Expect::BadField("age_in_years"));
    let twins = vec![pb::Row { row_id: "same".into(), ..good_row() }, pb::Row { row_id: "same".into(), ..good_row() }];
    predict("duplicate row ids".into(), twins, Expect::Code(Code::Ok));
    predict("no rows".into(), vec![], Expect::Code(Code::InvalidArgument));
    predict("10001 rows".into(), vec![good_row(); 10_001], Expect::Code(Code::InvalidArgument));
    // Two bytes each on the wire, a hundred decoded: refused before decoding.
    predict("a million empty rows".into(), vec![pb::Row::default(); 1_000_000], Expect::Code(Code::InvalidArgument));
    predict(
        "null value".into(),
        vec![row_with("age_in_years", Kind::Text(String::new()))],
        Expect::BadField("age_in_years"),
    );
    let mut value_none = good_row();
    value_none.features.insert("age_in_years".into(), pb::Value { kind: None });
    predict("explicit missing required value".into(), vec![value_none], Expect::BadField("age_in_years"));
    let mut positional = good_row();
    positional.values = vec![pb::Value { kind: Some(Kind::Integer(1)) }; 3];
    predict("positional values in Predict".into(), vec![positional], Expect::Code(Code::InvalidArgument));

    let request = |task: &str| pb::PredictRequest { task: task.into(), ..predict_request(vec![good_row()]) };
    let requests = [
        ("unknown task", request("nope"), Code::NotFound),
        ("megabyte task name", request(&"t".repeat(1 << 20)), Code::NotFound),
        ("empty task", request(""), Code::InvalidArgument),
        ("unknown version pin", pb::PredictRequest { version: "v999".into(), ..request(TASK) }, Code::NotFound),
        (
            "unknown compare version",
            pb::PredictRequest { compare_versions: vec!["v1".into(), "x".repeat(1 << 16)], ..request(TASK) },
            Code::NotFound,
        ),
    ];
    for (name, request, code) in requests {
        cases.push(Case { name: name.into(), send: Send::Predict(request), expect: Expect::Code(code) });
    }
    // Over max_message_bytes (16 MiB): refused before it is read whole.
    let mut huge = good_row();
    huge.row_id = "h".repeat(17 << 20);
    cases.push(Case {
        name: "17 MiB request".into(),
        send: Send::Predict(predict_request(vec![huge.clone()])),
        expect: Expect::Code(Code::ResourceExhausted),
    });

    // Streams.
    let chunk =
        |task: &str, rows: Vec<pb::Row>| pb::BatchPredictRequest { task: task.into(), rows, ..Default::default() };
    let streams: Vec<(&str, Vec<pb::BatchPredictRequest>, Code)> = vec![
        ("stream chunk over max_rows", vec![chunk(TASK, vec![good_row(); 10_001])], Code::InvalidArgument),
        ("stream chunk over max_message_bytes", vec![chunk(TASK, vec![huge])], Code::ResourceExhausted),
        ("stream without a task", vec![chunk("", vec![good_row()])], Code::InvalidArgument),
        (
            "stream changing task",
            vec![chunk(TASK, vec![good_row()]), chunk("other", vec![good_row()])],
            Code::InvalidArgument,
        ),
        ("stream of an unknown task", vec![chunk("nope", vec![good_row()])], Code::NotFound),
        ("stream of bad rows", vec![chunk(TASK, vec![row_with("age_in_years", Kind::Number(f64::NAN)); 50])], Code::Ok),
    ];
    for (name, chunks, code) in streams {
        cases.push(Case { name: name.into(), send: Send::Stream(chunks), expect: Expect::Code(code) });
    }

    // Bytes that are not a valid request, framed as gRPC over a real HTTP/2 connection.
    const PREDICT: &str = "/modeld.v1.Inference/Predict";
    let raw = |name: &str, path, headers: Vec<(&'static str, String)>, body: Vec<u8>, expect| Case {
        name: name.into(),
        send: Send::Raw { path, headers, body },
        expect,
    };
    let good = predict_request(vec![good_row()]).encode_to_vec();
    let mut bad_utf8_task = field(1, &[0xff, 0xfe, 0xfd]);
    bad_utf8_task.extend(field(2, &good_row().encode_to_vec()));
    let bad_utf8_value = {
        let value = field(3, &[b'a', 0xc3, 0x28]);
        let mut entry = field(1, b"purpose");
        entry.extend(field(2, &value));
        let mut request = field(1, TASK.as_bytes());
        request.extend(field(2, &field(2, &entry)));
        request
    };
    let mut truncated = frame(&good);
    truncated.truncate(truncated.len() / 2);
    let mut lying_length = vec![0u8];
    lying_length.extend_from_slice(&u32::MAX.to_be_bytes());
    lying_length.extend_from_slice(&good[..10]);
    let mut compressed = frame(&good);
    compressed[0] = 1;
    let invalid = Expect::Code(Code::InvalidArgument);
    cases.extend([
        raw("garbage message", PREDICT, vec![], frame(&[0xff; 64]), invalid),
        raw("invalid UTF-8 in the task", PREDICT, vec![], frame(&bad_utf8_task), invalid),
        raw("invalid UTF-8 in a text value", PREDICT, vec![], frame(&bad_utf8_value), invalid),
        raw(
            "varint overflow",
            PREDICT,
            vec![],
            frame(&[0x08, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01]),
            invalid,
        ),
        raw("length past the end", PREDICT, vec![], frame(&[0x12, 0xff, 0x7f, 0x01]), invalid),
        raw("truncated gRPC frame", PREDICT, vec![], truncated, invalid),
        raw("frame header only", PREDICT, vec![], vec![0, 0, 0], invalid),
        raw("no message at all", PREDICT, vec![], vec![], invalid),
        // The transport answers a unary call from its first message and ignores the rest.
        raw(
            "two messages in a unary call",
            PREDICT,
            vec![],
            [frame(&good), frame(&good)].concat(),
            Expect::Code(Code::Ok),
        ),
        raw("length prefix of 4 GiB", PREDICT, vec![], lying_length, Expect::Code(Code::ResourceExhausted)),
        // INTERNAL, as gRPC's compression specification requires.
        raw("compressed flag without an encoding", PREDICT, vec![], compressed.clone(), Expect::Code(Code::Internal)),
        raw(
            "unknown compression",
            PREDICT,
            vec![("grpc-encoding", "zstd-9000".into())],
            compressed,
            Expect::Code(Code::Unimplemented),
        ),
        raw("unknown method", "/modeld.v1.Inference/Nope", vec![], frame(&good), Expect::Code(Code::Unimplemented)),
        raw("unknown service", "/evil.v1.Service/Predict", vec![], frame(&good), Expect::Code(Code::Unimplemented)),
        raw(
            "malformed grpc-timeout",
            PREDICT,
            vec![("grpc-timeout", "forever".into())],
            frame(&good),
            Expect::Code(Code::Ok),
        ),
        raw(
            "grpc-timeout of zero",
            PREDICT,
            vec![("grpc-timeout", "0n".into())],
            frame(&good),
            Expect::Code(Code::DeadlineExceeded),
        ),
        raw("20 KiB of metadata", PREDICT, vec![("x-junk", "j".repeat(20 << 10))], frame(&good), Expect::Closed),
        raw("garbage stream chunk", "/modeld.v1.Inference/BatchPredict", vec![], frame(&[0xff; 16]), invalid),
    ]);

    // Connections that are not HTTP/2 at all, or never finish saying so.
    let tcp =
        |name: &str, bytes: &[u8]| Case { name: name.into(), send: Send::Tcp(bytes.to_vec()), expect: Expect::Closed };
    cases.extend([
        tcp("silent connection", b""),
        tcp("half a preface", b"PRI * HTTP/2.0\r\n"),
        tcp("HTTP/1.1 request", b"GET / HTTP/1.1\r\nHost: x\r\n\r\n"),
        tcp(
            "HTTP/1.1 POST to the method",
            b"POST /modeld.v1.Inference/Predict HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n",
        ),
        tcp("garbage bytes", &[0x16, 0x03, 0x01, 0x02, 0x00, 0x01, 0x00, 0x01, 0xfc, 0x03, 0x03]),
        tcp("preface then garbage", b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\xff\xff\xff\xff\xff\xff\xff\xff\xff"),
        tcp("a megabyte of zeros", &vec![0u8; 1 << 20]),
    ]);
    cases
}

/// Runs one case to its answer.
async fn run(
    addr: SocketAddr,
    client: &mut pb::inference_client::InferenceClient<tonic::transport::Channel>,
    send: &Send,
) -> Outcome {
    let status = |s: tonic::Status| Outcome::Status(s.code(), s.message().to_owned());
    match send {
        Send::Predict(request) => match client.predict(request.clone()).await {
            Ok(_) => Outcome::Status(Code::Ok, String::new()),
            Err(s) => status(s),
        },
        Send::Stream(chunks) => {
            let mut stream = match client.batch_predict(tokio_stream::iter(chunks.clone())).await {
                Ok(response) => response.into_inner(),
                Err(s) => return status(s),
            };
            loop {
                match stream.message().await {
                    Ok(Some(_)) => {}
                    Ok(None) => return Outcome::Status(Code::Ok, String::new()),
                    Err(s) => return status(s),
                }
            }
        }
        Send::Raw { path, headers, body } => raw_call(addr, path, headers, body).await,
        Send::Tcp(bytes) => {
            let mut tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
            // The server may close before reading everything: a failed write is fine.
            let _ = tcp.write_all(bytes).await;
            let mut sink = vec![0u8; 64 << 10];
            loop {
                match tcp.read(&mut sink).await {
                    Ok(0) | Err(_) => return Outcome::Closed,
                    // A GOAWAY or SETTINGS frame on the way out: keep reading until the close.
                    Ok(_) => {}
                }
            }
        }
    }
}

/// One call over a raw HTTP/2 connection: the grpc-status, or Closed if the server reset the
/// stream or the connection.
async fn raw_call(addr: SocketAddr, path: &str, headers: &[(&'static str, String)], body: &[u8]) -> Outcome {
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let Ok((client, connection)) = h2::client::handshake(tcp).await else { return Outcome::Closed };
    tokio::spawn(connection);
    let Ok(mut client) = client.ready().await else { return Outcome::Closed };
    let mut head = http::Request::post(format!("http://{addr}{path}"))
        .header("content-type", "application/grpc")
        .header("te", "trailers");
    for (name, value) in headers {
        head = head.header(*name, value.as_str());
    }
    let Ok((response, mut send)) = client.send_request(head.body(()).unwrap(), body.is_empty()) else {
        return Outcome::Closed;
    };
    // The server may answer (and close the stream) before the body is out: what counts is
    // the answer, so a refused send is not itself an outcome.
    if !body.is_empty() {
        let _ = send.send_data(bytes::Bytes::copy_from_slice(body), true);
    }
    let Ok(response) = response.await else { return Outcome::Closed };
    let read = |map: &http::HeaderMap| {
        let code = map.get("grpc-status")?.to_str().ok()?.parse::<i32>().ok()?;
        let message = map.get("grpc-message").and_then(|m| m.to_str().ok()).unwrap_or_default();
        let message = percent_decode(message);
        Some(Outcome::Status(Code::from_i32(code), message))
    };
    if let Some(outcome) = read(response.headers()) {
        return outcome;
    }
    let mut body = response.into_body();
    while let Some(data) = body.data().await {
        let Ok(data) = data else { return Outcome::Closed };
        let _ = body.flow_control().release_capacity(data.len());
    }
    match body.trailers().await {
        Ok(Some(trailers)) => read(&trailers).unwrap_or(Outcome::Closed),
        _ => Outcome::Closed,
    }
}

fn percent_decode(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%'
            && let Some(b) = text.get(i + 1..i + 3).and_then(|h| u8::from_str_radix(h, 16).ok())
        {
            out.push(b);
            i += 3;
            continue;
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn verdict(expect: Expect, outcome: &Outcome) -> Result<(), String> {
    match (expect, outcome) {
        (Expect::Closed, Outcome::Closed) => Ok(()),
        (Expect::Code(want), Outcome::Status(got, _)) if *got == want => Ok(()),
        (Expect::BadField(name), Outcome::Status(Code::InvalidArgument, message))
            if message.contains(&format!("field `{name}`")) =>
        {
            Ok(())
        }
        _ => Err(format!("expected {expect:?}, got {outcome:?}")),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hostile_corpus_gets_documented_answers_while_a_good_client_sees_no_error() {
    let root = model_root(Some("v2"));
    // The allocator returns freed memory at once, so readings show what is live, not what a
    // thread's cache still holds.
    let env = [("MODELD_HANDSHAKE_TIMEOUT_MS", HANDSHAKE_MS), ("MIMALLOC_PURGE_DELAY", "0")];
    let mut daemon = Daemon::serve(root.path(), &env);
    let _log = daemon.collect_log();
    let (grpc, admin) = (daemon.grpc, daemon.admin);
    eventually("daemon ready", || async move { http_get(admin, "/readyz").await.0 == 200 }).await;
    let channel = || async move {
        tonic::transport::Channel::from_shared(format!("http://{grpc}")).unwrap().connect().await.unwrap()
    };

    // The well-behaved client: golden rows, answers checked, on its own connection.
    let stop = Arc::new(AtomicBool::new(false));
    let (good_calls, good_errors) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let good = {
        let (stop, calls, errors) = (stop.clone(), good_calls.clone(), good_errors.clone());
        let mut client = pb::inference_client::InferenceClient::new(channel().await);
        tokio::spawn(async move {
            let rows = golden("v2");
            let mut first_error = None;
            for g in rows.iter().cycle() {
                if stop.load(Ordering::Relaxed) {
                    break;
                }
                let answer = client.predict(predict_request(vec![to_pb(&g.row)])).await;
                calls.fetch_add(1, Ordering::Relaxed);
                let wrong = match answer {
                    Ok(a) => {
                        let p = &a.into_inner().predictions[0].probabilities;
                        let close = p.len() == g.probabilities.len()
                            && p.iter().zip(&g.probabilities).all(|(s, g)| (s - g).abs() <= 1e-5);
                        (!close).then(|| format!("line {}: served {p:?}, golden {:?}", g.line, g.probabilities))
                    }
                    Err(s) => Some(format!("{s:?}")),
                };
                if let Some(wrong) = wrong {
                    errors.fetch_add(1, Ordering::Relaxed);
                    first_error.get_or_insert(wrong);
                }
            }
            first_error
        })
    };

    let corpus = corpus();
    let mut client = pb::inference_client::InferenceClient::new(channel().await).max_decoding_message_size(64 << 20);
    let baseline = daemon.rss_mib();
    let (mut peak, mut after_pass) = (baseline, Vec::new());
    let mut tally: BTreeMap<String, usize> = BTreeMap::new();
    let mut failures = Vec::new();
    for pass in 0..PASSES {
        for case in &corpus {
            let outcome = tokio::time::timeout(CASE_TIMEOUT, run(grpc, &mut client, &case.send))
                .await
                .unwrap_or_else(|_| panic!("case `{}` not answered within {CASE_TIMEOUT:?}", case.name));
            if let Err(e) = verdict(case.expect, &outcome) {
                failures.push(format!("pass {pass}, `{}`: {e}", case.name));
            }
            if let Outcome::Status(_, message) = &outcome {
                // Messages travel in a header: they stay short whatever the caller sent.
                if message.len() > 1024 {
                    failures.push(format!("`{}`: a {}-byte status message", case.name, message.len()));
                }
            }
            let key = match &outcome {
                Outcome::Status(code, _) => format!("{code:?}"),
                Outcome::Closed => "connection closed".into(),
            };
            *tally.entry(key).or_default() += 1;
            peak = peak.max(daemon.rss_mib());
        }
        // Freed memory goes back to the system as the allocator next runs on each thread, and
        // a reading also catches whatever a call in progress holds: the pass's figure is the
        // lowest of readings taken while ordinary traffic runs on (counted in calls).
        let mut lowest = f64::MAX;
        for _ in 0..SETTLE_READINGS {
            let next = good_calls.load(Ordering::Relaxed) + SETTLE_CALLS;
            let calls = good_calls.clone();
            eventually("the good client ran on", || {
                let calls = calls.clone();
                async move { calls.load(Ordering::Relaxed) >= next }
            })
            .await;
            lowest = lowest.min(daemon.rss_mib());
        }
        after_pass.push(lowest);
    }
    stop.store(true, Ordering::Relaxed);
    let first_error = good.await.unwrap();

    let tried = PASSES * corpus.len();
    eprintln!(
        "hostile corpus: {tried} cases ({} per pass); answers {tally:?}; good client: {} calls, {} errors; \
         RSS baseline {baseline:.1} MiB, peak {peak:.1}, after each pass {after_pass:.1?}",
        corpus.len(),
        good_calls.load(Ordering::Relaxed),
        good_errors.load(Ordering::Relaxed),
    );
    assert!(failures.is_empty(), "{} cases answered wrongly:\n{}", failures.len(), failures.join("\n"));
    assert!(2 * corpus.len() >= 200, "two passes try at least 200 hostile requests and connections");
    assert_eq!(good_errors.load(Ordering::Relaxed), 0, "the good client saw errors, first: {first_error:?}");
    assert!(good_calls.load(Ordering::Relaxed) > 0, "the good client ran");
    let last = after_pass[PASSES - 1];
    assert!(last - baseline <= 32.0, "RSS ended {:.1} MiB over the baseline", last - baseline);
    let first_measured = after_pass[1];
    assert!(
        last <= first_measured + RSS_NOISE_MIB,
        "memory grows pass after pass: {after_pass:.1?} MiB (a leak of about {:.0} KiB per case)",
        (last - first_measured) * 1024.0 / ((PASSES - 2) * corpus.len()) as f64
    );
    // The daemon still answers: readiness and a good request.
    assert_eq!(http_get(admin, "/readyz").await.0, 200);
    let answer = client.predict(predict_request(vec![good_row()])).await.unwrap().into_inner();
    assert_eq!(answer.predictions.len(), 1);
}
