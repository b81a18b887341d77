"""A small TCP proxy on 127.0.0.1 for fault tests: put it between the API and PostgreSQL,
then ``cut()`` (drop every open connection and refuse new ones, as a restarting database
does), ``blackhole()`` (a silent partition: sockets open, nothing gets through) and
``restore()`` (accept and forward again on the same port). Threads only, no dependencies.

    with TcpProxy("127.0.0.1", 5432) as proxy:
        url = proxy.url_for(database_url)      # the same URL through the proxy
        ...
        proxy.cut(); ...; proxy.restore()
"""

from __future__ import annotations

import socket
import threading
from urllib.parse import urlsplit, urlunsplit


class TcpProxy:
    def __init__(self, target_host: str, target_port: int) -> None:
        self.target = (target_host, target_port)
        self.port = 0
        self._listener: socket.socket | None = None
        self._lock = threading.Lock()
        self._conns: set[socket.socket] = set()
        self._accepting = False
        self._blackholed = False
        self.accepted = 0

    # -- lifecycle ---------------------------------------------------------------------

    def start(self) -> TcpProxy:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(("127.0.0.1", self.port))
        sock.listen(64)
        self.port = sock.getsockname()[1]
        self._listener = sock
        self._accepting = True
        threading.Thread(target=self._accept_loop, args=(sock,), daemon=True).start()
        return self

    def cut(self) -> None:
        """Close the listening socket (new connects are refused) and every open connection."""
        with self._lock:
            self._accepting = False
            listener, self._listener = self._listener, None
            conns, self._conns = list(self._conns), set()
        if listener is not None:
            _close(listener)
        for conn in conns:
            _close(conn)

    def restore(self) -> None:
        """Listen again on the same port (and forward again after ``blackhole()``)."""
        self._blackholed = False
        if self._listener is None:
            self.start()

    def blackhole(self) -> None:
        """A silent partition: every socket stays open, and whatever either side sends is
        acknowledged (by this host's TCP stack) and dropped. No error ever reaches either
        end; only a deadline of the client's own notices."""
        self._blackholed = True

    def close(self) -> None:
        self.cut()

    def __enter__(self) -> TcpProxy:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def open_connections(self) -> int:
        with self._lock:
            return len(self._conns) // 2

    def url_for(self, url: str) -> str:
        """``url`` (postgresql://user:pw@host:port/db) rewritten to go through the proxy."""
        parts = urlsplit(url)
        userinfo = parts.netloc.rpartition("@")[0]
        netloc = f"{userinfo}@127.0.0.1:{self.port}" if userinfo else f"127.0.0.1:{self.port}"
        return urlunsplit(parts._replace(netloc=netloc))

    # -- plumbing ----------------------------------------------------------------------

    def _accept_loop(self, listener: socket.socket) -> None:
        while True:
            try:
                client, _ = listener.accept()
            except OSError:
                return  # listener closed by cut()
            try:
                upstream = socket.create_connection(self.target, timeout=5)
                upstream.settimeout(None)
            except OSError:
                _close(client)
                continue
            with self._lock:
                if not self._accepting:
                    _close(client)
                    _close(upstream)
                    continue
                self._conns.update((client, upstream))
                self.accepted += 1
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pump, args=(a, b), daemon=True).start()

    def _pump(self, src: socket.socket, dst: socket.socket) -> None:
        try:
            while True:
                data = src.recv(65536)
                if not data:
                    break
                if self._blackholed:
                    continue
                dst.sendall(data)
        except OSError:
            pass
        finally:
            with self._lock:
                self._conns.discard(src)
                self._conns.discard(dst)
            _close(src)
            _close(dst)


def _close(sock: socket.socket) -> None:
    try:
        sock.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass
    try:
        sock.close()
    except OSError:
        pass
