//! One client connection's life: what its flows share ([`ConnCtx`]), and the driver loop
//! that reads a stream's first bytes, asks `layer::next_layer` what comes next, runs that
//! layer, and goes around again when the layer hands its stream on ([`Next::Switch`]).
//! Only this loop knows the order of layers; no layer calls another.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use flowgate_flow::{ConnectionInfo, FlowInfo, FlowKind, Hook};
use flowgate_runtime::{ConnectionSession, FlowStarter, HttpFlowSession, TlsSide};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;
use tokio::sync::Mutex;

use crate::detect::{self, Hello};
use crate::error::UpstreamError;
use crate::layer::{self, Decision, Layer, Seen, Stage, TlsVerdict};
use crate::replay::ReplayTap;
use crate::tls::Prefixed;
use crate::upstream::{self, Connected, Sender, Target, Upstreams};
use crate::{Mode, Proxy};

/// Any stream a layer runs on.
pub(crate) trait Io: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Io for T {}

/// A stream handed from one layer to the next.
pub(crate) type BoxIo = Box<dyn Io>;

/// How a layer ended.
pub(crate) enum Next {
    /// The stream is finished with (its flows are recorded).
    Done,
    /// The stream goes on at `Stage` (a 2xx CONNECT, terminated TLS, a 101 upgrade).
    Switch(Stage, BoxIo),
}

/// A switch a layer asked for before its stream is free: hyper hands over an upgraded
/// connection only once the 2xx or 101 response is written.
pub(crate) struct PendingSwitch {
    /// Where the stream goes on.
    pub stage: Stage,
    /// Resolves to the stream.
    pub upgrade: hyper::upgrade::OnUpgrade,
    /// Held until the switched stream's stack ends (an HTTP/2 connection counts the
    /// stream as open meanwhile).
    pub hold: Option<crate::http::OpenStream>,
}

/// What a client connection shares between its flows and layers.
pub(crate) struct ConnCtx {
    pub proxy: Arc<Proxy>,
    pub mode: Arc<Mode>,
    pub client: SocketAddr,
    pub conn_id: flowgate_flow::Uuid,
    /// The connection's own plugin session (connection and TLS hooks).
    pub session: Mutex<ConnectionSession>,
    /// Starts flows' sessions without waiting for `session` (a connection hook another
    /// stream is running).
    pub flows: FlowStarter,
    pub upstreams: Mutex<Upstreams>,
    /// Whether its flows may use HTTP/2 upstream connections other client connections
    /// use too (`share_upstream`): where the client cannot tell — no plugin of its chain
    /// is called for a server connection's hooks (a shared connection was opened for
    /// someone else, or long ago), and no client certificate goes upstream.
    pub share: bool,
    /// The proxy's address the client connected to.
    pub local: SocketAddr,
    /// When the connection was accepted.
    pub accepted: flowgate_flow::Timestamp,
    /// What TLS with the client negotiated, once terminated (intercepted, or to the
    /// proxy itself; TLS inside TLS to the proxy replaces the outer one's).
    pub tls: std::sync::Mutex<Option<(flowgate_flow::TlsInfo, flowgate_flow::Timestamp)>>,
    /// What still serves this connection: its driver, plus each HTTP/2 stream's tunnel
    /// that runs a stack of its own.
    users: AtomicUsize,
    /// Set on the connection client replay makes (no client): where its flow's outcome
    /// goes; its flows are marked as replays of the request.
    pub replay: Option<Arc<ReplayTap>>,
}

impl ConnCtx {
    fn new(
        proxy: Arc<Proxy>,
        mode: Arc<Mode>,
        client: SocketAddr,
        local: SocketAddr,
        replay: Option<Arc<ReplayTap>>,
    ) -> ConnCtx {
        let conn_id = proxy.next_id();
        let info = ConnectionInfo { id: conn_id, client_address: client.to_string(), ..ConnectionInfo::default() };
        let session = proxy.chain.connection(info);
        let share = proxy.options.share_upstream
            && proxy.options.client_certs.is_none()
            && ![Hook::ServerConnect, Hook::ServerConnected, Hook::ServerDisconnected]
                .into_iter()
                .any(|h| session.calls(h));
        ConnCtx {
            share,
            proxy,
            mode,
            client,
            conn_id,
            flows: session.flows(),
            session: Mutex::new(session),
            upstreams: Mutex::new(Upstreams::default()),
            local,
            accepted: crate::capture::now(),
            tls: std::sync::Mutex::new(None),
            users: AtomicUsize::new(1),
            replay,
        }
    }

