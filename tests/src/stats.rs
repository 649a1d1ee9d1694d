//! Latency summaries for the load generators.

use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::Semaphore;

/// Percentiles and throughput of a run.
pub struct Summary {
    /// Operations measured.
    pub count: usize,
    /// Median latency.
    pub p50: Duration,
    /// 99th percentile.
    pub p99: Duration,
    /// 99.9th percentile.
    pub p999: Duration,
    /// Slowest.
    pub max: Duration,
    /// Operations per second over the wall-clock time.
    pub throughput: f64,
}

impl Summary {
    /// Summarises `latencies` measured over `elapsed`.
    pub fn of(mut latencies: Vec<Duration>, elapsed: Duration) -> Self {
        latencies.sort_unstable();
        let at = |q: f64| {
            let index = ((latencies.len() as f64 * q).ceil() as usize).clamp(1, latencies.len().max(1)) - 1;
            latencies.get(index).copied().unwrap_or_default()
        };
        Self {
            count: latencies.len(),
            p50: at(0.50),
            p99: at(0.99),
            p999: at(0.999),
            max: latencies.last().copied().unwrap_or_default(),
            throughput: latencies.len() as f64 / elapsed.as_secs_f64().max(f64::EPSILON),
        }
    }
}

impl std::fmt::Display for Summary {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let ms = |d: Duration| d.as_secs_f64() * 1000.0;
        write!(
            f,
            "n={} p50={:.3}ms p99={:.3}ms p99.9={:.3}ms max={:.3}ms throughput={:.0}/s",
            self.count,
            ms(self.p50),
            ms(self.p99),
            ms(self.p999),
            ms(self.max),
            self.throughput
        )
    }
}

/// Runs `count` calls of `call` with `concurrency` in flight; returns a summary.
pub async fn measure<F, Fut>(count: usize, concurrency: usize, call: F) -> Summary
where
    F: Fn(usize) -> Fut,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    let permits = Arc::new(Semaphore::new(concurrency));
    let started = Instant::now();
    let mut tasks = Vec::with_capacity(count);
    for i in 0..count {
        let permit = permits.clone().acquire_owned().await.expect("semaphore");
        let call = call(i);
        tasks.push(tokio::spawn(async move {
            let begun = Instant::now();
            call.await;
            drop(permit);
            begun.elapsed()
        }));
    }
    let mut latencies = Vec::with_capacity(count);
    for task in tasks {
        latencies.push(task.await.expect("task"));
    }
    Summary::of(latencies, started.elapsed())
}
