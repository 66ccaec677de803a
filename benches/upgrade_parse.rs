//! Parse and check a typical browser upgrade request: the work done once per connection
//! before the 101 response is written.

use std::hint::black_box;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use framegate::handshake::{HandshakeConfig, check_request, write_switching_protocols};
use framegate::http::{ParserLimits, RequestParser, Status};

/// An upgrade request as a desktop browser sends it, with a session cookie.
const BROWSER_UPGRADE: &[u8] = b"GET /ws HTTP/1.1\r\n\
Host: chat.example.com\r\n\
Connection: Upgrade\r\n\
Upgrade: websocket\r\n\
User-Agent: Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/126.0.0.0 Safari/537.36\r\n\
Origin: https://chat.example.com\r\n\
Sec-WebSocket-Version: 13\r\n\
Cookie: framegate_token=eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJ1MSJ9.c2ln\r\n\
Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\
Sec-WebSocket-Extensions: permessage-deflate; client_max_window_bits\r\n\
\r\n";

fn config() -> HandshakeConfig {
    HandshakeConfig {
        cookie: Some("framegate_token".to_owned()),
        ..HandshakeConfig::default()
    }
}

fn bench_upgrade(c: &mut Criterion) {
    let cfg = config();
    let mut group = c.benchmark_group("upgrade");
    group.throughput(Throughput::Bytes(BROWSER_UPGRADE.len() as u64));

    // A new parser per request, as each connection creates one.
    group.bench_function("parse_and_check", |b| {
        b.iter(|| {
            let mut parser = RequestParser::new(ParserLimits::default());
            let Ok(Status::Complete(request)) = parser.parse(black_box(BROWSER_UPGRADE)) else {
                panic!("benchmark request does not parse");
            };
            let upgrade = check_request(&request, &cfg);
            assert!(upgrade.is_ok(), "benchmark request is rejected");
            black_box(upgrade.map(|u| u.token).ok());
        });
    });

    group.bench_function("parse_only", |b| {
        b.iter(|| {
            let mut parser = RequestParser::new(ParserLimits::default());
            black_box(parser.parse(black_box(BROWSER_UPGRADE)).is_ok());
        });
    });

    // Parse and check plus the 101 response, whose SHA-1 usually dominates.
    group.bench_function("parse_check_respond", |b| {
        let mut out = Vec::with_capacity(256);
        b.iter(|| {
            let mut parser = RequestParser::new(ParserLimits::default());
            let Ok(Status::Complete(request)) = parser.parse(black_box(BROWSER_UPGRADE)) else {
                panic!("benchmark request does not parse");
            };
            let Ok(upgrade) = check_request(&request, &cfg) else {
                panic!("benchmark request is rejected");
            };
            out.clear();
            write_switching_protocols(upgrade.key, upgrade.protocol, &mut out);
            black_box(out.len());
        });
    });
    group.finish();
}

criterion_group!(benches, bench_upgrade);
criterion_main!(benches);
