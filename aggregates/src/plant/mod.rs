//! Plant: one cultivated plant from propagation to harvest or disposal (seed
//! `event-architecture-kafka.md`, section 4.1 "Plant Lifecycle Events" and section 11
//! "SCHEMA EVOLUTION").
//!
//! # Commands
//! - [`CreatePlant`]: registers the plant (genetics, location, propagation method).
//! - [`ChangePlantStage`]: moves it forward in its lifecycle, or disposes of it.
//! - [`HarvestPlant`]: harvests it (weights, grade, sections); harvested is final.
//!
//! # Events (topic `cultivation.plants.v1`, camelCase payloads of the seed's Zod schemas)
//! - `plant.created`, version **1.1** ([`PlantCreated`]): plantId, batchId,
//!   genetics {id, strain, type, thcPercentage, cbdPercentage, lineage? {mother?, father?}},
//!   location {facilityId, zone, row, position}, propagationMethod, sourceId?,
//!   plannedHarvestDate, metadata?.
//! - `plant.stage_changed`, version 1.0 ([`PlantStageChanged`]): plantId, batchId,
//!   previousStage, newStage, stageChangedAt, stageChangedBy, reason?,
//!   environmentalConditions? {temperature, humidity, vpd?, co2?, lightIntensity?},
//!   photos? [{id, url, type, metadata?}].
//! - `plant.harvested`, version 1.0 ([`PlantHarvested`]): plantId, batchId, harvestId,
//!   harvestedAt, harvestedBy, harvestData {wetWeight, dryWeight?, qualityGrade?,
//!   sections [{type, weight, destinationId}]}, environmentalConditions {temperature,
//!   humidity}, notes?.
//!
//! `x?` is Zod's `.optional()`: the key may be absent but is never `null`, so
//! [`DomainEvent::payload_json`] leaves absent optional fields out (the stored form keeps them
//! as `Option`, `None` written as nil). `plannedHarvestDate` is a `YYYY-MM-DD` date.
//!
//! Physical measurements (THC/CBD percentages, temperature, humidity, VPD, CO2, light
//! intensity, weights) are `f64`: they are measurements published as JSON numbers, not money,
//! and need no exact decimal arithmetic. Decide rejects NaN and infinities, so every stored
//! value is finite (and `==` on states is meaningful for replay checks).
//!
//! # Schema evolution (seed section 11)
//! `plant.created` is version 1.1 (the section 4.1 shape). Version 1.0 events (`plantId`,
//! `strain`, `location` as plain strings) are still read: [`Plant`]'s `decode_event` decodes
//! the legacy [`PlantCreatedV1_0`] shape for records of version "1.0" and upcasts it (genetics
//! type `hybrid`; every other field is mapped as tabled in [`legacy`]). Section 11 shows an
//! interim 1.1 that still had a deprecated top-level `strain` and a string `location`; this
//! crate publishes the section 4.1 shape as 1.1, which the brief names as current, plus the
//! deprecated top-level `strain` (= `genetics.strain`), so that section 11's 1.1 consumers find
//! it. Its `location` stays the section 4.1 object: the two sections of the seed disagree there,
//! and 4.1 is the full contract.
//! `decode_event` accepts exactly: `plant.created` 1.0 (upcast) and 1.1, `plant.stage_changed`
//! 1.0, `plant.harvested` 1.0; any other version is refused with `UnknownVersion` rather than
//! decoded by guesswork (a "1.2" is a contract change that gets its own decoder here, even
//! where the named codec format 2 would happen to read it).
//!
//! # Lifecycle
//! Stages in the seed's order: seedling, cloning, vegetative, mother_plant, pre_flower,
//! flowering, drying, curing, ready, harvested, disposed. A plant starts in `seedling` when
//! propagated from seed and in `cloning` when propagated from a clone or tissue culture.
//!
//! | from          | stage change may move to                           | harvest | dispose |
//! |---------------|----------------------------------------------------|---------|---------|
//! | seedling      | vegetative, pre_flower, flowering, drying, curing, ready | no | yes |
//! | cloning       | vegetative, pre_flower, flowering, drying, curing, ready | no | yes |
//! | vegetative    | pre_flower, flowering, drying, curing, ready       | no      | yes     |
//! | mother_plant  | pre_flower, flowering, drying, curing, ready       | no      | yes     |
//! | pre_flower    | flowering, drying, curing, ready                   | no      | yes     |
//! | flowering     | drying, curing, ready                              | yes     | yes     |
//! | drying        | curing, ready                                      | yes     | yes     |
//! | curing        | ready                                              | yes     | yes     |
//! | ready         | -                                                  | yes     | yes     |
//! | harvested     | - (final)                                          | no      | no      |
//! | disposed      | - (final)                                          | no      | no      |
//!
//! [`can_transition`] is this table as code ("harvest" is the move to `harvested`, "dispose"
//! the move to `disposed`).
//!
//! # Rules (seed and domain.md)
//! - Stages move forward only, along the seed's order; `disposed` is reachable from every
//!   living stage; `harvested` and `disposed` are final ([`PlantError::Final`]).
//! - `cloning` and `mother_plant` are never a new stage (the seed's `newStage` enum leaves them
//!   out): [`PlantError::IllegalTransition`].
//! - The Zod ranges, checked in decide with typed errors: THC and CBD in 0..=100
//!   ([`PlantError::PercentOutOfRange`]), humidity in 0..=100 (same error), weights > 0,
//!   `vpd` > 0, `co2` > 0, `row` and `position` > 0 ([`PlantError::NotPositive`]),
//!   `lightIntensity` >= 0 ([`PlantError::Negative`]), photo URLs are URLs
//!   ([`PlantError::InvalidPhotoUrl`]); every number finite ([`PlantError::NotFinite`]).
//!
//! # Rules chosen here (the seed is silent)
//! - A plant is created once ([`PlantError::AlreadyCreated`]); the other commands need a
//!   created plant ([`PlantError::NotCreated`]). `plantId` comes from the command; the
//!   engine's aggregate id is routing only and is not compared with it.
//! - `harvested` is entered only by [`HarvestPlant`] (event `plant.harvested`, which carries
//!   the harvest data); a stage change to `harvested` is refused
//!   ([`PlantError::UseHarvestCommand`]). Harvest is possible from `flowering` on: a plant
//!   that has not flowered has nothing to harvest.
//! - Stage changes may skip stages (an autoflower's grower may not record `pre_flower`), as
//!   long as they move forward.
//! - Disposal needs a non-blank reason ([`PlantError::DisposalNeedsReason`]): destroying a
//!   plant is an audited act.
//! - `stageChangedAt` and `harvestedAt` are `ctx.now`: the command records what happens now.
//! - Creation: `genetics.strain` and `location.zone` are non-blank ([`PlantError::BlankText`]);
//!   THC + CBD <= 100 ([`PlantError::PotencyAbove100`]); a clone names its parent in
//!   `sourceId` ([`PlantError::CloneWithoutSource`]), which is not the plant itself
//!   ([`PlantError::SourceIsSelf`]); `plannedHarvestDate` is not before today's date (UTC) of
//!   `ctx.now` ([`PlantError::PlannedHarvestInPast`]); metadata may not use the key
//!   `upcastFrom`, reserved for upcast events ([`PlantError::ReservedMetadataKey`]).
//! - Harvest: the dry weight, when given, is not above the wet weight (compared in grams)
//!   ([`PlantError::DryHeavierThanWet`]).
//! - Limits ([`PlantError::TooMany`]): at most [`PHOTOS_PER_STAGE_CHANGE_MAX`] photos per stage
//!   change, [`HARVEST_SECTIONS_MAX`] harvest sections, [`METADATA_ENTRIES_MAX`] metadata
//!   entries per map.
//!
//! # Invariants ([`Plant::check_invariants`])
//! - The stage is never behind the initial stage, which is the propagation method's
//!   ([`PropagationMethod::initial_stage`]); `cloning` and `mother_plant` occur only as the
//!   initial stage.
//! - stage `harvested` <=> a harvest is recorded; stage `disposed` <=> a disposal reason is
//!   recorded.
//! - THC and CBD finite, in 0..=100, sum <= 100; row and position > 0.
//! - A clone has a source, and no plant is its own source.
//! - A recorded harvest has finite positive weights and dry <= wet.
//!
//! (Text non-blankness is not an invariant: an upcast 1.0 event is a fact and keeps whatever
//! strain and location text it had.)

