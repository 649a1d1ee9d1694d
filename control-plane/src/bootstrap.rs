//! First-run preparation: data directory, root token and master key files.

use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::Path;

use crate::config::Config;
use crate::crypto::{MasterKeys, token::encode_fixed};
use crate::error::{Error, Result};

/// Shortest root token accepted from a file.
const MIN_ROOT_TOKEN_LEN: usize = 32;

/// Reads the root token, generating it (0600) on first run.
pub fn root_token(config: &Config) -> Result<String> {
    let path = config.root_token_path();
    if !path.exists() {
        let token = format!("kproot_{}", encode_fixed(&crate::crypto::random_bytes::<32>(), 43));
        write_secret_file(&path, &format!("{token}\n"))?;
        tracing::info!(path = %path.display(), "generated the root token; read it from this file");
    }
    let token = std::fs::read_to_string(&path)
        .map_err(|e| Error::Config(format!("cannot read root token file {}: {e}", path.display())))?
        .trim()
        .to_owned();
    if token.len() < MIN_ROOT_TOKEN_LEN {
        return Err(Error::Config(format!(
            "root token in {} is shorter than {MIN_ROOT_TOKEN_LEN} characters",
            path.display()
        )));
    }
    Ok(token)
}

/// Loads the master keys. Only the embedded SQLite default generates one;
/// Postgres needs an explicit `--master-key-file`.
pub fn master_keys(config: &Config) -> Result<MasterKeys> {
    if let Some(path) = &config.master_key_file {
        return MasterKeys::load(path);
    }
    if config.storage.is_postgres() {
        return Err(Error::Config(
            "Postgres needs --master-key-file (or KEYPLANE_MASTER_KEY_FILE). Create one with:\n  \
             (umask 077; keyplane generate-master-key --id k1 > /etc/keyplane/master-key)\n\
             and keep a backup: values sealed under a lost key cannot be recovered."
                .into(),
        ));
    }
    let path = config.storage.data_dir.join("master-key");
    if !path.exists() {
        write_secret_file(&path, &MasterKeys::generate_line("k1"))?;
        tracing::info!(path = %path.display(), "generated a master key; back this file up");
    }
    MasterKeys::load(&path)
}

/// Creates the data directory (0700) when missing.
pub fn data_dir(path: &Path) -> Result<()> {
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(path)
        .map_err(|e| Error::Config(format!("cannot create data directory {}: {e}", path.display())))
}

/// Writes a new file readable by its owner only; never overwrites.
fn write_secret_file(path: &Path, contents: &str) -> Result<()> {
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .map_err(|e| Error::Config(format!("cannot create {}: {e}", path.display())))?;
    file.write_all(contents.as_bytes())?;
    file.sync_all()?;
    Ok(())
}
