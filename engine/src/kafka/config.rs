//! The publisher's configuration: the seed's `KafkaConfigSchema` (brokers, client id, SSL,
//! SASL PLAIN / SCRAM-SHA-256 / SCRAM-SHA-512, retries, request and connection timeouts) plus
//! what the publisher itself needs. Credentials never reach a log line or an error text: the
//! `Debug` impls redact them and error texts are scrubbed (`KafkaConfig::redact`).

use std::time::Duration;

/// A SASL mechanism of the seed's schema.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SaslMechanism {
    Plain,
    ScramSha256,
    ScramSha512,
}

impl SaslMechanism {
    /// librdkafka's name (`sasl.mechanism`).
    pub fn name(self) -> &'static str {
        match self {
            SaslMechanism::Plain => "PLAIN",
            SaslMechanism::ScramSha256 => "SCRAM-SHA-256",
            SaslMechanism::ScramSha512 => "SCRAM-SHA-512",
        }
    }

    /// Parses the seed's spelling (`plain`, `scram-sha-256`, `scram-sha-512`), any case.
    pub fn parse(s: &str) -> Option<SaslMechanism> {
        match s.to_ascii_lowercase().as_str() {
            "plain" => Some(SaslMechanism::Plain),
            "scram-sha-256" => Some(SaslMechanism::ScramSha256),
            "scram-sha-512" => Some(SaslMechanism::ScramSha512),
            _ => None,
        }
    }
}

/// SASL credentials. `Debug` prints the mechanism only.
#[derive(Clone, PartialEq, Eq)]
pub struct Sasl {
    pub mechanism: SaslMechanism,
    pub username: String,
    pub password: String,
}

impl std::fmt::Debug for Sasl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sasl")
            .field("mechanism", &self.mechanism)
            .field("username", &"<redacted>")
            .field("password", &"<redacted>")
            .finish()
    }
}

/// How the publisher connects and publishes. Build with [`KafkaConfig::new`] and the setters.
#[derive(Clone)]
pub struct KafkaConfig {
    /// `host:port` of the bootstrap brokers (a `kafka://` or `tcp://` prefix is dropped).
    pub brokers: Vec<String>,
    /// The client id (`clientId`). Default `evershard`.
    pub client_id: String,
    /// TLS to the brokers. Default false (the seed's production config sets it to true).
    pub ssl: bool,
    /// A CA bundle to verify the brokers with (default: the system's).
    pub ssl_ca_location: Option<String>,
    pub sasl: Option<Sasl>,
    /// librdkafka's retries of one produce request (`retries`). Default 5.
    pub retries: u32,
    /// A request's timeout; also how long a message may wait for its acknowledgement before
    /// the publisher gives up on the batch, recovers and sends again. Default 30 s.
    pub request_timeout: Duration,
    /// Timeout of a TCP + TLS + SASL connection setup. Default 10 s.
    pub connection_timeout: Duration,
    /// The name of this publisher's cursors in the store (one per cluster). Default `kafka`.
    pub publisher: String,
    /// Only these topics (default: every topic of the store but the dead-letter topic).
    pub topics: Option<Vec<String>>,
    /// Replication factor of the topics the publisher creates (-1: the broker's default).
    pub replication_factor: i32,
    /// Messages read per partition per round at most. Default 5,000.
    pub batch_max: usize,
    /// The publisher's own backoff after a failed round: from `backoff_min`, doubling, at
    /// most `backoff_max`. Default 100 ms .. 5 s.
    pub backoff_min: Duration,
    pub backoff_max: Duration,
    /// More librdkafka properties (values are redacted in `Debug`).
    pub extra: Vec<(String, String)>,
}

