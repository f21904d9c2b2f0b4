//! spin-forever (hostile): loops forever in `request-headers`. The host must interrupt
//! it at its deadline and keep other flows going.

use flowgate_sdk::{Flow, HttpHooks, Request, Verdict, export_plugin};

struct SpinForever;

impl HttpHooks for SpinForever {
    fn request_headers(_flow: &Flow, request: &Request) -> Verdict {
        let mut n: u64 = request.path().len() as u64;
        loop {
            n = std::hint::black_box(n.wrapping_mul(6364136223846793005).wrapping_add(1));
        }
    }
}

export_plugin!(SpinForever: http);
