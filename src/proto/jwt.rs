//! JWT verification: turns the bearer token of an upgrade request into a user id.
//!
//! An [`Authenticator`] is built once from an [`AuthConfig`] at startup, where every key problem is
//! reported as an [`AuthSetupError`] before any port is bound. [`Authenticator::verify`] is then a
//! pure function of the token and the clock: it checks the signature with the one configured
//! [`Algorithm`] (a token whose header names any other algorithm, `none` included, is refused),
//! checks `exp` and `nbf` with the configured leeway, and returns the user id from the `user_id`
//! claim, or from `sub` when `user_id` is absent or null. Audience and issuer are not checked.
//!
//! The user id becomes part of a Redis channel name, so it must be 1 to 256 bytes without
//! whitespace or control characters. Errors carry static messages only: no error or log line
//! built from them can leak a token.

use std::{fmt, str::FromStr};

use base64::{Engine as _, engine::general_purpose::URL_SAFE_NO_PAD};
use jsonwebtoken::{
    DecodingKey, EncodingKey, Header, Validation,
    errors::ErrorKind,
    jwk::{AlgorithmParameters, Jwk},
};
use serde::{Deserialize, Serialize};

use super::user::{MAX_USER_ID_BYTES, UserId};

/// Largest accepted clock-skew leeway. More than a day is a configuration mistake, and bounding
/// it keeps `now - leeway` far from underflow.
const MAX_LEEWAY_SECONDS: u64 = 86_400;

/// Smallest RSA modulus accepted for RS256 (RFC 7518 §3.3).
const MIN_RSA_BITS: usize = 2048;

/// The signature algorithms the gateway can be configured with.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Algorithm {
    /// HMAC with SHA-256 and a shared secret of at least 32 bytes.
    HS256,
    /// HMAC with SHA-384 and a shared secret of at least 48 bytes.
    HS384,
    /// HMAC with SHA-512 and a shared secret of at least 64 bytes.
    HS512,
    /// RSASSA-PKCS1-v1_5 with SHA-256 and an RSA public key of at least 2048 bits.
    RS256,
    /// ECDSA with P-256 and SHA-256 and a P-256 public key.
    ES256,
}

impl Algorithm {
    /// Every supported algorithm.
    pub const ALL: [Algorithm; 5] = [
        Algorithm::HS256,
        Algorithm::HS384,
        Algorithm::HS512,
        Algorithm::RS256,
        Algorithm::ES256,
    ];

    /// The JOSE name, as it appears in a token header's `alg`.
    pub fn as_str(self) -> &'static str {
        match self {
            Algorithm::HS256 => "HS256",
            Algorithm::HS384 => "HS384",
            Algorithm::HS512 => "HS512",
            Algorithm::RS256 => "RS256",
            Algorithm::ES256 => "ES256",
        }
    }

    /// For HMAC algorithms, the shortest secret RFC 7518 §3.2 allows: the hash output size.
    /// `None` for the public-key algorithms.
    pub fn min_secret_bytes(self) -> Option<usize> {
        match self {
            Algorithm::HS256 => Some(32),
            Algorithm::HS384 => Some(48),
            Algorithm::HS512 => Some(64),
            Algorithm::RS256 | Algorithm::ES256 => None,
        }
    }

    fn to_jwt(self) -> jsonwebtoken::Algorithm {
        match self {
            Algorithm::HS256 => jsonwebtoken::Algorithm::HS256,
            Algorithm::HS384 => jsonwebtoken::Algorithm::HS384,
            Algorithm::HS512 => jsonwebtoken::Algorithm::HS512,
            Algorithm::RS256 => jsonwebtoken::Algorithm::RS256,
            Algorithm::ES256 => jsonwebtoken::Algorithm::ES256,
        }
    }
}

impl fmt::Display for Algorithm {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Algorithm {
    type Err = UnknownAlgorithm;

    /// Parses a JOSE name, ignoring case (`hs256` is `HS256`).
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Algorithm::ALL
            .into_iter()
            .find(|a| a.as_str().eq_ignore_ascii_case(s.trim()))
            .ok_or_else(|| UnknownAlgorithm(s.to_owned()))
    }
}

/// A configured algorithm name that is not one of [`Algorithm::ALL`].
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("unknown JWT algorithm `{0}`: expected one of HS256, HS384, HS512, RS256, ES256")]
pub struct UnknownAlgorithm(pub String);

/// The key tokens are verified with.
#[derive(Clone, PartialEq, Eq)]
pub enum KeySource {
    /// The shared secret for HS256, HS384 or HS512, as raw bytes.
    Secret(Vec<u8>),
    /// A PEM `PUBLIC KEY` block (or `RSA PUBLIC KEY` for RS256) for RS256 or ES256.
    PublicKeyPem(Vec<u8>),
}

impl fmt::Debug for KeySource {
    /// Never prints the secret, only its length.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            KeySource::Secret(s) => write!(f, "Secret(<{} bytes redacted>)", s.len()),
            KeySource::PublicKeyPem(p) => write!(f, "PublicKeyPem(<{} bytes>)", p.len()),
        }
    }
}

