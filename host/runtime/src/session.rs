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

use flowgate_flow::{
    BodyMode, ConnectionInfo, DnsMessage, FlowInfo, Hook, Injected, LocalResponse, MessageKind, PluginFailure, Request,
    Response, TlsDecision, Verdict, WebSocketMessage,
};
use tokio::sync::Mutex as AsyncMutex;
use wasmtime::Store;
use wasmtime::component::Resource;

use crate::bindings::{hooks, imports::types};
use crate::host::{ConnectionRes, FlowRes, RequestRes, ResponseRes, StoreState, from_wit_headers};
use crate::manifest::{FailurePolicy, InstanceModel};
use crate::plugin::{CallReport, LiveGroups, LiveInstance, Plugin};

/// The one chain runner every hook goes through: for each plugin, in order, that
/// `wants` (it exports the hook's group, or chose to stream this body), get an instance
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
        let wants = wants_fn($wants);
        let mut fold = fold_fn($fold);
        let mut stopped = None;
        for i in 0..$slots.chain.len() {
            if !wants(i, &$slots.chain[i]) {
                continue;
            }
            let outcome = $slots.call(i, $hook, $flow_id, $call).await;
            if let ControlFlow::Break(value) = fold(&mut $slots, i, outcome) {
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
        let shared: Arc<[AsyncMutex<Option<LiveInstance>>]> =
            self.plugins.iter().map(|_| AsyncMutex::new(None)).collect();
        ConnectionSession { slots: Slots::new(self.plugins.clone(), shared), info }
    }
}

enum Call<R> {
    /// The plugin was not called (it failed earlier in this flow).
    Skipped,
    /// The hook returned.
    Done(R, CallReport),
    /// The hook (or instantiation) failed, or the plugin is quarantined.
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
        let plugin = self.chain[i].clone();
        if self.skip[i] {
            return Call::Skipped;
        }
        if plugin.is_quarantined() {
            return self.failed(i, plugin.quarantine_failure(hook));
        }
        let result = match plugin.model() {
            InstanceModel::PerConnection => {
                let shared = self.per_connection.clone();
                let mut guard = shared[i].lock().await;
                let mut live = match guard.take() {
                    Some(live) => live,
                    None => match plugin.instantiate().await {
                        Ok(live) => live,
                        Err(failure) => return self.instantiate_failed(i, &plugin, hook, failure),
                    },
                };
                let result = plugin.invoke(&mut live, hook, flow_id, f).await;
                if result.is_ok() {
                    *guard = Some(live);
                }
                result
            }
            model @ (InstanceModel::PerFlow | InstanceModel::Pooled) => {
                let mut live = match self.local[i].take() {
                    Some(live) => live,
                    None => {
                        let made = if model == InstanceModel::Pooled {
                            plugin.acquire_pooled().await
                        } else {
                            plugin.instantiate().await
                        };
                        match made {
                            Ok(live) => live,
                            Err(failure) => return self.instantiate_failed(i, &plugin, hook, failure),
                        }
                    }
                };
                let result = plugin.invoke(&mut live, hook, flow_id, f).await;
                if result.is_ok() {
                    self.local[i] = Some(live);
                }
                result
            }
        };
        match result {
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

    /// The usual fold for hooks that return nothing the host acts on: stop only when a
    /// fail-closed plugin failed.
    fn stop_if_fail_closed<R>(&mut self, i: usize, call: Call<R>) -> ControlFlow<PluginFailure> {
        match call {
            Call::Failed(f) if self.fail_closed(i) => ControlFlow::Break(f),
            _ => ControlFlow::Continue(()),
        }
    }

    /// Records that no instance could be made for `hook` (named after the hook it was for).
    fn instantiate_failed<R>(&mut self, i: usize, plugin: &Plugin, hook: Hook, mut failure: PluginFailure) -> Call<R> {
        failure.hook = hook;
        plugin.note_failure(&failure);
        self.failed(i, failure)
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

/// Puts host values into a store's resource table for one call and takes them back.
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
    ) -> wasmtime::Result<Lent> {
        let table = &mut store.data_mut().table;
        Ok(Lent {
            flow: flow.map(|f| table.push(FlowRes(std::mem::take(f)))).transpose()?,
            conn: conn.map(|c| table.push(ConnectionRes(std::mem::take(c)))).transpose()?,
            request: request.map(|r| table.push(RequestRes(std::mem::take(r)))).transpose()?,
            response: response.map(|r| table.push(ResponseRes(std::mem::take(r)))).transpose()?,
        })
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
        let table = &mut store.data_mut().table;
        if let (Some(r), Some(out)) = (self.flow, flow)
            && let Ok(v) = table.delete(r)
        {
            *out = v.0;
        }
        if let (Some(r), Some(out)) = (self.conn, conn)
            && let Ok(v) = table.delete(r)
        {
            *out = v.0;
        }
        if let (Some(r), Some(out)) = (self.request, request)
            && let Ok(v) = table.delete(r)
        {
            *out = v.0;
        }
        if let (Some(r), Some(out)) = (self.response, response)
            && let Ok(v) = table.delete(r)
        {
            *out = v.0;
        }
    }
}

/// Validates a verdict a plugin returned.
fn convert_verdict(v: types::Verdict) -> Result<Verdict, String> {
    Ok(match v {
        types::Verdict::Continue => Verdict::Continue,
        types::Verdict::Kill => Verdict::Kill,
        types::Verdict::Respond(local) => {
            if !(100..=999).contains(&local.status) {
                return Err(format!("local response status {} is outside 100..=999", local.status));
            }
            let headers = from_wit_headers(&local.headers).map_err(|e| format!("local response: {e}"))?;
            Verdict::Respond(LocalResponse { status: local.status, headers, body: local.body })
        }
    })
}

/// The session of one client connection: connection and TLS hooks, and the parent of
/// its flows. Plugins with the `per-connection` instance model keep one instance here.
pub struct ConnectionSession {
    slots: Slots,
    /// What is known about the connection; plugins read it in connection and TLS hooks.
    pub info: ConnectionInfo,
}

/// Which side of the proxy a TLS event is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TlsSide {
    /// Between the client and flowgate.
    Client,
    /// Between flowgate and the upstream.
    Server,
}

