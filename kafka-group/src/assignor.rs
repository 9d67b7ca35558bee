//! Partition assignment, computed by the group leader. Pure functions, no I/O.

use std::collections::{BTreeMap, BTreeSet};

use crate::TopicPartition;

/// How the leader splits partitions among members.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Assignor {
    /// Balanced (sizes differ by at most one) and sticky: each member keeps as many of the
    /// partitions it owned as balance allows, so a member joining or leaving moves only the
    /// partitions that must move. Members report what they own in their subscription.
    Sticky,
    /// Kafka's range assignor: per topic, consecutive partition ranges in member id order.
    /// Every Kafka client implements it, so mixed groups can agree on it.
    Range,
    /// The sticky split under the incremental cooperative protocol (KIP-429), named and
    /// behaving like librdkafka's and the Java client's `cooperative-sticky`: members keep
    /// fetching through a rebalance, and a partition that changes owner is first only taken
    /// from its old owner; the new owner gets it in the follow-up rebalance, once the old one
    /// has committed and let go.
    CooperativeSticky,
}

impl Assignor {
    /// The protocol name sent in JoinGroup. The sticky one has its own name because its
    /// rules are not the Java client's `sticky` assignor's.
    pub fn protocol_name(self) -> &'static str {
        match self {
            Assignor::Sticky => "rskafka-sticky",
            Assignor::Range => "range",
            Assignor::CooperativeSticky => "cooperative-sticky",
        }
    }

    pub fn from_protocol_name(name: &str) -> Option<Self> {
        [
            Assignor::CooperativeSticky,
            Assignor::Sticky,
            Assignor::Range,
        ]
        .into_iter()
        .find(|a| a.protocol_name() == name)
    }

    /// Whether a group on this assignor rebalances incrementally: members keep what they
    /// keep, and revoke only what the new assignment no longer gives them.
    pub fn is_cooperative(self) -> bool {
        matches!(self, Assignor::CooperativeSticky)
    }

    /// Splits the partitions of `topics` (name → partition count) among `members`.
    /// Every member appears in the result, possibly with nothing.
    pub fn assign(
        self,
        members: &[MemberSubscription],
        topics: &BTreeMap<String, i32>,
    ) -> BTreeMap<String, Vec<TopicPartition>> {
        let mut result: BTreeMap<String, Vec<TopicPartition>> = members
            .iter()
            .map(|m| (m.member_id.clone(), Vec::new()))
            .collect();
        // Members with the same subscription are balanced together; groups whose members
        // subscribe to different topics are handled one topic set at a time.
        let mut by_subscription: BTreeMap<BTreeSet<&str>, Vec<&MemberSubscription>> =
            BTreeMap::new();
        for member in members {
            let topics: BTreeSet<&str> = member.topics.iter().map(String::as_str).collect();
            by_subscription.entry(topics).or_default().push(member);
        }
        for (subscribed, group) in by_subscription {
            let partitions: Vec<TopicPartition> = subscribed
                .iter()
                .filter_map(|t| topics.get(*t).map(|n| (*t, *n)))
                .flat_map(|(t, n)| (0..n).map(move |p| TopicPartition::new(t, p)))
                .collect();
            let assigned = match self {
                Assignor::Range => range(&group, &partitions),
                Assignor::Sticky => sticky(&group, &partitions),
                Assignor::CooperativeSticky => {
                    withhold_moving_partitions(&group, sticky(&group, &partitions))
                }
            };
            for (member, mut list) in assigned {
                list.sort();
                result.insert(member, list);
            }
        }
        result
    }
}

/// One member's JoinGroup metadata, as the leader sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MemberSubscription {
    pub member_id: String,
    pub topics: Vec<String>,
    /// What the member held before this rebalance (empty for new members).
    pub owned: Vec<TopicPartition>,
}

fn range(
    members: &[&MemberSubscription],
    partitions: &[TopicPartition],
) -> BTreeMap<String, Vec<TopicPartition>> {
    let mut ids: Vec<&str> = members.iter().map(|m| m.member_id.as_str()).collect();
    ids.sort();
    let mut result: BTreeMap<String, Vec<TopicPartition>> =
        ids.iter().map(|id| (id.to_string(), Vec::new())).collect();
    let mut per_topic: BTreeMap<&str, Vec<&TopicPartition>> = BTreeMap::new();
    for tp in partitions {
        per_topic.entry(tp.topic.as_str()).or_default().push(tp);
    }
    for (_, mut tps) in per_topic {
        tps.sort();
        let base = tps.len() / ids.len();
        let extra = tps.len() % ids.len();
        let mut next = tps.into_iter();
        for (i, id) in ids.iter().enumerate() {
            let take = base + usize::from(i < extra);
            result
                .get_mut(*id)
                .expect("every member has an entry")
                .extend(next.by_ref().take(take).cloned());
        }
    }
    result
}

fn sticky(
    members: &[&MemberSubscription],
    partitions: &[TopicPartition],
) -> BTreeMap<String, Vec<TopicPartition>> {
    let mut ids: Vec<&str> = members.iter().map(|m| m.member_id.as_str()).collect();
    ids.sort();
    let base = partitions.len() / ids.len();
    let mut extra_slots = partitions.len() % ids.len();
    let exists: BTreeSet<&TopicPartition> = partitions.iter().collect();

    // What each member may keep: partitions that still exist, claimed by nobody before it.
    // Members that owned the most keep their extra partition first, which moves the least.
    let mut claimed: BTreeSet<&TopicPartition> = BTreeSet::new();
    let mut owned: Vec<(&str, Vec<&TopicPartition>)> = members
        .iter()
        .map(|m| {
            let mut list: Vec<&TopicPartition> =
                m.owned.iter().filter(|tp| exists.contains(tp)).collect();
            list.sort();
            list.dedup();
            (m.member_id.as_str(), list)
        })
        .collect();
    owned.sort_by(|a, b| b.1.len().cmp(&a.1.len()).then(a.0.cmp(b.0)));

    let mut result: BTreeMap<String, Vec<TopicPartition>> =
        ids.iter().map(|id| (id.to_string(), Vec::new())).collect();
    for (id, list) in &owned {
        let valid: Vec<&TopicPartition> = list
            .iter()
            .copied()
            .filter(|tp| !claimed.contains(tp))
            .collect();
        let mut cap = base;
        if valid.len() > base && extra_slots > 0 {
            cap += 1;
            extra_slots -= 1;
        }
        let kept: Vec<&TopicPartition> = valid.into_iter().take(cap).collect();
        claimed.extend(kept.iter().copied());
        result
            .get_mut(*id)
            .expect("every member has an entry")
            .extend(kept.into_iter().cloned());
    }

    // Everything else goes to the least loaded members, within the caps.
    for tp in partitions.iter().filter(|tp| !claimed.contains(tp)) {
        let (id, list) = result
            .iter_mut()
            .filter(|(_, list)| list.len() < base || (list.len() == base && extra_slots > 0))
            .min_by_key(|(id, list)| (list.len(), (*id).clone()))
            .expect("caps add up to the partition count");
        if list.len() == base {
            extra_slots -= 1;
        }
        let _ = id;
        list.push(tp.clone());
    }
    result
}

/// The cooperative rule: a partition another member still owns is not handed to its new
/// owner in this round. The old owner sees it missing from its assignment, revokes it and
/// rejoins; the next round gives it out, unowned. So no partition ever has two owners.
fn withhold_moving_partitions(
    members: &[&MemberSubscription],
    mut plan: BTreeMap<String, Vec<TopicPartition>>,
) -> BTreeMap<String, Vec<TopicPartition>> {
    let mut claimants: BTreeMap<&TopicPartition, BTreeSet<&str>> = BTreeMap::new();
    for member in members {
        for tp in &member.owned {
            claimants.entry(tp).or_default().insert(&member.member_id);
        }
    }
    for (member, partitions) in plan.iter_mut() {
        partitions.retain(|tp| {
            claimants
                .get(tp)
                .is_none_or(|owners| owners.contains(member.as_str()))
        });
    }
    plan
}

#[cfg(test)]
mod tests {
    use super::*;

    fn member(id: &str, owned: &[TopicPartition]) -> MemberSubscription {
        MemberSubscription {
            member_id: id.into(),
            topics: vec!["t".into()],
            owned: owned.to_vec(),
        }
    }

    fn topics(n: i32) -> BTreeMap<String, i32> {
        BTreeMap::from([("t".to_string(), n)])
    }

    fn assert_disjoint_complete_balanced(result: &BTreeMap<String, Vec<TopicPartition>>, n: i32) {
        let mut all: Vec<&TopicPartition> = result.values().flatten().collect();
        all.sort();
        let expected: Vec<TopicPartition> = (0..n).map(|p| TopicPartition::new("t", p)).collect();
        assert_eq!(
            all,
            expected.iter().collect::<Vec<_>>(),
            "disjoint and complete"
        );
        let sizes: Vec<usize> = result.values().map(Vec::len).collect();
        assert!(
            sizes.iter().max().unwrap() - sizes.iter().min().unwrap() <= 1,
            "{sizes:?}"
        );
    }

    fn moved(
        before: &BTreeMap<String, Vec<TopicPartition>>,
        after: &BTreeMap<String, Vec<TopicPartition>>,
    ) -> usize {
        after
            .iter()
            .map(|(id, list)| {
                let old = before.get(id).cloned().unwrap_or_default();
                list.iter().filter(|tp| !old.contains(tp)).count()
            })
            .sum()
    }

    #[test]
    fn range_gives_consecutive_ranges_in_member_order() {
        let result = Assignor::Range.assign(&[member("b", &[]), member("a", &[])], &topics(5));
        let a: Vec<i32> = result["a"].iter().map(|tp| tp.partition).collect();
        let b: Vec<i32> = result["b"].iter().map(|tp| tp.partition).collect();
        assert_eq!(a, [0, 1, 2]);
        assert_eq!(b, [3, 4]);
    }

