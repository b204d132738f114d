//! Tool-level limits: RFC 9396 `authorization_details` of type
//! [`MCP_TOOL`], which tools of one MCP server a token may call and what
//! their arguments may be.
//!
//! ```json
//! {"type": "mcp_tool", "server": "https://mcp.example.com/mcp",
//!  "tools": ["list_repos", "transfer"],
//!  "constraints": {"transfer": {"amount": {"max": 500}, "currency": {"eq": "EUR"}}}}
//! ```
//!
//! One parse ([`ToolGrant::parse`]), one subset check
//! ([`ToolGrant::is_within`], for a request against a task's ceiling and a
//! delegated child against its parent) and one call check
//! ([`ToolGrant::permits`], for resource servers). The Python SDK mirrors
//! all three; `tests/vectors/tool_grants.json` holds both to the same
//! verdicts.
//!
//! The constraint language is small and closed. Per argument, an object of
//! one or more operators, all of which must hold:
//! - `eq`: a string, number or boolean the argument must equal;
//! - `one_of`: 1 to [`MAX_ONE_OF`] such values, the argument equals one;
//! - `max`, `min`: numbers; the argument must be a JSON number (not a
//!   boolean, not a numeric string) `<=` / `>=` it;
//! - `prefix`: a non-empty string the argument (a string) starts with.
//!
//! Numbers compare as IEEE doubles (`500` equals `500.0`); strings exactly
//! (no case folding or normalization); a string never equals a number. A
//! constrained argument that is missing, `null` or of another type is
//! refused (fail closed); arguments without constraints are not looked at.
//! Unknown operators, members or types, empty lists and objects, and
//! anything beyond the bounds below are malformed: the whole detail is
//! refused, never partly read.

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use serde_json::{Map, Number, Value};

use crate::error::ErrorKind;

/// The `type` of a tool-level authorization detail.
pub const MCP_TOOL: &str = "mcp_tool";
/// Most tools in one detail.
pub const MAX_TOOLS: usize = 32;
/// Most constrained arguments per tool.
pub const MAX_CONSTRAINED_ARGS: usize = 16;
/// Most values in one `one_of`.
pub const MAX_ONE_OF: usize = 32;
/// Longest tool or argument name, in UTF-8 bytes.
pub const MAX_NAME_BYTES: usize = 128;
/// Longest string value (`eq`, `one_of`, `prefix`), in UTF-8 bytes.
pub const MAX_STRING_BYTES: usize = 256;
/// Longest `server`, in UTF-8 bytes.
pub const MAX_SERVER_BYTES: usize = 2048;
/// Most tool-level details in one ceiling or token.
pub const MAX_DETAILS: usize = 8;

/// Why a detail is refused or a call is not permitted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ToolGrantError {
    /// Not an object of a type this broker knows.
    #[error("unknown authorization details type `{0}`; supported: `mcp_tool`")]
    UnknownType(String),
    /// Not of the documented shape or beyond the bounds.
    #[error("malformed `mcp_tool` authorization detail: {0}")]
    Malformed(String),
    /// Wider than the ceiling (or the parent) it must stay within.
    #[error("`mcp_tool` authorization detail is wider than {within}: {why}")]
    Wider {
        /// `the task's ceiling` or `the parent token`.
        within: &'static str,
        /// What is wider.
        why: String,
    },
    /// A tool call the detail does not permit.
    #[error("{0}")]
    NotPermitted(String),
}

impl ToolGrantError {
    /// Transport-free classification.
    pub fn kind(&self) -> ErrorKind {
        match self {
            Self::UnknownType(_) | Self::Malformed(_) => ErrorKind::InvalidArgument,
            Self::Wider { .. } | Self::NotPermitted(_) => ErrorKind::PermissionDenied,
        }
    }
}

