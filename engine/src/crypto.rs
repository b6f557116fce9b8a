//! Encryption at rest (docs/security.md): the key hierarchy and the AEAD, with no storage.
//!
//! - A **master key** comes from a [`KeyProvider`] the user supplies ([`FileKeyProvider`]
//!   ships). It never enters the store: it only wraps data keys.
//! - A **data key** per data subject (by default the aggregate id; an aggregate can name
//!   another subject with `Aggregate::data_subject`) encrypts that subject's payloads and
//!   snapshots. It is stored wrapped (encrypted under the master key) in the journal's `d`
//!   keyspace; forgetting the subject destroys it (crypto-shredding).
//! - Payloads are sealed with XChaCha20-Poly1305: a random 24-byte nonce per record (random
//!   nonces of that size never realistically collide, so no counter has to survive a crash),
//!   and the record's identity (aggregate type, id, sequence) as associated data, so a
//!   ciphertext copied into another record fails to open.

use chacha20poly1305::aead::{Aead, AeadCore, AeadInPlace, KeyInit, OsRng, Payload};
use chacha20poly1305::{Key, XChaCha20Poly1305, XNonce};
use std::path::{Path, PathBuf};
use uuid::Uuid;

/// Bytes of a key (master or data).
pub const KEY_BYTES: usize = 32;
/// Bytes of an XChaCha20-Poly1305 nonce.
pub const NONCE_BYTES: usize = 24;
/// Bytes of the Poly1305 tag.
pub const TAG_BYTES: usize = 16;
/// What sealing adds to a payload: key id, nonce, tag.
pub const SEAL_OVERHEAD_BYTES: usize = 16 + NONCE_BYTES + TAG_BYTES;
/// A master key id's length at most (it is stored with each wrapped data key).
pub const MASTER_KEY_ID_BYTES_MAX: usize = 64;

/// A master key: an id (stored next to every data key it wraps, so rotation knows what to
/// re-wrap) and 32 secret bytes. `Debug` shows the id only.
#[derive(Clone)]
pub struct MasterKey {
    id: String,
    bytes: [u8; KEY_BYTES],
}

impl std::fmt::Debug for MasterKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MasterKey")
            .field("id", &self.id)
            .field("bytes", &"<redacted>")
            .finish()
    }
}

impl MasterKey {
    /// A master key from its id and bytes. The id is 1..=64 bytes of `[A-Za-z0-9._-]`.
    pub fn new(id: impl Into<String>, bytes: [u8; KEY_BYTES]) -> Result<MasterKey, KeyError> {
        let id = id.into();
        let valid = !id.is_empty()
            && id.len() <= MASTER_KEY_ID_BYTES_MAX
            && id
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b));
        if !valid {
            return Err(KeyError::Provider {
                reason: format!("master key id {id:?} is not 1..=64 of [A-Za-z0-9._-]"),
            });
        }
        Ok(MasterKey { id, bytes })
    }

    /// A fresh random master key.
    pub fn generate(id: impl Into<String>) -> Result<MasterKey, KeyError> {
        MasterKey::new(id, random_key())
    }

    pub fn id(&self) -> &str {
        &self.id
    }
}

/// Where master keys come from. The engine asks for [`current`](KeyProvider::current) when
/// it creates a data key or rotates, and for [`get`](KeyProvider::get) when it unwraps a data
/// key wrapped under an older master key. Implement it over a KMS or an HSM; the shipped
/// [`FileKeyProvider`] reads a local file.
pub trait KeyProvider: Send + Sync + std::fmt::Debug {
    /// The master key new data keys are wrapped with (and rotation re-wraps to).
    fn current(&self) -> Result<MasterKey, KeyError>;
    /// The master key named `id`; [`KeyError::UnknownMasterKey`] when the provider has none.
    fn get(&self, id: &str) -> Result<MasterKey, KeyError>;
}

