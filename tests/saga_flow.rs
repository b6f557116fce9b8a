//! The order / stock / payment saga end to end, through a real engine with a `ManualClock`:
//! the runner's consumer groups drive `OrderSaga`, which drives `ProductStock`, `Order` and
//! `Payment`; the tests play the customer, the payment gateway and the warehouse.
//!
//! One test per path of the issue: the happy path; out of stock; a payment failure then a
//! success; a blocked payment; a reservation that expires; a cancel after payment; a saga
//! that times out. Each waits with bounded polls (`SagaRunner::wait_idle`), moves the clock
//! and fires timers explicitly, and ends with the flow's global invariant check
//! (`evershard::sagas::check_order_flow`) — the same checker the crash torture uses.

mod common;
use chrono::Duration;
use common::t0;
use evershard::aggregates::order::{
    CancelOrder, CancelReason, CreateOrder, FulfilOrder, LineRequest, Order, OrderStatus,
    PlacedOrder, ORDER_CONFIRMATION_TTL_MS,
};
use evershard::aggregates::order_saga::{
    payment_id_for, LineStatus, OrderSaga, OrderSagaEvent, PaymentPhase, SagaInstance, SagaOutcome,
    PAYMENT_RETRY_DELAY_MS,
};
use evershard::aggregates::payment::{CompletePayment, FailPayment, Payment, PaymentStatus};
use evershard::aggregates::product_stock::{
    ProductStock, ProductStockState, ReceiveStock, SetReservationTtl,
};
use evershard::engine::SagaRunner;
use evershard::model::{Clock, Currency, Money};
use evershard::sagas::{
    check_order_flow, order_saga_runner, register_order_flow, OrderSagaOptions,
};
use evershard::{Durability, Engine, ManualClock};
use std::path::Path;
use std::sync::Arc;
use uuid::Uuid;

const IDLE_WAIT: std::time::Duration = std::time::Duration::from_secs(30);
/// Rounds of "fire due timers, wait until the sagas are idle" after a clock move: each
/// round may start commands whose events ask for more (a timeout cancels the order, whose
/// cancellation releases stock, ...), but the chain is short.
const SETTLE_ROUNDS_MAX: usize = 10;

struct Flow {
    _dir: tempfile::TempDir,
    clock: Arc<ManualClock>,
    engine: Engine,
    runner: SagaRunner,
}

async fn open(dir: &Path, clock: &Arc<ManualClock>) -> Engine {
    register_order_flow(Engine::builder(dir))
        .clock(clock.clone())
        .durability(Durability::Buffered { flush_every_ms: 20 })
        // Timers fire when the tests call `run_due_timers` after moving the clock.
        .timer_poll_ms(3_600_000)
        .open()
        .await
        .expect("engine opens")
}

impl Flow {
    async fn start() -> Flow {
        let dir = tempfile::tempdir().unwrap();
        let clock = Arc::new(ManualClock::new(t0()));
        let engine = open(dir.path(), &clock).await;
        let runner = order_saga_runner(&engine, OrderSagaOptions::default()).unwrap();
        Flow {
            _dir: dir,
            clock,
            engine,
            runner,
        }
    }

    /// A flow whose runner sends its commands through `dispatch` (the order saga's own
    /// observers and rejection report), for tests that step between the saga and a target.
    async fn start_dispatching(
        dispatch: impl Fn(
                Engine,
                evershard::engine::SagaSend<evershard::aggregates::order_saga::SagaCommand>,
            ) -> evershard::engine::SagaFuture<
                Result<evershard::engine::Sent, evershard::engine::HandlerError>,
            > + Send
            + Sync
            + 'static,
    ) -> Flow {
        use evershard::sagas::order::{
            observe_order, observe_payment, observe_stock, report_rejection,
        };
        let dir = tempfile::tempdir().unwrap();
        let clock = Arc::new(ManualClock::new(t0()));
        let engine = open(dir.path(), &clock).await;
        let runner =
            SagaRunner::builder::<OrderSaga>(&engine, evershard::aggregates::order_saga::TOPIC)
                .observe::<Order>(evershard::aggregates::order::TOPIC, observe_order)
                .observe::<ProductStock>(evershard::aggregates::product_stock::TOPIC, observe_stock)
                .observe::<Payment>(evershard::aggregates::payment::TOPIC, observe_payment)
                .dispatch(dispatch)
                .on_rejected(report_rejection)
                .start()
                .unwrap();
        Flow {
            _dir: dir,
            clock,
            engine,
            runner,
        }
    }

    /// A flow whose dispatcher cancels the order (as its customer) just before it sends
    /// the step `step`: an order closed between the saga's decision and the dispatch.
    async fn cancelling_before(step: &'static str) -> Flow {
        use evershard::aggregates::order_saga::SagaCommand;
        use evershard::sagas::order::dispatch;
        Flow::start_dispatching(move |engine, send| {
            Box::pin(async move {
                if send.step == step {
                    if let SagaCommand::Order { order_id, .. } = &send.command {
                        engine
                            .execute::<Order>(
                                &order_id.to_string(),
                                CancelOrder {
                                    reason: CancelReason::CustomerRequest,
                                },
                            )
                            .await
                            .unwrap();
                    }
                }
                dispatch(engine, send).await
            })
        })
        .await
    }

    async fn idle(&self) {
        assert!(
            self.runner.wait_idle(IDLE_WAIT).await,
            "the sagas did not settle"
        );
    }

    /// Moves the clock, then fires due timers and waits until nothing moves any more.
    async fn advance(&self, by: Duration) {
        self.clock.advance(by);
        for _ in 0..SETTLE_ROUNDS_MAX {
            let fired = self.engine.run_due_timers().await.unwrap();
            self.idle().await;
            if fired == 0 {
                return;
            }
        }
        panic!("timers kept firing after {SETTLE_ROUNDS_MAX} rounds");
    }

    /// `product` keeps its reservations `ttl_ms` only.
    async fn reservation_ttl(&self, product: &str, ttl_ms: i64) {
        self.engine
            .execute::<ProductStock>(
                product,
                SetReservationTtl {
                    reservation_ttl_ms: ttl_ms,
                },
            )
            .await
            .unwrap();
    }

    async fn stock(&self, product: &str, quantity: i64) {
        self.engine
            .execute::<ProductStock>(product, ReceiveStock { quantity })
            .await
            .unwrap();
    }

    /// Places an order of `lines` (product, quantity, unit price in cents) and waits for the
    /// saga to react.
    async fn place(&self, lines: &[(&str, i64, i64)]) -> Uuid {
        let order_id = Uuid::new_v4();
        self.engine
            .execute::<Order>(
                &order_id.to_string(),
                CreateOrder {
                    idempotency_key: Uuid::new_v4(),
                    customer_id: Uuid::new_v4(),
                    currency: Currency::USD,
                    lines: lines
                        .iter()
                        .map(|(p, q, cents)| LineRequest {
                            product_id: p.to_string(),
                            quantity: *q,
                            unit_price: Money::from_minor(*cents),
                        })
                        .collect(),
                },
            )
            .await
            .unwrap();
        self.idle().await;
        order_id
    }

    async fn gateway_completes(&self, order_id: Uuid, reference: &str) {
        self.engine
            .execute::<Payment>(
                &payment_id_for(order_id).to_string(),
                CompletePayment {
                    provider_reference: reference.into(),
                    attempt: None,
                },
            )
            .await
            .unwrap();
        self.idle().await;
    }

    async fn gateway_fails(&self, order_id: Uuid, reason: &str) {
        self.engine
            .execute::<Payment>(
                &payment_id_for(order_id).to_string(),
                FailPayment {
                    reason: reason.into(),
                    attempt: None,
                },
            )
            .await
            .unwrap();
        self.idle().await;
    }

    async fn saga(&self, order_id: Uuid) -> SagaInstance {
        let (state, _) = self
            .engine
            .state::<OrderSaga>(&order_id.to_string())
            .await
            .unwrap();
        state.saga.expect("the saga started")
    }

