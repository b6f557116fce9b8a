//! A contract test per topic: every aggregate type runs its workload through a durable engine;
//! then, for every topic its events reached, each message is checked field by field against
//! the seed's envelope for that topic — names, JSON types, nullability — and its payload
//! against the aggregate's own `payload_json` of the stored event (whose fields the
//! aggregates' contract tests pin to the seeds). Headers and key are checked too. A route to a
//! `coworking.*` topic checks the coworking envelope. Seeded and deterministic.

use evershard::aggregates::order::Order;
use evershard::aggregates::workloads::visit_all;
use evershard::engine::topic::partition_for;
use evershard::model::{DecideContext, DemoRng, DomainEvent, Workload, WorkloadVisitor};
use evershard::{CommandError, Engine, Message, TopicRoute, WireFormat};
use serde_json::Value;
use std::collections::{BTreeMap, HashMap};
use std::future::Future;
use std::pin::Pin;

type Drive = Box<dyn Fn(Engine, u64) -> Pin<Box<dyn Future<Output = ()>>>>;

struct Drivers(Vec<Drive>, Option<evershard::EngineBuilder>);

impl WorkloadVisitor for Drivers {
    fn visit<A: Workload>(&mut self) {
        self.1 = self.1.take().map(|b| b.register::<A>());
        self.0
            .push(Box::new(|engine, seed| Box::pin(drive::<A>(engine, seed))));
    }
}

async fn drive<A: Workload>(engine: Engine, seed: u64) {
    let mut rng = DemoRng::new(seed);
    let ids: Vec<String> = (0..6).map(|_| rng.uuid().to_string()).collect();
    let mut states = vec![A::State::default(); ids.len()];
    for _ in 0..25 {
        for (k, id) in ids.iter().enumerate() {
            let ctx = DecideContext::new(id.clone(), chrono::Utc::now());
            let command = A::sample_command(&states[k], &ctx, &mut rng);
            match engine.execute::<A>(id, command).await {
                Ok(events) => events
                    .iter()
                    .for_each(|e| A::apply(&mut states[k], &e.payload)),
                Err(CommandError::Rejected(_)) => {}
                Err(e) => panic!("{}: {e}", A::TYPE),
            }
        }
    }
}

fn is_uuid(v: &Value) -> bool {
    v.as_str().is_some_and(|s| uuid::Uuid::parse_str(s).is_ok())
}
fn is_time(v: &Value) -> bool {
    v.as_str()
        .is_some_and(|s| chrono::DateTime::parse_from_rfc3339(s).is_ok() && s.ends_with('Z'))
}
fn keys(v: &Value) -> Vec<&str> {
    let mut k: Vec<&str> = v.as_object().unwrap().keys().map(|k| k.as_str()).collect();
    k.sort_unstable();
    k
}

/// domain-events-catalog.md: `{"event_type","event_id","timestamp","payload", ...metadata}`.
fn check_catalog(m: &Message) {
    let v = &m.value_json();
    let mut want = vec![
        "aggregate_id",
        "aggregate_type",
        "causation_id",
        "correlation_id",
        "event_id",
        "event_type",
        "event_version",
        "global_position",
        "payload",
        "sequence",
        "source",
        "timestamp",
        "user_id",
    ];
    want.sort_unstable();
    assert_eq!(keys(v), want, "{}", m.topic());
    assert_eq!(v["event_type"], m.event_type());
    assert!(is_uuid(&v["event_id"]) && is_time(&v["timestamp"]));
    assert!(v["payload"].is_object());
    assert!(v["event_version"].is_string() && v["aggregate_type"].is_string());
    assert_eq!(v["aggregate_id"], m.key());
    assert_eq!(v["sequence"].as_u64(), Some(m.sequence));
    assert_eq!(v["global_position"].as_u64(), Some(m.global_position));
    assert!(is_uuid(&v["correlation_id"]));
    assert!(v["causation_id"].is_null() || is_uuid(&v["causation_id"]));
    assert!(v["source"].is_string());
    assert!(v["user_id"].is_null() || v["user_id"].is_string());
}

