//! Admission of TLS connections: how many may be open at once, in all and from one
//! address; TLS handshakes on a thread of their own, bounded in number and time; and the
//! closing of a connection that has had no request for a while.
//!
//! What a client can hold of a listener is bounded here, before any HTTP/2 or gRPC work:
//! a connection over a limit is closed at once (counted in
//! `kss_transport_limited_total{limit}`), so the slots of well-behaved clients are never
//! queued behind a flood's.

use std::collections::HashMap;
use std::future::Future;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio::runtime::Handle;
use tokio::task::JoinSet;
use tokio::time::Sleep;
use tokio_rustls::TlsAcceptor;
use tokio_rustls::server::TlsStream;
use tokio_stream::Stream;
use tonic::transport::server::{Connected, TcpConnectInfo, TcpIncoming, TlsConnectInfo};
use tracing::{debug, warn};

use crate::metrics::Metrics;
use crate::reloading_tls::ReloadingTls;

/// How long a client has to complete its TLS handshake before the connection is dropped.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// How long, on average, a request waits while its address's refusal budget is spent;
/// each wait is drawn from half to one and a half of it, so that a flood's parked requests
/// do not all wake at once.
pub const REFUSED_DELAY: Duration = Duration::from_secs(1);

/// Addresses whose refusal budgets are remembered; past it, the full ones are forgotten.
const MAX_REFUSING_ADDRESSES: usize = 65_536;

/// Bounds on a listener's connections. `0` in a count means no limit.
#[derive(Clone, Copy, Debug)]
pub struct ConnectionLimits {
    /// Connections open at once (handshaking or established).
    pub max_total: usize,
    /// Connections open at once from one client address (an IPv4 address, an IPv6 /64).
    pub max_per_address: usize,
    /// TLS handshakes under way at once (at least one).
    pub max_handshakes: usize,
    /// A connection with no request in flight for this long is closed.
    pub idle_timeout: Option<Duration>,
    /// Requests from one client address refused before authentication, in a burst; the
    /// budget refills at a tenth of it per second. While it is spent, each request from
    /// the address waits [`REFUSED_DELAY`] before it is looked at: a flood of made-up
    /// requests then costs its sender time, and the keyserver a timer, however many
    /// connections it spreads them over. 0: no limit.
    pub refusals_per_address: u32,
}

impl ConnectionLimits {
    /// No bounds but the handshake timeout (the admin listener: mutual TLS).
    pub fn unlimited() -> Self {
        ConnectionLimits {
            max_total: 0,
            max_per_address: 0,
            max_handshakes: usize::MAX,
            idle_timeout: None,
            refusals_per_address: 0,
        }
    }
}

/// The connections open on one listener, by client address, and what each is doing.
pub struct Connections {
    limits: ConnectionLimits,
    table: Mutex<Table>,
    metrics: Option<Arc<Metrics>>,
    /// The origin of the activity clocks.
    epoch: Instant,
}

#[derive(Default)]
struct Table {
    total: usize,
    per_address: HashMap<IpAddr, usize>,
    open: HashMap<SocketAddr, Arc<Activity>>,
    /// Refusal budgets of the addresses that had requests refused.
    refusals: HashMap<IpAddr, RefusalBudget>,
}

/// What one connection is doing: requests in flight, and when the last one ended; whether
/// one of its requests was authenticated.
#[derive(Default)]
struct Activity {
    in_flight: AtomicUsize,
    last_ms: AtomicU64,
    /// A request of this connection was signed by a known device: its requests are never
    /// slowed for its address's refusals (workstations behind the NAT of a flooder).
    proven: AtomicBool,
}

/// A token bucket, in thousandths of a refusal: `burst` refusals, refilled at a tenth of
/// `burst` per second.
#[derive(Clone, Copy)]
struct RefusalBudget {
    left_milli: u64,
    at_ms: u64,
}

impl RefusalBudget {
    fn full(burst: u64, now: u64) -> Self {
        RefusalBudget {
            left_milli: burst * 1000,
            at_ms: now,
        }
    }

