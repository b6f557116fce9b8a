//! Opening the store read-only, and the guard that turns a panic inside a storage call into
//! an error. **Architecture Invariant:** the CLI opens the journal only through
//! [`open_read_only`] (except `demo`, which runs an engine): replay never writes.

use crate::error::CliError;
use evershard_engine::crypto::{readable_by_others, FileKeyProvider, KeyProvider};
use evershard_engine::{Journal, StreamId};
use std::cell::Cell;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::Path;
use std::sync::Once;

thread_local! {
    /// Depth of [`guarded`] calls on this thread: a panic inside one is caught and reported
    /// as an error, so the panic hook stays quiet about it.
    static GUARDED_DEPTH: Cell<u32> = const { Cell::new(0) };
}

static HOOK: Once = Once::new();

/// The master keys of this run (`--key-file`), given to every journal [`open_read_only`]
/// opens, so `history`, `state`, `export` and the replay of `verify` can open encrypted
/// payloads. Integrity checks never need them.
static KEY_PROVIDER: std::sync::OnceLock<std::sync::Arc<dyn KeyProvider>> =
    std::sync::OnceLock::new();

/// Reads the key file for this run. Its errors name the file and line, never a key.
pub fn use_key_file(path: &Path) -> Result<(), CliError> {
    let provider = FileKeyProvider::open(path)
        .map_err(|e| CliError::InvalidArgument(format!("--key-file: {e}")))?;
    // A second call (tests running several commands in one process) keeps the first.
    let _ = KEY_PROVIDER.set(std::sync::Arc::new(provider));
    Ok(())
}

/// Installs (once) a panic hook that is silent for panics [`guarded`] catches, says in one
/// line when sled's own threads give up on damaged data (they are not ours to guard: sled
/// spawns them, and the command reports the damage through its `Result`), and defers to the
/// previous hook for every other panic.
pub fn install_panic_hook() {
    HOOK.call_once(|| {
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            if GUARDED_DEPTH.with(Cell::get) != 0 {
                return;
            }
            match info.location().filter(|l| l.file().contains("/sled-")) {
                Some(at) => {
                    let message = info
                        .payload()
                        .downcast_ref::<&str>()
                        .map(|s| (*s).to_owned())
                        .or_else(|| info.payload().downcast_ref::<String>().cloned())
                        .unwrap_or_else(|| "no message".into());
                    eprintln!(
                        "evershard: sled stopped reading damaged data in one of its threads: \
                         {message} (sled {}:{})",
                        at.file().rsplit('/').next().unwrap_or_default(),
                        at.line()
                    );
                }
                None => previous(info),
            }
        }));
    });
}

struct DepthGuard;

impl DepthGuard {
    fn enter() -> DepthGuard {
        GUARDED_DEPTH.with(|d| d.set(d.get() + 1));
        DepthGuard
    }
}

impl Drop for DepthGuard {
    fn drop(&mut self) {
        GUARDED_DEPTH.with(|d| d.set(d.get() - 1));
    }
}

/// The text of a caught panic.
pub fn panic_message(panic: Box<dyn std::any::Any + Send>) -> String {
    panic
        .downcast_ref::<&str>()
        .map(|s| (*s).to_owned())
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "non-string panic".into())
}

/// Runs `f`; a panic becomes `Err(message)`. For calls into sled and aggregate code on a
/// store that may be damaged.
pub fn guarded<T>(f: impl FnOnce() -> T) -> Result<T, String> {
    install_panic_hook();
    let _depth = DepthGuard::enter();
    catch_unwind(AssertUnwindSafe(f)).map_err(panic_message)
}

/// Opens the store at `dir` for reading only, mapping "missing" and "in use" to their own
/// errors.
pub fn open_read_only(dir: &Path) -> Result<Journal, CliError> {
    match guarded(|| Journal::open_read_only(dir)) {
        Ok(Ok(journal)) => {
            // Only for a store: a refusal stays one line.
            if readable_by_others(dir) {
                eprintln!(
                    "warning: the store at {} is readable by other users (chmod -R go-rwx)",
                    dir.display()
                );
            }
            if let Some(provider) = KEY_PROVIDER.get() {
                journal.set_key_provider(provider.clone());
            }
            Ok(journal)
        }
        Ok(Err(e)) => Err(CliError::open(dir, e)),
        Err(message) => Err(CliError::Panicked {
            what: format!("opening {}", dir.display()),
            message,
        }),
    }
}

/// The stream an `TYPE ID` argument pair names, checked against the key layout's limits
/// before any read builds a key from it: an id over the limit is an invalid argument
/// (exit 2), echoed shortened.
pub fn stream_arg(aggregate_type: &str, aggregate_id: &str) -> Result<StreamId, CliError> {
    let stream = StreamId::new(aggregate_type.to_owned(), aggregate_id.to_owned());
    stream.validate().map_err(|e| {
        CliError::InvalidArgument(format!(
            "aggregate {aggregate_type}/{}: {e}",
            crate::error::shown(aggregate_id)
        ))
    })?;
    Ok(stream)
}
