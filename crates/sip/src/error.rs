use thiserror::Error;

/// Why the ingress guard refused a message.
///
/// Messages never echo input: the text of every variant is fixed, so parse
/// errors can be logged and counted without leaking numbers or bodies.
#[derive(Debug, Error, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum ParseError {
    /// The message exceeds `max_message_bytes`.
    #[error("message too large")]
    TooLarge,
    /// More header fields than `max_headers`.
    #[error("too many header fields")]
    TooManyHeaders,
    /// A header line longer than `max_header_line_bytes`.
    #[error("header line too long")]
    HeaderLineTooLong,
    /// No empty line ends the header section.
    #[error("header section not terminated")]
    Incomplete,
    /// The start line is neither a Request-Line nor a Status-Line.
    #[error("malformed start line")]
    BadStartLine,
    /// The SIP version is not SIP/2.0.
    #[error("unsupported SIP version")]
    BadVersion,
    /// A Status-Line whose code is not three digits in 100..=699.
    #[error("bad status code")]
    BadStatusCode,
    /// The Request-URI does not parse, or holds headers or spaces.
    #[error("malformed Request-URI")]
    BadRequestUri,
    /// A header line has no colon or an invalid field name.
    #[error("malformed header line")]
    BadHeaderLine,
    /// Bytes in the header section are not UTF-8.
    #[error("header section is not UTF-8")]
    BadEncoding,
    /// Content-Length is missing on a stream where it is needed, negative, not a
    /// number, repeated with other values, or larger than the data.
    #[error("bad Content-Length")]
    BadContentLength,
    /// The body is larger than `max_body_bytes`.
    #[error("body too large")]
    BodyTooLarge,
    /// A required header (Via, From, To, Call-ID, CSeq) is missing.
    #[error("missing required header")]
    MissingHeader,
    /// A single-valued header appears more than once.
    #[error("repeated single-valued header")]
    RepeatedHeader,
    /// CSeq does not parse or its number exceeds 2^32-1.
    #[error("bad CSeq")]
    BadCSeq,
    /// The CSeq method differs from the request method.
    #[error("CSeq method does not match the request")]
    CSeqMismatch,
    /// Max-Forwards is not a number in 0..=255.
    #[error("bad Max-Forwards")]
    BadMaxForwards,
    /// The top Via is malformed or its branch lacks an RFC 3261 transaction id.
    #[error("bad Via")]
    BadVia,
    /// A From, To or Contact value is malformed (display name, brackets, spaces).
    #[error("bad address header")]
    BadAddress,
}

impl ParseError {
    /// A stable, low-cardinality code for the metric `reason` label and logs.
    pub fn code(&self) -> &'static str {
        match self {
            Self::TooLarge => "too_large",
            Self::TooManyHeaders => "too_many_headers",
            Self::HeaderLineTooLong => "header_line_too_long",
            Self::Incomplete => "incomplete",
            Self::BadStartLine => "bad_start_line",
            Self::BadVersion => "bad_version",
            Self::BadStatusCode => "bad_status_code",
            Self::BadRequestUri => "bad_request_uri",
            Self::BadHeaderLine => "bad_header_line",
            Self::BadEncoding => "bad_encoding",
            Self::BadContentLength => "bad_content_length",
            Self::BodyTooLarge => "body_too_large",
            Self::MissingHeader => "missing_header",
            Self::RepeatedHeader => "repeated_header",
            Self::BadCSeq => "bad_cseq",
            Self::CSeqMismatch => "cseq_mismatch",
            Self::BadMaxForwards => "bad_max_forwards",
            Self::BadVia => "bad_via",
            Self::BadAddress => "bad_address",
        }
    }

    /// The status to answer a refused *request* with (responses are dropped).
    pub fn sip_status(&self) -> u16 {
        match self {
            Self::BadVersion => 505,
            Self::TooLarge | Self::BodyTooLarge => 413,
            _ => 400,
        }
    }

    /// Whether a stream connection must be closed: framing is unrecoverable.
    pub fn breaks_framing(&self) -> bool {
        matches!(
            self,
            Self::BadContentLength | Self::TooLarge | Self::BodyTooLarge | Self::Incomplete
        )
    }
}
