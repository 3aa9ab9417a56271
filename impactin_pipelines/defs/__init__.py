"""Everything Dagster: the definitions (resources, assets, checks, sensors, schedules, jobs) and, in
`orchestration`, the helpers they share. The rest of the package does not import Dagster."""