/// The constraint on one argument: every operator present must hold.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ArgConstraint {
    /// The argument equals this string, number or boolean.
    pub eq: Option<Value>,
    /// The argument equals one of these.
    pub one_of: Option<Vec<Value>>,
    /// The argument is a number at most this.
    pub max: Option<Number>,
    /// The argument is a number at least this.
    pub min: Option<Number>,
    /// The argument is a string starting with this.
    pub prefix: Option<String>,
}

/// One `mcp_tool` authorization detail, valid once parsed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ToolGrant {
    /// The MCP server (its resource URL, the token's audience).
    pub server: String,
    /// The tools that may be called.
    pub tools: BTreeSet<String>,
    /// Tool → argument → constraint. Every tool named is in `tools`.
    pub constraints: BTreeMap<String, BTreeMap<String, ArgConstraint>>,
}

fn malformed(why: impl Into<String>) -> ToolGrantError {
    ToolGrantError::Malformed(why.into())
}

fn name(value: &str, what: &str) -> Result<String, ToolGrantError> {
    if value.is_empty() || value.len() > MAX_NAME_BYTES {
        return Err(malformed(format!("a {what} name is 1 to {MAX_NAME_BYTES} bytes")));
    }
    Ok(value.to_owned())
}

/// A value `eq` and `one_of` may hold: a bounded string, a finite number or
/// a boolean.
fn scalar(value: &Value) -> Result<Value, ToolGrantError> {
    match value {
        Value::String(s) if s.len() <= MAX_STRING_BYTES => Ok(value.clone()),
        Value::String(_) => Err(malformed(format!("a string value is at most {MAX_STRING_BYTES} bytes"))),
        Value::Number(n) if n.as_f64().is_some_and(f64::is_finite) => Ok(value.clone()),
        Value::Bool(_) => Ok(value.clone()),
        _ => Err(malformed("`eq` and `one_of` values are strings, numbers or booleans")),
    }
}

fn number(value: &Value, op: &str) -> Result<Number, ToolGrantError> {
    match value {
        Value::Number(n) if n.as_f64().is_some_and(f64::is_finite) => Ok(n.clone()),
        _ => Err(malformed(format!("`{op}` is a number"))),
    }
}

/// The argument's number, if it is one (a boolean is not).
fn as_number(value: &Value) -> Option<f64> {
    match value {
        Value::Number(n) => n.as_f64().filter(|f| f.is_finite()),
        _ => None,
    }
}

/// Equality of constraint values: strings exactly, numbers as doubles,
/// booleans; never across types.
fn same(a: &Value, b: &Value) -> bool {
    match (a, b) {
        (Value::String(a), Value::String(b)) => a == b,
        (Value::Bool(a), Value::Bool(b)) => a == b,
        (Value::Number(_), Value::Number(_)) => as_number(a).is_some() && as_number(a) == as_number(b),
        _ => false,
    }
}

fn f(n: &Number) -> f64 {
    n.as_f64().unwrap_or(f64::NAN)
}

impl ArgConstraint {
    fn parse(value: &Value) -> Result<Self, ToolGrantError> {
        let Value::Object(ops) = value else {
            return Err(malformed("an argument constraint is an object of operators"));
        };
        if ops.is_empty() {
            return Err(malformed("an argument constraint has at least one operator"));
        }
        let mut c = Self::default();
        for (op, v) in ops {
            match op.as_str() {
                "eq" => c.eq = Some(scalar(v)?),
                "one_of" => {
                    let Value::Array(list) = v else {
                        return Err(malformed("`one_of` is an array"));
                    };
                    if list.is_empty() || list.len() > MAX_ONE_OF {
                        return Err(malformed(format!("`one_of` holds 1 to {MAX_ONE_OF} values")));
                    }
                    c.one_of = Some(list.iter().map(scalar).collect::<Result<_, _>>()?);
                }
                "max" => c.max = Some(number(v, "max")?),
                "min" => c.min = Some(number(v, "min")?),
                "prefix" => match v {
                    Value::String(s) if !s.is_empty() && s.len() <= MAX_STRING_BYTES => c.prefix = Some(s.clone()),
                    _ => {
                        return Err(malformed(format!(
                            "`prefix` is a string of 1 to {MAX_STRING_BYTES} bytes"
                        )));
                    }
                },
                other => {
                    return Err(malformed(format!(
                        "unknown operator `{}`; supported: eq, one_of, max, min, prefix",
                        other.chars().take(32).collect::<String>()
                    )));
                }
            }
        }
        Ok(c)
    }

