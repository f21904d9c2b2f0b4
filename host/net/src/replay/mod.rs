//! Replay, as mitmproxy's `clientplayback` and `serverplayback` addons do it, on the one
//! exchange every HTTP version drives:
//! - client replay ([`Proxy::replay_client`]): a saved request is sent again through the
//!   exchange with no client — the plugins' hooks run as for a live request, it goes to
//!   the saved server (through the upstream proxy in upstream mode), and the new flow is
//!   recorded, marked as a replay of the request;
//! - server replay ([`ServerReplay`]): a request that matches a saved one (the rules and
//!   options in [`matching`]) is answered with the saved response in place of the
//!   upstream, marked as a replay of the response; others follow `server_replay_extra`.
//!
//! HTTP flows only (WebSocket, TCP and the other protocols replay in their own layers).

mod matching;

use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use bytes::Bytes;
use flowgate_flow::{Flow, Payload, Response, Timestamp, WebSocketData};
pub use matching::MatchOptions;

use crate::conn::ConnCtx;
use crate::http::exchange::{self, Inbound};
use crate::record::Outcome;
use crate::upstream::{Body, Target};
use crate::{Mode, Proxy};

/// What a request no saved response matches gets (mitmproxy's `server_replay_extra`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum ReplayExtra {
    /// Sent to the upstream as usual.
    #[default]
    Forward,
    /// Killed: the client's connection is closed, the flow records why.
    Kill,
    /// Answered with an empty response of this status (204, 400, 404 or 500).
    Status(u16),
}

impl ReplayExtra {
    /// Parses `forward`, `kill`, `204`, `400`, `404` or `500`, mitmproxy's choices.
    pub fn parse(text: &str) -> Result<ReplayExtra, String> {
        match text.trim() {
            "forward" => Ok(ReplayExtra::Forward),
            "kill" => Ok(ReplayExtra::Kill),
            code @ ("204" | "400" | "404" | "500") => Ok(ReplayExtra::Status(code.parse().unwrap_or(404))),
            other => Err(format!("{other:?}: expected forward, kill, 204, 400, 404 or 500")),
        }
    }
}

/// What server replay does with a request.
pub(crate) enum Answered {
    /// Answer with this response, in place of the upstream's (and, after a 101, play the
    /// recorded server's side of the WebSocket).
    Saved(Response, Option<Arc<Saved>>),
    /// Send it upstream.
    Forward,
    /// Close the client's connection (`server_replay_extra=kill`).
    Kill,
}

/// One saved answer: the response, and the WebSocket that followed it, if one did.
#[derive(Debug)]
pub(crate) struct Saved {
    pub response: Response,
    pub websocket: Option<WebSocketData>,
}

/// Server replay's options (mitmproxy's `server_replay_*`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerReplayOptions {
    /// Which parts of a request must match.
    pub matching: MatchOptions,
    /// What a request nothing matches gets.
    pub extra: ReplayExtra,
    /// `server_replay_reuse`: a saved response answers every match, not only the first.
    pub reuse: bool,
    /// `server_replay_refresh`: dates and cookie expiry moved to now.
    pub refresh: bool,
}

impl Default for ServerReplayOptions {
    fn default() -> Self {
        ServerReplayOptions {
            matching: MatchOptions::default(),
            extra: ReplayExtra::Forward,
            reuse: false,
            refresh: true,
        }
    }
}

/// What server replay answers with: the saved responses by their requests' keys, each
/// used once (in the order saved) unless `server_replay_reuse`.
pub struct ServerReplay {
    options: ServerReplayOptions,
    saved: Mutex<HashMap<Vec<u8>, VecDeque<Arc<Saved>>>>,
    left: AtomicUsize,
    skipped: usize,
    /// Told when the last saved response has been served.
    served_out: tokio::sync::Notify,
}

impl std::fmt::Debug for ServerReplay {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServerReplay").field("options", &self.options).field("left", &self.left()).finish()
    }
}

