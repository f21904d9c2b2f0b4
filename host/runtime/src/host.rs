//! What a plugin instance's store holds, and the host side of every import.
//!
//! Nothing a plugin passes in is trusted: names, values, statuses, URLs and sizes are
//! validated here and refused with an `error` value; a stale or foreign handle traps.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use flowgate_flow::{
    BodyMode, ConnectionInfo, FieldError, FlowInfo, FlowKind, Headers, Hook, Injected, MessageKind, Request, Response,
    UrlError, Uuid, WebSocketMessage, value_to_text,
};
use rand::RngCore;
use wasmtime::component::{Resource, ResourceTable};
use wasmtime::{ResourceLimiter, format_err};
use wasmtime_wasi::{WasiCtx, WasiCtxView, WasiView};

use crate::bindings::imports::{clock, config, key_value, log, outbound_http, random, types};
use crate::manifest::Manifest;
use crate::outbound::{OutboundError, OutboundHttp, OutboundRequest};

type WitError = types::Error;

/// The type of a connection handle: the connection a hook call was given (`LentSlots`).
pub struct ConnectionRes;
/// The type of a flow handle: the flow a hook call was given.
pub struct FlowRes;
/// The type of a request handle: the request a hook call was given.
pub struct RequestRes;
/// The type of a response handle: the response a hook call was given.
pub struct ResponseRes;

/// What a hook call lends the plugin, held in the store for the call's length: its
/// handles are borrows of these slots (at most one value of each type per call, so a
/// handle's type says which slot), and no table entry is made or boxed per call.
#[derive(Default)]
pub(crate) struct LentSlots {
    pub flow: Option<FlowInfo>,
    pub conn: Option<ConnectionInfo>,
    pub request: Option<Request>,
    pub response: Option<Response>,
}

/// The rep of every lent handle: the slot is known by the handle's type.
pub(crate) const LENT_REP: u32 = 0;

/// A lent slot (`slot` is `as_ref()` or `as_mut()` of it), or a trap for a handle that is
/// not the one lent (the guest cannot forge one; a stale borrow is refused by wasmtime
/// first).
fn lent<T, V>(r: &Resource<T>, slot: Option<V>) -> wasmtime::Result<V> {
    match slot {
        Some(v) if r.rep() == LENT_REP => Ok(v),
        _ => Err(format_err!("a handle that is not lent in this call")),
    }
}

/// Log severity, as a plugin gives it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum LogLevel {
    /// Very detailed.
    Trace,
    /// For debugging.
    Debug,
    /// Normal.
    Info,
    /// Something looks wrong.
    Warn,
    /// Something failed.
    Error,
}

/// One log line written by a plugin.
#[derive(Debug, Clone)]
pub struct LogRecord {
    /// The plugin's name.
    pub plugin: String,
    /// Severity.
    pub level: LogLevel,
    /// The flow the hook was running for, if any.
    pub flow_id: Option<Uuid>,
    /// The hook that wrote it.
    pub hook: Hook,
    /// The text, cut to the plugin's `max_log_bytes`.
    pub message: String,
}

/// Where plugin log lines go.
pub type LogSink = Arc<dyn Fn(&LogRecord) + Send + Sync>;

/// Per-plugin key-value state, shared by every instance of the plugin.
#[derive(Default)]
pub(crate) struct KvState {
    map: BTreeMap<String, Vec<u8>>,
    bytes: usize,
}

/// What every instance of one plugin shares.
pub(crate) struct PluginShared {
    pub manifest: Manifest,
    pub kv: Mutex<KvState>,
    pub log_sink: LogSink,
    /// Who does the plugin's outbound HTTP, if anyone.
    pub outbound: Option<Arc<dyn OutboundHttp>>,
    pub started: Instant,
    /// The CPU budget every call of the plugin draws on (checked at each epoch tick).
    pub cpu: crate::budget::CpuBudget,
}

/// Per-call bookkeeping, reset before each hook call.
pub(crate) struct CallState {
    pub hook: Hook,
    pub deadline: Instant,
    pub flow_id: Option<Uuid>,
    pub log_bytes: usize,
    pub log_dropped: u64,
    /// The body mode this plugin asked for in this call, if it asked.
    pub body_mode: Option<BodyMode>,
    /// Messages the plugin injected in this call, in order, and their total size.
    pub injected: Vec<Injected>,
    pub injected_bytes: usize,
    /// What is left of this call's time for waiting on outbound HTTP.
    pub outbound_left: Duration,
    /// Whether the plugin moved the request to another destination in this call
    /// (`set-url` to another scheme, host or port).
    pub rerouted: bool,
}

impl CallState {
    pub fn new(hook: Hook, deadline: Instant, flow_id: Option<Uuid>) -> Self {
        CallState {
            hook,
            deadline,
            flow_id,
            log_bytes: 0,
            log_dropped: 0,
            body_mode: None,
            injected: Vec::new(),
            injected_bytes: 0,
            outbound_left: Duration::ZERO,
            rerouted: false,
        }
    }
}

/// The hooks during which a flow still takes injected messages, by flow kind.
const DATA_HOOKS: &[Hook] = &[Hook::TcpStart, Hook::TcpMessage, Hook::UdpStart, Hook::UdpMessage];
const WEBSOCKET_HOOKS: &[Hook] = &[Hook::WebsocketStart, Hook::WebsocketMessage];

