//! The engine every plugin runs on, and loading plugins into it.
//!
//! One [`Runtime`] owns one wasmtime `Engine` (pooling allocator, epoch interruption
//! driven by one ticker thread, compiled components cached on disk) and one `Linker`
//! with every host import. Loading a plugin compiles it (or reuses the cache), checks
//! its imports against what its manifest grants, type-checks it against the WIT and
//! finds which hook groups it exports.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use wasmtime::component::{Component, HasSelf, Linker};
use wasmtime::{Cache, CacheConfig, Config, Engine, InstanceAllocationStrategy, PoolingAllocationConfig};

use crate::bindings::{self, hooks};
use crate::breaker::BreakerLimits;
use crate::budget::{CpuBudget, CpuLimits};
use crate::host::{KvState, LogLevel, LogRecord, LogSink, PluginShared, StoreState};
use crate::manifest::{MAX_MEMORY_BYTES, Manifest};
use crate::outbound::OutboundHttp;
use crate::plugin::{Compiled, GroupIndices, Health, HookSet, Plugin};

/// Settings of the plugin runtime as a whole. Per-plugin limits live in the manifest.
#[derive(Clone)]
pub struct RuntimeConfig {
    /// Where compiled components are cached (`None`: compile on every start).
    pub cache_dir: Option<PathBuf>,
    /// Most plugin instances alive at once across all plugins (`plugin_max_instances`,
    /// default 1000); it sizes the pooling allocator.
    pub max_instances: u32,
    /// Enables fuel metering, which a manifest's `limits.fuel` needs (`plugin_fuel`, default
    /// off: metering slows every plugin down).
    pub fuel: bool,
    /// How often the epoch ticks; deadlines are checked at this granularity (default 1 ms).
    pub epoch_tick: Duration,
    /// Where plugin log lines go.
    pub log_sink: LogSink,
    /// Who does plugins' outbound HTTP (the network layer); `None`: every call answers
    /// `unsupported`.
    pub outbound: Option<Arc<dyn OutboundHttp>>,
}

impl Default for RuntimeConfig {
    fn default() -> Self {
        RuntimeConfig {
            cache_dir: None,
            max_instances: 1000,
            fuel: false,
            epoch_tick: Duration::from_millis(1),
            log_sink: Arc::new(tracing_sink),
            outbound: None,
        }
    }
}

fn tracing_sink(r: &LogRecord) {
    let flow = r.flow_id.map(|id| format!(" flow={id}")).unwrap_or_default();
    match r.level {
        LogLevel::Trace => tracing::trace!("[{}{flow}] {}", r.plugin, r.message),
        LogLevel::Debug => tracing::debug!("[{}{flow}] {}", r.plugin, r.message),
        LogLevel::Info => tracing::info!("[{}{flow}] {}", r.plugin, r.message),
        LogLevel::Warn => tracing::warn!("[{}{flow}] {}", r.plugin, r.message),
        LogLevel::Error => tracing::error!("[{}{flow}] {}", r.plugin, r.message),
    }
}

/// Why a plugin could not be loaded. The message names the file and the problem.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    /// The file could not be read.
    #[error("{path}: {message}")]
    Io {
        /// The file.
        path: PathBuf,
        /// What failed.
        message: String,
    },
    /// The manifest is malformed or asks for something impossible.
    #[error("{path}: bad manifest: {message}")]
    Manifest {
        /// The manifest.
        path: PathBuf,
        /// What is wrong.
        message: String,
    },
    /// The component is invalid, does not match the WIT, or imports what it was not granted.
    #[error("{path}: {message}")]
    Component {
        /// The component.
        path: PathBuf,
        /// What is wrong.
        message: String,
    },
    /// The plugin's `configure` hook refused its configuration.
    #[error("{path}: configure failed: {message}")]
    Configure {
        /// The component.
        path: PathBuf,
        /// What the plugin said, or how it failed.
        message: String,
    },
    /// The engine could not be set up.
    #[error("plugin runtime: {0}")]
    Engine(String),
}

pub(crate) struct RuntimeInner {
    pub engine: Engine,
    pub linker: Linker<StoreState>,
    pub config: RuntimeConfig,
    cache: Option<Cache>,
    stop_ticker: Arc<AtomicBool>,
    /// Whether the epoch ticker runs: it starts with the first plugin loaded, so a proxy
    /// without plugins has no thread waking every `epoch_tick`.
    ticker: Mutex<bool>,
}

impl Drop for RuntimeInner {
    fn drop(&mut self) {
        self.stop_ticker.store(true, Ordering::Relaxed);
    }
}

/// The plugin runtime: one engine, one linker, one epoch ticker (from the first plugin on).
#[derive(Clone)]
pub struct Runtime {
    pub(crate) inner: Arc<RuntimeInner>,
}

