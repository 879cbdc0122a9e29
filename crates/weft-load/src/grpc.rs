//! gRPC over HTTP/2 the way a unary client speaks it: length-prefixed
//! messages, `grpc-status` in trailers (or in the headers of a
//! trailers-only response), status names for the report.

use bytes::{BufMut as _, Bytes, BytesMut};
use http::HeaderMap;

/// A message framed for the request body: compression flag 0, 4-byte
/// big-endian length, the message.
pub(crate) fn frame(message: &[u8]) -> Bytes {
    let mut b = BytesMut::with_capacity(5 + message.len());
    b.put_u8(0);
    b.put_u32(u32::try_from(message.len()).unwrap_or(u32::MAX));
    b.put_slice(message);
    b.freeze()
}

/// The canonical name of a gRPC status code.
pub(crate) fn status_name(code: u8) -> &'static str {
    match code {
        0 => "OK",
        1 => "CANCELLED",
        2 => "UNKNOWN",
        3 => "INVALID_ARGUMENT",
        4 => "DEADLINE_EXCEEDED",
        5 => "NOT_FOUND",
        6 => "ALREADY_EXISTS",
        7 => "PERMISSION_DENIED",
        8 => "RESOURCE_EXHAUSTED",
        9 => "FAILED_PRECONDITION",
        10 => "ABORTED",
        11 => "OUT_OF_RANGE",
        12 => "UNIMPLEMENTED",
        13 => "INTERNAL",
        14 => "UNAVAILABLE",
        15 => "DATA_LOSS",
        16 => "UNAUTHENTICATED",
        _ => "INVALID_CODE",
    }
}

/// `grpc-status` and `grpc-message` from trailers, or from the headers of a
/// trailers-only response. `None` when neither has a valid status.
pub(crate) fn status(headers: &HeaderMap, trailers: Option<&HeaderMap>) -> Option<(u8, String)> {
    let from = |h: &HeaderMap| {
        let code: u8 = h.get("grpc-status")?.to_str().ok()?.trim().parse().ok()?;
        let message = h
            .get("grpc-message")
            .and_then(|m| m.to_str().ok())
            .map(percent_decode)
            .unwrap_or_default();
        Some((code, message))
    };
    trailers.and_then(from).or_else(|| from(headers))
}

/// `grpc-message` is percent-encoded (gRPC over HTTP/2 spec).
fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%'
            && i + 2 < bytes.len()
            && let Some(v) = std::str::from_utf8(&bytes[i + 1..i + 3])
                .ok()
                .and_then(|h| u8::from_str_radix(h, 16).ok())
        {
            out.push(v);
            i += 3;
            continue;
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// `grpc-timeout` for a deadline: at most 8 digits and a unit.
pub(crate) fn timeout_header(d: std::time::Duration) -> String {
    let ms = d.as_millis();
    if ms < 100_000_000 {
        format!("{ms}m")
    } else {
        format!("{}S", d.as_secs().min(99_999_999))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn frames_carry_flag_and_length() {
        assert_eq!(&frame(b"abc")[..], &[0, 0, 0, 0, 3, b'a', b'b', b'c']);
        assert_eq!(&frame(b"")[..], &[0, 0, 0, 0, 0]);
    }

    #[test]
    fn status_comes_from_trailers_or_a_trailers_only_head() {
        let mut t = HeaderMap::new();
        t.insert("grpc-status", "12".parse().unwrap());
        t.insert("grpc-message", "Method%20not%20found!".parse().unwrap());
        let h = HeaderMap::new();
        assert_eq!(status(&h, Some(&t)), Some((12, "Method not found!".into())));
        assert_eq!(status(&t, None), Some((12, "Method not found!".into())));
        assert_eq!(status(&h, None), None);
        assert_eq!(status_name(12), "UNIMPLEMENTED");
        assert_eq!(status_name(99), "INVALID_CODE");
    }

    #[test]
    fn timeouts_fit_eight_digits() {
        assert_eq!(timeout_header(Duration::from_secs(10)), "10000m");
        assert_eq!(timeout_header(Duration::from_secs(200_000)), "200000S");
    }

    #[test]
    fn percent_decoding_keeps_broken_escapes() {
        assert_eq!(percent_decode("a%2"), "a%2");
        assert_eq!(percent_decode("%41b"), "Ab");
        assert_eq!(percent_decode("%é"), "%é");
    }
}
