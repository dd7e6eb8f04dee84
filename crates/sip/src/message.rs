use std::borrow::Cow;
use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

/// The transport a message came in on or leaves by.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Transport {
    /// Unreliable datagrams: retransmission timers run.
    Udp,
    /// A reliable stream: timers A, E and G are off, D, I, J and K are zero.
    Tcp,
    /// TCP under TLS (RFC 3261 §26.2): reliable like TCP; the driver owns
    /// the handshake, the engine only sees the connection it came on.
    Tls,
    /// A browser operator's desktop: the node's own WebRTC gateway
    /// answers for it over the desk's WebSocket session, so the message
    /// never leaves the process. Reliable; `WS` in Via, as SIP over
    /// WebSocket (RFC 7118) would carry it.
    Browser,
}

impl Transport {
    /// Whether the transport is reliable (RFC 3261 §17: no retransmissions).
    pub fn is_reliable(self) -> bool {
        matches!(self, Self::Tcp | Self::Tls | Self::Browser)
    }

    /// The Via transport token.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Udp => "UDP",
            Self::Tcp => "TCP",
            Self::Tls => "TLS",
            Self::Browser => "WS",
        }
    }
}

/// A SIP method. Unknown methods are kept (answered 501 by the element).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Method {
    /// INVITE
    Invite,
    /// ACK
    Ack,
    /// BYE
    Bye,
    /// CANCEL
    Cancel,
    /// REGISTER
    Register,
    /// OPTIONS
    Options,
    /// INFO
    Info,
    /// UPDATE
    Update,
    /// PRACK
    Prack,
    /// SUBSCRIBE
    Subscribe,
    /// NOTIFY
    Notify,
    /// REFER
    Refer,
    /// MESSAGE
    Message,
    /// PUBLISH
    Publish,
    /// Any other token.
    Other(Box<str>),
}

impl Method {
    /// Parses a method token (case-sensitive, RFC 3261 §7.1).
    pub fn from_token(s: &str) -> Self {
        match s {
            "INVITE" => Self::Invite,
            "ACK" => Self::Ack,
            "BYE" => Self::Bye,
            "CANCEL" => Self::Cancel,
            "REGISTER" => Self::Register,
            "OPTIONS" => Self::Options,
            "INFO" => Self::Info,
            "UPDATE" => Self::Update,
            "PRACK" => Self::Prack,
            "SUBSCRIBE" => Self::Subscribe,
            "NOTIFY" => Self::Notify,
            "REFER" => Self::Refer,
            "MESSAGE" => Self::Message,
            "PUBLISH" => Self::Publish,
            other => Self::Other(other.into()),
        }
    }

    /// The wire token.
    pub fn as_str(&self) -> &str {
        match self {
            Self::Invite => "INVITE",
            Self::Ack => "ACK",
            Self::Bye => "BYE",
            Self::Cancel => "CANCEL",
            Self::Register => "REGISTER",
            Self::Options => "OPTIONS",
            Self::Info => "INFO",
            Self::Update => "UPDATE",
            Self::Prack => "PRACK",
            Self::Subscribe => "SUBSCRIBE",
            Self::Notify => "NOTIFY",
            Self::Refer => "REFER",
            Self::Message => "MESSAGE",
            Self::Publish => "PUBLISH",
            Self::Other(s) => s,
        }
    }

    /// A bounded label for metrics: unknown methods collapse to `other`.
    pub fn label(&self) -> &'static str {
        match self {
            Self::Invite => "INVITE",
            Self::Ack => "ACK",
            Self::Bye => "BYE",
            Self::Cancel => "CANCEL",
            Self::Register => "REGISTER",
            Self::Options => "OPTIONS",
            Self::Info => "INFO",
            Self::Update => "UPDATE",
            Self::Prack => "PRACK",
            Self::Subscribe => "SUBSCRIBE",
            Self::Notify => "NOTIFY",
            Self::Refer => "REFER",
            Self::Message => "MESSAGE",
            Self::Publish => "PUBLISH",
            Self::Other(_) => "other",
        }
    }
}

impl fmt::Display for Method {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The first line of a message.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum StartLine {
    /// `Method SP Request-URI SP SIP/2.0`
    Request {
        /// The method.
        method: Method,
        /// The Request-URI as received (validated).
        uri: String,
    },
    /// `SIP/2.0 SP Status-Code SP Reason-Phrase`
    Response {
        /// 100..=699
        code: u16,
        /// May be empty. Ours are static text (no allocation per
        /// response); a received one is its own copy.
        reason: Cow<'static, str>,
    },
}

/// One header field, unfolded; compact names are expanded to their long form.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Header {
    /// Canonical name for known headers, the received name otherwise.
    pub name: Cow<'static, str>,
    /// The value with surrounding whitespace trimmed. Shared: a response
    /// copies its request's Via, From, To, Call-ID and CSeq, and building
    /// responses was the engine's largest source of allocations.
    pub value: Value,
}

