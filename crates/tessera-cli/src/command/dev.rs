//! `tessera dev init`: a throwaway development PKI and a `tesserad.toml` that
//! uses it, so `make run` and `tessera --as NAME ...` work on a laptop.
//!
//! Never for production: the CA's private key sits next to everything it
//! signed, and every identity is a demo.

use std::fmt::Write as _;
use std::fs;
use std::io::Write as _;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::{Path, PathBuf};

use anyhow::Context as _;
use clap::{Args, Subcommand};
use rcgen::string::Ia5String;
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose, SanType,
};
use serde::Serialize;
use time::{Duration, OffsetDateTime};

use crate::cli::Global;
use crate::output::{self, OutputFormat};

/// Development commands.
#[derive(Debug, Subcommand)]
pub(crate) enum DevCommand {
    /// Create a throwaway CA, broker certificate, demo SVIDs and tesserad.toml.
    Init(InitArgs),
    /// Print a fresh attestation JWT from the throwaway issuer of `dev init --jwt`.
    Jwt(JwtArgs),
}

/// `dev jwt`.
#[derive(Debug, Args)]
pub(crate) struct JwtArgs {
    /// The token's `sub`; it maps to `spiffe://<td>/agent/<subject>`.
    #[arg(long, default_value = "ci-runner")]
    subject: String,
    /// Lifetime of the token.
    #[arg(long, default_value = "10m", value_parser = humantime::parse_duration)]
    ttl: std::time::Duration,
    /// The token's `aud` [default: the broker's, for gRPC attestation]; an
    /// OAuth `jwt-bearer` assertion or client assertion names the
    /// authorization server (its issuer identifier or token endpoint URL).
    #[arg(long, value_name = "URL")]
    audience: Option<String>,
}

/// `dev init`.
#[derive(Debug, Args)]
pub(crate) struct InitArgs {
    /// Directory to create the files in [default: --dev-dir, i.e. .tessera-dev].
    #[arg(long, value_name = "DIR")]
    dir: Option<PathBuf>,
    /// SPIFFE trust domain of the broker and the demo identities.
    #[arg(long, default_value = "tessera.local", value_parser = parse_trust_domain)]
    trust_domain: String,
    /// Address tesserad listens on (written to tesserad.toml).
    #[arg(long, default_value = "127.0.0.1:7443", value_name = "ADDR")]
    listen: SocketAddr,
    /// Replace an existing development PKI and configuration.
    #[arg(long)]
    force: bool,
    /// Also create a throwaway OIDC issuer (JWT attestation) and `agent/ci-runner`.
    #[arg(long)]
    jwt: bool,
    /// Also serve the Unix-socket attestation listener at PATH, with
    /// `agent/local` attested by the current uid.
    #[arg(long, value_name = "PATH")]
    unix_socket: Option<PathBuf>,
}

/// CN of the development CA, so nobody mistakes it for a real one.
const CA_COMMON_NAME: &str = "Tessera development CA — not for production";
/// Default directory, as `--dev-dir`'s default.
const DEFAULT_DIR: &str = ".tessera-dev";
/// Default listen address, as `--listen`'s default.
const DEFAULT_LISTEN: &str = "127.0.0.1:7443";

/// A demo identity registered in the generated configuration.
struct DemoIdentity {
    /// File stem under `identities/` and the `--as` name.
    name: &'static str,
    /// SPIFFE ID path under the trust domain.
    path: &'static str,
    kind: &'static str,
    owner: &'static str,
    roles: &'static [&'static str],
    max_ttl: &'static str,
}

const DEMO_IDENTITIES: [DemoIdentity; 5] = [
    DemoIdentity {
        name: "orchestrator",
        path: "/orchestrator",
        kind: "service",
        // The baseline policy lets an orchestrator start tasks only for
        // agents its own owner owns.
        owner: "team-research",
        roles: &["orchestrator"],
        max_ttl: "1h",
    },
    DemoIdentity {
        name: "researcher",
        path: "/agent/researcher",
        kind: "agent",
        owner: "team-research",
        roles: &["agent"],
        max_ttl: "10m",
    },
    DemoIdentity {
        name: "writer",
        path: "/agent/writer",
        kind: "agent",
        owner: "team-research",
        roles: &["agent"],
        max_ttl: "10m",
    },
    DemoIdentity {
        name: "alice",
        path: "/operator/alice",
        kind: "human",
        owner: "security-oncall",
        roles: &["operator"],
        max_ttl: "15m",
    },
    DemoIdentity {
        name: "api-gateway",
        path: "/service/api-gateway",
        kind: "service",
        owner: "team-platform",
        roles: &["verifier"],
        max_ttl: "1h",
    },
];

