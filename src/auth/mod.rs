//! Device authentication at the handshake (section 2 of `docs/protocol.md`), sans-IO.
//!
//! This module owns: finding the token in an upgrade request (`Authorization: Bearer`, the
//! `token` query parameter, or a `tether.token.<jwt>` subprotocol entry), choosing the
//! subprotocol, verifying the JWT (HS256 with a shared secret, or RS256/ES256 with a PEM public
//! key; `exp` and `sub` required, no leeway), the claims (device id and topic/service
//! permissions), and minting development tokens for `tether token`. The optional backend
//! authorisation over NATS (`--auth-subject`) is done by the device endpoint with the bus; its
//! request and reply payloads are defined here.

use crate::proto::{self, PROTOCOL_V1, TOKEN_PROTOCOL_PREFIX};
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

/// The claims tether reads from a device token.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Claims {
    /// The device id.
    pub sub: String,
    /// Expiry, seconds since the epoch.
    pub exp: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nbf: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub iat: Option<u64>,
    /// Topic patterns the device may subscribe to (absent: none).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub topics_sub: Vec<String>,
    /// Topic patterns the device may publish to (absent: none).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub topics_pub: Vec<String>,
    /// Services the device may send upstream to (absent: any).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub services: Option<Vec<String>>,
}

impl Claims {
    /// Claims for `--insecure-no-auth`: the given device id, everything allowed.
    pub fn insecure(device: &str) -> Claims {
        Claims {
            sub: device.to_owned(),
            exp: u64::MAX,
            topics_sub: vec![">".into()],
            topics_pub: vec![">".into()],
            ..Claims::default()
        }
    }

    /// Claims for device `sub`, issued now and valid for `ttl_secs` (no topics, any service).
    pub fn device(sub: &str, ttl_secs: u64) -> Claims {
        let now = now_secs();
        Claims {
            sub: sub.to_owned(),
            exp: now.saturating_add(ttl_secs),
            iat: Some(now),
            ..Claims::default()
        }
    }

    /// May this device subscribe to `topic`?
    pub fn may_subscribe(&self, topic: &str) -> bool {
        self.topics_sub
            .iter()
            .any(|p| proto::pattern_matches(p, topic))
    }

    /// May this device publish to `topic`?
    pub fn may_publish(&self, topic: &str) -> bool {
        self.topics_pub
            .iter()
            .any(|p| proto::pattern_matches(p, topic))
    }

    /// May this device send upstream to `service`?
    pub fn may_send_upstream(&self, service: &str) -> bool {
        self.services
            .as_ref()
            .is_none_or(|list| list.iter().any(|s| s == service))
    }
}

/// Why a device was refused at the handshake.
#[derive(Debug, PartialEq, Eq)]
pub enum AuthError {
    Missing,
    /// Credentials given more than once (see [`extract_token`]).
    Ambiguous(String),
    Invalid(String),
    Expired,
    NotYetValid,
    /// The backend authorisation said no.
    Denied(String),
    /// The backend authorisation did not answer in time (or the bus is down).
    Unavailable,
}

impl AuthError {
    /// The HTTP status sent before the upgrade.
    pub fn status(&self) -> u16 {
        match self {
            AuthError::Missing
            | AuthError::Invalid(_)
            | AuthError::Expired
            | AuthError::NotYetValid => 401,
            AuthError::Ambiguous(_) => 400,
            AuthError::Denied(_) => 403,
            AuthError::Unavailable => 503,
        }
    }

    /// The short response body (stable: tests and clients may match on it).
    pub fn body(&self) -> String {
        match self {
            AuthError::Missing => "token missing".into(),
            AuthError::Ambiguous(what) => format!("ambiguous credentials: {what}"),
            AuthError::Invalid(_) => "token invalid".into(),
            AuthError::Expired => "token expired".into(),
            AuthError::NotYetValid => "token not yet valid".into(),
            AuthError::Denied(reason) => format!("denied: {reason}"),
            AuthError::Unavailable => "authorisation unavailable".into(),
        }
    }