    fn refill(&mut self, burst: u64, now: u64) {
        // burst / 10 per second = burst per 10,000 ms, in thousandths.
        let refill = now.saturating_sub(self.at_ms).saturating_mul(burst) / 10;
        self.left_milli = self.left_milli.saturating_add(refill).min(burst * 1000);
        self.at_ms = self.at_ms.max(now);
    }

    fn spent(&self) -> bool {
        self.left_milli < 1000
    }
}

impl Connections {
    pub fn new(limits: ConnectionLimits, metrics: Option<Arc<Metrics>>) -> Arc<Self> {
        Arc::new(Connections {
            limits,
            table: Mutex::default(),
            metrics,
            epoch: Instant::now(),
        })
    }

    fn table(&self) -> std::sync::MutexGuard<'_, Table> {
        match self.table.lock() {
            Ok(table) => table,
            Err(poisoned) => poisoned.into_inner(),
        }
    }

    fn now_ms(&self) -> u64 {
        u64::try_from(self.epoch.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    fn limited(&self, limit: &'static str) {
        if let Some(m) = &self.metrics {
            m.transport_limited(limit);
        }
    }

    /// A slot for a connection from `peer`, or `None` (counted) when it would be over a
    /// limit.
    fn admit(self: &Arc<Self>, peer: SocketAddr) -> Option<Slot> {
        let address = client_address(peer.ip());
        let mut table = self.table();
        if self.limits.max_total > 0 && table.total >= self.limits.max_total {
            drop(table);
            self.limited("connections");
            return None;
        }
        let from_address = table.per_address.get(&address).copied().unwrap_or(0);
        if self.limits.max_per_address > 0 && from_address >= self.limits.max_per_address {
            drop(table);
            self.limited("connections_per_address");
            return None;
        }
        table.total += 1;
        table.per_address.insert(address, from_address + 1);
        let activity = Arc::new(Activity::default());
        activity.last_ms.store(self.now_ms(), Ordering::Relaxed);
        table.open.insert(peer, Arc::clone(&activity));
        Some(Slot {
            connections: Arc::clone(self),
            peer,
            activity,
        })
    }

    /// Counts a request from `peer` refused before authentication against its address's
    /// budget.
    pub fn refused(&self, peer: SocketAddr) {
        self.refused_at(peer, self.now_ms());
    }

    fn refused_at(&self, peer: SocketAddr, now: u64) {
        let burst = u64::from(self.limits.refusals_per_address);
        if burst == 0 {
            return;
        }
        let address = client_address(peer.ip());
        let mut table = self.table();
        if table.refusals.len() >= MAX_REFUSING_ADDRESSES && !table.refusals.contains_key(&address)
        {
            table.refusals.retain(|_, b| {
                b.refill(burst, now);
                b.left_milli < burst * 1000
            });
            if table.refusals.len() >= MAX_REFUSING_ADDRESSES {
                table.refusals.clear();
            }
        }
        let budget = table
            .refusals
            .entry(address)
            .or_insert(RefusalBudget::full(burst, now));
        budget.refill(burst, now);
        let was_spent = budget.spent();
        budget.left_milli = budget.left_milli.saturating_sub(1000);
        if !was_spent && budget.spent() {
            debug!(%address, "slowing an address whose requests keep being refused");
        }
    }

    /// Marks the connection from `peer` as having sent an authenticated request.
    pub fn authenticated(&self, peer: SocketAddr) {
        if self.limits.refusals_per_address == 0 {
            return;
        }
        if let Some(activity) = self.table().open.get(&peer) {
            activity.proven.store(true, Ordering::Relaxed);
        }
    }

    /// How long a request from `peer` waits before it is looked at: [`REFUSED_DELAY`]
    /// while its address's refusal budget is spent, unless its connection has sent an
    /// authenticated request (counted in `kss_transport_limited_total{limit="refusals"}`).
    pub fn delay_for(&self, peer: SocketAddr) -> Option<Duration> {
        self.delay_at(peer, self.now_ms())
    }

    fn delay_at(&self, peer: SocketAddr, now: u64) -> Option<Duration> {
        let burst = u64::from(self.limits.refusals_per_address);
        if burst == 0 {
            return None;
        }
        let address = client_address(peer.ip());
        let mut table = self.table();
        if table
            .open
            .get(&peer)
            .is_some_and(|a| a.proven.load(Ordering::Relaxed))
        {
            return None;
        }
        let spent = table.refusals.get_mut(&address).is_some_and(|b| {
            b.refill(burst, now);
            b.spent()
        });
        drop(table);
        spent.then(|| {
            self.limited("refusals");
            let base = u64::try_from(REFUSED_DELAY.as_millis()).unwrap_or(1000);
            Duration::from_millis(rand::Rng::gen_range(
                &mut rand::thread_rng(),
                base / 2..=base * 3 / 2,
            ))
        })
    }

    /// Marks a request of the connection from `peer` as in flight until the guard drops.
    pub fn request_started(self: &Arc<Self>, peer: SocketAddr) -> Option<InFlight> {
        let activity = Arc::clone(self.table().open.get(&peer)?);
        activity.in_flight.fetch_add(1, Ordering::Relaxed);
        Some(InFlight {
            connections: Arc::clone(self),
            activity,
        })
    }
}

/// The key per-address limits count by: an IPv4 address, or an IPv6 address's /64 (what
/// one host is usually given); an IPv4-mapped IPv6 address counts as its IPv4 address.
fn client_address(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(v4) => IpAddr::V4(v4),
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => {
                let prefix = u128::from(v6) & !((1u128 << 64) - 1);
                IpAddr::V6(prefix.into())
            }
        },
    }
}

