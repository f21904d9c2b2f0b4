//! Server replay's matching and refresh, sans-IO, as mitmproxy's `serverplayback` addon
//! and `Response.refresh` define them: a request's key (scheme, method, path, the body or
//! its form fields, host, port, query pairs, chosen header fields, each part skippable by
//! a `server_replay_ignore_*` option), and a saved response moved in time (`Date`,
//! `Expires`, `Last-Modified` and cookie expiry shifted by the time since it was
//! recorded). Not here: the state of which responses are left (`super::ServerReplay`).

use std::time::SystemTime;

use flowgate_flow::{Headers, Request, Response, Timestamp};

/// Which parts of a request choose the saved response (mitmproxy's
/// `server_replay_ignore_*` and `server_replay_use_headers` options).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MatchOptions {
    /// `server_replay_ignore_content`: the body plays no part.
    pub ignore_content: bool,
    /// `server_replay_ignore_host`: the host plays no part.
    pub ignore_host: bool,
    /// `server_replay_ignore_port`: the port plays no part.
    pub ignore_port: bool,
    /// `server_replay_ignore_params`: query parameters that play no part.
    pub ignore_params: Vec<String>,
    /// `server_replay_ignore_payload_params`: form fields (urlencoded or multipart) that
    /// play no part; with any given, a form body is matched by its other fields.
    pub ignore_payload_params: Vec<String>,
    /// `server_replay_use_headers`: header fields whose (first) value must match too.
    pub use_headers: Vec<String>,
}

/// The key two requests must share for one to be answered with the other's response.
/// Parts are length-prefixed, so no two different part lists encode alike.
pub(crate) fn key(request: &Request, options: &MatchOptions) -> Vec<u8> {
    let mut key = Key::default();
    key.part(request.scheme.as_str().as_bytes());
    key.part(request.method.as_bytes());
    let (path, query) = request.path.split_once('?').unwrap_or((&request.path, ""));
    key.part(path.as_bytes());
    if !options.ignore_content {
        match form_fields(request).filter(|_| !options.ignore_payload_params.is_empty()) {
            Some(fields) => {
                for (name, value) in fields {
                    if !options.ignore_payload_params.iter().any(|p| p.as_bytes() == name.as_slice()) {
                        key.part(&name);
                        key.part(&value);
                    }
                }
            }
            None => key.maybe(request.body.as_deref()),
        }
    }
    if !options.ignore_host {
        key.part(pretty_host(request).as_bytes());
    }
    if !options.ignore_port {
        key.part(&request.port.to_be_bytes());
    }
    for (name, value) in form_urlencoded::parse(query.as_bytes()) {
        if !options.ignore_params.iter().any(|p| *p == name) {
            key.part(name.as_bytes());
            key.part(value.as_bytes());
        }
    }
    for name in &options.use_headers {
        // All of a field's values, joined as mitmproxy's `headers.get` gives them.
        let values: Vec<&[u8]> = request.headers.get_all(name).collect();
        key.part(name.as_bytes());
        key.maybe((!values.is_empty()).then(|| values.join(&b", "[..])).as_deref());
    }
    key.0
}

#[derive(Default)]
struct Key(Vec<u8>);

impl Key {
    fn part(&mut self, bytes: &[u8]) {
        self.0.push(1);
        self.0.extend_from_slice(&(bytes.len() as u64).to_be_bytes());
        self.0.extend_from_slice(bytes);
    }

    /// A part that may be absent (a body not stored, a header field not sent).
    fn maybe(&mut self, bytes: Option<&[u8]>) {
        match bytes {
            Some(bytes) => self.part(bytes),
            None => self.0.push(0),
        }
    }
}

