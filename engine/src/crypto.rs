//! Encryption at rest (docs/security.md): the key hierarchy and the AEAD, with no storage.
//!
//! - A **master key** comes from a [`KeyProvider`] the user supplies ([`FileKeyProvider`]
//!   ships). It never enters the store: it only wraps data keys.
//! - A **data key** per data subject (by default the aggregate id; an aggregate can name
//!   another subject with `Aggregate::data_subject`) encrypts that subject's payloads and
//!   snapshots. It is stored wrapped (encrypted under the master key) in the journal's `d`
//!   keyspace; forgetting the subject destroys it (crypto-shredding).
//! - Payloads are sealed with the AEAD the data key was made for, named in its stored entry
//!   ([`Aead`]): new keys seal with AES-256-GCM (AES-NI and carry-less multiplication where
//!   the CPU has them), keys made before it with XChaCha20-Poly1305, which stays readable.
//!   Every record has its own random nonce and the record's identity (aggregate type, id,
//!   sequence) as associated data, so a ciphertext copied into another record fails to open.
//!   Nonces are random, never derived from the identity: a sequence can be written again
//!   after a crash before its commit, and the same (key, nonce) twice would break GCM.

use chacha20poly1305::aead::{Aead as _, AeadCore, AeadInPlace, KeyInit, OsRng, Payload};
use chacha20poly1305::{Key, XChaCha20Poly1305, XNonce};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use uuid::Uuid;

/// Bytes of a key (master or data).
pub const KEY_BYTES: usize = 32;
/// Bytes of an XChaCha20-Poly1305 nonce (also the nonce of a wrapped data key).
pub const NONCE_BYTES: usize = 24;
/// Bytes of an AES-256-GCM nonce.
pub const GCM_NONCE_BYTES: usize = 12;
/// Bytes of the authentication tag (Poly1305 and GHASH alike).
pub const TAG_BYTES: usize = 16;
/// Bytes of the key id that opens a sealed payload.
const KEY_ID_BYTES: usize = 16;
/// What sealing adds to a payload at most (key id, nonce, tag), over every [`Aead`]: the
/// bound record sizes are checked against. AES-256-GCM adds 44 bytes, XChaCha20-Poly1305 56.
pub const SEAL_OVERHEAD_BYTES: usize = KEY_ID_BYTES + NONCE_BYTES + TAG_BYTES;
/// Payloads and snapshots one AES-256-GCM data key may seal: with random 96-bit nonces,
/// NIST SP 800-38D (section 8.3) allows 2^32 invocations per key, which keeps the chance of
/// any two nonces colliding below 2^-32. A data key serves one data subject (by default one
/// aggregate: its events and snapshots), so reaching it takes four billion records of one
/// subject. The bound is documented (docs/security.md), not counted: a count that survives
/// restarts would be a write to the key's entry in every batch.
pub const GCM_SEALS_PER_KEY_MAX: u64 = 1 << 32;
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

/// The AEAD a data key seals with. A key is made for one algorithm and used with it for its
/// whole life (never the same key bytes under two ciphers); the algorithm is stored in the
/// key's entry in the store (keyring entry format 2; format 1 entries are XChaCha20-Poly1305
/// keys), so a sealed payload needs no algorithm byte of its own and the records written
/// before AES-256-GCM stay byte for byte as they are.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Aead {
    /// XChaCha20-Poly1305 with a random 24-byte nonce: the first format. Every data key made
    /// before AES-256-GCM is one, and keeps sealing its subject's payloads with it.
    XChaCha20Poly1305,
    /// AES-256-GCM with a random 12-byte nonce (at most [`GCM_SEALS_PER_KEY_MAX`] seals per
    /// key): what new data keys seal with.
    Aes256Gcm,
}

impl Aead {
    /// The algorithm new data keys are made for.
    pub const CURRENT: Aead = Aead::Aes256Gcm;

    /// Its byte in a keyring entry (format 2).
    pub(crate) fn id(self) -> u8 {
        match self {
            Aead::XChaCha20Poly1305 => 1,
            Aead::Aes256Gcm => 2,
        }
    }

