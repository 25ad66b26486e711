"""The wire codec: frozen message classes, msgpack `encode` / `decode`, validation.

Every message is a frozen dataclass declared with `@message("tag")` (a top-level frame,
carrying its type tag and version) or `@struct` (a nested value). On the wire a message is a
msgpack map: ``{"t": tag, "v": version, <field>: <value>, ...}``; a struct is a map of its
fields. Unknown keys are ignored (newer peers may add fields); missing fields take their
defaults, or fail validation when they have none.

`decode` is the only door for untrusted bytes. Whatever it is fed, it returns a message or
raises a `SchemaError` subclass, never anything else.
"""

from __future__ import annotations

import dataclasses
import re
import types
import typing
from collections.abc import Callable
from typing import Any, ClassVar, Literal, TypeVar, dataclass_transform, get_args, get_origin

import msgpack

from schemas.errors import (
    FieldTooLong,
    ForbiddenCharacter,
    FrameTooLarge,
    InvalidField,
    MalformedFrame,
    PayloadTooLarge,
    SchemaError,
    UnknownType,
    UnsupportedVersion,
)

MAX_FRAME_BYTES = 1024 * 1024
"""A whole frame, encoded, may not exceed 1 MiB."""

_MAX_DEPTH = 16
_MAX_ITEMS = 100_000
_CONTROL = re.compile("[\x00-\x1f\x7f-\x9f]")
"""C0 controls, DEL and C1 controls: never part of an id."""


@dataclasses.dataclass(frozen=True, slots=True)
class MaxLen:
    """Annotated limit on a string's length in characters (`FieldTooLong`)."""

    chars: int


@dataclasses.dataclass(frozen=True, slots=True)
class MaxBytes:
    """Annotated limit on a payload's encoded size in bytes (`PayloadTooLarge`).

    On `str` it counts UTF-8 bytes; on `bytes` its length; on `dict[str, str]` the UTF-8
    bytes of every key and value together.
    """

    size: int


@dataclasses.dataclass(frozen=True, slots=True)
class NoControl:
    """Annotated ban on control characters (C0, DEL, C1) in a string (`ForbiddenCharacter`).

    NUL is refused in every string and map key or value, with or without this mark: no
    store can keep it (PostgreSQL text cannot hold it).
    """


@dataclasses.dataclass(frozen=True, slots=True)
class MaxItems:
    """Annotated limit on the number of items in a list or map (`InvalidField`)."""

    count: int


class Message:
    """Base of every top-level wire message. Subclasses are made with `@message`."""

    TYPE: ClassVar[str] = ""
    VERSION: ClassVar[int] = 1
    __slots__ = ()


class Struct:
    """Base of nested wire values. Subclasses are made with `@struct`.

    A struct is immutable, so its wire form is computed once and kept (`_wire`).
    """

    __slots__ = ("_wire",)
    _wire: dict[str, Any]


M = TypeVar("M", bound=Message)
S = TypeVar("S", bound=Struct)
Validator = Callable[[Any, str], Any]
Encoder = Callable[[Any], Any]

_REGISTRY: dict[str, type[Message]] = {}
_CODECS: dict[type, tuple[tuple[tuple[str, Validator, bool, Any], ...], tuple[str, ...]]] = {}
_Plan = tuple[
    dict[str, Validator], frozenset[str], dict[str, Any], tuple[tuple[str, Callable[[], Any]], ...]
]
_PLANS: dict[type, _Plan] = {}
_ENCODE_PLANS: dict[type, tuple[tuple[str, bool, Any, bool], ...]] = {}
_set = object.__setattr__
_new = object.__new__


@dataclass_transform(frozen_default=True, kw_only_default=True)
def message(tag: str, version: int = 1) -> Callable[[type[M]], type[M]]:
    """Declare a top-level message with a unique type tag and a format version."""

    def wrap(cls: type[M]) -> type[M]:
        if tag in _REGISTRY:
            raise TypeError(f"duplicate message tag {tag!r}")
        made = dataclasses.dataclass(frozen=True, slots=True, kw_only=True)(cls)
        made.TYPE = tag
        made.VERSION = version
        _REGISTRY[tag] = made
        return made

    return wrap


