//! grpc-log: for each gRPC call, the method, the `grpc-status` and `grpc-message` the
//! server sent in its trailers (or in the headers, for a trailers-only answer), logged and
//! kept in the flow's metadata (`grpc.status`, `grpc.message`). The response body streams
//! through unchanged (stream mode, so bidirectional calls keep flowing); the `response`
//! hook runs when it ends, with the trailers.
//!
//! `[config]`: `log` — `all` (default) or `errors` (only calls whose status is not 0).

use flowgate_sdk::{BodyMode, Flow, HttpHooks, Request, Response, Verdict, config, export_plugin, log};

struct GrpcLog;

fn is_grpc(response: &Response) -> bool {
    response.get_header("content-type").first().is_some_and(|t| t.starts_with("application/grpc"))
}

/// The first value of `name` in the trailers, else in the headers (trailers-only answer).
fn field(response: &Response, name: &str) -> Option<String> {
    let trailers = response.trailers();
    let from_trailers = trailers.iter().find(|h| h.name.eq_ignore_ascii_case(name)).map(|h| h.value.clone());
    from_trailers.or_else(|| response.get_header(name).into_iter().next())
}

#[flowgate_sdk::hooks]
impl HttpHooks for GrpcLog {
    fn response_headers(_flow: &Flow, _request: &Request, response: &Response) -> Verdict {
        if is_grpc(response) {
            let _ = response.set_body_mode(BodyMode::Stream);
        }
        Verdict::Continue
    }

    fn response(flow: &Flow, request: &Request, response: &Response) -> Verdict {
        if !is_grpc(response) {
            return Verdict::Continue;
        }
        let status = field(response, "grpc-status").unwrap_or_else(|| "missing".to_owned());
        let message = field(response, "grpc-message").unwrap_or_default();
        let _ = flow.set_metadata("grpc.status", &status);
        let _ = flow.set_metadata("grpc.message", &message);
        if status != "0" || config::get("log").as_deref() != Some("errors") {
            log::info(format!("grpc {} status {status} {message}", request.path()).trim_end());
        }
        Verdict::Continue
    }
}

export_plugin!(GrpcLog: http);
