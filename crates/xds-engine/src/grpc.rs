//! The gRPC layer of the xDS services, written against HTTP/2 directly so that responses go out
//! without copying shared resource bytes.
//!
//! A response is framed as: the 5-byte gRPC message prefix and the message's small fields, then
//! each resource as a `repeated bytes` field (tag 2 in both `DiscoveryResponse` and
//! `DeltaDiscoveryResponse`). A large resource is handed to HTTP/2 as the snapshot's own
//! reference-counted bytes (no copy); small ones are gathered into DATA chunks of 16 KiB, so a
//! response is a few DATA frames, not one per resource. Chunks are made only when HTTP/2 polls
//! the body, that is when flow control lets it send: a stream holds at most one chunk of copied
//! bytes while it sends, and none when idle (tonic's codec keeps a buffer as large as the
//! largest response ever sent on the stream).
//!
//! Requests are decoded by [`Requests`], which releases a large buffer once a large request
//! has been decoded. [`ResponseBody`] sends the messages of a stream (xDS responses here, CSDS
//! answers in `csds`) chunk by chunk, then the trailers. This module knows nothing of the
//! services built on it (`services`, `server`, `csds`).

use std::marker::PhantomData;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::{BufMut, Bytes, BytesMut};
use envoy_types::pb::envoy::config::core::v3::ControlPlane;
use http_body::Frame;
use http_body_util::BodyExt;
use prost::Message;
use tokio::sync::mpsc;
use tonic::body::Body;
use tonic::codegen::http;
use tonic::{Code, Status};

use super::wire::{DeltaDiscoveryResponse, DiscoveryResponse};

/// Resources at most this large are copied into a DATA chunk; larger ones are sent as their
/// shared bytes.
const INLINE_MAX: usize = 1024;

/// Small resources are gathered into DATA chunks of about this size, made only when HTTP/2 asks
/// for more (flow control), so a stream never holds more than one chunk of copied bytes.
const CHUNK: usize = 16 * 1024;

/// A response message, ready to frame: its resources are field 2.
pub(crate) trait WireMessage: Message + Send + 'static {
    /// Takes the pre-encoded resources out, leaving the rest of the message to encode.
    fn take_resources(&mut self) -> Vec<Bytes>;
    /// Names the control plane that sent it (`control_plane.identifier`).
    fn set_control_plane(&mut self, cp: &ControlPlane);
}

impl WireMessage for DiscoveryResponse {
    fn take_resources(&mut self) -> Vec<Bytes> {
        std::mem::take(&mut self.resources)
    }
    fn set_control_plane(&mut self, cp: &ControlPlane) {
        self.control_plane = Some(cp.clone());
    }
}

impl WireMessage for DeltaDiscoveryResponse {
    fn take_resources(&mut self) -> Vec<Bytes> {
        std::mem::take(&mut self.resources)
    }
    fn set_control_plane(&mut self, cp: &ControlPlane) {
        self.control_plane = Some(cp.clone());
    }
}

/// One gRPC message on its way out: the prefix and small fields, then the resources (shared
/// bytes, each sent as a `repeated bytes` field 2; field order is free in protobuf).
pub(crate) struct Framed {
    head: Option<Bytes>,
    resources: std::vec::IntoIter<Bytes>,
    /// A large resource whose field prefix has gone out in the previous chunk.
    next_large: Option<Bytes>,
}

impl Framed {
    /// Returns `None` when the message exceeds the 4 GiB a gRPC length prefix can express.
    pub(crate) fn new<M: WireMessage>(mut msg: M) -> Option<Framed> {
        let resources = msg.take_resources();
        let field_len = |r: &Bytes| 1 + prost::encoding::encoded_len_varint(r.len() as u64) + r.len();
        let head_len = msg.encoded_len();
        let total = head_len + resources.iter().map(field_len).sum::<usize>();
        let total = u32::try_from(total).ok()?;
        let mut head = BytesMut::with_capacity(5 + head_len);
        head.put_u8(0); // not compressed
        head.put_u32(total);
        // Cannot fail: BytesMut grows as needed.
        let _ = msg.encode(&mut head);
        Some(Framed {
            head: Some(head.freeze()),
            resources: resources.into_iter(),
            next_large: None,
        })
    }

