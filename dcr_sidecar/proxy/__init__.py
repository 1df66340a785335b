"""HTTP handlers: token-like routes, authorize, metadata, client; and the error boundary."""
