//! The one body type inside the proxy: either a body streamed from a peer
//! (request from downstream, response from upstream) or a small body the proxy
//! made itself (error pages, admin). An enum rather than a boxed trait object:
//! no allocation per request.

use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;

use crate::complete::CompletionBody;
use crate::observe::TrackedBody;
use crate::upstream::PooledBody;

#[derive(Debug)]
pub enum ProxyBody {
    Streamed(Incoming),
    /// From a pooled HTTP/1.1 upstream connection.
    Pooled(PooledBody),
    Full(Option<Bytes>),
    /// A response body that reports to the endpoint's health and load when
    /// it ends (see `observe`).
    Tracked(Box<TrackedBody>),
    /// A response body whose request's end is recorded when it ends (see
    /// `complete`).
    Completed(Box<CompletionBody>),
    /// A buffered request body sent again by a retry or a backup request.
    Replay(Option<Bytes>, Option<Box<http::HeaderMap>>),
    /// A request body read in part (too large to replay) and the rest.
    Chain(Option<Bytes>, Incoming),
}

impl ProxyBody {
    pub fn empty() -> Self {
        ProxyBody::Full(None)
    }
    pub fn full(bytes: impl Into<Bytes>) -> Self {
        let b = bytes.into();
        ProxyBody::Full((!b.is_empty()).then_some(b))
    }
}

impl From<Incoming> for ProxyBody {
    fn from(b: Incoming) -> Self {
        ProxyBody::Streamed(b)
    }
}

impl Body for ProxyBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        match self.get_mut() {
            ProxyBody::Streamed(b) => Pin::new(b).poll_frame(cx),
            ProxyBody::Pooled(b) => Pin::new(b).poll_frame(cx),
            ProxyBody::Full(b) => Poll::Ready(b.take().map(|b| Ok(Frame::data(b)))),
            ProxyBody::Tracked(b) => Pin::new(&mut **b).poll_frame(cx),
            ProxyBody::Completed(b) => Pin::new(&mut **b).poll_frame(cx),
            ProxyBody::Replay(data, trailers) => Poll::Ready(match data.take() {
                Some(d) => Some(Ok(Frame::data(d))),
                None => trailers.take().map(|t| Ok(Frame::trailers(*t))),
            }),
            ProxyBody::Chain(prefix, rest) => match prefix.take() {
                Some(d) => Poll::Ready(Some(Ok(Frame::data(d)))),
                None => Pin::new(rest).poll_frame(cx),
            },
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            ProxyBody::Streamed(b) => b.is_end_stream(),
            ProxyBody::Pooled(b) => b.is_end_stream(),
            ProxyBody::Full(b) => b.is_none(),
            ProxyBody::Tracked(b) => b.is_end_stream(),
            ProxyBody::Completed(b) => b.is_end_stream(),
            ProxyBody::Replay(d, t) => d.is_none() && t.is_none(),
            ProxyBody::Chain(p, rest) => p.is_none() && rest.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            ProxyBody::Streamed(b) => b.size_hint(),
            ProxyBody::Pooled(b) => b.size_hint(),
            ProxyBody::Full(b) => SizeHint::with_exact(b.as_ref().map_or(0, |b| b.len() as u64)),
            ProxyBody::Tracked(b) => b.size_hint(),
            ProxyBody::Completed(b) => b.size_hint(),
            ProxyBody::Replay(d, _) => {
                SizeHint::with_exact(d.as_ref().map_or(0, |b| b.len() as u64))
            }
            ProxyBody::Chain(p, rest) => {
                let n = p.as_ref().map_or(0, |b| b.len() as u64);
                let r = rest.size_hint();
                let mut h = SizeHint::new();
                h.set_lower(r.lower() + n);
                if let Some(u) = r.upper() {
                    h.set_upper(u + n);
                }
                h
            }
        }
    }
}

#[cfg(test)]
mod tests {
    /// Bodies move through every request future: a large variant would make
    /// every move copy it (the replay trailers are boxed for that).
    #[test]
    fn the_body_stays_as_small_as_its_largest_common_variant() {
        assert!(
            std::mem::size_of::<super::ProxyBody>()
                <= std::mem::size_of::<crate::upstream::PooledBody>() + 8,
            "{}",
            std::mem::size_of::<super::ProxyBody>()
        );
    }
}
