//! Trace context propagation: read the caller's trace context from W3C
//! Trace Context or B3 headers, make the context of this hop's span (a
//! child of the caller's, or the root of a new trace), and write it on the
//! request sent on. No span is recorded here: exporting spans is a later
//! step that consumes the [`TraceContext`] this module makes (it carries
//! the trace id, this hop's span id and its parent's).
//!
//! # The headers
//!
//! - [`TRACEPARENT`] (W3C): `VV-<32 hex trace-id>-<16 hex parent-id>-<2 hex
//!   flags>`, lowercase only, neither id all zeros, version `ff` invalid.
//!   Version `00` must be exactly 55 characters. A higher version is read
//!   by the spec's forward-compatibility rule: its first four fields as
//!   above, and if longer than 55 characters the 56th must be `-`. Only the
//!   `sampled` flag (bit 0) is used; the context is always written back as
//!   version `00`.
//! - [`TRACESTATE`] (W3C): kept as it is when valid and the traceparent is
//!   (at most [`TRACESTATE_MAX_MEMBERS`] list members, at most
//!   [`TRACESTATE_MAX_LEN`] characters, each member `key=value` with the
//!   spec's character sets); dropped otherwise, never truncated.
//! - B3 multi-header: [`X_B3_TRACEID`] (16 or 32 lowercase hex),
//!   [`X_B3_SPANID`] (16 hex), [`X_B3_PARENTSPANID`] (16 hex, optional),
//!   [`X_B3_SAMPLED`] (`1`/`0`, also the legacy `true`/`false`; absent =
//!   the decision is deferred to us), [`X_B3_FLAGS`] (`1` = debug, which
//!   implies sampled; other values are ignored, as the B3 spec says).
//!   `x-b3-sampled` alone is a sampling decision without a context.
//! - B3 single header [`B3`]: `{traceid}-{spanid}[-{sampled}[-{parentspanid}]]`
//!   with sampled `1`, `0` or `d` (debug), or just `{sampled}` (e.g. `b3: 0`,
//!   a decision without a context).
//!
//! # Precedence
//!
//! A valid `traceparent` wins. Then a valid `b3`, then valid `x-b3-*`
//! headers (Zipkin's order). When the caller sent a valid `traceparent`
//! *and* valid B3 headers of the same trace, both are written back so that
//! B3-only callees keep working; B3 headers of another trace are dropped.
//! Every present header that does not parse is reported in
//! [`Extracted::malformed`] (a B3 trace id without a span id counts as a
//! malformed `x-b3-spanid`), even when another header supplied the context:
//! the proxy removes and counts them, never forwards them broken.
//!
//! # Sampling
//!
//! The caller's decision is kept when it made one (W3C flags, B3 sampled or
//! debug, `b3: 0`). Otherwise [`Sampler`] decides, by a ratio in `0..=1`.
//!
//! # Ids
//!
//! Ids come from [`Random`]: not cryptographic, never all zeros. A 64-bit
//! B3 trace id is widened to 128 bits with leading zeros (as Zipkin does);
//! a trace id whose high half is zero is written in B3 as 16 hex digits.

use crate::rng::Random;

/// The W3C trace context header.
pub const TRACEPARENT: &str = "traceparent";
/// The W3C vendor-specific trace state header.
pub const TRACESTATE: &str = "tracestate";
/// The B3 single header.
pub const B3: &str = "b3";
/// B3 multi-header: the trace id.
pub const X_B3_TRACEID: &str = "x-b3-traceid";
/// B3 multi-header: the caller's span id.
pub const X_B3_SPANID: &str = "x-b3-spanid";
/// B3 multi-header: the caller's parent span id.
pub const X_B3_PARENTSPANID: &str = "x-b3-parentspanid";
/// B3 multi-header: the sampling decision.
pub const X_B3_SAMPLED: &str = "x-b3-sampled";
/// B3 multi-header: `1` = debug.
pub const X_B3_FLAGS: &str = "x-b3-flags";

/// At most this many list members in a kept `tracestate`.
pub const TRACESTATE_MAX_MEMBERS: usize = 32;
/// At most this many characters in a kept `tracestate`.
pub const TRACESTATE_MAX_LEN: usize = 512;

/// Length of a version `00` `traceparent`.
pub const TRACEPARENT_LEN: usize = 55;

/// One of the headers that carry a trace context.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum TraceHeader {
    Traceparent = 0,
    Tracestate = 1,
    B3 = 2,
    XB3TraceId = 3,
    XB3SpanId = 4,
    XB3ParentSpanId = 5,
    XB3Sampled = 6,
    XB3Flags = 7,
}

impl TraceHeader {
    /// All of them, in precedence order (also the order of their index).
    pub const ALL: [TraceHeader; 8] = [
        TraceHeader::Traceparent,
        TraceHeader::Tracestate,
        TraceHeader::B3,
        TraceHeader::XB3TraceId,
        TraceHeader::XB3SpanId,
        TraceHeader::XB3ParentSpanId,
        TraceHeader::XB3Sampled,
        TraceHeader::XB3Flags,
    ];

    /// The B3 multi-headers.
    pub const B3_MULTI: [TraceHeader; 5] = [
        TraceHeader::XB3TraceId,
        TraceHeader::XB3SpanId,
        TraceHeader::XB3ParentSpanId,
        TraceHeader::XB3Sampled,
        TraceHeader::XB3Flags,
    ];