    pub(crate) fn from_id(id: u8) -> Option<Aead> {
        match id {
            1 => Some(Aead::XChaCha20Poly1305),
            2 => Some(Aead::Aes256Gcm),
            _ => None,
        }
    }

    /// Bytes of its nonce.
    pub fn nonce_bytes(self) -> usize {
        match self {
            Aead::XChaCha20Poly1305 => NONCE_BYTES,
            Aead::Aes256Gcm => GCM_NONCE_BYTES,
        }
    }

    /// What sealing adds to a payload: key id, nonce, tag.
    pub fn seal_overhead_bytes(self) -> usize {
        KEY_ID_BYTES + self.nonce_bytes() + TAG_BYTES
    }
}

/// A data key in memory: its id, the algorithm it is for, its bytes and the cipher made
/// ready from them (AES-256-GCM's key schedule and GHASH key cost more than opening a small
/// payload, so they are made once per key, not once per record). Cloning shares them.
/// `Debug` shows the id and the algorithm only.
#[derive(Clone)]
pub(crate) struct DataKey {
    pub id: Uuid,
    inner: Arc<DataKeyInner>,
}

struct DataKeyInner {
    bytes: [u8; KEY_BYTES],
    cipher: Cipher,
}

// One per data key, inside its `Arc`: the AES variant's ~1 KiB (key schedules and GHASH key)
// is paid once per key, and boxing it would add a pointer chase to every record opened.
#[allow(clippy::large_enum_variant)]
enum Cipher {
    XChaCha20Poly1305(XChaCha20Poly1305),
    /// ring's AES-256-GCM: the same algorithm and bytes as RustCrypto's `aes-gcm`, which
    /// sealed the first AES-256-GCM records, at half its cost per record (291 → 141 ns to
    /// open 250 bytes on this machine): what kept replay of a sealed store from 85% of a plain
    /// one (docs/performance-history.md).
    Aes256Gcm(ring::aead::LessSafeKey),
}

