"""``memif-aio replay`` and ``memif-aio gen`` (issue 13 §3).

replay is checked against ``memif-aio capture``: the frames captured equal the frames
of the file replayed, byte for byte and in order (both files read with dpkt, the
input written with dpkt).  gen is checked against ``bench rx``, ``capture``, a peer in
this process and DPDK ``dpdk-testpmd`` ``rxonly`` counters.  Rates are checked as
counts: with ``--rate R --duration S`` gen sends exactly R x S packets, and the
receiver must count exactly that many; the pace itself is checked only as a lower
bound that pacing guarantees (a frame never leaves before it is due), never as a
speed.  The tools take ``--uvloop/--no-uvloop``; the tests where the loop matters
(pacing on the loop's clock) run on both.
"""

from __future__ import annotations

import asyncio
import json
import os
import pty
import signal
import subprocess
import sys

import dpkt
import pytest
import test_tools as tt  # the tools harness (processes, pcap reading)
from test_tools import Tool, env, finish, read_pcap, run, start, tool_async, wait_path

from memif_aio import Arguments, Socket
from memif_aio.cli import packet as pk
from memif_aio.cli.gen import IMIX, Flows
from memif_aio.cli.replay import flow_queue, scan, schedule
from memif_aio.cli.traffic import Pacer
from memif_aio.testing.testpmd import TestPmd

pytestmark = pytest.mark.timeout(90)

tools = tt.tools  # fixture: tools started by a test are stopped and reaped

LOOPS = pytest.mark.parametrize("loop", ["--uvloop", "--no-uvloop"], ids=["uvloop", "asyncio"])


def write_pcap(path: str, frames: list[tuple[float, bytes]], linktype: int = 1,
               ng: bool = False) -> None:
    """Write a capture with dpkt (not with our own writer)."""
    with open(path, "wb") as f:
        w = (dpkt.pcapng.Writer(f, snaplen=65535, linktype=linktype) if ng else
             dpkt.pcap.Writer(f, snaplen=65535, linktype=linktype))
        for ts, buf in frames:
            w.writepkt(buf, ts=ts)


def udp_frame(i: int, size: int, flow: int = 0) -> bytes:
    """An Ethernet/IPv4/UDP frame built by dpkt, ``size`` bytes, numbered ``i``."""
    payload = i.to_bytes(4, "big") + bytes((i + j) & 0xFF for j in range(size - 46))
    udp = dpkt.udp.UDP(sport=1000 + flow, dport=2000, data=payload)
    udp.ulen = len(bytes(udp))
    ip = dpkt.ip.IP(src=pk.parse_ip(f"10.0.0.{flow + 1}"), dst=pk.parse_ip("10.0.1.1"), p=17,
                    data=udp)
    ip.len = len(bytes(ip))
    frame = bytes(dpkt.ethernet.Ethernet(src=b"\x02" * 6, dst=b"\x04" * 6, type=0x0800,
                                         data=ip))
    assert len(frame) == size
    return frame


def frames_of(recs: list[tuple[float, bytes]]) -> list[bytes]:
    return [b for _, b in recs]


def start_capture(tools: list[Tool], sock_dir: str, pcap: str, role: str, count: int,
                  *extra: str) -> Tool:
    path = os.path.join(sock_dir, "memif.sock")
    cap = start(tools, sock_dir, "capture", "-w", pcap, "--socket", path, "--role", role,
                "--count", str(count), "--direction", "rx", "--timeout", "30", *extra)
    if role == "master":
        wait_path(path)
    return cap


# --- the pacer, on a clock of our own ---------------------------------------------------


def test_pacer_absolute_schedule_and_slip() -> None:
    now = [100.0]
    p = Pacer(lambda: now[0], max_lag=0.25)
    p.start()
    assert p.delay(0.0) == 0.0 and p.delay(0.5) == pytest.approx(0.5)
    now[0] = 100.3  # woke up late: no drift, the next packets are simply due
    assert p.delay(0.1) == 0.0 and p.delay(0.2) == 0.0 and p.delay(0.4) == pytest.approx(0.1)
    assert p.slipped == 0.0
    now[0] = 101.5  # 1.3 s late for offset 0.2: the schedule slips to 0.25 s behind
    assert p.delay(0.2) == 0.0
    assert p.slipped == pytest.approx(1.05)
    assert p.at(0.2) == pytest.approx(101.25)
    assert p.delay(0.5) == pytest.approx(0.05)  # offsets after it keep their spacing


