//! X.509-SVID trust: one CA bundle per trust domain (PEM, or a SPIFFE
//! bundle's `x509-svid` keys), swapped at runtime when a bundle file
//! changes, and a rustls client verifier that pins each SVID to the bundle
//! of its own trust domain.
//!
//! A leaf naming exactly one SPIFFE ID in a domain with a non-empty bundle
//! is verified against that domain's bundle only (a CA of domain A can never
//! vouch for an SVID of domain B). Any other leaf is verified against every
//! bundle together, so it passes only if some trusted CA signed it, and the
//! gRPC edge then refuses its bad SAN or untrusted domain
//! ([`TrustStore::check_domain`]). Validity windows are checked against the
//! broker's injectable clock.
//!
//! The chain is verified once per connection, right after the handshake
//! ([`TrustStore::check_presented`]), not inside it: the handshake only
//! demands proof of the certificate's private key. A certificate that does
//! not verify (unknown CA, expired, not yet valid, a CA as leaf, an emptied
//! bundle) thus reaches the edge as a [`ClientCert`] that can only refuse:
//! the caller is told UNAUTHENTICATED with the reason, and the refusal is
//! audited with the certificate's digest, instead of a bare TLS alert that
//! gRPC clients report as UNAVAILABLE and that leaves no audit record. The
//! edge re-checks a connection's certificate when the bundles change or
//! it expires, so neither outlives a long-lived HTTP/2 connection.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError, RwLock};
use std::time::SystemTime;

use base64::Engine as _;
use rustls::client::danger::HandshakeSignatureValid;
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
    /// Counts loads: a connection checked under another generation is
    /// checked again.
    generation: u64,
}

/// The trust domains and their bundles, replaced whole on reload.
pub struct TrustStore {
    config: Vec<TrustDomainConfig>,
    loaded: RwLock<Arc<Loaded>>,
    provider: Arc<rustls::crypto::CryptoProvider>,
    clock: RwLock<Arc<dyn Clock>>,
}

