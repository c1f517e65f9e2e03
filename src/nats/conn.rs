//! The driver: one glommio task per connection, on the executor that spawned it.
//!
//! [`Connection::spawn`] checks the configuration (URLs, credential and certificate files) and
//! starts the task; it connects in the background and keeps trying forever: each attempt takes
//! the next URL of the configured ones (shuffled once per connection, so that a cluster's
//! clients spread) and of those the servers announced (`INFO` `connect_urls`), and failed
//! attempts wait [`super::reconnect_delay`] (100 ms doubling to
//! 5 s, times a random 0.5–1.0). An attempt is TCP, TLS first when `tls_first`, the server's
//! `INFO`, TLS when either side wants it, then `CONNECT` and a `PING` whose `PONG` says the
//! login was accepted (a `-ERR` says why not) within `connect_timeout`.
//!
//! While connected the task writes everything the [`Client`] queued in one write per wake-up
//! (a publish wakes it only when the queue was empty), reads into one buffer (at most the
//! server's `max_payload` plus a control line, grown on demand from
//! [`READ_BUFFER_BYTES_INITIAL`]), and hands each event to the owner's callback with the
//! message borrowed from that buffer. The callback may call back into the [`Connection`]
//! (publish, subscribe). A keep-alive `PING` goes out every `ping_interval`; one still
//! unanswered at the next tick means the connection is stale and it is dropped.
//!
//! Requests share one wildcard subscription, `_INBOX.<22 random characters>.*`; each request
//! has its own last token, and its answer (or the server's "no responders" status) completes
//! it without reaching the callback.

use super::client::{
    Client, ClientError, ClientOptions, Event, Login, Msg, PublishError, ServerInfo, Sid,
};
use super::options::{reconnect_delay, NatsAuth, RequestError};
use super::proto::{self, Headers, ServerOp, CONTROL_LINE_BYTES_MAX};
use super::tls::{self, Stream};
use ahash::AHashMap;
use bytes::Bytes;
use futures_lite::future::{self, poll_fn};
use glommio::net::TcpStream;
use glommio::timer::{sleep, Timer};
use rand::seq::SliceRandom as _;
use rand::Rng as _;
use std::cell::{Cell, RefCell};
use std::future::Future;
use std::rc::Rc;
use std::sync::Arc;
use std::task::{Context, Poll, Waker};
use std::time::Duration;

/// The read buffer's first size; it grows (doubling) only for a message larger than this.
pub(super) const READ_BUFFER_BYTES_INITIAL: usize = 32 * 1024;
/// Reads handled in one poll before the task yields to the shard's other tasks.
const READS_PER_POLL: usize = 16;
/// Most servers remembered from `connect_urls`.
const ANNOUNCED_URLS_MAX: usize = 64;

/// How to reach NATS.
#[derive(Clone, Debug)]
pub struct ConnectConfig {
    /// Server URLs (`nats://host:port`, `tls://host:port`, `host:port`; `user:pass@` or
    /// `token@` before the host are credentials).
    pub urls: Vec<String>,
    /// Credentials and TLS.
    pub auth: NatsAuth,
    /// The connection's name in the server's monitoring.
    pub name: String,
    /// Most bytes queued for the socket before publishes are refused.
    pub outbound_bytes_max: usize,
    /// Time between keep-alive pings (and so the longest a dead peer goes unnoticed, twice).
    pub ping_interval: Duration,
    /// Longest time from TCP connect to an accepted login.
    pub connect_timeout: Duration,
    /// Most requests waiting for an answer at once.
    pub requests_max: usize,
}

impl ConnectConfig {
    /// A configuration with the defaults: 8 MiB of outbound bytes (a shard's burst at 100,000
    /// msg/s of 64 B fits 1 s), a 30 s keep-alive, a 5 s connect timeout, 65,536 requests.
    pub fn new(urls: Vec<String>, name: String) -> ConnectConfig {
        ConnectConfig {
            urls,
            auth: NatsAuth::default(),
            name,
            outbound_bytes_max: 8 << 20,
            ping_interval: Duration::from_secs(30),
            connect_timeout: Duration::from_secs(5),
            requests_max: 65_536,
        }
    }

    /// Checks the URLs and the credential and TLS files without connecting (what
    /// [`Connection::spawn`] checks first), so that a node refuses to start on a typo.
    pub fn check(&self) -> Result<(), ConnectError> {
        if self.urls.is_empty() {
            return Err(ConnectError::NoUrl);
        }
        for url in &self.urls {
            ServerUrl::parse(url)?;
        }
        load_auth(&self.auth).map(|_| ())
    }
}

