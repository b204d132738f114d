//! The policy engine: a validated, immutable policy set and its hash.

use std::collections::HashMap;
use std::str::FromStr as _;
use std::sync::{Arc, OnceLock};

use cedar_policy::{
    ActionConstraint, Authorizer, Decision, Effect, EntityId, EntityTypeName, EntityUid, PolicyId, PolicySet, Request,
    Schema, ValidationMode, Validator,
};
use chrono::{DateTime, Utc};

use super::cache::DecisionKey;
use super::context::{self, PolicyQuery, TimeReads};
use super::entities::PolicyEntities;
use super::{Action, BASELINE, BASELINE_NAME, PolicyDecision, PolicyError, PolicyFile, PolicyLoadError, SCHEMA};
use crate::identity::VerifiedIdentity;

/// Most policies in one set.
pub const MAX_POLICIES: usize = 10_000;

/// The schema and its validator, parsed once per process.
struct Compiled {
    schema: Schema,
    validator: Validator,
    actions: Vec<EntityUid>,
}

fn compiled() -> Result<&'static Compiled, PolicyLoadError> {
    static COMPILED: OnceLock<Result<Compiled, String>> = OnceLock::new();
    COMPILED
        .get_or_init(|| {
            let (schema, _warnings) = Schema::from_cedarschema_str(SCHEMA).map_err(|e| e.to_string())?;
            let action_type = EntityTypeName::from_str("Action").map_err(|e| e.to_string())?;
            let actions = Action::ALL
                .iter()
                .map(|a| EntityUid::from_type_name_and_id(action_type.clone(), EntityId::new(a.as_str())))
                .collect();
            Ok(Compiled {
                validator: Validator::new(schema.clone()),
                schema,
                actions,
            })
        })
        .as_ref()
        .map_err(|e| PolicyLoadError::Schema(e.clone()))
}

/// The compiled-in schema.
pub(super) fn schema() -> Result<&'static Schema, PolicyLoadError> {
    compiled().map(|c| &c.schema)
}

/// What tesserad reads from one policy's annotations.
#[derive(Debug, Clone)]
struct Meta {
    /// `@id`, or `file:line`.
    id: Arc<str>,
    /// `@approval("required")`.
    approval: bool,
    /// `@max_ttl`.
    max_ttl: Option<u32>,
    /// `@max_blast_radius`.
    max_blast_radius: Option<u32>,
    /// `@reason`.
    reason: Option<String>,
}

/// A validated policy set, its annotations and its hash. Immutable: a reload
/// builds a new engine and swaps it in whole.
#[derive(Debug, Clone)]
pub struct PolicyEngine {
    policies: PolicySet,
    /// Per action (in [`Action::ALL`] order), the policies whose action
    /// scope can match it: the set Cedar evaluates for that action.
    by_action: Arc<Vec<PolicySet>>,
    meta: HashMap<PolicyId, Meta>,
    hash: Arc<str>,
    files: Vec<String>,
    /// The context values that change with time which the set reads.
    reads: TimeReads,
}

/// Splits `all` by action. A static policy whose action scope cannot match
/// an action (`action == B`, or `action in [..]` naming neither the action
/// nor a group it belongs to in the schema) is false for every request of
/// that action before its conditions are evaluated (scope is the first
/// conjunct), so it can neither decide nor err: leaving it out of that
/// action's set changes no decision and no diagnostic, and Cedar evaluates
/// a handful of policies per request instead of the whole set (which is
/// most of a decision's cost).
fn slice_by_action(all: &PolicySet, compiled: &Compiled) -> Result<Vec<PolicySet>, PolicyLoadError> {
    let action_entities = compiled
        .schema
        .action_entities()
        .map_err(|e| PolicyLoadError::Schema(e.to_string()))?;
    let mut slices = Vec::with_capacity(compiled.actions.len());
    for action in &compiled.actions {
        let mut scope: Vec<&EntityUid> = vec![action];
        if let Some(groups) = action_entities.ancestors(action) {
            scope.extend(groups);
        }
        let mut slice = PolicySet::new();
        for policy in all.policies() {
            let applies = match policy.action_constraint() {
                ActionConstraint::Any => true,
                ActionConstraint::Eq(uid) => &uid == action,
                ActionConstraint::In(uids) => uids.iter().any(|u| scope.contains(&u)),
            };
            if applies {
                slice
                    .add(policy.clone())
                    .map_err(|e| PolicyLoadError::Schema(e.to_string()))?;
            }
        }
        slices.push(slice);
    }
    Ok(slices)
}

