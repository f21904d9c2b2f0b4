//! The raw TCP layer (mitmproxy's `rawtcp`): connect upstream, relay bytes both ways as
//! they come, and record the stream as one TCP flow. It serves bytes no other layer
//! claims (SSH through CONNECT, a server that speaks first) and TLS passed through
//! undecrypted. Half-closes are forwarded; a stream where neither side has said anything
//! for `header_read_timeout`, or that is idle for `tcp_timeout`, is closed. Plugins that
//! export the `tcp` group see tcp-start, each read as a tcp-message (which they may
//! replace, drop or answer with kill), and tcp-end or tcp-error; with none, bytes are
//! copied both ways with no calls. Not here yet: STARTTLS.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use bytes::Bytes;
use flowgate_flow::{Address, DataMessage, Flow, FlowError, FlowInfo, FlowKind, Injected, Payload, Server, Uuid};
use flowgate_runtime::{DataAction, DataFlowSession};
use flowgate_store::flowfile::NewMessages;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::time::Instant;

use crate::capture::{FlowStore, Stored, now};
use crate::conn::{BoxIo, ConnCtx, Next};
use crate::layer::Relay;
use crate::record::{self, FlowRecord, Kind};
use crate::tls::Prefixed;
use crate::upstream::{self, Alpn, Target};

/// Bytes read at a time in each direction.
const RELAY_BUFFER: usize = 16 << 10;

/// Runs the layer: `io`'s replayed prefix holds what the client already sent.
pub(crate) async fn run(ctx: &Arc<ConnCtx>, io: Prefixed<BoxIo>, target: Target, relay: Relay) -> Next {
    let began = Instant::now();
    let server = format!("{}:{}", target.host, target.port);
    let info = FlowInfo { server_address: Some(server.clone()), ..ctx.flow_info(FlowKind::Tcp) };
    let mut session = ctx.flows.tcp_flow(info);
    let tap = Tap::begin(ctx, session.flow.id, &target, relay);
    let record = |session: &DataFlowSession, totals: Totals| {
        if let Some(tap) = &tap {
            tap.end(&totals);
        }
        let kind = Kind::Tcp {
            server: server.clone(),
            decrypted: relay != Relay::Passthrough,
            client_bytes: totals.client,
            server_bytes: totals.server,
            error: totals.error,
        };
        let failures = session.failures().iter().map(ToString::to_string).collect();
        ctx.proxy.report(|| FlowRecord {
            id: session.flow.id,
            client: ctx.client,
            kind,
            duration: began.elapsed(),
            failures,
            replay: None,
        });
    };
    // Plugins see TLS passed through only as a flow, never its bytes.
    let hooks = relay != Relay::Passthrough && session.has_plugins();
    if hooks && let Some(stop) = stopped(session.start().await) {
        session.error(&stop).await;
        record(&session, Totals::failed(stop));
        return Next::Done;
    }
    let totals = match connect(ctx, &target, &server).await {
        Ok(upstream) => {
            let opts = &ctx.proxy.options;
            let idle = Idle { before_any: opts.header_read_timeout, between: opts.tcp_timeout };
            let tap = tap.as_ref();
            if hooks {
                pump_through(io, upstream, idle, &mut session, tap).await
            } else {
                pump(io, upstream, idle, tap).await
            }
        }
        Err(e) => Totals::failed(e),
    };
    if hooks {
        match &totals.error {
            Some(e) => session.error(e).await,
            None => session.end().await,
        }
    }
    record(&session, totals);
    Next::Done
}

/// Connects upstream for the relay, with the server-connect hooks.
async fn connect(ctx: &Arc<ConnCtx>, target: &Target, server: &str) -> Result<crate::upstream::UpstreamIo, String> {
    if !ctx.server_connect(server.to_owned()).await {
        return Err(format!("a plugin refused the connection to {server}"));
    }
    let opened = upstream::open(&ctx.proxy, &ctx.mode, target, Alpn::None).await.map_err(|e| e.to_string())?;
    ctx.upstreams.lock().await.note_opened();
    ctx.session.lock().await.server_connected().await;
    Ok(opened.io)
}

