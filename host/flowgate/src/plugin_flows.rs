//! `flowgate plugin test --flows FILE`: a plugin run offline over every HTTP flow of a
//! recording (flowgate's flow file, HAR or mitmproxy's), each flow's request and saved
//! response played through the plugin's hooks in the proxy's order, and what it changed
//! printed per flow. `--save OUT` writes the flows as the plugin left them; `--expect
//! FILE` compares them, flow by flow in order, with such a file (or a recording made
//! through the proxy with the plugin) and fails on any difference: a regression test
//! for plugins on real traffic. No sockets: the saved response stands in for the upstream.

use std::path::Path;
use std::sync::Arc;

use anyhow::Context;
use flowgate_flow::{ConnectionInfo, Flow, Headers, HttpFlow, Payload, Request, Response};
use flowgate_runtime::{Chain, Plugin};

use crate::plugin_test::{Outcome, exchange, print_body_diff, print_header_diff};

/// What to run over a recording.
pub struct FlowsRun<'a> {
    /// The recording.
    pub flows: &'a Path,
    /// Write the results here (flowgate's flow file).
    pub save: Option<&'a Path>,
    /// Compare the results with the flows of this file.
    pub expect: Option<&'a Path>,
}

/// Runs the plugin over the recording; true if every flow met its expectation (or there
/// was none).
pub async fn run(plugin: Arc<Plugin>, run: &FlowsRun<'_>) -> anyhow::Result<bool> {
    let mut flows = Vec::new();
    crate::flows::read_matching(run.flows, None, |flow| flows.push(flow))
        .with_context(|| format!("--flows {}", run.flows.display()))?;
    let expected = match run.expect {
        Some(path) => {
            let mut expected = Vec::new();
            crate::flows::read_matching(path, None, |flow| expected.push(flow))
                .with_context(|| format!("--expect {}", path.display()))?;
            Some(expected.into_iter().filter(|f| matches!(f.payload, Payload::Http(_))).collect::<Vec<_>>())
        }
        None => None,
    };
    let chain = Chain::new(vec![plugin]);
    let mut results = Vec::new();
    let (mut changed, mut skipped) = (0, 0);
    for flow in flows {
        let Payload::Http(http) = &flow.payload else { continue };
        let Some(saved_response) = http.response.clone() else {
            println!("== {} {} (skipped: no response was saved)", http.request.method, http.request.url());
            skipped += 1;
            // Kept as it is, so --expect still compares flow with flow.
            results.push(flow);
            continue;
        };
        let result = play(&chain, &flow, &http.request, saved_response).await;
        if result.payload != flow.payload {
            changed += 1;
        }
        results.push(result);
    }
    let mut all_ok = true;
    if let Some(expected) = &expected {
        if expected.len() != results.len() {
            println!(
                "expectation failed: {} ran, {} expected",
                crate::output::counted(results.len() as u64, "flow", "flows"),
                expected.len()
            );
            all_ok = false;
        }
        for (n, (got, want)) in results.iter().zip(expected).enumerate() {
            let problems = differences(got, want);
            for problem in &problems {
                println!("flow {} ({}): expectation failed: {problem}", n + 1, name(got));
            }
            all_ok &= problems.is_empty();
        }
    }
    if let Some(path) = run.save {
        let file = std::fs::File::create(path).with_context(|| format!("cannot write {}", path.display()))?;
        let mut writer =
            flowgate_store::flowfile::Writer::new(file).with_context(|| format!("cannot write {}", path.display()))?;
        for flow in &results {
            writer.write_flow(flow).with_context(|| format!("cannot write {}", path.display()))?;
        }
        println!("saved {} to {}", crate::output::counted(results.len() as u64, "flow", "flows"), path.display());
    }
    println!(
        "{}, {changed} changed by the plugin, {skipped} skipped",
        crate::output::counted(results.len() as u64, "flow", "flows")
    );
    Ok(all_ok)
}

fn name(flow: &Flow) -> String {
    match &flow.payload {
        Payload::Http(http) => format!("{} {}", http.request.method, http.request.url()),
        _ => format!("{:?}", flow.kind()),
    }
}