/// event-architecture-kafka.md 3.1 `BaseEventSchema` + payload.
fn check_gacp(m: &Message) {
    let v = &m.value_json();
    for k in keys(v) {
        assert!(
            [
                "eventId",
                "eventType",
                "eventVersion",
                "timestamp",
                "correlationId",
                "causationId",
                "source",
                "userId",
                "sessionId",
                "auditContext",
                "payload"
            ]
            .contains(&k),
            "{}: unexpected {k}",
            m.topic()
        );
    }
    assert!(is_uuid(&v["eventId"]));
    assert!(v["eventType"].as_str().is_some_and(|s| !s.is_empty()));
    let version = v["eventVersion"].as_str().unwrap();
    let (major, minor) = version.split_once('.').unwrap();
    assert!(
        major.parse::<u32>().is_ok() && minor.parse::<u32>().is_ok(),
        "{version}"
    );
    assert!(is_time(&v["timestamp"]) && is_uuid(&v["correlationId"]));
    // `.optional()`: absent or a UUID, never null.
    for k in ["causationId", "userId", "sessionId"] {
        assert!(v.get(k).is_none() || is_uuid(&v[k]), "{k}: {}", v[k]);
    }
    // `auditContext: { ipAddress: ip?, userAgent: string?, complianceFlags: string[] }?`
    if let Some(audit) = v.get("auditContext") {
        for k in keys(audit) {
            assert!(
                ["ipAddress", "userAgent", "complianceFlags"].contains(&k),
                "auditContext: unexpected {k}"
            );
        }
        assert!(audit.get("ipAddress").is_none_or(|ip| ip
            .as_str()
            .is_some_and(|s| s.parse::<std::net::IpAddr>().is_ok())));
        assert!(audit.get("userAgent").is_none_or(Value::is_string));
        assert!(audit["complianceFlags"]
            .as_array()
            .is_some_and(|flags| flags.iter().all(Value::is_string)));
    }
    assert!(v["source"].as_str().is_some_and(|s| !s.is_empty()));
    assert!(v["payload"].is_object());
}

/// coworking-topics.md: `{"eventId","eventType","occurredAt","data"}`.
fn check_coworking(m: &Message) {
    let v = &m.value_json();
    assert_eq!(keys(v), vec!["data", "eventId", "eventType", "occurredAt"]);
    assert!(is_uuid(&v["eventId"]) && v["eventType"].is_string() && is_time(&v["occurredAt"]));
    assert!(v["data"].is_object());
}

fn check_headers(m: &Message) {
    let names: Vec<&str> = m.headers().map(|(k, _)| k).collect();
    assert_eq!(
        names,
        [
            "event_id",
            "event_type",
            "event_version",
            "aggregate_type",
            "sequence",
            "global_position",
            "correlation_id",
            "causation_id"
        ]
    );
    assert_eq!(m.header("event_id"), Some(m.event_id.to_string().as_str()));
    assert_eq!(m.header("sequence"), Some(m.sequence.to_string().as_str()));
    assert_eq!(
        m.header("global_position"),
        Some(m.global_position.to_string().as_str())
    );
    for (k, v) in m.headers() {
        assert!(v.is_some() || k == "causation_id", "{k} is null");
    }
}

