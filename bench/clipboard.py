#!/usr/bin/env python3
"""Clipboard benchmark (issue 6), with a real session (TCG) attached through a pseudo-terminal:

A program in the guest puts its terminal in raw mode and answers every byte it reads with
`<xx>` (the byte in hex). We time, from the host, the write of one key to the pty until its
answer is read back:

1. ordinary keystrokes ('a'), 20 times;
2. Ctrl+V with a 5 MB PNG on the host clipboard (Xvfb + xclip), 10 times: faize sends the
   keystroke at once and the clipboard right behind it; also timed, the same Ctrl+V until a
   guest `xclip -t image/png -o` (which waits for the new content) has read the whole image;
3. Ctrl+V with a short text on the clipboard, 10 times;
4. for reference, the host alone reading the 5 MB PNG with `xclip -o` (what any paste costs).

The latency Ctrl+V adds is (2 or 3) minus (1). At the end the guest reads its clipboard with
`xclip -t image/png -o` after each Ctrl+V and the checksum must match the host's file.

Usage: bench/clipboard.py   (after ./setup.sh; uses target/release/faize)
"""
import hashlib, os, pty, select, statistics, struct, subprocess, sys, tempfile, time, zlib

repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
faize = os.path.join(repo, "target/release/faize")
art = os.environ.get("FAIZE_ARTIFACTS_DIR") or os.path.join(
    os.environ.get("FAIZE_HOME") or os.path.expanduser("~/.faize"), "artifacts")

GUEST = r"""
import hashlib, os, subprocess, sys, tty
tty.setraw(0)
os.write(1, b"READY\r\n")
while True:
    b = os.read(0, 1)
    if not b or b == b"q":
        break
    if b == b"c":
        png = subprocess.run(["xclip", "-selection", "clipboard", "-t", "image/png", "-o"], capture_output=True).stdout
        os.write(1, ("<sum %d %s>" % (len(png), hashlib.sha256(png).hexdigest())).encode())
    os.write(1, b"<%02x>" % b[0])
"""


def png(width, height, seed=1):
    """A real PNG of random pixels (so it does not compress): about width*height*3 bytes."""
    rows = bytearray()
    rnd = hashlib.sha256(str(seed).encode()).digest()
    stream = bytearray()
    while len(stream) < width * height * 3:
        rnd = hashlib.sha256(rnd).digest()
        stream += rnd
    for y in range(height):
        rows += b"\0" + stream[y * width * 3:(y + 1) * width * 3]

    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(bytes(rows), 1)) + chunk(b"IEND", b""))


