#!/usr/bin/env python3
"""Host memory of one session: RSS of faize (the terminal side, and the session's supervisor)
and its sidecars, and QEMU's RSS beyond the guest RAM it has touched (its shared-memory RSS).

Usage: bench/memory.py   (after ./setup.sh; uses target/release/faize)
"""
import os, subprocess, sys, tempfile, time

repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
faize = os.path.join(repo, "target/release/faize")


def status(pid):
    out = {}
    for line in open(f"/proc/{pid}/status"):
        k, _, v = line.partition(":")
        if k in ("Name", "VmRSS", "RssAnon", "RssFile", "RssShmem"):
            out[k] = v.strip()
    return out


def kib(v):
    return int(v.split()[0])


def children(pid):
    try:
        return [int(c) for c in open(f"/proc/{pid}/task/{pid}/children").read().split()]
    except FileNotFoundError:
        return []


with tempfile.TemporaryDirectory() as project, tempfile.TemporaryDirectory() as home:
    art = os.environ.get("FAIZE_ARTIFACTS_DIR") or os.path.join(os.environ.get("FAIZE_HOME") or os.path.expanduser("~/.faize"), "artifacts")
    env = dict(os.environ, FAIZE_HOME=home, FAIZE_ARTIFACTS_DIR=art)
    p = subprocess.Popen([faize, "run", "-p", project, "--", "sh", "-c", "echo up; sleep 20"], env=env,
                         stdout=subprocess.PIPE, stdin=subprocess.DEVNULL)
    p.stdout.readline()  # the program runs: the VM is fully up
    time.sleep(2)
    # faize run (the terminal side) → its supervisor → QEMU and the sidecars.
    supervisors = children(p.pid)
    rows = [(p.pid, status(p.pid))]
    for sup in supervisors:
        rows += [(sup, status(sup))] + [(c, status(c)) for c in children(sup)]
    p.terminate()  # faize stops the session and cleans up
    p.wait()

print(f"{'process':<22}{'RSS':>10}{'anon':>10}{'file':>10}{'shmem':>10}   (MiB)")
total_sidecars = 0
for pid, s in rows:
    name = s["Name"]
    vals = [kib(s[k]) / 1024 for k in ("VmRSS", "RssAnon", "RssFile", "RssShmem")]
    print(f"{name:<22}" + "".join(f"{v:10.1f}" for v in vals))
    if name.startswith("qemu"):
        print(f"  qemu beyond guest RAM touched: {(kib(s['VmRSS']) - kib(s['RssShmem'])) / 1024:.1f} MiB"
              f" (guest RAM touched: {kib(s['RssShmem']) / 1024:.1f} MiB)")
    else:
        # Sidecars map guest RAM too (vhost-user); what is their own is anon + file.
        total_sidecars += (kib(s["RssAnon"]) + kib(s["RssFile"])) / 1024
print(f"faize + sidecars, own memory (anon + file): {total_sidecars:.1f} MiB")
