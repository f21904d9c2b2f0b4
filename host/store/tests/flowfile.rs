//! flowgate's flow file: round trips, a file cut at every byte offset, damaged bytes,
//! the record size limit, appending, and a property test over random flows.

mod common;

use std::io::{Cursor, Seek, SeekFrom, Write};

use common::*;
use flowgate_flow::{Flow, Payload};
use flowgate_store::flowfile::{
    self, Damage, Event, FlowSet, HEADER_LEN, NewMessages, RECORD_HEAD_LEN, ReadOptions, Reader, Record, Writer,
};
use proptest::prelude::*;

/// A multi-record file of every protocol, long-lived flows written in increments; returns
/// the bytes, the records in order and each record's end offset.
fn sample_file() -> (Vec<u8>, Vec<Record>, Vec<u64>) {
    let mut ws_start = websocket(3);
    let Payload::Http(h) = &mut ws_start.payload else { unreachable!("websocket() is HTTP") };
    let ws = h.websocket.as_mut().expect("websocket() has one");
    ws.messages.truncate(1);
    ws.close = None;
    let mut ws_end = websocket(3);
    let Payload::Http(h) = &mut ws_end.payload else { unreachable!("websocket() is HTTP") };
    h.websocket.as_mut().expect("websocket() has one").messages.clear();
    let mut tcp_start = tcp(4);
    tcp_start.payload = Payload::Tcp(data_messages(0, 1));
    let records = vec![
        Record::Flow(Box::new(http(1))),
        Record::Flow(Box::new(failed(2))),
        Record::Flow(Box::new(ws_start)),
        Record::Flow(Box::new(tcp_start)),
        Record::Messages { id: id(3), messages: NewMessages::WebSocket(ws_messages(1, 2)) },
        Record::Messages { id: id(4), messages: NewMessages::Tcp(data_messages(1, 3)) },
        Record::Flow(Box::new(dns(5))),
        Record::Update(Box::new(ws_end)),
        Record::Flow(Box::new(udp(6))),
    ];
    let mut writer = Writer::new(Vec::new()).expect("writes to memory");
    let mut ends = Vec::new();
    for record in &records {
        writer.write(record).expect("writes to memory");
        ends.push(writer.offset());
    }
    (writer.into_inner(), records, ends)
}

/// The flows the sample file holds once its records are applied.
fn sample_flows() -> Vec<Flow> {
    vec![http(1), failed(2), websocket(3), tcp(4), dns(5), udp(6)]
}

fn events(bytes: &[u8]) -> Vec<Event> {
    let mut reader = Reader::new(bytes).expect("a flow file");
    let mut events = Vec::new();
    while let Some(event) = reader.next_event().expect("reading memory cannot fail") {
        events.push(event);
    }
    events
}

#[test]
fn records_round_trip_and_updates_give_the_latest_state() {
    let (bytes, records, _) = sample_file();
    let read: Vec<Record> = Reader::new(&bytes[..]).expect("a flow file").map(|r| r.expect("memory")).collect();
    assert_eq!(read, records);
    let contents = flowfile::read(&bytes[..]).expect("a flow file");
    assert_eq!(contents.flows, sample_flows());
    assert_eq!(contents.stats.records, records.len() as u64);
    assert_eq!((contents.stats.torn_tail, contents.stats.skipped, contents.stats.unreadable), (None, 0, 0));
    assert_eq!(contents.stats.valid_end, bytes.len() as u64);
    assert_eq!(contents.unapplied, flowfile::FlowSetStats::default());
}

#[test]
fn a_file_cut_at_every_offset_reads_every_whole_record_before_the_cut() {
    let (bytes, records, ends) = sample_file();
    for cut in 0..=bytes.len() {
        let mut reader = Reader::new(&bytes[..cut]).unwrap_or_else(|e| panic!("cut at {cut}: {e}"));
        let mut read = Vec::new();
        let mut torn = None;
        while let Some(event) = reader.next_event().expect("memory") {
            match event {
                Event::Record { record, .. } => read.push(record),
                Event::TornTail { offset, .. } => torn = Some(offset),
                other => panic!("cut at {cut}: unexpected {other:?}"),
            }
        }
        let whole = ends.iter().filter(|end| **end <= cut as u64).count();
        assert_eq!(read, records[..whole], "cut at {cut}");
        let last_end = if whole == 0 { HEADER_LEN as u64 } else { ends[whole - 1] };
        let expect_torn = if cut < HEADER_LEN {
            Some(0)
        } else if cut as u64 == last_end {
            None
        } else {
            Some(last_end)
        };
        assert_eq!(torn, expect_torn, "cut at {cut}");
        assert_eq!(reader.stats().torn_tail, expect_torn, "cut at {cut}");
    }
}

