"""`torchrest optimize`: every candidate measured on this machine, the unfaithful rejected, the fastest
faithful one written as a model folder the server loads.

    model (fp32 torch, its tasks) -> reference answers on the held-out set (read as the server reads them)
    for each candidate: skip (why) | build -> answers -> each task's gate -> speed per batch size | failed (why)
    -> choose the fastest within the bounds -> <out>/<model>/{config.json, labels.txt, 1/model.*, report.*}
"""

from __future__ import annotations

import datetime as dt
import gc
import logging
import os
import platform
import shutil
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from importlib import metadata
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from torchrest.backends import Backend, open_backend, resolve_device
from torchrest.backends.inputs import FirstOutputs
from torchrest.config import OptimizeConfig
from torchrest.errors import StartupError, first_line
from torchrest.models.common import LoadedModel
from torchrest.models.registry import load_model, probe
from torchrest.models.repository import CONFIG_FILE, ModelConfig, latest_version
from torchrest.optimize.candidates import CANDIDATE_NAMES, CANDIDATES, REFERENCE, Built, Candidate, Context
from torchrest.optimize.gates import Gate, TaskAnswers
from torchrest.optimize.measure import Speed, measure
from torchrest.optimize.report import FAILED, OK, REJECTED, SKIPPED, CandidateResult, Report, write_report
from torchrest.optimize.samples import SampleSets, sample_sets
from torchrest.optimize.serving import LayoutResult, choose_layout, measure_layouts
from torchrest.tasks import Task
from torchrest.tasks.registry import Heads, spec_of, tasks_named

log = logging.getLogger("torchrest.optimize")

VERSION_DIR = "1"


@dataclass(frozen=True, slots=True)
class Outcome:
    folder: Path
    report: Report


def optimize(config: OptimizeConfig) -> Outcome:
    """Raises StartupError (one line, exit 2) for input the run cannot start from."""
    try:
        config.validate()
    except ValueError as exc:
        raise StartupError(str(exc)) from None
    calibration = config.calibration
    assert calibration is not None
    wanted = _wanted(config.candidates)
    device = resolve_device(config.device)
    out = _writable(config.out)
    config, name = _from_folder(config)
    model = load_model(config, device)
    model.name = name or model.name
    if model.module is None:
        raise StartupError(f"{config.model} has no torch module to optimize: bring it as a .pt2 (torch.export)")
    tasks = tasks_named(config.task)
    if model.for_tasks != tasks:  # a built-in classifier also embeds: what --task names is what is optimized
        model.for_tasks, model.heads = tasks, Heads.bind(tasks, probe(model, device), model.input_spec.size)
    assert model.heads is not None  # bound to its outputs as it loaded
    spec = model.input_spec
    samples = sample_sets(calibration, spec, config.calibration_samples, config.fidelity_samples, model.labels)
    try:
        bounds = config.bound_values(tasks)
    except ValueError as exc:
        raise StartupError(str(exc)) from None
    _check_bounds(config, tasks, bounds, samples.labelled > 0)
    threads = config.total_threads
    torch.set_num_threads(threads)
    gate = Gate(model.heads, bounds, samples.held_out_labels if samples.labelled else None)
    batch_sizes = config.batch_size_list(spec.size[0] * spec.size[1])

    with tempfile.TemporaryDirectory(prefix=".optimize-", dir=out) as scratch:
        work = Path(scratch)
        ctx = Context(
            FirstOutputs(model.module, model.heads.read),  # what its tasks read: a built-in also gives features
            spec.size,
            device,
            threads,
            work,
            samples.calibration,
            gate,
            samples.held_out,
            model.heads.read,
        )
        results, artifacts, reference = _run_candidates(ctx, wanted, samples, batch_sizes, config.seconds_per_point)
        fastest = _fastest(results)
        layouts = _search_layouts(results, artifacts, fastest, samples, model, device, threads, batch_sizes, config)
        chosen = next(r for r in results if r.name == layouts_chosen(layouts).candidate) if layouts else fastest
        chosen.chosen = True
        report = Report(
            model=model.name,
            device=device,
            threads=threads,
            machine=_machine(),
            versions=_versions(),
            batch_sizes=batch_sizes,
            tasks=list(model.tasks),
            bounds=bounds,
            samples={
                "photos": samples.photos,
                "unreadable": samples.unreadable,
                "calibration": len(samples.calibration),
                "held_out": len(samples.held_out),
                "split": samples.split,
                "labelled_held_out": samples.labelled,
                "unlabelled_folders": samples.unlabelled_folders,
            },
            candidates=results,
            created=dt.datetime.now().isoformat(timespec="seconds"),
            chosen=chosen.name,
            notes=_notes(model, gate, reference),
            mixed_int8={runtime: search.to_dict() for runtime, search in ctx.mixed.items()},
            objective=config.objective,
            layouts=layouts,
        )
        folder = _write_model_folder(out, work, model, report, chosen, artifacts[chosen.name])
    return Outcome(folder=folder, report=report)