impl ConnectionSession {
    fn child(&self) -> Slots {
        Slots::new(self.slots.chain.clone(), self.slots.per_connection.clone())
    }

    /// Starts the session of one HTTP exchange on this connection.
    pub fn http_flow(&self, flow: FlowInfo) -> HttpFlowSession {
        let n = self.slots.chain.len();
        HttpFlowSession {
            slots: self.child(),
            flow,
            request_modes: vec![BodyMode::Pass; n],
            response_modes: vec![BodyMode::Pass; n],
        }
    }

    /// Starts the session of a raw TCP flow on this connection.
    pub fn tcp_flow(&self, flow: FlowInfo) -> DataFlowSession {
        DataFlowSession { slots: self.child(), flow, protocol: DataProtocol::Tcp }
    }

    /// Starts the session of a UDP flow on this connection.
    pub fn udp_flow(&self, flow: FlowInfo) -> DataFlowSession {
        DataFlowSession { slots: self.child(), flow, protocol: DataProtocol::Udp }
    }

    /// Starts the session of a WebSocket flow on this connection.
    pub fn websocket_flow(&self, flow: FlowInfo) -> WebSocketFlowSession {
        WebSocketFlowSession { slots: self.child(), flow }
    }

    /// Starts the session of a DNS flow on this connection.
    pub fn dns_flow(&self, flow: FlowInfo) -> DnsFlowSession {
        DnsFlowSession { slots: self.child(), flow }
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
                let lent = Lent::new(store, None, Some(&mut *info), None, None)?;
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
                let lent = Lent::new(store, None, Some(&mut *info), None, None)?;
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
                let lent = Lent::new(store, None, Some(&mut *info), None, None)?;
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

/// The session of one HTTP exchange: runs the HTTP hooks and records what went wrong.
pub struct HttpFlowSession {
    slots: Slots,
    /// The flow; plugins read it and annotate its metadata.
    pub flow: FlowInfo,
    request_modes: Vec<BodyMode>,
    response_modes: Vec<BodyMode>,
}

impl HttpFlowSession {
    /// Plugin failures recorded on this flow, in order.
    pub fn failures(&self) -> &[PluginFailure] {
        &self.slots.failures
    }

    /// Log lines dropped because a plugin went over its log cap.
    pub fn log_dropped(&self) -> u64 {
        self.slots.log_dropped
    }

    /// Whether any plugin exports the HTTP group (if not, the fast path needs no calls).
    pub fn has_http_plugins(&self) -> bool {
        self.slots.chain.iter().any(|p| p.groups.http.is_some())
    }

    async fn chain(&mut self, hook: Hook, request: &mut Request, mut response: Option<&mut Response>) -> HttpAction {
        let flow = &mut self.flow;
        let flow_id = flow.id;
        let modes = match hook {
            Hook::RequestHeaders => Some(&mut self.request_modes),
            Hook::ResponseHeaders => Some(&mut self.response_modes),
            _ => None,
        };
        let mut modes = modes;
        let action = run_chain!(
            self.slots,
            hook,
            Some(flow_id),
            |_, p| p.groups.http.is_some(),
            async |store, groups| {
                let Some(g) = &groups.http else { return Ok(types::Verdict::Continue) };
                let has_resp = response.is_some();
                let lent = Lent::new(store, Some(&mut *flow), None, Some(&mut *request), response.as_deref_mut())?;
                let (f, r) = (borrow(&lent.flow)?, borrow(&lent.request)?);
                let out = match hook {
                    Hook::RequestHeaders => g.call_request_headers(&mut *store, f, r).await,
                    Hook::Request => g.call_request(&mut *store, f, r).await,
                    Hook::HttpConnect => g.call_http_connect(&mut *store, f, r).await,
                    Hook::ResponseHeaders if has_resp => {
                        g.call_response_headers(&mut *store, f, r, borrow(&lent.response)?).await
                    }
                    _ if has_resp => g.call_response(&mut *store, f, r, borrow(&lent.response)?).await,
                    _ => Err(wasmtime::format_err!("{hook} needs a response")),
                };
                lent.restore(store, Some(&mut *flow), None, Some(&mut *request), response.as_deref_mut());
                // The body mode a plugin chose here: the strongest of them applies.
                if out.is_ok()
                    && let Some(mode) = store.data().call.body_mode
                {
                    match (hook, response.as_deref_mut()) {
                        (Hook::RequestHeaders, _) => request.body_mode = request.body_mode.max(mode),
                        (Hook::ResponseHeaders, Some(resp)) => resp.body_mode = resp.body_mode.max(mode),
                        _ => {}
                    }
                }
                out
            },
            |slots, i, call| match call {
                Call::Skipped => ControlFlow::Continue(()),
                Call::Failed(f) if slots.fail_closed(i) => ControlFlow::Break(HttpAction::Fail(f)),
                Call::Failed(_) => ControlFlow::Continue(()),
                Call::Done(verdict, report) => {
                    if let (Some(modes), Some(mode)) = (modes.as_deref_mut(), report.body_mode) {
                        modes[i] = mode;
                    }
                    match convert_verdict(verdict) {
                        Ok(Verdict::Continue) => ControlFlow::Continue(()),
                        Ok(Verdict::Respond(local)) => ControlFlow::Break(HttpAction::Respond(local)),
                        Ok(Verdict::Kill) => ControlFlow::Break(HttpAction::Kill),
                        Err(message) => {
                            let f = slots.refuse(i, hook, message);
                            if slots.fail_closed(i) {
                                ControlFlow::Break(HttpAction::Fail(f))
                            } else {
                                ControlFlow::Continue(())
                            }
                        }
                    }
                }
            },
        );
        action.unwrap_or(HttpAction::Continue)
    }

    /// `http-connect`: an explicit proxy received CONNECT.
    pub async fn http_connect(&mut self, request: &mut Request) -> HttpAction {
        self.chain(Hook::HttpConnect, request, None).await
    }

    /// `request-headers`: plugins may choose a body mode; `request.body_mode` becomes the
    /// strongest any of them chose.
    pub async fn request_headers(&mut self, request: &mut Request) -> HttpAction {
        self.chain(Hook::RequestHeaders, request, None).await
    }

    /// `request`: the whole request (its body in `request.body` if buffered).
    pub async fn request(&mut self, request: &mut Request) -> HttpAction {
        self.chain(Hook::Request, request, None).await
    }

    /// `response-headers`.
    pub async fn response_headers(&mut self, request: &mut Request, response: &mut Response) -> HttpAction {
        self.chain(Hook::ResponseHeaders, request, Some(response)).await
    }

    /// `response`: the whole response (its body in `response.body` if buffered).
    pub async fn response(&mut self, request: &mut Request, response: &mut Response) -> HttpAction {
        self.chain(Hook::Response, request, Some(response)).await
    }

    /// Passes a request body chunk through every plugin that chose `stream`.
    pub async fn request_body_chunk(
        &mut self,
        request: &mut Request,
        chunk: Vec<u8>,
        end: bool,
    ) -> Result<Vec<u8>, HttpAction> {
        self.body_chunk(Hook::RequestBodyChunk, request, None, chunk, end).await
    }

    /// Passes a response body chunk through every plugin that chose `stream`.
    pub async fn response_body_chunk(
        &mut self,
        request: &mut Request,
        response: &mut Response,
        chunk: Vec<u8>,
        end: bool,
    ) -> Result<Vec<u8>, HttpAction> {
        self.body_chunk(Hook::ResponseBodyChunk, request, Some(response), chunk, end).await
    }

    async fn body_chunk(
        &mut self,
        hook: Hook,
        request: &mut Request,
        mut response: Option<&mut Response>,
        mut chunk: Vec<u8>,
        end: bool,
    ) -> Result<Vec<u8>, HttpAction> {
        let modes = if hook == Hook::RequestBodyChunk { &self.request_modes } else { &self.response_modes };
        let flow = &mut self.flow;
        let flow_id = flow.id;
        let data = &mut chunk;
        let failed = run_chain!(
            self.slots,
            hook,
            Some(flow_id),
            |i, _| modes[i] == BodyMode::Stream,
            async |store, groups| {
                let Some(g) = &groups.http else { return Ok(()) };
                let lent = Lent::new(store, Some(&mut *flow), None, Some(&mut *request), response.as_deref_mut())?;
                let (f, r) = (borrow(&lent.flow)?, borrow(&lent.request)?);
                let out = match &lent.response {
                    Some(_) => g.call_response_body_chunk(&mut *store, f, r, borrow(&lent.response)?, data, end).await,
                    None => g.call_request_body_chunk(&mut *store, f, r, data, end).await,
                };
                lent.restore(store, Some(&mut *flow), None, Some(&mut *request), response.as_deref_mut());
                // Each plugin gets what the one before it made.
                out.map(|replacement| *data = replacement)
            },
            |slots, i, call| slots.stop_if_fail_closed(i, call),
        );
        match failed {
            Some(f) => Err(HttpAction::Fail(f)),
            None => Ok(chunk),
        }
    }

    /// `error`: the flow failed; informational.
    pub async fn error(&mut self, request: &mut Request, message: &str) {
        let flow = &mut self.flow;
        let flow_id = flow.id;
        run_chain!(
            self.slots,
            Hook::Error,
            Some(flow_id),
            |_, p| p.groups.http.is_some(),
            async |store, groups| {
                let Some(g) = &groups.http else { return Ok(()) };
                let lent = Lent::new(store, Some(&mut *flow), None, Some(&mut *request), None)?;
                let out = g.call_error(&mut *store, borrow(&lent.flow)?, borrow(&lent.request)?, message).await;
                lent.restore(store, Some(&mut *flow), None, Some(&mut *request), None);
                out
            },
            |_, _, _| ControlFlow::<()>::Continue(()),
        );
    }
}

/// What the network layer does with a TCP or UDP message, or a flow, after the hooks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DataAction {
    /// Send these bytes on (what the plugins made of the message; empty: nothing).
    Forward(Vec<u8>),
    /// A plugin killed the flow: close both sides.
    Kill,
    /// A fail-closed plugin failed: end the flow with an error.
    Fail(PluginFailure),
}

/// Which data group a [`DataFlowSession`] calls.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum DataProtocol {
    Tcp,
    Udp,
}

