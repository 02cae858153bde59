"""The asyncio shell: sockets, timers and policy around the sans-IO core."""