/// A header value: a range of a shared buffer. A parsed message's values
/// all point into one copy of its header section (one allocation for all
/// of them, on the thread that reads it, where each value was a block of
/// its own); a value built here has a buffer of its own. Copying one is a
/// reference count. It reads as a `str`.
#[derive(Clone)]
pub struct Value {
    buf: Arc<str>,
    start: u32,
    end: u32,
}

impl Value {
    /// `buf[start..end]`, when that is a range of `buf`.
    pub(crate) fn range(buf: &Arc<str>, start: usize, end: usize) -> Option<Self> {
        match (u32::try_from(start), u32::try_from(end)) {
            (Ok(s), Ok(e)) if buf.get(start..end).is_some() => Some(Self {
                buf: buf.clone(),
                start: s,
                end: e,
            }),
            _ => None,
        }
    }

    /// The value as a string slice.
    pub fn as_str(&self) -> &str {
        self.buf
            .get(self.start as usize..self.end as usize)
            .unwrap_or_default()
    }

    /// Whether the two values point into one buffer.
    pub fn shares_buffer(&self, other: &Self) -> bool {
        Arc::ptr_eq(&self.buf, &other.buf)
    }

    /// The part `sub` of this value (a slice of [`Self::as_str`]'s
    /// string), sharing its buffer; `None` when `sub` lies elsewhere.
    pub fn slice(&self, sub: &str) -> Option<Self> {
        let whole = self.as_str();
        let start = (sub.as_ptr() as usize).checked_sub(whole.as_ptr() as usize)?;
        let end = start.checked_add(sub.len())?;
        if end > whole.len() {
            return None;
        }
        let base = self.start as usize;
        Self::range(&self.buf, base + start, base + end)
    }

    /// The value with a buffer of its own when it points into a larger one
    /// (a received message's header section), for keeping: a dialog kept
    /// for the call's length must not hold the whole message it came in.
    #[must_use]
    pub fn detached(&self) -> Self {
        if self.start == 0 && self.end as usize == self.buf.len() {
            self.clone()
        } else {
            Self::from(self.as_str())
        }
    }

    /// Whether this value is `buf` itself (no copy was made).
    pub fn is(&self, buf: &Arc<str>) -> bool {
        Arc::ptr_eq(&self.buf, buf) && self.start == 0 && self.end as usize == buf.len()
    }
}

impl std::ops::Deref for Value {
    type Target = str;
    fn deref(&self) -> &str {
        self.as_str()
    }
}

impl AsRef<str> for Value {
    fn as_ref(&self) -> &str {
        self.as_str()
    }
}

impl From<Arc<str>> for Value {
    fn from(buf: Arc<str>) -> Self {
        // Values are bounded by the message size (64 KiB); a longer one
        // reads empty rather than wrong.
        let end = u32::try_from(buf.len()).unwrap_or(0);
        Self { buf, start: 0, end }
    }
}

impl From<&str> for Value {
    fn from(s: &str) -> Self {
        Self::from(Arc::<str>::from(s))
    }
}

impl From<&String> for Value {
    fn from(s: &String) -> Self {
        Self::from(s.as_str())
    }
}

/// A copy that shares the buffer (a reference count).
impl From<&Self> for Value {
    fn from(v: &Self) -> Self {
        v.clone()
    }
}

impl From<String> for Value {
    fn from(s: String) -> Self {
        Self::from(Arc::<str>::from(s))
    }
}

impl Default for Value {
    /// Empty, one buffer for all (a malformed message's reply has one).
    fn default() -> Self {
        static EMPTY: std::sync::LazyLock<Arc<str>> = std::sync::LazyLock::new(|| Arc::from(""));
        Self::from(EMPTY.clone())
    }
}

/// By the text, as `Eq` compares: a table keyed by values is searched
/// with a `&str` (`Borrow`).
impl std::hash::Hash for Value {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        self.as_str().hash(state);
    }
}

impl std::borrow::Borrow<str> for Value {
    fn borrow(&self) -> &str {
        self.as_str()
    }
}

impl PartialEq<String> for Value {
    fn eq(&self, other: &String) -> bool {
        self.as_str() == other
    }
}

impl PartialEq<Value> for String {
    fn eq(&self, other: &Value) -> bool {
        self.as_str() == other.as_str()
    }
}

impl PartialEq<Value> for str {
    fn eq(&self, other: &Value) -> bool {
        self == other.as_str()
    }
}

impl PartialEq<Value> for &str {
    fn eq(&self, other: &Value) -> bool {
        *self == other.as_str()
    }
}

impl PartialEq for Value {
    fn eq(&self, other: &Self) -> bool {
        self.as_str() == other.as_str()
    }
}

impl Eq for Value {}

