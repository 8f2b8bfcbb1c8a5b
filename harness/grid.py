"""Grids (DESIGN §1): models × defenses × attacks (with sweeps) × seeds, planned and run cell by cell.

A grid spec is YAML (``configs/*.yaml``)::

    name: sdd-smoke
    profile: smoke
    defenses: [none, refusal-sft, sdd, {name: sdd, base_defense: refusal-sft}]
    attacks:
      - none
      - advbench-100
      - {name: beavertails-1k-seam, sweep: {lr: [2.0e-5, 1.0e-4]}}
    seeds: [0]
    judges: [harm-clf]
    run: {template: chat}          # any other RunSpec field, for every cell

Every cell is one ``run_cell`` (harness/pipeline.py).  Resumability is the artifact store's: every
stage is published atomically under a content key, so a grid killed at any point (even SIGKILL)
resumes at the first unfinished stage of the first unfinished cell, and finished cells are found
through their ``cell`` pointer without touching a model.  Executors: ``local`` (sequential, in
this process) and ``ray`` (one Ray task per cell stage group — base model, defended model,
attacked cell — with CPU/GPU resource requests; the store must be a filesystem every Ray node
sees).  A local run may be bounded by a deadline (``--until``/``--max-minutes``: a cell starts only if
its re-planned estimate fits, see :func:`fits`) and publish each record as its cell finishes
(``--publish``, harness/publish.py; a cell already published there is not run).  Estimates: this store's
timings and, with ``--publish``, those the published records measured, else the profile's defaults, a defense's
scaled by its configured work (:func:`defend_estimate`).
"""
from __future__ import annotations

import json
import math
import os
import sys
import time
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from . import config as C
from .errors import ConfigError, SddBenchError
# the grid spec and its plan live in their own modules (publish.py reads grids without this runner); their names are
# re-exported here, where the CLI, the tests and the docs find them
from .grid_plan import (  # noqa: F401  (re-exported)
    _fmt_s, _hist_key, _history, attack_estimate, ATTACK_REFERENCE_STEPS, CellPlan, DEFAULT_ESTIMATE_S,
    defend_estimate, DEFEND_REFERENCE, FINISHED, model_estimate, PASSES_PER_STEP, Plan, plan,
    STAGE_KINDS
)
from .grid_spec import (  # noqa: F401  (re-exported)
    _attack_variants, _budget_variants, _entry, _num, _opts, expand, grid_from_mapping, GRID_KEYS,
    GridSpec, is_grid, label, load_grid
)


# A grid with more cells than this is run only with ``--yes`` (our choice: the largest shipped grid has 44 cells and a
# smoke cell takes minutes, so 500 cells is days of compute; a typo in a sweep multiplies cells silently).
CONFIRM_CELLS = 500
# ``grid`` / ``grid --plan`` print at most this many rows of the plan table unless ``--all-rows`` (our choice: a
# screenful or two; the summary line always counts every cell).
PLAN_ROWS = 200
# ``validate`` and ``grid`` report their progress through a grid's cells at most this often (seconds; our choice):
# a grid that checks in less time prints nothing extra.
PROGRESS_EVERY_S = 5.0


class Progress:
    """``what: i/total cells (elapsed)`` on stderr at most every ``PROGRESS_EVERY_S`` seconds, and once at the end
    if anything was printed before."""

    def __init__(self, what: str, total: int | None = None, stream=None):
        self.what, self.total, self.stream = what, total, stream
        self.t0 = self.last = time.time()
        self.printed = False

    def _line(self, i: int) -> None:
        tot = f"/{self.total:,}" if self.total is not None else ""
        print(f"{self.what}: {i:,}{tot} cells ({time.time() - self.t0:.0f}s)", file=self.stream or sys.stderr,
              flush=True)
        self.printed = True

    def __call__(self, i: int) -> None:
        now = time.time()
        if now - self.last >= PROGRESS_EVERY_S:
            self.last = now
            self._line(i)

    def done(self, i: int) -> None:
        if self.printed:
            self._line(i)