mod events;
pub mod legacy;

pub use events::*;
pub use legacy::{PlantCreatedV1_0, PlantEventV1_0, PLANT_CREATED_V1_0_VERSION, UPCAST_FROM_KEY};

use chrono::{DateTime, NaiveDate, Utc};
use evershard_model::{codec, from_variants, Aggregate, CodecError, DecideContext, DomainEvent};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// At most this many photos per stage change.
pub const PHOTOS_PER_STAGE_CHANGE_MAX: usize = 20;
/// At most this many sections per harvest.
pub const HARVEST_SECTIONS_MAX: usize = 64;
/// At most this many entries per metadata map.
pub const METADATA_ENTRIES_MAX: usize = 32;

/// The Plant aggregate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Plant;

/// The lifecycle table of the module docs.
pub fn can_transition(from: PlantStage, to: PlantStage) -> bool {
    use PlantStage::*;
    match (from, to) {
        // Final stages go nowhere.
        (Harvested | Disposed, _) => false,
        // Previous-stage values only: never entered by a change.
        (_, Cloning | MotherPlant) => false,
        // Disposal from every living stage.
        (_, Disposed) => true,
        // Harvest once the plant has flowered.
        (Flowering | Drying | Curing | Ready, Harvested) => true,
        (_, Harvested) => false,
        // Otherwise strictly forward along the seed's order.
        (from, to) => to.rank() > from.rank(),
    }
}