/// Why a key could not be had. Never carries key bytes.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum KeyError {
    /// An encrypted payload was read and no key provider is configured.
    #[error("the payload is encrypted and no master key is configured (EngineBuilder::key_provider, or the CLI's --key-file)")]
    NoProvider,
    /// The provider does not know the master key a data key was wrapped with.
    #[error("the key provider has no master key {id:?} (the data key was wrapped with it; was it rotated away too early?)")]
    UnknownMasterKey { id: String },
    /// The master key of that id does not open the wrapped data key: the key file holds
    /// another key under the same id, or the wrapped key was altered.
    #[error("master key {id:?} does not unwrap data key {key_id}: wrong master key, or the wrapped key is damaged")]
    WrongMasterKey { id: String, key_id: Uuid },
    /// A record names a data key the store does not hold (not even erased).
    #[error("data key {key_id} is not in the store")]
    MissingDataKey { key_id: Uuid },
    /// The stored entry of a data key is malformed.
    #[error("the stored entry of data key {key_id} is malformed")]
    MalformedDataKey { key_id: Uuid },
    /// The provider itself failed (file unreadable, malformed, ...).
    #[error("key provider: {reason}")]
    Provider { reason: String },
}

/// A data key in memory: its id and bytes. `Debug` shows the id only.
#[derive(Clone)]
pub(crate) struct DataKey {
    pub id: Uuid,
    bytes: [u8; KEY_BYTES],
}

impl std::fmt::Debug for DataKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DataKey").field("id", &self.id).finish()
    }
}

fn random_key() -> [u8; KEY_BYTES] {
    XChaCha20Poly1305::generate_key(&mut OsRng).into()
}

/// Why sealed bytes did not open.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum OpenFailure {
    /// Shorter than key id + nonce + tag.
    Malformed,
    /// The tag does not match: another record's ciphertext, damaged bytes, or another key.
    Tag,
}

impl DataKey {
    pub fn generate() -> DataKey {
        DataKey {
            id: Uuid::new_v4(),
            bytes: random_key(),
        }
    }

    fn cipher(&self) -> XChaCha20Poly1305 {
        XChaCha20Poly1305::new(Key::from_slice(&self.bytes))
    }

    /// `key id 16 | nonce 24 | ciphertext + tag`, bound to `aad`. Encrypted in place in the
    /// one buffer it returns; the nonce comes from the thread's CSPRNG (ChaCha12 seeded and
    /// reseeded from the OS), not a `getrandom` system call per record: the syscall was a
    /// measurable part of a sealed append.
    pub fn seal(&self, plaintext: &[u8], aad: &[u8]) -> Vec<u8> {
        let nonce = XChaCha20Poly1305::generate_nonce(&mut rand::thread_rng());
        let mut out = Vec::with_capacity(SEAL_OVERHEAD_BYTES + plaintext.len());
        out.extend_from_slice(self.id.as_bytes());
        out.extend_from_slice(&nonce);
        out.extend_from_slice(plaintext);
        let tag = self
            .cipher()
            .encrypt_in_place_detached(&nonce, aad, &mut out[16 + NONCE_BYTES..])
            .expect("XChaCha20-Poly1305 encrypts any payload below 256 GiB");
        out.extend_from_slice(&tag);
        debug_assert_eq!(out.len(), SEAL_OVERHEAD_BYTES + plaintext.len());
        out
    }

    /// The inverse of [`seal`](Self::seal) (the caller has matched the key id).
    pub fn open(&self, sealed: &[u8], aad: &[u8]) -> Result<Vec<u8>, OpenFailure> {
        if sealed.len() < SEAL_OVERHEAD_BYTES {
            return Err(OpenFailure::Malformed);
        }
        let nonce = XNonce::from_slice(&sealed[16..16 + NONCE_BYTES]);
        self.cipher()
            .decrypt(
                nonce,
                Payload {
                    msg: &sealed[16 + NONCE_BYTES..],
                    aad,
                },
            )
            .map_err(|_| OpenFailure::Tag)
    }