/// How tokens are verified.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AuthConfig {
    /// The only algorithm accepted; tokens whose header names another are refused.
    pub algorithm: Algorithm,
    /// The secret or public key matching `algorithm`.
    pub key: KeySource,
    /// Refuse tokens without `exp`. When false, `exp` is still checked if present. The existing
    /// API always issues `exp`, so `true` is the safe setting.
    pub require_exp: bool,
    /// Clock skew allowed when checking `exp` and `nbf`, in seconds; at most one day.
    pub leeway_seconds: u64,
}

/// A configuration that cannot verify tokens. Messages name the problem and never include key
/// material.
#[derive(Debug, thiserror::Error)]
pub enum AuthSetupError {
    /// An HMAC algorithm configured with a public key, or RS256/ES256 with a secret.
    #[error("{algorithm} needs {expected}, but {given} was configured")]
    KeyMismatch {
        /// The configured algorithm.
        algorithm: Algorithm,
        /// What the algorithm needs, e.g. "a shared secret".
        expected: &'static str,
        /// What was given instead.
        given: &'static str,
    },
    /// The HMAC secret is shorter than the hash output.
    #[error(
        "{algorithm} secret is {len} bytes; RFC 7518 §3.2 requires at least {min} bytes \
         (the hash output size)"
    )]
    SecretTooShort {
        /// The configured algorithm.
        algorithm: Algorithm,
        /// Length of the configured secret.
        len: usize,
        /// Shortest allowed secret.
        min: usize,
    },
    /// The PEM's first block is not a public key (for example a private key or a certificate).
    #[error(
        "{algorithm} key must be a PEM `PUBLIC KEY` block, but the first block is `{label}`; \
         the gateway only needs the public key"
    )]
    NotAPublicKey {
        /// The configured algorithm.
        algorithm: Algorithm,
        /// The label of the first PEM block, or "none" if there is no PEM block.
        label: String,
    },
    /// The PEM could not be read as a key for the algorithm.
    #[error("{algorithm} public key could not be parsed")]
    InvalidPublicKey {
        /// The configured algorithm.
        algorithm: Algorithm,
        /// What `jsonwebtoken` reported.
        #[source]
        source: jsonwebtoken::errors::Error,
    },
    /// An ES256 key that is not a valid P-256 point (for example a P-384 key).
    #[error("ES256 needs a P-256 public key; the configured key is not one")]
    WrongCurve,
    /// An RS256 key with a modulus under 2048 bits.
    #[error("RS256 public key has {bits} bits; RFC 7518 §3.3 requires at least {MIN_RSA_BITS}")]
    RsaKeyTooSmall {
        /// Size of the configured modulus.
        bits: usize,
    },
    /// `leeway_seconds` is over one day.
    #[error("JWT leeway of {0} seconds is over the maximum of {MAX_LEEWAY_SECONDS}")]
    LeewayTooLarge(u64),
}

/// Why a token was refused. Messages are static and never contain the token.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    /// The request carried no token.
    #[error("no token in the request")]
    Missing,
    /// The token is not a well-formed JWT: not three base64url parts, header or claims not JSON,
    /// `exp`/`nbf` not numbers, or `exp` absent when required.
    #[error("malformed token")]
    Malformed,
    /// The signature does not match the configured key.
    #[error("token signature does not verify")]
    BadSignature,
    /// The token header names an algorithm other than the configured one.
    #[error("token is not signed with the configured algorithm")]
    WrongAlgorithm,
    /// `exp` is in the past, beyond the leeway.
    #[error("token has expired")]
    Expired,
    /// `nbf` is in the future, beyond the leeway.
    #[error("token is not valid yet")]
    NotYetValid,
    /// Neither `user_id` nor `sub` is present.
    #[error("token has neither a user_id nor a sub claim")]
    MissingUserId,
    /// The user id is not a string or integer, is empty or too long, or has whitespace or control
    /// characters.
    #[error(
        "token user id must be a string or integer of 1 to {MAX_USER_ID_BYTES} bytes without \
         whitespace or control characters"
    )]
    InvalidUserId,
}

impl AuthError {
    /// The `error` label of the 401 refusal's body; the same grouping the existing deployment
    /// reports as the `error_type` of `websocket_connection_errors_total`.
    pub fn kind(&self) -> &'static str {
        match self {
            AuthError::Missing => "missing_token",
            AuthError::MissingUserId | AuthError::InvalidUserId => "invalid_token",
            AuthError::Malformed
            | AuthError::BadSignature
            | AuthError::WrongAlgorithm
            | AuthError::Expired
            | AuthError::NotYetValid => "jwt_verification_failed",
        }
    }
}

/// Verifies tokens against one algorithm and key. Build it once and share it: verifying does not
/// mutate it.
#[derive(Debug)]
pub struct Authenticator {
    /// The configured algorithm, to tell a wrong `alg` from garbage when a header fails to parse.
    algorithm: Algorithm,
    /// The secret or public key, parsed once at startup (its `Debug` redacts the bytes).
    key: DecodingKey,
    /// The rules `jsonwebtoken` applies: one algorithm, exp/nbf with leeway, no aud/iss.
    validation: Validation,
}

