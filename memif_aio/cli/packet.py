"""Just enough Ethernet, ARP, IPv4 and ICMP to answer and send pings.

A deliberately small packet toolkit for the ``memif-aio`` tools (``responder``,
``ping``, ``bench``): build and parse the headers with :mod:`struct`, compute the
Internet checksum (RFC 1071), and answer ARP requests and ICMP echo requests the
way libmemif's ``icmp_responder`` does.  It is not a general packet library:
parsers return ``None`` for anything they do not understand (or that fails a
length or checksum check), never raise on peer input.

::

    frame = echo_request_frame(src_mac, dst_mac, src_ip, dst_ip, ident=1, seq=1,
                               payload=b"hello")
    reply = respond(frame, my_mac, my_ip)          # what a responder sends back
    eth = parse_ethernet(reply)
    ip = parse_ipv4(eth.payload)
    icmp = parse_icmp(ip.payload)
"""

from __future__ import annotations

import ipaddress
import struct
from dataclasses import dataclass

__all__ = [
    "ARP_REPLY",
    "ARP_REQUEST",
    "BROADCAST_MAC",
    "ETH_P_ARP",
    "ETH_P_IPV4",
    "ICMP_ECHO_REPLY",
    "ICMP_ECHO_REQUEST",
    "IPPROTO_ICMP",
    "Arp",
    "Ethernet",
    "IPv4",
    "Icmp",
    "arp_frame",
    "checksum",
    "echo_reply_for",
    "echo_request_frame",
    "ethernet",
    "format_ip",
    "format_mac",
    "icmp",
    "ipv4",
    "parse_arp",
    "parse_ethernet",
    "parse_icmp",
    "parse_ip",
    "parse_ipv4",
    "parse_mac",
    "respond",
]

ETH_P_IPV4 = 0x0800
ETH_P_ARP = 0x0806
IPPROTO_ICMP = 1
ICMP_ECHO_REPLY = 0
ICMP_ECHO_REQUEST = 8
ARP_REQUEST = 1
ARP_REPLY = 2
BROADCAST_MAC = b"\xff" * 6

_ETH = struct.Struct("!6s6sH")
_ARP = struct.Struct("!HHBBH6s4s6s4s")
_IPV4 = struct.Struct("!BBHHHBBH4s4s")
_ICMP_ECHO = struct.Struct("!BBHHH")


# --- addresses -------------------------------------------------------------------------------


def parse_mac(text: str) -> bytes:
    """``"02:fe:00:00:00:01"`` (or with ``-``) to 6 bytes; ``ValueError`` otherwise."""
    parts = text.replace("-", ":").split(":")
    if len(parts) != 6 or not all(len(p) in (1, 2) for p in parts):
        raise ValueError(f"not a MAC address: {text!r}")
    try:
        return bytes(int(p, 16) for p in parts)
    except ValueError:
        raise ValueError(f"not a MAC address: {text!r}") from None


def format_mac(mac: bytes) -> str:
    return ":".join(f"{b:02x}" for b in mac)


def parse_ip(text: str) -> bytes:
    """A dotted IPv4 address to 4 bytes; ``ValueError`` otherwise."""
    try:
        return ipaddress.IPv4Address(text).packed
    except ipaddress.AddressValueError:
        raise ValueError(f"not an IPv4 address: {text!r}") from None


def format_ip(ip: bytes) -> str:
    return str(ipaddress.IPv4Address(ip))


# --- checksum ----------------------------------------------------------------------------------


def checksum(data: bytes | bytearray | memoryview) -> int:
    """The Internet checksum (RFC 1071): ones' complement of the ones' complement sum of
    16-bit big-endian words, an odd trailing byte padded with zero.

    Computing it over data that already holds a correct checksum gives 0.
    """
    b = bytes(data)
    if len(b) & 1:
        b += b"\0"
    # read as one big integer, the data is sum(word_i * 2**(16*k)); since 2**16 == 1
    # (mod 0xffff) that is congruent to sum(word_i): the ones' complement sum in one step
    total = int.from_bytes(b, "big")
    s = total % 0xFFFF
    if s == 0 and total:
        s = 0xFFFF  # ones' complement sum of a non-zero sequence is never +0
    return (~s) & 0xFFFF


