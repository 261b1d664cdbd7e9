//! JWT verification (`proto::jwt`): random tokens and claim sets never panic, and a token whose
//! header names an algorithm other than the configured one is always refused, whatever its
//! signature.

use base64::{Engine as _, engine::general_purpose::URL_SAFE_NO_PAD};
use chat4all_gateway::internals::{Algorithm, AuthError};
use proptest::{collection::vec, prelude::*, sample::select};
use serde_json::{Value, json};

use crate::checks::jwt::{assert_token_properties, authenticator, sign_hs256};

/// Algorithm names a header may carry: every JOSE name, case variants, and nonsense.
fn alg_name() -> impl Strategy<Value = String> {
    prop_oneof![
        select(vec![
            "HS256", "HS384", "HS512", "RS256", "RS384", "RS512", "ES256", "ES384", "PS256",
            "EdDSA", "none", "None", "NONE", "hs256", "HS256 ", " HS256", "", "HS2560",
        ])
        .prop_map(str::to_owned),
        ".{0,8}",
    ]
}

fn configured() -> impl Strategy<Value = Algorithm> {
    select(Algorithm::ALL.to_vec())
}

/// Claim values: the right types, the wrong types, and edge numbers.
fn claim_value() -> impl Strategy<Value = Value> {
    prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::from),
        any::<i64>().prop_map(Value::from),
        any::<u64>().prop_map(Value::from),
        any::<f64>()
            .prop_filter("finite", |f| f.is_finite())
            .prop_map(Value::from),
        ".{0,300}".prop_map(Value::from),
        select(vec!["alice", "a b", "", "user:42/ü", "\u{7f}", "\u{a0}"]).prop_map(Value::from),
        vec(any::<u8>(), 0..3).prop_map(|v| json!(v)),
        Just(json!({"nested": true})),
    ]
}

/// A claim set: maybe `exp` (past, future or garbage), `nbf`, `user_id`, `sub`, extras.
fn claims() -> impl Strategy<Value = Value> {
    let now = jsonwebtoken::get_current_timestamp() as i64;
    let time = prop_oneof![
        (-1000i64..1000).prop_map(move |d| json!(now + d * 60)),
        claim_value(),
    ];
    (
        proptest::option::of(time.clone()),
        proptest::option::of(time),
        proptest::option::of(claim_value()),
        proptest::option::of(claim_value()),
        vec(("[a-z]{1,5}", claim_value()), 0..3),
    )
        .prop_map(|(exp, nbf, user_id, sub, extra)| {
            let mut map: serde_json::Map<String, Value> = extra.into_iter().collect();
            for (name, value) in [
                ("exp", exp),
                ("nbf", nbf),
                ("user_id", user_id),
                ("sub", sub),
            ] {
                if let Some(value) = value {
                    map.insert(name.to_owned(), value);
                }
            }
            Value::Object(map)
        })
}

fn b64(bytes: &[u8]) -> String {
    URL_SAFE_NO_PAD.encode(bytes)
}

proptest! {
    /// Arbitrary strings, and dot-separated base64url parts of arbitrary bytes: never a panic,
    /// never accepted unless the header names the configured algorithm.
    #[test]
    fn random_tokens_never_panic(
        algorithm in configured(),
        raw in ".{0,200}",
        parts in vec(vec(any::<u8>(), 0..80), 0..5),
    ) {
        let auth = authenticator(algorithm);
        assert_token_properties(auth, algorithm, &raw);
        let token = parts.iter().map(|p| b64(p)).collect::<Vec<_>>().join(".");
        assert_token_properties(auth, algorithm, &token);
    }

    /// Validly signed HS256 tokens with random claim sets: verification never panics, and an
    /// accepted token's user id is the `user_id` claim, else `sub`, as the docs say.
    #[test]
    fn random_claim_sets_never_panic(claims in claims(), header_extra in proptest::option::of(("[a-z]{1,4}", claim_value()))) {
        let mut header = json!({"alg": "HS256", "typ": "JWT"});
        if let Some((k, v)) = header_extra {
            header[k] = v;
        }
        let token = sign_hs256(header.to_string().as_bytes(), claims.to_string().as_bytes());
        let result = authenticator(Algorithm::HS256).verify(&token);
        assert_token_properties(authenticator(Algorithm::HS256), Algorithm::HS256, &token);
        if let Ok(user) = result {
            // A `user_id` of null counts as absent (serde's reading of an optional claim).
            let source = claims.get("user_id").filter(|v| !v.is_null()).unwrap_or(&claims["sub"]);
            let expected = match source {
                Value::String(s) => s.clone(),
                Value::Number(n) if n.is_i64() || n.is_u64() => n.to_string(),
                other => panic!("accepted a user id claim of {other}"),
            };
            prop_assert_eq!(user.as_str(), expected.as_str());
            prop_assert!(claims.get("exp").is_some_and(Value::is_number));
        }
    }

    /// A header naming any other algorithm is refused as `WrongAlgorithm`, whatever the claims
    /// and whatever the signature: none, garbage, or a valid HMAC with the configured secret
    /// (or, for RS256/ES256, with the public key's bytes: the classic confusion attack).
    #[test]
    fn other_algorithms_are_always_refused(
        algorithm in configured(),
        alg in alg_name(),
        claims in claims(),
        signature in prop_oneof![
            Just(None),
            vec(any::<u8>(), 0..64).prop_map(Some),
        ],
        sign_with_secret in any::<bool>(),
    ) {
        prop_assume!(alg != algorithm.as_str());
        let header = json!({"alg": alg, "typ": "JWT"}).to_string();
        let message = format!("{}.{}", b64(header.as_bytes()), b64(claims.to_string().as_bytes()));
        let token = if sign_with_secret {
            sign_hs256(header.as_bytes(), claims.to_string().as_bytes())
        } else {
            match signature {
                None => format!("{message}."),
                Some(sig) => format!("{message}.{}", b64(&sig)),
            }
        };
        let result = authenticator(algorithm).verify(&token);
        prop_assert_eq!(result, Err(AuthError::WrongAlgorithm), "alg {:?} under {}", alg, algorithm);
    }
}
