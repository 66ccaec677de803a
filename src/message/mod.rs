//! Per-message checks on a complete, UTF-8-valid text message, and the JSON the server sends back.
//!
//! [`check`] verifies that a message is exactly one JSON object (RFC 8259) and that it has the
//! configured top-level fields, and returns what the backends need (`id`, `to`) borrowed from the
//! text. [`write_error`] renders error frame payloads, and [`with_from`] builds the relayed copy
//! stamped with the sender. This module does no I/O, reads no clock and logs nothing. Frame
//! assembly, size limits, UTF-8 validation (RFC 6455 §8.1) and rate limiting happen before it.
//!
//! Where RFC 8259 leaves a choice, [`check`] takes the strict one, so that no parser downstream
//! can read a message differently from the check that let it through:
//! - a byte-order mark before the object is rejected (§8.1 forbids senders to add one);
//! - duplicate top-level keys are rejected, compared after decoding escapes (§4 leaves their
//!   meaning to the implementation, so two parsers could keep different values);
//! - a `\u` escape of a UTF-16 surrogate that is not part of a high/low pair is rejected (§8.2
//!   says such strings may fail or misbehave in decoders);
//! - objects and arrays nested deeper than [`MessageRules::max_json_depth`] are rejected (§9
//!   allows a nesting limit).
//!
//! Numbers are checked against the grammar but never converted, so `1e999999` and 400-digit
//! integers pass.
//!
//! Only the string search in `special` uses `unsafe` (SSE2 loads), allowed there alone.
#![deny(unsafe_code)]

use std::borrow::Cow;
use std::collections::HashSet;
use std::fmt;
use std::ops::Range;

mod scan;
mod special;
mod wire;

use self::scan::{Member, scan_object};
pub use self::wire::{code, write_error, write_invalid};

/// Default for [`MessageRules::max_json_depth`].
pub const DEFAULT_MAX_JSON_DEPTH: usize = 32;

/// Number of top-level keys compared pairwise before duplicate detection switches to a hash set.
const INLINE_KEYS: usize = 16;

/// JSON value type a required field must have.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum FieldKind {
    /// Any JSON value.
    Any,
    Array,
    Bool,
    Null,
    Number,
    Object,
    String,
}

impl FieldKind {
    /// Lowercase name used in error details ("string", "number", ...).
    pub fn name(self) -> &'static str {
        match self {
            Self::Any => "any value",
            Self::Array => "array",
            Self::Bool => "boolean",
            Self::Null => "null",
            Self::Number => "number",
            Self::Object => "object",
            Self::String => "string",
        }
    }

    fn accepts(self, actual: Self) -> bool {
        self == Self::Any || self == actual
    }
}

impl fmt::Display for FieldKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// A top-level field every message must carry.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RequiredField {
    /// Key as it appears after decoding JSON escapes.
    pub name: String,
    pub kind: FieldKind,
}

impl RequiredField {
    pub fn new(name: impl Into<String>, kind: FieldKind) -> Self {
        Self {
            name: name.into(),
            kind,
        }
    }
}

/// Rules that [`check`] enforces on each text message.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MessageRules {
    /// Whether messages must be JSON objects. When false, [`check`] accepts any text and returns
    /// no `id` or `to`. Default: true.
    pub json: bool,
    /// Maximum nesting of objects and arrays, counting the top-level object as 1. Bounds the
    /// work and memory that one message can make any downstream recursive parser spend.
    /// 0 rejects every message. Default: [`DEFAULT_MAX_JSON_DEPTH`].
    pub max_json_depth: usize,
    /// Top-level fields each message must have, checked in this order.
    /// Default: `conversation_id` and `content`, both strings.
    pub required: Vec<RequiredField>,
}

impl Default for MessageRules {
    fn default() -> Self {
        Self {
            json: true,
            max_json_depth: DEFAULT_MAX_JSON_DEPTH,
            required: vec![
                RequiredField::new("conversation_id", FieldKind::String),
                RequiredField::new("content", FieldKind::String),
            ],
        }
    }
}

