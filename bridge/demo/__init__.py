"""`chargebridge demo`: everything in one process, with a live view fed from MQTT."""
