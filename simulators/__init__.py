"""Stand-ins for the plant and the cloud: battery physics, BMS/PCS Modbus servers, OPC UA BMS, exchange."""