/// Denies memory growth past the plugin's cap, and remembers that it did.
pub(crate) struct MemoryLimiter {
    pub cap: usize,
    pub denied: bool,
    /// Bytes of linear memory granted, all memories together (the initial allocation
    /// included).
    pub granted: usize,
}

impl MemoryLimiter {
    /// A limiter with the cap `cap` and nothing granted yet.
    pub fn new(cap: usize) -> MemoryLimiter {
        MemoryLimiter { cap, denied: false, granted: 0 }
    }
}

impl ResourceLimiter for MemoryLimiter {
    fn memory_growing(&mut self, current: usize, desired: usize, _maximum: Option<usize>) -> wasmtime::Result<bool> {
        if desired > self.cap {
            self.denied = true;
            return Err(wasmtime::Error::new(MemoryCapExceeded { cap: self.cap, desired }));
        }
        self.granted = self.granted.saturating_add(desired.saturating_sub(current));
        Ok(true)
    }

    fn table_growing(&mut self, _current: usize, desired: usize, _maximum: Option<usize>) -> wasmtime::Result<bool> {
        Ok(desired <= 100_000)
    }
}

/// The trap raised when a plugin grows its memory past its cap.
#[derive(Debug, thiserror::Error)]
#[error("memory cap of {cap} bytes exceeded (wanted {desired})")]
pub(crate) struct MemoryCapExceeded {
    cap: usize,
    desired: usize,
}

/// The trap raised when a hook runs past its deadline.
#[derive(Debug, thiserror::Error)]
#[error("hook ran past its deadline")]
pub(crate) struct DeadlineExceeded;

/// The trap raised when a hook is interrupted because its plugin's CPU budget is spent.
#[derive(Debug, thiserror::Error)]
#[error("the plugin's CPU time per second is spent")]
pub(crate) struct CpuBudgetSpent;

/// The data of one plugin instance's store.
pub(crate) struct StoreState {
    pub wasi: WasiCtx,
    pub table: ResourceTable,
    pub limiter: MemoryLimiter,
    pub plugin: Arc<PluginShared>,
    pub call: CallState,
    /// What the current hook call lends the plugin.
    pub lent: LentSlots,
    /// The tail of the guest's stderr, for failure messages.
    pub stderr: crate::stderr::StderrTail,
}

impl WasiView for StoreState {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView { ctx: &mut self.wasi, table: &mut self.table }
    }
}

fn field_error(e: FieldError) -> WitError {
    WitError::InvalidArgument(e.to_string())
}

fn url_error(e: UrlError) -> WitError {
    WitError::InvalidArgument(e.to_string())
}

fn to_wit_headers(headers: &Headers) -> Vec<types::Header> {
    headers.iter().map(|(n, v)| types::Header { name: n.to_owned(), value: value_to_text(v) }).collect()
}

/// Converts headers a plugin gave into validated [`Headers`].
pub(crate) fn from_wit_headers(headers: &[types::Header]) -> Result<Headers, FieldError> {
    Headers::from_pairs(headers.iter().map(|h| (h.name.as_str(), h.value.as_bytes())))
}

const REQUEST_HOOKS: &[Hook] = &[Hook::HttpConnect, Hook::RequestHeaders, Hook::RequestBodyChunk, Hook::Request];
const RESPONSE_HOOKS: &[Hook] = &[Hook::ResponseHeaders, Hook::ResponseBodyChunk, Hook::Response];

impl StoreState {
    /// Queues an injected message, within the plugin's `max_body_bytes` per hook call.
    fn inject(&mut self, size: usize, message: Injected) -> Result<(), WitError> {
        let limit = self.plugin.manifest.limits.max_body_bytes;
        if self.call.injected_bytes + size > limit {
            return Err(WitError::LimitExceeded(format!(
                "injected messages in one hook call would exceed max_body_bytes ({limit})"
            )));
        }
        self.call.injected_bytes += size;
        self.call.injected.push(message);
        Ok(())
    }

    fn request(&self, r: &Resource<RequestRes>) -> wasmtime::Result<&Request> {
        lent(r, self.lent.request.as_ref())
    }

    /// The request, if this hook may still change it.
    fn request_mut(&mut self, r: &Resource<RequestRes>) -> wasmtime::Result<Result<&mut Request, WitError>> {
        let hook = self.call.hook;
        let request = lent(r, self.lent.request.as_mut())?;
        if REQUEST_HOOKS.contains(&hook) {
            Ok(Ok(request))
        } else {
            Ok(Err(WitError::InvalidState(format!("the request was already sent; it cannot be changed in {hook}"))))
        }
    }

    fn response(&self, r: &Resource<ResponseRes>) -> wasmtime::Result<&Response> {
        lent(r, self.lent.response.as_ref())
    }

    fn response_mut(&mut self, r: &Resource<ResponseRes>) -> wasmtime::Result<Result<&mut Response, WitError>> {
        let hook = self.call.hook;
        let response = lent(r, self.lent.response.as_mut())?;
        if RESPONSE_HOOKS.contains(&hook) {
            Ok(Ok(response))
        } else {
            Ok(Err(WitError::InvalidState(format!("the response cannot be changed in {hook}"))))
        }
    }

