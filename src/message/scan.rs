//! Single-pass RFC 8259 validator for one top-level JSON object.
//!
//! The scanner walks the text once, builds no values and reports each top-level member (raw key,
//! raw value, offsets, kind) to a callback. Nested containers are tracked with an explicit bit
//! stack, so 1 MB of `[` costs linear time and no recursion. Beyond RFC 8259 §2-§7 it enforces a
//! nesting limit and rejects a byte-order mark and lone UTF-16 surrogates in `\u` escapes.
//! It does not re-check UTF-8 (the caller passes text already validated as UTF-8), does not
//! convert numbers, and does not look for duplicate keys (the caller does that on the members).
//!
//! sonic-rs 0.5.12 is not used here: the lazy skipping behind its `to_object_iter`, `LazyValue`
//! and `IgnoredAny` skips the four bytes after `\u` unchecked, so it accepts `{"a":"\u" , "}`
//! (one member whose value spans `"\u" , "`), and it has no nesting limit.
#![forbid(unsafe_code)]

use std::borrow::Cow;

use super::special::{find_string_special, first_special_in_16};
use super::{FieldKind, Invalid};

/// One top-level member as the scanner found it. Offsets are byte offsets into the text.
#[derive(Clone, Copy, Debug)]
pub(super) struct Member<'a> {
    /// Key text between the quotes, escapes not decoded.
    pub key: &'a [u8],
    /// True when `key` contains a backslash escape and must be decoded before comparing.
    pub key_escaped: bool,
    /// Offset of the key's opening quote.
    pub key_start: usize,
    /// Raw value text, from its first to its last byte.
    pub value: &'a [u8],
    /// Offset just past the value.
    pub value_end: usize,
    pub kind: FieldKind,
    /// True when the value is a string containing a backslash escape.
    pub value_escaped: bool,
}

impl<'a> Member<'a> {
    /// Returns the decoded key bytes, borrowing when the key has no escape.
    #[inline]
    pub(super) fn decoded_key(&self) -> Cow<'a, [u8]> {
        if !self.key_escaped {
            return Cow::Borrowed(self.key);
        }
        Cow::Owned(decode_key(self.key))
    }
}

/// Validates that `text` is exactly one JSON object and calls `on_member` for each top-level
/// member in text order. Stops at the first syntax error, at nesting deeper than `max_depth`
/// (the top object is depth 1), or at the first error `on_member` returns.
pub(super) fn scan_object<'a, F>(
    text: &'a [u8],
    max_depth: usize,
    on_member: F,
) -> Result<(), Invalid>
where
    F: FnMut(&Member<'a>) -> Result<(), Invalid>,
{
    let mut scanner = Scanner {
        text,
        pos: 0,
        max_depth,
    };
    match scanner.object(on_member) {
        Ok(()) => Ok(()),
        Err(Stop::Member(invalid)) => Err(invalid),
        Err(Stop::Syntax(Reason::TooDeep)) => Err(Invalid::TooDeep {
            offset: scanner.pos,
            max_depth,
        }),
        Err(Stop::Syntax(reason)) => Err(Invalid::InvalidJson {
            offset: scanner.pos,
            what: reason.what(),
        }),
    }
}

/// Cause of an early stop in scanning.
enum Stop {
    /// The member callback returned an error.
    Member(Invalid),
    /// The text is invalid at the scanner position.
    Syntax(Reason),
}

impl From<Reason> for Stop {
    fn from(reason: Reason) -> Self {
        Self::Syntax(reason)
    }
}

/// Syntax error found by the scanner, which leaves its position at the offending byte. Kept to
/// one byte so that the scanner's results fit in registers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Reason {
    ByteOrderMark,
    ControlCharacter,
    ExpectedColon,
    ExpectedCommaOrBrace,
    ExpectedCommaOrBracket,
    ExpectedKey,
    ExpectedKeyOrBrace,
    ExpectedObject,
    ExpectedValue,
    InvalidEscape,
    InvalidHexDigit,
    InvalidLiteral,
    LeadingZero,
    LoneSurrogate,
    MissingDigit,
    TooDeep,
    TrailingData,
    UnexpectedEnd,
}