/// Values the backends need from a valid message, borrowed from the message text.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Checked<'a> {
    /// Raw JSON text of the client's `id` value: a JSON string with its quotes, or a number.
    pub id: Option<&'a str>,
    /// Decoded `to` string, borrowed unless it contained escapes.
    pub to: Option<Cow<'a, str>>,
    /// The checked text, kept for [`Checked::with_from`]. `None` when JSON checks are off.
    text: Option<&'a [u8]>,
    /// Byte range of the client's `from` member with one adjacent separator, to cut when relaying.
    from_member: Option<Range<usize>>,
}

impl Checked<'_> {
    /// Builds the relayed copy of the checked message with `"from":<from>` added, without parsing
    /// it again. Returns `None` when the message was checked with `json: false`.
    pub fn with_from(&self, from: &str) -> Option<Vec<u8>> {
        let text = self.text?;
        Some(splice_from(text, self.from_member.clone(), from))
    }

    /// Returns what building the relayed copy needs, for a caller that keeps the text but not
    /// the `Checked`. `None` when the message was checked with `json: false`.
    pub fn from_splice(&self) -> Option<FromSplice> {
        self.text?;
        Some(FromSplice {
            cut: self.from_member.clone(),
        })
    }
}

/// Position of the client's `from` member in a checked text, from [`Checked::from_splice`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FromSplice {
    cut: Option<Range<usize>>,
}

impl FromSplice {
    /// Builds the relayed copy of `text`, the checked text this came from, as
    /// [`Checked::with_from`] does.
    pub fn apply(&self, text: &[u8], from: &str) -> Vec<u8> {
        splice_from(text, self.cut.clone(), from)
    }
}

/// Top-level field named in an [`Invalid`] error.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Field {
    /// The relay's `from` field.
    From,
    /// The client's correlation `id`.
    Id,
    /// `MessageRules::required[index]`.
    Required(usize),
    /// The relay recipient `to`.
    To,
}

impl Field {
    /// Field name for error details. A `Required` index outside `rules.required` yields `"?"`.
    pub fn name(self, rules: &MessageRules) -> &str {
        match self {
            Self::From => "from",
            Self::Id => "id",
            Self::Required(index) => rules.required.get(index).map_or("?", |field| &field.name),
            Self::To => "to",
        }
    }
}

impl fmt::Display for Field {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::From => f.write_str("\"from\""),
            Self::Id => f.write_str("\"id\""),
            Self::Required(index) => write!(f, "required field #{index}"),
            Self::To => f.write_str("\"to\""),
        }
    }
}

/// Reason a message failed [`check`]. Offsets are bytes from the start of the message text.
///
/// `Display` names required fields by index because it has no access to the rules; use
/// [`Invalid::detail`] or [`write_invalid`] for text that names them.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Invalid {
    /// The same key appears twice at the top level. `field` names it when it is `from`, `id`,
    /// `to` or a required field, and is `None` for other keys, which are client text and not
    /// echoed back.
    #[error("duplicate key at byte {offset}")]
    DuplicateKey { offset: usize, field: Option<Field> },
    /// The text is not exactly one JSON object.
    #[error("{what} at byte {offset}")]
    InvalidJson { offset: usize, what: &'static str },
    /// A required field is absent.
    #[error("missing {field}")]
    MissingField { field: Field },
    /// Objects and arrays nest deeper than `max_depth`.
    #[error("nesting deeper than {max_depth} at byte {offset}")]
    TooDeep { offset: usize, max_depth: usize },
    /// A field has a JSON type other than the one expected.
    #[error("wrong type for {field}: expected {expected}, found {actual}")]
    WrongType {
        field: Field,
        expected: &'static str,
        actual: FieldKind,
    },
}

impl Invalid {
    /// Wire error code, one of [`code::INVALID_JSON`], [`code::MISSING_FIELD`] or
    /// [`code::WRONG_TYPE`].
    pub fn code(&self) -> &'static str {
        match self {
            Self::DuplicateKey { .. } | Self::InvalidJson { .. } | Self::TooDeep { .. } => {
                code::INVALID_JSON
            }
            Self::MissingField { .. } => code::MISSING_FIELD,
            Self::WrongType { .. } => code::WRONG_TYPE,
        }
    }

    /// Detail text for the error frame, naming fields as configured in `rules`. It contains no
    /// message text other than those configured names and the fixed names `from`, `id`, `to`.
    pub fn detail<'r>(&'r self, rules: &'r MessageRules) -> Detail<'r> {
        Detail {
            invalid: self,
            rules,
        }
    }
}

