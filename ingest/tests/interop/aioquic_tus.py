"""A tus upload over HTTP/3 with aioquic, an HTTP/3 stack independent of ours: POST, PATCH
(with Upload-Checksum) and HEAD on one QUIC connection. The server certificate is pinned by
its SHA-256 (checked against the certificate aioquic received), so nothing is trusted blindly.
Prints {"location": ..., "offset": n, "moment": id} on success.

usage: aioquic_tus.py HOST PORT SHA256_HEX TOKEN FILE
"""
import asyncio
import base64
import hashlib
import json
import ssl
import sys

from aioquic.asyncio.client import connect
from aioquic.asyncio.protocol import QuicConnectionProtocol
from aioquic.h3.connection import H3_ALPN, H3Connection
from aioquic.h3.events import DataReceived, HeadersReceived
from aioquic.quic.configuration import QuicConfiguration
from aioquic.quic.events import QuicEvent


class H3Client(QuicConnectionProtocol):
    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.h3 = H3Connection(self._quic)
        self.waiters = {}
        self.responses = {}

    def quic_event_received(self, event: QuicEvent):
        for ev in self.h3.handle_event(event):
            if isinstance(ev, (HeadersReceived, DataReceived)):
                r = self.responses.setdefault(ev.stream_id, {"headers": {}, "body": b""})
                if isinstance(ev, HeadersReceived):
                    r["headers"].update({k.decode(): v.decode() for k, v in ev.headers})
                else:
                    r["body"] += ev.data
                if ev.stream_ended and ev.stream_id in self.waiters:
                    self.waiters.pop(ev.stream_id).set_result(r)

    async def request(self, method, authority, path, headers, body=b""):
        sid = self._quic.get_next_available_stream_id()
        hdrs = [(b":method", method.encode()), (b":scheme", b"https"),
                (b":authority", authority.encode()), (b":path", path.encode())]
        hdrs += [(k.encode(), v.encode()) for k, v in headers.items()]
        self.h3.send_headers(stream_id=sid, headers=hdrs, end_stream=not body)
        if body:
            self.h3.send_data(stream_id=sid, data=body, end_stream=True)
        fut = asyncio.get_event_loop().create_future()
        self.waiters[sid] = fut
        self.transmit()
        return await asyncio.wait_for(fut, 20)


async def main():
    host, port, pin, token, path = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4], sys.argv[5]
    data = open(path, "rb").read()
    cfg = QuicConfiguration(is_client=True, alpn_protocols=H3_ALPN)
    cfg.verify_mode = ssl.CERT_NONE  # replaced by the pin check below
    cfg.server_name = "localhost"
    async with connect(host, port, configuration=cfg, create_protocol=H3Client) as client:
        cert = client._quic.tls._peer_certificate
        der = cert.public_bytes(__import__("cryptography.hazmat.primitives.serialization",
                                           fromlist=["Encoding"]).Encoding.DER)
        if hashlib.sha256(der).hexdigest() != pin:
            raise SystemExit("server certificate does not match the pinned fingerprint")
        auth = {"authorization": f"Bearer {token}", "tus-resumable": "1.0.0"}
        authority = f"localhost:{port}"
        r = await client.request("POST", authority, "/files", {**auth, "upload-length": str(len(data)),
            "upload-metadata": "filetype " + base64.b64encode(b"video/mp4").decode()})
        assert r["headers"][":status"] == "201", r
        loc = r["headers"]["location"]
        fpath = "/" + loc.split("/", 3)[3]
        half = len(data) // 2
        for start, end in ((0, half), (half, len(data))):
            chunk = data[start:end]
            digest = base64.b64encode(hashlib.sha256(chunk).digest()).decode()
            r = await client.request("PATCH", authority, fpath, {**auth, "upload-offset": str(start),
                "content-type": "application/offset+octet-stream",
                "upload-checksum": "sha256 " + digest}, chunk)
            assert r["headers"][":status"] == "204", r
        r = await client.request("HEAD", authority, fpath, auth)
        assert r["headers"][":status"] == "200", r
        print(json.dumps({"location": loc, "offset": int(r["headers"]["upload-offset"]),
                          "moment": r["headers"].get("moment-id")}))


asyncio.run(main())
