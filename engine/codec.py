"""Typed payloads: how task arguments and results become stored JSON, and back.

Stores keep plain JSON.  At enqueue the App's codec *encodes* each argument
(a ``datetime`` becomes its ISO text, a dataclass a dict of its fields); in the
worker it *decodes* each stored argument to the type its handler's parameter
is annotated with, and a handler's result the same way in reverse (decoded by
the task's return annotation on ``job.result`` and workflow results).  The
encoded form carries no type tags: the annotation says what to build, so an
operator reads plain values in the store, and an argument annotated ``Any``
(or not at all) gets the JSON as stored.

A codec is any object with the two methods of :class:`Codec`; give one to
``th.App(codec=...)``.  :class:`DefaultCodec` handles ``datetime``, ``date``,
``time``, ``UUID``, ``Decimal``, enums, dataclasses and pydantic models (when
pydantic is installed: ``taskharbor[pydantic]``), nested in lists, tuples,
sets, dicts, ``X | None`` and unions.  Anything else stays as it is, and the
strict JSON rule refuses it at enqueue.
"""

from __future__ import annotations

import dataclasses
import enum
import sys
import types
import typing
from collections import abc
from collections.abc import Callable
from datetime import date, datetime, time
from decimal import Decimal, InvalidOperation
from typing import Any, Protocol, runtime_checkable
from uuid import UUID

from .context import PermanentError

Decoder = Callable[[Any], Any]
"""Builds one annotated type from its stored JSON; raises :class:`DecodeError`."""
Encoder = Callable[[Any, bool], Any]
"""Encodes one value of a type; the flag is true inside a dataclass or model, where
tuples and sets become lists (the fields' annotations bring them back)."""


@runtime_checkable
class Codec(Protocol):
    """What ``th.App(codec=...)`` takes.

    ``encode(value)`` returns the JSON form of one argument or result (None,
    bool, int, float, str, lists and str-keyed dicts of those); a value it does
    not know may be returned as it is, and is then refused at enqueue, naming
    the argument.  ``decode(data, annotation)`` turns stored JSON back into
    ``annotation`` (a type or a typing form such as ``list[Order]``); any
    exception it raises means the payload does not fit the annotation, and
    the job fails at once, permanently, naming the task, the argument and the
    expected type.  Both must be safe to call from several threads at once.
    """

    def encode(self, value: Any, /) -> Any: ...

    def decode(self, data: Any, annotation: Any, /) -> Any: ...


class DecodeError(ValueError):
    """Stored JSON does not fit the annotation; ``path`` says where inside the value."""

    def __init__(self, reason: str, path: str = "") -> None:
        self.reason = reason
        self.path = path
        super().__init__(f"{path}: {reason}" if path else reason)

    def inside(self, step: str) -> DecodeError:
        """The same error, one level further out (``step`` is ``[2]`` or ``.name``)."""
        return DecodeError(self.reason, step + self.path)


class PayloadError(PermanentError):
    """A stored argument or result does not decode to its annotated type (say, a deploy
    changed the type while jobs were waiting): retrying cannot help, so the job goes
    straight to ``dead``.  Raised by ``job.result`` too, for a result that no longer
    decodes."""


def type_name(annotation: Any) -> str:
    """A short name for an annotation, for messages: ``Order``, ``list[Order] | None``."""
    if annotation is None or annotation is type(None):
        return "None"
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if origin is typing.Annotated:
        return type_name(args[0])
    if origin is typing.Union or origin is types.UnionType:
        return " | ".join(map(type_name, args))
    if origin is not None and args:
        return f"{type_name(origin)}[{', '.join(map(type_name, args))}]"
    if isinstance(annotation, type):
        return annotation.__qualname__
    return repr(annotation).replace("typing.", "").replace("collections.abc.", "")


_SCALARS = frozenset({str, int, float, bool, type(None)})
_PLAIN = _SCALARS | {object, list, dict}
"""Annotations the default codec leaves to the handler: stored JSON is passed as it is
(an annotation of a plain JSON type is not checked, as before typed payloads)."""

_SEQUENCES: dict[Any, Callable[[Any], Any]] = {
    list: list,
    abc.Sequence: list,
    abc.MutableSequence: list,
    abc.Iterable: list,
    abc.Collection: list,
    set: set,
    abc.Set: frozenset,
    abc.MutableSet: set,
    frozenset: frozenset,
}
_MAPPINGS = frozenset({dict, abc.Mapping, abc.MutableMapping})


