//! The node's membership of the ownership group: the member thread that holds the group's
//! assignment, the rebalance callback that hands a revoked partition over, and the lease
//! (docs/scale-out.md, "Ownership", "Fencing" and "Rebalance, step by step").

use super::{ClusterMode, Shared};
use rdkafka::client::ClientContext;
use rdkafka::consumer::{BaseConsumer, Consumer, ConsumerContext, Rebalance};
use rdkafka::util::Timeout;
use rdkafka::TopicPartitionList;
use std::collections::BTreeSet;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// The group member's client.
pub(super) type Member = BaseConsumer<MemberContext>;

/// The group member's callbacks. librdkafka runs them on the member thread, inside its poll,
/// before it gives a revoked partition up: so whatever the callback waits for happens before
/// the group can assign the partition to another node.
pub(super) struct MemberContext {
    pub(super) shared: Arc<Shared>,
}

impl ClientContext for MemberContext {}

impl ConsumerContext for MemberContext {
    fn pre_rebalance(&self, consumer: &Member, rebalance: &Rebalance<'_>) {
        if let Rebalance::Revoke(tpl) = rebalance {
            let revoked: Vec<u32> = tpl
                .elements()
                .iter()
                .filter(|e| e.topic() == self.shared.topic)
                .map(|e| e.partition() as u32)
                .collect();
            // A lost assignment (the session expired) may be another node's already:
            // waiting would only keep this member from rejoining.
            let wait = !consumer.assignment_lost();
            hand_over(&self.shared, &revoked, wait);
        }
    }
}

/// Stops serving `revoked` at once and, in `Local` mode, waits (at most
/// [`super::ClusterConfig::handover_timeout_ms`]) until their acknowledged batches are on
/// the journal topic and walked valid: the node that gets a partition next claims it at
/// once, and every batch still queued under this node's claim would land after that claim,
/// void — acknowledged and lost to the cluster (a fork). A planned move (a node joins or
/// leaves) therefore loses nothing while the broker is reachable. Batches admitted before
/// the revocation and still being appended are waited for too: they are queued once
/// appended.
///
/// Without `wait`, or once the node stops (a `leave` drained already; a dropped or failed
/// node gives up at once), it only stops serving.
pub(super) fn hand_over(shared: &Shared, revoked: &[u32], wait: bool) {
    if revoked.is_empty() {
        return;
    }
    {
        let mut st = shared.lock();
        for p in revoked {
            // Not assigned any more: the claimer must not claim it back while it drains.
            st.assigned.remove(p);
            st.taken_at.remove(p);
            if st.served.remove(p).is_some() {
                tracing::info!(node = %shared.config.node, partition = p, "partition revoked; stopped serving");
            }
        }
    }
    // A KafkaDurable batch is acknowledged only once it is on the topic and valid: a batch
    // in flight either makes it before the next claim or is void and refused.
    if shared.config.mode != ClusterMode::Local || !wait || shared.stop.load(Ordering::Acquire) {
        return;
    }
    let started = Instant::now();
    let timeout = Duration::from_millis(shared.config.handover_timeout_ms);
    let drained = shared.wait_until(timeout, |st| {
        revoked
            .iter()
            .all(|p| st.queue[*p as usize].is_empty() && st.reserved_in[*p as usize] == 0)
    });
    let (queued, forked): (usize, Vec<u32>) = {
        let st = shared.lock();
        (
            revoked.iter().map(|p| st.queue[*p as usize].len()).sum(),
            revoked
                .iter()
                .copied()
                .filter(|p| st.forked.contains_key(p))
                .collect(),
        )
    };
    if !forked.is_empty() {
        // The fork was logged where it was found; its queue emptied into the orphans.
        tracing::warn!(node = %shared.config.node, partitions = ?forked, "revoked partitions handed over forked");
    } else if drained {
        tracing::info!(node = %shared.config.node, partitions = ?revoked, took_ms = started.elapsed().as_millis() as u64, "revoked partitions handed over with their queues drained");
    } else {
        shared.error(format!(
            "handing over partitions {revoked:?} with {queued} acknowledged batches not yet on the journal topic after {} ms: the next owner's claim voids them (a fork)",
            started.elapsed().as_millis()
        ));
    }
}

/// The lease (docs/scale-out.md, "Fencing"): every heartbeat interval, asks the group
/// coordinator for the group's committed offset of partition 0 (an OffsetFetch on the
/// member's own client: librdkafka does not expose its heartbeats' answers), and on an
/// answer extends the lease to the request's send time plus
/// [`super::ClusterConfig::lease`]. A lease that ran out drops every served partition, so
/// the node serves again only after the claimer caught up and claimed anew (a `Local` node
/// must not acknowledge on a walk that may be missing another node's claim).
pub(super) fn run_lease(shared: &Shared, consumer: &Member) {
    let lease = shared.config.lease();
    let interval = Duration::from_millis(shared.config.heartbeat_interval_ms);
    let mut tpl = TopicPartitionList::new();
    tpl.add_partition(&shared.topic, 0);
    while !shared.stop.load(Ordering::Acquire) {
        let sent = Instant::now();
        // Bounded by the lease: a later answer could not extend it past now anyway.
        let answered = consumer
            .committed_offsets(tpl.clone(), Timeout::After(lease.min(interval * 4)))
            .is_ok();
        {
            let mut st = shared.lock();
            if !st.leased() && !st.served.is_empty() {
                st.served.clear();
                tracing::warn!(node = %shared.config.node, "lease ran out: no answer from the group coordinator for {lease:?}; stopped serving");
            }
            if answered {
                st.lease_until = Some(sent + lease);
            }
        }
        let spent = sent.elapsed();
        if spent < interval {
            std::thread::sleep(interval - spent);
        }
    }
}

/// The group member: polls (which keeps the membership alive and runs the rebalances, see
/// [`MemberContext`]) and mirrors the assignment into the state.
pub(super) fn run_member(shared: &Shared, consumer: &Member) {
    if let Err(e) = consumer.subscribe(&[&shared.topic]) {
        shared.error(format!("member: subscribing: {e}"));
        return;
    }
    while !shared.stop.load(Ordering::Acquire) {
        super::fault_point(shared, "member");
        if let Some(Err(e)) = consumer.poll(Duration::from_millis(100)) {
            shared.error(format!("member: {e}"));
        }
        let Ok(assignment) = consumer.assignment() else {
            continue;
        };
        // The member only holds the assignment; the tailer reads the data.
        let _ = consumer.pause(&assignment);
        let now: BTreeSet<u32> = assignment
            .elements()
            .iter()
            .filter(|e| e.topic() == shared.topic)
            .map(|e| e.partition() as u32)
            .collect();
        let mut st = shared.lock();
        // The rebalance callback handed revoked partitions over already; this catches a
        // partition gone without one (the mirror must never hold one the group took).
        let gone: Vec<u32> = st
            .assigned
            .keys()
            .filter(|p| !now.contains(p))
            .copied()
            .collect();
        for p in gone {
            st.assigned.remove(&p);
            st.taken_at.remove(&p);
            if st.served.remove(&p).is_some() {
                tracing::info!(node = %shared.config.node, partition = p, "partition revoked; stopped serving");
            }
        }
        for p in now {
            st.assigned.entry(p).or_insert_with(Instant::now);
        }
    }
    consumer.unsubscribe();
    // Dropping the consumer closes it: it leaves the group, so the partitions move now.
}