/// The host the client named (its `Host` field without the port), else the target's:
/// mitmproxy's `pretty_host`.
fn pretty_host(request: &Request) -> String {
    let Some(host) = request.headers.get_str("host").map(str::trim).filter(|h| !h.is_empty()) else {
        return request.host.to_ascii_lowercase();
    };
    let bare = match host.strip_prefix('[') {
        Some(rest) => rest.split(']').next().map(|h| format!("[{h}]")).unwrap_or_default(),
        None => host.rsplit_once(':').filter(|(_, p)| p.parse::<u16>().is_ok()).map_or(host, |(h, _)| h).to_owned(),
    };
    bare.to_ascii_lowercase()
}

/// The fields of a form body (urlencoded or multipart/form-data), if it is one.
fn form_fields(request: &Request) -> Option<Vec<(Vec<u8>, Vec<u8>)>> {
    let body = request.body.as_deref()?;
    let content_type = request.headers.get_str("content-type")?;
    let (media, params) = content_type.split_once(';').unwrap_or((content_type, ""));
    match media.trim().to_ascii_lowercase().as_str() {
        "application/x-www-form-urlencoded" => Some(
            form_urlencoded::parse(body)
                .map(|(n, v)| (n.into_owned().into_bytes(), v.into_owned().into_bytes()))
                .collect(),
        ),
        "multipart/form-data" => {
            let boundary = params.split(';').find_map(|p| {
                let (name, value) = p.split_once('=')?;
                name.trim().eq_ignore_ascii_case("boundary").then(|| value.trim().trim_matches('"').to_owned())
            })?;
            multipart_fields(body, &boundary)
        }
        _ => None,
    }
}

/// The named parts of a multipart/form-data body (RFC 7578): each part's
/// `Content-Disposition` name and its content. `None` if it does not parse.
fn multipart_fields(body: &[u8], boundary: &str) -> Option<Vec<(Vec<u8>, Vec<u8>)>> {
    if boundary.is_empty() {
        return None;
    }
    let delimiter = format!("--{boundary}").into_bytes();
    let mut fields = Vec::new();
    let mut parts = split(body, &delimiter).skip(1);
    for part in parts.by_ref() {
        if part.starts_with(b"--") {
            return Some(fields);
        }
        let part = part.strip_prefix(b"\r\n")?;
        let end = find(part, b"\r\n\r\n")?;
        let (head, content) = (&part[..end], &part[end + 4..]);
        let content = content.strip_suffix(b"\r\n").unwrap_or(content);
        let head = std::str::from_utf8(head).ok()?;
        let disposition = head
            .split("\r\n")
            .find_map(|line| {
                line.split_once(':').filter(|(n, _)| n.trim().eq_ignore_ascii_case("content-disposition"))
            })?
            .1;
        let name = disposition.split(';').find_map(|p| {
            let (n, v) = p.split_once('=')?;
            n.trim().eq_ignore_ascii_case("name").then(|| v.trim().trim_matches('"').as_bytes().to_vec())
        })?;
        fields.push((name, content.to_vec()));
    }
    None
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

/// `bytes` cut at every `delimiter`.
fn split<'a>(mut bytes: &'a [u8], delimiter: &'a [u8]) -> impl Iterator<Item = &'a [u8]> + 'a {
    let mut done = false;
    std::iter::from_fn(move || {
        if done {
            return None;
        }
        match find(bytes, delimiter) {
            Some(at) => {
                let piece = &bytes[..at];
                bytes = &bytes[at + delimiter.len()..];
                Some(piece)
            }
            None => {
                done = true;
                Some(bytes)
            }
        }
    })
}