class DefaultCodec:
    """The codec every App has unless given another (see the module's docstring).

    Encoded forms: ``datetime``/``date``/``time`` as ISO 8601 text
    (``isoformat()``, an offset kept if the value has one), ``UUID`` and
    ``Decimal`` as text (exact), an enum member as its value, a dataclass as a
    dict of its fields (those ``__init__`` takes), a pydantic model as its
    ``model_dump(mode="json")``.  Inside a dataclass, tuples and sets become
    lists (the fields' annotations bring them back); at the top of an argument
    they stay refused, since nothing would say to rebuild them.

    Decoding is strict for the types it builds (a ``datetime`` from ISO text
    only, a dataclass from a dict with no unknown keys and its required fields)
    and leaves plain JSON annotations (``int``, ``str``, ``dict``...) unchecked.
    To add a type, subclass and extend :meth:`encoder_for` and :meth:`build_decoder`.
    """

    def __init__(self) -> None:
        self._decoders: dict[Any, Decoder | None] = {}
        self._encoders: dict[type, Encoder] = {}

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"

    # -- encoding ------------------------------------------------------------------

    def encode(self, value: Any, /) -> Any:
        """The JSON form of ``value``; what it does not know is returned as it is."""
        return self._encode(value, False)

    def _encode(self, value: Any, typed: bool) -> Any:
        kind = type(value)
        if kind in _SCALARS:
            return value
        encoder = self._encoders.get(kind)
        if encoder is None:
            encoder = self._encoders[kind] = self.encoder_for(kind)
        return encoder(value, typed)

    def encoder_for(self, kind: type) -> Encoder:
        """How values of ``kind`` are encoded (chosen once per type): override to add
        types, falling back on this method for the others."""
        if issubclass(kind, enum.Enum):
            return lambda value, typed: self._encode(value.value, typed)
        if issubclass(kind, datetime | date | time):
            return lambda value, typed: value.isoformat()
        if issubclass(kind, UUID | Decimal):
            return lambda value, typed: str(value)
        if dataclasses.is_dataclass(kind):
            names = [field.name for field in dataclasses.fields(kind) if field.init]
            return lambda value, typed: {
                name: self._encode(getattr(value, name), True) for name in names
            }
        if _pydantic() is not None and _pydantic_support().is_model_class(kind):
            dump: Encoder = lambda value, typed: _pydantic_support().dump(value)  # noqa: E731
            return dump
        if issubclass(kind, list):
            return lambda value, typed: [self._encode(item, typed) for item in value]
        if issubclass(kind, dict):
            return lambda value, typed: {
                self._key(key): self._encode(item, typed) for key, item in value.items()
            }
        if issubclass(kind, tuple | set | frozenset):  # refused at the top, as not JSON
            return lambda value, typed: (
                [self._encode(item, typed) for item in value] if typed else value
            )
        return _as_it_is

    def _key(self, key: Any) -> Any:
        """A dict key: enum members and UUIDs become text; others stay (str is JSON's)."""
        if isinstance(key, enum.Enum) and isinstance(key.value, str):
            return key.value
        if isinstance(key, UUID):
            return str(key)
        return key

    # -- decoding ------------------------------------------------------------------

    def decode(self, data: Any, annotation: Any, /) -> Any:
        """``data`` as ``annotation``; :class:`DecodeError` when it does not fit."""
        decoder = self.decoder(annotation)
        return data if decoder is None else decoder(data)

    def decoder(self, annotation: Any) -> Decoder | None:
        """The function that builds ``annotation`` from JSON, or ``None`` when stored
        JSON goes to the handler as it is (plain JSON types, ``Any``, unknown classes).
        Built once per annotation."""
        try:
            return self._decoders[annotation]
        except KeyError:
            pass
        except TypeError:  # an unhashable annotation (Annotated with a dict, say)
            return self.build_decoder(annotation)
        decoder = self.build_decoder(annotation)
        self._decoders[annotation] = decoder
        return decoder

    def build_decoder(self, annotation: Any) -> Decoder | None:
        """:meth:`decoder` without the cache: override to add types."""
        if annotation in _PLAIN or annotation is Any or annotation is None:
            return None
        if isinstance(annotation, typing.TypeVar | str | typing.ForwardRef):
            return None
        supertype = getattr(annotation, "__supertype__", None)
        if supertype is not None:  # a NewType
            return self.decoder(supertype)
        origin = typing.get_origin(annotation)
        if origin is not None:
            return self._generic(annotation, origin, typing.get_args(annotation))
        if not isinstance(annotation, type):
            return None
        return self._class(annotation)

    def _generic(self, annotation: Any, origin: Any, args: tuple[Any, ...]) -> Decoder | None:
        if origin is typing.Annotated:
            return self.decoder(args[0])
        if origin is typing.Union or origin is types.UnionType:
            return self._union(annotation, args)
        if origin is tuple:
            return self._tuple(args)
        if origin in _SEQUENCES:
            return self._sequence(_SEQUENCES[origin], args[0] if args else Any)
        if origin in _MAPPINGS:
            return self._mapping(*(args or (Any, Any)))
        if origin is typing.Literal or origin is type:
            return None
        if isinstance(origin, type):
            return self._class(origin) if _pydantic() is None else self._maybe_model(annotation)
        return None

    def _maybe_model(self, annotation: Any) -> Decoder | None:
        """A parametrised class: a generic pydantic model is validated as such."""
        origin = typing.get_origin(annotation)
        if _pydantic_support().is_model_class(origin):
            model: Decoder = _pydantic_support().validator(annotation)
            return model
        return self._class(origin)

    def _class(self, cls: type) -> Decoder | None:
        if issubclass(cls, enum.Enum):
            return _enum_decoder(cls)
        if issubclass(cls, datetime):
            return _text_decoder(cls, datetime.fromisoformat, "an ISO 8601 date and time")
        if issubclass(cls, date):
            return _text_decoder(cls, date.fromisoformat, "an ISO 8601 date")
        if issubclass(cls, time):
            return _text_decoder(cls, time.fromisoformat, "an ISO 8601 time")
        if issubclass(cls, UUID):
            return _text_decoder(cls, UUID, "a UUID")
        if issubclass(cls, Decimal):
            return _decimal
        if dataclasses.is_dataclass(cls):
            return self._dataclass(cls)
        if _pydantic() is not None and _pydantic_support().is_model_class(cls):
            model: Decoder = _pydantic_support().validator(cls)
            return model
        return None

    def _union(self, annotation: Any, members: tuple[Any, ...]) -> Decoder | None:
        decoders = [(member, self.decoder(member)) for member in members]
        if all(decoder is None for _, decoder in decoders):
            return None
        name = type_name(annotation)

        def decode_union(data: Any) -> Any:
            for member, decoder in decoders:
                if decoder is None:
                    if _is_plain_instance(data, member):
                        return data
                    continue
                try:
                    return decoder(data)
                except DecodeError:
                    continue
            raise DecodeError(f"{_shown(data)} fits none of {name}")

        return decode_union

    def _sequence(self, build: Callable[[Any], Any], item: Any) -> Decoder | None:
        decode_item = self.decoder(item)
        if decode_item is None and build is list:
            return None

        def decode_sequence(data: Any) -> Any:
            if not isinstance(data, list):
                raise DecodeError(f"expected a list, got {_shown(data)}")
            if decode_item is None:
                return build(data)
            return build(_each(decode_item, data))

        return decode_sequence

    def _tuple(self, args: tuple[Any, ...]) -> Decoder:
        if not args or (len(args) == 2 and args[1] is Ellipsis):
            decode_item = self.decoder(args[0] if args else Any) or _same
            return lambda data: tuple(_each(decode_item, _list(data)))
        if args == ((),):  # tuple[()]
            args = ()
        items = [self.decoder(arg) or _same for arg in args]

        def decode_fixed(data: Any) -> tuple[Any, ...]:
            values = _list(data)
            if len(values) != len(items):
                raise DecodeError(f"expected {len(items)} items, got {len(values)}")
            return tuple(_each_of(items, values))

        return decode_fixed

    def _mapping(self, key: Any, value: Any) -> Decoder | None:
        decode_key = self.decoder(key)
        decode_value = self.decoder(value)
        if decode_key is None and decode_value is None:
            return None

        def decode_mapping(data: Any) -> dict[Any, Any]:
            if not isinstance(data, dict):
                raise DecodeError(f"expected an object, got {_shown(data)}")
            decoded = {}
            for name, item in data.items():
                try:
                    new_key = name if decode_key is None else decode_key(name)
                    decoded[new_key] = item if decode_value is None else decode_value(item)
                except DecodeError as exc:
                    raise exc.inside(f"[{name!r}]") from None
            return decoded

        return decode_mapping

    def _dataclass(self, cls: type) -> Decoder:
        try:
            hints = typing.get_type_hints(cls, include_extras=True)
        except Exception:  # annotations not resolvable from the class's module
            hints = {}
        fields = [field for field in dataclasses.fields(cls) if field.init]
        known = {field.name for field in fields}
        required = {
            field.name
            for field in fields
            if field.default is dataclasses.MISSING and field.default_factory is dataclasses.MISSING
        }
        decoders = {field.name: self.decoder(hints.get(field.name, Any)) for field in fields}

        def decode_dataclass(data: Any) -> Any:
            if isinstance(data, cls):
                return data
            if not isinstance(data, dict):
                raise DecodeError(f"expected an object of {cls.__qualname__}, got {_shown(data)}")
            unknown = sorted(set(data) - known)
            if unknown:
                raise DecodeError(f"{cls.__qualname__} has no field {', '.join(unknown)}")
            missing = sorted(required - set(data))
            if missing:
                raise DecodeError(f"missing field {', '.join(missing)} of {cls.__qualname__}")
            values = {}
            for name, item in data.items():
                decoder = decoders[name]
                try:
                    values[name] = item if decoder is None else decoder(item)
                except DecodeError as exc:
                    raise exc.inside(f".{name}") from None
            try:
                return cls(**values)
            except (TypeError, ValueError) as exc:
                raise DecodeError(f"{cls.__qualname__}(...) refused it: {exc}") from None

        return decode_dataclass


