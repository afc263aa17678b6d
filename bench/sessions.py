#!/usr/bin/env python3
"""Sessions benchmarks (issue 5), with real sessions (TCG):

1. `faize ps --all` with 20 ended and 3 running sessions: median of 20 runs (target < 100 ms).
2. `faize kill ID` to every process of the session gone (QEMU, sidecars, supervisor): median of 3.
3. `faize attach ID` to the program's screen shown (the replayed output reaches the terminal),
   through a pseudo-terminal: median of 5.
4. Idle sessions with 512 MiB guests: host memory each one costs (MemAvailable before and after
   starting N, divided by N; and the processes' own RSS), and how many would fit in this
   machine's memory.

Usage: bench/sessions.py [N_IDLE]   (after ./setup.sh; uses target/release/faize; N_IDLE: 6)
"""
import json, os, pty, select, statistics, subprocess, sys, tempfile, time

repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
faize = os.path.join(repo, "target/release/faize")
art = os.environ.get("FAIZE_ARTIFACTS_DIR") or os.path.join(
    os.environ.get("FAIZE_HOME") or os.path.expanduser("~/.faize"), "artifacts")


def run(env, *args, check=True):
    p = subprocess.run([faize, *args], env=env, capture_output=True, text=True, stdin=subprocess.DEVNULL)
    if check and p.returncode != 0:
        raise SystemExit(f"faize {' '.join(args)} failed ({p.returncode}):\n{p.stderr}")
    return p


def start(env, project, script, memory="512M"):
    return run(env, "start", "--detach", "--cpus", "1", "--memory", memory, "-p", project, "--", "sh", "-c",
               script).stdout.strip()


def pids_of(session_id):
    """Processes whose command line names the session, and its supervisor."""
    found = []
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            cmd = open(f"/proc/{pid}/cmdline", "rb").read().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if session_id in cmd:
            found.append(int(pid))
    return found


def supervisor_pid(home, session_id):
    return json.load(open(os.path.join(home, "sessions", session_id, "state.json")))["supervisor_pid"]


def alive(pid):
    try:
        return b"__supervise" in open(f"/proc/{pid}/cmdline", "rb").read()
    except OSError:
        return False


def rss_kib(pid):
    try:
        for line in open(f"/proc/{pid}/status"):
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


def mem_available_kib():
    for line in open("/proc/meminfo"):
        if line.startswith("MemAvailable:"):
            return int(line.split()[1])


def attach_time(env, session_id, marker):
    t = time.monotonic()
    pid, fd = pty.fork()
    if pid == 0:
        os.execve(faize, [faize, "attach", session_id], env)
    seen = b""
    try:
        while marker.encode() not in seen:
            r, _, _ = select.select([fd], [], [], 30)
            if not r:
                raise SystemExit(f"attach showed nothing in 30 s: {seen!r}")
            seen += os.read(fd, 4096)
        took = time.monotonic() - t
    finally:
        os.kill(pid, 1)  # SIGHUP: the terminal closes, the session goes on
        os.waitpid(pid, 0)
        os.close(fd)
    return took


def main():
    n_idle = int(sys.argv[1]) if len(sys.argv) > 1 else 6
    with tempfile.TemporaryDirectory() as home, tempfile.TemporaryDirectory() as project:
        env = dict(os.environ, FAIZE_HOME=home, FAIZE_ARTIFACTS_DIR=art)
        try:
            for _ in range(20):
                run(env, "run", "--cpus", "1", "--memory", "512M", "--no-diff", "-p", project, "--", "true")
            running = [start(env, project, "echo READY-MARK; exec sleep 600") for _ in range(3)]
            times = []
            for _ in range(20):
                t = time.monotonic()
                out = run(env, "ps", "--all")
                times.append(time.monotonic() - t)
            rows = out.stdout.strip().splitlines()[1:]
            assert len(rows) == 23 and sum("running" in r for r in rows) == 3, out.stdout
            print(f"faize ps --all, 20 ended + 3 running: median {statistics.median(times) * 1000:.1f} ms "
                  f"(min {min(times) * 1000:.1f}, max {max(times) * 1000:.1f}) over 20 runs")

            attaches = [attach_time(env, running[i % 3], "READY-MARK") for i in range(5)]
            print(f"faize attach to the screen shown: median {statistics.median(attaches) * 1000:.0f} ms "
                  f"(runs: {', '.join(f'{a * 1000:.0f}' for a in attaches)})")

            kills = []
            for sid in running:
                sup = supervisor_pid(home, sid)
                t = time.monotonic()
                run(env, "kill", sid)
                while pids_of(sid) or alive(sup):
                    time.sleep(0.005)
                kills.append(time.monotonic() - t)
            print(f"faize kill to every process gone: median {statistics.median(kills) * 1000:.0f} ms "
                  f"(runs: {', '.join(f'{k * 1000:.0f}' for k in kills)})")

            run(env, "prune")
            time.sleep(1)
            before = mem_available_kib()
            idle = [start(env, project, "exec sleep 600") for _ in range(n_idle)]
            time.sleep(5)  # let the guests settle
            after = mem_available_kib()
            per_session = (before - after) / n_idle / 1024
            own = []
            for sid in idle:
                sup = supervisor_pid(home, sid)
                own.append((sum(rss_kib(p) for p in pids_of(sid)) + rss_kib(sup)) / 1024)
            total_kib = int(open("/proc/meminfo").readline().split()[1])
            print(f"{n_idle} idle sessions (512 MiB guests): MemAvailable fell {(before - after) / 1024:.0f} MiB, "
                  f"{per_session:.0f} MiB per session; RSS of each session's processes "
                  f"(QEMU incl. guest RAM touched, sidecars, supervisor): median {statistics.median(own):.0f} MiB")
            print(f"sessions that fit in this machine's {total_kib / 1024 / 1024:.1f} GiB at that cost: "
                  f"{int(before / 1024 / per_session)} idle ("
                  f"{int(before / 1024 / (512 + per_session))} if, conservatively, each also filled all 512 MiB)")
        finally:
            run(env, "prune", "--all", "--yes", check=False)


if __name__ == "__main__":
    main()