impl std::fmt::Debug for KafkaConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KafkaConfig")
            .field("brokers", &self.brokers)
            .field("client_id", &self.client_id)
            .field("ssl", &self.ssl)
            .field("ssl_ca_location", &self.ssl_ca_location)
            .field("sasl", &self.sasl)
            .field("retries", &self.retries)
            .field("request_timeout", &self.request_timeout)
            .field("connection_timeout", &self.connection_timeout)
            .field("publisher", &self.publisher)
            .field("topics", &self.topics)
            .field("replication_factor", &self.replication_factor)
            .field("batch_max", &self.batch_max)
            .field(
                "extra",
                &self
                    .extra
                    .iter()
                    .map(|(k, _)| (k.as_str(), "<redacted>"))
                    .collect::<Vec<_>>(),
            )
            .finish()
    }
}

impl KafkaConfig {
    /// The seed's defaults for `brokers` given as a comma-separated list or one address.
    pub fn new(brokers: impl AsRef<str>) -> KafkaConfig {
        KafkaConfig {
            brokers: brokers
                .as_ref()
                .split(',')
                .map(|b| b.trim())
                .filter(|b| !b.is_empty())
                .map(|b| {
                    b.trim_start_matches("kafka://")
                        .trim_start_matches("tcp://")
                        .to_owned()
                })
                .collect(),
            client_id: "evershard".into(),
            ssl: false,
            ssl_ca_location: None,
            sasl: None,
            retries: 5,
            request_timeout: Duration::from_millis(30_000),
            connection_timeout: Duration::from_millis(10_000),
            publisher: "kafka".into(),
            topics: None,
            replication_factor: -1,
            batch_max: 5_000,
            backoff_min: Duration::from_millis(100),
            backoff_max: Duration::from_secs(5),
            extra: Vec::new(),
        }
    }

    pub fn client_id(mut self, id: impl Into<String>) -> Self {
        self.client_id = id.into();
        self
    }
    pub fn ssl(mut self, on: bool) -> Self {
        self.ssl = on;
        self
    }
    pub fn sasl(
        mut self,
        mechanism: SaslMechanism,
        username: impl Into<String>,
        password: impl Into<String>,
    ) -> Self {
        self.sasl = Some(Sasl {
            mechanism,
            username: username.into(),
            password: password.into(),
        });
        self
    }
    pub fn retries(mut self, retries: u32) -> Self {
        self.retries = retries;
        self
    }
    pub fn request_timeout(mut self, t: Duration) -> Self {
        self.request_timeout = t;
        self
    }
    pub fn connection_timeout(mut self, t: Duration) -> Self {
        self.connection_timeout = t;
        self
    }
    pub fn publisher(mut self, name: impl Into<String>) -> Self {
        self.publisher = name.into();
        self
    }
    pub fn topics(mut self, topics: impl IntoIterator<Item = impl Into<String>>) -> Self {
        self.topics = Some(topics.into_iter().map(Into::into).collect());
        self
    }
    pub fn replication_factor(mut self, factor: i32) -> Self {
        self.replication_factor = factor;
        self
    }
    pub fn batch_max(mut self, max: usize) -> Self {
        self.batch_max = max.max(1);
        self
    }
    pub fn backoff(mut self, min: Duration, max: Duration) -> Self {
        self.backoff_min = min;
        self.backoff_max = max.max(min);
        self
    }
    pub fn set(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.extra.push((key.into(), value.into()));
        self
    }