/// Bytes of each pooled memory, table and stack kept resident between instances.
const KEEP_RESIDENT: usize = 128 << 10;

/// The import namespaces every plugin may use without a grant. WASI filesystem is
/// linked with no preopened directories, environment and stdio are empty unless
/// granted, sockets are linked with TCP, UDP and name lookup switched off (every call
/// fails with `access-denied`), and outbound HTTP checks the manifest's
/// `allowed_outbound_hosts` on every call, so none of these reach anything outside the
/// sandbox. Importing them is allowed because the Python and JavaScript toolchains
/// import every interface their runtime might use, whether the plugin calls it or not.
const ALWAYS_ALLOWED: &[&str] = &[
    "flowgate:plugin/types@0.2.",
    "flowgate:plugin/log@0.2.",
    "flowgate:plugin/config@0.2.",
    "flowgate:plugin/key-value@0.2.",
    "flowgate:plugin/clock@0.2.",
    "flowgate:plugin/random@0.2.",
    "wasi:cli/",
    "wasi:io/",
    "wasi:clocks/",
    "wasi:random/",
    "wasi:filesystem/",
    "wasi:sockets/",
    "flowgate:plugin/outbound-http@0.2.",
];

impl Runtime {
    /// Sets up the engine. Fails only if the platform refuses the memory reservations.
    pub fn new(config: RuntimeConfig) -> Result<Runtime, LoadError> {
        let mut wasm = Config::new();
        wasm.wasm_component_model(true);
        wasm.epoch_interruption(true);
        wasm.consume_fuel(config.fuel);
        let mut pool = PoolingAllocationConfig::default();
        let n = config.max_instances.max(1);
        pool.total_component_instances(n);
        pool.total_core_instances(n.saturating_mul(8));
        pool.total_memories(n.saturating_mul(2));
        pool.total_tables(n.saturating_mul(4));
        pool.total_stacks(n);
        pool.max_core_instances_per_component(32);
        pool.max_memories_per_component(4);
        pool.max_tables_per_component(8);
        pool.max_memory_size(MAX_MEMORY_BYTES);
        // Reset the first pages of a slot with memset instead of handing them back to the
        // kernel: a fresh instance then starts without page faults on its hot pages.
        pool.linear_memory_keep_resident(KEEP_RESIDENT);
        pool.table_keep_resident(KEEP_RESIDENT);
        pool.async_stack_keep_resident(KEEP_RESIDENT);
        pool.decommit_batch_size(16);
        wasm.allocation_strategy(InstanceAllocationStrategy::Pooling(pool));
        let mut cache = None;
        if let Some(dir) = &config.cache_dir {
            let mut settings = CacheConfig::new();
            settings.with_directory(dir);
            let made = Cache::new(settings)
                .map_err(|e| LoadError::Engine(format!("compile cache in {}: {e}", dir.display())))?;
            wasm.cache(Some(made.clone()));
            cache = Some(made);
        }
        let engine = Engine::new(&wasm).map_err(|e| LoadError::Engine(e.to_string()))?;
        let mut linker: Linker<StoreState> = Linker::new(&engine);
        wasmtime_wasi::p2::add_to_linker_async(&mut linker).map_err(|e| LoadError::Engine(e.to_string()))?;
        bindings::Plugin::add_to_linker::<StoreState, HasSelf<StoreState>>(&mut linker, |s| s)
            .map_err(|e| LoadError::Engine(e.to_string()))?;

        let stop_ticker = Arc::new(AtomicBool::new(false));
        let ticker = Mutex::new(false);
        Ok(Runtime { inner: Arc::new(RuntimeInner { engine, linker, config, cache, stop_ticker, ticker }) })
    }

