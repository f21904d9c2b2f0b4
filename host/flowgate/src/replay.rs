//! Client replay in the binary (`-C FILE`, `flowgate replay client FILE`): the saved
//! flows sent again through the proxy's exchange, `client_replay_concurrency` at a time,
//! with a progress bar on a terminal and a summary at the end; and the loading of server
//! replay's flows (`-S FILE`). The replaying itself is the network layer's.

use std::path::PathBuf;
use std::sync::Arc;

use flowgate_filter::Filter;
use flowgate_flow::Flow;
use flowgate_net::{Mode, Proxy, Replayed, ServerReplay, ServerReplayOptions};

use crate::flows::read_matching;

/// The options of client and server replay.
#[derive(Default)]
pub struct ReplayOptions {
    /// `client_replay` (`-C`): the files whose requests are sent again.
    pub client: Vec<PathBuf>,
    /// Only the flows this filter matches (`flowgate replay client FILE FILTER`).
    pub client_filter: Option<Filter>,
    /// `client_replay_concurrency`: requests in flight at once; `None` is unlimited
    /// (mitmproxy's -1). Default 1: one after another, in the file's order.
    pub concurrency: Option<usize>,
    /// `server_replay` (`-S`): the files whose responses answer matching requests.
    pub server: Vec<PathBuf>,
    /// `server_replay_*`.
    pub server_options: ServerReplayOptions,
}

/// Reads the flows of `paths` that `filter` matches.
pub fn load(paths: &[PathBuf], filter: Option<&Filter>) -> anyhow::Result<Vec<Flow>> {
    let mut flows = Vec::new();
    for path in paths {
        read_matching(path, filter, |flow| flows.push(flow))?;
    }
    Ok(flows)
}

/// Server replay of the flows in `paths`, with what it loaded told on stderr.
pub fn server(paths: &[PathBuf], options: &ServerReplayOptions) -> anyhow::Result<Arc<ServerReplay>> {
    let replay = ServerReplay::new(load(paths, None)?, options.clone());
    let skipped = match replay.skipped() {
        0 => String::new(),
        n => {
            format!(" ({} without a whole saved response left out)", crate::output::counted(n as u64, "flow", "flows"))
        }
    };
    eprintln!(
        "flowgate: server replay: {} from {}{skipped}",
        crate::output::counted(replay.left() as u64, "saved response", "saved responses"),
        names(paths)
    );
    Ok(Arc::new(replay))
}

fn names(paths: &[PathBuf]) -> String {
    paths.iter().map(|p| p.display().to_string()).collect::<Vec<_>>().join(", ")
}

/// What a client replay run did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Summary {
    pub answered: usize,
    pub failed: usize,
    pub skipped: usize,
}

impl std::fmt::Display for Summary {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let total = self.answered + self.failed + self.skipped;
        write!(f, "client replay: {total} flows, {} answered, {} failed", self.answered, self.failed)?;
        if self.skipped > 0 {
            write!(f, ", {} not replayable (skipped)", self.skipped)?;
        }
        Ok(())
    }
}

/// Sends every flow's request again through `proxy` in `mode`, at most `concurrency` at
/// once, in order; reports each failure and skip on stderr.
pub async fn client(proxy: Arc<Proxy>, mode: Arc<Mode>, flows: Vec<Flow>, concurrency: Option<usize>) -> Summary {
    let bar = indicatif::ProgressBar::new(flows.len() as u64);
    bar.set_style(
        indicatif::ProgressStyle::with_template("{spinner} client replay {pos}/{len} [{bar:30}] {elapsed} {msg}")
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
    );
    let limit = concurrency.unwrap_or(usize::MAX).max(1);
    let mut running = tokio::task::JoinSet::new();
    let mut summary = Summary::default();
    let mut flows = flows.into_iter();
    loop {
        // Started in the file's order, `limit` at a time; each reported as it ends.
        while running.len() < limit {
            let Some(flow) = flows.next() else { break };
            let (proxy, mode) = (proxy.clone(), mode.clone());
            running.spawn(async move {
                let replayed = proxy.replay_client(&flow, mode).await;
                (report_name(&flow), replayed)
            });
        }
        let Some(done) = running.join_next().await else { break };
        bar.inc(1);
        match done {
            Ok((_, Replayed::Answered { .. })) => summary.answered += 1,
            Ok((url, Replayed::Failed(why))) => {
                summary.failed += 1;
                bar.suspend(|| eprintln!("flowgate: client replay of {url} failed: {why}"));
            }
            Ok((url, Replayed::Skipped(why))) => {
                summary.skipped += 1;
                bar.suspend(|| eprintln!("flowgate: client replay skipped {url}: {why}"));
            }
            Err(e) => {
                summary.failed += 1;
                bar.suspend(|| eprintln!("flowgate: a client replay task failed: {e}"));
            }
        }
    }
    bar.finish_and_clear();
    summary
}

/// What a flow is called in replay's reports.
fn report_name(flow: &Flow) -> String {
    match &flow.payload {
        flowgate_flow::Payload::Http(http) => format!("{} {}", http.request.method, http.request.url()),
        _ => format!("{:?} flow {}", flow.kind(), flow.id),
    }
}

/// The mode client replay sends in: upstream mode when the first `--mode` is one (the
/// requests go through that proxy), else straight to each flow's server.
pub fn client_mode(modes: &[String]) -> anyhow::Result<Arc<Mode>> {
    match modes.first() {
        Some(text) => {
            let (mode, _) = Mode::parse(text)?;
            Ok(Arc::new(match mode {
                upstream @ Mode::Upstream { .. } => upstream,
                _ => Mode::Regular,
            }))
        }
        None => Ok(Arc::new(Mode::Regular)),
    }
}
