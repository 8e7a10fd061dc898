#!/usr/bin/env python3
"""A lossy, slow link between two network namespaces, in user space.

This machine's kernel has no `netem` qdisc (`tc qdisc add ... netem` answers "Specified qdisc
kind is unknown"), so the link is emulated here instead: two TUN devices, one moved into each
namespace, and this process forwarding IP packets between them with a one-way delay, random
loss and a rate limit (token bucket, with a queue that drops its tail like a router's). Both
TCP and QUIC cross the same emulated link, packet by packet.

usage (as root): lossylink.py NS_A NS_B [--delay-ms 30] [--loss 0.02] [--rate-mbit 20]
  NS_A gets 10.99.0.1, NS_B gets 10.99.0.2; runs until killed, then removes both namespaces.
"""
import argparse
import fcntl
import heapq
import os
import random
import select
import signal
import struct
import subprocess
import sys
import time

TUNSETIFF = 0x400454CA
IFF_TUN = 0x0001
IFF_NO_PI = 0x1000


def sh(*args):
    subprocess.run(args, check=True)


def tun(name):
    fd = os.open("/dev/net/tun", os.O_RDWR)
    fcntl.ioctl(fd, TUNSETIFF, struct.pack("16sH", name.encode(), IFF_TUN | IFF_NO_PI))
    os.set_blocking(fd, False)
    return fd


def main():
    p = argparse.ArgumentParser()
    p.add_argument("ns_a")
    p.add_argument("ns_b")
    p.add_argument("--delay-ms", type=float, default=30.0, help="one-way delay (RTT is twice this)")
    p.add_argument("--loss", type=float, default=0.02, help="packet loss probability, each direction")
    p.add_argument("--rate-mbit", type=float, default=20.0, help="link rate, each direction")
    p.add_argument("--queue-ms", type=float, default=100.0, help="queue before tail drop")
    p.add_argument("--seed", type=int, default=1)
    a = p.parse_args()
    random.seed(a.seed)

    for ns in (a.ns_a, a.ns_b):
        subprocess.run(["ip", "netns", "del", ns], stderr=subprocess.DEVNULL)
        sh("ip", "netns", "add", ns)
    fds = {}
    for ns, dev, ip, peer in ((a.ns_a, "llA", "10.99.0.1", "10.99.0.2"), (a.ns_b, "llB", "10.99.0.2", "10.99.0.1")):
        fds[dev] = tun(dev)
        sh("ip", "link", "set", dev, "netns", ns)
        sh("ip", "netns", "exec", ns, "ip", "link", "set", "lo", "up")
        sh("ip", "netns", "exec", ns, "ip", "addr", "add", f"{ip}/32", "dev", dev)
        sh("ip", "netns", "exec", ns, "ip", "link", "set", dev, "up", "mtu", "1500")
        sh("ip", "netns", "exec", ns, "ip", "route", "add", f"{peer}/32", "dev", dev)

    def cleanup(*_):
        for ns in (a.ns_a, a.ns_b):
            subprocess.run(["ip", "netns", "del", ns], stderr=subprocess.DEVNULL)
        sys.exit(0)

    signal.signal(signal.SIGTERM, cleanup)
    signal.signal(signal.SIGINT, cleanup)
    print(f"link up: {a.ns_a}=10.99.0.1 <-> {a.ns_b}=10.99.0.2, one-way delay {a.delay_ms} ms, "
          f"loss {a.loss:.1%}, {a.rate_mbit} Mbit/s", flush=True)

    delay = a.delay_ms / 1000.0
    rate = a.rate_mbit * 1e6 / 8.0  # bytes per second
    qmax = a.queue_ms / 1000.0
    # per direction: when the wire is free again (serialization), and packets in flight
    wire_free = {"llA": 0.0, "llB": 0.0}
    heap = []  # (deliver_at, seq, out_fd, packet)
    seq = 0
    peer = {"llA": "llB", "llB": "llA"}
    stats = {"fwd": 0, "lost": 0, "tail": 0}
    by_fd = {fd: dev for dev, fd in fds.items()}
    while True:
        now = time.monotonic()
        timeout = max(0.0, heap[0][0] - now) if heap else 1.0
        r, _, _ = select.select(list(by_fd), [], [], timeout)
        now = time.monotonic()
        for fd in r:
            dev = by_fd[fd]
            while True:
                try:
                    pkt = os.read(fd, 65536)
                except BlockingIOError:
                    break
                if random.random() < a.loss:
                    stats["lost"] += 1
                    continue
                start = max(now, wire_free[dev])
                if start - now > qmax:
                    stats["tail"] += 1  # queue full: tail drop
                    continue
                wire_free[dev] = start + len(pkt) / rate
                seq += 1
                heapq.heappush(heap, (wire_free[dev] + delay, seq, fds[peer[dev]], pkt))
        now = time.monotonic()
        while heap and heap[0][0] <= now:
            _, _, out, pkt = heapq.heappop(heap)
            try:
                os.write(out, pkt)
                stats["fwd"] += 1
            except OSError:
                pass


if __name__ == "__main__":
    main()