/// A connection's place in the table, given back when the connection ends.
struct Slot {
    connections: Arc<Connections>,
    peer: SocketAddr,
    activity: Arc<Activity>,
}

impl Drop for Slot {
    fn drop(&mut self) {
        let address = client_address(self.peer.ip());
        let mut table = self.connections.table();
        table.total = table.total.saturating_sub(1);
        if let Some(n) = table.per_address.get_mut(&address) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                table.per_address.remove(&address);
            }
        }
        table.open.remove(&self.peer);
    }
}

/// A request in flight on a connection; when it ends, the idle clock starts again.
pub struct InFlight {
    connections: Arc<Connections>,
    activity: Arc<Activity>,
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.activity
            .last_ms
            .store(self.connections.now_ms(), Ordering::Relaxed);
        self.activity.in_flight.fetch_sub(1, Ordering::Relaxed);
    }
}

/// An admitted TLS connection. Reading it ends (end of file: the HTTP/2 server then closes
/// it) once it has been idle for the idle timeout.
pub struct Connection {
    stream: TlsStream<TcpStream>,
    slot: Slot,
    idle: Option<(Duration, Pin<Box<Sleep>>)>,
}

impl Connection {
    fn new(stream: TlsStream<TcpStream>, slot: Slot) -> Self {
        let idle = slot
            .connections
            .limits
            .idle_timeout
            .map(|after| (after, Box::pin(tokio::time::sleep(after))));
        Connection { stream, slot, idle }
    }

    /// Whether the idle timeout has passed with no request in flight; otherwise the timer
    /// is set to when it next could have.
    fn poll_idle(&mut self, cx: &mut Context<'_>) -> bool {
        let Some((after, sleep)) = self.idle.as_mut() else {
            return false;
        };
        while sleep.as_mut().poll(cx).is_ready() {
            let activity = &self.slot.activity;
            let connections = &self.slot.connections;
            let after_ms = u64::try_from(after.as_millis()).unwrap_or(u64::MAX);
            let idle_ms = connections
                .now_ms()
                .saturating_sub(activity.last_ms.load(Ordering::Relaxed));
            let next = if activity.in_flight.load(Ordering::Relaxed) > 0 {
                *after
            } else if idle_ms >= after_ms {
                connections.limited("idle_timeout");
                debug!(peer = %self.slot.peer, "closing an idle connection");
                return true;
            } else {
                Duration::from_millis(after_ms - idle_ms)
            };
            sleep
                .as_mut()
                .reset(tokio::time::Instant::now() + next.max(Duration::from_millis(1)));
        }
        false
    }
}

