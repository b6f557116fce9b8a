//! Digests, proofs and tampering, through the `evershard` binary (and the engine's API).
//!
//! They prove that:
//! - `keygen`, `digest --sign --json`, `prove`, `check-proof --pubkey` and `verify --digest
//!   --proof-out` round-trip: an event proven against a signed digest is accepted offline, a
//!   digest of an earlier size stays consistent with the grown store, and `digest
//!   --at-position N` on the grown store reproduces the earlier digest's root;
//! - `check-proof` refuses a forged sibling, a wrong tree size, a swapped leaf (another event's
//!   record), a forged consistency path, a wrong signature and another key;
//! - tampering is caught by `verify` naming the event, and by the digest (root and consistency
//!   proof): a flipped byte, a deleted event key, two swapped records, a truncated log, and a
//!   re-encoded record with a valid CRC at the end of its chain (which only the tree sees);
//! - a running engine answers `digest()` and `prove()`; a store whose tree maintainer never
//!   ran gets the same digest from the read-only CLI, which writes no tree node.
//!
//! Stores are small (hundreds of events, buffered durability, three clients), so the tests
//! hold on a loaded two-core machine; nothing asserts on timing.

mod common;

use common::cli::{expect_stdout, p, product_stock_demo};
use evershard_aggregates::product_stock::{ProductStock, ReceiveStock};
use evershard_engine::{Durability, Engine, Journal, StreamId};
use serde_json::Value;
use std::path::{Path, PathBuf};

fn demo(dir: &Path, commands: &str, seed: &str) {
    demo_with(dir, commands, seed, &[]);
}

fn demo_with(dir: &Path, commands: &str, seed: &str, extra: &[&str]) {
    expect_stdout(&product_stock_demo(p(dir), "3", commands, seed, extra), 0);
}

fn streams(dir: &Path) -> Vec<(String, u64)> {
    expect_stdout(&["list", "--data", p(dir)], 0)
        .lines()
        .map(|line| {
            let f: Vec<&str> = line.split('\t').collect();
            (f[1].to_owned(), f[2].parse().unwrap())
        })
        .collect()
}

fn digest_to(dir: &Path, file: &Path, extra: &[&str]) -> Value {
    let mut args = vec!["digest", "--data", p(dir), "--json"];
    args.extend_from_slice(extra);
    let text = expect_stdout(&args, 0);
    std::fs::write(file, &text).unwrap();
    serde_json::from_str(&text).unwrap()
}

fn read_json(file: &Path) -> Value {
    serde_json::from_str(&std::fs::read_to_string(file).unwrap()).unwrap()
}

fn write_json(file: &Path, value: &Value) -> PathBuf {
    std::fs::write(file, serde_json::to_string_pretty(value).unwrap()).unwrap();
    file.to_path_buf()
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let target = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            copy_dir(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), target).unwrap();
        }
    }
}

