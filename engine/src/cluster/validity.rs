//! The validity rule of a journal-topic partition (docs/scale-out.md, "Fencing a paused old
//! owner, without transactions"), as a pure function of the partition's messages in offset
//! order: every reader — the owner checking its own batch before acknowledging it, a new
//! owner catching up, an auditor afterwards — walks the same messages through a [`Walk`] and
//! gets the same verdicts. No clock is involved.
//!
//! - A claim is *effective* when its epoch is above every earlier claim's; a claim that lost
//!   a race (an equal or lower epoch) is void, so effective claims have distinct epochs.
//! - A batch is valid when its epoch and node are those of the latest effective claim before
//!   it, and its first sequence follows its stream's last valid sequence (the
//!   expected-version check, replayed). Everything else is void.

use super::wire::{Batch, Claim, Entry};
use evershard_model::StreamId;
use std::collections::HashMap;

/// The verdict on one message.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// An effective claim: from here on only `node` under `epoch` writes.
    Claimed,
    /// A valid batch: part of the streams' history on every node.
    Valid,
    /// Skipped by every reader, stored by no journal.
    Void(VoidReason),
}

/// Why a message is void.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum VoidReason {
    /// A claim whose epoch is not above the highest earlier epoch (it lost a claim race).
    ClaimNotNewer { epoch: u64, highest: u64 },
    /// A batch before any effective claim.
    Unclaimed,
    /// A batch written under another claim than the latest effective one (a paused or cut-off
    /// old owner, or a node that lost a claim race).
    NotLatestClaim {
        batch_node: String,
        batch_epoch: u64,
        claim_node: String,
        claim_epoch: u64,
    },
    /// A batch whose first sequence does not follow its stream's last valid sequence.
    OutOfSequence { expected_first: u64, first: u64 },
    /// Bytes that are not an entry: readers skip them like a void batch.
    Undecodable,
}

/// The latest effective claim of a partition, with the offset it was written at.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ClaimAt {
    pub offset: i64,
    pub claim: Claim,
}

/// The state of one partition after the messages walked so far.
#[derive(Clone, Debug, Default)]
pub struct Walk {
    /// The offset of the next message to walk.
    pub next_offset: i64,
    latest: Option<ClaimAt>,
    /// The highest epoch of any claim walked (effective or not).
    highest_epoch: u64,
    /// Each stream's last valid sequence.
    heads: HashMap<StreamId, u64>,
}

impl Walk {
    pub fn new() -> Walk {
        Walk::default()
    }

    /// The walk of a partition as it stood before `next_offset`, from a stored position
    /// (`cluster::cursor`): the latest effective claim, the highest epoch and every stream's
    /// last valid sequence below it. Walking on from there gives the verdicts a walk from
    /// offset 0 gives.
    pub fn resume(
        next_offset: i64,
        latest: Option<ClaimAt>,
        highest_epoch: u64,
        heads: HashMap<StreamId, u64>,
    ) -> Walk {
        assert!(
            latest
                .as_ref()
                .is_none_or(|c| c.offset < next_offset && c.claim.epoch <= highest_epoch),
            "a stored claim lies below the stored position and its epoch"
        );
        Walk {
            next_offset,
            latest,
            highest_epoch,
            heads,
        }
    }

    /// Walks the message at `offset` (which must be the next one: a partition's offsets only
    /// grow, and gaps — compacted or transaction-marker offsets — are allowed).
    pub fn step(&mut self, offset: i64, entry: Option<&Entry>) -> Verdict {
        assert!(
            offset >= self.next_offset,
            "offsets walked out of order: {offset} after {}",
            self.next_offset
        );
        self.next_offset = offset + 1;
        match entry {
            None => Verdict::Void(VoidReason::Undecodable),
            Some(Entry::Claim(claim)) => self.claim(offset, claim),
            Some(Entry::Batch(batch)) => self.batch(batch),
        }
    }

    fn claim(&mut self, offset: i64, claim: &Claim) -> Verdict {
        if claim.epoch <= self.highest_epoch {
            return Verdict::Void(VoidReason::ClaimNotNewer {
                epoch: claim.epoch,
                highest: self.highest_epoch,
            });
        }
        self.highest_epoch = claim.epoch;
        self.latest = Some(ClaimAt {
            offset,
            claim: claim.clone(),
        });
        Verdict::Claimed
    }