#[test]
fn damage_in_the_middle_is_skipped_and_counted() {
    let (bytes, records, ends) = sample_file();
    let second = ends[0] as usize;
    // A flipped payload byte (bad checksum), a flipped marker, and a length over the limit.
    for (what, at, damage) in [
        ("payload", second + RECORD_HEAD_LEN + 10, Damage::Checksum),
        ("marker", second, Damage::Marker),
        ("length", second + 7, Damage::TooLarge(length_low(&bytes, second) | 0x8000_0000)),
    ] {
        let mut damaged = bytes.clone();
        damaged[at] ^= 0x80;
        let events = events(&damaged);
        let skipped: Vec<_> = events.iter().filter(|e| matches!(e, Event::Skipped { .. })).collect();
        assert_eq!(skipped, [&Event::Skipped { offset: second as u64, len: ends[1] - ends[0], damage }], "{what}");
        let read: Vec<Record> = events
            .into_iter()
            .filter_map(|e| if let Event::Record { record, .. } = e { Some(record) } else { None })
            .collect();
        let mut expect = records.clone();
        expect.remove(1);
        assert_eq!(read, expect, "{what}");
        let stats = flowfile::read(&damaged[..]).expect("a flow file").stats;
        assert_eq!((stats.skipped, stats.skipped_bytes, stats.torn_tail), (1, ends[1] - ends[0], None), "{what}");
    }
    // Damage in the last record is its torn tail.
    let mut damaged = bytes.clone();
    let last = bytes.len() - 3;
    damaged[last] ^= 1;
    let stats = flowfile::read(&damaged[..]).expect("a flow file").stats;
    assert_eq!((stats.records, stats.torn_tail), (records.len() as u64 - 1, Some(ends[ends.len() - 2])));
    // Garbage between records (a write that failed halfway, then more appends).
    let mut spliced = bytes[..second].to_vec();
    spliced.extend_from_slice(&bytes[second..second + 20]);
    spliced.extend_from_slice(&bytes[second..]);
    let contents = flowfile::read(&spliced[..]).expect("a flow file");
    assert_eq!(contents.flows, sample_flows());
    assert_eq!((contents.stats.skipped, contents.stats.skipped_bytes), (1, 20));
}

fn length_low(bytes: &[u8], record: usize) -> u32 {
    u32::from_le_bytes(bytes[record + 4..record + 8].try_into().expect("4 bytes"))
}

#[test]
fn the_record_size_limit_is_applied_before_anything_is_read() {
    let (bytes, _, ends) = sample_file();
    // A limit below the first record's size: it is damage, and the reader resyncs past it.
    let first_len = (ends[0] as usize - HEADER_LEN - RECORD_HEAD_LEN) as u32;
    let options = ReadOptions { max_record_size: first_len - 1 };
    let mut reader = Reader::with_options(&bytes[..], options).expect("a flow file");
    let first = reader.next_event().expect("memory").expect("an event");
    assert_eq!(
        first,
        Event::Skipped {
            offset: HEADER_LEN as u64,
            len: ends[0] - HEADER_LEN as u64,
            damage: Damage::TooLarge(first_len)
        }
    );
    // A record announcing 4 GiB in a tiny file: refused by the default limit, no allocation.
    let mut hostile = bytes[..HEADER_LEN].to_vec();
    hostile.extend_from_slice(&flowfile::RECORD_MARKER);
    hostile.extend_from_slice(&u32::MAX.to_le_bytes());
    hostile.extend_from_slice(&[1, 0, 0, 0, 0]);
    let events = events(&hostile);
    assert_eq!(events, [Event::TornTail { offset: HEADER_LEN as u64, damage: Damage::TooLarge(u32::MAX) }]);
    const { assert!(u32::MAX > flowfile::MAX_RECORD_SIZE) };
}

#[test]
fn unknown_record_kinds_are_skipped_and_counted() {
    let (bytes, records, ends) = sample_file();
    // Turn the second record into kind 9 with a valid checksum, as a later version might.
    let mut changed = bytes.clone();
    let at = ends[0] as usize;
    changed[at + 8] = 9;
    let len = length_low(&changed, at) as usize;
    let mut crc = crc32fast::Hasher::new();
    crc.update(&changed[at + 4..at + 9]);
    crc.update(&changed[at + RECORD_HEAD_LEN..at + RECORD_HEAD_LEN + len]);
    changed[at + 9..at + 13].copy_from_slice(&crc.finalize().to_le_bytes());
    let events = events(&changed);
    assert!(matches!(&events[1], Event::Unreadable { kind: 9, offset, .. } if *offset == ends[0]), "{:?}", events[1]);
    let stats = flowfile::read(&changed[..]).expect("a flow file").stats;
    assert_eq!((stats.records, stats.unreadable), (records.len() as u64, 1));
}

