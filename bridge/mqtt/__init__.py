"""Everything MQTT: topic names, payload models, the client with reconnect and outbox."""
