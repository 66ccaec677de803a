//! Server configuration: TOML file and command-line overrides → typed, range-checked values.
//!
//! The file is read once at start. Every option has a safe default, so `framegate serve`
//! with no file runs the embedded configuration. Unknown keys and out-of-range values are
//! rejected with a message that names the key, the value and the allowed range; the binary
//! maps that to exit status 2. Later code never re-checks these values.
//!
//! Secrets never come from the command line or the file itself: the file names an
//! environment variable or a file that holds the HMAC secret, or a PEM file with a public key.
//! This module reads no secret; `runtime` resolves them at start.

#![forbid(unsafe_code)]

use std::collections::BTreeMap;
use std::fmt;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;

use crate::message::{FieldKind, MessageRules, RequiredField};

/// Destination of valid messages.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum BackendKind {
    /// Send each valid message back to its sender (conformance runs and benchmarks).
    Echo,
    /// Forward each valid message to the application servers in `[upstream]`.
    Http,
    /// The embedded chat app: deliver a message with `to` to every connection of that user.
    Relay,
}

impl std::str::FromStr for BackendKind {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "echo" => Ok(Self::Echo),
            "http" => Ok(Self::Http),
            "relay" => Ok(Self::Relay),
            other => Err(format!(
                "invalid backend {other:?}: expected \"echo\", \"http\" or \"relay\""
            )),
        }
    }
}

/// A configuration that failed to load or validate. The message names the key, the value and
/// what is allowed.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {error}")]
    Io {
        path: PathBuf,
        error: std::io::Error,
    },
    #[error("invalid config file {path}:\n{message}")]
    Parse { path: PathBuf, message: String },
    #[error("invalid value for `{key}`: {value} ({allowed})")]
    Range {
        key: &'static str,
        value: String,
        allowed: &'static str,
    },
}

/// Returns a hint for a parse error about a value of the wrong type. `message` is the TOML
/// parser's text, which ends by naming the expected type, for integers by its Rust name.
fn type_hint(message: &str) -> Option<&'static str> {
    let (_, expected) = message.rsplit_once(", expected ")?;
    let hint = match expected.trim() {
        "usize" | "u64" | "u32" | "u16" | "u8" => {
            "write a whole number of 0 or more without quotes, for example 65536"
        }
        "a boolean" => "write true or false without quotes",
        "a string" => "write the value in double quotes",
        "a sequence" => "write a list in square brackets, for example [\"10.0.0.1\"]",
        _ => return None,
    };
    Some(hint)
}

/// Parses a TOML document into the file's settings, before validation. `origin` names it in
/// error messages.
fn parse_file(text: &str, origin: &std::path::Path) -> Result<FileConfig, ConfigError> {
    toml::from_str(text).map_err(|err| {
        let mut message = err.to_string().trim_end().to_owned();
        let hint = unknown_key_hint(&message).or_else(|| type_hint(&message).map(str::to_owned));
        if let Some(hint) = hint {
            message.push('\n');
            message.push_str(&hint);
        }
        ConfigError::Parse {
            path: origin.to_path_buf(),
            message,
        }
    })
}

/// Returns a hint for a parse error about an unknown key: the known key closest to it by
/// edit distance, or the table it belongs in when it is a key of `[auth]` or `[upstream]`
/// written at the top level. `message` is the TOML parser's text, which names the unknown
/// field and lists the expected ones.
fn unknown_key_hint(message: &str) -> Option<String> {
    let rest = message.split("unknown field `").nth(1)?;
    let (unknown, rest) = rest.split_once('`')?;
    let expected: Vec<&str> = rest.split('`').skip(1).step_by(2).collect();
    let in_table = [("auth", AUTH_KEYS), ("upstream", UPSTREAM_KEYS)]
        .into_iter()
        .find(|(_, keys)| keys.contains(&unknown) && !expected.contains(&unknown));
    if let Some((table, _)) = in_table {
        return Some(format!("`{unknown}` belongs in the [{table}] table"));
    }
    let (closest, distance) = expected
        .iter()
        .map(|key| (*key, edit_distance(unknown, key)))
        .min_by_key(|&(_, distance)| distance)?;
    (distance <= unknown.len().max(3) / 3 + 1).then(|| format!("did you mean `{closest}`?"))
}

/// Keys of the `[auth]` table, for [`unknown_key_hint`].
const AUTH_KEYS: &[&str] = &[
    "required",
    "algorithms",
    "secret_env",
    "secret_file",
    "public_key_file",
    "private_key_file",
    "issuer",
    "audience",
    "leeway_secs",
    "bearer_header",
    "query_param",
    "protocol_marker",
    "cookie",
];

/// Keys of the `[upstream]` table, for [`unknown_key_hint`].
const UPSTREAM_KEYS: &[&str] = &[
    "urls",
    "batch_max",
    "batch_delay_ms",
    "timeout_ms",
    "backoff_ms",
    "max_pending_messages",
];

/// Returns the Levenshtein distance between two strings, counted in chars.
fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut row: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut diagonal = row[0];
        row[0] = i + 1;
        for (j, &cb) in b.iter().enumerate() {
            let above = row[j + 1];
            row[j + 1] = (above + 1)
                .min(row[j] + 1)
                .min(diagonal + usize::from(ca != cb));
            diagonal = above;
        }
    }
    row[b.len()]
}

/// Rejects an admin listener on the public listener's port and address (or on the same
/// port with either address unspecified), which would fail at bind time with a message
/// that names neither setting.
fn check_listeners(listen: SocketAddr, admin: Option<SocketAddr>) -> Result<(), ConfigError> {
    let Some(admin) = admin else {
        return Ok(());
    };
    let same_ip =
        listen.ip() == admin.ip() || listen.ip().is_unspecified() || admin.ip().is_unspecified();
    if listen.port() != 0 && listen.port() == admin.port() && same_ip {
        return Err(ConfigError::Range {
            key: "admin_listen",
            value: format!("\"{admin}\""),
            allowed: "an address other than `listen`; the admin listener needs a port of its own",
        });
    }
    Ok(())
}

/// JWT settings, as written in the `[auth]` table.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AuthSettings {
    /// Reject upgrades without a token (401). When false, a connection without a token gets
    /// an anonymous user id `anon-<connection id>`; a token that is present is still verified.
    pub required: bool,
    /// Allowed JWT algorithms, all of one key family, for example `["HS256"]` or
    /// `["RS256", "PS256"]` (one RSA key).
    pub algorithms: Vec<String>,
    /// Environment variable that contains the HMAC secret (HS*).
    pub secret_env: Option<String>,
    /// File that contains the HMAC secret (HS*). Surrounding whitespace is trimmed.
    pub secret_file: Option<PathBuf>,
    /// PEM file with the public key (RS*, PS*, ES*, EdDSA).
    pub public_key_file: Option<PathBuf>,
    /// PEM file with the private key, used only by `framegate token` to mint tokens.
    pub private_key_file: Option<PathBuf>,
    /// Required `iss` claim, when set.
    pub issuer: Option<String>,
    /// Required `aud` claim, when set. When unset, a token that carries `aud` is rejected
    /// (RFC 7519 §4.1.3), so set this if the identity provider always adds one.
    pub audience: Option<String>,
    /// Clock skew allowed on `exp` and `nbf`, in seconds.
    pub leeway_secs: u64,
    /// Read the token from `Authorization: Bearer <token>`.
    pub bearer_header: bool,
    /// Query parameter that carries the token; empty string disables it.
    pub query_param: String,
    /// Subprotocol marker: the client offers `Sec-WebSocket-Protocol: <marker>, <token>` and
    /// the server answers with the marker only. Empty string disables it.
    pub protocol_marker: String,
    /// Cookie that carries the token; empty string disables it.
    pub cookie: String,
}