/// The payload of a message equals the aggregate's own `payload_json` of the stored event.
struct PayloadCheck<'a>(&'a Engine, &'a HashMap<uuid::Uuid, Message>, usize);
impl WorkloadVisitor for PayloadCheck<'_> {
    fn visit<A: Workload>(&mut self) {
        for (stream, _) in self.0.journal().streams(Some(A::TYPE)).map(Result::unwrap) {
            for e in self.0.history::<A>(&stream.aggregate_id).unwrap() {
                let m = &self.1[&e.event_id];
                let value = m.value_json();
                let payload = match WireFormat::for_topic(m.topic()) {
                    WireFormat::Coworking => &value["data"],
                    _ => &value["payload"],
                };
                assert_eq!(payload, &e.payload.payload_json(), "{}", e.event_type);
                assert_eq!(m.topic(), e.payload.topic());
                self.2 += 1;
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_topic_matches_its_seed_contract() {
    let seed = 0xc047_5ac7;
    eprintln!("seed {seed}");
    let dir = tempfile::tempdir().unwrap();
    let mut drivers = Drivers(Vec::new(), Some(Engine::builder(dir.path())));
    visit_all(&mut drivers);
    let engine = drivers.1.take().unwrap().open().await.unwrap();
    for (i, d) in drivers.0.iter().enumerate() {
        d(engine.clone(), seed + i as u64).await;
    }
    let durable = engine.journal().durable_position();
    assert!(
        engine
            .wait_indexed(durable, std::time::Duration::from_secs(60))
            .await
    );

    let log = engine.topic_log().unwrap();
    let mut by_id = HashMap::new();
    let mut per_topic: BTreeMap<String, usize> = BTreeMap::new();
    for info in log.topics().unwrap() {
        assert_eq!(
            info.format,
            WireFormat::for_topic(&info.name),
            "{}",
            info.name
        );
        for p in 0..info.partitions {
            for m in log.read(&info.name, p, 0, usize::MAX).unwrap() {
                assert_eq!(partition_for(m.key(), info.partitions), p);
                check_headers(&m);
                match info.format {
                    WireFormat::Catalog => check_catalog(&m),
                    WireFormat::Gacp => check_gacp(&m),
                    _ => check_coworking(&m),
                }
                *per_topic.entry(info.name.clone()).or_default() += 1;
                by_id.insert(m.event_id, m);
            }
        }
    }
    eprintln!("{per_topic:?}");
    for topic in [
        "business.orders",
        "business.payments",
        "business.inventory",
        "clinics.appointments",
        "bank.credits",
        "cultivation.plants.v1",
        "electronics.telemetry",
    ] {
        assert!(
            per_topic.get(topic).is_some_and(|n| *n > 0),
            "no messages on {topic}"
        );
    }
    let mut check = PayloadCheck(&engine, &by_id, 0);
    visit_all(&mut check);
    assert_eq!(check.2, by_id.len(), "every message is one stored event");
    engine.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn routes_change_topic_and_envelope_without_touching_the_aggregate() {
    let dir = tempfile::tempdir().unwrap();
    let engine = Engine::builder(dir.path())
        .register::<Order>()
        .route::<Order>(TopicRoute::to("orders.v2").format(WireFormat::Catalog))
        .route::<Order>(TopicRoute::to("coworking.orders"))
        .open()
        .await
        .unwrap();
    drive::<Order>(engine.clone(), 11).await;
    let durable = engine.journal().durable_position();
    assert!(
        engine
            .wait_indexed(durable, std::time::Duration::from_secs(60))
            .await
    );
    let log = engine.topic_log().unwrap();
    let names: Vec<String> = log.topics().unwrap().into_iter().map(|t| t.name).collect();
    assert_eq!(
        names,
        ["coworking.orders", "orders.v2"],
        "no business.orders any more"
    );
    let v2 = log.topic("orders.v2").unwrap();
    let cw = log.topic("coworking.orders").unwrap();
    assert_eq!(v2.format, WireFormat::Catalog);
    assert_eq!(cw.format, WireFormat::Coworking);
    assert_eq!(v2.messages(), cw.messages());
    assert_eq!(
        v2.messages() as usize,
        engine.journal().read_global(1).count()
    );
    for p in 0..cw.partitions {
        for m in log.read("coworking.orders", p, 0, usize::MAX).unwrap() {
            check_coworking(&m);
            check_headers(&m);
        }
        for m in log.read("orders.v2", p, 0, usize::MAX).unwrap() {
            check_catalog(&m);
        }
    }
    engine.shutdown().await.unwrap();
}

/// The seed's `sessionId` and `auditContext` (event-architecture-kafka.md 3.1) travel from the
/// command's metadata into the stored record (format 2), the typed envelope and the GACP
/// message; a command without them still writes format 1 and publishes neither field.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn session_and_audit_context_reach_the_record_the_envelope_and_the_gacp_message() {
    use evershard::aggregates::order::{CreateOrder, LineRequest};
    use evershard::model::{AuditContext, Currency, Metadata, Money};
    use uuid::Uuid;

    let dir = tempfile::tempdir().unwrap();
    let engine = Engine::builder(dir.path())
        .register::<Order>()
        .route::<Order>(TopicRoute::to("orders.gacp").format(WireFormat::Gacp))
        .open()
        .await
        .unwrap();
    // Order ids are UUIDs.
    let id = |n: u128| Uuid::from_u128(0x0de1_0000 + n).to_string();
    let create = |n: u128| CreateOrder {
        idempotency_key: Uuid::from_u128(n),
        customer_id: Uuid::from_u128(6),
        currency: Currency::USD,
        lines: vec![LineRequest {
            product_id: "sku-1".into(),
            quantity: 1,
            unit_price: Money::from_major(3),
        }],
    };
    let session = Uuid::from_u128(0x5e55);
    let audit = AuditContext::new()
        .ip_address("192.0.2.17".parse().unwrap())
        .user_agent("evershard-tests/1.0")
        .compliance_flag("GACP")
        .compliance_flag("21CFR11");
    let metadata = Metadata::new("clinic-app")
        .user_id("3f1c0d9e-5a1b-4c7e-9a43-0b6f1f1f2a10")
        .session_id(session)
        .audit_context(audit.clone());
    let audited = engine
        .execute_with::<Order>(&id(1), create(1), metadata)
        .await
        .unwrap();
    assert_eq!(audited[0].session_id, Some(session));
    assert_eq!(audited[0].audit_context.as_ref(), Some(&audit));
    let plain = engine.execute::<Order>(&id(2), create(2)).await.unwrap();
    assert_eq!(plain[0].session_id, None);
    assert_eq!(plain[0].audit_context, None);

    // The stored records: format 2 only where needed; read back the same.
    let journal = engine.journal();
    let stream = |id: &str| evershard::StreamId::new("Order", id);
    let first = journal.record_bytes(&stream(&id(1)), 1).unwrap().unwrap();
    let second = journal.record_bytes(&stream(&id(2)), 1).unwrap().unwrap();
    assert_eq!((first[0], second[0]), (2, 1), "record formats");
    let history = engine.history::<Order>(&id(1)).unwrap();
    assert_eq!(history[0].session_id, Some(session));
    assert_eq!(history[0].audit_context.as_ref(), Some(&audit));
    let report = journal.verify();
    assert!(report.is_clean(), "{report:?}");

    let durable = journal.durable_position();
    assert!(
        engine
            .wait_indexed(durable, std::time::Duration::from_secs(60))
            .await
    );
    let log = engine.topic_log().unwrap();
    let topic = log.topic("orders.gacp").unwrap();
    let mut seen = 0;
    for p in 0..topic.partitions {
        for m in log.read("orders.gacp", p, 0, usize::MAX).unwrap() {
            check_gacp(&m);
            let v = m.value_json();
            if m.key() == id(1) {
                assert_eq!(v["sessionId"], session.to_string());
                assert_eq!(
                    v["auditContext"],
                    serde_json::json!({
                        "ipAddress": "192.0.2.17",
                        "userAgent": "evershard-tests/1.0",
                        "complianceFlags": ["GACP", "21CFR11"],
                    })
                );
            } else {
                assert!(v.get("sessionId").is_none() && v.get("auditContext").is_none());
            }
            seen += 1;
        }
    }
    assert_eq!(seen, 2);

    // Limits: too many compliance flags is a typed refusal that writes nothing.
    let mut crowded = AuditContext::new();
    for i in 0..=AuditContext::COMPLIANCE_FLAGS_MAX {
        crowded = crowded.compliance_flag(format!("flag-{i}"));
    }
    let refused = engine
        .execute_with::<Order>(
            &id(3),
            create(3),
            Metadata::new("clinic-app").audit_context(crowded),
        )
        .await;
    assert!(
        matches!(
            refused,
            Err(CommandError::Invalid(
                evershard::engine::InvalidRequest::TooManyComplianceFlags { .. }
            ))
        ),
        "{refused:?}"
    );
    assert_eq!(journal.head(&stream(&id(3))).unwrap().sequence, 0);
    engine.shutdown().await.unwrap();
}