impl std::fmt::Debug for DataKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DataKey")
            .field("id", &self.id)
            .field("aead", &self.aead())
            .finish()
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
    /// A fresh random key for the current algorithm ([`Aead::CURRENT`]).
    pub fn generate() -> DataKey {
        DataKey::from_bytes(Uuid::new_v4(), Aead::CURRENT, random_key())
    }

    fn from_bytes(id: Uuid, aead: Aead, bytes: [u8; KEY_BYTES]) -> DataKey {
        let cipher = match aead {
            Aead::XChaCha20Poly1305 => {
                Cipher::XChaCha20Poly1305(XChaCha20Poly1305::new(Key::from_slice(&bytes)))
            }
            Aead::Aes256Gcm => Cipher::Aes256Gcm(ring::aead::LessSafeKey::new(
                ring::aead::UnboundKey::new(&ring::aead::AES_256_GCM, &bytes)
                    .expect("a 32-byte AES-256 key"),
            )),
        };
        DataKey {
            id,
            inner: Arc::new(DataKeyInner { bytes, cipher }),
        }
    }

    /// The algorithm this key seals and opens with.
    pub fn aead(&self) -> Aead {
        match self.inner.cipher {
            Cipher::XChaCha20Poly1305(_) => Aead::XChaCha20Poly1305,
            Cipher::Aes256Gcm(_) => Aead::Aes256Gcm,
        }
    }

    /// `key id 16 | nonce (24 or 12) | ciphertext + tag 16`, bound to `aad`. Encrypted in
    /// place in the one buffer it returns; the nonce comes from the thread's CSPRNG (ChaCha12
    /// seeded and reseeded from the OS), not a `getrandom` system call per record: the
    /// syscall was a measurable part of a sealed append.
    pub fn seal(&self, plaintext: &[u8], aad: &[u8]) -> Vec<u8> {
        let header = KEY_ID_BYTES + self.aead().nonce_bytes();
        let mut out = Vec::with_capacity(header + plaintext.len() + TAG_BYTES);
        out.extend_from_slice(self.id.as_bytes());
        match &self.inner.cipher {
            Cipher::XChaCha20Poly1305(cipher) => {
                let nonce = XChaCha20Poly1305::generate_nonce(&mut rand::thread_rng());
                out.extend_from_slice(&nonce);
                out.extend_from_slice(plaintext);
                let tag = cipher
                    .encrypt_in_place_detached(&nonce, aad, &mut out[header..])
                    .expect("XChaCha20-Poly1305 encrypts any payload below 256 GiB");
                out.extend_from_slice(&tag);
            }
            Cipher::Aes256Gcm(key) => {
                let nonce: [u8; GCM_NONCE_BYTES] = rand::Rng::gen(&mut rand::thread_rng());
                out.extend_from_slice(&nonce);
                out.extend_from_slice(plaintext);
                let tag = key
                    .seal_in_place_separate_tag(
                        ring::aead::Nonce::assume_unique_for_key(nonce),
                        ring::aead::Aad::from(aad),
                        &mut out[header..],
                    )
                    .expect("AES-256-GCM encrypts any payload below 64 GiB");
                out.extend_from_slice(tag.as_ref());
            }
        }
        debug_assert_eq!(
            out.len(),
            self.aead().seal_overhead_bytes() + plaintext.len()
        );
        out
    }

    /// The inverse of [`seal`](Self::seal) (the caller has matched the key id).
    pub fn open(&self, sealed: &[u8], aad: &[u8]) -> Result<Vec<u8>, OpenFailure> {
        let mut buffer = sealed.to_vec();
        self.open_in_place(&mut buffer, aad)?;
        Ok(buffer)
    }

    /// [`open`](Self::open) in place: `sealed` becomes the plain bytes (no second buffer,
    /// for replay). On an error its contents are unspecified.
    pub fn open_in_place(&self, sealed: &mut Vec<u8>, aad: &[u8]) -> Result<(), OpenFailure> {
        let plain = self.open_detached(sealed, aad)?;
        sealed.truncate(plain.end);
        sealed.drain(..plain.start);
        Ok(())
    }

    /// Decrypts `sealed` where it lies and returns where the plain bytes are in it (between
    /// the header and the tag): nothing is moved or allocated, for a replay that opens one
    /// record after another in one buffer. On an error its contents are unspecified.
    pub fn open_detached(
        &self,
        sealed: &mut [u8],
        aad: &[u8],
    ) -> Result<std::ops::Range<usize>, OpenFailure> {
        let header = KEY_ID_BYTES + self.aead().nonce_bytes();
        if sealed.len() < header + TAG_BYTES {
            return Err(OpenFailure::Malformed);
        }
        let body_end = sealed.len() - TAG_BYTES;
        match &self.inner.cipher {
            Cipher::XChaCha20Poly1305(cipher) => {
                // The tag and the nonce are copied out first: the buffer is borrowed mutably.
                let tag: [u8; TAG_BYTES] = sealed[body_end..].try_into().expect("16 bytes");
                let nonce = *XNonce::from_slice(&sealed[KEY_ID_BYTES..header]);
                cipher
                    .decrypt_in_place_detached(
                        &nonce,
                        aad,
                        &mut sealed[header..body_end],
                        chacha20poly1305::Tag::from_slice(&tag),
                    )
                    .map_err(|_| OpenFailure::Tag)?;
            }
            Cipher::Aes256Gcm(key) => {
                let nonce: [u8; GCM_NONCE_BYTES] = sealed[KEY_ID_BYTES..header]
                    .try_into()
                    .expect("a 12-byte nonce");
                // ring opens `ciphertext | tag` in place and leaves the plain bytes in front.
                let plain = key
                    .open_in_place(
                        ring::aead::Nonce::assume_unique_for_key(nonce),
                        ring::aead::Aad::from(aad),
                        &mut sealed[header..],
                    )
                    .map_err(|_| OpenFailure::Tag)?;
                debug_assert_eq!(plain.len(), body_end - header);
            }
        }
        Ok(header..body_end)
    }

    /// [`open_detached`](Self::open_detached) of an event record's sealed payload, its
    /// identity as the associated data (built on the stack).
    pub fn open_record_detached(
        &self,
        sealed: &mut [u8],
        aggregate_type: &str,
        aggregate_id: &str,
        sequence: u64,
    ) -> Result<std::ops::Range<usize>, OpenFailure> {
        with_identity_aad(
            RECORD_AAD_DOMAIN,
            aggregate_type,
            aggregate_id,
            sequence,
            |aad| self.open_detached(sealed, aad),
        )
    }

    /// Opens an event record's sealed payload in place, its identity as the associated data
    /// (built on the stack: replay opens one record after another).
    pub fn open_record_in_place(
        &self,
        sealed: &mut Vec<u8>,
        aggregate_type: &str,
        aggregate_id: &str,
        sequence: u64,
    ) -> Result<(), OpenFailure> {
        with_identity_aad(
            RECORD_AAD_DOMAIN,
            aggregate_type,
            aggregate_id,
            sequence,
            |aad| self.open_in_place(sealed, aad),
        )
    }

    /// The data key wrapped under `master`: `nonce 24 | ciphertext 32 + tag 16`
    /// (XChaCha20-Poly1305 whatever the key's own algorithm: a master key wraps one key per
    /// subject, millions over its life, which random 24-byte nonces bear and 12-byte ones
    /// would not for long), bound to the key id, the master key id and, for keys stored in
    /// entry format 2, the key's algorithm.
    pub fn wrap(&self, master: &MasterKey) -> Vec<u8> {
        let cipher = XChaCha20Poly1305::new(Key::from_slice(&master.bytes));
        let nonce = XChaCha20Poly1305::generate_nonce(&mut OsRng);
        let aad = wrap_aad(self.id, self.aead(), &master.id);
        let sealed = cipher
            .encrypt(
                &nonce,
                Payload {
                    msg: &self.inner.bytes,
                    aad: &aad,
                },
            )
            .expect("XChaCha20-Poly1305 encrypts 32 bytes");
        let mut out = nonce.to_vec();
        out.extend_from_slice(&sealed);
        out
    }

    /// The inverse of [`wrap`](Self::wrap), for a key made for `aead`.
    pub fn unwrap(
        id: Uuid,
        aead: Aead,
        wrapped: &[u8],
        master: &MasterKey,
    ) -> Result<DataKey, KeyError> {
        let wrong = || KeyError::WrongMasterKey {
            id: master.id.clone(),
            key_id: id,
        };
        if wrapped.len() != NONCE_BYTES + KEY_BYTES + TAG_BYTES {
            return Err(KeyError::MalformedDataKey { key_id: id });
        }
        let cipher = XChaCha20Poly1305::new(Key::from_slice(&master.bytes));
        let aad = wrap_aad(id, aead, &master.id);
        let bytes = cipher
            .decrypt(
                XNonce::from_slice(&wrapped[..NONCE_BYTES]),
                Payload {
                    msg: &wrapped[NONCE_BYTES..],
                    aad: &aad,
                },
            )
            .map_err(|_| wrong())?;
        Ok(DataKey::from_bytes(
            id,
            aead,
            bytes.try_into().map_err(|_| wrong())?,
        ))
    }
}

