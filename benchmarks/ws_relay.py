"""A WebSocket relay written with the ``websockets`` library, as a user might write one.

One task per direction copies messages (not frames) between the client and the bot.
For the side-by-side benchmark only.  python ws_relay.py PORT BOT_PORT
"""

import asyncio
import sys

import websockets


async def pump(source, sink) -> None:
    try:
        async for message in source:
            await sink.send(message)
    except websockets.ConnectionClosed:
        pass
    finally:
        await sink.close()


async def handler(client) -> None:
    async with websockets.connect(f"ws://127.0.0.1:{sys.argv[2]}{client.request.path}",
                                  max_size=None, compression=None) as bot:
        await asyncio.gather(pump(client, bot), pump(bot, client))


async def main() -> None:
    async with websockets.serve(handler, "127.0.0.1", int(sys.argv[1]), max_size=None,
                                compression=None, backlog=4096):
        await asyncio.Future()


if __name__ == "__main__":
    asyncio.run(main())
