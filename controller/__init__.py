"""The daemon: config, control cycle, limits, schedule, dispatch, store, uplink, SCADA face, CLI."""
