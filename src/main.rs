//! The `dataloom` command line: parse, load config, start, map errors to exit codes.
//!
//! Exit codes: 0 clean stop, 1 runtime failure (cannot bind, store), 2 bad configuration (a bad
//! schema file under `schemas.strict = true` included). `schema check`: 0 valid, 1 not.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use clap::{Parser, Subcommand};
use dataloom::config::{Backend, Config, LogFormat, Overrides};

#[derive(Parser, Debug)]
#[command(name = "dataloom", version, about = "MQTT-compatible state broker")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(clap::Args, Debug, Clone, Default)]
struct ConfigArgs {
    /// TOML configuration file (defaults < file < DATALOOM_* environment < flags).
    #[arg(long, short = 'c')]
    config: Option<PathBuf>,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Run the broker.
    Serve {
        #[command(flatten)]
        cfg: ConfigArgs,
        /// MQTT/TCP listener address (listeners.tcp.bind).
        #[arg(long)]
        bind: Option<String>,
        /// HTTP listener address (http.bind).
        #[arg(long)]
        http_bind: Option<String>,
        /// Data directory (storage.data_dir).
        #[arg(long)]
        data_dir: Option<PathBuf>,
        /// Storage backend (storage.backend).
        #[arg(long, value_parser = parse_backend)]
        storage: Option<Backend>,
        /// Log filter, e.g. `info` or `dataloom=debug` (log.level).
        #[arg(long)]
        log_level: Option<String>,
        /// Log format (log.format).
        #[arg(long, value_parser = parse_format)]
        log_format: Option<LogFormat>,
    },
    /// Validate the configuration and print the effective values.
    CheckConfig {
        #[command(flatten)]
        cfg: ConfigArgs,
    },
    /// Print the built-in default configuration as TOML.
    PrintDefaultConfig,
    /// JSON Schema tools (`$schema/` registry).
    Schema {
        #[command(subcommand)]
        command: SchemaCommand,
    },
    /// API keys: on a stopped broker's data directory, or through the running broker's HTTP
    /// admin endpoint (used automatically when the data directory is locked, or with --url).
    Key {
        #[command(subcommand)]
        command: KeyCommand,
    },
}

/// Which broker a command reads: a stopped one's data directory, or a running one over HTTP.
#[derive(clap::Args, Debug, Clone)]
struct BrokerAt {
    #[command(flatten)]
    cfg: ConfigArgs,
    /// Data directory of the broker (storage.data_dir).
    #[arg(long)]
    data_dir: Option<PathBuf>,
    /// The running broker's HTTP address, e.g. http://127.0.0.1:9883 (`key` commands default to
    /// http.bind when the data directory is locked by the running broker).
    #[arg(long)]
    url: Option<String>,
}

#[derive(clap::Args, Debug, Clone)]
struct KeyTarget {
    #[command(flatten)]
    at: BrokerAt,
    /// ID:SECRET of an admin key, for the HTTP admin endpoint.
    #[arg(long, env = "DATALOOM_ADMIN_KEY", hide_env_values = true)]
    admin_key: Option<String>,
}

#[derive(Subcommand, Debug)]
enum KeyCommand {
    /// Create a key; prints its secret once (stdout).
    Create(CreateArgs),
    /// List keys (never secrets) as an aligned table.
    List {
        #[command(flatten)]
        target: KeyTarget,
        /// Print one JSON array instead of the table.
        #[arg(long)]
        json: bool,
    },
    /// Revoke a key: its live connections close now, later CONNECTs are refused.
    Revoke {
        #[command(flatten)]
        target: KeyTarget,
        name: String,
    },
}

