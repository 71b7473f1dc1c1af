"""Typed, range-checked configuration: every key's type comes from its default, or from a small schema file.

A schema line reads like the type it allows, e.g.::

    optim.weight_decay: float >= 0
    train.label_smoothing: float [0, 1)
    schedule.kind: step | cosine
    model.trainable_stages: int [0, 5] | auto
    data.path: path?                      # ? : may also be null
    data.scale: list[float (0, 1]] len 2
    train.checkpoint_every: every         # 500steps, 30min, 500steps,30min or off (see parse_every)

Keys without a line take the type of their default (int, float, bool, str, or a list of one of those). Values are
coerced where the meaning is certain (`5e-5`, which YAML reads as a string, becomes a float; an int in a float
key becomes a float) and refused otherwise (`0.1` in an int key, a bare string where a list is expected), with one
line naming the key, the value, where it came from and what is expected.
"""
from __future__ import annotations

import math
import re
from dataclasses import dataclass, field

from .errors import BotError

SCALARS = ("int", "float", "bool", "str", "path", "every")
_RANGE = re.compile(r"^(?P<lo>[\[(])\s*(?P<a>[^,]+),\s*(?P<b>[^\])]+)(?P<hi>[\])])$")
_BOUND = re.compile(r"^(?P<op>>=|>|<=|<)\s*(?P<v>\S+)$")


@dataclass
class Spec:
    """One allowed shape of a value: a scalar type with optional bounds, a list of items, or literal words."""
    kind: str                                   # int | float | bool | str | path | every | list | any
    lo: float | None = None
    hi: float | None = None
    lo_open: bool = False
    hi_open: bool = False
    item: "Spec | None" = None                  # list items
    length: int | None = None                   # list length, when fixed
    literals: list = field(default_factory=list)  # words allowed besides the type (or instead of it, kind "")
    nullable: bool = False

    def describe(self, plural: bool = False) -> str:
        parts = []
        if self.kind == "list":
            parts.append(f"a list of {self.length or ''} {self.item.describe(plural=True)}".replace("  ", " "))
        elif self.kind:
            names = ({"int": "integers", "float": "numbers", "bool": "booleans", "str": "strings", "path": "paths",
                      "every": "intervals", "any": "values"} if plural else
                     {"int": "an integer", "float": "a number", "bool": "true or false", "str": "a string",
                      "path": "a path", "every": EVERY_TEXT, "any": "a value"})
            name = names[self.kind]
            if self.lo is not None and self.hi is not None:
                name += f" in {'(' if self.lo_open else '['}{_num(self.lo)}, {_num(self.hi)}{')' if self.hi_open else ']'}"
            elif self.lo is not None:
                name += f" {'>' if self.lo_open else '>='} {_num(self.lo)}"
            elif self.hi is not None:
                name += f" {'<' if self.hi_open else '<='} {_num(self.hi)}"
            parts.append(name)
        parts += [str(w) for w in self.literals]
        if self.nullable:
            parts.append("null")
        return " or ".join(parts) if len(parts) < 3 else ", ".join(parts[:-1]) + " or " + parts[-1]


EVERY_TEXT = "an interval: Nsteps, Nmin (or Ns, Nh), both as 500steps,30min (whichever comes first), or off"
_TERM = re.compile(r"^(?P<n>\d+(?:\.\d*)?|\.\d+)\s*(?P<unit>steps?|min|m|s|h)?$")


def parse_every(value) -> tuple[int, float]:
    """An interval (train.checkpoint_every) as (steps, seconds), 0 where not given: a bare integer is steps;
    `500steps`, `30min`, `90s`, `2h`, or a step and a time term joined by a comma; off, false or 0 for neither.
    Invalid (saying what is expected) for anything else."""
    if value is False or value in (0, "0") or (isinstance(value, str) and value.strip().lower() in ("off", "false", "no", "none")):
        return 0, 0.0
    if isinstance(value, bool) or not isinstance(value, (int, str)):
        raise Invalid(f"expected {EVERY_TEXT}")
    if isinstance(value, int):
        if value < 0:
            raise Invalid(f"out of range: expected {EVERY_TEXT}")
        return value, 0.0
    steps, seconds = None, None
    for term in (t.strip().lower() for t in value.split(",")):
        m = _TERM.match(term.replace(" ", ""))
        if not m:
            raise Invalid(f"expected {EVERY_TEXT}")
        n, unit = float(m["n"]), m["unit"] or "steps"
        if unit.startswith("step"):
            if steps is not None:
                raise Invalid(f"expected {EVERY_TEXT} (at most one step term)")
            if not n.is_integer() or n < 1:
                raise Invalid(f"out of range: expected {EVERY_TEXT} (whole steps >= 1)")
            steps = int(n)
        else:
            if seconds is not None:
                raise Invalid(f"expected {EVERY_TEXT} (at most one time term)")
            if n <= 0:
                raise Invalid(f"out of range: expected {EVERY_TEXT} (a time > 0)")
            seconds = n * {"s": 1, "m": 60, "min": 60, "h": 3600}[unit]
    return steps or 0, seconds or 0.0


