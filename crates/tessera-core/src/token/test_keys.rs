//! Fixed test-only keys and golden tokens, all produced outside this crate
//! with OpenSSL 3.0 and Python, so the tests check against an independent
//! implementation. These keys protect nothing.

#![allow(clippy::unwrap_used, reason = "test")]

use super::{Algorithm, Jwks, SigningKey};

/// The signing key of [`P256_PEM`].
pub(crate) fn p256() -> SigningKey {
    SigningKey::from_pkcs8_pem(Algorithm::Es256, P256_PEM).unwrap()
}

/// The signing key of [`ED25519_PEM`].
pub(crate) fn ed25519() -> SigningKey {
    SigningKey::from_pkcs8_pem(Algorithm::EdDsa, ED25519_PEM).unwrap()
}

/// The public keys of `keys` as a set.
pub(crate) fn jwks(keys: &[&SigningKey]) -> Jwks {
    Jwks {
        keys: keys.iter().map(|key| key.public_jwk().clone()).collect(),
    }
}

/// `openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256`.
pub(crate) const P256_PEM: &str = "\
-----BEGIN PRIVATE KEY-----
MIGHAgEAMBMGByqGSM49AgEGCCqGSM49AwEHBG0wawIBAQQgjS/iV0UzMob8IgEk
3Vmv2MzNjmZ4B9TbAXpbAOUtpMqhRANCAAQWyjis6/PwcyVEk5gPTgkLs19gLcpi
Boqi9PR+4x5j8Ws75sYvfwSQtDmg/+j+b5j2v34O3yNiY5ww+iiFm1GK
-----END PRIVATE KEY-----
";

/// `openssl genpkey -algorithm ED25519`: PKCS#8 v1, seed only.
pub(crate) const ED25519_PEM: &str = "\
-----BEGIN PRIVATE KEY-----
MC4CAQAwBQYDK2VwBCIEIASStRYIAlJkl7xidybI0Gl/ywz0bILbMvrRbeGb/iKb
-----END PRIVATE KEY-----
";

/// The seed of [`ED25519_PEM`] as PKCS#8 v2 (RFC 8410 section 10.3: version 1,
/// then `[1]` the public key), assembled by hand in Python.
pub(crate) const ED25519_PEM_V2: &str = "\
-----BEGIN PRIVATE KEY-----
MFECAQEwBQYDK2VwBCIEIASStRYIAlJkl7xidybI0Gl/ywz0bILbMvrRbeGb/iKb
gSEAHeW9DFoPKBYT0/wHN0BbHH0YfB5BXwsU9HD/BVc5o4M=
-----END PRIVATE KEY-----
";

/// `{"alg":"EdDSA","typ":"at+jwt","kid":<kid of ED25519_PEM>}` over
/// `{"iss":"https://tessera.test","exp":1}`, signed with
/// `openssl pkeyutl -sign -rawin -inkey ED25519_PEM`.
pub(crate) const GOLDEN_EDDSA_TOKEN: &str = "\
eyJhbGciOiJFZERTQSIsInR5cCI6ImF0K2p3dCIsImtpZCI6InExcGFDWFl5NlA2QzVQMWNhUnh5bFROYWJ5cTVXRl8wcm4xTnhiS3ZuUncifQ\
.eyJpc3MiOiJodHRwczovL3Rlc3NlcmEudGVzdCIsImV4cCI6MX0\
.QGxz8K9ILrzffv1bZRaoDAUKmlXFKAHg8VUdpvOPd7PKTYqfLcJvDbR9trROeOBrs_uWy0UzVEDNm9LbseEMDQ";

/// An RFC 9068 access token signed by P256_PEM with
/// `openssl dgst -sha256 -sign` (DER signature converted to `r||s`). Header
/// `{"typ":"application/at+jwt","alg":"ES256","kid":<kid of P256_PEM>}`;
/// claims `iss` `https://tessera.test`, `aud` `https://api.test`,
/// `nbf` = `iat` = 1800000000, `exp` 1800000300 and an extra `x_extra: true`.
pub(crate) const GOLDEN_ES256_ACCESS_TOKEN: &str = "\
eyJ0eXAiOiJhcHBsaWNhdGlvbi9hdCtqd3QiLCJhbGciOiJFUzI1NiIsImtpZCI6IlpzalMwbDI5UzlkZllfc2NodEIzZnQyd0xNeXNMMmlDTjkzYjBlN0E1T3cifQ\
.eyJpc3MiOiJodHRwczovL3Rlc3NlcmEudGVzdCIsInN1YiI6InNwaWZmZTovL3Rlc3NlcmEudGVzdC9hZ2VudC9hIiwiYXVkIjoiaHR0cHM6Ly9hcGkudGVzdCIsImV4cCI6MTgwMDAwMDMwMCwibmJmIjoxODAwMDAwMDAwLCJpYXQiOjE4MDAwMDAwMDAsImp0aSI6IkFBQUFBQUFBQUFBQUFBQUFBQUFBQUEiLCJzY29wZSI6InJlYWQgd3JpdGUiLCJjbGllbnRfaWQiOiJzcGlmZmU6Ly90ZXNzZXJhLnRlc3QvYWdlbnQvYSIsInRhc2tfaWQiOiJ0LTEiLCJ4X2V4dHJhIjp0cnVlfQ\
.xa-BcVGnx215SxSYW3Pp_0V06hEYVSQfBcpEqrgOpxJCpaNuE5ijY6UF9tnwrbTQQO5JutJUqIDCCynJ2udykQ";