    async fn order(&self, order_id: Uuid) -> PlacedOrder {
        let (state, _) = self
            .engine
            .state::<Order>(&order_id.to_string())
            .await
            .unwrap();
        state.order.expect("the order exists")
    }

    async fn order_status(&self, order_id: Uuid) -> OrderStatus {
        self.order(order_id).await.status
    }

    async fn product(&self, product: &str) -> ProductStockState {
        self.engine.state::<ProductStock>(product).await.unwrap().0
    }

    async fn payment_status(&self, order_id: Uuid) -> PaymentStatus {
        let (state, _) = self
            .engine
            .state::<Payment>(&payment_id_for(order_id).to_string())
            .await
            .unwrap();
        state.status
    }

    /// Moves the clock past every deadline, then checks the flow's invariants and that no
    /// step was dead-lettered.
    async fn finish_and_check(self) {
        self.advance(Duration::hours(25)).await;
        let report = check_order_flow(self.engine.journal(), self.clock.now()).unwrap();
        assert!(report.is_clean(), "invariants: {:#?}", report.violations);
        assert_eq!(report.unfinished, 0, "{report:#?}");
        assert_eq!(
            self.runner.dead_lettered(),
            0,
            "a saga step was dead-lettered"
        );
        self.runner.stop().await.unwrap();
        self.engine.shutdown().await.unwrap();
    }
}

fn saga_steps(engine: &Engine, order_id: Uuid) -> Vec<&'static str> {
    use evershard::model::DomainEvent;
    engine
        .history::<OrderSaga>(&order_id.to_string())
        .unwrap()
        .iter()
        .map(|e| e.payload.event_type())
        .collect()
}