@dataclass_transform(frozen_default=True, kw_only_default=True)
def struct(cls: type[S]) -> type[S]:
    """Declare a nested value (encoded as a map of its fields)."""
    return dataclasses.dataclass(frozen=True, slots=True, kw_only=True)(cls)


def registered() -> dict[str, type[Message]]:
    """Every declared message class by tag (a copy)."""
    return dict(_REGISTRY)


# --------------------------------------------------------------------------- encoding


def _to_wire(value: Any) -> Any:
    if isinstance(value, Struct):
        try:
            return value._wire
        except AttributeError:
            wire = _fields_to_wire(value, {})
            _set(value, "_wire", wire)
            return wire
    if isinstance(value, Message):
        return _fields_to_wire(value, {})
    if isinstance(value, (tuple, list)):
        return [_to_wire(v) for v in value]
    return value


def _fields_to_wire(value: Any, body: dict[str, Any]) -> dict[str, Any]:
    """Put every field that differs from its default into `body` (defaults stay implicit)."""
    plan = _ENCODE_PLANS.get(type(value))
    if plan is None:
        _compile(type(value))
        plan = _ENCODE_PLANS[type(value)]
    for name, required, default, nested in plan:
        v = getattr(value, name)
        if required or v != default:
            body[name] = _to_wire(v) if nested else v
    return body


def to_wire(msg: Message) -> dict[str, Any]:
    """The plain map a message is encoded as (before msgpack); defaults are left out."""
    return _fields_to_wire(msg, {"t": msg.TYPE, "v": msg.VERSION})


def encode(msg: Message) -> bytes:
    """Encode a message to msgpack bytes. Raises `FrameTooLarge` past 1 MiB."""
    data: bytes = msgpack.packb(to_wire(msg), use_bin_type=True)
    if len(data) > MAX_FRAME_BYTES:
        raise FrameTooLarge(f"{msg.TYPE} frame is {len(data)} bytes (limit {MAX_FRAME_BYTES})")
    return data


# --------------------------------------------------------------------------- decoding


def decode(data: bytes | bytearray | memoryview) -> Message:
    """Decode untrusted bytes into a message, or raise a `SchemaError` subclass."""
    if len(data) > MAX_FRAME_BYTES:
        raise FrameTooLarge(f"frame is {len(data)} bytes (limit {MAX_FRAME_BYTES})")
    try:
        body = msgpack.unpackb(data, raw=False, strict_map_key=True, use_list=True)
    except Exception as exc:  # msgpack raises a zoo of types on hostile input
        raise MalformedFrame(f"not a msgpack frame: {type(exc).__name__}") from None
    return from_wire(body)


def decode_as(data: bytes | bytearray | memoryview, cls: type[M]) -> M:
    """Decode and insist on one message class (`UnknownType` otherwise)."""
    msg = decode(data)
    if not isinstance(msg, cls):
        raise UnknownType(f"expected {cls.TYPE!r}, got {msg.TYPE!r}")
    return msg


def pack_struct(value: Struct) -> bytes:
    """Encode a nested value on its own (for storage: roster rows, snapshots)."""
    data: bytes = msgpack.packb(_to_wire(value), use_bin_type=True)
    return data


def unpack_struct(data: bytes, cls: type[S]) -> S:
    """Decode bytes made by `pack_struct`; raises a `SchemaError` subclass on bad input."""
    try:
        body = msgpack.unpackb(data, raw=False, strict_map_key=True, use_list=True)
    except Exception as exc:
        raise MalformedFrame(f"not a msgpack value: {type(exc).__name__}") from None
    if not isinstance(body, dict):
        raise MalformedFrame("a struct is a map")
    built: S = _build(cls, body, "")
    return built


