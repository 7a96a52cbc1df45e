//! Precompiled components, cached on disk. Compiling a small plugin takes 7–14 ms;
//! deserializing its artifact about 0.2 ms.
//!
//! Deserializing an artifact is unsafe (it is native code), so the cache only loads files it
//! wrote itself: each file carries a keyed BLAKE3 MAC under a random key that lives in the
//! cache directory (mode 0600), over the engine's compatibility hash, the wasm's hash and the
//! artifact. A file that fails the check (truncated, tampered, from another key) is recompiled
//! and overwritten, never loaded. The file name is keyed by the wasm's hash and the engine's
//! compatibility hash, so a new Loadstar (or other engine settings) compiles afresh.

use std::hash::{Hash, Hasher};
use std::io::Read;
use std::path::{Path, PathBuf};

use tracing::{debug, warn};
use wasmtime::Engine;
use wasmtime::component::Component;

use super::PluginError;

const MAGIC: &[u8; 8] = b"LSCWASM1";
const MAC_LEN: usize = 32;

/// Where a component came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CacheOutcome {
    /// Already compiled by this host.
    Memory,
    /// Loaded from an artifact this cache wrote.
    Disk,
    /// Compiled now (and written to disk if the cache has a directory).
    Compiled,
}

pub struct ArtifactCache {
    dir: Option<PathBuf>,
    key: [u8; 32],
    engine_hash: u64,
}

impl ArtifactCache {
    /// A cache in `dir` (created if missing).
    pub fn open(engine: &Engine, dir: &Path) -> Result<Self, PluginError> {
        let host = |what: &str, e: std::io::Error| {
            PluginError::Host(format!("artifact cache {}: {what}: {e}", dir.display()))
        };
        std::fs::create_dir_all(dir).map_err(|e| host("create", e))?;
        let key_path = dir.join("artifact.key");
        let key = match std::fs::read(&key_path) {
            Ok(bytes) if bytes.len() == 32 => {
                let mut key = [0u8; 32];
                key.copy_from_slice(&bytes);
                key
            }
            _ => {
                let key = random_key().map_err(|e| host("random key", e))?;
                write_private(&key_path, &key).map_err(|e| host("write key", e))?;
                key
            }
        };
        Ok(ArtifactCache {
            dir: Some(dir.to_path_buf()),
            key,
            engine_hash: engine_hash(engine),
        })
    }

    /// A cache without a directory: compiles once per host, keeps nothing on disk.
    pub fn in_memory(engine: &Engine) -> Self {
        ArtifactCache {
            dir: None,
            key: [0u8; 32],
            engine_hash: engine_hash(engine),
        }
    }

    /// The component for `wasm`: from disk if this cache wrote it, else compiled (and stored).
    pub fn load(
        &self,
        engine: &Engine,
        plugin: &str,
        wasm: &[u8],
    ) -> Result<(Component, CacheOutcome), PluginError> {
        let wasm_hash = blake3::hash(wasm);
        let path = self.dir.as_ref().map(|d| {
            d.join(format!(
                "{}-{:016x}.cwasm",
                &wasm_hash.to_hex()[..32],
                self.engine_hash
            ))
        });
        if let Some(path) = &path {
            match std::fs::read(path) {
                Ok(file) => match self.verified(&file, wasm_hash.as_bytes()) {
                    Some(artifact) => {
                        // SAFETY: `artifact` passed the MAC check, so this cache wrote it from
                        // `Component::serialize` of an engine with the same compatibility hash
                        // (part of the MAC and the file name).
                        match unsafe { Component::deserialize(engine, artifact) } {
                            Ok(component) => return Ok((component, CacheOutcome::Disk)),
                            Err(e) => {
                                warn!(plugin, path = %path.display(), error = %e, "plugin artifact did not load; recompiling")
                            }
                        }
                    }
                    None => {
                        warn!(plugin, path = %path.display(), "plugin artifact failed its check (not written by this cache, or damaged); recompiling")
                    }
                },
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => {
                    warn!(plugin, path = %path.display(), error = %e, "plugin artifact unreadable; recompiling")
                }
            }
        }
        let component = Component::new(engine, wasm).map_err(|e| PluginError::Compile {
            plugin: plugin.to_string(),
            message: format!("{e:#}"),
        })?;
        if let Some(path) = &path {
            match component.serialize() {
                Ok(artifact) => {
                    let mut file = Vec::with_capacity(MAGIC.len() + MAC_LEN + artifact.len());
                    file.extend_from_slice(MAGIC);
                    file.extend_from_slice(&self.mac(wasm_hash.as_bytes(), &artifact));
                    file.extend_from_slice(&artifact);
                    match write_private(path, &file) {
                        Ok(()) => {
                            debug!(plugin, path = %path.display(), bytes = file.len(), "plugin artifact cached")
                        }
                        Err(e) => {
                            warn!(plugin, path = %path.display(), error = %e, "plugin artifact not cached")
                        }
                    }
                }
                Err(e) => warn!(plugin, error = %e, "plugin artifact not serializable; not cached"),
            }
        }
        Ok((component, CacheOutcome::Compiled))
    }

    fn mac(&self, wasm_hash: &[u8; 32], artifact: &[u8]) -> [u8; 32] {
        let mut h = blake3::Hasher::new_keyed(&self.key);
        h.update(&self.engine_hash.to_le_bytes());
        h.update(wasm_hash);
        h.update(artifact);
        *h.finalize().as_bytes()
    }

    fn verified<'a>(&self, file: &'a [u8], wasm_hash: &[u8; 32]) -> Option<&'a [u8]> {
        let rest = file.strip_prefix(MAGIC.as_slice())?;
        if rest.len() < MAC_LEN {
            return None;
        }
        let (mac, artifact) = rest.split_at(MAC_LEN);
        // blake3::Hash compares in constant time.
        let expected = blake3::Hash::from(self.mac(wasm_hash, artifact));
        let given = blake3::Hash::from_bytes(mac.try_into().ok()?);
        (expected == given).then_some(artifact)
    }
}

fn engine_hash(engine: &Engine) -> u64 {
    // DefaultHasher::new() has fixed keys, so this is stable for one build of Loadstar.
    let mut h = std::collections::hash_map::DefaultHasher::new();
    engine.precompile_compatibility_hash().hash(&mut h);
    h.finish()
}

fn random_key() -> std::io::Result<[u8; 32]> {
    let mut key = [0u8; 32];
    std::fs::File::open("/dev/urandom")?.read_exact(&mut key)?;
    Ok(key)
}

/// Writes via a temporary file and a rename, so a crash never leaves a half-written file
/// under the final name; owner-only permissions.
fn write_private(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    let tmp = path.with_extension(format!("tmp{}", std::process::id()));
    {
        let mut options = std::fs::OpenOptions::new();
        options.write(true).create(true).truncate(true);
        #[cfg(unix)]
        {
            use std::os::unix::fs::OpenOptionsExt;
            options.mode(0o600);
        }
        let mut file = options.open(&tmp)?;
        file.write_all(bytes)?;
        file.sync_all()?;
    }
    std::fs::rename(&tmp, path)
}