/// The session of one raw TCP or UDP flow: start, each message, end or error.
pub struct DataFlowSession {
    slots: Slots,
    /// The flow.
    pub flow: FlowInfo,
    protocol: DataProtocol,
}

/// The outcome of one data hook call, after the host checked it.
enum Applied {
    Kept,
    Killed,
    Refused(String),
}

impl DataFlowSession {
    /// Plugin failures recorded on this flow, in order.
    pub fn failures(&self) -> &[PluginFailure] {
        &self.slots.failures
    }

    /// Messages plugins injected since the last call, in order (to be sent after what
    /// the hook returned).
    pub fn take_injected(&mut self) -> Vec<Injected> {
        std::mem::take(&mut self.slots.injected)
    }

    /// Whether any plugin exports this flow's group; if not, messages need no calls.
    pub fn has_plugins(&self) -> bool {
        let protocol = self.protocol;
        self.slots.chain.iter().any(|p| exports_data(p, protocol))
    }

    /// `tcp-start` / `udp-start`.
    pub async fn start(&mut self) -> DataAction {
        let hook = if self.protocol == DataProtocol::Tcp { Hook::TcpStart } else { Hook::UdpStart };
        self.lifecycle(hook, None).await
    }

    /// `tcp-end` / `udp-end`.
    pub async fn end(&mut self) {
        let hook = if self.protocol == DataProtocol::Tcp { Hook::TcpEnd } else { Hook::UdpEnd };
        self.lifecycle(hook, None).await;
    }

