//! Fuzz target for one whole connection without sockets: `conn::Handshake`, `conn::authenticate`
//! and `conn::Session` with an echo backend, driven by a client script derived from the input.
//!
//! The script opens with a valid upgrade request whose token, minted once by `auth::Signer`,
//! is in one of the four token sources. It then sends frames, pings, closes and raw bytes in
//! varied reads and lets time pass. It starts and finishes writes, because the runtime
//! coalesces pongs while a write is in flight, and it may close from the server side as the
//! runtime does.
//! Invariants:
//! - the upgrade is accepted and the token verifies as the minted subject;
//! - never a panic (debug assertions are on, so the encoders' own checks run too);
//! - the output parses as unmasked, unfragmented server frames with RSV bits clear;
//! - every close code sent is one RFC 6455 allows on the wire, an echoed close carries the
//!   peer's code, at most one close frame is sent, and nothing is written after it;
//! - every text frame is valid UTF-8, every accepted message is within the size limit and
//!   passes the message check, and the assembly buffer stays within the limit;
//! - the outbox's frame count, taken after each take as the runtime's metrics do, equals the
//!   number of frames written.

#![no_main]

use std::sync::OnceLock;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use framegate::auth::{AuthConfig, KeyMaterial, Signer, Verifier};
use framegate::config::Config;
use framegate::conn::{
    Accepted, Flow, Handshake, HandshakeStep, Outbox, Session, SessionConfig, authenticate,
};
use framegate::frame::{CloseCode, MessageKind, OpCode};
use framegate::handshake::HandshakeConfig;
use framegate::message::{MessageRules, check};
use framegate::ratelimit::TokenBucket;
use framegate_fuzz::{LengthForm, ServerFrame, client_frame, parse_server_frames};
use jsonwebtoken::Algorithm;
use libfuzzer_sys::arbitrary::{Result, Unstructured};
use libfuzzer_sys::fuzz_target;

/// Verification time for every run, in seconds since the Unix epoch.
const NOW_UNIX: u64 = 1_700_000_000;

/// HMAC secret of the minted token; a fixed value keeps failures reproducible.
const SECRET: &[u8] = b"connection-fuzz-secret-of-at-least-32-bytes";

const SUBJECT: &str = "fuzz-user";

/// Close codes the runtime uses for closes it starts: timeouts, drain, slow consumer, expiry.
const SERVER_CLOSE_CODES: [CloseCode; 4] = [
    CloseCode::GOING_AWAY,
    CloseCode::POLICY_VIOLATION,
    CloseCode::INTERNAL,
    CloseCode(4001),
];

/// Close codes a client script picks from, valid and invalid on the wire.
const CLIENT_CLOSE_CODES: [u16; 16] = [
    1000, 1001, 1002, 1003, 1004, 1005, 1006, 1007, 1011, 1014, 1015, 1016, 2999, 3000, 4999, 5000,
];

/// Text messages a script picks from: valid chat messages, each kind of invalid one, and
/// text that is not JSON.
const MESSAGES: [&str; 8] = [
    r#"{"conversation_id":"c1","content":"hello"}"#,
    r#"{"id":"m1","conversation_id":"c1","content":"hi","to":"bob"}"#,
    r#"{"id":7,"conversation_id":"c1"}"#,
    r#"{"conversation_id":1,"content":"x"}"#,
    r#"{"conversation_id":"c1","content":"x","conversation_id":"c2"}"#,
    r#"{"a":[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[1]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]}"#,
    "not json at all",
    "{\"id\":\"\\ud800\",\"conversation_id\":\"c1\",\"content\":\"x\"}",
];

struct Setup {
    verifier: Verifier,
    token: String,
    config: Config,
    handshake: HandshakeConfig,
}

