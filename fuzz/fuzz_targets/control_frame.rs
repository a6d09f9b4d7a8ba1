//! The control frame codec and request decoding: any byte stream, in any
//! chunking, yields frames or a clean error, and a decoded request
//! re-encodes.
#![no_main]

use baton_proto::frame::FrameCodec;
use baton_proto::v1;
use bytes::BytesMut;
use libfuzzer_sys::fuzz_target;
use prost::Message;
use tokio_util::codec::Decoder;

fuzz_target!(|data: &[u8]| {
    // The first byte chooses how the stream is cut.
    let Some((&cut, stream)) = data.split_first() else {
        return;
    };
    let step = usize::from(cut % 16) + 1;
    let mut codec = FrameCodec::new(64 * 1024);
    let mut buffer = BytesMut::new();
    for chunk in stream.chunks(step) {
        buffer.extend_from_slice(chunk);
        loop {
            match codec.decode(&mut buffer) {
                Ok(Some(frame)) => {
                    if let Ok(request) = v1::Request::decode(frame.as_ref()) {
                        let again = v1::Request::decode(request.encode_to_vec().as_slice());
                        assert_eq!(again.ok(), Some(request));
                    }
                }
                Ok(None) => break,
                Err(_) => return,
            }
        }
    }
});