impl std::fmt::Debug for TrustStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TrustStore")
            .field("domains", &self.config.iter().map(|d| &d.name).collect::<Vec<_>>())
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
    /// Loads every bundle of `config`.
    pub fn load(config: Vec<TrustDomainConfig>) -> Result<Self, BundleError> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let loaded = Self::build(&config, &provider, 0)?;
        Ok(Self {
            config,
            loaded: RwLock::new(Arc::new(loaded)),
            provider,
            clock: RwLock::new(Arc::new(SystemClock)),
        })
    }

    fn build(
        config: &[TrustDomainConfig],
        provider: &Arc<rustls::crypto::CryptoProvider>,
        generation: u64,
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
                Some(crate::tls::client_verifier(roots, provider.clone()).map_err(|e| file_error(path, e))?)
            };
            domains.insert(domain.name.clone(), verifier);
        }
        let union = if all.is_empty() {
            None
        } else {
            Some(
                crate::tls::client_verifier(all, provider.clone())
                    .map_err(|e| file_error(Path::new("(all bundles)"), e))?,
            )
        };
        Ok(Loaded {
            domains,
            union,
            stamp,
            generation,
        })
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
        // Built outside the lock: handshakes and calls keep reading the old
        // bundles meanwhile. One reloader calls this, so generations are
        // not raced.
        let loaded = Self::build(&self.config, &self.provider, self.current().generation + 1)?;
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

    /// The rustls verifier over this store (see the module docs: it leaves
    /// the chain to [`TrustStore::check_presented`]). With `mandatory`, a
    /// client without a certificate is refused in the handshake: the gRPC
    /// port when no JWT issuer is configured, since such a client could
    /// attest no other way and would only hold a connection slot.
    pub fn verifier(self: &Arc<Self>, mandatory: bool) -> Arc<dyn ClientCertVerifier> {
        Arc::new(StoreVerifier(self.clone(), mandatory))
    }

    fn unix_now(&self) -> i64 {
        self.clock
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .now()
            .timestamp()
    }

    /// Verifies `chain` (leaf first, as presented) against the bundles now:
    /// a leaf with one SPIFFE ID of a domain with a non-empty bundle against
    /// that bundle only, any other against all of them; validity by the
    /// store's clock; clientAuth when the leaf lists extended key usages.
    fn verify_chain(&self, loaded: &Loaded, chain: &[CertificateDer<'_>]) -> Result<(), String> {
        let Some((leaf, intermediates)) = chain.split_first() else {
            return Err("no client certificate".to_owned());
        };
        let now = UnixTime::since_unix_epoch(std::time::Duration::from_secs(
            u64::try_from(self.unix_now()).unwrap_or(0),
        ));
        let pinned = svid_domain(leaf).and_then(|d| loaded.domains.get(&d).cloned().flatten());
        let Some(verifier) = pinned.or_else(|| loaded.union.clone()) else {
            return Err("client certificate refused: no trust bundle holds a CA".to_owned());
        };
        verifier
            .verify_client_cert(leaf, intermediates, now)
            .map(drop)
            .map_err(|e| describe(&e))
    }

    /// Checks the certificate chain a TLS client presented, once, right
    /// after its handshake; the edge reads the outcome with
    /// [`TrustStore::trusted_leaf`].
    pub fn check_presented(&self, chain: Vec<CertificateDer<'static>>) -> ClientCert {
        let loaded = self.current();
        let verdict = self.verify_chain(&loaded, &chain);
        // The earliest notAfter of the chain: past it, the connection's
        // certificate no longer attests anyone.
        let not_after = chain
            .iter()
            .filter_map(|c| X509Certificate::from_der(c).ok())
            .map(|(_, c)| c.validity().not_after.timestamp())
            .min();
        ClientCert {
            chain: Arc::new(chain),
            checked: Arc::new(Mutex::new((loaded.generation, verdict))),
            not_after,
        }
    }

    /// The leaf of `cert` if its chain is trusted now: the verdict of
    /// [`TrustStore::check_presented`], verified again if the bundles were
    /// reloaded since, and refused once the chain has expired. `Err` is the
    /// refusal's reason (no secret: a certificate is public).
    pub fn trusted_leaf<'a>(&self, cert: &'a ClientCert) -> Result<&'a [u8], String> {
        let leaf = cert.leaf().ok_or_else(|| "no client certificate".to_owned())?;
        let loaded = self.current();
        let verdict = {
            let mut checked = cert.checked.lock().unwrap_or_else(PoisonError::into_inner);
            if checked.0 != loaded.generation {
                // Once per connection per reload, not once per call.
                *checked = (loaded.generation, self.verify_chain(&loaded, &cert.chain));
            }
            checked.1.clone()
        };
        verdict?;
        match cert.not_after {
            Some(not_after) if self.unix_now() > not_after => Err(format!(
                "client certificate refused: expired at {} during this connection",
                chrono::DateTime::from_timestamp(not_after, 0)
                    .map_or_else(|| not_after.to_string(), |t| t.to_rfc3339())
            )),
            Some(_) => Ok(leaf),
            None => Err("client certificate is not valid X.509".to_owned()),
        }
    }
}

/// Why a chain was refused, in words first, then rustls' own (which carries
/// the times of a validity failure).
fn describe(e: &rustls::Error) -> String {
    use rustls::CertificateError as C;
    let what = match e {
        rustls::Error::InvalidCertificate(c) => match c {
            C::Expired | C::ExpiredContext { .. } => "it has expired",
            C::NotValidYet | C::NotValidYetContext { .. } => "it is not valid yet",
            C::UnknownIssuer => "no CA in the trust bundle of its trust domain signed it",
            C::BadSignature => "its issuer's signature does not verify",
            C::InvalidPurpose | C::InvalidPurposeContext { .. } => {
                "its extended key usage does not allow client authentication"
            }
            C::Other(o) if o.to_string().contains("CaUsedAsEndEntity") => "it is a CA certificate, not an SVID",
            _ => "it does not verify",
        },
        _ => "it does not verify",
    };
    format!("client certificate refused: {what} ({e})")
}

/// The client certificate chain of one TLS connection and what
/// [`TrustStore::check_presented`] found of it. Only
/// [`TrustStore::trusted_leaf`] hands out the leaf, and only when the chain
/// is trusted, so no code can read an identity from an unverified
/// certificate by mistake.
#[derive(Clone)]
pub struct ClientCert {
    chain: Arc<Vec<CertificateDer<'static>>>,
    /// The bundles' generation it was last checked under, and the verdict;
    /// shared by every call of the connection.
    checked: Arc<Mutex<(u64, Result<(), String>)>>,
    not_after: Option<i64>,
}

