//! The one body type inside the proxy: either a body streamed from a peer
//! (request from downstream, response from upstream) or a small body the proxy
//! made itself (error pages, admin). An enum rather than a boxed trait object:
//! no allocation per request.

use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use http::HeaderMap;
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;

use crate::complete::Completion;
use crate::observe::Tracker;
use crate::upstream::PooledBody;

#[derive(Debug)]
pub enum ProxyBody {
    Streamed(Incoming),
    /// From a pooled HTTP/1.1 upstream connection.
    Pooled(PooledBody),
    Full(Option<Bytes>),
    /// A response body that reports to the endpoint's health and load when
    /// it ends (see `observe`).
    Tracked(Box<Watched<Tracker>>),
    /// A response body whose request's end is recorded when it ends (see
    /// `complete`).
    Completed(Box<Watched<Completion>>),
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

/// How a response body ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BodyEnd {
    /// Sent to its end.
    Complete,
    /// The upstream's body failed (reset, connection lost).
    UpstreamReset,
    /// The downstream went away before the end.
    DownstreamCancelled,
}

/// What wants to know when a response body ends: its bytes as they pass,
/// then how it ended, with its trailers.
pub trait OnEnd {
    fn data(&mut self, _len: usize) {}
    fn end(self, how: BodyEnd, trailers: Option<&HeaderMap>);
}

/// A response body that tells its [`OnEnd`] when it ends: at its trailers,
/// its last frame, an error, or when dropped before (the caller went away;
/// a server that stops polling once the body says it is done counts as
/// complete).
pub struct Watched<E: OnEnd> {
    inner: ProxyBody,
    on_end: Option<E>,
}

impl<E: OnEnd> Watched<E> {
    pub fn new(inner: ProxyBody, on_end: E) -> Self {
        Self {
            inner,
            on_end: Some(on_end),
        }
    }

    /// The watcher, until the body ended.
    pub fn watcher(&self) -> Option<&E> {
        self.on_end.as_ref()
    }

    fn end(&mut self, how: BodyEnd, trailers: Option<&HeaderMap>) {
        if let Some(e) = self.on_end.take() {
            e.end(how, trailers);
        }
    }
}

impl<E: OnEnd + Unpin> Body for Watched<E> {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        let this = &mut *self;
        let r = Pin::new(&mut this.inner).poll_frame(cx);
        match &r {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(d) = frame.data_ref() {
                    if let Some(e) = &mut this.on_end {
                        e.data(d.len());
                    }
                    if this.inner.is_end_stream() {
                        this.end(BodyEnd::Complete, None);
                    }
                } else if let Some(t) = frame.trailers_ref() {
                    this.end(BodyEnd::Complete, Some(t));
                }
            }
            Poll::Ready(Some(Err(_))) => this.end(BodyEnd::UpstreamReset, None),
            Poll::Ready(None) => this.end(BodyEnd::Complete, None),
            Poll::Pending => {}
        }
        r
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

impl<E: OnEnd> Drop for Watched<E> {
    fn drop(&mut self) {
        let how = if self.inner.is_end_stream() {
            BodyEnd::Complete
        } else {
            BodyEnd::DownstreamCancelled
        };
        self.end(how, None);
    }
}

impl<E: OnEnd> std::fmt::Debug for Watched<E> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Watched").finish_non_exhaustive()
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

    use std::sync::{Arc, Mutex};

    use http_body_util::BodyExt as _;

    use super::*;

    /// Bytes seen, and every end reported.
    type Seen = Arc<Mutex<(usize, Vec<BodyEnd>)>>;

    /// Records what it is told: bytes, then how the body ended.
    struct Record(Seen, usize);

    impl OnEnd for Record {
        fn data(&mut self, len: usize) {
            self.1 += len;
        }
        fn end(self, how: BodyEnd, _trailers: Option<&HeaderMap>) {
            let mut r = self.0.lock().unwrap();
            r.0 = self.1;
            r.1.push(how);
        }
    }

    fn watched(body: ProxyBody) -> (Watched<Record>, Seen) {
        let seen = Arc::new(Mutex::new((0, Vec::new())));
        (Watched::new(body, Record(seen.clone(), 0)), seen)
    }

    #[tokio::test]
    async fn a_body_read_to_its_end_ends_complete_once_with_its_bytes() {
        let (w, seen) = watched(ProxyBody::full("hello"));
        let bytes = w.collect().await.unwrap().to_bytes();
        assert_eq!(bytes.len(), 5);
        assert_eq!(*seen.lock().unwrap(), (5, vec![BodyEnd::Complete]));
    }

    #[tokio::test]
    async fn trailers_end_it_and_a_body_dropped_early_was_cancelled() {
        let mut t = HeaderMap::new();
        t.insert("grpc-status", http::HeaderValue::from_static("0"));
        let (w, seen) = watched(ProxyBody::Replay(Some("ab".into()), Some(Box::new(t))));
        w.collect().await.unwrap();
        assert_eq!(*seen.lock().unwrap(), (2, vec![BodyEnd::Complete]));

        let (mut w, seen) = watched(ProxyBody::Replay(
            Some("ab".into()),
            Some(Box::new(HeaderMap::new())),
        ));
        // One frame read, then the caller goes away before the trailers.
        w.frame().await.unwrap().unwrap();
        drop(w);
        assert_eq!(
            *seen.lock().unwrap(),
            (2, vec![BodyEnd::DownstreamCancelled])
        );
    }
}