    /// Starts the epoch ticker (the clock of every plugin deadline) unless it runs already.
    fn start_ticker(&self) -> Result<(), LoadError> {
        let mut running = self.inner.ticker.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        if *running {
            return Ok(());
        }
        let engine = self.inner.engine.clone();
        let stop = self.inner.stop_ticker.clone();
        let tick = self.inner.config.epoch_tick;
        std::thread::Builder::new()
            .name("flowgate-epoch".to_owned())
            .spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    std::thread::sleep(tick);
                    engine.increment_epoch();
                }
            })
            .map_err(|e| LoadError::Engine(format!("cannot start the epoch ticker: {e}")))?;
        *running = true;
        Ok(())
    }

    /// Loads a plugin from a `.wasm` (safe defaults) or a `plugin.toml` (its manifest),
    /// and runs its `configure` hook if it exports the lifecycle group.
    pub async fn load(&self, path: &Path) -> Result<Arc<Plugin>, LoadError> {
        self.load_with(path, &[]).await
    }

    /// Like [`Runtime::load`], with `key=value` config overrides (`--set NAME.KEY=VALUE`).
    pub async fn load_with(&self, path: &Path, overrides: &[(String, String)]) -> Result<Arc<Plugin>, LoadError> {
        let mut manifest = if path.extension().is_some_and(|e| e == "toml") {
            let text = std::fs::read_to_string(path)
                .map_err(|e| LoadError::Io { path: path.to_owned(), message: e.to_string() })?;
            Manifest::parse(&text, path)
                .map_err(|e| LoadError::Manifest { path: path.to_owned(), message: e.to_string() })?
        } else {
            Manifest::for_bare_wasm(path)
        };
        for (key, value) in overrides {
            manifest.config.insert(key.clone(), value.clone());
        }
        self.load_manifest(manifest).await
    }

    /// Loads a plugin described by an already-parsed manifest.
    pub async fn load_manifest(&self, manifest: Manifest) -> Result<Arc<Plugin>, LoadError> {
        let path = manifest.wasm.clone();
        let component_error = |message: String| LoadError::Component { path: path.clone(), message };
        if manifest.limits.fuel.is_some() && !self.inner.config.fuel {
            return Err(component_error(
                "limits.fuel is set but fuel metering is off (start with --set plugin_fuel=true)".to_owned(),
            ));
        }
        let bytes = std::fs::read(&path).map_err(|e| LoadError::Io { path: path.clone(), message: e.to_string() })?;
        if !bytes.starts_with(b"\0asm") {
            // A mitmproxy addon given as it is, most likely.
            let lang = match path.extension().and_then(|e| e.to_str()) {
                Some("py") => Some(("a Python addon", "python")),
                Some("js" | "ts") => Some(("JavaScript source", "js")),
                _ => None,
            };
            let hint = lang.map_or(String::new(), |(what, lang)| {
                format!(
                    " ({what}? `flowgate plugin new --lang {lang}` makes a plugin project, `flowgate plugin build` \
                     compiles it to a component)"
                )
            });
            return Err(component_error(format!(
                "not WebAssembly: flowgate runs plugins compiled to WebAssembly components{hint}"
            )));
        }
        if !wasmparser_is_component(&bytes) {
            return Err(component_error(
                "not a WebAssembly component (a core module? build for wasm32-wasip2 or run `wasm-tools component new`)"
                    .to_owned(),
            ));
        }
        // Before anything of the plugin runs (`configure`, the hook list).
        self.start_ticker()?;
        let engine = &self.inner.engine;
        let hits_before = self.inner.cache.as_ref().map_or(0, Cache::cache_hits);
        let started = Instant::now();
        let component =
            Component::new(engine, &bytes).map_err(|e| component_error(format!("invalid component: {e:#}")))?;
        let compiled = Compiled {
            took: started.elapsed(),
            from_cache: self.inner.cache.as_ref().is_some_and(|c| c.cache_hits() > hits_before),
        };

        let ty = component.component_type();
        for (name, _) in ty.imports(engine) {
            check_import(name).map_err(component_error)?;
        }
        let pre = self
            .inner
            .linker
            .instantiate_pre(&component)
            .map_err(|e| component_error(format!("does not match the flowgate:plugin@0.2 WIT: {e:#}")))?;

        let exported: Vec<String> = ty.exports(engine).map(|(name, _)| name.to_owned()).collect();
        if let Some(version) = exported.iter().find_map(|e| older_contract(e)) {
            return Err(component_error(older_contract_error(&version)));
        }
        let exports = |group: &str| {
            let prefix = format!("flowgate:plugin/{group}@0.2.");
            exported.iter().any(|e| e.starts_with(&prefix))
        };
        let wrong = |group: &str, e: wasmtime::Error| {
            component_error(format!("export of hook group `{group}` does not match the WIT: {e:#}"))
        };
        let mut groups = GroupIndices::default();
        if exports("lifecycle") {
            groups.lifecycle = Some(hooks::lifecycle::GuestIndices::new(&pre).map_err(|e| wrong("lifecycle", e))?);
        }
        if exports("connection") {
            groups.connection = Some(hooks::connection::GuestIndices::new(&pre).map_err(|e| wrong("connection", e))?);
        }
        if exports("tls") {
            groups.tls = Some(hooks::tls::GuestIndices::new(&pre).map_err(|e| wrong("tls", e))?);
        }
        if exports("http") {
            groups.http = Some(hooks::http::GuestIndices::new(&pre).map_err(|e| wrong("http", e))?);
        }
        if exports("websocket") {
            groups.websocket = Some(hooks::websocket::GuestIndices::new(&pre).map_err(|e| wrong("websocket", e))?);
        }
        if exports("tcp") {
            groups.tcp = Some(hooks::tcp::GuestIndices::new(&pre).map_err(|e| wrong("tcp", e))?);
        }
        if exports("udp") {
            groups.udp = Some(hooks::udp::GuestIndices::new(&pre).map_err(|e| wrong("udp", e))?);
        }
        if exports("dns") {
            groups.dns = Some(hooks::dns::GuestIndices::new(&pre).map_err(|e| wrong("dns", e))?);
        }
        if exported.iter().any(|e| e.starts_with("flowgate:plugin/hook-list@0.2.")) {
            groups.hook_list = Some(hooks::hook_list::GuestIndices::new(&pre).map_err(|e| wrong("hook-list", e))?);
        }
        if groups.is_empty() {
            return Err(component_error(format!(
                "exports no flowgate:plugin@0.2 hook group (it exports: {})",
                if exported.is_empty() { "nothing".to_owned() } else { exported.join(", ") }
            )));
        }

        let limits = &manifest.limits;
        let cpu = CpuBudget::new(
            CpuLimits { max_concurrent_calls: limits.max_concurrent_calls, cpu_per_second: limits.cpu_per_second },
            Instant::now(),
        );
        let health = Health::new(BreakerLimits {
            crash_budget: limits.crash_budget,
            backoff: limits.breaker_backoff,
            backoff_max: limits.breaker_backoff_max,
        });
        let shared = Arc::new(PluginShared {
            manifest,
            kv: Mutex::new(KvState::default()),
            log_sink: self.inner.config.log_sink.clone(),
            outbound: self.inner.config.outbound.clone(),
            started: Instant::now(),
            cpu,
        });
        let plugin = Arc::new(Plugin {
            shared,
            pre,
            groups,
            hooks: std::sync::OnceLock::new(),
            health,
            pool: Mutex::new(Vec::new()),
            runtime: self.inner.clone(),
            compiled,
        });
        // Exports are type-checked when an instance loads them: do it once now so a
        // component that does not match the WIT is refused at load, not at its first flow.
        let mut probe = plugin.instantiate().await.map_err(|f| {
            let hint =
                if f.message.contains("(limits.") { "" } else { " (does it match the flowgate:plugin@0.2 WIT?)" };
            component_error(format!("cannot be instantiated{hint}: {}", f.message))
        })?;
        let hooks = match &plugin.shared.manifest.hooks {
            Some(named) => HookSet::of(named.iter().copied()),
            None => match plugin.implemented_hooks(&mut probe).await.map_err(component_error)? {
                Some(names) => {
                    let (set, unknown) = HookSet::from_export(&names);
                    if !unknown.is_empty() {
                        tracing::warn!(
                            "plugin {}: hook-list names hooks this flowgate does not have, ignored: {unknown:?}",
                            plugin.name()
                        );
                    }
                    set
                }
                None => HookSet::ALL,
            },
        };
        plugin.hooks.set(hooks).expect("set once, here");
        if plugin.model() == crate::InstanceModel::Pooled {
            plugin.release_pooled(probe);
        }
        if plugin.groups.lifecycle.is_some() {
            plugin.configure().await.map_err(|message| LoadError::Configure { path: path.clone(), message })?;
        }
        Ok(plugin)
    }
}

