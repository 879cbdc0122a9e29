use std::path::{Path, PathBuf};

use super::*;

fn data(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/data")
        .join(name)
}

fn greeter_pool() -> DescriptorPool {
    files::compile(&[data("greeter.proto")], &[]).unwrap()
}

fn method(s: &str) -> GrpcMethod {
    s.parse().unwrap()
}

fn resolve(name: &str) -> Result<UnaryMethod, GrpcMessageError> {
    UnaryMethod::from_pool(&greeter_pool(), &method(name), || {
        "greeter.proto defines".to_owned()
    })
}

fn say_hello() -> UnaryMethod {
    resolve("weft.test.Greeter/SayHello").unwrap()
}

#[test]
fn method_names_in_all_three_spellings() {
    let want = GrpcMethod {
        service: "helloworld.Greeter".into(),
        method: "SayHello".into(),
    };
    for s in [
        "helloworld.Greeter/SayHello",
        "/helloworld.Greeter/SayHello",
        "helloworld.Greeter.SayHello",
    ] {
        assert_eq!(s.parse::<GrpcMethod>(), Ok(want.clone()), "{s}");
    }
    assert_eq!(want.path(), "/helloworld.Greeter/SayHello");
    assert_eq!(want.to_string(), "helloworld.Greeter/SayHello");
    // A service without a package.
    assert_eq!(method("Greeter/SayHello").path(), "/Greeter/SayHello");
}

#[test]
fn malformed_method_names_are_refused_naming_the_input() {
    for s in [
        "",
        "/",
        "SayHello",
        "helloworld.Greeter/",
        "/SayHello",
        "helloworld.Greeter/Say/Hello",
        "helloworld..Greeter/SayHello",
        "helloworld.Greeter/Say Hello",
        "helloworld.Greeter.",
    ] {
        let err = s.parse::<GrpcMethod>().unwrap_err();
        assert_eq!(err, GrpcMethodError(s.to_owned()));
        assert!(
            err.to_string().contains(&format!("`{s}`"))
                && err.to_string().contains("package.Service/Method"),
            "{err}"
        );
    }
}

#[test]
fn flags_choose_the_descriptor_source() {
    let p = |s: &str| PathBuf::from(s);
    assert_eq!(
        DescriptorSource::from_flags(vec![], vec![], None).unwrap(),
        DescriptorSource::Reflection
    );
    assert_eq!(
        DescriptorSource::from_flags(vec![p("a.proto")], vec![p("inc")], None).unwrap(),
        DescriptorSource::ProtoFiles {
            files: vec![p("a.proto")],
            import_paths: vec![p("inc")]
        }
    );
    assert_eq!(
        DescriptorSource::from_flags(vec![], vec![], Some(p("x.pb"))).unwrap(),
        DescriptorSource::Protoset(p("x.pb"))
    );
    let both = DescriptorSource::from_flags(vec![p("a.proto")], vec![], Some(p("x.pb")));
    assert_eq!(
        both.unwrap_err().to_string(),
        "give --proto FILE or --protoset FILE, not both"
    );
    let stray = DescriptorSource::from_flags(vec![], vec![p("inc")], None);
    assert!(stray.unwrap_err().to_string().contains("--import-path"));
}

#[test]
fn an_unknown_method_lists_the_service_s_methods() {
    let err = resolve("weft.test.Greeter/SayHi").unwrap_err();
    assert_eq!(
        err.to_string(),
        "service weft.test.Greeter has no method SayHi; it has: SayHello, Watch, Upload"
    );
}

#[test]
fn an_unknown_service_lists_what_is_offered_and_guesses_the_package() {
    let err = resolve("weft.test.Nope/SayHello").unwrap_err();
    assert_eq!(
        err.to_string(),
        "unknown service weft.test.Nope; greeter.proto defines: weft.test.Greeter"
    );
    let err = resolve("Greeter/SayHello").unwrap_err();
    assert_eq!(
        err.to_string(),
        "unknown service Greeter; greeter.proto defines: weft.test.Greeter; did you mean weft.test.Greeter?"
    );
}

#[test]
fn streaming_methods_are_refused_saying_weft_load_sends_unary_calls() {
    let err = resolve("weft.test.Greeter/Watch").unwrap_err();
    assert_eq!(
        err.to_string(),
        "weft load sends unary calls; weft.test.Greeter/Watch is server-streaming"
    );
    let err = resolve("weft.test.Greeter/Upload").unwrap_err();
    assert!(err.to_string().ends_with("is client-streaming"), "{err}");
}

