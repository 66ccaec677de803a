//! Counters and latency histograms of a load run, and the summary built from them.
//!
//! Each client worker keeps its own [`Stats`] without locks; the caller merges them once at
//! the end. Latencies are recorded in microseconds in HdrHistogram with 3 significant digits.
//! The summary serializes to JSON for `--json` and renders as text for the terminal.
#![forbid(unsafe_code)]

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::time::Duration;

use hdrhistogram::Histogram;
use serde::Serialize;

/// Largest latency the histograms hold; longer samples are recorded as this value.
const MAX_LATENCY_MICROS: u64 = 3_600_000_000;

/// Faults injected by `--invalid-ratio`, by kind.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct Injected {
    /// Messages over the server's size cap (each expects close code 1009).
    pub oversize: u64,
    /// Malformed JSON messages (each expects an `invalid_json` error frame).
    pub malformed_json: u64,
    /// Messages sent with the rate bucket drained (each expects a `rate_limited` error frame).
    pub over_rate: u64,
    /// Open loop: scheduled messages not sent because their due time fell in the pauses
    /// around an over-rate fault, which wait for the server's bucket to refill.
    pub skipped_by_pauses: u64,
}

impl Injected {
    fn merge(&mut self, other: &Self) {
        self.oversize += other.oversize;
        self.malformed_json += other.malformed_json;
        self.skipped_by_pauses += other.skipped_by_pauses;
        self.over_rate += other.over_rate;
    }
}

/// Unexpected outcomes. An injected fault that got the expected answer is not an error.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct ErrorCounts {
    /// TCP connect failed or timed out.
    pub connect: u64,
    /// The upgrade response was malformed, had a wrong `Sec-WebSocket-Accept`, or timed out.
    pub handshake: u64,
    /// The upgrade was answered with a status other than 101 (listed in `http_status`).
    pub http_status: u64,
    /// A read or write failed after the upgrade (for example a reset).
    pub io: u64,
    /// The server sent a frame that breaks RFC 6455 (for example a masked frame).
    pub protocol: u64,
    /// The server closed with a code that no injected fault asked for.
    pub unexpected_close: u64,
    /// A message got another answer than expected: an error frame for a valid message, an
    /// echo for an injected fault, an unknown id, or another error code.
    pub mismatch: u64,
    /// Messages sent but never answered before the drain timeout or the connection's end.
    pub lost: u64,
    /// The server did not answer a close frame within the close timeout.
    pub close_timeout: u64,
}

impl ErrorCounts {
    pub fn total(&self) -> u64 {
        self.connect
            + self.handshake
            + self.http_status
            + self.io
            + self.protocol
            + self.unexpected_close
            + self.mismatch
            + self.lost
            + self.close_timeout
    }

    fn merge(&mut self, other: &Self) {
        self.connect += other.connect;
        self.handshake += other.handshake;
        self.http_status += other.http_status;
        self.io += other.io;
        self.protocol += other.protocol;
        self.unexpected_close += other.unexpected_close;
        self.mismatch += other.mismatch;
        self.lost += other.lost;
        self.close_timeout += other.close_timeout;
    }
}

/// Everything one worker counted.
#[derive(Debug, Clone)]
pub struct Stats {
    /// Completed upgrades (101 with a valid accept value).
    pub handshakes: u64,
    /// Time from the intended connect start to the 101, in microseconds.
    pub connect_latency: Histogram<u64>,
    pub messages_sent: u64,
    /// Payload bytes of data messages sent.
    pub bytes_sent: u64,
    pub messages_received: u64,
    /// Payload bytes of data messages received.
    pub bytes_received: u64,
    /// Time from a message's intended send time to its echo or delivery, in microseconds.
    pub latency: Histogram<u64>,
    /// Open loop only: time from a message's intended send time to its actual write.
    pub send_lag: Histogram<u64>,
    /// Messages received between the end of the ramp and the deadline.
    pub steady_received: u64,
    /// Upgrades completed between the end of the ramp and the deadline.
    pub steady_handshakes: u64,
    /// Upgrade responses other than 101, by status code.
    pub http_status: BTreeMap<u16, u64>,
    /// Close frames started by the server, by code (expected ones included).
    pub close_codes: BTreeMap<u16, u64>,
    /// Error frames received, by `code` (expected ones included).
    pub error_frames: BTreeMap<String, u64>,
    pub injected: Injected,
    pub errors: ErrorCounts,
    /// The first connect, handshake or I/O error, with its kind and the OS error text.
    pub first_error: Option<String>,
}

