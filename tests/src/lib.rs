//! Helpers shared by flowgate's end-to-end tests and benchmarks: the paths of the
//! example plugins (built by build.rs), a shared plugin runtime, manifests written to
//! temporary directories, and captured plugin logs.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock, PoisonError};

use flowgate_flow::{ConnectionInfo, FlowInfo, Request, Response};
use flowgate_runtime::{LogRecord, Runtime, RuntimeConfig};

/// Paths of the example plugins' components.
pub mod plugins {
    include!(concat!(env!("OUT_DIR"), "/plugins.rs"));
}

/// Where compiled components are cached between test runs.
pub fn cache_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target/plugins/wasmtime-cache")
}

/// Plugin log lines captured by a test.
#[derive(Clone, Default)]
pub struct Logs(Arc<Mutex<Vec<LogRecord>>>);

impl Logs {
    /// A runtime config whose log sink records here.
    pub fn config(&self) -> RuntimeConfig {
        let logs = self.0.clone();
        RuntimeConfig {
            cache_dir: Some(cache_dir()),
            log_sink: Arc::new(move |r: &LogRecord| {
                logs.lock().unwrap_or_else(PoisonError::into_inner).push(r.clone())
            }),
            ..RuntimeConfig::default()
        }
    }

    /// Every line so far.
    pub fn lines(&self) -> Vec<LogRecord> {
        self.0.lock().unwrap_or_else(PoisonError::into_inner).clone()
    }

    /// Messages of the lines written by `plugin`.
    pub fn messages(&self, plugin: &str) -> Vec<String> {
        self.lines().into_iter().filter(|r| r.plugin == plugin).map(|r| r.message).collect()
    }
}

/// A runtime shared by the tests of one binary (the engine and compile cache are shared;
/// each test loads its own plugins, so their state and health are separate).
pub fn runtime() -> Runtime {
    static SHARED: OnceLock<Runtime> = OnceLock::new();
    SHARED
        .get_or_init(|| {
            Runtime::new(RuntimeConfig { cache_dir: Some(cache_dir()), ..RuntimeConfig::default() })
                .expect("the plugin runtime starts")
        })
        .clone()
}

/// A path for one test's files, not yet created: `<temp>/flowgate-tests/<pid>/<name>-<n>`.
/// The first call in a test process removes what the test processes before it left there
/// (those no longer running), so the temporary directory holds one run's files at most,
/// not every run's.
pub fn scratch_dir(name: &str) -> PathBuf {
    static SWEPT: OnceLock<PathBuf> = OnceLock::new();
    static N: AtomicU64 = AtomicU64::new(0);
    let root = SWEPT.get_or_init(|| {
        let root = std::env::temp_dir().join("flowgate-tests");
        for entry in std::fs::read_dir(&root).into_iter().flatten().flatten() {
            let name = entry.file_name();
            let running = name.to_str().is_some_and(|pid| Path::new("/proc").join(pid).exists());
            if !running {
                let _ = std::fs::remove_dir_all(entry.path());
            }
        }
        root.join(std::process::id().to_string())
    });
    root.join(format!("{name}-{}", N.fetch_add(1, Ordering::Relaxed)))
}

/// Writes `manifest` (TOML, without `wasm`) to a fresh directory as `plugin.toml`, pointing
/// at `wasm`, and returns the manifest's path.
pub fn manifest(wasm: &str, manifest: &str) -> PathBuf {
    let dir = scratch_dir("manifest");
    std::fs::create_dir_all(&dir).expect("temp dir is writable");
    let path = dir.join("plugin.toml");
    let text = format!("wasm = {wasm:?}\n{manifest}");
    std::fs::write(&path, text).expect("temp dir is writable");
    path
}

/// A GET request for `url` with `extra` filler headers after Host and User-Agent.
pub fn request(url: &str, extra: usize) -> Request {
    let mut r = Request::new("GET", url).expect("valid test URL");
    let host = r.host.clone();
    r.headers.append("Host", host.as_bytes()).expect("valid");
    r.headers.append("User-Agent", b"curl/8.5.0").expect("valid");
    for i in 0..extra {
        r.headers.append(&format!("X-Filler-{i}"), b"some value of a typical length").expect("valid");
    }
    r
}

/// A 200 response with a body.
pub fn response(body: &[u8]) -> Response {
    let mut r = Response { status: 200, reason: "OK".to_owned(), ..Response::default() };
    r.headers.append("Content-Type", b"text/html; charset=utf-8").expect("valid");
    r.headers.append("Content-Length", body.len().to_string().as_bytes()).expect("valid");
    r.body = Some(bytes::Bytes::copy_from_slice(body));
    r
}

/// Connection facts for a client at `client`.
pub fn connection(id: u64, client: &str) -> ConnectionInfo {
    ConnectionInfo { id: uuid(id), client_address: client.to_owned(), ..ConnectionInfo::default() }
}

/// Facts for flow `id` on connection `conn`.
pub fn flow(id: u64, conn: u64) -> FlowInfo {
    FlowInfo {
        id: uuid(id),
        connection_id: uuid(conn),
        client_address: "127.0.0.1:40000".to_owned(),
        ..FlowInfo::default()
    }
}

/// A fixed id for test number `n` (its last bytes are `n`).
pub fn uuid(n: u64) -> flowgate_flow::Uuid {
    let mut bytes = [0u8; 16];
    bytes[8..].copy_from_slice(&n.to_be_bytes());
    flowgate_flow::Uuid::from_random_bytes(bytes)
}
