"""Provider names: the registry (`impactin_pipelines.providers`) is the one list of them."""

from collections.abc import Iterator, Sequence
from typing import Any, overload

from pydantic import GetCoreSchemaHandler, GetJsonSchemaHandler
from pydantic.json_schema import JsonSchemaValue
from pydantic_core import PydanticCustomError, core_schema


def _registered() -> tuple[str, ...]:
    from impactin_pipelines.providers import provider_names

    return provider_names()


class _ProviderType(type):
    def __iter__(cls) -> Iterator["Provider"]:
        return iter([cls(name) for name in _registered()])

    def __len__(cls) -> int:
        return len(_registered())


class Provider(str, metaclass=_ProviderType):
    """A registered provider's name. `Provider("x")` raises ValueError unless a provider named x is registered;
    iterating the class gives every registered provider."""

    __slots__ = ()

    BENEVITY: "Provider"
    GOODERA: "Provider"
    WORKDAY: "Provider"

    def __new__(cls, value: object) -> "Provider":
        if isinstance(value, Provider):
            return value
        name = str(value)
        if name not in _registered():
            raise ValueError(f"{value!r} is not a registered provider (one of: {', '.join(_registered())})")
        return super().__new__(cls, name)

    @property
    def value(self) -> str:
        return str.__str__(self)

    def __str__(self) -> str:
        return str.__str__(self)

    def __repr__(self) -> str:
        return f"Provider({str.__repr__(self)})"

    @classmethod
    def __get_pydantic_core_schema__(cls, source: Any, handler: GetCoreSchemaHandler) -> core_schema.CoreSchema:
        """As a pydantic field: a string naming a registered provider (exact spelling), else an error naming them."""
        return core_schema.no_info_after_validator_function(
            cls._validate, core_schema.str_schema(), serialization=core_schema.to_string_ser_schema()
        )

    @classmethod
    def __get_pydantic_json_schema__(
        cls, schema: core_schema.CoreSchema, handler: GetJsonSchemaHandler
    ) -> JsonSchemaValue:
        return {"type": "string", "enum": list(_registered()), "title": "Provider"}

    @classmethod
    def _validate(cls, value: str) -> "Provider":
        if value not in _registered():
            names = [repr(name) for name in _registered()]
            expected = f"{', '.join(names[:-1])} or {names[-1]}" if len(names) > 1 else "".join(names)
            raise PydanticCustomError("enum", "Input should be {expected}", {"expected": expected})
        return cls(value)

    @classmethod
    def parse(cls, value: object) -> "Provider":
        """Accept a provider name in any case; name the bad value otherwise."""
        try:
            return cls(str(value).strip().lower())
        except ValueError:
            raise ValueError(f"provider {value!r} is not one of: {', '.join(_registered())}") from None


Provider.BENEVITY = str.__new__(Provider, "benevity")
Provider.GOODERA = str.__new__(Provider, "goodera")
Provider.WORKDAY = str.__new__(Provider, "workday")


class _Names(Sequence[str]):
    """The registered provider names, read at each use (so a provider registered later is listed too)."""

    @overload
    def __getitem__(self, index: int) -> str: ...
    @overload
    def __getitem__(self, index: slice) -> Sequence[str]: ...
    def __getitem__(self, index: int | slice) -> str | Sequence[str]:
        return _registered()[index]

    def __len__(self) -> int:
        return len(_registered())

    def __contains__(self, value: object) -> bool:
        return value in _registered()

    def __iter__(self) -> Iterator[str]:
        return iter(_registered())

    def __repr__(self) -> str:
        return repr(_registered())


PROVIDERS: Sequence[str] = _Names()