# ------------------------------------------------------------------------------------------
# executors
@dataclass
class CellResult:
    spec: Any
    record: dict | None
    record_ref: str | None
    cached: bool
    error: str | None = None
    seconds: float = 0.0
    skipped: str | None = None    # why the cell was not started (the deadline), None if it ran
    published: str | None = None  # the published record file it was taken from, not run (``--publish``)


def _run_one(spec, store, progress: bool, log) -> CellResult:
    from .pipeline import finished_record, resolve, run_cell
    t0 = time.time()
    done = finished_record(store, resolve(spec))
    if done is not None:
        return CellResult(spec, done[0], done[1].ref(), True, seconds=time.time() - t0)
    record, art = run_cell(spec, store, progress=progress, log=log)
    record.pop("_wall_seconds_this_invocation", None)
    return CellResult(spec, record, art.ref(), False, seconds=time.time() - t0)


def fits(g: GridSpec, spec, store, deadline: float, cp: CellPlan | None = None) -> str | None:
    """None if the cell's planned remaining compute (re-planned now against the current store, unless ``cp`` is
    that plan) ends before ``deadline`` (epoch seconds); else why it does not."""
    cp = cp if cp is not None else plan(g, store, [spec]).cells[0]
    if cp.state in FINISHED:
        return None
    left = deadline - time.time()
    if cp.estimate_s is None:
        return (f"no time estimate (profile {g.profile} has no default timing and this store no finished stage of "
                f"its kind); run it without a deadline once")
    if cp.estimate_s > left:
        return f"planned {_fmt_s(cp.estimate_s)}, {_fmt_s(max(0.0, left))} left before the deadline"
    return None


def busy(cp: CellPlan, store) -> str | None:
    """The first artifact (``stage/key``) this cell still has to build that another process is computing right now
    (its store lock is held), or None.  Only the model, defense and attack stages are probed: they are the long ones
    (a defense or an attack is minutes to hours); an evaluation stage held elsewhere is waited for."""
    for stage, key in cp.missing:
        if store.is_locked(stage, key):
            return f"{stage}/{key}"
    return None


def run_local(cells: list, store, *, progress: bool = True, log=print, fail_fast: bool = False,
              g: GridSpec | None = None, deadline: float | None = None, on_result=None) -> list[CellResult]:
    """Run the cells one after another, in order, with one exception: a cell one of whose long stages another
    process is computing at that moment (two grids on one work dir, e.g. one per core) is put back once behind
    the remaining cells instead of idling on that stage's lock; when it comes round again it runs, waiting for the
    lock if it is still held (by then the stage is usually finished and cached).  Needs ``g`` (the plan).

    With ``deadline`` (epoch seconds; needs ``g``) a cell is started only if the plan says it finishes in time
    (:func:`fits`), else it is returned with ``skipped`` set.  ``on_result`` is called with each finished cell's
    result as soon as it finishes (``--publish``).  The results come back in the cells' order."""
    n = len(cells)
    queue = list(enumerate(cells, 1))
    put_back: set[int] = set()
    out: dict[int, CellResult] = {}
    while queue:
        i, spec = queue.pop(0)
        cp = None
        if g is not None:
            try:
                cp = plan(g, store, [spec]).cells[0]
            except SddBenchError:  # not planned: fits() re-plans and raises under a deadline, else the cell fails below
                pass
        if cp is not None and queue and i not in put_back:
            held = busy(cp, store)
            if held is not None:
                log(f"[{i}/{n}] {label(spec)}: put back behind the other cells ({held} is being computed by another "
                    f"process)")
                put_back.add(i)
                queue.append((i, spec))
                continue
        if deadline is not None:
            why = fits(g, spec, store, deadline, cp)
            if why is not None:
                log(f"[{i}/{n}] {label(spec)}: not started ({why})")
                out[i] = CellResult(spec, None, None, False, skipped=why)
                continue
        log(f"[{i}/{n}] {label(spec)}")
        try:
            res = _run_one(spec, store, progress, log)
        except Exception as err:  # one broken cell must not cost the rest of an unattended grid
            if fail_fast:
                raise
            log(f"  FAILED: {type(err).__name__}: {err}")
            if not isinstance(err, SddBenchError):  # a bug, not a bad input: keep where it happened
                log("".join(traceback.format_exception(err)).rstrip())
            out[i] = CellResult(spec, None, None, False, error=f"{type(err).__name__}: {err}")
            continue
        log(f"  {'finished earlier' if res.cached else 'done'} ({res.seconds:.1f}s) -> {res.record_ref}")
        out[i] = res
        if on_result is not None:
            on_result(res)
    return [out[i] for i in sorted(out)]


