//! Device authentication at the handshake (section 2 of `docs/protocol.md`), sans-IO.
//!
//! This module owns: finding the one token of an upgrade request (`Authorization: Bearer`, the
//! `token` query parameter, or a `tether.token.<jwt>` subprotocol entry; more than one is
//! ambiguous), choosing the subprotocol, verifying the JWT against a [`KeySet`] (one HS256
//! secret, one RS256/ES256 PEM public key, or the keys of a JWKS document selected by `kid`)
//! and the [`ClaimRules`] (`aud`, `iss`, leeway on `exp`/`nbf`; `exp` and `sub` required), the
//! claims (device id and topic/service permissions), the refusal counters, and minting tokens
//! for `tether token` and tests. Loading and refreshing a JWKS is `device::keys`' job; the
//! optional backend authorisation over NATS (`--auth-subject`) is done by the device endpoint
//! with the bus; its request and reply payloads are defined here.

use crate::proto::{self, PROTOCOL_V1, TOKEN_PROTOCOL_PREFIX};
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};
use std::str::FromStr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::{SystemTime, UNIX_EPOCH};

/// The claims tether reads from a device token. Every session keeps its own for its lifetime,
/// so the lists are boxed slices, not `Vec`s: 104 bytes instead of 136 (see the hub's budget
/// test).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Claims {
    /// The device id: the node's one copy of it, shared (`Arc`) by the tables that key on it
    /// (the hub's devices, the embedded bus's replicas, the node's session count).
    #[serde(deserialize_with = "shared_str", serialize_with = "as_str")]
    pub sub: Arc<str>,
    /// Expiry, seconds since the epoch.
    pub exp: u64,
    /// Not valid before, seconds since the epoch (checked with `--jwt-leeway`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nbf: Option<u64>,
    /// Issued at, seconds since the epoch (carried, not checked).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub iat: Option<u64>,
    /// Topic patterns the device may subscribe to (absent: none).
    #[serde(default, skip_serializing_if = "no_patterns")]
    pub topics_sub: Box<[String]>,
    /// Topic patterns the device may publish to (absent: none).
    #[serde(default, skip_serializing_if = "no_patterns")]
    pub topics_pub: Box<[String]>,
    /// Services the device may send upstream to (absent: any).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub services: Option<Box<[String]>>,
}

/// Reads a string into an `Arc<str>` (serde's own impl needs its `rc` feature).
fn shared_str<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Arc<str>, D::Error> {
    Box::<str>::deserialize(d).map(Arc::from)
}

/// Writes an `Arc<str>` as a plain string.
fn as_str<S: serde::Serializer>(value: &Arc<str>, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(value)
}

/// True for an empty pattern list (not serialized).
fn no_patterns(list: &[String]) -> bool {
    list.is_empty()
}

impl Claims {
    /// Claims for `--insecure-no-auth`: the given device id, everything allowed.
    pub fn insecure(device: &str) -> Claims {
        Claims {
            sub: device.into(),
            exp: u64::MAX,
            topics_sub: Box::new([">".into()]),
            topics_pub: Box::new([">".into()]),
            ..Claims::default()
        }
    }

