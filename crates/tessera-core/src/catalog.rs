//! The API catalog: every audience the broker issues tokens for, its scopes,
//! each scope's class and whether it is high-impact (payments, deletions,
//! permission changes: a request touching one waits for a person's approval).

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};

use crate::error::ErrorKind;
use crate::identity::SpiffeId;
use crate::task::{Audience, Scope, ScopeCeiling, ScopeClass};

/// One API.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Api {
    /// Its audience.
    pub audience: Audience,
    /// The API's schema version, recorded with every grant for review.
    pub schema_version: String,
    /// Scope → class.
    pub scopes: BTreeMap<Scope, ScopeClass>,
    /// The scopes (among `scopes`) that are high-impact.
    #[serde(default)]
    pub high_impact: BTreeSet<Scope>,
    /// The identities that serve this audience (its resource servers): of
    /// the verifiers, only they learn about its tokens by introspection and
    /// may report their misuse. Empty: none does (operators still may).
    #[serde(default)]
    pub verifiers: BTreeSet<SpiffeId>,
}

/// Every API the broker knows.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ApiCatalog {
    apis: BTreeMap<Audience, Api>,
}

/// Why scopes were refused by the catalog.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum CatalogError {
    /// The audience is not in the catalog.
    #[error("unknown audience `{0}`")]
    UnknownAudience(Audience),
    /// A scope is not one of the audience's scopes.
    #[error("unknown scope `{scope}` for audience `{audience}`")]
    UnknownScope {
        /// The audience.
        audience: Audience,
        /// The scope.
        scope: Scope,
    },
    /// No scopes were given.
    #[error("no scopes requested")]
    NoScopes,
    /// The scopes are of more than one class.
    #[error("scopes mix the classes {0}; request one token per class")]
    MixedClasses(String),
}

impl CatalogError {
    /// Transport-free classification.
    pub fn kind(&self) -> ErrorKind {
        ErrorKind::InvalidArgument
    }
}

impl ApiCatalog {
    /// A catalog of `apis`.
    pub fn new(apis: impl IntoIterator<Item = Api>) -> Self {
        Self {
            apis: apis.into_iter().map(|a| (a.audience.clone(), a)).collect(),
        }
    }

    /// The API of `audience`.
    pub fn api(&self, audience: &Audience) -> Option<&Api> {
        self.apis.get(audience)
    }

    /// Every API, by audience.
    pub fn apis(&self) -> impl Iterator<Item = &Api> {
        self.apis.values()
    }

    /// Whether `who` is one of the verifiers that serve `audience` (an
    /// unknown audience is served by nobody).
    pub fn serves(&self, audience: &Audience, who: &SpiffeId) -> bool {
        self.apis.get(audience).is_some_and(|a| a.verifiers.contains(who))
    }

    /// Whether `scope` of `audience` is high-impact (unknown scopes are not).
    pub fn is_high_impact(&self, audience: &Audience, scope: &Scope) -> bool {
        self.apis.get(audience).is_some_and(|a| a.high_impact.contains(scope))
    }

