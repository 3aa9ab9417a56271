"""Everything that touches the warehouse database."""
