"""Provider connectors behind one small interface, over one shared HTTP and retry layer."""
