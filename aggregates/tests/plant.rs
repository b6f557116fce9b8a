//! Plant: proves every rule of `aggregates/src/plant/` except schema evolution (that is
//! `plant_schema_evolution.rs`).
//!
//! How:
//! - given/when/then (`evershard_model::testing::given`) for every command, accepted and
//!   rejected with each rejection reason (every Zod range of seed section 4.1 included), at the
//!   fixed clock 2026-01-01T00:00:00Z;
//! - the lifecycle table `can_transition`, all 121 cells, against the table of the module docs
//!   written out independently here;
//! - `check_invariants` catches each listed invariant when a state is broken by hand;
//! - the Zod contract of every event (`assert_contract`, camelCase names and JSON types written
//!   out from the seed), with every optional field present, and absent (then the key is left
//!   out: Zod's `.optional()` refuses `null`); event type, version and topic;
//! - JSON (serde_json) and journal (`codec`, `encode_event`/`decode_event`) round trips of every
//!   event, every command and the state;
//! - a proptest (fixed seed, 128 cases) of random command sequences, biased toward plausible
//!   ones through the demo `Workload` and mixed with arbitrary ones (out-of-range, NaN and
//!   infinite numbers included): invariants hold, a rejection changes nothing, replay
//!   rebuilds the live state, and a codec snapshot after any prefix plus the remaining events
//!   rebuilds it too;
//! - the demo workload walks plants through every stage to harvest and to disposal.

use chrono::{DateTime, Duration, NaiveDate, Utc};
use evershard_aggregates::plant::*;
use evershard_model::testing::{
    assert_contract, assert_json_and_codec_round_trip, assert_replay_and_snapshots_agree,
    assert_stored_event_round_trip, fixed_now, given, given_no_events,
};
use evershard_model::{Aggregate, DecideContext, DemoRng, DomainEvent, Workload};
use proptest::prelude::*;
use proptest::test_runner::{Config as ProptestConfig, RngSeed};
use std::collections::{BTreeMap, BTreeSet};
use uuid::Uuid;

const PLANT: Uuid = Uuid::from_u128(0x91);
const BATCH: Uuid = Uuid::from_u128(0x92);
const GENETICS: Uuid = Uuid::from_u128(0x93);
const FACILITY: Uuid = Uuid::from_u128(0x94);
const MOTHER: Uuid = Uuid::from_u128(0x95);
const USER: Uuid = Uuid::from_u128(0x96);
const HARVEST: Uuid = Uuid::from_u128(0x97);
const DESTINATION: Uuid = Uuid::from_u128(0x98);
const PHOTO: Uuid = Uuid::from_u128(0x99);

use PlantStage::*;

fn now() -> DateTime<Utc> {
    fixed_now()
}

fn date(y: i32, m: u32, d: u32) -> NaiveDate {
    NaiveDate::from_ymd_opt(y, m, d).unwrap()
}

fn genetics() -> Genetics {
    Genetics {
        id: GENETICS,
        strain: "Northern Lights".to_owned(),
        genetics_type: GeneticsType::Indica,
        thc_percentage: 18.5,
        cbd_percentage: 0.5,
        lineage: Some(Lineage {
            mother: Some("Afghani".to_owned()),
            father: Some("Thai".to_owned()),
        }),
    }
}

fn location() -> Location {
    Location {
        facility_id: FACILITY,
        zone: "A".to_owned(),
        row: 3,
        position: 7,
    }
}

fn create_command() -> CreatePlant {
    CreatePlant {
        plant_id: PLANT,
        batch_id: BATCH,
        genetics: genetics(),
        location: location(),
        propagation_method: PropagationMethod::Seed,
        source_id: None,
        planned_harvest_date: date(2026, 4, 1),
        metadata: None,
    }
}

fn created_from(c: CreatePlant) -> PlantEvent {
    PlantCreated {
        plant_id: c.plant_id,
        batch_id: c.batch_id,
        genetics: c.genetics,
        location: c.location,
        propagation_method: c.propagation_method,
        source_id: c.source_id,
        planned_harvest_date: c.planned_harvest_date,
        metadata: c.metadata,
    }
    .into()
}

fn created() -> PlantEvent {
    created_from(create_command())
}

fn created_clone() -> PlantEvent {
    created_from(CreatePlant {
        propagation_method: PropagationMethod::Clone,
        source_id: Some(MOTHER),
        ..create_command()
    })
}

fn change(to: PlantStage) -> ChangePlantStage {
    ChangePlantStage {
        new_stage: to,
        changed_by: USER,
        reason: None,
        environmental_conditions: None,
        photos: None,
    }
}

fn dispose(reason: &str) -> ChangePlantStage {
    ChangePlantStage {
        reason: Some(reason.to_owned()),
        ..change(Disposed)
    }
}

fn changed(from: PlantStage, to: PlantStage) -> PlantEvent {
    PlantStageChanged {
        plant_id: PLANT,
        batch_id: BATCH,
        previous_stage: from,
        new_stage: to,
        stage_changed_at: now(),
        stage_changed_by: USER,
        reason: None,
        environmental_conditions: None,
        photos: None,
    }
    .into()
}

fn disposed_from(from: PlantStage) -> PlantEvent {
    match changed(from, Disposed) {
        PlantEvent::PlantStageChanged(mut e) => {
            e.reason = Some("mold".to_owned());
            e.into()
        }
        _ => unreachable!(),
    }
}

fn conditions() -> EnvironmentalConditions {
    EnvironmentalConditions {
        temperature: 24.5,
        humidity: 55.0,
        vpd: Some(1.2),
        co2: Some(800.0),
        light_intensity: Some(0.0),
    }
}

fn photo() -> Photo {
    let mut metadata = BTreeMap::new();
    metadata.insert("camera".to_owned(), "microscope-2".to_owned());
    Photo {
        id: PHOTO,
        url: "https://photos.example/p1.jpg".to_owned(),
        photo_type: PhotoType::CloseUp,
        metadata: Some(metadata),
    }
}

fn harvest_data() -> HarvestData {
    HarvestData {
        wet_weight: Weight {
            amount: 1200.0,
            unit: WeightUnit::G,
        },
        dry_weight: Some(Weight {
            amount: 300.0,
            unit: WeightUnit::G,
        }),
        quality_grade: Some(QualityGrade::APlus),
        sections: vec![
            HarvestSection {
                section_type: SectionType::Colas,
                weight: Weight {
                    amount: 250.0,
                    unit: WeightUnit::G,
                },
                destination_id: DESTINATION,
            },
            HarvestSection {
                section_type: SectionType::Trim,
                weight: Weight {
                    amount: 50.0,
                    unit: WeightUnit::G,
                },
                destination_id: DESTINATION,
            },
        ],
    }
}

fn harvest_command() -> HarvestPlant {
    HarvestPlant {
        harvest_id: HARVEST,
        harvested_by: USER,
        harvest_data: harvest_data(),
        environmental_conditions: HarvestConditions {
            temperature: 21.5,
            humidity: 45.0,
        },
        notes: Some("first harvest".to_owned()),
    }
}

