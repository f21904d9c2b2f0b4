//! Property test: random flows of every kind, built through the public API only, come back
//! equal from serde_json. Generated values are valid (deserializing refuses invalid ones,
//! which the unit tests check), and cover every optional part of the model.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use bytes::Bytes;
use flowgate_flow::{
    Address, BodyMode, Client, DataMessage, DnsFlow, DnsMessage, Flow, FlowError, FlowKind, Headers, HttpFlow,
    HttpVersion, MessageKind, Payload, Question, Replay, Request, ResourceRecord, Response, Scheme, Server, Timestamp,
    TlsInfo, Uuid, WebSocketClose, WebSocketData, WebSocketMessage,
};
use proptest::collection::{btree_map, vec};
use proptest::option::of;
use proptest::prelude::*;
use proptest::sample::select;

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

/// A host as `check_host` accepts it: a name, an IPv4 address or a bracketed IPv6 literal.
fn host() -> impl Strategy<Value = String> {
    prop_oneof![
        "[a-zA-Z0-9._~-]{1,30}",
        any::<Ipv4Addr>().prop_map(|ip| ip.to_string()),
        any::<Ipv6Addr>().prop_map(|ip| format!("[{ip}]")),
    ]
}

const TOKEN: &str = "[A-Za-z0-9!#$%&'*+.^_`|~-]{1,12}";

fn headers() -> impl Strategy<Value = Headers> {
    // Field values: tab, visible ASCII, space and obs-text.
    let byte = prop_oneof![Just(b'\t'), 0x20u8..0x7f, 0x80u8..=0xff];
    vec((TOKEN, vec(byte, 0..16)), 0..5)
        .prop_map(|fields| Headers::from_pairs(fields).expect("generated fields are valid"))
}

fn request() -> impl Strategy<Value = Request> {
    let target = (
        TOKEN,
        select(vec![Scheme::Http, Scheme::Https]),
        host(),
        1..=u16::MAX,
        prop_oneof![Just("*".to_owned()), "/[!-~é漢]{0,20}"],
    );
    let version = select(vec![HttpVersion::Http10, HttpVersion::Http11, HttpVersion::Http2, HttpVersion::Http3]);
    let message = (headers(), of(content(64)), headers(), body_mode(), of(timestamp()), of(timestamp()));
    (target, version, message).prop_map(
        |(
            (method, scheme, host, port, path),
            version,
            (headers, body, trailers, body_mode, timestamp_start, timestamp_end),
        )| Request {
            method,
            scheme,
            host,
            port,
            path,
            version,
            headers,
            body,
            trailers,
            body_mode,
            timestamp_start,
            timestamp_end,
        },
    )
}

fn body_mode() -> impl Strategy<Value = BodyMode> {
    select(vec![BodyMode::Pass, BodyMode::Stream, BodyMode::Buffer])
}

fn response() -> impl Strategy<Value = Response> {
    let version = select(vec![HttpVersion::Http10, HttpVersion::Http11, HttpVersion::Http2, HttpVersion::Http3]);
    let message = (headers(), of(content(64)), headers(), body_mode(), of(timestamp()), of(timestamp()));
    (100..=999u16, "[\t -~é]{0,20}", version, message).prop_map(
        |(status, reason, version, (headers, body, trailers, body_mode, timestamp_start, timestamp_end))| {
            let mut response = Response::new(status, &reason).expect("generated status and reason are valid");
            response.version = version;
            response.headers = headers;
            response.body = body;
            response.trailers = trailers;
            response.body_mode = body_mode;
            response.timestamp_start = timestamp_start;
            response.timestamp_end = timestamp_end;
            response
        },
    )
}

/// A valid message: text is UTF-8, control frames carry at most 125 bytes.
fn websocket_message() -> impl Strategy<Value = WebSocketMessage> {
    let kind_and_data = prop_oneof![
        any::<String>().prop_map(|text| (MessageKind::Text, Bytes::from(text))),
        content(200).prop_map(|data| (MessageKind::Binary, data)),
        (select(vec![MessageKind::Ping, MessageKind::Pong, MessageKind::Close]), content(125)),
    ];
    (any::<bool>(), kind_and_data, timestamp()).prop_map(|(from_client, (kind, data), timestamp)| WebSocketMessage {
        from_client,
        kind,
        data,
        timestamp,
    })
}

fn websocket() -> impl Strategy<Value = WebSocketData> {
    let close = (of(any::<u16>()), any::<String>(), any::<bool>())
        .prop_map(|(code, reason, closed_by_client)| WebSocketClose { code, reason, closed_by_client });
    (vec(websocket_message(), 0..5), of(close), of(timestamp()))
        .prop_map(|(messages, close, timestamp_end)| WebSocketData { messages, close, timestamp_end })
}

fn data_messages() -> impl Strategy<Value = Vec<DataMessage>> {
    let message = (any::<bool>(), content(64), timestamp()).prop_map(|(from_client, content, timestamp)| DataMessage {
        from_client,
        content,
        timestamp,
    });
    vec(message, 0..5)
}

/// A name `DnsMessage::validate` accepts: the root, or labels of printable ASCII.
fn dns_name() -> impl Strategy<Value = String> {
    prop_oneof![Just(".".to_owned()), Just(String::new()), "([a-zA-Z0-9_*-]{1,12}\\.){0,4}[a-zA-Z0-9_*-]{1,12}\\.?"]
}

