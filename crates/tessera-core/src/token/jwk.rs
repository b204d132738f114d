//! Public keys as JWK (RFC 7517, RFC 8037), their RFC 7638 thumbprints, and
//! the JWK set the broker publishes.

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use ring::signature::{ECDSA_P256_SHA256_FIXED, ED25519, UnparsedPublicKey};
use serde::{Deserialize, Serialize};

use super::Algorithm;
use super::jws::{JwsError, KeyLookup};

/// A public signing key as a JWK: `EC`/`P-256` for ES256, `OKP`/`Ed25519`
/// for EdDSA.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Jwk {
    /// Key type: `EC` or `OKP`.
    pub kty: String,
    /// Curve: `P-256` or `Ed25519`.
    pub crv: String,
    /// The x coordinate (EC) or the public key (OKP), base64url.
    pub x: String,
    /// The y coordinate, base64url; EC only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub y: Option<String>,
    /// Key id; for Tessera's keys, the RFC 7638 thumbprint.
    pub kid: String,
    /// The one algorithm this key may be used with.
    pub alg: Algorithm,
    /// Public key use; always `sig`.
    #[serde(rename = "use")]
    pub key_use: String,
}

impl Jwk {
    /// The JWK of a P-256 public key with coordinates `x` and `y` (32 bytes
    /// each); the kid is its thumbprint.
    pub(crate) fn ec_p256(x: &[u8], y: &[u8]) -> Self {
        Self::with_thumbprint_kid(Self {
            kty: "EC".to_owned(),
            crv: "P-256".to_owned(),
            x: URL_SAFE_NO_PAD.encode(x),
            y: Some(URL_SAFE_NO_PAD.encode(y)),
            kid: String::new(),
            alg: Algorithm::Es256,
            key_use: "sig".to_owned(),
        })
    }

    /// The JWK of an Ed25519 public key (32 bytes); the kid is its thumbprint.
    pub(crate) fn ed25519(x: &[u8]) -> Self {
        Self::with_thumbprint_kid(Self {
            kty: "OKP".to_owned(),
            crv: "Ed25519".to_owned(),
            x: URL_SAFE_NO_PAD.encode(x),
            y: None,
            kid: String::new(),
            alg: Algorithm::EdDsa,
            key_use: "sig".to_owned(),
        })
    }

    fn with_thumbprint_kid(mut self) -> Self {
        self.kid = self.thumbprint();
        self
    }

    /// The RFC 7638 thumbprint: base64url of the SHA-256 of the required
    /// members in lexicographic order with no whitespace, i.e.
    /// `{"crv":..,"kty":"EC","x":..,"y":..}` or `{"crv":..,"kty":"OKP","x":..}`.
    pub fn thumbprint(&self) -> String {
        // Field order is the lexicographic member order RFC 7638 requires.
        #[derive(Serialize)]
        struct Required<'a> {
            crv: &'a str,
            kty: &'a str,
            x: &'a str,
            #[serde(skip_serializing_if = "Option::is_none")]
            y: Option<&'a str>,
        }
        let required = Required {
            crv: &self.crv,
            kty: &self.kty,
            x: &self.x,
            // `y` is not a member of an OKP key (RFC 8037 section 2).
            y: if self.kty == "OKP" { None } else { self.y.as_deref() },
        };
        #[expect(clippy::expect_used, reason = "a struct of &str always serializes")]
        let json = serde_json::to_vec(&required).expect("serializing strings cannot fail");
        URL_SAFE_NO_PAD.encode(ring::digest::digest(&ring::digest::SHA256, &json))
    }

    /// The key, checked for shape (`use`, `kty`, `crv` matching `alg`,
    /// coordinate lengths), ready to verify signatures. Whether the point is
    /// on the curve is checked by *ring* at each verification.
    pub fn verification_key(&self) -> Result<VerificationKey, JwsError> {
        if self.key_use != "sig" {
            return Err(JwsError::InvalidKey("`use` is not `sig`"));
        }
        let key = match self.alg {
            Algorithm::Es256 => {
                if self.kty != "EC" || self.crv != "P-256" {
                    return Err(JwsError::InvalidKey("an ES256 key must be an EC P-256 key"));
                }
                let y = self.y.as_deref().ok_or(JwsError::InvalidKey("EC key has no `y`"))?;
                // Uncompressed SEC1 point: 0x04 || x || y.
                let mut point = Vec::with_capacity(65);
                point.push(0x04);
                point.extend_from_slice(&decode_32(&self.x)?);
                point.extend_from_slice(&decode_32(y)?);
                UnparsedPublicKey::new(&ECDSA_P256_SHA256_FIXED, point)
            }
            Algorithm::EdDsa => {
                if self.kty != "OKP" || self.crv != "Ed25519" || self.y.is_some() {
                    return Err(JwsError::InvalidKey("an EdDSA key must be an OKP Ed25519 key"));
                }
                UnparsedPublicKey::new(&ED25519, decode_32(&self.x)?.to_vec())
            }
        };
        Ok(VerificationKey { alg: self.alg, key })
    }
}