    /// The header name, lowercase (also a metrics label value).
    pub fn name(self) -> &'static str {
        match self {
            TraceHeader::Traceparent => TRACEPARENT,
            TraceHeader::Tracestate => TRACESTATE,
            TraceHeader::B3 => B3,
            TraceHeader::XB3TraceId => X_B3_TRACEID,
            TraceHeader::XB3SpanId => X_B3_SPANID,
            TraceHeader::XB3ParentSpanId => X_B3_PARENTSPANID,
            TraceHeader::XB3Sampled => X_B3_SAMPLED,
            TraceHeader::XB3Flags => X_B3_FLAGS,
        }
    }

    /// Its position in [`ALL`](Self::ALL), for tables of pre-parsed names.
    pub fn index(self) -> usize {
        self as usize
    }

    /// The header of a (lowercase) name, if it is one of these.
    pub fn from_name(name: &str) -> Option<TraceHeader> {
        Some(match name {
            TRACEPARENT => TraceHeader::Traceparent,
            TRACESTATE => TraceHeader::Tracestate,
            B3 => TraceHeader::B3,
            X_B3_TRACEID => TraceHeader::XB3TraceId,
            X_B3_SPANID => TraceHeader::XB3SpanId,
            X_B3_PARENTSPANID => TraceHeader::XB3ParentSpanId,
            X_B3_SAMPLED => TraceHeader::XB3Sampled,
            X_B3_FLAGS => TraceHeader::XB3Flags,
            _ => return None,
        })
    }
}

/// A set of [`TraceHeader`]s (a bit set: no allocation).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct HeaderSet(u8);

impl HeaderSet {
    pub const EMPTY: HeaderSet = HeaderSet(0);

    pub fn insert(&mut self, h: TraceHeader) {
        self.0 |= 1 << h.index();
    }

    pub fn contains(self, h: TraceHeader) -> bool {
        self.0 & (1 << h.index()) != 0
    }

    pub fn is_empty(self) -> bool {
        self.0 == 0
    }

    /// The headers in the set, in [`TraceHeader::ALL`] order.
    pub fn iter(self) -> impl Iterator<Item = TraceHeader> {
        TraceHeader::ALL
            .into_iter()
            .filter(move |h| self.contains(*h))
    }
}

/// How the caller propagated its context, and so which headers are written
/// on: `traceparent` always, plus B3 in the caller's style.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Format {
    W3c,
    B3Multi,
    B3Single,
}

/// A span's place in a trace: the caller's (as read) or this hop's (from
/// [`Extracted::child`]). `Copy`, so every attempt can carry it for free.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct TraceContext {
    pub trace_id: [u8; 16],
    /// This span's id (for a context read from a request: the caller's
    /// span, i.e. our parent).
    pub span_id: [u8; 8],
    /// The parent span's id, when known (B3 `parentspanid`; for a child,
    /// the caller's span; `None` for the root of a new trace).
    pub parent_span_id: Option<[u8; 8]>,
    pub sampled: bool,
    /// B3 debug (`x-b3-flags: 1`, `b3: ...-d`); implies `sampled`.
    pub debug: bool,
    pub format: Format,
}

/// What the caller's headers said.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Extracted<'a> {
    /// The caller's context, when a valid one was present.
    pub context: Option<TraceContext>,
    /// The `tracestate` to keep (valid, next to a valid `traceparent`).
    pub tracestate: Option<&'a str>,
    /// The caller's sampling decision: from its context or alone (`b3: 0`,
    /// `x-b3-sampled` without ids); `None` = ours to make.
    pub sampled: Option<bool>,
    /// B3 debug asked for.
    pub debug: bool,
    /// The format to write on (the caller's; `W3c` when it sent nothing).
    pub format: Option<Format>,
    /// Headers present on the request (valid or not).
    pub present: HeaderSet,
    /// Headers present but malformed (to remove and count).
    pub malformed: HeaderSet,
}

/// Reads the caller's trace context. `get` returns a header's (first)
/// value. Never fails and never panics: see [`Extracted::malformed`].
pub fn extract<'a>(mut get: impl FnMut(TraceHeader) -> Option<&'a [u8]>) -> Extracted<'a> {
    let mut out = Extracted::default();
    let mut values: [Option<&'a [u8]>; 8] = [None; 8];
    for h in TraceHeader::ALL {
        values[h.index()] = get(h);
        if values[h.index()].is_some() {
            out.present.insert(h);
        }
    }
    if out.present.is_empty() {
        return out;
    }
    let value = |h: TraceHeader| values[h.index()];

    let w3c = value(TraceHeader::Traceparent).and_then(|v| match parse_traceparent(v) {
        Ok(c) => Some(c),
        Err(_) => {
            out.malformed.insert(TraceHeader::Traceparent);
            None
        }
    });
    let single = value(TraceHeader::B3).and_then(|v| match parse_b3(v) {
        Ok(b) => Some(b),
        Err(_) => {
            out.malformed.insert(TraceHeader::B3);
            None
        }
    });
    let multi = read_b3_multi(&values, &mut out.malformed);

    let b3 = match (single, multi) {
        (Some(c @ B3Value::Context { .. }), _) | (_, Some(c @ B3Value::Context { .. })) => Some(c),
        (Some(d), _) => Some(d),
        (None, m) => m,
    };
    match w3c {
        Some(c) => out.continue_w3c(c, b3, value(TraceHeader::Tracestate)),
        None => out.continue_b3(b3),
    }
    out
}

impl<'a> Extracted<'a> {
    /// A valid `traceparent`: it wins; B3 of the same trace is written
    /// back too; its `tracestate` is kept when valid.
    fn continue_w3c(&mut self, mut c: TraceContext, b3: Option<B3Value>, ts: Option<&'a [u8]>) {
        if let Some(B3Value::Context { context: b, .. }) = b3
            && b.trace_id == c.trace_id
        {
            c.format = b.format;
        }
        if let Some(ts) = ts {
            match parse_tracestate(ts) {
                Ok(ts) => self.tracestate = Some(ts),
                Err(_) => self.malformed.insert(TraceHeader::Tracestate),
            }
        }
        self.sampled = Some(c.sampled);
        self.format = Some(c.format);
        self.context = Some(c);
    }