fn finished(saga: &SagaInstance) -> Option<SagaOutcome> {
    saga.outcome
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn happy_path_reserves_pays_confirms_and_fulfils() {
    let flow = Flow::start().await;
    flow.stock("sku-a", 10).await;
    flow.stock("sku-b", 5).await;
    let order = flow.place(&[("sku-a", 2, 1000), ("sku-b", 1, 500)]).await;

    let saga = flow.saga(order).await;
    assert!(
        saga.lines.iter().all(|l| l.status == LineStatus::Reserved),
        "{saga:?}"
    );
    assert_eq!(saga.payment, PaymentPhase::Requested { attempt: 1 });
    assert_eq!(
        flow.order_status(order).await,
        OrderStatus::PaymentRequested
    );
    assert_eq!(flow.payment_status(order).await, PaymentStatus::Initiated);
    assert_eq!(flow.product("sku-a").await.reserved, 2);

    flow.gateway_completes(order, "psp-1").await;
    assert_eq!(flow.order_status(order).await, OrderStatus::Confirmed);
    let saga = flow.saga(order).await;
    assert!(
        saga.lines.iter().all(|l| l.status == LineStatus::Confirmed),
        "{saga:?}"
    );
    // Confirmed reservations no longer expire: the 30-minute TTL passes harmlessly.
    flow.advance(Duration::minutes(31)).await;
    assert_eq!(flow.product("sku-a").await.reserved, 2);

    // The warehouse hands the goods over.
    flow.engine
        .execute::<Order>(&order.to_string(), FulfilOrder)
        .await
        .unwrap();
    flow.idle().await;
    assert_eq!(flow.order_status(order).await, OrderStatus::Fulfilled);
    let a = flow.product("sku-a").await;
    assert_eq!((a.on_hand, a.reserved), (8, 0));
    let b = flow.product("sku-b").await;
    assert_eq!((b.on_hand, b.reserved), (4, 0));
    assert_eq!(
        finished(&flow.saga(order).await),
        Some(SagaOutcome::Fulfilled)
    );
    assert_eq!(
        saga_steps(&flow.engine, order),
        [
            "SagaStarted",
            "LineReserved",
            "LineReserved",
            "PaymentAttemptRequested",
            "PaymentSucceeded",
            "OrderConfirmedSeen",
            "LineConfirmed",
            "LineConfirmed",
            "OrderFulfilledSeen",
            "LineCommitted",
            "LineCommitted",
            "SagaFinished"
        ]
    );
    flow.finish_and_check().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn out_of_stock_releases_the_reserved_lines_and_cancels() {
    let flow = Flow::start().await;
    flow.stock("sku-a", 10).await;
    flow.stock("sku-b", 1).await;
    let order = flow.place(&[("sku-a", 2, 1000), ("sku-b", 3, 500)]).await;

    assert_eq!(flow.order_status(order).await, OrderStatus::Cancelled);
    assert_eq!(
        flow.order(order).await.cancel_reason,
        Some(CancelReason::StockUnavailable)
    );
    let saga = flow.saga(order).await;
    assert_eq!(saga.outcome, Some(SagaOutcome::Cancelled));
    assert_eq!(saga.line("sku-b").unwrap().status, LineStatus::Rejected);
    assert_eq!(saga.line("sku-a").unwrap().status, LineStatus::Released);
    assert_eq!(
        saga.payment,
        PaymentPhase::NotRequested,
        "no payment without stock"
    );
    let a = flow.product("sku-a").await;
    assert_eq!((a.on_hand, a.reserved), (10, 0));
    assert_eq!(flow.product("sku-b").await.reserved, 0);
    flow.finish_and_check().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_payment_is_retried_and_then_succeeds() {
    let flow = Flow::start().await;
    flow.stock("sku-a", 10).await;
    let order = flow.place(&[("sku-a", 1, 2500)]).await;

    flow.gateway_fails(order, "card declined").await;
    let saga = flow.saga(order).await;
    let PaymentPhase::RetryScheduled { attempt, retry_at } = saga.payment else {
        panic!("a retry is scheduled: {saga:?}");
    };
    assert_eq!(attempt, 1);
    assert_eq!(
        retry_at,
        flow.clock.now() + Duration::milliseconds(PAYMENT_RETRY_DELAY_MS)
    );
    // Not before its time.
    flow.advance(Duration::milliseconds(PAYMENT_RETRY_DELAY_MS - 1))
        .await;
    assert_eq!(flow.payment_status(order).await, PaymentStatus::Failed);
    flow.advance(Duration::milliseconds(1)).await;
    assert_eq!(flow.payment_status(order).await, PaymentStatus::Initiated);
    assert_eq!(
        flow.saga(order).await.payment,
        PaymentPhase::Requested { attempt: 2 }
    );

    flow.gateway_completes(order, "psp-2").await;
    assert_eq!(flow.order_status(order).await, OrderStatus::Confirmed);
    flow.engine
        .execute::<Order>(&order.to_string(), FulfilOrder)
        .await
        .unwrap();
    flow.idle().await;
    assert_eq!(flow.saga(order).await.outcome, Some(SagaOutcome::Fulfilled));
    flow.finish_and_check().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_blocked_payment_releases_the_stock_and_cancels() {
    let flow = Flow::start().await;
    flow.stock("sku-a", 10).await;
    let order = flow.place(&[("sku-a", 4, 100)]).await;
    for attempt in 1..=3 {
        assert_eq!(
            flow.saga(order).await.payment,
            PaymentPhase::Requested { attempt }
        );
        flow.gateway_fails(order, "insufficient funds").await;
        if attempt < 3 {
            flow.advance(Duration::milliseconds(PAYMENT_RETRY_DELAY_MS))
                .await;
        }
    }
    assert_eq!(flow.payment_status(order).await, PaymentStatus::Blocked);
    let placed = flow.order(order).await;
    assert_eq!(placed.status, OrderStatus::Cancelled);
    assert_eq!(placed.cancel_reason, Some(CancelReason::PaymentFailed));
    assert_eq!(flow.product("sku-a").await.reserved, 0);
    let saga = flow.saga(order).await;
    assert_eq!(saga.outcome, Some(SagaOutcome::Cancelled));
    assert_eq!(saga.payment, PaymentPhase::Blocked);
    flow.finish_and_check().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_expired_reservation_cancels_the_order_and_releases_the_other_lines() {
    let flow = Flow::start().await;
    flow.stock("sku-a", 10).await;
    flow.stock("sku-b", 10).await;
    // sku-b keeps reservations one minute only: it expires long before the order's 30 min.
    flow.reservation_ttl("sku-b", 60_000).await;
    let order = flow.place(&[("sku-a", 3, 100), ("sku-b", 2, 100)]).await;
    assert_eq!(
        flow.order_status(order).await,
        OrderStatus::PaymentRequested
    );

    flow.advance(Duration::minutes(2)).await;
    let placed = flow.order(order).await;
    assert_eq!(placed.status, OrderStatus::Cancelled);
    assert_eq!(placed.cancel_reason, Some(CancelReason::ReservationExpired));
    assert_eq!(
        flow.product("sku-a").await.reserved,
        0,
        "the other line is released"
    );
    assert_eq!(flow.product("sku-b").await.reserved, 0);
    // The payment attempt is still with the gateway: the saga waits for its answer. A late
    // completion is refunded.
    assert_eq!(flow.saga(order).await.outcome, None);
    flow.gateway_completes(order, "psp-late").await;
    let (payment, _) = flow
        .engine
        .state::<Payment>(&payment_id_for(order).to_string())
        .await
        .unwrap();
    assert_eq!(payment.status, PaymentStatus::Refunded);
    assert_eq!(payment.refunded_total, Money::from_minor(500));
    assert_eq!(flow.saga(order).await.outcome, Some(SagaOutcome::Cancelled));
    flow.finish_and_check().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancelling_a_paid_order_refunds_it_and_returns_the_stock() {
    let flow = Flow::start().await;
    flow.stock("sku-a", 10).await;
    let order = flow.place(&[("sku-a", 5, 1999)]).await;
    flow.gateway_completes(order, "psp-1").await;
    assert_eq!(flow.order_status(order).await, OrderStatus::Confirmed);

    flow.engine
        .execute::<Order>(
            &order.to_string(),
            CancelOrder {
                reason: CancelReason::CustomerRequest,
            },
        )
        .await
        .unwrap();
    flow.idle().await;
    let (payment, _) = flow
        .engine
        .state::<Payment>(&payment_id_for(order).to_string())
        .await
        .unwrap();
    assert_eq!(payment.status, PaymentStatus::Refunded);
    assert_eq!(payment.refunded_total, Money::from_minor(5 * 1999));
    assert_eq!(payment.refunds.len(), 1, "one refund");
    let a = flow.product("sku-a").await;
    assert_eq!((a.on_hand, a.reserved), (10, 0));
    let saga = flow.saga(order).await;
    assert_eq!(saga.outcome, Some(SagaOutcome::Cancelled));
    let finished = flow
        .engine
        .history::<OrderSaga>(&order.to_string())
        .unwrap()
        .into_iter()
        .find_map(|e| match e.payload {
            OrderSagaEvent::SagaFinished(f) => Some(f),
            _ => None,
        })
        .unwrap();
    assert!(finished.compensated);
    assert_eq!(finished.refunded, Some(Money::from_minor(5 * 1999)));
    flow.finish_and_check().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_saga_not_confirmed_within_30_minutes_is_compensated() {
    let flow = Flow::start().await;
    flow.stock("sku-a", 10).await;
    let order = flow.place(&[("sku-a", 1, 700)]).await;
    // The gateway fails once, and the retry is never answered.
    flow.gateway_fails(order, "timeout at the provider").await;
    flow.advance(Duration::milliseconds(PAYMENT_RETRY_DELAY_MS))
        .await;
    assert_eq!(
        flow.saga(order).await.payment,
        PaymentPhase::Requested { attempt: 2 }
    );
    let deadline = flow.saga(order).await.deadline;
    assert_eq!(
        deadline,
        t0() + Duration::milliseconds(ORDER_CONFIRMATION_TTL_MS)
    );

    flow.advance(deadline - flow.clock.now() - Duration::microseconds(1))
        .await;
    assert_eq!(
        flow.order_status(order).await,
        OrderStatus::PaymentRequested
    );
    flow.advance(Duration::microseconds(1)).await;
    let placed = flow.order(order).await;
    assert_eq!(placed.status, OrderStatus::Cancelled);
    assert!(
        matches!(
            placed.cancel_reason,
            Some(CancelReason::TimedOut | CancelReason::ReservationExpired)
        ),
        "{:?}",
        placed.cancel_reason
    );
    assert_eq!(flow.product("sku-a").await.reserved, 0);
    assert!(saga_steps(&flow.engine, order).contains(&"OrderCancelledSeen"));
    // The gateway finally declines the open attempt: the saga is settled.
    flow.gateway_fails(order, "expired").await;
    assert_eq!(flow.saga(order).await.outcome, Some(SagaOutcome::Cancelled));
    flow.finish_and_check().await;
}

/// The order is cancelled between the saga's decision to ask for the payment and the
/// dispatch of that step (here by the dispatcher itself, just before `request-payment`):
/// the order refuses `request-payment`, so `payment:1` is not sent — the customer is never
/// charged — and is reported as refused, which ends the payment phase; the saga finishes
/// cancelled with the stock released.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_payment_is_not_started_for_an_order_closed_before_its_dispatch() {
    let flow = Flow::cancelling_before("request-payment").await;
    flow.stock("sku-a", 10).await;
    let order = flow.place(&[("sku-a", 2, 500)]).await;
    flow.idle().await;
    assert_eq!(flow.order_status(order).await, OrderStatus::Cancelled);
    assert!(
        flow.engine
            .history::<Payment>(&payment_id_for(order).to_string())
            .unwrap()
            .is_empty(),
        "no payment was started"
    );
    let saga = flow.saga(order).await;
    assert_eq!(saga.outcome, Some(SagaOutcome::Cancelled), "{saga:?}");
    let a = flow.product("sku-a").await;
    assert_eq!((a.on_hand, a.reserved), (10, 0));
    flow.finish_and_check().await;
}

/// The race a review found: sku-b's reservations expire after one minute, and the order is
/// paid after that but before the stock's expiry ran. The saga's `ConfirmReservation` is
/// refused (expired), so the order never becomes ready for fulfilment and a hand-over is
/// refused; the stock's expiry then cancels it with a refund. (Before, the hand-over was
/// accepted, `commit:sku-b` was refused, and the saga finished fulfilled with sku-b's goods
/// gone but never taken off its stock.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_paid_order_whose_reservation_expired_is_not_handed_over_but_refunded() {
    use evershard::aggregates::order::OrderError;
    use evershard::engine::CommandError;
    let flow = Flow::start().await;
    flow.stock("sku-a", 10).await;
    flow.stock("sku-b", 10).await;
    flow.reservation_ttl("sku-b", 60_000).await;
    let order = flow.place(&[("sku-a", 3, 100), ("sku-b", 2, 100)]).await;
    // Past sku-b's deadline; its expiry timer has not run (timers fire on `advance`).
    flow.clock.advance(Duration::minutes(2));
    flow.gateway_completes(order, "psp-1").await;
    assert_eq!(flow.order_status(order).await, OrderStatus::Confirmed);
    let saga = flow.saga(order).await;
    let status = |p: &str| saga.line(p).unwrap().status;
    assert_eq!(status("sku-a"), LineStatus::Confirmed, "{saga:?}");
    assert_eq!(status("sku-b"), LineStatus::Reserved, "{saga:?}");

    // The warehouse tries to hand it over.
    match flow
        .engine
        .execute::<Order>(&order.to_string(), FulfilOrder)
        .await
    {
        Err(CommandError::Rejected(OrderError::ReservationNotConfirmed { product_id })) => {
            assert_eq!(product_id, "sku-b")
        }
        other => panic!("the hand-over should be refused, got {other:?}"),
    }

    // The stock's expiry reaches the order.
    flow.advance(Duration::zero()).await;
    let placed = flow.order(order).await;
    assert_eq!(placed.status, OrderStatus::Cancelled);
    assert_eq!(placed.cancel_reason, Some(CancelReason::ReservationExpired));
    assert_eq!(flow.payment_status(order).await, PaymentStatus::Refunded);
    for product in ["sku-a", "sku-b"] {
        let p = flow.product(product).await;
        assert_eq!((p.on_hand, p.reserved), (10, 0), "{product}");
    }
    assert_eq!(flow.saga(order).await.outcome, Some(SagaOutcome::Cancelled));
    flow.finish_and_check().await;
}

/// A store upgraded from before `record-confirmed` existed: its sagas recorded the stock's
/// confirmations but never told the order, so a paid order could never be handed over.
/// Played here by a dispatcher that drops that step; `resume_confirmed_lines` sends what a
/// saga started after the change would have sent, once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resume_confirmed_lines_readies_orders_paid_before_the_upgrade() {
    use evershard::sagas::order::{dispatch, resume_confirmed_lines};
    let flow = Flow::start_dispatching(|engine, send| {
        Box::pin(async move {
            if send.step.starts_with("record-confirmed:") {
                return Ok(evershard::engine::Sent::Done); // the old outbox
            }
            dispatch(engine, send).await
        })
    })
    .await;
    flow.stock("sku-a", 10).await;
    flow.stock("sku-b", 10).await;
    let order = flow.place(&[("sku-a", 2, 100), ("sku-b", 1, 100)]).await;
    flow.gateway_completes(order, "psp-1").await;
    let saga = flow.saga(order).await;
    assert!(
        saga.lines.iter().all(|l| l.status == LineStatus::Confirmed),
        "{saga:?}"
    );
    let id = order.to_string();
    let fulfil = || flow.engine.execute::<Order>(&id, FulfilOrder);
    assert!(fulfil().await.is_err(), "not ready before the upgrade step");

    let first = resume_confirmed_lines(&flow.engine).await.unwrap();
    assert_eq!((first.recorded, first.failed.len()), (2, 0), "{first:?}");
    let again = resume_confirmed_lines(&flow.engine).await.unwrap();
    assert_eq!((again.recorded, again.failed.len()), (0, 0), "{again:?}");
    assert!(flow.order(order).await.stock_confirmed());
    fulfil().await.unwrap();
    flow.idle().await;
    assert_eq!(flow.saga(order).await.outcome, Some(SagaOutcome::Fulfilled));
    flow.finish_and_check().await;
}

/// The same for a retry (found by review): the order is cancelled between the retry's
/// decision and its dispatch (a customer's cancel, or a reservation expiry, that the saga has
/// not seen yet when the retry's timer fires). `request-payment:2` is refused, so the second
/// attempt is never started and the customer is not charged.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retry_is_not_started_for_an_order_closed_before_its_dispatch() {
    use evershard::aggregates::payment::PaymentEvent;
    let flow = Flow::cancelling_before("request-payment:2").await;
    flow.stock("sku-a", 10).await;
    let order = flow.place(&[("sku-a", 1, 2500)]).await;
    flow.gateway_fails(order, "card declined").await;
    flow.advance(Duration::milliseconds(PAYMENT_RETRY_DELAY_MS))
        .await;
    assert_eq!(flow.order_status(order).await, OrderStatus::Cancelled);
    let attempts = flow
        .engine
        .history::<Payment>(&payment_id_for(order).to_string())
        .unwrap()
        .iter()
        .filter(|e| matches!(e.payload, PaymentEvent::PaymentInitiated(_)))
        .count();
    assert_eq!(attempts, 1, "the retry was not started");
    let saga = flow.saga(order).await;
    assert_eq!(saga.outcome, Some(SagaOutcome::Cancelled), "{saga:?}");
    flow.finish_and_check().await;
}
