//! Running the plugin chain for a connection and its flows.
//!
//! The network layer makes one [`ConnectionSession`] per client connection and one flow
//! session per flow ([`HttpFlowSession`], [`DataFlowSession`] for TCP and UDP,
//! [`WebSocketFlowSession`], [`DnsFlowSession`]), and calls their hook methods as events
//! happen. Every hook goes through one runner, [`Slots::run`]: in chain order, each
//! plugin that exports the hook's group (and that the flow has not given up on) is
//! called under its limits, and a small fold per hook applies its verdict and the
//! plugin's failure policy. A plugin that does not export a group is never called (and
//! never instantiated) for it.

use std::ops::ControlFlow;
use std::sync::Arc;
use std::time::Instant;

use flowgate_flow::{
    BodyMode, ConnectionInfo, FlowInfo, Hook, Injected, LocalResponse, PluginFailure, Request, Response, TlsDecision,
    Verdict,
};
use tokio::sync::Mutex as AsyncMutex;
use wasmtime::Store;
use wasmtime::component::Resource;

use crate::bindings::{hooks, imports::types};
use crate::host::{ConnectionRes, FlowRes, LENT_REP, RequestRes, ResponseRes, StoreState, from_wit_headers};
use crate::manifest::{FailurePolicy, InstanceModel};
use crate::plugin::{CallReport, LiveGroups, LiveInstance, Plugin};
use filter::FlowFilters;

/// The one chain runner every hook goes through: for each plugin, in order, that
/// implements the hook (its manifest's `hooks` or `hook-list` export say so, or say
/// nothing) and `wants` it (it exports the hook's group, or chose to stream this body), get an instance
/// and run `call` under the plugin's limits (a plugin this flow gave up on is skipped),
/// then hand the outcome to `fold`, which goes on or stops the chain with a value; the
/// chain's value is `Some` of what stopped it, or `None`.
///
/// A macro rather than a function taking an `AsyncFnMut`: `call` is evaluated afresh for
/// each plugin (a new `AsyncFnOnce` closure, reborrowing the flow's state), because
/// calling one async closure repeatedly through `&mut` makes the proxy's futures fail
/// rustc's `Send` check (higher-ranked lifetimes in the closure's future type).
macro_rules! run_chain {
    ($slots:expr, $hook:expr, $flow_id:expr, $wants:expr, $call:expr, $fold:expr $(,)?) => {{
        let wants = $crate::session::wants_fn($wants);
        let mut fold = $crate::session::fold_fn($fold);
        let mut stopped = None;
        for i in 0..$slots.chain.len() {
            if !$slots.chain[i].implements($hook) || !wants(i, &$slots.chain[i]) {
                continue;
            }
            // Boxed: the call's future (wasmtime's, with the fiber's) is large, and would
            // otherwise be inline in every flow's future, plugins or not.
            let outcome = ::std::boxed::Box::pin($slots.call(i, $hook, $flow_id, $call)).await;
            if let ::std::ops::ControlFlow::Break(value) = fold(&mut $slots, i, outcome) {
                stopped = Some(value);
                break;
            }
        }
        stopped
    }};
}

/// Gives `run_chain!`'s plugin filter its type.
fn wants_fn<F: Fn(usize, &Plugin) -> bool>(f: F) -> F {
    f
}

/// Gives `run_chain!`'s fold its type.
fn fold_fn<R, T, F: FnMut(&mut Slots, usize, Call<R>) -> ControlFlow<T>>(f: F) -> F {
    f
}

mod data;
mod dns;
mod filter;
mod http;
mod websocket;

use data::DataProtocol;
pub use data::{DataAction, DataFlowSession};
pub use dns::{DnsAction, DnsFlowSession};
pub use http::{HttpFlowSession, Reroute};
pub use websocket::{WebSocketAction, WebSocketClose, WebSocketFlowSession};

/// The outcome of one message hook call, after the host checked it.
enum Applied {
    Kept,
    Killed,
    Refused(String),
}

/// The ordered list of loaded plugins.
#[derive(Clone, Default, Debug)]
pub struct Chain {
    plugins: Arc<[Arc<Plugin>]>,
}

/// What the HTTP layer must do after a hook.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HttpAction {
    /// Go on.
    Continue,
    /// Answer the client with this response (the upstream is not contacted).
    Respond(LocalResponse),
    /// Close the client connection without a response.
    Kill,
    /// A fail-closed plugin failed: end the flow with an error (502).
    Fail(PluginFailure),
}

