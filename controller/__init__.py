"""The daemon. cli.py, daemon.py and demo.py are the composition root (the only modules that wire faces);
cycle/ runs the control cycle, trading/ turns trades into a schedule and places orders, uplink/ and scada/ are
faces, and config, clock, store, signing, metrics, tls, systemd and logs are the rooms they share."""