/// Display adapter returned by [`Invalid::detail`].
#[derive(Clone, Copy, Debug)]
pub struct Detail<'r> {
    invalid: &'r Invalid,
    rules: &'r MessageRules,
}

impl fmt::Display for Detail<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let rules = self.rules;
        match *self.invalid {
            Invalid::DuplicateKey {
                offset,
                field: Some(field),
            } => {
                write!(
                    f,
                    "duplicate key \"{}\" at byte {offset}",
                    field.name(rules)
                )
            }
            Invalid::MissingField { field } => {
                write!(f, "missing required field \"{}\"", field.name(rules))
            }
            Invalid::WrongType {
                field,
                expected,
                actual,
            } => write!(
                f,
                "wrong type for field \"{}\": expected {expected}, found {actual}",
                field.name(rules)
            ),
            Invalid::DuplicateKey { field: None, .. }
            | Invalid::InvalidJson { .. }
            | Invalid::TooDeep { .. } => self.invalid.fmt(f),
        }
    }
}

/// Checks one complete text message against `rules`.
///
/// `text` must already be valid UTF-8. Only the `id` and `to` values are checked for UTF-8
/// again, because they are returned as `str`; [`check_str`] skips that. With `rules.json` false
/// this returns `Ok` with no `id` or `to` and checks nothing.
///
/// With `rules.json` true, only the first failure is returned. Syntax errors, nesting and
/// duplicate keys come first, in text order. Next is the first required field (in
/// `rules.required` order) that is missing or has the wrong kind. Last come an `id` that is not
/// a string or number and a `to` that is not a string.
pub fn check<'a>(text: &'a [u8], rules: &MessageRules) -> Result<Checked<'a>, Invalid> {
    check_text(Text::Bytes(text), rules)
}

/// Same as [`check`] for text already held as `str` (for example from the frame layer's UTF-8
/// validation), which saves re-validating the `id` and `to` values.
pub fn check_str<'a>(text: &'a str, rules: &MessageRules) -> Result<Checked<'a>, Invalid> {
    check_text(Text::Str(text), rules)
}

fn check_text<'a>(text: Text<'a>, rules: &MessageRules) -> Result<Checked<'a>, Invalid> {
    if !rules.json {
        return Ok(Checked::default());
    }

    let bytes = text.bytes();
    let mut members = Members::new(rules, bytes);
    scan_object(bytes, rules.max_json_depth, |member| members.add(member))?;

    if members.required_found < rules.required.len() || members.any_wrong {
        // The counters only show that some required field failed, so this pass finds which one.
        if let Some(invalid) = first_field_error(bytes, rules) {
            return Err(invalid);
        }
    }
    members.to_checked(text)
}

