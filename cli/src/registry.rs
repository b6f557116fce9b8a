//! The aggregate types a CLI knows, as a value: a [`Registry`] built with
//! [`Registry::register`]. Each entry keeps, per type, the functions the commands need
//! (the replay `verify` folds, JSON rendering, state, topic routing), monomorphised when the type is
//! registered, so that a command picks them by the stored type name at run time. (`demo`
//! drives generated workloads, which only the stock types have: it uses [`dispatch`] over
//! them, whatever a binary registered.)
//!
//! A service with its own types builds its own auditor binary on this:
//! `evershard_cli::Cli::new().register_defaults().register::<Booking>().run()`.
//!
//! **Architecture Invariant:** this module is a leaf of the CLI: it knows how to reach a type's
//! code and nothing of the commands' logic (`verify`, `inspect`, `export`, `topics` take a
//! `&Registry`, never the other way round). The stock list of types is
//! `evershard_aggregates::workloads::visit_all` (the seven aggregates) plus the process
//! managers ([`OrderSaga`]), which every read-only command knows like any aggregate but the
//! demo drives through their saga runner, never with a workload ([`workload_types`]).

use crate::error::CliError;
use crate::inspect::EnvelopesJson;
use crate::replay::ReplaySink;
use evershard_aggregates::order_saga::OrderSaga;
use evershard_engine::model::{Aggregate, EventEnvelope, Workload, WorkloadVisitor};
use evershard_engine::repository::Loaded;
use evershard_engine::{Journal, Record, StorageError, StreamId, StreamVisitor, TopicCatalog};
use serde_json::Value;

/// Work written once, generic over the aggregate type, run for one type chosen by name over
/// the stock types ([`dispatch`]).
pub trait TypeOp {
    type Output;
    fn run<A: Workload>(self) -> Self::Output;
}

/// The state of a stream as of a sequence, rendered as JSON (`use_snapshots` as recovery).
pub(crate) type StateJsonFn = fn(&Journal, &StreamId, u64, bool) -> Result<Loaded<Value>, CliError>;

/// The functions of one registered type.
#[derive(Clone, Copy)]
pub(crate) struct TypeEntry {
    pub(crate) name: &'static str,
    pub(crate) replay:
        for<'a> fn(&'a Journal, StreamId, &'a ReplaySink) -> Box<dyn StreamVisitor + 'a>,
    pub(crate) history_json: for<'j> fn(&'j Journal, &'j StreamId) -> EnvelopesJson<'j>,
    pub(crate) record_json: fn(Record) -> Result<EventEnvelope<Value>, StorageError>,
    pub(crate) state_json: StateJsonFn,
    pub(crate) register_topics: fn(&mut TopicCatalog),
}

impl std::fmt::Debug for TypeEntry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TypeEntry")
            .field("name", &self.name)
            .finish()
    }
}

fn register_topics<A: Aggregate>(catalog: &mut TopicCatalog) {
    catalog.register::<A>();
}

/// The aggregate types a CLI knows, in the order they were registered.
#[derive(Clone, Debug, Default)]
pub struct Registry {
    types: Vec<TypeEntry>,
}

impl Registry {
    /// No types: every stream is of an unknown type (its records, chains and the tree are
    /// still verified).
    pub fn new() -> Registry {
        Registry::default()
    }

    /// The seven types of `evershard-aggregates` and the order saga: the stock binary's.
    pub fn with_defaults() -> Registry {
        Registry::new().register_defaults()
    }

    /// Adds the seven types of `evershard-aggregates` and the order saga ([`OrderSaga`]).
    pub fn register_defaults(self) -> Registry {
        struct Defaults(Registry);
        impl WorkloadVisitor for Defaults {
            fn visit<A: Workload>(&mut self) {
                let registry = std::mem::take(&mut self.0);
                self.0 = registry.register::<A>();
            }
        }
        let mut defaults = Defaults(self);
        evershard_aggregates::workloads::visit_all(&mut defaults);
        defaults.0.register::<OrderSaga>()
    }

    /// Adds a type (replacing an earlier one stored under the same `A::TYPE`). Every read-only
    /// command works for it.
    pub fn register<A: Aggregate>(self) -> Registry {
        self.add(TypeEntry {
            name: A::TYPE,
            replay: crate::replay::replay::<A>,
            history_json: crate::inspect::history_json::<A>,
            record_json: crate::inspect::record_json::<A>,
            state_json: crate::inspect::state_json::<A>,
            register_topics: register_topics::<A>,
        })
    }

