//! Where a partition without a committed offset starts, and where one whose offset fell out
//! of the log starts again: ListOffsets on the group layer's connections (the same client
//! stack that fetches and commits).

use std::{collections::BTreeMap, sync::Arc};

use kafka_group::{GroupMember, OffsetReset};

pub struct StartOffsets {
    member: Arc<GroupMember>,
    topic: String,
    reset: OffsetReset,
}

impl StartOffsets {
    pub fn new(member: Arc<GroupMember>, topic: String, reset: OffsetReset) -> Self {
        Self {
            member,
            topic,
            reset,
        }
    }

    /// Where the reset policy puts each of `partitions` now.
    pub async fn offsets(&self, partitions: &[i32]) -> kafka_group::Result<BTreeMap<i32, i64>> {
        let mut all = self
            .member
            .admin()
            .offsets_at(&self.topic, self.reset)
            .await?;
        all.retain(|partition, _| partitions.contains(partition));
        Ok(all)
    }
}