fn setup() -> &'static Setup {
    static SETUP: OnceLock<Setup> = OnceLock::new();
    SETUP.get_or_init(|| {
        let signer = Signer::from_secret(Algorithm::HS256, SECRET).expect("HS256 signer");
        let token = signer
            .mint(SUBJECT, NOW_UNIX, 3600, None, None)
            .expect("minted token");
        let verifier = Verifier::new(&AuthConfig {
            algorithms: vec![Algorithm::HS256],
            key: KeyMaterial::Secret(SECRET.to_vec()),
            issuer: None,
            audience: None,
            leeway_secs: 0,
        })
        .expect("HS256 verifier");
        let config = Config::default();
        let handshake = framegate::runtime::handshake_config(&config);
        Setup {
            verifier,
            token,
            config,
            handshake,
        }
    })
}

fuzz_target!(|input: &[u8]| {
    let mut script = Unstructured::new(input);
    // Running out of input only shortens the script; it is never an error worth reporting.
    let _ = run(&mut script);
});

/// One step of the client script after the upgrade.
enum Step {
    /// Bytes the client sends, delivered in two reads split at `split`.
    Send { bytes: Vec<u8>, split: usize },
    /// Time passes.
    Wait(Duration),
    /// The runtime closes the connection (timeout, drain, token expiry).
    ServerClose(CloseCode),
    /// A write starts or finishes: the runtime coalesces pongs while one is in flight.
    WriteInFlight(bool),
}

/// Everything the server wrote, and what the session decided along the way.
#[derive(Default)]
struct Transcript {
    output: Vec<u8>,
    /// Sum of `Outbox::take_frame_count` over every take, as the runtime's metrics count.
    frames_counted: u64,
    /// Code of the first `Flow::Close`, and whether the peer started it.
    close: Option<(CloseCode, bool)>,
    /// Whether the peer's close frame carried no status code.
    peer_close_without_code: bool,
}

fn run(script: &mut Unstructured<'_>) -> Result<()> {
    let setup = setup();
    let session_config = session_config(script, &setup.config)?;
    let now = Instant::now();

    // Upgrade: a valid request, pipelined with the first frames, in two reads.
    let mut stream = upgrade_request(script.choose_index(4)?, &setup.token);
    let head_len = stream.len();
    let pipelined = frame(script)?;
    stream.extend_from_slice(&pipelined);
    let split = script.int_in_range(0..=stream.len())?;
    let leftover = accept(&stream, split, head_len, &setup.handshake, &setup.verifier);

    let mut session = Session::new(&session_config, now);
    let mut user_bucket = if script.arbitrary()? {
        Some(TokenBucket::new(1, 2, now))
    } else {
        None
    };
    let mut buf = BytesMut::from(leftover.as_slice());
    let mut out = Outbox::default();
    let mut transcript = Transcript::default();
    let mut clock = now;
    let mut in_flight = false;
    let mut steps = vec![Step::Send {
        bytes: Vec::new(),
        split: 0,
    }];
    while steps.len() < 64 && !script.is_empty() {
        steps.push(step(script)?);
    }

    for step in steps {
        match step {
            Step::Send { bytes, split } => {
                let (first, second) = bytes.split_at(split.min(bytes.len()));
                for read in [first, second] {
                    buf.extend_from_slice(read);
                    let context = Context {
                        config: &session_config,
                        now: clock,
                    };
                    on_read(
                        &mut session,
                        &mut buf,
                        &mut out,
                        &mut transcript,
                        &context,
                        &mut user_bucket,
                    );
                    if !in_flight {
                        take_output(&mut out, &mut transcript);
                    }
                }
            }
            Step::Wait(duration) => clock += duration,
            Step::WriteInFlight(starts) => {
                // The writer takes what is queued, then coalesces pongs until the write ends.
                if starts && !in_flight {
                    take_output(&mut out, &mut transcript);
                }
                in_flight = starts;
                out.set_backed_up(in_flight);
                if !in_flight {
                    take_output(&mut out, &mut transcript);
                }
            }
            Step::ServerClose(code) => {
                let queued_before = out.queued_bytes();
                let closed_before = session.is_closed();
                let flow = session.close(&mut out, code, "server closes", false);
                if closed_before {
                    assert_eq!(
                        out.queued_bytes(),
                        queued_before,
                        "bytes queued after close"
                    );
                }
                record(&mut transcript, flow);
                if !in_flight {
                    take_output(&mut out, &mut transcript);
                }
            }
        }
    }

    out.set_backed_up(false);
    take_output(&mut out, &mut transcript);
    check_transcript(&transcript);
    Ok(())
}

