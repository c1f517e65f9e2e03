//! The protocol state of one NATS connection, sans-IO: what to write, what the bytes read mean.
//!
//! The [`Client`] outlives its connections. The driver ([`super::Connection`]) tells it when a
//! connection is up ([`Client::on_connected`]) and when it is gone
//! ([`Client::on_disconnected`]), feeds it the bytes read ([`Client::next_event`]) and writes
//! what it queued ([`Client::output`], [`Client::consume_output`]).
//!
//! * **Subscriptions** are one table `sid -> subject` ([`SubjectText`]: a subject's own text, or
//!   a static prefix and a shared tail, which costs no allocation); every live one is sent
//!   again, in sid order, after each `CONNECT`. A message for a sid that is no longer live (it
//!   was on its way when the `UNSUB` was written) is dropped here and makes no event.
//! * **Pings are round-trip markers.** [`Client::ping`] returns a number `n`; [`Event::Pong`]`(n)`
//!   comes back once the server has answered a `PING` written after everything queued before
//!   the call. The server handles one client's operations in order, so that is also the proof
//!   that every earlier `SUB` is in effect on that server. Markers complete in the order they
//!   were issued. A marker whose `PING` was lost with a connection is sent again after the
//!   reconnect (after the restored `SUB`s).
//! * **Output is bounded.** Publishes are refused with [`PublishError::Full`] when the queued
//!   bytes would pass `outbound_bytes_max`; subscription changes and pings are never refused
//!   (their number is bounded by the caller's table). While disconnected, publishes and pings
//!   queue in the same buffer and go out after `CONNECT` and the restored `SUB`s; what was
//!   queued for a connection that broke is dropped with it (core NATS is at most once), and
//!   counted in [`Client::dropped_on_disconnect_bytes`].
//! * **Server pings** are answered by the client itself.

use super::proto::{self, Connect, Headers, ParseError, ServerOp};
use ahash::AHashMap;
use std::collections::VecDeque;
use std::fmt;
use std::sync::Arc;

/// A subscription id, unique for the life of a [`Client`] (never reused).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Sid(pub u64);

/// How the client logs in (the `CONNECT` fields); files are read by the caller.
#[derive(Clone, Default)]
pub enum Login {
    /// No credentials.
    #[default]
    None,
    /// `user` and `pass`.
    UserPassword(String, String),
    /// `auth_token`.
    Token(String),
    /// An NKey user: the public key and the server's nonce signed with the seed.
    NKey(nkeys::KeyPair),
    /// A `.creds` file: the user JWT, and the nonce signed with the seed.
    Creds {
        /// The user JWT.
        jwt: String,
        /// The user's key pair (from the seed).
        key: nkeys::KeyPair,
    },
}

impl std::fmt::Debug for Login {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never print a secret.
        f.write_str(match self {
            Login::None => "None",
            Login::UserPassword(..) => "UserPassword",
            Login::Token(_) => "Token",
            Login::NKey(_) => "NKey",
            Login::Creds { .. } => "Creds",
        })
    }
}

/// What the client is and how much it may hold.
#[derive(Clone, Debug)]
pub struct ClientOptions {
    /// The connection's name (`CONNECT` `name`, shown in the server's `/connz`).
    pub name: String,
    /// The login.
    pub login: Login,
    /// Most bytes queued for the socket before publishes are refused ([`PublishError::Full`]).
    pub outbound_bytes_max: usize,
    /// Tell the server the connection is TLS (`CONNECT` `tls_required`).
    pub tls: bool,
}

/// The fields of the server's `INFO` this client uses.
#[derive(Clone, Debug, Default, serde::Deserialize)]
pub struct ServerInfo {
    /// The server's id.
    #[serde(default)]
    pub server_id: String,
    /// Largest message (headers and payload) the server accepts.
    #[serde(default = "default_max_payload")]
    pub max_payload: usize,
    /// Whether the server supports headers (`HPUB`/`HMSG`).
    #[serde(default)]
    pub headers: bool,
    /// The nonce to sign for an NKey login.
    #[serde(default)]
    pub nonce: Option<String>,
    /// The server wants TLS.
    #[serde(default)]
    pub tls_required: bool,
    /// The server offers TLS.
    #[serde(default)]
    pub tls_available: bool,
    /// The server wants credentials.
    #[serde(default)]
    pub auth_required: bool,
    /// Other servers of the cluster clients may connect to (`host:port`).
    #[serde(default)]
    pub connect_urls: Vec<String>,
}

