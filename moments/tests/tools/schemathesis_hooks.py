"""Schemathesis hooks for moments/tests/contract.rs (loaded with SCHEMATHESIS_HOOKS=this file).

The upload routes take their bytes as `application/offset+octet-stream` (tus) and
`application/partial-upload` (the IETF resumable-upload draft), media types schemathesis has no
serializer for: the generated value goes out as raw bytes, as for `application/octet-stream`.
"""
import json

import schemathesis


@schemathesis.serializer("application/offset+octet-stream", "application/partial-upload")
def raw_bytes(ctx, value):
    if value is None:
        return {"data": b""}
    if isinstance(value, bytes):
        return {"data": value}
    if isinstance(value, str):
        return {"data": value.encode("utf-8", "surrogatepass")}
    return {"data": json.dumps(value).encode("utf-8")}
