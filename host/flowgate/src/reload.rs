//! Hot reload of plugins: the `-s` files are watched (notify), as mitmproxy reloads a
//! script that changed. A changed manifest or component is loaded and checked in the
//! background like at start-up; if it loads, a new chain with it in place of the old
//! version becomes current at once (flows in progress finish on the old version, new
//! flows get the new one); if not, the error is printed and the running version stays.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::sync::{Arc, PoisonError, RwLock};
use std::time::Duration;

use flowgate_runtime::{Chain, ChainHandle, Plugin, Runtime};
use notify::Watcher;

/// A plugin as given with `-s`: where it is and its `--set` overrides.
pub struct Source {
    pub path: PathBuf,
    pub overrides: Vec<(String, String)>,
}

/// How long changes must settle before a reload: an editor or a build writes a file in
/// several steps, and one reload after them beats one per step.
const SETTLE: Duration = Duration::from_millis(100);

/// Every file watched, all plugins together. The watcher passes on events for these
/// only: a busy neighbour in a watched directory (flows saved beside the plugin, one
/// write per flow) would otherwise wake the reload loop on every write and keep its
/// settle time from ever running out, so that no change was reloaded while it wrote.
type Watched = Arc<RwLock<BTreeSet<PathBuf>>>;

fn all_files(files: &[BTreeSet<PathBuf>]) -> BTreeSet<PathBuf> {
    files.iter().flatten().cloned().collect()
}

/// Watches the plugins' files and reloads what changes, for as long as the runtime runs.
/// If the files cannot be watched, a warning is printed and the proxy runs on without
/// reloading.
pub fn watch(runtime: Runtime, sources: Vec<Source>, loaded: Vec<Arc<Plugin>>, chain: ChainHandle) {
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel::<PathBuf>();
    let files: Vec<BTreeSet<PathBuf>> = sources.iter().map(|s| files_of(&s.path)).collect();
    let watched = Watched::default();
    let ours = watched.clone();
    let watcher = notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
        if let Ok(event) = event
            && !matches!(event.kind, notify::EventKind::Access(_))
        {
            let ours = ours.read().unwrap_or_else(PoisonError::into_inner);
            for path in event.paths.into_iter().filter(|p| ours.contains(p)) {
                let _ = tx.send(path);
            }
        }
    });
    let mut watching = Watching {
        watcher: match watcher {
            Ok(w) => w,
            Err(e) => {
                eprintln!("flowgate: cannot watch the plugins' files, changes need a restart: {e}");
                return;
            }
        },
        files: watched,
        dirs: BTreeSet::new(),
    };
    watching.update(&files);
    tokio::spawn(reload_loop(runtime, sources, files, watching, loaded, chain, rx));
}

/// The watcher, the files it passes events on for, and the directories it watches.
/// Directories, not files: a file replaced by a rename (editors, `cp` to a temporary
/// name then `mv`) is a new file a watch on the old one would miss.
struct Watching {
    watcher: notify::RecommendedWatcher,
    files: Watched,
    dirs: BTreeSet<PathBuf>,
}

impl Watching {
    /// Passes on events for `files` from now on, and watches each one's directory if it
    /// is not watched yet (a manifest that now names a component elsewhere brings one).
    fn update(&mut self, files: &[BTreeSet<PathBuf>]) {
        *self.files.write().unwrap_or_else(PoisonError::into_inner) = all_files(files);
        for dir in files.iter().flatten().filter_map(|f| f.parent()) {
            if self.dirs.contains(dir) {
                continue;
            }
            match self.watcher.watch(dir, notify::RecursiveMode::NonRecursive) {
                Ok(()) => {
                    self.dirs.insert(dir.to_owned());
                }
                Err(e) => eprintln!("flowgate: cannot watch {}, changes there need a restart: {e}", dir.display()),
            }
        }
    }
}

/// The files a plugin is made of, absolute: the manifest and its component, or the bare
/// component.
fn files_of(path: &Path) -> BTreeSet<PathBuf> {
    let mut files = BTreeSet::new();
    files.insert(absolute(path));
    if path.extension().is_some_and(|e| e == "toml")
        && let Ok(text) = std::fs::read_to_string(path)
        && let Ok(manifest) = flowgate_runtime::Manifest::parse(&text, path)
    {
        files.insert(absolute(&manifest.wasm));
    }
    files
}

/// `path` made absolute through its directory (the file itself may not exist right now).
fn absolute(path: &Path) -> PathBuf {
    let dir = path.parent().filter(|d| !d.as_os_str().is_empty()).unwrap_or(Path::new("."));
    let dir = std::fs::canonicalize(dir).unwrap_or_else(|_| dir.to_owned());
    match path.file_name() {
        Some(name) => dir.join(name),
        None => dir,
    }
}

async fn reload_loop(
    runtime: Runtime,
    sources: Vec<Source>,
    mut files: Vec<BTreeSet<PathBuf>>,
    mut watching: Watching,
    mut loaded: Vec<Arc<Plugin>>,
    chain: ChainHandle,
    mut changes: tokio::sync::mpsc::UnboundedReceiver<PathBuf>,
) {
    while let Some(first) = changes.recv().await {
        let mut changed = BTreeSet::from([first]);
        while let Ok(Some(path)) = tokio::time::timeout(SETTLE, changes.recv()).await {
            changed.insert(path);
        }
        for (i, source) in sources.iter().enumerate() {
            if !changed.iter().any(|p| files[i].contains(p)) {
                continue;
            }
            match runtime.load_with(&source.path, &source.overrides).await {
                Ok(plugin) => {
                    eprintln!(
                        "flowgate: reloaded plugin {} from {} ({}; {})",
                        plugin.name(),
                        source.path.display(),
                        plugin.exported_groups().join(", "),
                        plugin.compiled()
                    );
                    let old = std::mem::replace(&mut loaded[i], plugin.clone());
                    chain.replace(Chain::new(loaded.clone()));
                    // The manifest may now name another component.
                    files[i] = files_of(&source.path);
                    watching.update(&files);
                    for failure in Chain::new(vec![plugin]).running().await {
                        eprintln!("flowgate: {failure}");
                    }
                    for failure in Chain::new(vec![old]).done().await {
                        eprintln!("flowgate: {failure}");
                    }
                }
                Err(e) => eprintln!(
                    "flowgate: reload of {} refused, plugin {} keeps running as it was: {e:#}",
                    source.path.display(),
                    loaded[i].name()
                ),
            }
        }
    }
}
