//! Connections plugins ask for, through the real proxy: rerouting a flow needs
//! `capabilities.allowed_upstream_hosts` and is checked after DNS, and `webhook-notify`
//! posts to a real local server through outbound HTTP — or, aimed at an address its
//! grant does not name, gets an error value while the server sees no connection.

mod support;

use std::io::{ErrorKind, Read, Write};
use std::net::TcpListener;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use flowgate_tests::plugins::{REROUTE, WEBHOOK_NOTIFY};
use support::{Flowgate, Origin, curl, manifest};

/// A server that records every request it receives (head and body) and answers 204.
struct Recorder {
    port: u16,
    requests: Arc<Mutex<Vec<String>>>,
}

impl Recorder {
    fn start() -> Recorder {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind recorder");
        let port = listener.local_addr().expect("recorder address").port();
        let requests = Arc::new(Mutex::new(Vec::new()));
        let sink = requests.clone();
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(mut stream) = stream else { continue };
                let _ = stream.set_read_timeout(Some(Duration::from_secs(10)));
                let mut data = Vec::new();
                let mut buf = [0u8; 4096];
                // The head, then as many body bytes as Content-Length says.
                let complete = |data: &[u8]| {
                    let text = String::from_utf8_lossy(data);
                    let (head, body) = text.split_once("\r\n\r\n")?;
                    let length = head
                        .lines()
                        .find_map(|l| {
                            l.to_ascii_lowercase().strip_prefix("content-length:").map(|v| v.trim().to_owned())
                        })
                        .and_then(|v| v.parse::<usize>().ok())
                        .unwrap_or(0);
                    (body.len() >= length).then_some(())
                };
                while complete(&data).is_none() {
                    match stream.read(&mut buf) {
                        Ok(0) | Err(_) => break,
                        Ok(n) => data.extend_from_slice(&buf[..n]),
                    }
                }
                sink.lock().expect("recorder lock").push(String::from_utf8_lossy(&data).into_owned());
                let _ = stream.write_all(b"HTTP/1.1 204 No Content\r\nconnection: close\r\n\r\n");
            }
        });
        Recorder { port, requests }
    }

    /// Waits (bounded) for the `n`th request.
    fn wait_for(&self, n: usize) -> Vec<String> {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let seen = self.requests.lock().expect("recorder lock").clone();
            if seen.len() >= n {
                return seen;
            }
            assert!(Instant::now() < deadline, "the server got {} requests, not {n}", seen.len());
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

/// A listening socket nobody accepts on: whether anyone connected shows in its backlog.
struct Untouched(TcpListener);

impl Untouched {
    fn bind() -> Untouched {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        listener.set_nonblocking(true).expect("nonblocking");
        Untouched(listener)
    }

    fn port(&self) -> u16 {
        self.0.local_addr().expect("address").port()
    }

    /// Panics if a connection reached it (the kernel completes a handshake without accept).
    fn assert_untouched(&self) {
        match self.0.accept() {
            Err(e) if e.kind() == ErrorKind::WouldBlock => {}
            Ok((_, from)) => panic!("the proxy connected to the refused server (from {from})"),
            Err(e) => panic!("accept: {e}"),
        }
    }
}

fn reroute(fg: &Flowgate, origin: &Origin, to: &str) -> support::Reply {
    curl(&["-x", &fg.proxy(), "-H", &format!("x-reroute-to: {to}"), &origin.url("http", "/asked")])
}

#[test]
fn rerouting_needs_allowed_upstream_hosts_checked_after_dns() {
    let origin = Origin::start(false);
    let elsewhere = Origin::start(false);
    let other = elsewhere.addr.port();

    // No grant: the destination cannot change, whatever it is; the path can.
    let ungranted = manifest(REROUTE, "name = \"reroute\"\n");
    let fg = Flowgate::start(&["-s", &ungranted]);
    for to in [
        format!("http://127.0.0.1:{other}/stolen"),
        "http://169.254.169.254/latest/meta-data/".to_owned(),
        format!("https://127.0.0.1:{}/same-host-other-scheme", origin.addr.port()),
    ] {
        let reply = reroute(&fg, &origin, &to);
        assert_eq!(reply.status, 421, "{to}: {}", reply.body);
        assert!(reply.body.contains("denied: rerouting to"), "{to}: {}", reply.body);
        assert!(reply.body.contains("capabilities.allowed_upstream_hosts"), "{}", reply.body);
    }
    let reply = reroute(&fg, &origin, &format!("http://127.0.0.1:{}/path-only?q=1", origin.addr.port()));
    assert_eq!(reply.status, 200, "{}", reply.body);
    assert_eq!(origin.seen.paths(), ["/path-only?q=1"]);
    assert!(elsewhere.seen.paths().is_empty());

    // Granted what is listed, and nothing else.
    let granted = manifest(REROUTE, "name = \"reroute\"\n[capabilities]\nallowed_upstream_hosts = [\"127.0.0.1\"]\n");
    let fg = Flowgate::start(&["-s", &granted]);
    let reply = reroute(&fg, &origin, &format!("http://127.0.0.1:{other}/moved"));
    assert_eq!(reply.status, 200, "{}", reply.body);
    assert_eq!(elsewhere.seen.paths(), ["/moved"]);
    for to in [
        "http://169.254.169.254/latest/meta-data/".to_owned(),
        format!("http://localhost:{other}/by-name"),
        format!("http://127.0.0.2:{other}/next-door"),
    ] {
        let reply = reroute(&fg, &origin, &to);
        assert_eq!(reply.status, 421, "{to}: {}", reply.body);
        assert!(reply.body.contains("denied: rerouting to"), "{to}: {}", reply.body);
    }

    // A wildcard names no special address: checked after DNS (localhost resolves to
    // loopback), IPv4-mapped forms included; the flow fails and the error is recorded.
    let wildcard = manifest(REROUTE, "name = \"reroute\"\n[capabilities]\nallowed_upstream_hosts = [\"*\"]\n");
    let fg = Flowgate::start(&["-s", &wildcard]);
    for (to, class) in [
        (format!("http://127.0.0.1:{other}/loop"), "127.0.0.1 (loopback)"),
        (format!("http://localhost:{other}/loop-by-name"), "(loopback)"),
        (format!("http://[::ffff:127.0.0.1]:{other}/mapped"), "(loopback)"),
        ("http://169.254.169.254/latest/meta-data/".to_owned(), "169.254.169.254 (link-local)"),
        ("http://10.0.0.1/private".to_owned(), "10.0.0.1 (private)"),
    ] {
        let started = Instant::now();
        let reply = reroute(&fg, &origin, &to);
        assert_eq!(reply.status, 502, "{to}: {}", reply.body);
        assert!(reply.body.contains("plugin reroute rerouted the flow to"), "{to}: {}", reply.body);
        assert!(reply.body.contains(class), "{to}: {}", reply.body);
        assert!(reply.body.contains("which the allow-list does not name"), "{to}: {}", reply.body);
        // Refused before any connection attempt, not after a connect timeout.
        assert!(started.elapsed() < Duration::from_secs(5), "{to} took {:?}", started.elapsed());
    }
    assert_eq!(elsewhere.seen.paths(), ["/moved"], "no refused reroute reached the server");
    let line = fg.flow_line("/latest/meta-data/");
    assert!(line.contains("<< error: plugin reroute rerouted the flow to http://169.254.169.254"), "{line}");
}

#[test]
fn webhook_notify_posts_to_a_local_server_and_refused_addresses_see_no_connection() {
    let server = Recorder::start();
    let refused = Untouched::bind();
    let granted = manifest(
        WEBHOOK_NOTIFY,
        &format!(
            "name = \"hook\"\n[capabilities]\nallowed_outbound_hosts = [\"127.0.0.1\"]\n[config]\nurl = \"http://127.0.0.1:{}/hook\"\n",
            server.port
        ),
    );
    // `*` names no special address: loopback by literal or by name is refused.
    let wildcard = manifest(
        WEBHOOK_NOTIFY,
        &format!(
            "name = \"hook-any\"\n[capabilities]\nallowed_outbound_hosts = [\"*\"]\n[config]\nurl = \"http://127.0.0.1:{}/hook\"\n",
            refused.port()
        ),
    );
    let by_name = manifest(
        WEBHOOK_NOTIFY,
        &format!(
            "name = \"hook-name\"\n[capabilities]\nallowed_outbound_hosts = [\"*\"]\n[config]\nurl = \"http://localhost:{}/hook\"\n",
            refused.port()
        ),
    );
    let fg = Flowgate::start(&["-s", &granted, "-s", &wildcard, "-s", &by_name]);

    // A flow that fails runs the error hook, which posts the note.
    let dead = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let dead_port = dead.local_addr().expect("addr").port();
    drop(dead);
    let reply = curl(&["-x", &fg.proxy(), &format!("http://127.0.0.1:{dead_port}/gone")]);
    assert_eq!(reply.status, 502);
    let requests = server.wait_for(1);
    let posted = &requests[0];
    assert!(posted.starts_with("POST /hook HTTP/1.1\r\n"), "{posted}");
    let lower = posted.to_ascii_lowercase();
    assert!(lower.contains(&format!("host: 127.0.0.1:{}\r\n", server.port)), "{posted}");
    assert!(lower.contains("content-type: application/json\r\n"), "{posted}");
    let body = posted.split_once("\r\n\r\n").expect("a body").1;
    assert!(body.contains(&format!("\"url\":\"http://127.0.0.1:{dead_port}/gone\"")), "{body}");
    assert!(body.contains("\"error\":\"cannot connect to 127.0.0.1"), "{body}");

    // The plugins log what their calls returned.
    let deadline = Instant::now() + Duration::from_secs(10);
    while fg.count_logs("webhook answered 204") == 0 || fg.count_logs("webhook failed") < 2 {
        assert!(Instant::now() < deadline, "{:?}", fg.logs.lock().expect("logs"));
        std::thread::sleep(Duration::from_millis(20));
    }
    let logs = fg.logs.lock().expect("logs").clone();
    let failed: Vec<&String> = logs.iter().filter(|l| l.contains("webhook failed")).collect();
    assert!(failed.iter().all(|l| l.contains("denied: outbound HTTP refused")), "{failed:?}");
    assert!(failed.iter().all(|l| l.contains("(loopback), which the allow-list does not name")), "{failed:?}");
    refused.assert_untouched();
    assert_eq!(server.wait_for(1).len(), 1, "one note, from the granted plugin");
}

#[test]
fn a_moved_connect_tunnel_needs_the_grant_and_goes_where_it_was_checked() {
    let origin = Origin::start(false);
    let elsewhere = Origin::start(false);
    let connect = |fg: &Flowgate, to: &str| {
        let bytes = format!(
            "CONNECT 127.0.0.1:{0} HTTP/1.1\r\nHost: 127.0.0.1:{0}\r\nx-reroute-to: {to}\r\n\r\n\
             GET /tunneled HTTP/1.1\r\nHost: 127.0.0.1:{0}\r\nConnection: close\r\n\r\n",
            origin.addr.port()
        );
        support::raw(fg.port, bytes.as_bytes())
    };
    let to = format!("https://127.0.0.1:{}/", elsewhere.addr.port());

    let ungranted = Flowgate::start(&["-s", &manifest(REROUTE, "name = \"reroute\"\n")]);
    let answer = connect(&ungranted, &to);
    assert!(answer.starts_with("HTTP/1.1 421"), "{answer}");
    assert!(answer.contains("denied: rerouting to"), "{answer}");

    let wildcard = manifest(REROUTE, "name = \"reroute\"\n[capabilities]\nallowed_upstream_hosts = [\"*\"]\n");
    let fg = Flowgate::start(&["-s", &wildcard]);
    let answer = connect(&fg, &to);
    assert!(answer.starts_with("HTTP/1.1 502"), "{answer}");
    assert!(answer.contains("127.0.0.1 (loopback), which the allow-list does not name"), "{answer}");
    assert!(origin.seen.paths().is_empty() && elsewhere.seen.paths().is_empty());

    let granted = manifest(REROUTE, "name = \"reroute\"\n[capabilities]\nallowed_upstream_hosts = [\"127.0.0.1\"]\n");
    let fg = Flowgate::start(&["-s", &granted]);
    let answer = connect(&fg, &to);
    assert!(answer.starts_with("HTTP/1.1 200 Connection established"), "{answer}");
    assert!(answer.contains("path: /tunneled"), "{answer}");
    assert_eq!(elsewhere.seen.paths(), ["/tunneled"]);
    assert!(origin.seen.paths().is_empty());
}