/// Returns the session settings under test: the defaults, with limits and rules varied by the
/// script.
fn session_config(script: &mut Unstructured<'_>, config: &Config) -> Result<SessionConfig> {
    let mut session = SessionConfig::from(config);
    session.max_message_bytes = *script.choose(&[1, 2, 16, 125, 126, 1000, 10_240, 65_536])?;
    session.allow_binary = script.arbitrary()?;
    session.rules = std::sync::Arc::new(MessageRules {
        json: script.arbitrary()?,
        ..(*session.rules).clone()
    });
    session.rate_per_sec = *script.choose(&[0, 1, 50])?;
    session.burst = *script.choose(&[1, 2, 100])?;
    session.max_violations = *script.choose(&[1, 2, 3, 10])?;
    Ok(session)
}

/// Builds a valid upgrade request with the token in the source numbered `source`.
fn upgrade_request(source: usize, token: &str) -> Vec<u8> {
    let (target, token_line) = match source {
        0 => (
            "/ws".to_owned(),
            format!("Authorization: Bearer {token}\r\n"),
        ),
        1 => (format!("/ws?access_token={token}"), String::new()),
        2 => (
            "/ws".to_owned(),
            format!("Sec-WebSocket-Protocol: framegate.jwt, {token}\r\n"),
        ),
        _ => (
            "/ws".to_owned(),
            format!("Cookie: framegate_token={token}\r\n"),
        ),
    };
    format!(
        "GET {target} HTTP/1.1\r\nHost: localhost\r\nUpgrade: websocket\r\n\
         Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\
         Sec-WebSocket-Version: 13\r\n{token_line}\r\n"
    )
    .into_bytes()
}

/// Runs the handshake over `stream` in two reads split at `split` and returns the frame bytes
/// that arrived after the head. Panics unless the upgrade is accepted with the minted token.
fn accept(
    stream: &[u8],
    split: usize,
    head_len: usize,
    handshake_config: &HandshakeConfig,
    verifier: &Verifier,
) -> Vec<u8> {
    let mut handshake = Handshake::new(&setup().config);
    for end in [split, stream.len()] {
        let buffered = stream.get(..end).unwrap_or(stream);
        match handshake.advance(buffered, handshake_config, false) {
            HandshakeStep::Partial => {
                assert!(end < head_len, "complete head reported as partial");
            }
            HandshakeStep::Reject(reason) => panic!("valid upgrade rejected: {reason:?}"),
            HandshakeStep::DemoPage { .. } => panic!("upgrade request taken for the demo page"),
            HandshakeStep::Accept {
                upgrade,
                head_len: parsed_len,
            } => {
                assert_eq!(parsed_len, head_len, "head length differs");
                let claims = authenticate(&upgrade, verifier, true, NOW_UNIX);
                let subject = claims.ok().flatten().map(|claims| claims.sub);
                assert_eq!(subject.as_deref(), Some(SUBJECT), "minted token rejected");
                return buffered.get(head_len..).unwrap_or_default().to_vec();
            }
        }
    }
    panic!("upgrade request never completed");
}

/// Picks the next script step.
fn step(script: &mut Unstructured<'_>) -> Result<Step> {
    let step = match script.choose_index(9)? {
        0 => Step::Wait(Duration::from_millis(u64::from(script.arbitrary::<u16>()?))),
        1 => Step::ServerClose(*script.choose(&SERVER_CLOSE_CODES)?),
        2 => Step::WriteInFlight(script.arbitrary()?),
        3 => {
            // Raw bytes: anything, including frames cut short or unmasked.
            let len = script.int_in_range(0..=32)?;
            let bytes = script.bytes(len)?.to_vec();
            let split = script.int_in_range(0..=len)?;
            Step::Send { bytes, split }
        }
        _ => {
            let bytes = frame(script)?;
            let split = script.int_in_range(0..=bytes.len())?;
            Step::Send { bytes, split }
        }
    };
    Ok(step)
}

