//! The `teebox` command: run, validate and format site files.

mod allocator;

use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{Parser, Subcommand};

use teebox::config::{self, LoadError, LogConfig, LogFormat, Style};

/// See `allocator.rs`.
#[global_allocator]
static ALLOCATOR: allocator::MiMalloc = allocator::MiMalloc;

#[derive(Parser)]
#[command(
    name = "teebox",
    version,
    about = "A Caddy-style HTTP server with first-class traffic mirroring"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Serve the site file until SIGTERM or SIGINT.
    Run {
        /// The site file.
        #[arg(default_value = "site.kdl")]
        file: PathBuf,
    },
    /// Check a site file and report every mistake in it.
    ///
    /// Exit status: 0 valid, 1 invalid, 2 unreadable (or, with --explain,
    /// an unknown name).
    Validate {
        /// The site file.
        #[arg(required_unless_present = "explain")]
        file: Option<PathBuf>,
        /// Print the options NAME takes instead: a handler's, or a block's
        /// of the site file (global, log, limits, admin, site, tls).
        /// Without a name: list them.
        #[arg(
            long,
            value_name = "NAME",
            num_args = 0..=1,
            default_missing_value = "",
            conflicts_with = "file"
        )]
        explain: Option<String>,
    },
    /// Read a password (prompt, or one line of standard input) and print
    /// its bcrypt hash, for `user` in the admin block or a users_file.
    HashPassword,
    /// Send requests a `record` handler wrote to a target, and sum up
    /// the statuses and response times.
    ///
    /// Exit status: 0 all answered (and, with --compare, all matched);
    /// 1 some failed or differed; 2 unreadable file or bad arguments.
    Replay {
        /// Record files, replayed in the order given (oldest first:
        /// `traffic.jsonl.2 traffic.jsonl.1 traffic.jsonl`).
        #[arg(required = true)]
        files: Vec<PathBuf>,
        /// Where to send them: "http://host:port" or "https://host:port".
        #[arg(long)]
        target: String,
        /// Requests a second (default: as fast as --concurrency allows).
        #[arg(long, conflicts_with = "speed")]
        rate: Option<f64>,
        /// Follow the recording's own pace, this many times faster.
        #[arg(long)]
        speed: Option<f64>,
        /// Requests in flight at most.
        #[arg(long, default_value_t = 16)]
        concurrency: usize,
        /// Per request, the whole exchange ("30s", "500ms").
        #[arg(long, default_value = "30s")]
        timeout: String,
        /// Compare each response with the recorded one (needs a recording
        /// made with `responses #true`).
        #[arg(long)]
        compare: bool,
        /// With --compare: a header that must match (repeatable).
        #[arg(long = "compare-header", value_name = "NAME", requires = "compare")]
        compare_headers: Vec<String>,
        /// With --compare: a JSON path left out of body comparison, such
        /// as '$.ts' (repeatable).
        #[arg(long = "ignore", value_name = "PATH", requires = "compare")]
        ignore: Vec<String>,
    },
    /// Print the site file in its normal layout.
    Fmt {
        file: PathBuf,
        /// Write the result back to the file instead of printing it.
        #[arg(long)]
        overwrite: bool,
    },
}

/// Exit statuses shared by every command that reads a site file.
const INVALID: u8 = 1;
const UNREADABLE: u8 = 2;

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Run { file } => run(&file),
        Command::Validate {
            explain: Some(name),
            ..
        } => explain(&name),
        Command::Validate {
            file: Some(file), ..
        } => validate(&file),
        // clap asks for one or the other.
        Command::Validate { .. } => ExitCode::from(UNREADABLE),
        Command::Fmt { file, overwrite } => fmt(&file, overwrite),
        Command::HashPassword => hash_password(),
        Command::Replay {
            files,
            target,
            rate,
            speed,
            concurrency,
            timeout,
            compare,
            compare_headers,
            ignore,
        } => {
            let options = replay_options(
                files,
                &target,
                rate,
                speed,
                concurrency,
                &timeout,
                compare.then_some((compare_headers, ignore)),
            );
            match options {
                Ok(options) => replay(options),
                Err(why) => {
                    eprintln!("teebox replay: {why}");
                    ExitCode::from(UNREADABLE)
                }
            }
        }
    }
}

