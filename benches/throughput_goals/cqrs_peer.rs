//! The peer of issue #13's ratio: the same ProductStock decisions, run through cqrs-es 0.5's
//! `CqrsFramework` over an in-memory event store (not durable). cqrs-es's own `MemStore`
//! prints two lines to stdout per command and copies an aggregate's whole event list on each
//! commit, so the peer gets [`QuietMemStore`]: MemStore's design (a locked map of event
//! lists; every command loads and replays its aggregate's events, as cqrs-es does without
//! snapshots) without the printing, appending in place. The domain logic is evershard's own
//! ProductStock (`decide` and `apply`), so the two rates differ only in what the frameworks
//! do around it.

use cqrs_es::{AggregateContext, AggregateError, EventEnvelope, EventStore};
use evershard::aggregates::product_stock::{
    ProductStock, ProductStockCommand, ProductStockError, ProductStockEvent, ProductStockState,
};
use evershard::model::{Aggregate, DecideContext, DomainEvent, Workload};
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

/// ProductStock's state as a cqrs-es aggregate.
#[derive(Debug, Default, Serialize, Deserialize)]
struct Stock {
    id: String,
    state: ProductStockState,
}

/// ProductStock's event as a cqrs-es event.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct StockEvent(ProductStockEvent);

impl cqrs_es::DomainEvent for StockEvent {
    fn event_type(&self) -> String {
        self.0.event_type().to_owned()
    }
    fn event_version(&self) -> String {
        self.0.event_version().to_owned()
    }
}

/// A command with the aggregate's id, which `decide` needs in its context.
struct StockCommand {
    id: String,
    command: ProductStockCommand,
}

impl cqrs_es::Aggregate for Stock {
    const TYPE: &'static str = "ProductStock";
    type Command = StockCommand;
    type Event = StockEvent;
    type Error = ProductStockError;
    type Services = ();

    async fn handle(
        &mut self,
        command: StockCommand,
        _services: &(),
        sink: &cqrs_es::event_sink::EventSink<Self>,
    ) -> Result<(), ProductStockError> {
        self.id = command.id;
        let ctx = DecideContext::new(self.id.clone(), chrono::Utc::now());
        for event in ProductStock::decide(&self.state, &command.command, &ctx)? {
            sink.write(StockEvent(event), self).await;
        }
        Ok(())
    }

    fn apply(&mut self, event: StockEvent) {
        ProductStock::apply(&mut self.state, &event.0);
    }
}

/// cqrs-es's `MemStore`, quiet, appending in place.
#[derive(Default)]
struct QuietMemStore {
    events: RwLock<HashMap<String, Vec<EventEnvelope<Stock>>>>,
}

struct Loaded {
    aggregate_id: String,
    aggregate: Stock,
    sequence: usize,
}

impl AggregateContext<Stock> for Loaded {
    fn aggregate(&mut self) -> &mut Stock {
        &mut self.aggregate
    }
}

type StoreResult<T> = Result<T, AggregateError<ProductStockError>>;

impl EventStore<Stock> for QuietMemStore {
    type AC = Loaded;

    async fn load_events(&self, aggregate_id: &str) -> StoreResult<Vec<EventEnvelope<Stock>>> {
        let map = self.events.read().expect("the peer's store lock");
        Ok(map.get(aggregate_id).cloned().unwrap_or_default())
    }

    async fn load_aggregate(&self, aggregate_id: &str) -> StoreResult<Loaded> {
        let mut aggregate = Stock::default();
        let mut sequence = 0;
        for envelope in self.load_events(aggregate_id).await? {
            sequence = envelope.sequence;
            cqrs_es::Aggregate::apply(&mut aggregate, envelope.payload);
        }
        Ok(Loaded {
            aggregate_id: aggregate_id.to_owned(),
            aggregate,
            sequence,
        })
    }

    async fn commit(
        &self,
        events: Vec<StockEvent>,
        context: Loaded,
        metadata: HashMap<String, String>,
    ) -> StoreResult<Vec<EventEnvelope<Stock>>> {
        let wrapped: Vec<EventEnvelope<Stock>> = events
            .into_iter()
            .enumerate()
            .map(|(i, payload)| EventEnvelope {
                aggregate_id: context.aggregate_id.clone(),
                sequence: context.sequence + i + 1,
                payload,
                metadata: metadata.clone(),
            })
            .collect();
        let mut map = self.events.write().expect("the peer's store lock");
        let stream = map.entry(context.aggregate_id).or_default();
        // The single writer per aggregate that cqrs-es leaves to the store: a sequence that
        // moved meanwhile is a conflict.
        if stream.len() != context.sequence {
            return Err(AggregateError::AggregateConflict);
        }
        stream.extend(wrapped.iter().cloned());
        Ok(wrapped)
    }
}

/// What one peer run did.
pub struct PeerRun {
    pub commands: u64,
    pub accepted: u64,
    pub elapsed: Duration,
}

/// `commands` ProductStock commands from the same generator as evershard's run, over
/// `aggregates` aggregates and `clients` concurrent clients, through cqrs-es + `MemStore`.
pub async fn run(aggregates: u64, commands: u64, clients: u64, seed: u64) -> PeerRun {
    let store = QuietMemStore::default();
    let cqrs = Arc::new(cqrs_es::CqrsFramework::new(store, Vec::new(), ()));
    let per_client = commands / clients;
    let start = Instant::now();
    let mut tasks = Vec::new();
    for client in 0..clients {
        let cqrs = cqrs.clone();
        tasks.push(tokio::spawn(async move {
            let (ids, mut rng) = crate::client_slice(client, aggregates, clients, seed);
            let mut mirrors = vec![ProductStockState::default(); ids.len()];
            let mut accepted = 0u64;
            for n in 0..per_client {
                let k = (n as usize) % ids.len();
                let ctx = DecideContext::new(ids[k].clone(), chrono::Utc::now());
                let command = ProductStock::sample_command(&mirrors[k], &ctx, &mut rng);
                // The mirror follows the framework's decision: decided again here on the
                // same state, as evershard's run applies the events the engine returns.
                let events = ProductStock::decide(&mirrors[k], &command, &ctx);
                let stock_command = StockCommand {
                    id: ids[k].clone(),
                    command,
                };
                if cqrs.execute(&ids[k], stock_command).await.is_ok() {
                    accepted += 1;
                    for e in events.iter().flatten() {
                        ProductStock::apply(&mut mirrors[k], e);
                    }
                }
            }
            accepted
        }));
    }
    let mut accepted = 0;
    for t in tasks {
        accepted += t.await.expect("a peer client");
    }
    PeerRun {
        commands: per_client * clients,
        accepted,
        elapsed: start.elapsed(),
    }
}
