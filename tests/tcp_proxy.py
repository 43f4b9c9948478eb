"""A loopback TCP proxy that a test puts between the store and its database, then breaks.

Three states, all at the TCP level, so the database drivers meet the real
failures a network or a restarting server gives them:

- ``up``: every connection is forwarded to the database.
- ``cut()``: every open connection is closed and new ones are refused (RST),
  as when the database restarts or its host goes away.
- ``hang()``: open connections are closed and new ones are never answered:
  the listener's accept queue is kept full, so the kernel drops each SYN and
  the client's connect waits until its own timeout, as behind a firewall that
  drops packets.

``restore()`` goes back to ``up`` on the same port.
"""

from __future__ import annotations

import contextlib
import socket
import threading
from types import TracebackType

from sqlalchemy.engine import URL, make_url

_ACCEPT_POLL = 0.05  # seconds between two checks of the stop flag while accepting


class TCPProxy:
    """Forward ``127.0.0.1:<port>`` to ``target``; :meth:`cut`, :meth:`hang`, :meth:`restore`."""

    def __init__(self, target_host: str, target_port: int) -> None:
        self.target = (target_host, target_port)
        self._lock = threading.Lock()
        self._open: set[socket.socket] = set()
        self._stop = threading.Event()
        self._listener = self._bind(0, backlog=64)
        self.port: int = self._listener.getsockname()[1]
        self._acceptor: threading.Thread | None = None
        self._hanging: list[socket.socket] = []
        self._serve()

    @classmethod
    def for_url(cls, url: str | URL) -> TCPProxy:
        """A proxy to the database server of ``url``."""
        parsed = make_url(url)
        return cls(parsed.host or "127.0.0.1", parsed.port or _DEFAULT_PORTS[parsed.get_backend_name()])

    def route(self, url: str | URL) -> URL:
        """``url`` pointed at this proxy."""
        return make_url(url).set(host="127.0.0.1", port=self.port)

    def __enter__(self) -> TCPProxy:
        return self

    def __exit__(
        self, _type: type[BaseException] | None, _exc: BaseException | None, _tb: TracebackType | None
    ) -> None:
        self.close()

    # -- states -----------------------------------------------------------------

    def cut(self) -> None:
        """Close every forwarded connection and refuse new ones."""
        self._stop_serving()
        self._drop_connections()

    def hang(self) -> None:
        """Close every forwarded connection; new connects get no answer at all."""
        self._stop_serving()
        self._drop_connections()
        # backlog 0 holds one connection that is never accepted; with it
        # queued, the kernel drops every further SYN.
        listener = self._bind(self.port, backlog=0)
        filler = socket.create_connection(("127.0.0.1", self.port), timeout=1)
        self._hanging = [listener, filler]

    def restore(self) -> None:
        """Forward again, on the same port."""
        self._stop_serving()
        self._listener = self._bind(self.port, backlog=64)
        self._serve()

    def close(self) -> None:
        self._stop_serving()
        self._drop_connections()

    # -- machinery --------------------------------------------------------------

    @staticmethod
    def _bind(port: int, backlog: int) -> socket.socket:
        listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        # The port's old connections linger in TIME_WAIT after a cut.
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("127.0.0.1", port))
        listener.listen(backlog)
        return listener

    def _serve(self) -> None:
        self._stop.clear()
        self._listener.settimeout(_ACCEPT_POLL)
        self._acceptor = threading.Thread(target=self._accept_loop, args=(self._listener,), daemon=True)
        self._acceptor.start()

    def _stop_serving(self) -> None:
        self._stop.set()
        if self._acceptor is not None:
            self._acceptor.join()
            self._acceptor = None
        self._listener.close()
        for sock in self._hanging:
            sock.close()
        self._hanging = []

    def _accept_loop(self, listener: socket.socket) -> None:
        while not self._stop.is_set():
            try:
                client, _ = listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            try:
                upstream = socket.create_connection(self.target, timeout=5)
            except OSError:
                client.close()
                continue
            for sock in (client, upstream):
                sock.settimeout(None)
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            with self._lock:
                self._open.update((client, upstream))
            for source, sink in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pump, args=(source, sink), daemon=True).start()

    def _pump(self, source: socket.socket, sink: socket.socket) -> None:
        try:
            while data := source.recv(65536):
                sink.sendall(data)
        except OSError:
            pass
        finally:
            self._close_pair(source, sink)

    def _close_pair(self, *socks: socket.socket) -> None:
        with self._lock:
            for sock in socks:
                self._open.discard(sock)
        for sock in socks:
            _hard_close(sock)

    def _drop_connections(self) -> None:
        with self._lock:
            socks, self._open = list(self._open), set()
        for sock in socks:
            _hard_close(sock)


def _hard_close(sock: socket.socket) -> None:
    with contextlib.suppress(OSError):  # already closed by the other side
        sock.shutdown(socket.SHUT_RDWR)
    sock.close()


_DEFAULT_PORTS = {"postgresql": 5432, "mysql": 3306, "mariadb": 3306}
