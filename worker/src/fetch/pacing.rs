//! How long the fetch loop waits before its next request and how much that request asks
//! for, from what the last one brought: a pure policy, tested without a broker.

use std::time::Duration;

use kafka_group::FetchLimits;

/// How long to wait before the next request, and how much it asks for, from what the last
/// one brought.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Pacing {
    /// The longest pause while records keep coming.
    pub linger: Duration,
    /// Bytes a request aims to carry.
    pub fill_bytes: usize,
}

/// What one request brought, for [`Pacing`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FetchOutcome {
    /// Record bytes in the response, all partitions together.
    pub bytes: usize,
    /// Some partition has more records than the response carried.
    pub backlog: bool,
    /// Time since the request before this one went out: the window the bytes came in.
    pub interval: Duration,
    /// How long the request itself took.
    pub took: Duration,
    /// How long the broker was allowed to hold the request.
    pub max_wait: Duration,
}

/// A caught-up request asks for this many times `fill_bytes` (one: the answer then comes
/// within one fill's time).
pub const TAIL_FILLS: usize = 1;

/// How long a broker may hold a fetch while this worker is behind: a round's answers come
/// back at once.
pub const BEHIND_MAX_WAIT: Duration = Duration::from_millis(5);

impl Pacing {
    /// What to ask for. While behind: everything `full` allows, and no broker may hold the
    /// request. The requests of one round go to every leader at once and the round ends
    /// with the last answer, so a broker whose partitions are caught up would hold the round
    /// for `max_wait` while another broker's partitions have records waiting (measured on
    /// three brokers: the backlog after a load drained at one round per 500 ms, 40 s instead
    /// of 2). Kafka answers a fetch with nothing at once, at no cost. The wait is
    /// [`BEHIND_MAX_WAIT`], not zero: a few milliseconds cost a round nothing, and a server
    /// that reads "wait zero" as "no time to look" (nisshi 0.7 answers it with no partitions
    /// at all) still returns what it has.
    ///
    /// While caught up, [`TAIL_FILLS`] fills: the answer comes within one fill's time on any broker,
    /// including one that keeps reading a partition while records keep arriving until the
    /// size limit is reached (nisshi 0.7 does: one worker's request was held for 18 s of load
    /// chasing a partition's tail to its 5 MiB limit while the other worker's came back at
    /// once).
    pub fn limits(&self, full: &FetchLimits, behind: bool) -> FetchLimits {
        if behind {
            return FetchLimits {
                max_wait: BEHIND_MAX_WAIT,
                ..full.clone()
            };
        }
        let tail = i32::try_from(self.fill_bytes.saturating_mul(TAIL_FILLS)).unwrap_or(i32::MAX);
        FetchLimits {
            max_bytes: full.max_bytes.min(tail),
            partition_max_bytes: full.partition_max_bytes.min(tail),
            ..full.clone()
        }
    }

    pub fn pause_after(&self, fetched: FetchOutcome) -> Duration {
        if fetched.backlog || fetched.bytes >= self.fill_bytes {
            // Behind or busy: read on at full speed.
            return Duration::ZERO;
        }
        if fetched.bytes == 0 {
            // Nothing came: the broker held the request for `max_wait` and will hold the next
            // one too, answering the moment a record arrives. Only a broker that answered
            // early (it does not wait) is asked less often.
            return fetched
                .max_wait
                .saturating_sub(fetched.took)
                .min(self.linger);
        }
        // Records trickle in at `bytes / interval`: wait until about `fill_bytes` are there.
        let wanted = fetched
            .interval
            .mul_f64(self.fill_bytes as f64 / fetched.bytes as f64);
        wanted.saturating_sub(fetched.took).min(self.linger)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const PACING: Pacing = Pacing {
        linger: Duration::from_millis(100),
        fill_bytes: 64 * 1024,
    };

    fn outcome(bytes: usize, interval_ms: u64) -> FetchOutcome {
        FetchOutcome {
            bytes,
            backlog: false,
            interval: Duration::from_millis(interval_ms),
            took: Duration::from_millis(2),
            max_wait: Duration::from_millis(500),
        }
    }

    #[test]
    fn a_backlog_is_read_without_pausing() {
        let fetched = FetchOutcome {
            backlog: true,
            ..outcome(100, 10)
        };
        assert_eq!(PACING.pause_after(fetched), Duration::ZERO);
    }

    #[test]
    fn a_full_request_is_followed_at_once() {
        assert_eq!(PACING.pause_after(outcome(64 * 1024, 10)), Duration::ZERO);
    }

    #[test]
    fn an_empty_long_poll_is_followed_by_the_next_long_poll_at_once() {
        let fetched = FetchOutcome {
            took: Duration::from_millis(500),
            ..outcome(0, 500)
        };
        assert_eq!(PACING.pause_after(fetched), Duration::ZERO);
    }

    #[test]
    fn a_broker_that_answers_empty_at_once_is_asked_at_most_once_per_linger() {
        let fetched = FetchOutcome {
            took: Duration::from_millis(1),
            ..outcome(0, 1)
        };
        assert_eq!(PACING.pause_after(fetched), PACING.linger);
    }

    #[test]
    fn a_trickle_waits_the_whole_linger() {
        assert_eq!(PACING.pause_after(outcome(200, 100)), PACING.linger);
    }

    #[test]
    fn steady_traffic_waits_about_as_long_as_filling_a_request_takes() {
        // 16 KiB in 20 ms: 64 KiB take 80 ms, of which the request took 2.
        let pause = PACING.pause_after(outcome(16 * 1024, 20));
        assert_eq!(pause, Duration::from_millis(78));
    }

    #[test]
    fn no_linger_never_pauses_while_records_come() {
        let pacing = Pacing {
            linger: Duration::ZERO,
            ..PACING
        };
        assert_eq!(pacing.pause_after(outcome(200, 100)), Duration::ZERO);
    }

    #[test]
    fn a_caught_up_request_asks_for_one_fill_and_one_behind_for_everything_at_once() {
        let full = FetchLimits {
            min_bytes: 1,
            max_wait: Duration::from_millis(500),
            max_bytes: 8 << 20,
            partition_max_bytes: 1 << 20,
        };
        let tail = PACING.limits(&full, false);
        assert_eq!(tail.max_bytes, 64 * 1024);
        assert_eq!(tail.partition_max_bytes, 64 * 1024);
        assert_eq!(tail.max_wait, full.max_wait);
        let behind = PACING.limits(&full, true);
        assert_eq!(
            behind.max_wait, BEHIND_MAX_WAIT,
            "no broker holds a round that is behind"
        );
        assert_eq!(behind.max_bytes, full.max_bytes);
        assert_eq!(behind.partition_max_bytes, full.partition_max_bytes);
        let small = FetchLimits {
            partition_max_bytes: 4096,
            ..full
        };
        assert_eq!(PACING.limits(&small, false).partition_max_bytes, 4096);
    }
}