def _run_candidates(
    ctx: Context, wanted: set[str], samples: SampleSets, batch_sizes: list[int], seconds: float
) -> tuple[list[CandidateResult], dict[str, Built], TaskAnswers]:
    results: list[CandidateResult] = []
    artifacts: dict[str, Built] = {}  # what each candidate that ran would put in the model folder
    reference: TaskAnswers | None = None
    reference_best: float | None = None
    progress = tqdm(CANDIDATES, desc="optimize", unit="candidate", dynamic_ncols=True)
    for candidate in progress:
        result = CandidateResult(candidate.name, candidate.precision, candidate.route, candidate.name in wanted)
        results.append(result)
        reason = candidate.unavailable(ctx)
        if not reason and not result.contender and candidate.name != REFERENCE:
            reason = "not named in --candidates"
        if reason:
            result.status, result.reason = SKIPPED, reason
            progress.write(f"  {candidate.name:<22} skipped: {reason}")
            continue

        def step(text: str, name: str = candidate.name) -> None:
            progress.set_postfix_str(f"{name}: {text}")

        ctx.progress = step

        try:
            built, answers, speed, result.build_s = _trial(candidate, ctx, samples.held_out, batch_sizes, seconds, step)
        except Exception as exc:  # noqa: BLE001 - a candidate that crashes is reported, and the rest go on
            result.status, result.reason = FAILED, f"{type(exc).__name__}: {first_line(exc)}"
            log.debug("candidate %s failed", candidate.name, exc_info=True)
            progress.write(f"  {candidate.name:<22} failed: {result.reason}")
            if candidate.name == REFERENCE:
                raise StartupError(f"the fp32 reference cannot run this model: {result.reason}") from None
            continue
        finally:
            gc.collect()
        artifacts[candidate.name] = built
        result.detail = built.detail
        reference = answers if reference is None else reference
        reference_best = reference_best or speed.best_throughput
        result.verdicts = ctx.gate.judge(reference, answers)
        result.throughput = speed.throughput
        result.best_throughput = speed.best_throughput
        result.best_batch_size = speed.best_batch_size
        result.latency_bs1_ms = speed.latency_bs1_ms
        result.speedup = speed.best_throughput / reference_best
        failed = [verdict.reason for verdict in result.verdicts if not verdict.passed]
        result.status, result.reason = (REJECTED, "; ".join(failed)) if failed else (OK, "")
        measures = ", ".join(
            f"{heading} {value}" for verdict in result.verdicts for heading, value in verdict.figures.items()
        )
        progress.write(
            f"  {candidate.name:<22} {result.status:<8} {speed.best_throughput:7.1f} img/s (batch "
            f"{speed.best_batch_size}), {result.speedup:.2f}x eager, batch-1 {speed.latency_bs1_ms:.1f} ms, "
            f"{measures}"
        )
    progress.close()
    assert reference is not None  # the reference either ran or raised
    return results, artifacts, reference


