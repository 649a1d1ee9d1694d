//! Logging a sample of a flood: a refused check is one WARN line, but under
//! a flood of bad tokens a line per request would cost more than the check
//! and drown the log. Every refusal is counted in metrics and usage; the
//! log gets the first [`LINES_PER_SECOND`] of each second, and the next line
//! logged says how many were left out.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

/// Lines logged per second at most.
pub const LINES_PER_SECOND: u64 = 10;

/// Which events of one kind to log. Lock-free: two atomics touched per
/// event. At a second's boundary a few lines more or fewer may pass.
pub struct LogSample {
    started: Instant,
    /// The current second (since `started`) in the high 32 bits, lines
    /// logged in it in the low 32.
    window: AtomicU64,
    /// Events not logged since the last line.
    left_out: AtomicU64,
}

impl Default for LogSample {
    fn default() -> Self {
        Self { started: Instant::now(), window: AtomicU64::new(0), left_out: AtomicU64::new(0) }
    }
}

impl LogSample {
    /// `Some(left out since the last line)` when this event is to be
    /// logged; `None` when it is left out (and counted).
    pub fn admit(&self) -> Option<u64> {
        let second = self.started.elapsed().as_secs() & u64::from(u32::MAX);
        let mut current = self.window.load(Ordering::Relaxed);
        loop {
            let (window_second, lines) = (current >> 32, current & u64::from(u32::MAX));
            let next = if window_second == second {
                if lines >= LINES_PER_SECOND {
                    self.left_out.fetch_add(1, Ordering::Relaxed);
                    return None;
                }
                current + 1
            } else {
                (second << 32) | 1
            };
            match self.window.compare_exchange_weak(current, next, Ordering::Relaxed, Ordering::Relaxed) {
                Ok(_) => return Some(self.left_out.swap(0, Ordering::Relaxed)),
                Err(actual) => current = actual,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_flood_is_sampled_and_counted() {
        let sample = LogSample::default();
        let admitted = (0..1000).filter(|_| sample.admit().is_some()).count() as u64;
        // Within one second, or across one boundary.
        assert!((LINES_PER_SECOND..=2 * LINES_PER_SECOND).contains(&admitted), "{admitted}");
        std::thread::sleep(std::time::Duration::from_millis(1100));
        assert_eq!(sample.admit(), Some(1000 - admitted), "the next line says how many were left out");
        assert_eq!(sample.admit(), Some(0));
    }
}