    /// `tcp-error` / `udp-error`.
    pub async fn error(&mut self, message: &str) {
        let hook = if self.protocol == DataProtocol::Tcp { Hook::TcpError } else { Hook::UdpError };
        self.lifecycle(hook, Some(message)).await;
    }

    async fn lifecycle(&mut self, hook: Hook, message: Option<&str>) -> DataAction {
        let (flow, protocol) = (&mut self.flow, self.protocol);
        let flow_id = flow.id;
        let failed = run_chain!(
            self.slots,
            hook,
            Some(flow_id),
            |_, p| exports_data(p, protocol),
            async |store, groups| {
                let lent = Lent::new(store, Some(&mut *flow), None, None, None)?;
                let f = borrow(&lent.flow)?;
                let out = match (&groups.tcp, &groups.udp, hook) {
                    (Some(g), _, Hook::TcpStart) => g.call_tcp_start(&mut *store, f).await,
                    (Some(g), _, Hook::TcpEnd) => g.call_tcp_end(&mut *store, f).await,
                    (Some(g), _, Hook::TcpError) => g.call_tcp_error(&mut *store, f, message.unwrap_or("")).await,
                    (_, Some(g), Hook::UdpStart) => g.call_udp_start(&mut *store, f).await,
                    (_, Some(g), Hook::UdpEnd) => g.call_udp_end(&mut *store, f).await,
                    (_, Some(g), Hook::UdpError) => g.call_udp_error(&mut *store, f, message.unwrap_or("")).await,
                    _ => Ok(()),
                };
                lent.restore(store, Some(&mut *flow), None, None, None);
                out
            },
            |slots, i, call| slots.stop_if_fail_closed(i, call),
        );
        match failed {
            Some(f) => DataAction::Fail(f),
            None => DataAction::Forward(Vec::new()),
        }
    }

