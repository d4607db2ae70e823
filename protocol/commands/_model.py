"""A small declarative field-spec mechanism shared by every payload model.

A payload model is a frozen, slotted dataclass deriving from `Payload` and decorated with
`@model`. Each field's type is an `Annotated` alias carrying a `Wire` spec (struct code, kind,
unit, enumeration). From those specs `@model` precompiles one `struct.Struct` per accepted
prefix length, so that decoding a fixed-layout payload is one `unpack_from` and one constructor
call, and builds the JSON description. Conventions:

- fields without a default are the mandatory prefix; fields defaulting to None are optional
  trailing fields, present when the data is long enough to hold them completely (reference 7);
- a last field of kind `tail` (usually `extra`) receives the bytes after the known fields, so
  unknown additions from newer firmware survive a decode/encode round trip byte for byte;
- encoding writes every field up to the last non-None one (and refuses a None before it).

Irregular layouts (arrays, records, length-prefixed parts) override `decode`/`encode` and still
declare their fields with `Wire` specs, which drive `to_json` and the property-based tests.
"""

from __future__ import annotations

import enum
import struct
import sys
import typing
from collections.abc import Callable
from dataclasses import dataclass, fields
from json.encoder import encode_basestring
from typing import Annotated, Any, ClassVar, Self, TypeVar

from protocol._fast import slot_constructor
from protocol.enums import Namer, unknown
from protocol.errors import PayloadError
from protocol.units import (
    DURATION,
    ENERGY,
    POWER,
    TEMPERATURE,
    VOLTAGE,
    Unit,
)

INT = "int"
BYTES = "bytes"  # fixed-size raw bytes, JSON as upper-case hex
ASCII = "ascii"  # fixed-size NUL-padded text, decoded as latin-1 so any byte round-trips
TAIL = "tail"  # every remaining byte
VARBYTES = "varbytes"  # variable-size raw bytes handled by custom code
LIST = "list"  # tuple of integers of `code`, handled by custom code
RECORDS = "records"  # tuple of nested models, handled by custom code


class Sender(enum.Enum):
    """Who sent the bytes: some frames are byte-identical in both directions (reference 8)."""

    DEVICE = "device"
    SERVER = "server"


DEVICE = Sender.DEVICE
SERVER = Sender.SERVER


@dataclass(frozen=True, slots=True)
class Wire:
    """How one field travels: struct code (`B`, `H`, `I`, `16s`), kind, unit and enum."""

    code: str = ""
    kind: str = INT
    unit: Unit | None = None
    enum: Namer | None = None
    record: type[Payload] | None = None

    @property
    def size(self) -> int:
        return struct.calcsize("<" + self.code) if self.code else 0


def u8(enum: Namer | None = None, unit: Unit | None = None) -> Wire:
    return Wire("B", INT, unit, enum)


def u16(unit: Unit | None = None) -> Wire:
    return Wire("H", INT, unit)


def raw(size: int) -> Wire:
    return Wire(f"{size}s", BYTES)


def ascii_text(size: int) -> Wire:
    return Wire(f"{size}s", ASCII)


U8 = Annotated[int, Wire("B")]
U16 = Annotated[int, Wire("H")]
U32 = Annotated[int, Wire("I")]
Port = Annotated[int, Wire("B")]  # 0-based wire index; 0xFF = "device chooses" / balance query
OrderNo = Annotated[bytes, raw(16)]
CardId = Annotated[bytes, raw(4)]
Voltage = Annotated[int, u16(VOLTAGE)]  # 0.1 V
Power = Annotated[int, u16(POWER)]  # 0.1 W
Energy = Annotated[int, u16(ENERGY)]  # 0.01 kWh
Duration = Annotated[int, u16(DURATION)]  # s
Temperature = Annotated[int, u8(unit=TEMPERATURE)]  # degC + 65, 0 = no sensor
Tail = Annotated[bytes, Wire("", TAIL)]


@dataclass(frozen=True, slots=True)
class FieldSpec:
    name: str
    wire: Wire
    optional: bool


# One accepted prefix: (size, unpack_from, fixed fields present, Nones for the absent ones).
_Layout = tuple[int, Callable[[bytes], tuple[Any, ...]], int, tuple[None, ...]]


def _wire_of(hint: Any) -> Wire:
    if typing.get_origin(hint) is Annotated:
        for meta in hint.__metadata__:
            if isinstance(meta, Wire):
                return meta
    for arg in typing.get_args(hint):  # `Alias | None`
        if arg is not type(None):
            return _wire_of(arg)
    raise TypeError(f"field type {hint!r} carries no Wire spec")


