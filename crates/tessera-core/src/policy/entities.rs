//! The Cedar entities policies read: every registered identity and every API
//! of the catalog. Built once (the registry and the catalog do not change
//! while the broker runs), checked against the schema, and shared by every
//! decision, so a request builds only its context.

use std::collections::HashMap;
use std::str::FromStr as _;

use cedar_policy::{Entities, Entity, EntityId, EntityTypeName, EntityUid, RestrictedExpression};

use super::PolicyError;
use super::engine::schema;
use crate::catalog::ApiCatalog;
use crate::identity::{IdentityRegistry, SpiffeId};
use crate::task::{Audience, TaskId};

/// What an unregistered identity's owner reads as: no registered identity
/// has an empty owner (the configuration refuses one), so it matches none.
const NO_OWNER: &str = "";

/// Entity type names, parsed once.
#[derive(Debug, Clone)]
struct Types {
    identity: EntityTypeName,
    api: EntityTypeName,
    task: EntityTypeName,
    broker: EntityTypeName,
}

impl Types {
    fn new() -> Result<Self, PolicyError> {
        let parse = |name: &str| EntityTypeName::from_str(name).map_err(|e| PolicyError::Entities(e.to_string()));
        Ok(Self {
            identity: parse("Identity")?,
            api: parse("Api")?,
            task: parse("Task")?,
            broker: parse("Broker")?,
        })
    }
}

/// The registry and the catalog as Cedar entities.
#[derive(Debug, Clone)]
pub struct PolicyEntities {
    entities: Entities,
    types: Types,
    identities: HashMap<SpiffeId, (EntityUid, String)>,
    apis: HashMap<Audience, EntityUid>,
    broker: EntityUid,
}

impl PolicyEntities {
    /// Entities for every identity of `registry` (enabled or not) and every
    /// API of `catalog`, validated against the schema.
    pub fn new(registry: &IdentityRegistry, catalog: &ApiCatalog) -> Result<Self, PolicyError> {
        let types = Types::new()?;
        let err = |e: &dyn std::fmt::Display| PolicyError::Entities(e.to_string());
        let mut entities = Vec::with_capacity(registry.len() + 1);
        let mut identities = HashMap::with_capacity(registry.len());
        for identity in registry.identities() {
            let uid = EntityUid::from_type_name_and_id(types.identity.clone(), EntityId::new(identity.id.as_str()));
            let attrs = HashMap::from([
                (
                    "kind".to_owned(),
                    RestrictedExpression::new_string(identity.kind.to_string()),
                ),
                (
                    "owner".to_owned(),
                    RestrictedExpression::new_string(identity.owner.clone()),
                ),
                (
                    "roles".to_owned(),
                    RestrictedExpression::new_set(
                        identity
                            .roles
                            .iter()
                            .map(|r| RestrictedExpression::new_string(r.to_string())),
                    ),
                ),
            ]);
            entities.push(Entity::new(uid.clone(), attrs, Default::default()).map_err(|e| err(&e))?);
            identities.insert(identity.id.clone(), (uid, identity.owner.clone()));
        }
        let mut apis = HashMap::new();
        for api in catalog.apis() {
            let uid = EntityUid::from_type_name_and_id(types.api.clone(), EntityId::new(api.audience.as_str()));
            let attrs = HashMap::from([(
                "schema_version".to_owned(),
                RestrictedExpression::new_string(api.schema_version.clone()),
            )]);
            entities.push(Entity::new(uid.clone(), attrs, Default::default()).map_err(|e| err(&e))?);
            apis.insert(api.audience.clone(), uid);
        }
        let broker = EntityUid::from_type_name_and_id(types.broker.clone(), EntityId::new("tesserad"));
        entities.push(Entity::new_no_attrs(broker.clone(), Default::default()));
        let schema = schema().map_err(|e| PolicyError::Entities(e.to_string()))?;
        let entities = Entities::from_entities(entities, Some(schema)).map_err(|e| err(&e))?;
        Ok(Self {
            entities,
            types,
            identities,
            apis,
            broker,
        })
    }

    /// The Cedar entities.
    pub(super) fn entities(&self) -> &Entities {
        &self.entities
    }

    /// `Identity::"<id>"`; an unregistered id gets a uid with no entity
    /// behind it, so reading its attributes is an evaluation error (deny).
    pub(super) fn identity_uid(&self, id: &SpiffeId) -> EntityUid {
        match self.identities.get(id) {
            Some((uid, _)) => uid.clone(),
            None => EntityUid::from_type_name_and_id(self.types.identity.clone(), EntityId::new(id.as_str())),
        }
    }

    /// The owner of `id`, or a value that matches no owner when unregistered.
    pub(super) fn owner_of(&self, id: &SpiffeId) -> &str {
        self.identities.get(id).map_or(NO_OWNER, |(_, owner)| owner.as_str())
    }

    /// `Api::"<audience>"`.
    pub(super) fn api_uid(&self, audience: &Audience) -> EntityUid {
        match self.apis.get(audience) {
            Some(uid) => uid.clone(),
            None => EntityUid::from_type_name_and_id(self.types.api.clone(), EntityId::new(audience.as_str())),
        }
    }

    /// `Task::"<id>"`.
    pub(super) fn task_uid(&self, id: &TaskId) -> EntityUid {
        EntityUid::from_type_name_and_id(self.types.task.clone(), EntityId::new(id.as_str()))
    }

    /// `Broker::"tesserad"`.
    pub(super) fn broker_uid(&self) -> EntityUid {
        self.broker.clone()
    }
}
