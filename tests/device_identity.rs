//! Device identity on `/ws` against the real `tether` binary over real sockets: ambiguous
//! credentials, wrong-typed protocol fields, tokens from identity providers (audience, issuer,
//! `kid`, JWKS from a file and a URL, leeway) and token lifetime (close at expiry, `refresh`).

mod server_support;

use std::time::Duration;

use server_support::*;
use tether::auth::{mint_hs256, Claims};

const SECRET: &str = "device-identity-test-secret-0123456789";

fn token(sub: &str, ttl_secs: u64) -> String {
    mint_hs256(SECRET.as_bytes(), &Claims::device(sub, ttl_secs)).unwrap()
}

fn hello(client: &mut Client) -> serde_json::Value {
    match client.recv(Duration::from_secs(10)) {
        Got::Text(t) => {
            let v: serde_json::Value = serde_json::from_str(&t).unwrap();
            assert_eq!(v["op"], "hello", "{t}");
            v
        }
        other => panic!("expected hello, got {other:?}"),
    }
}

fn next_json(client: &mut Client) -> serde_json::Value {
    match client.recv(Duration::from_secs(10)) {
        Got::Text(t) => serde_json::from_str(&t).unwrap(),
        other => panic!("expected a text message, got {other:?}"),
    }
}

#[test]
fn ambiguous_credentials_are_refused_with_400() {
    let server = Server::start(&["--shards", "1", "--jwt-secret", SECRET]);
    let good = token("tv-1", 60);
    let bearer = format!("Bearer {good}");
    let bad = "Bearer not-a-token".to_string();
    let sample = r#"tether_device_auth_failures_total{reason="ambiguous_credentials"}"#;
    assert_eq!(server.metric(sample), 0);
    // Two Authorization headers, the first bad and the second good: once accepted with 101.
    let r = Client::try_connect_with(
        server.port,
        "/ws",
        &[],
        &[("Authorization", &bad), ("Authorization", &bearer)],
    );
    assert_eq!(r.err(), Some(400));
    // A header and a query token (even the same token), a header and a subprotocol token.
    let path = format!("/ws?token={good}");
    let r = Client::try_connect_with(server.port, &path, &[], &[("Authorization", &bearer)]);
    assert_eq!(r.err(), Some(400));
    let entry = format!("tether.token.{good}");
    let r = Client::try_connect_with(
        server.port,
        "/ws",
        &["tether.v1", &entry],
        &[("Authorization", &bearer)],
    );
    assert_eq!(r.err(), Some(400));
    let path = format!("/ws?token={good}&token={good}");
    assert_eq!(
        Client::try_connect_with(server.port, &path, &[], &[]).err(),
        Some(400)
    );
    assert_eq!(server.metric(sample), 4);
    assert!(
        eventually(Duration::from_secs(5), || server
            .log()
            .contains("device refused: ambiguous credentials")),
        "no log line: {}",
        server.log()
    );
    // One token in one place is still fine.
    let mut c = Client::try_connect_with(server.port, "/ws", &[], &[("Authorization", &bearer)])
        .expect("one Authorization header");
    assert_eq!(hello(&mut c)["device"], "tv-1");
}

#[test]
fn wrong_typed_fields_get_bad_field_with_the_id() {
    let server = Server::start(&["--shards", "1", "--jwt-secret", SECRET]);
    let path = format!("/ws?token={}", token("tv-2", 60));
    let mut c = Client::try_connect_with(server.port, &path, &[], &[]).unwrap();
    hello(&mut c);
    for (field, frame) in [
        ("to", r#"{"op":"send","to":5,"data":1,"id":"w1"}"#),
        (
            "ack",
            r#"{"op":"send","to":"a","ack":"yes","data":1,"id":"w1"}"#,
        ),
        ("topic", r#"{"op":"sub","topic":7,"id":"w1"}"#),
        ("service", r#"{"op":"up","service":[],"data":1,"id":"w1"}"#),
        ("rid", r#"{"op":"reply","rid":3,"data":1,"id":"w1"}"#),
        ("op", r#"{"op":2,"id":"w1"}"#),
    ] {
        c.send_text(frame);
        let e = next_json(&mut c);
        assert_eq!(e["op"], "error", "{frame}: {e}");
        assert_eq!(e["code"], "bad_field", "{frame}: {e}");
        assert_eq!(e["id"], "w1", "{frame}: {e}");
        assert!(
            e["message"].as_str().unwrap().starts_with(field),
            "{frame}: {e}"
        );
    }
    c.send_text(r#"{"op":"ping","id":9}"#);
    let e = next_json(&mut c);
    assert_eq!(e["code"], "bad_field");
    assert!(e.get("id").is_none(), "{e}");
    // The session is still usable.
    c.send_text(r#"{"op":"ping","id":"p"}"#);
    assert_eq!(next_json(&mut c)["op"], "pong");
}