/// Why the connection cannot be started (the configuration is wrong; nothing was tried).
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    /// No URL given.
    #[error("no NATS URL given")]
    NoUrl,
    /// A URL that does not parse.
    #[error("--nats: {url:?} is not a NATS URL: {why}")]
    BadUrl {
        /// The URL as given.
        url: String,
        /// What is wrong with it.
        why: &'static str,
    },
    /// Credentials that cannot be used (the text names the setting and the file).
    #[error("{0}")]
    Auth(String),
    /// TLS files that cannot be used.
    #[error("{0}")]
    Tls(String),
}

/// Counters of the connection's life.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ConnStats {
    /// Logins accepted (the first connection and every reconnection).
    pub connects: u64,
    /// Logins accepted after the first.
    pub reconnects: u64,
    /// Connections lost after their login.
    pub disconnects: u64,
    /// Attempts that failed before a login was accepted.
    pub failed_attempts: u64,
    /// Servers learnt from `INFO` `connect_urls` (beside the configured ones), reconnect
    /// candidates.
    pub announced_servers: u64,
    /// Whether a connection is up now.
    pub connected: bool,
}

/// A message that outlives the read buffer (a request's answer).
#[derive(Clone, Debug)]
pub struct OwnedMsg {
    /// The subject it was published on.
    pub subject: String,
    /// The header block, as received.
    pub headers: Option<Vec<u8>>,
    /// The body.
    pub payload: Bytes,
}

impl OwnedMsg {
    fn new(msg: &Msg<'_>) -> OwnedMsg {
        OwnedMsg {
            subject: msg.subject.to_owned(),
            headers: msg.headers.map(|h| h.as_bytes().to_vec()),
            payload: Bytes::copy_from_slice(msg.payload),
        }
    }

    /// The headers, read in place.
    pub fn headers(&self) -> Option<Headers<'_>> {
        self.headers.as_deref().map(Headers::new)
    }
}

/// A server address.
#[derive(Clone, Debug)]
struct ServerUrl {
    host: String,
    port: u16,
    tls: bool,
    login: Option<Login>,
}

impl ServerUrl {
    fn parse(url: &str) -> Result<ServerUrl, ConnectError> {
        let bad = |why| ConnectError::BadUrl {
            url: url.to_owned(),
            why,
        };
        let (tls, rest) = match url.split_once("://") {
            None => (false, url),
            Some(("nats", rest)) => (false, rest),
            Some(("tls", rest)) => (true, rest),
            Some(_) => return Err(bad("the scheme must be nats:// or tls://")),
        };
        let rest = rest.trim_end_matches('/');
        let (login, hostport) = match rest.rsplit_once('@') {
            None => (None, rest),
            Some((userinfo, hostport)) => (
                Some(match userinfo.split_once(':') {
                    Some((user, pass)) => Login::UserPassword(user.into(), pass.into()),
                    None => Login::Token(userinfo.into()),
                }),
                hostport,
            ),
        };
        let (host, port) = if let Some(v6) = hostport.strip_prefix('[') {
            let (host, after) = v6.split_once(']').ok_or_else(|| bad("unclosed ["))?;
            (host, after.strip_prefix(':'))
        } else {
            match hostport.rsplit_once(':') {
                Some((host, port)) => (host, Some(port)),
                None => (hostport, None),
            }
        };
        if host.is_empty() || host.contains('/') {
            return Err(bad("no host"));
        }
        let port = match port {
            None => 4222,
            Some(p) => p.parse().map_err(|_| bad("the port is not a number"))?,
        };
        Ok(ServerUrl {
            host: host.to_owned(),
            port,
            tls,
            login,
        })
    }
}

/// The login and TLS settings read from `auth` (files are read now, so that a typo stops the
/// start with the setting's name).
fn load_auth(auth: &NatsAuth) -> Result<(Login, Option<Arc<rustls::ClientConfig>>), ConnectError> {
    let given = [
        auth.user_password.is_some(),
        auth.token.is_some(),
        auth.nkey_seed_file.is_some(),
        auth.creds_file.is_some(),
    ];
    if given.iter().filter(|g| **g).count() > 1 {
        return Err(ConnectError::Auth(
            "give one NATS login: nats_user/nats_password, nats_token, \
             nats_nkey_seed_file or nats_creds_file"
                .into(),
        ));
    }
    let mut login = Login::None;
    if let Some((user, password)) = &auth.user_password {
        login = Login::UserPassword(user.clone(), password.clone());
    }
    if let Some(token) = &auth.token {
        login = Login::Token(token.clone());
    }
    if let Some(path) = &auth.nkey_seed_file {
        let seed = std::fs::read_to_string(path).map_err(|e| {
            ConnectError::Auth(format!("nats_nkey_seed_file {}: {e}", path.display()))
        })?;
        let key = nkeys::KeyPair::from_seed(seed.trim()).map_err(|e| {
            ConnectError::Auth(format!(
                "nats_nkey_seed_file {}: not an NKey seed: {e}",
                path.display()
            ))
        })?;
        login = Login::NKey(key);
    }
    if let Some(path) = &auth.creds_file {
        let text = std::fs::read_to_string(path)
            .map_err(|e| ConnectError::Auth(format!("nats_creds_file {}: {e}", path.display())))?;
        let bad = |why: &str| {
            ConnectError::Auth(format!(
                "nats_creds_file {}: not a NATS credentials file: {why}",
                path.display()
            ))
        };
        let jwt = creds_block(&text, "JWT").ok_or_else(|| bad("no user JWT"))?;
        let seed = creds_block(&text, "SEED").ok_or_else(|| bad("no NKey seed"))?;
        let key = nkeys::KeyPair::from_seed(seed).map_err(|e| bad(&e.to_string()))?;
        login = Login::Creds {
            jwt: jwt.to_owned(),
            key,
        };
    }
    let client_cert = auth
        .tls_client
        .as_ref()
        .map(|(cert, key)| (cert.as_path(), key.as_path()));
    let tls = if auth.tls_ca.is_some() || client_cert.is_some() || auth.tls_first {
        Some(tls::client_config(auth.tls_ca.as_deref(), client_cert).map_err(ConnectError::Tls)?)
    } else {
        None
    };
    Ok((login, tls))
}

