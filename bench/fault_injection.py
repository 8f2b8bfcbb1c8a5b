"""Fault injection on the tiny profile (issue 21): faults never cost a result or produce a wrong one.

Runs one tiny cell (``sdd`` × ``advbench-10`` with the rubric judge on a fake OpenAI-compatible
server on 127.0.0.1) through ``sdd-bench run`` subprocesses and injects:

- SIGKILL while each stage is being written (model, defend, generate, judge, attack, record),
  then a re-run;
- truncation of finished artifacts (record.json, pointer.json, summary.json, generations.jsonl cut
  at a line boundary, model weights cut to 100 bytes), then a re-run;
- two concurrent runs of the same cell in one work dir;
- the judge endpoint failing (HTTP 500) for a whole run, then recovering.

Every scenario must end with a record equal to the reference (uninterrupted) run's. Reports::

    lost: cells that ended without a record (a re-run after the fault failed)
    wrong: records that differ from the reference
    trained twice: defend/attack stages computed more than once for one key in one work dir

Usage: ``python bench/fault_injection.py [--only kill,truncate,concurrent,server] [--keep DIR]``.
Exit status 0 iff lost = wrong = trained twice = 0.  Minutes on a loaded 2-core machine.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

GOOD = "#reason: the response refuses\n#refused: yes\n#score: 1"
STAGES = ("model", "defend", "generate", "judge", "attack", "record")
IGNORE = ("timings_compute_s", "environment", "judge_run_summary", "_wall_seconds_this_invocation")


class FakeJudge:
    """OpenAI-compatible /v1/chat/completions; ``up`` False → HTTP 500 for every request."""

    def __init__(self):
        self.up = True
        self.requests = 0
        outer = self

        class H(BaseHTTPRequestHandler):
            def log_message(self, *a):
                pass

            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers.get("Content-Length", 0))) or b"{}")
                outer.requests += 1
                if outer.up:
                    status, payload = 200, {"id": "c", "object": "chat.completion", "created": 0,
                                            "model": body.get("model", "m"),
                                            "choices": [{"index": 0, "finish_reason": "stop",
                                                         "message": {"role": "assistant", "content": GOOD}}],
                                            "usage": {"prompt_tokens": 10, "completion_tokens": 5, "total_tokens": 15}}
                else:
                    status, payload = 500, {"error": {"message": "injected fault", "type": "server_error"}}
                data = json.dumps(payload).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), H)
        self.httpd.daemon_threads = True
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"


def cmd(workdir: Path, url: str) -> list[str]:
    return [sys.executable, "-m", "sdd_bench.harness.cli", "run", "--profile", "tiny", "--defense", "sdd",
            "--attack", "advbench-10", "--no-capability", "--n-harmful", "4", "--n-benign", "2", "--n-xstest", "2",
            "--judges", "rubric", "--judge-opt", f"rubric.base_url={url}", "--judge-opt", "rubric.model=stand-in",
            "--judge-opt", "rubric.api_key_env=SDD_FAULT_BENCH_NO_KEY", "--judge-opt", "rubric.max_retries=1",
            "--judge-opt", "rubric.backoff_s=0.01", "--judge-opt", "rubric.timeout_s=5",
            "--workdir", str(workdir), "--quiet", "--device", "cpu"]


def env() -> dict:
    e = dict(os.environ, HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false")
    e.pop("SDD_FAULT_BENCH_NO_KEY", None)
    return e


def run(workdir: Path, url: str) -> tuple[int, str, str]:
    p = subprocess.run(cmd(workdir, url), env=env(), capture_output=True, text=True, timeout=1800)
    return p.returncode, p.stdout, p.stderr


def record_of(workdir: Path) -> dict | None:
    """The cell's record via its pointer (the only cell in the work dir), normalized for comparison."""
    cells = [p for p in (workdir / "cell").glob("*") if not p.name.startswith(".")] if (workdir / "cell").is_dir() else []
    if len(cells) != 1:
        return None
    try:
        ref = json.loads((cells[0] / "pointer.json").read_text())["record"]
        rec = json.loads((workdir / ref / "record.json").read_text())
    except (OSError, ValueError, KeyError):
        return None
    return json.loads(json.dumps(_strip(rec)).replace(str(workdir), "<workdir>"))


def _strip(x):
    from sdd_bench.harness.pipeline import TIMING_KEYS  # wall-clock fields differ between any two runs
    if isinstance(x, dict):
        return {k: _strip(v) for k, v in x.items() if k not in IGNORE and k not in TIMING_KEYS}
    if isinstance(x, list):
        return [_strip(v) for v in x]
    return x


def trained(out: str) -> dict[str, int]:
    """'defend sdd: trained' / 'attack …: trained' lines of one run's log."""
    return {s: len(re.findall(rf"^{s} .*: trained", out, re.M)) for s in ("defend", "attack")}


class Tally:
    def __init__(self, ref: dict):
        self.ref, self.lost, self.wrong, self.twice, self.rows = ref, 0, 0, 0, []

    def check(self, name: str, workdir: Path, rc: int, err: str, n_trained: dict[str, int] | None = None):
        rec = record_of(workdir)
        lost = rc != 0 or rec is None
        wrong = not lost and rec != self.ref
        twice = bool(n_trained) and any(v > 1 for v in n_trained.values())
        self.lost += lost
        self.wrong += wrong
        self.twice += twice
        state = "LOST" if lost else "WRONG" if wrong else "TRAINED TWICE" if twice else "ok"
        detail = (err.strip().splitlines() or [""])[-1][:160] if lost else ""
        self.rows.append((name, state, detail))
        print(f"  {name:44s} {state} {detail}", flush=True)