    /// Every `reason` label of `tether_device_auth_failures_total`, in [`Self::metric_index`] order.
    pub const LABELS: [&'static str; 7] = [
        "token_missing",
        "ambiguous_credentials",
        "token_invalid",
        "token_expired",
        "token_not_yet_valid",
        "auth_denied",
        "auth_unavailable",
    ];

    /// Index of [`Self::metric_label`] in [`Self::LABELS`].
    pub fn metric_index(&self) -> usize {
        match self {
            AuthError::Missing => 0,
            AuthError::Ambiguous(_) => 1,
            AuthError::Invalid(_) => 2,
            AuthError::Expired => 3,
            AuthError::NotYetValid => 4,
            AuthError::Denied(_) => 5,
            AuthError::Unavailable => 6,
        }
    }

    /// The `reason` label of `tether_device_auth_failures_total`.
    pub fn metric_label(&self) -> &'static str {
        match self {
            AuthError::Missing => "token_missing",
            AuthError::Ambiguous(_) => "ambiguous_credentials",
            AuthError::Invalid(_) => "token_invalid",
            AuthError::Expired => "token_expired",
            AuthError::NotYetValid => "token_not_yet_valid",
            AuthError::Denied(_) => "auth_denied",
            AuthError::Unavailable => "auth_unavailable",
        }
    }
}

/// Refused device handshakes by reason: `tether_device_auth_failures_total{reason}`.
#[derive(Debug, Default)]
pub struct AuthFailureStats {
    counts: [AtomicU64; AuthError::LABELS.len()],
}

impl AuthFailureStats {
    /// Counts one refusal.
    pub fn count(&self, err: &AuthError) {
        self.counts[err.metric_index()].fetch_add(1, Ordering::Relaxed);
    }

    /// Refusals counted for `err`'s reason.
    pub fn get(&self, err: &AuthError) -> u64 {
        self.counts[err.metric_index()].load(Ordering::Relaxed)
    }

    /// Appends the counter in Prometheus text format.
    pub fn render_prometheus(&self, out: &mut String) {
        use std::fmt::Write as _;
        let name = "tether_device_auth_failures_total";
        let _ = writeln!(
            out,
            "# HELP {name} /ws upgrade requests refused by device authentication, by reason.\n\
             # TYPE {name} counter"
        );
        for (label, count) in AuthError::LABELS.iter().zip(&self.counts) {
            let _ = writeln!(
                out,
                "{name}{{reason=\"{label}\"}} {}",
                count.load(Ordering::Relaxed)
            );
        }
    }
}

/// How tokens are verified.
#[derive(Clone)]
pub enum KeyConfig {
    /// HS256 with a shared secret.
    Hs256 { secret: Vec<u8> },
    /// RS256 with a PEM public key.
    Rs256 { public_pem: Vec<u8> },
    /// ES256 with a PEM public key.
    Es256 { public_pem: Vec<u8> },
}

/// A configuration problem found at start (the node refuses to start).
#[derive(Debug)]
pub struct KeyError(pub String);

impl std::fmt::Display for KeyError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for KeyError {}

/// Verifies device tokens. Cheap to clone (one per shard).
#[derive(Clone)]
pub struct Verifier {
    key: DecodingKey,
    validation: Validation,
}

