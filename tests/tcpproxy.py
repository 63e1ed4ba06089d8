"""A small TCP proxy on 127.0.0.1 that can cut a process off from a server, for partition tests.

    proxy = TcpProxy("127.0.0.1", 6379)        # forwards 127.0.0.1:proxy.port -> 127.0.0.1:6379
    proxy.cut()                                 # the client is cut off (see `cut` for how)
    proxy.heal()                                # new connections are forwarded again
    proxy.close()

Each forwarded connection has two pump threads (client -> server, server -> client); the
accept loop is one more thread. Everything runs on loopback only.
"""

from __future__ import annotations

import contextlib
import socket
import struct
import threading

OPEN, BLACKHOLE, REFUSE = "open", "blackhole", "refuse"


class _Link:
    """One client connection: forwarded to the target, or held silently while cut."""

    def __init__(self, client: socket.socket, upstream: socket.socket | None):
        self.client = client
        self.upstream = upstream
        self.forwarding = upstream is not None
        self._closed = False
        self._lock = threading.Lock()

    def close(self, *, reset: bool = False) -> None:
        with self._lock:
            if self._closed:
                return
            self._closed = True
        for sock in (self.client, self.upstream):
            if sock is None:
                continue
            if reset:  # RST instead of FIN
                with contextlib.suppress(OSError):
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)  # wakes the pump blocked in recv()
            with contextlib.suppress(OSError):
                sock.close()


class TcpProxy:
    """Forwards connections to (target_host, target_port) until `cut`."""

    def __init__(self, target_host: str, target_port: int, *, host: str = "127.0.0.1", port: int = 0):
        self.target = (target_host, target_port)
        self._listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._listener.bind((host, port))
        self._listener.listen(128)
        self._listener.settimeout(0.1)  # the accept loop notices `close` within this
        self.host, self.port = self._listener.getsockname()[:2]
        self.mode = OPEN
        self.links: set[_Link] = set()
        # Connections made while cut (blackholed or refused), e.g. to show a client tried.
        self.attempts_while_cut = 0
        self._lock = threading.Lock()
        self._closed = threading.Event()
        self._acceptor = threading.Thread(target=self._accept_loop, name="tcpproxy-accept", daemon=True)
        self._acceptor.start()

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"

    def url_for(self, url: str) -> str:
        """`url` (e.g. redis://127.0.0.1:6379/0) with its host:port replaced by the proxy's."""
        from urllib.parse import urlsplit, urlunsplit

        parts = urlsplit(url)
        auth = parts.netloc.rpartition("@")[0]
        netloc = (auth + "@" if auth else "") + self.address
        return urlunsplit(parts._replace(netloc=netloc))

    # -- control -----------------------------------------------------------------------------

    def cut(self, mode: str = BLACKHOLE, *, close_existing: bool = True) -> None:
        """Cut the client off.

        mode BLACKHOLE: new connections are accepted and never forwarded (what the client sends
        is read and dropped, nothing ever comes back), like a partition where packets vanish;
        only the client's own timeouts can save it. mode REFUSE: new connections are reset at
        once (a fast, visible failure).
        close_existing: open connections are closed (FIN) at once; otherwise they stay open and
        go silent, both ways, like the new ones in BLACKHOLE mode.
        """
        if mode not in (BLACKHOLE, REFUSE):
            raise ValueError(f"unknown mode {mode!r}")
        with self._lock:
            self.mode = mode
            links = list(self.links)
        for link in links:
            if close_existing:
                link.close()
            else:
                link.forwarding = False

    def heal(self) -> None:
        """Forward new connections again. The connections held during the cut (and silenced
        ones) are closed, as by a middlebox that forgot them: their clients reconnect."""
        with self._lock:
            self.mode = OPEN
            stale = [link for link in self.links if not link.forwarding]
        for link in stale:
            link.close()

    def close(self) -> None:
        self._closed.set()
        self._acceptor.join(timeout=5)
        with contextlib.suppress(OSError):
            self._listener.close()
        with self._lock:
            links = list(self.links)
        for link in links:
            link.close()

    def __enter__(self) -> "TcpProxy":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # -- machinery ---------------------------------------------------------------------------

    def _accept_loop(self) -> None:
        while not self._closed.is_set():
            try:
                client, _ = self._listener.accept()
            except socket.timeout:
                continue
            except OSError:
                return
            client.settimeout(None)
            client.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            with self._lock:
                mode = self.mode
                if mode != OPEN:
                    self.attempts_while_cut += 1
            if mode == REFUSE:
                _Link(client, None).close(reset=True)
                continue
            upstream = None
            if mode == OPEN:
                try:
                    upstream = socket.create_connection(self.target, timeout=5)
                    upstream.settimeout(None)
                    upstream.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                except OSError:
                    _Link(client, None).close(reset=True)  # the target is down: so are we
                    continue
            link = _Link(client, upstream)
            with self._lock:
                self.links.add(link)
                if self.mode != OPEN and upstream is not None:
                    link.forwarding = False  # cut while we connected: held like the others
            self._start(link, link.client, link.upstream)
            if upstream is not None:
                self._start(link, link.upstream, link.client)

    def _start(self, link: _Link, source: socket.socket, sink: socket.socket | None) -> None:
        threading.Thread(target=self._pump, args=(link, source, sink), name="tcpproxy-pump", daemon=True).start()

    def _pump(self, link: _Link, source: socket.socket, sink: socket.socket | None) -> None:
        try:
            while True:
                data = source.recv(65536)
                if not data:
                    break
                if link.forwarding and sink is not None:
                    sink.sendall(data)
                # else: dropped, like a packet lost in the partition
        except OSError:
            pass
        finally:
            # Closing a silenced link would tell the client something: it stays open until
            # `heal` or `close`, unless its client itself hung up.
            if link.forwarding or source is link.client:
                link.close()
            with self._lock:
                if link._closed:
                    self.links.discard(link)
