//! The `framegate` command: `serve`, `token`, `ring` and `check-config`.

use std::path::PathBuf;
use std::process::ExitCode;
use std::str::FromStr;
use std::time::{SystemTime, UNIX_EPOCH};

use anyhow::{Context, bail};
use clap::{Parser, Subcommand, ValueEnum};
use rand::RngCore;

use framegate::auth::{AuthConfig, KeyMaterial, Signer, Verifier};
use framegate::config::{AuthSettings, BackendKind, Config};

/// Thread-per-core WebSocket tier: upgrade, JWT auth, frame and message checks, relay.
#[derive(Parser)]
#[command(name = "framegate", version)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the server (embedded defaults unless --config is given).
    Serve(ServeArgs),
    /// Print a JWT signed with the configured key, for trying the server.
    Token(TokenArgs),
    /// Print the worker (shard) that owns each user id.
    Ring(RingArgs),
    /// Generate WebSocket load against a server and report throughput and latency.
    Load(Box<framegate::load::LoadArgs>),
    /// Validate a config file without starting, and print the effective values.
    CheckConfig {
        /// TOML config file to check.
        file: PathBuf,
    },
}

#[derive(Parser)]
struct ServeArgs {
    /// TOML config file; every key is optional (default: the embedded configuration).
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,
    /// Public listen address, overriding `listen` (default 127.0.0.1:8080).
    #[arg(long, value_name = "ADDR")]
    listen: Option<String>,
    /// Worker threads, one per core; 0 means every available core (default 0).
    #[arg(long, value_name = "N")]
    workers: Option<usize>,
    /// Backend for valid messages: relay, echo or http, overriding `backend` (default relay).
    #[arg(long, value_name = "KIND")]
    backend: Option<String>,
    /// Admin listener for /metrics, /healthz and /readyz, overriding `admin_listen`
    /// (default 127.0.0.1:9090; an empty string disables it).
    #[arg(long, value_name = "ADDR")]
    admin_listen: Option<String>,
    /// Log output format.
    #[arg(long, value_enum, default_value_t = LogFormat::Text)]
    log_format: LogFormat,
}

#[derive(Clone, Copy, ValueEnum)]
enum LogFormat {
    Json,
    Text,
}

#[derive(Parser)]
struct TokenArgs {
    /// User id, written to the `sub` claim.
    #[arg(long)]
    sub: String,
    /// Lifetime: a number with unit s, m, h or d (for example 90s, 30m, 1h).
    #[arg(long, default_value = "1h")]
    ttl: String,
    /// Config file whose [auth] table names the key (default: HS256 with FRAMEGATE_JWT_SECRET).
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,
}

#[derive(Parser)]
struct RingArgs {
    /// Number of shards (workers).
    #[arg(long)]
    shards: usize,
    /// User ids to look up.
    #[arg(required = true)]
    keys: Vec<String>,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Serve(args) => serve(args),
        Command::Token(args) => exit_on_error(token(args)),
        Command::Ring(args) => exit_on_error(ring(args)),
        Command::Load(args) => framegate::load::main(*args),
        Command::CheckConfig { file } => exit_on_error(check_config(&file)),
    }
}

/// Maps an error to exit status 2 (bad input or configuration), after printing it.
fn exit_on_error(result: anyhow::Result<()>) -> ExitCode {
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("error: {err:#}");
            ExitCode::from(2)
        }
    }
}

/// Validates a config file the way `serve` would, including the `[auth]` keys and secrets,
/// and prints the effective values.
fn check_config(file: &std::path::Path) -> anyhow::Result<()> {
    let config = Config::load(file)?;
    let algorithms = parse_algorithms(&config.auth)?;
    if algorithms.iter().copied().all(is_hmac) && read_secret(&config.auth)?.is_none() {
        let variable = config
            .auth
            .secret_env
            .as_deref()
            .unwrap_or("FRAMEGATE_JWT_SECRET");
        eprintln!(
            "note: no HMAC secret is set ({variable} or auth.secret_file): serve would use a random development secret"
        );
    } else {
        build_verifier(&config)?;
    }
    println!("{config}");
    Ok(())
}

