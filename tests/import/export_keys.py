"""Keys as other systems stored them, made with their own libraries (not
Keyplane's): Python `hashlib` (SHA-256 in hex, base64 and base64url, and
scrypt), `bcrypt` and `argon2-cffi` (argon2id and argon2i).

usage: export_keys.py EXPORT.jsonl
Writes one import record per line to EXPORT.jsonl and prints the tokens
(a JSON object: source_id -> token) for the test to present.
"""

import base64
import hashlib
import json
import secrets
import sys

import argon2
import bcrypt


def b64(data):
    return base64.b64encode(data).decode().rstrip("=")


def scrypt_phc(token):
    salt = secrets.token_bytes(16)
    ln, r, p = 10, 8, 1
    digest = hashlib.scrypt(token.encode(), salt=salt, n=2**ln, r=r, p=p, dklen=32)
    return f"$scrypt$ln={ln},r={r},p={p}${b64(salt)}${b64(digest)}"


def sha256(token):
    return hashlib.sha256(token.encode()).digest()


FORMATS = {
    # name: (hash_format, how, whether the old system kept a clear start)
    "sha256_hex": ("sha256_hex", lambda t: sha256(t).hex(), False),
    "sha256_base64": ("sha256_base64", lambda t: base64.b64encode(sha256(t)).decode(), False),
    # Better Auth's default: base64url without padding.
    "sha256_base64url": ("sha256_base64url", lambda t: base64.urlsafe_b64encode(sha256(t)).decode().rstrip("="), False),
    "bcrypt_2b": ("bcrypt", lambda t: bcrypt.hashpw(t.encode(), bcrypt.gensalt(rounds=4)).decode(), True),
    "bcrypt_2a": ("bcrypt", lambda t: bcrypt.hashpw(t.encode(), bcrypt.gensalt(rounds=4, prefix=b"2a")).decode(), True),
    # PHP's password_hash writes $2y$; same algorithm as $2b$.
    "bcrypt_2y": ("bcrypt", lambda t: bcrypt.hashpw(t.encode(), bcrypt.gensalt(rounds=4)).decode().replace("$2b$", "$2y$", 1), True),
    "argon2id": ("argon2", lambda t: argon2.PasswordHasher(time_cost=1, memory_cost=1024).hash(t), True),
    "argon2i": ("argon2", lambda t: argon2.PasswordHasher(time_cost=1, memory_cost=1024, type=argon2.Type.I).hash(t), True),
    "scrypt": ("scrypt", scrypt_phc, True),
}

tokens = {}
with open(sys.argv[1], "w") as export:
    for name, (hash_format, how, clear_start) in FORMATS.items():
        token = f"cc_live_{secrets.token_urlsafe(24)}"
        record = {
            "source_id": f"src_{name}",
            "hash": how(token),
            "hash_format": hash_format,
            "name": f"{name} key",
            "scopes": ["orders:read"],
            "metadata": {"plan": "pro"},
        }
        if clear_start:
            record["lookup"] = token[:12]
        export.write(json.dumps(record) + "\n")
        tokens[record["source_id"]] = token
print(json.dumps(tokens))