impl Reason {
    fn what(self) -> &'static str {
        match self {
            Self::ByteOrderMark => "byte order mark is not allowed",
            Self::ControlCharacter => "unescaped control character in string",
            Self::ExpectedColon => "expected ':'",
            Self::ExpectedCommaOrBrace => "expected ',' or '}'",
            Self::ExpectedCommaOrBracket => "expected ',' or ']'",
            Self::ExpectedKey => "expected '\"' to start a key",
            Self::ExpectedKeyOrBrace => "expected '\"' or '}'",
            Self::ExpectedObject => "expected a JSON object",
            Self::ExpectedValue => "expected a value",
            Self::InvalidEscape => "invalid escape in string",
            Self::InvalidHexDigit => "invalid hex digit in \\u escape",
            Self::InvalidLiteral => "invalid literal",
            Self::LeadingZero => "invalid number: leading zero",
            Self::LoneSurrogate => "lone surrogate in \\u escape",
            Self::MissingDigit => "invalid number: expected a digit",
            Self::TooDeep => "nesting too deep",
            Self::TrailingData => "unexpected data after the object",
            Self::UnexpectedEnd => "unexpected end of input",
        }
    }
}

#[cold]
fn decode_key(raw: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(raw.len());
    decode_string_into(raw, &mut out);
    out
}

/// Decodes the escapes of validated JSON string content (without quotes) into `out`.
///
/// Input that is not valid string content is copied through without panicking, so callers must
/// run it only on content the scanner accepted.
pub(super) fn decode_string_into(raw: &[u8], out: &mut Vec<u8>) {
    let mut rest = raw;
    while let Some(at) = rest.iter().position(|&byte| byte == b'\\') {
        let (plain, escape) = rest.split_at(at);
        out.extend_from_slice(plain);

        let (decoded, used) = decode_escape(escape);
        let mut utf8 = [0; 4];
        out.extend_from_slice(decoded.encode_utf8(&mut utf8).as_bytes());
        rest = escape.get(used..).unwrap_or_default();
    }
    out.extend_from_slice(rest);
}

/// Decodes the escape at the start of `escape` (which begins with `\`). Returns the character and
/// the number of bytes used; malformed input yields U+FFFD and consumes the backslash alone.
fn decode_escape(escape: &[u8]) -> (char, usize) {
    let simple = match escape.get(1) {
        Some(b'"') => '"',
        Some(b'\\') => '\\',
        Some(b'/') => '/',
        Some(b'b') => '\u{8}',
        Some(b'f') => '\u{c}',
        Some(b'n') => '\n',
        Some(b'r') => '\r',
        Some(b't') => '\t',
        Some(b'u') => return decode_unicode_escape(escape),
        _ => return (char::REPLACEMENT_CHARACTER, 1),
    };
    (simple, 2)
}

fn decode_unicode_escape(escape: &[u8]) -> (char, usize) {
    let Some(first) = escape.get(2..6).and_then(hex4) else {
        return (char::REPLACEMENT_CHARACTER, 1);
    };
    if !(0xD800..0xDC00).contains(&first) {
        return (
            char::from_u32(first).unwrap_or(char::REPLACEMENT_CHARACTER),
            6,
        );
    }

    let low = match (escape.get(6..8), escape.get(8..12).and_then(hex4)) {
        (Some(b"\\u"), Some(low)) if (0xDC00..0xE000).contains(&low) => low,
        _ => return (char::REPLACEMENT_CHARACTER, 6),
    };
    let scalar = 0x1_0000 + ((first - 0xD800) << 10) + (low - 0xDC00);
    (
        char::from_u32(scalar).unwrap_or(char::REPLACEMENT_CHARACTER),
        12,
    )
}

/// Parses exactly four hex digits.
fn hex4(digits: &[u8]) -> Option<u32> {
    if digits.len() != 4 {
        return None;
    }
    digits
        .iter()
        .try_fold(0, |acc, &digit| Some(acc << 4 | hex_value(digit)?))
}

