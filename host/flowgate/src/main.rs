//! The `flowgate` command: runs the proxy with mitmdump's flags, `flowgate ca` for the
//! certificate authority and `flowgate plugin new|build|test` for plugin authors.

mod dump;
mod export;
mod flows;
mod output;
mod plugin_build;
mod plugin_flows;
mod plugin_new;
mod plugin_test;
mod reload;
mod replay;
mod save;

use std::io::Write;
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::{Context, bail};
use clap::{Parser, Subcommand};
use flowgate_ca::CertificateAuthority;
use flowgate_filter::Filter;
use flowgate_net::{FlowRecord, FlowSink, Mode, Proxy, ProxyOptions, TlsVersion};
use flowgate_runtime::{Chain, Runtime, RuntimeConfig};

/// mimalloc rather than glibc's malloc: a proxied request makes some 70 allocations (100
/// with a plugin on every hook), and glibc's consolidates its fast bins on most requests;
/// see host/ARCHITECTURE.md, "Measured against the targets".
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// The `--set` options, with their defaults (durations take units: 500ms, 2s, 5m).
const OPTIONS_HELP: &str = "Options for --set KEY=VALUE (default in brackets):
  ignore_hosts=REGEX               pass TLS to matching host:port (SNI or CONNECT host) through []
  allow_hosts=REGEX                intercept only matching hosts, pass the rest through []
  body_size_limit=SIZE             largest body buffered for plugins [16MiB]
  stream_large_bodies=SIZE         bodies larger than this stream untouched []
  buffer_memory_limit=SIZE         all buffered bodies together; past it a flow gets 503 [512MiB]
  max_headers=N                    most header fields in a head (heads also ≤ 64 KiB) [500]
  header_read_timeout=DURATION     for a request head, a stream's first bytes, a TLS handshake [30s]
  body_read_timeout=DURATION       between pieces of a request body [60s]
  send_timeout=DURATION            a client that reads none of its response for this long is cut off [60s]
  upstream_timeout=DURATION        upstream stalls: response head, response body, taking the request (504) [60s]
  max_connections=N                client connections at once; more are closed on accept [10000]
  max_handshakes=N                 client TLS handshakes in progress at once; more wait [256]
  connect_timeout=DURATION         to connect (and TLS-handshake) to an upstream [10s]
  rawtcp=BOOL                      relay unrecognised bytes in tunnels as raw TCP flows [true]
  server_first_timeout=DURATION    wait in a tunnel for the client before the server may speak first [1s]
  tcp_timeout=DURATION             idle raw TCP and passed-through TLS flows are closed [600s]
  websocket=BOOL                   relay WebSocket upgrades (off: the Upgrade field is not forwarded) [true]
  websocket_max_message_size=SIZE  largest WebSocket message (inflated); a larger one closes with 1009 [16MiB]
  websocket_max_frame_size=SIZE    largest WebSocket frame; refused from its header with 1009 [16MiB]
  websocket_queue_size=SIZE        bytes queued toward one side; a slow reader holds its sender back [1MiB]
  websocket_idle_timeout=DURATION  a WebSocket with no frame either way for this long is closed [600s]
  http2=BOOL                       speak HTTP/2 [true]
  http2_max_concurrent_streams=N   [100]
  http2_max_header_list_size=SIZE  [64KiB]
  http2_header_table_size=SIZE     [4KiB]
  http2_max_reset_streams=N        [20]
  http2_max_error_reset_streams=N  [1024]
  http2_ping_keepalive=DURATION    PING an idle HTTP/2 connection, close it if unanswered; 0 off [58s]
  http2_idle_timeout=DURATION      close a client's HTTP/2 connection without streams; 0 off [300s]
  share_upstream=BOOL              client connections share HTTP/2 upstream connections where they cannot
                                   tell (no server-connect/-connected/-disconnected plugin, no client_certs) [true]
  ssl_insecure=BOOL                as -k [false]
  ssl_verify_upstream_trusted_ca=PEM  also trust these CAs (or self-signed servers) upstream, beside the OS store and webpki roots []
  certs=[DOMAIN=]PEM               serve this certificate (and key) for DOMAIN (*, *.x.com) instead of minting; as --certs []
  client_certs=PEM|DIR             client certificate (and key) for upstreams that ask; a DIR holds HOST.pem files []
  tls_version_client_min=VERSION   TLS1_2, TLS1_3 or UNBOUNDED, toward clients [TLS1_2]
  tls_version_client_max=VERSION   [UNBOUNDED]
  tls_version_server_min=VERSION   toward upstreams [TLS1_2]
  tls_version_server_max=VERSION   [UNBOUNDED]
  save_stream_file=[+]FILE         as -w []
  save_stream_filter=FILTER        save only the flows this filter matches []
  store_streamed_bodies=BOOL       keep bodies streamed past stream_large_bodies in the flow file [false]
  rfile=FILE                       as -r []
  readfile_filter=FILTER           read only the flows this filter matches []
  hardump=FILE                     write the HTTP flows as HAR 1.2 on exit (- for stdout) []
  flow_detail=0..4                 as --flow-detail [1]
  keepserving=BOOL                 go on after -r, after client replay, after server replay ran out [false]
  client_replay=FILE               as -C; repeatable []
  client_replay_concurrency=N      requests client replay has in flight; -1 unlimited [1]
  server_replay=FILE               as -S; repeatable []
  server_replay_extra=WHAT         a request no saved one matches: forward, kill, 204, 400, 404 or 500 [forward]
  server_replay_reuse=BOOL         a saved response answers every match, not only the first [false]
  server_replay_refresh=BOOL       move Date, Expires, Last-Modified and cookie expiry to now [true]
  server_replay_ignore_content=BOOL  match without the request body [false]
  server_replay_ignore_host=BOOL   match without the host [false]
  server_replay_ignore_port=BOOL   match without the port [false]
  server_replay_ignore_params=NAME query parameter that plays no part in matching; repeatable []
  server_replay_ignore_payload_params=NAME  form field that plays no part in matching; repeatable []
  server_replay_use_headers=NAME   request header field that must match too; repeatable []
  plugin_fuel=BOOL                 enable fuel metering for limits.fuel [false]
  plugin_max_instances=N           [1000]
  plugin_cache_dir=DIR             compiled components; empty turns the cache off [CONFDIR/cache]
  PLUGIN.KEY=VALUE                 a plugin's [config] value";

