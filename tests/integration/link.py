"""A TCP link between the app and a real server (Redis), whose faults a test switches on and off.

``ok`` forwards bytes both ways; ``refuse`` resets every open connection and every new one (a server
that is down); ``hang`` accepts connections and forwards nothing (a server that stopped answering).
Each switch resets the connections open at that moment, so no stale answer arrives after a fault.
Loopback only; every thread ends when the link is closed.
"""

from __future__ import annotations

import selectors
import socket
import struct
import threading
from typing import Literal

Mode = Literal["ok", "refuse", "hang"]


def _reset(sock: socket.socket) -> None:
    """Close with a TCP reset (SO_LINGER 0), as a crashed server's kernel would."""
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    except OSError:
        pass
    sock.close()


class Link:
    def __init__(self, host: str, port: int) -> None:
        self.target = (host, port)
        self.mode: Mode = "ok"
        self.connections = 0  # accepted so far
        self._server = socket.create_server(("127.0.0.1", 0))
        self._server.settimeout(0.2)
        self.port = int(self._server.getsockname()[1])
        self._lock = threading.Lock()
        self._open: list[tuple[socket.socket, socket.socket | None]] = []
        self._closed = threading.Event()
        self._threads = [threading.Thread(target=self._accept, daemon=True)]
        self._threads[0].start()

    def set(self, mode: Mode) -> None:
        with self._lock:
            self.mode = mode
            pairs, self._open = self._open, []
        for client, upstream in pairs:
            _reset(client)
            if upstream is not None:
                upstream.close()

    def _accept(self) -> None:
        while not self._closed.is_set():
            try:
                client, _ = self._server.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            with self._lock:
                self.connections += 1
                mode = self.mode
            if mode == "refuse":
                _reset(client)
                continue
            upstream = None
            if mode == "ok":
                try:
                    upstream = socket.create_connection(self.target, timeout=2)
                except OSError:
                    _reset(client)
                    continue
            with self._lock:
                self._open.append((client, upstream))
            if upstream is not None:
                t = threading.Thread(target=self._pump, args=(client, upstream), daemon=True)
                t.start()
            # in "hang" the client stays connected and nothing is ever read or sent

    def _pump(self, client: socket.socket, upstream: socket.socket) -> None:
        # a selector (epoll), not select(): select() refuses descriptors above 1023, which a long test
        # session's process reaches, and every forwarded connection would then close at once
        peers = {client: upstream, upstream: client}
        sel = selectors.DefaultSelector()
        try:
            for s in peers:
                sel.register(s, selectors.EVENT_READ)
            while not self._closed.is_set():
                for key, _ in sel.select(0.2):
                    ready = key.fileobj
                    assert isinstance(ready, socket.socket)
                    data = ready.recv(65536)
                    if not data:
                        return
                    peers[ready].sendall(data)
        except (OSError, ValueError):  # reset by set() or by a peer (ValueError: a socket closed before it was registered)
            return
        finally:
            sel.close()
            for s in peers:
                try:
                    s.close()
                except OSError:
                    pass

    def close(self) -> None:
        self._closed.set()
        self.set("refuse")
        self._server.close()
        for t in self._threads:
            t.join(2)
