"""A portpool peer in Python, written from docs/protocol.md only.

Takes its port from PORTPOOL_PORT (an inherited socket), does the hello,
then speaks the JSON conversation protocol:
- a request {"op": "add", "a": x, "b": y} gets {"sum": x + y};
  {"op": "fail"} gets a failure reply;
- a message is answered with {"echo": <the message>};
- a strict message is acknowledged as delivered (this peer always listens);
- on EOF it exits 0.
"""
import json
import os
import socket
import struct
import sys

MAGIC = b"PORTPOOL"
CODEC_JSON = 1
VERSION = 1
ROLE_PEER = 0
KIND_MESSAGE = 1


def take_port():
    value = os.environ["PORTPOOL_PORT"]
    spec, _, parent = value.partition("@")
    if int(parent) != os.getppid():
        sys.exit("PORTPOOL_PORT was set for another process")
    flavor, _, fd = spec.partition(":")
    if flavor != "socket":
        sys.exit("only socket ports are supported here")
    return socket.socket(fileno=int(fd))


def read_exact(sock, n):
    buf = b""
    while len(buf) < n:
        chunk = sock.recv(n - len(buf))
        if not chunk:
            return None
        buf += chunk
    return buf


def send_frame(sock, obj):
    payload = json.dumps(obj).encode()
    sock.sendall(struct.pack("<IB", len(payload), KIND_MESSAGE) + payload)


def main():
    sock = take_port()
    sock.sendall(MAGIC + struct.pack("<HBB", VERSION, ROLE_PEER, CODEC_JSON) + bytes(4))
    hello = read_exact(sock, 16)
    if hello is None or hello[:8] != MAGIC:
        sys.exit("bad hello")
    (version,) = struct.unpack("<H", hello[8:10])
    if version != VERSION:
        sys.exit(f"version mismatch: {version}")
    if hello[11] != CODEC_JSON:
        sys.exit(f"codec mismatch: the peer announced codec {hello[11]}, we speak JSON (1)")
    while True:
        header = read_exact(sock, 5)
        if header is None:
            return 0
        length, kind = struct.unpack("<IB", header)
        payload = read_exact(sock, length)
        if payload is None or kind != KIND_MESSAGE:
            sys.exit("truncated frame or unexpected kind")
        frame = json.loads(payload)
        t = frame["type"]
        if t == "request":
            data = frame["data"]
            if data.get("op") == "add":
                send_frame(sock, {"type": "reply", "id": frame["id"], "ok": True,
                                  "data": {"sum": data["a"] + data["b"]}})
            else:
                send_frame(sock, {"type": "reply", "id": frame["id"], "ok": False,
                                  "data": f"unknown op {data.get('op')!r}"})
        elif t == "message":
            send_frame(sock, {"type": "message", "data": {"echo": frame["data"]}})
        elif t == "strict":
            send_frame(sock, {"type": "strict_ack", "id": frame["id"], "outcome": "delivered"})
            send_frame(sock, {"type": "message", "data": {"echo": frame["data"]}})


if __name__ == "__main__":
    sys.exit(main())
