//! tls-passthrough: relay TLS to listed hosts without decrypting (like mitmproxy's
//! `ignore_hosts`), refuse listed client addresses, and count connections.
//!
//! `[config]`:
//! - `hosts` — comma-separated SNI patterns passed through (`*.bank.example` for subdomains);
//! - `deny_clients` — comma-separated client IPs whose connections are closed at once.
//!
//! Connection counts are kept in the plugin's key-value state under `connections`.

use flowgate_sdk::tls::{ClientHello, Side};
use flowgate_sdk::{
    Connection, ConnectionHooks, LifecycleHooks, TlsDecision, TlsHooks, config, export_plugin, kv, log,
};

struct TlsPassthrough;

fn list(key: &str) -> Vec<String> {
    config::get(key)
        .unwrap_or_default()
        .split(',')
        .map(|s| s.trim().to_ascii_lowercase())
        .filter(|s| !s.is_empty())
        .collect()
}

fn sni_matches(pattern: &str, sni: &str) -> bool {
    match pattern.strip_prefix("*.") {
        Some(suffix) => sni == suffix || sni.ends_with(&format!(".{suffix}")),
        None => sni == pattern,
    }
}

fn side_name(side: Side) -> &'static str {
    match side {
        Side::Client => "client",
        Side::Server => "server",
    }
}

fn bump(key: &str) -> u64 {
    let n = kv::get(key).and_then(|v| v.try_into().ok()).map(u64::from_le_bytes).unwrap_or(0) + 1;
    let _ = kv::set(key, &n.to_le_bytes());
    n
}

#[flowgate_sdk::hooks]
impl LifecycleHooks for TlsPassthrough {
    fn configure() -> Result<(), String> {
        for pattern in list("hosts") {
            if pattern.contains('*') && !pattern.starts_with("*.") {
                return Err(format!("config.hosts: only a leading `*.` is supported, got {pattern:?}"));
            }
        }
        Ok(())
    }

    fn running() {
        log::info("tls-passthrough running");
    }
}

#[flowgate_sdk::hooks]
impl ConnectionHooks for TlsPassthrough {
    fn client_connected(conn: &Connection) -> bool {
        let n = bump("connections");
        let address = conn.client_address();
        let ip = address.rsplit_once(':').map_or(address.as_str(), |(ip, _)| ip);
        let ip = ip.trim_start_matches('[').trim_end_matches(']');
        if list("deny_clients").iter().any(|d| d == ip) {
            log::warn(&format!("refused client {address} (connection {n})"));
            return false;
        }
        true
    }

    fn client_disconnected(conn: &Connection) {
        log::debug(&format!("client {} disconnected", conn.client_address()));
    }
}

#[flowgate_sdk::hooks]
impl TlsHooks for TlsPassthrough {
    fn tls_clienthello(conn: &Connection, hello: ClientHello) -> TlsDecision {
        let Some(sni) = hello.sni.map(|s| s.to_ascii_lowercase()) else { return TlsDecision::Intercept };
        if list("hosts").iter().any(|p| sni_matches(p, &sni)) {
            log::info(&format!("passthrough {sni} for connection {} (alpn {:?})", conn.id(), hello.alpn_protocols));
            return TlsDecision::Passthrough;
        }
        TlsDecision::Intercept
    }

    fn tls_established(conn: &Connection, side: Side) {
        log::debug(&format!("tls established on {} side of connection {}", side_name(side), conn.id()));
    }

    fn tls_failed(conn: &Connection, side: Side, message: String) {
        log::warn(&format!("tls failed on {} side of connection {}: {message}", side_name(side), conn.id()));
    }
}

export_plugin!(TlsPassthrough: lifecycle, connection, tls);