    fn continue_b3(&mut self, b3: Option<B3Value>) {
        match b3 {
            Some(B3Value::Context { context, sampled }) => {
                self.sampled = sampled;
                self.debug = context.debug;
                self.format = Some(context.format);
                self.context = Some(context);
            }
            Some(B3Value::Decision {
                sampled,
                debug,
                format,
            }) => {
                self.sampled = Some(sampled);
                self.debug = debug;
                self.format = Some(format);
            }
            None => {}
        }
    }
}

impl Extracted<'_> {
    /// The context of this hop's span: a child of the caller's (same trace,
    /// a new span id, the caller's span as parent), or the root of a new
    /// trace. The caller's sampling decision is kept when it made one;
    /// otherwise `sampler` decides.
    pub fn child(&self, sampler: Sampler, rng: &mut impl Random) -> TraceContext {
        let sampled = self.debug || self.sampled.unwrap_or_else(|| sampler.sample(rng));
        let format = self.format.unwrap_or(Format::W3c);
        match &self.context {
            Some(c) => TraceContext {
                trace_id: c.trace_id,
                span_id: new_span_id(rng),
                parent_span_id: Some(c.span_id),
                sampled,
                debug: self.debug,
                format,
            },
            None => TraceContext {
                trace_id: new_trace_id(rng),
                span_id: new_span_id(rng),
                parent_span_id: None,
                sampled,
                debug: self.debug,
                format,
            },
        }
    }
}

/// Decides whether a new trace is sampled.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Sampler {
    ratio: f64,
}

/// A sampling ratio outside `0.0..=1.0` (or NaN).
#[derive(Debug, Clone, Copy, PartialEq, thiserror::Error)]
#[error("sampling ratio {0} is not in 0.0..=1.0")]
pub struct InvalidRatio(pub f64);

impl Sampler {
    /// Samples every new trace (the proxy's default `--trace-sampling`).
    pub const ALWAYS: Sampler = Sampler { ratio: 1.0 };
    /// Samples none.
    pub const NEVER: Sampler = Sampler { ratio: 0.0 };

    pub fn new(ratio: f64) -> Result<Self, InvalidRatio> {
        if (0.0..=1.0).contains(&ratio) {
            Ok(Sampler { ratio })
        } else {
            Err(InvalidRatio(ratio))
        }
    }

    pub fn ratio(self) -> f64 {
        self.ratio
    }

    /// One decision; draws from `rng` only for a ratio strictly between 0 and 1.
    pub fn sample(self, rng: &mut impl Random) -> bool {
        if self.ratio >= 1.0 {
            true
        } else if self.ratio <= 0.0 {
            false
        } else {
            rng.next_f64() < self.ratio
        }
    }
}

/// A random trace id, never all zeros.
pub fn new_trace_id(rng: &mut impl Random) -> [u8; 16] {
    loop {
        let (hi, lo) = (rng.next_u64(), rng.next_u64());
        if hi != 0 || lo != 0 {
            let mut id = [0; 16];
            id[..8].copy_from_slice(&hi.to_be_bytes());
            id[8..].copy_from_slice(&lo.to_be_bytes());
            return id;
        }
    }
}

/// A random span id, never all zeros.
pub fn new_span_id(rng: &mut impl Random) -> [u8; 8] {
    loop {
        let v = rng.next_u64();
        if v != 0 {
            return v.to_be_bytes();
        }
    }
}

/// Writes the headers that carry `ctx` to the next hop: `traceparent`
/// always, and B3 in `ctx.format`'s style. `tracestate` is not written:
/// a kept one is forwarded untouched by the caller of this function.
pub fn inject(ctx: &TraceContext, mut set: impl FnMut(TraceHeader, &[u8])) {
    set(TraceHeader::Traceparent, format_traceparent(ctx).as_bytes());
    match ctx.format {
        Format::W3c => {}
        Format::B3Single => set(TraceHeader::B3, format_b3(ctx).as_bytes()),
        Format::B3Multi => {
            let mut buf = [0; 32];
            set(
                TraceHeader::XB3TraceId,
                b3_trace_id(&ctx.trace_id, &mut buf),
            );
            let mut buf = [0; 16];
            set(TraceHeader::XB3SpanId, hex(&ctx.span_id, &mut buf));
            if let Some(p) = &ctx.parent_span_id {
                set(TraceHeader::XB3ParentSpanId, hex(p, &mut buf));
            }
            // Debug implies sampled: B3 says not to send both.
            if ctx.debug {
                set(TraceHeader::XB3Flags, b"1");
            } else {
                set(
                    TraceHeader::XB3Sampled,
                    if ctx.sampled { b"1" } else { b"0" },
                );
            }
        }
    }
}

/// The headers [`inject`] writes for `format` (the rest of those present
/// are to be removed, except a kept `tracestate`).
pub fn written(format: Format, ctx: &TraceContext) -> HeaderSet {
    let mut s = HeaderSet::EMPTY;
    s.insert(TraceHeader::Traceparent);
    match format {
        Format::W3c => {}
        Format::B3Single => s.insert(TraceHeader::B3),
        Format::B3Multi => {
            s.insert(TraceHeader::XB3TraceId);
            s.insert(TraceHeader::XB3SpanId);
            if ctx.parent_span_id.is_some() {
                s.insert(TraceHeader::XB3ParentSpanId);
            }
            s.insert(if ctx.debug {
                TraceHeader::XB3Flags
            } else {
                TraceHeader::XB3Sampled
            });
        }
    }
    s
}

/// A formatted header value on the stack.
#[derive(Clone, Copy)]
pub struct HeaderBuf<const N: usize> {
    buf: [u8; N],
    len: usize,
}

impl<const N: usize> HeaderBuf<N> {
    pub fn as_bytes(&self) -> &[u8] {
        &self.buf[..self.len]
    }

    pub fn as_str(&self) -> &str {
        // Only ASCII hex digits and dashes are ever written.
        std::str::from_utf8(self.as_bytes()).unwrap_or_default()
    }
}