fn dns_message() -> impl Strategy<Value = DnsMessage> {
    let question = (dns_name(), any::<u16>(), any::<u16>()).prop_map(|(name, record_type, class)| Question {
        name,
        record_type,
        class,
    });
    let record = || {
        (dns_name(), any::<u16>(), any::<u16>(), any::<u32>(), vec(any::<u8>(), 0..20))
            .prop_map(|(name, record_type, class, ttl, data)| ResourceRecord { name, record_type, class, ttl, data })
    };
    let records = || vec(record(), 0..3);
    (any::<u16>(), any::<u16>(), vec(question, 0..3), records(), records(), records()).prop_map(
        |(id, flags, questions, answers, authorities, additionals)| DnsMessage {
            id,
            flags,
            questions,
            answers,
            authorities,
            additionals,
        },
    )
}

fn dns() -> impl Strategy<Value = DnsFlow> {
    (dns_message(), of(timestamp()), of(dns_message()), of(timestamp())).prop_map(
        |(query, timestamp_query, response, timestamp_response)| DnsFlow {
            query,
            timestamp_query,
            response,
            timestamp_response,
        },
    )
}

fn payload() -> impl Strategy<Value = Payload> {
    let http = (request(), of(response()), of(websocket()))
        .prop_map(|(request, response, websocket)| Payload::Http(HttpFlow { request, response, websocket }));
    prop_oneof![
        http,
        data_messages().prop_map(Payload::Tcp),
        data_messages().prop_map(Payload::Udp),
        dns().prop_map(Payload::Dns),
    ]
}

fn tls() -> impl Strategy<Value = TlsInfo> {
    (
        of("[a-z0-9.-]{1,20}"),
        of(prop_oneof![Just("h2".to_owned()), Just("http/1.1".to_owned()), any::<String>()]),
        of(select(vec!["TLSv1.2".to_owned(), "TLSv1.3".to_owned()])),
        of(any::<String>()),
        vec(content(48), 0..3),
    )
        .prop_map(|(sni, alpn, version, cipher, certificate_chain)| TlsInfo {
            sni,
            alpn,
            version,
            cipher,
            certificate_chain,
        })
}

fn client() -> impl Strategy<Value = Client> {
    (uuid(), socket_addr(), socket_addr(), of(tls()), timestamp(), of(timestamp()), of(timestamp())).prop_map(
        |(id, peer, local, tls, timestamp_start, timestamp_tls_setup, timestamp_end)| Client {
            id,
            peer,
            local,
            tls,
            timestamp_start,
            timestamp_tls_setup,
            timestamp_end,
        },
    )
}

fn server() -> impl Strategy<Value = Server> {
    let address = (host(), 1..=u16::MAX).prop_map(|(h, p)| Address::new(&h, p).expect("generated address is valid"));
    let timestamps = (of(timestamp()), of(timestamp()), of(timestamp()), of(timestamp()));
    (uuid(), address, of(socket_addr()), of(socket_addr()), of(tls()), timestamps).prop_map(
        |(
            id,
            address,
            peer,
            local,
            tls,
            (timestamp_start, timestamp_tcp_setup, timestamp_tls_setup, timestamp_end),
        )| {
            Server {
                id,
                address,
                peer,
                local,
                tls,
                timestamp_start,
                timestamp_tcp_setup,
                timestamp_tls_setup,
                timestamp_end,
            }
        },
    )
}

fn flow() -> impl Strategy<Value = Flow> {
    let error = (any::<String>(), timestamp()).prop_map(|(message, timestamp)| FlowError { message, timestamp });
    let annotations = (
        btree_map(any::<String>(), any::<String>(), 0..4),
        prop_oneof![Just(String::new()), Just(":default:".to_owned()), any::<String>()],
        any::<String>(),
        of(select(vec![Replay::Request, Replay::Response])),
    );
    (uuid(), client(), of(server()), of(error), annotations, timestamp(), payload()).prop_map(
        |(id, client, server, error, (metadata, marked, comment, is_replay), timestamp_created, payload)| Flow {
            id,
            client,
            server,
            error,
            metadata,
            marked,
            comment,
            is_replay,
            timestamp_created,
            payload,
        },
    )
}

proptest! {
    #[test]
    fn flows_round_trip_through_json(flow in flow()) {
        let json = serde_json::to_string(&flow).expect("a flow serializes");
        let back: Flow = serde_json::from_str(&json).map_err(|e| TestCaseError::fail(format!("{e}: {json}")))?;
        prop_assert_eq!(back.kind(), flow.kind());
        prop_assert_eq!(back, flow);
    }
}

#[test]
fn every_kind_is_generated() {
    use proptest::strategy::ValueTree;
    use proptest::test_runner::TestRunner;

    let mut runner = TestRunner::deterministic();
    let strategy = flow();
    let mut kinds = Vec::new();
    for _ in 0..200 {
        let kind = strategy.new_tree(&mut runner).expect("strategy makes values").current().kind();
        if !kinds.contains(&kind) {
            kinds.push(kind);
        }
    }
    kinds.sort_by_key(|k| *k as u8);
    assert_eq!(kinds, [FlowKind::Http, FlowKind::WebSocket, FlowKind::Tcp, FlowKind::Udp, FlowKind::Dns]);
}