def test_flow_queue_keeps_flows_together() -> None:
    frames = [udp_frame(i, 100, flow=i % 5) for i in range(50)]
    by_flow: dict[int, set[int]] = {}
    for i, f in enumerate(frames):
        by_flow.setdefault(i % 5, set()).add(flow_queue(f, False, 4))
    assert all(len(qs) == 1 for qs in by_flow.values())
    assert all(0 <= q < 4 for qs in by_flow.values() for q in qs)
    assert flow_queue(frames[0][14:], True, 4) == flow_queue(frames[0], False, 4)
    assert flow_queue(b"", False, 4) == 0 and flow_queue(b"\x02" * 60, False, 3) in (0, 1, 2)


def test_schedule_offsets_loops_and_a_truncated_file(tmp_path: object) -> None:
    """The offsets replay paces by, from memory or read again per loop (files over
    256 MiB): the recorded gaps over --speed, a loop one mean gap after the previous
    one, timestamps going backwards held; a file cut inside a record keeps its
    complete records."""
    src = os.path.join(str(tmp_path), "in.pcap")
    stamps = [10.0, 10.1, 10.05, 10.4]  # the third goes backwards
    frames = [(ts, udp_frame(i, 80)) for i, ts in enumerate(stamps)]
    write_pcap(src, frames)
    info, records = scan(src, keep=True)
    assert (info.frames, info.first, info.truncated, info.linktype) == (4, 10.0, False, 1)
    assert info.span == pytest.approx(0.4)
    assert records == frames
    kept = list(schedule(src, info, records, 2.0, None, 2, False, 1))
    again = list(schedule(src, info, None, 2.0, None, 2, False, 1))
    assert kept == again
    # period (0.4 + 0.4 / 3) / 2
    want = [0.0, 0.05, 0.05, 0.2] + [x + (0.4 + 0.4 / 3) / 2 for x in (0.0, 0.05, 0.05, 0.2)]
    assert [o for o, _, _ in kept] == pytest.approx(want)
    assert [f for _, _, f in kept] == [f for _, f in frames] * 2
    rated = [o for o, _, _ in schedule(src, info, None, 1.0, 100.0, 3, False, 1)]
    assert rated == pytest.approx([k / 100 for k in range(12)])
    with open(src, "r+b") as f:  # cut inside the last record's header (16 bytes)
        f.truncate(os.path.getsize(src) - 80 - 6)
    info, records = scan(src, keep=False)
    assert (info.frames, info.truncated, records) == (3, True, None)
    assert [f for _, _, f in schedule(src, info, None, 1.0, None, 1, False, 1)] == \
        [f for _, f in frames[:3]]


# --- replay against capture -------------------------------------------------------------


@LOOPS
@pytest.mark.parametrize("cap_role", ["master", "slave"])
def test_replay_equals_capture(sock_dir: str, tools: list[Tool], loop: str,
                               cap_role: str) -> None:
    """Frames of mixed sizes (some chained over 2048-byte buffers) at 5 ms intervals,
    replayed at half speed, twice: the capture holds the file's frames twice, byte for
    byte, in order; pacing never sends a frame early, so the second pass starts at
    least one recorded period / speed after the first."""
    path = os.path.join(sock_dir, "memif.sock")
    src = os.path.join(sock_dir, "in.pcap")
    out = os.path.join(sock_dir, "out.pcap")
    sizes = [60, 64, 128, 1500, 3000, 9000, 64, 1514]
    frames = [(1_700_000_000.0 + 0.005 * i, udp_frame(i, sizes[i % len(sizes)]))
              for i in range(40)]
    write_pcap(src, frames)
    role = "slave" if cap_role == "master" else "master"
    cap = start_capture(tools, sock_dir, out, cap_role, 80)
    r = run(sock_dir, "replay", src, "--socket", path, "--role", role, "--speed", "0.5",
            "--loop", "2", "--json", loop, "--timeout", "30")
    assert r.returncode == 0, r.stdout + r.stderr
    s = json.loads(r.stdout)
    total = sum(len(b) for _, b in frames)
    assert (s["command"], s["packets"], s["bytes"], s["frames"], s["loops"], s["speed"]) == \
        ("replay", 80, 2 * total, 40, 2, 0.5), s
    assert s["complete"] is True and s["link_down"] is None and s["exit_status"] == 0
    rc, out_text, err = cap.finish()
    assert rc == 0, out_text + err
    assert "80 packets (80 received, 0 sent)" in err
    linktype, recs = read_pcap(out)
    os.unlink(src)
    os.unlink(out)
    assert linktype == 1
    assert frames_of(recs) == frames_of(frames) * 2
    # the span of the file is 0.195 s, a loop period 0.2 s: at half speed the 41st frame
    # is due 0.4 s after the first, and none leaves early.  A lower bound only, with a
    # generous margin for the first frame arriving late (which shortens the gap); at the
    # recorded pace (speed ignored) it would be 0.2 s
    assert recs[40][0] - recs[0][0] > 0.25


