//! Cluster mode through the engine API, against a real broker (tansu 0.6.0 on 127.0.0.1).
//!
//! `a_foreign_claim_fences_the_owner_and_it_claims_back`: a node that serves a partition
//! meets a foreign claim it has not read yet.
//! The test appends another node's claim to the journal topic itself and, right after the
//! broker acknowledged it, sends the node a command. Whichever comes first in the node —
//! reading the claim (the command is refused before anything is produced) or producing the
//! batch (which then lands after the claim) — the command must fail with `NotOwner`, be
//! written nowhere (a late batch is void by the validity rule and not in the journal), and
//! the partition's history must stand. The node, still assigned the partition by the
//! group, then claims it back after `reclaim_after_ms`, reloads the aggregate under its new
//! claim and serves it again, at the next sequence.
//!
//! `a_node_resumes_the_topic_from_its_stored_position`: two engines share two partitions;
//! one leaves and stops while the other writes on; reopened on the same directory, it
//! resumes every partition from the position it stored (not from offset 0), catches up, and
//! its journal holds exactly the other's history: nothing skipped, nothing appended twice.
//! Pointed at a new broker whose journal topic is shorter than its stored position, it
//! refuses to join (`PositionAhead`) rather than skip the new topic's messages.
//!
//! `local_mode_acknowledges_first_publishes_after_and_refuses_a_fork`: in `Local` mode a node
//! acknowledges commands while the broker is stopped (the replication lag rises; past
//! `replication_lag_max_batches` a command is refused with `ReplicationLagging`), and once
//! the broker is back it publishes them and the lag falls to zero; the topic's valid batches
//! then hold exactly the acknowledged events, in each aggregate's order. Then the fork: the
//! node acknowledges a batch with the broker stopped and leaves; another node's claim lands
//! on the partition; reopened, the node finds its queued batch voided, refuses the partition
//! with `Unavailable { Forked }` naming it, lists the orphaned event, keeps it in its journal
//! and never publishes it, and stops (`health().stopped`), so that it does not hold the
//! group's assignment of a partition it will not serve.
//!
//! `the_lease_stops_a_node_cut_off_from_the_broker_before_its_session_times_out`: with the
//! broker paused (SIGSTOP), a node refuses commands (`NotOwner`) once its lease
//! (`session_timeout_ms − lease_margin_ms` after the send of its last answered request to
//! the group coordinator) ran out — before the broker could hand its partition to another
//! node — and serves again, at the next sequence, after the broker resumes.
//!
//! `an_engine_not_opened_to_join_is_refused`: an engine opened without `joins_cluster(true)`
//! (which may have appended outside the cluster's order) cannot join.
//!
//! `a_local_node_hands_a_moved_partition_over_only_once_its_queue_drained`: in `Local` mode
//! a node holds batches it acknowledged and has not published yet (its publisher held, as
//! with a broker that does not keep up) when a second node joins and the group moves one of
//! its partitions. The node stops serving that partition at once but gives it up only once
//! those batches are on the topic: the new owner's claim lands after them, so nothing forks
//! and nothing acknowledged is lost, and the new owner serves the aggregates at their next
//! sequence. Without the wait its claim voided them (a fork on the old node).
//!
//! `a_late_local_append_after_the_tailers_is_answered_with_its_events`: in `KafkaDurable` a
//! batch checked valid on the topic whose entity's local append comes after the tailer's
//! grace (a stalled disk, delayed by the test) reaches the journal through the tailer first;
//! the entity's own append then conflicts, and the command is still answered with its
//! events (it took effect), not with a `Conflict` that would have it decided and applied
//! again.
//!
//! `a_local_node_that_forks_stops_and_its_partitions_move`: a `Local` node whose hand-over
//! ran out (publisher held, a 1 s bound) finds the new owner's claim over its queued batch:
//! a fork. It stops and leaves the group, so the new owner soon serves every partition —
//! the forked node does not hold an assignment it will never serve — and continues each
//! counter from the topic's valid history.
//!
//! `a_node_whose_tailer_dies_stops_and_leaves_the_group`: a cluster thread that panics stops
//! the node as a whole — it serves nothing, says why in `health().stopped`, and leaves the
//! group, so another node takes its partition long before the session timeout would free it.
#![cfg(feature = "kafka")]

mod common;
mod kafka_support;

use common::{Counter, CounterCommand};
use evershard_engine::cluster_journal::{Claim, Entry, Verdict, VoidReason, Walk};
use evershard_engine::model::Aggregate;
use evershard_engine::rdkafka::producer::FutureProducer;
use evershard_engine::rdkafka::producer::FutureRecord;
use evershard_engine::{
    ClusterConfig, ClusterError, ClusterMode, CommandError, Engine, KafkaConfig, StreamId,
    UnavailableReason,
};
use std::collections::BTreeMap;
use std::path::Path;
use std::time::{Duration, Instant};

use evershard_testing::child::runtime;