impl AsyncRead for Connection {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if this.poll_idle(cx) {
            // End of file: nothing more is read from this client.
            this.idle = None;
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut this.stream).poll_read(cx, buf)
    }
}

impl AsyncWrite for Connection {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().stream).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().stream).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_shutdown(cx)
    }
}

impl Connected for Connection {
    // The same as a plain TLS stream's, so that `Request::peer_certs` and `remote_addr`
    // work as they do for one.
    type ConnectInfo = TlsConnectInfo<TcpConnectInfo>;

    fn connect_info(&self) -> Self::ConnectInfo {
        self.stream.connect_info()
    }
}

/// A thread of its own for TLS handshakes, at a lower CPU priority than the threads that
/// serve requests: a flood of handshakes gets what CPU the requests of open connections
/// leave, not a share of theirs. Dropping it stops the thread (handshakes under way fail).
pub struct HandshakeThread {
    handle: Handle,
    _stop: tokio::sync::oneshot::Sender<()>,
}

/// The niceness of the handshake thread (the serving threads keep the process's).
const HANDSHAKE_NICENESS: i32 = 10;

impl HandshakeThread {
    pub fn start() -> Result<Self> {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .context("starting the TLS handshake runtime")?;
        let handle = runtime.handle().clone();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        std::thread::Builder::new()
            .name("kss-handshakes".to_string())
            .spawn(move || {
                // On Linux a thread id names just this thread.
                let thread = rustix::thread::gettid();
                if let Err(e) =
                    rustix::process::setpriority_process(Some(thread), HANDSHAKE_NICENESS)
                {
                    warn!(error = %e, "could not lower the TLS handshake thread's priority");
                }
                runtime.block_on(async move {
                    let _ = stopped.await;
                });
            })
            .context("starting the TLS handshake thread")?;
        Ok(HandshakeThread {
            handle,
            _stop: stop,
        })
    }
}

/// TLS connections accepted on a TCP listener, within the listener's [`Connections`]
/// limits. Handshakes run concurrently, each within [`HANDSHAKE_TIMEOUT`], so a slow or
/// silent client holds up no one; a failed handshake is logged at debug level and
/// dropped. Dropping the stream aborts handshakes under way. At most `max_handshakes` run
/// at once: past that, no connection is accepted until one ends (they wait in the
/// kernel's backlog).
pub struct TlsIncoming {
    tcp: Option<TcpIncoming>,
    tls: Arc<ReloadingTls>,
    connections: Arc<Connections>,
    handshakes: JoinSet<io::Result<Connection>>,
    /// Where handshakes run (the current runtime when `None`).
    handshake_runtime: Option<Handle>,
    /// Whether the limit held accepting back (counted once per time it is reached).
    at_limit: bool,
}

impl TlsIncoming {
    pub fn new(tls: Arc<ReloadingTls>, tcp: TcpIncoming, connections: Arc<Connections>) -> Self {
        TlsIncoming {
            tcp: Some(tcp),
            tls,
            connections,
            handshakes: JoinSet::new(),
            handshake_runtime: None,
            at_limit: false,
        }
    }

    /// Runs the handshakes on `thread` (see [`HandshakeThread`]).
    pub fn handshakes_on(mut self, thread: &HandshakeThread) -> Self {
        self.handshake_runtime = Some(thread.handle.clone());
        self
    }

    fn start_handshake(&mut self, stream: TcpStream) {
        let Some(slot) = stream
            .peer_addr()
            .ok()
            .and_then(|peer| self.connections.admit(peer))
        else {
            // Over a limit (or gone already): closed at once.
            return;
        };
        let acceptor = TlsAcceptor::from(self.tls.config());
        let handshake = async move {
            let stream = tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(stream))
                .await
                .map_err(|_| {
                    io::Error::new(io::ErrorKind::TimedOut, "TLS handshake timed out")
                })??;
            Ok(Connection::new(stream, slot))
        };
        match &self.handshake_runtime {
            Some(runtime) => self.handshakes.spawn_on(handshake, runtime),
            None => self.handshakes.spawn(handshake),
        };
    }
}