/// What `init` needs; `now` is injected so tests control validity periods.
#[derive(Debug, Clone)]
pub(crate) struct InitOptions {
    /// Directory to write into (created if missing).
    pub(crate) dir: PathBuf,
    /// SPIFFE trust domain.
    pub(crate) trust_domain: String,
    /// tesserad's listen address.
    pub(crate) listen: SocketAddr,
    /// Overwrite an existing configuration.
    pub(crate) force: bool,
    /// The current time.
    pub(crate) now: OffsetDateTime,
}

/// What `init` created.
#[derive(Debug, Serialize)]
pub(crate) struct Summary {
    /// The directory.
    pub(crate) dir: PathBuf,
    /// `tesserad.toml`.
    pub(crate) config: PathBuf,
    /// The CA certificate (trust bundle) and its key.
    pub(crate) ca: PathBuf,
    /// The CA private key.
    pub(crate) ca_key: PathBuf,
    /// tesserad's server certificate.
    pub(crate) broker_cert: PathBuf,
    /// tesserad's server key.
    pub(crate) broker_key: PathBuf,
    /// The demo identities.
    pub(crate) identities: Vec<IdentityFiles>,
    /// The endpoint clients should use.
    pub(crate) endpoint: String,
    /// The trust domain.
    pub(crate) trust_domain: String,
}

/// One demo identity's files.
#[derive(Debug, Serialize)]
pub(crate) struct IdentityFiles {
    /// The `--as` name.
    pub(crate) name: String,
    /// Its SPIFFE ID (the SVID's only URI SAN).
    pub(crate) spiffe_id: String,
    /// The X.509-SVID.
    pub(crate) cert: PathBuf,
    /// Its private key.
    pub(crate) key: PathBuf,
}

/// Runs a dev command.
pub(crate) fn run(global: &Global, cmd: DevCommand) -> anyhow::Result<()> {
    let init_args = match cmd {
        DevCommand::Init(args) => args,
        DevCommand::Jwt(args) => {
            let now = OffsetDateTime::now_utc().unix_timestamp();
            let ttl = i64::try_from(args.ttl.as_secs()).unwrap_or(600);
            let token = attestation::sign(&global.dev_dir, &args.subject, args.audience.as_deref(), now, ttl)?;
            output::line(token)?;
            return Ok(());
        }
    };
    let (jwt, unix_socket) = (init_args.jwt, init_args.unix_socket.clone());
    let dir_given = init_args.dir.is_some();
    let opts = InitOptions {
        dir: init_args.dir.unwrap_or_else(|| global.dev_dir.clone()),
        trust_domain: init_args.trust_domain,
        listen: init_args.listen,
        force: init_args.force,
        now: OffsetDateTime::now_utc(),
    };
    let summary = init(&opts)?;
    let mut extra = String::new();
    if jwt {
        extra.push_str(&attestation::jwt_material(&opts.dir, &opts.trust_domain)?);
    }
    if let Some(socket) = &unix_socket {
        let socket = std::path::absolute(socket).with_context(|| format!("`{}`", socket.display()))?;
        extra.push_str(&attestation::unix_config(&opts.dir, &socket, &opts.trust_domain)?);
    }
    if !extra.is_empty() {
        let mut file = fs::OpenOptions::new()
            .append(true)
            .open(&summary.config)
            .with_context(|| format!("cannot write `{}`", summary.config.display()))?;
        file.write_all(extra.as_bytes())
            .with_context(|| format!("cannot write `{}`", summary.config.display()))?;
    }
    match global.output {
        OutputFormat::Json => output::json(&summary),
        OutputFormat::Text => print_summary(&summary, dir_given),
    }
}

