//! What the binary does with flows, live or read from a file (`-r`): print them (the
//! dump output), save them (`-w`) and collect them for `hardump`.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};

use anyhow::Context;
use flowgate_filter::Filter;
use flowgate_flow::{Flow, Payload};
use flowgate_net::{FlowStore, Stored};

use crate::dump::Dump;
use crate::save::SaveStream;

/// Bytes of bodies `hardump` keeps in memory at most; flows past it are left out of the
/// HAR (counted and reported when it is written).
const HARDUMP_MAX_BYTES: usize = 256 << 20;

/// `hardump`: HTTP flows kept until exit, then written as one HAR file.
pub struct HarDump {
    path: PathBuf,
    filter: Option<Filter>,
    kept: Mutex<(Vec<Flow>, usize, u64)>,
}

impl HarDump {
    pub fn new(path: PathBuf, filter: Option<Filter>) -> HarDump {
        HarDump { path, filter, kept: Mutex::new((Vec::new(), 0, 0)) }
    }

    fn add(&self, flow: &Flow) {
        if !matches!(flow.payload, Payload::Http(_)) || self.filter.as_ref().is_some_and(|f| !f.matches(flow)) {
            return;
        }
        let size = content_bytes(&flow.payload);
        let mut kept = self.kept.lock().unwrap_or_else(PoisonError::into_inner);
        if kept.1 + size > HARDUMP_MAX_BYTES {
            kept.2 += 1;
            return;
        }
        kept.1 += size;
        kept.0.push(flow.clone());
    }

    /// Writes the HAR file (`-` for stdout) and says what it holds.
    fn write(&self) -> anyhow::Result<String> {
        let kept = self.kept.lock().unwrap_or_else(PoisonError::into_inner);
        let stats = if self.path.as_os_str() == "-" {
            flowgate_store::har::write(std::io::stdout().lock(), &kept.0)?
        } else {
            let file = std::fs::File::create(&self.path)
                .with_context(|| format!("hardump: cannot write {}", self.path.display()))?;
            flowgate_store::har::write(std::io::BufWriter::new(file), &kept.0)?
        };
        let mut report = format!(
            "wrote {} to {}",
            crate::output::counted(stats.entries as u64, "entry", "entries"),
            if self.path.as_os_str() == "-" { "stdout".into() } else { self.path.display().to_string() }
        );
        if kept.2 > 0 {
            report += &format!(
                " ({} left out: past {} MiB of bodies)",
                crate::output::counted(kept.2, "flow", "flows"),
                HARDUMP_MAX_BYTES >> 20
            );
        }
        Ok(report)
    }
}

/// Bytes of a flow's bodies and messages.
pub fn content_bytes(payload: &Payload) -> usize {
    match payload {
        Payload::Http(http) => {
            http.request.body.as_ref().map_or(0, |b| b.len())
                + http.response.as_ref().and_then(|r| r.body.as_ref()).map_or(0, |b| b.len())
        }
        Payload::Tcp(m) | Payload::Udp(m) => m.iter().map(|m| m.content.len()).sum(),
        Payload::Dns(_) => 0,
    }
}

/// The flows of the file at `path` (flowgate's, HAR or mitmproxy's) that `filter`
/// matches, each given to `each`; damage, a torn tail and flows that cannot be read are
/// reported on stderr and skipped.
pub fn read_matching(path: &Path, filter: Option<&Filter>, mut each: impl FnMut(Flow)) -> anyhow::Result<()> {
    // A file that cannot be opened says its path; any other reason is given it.
    let read = flowgate_store::open(path).map_err(|e| match e {
        flowgate_store::Error::Open { .. } => anyhow::Error::new(e),
        e => anyhow::Error::new(e).context(format!("cannot read {}", path.display())),
    })?;
    if let Some(stats) = read.flowfile_stats() {
        if stats.skipped > 0 {
            eprintln!(
                "flowgate: {}: {} damaged stretches ({} bytes) skipped",
                path.display(),
                stats.skipped,
                stats.skipped_bytes
            );
        }
        if let Some(at) = stats.torn_tail {
            eprintln!(
                "flowgate: {}: the last record is cut short at byte {at} (a crash mid-write); skipped",
                path.display()
            );
        }
    }
    let mut skipped = 0;
    for flow in read {
        match flow {
            Ok(flow) if filter.is_none_or(|f| f.matches(&flow)) => each(flow),
            Ok(_) => {}
            Err(e) => {
                skipped += 1;
                eprintln!("flowgate: {}: skipped a flow: {e}", path.display());
            }
        }
    }
    if skipped > 0 {
        eprintln!("flowgate: {}: {skipped} flows could not be read", path.display());
    }
    Ok(())
}

/// Where flows go.
pub struct Flows {
    pub dump: Dump,
    pub save: Option<SaveStream>,
    pub har: Option<HarDump>,
}

impl Flows {
    /// Whether the proxy has to hand over whole flows (else its one-line records do).
    pub fn wants_flows(&self) -> bool {
        self.save.is_some() || self.har.is_some() || self.dump.needs_flows()
    }

    /// What happened to a live flow (or one read from a file, as [`Stored::Whole`]).
    pub fn add(&self, stored: Stored) {
        self.dump.stored(&stored);
        if let Some(flow) = stored.ended()
            && let Some(har) = &self.har
        {
            har.add(flow);
        }
        if let Some(save) = &self.save {
            save.add(stored);
        }
    }

    /// The proxy's flow store, if it needs one.
    pub fn store(self: &Arc<Self>) -> Option<FlowStore> {
        let flows = self.clone();
        self.wants_flows().then(|| Arc::new(move |stored: Stored| flows.add(stored)) as FlowStore)
    }

    /// Flushes the flow file and writes `hardump`; returns what to tell the user.
    pub fn finish(&self) -> anyhow::Result<Vec<String>> {
        let mut reports = Vec::new();
        if let Some(save) = &self.save {
            reports.push(save.finish());
        }
        if let Some(har) = &self.har {
            reports.push(har.write()?);
        }
        Ok(reports)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_file_that_cannot_be_read_is_named_once_with_its_reason_once() {
        let dir = flowgate_tests::scratch_dir("read");
        std::fs::create_dir_all(&dir).expect("temp dir");
        let missing = dir.join("missing.fg");
        let err = format!("{:#}", read_matching(&missing, None, |_| {}).expect_err("missing"));
        assert_eq!(err.matches("missing.fg").count(), 1, "{err}");
        assert_eq!(err.matches("(os error 2)").count(), 1, "{err}");
        let junk = dir.join("junk.fg");
        std::fs::write(&junk, b"these are not flows").expect("write");
        let err = format!("{:#}", read_matching(&junk, None, |_| {}).expect_err("junk"));
        assert!(err.starts_with(&format!("cannot read {}: not a flow file", junk.display())), "{err}");
    }
}
