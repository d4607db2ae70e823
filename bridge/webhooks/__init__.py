"""Webhooks: session and device events POSTed to HTTP endpoints (docs/integrations.md).

A self-contained unit of the service role that learns of events only through the MQTT
contract (retained sessions, device events), so it does not depend on the charging
service's internals: `settings` (options), `events` (which events a message means, pure),
`queue` (the durable SQLite queue), `http` (one POST), `unit` (MQTT in, queue, sender).
"""
