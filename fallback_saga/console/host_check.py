"""Which host names a request may give the console (DNS rebinding).

While every address the console binds is a loopback one, a request must
name a loopback host, the host the console was told to listen on, or one of
``allowed_hosts`` (its ``Host:`` header): a web page elsewhere whose name a
DNS server re-points at 127.0.0.1 sends its own name, and is refused.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable
from typing import Final

__all__ = ["HostCheck"]

_LOOPBACK_NAMES: Final = frozenset({"localhost", "localhost."})


def _is_loopback(host: str) -> bool:
    if host.lower() in _LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def _is_loopback_address(address: str) -> bool:
    """Whether a bound socket's address is a loopback one (``::ffff:127.0.0.1`` too)."""
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return False
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return ip.ipv4_mapped.is_loopback
    return ip.is_loopback


def _is_unspecified(host: str) -> bool:
    if not host:
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_unspecified
    except ValueError:
        return False


def _bare_host(host: str) -> str:
    """A host name as compared: lower case, no brackets, no trailing dot."""
    return host.strip("[]").lower().rstrip(".")


def _host_name(header: str) -> str:
    """The host of a ``Host`` header, without its port."""
    if header.startswith("["):
        return header[1 : header.find("]")] if "]" in header else header
    return header.rsplit(":", 1)[0] if header.count(":") == 1 else header


class HostCheck:
    """The host names a console listening on ``host`` answers to."""

    __slots__ = ("_allowed", "_check", "_own_name")

    def __init__(self, host: str, allowed_hosts: Iterable[str]) -> None:
        self._allowed = {name.lower() for name in allowed_hosts}
        # Requests may also name the host the console was told to listen on
        # (``--host vm``: its users open http://vm:8080/, and a rebinding
        # page's origin cannot be that name), unless it is a wildcard:
        # browsers send 0.0.0.0 to this machine too.
        self._own_name = "" if _is_unspecified(host) else _bare_host(host)
        # Whether requests must name this console's host: decided by bound()
        # from the addresses actually bound, checked until then.
        self._check = True

    def bound(self, addresses: Iterable[str]) -> bool:
        """The console listens on ``addresses``: whether any is beyond this
        machine. From what is bound, not from the --host text: a name or a
        spelling (``vm``, ``127.1``) that resolves to loopback is a loopback
        console, and must refuse DNS-rebound requests like 127.0.0.1 does."""
        listens_beyond = not all(_is_loopback_address(address) for address in addresses)
        self._check = not listens_beyond or bool(self._allowed)
        return listens_beyond

    def refused(self, header: str) -> str | None:
        """The host a request's ``Host`` header names, if the console must not
        answer it; None if it may."""
        if not self._check:
            return None
        host = _host_name(header)
        if host and not (
            _is_loopback(host)
            or host.lower() in self._allowed
            or (self._own_name and _bare_host(host) == self._own_name)
        ):
            return host
        return None