impl Authenticator {
    /// Checks the configuration and prepares the key.
    ///
    /// # Errors
    ///
    /// An [`AuthSetupError`] when the key does not suit the algorithm: the wrong kind of key, an
    /// HMAC secret shorter than the hash output, a PEM that is not a parseable public key (or an
    /// RSA key under 2048 bits, or an EC key not on P-256), or a leeway over one day.
    pub fn new(cfg: &AuthConfig) -> Result<Self, AuthSetupError> {
        let algorithm = cfg.algorithm;
        if cfg.leeway_seconds > MAX_LEEWAY_SECONDS {
            return Err(AuthSetupError::LeewayTooLarge(cfg.leeway_seconds));
        }
        let key = match (&cfg.key, algorithm.min_secret_bytes()) {
            (KeySource::Secret(secret), Some(min)) if secret.len() < min => {
                return Err(AuthSetupError::SecretTooShort {
                    algorithm,
                    len: secret.len(),
                    min,
                });
            }
            (KeySource::Secret(secret), Some(_)) => DecodingKey::from_secret(secret),
            (KeySource::PublicKeyPem(_), Some(_)) => {
                return Err(AuthSetupError::KeyMismatch {
                    algorithm,
                    expected: "a shared secret",
                    given: "a PEM public key",
                });
            }
            (KeySource::Secret(_), None) => {
                return Err(AuthSetupError::KeyMismatch {
                    algorithm,
                    expected: "a PEM public key",
                    given: "a shared secret",
                });
            }
            (KeySource::PublicKeyPem(pem), None) => public_key(algorithm, pem)?,
        };

        let mut validation = Validation::new(algorithm.to_jwt());
        validation.leeway = cfg.leeway_seconds;
        validation.validate_exp = true;
        validation.validate_nbf = true;
        validation.validate_aud = false;
        validation.required_spec_claims.clear();
        if cfg.require_exp {
            validation.required_spec_claims.insert("exp".to_owned());
        }
        Ok(Self {
            algorithm,
            key,
            validation,
        })
    }

    /// Verifies `token` and returns its user id.
    ///
    /// # Errors
    ///
    /// [`AuthError::Missing`] for an empty token, otherwise the first check the token fails.
    pub fn verify(&self, token: &str) -> Result<UserId, AuthError> {
        self.verify_claims(token).map(|v| v.user)
    }

    /// [`Self::verify`], also returning when the token expires.
    ///
    /// # Errors
    ///
    /// As [`Self::verify`].
    pub fn verify_claims(&self, token: &str) -> Result<Verified, AuthError> {
        if token.is_empty() {
            return Err(AuthError::Missing);
        }
        let data = jsonwebtoken::decode::<Claims>(token, &self.key, &self.validation)
            .map_err(|e| self.classify(token, e.kind()))?;
        let expires_at = data.claims.exp.map(|exp| exp.max(0.0) as u64);
        let claim = data
            .claims
            .user_id
            .or(data.claims.sub)
            .ok_or(AuthError::MissingUserId)?;
        let id = match claim {
            UserIdClaim::Text(s) => s,
            UserIdClaim::Signed(n) => n.to_string(),
            UserIdClaim::Unsigned(n) => n.to_string(),
            UserIdClaim::Other(_) => return Err(AuthError::InvalidUserId),
        };
        let user = UserId::new(id).map_err(|_| AuthError::InvalidUserId)?;
        Ok(Verified { user, expires_at })
    }

    /// Maps a `jsonwebtoken` failure to our error.
    fn classify(&self, token: &str, kind: &ErrorKind) -> AuthError {
        match kind {
            ErrorKind::InvalidSignature => AuthError::BadSignature,
            ErrorKind::InvalidAlgorithm => AuthError::WrongAlgorithm,
            ErrorKind::ExpiredSignature => AuthError::Expired,
            ErrorKind::ImmatureSignature => AuthError::NotYetValid,
            // A missing `exp` (the only required claim) and non-numeric `exp`/`nbf`.
            ErrorKind::MissingRequiredClaim(_) | ErrorKind::InvalidClaimFormat(_) => {
                AuthError::Malformed
            }
            // An `alg` that `jsonwebtoken` does not know (such as "none") fails header parsing;
            // report it as the algorithm problem it is.
            _ if self.header_names_other_alg(token) => AuthError::WrongAlgorithm,
            _ => AuthError::Malformed,
        }
    }

    /// Whether the token's header decodes and has an `alg` other than the configured one. Only
    /// called on the failure path.
    fn header_names_other_alg(&self, token: &str) -> bool {
        #[derive(Deserialize)]
        struct RawHeader {
            alg: String,
        }
        let Some((header, _)) = token.split_once('.') else {
            return false;
        };
        URL_SAFE_NO_PAD
            .decode(header)
            .ok()
            .and_then(|json| serde_json::from_slice::<RawHeader>(&json).ok())
            .is_some_and(|h| h.alg != self.algorithm.as_str())
    }
}

