"""Pure payload builders, one module per provider and schema version. No I/O."""
