"""The CSR platforms we deliver to."""

from enum import StrEnum


class Provider(StrEnum):
    BENEVITY = "benevity"
    GOODERA = "goodera"
    WORKDAY = "workday"

    @classmethod
    def parse(cls, value: object) -> "Provider":
        """Accept a provider name in any case; name the bad value otherwise."""
        try:
            return cls(str(value).strip().lower())
        except ValueError:
            known = ", ".join(p.value for p in cls)
            raise ValueError(f"provider {value!r} is not one of: {known}") from None


PROVIDERS: tuple[str, ...] = tuple(p.value for p in Provider)
