//! dns-override: answers A and AAAA queries for chosen names with chosen addresses, like
//! a hosts file, and drops queries for blocked names. Exports only the `dns` group.
//!
//! `[config]`:
//! - `hosts` — space-separated `name=address` pairs (IPv4 or IPv6);
//! - `block` — space-separated names whose queries get no answer;
//! - `ttl` — the answers' TTL in seconds (default 60).
//!
//! Names match case-insensitively, without a trailing dot. Other queries go upstream.

use std::net::IpAddr;

use flowgate_sdk::dns::{DnsVerdict, Message, ResourceRecord};
use flowgate_sdk::{DnsHooks, Flow, config, export_plugin};

struct DnsOverride;

const A: u16 = 1;
const AAAA: u16 = 28;
/// QR (a response), RD copied, RA set, NOERROR.
const RESPONSE: u16 = 0x8000 | 0x0080;
const RD: u16 = 0x0100;

fn normal(name: &str) -> String {
    name.trim_end_matches('.').to_ascii_lowercase()
}

fn lookup(name: &str) -> Option<IpAddr> {
    let hosts = config::get("hosts")?;
    hosts.split_whitespace().find_map(|pair| {
        let (n, addr) = pair.split_once('=')?;
        (normal(n) == normal(name)).then(|| addr.parse().ok()).flatten()
    })
}

fn blocked(name: &str) -> bool {
    config::get("block").is_some_and(|names| names.split_whitespace().any(|n| normal(n) == normal(name)))
}

#[flowgate_sdk::hooks]
impl DnsHooks for DnsOverride {
    fn dns_request(flow: &Flow, query: Message) -> DnsVerdict {
        let Some(question) = query.questions.first() else { return DnsVerdict::Continue };
        if blocked(&question.name) {
            let _ = flow.set_metadata("dns-override", "blocked");
            return DnsVerdict::Kill;
        }
        let Some(addr) = lookup(&question.name) else { return DnsVerdict::Continue };
        let ttl = config::get("ttl").and_then(|t| t.parse().ok()).unwrap_or(60);
        let data = match (addr, question.record_type) {
            (IpAddr::V4(v4), A) => v4.octets().to_vec(),
            (IpAddr::V6(v6), AAAA) => v6.octets().to_vec(),
            // The name is ours, but not for this type: an empty answer (NODATA).
            _ => Vec::new(),
        };
        let answers = if data.is_empty() {
            Vec::new()
        } else {
            vec![ResourceRecord { name: question.name.clone(), record_type: question.record_type, class: question.class, ttl, data }]
        };
        let _ = flow.set_metadata("dns-override", "answered");
        DnsVerdict::Respond(Message {
            id: query.id,
            flags: RESPONSE | (query.flags & RD),
            questions: query.questions.clone(),
            answers,
            authorities: Vec::new(),
            additionals: Vec::new(),
        })
    }
}

export_plugin!(DnsOverride: dns);
