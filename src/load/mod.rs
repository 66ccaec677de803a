//! `framegate load`: a thread-per-core WebSocket load generator for framegate and for any
//! RFC 6455 server.
//!
//! Like the server, it runs one pinned thread per core with its own tokio-uring runtime, so
//! the client is not the bottleneck. Scenarios: `echo` (latency from the echoed message),
//! `relay` (users in pairs, user 2k sends to user 2k+1, latency from the delivery) and
//! `connect` (connect, upgrade, close, repeat). Load is open loop with `--rate` (messages are
//! due at fixed times and latency counts from the due time, so a stalled server shows up as
//! latency) or closed loop with `--window` messages outstanding per connection.
//!
//! `--invalid-ratio` mixes in faults that a framegate server must reject in a fixed way:
//! oversize messages (close 1009), malformed JSON (`invalid_json`) and messages over the rate
//! limit (`rate_limited`). Any other response counts as an error.
//!
//! Layout: `url`, `wire`, `plan`, `stats` and `tokens` are pure and unit-tested; `client` does
//! the I/O. This module parses the options, starts the workers, prints progress and the
//! summary.
#![forbid(unsafe_code)]

mod client;
pub mod plan;
pub mod stats;
pub mod tokens;
pub mod url;
pub mod wire;

use std::net::{IpAddr, SocketAddr, ToSocketAddrs as _};
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, OnceLock, mpsc};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use clap::ValueEnum;

use self::plan::{Injection, PlanError};
use self::stats::{RunInfo, Stats};
use self::tokens::TokenSource;
use self::url::{UrlError, WsUrl};
use self::wire::{MessageShape, TokenPlacement};
use crate::auth::{AuthSetupError, Signer};

/// Delay between the end of the workers' setup and the first connection, so every worker is
/// waiting when the clock starts.
const START_DELAY: Duration = Duration::from_millis(50);

/// Extra token lifetime beyond the planned run, in seconds.
const TOKEN_TTL_MARGIN_SECS: u64 = 3600;

/// Largest `--size`, in bytes.
const MAX_MESSAGE_BYTES: usize = 64 << 20;

/// Behaviour of each virtual user.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Scenario {
    /// Send messages and measure latency from the echo.
    Echo,
    /// Users in pairs: user 2k sends to user 2k+1 (each message carries `to`); latency from
    /// the delivery.
    Relay,
    /// Connect, upgrade, close and repeat: handshake rate and connect latency only.
    Connect,
}

/// Place of the token in the upgrade request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum TokenIn {
    /// `Authorization: Bearer <token>`.
    Header,
    /// A query parameter (`--query-param`).
    Query,
    /// `Sec-WebSocket-Protocol: <marker>, <token>`.
    Protocol,
}

/// Options of `framegate load`.
#[derive(Debug, Clone, clap::Args)]
pub struct LoadArgs {
    /// Target URL: ws://host:port/path (a query is allowed; wss is not supported).
    #[arg(value_name = "URL")]
    pub url: String,

    /// Scenario each connection runs.
    #[arg(long, value_enum, default_value_t = Scenario::Echo)]
    pub scenario: Scenario,

    /// Connections (virtual users) to open; in the connect scenario, concurrent connect loops.
    #[arg(long, value_name = "N", default_value_t = 100)]
    pub connections: u32,

    /// New connections per second while ramping up; 0 opens all at once. The ramp may last at
    /// most one day.
    #[arg(long, value_name = "PER_SEC", default_value_t = 0.0)]
    pub ramp: f64,

    /// Seconds of load after the ramp, at least 0.1; the run then drains and closes by itself.
    #[arg(long, value_name = "SECS", default_value_t = 10.0)]
    pub duration: f64,

    /// Message payload size in bytes (JSON messages are never shorter than their fields).
    #[arg(long, value_name = "BYTES", default_value_t = 64)]
    pub size: usize,

    /// Open loop: aggregate messages per second over all sending connections, each due at a
    /// fixed time. Without --rate the load is closed loop (see --window).
    #[arg(long, value_name = "MSG_PER_SEC", conflicts_with = "window")]
    pub rate: Option<f64>,

    /// Closed loop: messages outstanding per connection [default: 1].
    #[arg(long, value_name = "N")]
    pub window: Option<u32>,

    /// Share of connections that send, from 0 to 1; the others stay connected and idle.
    #[arg(long, value_name = "RATIO", default_value_t = 1.0)]
    pub active_ratio: f64,

    /// Client worker threads; 0 means one per core in --cpu-list, or per core available.
    #[arg(long, value_name = "N", default_value_t = 0)]
    pub workers: usize,

    /// Cores to pin the workers to, such as 2-3 or 0,2 [default: the cores available].
    #[arg(long, value_name = "LIST")]
    pub cpu_list: Option<String>,

    /// Local addresses to bind before connecting, used in turn, such as
    /// 127.0.0.2-127.0.0.40; each address gives about 28,000 ports to one server port.
    #[arg(long, value_name = "LIST")]
    pub source_addrs: Option<String>,

    /// Send no token.
    #[arg(long, conflicts_with_all = ["token_file", "jwt_private_key"])]
    pub no_auth: bool,

    /// Environment variable with the HMAC secret used to mint one token per user.
    #[arg(long, value_name = "VAR", default_value = "FRAMEGATE_JWT_SECRET")]
    pub jwt_secret_env: String,