# --- Ethernet ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Ethernet:
    dst: bytes
    src: bytes
    ethertype: int
    payload: bytes


def ethernet(dst: bytes, src: bytes, ethertype: int, payload: bytes) -> bytes:
    return _ETH.pack(dst, src, ethertype) + payload


def parse_ethernet(frame: bytes | memoryview) -> Ethernet | None:
    """The Ethernet II header (no VLAN tags); None if the frame is too short."""
    if len(frame) < _ETH.size:
        return None
    dst, src, et = _ETH.unpack_from(frame)
    return Ethernet(dst, src, et, bytes(frame[_ETH.size:]))


# --- ARP ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Arp:
    """An Ethernet/IPv4 ARP packet."""

    op: int
    sender_mac: bytes
    sender_ip: bytes
    target_mac: bytes
    target_ip: bytes


def arp_frame(op: int, sender_mac: bytes, sender_ip: bytes, target_mac: bytes,
              target_ip: bytes, dst: bytes | None = None) -> bytes:
    """A whole ARP frame; ``dst`` defaults to broadcast for requests, ``target_mac``
    for replies."""
    if dst is None:
        dst = BROADCAST_MAC if op == ARP_REQUEST else target_mac
    body = _ARP.pack(1, ETH_P_IPV4, 6, 4, op, sender_mac, sender_ip, target_mac, target_ip)
    return ethernet(dst, sender_mac, ETH_P_ARP, body)


def parse_arp(payload: bytes) -> Arp | None:
    """An Ethernet/IPv4 ARP body (after the Ethernet header); None for anything else."""
    if len(payload) < _ARP.size:
        return None
    htype, ptype, hlen, plen, op, sha, spa, tha, tpa = _ARP.unpack_from(payload)
    if (htype, ptype, hlen, plen) != (1, ETH_P_IPV4, 6, 4):
        return None
    return Arp(op, sha, spa, tha, tpa)


# --- IPv4 --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class IPv4:
    src: bytes
    dst: bytes
    proto: int
    ttl: int
    ident: int
    payload: bytes
    header_length: int


def ipv4(src: bytes, dst: bytes, proto: int, payload: bytes, ttl: int = 64,
         ident: int = 0, dont_fragment: bool = True) -> bytes:
    """An IPv4 packet with a 20-byte header and a correct header checksum."""
    total = _IPV4.size + len(payload)
    if total > 0xFFFF:
        raise ValueError(f"IPv4 packet of {total} bytes is too large")
    flags = 0x4000 if dont_fragment else 0
    hdr = _IPV4.pack(0x45, 0, total, ident & 0xFFFF, flags, ttl, proto, 0, src, dst)
    csum = checksum(hdr)
    return hdr[:10] + csum.to_bytes(2, "big") + hdr[12:] + payload


def parse_ipv4(data: bytes) -> IPv4 | None:
    """An unfragmented IPv4 packet with a valid header checksum; None otherwise.

    The payload is cut to the header's total length (Ethernet padding is dropped)."""
    if len(data) < _IPV4.size:
        return None
    vihl, _tos, total, ident, frag, ttl, proto, _csum, src, dst = _IPV4.unpack_from(data)
    ihl = (vihl & 0x0F) * 4
    if vihl >> 4 != 4 or ihl < 20 or total < ihl or total > len(data):
        return None
    if frag & 0x3FFF:  # MF set or a fragment offset: not a whole packet
        return None
    if checksum(data[:ihl]) != 0:
        return None
    return IPv4(src, dst, proto, ttl, ident, bytes(data[ihl:total]), ihl)