impl Default for Stats {
    fn default() -> Self {
        Self::new()
    }
}

impl Stats {
    pub fn new() -> Self {
        Self {
            handshakes: 0,
            connect_latency: new_histogram(),
            messages_sent: 0,
            bytes_sent: 0,
            messages_received: 0,
            bytes_received: 0,
            latency: new_histogram(),
            send_lag: new_histogram(),
            steady_received: 0,
            steady_handshakes: 0,
            http_status: BTreeMap::new(),
            close_codes: BTreeMap::new(),
            error_frames: BTreeMap::new(),
            injected: Injected::default(),
            errors: ErrorCounts::default(),
            first_error: None,
        }
    }

    /// Keeps the text of the first connect, handshake or I/O error, so the summary can show
    /// what failed (for example `connect: Connection refused (os error 111)`).
    pub fn note_error(&mut self, kind: &str, error: &dyn std::fmt::Display) {
        if self.first_error.is_none() {
            self.first_error = Some(format!("{kind}: {error}"));
        }
    }

    pub fn record_latency(&mut self, latency: Duration) {
        self.latency.saturating_record(micros(latency));
    }

    pub fn record_connect(&mut self, latency: Duration) {
        self.handshakes += 1;
        self.connect_latency.saturating_record(micros(latency));
    }

    pub fn record_send_lag(&mut self, lag: Duration) {
        self.send_lag.saturating_record(micros(lag));
    }

    pub fn count_http_status(&mut self, status: u16) {
        *self.http_status.entry(status).or_default() += 1;
        self.errors.http_status += 1;
    }

    pub fn count_close(&mut self, code: u16) {
        *self.close_codes.entry(code).or_default() += 1;
    }

    pub fn count_error_frame(&mut self, code: &str) {
        match self.error_frames.get_mut(code) {
            Some(count) => *count += 1,
            None => {
                self.error_frames.insert(code.to_owned(), 1);
            }
        }
    }

    /// Adds `other` into `self`.
    pub fn merge(&mut self, other: &Self) {
        self.handshakes += other.handshakes;
        // Both histograms have the same bounds, so adding cannot fail.
        let _ = self.connect_latency.add(&other.connect_latency);
        self.messages_sent += other.messages_sent;
        self.bytes_sent += other.bytes_sent;
        self.messages_received += other.messages_received;
        self.bytes_received += other.bytes_received;
        let _ = self.latency.add(&other.latency);
        let _ = self.send_lag.add(&other.send_lag);
        self.steady_received += other.steady_received;
        self.steady_handshakes += other.steady_handshakes;
        for (status, count) in &other.http_status {
            *self.http_status.entry(*status).or_default() += count;
        }
        for (code, count) in &other.close_codes {
            *self.close_codes.entry(*code).or_default() += count;
        }
        for (code, count) in &other.error_frames {
            *self.error_frames.entry(code.clone()).or_default() += count;
        }
        self.injected.merge(&other.injected);
        self.errors.merge(&other.errors);
        if self.first_error.is_none() {
            self.first_error.clone_from(&other.first_error);
        }
    }

    /// Builds the summary of a run that lasted `elapsed`, with `steady` the window after the
    /// ramp.
    pub fn summary(&self, run: RunInfo, elapsed: Duration, steady: SteadyWindow) -> Summary {
        let seconds = elapsed.as_secs_f64().max(1e-9);
        let per_sec = |count: u64| count as f64 / seconds;
        let send_lag = (!self.send_lag.is_empty()).then(|| LatencySummary::of(&self.send_lag));
        Summary {
            run,
            elapsed_secs: elapsed.as_secs_f64(),
            handshakes: self.handshakes,
            handshakes_per_sec: per_sec(self.handshakes),
            connect_latency_us: LatencySummary::of(&self.connect_latency),
            sent: Traffic {
                messages: self.messages_sent,
                bytes: self.bytes_sent,
                messages_per_sec: per_sec(self.messages_sent),
                bytes_per_sec: per_sec(self.bytes_sent),
            },
            received: Traffic {
                messages: self.messages_received,
                bytes: self.bytes_received,
                messages_per_sec: per_sec(self.messages_received),
                bytes_per_sec: per_sec(self.bytes_received),
            },
            latency_us: LatencySummary::of(&self.latency),
            send_lag_us: send_lag,
            steady: SteadySummary::of(steady, self.steady_received, self.steady_handshakes),
            http_status: self.http_status.clone(),
            close_codes: self.close_codes.clone(),
            error_frames: self.error_frames.clone(),
            injected: self.injected,
            errors: self.errors,
            error_total: self.errors.total(),
            first_error: self.first_error.clone(),
        }
    }
}