    /// [`open`](Self::open) in place: `sealed` becomes the plain bytes (no second buffer,
    /// for replay). On an error its contents are unspecified.
    pub fn open_in_place(&self, sealed: &mut Vec<u8>, aad: &[u8]) -> Result<(), OpenFailure> {
        if sealed.len() < SEAL_OVERHEAD_BYTES {
            return Err(OpenFailure::Malformed);
        }
        let nonce = *XNonce::from_slice(&sealed[16..16 + NONCE_BYTES]);
        sealed.drain(..16 + NONCE_BYTES);
        self.cipher()
            .decrypt_in_place(&nonce, aad, sealed)
            .map_err(|_| OpenFailure::Tag)
    }

    /// The data key wrapped under `master`: `nonce 24 | ciphertext 32 + tag 16`, bound to the
    /// key id and the master key id.
    pub fn wrap(&self, master: &MasterKey) -> Vec<u8> {
        let cipher = XChaCha20Poly1305::new(Key::from_slice(&master.bytes));
        let nonce = XChaCha20Poly1305::generate_nonce(&mut OsRng);
        let aad = wrap_aad(self.id, &master.id);
        let sealed = cipher
            .encrypt(
                &nonce,
                Payload {
                    msg: &self.bytes,
                    aad: &aad,
                },
            )
            .expect("XChaCha20-Poly1305 encrypts 32 bytes");
        let mut out = nonce.to_vec();
        out.extend_from_slice(&sealed);
        out
    }

    /// The inverse of [`wrap`](Self::wrap).
    pub fn unwrap(id: Uuid, wrapped: &[u8], master: &MasterKey) -> Result<DataKey, KeyError> {
        let wrong = || KeyError::WrongMasterKey {
            id: master.id.clone(),
            key_id: id,
        };
        if wrapped.len() != NONCE_BYTES + KEY_BYTES + TAG_BYTES {
            return Err(KeyError::MalformedDataKey { key_id: id });
        }
        let cipher = XChaCha20Poly1305::new(Key::from_slice(&master.bytes));
        let aad = wrap_aad(id, &master.id);
        let bytes = cipher
            .decrypt(
                XNonce::from_slice(&wrapped[..NONCE_BYTES]),
                Payload {
                    msg: &wrapped[NONCE_BYTES..],
                    aad: &aad,
                },
            )
            .map_err(|_| wrong())?;
        Ok(DataKey {
            id,
            bytes: bytes.try_into().map_err(|_| wrong())?,
        })
    }
}

fn wrap_aad(key_id: Uuid, master_id: &str) -> Vec<u8> {
    let mut aad = b"evershard-data-key-v1".to_vec();
    aad.extend_from_slice(key_id.as_bytes());
    aad.extend_from_slice(master_id.as_bytes());
    aad
}

/// The key id a sealed payload names (its first 16 bytes).
pub(crate) fn sealed_key_id(sealed: &[u8]) -> Option<Uuid> {
    Some(Uuid::from_slice(sealed.get(..16)?).expect("16 bytes"))
}

/// The associated data of an event record: what binds a ciphertext to its place.
pub(crate) fn record_aad(aggregate_type: &str, aggregate_id: &str, sequence: u64) -> Vec<u8> {
    identity_aad(
        b"evershard-event-v1",
        aggregate_type,
        aggregate_id,
        sequence,
    )
}

/// The associated data of a snapshot record.
pub(crate) fn snapshot_aad(aggregate_type: &str, aggregate_id: &str, sequence: u64) -> Vec<u8> {
    identity_aad(
        b"evershard-snapshot-v1",
        aggregate_type,
        aggregate_id,
        sequence,
    )
}