/// Which of the context values that change with time (`hour`,
/// `task.remaining_secs`) the set reads. Cedar names attributes only
/// literally, so a policy that reads one mentions its name somewhere in its
/// JSON form (an access, a `has`, a record literal's key); any mention
/// counts. A policy that cannot be shown as JSON counts as reading both.
fn time_reads(all: &PolicySet) -> TimeReads {
    fn note(name: &str, reads: &mut TimeReads) {
        match name {
            "hour" => reads.hour = true,
            "remaining_secs" => reads.remaining_secs = true,
            _ => {}
        }
    }
    fn mentions(value: &serde_json::Value, reads: &mut TimeReads) {
        match value {
            serde_json::Value::String(s) => note(s, reads),
            serde_json::Value::Array(items) => items.iter().for_each(|v| mentions(v, reads)),
            serde_json::Value::Object(fields) => {
                for (key, v) in fields {
                    note(key, reads);
                    mentions(v, reads);
                }
            }
            _ => {}
        }
    }
    let mut reads = TimeReads::default();
    for policy in all.policies() {
        match policy.to_json() {
            Ok(json) => mentions(&json, &mut reads),
            Err(_) => return TimeReads::ALL,
        }
    }
    reads
}

/// 1-based line of byte `offset` in `text`.
fn line_of(text: &str, offset: usize) -> usize {
    text.get(..offset.min(text.len()))
        .map_or(1, |before| before.bytes().filter(|b| *b == b'\n').count() + 1)
}

/// The last path component of a file name, for policy ids and the hash.
fn base_name(name: &str) -> &str {
    name.rsplit(['/', '\\']).next().unwrap_or(name)
}

fn invalid(file: &str, line: usize, message: impl Into<String>) -> PolicyLoadError {
    PolicyLoadError::Invalid {
        file: file.to_owned(),
        line,
        message: message.into(),
    }
}

/// The first labelled offset of a Cedar diagnostic, if any.
fn first_offset(d: &dyn miette::Diagnostic) -> Option<usize> {
    d.labels().and_then(|mut labels| labels.next()).map(|l| l.offset())
}

/// A positive whole number annotation.
fn number(file: &str, line: usize, key: &str, value: &str) -> Result<u32, PolicyLoadError> {
    match value.parse::<u32>() {
        Ok(n) if n > 0 => Ok(n),
        _ => Err(invalid(
            file,
            line,
            format!("@{key}(\"{value}\") must be a whole number above 0"),
        )),
    }
}