    fn set_body_mode(&mut self, allowed_in: Hook, mode: types::BodyMode) -> Result<BodyMode, WitError> {
        if self.call.hook != allowed_in {
            return Err(WitError::InvalidState(format!("the body mode can only be chosen in {allowed_in}")));
        }
        let mode = match mode {
            types::BodyMode::Pass => BodyMode::Pass,
            types::BodyMode::Buffer => BodyMode::Buffer,
            types::BodyMode::Stream => BodyMode::Stream,
        };
        self.call.body_mode = Some(mode);
        Ok(mode)
    }

    fn check_body_size(&self, len: usize) -> Result<(), WitError> {
        let max = self.plugin.manifest.limits.max_body_bytes;
        if len > max {
            Err(WitError::LimitExceeded(format!("body of {len} bytes is over max_body_bytes ({max})")))
        } else {
            Ok(())
        }
    }
}

fn body_of(body: &Option<bytes::Bytes>, hook: Hook, whole_in: Hook) -> Result<Vec<u8>, WitError> {
    match body {
        Some(b) => Ok(b.to_vec()),
        None if hook == whole_in => Err(WitError::InvalidState(
            "the body is not buffered: call set-body-mode(buffer) in the headers hook".to_owned(),
        )),
        None => Err(WitError::InvalidState(format!("the whole body is only available in {whole_in}"))),
    }
}

/// `body` with the `content-encoding` of `headers` undone, within the plugin's body cap and
/// a ratio cap (a decompression bomb stops there); as it is when there is no coding.
fn decoded(body: Vec<u8>, headers: &Headers, max_size: usize) -> Result<Vec<u8>, WitError> {
    let coding = content_encoding(headers);
    if no_coding(&coding) {
        return Ok(body);
    }
    let limits = flowgate_content::Limits { max_size, max_ratio: 1000 };
    flowgate_content::decode(&coding, &body, &limits).map_err(content_error)
}

/// `body` encoded with the `content-encoding` of `headers`.
fn encoded(body: Vec<u8>, headers: &Headers) -> Result<Vec<u8>, WitError> {
    let coding = content_encoding(headers);
    if no_coding(&coding) {
        return Ok(body);
    }
    flowgate_content::encode(&coding, &body).map_err(content_error)
}

/// Every `content-encoding` field of a message as one list.
fn content_encoding(headers: &Headers) -> String {
    header_values(headers, "content-encoding").join(", ")
}

fn no_coding(coding: &str) -> bool {
    coding.split(',').map(str::trim).all(|c| c.is_empty() || c.eq_ignore_ascii_case("identity"))
}

fn content_error(e: flowgate_content::Error) -> WitError {
    match e {
        flowgate_content::Error::Unsupported(_) => WitError::Unsupported(e.to_string()),
        flowgate_content::Error::TooLarge { .. } => WitError::LimitExceeded(e.to_string()),
        flowgate_content::Error::Corrupt { .. } => WitError::Other(e.to_string()),
    }
}

fn header_values(headers: &Headers, name: &str) -> Vec<String> {
    headers.get_all(name).map(value_to_text).collect()
}

impl types::Host for StoreState {}

impl types::HostConnection for StoreState {
    fn id(&mut self, c: Resource<ConnectionRes>) -> wasmtime::Result<String> {
        Ok(lent(&c, self.lent.conn.as_ref())?.id.to_string())
    }
    fn client_address(&mut self, c: Resource<ConnectionRes>) -> wasmtime::Result<String> {
        Ok(lent(&c, self.lent.conn.as_ref())?.client_address.clone())
    }
    fn server_address(&mut self, c: Resource<ConnectionRes>) -> wasmtime::Result<Option<String>> {
        Ok(lent(&c, self.lent.conn.as_ref())?.server_address.clone())
    }
    fn sni(&mut self, c: Resource<ConnectionRes>) -> wasmtime::Result<Option<String>> {
        Ok(lent(&c, self.lent.conn.as_ref())?.sni.clone())
    }
    fn alpn(&mut self, c: Resource<ConnectionRes>) -> wasmtime::Result<Option<String>> {
        Ok(lent(&c, self.lent.conn.as_ref())?.alpn.clone())
    }
    fn tls(&mut self, c: Resource<ConnectionRes>) -> wasmtime::Result<bool> {
        Ok(lent(&c, self.lent.conn.as_ref())?.tls)
    }
    // Only borrows are lent (the value stays in its slot): nothing to free.
    fn drop(&mut self, _: Resource<ConnectionRes>) -> wasmtime::Result<()> {
        Ok(())
    }
}

