//! Cluster mode's fencing through the engine API, against a real broker (tansu 0.6.0 on
//! 127.0.0.1): a node that serves a partition meets a foreign claim it has not read yet.
//! The test appends another node's claim to the journal topic itself and, right after the
//! broker acknowledged it, sends the node a command. Whichever comes first in the node —
//! reading the claim (the command is refused before anything is produced) or producing the
//! batch (which then lands after the claim) — the command must fail with `NotOwner`, be
//! written nowhere (a late batch is void by the validity rule and not in the journal), and
//! the partition's history must stand. The node, still assigned the partition by the
//! group, then claims it back after `reclaim_after_ms`, reloads the aggregate under its new
//! claim and serves it again, at the next sequence.
#![cfg(feature = "kafka")]

mod common;
mod kafka_support;

use common::{Counter, CounterCommand};
use evershard_engine::cluster_journal::{Claim, Entry, Verdict, VoidReason, Walk};
use evershard_engine::rdkafka::producer::FutureProducer;
use evershard_engine::rdkafka::producer::FutureRecord;
use evershard_engine::{ClusterConfig, CommandError, Engine, KafkaConfig, StreamId};
use std::time::{Duration, Instant};

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

/// Polls `done` every 50 ms for at most `timeout` (sized for a loaded 2-core machine).
fn wait(what: &str, timeout: Duration, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !done() {
        assert!(Instant::now() < deadline, "{what}: not within {timeout:?}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn a_foreign_claim_fences_the_owner_and_it_claims_back() {
    let Some(tansu) = kafka_support::tools("a_foreign_claim_fences_the_owner") else {
        return;
    };
    let broker = kafka_support::Broker::start(&tansu);
    let dir = tempfile::tempdir().unwrap();
    let rt = runtime();
    let kafka = KafkaConfig::new(broker.bootstrap())
        .client_id("evershard-cluster-test")
        .replication_factor(1)
        .request_timeout(Duration::from_secs(10))
        .connection_timeout(Duration::from_secs(5));
    let config = ClusterConfig::new(kafka.clone(), "fence", "a", "127.0.0.1:1")
        .partitions(1)
        .session_timeout_ms(6_000)
        .heartbeat_interval_ms(500)
        .reclaim_after_ms(2_000);
    let topic = config.journal_topic();
    let (engine, cluster) = rt.block_on(async {
        let engine = Engine::builder(dir.path())
            .register::<Counter>()
            .topic_indexer(false)
            .open()
            .await
            .unwrap();
        let cluster = engine.join_cluster(config).await.unwrap();
        (engine, cluster)
    });
    wait("a serves partition 0", Duration::from_secs(120), || {
        cluster.serves(0)
    });
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