/// An intercepting proxy whose addons are sandboxed WebAssembly components.
#[derive(Parser, Debug)]
#[command(name = "flowgate", version, about, after_help = OPTIONS_HELP)]
struct Cli {
    /// Proxy mode, repeatable: regular, reverse:URL, upstream:URL; add @PORT to give a
    /// mode its own port.
    #[arg(long = "mode", short = 'm', default_value = "regular")]
    modes: Vec<String>,
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1")]
    listen_host: String,
    /// Port to listen on (0 picks a free one).
    #[arg(long, short = 'p', default_value_t = 8080)]
    listen_port: u16,
    /// A plugin: a .wasm component or its plugin.toml. Repeatable.
    #[arg(long = "plugin", short = 's')]
    plugins: Vec<PathBuf>,
    /// Set an option (KEY=VALUE), or a plugin's config (PLUGIN.KEY=VALUE). Repeatable.
    #[arg(long = "set", global = true)]
    sets: Vec<String>,
    /// Do not verify upstream server certificates.
    #[arg(long = "ssl-insecure", short = 'k')]
    ssl_insecure: bool,
    /// Configuration directory: the CA, the compile cache and config.toml (the --set
    /// options in TOML; --set wins) live here.
    #[arg(long, global = true)]
    confdir: Option<PathBuf>,
    /// Serve this certificate for matching names instead of minting one: `[DOMAIN=]PEM`,
    /// the PEM holding the certificate chain and its key (DOMAIN `*` or `*.example.com`).
    /// Repeatable; the first match wins.
    #[arg(long = "certs")]
    certs: Vec<String>,
    /// Quiet: do not print flows (flow_detail 0).
    #[arg(long, short = 'q')]
    quiet: bool,
    /// Save flows to FILE as they end (`+FILE` appends; strftime patterns such as
    /// `flows-%Y%m%d.fg` open a new file when the name changes).
    #[arg(long = "save-stream-file", short = 'w', value_name = "[+]FILE")]
    save_stream_file: Option<String>,
    /// Read flows from FILE (flowgate's flow file, HAR or mitmproxy's) and print them,
    /// then exit, as mitmdump does, unless --keepserving (then the proxy runs) or a
    /// replay goes on.
    #[arg(long = "rfile", short = 'r', value_name = "FILE")]
    rfile: Option<PathBuf>,
    /// Do not start the proxy: read (-r), filter, print and save flows, then exit.
    #[arg(long = "no-server", short = 'n')]
    no_server: bool,
    /// Keep running after reading (-r; the proxy too unless -n), after client replay,
    /// and after server replay has served every saved response, until interrupted.
    #[arg(long)]
    keepserving: bool,
    /// Client replay: send the requests of the flows in FILE again (through the plugins,
    /// recorded and printed like live ones), then exit unless --keepserving. Repeatable.
    #[arg(long = "client-replay", short = 'C', value_name = "FILE")]
    client_replay: Vec<PathBuf>,
    /// Server replay: answer requests that match a flow in FILE with its saved response
    /// instead of asking the upstream (mitmproxy's matching rules, `server_replay_*`
    /// options); exits once every saved response was served unless --keepserving.
    /// Repeatable.
    #[arg(long = "server-replay", short = 'S', value_name = "FILE")]
    server_replay: Vec<PathBuf>,
    /// How much of each flow is printed: 0 nothing, 1 a line, 2 header fields, 3 bodies
    /// cut at 512 lines, 4 everything [default 1].
    #[arg(long = "flow-detail", value_name = "0..4", value_parser = clap::value_parser!(u8).range(0..=4))]
    flow_detail: Option<u8>,
    /// Only the flows this filter matches are printed, saved (-w, hardump) and read
    /// (-r), as mitmdump's (mitmproxy's filter language, e.g. `~d example.com & ~m
    /// POST`); several words are joined with spaces. save_stream_filter and
    /// readfile_filter, when set, win for what they choose.
    #[arg(value_name = "FILTER")]
    filter: Vec<String>,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// The certificate authority.
    Ca {
        #[command(subcommand)]
        action: CaAction,
    },
    /// Write, build and test plugins.
    Plugin {
        #[command(subcommand)]
        action: PluginAction,
    },
    /// Replay saved flows: `client` sends their requests again (as `-n -C FILE`), `server`
    /// runs the proxy answering from them (as `-S FILE`).
    Replay {
        /// Which side to replay.
        #[arg(value_enum)]
        side: ReplaySide,
        /// The flows: flowgate's flow file, HAR or mitmproxy's.
        file: PathBuf,
        /// Client replay: only the flows this filter matches.
        filter: Vec<String>,
    },
    /// Write flows from a file as curl commands, raw HTTP/1 messages or HAR, to stdout.
    Export {
        /// What to write.
        #[arg(value_enum)]
        format: export::Format,
        /// The flows: flowgate's flow file, HAR or mitmproxy's.
        file: PathBuf,
        /// Only the flows this filter matches.
        filter: Vec<String>,
    },
}

/// The side `flowgate replay` replays.
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
enum ReplaySide {
    /// Send the saved requests again.
    Client,
    /// Answer requests with the saved responses.
    Server,
}