fn identity_aad(domain: &[u8], aggregate_type: &str, aggregate_id: &str, sequence: u64) -> Vec<u8> {
    let mut aad = Vec::with_capacity(domain.len() + 12 + aggregate_type.len() + aggregate_id.len());
    aad.extend_from_slice(domain);
    aad.extend_from_slice(&(aggregate_type.len() as u16).to_le_bytes());
    aad.extend_from_slice(aggregate_type.as_bytes());
    aad.extend_from_slice(&(aggregate_id.len() as u16).to_le_bytes());
    aad.extend_from_slice(aggregate_id.as_bytes());
    aad.extend_from_slice(&sequence.to_le_bytes());
    aad
}

/// The aggregate type of erasure events ([`crate::Engine::forget_subject`]); the id is the
/// destroyed data key's id.
pub const ERASURE_TYPE: &str = "evershard.Erasure";
/// The event type of an erasure event.
pub const ERASURE_EVENT_TYPE: &str = "SubjectForgotten";

/// The payload of an erasure event (payload codec; plain: it holds no personal data). The
/// subject itself is not recorded, only its key's id.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Erasure {
    pub key_id: Uuid,
    pub reason: String,
}

/// What [`crate::Engine::forget_subject`] did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ErasureReceipt {
    /// The destroyed data key.
    pub key_id: Uuid,
    /// The erasure event's global position (a leaf of the Merkle tree).
    pub global_position: u64,
    pub erased_at: chrono::DateTime<chrono::Utc>,
}

/// A snapshot record's bytes sealed for storage: `SNAPSHOT_FORMAT_SEALED | sealed`, bound to
/// the stream and sequence.
pub(crate) fn seal_snapshot(
    key: &DataKey,
    stream: &evershard_model::StreamId,
    sequence: u64,
    plain: &[u8],
) -> Vec<u8> {
    let aad = snapshot_aad(&stream.aggregate_type, &stream.aggregate_id, sequence);
    let mut out = vec![evershard_snapshots::SNAPSHOT_FORMAT_SEALED];
    out.extend_from_slice(&key.seal(plain, &aad));
    out
}

/// Master keys from a local text file: one key per line, `ID HEX64` (the id, a space, the
/// 32 key bytes in hex); blank lines and lines starting with `#` are skipped. The **last**
/// key is the current one; the lines above it stay readable for data keys not yet
/// re-wrapped (rotation: append a key with [`FileKeyProvider::append_new_key`], run
/// `Engine::rotate_master_key`, then remove the old lines). The file is read once, at
/// [`open`](Self::open). Keep it outside the store directory, readable by the service only
/// (0600): the store must never hold the key that opens it.
#[derive(Clone)]
pub struct FileKeyProvider {
    path: PathBuf,
    keys: Vec<MasterKey>,
}

impl std::fmt::Debug for FileKeyProvider {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let ids: Vec<&str> = self.keys.iter().map(|k| k.id.as_str()).collect();
        f.debug_struct("FileKeyProvider")
            .field("path", &self.path)
            .field("key_ids", &ids)
            .finish()
    }
}

impl FileKeyProvider {
    /// Reads the key file. Errors name the file and the line, never a key.
    pub fn open(path: impl AsRef<Path>) -> Result<FileKeyProvider, KeyError> {
        let path = path.as_ref().to_path_buf();
        let bad = |reason: String| KeyError::Provider {
            reason: format!("key file {}: {reason}", path.display()),
        };
        let text = std::fs::read_to_string(&path).map_err(|e| bad(e.to_string()))?;
        let mut keys = Vec::new();
        for (n, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let malformed = || bad(format!("line {} is not `ID HEX64`", n + 1));
            let (id, hex) = line.split_once(' ').ok_or_else(malformed)?;
            let bytes = parse_hex_key(hex.trim()).ok_or_else(malformed)?;
            let key = MasterKey::new(id, bytes).map_err(|_| malformed())?;
            if keys.iter().any(|k: &MasterKey| k.id == key.id) {
                return Err(bad(format!("line {}: id {id:?} appears twice", n + 1)));
            }
            keys.push(key);
        }
        if keys.is_empty() {
            return Err(bad("holds no key".into()));
        }
        warn_if_readable_by_others(&path, "key file");
        Ok(FileKeyProvider { path, keys })
    }

