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
    /// The ROR directory (configured in `[ror]`).
    Ror {
        #[command(subcommand)]
        command: RorCommand,
    },
    /// What the operator does: tokens for system clients, the first référent of a structure.
    Admin {
        #[command(subcommand)]
        command: AdminCommand,
    },
}

#[derive(Subcommand)]
enum AdminCommand {
    /// Print a gateway access token for a registered system client (`[[auth.clients]]`),
    /// signed with `[auth] signing_key_file` (the running gateway's key).
    Token {
        /// The client's `client_id`.
        #[arg(long)]
        client: String,
        /// SMART v2 scopes (space-separated); by default all those registered for the client.
        #[arg(long)]
        scope: Option<String>,
    },
    /// Grant a habilitation as the system: the first référent of a structure, in psc mode
    /// (the account exists once its holder signed in with Pro Santé Connect).
    Grant {
        /// The account, `Practitioner/<id>`.
        #[arg(long)]
        practitioner: String,
        /// The structure, `Organization/<id>`.
        #[arg(long)]
        organization: String,
        /// The habilitation profile (a code of the habilitation-profile code system).
        #[arg(long, default_value = "referent")]
        profile: String,
        /// Last day of validity (YYYY-MM-DD); none by default.
        #[arg(long)]
        end: Option<String>,
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
    // the demo's requests and timers would log hundreds of lines: only what goes wrong
    let default_filter = match cli.command {
        Command::Demo(_) | Command::Admin { .. } => "warn",
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
                    sqlite_mmap_bytes: 0,
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
            Command::Ror {
                command:
                    RorCommand::Sync {
                        full,
                        delta: _,
                        region,
                    },
            } => ror_sync(config, full, region).await,
            Command::Admin {
                command: AdminCommand::Token { client, scope },
            } => passerelle::admin::token(&config, &client, scope.as_deref())
                .map(|token| println!("{token}")),
            Command::Admin {
                command:
                    AdminCommand::Grant {
                        practitioner,
                        organization,
                        profile,
                        end,
                    },
            } => {
                let g = passerelle::admin::Grant {
                    practitioner,
                    organization,
                    profile,
                    end,
                };
                passerelle::admin::grant(&config, &g)
                    .await
                    .map(|role| println!("{role}"))
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
