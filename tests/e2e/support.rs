//! What the end-to-end tests share: an origin server that echoes what reached it (HTTP/1.1
//! and HTTP/2, plain or TLS), the real `flowgate` binary on a free port, and curl.
#![allow(dead_code, reason = "each test binary uses part of it")]

use std::io::{BufRead, BufReader, Read, Write};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::Full;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;

// ---------------------------------------------------------------------------------------
// An origin server that echoes what reached it.

#[derive(Clone, Default)]
pub struct Seen(Arc<Mutex<Vec<String>>>);

impl Seen {
    pub fn paths(&self) -> Vec<String> {
        self.0.lock().expect("origin lock").clone()
    }
}

pub struct Origin {
    pub addr: SocketAddr,
    pub seen: Seen,
    _runtime: tokio::runtime::Runtime,
}

/// A body made of given frames.
pub struct Frames(std::collections::VecDeque<hyper::body::Frame<Bytes>>);

impl futures_core::Stream for Frames {
    type Item = Result<hyper::body::Frame<Bytes>, std::convert::Infallible>;
    fn poll_next(
        mut self: std::pin::Pin<&mut Self>,
        _cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Self::Item>> {
        std::task::Poll::Ready(self.0.pop_front().map(Ok))
    }
}

pub type OriginBody = http_body_util::combinators::BoxBody<Bytes, std::convert::Infallible>;

/// `n` bytes in 256 KiB chunks, produced as the client reads them.
pub fn big_body(n: u64) -> OriginBody {
    use http_body_util::BodyExt;
    let chunk = Bytes::from(vec![b'a'; 256 << 10]);
    let stream = futures_lite_stream(n, chunk);
    http_body_util::StreamBody::new(stream).boxed()
}

pub fn futures_lite_stream(
    n: u64,
    chunk: Bytes,
) -> impl futures_core::Stream<Item = Result<hyper::body::Frame<Bytes>, std::convert::Infallible>> + Send + Sync {
    struct Chunks {
        left: u64,
        chunk: Bytes,
    }
    impl futures_core::Stream for Chunks {
        type Item = Result<hyper::body::Frame<Bytes>, std::convert::Infallible>;
        fn poll_next(
            mut self: std::pin::Pin<&mut Self>,
            _cx: &mut std::task::Context<'_>,
        ) -> std::task::Poll<Option<Self::Item>> {
            if self.left == 0 {
                return std::task::Poll::Ready(None);
            }
            let take = self.left.min(self.chunk.len() as u64);
            self.left -= take;
            let data = self.chunk.slice(..take as usize);
            std::task::Poll::Ready(Some(Ok(hyper::body::Frame::data(data))))
        }
    }
    Chunks { left: n, chunk }
}

pub async fn echo(
    req: hyper::Request<hyper::body::Incoming>,
    seen: Seen,
) -> Result<hyper::Response<OriginBody>, hyper::Error> {
    use http_body_util::BodyExt;
    let path = req.uri().path_and_query().map(|p| p.as_str().to_owned()).unwrap_or_default();
    if path == "/trailers" || path.starts_with("/big/") {
        seen.0.lock().expect("origin lock").push(path.clone());
    }
    if path == "/trailers" {
        let mut trailers = hyper::HeaderMap::new();
        trailers.insert("x-checksum", "abc".parse().expect("valid"));
        let frames = vec![
            hyper::body::Frame::data(Bytes::from_static(b"with trailers")),
            hyper::body::Frame::trailers(trailers),
        ];
        let mut resp = hyper::Response::new(http_body_util::StreamBody::new(Frames(frames.into())).boxed());
        resp.headers_mut().insert("trailer", "x-checksum".parse().expect("valid"));
        return Ok(resp);
    }
    if let Some(n) = path.strip_prefix("/big/").and_then(|n| n.parse::<u64>().ok()) {
        let mut resp = hyper::Response::new(big_body(n));
        resp.headers_mut().insert("content-length", n.into());
        return Ok(resp);
    }
    if let Some((json, cookie)) = json_fixture(&path) {
        let mut resp = hyper::Response::new(Full::new(Bytes::from_static(json.as_bytes())).boxed());
        resp.headers_mut().insert("content-type", "application/json".parse().expect("valid"));
        if let Some(cookie) = cookie {
            resp.headers_mut().insert("set-cookie", cookie.parse().expect("valid"));
        }
        return Ok(resp);
    }
    let mut text =
        format!("<h1>Example Domain</h1>\nmethod: {}\npath: {path}\nversion: {:?}\n", req.method(), req.version());
    for (name, value) in req.headers() {
        text.push_str(&format!("{}: {}\n", name, String::from_utf8_lossy(value.as_bytes())));
    }
    let collected = req.into_body().collect().await?;
    // A request counts as seen once it arrived whole.
    seen.0.lock().expect("origin lock").push(path.clone());
    let trailers = collected.trailers().cloned();
    text.push_str(&format!("body: {}\n", String::from_utf8_lossy(&collected.to_bytes())));
    for (name, value) in trailers.iter().flatten() {
        text.push_str(&format!("trailer {}: {}\n", name, String::from_utf8_lossy(value.as_bytes())));
    }
    let mut resp = hyper::Response::new(Full::new(Bytes::from(text)).boxed());
    resp.headers_mut().insert("content-type", "text/html; charset=utf-8".parse().expect("valid"));
    resp.headers_mut().insert("x-origin", "1".parse().expect("valid"));
    Ok(resp)
}

/// JSON answers for plugins that edit API responses: `/api/user` (a profile) and
/// `/api/session` (secrets, and a session cookie).
fn json_fixture(path: &str) -> Option<(&'static str, Option<&'static str>)> {
    match path {
        "/api/user" => {
            Some((r#"{"user":{"name":"Ada","email":"ada@example.com"},"features":{"beta":false},"plan":"free"}"#, None))
        }
        "/api/session" => Some((
            r#"{"user":"ada","access_token":"eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJhZGEifQ.c2lnbmF0dXJl","aws_key":"AKIAIOSFODNN7EXAMPLE","note":"send Authorization: Bearer abc123.def456 next time","theme":"dark"}"#,
            Some("session=s3cr3t-value; Path=/; HttpOnly"),
        )),
        _ => None,
    }
}

/// Which HTTP versions an origin speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Speaks {
    /// HTTP/1.1 only (ALPN `http/1.1` over TLS).
    Http1,
    /// HTTP/2 only (ALPN `h2` over TLS, prior knowledge over cleartext).
    Http2,
    /// Either (ALPN `h2`, `http/1.1`; the preface decides over cleartext).
    Both,
}

impl Origin {
    /// An HTTP/1.1 origin.
    pub fn start(tls: bool) -> Origin {
        Origin::serve(tls, Speaks::Http1)
    }

    pub fn serve(tls: bool, speaks: Speaks) -> Origin {
        let runtime =
            tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build().expect("tokio");
        let seen = Seen::default();
        let listener = runtime.block_on(tokio::net::TcpListener::bind("127.0.0.1:0")).expect("bind origin");
        let addr = listener.local_addr().expect("origin address");
        let acceptor = tls.then(|| {
            let key = rcgen::KeyPair::generate().expect("key");
            let cert = rcgen::CertificateParams::new(vec!["localhost".to_owned(), "127.0.0.1".to_owned()])
                .expect("params")
                .self_signed(&key)
                .expect("cert");
            let mut config =
                rustls::ServerConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
                    .with_safe_default_protocol_versions()
                    .expect("versions")
                    .with_no_client_auth()
                    .with_single_cert(
                        vec![cert.der().clone()],
                        rustls::pki_types::PrivateKeyDer::Pkcs8(key.serialize_der().into()),
                    )
                    .expect("server config");
            config.alpn_protocols = match speaks {
                Speaks::Http1 => vec![b"http/1.1".to_vec()],
                Speaks::Http2 => vec![b"h2".to_vec()],
                Speaks::Both => vec![b"h2".to_vec(), b"http/1.1".to_vec()],
            };
            tokio_rustls::TlsAcceptor::from(Arc::new(config))
        });
        let seen2 = seen.clone();
        runtime.spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else { continue };
                let seen = seen2.clone();
                let acceptor = acceptor.clone();
                tokio::spawn(async move {
                    let service = service_fn(move |req| echo(req, seen.clone()));
                    match acceptor {
                        Some(acceptor) => {
                            if let Ok(tls) = acceptor.accept(stream).await {
                                let h2 = tls.get_ref().1.alpn_protocol() == Some(b"h2");
                                serve_origin(
                                    TokioIo::new(tls),
                                    service,
                                    if h2 { Speaks::Http2 } else { Speaks::Http1 },
                                )
                                .await;
                            }
                        }
                        None => serve_origin(TokioIo::new(stream), service, speaks).await,
                    }
                });
            }
        });
        Origin { addr, seen, _runtime: runtime }
    }

    pub fn url(&self, scheme: &str, path: &str) -> String {
        let host = if scheme == "https" { "localhost" } else { "127.0.0.1" };
        format!("{scheme}://{host}:{}{path}", self.addr.port())
    }
}

