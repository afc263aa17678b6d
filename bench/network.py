#!/usr/bin/env python3
"""Network benchmark end to end from the guest (issue 4), in one real session:

1. Download of 200 MiB from an HTTP server on the host's loopback (mapped in with
   network.hosts), through the guest's redirect, vsock and the host proxy: MiB/s, best of 3.
   The same download on the host, directly, for comparison.
2. Upload of 100 MiB to the same kind of server: MiB/s, best of 3.
3. Connection set-up as the guest sees it, for a 5-byte file, median of 30: curl's time_connect
   (the agent's redirect accepts at once, so this is guest-local) and time to first byte (a new
   vsock connection, the host's decision, a new host connection and the HTTP exchange).

Under TCG every guest instruction is emulated, so these numbers measure the emulator more than
the proxy (compare with proxy_bench for the proxy alone).

Usage: bench/network.py   (after ./setup.sh; uses target/release/faize)
"""
import http.server, os, socketserver, statistics, subprocess, tempfile, threading, time

repo_dir = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
faize = os.path.join(repo_dir, "target/release/faize")
art = os.environ.get("FAIZE_ARTIFACTS_DIR") or os.path.join(
    os.environ.get("FAIZE_HOME") or os.path.expanduser("~/.faize"), "artifacts")
MiB = 1 << 20


class Handler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):
        pass

    def do_POST(self):
        left = int(self.headers["Content-Length"])
        while left > 0:
            chunk = self.rfile.read(min(left, MiB))
            if not chunk:
                break
            left -= len(chunk)
        self.send_response(200)
        self.send_header("Content-Length", "2")
        self.end_headers()
        self.wfile.write(b"ok")


def main():
    with tempfile.TemporaryDirectory() as home, tempfile.TemporaryDirectory() as www, \
            tempfile.TemporaryDirectory() as project:
        with open(os.path.join(www, "big.bin"), "wb") as f:
            f.write(os.urandom(200 * MiB))
        with open(os.path.join(www, "small.txt"), "w") as f:
            f.write("hello")
        handler = lambda *a, **k: Handler(*a, directory=www, **k)
        server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
        port = server.server_address[1]
        threading.Thread(target=server.serve_forever, daemon=True).start()

        t = time.monotonic()
        subprocess.run(["curl", "-sS", "-o", "/dev/null", f"http://127.0.0.1:{port}/big.bin"], check=True)
        host_mibs = 200 / (time.monotonic() - t)

        with open(os.path.join(home, "config.yaml"), "w") as f:
            f.write("network:\n  hosts:\n    bench.test: 127.0.0.1\n")
        url = f"http://bench.test:{port}"
        script = f"""
            set -e
            for i in 1 2 3; do curl -sS -o /dev/null -w 'down %{{speed_download}}\\n' {url}/big.bin; done
            head -c {100 * MiB} /dev/zero > /tmp/up.bin
            for i in 1 2 3; do curl -sS -o /dev/null -w 'up %{{speed_upload}}\\n' --data-binary @/tmp/up.bin {url}/up; done
            for i in $(seq 1 30); do curl -sS -o /dev/null -w 'setup %{{time_connect}} %{{time_starttransfer}}\\n' {url}/small.txt; done
        """
        env = dict(os.environ, FAIZE_HOME=home, FAIZE_ARTIFACTS_DIR=art)
        p = subprocess.run([faize, "run", "-p", project, "-n", f"bench.test:{port}", "--", "sh", "-c", script],
                           env=env, capture_output=True, stdin=subprocess.DEVNULL, text=True)
        server.shutdown()
        if p.returncode != 0:
            raise SystemExit(f"faize failed ({p.returncode}):\n{p.stdout}\n{p.stderr}")
        down = [float(l.split()[1]) / MiB for l in p.stdout.splitlines() if l.startswith("down ")]
        up = [float(l.split()[1]) / MiB for l in p.stdout.splitlines() if l.startswith("up ")]
        setup = [l.split()[1:] for l in p.stdout.splitlines() if l.startswith("setup ")]
        connect = statistics.median(float(c) * 1000 for c, _ in setup)
        first_byte = statistics.median(float(b) * 1000 for _, b in setup)
        print(f"download 200 MiB in the guest: best {max(down):.0f} MiB/s (runs: {', '.join(f'{d:.0f}' for d in down)}); "
              f"on the host directly: {host_mibs:.0f} MiB/s")
        print(f"upload 100 MiB from the guest: best {max(up):.0f} MiB/s (runs: {', '.join(f'{u:.0f}' for u in up)})")
        print(f"connection from the guest, median of {len(setup)}: connected after {connect:.1f} ms, "
              f"first byte after {first_byte:.1f} ms")


if __name__ == "__main__":
    main()