def test_replay_pcapng_at_a_rate_ip_mode_and_queues(sock_dir: str, tools: list[Tool]) -> None:
    path = os.path.join(sock_dir, "memif.sock")
    out = os.path.join(sock_dir, "out.pcap")
    # pcapng, --rate (the timestamps are ignored: they go backwards here)
    src = os.path.join(sock_dir, "in.pcapng")
    frames = [(1_700_000_000.0 - i, udp_frame(i, 64 + i)) for i in range(30)]
    write_pcap(src, frames, ng=True)
    cap = start_capture(tools, sock_dir, out, "master", 30)
    r = run(sock_dir, "replay", src, "--socket", path, "--rate", "500", "--progress", "0.05")
    assert r.returncode == 0, r.stdout + r.stderr
    assert "replay: 30 packets" in r.stdout and "0 ring-full waits" in r.stdout
    assert "replay " in r.stderr and " sent " in r.stderr and "ring-full waits" in r.stderr
    assert cap.finish()[0] == 0
    assert frames_of(read_pcap(out)[1]) == frames_of(frames)
    os.unlink(out)
    # ip mode: a LINKTYPE_RAW file
    raw = [(1_700_000_000.0 + 0.001 * i, f[14:]) for i, (_, f) in enumerate(frames)]
    write_pcap(src, raw, linktype=101)
    cap = start_capture(tools, sock_dir, out, "slave", 30, "--mode", "ip")
    r = run(sock_dir, "replay", src, "--socket", path, "--role", "master", "--mode", "ip")
    assert r.returncode == 0, r.stdout + r.stderr
    assert cap.finish()[0] == 0
    linktype, recs = read_pcap(out)
    assert linktype == 101 and frames_of(recs) == frames_of(raw)
    os.unlink(out)
    # two queue pairs: each flow keeps its order; all frames arrive
    frames = [(1_700_000_000.0 + 0.001 * i, udp_frame(i, 100, flow=i % 6)) for i in range(60)]
    write_pcap(src, frames)
    cap = start_capture(tools, sock_dir, out, "master", 60, "--queues", "2")
    r = run(sock_dir, "replay", src, "--socket", path, "--queues", "2", "--json")
    assert r.returncode == 0, r.stdout + r.stderr
    assert json.loads(r.stdout)["queues"] == 2
    assert cap.finish()[0] == 0
    got = frames_of(read_pcap(out)[1])
    os.unlink(out)
    os.unlink(src)
    assert sorted(got) == sorted(frames_of(frames))
    for flow in range(6):
        assert [f for f in got if f[29] == flow + 1] == \
            [f for _, f in frames if f[29] == flow + 1]
    assert {flow_queue(f, False, 2) for _, f in frames} == {0, 1}  # both queues carried some


