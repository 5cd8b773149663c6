"""The SCADA face: one table of status and control points, served over Modbus TCP and OPC UA, with its docs."""