/// The first line after a `-----BEGIN ... <kind>...-----` line of a `.creds` file.
fn creds_block<'a>(text: &'a str, kind: &str) -> Option<&'a str> {
    let mut lines = text.lines().map(str::trim);
    lines.find(|l| l.starts_with("-----BEGIN") && l.contains(kind))?;
    lines.find(|l| !l.is_empty())
}

/// Requests waiting for their answer, by token.
struct Requests {
    next_token: u64,
    waiting: AHashMap<u64, RequestState>,
}

enum RequestState {
    Waiting(Option<Waker>),
    Done(Result<OwnedMsg, RequestError>),
}

/// What the handles and the task share (all on one thread).
struct Shared {
    client: RefCell<Client>,
    /// The task's waker: a publish into an empty queue, a close, wakes it.
    waker: RefCell<Option<Waker>>,
    /// `Some(flush timeout)` once closing.
    close: Cell<Option<Duration>>,
    stats: Cell<ConnStats>,
    requests: RefCell<Requests>,
    requests_max: usize,
    /// `_INBOX.<random>.`
    inbox_prefix: String,
    inbox_sid: Sid,
    task: RefCell<Option<glommio::task::JoinHandle<()>>>,
}

impl Shared {
    fn wake(&self) {
        if let Some(waker) = &*self.waker.borrow() {
            waker.wake_by_ref();
        }
    }

    fn register(&self, cx: &Context<'_>) {
        let mut slot = self.waker.borrow_mut();
        if !slot.as_ref().is_some_and(|w| w.will_wake(cx.waker())) {
            *slot = Some(cx.waker().clone());
        }
    }

    fn update_stats(&self, f: impl FnOnce(&mut ConnStats)) {
        let mut stats = self.stats.get();
        f(&mut stats);
        self.stats.set(stats);
    }

    /// An answer on the inbox: completes its request (if it still waits).
    fn answer(&self, msg: &Msg<'_>) {
        let Some(token) = msg
            .subject
            .strip_prefix(&self.inbox_prefix)
            .and_then(|t| t.parse::<u64>().ok())
        else {
            return;
        };
        let mut requests = self.requests.borrow_mut();
        let Some(state) = requests.waiting.get_mut(&token) else {
            return; // timed out already
        };
        let result = if msg.is_no_responders() {
            Err(RequestError::NoResponders)
        } else {
            Ok(OwnedMsg::new(msg))
        };
        if let RequestState::Waiting(Some(waker)) =
            std::mem::replace(state, RequestState::Done(result))
        {
            waker.wake();
        }
    }

    fn fail_requests(&self, why: &str) {
        for state in self.requests.borrow_mut().waiting.values_mut() {
            let failed = RequestState::Done(Err(RequestError::Unavailable(why.to_owned())));
            if let RequestState::Waiting(Some(waker)) = std::mem::replace(state, failed) {
                waker.wake();
            }
        }
    }
}

/// A shard's NATS connection (a handle: clones share it; `!Send`, it lives on the executor that
/// spawned it). The connection ends with [`Connection::close`], or when every handle is gone.
#[derive(Clone)]
pub struct Connection(Rc<Handle>);

struct Handle(Rc<Shared>);

impl Drop for Handle {
    fn drop(&mut self) {
        if self.0.close.get().is_none() {
            self.0.close.set(Some(Duration::ZERO));
            self.0.wake();
        }
    }
}

