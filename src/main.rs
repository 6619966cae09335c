//! The `veilgate` binary: command line → configuration → server.

use std::io::IsTerminal;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::{Parser, Subcommand};
use tracing_subscriber::EnvFilter;
use veilgate::config::{Config, LogFormat, process_env};
use veilgate::server::Server;

/// A self-hosted privacy proxy for LLM APIs.
#[derive(Parser)]
#[command(version, about)]
struct Cli {
    /// TOML configuration file.
    #[arg(long, env = "VEILGATE_CONFIG", global = true)]
    config: Option<PathBuf>,
    /// Address to listen on, e.g. 127.0.0.1:8080 or localhost:9000
    /// (overrides the config file).
    #[arg(long)]
    listen: Option<String>,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// Validate the configuration and print it with secrets masked.
    CheckConfig,
    /// Print a new random client token and the `token_sha256` line for it.
    Token,
    /// Print each client's usage of a month from the usage store (also
    /// while a server runs).
    Usage {
        /// The month, YYYY-MM (default: this month, UTC).
        #[arg(long)]
        month: Option<String>,
        /// Only this client.
        #[arg(long)]
        client: Option<String>,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    if let Some(Command::Token) = cli.command {
        let token = veilgate::auth::Token::generate();
        let hash = veilgate::client::to_hex(&veilgate::client::sha256(token.expose().as_bytes()));
        println!("token: {}\ntoken_sha256 = \"{hash}\"", token.expose());
        return ExitCode::SUCCESS;
    }
    let config = match Config::load(cli.config.as_deref(), cli.listen.as_deref(), &process_env) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("veilgate: {e}");
            return ExitCode::from(1);
        }
    };
    if let Some(Command::Usage { month, client }) = &cli.command {
        return match print_usage(&config, month.as_deref(), client.as_deref()) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("veilgate: {e}");
                ExitCode::from(1)
            }
        };
    }
    if let Some(Command::CheckConfig) = cli.command {
        // What the server would refuse at start, check-config refuses too.
        if let Err(e) = veilgate::server::check_files(&config) {
            eprintln!("veilgate: {e}");
            return ExitCode::from(1);
        }
        for warning in config.warnings() {
            eprintln!("veilgate: warning: {warning}");
        }
        print!("{}", config.describe(&process_env));
        return ExitCode::SUCCESS;
    }
    let source = veilgate::server::Source { path: cli.config.clone(), listen: cli.listen.clone() };
    match run(config, source) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("veilgate: {e:#}");
            ExitCode::from(1)
        }
    }
}

/// `veilgate usage`: a table of each client's month.
fn print_usage(config: &Config, month: Option<&str>, client: Option<&str>) -> Result<(), String> {
    use veilgate::usage::time;
    let now = time::unix_ms(std::time::SystemTime::now());
    let month = month.map_or_else(|| time::month_of(now), str::to_owned);
    if !time::is_month(&month) {
        return Err("--month must be YYYY-MM".into());
    }
    let dir = config.state_dir.as_deref().ok_or("no data_dir (nor XDG_DATA_HOME or HOME) to read from")?;
    let rows = veilgate::usage::store::month_totals(dir, &month, client).map_err(|e| e.to_string())?;
    println!(
        "{:<24} {:>10} {:>14} {:>14} {:>12} {:>10}",
        "client", "requests", "input_tokens", "output_tokens", "cost_usd", "estimated"
    );
    for (name, t) in &rows {
        println!(
            "{name:<24} {:>10} {:>14} {:>14} {:>12.6} {:>10}",
            t.requests, t.input_tokens, t.output_tokens, t.cost_usd, t.estimated_requests
        );
    }
    if rows.is_empty() {
        println!("(no requests in {month})");
    }
    Ok(())
}

fn run(config: Config, source: veilgate::server::Source) -> anyhow::Result<()> {
    init_logging(&config);
    let _ = rustls::crypto::ring::default_provider().install_default();
    let (token, token_file) = config.resolve_token(&process_env)?;
    // Every downstream connection and every upstream socket holds a
    // descriptor; both are bounded. The table gets some room above that.
    let sockets = (config.limits.max_connections as u64).saturating_add(config.limits.max_upstream_connections as u64);
    let fds = veilgate::fds::prepare(sockets.saturating_add(256));
    tracing::debug!(?fds, "file descriptors");
    if let Some(limit) = fds.limit_after.filter(|&limit| limit < sockets) {
        tracing::warn!(
            limit,
            needed = sockets,
            "the open-files limit is below limits.max_connections + limits.max_upstream_connections; \
             raise it (ulimit -n, LimitNOFILE=) or lower those limits"
        );
    }
    // On a single core (or when pinned to one) a single-threaded runtime
    // saves the work-stealing scheduler's cross-thread wake-ups.
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let runtime = if cores == 1 {
        tokio::runtime::Builder::new_current_thread().enable_all().build()
    } else {
        tokio::runtime::Builder::new_multi_thread().enable_all().build()
    }
    .context("starting the runtime")?;
    runtime.block_on(async move {
        let server = Server::bind(config, token.clone()).await?.reloading(source);
        let addr = server.local_addr();
        tracing::info!(%addr, version = env!("CARGO_PKG_VERSION"), "veilgate listening");
        if let Some(path) = token_file {
            if std::io::stderr().is_terminal() {
                eprintln!(
                    "\n  auth token: {}\n  generic route: http://{addr}/{}/https/<host>/<path>\n",
                    token.expose(),
                    token.expose()
                );
            } else {
                tracing::info!(file = %path.display(), "auth token stored in file");
            }
        }
        server.run(shutdown_signal()).await;
        tracing::info!("veilgate stopped");
        anyhow::Ok(())
    })
}

/// Logs go to stderr, filtered by `RUST_LOG` — and then capped: events of
/// any target outside veilgate itself are dropped above `info`, whatever
/// `RUST_LOG` says and however specific its directive
/// (`tungstenite::handshake=trace` included). At debug and trace some
/// dependencies print request heads, which hold keys. veilgate's own lines
/// never carry a header value, a path, a query or a body.
fn init_logging(config: &Config) {
    use tracing_subscriber::filter::{FilterExt, LevelFilter, Targets};
    use tracing_subscriber::layer::SubscriberExt;
    use tracing_subscriber::util::SubscriberInitExt;
    use tracing_subscriber::{Layer, fmt};

    let default = if config.debug { "veilgate=debug,info" } else { "info" };
    let user = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default));
    let cap = Targets::new().with_default(LevelFilter::INFO).with_target("veilgate", LevelFilter::TRACE);
    let filter = user.and(cap);
    let ansi = std::io::stderr().is_terminal();
    let layer = match config.log_format {
        LogFormat::Json => fmt::layer().json().with_writer(std::io::stderr).with_filter(filter).boxed(),
        LogFormat::Text => fmt::layer().with_writer(std::io::stderr).with_ansi(ansi).with_filter(filter).boxed(),
    };
    tracing_subscriber::registry().with(layer).init();
}

async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
        Ok(s) => s,
        Err(_) => {
            let _ = ctrl_c.await;
            return;
        }
    };
    tokio::select! {
        _ = ctrl_c => {}
        _ = term.recv() => {}
    }
}
