//! flowgate's flow file: a header, then append-only records, each framed with a marker, a
//! length and a CRC-32, so that a file cut short by a crash reads back up to its last whole
//! record and damage in the middle costs only the records it hit. The format is described
//! in `host/store/FORMAT.md`; this module is its one implementation.
//!
//! Records carry [`Flow`]s as CBOR (RFC 8949) of the flow model's serde form: bodies and
//! message contents are CBOR byte strings (no base64, no arrays of numbers), and fields a
//! later version adds are ignored by this one. Three kinds: a whole flow, new messages of
//! a long-lived flow (WebSocket, TCP, UDP), and an update of a flow's other fields. A
//! [`FlowSet`] applies them in order and holds the latest state of each flow.
//!
//! Nothing here opens files except [`Writer::open_append`], which is given a path.

use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::path::Path;

use flowgate_flow::{DataMessage, Flow, HttpFlow, Payload, Uuid, WebSocketData, WebSocketMessage};
use serde::{Deserialize, Serialize};
use thiserror::Error;

/// The first eight bytes of every flow file: a byte with the high bit set (so a 7-bit
/// transfer is noticed), `FGF`, then CR LF, SUB, LF (so a newline conversion is noticed).
pub const MAGIC: [u8; 8] = *b"\x89FGF\r\n\x1a\n";

/// The format version this module writes, and the newest it reads.
pub const VERSION: u32 = 1;

/// Bytes before the first record: [`MAGIC`], then [`VERSION`] as a little-endian `u32`.
pub const HEADER_LEN: usize = 12;

/// The four bytes every record starts with; a reader that lost its place searches for them.
pub const RECORD_MARKER: [u8; 4] = *b"\xf7FGR";

/// A record's framing before its payload: marker, length (`u32` LE), kind (`u8`), CRC-32
/// (`u32` LE) of the length, kind and payload bytes.
pub const RECORD_HEAD_LEN: usize = 13;

/// The largest payload a record may have: 128 MiB. Writers refuse larger records and
/// readers treat a length over it as damage, so a hostile or broken file makes a reader
/// hold at most this much (plus one read chunk) in memory. Two bodies at flowgate's
/// default body buffer limit (16 MiB each) fit with room to spare; a long-lived flow
/// whose snapshot would not fit is written as [`Record::Messages`] increments instead.
pub const MAX_RECORD_SIZE: u32 = 128 << 20;

/// How much a reader asks its source for at a time.
const CHUNK: usize = 64 << 10;

/// Record kinds (the byte after the length).
mod kind {
    pub const FLOW: u8 = 1;
    pub const MESSAGES: u8 = 2;
    pub const UPDATE: u8 = 3;
}

/// Why a flow file cannot be read or written.
#[derive(Debug, Error)]
pub enum Error {
    /// The source or destination failed.
    #[error("flow file io: {0}")]
    Io(#[from] io::Error),
    /// The file does not start with [`MAGIC`].
    #[error("not a flowgate flow file: bad magic at offset 0")]
    Magic,
    /// The file was written by a newer version of the format.
    #[error("flow file version {found} at offset 8 is newer than this reader's {VERSION}")]
    Version {
        /// The version in the header.
        found: u32,
    },
    /// An existing file to append to ends inside its header and is not a prefix of one.
    #[error("cannot append: the file's header is damaged")]
    Header,
    /// A record to write is larger than [`MAX_RECORD_SIZE`].
    #[error("a record of {size} bytes is over the limit of {limit}")]
    TooLarge {
        /// The payload's size.
        size: usize,
        /// The limit.
        limit: u32,
    },
    /// A record could not be encoded.
    #[error("cannot encode a record: {0}")]
    Encode(String),
}

/// New messages of a long-lived flow, appended to those it has (a [`Record::Messages`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum NewMessages {
    /// WebSocket messages of an HTTP flow that was upgraded.
    WebSocket(Vec<WebSocketMessage>),
    /// Reads of a TCP stream.
    Tcp(Vec<DataMessage>),
    /// UDP datagrams.
    Udp(Vec<DataMessage>),
}

