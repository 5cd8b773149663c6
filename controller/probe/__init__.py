"""Commissioning: `bess-edge probe` scans a device on the plant LAN (SunSpec discovery, a raw register range, or
an OPC UA address space) and drafts a device profile for the engineer to check and name.

scan_sunspec / scan_registers / browse_opcua read the device through the drivers; draft turns what they found
into profile YAML; command is the CLI's entry (arguments, output, exit codes).
"""
