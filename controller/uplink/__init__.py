"""The MQTT link to the cloud exchange: telemetry through a durable SQLite outbox, signed trades in, acks out."""