impl NewMessages {
    /// How many messages there are.
    pub fn len(&self) -> usize {
        match self {
            NewMessages::WebSocket(m) => m.len(),
            NewMessages::Tcp(m) | NewMessages::Udp(m) => m.len(),
        }
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// One record of a flow file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Record {
    /// A flow, whole: it replaces whatever was recorded of the flow with its id before.
    Flow(Box<Flow>),
    /// Messages to append to the flow with this id.
    Messages {
        /// The flow's id.
        id: Uuid,
        /// The messages, in order.
        messages: NewMessages,
    },
    /// A flow's new state apart from the messages recorded so far: every field replaces
    /// the recorded one except the messages (WebSocket, TCP, UDP), which are appended.
    /// What a writer records when a long-lived flow ends (with no messages, or the last
    /// ones).
    Update(Box<Flow>),
}

impl Record {
    /// The id of the flow it is about.
    pub fn id(&self) -> Uuid {
        match self {
            Record::Flow(flow) | Record::Update(flow) => flow.id,
            Record::Messages { id, .. } => *id,
        }
    }
}

#[derive(Serialize)]
struct MessagesRef<'a> {
    id: Uuid,
    messages: &'a NewMessages,
}

#[derive(Deserialize)]
struct MessagesOwned {
    id: Uuid,
    messages: NewMessages,
}

/// Writes a flow file to any [`Write`]: the header first (unless appending), then one
/// `write_all` per record. Records are not buffered here; wrap a file in a
/// `BufWriter` for many small records and call [`Writer::flush`].
#[derive(Debug)]
pub struct Writer<W: Write> {
    inner: W,
    offset: u64,
    buf: Vec<u8>,
}

fn header() -> [u8; HEADER_LEN] {
    let mut header = [0; HEADER_LEN];
    header[..8].copy_from_slice(&MAGIC);
    header[8..].copy_from_slice(&VERSION.to_le_bytes());
    header
}

impl<W: Write> Writer<W> {
    /// Starts a new flow file: writes the header.
    pub fn new(mut inner: W) -> Result<Writer<W>, Error> {
        inner.write_all(&header())?;
        Ok(Writer { inner, offset: HEADER_LEN as u64, buf: Vec::new() })
    }

    /// Appends a whole flow ([`Record::Flow`]); returns the record's offset.
    pub fn write_flow(&mut self, flow: &Flow) -> Result<u64, Error> {
        self.write_payload(kind::FLOW, flow)
    }

    /// Appends new messages of the flow `id` ([`Record::Messages`]); returns the offset.
    pub fn write_messages(&mut self, id: Uuid, messages: &NewMessages) -> Result<u64, Error> {
        self.write_payload(kind::MESSAGES, &MessagesRef { id, messages })
    }

    /// Appends a flow's new state, keeping the messages recorded before and appending the
    /// flow's own ([`Record::Update`]); returns the offset.
    pub fn write_update(&mut self, flow: &Flow) -> Result<u64, Error> {
        self.write_payload(kind::UPDATE, flow)
    }

    /// Appends any record; returns its offset.
    pub fn write(&mut self, record: &Record) -> Result<u64, Error> {
        match record {
            Record::Flow(flow) => self.write_flow(flow),
            Record::Messages { id, messages } => self.write_messages(*id, messages),
            Record::Update(flow) => self.write_update(flow),
        }
    }

    fn write_payload<T: Serialize>(&mut self, kind: u8, value: &T) -> Result<u64, Error> {
        self.buf.clear();
        self.buf.resize(RECORD_HEAD_LEN, 0);
        ciborium::into_writer(value, &mut self.buf).map_err(|e| Error::Encode(e.to_string()))?;
        let size = self.buf.len() - RECORD_HEAD_LEN;
        let len = u32::try_from(size)
            .ok()
            .filter(|len| *len <= MAX_RECORD_SIZE)
            .ok_or(Error::TooLarge { size, limit: MAX_RECORD_SIZE })?;
        self.buf[..4].copy_from_slice(&RECORD_MARKER);
        self.buf[4..8].copy_from_slice(&len.to_le_bytes());
        self.buf[8] = kind;
        let crc = checksum(&self.buf[4..9], &self.buf[RECORD_HEAD_LEN..]);
        self.buf[9..13].copy_from_slice(&crc.to_le_bytes());
        self.inner.write_all(&self.buf)?;
        let offset = self.offset;
        self.offset += self.buf.len() as u64;
        Ok(offset)
    }