// The options of `key create` (no doc comment: the variant's is its help text).
#[derive(clap::Args, Debug)]
struct CreateArgs {
    #[command(flatten)]
    target: KeyTarget,
    /// The key id (the MQTT username).
    #[arg(long)]
    name: String,
    /// Topic filters it may publish to (`%c` client id, `%u` key id).
    #[arg(long, num_args = 1..)]
    publish: Vec<String>,
    /// Topic filters it may subscribe to.
    #[arg(long, num_args = 1..)]
    subscribe: Vec<String>,
    /// Topic filters it may never publish to (deny wins).
    #[arg(long, num_args = 1..)]
    deny_publish: Vec<String>,
    /// Topic filters it may never read (deny wins).
    #[arg(long, num_args = 1..)]
    deny_subscribe: Vec<String>,
    /// Role admin: write `$schema/`, read `$SYS/` and `$dead/`, manage keys over HTTP.
    #[arg(long)]
    admin: bool,
    /// Expiry time, RFC 3339 (2030-01-01T00:00:00Z).
    #[arg(long)]
    expires: Option<String>,
    /// Client ids it may connect with: glob with `*`, `?`, `%u`.
    #[arg(long)]
    client_id: Option<String>,
    /// Read the secret from stdin (at least 32 characters) instead of generating one.
    #[arg(long)]
    secret_stdin: bool,
    /// Print an `[[auth.keys]]` config block (hash only) instead of storing the key.
    #[arg(long)]
    print_config: bool,
}

#[derive(Subcommand, Debug)]
enum SchemaCommand {
    /// Check that SCHEMA is a valid JSON Schema and, if given, that PAYLOAD is valid under it.
    /// Prints the broker's message; exit code 0 when valid, 1 when not.
    Check {
        /// The schema document (its file name maps to the filter, as in `schemas/`).
        schema: PathBuf,
        /// A JSON payload to validate.
        payload: Option<PathBuf>,
    },
    /// Write every schema a stopped broker registered to DIR (one file per filter, laid out like
    /// `schemas/`, each with a `title` usable as a type name) plus DIR/index.json.
    Export {
        /// Where to write the files.
        dir: PathBuf,
        /// `--url`: ask a running broker (its state API) instead of reading the data directory.
        #[command(flatten)]
        at: BrokerAt,
        /// ID:SECRET of a key that may read `$schema/#`, for --url.
        #[arg(long, env = "DATALOOM_KEY", hide_env_values = true)]
        key: Option<String>,
    },
}

fn parse_backend(s: &str) -> Result<Backend, String> {
    match s {
        "fjall" => Ok(Backend::Fjall),
        "memory" => Ok(Backend::Memory),
        _ => Err(format!("{s:?} is not a storage backend (fjall or memory)")),
    }
}

fn parse_format(s: &str) -> Result<LogFormat, String> {
    match s {
        "text" => Ok(LogFormat::Text),
        "json" => Ok(LogFormat::Json),
        _ => Err(format!("{s:?} is not a log format (text or json)")),
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::PrintDefaultConfig => {
            print!("{}", Config::default_toml());
            ExitCode::SUCCESS
        }
        Command::Schema { command: SchemaCommand::Check { schema, payload } } => {
            match dataloom::schema::check_files(&schema, payload.as_deref()) {
                Ok(line) => {
                    println!("{line}");
                    ExitCode::SUCCESS
                }
                Err(line) => {
                    eprintln!("{line}");
                    ExitCode::from(1)
                }
            }
        }
        Command::Schema { command: SchemaCommand::Export { dir, at, key } } => schema_export(&dir, at, key),
        Command::Key { command } => key_command(command),
        Command::CheckConfig { cfg } => match Config::load(cfg.config.as_deref(), &Overrides::default()) {
            Ok(c) => {
                print!("{}", toml::to_string_pretty(&c).unwrap_or_default());
                eprintln!("dataloom: configuration is valid");
                ExitCode::SUCCESS
            }
            Err(e) => config_error(&e),
        },
        Command::Serve { cfg, bind, http_bind, data_dir, storage, log_level, log_format } => {
            let o = Overrides { bind, http_bind, data_dir, storage, log_level, log_format };
            let config = match Config::load(cfg.config.as_deref(), &o) {
                Ok(c) => c,
                Err(e) => return config_error(&e),
            };
            init_logging(&config);
            match serve(config) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("dataloom: {e:#}");
                    // A bad schema file under `schemas.strict` is a configuration error.
                    match e.downcast_ref::<dataloom::server::StartError>() {
                        Some(
                            dataloom::server::StartError::Schemas(_)
                            | dataloom::server::StartError::Config(_),
                        ) => ExitCode::from(2),
                        _ => ExitCode::from(1),
                    }
                }
            }
        }
    }
}