#[test]
fn headers_are_checked() {
    let (bytes, _, _) = sample_file();
    let err = Reader::new(&b"GET / HTTP/1.1\r\n"[..]).err().expect("not a flow file");
    assert_eq!(err.to_string(), "not a flowgate flow file: bad magic at offset 0");
    let mut newer = bytes.clone();
    newer[8] = 2;
    let err = Reader::new(&newer[..]).err().expect("a newer version");
    assert_eq!(err.to_string(), "flow file version 2 at offset 8 is newer than this reader's 1");
}

#[test]
fn appending_continues_a_file_and_cuts_off_a_torn_tail() {
    let dir = tempfile::tempdir().expect("a temporary directory");
    let path = dir.path().join("flows.fgf");
    let mut writer = Writer::open_append(&path).expect("creates the file");
    writer.write_flow(&http(1)).expect("writes");
    writer.write_flow(&tcp(4)).expect("writes");
    drop(writer);
    // A crash in the middle of a third record.
    let mut partial = Writer::new(Vec::new()).expect("memory");
    partial.write_flow(&dns(5)).expect("memory");
    let partial = partial.into_inner();
    let mut file = std::fs::OpenOptions::new().append(true).open(&path).expect("reopens");
    file.write_all(&partial[HEADER_LEN..HEADER_LEN + 30]).expect("writes");
    drop(file);
    let stats = flowfile::read(std::fs::File::open(&path).expect("opens")).expect("a flow file").stats;
    assert!(stats.torn_tail.is_some());
    let mut writer = Writer::open_append(&path).expect("reopens");
    writer.write_messages(id(4), &NewMessages::Tcp(data_messages(4, 1))).expect("writes");
    writer.write_flow(&dns(5)).expect("writes");
    drop(writer);
    let contents = flowfile::read(std::fs::File::open(&path).expect("opens")).expect("a flow file");
    let mut longer = tcp(4);
    longer.payload = Payload::Tcp(data_messages(0, 5));
    assert_eq!(contents.flows, vec![http(1), longer, dns(5)]);
    assert_eq!((contents.stats.torn_tail, contents.stats.skipped), (None, 0));

    // Any Read + Write + Seek: an empty one gets a header, a full one is continued.
    let mut writer = Writer::append(Cursor::new(Vec::new())).expect("memory");
    writer.write_flow(&udp(6)).expect("memory");
    let mut cursor = writer.into_inner();
    cursor.seek(SeekFrom::Start(0)).expect("memory");
    let mut writer = Writer::append(cursor).expect("memory");
    writer.write_flow(&dns(5)).expect("memory");
    let bytes = writer.into_inner().into_inner();
    assert_eq!(flowfile::read(&bytes[..]).expect("a flow file").flows, vec![udp(6), dns(5)]);
    let err = Writer::append(Cursor::new(b"not a flow file".to_vec())).expect_err("refused");
    assert_eq!(err.to_string(), "not a flowgate flow file: bad magic at offset 0");
}

#[test]
fn orphans_and_mismatches_are_counted() {
    let mut set = FlowSet::new();
    set.apply(Record::Messages { id: id(9), messages: NewMessages::Tcp(data_messages(0, 1)) });
    set.apply(Record::Flow(Box::new(dns(5))));
    set.apply(Record::Messages { id: id(5), messages: NewMessages::Udp(data_messages(0, 1)) });
    set.apply(Record::Update(Box::new(tcp(4))));
    assert_eq!((set.stats().orphans, set.stats().mismatched), (2, 1));
    assert_eq!(set.flows(), [dns(5), tcp(4)]);
    assert_eq!(set.get(&id(4)), Some(&tcp(4)));
}

#[test]
fn bodies_are_stored_as_bytes_not_numbers() {
    let mut flow = http(1);
    let Payload::Http(h) = &mut flow.payload else { unreachable!("http() is HTTP") };
    h.request.body = Some(vec![0xab; 100_000].into());
    let mut writer = Writer::new(Vec::new()).expect("memory");
    writer.write_flow(&flow).expect("memory");
    let size = writer.into_inner().len();
    assert!(size < 102_000, "a 100 kB body took {size} bytes");
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    #[test]
    fn random_flows_round_trip(flows in proptest::collection::vec(random_flow(), 1..6)) {
        let mut writer = Writer::new(Vec::new()).expect("memory");
        for flow in &flows {
            writer.write_flow(flow).expect("memory");
        }
        let bytes = writer.into_inner();
        let read: Vec<Record> = Reader::new(&bytes[..]).expect("a flow file").map(|r| r.expect("memory")).collect();
        let expect: Vec<Record> = flows.iter().map(|f| Record::Flow(Box::new(f.clone()))).collect();
        prop_assert_eq!(read, expect);
    }
}