class Payload:
    """Base of every payload model (frozen slotted dataclasses)."""

    __slots__ = ()

    # The command code this model travels under and who sends it, so that callers build frames
    # from the model alone (`encode_frame(pid, mid, model)`). A model some other code reuses
    # (RunningParams1 is also the 0x90 reply) names the one it is sent with; a model shared by
    # several codes alike (ResultReply, Empty, TimeReply, FirmwarePacket) has None: the caller
    # names the code, usually that of the frame it answers.
    COMMAND: ClassVar[int | None] = None
    SENDER: ClassVar[Sender | None] = None

    SPEC: ClassVar[tuple[FieldSpec, ...]] = ()
    _fixed: ClassVar[tuple[FieldSpec, ...]] = ()
    _mandatory: ClassVar[int] = 0
    _layouts: ClassVar[tuple[_Layout, ...]] = ()
    _packers: ClassVar[tuple[struct.Struct, ...]] = ()  # indexed by the number of fields sent
    _tail: ClassVar[str | None] = None
    _ascii: ClassVar[tuple[int, ...]] = ()
    # Same result as the dataclass __init__ (all fields, in order), ~35 % faster for wide models.
    _new: ClassVar[Callable[..., Any]]

    @classmethod
    def decode(cls, data: bytes) -> Self:
        """Decode a data block; raise PayloadError when it is shorter than the mandatory prefix."""
        size = len(data)
        for layout in cls._layouts:
            if size >= layout[0]:
                break
        else:
            minimum = cls._layouts[-1][0] if cls._layouts else 0
            raise PayloadError(f"{cls.__name__} needs at least {minimum} data bytes, got {size}")
        minimum, unpack, present, missing = layout
        values: tuple[Any, ...] = unpack(data)
        if cls._ascii:
            converted = list(values)
            for index in cls._ascii:
                if index < present:
                    converted[index] = _text(converted[index])
            values = tuple(converted)
        build: Callable[..., Self] = cls._new
        if cls._tail is not None:
            return build(*values, *missing, data[minimum:])
        return build(*values, *missing)

    def encode(self) -> bytes:
        """The data block: every field up to the last present one, then the tail bytes."""
        cls = type(self)
        values = [getattr(self, spec.name) for spec in cls._fixed]
        present = len(values)
        while present > cls._mandatory and values[present - 1] is None:
            present -= 1
        for spec, value in zip(cls._fixed[:present], values, strict=False):
            if value is None:
                raise PayloadError(f"{cls.__name__}.{spec.name} is None but a later field is set")
            if spec.wire.kind == BYTES and len(value) != spec.wire.size:
                raise PayloadError(
                    f"{cls.__name__}.{spec.name} must be {spec.wire.size} bytes, got {len(value)}"
                )
        for index in cls._ascii:
            if index < present:
                values[index] = _text_bytes(cls, cls._fixed[index], values[index])
        try:
            head = cls._packers[present].pack(*values[:present])
        except struct.error as exc:
            raise PayloadError(f"{cls.__name__}: {exc}") from None
        if cls._tail is not None:
            tail: bytes = getattr(self, cls._tail)
            return head + tail
        return head

    @classmethod
    def _line_fields(cls, data: bytes) -> tuple[Any, ...] | None:
        """An irregular layout may define this: the values `decode` gives every field, in
        declaration order, when the data holds them all; None for anything else. The decode
        CLI's line is then written without building the object (see `line_function`)."""
        return None

    def to_json(self) -> dict[str, Any]:
        """JSON-ready dict: wire values under field names, SI values and enum names beside.

        Generated per class by `@model` (see `_compile_json`): one dict display, no loop."""
        raise NotImplementedError(f"{type(self).__name__} is not decorated with @model")

    def to_json_text(self, tail: str = "") -> str:
        """The JSON text of `to_json()` (as `json.JSONEncoder(ensure_ascii=False)` writes it),
        built directly; `tail` is extra JSON members (`"key": value`) appended inside."""
        raise NotImplementedError(f"{type(self).__name__} is not decorated with @model")


def unpack_optional(
    data: bytes, offset: int, structs: tuple[struct.Struct, ...]
) -> tuple[list[Any], int]:
    """Decode optional trailing scalars from `offset` while whole values remain (reference 7)."""
    values: list[Any] = []
    for item in structs:
        if len(data) - offset >= item.size:
            values.append(item.unpack_from(data, offset)[0])
            offset += item.size
        else:
            values.append(None)
    return values, offset