/// Creates the development PKI and configuration in `opts.dir`.
///
/// Refuses when `tesserad.toml` exists unless `opts.force`. The configuration
/// is written last, so an interrupted run can simply be repeated.
pub(crate) fn init(opts: &InitOptions) -> anyhow::Result<Summary> {
    let td = &opts.trust_domain;
    parse_trust_domain(td).map_err(anyhow::Error::msg)?;
    let dir = &opts.dir;
    let config = dir.join("tesserad.toml");
    if config.exists() && !opts.force {
        anyhow::bail!(
            "`{}` already exists; pass --force to replace the development PKI and configuration",
            config.display()
        );
    }
    let identities_dir = dir.join("identities");
    fs::create_dir_all(&identities_dir).with_context(|| format!("cannot create `{}`", identities_dir.display()))?;

    let not_before = opts.now - Duration::hours(1);

    // The CA: self-signed, may only sign certificates and CRLs.
    let ca_key = KeyPair::generate()?;
    let mut ca_params = CertificateParams::default();
    ca_params.distinguished_name = DistinguishedName::new();
    ca_params.distinguished_name.push(DnType::CommonName, CA_COMMON_NAME);
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    ca_params.not_before = not_before;
    ca_params.not_after = opts.now + Duration::days(365);
    let ca_cert = ca_params.self_signed(&ca_key)?;
    let issuer = Issuer::from_params(&ca_params, &ca_key);
    let ca = dir.join("ca.pem");
    let ca_key_path = dir.join("ca.key.pem");
    write_public(&ca, &ca_cert.pem())?;
    write_private(&ca_key_path, &ca_key.serialize_pem())?;

    // tesserad's server certificate.
    let broker_key = KeyPair::generate()?;
    let mut broker_params = leaf_params(not_before, opts.now + Duration::days(365));
    broker_params.subject_alt_names = broker_sans(td, opts.listen.ip())?;
    broker_params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    let broker_cert = broker_params.signed_by(&broker_key, &issuer)?;
    let broker_cert_path = dir.join("broker.pem");
    let broker_key_path = dir.join("broker.key.pem");
    write_public(&broker_cert_path, &broker_cert.pem())?;
    write_private(&broker_key_path, &broker_key.serialize_pem())?;

    // X.509-SVIDs: empty subject, exactly one URI SAN, client auth only.
    let mut identities = Vec::with_capacity(DEMO_IDENTITIES.len());
    for demo in &DEMO_IDENTITIES {
        let spiffe_id = format!("spiffe://{td}{}", demo.path);
        let key = KeyPair::generate()?;
        let mut params = leaf_params(not_before, opts.now + Duration::days(30));
        params.subject_alt_names = vec![SanType::URI(Ia5String::try_from(spiffe_id.as_str())?)];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        let cert = params.signed_by(&key, &issuer)?;
        let cert_path = identities_dir.join(format!("{}.pem", demo.name));
        let key_path = identities_dir.join(format!("{}.key.pem", demo.name));
        write_public(&cert_path, &cert.pem())?;
        write_private(&key_path, &key.serialize_pem())?;
        identities.push(IdentityFiles {
            name: demo.name.to_owned(),
            spiffe_id,
            cert: cert_path,
            key: key_path,
        });
    }

    // The shipped baseline policy and, for editors, the schema it is checked against.
    let policies = dir.join("policies");
    fs::create_dir_all(&policies).with_context(|| format!("cannot create `{}`", policies.display()))?;
    write_public(
        &policies.join(tessera_core::policy::BASELINE_NAME),
        tessera_core::policy::BASELINE,
    )?;
    write_public(&policies.join("tessera.cedarschema"), tessera_core::policy::SCHEMA)?;

    write_public(&config, &render_config(td, opts.listen))?;

    Ok(Summary {
        dir: dir.clone(),
        config,
        ca,
        ca_key: ca_key_path,
        broker_cert: broker_cert_path,
        broker_key: broker_key_path,
        identities,
        endpoint: endpoint_for(opts.listen),
        trust_domain: td.clone(),
    })
}

/// A leaf: empty subject (rcgen's default CN is "rcgen self signed cert"),
/// `CA:FALSE`, digitalSignature only, with an authority key identifier.
fn leaf_params(not_before: OffsetDateTime, not_after: OffsetDateTime) -> CertificateParams {
    let mut params = CertificateParams::default();
    params.distinguished_name = DistinguishedName::new();
    params.is_ca = IsCa::ExplicitNoCa;
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.use_authority_key_identifier_extension = true;
    params.not_before = not_before;
    params.not_after = not_after;
    params
}

/// `localhost`, 127.0.0.1, ::1, the listen IP if it is a specific other one,
/// and `spiffe://<td>/tesserad`.
fn broker_sans(td: &str, listen: IpAddr) -> anyhow::Result<Vec<SanType>> {
    let mut ips = vec![IpAddr::V4(Ipv4Addr::LOCALHOST), IpAddr::V6(Ipv6Addr::LOCALHOST)];
    if !listen.is_unspecified() && !ips.contains(&listen) {
        ips.push(listen);
    }
    let mut sans = vec![SanType::DnsName(Ia5String::try_from("localhost")?)];
    sans.extend(ips.into_iter().map(SanType::IpAddress));
    sans.push(SanType::URI(Ia5String::try_from(format!("spiffe://{td}/tesserad"))?));
    Ok(sans)
}

