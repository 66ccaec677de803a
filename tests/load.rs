//! `framegate load` run as a subprocess against an in-process echo server: every message is
//! echoed, and injected faults get exactly the expected close codes and error frames.
//! The assertions are on counts only, never on speed.

mod util;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use util::*;

/// Longest a load subprocess may run before the test kills it and fails.
const RUN_LIMIT: Duration = Duration::from_secs(60);

/// A JSON summary file in the system temp directory, removed when dropped.
struct SummaryFile(PathBuf);

impl SummaryFile {
    fn new(name: &str) -> Self {
        let path =
            std::env::temp_dir().join(format!("framegate-load-{name}-{}.json", std::process::id()));
        let _ = std::fs::remove_file(&path);
        Self(path)
    }

    fn read(&self) -> serde_json::Value {
        let text = std::fs::read_to_string(&self.0).expect("load wrote its --json summary");
        serde_json::from_str(&text).expect("summary is JSON")
    }
}

impl Drop for SummaryFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// Runs `framegate load` with `args` plus `--json summary`, and returns the summary.
fn run_load(args: &[String], summary: &SummaryFile) -> serde_json::Value {
    let mut child = Command::new(env!("CARGO_BIN_EXE_framegate"))
        .arg("load")
        .args(args)
        .arg("--json")
        .arg(&summary.0)
        .arg("--quiet")
        .env("FRAMEGATE_JWT_SECRET", std::str::from_utf8(SECRET).unwrap())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start framegate load");
    let started = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait for framegate load") {
            break status;
        }
        if started.elapsed() > RUN_LIMIT {
            let _ = child.kill();
            panic!("framegate load ran longer than {RUN_LIMIT:?}");
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let output = child.wait_with_output().expect("collect output");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        status.success(),
        "framegate load failed with {status}\nstdout:\n{stdout}\nstderr:\n{stderr}"
    );
    assert!(
        Path::new(&summary.0).exists(),
        "no summary; stdout:\n{stdout}"
    );
    summary.read()
}

fn count(value: &serde_json::Value) -> u64 {
    value.as_u64().unwrap_or(0)
}

fn strings(items: &[&str]) -> Vec<String> {
    items.iter().map(|item| (*item).to_owned()).collect()
}

#[test]
fn load_echo_every_message_answered() {
    let addr = start(config(2, "backend = \"echo\"\nrate_per_sec = 0"));
    let summary_file = SummaryFile::new("echo");
    let url = format!("ws://{addr}/ws");
    let summary = run_load(
        &strings(&[
            &url,
            "--connections",
            "20",
            "--window",
            "4",
            "--size",
            "128",
            "--duration",
            "2",
            "--fail-on-error",
        ]),
        &summary_file,
    );

    let sent = count(&summary["sent"]["messages"]);
    assert!(sent > 0, "no message sent: {summary:#}");
    assert_eq!(count(&summary["received"]["messages"]), sent, "{summary:#}");
    assert_eq!(count(&summary["latency_us"]["count"]), sent, "{summary:#}");
    assert_eq!(count(&summary["handshakes"]), 20, "{summary:#}");
    assert_eq!(count(&summary["error_total"]), 0, "{summary:#}");
    assert_eq!(
        summary["error_frames"],
        serde_json::json!({}),
        "{summary:#}"
    );
    assert_eq!(summary["close_codes"], serde_json::json!({}), "{summary:#}");
}

#[test]
fn load_injected_faults_get_expected_answers() {
    let addr = start(config(
        2,
        "backend = \"echo\"\nrate_per_sec = 100\nburst = 5\nmax_message_bytes = 10240",
    ));
    let summary_file = SummaryFile::new("invalid");
    let url = format!("ws://{addr}/ws");
    let summary = run_load(
        &strings(&[
            &url,
            "--connections",
            "8",
            "--rate",
            "160",
            "--duration",
            "2",
            "--invalid-ratio",
            "0.2",
            "--server-rate-per-sec",
            "100",
            "--server-burst",
            "5",
            "--server-max-message-bytes",
            "10240",
            "--seed",
            "7",
        ]),
        &summary_file,
    );

    let injected = &summary["injected"];
    let oversize = count(&injected["oversize"]);
    let malformed = count(&injected["malformed_json"]);
    let over_rate = count(&injected["over_rate"]);
    assert!(oversize > 0, "no oversize fault injected: {summary:#}");
    assert!(malformed > 0, "no malformed fault injected: {summary:#}");
    assert!(over_rate > 0, "no over-rate fault injected: {summary:#}");

    assert_eq!(
        count(&summary["close_codes"]["1009"]),
        oversize,
        "{summary:#}"
    );
    assert_eq!(
        count(&summary["error_frames"]["invalid_json"]),
        malformed,
        "{summary:#}"
    );
    assert_eq!(
        count(&summary["error_frames"]["rate_limited"]),
        over_rate,
        "{summary:#}"
    );
    let codes = summary["error_frames"].as_object().expect("map").len();
    assert_eq!(
        codes, 2,
        "only the injected error codes appear: {summary:#}"
    );
    let closes = summary["close_codes"].as_object().expect("map").len();
    assert_eq!(closes, 1, "only close code 1009 appears: {summary:#}");
    assert_eq!(count(&summary["errors"]["mismatch"]), 0, "{summary:#}");
    assert_eq!(count(&summary["errors"]["lost"]), 0, "{summary:#}");
    assert_eq!(count(&summary["error_total"]), 0, "{summary:#}");
    // Each oversize fault ends its connection, which the user replaces.
    assert_eq!(count(&summary["handshakes"]), 8 + oversize, "{summary:#}");
}

#[test]
fn load_without_server_exits_one_naming_error() {
    // A port that was free a moment ago: nothing listens, so every connect is refused.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|listener| listener.local_addr())
        .expect("free port")
        .port();
    let output = Command::new(env!("CARGO_BIN_EXE_framegate"))
        .args(["load", &format!("ws://127.0.0.1:{port}/ws")])
        .args([
            "--duration",
            "1",
            "--connections",
            "2",
            "--no-auth",
            "--quiet",
        ])
        .output()
        .expect("run framegate load");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(
        output.status.code(),
        Some(1),
        "stdout:\n{stdout}\nstderr:\n{stderr}"
    );
    assert!(
        stdout.contains("first error  connect: "),
        "stdout:\n{stdout}"
    );
    assert!(stdout.contains("refused"), "stdout:\n{stdout}");
    assert!(stderr.contains("no connection to"), "stderr:\n{stderr}");
}
