//! The data keys of encryption at rest, in the store and in memory (docs/security.md).
//!
//! ```text
//! d | key_id 16                      live, format 1: 1 | 1 | master_id_len u8 | master_id | wrapped 72
//!                                    live, format 2: 2 | 1 | aead u8 | master_id_len u8 | master_id | wrapped 72
//!                                    erased:         1 | 2 | erased_at micros i64 LE
//! D | subject_len u16 BE | subject   key_id 16: the subject's current data key
//! ```
//!
//! Format 1 is an XChaCha20-Poly1305 key (every key made before AES-256-GCM; its entry keeps
//! format 1 when rotation re-wraps it). Format 2 names the key's AEAD ([`Aead`]: 2 is
//! AES-256-GCM) and binds it into the wrapping, so the algorithm of every sealed payload is
//! known from its key id alone and records need no algorithm byte.
//!
//! A new data key's two entries are written in the same batch as the first events it seals
//! (and again with every batch until one is acknowledged), so no record is ever stored under
//! a key the store does not hold. Forgetting a subject is one batch: the erasure event, `D`
//! removed, `d` overwritten with the erased marker. The master key never enters the store.

use super::committer::WriteOp;
use super::keys;
use crate::crypto::{Aead, DataKey, KeyError, KeyProvider, MasterKey};
use crate::error::StorageError;
use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use uuid::Uuid;

const ENTRY_FORMAT_V1: u8 = 1;
const ENTRY_FORMAT_V2: u8 = 2;
/// Data keys kept unwrapped in memory (each cache) before the cache is emptied and reloaded
/// lazily from the store. A key not yet durable is never dropped: a second key for the same
/// subject would escape its erasure.
const DATA_KEYS_CACHED_MAX: usize = 100_000;
const STATE_LIVE: u8 = 1;
const STATE_ERASED: u8 = 2;

/// `d | key_id`.
pub(crate) fn data_key_key(id: Uuid) -> Vec<u8> {
    let mut key = vec![keys::DATA_KEYS];
    key.extend_from_slice(id.as_bytes());
    key
}

/// `D | subject_len u16 BE | subject`.
pub(crate) fn subject_key(subject: &str) -> Vec<u8> {
    let mut key = vec![keys::DATA_SUBJECTS];
    key.extend_from_slice(&(subject.len() as u16).to_be_bytes());
    key.extend_from_slice(subject.as_bytes());
    key
}

/// `key`'s live entry, wrapped under `master`: format 1 for an XChaCha20-Poly1305 key (the
/// form readers before AES-256-GCM know), format 2 with the algorithm for any other.
fn live_entry(master: &MasterKey, key: &DataKey) -> Vec<u8> {
    let mut v = match key.aead() {
        Aead::XChaCha20Poly1305 => vec![ENTRY_FORMAT_V1, STATE_LIVE],
        aead => vec![ENTRY_FORMAT_V2, STATE_LIVE, aead.id()],
    };
    v.push(master.id().len() as u8);
    v.extend_from_slice(master.id().as_bytes());
    v.extend_from_slice(&key.wrap(master));
    v
}

fn erased_entry(at_micros: i64) -> Vec<u8> {
    let mut v = vec![ENTRY_FORMAT_V1, STATE_ERASED];
    v.extend_from_slice(&at_micros.to_le_bytes());
    v
}

/// A stored data-key entry, parsed.
enum Entry<'a> {
    Live {
        aead: Aead,
        master_id: &'a str,
        wrapped: &'a [u8],
    },
    Erased,
}

