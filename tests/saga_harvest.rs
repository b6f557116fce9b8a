//! docs/saga.md's "how to write another saga" runs, not only compiles: its harvest saga (a
//! saga written on the public API only) is driven end to end through an engine — a plant
//! that becomes ready starts it, an approved inspection harvests the plant through the
//! dispatcher, a refused one ends it, a harvest the plant refuses comes back as a rejected
//! step. `tests/harvest/mod.rs` is the doc's code block byte for byte (checked here), so the
//! doc cannot drift from what this test runs. Every wait is a bounded `wait_idle`.

#[allow(dead_code)]
mod harvest;

use evershard::aggregates::plant::*;
use evershard::Engine;
use harvest::{harvest_runner, HarvestCommand, HarvestEvent, HarvestSaga, HarvestState};
use std::time::Duration;
use uuid::Uuid;

const IDLE: Duration = Duration::from_secs(60);

#[test]
fn the_docs_example_is_this_module() {
    let doc = include_str!("../docs/saga.md");
    let code = include_str!("harvest/mod.rs");
    assert!(
        doc.contains(&format!("```rust,no_run\n{code}```\n")),
        "tests/harvest/mod.rs differs from the code block in docs/saga.md"
    );
}

fn create(plant_id: Uuid) -> CreatePlant {
    CreatePlant {
        plant_id,
        batch_id: Uuid::new_v4(),
        genetics: Genetics {
            id: Uuid::new_v4(),
            strain: "Northern Lights".into(),
            genetics_type: GeneticsType::Indica,
            thc_percentage: 18.5,
            cbd_percentage: 0.5,
            lineage: None,
        },
        location: Location {
            facility_id: Uuid::new_v4(),
            zone: "A".into(),
            row: 1,
            position: 1,
        },
        propagation_method: PropagationMethod::Seed,
        source_id: None,
        planned_harvest_date: chrono::NaiveDate::from_ymd_opt(2100, 1, 1).unwrap(),
        metadata: None,
    }
}

fn ready() -> ChangePlantStage {
    ChangePlantStage {
        new_stage: PlantStage::Ready,
        changed_by: Uuid::new_v4(),
        reason: None,
        environmental_conditions: None,
        photos: None,
    }
}

/// A harvest; `wet_grams` ≤ 0 is one the plant refuses.
fn harvest(wet_grams: f64) -> HarvestPlant {
    HarvestPlant {
        harvest_id: Uuid::new_v4(),
        harvested_by: Uuid::new_v4(),
        harvest_data: HarvestData {
            wet_weight: Weight {
                amount: wet_grams,
                unit: WeightUnit::G,
            },
            dry_weight: None,
            quality_grade: None,
            sections: vec![],
        },
        environmental_conditions: HarvestConditions {
            temperature: 21.5,
            humidity: 45.0,
        },
        notes: None,
    }
}

/// An engine running plants and their harvest sagas on `dir`.
async fn open(dir: &std::path::Path) -> Engine {
    Engine::builder(dir)
        .register::<Plant>()
        .register::<HarvestSaga>()
        .open()
        .await
        .unwrap()
}

/// How the saga of `plant` ended, if it did.
fn ended(engine: &Engine, plant: &str) -> Option<String> {
    engine
        .history::<HarvestSaga>(plant)
        .unwrap()
        .into_iter()
        .find_map(|e| match e.payload {
            HarvestEvent::Ended(end) => Some(end.outcome),
            _ => None,
        })
}

#[test]
fn the_harvest_saga_of_the_docs_runs_end_to_end() {
    let dir = tempfile::tempdir().unwrap();
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let engine = open(dir.path()).await;
        let runner = harvest_runner(&engine).unwrap();
        let [approved, refused, failing] = [(); 3].map(|_| Uuid::new_v4());
        for plant in [approved, refused, failing] {
            let id = plant.to_string();
            engine.execute::<Plant>(&id, create(plant)).await.unwrap();
            engine.execute::<Plant>(&id, ready()).await.unwrap();
        }
        assert!(runner.wait_idle(IDLE).await);
        for plant in [approved, refused, failing] {
            let (state, _) = engine
                .state::<HarvestSaga>(&plant.to_string())
                .await
                .unwrap();
            assert!(state.started && !state.done, "{plant}: {state:?}");
        }

        // The quality service answers.
        let answers = [
            (approved, true, harvest(1200.0)),
            (refused, false, harvest(1200.0)),
            (failing, true, harvest(-1.0)),
        ];
        for (plant, ok, harvest) in answers {
            let answer = HarvestCommand::InspectionCompleted {
                approved: ok,
                harvest: Some(harvest),
            };
            engine
                .execute::<HarvestSaga>(&plant.to_string(), answer)
                .await
                .unwrap();
        }
        assert!(runner.wait_idle(IDLE).await);

        let stage = |plant: Uuid| {
            let engine = engine.clone();
            async move {
                let (state, _) = engine.state::<Plant>(&plant.to_string()).await.unwrap();
                state.plant.map(|p| p.stage)
            }
        };
        assert_eq!(
            ended(&engine, &approved.to_string()).as_deref(),
            Some("harvested")
        );
        assert_eq!(stage(approved).await, Some(PlantStage::Harvested));
        assert_eq!(
            ended(&engine, &refused.to_string()).as_deref(),
            Some("rejected")
        );
        assert_eq!(stage(refused).await, Some(PlantStage::Ready));
        let failed = ended(&engine, &failing.to_string()).unwrap_or_default();
        assert!(failed.starts_with("failed: "), "{failed}");
        assert_eq!(stage(failing).await, Some(PlantStage::Ready));
        assert_eq!(runner.dead_lettered(), 0);
        runner.stop().await.unwrap();
        engine.shutdown().await.unwrap();
    });
}