impl types::HostFlow for StoreState {
    fn id(&mut self, f: Resource<FlowRes>) -> wasmtime::Result<String> {
        Ok(lent(&f, self.lent.flow.as_ref())?.id.to_string())
    }
    fn kind(&mut self, f: Resource<FlowRes>) -> wasmtime::Result<types::FlowKind> {
        Ok(match lent(&f, self.lent.flow.as_ref())?.kind {
            FlowKind::Http => types::FlowKind::Http,
            FlowKind::WebSocket => types::FlowKind::Websocket,
            FlowKind::Tcp => types::FlowKind::Tcp,
            FlowKind::Udp => types::FlowKind::Udp,
            FlowKind::Dns => types::FlowKind::Dns,
        })
    }
    fn connection_id(&mut self, f: Resource<FlowRes>) -> wasmtime::Result<String> {
        Ok(lent(&f, self.lent.flow.as_ref())?.connection_id.to_string())
    }
    fn inject_data(
        &mut self,
        f: Resource<FlowRes>,
        to_client: bool,
        data: Vec<u8>,
    ) -> wasmtime::Result<Result<(), WitError>> {
        let kind = lent(&f, self.lent.flow.as_ref())?.kind;
        if !matches!(kind, FlowKind::Tcp | FlowKind::Udp) || !DATA_HOOKS.contains(&self.call.hook) {
            return Ok(Err(WitError::InvalidState(format!(
                "inject-data needs a TCP or UDP flow that is still open (this is {kind:?}, in {})",
                self.call.hook
            ))));
        }
        Ok(self.inject(data.len(), Injected::Data { to_client, data: data.into() }))
    }
    fn inject_websocket(
        &mut self,
        f: Resource<FlowRes>,
        to_client: bool,
        kind: types::WebsocketMessageKind,
        data: Vec<u8>,
    ) -> wasmtime::Result<Result<(), WitError>> {
        let flow_kind = lent(&f, self.lent.flow.as_ref())?.kind;
        if flow_kind != FlowKind::WebSocket || !WEBSOCKET_HOOKS.contains(&self.call.hook) {
            return Ok(Err(WitError::InvalidState(format!(
                "inject-websocket needs a WebSocket flow that is still open (this is {flow_kind:?}, in {})",
                self.call.hook
            ))));
        }
        let kind = match kind {
            types::WebsocketMessageKind::Text => MessageKind::Text,
            types::WebsocketMessageKind::Binary => MessageKind::Binary,
            types::WebsocketMessageKind::Ping => MessageKind::Ping,
            types::WebsocketMessageKind::Pong => MessageKind::Pong,
            types::WebsocketMessageKind::Close => MessageKind::Close,
        };
        let message =
            WebSocketMessage { from_client: !to_client, kind, data: data.into(), ..WebSocketMessage::default() };
        if let Err(e) = message.validate(usize::MAX) {
            return Ok(Err(WitError::InvalidArgument(e.to_string())));
        }
        Ok(self.inject(message.data.len(), Injected::WebSocket(message)))
    }
    fn client_address(&mut self, f: Resource<FlowRes>) -> wasmtime::Result<String> {
        Ok(lent(&f, self.lent.flow.as_ref())?.client_address.clone())
    }
    fn server_address(&mut self, f: Resource<FlowRes>) -> wasmtime::Result<Option<String>> {
        Ok(lent(&f, self.lent.flow.as_ref())?.server_address.clone())
    }
    fn get_metadata(&mut self, f: Resource<FlowRes>, key: String) -> wasmtime::Result<Option<String>> {
        Ok(lent(&f, self.lent.flow.as_ref())?.metadata.get(&key).cloned())
    }
    fn set_metadata(
        &mut self,
        f: Resource<FlowRes>,
        key: String,
        value: String,
    ) -> wasmtime::Result<Result<(), WitError>> {
        let max = self.plugin.manifest.limits.max_state_bytes;
        let flow = lent(&f, self.lent.flow.as_mut())?;
        let used: usize = flow.metadata.iter().filter(|(k, _)| **k != key).map(|(k, v)| k.len() + v.len()).sum();
        if used + key.len() + value.len() > max {
            return Ok(Err(WitError::LimitExceeded(format!("flow metadata would exceed max_state_bytes ({max})"))));
        }
        flow.metadata.insert(key, value);
        Ok(Ok(()))
    }
    // Only borrows are lent (the value stays in its slot): nothing to free.
    fn drop(&mut self, _: Resource<FlowRes>) -> wasmtime::Result<()> {
        Ok(())
    }
}