/// Parses and checks the PEM public key for RS256 or ES256.
fn public_key(algorithm: Algorithm, pem: &[u8]) -> Result<DecodingKey, AuthSetupError> {
    let label = pem_label(pem);
    let public = matches!(
        (algorithm, label),
        (_, Some("PUBLIC KEY")) | (Algorithm::RS256, Some("RSA PUBLIC KEY"))
    );
    if !public {
        return Err(AuthSetupError::NotAPublicKey {
            algorithm,
            label: label.unwrap_or("none").to_owned(),
        });
    }
    let invalid = |source| AuthSetupError::InvalidPublicKey { algorithm, source };
    if algorithm == Algorithm::RS256 {
        let key = DecodingKey::from_rsa_pem(pem).map_err(invalid)?;
        // Building the JWK parses the DER, so a broken key fails here rather than on every token.
        let jwk = Jwk::from_decoding_key(&key, None).map_err(invalid)?;
        let AlgorithmParameters::RSA(rsa) = jwk.algorithm else {
            return Err(AuthSetupError::RsaKeyTooSmall { bits: 0 });
        };
        let modulus = URL_SAFE_NO_PAD.decode(rsa.n).unwrap_or_default();
        let bits = match modulus.iter().position(|&b| b != 0) {
            Some(i) => (modulus.len() - i) * 8 - modulus[i].leading_zeros() as usize,
            None => 0,
        };
        if bits < MIN_RSA_BITS {
            return Err(AuthSetupError::RsaKeyTooSmall { bits });
        }
        Ok(key)
    } else {
        let key = DecodingKey::from_ec_pem(pem).map_err(invalid)?;
        // Building a verifier parses the point on P-256; the empty signature is then just false.
        jsonwebtoken::crypto::verify("", b"", &key, jsonwebtoken::Algorithm::ES256)
            .map_err(|_| AuthSetupError::WrongCurve)?;
        Ok(key)
    }
}

/// The label of the first `-----BEGIN <label>-----` line, if any.
fn pem_label(pem: &[u8]) -> Option<&str> {
    let text = std::str::from_utf8(pem).ok()?;
    let rest = &text[text.find("-----BEGIN ")? + "-----BEGIN ".len()..];
    Some(&rest[..rest.find("-----")?])
}

/// A token that verified.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verified {
    /// Whose it is.
    pub user: UserId,
    /// Its `exp` claim (seconds since the epoch), when it has one.
    pub expires_at: Option<u64>,
}

/// The claims we read; `exp` and `nbf` are checked by `jsonwebtoken` itself.
#[derive(Deserialize)]
struct Claims {
    /// Expiry (seconds since the epoch); already checked by `jsonwebtoken`, kept so a
    /// connection can be closed when it passes.
    exp: Option<f64>,
    /// Preferred source of the user id.
    user_id: Option<UserIdClaim>,
    /// Used when `user_id` is absent: the existing API issues only `sub`.
    sub: Option<UserIdClaim>,
}

/// The JSON shapes a user id claim may take.
#[derive(Deserialize)]
#[serde(untagged)]
enum UserIdClaim {
    Text(String),
    Signed(i64),
    Unsigned(u64),
    /// Anything else (float, bool, object, array): present but invalid.
    Other(serde::de::IgnoredAny),
}

/// Claims written by [`issue_hs256`], the same shape the existing API issues plus `user_id`.
#[derive(Serialize)]
struct IssuedClaims<'a> {
    sub: &'a str,
    user_id: &'a str,
    iat: u64,
    exp: u64,
}

/// Signs an HS256 token for `user_id` valid for `ttl_seconds` from now, with claims `sub`,
/// `user_id`, `iat` and `exp`. For `--dev` mode and tests; it does not check the secret length.
///
/// # Panics
///
/// Never in practice: HMAC signing accepts any key and these claims always serialize.
pub fn issue_hs256(secret: &[u8], user_id: &str, ttl_seconds: u64) -> String {
    let now = jsonwebtoken::get_current_timestamp();
    let claims = IssuedClaims {
        sub: user_id,
        user_id,
        iat: now,
        exp: now.saturating_add(ttl_seconds),
    };
    let header = Header::new(jsonwebtoken::Algorithm::HS256);
    jsonwebtoken::encode(&header, &claims, &EncodingKey::from_secret(secret))
        .expect("HMAC signing of serializable claims cannot fail")
}

#[cfg(test)]
mod tests {
    use serde_json::{Value, json};

    use super::*;

    const SECRET: &[u8] = b"0123456789abcdef0123456789abcdef";

