//! The plugin manifest: `plugin.toml` beside the `.wasm`, with safe defaults for a bare `.wasm`.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use flowgate_flow::egress::AllowList;
use serde::Deserialize;

/// How instances of a plugin are created and reused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum InstanceModel {
    /// A fresh instance for every flow, dropped when the flow ends: no state leaks
    /// from one flow to the next (strongest isolation).
    PerFlow,
    /// One instance per client connection, shared by that connection's flows.
    PerConnection,
    /// A pool of instances reused across flows (needed by interpreted languages whose
    /// runtimes are slow to start). An instance that trapped is never reused.
    Pooled,
}

impl InstanceModel {
    /// The default, chosen by measurement (see host/ARCHITECTURE.md): a fresh instance
    /// costs ~60 µs per flow for a Rust plugin, a reused one ~3 µs per hook.
    pub const DEFAULT: InstanceModel = InstanceModel::Pooled;

    /// The name used in manifests.
    pub fn name(self) -> &'static str {
        match self {
            InstanceModel::PerFlow => "per-flow",
            InstanceModel::PerConnection => "per-connection",
            InstanceModel::Pooled => "pooled",
        }
    }
}

/// What happens to a flow when a plugin fails in one of its hooks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum FailurePolicy {
    /// Skip the plugin for the rest of the flow; the flow goes on.
    FailOpen,
    /// The flow ends with an error (HTTP: 502 to the client).
    FailClosed,
}

/// Limits applied to one plugin. Every field is a documented setting with a default.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Limits {
    /// Linear memory one instance may use (`memory`, default 64 MiB).
    pub memory_bytes: usize,
    /// Wall-clock time one hook call may take (`hook_timeout_ms`, default 100 ms).
    pub hook_timeout: Duration,
    /// Wall-clock time creating one instance may take (`instantiate_timeout_ms`, default
    /// 1000 ms). Apart from the hook deadline because an interpreted plugin's runtime
    /// (CPython, SpiderMonkey) starts in about a millisecond alone but far slower when a
    /// burst of flows instantiates at once on a busy machine.
    pub instantiate_timeout: Duration,
    /// Fuel per hook call (`fuel`, default none); needs fuel enabled in the runtime.
    pub fuel: Option<u64>,
    /// Log bytes one hook call may write (`max_log_bytes`, default 64 KiB);
    /// the rest is dropped and counted.
    pub max_log_bytes: usize,
    /// Bytes of key-value state and flow metadata (`max_state_bytes`, default 1 MiB).
    pub max_state_bytes: usize,
    /// Largest body buffered for this plugin (`max_body_bytes`, default 16 MiB).
    pub max_body_bytes: usize,
    /// Consecutive crashes (traps, memory, invalid output, failed instantiation) that open
    /// the plugin's circuit breaker (`crash_budget`, default 5). Deadlines, fuel and the CPU
    /// budget do not count: whoever can make a plugin spin must not switch it off.
    pub crash_budget: u32,
    /// How long the breaker stays open before one trial call (`breaker_backoff`, default
    /// 1s); doubled each time the trial fails, reset when one succeeds.
    pub breaker_backoff: Duration,
    /// The most the back-off doubles to (`breaker_backoff_max`, default 60s).
    pub breaker_backoff_max: Duration,
    /// Calls of this plugin in progress at once (`max_concurrent_calls`, default 64); past
    /// it a call fails at once by the failure policy.
    pub max_concurrent_calls: u32,
    /// CPU time the plugin's calls may use per second (`cpu_per_second`, default 250ms, a
    /// quarter of a core); past it calls fail at once by the failure policy, and a call in
    /// progress is interrupted.
    pub cpu_per_second: Duration,
    /// Instances kept warm by the `pooled` model (`pool_size`, default 128: above the 100
    /// concurrent streams one HTTP/2 connection may run, as a smaller pool makes most of
    /// those flows instantiate afresh; measured: h2 with 100 streams, request-id on every
    /// hook, 16 -> 128 gave +8% requests/s and a lower peak RSS, 39 instead of 57 MiB).
    pub pool_size: usize,
    /// How much an instance's linear memory may grow beyond its size after instantiation
    /// and still go back to the pool (`pooled_memory_growth`, default 16 MiB): one that
    /// grew more (a large body, a leak) is dropped, so its pages go back to the system
    /// instead of staying resident in an idle instance.
    pub pooled_memory_growth: usize,
    /// How long one hook call may wait on outbound HTTP, all its calls together
    /// (`outbound_timeout`, default 5 s): each call's deadline is what is left of it. The
    /// wait is not charged to `hook_timeout_ms`, which bounds the plugin's own running.
    pub outbound_timeout: Duration,
    /// Largest response body one outbound HTTP call may receive
    /// (`outbound_max_response_bytes`, default 1 MiB); a larger one fails the call.
    pub outbound_max_response_bytes: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            memory_bytes: 64 << 20,
            hook_timeout: Duration::from_millis(100),
            instantiate_timeout: Duration::from_millis(1000),
            fuel: None,
            max_log_bytes: 64 << 10,
            max_state_bytes: 1 << 20,
            max_body_bytes: 16 << 20,
            crash_budget: 5,
            breaker_backoff: Duration::from_secs(1),
            breaker_backoff_max: Duration::from_secs(60),
            max_concurrent_calls: 64,
            cpu_per_second: Duration::from_millis(250),
            pool_size: 128,
            pooled_memory_growth: 16 << 20,
            outbound_timeout: Duration::from_secs(5),
            outbound_max_response_bytes: 1 << 20,
        }
    }
}