    fn add(mut self, entry: TypeEntry) -> Registry {
        match self.types.iter_mut().find(|t| t.name == entry.name) {
            Some(existing) => *existing = entry,
            None => self.types.push(entry),
        }
        self
    }

    /// The stored names of every registered type, in registration order.
    pub fn names(&self) -> Vec<&'static str> {
        self.types.iter().map(|t| t.name).collect()
    }

    /// True when the type stored under exactly `name` is registered.
    pub fn is_known(&self, name: &str) -> bool {
        self.get(name).is_some()
    }

    /// The stored name of the type a user typed: exact match first, then ignoring ASCII case
    /// (so `productstock` works). An unknown name is an error listing the known ones.
    pub fn resolve(&self, name: &str) -> Result<&'static str, CliError> {
        let known = self.names();
        known
            .iter()
            .find(|k| **k == name)
            .or_else(|| known.iter().find(|k| k.eq_ignore_ascii_case(name)))
            .copied()
            .ok_or_else(|| CliError::UnknownType {
                name: name.to_owned(),
                known: known.clone(),
            })
    }

    pub(crate) fn get(&self, name: &str) -> Option<&TypeEntry> {
        self.types.iter().find(|t| t.name == name)
    }

    /// The topic routing and rendering of every registered type.
    pub fn topic_catalog(&self) -> TopicCatalog {
        let mut catalog = TopicCatalog::new();
        for entry in &self.types {
            (entry.register_topics)(&mut catalog);
        }
        catalog
    }
}

/// Runs `visitor` for every stock type, in the order the CLI lists them.
pub fn visit_all(visitor: &mut impl WorkloadVisitor) {
    evershard_aggregates::workloads::visit_all(visitor);
}

/// The types the demo drives with their workload generators: the seven aggregates (a saga is
/// driven by its runner).
pub fn workload_types() -> Vec<&'static str> {
    struct Names(Vec<&'static str>);
    impl WorkloadVisitor for Names {
        fn visit<A: Workload>(&mut self) {
            self.0.push(A::TYPE);
        }
    }
    let mut names = Names(Vec::new());
    visit_all(&mut names);
    names.0
}

/// The stored name of a stock type a user typed (see [`Registry::resolve`]).
pub fn resolve(name: &str) -> Result<&'static str, CliError> {
    Registry::with_defaults().resolve(name)
}

/// The stored names of every stock type.
pub fn known_types() -> Vec<&'static str> {
    Registry::with_defaults().names()
}

/// Runs `op` for the stock type stored under exactly `name`; `None` when it is not one.
pub fn dispatch<O: TypeOp>(name: &str, op: O) -> Option<O::Output> {
    struct One<'n, O: TypeOp> {
        name: &'n str,
        op: Option<O>,
        output: Option<O::Output>,
    }
    impl<O: TypeOp> WorkloadVisitor for One<'_, O> {
        fn visit<A: Workload>(&mut self) {
            if A::TYPE == self.name {
                if let Some(op) = self.op.take() {
                    self.output = Some(op.run::<A>());
                }
            }
        }
    }
    let mut one = One {
        name,
        op: Some(op),
        output: None,
    };
    visit_all(&mut one);
    one.output
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_type_once_and_names_found_ignoring_case() {
        let registry = Registry::with_defaults();
        let mut names = registry.names();
        assert_eq!(names.len(), 8);
        names.sort_unstable();
        names.dedup();
        assert_eq!(names.len(), 8);
        assert_eq!(workload_types().len(), 7);
        assert!(!workload_types().contains(&"OrderSaga"));
        assert_eq!(registry.resolve("ordersaga").unwrap(), "OrderSaga");
        assert_eq!(registry.resolve("ProductStock").unwrap(), "ProductStock");
        assert_eq!(registry.resolve("productstock").unwrap(), "ProductStock");
        let err = registry.resolve("Nope").expect_err("unknown type");
        assert_eq!(err.exit_code(), 2);
        assert!(err.to_string().contains("ProductStock"), "{err}");
        assert!(registry.is_known("Order") && !registry.is_known("order"));
        assert!(!Registry::new().is_known("Order"));
        // Registering a type twice keeps one entry.
        let twice = Registry::with_defaults()
            .register::<evershard_aggregates::product_stock::ProductStock>();
        assert_eq!(twice.names().len(), 8);

        struct Name;
        impl TypeOp for Name {
            type Output = &'static str;
            fn run<A: Workload>(self) -> &'static str {
                A::TYPE
            }
        }
        assert_eq!(dispatch("Order", Name), Some("Order"));
        assert_eq!(dispatch("order", Name), None, "stored names match exactly");
    }
}