async fn serve_origin<IO, S>(io: IO, service: S, speaks: Speaks)
where
    IO: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
    S: hyper::service::Service<hyper::Request<hyper::body::Incoming>, Response = hyper::Response<OriginBody>>
        + Send
        + Clone
        + 'static,
    S::Future: Send + 'static,
    S::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let executor = hyper_util::rt::TokioExecutor::new();
    let _ = match speaks {
        Speaks::Http1 => {
            hyper::server::conn::http1::Builder::new().serve_connection(io, service).await.map_err(|e| e.to_string())
        }
        Speaks::Http2 => hyper::server::conn::http2::Builder::new(executor)
            .serve_connection(io, service)
            .await
            .map_err(|e| e.to_string()),
        Speaks::Both => hyper_util::server::conn::auto::Builder::new(executor)
            .serve_connection(io, service)
            .await
            .map_err(|e| e.to_string()),
    };
}

// ---------------------------------------------------------------------------------------
// Python test programs (tests/e2e/py).

/// The Python with the test clients' packages (tests/e2e/requirements.txt), as
/// tests/run.sh installs it.
pub fn python() -> PathBuf {
    match std::env::var_os("FLOWGATE_TEST_PYTHON") {
        Some(p) => PathBuf::from(p),
        None => PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../target/e2e-venv/bin/python"),
    }
}