    /// `tcp-message` / `udp-message`: each plugin in turn sees what the one before it
    /// made of `data`; a replacement larger than the plugin's `max_body_bytes` is refused.
    pub async fn message(&mut self, from_client: bool, data: Vec<u8>) -> DataAction {
        let (flow, protocol) = (&mut self.flow, self.protocol);
        let flow_id = flow.id;
        let hook = if protocol == DataProtocol::Tcp { Hook::TcpMessage } else { Hook::UdpMessage };
        let mut data = data;
        let current = &mut data;
        let stopped = run_chain!(
            self.slots,
            hook,
            Some(flow_id),
            |_, p| exports_data(p, protocol),
            async |store, groups| {
                let lent = Lent::new(store, Some(&mut *flow), None, None, None)?;
                let f = borrow(&lent.flow)?;
                let out = match (&groups.tcp, &groups.udp) {
                    (Some(g), _) if protocol == DataProtocol::Tcp => {
                        g.call_tcp_message(&mut *store, f, from_client, current).await
                    }
                    (_, Some(g)) => g.call_udp_message(&mut *store, f, from_client, current).await,
                    _ => Ok(types::DataVerdict::Continue),
                };
                lent.restore(store, Some(&mut *flow), None, None, None);
                let limit = store.data().plugin.manifest.limits.max_body_bytes;
                out.map(|verdict| match verdict {
                    types::DataVerdict::Continue => Applied::Kept,
                    types::DataVerdict::Kill => Applied::Killed,
                    types::DataVerdict::Replace(bytes) if bytes.len() > limit => Applied::Refused(format!(
                        "a replacement of {} bytes is over limits.max_body_bytes ({limit})",
                        bytes.len()
                    )),
                    types::DataVerdict::Replace(bytes) => {
                        *current = bytes;
                        Applied::Kept
                    }
                })
            },
            |slots, i, call| match call {
                Call::Done(Applied::Killed, _) => ControlFlow::Break(DataAction::Kill),
                Call::Done(Applied::Refused(message), _) => {
                    let f = slots.refuse(i, hook, message);
                    if slots.fail_closed(i) {
                        ControlFlow::Break(DataAction::Fail(f))
                    } else {
                        ControlFlow::Continue(())
                    }
                }
                other => slots.stop_if_fail_closed(i, other).map_break(DataAction::Fail),
            },
        );
        stopped.unwrap_or(DataAction::Forward(data))
    }
}