impl Chain {
    /// A chain of `plugins`, stably sorted by their manifests' `order`.
    pub fn new(mut plugins: Vec<Arc<Plugin>>) -> Chain {
        plugins.sort_by_key(|p| p.manifest().order);
        Chain { plugins: plugins.into() }
    }

    /// The plugins in call order.
    pub fn plugins(&self) -> &[Arc<Plugin>] {
        &self.plugins
    }

    /// Calls `running` on every plugin that exports the lifecycle group.
    pub async fn running(&self) -> Vec<PluginFailure> {
        self.lifecycle(Hook::Running).await
    }

    /// Calls `done` on every plugin that exports the lifecycle group.
    pub async fn done(&self) -> Vec<PluginFailure> {
        self.lifecycle(Hook::Done).await
    }

    async fn lifecycle(&self, hook: Hook) -> Vec<PluginFailure> {
        let mut failures = Vec::new();
        for plugin in self.plugins.iter() {
            if let Err(f) = plugin.lifecycle(hook).await {
                failures.push(f);
            }
        }
        failures
    }

    /// Starts the session of a new client connection.
    pub fn connection(&self, info: ConnectionInfo) -> ConnectionSession {
        ConnectionSession {
            slots: Slots::new(self.plugins.clone(), per_connection_slots(&self.plugins)),
            info,
            reloadable: None,
        }
    }
}

/// Empty per-connection instance slots, one per plugin.
fn per_connection_slots(plugins: &[Arc<Plugin>]) -> Arc<[AsyncMutex<Option<LiveInstance>>]> {
    plugins.iter().map(|_| AsyncMutex::new(None)).collect()
}

/// The chain a running proxy uses, which a reload replaces while flows run (hot reload,
/// `-s` files watched): each flow runs start to end on the chain that was current when it
/// started, so flows in progress finish on the old plugins and new flows, on old
/// connections too, get the new ones. A connection's own hooks (connect, TLS, disconnect)
/// stay with the chain it started on.
#[derive(Clone, Debug, Default)]
pub struct ChainHandle {
    current: Arc<std::sync::RwLock<Chain>>,
}

impl ChainHandle {
    /// A handle on `chain`.
    pub fn new(chain: Chain) -> ChainHandle {
        ChainHandle { current: Arc::new(std::sync::RwLock::new(chain)) }
    }

    /// The chain new flows get now.
    pub fn current(&self) -> Chain {
        self.current.read().unwrap_or_else(std::sync::PoisonError::into_inner).clone()
    }

    /// Makes `chain` the one new flows get; returns the one it replaces.
    pub fn replace(&self, chain: Chain) -> Chain {
        std::mem::replace(&mut *self.current.write().unwrap_or_else(std::sync::PoisonError::into_inner), chain)
    }

    /// Starts the session of a new client connection on the current chain; its flows
    /// follow later replacements.
    pub fn connection(&self, info: ConnectionInfo) -> ConnectionSession {
        let mut session = self.current().connection(info);
        session.reloadable = Some(self.clone());
        session
    }
}

enum Call<R> {
    /// The plugin was not called (it failed earlier in this flow).
    Skipped,
    /// The hook returned.
    Done(R, CallReport),
    /// The hook (or instantiation) failed, or the plugin was not called: its circuit
    /// breaker is open or its CPU budget refused the call.
    Failed(PluginFailure),
}

/// The instances a flow (or a connection's own hooks) uses, one slot per plugin.
struct Slots {
    chain: Arc<[Arc<Plugin>]>,
    local: Vec<Option<LiveInstance>>,
    per_connection: Arc<[AsyncMutex<Option<LiveInstance>>]>,
    skip: Vec<bool>,
    failures: Vec<PluginFailure>,
    log_dropped: u64,
    /// Messages plugins injected, not yet taken by the network layer.
    injected: Vec<Injected>,
}

impl Slots {
    fn new(chain: Arc<[Arc<Plugin>]>, per_connection: Arc<[AsyncMutex<Option<LiveInstance>>]>) -> Slots {
        let n = chain.len();
        Slots {
            chain,
            local: (0..n).map(|_| None).collect(),
            per_connection,
            skip: vec![false; n],
            failures: Vec::new(),
            log_dropped: 0,
            injected: Vec::new(),
        }
    }

