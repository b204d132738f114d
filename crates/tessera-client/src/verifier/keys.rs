//! The verifier's key cache: the usable keys of the broker's JWKS by `kid`,
//! looked up by core's token verification ([`KeyLookup`]) and nowhere else.

use std::collections::HashMap;

use tessera_core::token::{Algorithm, Jwk, KeyLookup};

/// Most keys kept from one JWKS; the rest are ignored. The broker publishes
/// one key per replica plus retiring ones, far fewer than this.
pub const MAX_KEYS: usize = 64;
/// Longest accepted `kid`, as the token verifier allows.
const MAX_KID_LEN: usize = tessera_core::token::MAX_KID_LEN;

/// Usable public keys by `kid`.
#[derive(Debug, Default, Clone)]
pub(crate) struct KeyCache {
    keys: HashMap<String, Jwk>,
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
                && !keys.contains_key(&jwk.kid)
                && jwk.verification_key().is_ok();
            if usable {
                keys.insert(jwk.kid.clone(), jwk.clone());
                load.kept += 1;
            } else {
                load.skipped += 1;
            }
        }
        (Self { keys }, load)
    }

    /// Drops the keys `withdrawn` says were withdrawn.
    pub(crate) fn drop_withdrawn(&mut self, withdrawn: impl Fn(&str) -> bool) {
        self.keys.retain(|kid, _| !withdrawn(kid));
    }

    /// How many keys are cached.
    pub(crate) fn len(&self) -> usize {
        self.keys.len()
    }
}

impl KeyLookup for KeyCache {
    fn key(&self, kid: &str) -> Option<&Jwk> {
        self.keys.get(kid)
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