#[test]
fn a_unary_method_knows_its_path_and_request_type() {
    let m = say_hello();
    assert_eq!(m.path(), "/weft.test.Greeter/SayHello");
    assert_eq!(m.input_type(), "weft.test.HelloRequest");
}

#[test]
fn json_in_the_proto3_mapping_encodes_to_the_same_bytes_as_the_message() {
    let m = say_hello();
    let bytes = m
        .encode_json(r#"{"name": "weft", "times": 3, "mood": "GRUMPY", "bigNumber": "12"}"#)
        .unwrap();
    // Field 1 (LEN) "weft", field 2 (VARINT) 3, field 3 (VARINT) 2, field 6 (VARINT) 12.
    let want: &[u8] = &[0x0a, 4, b'w', b'e', b'f', b't', 0x10, 3, 0x18, 2, 0x30, 12];
    assert_eq!(&bytes[..], want);
    assert!(m.encode_json("{}").unwrap().is_empty());
}

#[test]
fn json_errors_name_the_message_and_the_field() {
    let m = say_hello();
    let err = m
        .encode_json(r#"{"name": "x", "times": "many"}"#)
        .unwrap_err();
    let text = err.to_string();
    assert!(
        text.starts_with("request JSON does not fit weft.test.HelloRequest: field `times`: "),
        "{text}"
    );

    let err = m.encode_json(r#"{"nmae": "x"}"#).unwrap_err().to_string();
    assert!(err.contains("unrecognized field name 'nmae'"), "{err}");
    assert!(
        err.contains("(weft.test.HelloRequest has: name, times, mood,"),
        "{err}"
    );

    // Unknown field inside a nested message (from another file), and in a
    // map value: the hint names the nested type.
    let err = m
        .encode_json(r#"{"address": {"city": "Oslo", "street": "x"}}"#)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("field `address`: unrecognized field name 'street'"),
        "{err}"
    );
    assert!(
        err.contains("(weft.test.common.Address has: city, zip)"),
        "{err}"
    );
    let err = m
        .encode_json(r#"{"scores": {"alice": {"pts": 1}}}"#)
        .unwrap_err()
        .to_string();
    assert!(err.contains("(weft.test.Score has: points)"), "{err}");

    let err = m
        .encode_json(r#"{"tags": ["a", 2]}"#)
        .unwrap_err()
        .to_string();
    assert!(err.contains("field `tags[1]`"), "{err}");
    let err = m
        .encode_json(r#"{"mood": "SULKY"}"#)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("field `mood`") && err.contains("SULKY"),
        "{err}"
    );
}

#[test]
fn json_that_is_not_an_object_or_not_json_is_refused_plainly() {
    let m = say_hello();
    assert_eq!(
        m.encode_json(r#"["weft"]"#).unwrap_err().to_string(),
        "request JSON for weft.test.HelloRequest must be an object, got an array"
    );
    assert_eq!(
        m.encode_json(r#""weft""#).unwrap_err().to_string(),
        "request JSON for weft.test.HelloRequest must be an object, got a string"
    );
    for bad in [
        r#"{"name": "weft""#,
        r#"{"name": "weft"} x"#,
        "name=weft",
        "",
    ] {
        let err = m.encode_json(bad).unwrap_err().to_string();
        assert!(
            err.starts_with("request JSON for weft.test.HelloRequest is not valid JSON: "),
            "{bad}: {err}"
        );
    }
}

#[test]
fn proto_compile_errors_point_at_file_line_and_column() {
    let err = files::compile(&[data("broken.proto")], &[])
        .unwrap_err()
        .to_string();
    assert!(err.starts_with("cannot compile broken.proto:8:"), "{err}");

    let err = files::compile(&[data("missing.proto")], &[])
        .unwrap_err()
        .to_string();
    assert!(
        err.starts_with("cannot read ") && err.contains("missing.proto: "),
        "{err}"
    );
    let err = files::compile(&[data("greeter.proto")], &[data("no-such-dir")])
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("no-such-dir: the import path is not a directory"),
        "{err}"
    );
}

#[test]
fn protoset_errors_name_the_file() {
    let err = files::protoset(&data("missing.protoset"))
        .unwrap_err()
        .to_string();
    assert!(
        err.starts_with("cannot read protoset ") && err.contains("missing.protoset"),
        "{err}"
    );
    // A .proto source is not a serialized FileDescriptorSet.
    let err = files::protoset(&data("greeter.proto"))
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("greeter.proto is not a valid protoset (a serialized FileDescriptorSet)"),
        "{err}"
    );
}
