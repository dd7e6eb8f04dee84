//! The `centralino` binary: `serve` runs a node, `check-config` validates a
//! configuration file and lists every problem.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, Result};
use centralino_b2bua::Metrics;
use centralino_config::{Config, ConfigError};
use centralino_net::{SipServer, serve_http};
use clap::{Parser, Subcommand};
use tracing::info;

#[derive(Parser)]
#[command(
    name = "centralino",
    version,
    about = "Automatic call distributor and telephony core"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run a node (embedded demo configuration unless --config is given).
    Serve {
        /// Configuration file (TOML). Default: the embedded demo configuration.
        #[arg(long, env = "CENTRALINO_CONFIG")]
        config: Option<PathBuf>,
        /// SIP listen address, served on every configured transport; repeatable.
        /// Replaces `sip.listen`.
        #[arg(
            long = "sip-listen",
            env = "CENTRALINO_SIP_LISTEN",
            value_delimiter = ','
        )]
        sip_listen: Vec<SocketAddr>,
        /// HTTP listen address for /metrics and /healthz. Replaces `http.listen`.
        #[arg(long = "http-listen", env = "CENTRALINO_HTTP_LISTEN")]
        http_listen: Option<SocketAddr>,
    },
    /// Validate a configuration file and list every problem with its key path.
    CheckConfig {
        /// The file to check.
        file: PathBuf,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::CheckConfig { file } => check_config(&file),
        Command::Serve {
            config,
            sip_listen,
            http_listen,
        } => match serve(config, sip_listen, http_listen) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("centralino: {e:#}");
                ExitCode::FAILURE
            }
        },
    }
}

fn check_config(file: &PathBuf) -> ExitCode {
    let text = match std::fs::read_to_string(file) {
        Ok(t) => t,
        Err(e) => {
            eprintln!("{}: cannot read: {e}", file.display());
            return ExitCode::from(2);
        }
    };
    match Config::from_toml(&text) {
        Ok(c) => {
            println!(
                "{}: ok ({} tenant(s), {} trunk(s), {} queue(s), {} operator(s))",
                file.display(),
                c.tenants.len(),
                c.trunks.len(),
                c.queues.len(),
                c.agents.len()
            );
            ExitCode::SUCCESS
        }
        Err(ConfigError::Invalid(problems)) => {
            for p in &problems {
                eprintln!("{}: {p}", file.display());
            }
            eprintln!("{}: {} problem(s)", file.display(), problems.len());
            ExitCode::FAILURE
        }
        Err(e) => {
            eprintln!("{}: {e}", file.display());
            ExitCode::FAILURE
        }
    }
}

fn load(path: Option<PathBuf>) -> Result<Config> {
    match path {
        None => Config::embedded().context("embedded configuration"),
        Some(p) => {
            let text =
                std::fs::read_to_string(&p).with_context(|| format!("reading {}", p.display()))?;
            Config::from_toml(&text)
                .with_context(|| format!("{} is not a valid configuration", p.display()))
        }
    }
}

fn serve(
    config: Option<PathBuf>,
    sip_listen: Vec<SocketAddr>,
    http_listen: Option<SocketAddr>,
) -> Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("CENTRALINO_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_target(false)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stdout()))
        .init();
    let embedded = config.is_none();
    let mut config = load(config)?;
    if !sip_listen.is_empty() {
        config.sip.listen = sip_listen;
    }
    if let Some(h) = http_listen {
        config.http_listen = h;
    }
    centralino_types::set_unmask_numbers(config.unmask_numbers);
    // One thread pumps sockets and the engine: the engine is single-owner
    // anyway, and cross-thread wake-ups per datagram cost more than they
    // bring (scripts/load: 2,500 clean calls/s multi-threaded, 3,000 here).
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the runtime")?;
    runtime.block_on(async move {
        if embedded {
            info!(
                "running on the embedded DEMO configuration (public demo passwords, 127.0.0.1 only)"
            );
        }
        let metrics = Metrics::new();
        let (bound_tx, bound_rx) = tokio::sync::oneshot::channel();
        let http = tokio::spawn(serve_http(
            config.http_listen,
            metrics.registry.clone(),
            bound_tx,
        ));
        let Ok(http_addr) = bound_rx.await else {
            return match http.await {
                Ok(Err(e)) => Err(e).context("HTTP endpoint"),
                _ => Err(anyhow::anyhow!("HTTP endpoint failed to start")),
            };
        };
        let sip = SipServer::start(&config, metrics)
            .await
            .context("SIP listeners")?;
        for (t, a) in &sip.bound {
            info!(transport = ?t, addr = %a, "ready");
        }
        info!(http = %http_addr, "centralino ready");
        tokio::select! {
            () = sip.join() => Ok(()),
            r = http => match r {
                Ok(Err(e)) => Err(e).context("HTTP endpoint"),
                _ => Ok(()),
            },
            r = shutdown_signal() => { info!("shutting down"); r }
        }
    })
}

async fn shutdown_signal() -> Result<()> {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .context("installing the SIGTERM handler")?;
    tokio::select! {
        r = tokio::signal::ctrl_c() => r.context("waiting for Ctrl-C"),
        _ = term.recv() => Ok(()),
    }
}
