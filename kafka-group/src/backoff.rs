//! The one backoff policy for every retry loop: exponential, with jitter, optionally within
//! an overall budget. Public so that applications retrying around the group (fetching,
//! writing) pace themselves the same way.

use std::time::{Duration, Instant};

use rand::Rng;

#[derive(Debug, Clone)]
pub struct Backoff {
    initial: Duration,
    next: Duration,
    max: Duration,
    deadline: Option<Instant>,
}

impl Backoff {
    /// From 50 ms up to 2 s between attempts, for at most `budget` in total.
    pub fn new(budget: Duration) -> Self {
        Self {
            deadline: Some(Instant::now() + budget),
            ..Self::unbounded_between(Duration::from_millis(50), Duration::from_secs(2))
        }
    }

    /// From 100 ms up to 5 s, forever (the group member: it must come back whenever the
    /// cluster does).
    pub fn unbounded() -> Self {
        Self::unbounded_between(Duration::from_millis(100), Duration::from_secs(5))
    }

    /// From `initial` doubling up to `max`, forever.
    pub fn unbounded_between(initial: Duration, max: Duration) -> Self {
        Self {
            initial,
            next: initial,
            max,
            deadline: None,
        }
    }

    /// The pause before the next attempt (between half and all of the current step), and
    /// the step doubles.
    pub fn next_delay(&mut self) -> Duration {
        let jitter = rand::rng().random_range(0.5..1.0);
        let delay = self.next.mul_f64(jitter);
        self.next = (self.next * 2).min(self.max);
        delay
    }

    /// Sleeps before the next attempt; `false` (without sleeping) when the budget is spent.
    pub async fn wait(&mut self) -> bool {
        let delay = self.next_delay();
        if let Some(deadline) = self.deadline {
            if Instant::now() + delay > deadline {
                return false;
            }
        }
        tokio::time::sleep(delay).await;
        true
    }

    /// After a success: the next failure starts from the first step again.
    pub fn reset(&mut self) {
        self.next = self.initial;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delays_double_up_to_the_maximum_with_jitter_and_reset() {
        let mut backoff =
            Backoff::unbounded_between(Duration::from_millis(100), Duration::from_millis(400));
        let steps: Vec<Duration> = (0..5).map(|_| backoff.next_delay()).collect();
        for (delay, step) in steps.iter().zip([100, 200, 400, 400, 400]) {
            let step = Duration::from_millis(step);
            assert!(
                *delay >= step / 2 && *delay <= step,
                "{delay:?} for {step:?}"
            );
        }
        backoff.reset();
        assert!(backoff.next_delay() <= Duration::from_millis(100));
    }
}
