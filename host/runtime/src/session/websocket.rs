//! The WebSocket hook group: start, each message (edit, drop, replace by several, kill), end.

use std::ops::ControlFlow;

use super::{Applied, Call, Lent, Slots, borrow};
use flowgate_flow::{FlowInfo, Hook, Injected, MessageKind, PluginFailure, WebSocketMessage};

use crate::bindings::hooks;

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
    pub(super) slots: Slots,
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

    /// Whether any plugin sees the messages (exports the websocket group and implements
    /// `websocket-message`): if not, frames may be relayed as they come.
    pub fn sees_messages(&self) -> bool {
        self.slots.chain.iter().any(|p| p.groups.websocket.is_some() && p.implements(Hook::WebsocketMessage))
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
                let lent = Lent::new(store, Some(&mut *flow), None, None, None);
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
                // `current` changes only once the plugin's call succeeded: a plugin that
                // fails (fail-open) lets the messages go on as they came to it.
                let mut out = Vec::with_capacity(current.len());
                for m in current.clone() {
                    let lent = Lent::new(store, Some(&mut *flow), None, None, None);
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
                    slots.refused(i, Hook::WebsocketMessage, message).map_break(WebSocketAction::Fail)
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
    hooks::websocket::Message { from_client: m.from_client, kind, data: m.data.to_vec() }
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
    WebSocketMessage { from_client: m.from_client, kind, data: m.data.into(), ..WebSocketMessage::default() }
}