pub fn script(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tests/e2e/py").join(name)
}

// ---------------------------------------------------------------------------------------
// The flowgate binary.

pub fn confdir() -> PathBuf {
    flowgate_tests::scratch_dir("e2e")
}

pub struct Flowgate {
    pub child: Child,
    pub port: u16,
    pub confdir: PathBuf,
    /// Lines printed on stdout (the flows).
    pub lines: Arc<Mutex<Vec<String>>>,
    /// Lines printed on stderr (logs).
    pub logs: Arc<Mutex<Vec<String>>>,
}

impl Flowgate {
    pub fn start(args: &[&str]) -> Flowgate {
        Flowgate::start_in(confdir(), args)
    }

    pub fn start_in(confdir: PathBuf, args: &[&str]) -> Flowgate {
        Flowgate::start_with(confdir, &[], args)
    }

    /// Starts flowgate with extra environment variables (e.g. `FLOWGATE_LOG`). Its stdout
    /// and stderr lines are kept apart (stderr is also passed on, for failing tests).
    pub fn start_with(confdir: PathBuf, env: &[(&str, &str)], args: &[&str]) -> Flowgate {
        Flowgate::spawn(confdir, env, args, false)
    }

    /// Starts flowgate and stops reading its stdout once it has started: a pipe nobody
    /// reads, as a paused terminal is.
    pub fn start_with_stuck_stdout(args: &[&str]) -> Flowgate {
        Flowgate::spawn(confdir(), &[], args, true)
    }