#[derive(Subcommand, Debug)]
enum PluginAction {
    /// Create a plugin project: WIT, plugin.toml with a [build] table, source, a test.
    New {
        /// The project's language.
        #[arg(long, value_enum)]
        lang: plugin_build::Lang,
        /// The plugin's name (also the new directory, unless --dir).
        name: String,
        /// Where to create it (default: ./NAME).
        #[arg(long)]
        dir: Option<PathBuf>,
    },
    /// Build a plugin project into the component its plugin.toml loads, then check that
    /// flowgate loads it (which also fills the compile cache).
    Build {
        /// The project directory or its plugin.toml.
        #[arg(default_value = ".")]
        project: PathBuf,
        /// Build even if the component is newer than every source.
        #[arg(long)]
        force: bool,
    },
    /// Run a plugin offline on an HTTP exchange and print what it changed. Runs the
    /// cases in the project's tests/*.toml, or one exchange from --request/--response
    /// (raw HTTP/1 messages, as captured), or a synthetic GET.
    Test {
        /// The project directory, its plugin.toml, or a .wasm.
        #[arg(default_value = ".")]
        plugin: PathBuf,
        /// A raw HTTP/1 request to run instead of the test cases.
        #[arg(long)]
        request: Option<PathBuf>,
        /// A raw HTTP/1 response the upstream "sends" (default: 200 with a small body).
        #[arg(long)]
        response: Option<PathBuf>,
        /// Test case files (default: the project's tests/*.toml).
        #[arg(long = "case")]
        cases: Vec<PathBuf>,
        /// Run the plugin over every HTTP flow of a recording (flowgate's flow file, HAR
        /// or mitmproxy's) instead, each saved response standing in for the upstream.
        #[arg(long, value_name = "FILE")]
        flows: Option<PathBuf>,
        /// With --flows: write the flows as the plugin left them to OUT (a flow file).
        #[arg(long, value_name = "OUT", requires = "flows")]
        save: Option<PathBuf>,
        /// With --flows: compare the results, flow by flow, with FILE (one --save wrote,
        /// or a recording made through the proxy with the plugin); any difference fails.
        #[arg(long, value_name = "FILE", requires = "flows")]
        expect: Option<PathBuf>,
    },
}

#[derive(Subcommand, Debug)]
enum CaAction {
    /// Print where the CA certificate is (created if missing).
    Path,
    /// Print the CA certificate (PEM; DER with --der; PKCS#12 with --p12) to stdout or --out.
    Export {
        /// DER instead of PEM.
        #[arg(long, conflicts_with = "p12")]
        der: bool,
        /// PKCS#12 (no key, empty password) instead of PEM.
        #[arg(long)]
        p12: bool,
        /// Write to this file instead of stdout.
        #[arg(long)]
        out: Option<PathBuf>,
    },
}

fn confdir(cli: &Cli) -> anyhow::Result<PathBuf> {
    match &cli.confdir {
        // Absolute, because the compile cache refuses a relative directory.
        Some(dir) => std::path::absolute(dir).with_context(|| format!("--confdir {}", dir.display())),
        None => {
            let home = std::env::var_os("HOME").context("HOME is not set: pass --confdir")?;
            Ok(PathBuf::from(home).join(".flowgate"))
        }
    }
}

struct Settings {
    proxy: ProxyOptions,
    runtime: RuntimeConfig,
    /// Plugin config from the command line (PLUGIN, KEY, VALUE).
    plugin_config: Vec<(String, String, String)>,
    /// Plugin config from config.toml: applied to the plugins it names, never an error
    /// for a plugin that is not loaded.
    plugin_config_file: Vec<(String, String, String)>,
    flows: FlowOptions,
    replay: replay::ReplayOptions,
}

/// The options of saving, reading and printing flows.
#[derive(Default)]
struct FlowOptions {
    save: Option<save::Target>,
    save_filter: Option<Filter>,
    read: Option<PathBuf>,
    read_filter: Option<Filter>,
    hardump: Option<PathBuf>,
    detail: Option<u8>,
    keepserving: bool,
}

/// A filter given in an option, with the option's name in its error.
fn filter_option(name: &str, text: &str) -> anyhow::Result<Filter> {
    Filter::parse(text).map_err(|e| anyhow::anyhow!("{name}: {e}"))
}

fn flow_detail(text: &str) -> Result<u8, String> {
    match text.trim().parse::<u8>() {
        Ok(n @ 0..=4) => Ok(n),
        _ => Err(format!("{text:?}: expected 0, 1, 2, 3 or 4")),
    }
}