    /// PEM private key used to mint tokens instead of a secret (with --jwt-alg): PKCS#8, as
    /// `openssl genpkey` writes it, or PKCS#1 RSA. Convert a SEC 1 `EC PRIVATE KEY` (from
    /// `openssl ecparam -genkey`) with `openssl pkcs8 -topk8 -nocrypt`.
    #[arg(long, value_name = "FILE", conflicts_with = "token_file")]
    pub jwt_private_key: Option<PathBuf>,

    /// JWT algorithm for minted tokens, such as HS256 or ES256.
    #[arg(long, value_name = "ALG", default_value = "HS256")]
    pub jwt_alg: String,

    /// File with one token per line, used in turn by the users; their `sub` claims become
    /// the user ids.
    #[arg(long, value_name = "FILE")]
    pub token_file: Option<PathBuf>,

    /// Place of the token in the upgrade request.
    #[arg(long, value_enum, default_value_t = TokenIn::Header)]
    pub token_in: TokenIn,

    /// Query parameter name for --token-in query.
    #[arg(long, value_name = "NAME", default_value = "access_token")]
    pub query_param: String,

    /// Subprotocol offered before the token for --token-in protocol.
    #[arg(long, value_name = "NAME", default_value = "framegate.jwt")]
    pub protocol_marker: String,

    /// Prefix of minted user ids: user N is <prefix>N.
    #[arg(long, value_name = "TEXT", default_value = "user-")]
    pub user_prefix: String,

    /// Send plain text `<conn>-<seq>` padded to --size instead of JSON chat messages, for
    /// servers that do not check JSON.
    #[arg(long)]
    pub raw: bool,

    /// Share of messages replaced by faults (oversize, malformed JSON, over the rate limit),
    /// from 0 to 1; each must get the expected close code or error frame.
    #[arg(long, value_name = "RATIO", default_value_t = 0.0)]
    pub invalid_ratio: f64,

    /// Seed for the choice of faults, so a run injects the same ones again. Masking keys and
    /// handshake nonces are random in every run.
    #[arg(long, value_name = "N", default_value_t = 1)]
    pub seed: u64,

    /// The server's max_message_bytes, for oversize faults (bytes).
    #[arg(long, value_name = "BYTES", default_value_t = 10_240)]
    pub server_max_message_bytes: usize,

    /// The server's per-connection rate_per_sec, for over-rate faults; 0 disables them.
    #[arg(long, value_name = "PER_SEC", default_value_t = 50)]
    pub server_rate_per_sec: u32,

    /// The server's per-connection burst, for over-rate faults (messages).
    #[arg(long, value_name = "N", default_value_t = 100)]
    pub server_burst: u32,

    /// The server's max_violations, which faults in a row stay below.
    #[arg(long, value_name = "N", default_value_t = 10)]
    pub server_max_violations: u32,

    /// Seconds allowed for TCP connect and upgrade.
    #[arg(long, value_name = "SECS", default_value_t = 10.0)]
    pub connect_timeout: f64,

    /// Seconds to wait for the replies to outstanding messages after the run.
    #[arg(long, value_name = "SECS", default_value_t = 5.0)]
    pub drain_timeout: f64,

    /// Seconds to wait for the server's close frame and TCP close after ours.
    #[arg(long, value_name = "SECS", default_value_t = 2.0)]
    pub close_timeout: f64,

    /// Also write the summary as JSON to this file.
    #[arg(long, value_name = "FILE")]
    pub json: Option<PathBuf>,

    /// Exit with status 1 when any error was counted.
    #[arg(long)]
    pub fail_on_error: bool,

    /// Do not print the progress line every second.
    #[arg(long)]
    pub quiet: bool,
}

