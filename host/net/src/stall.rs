//! A deadline on write progress: a stream whose peer stops reading (a slow-read client,
//! an upstream that takes no more of a request) fails its pending write after the
//! deadline instead of holding the connection, its buffers and a task forever.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// The clock of a progress deadline: started by the first stall after progress, stopped by
/// progress. Its timer is made on the first stall (most never stall) and reused.
pub(crate) struct StallClock {
    after: Duration,
    sleep: Option<Pin<Box<tokio::time::Sleep>>>,
    running: bool,
}

impl StallClock {
    pub fn new(after: Duration) -> StallClock {
        StallClock { after, sleep: None, running: false }
    }

    /// The deadline.
    pub fn after(&self) -> Duration {
        self.after
    }

    /// Progress: the clock stops.
    pub fn progressed(&mut self) {
        self.running = false;
    }

    /// Still no progress: starts the clock if it is stopped; ready once the stall has
    /// lasted `after` (and `cx` is woken then).
    pub fn stalled(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        let deadline = tokio::time::Instant::now() + self.after;
        let sleep = self.sleep.get_or_insert_with(|| Box::pin(tokio::time::sleep_until(deadline)));
        if !self.running {
            self.running = true;
            sleep.as_mut().reset(deadline);
        }
        sleep.as_mut().poll(cx)
    }
}

/// Wraps a stream so that a write (or flush) that makes no progress for `after` fails with
/// `TimedOut`, naming `option`. Reads pass through untouched.
pub(crate) struct WriteStall<IO> {
    inner: IO,
    clock: StallClock,
    option: &'static str,
}

impl<IO> WriteStall<IO> {
    pub fn new(inner: IO, after: Duration, option: &'static str) -> Self {
        WriteStall { inner, clock: StallClock::new(after), option }
    }

    /// `polled` is the inner stream's answer to a write or flush: progress stops the
    /// clock, a stall starts it, and a stall past the deadline is an error.
    fn check<T>(&mut self, cx: &mut Context<'_>, polled: Poll<io::Result<T>>) -> Poll<io::Result<T>> {
        if polled.is_ready() {
            self.clock.progressed();
            return polled;
        }
        match self.clock.stalled(cx) {
            Poll::Ready(()) => Poll::Ready(Err(io::Error::new(
                io::ErrorKind::TimedOut,
                format!("the peer took nothing for {:?} ({})", self.clock.after(), self.option),
            ))),
            Poll::Pending => Poll::Pending,
        }
    }
}

impl<IO: AsyncRead + Unpin> AsyncRead for WriteStall<IO> {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<IO: AsyncWrite + Unpin> AsyncWrite for WriteStall<IO> {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, data: &[u8]) -> Poll<io::Result<usize>> {
        let polled = Pin::new(&mut self.inner).poll_write(cx, data);
        self.check(cx, polled)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let polled = Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        self.check(cx, polled)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let polled = Pin::new(&mut self.inner).poll_flush(cx);
        self.check(cx, polled)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let polled = Pin::new(&mut self.inner).poll_shutdown(cx);
        self.check(cx, polled)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    #[tokio::test(start_paused = true)]
    async fn a_peer_that_stops_reading_fails_the_write_after_the_deadline() {
        let (near, mut far) = tokio::io::duplex(1024);
        let mut near = WriteStall::new(near, Duration::from_secs(5), "send_timeout");
        // Progress: the peer reads, so writes go on however long they take in all.
        for _ in 0..4 {
            near.write_all(&[7u8; 1024]).await.expect("room");
            let mut got = vec![0u8; 1024];
            far.read_exact(&mut got).await.expect("read");
            tokio::time::advance(Duration::from_secs(4)).await;
        }
        // The peer stops reading: the buffer fills, and the write fails after 5 s.
        let started = tokio::time::Instant::now();
        let err = near.write_all(&[7u8; 4096]).await.expect_err("stalled");
        assert_eq!(err.kind(), io::ErrorKind::TimedOut);
        assert!(err.to_string().contains("send_timeout"), "{err}");
        assert_eq!(started.elapsed(), Duration::from_secs(5));
    }
}
