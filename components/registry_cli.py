"""`askd register` and `askd registry ...`: the CLI face of the S3 model registry (docs/registry.md).

Thin: load settings, call components.registry / registry_ops, print. Errors are one ``error:`` line;
exit codes: 1 failure, 2 bad usage/settings, 3 lost a concurrent write (conflict), 4 integrity (checksum).
boto3 is imported only when a command runs.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Annotated, Any

import typer

registry_app = typer.Typer(help="The S3 model registry: versions, aliases, pull, verify.", no_args_is_help=True)

EXIT_FAILED, EXIT_CONFLICT, EXIT_INTEGRITY = 1, 3, 4


def _cli():
    from components import cli  # late: components.cli imports this module

    return cli


def _guard(what: str, fn, *args, **kwargs) -> Any:
    """Run ``fn``; map expected failures to one ``error:`` line and an exit code."""
    from components.registry_store import ConflictError, IntegrityError

    cli = _cli()
    try:
        return fn(*args, **kwargs)
    except (ValueError, OSError) as err:  # RegistryError is a ValueError; S3 failures arrive as OSError
        if os.environ.get("ASKD_DEBUG"):
            raise
        code = EXIT_CONFLICT if isinstance(err, ConflictError) else EXIT_INTEGRITY if isinstance(
            err, IntegrityError) else EXIT_FAILED
        cli.fail(f"{what}: {' '.join(str(err).split())} (set ASKD_DEBUG=1 for a traceback)", code=code)


def _echo_json(data: Any) -> None:
    typer.echo(json.dumps(data, indent=2, sort_keys=True, default=str))


def register_command(force: bool = False, reason: str | None = None, version: int | None = None) -> None:
    """`askd register`: register the current model now (ignores registry.enabled; the gate still applies)."""
    from components.registry import register

    cfg = _cli().settings()
    result = _guard("register", register, cfg, force=force, reason=reason, version=version)
    _cli().console.print(f"[green]registered version {result['version']}[/]" if result.get("registered")
                         else f"[yellow]not registered: {result.get('reason')}[/]")
    _echo_json(result)


def register_stage_command() -> None:
    """`askd stage register`: the DVC stage (skips cleanly when disabled or the gate blocked)."""
    from components.registry import register_stage

    cfg = _cli().settings()
    result = _guard("register", register_stage, cfg)
    if not result.get("registered"):
        _cli().console.print(f"[yellow]register skipped: {result.get('reason')}[/]")
    _echo_json(result)


@registry_app.command("list")
def list_cmd(as_json: Annotated[bool, typer.Option("--json", help="print JSON.")] = False) -> None:
    """List complete versions (those with a manifest) and the aliases pointing at them."""
    from components.registry_ops import list_versions

    cfg = _cli().settings().registry
    rows = _guard("registry list", list_versions, cfg)
    if as_json:
        _echo_json(rows)
        return
    if not rows:
        typer.echo(f"no versions of {cfg.model_name} in s3://{cfg.bucket}/{cfg.prefix}")
    for r in rows:
        gate = "gate passed" if r["gate_passed"] else ("FORCED (gate failed)" if r["forced"] else "gate failed")
        aliases = f"  [{', '.join(r['aliases'])}]" if r["aliases"] else ""
        typer.echo(f"{r['version']:>4}  {r['created_at']}  {r['files']:>4} files  {r['bytes']:>12} B  {gate}{aliases}")


@registry_app.command("show")
def show_cmd(version: Annotated[str, typer.Argument(help="version number, or an alias name.")]) -> None:
    """Print a version's manifest (files with sha256, gate, lineage) as JSON."""
    from components.registry_ops import resolve, show

    cfg = _cli().settings().registry
    number = _guard("registry show", resolve, cfg, version)
    _echo_json(_guard("registry show", show, cfg, number))


@registry_app.command("promote")
def promote_cmd(
    version: Annotated[int, typer.Argument(help="version number to promote.")],
    alias: Annotated[str, typer.Option("--alias", help="alias to point at it (staging, production, any name).")],
    reason: Annotated[str | None, typer.Option(help="why (kept in the alias history).")] = None,
) -> None:
    """Point an alias at a version (conditional write: a concurrent change makes this fail, exit 3)."""
    from components.registry_ops import promote

    cfg = _cli().settings().registry
    result = _guard("registry promote", promote, cfg, version, alias, reason=reason)
    typer.echo(f"{alias} -> version {result['version']} (was {result['previous']})")


@registry_app.command("rollback")
def rollback_cmd(
    alias: Annotated[str, typer.Option("--alias", help="alias to move back to its previous version.")],
    reason: Annotated[str | None, typer.Option(help="why (kept in the alias history).")] = None,
) -> None:
    """Point an alias back at the version it had before its last promotion (repeatable)."""
    from components.registry_ops import rollback

    cfg = _cli().settings().registry
    result = _guard("registry rollback", rollback, cfg, alias, reason=reason)
    typer.echo(f"{alias} -> version {result['version']} (was {result['previous']})")


@registry_app.command("pull")
def pull_cmd(
    ref: Annotated[str, typer.Argument(help="alias name or version number.")],
    out: Annotated[Path, typer.Option("--out", help="folder to create (or an earlier pull to replace).")],
) -> None:
    """Download a version, verify every sha256, then move it into place (nothing is left on a mismatch)."""
    from components.registry_ops import pull

    cfg = _cli().settings().registry
    _echo_json(_guard("registry pull", pull, cfg, ref, out))


@registry_app.command("verify")
def verify_cmd(version: Annotated[str, typer.Argument(help="version number, or an alias name.")]) -> None:
    """Re-download a version and check each file against its manifest (exit 4 naming any bad file)."""
    from components.registry_ops import resolve, verify

    cfg = _cli().settings().registry
    number = _guard("registry verify", resolve, cfg, version)
    result = _guard("registry verify", verify, cfg, number)
    typer.echo(f"version {number}: {result['files']} files, {result['bytes']} bytes, all sha256 match")