def test_replay_refuses_bad_files(sock_dir: str) -> None:
    path = os.path.join(sock_dir, "memif.sock")
    src = os.path.join(sock_dir, "in.pcap")
    write_pcap(src, [])
    r = run(sock_dir, "replay", src, "--socket", path, "--timeout", "0.2")
    assert r.returncode == 2 and "holds no frames" in r.stderr, r.stderr
    write_pcap(src, [(1.0, b"\x45" + bytes(19))], linktype=101)
    r = run(sock_dir, "replay", src, "--socket", path, "--timeout", "0.2")
    assert r.returncode == 2 and "has link type 101; ethernet mode" in r.stderr, r.stderr
    write_pcap(src, [(1.0, udp_frame(1, 64))], linktype=1)
    r = run(sock_dir, "replay", src, "--socket", path, "--timeout", "0.2", "--mode", "ip")
    assert r.returncode == 2 and "has link type 1; ip mode" in r.stderr, r.stderr
    with open(src, "wb") as f:
        f.write(b"this is not a capture file")
    r = run(sock_dir, "replay", src, "--socket", path, "--timeout", "0.2")
    assert r.returncode == 2 and "is not a pcap or pcapng file" in r.stderr, r.stderr
    os.unlink(src)
    r = run(sock_dir, "replay", src, "--socket", path, "--timeout", "0.2")
    assert r.returncode == 2 and f"cannot read {src}" in r.stderr, r.stderr
    r = run(sock_dir, "replay", src, "--speed", "2", "--rate", "10")
    assert r.returncode == 2 and "not allowed with argument" in r.stderr, r.stderr
    # a good file, but nobody there: no link within --timeout
    write_pcap(src, [(1.0, udp_frame(1, 64))])
    r = run(sock_dir, "replay", src, "--socket", path, "--timeout", "0.3")
    assert r.returncode == 2 and "could not connect" in r.stderr, r.stderr
    # without dpkt (the pcap extra): a message that says what to install
    code = ("import sys; sys.modules['dpkt'] = None; from memif_aio.cli.main import main; "
            f"sys.exit(main(['replay', {src!r}, '--socket', {path!r}, '--timeout', '0.3']))")
    r = subprocess.run([sys.executable, "-c", code], cwd=sock_dir, env=env(),
                       capture_output=True, text=True, timeout=30)
    os.unlink(src)
    assert r.returncode == 2, r.stderr
    assert r.stderr.strip() == "memif-aio replay: reading capture files needs dpkt: pip " \
        "install 'memif-aio[pcap]'", r.stderr


# --- gen ----------------------------------------------------------------------------------


@LOOPS
@pytest.mark.parametrize("rx_role", ["master", "slave"])
def test_gen_rate_times_duration_packets(sock_dir: str, tools: list[Tool], loop: str,
                                         rx_role: str) -> None:
    """--rate 2000 --duration 2 sends exactly 4000 packets, and the receiver counts
    exactly 4000 (a count, not a time)."""
    path = os.path.join(sock_dir, "memif.sock")
    rx = start(tools, sock_dir, "bench", "rx", "--socket", path, "--role", rx_role, "--json",
               "--progress", "0", "--timeout", "30")
    if rx_role == "master":
        wait_path(path)
    tx_role = "slave" if rx_role == "master" else "master"
    r = run(sock_dir, "gen", "--socket", path, "--role", tx_role, "--rate", "2000",
            "--duration", "2", "--size", "64,512,1500", "--flows", "7", "--json", loop,
            "--timeout", "30")
    assert r.returncode == 0, r.stdout + r.stderr
    s = json.loads(r.stdout)
    nbytes = 1334 * 64 + 1333 * 512 + 1333 * 1500
    assert (s["command"], s["packets"], s["bytes"], s["planned"], s["flows"], s["rate"]) == \
        ("gen", 4000, nbytes, 4000, 7, 2000.0), s
    assert s["complete"] is True and s["exit_status"] == 0 and s["link_down"] is None
    rc, out, err = rx.finish()
    assert rc == 0, out + err
    rxs = json.loads(out)
    assert (rxs["packets"], rxs["bytes"]) == (4000, nbytes), rxs