fn new_histogram() -> Histogram<u64> {
    match Histogram::new_with_bounds(1, MAX_LATENCY_MICROS, 3) {
        Ok(histogram) => histogram,
        Err(_) => unreachable!("1 µs to 1 h with 3 significant digits are valid bounds"),
    }
}

fn micros(duration: Duration) -> u64 {
    u64::try_from(duration.as_micros()).unwrap_or(u64::MAX)
}

/// What was run, repeated in the summary so a JSON file stands on its own.
#[derive(Debug, Clone, Serialize)]
pub struct RunInfo {
    pub target: String,
    pub scenario: String,
    pub connections: u32,
    pub workers: usize,
    pub message_bytes: usize,
    /// `open` (fixed aggregate rate) or `closed` (fixed window per connection).
    pub load_model: String,
    pub rate_per_sec: Option<f64>,
    pub window: Option<u32>,
}

/// The part of a run after the ramp, as wall-clock times, so other tools can line it up with
/// their own samples (for example a server's CPU time).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SteadyWindow {
    pub from_unix_ms: u64,
    pub to_unix_ms: u64,
}

/// Work done in the [`SteadyWindow`].
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct SteadySummary {
    pub from_unix_ms: u64,
    pub to_unix_ms: u64,
    pub messages_received: u64,
    pub handshakes: u64,
    pub messages_per_sec: f64,
    pub handshakes_per_sec: f64,
}

impl SteadySummary {
    fn of(window: SteadyWindow, messages_received: u64, handshakes: u64) -> Self {
        let millis = window.to_unix_ms.saturating_sub(window.from_unix_ms);
        let seconds = (millis as f64 / 1000.0).max(1e-9);
        Self {
            from_unix_ms: window.from_unix_ms,
            to_unix_ms: window.to_unix_ms,
            messages_received,
            handshakes,
            messages_per_sec: messages_received as f64 / seconds,
            handshakes_per_sec: handshakes as f64 / seconds,
        }
    }
}

/// Messages and payload bytes in one direction.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct Traffic {
    pub messages: u64,
    pub bytes: u64,
    pub messages_per_sec: f64,
    pub bytes_per_sec: f64,
}

/// Percentiles of one histogram, in microseconds.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct LatencySummary {
    pub count: u64,
    pub mean: f64,
    pub p50: u64,
    pub p90: u64,
    pub p99: u64,
    pub p99_9: u64,
    pub max: u64,
}

impl LatencySummary {
    fn of(histogram: &Histogram<u64>) -> Self {
        Self {
            count: histogram.len(),
            mean: histogram.mean(),
            p50: histogram.value_at_quantile(0.5),
            p90: histogram.value_at_quantile(0.9),
            p99: histogram.value_at_quantile(0.99),
            p99_9: histogram.value_at_quantile(0.999),
            max: histogram.max(),
        }
    }
}

/// The result of a run, as printed and as written by `--json`.
#[derive(Debug, Clone, Serialize)]
pub struct Summary {
    pub run: RunInfo,
    pub elapsed_secs: f64,
    pub handshakes: u64,
    pub handshakes_per_sec: f64,
    pub connect_latency_us: LatencySummary,
    pub sent: Traffic,
    pub received: Traffic,
    pub latency_us: LatencySummary,
    /// Present for open-loop runs: how late the client wrote messages after their due time.
    pub send_lag_us: Option<LatencySummary>,
    /// Counts between the end of the ramp and the deadline.
    pub steady: SteadySummary,
    pub http_status: BTreeMap<u16, u64>,
    pub close_codes: BTreeMap<u16, u64>,
    pub error_frames: BTreeMap<String, u64>,
    pub injected: Injected,
    pub errors: ErrorCounts,
    pub error_total: u64,
    /// The first connect, handshake or I/O error seen by a worker, if any.
    pub first_error: Option<String>,
}

