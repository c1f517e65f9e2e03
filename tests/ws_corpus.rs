//! Replays the committed fuzz seed corpus (`fuzz/corpus/<target>/`) through the same harnesses
//! the cargo-fuzz targets run, so every `cargo test` checks that no seed panics (fuzzing itself
//! is `scripts/fuzz.sh`, too slow for the test command).

#[path = "../fuzz/src/lib.rs"]
mod harness;

use std::path::Path;

use tether::ws::{parse_request, ClientHandshake, HandshakeLimits};

fn seeds(target: &str) -> Vec<(String, Vec<u8>)> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("fuzz/corpus")
        .join(target);
    let mut out: Vec<(String, Vec<u8>)> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|entry| {
            let path = entry.expect("corpus entry").path();
            let name = path
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default();
            (name, std::fs::read(&path).expect("read seed"))
        })
        .collect();
    out.sort();
    assert!(out.len() >= 5, "{target}: only {} seeds", out.len());
    out
}

#[test]
fn handshake_request_seeds() {
    for (name, data) in seeds("handshake_request") {
        harness::handshake_request(&data);
        let result = parse_request(
            &data,
            &HandshakeLimits {
                head_bytes_max: 4096,
                headers_max: 32,
            },
        );
        match name.as_str() {
            "rfc_request" | "rfc_request_with_frame" | "lowercase_token_lists" => {
                assert!(matches!(result, Ok(Some(_))), "{name}: {result:?}")
            }
            "partial" => assert_eq!(result, Ok(None)),
            "version_8" => assert_eq!(result.map(|_| ()).unwrap_err().status(), 426),
            "post" => assert_eq!(result.map(|_| ()).unwrap_err().status(), 405),
            "huge_header" => assert_eq!(result.map(|_| ()).unwrap_err().status(), 431),
            _ => assert_eq!(result.map(|_| ()).unwrap_err().status(), 400, "{name}"),
        }
    }
}

#[test]
fn handshake_response_seeds() {
    let (hs, _) = ClientHandshake::new_with_key("h", "/", &["chat"], &[], harness::SAMPLE_KEY);
    for (name, data) in seeds("handshake_response") {
        harness::handshake_response(&data);
        let ok = matches!(hs.parse_response(&data), Ok(Some(_)));
        assert_eq!(ok, name.starts_with("rfc_101"), "{name}");
    }
}

#[test]
fn frame_decode_seeds() {
    for (_, data) in seeds("frame_decode") {
        harness::frame_decode(&data);
    }
}

/// The connection context replays the frame seeds (same input format) whole and in reads.
#[test]
fn context_feed_seeds() {
    for (_, data) in seeds("context_feed") {
        harness::context_feed(&data);
    }
}

/// The PROXY header seeds: each parses as its name says.
#[test]
fn proxy_header_seeds() {
    use tether::server::proxy_protocol::{parse, ProxyError};
    for (name, data) in seeds("proxy_header") {
        harness::proxy_header(&data);
        let result = parse(&data);
        match name.as_str() {
            "partial_v2" => assert_eq!(result, Ok(None)),
            "missing_http" => assert_eq!(result, Err(ProxyError::Missing)),
            "too_long_v1" => assert!(matches!(result, Err(ProxyError::TooLarge { .. }))),
            "unsupported_udp" => assert!(matches!(result, Err(ProxyError::Unsupported(_)))),
            "malformed_port" | "tlv_past_end" => {
                assert!(matches!(result, Err(ProxyError::Malformed(_))), "{name}")
            }
            _ => assert!(matches!(result, Ok(Some(_))), "{name}: {result:?}"),
        }
    }
}
