"""benches/idle-heap.sh's two halves. `connect PORT N SECONDS`: opens N MQTT 3.1.1 connections
(clean session, keep alive 60), waits for every CONNACK and holds them for SECONDS.
`report DHAT_JSON N`: the heap live at the broker's peak per connection, by allocation site
(the first frames in dataloom, tokio or tracing), largest first."""
import json
import re
import socket
import sys
import time


def connect(port, n, hold):
    socks = []
    for i in range(n):
        cid = f"idle{i}".encode()
        body = b"\x00\x04MQTT\x04\x02\x00\x3c" + len(cid).to_bytes(2, "big") + cid
        s = socket.create_connection(("127.0.0.1", port))
        s.sendall(bytes([0x10, len(body)]) + body)
        socks.append(s)
    for s in socks:
        if s.recv(4)[:1] != b"\x20":
            sys.exit("no CONNACK")
    print(f"{n} connections open", flush=True)
    time.sleep(hold)


def report(path, n):
    d = json.load(open(path))
    ft = d["ftbl"]
    sites = []
    for pp in d["pps"]:
        gb = pp.get("gb", 0)
        if gb < n * 16:
            continue
        frames = [re.sub(r"0x[0-9A-F]+: ", "", ft[i]) for i in pp["fs"]]
        ours = [f for f in frames if re.search(r"dataloom::|tokio::|tracing", f)]
        sites.append((gb, (ours or frames)[:3]))
    sites.sort(key=lambda s: -s[0])
    print(f"{'bytes/conn':>10}  allocated at (first frames)")
    for gb, frames in sites[:15]:
        print(f"{gb / n:>10.0f}  " + " <- ".join(f[:90] for f in frames))
    print(f"{sum(s[0] for s in sites) / n:>10.0f}  total of the sites above")


if __name__ == "__main__":
    if sys.argv[1] == "connect":
        connect(int(sys.argv[2]), int(sys.argv[3]), float(sys.argv[4]))
    else:
        report(sys.argv[2], int(sys.argv[3]))