    /// The next DATA chunk, or `None` when the message is complete.
    pub(crate) fn next_chunk(&mut self) -> Option<Bytes> {
        if let Some(large) = self.next_large.take() {
            return Some(large);
        }
        let head = self.head.take();
        let mut buf = BytesMut::new();
        if self.resources.len() == 0 {
            return head;
        }
        // Exactly what this chunk will hold: a push of one small resource is a few hundred
        // bytes, and a chunk-sized allocation for each would be mostly untouched memory.
        let mut want = head.as_ref().map_or(0, Bytes::len);
        for r in self.resources.as_slice() {
            if want >= CHUNK {
                break;
            }
            want += 1 + prost::encoding::encoded_len_varint(r.len() as u64);
            if r.len() > INLINE_MAX {
                break;
            }
            want += r.len();
        }
        buf.reserve(want);
        if let Some(h) = head {
            buf.put_slice(&h);
        }
        while buf.len() < CHUNK {
            let Some(r) = self.resources.next() else { break };
            prost::encoding::encode_key(2, prost::encoding::WireType::LengthDelimited, &mut buf);
            prost::encoding::encode_varint(r.len() as u64, &mut buf);
            if r.len() <= INLINE_MAX {
                buf.put_slice(&r);
            } else {
                self.next_large = Some(r);
                break;
            }
        }
        debug_assert_eq!(buf.len(), want, "chunk size foreseen");
        Some(buf.freeze())
    }
}

#[cfg(test)]
fn frame<M: WireMessage>(msg: M) -> Option<Vec<Bytes>> {
    let mut f = Framed::new(msg)?;
    Some(std::iter::from_fn(|| f.next_chunk()).collect())
}

/// What a stream task sends to the response body.
/// (The status is boxed: the channel's slots are allocated in blocks, and a `Status` is large.)
/// Boxed both ways: a stream's channel keeps a block of slots for its whole life, so a slot
/// must be small (two words, not a whole `Framed`).
pub(crate) type Outbound = Result<Box<Framed>, Box<Status>>;

/// A message a [`ResponseBody`] sends: its DATA chunks, made as HTTP/2 asks for them.
pub(crate) trait Chunked: Send + 'static {
    /// The next DATA chunk, or `None` when the message is complete.
    fn next_chunk(&mut self) -> Option<Bytes>;
}

impl Chunked for Box<Framed> {
    fn next_chunk(&mut self) -> Option<Bytes> {
        Framed::next_chunk(self)
    }
}

/// The response body: the DATA chunks of each message from the stream task, then trailers with
/// the final status. A message (and what it holds, e.g. a slot) is released when its last chunk
/// is taken, or when the body is dropped (the client went away); `guard` lives as long as the
/// body.
pub(crate) struct ResponseBody<M, G = ()> {
    rx: mpsc::Receiver<Result<M, Box<Status>>>,
    current: Option<M>,
    done: bool,
    _guard: G,
}

impl<M: Chunked + Unpin, G: Send + Unpin + 'static> ResponseBody<M, G> {
    /// A body that sends the messages received on `rx`, holding `guard` until it is dropped.
    pub(crate) fn new(rx: mpsc::Receiver<Result<M, Box<Status>>>, guard: G) -> Self {
        ResponseBody {
            rx,
            current: None,
            done: false,
            _guard: guard,
        }
    }

    /// The body as an HTTP response with the gRPC content type.
    pub(crate) fn into_response(self) -> http::Response<Body> {
        let mut r = http::Response::new(Body::new(self));
        r.headers_mut().insert(
            http::header::CONTENT_TYPE,
            http::HeaderValue::from_static("application/grpc"),
        );
        r
    }
}

