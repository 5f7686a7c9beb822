#!/usr/bin/env python3
"""Writes the fuzz targets' starting inputs (fuzz/seeds/<target>/): real-shaped requests and
answers, so the fuzzers begin from inputs that get past the first checks. Run from fuzz/."""
import json
import struct
from pathlib import Path


class Writer:
    """D-Bus marshalling, little-endian, enough for a{sv} of booleans and string arrays."""

    def __init__(self):
        self.b = bytearray()

    def pad(self, n):
        while len(self.b) % n:
            self.b.append(0)

    def u32(self, v):
        self.pad(4)
        self.b += struct.pack("<I", v)

    def string(self, s):
        data = s.encode()
        self.u32(len(data))
        self.b += data + b"\0"

    def signature(self, s):
        self.b += bytes([len(s)]) + s.encode() + b"\0"

    def value(self, v):
        if isinstance(v, bool):
            self.signature("b")
            self.u32(int(v))
        else:
            self.signature("as")
            self.u32(0)  # length, patched below
            at = len(self.b)
            for s in v:
                self.string(s)
            struct.pack_into("<I", self.b, at - 4, len(self.b) - at)

    def options(self, options):
        self.u32(0)  # the array's length in bytes, after the padding to its first entry
        length_at = len(self.b) - 4
        self.pad(8)
        start = len(self.b)
        for key, v in options.items():
            self.pad(8)
            self.string(key)
            self.value(v)
        struct.pack_into("<I", self.b, length_at, len(self.b) - start)
        return bytes(self.b)


def write(target, name, data):
    Path("seeds", target, name).write_bytes(data)


for i, options in enumerate([
    {},
    {"gpu": False},
    {"session_mode": True, "dbus_mux": True},
    {"custom_mounts": ["~/src", "/opt/data"], "mount_home": False},
    {"nvidia_drivers": True, "host_rootfs": False},
]):
    write("create_options", f"dbus-{i}", b"\0" + Writer().options(options))
    write("create_options", f"json-{i}", b"\1" + json.dumps(options).encode())

for i, text in enumerate(["images:debian/12", "local:kapsule-test", "archlinux", "ubuntu:24.04", "a" * 64 * 4]):
    write("image_ref", f"seed-{i}", text.encode())

instance = {"name": "dev", "status": "Running", "config": {"user.kapsule.owner": "1000"}, "devices": {}}
for i, answer in enumerate([
    {"type": "sync", "status_code": 200, "metadata": [instance]},
    {"type": "async", "status_code": 100, "metadata": {"id": "x", "status_code": 103, "metadata": {"fingerprint": "ab"}}},
    {"type": "error", "error_code": 404, "error": "Instance not found"},
    {"type": "operation", "metadata": {"id": "y", "status_code": 200}},
    {"pid": 4242, "status_code": 103},
]):
    write("incus_answers", f"seed-{i}", b"\0" + json.dumps(answer).encode())

write("nvidia_hook", "empty", b"")
