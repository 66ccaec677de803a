//! The admin `/metrics` endpoint after a scripted session: the text parses as the Prometheus
//! exposition format and each counter matches what the session did.

mod util;

use std::collections::HashMap;

use util::*;

/// Parses Prometheus text into `name{labels}` → value, checking that every sample's metric
/// family has `# HELP` and `# TYPE` lines before it.
fn parse_exposition(text: &str) -> HashMap<String, f64> {
    let mut documented = std::collections::HashSet::new();
    let mut samples = HashMap::new();
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("# HELP ") {
            documented.insert(rest.split(' ').next().unwrap().to_owned());
            continue;
        }
        if line.starts_with("# TYPE ") || line.is_empty() {
            continue;
        }
        let (series, value) = line
            .rsplit_once(' ')
            .unwrap_or_else(|| panic!("bad sample {line:?}"));
        let name = series.split('{').next().unwrap();
        let family = ["_bucket", "_sum", "_count"]
            .iter()
            .find_map(|suffix| {
                name.strip_suffix(suffix)
                    .filter(|base| documented.contains(*base))
            })
            .unwrap_or(name);
        assert!(documented.contains(family), "sample without HELP: {line}");
        let value: f64 = value
            .parse()
            .unwrap_or_else(|_| panic!("bad value in {line:?}"));
        samples.insert(series.to_owned(), value);
    }
    samples
}

fn sample(samples: &HashMap<String, f64>, series: &str) -> f64 {
    *samples.get(series).unwrap_or_else(|| {
        panic!(
            "missing series {series}; have {:?}",
            samples.keys().collect::<Vec<_>>()
        )
    })
}

#[test]
fn metrics_match_scripted_session() {
    let server = start_full(config(
        1,
        "backend = \"echo\"\nrate_per_sec = 1\nburst = 3\n",
    ));
    let admin = server.admin.expect("admin listener");

    // One rejected upgrade and one accepted.
    let response = http_exchange(server.addr, upgrade_request("not-a-token").as_bytes());
    assert_eq!(status_of(&response), 401);
    let mut client = open(server.addr, "metered");

    // Three accepted messages, one invalid, one rate-limited, one ping, then a close.
    let ok = r#"{"conversation_id":"c","content":"x"}"#;
    for _ in 0..3 {
        client.send_text(ok);
        client.read_frame().unwrap();
    }
    client.send_text("{broken");
    assert_eq!(client.read_frame().unwrap().json()["code"], "invalid_json");
    client.send_text(ok);
    assert_eq!(client.read_frame().unwrap().json()["code"], "rate_limited");
    client.send(&client_frame(true, 0x9, b"p"));
    assert_eq!(client.read_frame().unwrap().opcode, 0xA);
    client.send(&client_frame(true, 0x8, &1000u16.to_be_bytes()));
    assert_eq!(client.expect_close(), 1000);
    assert!(client.read_frame().is_none());

    let mut samples = HashMap::new();
    eventually("close counted", || {
        let (status, body) = admin_get(admin, "/metrics");
        assert_eq!(status, 200);
        samples = parse_exposition(&body);
        samples.get(r#"framegate_closes_total{code="1000"}"#) == Some(&1.0)
    });
    assert_eq!(
        sample(&samples, r#"framegate_upgrades_total{status="101"}"#),
        1.0
    );
    assert_eq!(
        sample(&samples, r#"framegate_upgrades_total{status="401"}"#),
        1.0
    );
    assert_eq!(
        sample(&samples, r#"framegate_messages_total{verdict="accepted"}"#),
        3.0
    );
    assert_eq!(
        sample(
            &samples,
            r#"framegate_messages_total{verdict="invalid_json"}"#
        ),
        1.0
    );
    assert_eq!(
        sample(
            &samples,
            r#"framegate_messages_total{verdict="rate_limited"}"#
        ),
        1.0
    );
    assert_eq!(sample(&samples, "framegate_rate_limit_hits_total"), 1.0);
    // 5 text frames, 1 ping, 1 close.
    assert_eq!(sample(&samples, "framegate_frames_received_total"), 7.0);
    // 3 echoes, 2 error frames, 1 pong, 1 close.
    assert_eq!(sample(&samples, "framegate_frames_sent_total"), 7.0);
    assert_eq!(
        sample(&samples, r#"framegate_connections_open{worker="0"}"#),
        0.0
    );
    assert_eq!(sample(&samples, "framegate_ready"), 1.0);
    assert_eq!(
        sample(&samples, "framegate_handshake_duration_seconds_count"),
        2.0
    );
    assert_eq!(
        sample(&samples, "framegate_message_processing_seconds_count"),
        3.0
    );
}
