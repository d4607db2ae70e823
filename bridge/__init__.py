"""chargebridge's I/O half: device links, the gateway, MQTT, the charging service, the CLI."""

__version__ = "0.1.0"
