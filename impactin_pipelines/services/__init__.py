"""Operations as plain functions over the store and the connectors. The CLI, the Dagster assets and the HTTP
API are thin doors onto these; none of them re-implements a step."""
