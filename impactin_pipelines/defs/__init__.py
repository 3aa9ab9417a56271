"""Everything Dagster: resources, assets, checks, sensors, schedules, jobs. The rest of the package does not
import Dagster."""