    async fn call<R>(
        &mut self,
        i: usize,
        hook: Hook,
        flow_id: Option<flowgate_flow::Uuid>,
        f: impl AsyncFnOnce(&mut Store<StoreState>, &LiveGroups) -> wasmtime::Result<R>,
    ) -> Call<R> {
        if self.skip[i] {
            return Call::Skipped;
        }
        // The plugin is borrowed from the chain, not cloned: an `Arc` clone per call is a
        // write to a counter every worker shares.
        let Slots { chain, local, per_connection, .. } = self;
        match call_one(&chain[i], &mut local[i], &per_connection[i], hook, flow_id, f).await {
            Ok((value, mut report)) => {
                self.log_dropped += report.log_dropped;
                self.injected.append(&mut report.injected);
                Call::Done(value, report)
            }
            Err(failure) => self.failed(i, failure),
        }
    }

    /// Whether plugin `i` fails its flows when it fails.
    fn fail_closed(&self, i: usize) -> bool {
        self.chain[i].failure_policy() == FailurePolicy::FailClosed
    }

    /// Records an output the host refused (see [`Slots::refuse`]) and stops the chain
    /// with the failure if the plugin is fail-closed.
    fn refused(&mut self, i: usize, hook: Hook, message: String) -> ControlFlow<PluginFailure> {
        let failure = self.refuse(i, hook, message);
        if self.fail_closed(i) { ControlFlow::Break(failure) } else { ControlFlow::Continue(()) }
    }

    /// The usual fold for hooks that return nothing the host acts on: stop only when a
    /// fail-closed plugin failed.
    fn stop_if_fail_closed<R>(&mut self, i: usize, call: Call<R>) -> ControlFlow<PluginFailure> {
        match call {
            Call::Failed(f) if self.fail_closed(i) => ControlFlow::Break(f),
            _ => ControlFlow::Continue(()),
        }
    }

    fn failed<R>(&mut self, i: usize, failure: PluginFailure) -> Call<R> {
        self.skip[i] = true;
        self.failures.push(failure.clone());
        Call::Failed(failure)
    }

    /// Records a verdict the host refused and stops calling the plugin in this flow.
    fn refuse(&mut self, i: usize, hook: Hook, message: String) -> PluginFailure {
        let failure = self.chain[i].invalid_output(hook, message);
        self.local[i] = None;
        self.skip[i] = true;
        self.failures.push(failure.clone());
        failure
    }
}

impl Drop for Slots {
    fn drop(&mut self) {
        for (plugin, slot) in self.chain.iter().zip(self.local.iter_mut()) {
            if let (InstanceModel::Pooled, Some(live)) = (plugin.model(), slot.take()) {
                plugin.release_pooled(live);
            }
        }
    }
}

/// Calls `plugin` with the flow's instance (`local`), the connection's (`shared`) or a
/// pooled one, as its model says, under its limits.
async fn call_one<R>(
    plugin: &Plugin,
    local: &mut Option<LiveInstance>,
    shared: &AsyncMutex<Option<LiveInstance>>,
    hook: Hook,
    flow_id: Option<flowgate_flow::Uuid>,
    f: impl AsyncFnOnce(&mut Store<StoreState>, &LiveGroups) -> wasmtime::Result<R>,
) -> Result<(R, CallReport), PluginFailure> {
    // The permit is held until the call is over: a slot of the plugin's CPU budget, and
    // its breaker's trial when half-open. Taken once the instance is ours to use, so a
    // call waiting for its connection's instance is not a call in progress.
    let model = plugin.model();
    let mut guard = match model {
        InstanceModel::PerConnection => Some(shared.lock().await),
        _ => None,
    };
    let admitted = Instant::now();
    let _permit = plugin.admit(hook, admitted)?;
    let held = match &mut guard {
        Some(guard) => guard.take(),
        None => local.take(),
    };
    let warm = match held {
        None if model == InstanceModel::Pooled => plugin.take_pooled(),
        held => held,
    };
    // A warm instance's call starts when it was admitted; a new one's once it is made.
    let (mut live, started) = match warm {
        Some(live) => (live, admitted),
        None => {
            // Boxed: instantiating is rare, and its future would otherwise make every
            // call's future several times larger.
            match Box::pin(plugin.instantiate()).await {
                Ok(live) => (live, Instant::now()),
                Err(mut failure) => {
                    // Named after the hook it was for.
                    failure.hook = hook;
                    plugin.note_failure(&mut failure);
                    return Err(failure);
                }
            }
        }
    };
    let result = plugin.invoke(&mut live, hook, flow_id, started, f).await;
    if result.is_ok() {
        match &mut guard {
            Some(guard) => **guard = Some(live),
            None => *local = Some(live),
        }
    }
    result
}