impl ServerReplay {
    /// Server replay of the HTTP flows among `flows` whose response was saved whole (a
    /// response whose body was not stored cannot be served; those are counted in
    /// [`ServerReplay::skipped`]).
    pub fn new(flows: impl IntoIterator<Item = Flow>, options: ServerReplayOptions) -> ServerReplay {
        let mut saved: HashMap<Vec<u8>, VecDeque<Arc<Saved>>> = HashMap::new();
        let (mut count, mut skipped) = (0, 0);
        for flow in flows {
            let Payload::Http(http) = flow.payload else { continue };
            match http.response {
                Some(response) if response.body.is_some() || http.websocket.is_some() => {
                    saved
                        .entry(matching::key(&http.request, &options.matching))
                        .or_default()
                        .push_back(Arc::new(Saved { response, websocket: http.websocket }));
                    count += 1;
                }
                _ => skipped += 1,
            }
        }
        let served_out = tokio::sync::Notify::new();
        ServerReplay { options, saved: Mutex::new(saved), left: AtomicUsize::new(count), skipped, served_out }
    }

    /// Saved responses not served yet (all of them, with `server_replay_reuse`).
    pub fn left(&self) -> usize {
        self.left.load(Ordering::Acquire)
    }

    /// Returns once every saved response has been served (never with
    /// `server_replay_reuse`, which serves each as often as it matches).
    pub async fn exhausted(&self) {
        loop {
            let notified = self.served_out.notified();
            if self.left() == 0 && !self.options.reuse {
                return;
            }
            notified.await;
        }
    }

    /// HTTP flows that were not loaded: no response, or its body not stored.
    pub fn skipped(&self) -> usize {
        self.skipped
    }

    /// What a request nothing matches gets: `server_replay_extra` while saved responses
    /// are left (as mitmproxy, which forwards once it has served them all).
    fn extra(&self) -> ReplayExtra {
        if self.left() == 0 { ReplayExtra::Forward } else { self.options.extra }
    }

    /// Whether a request's body takes part in matching (so it must be read first).
    pub(crate) fn needs_body(&self) -> bool {
        !self.options.matching.ignore_content
    }

    /// What `request` gets: the saved response for it (refreshed to `now` unless told
    /// not to), else what `server_replay_extra` says (an empty answer counts as saved).
    pub(crate) fn answer(&self, request: &flowgate_flow::Request, now: Timestamp) -> Answered {
        match self.saved_for(request, now) {
            Some((response, saved)) => Answered::Saved(response, Some(saved)),
            None => match self.extra() {
                ReplayExtra::Forward => Answered::Forward,
                ReplayExtra::Kill => Answered::Kill,
                ReplayExtra::Status(status) => Answered::Saved(
                    Response {
                        status,
                        reason: exchange::canonical_reason(status),
                        body: Some(Bytes::new()),
                        ..Response::default()
                    },
                    None,
                ),
            },
        }
    }

    /// The saved response for `request`, refreshed to `now` unless told not to.
    fn saved_for(&self, request: &flowgate_flow::Request, now: Timestamp) -> Option<(Response, Arc<Saved>)> {
        let key = matching::key(request, &self.options.matching);
        let mut saved = self.saved.lock().unwrap_or_else(PoisonError::into_inner);
        let queue = saved.get_mut(&key)?;
        let found = if self.options.reuse {
            queue.front().cloned()?
        } else {
            let found = queue.pop_front()?;
            if queue.is_empty() {
                saved.remove(&key);
            }
            if self.left.fetch_sub(1, Ordering::AcqRel) == 1 {
                self.served_out.notify_waiters();
            }
            found
        };
        drop(saved);
        let mut response = found.response.clone();
        if self.options.refresh {
            matching::refresh(&mut response, now);
        }
        Some((response, found))
    }
}

/// A saved response as the upstream's would come: its body whole, framed by its length
/// (a recording's `Transfer-Encoding` described the wire it came on, not this body).
pub(crate) fn as_upstream_response(mut saved: Response, head: bool) -> (Response, Body) {
    let body = saved.body.take().unwrap_or_default();
    let trailers = std::mem::take(&mut saved.trailers);
    if head || matches!(saved.status, 100..=199 | 204 | 304) {
        // No body, and the fields say what a GET's would have been: kept as saved.
    } else if trailers.is_empty() {
        saved.headers.remove("transfer-encoding");
        exchange::set_length(&mut saved.headers, body.len());
    } else {
        saved.headers.remove("transfer-encoding");
        saved.headers.remove("content-length");
    }
    saved.timestamp_start = Some(crate::capture::now());
    saved.timestamp_end = None;
    let mut map = hyper::HeaderMap::new();
    exchange::fill_headers(&mut map, &trailers);
    let trailers = (!map.is_empty()).then_some(map);
    (saved, crate::http::body::with_trailers(body, trailers))
}

