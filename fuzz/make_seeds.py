#!/usr/bin/env python3
"""Write the hand-made seed inputs of fuzz/corpus/{frame,payload,jwt} (the upgrade seeds are
captured from real clients with capture_request.py). Input formats: see src/lib.rs."""
import base64
import hashlib
import hmac
import json
import os
import struct

HERE = os.path.dirname(os.path.abspath(__file__))
MASK = bytes([0x37, 0xFA, 0x21, 0x3D])


def frame(first, payload, form=None):
    """A masked client frame; `form` forces the 16- or 64-bit length encoding."""
    n = len(payload)
    out = bytes([first])
    if form == 64 or (form is None and n > 0xFFFF):
        out += bytes([0x80 | 127]) + struct.pack(">Q", n)
    elif form == 16 or (form is None and n > 125):
        out += bytes([0x80 | 126]) + struct.pack(">H", n)
    else:
        out += bytes([0x80 | n])
    return out + MASK + bytes(b ^ MASK[i % 4] for i, b in enumerate(payload))


def close(code, reason=b""):
    return frame(0x88, struct.pack(">H", code) + reason)


def write(target, name, data):
    path = os.path.join(HERE, "corpus", target, "seed-" + name)
    with open(path, "wb") as f:
        f.write(data)


# frame: [cut_a, cut_b, limit selector (2 = 4096 bytes, 3 = 65536), stream...]
FRAMES = {
    "python-cli-ping": frame(0x81, b'{"type":"ping"}'),
    "text-then-close": frame(0x81, b"Hello") + close(1000, b"bye"),
    "fragmented-text-with-ping": frame(0x01, b"frag") + frame(0x89, b"p") + frame(0x00, "m\u00e9".encode())
    + frame(0x80, b"nt") + frame(0x8A, b""),
    "binary-16-bit-length": frame(0x82, bytes(range(256)) * 2),
    "text-64-bit-length": frame(0x81, b"x" * 10, form=64),
    "invalid-utf8-text": frame(0x81, b"ok\xf5rest"),
    "close-invalid-code": close(1005),
    "close-1013-echo": close(1013),
    "close-no-code": frame(0x88, b""),
    "unmasked": bytes([0x81, 0x02]) + b"hi",
    "over-limit-header": bytes([0x82, 0xFF]) + struct.pack(">Q", 1 << 40) + MASK,
}
for name, stream in FRAMES.items():
    write("frame", name, bytes([0x80, 0x40, 0x02]) + stream)

# payload: the payload itself
PAYLOADS = {
    "chat-message": b'{"type":"message","from":"bob","text":"hi","timestamp":1700000000000}',
    "no-type-no-timestamp": b'{"conversationId":"c1","preview":"see you"}',
    "empty-object": b"{}",
    "whitespace-and-nesting": b' \n{ "data" : { "type" : "inner", "list": [1, 2.5e3, null, true] } } \n',
    "big-numbers": b'{"n":123456789012345678901234567890,"f":1e999}',
    "escaped-key": b'{"typ\\u0065":"x","timestamp":1}',
    "array": b'[{"type":"x"}]',
    "not-json": b"{'type': 'x'}",
}
for name, payload in PAYLOADS.items():
    write("payload", name, payload)


def b64(data):
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


SECRET = b"0123456789abcdef0123456789abcdef"
header = json.dumps({"alg": "HS256", "typ": "JWT"}, separators=(",", ":")).encode()
claims = json.dumps({"sub": "alice", "iat": 1700000000, "exp": 4102444800}, separators=(",", ":")).encode()
message = b64(header) + "." + b64(claims)
token = message + "." + b64(hmac.new(SECRET, message.encode(), hashlib.sha256).digest())

# jwt: [mode, ...]: 0 raw token; 1 header 0xFF claims (signed HS256 by the check); 2 three parts
write("jwt", "valid-hs256", b"\x00" + token.encode())
write("jwt", "signed-claims", b"\x01" + header + b"\xff" + claims)
write("jwt", "signed-user-id-int", b"\x01" + header + b"\xff" + b'{"user_id":42,"exp":4102444800}')
write("jwt", "alg-none", b"\x02" + b'{"alg":"none"}' + b"\xff" + claims + b"\xff")
write("jwt", "alg-hs512", b"\x01" + b'{"alg":"HS512","typ":"JWT"}' + b"\xff" + claims)
write("jwt", "garbage", b"\x00a.b.c")
