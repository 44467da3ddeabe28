"""A loopback HTTP server whose answer for each image is scripted, faults included."""

import socket
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path


@dataclass
class Reply:
    status: int = 200
    body: bytes = b""
    headers: dict[str, str] = field(default_factory=lambda: {"Content-Type": "image/jpeg"})
    delay_s: float = 0.0  # before the status line: "slow past the timeout"
    truncate_to: int | None = None  # declare the full length, send this many bytes, hang up
    chunked: bool = False  # no Content-Length: the client must cap the size itself


class ImageServer:
    """``GET /<name>.<ext>`` answers with ``routes[name]``: a list of replies played in
    order, the last repeated; or files from ``static_dir``; else 404. Counts every hit."""

    def __init__(self, static_dir: Path | None = None) -> None:
        self.routes: dict[str, list[Reply]] = {}
        self.hits: Counter[str] = Counter()
        self.static_dir = static_dir
        self._lock = threading.Lock()
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: object) -> None:
                pass

            def do_GET(self) -> None:
                name = self.path.rsplit("/", 1)[-1].split(".", 1)[0]
                with server._lock:
                    server.hits[name] += 1
                    n = server.hits[name]
                reply = server._reply(name, n)
                time.sleep(reply.delay_s)
                self.send_response(reply.status)
                for key, value in reply.headers.items():
                    self.send_header(key, value)
                if reply.chunked:
                    self.send_header("Transfer-Encoding", "chunked")
                    self.end_headers()
                    for start in range(0, len(reply.body), 65536):
                        piece = reply.body[start : start + 65536]
                        self.wfile.write(f"{len(piece):x}\r\n".encode() + piece + b"\r\n")
                    self.wfile.write(b"0\r\n\r\n")
                    return
                self.send_header("Content-Length", str(len(reply.body)))
                self.end_headers()
                if reply.truncate_to is None:
                    self.wfile.write(reply.body)
                    return
                self.wfile.write(reply.body[: reply.truncate_to])
                self.wfile.flush()
                self.close_connection = True
                self.connection.shutdown(socket.SHUT_RDWR)

        class Server(ThreadingHTTPServer):
            daemon_threads = True

            def handle_error(self, request: object, client_address: object) -> None:
                pass  # clients hanging up on oversized or slow replies is the point

        self._server = Server(("127.0.0.1", 0), Handler)
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    def _reply(self, name: str, n: int) -> Reply:
        if name in self.routes:
            replies = self.routes[name]
            return replies[min(n, len(replies)) - 1]
        if self.static_dir is not None:
            path = self.static_dir / f"{name}.jpg"
            if path.is_file():
                return Reply(body=path.read_bytes())
        return Reply(status=404, body=b"not found", headers={"Content-Type": "text/plain"})

    @property
    def port(self) -> int:
        return self._server.server_address[1]

    def url(self, path: str = "/img/{shard}/{signature}.jpg", host: str = "127.0.0.1") -> str:
        return f"http://{host}:{self.port}{path}"

    def __enter__(self) -> "ImageServer":
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.shutdown()
        self._server.server_close()