def pack_optional(owner: Payload, items: tuple[tuple[str, struct.Struct], ...]) -> bytes:
    """Encode optional trailing scalars up to the last non-None one (refusing gaps)."""
    values = [getattr(owner, name) for name, _ in items]
    present = len(values)
    while present and values[present - 1] is None:
        present -= 1
    out = bytearray()
    for (name, item), value in zip(items[:present], values, strict=False):
        if value is None:
            raise PayloadError(f"{type(owner).__name__}.{name} is None but a later field is set")
        out += pack(owner, item, value)
    return bytes(out)


def pack(owner: Payload, item: struct.Struct, *values: Any) -> bytes:
    """struct.pack that reports out-of-range values as PayloadError."""
    try:
        return item.pack(*values)
    except struct.error as exc:
        raise PayloadError(f"{type(owner).__name__}: {exc}") from None


def too_short(cls: type, need: int, size: int) -> PayloadError:
    return PayloadError(f"{cls.__name__} needs at least {need} data bytes, got {size}")


def _text(value: bytes) -> str:
    return value.rstrip(b"\0").decode("latin-1")


def _text_bytes(cls: type, spec: FieldSpec, value: str) -> bytes:
    try:
        encoded = value.encode("latin-1")
    except UnicodeEncodeError:
        raise PayloadError(f"{cls.__name__}.{spec.name} must be latin-1 text") from None
    if len(encoded) > spec.wire.size:
        raise PayloadError(f"{cls.__name__}.{spec.name} is longer than {spec.wire.size} bytes")
    return encoded


_T = TypeVar("_T", bound=Payload)


def model(cls: type[_T]) -> type[_T]:
    """Read the `Wire` specs of a payload dataclass; precompile layouts, constructor and JSON."""
    declared = fields(typing.cast(Any, cls))
    namespace = sys.modules[cls.__module__].__dict__
    specs = tuple(
        FieldSpec(f.name, _wire_of(_hint(f.type, namespace)), f.default is None) for f in declared
    )
    tail = specs[-1].name if specs and specs[-1].wire.kind == TAIL else None
    fixed = specs[:-1] if tail is not None else specs
    cls.SPEC = specs
    cls._tail = tail
    if all(spec.wire.kind in (INT, BYTES, ASCII) for spec in fixed):
        mandatory = sum(1 for spec in fixed if not spec.optional)
        if any(spec.optional for spec in fixed[:mandatory]):
            raise TypeError(f"{cls.__name__}: optional fields must come after mandatory ones")
        codes = [spec.wire.code for spec in fixed]
        cls._fixed = fixed
        cls._mandatory = mandatory
        layouts = []
        for missing, present in enumerate(range(len(fixed), mandatory - 1, -1)):
            layout = struct.Struct("<" + "".join(codes[:present]))
            layouts.append((layout.size, layout.unpack_from, present, (None,) * missing))
        cls._layouts = tuple(layouts)
        cls._packers = tuple(struct.Struct("<" + "".join(codes[:n])) for n in range(len(fixed) + 1))
        cls._ascii = tuple(i for i, spec in enumerate(fixed) if spec.wire.kind == ASCII)
    elif "decode" not in cls.__dict__ or "encode" not in cls.__dict__:
        raise TypeError(f"{cls.__name__}: irregular layout needs its own decode and encode")
    # Generated on first use: a process uses a few of the ~60 models, and compiling all of them
    # at import was a fifth of the start-up of `chargebridge decode`.
    cls._new = _first_new(cls)
    cls.to_json = _FirstJson("to_json")  # type: ignore[method-assign,assignment]
    cls.to_json_text = _FirstJson("to_json_text")  # type: ignore[method-assign,assignment]
    return cls


# Evaluated annotations by (module, text): models repeat a few annotations (`U8 | None`)
# many times; typing.get_type_hints evaluated each again, the bases' ClassVars too.
_HINTS: dict[tuple[str, str], Any] = {}


def _hint(annotation: Any, namespace: dict[str, Any]) -> Any:
    """A field's annotation evaluated in its module (annotations are strings there)."""
    if not isinstance(annotation, str):
        return annotation
    key = (namespace["__name__"], annotation)
    hint = _HINTS.get(key)
    if hint is None:
        hint = _HINTS[key] = eval(annotation, namespace)  # the module's own source text
    return hint


