//! The demo workload of [`Plant`]: a plausible next command for a plant in any state.

use crate::plant::{
    next_growth_stage, ChangePlantStage, CreatePlant, EnvironmentalConditions, Genetics,
    GeneticsType, HarvestConditions, HarvestData, HarvestPlant, HarvestSection, Location, Photo,
    PhotoType, Plant, PlantCommand, PlantStage, PlantState, PropagationMethod, QualityGrade,
    SectionType, Weight, WeightUnit,
};
use chrono::Duration;
use evershard_model::{DecideContext, DemoRng, Workload};
use uuid::Uuid;

const STRAINS: [&str; 5] = [
    "Northern Lights",
    "Blue Dream",
    "White Widow",
    "Sour Diesel",
    "Haze",
];
const ZONES: [&str; 4] = ["A", "B", "C", "D"];
const DISPOSAL_REASONS: [&str; 3] = ["mold", "pest infestation", "male plant"];

/// A multiple of 0.1 in `lo/10..=hi/10`: tidy numbers for the demo.
fn tenths(rng: &mut DemoRng, lo: i64, hi: i64) -> f64 {
    rng.range(lo, hi) as f64 / 10.0
}

fn create(ctx: &DecideContext, rng: &mut DemoRng) -> PlantCommand {
    let plant_id = Uuid::parse_str(&ctx.aggregate_id).unwrap_or_else(|_| rng.uuid());
    let propagation_method = *rng.pick(&PropagationMethod::ALL);
    let source_id = match propagation_method {
        PropagationMethod::Clone => Some(rng.uuid()),
        PropagationMethod::TissueCulture if rng.chance(50) => Some(rng.uuid()),
        _ => None,
    };
    let mut thc_percentage = tenths(rng, 50, 300);
    if rng.chance(5) {
        // Out of range on purpose: rejected.
        thc_percentage = 120.0;
    }
    CreatePlant {
        plant_id,
        batch_id: rng.uuid(),
        genetics: Genetics {
            id: rng.uuid(),
            strain: rng.pick(&STRAINS).to_string(),
            genetics_type: *rng.pick(&[
                GeneticsType::Indica,
                GeneticsType::Sativa,
                GeneticsType::Hybrid,
            ]),
            thc_percentage,
            cbd_percentage: tenths(rng, 0, 50),
            lineage: None,
        },
        location: Location {
            facility_id: rng.uuid(),
            zone: rng.pick(&ZONES).to_string(),
            row: rng.range(1, 20) as u32,
            position: rng.range(1, 50) as u32,
        },
        propagation_method,
        source_id,
        planned_harvest_date: (ctx.now + Duration::days(rng.range(60, 120))).date_naive(),
        metadata: None,
    }
    .into()
}

fn conditions(rng: &mut DemoRng) -> EnvironmentalConditions {
    EnvironmentalConditions {
        temperature: tenths(rng, 180, 300),
        humidity: tenths(rng, 300, 700),
        vpd: rng.chance(50).then(|| tenths(rng, 5, 15)),
        co2: rng.chance(50).then(|| rng.range(400, 1500) as f64),
        light_intensity: rng.chance(50).then(|| rng.range(0, 1000) as f64),
    }
}

fn change(rng: &mut DemoRng, new_stage: PlantStage, reason: Option<String>) -> PlantCommand {
    let environmental_conditions = rng.chance(60).then(|| conditions(rng));
    let photos = rng.chance(30).then(|| {
        vec![Photo {
            id: rng.uuid(),
            url: format!("https://photos.example/{}.jpg", rng.uuid()),
            photo_type: *rng.pick(&[
                PhotoType::Overview,
                PhotoType::CloseUp,
                PhotoType::Microscopic,
            ]),
            metadata: None,
        }]
    });
    ChangePlantStage {
        new_stage,
        changed_by: rng.uuid(),
        reason,
        environmental_conditions,
        photos,
    }
    .into()
}

fn harvest(rng: &mut DemoRng) -> PlantCommand {
    let unit = *rng.pick(&[WeightUnit::G, WeightUnit::Kg]);
    let wet = match unit {
        WeightUnit::Kg => tenths(rng, 5, 30),
        _ => rng.range(200, 3000) as f64,
    };
    let dry_weight = rng.chance(50).then(|| Weight {
        amount: wet / 4.0,
        unit,
    });
    let sections = (0..rng.range(0, 3))
        .map(|_| HarvestSection {
            section_type: *rng.pick(&SectionType::ALL),
            weight: Weight {
                amount: wet / 8.0,
                unit,
            },
            destination_id: rng.uuid(),
        })
        .collect();
    let humidity = if rng.chance(5) {
        140.0
    } else {
        tenths(rng, 300, 600)
    };
    HarvestPlant {
        harvest_id: rng.uuid(),
        harvested_by: rng.uuid(),
        harvest_data: HarvestData {
            wet_weight: Weight { amount: wet, unit },
            dry_weight,
            quality_grade: rng.chance(70).then(|| *rng.pick(&QualityGrade::ALL)),
            sections,
        },
        environmental_conditions: HarvestConditions {
            temperature: tenths(rng, 180, 260),
            humidity,
        },
        notes: rng.chance(30).then(|| "harvested by the demo".to_owned()),
    }
    .into()
}

impl Workload for Plant {
    /// Create, then mostly one stage forward at a time (sometimes skipping one), harvest
    /// from flowering on (always at `ready`), dispose now and then; about one command in
    /// twenty breaks a rule on purpose (out-of-range values, a backward move). A final plant
    /// gets a command that is rejected.
    fn sample_command(state: &PlantState, ctx: &DecideContext, rng: &mut DemoRng) -> PlantCommand {
        let Some(plant) = &state.plant else {
            return create(ctx, rng);
        };
        let stage = plant.stage;
        if stage.is_final() {
            return change(rng, PlantStage::Disposed, Some("already gone".to_owned()));
        }
        if rng.chance(4) {
            let reason = rng.pick(&DISPOSAL_REASONS).to_string();
            return change(rng, PlantStage::Disposed, Some(reason));
        }
        if rng.chance(3) {
            // Backward (or standing still): rejected.
            return change(rng, PlantStage::Seedling, None);
        }
        let harvestable = crate::plant::can_transition(stage, PlantStage::Harvested);
        match next_growth_stage(stage) {
            Some(_) if harvestable && rng.chance(15) => harvest(rng),
            Some(next) => {
                let target = match next_growth_stage(next) {
                    Some(after) if rng.chance(10) => after,
                    _ => next,
                };
                change(rng, target, None)
            }
            None => harvest(rng),
        }
    }

    fn is_finished(state: &PlantState) -> bool {
        state.plant.as_ref().is_some_and(|p| p.stage.is_final())
    }
}
