//! Command line of app-tier-cmk-exporter: parse flags, set up logging, run a mode, exit.

use std::path::PathBuf;
use std::process::ExitCode;

use std::time::Duration;

use app_tier_cmk_exporter::app::{self, AppError, ExitCodeStyle, ExporterOptions, Output};
use app_tier_cmk_exporter::config::{Config, ListenAddress};
use app_tier_cmk_exporter::reload::ReloadRequest;
use app_tier_cmk_exporter::server::Limits;
use app_tier_cmk_exporter::shard::{ShardFlags, ordinal_from_hostname};
use clap::{Parser, Subcommand, ValueEnum};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tracing_subscriber::EnvFilter;

/// Exit code for a bad command line or configuration (0-2 belong to `scan` verdicts).
const EXIT_USAGE: u8 = 3;
/// Exit code when the exporter cannot run (e.g. the port is taken).
const EXIT_RUNTIME: u8 = 1;

#[derive(Parser, Debug)]
#[command(
    version,
    about = "Prometheus exporter: is there an App-Tier KMS CMK in every AWS account and region?"
)]
struct Cli {
    /// TOML configuration file (defaults apply without one; APP_TIER_CMK_* variables override).
    #[arg(long, global = true, value_name = "PATH")]
    config: Option<PathBuf>,

    /// Address to listen on; overrides `listen_address`.
    #[arg(long = "web.listen-address", value_name = "HOST:PORT")]
    listen_address: Option<String>,

    /// exporter-toolkit web configuration (YAML): TLS, basic auth, response headers.
    #[arg(long = "web.config.file", value_name = "PATH")]
    web_config_file: Option<PathBuf>,

    /// Serve POST /-/reload (reloads the configuration, as SIGHUP does).
    #[arg(long = "web.enable-lifecycle")]
    enable_lifecycle: bool,

    /// Connections served at once; more wait in the listen backlog.
    #[arg(long = "web.max-connections", default_value_t = 64, value_parser = clap::value_parser!(u32).range(1..=65_536))]
    max_connections: u32,

    /// Time a client gets for its TLS handshake, then for its request headers.
    #[arg(long = "web.read-header-timeout", default_value = "10s", value_parser = parse_timeout)]
    read_header_timeout: Duration,

    /// Log level (error, warn, info, debug, trace); RUST_LOG overrides it.
    #[arg(long = "log.level", global = true, default_value = "info")]
    log_level: String,

    /// Log format.
    #[arg(long = "log.format", global = true, value_enum, default_value_t = LogFormat::Text)]
    log_format: LogFormat,

    /// This replica's shard, 0 to total-shards - 1; overrides `shard`.
    #[arg(long, global = true, value_name = "N")]
    shard: Option<u32>,

    /// Number of replicas that share the accounts; overrides `total_shards`.
    #[arg(long = "total-shards", global = true, value_name = "M")]
    total_shards: Option<u32>,

    /// Take the shard from the ordinal that ends the hostname (StatefulSet pod NAME-N).
    #[arg(long = "shard-from-hostname", global = true, conflicts_with = "shard")]
    shard_from_hostname: bool,

    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Scan every target once, print a report, exit 0 (all PASS), 1 (a FAIL) or 2 (an UNKNOWN).
    Scan {
        #[arg(long, value_enum, default_value_t = OutputFormat::Table)]
        output: OutputFormat,
        /// CloudSploit's exit code instead: the worst result, 0 OK, 2 FAIL, 3 UNKNOWN.
        #[arg(long = "exit-code")]
        exit_code: bool,
    },
}

#[derive(Clone, Copy, Debug, ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