impl Summary {
    /// Renders the summary for a terminal.
    pub fn render(&self) -> String {
        let mut out = String::new();
        let run = &self.run;
        // The connect scenario sends no messages, so their size means nothing there.
        let size = if run.scenario == "connect" {
            String::new()
        } else {
            format!("{} B messages, ", run.message_bytes)
        };
        let steady = &self.steady;
        let steady_secs = steady.to_unix_ms.saturating_sub(steady.from_unix_ms) as f64 / 1000.0;
        let ramp_secs = self.elapsed_secs - steady_secs;
        let ramp = if ramp_secs >= 0.05 {
            format!(" ({ramp_secs:.1} s of ramp included)")
        } else {
            String::new()
        };
        let _ = writeln!(
            out,
            "{} against {}: {} connections, {} workers, {size}{} loop, {:.1} s{ramp}",
            run.scenario,
            run.target,
            run.connections,
            run.workers,
            run.load_model,
            self.elapsed_secs
        );
        // A handshake rate means something only when handshakes are the load.
        let rate = if run.scenario == "connect" {
            format!(" ({:.1}/s)", self.handshakes_per_sec)
        } else {
            String::new()
        };
        let _ = writeln!(
            out,
            "handshakes   {}{rate}, connect latency {}",
            self.handshakes,
            render_latency(&self.connect_latency_us)
        );
        for (label, traffic) in [("sent", &self.sent), ("received", &self.received)] {
            let _ = writeln!(
                out,
                "{label:<12} {} messages ({:.1}/s), {} bytes ({:.1} MB/s)",
                traffic.messages,
                traffic.messages_per_sec,
                traffic.bytes,
                traffic.bytes_per_sec / 1e6
            );
        }
        // The rates above divide by the ramp and the duration together. After a ramp, the
        // rates of the steady window are the ones to compare.
        if steady_secs + 0.001 < self.elapsed_secs {
            let _ = writeln!(
                out,
                "steady       {:.1} messages received/s, {:.1} handshakes/s in the {:.1} s after the ramp",
                steady.messages_per_sec, steady.handshakes_per_sec, steady_secs
            );
        }
        let _ = writeln!(out, "latency      {}", render_latency(&self.latency_us));
        if let Some(lag) = &self.send_lag_us {
            let _ = writeln!(out, "send lag     {}", render_latency(lag));
        }
        if !self.http_status.is_empty() {
            let _ = writeln!(out, "http status  {}", render_map(&self.http_status));
        }
        if !self.close_codes.is_empty() {
            let _ = writeln!(out, "close codes  {}", render_map(&self.close_codes));
        }
        if !self.error_frames.is_empty() {
            let _ = writeln!(out, "error frames {}", render_map(&self.error_frames));
        }
        let injected = self.injected;
        if injected != Injected::default() {
            let _ = writeln!(
                out,
                "injected     oversize {}, malformed_json {}, over_rate {}",
                injected.oversize, injected.malformed_json, injected.over_rate
            );
            if injected.skipped_by_pauses > 0 {
                let _ = writeln!(
                    out,
                    "skipped      {} scheduled messages, due while over-rate faults waited for the server's bucket to refill",
                    injected.skipped_by_pauses
                );
            }
        }
        let errors = &self.errors;
        let _ = writeln!(
            out,
            "errors       {} (connect {}, handshake {}, http {}, io {}, protocol {}, unexpected close {}, mismatch {}, lost {}, close timeout {})",
            self.error_total,
            errors.connect,
            errors.handshake,
            errors.http_status,
            errors.io,
            errors.protocol,
            errors.unexpected_close,
            errors.mismatch,
            errors.lost,
            errors.close_timeout
        );
        if let Some(first) = &self.first_error {
            let _ = writeln!(out, "first error  {first}");
        }
        if let Some(hint) = self.fault_hint() {
            let _ = writeln!(out, "hint         {hint}");
        }
        out
    }

    /// Returns advice when faults were injected but the server replied to none of them the way
    /// framegate does, which means the server is not framegate or its limits differ from the
    /// `--server-*` options.
    fn fault_hint(&self) -> Option<&'static str> {
        let injected = self.injected;
        let expected_answers = self.close_codes.get(&1009).copied().unwrap_or(0)
            + self.error_frames.get("invalid_json").copied().unwrap_or(0)
            + self.error_frames.get("rate_limited").copied().unwrap_or(0);
        let faults = injected.oversize + injected.malformed_json + injected.over_rate;
        (faults > 0 && expected_answers == 0).then_some(
            "no injected fault got its expected answer; --invalid-ratio needs a framegate server whose limits match the --server-* options",
        )
    }
}

