"""dcr-sidecar: OAuth 2 Dynamic Client Registration as a sidecar."""

__version__ = "0.1.0"
