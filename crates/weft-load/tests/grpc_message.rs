//! `weft load --grpc` request messages given as JSON: descriptors from
//! `.proto` files, a protoset, and server reflection (a grpcio server
//! serving v1alpha, tonic serving v1), checked by decoding the bytes and by
//! a real server's answer to them.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use bytes::{BufMut as _, Bytes, BytesMut};
use prost_reflect::{DescriptorPool, DynamicMessage};
use serde_json::{Value, json};
use weft_load::Target;
use weft_load::grpc_message::{
    DescriptorSource, GrpcMessageError, GrpcMethod, UnaryMethod, encode_json_request,
};
use weft_test_support::{HttpClient, TempDir, WeftProcess, free_addr, wait_until};

const TIMEOUT: Duration = Duration::from_secs(10);
const SAY_HELLO: &str = "weft.test.Greeter/SayHello";

/// Every kind of field the test proto has: scalars, enum, repeated, a
/// message from an imported file, int64 (a string in JSON), bytes
/// (base64), a map of messages and a well-known type.
fn full_request() -> Value {
    json!({
        "name": "weft",
        "times": 3,
        "mood": "GRUMPY",
        "tags": ["a", "b"],
        "address": {"city": "Oslo", "zip": 150},
        "bigNumber": "9007199254740993",
        "blob": "AAEC/w==",
        "scores": {"alice": {"points": 7}},
        "sentAt": "2026-11-26T10:00:00Z"
    })
}

/// The same request as grpcio's json_format prints it (proto field names).
fn full_request_as_grpcio_prints_it() -> Value {
    json!({
        "name": "weft",
        "times": 3,
        "mood": "GRUMPY",
        "tags": ["a", "b"],
        "address": {"city": "Oslo", "zip": 150},
        "big_number": "9007199254740993",
        "blob": "AAEC/w==",
        "scores": {"alice": {"points": 7}},
        "sent_at": "2026-11-26T10:00:00Z"
    })
}

fn data_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data")
}

fn proto_files() -> DescriptorSource {
    DescriptorSource::ProtoFiles {
        files: vec![data_dir().join("greeter.proto")],
        import_paths: vec![],
    }
}

/// The test proto compiled with protox, for decoding what was encoded.
fn greeter_pool() -> DescriptorPool {
    protox::Compiler::new([data_dir()])
        .unwrap()
        .include_imports(true)
        .open_file("greeter.proto")
        .unwrap()
        .descriptor_pool()
}

/// A serialized FileDescriptorSet of the test proto, as `protoc
/// --include_imports --descriptor_set_out` would write it.
fn greeter_protoset(include_imports: bool) -> Vec<u8> {
    protox::Compiler::new([data_dir()])
        .unwrap()
        .include_imports(include_imports)
        .open_file("greeter.proto")
        .unwrap()
        .encode_file_descriptor_set()
}

/// Decodes `bytes` as `message` and prints it in the proto3 JSON mapping.
fn decode_to_json(message: &str, bytes: &[u8]) -> Value {
    let desc = greeter_pool().get_message_by_name(message).unwrap();
    let msg = DynamicMessage::decode(desc, bytes).unwrap();
    serde_json::to_value(&msg).unwrap()
}

/// A target nothing listens on: the file sources must not need one.
fn offline_target() -> Target {
    format!("http://{}", free_addr()).parse().unwrap()
}

fn target(addr: SocketAddr) -> Target {
    format!("http://{addr}").parse().unwrap()
}

async fn encode(
    source: &DescriptorSource,
    target: &Target,
    json: &Value,
) -> Result<Bytes, GrpcMessageError> {
    let method: GrpcMethod = SAY_HELLO.parse().unwrap();
    encode_json_request(target, &method, &json.to_string(), source, TIMEOUT).await
}

async fn resolve(
    source: &DescriptorSource,
    target: &Target,
    method: &str,
) -> Result<UnaryMethod, GrpcMessageError> {
    UnaryMethod::resolve(target, &method.parse().unwrap(), source, TIMEOUT).await
}

// ---- .proto files and protosets --------------------------------------------