/// Moves a saved response to `now`, as mitmproxy's `Response.refresh`: `Date`,
/// `Expires` and `Last-Modified`, and each `Set-Cookie`'s `Expires`, shifted by the time
/// since the response was recorded (a cookie expiry that does not parse is dropped, as
/// mitmproxy does; other fields are kept as they are).
pub(crate) fn refresh(response: &mut Response, now: Timestamp) {
    let Some(recorded) = response.timestamp_start else {
        return;
    };
    // A recording from the future (another machine's clock) moves dates back.
    let shift = |time: SystemTime| -> SystemTime {
        match now.checked_duration_since(recorded) {
            Some(delta) => time.checked_add(delta).unwrap_or(time),
            None => time.checked_sub(recorded.checked_duration_since(now).unwrap_or_default()).unwrap_or(time),
        }
    };
    // httpdate formats years 1970..=9999 only (and panics past them): a date shifted out
    // of that range is left as it was.
    let format = |time: SystemTime| -> Option<String> {
        let latest = SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(253_402_300_799);
        (SystemTime::UNIX_EPOCH..=latest).contains(&time).then(|| httpdate::fmt_http_date(time))
    };
    let mut refreshed = Headers::new();
    for (name, value) in response.headers.iter() {
        let value = match name.to_ascii_lowercase().as_str() {
            "date" | "expires" | "last-modified" => std::str::from_utf8(value)
                .ok()
                .and_then(|v| httpdate::parse_http_date(v.trim()).ok())
                .and_then(|t| format(shift(t)))
                .map_or_else(|| value.to_vec(), String::into_bytes),
            "set-cookie" => {
                std::str::from_utf8(value).map_or_else(|_| value.to_vec(), |v| refresh_cookie(v, |t| format(shift(t))))
            }
            _ => value.to_vec(),
        };
        // Values made here are dates and the cookie's own parts: they stay valid.
        let _ = refreshed.append(name, &value);
    }
    response.headers = refreshed;
}

