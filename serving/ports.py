"""One serving port, one fleet: `recsys serve` claims its port before any process binds it.

gRPC sets SO_REUSEPORT on its listening sockets, which is how the processes of one
`recsys serve --processes N` fleet (and the two generations of a blue/green swap) share a
port. Linux lets a socket join a SO_REUSEPORT group when *every* socket already bound to
the address has SO_REUSEPORT set and the same effective UID (socket(7)). So a second,
unrelated gRPC server started by the same user would silently join the fleet's group and
take a share of its connections.

`claim_port` refuses that, in two steps, before the fleet binds:

1. An exclusive `flock` on `<lock_dir>/recsys-serve-port-<port>.lock`, held by the
   serving (supervisor) process for its whole life. A second `recsys serve` on the same
   port fails to take it, even when both start at the same instant. The kernel drops the
   lock when the holder exits, however it exits (kill -9 included), so a stale file never
   blocks a restart. The lock is per port, not per address: 0.0.0.0:P and 127.0.0.1:P
   overlap.
2. A probe bind of the port *without* SO_REUSEPORT (SO_REUSEADDR only, so TIME_WAIT
   leftovers of a previous run do not count). It fails with EADDRINUSE when anything is
   listening there — any program, any user — and then the fleet does not start.

What remains, by the kernel's rule: a program that is not `recsys serve`, runs under the
same effective UID and sets SO_REUSEPORT can still join *after* the fleet bound. Run the
fleet under a service user of its own and the kernel refuses every other user's
SO_REUSEPORT bind on the port (tested).
"""
from __future__ import annotations

import errno
import fcntl
import os
import pathlib
import socket
import tempfile

from core.errors import RecsysError


class PortInUseError(RecsysError):
    """The serving port is taken (another fleet holds its lock, or something listens on it)."""


def lock_dir() -> pathlib.Path:
    """$RECSYS_LOCK_DIR, else the system temporary directory (shared by every user of the machine)."""
    return pathlib.Path(os.environ.get("RECSYS_LOCK_DIR") or tempfile.gettempdir())


class PortClaim:
    """The held claim on a port; `release()` (or process exit) gives it back."""

    def __init__(self, port: int, fd: int, path: pathlib.Path) -> None:
        self.port, self._fd, self.path = port, fd, path

    def release(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)  # closing the descriptor drops the flock
            self._fd = -1

    def __enter__(self) -> PortClaim:
        return self

    def __exit__(self, *exc) -> None:
        self.release()


def _open_lock(path: pathlib.Path) -> int:
    try:
        return os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
    except PermissionError:  # another user's file in a sticky directory: flock works on a read-only descriptor
        return os.open(path, os.O_RDONLY | os.O_CLOEXEC)


def _probe(host: str, port: int) -> None:
    """Binds every address `host` names at `port` without SO_REUSEPORT; PortInUseError if one is taken."""
    bare = host[1:-1] if host.startswith("[") and host.endswith("]") else host
    try:
        infos = socket.getaddrinfo(bare or None, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror as e:
        raise PortInUseError(f"--host {host}: cannot resolve it ({e.strerror})") from e
    for family, kind, proto, _, address in dict.fromkeys(infos):
        try:
            probe = socket.socket(family, kind, proto)
        except OSError:
            continue  # e.g. no IPv6 on this machine: gRPC will not bind it either
        with probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if family == socket.AF_INET6:
                probe.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)  # as gRPC binds [::]
            try:
                probe.bind(address)
            except OSError as e:
                if e.errno == errno.EADDRINUSE:
                    raise PortInUseError(f"--port {port}: the port is already in use on {host or '*'} (another "
                                         "server listens there); choose another --port or stop that server") from e
                if e.errno != errno.EADDRNOTAVAIL:
                    raise PortInUseError(f"--host {host} --port {port}: cannot bind ({e.strerror})") from e


def claim_port(host: str, port: int) -> PortClaim:
    """Claims `port` for one fleet: the per-port lock, then the probe bind (see the module docstring).

    Raises PortInUseError naming the port and what holds it.
    """
    path = lock_dir() / f"recsys-serve-port-{port}.lock"
    try:
        fd = _open_lock(path)
    except OSError as e:
        raise PortInUseError(f"--port {port}: cannot open the port lock {path} ({e.strerror}); set "
                             "RECSYS_LOCK_DIR to a writable directory") from e
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as e:
        os.close(fd)
        if e.errno in (errno.EWOULDBLOCK, errno.EAGAIN):
            raise PortInUseError(f"--port {port}: another `recsys serve` already serves this port (it holds "
                                 f"{path}); choose another --port or stop that server") from e
        raise PortInUseError(f"--port {port}: cannot lock {path} ({e.strerror})") from e
    try:
        _probe(host, port)
    except BaseException:
        os.close(fd)
        raise
    try:  # for operators: which process holds the port
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
    except OSError:
        pass  # a read-only descriptor (another user's file): the lock is what matters
    return PortClaim(port, fd, path)


__all__ = ["PortClaim", "PortInUseError", "claim_port", "lock_dir"]