/// The associated data of a wrapped data key. XChaCha20-Poly1305 keys (entry format 1) keep
/// the first form; later keys also bind their algorithm, so an entry whose algorithm byte was
/// changed does not unwrap (a key is never used under another cipher).
fn wrap_aad(key_id: Uuid, aead: Aead, master_id: &str) -> Vec<u8> {
    let mut aad = match aead {
        Aead::XChaCha20Poly1305 => b"evershard-data-key-v1".to_vec(),
        other => {
            let mut v = b"evershard-data-key-v2".to_vec();
            v.push(other.id());
            v
        }
    };
    aad.extend_from_slice(key_id.as_bytes());
    aad.extend_from_slice(master_id.as_bytes());
    aad
}

/// The key id a sealed payload names (its first 16 bytes).
pub(crate) fn sealed_key_id(sealed: &[u8]) -> Option<Uuid> {
    Some(Uuid::from_slice(sealed.get(..KEY_ID_BYTES)?).expect("16 bytes"))
}

const RECORD_AAD_DOMAIN: &[u8] = b"evershard-event-v1";
const SNAPSHOT_AAD_DOMAIN: &[u8] = b"evershard-snapshot-v1";

/// The associated data of an event record: what binds a ciphertext to its place.
pub(crate) fn record_aad(aggregate_type: &str, aggregate_id: &str, sequence: u64) -> Vec<u8> {
    with_identity_aad(
        RECORD_AAD_DOMAIN,
        aggregate_type,
        aggregate_id,
        sequence,
        <[u8]>::to_vec,
    )
}

