//! A loaded plugin: its pre-instantiated component, the hook groups it exports, its health
//! (circuit breaker and CPU budget), and how one hook call runs (admission, instance,
//! deadline, limits, CPU metering, failure classification).

use std::future::Future;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use flowgate_flow::{FailureKind, Hook, PluginFailure};
use wasmtime::component::InstancePre;
use wasmtime::{Store, Trap, UpdateDeadline};
use wasmtime_wasi::WasiCtx;

use crate::bindings::hooks;
use crate::breaker::{Admission, Breaker, BreakerLimits, BreakerState, Transition};
use crate::budget::InProgress;
use crate::host::{
    CallState, CpuBudgetSpent, DeadlineExceeded, MemoryCapExceeded, MemoryLimiter, PluginShared, StoreState,
};
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
    /// The optional `hook-list` export (not a group: which hooks the plugin implements).
    pub hook_list: Option<hooks::hook_list::GuestIndices>,
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
    pub hook_list: Option<hooks::hook_list::Guest>,
}

/// A set of hooks (one bit per [`Hook`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct HookSet(u64);

impl HookSet {
    /// Every hook.
    pub const ALL: HookSet = HookSet(u64::MAX);

    fn bit(hook: Hook) -> u64 {
        1 << (hook as u32)
    }

    pub fn of(hooks: impl IntoIterator<Item = Hook>) -> HookSet {
        HookSet(hooks.into_iter().fold(0, |set, h| set | HookSet::bit(h)))
    }

    pub fn contains(self, hook: Hook) -> bool {
        self.0 & HookSet::bit(hook) != 0
    }

    /// What a plugin's `hook-list` export returned, which is untrusted: the first
    /// `MAX_HOOK_NAMES` names are read, those that name no hook are skipped (a newer SDK
    /// may name hooks this host does not have) and returned apart, at most eight of them,
    /// each cut to 64 bytes, for the log.
    pub fn from_export(names: &[String]) -> (HookSet, Vec<String>) {
        let mut unknown = Vec::new();
        let mut hooks = Vec::new();
        for name in names.iter().take(MAX_HOOK_NAMES) {
            match Hook::from_name(name) {
                Some(hook) => hooks.push(hook),
                None if unknown.len() < 8 => unknown.push(name.chars().take(64).collect()),
                None => {}
            }
        }
        (HookSet::of(hooks), unknown)
    }
}

/// How many names of a `hook-list` export are read (there are 33 hooks).
pub(crate) const MAX_HOOK_NAMES: usize = 64;

/// One instantiated plugin with its own store.
pub(crate) struct LiveInstance {
    pub store: Store<StoreState>,
    /// Boxed: a few hundred bytes of export handles, kept out of every call's future.
    pub groups: Box<LiveGroups>,
    /// Its linear memory after instantiation, to tell how much a call grew it.
    pub born_with: usize,
}

/// The circuit breaker and the counters.
pub(crate) struct Health {
    breaker: Mutex<Breaker>,
    /// The breaker [is clean](Breaker::is_clean), as of its last change: while it is,
    /// admitting a call and recording a success take no lock (each hook call did two).
    clean: AtomicBool,
    calls: AtomicU64,
    failures: AtomicU64,
    throttled: AtomicU64,
    short_circuited: AtomicU64,
    dropped_grown: AtomicU64,
}

impl Health {
    pub fn new(limits: BreakerLimits) -> Health {
        Health {
            breaker: Mutex::new(Breaker::new(limits)),
            clean: AtomicBool::new(true),
            calls: AtomicU64::new(0),
            failures: AtomicU64::new(0),
            throttled: AtomicU64::new(0),
            short_circuited: AtomicU64::new(0),
            dropped_grown: AtomicU64::new(0),
        }
    }

    /// Changes the breaker with `step`, keeping `clean` true to it (stored under the lock,
    /// so the last change's value is the one left).
    fn update<R>(&self, step: impl FnOnce(&mut Breaker) -> R) -> R {
        let mut breaker = self.breaker.lock().unwrap_or_else(PoisonError::into_inner);
        let out = step(&mut breaker);
        self.clean.store(breaker.is_clean(), Ordering::Release);
        out
    }

    /// Whether a call may be made at `now` (see [`Breaker::admit`]).
    fn admit(&self, now: Instant) -> (Admission, Option<Transition>) {
        if self.clean.load(Ordering::Acquire) {
            return (Admission::Call, None);
        }
        self.update(|b| b.admit(now))
    }

