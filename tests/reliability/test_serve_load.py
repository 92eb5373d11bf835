"""The Serve endpoint under slow and huge requests (docs/security.md, row 33): a real Ray Serve app on
127.0.0.1 and raw sockets playing the clients."""
from __future__ import annotations

import socket
import threading
import time

import pytest
import requests

from support import free_port

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("ray_runtime")]


@pytest.fixture(scope="module")
def endpoint(trained_run):
    from ray import serve as ray_serve

    from faceseg.api import serve

    port = free_port()
    url = serve(str(trained_run), port=port, max_batch_size=4, block=False)
    yield url, port
    ray_serve.shutdown()


def _slow_client(port: int, stop: threading.Event, replies: list) -> None:
    """Declares a 100 kB body, then sends 10 bytes every 2 s until stopped or answered."""
    with socket.create_connection(("127.0.0.1", port), timeout=60) as sock:
        sock.sendall(b"POST /parse HTTP/1.1\r\nHost: x\r\nContent-Type: image/jpeg\r\nContent-Length: 100000\r\n\r\n")
        sock.settimeout(2.0)
        while not stop.is_set():
            try:
                sock.sendall(b"\xff" * 10)
                reply = sock.recv(4096)
                if reply:
                    replies.append(reply.split(b"\r\n", 1)[0].decode())
                    return
            except socket.timeout:
                continue
            except OSError:
                return


def test_slow_clients_cannot_block_health_or_hold_a_slot_for_long(endpoint):
    url, port = endpoint
    stop, replies = threading.Event(), []
    clients = [threading.Thread(target=_slow_client, args=(port, stop, replies), daemon=True) for _ in range(16)]
    for client in clients:
        client.start()
    time.sleep(3)
    try:
        for _ in range(3):                            # while all 16 trickle their bodies in
            start = time.monotonic()
            assert requests.get(f"{url}/healthz", timeout=10).status_code == 200
            assert time.monotonic() - start < 5
            time.sleep(2)
        for client in clients:
            client.join(timeout=60)                   # each is answered once its body is 15 s late
    finally:
        stop.set()
    assert len(replies) == 16 and all(" 408 " in reply + " " for reply in replies), replies


def test_a_huge_chunked_body_is_refused_at_the_limit_not_read_whole(endpoint):
    url, port = endpoint
    sent, chunk = 0, b"\xff" * (1 << 20)
    with socket.create_connection(("127.0.0.1", port), timeout=60) as sock:
        sock.sendall(b"POST /parse HTTP/1.1\r\nHost: x\r\nContent-Type: image/jpeg\r\nTransfer-Encoding: chunked\r\n\r\n")
        sock.settimeout(0.05)
        reply = b""
        while sent < 200 << 20 and not reply:
            try:
                sock.sendall(f"{len(chunk):x}\r\n".encode() + chunk + b"\r\n")
                sent += len(chunk)
                reply = sock.recv(4096)
            except socket.timeout:
                continue
            except OSError:                           # the server closed the connection after answering
                break
        sock.settimeout(30)
        while not reply:
            reply += sock.recv(4096)
    assert reply.startswith(b"HTTP/1.1 413"), reply[:200]
    assert sent < 100 << 20, f"{sent >> 20} MiB were sent before the refusal"
    assert requests.get(f"{url}/healthz", timeout=10).status_code == 200