fn init_logging(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_env("FRAMEGATE_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Json => builder.json().init(),
        LogFormat::Text => builder.init(),
    }
}

fn load_config(path: Option<&PathBuf>) -> Result<Config, framegate::config::ConfigError> {
    Config::load_with_backend(path.map(PathBuf::as_path), None)
}

fn serve(args: ServeArgs) -> ExitCode {
    init_logging(args.log_format);
    let config = match serve_config(&args) {
        Ok(config) => config,
        Err(err) => {
            eprintln!("error: {err:#}");
            return ExitCode::from(2);
        }
    };
    let verifier = match build_verifier(&config) {
        Ok(verifier) => verifier,
        Err(err) => {
            eprintln!("error: {err:#}");
            return ExitCode::from(2);
        }
    };
    tracing::info!(config = %config.to_string().replace('\n', "; "), "starting framegate");
    let server = match framegate::runtime::start(config, verifier) {
        Ok(server) => server,
        Err(err) => {
            eprintln!("error: {err}");
            return ExitCode::from(1);
        }
    };
    if let Err(err) = watch_signals(server.drain_handle()) {
        eprintln!("error: cannot install signal handlers: {err}");
        return ExitCode::from(1);
    }
    match server.join() {
        Ok(()) => {
            tracing::info!("framegate stopped");
            ExitCode::SUCCESS
        }
        Err(err) => {
            eprintln!("error: {err}");
            ExitCode::from(1)
        }
    }
}

/// First SIGTERM or SIGINT: drain and exit 0 once the workers stop. A second one: exit at
/// once with status 1.
fn watch_signals(drain: framegate::runtime::DrainHandle) -> std::io::Result<()> {
    use signal_hook::consts::{SIGINT, SIGTERM};
    let mut signals = signal_hook::iterator::Signals::new([SIGTERM, SIGINT])?;
    std::thread::Builder::new()
        .name("framegate-signals".to_owned())
        .spawn(move || {
            let mut received = 0;
            for signal in signals.forever() {
                received += 1;
                if received == 1 {
                    tracing::info!(
                        signal,
                        "signal received: draining (send it again to exit at once)"
                    );
                    drain.drain();
                } else {
                    tracing::warn!(
                        signal,
                        "second signal: exiting without waiting for the drain"
                    );
                    std::process::exit(1);
                }
            }
        })?;
    Ok(())
}

fn serve_config(args: &ServeArgs) -> anyhow::Result<Config> {
    let backend = args
        .backend
        .as_deref()
        .map(BackendKind::from_str)
        .transpose()
        .map_err(anyhow::Error::msg)?;
    let mut config = Config::load_with_backend(args.config.as_deref(), backend)?;
    if let Some(listen) = &args.listen {
        config.listen = listen.parse().with_context(|| {
            format!("invalid --listen {listen:?}: expected an address such as 127.0.0.1:8080")
        })?;
    }
    if let Some(workers) = args.workers {
        config.set_workers(workers)?;
    }
    if let Some(admin) = &args.admin_listen {
        config.admin_listen = if admin.is_empty() {
            None
        } else {
            Some(admin.parse().with_context(|| {
                format!(
                    "invalid --admin-listen {admin:?}: expected an address such as 127.0.0.1:9090"
                )
            })?)
        };
    }
    config.check_listeners()?;
    Ok(config)
}

fn parse_algorithms(settings: &AuthSettings) -> anyhow::Result<Vec<jsonwebtoken::Algorithm>> {
    settings
        .algorithms
        .iter()
        .map(|name| {
            jsonwebtoken::Algorithm::from_str(name).map_err(|_| {
                anyhow::anyhow!(
                    "invalid value for `auth.algorithms`: {name:?} (one of HS256, HS384, HS512, RS256, RS384, RS512, PS256, PS384, PS512, ES256, ES384, EdDSA)"
                )
            })
        })
        .collect()
}

