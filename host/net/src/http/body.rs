//! Bodies between client, plugins and upstream: a progress deadline, buffering for plugins
//! (with `stream_large_bodies` and `body_size_limit`), and streaming through chunk hooks.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use super::exchange::{Exchange, Reply, to_headers};
use crate::error::{ClientError, Error, UpstreamError};
use crate::memory::{BufferBudget, OverBudget, Reservation};
use crate::record::Outcome;
use crate::stall::StallClock;
use crate::upstream::{Body, BoxError};
use bytes::Bytes;
use flowgate_flow::{Request, Response};
use flowgate_runtime::{HttpAction, HttpFlowSession};
use http_body_util::BodyExt;

/// A deadline on a body's progress: what it is, how long, and the option that sets it.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Stall {
    pub what: &'static str,
    pub after: Duration,
    pub option: &'static str,
}

impl std::fmt::Display for Stall {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "no {} for {:?} ({})", self.what, self.after, self.option)
    }
}

/// A body that fails if its next frame takes longer than its [`Stall`] deadline to come,
/// counted from when its reader asks for it (a reader that is slow to ask — a plugin, a
/// client with a full window — is not the body's fault).
pub(crate) struct ProgressTimeout<B> {
    inner: B,
    stall: Stall,
    clock: StallClock,
}

impl<B> ProgressTimeout<B> {
    pub fn new(inner: B, stall: Stall) -> Self {
        ProgressTimeout { inner, stall, clock: StallClock::new(stall.after) }
    }
}

