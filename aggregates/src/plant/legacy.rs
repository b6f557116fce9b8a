//! `plant.created` version 1.0 and its upcast to 1.1 (seed section 11, "SCHEMA EVOLUTION").
//!
//! Version 1.0 had three fields, all plain: `plantId` (uuid), `strain` (string) and
//! `location` (string). Events of that shape were stored by 1.0-era writers as
//! `codec::encode(&PlantEventV1_0::PlantCreated(PlantCreatedV1_0 { .. }))`: the enum variant
//! index 0 (the same index `PlantEvent::PlantCreated` has today) followed by the three fields.
//! [`crate::plant::Plant`]'s `decode_event` reads that shape when the record says version
//! "1.0" and upcasts it with [`PlantCreatedV1_0::upcast`].
//!
//! # The upcast, field by field
//! | 1.1 field                     | value for a 1.0 event                                    |
//! |-------------------------------|----------------------------------------------------------|
//! | `plantId`                     | `plantId`                                                |
//! | `genetics.strain`             | `strain`                                                 |
//! | `genetics.type`               | `"hybrid"` (the seed's `EventMigrator` default)          |
//! | `genetics.id`                 | nil UUID: 1.0 referenced no genetics record              |
//! | `genetics.thcPercentage`      | `0`: not measured in 1.0                                 |
//! | `genetics.cbdPercentage`      | `0`: not measured in 1.0                                 |
//! | `genetics.lineage`            | absent                                                   |
//! | `batchId`                     | nil UUID: 1.0 knew no batches                            |
//! | `location.zone`               | the 1.0 `location` string, verbatim                      |
//! | `location.facilityId`         | nil UUID: not recorded                                   |
//! | `location.row`, `.position`   | `1`: not recorded (1.1 needs a positive integer)         |
//! | `propagationMethod`           | `"seed"`: the seed's handler starts plants as seedlings  |
//! | `sourceId`                    | absent                                                   |
//! | `plannedHarvestDate`          | `1970-01-01`: not planned                                |
//! | `metadata`                    | `{"upcastFrom": "1.0"}`: marks the placeholders above    |
//!
//! The placeholders satisfy the 1.1 contract's types and ranges, so an upcast event can be
//! published and applied like any other; a consumer that must tell a placeholder from a real
//! value looks for `metadata.upcastFrom`. Nothing is invented beyond the table: the strain and
//! the location text survive unchanged. The upcast bypasses `decide` (the event is a fact):
//! an empty legacy strain or location is kept as it is.

use super::events::{Genetics, GeneticsType, Location, Metadata, PlantCreated, PropagationMethod};
use chrono::NaiveDate;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// The contract version of the legacy shape.
pub const PLANT_CREATED_V1_0_VERSION: &str = "1.0";
/// The metadata key the upcast adds, with the version it came from as value.
pub const UPCAST_FROM_KEY: &str = "upcastFrom";

/// `plant.created` version 1.0: strain and location as plain strings (seed section 11,
/// `PlantCreatedEventV1Schema.payload`). Its serde JSON form is the 1.0 payload.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PlantCreatedV1_0 {
    pub plant_id: Uuid,
    pub strain: String,
    pub location: String,
}

/// The event enum as a 1.0-era writer stored it: `plant.created` at variant index 0. Only
/// that variant is needed to read 1.0 `plant.created` records; the enum is kept so the stored
/// bytes (a variant index, then the struct) decode with the same layout they were written in.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum PlantEventV1_0 {
    PlantCreated(PlantCreatedV1_0),
}

/// `1970-01-01`: the placeholder `plannedHarvestDate` of an upcast 1.0 event.
pub fn not_planned_date() -> NaiveDate {
    NaiveDate::from_ymd_opt(1970, 1, 1).expect("1970-01-01 is a valid date")
}

impl PlantCreatedV1_0 {
    /// The 1.1 form of this 1.0 event, per the table in the module docs.
    pub fn upcast(self) -> PlantCreated {
        let mut metadata = Metadata::new();
        metadata.insert(
            UPCAST_FROM_KEY.to_owned(),
            PLANT_CREATED_V1_0_VERSION.to_owned(),
        );
        PlantCreated {
            plant_id: self.plant_id,
            batch_id: Uuid::nil(),
            genetics: Genetics {
                id: Uuid::nil(),
                strain: self.strain,
                genetics_type: GeneticsType::Hybrid,
                thc_percentage: 0.0,
                cbd_percentage: 0.0,
                lineage: None,
            },
            location: Location {
                facility_id: Uuid::nil(),
                zone: self.location,
                row: 1,
                position: 1,
            },
            propagation_method: PropagationMethod::Seed,
            source_id: None,
            planned_harvest_date: not_planned_date(),
            metadata: Some(metadata),
        }
    }
}

impl From<PlantCreatedV1_0> for PlantCreated {
    fn from(legacy: PlantCreatedV1_0) -> Self {
        legacy.upcast()
    }
}