    /// A call succeeded (see [`Breaker::success`]).
    fn success(&self) -> Option<Transition> {
        if self.clean.load(Ordering::Acquire) {
            return None;
        }
        self.update(Breaker::success)
    }

    fn state(&self, now: Instant) -> BreakerState {
        self.breaker.lock().unwrap_or_else(PoisonError::into_inner).state(now)
    }
}

/// Whether a failure of this kind is the plugin crashing, which its circuit breaker counts.
/// Running long (deadline, fuel, CPU budget) is not: it is bounded by those limits, and
/// whoever can make a plugin spin must not be able to switch it off for everyone. Nor is
/// the host's own exhaustion, nor a call the breaker itself refused.
fn is_crash(kind: FailureKind) -> bool {
    match kind {
        FailureKind::Trap | FailureKind::Memory | FailureKind::InvalidOutput | FailureKind::Instantiate => true,
        FailureKind::Deadline
        | FailureKind::Fuel
        | FailureKind::CpuBudget
        | FailureKind::CircuitOpen
        | FailureKind::HostExhausted => false,
    }
}

/// Leave to make one call: a slot of the plugin's CPU budget and, when the breaker is
/// half-open, the trial. Dropping it gives both back (a trial that ended without a
/// verdict, or was never made, lets the next call be the trial).
pub(crate) struct Permit<'a> {
    plugin: &'a Plugin,
    _slot: InProgress<'a>,
    trial: bool,
}

impl Drop for Permit<'_> {
    fn drop(&mut self) {
        if self.trial {
            self.plugin.health.update(Breaker::release_trial);
        }
    }
}

/// A loaded plugin. Cheap to share: every flow holds an `Arc` to it.
pub struct Plugin {
    pub(crate) shared: Arc<PluginShared>,
    pub(crate) pre: InstancePre<StoreState>,
    pub(crate) groups: GroupIndices,
    /// The hooks it implements (manifest `hooks`, else its `hook-list` export, else all):
    /// no other is called. Set once at load.
    pub(crate) hooks: std::sync::OnceLock<HookSet>,
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
    /// Hook calls that failed (including instantiations for a hook).
    pub failures: u64,
    /// Calls its CPU budget refused at once (too many in progress, or its CPU time per
    /// second spent); not made, so not in `calls`.
    pub throttled: u64,
    /// Calls its circuit breaker refused (open, or half-open with a trial under way).
    pub short_circuited: u64,
    /// Instances dropped instead of pooled because their memory grew past
    /// `limits.pooled_memory_growth`.
    pub dropped_grown: u64,
    /// Its circuit breaker's state.
    pub breaker: BreakerState,
    /// CPU time its hook calls used, in all.
    pub cpu_time: Duration,
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

    /// Whether the host calls `hook` on it: the plugin implements it (by its manifest's
    /// `hooks`, its `hook-list` export, or by default). Its group must be exported too.
    /// Lifecycle hooks (`configure`, `running`, `done`) run once each and are always
    /// called: a list that forgets `configure` must not skip checking the config.
    pub fn implements(&self, hook: Hook) -> bool {
        matches!(hook, Hook::Configure | Hook::Running | Hook::Done)
            || self.hooks.get().copied().unwrap_or(HookSet::ALL).contains(hook)
    }

    /// The hooks of its exported groups that the host calls, e.g. `["request-headers"]`.
    pub fn called_hooks(&self) -> Vec<Hook> {
        Hook::ALL.into_iter().filter(|h| self.is_called_for(*h)).collect()
    }

    /// Whether the host calls it for `hook`: it exports the hook's group and implements it.
    pub fn is_called_for(&self, hook: Hook) -> bool {
        self.implements(hook) && self.exports_group_of(hook)
    }

    /// Whether it exports the group `hook` belongs to.
    fn exports_group_of(&self, hook: Hook) -> bool {
        let g = &self.groups;
        match hook {
            Hook::Configure | Hook::Running | Hook::Done => g.lifecycle.is_some(),
            Hook::ClientConnected
            | Hook::ClientDisconnected
            | Hook::ServerConnect
            | Hook::ServerConnected
            | Hook::ServerDisconnected => g.connection.is_some(),
            Hook::TlsClienthello | Hook::TlsEstablished | Hook::TlsFailed => g.tls.is_some(),
            Hook::RequestHeaders
            | Hook::RequestBodyChunk
            | Hook::Request
            | Hook::ResponseHeaders
            | Hook::ResponseBodyChunk
            | Hook::Response
            | Hook::Error
            | Hook::HttpConnect => g.http.is_some(),
            Hook::WebsocketStart | Hook::WebsocketMessage | Hook::WebsocketEnd => g.websocket.is_some(),
            Hook::TcpStart | Hook::TcpMessage | Hook::TcpEnd | Hook::TcpError => g.tcp.is_some(),
            Hook::UdpStart | Hook::UdpMessage | Hook::UdpEnd | Hook::UdpError => g.udp.is_some(),
            Hook::DnsRequest | Hook::DnsResponse | Hook::DnsError => g.dns.is_some(),
        }
    }