/// Checks the replay command line.
fn replay_options(
    files: Vec<PathBuf>,
    target: &str,
    rate: Option<f64>,
    speed: Option<f64>,
    concurrency: usize,
    timeout: &str,
    compare: Option<(Vec<String>, Vec<String>)>,
) -> Result<teebox::replay::ReplayOptions, String> {
    use teebox::replay::Pace;
    let target = teebox::config::value::UpstreamUrl::parse(target)
        .map_err(|e| format!("--target {target:?}: {e}"))?;
    let positive = |flag: &str, v: f64| match v.is_finite() && v > 0.0 {
        true => Ok(v),
        false => Err(format!("--{flag} must be a number above 0")),
    };
    let pace = match (rate, speed) {
        (Some(rate), _) => Pace::Rate(positive("rate", rate)?),
        (None, Some(speed)) => Pace::Speed(positive("speed", speed)?),
        (None, None) => Pace::AsFastAsPossible,
    };
    if concurrency == 0 {
        return Err("--concurrency must be at least 1".into());
    }
    let timeout = teebox::config::value::parse_duration(timeout)
        .filter(|d| !d.is_zero())
        .ok_or_else(|| format!("--timeout {timeout:?} is not a duration such as \"30s\""))?;
    let compare = match compare {
        None => None,
        Some((headers, ignore)) => Some(teebox::diff::CompareRules {
            headers: headers
                .iter()
                .map(|h| {
                    http::HeaderName::from_bytes(h.as_bytes())
                        .map_err(|_| format!("--compare-header {h:?} is not a header name"))
                })
                .collect::<Result<_, _>>()?,
            ignore: ignore
                .iter()
                .map(|p| {
                    teebox::diff::JsonPath::parse(p).map_err(|why| format!("--ignore {p:?}: {why}"))
                })
                .collect::<Result<_, _>>()?,
        }),
    };
    Ok(teebox::replay::ReplayOptions {
        files,
        target,
        pace,
        concurrency,
        timeout,
        compare,
    })
}

fn replay(options: teebox::replay::ReplayOptions) -> ExitCode {
    teebox::logging::init(
        &LogConfig {
            level: "warn",
            format: LogFormat::Text,
        },
        style() == Style::Color,
    );
    let total = match teebox::replay::count(&options.files) {
        Ok(total) => total,
        Err(err) => {
            eprintln!("teebox replay: {err}");
            return ExitCode::from(UNREADABLE);
        }
    };
    let bar = indicatif::ProgressBar::new(total);
    bar.set_style(
        indicatif::ProgressStyle::with_template(
            "{spinner} [{elapsed_precise}] {wide_bar} {pos}/{len} ({per_sec}, eta {eta})",
        )
        .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
    );
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(err) => {
            eprintln!("teebox replay: cannot start: {err}");
            return ExitCode::FAILURE;
        }
    };
    let ticker = bar.clone();
    let result = runtime.block_on(teebox::replay::replay(&options, move || ticker.inc(1)));
    bar.finish_and_clear();
    match result {
        Ok(summary) => {
            if !print_out(&summary.to_string()) {
                return ExitCode::from(UNREADABLE);
            }
            let mismatches = summary.compare.map_or(0, |c| c.mismatches());
            if summary.errors_total() > 0 || mismatches > 0 {
                ExitCode::from(INVALID)
            } else {
                ExitCode::SUCCESS
            }
        }
        Err(err) => {
            eprintln!("teebox replay: {err}");
            ExitCode::from(UNREADABLE)
        }
    }
}

fn style() -> Style {
    let no_color = std::env::var_os("NO_COLOR").is_some_and(|v| !v.is_empty());
    if std::io::stderr().is_terminal() && !no_color {
        Style::Color
    } else {
        Style::Plain
    }
}

/// Loads a site file, printing what is wrong with it; `Err` holds the exit status.
fn load(file: &Path) -> Result<config::Loaded, u8> {
    match config::load(file, teebox::handlers::REGISTRY) {
        Ok(loaded) => {
            eprint!("{}", loaded.render_warnings(style()));
            Ok(loaded)
        }
        Err(LoadError::Invalid(err)) => {
            eprint!("{}", err.render(style()));
            Err(INVALID)
        }
        Err(err @ LoadError::Unreadable { .. }) => {
            eprintln!("teebox: {err}");
            Err(UNREADABLE)
        }
    }
}

fn validate(file: &Path) -> ExitCode {
    match load(file) {
        Ok(loaded) => {
            let verdict = match loaded.warnings.len() {
                0 => format!("{}: valid\n", file.display()),
                n => format!(
                    "{}: valid, {n} warning{}\n",
                    file.display(),
                    if n == 1 { "" } else { "s" }
                ),
            };
            match print_out(&verdict) {
                true => ExitCode::SUCCESS,
                false => ExitCode::from(UNREADABLE),
            }
        }
        Err(status) => ExitCode::from(status),
    }
}

