//! Session-ticket keys from `TLS_TICKET_KEY_FILE`, so that every gateway process on a host (and
//! a restarted one) can resume the sessions any of them started: a reconnect storm after a
//! restart then costs resumed handshakes (no certificate, no signature), not full ones.
//!
//! # The file
//!
//! Text, one key per line: 64 hexadecimal digits (32 random bytes, `openssl rand -hex 32`).
//! Blank lines and lines starting with `#` are ignored; at most [`MAX_KEYS`] keys. The first key
//! encrypts new tickets; every key decrypts. The file is secret (anyone holding it can decrypt
//! recorded sessions resumed with its tickets): mode 0600, owned by the gateway's user.
//!
//! # Rotation and the resumption window
//!
//! A ticket is accepted while the key that made it is in the file and it is younger than
//! [`LIFETIME_SECS`] (12 hours; the lifetime each ticket announces to the client). To rotate:
//! put a new key on the first line and keep the previous one below it for 12 hours, then
//! remove it; SIGHUP every process after each change (`printf '%s\n' "$(openssl rand -hex 32)"
//! | cat - keys > keys.new && mv keys.new keys && pkill -HUP ...`). Rotating daily bounds how
//! long a stolen key can decrypt recorded traffic of resumed sessions.
//!
//! # Ticket format
//!
//! `key id (4 B) | issued at, Unix seconds (8 B, big-endian) | nonce (12 B) | AES-256-GCM
//! ciphertext of rustls's session state + tag (16 B)`. The key id is the first 4 bytes of
//! SHA-256 of the key; the id and the issue time are authenticated as associated data. Nonces
//! are random: with 2^32 tickets per key the chance of a repeat stays below 2^-32.

use std::{
    fmt, io,
    path::{Path, PathBuf},
    time::{SystemTime, UNIX_EPOCH},
};

use ring::{
    aead::{AES_256_GCM, Aad, LessSafeKey, NONCE_LEN, Nonce, UnboundKey},
    rand::{SecureRandom, SystemRandom},
};
use rustls::server::ProducesTickets;
use sha2::{Digest, Sha256};

/// How long a ticket may be used, in seconds (announced to clients, checked on decryption).
pub const LIFETIME_SECS: u32 = 12 * 60 * 60;
/// Keys a file may hold.
pub const MAX_KEYS: usize = 16;
/// Bytes before the ciphertext: key id, issue time, nonce.
const HEADER: usize = 4 + 8 + NONCE_LEN;

/// Why `TLS_TICKET_KEY_FILE` is unusable.
#[derive(Debug, thiserror::Error)]
pub enum TicketKeyError {
    /// Unreadable.
    #[error("cannot read '{path}': {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        source: io::Error,
    },
    /// A line that is not 64 hex digits (the key is not echoed).
    #[error("'{path}' line {line}: expected 64 hexadecimal digits (openssl rand -hex 32)")]
    BadLine {
        /// The file.
        path: PathBuf,
        /// 1-based line number.
        line: usize,
    },
    /// No key, or too many.
    #[error("'{path}' must hold 1 to {MAX_KEYS} keys, found {found}")]
    Count {
        /// The file.
        path: PathBuf,
        /// Keys found.
        found: usize,
    },
}

/// One key.
struct Key {
    /// First 4 bytes of its SHA-256.
    id: [u8; 4],
    /// The AEAD key.
    aead: LessSafeKey,
}

/// The keys of a `TLS_TICKET_KEY_FILE`, as rustls's ticket producer.
pub struct TicketKeys {
    /// The first encrypts; all decrypt.
    keys: Vec<Key>,
    /// Nonces.
    random: SystemRandom,
}

impl fmt::Debug for TicketKeys {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Never the keys.
        f.debug_struct("TicketKeys")
            .field("keys", &self.keys.len())
            .finish()
    }
}

impl TicketKeys {
    /// Reads and parses the key file.
    ///
    /// # Errors
    ///
    /// Unreadable, a malformed line, no key or more than [`MAX_KEYS`].
    pub fn load(path: &Path) -> Result<Self, TicketKeyError> {
        let text = std::fs::read_to_string(path).map_err(|source| TicketKeyError::Read {
            path: path.to_owned(),
            source,
        })?;
        Self::parse(&text).map_err(|line| match line {
            Some(line) => TicketKeyError::BadLine {
                path: path.to_owned(),
                line,
            },
            None => TicketKeyError::Count {
                path: path.to_owned(),
                found: key_lines(&text).count(),
            },
        })
    }

    /// Parses the file's text; `Err(Some(line))` for a bad line, `Err(None)` for a bad count.
    fn parse(text: &str) -> Result<Self, Option<usize>> {
        let mut keys = Vec::new();
        for (line, hex) in key_lines(text) {
            let bytes = decode_hex32(hex).ok_or(Some(line))?;
            let digest = Sha256::digest(bytes);
            let unbound = UnboundKey::new(&AES_256_GCM, &bytes).map_err(|_| Some(line))?;
            keys.push(Key {
                id: [digest[0], digest[1], digest[2], digest[3]],
                aead: LessSafeKey::new(unbound),
            });
        }
        if keys.is_empty() || keys.len() > MAX_KEYS {
            return Err(None);
        }
        Ok(Self {
            keys,
            random: SystemRandom::new(),
        })
    }

