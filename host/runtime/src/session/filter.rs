//! Manifest filters: which plugins a flow's hooks call. A plugin whose manifest has a
//! `filter` is called only for the flows it matches, so it costs nothing elsewhere. A
//! filter that reads only what the request head settles (method, URL, domain, request
//! fields, client address, kind) is matched once, at the flow's first hook, and the
//! answer holds for the whole flow; any other is matched at each hook against the flow
//! as it is when the hook starts (before the response `~s` is false, `~dst` matches once
//! the server is chosen, `~e` in the error hook). Replay marks are not visible here.

use std::net::SocketAddr;
use std::sync::Arc;

use flowgate_flow::{
    Address, Client, DataMessage, Flow, FlowError, FlowInfo, HttpFlow, Payload, Request, Response, Server, Timestamp,
};

use crate::plugin::Plugin;

/// One flow's filter decisions, plugin by plugin.
pub(crate) struct FlowFilters {
    /// A decision that holds for the rest of the flow.
    decided: Vec<Option<bool>>,
    /// The answers of the hook being run: whether plugin `i` is called.
    pub admitted: Vec<bool>,
}

impl FlowFilters {
    pub fn new(chain: &[Arc<Plugin>]) -> FlowFilters {
        // Plugins without a filter are decided for good now.
        let decided = chain.iter().map(|p| p.manifest().filter.is_none().then_some(true)).collect();
        FlowFilters { decided, admitted: vec![true; chain.len()] }
    }

    /// Whether some plugin's answer depends on the flow as it is now (else the answers
    /// stand and nothing needs matching).
    pub fn pending(&self) -> bool {
        self.decided.iter().any(Option::is_none)
    }

    /// Decides each plugin for the hook about to run, matching the filters still pending
    /// against `flow`, the flow as it is now.
    pub fn decide(&mut self, chain: &[Arc<Plugin>], flow: &Flow) {
        for (i, plugin) in chain.iter().enumerate() {
            self.admitted[i] = match (self.decided[i], &plugin.manifest().filter) {
                (Some(decided), _) => decided,
                (None, None) => true,
                (None, Some(filter)) => {
                    let matched = filter.matches(flow);
                    if filter.settled_by_request_head() {
                        self.decided[i] = Some(matched);
                    }
                    matched
                }
            };
        }
    }

    /// [`FlowFilters::decide`] for an HTTP hook: the request and response are lent to the
    /// flow being matched and given back, so matching copies neither.
    pub fn decide_http(
        &mut self,
        chain: &[Arc<Plugin>],
        info: &FlowInfo,
        request: &mut Request,
        response: Option<&mut Response>,
        error: Option<&str>,
    ) {
        if !self.pending() {
            return;
        }
        let mut response = response;
        let http = HttpFlow {
            request: std::mem::take(request),
            response: response.as_deref_mut().map(std::mem::take),
            websocket: None,
        };
        let mut flow = with_server(Flow::new(info.id, client(info), Timestamp::default(), Payload::Http(http)), info);
        flow.error = error.map(|message| FlowError { message: message.to_owned(), timestamp: Timestamp::default() });
        self.decide(chain, &flow);
        if let Payload::Http(http) = flow.payload {
            *request = http.request;
            if let (Some(response), Some(lent)) = (response, http.response) {
                *response = lent;
            }
        }
    }
}

fn client(info: &FlowInfo) -> Client {
    let unspecified = SocketAddr::from(([0, 0, 0, 0], 0));
    let peer = info.client_address.parse().unwrap_or(unspecified);
    Client::new(info.connection_id, peer, unspecified, Timestamp::default())
}

fn with_server(mut flow: Flow, info: &FlowInfo) -> Flow {
    let address = info.server_address.as_deref().and_then(|a| {
        let (host, port) = a.rsplit_once(':')?;
        Address::new(host, port.parse().ok()?).ok()
    });
    flow.server = address.map(|a| Server::new(info.connection_id, a));
    flow.metadata = info.metadata.clone();
    flow
}

/// A TCP or UDP flow as a filter sees it at a hook (its messages so far are not kept by
/// the session: a filter on their content matches none).
pub(crate) fn data_subject(info: &FlowInfo, udp: bool) -> Flow {
    let messages: Vec<DataMessage> = Vec::new();
    let payload = if udp { Payload::Udp(messages) } else { Payload::Tcp(messages) };
    with_server(Flow::new(info.id, client(info), Timestamp::default(), payload), info)
}