/// nats-server's default `max_payload` (1 MiB), for an `INFO` that leaves it out.
fn default_max_payload() -> usize {
    1024 * 1024
}

impl ServerInfo {
    /// Parses the JSON of an `INFO` operation.
    pub fn parse(json: &[u8]) -> Result<ServerInfo, ClientError> {
        serde_json::from_slice(json).map_err(|e| ClientError::BadInfo(e.to_string()))
    }
}

/// A message, as the server delivered it; every slice borrows the read buffer.
#[derive(Clone, Copy, Debug)]
pub struct Msg<'a> {
    /// The subscription it came through.
    pub sid: Sid,
    /// The subject it was published on.
    pub subject: &'a str,
    /// Where an answer goes.
    pub reply: Option<&'a str>,
    /// The header block (`HMSG`), if any.
    pub headers: Option<Headers<'a>>,
    /// The body.
    pub payload: &'a [u8],
}

impl Msg<'_> {
    /// The status of the header block (`503`: no responders).
    pub fn status(&self) -> Option<u16> {
        self.headers.and_then(|h| h.status())
    }

    /// The server's "no responders" answer to a request: status 503 and no body.
    pub fn is_no_responders(&self) -> bool {
        self.status() == Some(503) && self.payload.is_empty()
    }
}

/// What the connection tells its owner.
#[derive(Debug)]
pub enum Event<'a> {
    /// A message on a subscription.
    Msg(Msg<'a>),
    /// The round-trip marker of [`Client::ping`] completed.
    Pong(u64),
    /// A connection is up: logged in, subscriptions and pending pings sent.
    /// `reconnect`: not the first one.
    Connected {
        /// An earlier connection existed.
        reconnect: bool,
    },
    /// The connection broke (the driver reconnects).
    Disconnected,
    /// `-ERR` from the server (the text as sent).
    ServerError(&'a str),
}

/// Why the client cannot go on with a connection, or refuses a call.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum ClientError {
    /// The bytes read are not the NATS protocol (the connection must be dropped).
    #[error("NATS protocol error: {0}")]
    Protocol(#[from] ParseError),
    /// A message's subject or reply is not UTF-8.
    #[error("NATS message with a subject that is not UTF-8")]
    NotUtf8,
    /// The `INFO` JSON does not parse.
    #[error("bad INFO from the NATS server: {0}")]
    BadInfo(String),
    /// The server wants an NKey signature and sent no nonce, or signing failed.
    #[error("cannot sign the NATS server's nonce: {0}")]
    Sign(String),
    /// A subject with whitespace or control bytes, or empty.
    #[error("not a NATS subject: {0:?}")]
    BadSubject(String),
}

/// Why a publish was refused.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum PublishError {
    /// The outbound buffer holds `outbound_bytes_max` already (the caller counts the drop).
    #[error("NATS outbound buffer full")]
    Full,
    /// Headers and payload together exceed the server's `max_payload`, or the whole operation
    /// exceeds `outbound_bytes_max` (it would never fit).
    #[error("message of {size} bytes exceeds the limit of {max}")]
    TooLarge {
        /// Header block and payload (for `max_payload`), or the operation's bytes.
        size: usize,
        /// The server's `max_payload`, or `outbound_bytes_max`.
        max: usize,
    },
    /// A subject, reply subject or header that cannot go on the wire.
    #[error("not publishable: {0}")]
    Invalid(&'static str),
}

/// A subscription's subject as the client keeps it, to send it again after every reconnect.
///
/// With many subscriptions whose subjects differ only by a tail the caller already holds (a
/// device's `tether.*.<id>` for every session's id), [`SubjectText::Joined`] shares that tail
/// instead of copying the whole subject into an allocation of its own.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SubjectText {
    /// The subject's own text.
    Owned(Box<str>),
    /// `prefix` followed by `tail` (the prefix through a thin reference: 24 bytes in all).
    Joined(&'static &'static str, Arc<str>),
}

