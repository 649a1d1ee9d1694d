//! `keyplane-sidecar`: parses the command line, binds listeners, installs
//! logging and hands over to [`keyplane_sidecar::run`].

use clap::Parser;
use keyplane_sidecar::config::{Config, LogFormat};
use keyplane_sidecar::{Listener, Listeners};
use tracing_subscriber::EnvFilter;

/// jemalloc rather than the system allocator: no per-allocation header and
/// size classes that fit the cache's small objects, so 100k cached keys cost
/// ~15 % less memory, and freed pages go back to the OS (BENCHMARKS.md,
/// "Sidecar memory").
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let config = Config::parse();
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    // Colour only on a terminal: a file or a pipe gets plain text.
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).with_ansi(ansi);
    match config.log_format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
    let result = async {
        let listeners = Listeners {
            grpc: Listener::bind(&config.grpc_listen).await?,
            http: Listener::bind(&config.http_listen).await?,
        };
        keyplane_sidecar::run(config, listeners, keyplane_proto::shutdown::signal()).await
    };
    match result.await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(error) => {
            tracing::error!("{error}");
            eprintln!("keyplane-sidecar: {error}");
            std::process::ExitCode::FAILURE
        }
    }
}