/// What a plugin is granted beyond the always-available host imports.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Capabilities {
    /// Hosts outbound HTTP may reach (`allowed_outbound_hosts`, Spin's name; default
    /// none). Patterns and the address rules: [`flowgate_flow::egress`].
    pub allowed_outbound_hosts: AllowList,
    /// Hosts the plugin may reroute a flow to by changing its request's scheme, host or
    /// port (`allowed_upstream_hosts`, default none: path, query and header fields stay
    /// free to change, the destination does not). Same patterns and address rules.
    pub allowed_upstream_hosts: AllowList,
    /// Environment variables passed through (names; values come from flowgate's environment).
    pub env: Vec<String>,
    /// Whether the plugin's stdout and stderr go to flowgate's log (otherwise discarded).
    pub stdio: bool,
}

/// A parsed, validated manifest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Manifest {
    /// The plugin's name, used in logs and flow records.
    pub name: String,
    /// The plugin's version.
    pub version: String,
    /// Position in the chain: lower runs first; ties keep load order.
    pub order: i32,
    /// The component file.
    pub wasm: PathBuf,
    /// Instance model.
    pub instance: InstanceModel,
    /// Failure policy.
    pub failure: FailurePolicy,
    /// Limits.
    pub limits: Limits,
    /// Capabilities.
    pub capabilities: Capabilities,
    /// The `[config]` table, given to the plugin through the `config` import.
    pub config: BTreeMap<String, String>,
    /// `filter`: the flows the plugin is called for (mitmproxy's filter language, e.g.
    /// `~d api.example.com & ~m POST`); `None` calls it for every flow. Flow hooks only:
    /// connection, TLS and lifecycle hooks are not a flow's.
    pub filter: Option<flowgate_filter::Filter>,
    /// `hooks`: the hooks the plugin implements, by WIT name (`["request-headers"]`); the
    /// host calls no other. `None` leaves it to the component's `hook-list` export, and
    /// without that every hook of its exported groups is called. For plugins whose
    /// language has no SDK macro to say it (JavaScript, Python, C).
    pub hooks: Option<Vec<flowgate_flow::Hook>>,
}

/// Why a manifest was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct ManifestError(String);

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawManifest {
    name: Option<String>,
    version: Option<String>,
    order: Option<i32>,
    wasm: Option<PathBuf>,
    instance: Option<InstanceModel>,
    failure: Option<FailurePolicy>,
    #[serde(default)]
    limits: RawLimits,
    #[serde(default)]
    capabilities: RawCapabilities,
    #[serde(default)]
    config: BTreeMap<String, toml::Value>,
    filter: Option<String>,
    hooks: Option<Vec<String>>,
    /// How `flowgate plugin build` makes the `.wasm`; the runtime reads only its keys'
    /// names (a key meant for the manifest, written below `[build]`, is refused here
    /// rather than silently dropped).
    #[serde(default)]
    build: Option<toml::Table>,
}

