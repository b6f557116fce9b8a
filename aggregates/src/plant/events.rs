//! The event payloads of `cultivation.plants.v1` (seed section 4.1), in the seed's camelCase.
//!
//! Each payload struct's serde JSON form is the published payload. Physical measurements are
//! `f64` (the seed's `z.number()`); see the module docs of [`crate::plant`] for why.

use chrono::{DateTime, NaiveDate, Utc};
use evershard_model::{from_variants, json_payload, DomainEvent};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::fmt;
use uuid::Uuid;

/// The outbound topic of every plant event.
pub const TOPIC: &str = "cultivation.plants.v1";
/// The current contract version of `plant.created` (genetics object, structured location).
pub const PLANT_CREATED_VERSION: &str = "1.1";
/// The contract version of `plant.stage_changed` and `plant.harvested`.
pub const PLANT_EVENT_VERSION: &str = "1.0";

/// Free-form metadata (`z.record(z.string(), z.unknown())` in the seed). Values are strings:
/// an arbitrary JSON value is not storable in codec format 1 (bincode: snapshots, older
/// journal records), so a caller with a structured value stores it as JSON text.
pub type Metadata = BTreeMap<String, String>;

/// A plant's growth stage, in the seed's order (`previousStage` of `plant.stage_changed`).
///
/// The declaration order IS the lifecycle order ([`PlantStage::rank`]) and the stored index
/// in codec format 1 (snapshots, older journal records): append-only, never reorder. `cloning` and `mother_plant` occur only as a
/// previous stage: no stage change enters them (the seed's `newStage` leaves them out).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PlantStage {
    Seedling,
    Cloning,
    Vegetative,
    MotherPlant,
    PreFlower,
    Flowering,
    Drying,
    Curing,
    Ready,
    Harvested,
    Disposed,
}

impl PlantStage {
    /// Every stage, in lifecycle order.
    pub const ALL: [PlantStage; 11] = [
        PlantStage::Seedling,
        PlantStage::Cloning,
        PlantStage::Vegetative,
        PlantStage::MotherPlant,
        PlantStage::PreFlower,
        PlantStage::Flowering,
        PlantStage::Drying,
        PlantStage::Curing,
        PlantStage::Ready,
        PlantStage::Harvested,
        PlantStage::Disposed,
    ];

    /// Position in the seed's order, from 0.
    pub fn rank(self) -> u8 {
        self as u8
    }

    pub fn as_str(self) -> &'static str {
        match self {
            PlantStage::Seedling => "seedling",
            PlantStage::Cloning => "cloning",
            PlantStage::Vegetative => "vegetative",
            PlantStage::MotherPlant => "mother_plant",
            PlantStage::PreFlower => "pre_flower",
            PlantStage::Flowering => "flowering",
            PlantStage::Drying => "drying",
            PlantStage::Curing => "curing",
            PlantStage::Ready => "ready",
            PlantStage::Harvested => "harvested",
            PlantStage::Disposed => "disposed",
        }
    }

    /// Harvested and disposed are final.
    pub fn is_final(self) -> bool {
        matches!(self, PlantStage::Harvested | PlantStage::Disposed)
    }

    /// Whether the seed allows this stage as a `newStage` (all but cloning and mother_plant).
    pub fn is_new_stage_value(self) -> bool {
        !matches!(self, PlantStage::Cloning | PlantStage::MotherPlant)
    }
}

impl fmt::Display for PlantStage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// `genetics.type`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum GeneticsType {
    Indica,
    Sativa,
    Hybrid,
}

/// `genetics.lineage`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Lineage {
    pub mother: Option<String>,
    pub father: Option<String>,
}

/// `genetics` of `plant.created` 1.1.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Genetics {
    pub id: Uuid,
    pub strain: String,
    #[serde(rename = "type")]
    pub genetics_type: GeneticsType,
    /// 0..=100.
    pub thc_percentage: f64,
    /// 0..=100.
    pub cbd_percentage: f64,
    pub lineage: Option<Lineage>,
}

/// `location` of `plant.created` 1.1: where in a facility the plant stands.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Location {
    pub facility_id: Uuid,
    pub zone: String,
    /// > 0.
    pub row: u32,
    /// > 0.
    pub position: u32,
}