def test_gen_frames_and_flows(sock_dir: str, tools: list[Tool]) -> None:
    """The frames, parsed by dpkt: --flows distinct (source address, source port), the
    sizes in turn, correct IPv4 and UDP checksums; imix; ip mode."""
    path = os.path.join(sock_dir, "memif.sock")
    out = os.path.join(sock_dir, "gen.pcap")
    cap = start_capture(tools, sock_dir, out, "master", 40)
    r = run(sock_dir, "gen", "--socket", path, "--count", "40", "--flows", "5", "--size",
            "64,300,1000,1518", "--src-ip", "10.9.0.250", "--sport", "65534", "--dport",
            "4789", "--dst-ip", "10.8.0.1")
    assert r.returncode == 0, r.stdout + r.stderr
    assert "gen: 40 packets" in r.stdout and "5 flows" in r.stdout
    assert cap.finish()[0] == 0
    recs = read_pcap(out)[1]
    os.unlink(out)
    assert [len(b) for _, b in recs] == [64, 300, 1000, 1518] * 10
    seen = set()
    for k, (_, buf) in enumerate(recs):
        eth = dpkt.ethernet.Ethernet(buf)
        assert (eth.src, eth.dst, eth.type) == (pk.parse_mac("02:fe:00:00:00:02"),
                                                pk.parse_mac("02:fe:00:00:00:01"), 0x0800)
        ip = eth.data
        udp = ip.data
        assert isinstance(ip, dpkt.ip.IP) and isinstance(udp, dpkt.udp.UDP)
        f = k % 5
        assert ip.src == pk.parse_ip(["10.9.0.250", "10.9.0.251", "10.9.0.252", "10.9.0.253",
                                      "10.9.0.254"][f])
        assert (ip.dst, udp.dport) == (pk.parse_ip("10.8.0.1"), 4789)
        assert udp.sport == [65534, 65535, 1, 2, 3][f]
        assert ip.len == len(buf) - 14 and udp.ulen == len(buf) - 34
        seen.add((ip.src, udp.sport))
        # dpkt recomputes both checksums when zeroed: they must equal ours
        sums = ip.sum, udp.sum
        ip.sum = 0
        udp.sum = 0
        again = dpkt.ip.IP(bytes(ip))
        assert (again.sum, again.data.sum) == sums
    assert len(seen) == 5
    # imix in ip mode: bare IPv4/UDP packets of the IMIX sizes
    cap = start_capture(tools, sock_dir, out, "slave", 24, "--mode", "ip")
    r = run(sock_dir, "gen", "--socket", path, "--role", "master", "--mode", "ip", "--count",
            "24", "--size", "imix", "--json")
    assert r.returncode == 0, r.stdout + r.stderr
    assert json.loads(r.stdout)["sizes"] == list(IMIX)
    assert cap.finish()[0] == 0
    linktype, recs = read_pcap(out)
    os.unlink(out)
    assert linktype == 101 and [len(b) for _, b in recs] == list(IMIX) * 2
    assert sorted(IMIX) == [64] * 7 + [570] * 4 + [1518]
    for _, buf in recs:
        ip = dpkt.ip.IP(buf)
        assert isinstance(ip.data, dpkt.udp.UDP) and ip.len == len(buf)
    # sizes too small for the headers, bad lists
    for bad in (["--size", "41"], ["--size", "x"], ["--size", ""], ["--flows", "0"],
                ["--rate", "0"], ["--rate", "1", "--duration", "0.5"]):
        r = run(sock_dir, "gen", "--socket", path, "--timeout", "0.2", *bad)
        assert r.returncode == 2 and r.stderr.strip(), (bad, r.stderr)
    r = run(sock_dir, "gen", "--socket", path, "--timeout", "0.2", "--size", "41")
    assert "at least 42 bytes in ethernet mode" in r.stderr


@pytest.mark.both_loops
async def test_gen_waits_for_a_full_ring(sock_dir: str, no_leaks: None) -> None:
    """A peer that reads nothing at first: gen fills the 256-slot ring, waits (counted),
    and every packet arrives once the peer reads, in order, none lost."""
    path = os.path.join(sock_dir, "memif.sock")
    n = 1000
    async with Socket(path) as sock:
        itf = sock.new_interface(Arguments(id=0, is_master=True))
        proc = await tool_async(sock_dir, "gen", "--socket", path, "--count", str(n),
                                "--rsize", "8", "--json", "--flows", "3", "--timeout", "30")
        try:
            await itf.wait_connected(30)
            rx = itf.get_rx_queue(0)
            while rx.stats().head != 256 and proc.returncode is None:  # the ring is full
                await asyncio.sleep(0.01)
            await asyncio.sleep(0.2)  # gen keeps waiting for space meanwhile
            got: list[bytes] = []
            while len(got) < n:
                got += await asyncio.wait_for(rx.read_burst(64), 20)
            rc, out, err = await finish(proc)
        finally:
            if proc.returncode is None:
                proc.kill()
                await proc.wait()
    assert rc == 0, out + err
    s = json.loads(out)
    assert (s["packets"], s["complete"]) == (n, True) and s["ring_full_waits"] >= 1, s
    flows = Flows(True, pk.parse_mac("02:fe:00:00:00:02"), pk.parse_mac("02:fe:00:00:00:01"),
                  pk.parse_ip("198.18.0.1"), pk.parse_ip("198.19.0.1"), 1024, 9, 3, (64,))
    assert got == [flows.frame(k)[1] for k in range(n)]