impl<const N: usize> std::fmt::Debug for HeaderBuf<N> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.as_str().fmt(f)
    }
}

/// `ctx` as a version `00` `traceparent`.
pub fn format_traceparent(ctx: &TraceContext) -> HeaderBuf<TRACEPARENT_LEN> {
    let mut buf = [b'-'; TRACEPARENT_LEN];
    buf[..2].copy_from_slice(b"00");
    hex(&ctx.trace_id, &mut buf[3..35]);
    hex(&ctx.span_id, &mut buf[36..52]);
    buf[53..].copy_from_slice(if ctx.sampled { b"01" } else { b"00" });
    HeaderBuf {
        buf,
        len: TRACEPARENT_LEN,
    }
}

/// `ctx` as a B3 single header: `{trace}-{span}-{1|0|d}[-{parent}]`.
pub fn format_b3(ctx: &TraceContext) -> HeaderBuf<68> {
    let mut buf = [b'-'; 68];
    let mut tid = [0; 32];
    let t = b3_trace_id(&ctx.trace_id, &mut tid);
    let mut n = t.len();
    buf[..n].copy_from_slice(t);
    hex(&ctx.span_id, &mut buf[n + 1..n + 17]);
    n += 18;
    buf[n] = if ctx.debug {
        b'd'
    } else if ctx.sampled {
        b'1'
    } else {
        b'0'
    };
    n += 1;
    if let Some(p) = &ctx.parent_span_id {
        hex(p, &mut buf[n + 1..n + 17]);
        n += 17;
    }
    HeaderBuf { buf, len: n }
}

/// Why a `traceparent` was rejected.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum TraceparentError {
    #[error("wrong length")]
    Length,
    #[error("invalid version")]
    Version,
    #[error("a field separator is missing")]
    Delimiter,
    #[error("invalid trace id (not 32 lowercase hex digits, or all zeros)")]
    TraceId,
    #[error("invalid parent id (not 16 lowercase hex digits, or all zeros)")]
    ParentId,
    #[error("invalid flags")]
    Flags,
}

/// Parses a `traceparent` (see the module docs). The context's format is
/// [`Format::W3c`], its parent unknown.
pub fn parse_traceparent(v: &[u8]) -> Result<TraceContext, TraceparentError> {
    use TraceparentError as E;
    let v = trim_ows(v);
    if v.len() < TRACEPARENT_LEN {
        return Err(E::Length);
    }
    let version = unhex::<1>(&v[..2]).ok_or(E::Version)?[0];
    if version == 0xff {
        return Err(E::Version);
    }
    if v[2] != b'-' || v[35] != b'-' || v[52] != b'-' {
        return Err(E::Delimiter);
    }
    if version == 0 && v.len() != TRACEPARENT_LEN {
        return Err(E::Length);
    }
    if v.len() > TRACEPARENT_LEN && v[TRACEPARENT_LEN] != b'-' {
        return Err(E::Delimiter);
    }
    let trace_id = unhex::<16>(&v[3..35])
        .filter(|id| *id != [0; 16])
        .ok_or(E::TraceId)?;
    let span_id = unhex::<8>(&v[36..52])
        .filter(|id| *id != [0; 8])
        .ok_or(E::ParentId)?;
    let flags = unhex::<1>(&v[53..55]).ok_or(E::Flags)?[0];
    Ok(TraceContext {
        trace_id,
        span_id,
        parent_span_id: None,
        sampled: flags & 1 == 1,
        debug: false,
        format: Format::W3c,
    })
}

/// Why a `tracestate` was dropped.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum TracestateError {
    #[error("longer than {TRACESTATE_MAX_LEN} characters")]
    TooLong,
    #[error("more than {TRACESTATE_MAX_MEMBERS} list members")]
    TooManyMembers,
    #[error("a list member is not key=value")]
    Member,
}

/// Validates a `tracestate` and returns it (without surrounding spaces) as
/// it is: list members `key=value` separated by commas with optional
/// spaces and tabs, empty members allowed (and not counted).
pub fn parse_tracestate(v: &[u8]) -> Result<&str, TracestateError> {
    use TracestateError as E;
    let v = trim_ows(v);
    if v.len() > TRACESTATE_MAX_LEN {
        return Err(E::TooLong);
    }
    let mut members = 0;
    for m in v.split(|b| *b == b',') {
        let m = trim_ows(m);
        if m.is_empty() {
            continue;
        }
        members += 1;
        if members > TRACESTATE_MAX_MEMBERS {
            return Err(E::TooManyMembers);
        }
        let eq = m.iter().position(|b| *b == b'=').ok_or(E::Member)?;
        if !valid_key(&m[..eq]) || !valid_value(&m[eq + 1..]) {
            return Err(E::Member);
        }
    }
    std::str::from_utf8(v).map_err(|_| E::Member)
}

/// `simple-key` or `tenant@system`: lowercase letters, digits, `_-*/`,
/// starting with a letter or digit (tenant) / letter (system).
fn valid_key(k: &[u8]) -> bool {
    let part = |p: &[u8], max: usize| {
        !p.is_empty()
            && p.len() <= max
            && (p[0].is_ascii_lowercase() || p[0].is_ascii_digit())
            && p.iter()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"_-*/".contains(b))
    };
    match k.iter().position(|b| *b == b'@') {
        None => part(k, 256),
        Some(at) => part(&k[..at], 241) && part(&k[at + 1..], 14) && k[at + 1].is_ascii_lowercase(),
    }
}

/// 1 to 256 printable ASCII characters except `,` and `=`, not ending in a
/// space.
fn valid_value(v: &[u8]) -> bool {
    !v.is_empty()
        && v.len() <= 256
        && v.last() != Some(&b' ')
        && v.iter()
            .all(|b| (0x20..=0x7e).contains(b) && *b != b',' && *b != b'=')
}