impl Connection {
    /// Checks `config` and starts the connection task on the current glommio executor; every
    /// event goes to `on_event`, synchronously, on that executor.
    pub fn spawn(
        config: ConnectConfig,
        on_event: impl FnMut(Event<'_>) + 'static,
    ) -> Result<Connection, ConnectError> {
        if config.urls.is_empty() {
            return Err(ConnectError::NoUrl);
        }
        let mut urls = config
            .urls
            .iter()
            .map(|u| ServerUrl::parse(u))
            .collect::<Result<Vec<_>, _>>()?;
        // Each connection starts at a random server, so that a cluster's clients spread.
        urls.shuffle(&mut rand::thread_rng());
        let (login, tls) = load_auth(&config.auth)?;
        let mut client = Client::new(ClientOptions {
            name: config.name.clone(),
            login,
            outbound_bytes_max: config.outbound_bytes_max,
            tls: tls.is_some(),
        });
        let random: String = rand::thread_rng()
            .sample_iter(rand::distributions::Alphanumeric)
            .take(22)
            .map(char::from)
            .collect();
        let inbox_prefix = format!("_INBOX.{random}.");
        let inbox_sid = client
            .subscribe(&format!("{inbox_prefix}*"))
            .expect("the inbox is a valid subject");
        let shared = Rc::new(Shared {
            client: RefCell::new(client),
            waker: RefCell::new(None),
            close: Cell::new(None),
            stats: Cell::new(ConnStats::default()),
            requests: RefCell::new(Requests {
                next_token: 0,
                waiting: AHashMap::new(),
            }),
            requests_max: config.requests_max,
            inbox_prefix,
            inbox_sid,
            task: RefCell::new(None),
        });
        let driver = Driver {
            shared: shared.clone(),
            urls,
            announced: RefCell::new(Vec::new()),
            tls,
            tls_first: config.auth.tls_first,
            ping_interval: config.ping_interval,
            connect_timeout: config.connect_timeout,
        };
        let task = glommio::spawn_local(driver.run(Box::new(on_event))).detach();
        *shared.task.borrow_mut() = Some(task);
        Ok(Connection(Rc::new(Handle(shared))))
    }

    fn shared(&self) -> &Shared {
        &self.0 .0
    }

    /// Subscribes (now if connected, and after every reconnect).
    pub fn subscribe(&self, subject: &str) -> Result<Sid, ClientError> {
        let shared = self.shared();
        let sid = shared.client.borrow_mut().subscribe(subject)?;
        shared.wake();
        Ok(sid)
    }

    /// Subscribes to `prefix` followed by `tail`, sharing `tail` (see [`Client::subscribe_joined`]).
    pub fn subscribe_joined(
        &self,
        prefix: &'static &'static str,
        tail: std::sync::Arc<str>,
    ) -> Result<Sid, ClientError> {
        let shared = self.shared();
        let sid = shared.client.borrow_mut().subscribe_joined(prefix, tail)?;
        shared.wake();
        Ok(sid)
    }

    /// Ends a subscription (`false`: it was not live). Messages already on their way with its
    /// sid are dropped when they arrive: no event is handed out for it after this call.
    pub fn unsubscribe(&self, sid: Sid) -> bool {
        let shared = self.shared();
        let live = shared.client.borrow_mut().unsubscribe(sid);
        shared.wake();
        live
    }

    /// Queues a message (see [`Client::publish`]); the task writes it on its next turn.
    pub fn publish(
        &self,
        subject: &str,
        reply: Option<&str>,
        headers: &[(&str, &str)],
        payload: &[u8],
    ) -> Result<(), PublishError> {
        let shared = self.shared();
        let mut client = shared.client.borrow_mut();
        let was_idle = client.output().is_empty();
        client.publish(subject, reply, headers, payload)?;
        drop(client);
        if was_idle {
            shared.wake();
        }
        Ok(())
    }

    /// A round-trip marker: [`Event::Pong`] with this number comes back once the server has
    /// handled everything queued before (every earlier `SUB` is in effect on it).
    pub fn ping(&self) -> u64 {
        let shared = self.shared();
        let n = shared.client.borrow_mut().ping();
        shared.wake();
        n
    }

    /// Publishes with a reply subject on the connection's inbox and waits at most `timeout` for
    /// the first answer.
    pub fn request(
        &self,
        subject: &str,
        headers: &[(&str, &str)],
        payload: &[u8],
        timeout: Duration,
    ) -> impl Future<Output = Result<OwnedMsg, RequestError>> + 'static {
        let shared = self.0 .0.clone();
        let token = self.start_request(subject, headers, payload);
        async move {
            let token = token?;
            let guard = RequestGuard {
                shared: shared.clone(),
                token,
            };
            let answer = poll_fn(|cx| {
                let mut requests = guard.shared.requests.borrow_mut();
                let Some(state) = requests.waiting.get_mut(&guard.token) else {
                    return Poll::Ready(Err(RequestError::Unavailable("request lost".into())));
                };
                match state {
                    RequestState::Done(_) => {
                        let Some(RequestState::Done(result)) =
                            requests.waiting.remove(&guard.token)
                        else {
                            unreachable!("checked just above")
                        };
                        Poll::Ready(result)
                    }
                    RequestState::Waiting(waker) => {
                        *waker = Some(cx.waker().clone());
                        Poll::Pending
                    }
                }
            });
            future::or(answer, async {
                sleep(timeout).await;
                Err(RequestError::Timeout)
            })
            .await
        }
    }