#[tokio::test]
async fn proto_files_turn_json_into_the_request_message_bytes() {
    let bytes = encode(&proto_files(), &offline_target(), &full_request())
        .await
        .unwrap();
    assert_eq!(
        decode_to_json("weft.test.HelloRequest", &bytes),
        full_request()
    );

    // Field by field on the wire: name is field 1, "weft".
    let desc = greeter_pool()
        .get_message_by_name("weft.test.HelloRequest")
        .unwrap();
    let msg = DynamicMessage::decode(desc, bytes.clone()).unwrap();
    assert_eq!(
        msg.get_field_by_name("name").unwrap().as_str(),
        Some("weft")
    );
    assert_eq!(
        msg.get_field_by_name("mood").unwrap().as_enum_number(),
        Some(2)
    );
    assert_eq!(
        msg.get_field_by_name("blob")
            .unwrap()
            .as_bytes()
            .map(|b| b.to_vec()),
        Some(vec![0, 1, 2, 255])
    );
    assert_eq!(&bytes[..6], b"\x0a\x04weft");
}

#[tokio::test]
async fn proto_files_errors_say_what_is_wrong() {
    let source = proto_files();
    let offline = offline_target();
    let err = encode(&source, &offline, &json!({"address": {"zipcode": 1}}))
        .await
        .unwrap_err()
        .to_string();
    assert!(
        err.starts_with("request JSON does not fit weft.test.HelloRequest: field `address`: unrecognized field name 'zipcode'")
            && err.ends_with("(weft.test.common.Address has: city, zip)"),
        "{err}"
    );
    let err = encode(&source, &offline, &json!("weft")).await.unwrap_err();
    assert!(
        matches!(err, GrpcMessageError::JsonNotObject { .. }),
        "{err}"
    );

    let err = resolve(&source, &offline, "weft.test.Greeter/SayHi")
        .await
        .unwrap_err();
    assert_eq!(
        err.to_string(),
        "service weft.test.Greeter has no method SayHi; it has: SayHello, Watch, Upload"
    );
    let err = resolve(&source, &offline, "weft.test.Greeter/Watch")
        .await
        .unwrap_err();
    assert_eq!(
        err.to_string(),
        "weft load sends unary calls; weft.test.Greeter/Watch is server-streaming"
    );

    // An import that is only found through --import-path.
    let dir = TempDir::new("weft-proto").unwrap();
    std::fs::write(
        dir.join("uses_address.proto"),
        "syntax = \"proto3\";\npackage weft.other;\nimport \"imported/address.proto\";\n\
         service Post { rpc Send(weft.test.common.Address) returns (weft.test.common.Address); }\n",
    )
    .unwrap();
    let without = DescriptorSource::ProtoFiles {
        files: vec![dir.join("uses_address.proto")],
        import_paths: vec![],
    };
    let err = resolve(&without, &offline, "weft.other.Post/Send")
        .await
        .unwrap_err();
    assert_eq!(
        err.to_string(),
        "cannot compile uses_address.proto:3:1: import 'imported/address.proto' not found"
    );
    let with = DescriptorSource::ProtoFiles {
        files: vec![dir.join("uses_address.proto")],
        import_paths: vec![data_dir()],
    };
    let post = resolve(&with, &offline, "weft.other.Post/Send")
        .await
        .unwrap();
    assert_eq!(post.input_type(), "weft.test.common.Address");
    assert_eq!(&post.encode_json(r#"{"zip": 5}"#).unwrap()[..], b"\x10\x05");
}

#[tokio::test]
async fn a_protoset_gives_the_same_bytes_as_the_proto_files() {
    let dir = TempDir::new("weft-protoset").unwrap();
    let path = dir.join("greeter.protoset");
    std::fs::write(&path, greeter_protoset(true)).unwrap();
    let offline = offline_target();
    let from_set = encode(&DescriptorSource::Protoset(path), &offline, &full_request())
        .await
        .unwrap();
    let from_files = encode(&proto_files(), &offline, &full_request())
        .await
        .unwrap();
    assert_eq!(from_set, from_files);

    // Written without --include_imports: the well-known Timestamp is filled
    // in, the project's own import is reported missing.
    let partial = dir.join("partial.protoset");
    std::fs::write(&partial, greeter_protoset(false)).unwrap();
    let err = encode(
        &DescriptorSource::Protoset(partial.clone()),
        &offline,
        &full_request(),
    )
    .await
    .unwrap_err()
    .to_string();
    assert!(
        err.starts_with(&format!("{} is not a valid protoset", partial.display()))
            && err.contains("imported/address.proto"),
        "{err}"
    );

    let junk = dir.join("junk.protoset");
    std::fs::write(&junk, b"\xff\xff\xff not a descriptor set").unwrap();
    let err = encode(&DescriptorSource::Protoset(junk), &offline, &full_request())
        .await
        .unwrap_err();
    assert!(
        matches!(err, GrpcMessageError::InvalidProtoset { .. }),
        "{err}"
    );
}

// ---- server reflection -------------------------------------------------------

/// The venv's python with grpcio and grpcio-reflection: `WEFT_PYTHON`
/// (scripts/test.sh sets it), else `.venv/bin/python3` at the repo root.
/// Missing, the test fails: it never skips.
fn python() -> PathBuf {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let py = std::env::var_os("WEFT_PYTHON")
        .filter(|p| !p.is_empty())
        .map(PathBuf::from)
        .unwrap_or_else(|| root.join(".venv/bin/python3"));
    assert!(
        py.exists(),
        "no python at {} (WEFT_PYTHON or .venv): run scripts/setup.sh to make the venv with grpcio and grpcio-reflection",
        py.display()
    );
    py
}

/// tests/grpc/grpc_reflect_server.py serving the test proto.
struct GrpcioServer {
    proc: WeftProcess,
    addr: SocketAddr,
    _dir: TempDir,
}

async fn grpcio_server(reflection: bool) -> GrpcioServer {
    let dir = TempDir::new("weft-grpcio").unwrap();
    let protoset = dir.join("greeter.protoset");
    std::fs::write(&protoset, greeter_protoset(true)).unwrap();
    let script =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/grpc/grpc_reflect_server.py");
    let mut args = vec![
        script.to_str().unwrap(),
        "--protoset",
        protoset.to_str().unwrap(),
        "--port",
        "0",
    ];
    if !reflection {
        args.push("--no-reflection");
    }
    let proc = WeftProcess::spawn(&python(), &args).unwrap();
    let port = wait_until(
        "grpc_reflect_server.py READY",
        Duration::from_secs(30),
        || {
            let logs = proc.logs();
            let port = logs
                .lines()
                .find_map(|l| l.strip_prefix("PORT ")?.trim().parse::<u16>().ok());
            std::future::ready(port.filter(|_| logs.lines().any(|l| l == "READY")))
        },
    )
    .await
    .unwrap_or_else(|e| panic!("{e}\n{}", proc.logs()));
    GrpcioServer {
        proc,
        addr: SocketAddr::from(([127, 0, 0, 1], port)),
        _dir: dir,
    }
}

/// One gRPC unary call with `request` as the message bytes; the response
/// message bytes.
async fn unary_call(addr: SocketAddr, path: &str, request: &[u8]) -> Bytes {
    let mut body = BytesMut::with_capacity(5 + request.len());
    body.put_u8(0);
    body.put_u32(request.len() as u32);
    body.put_slice(request);
    let req = http::Request::post(format!("http://{addr}{path}"))
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .body(http_body_util::Full::new(body.freeze()))
        .unwrap();
    let resp = HttpClient::h2c().send(req).await.unwrap();
    let status = resp
        .trailers
        .as_ref()
        .and_then(|t| t.get("grpc-status"))
        .or(resp.headers.get("grpc-status"))
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    assert_eq!(status.as_deref(), Some("0"), "{resp:?}");
    assert!(resp.body.len() >= 5 && resp.body[0] == 0, "{resp:?}");
    resp.body.slice(5..)
}

#[tokio::test]
async fn reflection_from_a_grpcio_server_encodes_what_the_server_decodes() {
    let server = grpcio_server(true).await;
    let target = target(server.addr);
    // grpcio offers v1alpha only: this goes through the fallback from v1.
    let method = resolve(&DescriptorSource::Reflection, &target, SAY_HELLO)
        .await
        .unwrap();
    assert_eq!(method.input_type(), "weft.test.HelloRequest");
    let request = method.encode_json(&full_request().to_string()).unwrap();
    let reply = unary_call(server.addr, &method.path(), &request).await;
    let reply = decode_to_json("weft.test.HelloReply", &reply);
    let echoed: Value = serde_json::from_str(reply["message"].as_str().unwrap()).unwrap();
    assert_eq!(
        echoed,
        full_request_as_grpcio_prints_it(),
        "{}",
        server.proc.logs()
    );

    // The same bytes as from the files.
    let from_files = encode(&proto_files(), &target, &full_request())
        .await
        .unwrap();
    assert_eq!(request, from_files);
}

#[tokio::test]
async fn reflection_errors_name_what_the_server_offers() {
    let server = grpcio_server(true).await;
    let target = target(server.addr);
    let err = resolve(
        &DescriptorSource::Reflection,
        &target,
        "weft.test.Nope/SayHello",
    )
    .await
    .unwrap_err()
    .to_string();
    assert_eq!(
        err,
        format!(
            "unknown service weft.test.Nope; the server at {target} offers: grpc.reflection.v1alpha.ServerReflection, weft.test.Greeter"
        )
    );
    let err = resolve(&DescriptorSource::Reflection, &target, "Greeter/SayHello")
        .await
        .unwrap_err()
        .to_string();
    assert!(err.ends_with("did you mean weft.test.Greeter?"), "{err}");
    let err = resolve(
        &DescriptorSource::Reflection,
        &target,
        "weft.test.Greeter/SayHi",
    )
    .await
    .unwrap_err()
    .to_string();
    assert_eq!(
        err,
        "service weft.test.Greeter has no method SayHi; it has: SayHello, Watch, Upload"
    );
    let err = resolve(
        &DescriptorSource::Reflection,
        &target,
        "weft.test.Greeter/Upload",
    )
    .await
    .unwrap_err()
    .to_string();
    assert_eq!(
        err,
        "weft load sends unary calls; weft.test.Greeter/Upload is client-streaming"
    );
}

#[tokio::test]
async fn a_server_without_reflection_is_told_apart_and_the_flags_named() {
    let server = grpcio_server(false).await;
    let target = target(server.addr);
    let err = encode(&DescriptorSource::Reflection, &target, &full_request())
        .await
        .unwrap_err();
    assert_eq!(
        err.to_string(),
        format!(
            "the server at {target} does not offer gRPC reflection (UNIMPLEMENTED); give --proto FILE or --protoset FILE"
        )
    );
    // The server itself works: the same call with descriptors from files.
    let request = encode(&proto_files(), &target, &json!({"name": "files"}))
        .await
        .unwrap();
    let reply = unary_call(server.addr, "/weft.test.Greeter/SayHello", &request).await;
    let reply = decode_to_json("weft.test.HelloReply", &reply);
    assert_eq!(reply["message"], r#"{"name":"files"}"#);
}

/// tonic-reflection's v1 service over the test protoset, on loopback.
async fn tonic_v1_reflection() -> SocketAddr {
    let service = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(Box::leak(greeter_protoset(true).into_boxed_slice()))
        .build_v1()
        .unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(service)
            .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener)),
    );
    addr
}

