"""Company ids double as Dagster partition keys, so they must be safe as such."""

import re

from impactin_pipelines.domain.errors import InvalidEvent

# Dagster joins multi-partition keys with "|" and parses ranges with "..."/"," and "[ ]";
# a dynamic key holding any of them is silently dropped. Keep ids boring.
_COMPANY_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.:@-]{0,127}$")


def validate_company_id(company_id: object) -> str:
    if not isinstance(company_id, str) or not company_id.strip():
        raise InvalidEvent("company_id", company_id, "is missing or blank")
    if not _COMPANY_ID.match(company_id) or "..." in company_id:
        raise InvalidEvent(
            "company_id",
            company_id,
            "must be 1-128 characters of letters, digits and _ . : @ - (it is a Dagster partition key)",
        )
    return company_id


def is_valid_company_id(company_id: object) -> bool:
    try:
        validate_company_id(company_id)
    except InvalidEvent:
        return False
    return True
