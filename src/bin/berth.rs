//! The `berth` binary: parses arguments and hands over to the library.

use clap::Parser as _;

fn main() -> std::process::ExitCode {
    let cli = berth::cli::Cli::parse();
    let daemon = matches!(cli.command, berth::cli::Cmd::Daemon);
    // Commands that serve sockets keep SIGPIPE ignored; the others write to a terminal or pipe.
    let serves = daemon || matches!(cli.command, berth::cli::Cmd::Forward { .. });
    if !serves {
        berth::sys::default_sigpipe();
    }
    let filter = tracing_subscriber::EnvFilter::try_from_env("BERTH_LOG").unwrap_or_else(|_| {
        tracing_subscriber::EnvFilter::new(if daemon { "info" } else { "warn" })
    });
    // The daemon under systemd logs to journald natively, with its fields (BERTH_SERVICE,
    // BERTH_UNIT, BERTH_STATE…) kept as journal fields; anywhere else, plain lines on stderr.
    let journald = (daemon && std::env::var_os("JOURNAL_STREAM").is_some())
        .then(|| tracing_journald::layer().ok())
        .flatten()
        .map(|l| l.with_field_prefix(Some("BERTH".into())));
    use tracing_subscriber::layer::SubscriberExt as _;
    use tracing_subscriber::util::SubscriberInitExt as _;
    let registry = tracing_subscriber::registry().with(filter);
    match journald {
        Some(layer) => registry.with(layer).init(),
        None => registry
            .with(
                tracing_subscriber::fmt::layer()
                    .with_writer(std::io::stderr)
                    .with_ansi(false)
                    .without_time(),
            )
            .init(),
    }
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("berth: error: cannot start the async runtime: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    match rt.block_on(berth::cli::run(cli)) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("berth: error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