impl Default for AuthSettings {
    fn default() -> Self {
        Self {
            required: true,
            algorithms: vec!["HS256".to_owned()],
            secret_env: Some("FRAMEGATE_JWT_SECRET".to_owned()),
            secret_file: None,
            public_key_file: None,
            private_key_file: None,
            issuer: None,
            audience: None,
            leeway_secs: 0,
            bearer_header: true,
            query_param: "access_token".to_owned(),
            protocol_marker: "framegate.jwt".to_owned(),
            cookie: "framegate_token".to_owned(),
        }
    }
}

/// The file as written: every key optional, unknown keys rejected.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct FileConfig {
    listen: String,
    workers: usize,
    path: String,
    backend: BackendKind,
    subprotocols: Vec<String>,
    max_request_head_bytes: usize,
    max_headers: usize,
    max_message_bytes: usize,
    allow_binary: Option<bool>,
    json: bool,
    max_json_depth: usize,
    required_fields: BTreeMap<String, String>,
    rate_per_sec: u32,
    burst: u32,
    user_rate_per_sec: u32,
    user_burst: u32,
    max_violations: u32,
    max_connections: usize,
    max_connections_per_user: usize,
    upgrade_rate_per_ip: u32,
    upgrade_burst_per_ip: u32,
    max_outbound_bytes: usize,
    read_buffer_bytes: usize,
    handshake_timeout_ms: u64,
    close_timeout_ms: u64,
    delivery_queue: usize,
    ping_interval_ms: u64,
    pong_timeout_ms: u64,
    idle_timeout_ms: u64,
    max_lifetime_ms: u64,
    token_expiry_grace_ms: u64,
    drain_timeout_ms: u64,
    drain_jitter_ms: u64,
    admin_listen: String,
    demo: bool,
    proxy_protocol: bool,
    trusted_proxies: Vec<String>,
    allowed_origins: Vec<String>,
    max_pending_upgrades: usize,
    push_api_key_env: String,
    auth: AuthSettings,
    upstream: UpstreamSettings,
}

impl Default for FileConfig {
    fn default() -> Self {
        let mut required_fields = BTreeMap::new();
        required_fields.insert("conversation_id".to_owned(), "string".to_owned());
        required_fields.insert("content".to_owned(), "string".to_owned());
        Self {
            listen: "127.0.0.1:8080".to_owned(),
            workers: 0,
            path: "/ws".to_owned(),
            backend: BackendKind::Relay,
            subprotocols: Vec::new(),
            max_request_head_bytes: 8192,
            max_headers: 64,
            max_message_bytes: 10_240,
            allow_binary: None,
            json: true,
            max_json_depth: 32,
            required_fields,
            rate_per_sec: 50,
            burst: 100,
            user_rate_per_sec: 0,
            user_burst: 0,
            max_violations: 10,
            max_connections: 100_000,
            max_connections_per_user: 32,
            upgrade_rate_per_ip: 50,
            upgrade_burst_per_ip: 100,
            max_outbound_bytes: 1 << 20,
            read_buffer_bytes: 16 * 1024,
            handshake_timeout_ms: 10_000,
            close_timeout_ms: 1_000,
            delivery_queue: 4096,
            ping_interval_ms: 25_000,
            pong_timeout_ms: 10_000,
            idle_timeout_ms: 600_000,
            max_lifetime_ms: 0,
            token_expiry_grace_ms: 0,
            drain_timeout_ms: 30_000,
            drain_jitter_ms: 5_000,
            admin_listen: "127.0.0.1:9090".to_owned(),
            demo: true,
            proxy_protocol: false,
            trusted_proxies: Vec::new(),
            allowed_origins: Vec::new(),
            max_pending_upgrades: 10_000,
            push_api_key_env: "FRAMEGATE_PUSH_KEY".to_owned(),
            auth: AuthSettings::default(),
            upstream: UpstreamSettings::default(),
        }
    }
}

/// Effective configuration, range-checked.
#[derive(Debug, Clone)]
pub struct Config {
    /// Public listen address (one SO_REUSEPORT listener per worker).
    pub listen: SocketAddr,
    /// Worker threads, one per core; 0 in the file means "the cores available to the process".
    pub workers: usize,
    /// Request-target path that accepts upgrades; other paths get 404.
    pub path: String,
    /// Where valid messages go.
    pub backend: BackendKind,
    /// Application subprotocols the server can select (first client offer that matches).
    pub subprotocols: Vec<String>,
    /// Largest request head accepted before 431 (bytes). Stops oversized and slow-drip heads.
    pub max_request_head_bytes: usize,
    /// Most header fields accepted before 431.
    pub max_headers: usize,
    /// Largest message, one frame or assembled from fragments (bytes). Above it: close 1009.
    pub max_message_bytes: usize,
    /// Accept binary messages; otherwise close 1003. Defaults to `!json`.
    pub allow_binary: bool,
    /// Structure and required-field rules applied to every text message.
    pub message_rules: MessageRules,
    /// Per-connection message rate (messages per second); 0 disables the limit.
    pub rate_per_sec: u32,
    /// Per-connection burst (messages).
    pub burst: u32,
    /// Per-user message rate shared by all of a user's connections; 0 disables it.
    pub user_rate_per_sec: u32,
    /// Per-user burst (messages).
    pub user_burst: u32,
    /// Consecutive rejected messages that close the connection with 1008.
    pub max_violations: u32,
    /// Open connections per process; above it upgrades get 503.
    pub max_connections: usize,
    /// Open connections per user id; above it upgrades get 429.
    pub max_connections_per_user: usize,
    /// Upgrades per second per client IP address; 0 disables the limit.
    pub upgrade_rate_per_ip: u32,
    /// Upgrade burst per client IP address.
    pub upgrade_burst_per_ip: u32,
    /// Bytes queued for one connection before it is closed as a slow consumer (1008).
    pub max_outbound_bytes: usize,
    /// Bytes requested per socket read.
    pub read_buffer_bytes: usize,
    /// Time from accept to a complete upgrade request before the socket is closed with 408.
    pub handshake_timeout: Duration,
    /// Time the server waits for the client's TCP close after a close frame it started, and
    /// for the reply to a client's close frame to leave.
    pub close_timeout: Duration,
    /// Capacity of each worker's inbound delivery queue (messages).
    pub delivery_queue: usize,
    /// Silence after which the server pings a connection.
    pub ping_interval: Duration,
    /// Time a pinged connection has to send any frame before it is closed.
    pub pong_timeout: Duration,
    /// Time without a data message after which a connection is closed with 1001; `None`
    /// disables it.
    pub idle_timeout: Option<Duration>,
    /// Maximum connection lifetime, then close 1001; `None` disables it.
    pub max_lifetime: Option<Duration>,
    /// Time a connection may stay open after its token's `exp` before it is closed with 4001.
    pub token_expiry_grace: Duration,
    /// Maximum wait for connections to close after SIGTERM or SIGINT.
    pub drain_timeout: Duration,
    /// Window over which drain closes (and the reconnect hints in them) are spread.
    pub drain_jitter: Duration,
    /// Admin listener for /metrics, /healthz and /readyz; `None` disables it.
    pub admin_listen: Option<SocketAddr>,
    /// Serve the browser chat demo at `GET /` on the public port.
    pub demo: bool,
    /// Every connection starts with a PROXY protocol v1 or v2 header from the load balancer;
    /// its source address is the client address for limits and logs.
    pub proxy_protocol: bool,
    /// Proxies whose `X-Forwarded-For` is trusted for the client address (CIDR networks).
    /// With `proxy_protocol`, only these peers may connect.
    pub trusted_proxies: Vec<crate::proxy::IpNet>,
    /// Browser origins allowed to upgrade; empty allows any. Set it when tokens travel in
    /// cookies, so other sites cannot open connections with a visitor's cookie.
    pub allowed_origins: Vec<String>,
    /// TCP connections still in the upgrade phase, per process; above it new connections
    /// are closed at once, so idle sockets cannot use up the file descriptors.
    pub max_pending_upgrades: usize,
    /// Environment variable with the push API key; the push API is off when it is unset.
    pub push_api_key_env: String,
    /// JWT settings.
    pub auth: AuthSettings,
    /// Application servers for `backend = "http"`.
    pub upstream: Upstream,
}