impl PolicyEngine {
    /// Parses and validates `files` (strict mode, against [`SCHEMA`]).
    /// Every error names a file and, where it has one, a line.
    pub fn load(files: &[PolicyFile]) -> Result<Self, PolicyLoadError> {
        let compiled = compiled()?;
        if files.is_empty() {
            return Err(PolicyLoadError::Empty {
                path: "policy set".into(),
            });
        }
        let mut all = PolicySet::new();
        let mut meta = HashMap::new();
        // Cedar id → (file index, line), for validation errors.
        let mut origin: HashMap<PolicyId, (usize, usize)> = HashMap::new();
        let mut hasher = ring::digest::Context::new(&ring::digest::SHA256);
        for (index, file) in files.iter().enumerate() {
            let name = file.name.as_str();
            let base = base_name(name);
            hasher.update(base.as_bytes());
            hasher.update(&[0]);
            hasher.update(&(file.text.len() as u64).to_be_bytes());
            hasher.update(file.text.as_bytes());
            let parsed = PolicySet::from_str(&file.text).map_err(|e| {
                let line = first_offset(&e).map_or(1, |o| line_of(&file.text, o));
                invalid(name, line, e.to_string())
            })?;
            if let Some(template) = parsed.templates().next() {
                let line = file
                    .text
                    .find(&template.to_string())
                    .map_or(1, |o| line_of(&file.text, o));
                return Err(invalid(
                    name,
                    line,
                    "templates are not supported; write static policies",
                ));
            }
            // Cedar numbers a file's policies policy0, policy1, ... in source order.
            let mut policies: Vec<_> = parsed.policies().collect();
            policies.sort_by_key(|p| {
                p.id()
                    .to_string()
                    .strip_prefix("policy")
                    .and_then(|n| n.parse::<usize>().ok())
                    .unwrap_or(usize::MAX)
            });
            let mut pos = 0;
            for policy in policies {
                let text = policy.to_string();
                let line = match file.text.get(pos..).and_then(|rest| rest.find(&text)) {
                    Some(at) => {
                        pos += at + text.len();
                        line_of(&file.text, pos - text.len())
                    }
                    None => line_of(&file.text, pos),
                };
                let id: Arc<str> = match policy.annotation("id") {
                    Some(id) if !id.trim().is_empty() => id.into(),
                    Some(_) => return Err(invalid(name, line, "@id must not be empty")),
                    None => format!("{base}:{line}").into(),
                };
                let cedar_id = PolicyId::new(id.as_ref());
                if let Some((other, other_line)) = origin.get(&cedar_id) {
                    let other = files.get(*other).map_or("?", |f| f.name.as_str());
                    return Err(invalid(
                        name,
                        line,
                        format!("policy id `{id}` is already used at {other}:{other_line}"),
                    ));
                }
                let permit = policy.effect() == Effect::Permit;
                let mut m = Meta {
                    id: id.clone(),
                    approval: false,
                    max_ttl: None,
                    max_blast_radius: None,
                    reason: None,
                };
                for (key, value) in policy.annotations() {
                    match key {
                        "approval" => {
                            if value != "required" {
                                return Err(invalid(
                                    name,
                                    line,
                                    format!("@approval(\"{value}\"): the only value is \"required\""),
                                ));
                            }
                            m.approval = true;
                        }
                        "max_ttl" => m.max_ttl = Some(number(name, line, key, value)?),
                        "max_blast_radius" => m.max_blast_radius = Some(number(name, line, key, value)?),
                        "reason" => m.reason = Some(value.to_owned()),
                        _ => {}
                    }
                }
                if !permit && (m.approval || m.max_ttl.is_some() || m.max_blast_radius.is_some()) {
                    return Err(invalid(
                        name,
                        line,
                        "@approval, @max_ttl and @max_blast_radius belong on permit policies",
                    ));
                }
                all.add(policy.new_id(cedar_id.clone()))
                    .map_err(|e| invalid(name, line, e.to_string()))?;
                origin.insert(cedar_id.clone(), (index, line));
                meta.insert(cedar_id, m);
                if meta.len() > MAX_POLICIES {
                    return Err(PolicyLoadError::TooLarge {
                        path: name.to_owned(),
                        message: format!("more than {MAX_POLICIES} policies"),
                    });
                }
            }
        }
        if meta.is_empty() {
            return Err(PolicyLoadError::Empty {
                path: files.first().map_or_else(String::new, |f| f.name.clone()),
            });
        }
        let result = compiled.validator.validate(&all, ValidationMode::Strict);
        if let Some(e) = result.validation_errors().next() {
            let (file, policy_line) = origin.get(e.policy_id()).copied().unwrap_or((0, 1));
            let f = files.get(file);
            let text = f.map_or("", |f| f.text.as_str());
            // Cedar locates the error in the file the policy was parsed from.
            let line = first_offset(e)
                .filter(|o| *o < text.len())
                .map_or(policy_line, |o| line_of(text, o));
            return Err(invalid(
                f.map_or("?", |f| f.name.as_str()),
                line,
                format!("policy `{}`: {e}", e.policy_id()),
            ));
        }
        let digest = hasher.finish();
        let hash = crate::hex::lower(digest.as_ref());
        let by_action = Arc::new(slice_by_action(&all, compiled)?);
        let reads = time_reads(&all);
        Ok(Self {
            reads,
            policies: all,
            by_action,
            meta,
            hash: format!("sha256:{hash}").into(),
            files: files.iter().map(|f| f.name.clone()).collect(),
        })
    }

    /// The same engine with every action evaluating the whole set (what
    /// [`slice_by_action`] must be indistinguishable from).
    #[cfg(test)]
    pub(crate) fn unsliced(&self) -> Self {
        let mut copy = self.clone();
        copy.by_action = Arc::new(vec![self.policies.clone(); self.by_action.len()]);
        copy
    }

    /// The compiled-in baseline (`deploy/policies/baseline.cedar`).
    pub fn baseline() -> Result<Self, PolicyLoadError> {
        Self::load(&[PolicyFile::new(BASELINE_NAME, BASELINE)])
    }

    /// `sha256:<hex>` over the files' base names and texts, in order.
    pub fn hash(&self) -> &Arc<str> {
        &self.hash
    }