    fn spawn(confdir: PathBuf, env: &[(&str, &str)], args: &[&str], stuck: bool) -> Flowgate {
        let mut child = Command::new(env!("CARGO_BIN_EXE_flowgate"))
            .args(["--listen-host", "127.0.0.1", "-p", "0", "--confdir"])
            .arg(&confdir)
            .args(args)
            .envs(env.iter().copied())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("flowgate starts");
        let lines = Arc::new(Mutex::new(Vec::new()));
        let (tx, rx) = std::sync::mpsc::channel();
        let stdout = child.stdout.take().expect("piped stdout");
        let sink = lines.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if let Some(port) = line.split("listening at 127.0.0.1:").nth(1) {
                    let _ = tx.send(port.trim().parse::<u16>().unwrap_or(0));
                    if stuck {
                        // Holds the pipe open, unread, until the test process ends.
                        loop {
                            std::thread::park();
                        }
                    }
                }
                sink.lock().expect("lines lock").push(line);
            }
        });
        let logs = Arc::new(Mutex::new(Vec::new()));
        let stderr = child.stderr.take().expect("piped stderr");
        let sink = logs.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                eprintln!("{line}");
                sink.lock().expect("lines lock").push(line);
            }
        });
        let port = rx.recv_timeout(Duration::from_secs(60)).expect("flowgate printed its listening address");
        Flowgate { child, port, confdir, lines, logs }
    }

    /// How many log lines (stderr) contain `needle`.
    pub fn count_logs(&self, needle: &str) -> usize {
        self.logs.lock().expect("logs lock").iter().filter(|l| l.contains(needle)).count()
    }

    pub fn proxy(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    pub fn ca(&self) -> PathBuf {
        self.confdir.join("flowgate-ca-cert.pem")
    }

    /// Waits (bounded) until a flow line containing `needle` was printed.
    pub fn flow_line(&self, needle: &str) -> String {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Some(line) = self.lines.lock().expect("lines lock").iter().find(|l| l.contains(needle)) {
                return line.clone();
            }
            assert!(
                Instant::now() < deadline,
                "no flow line with {needle:?} in {:?}",
                self.lines.lock().expect("lines")
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Flowgate {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

// ---------------------------------------------------------------------------------------
// mitmdump (mitmproxy 11, from tests/bench/requirements.txt, installed by tests/run.sh):
// a proxy nobody here wrote, as a peer of flowgate's.

pub struct Mitmdump {
    pub child: Child,
    pub port: u16,
    pub confdir: PathBuf,
}

impl Mitmdump {
    /// mitmdump listening on 127.0.0.1 with `args`, once its port accepts.
    pub fn start(args: &[&str]) -> Mitmdump {
        let bin = std::env::var_os("FLOWGATE_BENCH_MITMDUMP")
            .map(PathBuf::from)
            .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../target/bench-venv/bin/mitmdump"));
        let port = {
            let probe = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
            probe.local_addr().expect("addr").port()
        };
        let dir = confdir();
        let child = Command::new(&bin)
            .args(["--listen-host", "127.0.0.1", "-p", &port.to_string(), "-q", "--set"])
            .arg(format!("confdir={}", dir.display()))
            .args(args)
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap_or_else(|e| panic!("{} runs (tests/run.sh installs it): {e}", bin.display()));
        let mut mitm = Mitmdump { child, port, confdir: dir };
        let deadline = Instant::now() + Duration::from_secs(30);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(Instant::now() < deadline, "mitmdump did not listen on {port}");
            assert!(mitm.child.try_wait().expect("mitmdump status").is_none(), "mitmdump exited");
            std::thread::sleep(Duration::from_millis(50));
        }
        mitm
    }

    /// Its CA certificate (PEM).
    pub fn ca(&self) -> PathBuf {
        self.confdir.join("mitmproxy-ca-cert.pem")
    }
}

impl Drop for Mitmdump {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

// nginx (Debian's, installed by tests/run.sh through tests/bench/tools.sh): an origin
// nobody here wrote, for what it does its own way (gzip on the fly, chunked).

pub struct Nginx {
    pub child: Child,
    /// Cleartext HTTP/1.1.
    pub port: u16,
    /// TLS with ALPN `h2` and `http/1.1`, a self-signed certificate for `localhost`.
    pub tls_port: u16,
    pub dir: PathBuf,
}

impl Nginx {
    /// nginx on 127.0.0.1 serving `files` (path, content) from its root, with `server_conf`
    /// added to its `server` block (e.g. `gzip on;`), once its port accepts.
    pub fn start(files: &[(&str, &[u8])], server_conf: &str) -> Nginx {
        let dir = confdir();
        let www = dir.join("www");
        std::fs::create_dir_all(&www).expect("temp dir");
        for (path, content) in files {
            let path = www.join(path);
            std::fs::create_dir_all(path.parent().expect("in www")).expect("temp dir");
            std::fs::write(path, content).expect("write");
        }
        let free_port = || {
            let probe = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
            probe.local_addr().expect("addr").port()
        };
        let (port, tls_port) = (free_port(), free_port());
        let key = rcgen::KeyPair::generate().expect("key");
        let cert = rcgen::CertificateParams::new(vec!["localhost".to_owned()])
            .expect("params")
            .self_signed(&key)
            .expect("cert");
        std::fs::write(dir.join("cert.pem"), cert.pem()).expect("write");
        std::fs::write(dir.join("key.pem"), key.serialize_pem()).expect("write");
        let d = dir.display();
        let conf = format!(
            "worker_processes 1;\ndaemon off;\nerror_log {d}/error.log warn;\npid {d}/nginx.pid;\n\
             events {{ worker_connections 256; }}\nhttp {{\n  access_log off;\n  types {{ application/json json; text/html html; }}\n\
             client_body_temp_path {d}/tmp-body;\n  proxy_temp_path {d}/tmp-proxy;\n  fastcgi_temp_path {d}/tmp-fcgi;\n\
             uwsgi_temp_path {d}/tmp-uwsgi;\n  scgi_temp_path {d}/tmp-scgi;\n\
             server {{ listen 127.0.0.1:{port}; listen 127.0.0.1:{tls_port} ssl http2;\n\
             ssl_certificate {d}/cert.pem; ssl_certificate_key {d}/key.pem; root {d}/www; {server_conf} }}\n}}\n"
        );
        std::fs::write(dir.join("nginx.conf"), conf).expect("write");
        // nginx's workers run as another user.
        fn readable(path: &Path) {
            use std::os::unix::fs::PermissionsExt;
            let mode = if path.is_dir() { 0o755 } else { 0o644 };
            std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).expect("chmod");
            for entry in std::fs::read_dir(path).into_iter().flatten().flatten() {
                readable(&entry.path());
            }
        }
        readable(&dir);
        let bin = ["/usr/sbin/nginx", "nginx"].into_iter().find(|b| Path::new(b).exists()).unwrap_or("nginx");
        let child = Command::new(bin)
            .arg("-c")
            .arg(dir.join("nginx.conf"))
            .arg("-e")
            .arg(dir.join("error.log"))
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap_or_else(|e| panic!("nginx runs (tests/run.sh installs it): {e}"));
        let mut nginx = Nginx { child, port, tls_port, dir };
        let deadline = Instant::now() + Duration::from_secs(20);
        while [port, tls_port].iter().any(|p| std::net::TcpStream::connect(("127.0.0.1", *p)).is_err()) {
            assert!(Instant::now() < deadline, "nginx did not listen on {port}");
            if nginx.child.try_wait().expect("nginx status").is_some() {
                let log = std::fs::read_to_string(nginx.dir.join("error.log")).unwrap_or_default();
                panic!("nginx exited: {log}");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        nginx
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }

    /// `https://localhost:PORT/path` on the TLS port.
    pub fn tls_url(&self, path: &str) -> String {
        format!("https://localhost:{}{path}", self.tls_port)
    }
}

impl Drop for Nginx {
    fn drop(&mut self) {
        // SIGTERM is nginx's fast shutdown: the master takes its worker with it.
        let _ = Command::new("kill").arg(self.child.id().to_string()).status();
        let _ = self.child.wait();
    }
}

/// Debian's headless Chromium loading `url` through `fg`, flowgate's CA trusted by its
/// public key hash (SPKI pinning, as Chromium documents): the page's DOM once it loaded.
pub fn chromium_dom(fg: &Flowgate, url: &str) -> String {
    let spki = Command::new("sh")
        .arg("-c")
        .arg(format!(
            "openssl x509 -in '{}' -pubkey -noout | openssl pkey -pubin -outform der | openssl dgst -sha256 -binary | base64",
            fg.ca().display()
        ))
        .output()
        .expect("openssl runs");
    let spki = String::from_utf8_lossy(&spki.stdout).trim().to_owned();
    assert_eq!(spki.len(), 44, "a base64 SHA-256: {spki:?}");
    let profile = confdir();
    let out = Command::new("chromium")
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--proxy-bypass-list=<-loopback>",
        ])
        .arg(format!("--user-data-dir={}", profile.display()))
        .arg(format!("--proxy-server={}", fg.proxy()))
        .arg(format!("--ignore-certificate-errors-spki-list={spki}"))
        .arg("--dump-dom")
        .arg(url)
        .output()
        .expect("chromium runs (CI installs Debian's chromium)");
    let _ = std::fs::remove_dir_all(profile);
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[derive(Debug)]
pub struct Reply {
    pub status: u16,
    pub headers: String,
    pub body: String,
}

pub fn curl(args: &[&str]) -> Reply {
    let out = Command::new("curl")
        .args(["-s", "-S", "--max-time", "20", "-D", "-", "-o", "-"])
        .args(args)
        .output()
        .expect("curl runs (is it installed?)");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(out.status.success(), "curl {args:?} failed: {}\n{text}", String::from_utf8_lossy(&out.stderr));
    // With a proxy tunnel curl prints the CONNECT response head first.
    let mut rest = text.as_str();
    loop {
        let (head, body) = rest.split_once("\r\n\r\n").expect("a response head");
        let status: u16 = head.split_whitespace().nth(1).and_then(|s| s.parse().ok()).expect("a status");
        let informational = (100..200).contains(&status);
        if informational
            || head.starts_with("HTTP/1.1 200 Connection established")
            || (status == 200 && body.starts_with("HTTP/"))
        {
            rest = body;
            continue;
        }
        return Reply { status, headers: head.to_ascii_lowercase(), body: body.to_owned() };
    }
}

pub fn manifest(wasm: &str, text: &str) -> String {
    flowgate_tests::manifest(wasm, text).display().to_string()
}

pub fn raw(port: u16, bytes: &[u8]) -> String {
    let mut stream = std::net::TcpStream::connect(("127.0.0.1", port)).expect("connect");
    stream.set_read_timeout(Some(Duration::from_secs(10))).expect("timeout");
    stream.write_all(bytes).expect("write");
    let mut out = Vec::new();
    let _ = stream.read_to_end(&mut out);
    String::from_utf8_lossy(&out).into_owned()
}

pub fn peak_rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("proc status");
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmHWM")
}
