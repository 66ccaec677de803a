//! Message reader: turns a connection's read buffer into WebSocket messages and control events.
//!
//! [`MessageReader`] decodes client frames from the front of a caller-owned `BytesMut` and
//! unmasks each payload byte once as it arrives. It checks text as UTF-8 while it streams in,
//! assembles fragmented messages (RFC 6455 §5.4) and enforces the message size cap before any
//! payload is buffered. A message sent in one frame is handed out without a copy: its payload
//! is split off the read buffer ([`MessageReader::next_event`]) or left at the front of it for
//! the caller to use and remove ([`MessageReader::next_in_place`]). Only fragmented messages
//! are copied, into an assembly buffer.
//!
//! The reader does not write frames, reply to pings or track the closing handshake: the caller
//! sends the pong for a [`Event::Ping`] and stops reading after [`Event::Close`] (§5.5.1).
#![forbid(unsafe_code)]

use std::fmt;

use bytes::{Buf, Bytes, BytesMut};

use super::decode::header_bytes_missing;
use super::{
    CloseCode, DecodeError, FrameHeader, HeaderLimits, OpCode, Role, apply_mask, decode_header,
};
use crate::utf8::Utf8Validator;

/// Limits for one connection's incoming messages.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReaderConfig {
    /// Maximum size of a message in bytes, summed over its fragments. A larger declared frame
    /// length or fragment total fails with [`DecodeError::MessageTooBig`] (close code 1009)
    /// before its payload is buffered. Control frames have their own 125-byte cap.
    pub max_message_bytes: usize,
    /// Whether binary messages are accepted. When false, the first frame of a binary message
    /// fails with [`DecodeError::BinaryNotAllowed`] (close code 1003).
    pub allow_binary: bool,
}

/// Data type of a message (RFC 6455 §5.6).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MessageKind {
    Binary,
    /// Payload checked as valid UTF-8.
    Text,
}

/// A complete message or control frame taken from the read buffer.
///
/// `Debug` prints payload lengths only, so logging an event never leaks its contents.
#[derive(Clone, PartialEq, Eq)]
pub enum Event {
    /// Close frame (RFC 6455 §5.5.1). `code` is `None` for an empty payload. A present code is
    /// one that may be sent on the wire, and `reason` is valid UTF-8.
    Close {
        code: Option<CloseCode>,
        reason: Bytes,
    },
    /// Complete data message, reassembled if it was fragmented.
    Message { kind: MessageKind, payload: Bytes },
    /// Ping frame (§5.5.2). The caller replies with a pong carrying the same payload.
    Ping(Bytes),
    /// Pong frame (§5.5.3).
    Pong(Bytes),
}

/// Event returned by [`MessageReader::next_in_place`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum InPlace {
    /// A control frame or a reassembled fragmented message, owned as from `next_event`.
    Event(Event),
    /// A message sent in one frame. Its payload, unmasked and checked, is the first `len` bytes
    /// of the read buffer, and the caller removes them before the next call.
    Message { kind: MessageKind, len: usize },
}

impl fmt::Debug for Event {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Close { code, reason } => f
                .debug_struct("Close")
                .field("code", code)
                .field("reason_len", &reason.len())
                .finish(),
            Self::Message { kind, payload } => f
                .debug_struct("Message")
                .field("kind", kind)
                .field("payload_len", &payload.len())
                .finish(),
            Self::Ping(payload) => f.debug_tuple("Ping").field(&payload.len()).finish(),
            Self::Pong(payload) => f.debug_tuple("Pong").field(&payload.len()).finish(),
        }
    }
}

/// Incremental reader of client frames for one connection.
///
/// After `next_event` returns an error, the connection must be closed with the matching
/// [`CloseCode`], because the reader's state is then unspecified.
pub struct MessageReader {
    config: ReaderConfig,
    limits: HeaderLimits,
    /// Frame whose header has been consumed and whose payload is still arriving.
    frame: Option<Frame>,
    /// Fragmented message whose final frame has not arrived yet.
    assembly: Option<Assembly>,
    /// UTF-8 state of the text message in progress, single-frame or fragmented.
    text: Utf8Validator,
    /// Value for `bytes_wanted`, updated whenever `next_event` returns.
    missing_bytes: usize,
}

/// Destination of the payload of the frame in progress.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Target {
    /// Close, ping or pong: kept in the read buffer until complete.
    Control(OpCode),
    /// A whole message in one frame: kept in the read buffer and handed out without a copy.
    Single(MessageKind),
    /// Part of a fragmented message: copied into the assembly buffer as it arrives.
    Fragment,
}