impl fmt::Display for SubjectText {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SubjectText::Owned(s) => f.write_str(s),
            SubjectText::Joined(prefix, tail) => {
                f.write_str(prefix)?;
                f.write_str(tail)
            }
        }
    }
}

/// The protocol state; see the module doc.
#[derive(Debug)]
pub struct Client {
    options: ClientOptions,
    /// sid -> subject of every live subscription (looked up for every message).
    subs: AHashMap<u64, SubjectText>,
    next_sid: u64,
    /// Queued bytes: `out[out_at..]` (what is before was written).
    out: Vec<u8>,
    out_at: usize,
    /// Markers not answered yet, in order; `true`: the driver's keep-alive (no event).
    pings: VecDeque<(u64, bool)>,
    /// How many of `pings` (from the front) were written on a connection that broke.
    pings_to_resend: usize,
    next_ping: u64,
    connected: bool,
    ever_connected: bool,
    max_payload: usize,
    dropped_on_disconnect_bytes: u64,
    /// `connect_urls` of the last `INFO` that had any, until the driver takes them.
    announced_urls: Option<Vec<String>>,
}

impl Client {
    /// A client that is not connected yet.
    pub fn new(options: ClientOptions) -> Client {
        Client {
            options,
            subs: AHashMap::new(),
            next_sid: 1,
            out: Vec::new(),
            out_at: 0,
            pings: VecDeque::new(),
            pings_to_resend: 0,
            next_ping: 0,
            connected: false,
            ever_connected: false,
            max_payload: default_max_payload(),
            dropped_on_disconnect_bytes: 0,
            announced_urls: None,
        }
    }

    /// Whether a connection is up.
    pub fn is_connected(&self) -> bool {
        self.connected
    }

    /// Live subscriptions.
    pub fn subscriptions(&self) -> usize {
        self.subs.len()
    }

    /// The subject of a live subscription.
    pub fn subject(&self, sid: Sid) -> Option<&SubjectText> {
        self.subs.get(&sid.0)
    }

    /// Pings not answered yet (the caller's and the keep-alives).
    pub fn pings_waiting(&self) -> usize {
        self.pings.len()
    }

    /// Bytes queued for a connection that broke before they were written.
    pub fn dropped_on_disconnect_bytes(&self) -> u64 {
        self.dropped_on_disconnect_bytes
    }

    /// The `connect_urls` of an `INFO` received since the last call.
    pub fn take_announced_urls(&mut self) -> Option<Vec<String>> {
        self.announced_urls.take()
    }

    /// Bytes queued for the socket.
    pub fn output(&self) -> &[u8] {
        &self.out[self.out_at..]
    }

    /// The first `n` queued bytes were written.
    pub fn consume_output(&mut self, n: usize) {
        assert!(
            n <= self.out.len() - self.out_at,
            "consumed more than was queued"
        );
        self.out_at += n;
        if self.out_at == self.out.len() {
            self.out.clear();
            self.out_at = 0;
            // A burst may have grown the buffer far beyond the usual: give it back.
            if self.out.capacity() > 4 * self.options.outbound_bytes_max.min(1 << 20) {
                self.out = Vec::new();
            }
        } else if self.out_at >= self.out.len() / 2 {
            // Partial writes: move the rest to the front once half is written (amortised).
            self.out.drain(..self.out_at);
            self.out_at = 0;
        }
    }

    /// Subscribes to `subject`; the `SUB` is written now if connected, and after every
    /// reconnect.
    pub fn subscribe(&mut self, subject: &str) -> Result<Sid, ClientError> {
        self.subscribe_text(subject, SubjectText::Owned(subject.into()))
    }

    /// Subscribes to `prefix` followed by `tail`, keeping a reference to `tail` instead of a
    /// copy of the subject (see [`SubjectText::Joined`]).
    pub fn subscribe_joined(
        &mut self,
        prefix: &'static &'static str,
        tail: Arc<str>,
    ) -> Result<Sid, ClientError> {
        let subject = format!("{prefix}{tail}");
        self.subscribe_text(&subject, SubjectText::Joined(prefix, tail))
    }

