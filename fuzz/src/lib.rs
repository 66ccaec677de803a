//! Helpers shared by the fuzz targets: read patterns derived from the input, a client frame
//! encoder and a server frame parser written independently of framegate's codec.
//!
//! Every target splits its input into a few control bytes and the data under test. The control
//! bytes pick limits and a read pattern; the data stays a contiguous tail of the input, so
//! libFuzzer's dictionary tokens land in the data unchanged.

#![forbid(unsafe_code)]

/// Number of control bytes that [`Input::split`] takes from the front of the input.
pub const CONTROL_BYTES: usize = 4;

/// A fuzz input split into control bytes and the data under test.
#[derive(Debug, Clone, Copy)]
pub struct Input<'a> {
    /// Control bytes, zero-padded when the input is shorter than [`CONTROL_BYTES`].
    pub control: [u8; CONTROL_BYTES],
    /// The bytes after the control bytes.
    pub data: &'a [u8],
}

impl<'a> Input<'a> {
    /// Splits `input` into [`CONTROL_BYTES`] control bytes and the data after them.
    pub fn split(input: &'a [u8]) -> Self {
        let cut = input.len().min(CONTROL_BYTES);
        let (head, data) = input.split_at(cut);
        let mut control = [0; CONTROL_BYTES];
        for (slot, &byte) in control.iter_mut().zip(head) {
            *slot = byte;
        }
        Self { control, data }
    }

    /// Seed for [`read_ends`], from the last two control bytes.
    pub fn seed(&self) -> u64 {
        let [_, _, high, low] = self.control;
        u64::from(u16::from_be_bytes([high, low]))
    }
}

/// Returns the end offsets of the reads that deliver `len` bytes, in increasing order and
/// ending with `len`.
///
/// `mode` picks the pattern: one read, one byte per read, two reads split at a point taken
/// from `seed`, or reads of pseudo-random sizes (some of them empty) up to 8, 64 or 1024
/// bytes. The same `(len, mode, seed)` always gives the same reads.
pub fn read_ends(len: usize, mode: u8, seed: u64) -> Vec<usize> {
    let max_read = match mode % 6 {
        0 => return vec![len],
        1 => return (0..=len).collect(),
        2 => {
            let split = usize::try_from(seed).unwrap_or(0) % (len + 1);
            return vec![split, len];
        }
        3 => 8,
        4 => 64,
        _ => 1024,
    };

    let mut state = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut ends = Vec::new();
    let mut end = 0;
    while end < len {
        // xorshift64: cheap and deterministic, enough to vary the read sizes.
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        let size = usize::try_from(state % (max_read + 1)).unwrap_or(1);
        end = (end + size).min(len);
        ends.push(end);
    }
    ends.push(len);
    ends
}

/// Length encoding of a client frame written by [`client_frame`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LengthForm {
    /// The shortest form RFC 6455 §5.2 allows for the payload length.
    Minimal,
    /// Always the 16-bit extended length (126), padded when the length is shorter.
    Extended16,
    /// Always the 64-bit extended length (127).
    Extended64,
}

/// Encodes one masked client frame with `first` as the FIN/RSV/opcode byte.
///
/// A payload longer than 65,535 bytes always uses the 64-bit length, whatever `form` says.
pub fn client_frame(first: u8, payload: &[u8], key: [u8; 4], form: LengthForm) -> Vec<u8> {
    let mut frame = Vec::with_capacity(payload.len() + 14);
    frame.push(first);

    let len = payload.len();
    let len16 = u16::try_from(len).ok();
    let len7 = u8::try_from(len).ok().filter(|&short| short <= 125);
    match (form, len7, len16) {
        (LengthForm::Minimal, Some(short), _) => frame.push(0x80 | short),
        (LengthForm::Minimal | LengthForm::Extended16, _, Some(medium)) => {
            frame.push(0x80 | 126);
            frame.extend_from_slice(&medium.to_be_bytes());
        }
        _ => {
            frame.push(0x80 | 127);
            let long = u64::try_from(len).unwrap_or(u64::MAX);
            frame.extend_from_slice(&long.to_be_bytes());
        }
    }

    frame.extend_from_slice(&key);
    frame.extend(
        payload
            .iter()
            .zip(key.iter().cycle())
            .map(|(byte, mask)| byte ^ mask),
    );
    frame
}

