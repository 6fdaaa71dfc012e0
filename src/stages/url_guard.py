"""Which URLs and IP addresses a public download may use (the SSRF rules of :mod:`fetch`).

No worker imports. Two pure checks, the lookup, and the connect that only uses vetted addresses:

- :func:`url_syntax_problem`: refuses URL spellings that different URL parsers read as
  different hosts (a backslash, control characters, blanks in the host part, a user-info
  part with a second ``@`` or characters RFC 3986 does not allow there). Such a URL is
  never needed for a real audio link, and refusing it outright means the host that is
  vetted and the host that is connected to cannot disagree through a parsing quirk.
- :func:`is_blocked_address`: True for every address a download must not reach: anything
  not globally reachable (IANA special-purpose registries, checked with an explicit table
  so the verdict does not depend on the Python version's ``ipaddress`` tables), multicast,
  reserved and unspecified addresses, cloud metadata endpoints, and IPv6 addresses whose
  embedded IPv4 address is blocked (IPv4-mapped, IPv4-compatible, 6to4, Teredo, NAT64).
- :func:`connect_first`: a TCP connect to the first answering address of a vetted list,
  with no name resolution of its own (so nothing can swap the address after the vetting).
"""

from __future__ import annotations

import ipaddress
import re
import socket
import unicodedata
from collections.abc import Callable

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

# Cloud instance-metadata endpoints: the ranges below cover them already, but they are
# listed explicitly so a change in the tables can never open them up.
_METADATA_ADDRESSES = frozenset(
    {
        ipaddress.ip_address("169.254.169.254"),
        ipaddress.ip_address("fd00:ec2::254"),
    }
)

# IANA IPv4/IPv6 special-purpose address registries, "Globally Reachable: False" (or N/A)
# entries, as of 2024. A few globally reachable anycast services inside these blocks
# (e.g. 192.0.0.9, 2001:1::1) are blocked too: none of them serves files.
_NON_GLOBAL_NETWORKS = tuple(
    ipaddress.ip_network(net)
    for net in (
        "0.0.0.0/8",  # "this network"
        "10.0.0.0/8",
        "100.64.0.0/10",  # carrier-grade NAT
        "127.0.0.0/8",
        "169.254.0.0/16",
        "172.16.0.0/12",
        "192.0.0.0/24",  # IETF protocol assignments (192.0.0.8 is not covered by older Pythons)
        "192.0.2.0/24",
        "192.88.99.0/24",  # deprecated 6to4 relay anycast
        "192.168.0.0/16",
        "198.18.0.0/15",
        "198.51.100.0/24",
        "203.0.113.0/24",
        "224.0.0.0/4",  # multicast
        "240.0.0.0/4",  # reserved, includes 255.255.255.255
        "::/96",  # unspecified, loopback, deprecated IPv4-compatible addresses
        "64:ff9b:1::/48",  # local-use NAT64 (RFC 8215): translates into a private network
        "100::/64",  # discard-only
        "2001::/23",  # IETF protocol assignments, includes Teredo 2001::/32
        "2001:db8::/32",
        "3fff::/20",  # documentation
        "5f00::/16",  # SRv6 SIDs
        "fc00::/7",  # unique local
        "fe80::/10",  # link-local
        "fec0::/10",  # deprecated site-local
        "ff00::/8",  # multicast
    )
)

# RFC 6052 well-known NAT64 prefix: the translator connects to the embedded IPv4 address,
# so that address alone decides (64:ff9b::8.8.8.8 is as public as 8.8.8.8).
_NAT64_WELL_KNOWN = ipaddress.IPv6Network("64:ff9b::/96")
_IPV4_COMPATIBLE = ipaddress.IPv6Network("::/96")

_AUTHORITY_RE = re.compile(r"^[A-Za-z][A-Za-z0-9+.\-]*://([^/?#]*)")
# RFC 3986 userinfo: unreserved / pct-encoded / sub-delims / ":".
_USERINFO_RE = re.compile(r"^(?:[A-Za-z0-9\-._~!$&'()*+,;=:]|%[0-9A-Fa-f]{2})*$")


