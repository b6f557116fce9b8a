//! Every aggregate type runs through the real engine: commands from its `Workload` generator
//! go through the sharded actors and the durable journal, snapshots are taken (every 3
//! events here), the engine restarts, and each aggregate must recover to exactly the state it
//! had — which must also equal a client-side mirror folded from the returned events, a
//! snapshot-less full replay, and pass the aggregate's invariants. `verify` must be clean.
//! Deterministic: the generator is seeded; the only clock input is the engine's clock, which
//! the generated commands read through the same `DecideContext`.

use evershard::aggregates::workloads::visit_all;
use evershard::engine::{repository, Journal};
use evershard::model::{Aggregate, DecideContext, DemoRng, Workload, WorkloadVisitor};
use evershard::{CommandError, Durability, Engine, SnapshotPolicy, StreamId};

const AGGREGATES: usize = 12;
const ROUNDS: usize = 30;
/// Small, so that even short lifecycles (an appointment, a credit) cross a snapshot.
const SNAPSHOT_EVERY_EVENTS: u64 = 3;

async fn open<A: Aggregate>(dir: &std::path::Path) -> Engine {
    Engine::builder(dir)
        .register::<A>()
        .shards(3)
        .durability(Durability::Durable)
        .snapshot_policy(SnapshotPolicy::every(SNAPSHOT_EVERY_EVENTS).keep(2))
        .open()
        .await
        .expect("engine opens")
}

async fn exercise<A: Workload>(seed: u64) {
    let dir = tempfile::tempdir().unwrap();
    let mut rng = DemoRng::new(seed);
    // UUID ids: some aggregates (Order, Device) require their id to be the entity's UUID.
    let ids: Vec<String> = (0..AGGREGATES).map(|_| rng.uuid().to_string()).collect();
    let mut mirrors = vec![A::State::default(); AGGREGATES];
    let mut mirrored = [0u64; AGGREGATES];
    let (mut accepted, mut rejected) = (0usize, 0usize);

    let engine = open::<A>(dir.path()).await;
    for _ in 0..ROUNDS {
        for (k, id) in ids.iter().enumerate() {
            let ctx = DecideContext::new(id.clone(), chrono::Utc::now());
            let command = A::sample_command(&mirrors[k], &ctx, &mut rng);
            match engine.execute::<A>(id, command).await {
                Ok(events) => {
                    accepted += 1;
                    // A repeat of an idempotency key (Order's `CreateOrder`) answers the
                    // original events: folded already.
                    for e in &events {
                        if e.sequence > mirrored[k] {
                            A::apply(&mut mirrors[k], &e.payload);
                            mirrored[k] = e.sequence;
                        }
                    }
                }
                Err(CommandError::Rejected(_)) => rejected += 1,
                Err(other) => panic!("{}: unexpected {other}", A::TYPE),
            }
        }
    }
    assert!(
        accepted >= 2 * AGGREGATES,
        "{}: only {accepted} accepted, {rejected} rejected",
        A::TYPE
    );
    let mut versions = Vec::new();
    for (k, id) in ids.iter().enumerate() {
        let (state, version) = engine.state::<A>(id).await.unwrap();
        assert_eq!(
            state,
            mirrors[k],
            "{}: live state differs from the events returned",
            A::TYPE
        );
        A::check_invariants(&state).unwrap();
        versions.push(version);
    }
    engine.shutdown().await.unwrap();
    drop(engine);

    {
        let journal = Journal::open_read_only(dir.path()).unwrap();
        let report = journal.verify();
        assert!(report.is_clean(), "{}: {report:#?}", A::TYPE);
        let mut snapshotted = 0;
        for (k, id) in ids.iter().enumerate() {
            let stream = StreamId::new(A::TYPE, id.as_str());
            let with = repository::load::<A>(&journal, &stream, u64::MAX, true).unwrap();
            let full = repository::load::<A>(&journal, &stream, u64::MAX, false).unwrap();
            assert_eq!(with.state, mirrors[k]);
            assert_eq!(full.state, mirrors[k]);
            assert_eq!(with.version, versions[k]);
            if versions[k] >= SNAPSHOT_EVERY_EVENTS {
                assert!(
                    with.from_snapshot.is_some(),
                    "{}: no snapshot at version {}",
                    A::TYPE,
                    versions[k]
                );
                snapshotted += 1;
            }
        }
        assert!(
            snapshotted > 0,
            "{}: no aggregate reached a snapshot; the workload is too thin",
            A::TYPE
        );
    }

    let engine = open::<A>(dir.path()).await;
    for (k, id) in ids.iter().enumerate() {
        let (state, version) = engine.state::<A>(id).await.unwrap();
        assert_eq!(
            (&state, version),
            (&mirrors[k], versions[k]),
            "{}: recovered state differs",
            A::TYPE
        );
    }
    // And it goes on working after the restart.
    let ctx = DecideContext::new(ids[0].clone(), chrono::Utc::now());
    let command = A::sample_command(&mirrors[0], &ctx, &mut rng);
    match engine.execute::<A>(&ids[0], command).await {
        Ok(_) | Err(CommandError::Rejected(_)) => {}
        Err(other) => panic!("{}: after restart: {other}", A::TYPE),
    }
    engine.shutdown().await.unwrap();
}

/// Collects one `exercise` per aggregate type, each with its own seed.
#[derive(Default)]
struct Exercises(Vec<(&'static str, BoxFuture<'static, ()>)>);

type BoxFuture<'a, T> = std::pin::Pin<Box<dyn std::future::Future<Output = T> + Send + 'a>>;

impl WorkloadVisitor for Exercises {
    fn visit<A: Workload>(&mut self) {
        let seed = self.0.len() as u64 + 1;
        self.0.push((A::TYPE, Box::pin(exercise::<A>(seed))));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_aggregate_type_through_the_engine() {
    let mut exercises = Exercises::default();
    visit_all(&mut exercises);
    assert_eq!(exercises.0.len(), 7);
    for (name, exercise) in exercises.0 {
        println!("{name}");
        exercise.await;
    }
}