    /// `text` is `subject`, as it is kept.
    fn subscribe_text(&mut self, subject: &str, text: SubjectText) -> Result<Sid, ClientError> {
        if !proto::is_valid_subject(subject) {
            return Err(ClientError::BadSubject(subject.to_owned()));
        }
        let sid = self.next_sid;
        self.next_sid += 1;
        self.subs.insert(sid, text);
        if self.connected {
            proto::encode_sub(&mut self.out, subject, sid);
        }
        Ok(Sid(sid))
    }

    /// Ends a subscription (`false`: it was not live).
    pub fn unsubscribe(&mut self, sid: Sid) -> bool {
        let live = self.subs.remove(&sid.0).is_some();
        if live && self.connected {
            proto::encode_unsub(&mut self.out, sid.0);
        }
        live
    }

    /// Queues a message; `headers` empty: a plain `PUB`, else `HPUB`.
    pub fn publish(
        &mut self,
        subject: &str,
        reply: Option<&str>,
        headers: &[(&str, &str)],
        payload: &[u8],
    ) -> Result<(), PublishError> {
        if !proto::is_valid_subject(subject) {
            return Err(PublishError::Invalid("subject"));
        }
        if reply.is_some_and(|r| !proto::is_valid_subject(r)) {
            return Err(PublishError::Invalid("reply subject"));
        }
        if !headers.iter().all(|(n, v)| proto::is_valid_header(n, v)) {
            return Err(PublishError::Invalid("header"));
        }
        let header_bytes = if headers.is_empty() {
            0
        } else {
            proto::header_block_len(headers)
        };
        let size = header_bytes + payload.len();
        if size > self.max_payload {
            return Err(PublishError::TooLarge {
                size,
                max: self.max_payload,
            });
        }
        // The control line is at most the subjects and three numbers.
        let op_bytes = size + subject.len() + reply.map_or(0, str::len) + 64;
        if op_bytes > self.options.outbound_bytes_max {
            // It would never fit, however empty the buffer.
            return Err(PublishError::TooLarge {
                size: op_bytes,
                max: self.options.outbound_bytes_max,
            });
        }
        if self.output().len() + op_bytes > self.options.outbound_bytes_max {
            return Err(PublishError::Full);
        }
        if headers.is_empty() {
            proto::encode_pub(&mut self.out, subject, reply, payload);
        } else {
            proto::encode_hpub(&mut self.out, subject, reply, headers, payload);
        }
        Ok(())
    }

    /// Issues a round-trip marker (see the module doc); [`Event::Pong`] with the number returned
    /// follows once the server has handled everything queued before.
    pub fn ping(&mut self) -> u64 {
        self.push_ping(false)
    }

    /// The driver's keep-alive: `false` (and nothing sent) while the previous keep-alive is
    /// unanswered: the connection is stale.
    pub fn keepalive(&mut self) -> bool {
        if self.pings.iter().any(|&(_, keepalive)| keepalive) {
            return false;
        }
        self.push_ping(true);
        true
    }

    fn push_ping(&mut self, keepalive: bool) -> u64 {
        let n = self.next_ping;
        self.next_ping += 1;
        self.pings.push_back((n, keepalive));
        // While disconnected the PING waits in the queue behind what was queued before it.
        proto::encode_ping(&mut self.out);
        n
    }

