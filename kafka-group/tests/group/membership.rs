use std::{collections::BTreeSet, time::{Duration, Instant}};

use kafka_group::GroupEvent;

use crate::helpers::*;

#[tokio::test]
async fn two_members_split_then_a_third_joins_and_only_its_share_moves() {
    let kafka = broker();
    let topic = topic(&kafka.address).await;
    let group = unique("group");
    let mut a = Tracked::start(config(&kafka.address, &group, &topic));
    let mut b = Tracked::start(config(&kafka.address, &group, &topic));
    let took = settle(&mut [&mut a, &mut b], &topic, Duration::from_secs(60)).await;
    eprintln!("two members settled in {took:?}");
    assert_eq!(a.owned.len(), 6);

    let before: Vec<BTreeSet<_>> = vec![a.owned.clone(), b.owned.clone()];
    let mut c = Tracked::start(config(&kafka.address, &group, &topic));
    let took = settle(&mut [&mut a, &mut b, &mut c], &topic, Duration::from_secs(60)).await;
    eprintln!("third member settled in {took:?}");
    let moved = c.owned.len() + a.owned.difference(&before[0]).count() + b.owned.difference(&before[1]).count();
    assert_eq!(c.owned.len(), 4);
    assert_eq!(moved, 4, "only the newcomer's 4 partitions changed owner");
}