def format_every(steps: int, seconds: float) -> str:
    """The canonical text of an interval: what config.yaml records, so equal intervals compare equal."""
    time_text = f"{seconds / 60:g}min" if seconds % 60 == 0 else f"{seconds:g}s"
    terms = ([f"{steps}steps"] if steps else []) + ([time_text] if seconds else [])
    return ",".join(terms) or "off"


def _num(x: float) -> str:
    return str(int(x)) if float(x).is_integer() else repr(x)


def _split_top(text: str, sep: str) -> list[str]:
    """Split on `sep` outside brackets, so `list[float [0, 1]] | auto` splits once."""
    out, depth, cur = [], 0, ""
    i = 0
    while i < len(text):
        ch = text[i]
        if ch in "[(":
            depth += 1
        elif ch in "])":
            depth -= 1
        if depth == 0 and text.startswith(sep, i):
            out.append(cur)
            cur, i = "", i + len(sep)
            continue
        cur += ch
        i += 1
    out.append(cur)
    return [p.strip() for p in out]


def parse_spec(text: str) -> Spec:
    text = str(text).strip()
    nullable = text.endswith("?")
    if nullable:
        text = text[:-1].strip()
    alternatives = _split_top(text, "|")
    spec = None
    literals = []
    for alt in alternatives:
        head = alt.split()[0] if alt.split() else ""
        if head.startswith("list[") or head in SCALARS or head == "any":
            if spec is not None:
                raise ValueError(f"schema {text!r}: one type per key")
            spec = _parse_typed(alt)
        elif alt == "null":
            nullable = True
        else:
            literals.append(_literal(alt))
    spec = spec or Spec(kind="")
    spec.literals, spec.nullable = literals, nullable
    return spec


def _literal(word: str):
    for cast in (int, float):
        try:
            return cast(word)
        except ValueError:
            pass
    return {"true": True, "false": False}.get(word, word)


def _parse_typed(text: str) -> Spec:
    if text.startswith("list["):
        depth, end = 0, None
        for i, ch in enumerate(text):  # ranges inside may close with the other bracket: (0, 1]
            depth += ch in "[("
            depth -= ch in "])"
            if depth == 0 and i > 4:
                end = i
                break
        item = _parse_typed(text[5:end].strip())
        rest = text[end + 1:].strip()
        length = int(rest.split()[1]) if rest.startswith("len") else None
        return Spec("list", item=item, length=length)
    kind, _, rest = text.partition(" ")
    spec = Spec(kind)
    rest = rest.strip()
    if not rest:
        return spec
    m = _RANGE.match(rest)
    if m:
        spec.lo, spec.hi = float(m["a"]), float(m["b"])
        spec.lo_open, spec.hi_open = m["lo"] == "(", m["hi"] == ")"
        return spec
    m = _BOUND.match(rest)
    if not m:
        raise ValueError(f"schema {text!r}: cannot read the range {rest!r}")
    v = float(m["v"])
    if m["op"].startswith(">"):
        spec.lo, spec.lo_open = v, m["op"] == ">"
    else:
        spec.hi, spec.hi_open = v, m["op"] == "<"
    return spec


def spec_from_default(value) -> Spec | None:
    """The type a key's default implies; None for a null default (which then needs a schema line)."""
    if value is None:
        return None
    if isinstance(value, bool):
        return Spec("bool")
    if isinstance(value, int):
        return Spec("int")
    if isinstance(value, float):
        return Spec("float")
    if isinstance(value, str):
        return Spec("str")
    if isinstance(value, list):
        kinds = {spec_from_default(v).kind for v in value if v is not None}
        if kinds <= {"int", "float"} and "float" in kinds:
            kinds = {"float"}
        item = Spec(kinds.pop()) if len(kinds) == 1 else Spec("any")
        return Spec("list", item=item)
    return Spec("any")


