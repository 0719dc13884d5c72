//! [`CloudConnection`]: the seed's API over a background driver task.

use std::collections::HashMap;
use std::future::Future;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use futures_util::stream::BoxStream;
use futures_util::{SinkExt, StreamExt};
use nimbus_proto::cloud::{
    normalize_name, parse_server_line, split_frame, validate_name, CloseCode, CloudValue,
    ServerMessage, ValueProfile,
};
use tokio::sync::{mpsc, watch};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::header::USER_AGENT;
use tokio_tungstenite::tungstenite::Message;

use crate::event::{CloudVariable, Emitter, Event, EventKind, ListenerId};
use crate::pacing::{Backoff, Pacer};
use crate::CloudError;

/// The default User-Agent: says what the client is.
pub const DEFAULT_USER_AGENT: &str = concat!(
    "nimbus-client/",
    env!("CARGO_PKG_VERSION"),
    " (Rust; +https://example.invalid/nimbus)"
);

/// Rules of a cloud host: how fast we may send, which values it accepts.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct HostProfile {
    /// Value rules.
    pub values: ValueProfile,
    /// Maximum value length in characters.
    pub max_value_len: usize,
    /// Sends per second (sets, creates and deletes).
    pub sends_per_second: f64,
}

impl HostProfile {
    /// scratch.mit.edu: digits only, ≤ 256 characters, 10 sends/s (the Scratch GUI's 100 ms throttle).
    pub const SCRATCH: HostProfile = HostProfile {
        values: ValueProfile::Scratch,
        max_value_len: 256,
        sends_per_second: 10.0,
    };
    /// TurboWarp / nimbus: decimal numbers, ≤ 100000 characters, 20 sends/s (TurboWarp's 50 ms throttle).
    pub const TURBOWARP: HostProfile = HostProfile {
        values: ValueProfile::TurboWarp,
        max_value_len: 100_000,
        sends_per_second: 20.0,
    };
}

/// Builds a [`CloudConnection`].
#[derive(Debug, Clone)]
pub struct CloudConnectionBuilder {
    project_id: String,
    cloud_host: String,
    username: String,
    profile: HostProfile,
    user_agent: String,
    reconnect: bool,
    backoff: Backoff,
    max_message_bytes: usize,
}

impl CloudConnectionBuilder {
    /// Server URL: `ws://host:port[/path]`, `wss://…`, or a bare host (meaning `wss://host`).
    /// Default: `wss://clouddata.scratch.mit.edu`.
    pub fn cloud_host(mut self, host: impl Into<String>) -> Self {
        self.cloud_host = host.into();
        self
    }
    /// Username sent in the handshake (default `player` + random digits).
    pub fn username(mut self, user: impl Into<String>) -> Self {
        self.username = user.into();
        self
    }
    /// Value rules and send rate (default [`HostProfile::SCRATCH`]).
    pub fn profile(mut self, profile: HostProfile) -> Self {
        self.profile = profile;
        self
    }
    /// Override the send rate (sends per second; 0 disables pacing).
    pub fn rate_limit(mut self, per_second: f64) -> Self {
        self.profile.sends_per_second = per_second;
        self
    }
    /// User-Agent header (default [`DEFAULT_USER_AGENT`]).
    pub fn user_agent(mut self, ua: impl Into<String>) -> Self {
        self.user_agent = ua.into();
        self
    }
    /// Reconnect after a drop (default on).
    pub fn reconnect(mut self, on: bool) -> Self {
        self.reconnect = on;
        self
    }
    /// Reconnect backoff (default 1 s base, 30 s cap, full jitter).
    pub fn backoff(mut self, backoff: Backoff) -> Self {
        self.backoff = backoff;
        self
    }
    /// The longest message taken from the server, bytes (default
    /// [`nimbus_proto::CLIENT_MAX_MESSAGE`], 32 MiB). A longer one ends the connection (a
    /// `disconnect` event; then a reconnect, if on).
    pub fn max_message_bytes(mut self, bytes: usize) -> Self {
        self.max_message_bytes = bytes;
        self
    }

    /// Check the URL and build the (not yet connected) connection.
    pub fn build(self) -> Result<CloudConnection, CloudError> {
        let url = parse_host(&self.cloud_host)?;
        Ok(CloudConnection {
            inner: Arc::new(Inner {
                pacer: Pacer::new(self.profile.sends_per_second),
                url,
                cfg: self,
                vars: Mutex::new(HashMap::new()),
                emitter: Emitter::new(),
                link: Mutex::new(None),
                state: watch::channel(State::Idle).0,
            }),
        })
    }
}