fn schema_export(dir: &std::path::Path, at: BrokerAt, key: Option<String>) -> ExitCode {
    let o = Overrides { data_dir: at.data_dir, ..Overrides::default() };
    let config = match Config::load(at.cfg.config.as_deref(), &o) {
        Ok(c) => c,
        Err(e) => return config_error(&e),
    };
    let written = match at.url {
        Some(url) => dataloom::cli::export::export_from(&url, key.as_deref(), dir),
        None => dataloom::cli::export::export(&config, dir),
    };
    match written {
        Ok(written) => {
            let rows: Vec<Vec<String>> = written
                .iter()
                .map(|e| {
                    vec![
                        e.filter.clone(),
                        e.version.to_string(),
                        e.title.clone(),
                        e.file.display().to_string(),
                    ]
                })
                .collect();
            print!("{}", dataloom::auth::cli::table(&["FILTER", "VERSION", "TITLE", "FILE"], &rows));
            eprintln!(
                "dataloom: {} schemas written to {} (index.json lists them)",
                written.len(),
                dir.display()
            );
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("dataloom: schema export: {e}");
            ExitCode::from(1)
        }
    }
}

fn key_command(command: KeyCommand) -> ExitCode {
    use dataloom::auth::cli::{self, Action, CliError};
    let (target, action, print_config) = match command {
        KeyCommand::List { target, json } => (target, Action::List { json }, false),
        KeyCommand::Revoke { target, name } => (target, Action::Revoke(name), false),
        KeyCommand::Create(a) => {
            let mut secret = String::new();
            if a.secret_stdin && std::io::stdin().read_line(&mut secret).is_err() {
                eprintln!("dataloom: cannot read the secret from stdin");
                return ExitCode::from(2);
            }
            let spec = dataloom::auth::KeySpec {
                name: a.name,
                publish: a.publish,
                subscribe: a.subscribe,
                deny_publish: a.deny_publish,
                deny_subscribe: a.deny_subscribe,
                admin: a.admin,
                client_id: a.client_id.unwrap_or_default(),
                expires: a.expires.unwrap_or_default(),
                secret: secret.trim_end_matches(['\r', '\n']).to_string(),
            };
            (a.target, Action::Create(spec), a.print_config)
        }
    };
    let result = match (print_config, action) {
        (true, Action::Create(spec)) => cli::print_config(spec),
        (_, action) => {
            let o = Overrides { data_dir: target.at.data_dir, ..Overrides::default() };
            let config = match Config::load(target.at.cfg.config.as_deref(), &o) {
                Ok(c) => c,
                Err(e) => return config_error(&e),
            };
            let t = cli::Target { url: target.at.url, admin_key: target.admin_key };
            cli::run(&config, action, &t)
        }
    };
    match result {
        Ok(out) => {
            print!("{}", out.stdout);
            if !out.stderr.is_empty() {
                eprintln!("dataloom: {}", out.stderr);
            }
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("dataloom: {e}");
            match e {
                CliError::Usage(_) | CliError::Auth(dataloom::auth::AuthError::Invalid(_)) => {
                    ExitCode::from(2)
                }
                _ => ExitCode::from(1),
            }
        }
    }
}

fn config_error(e: &dataloom::config::ConfigError) -> ExitCode {
    eprintln!("dataloom: {e}");
    ExitCode::from(2)
}

fn init_logging(cfg: &Config) {
    // The storage engine's own info lines (one per LSM tree) are noise at our info level.
    let quiet = |level: &str| {
        let mut f = level.to_string();
        for dep in ["fjall", "lsm_tree"] {
            if !level.contains(dep) {
                f.push_str(&format!(",{dep}=warn"));
            }
        }
        f
    };
    let filter = std::env::var("RUST_LOG")
        .ok()
        .and_then(|v| tracing_subscriber::EnvFilter::try_new(quiet(&v)).ok())
        .or_else(|| tracing_subscriber::EnvFilter::try_new(quiet(&cfg.log.level)).ok())
        .unwrap_or_else(|| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr);
    match cfg.log.format {
        LogFormat::Json => builder.json().init(),
        LogFormat::Text => builder.init(),
    }
}

/// The runtime: one worker per core. Built with `--cfg tokio_unstable` (`.cargo/config.toml`),
/// its LIFO slot is off, so connections woken together run in the order their packets arrived
/// and a SUBSCRIBE is not overtaken by a PUBLISH from another connection that reached the
/// broker after it (docs/decisions.md, "Packets take effect in arrival order").
fn runtime() -> std::io::Result<tokio::runtime::Runtime> {
    let mut builder = tokio::runtime::Builder::new_multi_thread();
    builder.enable_all();
    #[cfg(tokio_unstable)]
    builder.disable_lifo_slot();
    #[cfg(not(tokio_unstable))]
    tracing::warn!(
        "built without --cfg tokio_unstable (RUSTFLAGS replaces .cargo/config.toml): packets of \
         different connections that arrive together may take effect in reverse order"
    );
    builder.build()
}