    /// Appends a fresh random key named `id` to the file (creating it, mode 0600), which
    /// makes it the current key of providers opened afterwards.
    pub fn append_new_key(path: impl AsRef<Path>, id: &str) -> Result<(), KeyError> {
        use std::io::Write;
        let path = path.as_ref();
        let key = MasterKey::generate(id)?;
        let bad = |e: std::io::Error| KeyError::Provider {
            reason: format!("key file {}: {e}", path.display()),
        };
        let mut options = std::fs::OpenOptions::new();
        options.create(true).append(true);
        #[cfg(unix)]
        std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
        let mut file = options.open(path).map_err(bad)?;
        let hex: String = key.bytes.iter().map(|b| format!("{b:02x}")).collect();
        writeln!(file, "{} {hex}", key.id).map_err(bad)?;
        file.sync_all().map_err(bad)
    }

    /// The ids of the keys in the file, oldest first (the last is current).
    pub fn key_ids(&self) -> Vec<&str> {
        self.keys.iter().map(|k| k.id.as_str()).collect()
    }
}

impl KeyProvider for FileKeyProvider {
    fn current(&self) -> Result<MasterKey, KeyError> {
        Ok(self
            .keys
            .last()
            .expect("open refuses an empty file")
            .clone())
    }

    fn get(&self, id: &str) -> Result<MasterKey, KeyError> {
        self.keys
            .iter()
            .find(|k| k.id == id)
            .cloned()
            .ok_or_else(|| KeyError::UnknownMasterKey { id: id.to_owned() })
    }
}

fn parse_hex_key(hex: &str) -> Option<[u8; KEY_BYTES]> {
    if hex.len() != KEY_BYTES * 2 || !hex.is_ascii() {
        return None;
    }
    let mut out = [0; KEY_BYTES];
    for (i, byte) in out.iter_mut().enumerate() {
        *byte = u8::from_str_radix(&hex[2 * i..2 * i + 2], 16).ok()?;
    }
    Some(out)
}

/// True when `path` can be read (or, for a directory, entered) by users other than its owner.
pub fn readable_by_others(path: &Path) -> bool {
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::metadata(path).is_ok_and(|m| m.permissions().mode() & 0o077 != 0)
    }
    #[cfg(not(unix))]
    {
        let _ = path;
        false
    }
}