fn harvested() -> PlantEvent {
    PlantHarvested {
        plant_id: PLANT,
        batch_id: BATCH,
        harvest_id: HARVEST,
        harvested_at: now(),
        harvested_by: USER,
        harvest_data: harvest_data(),
        environmental_conditions: HarvestConditions {
            temperature: 21.5,
            humidity: 45.0,
        },
        notes: Some("first harvest".to_owned()),
    }
    .into()
}

/// Past events that leave a plant created from seed (or as a clone) in `stage`.
fn history_to(stage: PlantStage) -> Vec<PlantEvent> {
    match stage {
        Seedling => vec![created()],
        Cloning => vec![created_clone()],
        MotherPlant => panic!("no event sequence reaches mother_plant"),
        Harvested => vec![created(), changed(Seedling, Flowering), harvested()],
        Disposed => vec![created(), disposed_from(Seedling)],
        other => vec![created(), changed(Seedling, other)],
    }
}

const LIVING_REACHABLE: [PlantStage; 8] = [
    Seedling, Cloning, Vegetative, PreFlower, Flowering, Drying, Curing, Ready,
];

// ---------------------------------------------------------------------------------------------
// Create
// ---------------------------------------------------------------------------------------------

#[test]
fn create_from_seed_starts_as_a_seedling() {
    let state = given_no_events::<Plant>()
        .when(create_command())
        .then_expect_events([created()]);
    let plant = state.plant.unwrap();
    assert_eq!((plant.initial_stage, plant.stage), (Seedling, Seedling));
    assert_eq!(plant.genetics, genetics());
}

#[test]
fn create_from_clone_or_tissue_culture_starts_in_cloning() {
    let clone = CreatePlant {
        propagation_method: PropagationMethod::Clone,
        source_id: Some(MOTHER),
        ..create_command()
    };
    let state = given_no_events::<Plant>()
        .when(clone)
        .then_expect_events([created_clone()]);
    assert_eq!(state.plant.unwrap().stage, Cloning);

    let tissue = CreatePlant {
        propagation_method: PropagationMethod::TissueCulture,
        ..create_command()
    };
    let state = given_no_events::<Plant>()
        .when(tissue.clone())
        .then_expect_events([created_from(tissue)]);
    assert_eq!(state.plant.unwrap().stage, Cloning);
}

#[test]
fn create_accepts_boundary_values_and_metadata() {
    let mut metadata = BTreeMap::new();
    metadata.insert("supplier".to_owned(), "{\"name\":\"Seeds Ltd\"}".to_owned());
    let command = CreatePlant {
        genetics: Genetics {
            thc_percentage: 100.0,
            cbd_percentage: 0.0,
            lineage: None,
            ..genetics()
        },
        location: Location {
            row: 1,
            position: 1,
            ..location()
        },
        planned_harvest_date: now().date_naive(),
        metadata: Some(metadata),
        ..create_command()
    };
    given_no_events::<Plant>()
        .when(command.clone())
        .then_expect_events([created_from(command)]);
}

#[test]
fn create_twice_is_rejected() {
    given::<Plant>([created()])
        .when(create_command())
        .then_expect_error(PlantError::AlreadyCreated { plant_id: PLANT });
}

#[test]
fn create_rejects_blank_strain_or_zone() {
    let command = CreatePlant {
        genetics: Genetics {
            strain: " ".into(),
            ..genetics()
        },
        ..create_command()
    };
    given_no_events::<Plant>()
        .when(command)
        .then_expect_error(PlantError::BlankText {
            field: "genetics.strain",
        });
    let command = CreatePlant {
        location: Location {
            zone: String::new(),
            ..location()
        },
        ..create_command()
    };
    given_no_events::<Plant>()
        .when(command)
        .then_expect_error(PlantError::BlankText {
            field: "location.zone",
        });
}

#[test]
fn create_rejects_potency_out_of_range() {
    for (thc, value) in [(-0.1, "-0.1"), (100.1, "100.1")] {
        let command = CreatePlant {
            genetics: Genetics {
                thc_percentage: thc,
                cbd_percentage: 0.0,
                ..genetics()
            },
            ..create_command()
        };
        given_no_events::<Plant>()
            .when(command)
            .then_expect_error(PlantError::PercentOutOfRange {
                field: "genetics.thcPercentage",
                value: value.to_owned(),
            });
    }
    let command = CreatePlant {
        genetics: Genetics {
            cbd_percentage: 101.0,
            ..genetics()
        },
        ..create_command()
    };
    given_no_events::<Plant>()
        .when(command)
        .then_expect_error(PlantError::PercentOutOfRange {
            field: "genetics.cbdPercentage",
            value: "101".to_owned(),
        });
}

#[test]
fn create_rejects_non_finite_numbers() {
    for bad in [f64::NAN, f64::INFINITY, f64::NEG_INFINITY] {
        let command = CreatePlant {
            genetics: Genetics {
                thc_percentage: bad,
                ..genetics()
            },
            ..create_command()
        };
        given_no_events::<Plant>()
            .when(command)
            .then_expect_error(PlantError::NotFinite {
                field: "genetics.thcPercentage",
            });
    }
}

#[test]
fn create_rejects_thc_and_cbd_above_100_together() {
    let command = CreatePlant {
        genetics: Genetics {
            thc_percentage: 60.0,
            cbd_percentage: 40.5,
            ..genetics()
        },
        ..create_command()
    };
    given_no_events::<Plant>()
        .when(command)
        .then_expect_error(PlantError::PotencyAbove100 {
            total: "100.5".to_owned(),
        });
}

#[test]
fn create_rejects_a_zero_row_or_position() {
    let command = CreatePlant {
        location: Location {
            row: 0,
            ..location()
        },
        ..create_command()
    };
    given_no_events::<Plant>()
        .when(command)
        .then_expect_error(PlantError::NotPositive {
            field: "location.row",
            value: "0".to_owned(),
        });
    let command = CreatePlant {
        location: Location {
            position: 0,
            ..location()
        },
        ..create_command()
    };
    given_no_events::<Plant>()
        .when(command)
        .then_expect_error(PlantError::NotPositive {
            field: "location.position",
            value: "0".to_owned(),
        });
}

#[test]
fn create_rejects_a_clone_without_source_and_a_plant_that_is_its_own_source() {
    let command = CreatePlant {
        propagation_method: PropagationMethod::Clone,
        ..create_command()
    };
    given_no_events::<Plant>()
        .when(command)
        .then_expect_error(PlantError::CloneWithoutSource);
    for method in PropagationMethod::ALL {
        let command = CreatePlant {
            propagation_method: method,
            source_id: Some(PLANT),
            ..create_command()
        };
        given_no_events::<Plant>()
            .when(command)
            .then_expect_error(PlantError::SourceIsSelf);
    }
}

#[test]
fn create_rejects_a_planned_harvest_in_the_past() {
    let command = CreatePlant {
        planned_harvest_date: date(2025, 12, 31),
        ..create_command()
    };
    given_no_events::<Plant>()
        .when(command)
        .then_expect_error(PlantError::PlannedHarvestInPast {
            planned: date(2025, 12, 31),
            today: date(2026, 1, 1),
        });
}

