//! The order saga on an engine: observers of `business.orders`, `business.inventory` and
//! `business.payments`, and the dispatch of its commands to `ProductStock`, `Order` and
//! `Payment`.
//!
//! ```no_run
//! # async fn run() -> Result<(), Box<dyn std::error::Error>> {
//! use evershard_engine::Engine;
//! use evershard_sagas::{order_saga_runner, register_order_flow, OrderSagaOptions};
//!
//! let engine = register_order_flow(Engine::builder("./data")).open().await?;
//! let saga = order_saga_runner(&engine, OrderSagaOptions::default())?;
//! // ... place orders with `engine.execute::<Order>(..)`; the saga does the rest ...
//! saga.stop().await?;
//! engine.shutdown().await?;
//! # Ok(()) }
//! ```

use evershard_aggregates::order::{Order, OrderEvent, TOPIC as ORDERS_TOPIC};
use evershard_aggregates::order_saga::{
    Fact, Observe, OrderSaga, OrderSagaCommand, SagaCommand, SagaLineSpec, Source,
    TOPIC as SAGA_TOPIC,
};
use evershard_aggregates::payment::{
    Payment, PaymentDuplicateGuard, PaymentEvent, TargetType, TOPIC as PAYMENTS_TOPIC,
};
use evershard_aggregates::product_stock::{
    ProductStock, ProductStockEvent, TOPIC as INVENTORY_TOPIC,
};
use evershard_engine::model::{Aggregate, EventEnvelope};
use evershard_engine::{
    send_to, EngineBuilder, RejectedStep, SagaRunner, SagaSend, SagaStartError,
    SubscriptionOptions, SAGA_RETRY,
};
use evershard_engine::{ConsumerOptions, Engine, StartFrom};

/// How the order saga's runner starts.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct OrderSagaOptions {
    /// Where its consumer groups start reading in this process: `Committed` (the default:
    /// where they stopped, offset 0 for new groups — every order in the store gets a saga),
    /// or a time (only events from then on, e.g. when the saga is introduced into a store
    /// with history). The start applies to the group, not to each member: members that take
    /// a partition over later continue where the group stands (docs/runtime-semantics.md). A
    /// runner restarted with the same time reads again from it (the saga takes what it
    /// already saw as repeats); after its first start, `Committed` resumes where it stopped.
    pub start: StartFrom,
    /// The prefix of its consumer groups; `None`: `saga.OrderSaga`.
    pub group_prefix: Option<String>,
}

/// Registers the flow's four types with an engine being built: `ProductStock`, `Order`,
/// `Payment` (with its cross-payment duplicate guard) and `OrderSaga`.
pub fn register_order_flow(builder: EngineBuilder) -> EngineBuilder {
    builder
        .register::<ProductStock>()
        .register::<Order>()
        .register::<Payment>()
        .register::<OrderSaga>()
        .guard::<Payment>(PaymentDuplicateGuard::new())
}

/// Starts the order saga on `engine` (which must run the four types of
/// [`register_order_flow`]).
pub fn order_saga_runner(
    engine: &Engine,
    options: OrderSagaOptions,
) -> Result<SagaRunner, SagaStartError> {
    let subscription = SubscriptionOptions {
        consumer: ConsumerOptions {
            start: options.start,
        },
        retry: SAGA_RETRY,
        ..SubscriptionOptions::default()
    };
    let mut builder = SagaRunner::builder::<OrderSaga>(engine, SAGA_TOPIC);
    if let Some(prefix) = options.group_prefix {
        builder = builder.group_prefix(prefix);
    }
    builder
        .observe::<Order>(ORDERS_TOPIC, observe_order)
        .observe::<ProductStock>(INVENTORY_TOPIC, observe_stock)
        .observe::<Payment>(PAYMENTS_TOPIC, observe_payment)
        .dispatch(|engine, send| Box::pin(dispatch(engine, send)))
        .on_rejected(report_rejection)
        .options(subscription)
        .start()
}

fn source<E: evershard_engine::model::DomainEvent>(
    aggregate_type: &str,
    envelope: &EventEnvelope<E>,
) -> Source {
    Source {
        aggregate_type: aggregate_type.to_owned(),
        aggregate_id: envelope.aggregate_id.clone(),
        sequence: envelope.sequence,
        event_type: envelope.event_type.clone(),
    }
}

fn observation<E: evershard_engine::model::DomainEvent>(
    saga_id: String,
    aggregate_type: &str,
    envelope: &EventEnvelope<E>,
    fact: Fact,
) -> Option<(String, OrderSagaCommand)> {
    let source = source(aggregate_type, envelope);
    Some((saga_id, Observe { source, fact }.into()))
}

