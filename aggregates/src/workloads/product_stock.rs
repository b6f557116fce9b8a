//! The demo workload of [`ProductStock`]: a plausible next command for an aggregate in any state.

use crate::product_stock::*;
use evershard_model::{DecideContext, DemoRng, Workload};
use uuid::Uuid;
impl Workload for ProductStock {
    fn sample_command(
        state: &ProductStockState,
        ctx: &DecideContext,
        rng: &mut DemoRng,
    ) -> ProductStockCommand {
        let open: Vec<(Uuid, &Reservation)> = state
            .reservations
            .iter()
            .filter_map(|(id, r)| Uuid::parse_str(id).ok().map(|id| (id, r)))
            .collect();
        if open.iter().any(|(_, r)| r.is_overdue(ctx.now)) && rng.chance(60) {
            return ExpireReservations.into();
        }
        if state.available() < 10 && rng.chance(50) {
            return ReceiveStock {
                quantity: rng.range(20, 200),
            }
            .into();
        }
        if state.average_monthly_demand == 0 && rng.chance(20) {
            return SetDemandForecast {
                average_monthly_demand: rng.range(100, 1_000),
            }
            .into();
        }
        let roll = rng.below(100);
        if open.is_empty() || roll < 35 {
            let available = state.available().max(1);
            // Mostly what is available; one in ten asks for more than there is.
            let quantity = if rng.chance(10) {
                available + rng.range(1, 5)
            } else {
                rng.range(1, available.min(20))
            };
            return Reserve {
                reservation_id: rng.uuid(),
                order_id: rng.uuid(),
                quantity,
            }
            .into();
        }
        let (reservation_id, r) = *rng.pick(&open);
        match roll {
            35..=44 => {
                // A duplicate delivery; one in four with another quantity (a conflict).
                let quantity = if rng.chance(25) {
                    r.quantity + 1
                } else {
                    r.quantity
                };
                Reserve {
                    reservation_id,
                    order_id: r.order_id,
                    quantity,
                }
                .into()
            }
            45..=59 => ConfirmReservation { reservation_id }.into(),
            60..=74 => CommitReservation { reservation_id }.into(),
            75..=84 => {
                let reason = *rng.pick(&[
                    ReleaseReason::Cancelled,
                    ReleaseReason::PaymentFailed,
                    ReleaseReason::Compensation,
                    ReleaseReason::Expired,
                ]);
                ReleaseReservation {
                    reservation_id,
                    reason,
                }
                .into()
            }
            85..=90 => AdjustStock {
                counted_on_hand: (state.on_hand + rng.range(-10, 10)).max(state.reserved),
            }
            .into(),
            91..=94 => SetDemandForecast {
                average_monthly_demand: rng.range(0, 2_000),
            }
            .into(),
            _ => ExpireReservations.into(),
        }
    }
}
