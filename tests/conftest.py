from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from tests.harness import REST, GatewayThread, WSClient


@pytest.fixture
def server(tmp_path: Path) -> Iterator[GatewayThread]:
    gw = GatewayThread(tmp_path / "data").start()
    try:
        yield gw
    finally:
        gw.stop()


@pytest.fixture
async def rest(server: GatewayThread) -> AsyncIterator[REST]:
    client = REST(server.url)
    try:
        yield client
    finally:
        await client.close()


@pytest.fixture
async def ws(server: GatewayThread) -> AsyncIterator[WSClient]:
    client = await WSClient.open(server.ws_url)
    try:
        yield client
    finally:
        await client.close()