impl Stream for TlsIncoming {
    type Item = io::Result<Connection>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = self.get_mut();
        let max_handshakes = this.connections.limits.max_handshakes.max(1);
        loop {
            // Take every connection that is waiting and start its handshake, up to the
            // limit (at it, the listener is not polled: connections wait in the backlog).
            while let Some(tcp) = this.tcp.as_mut() {
                if this.handshakes.len() >= max_handshakes {
                    if !this.at_limit {
                        this.at_limit = true;
                        this.connections.limited("handshakes");
                    }
                    break;
                }
                this.at_limit = false;
                match Pin::new(tcp).poll_next(cx) {
                    Poll::Ready(Some(Ok(stream))) => this.start_handshake(stream),
                    // tonic's server logs accept errors and goes on.
                    Poll::Ready(Some(Err(e))) => return Poll::Ready(Some(Err(e))),
                    Poll::Ready(None) => this.tcp = None,
                    Poll::Pending => break,
                }
            }
            // A handshake that ends frees its slot: then accept again (above).
            match this.handshakes.poll_join_next(cx) {
                Poll::Ready(Some(Ok(Ok(connection)))) => {
                    return Poll::Ready(Some(Ok(connection)));
                }
                Poll::Ready(Some(Ok(Err(e)))) => {
                    debug!(listener = this.tls.listener, error = %e, "TLS handshake failed");
                }
                Poll::Ready(Some(Err(e))) => {
                    debug!(listener = this.tls.listener, error = %e, "TLS handshake task ended");
                }
                Poll::Ready(None) if this.tcp.is_none() => return Poll::Ready(None),
                Poll::Ready(None) | Poll::Pending => return Poll::Pending,
            }
        }
    }
}

/// A tower layer that marks each request in flight on its connection, so that a
/// connection is idle only when no request is.
#[derive(Clone)]
pub struct TrackRequests {
    connections: Arc<Connections>,
}

impl TrackRequests {
    pub fn new(connections: Arc<Connections>) -> Self {
        TrackRequests { connections }
    }
}

impl<S> tower::Layer<S> for TrackRequests {
    type Service = Tracked<S>;

    fn layer(&self, inner: S) -> Self::Service {
        Tracked {
            inner,
            connections: Arc::clone(&self.connections),
        }
    }
}

/// See [`TrackRequests`].
#[derive(Clone)]
pub struct Tracked<S> {
    inner: S,
    connections: Arc<Connections>,
}