impl Verifier {
    /// Builds a verifier; an empty secret or an unreadable PEM key is an error.
    pub fn new(config: &KeyConfig) -> Result<Verifier, KeyError> {
        let (key, alg) = match config {
            KeyConfig::Hs256 { secret } => {
                if secret.len() < 16 {
                    return Err(KeyError(format!(
                        "the JWT secret is {} bytes; use at least 16 random bytes \
                         (--jwt-secret or TETHER_JWT_SECRET)",
                        secret.len()
                    )));
                }
                (DecodingKey::from_secret(secret), Algorithm::HS256)
            }
            KeyConfig::Rs256 { public_pem } => (
                DecodingKey::from_rsa_pem(public_pem).map_err(|e| {
                    KeyError(format!(
                        "--jwt-public-key is not an RSA PEM public key: {e}"
                    ))
                })?,
                Algorithm::RS256,
            ),
            KeyConfig::Es256 { public_pem } => (
                DecodingKey::from_ec_pem(public_pem).map_err(|e| {
                    KeyError(format!("--jwt-public-key is not an EC PEM public key: {e}"))
                })?,
                Algorithm::ES256,
            ),
        };
        let mut validation = Validation::new(alg);
        validation.leeway = 0;
        validation.validate_exp = true;
        validation.validate_nbf = true;
        validation.set_required_spec_claims(&["exp", "sub"]);
        Ok(Verifier { key, validation })
    }

    /// Verifies a token and checks that `sub` is a valid device id.
    pub fn verify(&self, token: &str) -> Result<Claims, AuthError> {
        use jsonwebtoken::errors::ErrorKind;
        let data = jsonwebtoken::decode::<Claims>(token, &self.key, &self.validation).map_err(
            |e| match e.kind() {
                ErrorKind::ExpiredSignature => AuthError::Expired,
                ErrorKind::ImmatureSignature => AuthError::NotYetValid,
                _ => AuthError::Invalid(e.to_string()),
            },
        )?;
        if !proto::valid_device_id(&data.claims.sub) {
            return Err(AuthError::Invalid("sub is not a valid device id".into()));
        }
        Ok(data.claims)
    }
}

/// Where a token was found.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TokenSource {
    Header,
    Query,
    Subprotocol,
}

/// Finds the one token of a request: an `Authorization: Bearer` header, a non-empty `token`
/// query parameter, or a `tether.token.<jwt>` subprotocol entry. `Ok(None)`: no token.
/// Credentials given more than once (two Authorization headers, two `token` parameters, two
/// token subprotocol entries, or a token in two of these places) are ambiguous: which one would
/// be checked is a guess a proxy in front of tether may make differently, so the request is
/// refused (400) rather than any one of them picked.
pub fn extract_token(
    authorization: &[String],
    query_tokens: &[String],
    protocols: &[String],
) -> Result<Option<(String, TokenSource)>, AuthError> {
    if authorization.len() > 1 {
        return Err(AuthError::Ambiguous(format!(
            "{} Authorization headers",
            authorization.len()
        )));
    }
    let header = authorization.first().and_then(|value| {
        let value = value.trim();
        (value.len() > 7 && value[..7].eq_ignore_ascii_case("bearer "))
            .then(|| value[7..].trim().to_owned())
    });
    let mut query = query_tokens.iter().filter(|t| !t.is_empty());
    let query_token = query.next().cloned();
    if query.next().is_some() {
        return Err(AuthError::Ambiguous(
            "token query parameter repeated".into(),
        ));
    }
    let mut entries = protocols
        .iter()
        .filter_map(|p| p.strip_prefix(TOKEN_PROTOCOL_PREFIX))
        .filter(|t| !t.is_empty());
    let protocol_token = entries.next().map(str::to_owned);
    if entries.next().is_some() {
        return Err(AuthError::Ambiguous(
            "more than one tether.token. subprotocol entry".into(),
        ));
    }
    let found = [
        header.map(|t| (t, TokenSource::Header)),
        query_token.map(|t| (t, TokenSource::Query)),
        protocol_token.map(|t| (t, TokenSource::Subprotocol)),
    ];
    let mut found = found.into_iter().flatten();
    let first = found.next();
    if found.next().is_some() {
        return Err(AuthError::Ambiguous(
            "a token in more than one of Authorization, ?token= and the subprotocol".into(),
        ));
    }
    Ok(first)
}

