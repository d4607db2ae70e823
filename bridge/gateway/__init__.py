"""The gateway: device registry, protocol duties, events to MQTT and commands from it."""
