//! AES-256-GCM sealing of secrets at rest (ARCHITECTURE.md, "Secrets at rest"): random 96-bit nonce per
//! value, the row id as associated data, and the master key id as a prefix so
//! master keys can rotate. Sealed form: `<key id>:<base64(nonce ‖ ciphertext)>`.

use std::fmt;
use std::path::Path;

use aes_gcm::aead::{Aead, Generate, KeyInit, Payload};
use aes_gcm::{Aes256Gcm, Nonce};
use base64::Engine;
use base64::engine::general_purpose::STANDARD as BASE64;

use crate::error::{Error, Result};

const NONCE_LEN: usize = 12;

/// The configured master keys; the last one seals, all of them open.
#[derive(Clone)]
pub struct MasterKeys {
    keys: Vec<(String, Aes256Gcm)>,
}

impl fmt::Debug for MasterKeys {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let ids: Vec<&str> = self.keys.iter().map(|(id, _)| id.as_str()).collect();
        f.debug_struct("MasterKeys").field("ids", &ids).finish()
    }
}

impl MasterKeys {
    /// Parses a master-key file: one `<id>=<base64 of 32 bytes>` per line,
    /// oldest first; `#` starts a comment.
    pub fn parse(text: &str) -> Result<Self> {
        let mut keys = Vec::new();
        for (number, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let bad = |why: &str| Error::Config(format!("master key file line {}: {why}", number + 1));
            let (id, encoded) = line.split_once('=').ok_or_else(|| bad("expected <id>=<base64 key>"))?;
            let id = id.trim();
            if id.is_empty() || !id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_') {
                return Err(bad("key id must be letters, digits, '-' or '_'"));
            }
            let bytes = BASE64.decode(encoded.trim()).map_err(|_| bad("key is not base64"))?;
            let cipher = Aes256Gcm::new_from_slice(&bytes).map_err(|_| bad("key must be 32 bytes"))?;
            if keys.iter().any(|(existing, _)| existing == id) {
                return Err(bad("duplicate key id"));
            }
            keys.push((id.to_owned(), cipher));
        }
        if keys.is_empty() {
            return Err(Error::Config("master key file holds no key".into()));
        }
        Ok(Self { keys })
    }

    /// Reads and parses a master-key file.
    pub fn load(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| Error::Config(format!("cannot read master key file {}: {e}", path.display())))?;
        Self::parse(&text)
    }

    /// A new master-key file line with a random key.
    pub fn generate_line(id: &str) -> String {
        format!("{id}={}\n", BASE64.encode(super::random_bytes::<32>()))
    }

    /// Id of the key that seals new values.
    pub fn current_id(&self) -> &str {
        self.keys.last().map(|(id, _)| id.as_str()).unwrap_or_default()
    }

    /// Seals `plaintext`, bound to `associated` (the row id).
    pub fn seal(&self, plaintext: &[u8], associated: &str) -> Result<String> {
        let (id, cipher) = self.keys.last().ok_or_else(|| Error::Sealing("no master key".into()))?;
        let nonce = Nonce::generate();
        let ciphertext = cipher
            .encrypt(&nonce, Payload { msg: plaintext, aad: associated.as_bytes() })
            .map_err(|_| Error::Sealing("encryption failed".into()))?;
        let mut sealed = nonce.to_vec();
        sealed.extend_from_slice(&ciphertext);
        Ok(format!("{id}:{}", BASE64.encode(sealed)))
    }

    /// Opens a sealed value; fails clearly if it was altered, moved to another
    /// row, or sealed under a key that is not configured.
    pub fn open(&self, sealed: &str, associated: &str) -> Result<Vec<u8>> {
        let (id, encoded) = sealed.split_once(':').ok_or_else(|| Error::Sealing("not a sealed value".into()))?;
        let cipher = self
            .keys
            .iter()
            .find(|(key_id, _)| key_id == id)
            .map(|(_, cipher)| cipher)
            .ok_or_else(|| Error::Sealing(format!("sealed under unknown master key {id:?}")))?;
        let bytes = BASE64.decode(encoded).map_err(|_| Error::Sealing("sealed value is not base64".into()))?;
        if bytes.len() < NONCE_LEN {
            return Err(Error::Sealing("sealed value is truncated".into()));
        }
        let (nonce, ciphertext) = bytes.split_at(NONCE_LEN);
        let nonce = Nonce::try_from(nonce).map_err(|_| Error::Sealing("bad nonce".into()))?;
        cipher
            .decrypt(&nonce, Payload { msg: ciphertext, aad: associated.as_bytes() })
            .map_err(|_| Error::Sealing("authentication failed: value was altered or belongs to another row".into()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seal_open_and_tamper() {
        let keys = MasterKeys::parse(&MasterKeys::generate_line("k1")).unwrap();
        let sealed = keys.seal(b"secret", "key_1").unwrap();
        assert!(sealed.starts_with("k1:"));
        assert!(!sealed.contains("secret"));
        assert_eq!(keys.open(&sealed, "key_1").unwrap(), b"secret");
        assert!(keys.open(&sealed, "key_2").is_err(), "bound to the row id");
        let mut tampered = sealed.clone().into_bytes();
        let last = tampered.len() - 2;
        tampered[last] = if tampered[last] == b'A' { b'B' } else { b'A' };
        assert!(keys.open(std::str::from_utf8(&tampered).unwrap(), "key_1").is_err());
        assert!(keys.open("k9:AAAA", "key_1").unwrap_err().to_string().contains("unknown master key"));
    }

    #[test]
    fn newest_key_seals_and_old_keys_open() {
        let old = MasterKeys::parse(&MasterKeys::generate_line("k1")).unwrap();
        let sealed_old = old.seal(b"v", "r").unwrap();
        let line1 = MasterKeys::generate_line("k1");
        let both = format!("{line1}{}", MasterKeys::generate_line("k2"));
        let keys = MasterKeys::parse(&both).unwrap();
        assert_eq!(keys.current_id(), "k2");
        assert!(keys.seal(b"v", "r").unwrap().starts_with("k2:"));
        assert!(keys.open(&sealed_old, "r").is_err(), "different k1 material");
        assert!(MasterKeys::parse("k1=short").is_err());
        assert!(MasterKeys::parse("").is_err());
    }
}
