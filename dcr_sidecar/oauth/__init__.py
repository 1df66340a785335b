"""Pure OAuth protocol layer: standard library only, no I/O.

Well-known URL candidates, metadata and registration wire shapes with their response rules,
client-authentication encoders, auth-method choice and PKCE. The I/O modules call this package;
it never calls them (tests assert the import rule).
"""


class ProtocolError(ValueError):
    """A document or answer that breaks a protocol rule; `reason` is safe to show."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason
