//! Manifest filters: which plugins a flow's hooks call. A plugin whose manifest has a
//! `filter` is called only for the flows it matches, so it costs nothing elsewhere. A
//! filter that reads nothing of the response is matched once, at the flow's first hook,
//! and the answer holds for the whole flow; one that does is matched at each hook against
//! the flow as it is when the hook starts (before the response, `~s` is false).

use std::cell::OnceCell;
use std::net::SocketAddr;
use std::sync::Arc;

use flowgate_flow::{
    Address, Client, DataMessage, Flow, FlowInfo, HttpFlow, Payload, Request, Response, Server, Timestamp,
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

    /// Decides each plugin for the hook about to run; `subject` makes the flow as it is
    /// now, and is called only if some filter has to be matched.
    pub fn decide(&mut self, chain: &[Arc<Plugin>], subject: impl FnOnce() -> Flow) {
        let flow = OnceCell::new();
        let mut subject = Some(subject);
        for (i, plugin) in chain.iter().enumerate() {
            self.admitted[i] = match (self.decided[i], &plugin.manifest().filter) {
                (Some(decided), _) => decided,
                (None, None) => true,
                (None, Some(filter)) => {
                    let flow = flow.get_or_init(|| subject.take().map(|make| make()).unwrap_or_else(empty_flow));
                    let matched = filter.matches(flow);
                    if !filter.needs_response() {
                        self.decided[i] = Some(matched);
                    }
                    matched
                }
            };
        }
    }
}

fn empty_flow() -> Flow {
    http_subject(&FlowInfo::default(), &Request::default(), None)
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

/// An HTTP flow as a filter sees it at a hook.
pub(crate) fn http_subject(info: &FlowInfo, request: &Request, response: Option<&Response>) -> Flow {
    let http = HttpFlow { request: request.clone(), response: response.cloned(), websocket: None };
    with_server(Flow::new(info.id, client(info), Timestamp::default(), Payload::Http(http)), info)
}

/// A TCP or UDP flow as a filter sees it at a hook (its messages so far are not kept by
/// the session: a filter on their content matches none).
pub(crate) fn data_subject(info: &FlowInfo, udp: bool) -> Flow {
    let messages: Vec<DataMessage> = Vec::new();
    let payload = if udp { Payload::Udp(messages) } else { Payload::Tcp(messages) };
    with_server(Flow::new(info.id, client(info), Timestamp::default(), payload), info)
}