/// A B3 value: a context, or only a sampling decision.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum B3Value {
    /// A context; `sampled` is `None` when the caller deferred the decision
    /// (the context then reads as unsampled).
    Context {
        context: TraceContext,
        sampled: Option<bool>,
    },
    Decision {
        sampled: bool,
        debug: bool,
        format: Format,
    },
}

/// Why a B3 header was rejected.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum B3Error {
    #[error("invalid trace id (not 16 or 32 lowercase hex digits, or all zeros)")]
    TraceId,
    #[error("invalid span id (not 16 lowercase hex digits, or all zeros)")]
    SpanId,
    #[error("invalid parent span id")]
    ParentSpanId,
    #[error("invalid sampling state")]
    Sampled,
    #[error("wrong number of fields")]
    Fields,
}

/// Parses a B3 single header (see the module docs).
pub fn parse_b3(v: &[u8]) -> Result<B3Value, B3Error> {
    let v = trim_ows(v);
    let mut fields = v.split(|b| *b == b'-');
    let first = fields.next().unwrap_or_default();
    let Some(span) = fields.next() else {
        let (sampled, debug) = parse_b3_single_state(first).ok_or(B3Error::Sampled)?;
        return Ok(B3Value::Decision {
            sampled,
            debug,
            format: Format::B3Single,
        });
    };
    let trace_id = parse_b3_trace_id(first).ok_or(B3Error::TraceId)?;
    let span_id = parse_span_id(span).ok_or(B3Error::SpanId)?;
    let (sampled, debug) = match fields.next() {
        Some(s) => {
            let (sampled, debug) = parse_b3_single_state(s).ok_or(B3Error::Sampled)?;
            (Some(sampled), debug)
        }
        None => (None, false),
    };
    let parent_span_id = match fields.next() {
        Some(p) => Some(parse_span_id(p).ok_or(B3Error::ParentSpanId)?),
        None => None,
    };
    if fields.next().is_some() {
        return Err(B3Error::Fields);
    }
    Ok(B3Value::Context {
        context: TraceContext {
            trace_id,
            span_id,
            parent_span_id,
            sampled: sampled == Some(true),
            debug,
            format: Format::B3Single,
        },
        sampled,
    })
}

/// `1`, `0` or `d` (debug).
fn parse_b3_single_state(s: &[u8]) -> Option<(bool, bool)> {
    match s {
        b"1" => Some((true, false)),
        b"0" => Some((false, false)),
        b"d" => Some((true, true)),
        _ => None,
    }
}

/// `1`/`0`, or the legacy `true`/`false`.
fn parse_b3_sampled(s: &[u8]) -> Option<bool> {
    match s {
        b"1" | b"true" => Some(true),
        b"0" | b"false" => Some(false),
        _ => None,
    }
}

fn parse_b3_trace_id(s: &[u8]) -> Option<[u8; 16]> {
    let id = match s.len() {
        16 => {
            let mut id = [0; 16];
            id[8..].copy_from_slice(&unhex::<8>(s)?);
            id
        }
        32 => unhex::<16>(s)?,
        _ => return None,
    };
    (id != [0; 16]).then_some(id)
}

fn parse_span_id(s: &[u8]) -> Option<[u8; 8]> {
    unhex::<8>(s).filter(|id| *id != [0; 8])
}

/// The B3 multi-headers, each checked when present.
fn read_b3_multi(values: &[Option<&[u8]>; 8], malformed: &mut HeaderSet) -> Option<B3Value> {
    let get = |h: TraceHeader| values[h.index()].map(trim_ows);
    let sampled = get(TraceHeader::XB3Sampled).and_then(|v| {
        let s = parse_b3_sampled(v);
        if s.is_none() {
            malformed.insert(TraceHeader::XB3Sampled);
        }
        s
    });
    // B3: any other value than `1` is to be ignored, not an error.
    let debug = get(TraceHeader::XB3Flags) == Some(b"1");
    let parent = get(TraceHeader::XB3ParentSpanId).and_then(|v| {
        let p = parse_span_id(v);
        if p.is_none() {
            malformed.insert(TraceHeader::XB3ParentSpanId);
        }
        p
    });
    let (trace, span) = (get(TraceHeader::XB3TraceId), get(TraceHeader::XB3SpanId));
    if trace.is_none() && span.is_none() {
        return (sampled.is_some() || debug).then_some(B3Value::Decision {
            sampled: debug || sampled == Some(true),
            debug,
            format: Format::B3Multi,
        });
    }
    let Some(trace_id) = trace.and_then(parse_b3_trace_id) else {
        malformed.insert(TraceHeader::XB3TraceId);
        return None;
    };
    let Some(span_id) = span.and_then(parse_span_id) else {
        malformed.insert(TraceHeader::XB3SpanId);
        return None;
    };
    Some(B3Value::Context {
        context: TraceContext {
            trace_id,
            span_id,
            parent_span_id: parent,
            sampled: debug || sampled == Some(true),
            debug,
            format: Format::B3Multi,
        },
        sampled: if debug { Some(true) } else { sampled },
    })
}

/// A trace id in B3: 16 hex digits when the high half is zero, else 32.
fn b3_trace_id<'b>(id: &[u8; 16], buf: &'b mut [u8; 32]) -> &'b [u8] {
    if id[..8] == [0; 8] {
        hex(&id[8..], &mut buf[..16])
    } else {
        hex(id, buf)
    }
}

fn trim_ows(v: &[u8]) -> &[u8] {
    let ows = |b: &u8| *b == b' ' || *b == b'\t';
    let start = v.iter().position(|b| !ows(b)).unwrap_or(v.len());
    let end = v.iter().rposition(|b| !ows(b)).map_or(start, |e| e + 1);
    &v[start..end]
}

