//! An HTTP response body made of a few shared byte chunks, sent one after the other with an
//! exact Content-Length, so that the cached `/metrics` text is handed to the socket without
//! being copied into a fresh buffer for every scrape.

use std::collections::VecDeque;
use std::convert::Infallible;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use hyper::body::{Body, Frame, SizeHint};

/// Chunks of a response body, sent in order.
#[derive(Debug, Default)]
pub struct Chunks(VecDeque<Bytes>);

impl Chunks {
    pub fn new(chunks: impl IntoIterator<Item = Bytes>) -> Chunks {
        Chunks(chunks.into_iter().filter(|c| !c.is_empty()).collect())
    }

    fn remaining(&self) -> u64 {
        self.0.iter().map(|c| c.len() as u64).sum()
    }
}

impl From<Bytes> for Chunks {
    fn from(bytes: Bytes) -> Chunks {
        Chunks::new([bytes])
    }
}

impl Body for Chunks {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        Poll::Ready(self.get_mut().0.pop_front().map(|c| Ok(Frame::data(c))))
    }

    fn is_end_stream(&self) -> bool {
        self.0.is_empty()
    }

    fn size_hint(&self) -> SizeHint {
        SizeHint::with_exact(self.remaining())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::BodyExt;

    #[tokio::test]
    async fn chunks_arrive_in_order_with_an_exact_length() {
        let body = Chunks::new([
            Bytes::from_static(b"abc"),
            Bytes::new(),
            Bytes::from_static(b"de"),
        ]);
        assert_eq!(body.size_hint().exact(), Some(5));
        let collected = body.collect().await.expect("infallible").to_bytes();
        assert_eq!(&collected[..], b"abcde");
    }

    #[test]
    fn empty_body_ends_at_once() {
        let body = Chunks::new([]);
        assert!(body.is_end_stream());
        assert_eq!(body.size_hint().exact(), Some(0));
    }
}
