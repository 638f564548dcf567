"""The HTTP API (FastAPI): routes, auth dependency, error bodies, metrics and the status page."""