fn parse_host(host: &str) -> Result<String, CloudError> {
    let bad = |reason: &str| CloudError::BadUrl {
        host: host.to_owned(),
        reason: reason.to_owned(),
    };
    let full = if host.contains("://") {
        host.to_owned()
    } else {
        format!("wss://{host}")
    };
    let url = url::Url::parse(&full).map_err(|e| bad(&e.to_string()))?;
    match url.scheme() {
        "ws" | "wss" => {}
        other => return Err(bad(&format!("scheme {other:?} is not ws or wss"))),
    }
    if url.host_str().is_none_or(str::is_empty) {
        return Err(bad("no host"));
    }
    Ok(url.to_string())
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum State {
    Idle,
    Connected,
    Reconnecting,
    /// Ended: `None` after `close()`, else the reason.
    Ended(Option<String>, Option<u16>),
}

enum Out {
    Text(String),
    Close,
}

struct Inner {
    cfg: CloudConnectionBuilder,
    url: String,
    pacer: Pacer,
    vars: Mutex<HashMap<String, CloudValue>>,
    emitter: Emitter,
    /// Sender to the live socket's writer, while connected.
    link: Mutex<Option<mpsc::UnboundedSender<Out>>>,
    state: watch::Sender<State>,
}

impl Inner {
    fn vars(&self) -> MutexGuard<'_, HashMap<String, CloudValue>> {
        self.vars.lock().unwrap_or_else(PoisonError::into_inner)
    }
    fn link(&self) -> MutexGuard<'_, Option<mpsc::UnboundedSender<Out>>> {
        self.link.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// A connection to a cloud-variable server (Scratch, TurboWarp, nimbus), mirroring
/// the Python `CloudConnection`. Cheap to clone; clones share the connection.
///
/// ```no_run
/// use nimbus_client::{CloudConnection, Event};
///
/// # async fn demo() -> Result<(), nimbus_client::CloudError> {
/// let conn = CloudConnection::builder("193290310931")
///     .cloud_host("ws://127.0.0.1:9080")
///     .username("player1234")
///     .build()?;
/// conn.on("set", |ev: &Event| {
///     if let Some(v) = ev.variable() {
///         println!("{} = {}", v.name, v.value);
///     }
/// })?;
/// conn.connect().await?;
/// conn.set_cloud_variable("High score", 102930921).await?;
/// assert_eq!(conn.get_cloud_variable("High score").unwrap().to_string(), "102930921");
/// conn.close().await;
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct CloudConnection {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for CloudConnection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CloudConnection")
            .field("project_id", &self.inner.cfg.project_id)
            .field("cloud_host", &self.inner.url)
            .finish_non_exhaustive()
    }
}

impl CloudConnection {
    /// Start building a connection to `project_id`'s room.
    pub fn builder(project_id: impl ToString) -> CloudConnectionBuilder {
        CloudConnectionBuilder {
            project_id: project_id.to_string(),
            cloud_host: "wss://clouddata.scratch.mit.edu".into(),
            username: format!("player{}", rand::random_range(1000..10_000_000u32)),
            profile: HostProfile::SCRATCH,
            user_agent: DEFAULT_USER_AGENT.into(),
            reconnect: true,
            backoff: Backoff::default(),
            max_message_bytes: nimbus_proto::CLIENT_MAX_MESSAGE,
        }
    }

    /// The project (room) id.
    pub fn project_id(&self) -> &str {
        &self.inner.cfg.project_id
    }

    /// The server URL.
    pub fn cloud_host(&self) -> &str {
        &self.inner.url
    }

    /// Connect, handshake, and keep the connection (reading, reconnecting) in the
    /// background. Returns once the handshake was sent. The first attempt's failure
    /// is returned; later drops are retried with backoff (unless fatal).
    pub async fn connect(&self) -> Result<(), CloudError> {
        let mut state = self.inner.state.subscribe();
        if *state.borrow() == State::Connected {
            return Ok(());
        }
        let ws = open(&self.inner).await?;
        let inner = self.inner.clone();
        tokio::spawn(drive(inner, ws));
        // Wait until the driver reports connected (it sends the handshake first).
        loop {
            match &*state.borrow_and_update() {
                State::Connected => return Ok(()),
                State::Ended(reason, code) => return Err(ended_error(reason, *code)),
                _ => {}
            }
            if state.changed().await.is_err() {
                return Err(CloudError::Closed);
            }
        }
    }