def from_wire(body: Any) -> Message:
    """Validate a decoded map and build its message."""
    if not isinstance(body, dict):
        raise MalformedFrame("a frame is a map")
    tag = body.get("t")
    if not isinstance(tag, str):
        raise MalformedFrame("a frame needs a string type tag 't'")
    cls = _REGISTRY.get(tag)
    if cls is None:
        raise UnknownType(f"unknown message type {tag[:64]!r}")
    version = body.get("v", 1)
    if type(version) is not int or version < 1:
        raise InvalidField("v: must be a positive integer")
    if version > cls.VERSION:
        raise UnsupportedVersion(f"{tag} version {version} (this peer reads up to {cls.VERSION})")
    built: Message = _build(cls, body, "")
    return built


def _build(cls: type[Any], body: dict[str, Any], path: str) -> Any:
    plan = _PLANS.get(cls)
    if plan is None:
        _compile(cls)
        plan = _PLANS[cls]
    checks, required, defaults, factories = plan
    values = dict(defaults)
    for name, raw in body.items():
        check = checks.get(name)
        if check is not None:
            values[name] = check(raw, path + name)
    if not required.issubset(body.keys()):
        raise InvalidField(f"{path}{min(required - body.keys())}: required")
    for name, factory in factories:
        if name not in body:
            values[name] = factory()
    obj = _new(cls)
    for name, value in values.items():
        _set(obj, name, value)
    return obj


def _compile(cls: type) -> tuple[tuple[tuple[str, Validator, bool, Any], ...], tuple[str, ...]]:
    hints = typing.get_type_hints(cls, include_extras=True)
    fields = []
    defaults: dict[str, Any] = {}
    factories: list[tuple[str, Callable[[], Any]]] = []
    for f in dataclasses.fields(cls):
        required = f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
        if f.default_factory is not dataclasses.MISSING:
            default = f.default_factory()
            factories.append((f.name, f.default_factory))
        else:
            default = f.default
        if not required:
            defaults[f.name] = default
        fields.append((f.name, _validator(hints[f.name], 0), required, default))
    codec = (tuple(fields), tuple(f.name for f in dataclasses.fields(cls)))
    _CODECS[cls] = codec
    _ENCODE_PLANS[cls] = tuple(
        (name, required, default, _holds_struct(hints[name]))
        for name, _c, required, default in fields
    )
    _PLANS[cls] = (
        {name: check for name, check, _r, _d in fields},
        frozenset(name for name, _c, req, _d in fields if req),
        defaults,
        tuple(factories),
    )
    return codec


def _holds_struct(tp: Any) -> bool:
    """Whether values of this annotation contain structs (and so need converting)."""
    if isinstance(tp, type):
        return issubclass(tp, Struct)
    return any(_holds_struct(arg) for arg in get_args(tp) if arg is not Ellipsis)


def _fail(path: str, what: str) -> InvalidField:
    return InvalidField(f"{path}: {what}")


