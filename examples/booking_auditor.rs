//! A service's own auditor binary: the `evershard` commands (`verify`, `digest`, `prove`,
//! `history`, `state`, `export`, ...) for a store that holds the service's own aggregate type,
//! `Booking`, next to the stock ones. The whole binary is [`auditor`] and `main`:
//!
//! ```text
//! cargo run --example booking_auditor -- verify --data DIR
//! cargo run --example booking_auditor -- history Booking room-1 --data DIR
//! ```
//!
//! The stock `evershard` binary reads the same store too, but it does not know `Booking`: it
//! says so in a note, and checks those records, chains and the Merkle tree anyway; only this
//! binary decodes Booking's payloads, replays its streams and shows its state.

use evershard::model::{Aggregate, DecideContext, DomainEvent};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// A room booking: one aggregate per room, guests by night.
#[derive(Debug)]
pub struct Booking;

/// Which guest holds which night (`YYYY-MM-DD`).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct BookingState {
    pub nights: BTreeMap<String, String>,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub enum BookingCommand {
    Book { night: String, guest: String },
    Cancel { night: String },
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum BookingEvent {
    Booked { night: String, guest: String },
    Cancelled { night: String },
}

impl DomainEvent for BookingEvent {
    fn event_type(&self) -> &'static str {
        match self {
            BookingEvent::Booked { .. } => "RoomBooked",
            BookingEvent::Cancelled { .. } => "BookingCancelled",
        }
    }
    fn event_version(&self) -> &'static str {
        "1.0"
    }
    fn topic(&self) -> &'static str {
        "business.bookings"
    }
    fn payload_json(&self) -> serde_json::Value {
        serde_json::to_value(self).unwrap_or_default()
    }
}

/// Why a booking command is refused.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum BookingError {
    NightTaken,
    NotBooked,
}

impl std::fmt::Display for BookingError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            BookingError::NightTaken => "that night is already booked",
            BookingError::NotBooked => "that night is not booked",
        })
    }
}

impl std::error::Error for BookingError {}

impl Aggregate for Booking {
    const TYPE: &'static str = "Booking";
    type State = BookingState;
    type Command = BookingCommand;
    type Event = BookingEvent;
    type Error = BookingError;

    fn decide(
        state: &BookingState,
        command: &BookingCommand,
        _ctx: &DecideContext,
    ) -> Result<Vec<BookingEvent>, BookingError> {
        match command {
            BookingCommand::Book { night, guest } if !state.nights.contains_key(night) => {
                Ok(vec![BookingEvent::Booked {
                    night: night.clone(),
                    guest: guest.clone(),
                }])
            }
            BookingCommand::Book { .. } => Err(BookingError::NightTaken),
            BookingCommand::Cancel { night } if state.nights.contains_key(night) => {
                Ok(vec![BookingEvent::Cancelled {
                    night: night.clone(),
                }])
            }
            BookingCommand::Cancel { .. } => Err(BookingError::NotBooked),
        }
    }

    fn apply(state: &mut BookingState, event: &BookingEvent) {
        match event {
            BookingEvent::Booked { night, guest } => {
                state.nights.insert(night.clone(), guest.clone());
            }
            BookingEvent::Cancelled { night } => {
                state.nights.remove(night);
            }
        }
    }
}

/// The auditor: the stock types and the service's own.
pub fn auditor() -> evershard_cli::Cli {
    evershard_cli::Cli::new()
        .register_defaults()
        .register::<Booking>()
}

#[allow(dead_code)] // a test includes this file for `auditor` and `Booking`, not for `main`
fn main() -> std::process::ExitCode {
    auditor().run()
}
