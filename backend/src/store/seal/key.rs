//! Encryption keys and where they come from: a file, an environment variable, or a systemd
//! credential.
//!
//! A key is 64 random bytes: AES-256-XTS's two 256-bit keys, data key first. A 32-byte key
//! is accepted too and expanded to 64 bytes with HKDF-SHA-256, so one 256-bit secret (what
//! most key managers hand out) is enough. Keys are raw, never passphrases: nothing slows down
//! guessing, so they must come from a random source (`head -c 64 /dev/urandom`).

use crate::store::error::{Result, StoreError};
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// HKDF `info` for expanding a 32-byte key to AES-256-XTS's 64 bytes.
const EXPAND_INFO: &[u8] = b"keel aes-xts-256 key expansion v1";

/// A 64-byte AES-256-XTS key, wiped from memory when dropped. Cheap to clone (shared).
#[derive(Clone)]
pub struct Key(Arc<KeyBytes>);

struct KeyBytes([u8; 64]);

impl Drop for KeyBytes {
    fn drop(&mut self) {
        for b in self.0.iter_mut() {
            // SAFETY: `b` is a valid, aligned, exclusive reference into our own array; a
            // volatile write keeps the compiler from dropping the wipe as a dead store.
            unsafe { std::ptr::write_volatile(b, 0) };
        }
    }
}

impl std::fmt::Debug for Key {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Key(..)")
    }
}

impl Key {
    /// A key from its raw bytes: 64 (used as is) or 32 (expanded).
    pub fn from_bytes(raw: &[u8]) -> Result<Self> {
        let mut out = [0u8; 64];
        match raw.len() {
            64 => out.copy_from_slice(raw),
            32 => hkdf::Hkdf::<sha2::Sha256>::new(None, raw)
                .expand(EXPAND_INFO, &mut out)
                .map_err(|_| StoreError::Invalid("cannot expand the key".into()))?,
            n => return Err(bad_key(length_problem(raw, n))),
        }
        if out[..32] == out[32..] {
            return Err(bad_key(
                "its two 32-byte halves are equal (XTS needs two different keys)".into(),
            ));
        }
        if out.iter().all(|b| *b == out[0]) {
            return Err(bad_key("every byte is the same (not a random key)".into()));
        }
        Ok(Self(Arc::new(KeyBytes(out))))
    }

    /// The 64 key bytes.
    pub(crate) fn bytes(&self) -> &[u8; 64] {
        &self.0.0
    }
}

fn bad_key(why: String) -> StoreError {
    StoreError::Invalid(format!("bad encryption key: {why}"))
}

fn length_problem(raw: &[u8], n: usize) -> String {
    let newline = matches!(n, 33 | 65) && raw.last() == Some(&b'\n');
    format!(
        "{n} bytes, expected 32 or 64 raw bytes{}",
        if newline {
            " (it ends with a newline: write the key without one)"
        } else if n == 0 {
            " (the file is empty)"
        } else if n == 64 * 2 || n == 64 * 2 + 1 || n == 32 * 2 || n == 32 * 2 + 1 {
            " (a hex key? key files hold raw bytes; env:NAME takes hex)"
        } else {
            ""
        }
    )
}

/// Where a key is read from: the value of `--key-file` or the `key_file` config key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeySource {
    /// A file of 32 or 64 raw bytes.
    File(PathBuf),
    /// `env:NAME`: an environment variable holding the key in hex (64 or 128 digits).
    Env(String),
    /// `credential:NAME`: the systemd credential `$CREDENTIALS_DIRECTORY/NAME` (raw bytes).
    Credential(String),
}

impl KeySource {
    /// Parses `env:NAME`, `credential:NAME` or a path.
    pub fn parse(s: &str) -> Result<Self> {
        let name_ok = |n: &str| !n.is_empty() && !n.contains('/') && n != "." && n != "..";
        if let Some(name) = s.strip_prefix("env:") {
            return if name_ok(name) && !name.contains('=') {
                Ok(Self::Env(name.to_string()))
            } else {
                Err(bad_key(format!("{s:?}: env: needs a variable name")))
            };
        }
        if let Some(name) = s.strip_prefix("credential:") {
            return if name_ok(name) {
                Ok(Self::Credential(name.to_string()))
            } else {
                Err(bad_key(format!(
                    "{s:?}: credential: needs a credential name"
                )))
            };
        }
        if s.is_empty() {
            return Err(bad_key("the key file path is empty".into()));
        }
        Ok(Self::File(PathBuf::from(s)))
    }

    /// Reads and checks the key.
    pub fn load(&self) -> Result<Key> {
        let from = |what: String, e: StoreError| match e {
            StoreError::Invalid(m) => StoreError::Invalid(format!("{what}: {m}")),
            other => other,
        };
        match self {
            Self::File(p) => {
                let what = format!("key file {}", p.display());
                Key::from_bytes(&read_small(p, &what)?).map_err(|e| from(what, e))
            }
            Self::Credential(name) => {
                let dir = std::env::var_os("CREDENTIALS_DIRECTORY").ok_or_else(|| {
                    bad_key(format!(
                        "credential:{name}: $CREDENTIALS_DIRECTORY is not set (LoadCredential= in the unit)"
                    ))
                })?;
                let p = Path::new(&dir).join(name);
                let what = format!("credential {name} ({})", p.display());
                Key::from_bytes(&read_small(&p, &what)?).map_err(|e| from(what, e))
            }
            Self::Env(name) => {
                let what = format!("environment variable {name}");
                let v = std::env::var(name)
                    .map_err(|_| bad_key(format!("{what} is not set or not UTF-8")))?;
                let raw = hex::decode(v.trim()).map_err(|e| {
                    bad_key(format!(
                        "{what}: not hex ({e}); it holds 64 or 128 hex digits"
                    ))
                })?;
                Key::from_bytes(&raw).map_err(|e| from(what, e))
            }
        }
    }
}

/// Reads a key file, refusing anything far larger than a key before reading it all.
fn read_small(p: &Path, what: &str) -> Result<Vec<u8>> {
    use std::io::Read;
    let f = std::fs::File::open(p).map_err(|e| bad_key(format!("{what}: {e}")))?;
    let mut raw = Vec::new();
    f.take(4096)
        .read_to_end(&mut raw)
        .map_err(|e| bad_key(format!("{what}: {e}")))?;
    Ok(raw)
}
