//! The per-type part of `verify`: each stream of a known type decoded and folded from its
//! first event as `verify`'s scan reads it (a [`StreamVisitor`]: the records are read and
//! hashed once, for the chain, the tree and the replay together), its final state checked
//! against the type's invariants, and every stored snapshot compared with the state the
//! fold had at the snapshot's sequence.
//!
//! The fold makes the checks recovery makes when it replays (`repository::load`: a payload
//! that does not decode or an upcaster that panics, a gap, an `apply` that panics, the
//! invariants of the loaded state) and words them with the same errors
//! ([`Corruption`]); the snapshots go through recovery's own selection
//! (`snapshot::select`), one candidate at a time, so its reason for skipping one is the
//! finding. The journal's checks (CRC, place, chain) are the scan's: a record that fails them
//! stops the fold there, and the journal's finding names it.

use crate::diff::first_difference;
use crate::verify::{finding, not_compared_note, snapshot_skip_message, storage_finding};
use crate::verify::{Check, StreamCheck};
use evershard_engine::model::Aggregate;
use evershard_engine::record::RecordView;
use evershard_engine::snapshot::select;
use evershard_engine::{Corruption, Journal, StorageError, StreamId, StreamVisitor};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::Mutex;

/// Where finished folds put their checks.
pub(crate) type ReplaySink = Mutex<Vec<(StreamId, StreamCheck)>>;

/// The fold of one stream of type `A`.
pub(crate) struct Replay<'a, A: Aggregate> {
    journal: &'a Journal,
    stream: StreamId,
    sink: &'a ReplaySink,
    state: A::State,
    version: u64,
    /// The last sequence the scan saw (the stream's head when it ends).
    last_seen: u64,
    /// The sequence the fold stopped at, if it did.
    failed_at: Option<u64>,
    /// Stored snapshots, oldest first, and the next one to compare.
    snapshots: Vec<(u64, Vec<u8>)>,
    next_snapshot: usize,
    check: StreamCheck,
}

/// Makes the fold of `stream` (type `A`) for `verify`'s scan.
pub(crate) fn replay<'a, A: Aggregate>(
    journal: &'a Journal,
    stream: StreamId,
    sink: &'a ReplaySink,
) -> Box<dyn StreamVisitor + 'a> {
    Box::new(new_replay::<A>(journal, stream, sink))
}

/// The fold of `stream`, its stored snapshots read first.
fn new_replay<'a, A: Aggregate>(
    journal: &'a Journal,
    stream: StreamId,
    sink: &'a ReplaySink,
) -> Replay<'a, A> {
    let mut check = StreamCheck::default();
    let mut snapshots = match journal.snapshots(&stream) {
        // Sealed snapshots are opened when the key is at hand (else compared as sealed,
        // which is a note).
        Ok(snapshots) => snapshots
            .into_iter()
            .map(|(seq, bytes)| (seq, journal.open_snapshot(&stream, seq, bytes)))
            .collect(),
        Err(e) => {
            check
                .problems
                .push(storage_finding(&stream, Check::Snapshot, e));
            Vec::new()
        }
    };
    snapshots.sort_by_key(|s| s.0);
    Replay::<A> {
        journal,
        stream,
        sink,
        state: A::State::default(),
        version: 0,
        last_seen: 0,
        failed_at: None,
        snapshots,
        next_snapshot: 0,
        check,
    }
}

impl<A: Aggregate> Replay<'_, A> {
    fn fail(&mut self, sequence: u64, message: String) {
        let problem = finding(&self.stream, Some(sequence), Check::Replay, message);
        self.check.problems.push(problem);
        self.failed_at = Some(sequence);
    }

    /// Folds one intact record, or says why the fold stops at it.
    fn fold(
        &mut self,
        sequence: u64,
        record: &RecordView<'_>,
        payload: &[u8],
    ) -> Result<(), String> {
        let decoded = catch_unwind(AssertUnwindSafe(|| {
            A::decode_event(record.event_type, record.event_version, payload)
        }));
        let event = match decoded {
            Ok(Ok(event)) => event,
            Ok(Err(source)) => {
                let cause = Corruption::Payload {
                    event_type: record.event_type.into(),
                    event_version: record.event_version.into(),
                    source: Box::new(source),
                };
                return Err(cause.to_string());
            }
            Err(_) => {
                let cause = Corruption::DecodePanicked {
                    event_type: record.event_type.into(),
                    event_version: record.event_version.into(),
                };
                return Err(cause.to_string());
            }
        };
        let state = &mut self.state;
        if catch_unwind(AssertUnwindSafe(|| A::apply(state, &event))).is_err() {
            return Err(Corruption::ApplyPanicked.to_string());
        }
        self.version = sequence;
        self.check.events_replayed += 1;
        Ok(())
    }

    /// Compares every snapshot stored at the fold's current sequence.
    fn compare_snapshots_here(&mut self) {
        while let Some((key, bytes)) = self.snapshots.get(self.next_snapshot) {
            if *key != self.version {
                break;
            }
            let (key, candidate) = (*key, (*key, bytes.clone()));
            self.next_snapshot += 1;
            let selection = select::<A::State>(&[candidate], A::STATE_SCHEMA_VERSION, u64::MAX);
            let at = Some(key);
            match (selection.chosen, selection.skipped.into_iter().next()) {
                (Some((_, state)), _) if state == self.state => self.check.snapshots_checked += 1,
                (Some((_, state)), _) => {
                    self.check.snapshots_checked += 1;
                    let at_path = first_difference(&state, &self.state)
                        .unwrap_or_else(|| "(equal as JSON)".into());
                    let message = format!(
                        "snapshot differs from the replay up to its sequence at {at_path} \
                         (snapshot vs replay)"
                    );
                    let problem = finding(&self.stream, at, Check::Snapshot, message);
                    self.check.problems.push(problem);
                }
                (None, Some((_, reason))) => {
                    let (is_note, message) = snapshot_skip_message(&reason, self.last_seen);
                    let f = finding(&self.stream, at, Check::Snapshot, message);
                    if is_note {
                        self.check.notes.push(f);
                    } else {
                        self.check.problems.push(f);
                    }
                }
                (None, None) => {}
            }
        }
    }

    /// The snapshots the fold never reached: beyond the head, or after the fold stopped.
    fn snapshots_not_reached(&mut self) {
        let rest: Vec<(u64, Vec<u8>)> = self.snapshots.split_off(self.next_snapshot);
        for (key, bytes) in rest {
            let at = Some(key);
            if let Some(fails_at) = self.failed_at.filter(|f| *f <= key) {
                let note = not_compared_note(&self.stream, at, fails_at);
                self.check.notes.push(note);
                continue;
            }
            let selection =
                select::<A::State>(&[(key, bytes)], A::STATE_SCHEMA_VERSION, self.last_seen);
            if let Some((_, reason)) = selection.skipped.into_iter().next() {
                let (is_note, message) = snapshot_skip_message(&reason, self.last_seen);
                let f = finding(&self.stream, at, Check::Snapshot, message);
                if is_note {
                    self.check.notes.push(f);
                } else {
                    self.check.problems.push(f);
                }
            }
        }
    }
}