/// The associated data of a snapshot record.
pub(crate) fn snapshot_aad(aggregate_type: &str, aggregate_id: &str, sequence: u64) -> Vec<u8> {
    with_identity_aad(
        SNAPSHOT_AAD_DOMAIN,
        aggregate_type,
        aggregate_id,
        sequence,
        <[u8]>::to_vec,
    )
}

/// Identity associated data up to this size is built on the stack.
const AAD_STACK_BYTES: usize = 256;

/// Calls `f` with `domain | type_len u16 LE | type | id_len u16 LE | id | sequence u64 LE`.
fn with_identity_aad<R>(
    domain: &[u8],
    aggregate_type: &str,
    aggregate_id: &str,
    sequence: u64,
    f: impl FnOnce(&[u8]) -> R,
) -> R {
    let len = domain.len() + 2 + aggregate_type.len() + 2 + aggregate_id.len() + 8;
    let fill = |out: &mut [u8]| {
        let mut at = 0;
        for part in [
            domain,
            &(aggregate_type.len() as u16).to_le_bytes(),
            aggregate_type.as_bytes(),
            &(aggregate_id.len() as u16).to_le_bytes(),
            aggregate_id.as_bytes(),
            &sequence.to_le_bytes(),
        ] {
            out[at..at + part.len()].copy_from_slice(part);
            at += part.len();
        }
        debug_assert_eq!(at, out.len());
    };
    if len <= AAD_STACK_BYTES {
        let mut buffer = [0u8; AAD_STACK_BYTES];
        fill(&mut buffer[..len]);
        f(&buffer[..len])
    } else {
        let mut buffer = vec![0u8; len];
        fill(&mut buffer);
        f(&buffer)
    }
}

/// The aggregate type of erasure events ([`crate::Engine::forget_subject`]); the id is the
/// destroyed data key's id.
pub const ERASURE_TYPE: &str = "evershard.Erasure";
/// The event type of an erasure event.
pub const ERASURE_EVENT_TYPE: &str = "SubjectForgotten";

/// The payload of an erasure event (payload codec; plain: it holds no personal data). The
/// subject itself is not recorded, only its keys' ids.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Erasure {
    /// The subject's current key (the erasure event's aggregate id).
    pub key_id: Uuid,
    pub reason: String,
    /// Its earlier keys, newest first, destroyed in the same batch: those of records sealed
    /// before the subject's key was upgraded. Absent from erasures recorded before upgrades
    /// (the payload codec names fields, so they read as empty).
    #[serde(default)]
    pub earlier_key_ids: Vec<Uuid>,
}

/// What [`crate::Engine::forget_subject`] did.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct ErasureReceipt {
    /// The destroyed current data key.
    pub key_id: Uuid,
    /// The subject's earlier keys, destroyed with it (newest first).
    pub earlier_key_ids: Vec<Uuid>,
    /// The erasure event's global position (a leaf of the Merkle tree).
    pub global_position: u64,
    pub erased_at: chrono::DateTime<chrono::Utc>,
    /// The segment log's frames no longer hold copies of the subject's name or keys (always
    /// true on the sled layout, which has no frames). False if scrubbing them failed (the
    /// erasure holds all the same, and the next writable open scrubs them: see the error
    /// logged), or if the log has frames written before 2026-11-28 that carry key entries,
    /// which no scrub can zero: it stays false for such a store, whose remedy is a master-key
    /// rotation with the old master key destroyed (docs/security.md).
    pub log_scrubbed: bool,
}

/// A snapshot record's bytes sealed for storage: `SNAPSHOT_FORMAT_SEALED | sealed` (sealed
/// with the key's own algorithm, like an event payload), bound to the stream and sequence.
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
pub(crate) mod tests {
    use super::*;