fn render_latency(latency: &LatencySummary) -> String {
    if latency.count == 0 {
        return "(no samples)".to_owned();
    }
    format!(
        "p50 {} µs, p90 {} µs, p99 {} µs, p99.9 {} µs, max {} µs ({} samples)",
        latency.p50, latency.p90, latency.p99, latency.p99_9, latency.max, latency.count
    )
}

fn render_map<K: std::fmt::Display>(map: &BTreeMap<K, u64>) -> String {
    let parts: Vec<String> = map
        .iter()
        .map(|(key, count)| format!("{key}: {count}"))
        .collect();
    parts.join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run_info() -> RunInfo {
        RunInfo {
            target: "ws://127.0.0.1:1/ws".to_owned(),
            scenario: "echo".to_owned(),
            connections: 2,
            workers: 1,
            message_bytes: 64,
            load_model: "closed".to_owned(),
            rate_per_sec: None,
            window: Some(1),
        }
    }

    fn window() -> SteadyWindow {
        SteadyWindow {
            from_unix_ms: 1_000,
            to_unix_ms: 3_000,
        }
    }

    #[test]
    fn steady_rates_divide_by_window() {
        let mut stats = Stats::new();
        stats.steady_received = 500;
        stats.steady_handshakes = 4;
        let steady = stats
            .summary(run_info(), Duration::from_secs(9), window())
            .steady;
        assert_eq!(steady.messages_per_sec, 250.0);
        assert_eq!(steady.handshakes_per_sec, 2.0);
        assert_eq!(steady.from_unix_ms, 1_000);
    }

    #[test]
    fn render_gives_handshake_rate_for_connect_only() {
        let mut stats = Stats::new();
        stats.handshakes = 40;
        let echo = stats.summary(run_info(), Duration::from_secs(2), window());
        assert!(
            echo.render().contains("handshakes   40, connect"),
            "{}",
            echo.render()
        );
        let mut info = run_info();
        info.scenario = "connect".to_owned();
        let connect = stats.summary(info, Duration::from_secs(2), window());
        assert!(
            connect
                .render()
                .contains("handshakes   40 (20.0/s), connect"),
            "{}",
            connect.render()
        );
    }

    #[test]
    fn render_header_names_size_and_ramp() {
        let stats = Stats::new();
        // The steady window is 2 s of a 9 s run, so 7 s were ramp.
        let echo = stats.summary(run_info(), Duration::from_secs(9), window());
        let header = echo.render().lines().next().unwrap_or_default().to_owned();
        assert!(header.contains("64 B messages"), "{header}");
        assert!(
            header.contains("9.0 s (7.0 s of ramp included)"),
            "{header}"
        );

        let mut info = run_info();
        info.scenario = "connect".to_owned();
        let connect = stats.summary(info, Duration::from_secs(2), window());
        let header = connect
            .render()
            .lines()
            .next()
            .unwrap_or_default()
            .to_owned();
        assert!(!header.contains("messages"), "{header}");
        assert!(header.ends_with("closed loop, 2.0 s"), "{header}");
    }

    #[test]
    fn render_hints_when_no_fault_was_answered() {
        let mut stats = Stats::new();
        stats.injected.malformed_json = 3;
        let unanswered = stats.summary(run_info(), Duration::from_secs(2), window());
        assert!(
            unanswered.render().contains("hint "),
            "{}",
            unanswered.render()
        );

        stats.count_error_frame("invalid_json");
        let answered = stats.summary(run_info(), Duration::from_secs(2), window());
        assert!(
            !answered.render().contains("hint "),
            "{}",
            answered.render()
        );
    }

    #[test]
    fn render_shows_steady_rates_after_ramp() {
        let mut stats = Stats::new();
        stats.steady_received = 500;
        let after_ramp = stats.summary(run_info(), Duration::from_secs(9), window());
        assert!(
            after_ramp
                .render()
                .contains("steady       250.0 messages received/s, 0.0 handshakes/s in the 2.0 s after the ramp"),
            "{}",
            after_ramp.render()
        );
        let no_ramp = stats.summary(run_info(), Duration::from_secs(2), window());
        assert!(!no_ramp.render().contains("steady"));
    }

    #[test]
    fn latency_percentiles_come_from_samples() {
        let mut stats = Stats::new();
        for micros in 1..=1000 {
            stats.record_latency(Duration::from_micros(micros));
        }
        let summary = stats.summary(run_info(), Duration::from_secs(1), window());
        assert_eq!(summary.latency_us.count, 1000);
        assert_eq!(summary.latency_us.p50, 500);
        assert_eq!(summary.latency_us.p99, 990);
        assert_eq!(summary.latency_us.max, 1000);
    }

    #[test]
    fn huge_latency_is_clamped_not_dropped() {
        let mut stats = Stats::new();
        stats.record_latency(Duration::from_secs(100_000));
        assert_eq!(stats.latency.len(), 1);
    }

    #[test]
    fn merge_adds_counts_and_maps() {
        let mut first = Stats::new();
        first.messages_sent = 3;
        first.count_error_frame("invalid_json");
        first.count_close(1009);
        first.count_http_status(401);
        first.record_latency(Duration::from_micros(10));
        first.injected.oversize = 1;
        let mut second = first.clone();
        second.errors.lost = 2;
        second.count_error_frame("rate_limited");

        first.merge(&second);
        assert_eq!(first.messages_sent, 6);
        assert_eq!(first.error_frames["invalid_json"], 2);
        assert_eq!(first.error_frames["rate_limited"], 1);
        assert_eq!(first.close_codes[&1009], 2);
        assert_eq!(first.http_status[&401], 2);
        assert_eq!(first.latency.len(), 2);
        assert_eq!(first.injected.oversize, 2);
        assert_eq!(first.errors.http_status, 2);
        assert_eq!(first.errors.total(), 4);
    }

    #[test]
    fn summary_rates_divide_by_elapsed() {
        let mut stats = Stats::new();
        stats.messages_sent = 500;
        stats.bytes_sent = 32_000;
        stats.record_connect(Duration::from_micros(80));
        let summary = stats.summary(run_info(), Duration::from_secs(2), window());
        assert_eq!(summary.sent.messages_per_sec, 250.0);
        assert_eq!(summary.sent.bytes_per_sec, 16_000.0);
        assert_eq!(summary.handshakes, 1);
        assert_eq!(summary.handshakes_per_sec, 0.5);
        assert!(summary.send_lag_us.is_none());
    }

    #[test]
    fn summary_json_has_string_keys_and_totals() {
        let mut stats = Stats::new();
        stats.count_close(1009);
        stats.count_error_frame("invalid_json");
        stats.errors.mismatch = 1;
        let json =
            serde_json::to_value(stats.summary(run_info(), Duration::from_secs(1), window()))
                .unwrap();
        assert_eq!(json["close_codes"]["1009"], 1);
        assert_eq!(json["error_frames"]["invalid_json"], 1);
        assert_eq!(json["errors"]["mismatch"], 1);
        assert_eq!(json["error_total"], 1);
        assert_eq!(json["run"]["scenario"], "echo");
        assert!(json["latency_us"]["p99_9"].is_u64());
    }

    #[test]
    fn render_lists_errors_and_codes() {
        let mut stats = Stats::new();
        stats.count_close(1009);
        stats.injected.oversize = 1;
        let text = stats
            .summary(run_info(), Duration::from_secs(1), window())
            .render();
        assert!(text.contains("close codes  1009: 1"));
        assert!(text.contains("injected     oversize 1"));
        assert!(text.contains("errors       0"));
        assert!(text.contains("latency      (no samples)"));
        assert!(!text.contains("first error"));
    }

    #[test]
    fn first_error_kept_through_merge() {
        let connect_error = std::io::Error::from(std::io::ErrorKind::ConnectionRefused);
        let mut first = Stats::new();
        first.note_error("connect", &connect_error);
        first.note_error("read", &"later");
        let mut other = Stats::new();
        other.note_error("write", &"other worker");

        let mut total = Stats::new();
        total.merge(&first);
        total.merge(&other);
        let summary = total.summary(run_info(), Duration::from_secs(1), window());
        let expected = format!("connect: {connect_error}");
        assert_eq!(summary.first_error.as_deref(), Some(expected.as_str()));
        assert!(
            summary
                .render()
                .contains(&format!("first error  {expected}"))
        );
    }
}
