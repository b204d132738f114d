"""Tool-level limits: RFC 9396 ``authorization_details`` of type ``mcp_tool``.

The twin of ``tessera_core::authz`` (Rust): the same parse, the same subset
check (:meth:`ToolGrant.is_within`) and the same call check
(:meth:`ToolGrant.permits`), held to the same verdicts by
``tests/vectors/tool_grants.json``. A detail names one MCP server, the tools
a token may call there, and constraints on their arguments::

    {"type": "mcp_tool", "server": "https://mcp.example.com/mcp",
     "tools": ["list_repos", "transfer"],
     "constraints": {"transfer": {"amount": {"max": 500}, "currency": {"eq": "EUR"}}}}

Operators per argument (all present must hold): ``eq`` and ``one_of``
(strings, numbers, booleans), ``max`` and ``min`` (the argument must be a JSON
number, never a boolean or a numeric string), ``prefix`` (the argument is a
string starting with it). Numbers compare as IEEE doubles; strings exactly. A
constrained argument that is missing, ``null`` or of another type is refused;
unconstrained arguments are not looked at. Anything else (unknown operators,
members or types, empty lists, sizes beyond the bounds) is malformed.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Final

__all__ = [
    "MCP_TOOL",
    "ArgConstraint",
    "ToolGrant",
    "ToolGrantError",
    "UnknownDetailType",
    "parse_details",
]

MCP_TOOL: Final = "mcp_tool"
MAX_TOOLS: Final = 32
MAX_CONSTRAINED_ARGS: Final = 16
MAX_ONE_OF: Final = 32
MAX_NAME_BYTES: Final = 128
MAX_STRING_BYTES: Final = 256
MAX_SERVER_BYTES: Final = 2048
MAX_DETAILS: Final = 8
_MEMBERS: Final = frozenset({"type", "server", "tools", "constraints"})
_OPERATORS: Final = frozenset({"eq", "one_of", "max", "min", "prefix"})


class ToolGrantError(ValueError):
    """A malformed detail, or a call or request it does not allow."""


class UnknownDetailType(ToolGrantError):
    """A detail whose ``type`` is not ``mcp_tool``."""


def _bytes(s: str) -> int:
    # The bounds count UTF-8 bytes, as Rust's `str::len` does.
    return len(s.encode("utf-8", "surrogatepass"))


def _is_number(value: Any) -> bool:
    # JSON booleans are Python ints: never numbers here.
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _as_number(value: Any) -> float | None:
    if not _is_number(value):
        return None
    try:
        f = float(value)
    except OverflowError:
        return None
    return f if math.isfinite(f) else None


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, bool) or isinstance(b, bool):
        return isinstance(a, bool) and isinstance(b, bool) and a == b
    if isinstance(a, str) or isinstance(b, str):
        return isinstance(a, str) and isinstance(b, str) and a == b
    x, y = _as_number(a), _as_number(b)
    return x is not None and x == y


def _scalar(value: Any) -> Any:
    if isinstance(value, str):
        if _bytes(value) > MAX_STRING_BYTES:
            raise ToolGrantError(f"a string value is at most {MAX_STRING_BYTES} bytes")
        return value
    if isinstance(value, bool) or _as_number(value) is not None:
        return value
    raise ToolGrantError("`eq` and `one_of` values are strings, numbers or booleans")


def _number(value: Any, op: str) -> float:
    n = _as_number(value)
    if n is None:
        raise ToolGrantError(f"`{op}` is a number")
    return n


def _name(value: str, what: str) -> str:
    if not value or _bytes(value) > MAX_NAME_BYTES:
        raise ToolGrantError(f"a {what} name is 1 to {MAX_NAME_BYTES} bytes")
    return value


@dataclass(frozen=True)
class ArgConstraint:
    """The constraint on one argument: every operator present must hold."""

    eq: Any = None
    one_of: tuple[Any, ...] | None = None
    max: float | None = None
    min: float | None = None
    prefix: str | None = None
    has_eq: bool = False

    @classmethod
    def parse(cls, value: Any) -> ArgConstraint:
        """Parses ``{operator: value}``; raises :class:`ToolGrantError`."""
        if not isinstance(value, dict):
            raise ToolGrantError("an argument constraint is an object of operators")
        if not value:
            raise ToolGrantError("an argument constraint has at least one operator")
        unknown = set(value) - _OPERATORS
        if unknown:
            raise ToolGrantError("unknown operator; supported: eq, one_of, max, min, prefix")
        one_of = None
        if "one_of" in value:
            items = value["one_of"]
            if not isinstance(items, list):
                raise ToolGrantError("`one_of` is an array")
            if not 1 <= len(items) <= MAX_ONE_OF:
                raise ToolGrantError(f"`one_of` holds 1 to {MAX_ONE_OF} values")
            one_of = tuple(_scalar(v) for v in items)
        prefix = value.get("prefix")
        if "prefix" in value and (not isinstance(prefix, str) or not prefix or _bytes(prefix) > MAX_STRING_BYTES):
            raise ToolGrantError(f"`prefix` is a string of 1 to {MAX_STRING_BYTES} bytes")
        return cls(
            eq=_scalar(value["eq"]) if "eq" in value else None,
            has_eq="eq" in value,
            one_of=one_of,
            max=_number(value["max"], "max") if "max" in value else None,
            min=_number(value["min"], "min") if "min" in value else None,
            prefix=prefix,
        )

    def accepts(self, value: Any) -> bool:
        """Whether ``value`` satisfies every operator."""
        n = _as_number(value)
        return (
            (not self.has_eq or _same(self.eq, value))
            and (self.one_of is None or any(_same(e, value) for e in self.one_of))
            and (self.max is None or (n is not None and n <= self.max))
            and (self.min is None or (n is not None and n >= self.min))
            and (self.prefix is None or (isinstance(value, str) and value.startswith(self.prefix)))
        )

    def implies(self, wider: ArgConstraint) -> bool:
        """Whether every value this accepts, ``wider`` accepts (sound, not complete)."""
        finite = (self.eq,) if self.has_eq else self.one_of
        if finite is not None:
            return all(wider.accepts(v) for v in finite if self.accepts(v))
        return (
            not wider.has_eq
            and wider.one_of is None
            and (wider.max is None or (self.max is not None and self.max <= wider.max))
            and (wider.min is None or (self.min is not None and self.min >= wider.min))
            and (wider.prefix is None or (self.prefix is not None and self.prefix.startswith(wider.prefix)))
        )


@dataclass(frozen=True)
class ToolGrant:
    """One ``mcp_tool`` detail, valid once parsed."""

    server: str
    tools: frozenset[str]
    constraints: Mapping[str, Mapping[str, ArgConstraint]] = field(default_factory=dict)

    @classmethod
    def parse(cls, value: Any) -> ToolGrant:
        """Parses one detail; :class:`UnknownDetailType` for another type,
        :class:`ToolGrantError` for anything malformed."""
        if not isinstance(value, dict):
            raise ToolGrantError("an authorization detail is a JSON object")
        kind = value.get("type")
        if not isinstance(kind, str):
            raise ToolGrantError("an authorization detail has a string `type`")
        if kind != MCP_TOOL:
            raise UnknownDetailType(f"unknown authorization details type `{kind[:64]}`; supported: `mcp_tool`")
        if set(value) - _MEMBERS:
            raise ToolGrantError("unknown member; an `mcp_tool` detail has type, server, tools and constraints")
        server = value.get("server")
        if not isinstance(server, str) or not server or _bytes(server) > MAX_SERVER_BYTES:
            raise ToolGrantError(f"`server` is a string of 1 to {MAX_SERVER_BYTES} bytes")
        listed = value.get("tools")
        if not isinstance(listed, list):
            raise ToolGrantError("`tools` is an array of tool names")
        if not 1 <= len(listed) <= MAX_TOOLS:
            raise ToolGrantError(f"`tools` holds 1 to {MAX_TOOLS} names")
        tools: set[str] = set()
        for tool in listed:
            if not isinstance(tool, str):
                raise ToolGrantError("`tools` is an array of tool names")
            if _name(tool, "tool") in tools:
                raise ToolGrantError("`tools` names a tool twice")
            tools.add(tool)
        constraints: dict[str, dict[str, ArgConstraint]] = {}
        raw = value.get("constraints", {})
        if not isinstance(raw, dict):
            raise ToolGrantError("`constraints` is an object: tool -> argument -> operators")
        for tool, args in raw.items():
            if tool not in tools:
                raise ToolGrantError("`constraints` names a tool that is not in `tools`")
            if not isinstance(args, dict):
                raise ToolGrantError("a tool's constraints are an object of arguments")
            if not 1 <= len(args) <= MAX_CONSTRAINED_ARGS:
                raise ToolGrantError(f"a tool constrains 1 to {MAX_CONSTRAINED_ARGS} arguments")
            constraints[tool] = {_name(arg, "argument"): ArgConstraint.parse(c) for arg, c in args.items()}
        return cls(server=server, tools=frozenset(tools), constraints=constraints)

    def is_within(self, ceiling: ToolGrant) -> bool:
        """Whether this is no wider than ``ceiling``: the same server, a subset of
        its tools, and every constraint it puts on those tools present and at
        least as strict."""
        if self.server != ceiling.server or not self.tools <= ceiling.tools:
            return False
        for tool in self.tools:
            mine = self.constraints.get(tool, {})
            for arg, limit in ceiling.constraints.get(tool, {}).items():
                own = mine.get(arg)
                if own is None or not own.implies(limit):
                    return False
        return True

    def permits(self, tool: str, args: Any) -> None:
        """Raises :class:`ToolGrantError` unless calling ``tool`` with ``args``
        (the ``tools/call`` arguments: an object, or ``None``) is allowed."""
        if tool not in self.tools:
            raise ToolGrantError(f"the token does not allow tool `{str(tool)[:MAX_NAME_BYTES]}`")
        limits = self.constraints.get(tool)
        if not limits:
            return
        if args is None:
            args = {}
        if not isinstance(args, dict):
            raise ToolGrantError("the tool's arguments are not an object")
        for arg, limit in limits.items():
            if arg not in args or not limit.accepts(args[arg]):
                raise ToolGrantError(f"the token does not allow this value of argument `{arg}` of tool `{tool}`")


def parse_details(value: Any) -> list[ToolGrant]:
    """An ``authorization_details`` claim: 1 to 8 ``mcp_tool`` details, at most
    one per server; anything else raises :class:`ToolGrantError`."""
    if not isinstance(value, list):
        raise ToolGrantError("`authorization_details` is a JSON array")
    if not 1 <= len(value) <= MAX_DETAILS:
        raise ToolGrantError(f"`authorization_details` holds 1 to {MAX_DETAILS} objects")
    grants = [ToolGrant.parse(v) for v in value]
    if len({g.server for g in grants}) != len(grants):
        raise ToolGrantError("two `mcp_tool` details for the same `server`")
    return grants