/// Chooses the subprotocol to answer: `Ok(Some("tether.v1"))` when offered, `Ok(None)` when the
/// client offered none (token entries aside), `Err` when it offered only others (400).
pub fn negotiate_protocol(protocols: &[String]) -> Result<Option<&'static str>, String> {
    let mut offered_other = None;
    for p in protocols {
        if p == PROTOCOL_V1 {
            return Ok(Some(PROTOCOL_V1));
        }
        if !p.starts_with(TOKEN_PROTOCOL_PREFIX) {
            offered_other.get_or_insert(p.as_str());
        }
    }
    match offered_other {
        None => Ok(None),
        Some(p) => Err(format!(
            "unsupported subprotocol {p:?}; offer {PROTOCOL_V1}"
        )),
    }
}

/// Seconds since the epoch.
pub fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// Parses a duration such as `90`, `45s`, `30m`, `1h`, `2d` into seconds.
pub fn parse_ttl_secs(text: &str) -> Result<u64, String> {
    let text = text.trim();
    let (digits, unit) = match text.find(|c: char| !c.is_ascii_digit()) {
        Some(i) => text.split_at(i),
        None => (text, "s"),
    };
    let n: u64 = digits
        .parse()
        .map_err(|_| format!("bad duration {text:?}: use e.g. 90s, 30m, 1h, 2d"))?;
    let scale = match unit {
        "s" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86_400,
        _ => return Err(format!("bad duration unit in {text:?}: use s, m, h or d")),
    };
    n.checked_mul(scale)
        .ok_or_else(|| format!("duration {text:?} too large"))
}

/// Signs `claims` with HS256 (development tokens: `tether token`, tests, examples).
pub fn mint_hs256(secret: &[u8], claims: &Claims) -> Result<String, KeyError> {
    jsonwebtoken::encode(
        &Header::new(Algorithm::HS256),
        claims,
        &EncodingKey::from_secret(secret),
    )
    .map_err(|e| KeyError(format!("cannot sign token: {e}")))
}

/// Signs `claims` with RS256 or ES256 from a PEM private key.
pub fn mint_pem(alg: Algorithm, private_pem: &[u8], claims: &Claims) -> Result<String, KeyError> {
    let key = match alg {
        Algorithm::RS256 => EncodingKey::from_rsa_pem(private_pem),
        Algorithm::ES256 => EncodingKey::from_ec_pem(private_pem),
        other => return Err(KeyError(format!("unsupported algorithm {other:?}"))),
    }
    .map_err(|e| KeyError(format!("bad private key: {e}")))?;
    jsonwebtoken::encode(&Header::new(alg), claims, &key)
        .map_err(|e| KeyError(format!("cannot sign token: {e}")))
}

/// The request the node sends to `--auth-subject`.
#[derive(Serialize)]
pub struct AuthRequest<'a> {
    pub device: &'a str,
    pub node: &'a str,
    pub claims: &'a Claims,
}

#[derive(Deserialize)]
struct AuthReply {
    #[serde(default)]
    allow: bool,
    #[serde(default)]
    reason: Option<String>,
}