impl types::HostRequest for StoreState {
    fn method(&mut self, r: Resource<RequestRes>) -> wasmtime::Result<String> {
        Ok(self.request(&r)?.method.clone())
    }
    fn set_method(&mut self, r: Resource<RequestRes>, method: String) -> wasmtime::Result<Result<(), WitError>> {
        Ok(self.request_mut(&r)?.and_then(|req| req.set_method(&method).map_err(url_error)))
    }
    fn scheme(&mut self, r: Resource<RequestRes>) -> wasmtime::Result<String> {
        Ok(self.request(&r)?.scheme.as_str().to_owned())
    }
    fn host(&mut self, r: Resource<RequestRes>) -> wasmtime::Result<String> {
        Ok(self.request(&r)?.host.clone())
    }
    fn port(&mut self, r: Resource<RequestRes>) -> wasmtime::Result<u16> {
        Ok(self.request(&r)?.port)
    }
    fn path(&mut self, r: Resource<RequestRes>) -> wasmtime::Result<String> {
        Ok(self.request(&r)?.path.clone())
    }
    fn set_path(&mut self, r: Resource<RequestRes>, path: String) -> wasmtime::Result<Result<(), WitError>> {
        Ok(self.request_mut(&r)?.and_then(|req| req.set_path(&path).map_err(url_error)))
    }
    fn url(&mut self, r: Resource<RequestRes>) -> wasmtime::Result<String> {
        Ok(self.request(&r)?.url())
    }
    fn set_url(&mut self, r: Resource<RequestRes>, url: String) -> wasmtime::Result<Result<(), WitError>> {
        let hook = self.call.hook;
        let plugin = self.plugin.clone();
        let allowed = &plugin.manifest.capabilities.allowed_upstream_hosts;
        let mut moved = false;
        let result = self.request_mut(&r)?.and_then(|req| {
            let to = flowgate_flow::Url::parse(&url).map_err(url_error)?;
            let rerouted = (to.scheme, to.host.as_str(), to.port) != (req.scheme, req.host.as_str(), req.port);
            if rerouted {
                // Rerouting is a capability: the destination changes only to a listed host
                // (checked again by the network layer against the addresses it resolves to).
                if hook == Hook::RequestBodyChunk {
                    return Err(WitError::InvalidState(
                        "the upstream is already chosen in request-body-chunk: only the path may change".to_owned(),
                    ));
                }
                if !allowed.allows_host(&to.host) {
                    return Err(WitError::Denied(format!(
                        "rerouting to {}://{}:{} is not granted: add the host to capabilities.allowed_upstream_hosts",
                        to.scheme.as_str(),
                        to.host,
                        to.port
                    )));
                }
            }
            req.set_url(&url).map_err(url_error)?;
            moved = rerouted;
            Ok(())
        });
        self.call.rerouted |= moved;
        Ok(result)
    }
    fn http_version(&mut self, r: Resource<RequestRes>) -> wasmtime::Result<String> {
        Ok(self.request(&r)?.version.as_str().to_owned())
    }
    fn headers(&mut self, r: Resource<RequestRes>) -> wasmtime::Result<Vec<types::Header>> {
        Ok(to_wit_headers(&self.request(&r)?.headers))
    }
    fn get_header(&mut self, r: Resource<RequestRes>, name: String) -> wasmtime::Result<Vec<String>> {
        Ok(header_values(&self.request(&r)?.headers, &name))
    }
    fn has_header(&mut self, r: Resource<RequestRes>, name: String) -> wasmtime::Result<bool> {
        Ok(self.request(&r)?.headers.contains(&name))
    }
    fn set_header(
        &mut self,
        r: Resource<RequestRes>,
        name: String,
        value: String,
    ) -> wasmtime::Result<Result<(), WitError>> {
        Ok(self.request_mut(&r)?.and_then(|req| req.headers.set(&name, value.as_bytes()).map_err(field_error)))
    }
    fn append_header(
        &mut self,
        r: Resource<RequestRes>,
        name: String,
        value: String,
    ) -> wasmtime::Result<Result<(), WitError>> {
        Ok(self.request_mut(&r)?.and_then(|req| req.headers.append(&name, value.as_bytes()).map_err(field_error)))
    }
    fn remove_header(&mut self, r: Resource<RequestRes>, name: String) -> wasmtime::Result<u32> {
        Ok(match self.request_mut(&r)? {
            Ok(req) => u32::try_from(req.headers.remove(&name)).unwrap_or(u32::MAX),
            Err(_) => 0,
        })
    }
    fn set_headers(
        &mut self,
        r: Resource<RequestRes>,
        headers: Vec<types::Header>,
    ) -> wasmtime::Result<Result<(), WitError>> {
        let parsed = from_wit_headers(&headers).map_err(field_error);
        Ok(self.request_mut(&r)?.and_then(|req| {
            req.headers = parsed?;
            Ok(())
        }))
    }
    fn set_body_mode(
        &mut self,
        r: Resource<RequestRes>,
        mode: types::BodyMode,
    ) -> wasmtime::Result<Result<(), WitError>> {
        self.request(&r)?;
        Ok(self.set_body_mode(Hook::RequestHeaders, mode).map(drop))
    }
    fn body(&mut self, r: Resource<RequestRes>) -> wasmtime::Result<Result<Vec<u8>, WitError>> {
        let hook = self.call.hook;
        Ok(body_of(&self.request(&r)?.body, hook, Hook::Request))
    }
    fn set_body(&mut self, r: Resource<RequestRes>, body: Vec<u8>) -> wasmtime::Result<Result<(), WitError>> {
        if let Err(e) = self.check_body_size(body.len()) {
            return Ok(Err(e));
        }
        Ok(self.request_mut(&r)?.map(|req| req.body = Some(body.into())))
    }
    fn decoded_body(&mut self, r: Resource<RequestRes>) -> wasmtime::Result<Result<Vec<u8>, WitError>> {
        let hook = self.call.hook;
        let max = self.plugin.manifest.limits.max_body_bytes;
        let request = self.request(&r)?;
        Ok(body_of(&request.body, hook, Hook::Request).and_then(|body| decoded(body, &request.headers, max)))
    }
    fn set_decoded_body(&mut self, r: Resource<RequestRes>, body: Vec<u8>) -> wasmtime::Result<Result<(), WitError>> {
        if let Err(e) = self.check_body_size(body.len()) {
            return Ok(Err(e));
        }
        Ok(self.request_mut(&r)?.and_then(|req| {
            req.body = Some(encoded(body, &req.headers)?.into());
            Ok(())
        }))
    }
    fn trailers(&mut self, r: Resource<RequestRes>) -> wasmtime::Result<Vec<types::Header>> {
        Ok(to_wit_headers(&self.request(&r)?.trailers))
    }
    // Only borrows are lent (the value stays in its slot): nothing to free.
    fn drop(&mut self, _: Resource<RequestRes>) -> wasmtime::Result<()> {
        Ok(())
    }
}