fn is_hmac(algorithm: jsonwebtoken::Algorithm) -> bool {
    use jsonwebtoken::Algorithm::{HS256, HS384, HS512};
    matches!(algorithm, HS256 | HS384 | HS512)
}

/// Reads the HMAC secret from the configured file or environment variable.
fn read_secret(settings: &AuthSettings) -> anyhow::Result<Option<Vec<u8>>> {
    if let Some(path) = &settings.secret_file {
        let secret = std::fs::read(path)
            .with_context(|| format!("cannot read auth.secret_file {}", path.display()))?;
        let trimmed = secret.trim_ascii().to_vec();
        if trimmed.is_empty() {
            bail!("auth.secret_file {} is empty", path.display());
        }
        return Ok(Some(trimmed));
    }
    if let Some(name) = &settings.secret_env
        && let Some(value) = std::env::var_os(name)
    {
        let value = value.into_encoded_bytes();
        if value.is_empty() {
            bail!(
                "environment variable {name} is set but empty; set it to a secret of at least 32 bytes (48 for HS384, 64 for HS512)"
            );
        }
        return Ok(Some(value));
    }
    Ok(None)
}

fn build_verifier(config: &Config) -> anyhow::Result<Verifier> {
    let settings = &config.auth;
    let algorithms = parse_algorithms(settings)?;
    let key = if algorithms.iter().copied().all(is_hmac) {
        match read_secret(settings)? {
            Some(secret) => KeyMaterial::Secret(secret),
            None => {
                let mut secret = vec![0u8; 64];
                rand::rng().fill_bytes(&mut secret);
                warn_development_secret(config, &algorithms, &secret);
                KeyMaterial::Secret(secret)
            }
        }
    } else {
        let Some(path) = &settings.public_key_file else {
            bail!(
                "auth.algorithms {:?} need auth.public_key_file (a PEM public key)",
                settings.algorithms
            );
        };
        let pem = std::fs::read(path)
            .with_context(|| format!("cannot read auth.public_key_file {}", path.display()))?;
        KeyMaterial::PublicPem(pem)
    };
    let auth = AuthConfig {
        algorithms,
        key,
        issuer: settings.issuer.clone(),
        audience: settings.audience.clone(),
        leeway_secs: settings.leeway_secs,
    };
    Verifier::new(&auth).context("invalid [auth] settings")
}

/// Without a configured secret the server makes one for this process and prints a demo
/// token, so a first run needs no setup. Tokens printed here are for this process only.
fn warn_development_secret(config: &Config, algorithms: &[jsonwebtoken::Algorithm], secret: &[u8]) {
    let variable = config
        .auth
        .secret_env
        .as_deref()
        .unwrap_or("FRAMEGATE_JWT_SECRET");
    tracing::warn!(
        "{variable} is not set: using a random JWT secret for this process only (development setting; tokens stop working on restart)"
    );
    let Some(algorithm) = algorithms.first().copied() else {
        return;
    };
    let token = Signer::from_secret(algorithm, secret).and_then(|signer| {
        signer.mint(
            "demo",
            unix_now(),
            3600,
            config.auth.issuer.as_deref(),
            config.auth.audience.as_deref(),
        )
    });
    // The demo token goes to stdout for the person at the terminal, not into the logs.
    if let Ok(token) = token {
        println!("demo token (user \"demo\", valid 1 h, this process only):\n{token}");
        let url = format!("ws://{}{}?access_token={token}", config.listen, config.path);
        println!("try: websocat '{url}'");
        println!(" or: python3 -m websockets '{url}'");
        if config.demo {
            println!(
                " or: open http://{}/ in a browser and paste the token",
                config.listen
            );
        }
        if config.backend == BackendKind::Relay {
            // The secret exists only in this process, so the demo user is the only user.
            println!(
                "then send {{\"id\":\"m1\",\"conversation_id\":\"c1\",\"to\":\"demo\",\"content\":\"hi\"}}: the relay delivers it back to the demo user"
            );
        }
    }
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |elapsed| elapsed.as_secs())
}