fn serve(config: Config) -> anyhow::Result<()> {
    // Before any thread exists: raise the open-file limit and size the file table for every
    // connection (plus the store's and listeners' own descriptors).
    let want = u64::try_from(config.mqtt.max_connections).unwrap_or(u64::MAX).saturating_add(1024);
    match dataloom::net::fds::prepare(want) {
        Some(limit) if limit < want => tracing::debug!(
            limit,
            max_connections = config.mqtt.max_connections,
            "open-file limit caps connections below mqtt.max_connections; raise it (ulimit -n) to serve that many"
        ),
        _ => {}
    }
    let rt = runtime().context("cannot start the async runtime")?;
    rt.block_on(async move {
        // Handlers first: a supervisor may send SIGTERM as soon as it reads the listening line.
        let mut signals = Signals::install()?;
        let notifier = dataloom::notify::Notifier::from_env();
        let running = dataloom::server::start(&config).await?;
        println!("dataloom listening on mqtt://{}", running.mqtt_addr);
        if let Some(a) = running.tls_addr {
            println!("dataloom listening on mqtts://{a}");
        }
        if let Some(a) = running.ws_addr {
            println!("dataloom listening on ws://{a}");
        }
        if let Some(a) = running.wss_addr {
            println!("dataloom listening on wss://{a}");
        }
        if let Some(a) = running.http_addr {
            println!("dataloom listening on http://{a}");
        }
        notifier.ready(&format!("serving MQTT on {}", running.mqtt_addr));
        let watchdog = notifier.watchdog().map(spawn_watchdog);
        let stop = signals.wait(&running, &notifier).await;
        tracing::info!("shutting down");
        notifier.stopping("shutting down: closing connections");
        if let Some(w) = watchdog {
            w.abort();
        }
        running.shutdown(Duration::from_secs(5)).await;
        stop
    })
}

/// Sends `WATCHDOG=1` at half the unit's `WatchdogSec=` while the runtime turns: a stuck
/// runtime stops the keep-alives and systemd restarts the broker.
fn spawn_watchdog(every: Duration) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let notifier = dataloom::notify::Notifier::from_env();
        let mut tick = tokio::time::interval(every / 2);
        loop {
            tick.tick().await;
            notifier.send("WATCHDOG=1");
        }
    })
}

fn running_store_failed(e: &dataloom::store::StoreError) {
    tracing::error!(error = %e, "store failed; exiting so a supervisor can restart the broker");
}

/// SIGINT, SIGTERM and SIGHUP, listened for from start-up on.
struct Signals {
    int: tokio::signal::unix::Signal,
    term: tokio::signal::unix::Signal,
    hup: tokio::signal::unix::Signal,
}

impl Signals {
    fn install() -> anyhow::Result<Signals> {
        use tokio::signal::unix::{SignalKind, signal};
        Ok(Signals {
            int: signal(SignalKind::interrupt()).context("cannot listen for SIGINT")?,
            term: signal(SignalKind::terminate()).context("cannot listen for SIGTERM")?,
            hup: signal(SignalKind::hangup()).context("cannot listen for SIGHUP")?,
        })
    }

    /// Waits for SIGINT or SIGTERM (or a store failure); SIGHUP meanwhile reloads the TLS
    /// certificates.
    async fn wait(
        &mut self,
        running: &dataloom::server::Running,
        notifier: &dataloom::notify::Notifier,
    ) -> anyhow::Result<()> {
        loop {
            tokio::select! {
                _ = self.int.recv() => return Ok(()),
                _ = self.term.recv() => return Ok(()),
                e = running.store_failed() => {
                    running_store_failed(&e);
                    return Err(anyhow::Error::new(e).context("stopping: the store can no longer write"));
                }
                _ = self.hup.recv() => {
                    notifier.reloading();
                    // reload_certs logs each failure; the old certificates stay in force.
                    let _ = running.reload_certs();
                    notifier.ready("serving (certificates reloaded)");
                }
            }
        }
    }
}