impl Default for Config {
    fn default() -> Self {
        match Self::from_file_config(FileConfig::default()) {
            Ok(config) => config,
            Err(err) => unreachable!("embedded defaults must validate: {err}"),
        }
    }
}

impl Config {
    /// Parses a TOML document. `origin` names it in error messages.
    pub fn from_toml(text: &str, origin: &std::path::Path) -> Result<Self, ConfigError> {
        Self::from_file_config(parse_file(text, origin)?)
    }

    /// Reads and parses a TOML file.
    pub fn load(path: &std::path::Path) -> Result<Self, ConfigError> {
        Self::load_with_backend(Some(path), None)
    }

    /// Builds the configuration from the file at `path`, or from the embedded defaults
    /// without one, with `backend` in place of the file's `backend` when given. The override
    /// is validated with the rest, so the checks and defaults that depend on the backend
    /// (`to` required by the relay, JSON required by the relay and http) follow it.
    pub fn load_with_backend(
        path: Option<&std::path::Path>,
        backend: Option<BackendKind>,
    ) -> Result<Self, ConfigError> {
        let mut file = match path {
            Some(path) => {
                let text = std::fs::read_to_string(path).map_err(|error| ConfigError::Io {
                    path: path.to_path_buf(),
                    error,
                })?;
                parse_file(&text, path)?
            }
            None => FileConfig::default(),
        };
        if let Some(backend) = backend {
            file.backend = backend;
        }
        Self::from_file_config(file)
    }

