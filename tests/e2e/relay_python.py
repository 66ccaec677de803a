"""End-to-end check with a client from another ecosystem.

Starts the framegate binary on a free loopback port with a known HS256 secret, mints tokens
with PyJWT, and drives the server with the Python `websockets` library: a relay between two
users, a rejected (wrongly signed) token, and an expired token.

Usage: python relay_python.py PATH_TO_FRAMEGATE_BINARY
Exits 0 when every check passes; prints one line per check.
"""

import asyncio
import json
import os
import socket
import subprocess
import sys
import time

import jwt
import websockets

SECRET = "python-e2e-secret-that-is-at-least-32-bytes"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def token(sub: str, secret: str = SECRET, ttl: int = 300) -> str:
    now = int(time.time())
    return jwt.encode({"sub": sub, "iat": now, "exp": now + ttl}, secret, algorithm="HS256")


async def wait_for_port(port: int, deadline: float) -> None:
    while time.monotonic() < deadline:
        try:
            _, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.close()
            return
        except OSError:
            await asyncio.sleep(0.05)
    raise RuntimeError(f"server did not listen on port {port} within the deadline")


async def check_relay(url: str) -> None:
    headers_a = {"Authorization": f"Bearer {token('py-alice')}"}
    async with websockets.connect(url, additional_headers=headers_a) as alice:
        # Bob authenticates with the query parameter, as a browser would.
        async with websockets.connect(f"{url}?access_token={token('py-bob')}") as bob:
            message = {"id": "p1", "conversation_id": "c", "to": "py-bob", "content": "hi bob"}
            await alice.send(json.dumps(message))
            received = json.loads(await asyncio.wait_for(bob.recv(), 10))
            assert received["content"] == "hi bob", received
            assert received["from"] == "py-alice", received

            await bob.send(json.dumps({"conversation_id": "c", "to": "py-alice", "content": "hi"}))
            received = json.loads(await asyncio.wait_for(alice.recv(), 10))
            assert received["from"] == "py-bob", received

            await alice.send('{"conversation_id": "c", "to": "py-bob"}')
            error = json.loads(await asyncio.wait_for(alice.recv(), 10))
            assert error["type"] == "error" and error["code"] == "missing_field", error
    print("relay between two python clients: ok")


async def check_rejected(url: str, bad_token: str, what: str) -> None:
    headers = {"Authorization": f"Bearer {bad_token}"}
    try:
        async with websockets.connect(url, additional_headers=headers):
            raise AssertionError(f"{what}: upgrade unexpectedly succeeded")
    except websockets.exceptions.InvalidStatus as err:
        assert err.response.status_code == 401, err.response.status_code
        challenge = err.response.headers.get("WWW-Authenticate", "")
        assert 'error="invalid_token"' in challenge, challenge
        assert bad_token.encode() not in err.response.body, "token leaked"
    print(f"{what}: 401 ok")


async def main(binary: str) -> int:
    port = free_port()
    env = dict(os.environ, FRAMEGATE_JWT_SECRET=SECRET, FRAMEGATE_LOG="warn")
    server = subprocess.Popen(
        [binary, "serve", "--listen", f"127.0.0.1:{port}", "--workers", "2", "--admin-listen", ""],
        env=env,
        stdout=subprocess.DEVNULL,
    )
    try:
        await wait_for_port(port, time.monotonic() + 20)
        url = f"ws://127.0.0.1:{port}/ws"
        await check_relay(url)
        await check_rejected(url, token("py-mallory", secret="x" * 40), "wrongly signed token")
        await check_rejected(url, token("py-late", ttl=-60), "expired token")
    finally:
        server.terminate()
        try:
            server.wait(timeout=10)
        except subprocess.TimeoutExpired:
            server.kill()
    print("python e2e: 3 passed, 0 failed")
    return 0


if __name__ == "__main__":
    if len(sys.argv) != 2:
        print(__doc__)
        sys.exit(2)
    sys.exit(asyncio.run(main(sys.argv[1])))