    // Key pairs generated with `openssl genpkey` for these tests only; they protect nothing.
    const RSA_PRIVATE: &str = "-----BEGIN PRIVATE KEY-----
MIIEvgIBADANBgkqhkiG9w0BAQEFAASCBKgwggSkAgEAAoIBAQC0ANJ99A1i3bPS
DqbT77X2a1ZTdNgcwitBYj6mKe5nLF1D8ISu4/C5pNbrmi6zieA6tzVtb0uGBQCz
mNIdh4ccZALMBDUBDS8+kRnd6YX6d8ttK5U9Sx7aMqOwdPzk5ligu+Tv0MHWS9XT
LBH6s8AmcWK2SCPg1zHQSj0c5h1x7qoJbQ4utmQ8Jgjz5uqSRQodpxDcIzUJfR0z
8CifXUmSQb8PEjNAj4rmMHa8KsHP1gUQquc/4fK6CafhiZ1rFjPV1M1inyNvBIop
sRt0QxAvHtdnONtUlN5GQnnC9TJxWsHXcwqssfdMgTBd34ojWQQ9aw67dFW6l1JB
FHPGmXbvAgMBAAECggEAO4x+Fl8Twp5Xq+le9YQ67W+rGmbwS+tMhg/ra+s5THaX
0C8UpgsQi0nmNAFI6+pz/Ni5Wx/Tm12yUrf+4vgAEbtgVYAazONAuvEj3o8v3KGe
8dnWQHXGmibgkjLRqyQtM9eVMGUeizeBYKAWvpqSueUO5ADPpcVrXF4DA7l5CkR9
gaxWmSzDZNAsGPQ3hkweR8lG1+rwrcojXZv6H526JQP+FXlpm8dJYEkRt+PLzsL2
b2ayaECdhlGHb0JLEZPh5pzvEaYOaw59Zjhobpgc1engqu9vF/HhMMYS8wj1za3b
NWXDLSWLpWyaB2ZCFWykeL36537Kdxk2jaKCnD2ymQKBgQDW7V1w8jSXBHmCpUxO
vbPrNVbLyl8Km+v78aVBS16D4HSgn1IKNHJda2lvY3mNQvVVxjyp0KyaTrfGUgws
N1OrhlvdssbS4d/B6PmvTujMOAcHb9PgS15dbQv0B59B3zzgh0qrG915MX4J2Eip
W8I0SV+OTzt01dBps/zImcwrmwKBgQDWZuk5feGdBiJsn8P3Cat05C+mXIvTI0ac
SPi85YBvHNXU6sSTTSnDQH1xoHzsxvxG1i76LddlKQ4byUGAyipTwsmAy4tIAFbm
ZqUKyt1fKGGXTdYk4Kd6ARJ9K4VBLGwPNMa6zc7Brjzub5OgEOrZGYFJT6nLdtco
5HS4o3npPQKBgAEPLG25E99Gq16kd+rPboqTOblJZwyDVjdoqnrW50FZItoDzwCz
33hsZhmhcODsWo8wqe3gVGlyR9+XWe4B28y1ndBK6EXzzQmEn25owib3g7laqL2r
QWzOc8ehHfzSH9evcwPC4GWPg+KCiWEkTaG6Vtk5tL5Pq3ZJ584JTANPAoGBAJ/A
jocIBNO7fmrxoFKyIc83N0n+KzFnV3Wb6brWRpyEH9BGHbKkDDowE0hXDL5ghhlB
/j7raVM3BAwwKV6NRHyk5v/Qqjc8CYQjd1ZTUh9VN2JF3QodWqzNn7kkdGXbc6jg
6jLGpwgpi70d5iGeeV7KYkr90MaKBkex8kahiHUBAoGBAIbwVWND542yaTJlmy8y
LNScFkNJVU59t5DTqR8F4zXQdHqe1CFRZ2FlPzF+swha3raAy/74eA1DouZbsIAd
+yDZTa3CEVt4BUUA+Bu7eIithrYcqfmpbUHuEpR/2AhlErzIzNj5qvmKB4rXPiLy
fkNdsTebvjg4rQldMzjKaRU+
-----END PRIVATE KEY-----
";
    const RSA_PUBLIC: &str = "-----BEGIN PUBLIC KEY-----
MIIBIjANBgkqhkiG9w0BAQEFAAOCAQ8AMIIBCgKCAQEAtADSffQNYt2z0g6m0++1
9mtWU3TYHMIrQWI+pinuZyxdQ/CEruPwuaTW65ous4ngOrc1bW9LhgUAs5jSHYeH
HGQCzAQ1AQ0vPpEZ3emF+nfLbSuVPUse2jKjsHT85OZYoLvk79DB1kvV0ywR+rPA
JnFitkgj4Ncx0Eo9HOYdce6qCW0OLrZkPCYI8+bqkkUKHacQ3CM1CX0dM/Aon11J
kkG/DxIzQI+K5jB2vCrBz9YFEKrnP+Hyugmn4YmdaxYz1dTNYp8jbwSKKbEbdEMQ
Lx7XZzjbVJTeRkJ5wvUycVrB13MKrLH3TIEwXd+KI1kEPWsOu3RVupdSQRRzxpl2
7wIDAQAB
-----END PUBLIC KEY-----
";
    const RSA_1024_PUBLIC: &str = "-----BEGIN PUBLIC KEY-----
MIGfMA0GCSqGSIb3DQEBAQUAA4GNADCBiQKBgQDNAtn1M8Vp0qab9V+J3N/WrbBL
BdMRYYPMDCGdm5b0/8hZbb8DmEKn0g4UFkaLv5XKGyNP6u3F6i+QgKLK7dtfTVrL
K4AMTzJFTAcBL6cvHa/bsaNNK6rRqEnAAhu0ilF76fa0bIt8We4ZwEn0566EQ5H8
CT0xE7AfywIqpO3DsQIDAQAB
-----END PUBLIC KEY-----
";
    const EC_PRIVATE: &str = "-----BEGIN PRIVATE KEY-----
MIGHAgEAMBMGByqGSM49AgEGCCqGSM49AwEHBG0wawIBAQQgLtr/b4oj4g8kC/ud
LMSVGhfg/KdELOXsARJiJ1MEliyhRANCAAS2gsjduSmq0THc2Rk2LCOhvqECpDuC
ewkDivXGsYNXDYw7K3qU1C+SigKjk1NI8fIxI2cH58kUAS8WIa6+cGAF
-----END PRIVATE KEY-----
";
    const EC_PUBLIC: &str = "-----BEGIN PUBLIC KEY-----
MFkwEwYHKoZIzj0CAQYIKoZIzj0DAQcDQgAEtoLI3bkpqtEx3NkZNiwjob6hAqQ7
gnsJA4r1xrGDVw2MOyt6lNQvkooCo5NTSPHyMSNnB+fJFAEvFiGuvnBgBQ==
-----END PUBLIC KEY-----
";
    const EC_P384_PUBLIC: &str = "-----BEGIN PUBLIC KEY-----
MHYwEAYHKoZIzj0CAQYFK4EEACIDYgAEnZTRHp+WnzsoY0uFEUkJRBZ4gF88AY90
4BNl5Y00dUQcda5+A+IcfJsR/pS8WB+3JUaLnBbTbFm4Wq7RChVH7tRYaLRI0wpr
FsFBXskXuLomO1FaqEsh3XoTwp9dqYL7
-----END PUBLIC KEY-----
";