/// The keys of `[build]` (the flowgate binary's `BuildSection`).
pub const BUILD_KEYS: [&str; 5] = ["lang", "source", "world", "wit", "command"];

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawLimits {
    memory: Option<ByteSize>,
    hook_timeout_ms: Option<u64>,
    instantiate_timeout_ms: Option<u64>,
    fuel: Option<u64>,
    max_log_bytes: Option<ByteSize>,
    max_state_bytes: Option<ByteSize>,
    max_body_bytes: Option<ByteSize>,
    crash_budget: Option<u32>,
    breaker_backoff: Option<DurationText>,
    breaker_backoff_max: Option<DurationText>,
    max_concurrent_calls: Option<u32>,
    cpu_per_second: Option<DurationText>,
    pool_size: Option<usize>,
    pooled_memory_growth: Option<ByteSize>,
    outbound_timeout: Option<DurationText>,
    outbound_max_response_bytes: Option<ByteSize>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawCapabilities {
    #[serde(default)]
    allowed_outbound_hosts: Vec<String>,
    #[serde(default)]
    allowed_upstream_hosts: Vec<String>,
    #[serde(default)]
    env: Vec<String>,
    #[serde(default)]
    stdio: bool,
}

/// A size: an integer number of bytes or a string like `"16MiB"`.
#[derive(Debug, Clone, Copy)]
struct ByteSize(usize);

impl<'de> Deserialize<'de> for ByteSize {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            Int(u64),
            Text(String),
        }
        match Raw::deserialize(d)? {
            Raw::Int(n) => usize::try_from(n).map(ByteSize).map_err(serde::de::Error::custom),
            Raw::Text(s) => parse_size(&s).map(ByteSize).map_err(serde::de::Error::custom),
        }
    }
}

/// A duration: a string like `"500ms"` or `"5s"` (see [`parse_duration`]).
#[derive(Debug, Clone, Copy)]
struct DurationText(Duration);

impl<'de> Deserialize<'de> for DurationText {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        parse_duration(&text).map(DurationText).map_err(serde::de::Error::custom)
    }
}

/// A duration as options and manifests write it: a number with a unit (`500ms`, `2s`,
/// `5m`, `1h`), or a bare number of seconds (`30`, `0.5`).
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    let split = text.find(|c: char| !(c.is_ascii_digit() || c == '.')).unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let number: f64 = number.parse().map_err(|_| format!("{text:?} is not a duration (e.g. 500ms, 2s, 5m)"))?;
    let seconds = match unit.trim() {
        "" | "s" => number,
        "ms" => number / 1000.0,
        "us" | "µs" => number / 1e6,
        "m" | "min" => number * 60.0,
        "h" => number * 3600.0,
        other => return Err(format!("unknown unit {other:?} in {text:?} (use us, ms, s, m or h)")),
    };
    Duration::try_from_secs_f64(seconds).map_err(|e| format!("{text:?}: {e}"))
}

/// Parses `"512"`, `"64KiB"`, `"16MiB"`, `"1GiB"` (also `KB`, `MB`, `GB` as powers of 1024).
pub fn parse_size(text: &str) -> Result<usize, String> {
    let text = text.trim();
    let split = text.find(|c: char| !c.is_ascii_digit()).unwrap_or(text.len());
    let (digits, unit) = text.split_at(split);
    let n: usize = digits.parse().map_err(|_| format!("invalid size {text:?}"))?;
    let shift = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 0,
        "k" | "kb" | "kib" => 10,
        "m" | "mb" | "mib" => 20,
        "g" | "gb" | "gib" => 30,
        _ => return Err(format!("invalid size unit in {text:?} (use B, KiB, MiB or GiB)")),
    };
    n.checked_mul(1 << shift).ok_or_else(|| format!("size {text:?} is too large"))
}