    fn from_file_config(file: FileConfig) -> Result<Self, ConfigError> {
        let listen: SocketAddr = file.listen.parse().map_err(|_| ConfigError::Range {
            key: "listen",
            value: format!("{:?}", file.listen),
            allowed: "an IP address and port such as 127.0.0.1:8080 or [::1]:8080",
        })?;
        check_range(
            "workers",
            file.workers,
            0,
            1024,
            "0 (one per available core) to 1024",
        )?;
        if !file.path.starts_with('/') || file.path.bytes().any(|b| b <= b' ' || b == b'?') {
            return Err(ConfigError::Range {
                key: "path",
                value: format!("{:?}", file.path),
                allowed: "an absolute path starting with '/', without spaces or '?'",
            });
        }
        check_range(
            "max_request_head_bytes",
            file.max_request_head_bytes,
            256,
            1 << 20,
            "256 to 1048576 bytes",
        )?;
        check_range("max_headers", file.max_headers, 8, 1024, "8 to 1024")?;
        check_range(
            "max_message_bytes",
            file.max_message_bytes,
            1,
            64 << 20,
            "1 to 67108864 bytes",
        )?;
        check_range("max_json_depth", file.max_json_depth, 1, 512, "1 to 512")?;
        check_range("burst", file.burst as usize, 1, 1_000_000, "1 to 1000000")?;
        if file.user_rate_per_sec > 0 {
            check_range(
                "user_burst",
                file.user_burst as usize,
                1,
                1_000_000,
                "1 to 1000000 when user_rate_per_sec is set",
            )?;
        }
        check_range(
            "max_violations",
            file.max_violations as usize,
            1,
            1_000_000,
            "1 to 1000000",
        )?;
        check_range(
            "max_connections",
            file.max_connections,
            1,
            10_000_000,
            "1 to 10000000",
        )?;
        check_range(
            "max_connections_per_user",
            file.max_connections_per_user,
            1,
            1_000_000,
            "1 to 1000000",
        )?;
        if file.upgrade_rate_per_ip > 0 {
            check_range(
                "upgrade_burst_per_ip",
                file.upgrade_burst_per_ip as usize,
                1,
                1_000_000,
                "1 to 1000000 when upgrade_rate_per_ip is set",
            )?;
        }
        check_range(
            "max_outbound_bytes",
            file.max_outbound_bytes,
            4096,
            1 << 30,
            "4096 to 1073741824 bytes",
        )?;
        // An echoed or relayed message of max_message_bytes must fit in the outbound queue
        // with its frame header and the relay's added `from`, or its sender is closed as a
        // slow consumer.
        if file.max_outbound_bytes < file.max_message_bytes.saturating_add(OUTBOUND_HEADROOM) {
            return Err(ConfigError::Range {
                key: "max_outbound_bytes",
                value: file.max_outbound_bytes.to_string(),
                allowed: "at least max_message_bytes + 16384 bytes, so that one echoed or relayed message fits; raise max_outbound_bytes or lower max_message_bytes",
            });
        }
        check_range(
            "read_buffer_bytes",
            file.read_buffer_bytes,
            512,
            16 << 20,
            "512 to 16777216 bytes",
        )?;
        check_range(
            "handshake_timeout_ms",
            file.handshake_timeout_ms as usize,
            10,
            600_000,
            "10 to 600000 milliseconds",
        )?;
        check_range(
            "close_timeout_ms",
            file.close_timeout_ms as usize,
            0,
            60_000,
            "0 to 60000 milliseconds",
        )?;
        check_range(
            "delivery_queue",
            file.delivery_queue,
            16,
            1 << 20,
            "16 to 1048576",
        )?;
        check_millis(
            "ping_interval_ms",
            file.ping_interval_ms,
            100,
            "100 to 86400000 milliseconds",
        )?;
        check_millis(
            "pong_timeout_ms",
            file.pong_timeout_ms,
            100,
            "100 to 86400000 milliseconds",
        )?;
        check_millis(
            "idle_timeout_ms",
            file.idle_timeout_ms,
            0,
            "0 (off) to 86400000 milliseconds",
        )?;
        check_millis(
            "max_lifetime_ms",
            file.max_lifetime_ms,
            0,
            "0 (off) to 86400000 milliseconds",
        )?;
        check_millis(
            "token_expiry_grace_ms",
            file.token_expiry_grace_ms,
            0,
            "0 to 86400000 milliseconds",
        )?;
        check_millis(
            "drain_timeout_ms",
            file.drain_timeout_ms,
            0,
            "0 to 86400000 milliseconds",
        )?;
        check_millis(
            "drain_jitter_ms",
            file.drain_jitter_ms,
            0,
            "0 to 86400000 milliseconds",
        )?;
        let admin_listen = if file.admin_listen.is_empty() {
            None
        } else {
            Some(file.admin_listen.parse().map_err(|_| ConfigError::Range {
                key: "admin_listen",
                value: format!("{:?}", file.admin_listen),
                allowed: "an IP address and port such as 127.0.0.1:9090, or \"\" to disable",
            })?)
        };
        let mut trusted_proxies = Vec::with_capacity(file.trusted_proxies.len());
        for network in &file.trusted_proxies {
            let parsed = network.parse().map_err(|_| ConfigError::Range {
                key: "trusted_proxies",
                value: format!("{network:?}"),
                allowed: "IP addresses or CIDR networks such as \"10.0.0.0/8\" or \"::1\"",
            })?;
            trusted_proxies.push(parsed);
        }
        for origin in &file.allowed_origins {
            check_origin(origin).map_err(|allowed| ConfigError::Range {
                key: "allowed_origins",
                value: format!("{origin:?}"),
                allowed,
            })?;
        }
        check_range(
            "auth.leeway_secs",
            usize::try_from(file.auth.leeway_secs).unwrap_or(usize::MAX),
            0,
            3600,
            "0 to 3600 seconds",
        )?;
        check_range(
            "max_pending_upgrades",
            file.max_pending_upgrades,
            1,
            10_000_000,
            "1 to 10000000",
        )?;
        if file.auth.algorithms.is_empty() {
            return Err(ConfigError::Range {
                key: "auth.algorithms",
                value: "[]".to_owned(),
                allowed: "a non-empty list such as [\"HS256\"]",
            });
        }

        let mut required = Vec::with_capacity(file.required_fields.len());
        for (name, kind) in &file.required_fields {
            let kind = parse_field_kind(kind).ok_or_else(|| ConfigError::Range {
                key: "required_fields",
                value: format!("{name} = {kind:?}"),
                allowed: "one of \"string\", \"number\", \"bool\", \"object\", \"array\", \"null\", \"any\"",
            })?;
            required.push(RequiredField {
                name: name.clone(),
                kind,
            });
        }

        // The relay reads `to` as a user id string, so another configured type would reject
        // every message.
        if file.backend == BackendKind::Relay
            && let Some(field) = required.iter().find(|field| field.name == "to")
            && !matches!(field.kind, FieldKind::String | FieldKind::Any)
        {
            return Err(ConfigError::Range {
                key: "required_fields",
                value: format!("to = {:?}", field.kind.name()),
                allowed: "\"string\" or \"any\" for `to` with the relay backend, which reads it as a user id",
            });
        }
        // The relay needs a recipient: a message without `to` gets missing_field, like any
        // other required field.
        if file.backend == BackendKind::Relay && !required.iter().any(|field| field.name == "to") {
            required.push(RequiredField {
                name: "to".to_owned(),
                kind: FieldKind::String,
            });
        }

        let upstream = Upstream::from_settings(&file.upstream, file.backend)?;
        if file.backend == BackendKind::Http && (!file.json || file.allow_binary == Some(true)) {
            return Err(ConfigError::Range {
                key: "backend",
                value: "\"http\"".to_owned(),
                allowed: "the http backend needs json = true and allow_binary = false",
            });
        }
        // The relay reads the recipient from the JSON `to` field, so it has nothing to go on
        // for a message that was not checked as JSON.
        if file.backend == BackendKind::Relay && (!file.json || file.allow_binary == Some(true)) {
            return Err(ConfigError::Range {
                key: "backend",
                value: "\"relay\"".to_owned(),
                allowed: "the relay backend needs json = true and allow_binary = false, because it reads the recipient from the JSON `to` field",
            });
        }

        let workers = if file.workers == 0 {
            available_cores()
        } else {
            file.workers
        };
        check_listeners(listen, admin_listen)?;
        Ok(Self {
            listen,
            workers,
            path: file.path,
            backend: file.backend,
            subprotocols: file.subprotocols,
            max_request_head_bytes: file.max_request_head_bytes,
            max_headers: file.max_headers,
            max_message_bytes: file.max_message_bytes,
            allow_binary: file.allow_binary.unwrap_or(!file.json),
            message_rules: MessageRules {
                json: file.json,
                max_json_depth: file.max_json_depth,
                required,
            },
            rate_per_sec: file.rate_per_sec,
            burst: file.burst,
            user_rate_per_sec: file.user_rate_per_sec,
            user_burst: file.user_burst,
            max_violations: file.max_violations,
            max_connections: file.max_connections,
            max_connections_per_user: file.max_connections_per_user,
            upgrade_rate_per_ip: file.upgrade_rate_per_ip,
            upgrade_burst_per_ip: file.upgrade_burst_per_ip,
            max_outbound_bytes: file.max_outbound_bytes,
            read_buffer_bytes: file.read_buffer_bytes,
            handshake_timeout: Duration::from_millis(file.handshake_timeout_ms),
            close_timeout: Duration::from_millis(file.close_timeout_ms),
            delivery_queue: file.delivery_queue,
            ping_interval: Duration::from_millis(file.ping_interval_ms),
            pong_timeout: Duration::from_millis(file.pong_timeout_ms),
            idle_timeout: optional_millis(file.idle_timeout_ms),
            max_lifetime: optional_millis(file.max_lifetime_ms),
            token_expiry_grace: Duration::from_millis(file.token_expiry_grace_ms),
            drain_timeout: Duration::from_millis(file.drain_timeout_ms),
            drain_jitter: Duration::from_millis(file.drain_jitter_ms),
            admin_listen,
            demo: file.demo,
            proxy_protocol: file.proxy_protocol,
            trusted_proxies,
            allowed_origins: file.allowed_origins,
            max_pending_upgrades: file.max_pending_upgrades,
            push_api_key_env: file.push_api_key_env,
            auth: file.auth,
            upstream,
        })
    }