/// Error that stops a load run from starting or finishing.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error("cannot read --{option} {}: {source}", path.display())]
    ReadFile {
        option: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot resolve {host}:{port}: {reason}")]
    Resolve {
        host: String,
        port: u16,
        reason: String,
    },
    #[error(
        "environment variable {variable} is not set or empty; set it to the server's HMAC secret, or use --token-file, --jwt-private-key or --no-auth"
    )]
    SecretMissing { variable: String },
    #[error("cannot mint tokens: {0}")]
    Signer(#[from] AuthSetupError),
    #[error("invalid --{option} {value}: {reason}")]
    Option {
        option: &'static str,
        value: String,
        reason: String,
    },
    #[error("invalid option: {0}")]
    Plan(#[from] PlanError),
    #[error("--token-file {} has no tokens", path.display())]
    TokenFileEmpty { path: PathBuf },
    #[error("invalid target URL: {0}")]
    Url(#[from] UrlError),
    #[error("cannot write --json {}: {source}", path.display())]
    WriteJson {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("client worker {index} failed: {message}")]
    Worker { index: usize, message: String },
    #[error("{0}")]
    IoUring(String),
}

/// Load model of a run.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) enum LoadModel {
    Open { rate: f64 },
    Closed { window: u32 },
}

/// Fault injection settings derived from the options.
#[derive(Debug, Clone)]
pub(crate) struct InjectionPlan {
    pub ratio: f64,
    pub kinds: Vec<Injection>,
    pub max_violations: u32,
    /// Size of an oversize message: one byte over the server's cap.
    pub oversize_bytes: usize,
    /// Valid messages sent just before an over-rate message: the server's burst.
    pub burst: u32,
    /// Time for the server's bucket to refill completely, with a margin.
    pub refill: Duration,
}

/// Everything the workers share, fixed before they start, except the clock, which starts once
/// every worker has built its users.
#[derive(Debug)]
pub(crate) struct RunConfig {
    pub url: WsUrl,
    pub addr: SocketAddr,
    pub scenario: Scenario,
    pub connections: u32,
    pub workers: usize,
    pub shape: MessageShape,
    pub load: LoadModel,
    pub active_ratio: f64,
    /// Connections that send (relay: pairs that send).
    pub senders: u32,
    pub ramp_per_sec: f64,
    /// Time from the start to the last connection of the ramp.
    pub ramp_time: Duration,
    /// Time of load after the ramp.
    pub duration: Duration,
    /// Start and end times of the run, set by [`RunConfig::start_clock`].
    clock: OnceLock<Clock>,
    pub connect_timeout: Duration,
    pub drain_timeout: Duration,
    pub close_timeout: Duration,
    pub tokens: TokenSource,
    pub placement: TokenPlacement,
    pub user_prefix: String,
    pub source_addrs: Vec<IpAddr>,
    pub seed: u64,
    /// Bytes requested per read on connections that receive messages.
    pub read_bytes: usize,
    /// Largest server frame accepted before the connection counts as a protocol error.
    pub max_frame_bytes: usize,
    pub injection: Option<InjectionPlan>,
}

/// When the run starts and ends.
#[derive(Debug, Clone, Copy)]
struct Clock {
    epoch: Instant,
    /// Wall-clock time of `epoch`, in milliseconds since the Unix epoch.
    epoch_unix_ms: u64,
    /// When the last connection of the ramp is due; the steady window runs from here to
    /// `deadline`.
    ramp_end: Instant,
    deadline: Instant,
}

impl RunConfig {
    /// Starts the run's clock [`START_DELAY`] from now. Later calls change nothing.
    pub fn start_clock(&self) {
        let epoch = Instant::now() + START_DELAY;
        let epoch_unix_ms = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |since| {
                u64::try_from(since.as_millis()).unwrap_or(u64::MAX)
            })
            .saturating_add(u64::try_from(START_DELAY.as_millis()).unwrap_or(0));
        let ramp_end = epoch + self.ramp_time;
        let _ = self.clock.set(Clock {
            epoch,
            epoch_unix_ms,
            ramp_end,
            deadline: ramp_end + self.duration,
        });
    }

    fn clock(&self) -> Clock {
        // Before `start_clock` every instant is now, so nothing waits on an unset clock.
        self.clock.get().copied().unwrap_or_else(|| {
            let now = Instant::now();
            Clock {
                epoch: now,
                epoch_unix_ms: 0,
                ramp_end: now,
                deadline: now,
            }
        })
    }

    /// Returns when the run starts: the first connection of the ramp is due.
    pub fn epoch(&self) -> Instant {
        self.clock().epoch
    }

    /// Returns when the load stops and the drain begins.
    pub fn deadline(&self) -> Instant {
        self.clock().deadline
    }

    /// Returns the latest time any connection may still be working: the deadline, then the
    /// drain of outstanding replies, then a close handshake. Writes and upgrades still
    /// waiting then are abandoned, so a server that stops reading cannot hold the run.
    pub fn run_end(&self) -> Instant {
        self.deadline() + self.drain_timeout + self.close_timeout
    }

    /// Returns true when `now` falls between the end of the ramp and the deadline.
    pub fn in_steady_window(&self, now: Instant) -> bool {
        let clock = self.clock();
        now >= clock.ramp_end && now < clock.deadline
    }

    fn steady_window(&self) -> stats::SteadyWindow {
        let clock = self.clock();
        let offset_ms = |instant: Instant| {
            let since = instant.saturating_duration_since(clock.epoch);
            u64::try_from(since.as_millis()).unwrap_or(u64::MAX)
        };
        stats::SteadyWindow {
            from_unix_ms: clock
                .epoch_unix_ms
                .saturating_add(offset_ms(clock.ramp_end)),
            to_unix_ms: clock
                .epoch_unix_ms
                .saturating_add(offset_ms(clock.deadline)),
        }
    }
}

/// Counters one worker publishes for the progress line.
#[derive(Debug, Default)]
pub(crate) struct Progress {
    pub open: AtomicU64,
    pub handshakes: AtomicU64,
    pub sent: AtomicU64,
    pub received: AtomicU64,
    pub errors: AtomicU64,
    pub done: AtomicBool,
}