/// Logs a warning when `path` is open to other users.
pub(crate) fn warn_if_readable_by_others(path: &Path, what: &str) {
    if readable_by_others(path) {
        tracing::warn!(path = %path.display(), "{what} is readable by other users: chmod go-rwx");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seal_open_round_trip_and_the_identity_binds() {
        let key = DataKey::generate();
        let aad = record_aad("Credit", "c-1", 3);
        let sealed = key.seal(b"hello", &aad);
        assert_eq!(sealed_key_id(&sealed), Some(key.id));
        assert_eq!(key.open(&sealed, &aad).unwrap(), b"hello");
        let mut in_place = sealed.clone();
        key.open_in_place(&mut in_place, &aad).unwrap();
        assert_eq!(in_place, b"hello");
        // The same bytes in another record (another sequence, id or type) do not open.
        for other in [
            record_aad("Credit", "c-1", 4),
            record_aad("Credit", "c-2", 3),
            record_aad("Payment", "c-1", 3),
            snapshot_aad("Credit", "c-1", 3),
        ] {
            assert_eq!(key.open(&sealed, &other), Err(OpenFailure::Tag));
        }
        // Another key does not open it either, and no byte can be flipped unnoticed.
        assert_eq!(
            DataKey::generate().open(&sealed, &aad),
            Err(OpenFailure::Tag)
        );
        for i in 16..sealed.len() {
            let mut damaged = sealed.clone();
            damaged[i] ^= 1;
            assert!(key.open(&damaged, &aad).is_err(), "flip at {i}");
        }
        // Two seals of the same payload differ (fresh nonce each time).
        assert_ne!(key.seal(b"hello", &aad), sealed);
    }

    /// The on-disk form, pinned: bytes sealed and wrapped by the first version of this code
    /// must open forever (the fixture rule for stored formats). A change to the cipher, the
    /// layout or the associated data fails here.
    #[test]
    fn sealed_and_wrapped_bytes_of_the_first_version_still_open() {
        const SEALED: &str = "00000000000000000000000000005eed8d9e890d48956280c431fcba302bd20e43cf8d777e21d654913918c673de3b4b76bf1573cde7341094fb0dafaefe6f75f479b8f3d89b";
        const WRAPPED: &str = "0d5fab0fb0cbd5f4cfe75bfb7774357bec6f52d53c371450eb8b579f735939eb15b85f6757348572bc5b16eabac203a22809895a8828e570f6cae73cc9a813976ad0f8349886af97";
        let unhex = |h: &str| -> Vec<u8> {
            (0..h.len())
                .step_by(2)
                .map(|i| u8::from_str_radix(&h[i..i + 2], 16).unwrap())
                .collect()
        };
        let master = MasterKey::new("pinned", [9; KEY_BYTES]).unwrap();
        let id = Uuid::from_u128(0x5eed);
        let key = DataKey::unwrap(id, &unhex(WRAPPED), &master).unwrap();
        assert_eq!(key.bytes, [7; KEY_BYTES]);
        let sealed = unhex(SEALED);
        assert_eq!(sealed_key_id(&sealed), Some(id));
        assert_eq!(
            key.open(&sealed, &record_aad("Credit", "c-1", 3)).unwrap(),
            b"pinned payload"
        );
    }

    #[test]
    fn wrap_unwrap_needs_the_same_master_key() {
        let key = DataKey::generate();
        let master = MasterKey::generate("m1").unwrap();
        let wrapped = key.wrap(&master);
        let back = DataKey::unwrap(key.id, &wrapped, &master).unwrap();
        assert_eq!(back.bytes, key.bytes);
        let impostor = MasterKey::generate("m1").unwrap();
        assert_eq!(
            DataKey::unwrap(key.id, &wrapped, &impostor).unwrap_err(),
            KeyError::WrongMasterKey {
                id: "m1".into(),
                key_id: key.id
            }
        );
        // Bound to the key id: a wrapped key copied under another id does not unwrap.
        assert!(DataKey::unwrap(Uuid::new_v4(), &wrapped, &master).is_err());
    }

    #[test]
    fn the_key_file_is_parsed_and_its_errors_never_show_a_key() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("keys");
        FileKeyProvider::append_new_key(&path, "2026-a").unwrap();
        FileKeyProvider::append_new_key(&path, "2026-b").unwrap();
        let p = FileKeyProvider::open(&path).unwrap();
        assert_eq!(p.key_ids(), ["2026-a", "2026-b"]);
        assert_eq!(p.current().unwrap().id(), "2026-b");
        assert!(p.get("2026-a").is_ok());
        assert!(matches!(
            p.get("nope"),
            Err(KeyError::UnknownMasterKey { .. })
        ));
        assert!(!format!("{p:?} {:?}", p.current().unwrap())
            .contains(&std::fs::read_to_string(&path).unwrap()[7..20]));
        assert!(!readable_by_others(&path), "created 0600");
        std::fs::write(&path, "k1 0011\n").unwrap();
        let err = FileKeyProvider::open(&path).unwrap_err().to_string();
        assert!(err.contains("line 1") && !err.contains("0011"), "{err}");
        std::fs::write(&path, "").unwrap();
        assert!(FileKeyProvider::open(&path).is_err());
    }
}
