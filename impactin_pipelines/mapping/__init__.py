"""Payload plumbing shared by the providers: the exact JSON bytes we store and sign, and the lookup of an
integration's document builder. Each provider's own mapping is `providers/<name>/mapping.py`. No I/O."""
