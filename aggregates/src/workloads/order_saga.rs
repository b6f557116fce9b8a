//! The workload of [`OrderSaga`]: the facts a saga runner would report, in an order the flow
//! allows, for tests and tools that drive a saga without the aggregates around it. (The demo
//! drives real sagas through the engine's runner instead: `evershard_sagas`.)

use crate::order::CancelReason;
use crate::order_saga::*;
use crate::product_stock::ReleaseReason;
use evershard_model::{Currency, DecideContext, DemoRng, Money, Workload};

const PRODUCTS: [&str; 4] = ["sku-1", "sku-2", "sku-3", "sku-4"];

/// The next source of a stream, after what the saga has seen from it.
fn source(saga: &SagaInstance, aggregate_type: &str, aggregate_id: &str, event: &str) -> Source {
    let last = saga
        .seen
        .get(&format!("{aggregate_type}/{aggregate_id}"))
        .copied()
        .unwrap_or(0);
    Source {
        aggregate_type: aggregate_type.into(),
        aggregate_id: aggregate_id.into(),
        sequence: last + 1,
        event_type: event.into(),
    }
}

fn created(ctx: &DecideContext, rng: &mut DemoRng) -> OrderSagaCommand {
    let count = rng.range(1, 3) as usize;
    let start = rng.below(PRODUCTS.len() as u64) as usize;
    let lines: Vec<SagaLineSpec> = (0..count)
        .map(|i| SagaLineSpec {
            product_id: PRODUCTS[(start + i) % PRODUCTS.len()].to_owned(),
            quantity: rng.range(1, 5),
        })
        .collect();
    let total = lines.iter().map(|l| l.quantity * 1000).sum();
    Observe {
        source: Source {
            aggregate_type: "Order".into(),
            aggregate_id: ctx.aggregate_id.clone(),
            sequence: 1,
            event_type: "OrderCreated".into(),
        },
        fact: Fact::OrderCreated {
            customer_id: rng.uuid(),
            lines,
            total_amount: Money::from_minor(total),
            currency: Currency::USD,
            created_at: ctx.now,
            expires_at: ctx.now + chrono::TimeDelta::minutes(30),
        },
    }
    .into()
}

impl Workload for OrderSaga {
    fn sample_command(
        state: &OrderSagaState,
        ctx: &DecideContext,
        rng: &mut DemoRng,
    ) -> OrderSagaCommand {
        let Some(saga) = &state.saga else {
            return created(ctx, rng);
        };
        if rng.chance(5) {
            return Tick.into();
        }
        let order_id = saga.order_id.to_string();
        let payment_id = saga.payment_id.to_string();
        let observe =
            |source: Source, fact: Fact| -> OrderSagaCommand { Observe { source, fact }.into() };
        // A line the stock still has to answer, or to release.
        if let Some(line) = saga.lines.iter().find(|l| {
            matches!(
                l.status,
                LineStatus::Requested | LineStatus::ReleaseRequested | LineStatus::CommitRequested
            )
        }) {
            let p = line.product_id.clone();
            let src = source(saga, "ProductStock", &p, "StockEvent");
            return match line.status {
                LineStatus::Requested if rng.chance(85) => observe(
                    src,
                    Fact::StockReserved {
                        product_id: p,
                        reservation_id: saga.order_id,
                    },
                ),
                LineStatus::Requested => observe(
                    Source {
                        aggregate_type: "OrderSaga".into(),
                        aggregate_id: order_id,
                        sequence: 1,
                        event_type: "SagaStarted".into(),
                    },
                    Fact::CommandRejected {
                        step: format!("reserve:{p}"),
                        error: "insufficient stock".into(),
                    },
                ),
                LineStatus::ReleaseRequested => observe(
                    src,
                    Fact::StockReleased {
                        product_id: p,
                        reason: ReleaseReason::Compensation,
                    },
                ),
                _ => observe(src, Fact::StockCommitted { product_id: p }),
            };
        }
        let order_src = source(saga, "Order", &order_id, "OrderEvent");
        let payment_src = source(saga, "Payment", &payment_id, "PaymentEvent");
        match (saga.order, saga.payment) {
            (OrderPhase::Open, PaymentPhase::Requested { attempt }) => match rng.below(100) {
                0..=59 => observe(
                    payment_src,
                    Fact::PaymentCompleted {
                        payment_id: saga.payment_id,
                        amount: saga.total_amount,
                    },
                ),
                _ => observe(
                    payment_src,
                    Fact::PaymentFailed {
                        payment_id: saga.payment_id,
                        attempt,
                        blocked: attempt >= 3,
                        reason: "declined".into(),
                    },
                ),
            },
            (OrderPhase::Open, PaymentPhase::Completed) => observe(order_src, Fact::OrderConfirmed),
            (OrderPhase::Open, _) if saga.cancel_requested || saga.timeout_requested => {
                let reason = if saga.timeout_requested {
                    CancelReason::TimedOut
                } else {
                    CancelReason::StockUnavailable
                };
                observe(order_src, Fact::OrderCancelled { reason })
            }
            (OrderPhase::Confirmed, _) if rng.chance(85) => {
                observe(order_src, Fact::OrderFulfilled)
            }
            (OrderPhase::Confirmed, _) => observe(
                order_src,
                Fact::OrderCancelled {
                    reason: CancelReason::CustomerRequest,
                },
            ),
            (OrderPhase::Cancelled, PaymentPhase::Requested { attempt }) => observe(
                payment_src,
                Fact::PaymentFailed {
                    payment_id: saga.payment_id,
                    attempt,
                    blocked: false,
                    reason: "abandoned".into(),
                },
            ),
            (OrderPhase::Cancelled, PaymentPhase::Completed)
                if saga.refund_requested.is_some() && saga.refunded_total == Money::ZERO =>
            {
                let amount = saga.refund_requested.unwrap_or(Money::ZERO);
                observe(
                    payment_src,
                    Fact::PaymentRefunded {
                        payment_id: saga.payment_id,
                        amount,
                        total_refunded: amount,
                    },
                )
            }
            _ => Tick.into(),
        }
    }

    fn is_finished(state: &OrderSagaState) -> bool {
        state.saga.as_ref().is_some_and(|s| s.outcome.is_some())
    }
}
