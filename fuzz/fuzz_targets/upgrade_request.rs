//! Fuzz target for `http::RequestParser` and the upgrade checks behind it.
//!
//! Invariants, for any bytes in any read pattern:
//! - the verdict (complete request with every field, or error) equals the one-read verdict;
//! - once `max_head_bytes` bytes are buffered the verdict is reached, never `Partial`;
//! - a complete head is no longer than the input or the limit and ends in CRLF CRLF;
//! - repeating the call after a verdict returns the same verdict;
//! - `handshake::check_request` decides every complete head without panicking, and each
//!   verdict renders a response head that ends.

#![no_main]

use framegate::handshake::{
    HandshakeConfig, RejectReason, check_request, write_reject, write_switching_protocols,
};
use framegate::http::{ParseError, ParserLimits, Request, RequestParser, Status};
use framegate_fuzz::{Input, read_ends};
use libfuzzer_sys::fuzz_target;

type Verdict<'b> = Result<Status<Request<'b>>, ParseError>;

fuzz_target!(|input: &[u8]| {
    let input = Input::split(input);
    let [limit_choice, mode, _, _] = input.control;
    let data = input.data;
    let limits = limits(limit_choice);

    let one_read = RequestParser::new(limits).parse(data);
    check_complete(&one_read, data, limits);

    let chunked = parse_in_reads(data, limits, &read_ends(data.len(), mode, input.seed()));
    assert_eq!(chunked, one_read, "verdict depends on the read pattern");

    if let Ok(Status::Complete(request)) = &one_read {
        for cfg in [HandshakeConfig::default(), every_token_source()] {
            let verdict = check_request(request, &cfg);
            assert_response_ends(verdict.map(|upgrade| upgrade.key));
        }
    }
    if let Err(error) = one_read {
        assert_response_ends(Err(RejectReason::from(error)));
    }
});

/// Picks small limits for most inputs, so the limit paths are reached with short inputs, and
/// the defaults for the rest.
fn limits(choice: u8) -> ParserLimits {
    if choice >= 0xC0 {
        return ParserLimits::default();
    }
    ParserLimits {
        max_head_bytes: usize::from(choice & 0x3F) * 8,
        max_headers: usize::from(choice >> 6) * 4 + 1,
    }
}

/// Feeds growing prefixes of `data` ending at each of `ends`, as the connection's read buffer
/// grows, and returns the first verdict that is not `Partial`.
fn parse_in_reads<'b>(data: &'b [u8], limits: ParserLimits, ends: &[usize]) -> Verdict<'b> {
    let mut parser = RequestParser::new(limits);
    let mut verdict = Ok(Status::Partial);
    for &end in ends {
        let buffered = data.get(..end).unwrap_or(data);
        verdict = parser.parse(buffered);
        match &verdict {
            Ok(Status::Partial) => assert!(
                buffered.len() < limits.max_head_bytes,
                "{} bytes buffered with a limit of {} and still no verdict",
                buffered.len(),
                limits.max_head_bytes
            ),
            _ => {
                // Later calls repeat the verdict, whatever else has arrived.
                assert_eq!(
                    parser.parse(data),
                    verdict,
                    "verdict changed on a later call"
                );
                return verdict;
            }
        }
    }
    verdict
}

/// Checks the length rules of a complete head.
fn check_complete(verdict: &Verdict<'_>, data: &[u8], limits: ParserLimits) {
    let Ok(Status::Complete(request)) = verdict else {
        return;
    };
    assert!(
        request.head_len <= data.len(),
        "head is longer than the input"
    );
    assert!(
        request.head_len <= limits.max_head_bytes,
        "head is longer than max_head_bytes"
    );
    assert!(
        request.headers.len() <= limits.max_headers,
        "more header fields than max_headers"
    );
    let head = data.get(..request.head_len).unwrap_or_default();
    assert!(
        head.ends_with(b"\r\n\r\n"),
        "head does not end in CRLF CRLF"
    );
}

/// Renders the response for `verdict` and checks that its head ends.
fn assert_response_ends(verdict: Result<&str, RejectReason>) {
    let mut out = Vec::new();
    match verdict {
        Ok(key) => write_switching_protocols(key, None, &mut out),
        Err(reason) => write_reject(&reason, &mut out),
    }
    assert!(out.starts_with(b"HTTP/1.1 "), "response has no status line");
    assert!(
        out.windows(4).any(|window| window == b"\r\n\r\n"),
        "response head does not end"
    );
}

/// Returns a handshake configuration with every token source and one subprotocol enabled.
fn every_token_source() -> HandshakeConfig {
    HandshakeConfig {
        query_param: Some("access_token".to_owned()),
        protocol_marker: Some("framegate.jwt".to_owned()),
        cookie: Some("framegate_token".to_owned()),
        subprotocols: vec!["chat".to_owned()],
        ..HandshakeConfig::default()
    }
}