/// The copy of a relayed stream for the flow store: the flow when it begins, each read
/// as a message as it passes (so a flow file keeps what was seen of a stream that never
/// ends), and the flow's final state when it ends.
struct Tap {
    store: FlowStore,
    flow: Flow,
}

impl Tap {
    /// Starts the copy if there is a flow store.
    fn begin(ctx: &ConnCtx, id: Uuid, target: &Target, relay: Relay) -> Option<Tap> {
        let store = ctx.proxy.store.clone()?;
        let mut flow = Flow::new(id, ctx.client_conn(), now(), Payload::Tcp(Vec::new()));
        if let Ok(address) = Address::new(&target.host, target.port) {
            flow.server = Some(Server::new(ctx.proxy.next_id(), address));
        }
        if relay == Relay::Passthrough {
            flow.metadata.insert(record::PASSTHROUGH_KEY.to_owned(), "true".to_owned());
        }
        store(Stored::Begun(flow.clone()));
        Some(Tap { store, flow })
    }

    /// Bytes that passed, from the client or from the server.
    fn saw(&self, from_client: bool, data: &[u8]) {
        let message = DataMessage { from_client, content: Bytes::copy_from_slice(data), timestamp: now() };
        (self.store)(Stored::Messages { id: self.flow.id, messages: NewMessages::Tcp(vec![message]) });
    }

    /// The stream ended: its final state.
    fn end(&self, totals: &Totals) {
        let mut flow = self.flow.clone();
        let at = now();
        flow.client.timestamp_end = Some(at);
        flow.metadata.insert(record::CLIENT_BYTES_KEY.to_owned(), totals.client.to_string());
        flow.metadata.insert(record::SERVER_BYTES_KEY.to_owned(), totals.server.to_string());
        if let Some(message) = &totals.error {
            flow.error = Some(FlowError { message: message.clone(), timestamp: at });
        }
        (self.store)(Stored::Ended(flow));
    }
}

/// Why a hook's action ends the flow, if it does.
fn stopped(action: DataAction) -> Option<String> {
    match action {
        DataAction::Forward(_) => None,
        DataAction::Kill => Some("killed by a plugin".to_owned()),
        DataAction::Fail(failure) => Some(failure.to_string()),
    }
}

/// How long a relay may see no bytes.
#[derive(Debug, Clone, Copy)]
struct Idle {
    /// Before either side said anything (`header_read_timeout`).
    before_any: Duration,
    /// Once something was said (`tcp_timeout`).
    between: Duration,
}

impl Idle {
    /// How long the relay may stay quiet now, given whether anything was said yet.
    fn limit(&self, said: bool) -> Duration {
        if said { self.between } else { self.before_any }
    }

    /// Why a relay that stayed quiet for [`Idle::limit`] was closed.
    fn timed_out(&self, said: bool) -> String {
        let limit = self.limit(said);
        if said {
            format!("idle for {limit:?} (tcp_timeout)")
        } else {
            format!("neither side sent anything for {limit:?} (header_read_timeout)")
        }
    }
}

/// What a relay carried.
#[derive(Debug, Default)]
struct Totals {
    client: u64,
    server: u64,
    error: Option<String>,
}

impl Totals {
    fn failed(error: String) -> Totals {
        Totals { error: Some(error), ..Totals::default() }
    }
}