impl<S, B> tower::Service<tonic::codegen::http::Request<B>> for Tracked<S>
where
    S: tower::Service<tonic::codegen::http::Request<B>>,
    S::Future: Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<S::Response, S::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: tonic::codegen::http::Request<B>) -> Self::Future {
        let in_flight = request
            .extensions()
            .get::<TlsConnectInfo<TcpConnectInfo>>()
            .and_then(|info| info.get_ref().remote_addr())
            .and_then(|peer| self.connections.request_started(peer));
        let response = self.inner.call(request);
        Box::pin(async move {
            let response = response.await;
            drop(in_flight);
            response
        })
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn limits(total: usize, per_address: usize) -> ConnectionLimits {
        ConnectionLimits {
            max_total: total,
            max_per_address: per_address,
            ..ConnectionLimits::unlimited()
        }
    }

    fn peer(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    #[test]
    fn connections_are_counted_per_address_and_in_all_and_given_back() {
        let c = Connections::new(limits(5, 2), None);
        let a1 = c.admit(peer("10.0.0.1:1000")).unwrap();
        let _a2 = c.admit(peer("10.0.0.1:1001")).unwrap();
        assert!(
            c.admit(peer("10.0.0.1:1002")).is_none(),
            "third from 10.0.0.1"
        );
        // The same host over IPv4-mapped IPv6 is the same address.
        assert!(c.admit(peer("[::ffff:10.0.0.1]:1003")).is_none());
        // One IPv6 /64 is one address; another /64 is another.
        let _b1 = c.admit(peer("[2001:db8:1:2::1]:1")).unwrap();
        let _b2 = c.admit(peer("[2001:db8:1:2:ffff::9]:2")).unwrap();
        assert!(c.admit(peer("[2001:db8:1:2::77]:3")).is_none());
        let _d = c.admit(peer("[2001:db8:1:3::1]:1")).unwrap();
        // Five open: the total is reached for a fresh address too.
        assert!(c.admit(peer("10.0.0.9:1")).is_none());
        drop(a1);
        let _a3 = c.admit(peer("10.0.0.1:1004")).unwrap();
        assert_eq!(c.table().total, 5);
        assert_eq!(c.table().open.len(), 5);
    }

    /// A wait within half to one and a half of [`REFUSED_DELAY`].
    fn slowed(delay: Option<Duration>) -> bool {
        delay.is_some_and(|d| d >= REFUSED_DELAY / 2 && d <= REFUSED_DELAY * 3 / 2)
    }

    #[test]
    fn an_address_is_slowed_while_its_refusal_budget_is_spent_and_only_it() {
        let c = Connections::new(
            ConnectionLimits {
                refusals_per_address: 4,
                ..ConnectionLimits::unlimited()
            },
            None,
        );
        let (a1, a2, b) = (
            peer("10.0.0.1:1000"),
            peer("10.0.0.1:1001"),
            peer("10.0.0.2:1000"),
        );
        let t = 1_000_000;
        // Spread over two connections of one address: one budget.
        for p in [a1, a2, a1, a2] {
            assert_eq!(c.delay_at(p, t), None, "within the burst");
            c.refused_at(p, t);
        }
        assert!(slowed(c.delay_at(a1, t)));
        assert!(
            slowed(c.delay_at(peer("10.0.0.1:2000"), t)),
            "a new connection"
        );
        assert_eq!(c.delay_at(b, t), None, "another address");
        // A connection that sent an authenticated request is not slowed.
        let proven = c.admit(peer("10.0.0.1:3000")).unwrap();
        assert!(slowed(c.delay_at(proven.peer, t)));
        c.authenticated(proven.peer);
        assert_eq!(c.delay_at(proven.peer, t), None);
        // The budget refills at a tenth of the burst per second: one more every 2.5 s.
        assert!(slowed(c.delay_at(a1, t + 2_400)));
        assert_eq!(c.delay_at(a1, t + 2_500), None, "refilled");
        c.refused_at(a1, t + 2_500);
        assert!(slowed(c.delay_at(a2, t + 2_600)));
    }

    #[test]
    fn zero_means_no_limit() {
        let c = Connections::new(limits(0, 0), None);
        let held: Vec<_> = (0..1000)
            .map(|i| c.admit(SocketAddr::from(([10, 0, 0, 1], i))).unwrap())
            .collect();
        assert_eq!(c.table().total, 1000);
        drop(held);
        assert_eq!(c.table().total, 0);
        assert!(c.table().per_address.is_empty());
        assert!(c.table().open.is_empty());
    }

    #[test]
    fn a_request_is_tracked_on_its_connection_only() {
        let c = Connections::new(limits(0, 0), None);
        let slot = c.admit(peer("10.0.0.1:1")).unwrap();
        let before = slot.activity.last_ms.load(Ordering::Relaxed);
        let request = c.request_started(peer("10.0.0.1:1")).unwrap();
        assert_eq!(slot.activity.in_flight.load(Ordering::Relaxed), 1);
        assert!(c.request_started(peer("10.0.0.1:2")).is_none());
        std::thread::sleep(Duration::from_millis(5));
        drop(request);
        assert_eq!(slot.activity.in_flight.load(Ordering::Relaxed), 0);
        assert!(slot.activity.last_ms.load(Ordering::Relaxed) > before);
    }
}