/// A base64url coordinate that must decode to exactly 32 bytes.
fn decode_32(b64: &str) -> Result<[u8; 32], JwsError> {
    let bytes = URL_SAFE_NO_PAD
        .decode(b64)
        .map_err(|_| JwsError::InvalidKey("coordinate is not base64url"))?;
    <[u8; 32]>::try_from(bytes).map_err(|_| JwsError::InvalidKey("coordinate is not 32 bytes"))
}

/// A public key ready to verify signatures of its one algorithm.
#[derive(Debug, Clone)]
pub struct VerificationKey {
    alg: Algorithm,
    key: UnparsedPublicKey<Vec<u8>>,
}

impl VerificationKey {
    /// The one algorithm this key verifies.
    pub fn algorithm(&self) -> Algorithm {
        self.alg
    }

    /// Checks `signature` (64 bytes for both algorithms) over `message`.
    pub fn verify(&self, message: &[u8], signature: &[u8]) -> Result<(), JwsError> {
        self.key.verify(message, signature).map_err(|_| JwsError::Signature)
    }
}

/// A JWK set (RFC 7517 section 5), as served at the broker's JWKS endpoint.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Jwks {
    /// The keys, current first by convention.
    pub keys: Vec<Jwk>,
}

impl Jwks {
    /// The set as compact JSON.
    #[expect(clippy::expect_used, reason = "a Jwks is only strings and a unit enum")]
    pub fn to_json(&self) -> String {
        serde_json::to_string(self).expect("serializing a jwks cannot fail")
    }

    /// The first key whose kid is `kid`.
    pub fn find(&self, kid: &str) -> Option<&Jwk> {
        self.keys.iter().find(|key| key.kid == kid)
    }
}