/// A step that keeps failing (its target down) is dead-lettered and its saga waits; once the
/// cause is gone, `SagaRunner::redrive` hands the letter to the dispatcher again: the plant
/// is harvested and the saga ends. A message that is not a dead letter is refused.
#[test]
fn a_dead_lettered_step_is_re_driven_through_the_runner() {
    use evershard::engine::{
        send_to, HandlerError, RetryPolicy, SagaRunner, SubscriptionOptions, TopicError, DLQ_TOPIC,
    };
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::Arc;
    let dir = tempfile::tempdir().unwrap();
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let engine = open(dir.path()).await;
        let down = Arc::new(AtomicBool::new(true));
        let target_down = down.clone();
        let runner = SagaRunner::builder::<HarvestSaga>(&engine, "cultivation.harvest.v1")
            .observe::<Plant>(TOPIC, |envelope| match &envelope.payload {
                PlantEvent::PlantStageChanged(c) if c.new_stage == PlantStage::Ready => {
                    let plant_id = envelope.aggregate_id.clone();
                    Some((plant_id.clone(), HarvestCommand::PlantReady { plant_id }))
                }
                PlantEvent::PlantHarvested(_) => Some((
                    envelope.aggregate_id.clone(),
                    HarvestCommand::PlantHarvested,
                )),
                _ => None,
            })
            .dispatch(move |engine, send| {
                let down = target_down.load(Ordering::SeqCst);
                Box::pin(async move {
                    if down {
                        return Err(HandlerError::Processing("the plant service is down".into()));
                    }
                    let (plant_id, command) = send.command;
                    send_to::<Plant>(&engine, &plant_id, command, send.metadata).await
                })
            })
            .on_rejected(|rejected| HarvestCommand::StepRejected {
                step: rejected.step.clone(),
                error: rejected.error.clone(),
            })
            .options(SubscriptionOptions {
                retry: RetryPolicy {
                    max_attempts: 2,
                    initial_backoff_ms: 1,
                    multiplier: 1.0,
                    max_backoff_ms: 1,
                },
                ..SubscriptionOptions::default()
            })
            .start()
            .unwrap();
        let plant = Uuid::new_v4();
        let id = plant.to_string();
        engine.execute::<Plant>(&id, create(plant)).await.unwrap();
        engine.execute::<Plant>(&id, ready()).await.unwrap();
        assert!(runner.wait_idle(IDLE).await);
        let answer = HarvestCommand::InspectionCompleted {
            approved: true,
            harvest: Some(harvest(1200.0)),
        };
        engine.execute::<HarvestSaga>(&id, answer).await.unwrap();
        let started = std::time::Instant::now();
        while runner.dead_lettered() == 0 {
            assert!(
                started.elapsed() < IDLE,
                "the failing step was not dead-lettered"
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        assert!(runner.wait_idle(IDLE).await);
        assert_eq!(ended(&engine, &id), None, "the saga waits");
        let (state, _) = engine.state::<Plant>(&id).await.unwrap();
        assert_eq!(state.plant.map(|p| p.stage), Some(PlantStage::Ready));

        down.store(false, Ordering::SeqCst);
        let log = engine.topic_log().unwrap();
        let letters: Vec<_> = (0..log.topic(DLQ_TOPIC).unwrap().partitions)
            .flat_map(|p| log.read(DLQ_TOPIC, p, 0, usize::MAX).unwrap())
            .collect();
        assert_eq!(letters.len(), 1);
        assert_eq!(runner.redrive(&letters[0]).await.unwrap(), Ok(()));
        assert!(runner.wait_idle(IDLE).await);
        assert_eq!(ended(&engine, &id).as_deref(), Some("harvested"));
        let (state, _) = engine.state::<Plant>(&id).await.unwrap();
        assert_eq!(state.plant.map(|p| p.stage), Some(PlantStage::Harvested));

        let not_a_letter = log
            .read(TOPIC, evershard::engine::topic::partition_for(&id, 8), 0, 1)
            .unwrap();
        assert!(matches!(
            runner.redrive(&not_a_letter[0]).await,
            Err(TopicError::NotDeadLetter { .. })
        ));
        runner.stop().await.unwrap();
        engine.shutdown().await.unwrap();
    });
}

/// The docs' saga refuses the two answers that would leave it wrong: an approval without
/// the harvest to make (it would wait for ever) and a refusal after the harvest was sent (it
/// would end "rejected" on a plant being harvested).
#[test]
fn contradicting_inspections_are_refused() {
    use evershard::model::{Aggregate, DecideContext};
    let ctx = DecideContext::new(Uuid::new_v4().to_string(), chrono::Utc::now());
    let started = HarvestState {
        started: true,
        ..HarvestState::default()
    };
    let no_harvest = HarvestCommand::InspectionCompleted {
        approved: true,
        harvest: None,
    };
    assert!(HarvestSaga::decide(&started, &no_harvest, &ctx).is_err());
    let authorized = HarvestState {
        authorized: true,
        ..started.clone()
    };
    let late_refusal = HarvestCommand::InspectionCompleted {
        approved: false,
        harvest: None,
    };
    assert!(HarvestSaga::decide(&authorized, &late_refusal, &ctx).is_err());
    // Before the authorization a refusal ends the saga; after it an approval is a repeat.
    assert_eq!(
        HarvestSaga::decide(&started, &late_refusal, &ctx).map(|e| e.len()),
        Ok(1)
    );
    let approval = HarvestCommand::InspectionCompleted {
        approved: true,
        harvest: Some(harvest(1200.0)),
    };
    assert_eq!(
        HarvestSaga::decide(&authorized, &approval, &ctx).map(|e| e.len()),
        Ok(0)
    );
}
