"""The wire codec: frozen msgspec Structs, msgpack `encode` / `decode`, validation.

Every top-level message subclasses `Message` with its type tag,
``class Join(Message, tag="join", kw_only=True)``; a nested value subclasses `Struct`. On
the wire a message is a msgpack map: ``{"t": tag, "v": version, <field>: <value>, ...}``; a
struct is a map of its fields. Unknown keys are ignored (newer peers may add fields);
missing fields take their defaults, or fail validation when they have none. A field is left
out of the wire when it holds its default object (the one the class declares, as every
field not given at construction does).

Limits are msgspec ``Meta`` annotations (``max_length`` on strings, bytes, lists and maps),
checked in C while decoding. What msgspec cannot say is checked after it, over the string
fields only: NUL in any string or map key or value, control characters in ids (`NoControl`),
UTF-8 byte budgets of strings and string maps (`MaxBytes`).

`decode` is the only door for untrusted bytes. Whatever it is fed, it returns a message or
raises a `SchemaError` subclass, never anything else. `decode_trusted` is for bytes one of
our own services encoded (the statekeeper's replies to an edge, on a subject only it may
publish to): msgspec's checks in C, without the Python pass over the strings.
"""

from __future__ import annotations

import dataclasses
import re
import types
import typing
from collections.abc import Callable
from typing import Annotated, Any, ClassVar, Literal, TypeVar, Union, get_args, get_origin

import msgspec

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

_CONTROL = re.compile("[\x00-\x1f\x7f-\x9f]")
"""C0 controls, DEL and C1 controls: never part of an id."""


@dataclasses.dataclass(frozen=True, slots=True)
class MaxBytes:
    """Annotated limit on a payload's encoded size in bytes (`PayloadTooLarge`).

    On `str` it counts UTF-8 bytes (put ``Meta(max_length=size)`` beside it: a cheap bound
    msgspec checks first); on `bytes` its length (checked by the ``Meta(max_length=size)``
    beside it); on `dict[str, str]` the UTF-8 bytes of every key and value together.
    """

    size: int


@dataclasses.dataclass(frozen=True, slots=True)
class NoControl:
    """Annotated ban on control characters (C0, DEL, C1) in a string (`ForbiddenCharacter`).

    NUL is refused in every string and map key or value, with or without this mark: no
    store can keep it (PostgreSQL text cannot hold it).
    """


class Message(
    msgspec.Struct, frozen=True, kw_only=True, omit_defaults=True, gc=False, tag_field="t"
):
    """Base of every top-level wire message: subclass it with ``tag="..."``.

    `v` is the format version the frame was written in: always on the wire, 1 unless a
    peer wrote a newer format (`decode` refuses versions above the class's `VERSION`; a
    class that bumps `VERSION` redeclares `v` with ``le=VERSION``).
    """

    TYPE: ClassVar[str] = ""
    VERSION: ClassVar[int] = 1
    ABSTRACT: ClassVar[bool] = True
    """True on a base class (never on the wire); set by `compile_all` on the rest."""
    v: Annotated[int, msgspec.Meta(ge=1, le=1)] = msgspec.field(default_factory=(1).__int__)
    # A factory that is not an empty list/dict/set is never "the default", so `v` is always
    # encoded, as the tag's second key.


class Struct(msgspec.Struct, frozen=True, kw_only=True, omit_defaults=True, gc=False):
    """Base of nested wire values (encoded as a map of their fields)."""


M = TypeVar("M", bound=Message)
S = TypeVar("S", bound=Struct)
_Check = Callable[[Any, str], None]

_REGISTRY: dict[str, type[Message]] = {}
_CHECKS: dict[type, _Check | None] = {}
_HINTS: dict[type, dict[str, Any]] = {}
_ENCODER = msgspec.msgpack.Encoder()
_DECODERS: dict[Any, msgspec.msgpack.Decoder[Any]] = {}
_decode_message: Callable[[bytes | bytearray | memoryview], Any] | None = None


def registered() -> dict[str, type[Message]]:
    """Every declared message class by tag (a copy)."""
    if not _REGISTRY:
        compile_all()
    return dict(_REGISTRY)