fn parse_entry(value: &[u8]) -> Option<Entry<'_>> {
    fn live(aead: Aead, len: u8, rest: &[u8]) -> Option<Entry<'_>> {
        let len = len as usize;
        let master_id = std::str::from_utf8(rest.get(..len)?).ok()?;
        Some(Entry::Live {
            aead,
            master_id,
            wrapped: rest.get(len..)?,
        })
    }
    match value {
        [ENTRY_FORMAT_V1, STATE_LIVE, len, rest @ ..] => live(Aead::XChaCha20Poly1305, *len, rest),
        [ENTRY_FORMAT_V2, STATE_LIVE, aead, len, rest @ ..] => {
            live(Aead::from_id(*aead)?, *len, rest)
        }
        [ENTRY_FORMAT_V1, STATE_ERASED, rest @ ..] if rest.len() == 8 => Some(Entry::Erased),
        _ => None,
    }
}

/// A data key a writer seals with, and the entries that store it until they are durable.
#[derive(Debug)]
pub(crate) struct SealingKey {
    pub key: DataKey,
    entries: Mutex<Vec<WriteOp>>,
    durable: AtomicBool,
}

impl SealingKey {
    /// The writes that must join a batch sealed with this key: its entries until one batch
    /// holding them was acknowledged, then none.
    pub fn pending_writes(&self) -> Vec<WriteOp> {
        if self.durable.load(Ordering::Acquire) {
            return Vec::new();
        }
        self.entries
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    pub fn mark_durable(&self) {
        self.durable.store(true, Ordering::Release);
    }
}

/// Why a sealed payload has no key to open it.
#[derive(Debug, Clone)]
pub(crate) enum KeyLookup {
    Erased,
    Key(KeyError),
    Storage(StorageError),
}

impl From<sled::Error> for KeyLookup {
    fn from(e: sled::Error) -> Self {
        KeyLookup::Storage(e.into())
    }
}

/// The in-memory side: the provider, unwrapped keys, erasures seen by this process.
#[derive(Default)]
pub(crate) struct Keyring {
    provider: RwLock<Option<Arc<dyn KeyProvider>>>,
    /// Keys that seal new payloads, by subject.
    sealing: Mutex<HashMap<String, Arc<SealingKey>>>,
    /// Unwrapped keys for reading, by id.
    opening: Mutex<HashMap<Uuid, DataKey>>,
    erased: Mutex<HashSet<Uuid>>,
    /// Moves at every erasure: an entity that loaded its state at another epoch reloads it
    /// before its next command (and so meets the erasure).
    epoch: AtomicU64,
    /// Serializes key creation against rotation's re-wrap of the same entries.
    create: Mutex<()>,
}

impl std::fmt::Debug for Keyring {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Keyring")
            .field("epoch", &self.epoch.load(Ordering::Relaxed))
            .finish()
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Keyring {
    pub fn set_provider(&self, provider: Arc<dyn KeyProvider>) {
        *self.provider.write().unwrap_or_else(|e| e.into_inner()) = Some(provider);
    }

    pub fn has_provider(&self) -> bool {
        self.provider
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .is_some()
    }

    fn provider(&self) -> Result<Arc<dyn KeyProvider>, KeyError> {
        self.provider
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
            .ok_or(KeyError::NoProvider)
    }

    pub fn epoch(&self) -> u64 {
        self.epoch.load(Ordering::Acquire)
    }

    pub fn is_erased(&self, id: Uuid) -> bool {
        lock(&self.erased).contains(&id)
    }

    /// The key that seals `subject`'s new payloads: its stored key, else a new one (whose
    /// entries the caller writes with its events, see [`SealingKey::pending_writes`]).
    pub fn sealing_key(&self, db: &sled::Db, subject: &str) -> Result<Arc<SealingKey>, KeyLookup> {
        if let Some(k) = lock(&self.sealing).get(subject) {
            return Ok(k.clone());
        }
        let _create = lock(&self.create);
        if let Some(k) = lock(&self.sealing).get(subject) {
            return Ok(k.clone());
        }
        let provider = self.provider().map_err(KeyLookup::Key)?;
        let stored = match db.get(subject_key(subject))? {
            Some(id) => {
                let id = Uuid::from_slice(&id).map_err(|_| {
                    KeyLookup::Key(KeyError::MalformedDataKey {
                        key_id: Uuid::nil(),
                    })
                })?;
                match self.data_key(db, id) {
                    Ok(key) => Some(key),
                    // A subject index left pointing at an erased key (it is removed in the
                    // same batch, so only by hand): the subject starts afresh.
                    Err(KeyLookup::Erased) => None,
                    Err(e) => return Err(e),
                }
            }
            None => None,
        };
        let sealing = match stored {
            Some(key) => SealingKey {
                key,
                entries: Mutex::new(Vec::new()),
                durable: AtomicBool::new(true),
            },
            None => {
                let master = provider.current().map_err(KeyLookup::Key)?;
                let key = DataKey::generate();
                let entries = vec![
                    WriteOp::Put {
                        key: data_key_key(key.id),
                        value: live_entry(&master, &key),
                    },
                    WriteOp::Put {
                        key: subject_key(subject),
                        value: key.id.as_bytes().to_vec(),
                    },
                ];
                lock(&self.opening).insert(key.id, key.clone());
                SealingKey {
                    key,
                    entries: Mutex::new(entries),
                    durable: AtomicBool::new(false),
                }
            }
        };
        let sealing = Arc::new(sealing);
        let mut cache = lock(&self.sealing);
        if cache.len() >= DATA_KEYS_CACHED_MAX {
            cache.retain(|_, k| !k.durable.load(Ordering::Acquire));
        }
        cache.insert(subject.to_owned(), sealing.clone());
        Ok(sealing)
    }

    /// The data key `id`, for opening a sealed payload.
    pub fn data_key(&self, db: &sled::Db, id: Uuid) -> Result<DataKey, KeyLookup> {
        // `mark_erased` records the erasure before it drops the key from this cache, so a
        // key found here was live when the lookup began.
        if let Some(k) = lock(&self.opening).get(&id) {
            return Ok(k.clone());
        }
        if self.is_erased(id) {
            return Err(KeyLookup::Erased);
        }
        let Some(value) = db.get(data_key_key(id))? else {
            return Err(KeyLookup::Key(KeyError::MissingDataKey { key_id: id }));
        };
        match parse_entry(&value) {
            None => Err(KeyLookup::Key(KeyError::MalformedDataKey { key_id: id })),
            Some(Entry::Erased) => {
                lock(&self.erased).insert(id);
                Err(KeyLookup::Erased)
            }
            Some(Entry::Live {
                aead,
                master_id,
                wrapped,
            }) => {
                let provider = self.provider().map_err(KeyLookup::Key)?;
                let master = provider.get(master_id).map_err(KeyLookup::Key)?;
                let key = DataKey::unwrap(id, aead, wrapped, &master).map_err(KeyLookup::Key)?;
                let mut cache = lock(&self.opening);
                if cache.len() >= DATA_KEYS_CACHED_MAX {
                    // Every key in it can be unwrapped again from the store: a key's entry
                    // is in the batch of the first events it seals, so no reader meets a
                    // payload sealed with a key the store does not hold yet.
                    cache.clear();
                }
                cache.insert(id, key.clone());
                Ok(key)
            }
        }
    }

    /// The data key id of `subject`, if the subject has one.
    pub fn subject_key_id(
        &self,
        db: &sled::Db,
        subject: &str,
    ) -> Result<Option<Uuid>, StorageError> {
        if let Some(k) = lock(&self.sealing).get(subject) {
            return Ok(Some(k.key.id));
        }
        Ok(db
            .get(subject_key(subject))?
            .and_then(|id| Uuid::from_slice(&id).ok()))
    }

    /// The writes that erase `subject`'s key `id`.
    pub fn erasure_writes(subject: &str, id: Uuid, at_micros: i64) -> Vec<WriteOp> {
        vec![
            WriteOp::Remove {
                key: subject_key(subject),
            },
            WriteOp::Put {
                key: data_key_key(id),
                value: erased_entry(at_micros),
            },
        ]
    }

    /// Forgets key `id` in memory: from here on nothing seals with it or opens with it. The
    /// committer calls it while it builds the erasure's batch, so every append it takes
    /// later is checked against it.
    pub fn mark_erased(&self, id: Uuid) {
        lock(&self.erased).insert(id);
        lock(&self.opening).remove(&id);
        lock(&self.sealing).retain(|_, k| k.key.id != id);
        self.epoch.fetch_add(1, Ordering::AcqRel);
    }

    /// Re-wraps every live data key not wrapped with the provider's current master key: the
    /// writes, and how many keys they re-wrap. Events are not touched.
    pub fn rewrap_writes(&self, db: &sled::Db) -> Result<(Vec<WriteOp>, usize), KeyLookup> {
        let _create = lock(&self.create);
        let provider = self.provider().map_err(KeyLookup::Key)?;
        let current = provider.current().map_err(KeyLookup::Key)?;
        let mut writes = Vec::new();
        for entry in db.scan_prefix([keys::DATA_KEYS]) {
            let (key, value) = entry?;
            let id = Uuid::from_slice(&key[1..]).map_err(|_| {
                KeyLookup::Key(KeyError::MalformedDataKey {
                    key_id: Uuid::nil(),
                })
            })?;
            let Some(parsed) = parse_entry(&value) else {
                return Err(KeyLookup::Key(KeyError::MalformedDataKey { key_id: id }));
            };
            let Entry::Live {
                aead,
                master_id,
                wrapped,
            } = parsed
            else {
                continue;
            };
            if master_id == current.id() {
                continue;
            }
            let old = provider.get(master_id).map_err(KeyLookup::Key)?;
            let data_key = DataKey::unwrap(id, aead, wrapped, &old).map_err(KeyLookup::Key)?;
            writes.push(WriteOp::Put {
                key: key.to_vec(),
                value: live_entry(&current, &data_key),
            });
        }
        // Keys not yet durable carry their entries: re-wrap those too, so a late first write
        // does not bring back the old wrapping.
        for k in lock(&self.sealing).values() {
            let mut entries = lock(&k.entries);
            if let Some(WriteOp::Put { value, .. }) = entries.first_mut() {
                *value = live_entry(&current, &k.key);
            }
        }
        let count = writes.len();
        Ok((writes, count))
    }
}

#[cfg(test)]
mod tests {
    //! The keyring entry formats: format 1 entries (written before AES-256-GCM) load as
    //! XChaCha20-Poly1305 keys and keep that algorithm, new keys are AES-256-GCM keys in
    //! format 2, rotation keeps each entry's format, and the algorithm byte is authenticated.
    use super::*;
    use crate::crypto::tests::unhex;

