//! `-w` / `save_stream_file`: flows written to a flow file as they end (and long-lived
//! ones as their messages pass), by a thread of its own. The proxy's tasks only queue
//! what they hand over; a queue past its bounds drops records, counted and reported, so a
//! slow disk slows nothing but the writer.
//!
//! The path may start with `+` (append to an existing file) and may hold strftime
//! patterns (`flows-%Y%m%d.fg`): a new file is opened whenever the formatted path
//! changes, with the long-lived flows in progress recorded again at its start so their
//! later messages have a flow to belong to.

use std::collections::HashMap;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::mpsc::{Receiver, SyncSender, TrySendError};
use std::sync::{Arc, Mutex, PoisonError};

use anyhow::{Context, bail};
use flowgate_filter::Filter;
use flowgate_flow::{Flow, Uuid};
use flowgate_net::Stored;
use flowgate_store::flowfile::{NewMessages, Record, Writer};

/// Records queued for the writer at most.
const QUEUED_RECORDS: usize = 16 * 1024;
/// Bytes of bodies and messages queued for the writer at most.
const QUEUED_BYTES: usize = 64 << 20;

/// Where flows are saved: a path, perhaps a strftime pattern, perhaps appended to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    pattern: String,
    append: bool,
}

impl Target {
    /// Parses `-w`'s argument: `[+]PATH`, the path perhaps with strftime patterns. A
    /// pattern that does not format is refused here, not at the first flow.
    pub fn parse(text: &str) -> anyhow::Result<Target> {
        let (append, pattern) = match text.strip_prefix('+') {
            Some(rest) => (true, rest),
            None => (false, text),
        };
        if pattern.is_empty() {
            bail!("no file name");
        }
        let items = chrono::format::StrftimeItems::new(pattern);
        if items.clone().any(|item| matches!(item, chrono::format::Item::Error)) {
            bail!("{pattern:?} is not a valid strftime pattern (use %% for a literal %)");
        }
        Ok(Target { pattern: pattern.to_owned(), append })
    }

    /// The path now.
    fn path(&self) -> PathBuf {
        if self.pattern.contains('%') {
            PathBuf::from(chrono::Local::now().format(&self.pattern).to_string())
        } else {
            PathBuf::from(&self.pattern)
        }
    }

    /// Opens the file at `path` as this target says: appended to, or started anew.
    fn open(&self, path: &Path) -> anyhow::Result<Writer<File>> {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
        }
        let opened = if self.append {
            Writer::open_append(path)
        } else {
            File::create(path).map_err(Into::into).and_then(Writer::new)
        };
        opened.with_context(|| format!("cannot write {}", path.display()))
    }
}

/// The queue to the writer thread.
pub struct SaveStream {
    tx: SyncSender<Queued>,
    queued: Arc<AtomicUsize>,
    dropped: AtomicU64,
    thread: Mutex<Option<std::thread::JoinHandle<Written>>>,
    first: PathBuf,
}

/// What the writer thread is sent.
enum Queued {
    /// A record to save, with its size as the queue's byte bound counts it.
    Save(Box<Stored>, usize),
    /// Write what came before, then stop.
    Finish,
}

/// What the writer did, reported at exit.
#[derive(Debug, Default)]
pub struct Written {
    /// Records written.
    pub records: u64,
    /// Flows that ended in the files.
    pub flows: u64,
    /// Records that could not be written (the error is logged once per file).
    pub failed: u64,
}

impl SaveStream {
    /// Opens the first file now (so a path that cannot be written is an error at start)
    /// and starts the writer; `filter` decides which flows are saved.
    pub fn start(target: Target, filter: Option<Filter>) -> anyhow::Result<SaveStream> {
        let path = target.path();
        let writer = target.open(&path)?;
        let (tx, rx) = std::sync::mpsc::sync_channel(QUEUED_RECORDS);
        let queued = Arc::new(AtomicUsize::new(0));
        let state = WriterState {
            target,
            filter,
            path: path.clone(),
            writer: Some(writer),
            live: HashMap::new(),
            written: Written::default(),
            queued: queued.clone(),
        };
        let thread = std::thread::Builder::new()
            .name("flowgate-save".to_owned())
            .spawn(move || state.run(rx))
            .context("cannot start the flow file writer")?;
        Ok(SaveStream { tx, queued, dropped: AtomicU64::new(0), thread: Mutex::new(Some(thread)), first: path })
    }

    /// Queues `stored` for the file; drops it (counted) if the queue is full.
    pub fn add(&self, stored: Stored) {
        let size = stored_size(&stored);
        let full = self.queued.fetch_add(size, Ordering::AcqRel) + size > QUEUED_BYTES;
        let sent = if full {
            false
        } else {
            match self.tx.try_send(Queued::Save(Box::new(stored), size)) {
                Ok(()) => true,
                Err(TrySendError::Full(_) | TrySendError::Disconnected(_)) => false,
            }
        };
        if !sent {
            self.queued.fetch_sub(size, Ordering::AcqRel);
            let n = self.dropped.fetch_add(1, Ordering::Relaxed) + 1;
            if n.is_power_of_two() {
                eprintln!("flowgate: {n} flow records not saved so far: the flow file's disk is not keeping up");
            }
        }
    }