/// Relays both ways until both sides have closed, one fails, or the stream idles out.
async fn pump<C, S>(client: C, server: S, idle: Idle, tap: Option<&Tap>) -> Totals
where
    C: AsyncRead + AsyncWrite + Unpin,
    S: AsyncRead + AsyncWrite + Unpin,
{
    let began = Instant::now();
    let last = AtomicU64::new(0);
    let (from_client, from_server) = (AtomicU64::new(0), AtomicU64::new(0));
    let (mut client_read, mut client_write) = tokio::io::split(client);
    let (mut server_read, mut server_write) = tokio::io::split(server);
    let up = copy(&mut client_read, &mut server_write, &from_client, &last, began, tap.map(|t| (t, true)));
    let down = copy(&mut server_read, &mut client_write, &from_server, &last, began, tap.map(|t| (t, false)));
    let watchdog = async {
        loop {
            let said = from_client.load(Ordering::Relaxed) + from_server.load(Ordering::Relaxed) > 0;
            let deadline = began + Duration::from_millis(last.load(Ordering::Relaxed)) + idle.limit(said);
            if Instant::now() >= deadline {
                return idle.timed_out(said);
            }
            tokio::time::sleep_until(deadline).await;
        }
    };
    let error = tokio::select! {
        relayed = async { tokio::try_join!(up, down) } => relayed.err().map(|e| e.to_string()),
        timed_out = watchdog => Some(timed_out),
    };
    Totals { client: from_client.into_inner(), server: from_server.into_inner(), error }
}

/// Relays both ways through the tcp-message hooks: each read is one message, and what
/// the plugins make of it is written to the other side. One task, one read at a time per
/// side, so a slow writer holds back only the side that feeds it.
async fn pump_through<C, S>(
    client: C,
    server: S,
    idle: Idle,
    session: &mut DataFlowSession,
    tap: Option<&Tap>,
) -> Totals
where
    C: AsyncRead + AsyncWrite + Unpin + Send,
    S: AsyncRead + AsyncWrite + Unpin + Send,
{
    let (mut client, mut server) = (client, server);
    let mut totals = Totals::default();
    // What tcp-start injected goes out first.
    if let Err(e) = inject(session, &mut client, &mut server, &mut totals, tap).await {
        totals.error = Some(e.to_string());
        return totals;
    }
    let (mut client_open, mut server_open) = (true, true);
    let (mut from_client, mut from_server) = (vec![0u8; RELAY_BUFFER], vec![0u8; RELAY_BUFFER]);
    let mut last = Instant::now();
    while client_open || server_open {
        let said = totals.client + totals.server > 0;
        let read = tokio::select! {
            read = client.read(&mut from_client), if client_open => (true, read),
            read = server.read(&mut from_server), if server_open => (false, read),
            () = tokio::time::sleep_until(last + idle.limit(said)) => {
                totals.error = Some(idle.timed_out(said));
                return totals;
            }
        };
        let (is_client, n) = match read {
            (side, Ok(n)) => (side, n),
            (_, Err(e)) => {
                totals.error = Some(e.to_string());
                return totals;
            }
        };
        last = Instant::now();
        let (to, open): (&mut (dyn AsyncWrite + Unpin + Send), &mut bool) =
            if is_client { (&mut server, &mut client_open) } else { (&mut client, &mut server_open) };
        if n == 0 {
            *open = false;
            let _ = to.shutdown().await;
            continue;
        }
        let data = if is_client { from_client[..n].to_vec() } else { from_server[..n].to_vec() };
        let out = match session.message(is_client, data).await {
            DataAction::Forward(out) => out,
            other => {
                totals.error = stopped(other);
                return totals;
            }
        };
        if !out.is_empty() {
            if let Err(e) = async {
                to.write_all(&out).await?;
                to.flush().await
            }
            .await
            {
                totals.error = Some(e.to_string());
                return totals;
            }
            if is_client {
                totals.client += out.len() as u64
            } else {
                totals.server += out.len() as u64
            }
            if let Some(tap) = tap {
                tap.saw(is_client, &out);
            }
        }
        if let Err(e) = inject(session, &mut client, &mut server, &mut totals, tap).await {
            totals.error = Some(e.to_string());
            return totals;
        }
    }
    totals
}