    /// Checks the listen addresses after command-line flags changed them.
    ///
    /// # Errors
    ///
    /// Returns [`ConfigError::Range`] when the admin listener would take the public port.
    pub fn check_listeners(&self) -> Result<(), ConfigError> {
        check_listeners(self.listen, self.admin_listen)
    }

    /// Sets the worker count from a command-line flag, with the same range as the file.
    pub fn set_workers(&mut self, workers: usize) -> Result<(), ConfigError> {
        check_range(
            "workers",
            workers,
            0,
            1024,
            "0 (one per available core) to 1024",
        )?;
        self.workers = if workers == 0 {
            available_cores()
        } else {
            workers
        };
        Ok(())
    }
}

/// Renders the effective configuration as TOML-like lines for logs and `check-config`.
/// Holds no secret: only the names of the variable and files that hold them.
impl fmt::Display for Config {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "listen = \"{}\"", self.listen)?;
        writeln!(f, "workers = {}", self.workers)?;
        writeln!(f, "path = {:?}", self.path)?;
        let backend = match self.backend {
            BackendKind::Echo => "echo",
            BackendKind::Http => "http",
            BackendKind::Relay => "relay",
        };
        writeln!(f, "backend = \"{backend}\"")?;
        writeln!(f, "subprotocols = {:?}", self.subprotocols)?;
        writeln!(
            f,
            "max_request_head_bytes = {}",
            self.max_request_head_bytes
        )?;
        writeln!(f, "max_headers = {}", self.max_headers)?;
        writeln!(f, "max_message_bytes = {}", self.max_message_bytes)?;
        writeln!(f, "allow_binary = {}", self.allow_binary)?;
        writeln!(f, "json = {}", self.message_rules.json)?;
        writeln!(f, "max_json_depth = {}", self.message_rules.max_json_depth)?;
        let fields: Vec<String> = self
            .message_rules
            .required
            .iter()
            .map(|field| format!("{} = \"{}\"", field.name, field.kind.name()))
            .collect();
        writeln!(f, "required_fields = {{ {} }}", fields.join(", "))?;
        writeln!(f, "rate_per_sec = {}", self.rate_per_sec)?;
        writeln!(f, "burst = {}", self.burst)?;
        writeln!(f, "user_rate_per_sec = {}", self.user_rate_per_sec)?;
        writeln!(f, "user_burst = {}", self.user_burst)?;
        writeln!(f, "max_violations = {}", self.max_violations)?;
        writeln!(f, "max_connections = {}", self.max_connections)?;
        writeln!(
            f,
            "max_connections_per_user = {}",
            self.max_connections_per_user
        )?;
        writeln!(f, "upgrade_rate_per_ip = {}", self.upgrade_rate_per_ip)?;
        writeln!(f, "upgrade_burst_per_ip = {}", self.upgrade_burst_per_ip)?;
        writeln!(f, "max_outbound_bytes = {}", self.max_outbound_bytes)?;
        writeln!(f, "read_buffer_bytes = {}", self.read_buffer_bytes)?;
        writeln!(
            f,
            "handshake_timeout_ms = {}",
            self.handshake_timeout.as_millis()
        )?;
        writeln!(f, "close_timeout_ms = {}", self.close_timeout.as_millis())?;
        writeln!(f, "delivery_queue = {}", self.delivery_queue)?;
        let millis = |value: Option<Duration>| value.map_or(0, |d| d.as_millis());
        writeln!(f, "ping_interval_ms = {}", self.ping_interval.as_millis())?;
        writeln!(f, "pong_timeout_ms = {}", self.pong_timeout.as_millis())?;
        writeln!(f, "idle_timeout_ms = {}", millis(self.idle_timeout))?;
        writeln!(f, "max_lifetime_ms = {}", millis(self.max_lifetime))?;
        writeln!(
            f,
            "token_expiry_grace_ms = {}",
            self.token_expiry_grace.as_millis()
        )?;
        writeln!(f, "drain_timeout_ms = {}", self.drain_timeout.as_millis())?;
        writeln!(f, "drain_jitter_ms = {}", self.drain_jitter.as_millis())?;
        writeln!(f, "demo = {}", self.demo)?;
        writeln!(f, "proxy_protocol = {}", self.proxy_protocol)?;
        let networks: Vec<String> = self
            .trusted_proxies
            .iter()
            .map(|n| format!("{n:?}"))
            .collect();
        writeln!(f, "trusted_proxies = {networks:?}")?;
        writeln!(f, "allowed_origins = {:?}", self.allowed_origins)?;
        writeln!(f, "max_pending_upgrades = {}", self.max_pending_upgrades)?;
        writeln!(f, "push_api_key_env = {:?}", self.push_api_key_env)?;
        match self.admin_listen {
            Some(addr) => writeln!(f, "admin_listen = \"{addr}\"")?,
            None => writeln!(f, "admin_listen = \"\"")?,
        }
        let auth = &self.auth;
        writeln!(f, "[auth]")?;
        writeln!(f, "required = {}", auth.required)?;
        writeln!(f, "algorithms = {:?}", auth.algorithms)?;
        write_optional(f, "secret_env", auth.secret_env.as_deref())?;
        let path_text = |path: &Option<PathBuf>| path.as_ref().map(|p| p.display().to_string());
        write_optional(f, "secret_file", path_text(&auth.secret_file).as_deref())?;
        write_optional(
            f,
            "public_key_file",
            path_text(&auth.public_key_file).as_deref(),
        )?;
        write_optional(
            f,
            "private_key_file",
            path_text(&auth.private_key_file).as_deref(),
        )?;
        write_optional(f, "issuer", auth.issuer.as_deref())?;
        write_optional(f, "audience", auth.audience.as_deref())?;
        writeln!(f, "leeway_secs = {}", auth.leeway_secs)?;
        writeln!(f, "bearer_header = {}", auth.bearer_header)?;
        writeln!(f, "query_param = {:?}", auth.query_param)?;
        writeln!(f, "protocol_marker = {:?}", auth.protocol_marker)?;
        writeln!(f, "cookie = {:?}", auth.cookie)?;
        let upstream = &self.upstream;
        writeln!(f, "[upstream]")?;
        let urls: Vec<&str> = upstream.urls.iter().map(|url| url.text.as_str()).collect();
        writeln!(f, "urls = {urls:?}")?;
        writeln!(f, "batch_max = {}", upstream.batch_max)?;
        writeln!(f, "batch_delay_ms = {}", upstream.batch_delay.as_millis())?;
        writeln!(f, "timeout_ms = {}", upstream.timeout.as_millis())?;
        writeln!(f, "backoff_ms = {}", upstream.backoff.as_millis())?;
        write!(
            f,
            "max_pending_messages = {}",
            upstream.max_pending_messages
        )
    }
}

/// The `[upstream]` table as written.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct UpstreamSettings {
    urls: Vec<String>,
    batch_max: usize,
    batch_delay_ms: u64,
    timeout_ms: u64,
    backoff_ms: u64,
    max_pending_messages: usize,
}

