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
    /// Load a realistic demo data set into the configured database: establishments and units,
    /// prescribers and unit managers, generated patients with test INS, and dossiers in every
    /// state, made through the real rules and timers over the last four months. Refuses a
    /// database that already holds it. Stop the gateway first when it uses a SQLite file.
    Demo(DemoArgs),
}

#[derive(clap::Args)]
struct DemoArgs {
    /// Number of dossiers (one patient each); every state appears from 16 on.
    #[arg(long, default_value_t = 50, value_parser = clap::value_parser!(u16).range(1..=1000))]
    dossiers: u16,
    /// Seed of the generator: the same seed gives the same people and stories.
    #[arg(long, default_value_t = 1)]
    seed: u64,
}

fn init_logs(json: bool, default: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_env("PASSERELLE_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
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
    // the demo's requests and timers would log hundreds of lines: only what goes wrong
    let default_filter = match cli.command {
        Command::Demo(_) => "warn",
        _ => "info,sqlx=warn",
    };
    init_logs(config.log_json, default_filter);
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
            Command::Demo(args) => {
                let opts = passerelle::demo::Options {
                    dossiers: usize::from(args.dossiers),
                    seed: args.seed,
                };
                let started = std::time::Instant::now();
                passerelle::demo::run(&config, &opts)
                    .await
                    .map(|summary| {
                        print!("{summary}");
                        println!("\n(loaded in {:.1} s)", started.elapsed().as_secs_f64());
                    })
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