fn hex_value(digit: u8) -> Option<u32> {
    char::from(digit).to_digit(16)
}

/// Cursor over the text.
///
/// INVARIANT: `pos <= text.len()` between method calls, so `text.get(pos..)` is never `None`.
/// After an `Err`, `pos` is the offset the error refers to.
struct Scanner<'a> {
    text: &'a [u8],
    pos: usize,
    max_depth: usize,
}

/// Token the container loop expects next.
#[derive(Clone, Copy)]
enum Expect {
    /// A key or `}`, right after `{`.
    KeyOrObjectEnd,
    /// `,` or the closing bracket of the innermost container.
    SeparatorOrEnd,
    /// A value, after `[`, `,` in an array, or `:`.
    Value,
    /// A value or `]`, right after `[`.
    ValueOrArrayEnd,
}

impl<'a> Scanner<'a> {
    fn peek(&self) -> Option<u8> {
        self.text.get(self.pos).copied()
    }

    fn slice(&self, start: usize, end: usize) -> &'a [u8] {
        // Offsets come from this scanner and stay within the text (see the INVARIANT above).
        self.text.get(start..end).unwrap_or_default()
    }

    /// Moves to `at` and returns `reason`.
    fn fail<T>(&mut self, at: usize, reason: Reason) -> Result<T, Reason> {
        self.pos = at.min(self.text.len());
        Err(reason)
    }

    /// Returns `reason` at the current byte, or `UnexpectedEnd` when the text is exhausted.
    fn expected<T>(&self, reason: Reason) -> Result<T, Reason> {
        match self.peek() {
            Some(_) => Err(reason),
            None => Err(Reason::UnexpectedEnd),
        }
    }

    /// RFC 8259 §2: insignificant whitespace is space, tab, line feed and carriage return.
    fn skip_ws(&mut self) {
        while let Some(b' ' | b'\t' | b'\n' | b'\r') = self.peek() {
            self.pos += 1;
        }
    }

    /// Scans the whole text as one object (RFC 8259 §2 and §4), calling `on_member` per member.
    fn object<F>(&mut self, mut on_member: F) -> Result<(), Stop>
    where
        F: FnMut(&Member<'a>) -> Result<(), Invalid>,
    {
        // RFC 8259 §8.1: a sender must not add a byte-order mark. Rejecting it keeps our verdict
        // equal to strict parsers downstream, which fail on it.
        if self.text.starts_with(&[0xEF, 0xBB, 0xBF]) {
            return Err(Reason::ByteOrderMark.into());
        }

        self.skip_ws();
        if self.peek() != Some(b'{') {
            return Err(Reason::ExpectedObject.into());
        }
        if self.max_depth < 1 {
            return Err(Reason::TooDeep.into());
        }
        self.pos += 1;

        // §4: object = begin-object [ member *( value-separator member ) ] end-object.
        self.skip_ws();
        if self.peek() == Some(b'}') {
            self.pos += 1;
            return Ok(self.finish()?);
        }
        loop {
            let member = self.member()?;
            on_member(&member).map_err(Stop::Member)?;

            self.skip_ws();
            match self.peek() {
                Some(b',') => {
                    self.pos += 1;
                    self.skip_ws();
                }
                Some(b'}') => {
                    self.pos += 1;
                    return Ok(self.finish()?);
                }
                Some(_) => return Err(Reason::ExpectedCommaOrBrace.into()),
                None => return Err(Reason::UnexpectedEnd.into()),
            }
        }
    }

    /// §2: only whitespace may follow the top-level value.
    fn finish(&mut self) -> Result<(), Reason> {
        self.skip_ws();
        if self.pos < self.text.len() {
            return Err(Reason::TrailingData);
        }
        Ok(())
    }

    /// Scans one top-level member (`"key" : value`), starting at the key's quote.
    fn member(&mut self) -> Result<Member<'a>, Reason> {
        let key_start = self.pos;
        if self.peek() != Some(b'"') {
            return self.expected(Reason::ExpectedKey);
        }
        let key_escaped = self.string()?;
        let key = self.slice(key_start + 1, self.pos - 1);

        self.skip_ws();
        if self.peek() != Some(b':') {
            return self.expected(Reason::ExpectedColon);
        }
        self.pos += 1;
        self.skip_ws();

        let value_start = self.pos;
        let (kind, value_escaped) = self.value()?;
        Ok(Member {
            key,
            key_escaped,
            key_start,
            value: self.slice(value_start, self.pos),
            value_end: self.pos,
            kind,
            value_escaped,
        })
    }

    /// Scans a member value of the top-level object (at depth 2 when it is a container).
    /// Returns its kind and whether it is a string with escapes.
    fn value(&mut self) -> Result<(FieldKind, bool), Reason> {
        let kind = match self.peek() {
            Some(b'"') => return Ok((FieldKind::String, self.string()?)),
            Some(b'{') => FieldKind::Object,
            Some(b'[') => FieldKind::Array,
            Some(b't' | b'f') => FieldKind::Bool,
            Some(b'n') => FieldKind::Null,
            Some(b'-' | b'0'..=b'9') => FieldKind::Number,
            Some(_) => return Err(Reason::ExpectedValue),
            None => return Err(Reason::UnexpectedEnd),
        };
        match kind {
            FieldKind::Object | FieldKind::Array => self.container()?,
            _ => self.scalar()?,
        }
        Ok((kind, false))
    }

    /// Scans a number or literal starting at `pos`.
    fn scalar(&mut self) -> Result<(), Reason> {
        match self.peek() {
            Some(b't') => self.literal(b"true"),
            Some(b'f') => self.literal(b"false"),
            Some(b'n') => self.literal(b"null"),
            _ => self.number(),
        }
    }

    /// Scans a nested array or object starting at `pos` without recursion. The container opened
    /// at `pos` is at depth 2, below the top-level object.
    fn container(&mut self) -> Result<(), Reason> {
        let mut open = BitStack::default();
        let mut expect = Expect::Value;
        loop {
            expect = match expect {
                Expect::Value | Expect::ValueOrArrayEnd => {
                    self.skip_ws();
                    match self.peek() {
                        Some(b']') if matches!(expect, Expect::ValueOrArrayEnd) => {
                            self.close(&mut open)
                        }
                        Some(opening @ (b'[' | b'{')) => {
                            // Depth counts the top-level object as 1.
                            if open.len() + 2 > self.max_depth {
                                return Err(Reason::TooDeep);
                            }
                            self.pos += 1;
                            let is_object = opening == b'{';
                            open.push(is_object);
                            if is_object {
                                Expect::KeyOrObjectEnd
                            } else {
                                Expect::ValueOrArrayEnd
                            }
                        }
                        Some(b'"') => {
                            self.string()?;
                            Expect::SeparatorOrEnd
                        }
                        Some(b't' | b'f' | b'n' | b'-' | b'0'..=b'9') => {
                            self.scalar()?;
                            Expect::SeparatorOrEnd
                        }
                        Some(_) => return Err(Reason::ExpectedValue),
                        None => return Err(Reason::UnexpectedEnd),
                    }
                }
                Expect::KeyOrObjectEnd => {
                    self.skip_ws();
                    if self.peek() == Some(b'}') {
                        self.close(&mut open)
                    } else {
                        self.key_and_colon(Reason::ExpectedKeyOrBrace)?;
                        Expect::Value
                    }
                }
                Expect::SeparatorOrEnd => {
                    let Some(in_object) = open.top() else {
                        return Ok(());
                    };
                    self.skip_ws();
                    match (self.peek(), in_object) {
                        (Some(b','), true) => {
                            self.pos += 1;
                            self.skip_ws();
                            self.key_and_colon(Reason::ExpectedKey)?;
                            Expect::Value
                        }
                        (Some(b','), false) => {
                            self.pos += 1;
                            Expect::Value
                        }
                        (Some(b'}'), true) | (Some(b']'), false) => self.close(&mut open),
                        (None, _) => return Err(Reason::UnexpectedEnd),
                        (Some(_), true) => return Err(Reason::ExpectedCommaOrBrace),
                        (Some(_), false) => return Err(Reason::ExpectedCommaOrBracket),
                    }
                }
            };
        }
    }

    /// Consumes a closing bracket already checked to match the innermost container.
    fn close(&mut self, open: &mut BitStack) -> Expect {
        self.pos += 1;
        open.pop();
        Expect::SeparatorOrEnd
    }

    /// Scans `"key"` and `:` inside a nested object.
    fn key_and_colon(&mut self, reason: Reason) -> Result<(), Reason> {
        if self.peek() != Some(b'"') {
            return self.expected(reason);
        }
        self.string()?;

        self.skip_ws();
        if self.peek() != Some(b':') {
            return self.expected(Reason::ExpectedColon);
        }
        self.pos += 1;
        Ok(())
    }

    /// Scans a string starting at its opening quote (RFC 8259 §7). Returns true when it contains
    /// an escape.
    #[inline(always)]
    fn string(&mut self) -> Result<bool, Reason> {
        let mut at = self.pos + 1;
        // Most keys and short values end within the next 16 bytes, with no escape.
        if let Some(found) = first_special_in_16(self.text.get(at..).unwrap_or_default())
            && self.text.get(at + found) == Some(&b'"')
        {
            self.pos = at + found + 1;
            return Ok(false);
        }
        let mut escaped = false;
        loop {
            let rest = self.text.get(at..).unwrap_or_default();
            let Some((found, byte)) = find_string_special(rest) else {
                return self.fail(self.text.len(), Reason::UnexpectedEnd);
            };
            at += found;
            match byte {
                b'"' => {
                    self.pos = at + 1;
                    return Ok(escaped);
                }
                b'\\' => {
                    escaped = true;
                    // Chat text escapes quotes and newlines often, so the two-byte escapes stay
                    // on this path and only `\u` goes through `escape`.
                    at = match self.text.get(at + 1) {
                        Some(b'"' | b'\\' | b'/' | b'b' | b'f' | b'n' | b'r' | b't') => at + 2,
                        _ => self.escape(at)?,
                    };
                }
                // §7: control characters U+0000 to U+001F must be escaped.
                _ => return self.fail(at, Reason::ControlCharacter),
            }
        }
    }

    /// Scans one escape starting at its backslash at `start`; returns the offset after it.
    fn escape(&mut self, start: usize) -> Result<usize, Reason> {
        match self.text.get(start + 1) {
            Some(b'"' | b'\\' | b'/' | b'b' | b'f' | b'n' | b'r' | b't') => return Ok(start + 2),
            Some(b'u') => {}
            Some(_) => return self.fail(start, Reason::InvalidEscape),
            None => return self.fail(self.text.len(), Reason::UnexpectedEnd),
        }

        // §7 allows any \uXXXX, but a UTF-16 surrogate outside a high/low pair encodes no
        // Unicode scalar value. Strict decoders (serde_json into `String`) reject it, so
        // accepting it here would let downstream parsers disagree with this check.
        let first = self.hex4_at(start + 2)?;
        match first {
            0xD800..=0xDBFF => {}
            0xDC00..=0xDFFF => return self.fail(start, Reason::LoneSurrogate),
            _ => return Ok(start + 6),
        }
        if self.text.get(start + 6..start + 8) != Some(b"\\u") {
            return self.fail(start, Reason::LoneSurrogate);
        }
        let second = self.hex4_at(start + 8)?;
        if !(0xDC00..=0xDFFF).contains(&second) {
            return self.fail(start, Reason::LoneSurrogate);
        }
        Ok(start + 12)
    }

    /// Reads the four hex digits of a `\u` escape at `at`.
    fn hex4_at(&mut self, at: usize) -> Result<u32, Reason> {
        let mut value = 0;
        for offset in at..at + 4 {
            let Some(&digit) = self.text.get(offset) else {
                return self.fail(self.text.len(), Reason::UnexpectedEnd);
            };
            let Some(nibble) = hex_value(digit) else {
                return self.fail(offset, Reason::InvalidHexDigit);
            };
            value = value << 4 | nibble;
        }
        Ok(value)
    }

    /// Scans `-? (0 | [1-9][0-9]*) (. [0-9]+)? ([eE] [+-]? [0-9]+)?` (RFC 8259 §6). The value is
    /// not converted, so `1e999999` and 400-digit integers are accepted.
    fn number(&mut self) -> Result<(), Reason> {
        if self.peek() == Some(b'-') {
            self.pos += 1;
        }
        match self.peek() {
            Some(b'0') => {
                self.pos += 1;
                if let Some(b'0'..=b'9') = self.peek() {
                    return Err(Reason::LeadingZero);
                }
            }
            Some(b'1'..=b'9') => self.digits(),
            _ => return self.expected(Reason::MissingDigit),
        }

        if self.peek() == Some(b'.') {
            self.pos += 1;
            self.required_digits()?;
        }

        if let Some(b'e' | b'E') = self.peek() {
            self.pos += 1;
            if let Some(b'+' | b'-') = self.peek() {
                self.pos += 1;
            }
            self.required_digits()?;
        }
        Ok(())
    }

    fn digits(&mut self) {
        while let Some(b'0'..=b'9') = self.peek() {
            self.pos += 1;
        }
    }

    fn required_digits(&mut self) -> Result<(), Reason> {
        if !matches!(self.peek(), Some(b'0'..=b'9')) {
            return self.expected(Reason::MissingDigit);
        }
        self.digits();
        Ok(())
    }

    /// RFC 8259 §3: the literal names are lowercase `true`, `false` and `null`.
    fn literal(&mut self, name: &'static [u8]) -> Result<(), Reason> {
        let end = self.pos + name.len();
        match self.text.get(self.pos..end) {
            Some(found) if found == name => {
                self.pos = end;
                Ok(())
            }
            _ => Err(Reason::InvalidLiteral),
        }
    }
}

