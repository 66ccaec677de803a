//! Fuzz target for `upstream::ResponseReader`, the application server's HTTP/1.1 response.
//!
//! Invariants, for any bytes split into any chunks:
//! - reading the chunks one by one gives the same first response, error or lack of one as
//!   reading them all at once. The exception is a limit on unfinished data (head, chunk-size
//!   line or chunked size as sent), which can stop the reading in pieces first;
//! - a complete response leaves exactly the bytes after it in the buffer, and its body is at
//!   most the body limit.

#![no_main]

use bytes::BytesMut;
use framegate::upstream::{Response, ResponseError, ResponseReader};
use framegate_fuzz::{Input, read_ends};
use libfuzzer_sys::fuzz_target;

/// Small, so inputs of a few KiB reach the body limits.
const MAX_BODY: usize = 1024;

/// First response (or error) and the bytes left in the buffer after it.
type Outcome = (Result<Option<Response>, ResponseError>, Vec<u8>);

fuzz_target!(|input: &[u8]| {
    let input = Input::split(input);
    let [_, mode, _, _] = input.control;
    let data = input.data;

    let whole = read(data, &[data.len()]);
    let pieces = read(data, &read_ends(data.len(), mode, input.seed()));
    if let Ok(Some(response)) = &whole.0 {
        assert!(response.body.len() <= MAX_BODY, "body above the limit");
    }
    if matches!(
        pieces.0,
        Err(ResponseError::HeadTooLarge { .. }
            | ResponseError::ChunkLineTooLong { .. }
            | ResponseError::ChunkedTooLarge { .. })
    ) {
        return;
    }
    match (&whole.0, &pieces.0) {
        (Ok(Some(one)), Ok(Some(other))) => {
            assert_eq!(one.status, other.status, "status differs");
            assert_eq!(one.body, other.body, "body differs");
            assert_eq!(one.keep_alive, other.keep_alive, "keep-alive differs");
            assert_eq!(whole.1, pieces.1, "bytes left differ");
        }
        (Ok(None), Ok(None)) => {}
        (Err(one), Err(other)) => assert_eq!(one, other, "errors differ"),
        (one, other) => panic!("whole: {one:?}, in pieces: {other:?}"),
    }
});

/// Feeds `data` in chunks ending at `ends`, then signals the close, and returns the first
/// response or error with what is left of the buffer.
fn read(data: &[u8], ends: &[usize]) -> Outcome {
    let mut reader = ResponseReader::new(MAX_BODY);
    let mut buf = BytesMut::new();
    let mut start = 0;
    for &end in ends {
        buf.extend_from_slice(&data[start..end]);
        start = end;
        match reader.parse(&mut buf, false) {
            Ok(None) => {}
            other => {
                buf.extend_from_slice(&data[start..]);
                return (other, buf.to_vec());
            }
        }
    }
    let last = reader.parse(&mut buf, true);
    (last, buf.to_vec())
}