    /// Connect and stay connected until [`CloudConnection::close`] (returns `Ok`) or a fatal
    /// close or a failed reconnect sequence (returns the error).
    pub async fn run(&self) -> Result<(), CloudError> {
        self.connect().await?;
        let mut state = self.inner.state.subscribe();
        loop {
            if let State::Ended(reason, code) = &*state.borrow_and_update() {
                return match reason {
                    None => Ok(()),
                    Some(_) => Err(ended_error(reason, *code)),
                };
            }
            if state.changed().await.is_err() {
                return Ok(());
            }
        }
    }

    /// Close the connection (pending sends are written first) and stop reconnecting.
    pub async fn close(&self) {
        let link = self.inner.link().take();
        match link {
            Some(tx) => {
                let _ = tx.send(Out::Close);
                let mut state = self.inner.state.subscribe();
                while !matches!(*state.borrow_and_update(), State::Ended(..)) {
                    if state.changed().await.is_err() {
                        break;
                    }
                }
            }
            None => {
                self.inner.state.send_replace(State::Ended(None, None));
            }
        }
    }

    /// The last known value of a variable (from the server, or our own sets).
    /// The name may be given with or without the cloud prefix.
    pub fn get_cloud_variable(&self, name: &str) -> Option<CloudValue> {
        self.inner.vars().get(&normalize_name(name)).cloned()
    }

    /// All known variables (full names).
    pub fn variables(&self) -> HashMap<String, CloudValue> {
        self.inner.vars().clone()
    }

    /// Set a variable. Waits for the rate limit's next slot; fails if the name or the
    /// value is refused by the profile, or if not connected.
    pub async fn set_cloud_variable(
        &self,
        name: &str,
        value: impl Into<CloudValue>,
    ) -> Result<(), CloudError> {
        self.send_value("set", name, value.into()).await
    }

    /// Create a variable (sends `create`; servers treat it like `set`).
    pub async fn create_cloud_variable(
        &self,
        name: &str,
        initial_value: impl Into<CloudValue>,
    ) -> Result<(), CloudError> {
        self.send_value("create", name, initial_value.into()).await
    }

    /// Delete a variable (sends `delete`; most servers ignore it and never broadcast it).
    pub async fn delete_cloud_variable(&self, name: &str) -> Result<(), CloudError> {
        let name = checked_name(name)?;
        let line = format!(
            "{{\"method\":\"delete\",\"name\":{},\"user\":{},\"project_id\":{}}}",
            json(&name),
            json(&self.inner.cfg.username),
            json(&self.inner.cfg.project_id)
        );
        self.inner
            .pacer
            .run(|| {
                self.queue(line)?;
                self.inner.vars().remove(&name);
                Ok::<_, CloudError>(())
            })
            .await?;
        self.inner.emitter.emit(Event::Delete(name));
        Ok(())
    }

    async fn send_value(
        &self,
        method: &str,
        name: &str,
        value: CloudValue,
    ) -> Result<(), CloudError> {
        let name = checked_name(name)?;
        let p = self.inner.cfg.profile;
        value.validate(p.values, p.max_value_len)?;
        let line = format!(
            "{{\"method\":\"{method}\",\"name\":{},\"value\":{},\"user\":{},\"project_id\":{}}}",
            json(&name),
            value.to_json(),
            json(&self.inner.cfg.username),
            json(&self.inner.cfg.project_id)
        );
        let is_new = self
            .inner
            .pacer
            .run(|| {
                self.queue(line)?;
                Ok::<_, CloudError>(
                    self.inner
                        .vars()
                        .insert(name.clone(), value.clone())
                        .is_none(),
                )
            })
            .await?;
        let var = CloudVariable {
            name,
            value,
            by_us: true,
        };
        if is_new || method == "create" {
            self.inner.emitter.emit(Event::Create(var.clone()));
        }
        self.inner.emitter.emit(Event::Change(var));
        Ok(())
    }

    fn queue(&self, line: String) -> Result<(), CloudError> {
        match &*self.inner.link() {
            Some(tx) => tx
                .send(Out::Text(line))
                .map_err(|_| CloudError::NotConnected),
            None => Err(CloudError::NotConnected),
        }
    }

    /// Call `callback` on every event of kind `key` (`"set"`, `"change"`, ...).
    pub fn on(
        &self,
        key: &str,
        callback: impl Fn(&Event) + Send + Sync + 'static,
    ) -> Result<ListenerId, CloudError> {
        Ok(self.inner.emitter.on_sync(key.parse()?, false, callback))
    }

