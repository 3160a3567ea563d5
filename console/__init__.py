"""The console: a websocket hub fed from the bus, and the web page dispatchers and clinicians look at."""

from console._app import Console, create_app

__all__ = ["Console", "create_app"]