#[test]
fn create_rejects_bad_metadata() {
    let mut reserved = BTreeMap::new();
    reserved.insert(UPCAST_FROM_KEY.to_owned(), "1.0".to_owned());
    let command = CreatePlant {
        metadata: Some(reserved),
        ..create_command()
    };
    given_no_events::<Plant>()
        .when(command)
        .then_expect_error(PlantError::ReservedMetadataKey {
            key: "upcastFrom".to_owned(),
        });

    let many: BTreeMap<String, String> = (0..=METADATA_ENTRIES_MAX)
        .map(|i| (format!("k{i}"), "v".to_owned()))
        .collect();
    let command = CreatePlant {
        metadata: Some(many),
        ..create_command()
    };
    given_no_events::<Plant>()
        .when(command)
        .then_expect_error(PlantError::TooMany {
            field: "metadata",
            count: METADATA_ENTRIES_MAX + 1,
            max: METADATA_ENTRIES_MAX,
        });
}

// ---------------------------------------------------------------------------------------------
// Change stage
// ---------------------------------------------------------------------------------------------

#[test]
fn stage_change_moves_forward_and_records_the_facts() {
    let command = ChangePlantStage {
        reason: Some("roots established".to_owned()),
        environmental_conditions: Some(conditions()),
        photos: Some(vec![photo()]),
        ..change(Vegetative)
    };
    let later = now() + Duration::days(14);
    let state = given::<Plant>([created()])
        .at(later)
        .when(command)
        .then_expect_events([PlantStageChanged {
            plant_id: PLANT,
            batch_id: BATCH,
            previous_stage: Seedling,
            new_stage: Vegetative,
            stage_changed_at: later,
            stage_changed_by: USER,
            reason: Some("roots established".to_owned()),
            environmental_conditions: Some(conditions()),
            photos: Some(vec![photo()]),
        }
        .into()]);
    let plant = state.plant.unwrap();
    assert_eq!(
        (plant.stage, plant.last_stage_changed_at),
        (Vegetative, Some(later))
    );
}

#[test]
fn stage_change_follows_the_seed_order_one_step_at_a_time() {
    let path = [
        Seedling, Vegetative, PreFlower, Flowering, Drying, Curing, Ready,
    ];
    let mut history = vec![created()];
    for pair in path.windows(2) {
        given::<Plant>(history.clone())
            .when(change(pair[1]))
            .then_expect_events([changed(pair[0], pair[1])]);
        history.push(changed(pair[0], pair[1]));
    }
    let mut history = vec![created_clone()];
    for pair in [Cloning, Vegetative, PreFlower].windows(2) {
        given::<Plant>(history.clone())
            .when(change(pair[1]))
            .then_expect_events([changed(pair[0], pair[1])]);
        history.push(changed(pair[0], pair[1]));
    }
}

#[test]
fn stage_change_may_skip_stages_forward() {
    given::<Plant>([created()])
        .when(change(Flowering))
        .then_expect_events([changed(Seedling, Flowering)]);
    given::<Plant>([created_clone()])
        .when(change(Ready))
        .then_expect_events([changed(Cloning, Ready)]);
}

#[test]
fn stage_change_backward_or_to_the_same_stage_is_rejected() {
    for (from, to) in [
        (Flowering, Vegetative),
        (Vegetative, Seedling),
        (Ready, Drying),
        (Curing, Curing),
    ] {
        given::<Plant>(history_to(from))
            .when(change(to))
            .then_expect_error(PlantError::IllegalTransition { from, to });
    }
}

#[test]
fn cloning_and_mother_plant_are_never_a_new_stage() {
    for to in [Cloning, MotherPlant] {
        given::<Plant>([created()])
            .when(change(to))
            .then_expect_error(PlantError::IllegalTransition { from: Seedling, to });
    }
}

#[test]
fn stage_change_to_harvested_is_refused() {
    given::<Plant>(history_to(Ready))
        .when(change(Harvested))
        .then_expect_error(PlantError::UseHarvestCommand);
}

#[test]
fn disposal_is_possible_from_every_living_stage() {
    for from in LIVING_REACHABLE {
        let state = given::<Plant>(history_to(from))
            .when(dispose("mold"))
            .then_expect_events([disposed_from(from)]);
        let plant = state.plant.unwrap();
        assert_eq!(
            (plant.stage, plant.disposal_reason.as_deref()),
            (Disposed, Some("mold"))
        );
    }
}

#[test]
fn disposal_needs_a_reason() {
    for reason in [None, Some(String::new()), Some("  ".to_owned())] {
        given::<Plant>([created()])
            .when(ChangePlantStage {
                reason,
                ..change(Disposed)
            })
            .then_expect_error(PlantError::DisposalNeedsReason);
    }
}

#[test]
fn harvested_and_disposed_are_final() {
    for stage in [Harvested, Disposed] {
        given::<Plant>(history_to(stage))
            .when(dispose("again"))
            .then_expect_error(PlantError::Final { stage });
        given::<Plant>(history_to(stage))
            .when(change(Ready))
            .then_expect_error(PlantError::Final { stage });
        given::<Plant>(history_to(stage))
            .when(harvest_command())
            .then_expect_error(PlantError::Final { stage });
    }
}

#[test]
fn stage_change_before_creation_is_rejected() {
    given_no_events::<Plant>()
        .when(change(Vegetative))
        .then_expect_error(PlantError::NotCreated);
}

#[test]
fn stage_change_checks_environmental_ranges() {
    let cases: Vec<(EnvironmentalConditions, PlantError)> = vec![
        (
            EnvironmentalConditions {
                humidity: 100.5,
                ..conditions()
            },
            PlantError::PercentOutOfRange {
                field: "environmentalConditions.humidity",
                value: "100.5".into(),
            },
        ),
        (
            EnvironmentalConditions {
                humidity: -1.0,
                ..conditions()
            },
            PlantError::PercentOutOfRange {
                field: "environmentalConditions.humidity",
                value: "-1".into(),
            },
        ),
        (
            EnvironmentalConditions {
                temperature: f64::NAN,
                ..conditions()
            },
            PlantError::NotFinite {
                field: "environmentalConditions.temperature",
            },
        ),
        (
            EnvironmentalConditions {
                vpd: Some(0.0),
                ..conditions()
            },
            PlantError::NotPositive {
                field: "environmentalConditions.vpd",
                value: "0".into(),
            },
        ),
        (
            EnvironmentalConditions {
                co2: Some(-5.0),
                ..conditions()
            },
            PlantError::NotPositive {
                field: "environmentalConditions.co2",
                value: "-5".into(),
            },
        ),
        (
            EnvironmentalConditions {
                light_intensity: Some(-0.5),
                ..conditions()
            },
            PlantError::Negative {
                field: "environmentalConditions.lightIntensity",
                value: "-0.5".into(),
            },
        ),
        (
            EnvironmentalConditions {
                light_intensity: Some(f64::INFINITY),
                ..conditions()
            },
            PlantError::NotFinite {
                field: "environmentalConditions.lightIntensity",
            },
        ),
    ];
    for (environmental_conditions, error) in cases {
        given::<Plant>([created()])
            .when(ChangePlantStage {
                environmental_conditions: Some(environmental_conditions),
                ..change(Vegetative)
            })
            .then_expect_error(error);
    }
    // Optional members absent, negative temperature, humidity at both ends: accepted.
    for humidity in [0.0, 100.0] {
        let ok = EnvironmentalConditions {
            temperature: -3.0,
            humidity,
            vpd: None,
            co2: None,
            light_intensity: None,
        };
        given::<Plant>([created()])
            .when(ChangePlantStage {
                environmental_conditions: Some(ok),
                ..change(Vegetative)
            })
            .then_events(|events| assert_eq!(events.len(), 1));
    }
}