    fn to_value(&self) -> Value {
        // Members in a fixed order, so the JSON (and any hash of it) is
        // canonical whatever serde_json's map is.
        let mut out = Map::new();
        if let Some(v) = &self.eq {
            out.insert("eq".to_owned(), v.clone());
        }
        if let Some(n) = &self.max {
            out.insert("max".to_owned(), Value::Number(n.clone()));
        }
        if let Some(n) = &self.min {
            out.insert("min".to_owned(), Value::Number(n.clone()));
        }
        if let Some(list) = &self.one_of {
            out.insert("one_of".to_owned(), Value::Array(list.clone()));
        }
        if let Some(p) = &self.prefix {
            out.insert("prefix".to_owned(), Value::String(p.clone()));
        }
        Value::Object(out)
    }

    /// Whether `value` satisfies every operator.
    pub fn accepts(&self, value: &Value) -> bool {
        self.eq.as_ref().is_none_or(|e| same(e, value))
            && self.one_of.as_ref().is_none_or(|l| l.iter().any(|e| same(e, value)))
            && self
                .max
                .as_ref()
                .is_none_or(|m| as_number(value).is_some_and(|v| v <= f(m)))
            && self
                .min
                .as_ref()
                .is_none_or(|m| as_number(value).is_some_and(|v| v >= f(m)))
            && self
                .prefix
                .as_ref()
                .is_none_or(|p| value.as_str().is_some_and(|s| s.starts_with(p.as_str())))
    }

    /// Whether every value `self` accepts, `wider` accepts too. Sound, not
    /// complete: when unsure, `false` (the request is refused as wider).
    fn implies(&self, wider: &Self) -> bool {
        // A finite candidate set (from `eq` or `one_of`): check each value
        // `self` accepts against `wider`.
        let finite = self.eq.as_ref().map(std::slice::from_ref).or(self.one_of.as_deref());
        if let Some(candidates) = finite {
            return candidates.iter().filter(|v| self.accepts(v)).all(|v| wider.accepts(v));
        }
        // Otherwise each of `wider`'s operators needs its counterpart.
        wider.eq.is_none()
            && wider.one_of.is_none()
            && wider
                .max
                .as_ref()
                .is_none_or(|m| self.max.as_ref().is_some_and(|s| f(s) <= f(m)))
            && wider
                .min
                .as_ref()
                .is_none_or(|m| self.min.as_ref().is_some_and(|s| f(s) >= f(m)))
            && wider
                .prefix
                .as_ref()
                .is_none_or(|p| self.prefix.as_ref().is_some_and(|s| s.starts_with(p.as_str())))
    }
}