    #[test]
    fn sticky_moves_only_what_a_new_member_needs() {
        let first = Assignor::Sticky.assign(&[member("a", &[]), member("b", &[])], &topics(12));
        assert_disjoint_complete_balanced(&first, 12);
        let second = Assignor::Sticky.assign(
            &[
                member("a", &first["a"]),
                member("b", &first["b"]),
                member("c", &[]),
            ],
            &topics(12),
        );
        assert_disjoint_complete_balanced(&second, 12);
        assert_eq!(second["c"].len(), 4);
        assert_eq!(moved(&first, &second), 4, "only the newcomer's share moved");
    }

    #[test]
    fn sticky_moves_only_the_leavers_partitions() {
        let three = Assignor::Sticky.assign(
            &[member("a", &[]), member("b", &[]), member("c", &[])],
            &topics(12),
        );
        let two = Assignor::Sticky.assign(
            &[member("a", &three["a"]), member("c", &three["c"])],
            &topics(12),
        );
        assert_disjoint_complete_balanced(&two, 12);
        assert_eq!(moved(&three, &two), 4);
    }

    #[test]
    fn sticky_is_balanced_and_minimal_for_every_fleet_size_change() {
        for n in [1, 5, 12, 13] {
            let mut current: BTreeMap<String, Vec<TopicPartition>> = BTreeMap::new();
            for size in [1usize, 3, 4, 2, 7, 12, 1] {
                let members: Vec<MemberSubscription> = (0..size)
                    .map(|i| {
                        let id = format!("m{i:02}");
                        let owned = current.get(&id).cloned().unwrap_or_default();
                        member(&id, &owned)
                    })
                    .collect();
                let next = Assignor::Sticky.assign(&members, &topics(n));
                assert_disjoint_complete_balanced(&next, n);
                // The fewest moves balance allows: every member keeps up to its share of
                // what it owned, and the extra slots go to members that owned more.
                let base = n as usize / size;
                let extra = n as usize % size;
                let over_base = members.iter().filter(|m| m.owned.len() > base).count();
                let kept_at_best: usize = members
                    .iter()
                    .map(|m| m.owned.len().min(base))
                    .sum::<usize>()
                    + extra.min(over_base);
                let minimum = n as usize - kept_at_best;
                assert_eq!(moved(&current, &next), minimum, "n={n} size={size}");
                current = next;
            }
        }
    }

    #[test]
    fn cooperative_sticky_first_takes_a_moving_partition_away_then_hands_it_out() {
        let first =
            Assignor::CooperativeSticky.assign(&[member("a", &[]), member("b", &[])], &topics(12));
        assert_disjoint_complete_balanced(&first, 12);

        // A newcomer: in the first round the owners give up its share and keep the rest, and
        // the newcomer gets nothing that someone still owns.
        let members = [
            member("a", &first["a"]),
            member("b", &first["b"]),
            member("c", &[]),
        ];
        let round_one = Assignor::CooperativeSticky.assign(&members, &topics(12));
        assert!(round_one["c"].is_empty());
        assert_eq!(round_one["a"].len() + round_one["b"].len(), 8);
        for id in ["a", "b"] {
            assert!(round_one[id].iter().all(|tp| first[id].contains(tp)));
        }

        // The follow-up round, after a and b revoked: the freed partitions go to c.
        let members = [
            member("a", &round_one["a"]),
            member("b", &round_one["b"]),
            member("c", &[]),
        ];
        let round_two = Assignor::CooperativeSticky.assign(&members, &topics(12));
        assert_disjoint_complete_balanced(&round_two, 12);
        assert_eq!(round_two["a"], round_one["a"]);
        assert_eq!(round_two["b"], round_one["b"]);
        assert_eq!(round_two["c"].len(), 4);
    }

    #[test]
    fn cooperative_sticky_hands_out_a_leavers_partitions_at_once() {
        let three = Assignor::CooperativeSticky.assign(
            &[member("a", &[]), member("b", &[]), member("c", &[])],
            &topics(12),
        );
        let two = Assignor::CooperativeSticky.assign(
            &[member("a", &three["a"]), member("c", &three["c"])],
            &topics(12),
        );
        assert_disjoint_complete_balanced(&two, 12);
        assert_eq!(moved(&three, &two), 4, "only b's partitions moved");
    }

    #[test]
    fn cooperative_sticky_never_gives_a_partition_claimed_by_two_members_to_both() {
        let tp = |p| TopicPartition::new("t", p);
        let result = Assignor::CooperativeSticky.assign(
            &[member("a", &[tp(0), tp(1)]), member("b", &[tp(1), tp(2)])],
            &topics(4),
        );
        let owners_of_1 = result.values().filter(|list| list.contains(&tp(1))).count();
        assert!(owners_of_1 <= 1);
    }

    #[test]
    fn sticky_ignores_stale_and_duplicate_claims() {
        let tp = |p| TopicPartition::new("t", p);
        let result = Assignor::Sticky.assign(
            &[
                member("a", &[tp(0), tp(1), tp(99)]),
                member("b", &[tp(1), tp(2)]),
            ],
            &topics(4),
        );
        assert_disjoint_complete_balanced(&result, 4);
        assert!(result["a"].contains(&tp(0)));
        assert!(result["b"].contains(&tp(2)));
    }
}