/// `validate --explain [NAME]`: the declared options of a block of the
/// site file or of a handler (their names never meet), or the list of both.
fn explain(name: &str) -> ExitCode {
    use teebox::handlers::{self, REGISTRY};
    let role = |kind: &handlers::HandlerKind| match kind.is_terminal() {
        true => "terminal",
        false => "middleware",
    };
    let explained = if name.is_empty() {
        let mut out = String::from(
            "blocks of the site file (teebox validate --explain BLOCK prints one's options):\n",
        );
        for block in config::BLOCKS {
            out.push_str(&format!("  {:<14} {}\n", block.name, block.written));
        }
        out.push_str("\nhandlers (teebox validate --explain HANDLER prints one's options):\n");
        for kind in REGISTRY {
            out.push_str(&format!("  {:<14} {}\n", kind.name(), role(kind)));
        }
        out
    } else if let Some(block) = config::block(name) {
        let options = config::options::reference(block.options);
        format!("{name} ({})\n\n{options}", block.written)
    } else if let Some(kind) = REGISTRY.find(name) {
        let options = config::options::reference(kind.options());
        format!("{name} ({})\n\n{options}", role(kind))
    } else {
        eprintln!(
            "teebox validate: unknown handler `{name}`, and no block of the site file is named so"
        );
        let blocks = config::BLOCKS.iter().map(|b| b.name);
        let handlers = REGISTRY.iter().map(|k| k.name());
        match teebox::suggest::suggest(name, handlers.clone().chain(blocks.clone())) {
            Some(near) => eprintln!("  help: did you mean `{near}`?"),
            None => eprintln!(
                "  help: the handlers are: {}; the blocks: {}",
                handlers.collect::<Vec<_>>().join(", "),
                blocks.collect::<Vec<_>>().join(", ")
            ),
        }
        return ExitCode::from(UNREADABLE);
    };
    match print_out(&explained) {
        true => ExitCode::SUCCESS,
        false => ExitCode::from(UNREADABLE),
    }
}

/// Writes to standard output. A reader that stopped reading
/// (`teebox validate --explain | head`) ends the output quietly, where
/// `print!` would panic; any other failure (a full disk) is said on
/// standard error, and is `false`.
fn print_out(text: &str) -> bool {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    match out.write_all(text.as_bytes()).and_then(|()| out.flush()) {
        Ok(()) => true,
        Err(err) if err.kind() == std::io::ErrorKind::BrokenPipe => true,
        Err(err) => {
            eprintln!("teebox: cannot write to standard output: {err}");
            false
        }
    }
}

fn fmt(file: &Path, overwrite: bool) -> ExitCode {
    let text = match std::fs::read_to_string(file) {
        Ok(text) => text,
        Err(err) => {
            eprintln!("teebox: cannot read {}: {err}", file.display());
            return ExitCode::from(UNREADABLE);
        }
    };
    let formatted = match config::format(&file.display().to_string(), &text) {
        Ok(formatted) => formatted,
        Err(err) => {
            eprint!("{}", err.render(style()));
            return ExitCode::from(INVALID);
        }
    };
    // kdl's formatter drops some comments (one after a node on its line);
    // never let that cost the user a comment silently.
    let comments =
        |t: &str| t.matches("//").count() + t.matches("/*").count() + t.matches("/-").count();
    if comments(&formatted) < comments(&text) {
        eprintln!(
            "teebox: formatting {} would drop comments; nothing written (move trailing comments to lines of their own)",
            file.display()
        );
        return ExitCode::from(INVALID);
    }
    if !overwrite {
        return match print_out(&formatted) {
            true => ExitCode::SUCCESS,
            false => ExitCode::from(UNREADABLE),
        };
    }
    match teebox::safe_write::replace(file, formatted.as_bytes()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("teebox: {err}");
            ExitCode::from(UNREADABLE)
        }
    }
}

fn hash_password() -> ExitCode {
    let password = if std::io::stdin().is_terminal() {
        rpassword::prompt_password("Password: ")
    } else {
        let mut line = String::new();
        std::io::stdin()
            .read_line(&mut line)
            .map(|_| line.trim_end_matches(['\r', '\n']).to_string())
    };
    let password = match password {
        Ok(p) if !p.is_empty() => p,
        Ok(_) => {
            eprintln!("teebox: the password is empty");
            return ExitCode::from(INVALID);
        }
        Err(err) => {
            eprintln!("teebox: cannot read the password: {err}");
            return ExitCode::from(UNREADABLE);
        }
    };
    match bcrypt::hash(password, bcrypt::DEFAULT_COST) {
        Ok(hash) => match print_out(&format!("{hash}\n")) {
            true => ExitCode::SUCCESS,
            false => ExitCode::from(UNREADABLE),
        },
        Err(err) => {
            eprintln!("teebox: cannot hash the password: {err}");
            ExitCode::FAILURE
        }
    }
}

