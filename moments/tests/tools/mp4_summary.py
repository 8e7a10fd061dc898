"""Summarises fMP4 init and media segments with pymp4, an MP4 box parser that is not ours.

usage: mp4_summary.py INIT SEGMENT... -> JSON on stdout:
  {"init": {"boxes": [...], "tracks": [{"id", "handler", "timescale", "width", "height"}]},
   "segments": [{"boxes": [...], "sequence": N,
                 "tracks": [{"id", "decode_time", "samples", "duration", "first_sync"}]}]}
Fails (exit 1, message on stderr) when a file does not parse or lacks a box an fMP4 needs.
"""
import json
import sys

from pymp4.parser import Box

NON_SYNC = 0x00010000


CONTAINERS = {b"moov", b"trak", b"mdia", b"minf", b"stbl", b"mvex", b"moof", b"traf", b"edts", b"dinf"}


class Node:
    """A box: its type, its children (containers) or pymp4's parse of it (leaves)."""

    def __init__(self, typ, children=None, parsed=None):
        self.type, self.children, self.parsed = typ, children or [], parsed


def parse_all(data, where="file"):
    """Splits `data` into boxes by their sizes; containers recursively, leaves through pymp4
    (pymp4's own container parsing stops silently at the first box it cannot read, so the
    walk is done here and pymp4 reads each box's fields)."""
    out, pos = [], 0
    while pos + 8 <= len(data):
        size = int.from_bytes(data[pos:pos + 4], "big")
        typ = data[pos + 4:pos + 8]
        hdr = 8
        if size == 1:
            size, hdr = int.from_bytes(data[pos + 8:pos + 16], "big"), 16
        if size < hdr or pos + size > len(data):
            raise SystemExit(f"{where}: bad {typ!r} box size {size} at {pos}")
        body = data[pos:pos + size]
        if typ in CONTAINERS:
            out.append(Node(typ, children=parse_all(body[hdr:], f"{where}/{typ.decode()}")))
        elif typ == b"mdat":
            out.append(Node(typ))
        else:
            try:
                out.append(Node(typ, parsed=Box.parse(body)))
            except Exception as e:  # noqa: BLE001 - report any parser failure
                raise SystemExit(f"{where}: pymp4 cannot parse {typ!r}: {e}")
        pos += size
    if pos != len(data):
        raise SystemExit(f"{where}: {len(data) - pos} trailing bytes")
    return out


def find(node, typ):
    for c in node.children:
        if c.type == typ:
            return c
    return None


def leaf(node, typ):
    c = find(node, typ)
    if c is None or c.parsed is None:
        raise SystemExit(f"no {typ!r} in {node.type!r}")
    return c.parsed


def init_summary(path):
    top = parse_all(open(path, "rb").read())
    types = [b.type.decode() for b in top]
    moov = next((b for b in top if b.type == b"moov"), None)
    if moov is None or find(moov, b"mvex") is None:
        raise SystemExit(f"{path}: no moov/mvex: {types}")
    tracks = []
    for trak in [c for c in moov.children if c.type == b"trak"]:
        tkhd = leaf(trak, b"tkhd")
        mdia = find(trak, b"mdia")
        mdhd, hdlr = leaf(mdia, b"mdhd"), leaf(mdia, b"hdlr")
        tracks.append({
            "id": tkhd.track_ID,
            "handler": hdlr.handler_type.decode(),
            "timescale": mdhd.timescale,
            "width": int(tkhd.width) >> 16,
            "height": int(tkhd.height) >> 16,
        })
    return {"boxes": types, "tracks": tracks}


def segment_summary(path):
    top = parse_all(open(path, "rb").read())
    types = [b.type.decode() for b in top]
    moof = next((b for b in top if b.type == b"moof"), None)
    if moof is None or b"mdat" not in [b.type for b in top]:
        raise SystemExit(f"{path}: no moof+mdat: {types}")
    seq = leaf(moof, b"mfhd").sequence_number
    tracks = []
    for traf in [c for c in moof.children if c.type == b"traf"]:
        tfhd, tfdt, trun = leaf(traf, b"tfhd"), leaf(traf, b"tfdt"), leaf(traf, b"trun")
        samples = trun.sample_info
        default_flags = getattr(tfhd, "default_sample_flags", None)
        first = getattr(trun, "first_sample_flags", None)
        if first is None and samples and getattr(samples[0], "sample_flags", None) is not None:
            first = samples[0].sample_flags
        if first is None:
            first = default_flags
        if isinstance(first, int):
            sync = not (first & NON_SYNC)
        elif first is not None and hasattr(first, "sample_is_non_sync_sample"):
            sync = not first.sample_is_non_sync_sample
        else:
            sync = None
        duration = 0
        for s in samples:
            d = getattr(s, "sample_duration", None)
            duration += d if d is not None else (getattr(tfhd, "default_sample_duration", 0) or 0)
        tracks.append({
            "id": tfhd.track_ID,
            "decode_time": tfdt.baseMediaDecodeTime,
            "samples": len(samples),
            "duration": duration,
            "first_sync": sync,
        })
    return {"boxes": types, "sequence": seq, "tracks": tracks}


def main():
    if len(sys.argv) < 2:
        raise SystemExit(__doc__)
    out = {"init": init_summary(sys.argv[1]), "segments": [segment_summary(p) for p in sys.argv[2:]]}
    json.dump(out, sys.stdout)


if __name__ == "__main__":
    main()