/// `propagationMethod`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PropagationMethod {
    Seed,
    Clone,
    TissueCulture,
}

impl PropagationMethod {
    pub const ALL: [PropagationMethod; 3] = [
        PropagationMethod::Seed,
        PropagationMethod::Clone,
        PropagationMethod::TissueCulture,
    ];

    /// The stage a plant starts in: a seed starts as a seedling (the seed's handler), a clone
    /// or a tissue-culture plantlet starts in `cloning`.
    pub fn initial_stage(self) -> PlantStage {
        match self {
            PropagationMethod::Seed => PlantStage::Seedling,
            PropagationMethod::Clone | PropagationMethod::TissueCulture => PlantStage::Cloning,
        }
    }
}

/// `plant.created`, version 1.1 (seed section 4.1.1).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PlantCreated {
    pub plant_id: Uuid,
    pub batch_id: Uuid,
    pub genetics: Genetics,
    pub location: Location,
    pub propagation_method: PropagationMethod,
    /// The parent plant of a clone.
    pub source_id: Option<Uuid>,
    /// `z.string().date()`: published as `YYYY-MM-DD`.
    pub planned_harvest_date: NaiveDate,
    pub metadata: Option<Metadata>,
}

/// `environmentalConditions` of `plant.stage_changed`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct EnvironmentalConditions {
    /// Any finite value (the seed gives no unit or range).
    pub temperature: f64,
    /// 0..=100 (percent relative humidity).
    pub humidity: f64,
    /// > 0.
    pub vpd: Option<f64>,
    /// > 0.
    pub co2: Option<f64>,
    /// >= 0.
    pub light_intensity: Option<f64>,
}

/// `photos[].type`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PhotoType {
    Overview,
    CloseUp,
    Microscopic,
}

/// One entry of `photos`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Photo {
    pub id: Uuid,
    /// An absolute URL (`scheme:rest`, no whitespace).
    pub url: String,
    #[serde(rename = "type")]
    pub photo_type: PhotoType,
    pub metadata: Option<Metadata>,
}

/// `plant.stage_changed`, version 1.0 (seed section 4.1.2).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PlantStageChanged {
    pub plant_id: Uuid,
    pub batch_id: Uuid,
    pub previous_stage: PlantStage,
    /// Never `cloning` or `mother_plant`, never `harvested` (that is `plant.harvested`).
    pub new_stage: PlantStage,
    #[serde(with = "evershard_model::codec::timestamp")]
    pub stage_changed_at: DateTime<Utc>,
    pub stage_changed_by: Uuid,
    pub reason: Option<String>,
    pub environmental_conditions: Option<EnvironmentalConditions>,
    pub photos: Option<Vec<Photo>>,
}

/// A weight unit of the harvest.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum WeightUnit {
    G,
    Kg,
    Oz,
    Lb,
}

impl WeightUnit {
    pub const ALL: [WeightUnit; 4] = [
        WeightUnit::G,
        WeightUnit::Kg,
        WeightUnit::Oz,
        WeightUnit::Lb,
    ];

    /// Grams per unit (avoirdupois ounce and pound).
    pub fn grams(self) -> f64 {
        match self {
            WeightUnit::G => 1.0,
            WeightUnit::Kg => 1000.0,
            WeightUnit::Oz => 28.349_523_125,
            WeightUnit::Lb => 453.592_37,
        }
    }
}

/// `{ amount, unit }`; the amount is > 0.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Weight {
    pub amount: f64,
    pub unit: WeightUnit,
}

impl Weight {
    pub fn in_grams(self) -> f64 {
        self.amount * self.unit.grams()
    }
}

/// `harvestData.qualityGrade`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum QualityGrade {
    #[serde(rename = "A+")]
    APlus,
    #[serde(rename = "A")]
    A,
    #[serde(rename = "B+")]
    BPlus,
    #[serde(rename = "B")]
    B,
    #[serde(rename = "C")]
    C,
    #[serde(rename = "reject")]
    Reject,
}

impl QualityGrade {
    pub const ALL: [QualityGrade; 6] = [
        QualityGrade::APlus,
        QualityGrade::A,
        QualityGrade::BPlus,
        QualityGrade::B,
        QualityGrade::C,
        QualityGrade::Reject,
    ];
}