    /// Flushes the destination.
    pub fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }

    /// Where the next record goes (counting from the start of the file).
    pub fn offset(&self) -> u64 {
        self.offset
    }

    /// The destination.
    pub fn get_ref(&self) -> &W {
        &self.inner
    }

    /// The destination, back.
    pub fn into_inner(self) -> W {
        self.inner
    }
}

/// What an existing file's first bytes are.
enum Existing {
    /// Shorter than a header and a prefix of one (a crash while creating it).
    TornHeader,
    /// A whole header.
    Header,
}

fn check_header(bytes: &[u8]) -> Result<Existing, Error> {
    let want = header();
    if bytes.len() < HEADER_LEN {
        let n = bytes.len().min(8);
        return if bytes[..n] == want[..n] { Ok(Existing::TornHeader) } else { Err(Error::Magic) };
    }
    if bytes[..8] != MAGIC {
        return Err(Error::Magic);
    }
    let found = u32::from_le_bytes(bytes[8..12].try_into().expect("a 4-byte slice"));
    if found > VERSION || found == 0 {
        return Err(Error::Version { found });
    }
    Ok(Existing::Header)
}

fn read_up_to<R: Read>(inner: &mut R, buf: &mut [u8]) -> io::Result<usize> {
    let mut filled = 0;
    while filled < buf.len() {
        match inner.read(&mut buf[filled..]) {
            Ok(0) => break,
            Ok(n) => filled += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(filled)
}

impl<W: Read + Write + Seek> Writer<W> {
    /// Continues an existing flow file (or starts an empty one): checks the header and
    /// writes after the last byte. A torn record at the end stays where it is; readers
    /// skip it as damage in the middle once records follow. [`Writer::open_append`]
    /// cuts it off first.
    pub fn append(mut inner: W) -> Result<Writer<W>, Error> {
        inner.seek(SeekFrom::Start(0))?;
        let mut head = [0; HEADER_LEN];
        let n = read_up_to(&mut inner, &mut head)?;
        match check_header(&head[..n]).map_err(|e| if n < HEADER_LEN { Error::Header } else { e })? {
            Existing::TornHeader => {
                inner.seek(SeekFrom::Start(0))?;
                Writer::new(inner)
            }
            Existing::Header => {
                let offset = inner.seek(SeekFrom::End(0))?;
                Ok(Writer { inner, offset, buf: Vec::new() })
            }
        }
    }
}

impl Writer<File> {
    /// Opens the flow file at `path` to append to it, creating it if it does not exist.
    /// A torn tail (a record cut short by a crash) is cut off first, so the next record
    /// follows the last whole one; damage in the middle is kept as it is.
    pub fn open_append(path: &Path) -> Result<Writer<File>, Error> {
        let mut file = OpenOptions::new().read(true).write(true).create(true).truncate(false).open(path)?;
        let mut head = [0; HEADER_LEN];
        let n = read_up_to(&mut file, &mut head)?;
        if let Existing::TornHeader =
            check_header(&head[..n]).map_err(|e| if n < HEADER_LEN { Error::Header } else { e })?
        {
            file.set_len(0)?;
            file.seek(SeekFrom::Start(0))?;
            return Writer::new(file);
        }
        file.seek(SeekFrom::Start(0))?;
        let stats = Reader::new(io::BufReader::new(&mut file))?.scan()?;
        if stats.torn_tail.is_some() {
            file.set_len(stats.valid_end)?;
        }
        let offset = file.seek(SeekFrom::End(0))?;
        Ok(Writer { inner: file, offset, buf: Vec::new() })
    }
}

fn checksum(head: &[u8], payload: &[u8]) -> u32 {
    let mut hasher = crc32fast::Hasher::new();
    hasher.update(head);
    hasher.update(payload);
    hasher.finalize()
}

/// What a reader accepts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReadOptions {
    /// Largest payload a record may announce (default [`MAX_RECORD_SIZE`]); a length over
    /// it is damage, and nothing is read or allocated for it.
    pub max_record_size: u32,
}

impl Default for ReadOptions {
    fn default() -> ReadOptions {
        ReadOptions { max_record_size: MAX_RECORD_SIZE }
    }
}

/// What is wrong with the bytes where a record should be.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Damage {
    /// They do not start with [`RECORD_MARKER`].
    Marker,
    /// The length is over [`ReadOptions::max_record_size`].
    TooLarge(u32),
    /// The checksum does not match.
    Checksum,
    /// The file ends inside the record.
    Truncated,
}

impl std::fmt::Display for Damage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Damage::Marker => f.write_str("no record marker"),
            Damage::TooLarge(len) => write!(f, "a length of {len} bytes over the limit"),
            Damage::Checksum => f.write_str("bad checksum"),
            Damage::Truncated => f.write_str("record cut short"),
        }
    }
}

/// What a reader found next.
#[derive(Debug, Clone, PartialEq)]
pub enum Event {
    /// An intact record.
    Record {
        /// Where it starts.
        offset: u64,
        /// What it says.
        record: Record,
    },
    /// Damaged bytes between two intact records, skipped.
    Skipped {
        /// Where the damage starts.
        offset: u64,
        /// How many bytes were skipped (up to the next intact record).
        len: u64,
        /// What was wrong at `offset`.
        damage: Damage,
    },
    /// An intact record that could not be used: a kind this version does not know (from
    /// a later one) or a payload that does not decode to what its kind says.
    Unreadable {
        /// Where it starts.
        offset: u64,
        /// Its kind byte.
        kind: u8,
        /// Why.
        reason: String,
    },
    /// The file ends in damage with no intact record after it: the tail of a write that
    /// was cut short (or damage at the end). Always the last event.
    TornTail {
        /// Where the damage starts; what comes before is whole.
        offset: u64,
        /// What was wrong there.
        damage: Damage,
    },
}

/// What a reader has met so far.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ReadStats {
    /// The file's format version (0 if its header is torn).
    pub version: u32,
    /// Intact records.
    pub records: u64,
    /// Damaged stretches skipped in the middle.
    pub skipped: u64,
    /// Bytes in them.
    pub skipped_bytes: u64,
    /// Intact records that could not be used (see [`Event::Unreadable`]).
    pub unreadable: u64,
    /// Where a torn tail starts, if the file has one.
    pub torn_tail: Option<u64>,
    /// Just after the last intact record (or the header): where appending continues.
    pub valid_end: u64,
}

/// One framed record, not decoded yet.
struct Frame {
    offset: u64,
    kind: u8,
    payload: std::ops::Range<usize>,
}

enum Attempt {
    Whole { kind: u8, end: usize },
    Damaged(Damage),
}

enum Found {
    Frame(Frame),
    Skipped { offset: u64, len: u64, damage: Damage },
    TornTail { offset: u64, damage: Damage },
}

/// Reads a flow file from any [`Read`], record by record, never failing on damage:
/// damage is an [`Event`], counted in [`ReadStats`]. Only the source's own errors and a
/// header that is not a flow file's are errors.
///
/// Resynchronising: where a record is damaged (no marker, a length over the limit, a bad
/// checksum, or cut short), the reader searches forward from the next byte for
/// [`RECORD_MARKER`] and continues at the first marker that starts an intact record; the
/// bytes in between are one [`Event::Skipped`]. If none follows, the damage is the
/// [`Event::TornTail`]. A payload that happens to contain a whole record of its own
/// (a flow file uploaded through the proxy) can be found this way; everything else is
/// a marker and a matching CRC-32 by chance, about 2^-64.
pub struct Reader<R: Read> {
    inner: R,
    options: ReadOptions,
    buf: Vec<u8>,
    /// The file offset of `buf[0]`.
    base: u64,
    /// Where the next record starts in `buf`.
    pos: usize,
    eof: bool,
    /// The file ends inside its header: the one event left is that torn tail.
    torn_header: bool,
    finished: bool,
    stats: ReadStats,
}

impl<R: Read> Reader<R> {
    /// Reads and checks the header, with the default [`ReadOptions`]. A file that ends
    /// inside a header (a crash while creating it) reads as having no records and a torn
    /// tail at offset 0.
    pub fn new(inner: R) -> Result<Reader<R>, Error> {
        Reader::with_options(inner, ReadOptions::default())
    }

