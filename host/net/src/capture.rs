//! Whole flows for the flow store (`-w`, `hardump`): the network layer fills a
//! [`flowgate_flow::Flow`] per finished flow and hands it to the [`FlowStore`] once its
//! bodies have passed.
//!
//! Bodies that go through unbuffered (passed or streamed) are copied as they pass by a
//! [`Tee`] into a [`Capture`], up to `stream_large_bodies` (or `body_size_limit`) and
//! within `buffer_memory_limit`; a body past either is recorded as not stored (`None`,
//! mitmproxy's "content missing"), never as empty. A flow is handed over when the last of
//! its bodies has ended (or was dropped): a [`Pending`] flow is shared by the exchange and
//! the tees, and the last one to let go of it hands it over. A tee dropped before its
//! body's end takes what has arrived, and a request body's reads the rest on for the
//! capture alone (see [`Tee::new`]).

use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll};
use std::time::{Duration, SystemTime};

use bytes::{Bytes, BytesMut};
use flowgate_flow::{Flow, Payload, Timestamp, Uuid};
use flowgate_store::flowfile::{NewMessages, Record};

use crate::memory::{BufferBudget, Reservation};

/// What the network layer hands the flow store: whole HTTP flows, and long-lived flows
/// (TCP) as they go, so a flow file keeps what was seen of a stream that never ends.
/// They map one to one onto the flow file's records (`flowgate_store::flowfile::Record`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Stored {
    /// A flow, whole, once its bodies have passed.
    Whole(Flow),
    /// A long-lived flow has begun: its facts, with no messages yet.
    Begun(Flow),
    /// More messages of a flow that has begun.
    Messages {
        /// The flow's id.
        id: Uuid,
        /// The messages, in order.
        messages: NewMessages,
    },
    /// A long-lived flow has ended: its final state, without the messages handed over
    /// before.
    Ended(Flow),
}

impl Stored {
    /// The flow as it ended, when this is the last event of one.
    pub fn ended(&self) -> Option<&Flow> {
        match self {
            Stored::Whole(flow) | Stored::Ended(flow) => Some(flow),
            Stored::Begun(_) | Stored::Messages { .. } => None,
        }
    }

    /// The flow file record that keeps it.
    pub fn into_record(self) -> Record {
        match self {
            Stored::Whole(flow) | Stored::Begun(flow) => Record::Flow(Box::new(flow)),
            Stored::Messages { id, messages } => Record::Messages { id, messages },
            Stored::Ended(flow) => Record::Update(Box::new(flow)),
        }
    }
}

/// Where flows go (a flow file's writer, a HAR collector). Called from the proxy's
/// tasks: it must not block.
pub type FlowStore = Arc<dyn Fn(Stored) + Send + Sync>;

/// The wall clock as the flow model takes it.
pub(crate) fn now() -> Timestamp {
    let since = SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).unwrap_or_default();
    Timestamp::from_duration_since_epoch(since)
}

/// The copy of one body, shared by its [`Tee`] and the flow it belongs to.
#[derive(Clone)]
pub(crate) struct Capture(Arc<Mutex<CaptureState>>);

struct CaptureState {
    data: BytesMut,
    /// The body was larger than the cap or the budget: not stored.
    over: bool,
    /// The body ended (or its tee went away): the flow may be handed over.
    finished: bool,
    /// The flow, kept from being handed over until the body has finished.
    hold: Option<Arc<Pending>>,
    held: Reservation,
    cap: usize,
}

impl Capture {
    /// An empty capture of at most `cap` bytes, held in `budget`.
    pub fn new(cap: usize, budget: &Arc<BufferBudget>) -> Capture {
        Capture(Arc::new(Mutex::new(CaptureState {
            data: BytesMut::new(),
            over: false,
            finished: false,
            hold: None,
            held: budget.reserve(),
            cap,
        })))
    }

    fn state(&self) -> std::sync::MutexGuard<'_, CaptureState> {
        self.0.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn push(&self, data: &[u8]) {
        let mut state = self.state();
        if state.over {
            return;
        }
        if state.data.len() + data.len() > state.cap || state.held.grow(data.len()).is_err() {
            state.over = true;
            state.data = BytesMut::new();
            return;
        }
        state.data.extend_from_slice(data);
    }

