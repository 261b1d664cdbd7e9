//! Client tokens: HS256 JWTs with the shared secret, claims `user_id` (plus `sub`, `iat`, `exp`),
//! exactly what the gateways verify.

use std::time::{SystemTime, UNIX_EPOCH};

use jsonwebtoken::{EncodingKey, Header, encode};
use serde::Serialize;

/// Token lifetime: longer than any run.
const LIFETIME_S: u64 = 24 * 3600;

#[derive(Serialize)]
struct Claims<'a> {
    user_id: &'a str,
    sub: &'a str,
    iat: u64,
    exp: u64,
}

/// Signs tokens with one secret.
pub struct Signer {
    /// HMAC key from the secret.
    key: EncodingKey,
    /// `iat` for every token of the run.
    iat: u64,
}

impl Signer {
    /// A signer for `secret`.
    #[must_use]
    pub fn new(secret: &str) -> Self {
        let iat = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        Self {
            key: EncodingKey::from_secret(secret.as_bytes()),
            iat,
        }
    }

    /// A token for `user_id`.
    #[must_use]
    pub fn token(&self, user_id: &str) -> String {
        let claims = Claims {
            user_id,
            sub: user_id,
            iat: self.iat,
            exp: self.iat + LIFETIME_S,
        };
        encode(&Header::default(), &claims, &self.key).expect("HS256 signing does not fail")
    }
}

#[cfg(test)]
mod tests {
    use jsonwebtoken::{Algorithm, DecodingKey, Validation, decode};

    use super::*;

    #[test]
    fn verifies_with_the_same_secret_only() {
        #[derive(serde::Deserialize)]
        struct Back {
            user_id: String,
            sub: String,
        }
        let t = Signer::new("s3cret").token("u7");
        let v = Validation::new(Algorithm::HS256);
        let back = decode::<Back>(&t, &DecodingKey::from_secret(b"s3cret"), &v).unwrap();
        assert_eq!(
            (back.claims.user_id.as_str(), back.claims.sub.as_str()),
            ("u7", "u7")
        );
        assert!(decode::<Back>(&t, &DecodingKey::from_secret(b"other"), &v).is_err());
    }
}