    /// Reads and checks the header.
    pub fn with_options(inner: R, options: ReadOptions) -> Result<Reader<R>, Error> {
        let mut reader = Reader {
            inner,
            options,
            buf: Vec::new(),
            base: 0,
            pos: 0,
            eof: false,
            torn_header: false,
            finished: false,
            stats: ReadStats::default(),
        };
        reader.fill_to(HEADER_LEN)?;
        let available = reader.buf.len().min(HEADER_LEN);
        match check_header(&reader.buf[..available])? {
            Existing::TornHeader => {
                reader.torn_header = true;
                reader.stats.torn_tail = Some(0);
            }
            Existing::Header => {
                reader.stats.version = u32::from_le_bytes(reader.buf[8..12].try_into().expect("a 4-byte slice"));
                reader.pos = HEADER_LEN;
                reader.stats.valid_end = HEADER_LEN as u64;
            }
        }
        Ok(reader)
    }

    /// What it has met so far.
    pub fn stats(&self) -> &ReadStats {
        &self.stats
    }

    /// The next event; `None` at the end of the file (after a [`Event::TornTail`] if
    /// there is one).
    pub fn next_event(&mut self) -> io::Result<Option<Event>> {
        let frame = match self.next_frame()? {
            None => return Ok(None),
            Some(Found::Frame(frame)) => frame,
            Some(Found::Skipped { offset, len, damage }) => return Ok(Some(Event::Skipped { offset, len, damage })),
            Some(Found::TornTail { offset, damage }) => return Ok(Some(Event::TornTail { offset, damage })),
        };
        let payload = &self.buf[frame.payload];
        let decoded = match frame.kind {
            kind::FLOW => ciborium::from_reader(payload).map(|flow| Record::Flow(Box::new(flow))),
            kind::UPDATE => ciborium::from_reader(payload).map(|flow| Record::Update(Box::new(flow))),
            kind::MESSAGES => {
                ciborium::from_reader(payload).map(|MessagesOwned { id, messages }| Record::Messages { id, messages })
            }
            other => {
                self.stats.unreadable += 1;
                let reason = format!("unknown record kind {other}");
                return Ok(Some(Event::Unreadable { offset: frame.offset, kind: other, reason }));
            }
        };
        Ok(Some(match decoded {
            Ok(record) => Event::Record { offset: frame.offset, record },
            Err(e) => {
                self.stats.unreadable += 1;
                Event::Unreadable { offset: frame.offset, kind: frame.kind, reason: e.to_string() }
            }
        }))
    }

    /// Reads to the end without decoding payloads (to find where to append).
    fn scan(mut self) -> io::Result<ReadStats> {
        while self.next_frame()?.is_some() {}
        Ok(self.stats)
    }

    /// Reads to the end: every flow's latest state, in the order flows first appeared.
    pub fn into_contents(mut self) -> io::Result<Contents> {
        let mut set = FlowSet::new();
        while let Some(event) = self.next_event()? {
            if let Event::Record { record, .. } = event {
                set.apply(record);
            }
        }
        Ok(Contents { unapplied: set.stats(), flows: set.into_flows(), stats: self.stats })
    }

    fn next_frame(&mut self) -> io::Result<Option<Found>> {
        if self.finished {
            return Ok(None);
        }
        if self.torn_header {
            self.finished = true;
            return Ok(Some(Found::TornTail { offset: 0, damage: Damage::Truncated }));
        }
        self.compact();
        self.fill_to(self.pos + 1)?;
        if self.pos == self.buf.len() {
            self.finished = true;
            return Ok(None);
        }
        let start = self.pos;
        let damage = match self.attempt(start)? {
            Attempt::Whole { kind, end } => {
                self.pos = end;
                self.stats.records += 1;
                self.stats.valid_end = self.base + end as u64;
                let offset = self.base + start as u64;
                return Ok(Some(Found::Frame(Frame { offset, kind, payload: start + RECORD_HEAD_LEN..end })));
            }
            Attempt::Damaged(damage) => damage,
        };
        let offset = self.base + start as u64;
        match self.resync(start + 1)? {
            Some(next) => {
                self.pos = next;
                let len = self.base + next as u64 - offset;
                self.stats.skipped += 1;
                self.stats.skipped_bytes += len;
                Ok(Some(Found::Skipped { offset, len, damage }))
            }
            None => {
                self.finished = true;
                self.stats.torn_tail = Some(offset);
                Ok(Some(Found::TornTail { offset, damage }))
            }
        }
    }

