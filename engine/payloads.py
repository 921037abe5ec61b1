"""One task's typed payloads: its call encoded at enqueue, decoded for its handler.

:class:`TaskPayloads` reads the handler's annotations once (on first use, so a
module's classes defined below its tasks are found) and asks the App's codec
(:mod:`taskharbor.codec`) to encode each argument and result, and to decode each
stored argument to its parameter's type and a stored result to the return type.
"""

from __future__ import annotations

import inspect
import logging
import types
import typing
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from taskharbor.spec import JSON, InvalidRequest, check_json

from .codec import Codec, DefaultCodec, PayloadError, type_name

logger = logging.getLogger("taskharbor")

Decode = Callable[[Any], Any]

CODEC_TYPES = (
    "datetime, date, time, UUID, Decimal, enums, dataclasses and pydantic models "
    "(the default codec's types)"
)


def handler_annotations(fn: Callable[..., Any], task: str) -> dict[str, Any]:
    """The handler's resolved annotations by parameter name (``"return"`` too).

    One that cannot be resolved (a name imported only under ``TYPE_CHECKING``)
    is left out, with a warning: that parameter gets its stored JSON as it is.
    """
    try:
        return typing.get_type_hints(fn, include_extras=True)
    except Exception:  # resolved one by one below, to keep those that resolve
        pass
    hints: dict[str, Any] = {}
    namespace = getattr(inspect.unwrap(fn), "__globals__", {})
    for name, annotation in getattr(fn, "__annotations__", {}).items():
        holder = types.SimpleNamespace(__annotations__={name: annotation})
        try:
            hints[name] = typing.get_type_hints(holder, namespace, include_extras=True)[name]
        except Exception as exc:
            logger.warning(
                "task %s: the annotation %r of %s cannot be resolved (%s): its stored JSON "
                "is not decoded",
                task,
                annotation,
                "the result" if name == "return" else f"parameter {name!r}",
                exc,
            )
    return hints


class TaskPayloads:
    """Encoding and decoding of one task's arguments and result through ``codec``."""

    def __init__(
        self,
        task: str,
        fn: Callable[..., Any],
        signature: inspect.Signature | None,
        codec: Codec,
    ) -> None:
        self.task = task
        self.codec = codec
        hints = handler_annotations(fn, task)
        params = [] if signature is None else list(signature.parameters.values())
        kinds = inspect.Parameter
        self._names = [p.name for p in params if p.kind <= kinds.POSITIONAL_OR_KEYWORD]
        self._positional = [self._decode(name, hints) for name in self._names]
        self._star = next((p.name for p in params if p.kind == kinds.VAR_POSITIONAL), None)
        self._star_decode = self._decode(self._star, hints)
        self._keywords = {
            p.name: self._decode(p.name, hints)
            for p in params
            if p.kind in (kinds.POSITIONAL_OR_KEYWORD, kinds.KEYWORD_ONLY)
        }
        self._double_star = next((p.name for p in params if p.kind == kinds.VAR_KEYWORD), None)
        self._double_star_decode = self._decode(self._double_star, hints)
        self._decodes_arguments = any(
            decode is not None
            for decode in (
                *self._positional,
                *self._keywords.values(),
                self._star_decode,
                self._double_star_decode,
            )
        )
        self._result_decode = self._decode("return", hints)

    def _decode(self, name: str | None, hints: Mapping[str, Any]) -> Decode | None:
        """How ``name``'s stored JSON becomes its annotated type; ``None``: as it is."""
        if name is None or name not in hints:
            return None
        annotation = hints[name]
        codec = self.codec
        if isinstance(codec, DefaultCodec):
            decoder = codec.decoder(annotation)
            if decoder is None:
                return None
        else:

            def decoder(data: Any) -> Any:
                return codec.decode(data, annotation)

        what = "the result" if name == "return" else f"argument {name!r}"
        expected = type_name(annotation)
        task = self.task

        def decode(data: Any) -> Any:
            try:
                return decoder(data)
            except Exception as exc:
                raise PayloadError(
                    f"task {task}: {what} does not decode as {expected}: {exc}"
                ) from exc

        return decode

    # -- arguments -------------------------------------------------------------------

    def encode_call(
        self, args: Sequence[Any], kwargs: Mapping[str, Any]
    ) -> tuple[tuple[Any, ...], dict[str, Any]]:
        """The call's arguments as the codec encodes them (what the store keeps)."""
        encode = self.codec.encode
        try:
            encoded_args = tuple(encode(value) for value in args)
            encoded_kwargs = {name: encode(value) for name, value in kwargs.items()}
        except Exception as exc:
            message = f"cannot enqueue {self.task}: the codec refused it: {exc}"
            raise InvalidRequest(message) from exc
        return encoded_args, encoded_kwargs

    def refused_argument(
        self, args: Sequence[JSON], kwargs: Mapping[str, JSON], *, bound: bool = True
    ) -> InvalidRequest | None:
        """The error naming the first encoded argument that is not JSON, if one is not;
        ``bound=False``: positional arguments are not known to start at the first
        parameter (a workflow step's may get a parent's result in front)."""
        named = [
            (self._name_at(index) if bound else f"args[{index}]", value)
            for index, value in enumerate(args)
        ]
        for name, value in [*named, *kwargs.items()]:
            try:
                check_json(value, f"argument {name!r}")
            except InvalidRequest as exc:
                hint = f"; typed values may be {CODEC_TYPES}"
                typed = isinstance(self.codec, DefaultCodec)
                return InvalidRequest(f"cannot enqueue {self.task}: {exc}{hint if typed else ''}")
        return None

    def _name_at(self, index: int) -> str:
        if index < len(self._names):
            return self._names[index]
        return f"{self._star or 'args'}[{index - len(self._names)}]"

    def decode_call(
        self, args: Sequence[JSON], kwargs: Mapping[str, JSON]
    ) -> tuple[Sequence[Any], Mapping[str, Any]]:
        """Stored arguments as the handler's parameters are annotated; raises
        :class:`~taskharbor.codec.PayloadError` naming the first that does not fit."""
        if not self._decodes_arguments:
            return args, kwargs
        positional = self._positional
        decoded = [
            _apply(positional[index] if index < len(positional) else self._star_decode, value)
            for index, value in enumerate(args)
        ]
        named = {
            name: _apply(self._keywords.get(name, self._double_star_decode), value)
            for name, value in kwargs.items()
        }
        return decoded, named

    # -- results ---------------------------------------------------------------------

    def encode_result(self, value: Any) -> Any:
        """What the store keeps of a handler's return value."""
        return self.codec.encode(value)

    def result_decoder(self) -> Decode | None:
        """How a stored result becomes the return annotation's type (``None``: as it is)."""
        return self._result_decode


def _apply(decode: Decode | None, value: Any) -> Any:
    return value if decode is None else decode(value)


__all__ = ["CODEC_TYPES", "TaskPayloads", "handler_annotations"]