    fn now() -> u64 {
        jsonwebtoken::get_current_timestamp()
    }

    fn config(algorithm: Algorithm, key: KeySource) -> AuthConfig {
        AuthConfig {
            algorithm,
            key,
            require_exp: true,
            leeway_seconds: 0,
        }
    }

    fn hs256() -> Authenticator {
        Authenticator::new(&config(
            Algorithm::HS256,
            KeySource::Secret(SECRET.to_vec()),
        ))
        .unwrap()
    }

    fn sign(alg: jsonwebtoken::Algorithm, key: &EncodingKey, claims: &Value) -> String {
        jsonwebtoken::encode(&Header::new(alg), claims, key).unwrap()
    }

    fn sign_hs256(claims: Value) -> String {
        sign(
            jsonwebtoken::Algorithm::HS256,
            &EncodingKey::from_secret(SECRET),
            &claims,
        )
    }

    fn b64(json: &Value) -> String {
        URL_SAFE_NO_PAD.encode(serde_json::to_vec(json).unwrap())
    }

    #[test]
    fn valid_hs256_with_user_id() {
        let token = sign_hs256(json!({"user_id": "alice", "sub": "ignored", "exp": now() + 60}));
        assert_eq!(hs256().verify(&token).as_deref(), Ok("alice"));
    }

    #[test]
    fn sub_is_used_without_user_id() {
        let token = sign_hs256(json!({"sub": "bob", "iat": now(), "exp": now() + 60}));
        assert_eq!(hs256().verify(&token).as_deref(), Ok("bob"));
    }

    #[test]
    fn integer_user_ids_become_decimal() {
        let auth = hs256();
        let exp = now() + 60;
        for (id, want) in [
            (json!(42), "42"),
            (json!(-7), "-7"),
            (json!(u64::MAX), "18446744073709551615"),
        ] {
            let token = sign_hs256(json!({"user_id": id, "exp": exp}));
            assert_eq!(auth.verify(&token).as_deref(), Ok(want));
        }
        let token = sign_hs256(json!({"sub": 1234, "exp": exp}));
        assert_eq!(auth.verify(&token).as_deref(), Ok("1234"));
    }

    #[test]
    fn issued_tokens_verify() {
        let token = issue_hs256(SECRET, "carol", 300);
        assert_eq!(hs256().verify(&token).as_deref(), Ok("carol"));
        let claims: Value = jsonwebtoken::dangerous::insecure_decode_claims(&token).unwrap();
        assert_eq!(claims["sub"], "carol");
        assert_eq!(
            claims["exp"].as_u64(),
            claims["iat"].as_u64().map(|iat| iat + 300)
        );
    }

    #[test]
    fn expired_token_is_refused() {
        let token = sign_hs256(json!({"sub": "a", "exp": now() - 10}));
        let err = hs256().verify(&token).unwrap_err();
        assert_eq!(err, AuthError::Expired);
        assert_eq!(err.kind(), "jwt_verification_failed");
    }

    #[test]
    fn leeway_admits_recently_expired_token() {
        let cfg = AuthConfig {
            leeway_seconds: 60,
            ..config(Algorithm::HS256, KeySource::Secret(SECRET.to_vec()))
        };
        let auth = Authenticator::new(&cfg).unwrap();
        let token = sign_hs256(json!({"sub": "a", "exp": now() - 10}));
        assert_eq!(auth.verify(&token).as_deref(), Ok("a"));
        let token = sign_hs256(json!({"sub": "a", "exp": now() - 120}));
        assert_eq!(auth.verify(&token), Err(AuthError::Expired));
    }

    #[test]
    fn missing_exp_is_refused_only_when_required() {
        let token = sign_hs256(json!({"sub": "a"}));
        assert_eq!(hs256().verify(&token), Err(AuthError::Malformed));

        let cfg = AuthConfig {
            require_exp: false,
            ..config(Algorithm::HS256, KeySource::Secret(SECRET.to_vec()))
        };
        let auth = Authenticator::new(&cfg).unwrap();
        assert_eq!(auth.verify(&token).as_deref(), Ok("a"));
        // Still checked when present.
        let token = sign_hs256(json!({"sub": "a", "exp": now() - 10}));
        assert_eq!(auth.verify(&token), Err(AuthError::Expired));
    }

    #[test]
    fn future_nbf_is_refused() {
        let token = sign_hs256(json!({"sub": "a", "exp": now() + 7200, "nbf": now() + 3600}));
        assert_eq!(hs256().verify(&token), Err(AuthError::NotYetValid));
        let token = sign_hs256(json!({"sub": "a", "exp": now() + 7200, "nbf": now() - 1}));
        assert_eq!(hs256().verify(&token).as_deref(), Ok("a"));
    }