    fn start_request(
        &self,
        subject: &str,
        headers: &[(&str, &str)],
        payload: &[u8],
    ) -> Result<u64, RequestError> {
        let shared = self.shared();
        if shared.close.get().is_some() {
            return Err(RequestError::Unavailable(
                "the NATS connection is closed".into(),
            ));
        }
        let mut requests = shared.requests.borrow_mut();
        if requests.waiting.len() >= shared.requests_max {
            return Err(RequestError::Unavailable(format!(
                "{} NATS requests wait already",
                shared.requests_max
            )));
        }
        let token = requests.next_token;
        requests.next_token += 1;
        let reply = format!("{}{token}", shared.inbox_prefix);
        self.publish(subject, Some(&reply), headers, payload)
            .map_err(|e| RequestError::Unavailable(e.to_string()))?;
        requests.waiting.insert(token, RequestState::Waiting(None));
        Ok(token)
    }

    /// Whether a connection is up.
    pub fn is_connected(&self) -> bool {
        self.shared().stats.get().connected
    }

    /// The connection's counters.
    pub fn stats(&self) -> ConnStats {
        self.shared().stats.get()
    }

    /// Bytes queued and not written yet.
    pub fn queued_bytes(&self) -> usize {
        self.shared().client.borrow().output().len()
    }

    /// Ends the connection: writes what is queued for at most `flush_timeout` (if connected),
    /// then closes the socket and stops the task. Waiting requests fail.
    pub async fn close(self, flush_timeout: Duration) {
        let shared = self.0 .0.clone();
        shared.close.set(Some(flush_timeout));
        shared.wake();
        let task = shared.task.borrow_mut().take();
        if let Some(task) = task {
            task.await;
        }
    }
}

/// Removes a request's entry when its future ends or is dropped.
struct RequestGuard {
    shared: Rc<Shared>,
    token: u64,
}

impl Drop for RequestGuard {
    fn drop(&mut self) {
        self.shared
            .requests
            .borrow_mut()
            .waiting
            .remove(&self.token);
    }
}

/// The end of a connection closed on purpose: everything queued, then our FIN, then whatever
/// the server still sends, read and dropped until its own FIN. A socket closed with unread bytes
/// sends a reset, and a server that gets the reset before it has read our last bytes loses them
/// (a drain's `disconnect` events). The caller bounds the time.
async fn linger(shared: &Shared, stream: &mut Stream) {
    poll_fn(|cx| {
        let mut client = shared.client.borrow_mut();
        while !client.output().is_empty() {
            match stream.poll_write(cx, client.output()) {
                Poll::Ready(Ok(n)) if n > 0 => client.consume_output(n),
                Poll::Ready(_) => return Poll::Ready(()),
                Poll::Pending => return Poll::Pending,
            }
        }
        stream.poll_flush(cx).map(|_| ())
    })
    .await;
    if stream.shutdown_write().await.is_ok() {
        let mut sink = [0u8; 4096];
        while let Ok(n) = poll_fn(|cx| stream.poll_read(cx, &mut sink)).await {
            if n == 0 {
                break;
            }
        }
    }
}

/// How a connected session ended.
enum End {
    Close(Duration),
    Broken(String),
}

/// Bytes read and not yet parsed: `buf[start..end]`.
struct ReadBuf {
    buf: Vec<u8>,
    start: usize,
    end: usize,
    max: usize,
}

impl ReadBuf {
    fn data(&self) -> &[u8] {
        &self.buf[self.start..self.end]
    }

    fn consume(&mut self, n: usize) {
        self.start += n;
        debug_assert!(self.start <= self.end);
        if self.start == self.end {
            self.start = 0;
            self.end = 0;
        }
    }

    /// Room to read into: moves the unparsed rest to the front, or grows (up to `max`).
    fn room(&mut self) -> Result<&mut [u8], String> {
        if self.end == self.buf.len() {
            if self.start > 0 {
                self.buf.copy_within(self.start..self.end, 0);
                self.end -= self.start;
                self.start = 0;
            } else if self.buf.len() < self.max {
                let len = (self.buf.len() * 2).clamp(READ_BUFFER_BYTES_INITIAL, self.max);
                self.buf.resize(len, 0);
            } else {
                return Err(format!("an operation longer than {} bytes", self.max));
            }
        }
        Ok(&mut self.buf[self.end..])
    }
}

