//! The nemesis run (docs/reliability.md): Postgres, three replicas, three
//! sidecars and a receiver under a random workload and random faults, then
//! checkers over the whole history.
//!
//! Short mode (CI): `target/debug/nemesis --seed 1 --duration 60s`.
//! Long mode: `target/release/nemesis --duration 30m` (a random seed, printed).
//! Exits 1 when a checker finds a violation, printing the seed and the
//! records that show it.

use clap::Parser;

#[derive(Parser)]
struct Args {
    /// Seed of the fault schedule and the workload (random when unset).
    #[arg(long)]
    seed: Option<u64>,
    /// How long faults are injected.
    #[arg(long, default_value = "60s", value_parser = humantime::parse_duration)]
    duration: std::time::Duration,
}

#[tokio::main]
async fn main() {
    let args = Args::parse();
    let seed = args.seed.unwrap_or_else(rand::random);
    let options = keyplane_tests::nemesis::Options { seed, duration: args.duration };
    match keyplane_tests::nemesis::run(options).await {
        Some(true) => println!("nemesis passed (seed {seed})"),
        Some(false) => {
            println!("nemesis FAILED (seed {seed})");
            std::process::exit(1);
        }
        None => println!("nemesis SKIPPED: Postgres is not installed"),
    }
}
