//! X.509-SVID trust: one CA bundle per trust domain (PEM, or a SPIFFE
//! bundle's `x509-svid` keys), swapped at runtime when a bundle file
//! changes, and a rustls client verifier that pins each SVID to the bundle
//! of its own trust domain.
//!
//! The handshake verifies a leaf naming exactly one SPIFFE ID in a domain
//! with a non-empty bundle against that domain's bundle only (a CA of
//! domain A can never vouch for an SVID of domain B). Any other leaf is
//! verified against every bundle together, so a certificate from no trusted
//! CA fails the handshake, and one from a trusted CA with a bad SAN or an
//! untrusted domain reaches the gRPC edge, which refuses it with an audit
//! record ([`TrustStore::check_domain`]). Validity windows are checked
//! against the broker's injectable clock.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, PoisonError, RwLock};
use std::time::SystemTime;

use base64::Engine as _;
use rustls::client::danger::HandshakeSignatureValid;
use rustls::server::WebPkiClientVerifier;
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::{DigitallySignedStruct, DistinguishedName, RootCertStore, SignatureScheme};
use rustls_pki_types::pem::PemObject as _;
use rustls_pki_types::{CertificateDer, UnixTime};
use tessera_core::clock::{Clock, SystemClock};
use tessera_core::identity::SpiffeId;
use x509_parser::prelude::{FromDer as _, GeneralName, X509Certificate};

use super::config::{BundleFile, TrustDomainConfig};

/// Why a trust bundle could not be loaded.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum BundleError {
    /// The file is missing or unreadable.
    #[error("trust bundle `{path}`: {message}")]
    File {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        message: String,
    },
}

fn file_error(path: &Path, message: impl std::fmt::Display) -> BundleError {
    BundleError::File {
        path: path.to_owned(),
        message: message.to_string(),
    }
}

/// The CA certificates of one bundle file; empty is allowed (and refuses
/// every SVID of the domain).
pub fn load_bundle(bundle: &BundleFile) -> Result<Vec<CertificateDer<'static>>, BundleError> {
    match bundle {
        BundleFile::Pem(path) => {
            let text = std::fs::read(path).map_err(|e| file_error(path, e))?;
            CertificateDer::pem_slice_iter(&text)
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| file_error(path, e))
        }
        BundleFile::Spiffe(path) => {
            let text = std::fs::read(path).map_err(|e| file_error(path, e))?;
            if text.len() > 1024 * 1024 {
                return Err(file_error(path, "larger than 1 MiB"));
            }
            spiffe_bundle_cas(&text).map_err(|e| file_error(path, e))
        }
    }
}

/// The `x509-svid` CA certificates of a SPIFFE bundle (a JWK Set whose
/// X.509 authorities carry `use: x509-svid` and one `x5c` certificate).
pub fn spiffe_bundle_cas(json: &[u8]) -> Result<Vec<CertificateDer<'static>>, &'static str> {
    #[derive(serde::Deserialize)]
    struct Bundle {
        keys: Vec<serde_json::Map<String, serde_json::Value>>,
    }
    let bundle: Bundle = serde_json::from_slice(json).map_err(|_| "not a SPIFFE bundle (a JSON object with `keys`)")?;
    let mut cas = Vec::new();
    for key in bundle.keys {
        if key.get("use").and_then(|u| u.as_str()) != Some("x509-svid") {
            continue;
        }
        let x5c = key
            .get("x5c")
            .and_then(|x| x.as_array())
            .ok_or("an x509-svid key has no `x5c`")?;
        let [cert] = x5c.as_slice() else {
            return Err("an x509-svid key must carry exactly one certificate in `x5c`");
        };
        let der = cert
            .as_str()
            .and_then(|c| base64::engine::general_purpose::STANDARD.decode(c).ok())
            .ok_or("an `x5c` entry is not base64")?;
        cas.push(CertificateDer::from(der));
    }
    Ok(cas)
}

/// The trust domain of the one SPIFFE URI SAN of `leaf`, if it has exactly one.
fn svid_domain(leaf: &[u8]) -> Option<String> {
    let (_, cert) = X509Certificate::from_der(leaf).ok()?;
    let san = cert.subject_alternative_name().ok()??;
    let mut uris = san.value.general_names.iter().filter_map(|n| match n {
        GeneralName::URI(u) => Some(*u),
        _ => None,
    });
    let (Some(uri), None) = (uris.next(), uris.next()) else {
        return None;
    };
    SpiffeId::parse(uri).ok().map(|id| id.trust_domain().to_owned())
}

