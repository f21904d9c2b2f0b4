//! flowgate's plugin runtime: the only crate that knows wasmtime.
//!
//! It loads plugins (WebAssembly components built against `flowgate:plugin@0.2` (0.2.0 and 0.2.1)),
//! checks them against their manifests, and runs their hooks in a sandbox: a memory cap,
//! a wall-clock deadline per hook (epoch interruption), optional fuel, capped logs and
//! state, a failure policy, a CPU budget and a circuit breaker. It does no network IO; the network layer
//! drives it through [`Chain`], [`ConnectionSession`] and [`HttpFlowSession`].

mod bindings;
mod breaker;
mod budget;
mod host;
pub mod manifest;
mod outbound;
mod plugin;
mod runtime;
mod session;
mod stderr;

pub use breaker::BreakerState;
pub use host::{LogLevel, LogRecord, LogSink};
pub use manifest::{Capabilities, FailurePolicy, InstanceModel, Limits, Manifest, ManifestError};
pub use outbound::{OutboundError, OutboundFuture, OutboundHttp, OutboundRequest, OutboundResponse};
pub use plugin::{Compiled, Plugin, PluginStats};
pub use runtime::{LoadError, Runtime, RuntimeConfig};
pub use session::{
    Chain, ChainHandle, ConnectionSession, DataAction, DataFlowSession, DnsAction, DnsFlowSession, FlowStarter,
    HttpAction, HttpFlowSession, Reroute, TlsSide, WebSocketAction, WebSocketClose, WebSocketFlowSession,
};
pub use stderr::STDERR_TAIL_BYTES;