    /// Whether an intact record starts at `at`.
    fn attempt(&mut self, at: usize) -> io::Result<Attempt> {
        self.fill_to(at + RECORD_HEAD_LEN)?;
        if self.buf.len() < at + RECORD_HEAD_LEN {
            let n = self.buf.len() - at;
            let m = n.min(4);
            let damage = if self.buf[at..at + m] == RECORD_MARKER[..m] { Damage::Truncated } else { Damage::Marker };
            return Ok(Attempt::Damaged(damage));
        }
        let head = &self.buf[at..at + RECORD_HEAD_LEN];
        if head[..4] != RECORD_MARKER {
            return Ok(Attempt::Damaged(Damage::Marker));
        }
        let len = u32::from_le_bytes(head[4..8].try_into().expect("a 4-byte slice"));
        if len > self.options.max_record_size {
            return Ok(Attempt::Damaged(Damage::TooLarge(len)));
        }
        let kind = head[8];
        let crc = u32::from_le_bytes(head[9..13].try_into().expect("a 4-byte slice"));
        let end = at + RECORD_HEAD_LEN + len as usize;
        self.fill_to(end)?;
        if self.buf.len() < end {
            return Ok(Attempt::Damaged(Damage::Truncated));
        }
        if checksum(&self.buf[at + 4..at + 9], &self.buf[at + RECORD_HEAD_LEN..end]) != crc {
            return Ok(Attempt::Damaged(Damage::Checksum));
        }
        Ok(Attempt::Whole { kind, end })
    }

    /// The position of the first intact record at or after `from`, if any; drops what it
    /// has searched through from the buffer (positions are adjusted, `base` too).
    fn resync(&mut self, mut from: usize) -> io::Result<Option<usize>> {
        loop {
            from = from.min(self.buf.len());
            if let Some(i) = self.buf[from..].windows(4).position(|w| w == RECORD_MARKER) {
                let candidate = from + i;
                if let Attempt::Whole { .. } = self.attempt(candidate)? {
                    return Ok(Some(candidate));
                }
                from = candidate + 1;
                continue;
            }
            if self.eof {
                return Ok(None);
            }
            // No marker in what is buffered: keep the last three bytes (a marker may start
            // there), drop the rest, read on.
            let drop = from.min(self.buf.len().saturating_sub(3));
            self.buf.drain(..drop);
            self.base += drop as u64;
            self.pos = 0;
            from -= drop;
            let want = self.buf.len() + 1;
            self.fill_to(want)?;
        }
    }

    /// Drops consumed bytes once they are most of the buffer.
    fn compact(&mut self) {
        if self.pos >= CHUNK && self.pos * 2 >= self.buf.len() {
            self.buf.drain(..self.pos);
            self.base += self.pos as u64;
            self.pos = 0;
        }
    }

    /// Reads until `buf` holds `end` bytes or the source ends, a chunk at a time (so a
    /// record's announced length is never allocated before its bytes arrive).
    fn fill_to(&mut self, end: usize) -> io::Result<()> {
        while self.buf.len() < end && !self.eof {
            let old = self.buf.len();
            self.buf.resize(old + CHUNK, 0);
            match self.inner.read(&mut self.buf[old..]) {
                Ok(0) => {
                    self.buf.truncate(old);
                    self.eof = true;
                }
                Ok(n) => self.buf.truncate(old + n),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => self.buf.truncate(old),
                Err(e) => {
                    self.buf.truncate(old);
                    return Err(e);
                }
            }
        }
        Ok(())
    }
}

impl<R: Read> Iterator for Reader<R> {
    type Item = io::Result<Record>;

    /// The next intact, readable record; damage and unreadable records are skipped (and
    /// counted in [`Reader::stats`]).
    fn next(&mut self) -> Option<io::Result<Record>> {
        loop {
            match self.next_event() {
                Err(e) => {
                    self.finished = true;
                    return Some(Err(e));
                }
                Ok(None) => return None,
                Ok(Some(Event::Record { record, .. })) => return Some(Ok(record)),
                Ok(Some(_)) => {}
            }
        }
    }
}

/// What a [`FlowSet`] could not apply.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct FlowSetStats {
    /// [`Record::Messages`] and [`Record::Update`] records for a flow with no
    /// [`Record::Flow`] before them (lost to damage, or written by a writer that started
    /// mid-flow). Messages are dropped; an update is kept as the flow.
    pub orphans: u64,
    /// [`Record::Messages`] of another protocol than their flow's (dropped).
    pub mismatched: u64,
}