/// One flow through the plugin: prints what it changed and returns the flow as it left it.
async fn play(chain: &Chain, flow: &Flow, saved_request: &Request, saved_response: Response) -> Flow {
    let conn = chain.connection(ConnectionInfo { id: flow.client.id, ..flow.connection_info() });
    let mut session = conn.http_flow(flow.info());
    let mut request = saved_request.clone();
    let request_body = request.body.take().unwrap_or_default().to_vec();
    let mut response = saved_response.clone();
    let response_body = response.body.take().unwrap_or_default().to_vec();
    // Before the exchange, so what the plugin logs comes under its flow.
    println!("== {} {}", saved_request.method, saved_request.url());
    let (outcome, local) =
        exchange(&mut session, &mut request, request_body.clone(), &mut response, response_body.clone()).await;
    if request.method != saved_request.method || request.url() != saved_request.url() {
        println!("  ~ {} {}", request.method, request.url());
    }
    print_header_diff(&saved_request.headers, &request.headers);
    if request.body.is_none() {
        request.body = saved_request.body.clone();
    }
    print_body_diff(&request_body, request.body.as_deref().unwrap_or_default());
    let response = match (outcome, local) {
        (Outcome::Respond, Some(local)) => {
            println!("respond  {} (the plugin answered)", local.status);
            let answer = Response {
                status: local.status,
                reason: String::new(),
                headers: local.headers,
                body: Some(local.body),
                ..Response::default()
            };
            Some(answer)
        }
        (Outcome::Upstream, _) => {
            if response.status != saved_response.status {
                println!("  ~ status {} -> {}", saved_response.status, response.status);
            }
            print_header_diff(&saved_response.headers, &response.headers);
            if response.body.is_none() {
                response.body = saved_response.body.clone();
            }
            print_body_diff(&response_body, response.body.as_deref().unwrap_or_default());
            Some(response)
        }
        (Outcome::Fail, _) => {
            println!("fail     the client gets 502 (a fail-closed plugin failed)");
            None
        }
        _ => {
            println!("kill     the client connection is closed without a response");
            None
        }
    };
    for failure in session.failures() {
        println!("failure  {failure}");
    }
    let mut result = flow.clone();
    result.metadata = session.flow.metadata.clone();
    result.payload = Payload::Http(HttpFlow { request, response, websocket: None });
    result
}

/// What `got` has that `want` has not, and the other way round, as people read fields.
fn field_changes(got: &Headers, want: &Headers) -> String {
    let text = |h: &Headers| -> Vec<String> {
        h.iter().map(|(n, v)| format!("{n}: {}", flowgate_flow::value_to_text(v))).collect()
    };
    let (got, want) = (text(got), text(want));
    let mut changes: Vec<String> = want.iter().filter(|f| !got.contains(f)).map(|f| format!("missing {f:?}")).collect();
    changes.extend(got.iter().filter(|f| !want.contains(f)).map(|f| format!("unexpected {f:?}")));
    if changes.is_empty() {
        changes.push("the same fields in another order".to_owned());
    }
    changes.join(", ")
}

/// How a result differs from what was expected: the request as sent, the response as
/// answered (status, fields, bodies), and the metadata the plugin set. Timestamps and
/// ids are the recording's, not the plugin's doing, and are not compared.
fn differences(got: &Flow, want: &Flow) -> Vec<String> {
    let (Payload::Http(got_http), Payload::Http(want_http)) = (&got.payload, &want.payload) else {
        return vec!["not an HTTP flow".to_owned()];
    };
    let mut problems = Vec::new();
    let (g, w) = (&got_http.request, &want_http.request);
    if (g.method.as_str(), g.url()) != (w.method.as_str(), w.url()) {
        problems.push(format!("request is {} {}, expected {} {}", g.method, g.url(), w.method, w.url()));
    }
    if g.headers != w.headers {
        problems.push(format!("request fields: {}", field_changes(&g.headers, &w.headers)));
    }
    if g.body != w.body {
        problems.push("the request body differs".to_owned());
    }
    match (&got_http.response, &want_http.response) {
        (Some(g), Some(w)) => {
            if g.status != w.status {
                problems.push(format!("status is {}, expected {}", g.status, w.status));
            }
            if g.headers != w.headers {
                problems.push(format!("response fields: {}", field_changes(&g.headers, &w.headers)));
            }
            if g.body != w.body {
                problems.push("the response body differs".to_owned());
            }
        }
        (None, None) => {}
        (g, w) => problems.push(format!(
            "{} a response, expected {}",
            if g.is_some() { "has" } else { "has no" },
            if w.is_some() { "one" } else { "none" }
        )),
    }
    let plugin_keys = |f: &Flow| -> Vec<(String, String)> {
        f.metadata.iter().filter(|(k, _)| !k.starts_with("flowgate.")).map(|(k, v)| (k.clone(), v.clone())).collect()
    };
    if plugin_keys(got) != plugin_keys(want) {
        problems.push(format!("metadata is {:?}, expected {:?}", plugin_keys(got), plugin_keys(want)));
    }
    problems
}