impl<B> hyper::body::Body for ProgressTimeout<B>
where
    B: hyper::body::Body<Data = Bytes> + Unpin,
    B::Error: Into<BoxError>,
{
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<hyper::body::Frame<Bytes>, BoxError>>> {
        match Pin::new(&mut self.inner).poll_frame(cx) {
            Poll::Ready(frame) => {
                self.clock.progressed();
                Poll::Ready(frame.map(|f| f.map_err(Into::into)))
            }
            Poll::Pending => match self.clock.stalled(cx) {
                Poll::Ready(()) => Poll::Ready(Some(Err(self.stall.to_string().into()))),
                Poll::Pending => Poll::Pending,
            },
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> hyper::body::SizeHint {
        self.inner.size_hint()
    }
}

/// Whose turn it is while a request goes upstream, and since when: the upstream's (to
/// take the request and answer it), or the client's (the request body's next piece is
/// not there yet). Only the upstream's turn counts against `upstream_timeout`.
pub(crate) struct Turn(std::sync::Mutex<(bool, Instant)>);

impl Turn {
    /// The upstream's turn, from now.
    pub fn new() -> Arc<Turn> {
        Arc::new(Turn(std::sync::Mutex::new((false, Instant::now()))))
    }

    fn set(&self, client: bool) {
        let mut turn = self.0.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        if client != turn.0 || !client {
            *turn = (client, Instant::now());
        }
    }

    /// When the upstream's turn runs out, or `None` while it is the client's.
    fn deadline(&self, after: Duration) -> Option<Instant> {
        let turn = self.0.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        (!turn.0).then(|| turn.1 + after)
    }

    /// Runs `send` (a request going up and its response head coming back) under `stall`:
    /// it fails once the upstream's turn has lasted `stall.after`.
    pub async fn bound<T>(
        &self,
        send: impl Future<Output = Result<T, UpstreamError>>,
        stall: Stall,
    ) -> Result<T, UpstreamError> {
        let mut send = std::pin::pin!(send);
        loop {
            // While it is the client's turn, look again later (its turn may end any time).
            let wake = self.deadline(stall.after).unwrap_or_else(|| Instant::now() + stall.after);
            tokio::select! {
                result = &mut send => return result,
                () = tokio::time::sleep_until(wake.into()) => {
                    if self.deadline(stall.after).is_some_and(|d| d <= Instant::now()) {
                        return Err(UpstreamError::Timeout { what: stall.what, after: stall.after, option: stall.option });
                    }
                }
            }
        }
    }
}

/// A body going upstream that tells its [`Turn`] when it waits for the client.
pub(crate) struct Watched<B> {
    inner: B,
    turn: Arc<Turn>,
}

impl<B> Watched<B> {
    pub fn new(inner: B, turn: Arc<Turn>) -> Self {
        Watched { inner, turn }
    }
}

impl<B> hyper::body::Body for Watched<B>
where
    B: hyper::body::Body<Data = Bytes> + Unpin,
{
    type Data = Bytes;
    type Error = B::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<hyper::body::Frame<Bytes>, B::Error>>> {
        let polled = Pin::new(&mut self.inner).poll_frame(cx);
        self.turn.set(polled.is_pending());
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> hyper::body::SizeHint {
        self.inner.size_hint()
    }
}

/// A body read for plugins.
pub(crate) enum Buffered {
    /// The whole body, its trailers if it had any, and the bytes it holds in
    /// `buffer_memory_limit` (given back when the flow is done with it).
    Whole(Bytes, Option<hyper::HeaderMap>, Reservation),
    /// Larger than `stream_large_bodies`: what was read, then the rest, streamed untouched.
    Streamed(Body),
}

/// Yields `prefix`, then `rest`.
struct PrefixThen<B> {
    prefix: Option<Bytes>,
    /// The prefix's share of `buffer_memory_limit`, given back once it is sent on.
    held: Option<Reservation>,
    rest: B,
}

impl<B> hyper::body::Body for PrefixThen<B>
where
    B: hyper::body::Body<Data = Bytes, Error = BoxError> + Unpin,
{
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<hyper::body::Frame<Bytes>, BoxError>>> {
        if let Some(prefix) = self.prefix.take() {
            return std::task::Poll::Ready(Some(Ok(hyper::body::Frame::data(prefix))));
        }
        self.held = None;
        std::pin::Pin::new(&mut self.rest).poll_frame(cx)
    }
}

/// Why a body could not be buffered.
#[derive(Debug, thiserror::Error)]
pub(crate) enum BufferError {
    /// Past `body_size_limit`.
    #[error("body exceeds body_size_limit ({limit} bytes)")]
    TooLarge {
        /// The limit.
        limit: usize,
    },
    /// The body failed while it was read.
    #[error("reading the body failed: {0}")]
    Read(String),
    /// All buffered bodies together would pass `buffer_memory_limit`.
    #[error("buffered bodies would exceed buffer_memory_limit ({limit} bytes); {refused} refused so far")]
    OverBudget {
        /// The limit.
        limit: usize,
        /// Bodies refused so far.
        refused: u64,
    },
}

impl BufferError {
    /// As an error of the flow, for a request body (the client's, unless flowgate's own
    /// budget was full).
    pub fn of_request(self) -> Error {
        match self {
            BufferError::TooLarge { limit } => ClientError::BodyTooLarge { limit }.into(),
            BufferError::Read(e) => ClientError::BodyRead(e).into(),
            BufferError::OverBudget { limit, refused } => Error::overloaded("the request body", limit, refused),
        }
    }

    /// As an error of the flow, for a response body (the upstream's, unless flowgate's
    /// own budget was full).
    pub fn of_response(self) -> Error {
        match self {
            BufferError::OverBudget { limit, refused } => Error::overloaded("the response body", limit, refused),
            other => UpstreamError::Body(other.to_string()).into(),
        }
    }
}

impl From<OverBudget> for BufferError {
    fn from(OverBudget { limit, refused }: OverBudget) -> BufferError {
        if refused.is_power_of_two() {
            tracing::warn!(
                "a buffered body was refused: buffer_memory_limit ({limit} bytes) is full; {refused} refused so far"
            );
        }
        BufferError::OverBudget { limit, refused }
    }
}

/// Reads a whole body for plugins. Past `stream_large_bodies` (if set) the body streams on
/// untouched instead; past `body_size_limit` it is an error. Its bytes are reserved in
/// `budget` first: all of them at once when `length` (a declared Content-Length) says how
/// many, so a body the budget cannot hold is refused before any of it is read.
pub(crate) async fn buffer<B>(
    mut body: B,
    options: &crate::ProxyOptions,
    budget: &Arc<BufferBudget>,
    length: Option<u64>,
) -> Result<Buffered, BufferError>
where
    B: hyper::body::Body<Data = Bytes, Error = BoxError> + Send + Sync + Unpin + 'static,
{
    let limit = options.stream_large_bodies.unwrap_or(options.body_size_limit);
    let mut held = budget.reserve();
    let expected = length.map_or(0, |n| usize::try_from(n).unwrap_or(usize::MAX).min(limit));
    held.grow(expected)?;
    let mut data = Vec::with_capacity(expected);
    let mut trailers = None;
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|e| BufferError::Read(e.to_string()))?;
        let chunk = match frame.into_data() {
            Ok(chunk) => chunk,
            Err(frame) => {
                // Kept: gRPC's status, a checksum... reach the other side after the body.
                if let Ok(t) = frame.into_trailers() {
                    trailers.get_or_insert_with(hyper::HeaderMap::new).extend(t);
                }
                continue;
            }
        };
        if data.len() + chunk.len() > limit {
            if options.stream_large_bodies.is_none() {
                return Err(BufferError::TooLarge { limit });
            }
            data.extend_from_slice(&chunk);
            let rest = PrefixThen { prefix: Some(Bytes::from(data)), held: Some(held), rest: body };
            return Ok(Buffered::Streamed(rest.boxed()));
        }
        let wanted = (data.len() + chunk.len()).saturating_sub(held.bytes());
        if wanted > 0 {
            held.grow(wanted)?;
        }
        data.extend_from_slice(&chunk);
    }
    Ok(Buffered::Whole(Bytes::from(data), trailers, held))
}

/// A body that keeps a [`Reservation`] until it is dropped (a buffered body on its way
/// to a peer).
pub(crate) struct Held<B> {
    inner: B,
    _held: Reservation,
}

impl<B> Held<B> {
    pub fn new(inner: B, held: Reservation) -> Held<B> {
        Held { inner, _held: held }
    }
}

impl<B: hyper::body::Body + Unpin> hyper::body::Body for Held<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<hyper::body::Frame<B::Data>, B::Error>>> {
        std::pin::Pin::new(&mut self.inner).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> hyper::body::SizeHint {
        self.inner.size_hint()
    }
}

/// A whole body, followed by its trailers if it has any.
pub(crate) fn with_trailers(data: Bytes, trailers: Option<hyper::HeaderMap>) -> Body {
    match trailers {
        None => super::full(data),
        Some(trailers) => frames([hyper::body::Frame::data(data), hyper::body::Frame::trailers(trailers)]),
    }
}

/// A body made of `frames`, at hand.
pub(crate) fn frames(frames: impl IntoIterator<Item = hyper::body::Frame<Bytes>>) -> Body {
    http_body_util::StreamBody::new(Frames(frames.into_iter().collect())).boxed()
}

/// A body made of the frames `rx` brings (a task's, with backpressure), ending when its
/// sender is dropped.
pub(crate) fn channel(rx: tokio::sync::mpsc::Receiver<Result<hyper::body::Frame<Bytes>, BoxError>>) -> Body {
    http_body_util::StreamBody::new(ChannelBody(rx)).boxed()
}

/// A body made of frames at hand.
struct Frames(std::collections::VecDeque<hyper::body::Frame<Bytes>>);

impl futures_core::Stream for Frames {
    type Item = Result<hyper::body::Frame<Bytes>, BoxError>;
    fn poll_next(
        mut self: std::pin::Pin<&mut Self>,
        _cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Self::Item>> {
        std::task::Poll::Ready(self.0.pop_front().map(Ok))
    }
}

/// Frames of a body produced by a task, with backpressure (a bounded channel).
struct ChannelBody(tokio::sync::mpsc::Receiver<Result<hyper::body::Frame<Bytes>, BoxError>>);

impl futures_core::Stream for ChannelBody {
    type Item = Result<hyper::body::Frame<Bytes>, BoxError>;
    fn poll_next(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Self::Item>> {
        self.0.poll_recv(cx)
    }
}

/// What a request body's pump hands back when the body has ended: the flow's session,
/// the request with the chunk hooks' edits and trailers, and the verdict of a plugin that
/// stopped the body (kill, a local answer, a fail-closed failure), if one did.
pub(crate) struct Pumped {
    pub session: HttpFlowSession,
    pub request: Request,
    pub stopped: Option<HttpAction>,
}

/// Streams a request body through the chunk hooks of the plugins that chose `stream`; the
/// session, and the request as the chunk hooks left it (their edits land on the flow),
/// come back through the returned channel when the body has ended.
pub(crate) fn stream_request_body<B>(
    mut session: HttpFlowSession,
    mut request: Request,
    mut source: B,
) -> (Body, tokio::sync::oneshot::Receiver<Pumped>)
where
    B: hyper::body::Body<Data = Bytes, Error = BoxError> + Unpin + Send + 'static,
{
    let (tx, rx) = tokio::sync::mpsc::channel(4);
    let (done_tx, done_rx) = tokio::sync::oneshot::channel();
    tokio::spawn(async move {
        let mut trailers = None;
        let mut stopped = None;
        loop {
            let (data, end) = match source.frame().await {
                Some(Ok(frame)) => match frame.into_data() {
                    Ok(data) => (data.to_vec(), false),
                    Err(frame) => {
                        trailers = frame.into_trailers().ok();
                        if let Some(t) = &trailers {
                            // The last chunk hook, and the flow, see them.
                            request.trailers = to_headers(t);
                        }
                        continue;
                    }
                },
                Some(Err(e)) => {
                    let _ = tx.send(Err(e)).await;
                    break;
                }
                None => (Vec::new(), true),
            };
            match session.request_body_chunk(&mut request, data, end).await {
                Ok(out) => {
                    if !out.is_empty() && tx.send(Ok(hyper::body::Frame::data(Bytes::from(out)))).await.is_err() {
                        break;
                    }
                }
                Err(action) => {
                    // The upstream sees the body fail; the exchange acts on the verdict.
                    let _ = tx.send(Err("the request body was stopped by a plugin".into())).await;
                    stopped = Some(action);
                    break;
                }
            }
            if end {
                if let Some(trailers) = trailers.take() {
                    let _ = tx.send(Ok(hyper::body::Frame::trailers(trailers))).await;
                }
                break;
            }
        }
        drop(tx);
        let _ = done_tx.send(Pumped { session, request, stopped });
    });
    (channel(rx), done_rx)
}

/// Streams a response body chunk by chunk through the plugins that chose `stream`; the
/// `response` hook runs and the flow is recorded when the body ends.
pub(crate) fn stream_through_plugins(mut ex: Exchange, mut response: Response, mut upstream: Body) -> Reply {
    let (tx, rx) = tokio::sync::mpsc::channel(4);
    // Chunks may change size: the length is no longer known.
    response.headers.remove("content-length");
    let body = channel(rx);
    let reply = Reply { response: response.clone(), body: ex.tee_response(body), upgrade: None };
    tokio::spawn(async move {
        let mut size = 0u64;
        let mut trailers = None;
        let failed = loop {
            let (data, end) = match upstream.frame().await {
                Some(Ok(frame)) => match frame.into_data() {
                    Ok(data) => (data.to_vec(), false),
                    Err(frame) => {
                        trailers = frame.into_trailers().ok();
                        continue;
                    }
                },
                Some(Err(e)) => break Some(format!("upstream body failed: {e}")),
                None => (Vec::new(), true),
            };
            match ex.session.response_body_chunk(&mut ex.request, &mut response, data, end).await {
                Ok(out) => {
                    size += out.len() as u64;
                    if !out.is_empty() && tx.send(Ok(hyper::body::Frame::data(Bytes::from(out)))).await.is_err() {
                        break Some("the client went away".to_owned());
                    }
                }
                Err(action) => break Some(format!("{action:?}")),
            }
            if end {
                break None;
            }
        };
        match failed {
            Some(message) => {
                let _ = tx.send(Err(message.clone().into())).await;
                ex.session.error(&mut ex.request, &message).await;
                ex.record_with(Outcome::Error(message), Some(&response));
            }
            None => {
                if let Some(trailers) = &trailers {
                    // The response hook, below, sees them (gRPC's status lives there).
                    response.trailers = to_headers(trailers);
                }
                // The response hook runs before the body's end goes out, so its verdict
                // counts: a kill or a fail-closed failure aborts the stream (the client
                // sees it cut off); a local answer cannot replace what was already sent.
                let stop = match ex.session.response(&mut ex.request, &mut response).await {
                    HttpAction::Kill => Some("killed by a plugin".to_owned()),
                    HttpAction::Fail(failure) => Some(failure.to_string()),
                    HttpAction::Respond(_) => {
                        tracing::debug!("a plugin answered a streamed response locally: the body was already sent");
                        None
                    }
                    HttpAction::Continue => None,
                };
                if let Some(message) = stop {
                    let _ = tx.send(Err(message.clone().into())).await;
                    ex.session.error(&mut ex.request, &message).await;
                    ex.record_with(Outcome::Error(message), Some(&response));
                    return;
                }
                if let Some(trailers) = trailers {
                    let _ = tx.send(Ok(hyper::body::Frame::trailers(trailers))).await;
                }
                drop(tx);
                let outcome = Outcome::Response {
                    status: response.status,
                    reason: response.reason.clone(),
                    size: Some(size),
                    local: false,
                };
                ex.record_with(outcome, Some(&response));
            }
        }
    });
    reply
}