    /// The body has ended (`complete`) or gone (cut off, failed, dropped unread: then it
    /// is not stored, as what was seen is not the body): lets go of the flow it held.
    fn finish(&self, complete: bool) {
        let hold = {
            let mut state = self.state();
            if state.finished {
                return;
            }
            state.finished = true;
            if !complete {
                state.over = true;
                state.data = BytesMut::new();
            }
            state.hold.take()
        };
        // Dropped outside the lock: the last hold hands the flow over, which reads this
        // capture.
        drop(hold);
    }

    /// Keeps `pending` from being handed over until the body has finished.
    fn attach(&self, pending: &Arc<Pending>) {
        let mut state = self.state();
        if !state.finished {
            state.hold = Some(pending.clone());
        }
    }

    /// What was captured: the body, or `None` if it was not stored.
    fn take(&self) -> Option<Bytes> {
        let mut state = self.state();
        if state.over { None } else { Some(std::mem::take(&mut state.data).freeze()) }
    }
}

/// A body that copies what passes into a [`Capture`].
pub(crate) struct Tee<B: Body> {
    /// `None` once dropped.
    inner: Option<B>,
    capture: Capture,
    /// If the body is dropped before its end, how long to wait for each further piece
    /// while it is read to its end for the capture alone (a request body an upstream
    /// answered without reading, or stopped reading: the client sent it, so the flow
    /// keeps it); `None`: only what has arrived is taken.
    read_on: Option<Duration>,
}

/// What a [`Tee`] can copy.
pub(crate) trait Body: hyper::body::Body<Data = Bytes> + Unpin + Send + 'static {}
impl<B: hyper::body::Body<Data = Bytes> + Unpin + Send + 'static> Body for B {}

impl<B: Body> Tee<B> {
    pub fn new(inner: B, capture: Capture, read_on: Option<Duration>) -> Tee<B> {
        Tee { inner: Some(inner), capture, read_on }
    }
}

impl<B: Body> hyper::body::Body for Tee<B> {
    type Data = Bytes;
    type Error = B::Error;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<hyper::body::Frame<Bytes>, B::Error>>> {
        let Some(inner) = self.inner.as_mut() else { return Poll::Ready(None) };
        let polled = std::pin::Pin::new(inner).poll_frame(cx);
        match &polled {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(data) = frame.data_ref() {
                    self.capture.push(data);
                }
            }
            Poll::Ready(end) => self.capture.finish(end.is_none()),
            Poll::Pending => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        let end = self.inner.as_ref().is_none_or(|inner| inner.is_end_stream());
        if end {
            // A writer that sees the end here never polls (an empty body).
            self.capture.finish(true);
        }
        end
    }

    fn size_hint(&self) -> hyper::body::SizeHint {
        self.inner.as_ref().map(|inner| inner.size_hint()).unwrap_or_default()
    }
}

impl<B: Body> Drop for Tee<B> {
    fn drop(&mut self) {
        let Some(mut inner) = self.inner.take() else { return };
        if self.capture.state().finished {
            return;
        }
        // Dropped before its end: what has arrived is taken without waiting.
        let mut cx = Context::from_waker(std::task::Waker::noop());
        loop {
            match std::pin::Pin::new(&mut inner).poll_frame(&mut cx) {
                Poll::Ready(Some(Ok(frame))) => {
                    if let Some(data) = frame.data_ref() {
                        self.capture.push(data);
                    }
                }
                Poll::Ready(None) => return self.capture.finish(true),
                Poll::Ready(Some(Err(_))) => return self.capture.finish(false),
                Poll::Pending => break,
            }
        }
        // The rest is read for the capture alone, if asked and while it can still be
        // stored; otherwise the body was not seen whole.
        let runtime = tokio::runtime::Handle::try_current();
        match (self.read_on, runtime) {
            (Some(wait), Ok(runtime)) if !self.capture.state().over => {
                let capture = self.capture.clone();
                runtime.spawn(async move {
                    use http_body_util::BodyExt;
                    let complete = loop {
                        match tokio::time::timeout(wait, inner.frame()).await {
                            Ok(Some(Ok(frame))) => {
                                if let Some(data) = frame.data_ref() {
                                    capture.push(data);
                                }
                                if capture.state().over {
                                    break false;
                                }
                            }
                            Ok(None) => break true,
                            Ok(Some(Err(_))) | Err(_) => break false,
                        }
                    };
                    capture.finish(complete);
                });
            }
            _ => self.capture.finish(false),
        }
    }
}