/// Lends host values to a plugin for one call (the store's `lent` slots) and takes them
/// back: the handles passed are borrows of those slots.
struct Lent {
    flow: Option<Resource<FlowRes>>,
    conn: Option<Resource<ConnectionRes>>,
    request: Option<Resource<RequestRes>>,
    response: Option<Resource<ResponseRes>>,
}

fn borrow<T: 'static>(r: &Option<Resource<T>>) -> wasmtime::Result<Resource<T>> {
    r.as_ref().map(|r| Resource::new_borrow(r.rep())).ok_or_else(|| wasmtime::format_err!("resource not lent"))
}

impl Lent {
    fn new(
        store: &mut Store<StoreState>,
        flow: Option<&mut FlowInfo>,
        conn: Option<&mut ConnectionInfo>,
        request: Option<&mut Request>,
        response: Option<&mut Response>,
    ) -> Lent {
        fn put<V: Default, T: 'static>(slot: &mut Option<V>, value: Option<&mut V>) -> Option<Resource<T>> {
            let value = value?;
            *slot = Some(std::mem::take(value));
            Some(Resource::new_borrow(LENT_REP))
        }
        let lent = &mut store.data_mut().lent;
        Lent {
            flow: put(&mut lent.flow, flow),
            conn: put(&mut lent.conn, conn),
            request: put(&mut lent.request, request),
            response: put(&mut lent.response, response),
        }
    }

    /// Takes everything back, even after a trap.
    fn restore(
        self,
        store: &mut Store<StoreState>,
        flow: Option<&mut FlowInfo>,
        conn: Option<&mut ConnectionInfo>,
        request: Option<&mut Request>,
        response: Option<&mut Response>,
    ) {
        fn take<V>(slot: &mut Option<V>, out: Option<&mut V>) {
            if let (Some(v), Some(out)) = (slot.take(), out) {
                *out = v;
            }
        }
        let lent = &mut store.data_mut().lent;
        take(&mut lent.flow, flow);
        take(&mut lent.conn, conn);
        take(&mut lent.request, request);
        take(&mut lent.response, response);
    }
}

/// Validates a verdict a plugin returned; a local response's body is capped at the
/// plugin's `max_body_bytes`.
fn convert_verdict(v: types::Verdict, max_body: usize) -> Result<Verdict, String> {
    Ok(match v {
        types::Verdict::Continue => Verdict::Continue,
        types::Verdict::Kill => Verdict::Kill,
        types::Verdict::Respond(local) => {
            // A local response is final: no 1xx, no 101 (nothing was upgraded).
            if !(200..=999).contains(&local.status) {
                return Err(format!("local response status {} is not a final status (200..=999)", local.status));
            }
            if local.body.len() > max_body {
                return Err(format!(
                    "a local response body of {} bytes is over limits.max_body_bytes ({max_body})",
                    local.body.len()
                ));
            }
            let headers = from_wit_headers(&local.headers).map_err(|e| format!("local response: {e}"))?;
            Verdict::Respond(LocalResponse { status: local.status, headers, body: local.body.into() })
        }
    })
}

/// The session of one client connection: connection and TLS hooks, and the parent of
/// its flows. Plugins with the `per-connection` instance model keep one instance here.
pub struct ConnectionSession {
    slots: Slots,
    /// What is known about the connection; plugins read it in connection and TLS hooks.
    pub info: ConnectionInfo,
    /// Where its flows look for a newer chain, if the proxy reloads plugins.
    reloadable: Option<ChainHandle>,
}

/// Which side of the proxy a TLS event is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TlsSide {
    /// Between the client and flowgate.
    Client,
    /// Between flowgate and the upstream.
    Server,
}