/// State of the frame in progress. The read buffer starts at its payload because the header
/// was split off once decoded.
#[derive(Debug, Clone, Copy)]
struct Frame {
    target: Target,
    fin: bool,
    mask: [u8; 4],
    payload_len: usize,
    /// Payload bytes already unmasked and checked.
    /// INVARIANT: `done <= payload_len`.
    done: usize,
    /// Bytes of the payload, already unmasked, that sit at the front of the read buffer.
    /// INVARIANT: `buffered == done` for `Control` and `Single`, and `buffered == 0` for `Fragment`.
    buffered: usize,
}

struct Assembly {
    kind: MessageKind,
    /// INVARIANT: `data.capacity() <= max_message_bytes`.
    data: Vec<u8>,
}

impl MessageReader {
    /// Creates a reader expecting the first frame of a new connection.
    pub fn new(config: ReaderConfig) -> Self {
        Self {
            config,
            limits: HeaderLimits {
                role: Role::Server,
                max_payload_bytes: config.max_message_bytes,
                allow_binary: config.allow_binary,
            },
            frame: None,
            assembly: None,
            text: Utf8Validator::new(),
            missing_bytes: 2,
        }
    }

    /// Takes the next event out of `buf`, the connection's read buffer.
    ///
    /// Consumed bytes are split off the front of `buf`. `Ok(None)` means more bytes are
    /// needed. In that case any partial payload left in `buf` is already unmasked (and, for
    /// text, UTF-8 checked), and the next call resumes after it, so the caller must keep `buf`
    /// and only append to it between calls. Control frames between fragments are returned at
    /// once. Call this until it returns `Ok(None)` before reading more from the socket.
    ///
    /// # Panics
    ///
    /// Panics if bytes that an earlier call left in `buf` were removed by the caller.
    pub fn next_event(&mut self, buf: &mut BytesMut) -> Result<Option<Event>, DecodeError> {
        Ok(match self.next_in_place(buf)? {
            None => None,
            Some(InPlace::Event(event)) => Some(event),
            Some(InPlace::Message { kind, len }) => Some(Event::Message {
                kind,
                payload: buf.split_to(len).freeze(),
            }),
        })
    }

    /// Like [`MessageReader::next_event`], but a message sent in one frame stays at the front
    /// of `buf` instead of being split off, so a caller that only reads the payload touches no
    /// reference count. After [`InPlace::Message`] the caller must remove those `len` bytes
    /// (`advance` or `split_to`) before calling again; otherwise they are decoded as a frame.
    pub fn next_in_place(&mut self, buf: &mut BytesMut) -> Result<Option<InPlace>, DecodeError> {
        if self.frame.is_none()
            && self.assembly.is_none()
            && let Some(message) = self.whole_short_message(buf)?
        {
            return Ok(Some(message));
        }
        loop {
            let mut frame = match self.frame.take() {
                Some(frame) => frame,
                None => {
                    let Some(header) = decode_header(buf, &self.limits)? else {
                        self.missing_bytes = header_bytes_missing(buf);
                        return Ok(None);
                    };
                    let frame = self.start_frame(&header)?;
                    buf.advance(header.header_len);
                    frame
                }
            };

            self.take_payload(&mut frame, buf)?;
            if frame.done < frame.payload_len {
                self.missing_bytes = frame.payload_len - frame.done;
                self.frame = Some(frame);
                return Ok(None);
            }

            if let Some(event) = self.finish_frame(&frame, buf)? {
                self.missing_bytes = 0;
                return Ok(Some(event));
            }
        }
    }

    /// Decodes the most common frame without the general state machine: a final text or
    /// binary frame with a 7-bit length (at most 125 bytes) that is wholly in `buf`. Returns
    /// `None` and leaves `buf` unchanged for any other input, which the general path then
    /// decodes. Invalid UTF-8 gives the same error on both paths.
    fn whole_short_message(&mut self, buf: &mut BytesMut) -> Result<Option<InPlace>, DecodeError> {
        const HEADER_LEN: usize = 6;
        let Some(&[first, second, k0, k1, k2, k3]) = buf.first_chunk::<HEADER_LEN>() else {
            return Ok(None);
        };
        // §5.2: FIN set, RSV1-3 clear, opcode 0x1 or 0x2. §5.1: the mask bit is set.
        let kind = match first {
            0x81 => MessageKind::Text,
            0x82 if self.config.allow_binary => MessageKind::Binary,
            _ => return Ok(None),
        };
        if second & 0x80 == 0 {
            return Ok(None);
        }
        let len = usize::from(second & 0x7F);
        if len > 125 || len > self.config.max_message_bytes {
            return Ok(None);
        }
        let Some(payload) = buf.get_mut(HEADER_LEN..HEADER_LEN + len) else {
            return Ok(None);
        };

        apply_mask(payload, [k0, k1, k2, k3], 0);
        // Consumed before the UTF-8 check, so an error leaves `buf` as the general path does.
        buf.advance(HEADER_LEN);
        if kind == MessageKind::Text {
            // §8.1: a text message must be valid UTF-8 as a whole.
            self.text.reset();
            self.text
                .feed(buf.get(..len).unwrap_or_default())
                .and_then(|()| self.text.finish())
                .map_err(|err| DecodeError::TextInvalidUtf8 {
                    valid_up_to: err.valid_up_to,
                })?;
        }
        self.missing_bytes = 0;
        Ok(Some(InPlace::Message { kind, len }))
    }

