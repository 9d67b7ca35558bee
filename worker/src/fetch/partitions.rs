//! The partitions the fetch loop reads (where each goes on, which wait out an error) and
//! the commands that start and stop them.

use std::{
    collections::BTreeMap,
    time::{Duration, Instant},
};

use kafka_group::{Backoff, PartitionRecords, TopicPartition};
use tokio::sync::oneshot;

/// One response: each partition's records or its error.
pub type Outcomes = BTreeMap<TopicPartition, kafka_group::Result<PartitionRecords>>;

pub enum Command {
    /// Fetch these partitions from these offsets.
    Start(BTreeMap<i32, i64>),
    /// Stop fetching these partitions; answered once nothing more of theirs can reach the
    /// sink.
    Stop {
        partitions: Vec<i32>,
        done: oneshot::Sender<()>,
    },
}

/// The partitions the loop reads: where each goes on, and which wait out an error.
#[derive(Default)]
pub struct Partitions {
    pub(super) next: BTreeMap<i32, i64>,
    pub(super) held: BTreeMap<i32, (Instant, Backoff)>,
}

impl Partitions {
    pub fn apply(&mut self, command: Command) {
        match command {
            Command::Start(offsets) => {
                for partition in offsets.keys() {
                    self.held.remove(partition);
                }
                self.next.extend(offsets);
            }
            Command::Stop { partitions, done } => {
                for partition in &partitions {
                    self.next.remove(partition);
                    self.held.remove(partition);
                }
                // Nothing of theirs is on its way to the sink: a batch is only sent while
                // its partition is still here at the offset it was fetched from.
                let _ = done.send(());
            }
        }
    }

    /// Still reading `partition` from `offset` (not stopped or restarted meanwhile).
    pub fn reads(&self, partition: i32, offset: i64) -> bool {
        self.next.get(&partition) == Some(&offset)
    }

    /// The partitions to ask for now, and when the next held one is due.
    pub fn due(&self, now: Instant) -> (BTreeMap<i32, i64>, Option<Instant>) {
        let mut due = BTreeMap::new();
        let mut next_retry: Option<Instant> = None;
        for (partition, offset) in &self.next {
            match self.held.get(partition) {
                Some((retry_at, _)) if *retry_at > now => {
                    next_retry = Some(next_retry.map_or(*retry_at, |t| t.min(*retry_at)));
                }
                _ => {
                    due.insert(*partition, *offset);
                }
            }
        }
        (due, next_retry)
    }

    /// The partitions to ask for next, before `outcomes` (the response to a request for
    /// `due`) is handed over: where it went well, from where it ended; failed ones are left
    /// out (they wait out a backoff).
    pub fn after(&self, due: &BTreeMap<i32, i64>, outcomes: &Outcomes) -> BTreeMap<i32, i64> {
        let (mut next, _) = self.due(Instant::now());
        for (tp, outcome) in outcomes {
            let Some(&requested) = due.get(&tp.partition) else {
                continue;
            };
            match outcome {
                Ok(fetched) if self.reads(tp.partition, requested) => {
                    next.insert(tp.partition, fetched.next_offset.max(requested));
                }
                _ => {
                    next.remove(&tp.partition);
                }
            }
        }
        next
    }

    /// Leaves `partition` out of requests for its next backoff step.
    pub fn hold(&mut self, partition: i32) -> Duration {
        let (retry_at, backoff) = self
            .held
            .entry(partition)
            .or_insert_with(|| (Instant::now(), Backoff::unbounded()));
        let pause = backoff.next_delay();
        *retry_at = Instant::now() + pause;
        pause
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stop(partitions: Vec<i32>) -> (Command, oneshot::Receiver<()>) {
        let (done, stopped) = oneshot::channel();
        (Command::Stop { partitions, done }, stopped)
    }

    #[test]
    fn a_stopped_partition_is_not_read_and_the_stop_is_answered() {
        let mut partitions = Partitions::default();
        partitions.apply(Command::Start(BTreeMap::from([(0, 10), (1, 20)])));
        let (command, mut stopped) = stop(vec![1]);
        partitions.apply(command);
        assert!(stopped.try_recv().is_ok());
        assert!(partitions.reads(0, 10));
        assert!(!partitions.reads(1, 20));
        assert_eq!(partitions.due(Instant::now()).0, BTreeMap::from([(0, 10)]));
    }

    #[test]
    fn a_held_partition_is_left_out_until_its_retry_is_due() {
        let mut partitions = Partitions::default();
        partitions.apply(Command::Start(BTreeMap::from([(0, 10), (1, 20)])));
        let pause = partitions.hold(1);
        let (due, next_retry) = partitions.due(Instant::now());
        assert_eq!(due, BTreeMap::from([(0, 10)]));
        assert!(next_retry.is_some());
        let (due, _) = partitions.due(Instant::now() + pause + Duration::from_millis(1));
        assert_eq!(due, BTreeMap::from([(0, 10), (1, 20)]));
    }

    fn records(next_offset: i64) -> kafka_group::Result<PartitionRecords> {
        Ok(PartitionRecords {
            records: Vec::new(),
            next_offset,
            high_watermark: next_offset + 100,
            bytes: 0,
        })
    }

    #[test]
    fn the_request_sent_ahead_goes_on_from_where_each_partition_ended() {
        let mut partitions = Partitions::default();
        partitions.apply(Command::Start(BTreeMap::from([(0, 10), (1, 20), (2, 30)])));
        let due = BTreeMap::from([(0, 10), (1, 20), (2, 30)]);
        // Started while the request was out: not in the response, asked for from its start.
        partitions.apply(Command::Start(BTreeMap::from([(3, 40)])));
        // Stopped while the request was out: its records are not asked for again.
        let (command, _stopped) = stop(vec![2]);
        partitions.apply(command);
        let outcomes: Outcomes = BTreeMap::from([
            (TopicPartition::new("t", 0), records(15)),
            (
                TopicPartition::new("t", 1),
                Err(kafka_group::Error::Io("broken".into())),
            ),
            (TopicPartition::new("t", 2), records(35)),
        ]);
        assert_eq!(
            partitions.after(&due, &outcomes),
            BTreeMap::from([(0, 15), (3, 40)])
        );
    }

    #[test]
    fn a_restarted_partition_is_read_from_its_new_offset() {
        let mut partitions = Partitions::default();
        partitions.apply(Command::Start(BTreeMap::from([(0, 10)])));
        partitions.hold(0);
        partitions.apply(Command::Start(BTreeMap::from([(0, 7)])));
        assert!(!partitions.reads(0, 10));
        assert_eq!(partitions.due(Instant::now()).0, BTreeMap::from([(0, 7)]));
    }
}
