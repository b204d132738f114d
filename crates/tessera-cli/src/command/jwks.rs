//! `tessera jwks`: print the broker's public keys as a JWK Set.

use serde_json::Value;
use tessera_client::{VerifierClient, pb};

use crate::cli::Global;
use crate::command::channel;
use crate::output;

/// Runs `jwks`: the same pretty JWK Set JSON in text and JSON output.
pub(crate) async fn run(global: &Global) -> anyhow::Result<()> {
    let mut client = VerifierClient::new(channel(global).await?);
    let jwks = client.get_jwks(pb::GetJwksRequest {}).await?.into_inner();
    let set: Value = if jwks.jwks_json.trim().is_empty() {
        from_keys(&jwks.keys)
    } else {
        serde_json::from_str(&jwks.jwks_json).map_err(|e| anyhow::anyhow!("the broker's jwks_json is not JSON: {e}"))?
    };
    output::json(&set)
}

/// Builds the JWK Set from the structured keys when the broker sent no JSON.
fn from_keys(keys: &[pb::Jwk]) -> Value {
    let keys: Vec<Value> = keys
        .iter()
        .map(|k| {
            let mut key = serde_json::Map::new();
            for (name, value) in [
                ("kty", &k.kty),
                ("crv", &k.crv),
                ("x", &k.x),
                ("y", &k.y),
                ("kid", &k.kid),
                ("alg", &k.alg),
                ("use", &k.r#use),
            ] {
                if !value.is_empty() {
                    key.insert(name.to_owned(), Value::String(value.clone()));
                }
            }
            Value::Object(key)
        })
        .collect();
    serde_json::json!({ "keys": keys })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_become_a_jwk_set() {
        let set = from_keys(&[pb::Jwk {
            kty: "OKP".into(),
            crv: "Ed25519".into(),
            x: "abc".into(),
            kid: "k1".into(),
            alg: "EdDSA".into(),
            r#use: "sig".into(),
            ..Default::default()
        }]);
        assert_eq!(
            set,
            serde_json::json!({"keys": [{"kty": "OKP", "crv": "Ed25519", "x": "abc",
                "kid": "k1", "alg": "EdDSA", "use": "sig"}]})
        );
    }
}