    /// Returns how many more bytes the frame in progress needs, as of the last `next_event`
    /// call, so the caller can size its next read.
    ///
    /// While a header is incomplete this counts the header bytes still missing, and until its
    /// second byte arrives only the 2 fixed bytes are counted. Otherwise it counts the payload
    /// bytes still missing. It is 2 before the first call, and 0 after a call that returned an
    /// event, because `buf` may already hold the next frame.
    pub fn bytes_wanted(&self) -> usize {
        self.missing_bytes
    }

    /// Returns the allocated size in bytes of the buffer assembling a fragmented message, or 0
    /// when none is open. It never exceeds `max_message_bytes`.
    pub fn assembling_bytes(&self) -> usize {
        self.assembly
            .as_ref()
            .map_or(0, |assembly| assembly.data.capacity())
    }

    /// Applies the rules that depend on earlier frames to a decoded header and returns the
    /// state for its payload.
    fn start_frame(&mut self, header: &FrameHeader) -> Result<Frame, DecodeError> {
        let Some(mask) = header.mask else {
            return Err(DecodeError::UnmaskedFrame);
        };
        let too_big = |size: u64| DecodeError::MessageTooBig {
            size,
            max: self.config.max_message_bytes,
        };

        let target = match (header.opcode, self.assembly.as_mut()) {
            // §5.5: control frames may be injected in the middle of a fragmented message.
            (OpCode::Close | OpCode::Ping | OpCode::Pong, _) => Target::Control(header.opcode),

            // §5.4: a continuation frame only ever follows a non-final text or binary frame.
            (OpCode::Continuation, None) => return Err(DecodeError::ContinuationUnexpected),

            (OpCode::Continuation, Some(assembly)) => {
                let assembled = u64::try_from(assembly.data.len()).unwrap_or(u64::MAX);
                let total = assembled.saturating_add(header.payload_len);
                let max = u64::try_from(self.config.max_message_bytes).unwrap_or(u64::MAX);
                if total > max {
                    return Err(too_big(total));
                }
                let payload_len =
                    usize::try_from(header.payload_len).map_err(|_| too_big(header.payload_len))?;
                reserve_bounded(
                    &mut assembly.data,
                    payload_len,
                    self.config.max_message_bytes,
                );
                Target::Fragment
            }

            // §5.4: fragments of one message must not be interleaved with another message.
            (OpCode::Text | OpCode::Binary, Some(_)) => {
                return Err(DecodeError::MessageInterleaved);
            }

            (OpCode::Text | OpCode::Binary, None) => {
                let kind = if header.opcode == OpCode::Text {
                    MessageKind::Text
                } else {
                    MessageKind::Binary
                };
                self.text.reset();
                if header.fin {
                    Target::Single(kind)
                } else {
                    let payload_len = usize::try_from(header.payload_len)
                        .map_err(|_| too_big(header.payload_len))?;
                    let mut data = Vec::new();
                    reserve_bounded(&mut data, payload_len, self.config.max_message_bytes);
                    self.assembly = Some(Assembly { kind, data });
                    Target::Fragment
                }
            }
        };

        // decode_header capped data frames at max_message_bytes and control frames at 125.
        let payload_len =
            usize::try_from(header.payload_len).map_err(|_| too_big(header.payload_len))?;
        Ok(Frame {
            target,
            fin: header.fin,
            mask,
            payload_len,
            done: 0,
            buffered: 0,
        })
    }

    /// Unmasks and checks the payload bytes of `frame` that arrived since the last call, and
    /// moves them into the assembly buffer if the frame is a fragment.
    fn take_payload(&mut self, frame: &mut Frame, buf: &mut BytesMut) -> Result<(), DecodeError> {
        let arrived = buf.len().saturating_sub(frame.buffered);
        let count = arrived.min(frame.payload_len - frame.done);
        if count == 0 {
            return Ok(());
        }

        let fresh = buf
            .get_mut(frame.buffered..frame.buffered + count)
            .unwrap_or_default();
        apply_mask(fresh, frame.mask, frame.done);

        // §8.1: fail on invalid UTF-8 as soon as the prefix seen so far cannot be valid.
        let kind = match frame.target {
            Target::Control(_) => None,
            Target::Single(kind) => Some(kind),
            Target::Fragment => self.assembly.as_ref().map(|assembly| assembly.kind),
        };
        if kind == Some(MessageKind::Text) {
            self.text
                .feed(fresh)
                .map_err(|err| DecodeError::TextInvalidUtf8 {
                    valid_up_to: err.valid_up_to,
                })?;
        }

        match (frame.target, self.assembly.as_mut()) {
            (Target::Fragment, Some(assembly)) => {
                assembly.data.extend_from_slice(fresh);
                buf.advance(count);
            }
            _ => frame.buffered += count,
        }
        frame.done += count;
        Ok(())
    }

