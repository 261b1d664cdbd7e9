//! The JWT key: read from the configuration at start ([`authenticator`]) and again on SIGHUP
//! ([`JwtKeyReload`]), through the same code, so a reload accepts exactly what a start would.
//!
//! Only file sources can change under a running process: `JWT_SECRET_FILE` and
//! `JWT_PUBLIC_KEY_FILE`. `JWT_SECRET` (the environment) and the `--dev` secret stay as they
//! were. A key that fails to load (unreadable, too short, not a key) leaves the old one in force.

use std::{path::Path, sync::Arc};

use super::start::StartError;
use crate::{
    config::{Config, read_secret_file},
    proto::jwt::{Algorithm, AuthConfig, Authenticator, KeySource},
    reload::{Outcome, Reload},
    shard::shared::{Shared, Verifier},
};

/// Builds the JWT verifier from `cfg` (with `secret` overriding `JWT_SECRET`, for `--dev`).
///
/// # Errors
///
/// The key file cannot be read, or the key does not suit the algorithm.
pub fn authenticator(cfg: &Config, secret: Option<&str>) -> Result<Authenticator, StartError> {
    let key = match (&cfg.jwt_public_key_file, &cfg.jwt_secret_file) {
        (Some(path), _) if cfg.jwt_algorithm.min_secret_bytes().is_none() => {
            KeySource::PublicKeyPem(read(path, "JWT_PUBLIC_KEY_FILE", |p| std::fs::read(p))?)
        }
        (_, Some(path)) if secret.is_none() => {
            KeySource::Secret(read(path, "JWT_SECRET_FILE", read_secret_file)?)
        }
        _ => KeySource::Secret(
            secret
                .or(cfg.jwt_secret.as_deref())
                .unwrap_or_default()
                .as_bytes()
                .to_vec(),
        ),
    };
    Ok(Authenticator::new(&auth_config(cfg, key))?)
}

/// Whether the key comes from a file SIGHUP can re-read (`JWT_SECRET_FILE`, or
/// `JWT_PUBLIC_KEY_FILE` for RS256/ES256), rather than from `JWT_SECRET` or a generated `--dev`
/// secret, which cannot change while the process runs.
/// (`--dev` generates a secret only when neither `JWT_SECRET` nor `JWT_SECRET_FILE` is set.)
pub fn reloadable(cfg: &Config) -> bool {
    cfg.jwt_algorithm.min_secret_bytes().is_none() || cfg.jwt_secret_file.is_some()
}

/// The verifier the shards use: swappable when [`reloadable`], else fixed (no cost over a plain
/// verification).
pub fn verifier(cfg: &Config, auth: Authenticator) -> Verifier {
    if reloadable(cfg) {
        Verifier::reloadable(auth)
    } else {
        Verifier::fixed(auth)
    }
}

/// Reads a key file, naming its variable on failure.
fn read(
    path: &Path,
    var: &'static str,
    read: impl Fn(&Path) -> std::io::Result<Vec<u8>>,
) -> Result<Vec<u8>, StartError> {
    read(path).map_err(|source| StartError::KeyFile {
        var,
        path: path.display().to_string(),
        source,
    })
}

fn auth_config(cfg: &Config, key: KeySource) -> AuthConfig {
    AuthConfig {
        algorithm: cfg.jwt_algorithm,
        key,
        require_exp: cfg.jwt_require_exp,
        leeway_seconds: cfg.jwt_leeway.as_secs(),
    }
}

/// The JWT key as a [`Reload`] part.
pub struct JwtKeyReload {
    /// The configuration the gateway started with (the key files are re-read from it).
    cfg: Config,
    /// Whether `--dev` generated the secret (which then stays).
    dev_secret: bool,
    /// Where the verifier in force lives.
    shared: Arc<Shared>,
}

impl JwtKeyReload {
    /// The part for a gateway started with `cfg` (and a generated `--dev` secret or not).
    pub fn new(cfg: &Config, dev_secret: bool, shared: Arc<Shared>) -> Self {
        Self {
            cfg: cfg.clone(),
            dev_secret,
            shared,
        }
    }
}

impl Reload for JwtKeyReload {
    fn name(&self) -> &'static str {
        "JWT key"
    }

    fn reload(&self) -> Result<Outcome, String> {
        let alg: Algorithm = self.cfg.jwt_algorithm;
        if !reloadable(&self.cfg) {
            return Ok(Outcome::Fixed(if self.dev_secret {
                "the --dev secret is generated once per start"
            } else {
                "JWT_SECRET is read once at start; use JWT_SECRET_FILE to rotate it on SIGHUP"
            }));
        }
        let source = match alg.min_secret_bytes() {
            None => "JWT_PUBLIC_KEY_FILE",
            Some(_) => "JWT_SECRET_FILE",
        };
        let auth = authenticator(&self.cfg, None).map_err(|e| e.to_string())?;
        if !self.shared.auth.replace(auth) {
            return Err("the verifier in force was built as not reloadable".into());
        }
        Ok(Outcome::Applied(format!("{alg} key from {source}")))
    }
}
