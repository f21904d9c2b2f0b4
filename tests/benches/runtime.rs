//! Plugin runtime benchmarks with real compiled components: instantiation per flow, an
//! empty hook call, a request-headers hook that reads and sets two headers on a
//! 20-header request, one host call of each kind (host-calls), and a whole flow for
//! each instance model. Run with `cargo bench -p flowgate-tests`.

/// The proxy's allocator, so the figures are the ones it gets.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

use criterion::{Criterion, criterion_group, criterion_main};
use flowgate_flow::Request;
use flowgate_runtime::{Chain, HttpFlowSession, InstanceModel, Runtime, RuntimeConfig};
use flowgate_tests::plugins::{ADD_HEADER, HOST_CALLS, REQUEST_ID};
use flowgate_tests::{cache_dir, connection, flow, manifest, request, response};

fn tokio() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread().enable_all().build().expect("tokio runtime")
}

/// Loads a plugin with a CPU budget no benchmark reaches: at the default (250 ms of CPU
/// time per second) a tight loop of calls is soon refused, and would time the refusal.
fn load(rt: &tokio::runtime::Runtime, runtime: &Runtime, wasm: &str, toml: &str) -> Chain {
    let path =
        manifest(wasm, &format!("{toml}\n[limits]\ncpu_per_second = \"1024s\"\nmax_concurrent_calls = 1000000\n"));
    let plugin = rt.block_on(runtime.load(&path)).expect("plugin loads");
    Chain::new(vec![plugin])
}

/// Fails the benchmark if its plugin's calls were refused or failed (it would have timed that).
fn unthrottled(chain: &Chain) {
    let stats = chain.plugins()[0].stats();
    assert_eq!((stats.throttled, stats.failures, stats.short_circuited), (0, 0, 0), "{stats:?}");
}

/// Benchmarks one whole flow's four HTTP hooks through `chain`, each flow new (getting an
/// instance included), on a copy of `template` and a small response.
fn bench_flow(c: &mut Criterion, rt: &tokio::runtime::Runtime, name: &str, chain: &Chain, template: &Request) {
    let conn = chain.connection(connection(2, "127.0.0.1:5001"));
    let mut n = 0;
    c.bench_function(name, |b| {
        b.iter_batched_ref(
            || (template.clone(), response(b"hello")),
            |(req, resp)| {
                n += 1;
                rt.block_on(async {
                    let mut s = conn.http_flow(flow(n, 2));
                    s.request_headers(req).await;
                    s.request(req).await;
                    s.response_headers(req, resp).await;
                    s.response(req, resp).await;
                })
            },
            criterion::BatchSize::SmallInput,
        )
    });
}

fn warm_session(rt: &tokio::runtime::Runtime, chain: &Chain) -> HttpFlowSession {
    let conn = chain.connection(connection(1, "127.0.0.1:5000"));
    let mut session = conn.http_flow(flow(1, 1));
    let mut req = request("http://example.test/", 18);
    rt.block_on(session.request(&mut req));
    session
}

fn benches(c: &mut Criterion) {
    let rt = tokio();
    let runtime =
        Runtime::new(RuntimeConfig { cache_dir: Some(cache_dir()), ..RuntimeConfig::default() }).expect("runtime");

    let per_flow = load(&rt, &runtime, REQUEST_ID, "");
    let plugin = per_flow.plugins()[0].clone();
    c.bench_function("instantiate (rust request-id)", |b| {
        b.to_async(&rt).iter(|| async { plugin.probe_instance().await.expect("instantiates") })
    });
    let add_header = load(&rt, &runtime, ADD_HEADER, "[config]\nrequest = \"X-A: 1\"\n");
    let plugin = add_header.plugins()[0].clone();
    c.bench_function("instantiate (rust add-header)", |b| {
        b.to_async(&rt).iter(|| async { plugin.probe_instance().await.expect("instantiates") })
    });

    // An empty hook: request-id's `request` hook returns Continue at once.
    let mut session = warm_session(&rt, &per_flow);
    let mut req = request("http://example.test/", 18);
    c.bench_function("empty hook call (request)", |b| b.iter(|| rt.block_on(session.request(&mut req))));

    // request-headers reads x-request-id and user-agent and sets x-request-id and
    // x-agent-class (plus the flow's metadata) on a 20-header request.
    let mut req = request("http://example.test/", 18);
    req.headers.set("X-Request-Id", b"0123456789abcdef").expect("valid");
    let template = req.clone();
    c.bench_function("request-headers: read+set 2 headers, 20-header request", |b| {
        b.iter_batched_ref(
            || template.clone(),
            |req| rt.block_on(session.request_headers(req)),
            criterion::BatchSize::SmallInput,
        )
    });

    // One host call: host-calls makes it `n` times in one hook (request-headers, or
    // request for the body), on the 20-header request (a 1 KiB body); what one call costs
    // is the difference between n = 101 and n = 1, over 100.
    let mut with_body = template.clone();
    with_body.body = Some(bytes::Bytes::from(vec![b'x'; 1024]));
    for call in ["get-header", "headers", "set-header", "body"] {
        for n in [1, 101] {
            let chain = load(&rt, &runtime, HOST_CALLS, &format!("[config]\ncall = \"{call}\"\nn = \"{n}\"\n"));
            let conn = chain.connection(connection(3, "127.0.0.1:5002"));
            let mut i = 0;
            c.bench_function(&format!("host call: {call} x{n}"), |b| {
                b.iter_batched_ref(
                    || with_body.clone(),
                    |req| {
                        i += 1;
                        rt.block_on(async {
                            let mut s = conn.http_flow(flow(i, 3));
                            s.request_headers(req).await;
                            if call == "body" {
                                s.request(req).await;
                            }
                        })
                    },
                    criterion::BatchSize::SmallInput,
                )
            });
            unthrottled(&chain);
        }
    }

    // add-header (request-headers and response-headers written, #[flowgate_sdk::hooks])
    // over a flow's four HTTP hooks: called for its two, as its hook-list says, and for
    // all four, as before hook lists (its manifest naming every hook).
    for (label, hooks) in [
        ("hook-list: 2 calls", ""),
        ("every hook: 4 calls", "hooks = [\"request-headers\", \"request\", \"response-headers\", \"response\"]\n"),
    ] {
        let chain =
            load(&rt, &runtime, ADD_HEADER, &format!("{hooks}[config]\nrequest = \"X-A: 1\"\nresponse = \"X-B: 2\"\n"));
        bench_flow(c, &rt, &format!("add-header flow ({label})"), &chain, &template);
        unthrottled(&chain);
    }

    // A whole flow's four HTTP hooks, including getting an instance, per model.
    for model in [InstanceModel::PerFlow, InstanceModel::Pooled] {
        let chain = load(&rt, &runtime, REQUEST_ID, &format!("instance = \"{}\"\n", model.name()));
        bench_flow(c, &rt, &format!("flow with 4 hooks ({})", model.name()), &chain, &template);
    }
}

criterion_group! {
    name = runtime;
    config = Criterion::default().sample_size(50).warm_up_time(std::time::Duration::from_secs(1)).measurement_time(std::time::Duration::from_secs(3));
    targets = benches
}
criterion_main!(runtime);
