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
    /// The ROR directory (configured in `[ror]`).
    Ror {
        #[command(subcommand)]
        command: RorCommand,
    },
}

#[derive(Subcommand)]
enum RorCommand {
    /// Pull units, organisations and places from the ROR into the directory, then exit.
    /// Without --full or --delta: a delta if a sync completed before, else a full sync.
    Sync {
        /// Everything (the `$export` route or full paging); closes what the ROR no longer lists.
        #[arg(long, conflicts_with = "delta")]
        full: bool,
        /// Only what changed since the last completed sync (`_lastUpdated`).
        #[arg(long)]
        delta: bool,
        /// Only this region (TRE_R30 code, e.g. 11); overrides `ror.region`.
        #[arg(long, value_name = "CODE")]
        region: Option<String>,
    },
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

async fn ror_sync(config: Config, full: bool, region: Option<String>) -> Result<(), String> {
    use passerelle::directory::{Directory, sync};
    let (directory, client) = Directory::from_config(&config.ror).map_err(|e| e.to_string())?;
    let client = client.ok_or("`ror.base_url` is not configured (see README: ROR directory)")?;
    let base = config
        .base_url
        .clone()
        .unwrap_or_else(|| format!("http://{}", config.listen));
    let app = passerelle::server::App::open(&config, base, Arc::new(SystemClock))
        .await
        .map_err(|e| e.to_string())?;
    let mode = if full {
        sync::Mode::Full
    } else {
        sync::Mode::Delta
    };
    let owner = format!("cli-{}", std::process::id());
    let mut opts = directory.options(mode, &owner, true);
    if region.is_some() {
        opts.region = region;
    }
    let report = sync::run(&app.fhir, &client, &directory.mapping, &opts)
        .await
        .map_err(|e| e.to_string())?;
    eprintln!("passerelle: {}", report.summary());
    for (id, why) in &report.malformed {
        eprintln!("passerelle: malformed {id}: {why}");
    }
    for (id, code) in &report.unknown_codes {
        eprintln!("passerelle: unknown code in {id}: {code}");
    }
    Ok(())
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
            Command::Ror {
                command:
                    RorCommand::Sync {
                        full,
                        delta: _,
                        region,
                    },
            } => ror_sync(config, full, region).await,
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
