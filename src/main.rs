//! The `centralino` binary: `serve` runs a node, `check-config` validates a
//! configuration file and lists every problem.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use centralino_b2bua::Metrics;
use centralino_config::{Config, ConfigError};
use centralino_net::{Health, Heartbeat, SipServer, bind_http, http_runtime, serve_http};
use clap::{Parser, Subcommand};
use tracing::{info, warn};

mod audit;
mod day;
mod otlp;
mod rebind;

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
        /// Where the durable store lives (callbacks): DIR/centralino.db,
        /// created when missing.
        #[arg(
            long = "data-dir",
            env = "CENTRALINO_DATA_DIR",
            default_value = "centralino-data"
        )]
        data_dir: PathBuf,
    },
    /// Check the audit log of a store (who read or changed personal data):
    /// every entry chained to the one before by the audit key's MAC, none
    /// edited or removed, and every head given still there (none cut off).
    /// Exit status 1 names the first broken entry or the missing head.
    Audit {
        /// The store's directory (as given to `serve --data-dir`).
        #[arg(
            long = "data-dir",
            env = "CENTRALINO_DATA_DIR",
            default_value = "centralino-data"
        )]
        data_dir: PathBuf,
        /// Also print the last N entries, newest first.
        #[arg(long)]
        tail: Option<usize>,
        /// The audit key file. Default: the configuration's
        /// `store.audit_key_file`, else DIR/audit.key (the node's own).
        #[arg(long = "key-file")]
        key_file: Option<PathBuf>,
        /// The node's configuration file, for `store.audit_key_file`.
        #[arg(long, env = "CENTRALINO_CONFIG")]
        config: Option<PathBuf>,
        /// A head the node logged (`audit head seq=N mac=HEX`), as N:HEX:
        /// fails when the log no longer holds it (its tail was cut).
        /// Repeatable.
        #[arg(long = "expect-head")]
        expect_head: Vec<centralino_store::AuditHead>,
        /// Print a phone number's tag in this log (a number is logged as
        /// its tag under the key, never itself), to find its entries.
        #[arg(long)]
        number: Option<String>,
    },
    /// Move a queue's name to another firm in a stopped node's store. A
    /// queue belongs to the firm that first had it for the life of the
    /// database (its callbacks, call records and answers name the queue),
    /// so a start or reload giving it to another firm is refused; this is
    /// the deliberate way, refused while callbacks of the queue are pending
    /// or a campaign of the old firm works it, and, unless --with-history,
    /// while it holds any record. Written to the audit log.
    RebindQueue {
        /// The store's directory (as given to `serve --data-dir`).
        #[arg(
            long = "data-dir",
            env = "CENTRALINO_DATA_DIR",
            default_value = "centralino-data"
        )]
        data_dir: PathBuf,
        /// The queue's name.
        #[arg(long)]
        queue: String,
        /// The firm (tenant) it moves to.
        #[arg(long)]
        tenant: String,
        /// The queue's records (callbacks, calls, queue events) go with it:
        /// the new firm reads them. Without it, a queue with any is refused.
        #[arg(long = "with-history")]
        with_history: bool,
        /// The audit key file. Default: the configuration's
        /// `store.audit_key_file`, else DIR/audit.key (the node's own).
        #[arg(long = "key-file")]
        key_file: Option<PathBuf>,
        /// The configuration the node will start with: it must give the
        /// queue to that firm (and names the audit key file).
        #[arg(long, env = "CENTRALINO_CONFIG")]
        config: PathBuf,
    },
    /// Each queue's service figures per interval from a store's queue log
    /// (README, "Service figures"): the same as `GET /api/v1/reports/queues`.
    Report {
        /// The store's directory (as given to `serve --data-dir`).
        #[arg(
            long = "data-dir",
            env = "CENTRALINO_DATA_DIR",
            default_value = "centralino-data"
        )]
        data_dir: PathBuf,
        /// The node's configuration (each queue's thresholds). Default: the
        /// embedded one.
        #[arg(long, env = "CENTRALINO_CONFIG")]
        config: Option<PathBuf>,
        /// First instant, RFC 3339. Default: midnight in Rome today.
        #[arg(long)]
        from: Option<String>,
        /// End (excluded), RFC 3339. Default: a day after `from`.
        #[arg(long)]
        to: Option<String>,
        /// 15m, 1h or 1d.
        #[arg(long, default_value = "15m")]
        interval: String,
        /// One queue only.
        #[arg(long)]
        queue: Option<String>,
        /// CSV instead of JSON.
        #[arg(long)]
        csv: bool,
        /// The operators' figures (`/api/v1/reports/agents`) instead of the
        /// queues'; `--queue` then names one operator.
        #[arg(long)]
        agents: bool,
        /// The queue log of the calls entering a queue in the span, as
        /// `simulate --replay` reads it (CSV `seconds,call,queue,event`).
        #[arg(long)]
        replay: bool,
    },
    /// Validate a configuration file and list every problem with its key path.
    CheckConfig {
        /// The file to check.
        file: PathBuf,
    },
    /// Run the routing core against synthetic traffic in virtual time
    /// (Poisson arrivals, exponential handle and patience times) or against
    /// a replayed queue-event log: every configured operator logged in,
    /// synthetic arrivals split evenly over the queues.
    Simulate {
        /// Configuration file (queues and operators). Default: the embedded one.
        #[arg(long)]
        config: Option<PathBuf>,
        /// Replay this queue-event log (CSV `seconds,call,queue,event`,
        /// events enter/connect/complete/abandon) instead of generating
        /// traffic; `--aht` is the handle time of calls never completed.
        #[arg(long)]
        replay: Option<PathBuf>,
        /// Calls to generate.
        #[arg(long, default_value_t = 10_000)]
        calls: u64,
        /// Arrivals per second, over all queues.
        #[arg(long, default_value_t = 0.1)]
        rate: f64,
        /// Mean handle time, seconds.
        #[arg(long, default_value_t = 180.0)]
        aht: f64,
        /// Mean patience before abandoning, seconds (default: never abandons).
        #[arg(long)]
        patience: Option<f64>,
        /// Seed of the traffic generator.
        #[arg(long, default_value_t = 1)]
        seed: u64,
        /// Service level threshold, seconds.
        #[arg(long = "service-level-seconds", default_value_t = 20.0)]
        service_level_seconds: f64,
        /// Print one JSON object instead of a table.
        #[arg(long)]
        json: bool,
        /// Size an outbound campaign instead: each mode's pacer dials
        /// citizens who answer, are busy or do not answer; reports dials
        /// per hour, operator occupancy and abandon rate (`--aht` is the
        /// handle time, `--seed` the citizens' dice).
        #[arg(long)]
        outbound: bool,
        /// Operators working the campaign (outbound; default: every
        /// configured operator).
        #[arg(long)]
        operators: Option<u32>,
        /// Chance a dialled citizen answers (outbound).
        #[arg(long, default_value_t = 0.3)]
        answer: f64,
        /// Chance a dialled citizen is busy (outbound; the rest do not answer).
        #[arg(long, default_value_t = 0.1)]
        busy: f64,
        /// Hours of campaign (outbound).
        #[arg(long, default_value_t = 8.0)]
        hours: f64,
        /// Most abandoned per answered call, predictive (outbound).
        #[arg(long = "abandon-cap", default_value_t = 0.03)]
        abandon_cap: f64,
        /// Check the staffing advisor on a day instead: calls per second
        /// in each interval, comma-separated (e.g. `0.2,1.5,3,2,0.8`);
        /// each interval is staffed as the advisor says and the day is
        /// simulated through the router (`--aht`, `--service-level-seconds`,
        /// `--seed` apply).
        #[arg(long)]
        day: Option<String>,
        /// Minutes per interval of `--day`.
        #[arg(long = "interval-minutes", default_value_t = 15.0)]
        interval_minutes: f64,
        /// Service level the advisor staffs for (`--day`), a fraction.
        #[arg(long, default_value_t = 0.8)]
        target: f64,
        /// Days simulated (`--day`): more give steadier figures.
        #[arg(long, default_value_t = 5)]
        days: u32,
    },
}

