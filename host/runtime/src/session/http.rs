//! The HTTP hook group: one exchange's hooks, body modes and verdicts.

use std::ops::ControlFlow;

use super::filter::FlowFilters;
use super::{Applied, Call, HttpAction, Lent, Slots, borrow, convert_verdict};
use flowgate_flow::egress::AllowList;
use flowgate_flow::{BodyMode, FlowInfo, Hook, PluginFailure, Request, Response, Verdict};

use crate::bindings::imports::types;

/// The session of one HTTP exchange: runs the HTTP hooks and records what went wrong.
pub struct HttpFlowSession {
    pub(super) slots: Slots,
    /// The flow; plugins read it and annotate its metadata.
    pub flow: FlowInfo,
    pub(super) request_modes: Vec<BodyMode>,
    pub(super) response_modes: Vec<BodyMode>,
    pub(super) reroute: Option<Reroute>,
    /// Which plugins the manifests' filters let this flow call.
    pub(super) filters: FlowFilters,
}

/// A plugin changed where a flow's request goes (its scheme, host or port): the last one
/// that did, and the grant it holds, which the network layer checks against the
/// addresses the new host resolves to before it connects.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reroute {
    /// The plugin.
    pub plugin: String,
    /// Its `capabilities.allowed_upstream_hosts`.
    pub allowed: AllowList,
}

/// Where a request goes.
impl HttpFlowSession {
    /// Plugin failures recorded on this flow, in order.
    pub fn failures(&self) -> &[PluginFailure] {
        &self.slots.failures
    }

    /// Log lines dropped because a plugin went over its log cap.
    pub fn log_dropped(&self) -> u64 {
        self.slots.log_dropped
    }

    /// The plugin that last changed where the request goes, if one did.
    pub fn reroute(&self) -> Option<&Reroute> {
        self.reroute.as_ref()
    }

    /// Whether any plugin exports the HTTP group (if not, the fast path needs no calls).
    pub fn has_http_plugins(&self) -> bool {
        self.slots.chain.iter().any(|p| p.groups.http.is_some())
    }

    async fn chain(&mut self, hook: Hook, request: &mut Request, mut response: Option<&mut Response>) -> HttpAction {
        self.filters.decide_http(&self.slots.chain, &self.flow, request, response.as_deref_mut(), None);
        let admitted = &self.filters.admitted;
        let flow = &mut self.flow;
        let flow_id = flow.id;
        let modes = match hook {
            Hook::RequestHeaders => Some(&mut self.request_modes),
            Hook::ResponseHeaders => Some(&mut self.response_modes),
            _ => None,
        };
        let mut modes = modes;
        let reroute = &mut self.reroute;
        let action = run_chain!(
            self.slots,
            hook,
            Some(flow_id),
            |i, p| p.groups.http.is_some() && admitted[i],
            async |store, groups| {
                let Some(g) = &groups.http else { return Ok(types::Verdict::Continue) };
                let has_resp = response.is_some();
                let lent = Lent::new(store, Some(&mut *flow), None, Some(&mut *request), response.as_deref_mut());
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
                // Whatever the call's outcome, a changed destination is this plugin's doing.
                if store.data().call.rerouted {
                    let manifest = &store.data().plugin.manifest;
                    *reroute = Some(Reroute {
                        plugin: manifest.name.clone(),
                        allowed: manifest.capabilities.allowed_upstream_hosts.clone(),
                    });
                }
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
                    let max_body = slots.chain[i].manifest().limits.max_body_bytes;
                    match convert_verdict(verdict, max_body) {
                        Ok(Verdict::Continue) => ControlFlow::Continue(()),
                        Ok(Verdict::Respond(local)) => ControlFlow::Break(HttpAction::Respond(local)),
                        Ok(Verdict::Kill) => ControlFlow::Break(HttpAction::Kill),
                        Err(message) => slots.refused(i, hook, message).map_break(HttpAction::Fail),
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
                let Some(g) = &groups.http else { return Ok(Applied::Kept) };
                let lent = Lent::new(store, Some(&mut *flow), None, Some(&mut *request), response.as_deref_mut());
                let (f, r) = (borrow(&lent.flow)?, borrow(&lent.request)?);
                let out = match &lent.response {
                    Some(_) => g.call_response_body_chunk(&mut *store, f, r, borrow(&lent.response)?, data, end).await,
                    None => g.call_request_body_chunk(&mut *store, f, r, data, end).await,
                };
                lent.restore(store, Some(&mut *flow), None, Some(&mut *request), response.as_deref_mut());
                // Each plugin gets what the one before it made, within its max_body_bytes.
                let limit = store.data().plugin.manifest.limits.max_body_bytes;
                out.map(|replacement| {
                    if replacement.len() > limit {
                        return Applied::Refused(format!(
                            "a chunk of {} bytes is over limits.max_body_bytes ({limit})",
                            replacement.len()
                        ));
                    }
                    *data = replacement;
                    Applied::Kept
                })
            },
            |slots, i, call| match call {
                Call::Done(Applied::Refused(message), _) => slots.refused(i, hook, message),
                other => slots.stop_if_fail_closed(i, other),
            },
        );
        match failed {
            Some(f) => Err(HttpAction::Fail(f)),
            None => Ok(chunk),
        }
    }

    /// `error`: the flow failed; informational.
    pub async fn error(&mut self, request: &mut Request, message: &str) {
        self.filters.decide_http(&self.slots.chain, &self.flow, request, None, Some(message));
        let admitted = &self.filters.admitted;
        let flow = &mut self.flow;
        let flow_id = flow.id;
        run_chain!(
            self.slots,
            Hook::Error,
            Some(flow_id),
            |i, p| p.groups.http.is_some() && admitted[i],
            async |store, groups| {
                let Some(g) = &groups.http else { return Ok(()) };
                let lent = Lent::new(store, Some(&mut *flow), None, Some(&mut *request), None);
                let out = g.call_error(&mut *store, borrow(&lent.flow)?, borrow(&lent.request)?, message).await;
                lent.restore(store, Some(&mut *flow), None, Some(&mut *request), None);
                out
            },
            |_, _, _| ControlFlow::<()>::Continue(()),
        );
    }
}
