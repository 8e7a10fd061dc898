"""Uploads a file with tuspy (the tus project's Python client), resuming after failures the
way tuspy documents: a new Uploader for the stored URL asks the server for the offset (HEAD)
and continues. Prints {"url": ..., "resumes": n} on success.

usage: tuspy_upload.py ENDPOINT TOKEN FILE CHUNK_SIZE
"""
import json
import os
import sys

from tusclient import client

endpoint, token, path, chunk = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
c = client.TusClient(endpoint, headers={"Authorization": f"Bearer {token}"})
meta = {"filename": os.path.basename(path), "filetype": "video/mp4"}
url = None
resumes = 0
while True:
    try:
        if url is None:
            up = c.uploader(path, chunk_size=chunk, metadata=meta)
        else:
            up = c.uploader(path, url=url, chunk_size=chunk, metadata=meta)
        up.upload()
        url = up.url
        break
    except Exception as e:  # a cut connection surfaces as a communication error
        url = up.url or url
        resumes += 1
        print(f"resuming after {type(e).__name__}: {e}", file=sys.stderr)
        if resumes > 5:
            raise
print(json.dumps({"url": url, "resumes": resumes}))