type OnEvent = Box<dyn FnMut(Event<'_>)>;

struct Driver {
    shared: Rc<Shared>,
    urls: Vec<ServerUrl>,
    /// Servers announced in `connect_urls` (grows at most to [`ANNOUNCED_URLS_MAX`]).
    announced: RefCell<Vec<ServerUrl>>,
    tls: Option<Arc<rustls::ClientConfig>>,
    tls_first: bool,
    ping_interval: Duration,
    connect_timeout: Duration,
}

/// Waits until the connection is told to close; the flush timeout.
async fn closing(shared: &Shared) -> Duration {
    poll_fn(|cx| match shared.close.get() {
        Some(t) => Poll::Ready(t),
        None => {
            shared.register(cx);
            Poll::Pending
        }
    })
    .await
}

impl Driver {
    async fn run(self, mut on_event: OnEvent) {
        let shared = self.shared.clone();
        let mut attempt = 0usize;
        let mut failures = 0usize;
        let mut rb = ReadBuf {
            buf: Vec::new(),
            start: 0,
            end: 0,
            max: READ_BUFFER_BYTES_INITIAL,
        };
        while shared.close.get().is_none() {
            let url = self.pick(attempt);
            attempt += 1;
            let connected = future::or(
                async {
                    let timeout = sleep(self.connect_timeout);
                    future::or(self.connect(&url), async {
                        timeout.await;
                        Err("no login within the connect timeout".into())
                    })
                    .await
                    .map(Some)
                },
                async {
                    closing(&shared).await;
                    Ok(None)
                },
            )
            .await;
            match connected {
                Ok(None) => break,
                Err(why) => {
                    shared.update_stats(|s| s.failed_attempts += 1);
                    if failures == 0 {
                        tracing::warn!(host = %url.host, port = url.port, %why, "NATS connection attempt failed; retrying with backoff");
                    } else {
                        tracing::debug!(host = %url.host, port = url.port, %why, "NATS connection attempt failed");
                    }
                }
                Ok(Some((mut stream, info, leftover))) => {
                    failures = 0;
                    self.learn(&info.connect_urls);
                    rb.max = info.max_payload + CONTROL_LINE_BYTES_MAX + 2;
                    rb.start = 0;
                    rb.end = 0;
                    rb.buf.clear();
                    rb.buf
                        .resize(READ_BUFFER_BYTES_INITIAL.max(leftover.len()), 0);
                    rb.buf[..leftover.len()].copy_from_slice(&leftover);
                    rb.end = leftover.len();
                    let reconnect = shared.client.borrow_mut().on_connected(&info);
                    shared.update_stats(|s| {
                        s.connects += 1;
                        s.reconnects += u64::from(reconnect);
                        s.connected = true;
                    });
                    tracing::info!(host = %url.host, port = url.port, server = %info.server_id, reconnect, "NATS connected");
                    on_event(Event::Connected { reconnect });
                    let end = self.session(&mut stream, &mut rb, &mut on_event).await;
                    match end {
                        End::Close(flush_timeout) => {
                            future::or(linger(&shared, &mut stream), sleep(flush_timeout)).await;
                            shared.update_stats(|s| s.connected = false);
                            break;
                        }
                        End::Broken(why) => {
                            shared.client.borrow_mut().on_disconnected();
                            shared.update_stats(|s| {
                                s.disconnects += 1;
                                s.connected = false;
                            });
                            tracing::warn!(host = %url.host, port = url.port, %why, "NATS disconnected; reconnecting with backoff");
                            on_event(Event::Disconnected);
                        }
                    }
                }
            }
            let delay = reconnect_delay(failures);
            failures += 1;
            future::or(sleep(delay), async {
                closing(&shared).await;
            })
            .await;
        }
        shared.fail_requests("the NATS connection is closed");
    }

    /// The URL of attempt `n`: the configured ones, then the announced ones, in turn.
    fn pick(&self, n: usize) -> ServerUrl {
        let announced = self.announced.borrow();
        let i = n % (self.urls.len() + announced.len());
        if i < self.urls.len() {
            self.urls[i].clone()
        } else {
            announced[i - self.urls.len()].clone()
        }
    }

    /// Remembers servers of the cluster (`host:port`) not configured already.
    fn learn(&self, urls: &[String]) {
        let tls = self.urls.iter().any(|u| u.tls);
        let mut announced = self.announced.borrow_mut();
        for url in urls {
            let Ok(mut url) = ServerUrl::parse(url) else {
                continue;
            };
            url.tls |= tls;
            // Credentials given in a configured URL go to the cluster's other servers too.
            if url.login.is_none() {
                url.login = self.urls.iter().find_map(|u| u.login.clone());
            }
            let known = self
                .urls
                .iter()
                .chain(announced.iter())
                .any(|u| u.host == url.host && u.port == url.port);
            if !known && announced.len() < ANNOUNCED_URLS_MAX {
                announced.push(url);
            }
        }
        let count = announced.len() as u64;
        self.shared.update_stats(|s| s.announced_servers = count);
    }

    /// One attempt: TCP, TLS, `INFO`, `CONNECT` + `PING`, `PONG`. Returns the stream, the
    /// server's `INFO` and bytes read after the `PONG`.
    async fn connect(&self, url: &ServerUrl) -> Result<(Stream, ServerInfo, Vec<u8>), String> {
        let tcp = TcpStream::connect((url.host.as_str(), url.port))
            .await
            .map_err(|e| format!("TCP connect: {e}"))?;
        let _ = tcp.set_nodelay(true);
        let want_tls = url.tls || self.tls.is_some();
        let tls_config = || match &self.tls {
            Some(config) => Ok(config.clone()),
            None => tls::client_config(None, None),
        };
        let mut stream = if self.tls_first {
            Stream::tls(tcp, tls_config()?, &url.host)?
        } else {
            Stream::Plain(tcp)
        };
        let mut buf = Vec::new();
        let info = loop {
            if let Some((op, n)) = proto::parse(&buf, 0).map_err(|e| format!("before INFO: {e}"))? {
                let ServerOp::Info(json) = op else {
                    return Err("the server did not start with INFO".into());
                };
                let info = ServerInfo::parse(json).map_err(|e| e.to_string())?;
                buf.drain(..n);
                break info;
            }
            read_more(&mut stream, &mut buf).await?;
        };
        if !self.tls_first && (want_tls || info.tls_required) {
            if !(info.tls_required || info.tls_available) {
                return Err("TLS is configured and the server does not offer it".into());
            }
            let tcp = stream.into_tcp().expect("plain before the upgrade");
            stream = Stream::tls(tcp, tls_config()?, &url.host)?;
        }
        let mut login = Vec::new();
        // Credentials in the URL (`nats://user:pass@host`) take the place of the options'.
        self.shared
            .client
            .borrow()
            .connect_op(&info, url.login.as_ref(), &mut login)
            .map_err(|e| e.to_string())?;
        proto::encode_ping(&mut login);
        write_all(&mut stream, &login).await?;
        let mut answers = Vec::new();
        loop {
            while let Some((op, n)) =
                proto::parse(&buf, info.max_payload).map_err(|e| format!("login: {e}"))?
            {
                match op {
                    ServerOp::Pong => {
                        buf.drain(..n);
                        write_all(&mut stream, &answers).await?;
                        return Ok((stream, info, buf));
                    }
                    ServerOp::Err(text) => {
                        return Err(format!(
                            "the server refused the login: {}",
                            String::from_utf8_lossy(text)
                        ))
                    }
                    ServerOp::Ping => proto::encode_pong(&mut answers),
                    _ => {}
                }
                buf.drain(..n);
            }
            read_more(&mut stream, &mut buf).await?;
        }
    }

    /// The connected session: writes what is queued, reads and hands out events, sends
    /// keep-alives; returns when closing or broken.
    async fn session(&self, stream: &mut Stream, rb: &mut ReadBuf, on_event: &mut OnEvent) -> End {
        let shared = &*self.shared;
        let mut keepalive = Timer::new(self.ping_interval);
        poll_fn(|cx| {
            shared.register(cx);
            if let Some(flush_timeout) = shared.close.get() {
                return Poll::Ready(End::Close(flush_timeout));
            }
            while Future::poll(std::pin::Pin::new(&mut keepalive), cx).is_ready() {
                if !shared.client.borrow_mut().keepalive() {
                    return Poll::Ready(End::Broken(format!(
                        "stale: no PONG within {:?}",
                        self.ping_interval
                    )));
                }
                keepalive = Timer::new(self.ping_interval);
            }
            for _ in 0..READS_PER_POLL {
                if let Err(why) = write_queued(shared, stream, cx) {
                    return Poll::Ready(End::Broken(why));
                }
                let room = match rb.room() {
                    Ok(room) => room,
                    Err(why) => return Poll::Ready(End::Broken(why)),
                };
                match stream.poll_read(cx, room) {
                    Poll::Pending => return Poll::Pending,
                    Poll::Ready(Ok(0)) => {
                        return Poll::Ready(End::Broken("the server closed the connection".into()))
                    }
                    Poll::Ready(Err(e)) => return Poll::Ready(End::Broken(format!("read: {e}"))),
                    Poll::Ready(Ok(n)) => rb.end += n,
                }
                if let Err(why) = self.dispatch(rb, on_event) {
                    return Poll::Ready(End::Broken(why));
                }
            }
            if let Err(why) = write_queued(shared, stream, cx) {
                return Poll::Ready(End::Broken(why));
            }
            // More to read, probably: let the shard's other tasks run first.
            cx.waker().wake_by_ref();
            Poll::Pending
        })
        .await
    }

    /// Hands every complete event in the read buffer out.
    fn dispatch(&self, rb: &mut ReadBuf, on_event: &mut OnEvent) -> Result<(), String> {
        let shared = &*self.shared;
        let data = rb.data();
        let mut at = 0;
        let result = loop {
            let next = shared.client.borrow_mut().next_event(&data[at..]);
            let (event, n) = match next {
                Ok(next) => next,
                Err(e) => break Err(e.to_string()),
            };
            at += n;
            match event {
                None => break Ok(()),
                Some(Event::Msg(msg)) if msg.sid == shared.inbox_sid => shared.answer(&msg),
                Some(Event::ServerError(text)) => {
                    tracing::warn!(error = text, "NATS server error");
                    on_event(Event::ServerError(text));
                }
                Some(event) => on_event(event),
            }
        };
        rb.consume(at);
        let announced = shared.client.borrow_mut().take_announced_urls();
        if let Some(urls) = announced {
            self.learn(&urls);
        }
        result
    }
}

/// Writes what the client queued until the socket takes no more.
fn write_queued(shared: &Shared, stream: &mut Stream, cx: &mut Context<'_>) -> Result<(), String> {
    let mut client = shared.client.borrow_mut();
    while !client.output().is_empty() {
        match stream.poll_write(cx, client.output()) {
            Poll::Ready(Ok(0)) => return Err("the socket takes no more bytes".into()),
            Poll::Ready(Ok(n)) => client.consume_output(n),
            Poll::Ready(Err(e)) => return Err(format!("write: {e}")),
            Poll::Pending => return Ok(()),
        }
    }
    match stream.poll_flush(cx) {
        Poll::Ready(Err(e)) => Err(format!("write: {e}")),
        _ => Ok(()),
    }
}

async fn read_more(stream: &mut Stream, buf: &mut Vec<u8>) -> Result<(), String> {
    if buf.len() > CONTROL_LINE_BYTES_MAX + 2 {
        return Err("the server's first operations are too long".into());
    }
    let mut chunk = [0u8; 4096];
    let n = poll_fn(|cx| stream.poll_read(cx, &mut chunk))
        .await
        .map_err(|e| format!("read: {e}"))?;
    if n == 0 {
        return Err("the server closed the connection".into());
    }
    buf.extend_from_slice(&chunk[..n]);
    Ok(())
}

async fn write_all(stream: &mut Stream, mut data: &[u8]) -> Result<(), String> {
    while !data.is_empty() {
        let n = poll_fn(|cx| stream.poll_write(cx, data))
            .await
            .map_err(|e| format!("write: {e}"))?;
        if n == 0 {
            return Err("the socket takes no more bytes".into());
        }
        data = &data[n..];
    }
    poll_fn(|cx| stream.poll_flush(cx))
        .await
        .map_err(|e| format!("write: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls() {
        let u = ServerUrl::parse("nats://127.0.0.1:4223").unwrap();
        assert_eq!((u.host.as_str(), u.port, u.tls), ("127.0.0.1", 4223, false));
        let u = ServerUrl::parse("tls://nats.example.com").unwrap();
        assert_eq!(
            (u.host.as_str(), u.port, u.tls),
            ("nats.example.com", 4222, true)
        );
        let u = ServerUrl::parse("localhost:5000").unwrap();
        assert_eq!((u.host.as_str(), u.port), ("localhost", 5000));
        let u = ServerUrl::parse("nats://[::1]:4222").unwrap();
        assert_eq!(u.host, "::1");
        let u = ServerUrl::parse("nats://u:p@h:1").unwrap();
        assert!(matches!(u.login, Some(Login::UserPassword(ref u, ref p)) if u == "u" && p == "p"));
        let u = ServerUrl::parse("nats://s3cr3t@h").unwrap();
        assert!(matches!(u.login, Some(Login::Token(ref t)) if t == "s3cr3t"));
        for bad in ["http://h:1", "nats://:1", "nats://h:x", "nats://"] {
            assert!(ServerUrl::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn creds_file_blocks() {
        let text = "-----BEGIN NATS USER JWT-----\neyJ0.abc.def\n------END NATS USER JWT------\n\n\
            ************************* IMPORTANT *************************\n\n\
            -----BEGIN USER NKEY SEED-----\nSUAXXX\n------END USER NKEY SEED------\n";
        assert_eq!(creds_block(text, "JWT"), Some("eyJ0.abc.def"));
        assert_eq!(creds_block(text, "SEED"), Some("SUAXXX"));
        assert_eq!(creds_block("nothing", "JWT"), None);
    }
}