#[derive(Debug, Default)]
struct Loaded {
    /// Per domain: its verifier, or `None` for an empty bundle.
    domains: HashMap<String, Option<Arc<dyn ClientCertVerifier>>>,
    /// Every non-empty bundle together.
    union: Option<Arc<dyn ClientCertVerifier>>,
    /// (path, mtime, len) of every bundle file, to notice changes.
    stamp: Vec<(PathBuf, Option<SystemTime>, u64)>,
}

/// The trust domains and their bundles, replaced whole on reload.
pub struct TrustStore {
    config: Vec<TrustDomainConfig>,
    loaded: RwLock<Arc<Loaded>>,
    provider: Arc<rustls::crypto::CryptoProvider>,
    clock: RwLock<Arc<dyn Clock>>,
    mandatory: bool,
}

impl std::fmt::Debug for TrustStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TrustStore")
            .field("domains", &self.config.iter().map(|d| &d.name).collect::<Vec<_>>())
            .field("mandatory", &self.mandatory)
            .finish()
    }
}

fn stamp(config: &[TrustDomainConfig]) -> Vec<(PathBuf, Option<SystemTime>, u64)> {
    config
        .iter()
        .map(|d| {
            let path = match &d.bundle {
                BundleFile::Pem(p) | BundleFile::Spiffe(p) => p.clone(),
            };
            let meta = std::fs::metadata(&path).ok();
            let modified = meta.as_ref().and_then(|m| m.modified().ok());
            let len = meta.map_or(0, |m| m.len());
            (path, modified, len)
        })
        .collect()
}

impl TrustStore {
    /// Loads every bundle of `config`. `mandatory`: whether the handshake
    /// requires a client certificate (false when another attestation
    /// method can authenticate a caller without one).
    pub fn load(config: Vec<TrustDomainConfig>, mandatory: bool) -> Result<Self, BundleError> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let loaded = Self::build(&config, &provider)?;
        Ok(Self {
            config,
            loaded: RwLock::new(Arc::new(loaded)),
            provider,
            clock: RwLock::new(Arc::new(SystemClock)),
            mandatory,
        })
    }

    fn build(
        config: &[TrustDomainConfig],
        provider: &Arc<rustls::crypto::CryptoProvider>,
    ) -> Result<Loaded, BundleError> {
        let stamp = stamp(config);
        let mut domains = HashMap::new();
        let mut all = RootCertStore::empty();
        for domain in config {
            let path = match &domain.bundle {
                BundleFile::Pem(p) | BundleFile::Spiffe(p) => p,
            };
            let mut roots = RootCertStore::empty();
            for ca in load_bundle(&domain.bundle)? {
                roots.add(ca.clone()).map_err(|e| file_error(path, e))?;
                all.add(ca).map_err(|e| file_error(path, e))?;
            }
            let verifier = if roots.is_empty() {
                None
            } else {
                Some(verifier(roots, provider.clone()).map_err(|e| file_error(path, e))?)
            };
            domains.insert(domain.name.clone(), verifier);
        }
        let union = if all.is_empty() {
            None
        } else {
            Some(verifier(all, provider.clone()).map_err(|e| file_error(Path::new("(all bundles)"), e))?)
        };
        Ok(Loaded { domains, union, stamp })
    }

    /// Checks validity windows against `clock` from now on.
    pub fn set_clock(&self, clock: Arc<dyn Clock>) {
        *self.clock.write().unwrap_or_else(PoisonError::into_inner) = clock;
    }

    fn current(&self) -> Arc<Loaded> {
        self.loaded.read().unwrap_or_else(PoisonError::into_inner).clone()
    }

    /// Re-reads the bundles if a file changed (mtime or size). Returns
    /// whether they were replaced; on an error the old bundles stay.
    pub fn reload_if_changed(&self) -> Result<bool, BundleError> {
        if stamp(&self.config) == self.current().stamp {
            return Ok(false);
        }
        let loaded = Self::build(&self.config, &self.provider)?;
        *self.loaded.write().unwrap_or_else(PoisonError::into_inner) = Arc::new(loaded);
        Ok(true)
    }

    /// Whether SVIDs of `domain` may be accepted: the domain is configured
    /// and its bundle is not empty. The message names the domain.
    pub fn check_domain(&self, domain: &str) -> Result<(), String> {
        match self.current().domains.get(domain) {
            Some(Some(_)) => Ok(()),
            Some(None) => Err(format!("the trust bundle of trust domain `{domain}` is empty")),
            None => Err(format!("`{domain}` is not a trusted domain")),
        }
    }

    /// Names of the configured trust domains.
    pub fn domains(&self) -> Vec<String> {
        self.config.iter().map(|d| d.name.clone()).collect()
    }

    /// The rustls verifier over this store.
    pub fn verifier(self: &Arc<Self>) -> Arc<dyn ClientCertVerifier> {
        Arc::new(StoreVerifier(self.clone()))
    }
}