def _same(data: Any) -> Any:
    return data


def _as_it_is(value: Any, typed: bool) -> Any:
    """Not a type the codec knows (or a subclass of str, int or float): the strict JSON
    check decides."""
    return value


def _list(data: Any) -> list[Any]:
    if not isinstance(data, list):
        raise DecodeError(f"expected a list, got {_shown(data)}")
    return data


def _each(decoder: Decoder, values: list[Any]) -> list[Any]:
    decoded = []
    for index, item in enumerate(values):
        try:
            decoded.append(decoder(item))
        except DecodeError as exc:
            raise exc.inside(f"[{index}]") from None
    return decoded


def _each_of(decoders: list[Decoder], values: list[Any]) -> list[Any]:
    decoded = []
    for index, (decoder, item) in enumerate(zip(decoders, values, strict=True)):
        try:
            decoded.append(decoder(item))
        except DecodeError as exc:
            raise exc.inside(f"[{index}]") from None
    return decoded


def _is_plain_instance(data: Any, member: Any) -> bool:
    """Whether stored JSON is already what a plain union member asks for."""
    if member is None or member is type(None):
        return data is None
    plain = typing.get_origin(member) or member
    if plain is Any or plain is object or not isinstance(plain, type):
        return True
    if plain is float:
        return isinstance(data, int | float) and not isinstance(data, bool)
    return isinstance(data, plain)


