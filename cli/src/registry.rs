//! The aggregate types this build knows, and a generic dispatch over them. A command module
//! writes its per-type work once, generic over the aggregate type, as a [`TypeOp`], and runs
//! it for the type a name selects ([`dispatch`]) — or for every type with a
//! [`WorkloadVisitor`] ([`visit_all`]).
//!
//! **Architecture Invariant:** this module is a leaf of the CLI: it knows the aggregate types
//! and nothing of the commands (`demo`, `verify`, `inspect`, `export` import it, never the
//! other way round). The list of types itself is `evershard_aggregates::workloads::visit_all`
//! (the seven aggregates) plus the process managers ([`OrderSaga`]), which every read-only
//! command knows like any aggregate but the demo drives through their saga runner, never with
//! a workload ([`workload_types`]).

use crate::error::CliError;
use evershard_aggregates::order_saga::OrderSaga;
use evershard_model::{Workload, WorkloadVisitor};

/// Work written once, generic over the aggregate type, run for one type chosen by name.
pub trait TypeOp {
    type Output;
    fn run<A: Workload>(self) -> Self::Output;
}

/// Runs `visitor` for every known type, in the order the CLI lists them: the seven
/// aggregates, then the process managers.
pub fn visit_all(visitor: &mut impl WorkloadVisitor) {
    evershard_aggregates::workloads::visit_all(visitor);
    visitor.visit::<OrderSaga>();
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
    evershard_aggregates::workloads::visit_all(&mut names);
    names.0
}

/// The stored names of every known type.
pub fn known_types() -> Vec<&'static str> {
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

/// The stored name of the type a user typed: exact match first, then ignoring ASCII case (so
/// `productstock` works). An unknown name is an error listing the known ones.
pub fn resolve(name: &str) -> Result<&'static str, CliError> {
    let known = known_types();
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

/// True when this build knows the type stored under exactly `name`.
pub fn is_known(name: &str) -> bool {
    known_types().contains(&name)
}

/// Runs `op` for the type stored under exactly `name`; `None` when this build does not know it.
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
        let mut names = known_types();
        assert_eq!(names.len(), 8);
        names.sort_unstable();
        names.dedup();
        assert_eq!(names.len(), 8);
        assert_eq!(workload_types().len(), 7);
        assert!(!workload_types().contains(&"OrderSaga"));
        assert_eq!(resolve("ordersaga").unwrap(), "OrderSaga");
        assert_eq!(resolve("ProductStock").unwrap(), "ProductStock");
        assert_eq!(resolve("productstock").unwrap(), "ProductStock");
        let err = resolve("Nope").expect_err("unknown type");
        assert_eq!(err.exit_code(), 2);
        assert!(err.to_string().contains("ProductStock"), "{err}");

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
