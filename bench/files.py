#!/usr/bin/env python3
"""Files benchmarks (issue 3), through real sessions:

1. Change summary on a 100k-file tree (a generated node_modules): the baseline walk (taken while
   the VM boots) and the diff walk after it stops, as reported by FAIZE_TIMINGS=1. Median of 3.
2. Guest file access over virtio-fs against the host: `git status` in a 2,000-file repository
   and reading a 100 MB file, each twice in one VM (cold, then cached), and the same on the host.

Usage: bench/files.py   (after ./setup.sh; uses target/release/faize)
"""
import json, os, re, statistics, subprocess, tempfile, time

repo_dir = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
faize = os.path.join(repo_dir, "target/release/faize")
art = os.environ.get("FAIZE_ARTIFACTS_DIR") or os.path.join(os.environ.get("FAIZE_HOME") or os.path.expanduser("~/.faize"), "artifacts")


def run(home, project, script):
    env = dict(os.environ, FAIZE_TIMINGS="1", FAIZE_HOME=home, FAIZE_ARTIFACTS_DIR=art)
    p = subprocess.run([faize, "run", "-p", project, "--", "sh", "-c", script], env=env, capture_output=True,
                       stdin=subprocess.DEVNULL, text=True)
    if p.returncode != 0:
        raise SystemExit(f"faize failed ({p.returncode}):\n{p.stderr}")
    marks = json.loads(re.search(r"faize-timings: (\{.*\})", p.stderr).group(1))
    return p.stdout, marks


def tree(root, n_dirs=1000, per_dir=100):
    for d in range(n_dirs):
        path = os.path.join(root, "node_modules", f"pkg{d}")
        os.makedirs(path)
        for f in range(per_dir):
            with open(os.path.join(path, f"f{f}.js"), "w") as fh:
                fh.write("x")


def main():
    with tempfile.TemporaryDirectory() as home, tempfile.TemporaryDirectory() as big:
        t0 = time.monotonic()
        tree(big)
        print(f"generated 100,000 files in {time.monotonic() - t0:.1f} s")
        base, diff = [], []
        for _ in range(3):
            _, m = run(home, big, "touch new.txt")
            base.append(m["baseline_walk"])
            diff.append(m["diff_walk"])
        med = statistics.median
        print(f"change summary, 100k files: baseline walk median {med(base):.0f} ms, "
              f"diff walk + compare median {med(diff):.0f} ms, total {med(base) + med(diff):.0f} ms")

    with tempfile.TemporaryDirectory() as home, tempfile.TemporaryDirectory() as project:
        for d in range(40):
            os.makedirs(os.path.join(project, f"src{d}"))
            for f in range(50):
                with open(os.path.join(project, f"src{d}", f"f{f}.txt"), "w") as fh:
                    fh.write(f"line {d} {f}\n")
        with open(os.path.join(project, "big.bin"), "wb") as fh:
            fh.write(os.urandom(100 * 1024 * 1024))
        git = ["git", "-c", "user.name=b", "-c", "user.email=b@b"]
        subprocess.run(git + ["init", "-q"], cwd=project, check=True)
        subprocess.run(git + ["add", "."], cwd=project, check=True)
        subprocess.run(git + ["commit", "-qm", "bench"], cwd=project, check=True)
        script = ("for i in 1 2; do a=$(date +%s%N); git status --porcelain >/dev/null; b=$(date +%s%N); "
                  "cat big.bin >/dev/null; c=$(date +%s%N); echo \"$(( (b-a)/1000000 )) $(( (c-b)/1000000 ))\"; done")
        out, _ = run(home, project, script)
        guest = [tuple(map(int, l.split())) for l in out.split("\n") if l.strip()]
        host = []
        for _ in range(2):
            a = time.monotonic()
            subprocess.run(["git", "status", "--porcelain"], cwd=project, stdout=subprocess.DEVNULL, check=True)
            b = time.monotonic()
            with open(os.path.join(project, "big.bin"), "rb") as fh:
                while fh.read(1 << 20):
                    pass
            c = time.monotonic()
            host.append(((b - a) * 1000, (c - b) * 1000))
        for label, i in (("cold", 0), ("cached", 1)):
            gs, gr = guest[i]
            hs, hr = host[i]
            print(f"{label:>6}: git status guest {gs} ms / host {hs:.0f} ms = {gs / max(hs, 1):.0f}x; "
                  f"read 100 MB guest {gr} ms / host {hr:.0f} ms = {gr / max(hr, 1):.0f}x")


if __name__ == "__main__":
    main()