impl Default for UpstreamSettings {
    fn default() -> Self {
        Self {
            urls: Vec::new(),
            batch_max: 64,
            batch_delay_ms: 1,
            timeout_ms: 2_000,
            backoff_ms: 1_000,
            max_pending_messages: 10_000,
        }
    }
}

/// One application server URL, parsed, with its text for display.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UpstreamTarget {
    pub text: String,
    pub url: crate::upstream::UpstreamUrl,
}

/// Application servers for `backend = "http"`, range-checked.
#[derive(Debug, Clone)]
pub struct Upstream {
    /// Servers that get batches, round robin over the healthy ones.
    pub urls: Vec<UpstreamTarget>,
    /// Maximum messages in one POST.
    pub batch_max: usize,
    /// Maximum wait for more messages before a batch that is not full is sent.
    pub batch_delay: Duration,
    /// Time for one POST, from connect to the end of the response.
    pub timeout: Duration,
    /// Time a failed server is left out of the rotation.
    pub backoff: Duration,
    /// Messages queued or in flight per worker; readers wait while it is reached.
    pub max_pending_messages: usize,
}

impl Upstream {
    fn from_settings(
        settings: &UpstreamSettings,
        backend: BackendKind,
    ) -> Result<Self, ConfigError> {
        let mut urls = Vec::with_capacity(settings.urls.len());
        for text in &settings.urls {
            let url =
                crate::upstream::UpstreamUrl::parse(text).map_err(|_| ConfigError::Range {
                    key: "upstream.urls",
                    value: format!("{text:?}"),
                    allowed: "http://IP:PORT/path or http://localhost:PORT/path; https is not supported",
                })?;
            urls.push(UpstreamTarget {
                text: text.clone(),
                url,
            });
        }
        if backend == BackendKind::Http && urls.is_empty() {
            return Err(ConfigError::Range {
                key: "upstream.urls",
                value: "[]".to_owned(),
                allowed: "at least one URL when backend = \"http\"",
            });
        }
        check_range(
            "upstream.batch_max",
            settings.batch_max,
            1,
            10_000,
            "1 to 10000",
        )?;
        check_range(
            "upstream.batch_delay_ms",
            usize::try_from(settings.batch_delay_ms).unwrap_or(usize::MAX),
            0,
            10_000,
            "0 to 10000 ms",
        )?;
        check_range(
            "upstream.timeout_ms",
            usize::try_from(settings.timeout_ms).unwrap_or(usize::MAX),
            1,
            600_000,
            "1 to 600000 ms",
        )?;
        check_range(
            "upstream.backoff_ms",
            usize::try_from(settings.backoff_ms).unwrap_or(usize::MAX),
            0,
            3_600_000,
            "0 to 3600000 ms",
        )?;
        check_range(
            "upstream.max_pending_messages",
            settings.max_pending_messages,
            1,
            10_000_000,
            "1 to 10000000",
        )?;
        Ok(Self {
            urls,
            batch_max: settings.batch_max,
            batch_delay: Duration::from_millis(settings.batch_delay_ms),
            timeout: Duration::from_millis(settings.timeout_ms),
            backoff: Duration::from_millis(settings.backoff_ms),
            max_pending_messages: settings.max_pending_messages,
        })
    }
}

/// Writes `key = "value"`, or a comment saying the key is unset, so the output stays TOML.
fn write_optional(f: &mut fmt::Formatter<'_>, key: &str, value: Option<&str>) -> fmt::Result {
    match value {
        Some(value) => writeln!(f, "{key} = {value:?}"),
        None => writeln!(f, "# {key} is unset"),
    }
}

/// The form of an `allowed_origins` entry, for error messages.
const ORIGIN_FORM: &str = "an origin as browsers send it in the Origin header: http:// or https://, a host and an optional port, with no path and no trailing slash, such as \"https://chat.example.com\" or \"http://localhost:8080\"";

/// Checks that `entry` is an origin as a browser serializes it (RFC 6454 §6.2). That is
/// `http://` or `https://`, an ASCII host (a DNS name, an IPv4 address or a bracketed IPv6
/// address) and an optional port that is not the scheme's default. The handshake compares the
/// `Origin` field with the entries as strings, so an entry in any other form never matches.
/// Returns the expected form when it does not fit.
fn check_origin(entry: &str) -> Result<(), &'static str> {
    if entry.contains('*') {
        return Err(
            "an exact origin such as \"https://chat.example.com\": wildcards are not supported, so list each origin",
        );
    }
    if entry.eq_ignore_ascii_case("null") {
        return Err(
            "an origin such as \"https://chat.example.com\": \"null\" is not supported, because sandboxed frames and local files on any site send it",
        );
    }
    let (default_port, rest) = if let Some(rest) = entry.strip_prefix("https://") {
        ("443", rest)
    } else if let Some(rest) = entry.strip_prefix("http://") {
        ("80", rest)
    } else {
        return Err(ORIGIN_FORM);
    };
    if rest.ends_with('/') {
        return Err(
            "an origin without a trailing slash or path, such as \"https://chat.example.com\", which is what browsers send",
        );
    }
    if rest.contains(['/', '?', '#', '@']) {
        return Err(ORIGIN_FORM);
    }

    let (host, port) = match rest.strip_prefix('[') {
        Some(bracketed) => {
            let Some((address, after)) = bracketed.split_once(']') else {
                return Err(ORIGIN_FORM);
            };
            if address.parse::<std::net::Ipv6Addr>().is_err() {
                return Err(ORIGIN_FORM);
            }
            match after {
                "" => (address, None),
                _ => (address, Some(after.strip_prefix(':').ok_or(ORIGIN_FORM)?)),
            }
        }
        None => match rest.rsplit_once(':') {
            Some((host, port)) => (host, Some(port)),
            None => (rest, None),
        },
    };
    let host_valid = !host.is_empty()
        && (rest.starts_with('[')
            || host
                .bytes()
                .all(|byte| byte.is_ascii_alphanumeric() || byte == b'-' || byte == b'.'));
    if !host_valid {
        return Err(ORIGIN_FORM);
    }
    let Some(port) = port else {
        return Ok(());
    };
    if port == default_port {
        return Err(
            "an origin without the scheme's default port (443 for https, 80 for http), because browsers leave it out",
        );
    }
    let port_valid = !port.is_empty()
        && port.bytes().all(|byte| byte.is_ascii_digit())
        && port.parse::<u16>().is_ok_and(|port| port != 0);
    if !port_valid {
        return Err(ORIGIN_FORM);
    }
    Ok(())
}

/// Room in the outbound queue beyond one maximum-size message: its frame header and the
/// relay's added `from` member (the user id comes from a token, which fits in the request
/// head).
const OUTBOUND_HEADROOM: usize = 16 * 1024;

fn check_range(
    key: &'static str,
    value: usize,
    min: usize,
    max: usize,
    allowed: &'static str,
) -> Result<(), ConfigError> {
    if (min..=max).contains(&value) {
        return Ok(());
    }
    Err(ConfigError::Range {
        key,
        value: value.to_string(),
        allowed,
    })
}