def _first_new(cls: type) -> Callable[..., Any]:
    """A stand-in for the slot constructor that generates it at its first call."""

    def first(*args: Any) -> Any:
        build = slot_constructor(cls)
        type.__setattr__(cls, "_new", build)
        return build(*args)

    return first


class _Names(dict[int, str]):
    """An enumeration's names for generated code: `names[code]`, `unknown_XX` for the rest."""

    def __missing__(self, code: int) -> str:
        return unknown(code)


class _FirstJson:
    """Descriptor standing in for a generated JSON method: the first access generates both
    methods for the class, puts them in its place and hands out the one asked for."""

    def __init__(self, name: str) -> None:
        self.name = name

    def __get__(self, instance: Any, owner: type[Payload]) -> Any:
        to_json, to_json_text = _compile_json(owner.__name__, owner.SPEC)
        type.__setattr__(owner, "to_json", to_json)
        type.__setattr__(owner, "to_json_text", to_json_text)
        return getattr(owner if instance is None else instance, self.name)


# key, expression without the None guard, JSON kind, optional field, value may be None
_Entry = tuple[str, str, str, str, bool]


def _json_entries(
    specs: tuple[FieldSpec, ...], *, wire_ints: bool = False
) -> tuple[dict[str, Any], list[str], list[_Entry], list[str], str | None]:
    """What both generated JSON methods and the frame line are made of: the environment,
    `vN = self.field` lines, the JSON members, the optional fields' variables and `extra`'s.

    `wire_ints`: the integer fields hold what their struct code unpacks (never negative, a
    byte below 256), so SI values may be written from integers and tables, without floats."""
    env: dict[str, Any] = {"unknown": unknown, "quote": encode_basestring}
    lines = []
    entries: list[_Entry] = []
    optional_vars = []
    extra = None
    for index, spec in enumerate(specs):
        wire, var = spec.wire, f"v{index}"
        lines.append(f"    {var} = self.{spec.name}")
        if spec.name == "extra" and wire.kind == TAIL:
            extra = var
            continue
        if spec.optional:
            optional_vars.append(var)
        si = wire.unit.inline if wire.unit is not None else ""
        si_key = spec.name + wire.unit.suffix if wire.unit is not None else ""
        name = ""
        if wire.enum is not None:
            env[f"t{index}"] = _Names(wire.enum.table)
            name = f"t{index}[{{0}}]"
        owner_var = var if spec.optional else ""
        if wire.kind == INT:
            entries.append((spec.name, var, "int", owner_var, False))
            unit = wire.unit
            if unit is not None and wire_ints and wire.code == "B":
                # Every byte's JSON text of the SI value, built once (256 conversions).
                env[f"s{index}"] = tuple(map(_number_text, map(unit.convert, range(256))))
                entries.append((si_key, f"s{index}[{var}]", "text_of", owner_var, False))
            elif unit is not None and wire_ints and unit.divisor and wire.code in ("H", "I"):
                divisor = unit.divisor
                env[f"f{divisor}"] = _fractions(divisor)
                pair = f"{var} // {divisor}, f{divisor}[{var} % {divisor}]"
                entries.append((si_key, pair, "decimal", owner_var, False))
            elif si:
                entries.append((si_key, si.format(var), "num", owner_var, "None" in si))
            if name:
                entries.append((f"{spec.name}_name", name.format(var), "str", owner_var, False))
        elif wire.kind == LIST:
            entries.append((spec.name, f"list({var})", "list", "", False))
            if si:
                entries.append((si_key, f"[{si.format('x')} for x in {var}]", "list", "", False))
            if name:
                names = f"list(map(t{index}.__getitem__, {var}))"
                entries.append((f"{spec.name}_names", names, "names", "", False))
        elif wire.kind == RECORDS:
            entries.append((spec.name, var, "records", "", False))
        elif wire.kind == ASCII:
            entries.append((spec.name, var, "text", owner_var, False))
        else:
            entries.append((spec.name, f"{var}.hex().upper()", "str", owner_var, False))
    return env, lines, entries, optional_vars, extra