    /// The `CONNECT` for a server that sent `info` (signs its nonce for an NKey login), with
    /// the configured login or `login` instead (credentials in a URL).
    pub fn connect_op(
        &self,
        info: &ServerInfo,
        login: Option<&Login>,
        out: &mut Vec<u8>,
    ) -> Result<(), ClientError> {
        let sign = |key: &nkeys::KeyPair| -> Result<String, ClientError> {
            use base64::Engine as _;
            let nonce = info
                .nonce
                .as_deref()
                .ok_or_else(|| ClientError::Sign("the server sent no nonce".into()))?;
            let sig = key
                .sign(nonce.as_bytes())
                .map_err(|e| ClientError::Sign(e.to_string()))?;
            Ok(base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(sig))
        };
        let mut connect = Connect {
            name: Some(&self.options.name),
            headers: true,
            no_responders: true,
            tls_required: self.options.tls,
            ..Connect::default()
        };
        let (sig, public);
        match login.unwrap_or(&self.options.login) {
            Login::None => {}
            Login::UserPassword(user, pass) => connect.user_password = Some((user, pass)),
            Login::Token(token) => connect.auth_token = Some(token),
            Login::NKey(key) => {
                sig = sign(key)?;
                public = key.public_key();
                connect.nkey = Some(&public);
                connect.sig = Some(&sig);
            }
            Login::Creds { jwt, key } => {
                sig = sign(key)?;
                connect.jwt = Some(jwt);
                connect.sig = Some(&sig);
            }
        }
        proto::encode_connect(out, &connect);
        Ok(())
    }

    /// A connection is logged in to a server that sent `info`: queues every live `SUB` and the
    /// pings lost with the last connection ahead of what was queued while disconnected.
    /// Returns whether this is a reconnect.
    pub fn on_connected(&mut self, info: &ServerInfo) -> bool {
        assert!(!self.connected, "on_connected twice");
        self.max_payload = info.max_payload;
        let mut head = Vec::with_capacity(self.subs.len() * 32 + self.pings_to_resend * 6);
        let mut sids: Vec<u64> = self.subs.keys().copied().collect();
        sids.sort_unstable();
        let mut subject = String::new();
        for sid in sids {
            subject.clear();
            let _ = fmt::Write::write_fmt(&mut subject, format_args!("{}", self.subs[&sid]));
            proto::encode_sub(&mut head, &subject, sid);
        }
        for _ in 0..self.pings_to_resend {
            proto::encode_ping(&mut head);
        }
        self.pings_to_resend = 0;
        head.extend_from_slice(self.output());
        self.out = head;
        self.out_at = 0;
        self.connected = true;
        std::mem::replace(&mut self.ever_connected, true)
    }

    /// The connection broke: what was queued for it is dropped; its unanswered pings wait for
    /// the next one.
    pub fn on_disconnected(&mut self) {
        if !self.connected {
            return;
        }
        self.connected = false;
        self.dropped_on_disconnect_bytes += self.output().len() as u64;
        self.out = Vec::new();
        self.out_at = 0;
        // Keep-alives of a dead connection mean nothing on the next one.
        self.pings.retain(|&(_, keepalive)| !keepalive);
        self.pings_to_resend = self.pings.len();
    }