    /// Writes what is queued, stops the writer and says what it did. Records added
    /// after it are dropped.
    pub fn finish(&self) -> String {
        let thread = self.thread.lock().unwrap_or_else(PoisonError::into_inner).take();
        let written = match thread {
            Some(thread) if self.tx.send(Queued::Finish).is_ok() => thread.join().unwrap_or_default(),
            _ => Written::default(),
        };
        let dropped = self.dropped.load(Ordering::Relaxed);
        let mut report =
            format!("saved {} to {}", crate::output::counted(written.flows, "flow", "flows"), self.first.display());
        if dropped + written.failed > 0 {
            report += &format!(
                "; {} records were not saved ({dropped} dropped while the disk was not keeping up, {} failed to write)",
                dropped + written.failed,
                written.failed
            );
        }
        report
    }
}

/// What a record holds in bodies and messages (what the queue's byte bound counts), plus
/// a little for the rest.
fn stored_size(stored: &Stored) -> usize {
    512 + match stored {
        Stored::Whole(flow) | Stored::Begun(flow) | Stored::Ended(flow) => crate::flows::content_bytes(&flow.payload),
        Stored::Messages { messages: NewMessages::Tcp(m) | NewMessages::Udp(m), .. } => {
            m.iter().map(|m| m.content.len()).sum()
        }
        Stored::Messages { messages: NewMessages::WebSocket(m), .. } => m.iter().map(|m| m.data.len()).sum(),
    }
}

struct WriterState {
    target: Target,
    filter: Option<Filter>,
    path: PathBuf,
    /// `None` after a failure to open the current path (retried when it changes).
    writer: Option<Writer<File>>,
    /// Long-lived flows begun and saved, not ended yet: their first record.
    live: HashMap<Uuid, Flow>,
    written: Written,
    queued: Arc<AtomicUsize>,
}

impl WriterState {
    fn run(mut self, rx: Receiver<Queued>) -> Written {
        while let Ok(Queued::Save(stored, size)) = rx.recv() {
            self.queued.fetch_sub(size, Ordering::AcqRel);
            self.rotate();
            self.save(*stored);
        }
        self.written
    }

    /// Opens the next file when the formatted path changed, with the flows in progress.
    fn rotate(&mut self) {
        let path = self.target.path();
        if path == self.path {
            return;
        }
        self.path = path;
        self.writer = match self.target.open(&self.path) {
            Ok(writer) => Some(writer),
            Err(e) => {
                eprintln!("flowgate: {e:#}");
                None
            }
        };
        let live: Vec<Flow> = self.live.values().cloned().collect();
        for flow in live {
            self.write(&Record::Flow(Box::new(flow)));
        }
    }

    fn save(&mut self, stored: Stored) {
        let keep = |filter: &Option<Filter>, flow: &Flow| filter.as_ref().is_none_or(|f| f.matches(flow));
        match &stored {
            // A long-lived flow is judged when it begins: its messages follow that.
            Stored::Begun(flow) => {
                if !keep(&self.filter, flow) {
                    return;
                }
                self.live.insert(flow.id, flow.clone());
            }
            Stored::Messages { id, .. } => {
                if !self.live.contains_key(id) {
                    return;
                }
            }
            Stored::Ended(flow) => {
                if self.live.remove(&flow.id).is_none() {
                    return;
                }
                self.written.flows += 1;
            }
            Stored::Whole(flow) => {
                if !keep(&self.filter, flow) {
                    return;
                }
                self.written.flows += 1;
            }
        }
        self.write(&stored.into_record());
    }

    fn write(&mut self, record: &Record) {
        let Some(writer) = &mut self.writer else {
            self.written.failed += 1;
            return;
        };
        match writer.write(record) {
            Ok(_) => self.written.records += 1,
            Err(e) => {
                // Logged once per file; the file is given up until the path changes.
                eprintln!("flowgate: cannot write {}: {e}", self.path.display());
                self.written.failed += 1;
                self.writer = None;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn targets_parse_like_mitmproxy() {
        assert_eq!(Target::parse("out.fg").expect("plain"), Target { pattern: "out.fg".into(), append: false });
        assert_eq!(Target::parse("+out.fg").expect("append"), Target { pattern: "out.fg".into(), append: true });
        let rotating = Target::parse("flows-%Y%m%d.fg").expect("strftime");
        let today = chrono::Local::now().format("flows-%Y%m%d.fg").to_string();
        assert_eq!(rotating.path(), PathBuf::from(today));
        assert!(Target::parse("+").is_err());
        assert!(Target::parse("bad-%Q.fg").is_err());
        assert_eq!(Target::parse("100%%.fg").expect("literal").path(), PathBuf::from("100%.fg"));
    }
}