    /// The connection client replay sends a saved request on: no client, so no client
    /// hooks; its flow's outcome goes to `tap`. Released with [`ConnCtx::release`].
    pub fn detached(proxy: Arc<Proxy>, mode: Arc<Mode>, client: SocketAddr, tap: Arc<ReplayTap>) -> Arc<ConnCtx> {
        Arc::new(ConnCtx::new(proxy, mode, client, client, Some(tap)))
    }

    /// Someone more serves the connection; they call [`ConnCtx::release`] when done.
    fn retain(&self) {
        self.users.fetch_add(1, Ordering::AcqRel);
    }

    /// One user is done; the last one runs the disconnect hooks, so they fire when the
    /// client really leaves.
    pub async fn release(&self) {
        if self.users.fetch_sub(1, Ordering::AcqRel) != 1 {
            return;
        }
        let had_upstream = self.upstreams.lock().await.any_open();
        let mut session = self.session.lock().await;
        if had_upstream {
            session.server_disconnected().await;
        }
        if self.replay.is_none() {
            session.client_disconnected().await;
        }
    }

    /// Starts the plugin session of a new HTTP flow on this connection.
    pub fn http_flow(&self) -> HttpFlowSession {
        self.flows.http_flow(self.flow_info(FlowKind::Http))
    }

    /// The client connection as the flow model records it.
    pub fn client_conn(&self) -> flowgate_flow::Client {
        let mut client = flowgate_flow::Client::new(self.conn_id, self.client, self.local, self.accepted);
        if let Some((tls, at)) = self.tls.lock().unwrap_or_else(std::sync::PoisonError::into_inner).clone() {
            client.tls = Some(tls);
            client.timestamp_tls_setup = Some(at);
        }
        client
    }

    /// The facts of a new flow of `kind` on this connection: a fresh id, the connection's
    /// id and the client's address.
    pub fn flow_info(&self, kind: FlowKind) -> FlowInfo {
        FlowInfo {
            id: self.proxy.next_id(),
            kind,
            connection_id: self.conn_id,
            client_address: self.client.to_string(),
            ..FlowInfo::default()
        }
    }

    /// A new upstream connection to `target` for this connection's flows: a shared one if
    /// there is one and the connection shares, else one opened now (the server-connect
    /// hooks first, which may refuse it; a new HTTP/2 one is offered for sharing).
    pub async fn open_upstream(&self, target: &Target) -> Result<Connected, UpstreamError> {
        let mut claim = None;
        if self.share {
            match self.proxy.shared.find(&self.mode, target).await {
                upstream::Found::Conn(c) => return Ok(Connected { sender: Sender::H2(c.sender), sans: c.sans }),
                upstream::Found::Open(open) => claim = Some(open),
            }
        }
        let address = format!("{}:{}", target.host, target.port);
        if !self.server_connect(address.clone()).await {
            return Err(UpstreamError::Refused(address));
        }
        let connected = upstream::connect(&self.proxy, &self.mode, target, self.share).await?;
        self.session.lock().await.server_connected().await;
        if let Some(claim) = claim {
            claim.offer(&connected.sender, &connected.sans);
        }
        Ok(connected)
    }

    /// Runs the plugins' server-connect hooks for `address`; false if one refused.
    pub async fn server_connect(&self, address: String) -> bool {
        let mut session = self.session.lock().await;
        session.info.server_address = Some(address);
        session.server_connect().await
    }

    /// Asks the plugins about a ClientHello.
    async fn tls_clienthello(&self, hello: &Hello) -> TlsVerdict {
        let mut session = self.session.lock().await;
        session.info.sni = hello.sni.clone();
        session.info.tls = true;
        match session.tls_clienthello(hello.sni.as_deref(), &hello.alpn).await {
            Ok(decision) => TlsVerdict::Decided(decision),
            Err(_) => TlsVerdict::Failed,
        }
    }
}