    #[test]
    fn wrong_secret_is_bad_signature() {
        let other = EncodingKey::from_secret(b"another secret that is long enough!!");
        let claims = json!({"sub": "a", "exp": now() + 60});
        let token = sign(jsonwebtoken::Algorithm::HS256, &other, &claims);
        let err = hs256().verify(&token).unwrap_err();
        assert_eq!(err, AuthError::BadSignature);
    }

    #[test]
    fn other_hmac_algorithm_is_refused() {
        let claims = json!({"sub": "a", "exp": now() + 60});
        let token = sign(
            jsonwebtoken::Algorithm::HS512,
            &EncodingKey::from_secret(SECRET),
            &claims,
        );
        let err = hs256().verify(&token).unwrap_err();
        assert_eq!(err, AuthError::WrongAlgorithm);
        assert_eq!(err.kind(), "jwt_verification_failed");
    }

    #[test]
    fn alg_none_is_refused() {
        let claims = b64(&json!({"sub": "a", "exp": now() + 60}));
        for alg in ["none", "None", "NONE"] {
            let header = b64(&json!({"alg": alg, "typ": "JWT"}));
            for token in [format!("{header}.{claims}."), format!("{header}.{claims}")] {
                assert_eq!(
                    hs256().verify(&token),
                    Err(AuthError::WrongAlgorithm),
                    "{token}"
                );
            }
        }
    }

    #[test]
    fn garbage_is_malformed() {
        let auth = hs256();
        // Correctly signed, but the claims are not JSON.
        let message = format!(
            "{}.{}",
            b64(&json!({"alg": "HS256"})),
            URL_SAFE_NO_PAD.encode("not json")
        );
        let key = EncodingKey::from_secret(SECRET);
        let signature =
            jsonwebtoken::crypto::sign(message.as_bytes(), &key, jsonwebtoken::Algorithm::HS256)
                .unwrap();
        let signed_garbage = format!("{message}.{signature}");
        for token in ["garbage", "a.b.c", "....", "\u{1}\u{2}", &signed_garbage] {
            let err = auth.verify(token).unwrap_err();
            assert_eq!(err, AuthError::Malformed, "{token}");
            assert_eq!(err.kind(), "jwt_verification_failed");
        }
    }

    #[test]
    fn empty_token_is_missing() {
        let err = hs256().verify("").unwrap_err();
        assert_eq!((err, err.kind()), (AuthError::Missing, "missing_token"));
    }

    #[test]
    fn user_id_rules() {
        let auth = hs256();
        let exp = now() + 60;
        let token = sign_hs256(json!({"exp": exp}));
        let err = auth.verify(&token).unwrap_err();
        assert_eq!(
            (err, err.kind()),
            (AuthError::MissingUserId, "invalid_token")
        );

        let long = "x".repeat(257);
        for id in [
            json!(""),
            json!("a b"),
            json!("a\tb"),
            json!("a\u{7f}"),
            json!("a\u{a0}b"),
            json!(long),
            json!(1.5),
            json!(true),
            json!(["a"]),
        ] {
            let token = sign_hs256(json!({"user_id": id, "sub": "fallback", "exp": exp}));
            let err = auth.verify(&token).unwrap_err();
            assert_eq!(
                (err, err.kind()),
                (AuthError::InvalidUserId, "invalid_token"),
                "{id}"
            );
        }
        let token = sign_hs256(json!({"user_id": "x".repeat(256), "exp": exp}));
        assert!(auth.verify(&token).is_ok());
        let token = sign_hs256(json!({"user_id": "user:42/ü", "exp": exp}));
        assert_eq!(auth.verify(&token).as_deref(), Ok("user:42/ü"));
    }

    #[test]
    fn error_messages_never_contain_the_token() {
        let auth = hs256();
        let exp = now() + 60;
        for token in [
            sign_hs256(json!({"sub": "a", "exp": now() - 100})),
            sign_hs256(json!({"user_id": "", "exp": exp})),
            format!("{}.x.y", b64(&json!({"alg": "none"}))),
            "garbage".to_owned(),
        ] {
            let message = auth.verify(&token).unwrap_err().to_string();
            assert!(
                !message.contains(&token) && !message.contains("garbage"),
                "{message}"
            );
        }
    }

    #[test]
    fn rs256_round_trip() {
        let cfg = config(Algorithm::RS256, KeySource::PublicKeyPem(RSA_PUBLIC.into()));
        let auth = Authenticator::new(&cfg).unwrap();
        let key = EncodingKey::from_rsa_pem(RSA_PRIVATE.as_bytes()).unwrap();
        let claims = json!({"sub": "rsa-user", "exp": now() + 60});
        let token = sign(jsonwebtoken::Algorithm::RS256, &key, &claims);
        assert_eq!(auth.verify(&token).as_deref(), Ok("rsa-user"));

        // An HS256 token signed with the public key bytes (the classic confusion attack).
        let forged = sign(
            jsonwebtoken::Algorithm::HS256,
            &EncodingKey::from_secret(RSA_PUBLIC.as_bytes()),
            &claims,
        );
        assert_eq!(auth.verify(&forged), Err(AuthError::WrongAlgorithm));
        // A tampered payload.
        let mut parts: Vec<&str> = token.split('.').collect();
        let other = b64(&json!({"sub": "mallory", "exp": now() + 60}));
        parts[1] = &other;
        assert_eq!(auth.verify(&parts.join(".")), Err(AuthError::BadSignature));
    }