def _shown(data: Any) -> str:
    """Stored data in an error message, cut short."""
    text = repr(data)
    return text if len(text) <= 80 else text[:77] + "..."


def _text_decoder(cls: type, parse: Callable[[str], Any], what: str) -> Decoder:
    def decode_text(data: Any) -> Any:
        if isinstance(data, cls):
            return data
        if not isinstance(data, str):
            raise DecodeError(f"expected {what} as text, got {_shown(data)}")
        try:
            return parse(data)
        except ValueError:
            raise DecodeError(f"{_shown(data)} is not {what}") from None

    return decode_text


def _enum_decoder(cls: type[enum.Enum]) -> Decoder:
    def decode_enum(data: Any) -> Any:
        try:
            return cls(data)
        except ValueError:
            values = ", ".join(repr(member.value) for member in cls)
            raise DecodeError(
                f"{_shown(data)} is not a value of {cls.__qualname__} ({values})"
            ) from None

    return decode_enum


def _decimal(data: Any) -> Decimal:
    if isinstance(data, bool) or not isinstance(data, str | int | float | Decimal):
        raise DecodeError(f"expected a decimal number as text, got {_shown(data)}")
    try:
        return Decimal(str(data))
    except InvalidOperation:
        raise DecodeError(f"{_shown(data)} is not a decimal number") from None


def _pydantic() -> Any:
    """pydantic if the program imported it (a model's class implies it), else None:
    the default codec never imports it on its own."""
    return sys.modules.get("pydantic")


def _pydantic_support() -> Any:
    from taskharbor.contrib import pydantic as support

    return support


__all__ = ["Codec", "DecodeError", "DefaultCodec", "PayloadError", "type_name"]
