//! Prometheus metrics of the worker, named `worker_<what>_<unit>`.

use infra::metrics;
use prometheus::{Histogram, IntCounter, IntGauge, IntGaugeVec, Registry};

pub struct Metrics {
    registry: Registry,
    pub records_consumed: IntCounter,
    pub fetch_requests: IntCounter,
    pub fetch_records: Histogram,
    pub fetch_errors: IntCounter,
    pub documents_inserted: IntCounter,
    pub duplicates: IntCounter,
    pub dead_lettered: IntCounter,
    pub write_errors: IntCounter,
    pub commit_errors: IntCounter,
    pub batch_documents: Histogram,
    pub write_duration: Histogram,
    pub partition_lag: IntGaugeVec,
    pub assigned_partitions: IntGauge,
    pub group_leader: IntGauge,
    pub group_protocol: IntGaugeVec,
    pub rebalances: IntCounter,
}

impl Metrics {
    pub fn new() -> Self {
        let r = Registry::new();
        Self {
            records_consumed: metrics::counter(&r, "worker_records_consumed_total", "Records fetched from Kafka"),
            fetch_requests: metrics::counter(&r, "worker_fetch_requests_total", "Fetch requests sent (one per broker for all owned partitions)"),
            fetch_records: metrics::histogram(&r, "worker_fetch_records", "Records per partition in one fetch response", metrics::size_buckets()),
            fetch_errors: metrics::counter(&r, "worker_fetch_errors_total", "Partitions whose fetch failed (retried with backoff)"),
            documents_inserted: metrics::counter(&r, "worker_documents_inserted_total", "Purchases newly stored in MongoDB"),
            duplicates: metrics::counter(&r, "worker_duplicates_total", "Redelivered purchases that were already stored"),
            dead_lettered: metrics::counter(&r, "worker_dead_lettered_total", "Records sent to the dead-letter topic"),
            write_errors: metrics::counter(&r, "worker_write_errors_total", "Failed batch writes (retried)"),
            commit_errors: metrics::counter(&r, "worker_commit_errors_total", "Offset commits the group refused or that failed"),
            batch_documents: metrics::histogram(&r, "worker_batch_documents", "Documents per insert_many", metrics::size_buckets()),
            write_duration: metrics::histogram(&r, "worker_write_duration_seconds", "Duration of one insert_many", metrics::latency_buckets()),
            partition_lag: metrics::gauge_vec(
                &r,
                "worker_partition_lag",
                "Records behind per assigned partition: end offset minus committed offset, as KEDA counts",
                &["partition"],
            ),
            assigned_partitions: metrics::gauge(&r, "worker_assigned_partitions", "Partitions this worker owns"),
            group_leader: metrics::gauge(&r, "worker_group_leader", "1 while this worker leads its consumer group's generation (it computed the assignment)"),
            group_protocol: metrics::gauge_vec(
                &r,
                "worker_group_protocol",
                "1 for the consumer group protocol this worker speaks (`classic` or `consumer`, KIP-848), once chosen",
                &["protocol"],
            ),
            rebalances: metrics::counter(&r, "worker_rebalances_total", "Assignments received from the group"),
            registry: r,
        }
    }

    pub fn render(&self) -> String {
        metrics::render(&self.registry)
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}
