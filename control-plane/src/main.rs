//! `keyplane`: parses the command line, binds listeners, installs logging and
//! hands over to [`keyplane_control_plane::run`].

use clap::Parser;
use keyplane_control_plane::config::{Cli, Command, ConsoleListen, LogFormat};
use keyplane_control_plane::crypto::MasterKeys;
use keyplane_control_plane::import_cli::ImportCommand;
use keyplane_control_plane::{Listeners, MigrateAction};
use tokio::net::TcpListener;
use tracing_subscriber::EnvFilter;

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    init_logging(cli.log_format);
    match execute(cli.command).await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(error) => {
            tracing::error!("{error}");
            eprintln!("keyplane: {error}");
            std::process::ExitCode::FAILURE
        }
    }
}

/// Binds `addr`; a failure names the flag that asked for it.
async fn bind(flag: &str, addr: std::net::SocketAddr) -> keyplane_control_plane::Result<TcpListener> {
    TcpListener::bind(addr)
        .await
        .map_err(|error| keyplane_control_plane::Error::Config(format!("{flag} {addr}: {error}")))
}

async fn execute(command: Command) -> keyplane_control_plane::Result<()> {
    match command {
        Command::Serve(config) => {
            let listeners = Listeners {
                grpc: bind("--listen", config.listen).await?,
                metrics: match config.metrics_listen {
                    Some(addr) => Some(bind("--metrics-listen", addr).await?),
                    None => None,
                },
                console: match config.console.address {
                    ConsoleListen::On(addr) => Some(bind("--console-listen", addr).await?),
                    ConsoleListen::Off => None,
                },
            };
            keyplane_control_plane::run(*config, listeners, keyplane_proto::shutdown::signal()).await
        }
        Command::Migrate { storage, status, rollback } => {
            let action = match (status, rollback) {
                (_, Some(count)) => MigrateAction::Rollback(count),
                (true, None) => MigrateAction::Status,
                (false, None) => MigrateAction::Apply,
            };
            let (applied, pending) = keyplane_control_plane::migrate(&storage, action).await?;
            for name in applied {
                println!("applied  {name}");
            }
            for name in pending {
                println!("pending  {name}");
            }
            Ok(())
        }
        Command::Import(ImportCommand::Keys(args)) => {
            let summary = keyplane_control_plane::import_cli::import_keys(&args).await?;
            for refusal in &summary.refused {
                eprintln!("refused  {refusal}");
            }
            println!("imported {}", summary.imported);
            println!("skipped  {} (imported before)", summary.skipped);
            println!("refused  {}", summary.refused.len());
            if !summary.refused.is_empty() {
                // The caller's own records: a status, not an error to log.
                std::process::exit(2);
            }
            Ok(())
        }
        Command::Reseal { storage, master_key_file } => {
            let report = keyplane_control_plane::reseal(&storage, master_key_file.as_deref()).await?;
            println!("api_keys re-sealed              {}", report.api_keys);
            println!("webhook_subscriptions re-sealed {}", report.webhook_subscriptions);
            println!("oauth tokens re-sealed          {}", report.oauth_tokens);
            println!("already under the newest key    {}", report.already_current);
            if report.unreadable.is_empty() {
                return Ok(());
            }
            for row in &report.unreadable {
                println!("unreadable                      {row}");
            }
            Err(keyplane_control_plane::Error::Sealing(format!(
                "{} values could not be opened (tampered, or sealed under a key missing from the file)",
                report.unreadable.len()
            )))
        }
        Command::CreateAdminKey { storage, master_key_file, name, token_prefix } => {
            let token =
                keyplane_control_plane::create_admin_key(&storage, master_key_file.as_deref(), &name, &token_prefix)
                    .await?;
            eprintln!("Created a platform admin key (org keyplane, scope keyplane:admin). It is shown only now:");
            println!("{token}");
            Ok(())
        }
        Command::GenerateMasterKey { id } => {
            print!("{}", MasterKeys::generate_line(&id));
            Ok(())
        }
    }
}

fn init_logging(format: LogFormat) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    // Colour only on a terminal: a file or a pipe gets plain text.
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).with_ansi(ansi);
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}
