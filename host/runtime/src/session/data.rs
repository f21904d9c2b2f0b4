//! The TCP and UDP hook groups: start, each message (replace, drop, kill), end, error.

use std::ops::ControlFlow;

use super::filter::{FlowFilters, data_subject};
use super::{Applied, Call, Lent, Slots, borrow};
use flowgate_flow::{FlowInfo, Hook, Injected, PluginFailure};

use crate::bindings::imports::types;
use crate::plugin::Plugin;

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
pub(super) enum DataProtocol {
    Tcp,
    Udp,
}

/// The session of one raw TCP or UDP flow: start, each message, end or error.
pub struct DataFlowSession {
    pub(super) slots: Slots,
    /// The flow.
    pub flow: FlowInfo,
    pub(super) protocol: DataProtocol,
    /// Which plugins the manifests' filters let this flow call.
    pub(super) filters: FlowFilters,
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
        let udp = self.protocol == DataProtocol::Udp;
        if self.filters.pending() {
            self.filters.decide(&self.slots.chain, &data_subject(&self.flow, udp));
        }
        let admitted = &self.filters.admitted;
        let (flow, protocol) = (&mut self.flow, self.protocol);
        let flow_id = flow.id;
        let failed = run_chain!(
            self.slots,
            hook,
            Some(flow_id),
            |i, p| exports_data(p, protocol) && admitted[i],
            async |store, groups| {
                let lent = Lent::new(store, Some(&mut *flow), None, None, None);
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
        let udp = self.protocol == DataProtocol::Udp;
        if self.filters.pending() {
            self.filters.decide(&self.slots.chain, &data_subject(&self.flow, udp));
        }
        let admitted = &self.filters.admitted;
        let (flow, protocol) = (&mut self.flow, self.protocol);
        let flow_id = flow.id;
        let hook = if protocol == DataProtocol::Tcp { Hook::TcpMessage } else { Hook::UdpMessage };
        let mut data = data;
        let current = &mut data;
        let stopped = run_chain!(
            self.slots,
            hook,
            Some(flow_id),
            |i, p| exports_data(p, protocol) && admitted[i],
            async |store, groups| {
                let lent = Lent::new(store, Some(&mut *flow), None, None, None);
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
                    slots.refused(i, hook, message).map_break(DataAction::Fail)
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