/// Order events: the creation starts the saga; confirmation, fulfilment and cancellation
/// drive it. The order's own acknowledgements of the saga's commands are not needed.
pub fn observe_order(envelope: &EventEnvelope<OrderEvent>) -> Option<(String, OrderSagaCommand)> {
    let fact = match &envelope.payload {
        OrderEvent::OrderCreated(e) => Fact::OrderCreated {
            customer_id: e.customer_id,
            lines: e
                .lines
                .iter()
                .map(|l| SagaLineSpec {
                    product_id: l.product_id.clone(),
                    quantity: l.quantity,
                })
                .collect(),
            total_amount: e.total_amount,
            currency: e.currency,
            created_at: e.created_at,
            expires_at: e.expires_at,
        },
        OrderEvent::OrderConfirmed(_) => Fact::OrderConfirmed,
        OrderEvent::OrderFulfilled(_) => Fact::OrderFulfilled,
        OrderEvent::OrderCancelled(e) => Fact::OrderCancelled { reason: e.reason },
        OrderEvent::OrderLineReserved(_)
        | OrderEvent::OrderStockReserved(_)
        | OrderEvent::OrderPaymentRequested(_)
        | OrderEvent::OrderReservationConfirmed(_)
        | OrderEvent::OrderReadyForFulfilment(_) => return None,
    };
    observation(envelope.aggregate_id.clone(), Order::TYPE, envelope, fact)
}

/// Stock events of reservations the saga makes (reservation id = order id).
pub fn observe_stock(
    envelope: &EventEnvelope<ProductStockEvent>,
) -> Option<(String, OrderSagaCommand)> {
    let product_id = envelope.aggregate_id.clone();
    let (order_id, reservation_id, fact) = match &envelope.payload {
        ProductStockEvent::StockReserved(e) => (
            e.order_id,
            e.reservation_id,
            Fact::StockReserved {
                product_id,
                reservation_id: e.reservation_id,
            },
        ),
        ProductStockEvent::StockReservationConfirmed(e) => (
            e.order_id,
            e.reservation_id,
            Fact::StockReservationConfirmed { product_id },
        ),
        ProductStockEvent::StockReleased(e) => (
            e.order_id,
            e.reservation_id,
            Fact::StockReleased {
                product_id,
                reason: e.reason,
            },
        ),
        ProductStockEvent::StockCommitted(e) => (
            e.order_id,
            e.reservation_id,
            Fact::StockCommitted { product_id },
        ),
        _ => return None,
    };
    // A reservation made by someone else for the order (another id) is not the saga's.
    if order_id != reservation_id {
        return None;
    }
    observation(order_id.to_string(), ProductStock::TYPE, envelope, fact)
}

/// Payment events of payments for an order.
pub fn observe_payment(
    envelope: &EventEnvelope<PaymentEvent>,
) -> Option<(String, OrderSagaCommand)> {
    let (target_type, order_id, fact) = match &envelope.payload {
        PaymentEvent::PaymentCompleted(e) => (
            e.target_type,
            e.target_id,
            Fact::PaymentCompleted {
                payment_id: e.payment_id,
                amount: e.amount,
            },
        ),
        PaymentEvent::PaymentFailed(e) => (
            e.target_type,
            e.target_id,
            Fact::PaymentFailed {
                payment_id: e.payment_id,
                attempt: e.attempt,
                blocked: e.blocked,
                reason: e.reason.clone(),
            },
        ),
        PaymentEvent::PaymentRefunded(e) => (
            e.target_type,
            e.target_id,
            Fact::PaymentRefunded {
                payment_id: e.payment_id,
                amount: e.amount,
                total_refunded: e.total_refunded,
            },
        ),
        _ => return None,
    };
    if target_type != TargetType::Order {
        return None;
    }
    observation(order_id.to_string(), Payment::TYPE, envelope, fact)
}

/// Sends one of the order saga's commands to its target (`order_saga_runner`'s dispatcher;
/// public so that a runner built by hand, a test's, can wrap it).
pub async fn dispatch(
    engine: Engine,
    send: SagaSend<SagaCommand>,
) -> Result<evershard_engine::Sent, evershard_engine::HandlerError> {
    match send.command {
        SagaCommand::Stock {
            product_id,
            command,
        } => send_to::<ProductStock>(&engine, &product_id, command, send.metadata).await,
        SagaCommand::Order { order_id, command } => {
            send_to::<Order>(&engine, &order_id.to_string(), command, send.metadata).await
        }
        SagaCommand::Payment {
            payment_id,
            command,
        } => send_to::<Payment>(&engine, &payment_id.to_string(), command, send.metadata).await,
    }
}

