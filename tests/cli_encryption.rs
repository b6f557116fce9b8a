//! Encrypted stores through the binary (docs/security.md), on a store of credits (sensitive
//! by default) written with a key file, one applicant forgotten:
//! - `verify` is clean without any key (integrity works on the stored bytes; the replay of
//!   sealed payloads is a note), and clean with the key;
//! - `history` and `state` without `--key-file` fail with exit 2 and say to pass it; with a
//!   wrong key file they fail the same way; they never print a payload;
//! - with the key, `history` of the forgotten credit shows each event's metadata with its
//!   payload marked erased, `state` of it exits 2 saying it is erased, and the other credit
//!   reads in full;
//! - the store-wide `history --data DIR` follows the same rules;
//! - `export` with the key marks erased payloads and prints the erasure event (who, why),
//!   every line still carrying the record bytes and hashes;
//! - the store directory is private (0700) and a store opened to others is warned about;
//! - Appointment's data subject is its patient: forgetting the patient erases every
//!   appointment of theirs and no other.

mod common;

use common::cli::expect_exit;
use evershard::aggregates::credit::{ApplicantType, ApplyForCredit, Credit};
use evershard::engine::crypto::{FileKeyProvider, KeyProvider};
use evershard::model::Money;
use evershard::Engine;
use serde_json::Value;
use std::path::Path;
use std::sync::Arc;
use uuid::Uuid;

/// `evershard ARGS.. --data DATA --key-file KEYS`, expecting exit `code`: (stdout, stderr).
fn with_key(args: &[&str], data: &str, key_file: &str, code: i32) -> (String, String) {
    let mut all = args.to_vec();
    all.extend(["--data", data, "--key-file", key_file]);
    expect_exit(&all, code)
}

/// One JSON value per line.
fn json_lines(out: &str) -> Vec<Value> {
    out.lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

async fn write_store(store: &Path, keys: &Path) -> (Uuid, Uuid) {
    let provider: Arc<dyn KeyProvider> = Arc::new(FileKeyProvider::open(keys).unwrap());
    let engine = Engine::builder(store)
        .register::<Credit>()
        .key_provider(provider)
        .open()
        .await
        .unwrap();
    let (kept, forgotten) = (Uuid::from_u128(1), Uuid::from_u128(2));
    for id in [kept, forgotten] {
        engine
            .execute::<Credit>(
                &id.to_string(),
                ApplyForCredit {
                    credit_id: id,
                    applicant_id: Uuid::from_u128(0xa0 + id.as_u128()),
                    applicant_type: ApplicantType::Individual,
                    requested_amount: Money::from_minor(500_000),
                    term_months: 12,
                    purpose: "greenhouse-secret-purpose".into(),
                },
            )
            .await
            .unwrap();
    }
    engine
        .forget_subject(
            &forgotten.to_string(),
            "dpo@example.org",
            "erasure request 7",
        )
        .await
        .unwrap();
    engine.shutdown().await.unwrap();
    (kept, forgotten)
}

#[tokio::test]
async fn encrypted_store_through_the_cli() {
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("store");
    let keys = dir.path().join("master.keys");
    FileKeyProvider::append_new_key(&keys, "m1").unwrap();
    let (kept, forgotten) = write_store(&store, &keys).await;
    let data = store.to_str().unwrap();
    let key_file = keys.to_str().unwrap();
    let (kept, forgotten) = (kept.to_string(), forgotten.to_string());

    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&store).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o700, "store dir mode {mode:o}");
    }

    // Integrity without any key.
    let (out, _) = expect_exit(&["verify", "--data", data], 0);
    assert!(out.contains("result: clean"), "{out}");
    assert!(out.contains("note") && out.contains("--key-file"), "{out}");
    let (out, _) = with_key(&["verify"], data, key_file, 0);
    assert!(out.contains("result: clean"), "{out}");

    // Payloads need the key: a typed refusal, never a payload.
    for args in [
        vec!["history", "Credit", kept.as_str(), "--data", data],
        vec!["state", "Credit", kept.as_str(), "--data", data],
    ] {
        let (out, err) = expect_exit(&args, 2);
        assert!(err.contains("--key-file"), "{err}");
        assert!(!out.contains("greenhouse-secret-purpose"));
    }
    let wrong = dir.path().join("wrong.keys");
    FileKeyProvider::append_new_key(&wrong, "m1").unwrap();
    let (out, err) = with_key(
        &["history", "Credit", &kept],
        data,
        wrong.to_str().unwrap(),
        2,
    );
    assert!(err.contains("wrong master key"), "{err}");
    assert!(!out.contains("greenhouse-secret-purpose"));

    // With the key: the kept credit in full, the forgotten one as metadata only.
    let (out, _) = with_key(&["history", "Credit", &kept, "--json"], data, key_file, 0);
    assert!(out.contains("greenhouse-secret-purpose"), "{out}");
    let (out, _) = with_key(
        &["history", "Credit", &forgotten, "--json"],
        data,
        key_file,
        0,
    );
    let lines = json_lines(&out);
    assert_eq!(lines.len(), 1, "{out}");
    assert_eq!(lines[0]["payload"], serde_json::json!({ "erased": true }));
    assert_eq!(lines[0]["event_type"], "CreditApplicationCreated");
    let (_, err) = with_key(&["state", "Credit", &forgotten], data, key_file, 2);
    assert!(err.contains("erased"), "{err}");
    with_key(&["state", "Credit", &kept], data, key_file, 0);

    // The store-wide trail: the same rules.
    let (out, _) = with_key(&["history", "--json"], data, key_file, 0);
    let lines = json_lines(&out);
    assert_eq!(lines.len(), 3, "{out}");
    assert_eq!(lines[0]["payload"]["purpose"], "greenhouse-secret-purpose");
    assert_eq!(lines[1]["payload"], serde_json::json!({ "erased": true }));
    let (out, err) = expect_exit(&["history", "--data", data], 2);
    assert!(err.contains("--key-file") && out.is_empty(), "{out}\n{err}");

    // Export: erased marked, the erasure event readable, the record bytes on every line.
    let (out, _) = with_key(&["export"], data, key_file, 0);
    let lines = json_lines(&out);
    assert_eq!(lines.len(), 3, "{out}");
    assert!(lines.iter().all(|l| l["record"].is_string()));
    assert_eq!(lines[1]["payload"], serde_json::json!({ "erased": true }));
    assert_eq!(lines[2]["user_id"], "dpo@example.org");
    assert_eq!(lines[2]["payload"]["reason"], "erasure request 7");
    assert_eq!(
        lines[2]["payload"]["earlier_key_ids"],
        serde_json::json!([])
    );

    // A store opened to other users is warned about.
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&store, std::fs::Permissions::from_mode(0o755)).unwrap();
        let (_, err) = expect_exit(&["verify", "--data", data], 0);
        assert!(err.contains("readable by other users"), "{err}");
    }
}

