//! What the soak measures at a step, the median of its rounds, and the
//! last table.

use std::time::Duration;

/// What is measured at one step.
#[derive(Clone, Copy, Default)]
pub struct Figures {
    pub publish_rate: f64,
    pub publish_p99: Duration,
    pub dispatch_rate: f64,
    pub verify_p99: Duration,
    pub list_p99: Duration,
    pub list_endpoint_p99: Duration,
    pub console_p99: Duration,
}

impl Figures {
    /// Each figure's median over `rounds`.
    pub fn median(rounds: &[Figures]) -> Figures {
        fn middle<T: PartialOrd + Copy>(mut values: Vec<T>) -> T {
            values.sort_by(|a, b| a.partial_cmp(b).expect("comparable"));
            values[values.len() / 2]
        }
        let of = |f: fn(&Figures) -> Duration| middle(rounds.iter().map(f).collect());
        Figures {
            publish_rate: middle(rounds.iter().map(|r| r.publish_rate).collect()),
            publish_p99: of(|r| r.publish_p99),
            dispatch_rate: middle(rounds.iter().map(|r| r.dispatch_rate).collect()),
            verify_p99: of(|r| r.verify_p99),
            list_p99: of(|r| r.list_p99),
            list_endpoint_p99: of(|r| r.list_endpoint_p99),
            console_p99: of(|r| r.console_p99),
        }
    }
}

/// Each figure at every step, and its ratio to the empty tables'.
pub fn report(results: &[(usize, Figures)]) {
    let Some((_, empty)) = results.first().copied() else { return };
    type Rate = fn(&Figures) -> f64;
    type Latency = fn(&Figures) -> Duration;
    let rates: [(&str, Rate); 2] =
        [("publish → receipt /s", |f| f.publish_rate), ("dispatch deliveries/s", |f| f.dispatch_rate)];
    let latencies: [(&str, Latency); 5] = [
        ("publish → receipt p99", |f| f.publish_p99),
        ("cache-miss verify p99", |f| f.verify_p99),
        ("ListDeliveries p99", |f| f.list_p99),
        ("ListDeliveries, endpoint p99", |f| f.list_endpoint_p99),
        ("console endpoint page p99", |f| f.console_p99),
    ];
    let steps: Vec<String> = results.iter().map(|(step, _)| step.to_string()).collect();
    println!("\n| figure | {} | ratio at the last step |", steps.join(" | "));
    println!("|---|{}---|", "---|".repeat(steps.len()));
    let last = results.last().map(|(_, f)| *f).unwrap_or_default();
    for (name, rate) in rates {
        let cells: Vec<String> = results.iter().map(|(_, f)| format!("{:.0}", rate(f))).collect();
        println!("| {name} | {} | {:.2} |", cells.join(" | "), rate(&last) / rate(&empty));
    }
    for (name, latency) in latencies {
        let cells: Vec<String> =
            results.iter().map(|(_, f)| format!("{:.2} ms", latency(f).as_secs_f64() * 1e3)).collect();
        println!(
            "| {name} | {} | {:.2} |",
            cells.join(" | "),
            latency(&empty).as_secs_f64() / latency(&last).as_secs_f64()
        );
    }
}