    /// Turns a frame whose payload is complete into an event, or returns `None` for a
    /// non-final fragment.
    fn finish_frame(
        &mut self,
        frame: &Frame,
        buf: &mut BytesMut,
    ) -> Result<Option<InPlace>, DecodeError> {
        let event = match frame.target {
            Target::Control(opcode) => {
                // At most 125 bytes. A copy leaves the read buffer unshared, so it keeps
                // growing and compacting in place.
                let payload = Bytes::copy_from_slice(&buf[..frame.buffered]);
                buf.advance(frame.buffered);
                control_event(opcode, payload)?
            }
            Target::Single(kind) => {
                self.finish_text(kind)?;
                return Ok(Some(InPlace::Message {
                    kind,
                    len: frame.buffered,
                }));
            }
            Target::Fragment => {
                if !frame.fin {
                    return Ok(None);
                }
                let Some(assembly) = self.assembly.take() else {
                    return Err(DecodeError::ContinuationUnexpected);
                };
                self.finish_text(assembly.kind)?;
                Event::Message {
                    kind: assembly.kind,
                    payload: Bytes::from(assembly.data),
                }
            }
        };
        Ok(Some(InPlace::Event(event)))
    }

    /// Checks that a text message ended on a code point boundary.
    fn finish_text(&mut self, kind: MessageKind) -> Result<(), DecodeError> {
        if kind != MessageKind::Text {
            return Ok(());
        }
        self.text
            .finish()
            .map_err(|err| DecodeError::TextInvalidUtf8 {
                valid_up_to: err.valid_up_to,
            })
    }
}

impl fmt::Debug for MessageReader {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MessageReader")
            .field("config", &self.config)
            .field("frame", &self.frame)
            .field("assembling_bytes", &self.assembling_bytes())
            .field("missing_bytes", &self.missing_bytes)
            .finish_non_exhaustive()
    }
}

/// Builds the event for a complete control frame, checking a close payload (§5.5.1, §7.4).
fn control_event(opcode: OpCode, payload: Bytes) -> Result<Event, DecodeError> {
    match opcode {
        OpCode::Ping => return Ok(Event::Ping(payload)),
        OpCode::Pong => return Ok(Event::Pong(payload)),
        _ => {}
    }

    if payload.is_empty() {
        return Ok(Event::Close {
            code: None,
            reason: Bytes::new(),
        });
    }

    // §5.5.1: a close body starts with a 2-byte status code, optionally followed by a reason.
    let Some(&code_bytes) = payload.first_chunk::<2>() else {
        return Err(DecodeError::ClosePayloadOneByte);
    };
    let code = CloseCode(u16::from_be_bytes(code_bytes));
    if !code.is_allowed_on_wire() {
        return Err(DecodeError::CloseCodeInvalid { code: code.0 });
    }

    // §5.5.1: the reason is UTF-8 encoded.
    let reason = payload.slice(2..);
    if let Err(err) = std::str::from_utf8(&reason) {
        return Err(DecodeError::CloseReasonInvalidUtf8 {
            valid_up_to: err.valid_up_to(),
        });
    }
    Ok(Event::Close {
        code: Some(code),
        reason,
    })
}