#[tokio::test]
async fn forgetting_a_patient_erases_all_their_appointments_and_no_other() {
    use evershard::aggregates::appointment::CreateAppointment;
    use evershard::engine::{CommandError, StorageError, StreamId};
    let dir = tempfile::tempdir().unwrap();
    let keys = dir.path().join("master.keys");
    FileKeyProvider::append_new_key(&keys, "m1").unwrap();
    let provider: Arc<dyn KeyProvider> = Arc::new(FileKeyProvider::open(&keys).unwrap());
    let engine = Engine::builder(dir.path().join("store"))
        .register::<evershard::aggregates::appointment::Appointment>()
        .key_provider(provider)
        .open()
        .await
        .unwrap();
    let (alice, bob) = (Uuid::from_u128(0xa11ce), Uuid::from_u128(0xb0b));
    let appointments = [(1u128, alice), (2, alice), (3, bob)];
    for (n, patient) in appointments {
        let id = Uuid::from_u128(n);
        engine
            .execute::<evershard::aggregates::appointment::Appointment>(
                &id.to_string(),
                CreateAppointment {
                    appointment_id: id,
                    patient_id: patient,
                    doctor_id: Uuid::from_u128(0xd0c),
                    clinic_id: Uuid::from_u128(0xc11),
                    scheduled_at: chrono::Utc::now() + chrono::Duration::days(3),
                    service_type: "consultation".into(),
                    estimated_cost: Money::from_minor(5_000),
                },
            )
            .await
            .unwrap();
    }
    engine
        .forget_subject(&format!("patient:{alice}"), "dpo", "request")
        .await
        .unwrap();
    for (n, patient) in appointments {
        let id = Uuid::from_u128(n).to_string();
        let state = engine
            .state::<evershard::aggregates::appointment::Appointment>(&id)
            .await;
        let read = engine
            .journal()
            .read_stream(&StreamId::new("Appointment", id.as_str()), 1, 1)
            .next()
            .unwrap();
        if patient == alice {
            assert!(
                matches!(state, Err(CommandError::Erased { .. })),
                "{state:?}"
            );
            assert!(matches!(read, Err(StorageError::Erased { .. })), "{read:?}");
        } else {
            assert!(state.is_ok(), "{state:?}");
            assert!(read.is_ok(), "{read:?}");
        }
    }
    assert!(engine.verify().await.unwrap().is_clean());
    engine.shutdown().await.unwrap();
}