fn verifier(
    roots: RootCertStore,
    provider: Arc<rustls::crypto::CryptoProvider>,
) -> Result<Arc<dyn ClientCertVerifier>, rustls::server::VerifierBuilderError> {
    WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider).build()
}

#[derive(Debug)]
struct StoreVerifier(Arc<TrustStore>);

impl ClientCertVerifier for StoreVerifier {
    fn offer_client_auth(&self) -> bool {
        true
    }

    fn client_auth_mandatory(&self) -> bool {
        self.0.mandatory
    }

    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        &[]
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        let loaded = self.0.current();
        let now = self.0.clock.read().unwrap_or_else(PoisonError::into_inner).now();
        let now = UnixTime::since_unix_epoch(std::time::Duration::from_secs(
            u64::try_from(now.timestamp()).unwrap_or(0),
        ));
        let pinned = svid_domain(end_entity).and_then(|d| loaded.domains.get(&d).cloned().flatten());
        let verifier = pinned
            .or_else(|| loaded.union.clone())
            .ok_or(rustls::Error::InvalidCertificate(
                rustls::CertificateError::UnknownIssuer,
            ))?;
        verifier.verify_client_cert(end_entity, intermediates, now)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.0.provider.signature_verification_algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.0.provider.signature_verification_algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.provider.signature_verification_algorithms.supported_schemes()
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing, reason = "tests")]

    use rcgen::{BasicConstraints, CertificateParams, DistinguishedName as Dn, IsCa, Issuer, KeyPair, SanType};
    use tessera_core::clock::FixedClock;

    use super::*;

    struct Ca {
        pem: String,
        der: Vec<u8>,
        issuer: Issuer<'static, KeyPair>,
    }

    fn ca(name: &str) -> Ca {
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::default();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.distinguished_name = Dn::new();
        params.distinguished_name.push(rcgen::DnType::CommonName, name);
        let cert = params.self_signed(&key).unwrap();
        Ca {
            pem: cert.pem(),
            der: cert.der().to_vec(),
            issuer: Issuer::new(params, key),
        }
    }

    /// An SVID valid from `not_before` to `not_after` (years, Jan 1st).
    fn svid(ca: &Ca, id: &str, not_before: i32, not_after: i32) -> Vec<u8> {
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::default();
        params.distinguished_name = Dn::new();
        params.subject_alt_names = vec![SanType::URI(id.try_into().unwrap())];
        params.not_before = rcgen::date_time_ymd(not_before, 1, 1);
        params.not_after = rcgen::date_time_ymd(not_after, 1, 1);
        params.signed_by(&key, &ca.issuer).unwrap().der().to_vec()
    }

    /// 2027-01-15: the clock of every check.
    const T0: i64 = 1_800_000_000;

    fn store(dir: &Path, domains: &[(&str, &str)]) -> Arc<TrustStore> {
        let config = domains
            .iter()
            .map(|(name, pem)| {
                let path = dir.join(format!("{name}.pem"));
                std::fs::write(&path, pem).unwrap();
                TrustDomainConfig {
                    name: (*name).to_owned(),
                    bundle: BundleFile::Pem(path),
                }
            })
            .collect();
        let store = Arc::new(TrustStore::load(config, true).unwrap());
        store.set_clock(Arc::new(FixedClock::at(
            chrono::DateTime::from_timestamp(T0, 0).unwrap(),
        )));
        store
    }

    fn verify(store: &Arc<TrustStore>, leaf: &[u8]) -> Result<(), rustls::Error> {
        store
            .verifier()
            .verify_client_cert(&CertificateDer::from(leaf.to_vec()), &[], UnixTime::now())
            .map(drop)
    }

    fn tempdir(tag: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("tessera-trust-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    #[test]
    fn each_domain_is_pinned_to_its_own_bundle() {
        let dir = tempdir("pin");
        let (a, b) = (ca("a"), ca("b"));
        let store = store(&dir, &[("a.test", &a.pem), ("b.test", &b.pem)]);
        verify(&store, &svid(&a, "spiffe://a.test/w", 2026, 2028)).unwrap();
        verify(&store, &svid(&b, "spiffe://b.test/w", 2026, 2028)).unwrap();
        // CA a vouching for domain b: refused in the handshake.
        assert!(verify(&store, &svid(&a, "spiffe://b.test/w", 2026, 2028)).is_err());
        // Unknown domain from a trusted CA: passes the chain check, refused at the edge.
        verify(&store, &svid(&a, "spiffe://c.test/w", 2026, 2028)).unwrap();
        assert!(
            store
                .check_domain("c.test")
                .unwrap_err()
                .contains("not a trusted domain")
        );
        // An unknown CA never passes.
        assert!(verify(&store, &svid(&ca("x"), "spiffe://a.test/w", 2026, 2028)).is_err());
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn validity_is_checked_with_the_injected_clock() {
        let dir = tempdir("clock");
        let a = ca("a");
        let store = store(&dir, &[("a.test", &a.pem)]);
        assert!(
            verify(&store, &svid(&a, "spiffe://a.test/w", 2025, 2026)).is_err(),
            "expired"
        );
        assert!(
            verify(&store, &svid(&a, "spiffe://a.test/w", 2028, 2029)).is_err(),
            "not yet valid"
        );
        verify(&store, &svid(&a, "spiffe://a.test/w", 2026, 2028)).unwrap();
        let _ = std::fs::remove_dir_all(&dir);
    }

    /// A15: a bundle updated to no keys refuses every SVID of its domain.
    #[test]
    fn a15_an_emptied_bundle_refuses_its_domain_after_reload() {
        let dir = tempdir("empty");
        let (a, b) = (ca("a"), ca("b"));
        let store = store(&dir, &[("a.test", &a.pem), ("b.test", &b.pem)]);
        let leaf = svid(&a, "spiffe://a.test/w", 2026, 2028);
        verify(&store, &leaf).unwrap();
        store.check_domain("a.test").unwrap();
        assert!(!store.reload_if_changed().unwrap(), "nothing changed");
        std::fs::write(dir.join("a.test.pem"), "").unwrap();
        assert!(store.reload_if_changed().unwrap());
        // Still chains to a bundle? No: a's CA is gone from the union too.
        assert!(verify(&store, &leaf).is_err());
        assert!(store.check_domain("a.test").unwrap_err().contains("is empty"));
        // Domain b is unaffected.
        verify(&store, &svid(&b, "spiffe://b.test/w", 2026, 2028)).unwrap();
        // A SPIFFE bundle with empty `keys` is the same.
        let spiffe = dir.join("b.json");
        std::fs::write(&spiffe, r#"{"keys": [], "spiffe_sequence": 2}"#).unwrap();
        assert!(load_bundle(&BundleFile::Spiffe(spiffe)).unwrap().is_empty());
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn spiffe_bundles_carry_x509_authorities() {
        let a = ca("a");
        let b64 = base64::engine::general_purpose::STANDARD.encode(&a.der);
        let json = format!(
            r#"{{"keys":[{{"use":"x509-svid","kty":"EC","crv":"P-256","x5c":["{b64}"]}},{{"use":"jwt-svid","kty":"EC","kid":"j"}}]}}"#
        );
        let cas = spiffe_bundle_cas(json.as_bytes()).unwrap();
        assert_eq!(cas.len(), 1);
        assert_eq!(cas[0].as_ref(), a.der.as_slice());
        assert!(spiffe_bundle_cas(br#"{"keys":[{"use":"x509-svid"}]}"#).is_err());
        assert!(spiffe_bundle_cas(b"[]").is_err());
    }
}