def _compile_json(owner: str, specs: tuple[FieldSpec, ...]) -> tuple[Any, Any]:
    """Generate `to_json` (one dict display) and `to_json_text` (one %-format) for a model.

    Both run for every frame the decode CLI describes, so they are generated from the field
    specs instead of looping over them; tests check that the text is exactly what
    `json.JSONEncoder(ensure_ascii=False)` makes of the dict.
    """
    env, lines, entries, optional_vars, extra = _json_entries(specs)
    dict_items = []
    for key, expr, kind, optional, _ in entries:
        value = f"[r.to_json() for r in {expr}]" if kind == "records" else expr
        guard = f"None if {optional} is None else " if optional else ""
        dict_items.append(f"{key!r}: {guard}{value}")
    dict_lines = [*lines, f"    out = {{{', '.join(dict_items)}}}"]
    if extra is not None:
        dict_lines += [f"    if {extra}:", f"        out['extra'] = {extra}.hex().upper()"]
    dict_lines.append("    return out")

    text_lines = list(lines)
    if not entries:
        text_lines.append("    out = '{'")
    elif optional_vars:
        # Decoded payloads usually carry every optional field: skip the None checks then.
        every = " and ".join(f"{var} is not None" for var in optional_vars)
        text_lines += [
            f"    if {every}:",
            "    " + _text_statement(entries, guarded=False),
            "    else:",
            "    " + _text_statement(entries, guarded=True),
        ]
    else:
        text_lines.append(_text_statement(entries, guarded=False))
    has_body = bool(entries)
    if has_body:
        # The usual case in one more %-format, not a concatenation of the long text per part.
        extra_text = f"', \"extra\": \"' + {extra}.hex().upper() + '\"' if {extra} else ''"
        text_lines += [
            f"    return '%s%s%s}}' % (out, {extra_text if extra else repr('')}, "
            "', ' + tail if tail else '')"
        ]
    else:
        if extra is not None:
            text_lines += [
                f"    if {extra}:",
                f"        out += '\"extra\": \"' + {extra}.hex().upper() + '\"'",
            ]
        has_body_expr = f"bool({extra})" if extra is not None else "False"
        text_lines += [
            "    if tail:",
            f"        out += (', ' if {has_body_expr} else '') + tail",
            "    return out + '}'",
        ]
    source = (
        "def to_json(self):\n"
        + "\n".join(dict_lines)
        + "\n\n\ndef to_json_text(self, tail=''):\n"
        + "\n".join(text_lines)
        + "\n"
    )
    exec(compile(source, f"<{owner} JSON>", "exec"), env)
    to_json, to_json_text = env["to_json"], env["to_json_text"]
    to_json.__qualname__, to_json_text.__qualname__ = f"{owner}.to_json", f"{owner}.to_json_text"
    to_json.__doc__, to_json_text.__doc__ = Payload.to_json.__doc__, Payload.to_json_text.__doc__
    return to_json, to_json_text


def _text_statement(entries: list[_Entry], *, guarded: bool) -> str:
    """`out = TEMPLATE % (...)` rendering every entry; `guarded` handles absent optionals."""
    template, arguments = _text_parts(entries, guarded=guarded)
    return f"    out = {template!r} % ({', '.join(arguments)},)"


def _text_parts(entries: list[_Entry], *, guarded: bool) -> tuple[str, list[str]]:
    """The %-template of the members (from `{`, without the closing brace) and its arguments."""
    formats = []
    arguments = []
    for key, expr, kind, optional, may_be_none in entries:
        if guarded and optional:
            expr = f"None if {optional} is None else {expr}"
        if may_be_none or (guarded and optional):
            form, argument = "%s", f'("null" if (n := {expr}) is None else {_as_text(kind, "n")})'
        else:
            form, argument = _text_format(kind, expr)
        formats.append(f'"{key}": {form}')
        arguments.append(argument)
    return "{" + ", ".join(formats), arguments


def _text_format(kind: str, expr: str) -> tuple[str, str]:
    """%-format directive and argument expression rendering a non-null value as JSON."""
    if kind == "int":
        return "%d", expr
    if kind == "text_of":  # the expression is the JSON text
        return "%s", expr
    if kind == "decimal":  # `whole, fraction digits` (two arguments)
        return "%d.%s", expr
    if kind == "num":
        return "%r", expr
    if kind == "str":
        return '"%s"', expr
    return "%s", _as_text(kind, expr)


def _number_text(value: float | int | None) -> str:
    """JSON text of a number or None, as the json module writes it."""
    return "null" if value is None else repr(value)