fn parse_sets(cli: &Cli, confdir: &std::path::Path) -> anyhow::Result<Settings> {
    let mut proxy = ProxyOptions { ssl_insecure: cli.ssl_insecure, ..ProxyOptions::default() };
    let mut runtime = RuntimeConfig { cache_dir: Some(confdir.join("cache")), ..RuntimeConfig::default() };
    let mut plugin_config = Vec::new();
    let mut flows = FlowOptions::default();
    let mut plugin_config_file = Vec::new();
    let mut replay = replay::ReplayOptions { concurrency: Some(1), ..replay::ReplayOptions::default() };
    // The confdir's config.toml first, then --set, which wins.
    let mut sets = config_file_sets(&confdir.join(CONFIG_FILE), &cli.sets)?;
    let from_file = sets.len();
    sets.extend(cli.sets.iter().cloned());
    for (index, set) in sets.iter().enumerate() {
        let (key, value) = set.split_once('=').with_context(|| format!("--set {set:?}: expected KEY=VALUE"))?;
        let bad = |e: &dyn std::fmt::Display| anyhow::anyhow!("--set {key} (or {CONFIG_FILE}): {e}");
        match key {
            "ignore_hosts" => proxy.ignore_hosts = Some(regex::Regex::new(value).map_err(|e| bad(&e))?),
            "allow_hosts" => proxy.allow_hosts = Some(regex::Regex::new(value).map_err(|e| bad(&e))?),
            "body_size_limit" => {
                proxy.body_size_limit = flowgate_runtime::manifest::parse_size(value).map_err(|e| bad(&e))?
            }
            "buffer_memory_limit" => {
                proxy.buffer_memory_limit = flowgate_runtime::manifest::parse_size(value).map_err(|e| bad(&e))?
            }
            "stream_large_bodies" => {
                proxy.stream_large_bodies = Some(flowgate_runtime::manifest::parse_size(value).map_err(|e| bad(&e))?)
            }
            "max_headers" => proxy.max_headers = value.parse().map_err(|e| bad(&e))?,
            "header_read_timeout" => proxy.header_read_timeout = parse_duration(value).map_err(|e| bad(&e))?,
            "body_read_timeout" => proxy.body_read_timeout = parse_duration(value).map_err(|e| bad(&e))?,
            "connect_timeout" => proxy.connect_timeout = parse_duration(value).map_err(|e| bad(&e))?,
            "send_timeout" => proxy.send_timeout = parse_duration(value).map_err(|e| bad(&e))?,
            "upstream_timeout" => proxy.upstream_timeout = parse_duration(value).map_err(|e| bad(&e))?,
            "max_connections" => proxy.max_connections = at_least_one(value).map_err(|e| bad(&e))?,
            "max_handshakes" => proxy.max_handshakes = at_least_one(value).map_err(|e| bad(&e))?,
            "http2_ping_keepalive" => proxy.http2_ping_keepalive = parse_duration(value).map_err(|e| bad(&e))?,
            "http2_idle_timeout" => proxy.http2_idle_timeout = parse_duration(value).map_err(|e| bad(&e))?,
            "server_first_timeout" => proxy.server_first_timeout = parse_duration(value).map_err(|e| bad(&e))?,
            "tcp_timeout" => proxy.tcp_timeout = parse_duration(value).map_err(|e| bad(&e))?,
            "websocket" => proxy.websocket = value.parse().map_err(|e| bad(&e))?,
            "websocket_max_message_size" => {
                proxy.websocket_max_message_size =
                    flowgate_runtime::manifest::parse_size(value).map_err(|e| bad(&e))?.max(125)
            }
            "websocket_max_frame_size" => {
                proxy.websocket_max_frame_size =
                    flowgate_runtime::manifest::parse_size(value).map_err(|e| bad(&e))?.max(125)
            }
            "websocket_queue_size" => {
                proxy.websocket_queue_size = flowgate_runtime::manifest::parse_size(value)
                    .map_err(|e| bad(&e))?
                    .clamp(1 << 10, u32::MAX as usize)
            }
            "websocket_idle_timeout" => proxy.websocket_idle_timeout = parse_duration(value).map_err(|e| bad(&e))?,
            "rawtcp" => proxy.rawtcp = value.parse().map_err(|e| bad(&e))?,
            "ssl_insecure" => proxy.ssl_insecure = value.parse().map_err(|e| bad(&e))?,
            "certs" => proxy.certs.push(flowgate_net::GivenCert::parse(value).map_err(|e| bad(&e))?),
            "client_certs" => proxy.client_certs = Some(flowgate_net::ClientCerts::parse(value).map_err(|e| bad(&e))?),
            "tls_version_client_min" => proxy.tls_version_client_min = TlsVersion::parse(value).map_err(|e| bad(&e))?,
            "tls_version_client_max" => proxy.tls_version_client_max = TlsVersion::parse(value).map_err(|e| bad(&e))?,
            "tls_version_server_min" => proxy.tls_version_server_min = TlsVersion::parse(value).map_err(|e| bad(&e))?,
            "tls_version_server_max" => proxy.tls_version_server_max = TlsVersion::parse(value).map_err(|e| bad(&e))?,
            "ssl_verify_upstream_trusted_ca" => {
                proxy.upstream_trusted_ca =
                    flowgate_net::load_trusted_ca(std::path::Path::new(value)).map_err(|e| bad(&e))?
            }
            "http2" => proxy.http2 = value.parse().map_err(|e| bad(&e))?,
            "share_upstream" => proxy.share_upstream = value.parse().map_err(|e| bad(&e))?,
            "http2_max_concurrent_streams" => {
                proxy.http2_max_concurrent_streams = value.parse().map_err(|e| bad(&e))?
            }
            "http2_max_header_list_size" => {
                let size = flowgate_runtime::manifest::parse_size(value).map_err(|e| bad(&e))?;
                proxy.http2_max_header_list_size = u32::try_from(size).map_err(|e| bad(&e))?
            }
            "http2_header_table_size" => {
                let size = flowgate_runtime::manifest::parse_size(value).map_err(|e| bad(&e))?;
                proxy.http2_header_table_size = u32::try_from(size).map_err(|e| bad(&e))?
            }
            "http2_max_reset_streams" => proxy.http2_max_reset_streams = value.parse().map_err(|e| bad(&e))?,
            "http2_max_error_reset_streams" => {
                proxy.http2_max_error_reset_streams = value.parse().map_err(|e| bad(&e))?
            }
            "save_stream_file" if value.is_empty() => flows.save = None,
            "save_stream_file" => flows.save = Some(save::Target::parse(value).map_err(|e| bad(&e))?),
            "save_stream_filter" => flows.save_filter = Some(filter_option(key, value)?),
            "store_streamed_bodies" => proxy.store_streamed_bodies = value.parse().map_err(|e| bad(&e))?,
            "rfile" => flows.read = Some(PathBuf::from(value)),
            "readfile_filter" => flows.read_filter = Some(filter_option(key, value)?),
            "hardump" => flows.hardump = Some(PathBuf::from(value)),
            "flow_detail" => flows.detail = Some(flow_detail(value).map_err(|e| bad(&e))?),
            "keepserving" => flows.keepserving = value.parse().map_err(|e| bad(&e))?,
            "client_replay" => replay.client.push(PathBuf::from(value)),
            "client_replay_concurrency" => {
                replay.concurrency = match value.trim() {
                    "-1" => None,
                    n => Some(at_least_one(n).map_err(|e| bad(&e))?),
                }
            }
            "server_replay" => replay.server.push(PathBuf::from(value)),
            "server_replay_extra" => {
                replay.server_options.extra = flowgate_net::ReplayExtra::parse(value).map_err(|e| bad(&e))?
            }
            "server_replay_reuse" => replay.server_options.reuse = value.parse().map_err(|e| bad(&e))?,
            "server_replay_refresh" => replay.server_options.refresh = value.parse().map_err(|e| bad(&e))?,
            "server_replay_ignore_content" => {
                replay.server_options.matching.ignore_content = value.parse().map_err(|e| bad(&e))?
            }
            "server_replay_ignore_host" => {
                replay.server_options.matching.ignore_host = value.parse().map_err(|e| bad(&e))?
            }
            "server_replay_ignore_port" => {
                replay.server_options.matching.ignore_port = value.parse().map_err(|e| bad(&e))?
            }
            "server_replay_ignore_params" => replay.server_options.matching.ignore_params.push(value.to_owned()),
            "server_replay_ignore_payload_params" => {
                replay.server_options.matching.ignore_payload_params.push(value.to_owned())
            }
            "server_replay_use_headers" => replay.server_options.matching.use_headers.push(value.to_owned()),
            "plugin_fuel" => runtime.fuel = value.parse().map_err(|e| bad(&e))?,
            "plugin_max_instances" => runtime.max_instances = value.parse().map_err(|e| bad(&e))?,
            "plugin_cache_dir" if value.is_empty() => runtime.cache_dir = None,
            "plugin_cache_dir" => runtime.cache_dir = Some(std::path::absolute(value).map_err(|e| bad(&e))?),
            other => match other.split_once('.') {
                Some((plugin, config_key)) => {
                    let entry = (plugin.to_owned(), config_key.to_owned(), value.to_owned());
                    if index < from_file { plugin_config_file.push(entry) } else { plugin_config.push(entry) }
                }
                None => bail!("--set {other} (or {CONFIG_FILE}): unknown option (known: {})", known_options()),
            },
        }
    }
    for spec in &cli.certs {
        proxy.certs.push(flowgate_net::GivenCert::parse(spec).map_err(|e| anyhow::anyhow!("--certs: {e}"))?);
    }
    flowgate_net::tls_versions(proxy.tls_version_client_min, proxy.tls_version_client_max)
        .map_err(|e| anyhow::anyhow!("tls_version_client_min/max: {e}"))?;
    flowgate_net::tls_versions(proxy.tls_version_server_min, proxy.tls_version_server_max)
        .map_err(|e| anyhow::anyhow!("tls_version_server_min/max: {e}"))?;
    // The flags win over --set, as mitmproxy's do.
    if let Some(text) = &cli.save_stream_file {
        flows.save = Some(save::Target::parse(text).map_err(|e| anyhow::anyhow!("-w {text}: {e}"))?);
    }
    if let Some(path) = &cli.rfile {
        flows.read = Some(path.clone());
    }
    if cli.flow_detail.is_some() {
        flows.detail = cli.flow_detail;
    }
    if cli.quiet {
        flows.detail = Some(0);
    }
    flows.keepserving |= cli.keepserving;
    // The flags replace what --set or config.toml said, as mitmproxy's do.
    if !cli.client_replay.is_empty() {
        replay.client = cli.client_replay.clone();
    }
    if !cli.server_replay.is_empty() {
        replay.server = cli.server_replay.clone();
    }
    if let Some(Command::Replay { side, file, filter }) = &cli.command {
        match side {
            ReplaySide::Client => {
                replay.client.push(file.clone());
                replay.client_filter = words_filter(filter)?;
            }
            ReplaySide::Server => replay.server.push(file.clone()),
        }
    }
    if !proxy.http2 && cli.modes.iter().any(|m| m.starts_with("reverse:h2c://")) {
        bail!("--mode reverse:h2c://... speaks HTTP/2 to the upstream, but --set http2=false turns HTTP/2 off");
    }
    Ok(Settings { proxy, runtime, plugin_config, plugin_config_file, flows, replay })
}

