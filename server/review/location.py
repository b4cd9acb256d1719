"""Approximate location and network facts of a client address, offline.

The country comes from geoip2fast's bundled table (no network, no licence key). An address
maps to where its network is registered, which for mobile carriers, VPNs and corporate proxies
can be far from the person: every place that shows it says the location may be wrong.
"""

from __future__ import annotations

import functools
import ipaddress
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class NetworkFacts:
    address: str
    network: str
    """The /24 (IPv4) or /48 (IPv6) the address belongs to, or ``""`` when not an address."""
    location: str
    """``Germany (DE)``, ``private network`` or ``unknown``."""
    private: bool


@functools.cache
def _geoip() -> Any:
    from geoip2fast import GeoIP2Fast

    return GeoIP2Fast(verbose=False)


def network_facts(address: str) -> NetworkFacts:
    try:
        ip = ipaddress.ip_address(address.strip())
    except ValueError:
        return NetworkFacts(address=address, network="", location="unknown", private=False)
    prefix = 24 if ip.version == 4 else 48
    network = str(ipaddress.ip_network(f"{ip}/{prefix}", strict=False))
    if not ip.is_global:
        return NetworkFacts(str(ip), network, "private network", private=True)
    found = _geoip().lookup(str(ip))
    code = str(getattr(found, "country_code", "") or "")
    name = str(getattr(found, "country_name", "") or "")
    location = f"{name} ({code})" if len(code) == 2 and code != "--" else "unknown"
    return NetworkFacts(str(ip), network, location, private=False)