impl PartialEq<str> for Value {
    fn eq(&self, other: &str) -> bool {
        self.as_str() == other
    }
}

impl PartialEq<&str> for Value {
    fn eq(&self, other: &&str) -> bool {
        self.as_str() == *other
    }
}

impl fmt::Debug for Value {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self.as_str(), f)
    }
}

impl fmt::Display for Value {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The parts of the top Via that transactions and responses need.
///
/// Shared strings: every response, ACK and CANCEL copies its request's
/// Via, and every transaction lookup keys on `branch` and `sent_by`
/// ([`crate::txn::TxKey`]), so a copy is a reference count, not an
/// allocation (transaction keys alone were a tenth of the engine's
/// allocations per call).
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct Via {
    /// The transport token as received, upper-cased (`UDP`, `TCP`, `TLS`, ...).
    pub transport: Arc<str>,
    /// `host[:port]`, IPv6 references in brackets.
    pub sent_by: Arc<str>,
    /// The branch parameter, always starting with the RFC 3261 magic cookie.
    pub branch: Arc<str>,
}

/// A parsed SIP message with its essential fields extracted and validated.
///
/// `headers` keeps every field in order, for responses that must echo them
/// and for relaying; the fields below are what the transaction and dialog
/// layers match on. Serialising with [`Message::to_bytes`] always recomputes
/// Content-Length from the body.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Message {
    /// Request-Line or Status-Line.
    pub start: StartLine,
    /// All header fields except Content-Length, in order.
    pub headers: Vec<Header>,
    /// The body, exactly Content-Length bytes.
    pub body: Vec<u8>,
    /// Call-ID.
    pub call_id: Value,
    /// CSeq number.
    pub cseq: u32,
    /// CSeq method.
    pub cseq_method: Method,
    /// The tag of From (absent only in RFC 2543 peers).
    pub from_tag: Option<Value>,
    /// The tag of To (absent outside dialogs).
    pub to_tag: Option<Value>,
    /// The topmost Via.
    pub via: Via,
    /// Max-Forwards, when present.
    pub max_forwards: Option<u8>,
}

/// Canonical long form of a header name, expanding RFC 3261 compact forms.
pub(crate) fn canonical_name(name: &str) -> Cow<'static, str> {
    // Dispatch on length first: one or two case-insensitive compares per
    // header instead of a scan of the whole table.
    let candidates: &[&'static str] = match name.len() {
        1 => {
            let long = match name.as_bytes()[0].to_ascii_lowercase() {
                b'i' => "Call-ID",
                b'm' => "Contact",
                b'e' => "Content-Encoding",
                b'l' => "Content-Length",
                b'c' => "Content-Type",
                b'f' => "From",
                b's' => "Subject",
                b'k' => "Supported",
                b't' => "To",
                b'v' => "Via",
                b'o' => "Event",
                b'r' => "Refer-To",
                b'x' => "Session-Expires",
                _ => return Cow::Owned(name.to_owned()),
            };
            return Cow::Borrowed(long);
        }
        2 => &["To"],
        3 => &["Via"],
        4 => &["From", "CSeq"],
        5 => &["Route", "Allow"],
        6 => &["Accept"],
        7 => &["Call-ID", "Contact", "Require", "Expires"],
        9 => &["Supported"],
        10 => &["User-Agent"],
        12 => &["Content-Type", "Max-Forwards", "Record-Route"],
        13 => &["Authorization", "Proxy-Require"],
        14 => &["Content-Length"],
        _ => &[],
    };
    for c in candidates {
        if name.eq_ignore_ascii_case(c) {
            return Cow::Borrowed(c);
        }
    }
    Cow::Owned(name.to_owned())
}

/// `parts` end to end as one shared string, allocated once (a value
/// built from pieces, such as a To with our tag added).
pub fn joined(parts: &[&str]) -> Arc<str> {
    let len: usize = parts.iter().map(|p| p.len()).sum();
    let mut buf = [0u8; 256];
    if let Some(room) = buf.get_mut(..len) {
        let mut at = 0;
        for p in parts {
            room[at..at + p.len()].copy_from_slice(p.as_bytes());
            at += p.len();
        }
        // Pieces of UTF-8 put end to end are UTF-8: never the default.
        return Arc::from(std::str::from_utf8(room).unwrap_or_default());
    }
    Arc::from(parts.concat())
}