def _ray_cell(spec_dict: dict, workdir: str, threads: int, *deps) -> tuple[str, bool]:
    """Body of one Ray task: run (or find) one cell in the shared store; returns (record ref, was finished)."""
    import torch
    torch.set_num_threads(max(1, threads))
    from .pipeline import spec_from_mapping
    from .store import Store
    res = _run_one(spec_from_mapping(spec_dict, where="ray task"), Store(workdir), False, lambda *_: None)
    return res.record_ref, res.cached


def _ray_model(name: str, workdir: str) -> str:
    from . import models
    from .store import Store
    return models.materialize(name, Store(workdir), seed=0).key


def run_ray(cells: list, store, g: GridSpec, *, log=print, on_result=None) -> list[CellResult]:
    """One Ray task per stage group: each base model once, then each defended model (its no-attack cell:
    defense + initial evaluation), then every attacked cell depending on its defended model.  Tasks request
    ``cpus_per_cell`` CPUs and, on the paper profile or with ``gpus_per_cell``, GPUs; the scheduler is Ray's."""
    try:
        import ray
    except ImportError as err:
        raise SddBenchError("executor 'ray' needs Ray: `pip install 'sdd-bench[ray]'`.") from err
    from . import config as C_
    from .pipeline import resolve
    opts = dict(g.ray)
    unknown = set(opts) - {"address", "num_cpus", "cpus_per_cell", "gpus_per_cell"}
    if unknown:
        raise ConfigError(f"grid {g.name!r}: unknown ray options {sorted(unknown)}; "
                          f"valid: address, num_cpus, cpus_per_cell, gpus_per_cell.")
    gpus = float(opts.get("gpus_per_cell", 1 if g.profile == "paper" else 0))
    cpus = float(opts.get("cpus_per_cell", 1))
    env = {k: v for k, v in os.environ.items()
           if k.startswith(("SDD_BENCH_", "HF_", "TRANSFORMERS_", "TOKENIZERS_", "OPENAI_"))}
    if not ray.is_initialized():
        init = {"address": opts["address"]} if opts.get("address") else {"num_cpus": opts.get("num_cpus")}
        ray.init(**init, include_dashboard=False, log_to_driver=False, runtime_env={"env_vars": env})
    workdir = str(store.root)
    cell_task = ray.remote(_ray_cell).options(num_cpus=cpus, num_gpus=gpus, max_retries=0)
    model_task = ray.remote(_ray_model).options(num_cpus=cpus, max_retries=0)
    threads = int(max(1, cpus))

    model_refs: dict[str, Any] = {}
    defended: dict[str, Any] = {}
    futures = []
    for spec in cells:
        r = resolve(spec)
        if r.model not in model_refs:
            model_refs[r.model] = model_task.remote(r.model, workdir)
        base = C_.replace(spec, attack="none", attack_options={})
        bkey = json.dumps(C_.to_dict(base), sort_keys=True)
        if bkey not in defended:
            defended[bkey] = cell_task.remote(C_.to_dict(base), workdir, threads, model_refs[r.model])
        if spec.attack == "none" and not spec.attack_options:
            futures.append(defended[bkey])
        else:
            futures.append(cell_task.remote(C_.to_dict(spec), workdir, threads, defended[bkey]))
    log(f"ray: {len(model_refs)} model task(s), {len(defended)} defended-model task(s), {len(futures)} cells "
        f"({cpus:g} CPU, {gpus:g} GPU per task)")
    out = []
    for spec, fut in zip(cells, futures):
        t0 = time.time()
        try:
            ref, cached = ray.get(fut)
        except Exception as err:  # a RayTaskError wraps the cell's own exception
            cause = getattr(err, "cause", None) or err  # Ray's RayTaskError carries the cell's exception (others: none)
            log(f"  FAILED {label(spec)}: {type(cause).__name__}: {str(cause).splitlines()[0] if str(cause) else ''}")
            out.append(CellResult(spec, None, None, False, error=f"{type(cause).__name__}: {cause}"))
            continue
        rec = store.resolve(ref)
        out.append(CellResult(spec, json.loads((rec.path / "record.json").read_text()), ref, cached,
                              seconds=time.time() - t0))
        log(f"  {label(spec)}: {'finished earlier' if cached else 'done'} -> {ref}")
        if on_result is not None:
            on_result(out[-1])
    return out


