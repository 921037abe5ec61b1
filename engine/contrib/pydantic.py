"""Pydantic models as task arguments and results (``pip install 'taskharbor[pydantic]'``).

Nothing to call: the default codec (:mod:`taskharbor.codec`) comes here when it
meets a model or a model's class, and only once the program has imported
pydantic itself (a model implies it), so ``import taskharbor`` never loads it.
A model is stored as ``model_dump(mode="json")`` and rebuilt with
``model_validate``, so the model's own configuration (extra fields, aliases,
validators) decides what a stored payload may hold.
"""

from __future__ import annotations

from typing import Any

from ..codec import DecodeError, Decoder
from . import missing

try:
    import pydantic
except ImportError as error:  # pragma: no cover - the message is what is tested
    raise missing("pydantic", "pydantic", __name__) from error


def is_model(value: object) -> bool:
    """Whether ``value`` is a pydantic model instance."""
    return isinstance(value, pydantic.BaseModel)


def is_model_class(cls: object) -> bool:
    """Whether ``cls`` is a pydantic model class."""
    return isinstance(cls, type) and issubclass(cls, pydantic.BaseModel)


def dump(model: pydantic.BaseModel) -> Any:
    """The model's JSON form (dates as text, nested models as objects...)."""
    return model.model_dump(mode="json")


def validator(annotation: Any) -> Decoder:
    """Builds ``annotation`` (a model class, or a parametrised generic model) from JSON."""
    adapter: pydantic.TypeAdapter[Any] = pydantic.TypeAdapter(annotation)

    def decode_model(data: Any) -> Any:
        try:
            return adapter.validate_python(data)
        except pydantic.ValidationError as exc:
            problems = "; ".join(
                f"{'.'.join(map(str, error['loc'])) or 'value'}: {error['msg']}"
                for error in exc.errors()[:5]
            )
            raise DecodeError(f"{exc.title} refused it: {problems}") from None

    return decode_model
