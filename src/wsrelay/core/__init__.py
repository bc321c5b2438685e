"""The sans-I/O core: routing, the request-head verdict, tokens, CORS and the session machine.

Nothing here imports asyncio or picows (a test checks it): every rule of the relay that can
be decided without a socket is decided here, and tested without one.
"""