fn run(file: &Path) -> ExitCode {
    let loaded = match config::load(file, teebox::handlers::REGISTRY) {
        Ok(loaded) => loaded,
        Err(LoadError::Invalid(err)) => {
            match config::log_format_hint(err.file.text()) {
                Some(LogFormat::Json) => {
                    // Only the file's errors are logged before exiting.
                    let json = LogConfig {
                        level: "error",
                        format: LogFormat::Json,
                    };
                    teebox::logging::init(&json, false);
                    teebox::logging::problems(
                        tracing::Level::ERROR,
                        "the site file is invalid; not started",
                        &err.file,
                        &err.problems,
                    );
                }
                _ => eprint!("{}", err.render(style())),
            }
            return ExitCode::from(INVALID);
        }
        Err(err @ LoadError::Unreadable { .. }) => {
            eprintln!("teebox: {err}");
            return ExitCode::from(UNREADABLE);
        }
    };
    teebox::logging::init(&loaded.config.global.log, style() == Style::Color);
    match loaded.config.global.log.format {
        // Every line of a JSON log is an object: one per warning.
        LogFormat::Json => teebox::logging::problems(
            tracing::Level::WARN,
            "the site file has warnings",
            &loaded.config.source,
            &loaded.warnings,
        ),
        LogFormat::Text => eprint!("{}", loaded.render_warnings(style())),
    }
    let config = loaded.config;
    // With one core this runtime serves the connections itself.
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .event_interval(teebox::workers::EVENT_INTERVAL)
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(err) => {
            tracing::error!(error = %err, "cannot start the async runtime");
            return ExitCode::FAILURE;
        }
    };
    let code = runtime.block_on(async {
        let signals = Signals::listen();
        let running = match teebox::server::start(&config).await {
            Ok(running) => running,
            Err(err) => {
                tracing::error!(error = %err, "cannot start");
                return ExitCode::FAILURE;
            }
        };
        teebox::server::fd_limit::raise_and_check(
            &config.global.limits,
            running.handler_connections(),
        );
        tracing::info!(file = %file.display(), version = env!("CARGO_PKG_VERSION"), "teebox serving");
        let signal = serve_until_stopped(&running, signals).await;
        let grace = running.grace_period();
        tracing::info!(%signal, ?grace, "shutting down");
        if running.shutdown(grace).await {
            tracing::info!("stopped");
        }
        ExitCode::SUCCESS
    });
    // A reload the stop cut short may still be reading its file on a
    // blocking thread, and never finish (a FIFO, a hung mount): dropping
    // the runtime would wait for it.
    runtime.shutdown_timeout(EXIT_WAIT);
    code
}

/// How long work left on blocking threads after shutdown may take before
/// the process exits without it.
const EXIT_WAIT: std::time::Duration = std::time::Duration::from_secs(5);

/// SIGTERM, SIGINT and SIGHUP, listened for before the server says it
/// serves: until then, SIGHUP's default action would end the process.
struct Signals {
    term: tokio::signal::unix::Signal,
    int: tokio::signal::unix::Signal,
    hup: tokio::signal::unix::Signal,
}

impl Signals {
    fn listen() -> Option<Signals> {
        use tokio::signal::unix::{signal, SignalKind};
        Some(Signals {
            term: signal(SignalKind::terminate()).ok()?,
            int: signal(SignalKind::interrupt()).ok()?,
            hup: signal(SignalKind::hangup()).ok()?,
        })
    }
}

/// Waits for SIGTERM or SIGINT; reloads the site file on SIGHUP.
async fn serve_until_stopped(
    running: &teebox::server::Running,
    signals: Option<Signals>,
) -> &'static str {
    let Some(mut signals) = signals else {
        tracing::error!("cannot listen for signals; stop with SIGKILL");
        return std::future::pending().await;
    };
    loop {
        tokio::select! {
            _ = signals.term.recv() => return "SIGTERM",
            _ = signals.int.recv() => return "SIGINT",
            // The reload logs its own outcome and diagnostics; SIGTERM is
            // still heard while it runs.
            _ = signals.hup.recv() => running.reload_in_background(),
        }
    }
}