impl ClientCert {
    /// The earliest notAfter of the presented chain: when this connection's
    /// certificate stops attesting anyone.
    pub fn not_after(&self) -> Option<chrono::DateTime<chrono::Utc>> {
        self.not_after.and_then(|t| chrono::DateTime::from_timestamp(t, 0))
    }

    fn leaf(&self) -> Option<&[u8]> {
        self.chain.first().map(AsRef::as_ref)
    }

    /// `sha256:<hex>` of the leaf's DER, trusted or not: the evidence an
    /// audit record names.
    pub fn evidence(&self) -> String {
        tessera_core::attestation::sha256_hex(self.leaf().unwrap_or_default())
    }
}

impl std::fmt::Debug for ClientCert {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let checked = self.checked.lock().unwrap_or_else(PoisonError::into_inner).clone();
        f.debug_struct("ClientCert")
            .field("evidence", &self.evidence())
            .field("generation", &checked.0)
            .field("verdict", &checked.1)
            .finish_non_exhaustive()
    }
}

#[derive(Debug)]
struct StoreVerifier(Arc<TrustStore>, bool);

impl ClientCertVerifier for StoreVerifier {
    fn offer_client_auth(&self) -> bool {
        true
    }

    /// Optional in the handshake when the caller may attest another way
    /// (a JWT; the HTTPS facade's public documents): it is then refused at
    /// the edge (UNAUTHENTICATED, audited) if it does not. Mandatory otherwise.
    fn client_auth_mandatory(&self) -> bool {
        self.1
    }

    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        &[]
    }

    /// Accepts any certificate here: the chain is verified right after the
    /// handshake ([`TrustStore::check_presented`]) so that a refusal
    /// reaches the caller and the audit trail. The handshake still proves
    /// possession of the certificate's key (the signature checks below).
    fn verify_client_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        Ok(ClientCertVerified::assertion())
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
        let store = Arc::new(TrustStore::load(config).unwrap());
        store.set_clock(Arc::new(FixedClock::at(
            chrono::DateTime::from_timestamp(T0, 0).unwrap(),
        )));
        store
    }

    fn verify(store: &Arc<TrustStore>, leaf: &[u8]) -> Result<(), String> {
        let presented = store.check_presented(vec![CertificateDer::from(leaf.to_vec())]);
        store.trusted_leaf(&presented).map(drop)
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

    /// A connection checked once keeps being checked: its certificate stops
    /// attesting when it expires or when its CA leaves the bundle, without
    /// the client reconnecting.
    #[test]
    fn an_open_connection_loses_its_certificate_on_expiry_and_on_reload() {
        let dir = tempdir("open");
        let a = ca("a");
        let store = store(&dir, &[("a.test", &a.pem)]);
        let leaf = CertificateDer::from(svid(&a, "spiffe://a.test/w", 2026, 2028));
        let presented = store.check_presented(vec![leaf.clone()]);
        assert_eq!(store.trusted_leaf(&presented).unwrap(), leaf.as_ref());
        assert!(format!("{presented:?}").contains(&presented.evidence()));
        // 2028-06: past its notAfter.
        store.set_clock(Arc::new(FixedClock::at(
            chrono::DateTime::from_timestamp(1_843_000_000, 0).unwrap(),
        )));
        let expired = store.trusted_leaf(&presented).unwrap_err();
        assert!(expired.contains("expired at 2028-01-01"), "{expired}");
        store.set_clock(Arc::new(FixedClock::at(
            chrono::DateTime::from_timestamp(T0, 0).unwrap(),
        )));
        store.trusted_leaf(&presented).unwrap();
        // Its CA replaced in the bundle: refused, though checked before.
        std::fs::write(dir.join("a.test.pem"), ca("a2").pem).unwrap();
        assert!(store.reload_if_changed().unwrap());
        let gone = store.trusted_leaf(&presented).unwrap_err();
        assert!(gone.contains("trust bundle"), "{gone}");
        // No certificate at all never yields a leaf.
        assert!(store.trusted_leaf(&store.check_presented(Vec::new())).is_err());
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