/// Makes room in `data` for `additional` more bytes, at least doubling the capacity when it
/// grows but never beyond `max` unless `additional` itself requires it.
fn reserve_bounded(data: &mut Vec<u8>, additional: usize, max: usize) {
    let needed = data.len().saturating_add(additional);
    if needed <= data.capacity() {
        return;
    }
    let target = data.capacity().saturating_mul(2).min(max).max(needed);
    data.reserve_exact(target - data.len());
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY: [u8; 4] = [0x12, 0x9A, 0x5C, 0xE3];

    const CONFIG: ReaderConfig = ReaderConfig {
        max_message_bytes: 1 << 20,
        allow_binary: true,
    };

    /// Length encoding used by the test encoder.
    #[derive(Clone, Copy)]
    enum Len {
        Shortest,
        U16,
        U64,
    }

    /// Test encoder for client frames: `first` is the FIN/RSV/opcode byte.
    fn client_frame_with(first: u8, payload: &[u8], key: [u8; 4], len: Len) -> Vec<u8> {
        let mut out = vec![first];
        let size = payload.len();
        match len {
            Len::Shortest if size <= 125 => out.push(0x80 | size as u8),
            Len::Shortest | Len::U16 if size <= 0xFFFF => {
                out.push(0x80 | 126);
                out.extend_from_slice(&(size as u16).to_be_bytes());
            }
            _ => {
                out.push(0x80 | 127);
                out.extend_from_slice(&(size as u64).to_be_bytes());
            }
        }
        out.extend_from_slice(&key);
        let start = out.len();
        out.extend_from_slice(payload);
        crate::frame::apply_mask_plain(&mut out[start..], key, 0);
        out
    }

    fn client_frame(first: u8, payload: &[u8]) -> Vec<u8> {
        client_frame_with(first, payload, KEY, Len::Shortest)
    }

    fn concat(frames: &[Vec<u8>]) -> Vec<u8> {
        frames.concat()
    }

    /// Feeds `chunks` in order and collects the events drained after each one.
    fn read_chunks<'a>(
        config: ReaderConfig,
        chunks: impl IntoIterator<Item = &'a [u8]>,
    ) -> Result<Vec<Event>, DecodeError> {
        let mut reader = MessageReader::new(config);
        let mut buf = BytesMut::new();
        let mut events = Vec::new();
        for chunk in chunks {
            buf.extend_from_slice(chunk);
            while let Some(event) = reader.next_event(&mut buf)? {
                events.push(event);
            }
        }
        Ok(events)
    }

    fn read_all(config: ReaderConfig, stream: &[u8]) -> Result<Vec<Event>, DecodeError> {
        read_chunks(config, [stream])
    }

    fn text(payload: &str) -> Event {
        Event::Message {
            kind: MessageKind::Text,
            payload: Bytes::copy_from_slice(payload.as_bytes()),
        }
    }

    fn binary(payload: &[u8]) -> Event {
        Event::Message {
            kind: MessageKind::Binary,
            payload: Bytes::copy_from_slice(payload),
        }
    }

    fn close(code: u16, reason: &str) -> Event {
        Event::Close {
            code: Some(CloseCode(code)),
            reason: Bytes::copy_from_slice(reason.as_bytes()),
        }
    }

    /// Builds a stream with every frame kind, fragmentation, control frames between fragments, a
    /// code point split across fragments and all three length forms.
    fn mixed_stream() -> (Vec<u8>, Vec<Event>) {
        let long = vec![0xA5; 300];
        let stream = concat(&[
            client_frame(0x81, b"Hello"),
            client_frame(0x82, &[]),
            client_frame(0x01, "ab\u{e9}".as_bytes().split_at(3).0),
            client_frame(0x89, b"ping"),
            client_frame(0x00, &[0xA9, b'c']),
            client_frame(0x8A, &[]),
            client_frame(0x80, b"d"),
            client_frame_with(0x82, &long, KEY, Len::Shortest),
            client_frame_with(0x82, b"x", [0, 0, 0, 0], Len::U64),
            client_frame_with(0x81, "€".as_bytes(), KEY, Len::U16),
            client_frame(0x88, &[0x03, 0xE8, b'o', b'k']),
        ]);
        let events = vec![
            text("Hello"),
            binary(&[]),
            Event::Ping(Bytes::from_static(b"ping")),
            Event::Pong(Bytes::new()),
            text("ab\u{e9}cd"),
            binary(&long),
            binary(b"x"),
            text("€"),
            close(1000, "ok"),
        ];
        (stream, events)
    }

    #[test]
    fn reader_one_read_gives_all_events() {
        let (stream, expected) = mixed_stream();
        assert_eq!(read_all(CONFIG, &stream), Ok(expected));
    }

    #[test]
    fn reader_every_prefix_needs_more_bytes() {
        let (stream, expected) = mixed_stream();
        for end in 0..stream.len() {
            let events = read_all(CONFIG, &stream[..end]);
            let Ok(events) = events else {
                panic!("prefix {end} gave {events:?}");
            };
            assert!(events.len() < expected.len(), "prefix {end}");
            assert_eq!(events, expected[..events.len()], "prefix {end}");
        }
    }

    #[test]
    fn reader_every_two_way_split_gives_same_events() {
        let (stream, expected) = mixed_stream();
        for split in 0..=stream.len() {
            let (left, right) = stream.split_at(split);
            assert_eq!(
                read_chunks(CONFIG, [left, right]),
                Ok(expected.clone()),
                "split {split}"
            );
        }
    }

    #[test]
    fn reader_short_frame_paths_agree() {
        let too_small = ReaderConfig {
            max_message_bytes: 4,
            ..CONFIG
        };
        let no_binary = ReaderConfig {
            allow_binary: false,
            ..CONFIG
        };
        let cases: [(&str, ReaderConfig, Vec<u8>); 6] = [
            ("text", CONFIG, client_frame(0x81, b"hello")),
            ("empty binary", CONFIG, client_frame(0x82, b"")),
            ("125 bytes", CONFIG, client_frame(0x81, &[b'a'; 125])),
            ("invalid UTF-8", CONFIG, client_frame(0x81, b"ab\xC0\x80")),
            ("cut code point", CONFIG, client_frame(0x81, b"ab\xE2\x82")),
            ("over the limit", too_small, client_frame(0x81, b"hello")),
        ];
        for (name, config, stream) in cases {
            // One-byte reads never hold a whole frame with a payload, so they take the
            // general path.
            let general = read_chunks(config, stream.chunks(1));
            assert_eq!(read_all(config, &stream), general, "{name}");
        }
        assert_eq!(
            read_all(no_binary, &client_frame(0x82, b"x")),
            Err(DecodeError::BinaryNotAllowed)
        );
    }

    #[test]
    fn reader_one_byte_reads_give_same_events() {
        let (stream, expected) = mixed_stream();
        assert_eq!(read_chunks(CONFIG, stream.chunks(1)), Ok(expected));
    }

    #[test]
    fn reader_single_frame_payload_is_not_copied() {
        let stream = client_frame(0x82, &[7; 100]);
        let mut buf = BytesMut::from(&stream[..]);
        let payload_start = buf.as_ptr().wrapping_add(6);
        let mut reader = MessageReader::new(CONFIG);
        let Ok(Some(Event::Message { payload, .. })) = reader.next_event(&mut buf) else {
            panic!("expected a message");
        };
        assert_eq!(payload.as_ptr(), payload_start);
        assert_eq!(payload.len(), 100);
        assert!(buf.is_empty());
    }

    #[test]
    fn reader_length_forms_give_same_message() {
        for len in [Len::Shortest, Len::U16, Len::U64] {
            for size in [0, 1, 125, 126, 65_535, 65_536] {
                let payload = vec![0x3C; size];
                let stream = client_frame_with(0x82, &payload, KEY, len);
                assert_eq!(
                    read_all(CONFIG, &stream),
                    Ok(vec![binary(&payload)]),
                    "size {size}"
                );
            }
        }
    }

    #[test]
    fn reader_empty_payloads_give_empty_events() {
        let stream = concat(&[
            client_frame(0x81, &[]),
            client_frame(0x82, &[]),
            client_frame(0x01, &[]),
            client_frame(0x80, &[]),
            client_frame(0x89, &[]),
            client_frame(0x8A, &[]),
            client_frame(0x88, &[]),
        ]);
        let expected = vec![
            text(""),
            binary(&[]),
            text(""),
            Event::Ping(Bytes::new()),
            Event::Pong(Bytes::new()),
            Event::Close {
                code: None,
                reason: Bytes::new(),
            },
        ];
        assert_eq!(read_all(CONFIG, &stream), Ok(expected));
    }

    #[test]
    fn reader_rule_breaks_map_to_close_codes() {
        let strict = ReaderConfig {
            max_message_bytes: 100,
            allow_binary: false,
        };
        let unmasked = vec![0x81, 0x01, b'a'];
        let cases: Vec<(&str, Vec<u8>, u16)> = vec![
            ("unmasked frame", unmasked, 1002),
            ("rsv1 set", client_frame(0xC1, b"a"), 1002),
            ("rsv2 set", client_frame(0xA1, b"a"), 1002),
            ("opcode 0x3", client_frame(0x83, b""), 1002),
            ("opcode 0x7", client_frame(0x87, b""), 1002),
            ("opcode 0xB", client_frame(0x8B, b""), 1002),
            ("opcode 0xF", client_frame(0x8F, b""), 1002),
            ("ping over 125", client_frame(0x89, &[0; 126]), 1002),
            (
                "close over 125",
                client_frame(0x88, &[0x03, 0xE8].repeat(63)),
                1002,
            ),
            ("fragmented ping", client_frame(0x09, b""), 1002),
            ("fragmented close", client_frame(0x08, b""), 1002),
            (
                "length high bit",
                vec![0x81, 0xFF, 0x80, 0, 0, 0, 0, 0, 0, 0],
                1002,
            ),
            ("lone continuation", client_frame(0x80, b"a"), 1002),
            (
                "text inside fragmented message",
                concat(&[client_frame(0x01, b"a"), client_frame(0x81, b"b")]),
                1002,
            ),
            ("close one byte", client_frame(0x88, &[0x03]), 1002),
            ("close 0", client_frame(0x88, &[0x00, 0x00]), 1002),
            ("close 999", client_frame(0x88, &[0x03, 0xE7]), 1002),
            ("close 1004", client_frame(0x88, &[0x03, 0xEC]), 1002),
            ("close 1005", client_frame(0x88, &[0x03, 0xED]), 1002),
            ("close 1006", client_frame(0x88, &[0x03, 0xEE]), 1002),
            ("close 1015", client_frame(0x88, &[0x03, 0xF7]), 1002),
            ("close 1016", client_frame(0x88, &[0x03, 0xF8]), 1002),
            ("close 2999", client_frame(0x88, &[0x0B, 0xB7]), 1002),
            ("close 5000", client_frame(0x88, &[0x13, 0x88]), 1002),
            ("text bad utf8", client_frame(0x81, &[b'a', 0xFF]), 1007),
            (
                "text truncated utf8",
                client_frame(0x81, &[0xE2, 0x82]),
                1007,
            ),
            (
                "fragmented text bad utf8",
                concat(&[
                    client_frame(0x01, &[0xED]),
                    client_frame(0x80, &[0xA0, 0x80]),
                ]),
                1007,
            ),
            (
                "close reason bad utf8",
                client_frame(0x88, &[0x03, 0xE8, 0xC0]),
                1007,
            ),
            ("frame too big", client_frame(0x81, &[b'a'; 101]), 1009),
            (
                "fragments too big",
                concat(&[
                    client_frame(0x01, &[b'a'; 60]),
                    client_frame(0x80, &[b'a'; 41]),
                ]),
                1009,
            ),
            ("binary not allowed", client_frame(0x82, b"a"), 1003),
            (
                "fragmented binary not allowed",
                client_frame(0x02, b"a"),
                1003,
            ),
        ];
        for (name, stream, code) in cases {
            let result = read_all(strict, &stream);
            let Err(err) = result else {
                panic!("case {name} gave {result:?}");
            };
            assert_eq!(CloseCode::from(&err), CloseCode(code), "case {name}: {err}");
        }
    }

    #[test]
    fn reader_accepts_sendable_close_codes() {
        for code in [
            1000u16, 1001, 1003, 1007, 1011, 1012, 1013, 1014, 3000, 4999,
        ] {
            let mut body = code.to_be_bytes().to_vec();
            body.extend_from_slice("bye ✓".as_bytes());
            let stream = client_frame(0x88, &body);
            assert_eq!(
                read_all(CONFIG, &stream),
                Ok(vec![close(code, "bye ✓")]),
                "code {code}"
            );
        }
    }

    #[test]
    fn reader_invalid_text_fails_before_frame_completes() {
        let frame = client_frame(0x81, &[b'a', b'b', 0xC0, b'c', b'd', b'e']);
        // The header (6 bytes) and the first 3 payload bytes, where 0xC0 already decides the error.
        let mut buf = BytesMut::from(&frame[..9]);
        let mut reader = MessageReader::new(CONFIG);
        assert_eq!(
            reader.next_event(&mut buf),
            Err(DecodeError::TextInvalidUtf8 { valid_up_to: 2 })
        );
    }

    #[test]
    fn reader_invalid_text_fails_before_final_fragment() {
        let first = client_frame(0x01, "héllo".as_bytes());
        let second = client_frame(0x00, &[b'x', 0xF5]);
        let stream = concat(&[first, second]);
        let mut buf = BytesMut::from(&stream[..]);
        let mut reader = MessageReader::new(CONFIG);
        assert_eq!(
            reader.next_event(&mut buf),
            Err(DecodeError::TextInvalidUtf8 { valid_up_to: 7 })
        );
    }

    #[test]
    fn reader_too_big_fails_before_payload_arrives() {
        let config = ReaderConfig {
            max_message_bytes: 1_000,
            ..CONFIG
        };
        let frame = client_frame(0x82, &[0; 1_001]);
        let mut buf = BytesMut::from(&frame[..8]);
        let mut reader = MessageReader::new(config);
        assert_eq!(
            reader.next_event(&mut buf),
            Err(DecodeError::MessageTooBig {
                size: 1_001,
                max: 1_000
            })
        );
    }

    #[test]
    fn reader_partial_payload_is_unmasked_in_place_once() {
        let payload = b"incremental payload";
        let frame = client_frame(0x81, payload);
        let mut reader = MessageReader::new(CONFIG);
        let mut buf = BytesMut::new();

        buf.extend_from_slice(&frame[..3]);
        assert_eq!(reader.next_event(&mut buf), Ok(None));
        assert_eq!(reader.bytes_wanted(), 3);

        buf.extend_from_slice(&frame[3..10]);
        assert_eq!(reader.next_event(&mut buf), Ok(None));
        assert_eq!(&buf[..], &payload[..4]);
        assert_eq!(reader.bytes_wanted(), payload.len() - 4);

        // A call with no new bytes must not unmask the buffered bytes again.
        assert_eq!(reader.next_event(&mut buf), Ok(None));
        assert_eq!(&buf[..], &payload[..4]);

        buf.extend_from_slice(&frame[10..]);
        let event = reader.next_event(&mut buf);
        assert_eq!(event, Ok(Some(text("incremental payload"))));
        assert_eq!(reader.bytes_wanted(), 0);
        assert!(buf.is_empty());
    }

    #[test]
    fn reader_bytes_wanted_starts_at_two() {
        let reader = MessageReader::new(CONFIG);
        assert_eq!(reader.bytes_wanted(), 2);
    }

    #[test]
    fn reader_many_tiny_fragments_stay_within_limit() {
        const FRAGMENTS: usize = 100_000;
        let config = ReaderConfig {
            max_message_bytes: FRAGMENTS,
            allow_binary: true,
        };
        let mut stream = client_frame(0x02, b"a");
        let middle = client_frame(0x00, b"a");
        for _ in 2..FRAGMENTS {
            stream.extend_from_slice(&middle);
        }
        stream.extend_from_slice(&client_frame(0x80, b"a"));

        let mut reader = MessageReader::new(config);
        let mut buf = BytesMut::new();
        let mut events = Vec::new();
        let mut peak = 0;
        for chunk in stream.chunks(4_096) {
            buf.extend_from_slice(chunk);
            while let Some(event) = reader.next_event(&mut buf).unwrap() {
                events.push(event);
            }
            peak = peak.max(reader.assembling_bytes());
        }

        assert!(peak <= FRAGMENTS, "peak assembly {peak} bytes");
        assert_eq!(events, vec![binary(&[b'a'; FRAGMENTS])]);
        assert_eq!(reader.assembling_bytes(), 0);
        assert!(buf.is_empty());
    }

    #[test]
    fn reader_fragment_count_over_limit_fails() {
        let config = ReaderConfig {
            max_message_bytes: 3,
            allow_binary: true,
        };
        let stream = concat(&[
            client_frame(0x01, b"a"),
            client_frame(0x00, b"b"),
            client_frame(0x00, b"c"),
            client_frame(0x00, b"d"),
        ]);
        assert_eq!(
            read_all(config, &stream),
            Err(DecodeError::MessageTooBig { size: 4, max: 3 })
        );
    }

    #[test]
    fn reader_fragmented_message_reports_assembling_bytes() {
        let stream = client_frame(0x01, b"abc");
        let mut buf = BytesMut::from(&stream[..]);
        let mut reader = MessageReader::new(CONFIG);
        assert_eq!(reader.next_event(&mut buf), Ok(None));
        assert!(reader.assembling_bytes() >= 3);
        assert!(buf.is_empty());
    }

    #[test]
    fn event_debug_prints_lengths_not_payloads() {
        let event = text("secret");
        assert_eq!(
            format!("{event:?}"),
            "Message { kind: Text, payload_len: 6 }"
        );
        let ping = Event::Ping(Bytes::from_static(b"secret"));
        assert_eq!(format!("{ping:?}"), "Ping(6)");
    }

    #[test]
    fn reserve_bounded_never_exceeds_max() {
        let mut data = Vec::new();
        for _ in 0..1_000 {
            reserve_bounded(&mut data, 1, 1_000);
            data.push(0);
            assert!(data.capacity() <= 1_000, "capacity {}", data.capacity());
        }
    }

    proptest::proptest! {
        #[test]
        fn masked_frame_decodes_to_original_payload(
            payload in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..2_000),
            key in proptest::prelude::any::<[u8; 4]>(),
            fragment_at in proptest::prelude::any::<proptest::sample::Index>(),
            read_at in proptest::prelude::any::<proptest::sample::Index>(),
        ) {
            let single = client_frame_with(0x82, &payload, key, Len::Shortest);
            proptest::prop_assert_eq!(read_all(CONFIG, &single), Ok(vec![binary(&payload)]));

            let (left, right) = payload.split_at(fragment_at.index(payload.len() + 1));
            let fragmented = concat(&[
                client_frame_with(0x02, left, key, Len::Shortest),
                client_frame_with(0x80, right, key, Len::U64),
            ]);
            let (first, second) = fragmented.split_at(read_at.index(fragmented.len() + 1));
            proptest::prop_assert_eq!(
                read_chunks(CONFIG, [first, second]),
                Ok(vec![binary(&payload)])
            );
        }

        #[test]
        fn reader_arbitrary_bytes_never_panic(
            stream in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..512),
            read_at in proptest::prelude::any::<proptest::sample::Index>(),
        ) {
            let config = ReaderConfig {
                max_message_bytes: 64,
                allow_binary: true,
            };
            let (first, second) = stream.split_at(read_at.index(stream.len() + 1));
            let mut reader = MessageReader::new(config);
            let mut buf = BytesMut::new();
            for chunk in [first, second] {
                buf.extend_from_slice(chunk);
                while let Ok(Some(_)) = reader.next_event(&mut buf) {}
                proptest::prop_assert!(reader.assembling_bytes() <= 64);
            }
        }
    }
}
