//! The demo workload of [`Order`]: a plausible next command for an aggregate in any state.

use crate::order::*;
use evershard_model::{Currency, DecideContext, DemoRng, Money, Workload};
const DEMO_PRODUCTS: [&str; 6] = ["sku-1", "sku-2", "sku-3", "sku-4", "sku-5", "sku-6"];

impl Workload for Order {
    fn sample_command(state: &OrderState, ctx: &DecideContext, rng: &mut DemoRng) -> OrderCommand {
        let Some(order) = &state.order else {
            let count = rng.range(1, 3) as usize;
            let start = rng.below(DEMO_PRODUCTS.len() as u64) as usize;
            let lines = (0..count)
                .map(|i| LineRequest {
                    product_id: DEMO_PRODUCTS[(start + i) % DEMO_PRODUCTS.len()].to_owned(),
                    quantity: rng.range(1, 5),
                    unit_price: Money::from_minor(rng.range(0, 50_000)),
                })
                .collect();
            return CreateOrder {
                idempotency_key: rng.uuid(),
                customer_id: rng.uuid(),
                currency: *rng.pick(&[Currency::USD, Currency::EUR, Currency::RUB]),
                lines,
            }
            .into();
        };
        let overdue = !order.status.is_final()
            && order.status != OrderStatus::Confirmed
            && order.expires_at <= ctx.now;
        if rng.chance(if overdue { 50 } else { 3 }) {
            return ExpireOrder.into();
        }
        let repeat_create = || -> OrderCommand {
            CreateOrder {
                idempotency_key: order.idempotency_key,
                customer_id: order.customer_id,
                currency: order.currency,
                lines: order
                    .lines
                    .iter()
                    .map(|l| LineRequest {
                        product_id: l.product_id.clone(),
                        quantity: l.quantity,
                        unit_price: l.unit_price,
                    })
                    .collect(),
            }
            .into()
        };
        // The saga uses the order id as the reservation id of every line.
        let reservation_id = order.order_id;
        match order.status {
            OrderStatus::Created => {
                let line = order
                    .lines
                    .iter()
                    .find(|l| l.reservation_id.is_none())
                    .expect("created: a line is unreserved (invariant)");
                match rng.below(100) {
                    0..=4 => CancelOrder {
                        reason: CancelReason::StockUnavailable,
                    }
                    .into(),
                    5..=7 => RecordReservationExpired {
                        product_id: line.product_id.clone(),
                        reservation_id,
                    }
                    .into(),
                    8..=11 => repeat_create(),
                    _ => RecordStockReserved {
                        product_id: line.product_id.clone(),
                        reservation_id,
                        quantity: line.quantity,
                    }
                    .into(),
                }
            }
            OrderStatus::StockReserved => match rng.below(100) {
                0..=4 => CancelOrder {
                    reason: CancelReason::CustomerRequest,
                }
                .into(),
                _ => RequestPayment {
                    payment_id: rng.uuid(),
                }
                .into(),
            },
            OrderStatus::PaymentRequested => {
                let payment_id = order.payment_id.expect("payment requested: invariant");
                match rng.below(100) {
                    0..=7 => CancelOrder {
                        reason: CancelReason::PaymentFailed,
                    }
                    .into(),
                    8..=10 => RecordPaymentCompleted {
                        payment_id,
                        amount: order.total_amount + Money::from_minor(1),
                    }
                    .into(),
                    _ => RecordPaymentCompleted {
                        payment_id,
                        amount: order.total_amount,
                    }
                    .into(),
                }
            }
            OrderStatus::Confirmed => {
                // The saga records each line's confirmed reservation before the warehouse
                // can hand the order over; now and then the warehouse tries too early.
                let unconfirmed = order.lines.iter().find(|l| !l.reservation_confirmed);
                match (rng.below(100), unconfirmed) {
                    (0..=9, _) => CancelOrder {
                        reason: CancelReason::CustomerRequest,
                    }
                    .into(),
                    (10..=14, _) | (_, None) => FulfilOrder.into(),
                    (_, Some(line)) => RecordReservationConfirmed {
                        product_id: line.product_id.clone(),
                        reservation_id: line
                            .reservation_id
                            .expect("confirmed: every line reserved"),
                    }
                    .into(),
                }
            }
            OrderStatus::Fulfilled | OrderStatus::Cancelled => match rng.below(4) {
                0 => repeat_create(),
                1 => FulfilOrder.into(),
                2 => CancelOrder {
                    reason: CancelReason::CustomerRequest,
                }
                .into(),
                _ => ExpireOrder.into(),
            },
        }
    }

    fn is_finished(state: &OrderState) -> bool {
        state.status().is_some_and(OrderStatus::is_final)
    }
}
