use flowgate_sdk::groups::http::exports::flowgate::plugin::http::Guest;
use flowgate_sdk::bindings::flowgate::plugin::types::*;
struct P;
impl Guest for P {
    fn request_headers(flow: &Flow, request: &Request) -> Verdict { let _ = request.set_header("x-a", "b"); Verdict::Continue }
    fn request_body_chunk(flow: &Flow, request: &Request, chunk: Vec<u8>, eos: bool) -> Vec<u8> { chunk }
    fn request(flow: &Flow, request: &Request) -> Verdict { Verdict::Continue }
    fn response_headers(flow: &Flow, request: &Request, response: &Response) -> Verdict { Verdict::Continue }
    fn response_body_chunk(flow: &Flow, request: &Request, response: &Response, chunk: Vec<u8>, eos: bool) -> Vec<u8> { chunk }
    fn response(flow: &Flow, request: &Request, response: &Response) -> Verdict { Verdict::Continue }
    fn error(flow: &Flow, request: &Request, message: String) {}
    fn http_connect(flow: &Flow, request: &Request) -> Verdict { Verdict::Continue }
}
flowgate_sdk::groups::http::export_http!(P);