def run_grid(g: GridSpec, store, *, executor: str | None = None, progress: bool = True, log=print,
             fail_fast: bool = False, deadline: float | None = None, on_result=None,
             published: dict | None = None) -> list[CellResult]:
    """Run the grid's cells that are not finished.  ``published`` (harness.publish.published_cells): a cell whose
    record is already published is not run (nor re-published); its published record is its result."""
    from .pipeline import cell_key, finished_record, resolve
    cells = expand(g)
    ex = executor or g.executor
    if ex not in ("local", "ray"):
        raise ConfigError(f"Unknown executor {ex!r}; choose local or ray.")
    if ex == "ray" and deadline is not None:
        raise ConfigError("--until/--max-minutes need the local executor (Ray schedules every cell at once).")
    found: dict[int, CellResult] = {}
    for i, spec in enumerate(cells):
        r = resolve(spec) if published else None
        hit = published.get(cell_key(r)) if published else None
        if hit is not None and finished_record(store, r) is None:  # finished here: the store's full record
            rec, path = hit
            found[i] = CellResult(spec, rec, (rec.get("published") or {}).get("record"), True, published=str(path))
            log(f"{label(spec)}: already published -> {path}")
    rest = [spec for i, spec in enumerate(cells) if i not in found]
    if ex == "local":
        ran = run_local(rest, store, progress=progress, log=log, fail_fast=fail_fast, g=g, deadline=deadline,
                        on_result=on_result)
    else:
        ran = run_ray(rest, store, g, log=log, on_result=on_result)
    it = iter(ran)
    return [found[i] if i in found else next(it) for i in range(len(cells))]


def records_of_grid(path: str | Path, workdir: str | Path) -> list[dict]:
    """Records of the grid's finished cells in ``workdir`` (for ``sdd-bench report``); unfinished cells are skipped."""
    from .pipeline import finished_record, resolve
    from .store import Store
    store = Store(workdir)
    store.check_no_legacy()
    out = []
    for spec in expand(load_grid(path), where=str(path)):
        done = finished_record(store, resolve(spec))
        if done is not None:
            out.append(done[0])
    return out


# ------------------------------------------------------------------------------------------
# CLI
def register_cli(sub, add_common) -> dict:
    p = sub.add_parser("grid", help="run a grid spec (models × defenses × attacks × seeds): plan, run missing cells, resume",
                       description="Expand a grid YAML into cells, show the plan (finished, cached, estimated time), run the "
                                   "missing cells. Kill it at any point and re-run: finished stages are not redone.")
    p.add_argument("spec", help="grid YAML (e.g. configs/sdd_grid_smoke.yaml)")
    p.add_argument("--plan", action="store_true", help="show the plan and exit")
    p.add_argument("--all-rows", action="store_true",
                   help=f"print every row of the plan table (default: the first {PLAN_ROWS})")
    p.add_argument("--yes", action="store_true",
                   help=f"run a grid of more than {CONFIRM_CELLS} cells (refused without it)")
    p.add_argument("--attacker-budget", metavar="NAME", help="expand each fine-tuning attack into an attacker budget's "
                   "sweep: small | paper | strong (overrides the spec's attacker_budget; docs/attacker_budget.md)")
    p.add_argument("--executor", choices=("local", "ray"), help="override the spec's executor")
    p.add_argument("--ray-address", help="connect to this Ray cluster (default: start a local Ray instance)")
    p.add_argument("--fail-fast", action="store_true", help="stop at the first failing cell (default: run the others)")
    p.add_argument("--records", help="write the grid's records here as JSON lines")
    dl = p.add_mutually_exclusive_group()
    dl.add_argument("--until", metavar="HH:MM",
                    help="deadline, local time today: start no cell the plan says cannot finish by then; exit 0")
    dl.add_argument("--max-minutes", type=float, metavar="N",
                    help="deadline N minutes from now (as --until)")
    p.add_argument("--publish", nargs="?", const="results", metavar="ROOT",
                   help="publish each cell's record as it finishes into ROOT/<profile>/ (default ROOT: results, "
                        "relative to the current directory; see `sdd-bench publish`); a cell whose record is already "
                        "published there (same configs, same base model build) counts as finished and is not run")
    p.add_argument("--allow-dirty", action="store_true",
                   help="with --publish: publish records made from uncommitted code too (environment.git ending in "
                        "-dirty, or missing), marked published.forced_dirty (default: refused; see `sdd-bench publish`)")
    add_common(p)
    return {"grid": cli_grid}


