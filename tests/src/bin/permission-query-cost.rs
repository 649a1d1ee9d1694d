//! What a permission query costs the sidecar per check (BENCHMARKS.md,
//! "Permission queries"): parsing one (ext_authz parses the context
//! extension on every check) and evaluating one against what a key holds,
//! beside a baseline that does nothing but look one name up in a set.
//!
//! `cargo build --release -p keyplane-tests --bin permission-query-cost &&
//! target/release/permission-query-cost`
//!
//! Bounded: a fixed number of iterations per measurement.

use std::hint::black_box;
use std::time::Instant;

use keyplane_proto::permissions::{Held, Holder, Query};

const ITERATIONS: u32 = 2_000_000;

/// Nanoseconds per call of `f`, best of three rounds.
fn nanos_per(mut f: impl FnMut()) -> f64 {
    (0..3)
        .map(|_| {
            let started = Instant::now();
            for _ in 0..ITERATIONS {
                f();
            }
            started.elapsed().as_nanos() as f64 / f64::from(ITERATIONS)
        })
        .fold(f64::INFINITY, f64::min)
}

fn main() {
    let held = Held::new(["orders.read", "billing.*", "tickets.write", "reports.read", "orders:read"]);
    let queries = [
        "orders.read",
        "(orders.read OR orders.admin) AND billing.invoices.read",
        "(a.x OR b.y OR c.z OR orders.admin) AND (billing.read OR billing.admin) AND (tickets.write OR tickets.admin) AND reports.read",
    ];
    let baseline = nanos_per(|| {
        black_box(held.holds(black_box("orders.read")));
    });
    println!("baseline: one exact name in the held set: {baseline:.0} ns");
    for text in queries {
        let parse = nanos_per(|| {
            black_box(Query::parse(black_box(text)).unwrap());
        });
        let query = Query::parse(text).unwrap();
        let evaluate = nanos_per(|| {
            black_box(query.allows(black_box(&held)));
        });
        println!("{text:?}: parse {parse:.0} ns, evaluate {evaluate:.0} ns ({:.1}× the baseline)", evaluate / baseline);
    }
}