/// The endpoint a client on this machine uses to reach `listen`.
fn endpoint_for(listen: SocketAddr) -> String {
    let ip = match listen.ip() {
        IpAddr::V4(ip) if ip.is_unspecified() => IpAddr::V4(Ipv4Addr::LOCALHOST),
        IpAddr::V6(ip) if ip.is_unspecified() => IpAddr::V6(Ipv6Addr::LOCALHOST),
        ip => ip,
    };
    format!("https://{}", SocketAddr::new(ip, listen.port()))
}

/// A SPIFFE trust domain: 1-255 of `[a-z0-9.-_]`.
fn parse_trust_domain(s: &str) -> Result<String, String> {
    let valid = !s.is_empty()
        && s.len() <= 255
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"-._".contains(&b));
    if valid {
        Ok(s.to_owned())
    } else {
        Err(format!(
            "`{s}` is not a SPIFFE trust domain (1-255 of lowercase letters, digits, `.`, `-`, `_`)"
        ))
    }
}

/// A TOML basic string: quoted, with `"`, `\` and control characters escaped.
fn quote(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if c.is_control() => {
                let _ = write!(out, "\\u{:04X}", u32::from(c));
            }
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// An API of the demo catalog.
struct DemoApi {
    audience: &'static str,
    schema_version: &'static str,
    /// Scope → class.
    scopes: &'static [(&'static str, &'static str)],
}

const DEMO_APIS: [DemoApi; 2] = [
    DemoApi {
        audience: "https://api.example.com/crm",
        schema_version: "2026-01",
        scopes: &[
            ("crm.contacts.list", "discover"),
            ("crm.contacts.read", "read"),
            ("crm.notes.read", "read"),
            ("crm.contacts.write", "write"),
        ],
    },
    DemoApi {
        audience: "https://api.example.com/payments",
        schema_version: "2026-03",
        scopes: &[
            ("payments.invoices.read", "read"),
            ("payments.transfers.create", "write"),
        ],
    },
];

/// High-impact scopes of the demo catalog: a request for one waits for a
/// person's approval (`tessera approvals approve`).
const DEMO_HIGH_IMPACT: [&str; 1] = ["payments.transfers.create"];

/// `tesserad.toml` for the development PKI. Relative paths resolve against
/// the configuration file's directory.
fn render_config(td: &str, listen: SocketAddr) -> String {
    let mut toml = String::new();
    let mut w = |line: String| {
        toml.push_str(&line);
        toml.push('\n');
    };
    w("# Tessera development configuration — generated by `tessera dev init`. Not for production.".to_owned());
    w("[server]".to_owned());
    w(format!("listen = {}", quote(&listen.to_string())));
    w(format!("instance_id = {}", quote("tesserad-dev")));
    w(String::new());
    w("[tls]".to_owned());
    w(format!("cert = {}", quote("broker.pem")));
    w(format!("key = {}", quote("broker.key.pem")));
    w(format!("trust_bundle = {}", quote("ca.pem")));
    w(format!("trust_domain = {}", quote(td)));
    w(String::new());
    w("[tokens]".to_owned());
    w(format!("issuer = {}", quote(&format!("https://{td}"))));
    w(format!("algorithm = {}", quote("ES256")));
    w(format!("default_ttl = {}", quote("5m")));
    w(format!("max_ttl = {}", quote("1h")));
    w(String::new());
    w("[store]".to_owned());
    w(format!("backend = {}", quote("memory")));
    w(String::new());
    w("[log]".to_owned());
    w(format!("level = {}", quote("info")));
    w(String::new());
    w("[policy]".to_owned());
    w(format!("dir = {}", quote("policies")));
    w(String::new());
    w("# The operator console on the OAuth facade (/console/): sign in with `tessera --as alice console`.".to_owned());
    w("[console]".to_owned());
    w("enabled = true".to_owned());
    for demo in &DEMO_IDENTITIES {
        let roles: Vec<String> = demo.roles.iter().map(|r| quote(r)).collect();
        w(String::new());
        w("[[identities]]".to_owned());
        w(format!("id = {}", quote(&format!("spiffe://{td}{}", demo.path))));
        w(format!("kind = {}", quote(demo.kind)));
        w(format!("owner = {}", quote(demo.owner)));
        w(format!("roles = [{}]", roles.join(", ")));
        w(format!("max_ttl = {}", quote(demo.max_ttl)));
    }
    for api in &DEMO_APIS {
        w(String::new());
        w("[[apis]]".to_owned());
        w(format!("audience = {}", quote(api.audience)));
        w(format!("schema_version = {}", quote(api.schema_version)));
        // The demo's one resource server serves every demo API.
        w(format!(
            "verifiers = [{}]",
            quote(&format!("spiffe://{td}/service/api-gateway"))
        ));
        w("[apis.scopes]".to_owned());
        for (scope, class) in api.scopes {
            if DEMO_HIGH_IMPACT.contains(scope) {
                w(format!(
                    "{} = {{ class = {}, high_impact = true }}",
                    quote(scope),
                    quote(class)
                ));
            } else {
                w(format!("{} = {}", quote(scope), quote(class)));
            }
        }
    }
    toml
}

fn write_public(path: &Path, contents: &str) -> anyhow::Result<()> {
    fs::write(path, contents).with_context(|| format!("cannot write `{}`", path.display()))
}

/// Writes a private key readable by the owner only (0600 on Unix), also when
/// the file already existed with wider permissions.
fn write_private(path: &Path, contents: &str) -> anyhow::Result<()> {
    let context = || format!("cannot write `{}`", path.display());
    let mut options = fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::{OpenOptionsExt as _, PermissionsExt as _};
        options.mode(0o600);
        let mut file = options.open(path).with_context(context)?;
        file.set_permissions(fs::Permissions::from_mode(0o600))
            .with_context(context)?;
        file.write_all(contents.as_bytes()).with_context(context)?;
    }
    #[cfg(not(unix))]
    {
        let mut file = options.open(path).with_context(context)?;
        file.write_all(contents.as_bytes()).with_context(context)?;
    }
    Ok(())
}

