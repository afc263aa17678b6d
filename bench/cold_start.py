#!/usr/bin/env python3
"""Cold start of a session next to a bare QEMU boot of the same kernel and initramfs.

Runs, in the same process and interleaved so both see the same machine load:
  * bare:  qemu-system-x86_64 -M microvm with the faize kernel and initramfs and `faize.probe`
           on the command line: the agent prints a marker and resets the VM at once;
  * faize: `faize run -- true` with FAIZE_TIMINGS=1, which reports its phases.
Prints the medians of N runs (default 10) and the ratios the issue asks for.

Usage: bench/cold_start.py [N]   (after ./setup.sh; uses target/release/faize)
"""
import json, os, re, statistics, subprocess, sys, tempfile, time

N = int(sys.argv[1]) if len(sys.argv) > 1 else 10
repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
faize = os.path.join(repo, "target/release/faize")
art = os.environ.get("FAIZE_ARTIFACTS_DIR") or os.path.join(os.environ.get("FAIZE_HOME") or os.path.expanduser("~/.faize"), "artifacts")
MARKER = b"faize-agent: probe ready"


def tsc_khz():
    for line in open("/proc/cpuinfo"):
        if line.startswith("cpu MHz"):
            return round(float(line.split(":")[1]) * 1000)


def bare_boot(cpus, mem_mib):
    """Seconds to the agent's marker and to QEMU's exit."""
    args = ["qemu-system-x86_64", "-M", "microvm,acpi=off,x-option-roms=off,isa-serial=on,rtc=on,memory-backend=mem",
            "-accel", "tcg", "-cpu", "max", "-smp", str(cpus), "-m", f"{mem_mib}M",
            "-object", f"memory-backend-memfd,id=mem,size={mem_mib}M,share=on",
            "-nodefaults", "-no-user-config", "-no-reboot", "-display", "none",
            "-kernel", f"{art}/vmlinux", "-initrd", f"{art}/initramfs.cpio",
            "-append", f"console=ttyS0 quiet loglevel=1 reboot=t panic=-1 rdinit=/init dummy.numdummies=1 faize.probe tsc_early_khz={tsc_khz()}",
            "-serial", "stdio"]
    t0 = time.monotonic()
    p = subprocess.Popen(args, stdout=subprocess.PIPE, stdin=subprocess.DEVNULL)
    buf, marker_at = b"", None
    while True:
        chunk = p.stdout.read1(4096)
        if not chunk:
            break
        buf += chunk
        if marker_at is None and MARKER in buf:
            marker_at = time.monotonic() - t0
    p.wait()
    if marker_at is None:
        sys.exit(f"bare boot printed no marker:\n{buf.decode(errors='replace')[-2000:]}")
    return marker_at, time.monotonic() - t0


def faize_run(project, home):
    env = dict(os.environ, FAIZE_TIMINGS="1", FAIZE_HOME=home, FAIZE_ARTIFACTS_DIR=art)
    t0 = time.monotonic()
    p = subprocess.run([faize, "run", "-p", project, "--", "true"], env=env, capture_output=True, stdin=subprocess.DEVNULL)
    total = time.monotonic() - t0
    if p.returncode != 0:
        sys.exit(f"faize run failed ({p.returncode}):\n{p.stderr.decode(errors='replace')}")
    m = re.search(rb"faize-timings: (\{.*\})", p.stderr)
    marks = {k: v / 1000 for k, v in json.loads(m.group(1)).items()}
    marks["total"] = total
    return marks


def main():
    bare_marker, bare_exit, runs = [], [], []
    with tempfile.TemporaryDirectory() as project, tempfile.TemporaryDirectory() as home:
        faize_run(project, home)  # warm the page cache and build the initramfs if needed
        bare_boot(2, 4096)
        for _ in range(N):
            m, e = bare_boot(2, 4096)
            bare_marker.append(m)
            bare_exit.append(e)
            runs.append(faize_run(project, home))
    med = statistics.median
    total = med([r["total"] for r in runs])
    host_before = med([r["qemu_spawned"] for r in runs])
    exit_path = med([r["total"] - r["exit_received"] for r in runs])
    host_overhead = med([r["qemu_spawned"] + (r["total"] - r["exit_received"]) + (r["exec_sent"] - r["guest_ready"]) for r in runs])
    print(f"runs: {N} (TCG, 2 vCPUs, 4096 MiB)")
    print(f"bare boot to marker     median {med(bare_marker)*1000:7.0f} ms")
    print(f"bare boot to exit       median {med(bare_exit)*1000:7.0f} ms")
    print(f"faize run -- true       median {total*1000:7.0f} ms   ratio to bare exit {total/med(bare_exit):.2f}x")
    for k in ["scratch_ready", "sidecars_ready", "qemu_spawned", "agent_connected", "guest_ready", "exec_sent", "exit_received", "helpers_stopped", "done"]:
        print(f"  phase {k:<17} median {med([r[k] for r in runs])*1000:7.0f} ms")
    print(f"host before QEMU        median {host_before*1000:7.0f} ms")
    print(f"host-side overhead      median {host_overhead*1000:7.0f} ms   (before QEMU + exec + exit path)")
    print(f"program exit -> faize exit median {exit_path*1000:7.0f} ms")


if __name__ == "__main__":
    main()