#[tokio::test]
async fn reflection_v1_from_tonic_gives_the_same_bytes_as_the_files() {
    let addr = tonic_v1_reflection().await;
    let from_reflection = encode(
        &DescriptorSource::Reflection,
        &target(addr),
        &full_request(),
    )
    .await
    .unwrap();
    let from_files = encode(&proto_files(), &target(addr), &full_request())
        .await
        .unwrap();
    assert_eq!(from_reflection, from_files);
}

#[tokio::test]
async fn an_unreachable_or_silent_server_is_reported_not_waited_for() {
    let nobody = offline_target();
    let err = encode(&DescriptorSource::Reflection, &nobody, &full_request())
        .await
        .unwrap_err();
    assert!(
        matches!(err, GrpcMessageError::Unreachable { .. })
            && err
                .to_string()
                .starts_with(&format!("cannot reach {nobody} for gRPC reflection: ")),
        "{err}"
    );

    // Accepts the connection, never speaks HTTP/2.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let _hold = tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((conn, _)) = listener.accept().await {
            held.push(conn);
        }
    });
    let method: GrpcMethod = SAY_HELLO.parse().unwrap();
    let started = std::time::Instant::now();
    let err = UnaryMethod::resolve(
        &target(addr),
        &method,
        &DescriptorSource::Reflection,
        Duration::from_millis(300),
    )
    .await
    .unwrap_err();
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(
        err.to_string(),
        format!(
            "gRPC reflection at {} gave no answer within 300ms",
            target(addr)
        )
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn weft_load_sends_json_requests_the_server_accepts() {
    // The whole path of `weft load --grpc M --body JSON`: reflection, JSON
    // to bytes, then a fixed-rate run in which every call is OK.
    let server = grpcio_server(true).await;
    let target = target(server.addr);
    let method = resolve(&DescriptorSource::Reflection, &target, SAY_HELLO)
        .await
        .unwrap();
    let body = method.encode_json(r#"{"name": "load"}"#).unwrap();
    let mut spec = weft_load::LoadSpec::new(target);
    spec.protocol = weft_load::Protocol::Grpc {
        method: SAY_HELLO.to_owned(),
    };
    spec.body = body;
    spec.rate = weft_load::RatePlan::Steps(vec![100.0]);
    spec.duration = Duration::from_secs(1);
    spec.warmup = Duration::ZERO;
    spec.connections = 2;
    let r = weft_load::run(spec, std::future::pending()).await.unwrap();
    assert_eq!(r.requests, 100, "{r}");
    assert_eq!(
        r.grpc_status_counts.get("OK"),
        Some(&100),
        "{r}\n{}",
        server.proc.logs()
    );
    assert_eq!(r.errors, 0);
}