    #[test]
    fn es256_round_trip() {
        let cfg = config(Algorithm::ES256, KeySource::PublicKeyPem(EC_PUBLIC.into()));
        let auth = Authenticator::new(&cfg).unwrap();
        let key = EncodingKey::from_ec_pem(EC_PRIVATE.as_bytes()).unwrap();
        let claims = json!({"user_id": 99, "exp": now() + 60});
        let token = sign(jsonwebtoken::Algorithm::ES256, &key, &claims);
        assert_eq!(auth.verify(&token).as_deref(), Ok("99"));

        let rs = EncodingKey::from_rsa_pem(RSA_PRIVATE.as_bytes()).unwrap();
        let token = sign(jsonwebtoken::Algorithm::RS256, &rs, &claims);
        assert_eq!(auth.verify(&token), Err(AuthError::WrongAlgorithm));
    }

    #[test]
    fn short_secret_is_refused() {
        let cfg = config(Algorithm::HS256, KeySource::Secret(vec![7; 31]));
        let err = Authenticator::new(&cfg).unwrap_err();
        assert!(matches!(
            err,
            AuthSetupError::SecretTooShort {
                len: 31,
                min: 32,
                ..
            }
        ));
        assert!(err.to_string().contains("RFC 7518"), "{err}");

        let cfg = config(Algorithm::HS512, KeySource::Secret(SECRET.to_vec()));
        let err = Authenticator::new(&cfg).unwrap_err();
        assert!(matches!(
            err,
            AuthSetupError::SecretTooShort {
                len: 32,
                min: 64,
                ..
            }
        ));
        let cfg = config(Algorithm::HS512, KeySource::Secret(vec![7; 64]));
        assert!(Authenticator::new(&cfg).is_ok());
    }

    #[test]
    fn key_kind_mismatches_are_refused() {
        let pem = KeySource::PublicKeyPem(EC_PUBLIC.into());
        let err = Authenticator::new(&config(Algorithm::HS256, pem)).unwrap_err();
        assert_eq!(
            err.to_string(),
            "HS256 needs a shared secret, but a PEM public key was configured"
        );
        let secret = KeySource::Secret(SECRET.to_vec());
        let err = Authenticator::new(&config(Algorithm::ES256, secret)).unwrap_err();
        assert!(matches!(err, AuthSetupError::KeyMismatch { .. }), "{err}");
    }

    #[test]
    fn unusable_public_keys_are_refused() {
        // Each case with the start of the expected error's `Debug` output.
        let cases = [
            (
                Algorithm::RS256,
                RSA_PRIVATE,
                r#"NotAPublicKey { algorithm: RS256, label: "PRIVATE KEY" }"#,
            ),
            (
                Algorithm::ES256,
                "not a pem",
                r#"NotAPublicKey { algorithm: ES256, label: "none" }"#,
            ),
            (
                Algorithm::RS256,
                EC_PUBLIC,
                "InvalidPublicKey { algorithm: RS256",
            ),
            (
                Algorithm::RS256,
                RSA_1024_PUBLIC,
                "RsaKeyTooSmall { bits: 1024 }",
            ),
            (
                Algorithm::ES256,
                RSA_PUBLIC,
                "InvalidPublicKey { algorithm: ES256",
            ),
            (Algorithm::ES256, EC_P384_PUBLIC, "WrongCurve"),
        ];
        for (algorithm, pem, expected) in cases {
            let cfg = config(algorithm, KeySource::PublicKeyPem(pem.into()));
            let err = Authenticator::new(&cfg).unwrap_err();
            assert!(
                format!("{err:?}").starts_with(expected),
                "{algorithm}: {err:?}"
            );
        }
    }

    #[test]
    fn leeway_is_bounded() {
        let cfg = AuthConfig {
            leeway_seconds: u64::MAX,
            ..config(Algorithm::HS256, KeySource::Secret(SECRET.to_vec()))
        };
        assert!(matches!(
            Authenticator::new(&cfg),
            Err(AuthSetupError::LeewayTooLarge(u64::MAX))
        ));
    }

    #[test]
    fn algorithm_names() {
        for alg in Algorithm::ALL {
            assert_eq!(alg.to_string().parse::<Algorithm>(), Ok(alg));
            assert_eq!(alg.as_str().to_lowercase().parse::<Algorithm>(), Ok(alg));
        }
        assert_eq!(
            "none".parse::<Algorithm>(),
            Err(UnknownAlgorithm("none".to_owned()))
        );
    }

    #[test]
    fn authenticator_can_be_shared_between_shards() {
        fn assert_send_sync<T: Send + Sync>() {}
        assert_send_sync::<Authenticator>();
    }

    #[test]
    fn debug_output_redacts_the_secret() {
        let cfg = config(Algorithm::HS256, KeySource::Secret(SECRET.to_vec()));
        let secret = std::str::from_utf8(SECRET).unwrap();
        assert!(!format!("{cfg:?}").contains(secret));
        assert!(!format!("{:?}", Authenticator::new(&cfg).unwrap()).contains(secret));
    }
}