    #[test]
    fn seal_open_round_trip_and_the_identity_binds() {
        let gcm = DataKey::generate();
        assert_eq!(gcm.aead(), Aead::Aes256Gcm, "new keys are AES-256-GCM keys");
        let xchacha = DataKey::from_bytes(Uuid::new_v4(), Aead::XChaCha20Poly1305, random_key());
        for key in [gcm, xchacha] {
            round_trip_and_binding(&key);
        }
    }

    fn round_trip_and_binding(key: &DataKey) {
        let aad = record_aad("Credit", "c-1", 3);
        let sealed = key.seal(b"hello", &aad);
        assert_eq!(sealed.len(), key.aead().seal_overhead_bytes() + 5);
        assert!(sealed.len() <= SEAL_OVERHEAD_BYTES + 5);
        assert_eq!(sealed_key_id(&sealed), Some(key.id));
        assert_eq!(key.open(&sealed, &aad).unwrap(), b"hello");
        let mut in_place = sealed.clone();
        key.open_in_place(&mut in_place, &aad).unwrap();
        assert_eq!(in_place, b"hello");
        let mut in_place = sealed.clone();
        key.open_record_in_place(&mut in_place, "Credit", "c-1", 3)
            .unwrap();
        assert_eq!(in_place, b"hello");
        let mut detached = sealed.clone();
        let plain = key
            .open_record_detached(&mut detached, "Credit", "c-1", 3)
            .unwrap();
        assert_eq!(&detached[plain], b"hello");
        // Too short to hold a nonce and a tag.
        assert_eq!(
            key.open(&sealed[..key.aead().seal_overhead_bytes() - 1], &aad),
            Err(OpenFailure::Malformed)
        );
        // The same bytes in another record (another sequence, id or type) do not open.
        for other in [
            record_aad("Credit", "c-1", 4),
            record_aad("Credit", "c-2", 3),
            record_aad("Payment", "c-1", 3),
            snapshot_aad("Credit", "c-1", 3),
        ] {
            assert_eq!(key.open(&sealed, &other), Err(OpenFailure::Tag));
        }
        // Another key does not open it either (nor the same bytes under the other
        // algorithm), and no byte can be flipped unnoticed.
        assert_eq!(
            DataKey::generate().open(&sealed, &aad),
            Err(OpenFailure::Tag)
        );
        for aead in [Aead::XChaCha20Poly1305, Aead::Aes256Gcm] {
            if aead != key.aead() {
                let twin = DataKey::from_bytes(key.id, aead, key.inner.bytes);
                assert!(twin.open(&sealed, &aad).is_err());
            }
        }
        for i in 16..sealed.len() {
            let mut damaged = sealed.clone();
            damaged[i] ^= 1;
            assert!(key.open(&damaged, &aad).is_err(), "flip at {i}");
        }
        // Two seals of the same payload differ (fresh nonce each time).
        assert_ne!(key.seal(b"hello", &aad), sealed);
    }

    /// A fresh XChaCha20-Poly1305 data key, as every key made before AES-256-GCM was (the
    /// keyring's tests store such keys in entry format 1).
    pub(crate) fn xchacha_data_key() -> DataKey {
        DataKey::from_bytes(Uuid::new_v4(), Aead::XChaCha20Poly1305, random_key())
    }