    /// Number of keys.
    #[cfg(test)]
    fn len(&self) -> usize {
        self.keys.len()
    }

    fn seal_at(&self, plain: &[u8], now: u64) -> Option<Vec<u8>> {
        let key = &self.keys[0];
        let mut nonce = [0u8; NONCE_LEN];
        self.random.fill(&mut nonce).ok()?;
        let mut ticket = Vec::with_capacity(HEADER + plain.len() + AES_256_GCM.tag_len());
        ticket.extend_from_slice(&key.id);
        ticket.extend_from_slice(&now.to_be_bytes());
        ticket.extend_from_slice(&nonce);
        let mut body = plain.to_vec();
        let aad = Aad::from(&ticket[..12]);
        key.aead
            .seal_in_place_append_tag(Nonce::assume_unique_for_key(nonce), aad, &mut body)
            .ok()?;
        ticket.extend_from_slice(&body);
        Some(ticket)
    }

    fn open_at(&self, ticket: &[u8], now: u64) -> Option<Vec<u8>> {
        if ticket.len() < HEADER + AES_256_GCM.tag_len() {
            return None;
        }
        let (header, sealed) = ticket.split_at(HEADER);
        let key = self.keys.iter().find(|k| k.id == header[..4])?;
        let issued = u64::from_be_bytes(header[4..12].try_into().ok()?);
        // Too old, or from the future beyond a minute of clock skew between processes.
        if now.saturating_sub(issued) > u64::from(LIFETIME_SECS) || issued > now + 60 {
            return None;
        }
        let nonce = Nonce::try_assume_unique_for_key(&header[12..]).ok()?;
        let mut body = sealed.to_vec();
        let plain = key
            .aead
            .open_in_place(nonce, Aad::from(&header[..12]), &mut body)
            .ok()?;
        let n = plain.len();
        body.truncate(n);
        Some(body)
    }
}

impl ProducesTickets for TicketKeys {
    fn enabled(&self) -> bool {
        true
    }

    fn lifetime(&self) -> u32 {
        LIFETIME_SECS
    }

    fn encrypt(&self, plain: &[u8]) -> Option<Vec<u8>> {
        self.seal_at(plain, unix_now())
    }

    fn decrypt(&self, cipher: &[u8]) -> Option<Vec<u8>> {
        self.open_at(cipher, unix_now())
    }
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// (1-based line number, trimmed text) of every line that should hold a key.
fn key_lines(text: &str) -> impl Iterator<Item = (usize, &str)> {
    text.lines()
        .enumerate()
        .map(|(i, l)| (i + 1, l.trim()))
        .filter(|(_, l)| !l.is_empty() && !l.starts_with('#'))
}

fn decode_hex32(hex: &str) -> Option<[u8; 32]> {
    let hex = hex.as_bytes();
    if hex.len() != 64 {
        return None;
    }
    let digit = |c: u8| (c as char).to_digit(16).map(|d| d as u8);
    let mut out = [0u8; 32];
    for (i, pair) in hex.chunks_exact(2).enumerate() {
        out[i] = (digit(pair[0])? << 4) | digit(pair[1])?;
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    const A: &str = "000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f";
    const B: &str = "ffeeddccbbaa99887766554433221100ffeeddccbbaa99887766554433221100";

    #[test]
    fn a_ticket_opens_with_any_listed_key_within_its_lifetime() {
        let old = TicketKeys::parse(A).unwrap();
        let rotated = TicketKeys::parse(&format!("# new first\n{B}\n\n{A}\n")).unwrap();
        assert_eq!(rotated.len(), 2);
        let t = old.seal_at(b"state", 1_000).unwrap();
        assert_eq!(rotated.open_at(&t, 1_000).as_deref(), Some(&b"state"[..]));
        let late = 1_000 + u64::from(LIFETIME_SECS) + 1;
        assert_eq!(rotated.open_at(&t, late), None, "expired");
        // Made with the new first key: the old process (without it) cannot open it.
        let new = rotated.seal_at(b"state", 1_000).unwrap();
        assert_eq!(old.open_at(&new, 1_000), None);
    }

    #[test]
    fn tampered_or_short_tickets_are_refused() {
        let keys = TicketKeys::parse(A).unwrap();
        let t = keys.seal_at(b"state", 50).unwrap();
        for i in [0, 5, 13, t.len() - 1] {
            let mut bad = t.clone();
            bad[i] ^= 1;
            assert_eq!(keys.open_at(&bad, 50), None, "byte {i}");
        }
        assert_eq!(keys.open_at(&t[..HEADER + 3], 50), None);
        assert_eq!(keys.open_at(&[], 50), None);
    }

    #[test]
    fn malformed_files_name_the_line() {
        assert_eq!(
            TicketKeys::parse(&format!("{A}\nnot-hex\n")).err(),
            Some(Some(2))
        );
        assert_eq!(TicketKeys::parse(&A[..62]).err(), Some(Some(1)));
        assert_eq!(TicketKeys::parse("# nothing\n").err(), Some(None));
        let many = format!("{A}\n").repeat(MAX_KEYS + 1);
        assert_eq!(TicketKeys::parse(&many).err(), Some(None));
    }
}