impl types::HostResponse for StoreState {
    fn status(&mut self, r: Resource<ResponseRes>) -> wasmtime::Result<u16> {
        Ok(self.response(&r)?.status)
    }
    fn set_status(&mut self, r: Resource<ResponseRes>, status: u16) -> wasmtime::Result<Result<(), WitError>> {
        // The response is a final one: a 1xx or 101 here would frame the exchange wrongly.
        if !(200..=999).contains(&status) {
            return Ok(Err(WitError::InvalidArgument(format!("status {status} is not a final status (200..=999)"))));
        }
        Ok(self.response_mut(&r)?.map(|resp| resp.status = status))
    }
    fn reason(&mut self, r: Resource<ResponseRes>) -> wasmtime::Result<String> {
        Ok(self.response(&r)?.reason.clone())
    }
    fn http_version(&mut self, r: Resource<ResponseRes>) -> wasmtime::Result<String> {
        Ok(self.response(&r)?.version.as_str().to_owned())
    }
    fn headers(&mut self, r: Resource<ResponseRes>) -> wasmtime::Result<Vec<types::Header>> {
        Ok(to_wit_headers(&self.response(&r)?.headers))
    }
    fn get_header(&mut self, r: Resource<ResponseRes>, name: String) -> wasmtime::Result<Vec<String>> {
        Ok(header_values(&self.response(&r)?.headers, &name))
    }
    fn has_header(&mut self, r: Resource<ResponseRes>, name: String) -> wasmtime::Result<bool> {
        Ok(self.response(&r)?.headers.contains(&name))
    }
    fn set_header(
        &mut self,
        r: Resource<ResponseRes>,
        name: String,
        value: String,
    ) -> wasmtime::Result<Result<(), WitError>> {
        Ok(self.response_mut(&r)?.and_then(|resp| resp.headers.set(&name, value.as_bytes()).map_err(field_error)))
    }
    fn append_header(
        &mut self,
        r: Resource<ResponseRes>,
        name: String,
        value: String,
    ) -> wasmtime::Result<Result<(), WitError>> {
        Ok(self.response_mut(&r)?.and_then(|resp| resp.headers.append(&name, value.as_bytes()).map_err(field_error)))
    }
    fn remove_header(&mut self, r: Resource<ResponseRes>, name: String) -> wasmtime::Result<u32> {
        Ok(match self.response_mut(&r)? {
            Ok(resp) => u32::try_from(resp.headers.remove(&name)).unwrap_or(u32::MAX),
            Err(_) => 0,
        })
    }
    fn set_headers(
        &mut self,
        r: Resource<ResponseRes>,
        headers: Vec<types::Header>,
    ) -> wasmtime::Result<Result<(), WitError>> {
        let parsed = from_wit_headers(&headers).map_err(field_error);
        Ok(self.response_mut(&r)?.and_then(|resp| {
            resp.headers = parsed?;
            Ok(())
        }))
    }
    fn set_body_mode(
        &mut self,
        r: Resource<ResponseRes>,
        mode: types::BodyMode,
    ) -> wasmtime::Result<Result<(), WitError>> {
        self.response(&r)?;
        Ok(self.set_body_mode(Hook::ResponseHeaders, mode).map(drop))
    }
    fn body(&mut self, r: Resource<ResponseRes>) -> wasmtime::Result<Result<Vec<u8>, WitError>> {
        let hook = self.call.hook;
        Ok(body_of(&self.response(&r)?.body, hook, Hook::Response))
    }
    fn set_body(&mut self, r: Resource<ResponseRes>, body: Vec<u8>) -> wasmtime::Result<Result<(), WitError>> {
        if let Err(e) = self.check_body_size(body.len()) {
            return Ok(Err(e));
        }
        Ok(self.response_mut(&r)?.map(|resp| resp.body = Some(body.into())))
    }
    fn decoded_body(&mut self, r: Resource<ResponseRes>) -> wasmtime::Result<Result<Vec<u8>, WitError>> {
        let hook = self.call.hook;
        let max = self.plugin.manifest.limits.max_body_bytes;
        let response = self.response(&r)?;
        Ok(body_of(&response.body, hook, Hook::Response).and_then(|body| decoded(body, &response.headers, max)))
    }
    fn set_decoded_body(&mut self, r: Resource<ResponseRes>, body: Vec<u8>) -> wasmtime::Result<Result<(), WitError>> {
        if let Err(e) = self.check_body_size(body.len()) {
            return Ok(Err(e));
        }
        Ok(self.response_mut(&r)?.and_then(|resp| {
            resp.body = Some(encoded(body, &resp.headers)?.into());
            Ok(())
        }))
    }
    fn trailers(&mut self, r: Resource<ResponseRes>) -> wasmtime::Result<Vec<types::Header>> {
        Ok(to_wit_headers(&self.response(&r)?.trailers))
    }
    // Only borrows are lent (the value stays in its slot): nothing to free.
    fn drop(&mut self, _: Resource<ResponseRes>) -> wasmtime::Result<()> {
        Ok(())
    }
}