fn exports_data(plugin: &Plugin, protocol: DataProtocol) -> bool {
    match protocol {
        DataProtocol::Tcp => plugin.groups.tcp.is_some(),
        DataProtocol::Udp => plugin.groups.udp.is_some(),
    }
}

/// What the WebSocket layer does with a message after the hooks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WebSocketAction {
    /// Send these messages on, in the same direction (none: the message is dropped).
    Forward(Vec<WebSocketMessage>),
    /// A plugin killed the flow: close both sides.
    Kill,
    /// A fail-closed plugin failed: end the flow with an error.
    Fail(PluginFailure),
}

/// How a WebSocket ended, as `websocket-end` reports it.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct WebSocketClose {
    /// The close code, if a close frame carried one.
    pub code: Option<u16>,
    /// The close frame's reason (empty if none).
    pub reason: String,
    /// Whether the client closed first.
    pub closed_by_client: bool,
}

/// The session of one WebSocket flow: start, each message, end.
pub struct WebSocketFlowSession {
    slots: Slots,
    /// The flow.
    pub flow: FlowInfo,
}

impl WebSocketFlowSession {
    /// Plugin failures recorded on this flow, in order.
    pub fn failures(&self) -> &[PluginFailure] {
        &self.slots.failures
    }

    /// Messages plugins injected since the last call, in order.
    pub fn take_injected(&mut self) -> Vec<Injected> {
        std::mem::take(&mut self.slots.injected)
    }

    /// Whether any plugin exports the websocket group.
    pub fn has_plugins(&self) -> bool {
        self.slots.chain.iter().any(|p| p.groups.websocket.is_some())
    }

    /// `websocket-start`.
    pub async fn start(&mut self) -> Option<PluginFailure> {
        self.lifecycle(Hook::WebsocketStart, None).await
    }

    /// `websocket-end`: how it closed.
    pub async fn end(&mut self, close: &WebSocketClose) {
        self.lifecycle(Hook::WebsocketEnd, Some(close)).await;
    }

    async fn lifecycle(&mut self, hook: Hook, close: Option<&WebSocketClose>) -> Option<PluginFailure> {
        let close = close.map(|c| hooks::websocket::Close {
            code: c.code,
            reason: c.reason.clone(),
            closed_by_client: c.closed_by_client,
        });
        let flow = &mut self.flow;
        let flow_id = flow.id;
        run_chain!(
            self.slots,
            hook,
            Some(flow_id),
            |_, p| p.groups.websocket.is_some(),
            async |store, groups| {
                let Some(g) = &groups.websocket else { return Ok(()) };
                let lent = Lent::new(store, Some(&mut *flow), None, None, None)?;
                let f = borrow(&lent.flow)?;
                let out = match hook {
                    Hook::WebsocketStart => g.call_websocket_start(&mut *store, f).await,
                    _ => match &close {
                        Some(close) => g.call_websocket_end(&mut *store, f, close).await,
                        None => Err(wasmtime::format_err!("websocket-end needs how it closed")),
                    },
                };
                lent.restore(store, Some(&mut *flow), None, None, None);
                out
            },
            |slots, i, call| slots.stop_if_fail_closed(i, call),
        )
    }

