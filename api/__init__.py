"""The aiohttp query API: unread counts, the inbox, preferences and the live stream."""
