//! Payload codec figures: format 1 (bincode, positional) against format 2 (MessagePack with
//! named fields), on the events and states the demo workload produces (a bench binary;
//! `harness = false`).
//!
//! ```text
//! cargo bench --bench codec
//! EVERSHARD_BENCH_CODEC_EVENTS=100000 cargo bench --bench codec
//! ```
//!
//! For each aggregate type: the mean encoded size of an event, encode and decode time per
//! event, the in-memory replay rate (decode_event + apply, no journal) and, for the state the
//! events fold into, the size and encode/decode time of a snapshot in each format. Under
//! `cargo test --benches` it runs a smoke pass on few events.

use evershard::aggregates::{
    appointment::Appointment, credit::Credit, device::Device, order::Order, payment::Payment,
    plant::Plant, product_stock::ProductStock,
};
use evershard::model::{codec, DecideContext, DemoRng, DomainEvent, Workload};
use std::hint::black_box;
use std::time::Instant;

/// Events generated per aggregate type (spread over several instances so no state grows
/// without bound).
fn events_total() -> usize {
    let smoke = !std::env::args().any(|a| a == "--bench");
    std::env::var("EVERSHARD_BENCH_CODEC_EVENTS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(if smoke { 500 } else { 20_000 })
}

/// Commands per aggregate instance before starting the next one: a few snapshot intervals.
const COMMANDS_PER_INSTANCE_MAX: usize = 300;

/// The events of each generated instance, and the state the last one folded into.
fn generate<A: Workload>(events_total: usize) -> (Vec<Vec<A::Event>>, A::State) {
    let mut rng = DemoRng::new(42);
    let mut instances = Vec::new();
    let mut generated = 0;
    let mut last_state = A::State::default();
    while generated < events_total {
        // A uuid as the aggregate id: Order (and others) derive their entity id from it.
        let id = uuid::Uuid::from_u128(instances.len() as u128 + 1).to_string();
        let ctx = DecideContext::new(id, chrono::Utc::now());
        let mut state = A::State::default();
        let mut events = Vec::new();
        for _ in 0..COMMANDS_PER_INSTANCE_MAX {
            if A::is_finished(&state) || generated + events.len() >= events_total {
                break;
            }
            let command = A::sample_command(&state, &ctx, &mut rng);
            if let Ok(new) = A::decide(&state, &command, &ctx) {
                for e in &new {
                    A::apply(&mut state, e);
                }
                events.extend(new);
            }
        }
        assert!(
            !events.is_empty(),
            "{}: an instance accepted no command",
            A::TYPE
        );
        generated += events.len();
        instances.push(events);
        last_state = state;
    }
    (instances, last_state)
}

/// Nanoseconds per item of `f` over `items`, the best of 5 passes.
fn ns_per<T>(items: &[T], mut f: impl FnMut(&T)) -> f64 {
    (0..5)
        .map(|_| {
            let t = Instant::now();
            items.iter().for_each(&mut f);
            t.elapsed().as_nanos() as f64 / items.len().max(1) as f64
        })
        .fold(f64::INFINITY, f64::min)
}

fn measure<A: Workload>(events_total: usize) {
    let (instances, state) = generate::<A>(events_total);
    let events: Vec<A::Event> = instances.iter().flatten().cloned().collect();
    let f1: Vec<Vec<u8>> = events.iter().map(codec::encode_compact).collect();
    let f2: Vec<Vec<u8>> = events.iter().map(codec::encode).collect();
    let mean = |v: &[Vec<u8>]| v.iter().map(Vec::len).sum::<usize>() as f64 / v.len() as f64;
    let enc1 = ns_per(&events, |e| {
        black_box(codec::encode_compact(e));
    });
    let enc2 = ns_per(&events, |e| {
        black_box(codec::encode(e));
    });
    let dec1 = ns_per(&f1, |b| {
        black_box(codec::decode::<A::Event>(b).unwrap());
    });
    let dec2 = ns_per(&f2, |b| {
        black_box(codec::decode::<A::Event>(b).unwrap());
    });
    // Each instance folded from its own stored events, as recovery does (minus the journal).
    let replay = |stored: &[Vec<u8>]| {
        (0..5)
            .map(|_| {
                let t = Instant::now();
                let mut at = 0;
                for instance in &instances {
                    let mut s = A::State::default();
                    for e in instance {
                        let ev = A::decode_event(e.event_type(), e.event_version(), &stored[at])
                            .unwrap();
                        A::apply(&mut s, &ev);
                        at += 1;
                    }
                    black_box(s);
                }
                stored.len() as f64 / t.elapsed().as_secs_f64()
            })
            .fold(0.0, f64::max)
    };
    let (replay1, replay2) = (replay(&f1), replay(&f2));
    let s1 = codec::encode_compact(&state);
    let s2 = codec::encode(&state);
    let one = [()];
    let senc1 = ns_per(&one, |_| {
        black_box(codec::encode_compact(&state));
    });
    let senc2 = ns_per(&one, |_| {
        black_box(codec::encode(&state));
    });
    let sdec1 = ns_per(&one, |_| {
        black_box(codec::decode::<A::State>(&s1).unwrap());
    });
    let sdec2 = ns_per(&one, |_| {
        black_box(codec::decode::<A::State>(&s2).unwrap());
    });
    println!(
        "{:<13} {:>6} ev | event B {:>6.1} -> {:>6.1} | enc ns {:>6.0} -> {:>6.0} | dec ns {:>6.0} -> {:>6.0} | replay ev/s {:>9.0} -> {:>9.0} | state B {:>6} -> {:>6}, enc us {:>7.1} -> {:>7.1}, dec us {:>7.1} -> {:>7.1}",
        A::TYPE,
        events.len(),
        mean(&f1),
        mean(&f2),
        enc1,
        enc2,
        dec1,
        dec2,
        replay1,
        replay2,
        s1.len(),
        s2.len(),
        senc1 / 1e3,
        senc2 / 1e3,
        sdec1 / 1e3,
        sdec2 / 1e3,
    );
}

fn main() {
    let n = events_total();
    println!("codec bench: format 1 (bincode) -> format 2 (MessagePack, named), {n} events per type; states: the last instance's");
    measure::<ProductStock>(n);
    measure::<Order>(n);
    measure::<Payment>(n);
    measure::<Appointment>(n);
    measure::<Credit>(n);
    measure::<Plant>(n);
    measure::<Device>(n);
}