def budget_line(g: GridSpec, pl: Plan) -> str:
    """What the grid's attacker budget adds: its configurations per attack and the planned cost of the budget's cells."""
    from . import budget
    b = budget.get(g.attacker_budget)
    swept = [c for c in pl.cells if c.spec.attack != "none"]
    est = [c.estimate_s for c in swept if c.state != "done"]
    cost = "unknown (no timing for this profile yet)" if any(v is None for v in est) else _fmt_s(float(sum(est)))
    return (f"attacker budget {g.attacker_budget!r}: {b.size} configurations per fine-tuning attack ({b.shape()}); "
            f"{len(swept)} attacked cells, estimated remaining compute of those cells (with their defenses) {cost}")


def parse_deadline(until: str | None, max_minutes: float | None, now: float | None = None) -> float | None:
    """``--until HH:MM`` (local time today) or ``--max-minutes N`` → epoch seconds; None without either."""
    now = time.time() if now is None else now
    if max_minutes is not None:
        if not math.isfinite(max_minutes) or max_minutes <= 0:
            raise ConfigError(f"--max-minutes must be a positive number of minutes, got {max_minutes:g}.")
        return now + 60.0 * max_minutes
    if until is None:
        return None
    try:
        hh, mm = until.split(":")
        h, m = int(hh), int(mm)
        if not (0 <= h < 24 and 0 <= m < 60):
            raise ValueError
    except ValueError:
        raise ConfigError(f"--until {until!r}: give a local time today as HH:MM (e.g. 17:30).") from None
    lt = time.localtime(now)
    t = time.mktime((lt.tm_year, lt.tm_mon, lt.tm_mday, h, m, 0, 0, 0, -1))
    if t <= now:
        raise ConfigError(f"--until {until}: that time has already passed today (now {time.strftime('%H:%M', lt)} "
                          f"local time); give a later time or --max-minutes.")
    return t


def preflight_cells(cells: list, what: str = "grid: checked") -> None:
    """:func:`pipeline.preflight` of every cell (data files and checksums, prompt overlaps, judges' data and
    credentials), reporting progress on a large grid; the first problem is raised in one line naming the cell."""
    from .pipeline import preflight, resolve
    prog = Progress(what, len(cells))
    for i, spec in enumerate(cells, 1):
        try:
            preflight(resolve(spec))
        except SddBenchError as err:
            raise type(err)(f"cell {label(spec)}: {err}") from None
        prog(i)
    prog.done(len(cells))


