"""Secrets at rest and in text: encryption and redaction."""
