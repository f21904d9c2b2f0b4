//! Where flow lines go: stdout, written by a thread of its own from a bounded queue. A
//! slow or stuck stdout (a paused terminal, a pipe nobody reads) drops lines, counted and
//! reported on stderr (at 1, 10, 100... and at exit), and never stalls a proxy worker.

use std::io::Write;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{SyncSender, TrySendError};

/// Lines queued for stdout at most; past it they are dropped.
const QUEUED_LINES: usize = 1024;

/// What the writer thread is sent.
enum Queued {
    Line(String),
    /// Answered once the lines before it are written.
    Flush(SyncSender<()>),
}

/// The queue to the writer thread.
pub struct Output {
    tx: SyncSender<Queued>,
    dropped: Arc<AtomicU64>,
}

impl Output {
    /// Starts the writer thread.
    pub fn start() -> Output {
        let (tx, rx) = std::sync::mpsc::sync_channel::<Queued>(QUEUED_LINES);
        std::thread::Builder::new()
            .name("flowgate-output".to_owned())
            .spawn(move || {
                let mut broken = false;
                for queued in rx {
                    let line = match queued {
                        Queued::Line(line) => line,
                        Queued::Flush(done) => {
                            let _ = done.send(());
                            continue;
                        }
                    };
                    if !broken {
                        let mut out = std::io::stdout().lock();
                        // A closed stdout (EPIPE) ends the output, not the proxy.
                        broken = writeln!(out, "{line}").and_then(|()| out.flush()).is_err();
                    }
                }
            })
            .ok();
        Output { tx, dropped: Arc::new(AtomicU64::new(0)) }
    }

    /// Queues a line; drops it (counted) if the queue is full.
    pub fn line(&self, line: String) {
        match self.tx.try_send(Queued::Line(line)) {
            Ok(()) => {}
            Err(TrySendError::Full(_) | TrySendError::Disconnected(_)) => {
                // Reported at 1, 10, 100... so a stuck stdout is known without a flood.
                let n = self.dropped.fetch_add(1, Ordering::Relaxed) + 1;
                if n.to_string().trim_start_matches('1').bytes().all(|b| b == b'0') {
                    eprintln!("flowgate: {n} flow lines dropped so far: stdout is not keeping up");
                }
            }
        }
    }

    /// Waits until the lines queued so far are written (before the process exits).
    pub fn flush(&self) {
        let (done, wait) = std::sync::mpsc::sync_channel(1);
        if self.tx.send(Queued::Flush(done)).is_ok() {
            let _ = wait.recv();
        }
    }

    /// Lines dropped so far.
    pub fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }
}

/// `n` and what it counts, `one` if it is 1, else `many` (`1 flow`, `2 flows`).
pub fn counted(n: u64, one: &str, many: &str) -> String {
    if n == 1 { format!("1 {one}") } else { format!("{n} {many}") }
}

#[cfg(test)]
mod counted_tests {
    #[test]
    fn one_is_singular_and_the_rest_plural() {
        assert_eq!(super::counted(1, "flow", "flows"), "1 flow");
        assert_eq!(super::counted(0, "flow", "flows"), "0 flows");
        assert_eq!(super::counted(3, "entry", "entries"), "3 entries");
    }
}
