use std::borrow::Cow;

use proptest::prelude::*;
use serde::de::{self, Deserializer, IgnoredAny, MapAccess, Visitor};

use super::*;

const CHAT: &[u8] =
    br#"{"type":"message","conversation_id":"c-7f3a","id":"m-42","to":"user-9","content":"hi"}"#;

fn no_fields() -> MessageRules {
    MessageRules {
        required: Vec::new(),
        ..MessageRules::default()
    }
}

fn depth_rules(max_json_depth: usize) -> MessageRules {
    MessageRules {
        max_json_depth,
        ..no_fields()
    }
}

fn syntax(offset: usize, what: &'static str) -> Invalid {
    Invalid::InvalidJson { offset, what }
}

const _: () = assert!(std::mem::size_of::<Invalid>() <= 40);

/// Expected outcome of `check` with no required fields.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Verdict {
    Valid,
    Code(&'static str),
}

const INVALID: Verdict = Verdict::Code(code::INVALID_JSON);
const WRONG: Verdict = Verdict::Code(code::WRONG_TYPE);

/// (input, verdict) with no required fields and the default depth limit.
const SYNTAX_TABLE: &[(&str, Verdict)] = &[
    // Objects and whitespace.
    ("{}", Verdict::Valid),
    (" \t\r\n{ \t\r\n} \t\r\n", Verdict::Valid),
    (r#"{"a":1}"#, Verdict::Valid),
    (r#"{ "a" : 1 , "b" : 2 }"#, Verdict::Valid),
    (r#"{"":0}"#, Verdict::Valid),
    (r#"{"a":{},"b":[],"c":[{}],"d":{"e":[]}}"#, Verdict::Valid),
    (
        r#"{"a":[1,"x",true,false,null,{"b":[]},[[]]]}"#,
        Verdict::Valid,
    ),
    (r#"{"a":{"b":{"c":{"d":null}}}}"#, Verdict::Valid),
    ("{\"a\":1}\n", Verdict::Valid),
    // Numbers (RFC 8259 §6), never converted.
    (r#"{"n":0}"#, Verdict::Valid),
    (r#"{"n":-0}"#, Verdict::Valid),
    (r#"{"n":-0.0e-0}"#, Verdict::Valid),
    (r#"{"n":123.456E+789}"#, Verdict::Valid),
    (r#"{"n":1e999999}"#, Verdict::Valid),
    (r#"{"n":-1e-999999}"#, Verdict::Valid),
    (r#"{"n":[0,1,-1,0.5,1E5]}"#, Verdict::Valid),
    (r#"{"n":01}"#, INVALID),
    (r#"{"n":-01}"#, INVALID),
    (r#"{"n":1.}"#, INVALID),
    (r#"{"n":.5}"#, INVALID),
    (r#"{"n":1e}"#, INVALID),
    (r#"{"n":1e+}"#, INVALID),
    (r#"{"n":+1}"#, INVALID),
    (r#"{"n":-}"#, INVALID),
    (r#"{"n":0x10}"#, INVALID),
    (r#"{"n":NaN}"#, INVALID),
    (r#"{"n":Infinity}"#, INVALID),
    (r#"{"n":1 2}"#, INVALID),
    (r#"{"n":[1,]}"#, INVALID),
    // Literals (§3).
    (r#"{"l":[true,false,null]}"#, Verdict::Valid),
    (r#"{"l":True}"#, INVALID),
    (r#"{"l":nul}"#, INVALID),
    (r#"{"l":nulll}"#, INVALID),
    (r#"{"l":tru"#, INVALID),
    (r#"{"l":undefined}"#, INVALID),
    // Strings (§7).
    (r#"{"s":"plain"}"#, Verdict::Valid),
    (r#"{"s":"\"\\\/\b\f\n\r\t"}"#, Verdict::Valid),
    (r#"{"s":"\u0000\u001F\u00e9\uFFFF"}"#, Verdict::Valid),
    (r#"{"s":"\ud83d\ude00"}"#, Verdict::Valid),
    (r#"{"s":"\uD83D\uDE00"}"#, Verdict::Valid),
    (r#"{"s":"é😀 ü"}"#, Verdict::Valid),
    (r#"{"s":"a\qb"}"#, INVALID),
    (r#"{"s":"\x41"}"#, INVALID),
    (r#"{"s":"\u12"}"#, INVALID),
    (r#"{"s":"\uZZZZ"}"#, INVALID),
    (r#"{"s":["\uZZZZ"]}"#, INVALID),
    (r#"{"s":{"k":"\u00G0"}}"#, INVALID),
    // sonic-rs 0.5.12 skips the four bytes after `\u` unchecked and accepts this one.
    (r#"{"s":"\u" , "}"#, INVALID),
    ("{\"s\":\"tab\there\"}", INVALID),
    ("{\"s\":\"line\nbreak\"}", INVALID),
    ("{\"s\":\"nul\u{0}\"}", INVALID),
    (r#"{"s":"unterminated}"#, INVALID),
    (r#"{"s":'single'}"#, INVALID),
    // Lone surrogates: rejected on purpose (see module docs).
    (r#"{"s":"\ud800"}"#, INVALID),
    (r#"{"s":"\udc00"}"#, INVALID),
    (r#"{"s":"\ude00\ud83d"}"#, INVALID),
    (r#"{"s":"\ud800\u0041"}"#, INVALID),
    (r#"{"s":"\ud800\ud800"}"#, INVALID),
    (r#"{"s":"\ud800x"}"#, INVALID),
    (r#"{"s":"\ud800\n"}"#, INVALID),
    (r#"{"s":["\ud800"]}"#, INVALID),
    (r#"{"\udbff":1}"#, INVALID),
    // Keys and separators (§4).
    (r#"{"a" 1}"#, INVALID),
    (r#"{"a":}"#, INVALID),
    (r#"{"a":1,}"#, INVALID),
    (r#"{,"a":1}"#, INVALID),
    (r#"{"a":1 "b":2}"#, INVALID),
    (r#"{"a":1;"b":2}"#, INVALID),
    (r#"{a:1}"#, INVALID),
    (r#"{1:1}"#, INVALID),
    (r#"{"a":{"b" 1}}"#, INVALID),
    (r#"{"a":{"b":1,}}"#, INVALID),
    (r#"{"a":{1:2}}"#, INVALID),
    (r#"{"a":[}"#, INVALID),
    (r#"{"a":[1}"#, INVALID),
    (r#"{"a":{]}"#, INVALID),
    (r#"{"a":[1]]}"#, INVALID),
    // Duplicate top-level keys: rejected on purpose, compared after decoding escapes.
    (r#"{"a":1,"a":2}"#, INVALID),
    (r#"{"a":1,"\u0061":2}"#, INVALID),
    (r#"{"a":{"k":1,"k":2}}"#, Verdict::Valid),
    (r#"{"a":1,"A":2}"#, Verdict::Valid),
    // Not exactly one object.
    ("", INVALID),
    ("   ", INVALID),
    ("[]", INVALID),
    ("\"text\"", INVALID),
    ("42", INVALID),
    ("null", INVALID),
    ("hello", INVALID),
    ("{", INVALID),
    ("}", INVALID),
    (r#"{"a":1"#, INVALID),
    (r#"{"a":1}}"#, INVALID),
    (r#"{"a":1}{"b":2}"#, INVALID),
    (r#"{"a":1} x"#, INVALID),
    (r#"{"a":1} 1"#, INVALID),
    ("{}\u{0}", INVALID),
    ("\u{feff}{}", INVALID),
    ("{}\u{feff}", INVALID),
    ("\u{a0}{}", INVALID),
    ("\u{c}{}", INVALID),
    // Protocol fields.
    (r#"{"id":"c42"}"#, Verdict::Valid),
    (r#"{"id":42}"#, Verdict::Valid),
    (r#"{"id":-1.5e3}"#, Verdict::Valid),
    (r#"{"id":null}"#, WRONG),
    (r#"{"id":true}"#, WRONG),
    (r#"{"id":[1]}"#, WRONG),
    (r#"{"id":{}}"#, WRONG),
    (r#"{"to":"u1"}"#, Verdict::Valid),
    (r#"{"to":1}"#, WRONG),
    (r#"{"to":null}"#, WRONG),
    (r#"{"to":["u1"]}"#, WRONG),
    (r#"{"from":{"any":"thing"}}"#, Verdict::Valid),
];

#[test]
fn check_syntax_table_matches_verdicts() {
    let rules = no_fields();
    for &(input, expected) in SYNTAX_TABLE {
        let verdict = match check(input.as_bytes(), &rules) {
            Ok(_) => Verdict::Valid,
            Err(invalid) => Verdict::Code(invalid.code()),
        };
        assert_eq!(verdict, expected, "input {input:?}");
    }
}

#[test]
fn check_str_agrees_with_check_on_syntax_table() {
    let rules = no_fields();
    for &(input, _) in SYNTAX_TABLE {
        assert_eq!(
            check_str(input, &rules),
            check(input.as_bytes(), &rules),
            "input {input:?}"
        );
    }
    assert_eq!(
        check_str(std::str::from_utf8(CHAT).unwrap_or_default(), &rules),
        check(CHAT, &rules)
    );
}

#[test]
fn check_invalid_utf8_in_id_is_rejected() {
    let text = b"{\"id\":\"a\xffb\",\"to\":\"\xc3\"}";
    assert_eq!(check(text, &no_fields()), Err(syntax(8, "invalid UTF-8")));
    let text = b"{\"to\":\"ok\xc3\"}";
    assert_eq!(check(text, &no_fields()), Err(syntax(9, "invalid UTF-8")));
}

#[test]
fn serde_json_agrees_with_syntax_table() {
    let rules = no_fields();
    for &(input, _) in SYNTAX_TABLE {
        let ours = check(input.as_bytes(), &rules).map(|_| ());
        let ours_json_ok = match ours {
            Ok(()) => true,
            Err(invalid) => invalid.code() != code::INVALID_JSON,
        };
        assert_eq!(
            ours_json_ok,
            oracle(input, rules.max_json_depth),
            "input {input:?}"
        );
    }
}

#[test]
fn check_syntax_errors_report_offset_and_reason() {
    let rules = no_fields();
    let cases: &[(&str, Invalid)] = &[
        ("", syntax(0, "expected a JSON object")),
        ("  []", syntax(2, "expected a JSON object")),
        ("\u{feff}{}", syntax(0, "byte order mark is not allowed")),
        ("{", syntax(1, "unexpected end of input")),
        (r#"{"a":1 "b":2}"#, syntax(7, "expected ',' or '}'")),
        (r#"{"a" 1}"#, syntax(5, "expected ':'")),
        (r#"{"a":}"#, syntax(5, "expected a value")),
        (r#"{"a":1,}"#, syntax(7, "expected '\"' to start a key")),
        (r#"{"a":[1}"#, syntax(7, "expected ',' or ']'")),
        (r#"{"a":{"b":1]}"#, syntax(11, "expected ',' or '}'")),
        (r#"{"a":{1}}"#, syntax(6, "expected '\"' or '}'")),
        (r#"{"a":01}"#, syntax(6, "invalid number: leading zero")),
        (r#"{"a":-x}"#, syntax(6, "invalid number: expected a digit")),
        (
            r#"{"a":1.e5}"#,
            syntax(7, "invalid number: expected a digit"),
        ),
        (r#"{"a":nul}"#, syntax(5, "invalid literal")),
        (r#"{"a":"x\qy"}"#, syntax(7, "invalid escape in string")),
        (
            r#"{"a":"\u00G0"}"#,
            syntax(10, "invalid hex digit in \\u escape"),
        ),
        (
            r#"{"a":"x\ud800"}"#,
            syntax(7, "lone surrogate in \\u escape"),
        ),
        (
            r#"{"a":"\udc00"}"#,
            syntax(6, "lone surrogate in \\u escape"),
        ),
        (
            "{\"a\":\"x\ty\"}",
            syntax(7, "unescaped control character in string"),
        ),
        (r#"{"a":"open"#, syntax(10, "unexpected end of input")),
        (
            r#"{"a":1} x"#,
            syntax(8, "unexpected data after the object"),
        ),
        (
            r#"{"a":1,"a":2}"#,
            Invalid::DuplicateKey {
                offset: 7,
                field: None,
            },
        ),
    ];
    for (input, expected) in cases {
        assert_eq!(
            check(input.as_bytes(), &rules),
            Err(*expected),
            "input {input:?}"
        );
    }
}

#[test]
fn check_error_details_name_offsets_not_payload() {
    let rules = no_fields();
    let secret = r#"{"secret-key":"secret-value","secret-key":"secret-value"}"#;
    let invalid = check(secret.as_bytes(), &rules).expect_err("duplicate key");
    let detail = invalid.detail(&rules).to_string();
    assert_eq!(detail, "duplicate key at byte 29");
    assert!(!detail.contains("secret"));

    let broken = r#"{"secret":"value" "more":1}"#;
    let detail = check(broken.as_bytes(), &rules)
        .expect_err("missing comma")
        .detail(&rules)
        .to_string();
    assert_eq!(detail, "expected ',' or '}' at byte 18");
}

#[test]
fn check_valid_chat_message_returns_id_and_to() {
    let checked = check(CHAT, &MessageRules::default()).expect("valid chat message");
    assert_eq!(checked.id, Some("\"m-42\""));
    assert_eq!(checked.to, Some(Cow::Borrowed("user-9")));
}

#[test]
fn check_numeric_id_returns_number_text() {
    let text = br#"{"conversation_id":"c","content":"x","id":1.5e3}"#;
    let checked = check(text, &MessageRules::default()).expect("valid");
    assert_eq!(checked.id, Some("1.5e3"));
    assert_eq!(checked.to, None);
}

#[test]
fn check_escaped_id_returns_raw_text() {
    let text = br#"{"id":"a\"b\u00e9"}"#;
    let checked = check(text, &no_fields()).expect("valid");
    assert_eq!(checked.id, Some(r#""a\"b\u00e9""#));
}

#[test]
fn check_escaped_to_returns_decoded_string() {
    let text = br#"{"to":"us\u0065r-\"9\"\ud83d\ude00"}"#;
    let checked = check(text, &no_fields()).expect("valid");
    assert_eq!(
        checked.to,
        Some(Cow::Owned::<str>("user-\"9\"😀".to_owned()))
    );
}

#[test]
fn check_escaped_keys_match_field_names() {
    let text = br#"{"\u0069d":7,"t\u006f":"u","conversation_id":"c","c\u006Fntent":"x"}"#;
    let checked = check(text, &MessageRules::default()).expect("valid");
    assert_eq!(checked.id, Some("7"));
    assert_eq!(checked.to.as_deref(), Some("u"));
}

#[test]
fn check_missing_required_field_names_it() {
    let rules = MessageRules::default();
    let invalid = check(br#"{"content":"x"}"#, &rules).expect_err("no conversation_id");
    assert_eq!(
        invalid,
        Invalid::MissingField {
            field: Field::Required(0)
        }
    );
    assert_eq!(invalid.code(), "missing_field");
    assert_eq!(
        invalid.detail(&rules).to_string(),
        "missing required field \"conversation_id\""
    );
}

#[test]
fn check_wrong_required_type_names_field_and_kinds() {
    let rules = MessageRules::default();
    let invalid = check(br#"{"conversation_id":"c","content":[1]}"#, &rules).expect_err("array");
    assert_eq!(
        invalid,
        Invalid::WrongType {
            field: Field::Required(1),
            expected: "string",
            actual: FieldKind::Array
        }
    );
    assert_eq!(invalid.code(), "wrong_type");
    assert_eq!(
        invalid.detail(&rules).to_string(),
        "wrong type for field \"content\": expected string, found array"
    );
}

#[test]
fn check_field_errors_follow_rules_order() {
    let rules = MessageRules::default();
    let cases: &[(&[u8], Invalid)] = &[
        (
            b"{}",
            Invalid::MissingField {
                field: Field::Required(0),
            },
        ),
        (
            br#"{"content":1}"#,
            Invalid::MissingField {
                field: Field::Required(0),
            },
        ),
        (
            br#"{"content":1,"conversation_id":null}"#,
            Invalid::WrongType {
                field: Field::Required(0),
                expected: "string",
                actual: FieldKind::Null,
            },
        ),
        (
            br#"{"conversation_id":"c","content":"x","id":{}}"#,
            Invalid::WrongType {
                field: Field::Id,
                expected: "string or number",
                actual: FieldKind::Object,
            },
        ),
        (
            br#"{"conversation_id":"c","id":{}}"#,
            Invalid::MissingField {
                field: Field::Required(1),
            },
        ),
        (
            br#"{"conversation_id":"c","content":"x","id":"i","to":false}"#,
            Invalid::WrongType {
                field: Field::To,
                expected: "string",
                actual: FieldKind::Bool,
            },
        ),
    ];
    for (input, expected) in cases {
        let input_text = String::from_utf8_lossy(input);
        assert_eq!(check(input, &rules), Err(*expected), "input {input_text}");
    }
}

#[test]
fn check_syntax_error_wins_over_field_errors() {
    let invalid = check(br#"{"id":[],"x":tru}"#, &MessageRules::default()).expect_err("bad");
    assert_eq!(invalid, syntax(13, "invalid literal"));
}

#[test]
fn check_each_field_kind_accepts_only_its_type() {
    let values = [
        ("[]", FieldKind::Array),
        ("true", FieldKind::Bool),
        ("null", FieldKind::Null),
        ("-2", FieldKind::Number),
        ("{}", FieldKind::Object),
        ("\"s\"", FieldKind::String),
    ];
    let kinds = values.map(|(_, kind)| kind);
    for (value, actual) in values {
        let text = format!(r#"{{"f":{value}}}"#);
        for expected in kinds.iter().copied().chain([FieldKind::Any]) {
            let rules = MessageRules {
                required: vec![RequiredField::new("f", expected)],
                ..MessageRules::default()
            };
            let result = check(text.as_bytes(), &rules).map(|_| ());
            if expected == actual || expected == FieldKind::Any {
                assert_eq!(result, Ok(()), "{value} as {expected}");
            } else {
                let wrong = Invalid::WrongType {
                    field: Field::Required(0),
                    expected: expected.name(),
                    actual,
                };
                assert_eq!(result, Err(wrong), "{value} as {expected}");
            }
        }
    }
}

#[test]
fn check_same_field_required_twice_is_satisfied_once() {
    let rules = MessageRules {
        required: vec![
            RequiredField::new("content", FieldKind::String),
            RequiredField::new("content", FieldKind::Any),
        ],
        ..MessageRules::default()
    };
    assert!(check(br#"{"content":"x"}"#, &rules).is_ok());
    assert_eq!(
        check(br#"{"other":"x"}"#, &rules),
        Err(Invalid::MissingField {
            field: Field::Required(0)
        })
    );
}

#[test]
fn check_duplicate_key_names_known_fields_only() {
    let rules = MessageRules::default();
    let cases: &[(&[u8], Invalid)] = &[
        (
            br#"{"id":1,"id":2}"#,
            Invalid::DuplicateKey {
                offset: 8,
                field: Some(Field::Id),
            },
        ),
        (
            br#"{"to":"a","\u0074o":"b"}"#,
            Invalid::DuplicateKey {
                offset: 10,
                field: Some(Field::To),
            },
        ),
        (
            br#"{"from":1,"from":2}"#,
            Invalid::DuplicateKey {
                offset: 10,
                field: Some(Field::From),
            },
        ),
        (
            br#"{"content":"a","content":"b"}"#,
            Invalid::DuplicateKey {
                offset: 15,
                field: Some(Field::Required(1)),
            },
        ),
        (
            br#"{"x":1,"x":2}"#,
            Invalid::DuplicateKey {
                offset: 7,
                field: None,
            },
        ),
    ];
    for (input, expected) in cases {
        let input_text = String::from_utf8_lossy(input);
        assert_eq!(check(input, &rules), Err(*expected), "input {input_text}");
    }
    let detail = Invalid::DuplicateKey {
        offset: 15,
        field: Some(Field::Required(1)),
    }
    .detail(&rules)
    .to_string();
    assert_eq!(detail, "duplicate key \"content\" at byte 15");
}

#[test]
fn check_many_keys_detects_duplicates() {
    let rules = no_fields();
    for count in [INLINE_KEYS - 1, INLINE_KEYS, INLINE_KEYS + 1, 200] {
        let members: Vec<String> = (0..count).map(|i| format!(r#""k{i}":{i}"#)).collect();
        let unique = format!("{{{}}}", members.join(","));
        assert!(
            check(unique.as_bytes(), &rules).is_ok(),
            "{count} unique keys"
        );

        for duplicate in [0, count / 2, count - 1] {
            // The repeated key spells its `k` as an escape, so only a decoded compare finds it.
            for repeated in [
                format!(r#""k{duplicate}":0"#),
                format!(r#""\u006b{duplicate}":0"#),
            ] {
                let text = format!("{{{},{repeated}}}", members.join(","));
                let result = check(text.as_bytes(), &rules);
                assert!(
                    matches!(result, Err(Invalid::DuplicateKey { field: None, .. })),
                    "{count} keys, {repeated}: {result:?}"
                );
            }
        }
    }
}

#[test]
fn check_json_disabled_accepts_any_text() {
    let rules = MessageRules {
        json: false,
        ..MessageRules::default()
    };
    for text in [&b"not json"[..], b"", b"{\"id\":{}}", b"\xff"] {
        let checked = check(text, &rules).expect("json checks off");
        assert_eq!(checked, Checked::default());
        assert_eq!(checked.with_from("u1"), None);
    }
}

#[test]
fn check_depth_counts_top_object_as_one() {
    assert!(check(b"{}", &depth_rules(1)).is_ok());
    assert_eq!(
        check(b"  {}", &depth_rules(0)),
        Err(Invalid::TooDeep {
            offset: 2,
            max_depth: 0
        })
    );
    assert_eq!(
        check(br#"{"a":[]}"#, &depth_rules(1)),
        Err(Invalid::TooDeep {
            offset: 5,
            max_depth: 1
        })
    );
    assert!(check(br#"{"a":[{"b":[]}]}"#, &depth_rules(4)).is_ok());
    assert_eq!(
        check(br#"{"a":[{"b":[{}]}]}"#, &depth_rules(4)),
        Err(Invalid::TooDeep {
            offset: 12,
            max_depth: 4
        })
    );
}

#[test]
fn check_default_depth_allows_exactly_thirty_two_levels() {
    let rules = no_fields();
    let nested = |arrays: usize| format!(r#"{{"a":{}{}}}"#, "[".repeat(arrays), "]".repeat(arrays));
    assert!(check(nested(DEFAULT_MAX_JSON_DEPTH - 1).as_bytes(), &rules).is_ok());
    let too_deep = nested(DEFAULT_MAX_JSON_DEPTH);
    let invalid = check(too_deep.as_bytes(), &rules).expect_err("33 levels");
    assert_eq!(
        invalid,
        Invalid::TooDeep {
            offset: 5 + 31,
            max_depth: 32
        }
    );
    assert_eq!(invalid.to_string(), "nesting deeper than 32 at byte 36");
}

#[test]
fn check_megabyte_of_open_brackets_fails_without_overflow() {
    let mut text = br#"{"a":"#.to_vec();
    text.resize(text.len() + (1 << 20), b'[');
    assert_eq!(
        check(&text, &no_fields()),
        Err(Invalid::TooDeep {
            offset: 36,
            max_depth: 32
        })
    );
    let unlimited = depth_rules(usize::MAX);
    assert_eq!(
        check(&text, &unlimited),
        Err(syntax(text.len(), "unexpected end of input"))
    );
}

#[test]
fn check_megabyte_deep_nesting_without_limit_scans_linearly() {
    let depth = 1 << 19;
    let open = "[{\"k\":".repeat(depth);
    let close = "}]".repeat(depth);
    let text = format!(r#"{{"id":1,"a":{open}0{close}}}"#);
    assert!(check(text.as_bytes(), &depth_rules(usize::MAX)).is_ok());
    assert_eq!(client_id(text.as_bytes()), Some("1"));
}

#[test]
fn check_huge_numbers_are_valid() {
    let digits = "9".repeat(400);
    let text = format!(r#"{{"a":{digits},"b":-{digits}.{digits}e-{digits},"c":1e999999}}"#);
    assert!(check(text.as_bytes(), &no_fields()).is_ok());
}

#[test]
fn check_every_proper_prefix_is_invalid_json() {
    let rules = MessageRules::default();
    for end in 0..CHAT.len() {
        let prefix = CHAT.get(..end).unwrap_or_default();
        let invalid = check(prefix, &rules).expect_err("prefix is incomplete");
        assert_eq!(invalid.code(), code::INVALID_JSON, "prefix of {end} bytes");
    }
}

#[test]
fn invalid_display_has_no_trailing_period() {
    let samples = [
        syntax(3, "expected ':'"),
        Invalid::DuplicateKey {
            offset: 1,
            field: None,
        },
        Invalid::MissingField {
            field: Field::Required(2),
        },
        Invalid::TooDeep {
            offset: 4,
            max_depth: 8,
        },
        Invalid::WrongType {
            field: Field::Id,
            expected: "string or number",
            actual: FieldKind::Bool,
        },
    ];
    let texts = samples.map(|invalid| invalid.to_string());
    assert_eq!(
        texts,
        [
            "expected ':' at byte 3",
            "duplicate key at byte 1",
            "missing required field #2",
            "nesting deeper than 8 at byte 4",
            "wrong type for \"id\": expected string or number, found boolean",
        ]
    );
}

#[test]
fn client_id_found_when_fields_fail() {
    let rules = MessageRules::default();
    let text = br#"{"id":"c42","content":7}"#;
    assert_eq!(
        check(text, &rules).map(|_| ()).unwrap_err().code(),
        code::MISSING_FIELD
    );
    assert_eq!(client_id(text), Some("\"c42\""));
}

#[test]
fn client_id_cases() {
    let cases: &[(&[u8], Option<&str>)] = &[
        (br#"{"id":7}"#, Some("7")),
        (br#"{"id":"x\"y"}"#, Some(r#""x\"y""#)),
        (br#"{"\u0069d":"e"}"#, Some("\"e\"")),
        (br#"{"a":1,"a":2,"id":"dup-other"}"#, Some("\"dup-other\"")),
        (br#"{"a":[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]],"id":1}"#, Some("1")),
        (br#"{"id":1,"id":2}"#, None),
        (br#"{"id":null}"#, None),
        (br#"{"id":{"a":1}}"#, None),
        (br#"{"x":1}"#, None),
        (br#"{"id":"c42","x":tru}"#, None),
        (br#"{"id":"c42"} trailing"#, None),
        (b"", None),
        (b"not json", None),
    ];
    for (input, expected) in cases {
        let input_text = String::from_utf8_lossy(input);
        assert_eq!(client_id(input), *expected, "input {input_text}");
    }
}

/// Relays `text` through both entry points, checks they agree, and returns the result.
fn relay(text: &str, from: &str) -> String {
    let standalone = with_from(text.as_bytes(), from).expect("valid object");
    let checked = check(text.as_bytes(), &no_fields()).expect("valid object");
    assert_eq!(
        checked.with_from(from).as_ref(),
        Some(&standalone),
        "input {text}"
    );
    String::from_utf8(standalone).expect("UTF-8")
}

#[test]
fn with_from_inserts_and_removes_client_from() {
    let cases = [
        ("{}", r#"{"from":"u1"}"#),
        ("  { }  ", r#"  {"from":"u1" }  "#),
        (r#"{"a":1}"#, r#"{"from":"u1","a":1}"#),
        (r#"{"from":"evil"}"#, r#"{"from":"u1"}"#),
        (r#"{ "from" : "evil" }"#, r#"{"from":"u1"  }"#),
        (r#"{"from":"evil","a":1}"#, r#"{"from":"u1","a":1}"#),
        (r#"{"a":1,"from":"evil"}"#, r#"{"from":"u1","a":1}"#),
        (
            r#"{"a":1,"from":"evil","b":2}"#,
            r#"{"from":"u1","a":1,"b":2}"#,
        ),
        (
            r#"{"a":1, "from":{"x":[1]} , "b":2}"#,
            r#"{"from":"u1","a":1, "b":2}"#,
        ),
        (r#"{"a":1 , "from":null }"#, r#"{"from":"u1","a":1 }"#),
        (r#"{"\u0066rom":"evil","a":1}"#, r#"{"from":"u1","a":1}"#),
        (
            r#"{"a":{"from":"nested stays"}}"#,
            r#"{"from":"u1","a":{"from":"nested stays"}}"#,
        ),
    ];
    for (input, expected) in cases {
        assert_eq!(relay(input, "u1"), expected, "input {input}");
    }
}

#[test]
fn with_from_escapes_user_id() {
    let relayed = relay(r#"{"a":1}"#, "we\"ird\\user\n");
    assert_eq!(relayed, r#"{"from":"we\"ird\\user\n","a":1}"#);
    let parsed: serde_json::Value = serde_json::from_str(&relayed).expect("JSON");
    assert_eq!(parsed["from"], "we\"ird\\user\n");
}

#[test]
fn with_from_rejects_non_object_text() {
    for text in [
        &b"not json"[..],
        b"[]",
        br#"{"from":"x"} {}"#,
        br#"{"from":"x""#,
    ] {
        assert_eq!(with_from(text, "u1"), None);
    }
}

// Differential testing against serde_json.

/// Top-level keys of an object, decoded strictly by serde_json. With `READ_FROM`, also the value
/// of `from`, which must then be a string.
struct TopKeys<const READ_FROM: bool = false>(Vec<String>, Option<String>);

impl<'de, const READ_FROM: bool> de::Deserialize<'de> for TopKeys<READ_FROM> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct KeysVisitor<const READ_FROM: bool>;
        impl<'de, const READ_FROM: bool> Visitor<'de> for KeysVisitor<READ_FROM> {
            type Value = TopKeys<READ_FROM>;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a JSON object")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
                let (mut keys, mut from) = (Vec::new(), None);
                while let Some(key) = map.next_key::<String>()? {
                    if READ_FROM && key == "from" {
                        from = Some(map.next_value::<String>()?);
                    } else {
                        map.next_value::<IgnoredAny>()?;
                    }
                    keys.push(key);
                }
                Ok(TopKeys(keys, from))
            }
        }
        deserializer.deserialize_map(KeysVisitor::<READ_FROM>)
    }
}

/// Checks whether JSON text that serde_json already accepted has a `\u` escape of a UTF-16
/// surrogate outside a high/low pair.
fn has_lone_surrogate(json: &str) -> bool {
    let bytes = json.as_bytes();
    let unit = |at: usize| {
        bytes
            .get(at..at + 4)
            .and_then(|hex| u32::from_str_radix(std::str::from_utf8(hex).ok()?, 16).ok())
    };
    let mut at = 0;
    while at < bytes.len() {
        if bytes[at] != b'\\' {
            at += 1;
            continue;
        }
        if bytes.get(at + 1) != Some(&b'u') {
            at += 2;
            continue;
        }
        match unit(at + 2) {
            Some(0xD800..=0xDBFF) => {
                let paired = bytes.get(at + 6..at + 8) == Some(b"\\u")
                    && matches!(unit(at + 8), Some(0xDC00..=0xDFFF));
                if !paired {
                    return true;
                }
                at += 12;
            }
            Some(0xDC00..=0xDFFF) => return true,
            _ => at += 6,
        }
    }
    false
}

/// Maximum nesting of a string that serde_json already accepted as JSON.
fn nesting(json: &str) -> usize {
    let (mut depth, mut max, mut in_string, mut escaped) = (0usize, 0, false, false);
    for byte in json.bytes() {
        match (in_string, escaped, byte) {
            (true, true, _) => escaped = false,
            (true, false, b'\\') => escaped = true,
            (true, false, b'"') | (false, _, b'"') => in_string = !in_string,
            (false, _, b'[' | b'{') => {
                depth += 1;
                max = max.max(depth);
            }
            (false, _, b']' | b'}') => depth -= 1,
            _ => {}
        }
    }
    max
}

/// Our expected JSON verdict: serde_json's "one JSON object", plus the deviations the module
/// docs list (byte-order mark, lone surrogates, nesting limit, duplicate top-level keys).
fn oracle(text: &str, max_depth: usize) -> bool {
    if serde_json::from_str::<IgnoredAny>(text).is_err() {
        return false;
    }
    if !text
        .trim_start_matches([' ', '\t', '\n', '\r'])
        .starts_with('{')
    {
        return false;
    }
    if text.starts_with('\u{feff}') || has_lone_surrogate(text) || nesting(text) > max_depth {
        return false;
    }
    let Ok(TopKeys(mut keys, _)) = serde_json::from_str::<TopKeys>(text) else {
        return false;
    };
    let count = keys.len();
    keys.sort();
    keys.dedup();
    keys.len() == count
}

#[test]
fn oracle_helpers_agree_on_samples() {
    assert!(has_lone_surrogate(r#""\ud800""#));
    assert!(has_lone_surrogate(r#""\\\ud800""#));
    assert!(!has_lone_surrogate(r#""\\ud800""#));
    assert!(!has_lone_surrogate(r#""\ud83d\ude00""#));
    assert_eq!(nesting(r#"{"a":["]]]",{"b":"\"["}]}"#), 3);
    assert!(oracle(r#"{"a":1}"#, 32));
    assert!(!oracle(r#"{"a":1,"\u0061":2}"#, 32));
}

#[derive(Clone, Debug)]
enum Json {
    Literal(&'static str),
    Number(String),
    /// String body as JSON source, escapes included.
    Text(String),
    Array(Vec<Json>),
    Object(Vec<(String, Json)>),
}

fn string_body() -> impl Strategy<Value = String> {
    let piece = prop_oneof![
        4 => "[a-z ]{0,6}",
        1 => Just("é😀".to_owned()),
        1 => prop::sample::select(vec![
            r#"\""#, r#"\\"#, r#"\/"#, r#"\b"#, r#"\f"#, r#"\n"#, r#"\r"#, r#"\t"#,
            r#"\u0041"#, r#"\u00e9"#, r#"\uFFFF"#, r#"\ud83d\ude00"#, r#"\ud800"#, r#"\udfff"#,
            r#"\ud800\u0041"#,
        ])
        .prop_map(str::to_owned),
    ];
    prop::collection::vec(piece, 0..4).prop_map(|pieces| pieces.concat())
}

fn key() -> impl Strategy<Value = String> {
    prop_oneof![
        prop::sample::select(vec!["a", "b", "id", "to", "from", r#"\u0061"#, "content"])
            .prop_map(str::to_owned),
        string_body(),
    ]
}

fn json_value() -> impl Strategy<Value = Json> {
    let leaf = prop_oneof![
        prop::sample::select(vec!["true", "false", "null"]).prop_map(Json::Literal),
        "-?(0|[1-9][0-9]{0,3})(\\.[0-9]{1,3})?([eE][+-]?[0-9]{1,3})?".prop_map(Json::Number),
        Just(Json::Number("1e999999".to_owned())),
        string_body().prop_map(Json::Text),
    ];
    leaf.prop_recursive(6, 48, 5, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..5).prop_map(Json::Array),
            prop::collection::vec((key(), inner), 0..5).prop_map(Json::Object),
        ]
    })
}

fn whitespace() -> impl Strategy<Value = &'static str> {
    prop::sample::select(vec!["", "", "", " ", "\n", "\t ", "\r\n"])
}

/// Appends the next whitespace run from `spaces`, cycling through it.
fn push_space(spaces: &[&str], next: &mut usize, out: &mut String) {
    out.push_str(
        spaces
            .get(*next % spaces.len().max(1))
            .copied()
            .unwrap_or(""),
    );
    *next += 1;
}

fn render(value: &Json, spaces: &[&str], next: &mut usize, out: &mut String) {
    match value {
        Json::Literal(literal) => out.push_str(literal),
        Json::Number(number) => out.push_str(number),
        Json::Text(body) => {
            out.push('"');
            out.push_str(body);
            out.push('"');
        }
        Json::Array(items) => {
            out.push('[');
            for (index, item) in items.iter().enumerate() {
                if index > 0 {
                    out.push(',');
                }
                push_space(spaces, next, out);
                render(item, spaces, next, out);
                push_space(spaces, next, out);
            }
            out.push(']');
        }
        Json::Object(members) => {
            out.push('{');
            for (index, (key, item)) in members.iter().enumerate() {
                if index > 0 {
                    out.push(',');
                }
                push_space(spaces, next, out);
                out.push('"');
                out.push_str(key);
                out.push('"');
                push_space(spaces, next, out);
                out.push(':');
                push_space(spaces, next, out);
                render(item, spaces, next, out);
                push_space(spaces, next, out);
            }
            out.push('}');
        }
    }
}

/// JSON-ish text: a rendered value (mostly an object), then up to three random edits.
fn json_text() -> impl Strategy<Value = String> {
    let top = prop_oneof![
        4 => prop::collection::vec((key(), json_value()), 0..6).prop_map(Json::Object),
        1 => json_value(),
    ];
    let edit = (
        any::<prop::sample::Index>(),
        0..3u8,
        prop::sample::select(vec![
            '{', '}', '[', ']', ',', ':', '"', '\\', ' ', '0', '1', '-', '.', 'e', 'u', 't', 'n',
            'a', '\u{feff}', '\u{0}', '\n',
        ]),
    );
    (
        top,
        prop::collection::vec(whitespace(), 1..8),
        prop::collection::vec(edit, 0..4),
        prop::option::weighted(0.1, prop::sample::select(vec!["x", " {}", "\u{feff}"])),
    )
        .prop_map(|(value, spaces, edits, suffix)| {
            let mut text = String::new();
            render(&value, &spaces, &mut 0, &mut text);
            let mut chars: Vec<char> = text.chars().collect();
            for (at, action, ch) in edits {
                let index = at.index(chars.len() + 1);
                match action {
                    0 if index < chars.len() => {
                        chars.remove(index);
                    }
                    1 if index < chars.len() => chars[index] = ch,
                    _ => chars.insert(index, ch),
                }
            }
            let mut text: String = chars.into_iter().collect();
            if let Some(suffix) = suffix {
                if suffix == "\u{feff}" {
                    text.insert(0, '\u{feff}');
                } else {
                    text.push_str(suffix);
                }
            }
            text
        })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(3000))]

    #[test]
    fn check_matches_serde_json_oracle(text in json_text(), max_depth in 1usize..8) {
        let rules = depth_rules(max_depth);
        let ours = match check(text.as_bytes(), &rules) {
            Ok(_) => true,
            Err(invalid) => invalid.code() != code::INVALID_JSON,
        };
        prop_assert_eq!(ours, oracle(&text, max_depth), "input {:?}", text);
        prop_assert_eq!(check_str(&text, &rules), check(text.as_bytes(), &rules));
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(500))]

    #[test]
    fn check_invalid_json_offset_is_within_text(text in json_text()) {
        if let Err(Invalid::InvalidJson { offset, .. } | Invalid::TooDeep { offset, .. }
            | Invalid::DuplicateKey { offset, .. }) = check(text.as_bytes(), &depth_rules(4))
        {
            prop_assert!(offset <= text.len());
        }
    }

    #[test]
    fn client_id_matches_serde_json_on_valid_objects(text in json_text()) {
        let Ok(object) = serde_json::from_str::<serde_json::Map<String, serde_json::Value>>(&text)
        else {
            return Ok(());
        };
        if !oracle(&text, usize::MAX) {
            return Ok(());
        }
        let expected = object.get("id").filter(|id| id.is_string() || id.is_number());
        let ours = client_id(text.as_bytes())
            .map(|raw| serde_json::from_str::<serde_json::Value>(raw).expect("raw id is JSON"));
        prop_assert_eq!(ours.as_ref(), expected);
    }

    #[test]
    fn with_from_output_has_only_our_from(text in json_text(), user in "[a-z\"\\\\]{0,6}") {
        if !oracle(&text, usize::MAX) {
            return Ok(());
        }
        let relayed = with_from(text.as_bytes(), &user).expect("valid object");
        let relayed_text = String::from_utf8(relayed).expect("UTF-8");
        prop_assert!(oracle(&relayed_text, usize::MAX), "relayed {:?}", relayed_text);

        let TopKeys::<false>(before, _) = serde_json::from_str(&text).expect("keys");
        let TopKeys::<true>(after, from) = serde_json::from_str(&relayed_text).expect("keys");
        let mut expected = vec!["from".to_owned()];
        expected.extend(before.into_iter().filter(|key| key != "from"));
        prop_assert_eq!(after, expected);
        prop_assert_eq!(from, Some(user));
    }
}