/// Serves a connection a listener accepted.
pub(crate) async fn serve_connection(proxy: Arc<Proxy>, mode: Arc<Mode>, stream: TcpStream, client: SocketAddr) {
    let local = stream.local_addr().unwrap_or(client);
    let ctx = Arc::new(ConnCtx::new(proxy, mode, client, local, None));
    if !ctx.session.lock().await.client_connected().await {
        return;
    }
    // Every write to the client, whatever layer makes it, is held to send_timeout.
    let stream = crate::stall::WriteStall::new(stream, ctx.proxy.options.send_timeout, "send_timeout");
    run_stack(&ctx, Stage::Accepted, Box::new(stream)).await;
    ctx.release().await;
}

/// Runs a pending switch on a stack of its own (an HTTP/2 CONNECT stream: the
/// connection carries on with its other streams meanwhile).
pub(crate) fn spawn_switch(ctx: Arc<ConnCtx>, pending: PendingSwitch) {
    ctx.retain();
    tokio::spawn(async move {
        match pending.upgrade.await {
            Ok(upgraded) => run_stack(&ctx, pending.stage, Box::new(hyper_util::rt::TokioIo::new(upgraded))).await,
            Err(e) => tracing::debug!("{}: upgrade failed: {e}", ctx.client),
        }
        drop(pending.hold);
        ctx.release().await;
    });
}

/// The driver: detect, decide, run, and again on each switch, until a layer is done.
async fn run_stack(ctx: &Arc<ConnCtx>, mut stage: Stage, mut io: BoxIo) {
    let mut buf = Vec::new();
    let mut start = None;
    let mut verdict = None;
    loop {
        let seen = Seen { start: start.as_ref(), verdict };
        let layer = match layer::next_layer(&ctx.mode, &stage, seen, &ctx.proxy.options) {
            Decision::Read(deadlines) => {
                start = Some(detect::read_start(&mut io, &mut buf, deadlines).await);
                continue;
            }
            Decision::AskTls(hello) => {
                verdict = Some(ctx.tls_clienthello(&hello).await);
                continue;
            }
            Decision::Run(layer) => layer,
        };
        let io_now = Prefixed::new(std::mem::take(&mut buf), io);
        match run_layer(ctx, layer, io_now).await {
            Next::Done => return,
            Next::Switch(next, next_io) => {
                stage = next;
                io = next_io;
                start = None;
                verdict = None;
            }
        }
    }
}

/// Runs one layer. Each layer's state is boxed where it starts, so a connection's task
/// holds only the state of the protocol it speaks now (idle connections are the bulk of
/// a proxy's memory).
async fn run_layer(ctx: &Arc<ConnCtx>, layer: Layer, io: Prefixed<BoxIo>) -> Next {
    match layer {
        Layer::Http1 { fixed } => Box::pin(crate::http::serve_h1(ctx.clone(), io, fixed)).await,
        Layer::Http2 { fixed } => Box::pin(crate::http::serve_h2(ctx.clone(), io, fixed)).await,
        Layer::H2cUpgraded { fields, fixed } => {
            Box::pin(crate::http::serve_upgraded_h2c(ctx.clone(), io, fields, fixed)).await
        }
        Layer::TlsIntercept { target, hello, in_tunnel } => {
            Box::pin(crate::tls::intercept::run(ctx, io, target, hello, in_tunnel)).await
        }
        Layer::SecureProxy { hello } => Box::pin(crate::tls::secure_proxy::run(ctx, io, hello)).await,
        Layer::RawTcp { target, relay } => Box::pin(crate::tcp::run(ctx, io, target, relay)).await,
        Layer::TlsFailed { reason } => {
            tracing::debug!("{}: {reason}", ctx.client);
            ctx.session.lock().await.tls_result(TlsSide::Client, Some(&reason)).await;
            Next::Done
        }
        Layer::Close { reason } => {
            tracing::debug!("{}: closed: {reason}", ctx.client);
            Next::Done
        }
    }
}