def compile_all() -> None:
    """Register every message class and compile its checks (import-time errors beat
    first-use errors). `schemas/__init__.py` calls it once every module is imported."""
    global _decode_message
    _REGISTRY.clear()
    todo: list[type[Message]] = [Message]
    while todo:
        cls = todo.pop()
        todo.extend(cls.__subclasses__())
        if "ABSTRACT" in cls.__dict__:
            continue
        tag = cls.__struct_config__.tag
        if not isinstance(tag, str) or tag == cls.__name__:
            raise TypeError(f"{cls.__name__} needs an explicit tag (or ABSTRACT = True)")
        if tag in _REGISTRY:
            raise TypeError(f"duplicate message tag {tag!r}")
        cls.TYPE = tag
        cls.ABSTRACT = False
        _REGISTRY[tag] = cls
    for cls in _REGISTRY.values():
        _checker(cls)
    union: Any = Union.__getitem__(tuple(_REGISTRY.values()))  # every tagged class
    _decode_message = msgspec.msgpack.Decoder(union).decode


# --------------------------------------------------------------------------- encoding


def to_wire(msg: Message | Struct) -> dict[str, Any]:
    """The plain map a message is encoded as (before msgpack); defaults are left out."""
    wire: dict[str, Any] = msgspec.to_builtins(msg, builtin_types=(bytes,))
    return wire


def encode(msg: Message) -> bytes:
    """Encode a message to msgpack bytes. Raises `FrameTooLarge` past 1 MiB."""
    data = _ENCODER.encode(msg)
    if len(data) > MAX_FRAME_BYTES:
        raise FrameTooLarge(f"{msg.TYPE} frame is {len(data)} bytes (limit {MAX_FRAME_BYTES})")
    return data


def pack_struct(value: Struct) -> bytes:
    """Encode a nested value on its own (for storage: roster rows, snapshots)."""
    return _ENCODER.encode(value)


# --------------------------------------------------------------------------- decoding


def decode(data: bytes | bytearray | memoryview) -> Message:
    """Decode untrusted bytes into a message, or raise a `SchemaError` subclass."""
    if len(data) > MAX_FRAME_BYTES:
        raise FrameTooLarge(f"frame is {len(data)} bytes (limit {MAX_FRAME_BYTES})")
    if _decode_message is None:
        compile_all()
    assert _decode_message is not None
    try:
        msg: Message = _decode_message(data)
    except msgspec.ValidationError as exc:
        raise _refusal(data, None, str(exc)) from None
    except Exception as exc:  # msgspec.DecodeError; anything else on hostile input too
        raise MalformedFrame(f"not a msgpack frame: {exc}") from None
    check = _CHECKS[type(msg)]
    if check is not None:
        check(msg, "")
    return msg


def decode_trusted(data: bytes | bytearray | memoryview) -> Message:
    """`decode` for bytes `encode` made in one of our services (the module docstring):
    the types, tags, versions and length limits are checked as `decode` checks them, the
    string contents (NUL, control characters, UTF-8 byte budgets) are not. Raises a
    `SchemaError` subclass like `decode` on bytes it cannot read."""
    if _decode_message is None:
        compile_all()
    assert _decode_message is not None
    try:
        msg: Message = _decode_message(data)
    except msgspec.ValidationError as exc:
        raise _refusal(data, None, str(exc)) from None
    except Exception as exc:
        raise MalformedFrame(f"not a msgpack frame: {exc}") from None
    return msg


def decode_as(data: bytes | bytearray | memoryview, cls: type[M]) -> M:
    """Decode and insist on one message class (`UnknownType` otherwise)."""
    msg = decode(data)
    if not isinstance(msg, cls):
        raise UnknownType(f"expected {cls.TYPE!r}, got {msg.TYPE!r}")
    return msg


def unpack_struct(data: bytes, cls: type[S]) -> S:
    """Decode bytes made by `pack_struct`; raises a `SchemaError` subclass on bad input."""
    decoder = _DECODERS.get(cls)
    if decoder is None:
        decoder = _DECODERS[cls] = msgspec.msgpack.Decoder(cls)
    try:
        value: S = decoder.decode(data)
    except msgspec.ValidationError as exc:
        raise _refusal(data, cls, str(exc)) from None
    except Exception as exc:
        raise MalformedFrame(f"not a msgpack value: {exc}") from None
    check = _checker(cls)
    if check is not None:
        check(value, "")
    return value


def from_wire(body: Any) -> Message:
    """Validate a decoded map (as `to_wire` makes) and build its message."""
    try:
        data = _ENCODER.encode(body)
    except Exception as exc:
        raise MalformedFrame(f"not a wire value: {exc}") from None
    return decode(data)


# --------------------------------------------------------------------------- refusals
#
# The slow path: msgspec said no. Its message ends with the JSON path of the field
# ("... - at `$.participant.id`"); the field's annotation says which named error it is.

_SEGMENT = re.compile(r"\.(\w+)|\[(\d+)\]|\[(\.\.\.)\]")


