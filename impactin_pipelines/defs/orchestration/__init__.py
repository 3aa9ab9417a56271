"""Helpers for the definitions, not definitions: the partitions and their keys, the planning of range runs, and
running the delivery job in-process (`impactin run`). They import Dagster, so they live under `defs/`; nothing
here is registered in the code location, which builds its Definitions explicitly in `definitions.py`."""
