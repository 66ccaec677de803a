//! Regression tests for bugs found by fuzzing and conformance testing. Each test replays a
//! saved input from `tests/data/regressions/`, named for the behaviour it pins, through the
//! public API, and checks the invariant that the input once broke.

mod util;

use std::path::Path;
use std::time::Instant;

use bytes::{Bytes, BytesMut};
use framegate::config::Config;
use framegate::conn::{Flow, Outbox, Session, SessionConfig};
use framegate::frame::CloseCode;
use util::{ServerFrame, parse_server_frame};

const PONG: u8 = 0xA;
const CLOSE: u8 = 0x8;

/// Reads a saved input from `tests/data/regressions/`.
fn saved_input(name: &str) -> Vec<u8> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/data/regressions")
        .join(name);
    std::fs::read(&path).unwrap_or_else(|error| panic!("cannot read {}: {error}", path.display()))
}

/// Takes everything queued in `out` and parses it as server frames.
fn take_frames(out: &mut Outbox) -> Vec<ServerFrame> {
    let mut segments: Vec<Bytes> = Vec::new();
    out.take_into(&mut segments);
    let mut bytes: Vec<u8> = segments.iter().flat_map(|s| s.iter().copied()).collect();
    let mut frames = Vec::new();
    while let Some((frame, used)) = parse_server_frame(&bytes) {
        frames.push(frame);
        bytes.drain(..used);
    }
    assert!(bytes.is_empty(), "output ends inside a frame: {bytes:02x?}");
    frames
}

/// Runs `stream` through a session while a write is in flight, so that pongs are coalesced as
/// in the runtime when the socket is backed up. Then lets the write finish, and returns the
/// session's decision and everything it queued.
fn replay_while_write_in_flight(stream: &[u8]) -> (Flow, Vec<ServerFrame>) {
    let config = SessionConfig::from(&Config::default());
    let now = Instant::now();
    let mut session = Session::new(&config, now);
    let mut out = Outbox::default();
    out.set_backed_up(true);

    let mut buf = BytesMut::from(stream);
    let (flow, accepted) = session.on_read(&mut buf, now, &mut out, None);
    assert!(
        accepted.is_none(),
        "control frames only, but a message was accepted"
    );

    out.set_backed_up(false);
    (flow, take_frames(&mut out))
}

/// RFC 6455 §5.5.1: the close frame is the last frame an endpoint sends. A pong held back
/// while a write was in flight used to be appended when the outbox was next taken, after a
/// close frame queued in the meantime.
#[test]
fn coalesced_pong_goes_out_before_echoed_close() {
    let stream = saved_input("ping_then_close_while_write_in_flight.bin");
    let (flow, frames) = replay_while_write_in_flight(&stream);

    assert_eq!(
        flow,
        Flow::Close {
            code: CloseCode::NORMAL,
            by_peer: true
        }
    );
    let kinds: Vec<(u8, Vec<u8>)> = frames
        .iter()
        .map(|frame| (frame.opcode, frame.payload.clone()))
        .collect();
    assert_eq!(
        kinds,
        [
            (PONG, b"p1".to_vec()),
            (CLOSE, 1000u16.to_be_bytes().to_vec())
        ],
        "the pong must precede the close frame, which must come last"
    );
}

#[test]
fn coalesced_pong_goes_out_before_protocol_error_close() {
    let stream = saved_input("ping_then_reserved_opcode_while_write_in_flight.bin");
    let (flow, frames) = replay_while_write_in_flight(&stream);

    assert!(
        matches!(
            flow,
            Flow::Close {
                code: CloseCode::PROTOCOL_ERROR,
                by_peer: false
            }
        ),
        "{flow:?}"
    );
    let opcodes: Vec<u8> = frames.iter().map(|frame| frame.opcode).collect();
    assert_eq!(opcodes, [PONG, CLOSE], "the close frame must come last");
    assert_eq!(
        frames.first().map(|f| f.payload.as_slice()),
        Some(&b"p1"[..])
    );
    assert_eq!(frames.last().and_then(ServerFrame::close_code), Some(1002));
}

/// The runtime's own closes (timeouts, drain, slow consumer) queue the close frame directly
/// on the outbox; a pong coalesced before it must still go first.
#[test]
fn coalesced_pong_goes_out_before_runtime_close() {
    let mut out = Outbox::default();
    out.set_backed_up(true);
    out.push_pong(&Bytes::from_static(b"p1"));
    out.push_close(CloseCode::GOING_AWAY, "idle timeout");
    out.set_backed_up(false);

    let frames = take_frames(&mut out);
    let opcodes: Vec<u8> = frames.iter().map(|frame| frame.opcode).collect();
    assert_eq!(opcodes, [PONG, CLOSE], "the close frame must come last");
}
