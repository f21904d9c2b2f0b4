//! trap (hostile): panics — a trap in the sandbox — on requests whose path starts with
//! `/trap`; on any other request it tags it with `x-trap-plugin: survived`.

use flowgate_sdk::{Flow, HttpHooks, Request, Verdict, export_plugin};

struct Trap;

impl HttpHooks for Trap {
    fn request_headers(_flow: &Flow, request: &Request) -> Verdict {
        if request.path().starts_with("/trap") {
            panic!("trap plugin asked to trap on {}", request.path());
        }
        let _ = request.set_header("x-trap-plugin", "survived");
        Verdict::Continue
    }
}

export_plugin!(Trap: http);