/// The options file in the confdir: the `--set` keys, in TOML.
const CONFIG_FILE: &str = "config.toml";

/// The options of a config file as `--set` would give them: `key = value` for each
/// option (an array gives one `key=item` per item, for options that repeat), and a
/// `[PLUGIN]` table for a plugin's config (`PLUGIN.KEY=VALUE`). Options that `sets` (the
/// command line) names are left out: `--set` wins, also over a repeatable option's list.
fn config_file_sets(path: &std::path::Path, sets: &[String]) -> anyhow::Result<Vec<String>> {
    let text = match std::fs::read_to_string(path) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(anyhow::anyhow!("cannot read {}: {e}", path.display())),
    };
    let table: toml::Table = toml::from_str(&text).with_context(|| format!("{}", path.display()))?;
    let given = |key: &str| sets.iter().any(|s| s.split_once('=').is_some_and(|(k, _)| k == key));
    let scalar = |key: &str, value: &toml::Value| -> anyhow::Result<String> {
        match value {
            toml::Value::String(s) => Ok(s.clone()),
            toml::Value::Integer(_) | toml::Value::Float(_) | toml::Value::Boolean(_) => Ok(value.to_string()),
            other => bail!("{}: {key}: expected a string, number or boolean, got {}", path.display(), other.type_str()),
        }
    };
    let mut out = Vec::new();
    for (key, value) in &table {
        match value {
            toml::Value::Table(plugin) => {
                for (name, value) in plugin {
                    let key = format!("{key}.{name}");
                    if !given(&key) {
                        out.push(format!("{key}={}", scalar(&key, value)?));
                    }
                }
            }
            toml::Value::Array(items) if !given(key) => {
                for item in items {
                    out.push(format!("{key}={}", scalar(key, item)?));
                }
            }
            _ if given(key) => {}
            value => out.push(format!("{key}={}", scalar(key, value)?)),
        }
    }
    Ok(out)
}

/// The `--set` option names, as `--help` lists them in [`OPTIONS_HELP`].
fn known_options() -> String {
    // An option's line starts with NAME=WHAT; a line that goes on from the one before does not.
    let names: Vec<&str> = OPTIONS_HELP
        .lines()
        .skip(1)
        .filter_map(|line| line.split_whitespace().next()?.split_once('=').map(|(name, _)| name))
        .collect();
    names.join(", ")
}

/// A count that must be at least 1.
fn at_least_one(text: &str) -> Result<usize, String> {
    match text.trim().parse::<usize>() {
        Ok(0) => Err("must be at least 1".to_owned()),
        Ok(n) => Ok(n),
        Err(e) => Err(e.to_string()),
    }
}

/// A duration as options take it (the same syntax as a manifest's durations).
use flowgate_runtime::manifest::parse_duration;

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("FLOWGATE_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn,flowgate_runtime=info")),
        )
        .init();
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("flowgate: cannot start the async runtime: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(cli)) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("flowgate: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    let confdir = confdir(&cli)?;
    if let Some(Command::Plugin { action }) = &cli.command {
        return plugin_command(action, parse_sets(&cli, &confdir)?).await;
    }
    if let Some(Command::Ca { action }) = &cli.command {
        let ca = CertificateAuthority::load_or_create(&confdir)?;
        return ca_command(&confdir, &ca, action);
    }
    let mut settings = parse_sets(&cli, &confdir)?;
    // The positional filter: what is printed, and saved and read unless set apart.
    let words = words_filter(&cli.filter)?;
    if settings.flows.save_filter.is_none() {
        settings.flows.save_filter = words.clone();
    }
    if settings.flows.read_filter.is_none() {
        settings.flows.read_filter = words.clone();
    }
    if let Some(Command::Export { format, file, filter }) = &cli.command {
        let filter = words_filter(filter)?;
        let skipped = export::run(*format, file, filter.as_ref(), &mut std::io::stdout().lock())?;
        if skipped > 0 {
            eprintln!("flowgate: {skipped} flows could not be exported (see above)");
        }
        return Ok(());
    }

    // Where flows go: printed (by the positional filter), saved (-w), hardump.
    let output = Arc::new(output::Output::start());
    let dump = dump::Dump {
        filter: words,
        detail: settings.flows.detail.unwrap_or(1),
        output: output.clone(),
        open: Default::default(),
    };
    let save = match settings.flows.save.clone() {
        Some(target) => Some(save::SaveStream::start(target, settings.flows.save_filter.clone())?),
        None => None,
    };
    let har = settings.flows.hardump.clone().map(|path| flows::HarDump::new(path, settings.flows.save_filter.clone()));
    let flows = Arc::new(flows::Flows { dump, save, har });
    if let Some(path) = &settings.flows.read {
        flows::read_matching(path, settings.flows.read_filter.as_ref(), |flow| {
            flows.add(flowgate_net::Stored::Whole(flow))
        })
        .with_context(|| format!("-r {}", path.display()))?;
    }
    let client_replay = match settings.replay.client.is_empty() {
        true => None,
        false => Some(replay::load(&settings.replay.client, settings.replay.client_filter.as_ref())?),
    };
    // `flowgate replay client` runs no proxy, as `-n -C`; nor does reading a file with no
    // replay and no --keepserving (mitmdump exits once it has read it).
    let only_reading = settings.flows.read.is_some()
        && !settings.flows.keepserving
        && settings.replay.client.is_empty()
        && settings.replay.server.is_empty();
    let no_server =
        cli.no_server || only_reading || matches!(&cli.command, Some(Command::Replay { side: ReplaySide::Client, .. }));
    if no_server && client_replay.is_none() {
        if settings.flows.keepserving {
            shutdown_signal().await?;
        }
        return finish(&flows, &output);
    }
    let mut proxy_options = settings.proxy;
    if !settings.replay.server.is_empty() {
        proxy_options.server_replay = Some(replay::server(&settings.replay.server, &settings.replay.server_options)?);
    }

    let ca = CertificateAuthority::load_or_create(&confdir)?;
    let mut listeners = Vec::new();
    let mut default_used = false;
    for text in cli.modes.iter().filter(|_| !no_server) {
        let (mode, port) = Mode::parse(text)?;
        let port = match port {
            Some(p) => p,
            None if default_used => {
                bail!("--mode {text}: several modes need their own ports; write it as {text}@PORT")
            }
            None => {
                default_used = true;
                cli.listen_port
            }
        };
        let addr = format!("{}:{port}", cli.listen_host);
        // Bound now, so a taken port is reported before a plugin's long first compile;
        // listening only once the plugins are loaded, so no client waits on them.
        let bound = flowgate_net::Listener::reserve(&addr).await.with_context(|| format!("cannot listen on {addr}"))?;
        listeners.push((mode, addr, bound));
    }

    // Plugins' outbound HTTP is done by the network layer (`plugin test` stays offline).
    let runtime_config =
        RuntimeConfig { outbound: Some(Arc::new(flowgate_net::OutboundClient::new())), ..settings.runtime };
    let plugin_runtime = Runtime::new(runtime_config)?;
    let mut plugins = Vec::new();
    let mut sources = Vec::new();
    for path in &cli.plugins {
        // `--set NAME.KEY=VALUE` targets the plugin by its manifest's name (or, for a bare
        // .wasm, its file name); the manifest's directory name works too.
        let is_manifest = path.extension().is_some_and(|e| e == "toml");
        let name = if is_manifest {
            std::fs::read_to_string(path)
                .ok()
                .and_then(|text| flowgate_runtime::Manifest::parse(&text, path).ok())
                .map(|m| m.name)
                .unwrap_or_default()
        } else {
            path.file_stem().map(|s| s.to_string_lossy().replace('_', "-")).unwrap_or_default()
        };
        let dir_name = path.parent().and_then(|d| d.file_name()).map(|d| d.to_string_lossy().into_owned());
        let overrides: Vec<(String, String)> = settings
            .plugin_config_file
            .iter()
            .chain(&settings.plugin_config)
            .filter(|(p, _, _)| *p == name || (is_manifest && dir_name.as_deref() == Some(p.as_str())))
            .map(|(_, k, v)| (k.clone(), v.clone()))
            .collect();
        let plugin = plugin_runtime.load_with(path, &overrides).await.context("cannot load plugin")?;
        eprintln!(
            "flowgate: loaded plugin {} ({}; {})",
            plugin.name(),
            plugin.exported_groups().join(", "),
            plugin.compiled()
        );
        plugins.push(plugin);
        sources.push(reload::Source { path: path.clone(), overrides });
    }
    let loaded = plugins.clone();
    let chain = Chain::new(plugins);
    for failure in chain.running().await {
        eprintln!("flowgate: {failure}");
    }

    // The one-line records print flows unless whole flows go anywhere (saved, a filter,
    // flow_detail 2+): then those print, once each.
    let lines = (flows.dump.prints() && !flows.wants_flows()).then(|| output.clone());
    let sink = lines.map(|lines| -> FlowSink { Arc::new(move |record: &FlowRecord| lines.line(record.to_string())) });
    let server_replay = proxy_options.server_replay.clone();
    let proxy = Proxy::new(chain, Arc::new(ca), proxy_options, sink, flows.store());
    // Plugins' files are watched and reloaded when they change, as mitmproxy's scripts.
    if !sources.is_empty() {
        reload::watch(plugin_runtime.clone(), sources, loaded, proxy.plugins().clone());
    }
    let mut tasks = Vec::new();
    for (mode, addr, bound) in listeners {
        let listener = bound.listen().with_context(|| format!("cannot listen on {addr}"))?;
        let addr = listener.local_addr()?;
        println!("flowgate: {} listening at {addr}", mode.describe());
        tasks.push(tokio::spawn(proxy.clone().serve(listener, mode)));
    }
    if !no_server {
        println!("flowgate: CA certificate at {}", confdir.join(flowgate_ca::CA_CERT_PEM).display());
    }
    let _ = std::io::stdout().flush();
    let keepserving = settings.flows.keepserving;
    let client_replay_given = client_replay.is_some();
    let replaying = match client_replay {
        Some(flows) => {
            let mode = replay::client_mode(&cli.modes)?;
            let concurrency = settings.replay.concurrency;
            Some(tokio::spawn(replay::client(proxy.clone(), mode, flows, concurrency)))
        }
        None => None,
    };
    // Like mitmdump: done once every replay is done (client replay has sent everything,
    // server replay has served everything), unless --keepserving or there is none.
    let replays = async {
        if let Some(task) = replaying {
            eprintln!("flowgate: {}", task.await.context("client replay")?);
        }
        if let Some(replay) = server_replay.as_ref().filter(|_| !keepserving) {
            replay.exhausted().await;
            eprintln!("flowgate: server replay: every saved response was served");
        }
        anyhow::Ok(())
    };
    let replaying_any = client_replay_given || (server_replay.is_some() && !keepserving);
    tokio::select! {
        stop = shutdown_signal() => stop?,
        done = replays, if replaying_any => {
            done?;
            if keepserving {
                shutdown_signal().await?;
            }
        }
    }
    // Stop taking connections, give the flows in progress a bounded time to end, then
    // save what was seen.
    for task in &tasks {
        task.abort();
    }
    let drained = proxy.drain(DRAIN_TIMEOUT).await;
    if drained > 0 {
        eprintln!("flowgate: {drained} client connections were still open after {DRAIN_TIMEOUT:?}; closing them");
    }
    for failure in proxy.plugins().current().done().await {
        eprintln!("flowgate: {failure}");
    }
    finish(&flows, &output)
}