    /// The next event in `input` (bytes read from a connection that is up) and the bytes taken
    /// up to and including it; `None` and the bytes taken when no complete operation in
    /// `input` makes an event (the incomplete rest stays for the next call).
    /// Server `PING`s, `+OK`, later `INFO`s and keep-alive `PONG`s are handled here.
    pub fn next_event<'b>(
        &mut self,
        input: &'b [u8],
    ) -> Result<(Option<Event<'b>>, usize), ClientError> {
        let mut at = 0;
        let payload_max = self.max_payload;
        while let Some((op, n)) = proto::parse(&input[at..], payload_max)? {
            at += n;
            match op {
                ServerOp::Msg {
                    subject,
                    sid,
                    reply_to,
                    headers,
                    payload,
                } => {
                    if !self.subs.contains_key(&sid) {
                        // Unsubscribed: the server sent it before it read the `UNSUB`.
                        continue;
                    }
                    let subject = std::str::from_utf8(subject).map_err(|_| ClientError::NotUtf8)?;
                    let reply = reply_to
                        .map(std::str::from_utf8)
                        .transpose()
                        .map_err(|_| ClientError::NotUtf8)?;
                    let msg = Msg {
                        sid: Sid(sid),
                        subject,
                        reply,
                        headers: headers.map(Headers::new),
                        payload,
                    };
                    return Ok((Some(Event::Msg(msg)), at));
                }
                ServerOp::Pong => {
                    // A keep-alive's PONG, or one nobody waits for, makes no event.
                    if let Some((n, false)) = self.pings.pop_front() {
                        return Ok((Some(Event::Pong(n)), at));
                    }
                }
                ServerOp::Ping => proto::encode_pong(&mut self.out),
                ServerOp::Err(text) => {
                    let text = std::str::from_utf8(text).unwrap_or("(not UTF-8)");
                    return Ok((Some(Event::ServerError(text)), at));
                }
                ServerOp::Info(json) => {
                    // Cluster changes: new servers to reconnect to.
                    if let Ok(info) = ServerInfo::parse(json) {
                        self.max_payload = info.max_payload;
                        if !info.connect_urls.is_empty() {
                            self.announced_urls = Some(info.connect_urls);
                        }
                    }
                }
                ServerOp::Ok => {}
            }
        }
        Ok((None, at))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn client(outbound_bytes_max: usize) -> Client {
        Client::new(ClientOptions {
            name: "t".into(),
            login: Login::None,
            outbound_bytes_max,
            tls: false,
        })
    }

    fn info() -> ServerInfo {
        ServerInfo::parse(br#"{"server_id":"S","max_payload":1024,"headers":true}"#).unwrap()
    }

    fn take(c: &mut Client) -> String {
        let s = String::from_utf8(c.output().to_vec()).unwrap();
        let n = c.output().len();
        c.consume_output(n);
        s
    }

    /// Every event in `input` rendered, and the bytes taken.
    fn events(c: &mut Client, input: &[u8]) -> (Vec<String>, usize) {
        let mut at = 0;
        let mut got = Vec::new();
        loop {
            let (ev, n) = c.next_event(&input[at..]).unwrap();
            at += n;
            match ev {
                Some(Event::Msg(m)) => got.push(format!(
                    "msg {} {} {:?} {:?} {:?}",
                    m.sid.0,
                    m.subject,
                    m.reply,
                    m.status(),
                    String::from_utf8_lossy(m.payload)
                )),
                Some(other) => got.push(format!("{other:?}")),
                None => return (got, at),
            }
        }
    }

    #[test]
    fn reconnect_restores_subscriptions_and_drops_the_unsubscribed() {
        let mut c = client(1 << 16);
        let a = c.subscribe("dev.a").unwrap();
        assert_eq!(take(&mut c), "", "nothing written before a connection");
        assert!(!c.on_connected(&info()));
        assert_eq!(take(&mut c), "SUB dev.a 1\r\n");
        let b = c.subscribe("dev.>").unwrap();
        assert_eq!(take(&mut c), "SUB dev.> 2\r\n");
        c.subscribe("x").unwrap();
        assert!(c.unsubscribe(Sid(3)));
        assert!(!c.unsubscribe(Sid(3)));
        c.on_disconnected();
        assert_eq!(
            c.dropped_on_disconnect_bytes(),
            "SUB x 3\r\nUNSUB 3\r\n".len() as u64
        );
        assert!(c.on_connected(&info()), "a reconnect");
        assert_eq!(take(&mut c), "SUB dev.a 1\r\nSUB dev.> 2\r\n");
        assert_eq!((a, b), (Sid(1), Sid(2)));
        assert_eq!(
            c.subject(b).map(ToString::to_string).as_deref(),
            Some("dev.>")
        );
        assert_eq!(c.subscriptions(), 2);
    }

    #[test]
    fn a_joined_subject_shares_its_tail_and_is_restored_whole() {
        let mut c = client(1 << 16);
        c.on_connected(&info());
        let tail: Arc<str> = Arc::from("dev-1");
        let a = c.subscribe_joined(&"tether.*.", tail.clone()).unwrap();
        assert_eq!(take(&mut c), "SUB tether.*.dev-1 1\r\n");
        assert_eq!(
            Arc::strong_count(&tail),
            2,
            "the table holds the tail, not a copy"
        );
        assert!(c.subscribe_joined(&"bad ", tail.clone()).is_err());
        c.on_disconnected();
        c.on_connected(&info());
        assert_eq!(take(&mut c), "SUB tether.*.dev-1 1\r\n");
        assert!(c.unsubscribe(a));
        assert_eq!(Arc::strong_count(&tail), 1, "UNSUB lets the tail go");
    }

    #[test]
    fn a_message_for_an_ended_subscription_makes_no_event() {
        let mut c = client(1 << 16);
        c.on_connected(&info());
        let a = c.subscribe("a").unwrap();
        c.subscribe("b").unwrap();
        assert!(c.unsubscribe(a));
        let input = b"MSG a 1 1\r\nx\r\nMSG b 2 1\r\ny\r\nMSG c 9 1\r\nz\r\n";
        let (evs, n) = events(&mut c, input);
        assert_eq!(n, input.len(), "read and dropped");
        assert_eq!(evs, ["msg 2 b None None \"y\"".to_string()]);
    }

    #[test]
    fn a_subscription_s_entry_stays_small() {
        // One entry per device on a NATS node: 8-byte sid and the subject in 24 bytes (a shared
        // tail and a thin reference to its static prefix, or a boxed text), no allocation for
        // a joined subject.
        assert_eq!(std::mem::size_of::<SubjectText>(), 24);
        assert_eq!(std::mem::size_of::<(u64, SubjectText)>(), 32);
    }

    #[test]
    fn a_ping_issued_before_a_disconnect_completes_after_the_reconnect_in_order() {
        let mut c = client(1 << 16);
        c.on_connected(&info());
        c.subscribe("a").unwrap();
        let p0 = c.ping();
        let p1 = c.ping();
        assert_eq!(take(&mut c), "SUB a 1\r\nPING\r\nPING\r\n");
        // The first is answered; the second is lost with the connection.
        assert_eq!(events(&mut c, b"PONG\r\n").0, [format!("Pong({p0})")]);
        c.on_disconnected();
        // Issued while disconnected, behind a publish queued while disconnected.
        c.publish("b", None, &[], b"x").unwrap();
        let p2 = c.ping();
        c.on_connected(&info());
        assert_eq!(
            take(&mut c),
            "SUB a 1\r\nPING\r\nPUB b 1\r\nx\r\nPING\r\n",
            "SUBs, then the lost ping, then what was queued while down"
        );
        let (evs, n) = events(&mut c, b"PONG\r\nPONG\r\nPON");
        assert_eq!(evs, [format!("Pong({p1})"), format!("Pong({p2})")]);
        assert_eq!(n, 12, "the incomplete PONG waits");
        // A PONG nobody waits for is ignored.
        assert!(events(&mut c, b"PONG\r\n").0.is_empty());
    }

    #[test]
    fn keepalives_do_not_surface_and_detect_a_stale_connection() {
        let mut c = client(1 << 16);
        c.on_connected(&info());
        assert!(c.keepalive());
        let p = c.ping();
        assert!(!c.keepalive(), "the first keep-alive is unanswered");
        assert_eq!(take(&mut c), "PING\r\nPING\r\n");
        assert_eq!(
            events(&mut c, b"PONG\r\nPONG\r\n").0,
            [format!("Pong({p})")]
        );
        assert!(c.keepalive());
        // A keep-alive of a broken connection is forgotten, not resent.
        c.on_disconnected();
        c.on_connected(&info());
        assert_eq!(take(&mut c), "");
        assert_eq!(c.pings_waiting(), 0);
    }

    #[test]
    fn the_outbound_buffer_is_bounded_for_publishes_only() {
        let mut c = client(200);
        c.on_connected(&info());
        let body = [b'x'; 50];
        let mut sent = 0;
        while c.publish("dev.a", None, &[], &body).is_ok() {
            sent += 1;
        }
        // 66 bytes each on the wire, counted at most 119 (50 + subject + 64 for the line).
        assert_eq!(sent, 2, "a third could pass 200 bytes");
        assert_eq!(c.output().len(), 132);
        assert_eq!(
            c.publish("dev.a", None, &[], &body),
            Err(PublishError::Full)
        );
        c.subscribe("still.allowed").unwrap();
        c.ping();
        let queued = take(&mut c);
        assert!(queued.ends_with("SUB still.allowed 1\r\nPING\r\n"));
        assert!(c.publish("dev.a", None, &[], &body).is_ok(), "room again");
        assert_eq!(
            c.publish("dev.a", None, &[], &[0; 1025]),
            Err(PublishError::TooLarge {
                size: 1025,
                max: 1024
            })
        );
        assert_eq!(
            c.publish("a b", None, &[], b""),
            Err(PublishError::Invalid("subject"))
        );
        assert_eq!(
            c.publish("a", None, &[], &[0; 150]),
            Err(PublishError::TooLarge {
                size: 215,
                max: 200
            }),
            "never fits in 200 bytes"
        );
        assert_eq!(
            c.publish("a", None, &[("K", "a\r\nb")], b""),
            Err(PublishError::Invalid("header"))
        );
        assert!(matches!(c.subscribe(""), Err(ClientError::BadSubject(_))));
    }

    /// Partial writes: the rest stays queued, in order, whatever the cut.
    #[test]
    fn partial_writes_keep_the_rest_in_order() {
        let mut c = client(1 << 16);
        c.on_connected(&info());
        for i in 0..10 {
            c.publish(&format!("s.{i}"), None, &[], b"0123456789")
                .unwrap();
        }
        let whole = c.output().to_vec();
        let mut written = Vec::new();
        for step in [1, 7, 30, 2, 100].iter().cycle() {
            let n = (*step).min(c.output().len());
            written.extend_from_slice(&c.output()[..n]);
            c.consume_output(n);
            if c.output().is_empty() {
                break;
            }
        }
        assert_eq!(written, whole);
    }

    #[test]
    fn server_pings_are_answered_and_no_responders_is_a_status() {
        let mut c = client(1 << 16);
        c.on_connected(&info());
        let inbox = c.subscribe("_INBOX.abc.*").unwrap();
        take(&mut c);
        let input = b"PING\r\n+OK\r\nINFO {\"max_payload\":2048}\r\n\
            HMSG _INBOX.abc.7 1 16 16\r\nNATS/1.0 503\r\n\r\n\r\n\
            MSG dev.a 1 _INBOX.r.1 2\r\nhi\r\n-ERR 'Stale Connection'\r\n";
        let (evs, n) = events(&mut c, input);
        assert_eq!(n, input.len());
        assert_eq!(
            evs,
            [
                "msg 1 _INBOX.abc.7 None Some(503) \"\"".to_string(),
                "msg 1 dev.a Some(\"_INBOX.r.1\") None \"hi\"".into(),
                "ServerError(\"'Stale Connection'\")".into(),
            ]
        );
        assert_eq!(inbox, Sid(1));
        assert_eq!(take(&mut c), "PONG\r\n");
        // The later INFO raised max_payload.
        assert_eq!(c.take_announced_urls(), None);
        assert!(c.publish("a", None, &[], &[0; 2000]).is_ok());
        let (ev, _) = c
            .next_event(b"HMSG _INBOX.abc.7 1 16 16\r\nNATS/1.0 503\r\n\r\n\r\n")
            .unwrap();
        let Some(Event::Msg(m)) = ev else { panic!() };
        assert!(m.is_no_responders());
        assert!(c.next_event(b"BOGUS\r\n").is_err());
    }

    #[test]
    fn nkey_login_signs_the_nonce() {
        let key = nkeys::KeyPair::new_user();
        let public = key.public_key();
        let c = Client::new(ClientOptions {
            name: "node n1".into(),
            login: Login::NKey(key),
            outbound_bytes_max: 1024,
            tls: true,
        });
        let mut info = info();
        let mut out = Vec::new();
        assert!(matches!(
            c.connect_op(&info, None, &mut out),
            Err(ClientError::Sign(_))
        ));
        info.nonce = Some("n0nce".into());
        c.connect_op(&info, None, &mut out).unwrap();
        let line = String::from_utf8(out).unwrap();
        let json: serde_json::Value =
            serde_json::from_str(line.strip_prefix("CONNECT ").unwrap().trim_end()).unwrap();
        assert_eq!(json["nkey"], public.as_str());
        assert_eq!(json["tls_required"], true);
        assert_eq!(json["headers"], true);
        assert_eq!(json["no_responders"], true);
        use base64::Engine as _;
        let sig = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(json["sig"].as_str().unwrap())
            .unwrap();
        let verifier = nkeys::KeyPair::from_public_key(&public).unwrap();
        verifier.verify(b"n0nce", &sig).unwrap();
    }
}