    /// Like [`CloudConnection::on`], but only for the next event of that kind.
    pub fn once(
        &self,
        key: &str,
        callback: impl Fn(&Event) + Send + Sync + 'static,
    ) -> Result<ListenerId, CloudError> {
        Ok(self.inner.emitter.on_sync(key.parse()?, true, callback))
    }

    /// An async listener: each event spawns `callback(event)` on the runtime.
    pub fn on_async<F, Fut>(&self, key: &str, callback: F) -> Result<ListenerId, CloudError>
    where
        F: Fn(Event) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = ()> + Send + 'static,
    {
        Ok(self.inner.emitter.on_async(key.parse()?, false, callback))
    }

    /// Remove a listener; `false` if it was not registered (or a `once` listener already fired).
    pub fn off(&self, id: ListenerId) -> bool {
        self.inner.emitter.off(id)
    }

    /// The listeners registered for `key`, in registration order.
    pub fn listeners(&self, key: &str) -> Result<Vec<ListenerId>, CloudError> {
        Ok(self.inner.emitter.listeners(key.parse::<EventKind>()?))
    }

    /// Every event from now on, as a stream. A subscriber more than 1024 events
    /// behind skips the oldest.
    pub fn events(&self) -> BoxStream<'static, Event> {
        let rx = self.inner.emitter.subscribe();
        futures_util::stream::unfold(rx, |mut rx| async move {
            loop {
                match rx.recv().await {
                    Ok(ev) => return Some((ev, rx)),
                    Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => continue,
                    Err(tokio::sync::broadcast::error::RecvError::Closed) => return None,
                }
            }
        })
        .boxed()
    }
}

fn ended_error(reason: &Option<String>, code: Option<u16>) -> CloudError {
    match (reason, code) {
        (None, _) => CloudError::Closed,
        (Some(r), Some(code)) => CloudError::Fatal {
            code,
            reason: r.clone(),
        },
        (Some(r), None) => CloudError::Fatal {
            code: 0,
            reason: r.clone(),
        },
    }
}

fn checked_name(name: &str) -> Result<String, CloudError> {
    let name = normalize_name(name);
    validate_name(&name, 1024)?;
    Ok(name)
}

fn json(s: &str) -> String {
    serde_json::to_string(s).unwrap_or_else(|_| "\"\"".into())
}

type Socket =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

async fn open(inner: &Inner) -> Result<Socket, CloudError> {
    let mut req = inner.url.as_str().into_client_request()?;
    if let Ok(ua) = inner.cfg.user_agent.parse() {
        req.headers_mut().insert(USER_AGENT, ua);
    }
    let (ws, _) = tokio_tungstenite::connect_async_with_config(
        req,
        Some(crate::ws_config(inner.cfg.max_message_bytes)),
        false,
    )
    .await?;
    inner.emitter.emit(Event::Handshake);
    Ok(ws)
}

/// How one socket's life ended.
enum Ending {
    /// We closed it.
    ByUs,
    /// The server or the network ended it.
    Dropped { code: Option<u16>, reason: String },
}

async fn drive(inner: Arc<Inner>, first: Socket) {
    let mut ws = Some(first);
    let mut attempt = 0u32;
    loop {
        let socket = match ws.take() {
            Some(s) => s,
            None => match open(&inner).await {
                Ok(s) => s,
                Err(e) => {
                    tracing::debug!(error = %e, "reconnect failed");
                    attempt += 1;
                    inner.emitter.emit(Event::Reconnect { attempt });
                    tokio::time::sleep(inner.cfg.backoff.full_jitter(attempt, rand::random()))
                        .await;
                    if matches!(*inner.state.borrow(), State::Ended(..)) {
                        return;
                    }
                    continue;
                }
            },
        };
        attempt = 0;
        let ending = session(&inner, socket).await;
        inner.link().take();
        match ending {
            Ending::ByUs => {
                inner.emitter.emit(Event::Disconnect {
                    code: Some(1000),
                    reason: "closed by client".into(),
                });
                inner.state.send_replace(State::Ended(None, None));
                return;
            }
            Ending::Dropped { code, reason } => {
                inner.emitter.emit(Event::Disconnect {
                    code,
                    reason: reason.clone(),
                });
                let fatal = code
                    .and_then(CloseCode::from_code)
                    .is_some_and(|c| !c.should_reconnect());
                if fatal || !inner.cfg.reconnect {
                    inner.state.send_replace(State::Ended(Some(reason), code));
                    return;
                }
                inner.state.send_replace(State::Reconnecting);
                attempt += 1;
                inner.emitter.emit(Event::Reconnect { attempt });
                tokio::time::sleep(inner.cfg.backoff.full_jitter(attempt, rand::random())).await;
            }
        }
    }
}