/// Builds one masked client frame: a data frame or fragment, a control frame or a close.
fn frame(script: &mut Unstructured<'_>) -> Result<Vec<u8>> {
    let key: [u8; 4] = script.arbitrary()?;
    let form = *script.choose(&[
        LengthForm::Minimal,
        LengthForm::Extended16,
        LengthForm::Extended64,
    ])?;
    let fin = if script.arbitrary()? { 0x80 } else { 0x00 };

    let (first, payload) = match script.choose_index(8)? {
        0 => {
            let text = script.choose(&MESSAGES)?.as_bytes().to_vec();
            (0x81, text)
        }
        1 => {
            // A chat message in fragments: this frame carries a prefix or the rest.
            let text = script.choose(&MESSAGES)?.as_bytes();
            let cut = script.int_in_range(0..=text.len())?;
            let (head, tail) = text.split_at(cut);
            if script.arbitrary()? {
                (0x01, head.to_vec())
            } else {
                (0x80, tail.to_vec())
            }
        }
        2 => (fin | 0x9, payload(script, 125)?),
        3 => (fin | 0xA, payload(script, 125)?),
        4 => {
            let mut body = script.choose(&CLIENT_CLOSE_CODES)?.to_be_bytes().to_vec();
            body.extend_from_slice(&payload(script, 123)?);
            let keep = *script.choose(&[0, 1, body.len()])?;
            body.truncate(keep);
            (0x88, body)
        }
        5 => {
            let opcode = script.int_in_range(0..=0xF)?;
            let rsv = script.int_in_range(0..=7)? << 4;
            (fin | rsv | opcode, payload(script, 300)?)
        }
        6 => (fin | 0x2, payload(script, 300)?),
        _ => (fin | *script.choose(&[0x0, 0x1])?, payload(script, 300)?),
    };
    Ok(client_frame(first, &payload, key, form))
}

fn payload(script: &mut Unstructured<'_>, max_len: usize) -> Result<Vec<u8>> {
    let len = script.int_in_range(0..=max_len)?;
    Ok(script.bytes(len)?.to_vec())
}

/// Settings one read needs.
struct Context<'a> {
    config: &'a SessionConfig,
    now: Instant,
}

/// Handles one read the way the runtime does: call `on_read` until it accepts nothing, echo
/// each accepted message, and stop at a close. A closed session must queue nothing more.
fn on_read(
    session: &mut Session,
    buf: &mut BytesMut,
    out: &mut Outbox,
    transcript: &mut Transcript,
    context: &Context<'_>,
    user_bucket: &mut Option<TokenBucket>,
) {
    let closed_before = session.is_closed();
    let queued_before = out.queued_bytes();
    loop {
        let (flow, accepted) = session.on_read(buf, context.now, out, user_bucket.as_mut());
        assert!(
            session.assembling_bytes() <= context.config.max_message_bytes,
            "assembly over the message limit"
        );
        let dispatched = accepted.is_some();
        // Moves the message out of `accepted` in every case, so nothing borrows `buf` after.
        if let Some(message) = { accepted } {
            assert_eq!(flow, Flow::Continue, "a message came with a close");
            check_accepted(&message, context.config);
            let opcode = match message.kind {
                MessageKind::Binary => OpCode::Binary,
                MessageKind::Text => OpCode::Text,
            };
            // As the runtime's echo: small payloads are copied, large ones shared.
            if out.copies(message.payload().len()) {
                out.push_frame_copy(opcode, message.payload());
            } else {
                out.push_frame(opcode, &message.into_payload());
            }
        }
        record(transcript, flow);
        if let Flow::Close { .. } = flow {
            assert!(session.is_closed(), "close flow but the session is open");
            break;
        }
        if !dispatched || buf.is_empty() {
            break;
        }
    }
    if closed_before {
        assert_eq!(
            out.queued_bytes(),
            queued_before,
            "bytes queued after the close"
        );
    }
}

