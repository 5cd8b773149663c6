"""An embedded MQTT broker (amqtt) for the demo on a machine without Mosquitto: loopback only.

Mosquitto is the default (2-3x lower latency, 4x the throughput); this is the fallback. Install it with
`pip install 'phoenyra-bess-edge[broker]'`.
"""

from __future__ import annotations

import argparse
import asyncio
import signal


async def serve(host: str, port: int) -> None:
    try:
        from amqtt.broker import Broker
    except ImportError as e:
        raise SystemExit(
            "no Mosquitto installed and no embedded broker: apt-get install mosquitto, "
            "or pip install 'phoenyra-bess-edge[broker]'"
        ) from e
    # amqtt's default listener binds 0.0.0.0: name the loopback address explicitly
    broker = Broker(
        {
            "listeners": {"default": {"type": "tcp", "bind": f"{host}:{port}"}},
            "plugins": {"amqtt.plugins.authentication.AnonymousAuthPlugin": {"allow_anonymous": True}},
        }
    )
    await broker.start()
    print(f"embedded MQTT broker (amqtt) on {host}:{port}", flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    await broker.shutdown()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=1883)
    a = p.parse_args()
    asyncio.run(serve(a.host, a.port))


if __name__ == "__main__":
    main()
