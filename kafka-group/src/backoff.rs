//! The one retry policy of scalable-shop: exponential steps with jitter, optionally within an
//! overall budget. The delays come from `backon`; this type adds what a retry *loop* needs
//! beside them (a deadline that counts the attempts' own time, a reset after a success) and
//! names the two shapes every loop uses, so no loop spells its own numbers.

use std::time::{Duration, Instant};

use backon::{BackoffBuilder, ExponentialBackoff, ExponentialBuilder};

/// A request on behalf of a caller who waits: 50 ms up to 2 s, within a budget.
pub const REQUEST_STEPS: (Duration, Duration) = (Duration::from_millis(50), Duration::from_secs(2));
/// A loop that must come back whenever the cluster or database does (group membership,
/// fetching, commits, the database's index): 100 ms up to 5 s, forever.
pub const RECOVERY_STEPS: (Duration, Duration) =
    (Duration::from_millis(100), Duration::from_secs(5));
/// A probe that must notice a recovery soon after it happens (a partition leader that
/// answers again while purchases wait): 100 ms up to 400 ms.
pub const PROBE_STEPS: (Duration, Duration) =
    (Duration::from_millis(100), Duration::from_millis(400));

#[derive(Debug)]
pub struct Backoff {
    policy: ExponentialBuilder,
    steps: ExponentialBackoff,
    deadline: Option<Instant>,
}

impl Backoff {
    /// [`REQUEST_STEPS`] between attempts, for at most `budget` in total.
    pub fn new(budget: Duration) -> Self {
        Self {
            deadline: Some(Instant::now() + budget),
            ..Self::unbounded_between(REQUEST_STEPS.0, REQUEST_STEPS.1)
        }
    }

    /// [`RECOVERY_STEPS`], forever.
    pub fn unbounded() -> Self {
        Self::unbounded_between(RECOVERY_STEPS.0, RECOVERY_STEPS.1)
    }

    /// [`PROBE_STEPS`], forever.
    pub fn probing() -> Self {
        Self::unbounded_between(PROBE_STEPS.0, PROBE_STEPS.1)
    }

    /// Steps from `initial` doubling up to `max`, forever; each pause is between half of its
    /// step and the whole step (backon's jitter adds up to 100 % to half of each step).
    pub fn unbounded_between(initial: Duration, max: Duration) -> Self {
        let policy = ExponentialBuilder::new()
            .with_min_delay(initial / 2)
            .with_max_delay(max / 2)
            .with_factor(2.0)
            .with_jitter()
            .without_max_times();
        Self {
            steps: policy.build(),
            policy,
            deadline: None,
        }
    }

    /// The pause before the next attempt.
    pub fn next_delay(&mut self) -> Duration {
        // Without `max_times` or a total delay the steps never end; the fallback is the cap.
        self.steps.next().unwrap_or(RECOVERY_STEPS.1)
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
        self.steps = self.policy.build();
    }
}

/// The recovery shape: what a loop with nobody waiting on it uses.
impl Default for Backoff {
    fn default() -> Self {
        Self::unbounded()
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

    #[tokio::test]
    async fn a_budget_ends_the_retries_without_sleeping_past_it() {
        let mut backoff = Backoff::new(Duration::from_millis(120));
        let started = Instant::now();
        let mut attempts = 0;
        while backoff.wait().await {
            attempts += 1;
        }
        assert!(attempts >= 1, "at least one retry fits in the budget");
        assert!(started.elapsed() <= Duration::from_millis(120) + Duration::from_millis(50));
    }
}