impl log::Host for StoreState {
    fn log(&mut self, level: log::Level, message: String) -> wasmtime::Result<()> {
        let max = self.plugin.manifest.limits.max_log_bytes;
        let room = max.saturating_sub(self.call.log_bytes);
        if room == 0 {
            self.call.log_dropped += 1;
            return Ok(());
        }
        // What a plugin logs reaches a terminal: no escape sequences, no control bytes.
        let mut message = printable(&message);
        if message.len() > room {
            let mut cut = room;
            while !message.is_char_boundary(cut) {
                cut -= 1;
            }
            message.truncate(cut);
            self.call.log_dropped += 1;
        }
        self.call.log_bytes += message.len().max(1);
        let level = match level {
            log::Level::Trace => LogLevel::Trace,
            log::Level::Debug => LogLevel::Debug,
            log::Level::Info => LogLevel::Info,
            log::Level::Warn => LogLevel::Warn,
            log::Level::Error => LogLevel::Error,
        };
        let record = LogRecord {
            plugin: self.plugin.manifest.name.clone(),
            level,
            flow_id: self.call.flow_id,
            hook: self.call.hook,
            message,
        };
        (self.plugin.log_sink)(&record);
        Ok(())
    }
}

/// `text` without terminal escape sequences (CSI `ESC [ ... final`, OSC `ESC ] ... BEL`
/// or `ESC \\`, and two-byte `ESC x`) and without control characters; line breaks and tabs
/// become spaces, so one log call is one line.
fn printable(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '\u{1b}' => match chars.next() {
                Some('[') => {
                    // Parameters and intermediates, then one final byte in @..~.
                    while let Some(&n) = chars.peek() {
                        chars.next();
                        if ('@'..='~').contains(&n) {
                            break;
                        }
                    }
                }
                Some(']') => {
                    while let Some(n) = chars.next() {
                        if n == '\u{7}' || (n == '\u{1b}' && chars.next_if_eq(&'\\').is_some()) {
                            break;
                        }
                    }
                }
                _ => {}
            },
            '\n' | '\r' | '\t' => out.push(' '),
            // C0, DEL and C1 controls (U+0080..U+009F include the 8-bit CSI).
            c if c.is_control() => {}
            c => out.push(c),
        }
    }
    out
}

impl config::Host for StoreState {
    fn get(&mut self, key: String) -> wasmtime::Result<Option<String>> {
        Ok(self.plugin.manifest.config.get(&key).cloned())
    }
    fn entries(&mut self) -> wasmtime::Result<Vec<(String, String)>> {
        Ok(self.plugin.manifest.config.iter().map(|(k, v)| (k.clone(), v.clone())).collect())
    }
}

impl key_value::Host for StoreState {
    fn get(&mut self, key: String) -> wasmtime::Result<Option<Vec<u8>>> {
        let kv = self.plugin.kv.lock().unwrap_or_else(PoisonError::into_inner);
        Ok(kv.map.get(&key).cloned())
    }
    fn set(&mut self, key: String, value: Vec<u8>) -> wasmtime::Result<Result<(), WitError>> {
        let max = self.plugin.manifest.limits.max_state_bytes;
        let mut kv = self.plugin.kv.lock().unwrap_or_else(PoisonError::into_inner);
        let old = kv.map.get(&key).map_or(0, |v| key.len() + v.len());
        let new_total = kv.bytes - old + key.len() + value.len();
        if new_total > max {
            return Ok(Err(WitError::LimitExceeded(format!(
                "key-value state would be {new_total} bytes, over max_state_bytes ({max})"
            ))));
        }
        kv.bytes = new_total;
        kv.map.insert(key, value);
        Ok(Ok(()))
    }
    fn delete(&mut self, key: String) -> wasmtime::Result<bool> {
        let mut kv = self.plugin.kv.lock().unwrap_or_else(PoisonError::into_inner);
        match kv.map.remove(&key) {
            Some(v) => {
                kv.bytes -= key.len() + v.len();
                Ok(true)
            }
            None => Ok(false),
        }
    }
    fn get_keys(&mut self) -> wasmtime::Result<Vec<String>> {
        let kv = self.plugin.kv.lock().unwrap_or_else(PoisonError::into_inner);
        Ok(kv.map.keys().cloned().collect())
    }
}

impl clock::Host for StoreState {
    fn now(&mut self) -> wasmtime::Result<u64> {
        let since = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default();
        Ok(u64::try_from(since.as_nanos()).unwrap_or(u64::MAX))
    }
    fn monotonic_now(&mut self) -> wasmtime::Result<u64> {
        Ok(u64::try_from(self.plugin.started.elapsed().as_nanos()).unwrap_or(u64::MAX))
    }
}