impl KeyLookup for Jwks {
    fn key(&self, kid: &str) -> Option<&Jwk> {
        self.find(kid)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, reason = "test")]

    use super::*;
    use crate::error::ErrorKind;

    fn ec_jwk() -> Jwk {
        Jwk {
            kty: "EC".to_owned(),
            crv: "P-256".to_owned(),
            x: "Fso4rOvz8HMlRJOYD04JC7NfYC3KYgaKovT0fuMeY_E".to_owned(),
            y: Some("azvmxi9_BJC0OaD_6P5vmPa_fg7fI2JjnDD6KIWbUYo".to_owned()),
            kid: "any".to_owned(),
            alg: Algorithm::Es256,
            key_use: "sig".to_owned(),
        }
    }

    fn okp_jwk(x: &str) -> Jwk {
        Jwk {
            kty: "OKP".to_owned(),
            crv: "Ed25519".to_owned(),
            x: x.to_owned(),
            y: None,
            kid: "any".to_owned(),
            alg: Algorithm::EdDsa,
            key_use: "sig".to_owned(),
        }
    }

    /// Golden vector computed outside Rust, in a shell:
    ///
    /// ```text
    /// python3 -c 'import hashlib, base64
    /// c = b"{\"crv\":\"P-256\",\"kty\":\"EC\",\"x\":\"Fso4rOvz8HMlRJOYD04JC7NfYC3KYgaKovT0fuMeY_E\",\"y\":\"azvmxi9_BJC0OaD_6P5vmPa_fg7fI2JjnDD6KIWbUYo\"}"
    /// print(base64.urlsafe_b64encode(hashlib.sha256(c).digest()).rstrip(b"="))'
    /// ```
    ///
    /// The coordinates are the public key of `test_keys::P256_PEM`
    /// (`openssl pkey -pubout`). kid, alg and use are not thumbprint members,
    /// so changing them must not change it.
    #[test]
    fn ec_thumbprint_golden() {
        let mut jwk = ec_jwk();
        assert_eq!(jwk.thumbprint(), "ZsjS0l29S9dfY_schtB3ft2wLMysL2iCN93b0e7A5Ow");
        jwk.kid = "other".to_owned();
        jwk.key_use = "enc".to_owned();
        assert_eq!(jwk.thumbprint(), "ZsjS0l29S9dfY_schtB3ft2wLMysL2iCN93b0e7A5Ow");
    }

    /// RFC 8037 appendix A.3: the known-answer thumbprint of the RFC's
    /// Ed25519 example key.
    #[test]
    fn okp_thumbprint_rfc8037_a3() {
        let jwk = okp_jwk("11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo");
        assert_eq!(jwk.thumbprint(), "kPrK_qmxVWaYVA9wwBF6Iuo3vVzz7TxHCTwXBygrS4k");
    }

    #[test]
    fn serde_shape() {
        let ec = serde_json::to_string(&ec_jwk()).unwrap();
        assert_eq!(
            ec,
            r#"{"kty":"EC","crv":"P-256","x":"Fso4rOvz8HMlRJOYD04JC7NfYC3KYgaKovT0fuMeY_E","y":"azvmxi9_BJC0OaD_6P5vmPa_fg7fI2JjnDD6KIWbUYo","kid":"any","alg":"ES256","use":"sig"}"#
        );
        let okp = okp_jwk("11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo");
        let json = serde_json::to_string(&okp).unwrap();
        assert!(!json.contains("\"y\""), "{json}");
        assert!(json.contains(r#""alg":"EdDSA","use":"sig""#), "{json}");
        let back: Jwk = serde_json::from_str(&json).unwrap();
        assert_eq!(back, okp);
    }

    #[test]
    fn jwks_json_and_find() {
        let mut second = okp_jwk("11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo");
        second.kid = "second".to_owned();
        let jwks = Jwks {
            keys: vec![ec_jwk(), second],
        };
        let json = jwks.to_json();
        assert!(json.starts_with(r#"{"keys":[{"kty":"EC""#), "{json}");
        let back: Jwks = serde_json::from_str(&json).unwrap();
        assert_eq!(back, jwks);
        assert_eq!(jwks.find("second").unwrap().kty, "OKP");
        assert_eq!(jwks.key("any").unwrap().kty, "EC");
        assert!(jwks.find("missing").is_none());
        assert!(jwks.find("").is_none());
    }

    #[test]
    fn verification_key_checks_shape() {
        assert_eq!(ec_jwk().verification_key().unwrap().algorithm(), Algorithm::Es256);
        let okp = okp_jwk("11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo");
        assert_eq!(okp.verification_key().unwrap().algorithm(), Algorithm::EdDsa);

        let short = "Fso4rOvz8HMlRJOYD04JC7NfYC3KYgaKovT0fuMeYw"; // 31 bytes
        let cases: Vec<(&str, Jwk)> = vec![
            (
                "short x",
                Jwk {
                    x: short.to_owned(),
                    ..ec_jwk()
                },
            ),
            (
                "short y",
                Jwk {
                    y: Some(short.to_owned()),
                    ..ec_jwk()
                },
            ),
            ("no y", Jwk { y: None, ..ec_jwk() }),
            (
                "padded x",
                Jwk {
                    x: format!("{}=", ec_jwk().x),
                    ..ec_jwk()
                },
            ),
            (
                "std alphabet",
                Jwk {
                    x: ec_jwk().x.replace('_', "/"),
                    ..ec_jwk()
                },
            ),
            (
                "wrong kty",
                Jwk {
                    kty: "OKP".to_owned(),
                    ..ec_jwk()
                },
            ),
            (
                "wrong crv",
                Jwk {
                    crv: "P-384".to_owned(),
                    ..ec_jwk()
                },
            ),
            (
                "wrong use",
                Jwk {
                    key_use: "enc".to_owned(),
                    ..ec_jwk()
                },
            ),
            (
                "EC key as EdDSA",
                Jwk {
                    alg: Algorithm::EdDsa,
                    ..ec_jwk()
                },
            ),
            (
                "OKP key as ES256",
                Jwk {
                    alg: Algorithm::Es256,
                    ..okp.clone()
                },
            ),
            (
                "OKP with y",
                Jwk {
                    y: Some(okp.x.clone()),
                    ..okp.clone()
                },
            ),
            (
                "short OKP",
                Jwk {
                    x: short.to_owned(),
                    ..okp.clone()
                },
            ),
        ];
        for (why, jwk) in cases {
            let err = jwk.verification_key().unwrap_err();
            assert!(matches!(err, JwsError::InvalidKey(_)), "{why}: {err:?}");
            assert_eq!(err.kind(), ErrorKind::Internal, "{why}");
        }
    }

    #[test]
    fn unknown_algorithm_in_a_jwk_is_refused_at_parse() {
        let json = r#"{"kty":"oct","crv":"","x":"","kid":"k","alg":"HS256","use":"sig"}"#;
        assert!(serde_json::from_str::<Jwk>(json).is_err());
    }
}
