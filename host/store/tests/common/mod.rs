//! Flows the tests write and read: one of each protocol with every optional part set, and
//! random valid flows for property tests (built through the flow model's public API).

#![allow(dead_code, reason = "each test binary uses a part of the helpers")]

use std::net::{IpAddr, SocketAddr};

use bytes::Bytes;
use flowgate_flow::{
    Address, Client, DataMessage, DnsFlow, DnsMessage, Flow, FlowError, Headers, HttpFlow, HttpVersion, MessageKind,
    Payload, Question, Replay, Request, ResourceRecord, Response, Server, Timestamp, TlsInfo, Uuid, WebSocketClose,
    WebSocketData, WebSocketMessage,
};
use proptest::collection::vec;
use proptest::option::of;
use proptest::prelude::*;
use proptest::sample::select;

pub const T0: u64 = 1_700_000_000_000_000;

pub fn at(micros: u64) -> Timestamp {
    Timestamp::from_micros(T0 + micros)
}

pub fn id(n: u8) -> Uuid {
    Uuid::from_random_bytes([n; 16])
}

pub fn client(n: u8) -> Client {
    let mut client = Client::new(
        id(100 + n),
        "10.0.0.1:50000".parse().expect("fixture"),
        "10.0.0.2:8080".parse().expect("fixture"),
        at(0),
    );
    client.tls = Some(TlsInfo {
        sni: Some("example.com".into()),
        alpn: Some("h2".into()),
        version: Some("TLSv1.3".into()),
        cipher: Some("TLS_AES_128_GCM_SHA256".into()),
        certificate_chain: vec![Bytes::from_static(b"\x30\x82leaf"), Bytes::from_static(b"\x30\x82ca")],
    });
    client.timestamp_tls_setup = Some(at(500));
    client.timestamp_end = Some(at(900_000));
    client
}

pub fn server(n: u8) -> Server {
    let mut server = Server::new(id(200 + n), Address::new("example.com", 443).expect("fixture"));
    server.peer = Some("93.184.216.34:443".parse().expect("fixture"));
    server.local = Some("10.0.0.2:40000".parse().expect("fixture"));
    server.timestamp_start = Some(at(1_000));
    server.timestamp_tcp_setup = Some(at(2_000));
    server.timestamp_tls_setup = Some(at(3_500));
    server.timestamp_end = Some(at(800_000));
    server
}

pub fn http(n: u8) -> Flow {
    let mut request = Request::new("POST", "https://example.com/upload?x=1&y=two%20words").expect("fixture");
    request.version = HttpVersion::Http2;
    request.headers =
        Headers::from_pairs([("Content-Type", "application/octet-stream"), ("Cookie", "a=1; b=2")]).expect("fixture");
    request.body = Some(Bytes::from_static(b"\x00\x01\xff binary body"));
    request.timestamp_start = Some(at(4_000));
    request.timestamp_end = Some(at(5_000));
    let mut response = Response::new(201, "Created").expect("fixture");
    response.version = HttpVersion::Http2;
    response.headers = Headers::from_pairs([("Content-Type", "text/plain"), ("Set-Cookie", "sid=x; Path=/; HttpOnly")])
        .expect("fixture");
    response.body = Some(Bytes::from_static("héllo text body".as_bytes()));
    response.trailers = Headers::from_pairs([("Grpc-Status", "0")]).expect("fixture");
    response.timestamp_start = Some(at(7_000));
    response.timestamp_end = Some(at(9_000));
    let mut http = HttpFlow::new(request);
    http.response = Some(response);
    let mut flow = Flow::new(id(n), client(n), at(4_000), Payload::Http(http));
    flow.server = Some(server(n));
    flow.metadata.insert("plugin".into(), "note".into());
    flow.marked = ":star:".into();
    flow.comment = "a comment".into();
    flow.is_replay = Some(Replay::Request);
    flow
}

pub fn failed(n: u8) -> Flow {
    let mut request = Request::new("GET", "http://127.0.0.1:9/refused").expect("fixture");
    request.body = Some(Bytes::new());
    request.timestamp_start = Some(at(10));
    request.timestamp_end = Some(at(20));
    let mut flow = Flow::new(id(n), client(n), at(10), Payload::Http(HttpFlow::new(request)));
    flow.client.tls = None;
    flow.error = Some(FlowError { message: "connection refused".into(), timestamp: at(30) });
    flow
}