fn trailers(status: &Status) -> http::HeaderMap {
    let mut h = http::HeaderMap::new();
    if status.add_header(&mut h).is_err() {
        h.insert("grpc-status", http::HeaderValue::from(status.code() as i32));
    }
    h
}

impl<M: Chunked + Unpin, G: Unpin> http_body::Body for ResponseBody<M, G> {
    type Data = Bytes;
    type Error = Status;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, Status>>> {
        let this = &mut *self;
        loop {
            if let Some(chunk) = this.current.as_mut().and_then(Chunked::next_chunk) {
                return Poll::Ready(Some(Ok(Frame::data(chunk))));
            }
            this.current = None;
            if this.done {
                return Poll::Ready(None);
            }
            match this.rx.poll_recv(cx) {
                Poll::Ready(Some(Ok(framed))) => this.current = Some(framed),
                Poll::Ready(Some(Err(status))) => {
                    this.done = true;
                    return Poll::Ready(Some(Ok(Frame::trailers(trailers(&status)))));
                }
                Poll::Ready(None) => {
                    this.done = true;
                    return Poll::Ready(Some(Ok(Frame::trailers(trailers(&Status::new(Code::Ok, ""))))));
                }
                Poll::Pending => return Poll::Pending,
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.done && self.current.is_none()
    }
}

/// The request side of a stream: gRPC messages decoded from the HTTP/2 body. Unlike tonic's
/// decoder, it does not keep a buffer as large as the largest request between requests (an
/// Envoy re-sends its whole EDS subscription with every ACK).
pub(crate) struct Requests<T> {
    body: Body,
    buf: BytesMut,
    ended: bool,
    limit: usize,
    _t: PhantomData<fn() -> T>,
}

impl<T: Message + Default> Requests<T> {
    /// Requests larger than `limit` bytes end the stream with OUT_OF_RANGE.
    pub(crate) fn with_limit(body: Body, limit: usize) -> Self {
        Requests {
            body,
            buf: BytesMut::new(),
            ended: false,
            limit,
            _t: PhantomData,
        }
    }

    /// The next request; `Ok(None)` when the client closed its side.
    pub(crate) async fn message(&mut self) -> Result<Option<T>, Status> {
        match self.raw_message().await? {
            Some(raw) => T::decode(&raw[..]).map(Some).map_err(undecodable),
            None => Ok(None),
        }
    }

    /// The next request's bytes (the gRPC message, without its 5-byte prefix), for the caller
    /// to decode; `Ok(None)` when the client closed its side.
    pub(crate) async fn raw_message(&mut self) -> Result<Option<Bytes>, Status> {
        loop {
            if let Some(msg) = self.take()? {
                return Ok(Some(msg));
            }
            if self.ended {
                return if self.buf.is_empty() {
                    Ok(None)
                } else {
                    Err(Status::internal("the request stream ended inside a message"))
                };
            }
            match self.body.frame().await {
                Some(Ok(frame)) => {
                    if let Ok(data) = frame.into_data() {
                        self.buf.extend_from_slice(&data);
                    }
                }
                Some(Err(e)) => return Err(Status::cancelled(format!("request stream: {e}"))),
                None => self.ended = true,
            }
        }
    }

    /// Takes one whole message from the buffer, if there is one.
    fn take(&mut self) -> Result<Option<Bytes>, Status> {
        if self.buf.len() < 5 {
            return Ok(None);
        }
        let compressed = self.buf[0];
        let len = u32::from_be_bytes([self.buf[1], self.buf[2], self.buf[3], self.buf[4]]) as usize;
        if compressed != 0 {
            return Err(Status::unimplemented("compressed requests are not supported"));
        }
        if len > self.limit {
            return Err(Status::out_of_range(format!(
                "request of {len} bytes is larger than the limit of {} (server.max_request_bytes)",
                self.limit
            )));
        }
        if self.buf.len() < 5 + len {
            self.buf.reserve(5 + len - self.buf.len());
            return Ok(None);
        }
        // The message keeps the buffer's allocation (freed when the caller drops it); the rest
        // of the buffer moves to a new one. `split_to` would leave the rest pinning all of it (an
        // Envoy's EDS ACK is tens of KiB, on every stream) while the capacity the buffer reports
        // looks small.
        let all = std::mem::take(&mut self.buf);
        if all.len() > 5 + len {
            self.buf = BytesMut::from(&all[5 + len..]);
        }
        Ok(Some(all.freeze().slice(5..5 + len)))
    }
}

/// The status for a request that does not decode.
pub(crate) fn undecodable(e: prost::DecodeError) -> Status {
    Status::invalid_argument(format!("undecodable request: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use envoy_types::pb::envoy::service::discovery::v3 as pb;
    use envoy_types::pb::envoy::service::discovery::v3::DiscoveryRequest;

    /// The largest request of these tests' streams (tonic's default).
    const MAX_REQUEST_BYTES: usize = 4 * 1024 * 1024;
    use envoy_types::pb::google::protobuf::Any;

    fn join(chunks: &[Bytes]) -> Vec<u8> {
        chunks.iter().flat_map(|c| c.iter().copied()).collect()
    }

    #[test]
    fn a_framed_response_decodes_as_the_stock_message_and_shares_large_resources() {
        let small = Any {
            type_url: "t".into(),
            value: vec![7; 10],
        };
        let large = Any {
            type_url: "t".into(),
            value: vec![9; 5000],
        };
        let large_bytes = Bytes::from(large.encode_to_vec());
        let msg = DiscoveryResponse {
            version_info: "v".into(),
            resources: vec![
                Bytes::from(small.encode_to_vec()),
                large_bytes.clone(),
                Bytes::from(small.encode_to_vec()),
            ],
            type_url: "t".into(),
            nonce: "3".into(),
            ..Default::default()
        };
        let chunks = frame(msg).expect("framed");
        // The large resource goes out as the very bytes the snapshot holds.
        assert!(chunks
            .iter()
            .any(|c| c.as_ptr() == large_bytes.as_ptr() && c.len() == large_bytes.len()));
        assert_eq!(chunks.len(), 3, "head+small+prefix, large, small");
        let wire = join(&chunks);
        assert_eq!(wire[0], 0, "uncompressed");
        let len = u32::from_be_bytes([wire[1], wire[2], wire[3], wire[4]]) as usize;
        assert_eq!(len, wire.len() - 5);
        let got = pb::DiscoveryResponse::decode(&wire[5..]).expect("decodes");
        assert_eq!(got.version_info, "v");
        assert_eq!(got.nonce, "3");
        assert_eq!(got.resources, vec![small.clone(), large, small]);
    }

    #[test]
    fn a_push_of_one_small_resource_is_one_chunk() {
        let msg = DiscoveryResponse {
            version_info: "v".into(),
            resources: vec![Bytes::from(vec![7u8; 400])],
            type_url: "t".into(),
            nonce: "1".into(),
            ..Default::default()
        };
        let whole = 5 + msg.encoded_len();
        let mut f = Framed::new(msg).expect("framed");
        let chunk = f.next_chunk().expect("a chunk");
        // One chunk holding the whole message. (That `next_chunk` allocates just this size, not
        // a 16 KiB chunk, is its debug assertion that it wrote what it reserved.)
        assert_eq!(chunk.len(), whole);
        assert!(f.next_chunk().is_none());
    }

    #[test]
    fn a_framed_delta_response_keeps_removals() {
        let msg = DeltaDiscoveryResponse {
            system_version_info: "s".into(),
            type_url: "t".into(),
            nonce: "1".into(),
            removed_resources: vec!["gone".into()],
            ..Default::default()
        };
        let wire = join(&frame(msg).expect("framed"));
        let got = pb::DeltaDiscoveryResponse::decode(&wire[5..]).expect("decodes");
        assert_eq!(got.removed_resources, vec!["gone".to_string()]);
        assert!(got.resources.is_empty());
    }

    #[test]
    fn many_small_resources_go_out_in_bounded_chunks() {
        let items: Vec<Bytes> = (0..2000u32)
            .map(|i| {
                Bytes::from(
                    Any {
                        type_url: "t".into(),
                        value: i.to_le_bytes().repeat(50),
                    }
                    .encode_to_vec(),
                )
            })
            .collect();
        let msg = DiscoveryResponse {
            resources: items.clone(),
            ..Default::default()
        };
        let chunks = frame(msg).expect("framed");
        assert!(chunks.len() > 10, "{} chunks", chunks.len());
        assert!(chunks.iter().all(|c| c.len() < CHUNK + INLINE_MAX + 16));
        let wire = join(&chunks);
        let got = pb::DiscoveryResponse::decode(&wire[5..]).expect("decodes");
        assert_eq!(got.resources.len(), 2000);
        assert_eq!(Bytes::from(got.resources[1999].encode_to_vec()), items[1999]);
    }

    fn body_of(chunks: Vec<Vec<u8>>) -> Body {
        let frames = chunks
            .into_iter()
            .map(|c| Ok::<_, std::convert::Infallible>(Frame::data(Bytes::from(c))));
        Body::new(http_body_util::StreamBody::new(futures::stream::iter(frames)))
    }

    fn grpc(msg: &DiscoveryRequest, compressed: u8) -> Vec<u8> {
        let m = msg.encode_to_vec();
        let mut out = vec![compressed];
        out.extend_from_slice(&(m.len() as u32).to_be_bytes());
        out.extend_from_slice(&m);
        out
    }

    #[tokio::test]
    async fn requests_split_across_frames_decode_and_a_large_buffer_is_released() {
        let big = DiscoveryRequest {
            resource_names: (0..2000).map(|i| format!("cluster-{i}")).collect(),
            ..Default::default()
        };
        let small = DiscoveryRequest {
            type_url: "t".into(),
            ..Default::default()
        };
        let mut wire = grpc(&big, 0);
        wire.extend(grpc(&small, 0));
        // Cut into uneven frames, one boundary inside the length prefix.
        let chunks: Vec<Vec<u8>> = wire.chunks(997).map(|c| c.to_vec()).collect();
        let mut r = Requests::<DiscoveryRequest>::with_limit(body_of(chunks), MAX_REQUEST_BYTES);
        assert_eq!(r.message().await.expect("ok"), Some(big));
        assert_eq!(r.message().await.expect("ok"), Some(small));
        assert_eq!(r.buf.capacity(), 0, "buffer kept between requests");
        assert_eq!(r.message().await.expect("ok"), None);
    }

    #[tokio::test]
    async fn bad_requests_get_clear_statuses() {
        let m = DiscoveryRequest::default();
        let mut r = Requests::<DiscoveryRequest>::with_limit(body_of(vec![grpc(&m, 1)]), MAX_REQUEST_BYTES);
        assert_eq!(r.message().await.expect_err("compressed").code(), Code::Unimplemented);
        let mut huge = vec![0u8];
        huge.extend_from_slice(&((MAX_REQUEST_BYTES + 1) as u32).to_be_bytes());
        let mut r = Requests::<DiscoveryRequest>::with_limit(body_of(vec![huge]), MAX_REQUEST_BYTES);
        assert_eq!(r.message().await.expect_err("too large").code(), Code::OutOfRange);
        let mut r = Requests::<DiscoveryRequest>::with_limit(
            body_of(vec![vec![0, 0, 0, 0, 3, 0xff, 0xff, 0xff]]),
            MAX_REQUEST_BYTES,
        );
        assert_eq!(r.message().await.expect_err("garbage").code(), Code::InvalidArgument);
        let mut r = Requests::<DiscoveryRequest>::with_limit(body_of(vec![vec![0, 0, 0, 0, 9, 1]]), MAX_REQUEST_BYTES);
        assert_eq!(r.message().await.expect_err("truncated").code(), Code::Internal);
    }
}