    /// Bytes from the hex the pinned vectors are written in (the keyring's tests use it too).
    pub(crate) fn unhex(h: &str) -> Vec<u8> {
        (0..h.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&h[i..i + 2], 16).unwrap())
            .collect()
    }

    /// The on-disk form, pinned: bytes sealed and wrapped by the first version of this code
    /// must open forever (the fixture rule for stored formats). A change to the cipher, the
    /// layout or the associated data fails here.
    #[test]
    fn sealed_and_wrapped_bytes_of_the_first_version_still_open() {
        const SEALED: &str = "00000000000000000000000000005eed8d9e890d48956280c431fcba302bd20e43cf8d777e21d654913918c673de3b4b76bf1573cde7341094fb0dafaefe6f75f479b8f3d89b";
        const WRAPPED: &str = "0d5fab0fb0cbd5f4cfe75bfb7774357bec6f52d53c371450eb8b579f735939eb15b85f6757348572bc5b16eabac203a22809895a8828e570f6cae73cc9a813976ad0f8349886af97";
        let master = MasterKey::new("pinned", [9; KEY_BYTES]).unwrap();
        let id = Uuid::from_u128(0x5eed);
        let key = DataKey::unwrap(id, Aead::XChaCha20Poly1305, &unhex(WRAPPED), &master).unwrap();
        assert_eq!(key.inner.bytes, [7; KEY_BYTES]);
        let sealed = unhex(SEALED);
        assert_eq!(sealed_key_id(&sealed), Some(id));
        assert_eq!(
            key.open(&sealed, &record_aad("Credit", "c-1", 3)).unwrap(),
            b"pinned payload"
        );
    }

    /// The AES-256-GCM form, pinned by vectors computed with another implementation
    /// (PyCryptodome's AES-GCM and XChaCha20-Poly1305, over the layout docs/security.md
    /// draws): a key wrapped in entry format 2 (its algorithm bound into the wrap), an event
    /// payload and a snapshot sealed with it.
    #[test]
    fn aes_256_gcm_bytes_match_an_independent_implementation() {
        const WRAPPED: &str = "303132333435363738393a3b3c3d3e3f40414243444546475e06b869e98ea9679eb60e5d824f41ee974054053097175395d7ffafa66d22d2c42c9f7fe476305cec22f97eaa7055fb";
        const SEALED: &str = "000000000000000000000000000006cca0a1a2a3a4a5a6a7a8a9aaabe2817645252a08a8c8ecf9fc89a54d8f019986257c44a39a2097c6f2d93e";
        const SNAPSHOT: &str = "000000000000000000000000000006ccb0b1b2b3b4b5b6b7b8b9babb007644a683614f459c1b0f64908dd281fc24b5a7fb2dd26ed0e0e794e68d4c";
        let master = MasterKey::new("pinned", [9; KEY_BYTES]).unwrap();
        let id = Uuid::from_u128(0x6cc);
        let key = DataKey::unwrap(id, Aead::Aes256Gcm, &unhex(WRAPPED), &master).unwrap();
        assert_eq!(key.inner.bytes, [7; KEY_BYTES]);
        assert_eq!(key.aead(), Aead::Aes256Gcm);
        // The algorithm is bound: the same entry read as an XChaCha20-Poly1305 key fails.
        assert!(DataKey::unwrap(id, Aead::XChaCha20Poly1305, &unhex(WRAPPED), &master).is_err());
        let mut sealed = unhex(SEALED);
        assert_eq!(sealed_key_id(&sealed), Some(id));
        key.open_record_in_place(&mut sealed, "Credit", "c-1", 3)
            .unwrap();
        assert_eq!(sealed, b"pinned payload");
        assert_eq!(
            key.open(&unhex(SNAPSHOT), &snapshot_aad("Credit", "c-1", 8))
                .unwrap(),
            b"pinned snapshot"
        );
        // And what this code seals, the same layout opens (the nonce is random, so the
        // bytes themselves cannot be pinned).
        let ours = key.seal(b"pinned payload", &record_aad("Credit", "c-1", 3));
        assert_eq!(ours.len(), unhex(SEALED).len());
        assert_eq!(ours[..16], unhex(SEALED)[..16]);
    }

    #[test]
    fn wrap_unwrap_needs_the_same_master_key_and_algorithm() {
        let master = MasterKey::generate("m1").unwrap();
        let legacy = DataKey::from_bytes(Uuid::new_v4(), Aead::XChaCha20Poly1305, random_key());
        for key in [DataKey::generate(), legacy] {
            let wrapped = key.wrap(&master);
            let back = DataKey::unwrap(key.id, key.aead(), &wrapped, &master).unwrap();
            assert_eq!(back.inner.bytes, key.inner.bytes);
            assert_eq!(back.aead(), key.aead());
            let impostor = MasterKey::generate("m1").unwrap();
            assert_eq!(
                DataKey::unwrap(key.id, key.aead(), &wrapped, &impostor).unwrap_err(),
                KeyError::WrongMasterKey {
                    id: "m1".into(),
                    key_id: key.id
                }
            );
            // Bound to the key id: a wrapped key copied under another id does not unwrap.
            assert!(DataKey::unwrap(Uuid::new_v4(), key.aead(), &wrapped, &master).is_err());
        }
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
