"""Delivery partitions: company (dynamic, added by a sensor as integrations appear) x provider (static)."""

import dagster as dg

from impactin_pipelines.domain.providers import PROVIDERS

COMPANY_PARTITIONS = "company"  # the name the instance stores the dynamic partition keys under
company_partitions = dg.DynamicPartitionsDefinition(name=COMPANY_PARTITIONS)
provider_partitions = dg.StaticPartitionsDefinition(list(PROVIDERS))
delivery_partitions = dg.MultiPartitionsDefinition({"company": company_partitions, "provider": provider_partitions})


def split_key(key: object) -> tuple[str, str]:
    """(company, provider) of a partition key, whether Dagster hands us a MultiPartitionKey or a plain string."""
    dims = delivery_partitions.get_partition_key_from_str(str(key)).keys_by_dimension
    return dims["company"], dims["provider"]


def partition_key(company_id: str, provider: str) -> str:
    return str(dg.MultiPartitionKey({"company": company_id, "provider": provider}))