impl ToolGrant {
    /// Parses one authorization detail. An object whose `type` is not
    /// [`MCP_TOOL`] is [`ToolGrantError::UnknownType`]; anything else not of
    /// the documented shape is [`ToolGrantError::Malformed`].
    pub fn parse(value: &Value) -> Result<Self, ToolGrantError> {
        let Value::Object(members) = value else {
            return Err(malformed("an authorization detail is a JSON object"));
        };
        match members.get("type") {
            Some(Value::String(t)) if t == MCP_TOOL => {}
            Some(Value::String(t)) => {
                return Err(ToolGrantError::UnknownType(t.chars().take(64).collect()));
            }
            _ => return Err(malformed("an authorization detail has a string `type`")),
        }
        if let Some(extra) = members
            .keys()
            .find(|k| !["type", "server", "tools", "constraints"].contains(&k.as_str()))
        {
            return Err(malformed(format!(
                "unknown member `{}`; an `mcp_tool` detail has type, server, tools and constraints",
                extra.chars().take(32).collect::<String>()
            )));
        }
        let server = match members.get("server") {
            Some(Value::String(s)) if !s.is_empty() && s.len() <= MAX_SERVER_BYTES => s.clone(),
            _ => {
                return Err(malformed(format!(
                    "`server` is a string of 1 to {MAX_SERVER_BYTES} bytes"
                )));
            }
        };
        let Some(Value::Array(list)) = members.get("tools") else {
            return Err(malformed("`tools` is an array of tool names"));
        };
        if list.is_empty() || list.len() > MAX_TOOLS {
            return Err(malformed(format!("`tools` holds 1 to {MAX_TOOLS} names")));
        }
        let mut tools = BTreeSet::new();
        for tool in list {
            let Value::String(tool) = tool else {
                return Err(malformed("`tools` is an array of tool names"));
            };
            if !tools.insert(name(tool, "tool")?) {
                return Err(malformed("`tools` names a tool twice"));
            }
        }
        let mut constraints = BTreeMap::new();
        match members.get("constraints") {
            None => {}
            Some(Value::Object(by_tool)) => {
                for (tool, args) in by_tool {
                    if !tools.contains(tool) {
                        return Err(malformed("`constraints` names a tool that is not in `tools`"));
                    }
                    let Value::Object(args) = args else {
                        return Err(malformed("a tool's constraints are an object of arguments"));
                    };
                    if args.is_empty() || args.len() > MAX_CONSTRAINED_ARGS {
                        return Err(malformed(format!(
                            "a tool constrains 1 to {MAX_CONSTRAINED_ARGS} arguments"
                        )));
                    }
                    let mut parsed = BTreeMap::new();
                    for (arg, c) in args {
                        parsed.insert(name(arg, "argument")?, ArgConstraint::parse(c)?);
                    }
                    constraints.insert(tool.clone(), parsed);
                }
            }
            Some(_) => return Err(malformed("`constraints` is an object: tool → argument → operators")),
        }
        Ok(Self {
            server,
            tools,
            constraints,
        })
    }

    /// The canonical JSON: members and operators in a fixed order,
    /// `constraints` omitted when empty.
    pub fn to_value(&self) -> Value {
        let mut out = Map::new();
        out.insert("type".to_owned(), Value::String(MCP_TOOL.to_owned()));
        out.insert("server".to_owned(), Value::String(self.server.clone()));
        out.insert(
            "tools".to_owned(),
            Value::Array(self.tools.iter().cloned().map(Value::String).collect()),
        );
        if !self.constraints.is_empty() {
            let by_tool = self
                .constraints
                .iter()
                .map(|(tool, args)| {
                    let args = args.iter().map(|(a, c)| (a.clone(), c.to_value())).collect();
                    (tool.clone(), Value::Object(args))
                })
                .collect();
            out.insert("constraints".to_owned(), Value::Object(by_tool));
        }
        Value::Object(out)
    }

    /// Whether this detail is no wider than `ceiling`: the same server,
    /// tools a subset of its tools, and every constraint `ceiling` puts on
    /// one of those tools present here and at least as strict. `within`
    /// names the ceiling in the error (`the task's ceiling`, `the parent token`).
    pub fn is_within(&self, ceiling: &Self, within: &'static str) -> Result<(), ToolGrantError> {
        let wider = |why: String| ToolGrantError::Wider { within, why };
        if self.server != ceiling.server {
            return Err(wider("another `server`".to_owned()));
        }
        if let Some(tool) = self.tools.difference(&ceiling.tools).next() {
            return Err(wider(format!("tool `{tool}` is not allowed")));
        }
        for tool in &self.tools {
            let Some(limits) = ceiling.constraints.get(tool) else {
                continue;
            };
            let mine = self.constraints.get(tool);
            for (arg, limit) in limits {
                if !mine.and_then(|m| m.get(arg)).is_some_and(|c| c.implies(limit)) {
                    return Err(wider(format!("argument `{arg}` of tool `{tool}` is less constrained")));
                }
            }
        }
        Ok(())
    }

