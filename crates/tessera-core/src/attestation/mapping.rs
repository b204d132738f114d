//! The rule that maps a verified token's claims to a SPIFFE ID.
//!
//! A template such as
//! `spiffe://prod.example/ns/{kubernetes.io.namespace}/sa/{kubernetes.io.serviceaccount.name}`
//! or `spiffe://ci.example/ci/{repository:path}`. A placeholder names a claim
//! by its dotted path (a key may itself contain dots, like `kubernetes.io`);
//! `{claim}` takes one path segment, `{claim:path}` one or more separated by
//! `/`. Every substituted segment must be 1-255 characters of
//! `[A-Za-z0-9._-]` and not `.` or `..`, so a claim value can never add a
//! segment, climb out of its place or change the trust domain, which must be
//! literal. The result is parsed as a [`SpiffeId`].

use std::fmt;

use crate::identity::SpiffeId;

/// Longest template, in bytes.
const MAX_TEMPLATE_LEN: usize = 512;
/// Longest substituted segment.
const MAX_SEGMENT_LEN: usize = 255;

/// Why claims could not be mapped, or a template is invalid. Names the claim
/// path (from config), never a claim value.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum MappingError {
    /// The template itself is invalid (a configuration error).
    #[error("mapping template is invalid: {0}")]
    Template(&'static str),
    /// A claim the template names is missing or not a string.
    #[error("claim `{0}` is missing or not a string")]
    Missing(String),
    /// A claim value is not usable as a SPIFFE ID path segment.
    #[error("claim `{0}` is not a valid SPIFFE ID path segment")]
    Segment(String),
    /// The result is not a valid SPIFFE ID.
    #[error("the mapped SPIFFE ID is invalid")]
    SpiffeId,
    /// The result is not in a trust domain the issuer may assert.
    #[error("the mapped SPIFFE ID is not in a trust domain this issuer may assert")]
    TrustDomain,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Part {
    Literal(String),
    Claim { path: Vec<String>, multi: bool },
}

/// A parsed mapping template.
#[derive(Clone, PartialEq, Eq)]
pub struct ClaimMapping {
    template: String,
    parts: Vec<Part>,
}

impl fmt::Debug for ClaimMapping {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("ClaimMapping").field(&self.template).finish()
    }
}

impl fmt::Display for ClaimMapping {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.template)
    }
}

impl ClaimMapping {
    /// Parses `template` (see the module docs).
    pub fn parse(template: &str) -> Result<Self, MappingError> {
        if template.len() > MAX_TEMPLATE_LEN {
            return Err(MappingError::Template("longer than 512 bytes"));
        }
        let rest = template
            .strip_prefix("spiffe://")
            .ok_or(MappingError::Template("must start with `spiffe://`"))?;
        let (domain, path) = rest
            .split_once('/')
            .ok_or(MappingError::Template("needs a path after the trust domain"))?;
        if domain.contains(['{', '}']) {
            return Err(MappingError::Template("the trust domain must be literal"));
        }
        let mut parts = vec![Part::Literal(format!("spiffe://{domain}/"))];
        let mut literal = String::new();
        let mut chars = path.chars();
        let mut placeholders = 0;
        while let Some(c) = chars.next() {
            match c {
                '{' => {
                    let mut inner = String::new();
                    loop {
                        match chars.next() {
                            Some('}') => break,
                            Some('{') | None => return Err(MappingError::Template("unbalanced `{`")),
                            Some(c) => inner.push(c),
                        }
                    }
                    let (name, multi) = match inner.split_once(':') {
                        None => (inner.as_str(), false),
                        Some((name, "path")) => (name, true),
                        Some(_) => return Err(MappingError::Template("the only placeholder modifier is `:path`")),
                    };
                    let path: Vec<String> = name.split('.').map(str::to_owned).collect();
                    if path
                        .iter()
                        .any(|s| s.is_empty() || !s.bytes().all(|b| b.is_ascii_alphanumeric() || b"_-".contains(&b)))
                    {
                        return Err(MappingError::Template("a claim path is dotted names of [A-Za-z0-9_-]"));
                    }
                    if !literal.is_empty() {
                        parts.push(Part::Literal(std::mem::take(&mut literal)));
                    }
                    parts.push(Part::Claim { path, multi });
                    placeholders += 1;
                }
                '}' => return Err(MappingError::Template("unbalanced `}`")),
                c => literal.push(c),
            }
        }
        if !literal.is_empty() {
            parts.push(Part::Literal(literal));
        }
        if placeholders == 0 {
            return Err(MappingError::Template(
                "needs at least one claim placeholder, e.g. `{sub}`",
            ));
        }
        // The template must yield a valid ID for a valid value of every claim.
        let sample = render(&parts, |_| Some("x".to_owned()))?;
        SpiffeId::parse(&sample).map_err(|_| MappingError::Template("does not yield a valid SPIFFE ID"))?;
        Ok(Self {
            template: template.to_owned(),
            parts,
        })
    }

    /// A rule that maps any claims to `id` itself: for a token whose
    /// subject is checked against `id` by its caller (an OAuth client
    /// assertion names its client exactly), never for an issuer's tokens.
    pub fn pinned(id: &SpiffeId) -> Self {
        Self {
            template: id.to_string(),
            parts: vec![Part::Literal(id.to_string())],
        }
    }

    /// The trust domain every mapped ID is in.
    pub fn trust_domain(&self) -> &str {
        self.template
            .strip_prefix("spiffe://")
            .and_then(|r| r.split('/').next())
            .unwrap_or_default()
    }

    /// The SPIFFE ID `claims` map to.
    pub fn map(&self, claims: &serde_json::Map<String, serde_json::Value>) -> Result<SpiffeId, MappingError> {
        let mut out = String::new();
        for part in &self.parts {
            match part {
                Part::Literal(l) => out.push_str(l),
                Part::Claim { path, multi } => {
                    let shown = path.join(".");
                    let value = resolve(claims, path).ok_or_else(|| MappingError::Missing(shown.clone()))?;
                    let valid = if *multi {
                        value.split('/').all(segment_ok)
                    } else {
                        segment_ok(value)
                    };
                    if !valid {
                        return Err(MappingError::Segment(shown));
                    }
                    out.push_str(value);
                }
            }
        }
        SpiffeId::parse(&out).map_err(|_| MappingError::SpiffeId)
    }
}

fn render(parts: &[Part], value: impl Fn(&[String]) -> Option<String>) -> Result<String, MappingError> {
    let mut out = String::new();
    for part in parts {
        match part {
            Part::Literal(l) => out.push_str(l),
            Part::Claim { path, .. } => {
                out.push_str(&value(path).ok_or_else(|| MappingError::Missing(path.join(".")))?);
            }
        }
    }
    Ok(out)
}

fn segment_ok(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= MAX_SEGMENT_LEN
        && s != "."
        && s != ".."
        && s.bytes().all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b))
}

/// The string at dotted `path`, where an object key may itself contain dots
/// (`kubernetes.io`): the longest matching key wins at each level.
fn resolve<'a>(object: &'a serde_json::Map<String, serde_json::Value>, path: &[String]) -> Option<&'a str> {
    for take in (1..=path.len()).rev() {
        let (head, tail) = path.split_at(take);
        let Some(value) = object.get(&head.join(".")) else {
            continue;
        };
        if tail.is_empty() {
            return value.as_str();
        }
        if let Some(inner) = value.as_object()
            && let Some(found) = resolve(inner, tail)
        {
            return Some(found);
        }
    }
    None
}