// ---------------------------------------------------------------------------------------------
// Commands
// ---------------------------------------------------------------------------------------------

/// Registers a plant: the fields of `plant.created` 1.1.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CreatePlant {
    pub plant_id: Uuid,
    pub batch_id: Uuid,
    pub genetics: Genetics,
    pub location: Location,
    pub propagation_method: PropagationMethod,
    pub source_id: Option<Uuid>,
    pub planned_harvest_date: NaiveDate,
    pub metadata: Option<Metadata>,
}

/// Moves the plant to a later stage, or to `disposed` (with a reason).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ChangePlantStage {
    pub new_stage: PlantStage,
    pub changed_by: Uuid,
    pub reason: Option<String>,
    pub environmental_conditions: Option<EnvironmentalConditions>,
    pub photos: Option<Vec<Photo>>,
}

/// Harvests the plant.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct HarvestPlant {
    pub harvest_id: Uuid,
    pub harvested_by: Uuid,
    pub harvest_data: HarvestData,
    pub environmental_conditions: HarvestConditions,
    pub notes: Option<String>,
}

/// Every plant command.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum PlantCommand {
    Create(CreatePlant),
    ChangeStage(ChangePlantStage),
    Harvest(HarvestPlant),
}

from_variants!(PlantCommand {
    Create(CreatePlant),
    ChangeStage(ChangePlantStage),
    Harvest(HarvestPlant),
});

// ---------------------------------------------------------------------------------------------
// State
// ---------------------------------------------------------------------------------------------

/// What the state keeps of a harvest.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct HarvestRecord {
    pub harvest_id: Uuid,
    #[serde(with = "evershard_model::codec::timestamp")]
    pub harvested_at: DateTime<Utc>,
    pub harvested_by: Uuid,
    pub wet_weight: Weight,
    pub dry_weight: Option<Weight>,
    pub quality_grade: Option<QualityGrade>,
}

/// A created plant.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PlantRecord {
    pub plant_id: Uuid,
    pub batch_id: Uuid,
    pub genetics: Genetics,
    pub location: Location,
    pub propagation_method: PropagationMethod,
    pub source_id: Option<Uuid>,
    pub planned_harvest_date: NaiveDate,
    /// The stage the plant was created in (from the propagation method).
    pub initial_stage: PlantStage,
    pub stage: PlantStage,
    #[serde(with = "evershard_model::codec::timestamp::option")]
    pub last_stage_changed_at: Option<DateTime<Utc>>,
    pub disposal_reason: Option<String>,
    pub harvest: Option<HarvestRecord>,
}

/// The state of one plant aggregate: `None` until created.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct PlantState {
    pub plant: Option<PlantRecord>,
}

// ---------------------------------------------------------------------------------------------
// Errors
// ---------------------------------------------------------------------------------------------