def _run_on_a_terminal(cwd: str, *args: str) -> tuple[int, str, str]:
    """Run a tool with stderr on a pseudo-terminal; return status, stdout, terminal."""
    master_fd, slave_fd = pty.openpty()
    proc = subprocess.Popen([sys.executable, "-m", "memif_aio", *args], cwd=cwd, env=env(),
                            stdout=subprocess.PIPE, stderr=slave_fd, stdin=subprocess.DEVNULL)
    os.close(slave_fd)
    chunks = []
    try:
        while True:
            try:
                chunk = os.read(master_fd, 65536)
            except OSError:  # EIO: the other side closed
                break
            if not chunk:
                break
            chunks.append(chunk)
        assert proc.stdout is not None
        out = proc.stdout.read().decode()
        rc = proc.wait(30)
    finally:
        os.close(master_fd)
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        if proc.stdout is not None:
            proc.stdout.close()
    return rc, out, b"".join(chunks).decode(errors="replace")


def test_gen_progress_on_a_terminal(sock_dir: str, tools: list[Tool]) -> None:
    """On a terminal progress is on by default, redrawn with \\r; --no-progress turns it
    off; on a pipe it is off unless --progress."""
    path = os.path.join(sock_dir, "memif.sock")
    rx = tt.start_responder(tools, sock_dir, "master")  # a sink for one gen after another
    rc, out, term = _run_on_a_terminal(sock_dir, "gen", "--socket", path, "--rate", "1000",
                                       "--duration", "2.5")
    assert rc == 0, out + term
    redraws = [x for x in term.split("\r") if x.startswith("gen ")]
    assert len(redraws) >= 2, repr(term)
    assert all(" sent " in x and "ring-full waits 0" in x for x in redraws), repr(term)
    assert "gen: 2500 packets" in out
    rc, out, term = _run_on_a_terminal(sock_dir, "gen", "--socket", path, "--count", "10",
                                       "--rate", "10", "--no-progress")
    assert rc == 0 and "\r" not in term and "gen: 10 packets" in out, (out, term)
    r = run(sock_dir, "gen", "--socket", path, "--count", "10", "--rate", "10")
    assert r.returncode == 0 and " sent " not in r.stderr, r.stderr
    rx.signal(signal.SIGINT)
    rc, out, _ = rx.finish()
    assert rc == 0 and "ignored 2520 packets" in out, out


@pytest.mark.interop
@pytest.mark.parametrize("role", ["master", "slave"], ids=["py-master", "py-slave"])
async def test_gen_to_testpmd_rxonly(sock_dir: str, dpdk: str, role: str) -> None:
    """testpmd rxonly counts exactly rate x duration packets and their bytes (read while
    gen lingers: the memif counters reset when the link goes down)."""
    path = os.path.join(sock_dir, "memif.sock")
    n = 4000
    args = ("gen", "--socket", path, "--role", role, "--rate", "2000", "--duration", "2",
            "--size", "128,256", "--flows", "16", "--linger", "20", "--json", "--timeout", "20")
    proc = None
    try:
        if role == "master":
            proc = await tool_async(sock_dir, *args)
            await asyncio.to_thread(wait_path, path)
        async with TestPmd("client" if role == "master" else "server", path,
                           forward_mode="rxonly") as tp:
            if proc is None:
                proc = await tool_async(sock_dir, *args)
            st = await tp.wait_stats(lambda s: s.rx_packets >= n, timeout=30)
            # nothing more arrives: one more stats block with the same count
            st2 = await tp.next_stats(timeout=10)
            assert (st.rx_packets, st.rx_bytes, st.rx_errors) == (n, n // 2 * (128 + 256), 0)
            assert st2.rx_packets == n, st2
            proc.send_signal(signal.SIGINT)  # ends the linger
            rc, out, err = await finish(proc)
    finally:
        if proc is not None and proc.returncode is None:
            proc.kill()
            await proc.wait()
    assert rc == 0, out + err
    s = json.loads(out)
    assert (s["packets"], s["bytes"], s["complete"]) == (n, n // 2 * (128 + 256), True), s