def _search_layouts(
    results: list[CandidateResult],
    artifacts: dict[str, Built],
    fastest: CandidateResult,
    samples: SampleSets,
    model: LoadedModel,
    device: str,
    threads: int,
    batch_sizes: list[int],
    config: OptimizeConfig,
) -> list[LayoutResult]:
    """The served layouts of the fastest faithful candidate and the runner-up, one chosen by the objective
    (which may be the runner-up's: the served path decides). None on a GPU: one instance owns the device."""
    if device != "cpu":
        return []
    faithful = sorted(
        (r for r in results if r.status == OK and r.contender and r.best_throughput and r is not fastest),
        key=lambda r: -(r.best_throughput or 0.0),
    )
    measured: list[LayoutResult] = []
    progress = tqdm([fastest, *faithful[:1]], desc="served layouts", unit="candidate", dynamic_ncols=True, leave=False)

    def layouts(result: CandidateResult, caps: list[int], baseline: bool = False) -> list[LayoutResult]:
        built = artifacts[result.name]
        options = {"precision": result.precision, "name": result.name, **built.options}

        def opener(count: int, instances: int) -> Backend:
            streams = {"streams": str(instances)}
            return open_backend(built.kind, built.artifact, device=device, threads=count, options=options | streams)

        step = _step(progress, result.name)
        return measure_layouts(
            result.name,
            opener,
            model.for_tasks,
            model.input_spec,
            samples.files,
            threads,
            caps,
            config.seconds_per_point,
            step,
            baseline,
        )

    for result in progress:
        measured += layouts(result, batch_sizes)
    reference = next(r for r in results if r.name == REFERENCE)
    if fastest is not reference and reference.best_batch_size:
        measured += layouts(reference, [reference.best_batch_size], baseline=True)
    progress.close()
    best = choose_layout(measured, config.objective)
    for layout in measured:
        mark = (
            " (chosen)" if layout.chosen else " (the reference as served without a layout)" if layout.baseline else ""
        )
        tqdm.write(
            f"  {layout.candidate:<22} {layout.instances} x {layout.threads} threads, batch cap "
            f"{layout.max_batch_size:<3} {layout.throughput:7.1f} img/s, lone request p50 {layout.p50_ms:.1f} ms{mark}"
        )
    log.info("served layout: %s %s", best.candidate, best.layout.describe())
    return measured


def _step(progress: tqdm, name: str) -> Callable[[str], None]:
    return lambda text: progress.set_postfix_str(f"{name}: {text}")


def layouts_chosen(layouts: list[LayoutResult]) -> LayoutResult:
    return next(layout for layout in layouts if layout.chosen)


def _trial(
    candidate: Candidate,
    ctx: Context,
    held_out: np.ndarray,
    batch_sizes: list[int],
    seconds: float,
    step: Callable[[str], None],
) -> tuple[Built, TaskAnswers, Speed, float]:
    """Build the candidate, answer the held-out set, time it; only the artifact outlives the call."""
    step("building")
    started = time.perf_counter()
    built = candidate.build(ctx)
    backend = built.backend
    assert backend is not None
    backend.prepare_thread()
    build_s = time.perf_counter() - started
    step(f"fidelity on {len(held_out)} inputs")
    answers = ctx.gate.run(backend.run, held_out)
    speed = measure(backend.run, held_out, batch_sizes, seconds, on_point=lambda size: step(f"batch {size}"))
    return replace(built, backend=None), answers, speed, build_s


def _fastest(results: list[CandidateResult]) -> CandidateResult:
    """The fastest faithful contender; the reference when no contender is faithful (it always is)."""
    faithful = [r for r in results if r.status == OK and r.contender and r.best_throughput]
    if faithful:
        return max(faithful, key=lambda r: r.best_throughput or 0.0)
    log.warning("no candidate named in --candidates met the fidelity bound: writing the fp32 reference")
    return next(r for r in results if r.name == REFERENCE)


def _write_model_folder(
    out: Path, work: Path, model: LoadedModel, report: Report, chosen: CandidateResult, built: Built
) -> Path:
    """Stage the folder in the scratch space, then swap it in for any earlier one in a single rename."""
    staged = work / "staged"
    (staged / VERSION_DIR).mkdir(parents=True)
    artifact = f"{VERSION_DIR}/model{built.artifact.suffix}"
    shutil.copyfile(built.artifact, staged / artifact)
    for name, path in built.companions.items():
        shutil.copyfile(path, staged / VERSION_DIR / name)
    if model.labels:  # a detector's or segmenter's classes may have no names
        (staged / "labels.txt").write_text("\n".join(model.labels) + "\n")
    spec = model.input_spec
    height, width = spec.size
    verdicts = [verdict.summary() for verdict in chosen.verdicts]
    ModelConfig(
        name=model.name,
        backend=built.kind,
        artifact=artifact,
        precision=chosen.precision,
        crop_size=height if height == width else spec.crop_size,
        resize_size=spec.resize_size,
        task=",".join(spec_of(task) for task in model.for_tasks),  # how each is named again (torchrest.tasks.registry)
        input_size=None if height == width else f"{height}x{width}",
        resize=spec.resize,
        normalize=spec.normalize,
        fill=spec.fill,
        fidelity=verdicts[0],
        fidelity_other_tasks=verdicts[1:],
        speedup_vs_eager=round(_speedup(chosen, report), 3),
        candidate=chosen.name,
        batch_sizes=tuple(report.batch_sizes),
        best_batch_size=(
            layouts_chosen(report.layouts).max_batch_size if report.layouts else chosen.best_batch_size or 1
        ),
        threads=report.threads,
        backend_options=built.options,
        source=model.source,
        layout=layouts_chosen(report.layouts).layout.to_dict() if report.layouts else None,
        objective=report.objective if report.layouts else "",
        measured=_both_ends(chosen, report),
    ).write(staged / CONFIG_FILE)
    write_report(report, staged)
    folder = out / model.name
    retired = work / "retired"
    if folder.exists():
        folder.rename(retired)
    staged.rename(folder)
    return folder