    /// Whether a call of `tool` with `args` (the MCP `tools/call`
    /// `arguments`: an object, or `null` for none) is permitted.
    pub fn permits(&self, tool: &str, args: &Value) -> Result<(), ToolGrantError> {
        if !self.tools.contains(tool) {
            return Err(ToolGrantError::NotPermitted(format!(
                "the token does not allow tool `{}`",
                tool.chars().take(MAX_NAME_BYTES).collect::<String>()
            )));
        }
        let Some(limits) = self.constraints.get(tool) else {
            return Ok(());
        };
        let empty = Map::new();
        let args = match args {
            Value::Object(args) => args,
            Value::Null => &empty,
            _ => {
                return Err(ToolGrantError::NotPermitted(
                    "the tool's arguments are not an object".to_owned(),
                ));
            }
        };
        for (arg, limit) in limits {
            if !args.get(arg).is_some_and(|v| limit.accepts(v)) {
                return Err(ToolGrantError::NotPermitted(format!(
                    "the token does not allow this value of argument `{arg}` of tool `{tool}`"
                )));
            }
        }
        Ok(())
    }
}

impl Serialize for ToolGrant {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        self.to_value().serialize(s)
    }
}

impl<'de> Deserialize<'de> for ToolGrant {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let value = Value::deserialize(d)?;
        Self::parse(&value).map_err(serde::de::Error::custom)
    }
}

/// Parses an `authorization_details` array of `mcp_tool` details: 1 to
/// [`MAX_DETAILS`], at most one per server. Any other type is refused.
pub fn parse_details(value: &Value) -> Result<Vec<ToolGrant>, ToolGrantError> {
    let Value::Array(list) = value else {
        return Err(malformed("`authorization_details` is a JSON array"));
    };
    if list.is_empty() || list.len() > MAX_DETAILS {
        return Err(malformed(format!(
            "`authorization_details` holds 1 to {MAX_DETAILS} objects"
        )));
    }
    let grants = list.iter().map(ToolGrant::parse).collect::<Result<Vec<_>, _>>()?;
    check_one_per_server(&grants)?;
    Ok(grants)
}

/// At most one detail per server (so "the" limits of a server are never
/// ambiguous), at most [`MAX_DETAILS`].
pub fn check_one_per_server(grants: &[ToolGrant]) -> Result<(), ToolGrantError> {
    if grants.len() > MAX_DETAILS {
        return Err(malformed(format!("at most {MAX_DETAILS} `mcp_tool` details")));
    }
    let servers: BTreeSet<&str> = grants.iter().map(|g| g.server.as_str()).collect();
    if servers.len() != grants.len() {
        return Err(malformed("two `mcp_tool` details for the same `server`"));
    }
    Ok(())
}

/// The detail of `grants` for `server`, if any.
pub fn for_server<'a>(grants: &'a [ToolGrant], server: &str) -> Option<&'a ToolGrant> {
    grants.iter().find(|g| g.server == server)
}

/// The token's tool-level limit: what a token for `audience` carries, given
/// the `ceiling`'s details and the one `requested` (if any). The request,
/// when present, must be for `audience` and within the ceiling's detail for
/// it; without a request the token carries the ceiling's detail (so a task
/// limited at tool level never issues an unlimited token).
pub fn narrow(
    ceiling: &[ToolGrant],
    audience: &str,
    requested: Option<&ToolGrant>,
    within: &'static str,
) -> Result<Option<ToolGrant>, ToolGrantError> {
    let limit = for_server(ceiling, audience);
    match (requested, limit) {
        (None, limit) => Ok(limit.cloned()),
        (Some(r), _) if r.server != audience => Err(malformed(
            "the `mcp_tool` detail's `server` must be the token's audience (`resource`)",
        )),
        (Some(r), Some(limit)) => r.is_within(limit, within).map(|()| Some(r.clone())),
        (Some(r), None) => Ok(Some(r.clone())),
    }
}

#[cfg(test)]
mod tests;
