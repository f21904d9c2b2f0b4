//! balloon (hostile): allocates and touches memory without bound in `request-headers`.
//! The host must deny growth at the plugin's memory cap.

use flowgate_sdk::{Flow, HttpHooks, Request, Verdict, export_plugin};

struct Balloon;

impl HttpHooks for Balloon {
    fn request_headers(_flow: &Flow, _request: &Request) -> Verdict {
        let mut chunks: Vec<Vec<u8>> = Vec::new();
        loop {
            let mut chunk = vec![0u8; 1 << 20];
            chunk[4096] = 1;
            chunks.push(std::hint::black_box(chunk));
        }
    }
}

export_plugin!(Balloon: http);
