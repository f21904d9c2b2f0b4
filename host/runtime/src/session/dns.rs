//! The DNS hook group: the query (answer, drop), the response (replace), errors.

use std::ops::ControlFlow;

use super::{Call, Lent, Slots, borrow};
use flowgate_flow::{DnsMessage, FlowInfo, Hook, PluginFailure};

use crate::bindings::hooks;

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
    pub(super) slots: Slots,
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
                let lent = Lent::new(store, Some(&mut *flow), None, None, None);
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
                        Err(e) => slots.refused(i, hook, e.to_string()).map_break(DnsAction::Fail),
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
                let lent = Lent::new(store, Some(&mut *flow), None, None, None);
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