pub fn websocket(n: u8) -> Flow {
    let mut flow = http(n);
    let Payload::Http(http) = &mut flow.payload else { unreachable!("http() makes an HTTP flow") };
    http.request.method = "GET".into();
    http.request.body = Some(Bytes::new());
    http.response.as_mut().expect("http() has a response").status = 101;
    http.websocket = Some(WebSocketData {
        messages: ws_messages(0, 3),
        close: Some(WebSocketClose { code: Some(1000), reason: "bye".into(), closed_by_client: true }),
        timestamp_end: Some(at(700_000)),
    });
    flow
}

pub fn ws_messages(from: u64, count: u64) -> Vec<WebSocketMessage> {
    (from..from + count)
        .map(|i| WebSocketMessage {
            from_client: i % 2 == 0,
            kind: if i % 3 == 2 { MessageKind::Binary } else { MessageKind::Text },
            data: Bytes::from(format!("message {i}")),
            timestamp: at(10_000 + i),
        })
        .collect()
}

pub fn data_messages(from: u64, count: u64) -> Vec<DataMessage> {
    (from..from + count)
        .map(|i| DataMessage {
            from_client: i % 2 == 0,
            content: Bytes::from(vec![i as u8; 5]),
            timestamp: at(20_000 + i),
        })
        .collect()
}

pub fn tcp(n: u8) -> Flow {
    let mut flow = Flow::new(id(n), client(n), at(0), Payload::Tcp(data_messages(0, 4)));
    flow.server = Some(server(n));
    flow
}

pub fn udp(n: u8) -> Flow {
    let mut flow = Flow::new(id(n), client(n), at(0), Payload::Udp(data_messages(0, 2)));
    flow.server = Some(server(n));
    flow
}

pub fn dns(n: u8) -> Flow {
    let question = Question { name: "example.com".into(), record_type: 1, class: 1 };
    let query = DnsMessage { id: 0x1234, flags: 0x0100, questions: vec![question.clone()], ..DnsMessage::default() };
    let answer =
        ResourceRecord { name: "example.com".into(), record_type: 1, class: 1, ttl: 300, data: vec![192, 0, 2, 7] };
    let response = DnsMessage {
        id: 0x1234,
        flags: 0x8180,
        questions: vec![question],
        answers: vec![answer],
        ..DnsMessage::default()
    };
    let payload = Payload::Dns(DnsFlow {
        query,
        timestamp_query: Some(at(1)),
        response: Some(response),
        timestamp_response: Some(at(2)),
    });
    let mut flow = Flow::new(id(n), client(n), at(1), payload);
    flow.client.tls = None;
    flow
}

// ---- random flows ----

fn uuid() -> impl Strategy<Value = Uuid> {
    any::<[u8; 16]>().prop_map(Uuid::from_random_bytes)
}

fn timestamp() -> impl Strategy<Value = Timestamp> {
    any::<u64>().prop_map(Timestamp::from_micros)
}

fn content(max: usize) -> impl Strategy<Value = Bytes> {
    vec(any::<u8>(), 0..=max).prop_map(Bytes::from)
}

fn socket_addr() -> impl Strategy<Value = SocketAddr> {
    (any::<IpAddr>(), any::<u16>()).prop_map(|(ip, port)| SocketAddr::new(ip, port))
}

fn headers() -> impl Strategy<Value = Headers> {
    let byte = prop_oneof![Just(b'\t'), 0x20u8..0x7f, 0x80u8..=0xff];
    vec(("[A-Za-z0-9!#$%&'*+.^_`|~-]{1,12}", vec(byte, 0..16)), 0..4)
        .prop_map(|fields| Headers::from_pairs(fields).expect("generated fields are valid"))
}

fn tls() -> impl Strategy<Value = TlsInfo> {
    (of("[a-z.]{1,12}"), of("[a-z0-9/.]{1,8}"), vec(content(16), 0..3)).prop_map(|(sni, alpn, certificate_chain)| {
        TlsInfo { sni, alpn, version: Some("TLSv1.3".into()), cipher: None, certificate_chain }
    })
}

