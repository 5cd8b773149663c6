"""Device I/O: profile-driven Modbus TCP and SunSpec clients, OPC UA client."""