    /// Number of policies.
    pub fn len(&self) -> usize {
        self.meta.len()
    }

    /// Whether the set has no policy (never true of a loaded engine).
    pub fn is_empty(&self) -> bool {
        self.meta.is_empty()
    }

    /// The files the set was loaded from.
    pub fn files(&self) -> &[String] {
        &self.files
    }

    /// The ids of the policies, sorted.
    pub fn policy_ids(&self) -> Vec<Arc<str>> {
        let mut ids: Vec<_> = self.meta.values().map(|m| m.id.clone()).collect();
        ids.sort();
        ids
    }

    /// The key a decision of `query` for `who` at `now` is cached under (see
    /// [`super::DecisionCache`]), or `None` for a question not to cache.
    pub fn decision_key(
        &self,
        who: &VerifiedIdentity,
        query: &PolicyQuery<'_>,
        now: DateTime<Utc>,
    ) -> Option<DecisionKey> {
        context::decision_key(who, query, self.reads, now)
    }

    /// Decides `query` for `who` at `now`. An oversized question is an error
    /// (refused before evaluation); anything else is a decision, and a
    /// question that cannot be evaluated is a denial.
    pub fn authorize(
        &self,
        entities: &PolicyEntities,
        who: &VerifiedIdentity,
        query: &PolicyQuery<'_>,
        now: DateTime<Utc>,
    ) -> Result<PolicyDecision, PolicyError> {
        query.check_bounds()?;
        let action = query.action();
        let compiled = match compiled() {
            Ok(c) => c,
            Err(e) => return Ok(self.failed(vec![e.to_string()])),
        };
        let Some(action_uid) = Action::ALL
            .iter()
            .position(|a| *a == action)
            .and_then(|i| compiled.actions.get(i))
        else {
            return Ok(self.failed(vec![format!("unknown action {action}")]));
        };
        let (resource, context) = match context::build(entities, query, who.method(), now) {
            Ok(built) => built,
            Err(e) => return Ok(self.failed(vec![format!("policy context: {e}")])),
        };
        let principal = entities.identity_uid(who.id());
        let request = match Request::new(principal, action_uid.clone(), resource, context, None) {
            Ok(r) => r,
            Err(e) => return Ok(self.failed(vec![format!("policy request: {e}")])),
        };
        let policies = Action::ALL
            .iter()
            .position(|a| *a == action)
            .and_then(|i| self.by_action.get(i))
            .unwrap_or(&self.policies);
        let response = Authorizer::new().is_authorized(&request, policies, entities.entities());
        let diagnostics = response.diagnostics();
        let errors: Vec<String> = diagnostics.errors().map(ToString::to_string).collect();
        if !errors.is_empty() {
            return Ok(self.failed(errors));
        }
        let mut determining: Vec<&Meta> = diagnostics.reason().filter_map(|id| self.meta.get(id)).collect();
        // Cedar reports them as a set; sorted, a decision reads (and audits)
        // the same every time.
        determining.sort_by(|a, b| a.id.cmp(&b.id));
        let policy_ids: Vec<Arc<str>> = determining.iter().map(|m| m.id.clone()).collect();
        Ok(match response.decision() {
            Decision::Allow => PolicyDecision::Allow {
                approval_required: determining.iter().any(|m| m.approval),
                max_ttl: determining.iter().filter_map(|m| m.max_ttl).min(),
                max_blast_radius: determining.iter().filter_map(|m| m.max_blast_radius).min(),
                policy_ids,
                policy_hash: self.hash.clone(),
            },
            Decision::Deny => {
                let reasons = if determining.is_empty() {
                    vec![format!(
                        "no policy permits `{}` to {action} on {}",
                        who.id(),
                        query.describe_resource()
                    )]
                } else {
                    determining
                        .iter()
                        .map(|m| {
                            m.reason
                                .clone()
                                .unwrap_or_else(|| format!("forbidden by policy `{}`", m.id))
                        })
                        .collect()
                };
                PolicyDecision::Deny {
                    policy_ids,
                    reasons,
                    policy_hash: self.hash.clone(),
                }
            }
        })
    }

    /// The denial for a question that could not be evaluated.
    fn failed(&self, errors: Vec<String>) -> PolicyDecision {
        PolicyDecision::Deny {
            policy_ids: Vec::new(),
            reasons: errors
                .into_iter()
                .map(|e| format!("policy evaluation failed: {e}"))
                .collect(),
            policy_hash: self.hash.clone(),
        }
    }
}