def url_syntax_problem(url: str) -> str | None:
    """Why ``url`` is refused before any parsing decides its host, or None if it is fine.

    The answer never quotes the URL: a malformed URL has no reliable user-info part to
    redact, so nothing of it may be echoed.
    """
    if "\\" in url:
        return "it contains a backslash (write it as %5C)"
    if any(unicodedata.category(ch) == "Cc" for ch in url):
        return "it contains a control character"
    match = _AUTHORITY_RE.match(url)
    authority = match.group(1) if match else ""
    if any(unicodedata.category(ch)[0] == "Z" or unicodedata.category(ch) == "Cf" for ch in authority):
        return "its host part contains a blank or an invisible formatting character"
    if "@" in authority:
        userinfo = authority.rpartition("@")[0]
        if "@" in userinfo:
            return "its host part contains more than one '@'"
        if not _USERINFO_RE.match(userinfo):
            return "its user-info part (before '@') contains characters that must be percent-encoded"
    return None


def ip_literal(host: str) -> IPAddress | None:
    """``host`` as an IP address if it is an IP literal ("[::1]" and "fe80::1%eth0" included)."""
    try:
        return ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        return None


def resolve(host: str, port: int) -> list[IPAddress]:
    """All IP addresses ``host`` stands for: itself if a literal IP, else every DNS answer."""
    literal = ip_literal(host)
    if literal is not None:
        return [literal]
    infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    # sockaddr[0] may carry an IPv6 scope ("fe80::1%eth0"); ip_address keeps it for the connect.
    return [ipaddress.ip_address(str(info[4][0])) for info in infos]


def embedded_ipv4(ip: ipaddress.IPv6Address) -> list[ipaddress.IPv4Address]:
    """The IPv4 addresses an IPv6 address carries: IPv4-mapped, IPv4-compatible, NAT64,
    6to4 (the router's address) and Teredo (server and client)."""
    found: list[ipaddress.IPv4Address] = []
    if ip.ipv4_mapped is not None:
        found.append(ip.ipv4_mapped)
    if ip in _NAT64_WELL_KNOWN or ip in _IPV4_COMPATIBLE:
        found.append(ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF))
    if ip.sixtofour is not None:
        found.append(ip.sixtofour)
    if ip.teredo is not None:
        found.extend(ip.teredo)
    return found


def is_blocked_address(ip: IPAddress) -> bool:
    """True for addresses a public download must not reach (see the module docstring)."""
    if isinstance(ip, ipaddress.IPv6Address):
        # Translated addresses: the embedded IPv4 address is where the packets go.
        if ip.ipv4_mapped is not None:
            return is_blocked_address(ip.ipv4_mapped)
        if ip in _NAT64_WELL_KNOWN:
            return is_blocked_address(ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF))
    if (
        ip in _METADATA_ADDRESSES
        or any(ip in net for net in _NON_GLOBAL_NETWORKS)
        or ip.is_private
        or ip.is_loopback
        or ip.is_link_local
        or ip.is_multicast
        or ip.is_reserved
        or ip.is_unspecified
        or not ip.is_global
    ):
        return True
    if isinstance(ip, ipaddress.IPv6Address):
        # 6to4 and Teredo reach an IPv6 host through the embedded IPv4 address: both must pass.
        return any(is_blocked_address(v4) for v4 in embedded_ipv4(ip))
    return False


def connect_first(
    addresses: list[IPAddress],
    port: int,
    timeout: float | None,
    source_address: tuple[str, int] | None = None,
    socket_options: list[tuple[int, int, int | bytes]] | None = None,
    on_socket: Callable[[socket.socket], None] | None = None,
) -> socket.socket:
    """Connect to the first of ``addresses`` that answers (in order, as urllib3 would).

    ``on_socket`` sees each socket before its connect (so a watchdog can abort it). Raises the
    last ``OSError`` (``TimeoutError`` for a timeout) when none answers.
    """
    error: OSError = OSError(f"no address to connect to on port {port}")
    for ip in addresses:
        family = socket.AF_INET6 if ip.version == 6 else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_STREAM)
        try:
            for option in socket_options or ():
                sock.setsockopt(*option)
            sock.settimeout(timeout)
            if source_address:
                sock.bind(source_address)
            if on_socket is not None:
                on_socket(sock)
            # A numeric lookup only (AI_NUMERICHOST: no DNS); gives "fe80::1%eth0" its scope.
            sockaddr = socket.getaddrinfo(str(ip), port, family, socket.SOCK_STREAM, 0, socket.AI_NUMERICHOST)[0][4]
            sock.connect(sockaddr)
            return sock
        except OSError as exc:
            sock.close()
            error = exc
    raise error