#[test]
fn stage_change_checks_photos() {
    for url in [
        "",
        "photos/p1.jpg",
        "https://photos.example/a b.jpg",
        "1http://x",
        "https:",
    ] {
        given::<Plant>([created()])
            .when(ChangePlantStage {
                photos: Some(vec![Photo {
                    url: url.to_owned(),
                    ..photo()
                }]),
                ..change(Vegetative)
            })
            .then_expect_error(PlantError::InvalidPhotoUrl {
                url: url.to_owned(),
            });
    }
    for url in [
        "https://photos.example/p1.jpg",
        "s3://bucket/p1.jpg",
        "urn:uuid:123",
    ] {
        assert!(is_absolute_url(url), "{url}");
    }
    let too_many = vec![photo(); PHOTOS_PER_STAGE_CHANGE_MAX + 1];
    given::<Plant>([created()])
        .when(ChangePlantStage {
            photos: Some(too_many),
            ..change(Vegetative)
        })
        .then_expect_error(PlantError::TooMany {
            field: "photos",
            count: PHOTOS_PER_STAGE_CHANGE_MAX + 1,
            max: PHOTOS_PER_STAGE_CHANGE_MAX,
        });
    let mut reserved = BTreeMap::new();
    reserved.insert(UPCAST_FROM_KEY.to_owned(), "x".to_owned());
    given::<Plant>([created()])
        .when(ChangePlantStage {
            photos: Some(vec![Photo {
                metadata: Some(reserved),
                ..photo()
            }]),
            ..change(Vegetative)
        })
        .then_expect_error(PlantError::ReservedMetadataKey {
            key: UPCAST_FROM_KEY.to_owned(),
        });
}

// ---------------------------------------------------------------------------------------------
// Harvest
// ---------------------------------------------------------------------------------------------

#[test]
fn harvest_from_flowering_on_is_accepted_and_final() {
    for from in [Flowering, Drying, Curing, Ready] {
        let mut history = history_to(from);
        let state = given::<Plant>(history.clone())
            .when(harvest_command())
            .then_expect_events([harvested()]);
        let plant = state.plant.unwrap();
        assert_eq!(plant.stage, Harvested);
        let record = plant.harvest.unwrap();
        assert_eq!((record.harvest_id, record.harvested_at), (HARVEST, now()));
        assert_eq!(record.quality_grade, Some(QualityGrade::APlus));
        history.push(harvested());
        given::<Plant>(history)
            .when(harvest_command())
            .then_expect_error(PlantError::Final { stage: Harvested });
    }
}

#[test]
fn harvest_before_flowering_is_rejected() {
    for from in [Seedling, Cloning, Vegetative, PreFlower] {
        given::<Plant>(history_to(from))
            .when(harvest_command())
            .then_expect_error(PlantError::IllegalTransition {
                from,
                to: Harvested,
            });
    }
}

#[test]
fn harvest_before_creation_is_rejected() {
    given_no_events::<Plant>()
        .when(harvest_command())
        .then_expect_error(PlantError::NotCreated);
}

fn harvest_with(data: HarvestData) -> HarvestPlant {
    HarvestPlant {
        harvest_data: data,
        ..harvest_command()
    }
}

#[test]
fn harvest_checks_weights() {
    let g = |amount| Weight {
        amount,
        unit: WeightUnit::G,
    };
    let cases: Vec<(HarvestData, PlantError)> = vec![
        (
            HarvestData {
                wet_weight: g(0.0),
                ..harvest_data()
            },
            PlantError::NotPositive {
                field: "harvestData.wetWeight.amount",
                value: "0".into(),
            },
        ),
        (
            HarvestData {
                wet_weight: g(f64::NAN),
                ..harvest_data()
            },
            PlantError::NotFinite {
                field: "harvestData.wetWeight.amount",
            },
        ),
        (
            HarvestData {
                dry_weight: Some(g(-1.0)),
                ..harvest_data()
            },
            PlantError::NotPositive {
                field: "harvestData.dryWeight.amount",
                value: "-1".into(),
            },
        ),
        (
            HarvestData {
                dry_weight: Some(g(1200.5)),
                ..harvest_data()
            },
            PlantError::DryHeavierThanWet {
                dry_grams: "1200.5".into(),
                wet_grams: "1200".into(),
            },
        ),
        (
            HarvestData {
                wet_weight: Weight {
                    amount: 1.0,
                    unit: WeightUnit::Kg,
                },
                dry_weight: Some(g(1001.0)),
                ..harvest_data()
            },
            PlantError::DryHeavierThanWet {
                dry_grams: "1001".into(),
                wet_grams: "1000".into(),
            },
        ),
        (
            HarvestData {
                sections: vec![HarvestSection {
                    weight: g(0.0),
                    ..harvest_data().sections[0].clone()
                }],
                ..harvest_data()
            },
            PlantError::NotPositive {
                field: "harvestData.sections[].weight.amount",
                value: "0".into(),
            },
        ),
        (
            HarvestData {
                sections: vec![harvest_data().sections[0].clone(); HARVEST_SECTIONS_MAX + 1],
                ..harvest_data()
            },
            PlantError::TooMany {
                field: "harvestData.sections",
                count: HARVEST_SECTIONS_MAX + 1,
                max: HARVEST_SECTIONS_MAX,
            },
        ),
    ];
    for (data, error) in cases {
        given::<Plant>(history_to(Ready))
            .when(harvest_with(data))
            .then_expect_error(error);
    }
}

#[test]
fn harvest_accepts_equal_weights_across_units_and_no_optional_data() {
    let ok = [
        HarvestData {
            wet_weight: Weight {
                amount: 1.0,
                unit: WeightUnit::Lb,
            },
            dry_weight: Some(Weight {
                amount: 453.592_37,
                unit: WeightUnit::G,
            }),
            ..harvest_data()
        },
        HarvestData {
            wet_weight: Weight {
                amount: 2.0,
                unit: WeightUnit::Oz,
            },
            dry_weight: Some(Weight {
                amount: 2.0,
                unit: WeightUnit::Oz,
            }),
            ..harvest_data()
        },
        HarvestData {
            wet_weight: Weight {
                amount: 0.001,
                unit: WeightUnit::Kg,
            },
            dry_weight: None,
            quality_grade: None,
            sections: vec![],
        },
    ];
    for data in ok {
        given::<Plant>(history_to(Flowering))
            .when(harvest_with(data))
            .then_events(|events| assert_eq!(events.len(), 1));
    }
}

