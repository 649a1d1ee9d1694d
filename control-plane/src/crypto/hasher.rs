//! Argon2id hashing of key secrets on a bounded pool of blocking threads, so a
//! flood of verifications queues instead of starving the async runtime.

use std::sync::Arc;

use argon2::password_hash::phc::PasswordHash;
use argon2::password_hash::{PasswordHasher, PasswordVerifier};
use argon2::{Algorithm, Argon2, Params, Version};
use tokio::sync::Semaphore;

use crate::error::{Error, Result};

/// Argon2id cost parameters.
#[derive(Clone, Copy, Debug)]
pub struct HashingParams {
    /// Memory in KiB (OWASP: 19456).
    pub memory_kib: u32,
    /// Iterations (OWASP: 2).
    pub iterations: u32,
    /// Lanes (OWASP: 1).
    pub parallelism: u32,
}

impl Default for HashingParams {
    fn default() -> Self {
        Self { memory_kib: 19_456, iterations: 2, parallelism: 1 }
    }
}

/// Hashes and verifies secrets with argon2id, at most `workers` at a time.
#[derive(Clone)]
pub struct SecretHasher {
    argon2: Arc<Argon2<'static>>,
    permits: Arc<Semaphore>,
}

impl SecretHasher {
    /// A hasher with these parameters and this many concurrent hashes.
    pub fn new(params: HashingParams, workers: usize) -> Result<Self> {
        let params = Params::new(params.memory_kib, params.iterations, params.parallelism, None)
            .map_err(|e| Error::Config(format!("argon2 parameters: {e}")))?;
        Ok(Self {
            argon2: Arc::new(Argon2::new(Algorithm::Argon2id, Version::V0x13, params)),
            permits: Arc::new(Semaphore::new(workers.max(1))),
        })
    }

    /// The PHC string of `secret` with a fresh random salt.
    pub async fn hash(&self, secret: String) -> Result<String> {
        let argon2 = self.argon2.clone();
        self.run(move || {
            argon2
                .hash_password(secret.as_bytes())
                .map(|hash| hash.to_string())
                .map_err(|e| Error::Hashing(e.to_string()))
        })
        .await
    }

    /// Whether `secret` matches the stored PHC string (using the stored parameters).
    pub async fn verify(&self, secret: String, phc: String) -> Result<bool> {
        let argon2 = self.argon2.clone();
        self.run(move || {
            let hash = PasswordHash::new(&phc).map_err(|e| Error::Hashing(e.to_string()))?;
            Ok(argon2.verify_password(secret.as_bytes(), &hash).is_ok())
        })
        .await
    }

    /// Whether `token` matches an imported key's salted hash, on the same pool.
    pub async fn verify_salted(
        &self,
        format: super::imported::HashFormat,
        token: String,
        stored: String,
    ) -> Result<bool> {
        self.run(move || Ok(super::imported::verify_salted(format, &token, &stored))).await
    }

    async fn run<T: Send + 'static>(&self, work: impl FnOnce() -> Result<T> + Send + 'static) -> Result<T> {
        let _permit = self.permits.acquire().await.map_err(|_| Error::Hashing("hashing pool closed".into()))?;
        tokio::task::spawn_blocking(work).await.map_err(|e| Error::Hashing(format!("hashing task failed: {e}")))?
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn hash_then_verify() {
        let hasher = SecretHasher::new(HashingParams { memory_kib: 64, iterations: 1, parallelism: 1 }, 2).unwrap();
        let phc = hasher.hash("s3cret".into()).await.unwrap();
        assert!(phc.starts_with("$argon2id$"));
        assert!(hasher.verify("s3cret".into(), phc.clone()).await.unwrap());
        assert!(!hasher.verify("other".into(), phc).await.unwrap());
        assert!(hasher.verify("x".into(), "not a hash".into()).await.is_err());
    }
}
