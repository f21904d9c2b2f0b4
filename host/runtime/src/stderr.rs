//! The last bytes a plugin wrote to stderr, kept so a failure can say what the guest said
//! as it died: an uncaught Python or JavaScript exception, a Rust panic message. Without
//! it a trap reads only "unreachable instruction executed". Bounded; never granted
//! anything: the bytes go nowhere but into the failure message.

use std::collections::VecDeque;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll};

use wasmtime_wasi::cli::{IsTerminal, StdoutStream};

/// Lines of stderr a failure message quotes (a JavaScript stack puts the error eight or
/// so lines up; a Python traceback ends with it).
const SUMMARY_LINES: usize = 8;

/// Bytes of stderr kept per instance (the most recent ones).
pub const STDERR_TAIL_BYTES: usize = 2048;

/// A plugin instance's stderr: keeps the last [`STDERR_TAIL_BYTES`].
#[derive(Clone, Default)]
pub(crate) struct StderrTail(Arc<Tail>);

#[derive(Default)]
struct Tail {
    bytes: Mutex<VecDeque<u8>>,
    /// Something was written since the last clear (most calls write nothing, and are
    /// spared the lock).
    written: AtomicBool,
}

impl StderrTail {
    /// Forgets what was written (at the start of each hook call).
    pub fn clear(&self) {
        // A load first: the usual answer needs no write.
        if self.0.written.load(Ordering::Acquire) && self.0.written.swap(false, Ordering::AcqRel) {
            self.0.bytes.lock().unwrap_or_else(PoisonError::into_inner).clear();
        }
    }

    /// The last [`SUMMARY_LINES`] non-empty lines, joined with " | ", or `None` if nothing
    /// was written.
    pub fn summary(&self) -> Option<String> {
        let bytes: Vec<u8> = self.0.bytes.lock().unwrap_or_else(PoisonError::into_inner).iter().copied().collect();
        let text = String::from_utf8_lossy(&bytes);
        let lines: Vec<&str> = text.lines().map(str::trim).filter(|l| !l.is_empty()).collect();
        let tail = &lines[lines.len().saturating_sub(SUMMARY_LINES)..];
        (!tail.is_empty()).then(|| tail.join(" | "))
    }

    fn push(&self, data: &[u8]) {
        let mut buf = self.0.bytes.lock().unwrap_or_else(PoisonError::into_inner);
        self.0.written.store(true, Ordering::Release);
        let data = &data[data.len().saturating_sub(STDERR_TAIL_BYTES)..];
        let overflow = (buf.len() + data.len()).saturating_sub(STDERR_TAIL_BYTES);
        let drop = overflow.min(buf.len());
        buf.drain(..drop);
        buf.extend(data);
    }
}

impl IsTerminal for StderrTail {
    fn is_terminal(&self) -> bool {
        false
    }
}

impl StdoutStream for StderrTail {
    fn async_stream(&self) -> Box<dyn tokio::io::AsyncWrite + Send + Sync> {
        Box::new(self.clone())
    }
}

impl tokio::io::AsyncWrite for StderrTail {
    fn poll_write(self: Pin<&mut Self>, _: &mut Context<'_>, buf: &[u8]) -> Poll<std::io::Result<usize>> {
        self.push(buf);
        Poll::Ready(Ok(buf.len()))
    }

    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_the_last_lines_within_the_bound() {
        let tail = StderrTail::default();
        assert_eq!(tail.summary(), None);
        tail.push(b"Traceback (most recent call last):\n  File \"app.py\", line 3\n");
        tail.push(&vec![b'x'; 5000]);
        tail.push(b"\nZeroDivisionError: division by zero\n");
        assert_eq!(tail.0.bytes.lock().expect("lock").len(), STDERR_TAIL_BYTES);
        let summary = tail.summary().expect("something");
        assert!(summary.ends_with(" | ZeroDivisionError: division by zero"), "{summary}");
        tail.clear();
        assert_eq!(tail.summary(), None);
    }
}
