//! Consumer protocol (KIP-848): how a member moves from the partitions it owns to the
//! assignment the coordinator sent. Pure, so every case is a unit test.
//!
//! The coordinator names partitions by topic id; the application by topic name. A partition
//! whose topic id this member cannot name yet (a topic created since its last metadata) is
//! left for a later step rather than guessed.

use std::collections::{BTreeMap, BTreeSet};

use uuid::Uuid;

use crate::TopicPartition;

/// The coordinator's assignment for this member: topic id → partitions.
pub(super) type Target = BTreeMap<Uuid, BTreeSet<i32>>;

/// The next step from `owned` towards `target`.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Step {
    /// Nothing to do: `owned` is the target (or all that can be named of it).
    Settled,
    /// Let go of these first; only then may anything be added (the coordinator hands a
    /// partition to its next owner once this member reported it gone).
    Revoke(Vec<TopicPartition>),
    /// Nothing to revoke: take these as well.
    Add(Vec<TopicPartition>),
}

/// The target's partitions this member can name, and whether any could not be named.
pub(super) fn named(
    target: &Target,
    names: &BTreeMap<Uuid, String>,
) -> (BTreeSet<TopicPartition>, bool) {
    let mut partitions = BTreeSet::new();
    let mut unnamed = false;
    for (id, ps) in target {
        match names.get(id) {
            Some(topic) => partitions.extend(ps.iter().map(|p| TopicPartition::new(topic, *p))),
            None => unnamed = true,
        }
    }
    (partitions, unnamed)
}

/// Revoke what the target no longer holds, else add what it holds beyond `owned`.
pub(super) fn next_step(
    owned: &BTreeSet<TopicPartition>,
    target: &BTreeSet<TopicPartition>,
) -> Step {
    let revoke: Vec<TopicPartition> = owned.difference(target).cloned().collect();
    if !revoke.is_empty() {
        return Step::Revoke(revoke);
    }
    let add: Vec<TopicPartition> = target.difference(owned).cloned().collect();
    if add.is_empty() {
        Step::Settled
    } else {
        Step::Add(add)
    }
}

/// `owned` as the coordinator wants it reported: topic id → partitions. Partitions of a topic
/// whose id is unknown cannot be reported (and were never assigned by id).
pub(super) fn by_topic_id(
    owned: &BTreeSet<TopicPartition>,
    ids: &BTreeMap<String, Uuid>,
) -> BTreeMap<Uuid, Vec<i32>> {
    let mut report: BTreeMap<Uuid, Vec<i32>> = BTreeMap::new();
    for tp in owned {
        if let Some(id) = ids.get(&tp.topic) {
            report.entry(*id).or_default().push(tp.partition);
        }
    }
    report
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tps(topic: &str, partitions: &[i32]) -> BTreeSet<TopicPartition> {
        partitions
            .iter()
            .map(|p| TopicPartition::new(topic, *p))
            .collect()
    }

    #[test]
    fn revoking_comes_before_adding() {
        let owned = tps("t", &[0, 1, 2]);
        let target = tps("t", &[2, 3]);
        assert_eq!(
            next_step(&owned, &target),
            Step::Revoke(tps("t", &[0, 1]).into_iter().collect())
        );
        let after_revoke = tps("t", &[2]);
        assert_eq!(
            next_step(&after_revoke, &target),
            Step::Add(tps("t", &[3]).into_iter().collect())
        );
        assert_eq!(next_step(&target, &target), Step::Settled);
    }

    #[test]
    fn an_empty_target_revokes_everything() {
        let owned = tps("t", &[4, 5]);
        assert_eq!(
            next_step(&owned, &BTreeSet::new()),
            Step::Revoke(owned.iter().cloned().collect())
        );
        assert_eq!(next_step(&BTreeSet::new(), &BTreeSet::new()), Step::Settled);
    }

    #[test]
    fn partitions_of_a_topic_id_not_known_yet_are_left_out_and_flagged() {
        let known = Uuid::from_u128(1);
        let unknown = Uuid::from_u128(2);
        let target: Target = [
            (known, [0, 1].into_iter().collect()),
            (unknown, [0].into_iter().collect()),
        ]
        .into_iter()
        .collect();
        let names = [(known, "purchases".to_string())].into_iter().collect();
        let (partitions, unnamed) = named(&target, &names);
        assert_eq!(partitions, tps("purchases", &[0, 1]));
        assert!(unnamed);
    }

    #[test]
    fn owned_partitions_are_reported_by_topic_id() {
        let id = Uuid::from_u128(7);
        let ids = [("purchases".to_string(), id)].into_iter().collect();
        let owned: BTreeSet<TopicPartition> = tps("purchases", &[3, 1])
            .into_iter()
            .chain(tps("gone", &[0]))
            .collect();
        let report = by_topic_id(&owned, &ids);
        assert_eq!(report, [(id, vec![1, 3])].into_iter().collect());
    }
}