/// A `Set-Cookie` value with its `Expires` attribute shifted.
fn refresh_cookie(value: &str, shifted: impl Fn(SystemTime) -> Option<String>) -> Vec<u8> {
    let mut out: Vec<String> = Vec::new();
    for (i, part) in value.split(';').enumerate() {
        let attribute = part.split_once('=').filter(|_| i > 0);
        match attribute {
            Some((name, date)) if name.trim().eq_ignore_ascii_case("expires") => {
                // The Netscape spelling (`Wed, 21-Oct-2015 07:28:00 GMT`) as RFC 1123's.
                // Not a date: dropped, as mitmproxy does; out of the formattable range: kept.
                if let Ok(time) = httpdate::parse_http_date(&date.trim().replace('-', " ")) {
                    out.push(shifted(time).map_or_else(|| part.to_owned(), |date| format!("{name}={date}")));
                }
            }
            _ => out.push(part.to_owned()),
        }
    }
    out.join(";").into_bytes()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(method: &str, url: &str, fields: &[(&str, &str)], body: Option<&str>) -> Request {
        let mut r = Request::new(method, url).expect("valid request");
        r.headers = Headers::from_pairs(fields.iter().copied()).expect("valid fields");
        r.body = body.map(|b| bytes::Bytes::copy_from_slice(b.as_bytes()));
        r
    }

    /// Each row: two requests, the options, whether they share a key.
    #[test]
    fn keys_follow_mitmproxys_rules() {
        let none = MatchOptions::default();
        let ignore = |f: fn(&mut MatchOptions)| {
            let mut o = MatchOptions::default();
            f(&mut o);
            o
        };
        let get = |url: &str| request("GET", url, &[], None);
        let post = |ct: &str, body: &str| request("POST", "http://a.test/f", &[("Content-Type", ct)], Some(body));
        let form = "application/x-www-form-urlencoded";
        let multi = "multipart/form-data; boundary=XyZ";
        let parts = |token: &str| {
            format!(
                "--XyZ\r\nContent-Disposition: form-data; name=\"user\"\r\n\r\nada\r\n--XyZ\r\n\
                 Content-Disposition: form-data; name=\"token\"\r\n\r\n{token}\r\n--XyZ--\r\n"
            )
        };
        let cases: Vec<(Request, Request, MatchOptions, bool)> = vec![
            (get("http://a.test/p?x=1"), get("http://a.test/p?x=1"), none.clone(), true),
            (get("http://a.test/p"), get("https://a.test/p"), none.clone(), false),
            (get("http://a.test/p"), request("HEAD", "http://a.test/p", &[], None), none.clone(), false),
            (get("http://a.test/p"), get("http://a.test/q"), none.clone(), false),
            (get("http://a.test/p?x=1"), get("http://a.test/p?x=2"), none.clone(), false),
            (
                get("http://a.test/p?x=1&t=9"),
                get("http://a.test/p?x=1&t=8"),
                ignore(|o| o.ignore_params = vec!["t".into()]),
                true,
            ),
            // `+` and %20 are both a space, as parse_qsl decodes them.
            (get("http://a.test/p?q=a+b"), get("http://a.test/p?q=a%20b"), none.clone(), true),
            (get("http://a.test/p?x=1&y=2"), get("http://a.test/p?y=2&x=1"), none.clone(), false),
            (get("http://a.test/p"), get("http://b.test/p"), none.clone(), false),
            (get("http://a.test/p"), get("http://b.test/p"), ignore(|o| o.ignore_host = true), true),
            (get("http://a.test/p"), get("http://a.test:8080/p"), none.clone(), false),
            (get("http://a.test/p"), get("http://a.test:8080/p"), ignore(|o| o.ignore_port = true), true),
            (post(form, "a=1"), post(form, "a=2"), none.clone(), false),
            (post(form, "a=1"), post(form, "a=2"), ignore(|o| o.ignore_content = true), true),
            (
                post(form, "a=1&ts=5"),
                post(form, "a=1&ts=6"),
                ignore(|o| o.ignore_payload_params = vec!["ts".into()]),
                true,
            ),
            (
                post(form, "a=1&ts=5"),
                post(form, "a=2&ts=5"),
                ignore(|o| o.ignore_payload_params = vec!["ts".into()]),
                false,
            ),
            (
                post(multi, &parts("t1")),
                post(multi, &parts("t2")),
                ignore(|o| o.ignore_payload_params = vec!["token".into()]),
                true,
            ),
            (post(multi, &parts("t1")), post(multi, &parts("t2")), none.clone(), false),
            (
                request("GET", "http://a.test/", &[("Accept", "a")], None),
                request("GET", "http://a.test/", &[("Accept", "b")], None),
                none.clone(),
                true,
            ),
            (
                request("GET", "http://a.test/", &[("Accept", "a")], None),
                request("GET", "http://a.test/", &[("Accept", "b")], None),
                ignore(|o| o.use_headers = vec!["accept".into()]),
                false,
            ),
            (
                request("GET", "http://a.test/", &[("Accept", "a")], None),
                request("GET", "http://a.test/", &[], None),
                ignore(|o| o.use_headers = vec!["accept".into()]),
                false,
            ),
            // Every value of a field, joined: two fields are one "a, b".
            (
                request("GET", "http://a.test/", &[("Accept", "a"), ("Accept", "b")], None),
                request("GET", "http://a.test/", &[("Accept", "a, b")], None),
                ignore(|o| o.use_headers = vec!["accept".into()]),
                true,
            ),
            (
                request("GET", "http://a.test/", &[("Accept", "a"), ("Accept", "b")], None),
                request("GET", "http://a.test/", &[("Accept", "a")], None),
                ignore(|o| o.use_headers = vec!["accept".into()]),
                false,
            ),
            // The Host the client named is the host, in any case, with or without a port.
            (
                request("GET", "http://10.0.0.1/", &[("Host", "Shop.Test:80")], None),
                request("GET", "http://10.0.0.2/", &[("Host", "shop.test")], None),
                none.clone(),
                true,
            ),
            // A body not stored is not an empty one.
            (
                request("POST", "http://a.test/", &[], None),
                request("POST", "http://a.test/", &[], Some("")),
                none.clone(),
                false,
            ),
        ];
        for (i, (a, b, options, same)) in cases.iter().enumerate() {
            assert_eq!(
                key(a, options) == key(b, options),
                *same,
                "row {i}: {} {} vs {} {}",
                a.method,
                a.url(),
                b.method,
                b.url()
            );
        }
    }

    #[test]
    fn multipart_bodies_parse_into_named_fields() {
        let body = b"preamble\r\n--b\r\nContent-Disposition: form-data; name=\"a\"\r\nContent-Type: text/plain\r\n\r\none\r\nline\r\n--b\r\ncontent-disposition: form-data; name=f; filename=\"x.bin\"\r\n\r\n\x00\x01\r\n--b--\r\n";
        let fields = multipart_fields(body, "b").expect("parses");
        assert_eq!(fields, vec![(b"a".to_vec(), b"one\r\nline".to_vec()), (b"f".to_vec(), vec![0, 1])]);
        assert_eq!(multipart_fields(b"--b\r\nno head end", "b"), None);
        assert_eq!(multipart_fields(b"--b\r\n\r\nunterminated", "b"), None);
        assert_eq!(multipart_fields(b"--b--\r\n", ""), None);
    }

    #[test]
    fn refresh_moves_dates_by_the_time_since_recording() {
        let recorded = Timestamp::from_secs_f64(1_445_412_480.0).expect("valid"); // Wed, 21 Oct 2015 07:28:00 GMT
        let now = Timestamp::from_secs_f64(1_445_412_480.0 + 86_400.0 + 0.4).expect("valid");
        let mut response = Response::new(200, "OK").expect("valid");
        response.timestamp_start = Some(recorded);
        response.headers = Headers::from_pairs([
            ("Date", "Wed, 21 Oct 2015 07:28:00 GMT"),
            ("Expires", "Wed, 21 Oct 2015 08:28:00 GMT"),
            ("Last-Modified", "not a date"),
            ("Set-Cookie", "s=1; Path=/; Expires=Thu, 22-Oct-2015 07:28:00 GMT; HttpOnly"),
            ("Set-Cookie", "t=2; expires=yesterday; Max-Age=60"),
            ("Set-Cookie", "far=1; Expires=Fri, 31 Dec 9999 23:59:59 GMT"),
            ("X-Other", "Wed, 21 Oct 2015 07:28:00 GMT"),
        ])
        .expect("valid");
        refresh(&mut response, now);
        let fields: Vec<(&str, String)> =
            response.headers.iter().map(|(n, v)| (n, String::from_utf8_lossy(v).into_owned())).collect();
        assert_eq!(
            fields,
            vec![
                ("Date", "Thu, 22 Oct 2015 07:28:00 GMT".to_owned()),
                ("Expires", "Thu, 22 Oct 2015 08:28:00 GMT".to_owned()),
                ("Last-Modified", "not a date".to_owned()),
                ("Set-Cookie", "s=1; Path=/; Expires=Fri, 23 Oct 2015 07:28:00 GMT; HttpOnly".to_owned()),
                ("Set-Cookie", "t=2; Max-Age=60".to_owned()),
                ("Set-Cookie", "far=1; Expires=Fri, 31 Dec 9999 23:59:59 GMT".to_owned()),
                ("X-Other", "Wed, 21 Oct 2015 07:28:00 GMT".to_owned()),
            ]
        );
        // Moved back before 1970 (a recording clock ahead of ours): kept as it was.
        let mut deleted = Response::new(200, "OK").expect("valid");
        deleted.timestamp_start = Some(now);
        deleted.headers =
            Headers::from_pairs([("Set-Cookie", "gone=; Expires=Thu, 01 Jan 1970 00:00:00 GMT")]).expect("valid");
        let before = deleted.clone();
        refresh(&mut deleted, recorded);
        assert_eq!(deleted, before);
        // Without a recording time nothing moves.
        let mut unknown = Response::new(200, "OK").expect("valid");
        unknown.headers = Headers::from_pairs([("Date", "Wed, 21 Oct 2015 07:28:00 GMT")]).expect("valid");
        let before = unknown.clone();
        refresh(&mut unknown, now);
        assert_eq!(unknown, before);
    }
}