/// The most random bytes one call may ask for.
const MAX_RANDOM_BYTES: u32 = 65536;

impl random::Host for StoreState {
    fn get_random_bytes(&mut self, len: u32) -> wasmtime::Result<Vec<u8>> {
        if len > MAX_RANDOM_BYTES {
            return Err(format_err!("get-random-bytes: {len} bytes asked, at most {MAX_RANDOM_BYTES} allowed"));
        }
        let mut bytes = vec![0; len as usize];
        rand::rng().fill_bytes(&mut bytes);
        Ok(bytes)
    }
    fn get_random_u64(&mut self) -> wasmtime::Result<u64> {
        Ok(rand::rng().next_u64())
    }
}

/// Request header fields the sender frames itself; a plugin's are dropped.
const OUTBOUND_FRAMING: &[&str] =
    &["host", "content-length", "transfer-encoding", "connection", "keep-alive", "te", "trailer", "upgrade"];

impl StoreState {
    /// Checks a plugin's outgoing request: the URL, method, fields, and the host's name
    /// against `allowed_outbound_hosts` (its addresses are checked after DNS).
    fn outbound_request(&self, request: outbound_http::OutgoingRequest) -> Result<OutboundRequest, WitError> {
        let manifest = &self.plugin.manifest;
        let mut checked = Request::new(&request.method, &request.url).map_err(|e| {
            WitError::InvalidArgument(format!("outbound request {} {:?}: {e}", request.method, request.url))
        })?;
        let allowed = &manifest.capabilities.allowed_outbound_hosts;
        if !allowed.allows_host(&checked.host) {
            return Err(WitError::Denied(format!(
                "outbound HTTP to {} is not granted: add it to capabilities.allowed_outbound_hosts",
                checked.host
            )));
        }
        let mut headers = from_wit_headers(&request.headers).map_err(field_error)?;
        let connection = headers.get_all("connection").map(value_to_text).collect::<Vec<_>>().join(",");
        for name in OUTBOUND_FRAMING.iter().copied().chain(connection.split(',').map(str::trim)) {
            if !name.is_empty() {
                headers.remove(name);
            }
        }
        checked.headers = headers;
        checked.body = Some(request.body.into());
        Ok(OutboundRequest {
            plugin: manifest.name.clone(),
            request: checked,
            allowed: allowed.clone(),
            timeout: self.call.outbound_left,
            max_response_bytes: manifest.limits.outbound_max_response_bytes,
        })
    }
}

impl outbound_http::Host for StoreState {
    async fn send(
        &mut self,
        request: outbound_http::OutgoingRequest,
    ) -> wasmtime::Result<Result<outbound_http::IncomingResponse, WitError>> {
        let request = match self.outbound_request(request) {
            Ok(r) => r,
            Err(e) => return Ok(Err(e)),
        };
        let Some(client) = self.plugin.outbound.clone() else {
            return Ok(Err(WitError::Unsupported("outbound HTTP is not available in this host".to_owned())));
        };
        let left = request.timeout;
        if left.is_zero() {
            return Ok(Err(WitError::LimitExceeded(format!(
                "this hook call has spent its limits.outbound_timeout ({:?}) waiting on outbound HTTP",
                self.plugin.manifest.limits.outbound_timeout
            ))));
        }
        let started = Instant::now();
        // The client keeps the deadline; the runtime enforces it too, whoever the client is.
        let result = match tokio::time::timeout(left, client.send(request)).await {
            Ok(result) => result,
            Err(_) => Err(OutboundError::Timeout(left)),
        };
        let waited = started.elapsed();
        self.call.outbound_left = left.saturating_sub(waited);
        // Waiting is not running: the hook's deadline moves by the time spent here, so
        // `hook_timeout_ms` keeps bounding what the plugin itself computes.
        self.call.deadline += waited;
        Ok(match result {
            Ok(response) => Ok(outbound_http::IncomingResponse {
                status: response.status,
                headers: to_wit_headers(&response.headers),
                body: response.body.to_vec(),
            }),
            Err(e @ OutboundError::Denied(_)) => Err(WitError::Denied(e.to_string())),
            Err(e @ (OutboundError::Timeout(_) | OutboundError::TooLarge(_))) => {
                Err(WitError::LimitExceeded(e.to_string()))
            }
            Err(e @ OutboundError::Failed(_)) => Err(WitError::Other(e.to_string())),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::printable;

    #[test]
    fn log_text_is_printable() {
        let cases = [
            ("plain café", "plain café"),
            ("\u{1b}[31mred\u{1b}[0m", "red"),
            ("\u{1b}[2J\u{1b}[1;1Hcleared", "cleared"),
            ("title\u{1b}]0;pwned\u{7}here", "titlehere"),
            ("osc\u{1b}]8;;http://x\u{1b}\\link", "osclink"),
            ("two\nlines\r\tand a tab", "two lines  and a tab"),
            ("bell\u{7} nul\u{0} del\u{7f} c1\u{9b}31m", "bell nul del c131m"),
            ("trailing escape \u{1b}", "trailing escape "),
        ];
        for (input, want) in cases {
            assert_eq!(printable(input), want, "{input:?}");
        }
    }
}
