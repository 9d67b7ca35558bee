//! Exponential backoff with jitter and an overall deadline.

use std::time::{Duration, Instant};

use rand::Rng;

pub struct Backoff {
    next: Duration,
    max: Duration,
    deadline: Option<Instant>,
}

impl Backoff {
    /// Retries for at most `budget`.
    pub fn new(budget: Duration) -> Self {
        Self {
            next: Duration::from_millis(50),
            max: Duration::from_secs(2),
            deadline: Some(Instant::now() + budget),
        }
    }

    /// Retries forever (the group member: it must come back whenever the cluster does).
    pub fn unbounded() -> Self {
        Self {
            next: Duration::from_millis(100),
            max: Duration::from_secs(5),
            deadline: None,
        }
    }

    /// Sleeps before the next attempt; `false` when the budget is spent.
    pub async fn wait(&mut self) -> bool {
        let jitter = rand::rng().random_range(0.5..1.0);
        let delay = self.next.mul_f64(jitter);
        if let Some(deadline) = self.deadline {
            if Instant::now() + delay > deadline {
                return false;
            }
        }
        tokio::time::sleep(delay).await;
        self.next = (self.next * 2).min(self.max);
        true
    }

    pub fn reset(&mut self) {
        self.next = Duration::from_millis(50);
    }
}