def _fractions(divisor: int) -> tuple[str, ...]:
    """The digits after the point of `repr(raw / divisor)` by `raw % divisor`: `("0", "1",
    ...)` for 10, `("0", "01", ..., "1", "11", ...)` for 100 (no trailing zeros)."""
    width = len(str(divisor)) - 1
    return tuple(f"{rest:0{width}d}".rstrip("0") or "0" for rest in range(divisor))


def _as_text(kind: str, expr: str) -> str:
    """Expression giving the JSON text of a value (ints and floats repr like the json module;
    enum names and hex strings need no escaping)."""
    if kind in ("int", "num"):
        return f"repr({expr})"
    if kind == "text_of":
        return expr
    if kind == "decimal":
        return f"'%d.%s' % ({expr})"
    if kind == "str":
        return f"'\"' + {expr} + '\"'"
    if kind == "text":
        return f"quote({expr})"
    if kind == "list":
        return f"str({expr})"
    if kind == "names":
        return f"""('["' + '", "'.join(m) + '"]' if (m := {expr}) else '[]')"""
    return f"'[' + ', '.join([r.to_json_text() for r in {expr}]) + ']'"


# A frame's decode line from its bytes: (frame, physical_id, message_id, length field) -> text,
# None when the fast way does not apply (an absent optional field, a payload that does not
# decode); the caller then takes the way through the payload object, which words the errors.
LineFunction = Callable[[bytes, int, int, int], "str | None"]


def line_function(
    cls: type[Payload], before: str, after: str, offset: int, trailer: int
) -> LineFunction | None:
    """Generate the function writing a whole decode line for frames carrying `cls`.

    `before` is a %-template of the text up to the payload object taking (physical_id,
    physical_id, message_id, length); `after` the literal members and braces after the
    payload's own; the data block is `frame[offset:-trailer]`. A fixed-layout model is
    unpacked straight from the frame when every optional field is there, with no payload
    object; any other model is decoded as usual and its fields formatted into the same single
    %-format. None for a model without JSON members (nothing to gain)."""
    fixed_layout = bool(cls._layouts) and cls.decode.__func__ is Payload.decode.__func__  # type: ignore[attr-defined]
    own_fields = "_line_fields" in cls.__dict__
    # Fields unpacked here by their struct codes, or given by the model's own `_line_fields`
    # (which keeps to the same ranges), are wire integers; other decoders' values might not be.
    env, lines, entries, optional_vars, extra = _json_entries(
        cls.SPEC, wire_ints=fixed_layout or own_fields
    )
    if not entries:
        return None
    template, arguments = _text_parts(entries, guarded=False)
    if extra is not None:
        template += "%s"
        arguments.append(f"""', "extra": "' + {extra}.hex().upper() + '"' if {extra} else ''""")
    env.update(
        template=before + template + after.replace("%", "%%"),
        cls=cls,
        decode=cls.decode,
        text=_text,
        PayloadError=PayloadError,
    )
    body = ["def line(raw, p, m, n):"]
    values = f"(p, p, m, n, {', '.join(arguments)})"
    if fixed_layout:
        size, unpack, present, _ = cls._layouts[0]  # every field there
        fixed = [f"v{index}" for index in range(present)]
        env["unpack"] = unpack
        body += [
            f"    if len(raw) < {offset + trailer + size}:",
            "        return None",
            f"    {', '.join(fixed)}, = unpack(raw, {offset})",
        ]
        if cls._tail is not None:  # `extra` or another name (then written as hex)
            body.append(f"    v{len(cls.SPEC) - 1} = raw[{offset + size}:-{trailer}]")
        body += [f"    v{index} = text(v{index})" for index in cls._ascii]
        body.append(f"    return template % {values}")
    elif own_fields:
        env["fields"] = cls._line_fields
        body += [
            f"    got = fields(raw[{offset}:-{trailer}])",
            "    if got is None:",
            "        return None",
            f"    {', '.join(f'v{index}' for index in range(len(cls.SPEC)))}, = got",
        ]
    else:
        body += [
            "    try:",
            f"        self = decode(raw[{offset}:-{trailer}])",
            "    except PayloadError:",
            "        return None",
            "    if type(self) is not cls:",
            "        return None",
            *lines,
        ]
    if not fixed_layout:
        if optional_vars:
            every = " and ".join(f"{var} is not None" for var in optional_vars)
            body += [f"    if {every}:", f"        return template % {values}", "    return None"]
        else:
            body.append(f"    return template % {values}")
    exec(compile("\n".join(body) + "\n", f"<{cls.__name__} line>", "exec"), env)
    function: LineFunction = env["line"]
    return function