def cli_grid(args) -> int:
    from .store import Store, check_output_dir, check_output_file
    t0 = time.time()
    deadline = parse_deadline(args.until, args.max_minutes, now=t0)  # a bad deadline before minutes of expansion
    cells: list = []
    g = load_grid(args.spec, cells_out=cells, progress=Progress(f"{args.spec}: expanded"))
    if args.attacker_budget:  # --attacker-budget (register_cli)
        from . import budget
        budget.get(args.attacker_budget)
        g = C.replace(g, attacker_budget=args.attacker_budget)
        cells = expand(g, where=str(args.spec), progress=Progress(f"{args.spec}: expanded"))
    if args.ray_address:
        g = C.replace(g, ray={**g.ray, "address": args.ray_address}, executor="ray")
    if len(cells) > CONFIRM_CELLS and not args.plan and not args.yes:
        raise ConfigError(f"{args.spec}: the grid has {len(cells):,} cells, more than {CONFIRM_CELLS}; look at "
                          f"`sdd-bench grid {args.spec} --plan` first, then run it with --yes.")
    store = Store(args.workdir)
    store.check_no_legacy()  # even for --plan: planning reads artifacts, and a legacy one would be moved aside
    if not args.plan:  # outputs first: one line now rather than a failure after the first cell
        store.check_writable()
        if args.publish:
            check_output_dir(Path(args.publish) / g.profile, "--publish")
        if args.records:
            check_output_file(args.records, "--records")
    published = None
    if args.publish:
        from .publish import published_cells
        published = published_cells(args.publish, g.profile)
    prog = Progress(f"{args.spec}: planned", len(cells))
    pl = plan(g, store, cells=cells, published=published, progress=prog)
    prog.done(len(cells))
    if g.attacker_budget:
        print(budget_line(g, pl))
    print(pl.summary())
    print(pl.stage_line())
    print(pl.table(max_rows=None if args.all_rows else PLAN_ROWS))
    if args.plan:
        return 0
    preflight_cells([c.spec for c in pl.cells if c.state not in FINISHED])  # every cell's inputs before any work
    if args.publish and not args.allow_dirty:
        from .provenance import from_commit, git_hash
        git = git_hash()
        if not from_commit(git):  # every record this run builds would be refused: say so before hours of training
            print(f"grid: the code has uncommitted changes ({git or 'no git checkout'}): the records of the cells run "
                  f"now will not be published (`--publish` refuses them); commit first, or pass --allow-dirty",
                  file=sys.stderr)
    publish_failed: list[str] = []

    def publish(res: CellResult) -> None:
        from .publish import publish_record
        try:
            p = publish_record(res.record, res.record_ref, args.publish, store_root=store.root,
                               allow_dirty=args.allow_dirty)
        except (SddBenchError, OSError) as err:
            publish_failed.append(f"{label(res.spec)}: {err}")
            print(f"  publish FAILED: {err}", file=sys.stderr)
            return
        print(f"  {'published' if p.changed else 'already published'} -> {p.path}")

    if deadline is not None:
        print(f"deadline {time.strftime('%H:%M', time.localtime(deadline))} local time: a cell starts only if its "
              f"planned time fits")
    results = run_grid(g, store, executor=args.executor, progress=not args.quiet, fail_fast=args.fail_fast,
                       deadline=deadline, on_result=publish if args.publish else None, published=published)
    return _grid_outcome(args, g, results, t0, deadline, publish_failed)


def _grid_outcome(args, g: GridSpec, results: list, t0: float, deadline: float | None,
                  publish_failed: list[str]) -> int:
    """What ``grid`` prints after the run (cells finished, skipped by the deadline, failed), the ``--records`` file,
    and its exit status (1 when a cell or a publication failed)."""
    from .store import dumps_strict
    failed = [r for r in results if r.error]
    skipped = [r for r in results if r.skipped]
    dt = time.time() - t0
    n = len(results)
    npub = sum(r.published is not None for r in results)
    pub_s = f" ({npub} of them published under {args.publish})" if npub else ""
    print(f"\ngrid {g.name!r}: {n - len(failed) - len(skipped)}/{n} cells finished, {sum(r.cached for r in results)} "
          f"were already finished{pub_s}; {dt:.1f}s wall ({dt / max(1, n):.2f}s per cell)")
    if skipped:
        print(f"deadline: {len(skipped)} cell(s) not started because the plan says they cannot finish by "
              f"{time.strftime('%H:%M', time.localtime(deadline))}; re-run the same command later to continue:")
        for r in skipped:
            print(f"  not started: {label(r.spec)} ({r.skipped})")
    if args.records:
        with open(args.records, "w") as f:
            for r in results:
                if r.record is not None:
                    f.write(dumps_strict(r.record, sort_keys=True) + "\n")
    for r in failed:
        print(f"FAILED {label(r.spec)}: {r.error}", file=sys.stderr)
    for line in publish_failed:
        print(f"PUBLISH FAILED {line}", file=sys.stderr)
    return 1 if failed or publish_failed else 0
