"""The benchmark's bot: wsrelay's built-in picows echo bot on a given port.

    python echo_bot.py PORT
"""

import asyncio
import resource
import sys

import uvloop

from wsrelay.echo_bot import start_echo_bot


async def main() -> None:
    await start_echo_bot("127.0.0.1", int(sys.argv[1]))
    await asyncio.Future()


if __name__ == "__main__":
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    uvloop.run(main())