    /// The high-impact scopes among `scopes` of `audience`.
    pub fn high_impact_scopes<'a>(
        &self,
        audience: &Audience,
        scopes: impl IntoIterator<Item = &'a Scope>,
    ) -> BTreeSet<Scope> {
        scopes
            .into_iter()
            .filter(|s| self.is_high_impact(audience, s))
            .cloned()
            .collect()
    }

    /// Checks that every scope is known for `audience` and that they share one
    /// class, which is returned.
    pub fn classify<'a>(
        &self,
        audience: &Audience,
        scopes: impl IntoIterator<Item = &'a Scope>,
    ) -> Result<ScopeClass, CatalogError> {
        let api = self
            .apis
            .get(audience)
            .ok_or_else(|| CatalogError::UnknownAudience(audience.clone()))?;
        let mut classes = BTreeSet::new();
        for scope in scopes {
            let class = api.scopes.get(scope).ok_or_else(|| CatalogError::UnknownScope {
                audience: audience.clone(),
                scope: scope.clone(),
            })?;
            classes.insert(*class);
        }
        let mut iter = classes.iter();
        match (iter.next(), iter.next()) {
            (None, _) => Err(CatalogError::NoScopes),
            (Some(class), None) => Ok(*class),
            (Some(_), Some(_)) => Err(CatalogError::MixedClasses(
                classes.iter().map(ToString::to_string).collect::<Vec<_>>().join(", "),
            )),
        }
    }

    /// Checks that every audience and scope of a task's ceiling is known
    /// (classes may mix: a task spans many tokens).
    pub fn check_ceiling(&self, ceiling: &ScopeCeiling) -> Result<(), CatalogError> {
        for (audience, scopes) in &ceiling.0 {
            let api = self
                .apis
                .get(audience)
                .ok_or_else(|| CatalogError::UnknownAudience(audience.clone()))?;
            if scopes.is_empty() {
                return Err(CatalogError::NoScopes);
            }
            if let Some(scope) = scopes.iter().find(|s| !api.scopes.contains_key(*s)) {
                return Err(CatalogError::UnknownScope {
                    audience: audience.clone(),
                    scope: scope.clone(),
                });
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(x: &str) -> Scope {
        Scope::parse(x).unwrap()
    }

    fn catalog() -> (ApiCatalog, Audience) {
        let aud = Audience::parse("crm").unwrap();
        let api = Api {
            audience: aud.clone(),
            schema_version: "1".into(),
            scopes: BTreeMap::from([
                (s("contacts.list"), ScopeClass::Discover),
                (s("contacts.read"), ScopeClass::Read),
                (s("notes.read"), ScopeClass::Read),
                (s("contacts.write"), ScopeClass::Write),
                (s("contacts.delete"), ScopeClass::Write),
            ]),
            high_impact: BTreeSet::from([s("contacts.delete")]),
            verifiers: BTreeSet::new(),
        };
        (ApiCatalog::new([api]), aud)
    }

    #[test]
    fn one_class_per_token() {
        let (c, aud) = catalog();
        assert_eq!(
            c.classify(&aud, &[s("contacts.read"), s("notes.read")]),
            Ok(ScopeClass::Read)
        );
        assert_eq!(c.classify(&aud, &[s("contacts.list")]), Ok(ScopeClass::Discover));
        assert_eq!(
            c.classify(&aud, &[s("contacts.read"), s("contacts.write")]),
            Err(CatalogError::MixedClasses("read, write".into()))
        );
        assert_eq!(c.classify(&aud, &[]), Err(CatalogError::NoScopes));
        assert!(matches!(
            c.classify(&aud, &[s("nope")]),
            Err(CatalogError::UnknownScope { .. })
        ));
        // High-impact scopes keep their class: the flag is orthogonal.
        assert_eq!(
            c.classify(&aud, &[s("contacts.write"), s("contacts.delete")]),
            Ok(ScopeClass::Write)
        );
        let other = Audience::parse("billing").unwrap();
        assert_eq!(
            c.classify(&other, &[s("contacts.read")]),
            Err(CatalogError::UnknownAudience(other))
        );
    }

    #[test]
    fn high_impact_scopes_are_flagged() {
        let (c, aud) = catalog();
        assert!(c.is_high_impact(&aud, &s("contacts.delete")));
        assert!(!c.is_high_impact(&aud, &s("contacts.write")));
        assert!(!c.is_high_impact(&aud, &s("nope")));
        assert!(!c.is_high_impact(&Audience::parse("billing").unwrap(), &s("contacts.delete")));
        assert_eq!(
            c.high_impact_scopes(&aud, &[s("contacts.write"), s("contacts.delete")]),
            BTreeSet::from([s("contacts.delete")])
        );
        assert!(c.high_impact_scopes(&aud, &[s("contacts.read")]).is_empty());
    }
}
