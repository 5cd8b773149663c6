"""The controller's web face: FastAPI REST API, live-status websocket and the dashboard (see web/app.py)."""