/// Sends what plugins injected in the last hook call, each toward its side, counted
/// like relayed bytes.
async fn inject<C, S>(
    session: &mut DataFlowSession,
    client: &mut C,
    server: &mut S,
    totals: &mut Totals,
    tap: Option<&Tap>,
) -> std::io::Result<()>
where
    C: AsyncWrite + Unpin + Send,
    S: AsyncWrite + Unpin + Send,
{
    for injected in session.take_injected() {
        let Injected::Data { to_client, data } = injected else { continue };
        if to_client {
            client.write_all(&data).await?;
            client.flush().await?;
            totals.server += data.len() as u64;
        } else {
            server.write_all(&data).await?;
            server.flush().await?;
            totals.client += data.len() as u64;
        }
        if let Some(tap) = tap {
            tap.saw(!to_client, &data);
        }
    }
    Ok(())
}

/// Copies `from` to `to` until `from` ends (then half-closes `to`), counting bytes and
/// noting when the last ones passed (and showing them to the tap, with their side).
async fn copy<R, W>(
    from: &mut R,
    to: &mut W,
    count: &AtomicU64,
    last: &AtomicU64,
    began: Instant,
    tap: Option<(&Tap, bool)>,
) -> std::io::Result<()>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let mut buf = vec![0u8; RELAY_BUFFER];
    loop {
        let n = from.read(&mut buf).await?;
        if n == 0 {
            // A peer that already went away cannot be half-closed; that is not an error.
            let _ = to.shutdown().await;
            return Ok(());
        }
        to.write_all(&buf[..n]).await?;
        to.flush().await?;
        if let Some((tap, from_client)) = tap {
            tap.saw(from_client, &buf[..n]);
        }
        count.fetch_add(n as u64, Ordering::Relaxed);
        last.store(began.elapsed().as_millis() as u64, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const QUICK: Idle = Idle { before_any: Duration::from_millis(200), between: Duration::from_millis(300) };

    #[tokio::test]
    async fn relays_both_ways_and_forwards_half_closes() {
        let (client, mut client_peer) = tokio::io::duplex(1024);
        let (server, mut server_peer) = tokio::io::duplex(1024);
        let relay = tokio::spawn(pump(client, server, QUICK, None));
        // The server speaks first; then the client; then the client closes its side.
        server_peer.write_all(b"SSH-2.0-test\r\n").await.expect("write");
        let mut banner = [0u8; 14];
        client_peer.read_exact(&mut banner).await.expect("banner");
        assert_eq!(&banner, b"SSH-2.0-test\r\n");
        client_peer.write_all(b"hello").await.expect("write");
        client_peer.shutdown().await.expect("half-close");
        let mut got = Vec::new();
        server_peer.read_to_end(&mut got).await.expect("server reads to the client's end");
        assert_eq!(got, b"hello");
        // The server answers after the client's half-close, then closes.
        server_peer.write_all(b"bye").await.expect("write");
        drop(server_peer);
        let mut rest = Vec::new();
        client_peer.read_to_end(&mut rest).await.expect("client reads the rest");
        assert_eq!(rest, b"bye");
        let totals = relay.await.expect("relay");
        assert_eq!((totals.client, totals.server, totals.error), (5, 17, None));
    }

    #[tokio::test]
    async fn silence_and_idleness_end_the_relay() {
        let (client, _client_peer) = tokio::io::duplex(64);
        let (server, _server_peer) = tokio::io::duplex(64);
        let totals = pump(client, server, QUICK, None).await;
        assert!(totals.error.as_deref().is_some_and(|e| e.contains("header_read_timeout")), "{totals:?}");
        let (client, mut client_peer) = tokio::io::duplex(64);
        let (server, mut server_peer) = tokio::io::duplex(64);
        client_peer.write_all(b"x").await.expect("write");
        let relay = tokio::spawn(pump(client, server, QUICK, None));
        let mut one = [0u8; 1];
        server_peer.read_exact(&mut one).await.expect("relayed");
        let totals = relay.await.expect("relay");
        assert!(totals.error.as_deref().is_some_and(|e| e.contains("tcp_timeout")), "{totals:?}");
        assert_eq!(totals.client, 1);
    }
}