    /// Its counters.
    pub fn stats(&self) -> PluginStats {
        PluginStats {
            calls: self.health.calls.load(Ordering::Relaxed),
            failures: self.health.failures.load(Ordering::Relaxed),
            throttled: self.health.throttled.load(Ordering::Relaxed),
            short_circuited: self.health.short_circuited.load(Ordering::Relaxed),
            dropped_grown: self.health.dropped_grown.load(Ordering::Relaxed),
            breaker: self.breaker_state(),
            cpu_time: self.shared.cpu.used(),
        }
    }

    /// Warm instances waiting in the pool (`pooled` model only).
    pub fn pooled_instances(&self) -> usize {
        self.pool.lock().unwrap_or_else(PoisonError::into_inner).len()
    }

    /// Its circuit breaker's state now.
    pub fn breaker_state(&self) -> BreakerState {
        self.health.state(Instant::now())
    }

    fn log_transition(&self, transition: Transition) {
        match transition {
            Transition::Opened { .. } | Transition::Reopened { .. } => {
                tracing::error!("plugin {}: {transition}", self.name());
            }
            Transition::HalfOpened | Transition::Closed => tracing::warn!("plugin {}: {transition}", self.name()),
        }
    }

    /// Asks the CPU budget and the circuit breaker for leave to call `hook` now; a refusal
    /// is the failure the flow records (counted, and not a crash).
    pub(crate) fn admit(&self, hook: Hook, now: Instant) -> Result<Permit<'_>, PluginFailure> {
        let refused = |kind, message: String| PluginFailure { plugin: self.name().to_owned(), hook, kind, message };
        let slot = self.shared.cpu.start(now).map_err(|why| {
            self.health.throttled.fetch_add(1, Ordering::Relaxed);
            refused(FailureKind::CpuBudget, why.to_string())
        })?;
        let (admission, transition) = self.health.admit(now);
        if let Some(t) = transition {
            self.log_transition(t);
        }
        match admission {
            Admission::Call => Ok(Permit { plugin: self, _slot: slot, trial: false }),
            Admission::Trial => Ok(Permit { plugin: self, _slot: slot, trial: true }),
            Admission::Refused { retry_in } => {
                self.health.short_circuited.fetch_add(1, Ordering::Relaxed);
                let when = match retry_in {
                    Some(d) => format!("half-open in {d:?}"),
                    None => "half-open, its trial call under way".to_owned(),
                };
                let budget = self.shared.manifest.limits.crash_budget;
                Err(refused(
                    FailureKind::CircuitOpen,
                    format!("not called: circuit breaker open after {budget} consecutive failures ({when})"),
                ))
            }
        }
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
            limiter: MemoryLimiter::new(limits.memory_bytes),
            plugin: self.shared.clone(),
            call: CallState::new(Hook::Configure, Instant::now() + limits.instantiate_timeout, None),
            lent: crate::host::LentSlots::default(),
        };
        let mut store = Store::new(&self.runtime.engine, state);
        store.limiter(|s| &mut s.limiter);
        store.epoch_deadline_callback(|ctx| {
            let now = Instant::now();
            if now >= ctx.data().call.deadline {
                Err(wasmtime::Error::new(DeadlineExceeded))
            } else if !ctx.data().plugin.cpu.has_time(now) {
                Err(wasmtime::Error::new(CpuBudgetSpent))
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
            } else if e.is::<CpuBudgetSpent>() {
                failure.kind = FailureKind::CpuBudget;
                failure.message = self.cpu_spent();
            } else if e.chain().any(|c| c.is::<wasmtime::PoolConcurrencyLimitError>()) {
                failure.kind = FailureKind::HostExhausted;
                failure.message = format!("no free instance slot (plugin_max_instances): {}", e.root_cause());
            }
            failure
        };
        let instance = self.pre.instantiate_async(&mut store).await.map_err(fail)?;
        let g = &self.groups;
        let groups = Box::new(LiveGroups {
            lifecycle: g.lifecycle.as_ref().map(|i| i.load(&mut store, &instance)).transpose().map_err(fail)?,
            connection: g.connection.as_ref().map(|i| i.load(&mut store, &instance)).transpose().map_err(fail)?,
            tls: g.tls.as_ref().map(|i| i.load(&mut store, &instance)).transpose().map_err(fail)?,
            http: g.http.as_ref().map(|i| i.load(&mut store, &instance)).transpose().map_err(fail)?,
            websocket: g.websocket.as_ref().map(|i| i.load(&mut store, &instance)).transpose().map_err(fail)?,
            tcp: g.tcp.as_ref().map(|i| i.load(&mut store, &instance)).transpose().map_err(fail)?,
            udp: g.udp.as_ref().map(|i| i.load(&mut store, &instance)).transpose().map_err(fail)?,
            dns: g.dns.as_ref().map(|i| i.load(&mut store, &instance)).transpose().map_err(fail)?,
            hook_list: g.hook_list.as_ref().map(|i| i.load(&mut store, &instance)).transpose().map_err(fail)?,
        });
        let born_with = store.data().limiter.granted;
        Ok(LiveInstance { store, groups, born_with })
    }

    /// Creates a fresh instance and drops it: what the `per-flow` model pays once per flow.
    /// Used by the benchmark and to check a plugin still instantiates.
    pub async fn probe_instance(&self) -> Result<(), PluginFailure> {
        self.instantiate().await.map(drop)
    }

    /// Takes the most recently returned warm instance from the pool, if there is one.
    pub(crate) fn take_pooled(&self) -> Option<LiveInstance> {
        self.pool.lock().unwrap_or_else(PoisonError::into_inner).pop()
    }

    /// Gives a healthy instance back to the pool (dropped if the pool is full, or if its
    /// memory grew past `limits.pooled_memory_growth`).
    pub(crate) fn release_pooled(&self, live: LiveInstance) {
        let grown = live.store.data().limiter.granted.saturating_sub(live.born_with);
        if grown > self.shared.manifest.limits.pooled_memory_growth {
            self.health.dropped_grown.fetch_add(1, Ordering::Relaxed);
            return;
        }
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
        } else if error.is::<CpuBudgetSpent>() {
            FailureKind::CpuBudget
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
            FailureKind::CpuBudget => self.cpu_spent(),
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

    /// Why a call was interrupted by the plugin's CPU budget.
    fn cpu_spent(&self) -> String {
        format!(
            "interrupted: its {:?} of CPU time per second is spent (limits.cpu_per_second)",
            self.shared.manifest.limits.cpu_per_second
        )
    }

    /// Records a failure; a crash counts against the circuit breaker, and the transition it
    /// causes (opened, re-opened) is logged and added to the failure's message, so the
    /// flow record shows it.
    pub(crate) fn note_failure(&self, failure: &mut PluginFailure) {
        self.health.failures.fetch_add(1, Ordering::Relaxed);
        tracing::warn!("{failure}");
        if !is_crash(failure.kind) {
            return;
        }
        let transition = self.health.update(|b| b.crash(Instant::now()));
        if let Some(t) = transition {
            self.log_transition(t);
            failure.message = format!("{}; {t}", failure.message);
        }
    }

    fn note_success(&self) {
        let transition = self.health.success();
        if let Some(t) = transition {
            self.log_transition(t);
        }
    }

    /// Runs one hook call on `live` with a fresh deadline, fuel and log budget, the call
    /// `started` then (the caller's clock read, which also admitted it: a read costs as
    /// much as a tenth of an empty hook call). On failure the instance must not be used again.
    pub(crate) async fn invoke<R>(
        &self,
        live: &mut LiveInstance,
        hook: Hook,
        flow_id: Option<flowgate_flow::Uuid>,
        mut started: Instant,
        call: impl AsyncFnOnce(&mut Store<StoreState>, &LiveGroups) -> wasmtime::Result<R>,
    ) -> Result<(R, CallReport), PluginFailure> {
        self.health.calls.fetch_add(1, Ordering::Relaxed);
        let limits = &self.shared.manifest.limits;
        // The deadline and the first poll's CPU time start when the call did.
        let state = &mut live.store.data_mut().call;
        *state = CallState::new(hook, started + limits.hook_timeout, flow_id);
        state.outbound_left = limits.outbound_timeout;
        live.store.data().stderr.clear();
        live.store.set_epoch_deadline(1);
        if let Some(fuel) = limits.fuel {
            live.store.set_fuel(fuel).map_err(|e| self.failure(hook, FailureKind::Trap, &e))?;
        }
        let LiveInstance { store, groups, .. } = live;
        // CPU time is the time the call's future spends being polled (guest code and the
        // host functions it calls), charged at every return to the executor: at least once
        // per epoch tick, when the epoch callback yields.
        let cpu = &self.shared.cpu;
        let result = {
            let mut running = std::pin::pin!(call(store, groups));
            let mut first = true;
            std::future::poll_fn(|cx| {
                if !std::mem::take(&mut first) {
                    started = Instant::now();
                }
                let poll = running.as_mut().poll(cx);
                let now = Instant::now();
                cpu.charge(now - started, now);
                poll
            })
            .await
        };
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
                let mut failure = self.classify(hook, live, &error);
                self.note_failure(&mut failure);
                Err(failure)
            }
        }
    }

    /// Records an output the host refused, as a failure of the plugin.
    pub(crate) fn invalid_output(&self, hook: Hook, message: String) -> PluginFailure {
        let mut failure =
            PluginFailure { plugin: self.name().to_owned(), hook, kind: FailureKind::InvalidOutput, message };
        self.note_failure(&mut failure);
        failure
    }

    /// Runs `configure` on a fresh instance.
    pub(crate) async fn configure(&self) -> Result<(), String> {
        let mut live = self.instantiate().await.map_err(|f| f.to_string())?;
        let (result, _) = self
            .invoke(&mut live, Hook::Configure, None, Instant::now(), async |store, groups| match &groups.lifecycle {
                Some(g) => g.call_configure(store).await,
                None => Ok(Ok(())),
            })
            .await
            .map_err(|f| f.to_string())?;
        result
    }

    /// Asks the `hook-list` export which hooks the plugin implements (on `live`, under
    /// the plugin's limits); `Ok(None)` if it has no such export.
    pub(crate) async fn implemented_hooks(&self, live: &mut LiveInstance) -> Result<Option<Vec<String>>, String> {
        if live.groups.hook_list.is_none() {
            return Ok(None);
        }
        let (names, _) = self
            .invoke(live, Hook::Configure, None, Instant::now(), async |store, groups| match &groups.hook_list {
                Some(g) => g.call_implemented(store).await,
                None => Ok(Vec::new()),
            })
            .await
            .map_err(|f| format!("hook-list: {}", f.message))?;
        // The load's own question, not a hook call the plugin's counters count.
        self.health.calls.fetch_sub(1, Ordering::Relaxed);
        Ok(Some(names))
    }

    /// Runs `running` or `done`, if the plugin exports the lifecycle group.
    pub(crate) async fn lifecycle(&self, hook: Hook) -> Result<(), PluginFailure> {
        if self.groups.lifecycle.is_none() {
            return Ok(());
        }
        let _permit = self.admit(hook, Instant::now())?;
        let mut live = self.instantiate().await?;
        self.invoke(&mut live, hook, None, Instant::now(), async |store, groups| match &groups.lifecycle {
            Some(g) if hook == Hook::Running => g.call_running(store).await,
            Some(g) => g.call_done(store).await,
            None => Ok(()),
        })
        .await
        .map(drop)
    }
}

