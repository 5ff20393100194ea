"""MIMIC-CXR stays on local and private networks: the check before a request leaves.

PhysioNet's responsible-use policy for credentialed data forbids sending MIMIC
data, or anything derived from it, to third-party online services (hosted LLM
APIs) unless they guarantee no retention, no training use and no human review.
So `evaluate` and the LLM judge send MIMIC-derived items (provenance.py) only to
a server on loopback or a private network, unless the user overrides the check
for a compliant deployment (`--allow-remote-mimic`, `--judge-allow-remote-mimic`).

A base URL's host is local when it is, or resolves only to, addresses in:
IPv4/IPv6 loopback, RFC 1918 (10/8, 172.16/12, 192.168/16), link-local
(169.254/16, fe80::/10) or unique-local (fc00::/7). A name that does not resolve,
or resolves to any other address, is remote (a proxy could still reach it).
"""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import Callable
from urllib.parse import urlsplit

from medscout_data.evaluation.errors import ScoreError

LOCAL_NETWORKS = tuple(
    ipaddress.ip_network(net)
    for net in (
        "127.0.0.0/8",
        "10.0.0.0/8",
        "172.16.0.0/12",
        "192.168.0.0/16",
        "169.254.0.0/16",
        "::1/128",
        "fc00::/7",
        "fe80::/10",
    )
)
POLICY = (
    "PhysioNet's responsible-use policy for credentialed data forbids sending MIMIC-CXR data, or "
    "anything derived from it, to third-party online services unless they guarantee no retention, "
    "no training use and no human review"
)
Resolver = Callable[[str], list[str]]


class RemoteMimicRefused(ScoreError):
    """MIMIC-derived items would go to a server outside loopback and private networks."""


def resolve_host(host: str) -> list[str]:
    """Every address the system resolver gives for `host` (empty when it does not resolve)."""
    try:
        infos = socket.getaddrinfo(host, None, proto=socket.IPPROTO_TCP)
    except (OSError, UnicodeError):
        return []
    return sorted({str(info[4][0]) for info in infos})


def address_is_local(text: str) -> bool:
    """Whether an IP address (v4 or v6, zone id allowed) is loopback, RFC 1918, link-local or
    unique-local; False for anything that is not an address."""
    try:
        address = ipaddress.ip_address(text.split("%", 1)[0])
    except ValueError:
        return False
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    return any(address in network for network in LOCAL_NETWORKS if network.version == address.version)


def host_is_local(host: str, resolve: Resolver = resolve_host) -> bool:
    """Whether a host (an address, or a name resolving only to local addresses) is local."""
    host = host.strip("[]")
    try:
        ipaddress.ip_address(host.split("%", 1)[0])
    except ValueError:
        addresses = resolve(host)
        return bool(addresses) and all(address_is_local(a) for a in addresses)
    return address_is_local(host)


def url_is_local(url: str, resolve: Resolver = resolve_host) -> bool:
    """Whether an http(s) base URL points at a local or private-network host."""
    host = urlsplit(url).hostname
    return bool(host) and host_is_local(host, resolve)


def refuse_remote_mimic(
    url: str, shown_url: str, count: int, who: str, override: str, resolve: Resolver = resolve_host
) -> None:
    """Raise `RemoteMimicRefused` when `count` MIMIC-derived items would go to a remote `url`."""
    if count == 0 or url_is_local(url, resolve):
        return
    raise RemoteMimicRefused(
        f"refusing to send {count} MIMIC-CXR-derived item(s) to {who} at {shown_url}, a host outside "
        f"loopback and private networks: {POLICY}. Serve the model locally, leave the X-ray items out "
        f"(--modality ct --modality mri), or pass {override} if this deployment meets that policy."
    )