/// One connected socket: handshake, then read and write until it ends.
async fn session(inner: &Arc<Inner>, mut ws: Socket) -> Ending {
    let (tx, mut rx) = mpsc::unbounded_channel();
    let handshake = format!(
        "{{\"method\":\"handshake\",\"user\":{},\"project_id\":{}}}",
        json(&inner.cfg.username),
        json(&inner.cfg.project_id)
    );
    if let Err(e) = ws.send(Message::text(handshake.clone())).await {
        return Ending::Dropped {
            code: None,
            reason: e.to_string(),
        };
    }
    inner.emitter.emit(Event::Outgoing(handshake));
    *inner.link() = Some(tx);
    inner.state.send_replace(State::Connected);
    inner.emitter.emit(Event::Connect);
    loop {
        tokio::select! {
            out = rx.recv() => match out {
                Some(Out::Text(line)) => {
                    if let Err(e) = ws.send(Message::text(line.clone())).await {
                        return Ending::Dropped { code: None, reason: e.to_string() };
                    }
                    inner.emitter.emit(Event::Outgoing(line));
                }
                Some(Out::Close) | None => {
                    let _ = ws.close(None).await;
                    return Ending::ByUs;
                }
            },
            msg = ws.next() => match msg {
                Some(Ok(Message::Text(text))) => on_frame(inner, text.as_str()),
                Some(Ok(Message::Close(frame))) => {
                    let (code, reason) = frame
                        .map(|f| (Some(u16::from(f.code)), f.reason.as_str().to_owned()))
                        .unwrap_or((None, "closed without a code".into()));
                    return Ending::Dropped { code, reason };
                }
                Some(Ok(_)) => {}
                Some(Err(e)) => return Ending::Dropped { code: None, reason: e.to_string() },
                None => return Ending::Dropped { code: None, reason: "connection lost".into() },
            },
        }
    }
}

fn on_frame(inner: &Inner, text: &str) {
    for line in split_frame(text) {
        match parse_server_line(line) {
            Ok(ServerMessage::Set { name, value }) => {
                let is_new = inner.vars().insert(name.clone(), value.clone()).is_none();
                let var = CloudVariable {
                    name,
                    value,
                    by_us: false,
                };
                if is_new {
                    inner.emitter.emit(Event::Create(var.clone()));
                }
                inner.emitter.emit(Event::Change(var.clone()));
                inner.emitter.emit(Event::Set(var));
            }
            Ok(ServerMessage::Other { method, .. }) => {
                tracing::debug!(%method, "ignored server message");
            }
            Err(e) => tracing::warn!(error = %e, line, "malformed line from server skipped"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hosts_are_parsed_like_the_python_clients_do() {
        assert_eq!(
            parse_host("ws://127.0.0.1:9080").unwrap_or_default(),
            "ws://127.0.0.1:9080/"
        );
        assert_eq!(
            parse_host("clouddata.turbowarp.org").unwrap_or_default(),
            "wss://clouddata.turbowarp.org/"
        );
        assert_eq!(
            parse_host("wss://x.org/cloud").unwrap_or_default(),
            "wss://x.org/cloud"
        );
        assert!(matches!(
            parse_host("http://x"),
            Err(CloudError::BadUrl { .. })
        ));
        assert!(matches!(
            parse_host("ws://"),
            Err(CloudError::BadUrl { .. })
        ));
    }

    #[tokio::test]
    async fn values_are_checked_against_the_profile_before_sending() {
        let c = CloudConnection::builder(1)
            .cloud_host("ws://127.0.0.1:1")
            .build()
            .unwrap_or_else(|e| panic!("{e}"));
        assert!(matches!(
            c.set_cloud_variable("x", "1.5").await,
            Err(CloudError::InvalidValue(_))
        ));
        assert!(matches!(
            c.set_cloud_variable("x", "1".repeat(257)).await,
            Err(CloudError::InvalidValue(_))
        ));
        assert!(matches!(
            c.set_cloud_variable("x", 5).await,
            Err(CloudError::NotConnected)
        ));
        assert!(matches!(
            c.on("nope", |_| {}),
            Err(CloudError::UnknownEvent(_))
        ));
    }
}