/// Why a plant command was rejected. Every variant is a user error: do not retry the same
/// command. `field` names the JSON path of the offending value (`genetics.thcPercentage`).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PlantError {
    #[error("plant {plant_id} already exists")]
    AlreadyCreated { plant_id: Uuid },
    #[error("no plant here yet: create it first")]
    NotCreated,
    #[error("plant is {stage}, a final stage: it accepts no further change")]
    Final { stage: PlantStage },
    #[error("a plant cannot move from {from} to {to}")]
    IllegalTransition { from: PlantStage, to: PlantStage },
    #[error(
        "stage harvested is entered by the harvest command (plant.harvested), not a stage change"
    )]
    UseHarvestCommand,
    #[error("disposing of a plant needs a non-blank reason")]
    DisposalNeedsReason,
    #[error("{field} must be a finite number")]
    NotFinite { field: &'static str },
    #[error("{field} must be in 0..=100, got {value}")]
    PercentOutOfRange { field: &'static str, value: String },
    #[error("{field} must be > 0, got {value}")]
    NotPositive { field: &'static str, value: String },
    #[error("{field} must be >= 0, got {value}")]
    Negative { field: &'static str, value: String },
    #[error("THC + CBD must not exceed 100%, got {total}")]
    PotencyAbove100 { total: String },
    #[error("{field} must not be blank")]
    BlankText { field: &'static str },
    #[error("a clone needs its parent plant in sourceId")]
    CloneWithoutSource,
    #[error("a plant cannot be its own source")]
    SourceIsSelf,
    #[error("planned harvest date {planned} is before today ({today})")]
    PlannedHarvestInPast {
        planned: NaiveDate,
        today: NaiveDate,
    },
    #[error("metadata key {key:?} is reserved")]
    ReservedMetadataKey { key: String },
    #[error("photo url {url:?} is not an absolute URL")]
    InvalidPhotoUrl { url: String },
    #[error("{field} has {count} entries, at most {max} allowed")]
    TooMany {
        field: &'static str,
        count: usize,
        max: usize,
    },
    #[error("dry weight {dry_grams} g exceeds wet weight {wet_grams} g")]
    DryHeavierThanWet {
        dry_grams: String,
        wet_grams: String,
    },
}

// ---------------------------------------------------------------------------------------------
// Validation (shared by decide and check_invariants)
// ---------------------------------------------------------------------------------------------

fn finite(field: &'static str, value: f64) -> Result<f64, PlantError> {
    if value.is_finite() {
        Ok(value)
    } else {
        Err(PlantError::NotFinite { field })
    }
}

fn percent(field: &'static str, value: f64) -> Result<(), PlantError> {
    if (0.0..=100.0).contains(&finite(field, value)?) {
        Ok(())
    } else {
        Err(PlantError::PercentOutOfRange {
            field,
            value: value.to_string(),
        })
    }
}

fn positive(field: &'static str, value: f64) -> Result<(), PlantError> {
    if finite(field, value)? > 0.0 {
        Ok(())
    } else {
        Err(PlantError::NotPositive {
            field,
            value: value.to_string(),
        })
    }
}

fn non_negative(field: &'static str, value: f64) -> Result<(), PlantError> {
    if finite(field, value)? >= 0.0 {
        Ok(())
    } else {
        Err(PlantError::Negative {
            field,
            value: value.to_string(),
        })
    }
}

fn positive_int(field: &'static str, value: u32) -> Result<(), PlantError> {
    if value > 0 {
        Ok(())
    } else {
        Err(PlantError::NotPositive {
            field,
            value: value.to_string(),
        })
    }
}

fn non_blank(field: &'static str, text: &str) -> Result<(), PlantError> {
    if text.trim().is_empty() {
        Err(PlantError::BlankText { field })
    } else {
        Ok(())
    }
}

fn at_most(field: &'static str, count: usize, max: usize) -> Result<(), PlantError> {
    if count > max {
        Err(PlantError::TooMany { field, count, max })
    } else {
        Ok(())
    }
}

fn check_metadata(field: &'static str, metadata: Option<&Metadata>) -> Result<(), PlantError> {
    let Some(metadata) = metadata else {
        return Ok(());
    };
    at_most(field, metadata.len(), METADATA_ENTRIES_MAX)?;
    if metadata.contains_key(UPCAST_FROM_KEY) {
        return Err(PlantError::ReservedMetadataKey {
            key: UPCAST_FROM_KEY.to_owned(),
        });
    }
    Ok(())
}

/// `scheme:rest` with an RFC 3986 scheme, a non-empty rest and no whitespace or controls.
pub fn is_absolute_url(url: &str) -> bool {
    let Some((scheme, rest)) = url.split_once(':') else {
        return false;
    };
    let mut scheme_chars = scheme.chars();
    scheme_chars.next().is_some_and(|c| c.is_ascii_alphabetic())
        && scheme_chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '+' | '-' | '.'))
        && !rest.is_empty()
        && !url.chars().any(|c| c.is_whitespace() || c.is_control())
}

fn check_genetics(g: &Genetics) -> Result<(), PlantError> {
    percent("genetics.thcPercentage", g.thc_percentage)?;
    percent("genetics.cbdPercentage", g.cbd_percentage)?;
    let total = g.thc_percentage + g.cbd_percentage;
    if total > 100.0 {
        return Err(PlantError::PotencyAbove100 {
            total: total.to_string(),
        });
    }
    Ok(())
}

fn check_location(l: &Location) -> Result<(), PlantError> {
    positive_int("location.row", l.row)?;
    positive_int("location.position", l.position)
}

fn check_conditions(c: &EnvironmentalConditions) -> Result<(), PlantError> {
    finite("environmentalConditions.temperature", c.temperature)?;
    percent("environmentalConditions.humidity", c.humidity)?;
    if let Some(vpd) = c.vpd {
        positive("environmentalConditions.vpd", vpd)?;
    }
    if let Some(co2) = c.co2 {
        positive("environmentalConditions.co2", co2)?;
    }
    if let Some(light) = c.light_intensity {
        non_negative("environmentalConditions.lightIntensity", light)?;
    }
    Ok(())
}

fn check_photos(photos: &[Photo]) -> Result<(), PlantError> {
    at_most("photos", photos.len(), PHOTOS_PER_STAGE_CHANGE_MAX)?;
    for photo in photos {
        if !is_absolute_url(&photo.url) {
            return Err(PlantError::InvalidPhotoUrl {
                url: photo.url.clone(),
            });
        }
        check_metadata("photos[].metadata", photo.metadata.as_ref())?;
    }
    Ok(())
}

/// Same unit: compare the amounts exactly; otherwise compare grams, allowing for the rounding
/// of the unit conversion.
fn dry_exceeds_wet(wet: Weight, dry: Weight) -> bool {
    if wet.unit == dry.unit {
        dry.amount > wet.amount
    } else {
        dry.in_grams() > wet.in_grams() * (1.0 + 1e-9)
    }
}

fn check_weights(wet: Weight, dry: Option<Weight>) -> Result<(), PlantError> {
    positive("harvestData.wetWeight.amount", wet.amount)?;
    if let Some(dry) = dry {
        positive("harvestData.dryWeight.amount", dry.amount)?;
        if dry_exceeds_wet(wet, dry) {
            return Err(PlantError::DryHeavierThanWet {
                dry_grams: dry.in_grams().to_string(),
                wet_grams: wet.in_grams().to_string(),
            });
        }
    }
    Ok(())
}

fn check_harvest_data(h: &HarvestData) -> Result<(), PlantError> {
    check_weights(h.wet_weight, h.dry_weight)?;
    at_most(
        "harvestData.sections",
        h.sections.len(),
        HARVEST_SECTIONS_MAX,
    )?;
    for section in &h.sections {
        positive(
            "harvestData.sections[].weight.amount",
            section.weight.amount,
        )?;
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Decide
// ---------------------------------------------------------------------------------------------

/// The created plant, if it is still living.
fn living(state: &PlantState) -> Result<&PlantRecord, PlantError> {
    let plant = state.plant.as_ref().ok_or(PlantError::NotCreated)?;
    if plant.stage.is_final() {
        return Err(PlantError::Final { stage: plant.stage });
    }
    Ok(plant)
}

fn decide_create(
    state: &PlantState,
    c: &CreatePlant,
    ctx: &DecideContext,
) -> Result<Vec<PlantEvent>, PlantError> {
    if let Some(existing) = &state.plant {
        return Err(PlantError::AlreadyCreated {
            plant_id: existing.plant_id,
        });
    }
    non_blank("genetics.strain", &c.genetics.strain)?;
    check_genetics(&c.genetics)?;
    non_blank("location.zone", &c.location.zone)?;
    check_location(&c.location)?;
    match c.source_id {
        Some(source) if source == c.plant_id => return Err(PlantError::SourceIsSelf),
        None if c.propagation_method == PropagationMethod::Clone => {
            return Err(PlantError::CloneWithoutSource)
        }
        _ => {}
    }
    let today = ctx.now.date_naive();
    if c.planned_harvest_date < today {
        return Err(PlantError::PlannedHarvestInPast {
            planned: c.planned_harvest_date,
            today,
        });
    }
    check_metadata("metadata", c.metadata.as_ref())?;
    Ok(vec![PlantCreated {
        plant_id: c.plant_id,
        batch_id: c.batch_id,
        genetics: c.genetics.clone(),
        location: c.location.clone(),
        propagation_method: c.propagation_method,
        source_id: c.source_id,
        planned_harvest_date: c.planned_harvest_date,
        metadata: c.metadata.clone(),
    }
    .into()])
}

fn decide_change_stage(
    state: &PlantState,
    c: &ChangePlantStage,
    ctx: &DecideContext,
) -> Result<Vec<PlantEvent>, PlantError> {
    let plant = living(state)?;
    if c.new_stage == PlantStage::Harvested {
        return Err(PlantError::UseHarvestCommand);
    }
    if !can_transition(plant.stage, c.new_stage) {
        return Err(PlantError::IllegalTransition {
            from: plant.stage,
            to: c.new_stage,
        });
    }
    if c.new_stage == PlantStage::Disposed
        && c.reason.as_deref().is_none_or(|r| r.trim().is_empty())
    {
        return Err(PlantError::DisposalNeedsReason);
    }
    if let Some(conditions) = &c.environmental_conditions {
        check_conditions(conditions)?;
    }
    if let Some(photos) = &c.photos {
        check_photos(photos)?;
    }
    Ok(vec![PlantStageChanged {
        plant_id: plant.plant_id,
        batch_id: plant.batch_id,
        previous_stage: plant.stage,
        new_stage: c.new_stage,
        stage_changed_at: ctx.now,
        stage_changed_by: c.changed_by,
        reason: c.reason.clone(),
        environmental_conditions: c.environmental_conditions.clone(),
        photos: c.photos.clone(),
    }
    .into()])
}

fn decide_harvest(
    state: &PlantState,
    c: &HarvestPlant,
    ctx: &DecideContext,
) -> Result<Vec<PlantEvent>, PlantError> {
    let plant = living(state)?;
    if !can_transition(plant.stage, PlantStage::Harvested) {
        return Err(PlantError::IllegalTransition {
            from: plant.stage,
            to: PlantStage::Harvested,
        });
    }
    check_harvest_data(&c.harvest_data)?;
    finite(
        "environmentalConditions.temperature",
        c.environmental_conditions.temperature,
    )?;
    percent(
        "environmentalConditions.humidity",
        c.environmental_conditions.humidity,
    )?;
    Ok(vec![PlantHarvested {
        plant_id: plant.plant_id,
        batch_id: plant.batch_id,
        harvest_id: c.harvest_id,
        harvested_at: ctx.now,
        harvested_by: c.harvested_by,
        harvest_data: c.harvest_data.clone(),
        environmental_conditions: c.environmental_conditions,
        notes: c.notes.clone(),
    }
    .into()])
}

fn unknown_version(event_type: &str, event_version: &str) -> CodecError {
    CodecError::UnknownVersion {
        event_type: event_type.to_owned(),
        event_version: event_version.to_owned(),
    }
}

impl Aggregate for Plant {
    const TYPE: &'static str = "Plant";

    type State = PlantState;
    type Command = PlantCommand;
    type Event = PlantEvent;
    type Error = PlantError;

    fn decide(
        state: &PlantState,
        command: &PlantCommand,
        ctx: &DecideContext,
    ) -> Result<Vec<PlantEvent>, PlantError> {
        match command {
            PlantCommand::Create(c) => decide_create(state, c, ctx),
            PlantCommand::ChangeStage(c) => decide_change_stage(state, c, ctx),
            PlantCommand::Harvest(c) => decide_harvest(state, c, ctx),
        }
    }

    fn apply(state: &mut PlantState, event: &PlantEvent) {
        match event {
            PlantEvent::PlantCreated(e) => {
                let initial_stage = e.propagation_method.initial_stage();
                state.plant = Some(PlantRecord {
                    plant_id: e.plant_id,
                    batch_id: e.batch_id,
                    genetics: e.genetics.clone(),
                    location: e.location.clone(),
                    propagation_method: e.propagation_method,
                    source_id: e.source_id,
                    planned_harvest_date: e.planned_harvest_date,
                    initial_stage,
                    stage: initial_stage,
                    last_stage_changed_at: None,
                    disposal_reason: None,
                    harvest: None,
                });
            }
            PlantEvent::PlantStageChanged(e) => {
                if let Some(plant) = state.plant.as_mut() {
                    plant.stage = e.new_stage;
                    plant.last_stage_changed_at = Some(e.stage_changed_at);
                    if e.new_stage == PlantStage::Disposed {
                        plant.disposal_reason = e.reason.clone();
                    }
                }
            }
            PlantEvent::PlantHarvested(e) => {
                if let Some(plant) = state.plant.as_mut() {
                    plant.stage = PlantStage::Harvested;
                    plant.harvest = Some(HarvestRecord {
                        harvest_id: e.harvest_id,
                        harvested_at: e.harvested_at,
                        harvested_by: e.harvested_by,
                        wet_weight: e.harvest_data.wet_weight,
                        dry_weight: e.harvest_data.dry_weight,
                        quality_grade: e.harvest_data.quality_grade,
                    });
                }
            }
        }
    }

    fn check_invariants(state: &PlantState) -> Result<(), String> {
        let Some(p) = &state.plant else {
            return Ok(());
        };
        if p.initial_stage != p.propagation_method.initial_stage() {
            return Err(format!(
                "initial stage {} does not match propagation method {:?}",
                p.initial_stage, p.propagation_method
            ));
        }
        if p.stage.rank() < p.initial_stage.rank() {
            return Err(format!(
                "stage {} is behind initial stage {}",
                p.stage, p.initial_stage
            ));
        }
        if !p.stage.is_new_stage_value() && p.stage != p.initial_stage {
            return Err(format!("stage {} entered by a change", p.stage));
        }
        if (p.stage == PlantStage::Harvested) != p.harvest.is_some() {
            return Err(format!(
                "stage {} disagrees with harvest {:?}",
                p.stage, p.harvest
            ));
        }
        if (p.stage == PlantStage::Disposed) != p.disposal_reason.is_some() {
            return Err(format!(
                "stage {} disagrees with disposal reason {:?}",
                p.stage, p.disposal_reason
            ));
        }
        check_genetics(&p.genetics).map_err(|e| e.to_string())?;
        check_location(&p.location).map_err(|e| e.to_string())?;
        if p.source_id == Some(p.plant_id) {
            return Err("plant is its own source".to_owned());
        }
        if p.propagation_method == PropagationMethod::Clone && p.source_id.is_none() {
            return Err("clone without source".to_owned());
        }
        if let Some(h) = &p.harvest {
            check_weights(h.wet_weight, h.dry_weight).map_err(|e| e.to_string())?;
        }
        Ok(())
    }

    /// Reads `plant.created` 1.0 (the legacy shape, upcast to 1.1) and 1.1,
    /// `plant.stage_changed` 1.0 and `plant.harvested` 1.0; refuses every other version.
    fn decode_event(
        event_type: &str,
        event_version: &str,
        payload: &[u8],
    ) -> Result<PlantEvent, CodecError> {
        match (event_type, event_version) {
            ("plant.created", PLANT_CREATED_V1_0_VERSION) => {
                let PlantEventV1_0::PlantCreated(legacy) = codec::decode(payload)?;
                Ok(PlantEvent::PlantCreated(legacy.upcast()))
            }
            ("plant.created", PLANT_CREATED_VERSION)
            | ("plant.stage_changed", PLANT_EVENT_VERSION)
            | ("plant.harvested", PLANT_EVENT_VERSION) => {
                let event: PlantEvent = codec::decode(payload)?;
                if event.event_type() != event_type {
                    return Err(CodecError::Mismatch(format!(
                        "record says {event_type}, payload decodes as {}",
                        event.event_type()
                    )));
                }
                Ok(event)
            }
            _ => Err(unknown_version(event_type, event_version)),
        }
    }
}

/// The next stage a growing plant moves to by a stage change: the first later stage that a
/// change may enter, short of `harvested` and `disposed`. `None` from `ready` on.
pub fn next_growth_stage(stage: PlantStage) -> Option<PlantStage> {
    PlantStage::ALL.into_iter().find(|&to| {
        to.rank() > stage.rank()
            && to.is_new_stage_value()
            && !matches!(to, PlantStage::Harvested | PlantStage::Disposed)
    })
}