/// What starts the sessions of a connection's flows, apart from the connection's own
/// session: flows start without waiting for a connection hook in progress (an HTTP/2
/// stream does not queue behind another stream's server-connect). Cheap to clone.
#[derive(Clone)]
pub struct FlowStarter {
    chain: Arc<[Arc<Plugin>]>,
    per_connection: Arc<[AsyncMutex<Option<LiveInstance>>]>,
    reloadable: Option<ChainHandle>,
}

impl std::fmt::Debug for FlowStarter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FlowStarter").field("plugins", &self.chain.len()).finish()
    }
}

impl FlowStarter {
    /// The instance slots of a new flow: on the connection's chain, or on a newer one a
    /// reload made current since the connection began (per-connection instances then
    /// start afresh for that flow: they belong to the old plugins).
    fn slots(&self) -> Slots {
        if let Some(handle) = &self.reloadable {
            let now = handle.current();
            if !Arc::ptr_eq(&now.plugins, &self.chain) {
                let fresh = per_connection_slots(&now.plugins);
                return Slots::new(now.plugins, fresh);
            }
        }
        Slots::new(self.chain.clone(), self.per_connection.clone())
    }

    /// Starts the session of one HTTP exchange on this connection.
    pub fn http_flow(&self, flow: FlowInfo) -> HttpFlowSession {
        let slots = self.slots();
        let n = slots.chain.len();
        HttpFlowSession {
            filters: FlowFilters::new(&slots.chain),
            slots,
            flow,
            request_modes: vec![BodyMode::Pass; n],
            reroute: None,
            response_modes: vec![BodyMode::Pass; n],
        }
    }

    /// Starts the session of a raw TCP flow on this connection.
    pub fn tcp_flow(&self, flow: FlowInfo) -> DataFlowSession {
        let slots = self.slots();
        DataFlowSession { filters: FlowFilters::new(&slots.chain), slots, flow, protocol: DataProtocol::Tcp }
    }

    /// Starts the session of a UDP flow on this connection.
    pub fn udp_flow(&self, flow: FlowInfo) -> DataFlowSession {
        let slots = self.slots();
        DataFlowSession { filters: FlowFilters::new(&slots.chain), slots, flow, protocol: DataProtocol::Udp }
    }

    /// Starts the session of a WebSocket flow on this connection.
    pub fn websocket_flow(&self, flow: FlowInfo) -> WebSocketFlowSession {
        WebSocketFlowSession { slots: self.slots(), flow }
    }

    /// Starts the session of a DNS flow on this connection.
    pub fn dns_flow(&self, flow: FlowInfo) -> DnsFlowSession {
        DnsFlowSession { slots: self.slots(), flow }
    }
}

impl ConnectionSession {
    /// What starts this connection's flows, usable while the session itself is busy.
    pub fn flows(&self) -> FlowStarter {
        FlowStarter {
            chain: self.slots.chain.clone(),
            per_connection: self.slots.per_connection.clone(),
            reloadable: self.reloadable.clone(),
        }
    }

    /// Starts the session of one HTTP exchange on this connection.
    pub fn http_flow(&self, flow: FlowInfo) -> HttpFlowSession {
        self.flows().http_flow(flow)
    }

    /// Starts the session of a raw TCP flow on this connection.
    pub fn tcp_flow(&self, flow: FlowInfo) -> DataFlowSession {
        self.flows().tcp_flow(flow)
    }

    /// Starts the session of a UDP flow on this connection.
    pub fn udp_flow(&self, flow: FlowInfo) -> DataFlowSession {
        self.flows().udp_flow(flow)
    }

    /// Starts the session of a WebSocket flow on this connection.
    pub fn websocket_flow(&self, flow: FlowInfo) -> WebSocketFlowSession {
        self.flows().websocket_flow(flow)
    }

    /// Starts the session of a DNS flow on this connection.
    pub fn dns_flow(&self, flow: FlowInfo) -> DnsFlowSession {
        self.flows().dns_flow(flow)
    }

    /// Failures recorded by this connection's own hooks.
    pub fn failures(&self) -> &[PluginFailure] {
        &self.slots.failures
    }