class Display:
    def __init__(self):
        n = 150 + os.getpid() % 100
        self.name = f":{n}"
        self.xvfb = subprocess.Popen(["Xvfb", self.name, "-nolisten", "tcp"], stdout=subprocess.DEVNULL,
                                     stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 10
        while not os.path.exists(f"/tmp/.X11-unix/X{n}"):
            if time.monotonic() > deadline:
                raise SystemExit("Xvfb did not start (./setup.sh installs it)")
            time.sleep(0.05)

    def set(self, mime, data):
        p = subprocess.run(["xclip", "-selection", "clipboard", "-t", mime, "-i"], input=data,
                           env=dict(os.environ, DISPLAY=self.name), stdout=subprocess.DEVNULL)
        assert p.returncode == 0

    def close(self):
        self.xvfb.kill()
        self.xvfb.wait()


class Session:
    def __init__(self, env, project):
        self.pid, self.fd = pty.fork()
        if self.pid == 0:
            os.execve(faize, [faize, "start", "--cpus", "1", "-p", project, "--", "python3", "-c", GUEST], env)
        self.seen = b""
        self.wait_for(b"READY", 180)

    def wait_for(self, needle, limit, start=0):
        deadline = time.monotonic() + limit
        while needle not in self.seen[start:]:
            left = deadline - time.monotonic()
            r, _, _ = select.select([self.fd], [], [], max(left, 0))
            if not r:
                raise SystemExit(f"no {needle!r} within {limit} s; screen: {self.seen[-2000:]!r}")
            self.seen += os.read(self.fd, 65536)
        return self.seen.index(needle, start)

    def key(self, byte):
        """Seconds from writing one key to reading the guest's answer to it."""
        start = len(self.seen)
        t = time.monotonic()
        os.write(self.fd, bytes([byte]))
        self.wait_for(b"<%02x>" % byte, 60, start)
        return time.monotonic() - t

    def paste_and_read(self):
        """Ctrl+V then `c` (the guest reads the image with xclip): seconds until the program
        sees the Ctrl+V, and until the guest has read the whole new image."""
        start = len(self.seen)
        t = time.monotonic()
        os.write(self.fd, b"\x16c")
        self.wait_for(b"<16>", 60, start)
        key = time.monotonic() - t
        self.wait_for(b"<63>", 60, start)
        return key, time.monotonic() - t

    def close(self):
        os.write(self.fd, b"q")
        try:
            while True:
                r, _, _ = select.select([self.fd], [], [], 60)
                if not r or not os.read(self.fd, 65536):
                    break
        except OSError:
            pass
        _, status = os.waitpid(self.pid, 0)
        os.close(self.fd)
        return status


def ms(xs):
    return f"median {statistics.median(xs) * 1000:.0f} ms (min {min(xs) * 1000:.0f}, max {max(xs) * 1000:.0f})"


def main():
    image = png(1300, 1300)
    digest = hashlib.sha256(image).hexdigest()
    display = Display()
    with tempfile.TemporaryDirectory() as home, tempfile.TemporaryDirectory() as project:
        env = dict(os.environ, FAIZE_HOME=home, FAIZE_ARTIFACTS_DIR=art, DISPLAY=display.name, TERM="xterm")
        try:
            display.set("image/png", image)
            host_reads = []
            for _ in range(5):
                t = time.monotonic()
                out = subprocess.run(["xclip", "-selection", "clipboard", "-t", "image/png", "-o"],
                                     env=env, capture_output=True).stdout
                host_reads.append(time.monotonic() - t)
                assert out == image
            s = Session(env, project)
            plain = [s.key(ord("a")) for _ in range(20)]
            big, big_read = [], []
            for _ in range(10):
                key, read = s.paste_and_read()
                big.append(key)
                big_read.append(read)
                at = s.seen.rindex(b"<sum ")
                size, got = s.seen[at + 5:s.seen.index(b">", at)].decode().split()
                assert (int(size), got) == (len(image), digest), f"guest has {size} bytes {got}"
            settled = [s.key(ord("c")) for _ in range(5)]
            display.set("UTF8_STRING", b"a short line of text")
            small = [s.key(0x16) for _ in range(10)]
            status = s.close()
            print(f"PNG on the clipboard: {len(image) / 1e6:.2f} MB; the guest's copy matches (sha256 {digest[:16]})")
            print(f"host alone, xclip -o of the PNG: {ms(host_reads)}")
            print(f"ordinary keystroke, round trip through the VM: {ms(plain)}")
            print(f"Ctrl+V with the 5 MB PNG: {ms(big)}; added to a keystroke: "
                  f"{(statistics.median(big) - statistics.median(plain)) * 1000:.0f} ms")
            print(f"Ctrl+V until a guest `xclip -t image/png -o` has the whole new image: {ms(big_read)}")
            print(f"the same guest read once the image is there (no transfer): {ms(settled)}")
            print(f"Ctrl+V with short text: {ms(small)}; added to a keystroke: "
                  f"{(statistics.median(small) - statistics.median(plain)) * 1000:.0f} ms")
            if status != 0:
                print(f"note: faize start ended with wait status {status}", file=sys.stderr)
        finally:
            display.close()
            subprocess.run([faize, "prune", "--all", "--yes"], env=env, capture_output=True)


if __name__ == "__main__":
    main()