    fn batch(&mut self, batch: &Batch) -> Verdict {
        let Some(latest) = &self.latest else {
            return Verdict::Void(VoidReason::Unclaimed);
        };
        if batch.epoch != latest.claim.epoch || batch.node != latest.claim.node {
            return Verdict::Void(VoidReason::NotLatestClaim {
                batch_node: batch.node.clone(),
                batch_epoch: batch.epoch,
                claim_node: latest.claim.node.clone(),
                claim_epoch: latest.claim.epoch,
            });
        }
        let stream = batch.stream();
        let head = self.heads.get(&stream).copied().unwrap_or(0);
        if batch.first_sequence != head + 1 {
            return Verdict::Void(VoidReason::OutOfSequence {
                expected_first: head + 1,
                first: batch.first_sequence,
            });
        }
        if !batch.events.is_empty() {
            self.heads.insert(stream, batch.last_sequence());
        }
        Verdict::Valid
    }

    /// The latest effective claim walked.
    pub fn latest_claim(&self) -> Option<&ClaimAt> {
        self.latest.as_ref()
    }

    /// The highest claim epoch walked: a new claim must be above it.
    pub fn highest_epoch(&self) -> u64 {
        self.highest_epoch
    }

    /// A stream's last valid sequence (0 when it has none).
    pub fn head(&self, stream: &StreamId) -> u64 {
        self.heads.get(stream).copied().unwrap_or(0)
    }
}

#[cfg(test)]
mod tests {
    use super::super::wire::WireEvent;
    use super::*;

    fn claim(node: &str, epoch: u64) -> Entry {
        Entry::Claim(Claim {
            node: node.into(),
            endpoint: format!("{node}:1"),
            epoch,
        })
    }

    fn batch(node: &str, epoch: u64, id: &str, first: u64, count: usize) -> Entry {
        let event = WireEvent {
            event_id: uuid::Uuid::nil(),
            event_type: "E".into(),
            event_version: "1".into(),
            timestamp_micros: 0,
            correlation_id: uuid::Uuid::nil(),
            causation_id: None,
            source: "t".into(),
            user_id: None,
            session_id: None,
            audit_context: None,
            payload_hex: String::new(),
        };
        Entry::Batch(Batch {
            node: node.into(),
            epoch,
            aggregate_type: "T".into(),
            aggregate_id: id.into(),
            first_sequence: first,
            events: vec![event; count],
            writes: vec![],
        })
    }

    /// Walks `entries` (at offsets 0, 1, ...) and checks every verdict against `expected`
    /// and the streams' heads after them against `heads`. Also checks the stored-position
    /// promise: a walk resumed after any prefix (`Walk::resume` from that prefix's claim,
    /// epoch and heads) gives the same verdicts and heads as the walk from offset 0.
    fn check(entries: &[Entry], expected: &[Verdict], heads: &[(&str, u64)]) -> Walk {
        let mut w = Walk::new();
        let verdicts: Vec<Verdict> = entries
            .iter()
            .enumerate()
            .map(|(i, e)| w.step(i as i64, Some(e)))
            .collect();
        assert_eq!(verdicts, expected);
        for (id, head) in heads {
            assert_eq!(w.head(&StreamId::new("T", *id)), *head, "head of {id}");
        }
        for split in 0..entries.len() {
            let mut prefix = Walk::new();
            for (i, e) in entries[..split].iter().enumerate() {
                prefix.step(i as i64, Some(e));
            }
            let mut resumed = Walk::resume(
                prefix.next_offset,
                prefix.latest_claim().cloned(),
                prefix.highest_epoch(),
                prefix.heads.clone(),
            );
            for (i, e) in entries.iter().enumerate().skip(split) {
                assert_eq!(
                    resumed.step(i as i64, Some(e)),
                    expected[i],
                    "resumed at {split}"
                );
            }
            assert_eq!(resumed.heads, w.heads, "heads resumed at {split}");
            assert_eq!(resumed.latest_claim(), w.latest_claim());
        }
        w
    }

    fn stale(node: &str, epoch: u64, claim_node: &str, claim_epoch: u64) -> Verdict {
        Verdict::Void(VoidReason::NotLatestClaim {
            batch_node: node.into(),
            batch_epoch: epoch,
            claim_node: claim_node.into(),
            claim_epoch,
        })
    }

    fn out_of_sequence(expected_first: u64, first: u64) -> Verdict {
        Verdict::Void(VoidReason::OutOfSequence {
            expected_first,
            first,
        })
    }

    use Verdict::{Claimed, Valid};