#[test]
fn digests_proofs_and_consistency_round_trip_and_forgeries_are_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let (store, t) = (tmp.path().join("store"), tmp.path());
    demo(&store, "400", "7");
    expect_stdout(&["keygen", p(&t.join("key"))], 0);
    expect_stdout(&["keygen", p(&t.join("other"))], 0);
    let old = digest_to(&store, &t.join("old.json"), &["--sign", p(&t.join("key"))]);
    let old_size = old["tree_size"].as_u64().unwrap();
    assert!(old_size > 256, "{old}");

    // The store grows; the old digest stays consistent with it.
    demo(&store, "400", "8");
    let new = digest_to(&store, &t.join("new.json"), &["--sign", p(&t.join("key"))]);
    assert!(new["tree_size"].as_u64().unwrap() > old_size);
    let again = digest_to(
        &store,
        &t.join("again.json"),
        &["--at-position", &old_size.to_string()],
    );
    assert_eq!(again["root_hash"], old["root_hash"]);
    let out = expect_stdout(
        &[
            "verify",
            "--data",
            p(&store),
            "--digest",
            p(&t.join("old.json")),
            "--pubkey",
            p(&t.join("key.pub")),
            "--proof-out",
            p(&t.join("consistency.json")),
        ],
        0,
    );
    assert!(out.contains("consistency proof to now holds"), "{out}");
    let ok = expect_stdout(
        &[
            "check-proof",
            p(&t.join("consistency.json")),
            "--digest",
            p(&t.join("old.json")),
            "--to-digest",
            p(&t.join("new.json")),
            "--pubkey",
            p(&t.join("key.pub")),
        ],
        0,
    );
    assert!(ok.contains("result: valid"), "{ok}");
    assert!(!ok.contains("not checked against a digest"), "{ok}");
    // Without the second digest the proof's second root is its own word, and says so.
    let unpinned = expect_stdout(
        &[
            "check-proof",
            p(&t.join("consistency.json")),
            "--digest",
            p(&t.join("old.json")),
        ],
        0,
    );
    assert!(
        unpinned.contains("not checked against a digest"),
        "{unpinned}"
    );

    // An inclusion proof of an early event against the old digest, checked offline.
    let (id, _) = streams(&store).remove(0);
    let proof_file = t.join("proof.json");
    expect_stdout(
        &[
            "prove",
            "ProductStock",
            &id,
            "2",
            "--data",
            p(&store),
            "--digest",
            p(&t.join("old.json")),
            "--out",
            p(&proof_file),
        ],
        0,
    );
    let check = |proof: &Path, digest: &str, key: &str| {
        let (digest, key) = (t.join(digest), t.join(key));
        expect_stdout(
            &[
                "check-proof",
                p(proof),
                "--digest",
                p(&digest),
                "--pubkey",
                p(&key),
            ],
            if proof == proof_file && digest.ends_with("old.json") && key.ends_with("key.pub") {
                0
            } else {
                1
            },
        )
    };
    let out = check(&proof_file, "old.json", "key.pub");
    assert!(
        out.contains(&format!("ProductStock/{id} sequence 2")),
        "{out}"
    );
    let proof = read_json(&proof_file);

    // A forged sibling.
    let mut forged = proof.clone();
    let first = forged["path"][0].as_str().unwrap().to_owned();
    let flipped = if first.starts_with('0') { "1" } else { "0" };
    forged["path"][0] = format!("{flipped}{}", &first[1..]).into();
    let out = check(
        &write_json(&t.join("f1.json"), &forged),
        "old.json",
        "key.pub",
    );
    assert!(out.contains("REFUSED: the path does not lead"), "{out}");
    // A wrong size.
    let mut forged = proof.clone();
    forged["tree_size"] = (old_size + 1).into();
    let out = check(
        &write_json(&t.join("f2.json"), &forged),
        "old.json",
        "key.pub",
    );
    assert!(out.contains("REFUSED"), "{out}");
    // A swapped leaf: another event's record (with its own hashes) in this proof.
    let other_file = t.join("other-proof.json");
    expect_stdout(
        &[
            "prove",
            "ProductStock",
            &id,
            "3",
            "--data",
            p(&store),
            "--digest",
            p(&t.join("old.json")),
            "--out",
            p(&other_file),
        ],
        0,
    );
    let other = read_json(&other_file);
    let mut forged = proof.clone();
    for field in [
        "record",
        "record_sha256",
        "leaf_hash",
        "sequence",
        "global_position",
        "event_type",
    ] {
        forged[field] = other[field].clone();
    }
    let out = check(
        &write_json(&t.join("f3.json"), &forged),
        "old.json",
        "key.pub",
    );
    assert!(out.contains("REFUSED"), "{out}");
    // The event type alone changed: every field the file states is the record's.
    let mut forged = proof.clone();
    forged["event_type"] = "OrderCancelled".into();
    let out = check(
        &write_json(&t.join("f4.json"), &forged),
        "old.json",
        "key.pub",
    );
    assert!(out.contains("REFUSED: the proof names"), "{out}");
    // A leaf index at the end of u64: refused, not a crash.
    let mut forged = proof.clone();
    forged["leaf_index"] = u64::MAX.into();
    let out = check(
        &write_json(&t.join("f5.json"), &forged),
        "old.json",
        "key.pub",
    );
    assert!(out.contains("REFUSED: leaf index"), "{out}");
    // Hex with a sign: `+5` is not `05` (one record, one spelling).
    let mut forged = proof.clone();
    let record = forged["record"].as_str().unwrap().to_owned();
    let at = (0..record.len())
        .step_by(2)
        .find(|&i| record.as_bytes()[i] == b'0')
        .expect("a byte below 0x10 in the record");
    forged["record"] = format!("{}+{}", &record[..at], &record[at + 1..]).into();
    let out = check(
        &write_json(&t.join("f6.json"), &forged),
        "old.json",
        "key.pub",
    );
    assert!(out.contains("REFUSED: record is not hex"), "{out}");
    // The proof checked against the new digest (another tree).
    let out = check(&proof_file, "new.json", "key.pub");
    assert!(out.contains("REFUSED: the proof is for a tree of"), "{out}");
    // A wrong signature, and another key.
    let mut bad_sig = read_json(&t.join("old.json"));
    let sig = bad_sig["signature"]["signature"]
        .as_str()
        .unwrap()
        .to_owned();
    let flipped = if sig.ends_with('0') { "1" } else { "0" };
    bad_sig["signature"]["signature"] = format!("{}{flipped}", &sig[..sig.len() - 1]).into();
    write_json(&t.join("badsig.json"), &bad_sig);
    let out = check(&proof_file, "badsig.json", "key.pub");
    assert!(
        out.contains("REFUSED: digest signature: the signature does not match"),
        "{out}"
    );
    let out = check(&proof_file, "old.json", "other.pub");
    assert!(
        out.contains("REFUSED: digest signature: the digest is signed by another key"),
        "{out}"
    );
    // A forged consistency path.
    let mut forged = read_json(&t.join("consistency.json"));
    let last = forged["path"].as_array().unwrap().len() - 1;
    let h = forged["path"][last].as_str().unwrap().to_owned();
    let flipped = if h.starts_with('a') { "b" } else { "a" };
    forged["path"][last] = format!("{flipped}{}", &h[1..]).into();
    let out = expect_stdout(
        &[
            "check-proof",
            p(&write_json(&t.join("f4.json"), &forged)),
            "--digest",
            p(&t.join("old.json")),
        ],
        1,
    );
    assert!(out.contains("is NOT a prefix"), "{out}");
}