    /// `security.protocol` for `ssl` and `sasl`.
    pub fn security_protocol(&self) -> &'static str {
        match (self.ssl, self.sasl.is_some()) {
            (false, false) => "plaintext",
            (true, false) => "ssl",
            (false, true) => "sasl_plaintext",
            (true, true) => "sasl_ssl",
        }
    }

    /// Checks what can be checked without a broker.
    pub(crate) fn validate(&self) -> Result<(), String> {
        if self.brokers.is_empty() {
            return Err("no brokers".into());
        }
        if self.client_id.is_empty() {
            return Err("empty client id".into());
        }
        if !crate::topics::valid_name(&self.publisher) {
            return Err(format!("invalid publisher name {:?}", self.publisher));
        }
        if self.request_timeout.is_zero() || self.connection_timeout.is_zero() {
            return Err("timeouts must be positive".into());
        }
        if let Some(sasl) = &self.sasl {
            if sasl.username.is_empty() {
                return Err("SASL needs a username".into());
            }
            if sasl.password.is_empty() {
                return Err("SASL needs a password".into());
            }
        }
        // The idempotent producer needs retries; and `extra`, applied last, must not take
        // back the guarantees the publisher documents.
        if self.retries == 0 {
            return Err("retries must be at least 1 (the idempotent producer needs them)".into());
        }
        for (key, value) in &self.extra {
            let weakens = match key.as_str() {
                "acks" | "request.required.acks" => !matches!(value.as_str(), "all" | "-1"),
                "enable.idempotence" => value != "true",
                "allow.auto.create.topics" => value != "false",
                _ => false,
            };
            if weakens {
                return Err(format!(
                    "extra property {key}={value} would weaken the publisher's guarantees (acks from all in-sync replicas, idempotence, topics created with the store's partition count)"
                ));
            }
        }
        if let Some(ca) = &self.ssl_ca_location {
            // A CA file with TLS off would be silently ignored: the connection would go out
            // in plain text while the operator believes it is verified.
            if !self.ssl {
                return Err("ssl_ca_location is set but ssl is off".into());
            }
            if !std::path::Path::new(ca).exists() {
                return Err(format!("ssl_ca_location {ca:?} does not exist"));
            }
        }
        Ok(())
    }

    /// The librdkafka properties common to the producer, the admin client and the recovery
    /// consumer.
    pub(crate) fn client_properties(&self) -> Vec<(&'static str, String)> {
        let mut p = vec![
            ("bootstrap.servers", self.brokers.join(",")),
            ("client.id", self.client_id.clone()),
            ("security.protocol", self.security_protocol().into()),
            (
                "request.timeout.ms",
                self.request_timeout.as_millis().to_string(),
            ),
            (
                "socket.timeout.ms",
                self.request_timeout.as_millis().max(10).to_string(),
            ),
            (
                "socket.connection.setup.timeout.ms",
                self.connection_timeout.as_millis().max(1000).to_string(),
            ),
            // A metadata request of a producer-type client (the admin client, the producer)
            // asks the broker to create a missing topic by default: a stock Kafka with
            // `auto.create.topics.enable` then makes it with its own partition count, and the
            // store's topic (8 partitions) is refused as a mismatch (found by review,
            // 2026-11-28). Topics are created by the publisher, with the store's count.
            ("allow.auto.create.topics", "false".into()),
            ("reconnect.backoff.ms", "100".into()),
            ("reconnect.backoff.max.ms", "2000".into()),
            // Keep librdkafka's own chatter off stderr: errors reach the publisher's status.
            ("log_level", "3".into()),
        ];
        if let Some(ca) = &self.ssl_ca_location {
            p.push(("ssl.ca.location", ca.clone()));
        }
        if let Some(sasl) = &self.sasl {
            p.push(("sasl.mechanism", sasl.mechanism.name().into()));
            p.push(("sasl.username", sasl.username.clone()));
            p.push(("sasl.password", sasl.password.clone()));
        }
        p
    }

    /// `text` with the credentials replaced by `<redacted>`: the SASL username and password,
    /// and the values of the extra properties whose names say they are secret
    /// ([`secret_property`]: passwords, keys, tokens, JAAS configuration); other extra values
    /// (`acks`, `linger.ms`) are settings, and scrubbing them mangled texts (every `all` of
    /// an `acks=all` configuration). Every occurrence of every credential is hidden, also
    /// where two overlap. A credential shorter than [`REDACTABLE_BYTES_MIN`] is not searched
    /// for (a one-letter password is in most words): a text in which one shows outside the
    /// hidden parts is withheld whole instead of shown with the credential in it.
    pub(crate) fn redact(&self, text: &str) -> String {
        let mut secrets: Vec<&str> = Vec::new();
        if let Some(sasl) = &self.sasl {
            secrets.push(&sasl.password);
            secrets.push(&sasl.username);
        }
        secrets.extend(
            self.extra
                .iter()
                .filter(|(k, _)| secret_property(k))
                .map(|(_, v)| v.as_str()),
        );
        secrets.retain(|s| !s.is_empty());
        let mut hidden = vec![false; text.len()];
        for s in secrets.iter().filter(|s| s.len() >= REDACTABLE_BYTES_MIN) {
            for (at, _) in text.match_indices(s) {
                hidden[at..at + s.len()].fill(true);
            }
        }
        let short_shows = secrets
            .iter()
            .filter(|s| s.len() < REDACTABLE_BYTES_MIN)
            .any(|s| {
                text.match_indices(s)
                    .any(|(at, _)| !hidden[at..at + s.len()].iter().all(|h| *h))
            });
        if short_shows {
            return WITHHELD.to_owned();
        }
        // Runs of hidden bytes begin and end where a match does: on `char` boundaries.
        let mut out = String::with_capacity(text.len());
        let mut at = 0;
        while at < text.len() {
            let run = hidden[at..]
                .iter()
                .take_while(|h| **h == hidden[at])
                .count();
            match hidden[at] {
                true => out.push_str("<redacted>"),
                false => out.push_str(&text[at..at + run]),
            }
            at += run;
        }
        out
    }
}

