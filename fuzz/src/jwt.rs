//! Token verification: no panic, and no token accepted under an algorithm it does not name.

use std::sync::OnceLock;

use base64::{Engine as _, engine::general_purpose::URL_SAFE_NO_PAD};
use chat4all_gateway::internals::{Algorithm, AuthConfig, AuthError, Authenticator, KeySource};

/// The shared secret of the HS256 verifier the checks use.
pub const SECRET: &[u8] = b"0123456789abcdef0123456789abcdef";

/// A P-256 public key, for an ES256 verifier (test key; protects nothing).
pub const EC_PUBLIC: &str = "-----BEGIN PUBLIC KEY-----
MFkwEwYHKoZIzj0CAQYIKoZIzj0DAQcDQgAEtoLI3bkpqtEx3NkZNiwjob6hAqQ7
gnsJA4r1xrGDVw2MOyt6lNQvkooCo5NTSPHyMSNnB+fJFAEvFiGuvnBgBQ==
-----END PUBLIC KEY-----
";

/// A 2048-bit RSA public key, for an RS256 verifier (test key; protects nothing).
pub const RSA_PUBLIC: &str = "-----BEGIN PUBLIC KEY-----
MIIBIjANBgkqhkiG9w0BAQEFAAOCAQ8AMIIBCgKCAQEAtADSffQNYt2z0g6m0++1
9mtWU3TYHMIrQWI+pinuZyxdQ/CEruPwuaTW65ous4ngOrc1bW9LhgUAs5jSHYeH
HGQCzAQ1AQ0vPpEZ3emF+nfLbSuVPUse2jKjsHT85OZYoLvk79DB1kvV0ywR+rPA
JnFitkgj4Ncx0Eo9HOYdce6qCW0OLrZkPCYI8+bqkkUKHacQ3CM1CX0dM/Aon11J
kkG/DxIzQI+K5jB2vCrBz9YFEKrnP+Hyugmn4YmdaxYz1dTNYp8jbwSKKbEbdEMQ
Lx7XZzjbVJTeRkJ5wvUycVrB13MKrLH3TIEwXd+KI1kEPWsOu3RVupdSQRRzxpl2
7wIDAQAB
-----END PUBLIC KEY-----
";

/// A verifier for `algorithm` with the keys above, `exp` required, no leeway; built once.
pub fn authenticator(algorithm: Algorithm) -> &'static Authenticator {
    static CACHE: OnceLock<Vec<(Algorithm, Authenticator)>> = OnceLock::new();
    let all = CACHE.get_or_init(|| {
        Algorithm::ALL
            .into_iter()
            .map(|a| (a, build_authenticator(a)))
            .collect()
    });
    &all.iter()
        .find(|(a, _)| *a == algorithm)
        .expect("every algorithm")
        .1
}

fn build_authenticator(algorithm: Algorithm) -> Authenticator {
    let key = match algorithm {
        Algorithm::HS256 => KeySource::Secret(SECRET.to_vec()),
        Algorithm::HS384 => KeySource::Secret([SECRET; 2].concat()),
        Algorithm::HS512 => KeySource::Secret([SECRET; 2].concat()),
        Algorithm::RS256 => KeySource::PublicKeyPem(RSA_PUBLIC.into()),
        Algorithm::ES256 => KeySource::PublicKeyPem(EC_PUBLIC.into()),
    };
    Authenticator::new(&AuthConfig {
        algorithm,
        key,
        require_exp: true,
        leeway_seconds: 0,
    })
    .expect("valid test configuration")
}

/// `header.claims.signature` with the HS256 signature of [`SECRET`] over the first two parts.
pub fn sign_hs256(header: &[u8], claims: &[u8]) -> String {
    let message = format!(
        "{}.{}",
        URL_SAFE_NO_PAD.encode(header),
        URL_SAFE_NO_PAD.encode(claims)
    );
    let key = jsonwebtoken::EncodingKey::from_secret(SECRET);
    let signature =
        jsonwebtoken::crypto::sign(message.as_bytes(), &key, jsonwebtoken::Algorithm::HS256)
            .expect("HMAC signs anything");
    format!("{message}.{signature}")
}

/// The `alg` a token's first part declares, if it is base64url of a JSON object whose `alg` is a
/// string.
pub fn declared_alg(token: &str) -> Option<String> {
    let header = token.split('.').next()?;
    let json = URL_SAFE_NO_PAD.decode(header).ok()?;
    match serde_json::from_slice::<serde_json::Value>(&json).ok()? {
        serde_json::Value::Object(map) => map.get("alg")?.as_str().map(str::to_owned),
        _ => None,
    }
}

/// Token verification for every algorithm: never panics; a token is accepted only if its header
/// names the configured algorithm, and then yields a valid user id; a header naming another
/// algorithm is always refused.
pub fn assert_token_properties(auth: &Authenticator, algorithm: Algorithm, token: &str) {
    let result = auth.verify(token);
    let declared = declared_alg(token);
    if let Some(alg) = &declared
        && alg != algorithm.as_str()
    {
        assert!(
            result.is_err(),
            "accepted a token declaring {alg:?} under {algorithm}"
        );
    }
    match result {
        Ok(user) => {
            assert_eq!(
                declared.as_deref(),
                Some(algorithm.as_str()),
                "token {token:?}"
            );
            assert!(!user.is_empty() && user.len() <= 256);
            assert!(!user.chars().any(|c| c.is_whitespace() || c.is_control()));
        }
        Err(AuthError::Missing) => assert!(token.is_empty()),
        // Every message is one of the fixed texts: nothing of the token can be in it (a token may
        // still happen to be a substring of one, as the fuzzer showed with "malformed toke").
        Err(e) => assert!(
            ALL_ERRORS
                .iter()
                .any(|known| known.to_string() == e.to_string())
        ),
    }
}

/// Every verification error: their messages are the only texts an error may carry.
const ALL_ERRORS: [AuthError; 8] = [
    AuthError::Missing,
    AuthError::Malformed,
    AuthError::BadSignature,
    AuthError::WrongAlgorithm,
    AuthError::Expired,
    AuthError::NotYetValid,
    AuthError::MissingUserId,
    AuthError::InvalidUserId,
];

/// JWT verification. `mode` (the first byte) picks how the rest becomes a token:
/// - 0: the rest, as (lossy) UTF-8, verified under every algorithm;
/// - 1: `header 0xFF claims`, base64url-encoded and validly signed with HS256, verified by HS256
///   (reaches the header and claims parsing past the signature check);
/// - 2: `header 0xFF claims 0xFF signature`, base64url-encoded as is, verified under every
///   algorithm.
pub fn jwt(data: &[u8]) {
    let [mode, rest @ ..] = data else {
        return;
    };
    let mut parts = rest.splitn(3, |&b| b == 0xFF);
    let (a, b, c) = (parts.next().unwrap_or_default(), parts.next(), parts.next());
    match mode % 3 {
        1 => {
            let token = sign_hs256(a, b.unwrap_or_default());
            assert_token_properties(authenticator(Algorithm::HS256), Algorithm::HS256, &token);
        }
        m => {
            let token = if m == 0 {
                String::from_utf8_lossy(rest).into_owned()
            } else {
                let encode = |p: Option<&[u8]>| URL_SAFE_NO_PAD.encode(p.unwrap_or_default());
                format!("{}.{}.{}", encode(Some(a)), encode(b), encode(c))
            };
            for algorithm in Algorithm::ALL {
                assert_token_properties(authenticator(algorithm), algorithm, &token);
            }
        }
    }
}