/// verify --digest --json on a damaged copy: (problems, report).
fn verify_damaged(store: &Path, digest: &Path) -> (Vec<Value>, Value) {
    let out = expect_stdout(
        &[
            "verify",
            "--data",
            p(store),
            "--digest",
            p(digest),
            "--json",
        ],
        1,
    );
    let report: Value = serde_json::from_str(&out).unwrap();
    (report["problems"].as_array().unwrap().clone(), report)
}

fn has(
    problems: &[Value],
    check: &str,
    id: Option<&str>,
    sequence: Option<u64>,
    text: &str,
) -> bool {
    problems.iter().any(|f| {
        f["check"] == check
            && id.is_none_or(|id| f["aggregate_id"] == id)
            && sequence.is_none_or(|s| f["sequence"] == s)
            && f["message"].as_str().unwrap().contains(text)
    })
}

#[test]
fn tampering_is_caught_by_verify_and_by_an_earlier_digest() {
    let tmp = tempfile::tempdir().unwrap();
    let (clean, t) = (tmp.path().join("clean"), tmp.path());
    // The sled layout: deleting, swapping and truncating records are edits of its keys (a
    // store on the segment log refuses those test hooks; its own damage is tested in
    // engine/tests/write_path.rs and by the flipped bytes of tests/cli.rs).
    demo_with(&clean, "400", "7", &["--write-path", "sled"]);
    let digest = t.join("digest.json");
    let head = digest_to(&clean, &digest, &[]);
    let size = head["tree_size"].as_u64().unwrap();
    let ids: Vec<String> = streams(&clean).into_iter().map(|(id, _)| id).collect();
    let damaged = |name: &str, damage: &dyn Fn(&Journal)| {
        let dir = t.join(name);
        copy_dir(&clean, &dir);
        damage(&Journal::open_read_only(&dir).unwrap());
        dir
    };
    let s = |i: usize| StreamId::new("ProductStock", ids[i].clone());

    // A flipped byte.
    let dir = damaged("flip", &|j| {
        j.corrupt_record_for_tests(&s(0), 2, 40).unwrap()
    });
    let (problems, _) = verify_damaged(&dir, &digest);
    assert!(
        has(&problems, "journal", Some(&ids[0]), Some(2), "CRC32C"),
        "{problems:?}"
    );
    // Sequence 2 of the first aggregate lies in the first block of 256 events, whose stored
    // node was hashed at commit.
    assert!(
        has(&problems, "tree", None, None, "global positions 1..=256"),
        "{problems:?}"
    );
    assert!(
        has(
            &problems,
            "digest",
            None,
            None,
            "no longer hash to the root"
        ),
        "{problems:?}"
    );
    assert!(
        has(&problems, "digest", None, None, "consistency proof"),
        "{problems:?}"
    );

    // A deleted event key.
    let dir = damaged("delete", &|j| j.delete_record_for_tests(&s(1), 3).unwrap());
    let (problems, _) = verify_damaged(&dir, &digest);
    assert!(
        has(&problems, "journal", Some(&ids[1]), Some(3), "missing"),
        "{problems:?}"
    );
    assert!(
        has(
            &problems,
            "tree",
            Some(&ids[1]),
            Some(3),
            "cannot be recomputed"
        ),
        "{problems:?}"
    );
    assert!(
        has(
            &problems,
            "digest",
            None,
            None,
            "no longer hash to the root"
        ),
        "{problems:?}"
    );

    // Two records swapped.
    let dir = damaged("swap", &|j| {
        j.swap_records_for_tests((&s(0), 4), (&s(1), 4)).unwrap()
    });
    let (problems, _) = verify_damaged(&dir, &digest);
    assert!(
        has(
            &problems,
            "journal",
            Some(&ids[0]),
            Some(4),
            "stored under another key"
        ),
        "{problems:?}"
    );
    assert!(
        has(
            &problems,
            "journal",
            Some(&ids[1]),
            Some(4),
            "stored under another key"
        ),
        "{problems:?}"
    );
    assert!(
        has(
            &problems,
            "digest",
            None,
            None,
            "no longer hash to the root"
        ),
        "{problems:?}"
    );

    // The log truncated by ten events.
    let dir = damaged("truncate", &|j| {
        j.truncate_log_for_tests(size - 10).unwrap()
    });
    let (problems, _) = verify_damaged(&dir, &digest);
    let gone = format!("positions {}..={size} were removed", size - 9);
    assert!(has(&problems, "digest", None, None, &gone), "{problems:?}");
    // Without a digest too: the stored tree covered them.
    let stored = format!("covers {size} events but the store holds {}", size - 10);
    assert!(has(&problems, "tree", None, None, &stored), "{problems:?}");

    // A record re-encoded with a valid CRC at the end of its chain: the journal's checks
    // cannot see it; the digest does, and so does the stored tree node above it when its
    // position lies in a complete block of 256 events.
    let (victim, last, position) = {
        let all = streams(&clean);
        let j = Journal::open_read_only(&clean).unwrap();
        let mut ends = Vec::new();
        for (id, seq) in all {
            let stream = StreamId::new("ProductStock", id.clone());
            let record = j.read_stream(&stream, seq, seq).next().unwrap().unwrap();
            ends.push((id, seq, record.global_position));
        }
        ends.into_iter().min_by_key(|e| e.2).unwrap()
    };
    let dir = damaged("reencode", &|j| {
        let stream = StreamId::new("ProductStock", victim.clone());
        j.rewrite_record_for_tests(&stream, last, |r| r.source = "forged".into())
            .unwrap()
    });
    let (problems, _) = verify_damaged(&dir, &digest);
    assert!(
        !problems.iter().any(|f| f["check"] == "journal"),
        "{problems:?}"
    );
    assert!(
        has(
            &problems,
            "digest",
            None,
            None,
            "no longer hash to the root"
        ),
        "{problems:?}"
    );
    if position <= 256 {
        let block = "global positions 1..=256";
        assert!(has(&problems, "tree", None, None, block), "{problems:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_running_engine_answers_digests_and_proofs_and_the_cli_writes_no_tree_node() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("store");
    let open = |tree: bool| {
        Engine::builder(&dir)
            .register::<ProductStock>()
            .durability(Durability::Buffered { flush_every_ms: 50 })
            .topic_indexer(false)
            .merkle_tree(tree)
            .open()
    };
    let engine = open(false).await.unwrap();
    for i in 0..300u64 {
        let id = format!("sku-{}", i % 5);
        engine
            .execute::<ProductStock>(&id, ReceiveStock { quantity: 1 })
            .await
            .unwrap();
    }
    let head = engine.digest().await.unwrap();
    assert_eq!(head.tree_size, 300);
    let proof = engine
        .prove::<ProductStock>("sku-3", 7, head.tree_size)
        .await
        .unwrap();
    assert!(proof.verify(&head.root_hash));
    let consistency = engine.prove_consistency(100).await.unwrap();
    let early = engine.digest_at(100).await.unwrap();
    assert!(consistency.verify(&early.root_hash, &head.root_hash));
    engine.shutdown().await.unwrap();

    // No maintainer ran: the read-only CLI computes the same root and writes no node.
    let cli = digest_to(&dir, &tmp.path().join("d.json"), &[]);
    let root: String = head.root_hash.iter().map(|b| format!("{b:02x}")).collect();
    assert_eq!(cli["root_hash"], root.as_str());
    assert_eq!(
        Journal::open_read_only(&dir)
            .unwrap()
            .tree_size_stored()
            .unwrap(),
        0
    );

    // With the maintainer, the nodes are stored at open (catching up) and the root is the same.
    let engine = open(true).await.unwrap();
    engine.shutdown().await.unwrap();
    let journal = Journal::open_read_only(&dir).unwrap();
    assert_eq!(journal.tree_size_stored().unwrap(), 300);
    assert_eq!(journal.tree_head(None).unwrap().root_hash, head.root_hash);
}

fn unhex(text: &str) -> Vec<u8> {
    (0..text.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&text[i..i + 2], 16).unwrap())
        .collect()
}

#[test]
fn export_carries_the_record_bytes_and_the_leaves_recompute_the_digest() {
    let tmp = tempfile::tempdir().unwrap();
    let store = tmp.path().join("store");
    demo(&store, "300", "3");
    let head = digest_to(&store, &tmp.path().join("d.json"), &[]);
    let out = expect_stdout(&["export", "--data", p(&store)], 0);
    let mut leaves = Vec::new();
    for line in out.lines() {
        let e: Value = serde_json::from_str(line).unwrap();
        let bytes = unhex(e["record"].as_str().unwrap());
        let sha = evershard_engine::record::hash(&bytes);
        assert_eq!(unhex(e["record_sha256"].as_str().unwrap()), sha.to_vec());
        let leaf = evershard_engine::merkle::leaf_hash(&sha);
        assert_eq!(unhex(e["leaf_hash"].as_str().unwrap()), leaf.to_vec());
        leaves.push(leaf);
    }
    assert_eq!(leaves.len() as u64, head["tree_size"].as_u64().unwrap());
    let root = evershard_engine::merkle::root_of_leaves(&leaves);
    assert_eq!(unhex(head["root_hash"].as_str().unwrap()), root.to_vec());
}

#[test]
fn a_type_the_binary_does_not_know_is_reported_unknown_and_still_checked() {
    use evershard_engine::{AppendRequest, JournalConfig, JournalWriter, NewEvent};
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("store");
    let stream = StreamId::new("Booking", "room-1");
    {
        let journal = JournalWriter::open(&dir, JournalConfig::default()).unwrap();
        for sequence in 0..3u64 {
            let event = NewEvent {
                event_id: uuid::Uuid::new_v4(),
                event_type: "booking.made".into(),
                event_version: "1.0".into(),
                timestamp: chrono::Utc::now(),
                correlation_id: uuid::Uuid::new_v4(),
                causation_id: None,
                source: "test".into(),
                user_id: None,
                session_id: None,
                audit_context: None,
                payload: vec![2, 0x80],
            };
            let request = AppendRequest::new(stream.clone(), sequence, vec![event]);
            journal.append_blocking(request).unwrap();
        }
        journal.close().unwrap();
    }
    let out = expect_stdout(&["verify", "--data", p(&dir)], 0);
    assert!(
        out.contains("[unknown type]") && out.contains("result: clean"),
        "{out}"
    );
    let head = digest_to(&dir, &tmp.path().join("d.json"), &[]);
    assert_eq!(head["tree_size"], 3);
    // Its records are still checked: a flipped byte is damage, named.
    Journal::open_read_only(&dir)
        .unwrap()
        .corrupt_record_for_tests(&stream, 2, 30)
        .unwrap();
    let out = expect_stdout(&["verify", "--data", p(&dir)], 1);
    assert!(
        out.contains("PROBLEM Booking/room-1 sequence 2 [journal]: CRC32C"),
        "{out}"
    );
}

/// Mistakes an auditor can make are refused, exit 2, and lose nothing: `keygen KEY` writes
/// KEY.pub (appended, as documented, whatever KEY's extension) and never a secret beside an
/// existing public key; `verify` scoped to a type, id or positions the store does not hold
/// is not "clean", nor is `history` of a type that nothing knows, or of a time range that ends
/// before it begins; `verify --proof-out` never writes over an existing file (the digest);
/// `verify --digest` finds a signed digest changed after signing also without `--pubkey`
/// (exit 1, a finding), and notes a signature by a key it was not given.
#[test]
fn auditor_mistakes_are_refused_and_lose_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let (store, t) = (tmp.path().join("store"), tmp.path());
    demo(&store, "50", "3");

    expect_stdout(&["keygen", p(&t.join("audit.key"))], 0);
    assert!(t.join("audit.key.pub").is_file() && !t.join("audit.pub").exists());
    std::fs::write(t.join("fresh.key.pub"), "kept").unwrap();
    common::cli::expect_exit(&["keygen", p(&t.join("fresh.key"))], 2);
    assert!(
        !t.join("fresh.key").exists(),
        "a secret beside a public key it does not match"
    );
    assert_eq!(
        std::fs::read_to_string(t.join("fresh.key.pub")).unwrap(),
        "kept"
    );

    let (id, _) = streams(&store).remove(0);
    for scope in [
        vec!["--type", "ProdctStock"],
        vec!["--type", "ProductStock", "--id", "no-such-sku"],
        vec!["--from-position", "1000000"],
    ] {
        let mut args = vec!["verify", "--data", p(&store)];
        args.extend_from_slice(&scope);
        common::cli::expect_exit(&args, 2);
    }
    let out = expect_stdout(
        &[
            "verify",
            "--data",
            p(&store),
            "--type",
            "ProductStock",
            "--id",
            &id,
        ],
        0,
    );
    assert!(out.contains("result: clean"), "{out}");

    common::cli::expect_exit(
        &["history", "--data", p(&store), "--type", "ProdctStock"],
        2,
    );
    let listed = expect_stdout(
        &["history", "--data", p(&store), "--type", "productstock"],
        0,
    );
    assert!(listed.contains("ProductStock/"), "{listed}");
    common::cli::expect_exit(
        &[
            "history",
            "--data",
            p(&store),
            "--from",
            "2030-01-01T00:00:00Z",
            "--to",
            "2020-01-01T00:00:00Z",
        ],
        2,
    );

    let digest = t.join("digest.json");
    digest_to(&store, &digest, &[]);
    let kept = std::fs::read(&digest).unwrap();
    common::cli::expect_exit(
        &[
            "verify",
            "--data",
            p(&store),
            "--digest",
            p(&digest),
            "--proof-out",
            p(&digest),
        ],
        2,
    );
    assert_eq!(
        std::fs::read(&digest).unwrap(),
        kept,
        "the digest was overwritten"
    );

    // A signed digest whose size and root were changed after signing (to those of a digest
    // taken at another size: a consistent pair, so only the signature can tell).
    let signed = digest_to(
        &store,
        &t.join("signed.json"),
        &["--sign", p(&t.join("audit.key"))],
    );
    let earlier = digest_to(&store, &t.join("earlier.json"), &["--at-position", "10"]);
    let mut forged = signed.clone();
    forged["tree_size"] = earlier["tree_size"].clone();
    forged["root_hash"] = earlier["root_hash"].clone();
    let forged = write_json(&t.join("forged.json"), &forged);
    let verify_forged = ["verify", "--data", p(&store), "--digest", p(&forged)];
    let (stdout, _) = common::cli::expect_exit(&verify_forged, 1);
    assert!(
        stdout.contains("PROBLEM") && stdout.contains("signature"),
        "{stdout}"
    );
    // The untouched one holds, and says its key was not pinned.
    let signed_file = t.join("signed.json");
    let verify_signed = ["verify", "--data", p(&store), "--digest", p(&signed_file)];
    let (stdout, _) = common::cli::expect_exit(&verify_signed, 0);
    assert!(stdout.contains("pass --pubkey to pin it"), "{stdout}");
}
