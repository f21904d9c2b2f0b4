//! A deadline on write progress: a stream whose peer stops reading (a slow-read client,
//! an upstream that takes no more of a request) fails its pending write after the
//! deadline instead of holding the connection, its buffers and a task forever.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// Wraps a stream so that a write (or flush) that makes no progress for `after` fails with
/// `TimedOut`, naming `option`. Reads pass through untouched.
pub(crate) struct WriteStall<IO> {
    inner: IO,
    after: Duration,
    option: &'static str,
    /// Armed while a write is pending; made on the first stall and reused.
    sleep: Option<Pin<Box<tokio::time::Sleep>>>,
    armed: bool,
}

impl<IO> WriteStall<IO> {
    pub fn new(inner: IO, after: Duration, option: &'static str) -> Self {
        WriteStall { inner, after, option, sleep: None, armed: false }
    }

    /// `polled` is the inner stream's answer to a write or flush: progress disarms the
    /// deadline, a stall arms it (once), and a stall past it is an error.
    fn check<T>(&mut self, cx: &mut Context<'_>, polled: Poll<io::Result<T>>) -> Poll<io::Result<T>> {
        if polled.is_ready() {
            self.armed = false;
            return polled;
        }
        let deadline = tokio::time::Instant::now() + self.after;
        let sleep = self.sleep.get_or_insert_with(|| Box::pin(tokio::time::sleep_until(deadline)));
        if !self.armed {
            self.armed = true;
            sleep.as_mut().reset(deadline);
        }
        match sleep.as_mut().poll(cx) {
            Poll::Ready(()) => Poll::Ready(Err(io::Error::new(
                io::ErrorKind::TimedOut,
                format!("the peer took nothing for {:?} ({})", self.after, self.option),
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