#[test]
fn harvest_checks_environmental_ranges() {
    let cases = [
        (
            HarvestConditions {
                temperature: 20.0,
                humidity: 100.1,
            },
            PlantError::PercentOutOfRange {
                field: "environmentalConditions.humidity",
                value: "100.1".into(),
            },
        ),
        (
            HarvestConditions {
                temperature: f64::NEG_INFINITY,
                humidity: 50.0,
            },
            PlantError::NotFinite {
                field: "environmentalConditions.temperature",
            },
        ),
    ];
    for (environmental_conditions, error) in cases {
        given::<Plant>(history_to(Ready))
            .when(HarvestPlant {
                environmental_conditions,
                ..harvest_command()
            })
            .then_expect_error(error);
    }
}

#[test]
fn errors_have_readable_messages() {
    assert_eq!(
        PlantError::IllegalTransition {
            from: Flowering,
            to: Vegetative
        }
        .to_string(),
        "a plant cannot move from flowering to vegetative"
    );
    assert_eq!(
        PlantError::PercentOutOfRange {
            field: "genetics.thcPercentage",
            value: "101".into()
        }
        .to_string(),
        "genetics.thcPercentage must be in 0..=100, got 101"
    );
}

// ---------------------------------------------------------------------------------------------
// Lifecycle table and invariants
// ---------------------------------------------------------------------------------------------

/// The table of the module docs, written out: (from, stage-change targets, harvest, dispose).
fn documented_table() -> Vec<(PlantStage, Vec<PlantStage>, bool, bool)> {
    let growth_after = |from: PlantStage| -> Vec<PlantStage> {
        [Vegetative, PreFlower, Flowering, Drying, Curing, Ready]
            .into_iter()
            .filter(|s| *s > from)
            .collect()
    };
    vec![
        (Seedling, growth_after(Seedling), false, true),
        (Cloning, growth_after(Cloning), false, true),
        (Vegetative, growth_after(Vegetative), false, true),
        (MotherPlant, growth_after(MotherPlant), false, true),
        (PreFlower, growth_after(PreFlower), false, true),
        (Flowering, vec![Drying, Curing, Ready], true, true),
        (Drying, vec![Curing, Ready], true, true),
        (Curing, vec![Ready], true, true),
        (Ready, vec![], true, true),
        (Harvested, vec![], false, false),
        (Disposed, vec![], false, false),
    ]
}

#[test]
fn lifecycle_table_matches_the_documented_table() {
    assert_eq!(documented_table().len(), PlantStage::ALL.len());
    for (from, targets, harvest, dispose) in documented_table() {
        for to in PlantStage::ALL {
            let expected = match to {
                Harvested => harvest,
                Disposed => dispose,
                _ => targets.contains(&to),
            };
            assert_eq!(can_transition(from, to), expected, "{from} -> {to}");
        }
        assert_eq!(
            from.is_final(),
            PlantStage::ALL.iter().all(|&to| !can_transition(from, to))
        );
    }
}

#[test]
fn stages_are_in_the_seed_order_and_spelled_as_the_seed() {
    let names: Vec<String> = PlantStage::ALL
        .iter()
        .map(|s| {
            serde_json::to_value(s)
                .unwrap()
                .as_str()
                .unwrap()
                .to_owned()
        })
        .collect();
    assert_eq!(
        names,
        [
            "seedling",
            "cloning",
            "vegetative",
            "mother_plant",
            "pre_flower",
            "flowering",
            "drying",
            "curing",
            "ready",
            "harvested",
            "disposed"
        ]
    );
    for (i, stage) in PlantStage::ALL.iter().enumerate() {
        assert_eq!(stage.rank() as usize, i);
        assert_eq!(stage.to_string(), names[i]);
    }
    assert_eq!(next_growth_stage(Seedling), Some(Vegetative));
    assert_eq!(next_growth_stage(Cloning), Some(Vegetative));
    assert_eq!(next_growth_stage(Vegetative), Some(PreFlower));
    assert_eq!(next_growth_stage(MotherPlant), Some(PreFlower));
    assert_eq!(next_growth_stage(Curing), Some(Ready));
    assert_eq!(next_growth_stage(Ready), None);
}

fn live_plant() -> PlantRecord {
    Plant::replay(PlantState::default(), &[created()])
        .plant
        .unwrap()
}

fn broken(change: impl FnOnce(&mut PlantRecord)) -> Result<(), String> {
    let mut plant = live_plant();
    change(&mut plant);
    Plant::check_invariants(&PlantState { plant: Some(plant) })
}

#[test]
fn check_invariants_catches_every_listed_invariant() {
    assert_eq!(Plant::check_invariants(&PlantState::default()), Ok(()));
    assert_eq!(broken(|_| {}), Ok(()));
    let record = || HarvestRecord {
        harvest_id: HARVEST,
        harvested_at: now(),
        harvested_by: USER,
        wet_weight: Weight {
            amount: 10.0,
            unit: WeightUnit::G,
        },
        dry_weight: None,
        quality_grade: None,
    };
    // Initial stage follows the propagation method; the stage is never behind it.
    assert!(broken(|p| p.initial_stage = Cloning).is_err());
    assert!(broken(|p| {
        p.propagation_method = PropagationMethod::TissueCulture;
        p.initial_stage = Cloning;
        p.stage = Seedling;
    })
    .is_err());
    // cloning / mother_plant only as the initial stage.
    assert!(broken(|p| p.stage = MotherPlant).is_err());
    assert!(broken(|p| p.stage = Cloning).is_err());
    // Harvest and disposal records agree with the stage.
    assert!(broken(|p| p.stage = Harvested).is_err());
    assert!(broken(|p| p.harvest = Some(record())).is_err());
    assert!(broken(|p| p.stage = Disposed).is_err());
    assert!(broken(|p| p.disposal_reason = Some("x".into())).is_err());
    // Potency and grid position.
    assert!(broken(|p| p.genetics.thc_percentage = 101.0).is_err());
    assert!(broken(|p| p.genetics.cbd_percentage = f64::NAN).is_err());
    assert!(broken(|p| {
        p.genetics.thc_percentage = 70.0;
        p.genetics.cbd_percentage = 40.0;
    })
    .is_err());
    assert!(broken(|p| p.location.row = 0).is_err());
    assert!(broken(|p| p.location.position = 0).is_err());
    // Sources.
    assert!(broken(|p| p.source_id = Some(PLANT)).is_err());
    assert!(broken(|p| {
        p.propagation_method = PropagationMethod::Clone;
        p.initial_stage = Cloning;
        p.stage = Cloning;
    })
    .is_err());
    // Harvest weights.
    for (wet, dry) in [
        (0.0, None),
        (10.0, Some(11.0)),
        (10.0, Some(0.0)),
        (f64::INFINITY, None),
    ] {
        assert!(broken(|p| {
            p.stage = Harvested;
            p.harvest = Some(HarvestRecord {
                wet_weight: Weight {
                    amount: wet,
                    unit: WeightUnit::G,
                },
                dry_weight: dry.map(|amount| Weight {
                    amount,
                    unit: WeightUnit::G,
                }),
                ..record()
            });
        })
        .is_err());
    }
}

// ---------------------------------------------------------------------------------------------
// Contracts
// ---------------------------------------------------------------------------------------------

