"""Local servers for the remote tests: an HTTP server with Range, ETag and faults, and moto's S3.

Both listen on 127.0.0.1 only, on a free port, and count the requests they
answer, so tests can assert how many a read cost.
"""

from __future__ import annotations

import hashlib
import http.server
import json
import logging
import os
import random
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field


@dataclass
class Faults:
    """What the HTTP server does wrong: each GET with a Range draws once."""

    drop: float = 0.0  # close the connection without answering
    error: float = 0.0  # answer 500
    slow: float = 0.0  # sleep `delay` seconds first
    delay: float = 0.0
    seed: int = 0
    rng: random.Random = field(default_factory=random.Random)

    def __post_init__(self) -> None:
        self.rng.seed(self.seed)


class ObjectServer:
    """An HTTP server of in-memory objects: ``put(name, data)``, then ``url(name)``.

    GET honours ``Range: bytes=a-b`` (206) and ``If-Match`` (412 when the ETag
    differs); HEAD gives Content-Length and ETag. ``faults`` injects dropped
    connections, 500s and slow answers into ranged GETs; ``requests`` counts
    every request answered (or dropped), ``log`` lists them.
    """

    def __init__(self) -> None:
        self.objects: dict[str, bytes] = {}
        self.etags: dict[str, str] = {}
        self.faults = Faults()
        self.requests = 0
        self.bytes_sent = 0
        self.log: list[tuple[str, str, str | None]] = []
        self._lock = threading.Lock()
        server = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"
            disable_nagle_algorithm = True  # headers and body go out at once, not after a delayed ACK

            def log_message(self, *args: object) -> None:
                pass

            def _count(self) -> None:
                with server._lock:
                    server.requests += 1
                    server.log.append((self.command, self.path, self.headers.get("Range")))

            def _object(self) -> tuple[bytes, str] | None:
                name = self.path.lstrip("/").split("?", 1)[0]
                data = server.objects.get(name)
                if data is None:
                    self.send_response(404)
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return None
                return data, server.etags[name]

            def do_HEAD(self) -> None:
                self._count()
                found = self._object()
                if found is None:
                    return
                data, etag = found
                self.send_response(200)
                self.send_header("Content-Length", str(len(data)))
                self.send_header("ETag", etag)
                self.send_header("Accept-Ranges", "bytes")
                self.end_headers()

            def do_GET(self) -> None:
                if self.path == "/__stats":  # the counters, for a server in another process
                    body = json.dumps({"requests": server.requests, "bytes": server.bytes_sent}).encode()
                    self.send_response(200)
                    self.send_header("Content-Length", str(len(body)))
                    self.end_headers()
                    self.wfile.write(body)
                    return
                self._count()
                found = self._object()
                if found is None:
                    return
                data, etag = found
                wanted = self.headers.get("Range")
                faults = server.faults
                if wanted:
                    with server._lock:
                        draw = faults.rng.random()
                    if draw < faults.drop:
                        self.close_connection = True
                        self.connection.shutdown(socket.SHUT_RDWR)
                        return
                    if draw < faults.drop + faults.error:
                        self.send_response(500)
                        self.send_header("Content-Length", "0")
                        self.end_headers()
                        return
                    if draw < faults.drop + faults.error + faults.slow:
                        time.sleep(faults.delay)
                match = self.headers.get("If-Match")
                if match is not None and match != etag:
                    self.send_response(412)
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                status, body = 200, data
                if wanted and wanted.startswith("bytes="):
                    first, _, last = wanted[6:].partition("-")
                    start = int(first)
                    stop = min(len(data), int(last) + 1) if last else len(data)
                    status, body = 206, data[start:stop]
                self.send_response(status)
                self.send_header("Content-Length", str(len(body)))
                self.send_header("ETag", etag)
                self.send_header("Accept-Ranges", "bytes")
                if status == 206:
                    self.send_header("Content-Range", f"bytes {start}-{start + len(body) - 1}/{len(data)}")
                self.end_headers()
                with server._lock:
                    server.bytes_sent += len(body)
                with suppress(BrokenPipeError, ConnectionResetError):
                    self.wfile.write(body)

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.port = self.httpd.server_address[1]
        self._thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self._thread.start()

    def put(self, name: str, data: bytes) -> str:
        """Store (or replace) an object; returns its URL."""
        self.objects[name] = data
        self.etags[name] = '"' + hashlib.md5(data).hexdigest() + '"'
        return self.url(name)

    def url(self, name: str) -> str:
        return f"http://127.0.0.1:{self.port}/{name}"

    def reset(self) -> None:
        """Zero the counters and faults."""
        with self._lock:
            self.requests = 0
            self.bytes_sent = 0
            self.log.clear()
        self.faults = Faults()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


def http_options(timeout: float = 10.0) -> dict:
    """storage_options for the test HTTP server: short timeouts."""
    import aiohttp

    return {"client_kwargs": {"timeout": aiohttp.ClientTimeout(total=timeout, sock_connect=2)}}


@contextmanager
def s3_server() -> Iterator[tuple[str, dict]]:
    """moto's S3 in server mode on 127.0.0.1 with a bucket ``slides``: yields (endpoint, storage_options)."""
    from moto.server import ThreadedMotoServer

    os.environ.setdefault("AWS_ACCESS_KEY_ID", "testing")
    os.environ.setdefault("AWS_SECRET_ACCESS_KEY", "testing")
    os.environ.setdefault("AWS_DEFAULT_REGION", "us-east-1")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    endpoint = f"http://127.0.0.1:{port}"
    options = {"key": "testing", "secret": "testing", "client_kwargs": {"endpoint_url": endpoint,
                                                                        "region_name": "us-east-1"}}
    try:
        import boto3

        client = boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1",
                              aws_access_key_id="testing", aws_secret_access_key="testing")
        client.create_bucket(Bucket="slides")
        yield endpoint, options
    finally:
        server.stop()


def serve_http_forever(objects: dict[str, str], ready: object) -> None:
    """A process's body: serve files ``{name: path}`` over HTTP; puts the port on the ``ready`` queue."""
    server = ObjectServer()
    for name, path in objects.items():
        with open(path, "rb") as fh:
            server.put(name, fh.read())
    ready.put(server.port)  # type: ignore[attr-defined]
    threading.Event().wait()


def serve_s3_forever(objects: dict[str, str], ready: object) -> None:
    """A process's body: moto S3 with ``{key: path}`` in bucket ``slides``; puts (endpoint, options)."""
    import s3fs

    logging.getLogger("werkzeug").setLevel(logging.ERROR)
    with s3_server() as (endpoint, options):
        fs = s3fs.S3FileSystem(**options)
        for key, path in objects.items():
            fs.put(path, f"slides/{key}")
        ready.put((endpoint, options))  # type: ignore[attr-defined]
        threading.Event().wait()