impl<A: Aggregate> StreamVisitor for Replay<'_, A> {
    fn record(&mut self, sequence: u64, record: Option<&RecordView<'_>>) {
        self.last_seen = sequence;
        if self.failed_at.is_some() {
            return;
        }
        let expected = self.version + 1;
        if sequence != expected {
            let gap = Corruption::Gap { found: sequence };
            return self.fail(expected, gap.to_string());
        }
        let Some(record) = record else {
            // The journal's finding at this sequence names the damage; this one is its echo
            // and is dropped from the report.
            return self.fail(sequence, "the record fails the journal's checks".into());
        };
        // An encrypted payload is opened with the key when there is one. Without it, or
        // once its subject was forgotten, the fold stops here with a note: integrity was
        // checked on the stored bytes, only the replay needs the plain payload.
        let opened;
        let payload = if record.encrypted {
            match self.journal.open_payload(
                record.aggregate_type,
                record.aggregate_id,
                sequence,
                record.payload,
            ) {
                Ok(plain) => {
                    opened = plain;
                    &opened[..]
                }
                Err(e @ (StorageError::Erased { .. } | StorageError::Key { .. })) => {
                    let message = format!("not replayed from here: {e}");
                    let note = finding(&self.stream, Some(sequence), Check::Replay, message);
                    self.check.notes.push(note);
                    self.failed_at = Some(sequence);
                    return;
                }
                Err(e) => return self.fail(sequence, e.to_string()),
            }
        } else {
            record.payload
        };
        if let Err(message) = self.fold(sequence, record, payload) {
            return self.fail(sequence, message);
        }
        self.compare_snapshots_here();
    }

    fn finish(mut self: Box<Self>, complete: bool) {
        if !complete && self.failed_at.is_none() {
            let message = "the scan stopped in this stream (sled reports damage): the rest \
                           was not replayed"
                .to_owned();
            self.fail(self.last_seen + 1, message);
        }
        if self.failed_at.is_none() {
            if let Err(invariant) = A::check_invariants(&self.state) {
                let message = format!("the replayed state breaks an invariant: {invariant}");
                let problem = finding(&self.stream, Some(self.version), Check::Replay, message);
                self.check.problems.push(problem);
            }
        }
        self.snapshots_not_reached();
        let Replay {
            stream,
            sink,
            check,
            ..
        } = *self;
        sink.lock()
            .unwrap_or_else(|e| e.into_inner())
            .push((stream, check));
    }
}

/// Verifies one stream of type `A` on its own (reading it, without the scan of the whole
/// store): it fully decodes and folds from the first event (no snapshots), its final state
/// holds the type's invariants, and every stored snapshot equals the replay up to its
/// sequence. `head` is the stream's last sequence. Public so that a service can check streams
/// of its own types.
pub fn check_stream<A: Aggregate>(journal: &Journal, stream: &StreamId, head: u64) -> StreamCheck {
    let sink = ReplaySink::default();
    let mut fold = Box::new(new_replay::<A>(journal, stream.clone(), &sink));
    let mut complete = true;
    for sequence in 1..=head {
        match journal.record_bytes(stream, sequence) {
            Ok(None) => {}
            Ok(Some(bytes)) => match RecordView::check(&bytes) {
                Ok(v)
                    if v.sequence == sequence
                        && v.aggregate_type == stream.aggregate_type
                        && v.aggregate_id == stream.aggregate_id =>
                {
                    fold.record(sequence, Some(&v))
                }
                Ok(v) => {
                    fold.last_seen = sequence;
                    if fold.failed_at.is_none() {
                        let message = format!(
                            "record says {}/{}#{}, stored under another key",
                            v.aggregate_type, v.aggregate_id, v.sequence
                        );
                        fold.fail(sequence, message);
                    }
                }
                Err(e) => {
                    fold.last_seen = sequence;
                    if fold.failed_at.is_none() {
                        fold.fail(sequence, e.to_string());
                    }
                }
            },
            Err(e) => {
                fold.check
                    .problems
                    .push(storage_finding(stream, Check::Replay, e));
                complete = false;
                break;
            }
        }
    }
    fold.finish(complete);
    let mut checks = sink.into_inner().unwrap_or_else(|e| e.into_inner());
    checks.pop().map(|(_, check)| check).unwrap_or_default()
}