/// `harvestData.sections[].type`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SectionType {
    Colas,
    Trim,
    Shake,
    Popcorn,
}

impl SectionType {
    pub const ALL: [SectionType; 4] = [
        SectionType::Colas,
        SectionType::Trim,
        SectionType::Shake,
        SectionType::Popcorn,
    ];
}

/// One entry of `harvestData.sections`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct HarvestSection {
    #[serde(rename = "type")]
    pub section_type: SectionType,
    pub weight: Weight,
    /// The container or batch the section goes to.
    pub destination_id: Uuid,
}

/// `harvestData`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct HarvestData {
    pub wet_weight: Weight,
    pub dry_weight: Option<Weight>,
    pub quality_grade: Option<QualityGrade>,
    pub sections: Vec<HarvestSection>,
}

/// `environmentalConditions` of `plant.harvested` (both fields required there).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct HarvestConditions {
    pub temperature: f64,
    /// 0..=100.
    pub humidity: f64,
}

/// `plant.harvested`, version 1.0 (seed section 4.1.3).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PlantHarvested {
    pub plant_id: Uuid,
    pub batch_id: Uuid,
    pub harvest_id: Uuid,
    #[serde(with = "evershard_model::codec::timestamp")]
    pub harvested_at: DateTime<Utc>,
    pub harvested_by: Uuid,
    pub harvest_data: HarvestData,
    pub environmental_conditions: HarvestConditions,
    pub notes: Option<String>,
}

/// Every plant event. Stored with the codec: variants are append-only (the 1.0-era journal
/// already holds `PlantCreated` at index 0 in codec format 1, which is positional).
///
/// The outbound JSON is the camelCase payload of the seed with absent optional fields left
/// out (not `null`): [`json_without_nulls`], and [`plant_created_json`] for `plant.created`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, DomainEvent)]
#[event(topic = TOPIC, version = PLANT_EVENT_VERSION, payload_json = json_without_nulls)]
pub enum PlantEvent {
    #[event(name = "plant.created", version = PLANT_CREATED_VERSION, payload_json = plant_created_json)]
    PlantCreated(PlantCreated),
    #[event(name = "plant.stage_changed")]
    PlantStageChanged(PlantStageChanged),
    #[event(name = "plant.harvested")]
    PlantHarvested(PlantHarvested),
}

from_variants!(PlantEvent: PlantCreated, PlantStageChanged, PlantHarvested);

/// Removes every `null` member of every object, recursively. The seed's Zod schemas mark
/// optional fields `.optional()`, which accepts an absent key but rejects `null`; the stored
/// form writes `None` as nil (snapshots, in positional bincode, cannot read a skipped field),
/// so absence is produced here, at the JSON edge, rather than with `skip_serializing_if` on
/// the types.
pub fn strip_nulls(value: &mut serde_json::Value) {
    match value {
        serde_json::Value::Object(map) => {
            map.retain(|_, v| !v.is_null());
            map.values_mut().for_each(strip_nulls);
        }
        serde_json::Value::Array(items) => items.iter_mut().for_each(strip_nulls),
        _ => {}
    }
}

/// The outbound JSON of a plant event payload: [`evershard_model::json_payload`] without
/// `null` members ([`strip_nulls`]).
pub fn json_without_nulls<T: Serialize>(payload: &T) -> serde_json::Value {
    // Finite floats are guaranteed by decide; a non-finite float serializes as null in
    // serde_json rather than failing, so this cannot panic on any stored event either.
    let mut json = json_payload(payload);
    strip_nulls(&mut json);
    json
}

/// The outbound JSON of `plant.created` 1.1: [`json_without_nulls`] plus the top-level
/// `strain`.
pub fn plant_created_json(created: &PlantCreated) -> serde_json::Value {
    let mut json = json_without_nulls(created);
    // Section 11's 1.1 schema still requires the deprecated top-level `strain`
    // (= genetics.strain). Publishing it too costs nothing: section 4.1's Zod
    // object ignores unknown keys, and 1.1 consumers written from section 11 find it.
    json["strain"] = serde_json::Value::String(created.genetics.strain.clone());
    json
}
