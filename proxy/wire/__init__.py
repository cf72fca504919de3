"""The wire protocol, sans-IO: the codec, the request tracker, authentication and TLS contexts (no asyncio)."""