def _validator(tp: Any, depth: int) -> Validator:
    if depth > _MAX_DEPTH:
        raise TypeError("schema nests too deeply")
    limits: list[Any] = []
    if get_origin(tp) is typing.Annotated:
        tp, *limits = get_args(tp)
    origin = get_origin(tp)

    if origin in (typing.Union, types.UnionType):
        options = [a for a in get_args(tp) if a is not type(None)]
        if len(options) != 1:
            raise TypeError(f"only X | None unions are supported, not {tp}")
        inner = _validator(
            typing.Annotated[options[0], *limits] if limits else options[0], depth + 1
        )

        def check_optional(v: Any, path: str) -> Any:
            return None if v is None else inner(v, path)

        return check_optional

    if origin is Literal:
        allowed = frozenset(get_args(tp))

        def check_literal(v: Any, path: str) -> Any:
            if not isinstance(v, str) or v not in allowed:
                raise _fail(path, f"must be one of {sorted(allowed)}")
            return v

        return check_literal

    max_len = next((lim.chars for lim in limits if isinstance(lim, MaxLen)), None)
    max_bytes = next((lim.size for lim in limits if isinstance(lim, MaxBytes)), None)
    max_items = next((lim.count for lim in limits if isinstance(lim, MaxItems)), _MAX_ITEMS)
    forbidden = _CONTROL if any(isinstance(lim, NoControl) for lim in limits) else None

    if tp is str:

        def check_str(v: Any, path: str) -> Any:
            if type(v) is not str:
                raise _fail(path, "must be a string")
            if forbidden is not None:
                bad = forbidden.search(v)
                if bad is not None:
                    raise ForbiddenCharacter(path, bad.group())
            elif "\x00" in v:
                raise ForbiddenCharacter(path, "\x00")
            if max_len is not None and len(v) > max_len:
                raise FieldTooLong(f"{path}: longer than {max_len} characters")
            if max_bytes is not None and len(v) > max_bytes // 4 and len(v.encode()) > max_bytes:
                raise PayloadTooLarge(f"{path}: larger than {max_bytes} bytes")
            return v

        return check_str

    if tp is bytes:

        def check_bytes(v: Any, path: str) -> Any:
            if type(v) is not bytes:
                raise _fail(path, "must be binary")
            if max_bytes is not None and len(v) > max_bytes:
                raise PayloadTooLarge(f"{path}: larger than {max_bytes} bytes")
            return v

        return check_bytes

    if tp is bool:

        def check_bool(v: Any, path: str) -> Any:
            if type(v) is not bool:
                raise _fail(path, "must be a boolean")
            return v

        return check_bool

    if tp is int:

        def check_int(v: Any, path: str) -> Any:
            if type(v) is not int:
                raise _fail(path, "must be an integer")
            return v

        return check_int

    if tp is float:

        def check_float(v: Any, path: str) -> Any:
            if type(v) is float:
                return v
            if type(v) is int:
                return float(v)
            raise _fail(path, "must be a number")

        return check_float

    if origin is tuple:
        args = get_args(tp)
        if len(args) != 2 or args[1] is not Ellipsis:
            raise TypeError(f"only tuple[X, ...] is supported, not {tp}")
        item = _validator(args[0], depth + 1)

        def check_tuple(v: Any, path: str) -> Any:
            if type(v) is not list:
                raise _fail(path, "must be a list")
            if len(v) > max_items:
                raise _fail(path, f"more than {max_items} items")
            return tuple(item(x, f"{path}[{i}]") for i, x in enumerate(v))

        return check_tuple

    if origin is dict:
        key_t, val_t = get_args(tp)
        if key_t is not str or val_t is not str:
            raise TypeError(f"only dict[str, str] is supported, not {tp}")

        def check_map(v: Any, path: str) -> Any:
            if type(v) is not dict:
                raise _fail(path, "must be a map")
            if len(v) > max_items:
                raise _fail(path, f"more than {max_items} entries")
            size = 0
            for k, x in v.items():
                if type(k) is not str or type(x) is not str:
                    raise _fail(path, "keys and values must be strings")
                if "\x00" in k or "\x00" in x:
                    raise ForbiddenCharacter(f"{path}[{k[:64]!r}]", "\x00")
                size += len(k) + len(x)
            if max_bytes is not None and size > max_bytes // 4:
                size = sum(len(k.encode()) + len(x.encode()) for k, x in v.items())
                if size > max_bytes:
                    raise PayloadTooLarge(f"{path}: larger than {max_bytes} bytes")
            return v

        return check_map

    if isinstance(tp, type) and issubclass(tp, Struct):
        nested = tp

        def check_struct(v: Any, path: str) -> Any:
            if type(v) is not dict:
                raise _fail(path, "must be a map")
            return _build(nested, v, path + ".")

        return check_struct

    raise TypeError(f"no wire validator for {tp!r}")


def compile_all() -> None:
    """Compile every registered codec now (import-time errors beat first-use errors)."""
    for cls in list(_REGISTRY.values()):
        _compile(cls)


__all__ = [
    "MAX_FRAME_BYTES",
    "MaxBytes",
    "MaxItems",
    "MaxLen",
    "Message",
    "NoControl",
    "SchemaError",
    "Struct",
    "compile_all",
    "decode",
    "decode_as",
    "encode",
    "from_wire",
    "message",
    "pack_struct",
    "registered",
    "struct",
    "to_wire",
    "unpack_struct",
]
