//! The `passerelle` command.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use clap::{Parser, Subcommand};
use passerelle::config::Config;
use passerelle::store::{Store, StoreOptions};
use passerelle::time::SystemClock;

#[derive(Parser)]
#[command(
    name = "passerelle",
    version,
    about = "FHIR R4 gateway for admission and orientation requests"
)]
struct Cli {
    /// Configuration file (TOML); environment variables override it.
    #[arg(long, global = true, env = "PASSERELLE_CONFIG")]
    config: Option<PathBuf>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the gateway (migrates the database first).
    Serve,
    /// Apply the database migrations and exit.
    Migrate,
}

fn init_logs(json: bool) {
    let filter = tracing_subscriber::EnvFilter::try_from_env("PASSERELLE_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info,sqlx=warn"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    if json {
        builder.json().init();
    } else {
        builder.init();
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let config = match Config::load(cli.config.as_deref()) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("passerelle: {e}");
            return ExitCode::from(2);
        }
    };
    init_logs(config.log_json);
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("passerelle: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async {
        match cli.command {
            Command::Serve => passerelle::server::serve(config)
                .await
                .map_err(|e| e.to_string()),
            Command::Migrate => {
                let opts = StoreOptions {
                    pool_size: 1,
                    sqlite_durable: config.sqlite_durable,
                };
                Store::open(&config.database_url, &opts, Arc::new(SystemClock))
                    .await
                    .map(|_| eprintln!("passerelle: database is up to date"))
                    .map_err(|e| e.to_string())
            }
        }
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("passerelle: {e}");
            ExitCode::FAILURE
        }
    }
}
