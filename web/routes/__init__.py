"""The web face's routers, one per area: ops (health, readiness, metrics), auth (login, logout, websocket
token), plant (status, mode, telemetry, alarms, decisions, schedule), trading (market data, orders, trades),
live (the status websocket), pages (dashboard, login page, API docs). `web.app.create_app` includes them; their
state comes from `web.state.web_state`.
"""