/// Stack of open nested containers, one bit each: true for an object, false for an array.
#[derive(Default)]
struct BitStack {
    /// Number of open containers.
    len: usize,
    /// Levels `0..64`, level `i` in bit `i`.
    inline: u64,
    /// Levels from 64 up, only allocated for very deep inputs.
    spill: Vec<bool>,
}

impl BitStack {
    fn len(&self) -> usize {
        self.len
    }

    fn push(&mut self, is_object: bool) {
        match u32::try_from(self.len) {
            Ok(level @ 0..64) => {
                self.inline = self.inline & !(1 << level) | u64::from(is_object) << level;
            }
            _ => self.spill.push(is_object),
        }
        self.len += 1;
    }

    fn pop(&mut self) {
        if self.len > 64 {
            self.spill.pop();
        }
        self.len = self.len.saturating_sub(1);
    }

    fn top(&self) -> Option<bool> {
        let level = self.len.checked_sub(1)?;
        match u32::try_from(level) {
            Ok(level @ 0..64) => Some(self.inline >> level & 1 == 1),
            _ => self.spill.last().copied(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bit_stack_deep_push_pop_returns_pushed_bits() {
        let mut stack = BitStack::default();
        let pattern = |level: usize| level.is_multiple_of(3);
        for level in 0..300 {
            stack.push(pattern(level));
            assert_eq!(stack.top(), Some(pattern(level)));
        }
        for level in (0..300).rev() {
            assert_eq!(stack.top(), Some(pattern(level)), "level {level}");
            stack.pop();
        }
        assert_eq!(stack.top(), None);
    }

    #[test]
    fn decode_string_into_decodes_every_escape_kind() {
        let mut out = Vec::new();
        decode_string_into(br#"a\"\\\/\b\f\n\r\tz\u00e9\ud83d\ude00"#, &mut out);
        assert_eq!(out, "a\"\\/\u{8}\u{c}\n\r\tzé😀".as_bytes());
    }

    #[test]
    fn decode_string_into_malformed_escape_does_not_panic() {
        for raw in [&b"\\"[..], b"\\u12", b"\\ud800", b"\\ud800\\u0041", b"\\x"] {
            let mut out = Vec::new();
            decode_string_into(raw, &mut out);
            assert!(out.starts_with("\u{FFFD}".as_bytes()), "{raw:?}");
        }
    }
}
