use evershard::aggregates::plant::{HarvestPlant, Plant, PlantCommand, PlantEvent, PlantStage};
use evershard::engine::{send_to, SagaRunner, SagaStartError};
use evershard::model::{Aggregate, DecideContext, DomainEvent, Outbound, Saga};
use evershard::Engine;
use serde::{Deserialize, Serialize};

/// One harvest process per plant; the saga id is the plant id.
pub struct HarvestSaga;

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct HarvestState {
    pub started: bool,
    pub authorized: bool,
    pub done: bool,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub enum HarvestCommand {
    /// Observed on `cultivation.plants.v1`: the plant reached `ready`.
    PlantReady { plant_id: String },
    /// From the quality service, which reads `HarvestStarted` on the saga's topic.
    InspectionCompleted {
        approved: bool,
        harvest: Option<HarvestPlant>,
    },
    /// Observed: `plant.harvested`.
    PlantHarvested,
    /// The runner reports a refused step.
    StepRejected { step: String, error: String },
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct HarvestStarted {
    pub plant_id: String,
}
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct HarvestAuthorized {
    pub plant_id: String,
    pub harvest: HarvestPlant,
}
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct HarvestEnded {
    pub outcome: String,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, DomainEvent)]
#[event(topic = "cultivation.harvest.v1", version = "1.0")]
pub enum HarvestEvent {
    #[event(name = "quality.inspection_requested")]
    Started(HarvestStarted),
    #[event(name = "cultivation.harvest_authorized")]
    Authorized(HarvestAuthorized),
    #[event(name = "cultivation.harvest_ended")]
    Ended(HarvestEnded),
}

#[derive(Clone, Debug, PartialEq)]
pub struct HarvestError(pub String);
impl std::fmt::Display for HarvestError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}
impl std::error::Error for HarvestError {}

impl Aggregate for HarvestSaga {
    const TYPE: &'static str = "HarvestSaga";
    type State = HarvestState;
    type Command = HarvestCommand;
    type Event = HarvestEvent;
    type Error = HarvestError;

    fn decide(
        state: &HarvestState,
        command: &HarvestCommand,
        ctx: &DecideContext,
    ) -> Result<Vec<HarvestEvent>, HarvestError> {
        let ended = |outcome: &str| {
            HarvestEvent::Ended(HarvestEnded {
                outcome: outcome.into(),
            })
        };
        Ok(match command {
            HarvestCommand::PlantReady { .. } if state.started => vec![], // a redelivery
            HarvestCommand::PlantReady { plant_id } => {
                vec![HarvestEvent::Started(HarvestStarted {
                    plant_id: plant_id.clone(),
                })]
            }
            _ if !state.started => return Err(HarvestError("no harvest started".into())),
            _ if state.done => vec![],
            HarvestCommand::InspectionCompleted {
                approved: true,
                harvest: Some(harvest),
            } if !state.authorized => {
                vec![HarvestEvent::Authorized(HarvestAuthorized {
                    plant_id: ctx.aggregate_id.clone(), // the saga id is the plant id
                    harvest: harvest.clone(),
                })]
            }
            // A late refusal cannot undo a harvest already sent.
            HarvestCommand::InspectionCompleted {
                approved: false, ..
            } if state.authorized => {
                return Err(HarvestError("the harvest is already authorized".into()))
            }
            HarvestCommand::InspectionCompleted {
                approved: false, ..
            } => vec![ended("rejected")],
            // An approval without the harvest to make would leave the saga waiting forever.
            HarvestCommand::InspectionCompleted { harvest: None, .. } => {
                return Err(HarvestError("an approval must carry the harvest".into()))
            }
            HarvestCommand::InspectionCompleted { .. } => vec![], // a redelivery
            HarvestCommand::PlantHarvested => vec![ended("harvested")],
            HarvestCommand::StepRejected { error, .. } => vec![ended(&format!("failed: {error}"))],
        })
    }

    fn apply(state: &mut HarvestState, event: &HarvestEvent) {
        match event {
            HarvestEvent::Started(_) => state.started = true,
            HarvestEvent::Authorized(_) => state.authorized = true,
            HarvestEvent::Ended(_) => state.done = true,
        }
    }
}

impl Saga for HarvestSaga {
    /// (plant id, command): the one target type of this saga.
    type Outbound = (String, PlantCommand);

    fn outbox(event: &HarvestEvent) -> Vec<Outbound<(String, PlantCommand)>> {
        match event {
            // The inspection request is the event itself, read by the quality service.
            HarvestEvent::Started(_) | HarvestEvent::Ended(_) => vec![],
            HarvestEvent::Authorized(a) => vec![Outbound::new(
                "harvest",
                (a.plant_id.clone(), PlantCommand::Harvest(a.harvest.clone())),
            )],
        }
    }
}

/// The runner: observe the plants' topic, send to `Plant`, report refusals back.
pub fn harvest_runner(engine: &Engine) -> Result<SagaRunner, SagaStartError> {
    SagaRunner::builder::<HarvestSaga>(engine, "cultivation.harvest.v1")
        .observe::<Plant>(evershard::aggregates::plant::TOPIC, |envelope| {
            let plant_id = envelope.aggregate_id.clone();
            match &envelope.payload {
                PlantEvent::PlantStageChanged(c) if c.new_stage == PlantStage::Ready => {
                    Some((plant_id.clone(), HarvestCommand::PlantReady { plant_id }))
                }
                PlantEvent::PlantHarvested(_) => Some((plant_id, HarvestCommand::PlantHarvested)),
                _ => None,
            }
        })
        .dispatch(|engine, send| {
            Box::pin(async move {
                let (plant_id, command) = send.command;
                send_to::<Plant>(&engine, &plant_id, command, send.metadata).await
            })
        })
        .on_rejected(|rejected| HarvestCommand::StepRejected {
            step: rejected.step.clone(),
            error: rejected.error.clone(),
        })
        .start()
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let engine = Engine::builder("./farm")
        .register::<Plant>()
        .register::<HarvestSaga>()
        .open()
        .await?;
    let runner = harvest_runner(&engine)?;
    // ... plants grow; the quality service answers with
    // `engine.execute::<HarvestSaga>(plant_id, HarvestCommand::InspectionCompleted { .. })`.
    runner.stop().await?;
    engine.shutdown().await?;
    Ok(())
}