    /// Runs a connection hook that may veto; false means close (or fail) the connection.
    async fn conn_chain(&mut self, hook: Hook) -> bool {
        let info = &mut self.info;
        let stopped = run_chain!(
            self.slots,
            hook,
            None,
            |_, p| p.groups.connection.is_some(),
            async |store, groups| {
                let Some(g) = &groups.connection else { return Ok(true) };
                let lent = Lent::new(store, None, Some(&mut *info), None, None);
                let c = borrow(&lent.conn)?;
                let out = match hook {
                    Hook::ClientConnected => g.call_client_connected(&mut *store, c).await,
                    Hook::ServerConnect => g.call_server_connect(&mut *store, c).await,
                    Hook::ClientDisconnected => g.call_client_disconnected(&mut *store, c).await.map(|()| true),
                    Hook::ServerConnected => g.call_server_connected(&mut *store, c).await.map(|()| true),
                    _ => g.call_server_disconnected(&mut *store, c).await.map(|()| true),
                };
                lent.restore(store, None, Some(&mut *info), None, None);
                out
            },
            |slots, i, call| match call {
                Call::Done(false, _) => ControlFlow::Break(()),
                Call::Failed(_) if slots.fail_closed(i) => ControlFlow::Break(()),
                _ => ControlFlow::Continue(()),
            },
        );
        stopped.is_none()
    }

    /// `client-connected`: false means close the connection now.
    pub async fn client_connected(&mut self) -> bool {
        self.conn_chain(Hook::ClientConnected).await
    }

    /// `client-disconnected`.
    pub async fn client_disconnected(&mut self) {
        self.conn_chain(Hook::ClientDisconnected).await;
    }

    /// Whether a plugin of the connection's chain is called for `hook`.
    pub fn calls(&self, hook: Hook) -> bool {
        self.slots.chain.iter().any(|p| p.is_called_for(hook))
    }

    /// `server-connect`: false means do not connect (the flow fails).
    pub async fn server_connect(&mut self) -> bool {
        self.conn_chain(Hook::ServerConnect).await
    }

    /// `server-connected`.
    pub async fn server_connected(&mut self) {
        self.conn_chain(Hook::ServerConnected).await;
    }

    /// `server-disconnected`.
    pub async fn server_disconnected(&mut self) {
        self.conn_chain(Hook::ServerDisconnected).await;
    }

    /// `tls-clienthello`: pass through if any plugin says so. `Err` means a fail-closed
    /// plugin failed and the connection must be closed.
    pub async fn tls_clienthello(&mut self, sni: Option<&str>, alpn: &[String]) -> Result<TlsDecision, PluginFailure> {
        let info = &mut self.info;
        let hello = hooks::tls::ClientHello { sni: sni.map(str::to_owned), alpn_protocols: alpn.to_vec() };
        let mut decision = TlsDecision::Intercept;
        let failed = run_chain!(
            self.slots,
            Hook::TlsClienthello,
            None,
            |_, p| p.groups.tls.is_some(),
            async |store, groups| {
                let Some(g) = &groups.tls else { return Ok(types::TlsDecision::Intercept) };
                let lent = Lent::new(store, None, Some(&mut *info), None, None);
                let out = g.call_tls_clienthello(&mut *store, borrow(&lent.conn)?, &hello).await;
                lent.restore(store, None, Some(&mut *info), None, None);
                out
            },
            |slots, i, call| {
                if let Call::Done(types::TlsDecision::Passthrough, _) = call {
                    decision = TlsDecision::Passthrough;
                }
                slots.stop_if_fail_closed(i, call)
            },
        );
        match failed {
            Some(f) => Err(f),
            None => Ok(decision),
        }
    }

    /// `tls-established` or, with a message, `tls-failed`.
    pub async fn tls_result(&mut self, side: TlsSide, failed: Option<&str>) {
        let hook = if failed.is_some() { Hook::TlsFailed } else { Hook::TlsEstablished };
        let wit_side = match side {
            TlsSide::Client => hooks::tls::Side::Client,
            TlsSide::Server => hooks::tls::Side::Server,
        };
        let info = &mut self.info;
        run_chain!(
            self.slots,
            hook,
            None,
            |_, p| p.groups.tls.is_some(),
            async |store, groups| {
                let Some(g) = &groups.tls else { return Ok(()) };
                let lent = Lent::new(store, None, Some(&mut *info), None, None);
                let c = borrow(&lent.conn)?;
                let out = match failed {
                    Some(message) => g.call_tls_failed(&mut *store, c, wit_side, message).await,
                    None => g.call_tls_established(&mut *store, c, wit_side).await,
                };
                lent.restore(store, None, Some(&mut *info), None, None);
                out
            },
            |_, _, _| ControlFlow::<()>::Continue(()),
        );
    }
}