/// Reads the backend's answer; anything but `{"allow":true}` is a denial.
pub fn parse_auth_reply(payload: &[u8]) -> Result<(), AuthError> {
    match serde_json::from_slice::<AuthReply>(payload) {
        Ok(AuthReply { allow: true, .. }) => Ok(()),
        Ok(AuthReply { reason, .. }) => {
            let mut reason = reason.unwrap_or_else(|| "not allowed".into());
            reason.truncate(200);
            Err(AuthError::Denied(reason))
        }
        Err(_) => Err(AuthError::Denied("unreadable authorisation reply".into())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECRET: &[u8] = b"0123456789abcdef0123456789abcdef";

    fn claims(sub: &str, exp: u64) -> Claims {
        Claims {
            sub: sub.into(),
            exp,
            ..Claims::default()
        }
    }

    fn verifier() -> Verifier {
        Verifier::new(&KeyConfig::Hs256 {
            secret: SECRET.to_vec(),
        })
        .unwrap()
    }

    #[test]
    fn hs256_round_trip_and_failures() {
        let v = verifier();
        let good = mint_hs256(SECRET, &claims("tv-1", now_secs() + 60)).unwrap();
        assert_eq!(v.verify(&good).unwrap().sub, "tv-1");
        let expired = mint_hs256(SECRET, &claims("tv-1", now_secs() - 1)).unwrap();
        assert_eq!(v.verify(&expired), Err(AuthError::Expired));
        let other = mint_hs256(
            b"another-secret-of-32-bytes-long!",
            &claims("tv-1", now_secs() + 60),
        )
        .unwrap();
        assert!(matches!(v.verify(&other), Err(AuthError::Invalid(_))));
        assert!(matches!(v.verify("garbage"), Err(AuthError::Invalid(_))));
        let bad_sub = mint_hs256(SECRET, &claims("tv.1", now_secs() + 60)).unwrap();
        assert!(matches!(v.verify(&bad_sub), Err(AuthError::Invalid(_))));
        let mut early = claims("tv-1", now_secs() + 600);
        early.nbf = Some(now_secs() + 300);
        assert_eq!(
            v.verify(&mint_hs256(SECRET, &early).unwrap()),
            Err(AuthError::NotYetValid)
        );
        // alg "none" is refused.
        let none = format!(
            "{}.{}.",
            base64_url(br#"{"alg":"none","typ":"JWT"}"#),
            base64_url(format!(r#"{{"sub":"tv-1","exp":{}}}"#, now_secs() + 60).as_bytes())
        );
        assert!(matches!(v.verify(&none), Err(AuthError::Invalid(_))));
        assert!(Verifier::new(&KeyConfig::Hs256 {
            secret: b"short".to_vec()
        })
        .is_err());
    }

    fn base64_url(bytes: &[u8]) -> String {
        use base64::Engine;
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
    }

    #[test]
    fn rs256_and_es256_with_pem_keys() {
        let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/jwt/");
        let read = |name: &str| std::fs::read(format!("{dir}{name}")).expect("fixture key");
        for (alg, private, public) in [
            (Algorithm::RS256, "rs256-private.pem", "rs256-public.pem"),
            (Algorithm::ES256, "es256-private.pem", "es256-public.pem"),
        ] {
            let config = match alg {
                Algorithm::RS256 => KeyConfig::Rs256 {
                    public_pem: read(public),
                },
                _ => KeyConfig::Es256 {
                    public_pem: read(public),
                },
            };
            let v = Verifier::new(&config).unwrap();
            let token = mint_pem(alg, &read(private), &claims("tv-9", now_secs() + 60)).unwrap();
            assert_eq!(v.verify(&token).unwrap().sub, "tv-9", "{alg:?}");
            let expired = mint_pem(alg, &read(private), &claims("tv-9", now_secs() - 5)).unwrap();
            assert_eq!(v.verify(&expired), Err(AuthError::Expired));
            // An HS256 token signed with the public key's bytes (algorithm confusion) is refused.
            let confused = mint_hs256(&read(public), &claims("tv-9", now_secs() + 60)).unwrap();
            assert!(
                matches!(v.verify(&confused), Err(AuthError::Invalid(_))),
                "{alg:?}"
            );
        }
        assert!(Verifier::new(&KeyConfig::Rs256 {
            public_pem: b"not a key".to_vec()
        })
        .is_err());
    }

    #[test]
    fn token_sources_and_ambiguity() {
        let s = |v: &[&str]| v.iter().map(|x| x.to_string()).collect::<Vec<_>>();
        let protos = s(&["tether.v1", "tether.token.P"]);
        assert_eq!(
            extract_token(&s(&["Bearer H"]), &[], &s(&["tether.v1"])),
            Ok(Some(("H".into(), TokenSource::Header)))
        );
        assert_eq!(
            extract_token(&s(&["Basic x"]), &s(&["Q"]), &[]),
            Ok(Some(("Q".into(), TokenSource::Query)))
        );
        assert_eq!(
            extract_token(&[], &[], &protos),
            Ok(Some(("P".into(), TokenSource::Subprotocol)))
        );
        assert_eq!(extract_token(&[], &s(&[""]), &[]), Ok(None));
        let ambiguous = |r: Result<_, AuthError>| matches!(r, Err(AuthError::Ambiguous(_)));
        // Two Authorization headers, first bad and second good: refused whatever they hold.
        assert!(ambiguous(extract_token(
            &s(&["Bearer bad", "Bearer good"]),
            &[],
            &[]
        )));
        assert!(ambiguous(extract_token(&s(&["Bearer H"]), &s(&["Q"]), &[])));
        assert!(ambiguous(extract_token(&s(&["Bearer H"]), &[], &protos)));
        assert!(ambiguous(extract_token(&[], &s(&["Q"]), &protos)));
        assert!(ambiguous(extract_token(&[], &s(&["Q", "R"]), &[])));
        assert!(ambiguous(extract_token(
            &[],
            &[],
            &s(&["tether.token.A", "tether.token.B"])
        )));
        assert_eq!(AuthError::Ambiguous("x".into()).status(), 400);
        for (i, label) in AuthError::LABELS.iter().enumerate() {
            let err = [
                AuthError::Missing,
                AuthError::Ambiguous(String::new()),
                AuthError::Invalid(String::new()),
                AuthError::Expired,
                AuthError::NotYetValid,
                AuthError::Denied(String::new()),
                AuthError::Unavailable,
            ]
            .into_iter()
            .find(|e| e.metric_index() == i)
            .expect("every label has its error");
            assert_eq!(err.metric_label(), *label);
        }
    }

    #[test]
    fn protocol_negotiation() {
        let s = |v: &[&str]| v.iter().map(|x| x.to_string()).collect::<Vec<_>>();
        assert_eq!(
            negotiate_protocol(&s(&["tether.token.x", "tether.v1"])),
            Ok(Some("tether.v1"))
        );
        assert_eq!(negotiate_protocol(&s(&[])), Ok(None));
        assert_eq!(negotiate_protocol(&s(&["tether.token.x"])), Ok(None));
        assert!(negotiate_protocol(&s(&["mqtt"])).is_err());
    }

    #[test]
    fn permissions() {
        let mut c = claims("d", 0);
        assert!(!c.may_subscribe("news.a"));
        assert!(c.may_send_upstream("billing"));
        c.topics_sub = vec!["news.*".into()];
        c.services = Some(vec!["billing".into()]);
        assert!(c.may_subscribe("news.a"));
        assert!(!c.may_publish("news.a"));
        assert!(!c.may_send_upstream("other"));
        assert!(Claims::insecure("d").may_publish("a.b.c"));
    }

    #[test]
    fn ttl_and_auth_reply() {
        assert_eq!(parse_ttl_secs("1h"), Ok(3600));
        assert_eq!(parse_ttl_secs("90"), Ok(90));
        assert_eq!(parse_ttl_secs("2d"), Ok(172_800));
        assert!(parse_ttl_secs("1y").is_err());
        assert!(parse_ttl_secs("h").is_err());
        assert_eq!(parse_auth_reply(br#"{"allow":true}"#), Ok(()));
        assert_eq!(
            parse_auth_reply(br#"{"allow":false,"reason":"suspended"}"#),
            Err(AuthError::Denied("suspended".into()))
        );
        assert_eq!(AuthError::Denied("x".into()).status(), 403);
        assert_eq!(AuthError::Unavailable.status(), 503);
        assert_eq!(AuthError::Expired.status(), 401);
    }
}