fn print_summary(summary: &Summary, dir_given: bool) -> anyhow::Result<()> {
    let rel = |p: &Path| p.strip_prefix(&summary.dir).unwrap_or(p).display().to_string();
    let dir = summary.dir.display();
    output::line(format_args!(
        "Created a development PKI and configuration in {dir} (not for production):"
    ))?;
    let mut rows = vec![
        (
            format!("{}, {}", rel(&summary.ca), rel(&summary.ca_key)),
            "development CA (trust bundle)".to_owned(),
        ),
        (
            format!("{}, {}", rel(&summary.broker_cert), rel(&summary.broker_key)),
            format!(
                "tesserad: localhost, 127.0.0.1, ::1, spiffe://{}/tesserad",
                summary.trust_domain
            ),
        ),
    ];
    for id in &summary.identities {
        rows.push((format!("{}, .key.pem", rel(&id.cert)), id.spiffe_id.clone()));
    }
    rows.push((rel(&summary.config), "tesserad configuration".to_owned()));
    let width = rows.iter().map(|(f, _)| f.chars().count()).max().unwrap_or(0);
    for (files, what) in &rows {
        output::line(format_args!("  {files:<width$}  {what}"))?;
    }

    let mut flags = String::new();
    if dir_given && summary.dir != Path::new(DEFAULT_DIR) {
        let _ = write!(flags, " --dev-dir {dir}");
    }
    if summary.endpoint != format!("https://{DEFAULT_LISTEN}") {
        let _ = write!(flags, " --endpoint {}", summary.endpoint);
    }
    let td = &summary.trust_domain;
    output::line("")?;
    output::line("Next:")?;
    output::line(format_args!(
        "  tesserad --config {}    (or `make run` for the default directory)",
        summary.config.display()
    ))?;
    output::line(format_args!(
        "  tessera{flags} --as orchestrator task start --id demo --agent spiffe://{td}/agent/researcher \\\n      \
         --allow \"https://api.example.com/crm crm.contacts.read crm.notes.read\" --ttl 15m"
    ))?;
    output::line(format_args!(
        "  TOKEN=$(tessera{flags} --as researcher token request --task demo \\\n      \
         --audience https://api.example.com/crm --scope crm.contacts.read)"
    ))?;
    output::line(format_args!(
        "  tessera{flags} --as api-gateway token inspect --verify - <<<\"$TOKEN\""
    ))?;
    Ok(())
}

mod attestation;

#[cfg(test)]
mod tests;