/// The largest memory cap a manifest may ask for; the pooling allocator reserves this much.
pub const MAX_MEMORY_BYTES: usize = 1 << 30;

impl Manifest {
    /// The manifest a bare `.wasm` gets: its file stem as name and safe defaults.
    pub fn for_bare_wasm(wasm: &Path) -> Manifest {
        let name =
            wasm.file_stem().map(|s| s.to_string_lossy().replace('_', "-")).unwrap_or_else(|| "plugin".to_owned());
        Manifest {
            name,
            version: "0.0.0".to_owned(),
            order: 0,
            wasm: wasm.to_owned(),
            instance: InstanceModel::DEFAULT,
            failure: FailurePolicy::FailOpen,
            limits: Limits::default(),
            capabilities: Capabilities::default(),
            config: BTreeMap::new(),
            filter: None,
            hooks: None,
        }
    }

    /// Parses a manifest's text; `path` is the manifest file, used to find the `.wasm`.
    pub fn parse(text: &str, path: &Path) -> Result<Manifest, ManifestError> {
        let raw: RawManifest = toml::from_str(text).map_err(|e| ManifestError(e.to_string().trim_end().to_owned()))?;
        let dir = path.parent().unwrap_or(Path::new("."));
        let wasm = match raw.wasm {
            Some(w) if w.is_absolute() => w,
            Some(w) => dir.join(w),
            None => {
                let name = raw.name.as_deref().unwrap_or("plugin").replace('-', "_");
                dir.join(format!("{name}.wasm"))
            }
        };
        let mut manifest = Manifest::for_bare_wasm(&wasm);
        if let Some(name) = raw.name {
            if name.is_empty() || !name.chars().all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c)) {
                return Err(ManifestError(format!("invalid name {name:?}: use letters, digits, '-', '_' and '.'")));
            }
            manifest.name = name;
        }
        if let Some(version) = raw.version {
            manifest.version = version;
        }
        if let Some(key) = raw.build.iter().flat_map(|t| t.keys()).find(|k| !BUILD_KEYS.contains(&k.as_str())) {
            return Err(ManifestError(format!(
                "unknown field `{key}` in [build], expected one of {} (a table lasts to the next one: \
                 manifest keys go above the first table)",
                BUILD_KEYS.map(|k| format!("`{k}`")).join(", ")
            )));
        }
        manifest.order = raw.order.unwrap_or(0);
        if let Some(text) = raw.filter {
            let filter = flowgate_filter::Filter::parse(&text).map_err(|e| ManifestError(format!("filter: {e}")))?;
            manifest.filter = Some(filter);
        }
        if let Some(names) = raw.hooks {
            let mut hooks = Vec::new();
            for name in &names {
                let hook = flowgate_flow::Hook::from_name(name).ok_or_else(|| {
                    ManifestError(format!(
                        "hooks: unknown hook {name:?} (WIT names, e.g. \"request-headers\", \"response\", \"websocket-message\")"
                    ))
                })?;
                hooks.push(hook);
            }
            manifest.hooks = Some(hooks);
        }
        manifest.instance = raw.instance.unwrap_or(InstanceModel::DEFAULT);
        manifest.failure = raw.failure.unwrap_or(FailurePolicy::FailOpen);
        let l = &mut manifest.limits;
        if let Some(ByteSize(m)) = raw.limits.memory {
            if !(64 << 10..=MAX_MEMORY_BYTES).contains(&m) {
                return Err(ManifestError(format!("limits.memory must be between 64KiB and 1GiB, got {m} bytes")));
            }
            l.memory_bytes = m;
        }
        if let Some(ms) = raw.limits.hook_timeout_ms {
            if !(1..=60_000).contains(&ms) {
                return Err(ManifestError(format!("limits.hook_timeout_ms must be between 1 and 60000, got {ms}")));
            }
            l.hook_timeout = Duration::from_millis(ms);
        }
        if let Some(ms) = raw.limits.instantiate_timeout_ms {
            if !(1..=60_000).contains(&ms) {
                return Err(ManifestError(format!(
                    "limits.instantiate_timeout_ms must be between 1 and 60000, got {ms}"
                )));
            }
            l.instantiate_timeout = Duration::from_millis(ms);
        }
        l.fuel = raw.limits.fuel;
        if let Some(ByteSize(n)) = raw.limits.max_log_bytes {
            l.max_log_bytes = n;
        }
        if let Some(ByteSize(n)) = raw.limits.max_state_bytes {
            l.max_state_bytes = n;
        }
        if let Some(ByteSize(n)) = raw.limits.max_body_bytes {
            l.max_body_bytes = n;
        }
        if let Some(n) = raw.limits.crash_budget {
            if n == 0 {
                return Err(ManifestError("limits.crash_budget must be at least 1".to_owned()));
            }
            l.crash_budget = n;
        }
        if let Some(DurationText(d)) = raw.limits.breaker_backoff {
            if d < Duration::from_millis(1) {
                return Err(ManifestError(format!("limits.breaker_backoff must be at least 1ms, got {d:?}")));
            }
            l.breaker_backoff = d;
        }
        if let Some(DurationText(d)) = raw.limits.breaker_backoff_max {
            l.breaker_backoff_max = d;
        }
        if l.breaker_backoff_max < l.breaker_backoff {
            return Err(ManifestError(format!(
                "limits.breaker_backoff_max ({:?}) is below limits.breaker_backoff ({:?})",
                l.breaker_backoff_max, l.breaker_backoff
            )));
        }
        if let Some(n) = raw.limits.max_concurrent_calls {
            if n == 0 {
                return Err(ManifestError("limits.max_concurrent_calls must be at least 1".to_owned()));
            }
            l.max_concurrent_calls = n;
        }
        if let Some(DurationText(d)) = raw.limits.cpu_per_second {
            if !(Duration::from_millis(1)..=Duration::from_secs(1024)).contains(&d) {
                return Err(ManifestError(format!("limits.cpu_per_second must be between 1ms and 1024s, got {d:?}")));
            }
            l.cpu_per_second = d;
        }
        if let Some(n) = raw.limits.pool_size {
            l.pool_size = n;
        }
        if let Some(ByteSize(n)) = raw.limits.pooled_memory_growth {
            l.pooled_memory_growth = n;
        }
        if let Some(DurationText(t)) = raw.limits.outbound_timeout {
            if t.is_zero() || t > Duration::from_secs(300) {
                return Err(ManifestError(format!("limits.outbound_timeout must be between 1ms and 5m, got {t:?}")));
            }
            l.outbound_timeout = t;
        }
        if let Some(ByteSize(n)) = raw.limits.outbound_max_response_bytes {
            l.outbound_max_response_bytes = n;
        }
        let list = |name: &str, entries: &[String]| {
            AllowList::parse(entries).map_err(|e| ManifestError(format!("capabilities.{name}: {e}")))
        };
        manifest.capabilities = Capabilities {
            allowed_outbound_hosts: list("allowed_outbound_hosts", &raw.capabilities.allowed_outbound_hosts)?,
            allowed_upstream_hosts: list("allowed_upstream_hosts", &raw.capabilities.allowed_upstream_hosts)?,
            env: raw.capabilities.env,
            stdio: raw.capabilities.stdio,
        };
        for (key, value) in raw.config {
            let text = match value {
                toml::Value::String(s) => s,
                toml::Value::Integer(_) | toml::Value::Float(_) | toml::Value::Boolean(_) => value.to_string(),
                other => {
                    return Err(ManifestError(format!(
                        "config.{key}: values must be strings, numbers or booleans, got {}",
                        other.type_str()
                    )));
                }
            };
            manifest.config.insert(key, text);
        }
        Ok(manifest)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Manifest, ManifestError> {
        Manifest::parse(text, Path::new("/p/plugin.toml"))
    }

    #[test]
    fn full_manifest() {
        let m = parse(
            r#"
            name = "add-header"
            version = "1.2.3"
            order = -5
            instance = "pooled"
            failure = "fail-closed"
            [limits]
            memory = "8MiB"
            hook_timeout_ms = 20
            instantiate_timeout_ms = 300
            fuel = 1000000
            crash_budget = 3
            outbound_timeout = "1500ms"
            outbound_max_response_bytes = "64KiB"
            pooled_memory_growth = "2MiB"
            breaker_backoff = "100ms"
            breaker_backoff_max = "1.5s"
            max_concurrent_calls = 4
            cpu_per_second = "20ms"
            [capabilities]
            env = ["HOME"]
            allowed_upstream_hosts = ["*.example.com", "10.0.0.5"]
            [config]
            header = "x-a: b"
            count = 3
            "#,
        )
        .expect("valid manifest");
        assert_eq!(m.wasm, PathBuf::from("/p/add_header.wasm"));
        assert_eq!((m.order, m.instance, m.failure), (-5, InstanceModel::Pooled, FailurePolicy::FailClosed));
        assert_eq!(m.limits.memory_bytes, 8 << 20);
        assert_eq!(m.limits.hook_timeout, Duration::from_millis(20));
        assert_eq!(m.limits.instantiate_timeout, Duration::from_millis(300));
        assert_eq!(m.limits.fuel, Some(1_000_000));
        assert_eq!(m.limits.outbound_timeout, Duration::from_millis(1500));
        assert_eq!(m.limits.outbound_max_response_bytes, 64 << 10);
        assert_eq!(m.limits.pooled_memory_growth, 2 << 20);
        assert!(m.capabilities.allowed_upstream_hosts.allows_host("a.example.com"));
        assert!(m.capabilities.allowed_outbound_hosts.is_empty());
        assert_eq!(m.limits.breaker_backoff, Duration::from_millis(100));
        assert_eq!(m.limits.breaker_backoff_max, Duration::from_millis(1500));
        assert_eq!(m.limits.max_concurrent_calls, 4);
        assert_eq!(m.limits.cpu_per_second, Duration::from_millis(20));
        assert_eq!(m.config.get("count").map(String::as_str), Some("3"));
    }

    #[test]
    fn bad_manifests_say_what_is_wrong() {
        let e = parse("nmae = \"x\"").expect_err("unknown key");
        assert!(e.0.contains("unknown field `nmae`"), "{e}");
        // A manifest key written below [build] lands in it: refused, not dropped.
        let e = parse("[build]\nlang = \"rust\"\nfilter = \"~m POST\"").expect_err("not a build key");
        assert!(e.0.contains("unknown field `filter` in [build], expected one of `lang`"), "{e}");
        parse("[build]\nlang = \"c\"\nsource = [\"a.c\"]\nworld = \"w\"\nwit = \"wit\"\ncommand = \"make\"")
            .expect("every build key");
        let e = parse("[limits]\nmemory = \"10XB\"").expect_err("bad unit");
        assert!(e.0.contains("invalid size unit"), "{e}");
        let e = parse("[limits]\nmemory = \"4GiB\"").expect_err("too big");
        assert!(e.0.contains("limits.memory"), "{e}");
        let e = parse("instance = \"sometimes\"").expect_err("bad model");
        assert!(e.0.contains("unknown variant"), "{e}");
        let e = parse("[limits]\ncpu_per_second = \"20 parsecs\"").expect_err("bad unit");
        assert!(e.0.contains("unknown unit"), "{e}");
        let e = parse("[limits]\nbreaker_backoff = \"2s\"\nbreaker_backoff_max = \"1s\"").expect_err("max < backoff");
        assert!(e.0.contains("breaker_backoff_max"), "{e}");
        let e = parse("[config]\nx = [1]").expect_err("array config");
        assert!(e.0.contains("config.x"), "{e}");
        let e = parse("[capabilities]\nallowed_upstream_hosts = [\"http://x\"]").expect_err("bad pattern");
        assert!(e.0.contains("capabilities.allowed_upstream_hosts"), "{e}");
        let e = parse("[limits]\noutbound_timeout = \"5 parsecs\"").expect_err("bad unit");
        assert!(e.0.contains("unknown unit"), "{e}");
    }
}