/// Maximum value of any `*_ms` option: one day.
const MAX_MILLIS: u64 = 86_400_000;

fn check_millis(
    key: &'static str,
    value: u64,
    min: u64,
    allowed: &'static str,
) -> Result<(), ConfigError> {
    if (min..=MAX_MILLIS).contains(&value) {
        return Ok(());
    }
    Err(ConfigError::Range {
        key,
        value: value.to_string(),
        allowed,
    })
}

fn optional_millis(value: u64) -> Option<Duration> {
    (value > 0).then(|| Duration::from_millis(value))
}

fn parse_field_kind(text: &str) -> Option<FieldKind> {
    Some(match text {
        "any" => FieldKind::Any,
        "array" => FieldKind::Array,
        "bool" => FieldKind::Bool,
        "null" => FieldKind::Null,
        "number" => FieldKind::Number,
        "object" => FieldKind::Object,
        "string" => FieldKind::String,
        _ => return None,
    })
}

/// Cores this process may run on (respects taskset and cgroup CPU sets).
pub fn available_cores() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Config, ConfigError> {
        Config::from_toml(text, std::path::Path::new("test.toml"))
    }

    #[test]
    fn outbound_smaller_than_message_is_rejected() {
        let error = parse("max_message_bytes = 2097152\n").expect_err("1 MiB outbound");
        let text = error.to_string();
        assert!(text.contains("max_outbound_bytes"), "{text}");
        assert!(text.contains("max_message_bytes + 16384"), "{text}");
        assert!(parse("max_message_bytes = 2097152\nmax_outbound_bytes = 2113536\n").is_ok());
    }

    #[test]
    fn unknown_key_gets_a_hint() {
        let typo = parse("rate_per_second = 5\n")
            .expect_err("unknown key")
            .to_string();
        assert!(typo.contains("did you mean `rate_per_sec`?"), "{typo}");
        let table = parse("urls = [\"http://127.0.0.1:1/\"]\n").expect_err("misplaced");
        assert!(
            table
                .to_string()
                .contains("belongs in the [upstream] table"),
            "{table}"
        );
        let auth = parse("issuer = \"me\"\n")
            .expect_err("misplaced")
            .to_string();
        assert!(auth.contains("belongs in the [auth] table"), "{auth}");
        let far = parse("zzzzzzzzzz = 1\n")
            .expect_err("unknown key")
            .to_string();
        assert!(
            !far.contains("did you mean"),
            "no hint for a key like no other: {far}"
        );
    }

    #[test]
    fn wrong_type_gets_plain_hint() {
        let cases = [
            ("workers = -1\n", "write a whole number of 0 or more"),
            (
                "max_message_bytes = \"big\"\n",
                "write a whole number of 0 or more",
            ),
            ("json = \"yes\"\n", "write true or false"),
            ("listen = 8080\n", "write the value in double quotes"),
            (
                "trusted_proxies = \"10.0.0.1\"\n",
                "write a list in square brackets",
            ),
        ];
        for (text, hint) in cases {
            let error = parse(text).expect_err("wrong type").to_string();
            assert!(error.contains(hint), "{text}: {error}");
        }
        let variant = parse("backend = \"foo\"\n")
            .expect_err("unknown backend")
            .to_string();
        assert!(
            !variant.contains("write "),
            "the variants are listed: {variant}"
        );
    }

    #[test]
    fn table_key_lists_match_the_tables() {
        for (table, keys) in [("auth", AUTH_KEYS), ("upstream", UPSTREAM_KEYS)] {
            let error = parse(&format!("[{table}]\nno_such_key = 1\n")).expect_err("unknown key");
            let text = error.to_string();
            let listed: Vec<&str> = text
                .split("expected one of ")
                .nth(1)
                .unwrap_or_default()
                .split('`')
                .skip(1)
                .step_by(2)
                .collect();
            let mut listed = listed;
            let mut keys = keys.to_vec();
            listed.sort_unstable();
            keys.sort_unstable();
            assert_eq!(listed, keys, "[{table}] keys");
        }
    }

    #[test]
    fn edit_distance_counts_edits() {
        assert_eq!(edit_distance("", "abc"), 3);
        assert_eq!(edit_distance("kitten", "sitting"), 3);
        assert_eq!(edit_distance("rate_per_second", "rate_per_sec"), 3);
        assert_eq!(edit_distance("same", "same"), 0);
    }

    #[test]
    fn admin_listener_on_public_port_is_rejected() {
        let same = parse("listen = \"127.0.0.1:8100\"\nadmin_listen = \"127.0.0.1:8100\"\n");
        let text = same.expect_err("same address").to_string();
        assert!(text.contains("admin_listen"), "{text}");
        assert!(text.contains("127.0.0.1:8100"), "{text}");
        let wildcard = parse("listen = \"0.0.0.0:8100\"\nadmin_listen = \"127.0.0.1:8100\"\n");
        assert!(
            wildcard.is_err(),
            "the wildcard listener takes the port on every address"
        );
        assert!(parse("listen = \"127.0.0.1:8100\"\nadmin_listen = \"127.0.0.2:8100\"\n").is_ok());
        assert!(parse("listen = \"127.0.0.1:0\"\nadmin_listen = \"127.0.0.1:0\"\n").is_ok());

        let mut config = parse("").expect("defaults");
        config.admin_listen = Some(config.listen);
        assert!(
            config.check_listeners().is_err(),
            "a flag can make them equal too"
        );
    }

    #[test]
    fn check_origin_accepts_browser_origins() {
        for origin in [
            "https://chat.example.com",
            "http://localhost:8080",
            "http://127.0.0.1:3000",
            "https://[::1]:8443",
            "http://[2001:db8::1]",
            "https://xn--bcher-kva.example",
        ] {
            assert_eq!(check_origin(origin), Ok(()), "{origin}");
        }
    }

    #[test]
    fn check_origin_rejects_other_forms() {
        for origin in [
            "",
            "chat.example.com",
            "wss://chat.example.com",
            "https://",
            "https://chat.example.com/",
            "https://chat.example.com/app",
            "https://chat.example.com?x",
            "https://user@chat.example.com",
            "https://*.example.com",
            "*",
            "null",
            "https://chat.example.com:443",
            "http://localhost:80",
            "http://localhost:",
            "http://localhost:0",
            "http://localhost:70000",
            "http://localhost:+80",
            "https://[::1",
            "https://[zz]",
            "https://bücher.example",
            "https://chat example.com",
        ] {
            assert!(check_origin(origin).is_err(), "{origin}");
        }
    }

    #[test]
    fn allowed_origins_error_names_entry_and_form() {
        let error =
            parse("allowed_origins = [\"https://ok.example\", \"https://chat.example.com/\"]\n")
                .unwrap_err()
                .to_string();
        assert!(
            error.starts_with(
                "invalid value for `allowed_origins`: \"https://chat.example.com/\" ("
            ),
            "{error}"
        );
        assert!(error.contains("trailing slash"), "{error}");
    }

    #[test]
    fn http_backend_reads_upstream_table_with_defaults() {
        let config =
            parse("backend = \"http\"\n[upstream]\nurls = [\"http://127.0.0.1:8081/in\"]\n")
                .unwrap();
        assert_eq!(config.backend, BackendKind::Http);
        let upstream = &config.upstream;
        assert_eq!(upstream.urls.len(), 1);
        assert_eq!(upstream.urls[0].url.path, "/in");
        assert_eq!(upstream.batch_max, 64);
        assert_eq!(upstream.batch_delay, Duration::from_millis(1));
        assert_eq!(upstream.timeout, Duration::from_millis(2000));
        assert_eq!(upstream.backoff, Duration::from_millis(1000));
        assert_eq!(upstream.max_pending_messages, 10_000);
        assert_eq!(config.push_api_key_env, "FRAMEGATE_PUSH_KEY");
        assert!(config.to_string().contains("backend = \"http\""));
    }

    #[test]
    fn http_backend_without_urls_fails() {
        let err = parse("backend = \"http\"\n").unwrap_err();
        assert!(err.to_string().contains("upstream.urls"), "{err}");
    }

    #[test]
    fn http_backend_invalid_settings_fail() {
        let base = "backend = \"http\"\n[upstream]\nurls = [\"http://127.0.0.1:1/\"]\n";
        for (extra, key) in [
            ("batch_max = 0\n", "upstream.batch_max"),
            ("timeout_ms = 0\n", "upstream.timeout_ms"),
            (
                "max_pending_messages = 0\n",
                "upstream.max_pending_messages",
            ),
        ] {
            let err = parse(&format!("{base}{extra}")).unwrap_err();
            assert!(err.to_string().contains(key), "{extra}: {err}");
        }
        let err = parse("backend = \"http\"\n[upstream]\nurls = [\"https://a:1/\"]\n").unwrap_err();
        assert!(err.to_string().contains("upstream.urls"), "{err}");
        let err = parse(&format!("json = false\n{base}")).unwrap_err();
        assert!(err.to_string().contains("backend"), "{err}");
    }

    #[test]
    fn defaults_match_embedded_values() {
        let config = Config::default();
        assert_eq!(config.listen.to_string(), "127.0.0.1:8080");
        assert_eq!(config.path, "/ws");
        assert_eq!(config.backend, BackendKind::Relay);
        assert_eq!(config.max_request_head_bytes, 8192);
        assert_eq!(config.max_headers, 64);
        assert_eq!(config.max_message_bytes, 10_240);
        assert!(config.message_rules.json);
        assert!(!config.allow_binary);
        assert_eq!(config.max_violations, 10);
        assert_eq!(config.auth.algorithms, vec!["HS256".to_owned()]);
        assert_eq!(config.message_rules.required.len(), 3, "relay adds `to`");
        assert!(config.workers >= 1);
    }

    #[test]
    fn unknown_key_is_rejected_with_its_name() {
        let err = parse("listen = \"127.0.0.1:1\"\nmax_mesage_bytes = 5\n").unwrap_err();
        let text = err.to_string();
        assert!(text.contains("max_mesage_bytes"), "{text}");
    }

    #[test]
    fn out_of_range_value_names_key_and_range() {
        let err = parse("max_headers = 2\n").unwrap_err();
        assert_eq!(
            err.to_string(),
            "invalid value for `max_headers`: 2 (8 to 1024)"
        );
    }

    #[test]
    fn allow_binary_defaults_to_not_json() {
        let config = parse("json = false\nbackend = \"echo\"\n").unwrap();
        assert!(config.allow_binary);
        assert_eq!(config.backend, BackendKind::Echo);
        let config = parse("json = false\nallow_binary = false\nbackend = \"echo\"\n").unwrap();
        assert!(!config.allow_binary);
    }

    #[test]
    fn relay_to_must_be_a_string() {
        let err = parse("[required_fields]\nto = \"number\"\n")
            .unwrap_err()
            .to_string();
        assert!(err.contains("required_fields"), "{err}");
        assert!(err.contains("user id"), "{err}");
        assert!(parse("[required_fields]\nto = \"any\"\n").is_ok());
        let echo = "backend = \"echo\"\n[required_fields]\nto = \"number\"\n";
        assert!(parse(echo).is_ok());
    }

    #[test]
    fn relay_needs_json_text() {
        for fields in ["json = false\n", "allow_binary = true\n"] {
            let err = parse(fields).unwrap_err().to_string();
            assert!(
                err.contains("relay backend needs json = true"),
                "{fields}: {err}"
            );
        }
    }

    #[test]
    fn backend_override_is_validated() {
        let path =
            std::env::temp_dir().join(format!("framegate-backend-{}.toml", std::process::id()));
        let load = |text: &str, backend| {
            std::fs::write(&path, text).unwrap();
            Config::load_with_backend(Some(&path), Some(backend))
        };
        let relay = load("backend = \"echo\"\n", BackendKind::Relay).unwrap();
        let required: Vec<&str> = relay
            .message_rules
            .required
            .iter()
            .map(|field| field.name.as_str())
            .collect();
        assert!(required.contains(&"to"), "{required:?}");
        let err = load("backend = \"echo\"\njson = false\n", BackendKind::Relay).unwrap_err();
        assert!(err.to_string().contains("relay backend"), "{err}");
        let err = load("", BackendKind::Http).unwrap_err();
        assert!(err.to_string().contains("upstream.urls"), "{err}");
        let _ = std::fs::remove_file(&path);

        // The embedded defaults use the relay, which requires `to`; echo does not.
        let echo = Config::load_with_backend(None, Some(BackendKind::Echo)).unwrap();
        assert_eq!(echo.backend, BackendKind::Echo);
        assert!(
            echo.message_rules
                .required
                .iter()
                .all(|field| field.name != "to")
        );
    }

    #[test]
    fn required_fields_table_is_parsed() {
        let config = parse("backend = \"echo\"\n[required_fields]\nbody = \"object\"\n").unwrap();
        assert_eq!(config.message_rules.required.len(), 1);
        assert_eq!(config.message_rules.required[0].kind, FieldKind::Object);
        let err = parse("[required_fields]\nbody = \"blob\"\n").unwrap_err();
        assert!(err.to_string().contains("body = \"blob\""), "{err}");
    }

    #[test]
    fn bad_listen_and_path_are_rejected() {
        assert!(parse("listen = \"localhost\"\n").is_err());
        assert!(parse("path = \"ws\"\n").is_err());
        assert!(parse("path = \"/ws?x\"\n").is_err());
    }

    #[test]
    fn auth_table_overrides_defaults() {
        let config = parse(
            "[auth]\nalgorithms = [\"RS256\"]\npublic_key_file = \"k.pem\"\naudience = \"chat\"\n",
        )
        .unwrap();
        assert_eq!(config.auth.algorithms, vec!["RS256".to_owned()]);
        assert_eq!(config.auth.audience.as_deref(), Some("chat"));
        assert!(config.auth.required);
        assert!(parse("[auth]\nalgorithms = []\n").is_err());
    }
}
