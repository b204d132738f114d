//! The verifier's key cache: the broker's JWKS, parsed once into *ring*
//! public keys, so the hot path is a hash lookup and a signature check.

use std::collections::HashMap;
use std::sync::Arc;

use tessera_core::token::{Algorithm, Jwk, VerificationKey};

/// Most keys kept from one JWKS; the rest are ignored. The broker publishes
/// one key per replica plus retiring ones, far fewer than this.
pub const MAX_KEYS: usize = 64;
/// Longest accepted `kid`, as the token verifier allows.
const MAX_KID_LEN: usize = tessera_core::token::MAX_KID_LEN;

/// Parsed public keys by `kid`.
#[derive(Debug, Default, Clone)]
pub(crate) struct KeyCache {
    keys: HashMap<String, Arc<VerificationKey>>,
}

/// What one JWKS load kept and skipped, for logs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub(crate) struct KeyLoad {
    pub(crate) kept: usize,
    pub(crate) skipped: usize,
}

impl KeyCache {
    /// A cache holding exactly the usable keys of `jwks` whose algorithm is
    /// in `allowed`, at most [`MAX_KEYS`]. Unusable keys are skipped, never
    /// fatal: one bad key must not take the others down.
    pub(crate) fn from_jwks(jwks: &[Jwk], allowed: &[Algorithm]) -> (Self, KeyLoad) {
        let mut keys = HashMap::new();
        let mut load = KeyLoad::default();
        for jwk in jwks {
            let usable = keys.len() < MAX_KEYS
                && !jwk.kid.is_empty()
                && jwk.kid.len() <= MAX_KID_LEN
                && allowed.contains(&jwk.alg)
                && !keys.contains_key(&jwk.kid);
            match jwk.verification_key() {
                Ok(key) if usable => {
                    keys.insert(jwk.kid.clone(), Arc::new(key));
                    load.kept += 1;
                }
                _ => load.skipped += 1,
            }
        }
        (Self { keys }, load)
    }

    /// The key named `kid`.
    pub(crate) fn get(&self, kid: &str) -> Option<&VerificationKey> {
        self.keys.get(kid).map(Arc::as_ref)
    }

    /// How many keys are cached.
    pub(crate) fn len(&self) -> usize {
        self.keys.len()
    }
}

/// Converts the broker's `GetJwks` answer into JWKs; entries with an
/// unknown algorithm are dropped.
pub(crate) fn from_proto(keys: &[crate::pb::Jwk]) -> Vec<Jwk> {
    keys.iter()
        .take(MAX_KEYS * 2)
        .filter_map(|k| {
            Some(Jwk {
                kty: k.kty.clone(),
                crv: k.crv.clone(),
                x: k.x.clone(),
                y: (!k.y.is_empty()).then(|| k.y.clone()),
                kid: k.kid.clone(),
                alg: k.alg.parse().ok()?,
                key_use: k.r#use.clone(),
            })
        })
        .collect()
}