/// Parses a lifetime such as `90s`, `30m`, `1h`, `2d` or a bare number of seconds.
fn parse_ttl(text: &str) -> anyhow::Result<u64> {
    let text = text.trim();
    let (digits, unit) = match text.find(|c: char| !c.is_ascii_digit()) {
        Some(at) => text.split_at(at),
        None => (text, "s"),
    };
    let value: u64 = digits.parse().with_context(|| {
        format!("invalid --ttl {text:?}: expected a number with unit s, m, h or d")
    })?;
    let scale = match unit {
        "s" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86_400,
        _ => bail!("invalid --ttl {text:?}: unit must be s, m, h or d"),
    };
    let seconds = value
        .checked_mul(scale)
        .filter(|&seconds| seconds > 0)
        .with_context(|| {
            format!("invalid --ttl {text:?}: must be between 1 s and about 500 years")
        })?;
    Ok(seconds)
}

fn token(args: TokenArgs) -> anyhow::Result<()> {
    let config = load_config(args.config.as_ref())?;
    let ttl = parse_ttl(&args.ttl)?;
    if args.sub.is_empty() {
        bail!("--sub must not be empty");
    }
    let settings = &config.auth;
    let algorithms = parse_algorithms(settings)?;
    let Some(algorithm) = algorithms.first().copied() else {
        bail!("auth.algorithms is empty");
    };
    let signer = if is_hmac(algorithm) {
        let Some(secret) = read_secret(settings)? else {
            let variable = settings
                .secret_env
                .as_deref()
                .unwrap_or("FRAMEGATE_JWT_SECRET");
            bail!(
                "no HMAC secret: set {variable} (the server must use the same value) or auth.secret_file"
            );
        };
        Signer::from_secret(algorithm, &secret)?
    } else {
        let Some(path) = &settings.private_key_file else {
            bail!(
                "algorithm {algorithm:?} needs auth.private_key_file (a PEM private key) to mint tokens"
            );
        };
        let pem = std::fs::read(path)
            .with_context(|| format!("cannot read auth.private_key_file {}", path.display()))?;
        Signer::from_private_pem(algorithm, &pem)?
    };
    let token = signer.mint(
        &args.sub,
        unix_now(),
        ttl,
        settings.issuer.as_deref(),
        settings.audience.as_deref(),
    )?;
    println!("{token}");
    Ok(())
}

fn ring(args: RingArgs) -> anyhow::Result<()> {
    let ring = framegate::shard::Ring::new(args.shards)
        .map_err(|err| anyhow::anyhow!("invalid --shards {}: {err}", args.shards))?;
    for key in &args.keys {
        println!("{key}\t{}", ring.owner(key.as_bytes()));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ttl_accepts_units_and_bare_seconds() {
        assert_eq!(parse_ttl("90").unwrap(), 90);
        assert_eq!(parse_ttl("90s").unwrap(), 90);
        assert_eq!(parse_ttl("30m").unwrap(), 1800);
        assert_eq!(parse_ttl("1h").unwrap(), 3600);
        assert_eq!(parse_ttl("2d").unwrap(), 172_800);
    }

    #[test]
    fn ttl_rejects_bad_input() {
        assert!(parse_ttl("").is_err());
        assert!(parse_ttl("0").is_err());
        assert!(parse_ttl("1w").is_err());
        assert!(parse_ttl("h").is_err());
        assert!(parse_ttl("99999999999999999999d").is_err());
    }
}