/// Lowercase hex of `src` into `dst` (`2 * src.len()` long); returns it.
fn hex<'b>(src: &[u8], dst: &'b mut [u8]) -> &'b [u8] {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    for (i, b) in src.iter().enumerate() {
        dst[2 * i] = DIGITS[usize::from(b >> 4)];
        dst[2 * i + 1] = DIGITS[usize::from(b & 0xf)];
    }
    &dst[..2 * src.len()]
}

/// Exactly `2 * N` lowercase hex digits.
fn unhex<const N: usize>(s: &[u8]) -> Option<[u8; N]> {
    if s.len() != 2 * N {
        return None;
    }
    let digit = |c: u8| match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        _ => None,
    };
    let mut out = [0; N];
    for (i, o) in out.iter_mut().enumerate() {
        *o = (digit(s[2 * i])? << 4) | digit(s[2 * i + 1])?;
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rng::SplitMix64;
    use proptest::prelude::*;

    const TP: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
    const TRACE: [u8; 16] = [
        0x4b, 0xf9, 0x2f, 0x35, 0x77, 0xb3, 0x4d, 0xa6, 0xa3, 0xce, 0x92, 0x9d, 0x0e, 0x0e, 0x47,
        0x36,
    ];
    const SPAN: [u8; 8] = [0x00, 0xf0, 0x67, 0xaa, 0x0b, 0xa9, 0x02, 0xb7];

    fn headers<'a>(pairs: &'a [(&'a str, &'a str)]) -> impl FnMut(TraceHeader) -> Option<&'a [u8]> {
        move |h| {
            pairs
                .iter()
                .find(|(n, _)| *n == h.name())
                .map(|(_, v)| v.as_bytes())
        }
    }

    #[test]
    fn reads_a_traceparent() {
        let c = parse_traceparent(TP.as_bytes()).unwrap();
        assert_eq!((c.trace_id, c.span_id, c.sampled), (TRACE, SPAN, true));
        assert_eq!(format_traceparent(&c).as_str(), TP);
        let c = parse_traceparent(TP.replace("-01", "-00").as_bytes()).unwrap();
        assert!(!c.sampled);
        // Unknown flags are ignored, only bit 0 counts.
        assert!(
            parse_traceparent(TP.replace("-01", "-03").as_bytes())
                .unwrap()
                .sampled
        );
        assert!(
            !parse_traceparent(TP.replace("-01", "-02").as_bytes())
                .unwrap()
                .sampled
        );
    }

    #[test]
    fn rejects_malformed_traceparents() {
        use TraceparentError as E;
        let cases = [
            (TP.to_uppercase(), E::TraceId),
            (TP.replace("4bf9", "4BF9"), E::TraceId),
            (
                format!("00-{}-00f067aa0ba902b7-01", "0".repeat(32)),
                E::TraceId,
            ),
            (
                format!("00-4bf92f3577b34da6a3ce929d0e0e4736-{}-01", "0".repeat(16)),
                E::ParentId,
            ),
            (TP[..54].to_string(), E::Length),
            (format!("{TP}-"), E::Length),
            (TP.replace("00-4b", "ff-4b"), E::Version),
            (TP.replace("-01", "-0x"), E::Flags),
            (TP.replacen('-', "_", 1), E::Delimiter),
            (String::new(), E::Length),
        ];
        for (v, e) in cases {
            assert_eq!(parse_traceparent(v.as_bytes()), Err(e), "{v}");
        }
    }

    #[test]
    fn reads_higher_versions_forward_compatibly() {
        let v = TP.replace("00-4b", "cc-4b");
        assert!(parse_traceparent(v.as_bytes()).is_ok());
        assert!(parse_traceparent(format!("{v}-what-the-future-holds").as_bytes()).is_ok());
        assert_eq!(
            parse_traceparent(format!("{v}x").as_bytes()),
            Err(TraceparentError::Delimiter)
        );
        // Written back as version 00.
        let c = parse_traceparent(v.as_bytes()).unwrap();
        assert_eq!(format_traceparent(&c).as_str(), TP);
    }

    #[test]
    fn keeps_valid_tracestates_and_drops_others() {
        let ok = "rojo=00f067aa0ba902b7, congo=t61rcWkgMzE,,tenant@sys=x y";
        assert_eq!(parse_tracestate(ok.as_bytes()), Ok(ok));
        let many: Vec<String> = (0..33).map(|i| format!("k{i}=v")).collect();
        assert_eq!(
            parse_tracestate(many[..32].join(",").as_bytes()).map(|_| ()),
            Ok(())
        );
        assert_eq!(
            parse_tracestate(many.join(",").as_bytes()),
            Err(TracestateError::TooManyMembers)
        );
        let long = format!("k={}", "v".repeat(TRACESTATE_MAX_LEN));
        assert_eq!(
            parse_tracestate(long.as_bytes()),
            Err(TracestateError::TooLong)
        );
        for bad in [
            "novalue",
            "Upper=1",
            "k=",
            "k=a,b",
            "k=v=w",
            "@x=1",
            "k=v\u{7f}",
        ] {
            assert!(parse_tracestate(bad.as_bytes()).is_err(), "{bad}");
        }
    }

    #[test]
    fn reads_b3_single() {
        let v = "4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-1-0000000000000001";
        let B3Value::Context { context, sampled } = parse_b3(v.as_bytes()).unwrap() else {
            panic!("a context")
        };
        assert_eq!((context.trace_id, context.span_id), (TRACE, SPAN));
        assert_eq!(context.parent_span_id, Some([0, 0, 0, 0, 0, 0, 0, 1]));
        assert_eq!(sampled, Some(true));
        assert_eq!(format_b3(&context).as_str(), v);

        let short = "a3ce929d0e0e4736-00f067aa0ba902b7";
        let B3Value::Context { context, sampled } = parse_b3(short.as_bytes()).unwrap() else {
            panic!("a context")
        };
        assert_eq!(context.trace_id[..8], [0; 8]);
        assert_eq!(sampled, None);
        assert_eq!(format_b3(&context).as_str(), format!("{short}-0"));

        assert!(matches!(
            parse_b3(b"0"),
            Ok(B3Value::Decision {
                sampled: false,
                debug: false,
                ..
            })
        ));
        assert!(matches!(
            parse_b3(b"d"),
            Ok(B3Value::Decision {
                sampled: true,
                debug: true,
                ..
            })
        ));
        for bad in [
            "",
            "2",
            "a3ce929d0e0e4736",
            "a3ce929d0e0e4736-00f067aa0ba902b7-x",
            "a3ce929d0e0e4736-00f067aa0ba902b7-1-0000000000000000",
            "a3ce929d0e0e4736-00f067aa0ba902b7-1-0000000000000001-1",
            "0000000000000000-00f067aa0ba902b7",
            "A3CE929D0E0E4736-00f067aa0ba902b7",
            "a3ce929d0e0e473-00f067aa0ba902b7",
        ] {
            assert!(parse_b3(bad.as_bytes()).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn reads_b3_multi() {
        let h = [
            ("x-b3-traceid", "a3ce929d0e0e4736"),
            ("x-b3-spanid", "00f067aa0ba902b7"),
            ("x-b3-parentspanid", "0000000000000001"),
            ("x-b3-sampled", "1"),
        ];
        let e = extract(headers(&h));
        let c = e.context.unwrap();
        assert_eq!((c.span_id, c.format), (SPAN, Format::B3Multi));
        assert_eq!((e.sampled, e.format), (Some(true), Some(Format::B3Multi)));
        assert!(e.malformed.is_empty());

        // A trace id without a span id.
        let e = extract(headers(&h[..1]));
        assert_eq!(e.context, None);
        assert_eq!(
            e.malformed.iter().collect::<Vec<_>>(),
            [TraceHeader::XB3SpanId]
        );

        // Debug implies sampled; a decision alone is kept for the new trace.
        let h = [("x-b3-flags", "1")];
        let e = extract(headers(&h));
        assert_eq!((e.context, e.sampled, e.debug), (None, Some(true), true));
        let h = [("x-b3-sampled", "false")];
        let e = extract(headers(&h));
        assert_eq!((e.context, e.sampled), (None, Some(false)));
        let h = [("x-b3-sampled", "yes")];
        let e = extract(headers(&h));
        assert_eq!(
            (e.sampled, e.malformed.contains(TraceHeader::XB3Sampled)),
            (None, true)
        );
    }

    #[test]
    fn prefers_w3c_and_writes_b3_too_for_the_same_trace() {
        let same = "4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-1";
        let h = [("traceparent", TP), ("b3", same), ("tracestate", "a=1")];
        let e = extract(headers(&h));
        assert_eq!(e.context.unwrap().format, Format::B3Single);
        assert_eq!(e.tracestate, Some("a=1"));
        let other = "5bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-1";
        let h = [("traceparent", TP), ("b3", other)];
        let e = extract(headers(&h));
        assert_eq!(e.context.unwrap().trace_id, TRACE);
        assert_eq!(e.format, Some(Format::W3c));

        // A broken traceparent: B3 continues the trace, the traceparent and
        // its tracestate are reported / dropped.
        let upper = TP.to_uppercase();
        let h = [
            ("traceparent", upper.as_str()),
            ("tracestate", "a=1"),
            ("b3", other),
        ];
        let e = extract(headers(&h));
        assert_eq!(e.context.unwrap().format, Format::B3Single);
        assert_eq!(
            e.malformed.iter().collect::<Vec<_>>(),
            [TraceHeader::Traceparent]
        );
        assert_eq!(e.tracestate, None);

        // A bad tracestate next to a good traceparent: dropped, reported.
        let h = [("traceparent", TP), ("tracestate", "A=1")];
        let e = extract(headers(&h));
        assert!(e.context.is_some());
        assert_eq!(
            e.malformed.iter().collect::<Vec<_>>(),
            [TraceHeader::Tracestate]
        );
    }

    #[test]
    fn a_child_continues_the_trace_with_a_new_span() {
        let mut rng = SplitMix64::new(1);
        let unsampled = TP.replace("-01", "-00");
        let h = [("traceparent", unsampled.as_str())];
        let e = extract(headers(&h));
        let c = e.child(Sampler::ALWAYS, &mut rng);
        assert_eq!(c.trace_id, TRACE);
        assert_eq!(c.parent_span_id, Some(SPAN));
        assert_ne!(c.span_id, SPAN);
        assert!(!c.sampled, "the caller's decision is kept");

        let e = extract(headers(&[]));
        let a = e.child(Sampler::ALWAYS, &mut rng);
        let b = e.child(Sampler::NEVER, &mut rng);
        assert_ne!(a.trace_id, b.trace_id);
        assert_eq!((a.parent_span_id, a.format), (None, Format::W3c));
        assert!(a.sampled && !b.sampled);

        // B3 without a decision: ours to make.
        let h = [("b3", "a3ce929d0e0e4736-00f067aa0ba902b7")];
        assert!(
            extract(headers(&h))
                .child(Sampler::ALWAYS, &mut rng)
                .sampled
        );
        assert!(!extract(headers(&h)).child(Sampler::NEVER, &mut rng).sampled);
        // `b3: 0` alone: a new trace, unsampled, written as B3 too.
        let c = extract(headers(&[("b3", "0")])).child(Sampler::ALWAYS, &mut rng);
        assert_eq!((c.sampled, c.format), (false, Format::B3Single));
    }

    #[test]
    fn inject_writes_traceparent_and_the_callers_b3_style() {
        let mut rng = SplitMix64::new(2);
        let h = [
            ("x-b3-traceid", "a3ce929d0e0e4736"),
            ("x-b3-spanid", "00f067aa0ba902b7"),
            ("x-b3-flags", "1"),
        ];
        let child = extract(headers(&h)).child(Sampler::NEVER, &mut rng);
        let mut out: Vec<(TraceHeader, String)> = Vec::new();
        inject(&child, |h, v| {
            out.push((h, String::from_utf8(v.to_vec()).unwrap()))
        });
        let names: Vec<TraceHeader> = out.iter().map(|(h, _)| *h).collect();
        assert_eq!(
            names,
            [
                TraceHeader::Traceparent,
                TraceHeader::XB3TraceId,
                TraceHeader::XB3SpanId,
                TraceHeader::XB3ParentSpanId,
                TraceHeader::XB3Flags
            ]
        );
        let set = written(child.format, &child);
        assert!(names.iter().all(|h| set.contains(*h)));
        assert_eq!(out[1].1, "a3ce929d0e0e4736");
        assert_eq!(out[3].1, "00f067aa0ba902b7");
        assert!(out[0].1.ends_with("-01"), "debug implies sampled");
        // What was written reads back as the child.
        let pairs: Vec<(&str, &str)> = out.iter().map(|(h, v)| (h.name(), v.as_str())).collect();
        let back = extract(headers(&pairs)).context.unwrap();
        assert_eq!(
            (back.trace_id, back.span_id),
            (child.trace_id, child.span_id)
        );
    }

    #[test]
    fn sampler_ratio() {
        assert!(Sampler::new(1.5).is_err());
        assert!(Sampler::new(-0.1).is_err());
        assert!(Sampler::new(f64::NAN).is_err());
        let s = Sampler::new(0.25).unwrap();
        let mut rng = SplitMix64::new(3);
        let n = (0..10_000).filter(|_| s.sample(&mut rng)).count();
        assert!((2_200..2_800).contains(&n), "{n}");
    }

    /// Zeros first, then counts up: ids must skip the zeros.
    struct ZerosFirst(u64, u64);
    impl Random for ZerosFirst {
        fn next_u64(&mut self) -> u64 {
            if self.0 > 0 {
                self.0 -= 1;
                0
            } else {
                self.1 += 1;
                self.1
            }
        }
    }

    #[test]
    fn ids_are_never_zero_even_from_a_zero_draw() {
        assert_ne!(new_span_id(&mut ZerosFirst(3, 0)), [0; 8]);
        assert_ne!(new_trace_id(&mut ZerosFirst(5, 0)), [0; 16]);
    }

    fn lower_hex(n: usize) -> impl Strategy<Value = String> {
        proptest::string::string_regex(&format!("[0-9a-f]{{{n}}}")).unwrap()
    }

    proptest! {
        #[test]
        fn traceparent_round_trips(
            t in lower_hex(32), p in lower_hex(16), f in prop::sample::select(vec!["00", "01"])
        ) {
            prop_assume!(t != "0".repeat(32) && p != "0".repeat(16));
            let v = format!("00-{t}-{p}-{f}");
            let c = parse_traceparent(v.as_bytes()).unwrap();
            let f = format_traceparent(&c);
            prop_assert_eq!(f.as_str(), v.as_str());
        }

        #[test]
        fn b3_round_trips(
            t in prop_oneof![lower_hex(16), lower_hex(32)],
            s in lower_hex(16),
            state in prop::sample::select(vec!["0", "1", "d"]),
            p in proptest::option::of(lower_hex(16)),
        ) {
            prop_assume!(!t.starts_with("0000000000000000") && s != "0".repeat(16));
            prop_assume!(p.as_deref() != Some("0000000000000000"));
            let v = match &p {
                Some(p) => format!("{t}-{s}-{state}-{p}"),
                None => format!("{t}-{s}-{state}"),
            };
            let Ok(B3Value::Context { context, .. }) = parse_b3(v.as_bytes()) else {
                panic!("{v} is valid")
            };
            let f = format_b3(&context);
            prop_assert_eq!(f.as_str(), v.as_str());
        }

        #[test]
        fn tracestate_round_trips(
            members in prop::collection::vec(("[a-z][a-z0-9_*/-]{0,8}", "[!-+--<>-~]{1,8}"), 1..10)
        ) {
            let v = members.iter().map(|(k, v)| format!("{k}={v}")).collect::<Vec<_>>().join(",");
            prop_assert_eq!(parse_tracestate(v.as_bytes()), Ok(v.as_str()));
        }

        #[test]
        fn extract_never_panics(values in prop::collection::vec(
            proptest::option::of(prop::collection::vec(any::<u8>(), 0..80)), 8)
        ) {
            let e = extract(|h| values[h.index()].as_deref());
            let c = e.child(Sampler::ALWAYS, &mut SplitMix64::new(0));
            prop_assert!(c.trace_id != [0; 16] && c.span_id != [0; 8]);
            // Whatever came in, what goes out reads back as the child.
            let mut out: Vec<(TraceHeader, Vec<u8>)> = Vec::new();
            inject(&c, |h, v| out.push((h, v.to_vec())));
            let back = extract(|h| out.iter().find(|(n, _)| *n == h).map(|(_, v)| v.as_slice()));
            prop_assert!(back.malformed.is_empty());
            prop_assert_eq!(back.context.map(|b| (b.trace_id, b.span_id)), Some((c.trace_id, c.span_id)));
        }

        #[test]
        fn extract_never_panics_on_near_valid_text(
            tp in "[0-9a-fA-F-]{50,60}", b3 in "[0-9a-fd-]{0,70}"
        ) {
            let _ = extract(headers(&[("traceparent", &tp), ("b3", &b3)]));
        }

        #[test]
        fn generated_ids_are_never_zero(seed in any::<u64>()) {
            let mut rng = SplitMix64::new(seed);
            prop_assert_ne!(new_trace_id(&mut rng), [0; 16]);
            prop_assert_ne!(new_span_id(&mut rng), [0; 8]);
        }
    }
}
