"""Exchange simulator: stands in for the cloud Exchange Service (matching, market data, REST, signed trades over MQTT)."""