#[derive(Clone, Copy, Debug, ValueEnum)]
enum OutputFormat {
    Table,
    Json,
    /// CloudSploit's JSON results.
    #[value(name = "cloudsploit-json")]
    CloudsploitJson,
    /// CloudSploit's CSV results.
    Csv,
}

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            let code = if e.use_stderr() { EXIT_USAGE } else { 0 };
            let _ = e.print();
            return ExitCode::from(code);
        }
    };
    if let Err(message) = init_logging(&cli) {
        eprintln!("error: {message}");
        return ExitCode::from(EXIT_USAGE);
    }
    let mut config = match Config::load(cli.config.as_deref()) {
        Ok(config) => config,
        Err(e) => {
            eprintln!("error: invalid configuration\n{e}");
            return ExitCode::from(EXIT_USAGE);
        }
    };
    let mut listen_override = None;
    if let Some(address) = cli.listen_address.clone() {
        match ListenAddress::try_from(address) {
            Ok(address) => {
                config.listen_address = address;
                listen_override = Some(address);
            }
            Err(e) => {
                eprintln!("error: flag --web.listen-address: {e}");
                return ExitCode::from(EXIT_USAGE);
            }
        }
    }
    let shards = match shard_flags(&cli, &mut config) {
        Ok(shards) => shards,
        Err(message) => {
            eprintln!("error: {message}");
            return ExitCode::from(EXIT_USAGE);
        }
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::from(EXIT_RUNTIME);
        }
    };
    let result = runtime.block_on(async {
        match cli.command {
            Some(Command::Scan { output, exit_code }) => {
                let output = match output {
                    OutputFormat::Table => Output::Table,
                    OutputFormat::Json => Output::Json,
                    OutputFormat::CloudsploitJson => Output::CloudSploitJson,
                    OutputFormat::Csv => Output::Csv,
                };
                let exit = if exit_code {
                    ExitCodeStyle::CloudSploit
                } else {
                    ExitCodeStyle::Verdict
                };
                app::run_scan(config, output, exit).await
            }
            None => {
                let shutdown = CancellationToken::new();
                tokio::spawn(cancel_on_signal(shutdown.clone()));
                let (reload_sender, reloads) = mpsc::channel(4);
                tokio::spawn(reload_on_sighup(reload_sender.clone()));
                let options = ExporterOptions {
                    config_path: cli.config.clone(),
                    listen_address: listen_override,
                    web_config_file: cli.web_config_file.clone(),
                    enable_lifecycle: cli.enable_lifecycle,
                    shards,
                    limits: Limits {
                        max_connections: cli.max_connections as usize,
                        read_header_timeout: cli.read_header_timeout,
                    },
                };
                app::run_exporter(config, options, reload_sender, reloads, shutdown)
                    .await
                    .map(|()| 0)
            }
        }
    });
    match result {
        Ok(code) => ExitCode::from(u8::try_from(code).unwrap_or(EXIT_RUNTIME)),
        Err(e @ (AppError::Config(_) | AppError::WebConfig(_))) => {
            eprintln!("error: invalid configuration\n{e}");
            ExitCode::from(EXIT_USAGE)
        }
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::from(EXIT_RUNTIME)
        }
    }
}

/// `--shard`, `--total-shards` and `--shard-from-hostname`, applied over the configuration
/// (and kept for reloads).
fn shard_flags(cli: &Cli, config: &mut Config) -> Result<ShardFlags, String> {
    let mut flags = ShardFlags {
        shard: cli.shard,
        total_shards: cli.total_shards,
    };
    let mut named = Vec::new();
    if cli.shard_from_hostname {
        let hostname = hostname().ok_or("flag --shard-from-hostname: cannot read the hostname")?;
        let hostname = hostname.trim();
        flags.shard = Some(ordinal_from_hostname(hostname).ok_or_else(|| {
            format!(
                "flag --shard-from-hostname: hostname {hostname:?} does not end in -N (a StatefulSet pod ordinal)"
            )
        })?);
        named.push(format!("--shard-from-hostname ({hostname})"));
    }
    if let Some(shard) = cli.shard {
        named.push(format!("--shard {shard}"));
    }
    if let Some(total) = cli.total_shards {
        named.push(format!("--total-shards {total}"));
    }
    flags.apply(config);
    match config.shard() {
        Ok(_) => Ok(flags),
        Err(e) => Err(format!("flags {}: {e}", named.join(" "))),
    }
}

/// The kernel's hostname (the pod name in Kubernetes), else `$HOSTNAME`.
fn hostname() -> Option<String> {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .filter(|h| !h.trim().is_empty())
        .or_else(|| std::env::var("HOSTNAME").ok())
}

fn init_logging(cli: &Cli) -> Result<(), String> {
    let filter = match std::env::var("RUST_LOG") {
        Ok(directives) if !directives.is_empty() => {
            EnvFilter::try_new(&directives).map_err(|e| format!("RUST_LOG={directives:?}: {e}"))?
        }
        _ => {
            // The SDK and hyper are chatty at debug; keep them at warn unless RUST_LOG asks.
            let directives = format!(
                "{},aws=warn,aws_smithy_runtime=warn,hyper=warn",
                cli.log_level
            );
            EnvFilter::try_new(&directives)
                .map_err(|e| format!("flag --log.level {:?}: {e}", cli.log_level))?
        }
    };
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr);
    match cli.log_format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().flatten_event(true).init(),
    }
    Ok(())
}

fn parse_timeout(value: &str) -> Result<Duration, String> {
    match humantime::parse_duration(value) {
        Ok(d) if d >= Duration::from_millis(100) => Ok(d),
        Ok(_) => Err("too short; use at least 100ms".to_owned()),
        Err(e) => Err(format!("{e}; write e.g. \"10s\"")),
    }
}

/// Each SIGHUP asks for a reload of the configuration and the web configuration files.
async fn reload_on_sighup(reloads: mpsc::Sender<ReloadRequest>) {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        let Ok(mut hup) = signal(SignalKind::hangup()) else {
            return;
        };
        while hup.recv().await.is_some() {
            tracing::info!("SIGHUP received, reloading the configuration");
            if reloads.send(ReloadRequest { reply: None }).await.is_err() {
                return;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = reloads;
    }
}

async fn cancel_on_signal(shutdown: CancellationToken) {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        let (Ok(mut term), Ok(mut int)) = (
            signal(SignalKind::terminate()),
            signal(SignalKind::interrupt()),
        ) else {
            return;
        };
        tokio::select! {
            _ = term.recv() => tracing::info!("SIGTERM received, shutting down"),
            _ = int.recv() => tracing::info!("SIGINT received, shutting down"),
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
    shutdown.cancel();
}