/// Message text as [`check`] or [`check_str`] received it.
#[derive(Clone, Copy)]
enum Text<'a> {
    Bytes(&'a [u8]),
    Str(&'a str),
}

impl<'a> Text<'a> {
    fn bytes(self) -> &'a [u8] {
        match self {
            Self::Bytes(bytes) => bytes,
            Self::Str(text) => text.as_bytes(),
        }
    }

    /// Returns the raw value text of `member` as `str`.
    fn value_str(self, member: &Member<'a>) -> Result<&'a str, Invalid> {
        let start = member.value_end - member.value.len();
        let converted = match self {
            Self::Bytes(_) => {
                std::str::from_utf8(member.value).map_err(|error| error.valid_up_to())
            }
            // Member values start and end at ASCII bytes, which are character boundaries.
            Self::Str(text) => text.get(start..member.value_end).ok_or(0),
        };
        converted.map_err(|valid_up_to| Invalid::InvalidJson {
            offset: start + valid_up_to,
            what: "invalid UTF-8",
        })
    }
}

/// Returns the client's `id` (raw JSON string or number text) so an error frame can echo it.
///
/// Scans the whole text once, without a nesting limit and without looking at other fields, so it
/// works on messages that failed [`check`] for depth, duplicate keys other than `id`, or fields.
/// Returns `None` when the text is not one syntactically valid JSON object, when `id` is absent,
/// repeated, or neither a string nor a number.
pub fn client_id(text: &[u8]) -> Option<&str> {
    let mut id = None;
    let mut repeated = false;
    scan_object(text, usize::MAX, |member| {
        if member.decoded_key().as_ref() == b"id" {
            repeated |= id.is_some();
            id = Some(*member);
        }
        Ok(())
    })
    .ok()?;

    let id = id.filter(|_| !repeated)?;
    if !matches!(id.kind, FieldKind::String | FieldKind::Number) {
        return None;
    }
    std::str::from_utf8(id.value).ok()
}

/// Builds the relayed copy of a message: the same top-level object with any client-supplied
/// `from` member removed and `"from":<from as a JSON string>` added as the first member.
///
/// Scans `text` once to find the client's `from`; use [`Checked::with_from`] after [`check`] to
/// skip that scan. Returns `None` when `text` is not one valid JSON object, so a message that was
/// never checked cannot carry a forged `from`.
pub fn with_from(text: &[u8], from: &str) -> Option<Vec<u8>> {
    let mut finder = FromFinder::default();
    scan_object(text, usize::MAX, |member| {
        finder.add(member, member.decoded_key().as_ref() == b"from");
        Ok(())
    })
    .ok()?;
    Some(splice_from(text, finder.finish(), from))
}

/// Copies `text` with the bytes in `cut` removed and `"from":<from>` inserted after the `{`.
fn splice_from(text: &[u8], cut: Option<Range<usize>>, from: &str) -> Vec<u8> {
    let open = text
        .iter()
        .position(|&byte| byte == b'{')
        .unwrap_or_default();
    let (head, body) = text.split_at((open + 1).min(text.len()));
    let (kept_before, kept_after) = match cut {
        Some(cut) => (
            text.get(open + 1..cut.start).unwrap_or_default(),
            text.get(cut.end..).unwrap_or_default(),
        ),
        None => (body, &[][..]),
    };

    let mut out = Vec::with_capacity(text.len() + from.len() + 16);
    out.extend_from_slice(head);
    out.extend_from_slice(b"\"from\":");
    wire::push_json_string(&mut out, from);

    // The object keeps other members unless the first non-space byte left is its `}`.
    let first_kept = kept_before
        .iter()
        .chain(kept_after)
        .find(|byte| !byte.is_ascii_whitespace());
    if first_kept != Some(&b'}') {
        out.push(b',');
    }
    out.extend_from_slice(kept_before);
    out.extend_from_slice(kept_after);
    out
}

/// Tracks the client's `from` member while scanning and computes the bytes to cut.
#[derive(Default)]
struct FromFinder {
    /// End of the value of the member scanned last.
    last_value_end: Option<usize>,
    /// Key start and value end of `from`, plus the value end of the member before it.
    found: Option<(usize, usize, Option<usize>)>,
    /// Key start of the member right after `from`.
    next_key_start: Option<usize>,
}

impl FromFinder {
    /// Records `member`. `is_from` is true when its decoded key is `from`.
    fn add(&mut self, member: &Member<'_>, is_from: bool) {
        if self.found.is_some() && self.next_key_start.is_none() {
            self.next_key_start = Some(member.key_start);
        }
        if self.found.is_none() && is_from {
            self.found = Some((member.key_start, member.value_end, self.last_value_end));
        }
        self.last_value_end = Some(member.value_end);
    }

    /// Returns the range to cut: `from` with the `,` after it, or with the `,` before it when it
    /// is the last member, or alone when it is the only one.
    fn finish(&self) -> Option<Range<usize>> {
        let (key_start, value_end, previous_end) = self.found?;
        Some(match (self.next_key_start, previous_end) {
            (Some(next_key_start), _) => key_start..next_key_start,
            (None, Some(previous_end)) => previous_end..value_end,
            (None, None) => key_start..value_end,
        })
    }
}

/// Top-level members seen by [`check`]: duplicate detection and field bookkeeping.
struct Members<'a, 'r> {
    rules: &'r MessageRules,
    keys: KeySet<'a>,
    /// Number of (member, required field) name matches. Keys are unique, so this equals
    /// `rules.required.len()` exactly when every required field is present.
    required_found: usize,
    /// Whether any required field has the wrong kind; the error path finds which.
    any_wrong: bool,
    id: Option<Member<'a>>,
    to: Option<Member<'a>>,
    from: FromFinder,
}

impl<'a, 'r> Members<'a, 'r> {
    fn new(rules: &'r MessageRules, text: &'a [u8]) -> Self {
        Self {
            rules,
            keys: KeySet::new(text),
            required_found: 0,
            any_wrong: false,
            id: None,
            to: None,
            from: FromFinder::default(),
        }
    }

    fn add(&mut self, member: &Member<'a>) -> Result<(), Invalid> {
        let key = member.decoded_key();
        let known = match key.as_ref() {
            b"from" => Some(Field::From),
            b"id" => Some(Field::Id),
            b"to" => Some(Field::To),
            _ => None,
        };
        let mut required = None;
        for (index, field) in self.rules.required.iter().enumerate() {
            if key.as_ref() != field.name.as_bytes() {
                continue;
            }
            required.get_or_insert(index);
            self.required_found += 1;
            if !field.kind.accepts(member.kind) {
                self.any_wrong = true;
            }
        }

        // RFC 8259 §4: names within an object should be unique; see the module docs.
        if !self.keys.insert(key, member.key_start + 1) {
            let field = known.or(required.map(Field::Required));
            return Err(Invalid::DuplicateKey {
                offset: member.key_start,
                field,
            });
        }

        match known {
            Some(Field::Id) => self.id = Some(*member),
            Some(Field::To) => self.to = Some(*member),
            _ => {}
        }
        self.from.add(member, known == Some(Field::From));
        Ok(())
    }

    fn to_checked(&self, text: Text<'a>) -> Result<Checked<'a>, Invalid> {
        let id = match self.id {
            Some(id) if matches!(id.kind, FieldKind::String | FieldKind::Number) => {
                Some(text.value_str(&id)?)
            }
            Some(id) => {
                return Err(Invalid::WrongType {
                    field: Field::Id,
                    expected: "string or number",
                    actual: id.kind,
                });
            }
            None => None,
        };

        let to = match self.to {
            Some(to) if to.kind == FieldKind::String => Some(decode_string_value(text, &to)?),
            Some(to) => {
                return Err(Invalid::WrongType {
                    field: Field::To,
                    expected: FieldKind::String.name(),
                    actual: to.kind,
                });
            }
            None => None,
        };

        let text = Some(text.bytes());
        Ok(Checked {
            id,
            to,
            text,
            from_member: self.from.finish(),
        })
    }
}

/// Finds the first required field (in rules order) that is missing or has the wrong kind.
/// Runs only after [`check`] counted such a field, on text that already scanned cleanly.
fn first_field_error(text: &[u8], rules: &MessageRules) -> Option<Invalid> {
    let mut kinds: Vec<(Vec<u8>, FieldKind)> = Vec::new();
    let scanned = scan_object(text, rules.max_json_depth, |member| {
        kinds.push((member.decoded_key().into_owned(), member.kind));
        Ok(())
    });
    if let Err(invalid) = scanned {
        return Some(invalid);
    }

    for (index, field) in rules.required.iter().enumerate() {
        let found = kinds
            .iter()
            .find(|(key, _)| key == field.name.as_bytes())
            .map(|&(_, kind)| kind);
        match found {
            None => {
                return Some(Invalid::MissingField {
                    field: Field::Required(index),
                });
            }
            Some(actual) if !field.kind.accepts(actual) => {
                return Some(Invalid::WrongType {
                    field: Field::Required(index),
                    expected: field.kind.name(),
                    actual,
                });
            }
            Some(_) => {}
        }
    }
    None
}

/// Decodes a string member value, borrowing when it has no escapes.
fn decode_string_value<'a>(text: Text<'a>, member: &Member<'a>) -> Result<Cow<'a, str>, Invalid> {
    let raw = text.value_str(member)?;
    let inner = raw
        .strip_prefix('"')
        .and_then(|raw| raw.strip_suffix('"'))
        .unwrap_or(raw);
    if !member.value_escaped {
        return Ok(Cow::Borrowed(inner));
    }

    let mut decoded = Vec::with_capacity(inner.len());
    scan::decode_string_into(inner.as_bytes(), &mut decoded);
    // Escapes decode to whole UTF-8 characters and `inner` is UTF-8, so this cannot fail.
    String::from_utf8(decoded)
        .map(Cow::Owned)
        .map_err(|_| Invalid::InvalidJson {
            offset: member.value_end,
            what: "invalid UTF-8",
        })
}

/// Set of decoded top-level keys. Up to [`INLINE_KEYS`] keys without escapes are kept inline as
/// one `u64` each: the key's offset in the text in the high 32 bits and its fingerprint (length,
/// first and last byte) in the low 32 bits. Bytes are compared only when fingerprints match. A key
/// with escapes, one key more, or a key too long or too far in for the packing moves the set to a
/// hash set, so a message with many keys stays linear.
struct KeySet<'a> {
    text: &'a [u8],
    inline: [u64; INLINE_KEYS],
    /// Number of keys in `inline`. INVARIANT: `len <= INLINE_KEYS`.
    len: usize,
    spill: Option<HashSet<Cow<'a, [u8]>>>,
}

impl<'a> KeySet<'a> {
    fn new(text: &'a [u8]) -> Self {
        Self {
            text,
            inline: [0; INLINE_KEYS],
            len: 0,
            spill: None,
        }
    }

    /// Adds `key`, whose raw text starts at byte `offset`; returns false if it was already
    /// present.
    fn insert(&mut self, key: Cow<'a, [u8]>, offset: usize) -> bool {
        if let Some(spill) = &mut self.spill {
            return spill.insert(key);
        }
        let packed = match (&key, u32::try_from(offset)) {
            (Cow::Borrowed(raw), Ok(offset)) if self.len < INLINE_KEYS => {
                fingerprint(raw).map(|fingerprint| u64::from(offset) << 32 | u64::from(fingerprint))
            }
            _ => None,
        };
        let (Some(packed), Cow::Borrowed(raw)) = (packed, &key) else {
            return self.spill().insert(key);
        };

        let inline = self.inline.get(..self.len).unwrap_or_default();
        let seen = inline.iter().any(|&entry| {
            entry & FINGERPRINT == packed & FINGERPRINT && self.stored(entry) == *raw
        });
        if seen {
            return false;
        }
        if let Some(slot) = self.inline.get_mut(self.len) {
            *slot = packed;
            self.len += 1;
        }
        true
    }

    /// Returns the key bytes of an inline entry.
    fn stored(&self, entry: u64) -> &'a [u8] {
        stored_key(self.text, entry)
    }

    /// Moves the inline keys into a hash set and returns it.
    fn spill(&mut self) -> &mut HashSet<Cow<'a, [u8]>> {
        let inline = self.inline.get(..self.len).unwrap_or_default();
        let text = self.text;
        self.spill.get_or_insert_with(|| {
            inline
                .iter()
                .map(|&entry| Cow::Borrowed(stored_key(text, entry)))
                .collect()
        })
    }
}

/// Low half of a [`KeySet`] entry: the key's fingerprint.
const FINGERPRINT: u64 = 0xFFFF_FFFF;

/// Returns the key bytes that a [`KeySet`] entry points at in `text`.
fn stored_key(text: &[u8], entry: u64) -> &[u8] {
    let offset = usize::try_from(entry >> 32).unwrap_or(usize::MAX);
    let len = usize::try_from(entry >> 16 & 0xFFFF).unwrap_or(0);
    text.get(offset..offset.saturating_add(len))
        .unwrap_or_default()
}

/// Packs a key's length (when below 65,536) with its first and last bytes. Equal keys have equal
/// fingerprints; the bytes are compared only when fingerprints match.
fn fingerprint(key: &[u8]) -> Option<u32> {
    let length = u16::try_from(key.len()).ok()?;
    let first = key.first().copied().unwrap_or(0);
    let last = key.last().copied().unwrap_or(0);
    Some(u32::from(length) << 16 | u32::from(first) << 8 | u32::from(last))
}

#[cfg(test)]
mod tests;
