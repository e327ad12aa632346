//! The `lakets` command line: arguments ([`args`]), one module per command ([`commands`]),
//! and one way to print a result as text or JSON ([`output`]).

mod args;
mod commands;
mod context;
mod output;

use std::process::ExitCode;

use clap::parser::ValueSource;
use clap::{CommandFactory, FromArgMatches};

use crate::args::{Cli, Command, LogFormat};
use crate::context::Context;

fn main() -> ExitCode {
    lakets::install_crypto_provider();
    let matches = Cli::command().get_matches();
    let from_argv = matches.value_source("database_url") == Some(ValueSource::CommandLine);
    let cli = match Cli::from_arg_matches(&matches) {
        Ok(cli) => cli,
        Err(e) => e.exit(),
    };
    let mut log_format = cli.log_format;
    if matches.value_source("log_format") == Some(ValueSource::DefaultValue)
        && let Command::Run {
            config: Some(path), ..
        } = &cli.command
        && let Ok(config) = lakets::config::Config::load(Some(path))
        && config.log.format == lakets::config::LogFormat::Json
    {
        log_format = LogFormat::Json;
    }
    init_logging(log_format);
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let ctx = Context::new(&cli, from_argv);
    let result = runtime.block_on(async {
        let shutdown = Box::pin(context::shutdown_signal()?);
        commands::dispatch(&cli.command, &ctx, shutdown).await
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("error: {err:#}");
            let user_error = err
                .downcast_ref::<lakets::Error>()
                .is_some_and(lakets::Error::is_user_error);
            ExitCode::from(if user_error { 2 } else { 1 })
        }
    }
}

fn init_logging(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_env("LAKETS_LOG")
        // deltalake warns of every commit that met another writer's; lakets retries those
        // itself and logs what it decided.
        .unwrap_or_else(|_| {
            tracing_subscriber::EnvFilter::new(
                "warn,lakets=info,deltalake_core::kernel::transaction=error",
            )
        });
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Pretty => builder.compact().init(),
        LogFormat::Json => builder.json().init(),
    }
}