/// How long flows in progress may go on after Ctrl-C or SIGTERM (a second signal ends
/// them at once).
const DRAIN_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(3);

/// Waits for Ctrl-C (SIGINT) or SIGTERM.
async fn shutdown_signal() -> anyhow::Result<()> {
    let mut term =
        tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).context("cannot wait for SIGTERM")?;
    tokio::select! {
        interrupted = tokio::signal::ctrl_c() => interrupted.context("waiting for Ctrl-C")?,
        _ = term.recv() => {}
    }
    Ok(())
}

/// The filter of positional words (joined with spaces, as mitmdump's), if any.
fn words_filter(words: &[String]) -> anyhow::Result<Option<Filter>> {
    if words.is_empty() {
        return Ok(None);
    }
    filter_option("filter", &words.join(" ")).map(Some)
}

/// Saves what is left to save and says what was done.
fn finish(flows: &flows::Flows, output: &output::Output) -> anyhow::Result<()> {
    for report in flows.finish()? {
        eprintln!("flowgate: {report}");
    }
    output.flush();
    if output.dropped() > 0 {
        eprintln!("flowgate: {} flow lines were dropped in all (stdout was not keeping up)", output.dropped());
    }
    Ok(())
}

async fn plugin_command(action: &PluginAction, settings: Settings) -> anyhow::Result<()> {
    match action {
        PluginAction::New { lang, name, dir } => {
            let dir = dir.clone().unwrap_or_else(|| PathBuf::from(name));
            plugin_new::create(*lang, name, &dir)?;
            println!("created {} plugin `{name}` in {}", plugin_new::lang_name(*lang), dir.display());
            println!("next: flowgate plugin build {0} && flowgate plugin test {0}", dir.display());
            println!("then: flowgate -s {}", dir.join("plugin.toml").display());
            Ok(())
        }
        PluginAction::Build { project, force } => {
            let project = plugin_build::Project::open(project)?;
            if !force && project.up_to_date() {
                println!("{} is up to date", project.wasm.display());
            } else {
                let built = plugin_build::build(&project)?;
                println!(
                    "built {} ({} KiB) in {:.1} s",
                    built.wasm.display(),
                    built.size.div_ceil(1024),
                    built.took.as_secs_f64()
                );
            }
            let runtime = Runtime::new(settings.runtime)?;
            let plugin = runtime.load(&project.manifest_path).await.context("the built plugin does not load")?;
            println!("loads: exports {}; {}", plugin.exported_groups().join(", "), plugin.compiled());
            Ok(())
        }
        PluginAction::Test { plugin, flows: Some(flows), save, expect, .. } => {
            let runtime = Runtime::new(settings.runtime)?;
            let manifest = if plugin.is_dir() { plugin.join("plugin.toml") } else { plugin.clone() };
            let name = plugin_test::plugin_name(&manifest)?;
            if let Some((other, key, _)) = settings.plugin_config.iter().find(|(p, _, _)| *p != name) {
                bail!("--set {other}.{key}: this plugin is named {name:?}");
            }
            let overrides: Vec<(String, String)> = settings
                .plugin_config_file
                .iter()
                .filter(|(p, _, _)| *p == name)
                .chain(&settings.plugin_config)
                .map(|(_, k, v)| (k.clone(), v.clone()))
                .collect();
            let loaded = runtime
                .load_with(&manifest, &overrides)
                .await
                .context("cannot load the plugin (run `flowgate plugin build` first?)")?;
            let run = plugin_flows::FlowsRun { flows, save: save.as_deref(), expect: expect.as_deref() };
            if plugin_flows::run(loaded, &run).await? { Ok(()) } else { bail!("some flows differ from --expect") }
        }
        PluginAction::Test { plugin, request, response, cases, .. } => {
            let runtime = Runtime::new(settings.runtime)?;
            let options = plugin_test::Options {
                request: request.clone(),
                response: response.clone(),
                cases: cases.clone(),
                overrides: settings.plugin_config,
                defaults: settings.plugin_config_file,
            };
            if plugin_test::run(&runtime, plugin, &options).await? { Ok(()) } else { bail!("some expectations failed") }
        }
    }
}