/// Checks a message that passed every check.
fn check_accepted(message: &Accepted<'_>, config: &SessionConfig) {
    assert!(
        message.payload().len() <= config.max_message_bytes,
        "accepted message too big"
    );
    match message.kind {
        MessageKind::Binary => assert!(config.allow_binary, "binary accepted but not allowed"),
        MessageKind::Text => {
            assert!(
                std::str::from_utf8(message.payload()).is_ok(),
                "text not UTF-8"
            );
            if config.rules.json {
                assert!(
                    check(message.payload(), &config.rules).is_ok(),
                    "invalid JSON accepted"
                );
            }
        }
    }
}

/// Records the first close decision.
fn record(transcript: &mut Transcript, flow: Flow) {
    if let (None, Flow::Close { code, by_peer }) = (transcript.close, flow) {
        transcript.close = Some((code, by_peer));
        transcript.peer_close_without_code = by_peer && code == CloseCode::NO_STATUS;
    }
}

/// Moves what is queued into the transcript, as the writer task does before each write.
fn take_output(out: &mut Outbox, transcript: &mut Transcript) {
    let mut segments: Vec<Bytes> = Vec::new();
    let queued = out.queued_bytes();
    out.take_into(&mut segments);
    transcript.frames_counted += out.take_frame_count();
    let taken_bytes: usize = segments.iter().map(Bytes::len).sum();
    assert_eq!(
        taken_bytes, queued,
        "queued_bytes differs from the bytes taken"
    );
    for segment in segments {
        transcript.output.extend_from_slice(&segment);
    }
}

/// Checks the whole server output.
fn check_transcript(transcript: &Transcript) {
    let frames = match parse_server_frames(&transcript.output) {
        Ok(frames) => frames,
        Err(error) => panic!("server output is not a frame sequence: {error:?}"),
    };

    let parsed = u64::try_from(frames.len()).unwrap_or(u64::MAX);
    assert_eq!(
        transcript.frames_counted, parsed,
        "frame count differs from frames sent"
    );

    let close_at = frames.iter().position(|frame| frame.opcode == 0x8);
    if let Some(at) = close_at {
        assert_eq!(at + 1, frames.len(), "frames written after the close frame");
    }
    match (close_at.and_then(|at| frames.get(at)), transcript.close) {
        (None, None) => {}
        (Some(close), Some((code, by_peer))) => check_close(close, code, by_peer, transcript),
        (close, flow) => panic!("close frame {close:?} does not match flow {flow:?}"),
    }

    for frame in &frames {
        assert!(frame.fin, "server frame is fragmented");
        assert_eq!(frame.rsv, 0, "server frame has RSV bits set");
        assert!(
            matches!(frame.opcode, 0x1 | 0x2 | 0x8 | 0xA),
            "server sent opcode {:#x}",
            frame.opcode
        );
        if frame.opcode >= 0x8 {
            assert!(frame.payload.len() <= 125, "control frame over 125 bytes");
        }
        if frame.opcode == 0x1 {
            assert!(
                std::str::from_utf8(&frame.payload).is_ok(),
                "text frame not UTF-8"
            );
        }
    }
}

/// Checks the close frame against the close decision.
fn check_close(close: &ServerFrame, code: CloseCode, by_peer: bool, transcript: &Transcript) {
    let reason = close.payload.get(2..).unwrap_or_default();
    assert!(
        std::str::from_utf8(reason).is_ok(),
        "close reason not UTF-8"
    );
    match close.close_code() {
        Some(sent) => {
            assert!(
                CloseCode(sent).is_allowed_on_wire(),
                "close code {sent} sent"
            );
            assert_eq!(sent, code.0, "close frame code differs from the flow");
        }
        None => {
            assert!(close.payload.is_empty(), "one-byte close payload sent");
            assert!(
                by_peer && transcript.peer_close_without_code,
                "empty close sent but not in answer to an empty close"
            );
        }
    }
}