# --- ICMP --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Icmp:
    """An ICMP echo request or reply (other types keep ``ident``/``seq`` = the rest word)."""

    type: int
    code: int
    ident: int
    seq: int
    payload: bytes


def icmp(type_: int, code: int, ident: int, seq: int, payload: bytes) -> bytes:
    """An ICMP echo-style message with a correct checksum."""
    body = _ICMP_ECHO.pack(type_, code, 0, ident & 0xFFFF, seq & 0xFFFF) + payload
    csum = checksum(body)
    return body[:2] + csum.to_bytes(2, "big") + body[4:]


def parse_icmp(data: bytes) -> Icmp | None:
    """An ICMP message with a valid checksum; None otherwise."""
    if len(data) < _ICMP_ECHO.size or checksum(data) != 0:
        return None
    type_, code, _csum, ident, seq = _ICMP_ECHO.unpack_from(data)
    return Icmp(type_, code, ident, seq, bytes(data[_ICMP_ECHO.size:]))


# --- composites --------------------------------------------------------------------------------


def echo_request_frame(src_mac: bytes | None, dst_mac: bytes | None, src_ip: bytes,
                       dst_ip: bytes, ident: int, seq: int, payload: bytes,
                       ttl: int = 64) -> bytes:
    """An ICMP echo request: an Ethernet frame, or a bare IPv4 packet when either MAC is
    None (memif ``ip`` mode)."""
    pkt = ipv4(src_ip, dst_ip, IPPROTO_ICMP, icmp(ICMP_ECHO_REQUEST, 0, ident, seq, payload),
               ttl=ttl, ident=seq)
    if src_mac is None or dst_mac is None:
        return pkt
    return ethernet(dst_mac, src_mac, ETH_P_IPV4, pkt)


def echo_reply_for(packet: bytes, my_ip: bytes | None) -> bytes | None:
    """The IPv4 echo reply to an IPv4 echo request addressed to ``my_ip`` (any
    address when None), or None when ``packet`` is not such a request."""
    ip = parse_ipv4(packet)
    if ip is None or ip.proto != IPPROTO_ICMP or (my_ip is not None and ip.dst != my_ip):
        return None
    msg = parse_icmp(ip.payload)
    if msg is None or msg.type != ICMP_ECHO_REQUEST or msg.code != 0:
        return None
    return ipv4(ip.dst, ip.src, IPPROTO_ICMP,
                icmp(ICMP_ECHO_REPLY, 0, msg.ident, msg.seq, msg.payload), ident=ip.ident)


def respond(packet: bytes, my_mac: bytes | None, my_ip: bytes | None) -> bytes | None:
    """What a responder sends back for ``packet``, or None.

    Ethernet mode (``my_mac`` given): ARP requests for ``my_ip`` get an ARP reply, ICMP
    echo requests to ``my_ip`` (sent to ``my_mac`` or broadcast) get an echo reply.  IP
    mode (``my_mac`` None): ``packet`` is a bare IPv4 packet and only echo requests are
    answered.  ``my_ip`` None answers for every address.
    """
    if my_mac is None:
        return echo_reply_for(packet, my_ip)
    eth = parse_ethernet(packet)
    if eth is None:
        return None
    if eth.ethertype == ETH_P_ARP:
        arp = parse_arp(eth.payload)
        if arp is None or arp.op != ARP_REQUEST or (my_ip is not None and arp.target_ip != my_ip):
            return None
        return arp_frame(ARP_REPLY, my_mac, arp.target_ip, arp.sender_mac, arp.sender_ip,
                         dst=eth.src)
    if eth.ethertype != ETH_P_IPV4 or eth.dst not in (my_mac, BROADCAST_MAC):
        return None
    reply = echo_reply_for(eth.payload, my_ip)
    if reply is None:
        return None
    return ethernet(eth.src, my_mac, ETH_P_IPV4, reply)