const PREVIOUS_STAGES: &str = concat!(
    "enum:seedling|cloning|vegetative|mother_plant|pre_flower|flowering|drying|curing|ready|",
    "harvested|disposed"
);
const NEW_STAGES: &str =
    "enum:seedling|vegetative|pre_flower|flowering|drying|curing|ready|harvested|disposed";
const UNITS: &str = "enum:g|kg|oz|lb";

/// (required fields, optional fields) of each payload, from the seed's Zod schemas.
type Contract = (
    &'static [(&'static str, &'static str)],
    &'static [(&'static str, &'static str)],
);

fn contract(event_type: &str) -> Contract {
    match event_type {
        "plant.created" => (
            &[
                ("plantId", "uuid"),
                // Section 11's 1.1: the deprecated top-level strain is still required.
                ("strain", "string"),
                ("batchId", "uuid"),
                ("genetics", "object"),
                ("genetics.id", "uuid"),
                ("genetics.strain", "string"),
                ("genetics.type", "enum:indica|sativa|hybrid"),
                ("genetics.thcPercentage", "number"),
                ("genetics.cbdPercentage", "number"),
                ("location", "object"),
                ("location.facilityId", "uuid"),
                ("location.zone", "string"),
                ("location.row", "integer"),
                ("location.position", "integer"),
                ("propagationMethod", "enum:seed|clone|tissue_culture"),
                ("plannedHarvestDate", "string"),
            ],
            &[
                ("genetics.lineage", "object"),
                ("genetics.lineage.mother", "string"),
                ("genetics.lineage.father", "string"),
                ("sourceId", "uuid"),
                ("metadata", "object"),
            ],
        ),
        "plant.stage_changed" => (
            &[
                ("plantId", "uuid"),
                ("batchId", "uuid"),
                ("previousStage", PREVIOUS_STAGES),
                ("newStage", NEW_STAGES),
                ("stageChangedAt", "datetime"),
                ("stageChangedBy", "uuid"),
            ],
            &[
                ("reason", "string"),
                ("environmentalConditions", "object"),
                ("environmentalConditions.temperature", "number"),
                ("environmentalConditions.humidity", "number"),
                ("environmentalConditions.vpd", "number"),
                ("environmentalConditions.co2", "number"),
                ("environmentalConditions.lightIntensity", "number"),
                ("photos", "array"),
            ],
        ),
        "plant.harvested" => (
            &[
                ("plantId", "uuid"),
                ("batchId", "uuid"),
                ("harvestId", "uuid"),
                ("harvestedAt", "datetime"),
                ("harvestedBy", "uuid"),
                ("harvestData", "object"),
                ("harvestData.wetWeight", "object"),
                ("harvestData.wetWeight.amount", "number"),
                ("harvestData.wetWeight.unit", UNITS),
                ("harvestData.sections", "array"),
                ("environmentalConditions", "object"),
                ("environmentalConditions.temperature", "number"),
                ("environmentalConditions.humidity", "number"),
            ],
            &[
                ("harvestData.dryWeight", "object"),
                ("harvestData.dryWeight.amount", "number"),
                ("harvestData.dryWeight.unit", UNITS),
                ("harvestData.qualityGrade", "enum:A+|A|B+|B|C|reject"),
                ("notes", "string"),
            ],
        ),
        other => panic!("no contract for {other}"),
    }
}

const PHOTO_CONTRACT: &[(&str, &str)] = &[
    ("id", "uuid"),
    ("url", "string"),
    ("type", "enum:overview|close_up|microscopic"),
    ("metadata", "object"),
];
const SECTION_CONTRACT: &[(&str, &str)] = &[
    ("type", "enum:colas|trim|shake|popcorn"),
    ("weight", "object"),
    ("weight.amount", "number"),
    ("weight.unit", UNITS),
    ("destinationId", "uuid"),
];

fn lookup<'a>(json: &'a serde_json::Value, path: &str) -> Option<&'a serde_json::Value> {
    path.split('.').try_fold(json, |node, part| node.get(part))
}

fn assert_no_nulls(json: &serde_json::Value, at: &str) {
    match json {
        serde_json::Value::Null => panic!("null at {at}: Zod .optional() refuses null"),
        serde_json::Value::Object(map) => map
            .iter()
            .for_each(|(k, v)| assert_no_nulls(v, &format!("{at}.{k}"))),
        serde_json::Value::Array(items) => items
            .iter()
            .for_each(|v| assert_no_nulls(v, &format!("{at}[]"))),
        _ => {}
    }
}

fn full_stage_change() -> PlantEvent {
    match changed(Seedling, Vegetative) {
        PlantEvent::PlantStageChanged(mut e) => {
            e.reason = Some("roots established".to_owned());
            e.environmental_conditions = Some(conditions());
            e.photos = Some(vec![photo()]);
            e.into()
        }
        _ => unreachable!(),
    }
}

fn full_created() -> PlantEvent {
    let mut metadata = BTreeMap::new();
    metadata.insert("note".to_owned(), "from tissue lab".to_owned());
    created_from(CreatePlant {
        propagation_method: PropagationMethod::TissueCulture,
        source_id: Some(MOTHER),
        metadata: Some(metadata),
        ..create_command()
    })
}

fn minimal_events() -> Vec<PlantEvent> {
    let minimal_created = created_from(CreatePlant {
        genetics: Genetics {
            lineage: None,
            ..genetics()
        },
        ..create_command()
    });
    let minimal_harvest = match harvested() {
        PlantEvent::PlantHarvested(mut e) => {
            e.harvest_data.dry_weight = None;
            e.harvest_data.quality_grade = None;
            e.harvest_data.sections = vec![];
            e.notes = None;
            e.into()
        }
        _ => unreachable!(),
    };
    vec![
        minimal_created,
        changed(Seedling, Vegetative),
        minimal_harvest,
    ]
}

fn full_events() -> Vec<PlantEvent> {
    vec![full_created(), full_stage_change(), harvested()]
}

#[test]
fn every_event_has_its_type_version_and_topic() {
    let [c, s, h] = <[PlantEvent; 3]>::try_from(full_events()).unwrap();
    assert_eq!(
        (c.event_type(), c.event_version()),
        ("plant.created", "1.1")
    );
    assert_eq!(
        (s.event_type(), s.event_version()),
        ("plant.stage_changed", "1.0")
    );
    assert_eq!(
        (h.event_type(), h.event_version()),
        ("plant.harvested", "1.0")
    );
    for event in [c, s, h] {
        assert_eq!(event.topic(), "cultivation.plants.v1");
    }
}

#[test]
fn every_event_with_all_optional_fields_meets_its_contract() {
    for event in full_events() {
        let json = event.payload_json();
        let (required, optional) = contract(event.event_type());
        assert_contract(event.event_type(), &json, required);
        assert_contract(event.event_type(), &json, optional);
        assert_no_nulls(&json, event.event_type());
    }
    let json = full_stage_change().payload_json();
    assert_contract("photos[0]", &json["photos"][0], PHOTO_CONTRACT);
    let json = harvested().payload_json();
    for section in json["harvestData"]["sections"].as_array().unwrap() {
        assert_contract("harvestData.sections[]", section, SECTION_CONTRACT);
    }
}