/// `centralino simulate --outbound`'s options.
struct Outbound {
    operators: Option<u32>,
    answer: f64,
    busy: f64,
    hours: f64,
    abandon_cap: f64,
    aht: f64,
    seed: u64,
}

/// `centralino simulate --outbound`: each mode's pacer against the same
/// citizens, in virtual time.
fn simulate_outbound(path: Option<PathBuf>, o: &Outbound, json: bool) -> Result<()> {
    use centralino_campaigns::Mode;
    use centralino_campaigns::pacer::PacerConfig;
    use centralino_campaigns::sim::{SimConfig, simulate};
    let unit = |v: f64| (0.0..=1.0).contains(&v);
    anyhow::ensure!(unit(o.answer), "--answer must be in 0..=1");
    anyhow::ensure!(unit(o.busy), "--busy must be in 0..=1");
    anyhow::ensure!(
        o.answer + o.busy <= 1.0,
        "--answer plus --busy must be at most 1"
    );
    anyhow::ensure!(
        o.hours.is_finite() && o.hours > 0.0 && o.hours <= 24.0,
        "--hours must be in (0, 24]"
    );
    anyhow::ensure!(
        (0.0..=0.03).contains(&o.abandon_cap),
        "--abandon-cap must be in 0..=0.03 (the legal limit)"
    );
    anyhow::ensure!(
        o.aht.is_finite() && o.aht >= 1.0 && o.aht <= 7200.0,
        "--aht must be in 1..=7200 seconds"
    );
    let operators = match o.operators {
        Some(n) => n,
        None => u32::try_from(load(path)?.agents.len()).unwrap_or(u32::MAX),
    };
    anyhow::ensure!(
        (1..=5000).contains(&operators),
        "--operators must be in 1..=5000 (the configuration has {operators})"
    );
    let mut rows = Vec::new();
    for mode in [Mode::Progressive, Mode::Predictive] {
        let mut pacer = PacerConfig::new(mode);
        pacer.abandon_cap = o.abandon_cap;
        let r = simulate(&SimConfig {
            pacer,
            operators,
            answer: o.answer,
            busy: o.busy,
            handle_seconds: o.aht.round() as u64,
            ring_seconds: 15,
            no_answer_seconds: 25,
            seconds: (o.hours * 3600.0).round() as u64,
            seed: o.seed,
        });
        rows.push((mode, r));
    }
    if json {
        let body: Vec<String> = rows
            .iter()
            .map(|(m, r)| {
                format!(
                    "\"{}\": {{\"attempts\": {}, \"attempts_per_hour\": {:.1}, \"answered\": {}, \"abandoned\": {}, \"abandon_rate\": {:.6}, \"occupancy\": {:.6}}}",
                    m.as_str(), r.attempts, r.attempts_per_hour, r.answered, r.abandoned, r.abandon_rate, r.occupancy
                )
            })
            .collect();
        println!("{{\"outbound\": {{{}}}}}", body.join(", "));
    } else {
        println!(
            "{operators} operators, {:.0} % answer, {:.0} % busy, {:.0} s handle time, {} h",
            o.answer * 100.0,
            o.busy * 100.0,
            o.aht,
            o.hours
        );
        println!(
            "{:<12} {:>10} {:>10} {:>9} {:>9} {:>8} {:>9}",
            "mode", "attempts", "per hour", "answered", "abandoned", "aband.", "occupancy"
        );
        for (m, r) in &rows {
            println!(
                "{:<12} {:>10} {:>10.0} {:>9} {:>9} {:>7.2}% {:>8.1}%",
                m.as_str(),
                r.attempts,
                r.attempts_per_hour,
                r.answered,
                r.abandoned,
                r.abandon_rate * 100.0,
                r.occupancy * 100.0
            );
        }
        println!("preview dials like progressive, after each operator's look at the contact");
    }
    Ok(())
}

