"""A fault-injecting TCP proxy: real connections, with latency added and resets on demand.

The kernel here has no ``netem`` queueing discipline and there is no packet filter, and
Toxiproxy's server is not packaged for Debian, so the faults of a bad network link are
made in user space: every byte still crosses real TCP connections (client to proxy,
proxy to server), the proxy only delays each chunk by ``latency`` seconds in both
directions, ``reset()`` aborts every open connection with a TCP RST (``SO_LINGER``
0), which is what a stateful firewall or a load balancer dropping its table does, and
``stall()`` makes every open connection silently dead: the proxy keeps both sockets
open and drops every byte, so neither end hears a RST or a FIN (a NAT or firewall that
forgot the flow and drops its packets, a failover behind a virtual IP). New
connections after a stall work, as they would through that firewall.
"""

from __future__ import annotations

import contextlib
import socket
import struct
import threading
import time
from types import TracebackType


class FaultProxy:
    def __init__(self, target_host: str, target_port: int) -> None:
        self.target = (target_host, target_port)
        self.latency = 0.0
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.resets = 0
        self._connections: set[socket.socket] = set()
        self._stalled: set[socket.socket] = set()  # kept open, every byte dropped
        self._lock = threading.Lock()
        self._closed = False
        threading.Thread(target=self._accept, daemon=True).start()

    def __enter__(self) -> FaultProxy:
        return self

    def __exit__(self, *exc: type[BaseException] | BaseException | TracebackType | None) -> None:
        self.close()

    def url_for(self, url: str) -> str:
        """``url`` (postgres:// or redis://) with its host and port replaced by this proxy's."""
        host, port = self.target
        return url.replace(f"{host}:{port}", f"127.0.0.1:{self.port}", 1)

    def reset(self) -> int:
        """Abort every open connection with a RST; returns how many were cut."""
        with self._lock:
            cut = list(self._connections)
            self._connections.clear()
            self._stalled.clear()
        for sock in cut:
            self._abort(sock)
        self.resets += 1
        return len(cut) // 2

    def stall(self) -> int:
        """Make every open connection silently dead; returns how many."""
        with self._lock:
            stalled = len(self._connections - self._stalled) // 2
            self._stalled |= self._connections
        return stalled

    def close(self) -> None:
        self._closed = True
        self.listener.close()
        self.reset()

    # -- plumbing -----------------------------------------------------------------------
    @staticmethod
    def _abort(sock: socket.socket) -> None:
        # A pump thread blocked in recv() holds the socket open: close() alone releases
        # only the descriptor, so the kernel would send nothing and the far end would
        # wait on a silently dead (half-open) connection. shutdown(SHUT_RD) wakes the
        # reader and sends nothing; the last release then sends the RST (linger 0).
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RD)
            sock.close()
        except OSError:
            pass

    def _accept(self) -> None:
        while not self._closed:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            try:
                upstream = socket.create_connection(self.target, timeout=10)
                upstream.settimeout(None)
            except OSError:
                self._abort(client)
                continue
            with self._lock:
                self._connections.update((client, upstream))
            for source, sink in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pump, args=(source, sink), daemon=True).start()

    def _pump(self, source: socket.socket, sink: socket.socket) -> None:
        try:
            while chunk := source.recv(65536):
                if source in self._stalled:
                    continue  # the link is dead: the bytes go nowhere
                if self.latency:
                    time.sleep(self.latency)
                sink.sendall(chunk)
        except OSError:
            pass
        finally:
            with self._lock:
                owned = source in self._connections
                # A dead link carries no FIN either: the other end keeps waiting.
                silent = source in self._stalled
                if not silent:
                    self._connections.discard(source)
                    self._connections.discard(sink)
            if owned and not silent:  # a clean end on one side: pass it on
                for sock in (source, sink):
                    with contextlib.suppress(OSError):
                        sock.shutdown(socket.SHUT_RDWR)
                    sock.close()