/// Whether `bytes` is a component rather than a core module (the layer field of the header).
fn wasmparser_is_component(bytes: &[u8]) -> bool {
    bytes.len() >= 8 && bytes[..4] == *b"\0asm" && bytes[6..8] == [1, 0]
}

/// Checks one import name against what flowgate provides.
/// The version of an older `flowgate:plugin` contract an import or export names, if any.
fn older_contract(name: &str) -> Option<String> {
    let version = name.strip_prefix("flowgate:plugin/")?.split_once('@')?.1;
    (!version.starts_with("0.2.")).then(|| version.to_owned())
}

fn older_contract_error(version: &str) -> String {
    format!(
        "was built against flowgate:plugin@{version}; this flowgate speaks flowgate:plugin@0.2.1 (and loads every 0.2.x plugin). \
         Rebuild it against the new WIT: `flowgate plugin build DIR` (which vendors wit/ for \
         JavaScript, Python and C), or `cargo build` with the flowgate-sdk from this release \
         (Rust). 0.2.0 changed flow and connection ids to strings and websocket-end's arguments"
    )
}

fn check_import(name: &str) -> Result<(), String> {
    if let Some(version) = older_contract(name) {
        return Err(older_contract_error(&version));
    }
    if ALWAYS_ALLOWED.iter().any(|p| name.starts_with(p)) {
        return Ok(());
    }
    if name.starts_with("wasi:http/") {
        return Err(format!("imports `{name}`: wasi:http is not provided (use flowgate:plugin/outbound-http)"));
    }
    Err(format!("imports `{name}`, which flowgate does not provide"))
}