    /// `websocket-message`: each plugin sees every message the one before it let through
    /// (a replacement list may drop the message or add more); each message a plugin
    /// returns is checked (same direction, text is UTF-8, control frames short, at most
    /// the plugin's `max_body_bytes`).
    pub async fn message(&mut self, message: WebSocketMessage) -> WebSocketAction {
        let flow = &mut self.flow;
        let flow_id = flow.id;
        let from_client = message.from_client;
        let mut messages = vec![message];
        let current = &mut messages;
        let stopped = run_chain!(
            self.slots,
            Hook::WebsocketMessage,
            Some(flow_id),
            |_, p| p.groups.websocket.is_some(),
            async |store, groups| {
                let Some(g) = &groups.websocket else { return Ok(Applied::Kept) };
                let limit = store.data().plugin.manifest.limits.max_body_bytes;
                let mut out = Vec::with_capacity(current.len());
                for m in current.drain(..) {
                    let lent = Lent::new(store, Some(&mut *flow), None, None, None)?;
                    let wit = to_wit_message(&m);
                    let verdict = g.call_websocket_message(&mut *store, borrow(&lent.flow)?, &wit).await;
                    lent.restore(store, Some(&mut *flow), None, None, None);
                    match verdict? {
                        hooks::websocket::MessageVerdict::Continue => out.push(m),
                        hooks::websocket::MessageVerdict::Kill => return Ok(Applied::Killed),
                        hooks::websocket::MessageVerdict::Replace(list) => {
                            for r in list {
                                let r = from_wit_message(r);
                                if r.from_client != from_client {
                                    return Ok(Applied::Refused("a replacement goes the other way".to_owned()));
                                }
                                if let Err(e) = r.validate(limit) {
                                    return Ok(Applied::Refused(e.to_string()));
                                }
                                out.push(r);
                            }
                        }
                    }
                }
                *current = out;
                Ok(Applied::Kept)
            },
            |slots, i, call| match call {
                Call::Done(Applied::Killed, _) => ControlFlow::Break(WebSocketAction::Kill),
                Call::Done(Applied::Refused(message), _) => {
                    let f = slots.refuse(i, Hook::WebsocketMessage, message);
                    if slots.fail_closed(i) {
                        ControlFlow::Break(WebSocketAction::Fail(f))
                    } else {
                        ControlFlow::Continue(())
                    }
                }
                other => slots.stop_if_fail_closed(i, other).map_break(WebSocketAction::Fail),
            },
        );
        stopped.unwrap_or(WebSocketAction::Forward(messages))
    }
}

fn to_wit_message(m: &WebSocketMessage) -> hooks::websocket::Message {
    use hooks::websocket::MessageKind as K;
    let kind = match m.kind {
        MessageKind::Text => K::Text,
        MessageKind::Binary => K::Binary,
        MessageKind::Ping => K::Ping,
        MessageKind::Pong => K::Pong,
        MessageKind::Close => K::Close,
    };
    hooks::websocket::Message { from_client: m.from_client, kind, data: m.data.clone() }
}

fn from_wit_message(m: hooks::websocket::Message) -> WebSocketMessage {
    use hooks::websocket::MessageKind as K;
    let kind = match m.kind {
        K::Text => MessageKind::Text,
        K::Binary => MessageKind::Binary,
        K::Ping => MessageKind::Ping,
        K::Pong => MessageKind::Pong,
        K::Close => MessageKind::Close,
    };
    WebSocketMessage { from_client: m.from_client, kind, data: m.data }
}

/// What the DNS layer does after a hook.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DnsAction {
    /// Go on: resolve upstream (a query) or answer with the response (a response).
    Continue,
    /// Answer with this message instead (checked by the host).
    Respond(DnsMessage),
    /// Drop the query without an answer.
    Kill,
    /// A fail-closed plugin failed: answer SERVFAIL.
    Fail(PluginFailure),
}

/// The session of one DNS flow: the query, the response, or an error.
pub struct DnsFlowSession {
    slots: Slots,
    /// The flow.
    pub flow: FlowInfo,
}

impl DnsFlowSession {
    /// Plugin failures recorded on this flow, in order.
    pub fn failures(&self) -> &[PluginFailure] {
        &self.slots.failures
    }

    /// `dns-request`: the first plugin that answers or kills ends the chain.
    pub async fn request(&mut self, query: &DnsMessage) -> DnsAction {
        self.chain(Hook::DnsRequest, query, None).await
    }

    /// `dns-response`: plugins may replace the upstream's answer.
    pub async fn response(&mut self, query: &DnsMessage, response: &DnsMessage) -> DnsAction {
        self.chain(Hook::DnsResponse, query, Some(response)).await
    }