def _refusal(data: bytes | bytearray | memoryview, root: type | None, text: str) -> SchemaError:
    """The named error for a msgspec `ValidationError` message."""
    what, at, where = text.rpartition(" - at ")
    if not at:
        what, where = text, ""
    where = where.removeprefix("`key` in ").strip("`")
    path = where.removeprefix("$")
    segments = [m.group(1) or m.group(2) or m.group(3) for m in _SEGMENT.finditer(path)]
    if root is None:
        field_missing = "missing required field" in what and not what.endswith("`t`")
        if (not path and not field_missing) or segments[:1] == ["t"]:
            if what.startswith("Invalid value"):
                return UnknownType(f"unknown message type: {what}"[:200])
            return MalformedFrame(f"a frame is a map with a string type tag 't': {what}")
        root = _message_class(data)  # None only past the unpacker's depth: no annotation
    shown = path.removeprefix(".")
    if "missing required field" in what:
        name = what.rsplit("`", 2)[-2]
        return InvalidField(f"{shown}.{name}: required" if shown else f"{name}: required")
    annotation = _annotation_at(root, segments)
    if "of length <=" in what and ("`str`" in what or "`bytes`" in what):
        if any(isinstance(extra, MaxBytes) for extra in _extras(annotation)):
            return PayloadTooLarge(f"{shown}: {what}")
        return FieldTooLong(f"{shown}: {what}")
    if what.startswith("Invalid enum value"):
        allowed = sorted(get_args(_bare(annotation)))
        return InvalidField(f"{shown}: must be one of {allowed}")
    if segments == ["v"]:
        return InvalidField("v: must be a positive integer")
    return InvalidField(f"{shown}: {what}")


def _message_class(data: bytes | bytearray | memoryview) -> type[Message] | None:
    """The class a frame's tag names; `UnsupportedVersion` if its version is newer."""
    try:
        head = _HEAD.decode(data)
    except Exception:
        return None
    cls = _REGISTRY.get(head.t)
    if cls is None:
        return None
    version = head.v
    if type(version) is int and version > cls.VERSION:
        tag = cls.TYPE
        raise UnsupportedVersion(f"{tag} version {version} (this peer reads up to {cls.VERSION})")
    return cls


class _Head(msgspec.Struct):
    """A frame's tag and version, the rest skipped."""

    t: str
    v: object = 1


_HEAD = msgspec.msgpack.Decoder(_Head)


def _extras(annotation: Any) -> tuple[Any, ...]:
    return get_args(annotation)[1:] if get_origin(annotation) is Annotated else ()


def _bare(annotation: Any) -> Any:
    """The annotation without `Annotated` extras and without ``| None``."""
    if get_origin(annotation) is Annotated:
        annotation = get_args(annotation)[0]
    if get_origin(annotation) in (Union, types.UnionType):
        options = [a for a in get_args(annotation) if a is not type(None)]
        return _bare(options[0]) if len(options) == 1 else annotation
    return annotation


def _optional_inner(annotation: Any) -> Any:
    if get_origin(annotation) in (Union, types.UnionType):
        options = [a for a in get_args(annotation) if a is not type(None)]
        if len(options) == 1:
            return options[0]
    return annotation


def _annotation_at(root: type | None, segments: list[str]) -> Any:
    """The annotation (extras kept) of the value at a msgspec path below `root`."""
    annotation: Any = root
    for segment in segments:
        annotation = _optional_inner(annotation)
        tp = _bare(annotation)
        if isinstance(tp, type) and issubclass(tp, msgspec.Struct):
            annotation = _hints(tp).get(segment)
        elif get_origin(tp) in (tuple, dict):
            annotation = get_args(tp)[-1 if segment == "..." else 0]
        else:
            return None
    return _optional_inner(annotation)


def _hints(cls: type) -> dict[str, Any]:
    hints = _HINTS.get(cls)
    if hints is None:
        hints = _HINTS[cls] = typing.get_type_hints(cls, include_extras=True)
    return hints


# --------------------------------------------------------------------------- string checks
#
# One function per class, generated from its annotations: a handful of C-level string
# tests per field (`str.isprintable` for ids, ``"\0" in s`` for free text), so a decode
# pays for the strings a message has and nothing else. The error path, rare, looks for
# the offending character.


def _control(value: str, path: str) -> None:
    """Raise `ForbiddenCharacter` if the (non-printable) id holds a control character."""
    bad = _CONTROL.search(value)
    if bad is not None:
        raise ForbiddenCharacter(path, bad.group())


def _nul(path: str) -> None:
    raise ForbiddenCharacter(path, "\x00")