    #[test]
    fn batches_under_the_latest_claim_in_sequence_are_valid() {
        let w = check(
            &[
                claim("a", 1),
                batch("a", 1, "x", 1, 2),
                batch("a", 1, "y", 1, 1),
                batch("a", 1, "x", 3, 1),
            ],
            &[Claimed, Valid, Valid, Valid],
            &[("x", 3), ("y", 1)],
        );
        assert_eq!(w.latest_claim().unwrap().offset, 0);
    }

    #[test]
    fn a_batch_before_any_claim_is_void() {
        check(
            &[batch("a", 0, "x", 1, 1), claim("a", 1)],
            &[Verdict::Void(VoidReason::Unclaimed), Claimed],
            &[("x", 0)],
        );
    }

    /// The case the rule exists for: `a` is paused after deciding a batch, `b` takes the
    /// partition over and writes on from the topic's head; `a` resumes and its late batch
    /// (under epoch 1, following the head `a` knew) lands after `b`'s claim. It is void for
    /// every reader, so `a` never acknowledges it, and `b`'s history stands.
    #[test]
    fn a_paused_old_owners_late_batch_is_void() {
        check(
            &[
                claim("a", 1),
                batch("a", 1, "x", 1, 1),
                claim("b", 2),
                batch("b", 2, "x", 2, 1),
                batch("a", 1, "x", 2, 1), // a's late batch: the same sequence b wrote
                batch("a", 1, "y", 1, 1), // and one for a stream b never touched
                batch("b", 2, "x", 3, 1),
            ],
            &[
                Claimed,
                Valid,
                Claimed,
                Valid,
                stale("a", 1, "b", 2),
                stale("a", 1, "b", 2),
                Valid,
            ],
            &[("x", 3), ("y", 0)],
        );
    }

    /// Two nodes that both read epoch 1 and claim epoch 2: the first claim in the partition
    /// wins; the second is void, and so are its batches (they do not match the effective
    /// claim's node). The loser finds out when it reads up to its own claim.
    #[test]
    fn a_claim_race_is_won_by_the_earlier_claim() {
        let w = check(
            &[
                claim("a", 1),
                claim("b", 2),
                claim("c", 2),
                batch("c", 2, "x", 1, 1),
                batch("b", 2, "x", 1, 1),
            ],
            &[
                Claimed,
                Claimed,
                Verdict::Void(VoidReason::ClaimNotNewer {
                    epoch: 2,
                    highest: 2,
                }),
                stale("c", 2, "b", 2),
                Valid,
            ],
            &[("x", 1)],
        );
        assert_eq!(w.latest_claim().unwrap().claim.node, "b");
        assert_eq!(w.highest_epoch(), 2);
    }

    #[test]
    fn a_batch_that_skips_or_repeats_sequences_is_void() {
        check(
            &[
                claim("a", 1),
                batch("a", 1, "x", 1, 2),
                batch("a", 1, "x", 4, 1), // a gap
                batch("a", 1, "x", 2, 1), // a repeat
                batch("a", 1, "x", 3, 1),
            ],
            &[
                Claimed,
                Valid,
                out_of_sequence(3, 4),
                out_of_sequence(3, 2),
                Valid,
            ],
            &[("x", 3)],
        );
    }

    /// An owner that claims again (it lost the partition and got it back) starts a new
    /// epoch: its own batches under the old epoch are void after the new claim.
    #[test]
    fn an_owners_own_old_epoch_is_void_after_its_new_claim() {
        check(
            &[
                claim("a", 1),
                claim("b", 2),
                claim("a", 3),
                batch("a", 1, "x", 1, 1),
                batch("a", 3, "x", 1, 1),
            ],
            &[Claimed, Claimed, Claimed, stale("a", 1, "a", 3), Valid],
            &[("x", 1)],
        );
    }

    #[test]
    fn undecodable_messages_are_void_and_offsets_may_skip() {
        let mut w = Walk::new();
        assert_eq!(w.step(0, Some(&claim("a", 1))), Claimed);
        assert_eq!(w.step(1, None), Verdict::Void(VoidReason::Undecodable));
        assert_eq!(w.step(5, Some(&batch("a", 1, "x", 1, 1))), Valid);
        assert_eq!(w.next_offset, 6);
    }

    /// A batch of no events (a timer correction) is valid at the head and moves nothing.
    #[test]
    fn an_empty_batch_checks_its_version_and_moves_no_head() {
        check(
            &[
                claim("a", 1),
                batch("a", 1, "x", 1, 1),
                batch("a", 1, "x", 2, 0),
                batch("a", 1, "x", 2, 1),
            ],
            &[Claimed, Valid, Valid, Valid],
            &[("x", 2)],
        );
    }
}