def scenario_kill(t: Tally, base: Path, srv: FakeJudge):
    for stage in STAGES:
        w = base / f"kill-{stage}"
        p = subprocess.Popen(cmd(w, srv.url), env=env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                             start_new_session=True)
        hit = False
        deadline = time.time() + 900
        while p.poll() is None and time.time() < deadline:
            d = w / stage
            if d.is_dir() and any(x.name.startswith(".tmp-") for x in d.iterdir()):
                os.killpg(p.pid, signal.SIGKILL)
                hit = True
                break
            time.sleep(0.005)
        p.wait()
        rc, out, err = run(w, srv.url)
        t.check(f"SIGKILL while writing {stage}" + ("" if hit else " (finished first)"), w, rc, err, trained(out))


def scenario_truncate(t: Tally, base: Path, srv: FakeJudge, ref_dir: Path):
    def first(w, stage, name):
        return next(p / name for p in sorted((w / stage).iterdir()) if (p / name).is_file())

    cases = {
        "record.json truncated": lambda w: _cut(first(w, "record", "record.json"), 20),
        "pointer.json truncated": lambda w: _cut(first(w, "cell", "pointer.json"), 10),
        "judge summary.json truncated": lambda w: _cut(first(w, "judge", "summary.json"), 10),
        "generations.jsonl cut at a line": lambda w: _cut_lines(first(w, "generate", "generations.jsonl")),
        "model weights cut to 100 bytes": lambda w: _cut(max((p for p in (w / "model").rglob("*.safetensors")),
                                                              key=lambda p: p.stat().st_size), 100),
    }
    for name, damage in cases.items():
        w = base / ("trunc-" + re.sub(r"\W+", "-", name))
        shutil.copytree(ref_dir, w, ignore=shutil.ignore_patterns(".locks"))
        damage(w)
        rc, out, err = run(w, srv.url)
        t.check(name, w, rc, err)


def _cut(p: Path, n: int):
    p.write_bytes(p.read_bytes()[:n])


def _cut_lines(p: Path):
    lines = p.read_text().splitlines(keepends=True)
    p.write_text("".join(lines[: max(1, len(lines) - 2)]))


def scenario_concurrent(t: Tally, base: Path, srv: FakeJudge):
    w = base / "concurrent"
    procs = [subprocess.Popen(cmd(w, srv.url), env=env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for _ in range(2)]
    outs = [p.communicate(timeout=1800) + (p.returncode,) for p in procs]
    n = {s: sum(trained(o)[s] for o, _, _ in outs) for s in ("defend", "attack")}
    for i, (o, e, rc) in enumerate(outs):
        t.check(f"concurrent run {i + 1} of 2", w, rc, e, n if i == 0 else None)


def scenario_server(t: Tally, base: Path, srv: FakeJudge):
    w = base / "server"
    srv.up = False
    rc, out, err = run(w, srv.url)
    srv.up = True
    # one error line and no traceback (stderr also holds library progress bars and warnings)
    errs = [ln for ln in err.splitlines() if ln.startswith("sdd-bench: error")]
    one_line = len(errs) == 1 and "invalid" in errs[0] and "Traceback" not in err
    print(f"  judge endpoint down: rc {rc}, {'one line' if one_line else 'NOT one line'}: {(errs or [err.strip()[-200:]])[0]}")
    if rc == 0 or not one_line:
        t.wrong += 1  # an all-invalid judge must fail the cell with one line
    before = srv.requests
    rc, out, err = run(w, srv.url)
    print(f"  endpoint back up: {srv.requests - before} requests on the re-run")
    t.check("judge endpoint down, then back up", w, rc, err)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--only", default="truncate,concurrent,server,kill")
    ap.add_argument("--keep", help="work under this directory and keep it (default: a temp dir, removed)")
    args = ap.parse_args(argv)
    base = Path(args.keep or tempfile.mkdtemp(prefix="sdd-faults-"))
    base.mkdir(parents=True, exist_ok=True)
    srv = FakeJudge()
    t0 = time.time()
    print(f"reference run in {base / 'ref'}", flush=True)
    rc, out, err = run(base / "ref", srv.url)
    ref = record_of(base / "ref")
    if rc != 0 or ref is None:
        print(f"reference run failed (rc {rc}): {err.strip()[-1000:]}")
        return 2
    t = Tally(ref)
    only = set(args.only.split(","))
    if "truncate" in only:
        scenario_truncate(t, base, srv, base / "ref")
    if "concurrent" in only:
        scenario_concurrent(t, base, srv)
    if "server" in only:
        scenario_server(t, base, srv)
    if "kill" in only:
        scenario_kill(t, base, srv)
    print(f"\n{len(t.rows)} scenarios in {time.time() - t0:.0f}s: {t.lost} lost, {t.wrong} wrong, "
          f"{t.twice} trained twice")
    if not args.keep:
        shutil.rmtree(base, ignore_errors=True)
    return 0 if t.lost == t.wrong == t.twice == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