/// A finished flow waiting for its bodies: handed to the store when the last holder
/// lets go.
pub(crate) struct Pending {
    flow: Mutex<Option<Flow>>,
    request: Option<Capture>,
    response: Option<Capture>,
    store: FlowStore,
}

impl Pending {
    /// Hands `flow` over once the bodies being captured in `request` and `response` (if
    /// any) have finished.
    pub fn hand_over(flow: Flow, request: Option<Capture>, response: Option<Capture>, store: FlowStore) {
        let pending = Arc::new(Pending { flow: Mutex::new(Some(flow)), request, response, store });
        for capture in pending.request.iter().chain(pending.response.iter()) {
            capture.attach(&pending);
        }
        // The last reference, here or in a capture, hands it over.
    }
}

impl Drop for Pending {
    fn drop(&mut self) {
        let Some(mut flow) = self.flow.lock().unwrap_or_else(PoisonError::into_inner).take() else { return };
        if let Payload::Http(http) = &mut flow.payload {
            if let Some(capture) = &self.request {
                http.request.body = capture.take();
            }
            if let (Some(capture), Some(response)) = (&self.response, http.response.as_mut()) {
                response.body = capture.take();
            }
        }
        (self.store)(Stored::Whole(flow));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use flowgate_flow::{Client, HttpFlow, Request, Response, Uuid};
    use http_body_util::BodyExt;

    fn flow() -> Flow {
        let client = Client::new(
            Uuid::from_random_bytes([1; 16]),
            "127.0.0.1:1".parse().expect("addr"),
            "127.0.0.1:2".parse().expect("addr"),
            Timestamp::from_duration_since_epoch(std::time::Duration::from_secs(1)),
        );
        let request = Request::new("POST", "http://example.test/").expect("valid");
        let response = Some(Response::new(200, "OK").expect("valid"));
        let payload = Payload::Http(HttpFlow { request, response, websocket: None });
        Flow::new(Uuid::from_random_bytes([2; 16]), client, client_ts(), payload)
    }

    fn client_ts() -> Timestamp {
        Timestamp::from_duration_since_epoch(std::time::Duration::from_secs(2))
    }

    type Got = Arc<Mutex<Vec<Flow>>>;

    fn store() -> (FlowStore, Got) {
        let got: Got = Arc::default();
        let sink = got.clone();
        (
            Arc::new(move |stored| {
                let Stored::Whole(flow) = stored else { panic!("an HTTP flow is stored whole: {stored:?}") };
                sink.lock().expect("lock").push(flow)
            }),
            got,
        )
    }

    fn bodies(flow: &Flow) -> (Option<Bytes>, Option<Bytes>) {
        let Payload::Http(http) = &flow.payload else { panic!("http") };
        (http.request.body.clone(), http.response.as_ref().and_then(|r| r.body.clone()))
    }

    /// A body of `parts`, at hand.
    fn body(parts: &[&'static [u8]]) -> crate::upstream::Body {
        crate::http::body::frames(parts.iter().map(|p| hyper::body::Frame::data(Bytes::from_static(p))))
    }

    /// A piece of a body for a channel body's sender.
    fn piece(data: &'static [u8]) -> Result<hyper::body::Frame<Bytes>, crate::upstream::BoxError> {
        Ok(hyper::body::Frame::data(Bytes::from_static(data)))
    }

    #[tokio::test]
    async fn a_flow_is_handed_over_when_its_last_body_ends() {
        let budget = BufferBudget::new(1 << 20);
        let (sink, got) = store();
        let req = Capture::new(1024, &budget);
        let resp = Capture::new(1024, &budget);
        // The request body passed before the flow was recorded; the response body after.
        let sent = Tee::new(body(&[b"q=1"]), req.clone(), None).collect().await.expect("body");
        assert_eq!(sent.to_bytes(), "q=1");
        let client_body = Tee::new(body(&[b"hello ", b"world"]), resp.clone(), None);
        Pending::hand_over(flow(), Some(req), Some(resp), sink);
        assert!(got.lock().expect("lock").is_empty(), "held until the response body ends");
        let out = client_body.collect().await.expect("body").to_bytes();
        assert_eq!(out, "hello world");
        let flows = got.lock().expect("lock");
        assert_eq!(flows.len(), 1);
        assert_eq!(bodies(&flows[0]), (Some(Bytes::from("q=1")), Some(Bytes::from("hello world"))));
        assert_eq!(budget.used(), 0, "the captures gave their bytes back");
    }

    #[tokio::test]
    async fn past_the_cap_or_the_budget_a_body_is_not_stored_and_a_dropped_body_still_hands_over() {
        let budget = BufferBudget::new(8);
        let (sink, got) = store();
        let req = Capture::new(4, &budget);
        let _ = Tee::new(body(&[b"abc", b"def"]), req.clone(), None).collect().await;
        let resp = Capture::new(1024, &BufferBudget::new(1024));
        let (tx, rest) = tokio::sync::mpsc::channel(4);
        tx.send(piece(b"0123")).await.expect("send");
        let client_body = Tee::new(crate::http::body::channel(rest), resp.clone(), None);
        Pending::hand_over(flow(), Some(req), Some(resp), sink);
        drop(client_body); // the client went away before the response's end came
        let flows = got.lock().expect("lock");
        assert_eq!(bodies(&flows[0]), (None, None), "over the cap, and cut off: not stored (never empty)");
    }

    /// A request body dropped before its end (an upstream that answered without reading
    /// it): what has arrived is taken at once, and the rest is read for the capture alone
    /// as it comes, each piece within the wait; a piece that does not come in time, or a
    /// response body (no wait), leaves it not stored.
    #[tokio::test(start_paused = true)]
    async fn a_request_body_dropped_before_its_end_is_read_to_its_end_for_the_flow() {
        let budget = BufferBudget::new(1 << 20);
        let wait = Some(std::time::Duration::from_secs(5));
        // A flow whose request body had `arrived` (and `ended`, or not) when its tee was
        // dropped, waiting `read_on` for the rest: the sender of the rest, and what the
        // store got.
        let dropped = async |arrived: &[&'static [u8]], ended: bool, read_on| {
            let (sink, got) = store();
            let req = Capture::new(1024, &budget);
            let (tx, rx) = tokio::sync::mpsc::channel(4);
            for data in arrived {
                tx.send(piece(data)).await.expect("send");
            }
            let tx = (!ended).then_some(tx);
            drop(Tee::new(crate::http::body::channel(rx), req.clone(), read_on));
            Pending::hand_over(flow(), Some(req), None, sink);
            (tx, got)
        };
        let request_body = |got: &Got| bodies(&got.lock().expect("lock")[0]).0;
        // All of it had arrived: taken when dropped.
        let (_, got) = dropped(&[b"a=", b"b"], true, None).await;
        assert_eq!(request_body(&got), Some(Bytes::from("a=b")));
        // The rest comes later: the flow waits for it.
        let (tx, got) = dropped(&[b"first "], false, wait).await;
        let tx = tx.expect("not ended");
        tokio::time::sleep(std::time::Duration::from_secs(4)).await;
        assert!(got.lock().expect("lock").is_empty(), "held while the rest may come");
        tx.send(piece(b"second")).await.expect("send");
        drop(tx);
        tokio::time::sleep(std::time::Duration::from_millis(1)).await;
        assert_eq!(request_body(&got), Some(Bytes::from("first second")));
        // A piece that does not come within the wait: not stored.
        let (_tx, got) = dropped(&[b"first "], false, wait).await;
        tokio::time::sleep(std::time::Duration::from_secs(6)).await;
        assert_eq!(request_body(&got), None);
        // Without a wait (a response's body), the rest is not read.
        let (_tx, got) = dropped(&[b"first "], false, None).await;
        assert_eq!(request_body(&got), None);
        assert_eq!(budget.used(), 0, "the captures gave their bytes back");
    }

    #[tokio::test]
    async fn without_captures_a_flow_is_handed_over_at_once() {
        let (sink, got) = store();
        Pending::hand_over(flow(), None, None, sink);
        assert_eq!(got.lock().expect("lock").len(), 1);
    }
}