/// The latest state of each flow, built by applying records in file order: a
/// [`Record::Flow`] replaces the flow with its id (or adds it at the end), a
/// [`Record::Messages`] appends to its messages, a [`Record::Update`] replaces all but
/// its messages and appends its own. Flows keep the position of their first record.
#[derive(Debug, Clone, Default)]
pub struct FlowSet {
    flows: Vec<Flow>,
    index: HashMap<Uuid, usize>,
    stats: FlowSetStats,
}

impl FlowSet {
    /// No flows.
    pub fn new() -> FlowSet {
        FlowSet::default()
    }

    /// Applies one record.
    pub fn apply(&mut self, record: Record) {
        match record {
            Record::Flow(flow) => self.put(*flow),
            Record::Messages { id, messages } => match self.index.get(&id) {
                None => self.stats.orphans += 1,
                Some(&i) => {
                    if !append(&mut self.flows[i].payload, messages) {
                        self.stats.mismatched += 1;
                    }
                }
            },
            Record::Update(flow) => {
                let mut flow = *flow;
                match self.index.get(&flow.id) {
                    None => {
                        self.stats.orphans += 1;
                        self.put(flow);
                    }
                    Some(&i) => {
                        // The update's other fields, then the earlier messages and the
                        // update's own after them.
                        let newer = take_messages(&mut flow.payload);
                        let mut old = std::mem::replace(&mut self.flows[i], flow);
                        let target = &mut self.flows[i].payload;
                        if let Some(earlier) = take_messages(&mut old.payload)
                            && !append(target, earlier)
                        {
                            self.stats.mismatched += 1;
                        }
                        if let Some(newer) = newer {
                            append(target, newer);
                        }
                    }
                }
            }
        }
    }

    fn put(&mut self, flow: Flow) {
        match self.index.get(&flow.id) {
            Some(&i) => self.flows[i] = flow,
            None => {
                self.index.insert(flow.id, self.flows.len());
                self.flows.push(flow);
            }
        }
    }

    /// The flow with this id, as recorded so far.
    pub fn get(&self, id: &Uuid) -> Option<&Flow> {
        self.index.get(id).map(|&i| &self.flows[i])
    }

    /// The flows, in the order they first appeared.
    pub fn flows(&self) -> &[Flow] {
        &self.flows
    }

    /// What could not be applied.
    pub fn stats(&self) -> FlowSetStats {
        self.stats
    }

    /// The flows, in the order they first appeared.
    pub fn into_flows(self) -> Vec<Flow> {
        self.flows
    }
}

/// Appends `messages` to the payload's if the protocols match; a WebSocket's messages
/// start its [`WebSocketData`] if the flow had none.
fn append(payload: &mut Payload, messages: NewMessages) -> bool {
    match (payload, messages) {
        (Payload::Http(HttpFlow { websocket, .. }), NewMessages::WebSocket(new)) => {
            websocket.get_or_insert_with(WebSocketData::default).messages.extend(new);
            true
        }
        (Payload::Tcp(old), NewMessages::Tcp(new)) | (Payload::Udp(old), NewMessages::Udp(new)) => {
            old.extend(new);
            true
        }
        _ => false,
    }
}

/// Takes the messages out of a payload (none for a plain HTTP flow or DNS).
fn take_messages(payload: &mut Payload) -> Option<NewMessages> {
    match payload {
        Payload::Http(HttpFlow { websocket: Some(ws), .. }) => {
            Some(NewMessages::WebSocket(std::mem::take(&mut ws.messages)))
        }
        Payload::Http(_) | Payload::Dns(_) => None,
        Payload::Tcp(m) => Some(NewMessages::Tcp(std::mem::take(m))),
        Payload::Udp(m) => Some(NewMessages::Udp(std::mem::take(m))),
    }
}

/// A whole flow file, read.
#[derive(Debug, Clone, Default)]
pub struct Contents {
    /// The latest state of each flow, in the order flows first appeared.
    pub flows: Vec<Flow>,
    /// What the reader met (damage, a torn tail).
    pub stats: ReadStats,
    /// Records that could not be applied.
    pub unapplied: FlowSetStats,
}

/// Reads a whole flow file.
pub fn read<R: Read>(inner: R) -> Result<Contents, Error> {
    Ok(Reader::new(inner)?.into_contents()?)
}