/// A rejected step, reported to the saga as an observation of its own event.
pub fn report_rejection(rejected: &RejectedStep) -> OrderSagaCommand {
    Observe {
        source: Source {
            aggregate_type: OrderSaga::TYPE.to_owned(),
            aggregate_id: rejected.saga_id.clone(),
            sequence: rejected.saga_sequence,
            event_type: rejected.saga_event_type.clone(),
        },
        fact: Fact::CommandRejected {
            step: rejected.step.clone(),
            error: rejected.error.clone(),
        },
    }
    .into()
}

/// Why [`resume_confirmed_lines`] could not run at all.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ResumeError {
    #[error("reading the store: {0}")]
    Storage(#[from] evershard_engine::StorageError),
    #[error("the scan of the sagas did not finish: {0}")]
    Scan(String),
}

/// What [`resume_confirmed_lines`] did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ResumeReport {
    /// Lines recorded as confirmed on their order.
    pub recorded: usize,
    /// Sagas (by id) it could not look at or resume, with why; the others were resumed. A
    /// later run tries them again.
    pub failed: Vec<(String, String)>,
}

/// The upgrade step for stores whose orders were paid before `FulfilOrder` needed every
/// line's reservation recorded as confirmed (2026-11-28): for each saga not finished whose
/// order is confirmed, it sends the order a `RecordReservationConfirmed` for every line the
/// saga saw confirmed by its stock and the order has not recorded, with the saga's own step
/// key (`record-confirmed:{product}`), so the order becomes ready for fulfilment
/// (`OrderReadyForFulfilment`) as a saga started after the change would have made it. Before
/// the change that step did not exist, and nothing else would send it: such an order could
/// never be handed over. Idempotent (a second run sends nothing new). It reads every saga
/// and its order through the journal (read-only, on a blocking thread), so run it once after
/// upgrading, with the engine open; a saga it cannot read or resume is listed in the report
/// and does not stop the others.
pub async fn resume_confirmed_lines(engine: &Engine) -> Result<ResumeReport, ResumeError> {
    use evershard_aggregates::order::RecordReservationConfirmed;
    use evershard_aggregates::order_saga::{LineStatus, OrderPhase};
    use evershard_engine::model::{step_key, Metadata};
    use evershard_engine::{repository, StreamId};
    let journal = engine.journal().clone();
    // (saga id = order id, product) of every line to record, and the sagas not readable.
    let scan = tokio::task::spawn_blocking(move || {
        let mut todo = Vec::new();
        let mut failed = Vec::new();
        for stream in journal.streams(Some(OrderSaga::TYPE)) {
            let saga_id = stream?.0.aggregate_id;
            let saga_stream = StreamId::new(OrderSaga::TYPE, saga_id.clone());
            let order_stream = StreamId::new(Order::TYPE, saga_id.clone());
            let loaded = repository::load::<OrderSaga>(&journal, &saga_stream, u64::MAX, true)
                .and_then(|saga| {
                    let order = repository::load::<Order>(&journal, &order_stream, u64::MAX, true)?;
                    Ok((saga.state.saga, order.state.order))
                });
            let (saga, order) = match loaded {
                Ok((Some(saga), Some(order))) => (saga, order),
                Ok(_) => continue,
                Err(e) => {
                    failed.push((saga_id, e.to_string()));
                    continue;
                }
            };
            if saga.outcome.is_some() || saga.order != OrderPhase::Confirmed {
                continue;
            }
            for line in saga
                .lines
                .iter()
                .filter(|l| l.status == LineStatus::Confirmed)
            {
                if order
                    .line(&line.product_id)
                    .is_some_and(|l| !l.reservation_confirmed)
                {
                    todo.push((saga_id.clone(), saga.order_id, line.product_id.clone()));
                }
            }
        }
        Ok::<_, ResumeError>((todo, failed))
    })
    .await
    .map_err(|e| ResumeError::Scan(e.to_string()))??;
    let (todo, mut failed) = scan;
    let mut recorded = 0;
    for (saga_id, order_id, product_id) in todo {
        let step = format!("record-confirmed:{product_id}");
        let metadata = Metadata::new("evershard-sagas").idempotency_key(step_key(
            OrderSaga::TYPE,
            &saga_id,
            &step,
        ));
        let command = RecordReservationConfirmed {
            product_id,
            // The saga's reservation id is the order id.
            reservation_id: order_id,
        };
        match send_to::<Order>(engine, &saga_id, command, metadata).await {
            Ok(evershard_engine::Sent::Done) => recorded += 1,
            // The order closed meanwhile: nothing to resume.
            Ok(_) => {}
            Err(e) => failed.push((saga_id, e.to_string())),
        }
    }
    Ok(ResumeReport { recorded, failed })
}
