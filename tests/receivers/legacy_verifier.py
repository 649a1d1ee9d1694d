"""A webhook receiver written the way teams wrote them before Standard
Webhooks: an HMAC-SHA256 of the body (or of "timestamp.body"), hex or
base64, in a header of their own. Answers 204 when the signature verifies
and 401 when it does not, and prints `valid` or `invalid` per request.

usage: WEBHOOK_SECRET=... legacy_verifier.py HEADER hex|base64 body|timestamp [TIMESTAMP_HEADER [PREFIX]]
Prints `listening PORT` once it accepts requests on 127.0.0.1.
"""

import base64
import hashlib
import hmac
import os
import sys
from http.server import BaseHTTPRequestHandler, HTTPServer

SECRET = os.environ["WEBHOOK_SECRET"].encode()
HEADER, ENCODING, SIGNED = sys.argv[1:4]
TIMESTAMP_HEADER = sys.argv[4] if len(sys.argv) > 4 else ""
PREFIX = sys.argv[5] if len(sys.argv) > 5 else ""


class Handler(BaseHTTPRequestHandler):
    def do_POST(self):
        body = self.rfile.read(int(self.headers["Content-Length"]))
        message = body
        if SIGNED == "timestamp":
            message = self.headers.get(TIMESTAMP_HEADER, "").encode() + b"." + body
        digest = hmac.new(SECRET, message, hashlib.sha256).digest()
        encoded = digest.hex() if ENCODING == "hex" else base64.b64encode(digest).decode()
        valid = hmac.compare_digest(PREFIX + encoded, self.headers.get(HEADER, ""))
        print("valid" if valid else "invalid", flush=True)
        self.send_response(204 if valid else 401)
        self.end_headers()

    def log_message(self, *args):
        pass


server = HTTPServer(("127.0.0.1", 0), Handler)
print(f"listening {server.server_address[1]}", flush=True)
server.serve_forever()