/// Runs `framegate load` and returns the exit status: 0 after a clean run, 1 when no
/// connection could be upgraded or when errors were counted and `--fail-on-error` is set, 2
/// when the options or the setup are invalid.
pub fn main(args: LoadArgs) -> ExitCode {
    let filter = tracing_subscriber::EnvFilter::try_from_env("FRAMEGATE_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr)
        .try_init();

    match run(&args) {
        Ok(summary) => {
            print!("{}", summary.render());
            if summary.handshakes == 0 {
                let cause = summary
                    .first_error
                    .as_deref()
                    .unwrap_or("no error was recorded");
                eprintln!(
                    "error: no connection to {} was upgraded ({cause}); check that the server \
                     runs and accepts the URL, token and source addresses given",
                    args.url
                );
                ExitCode::from(1)
            } else if summary.error_total > 0 && args.fail_on_error {
                ExitCode::from(1)
            } else {
                ExitCode::SUCCESS
            }
        }
        Err(err) => {
            eprintln!("error: {err}");
            ExitCode::from(2)
        }
    }
}

/// Plans, runs and summarizes one load run.
pub fn run(args: &LoadArgs) -> Result<stats::Summary, LoadError> {
    let setup = prepare(args)?;
    // Opened before the run, so a path that cannot be written fails at once and does not
    // throw away a finished run.
    let json_file = match &args.json {
        Some(path) => Some(
            std::fs::File::create(path).map_err(|source| LoadError::WriteJson {
                path: path.clone(),
                source,
            })?,
        ),
        None => None,
    };
    raise_file_limit(args.connections);
    crate::runtime::probe().map_err(LoadError::IoUring)?;

    let config = Arc::new(setup.config);
    let workers = config.workers;
    let mut assignments: Vec<Vec<u32>> = vec![Vec::new(); workers];
    let pairs = config.scenario == Scenario::Relay;
    for index in 0..config.connections {
        if let Some(list) = assignments.get_mut(plan::worker_for(index, pairs, workers)) {
            list.push(index);
        }
    }

    let progress: Vec<Arc<Progress>> = (0..workers).map(|_| Arc::default()).collect();
    let mut threads = Vec::with_capacity(workers);
    let (ready, all_ready) = mpsc::channel();
    let mut go_senders = Vec::with_capacity(workers);
    for (index, users) in assignments.into_iter().enumerate() {
        let core = setup.cores.get(index % setup.cores.len().max(1)).copied();
        let config = Arc::clone(&config);
        let counters = Arc::clone(&progress[index]);
        let (go_sender, go) = mpsc::channel();
        go_senders.push(go_sender);
        let gate = client::StartGate {
            ready: ready.clone(),
            go,
        };
        let thread = std::thread::Builder::new()
            .name(format!("framegate-load{index}"))
            .spawn(move || {
                let result = client::run_worker(index, core, config, users, gate, &counters);
                // Also on failure, so the progress line stops waiting for this worker.
                counters.done.store(true, Ordering::Relaxed);
                result
            })
            .map_err(|err| LoadError::Worker {
                index,
                message: err.to_string(),
            })?;
        threads.push(thread);
    }
    // The clock starts once every worker has built its users (minting a token each), so a
    // large run does not lose the start of its ramp. A worker that failed counts as ready.
    drop(ready);
    while all_ready.recv().is_ok() {}
    config.start_clock();
    for go in go_senders {
        let _ = go.send(());
    }

    if !args.quiet {
        report_progress(&config, &progress);
    }

    let mut total = Stats::new();
    for (index, thread) in threads.into_iter().enumerate() {
        let stats = match thread.join() {
            Ok(Ok(stats)) => stats,
            Ok(Err(message)) => return Err(LoadError::Worker { index, message }),
            Err(_) => {
                return Err(LoadError::Worker {
                    index,
                    message: "panicked".to_owned(),
                });
            }
        };
        total.merge(&stats);
    }

    let elapsed = config.deadline().saturating_duration_since(config.epoch());
    let summary = total.summary(setup.info, elapsed, config.steady_window());
    if let (Some(path), Some(mut file)) = (&args.json, json_file) {
        let text = serde_json::to_string_pretty(&summary).unwrap_or_default();
        if let Err(source) = std::io::Write::write_all(&mut file, (text + "\n").as_bytes()) {
            // The summary still reaches stdout.
            eprintln!(
                "error: {}",
                LoadError::WriteJson {
                    path: path.clone(),
                    source
                }
            );
        }
    }
    Ok(summary)
}

/// Prints one line per second on stderr until every worker is done.
fn report_progress(config: &RunConfig, progress: &[Arc<Progress>]) {
    let sum = |field: fn(&Progress) -> &AtomicU64| -> u64 {
        progress
            .iter()
            .map(|worker| field(worker).load(Ordering::Relaxed))
            .sum()
    };
    let mut last = (0u64, 0u64, 0u64);
    let mut tick = config.epoch() + Duration::from_secs(1);
    loop {
        let now = Instant::now();
        if tick > now {
            std::thread::sleep((tick - now).min(Duration::from_millis(100)));
            if progress
                .iter()
                .all(|worker| worker.done.load(Ordering::Relaxed))
            {
                return;
            }
            continue;
        }
        let sent = sum(|worker| &worker.sent);
        let received = sum(|worker| &worker.received);
        let handshakes = sum(|worker| &worker.handshakes);
        eprintln!(
            "[{:>4.0}s] open {:>6}  sent {:>8}/s  received {:>8}/s  handshakes {:>6}/s  errors so far {}",
            tick.saturating_duration_since(config.epoch()).as_secs_f64(),
            sum(|worker| &worker.open),
            sent.saturating_sub(last.0),
            received.saturating_sub(last.1),
            handshakes.saturating_sub(last.2),
            sum(|worker| &worker.errors),
        );
        last = (sent, received, handshakes);
        tick += Duration::from_secs(1);
    }
}

/// Raises the soft limit on open files to the hard limit, and warns when that is still below
/// what `connections` need.
fn raise_file_limit(connections: u32) {
    let limit = match rlimit::increase_nofile_limit(u64::MAX) {
        Ok(limit) => limit,
        Err(err) => {
            tracing::warn!(error = %err, "cannot raise the open-file limit");
            return;
        }
    };
    let needed = u64::from(connections) + 64;
    if limit < needed {
        tracing::warn!(
            limit,
            needed,
            "open-file limit is below the connection count; raise the hard limit (ulimit -Hn, LimitNOFILE=) or expect connect errors"
        );
    }
}

/// A checked plan: the shared run configuration, the cores and what the summary repeats.
struct Setup {
    config: RunConfig,
    cores: Vec<core_affinity::CoreId>,
    info: RunInfo,
}

fn option_error(option: &'static str, value: impl ToString, reason: &str) -> LoadError {
    LoadError::Option {
        option,
        value: value.to_string(),
        reason: reason.to_owned(),
    }
}

/// Shortest `--duration` accepted.
const MIN_DURATION: Duration = Duration::from_millis(100);

/// Maximum ramp length accepted, in seconds: one day.
const MAX_RAMP_SECS: f64 = 86_400.0;

fn seconds(option: &'static str, value: f64) -> Result<Duration, LoadError> {
    if !value.is_finite() || !(0.0..=86_400.0 * 365.0).contains(&value) {
        return Err(option_error(
            option,
            value,
            "expected a number of seconds from 0 to one year",
        ));
    }
    Ok(Duration::from_secs_f64(value))
}

/// Checks the options and builds the run configuration.
fn prepare(args: &LoadArgs) -> Result<Setup, LoadError> {
    let url = WsUrl::parse(&args.url)?;
    let addr = resolve(&url)?;

    if args.connections == 0 {
        return Err(option_error(
            "connections",
            0,
            "at least 1 connection is needed",
        ));
    }
    // Both go into the request head unescaped, so they are limited to characters that need
    // no escaping there.
    let unreserved = |byte: u8| byte.is_ascii_alphanumeric() || b"-._~".contains(&byte);
    if args.query_param.is_empty() || !args.query_param.bytes().all(unreserved) {
        return Err(option_error(
            "query-param",
            format_args!("{:?}", args.query_param),
            "expected a name of letters, digits and - . _ ~",
        ));
    }
    // RFC 6455 §4.1: a subprotocol is an HTTP token (RFC 9110 §5.6.2).
    let marker = args.protocol_marker.as_bytes();
    if marker.is_empty() || !crate::http::all_in(&crate::http::TCHAR, marker) {
        return Err(option_error(
            "protocol-marker",
            format_args!("{:?}", args.protocol_marker),
            "expected a subprotocol name of letters, digits and !#$%&'*+-.^_`|~ (an HTTP token)",
        ));
    }
    if args.scenario == Scenario::Relay && args.connections < 2 {
        return Err(option_error(
            "connections",
            args.connections,
            "the relay scenario needs at least 2 connections (one pair)",
        ));
    }
    if args.scenario == Scenario::Relay && !args.connections.is_multiple_of(2) {
        tracing::warn!(
            connections = args.connections,
            "the relay scenario pairs connections, so the last one has no peer and only holds \
             its connection open; give an even --connections to use every connection"
        );
    }
    if args.size == 0 || args.size > MAX_MESSAGE_BYTES {
        return Err(option_error("size", args.size, "expected 1 byte to 64 MiB"));
    }
    if !(0.0..=1.0).contains(&args.active_ratio) {
        return Err(option_error(
            "active-ratio",
            args.active_ratio,
            "expected 0 to 1",
        ));
    }
    if !(0.0..=1.0).contains(&args.invalid_ratio) {
        return Err(option_error(
            "invalid-ratio",
            args.invalid_ratio,
            "expected 0 to 1",
        ));
    }
    if !args.ramp.is_finite() || args.ramp < 0.0 {
        return Err(option_error(
            "ramp",
            args.ramp,
            "expected 0 or more connections per second",
        ));
    }
    let duration = seconds("duration", args.duration)?;
    // Below this, the run can end before every connection has even been attempted.
    if duration < MIN_DURATION {
        return Err(option_error(
            "duration",
            args.duration,
            "expected at least 0.1 seconds of load after the ramp",
        ));
    }
    let connect_timeout = seconds("connect-timeout", args.connect_timeout)?;
    if connect_timeout.is_zero() {
        return Err(option_error(
            "connect-timeout",
            args.connect_timeout,
            "expected more than 0 seconds, or every connect would time out",
        ));
    }
    let drain_timeout = seconds("drain-timeout", args.drain_timeout)?;
    let close_timeout = seconds("close-timeout", args.close_timeout)?;

    let load = match (args.rate, args.window) {
        (Some(rate), _) if !rate.is_finite() || rate <= 0.0 => {
            return Err(option_error(
                "rate",
                rate,
                "expected more than 0 messages per second",
            ));
        }
        (Some(rate), _) => LoadModel::Open { rate },
        (None, Some(0)) => return Err(option_error("window", 0, "expected at least 1")),
        (None, window) => LoadModel::Closed {
            window: window.unwrap_or(1),
        },
    };

    let injection = injection_plan(args, load)?;
    let tokens = token_source(args, duration)?;

    let cores = match &args.cpu_list {
        Some(list) => plan::parse_cpu_list(list)?
            .into_iter()
            .map(|id| core_affinity::CoreId { id })
            .collect(),
        None => core_affinity::get_core_ids().unwrap_or_default(),
    };
    // A worker without a connection would only add a thread.
    let workers = match args.workers {
        0 => cores.len().max(1),
        workers => workers,
    }
    .min(
        usize::try_from(args.connections)
            .unwrap_or(usize::MAX)
            .max(1),
    );
    let source_addrs = match &args.source_addrs {
        Some(list) => plan::parse_source_addrs(list)?,
        None => Vec::new(),
    };
    if let Some(other) = source_addrs
        .iter()
        .find(|source| source.is_ipv4() != addr.is_ipv4())
    {
        return Err(option_error(
            "source-addrs",
            other,
            &format!(
                "the target {addr} is IPv{}; give source addresses of the same family",
                if addr.is_ipv4() { 4 } else { 6 }
            ),
        ));
    }

    let senders = match args.scenario {
        Scenario::Echo => (0..args.connections)
            .filter(|&index| plan::is_active(index, args.active_ratio))
            .count(),
        Scenario::Relay => (0..args.connections / 2)
            .filter(|&pair| plan::is_active(pair, args.active_ratio))
            .count(),
        Scenario::Connect => usize::try_from(args.connections).unwrap_or(usize::MAX),
    };
    let senders = u32::try_from(senders).unwrap_or(u32::MAX);

    let ramp_time = if args.ramp > 0.0 {
        let secs = f64::from(args.connections) / args.ramp;
        if secs > MAX_RAMP_SECS {
            return Err(option_error(
                "ramp",
                args.ramp,
                &format!(
                    "{} connections at this rate take {secs:.0} s to open; expected a ramp of at most one day, so at least {:.3} connections per second",
                    args.connections,
                    f64::from(args.connections) / MAX_RAMP_SECS
                ),
            ));
        }
        Duration::from_secs_f64(secs)
    } else {
        Duration::ZERO
    };

    let window = match load {
        LoadModel::Closed { window } => window,
        LoadModel::Open { .. } => 1,
    };
    let read_bytes = args
        .size
        .saturating_add(16)
        .saturating_mul(usize::try_from(window).unwrap_or(1).max(2))
        .clamp(4096, 1 << 20);

    let info = RunInfo {
        target: args.url.clone(),
        scenario: format!("{:?}", args.scenario).to_lowercase(),
        connections: args.connections,
        workers,
        message_bytes: args.size,
        load_model: match load {
            LoadModel::Open { .. } => "open".to_owned(),
            LoadModel::Closed { .. } => "closed".to_owned(),
        },
        rate_per_sec: args.rate,
        window: matches!(load, LoadModel::Closed { .. }).then_some(window),
    };
    let config = RunConfig {
        url,
        addr,
        scenario: args.scenario,
        connections: args.connections,
        workers,
        shape: MessageShape {
            size: args.size,
            raw: args.raw,
        },
        load,
        active_ratio: args.active_ratio,
        senders,
        ramp_per_sec: args.ramp,
        ramp_time,
        duration,
        clock: OnceLock::new(),
        connect_timeout,
        drain_timeout,
        close_timeout,
        tokens,
        placement: TokenPlacement {
            kind: args.token_in,
            query_param: args.query_param.clone(),
            protocol_marker: args.protocol_marker.clone(),
        },
        user_prefix: args.user_prefix.clone(),
        source_addrs,
        seed: args.seed,
        read_bytes,
        max_frame_bytes: args.size.saturating_mul(2).max(16 << 20),
        injection,
    };
    Ok(Setup {
        config,
        cores,
        info,
    })
}

fn resolve(url: &WsUrl) -> Result<SocketAddr, LoadError> {
    let resolve_error = |reason: String| LoadError::Resolve {
        host: url.host.clone(),
        port: url.port,
        reason,
    };
    let mut addrs = (url.host.as_str(), url.port)
        .to_socket_addrs()
        .map_err(|err| resolve_error(err.to_string()))?;
    addrs
        .next()
        .ok_or_else(|| resolve_error("no address found".to_owned()))
}

/// Decides which faults `--invalid-ratio` may inject, and how.
fn injection_plan(args: &LoadArgs, load: LoadModel) -> Result<Option<InjectionPlan>, LoadError> {
    if args.invalid_ratio <= 0.0 {
        return Ok(None);
    }
    if args.raw {
        return Err(option_error(
            "invalid-ratio",
            args.invalid_ratio,
            "faults are JSON chat messages and need a framegate server; drop --raw",
        ));
    }
    if args.scenario == Scenario::Connect {
        return Err(option_error(
            "invalid-ratio",
            args.invalid_ratio,
            "the connect scenario sends no messages",
        ));
    }
    let mut kinds = vec![Injection::MalformedJson];
    if args.server_max_message_bytes > 0 {
        kinds.push(Injection::Oversize);
    }
    let refill = if args.server_rate_per_sec > 0 {
        kinds.push(Injection::OverRate);
        let full = f64::from(args.server_burst.max(1)) / f64::from(args.server_rate_per_sec);
        // 20 % and 10 ms of margin over the time the bucket needs to fill from empty.
        Duration::from_secs_f64(full * 1.2) + Duration::from_millis(10)
    } else {
        Duration::ZERO
    };
    // A closed loop sends each message as soon as the previous response arrives, so its
    // rate per connection has no bound and valid messages would be rate limited too.
    if let (LoadModel::Closed { window }, true) = (load, args.server_rate_per_sec > 0) {
        return Err(option_error(
            "invalid-ratio",
            args.invalid_ratio,
            &format!(
                "a closed loop (--window {window}, no --rate) sends as fast as replies come back, so against a server limited to --server-rate-per-sec {} valid messages would be rate limited too; use an open loop (--rate, at most half of --server-rate-per-sec per connection), or pass --server-rate-per-sec 0 if the server has no rate limit",
                args.server_rate_per_sec
            ),
        ));
    }
    Ok(Some(InjectionPlan {
        ratio: args.invalid_ratio,
        kinds,
        max_violations: args.server_max_violations.max(2),
        oversize_bytes: args.server_max_message_bytes.saturating_add(1),
        burst: args.server_burst,
        refill,
    }))
}

/// Builds the token source from the authentication options.
fn token_source(args: &LoadArgs, duration: Duration) -> Result<TokenSource, LoadError> {
    if args.no_auth {
        return Ok(TokenSource::None);
    }
    if let Some(path) = &args.token_file {
        let text = std::fs::read_to_string(path).map_err(|source| LoadError::ReadFile {
            option: "token-file",
            path: path.clone(),
            source,
        })?;
        let tokens = tokens::parse_token_file(&text);
        if tokens.is_empty() {
            return Err(LoadError::TokenFileEmpty { path: path.clone() });
        }
        // Tokens are used in turn, so with fewer tokens than connections some users share
        // an id. In the relay scenario a delivery then goes to every connection of that
        // user, and the copies do not match.
        if args.scenario == Scenario::Relay && tokens.len() < args.connections as usize {
            return Err(option_error(
                "token-file",
                path.display(),
                &format!(
                    "the file has {} tokens, and the relay scenario needs one per connection ({}), each for a different user",
                    tokens.len(),
                    args.connections
                ),
            ));
        }
        if args.scenario == Scenario::Relay {
            let mut seen = std::collections::HashSet::new();
            if let Some(repeated) = tokens
                .iter()
                .take(args.connections as usize)
                .filter_map(|token| tokens::unverified_sub(token))
                .find(|sub| !seen.insert(sub.clone()))
            {
                return Err(option_error(
                    "token-file",
                    path.display(),
                    &format!(
                        "two tokens have the sub {repeated:?}, and the relay scenario needs a different user for each connection"
                    ),
                ));
            }
        }
        return Ok(TokenSource::File { tokens });
    }

    let algorithm: jsonwebtoken::Algorithm = args.jwt_alg.parse().map_err(|_| {
        option_error(
            "jwt-alg",
            &args.jwt_alg,
            "expected one of HS256, HS384, HS512, RS256, RS384, RS512, PS256, PS384, PS512, ES256, ES384, EdDSA",
        )
    })?;
    let signer = match &args.jwt_private_key {
        Some(_) if args.jwt_alg.starts_with("HS") => {
            return Err(option_error(
                "jwt-alg",
                &args.jwt_alg,
                "an HMAC algorithm signs with a secret, not with --jwt-private-key; pass the key's algorithm, such as --jwt-alg ES256, RS256 or EdDSA",
            ));
        }
        Some(path) => {
            let pem = std::fs::read(path).map_err(|source| LoadError::ReadFile {
                option: "jwt-private-key",
                path: path.clone(),
                source,
            })?;
            Signer::from_private_pem(algorithm, &pem)?
        }
        None => {
            let secret = std::env::var_os(&args.jwt_secret_env)
                .map(std::ffi::OsString::into_encoded_bytes)
                .filter(|secret| !secret.is_empty())
                .ok_or_else(|| LoadError::SecretMissing {
                    variable: args.jwt_secret_env.clone(),
                })?;
            Signer::from_secret(algorithm, &secret)?
        }
    };
    let run_secs = duration
        .as_secs()
        .saturating_add(u64::from(args.connections));
    Ok(TokenSource::Mint {
        signer,
        ttl_secs: run_secs.saturating_add(TOKEN_TTL_MARGIN_SECS),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        load: LoadArgs,
    }

    fn parse(extra: &[&str]) -> LoadArgs {
        let mut argv = vec!["load", "ws://127.0.0.1:9/ws", "--no-auth"];
        argv.extend_from_slice(extra);
        Cli::try_parse_from(argv).unwrap().load
    }

    #[test]
    fn relay_token_file_needs_a_user_per_connection() {
        use base64::Engine as _;
        let token = |sub: &str| {
            let claims = format!("{{\"sub\":\"{sub}\"}}");
            let payload = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(claims);
            format!("e30.{payload}.sig")
        };
        let path = std::env::temp_dir().join(format!("framegate-tokens-{}", std::process::id()));
        let prepare_with = |lines: &[String]| {
            std::fs::write(&path, lines.join("\n")).unwrap();
            let argv = ["load", "ws://127.0.0.1:9/ws", "--scenario", "relay"];
            let path_arg = path.to_str().unwrap();
            let extra = ["--connections", "2", "--token-file", path_arg];
            let args = Cli::try_parse_from(argv.iter().chain(&extra)).unwrap().load;
            prepare(&args).map(|_| ())
        };
        assert!(prepare_with(&[token("ann"), token("bob")]).is_ok());
        let repeated = prepare_with(&[token("ann"), token("ann")]).unwrap_err();
        assert!(repeated.to_string().contains("\"ann\""), "{repeated}");
        let short = prepare_with(&[token("ann")]).unwrap_err();
        assert!(short.to_string().contains("1 tokens"), "{short}");
        let _ = std::fs::remove_file(&path);
    }

    #[test]
    fn prepare_defaults_to_closed_loop_window_one() {
        let setup = prepare(&parse(&[])).unwrap();
        assert_eq!(setup.config.load, LoadModel::Closed { window: 1 });
        assert_eq!(setup.config.connections, 100);
        assert_eq!(setup.config.senders, 100);
        assert!(setup.config.injection.is_none());
        assert_eq!(setup.info.load_model, "closed");
    }

    #[test]
    fn prepare_rate_gives_open_loop() {
        let setup = prepare(&parse(&["--rate", "5000"])).unwrap();
        assert_eq!(setup.config.load, LoadModel::Open { rate: 5000.0 });
        assert!(Cli::try_parse_from(["load", "ws://h/", "--rate", "1", "--window", "2"]).is_err());
    }

    #[test]
    fn prepare_caps_workers_at_connections() {
        let setup = prepare(&parse(&["--workers", "100", "--connections", "4"])).unwrap();
        assert_eq!(setup.config.workers, 4);
        let setup = prepare(&parse(&["--workers", "3", "--connections", "40"])).unwrap();
        assert_eq!(setup.config.workers, 3);
    }

    #[test]
    fn prepare_counts_relay_sender_pairs() {
        let setup = prepare(&parse(&["--scenario", "relay", "--connections", "10"])).unwrap();
        assert_eq!(setup.config.senders, 5);
        let setup = prepare(&parse(&["--connections", "1000", "--active-ratio", "0.01"])).unwrap();
        assert_eq!(setup.config.senders, 10);
    }

    #[test]
    fn prepare_rejects_bad_values() {
        let cases: [&[&str]; 16] = [
            &["--connections", "0"],
            &["--query-param", "a b"],
            &["--query-param", ""],
            &["--protocol-marker", "x\r\nEvil: 1"],
            &["--duration", "0.000001"],
            &["--ramp", "1e-300"],
            &["--ramp", "1e-17"],
            &["--ramp", "1e-6", "--connections", "2"],
            &["--scenario", "relay", "--connections", "1"],
            &["--size", "0"],
            &["--rate", "0"],
            &["--window", "0"],
            &["--duration=-1"],
            &["--active-ratio", "2"],
            &["--invalid-ratio", "0.1", "--raw"],
            &["--invalid-ratio", "0.1", "--window", "200"],
        ];
        for extra in cases {
            assert!(prepare(&parse(extra)).is_err(), "{extra:?}");
        }
    }

    #[test]
    fn injection_plan_follows_server_limits() {
        let closed_loop = ["--invalid-ratio", "0.2", "--server-rate-per-sec", "100"];
        assert!(
            prepare(&parse(&closed_loop)).is_err(),
            "closed loop is rate limited"
        );

        let setup = prepare(&parse(&[
            "--invalid-ratio",
            "0.2",
            "--rate",
            "10",
            "--server-rate-per-sec",
            "100",
            "--server-burst",
            "5",
        ]))
        .unwrap();
        let injection = setup.config.injection.unwrap();
        assert_eq!(injection.oversize_bytes, 10_241);
        assert_eq!(injection.burst, 5);
        assert_eq!(injection.refill, Duration::from_millis(70));
        assert!(injection.kinds.contains(&Injection::OverRate));

        let setup = prepare(&parse(&[
            "--invalid-ratio",
            "0.2",
            "--server-rate-per-sec",
            "0",
        ]))
        .unwrap();
        let injection = setup.config.injection.unwrap();
        assert!(!injection.kinds.contains(&Injection::OverRate));
    }

    #[test]
    fn token_source_needs_secret_or_file() {
        let args = Cli::try_parse_from([
            "load",
            "ws://127.0.0.1:9/ws",
            "--jwt-secret-env",
            "FRAMEGATE_LOAD_TEST_UNSET_VARIABLE",
        ])
        .unwrap()
        .load;
        assert!(matches!(
            prepare(&args),
            Err(LoadError::SecretMissing { .. })
        ));
        assert!(
            Cli::try_parse_from(["load", "ws://h/", "--no-auth", "--token-file", "f"]).is_err()
        );
    }

    #[test]
    fn private_key_needs_its_algorithm() {
        // The key file is not read: the default HS256 is rejected first.
        let argv = [
            "load",
            "ws://127.0.0.1:9/ws",
            "--jwt-private-key",
            "key.pem",
        ];
        let args = Cli::try_parse_from(argv).unwrap().load;
        let Err(err) = prepare(&args) else {
            panic!("HS256 with a private key was accepted");
        };
        let err = err.to_string();
        assert!(err.contains("--jwt-alg ES256"), "{err}");
    }
}