/// Polls `done` every 50 ms for at most `timeout` (sized for a loaded 2-core machine).
fn wait(what: &str, timeout: Duration, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !done() {
        assert!(Instant::now() < deadline, "{what}: not within {timeout:?}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn kafka(broker: &kafka_support::Broker) -> KafkaConfig {
    KafkaConfig::new(broker.bootstrap())
        .client_id("evershard-cluster-test")
        .replication_factor(1)
        .request_timeout(Duration::from_secs(10))
        .connection_timeout(Duration::from_secs(5))
}

/// Opens an engine of `Counter`s on `dir`, to join a cluster.
fn open(rt: &tokio::runtime::Runtime, dir: &Path) -> Engine {
    rt.block_on(
        Engine::builder(dir)
            .register::<Counter>()
            .topic_indexer(false)
            .joins_cluster(true)
            .open(),
    )
    .unwrap()
}

/// Opens an engine of `Counter`s on `dir` and joins it to the cluster `config` names.
fn join(
    rt: &tokio::runtime::Runtime,
    dir: &Path,
    config: ClusterConfig,
) -> (Engine, evershard_engine::Cluster) {
    let engine = open(rt, dir);
    let cluster = rt.block_on(engine.join_cluster(config)).unwrap();
    (engine, cluster)
}

/// [`join`], then waits (bounded) until the node serves every partition of the cluster.
fn join_serving(
    rt: &tokio::runtime::Runtime,
    dir: &Path,
    config: ClusterConfig,
) -> (Engine, evershard_engine::Cluster) {
    let (engine, cluster) = join(rt, dir, config);
    let partitions = cluster.config().partitions;
    wait(
        &format!(
            "{} serves all {partitions} partitions",
            cluster.config().node
        ),
        Duration::from_secs(120),
        || (0..partitions).all(|p| cluster.serves(p)),
    );
    (engine, cluster)
}

#[test]
fn a_foreign_claim_fences_the_owner_and_it_claims_back() {
    let Some(tansu) = kafka_support::tools("a_foreign_claim_fences_the_owner") else {
        return;
    };
    let broker = kafka_support::Broker::start(&tansu);
    let dir = tempfile::tempdir().unwrap();
    let rt = runtime();
    let kafka = kafka(&broker);
    let config = ClusterConfig::new(kafka.clone(), "fence", "a", "127.0.0.1:1")
        .partitions(1)
        .session_timeout_ms(6_000)
        .heartbeat_interval_ms(500)
        .reclaim_after_ms(2_000);
    let topic = config.journal_topic();
    let (engine, cluster) = join_serving(&rt, dir.path(), config);
    let first = rt
        .block_on(engine.execute::<Counter>("c-1", CounterCommand::Add(1)))
        .unwrap();
    assert_eq!(first[0].sequence, 1);
    let claimed = cluster.owner(0).expect("a's claim");
    assert_eq!(claimed.node, "a");

    // Node "b" claims partition 0 (as a node that was assigned it would), and at once a
    // command reaches "a", which has not necessarily read that claim yet.
    let producer: FutureProducer = kafka.producer_config().create().unwrap();
    let claim = Entry::Claim(Claim {
        node: "b".into(),
        endpoint: "127.0.0.1:2".into(),
        epoch: claimed.epoch + 1,
    });
    let value = claim.encode();
    let delivery = rt
        .block_on(
            producer.send(
                FutureRecord::<[u8], [u8]>::to(&topic)
                    .partition(0)
                    .key(&b"b"[..])
                    .payload(&value[..]),
                Duration::from_secs(30),
            ),
        )
        .expect("the foreign claim is acknowledged");
    let refused = rt.block_on(engine.execute::<Counter>("c-1", CounterCommand::Add(2)));
    match &refused {
        Err(CommandError::NotOwner { partition: 0, .. }) => {}
        other => panic!("a command after a foreign claim must be NotOwner, got {other:?}"),
    }
    println!(
        "foreign claim at offset {}; the command: {refused:?}",
        delivery.offset
    );
    wait("a reads b's claim", Duration::from_secs(60), || {
        cluster.owner(0).is_some_and(|o| o.node == "b")
    });

    // "a" is still assigned partition 0 by the group: it claims it back after
    // reclaim_after_ms, reloads c-1 under the new epoch and goes on at sequence 2.
    wait(
        "a claims partition 0 back",
        Duration::from_secs(120),
        || cluster.serves(0) && cluster.owner(0).is_some_and(|o| o.node == "a"),
    );
    let again = rt
        .block_on(engine.execute::<Counter>("c-1", CounterCommand::Add(2)))
        .unwrap();
    assert_eq!(again[0].sequence, 2);
    let status = cluster.status();
    println!("status: {status:?}");
    assert_eq!(status.acknowledged, 2);
    assert!(status.takeovers.len() >= 2, "claimed, then claimed back");

    // The topic, walked by the rule: a's batch after b's claim (if it produced one) is
    // void, and the valid history of c-1 is exactly the two acknowledged events.
    let records = kafka_support::read_topic(&broker.bootstrap(), &topic);
    let mut walk = Walk::new();
    let mut valid = Vec::new();
    let mut late = Vec::new();
    for r in &records {
        let entry = Entry::decode(r.value.as_deref().unwrap().as_bytes()).unwrap();
        let verdict = walk.step(r.offset as i64, Some(&entry));
        if let Entry::Batch(b) = &entry {
            match &verdict {
                Verdict::Valid => valid.extend(b.events.iter().map(|e| e.event_id)),
                Verdict::Void(reason) => {
                    assert!(
                        matches!(reason, VoidReason::NotLatestClaim { claim_node, .. } if claim_node == "b"),
                        "offset {}: {reason:?}",
                        r.offset
                    );
                    assert!(r.offset > delivery.offset as u64);
                    late.push(r.offset);
                }
                Verdict::Claimed => unreachable!(),
            }
        }
    }
    println!(
        "a's late batches (void): {late:?} — {}",
        if late.is_empty() {
            "a read the claim before producing"
        } else {
            "a produced before reading the claim; the check refused it"
        }
    );
    assert_eq!(valid, vec![first[0].event_id, again[0].event_id]);
    let journal: Vec<_> = engine
        .journal()
        .read_stream(&StreamId::new("Counter", "c-1"), 1, u64::MAX)
        .collect::<Result<_, _>>()
        .unwrap();
    assert_eq!(
        journal.iter().map(|r| r.event_id).collect::<Vec<_>>(),
        valid,
        "the journal holds the valid history only"
    );
    cluster.leave();
    rt.block_on(engine.shutdown()).unwrap();
}

/// Executes `Add(1)` on counter `id` through whichever of `nodes` serves its partition
/// (bounded: a partition may be changing hands); returns the sequence written.
fn add_one(
    rt: &tokio::runtime::Runtime,
    nodes: &[(&Engine, &evershard_engine::Cluster)],
    id: &str,
) -> u64 {
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        for (engine, cluster) in nodes {
            if !cluster.serves(cluster.partition_for(id)) {
                continue;
            }
            match rt.block_on(engine.execute::<Counter>(id, CounterCommand::Add(1))) {
                Ok(events) => return events[0].sequence,
                Err(e) => assert!(e.is_retryable(), "{id}: {e}"),
            }
        }
        assert!(
            Instant::now() < deadline,
            "{id}: no node executed Add(1) within 120 s"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Every `Counter` stream's event ids in `engine`'s journal, checked gapless from 1.
fn histories(engine: &Engine, ids: &[String]) -> BTreeMap<String, Vec<uuid::Uuid>> {
    ids.iter()
        .map(|id| {
            let records: Vec<_> = engine
                .journal()
                .read_stream(&StreamId::new("Counter", id.as_str()), 1, u64::MAX)
                .collect::<Result<_, _>>()
                .unwrap();
            for (i, r) in records.iter().enumerate() {
                assert_eq!(r.sequence, i as u64 + 1, "{id} is gapless");
            }
            (id.clone(), records.iter().map(|r| r.event_id).collect())
        })
        .collect()
}

#[test]
fn a_node_resumes_the_topic_from_its_stored_position() {
    let Some(tansu) = kafka_support::tools("a_node_resumes_the_topic_from_its_stored_position")
    else {
        return;
    };
    let broker = kafka_support::Broker::start(&tansu);
    let rt = runtime();
    let config = |node: &str| {
        ClusterConfig::new(kafka(&broker), "resume", node, format!("127.0.0.1:{node}"))
            .partitions(2)
            .session_timeout_ms(6_000)
            .heartbeat_interval_ms(500)
            .reclaim_after_ms(2_000)
    };
    let (dir_a, dir_b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let (a, ca) = join(&rt, dir_a.path(), config("a"));
    let (b, cb) = join(&rt, dir_b.path(), config("b"));
    let both = |ca: &evershard_engine::Cluster, cb: &evershard_engine::Cluster| {
        (0..2).all(|p| ca.serves(p) || cb.serves(p))
    };
    wait("every partition served", Duration::from_secs(120), || {
        both(&ca, &cb)
    });
    let ids: Vec<String> = (0..8).map(|i| format!("c-{i}")).collect();
    for round in 1..=3 {
        for id in &ids {
            assert_eq!(add_one(&rt, &[(&a, &ca), (&b, &cb)], id), round);
        }
    }
    // b catches up with everything a wrote, then leaves and stops: its tailer stores the
    // position it reached.
    let end = |c: &evershard_engine::Cluster| c.status().walked;
    wait("b walked what a walked", Duration::from_secs(120), || {
        let (sa, sb) = (ca.status(), cb.status());
        sb.walked == sa.walked && sb.pending_applies == 0
    });
    cb.leave();
    let walked_at_leave = end(&cb);
    let before = histories(&b, &ids);
    rt.block_on(b.shutdown()).unwrap();
    drop(b);
    println!("b left at offsets {walked_at_leave:?}");
    assert!(walked_at_leave.iter().all(|o| *o > 0));

    // a takes both partitions over and writes on.
    wait("a serves both partitions", Duration::from_secs(120), || {
        ca.serves(0) && ca.serves(1)
    });
    for id in &ids {
        assert_eq!(add_one(&rt, &[(&a, &ca)], id), 4);
    }

    // b again, same directory. Opened to join a cluster, it appends nothing before it has
    // joined; then it resumes where it stopped and catches up.
    let b = open(&rt, dir_b.path());
    match rt.block_on(b.execute::<Counter>("c-0", CounterCommand::Add(1))) {
        Err(CommandError::Unavailable {
            reason: UnavailableReason::NotJoined,
            ..
        }) => {}
        other => panic!("a command before joining: {other:?}"),
    }
    let cb = rt.block_on(b.join_cluster(config("b"))).unwrap();
    let status = cb.status();
    println!("b resumed from {:?}", status.resumed_from);
    assert_eq!(
        status.resumed_from, walked_at_leave,
        "b resumes every partition from the position it stored"
    );
    wait("b catches up with a", Duration::from_secs(120), || {
        let (sa, sb) = (ca.status(), cb.status());
        sb.walked >= sa.walked && sb.pending_applies == 0
    });
    wait("every partition served", Duration::from_secs(120), || {
        both(&ca, &cb)
    });
    for id in &ids {
        assert_eq!(add_one(&rt, &[(&a, &ca), (&b, &cb)], id), 5);
    }
    wait("a and b walked the same", Duration::from_secs(120), || {
        let (sa, sb) = (ca.status(), cb.status());
        sa.walked == sb.walked && sa.pending_applies == 0 && sb.pending_applies == 0
    });
    let (ha, hb) = (histories(&a, &ids), histories(&b, &ids));
    for id in &ids {
        assert_eq!(ha[id].len(), 5, "{id}: five events on a");
        for (i, event) in before[id].iter().enumerate() {
            assert_eq!(&ha[id][i], event, "{id}: b's history before it left is a's");
        }
    }
    assert_eq!(
        hb, ha,
        "b holds exactly a's history: nothing skipped, nothing twice"
    );
    ca.leave();
    cb.leave();
    rt.block_on(a.shutdown()).unwrap();
    rt.block_on(b.shutdown()).unwrap();
    drop(b);

    // The same store against a new broker (an empty journal topic of the same name).
    let new_broker = kafka_support::Broker::start(&tansu);
    let b = open(&rt, dir_b.path());
    let config = ClusterConfig::new(kafka(&new_broker), "resume", "b", "127.0.0.1:b").partitions(2);
    match rt.block_on(b.join_cluster(config)) {
        Err(ClusterError::PositionAhead { stored, end: 0, .. }) if stored > 0 => {}
        other => panic!("joining a shorter topic must fail with PositionAhead: {other:?}"),
    }
    rt.block_on(b.shutdown()).unwrap();
}

type Acked = BTreeMap<String, Vec<uuid::Uuid>>;

/// `Add(1)` on counter `id`; an acknowledged event is recorded in `acked` (its sequence
/// checked: the counter's next).
fn add_local(
    rt: &tokio::runtime::Runtime,
    engine: &Engine,
    acked: &mut Acked,
    id: &str,
) -> Result<(), CommandError<<Counter as Aggregate>::Error>> {
    let events = rt.block_on(engine.execute::<Counter>(id, CounterCommand::Add(1)))?;
    let seen = acked.entry(id.to_owned()).or_default();
    assert_eq!(events[0].sequence, seen.len() as u64 + 1, "{id}: in order");
    seen.push(events[0].event_id);
    Ok(())
}

/// [`add_local`], retried while the answer is retryable (bounded: the partition may be
/// changing hands after a broker restart).
fn add_retried(rt: &tokio::runtime::Runtime, engine: &Engine, acked: &mut Acked, id: &str) {
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        match add_local(rt, engine, acked, id) {
            Ok(()) => return,
            Err(e) => assert!(e.is_retryable(), "{id}: {e}"),
        }
        assert!(
            Instant::now() < deadline,
            "{id}: not acknowledged within 120 s"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A counter id of each of `partitions` partitions (the first found), by Kafka's murmur2.
fn ids_per_partition(partitions: u32) -> Vec<String> {
    (0..partitions)
        .map(|p| {
            (0..)
                .map(|i| format!("local-{i}"))
                .find(|id| evershard_engine::topic::partition_for(id, partitions) == p)
                .unwrap()
        })
        .collect()
}

#[test]
fn local_mode_acknowledges_first_publishes_after_and_refuses_a_fork() {
    let Some(tansu) = kafka_support::tools("local_mode_acknowledges_first_publishes_after") else {
        return;
    };
    let mut broker = kafka_support::Broker::start(&tansu);
    let dir = tempfile::tempdir().unwrap();
    let rt = runtime();
    const LAG_MAX: usize = 5;
    // A session timeout well above the broker outages below, so that the node keeps its
    // assignment through them (what a lease would bound is not under test here).
    let config = ClusterConfig::new(kafka(&broker), "local", "a", "127.0.0.1:1")
        .partitions(2)
        .session_timeout_ms(45_000)
        .heartbeat_interval_ms(500)
        .mode(ClusterMode::Local)
        .replication_lag_max_batches(LAG_MAX)
        // It leaves with a batch it cannot publish (the broker is stopped): that is the
        // fork under test, and the hand-over's wait for it would only slow the test.
        .handover_timeout_ms(1_000);
    let topic = config.journal_topic();
    let (engine, cluster) = join(&rt, dir.path(), config.clone());
    wait("a serves both partitions", Duration::from_secs(120), || {
        cluster.serves(0) && cluster.serves(1)
    });
    let ids = ids_per_partition(2);
    // Every acknowledged event id, per counter, in acknowledgement order.
    let mut acked: Acked = BTreeMap::new();
    let add = |engine: &Engine, acked: &mut Acked, id: &str| add_local(&rt, engine, acked, id);
    for id in &ids {
        add(&engine, &mut acked, id).unwrap();
    }
    wait(
        "the first batches published",
        Duration::from_secs(60),
        || cluster.health().replication_lag.batches == 0,
    );

    // The broker stops: commands are still acknowledged, up to the bound.
    broker.stop();
    for i in 0..LAG_MAX {
        add(&engine, &mut acked, &ids[i % 2]).unwrap();
    }
    let lag = cluster.health().replication_lag;
    println!("lag with the broker stopped: {lag:?}");
    assert_eq!(lag.batches, LAG_MAX);
    match add(&engine, &mut acked, &ids[0]) {
        Err(CommandError::Unavailable {
            reason: UnavailableReason::ReplicationLagging { batches: LAG_MAX },
            ..
        }) => {}
        other => panic!("past replication_lag_max_batches: {other:?}"),
    }
    broker.restart();
    wait("the lag falls to zero", Duration::from_secs(120), || {
        cluster.health().replication_lag.batches == 0
    });
    add_retried(&rt, &engine, &mut acked, &ids[0]);
    wait("everything published", Duration::from_secs(60), || {
        cluster.health().replication_lag.batches == 0
    });

    // The topic holds exactly the acknowledged events, in each counter's order.
    let valid = topic_history(&broker, &topic);
    assert_eq!(
        valid, acked,
        "the topic's valid events are the acknowledged ones, in order"
    );

    // The fork. The node acknowledges a batch of partition 0 with the broker stopped and
    // leaves; another node claims partition 0 meanwhile.
    let highest = cluster.owner(0).expect("a's claim").epoch;
    broker.stop();
    let orphan = rt
        .block_on(engine.execute::<Counter>(&ids[0], CounterCommand::Add(1)))
        .expect("acknowledged locally");
    assert_eq!(cluster.health().replication_lag.batches, 1);
    let left = Instant::now();
    cluster.leave();
    println!("left with the broker stopped in {:?}", left.elapsed());
    rt.block_on(engine.shutdown()).unwrap();
    drop(engine);
    broker.restart();
    let producer: FutureProducer = kafka(&broker).producer_config().create().unwrap();
    let claim = Entry::Claim(Claim {
        node: "b".into(),
        endpoint: "127.0.0.1:2".into(),
        epoch: highest + 1,
    });
    let value = claim.encode();
    rt.block_on(
        producer.send(
            FutureRecord::<[u8], [u8]>::to(&topic)
                .partition(0)
                .key(&b"b"[..])
                .payload(&value[..]),
            Duration::from_secs(30),
        ),
    )
    .expect("b's claim is acknowledged");

    let (engine, cluster) = join(&rt, dir.path(), config);
    wait(
        "a finds partition 0 forked",
        Duration::from_secs(120),
        || cluster.health().forked == vec![0],
    );
    let status = cluster.status();
    println!("forks: {:?}", status.forked);
    // It stopped: it serves nothing and left the group, so the other nodes would take every
    // partition, the forked one included, rather than leave it unserved (that they do is
    // `a_local_node_that_forks_stops_and_its_partitions_move`: after tansu 0.6.0 restarted,
    // as here, a new member was assigned no partition within 150 s, measured).
    let stopped = status.stopped.clone().expect("a forked node stops");
    assert!(stopped.contains("partition 0 forked"), "{stopped}");
    assert!(status.serving.is_empty());
    assert_eq!(status.forked[0].orphans.len(), 1);
    assert_eq!(
        status.forked[0].orphans[0].event_ids,
        vec![orphan[0].event_id]
    );
    assert_eq!(
        status.replication_lag.batches, 0,
        "an orphan is not lag: it is never published"
    );
    match rt.block_on(engine.execute::<Counter>(&ids[0], CounterCommand::Add(1))) {
        Err(CommandError::Unavailable {
            reason: UnavailableReason::Forked { partition: 0 },
            ..
        }) => {}
        other => panic!("a command of a forked partition: {other:?}"),
    }
    // The diverged journal keeps the orphan (for audit). (Whether the node serves its other
    // partition again is not checked here: after tansu 0.6.0 restarted, the reopened member
    // was assigned no partition within 180 s, measured.)
    let journal = histories(&engine, &ids[..1]);
    assert_eq!(journal[&ids[0]].last(), Some(&orphan[0].event_id));
    let valid = topic_history(&broker, &topic);
    assert_eq!(
        valid, acked,
        "the orphan is nowhere on the topic's valid history"
    );

    cluster.leave();
    rt.block_on(engine.shutdown()).unwrap();
}

#[test]
fn the_lease_stops_a_node_cut_off_from_the_broker_before_its_session_times_out() {
    let Some(tansu) = kafka_support::tools("the_lease_stops_a_node_cut_off") else {
        return;
    };
    let broker = kafka_support::Broker::start(&tansu);
    let dir = tempfile::tempdir().unwrap();
    let rt = runtime();
    const SESSION_TIMEOUT_MS: u64 = 10_000;
    const LEASE_MARGIN_MS: u64 = 3_000;
    let config = ClusterConfig::new(kafka(&broker), "lease", "a", "127.0.0.1:1")
        .partitions(1)
        .session_timeout_ms(SESSION_TIMEOUT_MS)
        .heartbeat_interval_ms(500)
        .lease_margin_ms(LEASE_MARGIN_MS)
        .mode(ClusterMode::Local);
    let (engine, cluster) = join_serving(&rt, dir.path(), config);
    let mut acked: Acked = BTreeMap::new();
    add_retried(&rt, &engine, &mut acked, "c-1");
    wait("published", Duration::from_secs(60), || {
        cluster.health().replication_lag.batches == 0
    });

    let pid = broker.pid().expect("the broker runs").to_string();
    let signal = |sig: &str| {
        let status = std::process::Command::new("kill")
            .args([sig, &pid])
            .status()
            .expect("kill(1)");
        assert!(status.success(), "kill {sig} broker");
    };
    signal("-STOP");
    let paused = Instant::now();
    // Every answer the coordinator gave was to a request sent before the pause, so the lease
    // ends at most `session − margin` after it, whatever the load: waiting that out (plus a
    // little) is what is tested, not a guess at speed.
    let lease = Duration::from_millis(SESSION_TIMEOUT_MS - LEASE_MARGIN_MS);
    std::thread::sleep(lease + Duration::from_millis(200));
    let refused = rt.block_on(engine.execute::<Counter>("c-1", CounterCommand::Add(1)));
    let at = paused.elapsed();
    signal("-CONT");
    match &refused {
        Err(CommandError::NotOwner { partition: 0, .. }) => {}
        other => panic!("a command {at:?} into the broker's pause: {other:?}"),
    }
    assert!(!cluster.serves(0));
    assert_eq!(
        cluster.health().replication_lag.batches,
        0,
        "nothing queued"
    );
    println!("refused {at:?} after the pause (session timeout {SESSION_TIMEOUT_MS} ms)");

    wait(
        "a serves partition 0 again",
        Duration::from_secs(120),
        || cluster.serves(0),
    );
    add_retried(&rt, &engine, &mut acked, "c-1");
    assert_eq!(acked["c-1"].len(), 2, "the refused command wrote nothing");
    cluster.leave();
    rt.block_on(engine.shutdown()).unwrap();
}

#[test]
fn an_engine_not_opened_to_join_is_refused() {
    let rt = runtime();
    let dir = tempfile::tempdir().unwrap();
    let engine = rt
        .block_on(
            Engine::builder(dir.path())
                .register::<Counter>()
                .topic_indexer(false)
                .open(),
        )
        .unwrap();
    // No broker is needed: the engine is refused before any is asked.
    let kafka = KafkaConfig::new("127.0.0.1:1").client_id("evershard-cluster-test");
    let config = ClusterConfig::new(kafka, "unopened", "a", "127.0.0.1:a");
    match rt.block_on(engine.join_cluster(config)) {
        Err(ClusterError::NotOpenedToJoin) => {}
        other => panic!("an engine not opened to join must be refused: {other:?}"),
    }
    rt.block_on(engine.shutdown()).unwrap();
}

/// The counters' acknowledged event ids as the journal topic's valid history has them.
fn topic_history(broker: &kafka_support::Broker, topic: &str) -> Acked {
    let mut walks: BTreeMap<u32, Walk> = BTreeMap::new();
    let mut valid: Acked = BTreeMap::new();
    for r in kafka_support::read_topic(&broker.bootstrap(), topic) {
        let entry = Entry::decode(r.value.as_deref().unwrap().as_bytes()).unwrap();
        let verdict = walks
            .entry(r.partition)
            .or_default()
            .step(r.offset as i64, Some(&entry));
        if let (Entry::Batch(b), Verdict::Valid) = (&entry, &verdict) {
            let events = valid.entry(b.aggregate_id.clone()).or_default();
            assert_eq!(b.first_sequence, events.len() as u64 + 1, "gapless");
            events.extend(b.events.iter().map(|e| e.event_id));
        }
    }
    valid
}

#[test]
fn a_local_node_hands_a_moved_partition_over_only_once_its_queue_drained() {
    let Some(tansu) = kafka_support::tools("a_local_node_hands_a_moved_partition_over") else {
        return;
    };
    let broker = kafka_support::Broker::start(&tansu);
    let (dir_a, dir_b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let rt = runtime();
    let config = |node: &str, endpoint: &str| {
        ClusterConfig::new(kafka(&broker), "handover", node, endpoint)
            .partitions(2)
            .session_timeout_ms(20_000)
            .heartbeat_interval_ms(500)
            .mode(ClusterMode::Local)
    };
    let topic = config("a", "").journal_topic();
    let (engine_a, cluster_a) = join_serving(&rt, dir_a.path(), config("a", "127.0.0.1:1"));
    let ids = ids_per_partition(2);
    let mut acked: Acked = BTreeMap::new();
    for id in &ids {
        add_local(&rt, &engine_a, &mut acked, id).unwrap();
    }
    wait(
        "the first batches published",
        Duration::from_secs(60),
        || cluster_a.health().replication_lag.batches == 0,
    );

    // Acknowledged, held back from the topic.
    cluster_a.hold_publishing_for_tests(true);
    for _ in 0..3 {
        for id in &ids {
            add_local(&rt, &engine_a, &mut acked, id).unwrap();
        }
    }
    assert_eq!(cluster_a.health().replication_lag.batches, 6);

    // b joins: the cooperative-sticky rebalance moves one partition from a to b.
    let (engine_b, cluster_b) = join(&rt, dir_b.path(), config("b", "127.0.0.1:2"));
    wait("a gives a partition up", Duration::from_secs(120), || {
        cluster_a.status().assigned.len() == 1
    });
    let kept = cluster_a.status().assigned[0];
    let moved = 1 - kept;
    assert!(!cluster_a.serves(moved), "a stops serving it at once");
    // While a's batches of the moved partition are not on the topic, b cannot claim it.
    std::thread::sleep(Duration::from_secs(3));
    assert!(
        !cluster_b.serves(moved),
        "b claimed before a's queue drained"
    );
    cluster_a.hold_publishing_for_tests(false);

    wait(
        "b serves the moved partition",
        Duration::from_secs(120),
        || cluster_b.serves(moved),
    );
    let health = cluster_a.health();
    assert!(health.forked.is_empty(), "a forked: {health:?}");
    assert_eq!(health.stopped, None);
    // b has the whole history: its next event follows what a acknowledged.
    add_local(&rt, &engine_b, &mut acked, &ids[moved as usize]).unwrap();
    add_retried(&rt, &engine_a, &mut acked, &ids[kept as usize]);
    wait("everything published", Duration::from_secs(60), || {
        cluster_a.health().replication_lag.batches == 0
            && cluster_b.health().replication_lag.batches == 0
    });
    assert_eq!(
        topic_history(&broker, &topic),
        acked,
        "the topic's valid events are every acknowledged one, in order"
    );

    // A node that leaves hands its partitions over the same way: `leave` returns once what
    // it acknowledged is on the topic (here once the publisher is released).
    cluster_a.hold_publishing_for_tests(true);
    for _ in 0..2 {
        add_local(&rt, &engine_a, &mut acked, &ids[kept as usize]).unwrap();
    }
    std::thread::scope(|s| {
        s.spawn(|| {
            std::thread::sleep(Duration::from_secs(2));
            cluster_a.hold_publishing_for_tests(false);
        });
        cluster_a.leave();
    });
    assert_eq!(cluster_a.health().replication_lag.batches, 0);
    assert_eq!(
        topic_history(&broker, &topic),
        acked,
        "a left nothing behind"
    );
    cluster_b.leave();
    rt.block_on(engine_b.shutdown()).unwrap();
    rt.block_on(engine_a.shutdown()).unwrap();
}

#[test]
fn a_node_whose_tailer_dies_stops_and_leaves_the_group() {
    let Some(tansu) = kafka_support::tools("a_node_whose_tailer_dies_stops") else {
        return;
    };
    let broker = kafka_support::Broker::start(&tansu);
    let (dir_a, dir_b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let rt = runtime();
    // Long enough that only a member that left frees a partition within the bound below.
    const SESSION_TIMEOUT_MS: u64 = 60_000;
    let config = |node: &str, endpoint: &str| {
        ClusterConfig::new(kafka(&broker), "failstop", node, endpoint)
            .partitions(2)
            .session_timeout_ms(SESSION_TIMEOUT_MS)
            .heartbeat_interval_ms(500)
    };
    let (engine_a, cluster_a) = join_serving(&rt, dir_a.path(), config("a", "127.0.0.1:1"));
    // b joins first, and the group settles: b serves one of the two partitions. (Joining
    // while a was leaving, b once waited out a's whole session on tansu: a rebalance racing
    // the leave.)
    let (engine_b, cluster_b) = join(&rt, dir_b.path(), config("b", "127.0.0.1:2"));
    wait("b serves one partition", Duration::from_secs(120), || {
        cluster_b.status().serving.len() == 1 && cluster_a.status().serving.len() == 1
    });
    let kept = cluster_a.status().serving[0].0;
    let id = &ids_per_partition(2)[kept as usize];
    let first = rt
        .block_on(engine_a.execute::<Counter>(id, CounterCommand::Add(1)))
        .unwrap();
    assert_eq!(first[0].sequence, 1);

    cluster_a.panic_thread_for_tests("tailer");
    wait("a stops", Duration::from_secs(60), || {
        cluster_a.health().stopped.is_some()
    });
    let stopped_at = Instant::now();
    let why = cluster_a.health().stopped.unwrap();
    assert!(why.contains("tailer thread panicked"), "{why}");
    assert!(!cluster_a.serves(kept));
    match rt.block_on(engine_a.execute::<Counter>(id, CounterCommand::Add(1))) {
        Err(CommandError::NotOwner { partition, .. }) if partition == kept => {}
        other => panic!("a stopped node must serve nothing: {other:?}"),
    }
    wait(
        "b serves a's partition before a's session could time out",
        Duration::from_millis(SESSION_TIMEOUT_MS * 3 / 4),
        || cluster_b.serves(kept),
    );
    println!("b serves {:?} after a stopped", stopped_at.elapsed());
    let next = rt
        .block_on(engine_b.execute::<Counter>(id, CounterCommand::Add(1)))
        .unwrap();
    assert_eq!(next[0].sequence, 2, "b replicated a's history");
    cluster_b.leave();
    cluster_a.leave();
    rt.block_on(engine_b.shutdown()).unwrap();
    rt.block_on(engine_a.shutdown()).unwrap();
}

#[test]
fn a_late_local_append_after_the_tailers_is_answered_with_its_events() {
    let Some(tansu) = kafka_support::tools("a_late_local_append_after_the_tailers") else {
        return;
    };
    let broker = kafka_support::Broker::start(&tansu);
    let dir = tempfile::tempdir().unwrap();
    let rt = runtime();
    let config = ClusterConfig::new(kafka(&broker), "late", "a", "127.0.0.1:1")
        .partitions(1)
        .session_timeout_ms(30_000)
        .heartbeat_interval_ms(500)
        .ack_timeout_ms(60_000);
    let (engine, cluster) = join_serving(&rt, dir.path(), config);
    // Held until the tailer has appended the batch itself (after its grace for an own
    // batch, 10 s): the entity's append then comes second, whatever the machine's speed.
    cluster.hold_own_appends_for_tests(true);
    let command = rt.spawn({
        let engine = engine.clone();
        async move {
            engine
                .execute::<Counter>("c-1", CounterCommand::Add(1))
                .await
        }
    });
    let stream = StreamId::new("Counter", "c-1");
    wait(
        "the tailer appends the batch while its entity waits",
        Duration::from_secs(60),
        || engine.journal().head(&stream).unwrap().sequence == 1,
    );
    cluster.hold_own_appends_for_tests(false);
    let answered = rt.block_on(command).unwrap();
    let events = answered.expect("the command took effect: it is answered with its events");
    assert_eq!(events.len(), 1);
    assert_eq!(events[0].sequence, 1);
    let history = histories(&engine, &["c-1".to_owned()]);
    assert_eq!(history["c-1"], vec![events[0].event_id]);

    let next = rt
        .block_on(engine.execute::<Counter>("c-1", CounterCommand::Add(1)))
        .unwrap();
    assert_eq!(next[0].sequence, 2, "the state follows the journal");
    cluster.leave();
    rt.block_on(engine.shutdown()).unwrap();
}

#[test]
fn a_local_node_that_forks_stops_and_its_partitions_move() {
    let Some(tansu) = kafka_support::tools("a_local_node_that_forks_stops") else {
        return;
    };
    let broker = kafka_support::Broker::start(&tansu);
    let (dir_a, dir_b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let rt = runtime();
    // Long enough that only a member that left frees a partition within the bound below.
    const SESSION_TIMEOUT_MS: u64 = 60_000;
    let config = |node: &str, endpoint: &str| {
        ClusterConfig::new(kafka(&broker), "forkstop", node, endpoint)
            .partitions(2)
            .session_timeout_ms(SESSION_TIMEOUT_MS)
            .heartbeat_interval_ms(500)
            .mode(ClusterMode::Local)
            .handover_timeout_ms(1_000)
    };
    let (engine_a, cluster_a) = join_serving(&rt, dir_a.path(), config("a", "127.0.0.1:1"));
    let ids = ids_per_partition(2);
    let mut acked: Acked = BTreeMap::new();
    for id in &ids {
        add_local(&rt, &engine_a, &mut acked, id).unwrap();
    }
    wait(
        "the first batches published",
        Duration::from_secs(60),
        || cluster_a.health().replication_lag.batches == 0,
    );
    cluster_a.hold_publishing_for_tests(true);
    // Acknowledged and held back from the topic: the one of the partition that moves
    // becomes an orphan; the other's is published before a stops.
    let mut held: Acked = BTreeMap::new();
    for id in &ids {
        let events = rt
            .block_on(engine_a.execute::<Counter>(id, CounterCommand::Add(1)))
            .unwrap();
        assert_eq!(events[0].sequence, 2);
        held.insert(id.clone(), vec![events[0].event_id]);
    }

    let (engine_b, cluster_b) = join(&rt, dir_b.path(), config("b", "127.0.0.1:2"));
    wait("a forks", Duration::from_secs(120), || {
        cluster_a.health().stopped.is_some()
    });
    let health = cluster_a.health();
    println!("a forked: {health:?}");
    assert_eq!(health.forked.len(), 1, "{health:?}");
    assert!(health.stopped.unwrap().contains("forked"));
    assert!(
        cluster_a.status().serving.is_empty(),
        "a forked node serves nothing"
    );
    // a stops once its other partition's batch is on the topic.
    let forked = health.forked[0];
    let kept = 1 - forked;
    cluster_a.hold_publishing_for_tests(false);
    let kept_id = &ids[kept as usize];
    acked
        .get_mut(kept_id)
        .unwrap()
        .extend(held[kept_id].iter().copied());
    let stopped_at = Instant::now();
    wait(
        "b serves both partitions before a's session could time out",
        Duration::from_millis(SESSION_TIMEOUT_MS * 3 / 4),
        || cluster_b.serves(0) && cluster_b.serves(1),
    );
    println!("b serves both {:?} after a stopped", stopped_at.elapsed());
    for id in &ids {
        // The topic's valid history is what a published: each counter's first event.
        add_local(&rt, &engine_b, &mut acked, id).unwrap();
    }
    assert_eq!(
        topic_history(&broker, &config("a", "").journal_topic()),
        acked
    );
    cluster_b.leave();
    cluster_a.leave();
    rt.block_on(engine_b.shutdown()).unwrap();
    rt.block_on(engine_a.shutdown()).unwrap();
}
