#!/usr/bin/python3
"""An ESP implementation that shares no code with swarmgate, for its interop tests.

Docker's SA parameters are computed here from their definition in moby/moby
`daemon/libnetwork/drivers/overlay/encryption.go`:
  * `buildSPI`: FNV-1a-32 over src.As16() | be32(key tag) | dst.As16() (IPv4-mapped form);
  * `buildAeadAlgo`: rfc4106(gcm(aes)), key = the 16-byte datapath key itself, followed
    by a 4-byte salt = be32(SPI); ICV 64 bits;
and the cryptography comes from OpenSSL through Python's `cryptography` package (Debian's
python3-cryptography). Packets sent by `send` carry the Linux kernel's IV construction
(`crypto/seqiv.c`: be64(seq) XOR a random per-SA salt), as a Docker host's would.

  decrypt  --key HEX:TAG ... --vni N PCAP...   every ESP packet in the captures must
                                               decrypt to UDP/VXLAN with an intact frame
  send     --key HEX:TAG ... --vni N --src-mac M --dst-mac M --src-ip A --dst-ip A
           --to VTEP --expect FILE             Docker-style ESP to VTEP, plus bad packets
           [--rebuilds N]                      then re-create the first SA N times, as
                                               Docker does on membership changes (fresh
                                               random salt, each upper word lower than the
                                               last, seq from 1)
  delivered PCAP FILE                          each expected frame arrived once, verbatim
"""
import argparse
import json
import os
import socket
import struct
import sys
import time

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

ICV = 8


def fnv1a32(data):
    h = 0x811C9DC5
    for b in data:
        h = ((h ^ b) * 0x01000193) & 0xFFFFFFFF
    return h


def as16(ip):
    return b"\x00" * 10 + b"\xff\xff" + socket.inet_aton(ip)


def docker_spi(src, dst, tag):
    return fnv1a32(as16(src) + struct.pack(">I", tag) + as16(dst))


def parse_keys(specs):
    keys = {}
    for s in specs:
        k, t = s.split(":")
        keys[int(t)] = bytes.fromhex(k)
    return keys