class Invalid(Exception):
    """A value does not fit its spec; the message says what was expected."""


def coerce(value, spec: Spec):
    """The value in the spec's type, or Invalid."""
    if value is None:
        if spec.nullable:
            return None
        raise Invalid(f"expected {spec.describe()}")
    if any(type(value) is type(word) and value == word for word in spec.literals):
        return value
    kind = spec.kind
    if kind == "":
        raise Invalid(f"expected {spec.describe()}")
    if kind == "any":
        return value
    if kind == "every":
        return format_every(*parse_every(value))
    if kind == "list":
        if isinstance(value, tuple):
            value = list(value)
        if not isinstance(value, list):
            raise Invalid(f"expected {spec.describe()}, written as [a, b, ...]")
        if spec.length is not None and len(value) != spec.length:
            raise Invalid(f"expected {spec.describe()}, got {len(value)} items")
        out = []
        for i, item in enumerate(value):
            try:
                out.append(coerce(item, spec.item))
            except Invalid as e:
                raise Invalid(f"item {i} ({item!r}): {e}") from None
        return out
    if kind == "bool":
        if isinstance(value, bool):
            return value
        raise Invalid(f"expected {spec.describe()}")
    if kind in ("str", "path"):
        if isinstance(value, bool) or isinstance(value, (list, dict)):
            raise Invalid(f"expected {spec.describe()}")
        if isinstance(value, int):
            value = str(value)
        if not isinstance(value, str):
            raise Invalid(f"expected {spec.describe()}")
        if kind == "path" and not value:
            raise Invalid("expected a path, got an empty string")
        return value
    # numbers
    if isinstance(value, bool):
        raise Invalid(f"expected {spec.describe()}")
    if isinstance(value, str):
        try:
            number = int(value) if kind == "int" and re.fullmatch(r"[+-]?\d+", value.strip()) else float(value)
        except ValueError:
            raise Invalid(f"expected {spec.describe()}") from None
        value = number
    if not isinstance(value, (int, float)):
        raise Invalid(f"expected {spec.describe()}")
    if kind == "int":
        if isinstance(value, float):
            raise Invalid(f"expected {spec.describe()} (not a fraction)")
    else:
        value = float(value)
        if not math.isfinite(value):
            raise Invalid(f"expected {spec.describe()} (a finite one)")
    if spec.lo is not None and (value < spec.lo or (spec.lo_open and value == spec.lo)):
        raise Invalid(f"out of range: expected {spec.describe()}")
    if spec.hi is not None and (value > spec.hi or (spec.hi_open and value == spec.hi)):
        raise Invalid(f"out of range: expected {spec.describe()}")
    return value


def flatten(config: dict, prefix: str = "") -> dict:
    out = {}
    for key, value in config.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict) and value:
            out.update(flatten(value, name + "."))
        else:
            out[name] = value
    return out


def build_schema(defaults: dict, lines: dict) -> dict[str, Spec]:
    """Specs for every leaf key of `defaults`: the schema line where there is one, else the default's type."""
    specs = {}
    for key, value in flatten(defaults).items():
        if key in lines:
            specs[key] = parse_spec(lines[key])
        else:
            spec = spec_from_default(value)
            if spec is None:
                raise ValueError(f"schema: key {key!r} has a null default and no schema line")
            specs[key] = spec
    unknown = set(lines) - set(specs)
    if unknown:
        raise ValueError(f"schema lines for keys that have no default: {sorted(unknown)}")
    return specs


def validate(config: dict, specs: dict[str, Spec], origins: dict[str, str] | None = None) -> dict:
    """Coerce every key of `config` in place to its spec; BotError (one line) at the first value that does not fit."""
    origins = origins or {}
    for key, spec in specs.items():
        node, parts = config, key.split(".")
        for part in parts[:-1]:
            node = node.get(part) if isinstance(node, dict) else None
        if not isinstance(node, dict) or parts[-1] not in node:
            continue
        try:
            node[parts[-1]] = coerce(node[parts[-1]], spec)
        except Invalid as e:
            where = origins.get(key, "")
            label = (f"--set {key}" if where == "--set" else f"{where} ({key})" if where.startswith("--")
                     else f"{where}: {key}" if where else key)
            raise BotError(f"{label} = {node[parts[-1]]!r}: {e}") from None
    return config