/// `centralino report`: exit 2 when the store or the configuration cannot
/// be read or the bounds are wrong.
/// What `centralino report` prints.
enum ReportKind {
    Queues,
    Agents,
    Replay,
}

fn report(
    data_dir: &Path,
    config: Option<PathBuf>,
    query: &str,
    csv: bool,
    kind: ReportKind,
) -> ExitCode {
    let path = data_dir.join("centralino.db");
    if !path.is_file() {
        eprintln!("centralino: no store at {}", path.display());
        return ExitCode::from(2);
    }
    let config = match load(config) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("centralino: {e:#}");
            return ExitCode::from(2);
        }
    };
    let out = centralino_store::Store::open(&path)
        .map_err(|e| format!("{}: {e}", path.display()))
        .and_then(|store| match kind {
            ReportKind::Agents => centralino_net::agent_report_text(&store, query, csv),
            ReportKind::Replay => centralino_net::replay_log_text(&store, query),
            ReportKind::Queues => centralino_net::queue_report_text(&store, &config, query, csv),
        });
    match out {
        Ok(text) => {
            print!("{text}");
            if !text.ends_with('\n') {
                println!();
            }
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("centralino: {e}");
            ExitCode::from(2)
        }
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::CheckConfig { file } => check_config(&file),
        Command::RebindQueue {
            data_dir,
            queue,
            tenant,
            with_history,
            key_file,
            config,
        } => rebind::rebind(rebind::RebindArgs {
            data_dir,
            queue,
            tenant,
            with_history,
            key_file,
            config,
        }),
        Command::Report {
            data_dir,
            config,
            from,
            to,
            interval,
            queue,
            csv,
            agents,
            replay,
        } => {
            let query: Vec<String> = [("from", from), ("to", to), ("queue", queue)]
                .into_iter()
                .filter_map(|(k, v)| v.map(|v| format!("{k}={v}")))
                .chain([format!("interval={interval}")])
                .collect();
            let kind = if replay {
                ReportKind::Replay
            } else if agents {
                ReportKind::Agents
            } else {
                ReportKind::Queues
            };
            report(&data_dir, config, &query.join("&"), csv, kind)
        }
        Command::Audit {
            data_dir,
            tail,
            key_file,
            config,
            expect_head,
            number,
        } => audit::audit(audit::AuditArgs {
            data_dir,
            tail,
            key_file,
            config,
            expect_head,
            number,
        }),
        Command::Simulate {
            day: Some(rates),
            interval_minutes,
            target,
            days,
            aht,
            seed,
            service_level_seconds,
            json,
            ..
        } => {
            let d = day::Day {
                rates,
                interval_minutes,
                target,
                days,
                aht,
                service_level_seconds,
                seed,
            };
            match day::simulate_day(&d, json) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("centralino: {e:#}");
                    ExitCode::from(2)
                }
            }
        }
        Command::Simulate {
            config,
            replay,
            aht,
            seed,
            json,
            outbound,
            operators,
            answer,
            busy,
            hours,
            abandon_cap,
            ..
        } if outbound => {
            if replay.is_some() {
                eprintln!("centralino: --outbound does not replay a queue log (--replay)");
                return ExitCode::from(2);
            }
            let o = Outbound {
                operators,
                answer,
                busy,
                hours,
                abandon_cap,
                aht,
                seed,
            };
            match simulate_outbound(config, &o, json) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("centralino: {e:#}");
                    ExitCode::from(2)
                }
            }
        }
        Command::Simulate {
            config,
            replay,
            calls,
            rate,
            aht,
            patience,
            seed,
            service_level_seconds,
            json,
            ..
        } => {
            let traffic = centralino_routing::sim::Traffic {
                calls,
                rate,
                aht_seconds: aht,
                patience_seconds: patience,
                service_level_seconds,
                seed,
            };
            match simulate(config, replay, &traffic, json) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("centralino: {e:#}");
                    ExitCode::from(2)
                }
            }
        }
        Command::Serve {
            config,
            sip_listen,
            http_listen,
            data_dir,
        } => match serve(config, sip_listen, http_listen, &data_dir) {
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
    let flows = match read_flows_dir(file, &text) {
        Ok(f) => f,
        Err(e) => {
            eprintln!("{}: {e:#}", file.display());
            return ExitCode::from(1);
        }
    };
    match Config::from_toml_with_flows(&text, &flows) {
        Ok(c) => {
            // Prompt files are on this machine's disk: checked here, not in
            // the (I/O-free) configuration crate.
            let missing: Vec<(String, String)> = c
                .flow_prompts()
                .into_iter()
                .filter(|(_, name)| c.find_prompt(name).is_none())
                .collect();
            for (path, name) in &missing {
                eprintln!(
                    "{}: {path}: prompt {name:?} not found in media.prompts_dir or media.sounds_dir",
                    file.display()
                );
            }
            if !missing.is_empty() {
                return ExitCode::from(1);
            }
            for w in c.dead_end_warnings() {
                eprintln!("{}: warning: {w}", file.display());
            }
            println!(
                "{}: ok ({} tenant(s), {} trunk(s), {} queue(s), {} flow(s), {} operator(s))",
                file.display(),
                c.tenants.len(),
                c.trunks.len(),
                c.queues.len(),
                c.flows.len(),
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

fn simulate(
    path: Option<PathBuf>,
    replay: Option<PathBuf>,
    traffic: &centralino_routing::sim::Traffic,
    json: bool,
) -> Result<()> {
    use centralino_routing::sim;
    let positive = |v: f64| v.is_finite() && v > 0.0;
    anyhow::ensure!(
        traffic.calls > 0 && traffic.calls <= 100_000_000,
        "--calls must be in 1..=100000000"
    );
    anyhow::ensure!(
        positive(traffic.rate),
        "--rate must be a positive number of calls per second"
    );
    anyhow::ensure!(
        positive(traffic.aht_seconds),
        "--aht must be a positive number of seconds"
    );
    anyhow::ensure!(
        traffic.patience_seconds.is_none_or(positive),
        "--patience must be a positive number of seconds"
    );
    anyhow::ensure!(
        traffic.service_level_seconds.is_finite() && traffic.service_level_seconds >= 0.0,
        "--service-level-seconds must be zero or more"
    );
    let config = load(path)?;
    anyhow::ensure!(!config.queues.is_empty(), "the configuration has no queue");
    let queues = config.routing_queues();
    let agents = config.routing_agents();
    let tenants = config.tenants.len();
    let reports = match replay {
        Some(file) => {
            let text = std::fs::read_to_string(&file)
                .with_context(|| format!("cannot read {}", file.display()))?;
            let arrivals = sim::parse_queue_log(
                &text,
                |name| queues.iter().position(|q| q.name == name).map(|i| i as u32),
                traffic.aht_seconds,
            )
            .with_context(|| format!("{}", file.display()))?;
            anyhow::ensure!(
                !arrivals.is_empty(),
                "{}: no call to replay",
                file.display()
            );
            sim::replay(
                &queues,
                tenants,
                &agents,
                &arrivals,
                traffic.service_level_seconds,
            )
        }
        None => sim::simulate(&queues, tenants, &agents, traffic),
    };
    if json {
        let body: Vec<String> = queues
            .iter()
            .zip(&reports)
            .map(|(q, r)| {
                format!(
                    "\"{}\": {{\"offered\": {}, \"answered\": {}, \"abandoned\": {}, \"service_level\": {:.6}, \"asa_seconds\": {:.6}, \"abandon_rate\": {:.6}, \"occupancy\": {:.6}}}",
                    q.name, r.offered, r.answered, r.abandoned, r.service_level, r.asa_seconds, r.abandon_rate, r.occupancy
                )
            })
            .collect();
        println!("{{\"queues\": {{{}}}}}", body.join(", "));
    } else {
        println!(
            "{:<20} {:>9} {:>9} {:>9} {:>8} {:>9} {:>8} {:>9}",
            "queue", "offered", "answered", "abandoned", "SL", "ASA s", "aband.", "occupancy"
        );
        for (q, r) in queues.iter().zip(&reports) {
            println!(
                "{:<20} {:>9} {:>9} {:>9} {:>7.1}% {:>9.1} {:>7.1}% {:>8.1}%",
                q.name,
                r.offered,
                r.answered,
                r.abandoned,
                r.service_level * 100.0,
                r.asa_seconds,
                r.abandon_rate * 100.0,
                r.occupancy * 100.0
            );
        }
        println!(
            "service level = answered within {} s / (answered + abandoned)",
            traffic.service_level_seconds
        );
    }
    Ok(())
}

/// The `*.toml` files of the configuration's `flows_dir` (relative to the
/// configuration file), one flow each, in name order.
fn read_flows_dir(config: &Path, text: &str) -> Result<Vec<(String, String)>> {
    let Some(dir) = Config::flows_dir(text) else {
        return Ok(Vec::new());
    };
    let dir = config.parent().unwrap_or_else(|| Path::new(".")).join(dir);
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .with_context(|| format!("flows_dir {}", dir.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "toml"))
        .collect();
    files.sort();
    files
        .into_iter()
        .map(|f| {
            let body =
                std::fs::read_to_string(&f).with_context(|| format!("reading {}", f.display()))?;
            Ok((f.display().to_string(), body))
        })
        .collect()
}

fn load(path: Option<PathBuf>) -> Result<Config> {
    load_seeded(path, &centralino_config::Seed::default(), None, true)
}

/// `load`, names numbered after those of `seed` (a reload keeps the
/// running configuration's numbering and its queues' places), with the operators provisioned
/// through the API in `data_dir`'s store after the file's own. A
/// provisioned operator whose name the file now uses is left out (the
/// file's wins); provisioned operators that do not fit the configuration
/// any more (a queue or firm gone) fail a reload, and at start
/// (`at_start`) are left out with an error in the log: the node always
/// starts on a valid file, and the API (`DELETE`/`PUT`) repairs them.
fn load_seeded(
    path: Option<PathBuf>,
    seed: &centralino_config::Seed,
    data_dir: Option<&Path>,
    at_start: bool,
) -> Result<Config> {
    let (text, flows, what) = match &path {
        None => (
            centralino_config::DEFAULT_TOML.to_owned(),
            Vec::new(),
            "the embedded configuration".to_owned(),
        ),
        Some(p) => {
            let text =
                std::fs::read_to_string(p).with_context(|| format!("reading {}", p.display()))?;
            let flows = read_flows_dir(p, &text)?;
            (text, flows, p.display().to_string())
        }
    };
    let file = Config::from_toml_seeded(&text, &flows, seed)
        .with_context(|| format!("{what} is not a valid configuration"))?;
    let mut provisioned = match data_dir {
        Some(d) => centralino_store::read_operators(&d.join("centralino.db"))
            .context("reading the operators provisioned in the store")?,
        None => Vec::new(),
    };
    if provisioned.is_empty() {
        return Ok(file);
    }
    let in_file: std::collections::HashSet<&str> =
        file.agents.iter().map(|a| a.username.as_str()).collect();
    let before = provisioned.len();
    provisioned.retain(|o| !in_file.contains(o.username.as_str()));
    if provisioned.len() < before {
        warn!(
            operators = before - provisioned.len(),
            "provisioned operators named like operators of the configuration file are left out (the file's win)"
        );
    }
    let mut merged = text.clone();
    for o in &provisioned {
        merged.push_str(&o.toml());
    }
    match Config::from_toml_seeded(&merged, &flows, seed) {
        Ok(c) => Ok(c),
        Err(e) if at_start => {
            tracing::error!(
                error = %e,
                operators = provisioned.len(),
                "the operators provisioned through the API do not fit the configuration: started without them; fix or remove them (PUT/DELETE /api/v1/agents/{{username}}) and reload"
            );
            Ok(file)
        }
        Err(e) => Err(anyhow::Error::new(e)).with_context(|| {
            format!(
                "{what} with the {} operators provisioned through the API is not a valid configuration",
                provisioned.len()
            )
        }),
    }
}

fn serve(
    config: Option<PathBuf>,
    sip_listen: Vec<SocketAddr>,
    http_listen: Option<SocketAddr>,
    data_dir: &Path,
) -> Result<()> {
    // The log, and beside it the calls' spans for OpenTelemetry (kept
    // only once `[tracing]` turns the export on, whatever the log level).
    let otlp_sink = otlp::Sink::default();
    {
        use tracing_subscriber::prelude::*;
        let log = tracing_subscriber::EnvFilter::try_from_env("CENTRALINO_LOG")
            .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
        let on = otlp_sink.clone();
        let calls = tracing_subscriber::filter::filter_fn(move |m| {
            m.is_span() && m.name() == "call" && on.get().is_some()
        });
        tracing_subscriber::registry()
            .with(
                tracing_subscriber::fmt::layer()
                    .with_target(false)
                    .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stdout()))
                    .with_filter(log),
            )
            .with(
                otlp::CallSpans {
                    sink: otlp_sink.clone(),
                }
                .with_filter(calls),
            )
            .init();
    }
    let embedded = config.is_none();
    let config_path = config.clone();
    let mut config = load_seeded(
        config,
        &centralino_config::Seed::default(),
        Some(data_dir),
        true,
    )?;
    if !sip_listen.is_empty() {
        config.sip.listen = sip_listen;
    }
    if let Some(h) = http_listen {
        config.http_listen = h;
    }
    centralino_types::set_unmask_numbers(config.unmask_numbers);
    if embedded {
        info!("running on the embedded DEMO configuration (public demo passwords, 127.0.0.1 only)");
    }
    // The open-file limit raised and the descriptor table grown before
    // any thread starts (`centralino_net::descriptors`).
    centralino_net::descriptors::prepare(config.sip.max_calls);
    // One thread pumps sockets and the engine: the engine is single-owner
    // anyway, and cross-thread wake-ups per datagram cost more than they
    // bring (scripts/load: 2,500 clean calls/s multi-threaded, 3,000 here).
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        // Its blocking pool's threads start from the engine's thread, and
        // would keep its `sip.engine_nice`.
        .on_thread_start(centralino_net::background_thread)
        .build()
        .context("starting the runtime")?;
    // SIP over TCP and TLS (handshakes, records, framing) and the national
    // network's client on threads of their own; finished once the
    // engine's runtime is gone (below).
    let streams = centralino_net::streams::Streams::start(config.sip.io_threads)
        .context("starting the SIP stream runtime")?;
    // The HTTP endpoint has a thread and runtime of its own: a flood of
    // requests, or a slow handler, never delays the engine's loop, and
    // `/healthz` still answers (engine stalled) when that loop stops.
    let http_runtime = http_runtime().context("starting the HTTP runtime")?;
    // The engine's metrics and the drivers', in one registry.
    let thresholds: Vec<f64> = config
        .queues
        .iter()
        .flat_map(|q| [q.service.level, q.service.level2, q.service.short_abandon])
        .map(|d| d.as_secs_f64())
        .collect();
    let metrics = Metrics::with_thresholds(&thresholds);
    let net_metrics = centralino_net::NetMetrics::new(&metrics.registry);
    if let Some(t) = config.tracing.clone() {
        use centralino_b2bua::metrics::{counter_vec, register};
        let spans = register(
            &metrics.registry,
            counter_vec(
                "centralino_otlp_spans_total",
                "Call spans for the OpenTelemetry collector, by outcome (sent, failed, dropped)",
                &["outcome"],
            ),
        );
        info!(collector = %t.addr, path = %t.path, "exporting call spans (OTLP)");
        let _http = http_runtime.enter();
        otlp::start(&otlp_sink, t, spans);
    }
    // The engine's queue exists from here; the API, SIGHUP and the drain
    // speak to the engine through it, the SIP side runs the engine on it.
    let (engine, inbox) = centralino_net::EngineHandle::new();
    // SIGHUP and the API (admin tokens) reload the same way: the file is
    // compared with the running configuration key by key.
    let loader_path = config_path.clone();
    let loader_data = data_dir.to_path_buf();
    let loader: centralino_net::Loader = Arc::new(move |seed| {
        load_seeded(loader_path.clone(), seed, Some(&loader_data), false)
            .map_err(|e| format!("{e:#}"))
    });
    // The API's own tasks (the SMS notifier) run on the HTTP runtime.
    let api = {
        let _http = http_runtime.enter();
        centralino_net::Api::start(
            &config,
            data_dir,
            metrics.clone(),
            net_metrics.clone(),
            engine.clone(),
            loader,
        )
        .context("the durable store")?
    };
    let records = api.records();
    let desks = api.desks();
    let reload_api = api.clone();
    let heartbeat = Heartbeat::new();
    // The one draining flag: `/healthz` reads it, the callback scheduler
    // stops claiming on it, `EngineHandle::drain` sets it.
    let health = Health::new(
        engine.draining(),
        heartbeat.clone(),
        Some(api.store_probe()),
    );
    let listener = bind_http(config.http_listen).context("HTTP endpoint")?;
    let http_addr = listener.local_addr().context("HTTP endpoint")?;
    // HTTPS when a certificate is configured: a file the node cannot use
    // stops it here, with the reason.
    let tls = match &config.http_web.tls {
        Some((cert, key)) => Some(centralino_net::web::tls_config(cert, key)?),
        None => None,
    };
    // A metrics token file the node cannot use stops it here, named.
    let web =
        centralino_net::web::WebPolicy::new(&config.http_web, config.http_listen, tls.is_some())
            .map_err(anyhow::Error::msg)?;
    let mut http = HttpThread::start(
        http_runtime,
        listener,
        config.http_limits,
        net_metrics.clone(),
        api,
        health,
        (tls, web),
    )?;
    let stream_handle = streams.handle();
    let result = runtime.block_on(async move {
        let sip = match SipServer::start(
            &config,
            metrics,
            Some(records),
            Some(desks),
            heartbeat,
            inbox,
            net_metrics,
            stream_handle,
        )
        .await
        {
            Ok(sip) => sip,
            Err(e) => {
                http.stop().await;
                return Err(e).context("SIP listeners");
            }
        };
        for (t, a) in &sip.bound {
            info!(transport = ?t, addr = %a, "ready");
        }
        tokio::spawn(reload_on_sighup(reload_api));
        info!(http = %http_addr, "centralino ready");
        let control = engine;
        let result = tokio::select! {
            () = sip.join() => Ok(()),
            ended = &mut http.done => {
                // Nothing to stop: the HTTP thread is over.
                return match ended {
                    Ok(Err(e)) => Err(e).context("HTTP endpoint"),
                    Ok(Ok(())) => Ok(()),
                    Err(_) => Err(anyhow::anyhow!("the HTTP endpoint's thread ended")),
                };
            }
            r = shutdown_signal() => match r {
                Ok(()) => drain(&control, config.sip.drain).await,
                Err(e) => Err(e),
            },
        };
        http.stop().await;
        result
    });
    // The engine's task ends here if it has not: its connections' writers
    // close, and each stream connection writes what it was given (a
    // drain's last BYEs) and closes before the stream runtime stops.
    drop(runtime);
    streams.finish(Duration::from_secs(2));
    result
}

/// The HTTP endpoint's thread, running `serve_http` (the accept loop) on
/// its own runtime, whose workers serve the connections.
struct HttpThread {
    stop: tokio::sync::watch::Sender<bool>,
    /// What `serve_http` returned; dropped unsent if the thread panicked.
    done: tokio::sync::oneshot::Receiver<Result<(), centralino_net::NetError>>,
    thread: std::thread::JoinHandle<()>,
}

impl HttpThread {
    /// Longest wait for the thread once told to stop: the grace its
    /// requests get, then the runtime's own shutdown, with room to spare.
    const STOP_WAIT: Duration = Duration::from_secs(5);

    fn start(
        runtime: tokio::runtime::Runtime,
        listener: std::net::TcpListener,
        limits: centralino_config::HttpLimits,
        metrics: centralino_net::NetMetrics,
        api: centralino_net::Api,
        health: Health,
        (tls, web): (
            Option<centralino_net::web::TlsConfig>,
            centralino_net::web::WebPolicy,
        ),
    ) -> Result<Self> {
        let (stop, stop_rx) = tokio::sync::watch::channel(false);
        let (done_tx, done) = tokio::sync::oneshot::channel();
        let thread = std::thread::Builder::new()
            .name("http".into())
            .spawn(move || {
                let served = runtime.block_on(serve_http(
                    listener,
                    limits,
                    metrics,
                    Some(api),
                    health,
                    tls,
                    web,
                    stop_rx,
                ));
                // What is left (upgraded WebSockets, the SMS notifier) is
                // dropped; a blocking task (a reload reading its file)
                // gets a moment.
                runtime.shutdown_timeout(Duration::from_secs(1));
                let _ = done_tx.send(served);
            })
            .context("starting the HTTP thread")?;
        Ok(Self { stop, done, thread })
    }

    /// Stops the endpoint (`/healthz` answered `draining` until now) and
    /// waits for its thread, a bounded time: the process is leaving.
    async fn stop(self) {
        let _ = self.stop.send(true);
        match tokio::time::timeout(Self::STOP_WAIT, self.done).await {
            Ok(_) => {
                // It has sent its last word: the join is immediate.
                let _ = self.thread.join();
            }
            Err(_) => warn!("the HTTP endpoint did not stop in time"),
        }
    }
}

/// Graceful shutdown (SIGTERM or Ctrl-C): new calls get 503 and
/// `/healthz` says draining, calls in progress go on for up to `limit`
/// (a second signal cuts it short), then the rest are ended and the call
/// records written before the process exits.
async fn drain(control: &centralino_net::EngineHandle, limit: Duration) -> Result<()> {
    info!(
        limit_seconds = limit.as_secs(),
        "draining: waiting for the calls in progress"
    );
    let idle = control.drain().await;
    tokio::select! {
        _ = idle => info!("drained: no call left"),
        () = tokio::time::sleep(limit) => warn!("drain limit reached"),
        r = shutdown_signal() => {
            r?;
            warn!("second signal: not waiting any longer");
        }
    }
    control.shutdown().await;
    info!("shut down");
    Ok(())
}

/// SIGHUP re-reads the configuration file: every key that changed is
/// applied live, or, when one needs a restart, none is (each such key is
/// logged); an invalid file is reported and the running configuration
/// stays.
async fn reload_on_sighup(api: centralino_net::Api) {
    use tokio::signal::unix::{SignalKind, signal};
    let Ok(mut hup) = signal(SignalKind::hangup()) else {
        warn!("cannot install the SIGHUP handler: no live reload");
        return;
    };
    while hup.recv().await.is_some() {
        info!("SIGHUP: reloading the configuration");
        if let Err(e) = api.reload().await {
            warn!(reason = %e, "configuration not reloaded");
        }
    }
}

async fn shutdown_signal() -> Result<()> {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .context("installing the SIGTERM handler")?;
    tokio::select! {
        r = tokio::signal::ctrl_c() => r.context("waiting for Ctrl-C"),
        _ = term.recv() => Ok(()),
    }
}