/// What became of a request client replay sent again.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Replayed {
    /// A response came back (from the upstream, a plugin or server replay).
    Answered {
        /// Its status.
        status: u16,
    },
    /// The flow failed (no upstream, a timeout, a plugin's kill); the new flow records
    /// the error too.
    Failed(String),
    /// The flow cannot be replayed (not HTTP, or its request body was not stored).
    Skipped(&'static str),
}

/// Where a replayed flow's one outcome is kept for [`Proxy::replay_client`].
#[derive(Default)]
pub(crate) struct ReplayTap(Mutex<Option<Outcome>>);

impl ReplayTap {
    pub fn put(&self, outcome: &Outcome) {
        *self.0.lock().unwrap_or_else(PoisonError::into_inner) = Some(outcome.clone());
    }

    fn take(&self) -> Option<Outcome> {
        self.0.lock().unwrap_or_else(PoisonError::into_inner).take()
    }
}

impl Proxy {
    /// Sends `flow`'s request again (client replay): through the plugins, to the server
    /// it went to — through the upstream proxy when `mode` is upstream mode — with no
    /// client, on a connection of its own. The new flow is recorded like a live one,
    /// marked as a replay of the request; its response body is read to the end and
    /// dropped. Every phase has the live deadlines (`connect_timeout`,
    /// `upstream_timeout`).
    pub async fn replay_client(self: &Arc<Self>, flow: &Flow, mode: Arc<Mode>) -> Replayed {
        let Payload::Http(http) = &flow.payload else {
            return Replayed::Skipped("not an HTTP flow");
        };
        let mut request = http.request.clone();
        if http.websocket.is_some() {
            // The scripted client does not compress: no extension is offered for it.
            request.headers.remove("sec-websocket-extensions");
        }
        if request.body.is_none() {
            return Replayed::Skipped("its request body was not stored");
        }
        request.timestamp_start = None;
        request.timestamp_end = None;
        // Replayed in the mode given (regular or upstream); never to a reverse target.
        let mode = match &*mode {
            Mode::Reverse { .. } => Arc::new(Mode::Regular),
            _ => mode,
        };
        let unspecified = SocketAddr::from(([0, 0, 0, 0], 0));
        let tap = Arc::new(ReplayTap::default());
        let ctx = ConnCtx::detached(self.clone(), mode, unspecified, tap.clone());
        let mut target = Target::new(request.scheme, request.host.clone(), request.port);
        // The server name the saved flow's TLS used, when it was not the host.
        target.sni = flow
            .server
            .as_ref()
            .and_then(|s| s.tls.as_ref())
            .and_then(|t| t.sni.clone())
            .filter(|sni| !sni.eq_ignore_ascii_case(&request.host));
        let inbound = Inbound { request, scheme: None, authority: None, body: crate::http::full(Bytes::new()) };
        let replied = exchange::handle(ctx.clone(), inbound, Some(target), None).await;
        if let Ok(mut reply) = replied {
            match (reply.upgrade.take(), &http.websocket) {
                // A WebSocket again: the recorded client's messages are sent.
                (Some(start), Some(recorded)) => {
                    let client = crate::websocket::scripted(flowgate_ws::Role::Client, recorded);
                    crate::websocket::run(ctx.clone(), *start, client).await;
                }
                // The flow is recorded once its body has passed; what it says is not kept.
                _ => drop(http_body_util::BodyExt::collect(reply.body).await),
            }
        }
        ctx.release().await;
        match tap.take() {
            Some(Outcome::Response { status, .. }) => Replayed::Answered { status },
            Some(Outcome::Error(message)) => Replayed::Failed(message),
            None => Replayed::Failed("the exchange ended without an outcome".to_owned()),
        }
    }
}
