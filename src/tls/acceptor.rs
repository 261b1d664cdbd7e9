//! The TLS server configuration in force, shared by every shard, and its reload on SIGHUP.
//!
//! Each handshake starts from the configuration loaded at that moment (one atomic load and an
//! `Arc` clone, nothing against a handshake's cost); a reload builds a new one from the files and
//! swaps it in, so new handshakes get the new certificate (and ticket keys) while established
//! sessions keep theirs. A file that fails to load leaves the configuration in force unchanged.
//!
//! What the configuration says: TLS 1.3 and 1.2 only (rustls has no 1.1 or 1.0: such a
//! ClientHello gets a `protocol_version` alert); ALPN `http/1.1` (a client offering only other
//! protocols is refused with `no_application_protocol`; one offering none is served); one
//! certificate whatever the SNI (no SNI check, so there is no "wrong SNI" refusal); session
//! tickets (from `TLS_TICKET_KEY_FILE`, else keys generated per process and rotated by rustls
//! every 6 hours); no server-side session cache (tickets resume TLS 1.3 and 1.2 without
//! shared state or a lock); no early data (0-RTT data can be replayed).

use std::{
    path::{Path, PathBuf},
    sync::Arc,
    time::{SystemTime, UNIX_EPOCH},
};

use arc_swap::ArcSwap;
use rustls::{
    ServerConfig,
    server::{NoServerSessionStorage, ProducesTickets},
    sign::SingleCertAndKey,
};

use super::{Credentials, TicketKeys, session::Session};
use crate::reload::{Outcome, Reload};

/// Where the certificate, key and ticket keys come from.
#[derive(Debug, Clone)]
pub struct Files {
    /// `TLS_CERT_FILE`.
    pub cert: PathBuf,
    /// `TLS_KEY_FILE`.
    pub key: PathBuf,
    /// `TLS_TICKET_KEY_FILE`, if set.
    pub tickets: Option<PathBuf>,
}

/// The server configuration every shard starts its handshakes from.
pub struct Acceptor {
    /// The files it is (re)built from.
    files: Files,
    /// The configuration in force.
    config: ArcSwap<ServerConfig>,
    /// Per-process ticket keys (no `TLS_TICKET_KEY_FILE`), kept across reloads so a reload
    /// does not end every session's resumption.
    own_tickets: Option<Arc<dyn ProducesTickets>>,
}

impl Acceptor {
    /// Loads the files and builds the first configuration; logs a warning when the
    /// certificate is expired or not yet valid.
    ///
    /// # Errors
    ///
    /// A file is unusable (one line, naming it).
    pub fn new(files: Files) -> Result<Self, String> {
        let own_tickets = match files.tickets {
            Some(_) => None,
            None => Some(
                rustls::crypto::ring::Ticketer::new()
                    .map_err(|e| format!("cannot create TLS session-ticket keys: {e}"))?,
            ),
        };
        let config = build(&files, own_tickets.clone())?;
        Ok(Self {
            files,
            config: ArcSwap::from_pointee(config),
            own_tickets,
        })
    }

    /// A session for a new connection, with the configuration in force.
    ///
    /// # Errors
    ///
    /// rustls refused to start a session (not expected with a configuration built here).
    pub fn session(&self) -> Result<Session, super::TlsError> {
        Session::new(self.config.load_full())
    }

    /// The configuration in force (tests, benchmarks).
    pub fn config(&self) -> Arc<ServerConfig> {
        self.config.load_full()
    }

    /// Rebuilds the configuration from the files and swaps it in; what is now served.
    ///
    /// # Errors
    ///
    /// A file is unusable: the configuration in force stays.
    pub fn reload(&self) -> Result<String, String> {
        let config = build(&self.files, self.own_tickets.clone())?;
        self.config.store(Arc::new(config));
        Ok(describe(&self.files))
    }
}

/// Builds a configuration from the files.
fn build(
    files: &Files,
    own_tickets: Option<Arc<dyn ProducesTickets>>,
) -> Result<ServerConfig, String> {
    let credentials = Credentials::load(&files.cert, &files.key).map_err(|e| e.to_string())?;
    warn_validity(&credentials, &files.cert);
    let ticketer: Arc<dyn ProducesTickets> = match (&files.tickets, own_tickets) {
        (Some(path), _) => Arc::new(TicketKeys::load(path).map_err(|e| e.to_string())?),
        (None, Some(own)) => own,
        (None, None) => unreachable!("per-process ticket keys exist without a key file"),
    };
    let mut config = ServerConfig::builder_with_provider(Credentials::provider())
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .map_err(|e| format!("TLS configuration: {e}"))?
        .with_no_client_auth()
        .with_cert_resolver(Arc::new(SingleCertAndKey::from(credentials.key)));
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    config.ticketer = ticketer;
    config.session_storage = Arc::new(NoServerSessionStorage {});
    config.max_early_data_size = 0;
    Ok(config)
}

/// Logs a warning when the certificate is outside its validity period: clients will refuse it.
fn warn_validity(credentials: &Credentials, cert: &Path) {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64);
    match credentials.validity {
        Some(validity) => {
            if let Some(problem) = validity.problem(now) {
                tracing::warn!(
                    file = %cert.display(), not_before = validity.not_before,
                    not_after = validity.not_after,
                    "the TLS certificate is {problem}: clients will refuse it"
                );
            }
        }
        None => {
            tracing::warn!(file = %cert.display(), "cannot read the TLS certificate's validity dates")
        }
    }
}

fn describe(files: &Files) -> String {
    let tickets = match &files.tickets {
        Some(path) => format!("ticket keys from {}", path.display()),
        None => "per-process ticket keys".into(),
    };
    format!("certificate {} ({tickets})", files.cert.display())
}

/// The TLS files as a SIGHUP part.
pub struct TlsReload(pub Arc<Acceptor>);

impl Reload for TlsReload {
    fn name(&self) -> &'static str {
        "TLS certificate"
    }

    fn reload(&self) -> Result<Outcome, String> {
        self.0.reload().map(Outcome::Applied)
    }
}