#[test]
fn absent_optional_fields_are_left_out_not_null() {
    for event in minimal_events() {
        let json = event.payload_json();
        let (required, optional) = contract(event.event_type());
        assert_contract(event.event_type(), &json, required);
        assert_no_nulls(&json, event.event_type());
        for (path, _) in optional {
            assert!(
                lookup(&json, path).is_none(),
                "{}: {path} should be absent",
                event.event_type()
            );
        }
        // The published JSON reads back into the same event (missing Option -> None).
        let back: PlantEvent = match &event {
            PlantEvent::PlantCreated(_) => {
                PlantEvent::PlantCreated(serde_json::from_value(json).unwrap())
            }
            PlantEvent::PlantStageChanged(_) => {
                PlantEvent::PlantStageChanged(serde_json::from_value(json).unwrap())
            }
            PlantEvent::PlantHarvested(_) => {
                PlantEvent::PlantHarvested(serde_json::from_value(json).unwrap())
            }
        };
        assert_eq!(back, event);
    }
}

#[test]
fn payload_json_spells_values_as_the_seed_does() {
    let json = created().payload_json();
    assert_eq!(json["plannedHarvestDate"], "2026-04-01");
    assert!(
        NaiveDate::parse_from_str(json["plannedHarvestDate"].as_str().unwrap(), "%Y-%m-%d").is_ok()
    );
    assert_eq!(json["genetics"]["type"], "indica");
    assert_eq!(json["genetics"]["thcPercentage"], 18.5);
    assert_eq!(json["location"]["row"], 3);
    assert_eq!(json["propagationMethod"], "seed");
    let json = full_created().payload_json();
    assert_eq!(json["propagationMethod"], "tissue_culture");
    let json = harvested().payload_json();
    assert_eq!(json["harvestData"]["qualityGrade"], "A+");
    assert_eq!(
        json["harvestData"]["wetWeight"],
        serde_json::json!({"amount": 1200.0, "unit": "g"})
    );
    assert_eq!(json["harvestedAt"], "2026-01-01T00:00:00Z");
    let json = full_stage_change().payload_json();
    assert_eq!(json["previousStage"], "seedling");
    assert_eq!(json["photos"][0]["type"], "close_up");
    assert_eq!(json["environmentalConditions"]["lightIntensity"], 0.0);
    let grades: Vec<serde_json::Value> = QualityGrade::ALL
        .iter()
        .map(|g| serde_json::to_value(g).unwrap())
        .collect();
    assert_eq!(
        grades,
        serde_json::json!(["A+", "A", "B+", "B", "C", "reject"])
            .as_array()
            .unwrap()
            .clone()
    );
}

#[test]
fn a_seed_shaped_json_payload_deserializes() {
    // plant.stage_changed as a TypeScript producer of the seed would publish it (optional keys
    // absent, not null).
    let json = serde_json::json!({
        "plantId": PLANT.to_string(),
        "batchId": BATCH.to_string(),
        "previousStage": "mother_plant",
        "newStage": "pre_flower",
        "stageChangedAt": "2026-01-01T10:30:00.000Z",
        "stageChangedBy": USER.to_string(),
        "environmentalConditions": { "temperature": 24, "humidity": 55.5 }
    });
    let event: PlantStageChanged = serde_json::from_value(json).unwrap();
    assert_eq!(
        (event.previous_stage, event.new_stage),
        (MotherPlant, PreFlower)
    );
    assert_eq!(event.environmental_conditions.unwrap().vpd, None);
    assert_eq!(event.photos, None);
}

// ---------------------------------------------------------------------------------------------
// Round trips
// ---------------------------------------------------------------------------------------------

#[test]
fn every_event_round_trips_through_json_and_the_codec() {
    for event in full_events().into_iter().chain(minimal_events()) {
        assert_json_and_codec_round_trip(&event);
        assert_stored_event_round_trip::<Plant>(&event);
    }
}

#[test]
fn every_command_round_trips_through_json_and_the_codec() {
    let commands: Vec<PlantCommand> = vec![
        create_command().into(),
        CreatePlant {
            propagation_method: PropagationMethod::Clone,
            source_id: Some(MOTHER),
            metadata: Some(BTreeMap::from([("k".to_owned(), "v".to_owned())])),
            ..create_command()
        }
        .into(),
        change(Vegetative).into(),
        ChangePlantStage {
            reason: Some("r".into()),
            environmental_conditions: Some(conditions()),
            photos: Some(vec![photo()]),
            ..change(Disposed)
        }
        .into(),
        harvest_command().into(),
    ];
    for command in &commands {
        assert_json_and_codec_round_trip(command);
    }
}

#[test]
fn state_round_trips_through_json_and_the_codec() {
    for stage in [Flowering, Harvested, Disposed] {
        let state = Plant::replay(PlantState::default(), &history_to(stage));
        assert_json_and_codec_round_trip(&state);
    }
}

// ---------------------------------------------------------------------------------------------
// Workload
// ---------------------------------------------------------------------------------------------

#[test]
fn the_demo_workload_walks_plants_through_their_whole_lifecycle() {
    let mut visited = BTreeSet::new();
    let (mut harvests, mut disposals, mut rejected) = (0, 0, 0);
    for seed in 0..200u64 {
        let mut rng = DemoRng::new(seed);
        let mut state = PlantState::default();
        let mut ctx = DecideContext::new(Uuid::from_u128(seed as u128 + 1).to_string(), now());
        for _ in 0..16 {
            let command = Plant::sample_command(&state, &ctx, &mut rng);
            match Plant::decide(&state, &command, &ctx) {
                Ok(events) => {
                    for event in &events {
                        Plant::apply(&mut state, event);
                    }
                    Plant::check_invariants(&state).unwrap();
                    if let Some(plant) = &state.plant {
                        visited.insert(plant.stage);
                    }
                }
                Err(_) => rejected += 1,
            }
            ctx.now += Duration::days(7);
        }
        let plant = state.plant.expect("the workload creates the plant");
        assert_eq!(
            plant.plant_id.to_string(),
            ctx.aggregate_id,
            "uses the aggregate id"
        );
        match plant.stage {
            Harvested => harvests += 1,
            Disposed => disposals += 1,
            _ => {}
        }
    }
    let expected: BTreeSet<PlantStage> = PlantStage::ALL
        .into_iter()
        .filter(|s| *s != MotherPlant)
        .collect();
    assert_eq!(visited, expected);
    assert!(
        harvests > 100 && disposals > 10 && rejected > 0,
        "{harvests} {disposals} {rejected}"
    );
}

// ---------------------------------------------------------------------------------------------
// Property test
// ---------------------------------------------------------------------------------------------

#[derive(Debug, Clone)]
enum Step {
    /// A plausible command from the demo workload, drawn with this seed.
    Sample(u64),
    /// An arbitrary command, often invalid.
    Command(Box<PlantCommand>),
}

fn arb_id() -> impl Strategy<Value = Uuid> {
    prop_oneof![Just(PLANT), Just(MOTHER), Just(USER)]
}

