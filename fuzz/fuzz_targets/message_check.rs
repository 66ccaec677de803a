//! Differential fuzz target: `message::check` against serde_json.
//!
//! The oracle uses serde_json to decide whether the text is exactly one JSON object, then applies the
//! choices `message` documents where RFC 8259 leaves one open:
//! - a byte-order mark is rejected (serde_json rejects it too);
//! - duplicate top-level keys, compared after decoding escapes, are rejected;
//! - a `\u` escape of a lone UTF-16 surrogate is rejected anywhere in the text;
//! - nesting deeper than `max_json_depth` is rejected, the top-level object counting as 1;
//! - numbers are checked against the grammar only, so `1e999999` passes. serde_json's value
//!   parser would reject it as out of range, so the oracle validates through `RawValue`,
//!   which checks number syntax without converting.
//!
//! Then the field rules: each required field present with its kind, `id` a string or number,
//! `to` a string. Invariants: the verdict and the error code agree with the oracle; a valid
//! message returns serde_json's `id` text and `to` string; `client_id` finds the same `id`;
//! the relayed copy from `with_from` is again a valid message with `from` first and the other
//! members unchanged. Text may also be wrapped in up to 3,200 levels of `[` to check that
//! deep nesting costs no recursion.

#![no_main]

use std::fmt;

use framegate::message::{
    self, Checked, FieldKind, MessageRules, RequiredField, check, client_id, code,
};
use framegate_fuzz::Input;
use libfuzzer_sys::fuzz_target;
use serde::de::{Deserialize, Deserializer, MapAccess, Visitor};
use serde_json::value::RawValue;

/// Sender ids for `with_from`, including characters that must be escaped in JSON.
const FROM: [&str; 2] = ["alice", "q\"b\\s\u{1}\u{e9}\u{20ac}\u{1F600}"];

fuzz_target!(|input: &[u8]| {
    let input = Input::split(input);
    let [rules_choice, nesting, _, _] = input.control;
    let rules = rules(rules_choice);

    let mut text = String::from_utf8_lossy(input.data).into_owned();
    if nesting >= 0xF0 {
        let levels = (usize::from(nesting & 0x0F) + 1) * 200;
        text = format!(
            "{{\"deep\":{}{text}{}}}",
            "[".repeat(levels),
            "]".repeat(levels)
        );
    }
    let text = text.as_bytes();

    let verdict = check(text, &rules);
    let expected = oracle(text, &rules);
    match (&verdict, &expected) {
        (Ok(checked), Ok(fields)) => {
            assert_eq!(checked.id, fields.id, "id differs from serde_json");
            assert_eq!(checked.to.as_deref(), fields.to.as_deref(), "to differs");
            assert_eq!(client_id(text), checked.id, "client_id differs from check");
            for from in FROM {
                check_relayed_copy(text, checked, from, &rules);
            }
        }
        (Err(invalid), Err(expected_code)) => {
            assert_eq!(
                invalid.code(),
                *expected_code,
                "error code differs: {invalid:?}"
            );
        }
        (Ok(_), Err(expected_code)) => panic!("accepted, but the oracle expects {expected_code}"),
        (Err(invalid), Ok(_)) => panic!("rejected with {invalid:?}, but the oracle accepts"),
    }

    if let Some(expected_id) = oracle_client_id(text) {
        assert_eq!(
            client_id(text),
            expected_id,
            "client_id differs from serde_json"
        );
    }
});

/// Picks the depth limit from the low bits and the required fields from bit 3.
fn rules(choice: u8) -> MessageRules {
    let depths = [0, 1, 2, 3, 4, 8, 32, 100];
    let required = if choice & 0x08 == 0 {
        Vec::new()
    } else {
        vec![
            RequiredField::new("conversation_id", FieldKind::String),
            RequiredField::new("content", FieldKind::Any),
            RequiredField::new("n", FieldKind::Number),
        ]
    };
    MessageRules {
        json: true,
        max_json_depth: depths
            .get(usize::from(choice & 0x07))
            .copied()
            .unwrap_or(32),
        required,
    }
}

/// Fields the oracle expects `check` to return for a valid message.
struct Fields<'a> {
    id: Option<&'a str>,
    to: Option<String>,
}

/// Top-level members in text order, duplicates kept, values left as raw text.
struct Members<'a>(Vec<(String, &'a RawValue)>);

impl<'de> Deserialize<'de> for Members<'de> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct MembersVisitor;

        impl<'de> Visitor<'de> for MembersVisitor {
            type Value = Members<'de>;

            fn expecting(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
                formatter.write_str("a JSON object")
            }

            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
                let mut members = Vec::new();
                while let Some(member) = map.next_entry::<String, &'de RawValue>()? {
                    members.push(member);
                }
                Ok(Members(members))
            }
        }

        deserializer.deserialize_map(MembersVisitor)
    }
}

impl<'a> Members<'a> {
    fn find(&self, key: &str) -> Option<&'a RawValue> {
        self.0
            .iter()
            .find(|(name, _)| name == key)
            .map(|&(_, value)| value)
    }

    fn has_duplicates(&self) -> bool {
        let mut names: Vec<&str> = self.0.iter().map(|(name, _)| name.as_str()).collect();
        names.sort_unstable();
        names.windows(2).any(|pair| pair.first() == pair.last())
    }
}

/// Parses `text` as one JSON object per serde_json, with every string decoded so that a lone
/// surrogate fails. Returns the members and the nesting depth.
fn parse_object(text: &[u8]) -> Option<(Members<'_>, usize)> {
    let text = std::str::from_utf8(text).ok()?;
    // RFC 8259 §8.1: no byte-order mark; checked here so the oracle states it.
    if text.starts_with('\u{feff}') {
        return None;
    }
    let raw: &RawValue = serde_json::from_str(text).ok()?;
    if !raw.get().starts_with('{') {
        return None;
    }
    let depth = depth_and_strings(raw.get())?;
    let members: Members<'_> = serde_json::from_str(text).ok()?;
    Some((members, depth))
}