#[cfg(test)]
mod tests {
    use super::{HookSet, MAX_HOOK_NAMES};
    use flowgate_flow::Hook;

    #[test]
    fn a_hook_list_export_is_read_within_bounds() {
        let names = |v: &[&str]| v.iter().map(|s| (*s).to_owned()).collect::<Vec<_>>();
        let (set, unknown) = HookSet::from_export(&names(&["request-headers", "response", "teleport"]));
        assert!(set.contains(Hook::RequestHeaders) && set.contains(Hook::Response));
        assert!(!set.contains(Hook::Request) && !set.contains(Hook::WebsocketMessage));
        assert_eq!(unknown, ["teleport"]);
        assert_eq!(HookSet::from_export(&[]).0, HookSet::of(Vec::new()), "an empty list: nothing is called");

        // A hostile list: only the first names are read, unknown ones kept short and few.
        let mut long = vec!["x".repeat(10_000); 1000];
        long.push("request".to_owned());
        let (set, unknown) = HookSet::from_export(&long);
        assert!(!set.contains(Hook::Request), "past the first {MAX_HOOK_NAMES} names");
        assert_eq!(unknown.len(), 8);
        assert!(unknown.iter().all(|n| n.len() == 64));
        let every: Vec<String> = Hook::ALL.iter().map(|h| h.name().to_owned()).collect();
        assert_eq!(HookSet::from_export(&every).0, HookSet::of(Hook::ALL));
    }
}
