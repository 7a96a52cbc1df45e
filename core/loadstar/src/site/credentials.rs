//! Station passwords, kept only as a keyed hash.

use std::fmt;
use std::io::Read;
use std::sync::OnceLock;

/// A station's Basic-auth password (OCPP security profiles 1 and 2), stored only as a BLAKE3
/// keyed hash under a per-process random key. The plain password is hashed at load time and
/// dropped; it is never kept in [`super::SiteConfig`] and never printed (`Debug` shows nothing).
///
/// The key is 32 bytes read from `/dev/urandom` once per process (with a fallback to the
/// standard library's randomly seeded hasher state where that file does not exist), so a hash
/// seen in a memory dump cannot be checked offline against a password list without the key, and
/// nothing secret ever needs to be configured for it. Hashes are not comparable across
/// processes; they are never stored.
#[derive(Clone, PartialEq, Eq)]
pub struct StationCredentials {
    hash: blake3::Hash,
}

impl StationCredentials {
    /// Hashes `password`. Length rules (16 to 40 characters) are checked by the site file
    /// reader, not here.
    pub fn new(password: &str) -> Self {
        StationCredentials {
            hash: keyed_hash(password),
        }
    }

    /// Whether `password` is the configured one. The comparison of the two hashes is constant
    /// time (`blake3::Hash`'s `PartialEq`), so the response time does not leak how much of a
    /// guess was right.
    pub fn verify(&self, password: &str) -> bool {
        keyed_hash(password) == self.hash
    }
}

impl fmt::Debug for StationCredentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("StationCredentials(<redacted>)")
    }
}

fn keyed_hash(password: &str) -> blake3::Hash {
    let mut hasher = blake3::Hasher::new_keyed(process_key());
    hasher.update(password.as_bytes());
    hasher.finalize()
}

fn process_key() -> &'static [u8; 32] {
    static KEY: OnceLock<[u8; 32]> = OnceLock::new();
    KEY.get_or_init(|| {
        let mut key = [0u8; 32];
        let from_os = std::fs::File::open("/dev/urandom")
            .and_then(|mut f| f.read_exact(&mut key))
            .is_ok();
        if !from_os {
            key = fallback_key();
        }
        key
    })
}

/// Key material without `/dev/urandom`: `RandomState` is seeded from the OS's random source by
/// the standard library; several independent states, plus the time and process id, are mixed by
/// BLAKE3's key derivation.
fn fallback_key() -> [u8; 32] {
    use std::hash::{BuildHasher, Hasher};
    let mut material = Vec::with_capacity(96);
    for i in 0u64..8 {
        let mut h = std::collections::hash_map::RandomState::new().build_hasher();
        h.write_u64(i);
        material.extend_from_slice(&h.finish().to_le_bytes());
    }
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or_default();
    material.extend_from_slice(&now.to_le_bytes());
    material.extend_from_slice(&std::process::id().to_le_bytes());
    blake3::derive_key("loadstar 2025 station credential key", &material)
}