/// Makes a value safe to place in a header: CR, LF, NUL and other control
/// characters are replaced by a space, so no value can end the header line or
/// start a new one (header injection, TEST-MATRIX A10).
pub fn escape_header_value(value: &str) -> Cow<'_, str> {
    // Bytes first (every header the node writes passes here): a control
    // character is an ASCII byte below 0x20 or 0x7F, or U+0080–U+009F,
    // which UTF-8 writes 0xC2 0x80–0x9F; a value with none of those bytes
    // (nor any 0xC2) has none, and the characters are read only otherwise.
    // Checked 32 bytes at a time without an early exit, which the
    // compiler turns into vector compares: a twentieth of the engine's
    // instructions per call went to this scan a byte at a time.
    let suspect = |b: u8| (b < 0x20 && b != b'\t') | (b == 0x7f) | (b == 0xc2);
    let chunks = value.as_bytes().chunks_exact(32);
    let tail = chunks.remainder();
    let mut any = tail.iter().fold(false, |acc, &b| acc | suspect(b));
    for chunk in chunks {
        if any {
            break;
        }
        any = chunk.iter().fold(false, |acc, &b| acc | suspect(b));
    }
    if !any {
        return Cow::Borrowed(value);
    }
    if value.chars().any(|c| c.is_control() && c != '\t') {
        Cow::Owned(
            value
                .chars()
                .map(|c| if c.is_control() && c != '\t' { ' ' } else { c })
                .collect(),
        )
    } else {
        Cow::Borrowed(value)
    }
}

impl Message {
    /// The method of a request, or the CSeq method of a response.
    pub fn method(&self) -> &Method {
        match &self.start {
            StartLine::Request { method, .. } => method,
            StartLine::Response { .. } => &self.cseq_method,
        }
    }

    /// Whether this is a request.
    pub fn is_request(&self) -> bool {
        matches!(self.start, StartLine::Request { .. })
    }

    /// The status code of a response, 0 for a request.
    pub fn code(&self) -> u16 {
        match self.start {
            StartLine::Response { code, .. } => code,
            StartLine::Request { .. } => 0,
        }
    }

    /// The Request-URI of a request.
    pub fn request_uri(&self) -> Option<&str> {
        match &self.start {
            StartLine::Request { uri, .. } => Some(uri),
            StartLine::Response { .. } => None,
        }
    }

