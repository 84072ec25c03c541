"""No network but this machine, for a test's child processes: put this folder first on their
PYTHONPATH with LORACLE_TEST_OFFLINE set to a log file, and Python imports it at start-up
(the `site` module's sitecustomize hook).

Connections and name lookups of anything but loopback are refused with an OSError, as on a
machine with no network, and each attempt is appended to the log file. The log is the check:
code that catches the OSError and carries on (a hub lookup that falls back to a cache) still
leaves a line there, so a test that finds the log empty knows nothing even tried.
"""

from __future__ import annotations

import ipaddress
import os
import socket

_LOG = os.environ.get("LORACLE_TEST_OFFLINE")


def _local(host: object) -> bool:
    if not isinstance(host, str | bytes):
        return True  # a unix socket path or a file descriptor: not the network
    name = host.decode() if isinstance(host, bytes) else host
    if name in ("localhost", ""):
        return True
    try:
        return ipaddress.ip_address(name.split("%")[0]).is_loopback
    except ValueError:
        return False


def _refuse(what: str) -> OSError:
    with open(_LOG, "a", encoding="utf-8") as fh:
        fh.write(f"{os.getpid()} {what}\n")
    return OSError(101, f"network is unreachable (the test allows loopback only): {what}")


if _LOG:
    _connect = socket.socket.connect
    _connect_ex = socket.socket.connect_ex
    _getaddrinfo = socket.getaddrinfo

    def connect(self: socket.socket, address: object) -> None:
        if self.family in (socket.AF_INET, socket.AF_INET6) and not _local(address[0]):
            raise _refuse(f"connect {address!r}")
        return _connect(self, address)

    def connect_ex(self: socket.socket, address: object) -> int:
        if self.family in (socket.AF_INET, socket.AF_INET6) and not _local(address[0]):
            raise _refuse(f"connect {address!r}")
        return _connect_ex(self, address)

    def getaddrinfo(host: object, *args: object, **kwargs: object) -> list:
        if host is not None and not _local(host):
            raise _refuse(f"getaddrinfo {host!r}")
        return _getaddrinfo(host, *args, **kwargs)

    socket.socket.connect = connect
    socket.socket.connect_ex = connect_ex
    socket.getaddrinfo = getaddrinfo
