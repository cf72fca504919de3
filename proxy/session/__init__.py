"""One client session: its declared state, the parts it composes, and the asyncio connection around them."""
