//! A loaded plugin: its pre-instantiated component, the hook groups it exports, its health,
//! and how one hook call runs (instance, deadline, limits, failure classification).

use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Instant;

use flowgate_flow::{FailureKind, Hook, PluginFailure};
use wasmtime::component::InstancePre;
use wasmtime::{Store, Trap, UpdateDeadline};
use wasmtime_wasi::WasiCtx;

use crate::bindings::hooks;
use crate::host::{CallState, DeadlineExceeded, MemoryCapExceeded, MemoryLimiter, PluginShared, StoreState};
use crate::manifest::{FailurePolicy, InstanceModel, Manifest};
use crate::runtime::RuntimeInner;
use crate::stderr::StderrTail;

/// Export indices of the hook groups a component exports, found once at load.
#[derive(Default)]
pub(crate) struct GroupIndices {
    pub lifecycle: Option<hooks::lifecycle::GuestIndices>,
    pub connection: Option<hooks::connection::GuestIndices>,
    pub tls: Option<hooks::tls::GuestIndices>,
    pub http: Option<hooks::http::GuestIndices>,
    pub websocket: Option<hooks::websocket::GuestIndices>,
    pub tcp: Option<hooks::tcp::GuestIndices>,
    pub udp: Option<hooks::udp::GuestIndices>,
    pub dns: Option<hooks::dns::GuestIndices>,
}

impl GroupIndices {
    pub fn is_empty(&self) -> bool {
        self.names().is_empty()
    }

    pub fn names(&self) -> Vec<&'static str> {
        let mut names = Vec::new();
        let groups: [(&'static str, bool); 8] = [
            ("lifecycle", self.lifecycle.is_some()),
            ("connection", self.connection.is_some()),
            ("tls", self.tls.is_some()),
            ("http", self.http.is_some()),
            ("websocket", self.websocket.is_some()),
            ("tcp", self.tcp.is_some()),
            ("udp", self.udp.is_some()),
            ("dns", self.dns.is_some()),
        ];
        for (name, present) in groups {
            if present {
                names.push(name);
            }
        }
        names
    }
}

/// The exported groups of one live instance.
#[derive(Default)]
pub(crate) struct LiveGroups {
    pub lifecycle: Option<hooks::lifecycle::Guest>,
    pub connection: Option<hooks::connection::Guest>,
    pub tls: Option<hooks::tls::Guest>,
    pub http: Option<hooks::http::Guest>,
    pub websocket: Option<hooks::websocket::Guest>,
    pub tcp: Option<hooks::tcp::Guest>,
    pub udp: Option<hooks::udp::Guest>,
    pub dns: Option<hooks::dns::Guest>,
}

/// One instantiated plugin with its own store.
pub(crate) struct LiveInstance {
    pub store: Store<StoreState>,
    pub groups: LiveGroups,
}

/// Failure counters that drive quarantine.
#[derive(Default)]
pub(crate) struct Health {
    consecutive_failures: AtomicU32,
    quarantined: AtomicBool,
    calls: AtomicU64,
    failures: AtomicU64,
}

/// A loaded plugin. Cheap to share: every flow holds an `Arc` to it.
pub struct Plugin {
    pub(crate) shared: Arc<PluginShared>,
    pub(crate) pre: InstancePre<StoreState>,
    pub(crate) groups: GroupIndices,
    pub(crate) health: Health,
    pub(crate) pool: Mutex<Vec<LiveInstance>>,
    pub(crate) runtime: Arc<RuntimeInner>,
    pub(crate) compiled: Compiled,
}

/// How a plugin's component was turned into machine code at load.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Compiled {
    /// Time spent compiling, or reading the compiled code from the cache.
    pub took: std::time::Duration,
    /// Whether the compiled code came from the on-disk cache.
    pub from_cache: bool,
}

impl std::fmt::Display for Compiled {
    /// `compiled in 52 ms` or `compiled code from the cache in 1 ms`.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let how = if self.from_cache { "compiled code from the cache" } else { "compiled" };
        write!(f, "{how} in {} ms", self.took.as_millis())
    }
}

/// A snapshot of a plugin's counters.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PluginStats {
    /// Hook calls made.
    pub calls: u64,
    /// Hook calls that failed.
    pub failures: u64,
    /// Whether the plugin is quarantined.
    pub quarantined: bool,
}

impl std::fmt::Debug for Plugin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Plugin").field("name", &self.name()).field("groups", &self.groups.names()).finish()
    }
}

/// What one hook call reports besides its result.
#[derive(Debug, Default, Clone)]
pub(crate) struct CallReport {
    pub log_dropped: u64,
    pub body_mode: Option<flowgate_flow::BodyMode>,
    /// Messages the plugin injected during the call (dropped if the call failed).
    pub injected: Vec<flowgate_flow::Injected>,
}

impl Plugin {
    /// The plugin's name.
    pub fn name(&self) -> &str {
        &self.shared.manifest.name
    }

    /// The manifest it was loaded with.
    pub fn manifest(&self) -> &Manifest {
        &self.shared.manifest
    }

    /// How long compiling took at load, and whether the cache answered.
    pub fn compiled(&self) -> Compiled {
        self.compiled
    }

    /// The hook groups it exports, e.g. `["http"]`.
    pub fn exported_groups(&self) -> Vec<&'static str> {
        self.groups.names()
    }

    /// Its counters.
    pub fn stats(&self) -> PluginStats {
        PluginStats {
            calls: self.health.calls.load(Ordering::Relaxed),
            failures: self.health.failures.load(Ordering::Relaxed),
            quarantined: self.health.quarantined.load(Ordering::Relaxed),
        }
    }

    /// Warm instances waiting in the pool (`pooled` model only).
    pub fn pooled_instances(&self) -> usize {
        self.pool.lock().unwrap_or_else(PoisonError::into_inner).len()
    }

    /// Whether it has been quarantined for failing too often.
    pub fn is_quarantined(&self) -> bool {
        self.health.quarantined.load(Ordering::Relaxed)
    }

    pub(crate) fn failure_policy(&self) -> FailurePolicy {
        self.shared.manifest.failure
    }

    pub(crate) fn model(&self) -> InstanceModel {
        self.shared.manifest.instance
    }

    fn wasi_ctx(&self, stderr: &StderrTail) -> WasiCtx {
        let caps = &self.shared.manifest.capabilities;
        let mut wasi = WasiCtx::builder();
        // The defaults already refuse every socket; say so where it matters.
        wasi.allow_tcp(false).allow_udp(false).allow_ip_name_lookup(false);
        for name in &caps.env {
            if let Ok(value) = std::env::var(name) {
                wasi.env(name, value);
            }
        }
        if caps.stdio {
            wasi.inherit_stdout().inherit_stderr();
        } else {
            wasi.stderr(stderr.clone());
        }
        wasi.build()
    }

    /// Creates a fresh instance (the pooling allocator makes this cheap).
    pub(crate) async fn instantiate(&self) -> Result<LiveInstance, PluginFailure> {
        let limits = &self.shared.manifest.limits;
        let stderr = StderrTail::default();
        let state = StoreState {
            wasi: self.wasi_ctx(&stderr),
            stderr,
            table: wasmtime::component::ResourceTable::new(),
            limiter: MemoryLimiter { cap: limits.memory_bytes, denied: false },
            plugin: self.shared.clone(),
            call: CallState::new(Hook::Configure, Instant::now() + limits.instantiate_timeout, None),
        };
        let mut store = Store::new(&self.runtime.engine, state);
        store.limiter(|s| &mut s.limiter);
        store.epoch_deadline_callback(|ctx| {
            if Instant::now() >= ctx.data().call.deadline {
                Err(wasmtime::Error::new(DeadlineExceeded))
            } else {
                Ok(UpdateDeadline::Yield(1))
            }
        });
        store.set_epoch_deadline(1);
        if let Some(fuel) = limits.fuel {
            store.set_fuel(fuel).map_err(|e| self.failure(Hook::Configure, FailureKind::Instantiate, &e))?;
        }
        let fail = |e: wasmtime::Error| {
            let mut failure = self.failure(Hook::Configure, FailureKind::Instantiate, &e);
            if e.is::<DeadlineExceeded>() {
                failure.message = format!(
                    "ran past {:?} (limits.instantiate_timeout_ms)",
                    self.shared.manifest.limits.instantiate_timeout
                );
            } else if e.is::<MemoryCapExceeded>() {
                failure.message = format!("{} (limits.memory)", e.root_cause());
            }
            failure
        };
        let instance = self.pre.instantiate_async(&mut store).await.map_err(fail)?;
        let g = &self.groups;
        let groups = LiveGroups {
            lifecycle: g.lifecycle.as_ref().map(|i| i.load(&mut store, &instance)).transpose().map_err(fail)?,
            connection: g.connection.as_ref().map(|i| i.load(&mut store, &instance)).transpose().map_err(fail)?,
            tls: g.tls.as_ref().map(|i| i.load(&mut store, &instance)).transpose().map_err(fail)?,
            http: g.http.as_ref().map(|i| i.load(&mut store, &instance)).transpose().map_err(fail)?,
            websocket: g.websocket.as_ref().map(|i| i.load(&mut store, &instance)).transpose().map_err(fail)?,
            tcp: g.tcp.as_ref().map(|i| i.load(&mut store, &instance)).transpose().map_err(fail)?,
            udp: g.udp.as_ref().map(|i| i.load(&mut store, &instance)).transpose().map_err(fail)?,
            dns: g.dns.as_ref().map(|i| i.load(&mut store, &instance)).transpose().map_err(fail)?,
        };
        Ok(LiveInstance { store, groups })
    }

    /// Creates a fresh instance and drops it: what the `per-flow` model pays once per flow.
    /// Used by the benchmark and to check a plugin still instantiates.
    pub async fn probe_instance(&self) -> Result<(), PluginFailure> {
        self.instantiate().await.map(drop)
    }

    /// Takes a warm instance from the pool, or makes one.
    pub(crate) async fn acquire_pooled(&self) -> Result<LiveInstance, PluginFailure> {
        let warm = self.pool.lock().unwrap_or_else(PoisonError::into_inner).pop();
        match warm {
            Some(live) => Ok(live),
            None => self.instantiate().await,
        }
    }

    /// Gives a healthy instance back to the pool (dropped if the pool is full).
    pub(crate) fn release_pooled(&self, live: LiveInstance) {
        let mut pool = self.pool.lock().unwrap_or_else(PoisonError::into_inner);
        if pool.len() < self.shared.manifest.limits.pool_size {
            pool.push(live);
        }
    }

    pub(crate) fn failure(&self, hook: Hook, kind: FailureKind, error: &wasmtime::Error) -> PluginFailure {
        PluginFailure { plugin: self.name().to_owned(), hook, kind, message: format!("{error:#}") }
    }

    /// Classifies an error from a hook call.
    fn classify(&self, hook: Hook, live: &LiveInstance, error: &wasmtime::Error) -> PluginFailure {
        let kind = if error.is::<DeadlineExceeded>() {
            FailureKind::Deadline
        } else if error.is::<MemoryCapExceeded>() || live.store.data().limiter.denied {
            FailureKind::Memory
        } else if error.downcast_ref::<Trap>() == Some(&Trap::OutOfFuel) {
            FailureKind::Fuel
        } else {
            FailureKind::Trap
        };
        let message = match kind {
            FailureKind::Deadline => {
                format!("interrupted after {:?} (limits.hook_timeout_ms)", self.shared.manifest.limits.hook_timeout)
            }
            FailureKind::Memory => {
                format!(
                    "denied memory past {} bytes (limits.memory): {}",
                    self.shared.manifest.limits.memory_bytes,
                    error.root_cause()
                )
            }
            _ => format!("{}", error.root_cause()),
        };
        let message = match live.store.data().stderr.summary() {
            Some(said) => format!("{message} (stderr: {said})"),
            None => message,
        };
        PluginFailure { plugin: self.name().to_owned(), hook, kind, message }
    }

    /// Records a failure; quarantines the plugin once its crash budget is spent.
    pub(crate) fn note_failure(&self, failure: &PluginFailure) {
        self.health.failures.fetch_add(1, Ordering::Relaxed);
        let n = self.health.consecutive_failures.fetch_add(1, Ordering::Relaxed) + 1;
        tracing::warn!("{failure}");
        if n >= self.shared.manifest.limits.crash_budget && !self.health.quarantined.swap(true, Ordering::Relaxed) {
            tracing::error!("plugin {} quarantined after {n} consecutive failures (limits.crash_budget)", self.name());
        }
    }

    fn note_success(&self) {
        self.health.consecutive_failures.store(0, Ordering::Relaxed);
    }

    /// The failure recorded for a flow that skips a quarantined plugin.
    pub(crate) fn quarantine_failure(&self, hook: Hook) -> PluginFailure {
        PluginFailure {
            plugin: self.name().to_owned(),
            hook,
            kind: FailureKind::Quarantined,
            message: format!(
                "not called: quarantined after {} consecutive failures",
                self.shared.manifest.limits.crash_budget
            ),
        }
    }

    /// Runs one hook call on `live` with a fresh deadline, fuel and log budget.
    /// On failure the instance must not be used again.
    pub(crate) async fn invoke<R>(
        &self,
        live: &mut LiveInstance,
        hook: Hook,
        flow_id: Option<flowgate_flow::Uuid>,
        call: impl AsyncFnOnce(&mut Store<StoreState>, &LiveGroups) -> wasmtime::Result<R>,
    ) -> Result<(R, CallReport), PluginFailure> {
        self.health.calls.fetch_add(1, Ordering::Relaxed);
        let limits = &self.shared.manifest.limits;
        let state = &mut live.store.data_mut().call;
        *state = CallState::new(hook, Instant::now() + limits.hook_timeout, flow_id);
        state.outbound_left = limits.outbound_timeout;
        live.store.data().stderr.clear();
        live.store.set_epoch_deadline(1);
        if let Some(fuel) = limits.fuel {
            live.store.set_fuel(fuel).map_err(|e| self.failure(hook, FailureKind::Trap, &e))?;
        }
        let LiveInstance { store, groups } = live;
        let result = call(store, groups).await;
        let call_state = &mut live.store.data_mut().call;
        let report = CallReport {
            log_dropped: call_state.log_dropped,
            body_mode: call_state.body_mode,
            injected: std::mem::take(&mut call_state.injected),
        };
        match result {
            Ok(value) => {
                self.note_success();
                Ok((value, report))
            }
            Err(error) => {
                let failure = self.classify(hook, live, &error);
                self.note_failure(&failure);
                Err(failure)
            }
        }
    }

    /// Records an output the host refused, as a failure of the plugin.
    pub(crate) fn invalid_output(&self, hook: Hook, message: String) -> PluginFailure {
        let failure = PluginFailure { plugin: self.name().to_owned(), hook, kind: FailureKind::InvalidOutput, message };
        self.note_failure(&failure);
        failure
    }

    /// Runs `configure` on a fresh instance.
    pub(crate) async fn configure(&self) -> Result<(), String> {
        let mut live = self.instantiate().await.map_err(|f| f.to_string())?;
        let (result, _) = self
            .invoke(&mut live, Hook::Configure, None, async |store, groups| match &groups.lifecycle {
                Some(g) => g.call_configure(store).await,
                None => Ok(Ok(())),
            })
            .await
            .map_err(|f| f.to_string())?;
        result
    }

    /// Runs `running` or `done`, if the plugin exports the lifecycle group.
    pub(crate) async fn lifecycle(&self, hook: Hook) -> Result<(), PluginFailure> {
        if self.groups.lifecycle.is_none() || self.is_quarantined() {
            return Ok(());
        }
        let mut live = self.instantiate().await?;
        self.invoke(&mut live, hook, None, async |store, groups| match &groups.lifecycle {
            Some(g) if hook == Hook::Running => g.call_running(store).await,
            Some(g) => g.call_done(store).await,
            None => Ok(()),
        })
        .await
        .map(drop)
    }
}