def csum(data):
    if len(data) % 2:
        data += b"\x00"
    s = sum(struct.unpack("!%dH" % (len(data) // 2), data))
    while s >> 16:
        s = (s & 0xFFFF) + (s >> 16)
    return (~s) & 0xFFFF


def read_pcap(path):
    with open(path, "rb") as f:
        data = f.read()
    if len(data) < 24:
        return []
    magic = data[:4]
    if magic in (b"\xd4\xc3\xb2\xa1", b"\x4d\x3c\xb2\xa1"):
        e = "<"
    elif magic in (b"\xa1\xb2\xc3\xd4", b"\xa1\xb2\x3c\x4d"):
        e = ">"
    else:
        raise SystemExit("%s: not a pcap file" % path)
    linktype = struct.unpack(e + "I", data[20:24])[0]
    if linktype != 1:
        raise SystemExit("%s: link type %d, want Ethernet" % (path, linktype))
    out, off = [], 24
    while off + 16 <= len(data):
        incl, orig = struct.unpack(e + "II", data[off + 8 : off + 16])
        pkt = data[off + 16 : off + 16 + incl]
        if incl != orig:
            raise SystemExit("%s: a packet was cut to %d of %d bytes" % (path, incl, orig))
        out.append(pkt)
        off += 16 + incl
    return out


def gcm_open(key, spi, seq_bytes, iv, ct, icv):
    nonce = struct.pack(">I", spi) + iv
    d = Cipher(algorithms.AES(key), modes.GCM(nonce, icv, min_tag_length=ICV)).decryptor()
    d.authenticate_additional_data(struct.pack(">I", spi) + seq_bytes)
    return d.update(ct) + d.finalize()


def gcm_seal(key, spi, seq, iv, pt):
    nonce = struct.pack(">I", spi) + iv
    e = Cipher(algorithms.AES(key), modes.GCM(nonce)).encryptor()
    e.authenticate_additional_data(struct.pack(">II", spi, seq))
    ct = e.update(pt) + e.finalize()
    return ct, e.tag[:ICV]  # RFC 4106 §6: the ICV is the leading bytes of the GCM tag


def check_inner(frame):
    """The inner Ethernet frame: IPv4 header and L4 checksums must verify."""
    if len(frame) < 14:
        return "inner frame of %d bytes" % len(frame)
    et = struct.unpack(">H", frame[12:14])[0]
    if et == 0x0806:
        return None if len(frame) >= 42 else "short ARP"
    if et != 0x0800:
        return "inner ethertype %#06x" % et
    ip = frame[14:]
    ihl = (ip[0] & 15) * 4
    total = struct.unpack(">H", ip[2:4])[0]
    if ip[0] >> 4 != 4 or csum(ip[:ihl]) != 0 or total > len(ip):
        return "inner IPv4 header damaged"
    proto, src, dst = ip[9], ip[12:16], ip[16:20]
    l4 = ip[ihl:total]
    pseudo = src + dst + struct.pack(">BBH", 0, proto, len(l4))
    if proto == 6 and csum(pseudo + l4) != 0:
        return "inner TCP checksum"
    if proto == 17 and l4[6:8] != b"\x00\x00" and csum(pseudo + l4) != 0:
        return "inner UDP checksum"
    if proto == 1 and csum(l4) != 0:
        return "inner ICMP checksum"
    return None


def cmd_decrypt(a):
    keys = parse_keys(a.key)
    n_esp, kinds, nonces, epochs, errors = 0, {}, set(), {}, []
    for path in a.pcap:
        for i, f in enumerate(read_pcap(path)):
            where = "%s #%d" % (path, i + 1)
            if len(f) < 34 or f[12:14] != b"\x08\x00":
                continue
            ip = f[14:]
            ihl = (ip[0] & 15) * 4
            if ip[9] != 50:
                continue
            n_esp += 1
            if csum(ip[:ihl]) != 0:
                errors.append(where + ": outer IPv4 checksum")
                continue
            total = struct.unpack(">H", ip[2:4])[0]
            src, dst = socket.inet_ntoa(ip[12:16]), socket.inet_ntoa(ip[16:20])
            esp = ip[ihl:total]
            spi, seq = struct.unpack(">II", esp[:8])
            tags = [t for t in keys if docker_spi(src, dst, t) == spi]
            if not tags:
                errors.append("%s: SPI %#x is Docker's for no key tag %s->%s" % (where, spi, src, dst))
                continue
            iv, ct, icv = esp[8:16], esp[16:-ICV], esp[-ICV:]
            if (spi, iv) in nonces:
                errors.append("%s: nonce repeated (SPI %#x IV %s)" % (where, spi, iv.hex()))
            nonces.add((spi, iv))
            epochs.setdefault(spi, set()).add(iv[:4])
            try:
                pt = gcm_open(keys[tags[0]], spi, esp[4:8], iv, ct, icv)
            except InvalidTag:
                errors.append("%s: ICV does not verify with Docker's parameters" % where)
                continue
            pad, nh = pt[-2], pt[-1]
            if nh != 17 or pt[-2 - pad : -2] != bytes(range(1, pad + 1)):
                errors.append("%s: ESP trailer (next header %d, pad %d)" % (where, nh, pad))
                continue
            udp = pt[: -2 - pad]
            sport, dport, ulen = struct.unpack(">HHH", udp[:6])
            if dport != 4789 or ulen != len(udp):
                errors.append("%s: not the VXLAN datagram (port %d, length %d of %d)" % (where, dport, ulen, len(udp)))
                continue
            vx = udp[8:16]
            if vx[0] != 0x08 or struct.unpack(">I", vx[4:8])[0] >> 8 != a.vni:
                errors.append("%s: VXLAN header %s" % (where, vx.hex()))
                continue
            inner = udp[16:]
            bad = check_inner(inner)
            if bad:
                errors.append("%s: %s" % (where, bad))
                continue
            kind = {0x0806: "arp", 0x0800: {1: "icmp", 6: "tcp", 17: "udp"}.get(inner[23], "ip")}.get(
                struct.unpack(">H", inner[12:14])[0], "other")
            kinds[kind] = kinds.get(kind, 0) + 1
    ok = sum(kinds.values())
    print(json.dumps({
        "esp": n_esp, "decrypted": ok, "inner": kinds, "spis": len(epochs),
        "epochs_per_spi": sorted(len(v) for v in epochs.values()),
        "errors": errors[:10],
    }))
    if errors or n_esp == 0:
        sys.exit(1)


def esp_packet(sa, inner, vni):
    """Docker's datagram: UDP(4789, checksum 0 as Docker's vxlan device sends) | VXLAN |
    frame, in ESP under `sa` with the kernel's IV construction."""
    udp_len = 8 + 8 + len(inner)
    udp = struct.pack(">HHHH", 40000 + sa["seq"] % 20000, 4789, udp_len, 0)
    vx = struct.pack(">II", 0x08000000, vni << 8)
    payload = udp + vx + inner
    pad = (4 - (len(payload) + 2) % 4) % 4
    pt = payload + bytes(range(1, pad + 1)) + bytes([pad, 17])
    sa["seq"] += 1
    seq = sa["seq"]
    iv = bytes(x ^ y for x, y in zip(struct.pack(">Q", seq), sa["iv_salt"]))
    ct, icv = gcm_seal(sa["key"], sa["spi"], seq, iv, pt)
    return struct.pack(">II", sa["spi"], seq) + iv + ct + icv


def udp_frame(a, size, marker):
    """An inner Ethernet/IPv4/UDP frame of `size` bytes."""
    payload = (marker + b"|" + os.urandom(size)).ljust(size - 42, b".")[: size - 42]
    src, dst = socket.inet_aton(a.src_ip), socket.inet_aton(a.dst_ip)
    l4 = struct.pack(">HHHH", 7001, 7000, 8 + len(payload), 0) + payload
    c = csum(src + dst + struct.pack(">BBH", 0, 17, len(l4)) + l4) or 0xFFFF
    l4 = l4[:6] + struct.pack(">H", c) + l4[8:]
    ip = struct.pack(">BBHHHBBH4s4s", 0x45, 0, 20 + len(l4), 1, 0, 64, 17, 0, src, dst)
    ip = ip[:10] + struct.pack(">H", csum(ip)) + ip[12:]
    mac = lambda m: bytes.fromhex(m.replace(":", ""))
    return mac(a.dst_mac) + mac(a.src_mac) + b"\x08\x00" + ip + l4


def arp_request(a):
    mac = bytes.fromhex(a.src_mac.replace(":", ""))
    arp = struct.pack(">HHBBH", 1, 0x0800, 6, 4, 1) + mac + socket.inet_aton(a.src_ip) + b"\x00" * 6 + socket.inet_aton(a.dst_ip)
    return b"\xff" * 6 + mac + b"\x08\x06" + arp


def cmd_send(a):
    keys = parse_keys(a.key)
    src = a.src
    sas = {}
    for tag, key in keys.items():
        salt = bytearray(os.urandom(8))
        if a.rebuilds:
            salt[0] |= 0x80  # room for the lower upper words of the rebuilds
        sas[tag] = {"key": key, "spi": docker_spi(src, a.to, tag), "seq": 0, "iv_salt": bytes(salt)}
    s = socket.socket(socket.AF_INET, socket.SOCK_RAW, 50)
    expected, sent = [], []

    def send(esp):
        s.sendto(esp, (a.to, 0))
        sent.append(esp)
        time.sleep(0.003)

    for tag in sorted(sas):
        for size in (60, 128, 512, 1000, 1400):
            inner = udp_frame(a, size, b"tag%d-size%d" % (tag, size))
            send(esp_packet(sas[tag], inner, a.vni))
            expected.append(inner)
    first = sorted(sas)[0]
    bcast = arp_request(a)
    send(esp_packet(sas[first], bcast, a.vni))
    expected.append(bcast)
    # A forged ICV (fresh sequence number, one bit of the ICV flipped).
    forged = bytearray(esp_packet(sas[first], udp_frame(a, 200, b"FORGED"), a.vni))
    forged[-1] ^= 1
    send(bytes(forged))
    # A SPI of no SA (valid otherwise under the right key and salt of another SPI).
    wrong = dict(sas[first], spi=sas[first]["spi"] ^ 0x5A5A)
    send(esp_packet(wrong, udp_frame(a, 200, b"WRONGSPI"), a.vni))
    # A replay of the first packet, byte for byte.
    send(sent[0])
    # Docker re-creating the SA (moby `checkEncryption`: `removeEncryption` then
    # `setupEncryption` when the nodes stop and start sharing an encrypted network): same
    # key and SPI, a new kernel SA object with its own random IV salt and seq from 1. Each
    # upper word is made lower than the last, the case an epoch-ordered window drops.
    uppers = []
    if a.rebuilds:
        old = sas[first]
        prev = struct.unpack(">I", old["iv_salt"][:4])[0]
        uppers.append(prev)
        rebuilt = []
        for r in range(a.rebuilds):
            upper = prev // 4 + struct.unpack(">I", os.urandom(4))[0] % (prev // 4)
            sa = dict(old, seq=0, iv_salt=struct.pack(">I", upper) + os.urandom(4))
            for n in range(3):
                inner = udp_frame(a, 300, b"rebuild%d-%d" % (r, n))
                send(esp_packet(sa, inner, a.vni))
                expected.append(inner)
            rebuilt.append(sent[-3])
            uppers.append(upper)
            prev = upper
        # A straggler of the SA object before the rebuilds, still in flight.
        inner = udp_frame(a, 300, b"straggler")
        send(esp_packet(old, inner, a.vni))
        expected.append(inner)
        # A replay of the first rebuilt SA object's first packet.
        send(rebuilt[0])
    with open(a.expect, "w") as f:
        for e in expected:
            f.write(e.hex() + "\n")
    print(json.dumps({"sent": len(sent), "expected": len(expected),
                      "spis": {t: "%#x" % v["spi"] for t, v in sas.items()},
                      "iv_upper_words": ["%#010x" % u for u in uppers]}))


def cmd_delivered(a):
    frames = read_pcap(a.pcap)
    with open(a.expected) as f:
        expected = [bytes.fromhex(l.strip()) for l in f if l.strip()]
    missing = [e[:60].hex() for e in expected if frames.count(e) != 1]
    leaked = [f[:60].hex() for f in frames if b"FORGED" in f or b"WRONGSPI" in f]
    print(json.dumps({"expected": len(expected), "captured": len(frames),
                      "delivered_once": len(expected) - len(missing),
                      "missing_or_repeated": missing[:5], "leaked": leaked[:5]}))
    if missing or leaked:
        sys.exit(1)


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)
    d = sub.add_parser("decrypt")
    d.add_argument("--key", action="append", required=True)
    d.add_argument("--vni", type=int, required=True)
    d.add_argument("pcap", nargs="+")
    s = sub.add_parser("send")
    s.add_argument("--key", action="append", required=True)
    s.add_argument("--vni", type=int, required=True)
    for f in ("src-mac", "dst-mac", "src-ip", "dst-ip", "src", "to", "expect"):
        s.add_argument("--" + f, required=True)
    s.add_argument("--rebuilds", type=int, default=0)
    v = sub.add_parser("delivered")
    v.add_argument("pcap")
    v.add_argument("expected")
    a = p.parse_args()
    {"decrypt": cmd_decrypt, "send": cmd_send, "delivered": cmd_delivered}[a.cmd](a)


if __name__ == "__main__":
    main()