def _too_large(path: str, limit: int) -> None:
    raise PayloadTooLarge(f"{path}: larger than {limit} bytes")


def _check_map(value: dict[str, str], path: str, limit: int | None) -> None:
    size = 0
    for key, item in value.items():
        if "\x00" in key or "\x00" in item:
            _nul(f"{path}[{key[:64]!r}]")
        size += len(key) + len(item)
    if (
        limit is not None
        and size > limit // 4
        and sum(len(k.encode()) + len(x.encode()) for k, x in value.items()) > limit
    ):
        _too_large(path, limit)


def _check_ids(value: tuple[str, ...], path: str) -> None:
    for i, item in enumerate(value):
        if not item.isprintable():
            _control(item, f"{path}[{i}]")


def _check_texts(value: tuple[str, ...], path: str) -> None:
    for i, item in enumerate(value):
        if "\x00" in item:
            _nul(f"{path}[{i}]")


def _checker(cls: type) -> _Check | None:
    """The compiled string checks of a Struct class (None when it has no strings)."""
    if cls in _CHECKS:
        return _CHECKS[cls]
    _CHECKS[cls] = None  # a class never nests itself, but stay finite if one does
    env: dict[str, Any] = {
        "_control": _control,
        "_nul": _nul,
        "_too_large": _too_large,
        "_check_map": _check_map,
        "_check_ids": _check_ids,
        "_check_texts": _check_texts,
    }
    body: list[str] = []
    for name, annotation in _hints(cls).items():
        if name in ("v",) or get_origin(annotation) is ClassVar:
            continue
        body.extend(_field_checks(name, annotation, env))
    if not body:
        return None
    source = "def check(m, at):\n" + "".join(f"    {line}\n" for line in body)
    exec(source, env)  # the source is built from our own annotations only
    check: _Check = env["check"]
    _CHECKS[cls] = check
    return check


def _field_checks(name: str, annotation: Any, env: dict[str, Any]) -> list[str]:
    """Source lines checking field `name` of ``m`` (path prefix ``at``)."""
    optional = _optional_inner(annotation) is not annotation
    annotation = _optional_inner(annotation)
    extras = _extras(annotation)
    tp = _bare(annotation)
    limit = next((e.size for e in extras if isinstance(e, MaxBytes)), None)
    path = f"at + {name!r}"
    lines: list[str]
    if tp is str:
        if any(isinstance(e, NoControl) for e in extras):
            lines = [f"if not s.isprintable(): _control(s, {path})"]
        else:
            lines = [f"if '\\x00' in s: _nul({path})"]
        if limit is not None:
            lines.append(
                f"if len(s) > {limit // 4} and len(s.encode()) > {limit}: "
                f"_too_large({path}, {limit})"
            )
    elif get_origin(tp) is dict:
        lines = [f"if s: _check_map(s, {path}, {limit})"]
    elif get_origin(tp) is tuple:
        item = _optional_inner(get_args(tp)[0])
        item_tp = _bare(item)
        if item_tp is str:
            ids = any(isinstance(e, NoControl) for e in _extras(item))
            lines = [f"if s: {'_check_ids' if ids else '_check_texts'}(s, {path})"]
        elif isinstance(item_tp, type) and issubclass(item_tp, Struct):
            nested = _checker(item_tp)
            if nested is None:
                return []
            env[f"_check_{item_tp.__name__}"] = nested
            lines = [
                "for i, x in enumerate(s):",
                f"    _check_{item_tp.__name__}(x, f'{{at}}{name}[{{i}}].')",
            ]
        else:
            return []
    elif isinstance(tp, type) and issubclass(tp, Struct):
        nested = _checker(tp)
        if nested is None:
            return []
        env[f"_check_{tp.__name__}"] = nested
        lines = [f"_check_{tp.__name__}(s, at + '{name}.')"]
    elif tp in (bytes, bool, int, float) or get_origin(tp) is Literal:
        return []  # no string, or a closed set of them
    else:
        raise TypeError(f"no wire check for {annotation!r}")
    if optional:
        return [f"s = m.{name}", "if s is not None:", *(f"    {line}" for line in lines)]
    return [f"s = m.{name}", *lines]


__all__ = [
    "MAX_FRAME_BYTES",
    "MaxBytes",
    "Message",
    "NoControl",
    "SchemaError",
    "Struct",
    "compile_all",
    "decode",
    "decode_as",
    "decode_trusted",
    "encode",
    "from_wire",
    "pack_struct",
    "registered",
    "to_wire",
    "unpack_struct",
]