/// A frame the server wrote, as parsed by [`parse_server_frames`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerFrame {
    pub fin: bool,
    /// RSV1-RSV3 in the low 3 bits.
    pub rsv: u8,
    pub opcode: u8,
    pub payload: Vec<u8>,
}

impl ServerFrame {
    /// Status code of a close frame, or `None` for an empty close payload or another opcode.
    pub fn close_code(&self) -> Option<u16> {
        if self.opcode != 0x8 {
            return None;
        }
        let bytes = self.payload.first_chunk::<2>()?;
        Some(u16::from_be_bytes(*bytes))
    }
}

/// Why server output failed to parse as frames.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ServerFrameError {
    /// The frame at `offset` has its mask bit set, which RFC 6455 §5.1 forbids for a server.
    Masked { offset: usize },
    /// The output ends inside the frame at `offset`.
    Truncated { offset: usize },
}

/// Parses every unmasked frame in `bytes`, a server's complete output.
///
/// # Errors
///
/// Returns [`ServerFrameError`] when a frame is masked or cut short.
pub fn parse_server_frames(bytes: &[u8]) -> Result<Vec<ServerFrame>, ServerFrameError> {
    let mut frames = Vec::new();
    let mut offset = 0;
    while offset < bytes.len() {
        let rest = bytes.get(offset..).unwrap_or_default();
        let truncated = ServerFrameError::Truncated { offset };
        let &[first, second] = rest.first_chunk::<2>().ok_or(truncated.clone())?;
        if second & 0x80 != 0 {
            return Err(ServerFrameError::Masked { offset });
        }

        let (len, header_len) = match second & 0x7F {
            126 => {
                let bytes = rest
                    .get(2..4)
                    .and_then(|slice| slice.first_chunk::<2>())
                    .ok_or(truncated.clone())?;
                (u64::from(u16::from_be_bytes(*bytes)), 4)
            }
            127 => {
                let bytes = rest
                    .get(2..10)
                    .and_then(|slice| slice.first_chunk::<8>())
                    .ok_or(truncated.clone())?;
                (u64::from_be_bytes(*bytes), 10)
            }
            short => (u64::from(short), 2),
        };
        let len = usize::try_from(len).map_err(|_| truncated.clone())?;
        let end = header_len + len;
        let payload = rest.get(header_len..end).ok_or(truncated)?;

        frames.push(ServerFrame {
            fin: first & 0x80 != 0,
            rsv: (first >> 4) & 0x7,
            opcode: first & 0x0F,
            payload: payload.to_vec(),
        });
        offset += end;
    }
    Ok(frames)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn read_ends_cover_the_whole_input_in_order() {
        for len in [0, 1, 2, 17, 300] {
            for mode in 0..6 {
                for seed in [0, 1, 0xFFFF] {
                    let ends = read_ends(len, mode, seed);
                    assert_eq!(ends.last(), Some(&len), "len {len} mode {mode}");
                    assert!(ends.windows(2).all(|pair| pair[0] <= pair[1]));
                }
            }
        }
    }

    #[test]
    fn client_frame_then_server_parse_round_trips_unmasked() {
        let frame = client_frame(0x81, b"hi", [0; 4], LengthForm::Extended16);
        assert_eq!(frame, [0x81, 0xFE, 0x00, 0x02, 0, 0, 0, 0, b'h', b'i']);
        let mut unmasked = frame.clone();
        unmasked[1] = 126;
        unmasked.drain(4..8);
        let parsed = parse_server_frames(&unmasked).unwrap();
        assert_eq!(parsed[0].payload, b"hi");
    }
}