/// Whether an extra librdkafka property holds a secret, by its name (`ssl.key.password`,
/// `ssl.keystore.password`, `sasl.oauthbearer.client.secret`, `sasl.jaas.config`, ...).
fn secret_property(name: &str) -> bool {
    let name = name.to_ascii_lowercase();
    [
        "password",
        "secret",
        "key",
        "token",
        "jaas",
        "credential",
        "pem",
        "sasl.username",
    ]
    .iter()
    .any(|word| name.contains(word))
}

/// Bytes a credential needs for [`KafkaConfig::redact`] to replace it in a text.
const REDACTABLE_BYTES_MIN: usize = 3;

/// What [`KafkaConfig::redact`] gives for a text that holds a credential too short to
/// replace.
const WITHHELD: &str = "<error text withheld: it may hold a credential too short to redact>";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_short_credential_withholds_the_text_and_a_longer_one_goes_first() {
        let short = KafkaConfig::new("b:9092").sasl(SaslMechanism::Plain, "operator", "pw");
        assert_eq!(short.redact("auth failed: bad pw for operator"), WITHHELD);
        assert_eq!(
            short.redact("broker down"),
            "broker down",
            "a text without the short credential is shown"
        );
        // The username inside another credential: the longer one goes first, whole.
        let nested = KafkaConfig::new("b:9092")
            .sasl(SaslMechanism::Plain, "bob", "s3cret-pw")
            .set("ssl.key.password", "bob-key-1");
        assert_eq!(
            nested.redact("user bob, key bob-key-1"),
            "user <redacted>, key <redacted>"
        );
        // An empty extra value redacts nothing and withholds nothing.
        let empty = KafkaConfig::new("b:9092").set("ssl.key.password", "");
        assert_eq!(empty.redact("tls failed"), "tls failed");
        // Settings are not secrets: short or not, they leave the text alone.
        let settings = KafkaConfig::new("b:9092")
            .set("acks", "all")
            .set("linger.ms", "5");
        let text = "Connect to ipv4#10.0.0.5:9092 failed: all brokers down";
        assert_eq!(settings.redact(text), text);
        // Overlapping credentials are hidden together; a short one inside a hidden part
        // does not withhold the text.
        let overlap = KafkaConfig::new("b:9092")
            .sasl(SaslMechanism::Plain, "ab", "abcd-pass")
            .set("sasl.oauthbearer.client.secret", "pass-wxyz");
        assert_eq!(overlap.redact("got abcd-pass-wxyz!"), "got <redacted>!");
        // A credential that is a piece of the marker does not garble an earlier marker.
        let marker = KafkaConfig::new("b:9092").sasl(SaslMechanism::Plain, "red", "s3cret-pw");
        assert_eq!(
            marker.redact("s3cret-pw for red"),
            "<redacted> for <redacted>"
        );
    }

    #[test]
    fn debug_and_errors_never_show_credentials() {
        let c = KafkaConfig::new("kafka://b1:9092, b2:9092")
            .ssl(true)
            .sasl(SaslMechanism::ScramSha512, "alice-user", "s3cret-pw")
            .set("ssl.key.password", "keypass-xyz");
        assert_eq!(c.brokers, vec!["b1:9092", "b2:9092"]);
        assert_eq!(c.security_protocol(), "sasl_ssl");
        let debug = format!("{c:?}");
        for secret in ["alice-user", "s3cret-pw", "keypass-xyz"] {
            assert!(!debug.contains(secret), "{debug}");
        }
        assert_eq!(
            c.redact("auth failed for alice-user with s3cret-pw"),
            "auth failed for <redacted> with <redacted>"
        );
        assert!(c
            .client_properties()
            .iter()
            .any(|(k, v)| *k == "sasl.mechanism" && v == "SCRAM-SHA-512"));
        assert_eq!(
            SaslMechanism::parse("scram-sha-256"),
            Some(SaslMechanism::ScramSha256)
        );
        assert_eq!(KafkaConfig::new("b").security_protocol(), "plaintext");
    }

    #[test]
    fn tls_and_sasl_misconfigurations_are_refused_before_connecting_without_echoing_secrets() {
        let base = || KafkaConfig::new("b1:9092");
        assert_eq!(
            base()
                .sasl(SaslMechanism::Plain, "alice-user", "")
                .validate(),
            Err("SASL needs a password".into())
        );
        assert_eq!(
            base()
                .sasl(SaslMechanism::Plain, "", "s3cret-pw")
                .validate(),
            Err("SASL needs a username".into())
        );
        let mut ca_without_tls = base();
        ca_without_tls.ssl_ca_location = Some("/etc/ssl/certs".into());
        assert_eq!(
            ca_without_tls.validate(),
            Err("ssl_ca_location is set but ssl is off".into())
        );
        let mut missing_ca = base().ssl(true);
        missing_ca.ssl_ca_location = Some("/nonexistent/ca.pem".into());
        assert!(missing_ca
            .validate()
            .unwrap_err()
            .contains("does not exist"));
        let good = base()
            .ssl(true)
            .sasl(SaslMechanism::ScramSha256, "alice-user", "s3cret-pw");
        assert_eq!(good.validate(), Ok(()));
        let props = format!("{:?}", good);
        assert!(!props.contains("s3cret-pw") && !props.contains("alice-user"));
    }

    /// `extra` is applied last: it may tune the clients, not take back acks from all
    /// in-sync replicas, idempotence, or topics created with the store's partition count;
    /// and no client asks the broker to create a topic (a stock Kafka would make it with its
    /// own count).
    #[test]
    fn extra_properties_cannot_weaken_the_guarantees() {
        let base = || KafkaConfig::new("b1:9092");
        for (key, value) in [
            ("acks", "1"),
            ("request.required.acks", "0"),
            ("enable.idempotence", "false"),
            ("allow.auto.create.topics", "true"),
        ] {
            let refused = base().set(key, value).validate().unwrap_err();
            assert!(refused.contains(key), "{refused}");
        }
        assert_eq!(base().set("acks", "all").validate(), Ok(()));
        assert_eq!(base().set("linger.ms", "20").validate(), Ok(()));
        assert!(base().retries(0).validate().is_err());
        assert!(base()
            .client_properties()
            .iter()
            .any(|(k, v)| *k == "allow.auto.create.topics" && v == "false"));
    }
}