fn ca_command(confdir: &std::path::Path, ca: &CertificateAuthority, action: &CaAction) -> anyhow::Result<()> {
    match action {
        CaAction::Path => {
            println!("{}", confdir.join(flowgate_ca::CA_CERT_PEM).display());
            println!(
                "trust it with: curl --cacert {0}  |  sudo cp {0} /usr/local/share/ca-certificates/flowgate.crt && sudo update-ca-certificates",
                confdir.join(flowgate_ca::CA_CERT_PEM).display()
            );
        }
        CaAction::Export { der, p12, out } => {
            let bytes: Vec<u8> = if *der {
                ca.cert_der().to_vec()
            } else if *p12 {
                ca.cert_p12()?
            } else {
                ca.cert_pem().as_bytes().to_vec()
            };
            match out {
                Some(path) => {
                    std::fs::write(path, bytes).with_context(|| format!("cannot write {}", path.display()))?
                }
                None => std::io::stdout().write_all(&bytes)?,
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn every_set_option_is_in_the_help() {
        let known = known_options();
        for name in ["ignore_hosts", "header_read_timeout", "rawtcp", "tcp_timeout", "plugin_cache_dir", "PLUGIN.KEY"] {
            assert!(known.split(", ").any(|k| k == name), "{name} missing from {known}");
        }
        // Every name listed is an option --set takes (a help line that wrapped once put
        // its next line's first word, "tell", in the list).
        let confdir = std::env::temp_dir().join(format!("flowgate-known-{}", std::process::id()));
        for name in known.split(", ").filter(|n| *n != "PLUGIN.KEY") {
            let cli = Cli::parse_from(["flowgate", "--set", &format!("{name}=1")]);
            if let Err(e) = parse_sets(&cli, &confdir) {
                assert!(!e.to_string().contains("unknown option"), "{name}: {e}");
            }
        }
        let cli = Cli::parse_from(["flowgate", "--set", "tell=1"]);
        let err = parse_sets(&cli, &confdir).err().expect("not an option").to_string();
        assert!(err.contains("unknown option") && err.contains(" share_upstream, ssl_insecure,"), "{err}");
    }

    #[test]
    fn config_file_gives_set_options_and_set_wins() {
        let dir = std::env::temp_dir().join(format!("flowgate-config-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("temp dir");
        let path = dir.join(CONFIG_FILE);
        assert_eq!(config_file_sets(&path, &[]).expect("no file is no options"), Vec::<String>::new());
        std::fs::write(
            &path,
            "body_size_limit = \"1MiB\"\nrawtcp = false\nmax_headers = 100\n\
             server_replay_ignore_params = [\"ts\", \"nonce\"]\nstream_large_bodies = \"4MiB\"\n\
             [add-header]\nrequest = \"X-A: 1\"\n",
        )
        .expect("write");
        let sets = config_file_sets(&path, &["stream_large_bodies=1MiB".to_owned()]).expect("parses");
        assert_eq!(
            sets,
            [
                "add-header.request=X-A: 1",
                "body_size_limit=1MiB",
                "max_headers=100",
                "rawtcp=false",
                "server_replay_ignore_params=ts",
                "server_replay_ignore_params=nonce",
            ]
        );
        // --set names a repeatable option: the file's list is left out whole.
        let sets = config_file_sets(&path, &["server_replay_ignore_params=x".to_owned()]).expect("parses");
        assert!(!sets.iter().any(|s| s.starts_with("server_replay_ignore_params")), "{sets:?}");
        std::fs::write(&path, "body_size_limit = [[1]]\n").expect("write");
        assert!(config_file_sets(&path, &[]).is_err());
        std::fs::write(&path, "= broken").expect("write");
        let err = config_file_sets(&path, &[]).expect_err("not TOML");
        assert!(format!("{err:#}").contains("config.toml"), "{err:#}");
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn durations_take_units() {
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("2s"), Ok(Duration::from_secs(2)));
        assert_eq!(parse_duration("30"), Ok(Duration::from_secs(30)));
        assert_eq!(parse_duration("0.5"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("5m"), Ok(Duration::from_secs(300)));
        assert_eq!(parse_duration("1h"), Ok(Duration::from_secs(3600)));
        assert!(parse_duration("2 parsecs").is_err());
        assert!(parse_duration("fast").is_err());
        assert!(parse_duration("").is_err());
    }
}