    /// The first value of a header, by case-insensitive long name.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|h| h.name.eq_ignore_ascii_case(name))
            .map(|h| &*h.value)
    }

    /// Records where a request really came from in its top Via (RFC 3261
    /// §18.2.1, RFC 3581): `received` when the sent-by host is not the
    /// source's address, and `rport` filled with the source port when the
    /// client asked for it (an empty `rport`), with `received` then always.
    /// Responses copy the Via, so a phone behind NAT learns its public
    /// address and port from them (and keeps its mapping alive with
    /// REGISTER refreshes towards it).
    pub fn stamp_via(&mut self, source: SocketAddr) {
        let Some(h) = self.headers.iter_mut().find(|h| h.name == "Via") else {
            return;
        };
        // The top Via is the first value of the first Via header.
        let (top, rest) = match h.value.find(',') {
            Some(i) => h.value.split_at(i),
            None => (&*h.value, ""),
        };
        let mut parts = top.split(';').map(str::trim);
        let Some(sent) = parts.next() else {
            return;
        };
        let params: Vec<&str> = parts.collect();
        let name = |p: &str| {
            p.split('=')
                .next()
                .unwrap_or_default()
                .trim()
                .to_ascii_lowercase()
        };
        let asks_rport = params.iter().any(|p| p.eq_ignore_ascii_case("rport"));
        let host = sent
            .split_whitespace()
            .last()
            .map(|hp| match hp.strip_prefix('[') {
                Some(v6) => v6.split(']').next().unwrap_or_default(),
                None => hp.split(':').next().unwrap_or_default(),
            })
            .unwrap_or_default();
        let ip = source.ip().to_canonical();
        let differs = host
            .parse::<IpAddr>()
            .map_or(true, |h| h.to_canonical() != ip);
        if !asks_rport && !differs {
            return;
        }
        let mut out = String::with_capacity(h.value.len() + 40);
        out.push_str(sent);
        for p in &params {
            let n = name(p);
            // Ours replace any the client sent.
            if n == "received" || (asks_rport && n == "rport") {
                continue;
            }
            out.push(';');
            out.push_str(p);
        }
        out.push_str(";received=");
        push_ip(&mut out, ip);
        if asks_rport {
            out.push_str(";rport=");
            out.push_str(decimal(u64::from(source.port()), &mut [0; 20]));
        }
        out.push_str(rest);
        h.value = out.into();
    }

    /// Whether the message lists the extension `option` in `Supported`
    /// (or compact `k`, named so when parsed) or `Require`.
    pub fn supports(&self, option: &str) -> bool {
        ["Supported", "Require"].iter().any(|h| {
            self.headers_named(h)
                .flat_map(crate::uri::split_list)
                .any(|o| o.trim().eq_ignore_ascii_case(option))
        })
    }

    /// All values of a header, by case-insensitive long name.
    pub fn headers_named<'a>(&'a self, name: &'a str) -> impl Iterator<Item = &'a str> + 'a {
        self.headers
            .iter()
            .filter(move |h| h.name.eq_ignore_ascii_case(name))
            .map(|h| &*h.value)
    }

    /// Appends a header; the value is escaped so it cannot inject lines.
    pub fn push(&mut self, name: &'static str, value: &str) {
        self.headers.push(Header {
            name: Cow::Borrowed(name),
            value: Value::from(&*escape_header_value(value)),
        });
    }

    /// As [`Message::push`], for a value already shared: kept as it is
    /// when it is safe to place (no copy), escaped otherwise.
    pub fn push_shared(&mut self, name: &'static str, value: impl Into<Value>) {
        let value = value.into();
        let value = match escape_header_value(&value) {
            Cow::Borrowed(_) => value,
            Cow::Owned(escaped) => escaped.into(),
        };
        self.headers.push(Header {
            name: Cow::Borrowed(name),
            value,
        });
    }

    /// Removes every header with this name.
    pub fn remove(&mut self, name: &str) {
        self.headers.retain(|h| !h.name.eq_ignore_ascii_case(name));
    }

    /// A new request with its essential headers in the RFC 3261 §8.1.1 order.
    /// `from` and `to` are complete header values, tags included.
    pub fn new_request(
        method: Method,
        uri: &str,
        via: Via,
        from: &str,
        to: &str,
        call_id: impl Into<Value>,
        cseq: u32,
    ) -> Self {
        let cseq_method = if method == Method::Ack {
            Method::Ack
        } else {
            method.clone()
        };
        let mut m = Self {
            start: StartLine::Request {
                method,
                uri: escape_header_value(uri).into_owned(),
            },
            headers: Vec::with_capacity(10),
            body: Vec::new(),
            // Detached: a request may be kept as long as its transaction,
            // and a received message's Call-ID would keep that message's
            // header section (free for our own and a dialog's values).
            call_id: call_id.into().detached(),
            cseq,
            cseq_method,
            from_tag: None,
            to_tag: None,
            via: via.clone(),
            max_forwards: Some(70),
        };
        m.push_shared(
            "Via",
            joined(&[
                "SIP/2.0/",
                &via.transport,
                " ",
                &via.sent_by,
                ";branch=",
                &via.branch,
            ]),
        );
        m.push("Max-Forwards", "70");
        m.push("From", from);
        m.push("To", to);
        // The header shares the field's text (one allocation for both).
        m.push_shared("Call-ID", m.call_id.clone());
        let cseq_method = m.cseq_method.clone();
        let mut digits = [0u8; 20];
        m.push_shared(
            "CSeq",
            joined(&[
                decimal(u64::from(cseq), &mut digits),
                " ",
                cseq_method.as_str(),
            ]),
        );
        m
    }

    /// A response to this request (RFC 3261 §8.2.6): Via, From, To, Call-ID and
    /// CSeq copied; `to_tag` added to To when it has none. A response that
    /// creates or confirms a dialog (101–299 to an INVITE) also copies the
    /// Record-Route values (§12.1.1), so the caller's requests in the call
    /// follow the proxies (a carrier's SBC) that asked to stay in the path.
    pub fn response(&self, code: u16, reason: &'static str, to_tag: Option<&str>) -> Self {
        let mut headers = Vec::with_capacity(8);
        let mut new_to_tag = self.to_tag.clone();
        let dialog = (101..300).contains(&code) && *self.method() == Method::Invite;
        for h in &self.headers {
            match &*h.name {
                "Via" | "From" | "Call-ID" | "CSeq" => headers.push(h.clone()),
                "Record-Route" if dialog => headers.push(h.clone()),
                "To" => {
                    let mut h = h.clone();
                    if self.to_tag.is_none()
                        && let Some(tag) = to_tag
                    {
                        let escaped = escape_header_value(tag);
                        let value: Value = joined(&[&h.value, ";tag=", &escaped]).into();
                        // The field shares the header's text when it is
                        // the tag as given (a control character was
                        // replaced in the header only).
                        new_to_tag = Some(match escaped {
                            Cow::Borrowed(_) => value
                                .slice(&value[value.len() - tag.len()..])
                                .unwrap_or_else(|| Value::from(tag)),
                            Cow::Owned(_) => Value::from(tag),
                        });
                        h.value = value;
                    }
                    headers.push(h);
                }
                _ => {}
            }
        }
        Self {
            start: StartLine::Response {
                code,
                reason: match escape_header_value(reason) {
                    Cow::Borrowed(_) => Cow::Borrowed(reason),
                    Cow::Owned(escaped) => Cow::Owned(escaped),
                },
            },
            headers,
            body: Vec::new(),
            call_id: self.call_id.clone(),
            cseq: self.cseq,
            cseq_method: self.cseq_method.clone(),
            from_tag: self.from_tag.clone(),
            to_tag: new_to_tag,
            via: self.via.clone(),
            max_forwards: None,
        }
    }

    /// Sets the body and its Content-Type.
    pub fn set_body(&mut self, content_type: Option<&str>, body: Vec<u8>) {
        self.remove("Content-Type");
        if let Some(ct) = content_type {
            self.push("Content-Type", ct);
        }
        self.body = body;
    }

    /// Serialises the message; Content-Length is always written from the body.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(512 + self.body.len());
        self.write_to(&mut out);
        out
    }

    /// Serialises into `out` (appending). By hand, not `write!`: every
    /// message the node sends passes here, and the formatter was a
    /// twentieth of the engine's instructions per call.
    pub fn write_to(&self, out: &mut Vec<u8>) {
        let mut digits = [0u8; 20];
        match &self.start {
            StartLine::Request { method, uri } => {
                out.extend_from_slice(method.as_str().as_bytes());
                out.push(b' ');
                out.extend_from_slice(uri.as_bytes());
                out.extend_from_slice(b" SIP/2.0\r\n");
            }
            StartLine::Response { code, reason } => {
                out.extend_from_slice(b"SIP/2.0 ");
                out.extend_from_slice(decimal(u64::from(*code), &mut digits).as_bytes());
                out.push(b' ');
                out.extend_from_slice(reason.as_bytes());
                out.extend_from_slice(b"\r\n");
            }
        }
        for h in &self.headers {
            if h.name.eq_ignore_ascii_case("Content-Length") {
                continue;
            }
            out.extend_from_slice(h.name.as_bytes());
            out.extend_from_slice(b": ");
            out.extend_from_slice(h.value.as_bytes());
            out.extend_from_slice(b"\r\n");
        }
        out.extend_from_slice(b"Content-Length: ");
        out.extend_from_slice(decimal(self.body.len() as u64, &mut digits).as_bytes());
        out.extend_from_slice(b"\r\n\r\n");
        out.extend_from_slice(&self.body);
    }
}