    #[derive(Debug)]
    struct Keys(Vec<MasterKey>);

    impl KeyProvider for Keys {
        fn current(&self) -> Result<MasterKey, KeyError> {
            Ok(self.0.last().unwrap().clone())
        }
        fn get(&self, id: &str) -> Result<MasterKey, KeyError> {
            self.0
                .iter()
                .find(|k| k.id() == id)
                .cloned()
                .ok_or_else(|| KeyError::UnknownMasterKey { id: id.into() })
        }
    }

    fn keyring(masters: Vec<MasterKey>) -> Keyring {
        let keyring = Keyring::default();
        keyring.set_provider(Arc::new(Keys(masters)));
        keyring
    }

    fn apply(db: &sled::Db, writes: Vec<WriteOp>) {
        for op in writes {
            match op {
                WriteOp::Put { key, value } => db.insert(key, value).unwrap(),
                WriteOp::Remove { key } => db.remove(key).unwrap(),
            };
        }
    }

    #[test]
    fn old_entries_keep_their_algorithm_new_keys_are_gcm_and_rotation_keeps_formats() {
        let db = sled::Config::new().temporary(true).open().unwrap();
        let pinned = MasterKey::new("pinned", [9; crate::crypto::KEY_BYTES]).unwrap();
        // A format 1 entry as the first version wrote it (the wrapped key of crypto.rs's
        // pinned test: key id 0x5eed under master key "pinned").
        let old_id = Uuid::from_u128(0x5eed);
        let mut entry = vec![1, 1, 6];
        entry.extend_from_slice(b"pinned");
        entry.extend_from_slice(&unhex("0d5fab0fb0cbd5f4cfe75bfb7774357bec6f52d53c371450eb8b579f735939eb15b85f6757348572bc5b16eabac203a22809895a8828e570f6cae73cc9a813976ad0f8349886af97"));
        db.insert(data_key_key(old_id), entry.clone()).unwrap();
        db.insert(subject_key("s-old"), old_id.as_bytes().to_vec())
            .unwrap();

        let ring = keyring(vec![pinned.clone()]);
        let old = ring.sealing_key(&db, "s-old").unwrap();
        assert_eq!(old.key.id, old_id);
        assert_eq!(
            old.key.aead(),
            Aead::XChaCha20Poly1305,
            "an old key keeps its AEAD"
        );
        assert!(old.pending_writes().is_empty());
        let new = ring.sealing_key(&db, "s-new").unwrap();
        assert_eq!(new.key.aead(), Aead::Aes256Gcm);
        apply(&db, new.pending_writes());
        let stored = db.get(data_key_key(new.key.id)).unwrap().unwrap();
        assert_eq!(
            stored[..3],
            [ENTRY_FORMAT_V2, STATE_LIVE, Aead::Aes256Gcm.id()]
        );
        let sealed = new.key.seal(b"payload", b"aad");

        // Another process reads both back from the store alone.
        let fresh = keyring(vec![pinned.clone()]);
        let reread = fresh.data_key(&db, new.key.id).unwrap();
        assert_eq!(reread.aead(), Aead::Aes256Gcm);
        assert_eq!(reread.open(&sealed, b"aad").unwrap(), b"payload");
        assert_eq!(
            fresh.data_key(&db, old_id).unwrap().aead(),
            Aead::XChaCha20Poly1305
        );

        // Rotation re-wraps each key in its own entry format.
        let m2 = MasterKey::generate("m2").unwrap();
        let (writes, count) = keyring(vec![pinned, m2.clone()])
            .rewrap_writes(&db)
            .unwrap();
        assert_eq!(count, 2);
        apply(&db, writes);
        assert_eq!(
            db.get(data_key_key(old_id)).unwrap().unwrap()[0],
            ENTRY_FORMAT_V1
        );
        assert_eq!(
            db.get(data_key_key(new.key.id)).unwrap().unwrap()[0],
            ENTRY_FORMAT_V2
        );
        let rotated = keyring(vec![m2.clone()]);
        assert_eq!(
            rotated.data_key(&db, old_id).unwrap().aead(),
            Aead::XChaCha20Poly1305
        );
        let reread = rotated.data_key(&db, new.key.id).unwrap();
        assert_eq!(reread.open(&sealed, b"aad").unwrap(), b"payload");

        // The algorithm byte is authenticated: changed to XChaCha20-Poly1305 the key does
        // not unwrap; changed to an unknown algorithm the entry is malformed.
        let mut stored = db.get(data_key_key(new.key.id)).unwrap().unwrap().to_vec();
        stored[2] = Aead::XChaCha20Poly1305.id();
        db.insert(data_key_key(new.key.id), stored.clone()).unwrap();
        assert!(matches!(
            keyring(vec![m2.clone()]).data_key(&db, new.key.id),
            Err(KeyLookup::Key(KeyError::WrongMasterKey { .. }))
        ));
        stored[2] = 0x7f;
        db.insert(data_key_key(new.key.id), stored).unwrap();
        assert!(matches!(
            keyring(vec![m2]).data_key(&db, new.key.id),
            Err(KeyLookup::Key(KeyError::MalformedDataKey { .. }))
        ));
    }
}