/// Mostly in 0..=100 with one decimal; sometimes out of range or not finite.
fn arb_number() -> BoxedStrategy<f64> {
    prop_oneof![
        8 => (0i64..=1000).prop_map(|t| t as f64 / 10.0),
        1 => Just(-0.5),
        1 => Just(150.0),
        1 => Just(0.0),
        1 => Just(f64::NAN),
        1 => Just(f64::INFINITY),
    ]
    .boxed()
}

fn arb_text() -> BoxedStrategy<String> {
    prop_oneof![Just(String::new()), Just(" ".to_owned()), "[a-z]{1,8}"].boxed()
}

fn arb_metadata() -> BoxedStrategy<Option<Metadata>> {
    prop_oneof![
        Just(None),
        Just(Some(BTreeMap::from([("k".to_owned(), "v".to_owned())]))),
        Just(Some(BTreeMap::from([(
            UPCAST_FROM_KEY.to_owned(),
            "1.0".to_owned()
        )]))),
    ]
    .boxed()
}

fn arb_weight() -> BoxedStrategy<Weight> {
    (
        arb_number(),
        proptest::sample::select(WeightUnit::ALL.to_vec()),
    )
        .prop_map(|(amount, unit)| Weight { amount, unit })
        .boxed()
}

fn arb_create() -> BoxedStrategy<PlantCommand> {
    (
        (
            arb_id(),
            arb_text(),
            proptest::sample::select(vec![GeneticsType::Indica, GeneticsType::Hybrid]),
        ),
        (arb_number(), arb_number()),
        (arb_text(), 0u32..3, 0u32..3),
        (
            proptest::sample::select(PropagationMethod::ALL.to_vec()),
            proptest::option::of(arb_id()),
        ),
        (-3i64..200, arb_metadata()),
    )
        .prop_map(
            |(
                (plant_id, strain, genetics_type),
                (thc, cbd),
                (zone, row, position),
                (method, source),
                (days, metadata),
            )| {
                CreatePlant {
                    plant_id,
                    batch_id: BATCH,
                    genetics: Genetics {
                        id: GENETICS,
                        strain,
                        genetics_type,
                        thc_percentage: thc,
                        cbd_percentage: cbd,
                        lineage: None,
                    },
                    location: Location {
                        facility_id: FACILITY,
                        zone,
                        row,
                        position,
                    },
                    propagation_method: method,
                    source_id: source,
                    planned_harvest_date: (fixed_now() + Duration::days(days)).date_naive(),
                    metadata,
                }
                .into()
            },
        )
        .boxed()
}

fn arb_conditions() -> BoxedStrategy<EnvironmentalConditions> {
    (
        arb_number(),
        arb_number(),
        proptest::option::of(arb_number()),
        proptest::option::of(arb_number()),
        proptest::option::of(arb_number()),
    )
        .prop_map(
            |(temperature, humidity, vpd, co2, light_intensity)| EnvironmentalConditions {
                temperature,
                humidity,
                vpd,
                co2,
                light_intensity,
            },
        )
        .boxed()
}

fn arb_photo() -> BoxedStrategy<Photo> {
    (
        prop_oneof![
            Just("https://p.example/1.jpg".to_owned()),
            Just("not a url".to_owned())
        ],
        arb_metadata(),
    )
        .prop_map(|(url, metadata)| Photo {
            id: PHOTO,
            url,
            photo_type: PhotoType::Overview,
            metadata,
        })
        .boxed()
}

fn arb_change() -> BoxedStrategy<PlantCommand> {
    (
        proptest::sample::select(PlantStage::ALL.to_vec()),
        proptest::option::of(arb_text()),
        proptest::option::of(arb_conditions()),
        proptest::option::of(proptest::collection::vec(arb_photo(), 0..3)),
    )
        .prop_map(|(new_stage, reason, environmental_conditions, photos)| {
            ChangePlantStage {
                new_stage,
                changed_by: USER,
                reason,
                environmental_conditions,
                photos,
            }
            .into()
        })
        .boxed()
}

fn arb_harvest() -> BoxedStrategy<PlantCommand> {
    (
        arb_weight(),
        proptest::option::of(arb_weight()),
        proptest::option::of(proptest::sample::select(QualityGrade::ALL.to_vec())),
        proptest::collection::vec(arb_weight(), 0..3),
        (arb_number(), arb_number()),
        proptest::option::of(arb_text()),
    )
        .prop_map(
            |(
                wet_weight,
                dry_weight,
                quality_grade,
                section_weights,
                (temperature, humidity),
                notes,
            )| {
                HarvestPlant {
                    harvest_id: HARVEST,
                    harvested_by: USER,
                    harvest_data: HarvestData {
                        wet_weight,
                        dry_weight,
                        quality_grade,
                        sections: section_weights
                            .into_iter()
                            .map(|weight| HarvestSection {
                                section_type: SectionType::Shake,
                                weight,
                                destination_id: DESTINATION,
                            })
                            .collect(),
                    },
                    environmental_conditions: HarvestConditions {
                        temperature,
                        humidity,
                    },
                    notes,
                }
                .into()
            },
        )
        .boxed()
}

fn arb_steps() -> impl Strategy<Value = Vec<(Step, i64)>> {
    let step = prop_oneof![
        3 => any::<u64>().prop_map(Step::Sample),
        1 => prop_oneof![arb_create(), arb_change(), arb_harvest()]
            .prop_map(|c| Step::Command(Box::new(c))),
    ];
    proptest::collection::vec((step, 0i64..(5 * 24 * 60)), 1..30)
}

fn proptest_config() -> ProptestConfig {
    ProptestConfig {
        cases: 128,
        rng_seed: RngSeed::Fixed(0x9_1A47),
        failure_persistence: None,
        ..ProptestConfig::default()
    }
}

proptest! {
    #![proptest_config(proptest_config())]

    #[test]
    fn random_command_sequences_keep_every_guarantee(steps in arb_steps()) {
        let mut ctx = DecideContext::new(PLANT.to_string(), fixed_now());
        let mut state = PlantState::default();
        let mut log: Vec<PlantEvent> = Vec::new();
        for (step, advance_minutes) in steps {
            ctx.now += Duration::minutes(advance_minutes);
            let command = match step {
                Step::Sample(seed) => Plant::sample_command(&state, &ctx, &mut DemoRng::new(seed)),
                Step::Command(command) => *command,
            };
            let before = state.clone();
            match Plant::decide(&state, &command, &ctx) {
                Ok(events) => {
                    for event in events {
                        assert_stored_event_round_trip::<Plant>(&event);
                        Plant::apply(&mut state, &event);
                        log.push(event);
                    }
                }
                Err(_) => prop_assert_eq!(&state, &before, "a rejection changed the state"),
            }
            if let Err(violation) = Plant::check_invariants(&state) {
                return Err(TestCaseError::fail(format!("{violation} after {command:?}")));
            }
            // `==` on f64 fields: decide only accepts finite numbers, so this is exact.
            prop_assert_eq!(&Plant::replay(PlantState::default(), &log), &state);
        }
        assert_replay_and_snapshots_agree::<Plant>(&log, &state);
    }
}