    /// Claims for device `sub`, issued now and valid for `ttl_secs` (no topics, any service).
    pub fn device(sub: &str, ttl_secs: u64) -> Claims {
        let now = now_secs();
        Claims {
            sub: sub.into(),
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
    /// No token in the header, the query or a subprotocol entry (401).
    Missing,
    /// Credentials given more than once (see [`extract_token`]).
    Ambiguous(String),
    /// The token does not verify: malformed, bad signature, unknown `kid`, wrong audience or
    /// issuer, or a `sub` that is not a device id (401); the text says which, for the log only.
    Invalid(String),
    /// `exp` is in the past, beyond the leeway (401).
    Expired,
    /// `nbf` is in the future, beyond the leeway (401).
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
    Hs256 {
        /// The shared secret's bytes.
        secret: Vec<u8>,
    },
    /// RS256 with a PEM public key.
    Rs256 {
        /// The PEM text of the RSA public key.
        public_pem: Vec<u8>,
    },
    /// ES256 with a PEM public key.
    Es256 {
        /// The PEM text of the P-256 public key.
        public_pem: Vec<u8>,
    },
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

/// One verification key: its `kid` (when it has one), the one algorithm it verifies, the key.
#[derive(Clone)]
pub struct VerifyKey {
    kid: Option<String>,
    alg: Algorithm,
    key: DecodingKey,
}

/// The keys a node trusts at one moment. Several keys at once (selected by the token's `kid`)
/// let an identity provider rotate keys without downtime: it publishes the new key before it
/// signs with it, and the old one stays until its tokens have expired.
#[derive(Clone, Default)]
pub struct KeySet {
    keys: Vec<VerifyKey>,
}

/// Most keys one JWKS document may hold (identity providers publish two or three).
pub const JWKS_KEYS_MAX: usize = 64;

impl KeySet {
    /// The one key of a secret or a PEM public key (no `kid`: every token is checked with it).
    pub fn single(config: &KeyConfig) -> Result<KeySet, KeyError> {
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
        Ok(KeySet {
            keys: vec![VerifyKey {
                kid: None,
                alg,
                key,
            }],
        })
    }

    /// The signing keys of a JWKS document (RFC 7517): RSA (RS256/384/512, PS256/384/512), EC
    /// P-256/P-384 (ES256/ES384) and Ed25519 (EdDSA) public keys. Keys marked for encryption
    /// (`"use":"enc"`) and symmetric (`oct`) keys are left out; a document without any usable
    /// key, or with more than [`JWKS_KEYS_MAX`], is an error.
    pub fn from_jwks(document: &[u8]) -> Result<KeySet, KeyError> {
        use jsonwebtoken::jwk::{AlgorithmParameters, EllipticCurve, JwkSet, PublicKeyUse};
        let set: JwkSet = serde_json::from_slice(document)
            .map_err(|e| KeyError(format!("not a JWKS document: {e}")))?;
        if set.keys.len() > JWKS_KEYS_MAX {
            return Err(KeyError(format!(
                "the JWKS document has {} keys, at most {JWKS_KEYS_MAX}",
                set.keys.len()
            )));
        }
        let mut keys = Vec::new();
        for jwk in &set.keys {
            if matches!(jwk.common.public_key_use, Some(PublicKeyUse::Encryption)) {
                continue;
            }
            let declared = jwk
                .common
                .key_algorithm
                .and_then(|a| Algorithm::from_str(&format!("{a:?}")).ok());
            let alg = match (&jwk.algorithm, declared) {
                (AlgorithmParameters::OctetKey(_), _) => continue,
                (_, Some(alg)) => alg,
                (AlgorithmParameters::RSA(_), None) => Algorithm::RS256,
                (AlgorithmParameters::EllipticCurve(p), None) => match p.curve {
                    EllipticCurve::P256 => Algorithm::ES256,
                    EllipticCurve::P384 => Algorithm::ES384,
                    _ => continue,
                },
                (AlgorithmParameters::OctetKeyPair(_), None) => Algorithm::EdDSA,
            };
            if matches!(alg, Algorithm::HS256 | Algorithm::HS384 | Algorithm::HS512) {
                continue;
            }
            let key = DecodingKey::from_jwk(jwk).map_err(|e| {
                KeyError(format!(
                    "JWKS key {:?} is unusable: {e}",
                    jwk.common.key_id.as_deref().unwrap_or("(no kid)")
                ))
            })?;
            keys.push(VerifyKey {
                kid: jwk.common.key_id.clone(),
                alg,
                key,
            });
        }
        if keys.is_empty() {
            return Err(KeyError(
                "the JWKS document holds no public signing key".into(),
            ));
        }
        Ok(KeySet { keys })
    }

    /// Number of keys.
    pub fn len(&self) -> usize {
        self.keys.len()
    }

    /// True when there is no key.
    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    /// The `kid`s of the keys (those that have one).
    pub fn kids(&self) -> Vec<&str> {
        self.keys.iter().filter_map(|k| k.kid.as_deref()).collect()
    }

    /// The key for a token: by `kid` when the token names one (and its algorithm must be the
    /// key's), else the keys without a `kid` whose algorithm is the token's.
    fn candidates<'a>(
        &'a self,
        header: &'a Header,
    ) -> Result<impl Iterator<Item = &'a VerifyKey> + 'a, AuthError> {
        let matching = self.keys.iter().filter(move |k| {
            k.alg == header.alg
                && match (&header.kid, &k.kid) {
                    (Some(want), Some(have)) => want == have,
                    (Some(_), None) => false,
                    (None, have) => have.is_none() || self.keys.len() == 1,
                }
        });
        if matching.clone().next().is_none() {
            return Err(match &header.kid {
                Some(kid) if !self.keys.iter().any(|k| k.kid.as_deref() == Some(kid)) => {
                    AuthError::Invalid(format!("unknown kid {:?}", truncate(kid, 64)))
                }
                _ => AuthError::Invalid(format!("no key for algorithm {:?}", header.alg)),
            });
        }
        Ok(matching)
    }
}

fn truncate(s: &str, max: usize) -> &str {
    match s.char_indices().nth(max) {
        Some((i, _)) => &s[..i],
        None => s,
    }
}

/// The checks on a verified token's claims besides its signature.
#[derive(Clone, Debug, Default)]
pub struct ClaimRules {
    /// Accepted `aud` values. Empty: a token that carries `aud` is refused (it was issued for
    /// some audience, and this node was not told it is that audience).
    pub audience: Vec<String>,
    /// Accepted `iss` values. Empty: `iss` is not checked.
    pub issuer: Vec<String>,
    /// Clock skew tolerated on `exp` and `nbf`, in seconds.
    pub leeway_secs: u64,
}

/// Verifies device tokens. Cheap to clone (one per shard); the clones share the key set, which
/// [`Verifier::publish`] replaces for all of them at once (JWKS reload and refresh).
#[derive(Clone)]
pub struct Verifier {
    keys: Arc<RwLock<Arc<KeySet>>>,
    rules: Arc<ClaimRules>,
    /// Asks the key refresher (if any) for an early refresh: a token named an unknown `kid`.
    unknown_kid: Option<flume::Sender<()>>,
}

impl Verifier {
    /// A verifier with one key and the default rules (no audience, no issuer, no leeway); an
    /// empty or short secret or an unreadable PEM key is an error.
    pub fn new(config: &KeyConfig) -> Result<Verifier, KeyError> {
        Ok(Verifier::with_keys(
            KeySet::single(config)?,
            ClaimRules::default(),
        ))
    }

    /// A verifier with these keys and rules.
    pub fn with_keys(keys: KeySet, rules: ClaimRules) -> Verifier {
        Verifier {
            keys: Arc::new(RwLock::new(Arc::new(keys))),
            rules: Arc::new(rules),
            unknown_kid: None,
        }
    }

    /// Tokens with an unknown `kid` send `()` on `tx` (without blocking; a full channel means a
    /// refresh is already asked for).
    pub fn on_unknown_kid(&mut self, tx: flume::Sender<()>) {
        self.unknown_kid = Some(tx);
    }

    /// Replaces the key set of this verifier and all its clones.
    pub fn publish(&self, keys: KeySet) {
        let keys = Arc::new(keys);
        match self.keys.write() {
            Ok(mut slot) => *slot = keys,
            Err(poisoned) => *poisoned.into_inner() = keys,
        }
    }

    /// The key set in use.
    pub fn keys(&self) -> Arc<KeySet> {
        match self.keys.read() {
            Ok(slot) => slot.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        }
    }

    /// The rules on claims.
    pub fn rules(&self) -> &ClaimRules {
        &self.rules
    }

    /// Verifies a token and checks that `sub` is a valid device id.
    pub fn verify(&self, token: &str) -> Result<Claims, AuthError> {
        use jsonwebtoken::errors::ErrorKind;
        let header =
            jsonwebtoken::decode_header(token).map_err(|e| AuthError::Invalid(e.to_string()))?;
        let keys = self.keys();
        let candidates = match keys.candidates(&header) {
            Ok(c) => c,
            Err(err) => {
                if header.kid.is_some() {
                    if let Some(tx) = &self.unknown_kid {
                        let _ = tx.try_send(());
                    }
                }
                return Err(err);
            }
        };
        let mut last = AuthError::Invalid("no key".into());
        for key in candidates {
            let validation = self.validation(key.alg);
            match jsonwebtoken::decode::<Claims>(token, &key.key, &validation) {
                Ok(data) => {
                    if !proto::valid_device_id(&data.claims.sub) {
                        return Err(AuthError::Invalid("sub is not a valid device id".into()));
                    }
                    return Ok(data.claims);
                }
                Err(e) => {
                    last = match e.kind() {
                        ErrorKind::ExpiredSignature => return Err(AuthError::Expired),
                        ErrorKind::ImmatureSignature => return Err(AuthError::NotYetValid),
                        ErrorKind::InvalidAudience if self.rules.audience.is_empty() => {
                            AuthError::Invalid(
                                "the token has an aud claim and no jwt_audience is configured"
                                    .into(),
                            )
                        }
                        _ => AuthError::Invalid(e.to_string()),
                    }
                }
            }
        }
        Err(last)
    }

    fn validation(&self, alg: Algorithm) -> Validation {
        let mut validation = Validation::new(alg);
        validation.leeway = self.rules.leeway_secs;
        validation.validate_exp = true;
        validation.validate_nbf = true;
        let mut required = vec!["exp", "sub"];
        if !self.rules.audience.is_empty() {
            validation.set_audience(&self.rules.audience);
            required.push("aud");
        }
        if !self.rules.issuer.is_empty() {
            validation.set_issuer(&self.rules.issuer);
            required.push("iss");
        }
        validation.set_required_spec_claims(&required);
        validation
    }
}

/// Where a token was found.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TokenSource {
    /// `Authorization: Bearer <token>`.
    Header,
    /// The `token` query parameter of the request path.
    Query,
    /// A `tether.token.<jwt>` entry of `Sec-WebSocket-Protocol` (for browsers, which cannot set
    /// headers).
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
pub fn mint_hs256(secret: &[u8], claims: &impl Serialize) -> Result<String, KeyError> {
    jsonwebtoken::encode(
        &Header::new(Algorithm::HS256),
        claims,
        &EncodingKey::from_secret(secret),
    )
    .map_err(|e| KeyError(format!("cannot sign token: {e}")))
}

/// Signs `claims` with RS256 or ES256 from a PEM private key.
pub fn mint_pem(
    alg: Algorithm,
    private_pem: &[u8],
    claims: &impl Serialize,
) -> Result<String, KeyError> {
    mint_pem_kid(alg, None, private_pem, claims)
}

/// Signs `claims` with RS256 or ES256 from a PEM private key, naming `kid` in the header (tests
/// and examples that stand in for an identity provider).
pub fn mint_pem_kid(
    alg: Algorithm,
    kid: Option<&str>,
    private_pem: &[u8],
    claims: &impl Serialize,
) -> Result<String, KeyError> {
    let key = match alg {
        Algorithm::RS256 => EncodingKey::from_rsa_pem(private_pem),
        Algorithm::ES256 => EncodingKey::from_ec_pem(private_pem),
        other => return Err(KeyError(format!("unsupported algorithm {other:?}"))),
    }
    .map_err(|e| KeyError(format!("bad private key: {e}")))?;
    let mut header = Header::new(alg);
    header.kid = kid.map(str::to_owned);
    jsonwebtoken::encode(&header, claims, &key)
        .map_err(|e| KeyError(format!("cannot sign token: {e}")))
}

/// The request the node sends to `--auth-subject`.
#[derive(Serialize)]
pub struct AuthRequest<'a> {
    /// The device id (the verified token's `sub`).
    pub device: &'a str,
    /// The node's id (`node_id`).
    pub node: &'a str,
    /// The device's address (`ip:port`): the socket's peer, or the client a PROXY protocol
    /// header names on a listener with `proxy_protocol`.
    pub client_addr: std::net::SocketAddr,
    /// The verified token's claims, for the backend's own rules.
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
        assert_eq!(v.verify(&good).unwrap().sub.as_ref(), "tv-1");
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
            assert_eq!(v.verify(&token).unwrap().sub.as_ref(), "tv-9", "{alg:?}");
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

    fn fixture(name: &str) -> Vec<u8> {
        let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/jwt/");
        std::fs::read(format!("{dir}{name}")).expect("fixture")
    }

    #[test]
    fn jwks_keys_are_selected_by_kid() {
        let set = KeySet::from_jwks(&fixture("jwks-ab.json")).unwrap();
        assert_eq!(set.kids(), vec!["rsa-a", "rsa-b", "ec-a"]);
        let v = Verifier::with_keys(set, ClaimRules::default());
        let c = claims("tv-3", now_secs() + 60);
        let a = fixture("rs256-private.pem");
        let b = fixture("rs256-b-private.pem");
        let ec = fixture("es256-private.pem");
        for (alg, kid, pem) in [
            (Algorithm::RS256, "rsa-a", &a),
            (Algorithm::RS256, "rsa-b", &b),
            (Algorithm::ES256, "ec-a", &ec),
        ] {
            let t = mint_pem_kid(alg, Some(kid), pem, &c).unwrap();
            assert_eq!(v.verify(&t).unwrap().sub.as_ref(), "tv-3", "{kid}");
        }
        // Signed with key b but naming a: the signature does not verify.
        let wrong = mint_pem_kid(Algorithm::RS256, Some("rsa-a"), &b, &c).unwrap();
        assert!(matches!(v.verify(&wrong), Err(AuthError::Invalid(_))));
        // An unknown kid is refused and asks for an early refresh.
        let (tx, rx) = flume::bounded(1);
        let mut v2 = v.clone();
        v2.on_unknown_kid(tx);
        let unknown = mint_pem_kid(Algorithm::RS256, Some("rsa-z"), &a, &c).unwrap();
        assert_eq!(
            v2.verify(&unknown),
            Err(AuthError::Invalid("unknown kid \"rsa-z\"".into()))
        );
        assert!(rx.try_recv().is_ok());
        // The algorithm must be the key's: an HS256 token naming an RSA kid is refused.
        let mut header = Header::new(Algorithm::HS256);
        header.kid = Some("rsa-a".into());
        let confused = jsonwebtoken::encode(
            &header,
            &c,
            &EncodingKey::from_secret(&fixture("rs256-public.pem")),
        )
        .unwrap();
        assert!(matches!(v.verify(&confused), Err(AuthError::Invalid(_))));
        // Publishing a new set reaches every clone: after rotation to b only, a's tokens fail.
        v.publish(KeySet::from_jwks(&fixture("jwks-b.json")).unwrap());
        let ta = mint_pem_kid(Algorithm::RS256, Some("rsa-a"), &a, &c).unwrap();
        assert!(matches!(v2.verify(&ta), Err(AuthError::Invalid(_))));
        let tb = mint_pem_kid(Algorithm::RS256, Some("rsa-b"), &b, &c).unwrap();
        assert_eq!(v2.verify(&tb).unwrap().sub.as_ref(), "tv-3");
        // Bad documents.
        assert!(KeySet::from_jwks(b"{}").is_err());
        assert!(KeySet::from_jwks(br#"{"keys":[]}"#).is_err());
        assert!(KeySet::from_jwks(br#"{"keys":[{"kty":"oct","k":"c2VjcmV0"}]}"#).is_err());
    }

    #[test]
    fn audience_issuer_and_leeway() {
        let key = KeyConfig::Hs256 {
            secret: SECRET.to_vec(),
        };
        let now = now_secs();
        let token = |extra: serde_json::Value| {
            let mut v = serde_json::json!({"sub": "tv-4", "exp": now + 60});
            v.as_object_mut()
                .unwrap()
                .extend(extra.as_object().unwrap().clone());
            mint_hs256(SECRET, &v).unwrap()
        };
        let plain = Verifier::new(&key).unwrap();
        // No audience configured: a token with aud is refused, with the reason.
        let with_aud = token(serde_json::json!({"aud": "tether"}));
        assert_eq!(
            plain.verify(&with_aud),
            Err(AuthError::Invalid(
                "the token has an aud claim and no jwt_audience is configured".into()
            ))
        );
        let rules = ClaimRules {
            audience: vec!["tether".into(), "tether-eu".into()],
            issuer: vec!["https://id.example/".into()],
            leeway_secs: 0,
        };
        let strict = Verifier::with_keys(KeySet::single(&key).unwrap(), rules);
        let iss = "https://id.example/";
        assert!(strict
            .verify(&token(serde_json::json!({"aud": "tether", "iss": iss})))
            .is_ok());
        assert!(strict
            .verify(&token(
                serde_json::json!({"aud": ["other", "tether-eu"], "iss": iss})
            ))
            .is_ok());
        for bad in [
            serde_json::json!({"aud": "other", "iss": iss}),
            serde_json::json!({"iss": iss}),
            serde_json::json!({"aud": "tether", "iss": "https://evil.example/"}),
            serde_json::json!({"aud": "tether"}),
        ] {
            assert!(
                matches!(
                    strict.verify(&token(bad.clone())),
                    Err(AuthError::Invalid(_))
                ),
                "{bad}"
            );
        }
        // Leeway: expired 5 s ago passes with 10 s of leeway, not with none.
        let late = mint_hs256(SECRET, &claims("tv-4", now - 5)).unwrap();
        assert_eq!(plain.verify(&late), Err(AuthError::Expired));
        let lenient = Verifier::with_keys(
            KeySet::single(&key).unwrap(),
            ClaimRules {
                leeway_secs: 10,
                ..ClaimRules::default()
            },
        );
        assert!(lenient.verify(&late).is_ok());
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
        c.topics_sub = Box::new(["news.*".into()]);
        c.services = Some(Box::new(["billing".into()]));
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
