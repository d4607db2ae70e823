"""Payload models, one module per command family, and the (command, sender) registry."""
