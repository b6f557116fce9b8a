use crate::{Aggregate, DecideContext};

/// A small deterministic random generator (SplitMix64) for workloads: the demo, benches and
/// the engine's integration tests use it so that a seed reproduces a run exactly.
#[derive(Clone, Debug)]
pub struct DemoRng(u64);

impl DemoRng {
    pub fn new(seed: u64) -> Self {
        DemoRng(seed)
    }
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    /// Uniform in `0..n` (n > 0).
    pub fn below(&mut self, n: u64) -> u64 {
        assert!(n > 0, "DemoRng::below(0)");
        self.next_u64() % n
    }
    /// Uniform in `lo..=hi`.
    pub fn range(&mut self, lo: i64, hi: i64) -> i64 {
        assert!(lo <= hi);
        lo + self.below((hi - lo) as u64 + 1) as i64
    }
    /// True with probability `percent`/100.
    pub fn chance(&mut self, percent: u64) -> bool {
        self.below(100) < percent
    }
    pub fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[self.below(items.len() as u64) as usize]
    }
    /// A deterministic UUID (v4 layout) from the stream.
    pub fn uuid(&mut self) -> uuid::Uuid {
        let hi = self.next_u64() as u128;
        let lo = self.next_u64() as u128;
        uuid::Builder::from_random_bytes(((hi << 64) | lo).to_be_bytes()).into_uuid()
    }
}

/// A generator of plausible commands for an aggregate, for the `evershard demo` job, the
/// benches and the engine integration tests. Most generated commands should be accepted given
/// the current state; a few rejected ones are fine and exercise the rejection path.
pub trait Workload: Aggregate {
    /// The next command for the aggregate in `state`.
    fn sample_command(state: &Self::State, ctx: &DecideContext, rng: &mut DemoRng)
        -> Self::Command;

    /// True when no command can change `state` any more (a final lifecycle state: a completed
    /// appointment, a closed credit). Workload drivers then move on to a fresh aggregate
    /// instead of sending commands that can only be rejected. Default: never.
    fn is_finished(_state: &Self::State) -> bool {
        false
    }
}

/// Work written once, generic over the aggregate type, and run for each type of a set: how
/// the CLI, the demo and the tests reach every known aggregate type without keeping a list of
/// their own (`evershard_aggregates::workloads::visit_all` is the list of the seven).
pub trait WorkloadVisitor {
    fn visit<A: Workload>(&mut self);
}
