//! Which lane takes each partition's purchases: the lane of the broker that leads it, as
//! the brokers last said. Lanes are made the first time a broker leads a partition and live
//! until the producer closes (a broker that stops leading keeps an idle lane, ready for when
//! it leads again).

use std::{
    collections::HashMap,
    sync::{Arc, Mutex, RwLock},
    time::Duration,
};

use kafka_group::ProduceClient;
use tokio::{
    sync::{mpsc, Mutex as AsyncMutex},
    time::Instant,
};

use super::{lane, Pending, ProduceError, Shared};

/// The fewest time between two leader lookups: a broker that keeps answering "not the
/// leader" while an election runs is not asked again sooner (Kafka's `retry.backoff.ms`).
const LOOKUP_SPACING: Duration = Duration::from_millis(100);

/// A lane as senders see it: its broker and its queue.
#[derive(Clone)]
pub(super) struct Lane {
    pub(super) address: Arc<str>,
    queue: mpsc::Sender<Pending>,
}

pub(super) struct Router {
    client: ProduceClient,
    partitions: i32,
    shared: Arc<Shared>,
    /// Each partition's lane, by partition index; `None` until some lookup named a leader.
    routes: RwLock<Vec<Option<Lane>>>,
    /// Every lane made so far, by broker address.
    lanes: Mutex<HashMap<String, Lane>>,
    /// When the leaders were last looked up; held during a lookup so concurrent ones wait
    /// for it instead of asking again.
    looked_up: AsyncMutex<Instant>,
}

impl Router {
    /// Looks the leaders up once (an error when the brokers cannot say) and starts a lane
    /// for each.
    pub(super) async fn start(
        client: ProduceClient,
        partitions: i32,
        shared: Arc<Shared>,
    ) -> Result<Arc<Self>, kafka_group::Error> {
        let router = Arc::new(Self {
            client,
            partitions,
            shared,
            routes: RwLock::new(vec![None; usize::try_from(partitions).unwrap_or(0)]),
            lanes: Mutex::new(HashMap::new()),
            looked_up: AsyncMutex::new(Instant::now()),
        });
        router.look_up_leaders().await?;
        Ok(router)
    }

    pub(super) fn partitions(&self) -> i32 {
        self.partitions
    }

    pub(super) fn client(&self) -> &ProduceClient {
        &self.client
    }

    pub(super) fn shared(&self) -> &Arc<Shared> {
        &self.shared
    }

    /// Queues a purchase on its partition's lane, or says at once why it cannot be queued
    /// (the caller is answered by the lane otherwise).
    pub(super) fn route(self: &Arc<Self>, pending: Pending) -> Result<(), ProduceError> {
        let Some(lane) = self.lane_of(pending.partition) else {
            let partition = pending.partition;
            let router = Arc::clone(self);
            tokio::spawn(async move { router.refresh(Instant::now()).await });
            return Err(ProduceError::NoLeader(partition));
        };
        lane.queue.try_send(pending).map_err(|e| match e {
            mpsc::error::TrySendError::Full(_) => ProduceError::QueueFull,
            mpsc::error::TrySendError::Closed(_) => ProduceError::Closed,
        })
    }

    /// Hands a purchase a lane holds to the lane its partition has now (after a leader
    /// move), answering its caller when that lane cannot take it.
    pub(super) fn forward(self: &Arc<Self>, pending: Pending) {
        let Some(lane) = self.lane_of(pending.partition) else {
            let partition = pending.partition;
            return pending.answer(Err(ProduceError::NoLeader(partition)));
        };
        if let Err(e) = lane.queue.try_send(pending) {
            let (pending, why) = match e {
                mpsc::error::TrySendError::Full(p) => (p, ProduceError::QueueFull),
                mpsc::error::TrySendError::Closed(p) => (p, ProduceError::Closed),
            };
            pending.answer(Err(why));
        }
    }

    /// True when `partition`'s purchases go to the lane of `address`.
    pub(super) fn routes_to(&self, partition: i32, address: &str) -> bool {
        self.lane_of(partition)
            .is_some_and(|lane| &*lane.address == address)
    }

    fn lane_of(&self, partition: i32) -> Option<Lane> {
        let routes = self.routes.read().unwrap_or_else(|e| e.into_inner());
        routes
            .get(usize::try_from(partition).ok()?)
            .and_then(Clone::clone)
    }

    /// Looks the leaders up again, unless a lookup began after `failed_at` (it has already
    /// seen what the caller saw). Lookups are spaced by `LOOKUP_SPACING`. A failed lookup
    /// leaves the routes as they were.
    pub(super) async fn refresh(self: &Arc<Self>, failed_at: Instant) {
        let mut looked_up = self.looked_up.lock().await;
        if *looked_up > failed_at {
            return;
        }
        tokio::time::sleep_until(*looked_up + LOOKUP_SPACING).await;
        *looked_up = Instant::now();
        if let Err(e) = self.look_up_leaders().await {
            tracing::debug!(topic = %self.shared.topic, error = %e, "leader lookup failed");
        }
    }

    async fn look_up_leaders(self: &Arc<Self>) -> Result<(), kafka_group::Error> {
        let leaders = self.client.leaders(&self.shared.topic).await?;
        let lanes: Vec<(usize, Lane)> = leaders
            .iter()
            .filter_map(|(partition, address)| {
                Some((usize::try_from(*partition).ok()?, self.lane_at(address)))
            })
            .collect();
        let mut routes = self.routes.write().unwrap_or_else(|e| e.into_inner());
        for (partition, lane) in lanes {
            if let Some(route) = routes.get_mut(partition) {
                if route.as_ref().map(|l| &l.address) != Some(&lane.address) {
                    tracing::debug!(topic = %self.shared.topic, partition, leader = %lane.address, "partition routed");
                }
                *route = Some(lane);
            }
        }
        Ok(())
    }

    /// The lane of the broker at `address`, started when there is none yet.
    fn lane_at(self: &Arc<Self>, address: &str) -> Lane {
        let mut lanes = self.lanes.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(lane) = lanes.get(address) {
            return lane.clone();
        }
        let (queue, receiver) = mpsc::channel(self.shared.args.queue_capacity.max(1));
        let lane = Lane {
            address: Arc::from(address),
            queue,
        };
        lanes.insert(address.to_string(), lane.clone());
        self.shared.lanes.spawn(lane::run(
            Arc::clone(self),
            Arc::clone(&lane.address),
            receiver,
        ));
        lane
    }
}