def _speedup(chosen: CandidateResult, report: Report) -> float:
    """What the folder serves against torch eager: the chosen served layout's img/s over the reference's served
    as serve runs a model without a layout (measured side by side), else the best batch's img/s over eager's."""
    baseline = next((layout for layout in report.layouts if layout.baseline), None)
    if report.layouts and baseline is not None:
        return layouts_chosen(report.layouts).throughput / baseline.throughput
    if report.layouts and chosen.name == REFERENCE:
        return 1.0
    return chosen.speedup or 1.0


def _both_ends(chosen: CandidateResult, report: Report) -> dict[str, float]:
    """What config.json records of the latency and the throughput end, for the candidate written."""
    measured = {"batch1_ms_all_cores": round(chosen.latency_bs1_ms or 0.0, 2)}
    if report.layouts:
        served = layouts_chosen(report.layouts)
        measured |= {"lone_request_p50_ms": round(served.p50_ms, 2), "throughput": round(served.throughput, 1)}
    else:
        measured["throughput"] = round(chosen.best_throughput or 0.0, 1)
    return measured


def _notes(model: LoadedModel, gate: Gate, reference: TaskAnswers) -> list[str]:
    notes = []
    if not model.pretrained:
        notes.append(f"{model.name} has random weights: agreement with the reference says little about a trained model")
    return notes + gate.notes(reference)


def _check_bounds(
    config: OptimizeConfig, tasks: tuple[Task, ...], bounds: dict[str, float | None], labelled: bool
) -> None:
    """A bound that switches a gate's way of judging (one given that is optional) must be one of the model's
    tasks'; and each gate says whether it can judge these inputs (StartupError, one line, otherwise)."""
    mine = {bound.name for task in tasks for bound in task.fidelity.bounds}
    for name, _ in config.bounds:
        if name not in mine:
            flag = "--" + name.replace("_", "-")
            raise StartupError(
                f"{flag} bounds a task this model does not serve: it serves {', '.join(t.name for t in tasks)}"
            )
    for task in tasks:
        reason = task.fidelity.check(bounds, labelled)
        if reason:
            raise StartupError(reason)


def _from_folder(config: OptimizeConfig) -> tuple[OptimizeConfig, str]:
    """A model folder (config.json beside its artifact) -> the options that load its artifact as it is served:
    its task, input and labels; and its name. Anything else as it was."""
    folder = Path(config.model or "")
    if not (folder.is_dir() and (folder / CONFIG_FILE).is_file()):
        return config, ""
    try:
        saved = ModelConfig.read(folder / CONFIG_FILE)
        height, width = saved.input_spec.size
    except ValueError as exc:
        raise StartupError(str(exc)) from None
    _, artifact = latest_version(folder, Path(saved.artifact))
    labels = folder / saved.labels
    return replace(
        config,
        model=str(artifact),
        task=saved.task,
        input_size=f"{height}x{width}",
        resize=saved.resize,
        resize_size=saved.resize_size,
        normalize=saved.normalize,
        labels=labels if labels.is_file() else config.labels,
    ), saved.name


def _wanted(text: str) -> set[str]:
    if text.strip() in {"", "all"}:
        return set(CANDIDATE_NAMES)
    names = {name.strip() for name in text.split(",") if name.strip()}
    unknown = sorted(names - set(CANDIDATE_NAMES))
    if unknown:
        raise StartupError(f"unknown candidate {', '.join(unknown)}: choose from {', '.join(CANDIDATE_NAMES)}")
    return names


def _writable(out: Path) -> Path:
    try:
        out.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=out):
            pass
    except OSError as exc:
        raise StartupError(f"cannot write to output folder {out}: {exc.strerror or exc}") from None
    return out


def _machine() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    gpu = f", {torch.cuda.get_device_name()}" if torch.cuda.is_available() else ""
    return f"{cpu} ({cores} cores){gpu}"


def _versions() -> dict[str, str]:
    versions = {}
    for package in ("torchrest", "torch", "onnxruntime", "openvino", "onnx", "torch_tensorrt"):
        try:
            versions[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            continue
    return versions
