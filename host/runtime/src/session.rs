//! Running the plugin chain for a connection and its flows.
//!
//! The network layer makes one [`ConnectionSession`] per client connection and one
//! [`HttpFlowSession`] per HTTP exchange, and calls their hook methods as events happen.
//! Each method runs the hook in every plugin that exports its group, in chain order,
//! applies verdicts and failure policies, and records failures on the session. A plugin
//! that does not export a group is never called (and never instantiated) for it.

use std::sync::Arc;

use flowgate_flow::{
    BodyMode, ConnectionInfo, FlowInfo, Hook, LocalResponse, PluginFailure, Request, Response, TlsDecision, Verdict,
};
use tokio::sync::Mutex as AsyncMutex;
use wasmtime::Store;
use wasmtime::component::Resource;

use crate::bindings::{hooks, imports::types};
use crate::host::{ConnectionRes, FlowRes, RequestRes, ResponseRes, StoreState, from_wit_headers};
use crate::manifest::{FailurePolicy, InstanceModel};
use crate::plugin::{CallReport, LiveGroups, LiveInstance, Plugin};

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
        }
    }

    async fn call<R>(
        &mut self,
        i: usize,
        hook: Hook,
        flow_id: Option<u64>,
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
            Ok((value, report)) => {
                self.log_dropped += report.log_dropped;
                Call::Done(value, report)
            }
            Err(failure) => self.failed(i, failure),
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
    /// Starts the session of one HTTP exchange on this connection.
    pub fn http_flow(&self, flow: FlowInfo) -> HttpFlowSession {
        let n = self.slots.chain.len();
        HttpFlowSession {
            slots: Slots::new(self.slots.chain.clone(), self.slots.per_connection.clone()),
            flow,
            request_modes: vec![BodyMode::Pass; n],
            response_modes: vec![BodyMode::Pass; n],
        }
    }

    /// Failures recorded by this connection's own hooks.
    pub fn failures(&self) -> &[PluginFailure] {
        &self.slots.failures
    }

    /// Runs a connection hook that may veto; false means close (or fail) the connection.
    async fn conn_chain(&mut self, hook: Hook) -> bool {
        for i in 0..self.slots.chain.len() {
            if self.slots.chain[i].groups.connection.is_none() {
                continue;
            }
            let info = &mut self.info;
            let call = self
                .slots
                .call(i, hook, None, async |store, groups| {
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
                    lent.restore(store, None, Some(info), None, None);
                    out
                })
                .await;
            match call {
                Call::Done(false, _) => return false,
                Call::Failed(_) if self.slots.chain[i].failure_policy() == FailurePolicy::FailClosed => return false,
                _ => {}
            }
        }
        true
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
        let mut decision = TlsDecision::Intercept;
        for i in 0..self.slots.chain.len() {
            if self.slots.chain[i].groups.tls.is_none() {
                continue;
            }
            let info = &mut self.info;
            let hello = hooks::tls::ClientHello { sni: sni.map(str::to_owned), alpn_protocols: alpn.to_vec() };
            let call = self
                .slots
                .call(i, Hook::TlsClienthello, None, async |store, groups| {
                    let Some(g) = &groups.tls else { return Ok(types::TlsDecision::Intercept) };
                    let lent = Lent::new(store, None, Some(&mut *info), None, None)?;
                    let out = g.call_tls_clienthello(&mut *store, borrow(&lent.conn)?, &hello).await;
                    lent.restore(store, None, Some(info), None, None);
                    out
                })
                .await;
            match call {
                Call::Done(types::TlsDecision::Passthrough, _) => decision = TlsDecision::Passthrough,
                Call::Failed(f) if self.slots.chain[i].failure_policy() == FailurePolicy::FailClosed => return Err(f),
                _ => {}
            }
        }
        Ok(decision)
    }

    /// `tls-established` or, with a message, `tls-failed`.
    pub async fn tls_result(&mut self, side: TlsSide, failed: Option<&str>) {
        let hook = if failed.is_some() { Hook::TlsFailed } else { Hook::TlsEstablished };
        let wit_side = match side {
            TlsSide::Client => hooks::tls::Side::Client,
            TlsSide::Server => hooks::tls::Side::Server,
        };
        for i in 0..self.slots.chain.len() {
            if self.slots.chain[i].groups.tls.is_none() {
                continue;
            }
            let info = &mut self.info;
            self.slots
                .call(i, hook, None, async |store, groups| {
                    let Some(g) = &groups.tls else { return Ok(()) };
                    let lent = Lent::new(store, None, Some(&mut *info), None, None)?;
                    let c = borrow(&lent.conn)?;
                    let out = match failed {
                        Some(message) => g.call_tls_failed(&mut *store, c, wit_side, message).await,
                        None => g.call_tls_established(&mut *store, c, wit_side).await,
                    };
                    lent.restore(store, None, Some(info), None, None);
                    out
                })
                .await;
        }
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
        for i in 0..self.slots.chain.len() {
            if self.slots.chain[i].groups.http.is_none() {
                continue;
            }
            let flow = &mut self.flow;
            let req = &mut *request;
            let mut resp = response.as_deref_mut();
            let flow_id = flow.id;
            let call = self
                .slots
                .call(i, hook, Some(flow_id), async |store, groups| {
                    let Some(g) = &groups.http else { return Ok(types::Verdict::Continue) };
                    let has_resp = resp.is_some();
                    let lent = Lent::new(store, Some(&mut *flow), None, Some(&mut *req), resp.as_deref_mut())?;
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
                    lent.restore(store, Some(flow), None, Some(req), resp);
                    out
                })
                .await;
            let policy = self.slots.chain[i].failure_policy();
            match call {
                Call::Skipped => {}
                Call::Failed(f) => {
                    if policy == FailurePolicy::FailClosed {
                        return HttpAction::Fail(f);
                    }
                }
                Call::Done(verdict, report) => {
                    if let Some(mode) = report.body_mode {
                        match hook {
                            Hook::RequestHeaders => {
                                self.request_modes[i] = mode;
                                request.body_mode = request.body_mode.max(mode);
                            }
                            Hook::ResponseHeaders => {
                                self.response_modes[i] = mode;
                                if let Some(resp) = response.as_deref_mut() {
                                    resp.body_mode = resp.body_mode.max(mode);
                                }
                            }
                            _ => {}
                        }
                    }
                    match convert_verdict(verdict) {
                        Ok(Verdict::Continue) => {}
                        Ok(Verdict::Respond(local)) => return HttpAction::Respond(local),
                        Ok(Verdict::Kill) => return HttpAction::Kill,
                        Err(message) => {
                            let f = self.slots.refuse(i, hook, message);
                            if policy == FailurePolicy::FailClosed {
                                return HttpAction::Fail(f);
                            }
                        }
                    }
                }
            }
        }
        HttpAction::Continue
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
        for i in 0..self.slots.chain.len() {
            let modes = if hook == Hook::RequestBodyChunk { &self.request_modes } else { &self.response_modes };
            if modes[i] != BodyMode::Stream {
                continue;
            }
            let flow = &mut self.flow;
            let req = &mut *request;
            let mut resp = response.as_deref_mut();
            let data = &chunk;
            let call = self
                .slots
                .call(i, hook, Some(flow.id), async |store, groups| {
                    let Some(g) = &groups.http else { return Ok(data.clone()) };
                    let lent = Lent::new(store, Some(&mut *flow), None, Some(&mut *req), resp.as_deref_mut())?;
                    let (f, r) = (borrow(&lent.flow)?, borrow(&lent.request)?);
                    let out = match &lent.response {
                        Some(_) => {
                            g.call_response_body_chunk(&mut *store, f, r, borrow(&lent.response)?, data, end).await
                        }
                        None => g.call_request_body_chunk(&mut *store, f, r, data, end).await,
                    };
                    lent.restore(store, Some(flow), None, Some(req), resp);
                    out
                })
                .await;
            match call {
                Call::Done(replacement, _) => {
                    chunk = replacement;
                }
                Call::Failed(f) if self.slots.chain[i].failure_policy() == FailurePolicy::FailClosed => {
                    return Err(HttpAction::Fail(f));
                }
                _ => {}
            }
        }
        Ok(chunk)
    }

    /// `error`: the flow failed; informational.
    pub async fn error(&mut self, request: &mut Request, message: &str) {
        for i in 0..self.slots.chain.len() {
            if self.slots.chain[i].groups.http.is_none() {
                continue;
            }
            let flow = &mut self.flow;
            let req = &mut *request;
            let flow_id = flow.id;
            self.slots
                .call(i, Hook::Error, Some(flow_id), async |store, groups| {
                    let Some(g) = &groups.http else { return Ok(()) };
                    let lent = Lent::new(store, Some(&mut *flow), None, Some(&mut *req), None)?;
                    let out = g.call_error(&mut *store, borrow(&lent.flow)?, borrow(&lent.request)?, message).await;
                    lent.restore(store, Some(flow), None, Some(req), None);
                    out
                })
                .await;
        }
    }
}