fn random_client() -> impl Strategy<Value = Client> {
    (uuid(), socket_addr(), socket_addr(), timestamp(), of(tls()), of(timestamp())).prop_map(
        |(id, peer, local, start, tls, end)| {
            let mut client = Client::new(id, peer, local, start);
            client.tls = tls;
            client.timestamp_end = end;
            client
        },
    )
}

fn random_server() -> impl Strategy<Value = Server> {
    (uuid(), "[a-z0-9.-]{1,20}", 1..=u16::MAX, of(socket_addr()), of(timestamp())).prop_map(
        |(id, host, port, peer, start)| {
            let mut server = Server::new(id, Address::new(&host, port).expect("generated address is valid"));
            server.peer = peer;
            server.timestamp_start = start;
            server
        },
    )
}

fn random_http() -> impl Strategy<Value = HttpFlow> {
    let request = ("[A-Z]{1,8}", "/[!-~]{0,20}", headers(), of(content(64)), of(timestamp())).prop_map(
        |(method, path, headers, body, start)| {
            let mut request = Request::new(&method, "https://example.com/").expect("valid");
            request.set_path(&path).expect("generated path is valid");
            request.headers = headers;
            request.body = body;
            request.timestamp_start = start;
            request
        },
    );
    let response =
        (100..=999u16, headers(), of(content(64)), headers()).prop_map(|(status, headers, body, trailers)| {
            let mut response = Response::new(status, "Reason").expect("valid");
            response.headers = headers;
            response.body = body;
            response.trailers = trailers;
            response
        });
    let message = (any::<bool>(), content(32), timestamp()).prop_map(|(from_client, data, timestamp)| {
        WebSocketMessage { from_client, kind: MessageKind::Binary, data, timestamp }
    });
    let websocket = vec(message, 0..4).prop_map(|messages| WebSocketData { messages, ..WebSocketData::default() });
    (request, of(response), of(websocket)).prop_map(|(request, response, websocket)| HttpFlow {
        request,
        response,
        websocket,
    })
}

fn random_data() -> impl Strategy<Value = Vec<DataMessage>> {
    vec((any::<bool>(), content(64), timestamp()), 0..4).prop_map(|messages| {
        messages
            .into_iter()
            .map(|(from_client, content, timestamp)| DataMessage { from_client, content, timestamp })
            .collect()
    })
}

fn random_dns() -> impl Strategy<Value = DnsFlow> {
    ("[a-z]{1,10}\\.[a-z]{2,3}", any::<u16>(), vec(any::<u8>(), 0..8)).prop_map(|(name, id, data)| {
        let question = Question { name: name.clone(), record_type: 1, class: 1 };
        let answer = ResourceRecord { name, record_type: 1, class: 1, ttl: 60, data };
        DnsFlow {
            query: DnsMessage { id, questions: vec![question], ..DnsMessage::default() },
            response: Some(DnsMessage { id, answers: vec![answer], ..DnsMessage::default() }),
            ..DnsFlow::default()
        }
    })
}

pub fn random_flow() -> impl Strategy<Value = Flow> {
    let payload = prop_oneof![
        random_http().prop_map(Payload::Http),
        random_data().prop_map(Payload::Tcp),
        random_data().prop_map(Payload::Udp),
        random_dns().prop_map(Payload::Dns),
    ];
    let annotations = (
        of(random_server()),
        of(("[ -~]{0,20}", timestamp())),
        "[ -~]{0,8}",
        "[ -~]{0,20}",
        of(select(vec![Replay::Request, Replay::Response])),
    );
    (uuid(), random_client(), timestamp(), payload, annotations).prop_map(
        |(id, client, created, payload, (server, error, marked, comment, is_replay))| {
            let mut flow = Flow::new(id, client, created, payload);
            flow.server = server;
            flow.error = error.map(|(message, timestamp)| FlowError { message, timestamp });
            flow.marked = marked;
            flow.comment = comment;
            flow.is_replay = is_replay;
            flow
        },
    )
}