    async fn chain(&mut self, hook: Hook, query: &DnsMessage, response: Option<&DnsMessage>) -> DnsAction {
        let flow = &mut self.flow;
        let flow_id = flow.id;
        let (wit_query, wit_response) = (to_wit_dns(query), response.map(to_wit_dns));
        let action = run_chain!(
            self.slots,
            hook,
            Some(flow_id),
            |_, p| p.groups.dns.is_some(),
            async |store, groups| {
                let Some(g) = &groups.dns else { return Ok(hooks::dns::DnsVerdict::Continue) };
                let lent = Lent::new(store, Some(&mut *flow), None, None, None)?;
                let f = borrow(&lent.flow)?;
                let out = match &wit_response {
                    Some(r) => g.call_dns_response(&mut *store, f, &wit_query, r).await,
                    None => g.call_dns_request(&mut *store, f, &wit_query).await,
                };
                lent.restore(store, Some(&mut *flow), None, None, None);
                out
            },
            |slots, i, call| match call {
                Call::Done(hooks::dns::DnsVerdict::Continue, _) => ControlFlow::Continue(()),
                Call::Done(hooks::dns::DnsVerdict::Kill, _) => ControlFlow::Break(DnsAction::Kill),
                Call::Done(hooks::dns::DnsVerdict::Respond(message), _) => {
                    let message = from_wit_dns(message);
                    match message.validate() {
                        Ok(()) => ControlFlow::Break(DnsAction::Respond(message)),
                        Err(e) => {
                            let f = slots.refuse(i, hook, e.to_string());
                            if slots.fail_closed(i) {
                                ControlFlow::Break(DnsAction::Fail(f))
                            } else {
                                ControlFlow::Continue(())
                            }
                        }
                    }
                }
                other => slots.stop_if_fail_closed(i, other).map_break(DnsAction::Fail),
            },
        );
        action.unwrap_or(DnsAction::Continue)
    }

    /// `dns-error`: resolving failed; informational.
    pub async fn error(&mut self, query: &DnsMessage, message: &str) {
        let flow = &mut self.flow;
        let flow_id = flow.id;
        let wit_query = to_wit_dns(query);
        run_chain!(
            self.slots,
            Hook::DnsError,
            Some(flow_id),
            |_, p| p.groups.dns.is_some(),
            async |store, groups| {
                let Some(g) = &groups.dns else { return Ok(()) };
                let lent = Lent::new(store, Some(&mut *flow), None, None, None)?;
                let out = g.call_dns_error(&mut *store, borrow(&lent.flow)?, &wit_query, message).await;
                lent.restore(store, Some(&mut *flow), None, None, None);
                out
            },
            |_, _, _| ControlFlow::<()>::Continue(()),
        );
    }
}

fn to_wit_dns(m: &DnsMessage) -> hooks::dns::Message {
    let rr = |r: &flowgate_flow::ResourceRecord| hooks::dns::ResourceRecord {
        name: r.name.clone(),
        record_type: r.record_type,
        class: r.class,
        ttl: r.ttl,
        data: r.data.clone(),
    };
    hooks::dns::Message {
        id: m.id,
        flags: m.flags,
        questions: m
            .questions
            .iter()
            .map(|q| hooks::dns::Question { name: q.name.clone(), record_type: q.record_type, class: q.class })
            .collect(),
        answers: m.answers.iter().map(rr).collect(),
        authorities: m.authorities.iter().map(rr).collect(),
        additionals: m.additionals.iter().map(rr).collect(),
    }
}

fn from_wit_dns(m: hooks::dns::Message) -> DnsMessage {
    let rr = |r: hooks::dns::ResourceRecord| flowgate_flow::ResourceRecord {
        name: r.name,
        record_type: r.record_type,
        class: r.class,
        ttl: r.ttl,
        data: r.data,
    };
    DnsMessage {
        id: m.id,
        flags: m.flags,
        questions: m
            .questions
            .into_iter()
            .map(|q| flowgate_flow::Question { name: q.name, record_type: q.record_type, class: q.class })
            .collect(),
        answers: m.answers.into_iter().map(rr).collect(),
        authorities: m.authorities.into_iter().map(rr).collect(),
        additionals: m.additionals.into_iter().map(rr).collect(),
    }
}