/// `addr` as its `Display` writes it: IPv4 by hand (every request and
/// answer the node makes names its address; the formatter was a fortieth
/// of the engine's instructions per call), the rare IPv6 through it.
pub(crate) fn push_addr(out: &mut String, addr: SocketAddr) {
    match addr {
        SocketAddr::V4(v4) => {
            push_ip(out, IpAddr::V4(*v4.ip()));
            out.push(':');
            out.push_str(decimal(u64::from(v4.port()), &mut [0; 20]));
        }
        SocketAddr::V6(_) => {
            use std::fmt::Write;
            // Writing to a String cannot fail.
            let _ = write!(out, "{addr}");
        }
    }
}

/// `ip` as its `Display` writes it (IPv4 by hand, as [`push_addr`]).
pub(crate) fn push_ip(out: &mut String, ip: IpAddr) {
    match ip {
        IpAddr::V4(v4) => {
            for (i, o) in v4.octets().into_iter().enumerate() {
                if i > 0 {
                    out.push('.');
                }
                out.push_str(decimal(u64::from(o), &mut [0; 20]));
            }
        }
        IpAddr::V6(_) => {
            use std::fmt::Write;
            // Writing to a String cannot fail.
            let _ = write!(out, "{ip}");
        }
    }
}

/// `n` in decimal, written into `buf` (without the formatter).
pub(crate) fn decimal(mut n: u64, buf: &mut [u8; 20]) -> &str {
    let mut i = buf.len();
    loop {
        i -= 1;
        buf[i] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    // ASCII digits: never the default.
    std::str::from_utf8(&buf[i..]).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_slice_of_a_value_shares_its_buffer_and_nothing_else_is_one() {
        let v = Value::from("abc;tag=xyz");
        let tag = &v[8..];
        let s = v.slice(tag).unwrap();
        assert_eq!(s, "xyz");
        assert!(s.shares_buffer(&v));
        // A slice of the slice stays inside the first one's range.
        assert_eq!(s.slice(&tag[1..]).unwrap(), "yz");
        assert_eq!(s.slice(&v[..3]), None, "before the range");
        assert_eq!(v.slice("xyz"), None, "another string");
        assert_eq!(v.slice(&v[11..]).unwrap(), "");
        assert_eq!(s.detached(), "xyz");
        assert!(!s.detached().shares_buffer(&v));
    }

    #[test]
    fn messages_are_written_as_the_formatter_wrote_them() {
        let via = Via {
            transport: "UDP".into(),
            sent_by: "192.0.2.1:5060".into(),
            branch: "z9hG4bKx".into(),
        };
        for (cseq, body) in [(0u32, 0usize), (7, 9), (u32::MAX, 1234)] {
            let mut req = Message::new_request(
                Method::Other("FOO".into()),
                "sip:a@b",
                via.clone(),
                "<sip:c@d>;tag=1",
                "<sip:a@b>",
                "id",
                cseq,
            );
            req.body = vec![b'x'; body];
            let text = String::from_utf8(req.to_bytes()).unwrap();
            assert!(text.starts_with("FOO sip:a@b SIP/2.0\r\n"), "{text}");
            assert!(
                text.contains(&format!("\r\nCSeq: {cseq} FOO\r\n")),
                "{text}"
            );
            assert!(text.ends_with(&format!(
                "Content-Length: {body}\r\n\r\n{}",
                "x".repeat(body)
            )));
            for code in [100u16, 180, 200, 486, 699] {
                let resp =
                    String::from_utf8(req.response(code, "Why Not", None).to_bytes()).unwrap();
                assert!(
                    resp.starts_with(&format!("SIP/2.0 {code} Why Not\r\n")),
                    "{resp}"
                );
                assert!(resp.ends_with("Content-Length: 0\r\n\r\n"), "{resp}");
            }
        }
    }

    proptest::proptest! {
        #[test]
        fn escaping_reads_bytes_as_the_characters_say(
            value in r"\PC*|[\x00-\x20\x7f-\u{a0}a-z\t\u{e9}\u{100}]*",
            pad in 0usize..100,
        ) {
            // Padded too, so the bad byte lands in any 32-byte chunk or
            // in the tail.
            let value = format!("{}{value}{}", "a".repeat(pad), "b".repeat(pad % 37));
            let by_chars: String = value
                .chars()
                .map(|c| if c.is_control() && c != '\t' { ' ' } else { c })
                .collect();
            proptest::prop_assert_eq!(&*escape_header_value(&value), by_chars.as_str());
            // Borrowed exactly when nothing changes.
            proptest::prop_assert_eq!(
                matches!(escape_header_value(&value), Cow::Borrowed(_)),
                by_chars == value
            );
        }
    }

    #[test]
    fn dialog_responses_to_an_invite_carry_its_record_route() {
        let text = "INVITE sip:100@node SIP/2.0\r\nVia: SIP/2.0/TCP sbc;branch=z9hG4bKa\r\nRecord-Route: <sip:sbc;transport=tcp;lr>\r\nRecord-Route: <sip:sbc-out;lr>\r\nFrom: <sip:c@x>;tag=a\r\nTo: <sip:100@node>\r\nCall-ID: c\r\nCSeq: 1 INVITE\r\nContent-Length: 0\r\n\r\n";
        let Ok(crate::guard::Framed::Message(m)) =
            crate::guard::parse_datagram(text.as_bytes(), &crate::guard::Limits::default())
        else {
            panic!()
        };
        let rr = |code| {
            m.response(code, "x", Some("t"))
                .headers_named("Record-Route")
                .map(str::to_owned)
                .collect::<Vec<_>>()
        };
        assert_eq!(rr(200), ["<sip:sbc;transport=tcp;lr>", "<sip:sbc-out;lr>"]);
        assert_eq!(rr(183).len(), 2);
        assert!(rr(100).is_empty() && rr(486).is_empty());
        // The new tag is the To header's own text, and the request's
        // Call-ID and From tag are shared, not copied.
        let ok = m.response(200, "OK", Some("t1"));
        let to = &ok.headers.iter().find(|h| h.name == "To").unwrap().value;
        assert_eq!(&**to, "<sip:100@node>;tag=t1");
        assert_eq!(ok.to_tag.as_deref(), Some("t1"));
        assert!(ok.to_tag.as_ref().unwrap().shares_buffer(to));
        assert!(ok.call_id.shares_buffer(&m.call_id));
        assert!(ok.from_tag.as_ref().unwrap().shares_buffer(&m.call_id));
        assert!(matches!(
            ok.start,
            StartLine::Response {
                reason: Cow::Borrowed("OK"),
                ..
            }
        ));
        // A control character reaches the header replaced; the field keeps
        // the tag as given, in a buffer of its own.
        let odd = m.response(200, "O\u{7}K", Some("t\u{1}"));
        let to = odd.headers.iter().find(|h| h.name == "To").unwrap();
        assert_eq!(&*to.value, "<sip:100@node>;tag=t ");
        assert_eq!(odd.to_tag.as_deref(), Some("t\u{1}"));
        assert!(matches!(
            &odd.start,
            StartLine::Response { reason, .. } if reason == "O K"
        ));
    }

    #[test]
    fn the_top_via_learns_where_the_request_came_from() {
        let stamp = |via: &str, from: &str| {
            let text = format!(
                "REGISTER sip:r SIP/2.0\r\nVia: {via}\r\nFrom: <sip:1@r>;tag=a\r\nTo: <sip:1@r>\r\nCall-ID: c\r\nCSeq: 1 REGISTER\r\nContent-Length: 0\r\n\r\n"
            );
            let Ok(crate::guard::Framed::Message(mut m)) =
                crate::guard::parse_datagram(text.as_bytes(), &crate::guard::Limits::default())
            else {
                panic!("{via}")
            };
            m.stamp_via(from.parse().unwrap());
            m.response(200, "OK", Some("t"))
                .header("Via")
                .unwrap()
                .to_owned()
        };
        // Behind NAT, asking for rport (RFC 3581 §4).
        assert_eq!(
            stamp(
                "SIP/2.0/UDP 10.0.0.5:5060;branch=z9hG4bKa;rport",
                "203.0.113.7:40123"
            ),
            "SIP/2.0/UDP 10.0.0.5:5060;branch=z9hG4bKa;received=203.0.113.7;rport=40123"
        );
        // The same host, rport asked: both all the same.
        assert_eq!(
            stamp(
                "SIP/2.0/UDP 127.0.0.1:5070;rport;branch=z9hG4bKb",
                "127.0.0.1:5070"
            ),
            "SIP/2.0/UDP 127.0.0.1:5070;branch=z9hG4bKb;received=127.0.0.1;rport=5070"
        );
        // Another host without rport: received only (RFC 3261 §18.2.1);
        // a received the client made up is replaced.
        assert_eq!(
            stamp(
                "SIP/2.0/TCP phone.example;branch=z9hG4bKc;received=1.2.3.4",
                "192.0.2.9:3333"
            ),
            "SIP/2.0/TCP phone.example;branch=z9hG4bKc;received=192.0.2.9"
        );
        // The same host, no rport: untouched; only the top Via changes.
        assert_eq!(
            stamp(
                "SIP/2.0/UDP 192.0.2.9:5060;branch=z9hG4bKd",
                "192.0.2.9:5060"
            ),
            "SIP/2.0/UDP 192.0.2.9:5060;branch=z9hG4bKd"
        );
        assert_eq!(
            stamp(
                "SIP/2.0/UDP [2001:db8::1]:5060;branch=z9hG4bKe;rport, SIP/2.0/UDP 10.0.0.1;branch=z9hG4bKf;rport",
                "[2001:db8::2]:7000"
            ),
            "SIP/2.0/UDP [2001:db8::1]:5060;branch=z9hG4bKe;received=2001:db8::2;rport=7000, SIP/2.0/UDP 10.0.0.1;branch=z9hG4bKf;rport"
        );
    }

    #[test]
    fn escaping_removes_line_breaks() {
        assert_eq!(escape_header_value("a\r\nVia: x"), "a  Via: x");
        assert_eq!(escape_header_value("plain"), "plain");
        assert_eq!(escape_header_value("nul\0"), "nul ");
    }

    #[test]
    fn injected_values_never_start_a_header_line() {
        let via = Via {
            transport: "UDP".into(),
            sent_by: "127.0.0.1:5060".into(),
            branch: "z9hG4bK1".into(),
        };
        let mut m = Message::new_request(
            Method::Invite,
            "sip:100@127.0.0.1\r\nX: y",
            via,
            "\"evil\r\nRoute: <sip:x>\" <sip:1@a>;tag=t1",
            "<sip:100@b>",
            "cid\r\n",
            1,
        );
        m.push("Subject", "hi\r\n\r\nINVITE sip:x SIP/2.0");
        let text = String::from_utf8(m.to_bytes()).unwrap();
        let lines: Vec<&str> = text.split("\r\n").collect();
        assert!(
            lines
                .iter()
                .all(|l| !l.starts_with("Route") && !l.starts_with("X:"))
        );
        assert_eq!(lines.iter().filter(|l| l.starts_with("INVITE ")).count(), 1);
        assert_eq!(text.matches("\r\n\r\n").count(), 1);
    }
}

#[cfg(test)]
mod joined_tests {
    use super::*;

    #[test]
    fn joins_short_and_long_values_alike() {
        assert_eq!(&*joined(&["<sip:a@h>", ";tag=", "x1"]), "<sip:a@h>;tag=x1");
        assert_eq!(&*joined(&[]), "");
        let long = "é".repeat(200);
        assert_eq!(&*joined(&[&long, ";tag=", "t"]), format!("{long};tag=t"));
    }

    #[test]
    fn a_shared_value_is_escaped_only_when_it_must_be() {
        let mut m = Message::new_request(
            Method::Options,
            "sip:a@h",
            Via::default(),
            "<sip:b@h>;tag=1",
            "<sip:a@h>",
            "c",
            1,
        );
        let clean: Arc<str> = Arc::from("<sip:x@h>");
        m.push_shared("Contact", clean.clone());
        m.push_shared("Subject", Arc::from("a\r\nVia: forged"));
        assert!(m.headers[m.headers.len() - 2].value.is(&clean));
        assert_eq!(m.header("Subject"), Some("a  Via: forged"));
    }
}