/// Returns the nesting depth of JSON text that serde_json already accepted, or `None` when a
/// string in it decodes to no valid Unicode (a lone surrogate). Each string literal is decoded
/// by serde_json; the walk itself needs only to know where strings start and end.
fn depth_and_strings(json: &str) -> Option<usize> {
    let bytes = json.as_bytes();
    let mut depth = 0usize;
    let mut deepest = 0;
    let mut string_start = None;
    let mut escaped = false;
    for (at, &byte) in bytes.iter().enumerate() {
        if let Some(start) = string_start {
            match (escaped, byte) {
                (true, _) => escaped = false,
                (false, b'\\') => escaped = true,
                (false, b'"') => {
                    let literal = json.get(start..=at)?;
                    serde_json::from_str::<String>(literal).ok()?;
                    string_start = None;
                }
                _ => {}
            }
            continue;
        }
        match byte {
            b'"' => string_start = Some(at),
            b'{' | b'[' => {
                depth += 1;
                deepest = deepest.max(depth);
            }
            b'}' | b']' => depth = depth.saturating_sub(1),
            _ => {}
        }
    }
    Some(deepest)
}

/// JSON kind of a raw value, from its first byte.
fn kind(value: &RawValue) -> FieldKind {
    match value.get().as_bytes().first() {
        Some(b'{') => FieldKind::Object,
        Some(b'[') => FieldKind::Array,
        Some(b'"') => FieldKind::String,
        Some(b't' | b'f') => FieldKind::Bool,
        Some(b'n') => FieldKind::Null,
        _ => FieldKind::Number,
    }
}

/// The verdict `check` must reach, as the fields of a valid message or an error code, in the
/// order `check` documents.
fn oracle<'a>(text: &'a [u8], rules: &MessageRules) -> Result<Fields<'a>, &'static str> {
    let Some((members, depth)) = parse_object(text) else {
        return Err(code::INVALID_JSON);
    };
    if depth > rules.max_json_depth || members.has_duplicates() {
        return Err(code::INVALID_JSON);
    }

    for field in &rules.required {
        let Some(value) = members.find(&field.name) else {
            return Err(code::MISSING_FIELD);
        };
        if field.kind != FieldKind::Any && field.kind != kind(value) {
            return Err(code::WRONG_TYPE);
        }
    }

    let id = members.find("id");
    if let Some(id) = id
        && !matches!(kind(id), FieldKind::String | FieldKind::Number)
    {
        return Err(code::WRONG_TYPE);
    }
    let to = match members.find("to") {
        Some(to) if kind(to) == FieldKind::String => serde_json::from_str::<String>(to.get()).ok(),
        Some(_) => return Err(code::WRONG_TYPE),
        None => None,
    };
    Ok(Fields {
        id: id.map(RawValue::get),
        to,
    })
}

/// Computes the expected `client_id` result: the raw text of the one `id` member, when it is a
/// string or number, of a syntactically valid object at any depth. Returns `None` when
/// serde_json cannot judge because the text nests deeper than its recursion limit.
fn oracle_client_id(text: &[u8]) -> Option<Option<&str>> {
    let Ok(utf8) = std::str::from_utf8(text) else {
        return Some(None);
    };
    if let Err(error) = serde_json::from_str::<&RawValue>(utf8)
        && error.to_string().starts_with("recursion limit exceeded")
    {
        return None;
    }
    let Some((members, _)) = parse_object(text) else {
        return Some(None);
    };
    let mut ids = members.0.iter().filter(|(name, _)| name == "id");
    let (Some((_, id)), None) = (ids.next(), ids.next()) else {
        return Some(None);
    };
    let usable = matches!(kind(id), FieldKind::String | FieldKind::Number);
    Some(usable.then(|| id.get()))
}

/// Checks the relayed copy: `from` first, the client's `from` gone, every other member kept in
/// order with the same raw value, and the copy itself a valid message.
fn check_relayed_copy(text: &[u8], checked: &Checked<'_>, from: &str, rules: &MessageRules) {
    let Some(copy) = checked.with_from(from) else {
        panic!("with_from returned None for a checked message");
    };
    assert_eq!(
        message::with_from(text, from).as_deref(),
        Some(copy.as_slice()),
        "message::with_from differs from Checked::with_from"
    );
    let Some((original, _)) = parse_object(text) else {
        panic!("oracle rejects a checked message");
    };
    let Some((relayed, _)) = parse_object(&copy) else {
        panic!("relayed copy is not one JSON object");
    };

    // `from` comes first and decodes to the sender id; its escaping is the module's choice.
    let Some(((first_name, first_value), rest)) = relayed.0.split_first() else {
        panic!("relayed copy has no members");
    };
    assert_eq!(first_name, "from", "relayed copy does not start with from");
    let decoded: Option<String> = serde_json::from_str(first_value.get()).ok();
    assert_eq!(
        decoded.as_deref(),
        Some(from),
        "from does not decode to the sender"
    );

    let kept_members: Vec<(&str, &str)> = rest
        .iter()
        .map(|(name, value)| (name.as_str(), value.get()))
        .collect();
    let expected: Vec<(&str, &str)> = original
        .0
        .iter()
        .filter(|(name, _)| name != "from")
        .map(|(name, value)| (name.as_str(), value.get()))
        .collect();
    assert_eq!(kept_members, expected, "relayed members differ");
    assert!(check(&copy, rules).is_ok(), "relayed copy fails the check");
}
