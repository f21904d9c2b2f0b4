//! HTTP/1.x, flowgate's own: on the sans-IO codec of the `flowgate-h1` crate (heads kept
//! as on the wire, strict request framing, chunked bodies), the client-side layer
//! ([`server`]) and the upstream connection ([`client`]). hyper keeps neither field order and case on both
//! sides nor lets a server forward 1xx responses; ARCHITECTURE.md says why this is ours.

pub(crate) mod client;
pub(crate) mod server;
