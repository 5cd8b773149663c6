"""`bess-edge probe`'s arguments, kept apart from the scan code so that building the CLI parser stays light."""

from __future__ import annotations

import argparse

AUTO_UNIT_IDS = (1, 0, 255)  # the usual conventions: 1, "any" 0, and 255 for a device that is its own gateway


def add_arguments(s: argparse.ArgumentParser) -> None:
    s.add_argument("--host", help="Modbus TCP device or gateway")
    s.add_argument("--port", type=int, default=502)
    s.add_argument(
        "--unit-id",
        action="append",
        default=None,
        metavar="N",
        help="unit id(s) to probe: N, N,M,... or auto (1, then 0, then 255); repeatable; default 1",
    )
    s.add_argument(
        "--registers",
        metavar="RANGES",
        help="no SunSpec: read ranges such as holding:0-999,input:0-199 and draft a skeleton profile",
    )
    s.add_argument("--opcua", metavar="URL", help="browse an OPC UA server (opc.tcp://H:P) and draft a BMS profile")
    s.add_argument("--config", metavar="SITE", help="with --opcua: connect as the site file's OPC UA device does")
    s.add_argument("--role", choices=["pcs", "meter"], help="SunSpec: draft for this role (default: from the models)")
    s.add_argument(
        "--out",
        metavar="FILE",
        help="write the draft here (several unit ids asked: FILE-unitN.yaml); default: print it",
    )
    s.add_argument("--force", action="store_true", help="overwrite --out if it exists")
    s.add_argument("--json", action="store_true", help="one JSON document on stdout instead of the table")
    s.add_argument("--timeout-s", type=float, default=1.0, help="per request (default 1)")
    s.add_argument("--retries", type=int, default=1, help="tries after a request timed out (default 1)")
