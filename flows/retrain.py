"""``retrain_on_new_data``: poll an S3 prefix; run ``distill_pipeline`` when objects appear, change or disappear.

What was seen is a fingerprint (sha256 over every key, ETag and size, from ``components.s3.list_objects``) kept in
a Prefect Variable named ``askd-retrain-<hash of the URI>`` (the server stores it, so it survives ephemeral
workers and pods), and, if ``state_file`` is set, the full listing in that JSON file too (for a per-key diff).
The state is written only after the pipeline run ends Completed (a blocked gate included), so a failed run is
retried at the next poll. Schedule it with an interval or cron in prefect.yaml.

By default the new data is the pipeline's input: the run gets ``prepare.source=s3`` and ``prepare.input=<uri>``
overrides (written into params.yaml, so DVC tracks them; DVC also checks the S3 objects as the prepare stage's
dependency). The S3 endpoint and credentials come from the environment (``AWS_ENDPOINT_URL``, boto3's chain).
"""

from __future__ import annotations

import hashlib
import json
import time
from pathlib import Path
from typing import Any

from prefect import flow, get_run_logger, task
from prefect.cache_policies import NO_CACHE
from prefect.states import Completed
from prefect.tasks import exponential_backoff
from prefect.variables import Variable

from flows.pipeline import Preset, Profile, distill_pipeline


def fingerprint(listing: dict[str, str]) -> str:
    return hashlib.sha256(json.dumps(listing, sort_keys=True).encode()).hexdigest()


def variable_name(s3_uri: str) -> str:
    return "askd-retrain-" + hashlib.sha256(s3_uri.encode()).hexdigest()[:12]


def diff_listing(old: dict[str, str], new: dict[str, str]) -> dict[str, list[str]]:
    return {"new": sorted(set(new) - set(old)), "removed": sorted(set(old) - set(new)),
            "changed": sorted(k for k in set(old) & set(new) if old[k] != new[k])}


@task(name="list-s3-prefix", cache_policy=NO_CACHE, retries=3,
      retry_delay_seconds=exponential_backoff(backoff_factor=5)(3), retry_jitter_factor=0.2)
def list_prefix(s3_uri: str, endpoint_url: str | None = None) -> dict[str, str]:
    """``{relative key: "<etag>:<size>"}`` of every object under the prefix (paginated; retried on S3 errors)."""
    from components.s3 import list_objects, make_client, parse_s3_uri

    bucket, prefix = parse_s3_uri(s3_uri)
    return {o.rel: f"{o.etag}:{o.size}" for o in list_objects(make_client(endpoint_url), bucket, prefix)}


@task(name="load-seen", cache_policy=NO_CACHE)
def load_seen(s3_uri: str, state_file: str | None) -> dict[str, Any]:
    seen = Variable.get(variable_name(s3_uri), default=None) or {}
    if state_file and Path(state_file).is_file():
        seen = {**seen, "listing": json.loads(Path(state_file).read_text(encoding="utf-8")).get("listing", {})}
    return seen


@task(name="save-seen", cache_policy=NO_CACHE)
def save_seen(s3_uri: str, listing: dict[str, str], state_file: str | None) -> dict[str, Any]:
    value = {"uri": s3_uri, "fingerprint": fingerprint(listing), "objects": len(listing),
             "seen_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    Variable.set(variable_name(s3_uri), value, overwrite=True)
    if state_file:
        path = Path(state_file)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps({**value, "listing": listing}, indent=1, sort_keys=True), encoding="utf-8")
    return value


@flow(name="retrain_on_new_data", log_prints=True)
def retrain_on_new_data(
    s3_uri: str,
    endpoint_url: str | None = None,
    project_dir: str = ".",
    state_file: str | None = None,
    use_as_prepare_input: bool = True,
    profile: Profile | None = None,
    preset: Preset | None = None,
    overrides: list[str] | None = None,
    label_fan_out: int = 0,
    pull: bool = False,
    push: bool = False,
) -> dict[str, Any]:
    """Poll ``s3_uri`` (s3://bucket/prefix); on new/changed/removed objects run ``distill_pipeline`` on it.

    Args:
        s3_uri: the prefix to watch, e.g. s3://askd-data/incoming.
        endpoint_url: S3-compatible endpoint for the listing (default: AWS_ENDPOINT_URL, else AWS).
        project_dir: the DVC project the pipeline runs in.
        state_file: optional JSON file that keeps the full listing (the Prefect Variable keeps the fingerprint).
        use_as_prepare_input: pass prepare.source=s3 and prepare.input=<s3_uri> to the pipeline.
    """
    logger = get_run_logger()
    listing = list_prefix(s3_uri, endpoint_url)
    if not listing:
        return Completed(message=f"no objects under {s3_uri}: nothing to train on", data={"ran": False})
    seen = load_seen(s3_uri, state_file)
    if seen.get("fingerprint") == fingerprint(listing):
        return Completed(message=f"no new data under {s3_uri} ({len(listing)} objects seen before)",
                         data={"ran": False, "objects": len(listing)})
    changes = diff_listing(seen.get("listing", {}), listing) if "listing" in seen else {"new": sorted(listing)}
    if not seen:
        logger.info("first poll of %s: %d objects", s3_uri, len(listing))
    logger.info("new data under %s: %s", s3_uri, {k: len(v) for k, v in changes.items()})
    extra = ["prepare.source=s3", f"prepare.input='{s3_uri}'"] if use_as_prepare_input else []
    state = distill_pipeline(profile=profile, preset=preset, overrides=[*extra, *(overrides or [])],
                             project_dir=project_dir, label_fan_out=label_fan_out, pull=pull, push=push,
                             return_state=True)
    if not state.is_completed():
        return state  # the flow run ends like the pipeline; what was seen is not recorded, so the next poll retries
    save_seen(s3_uri, listing, state_file)
    return {"ran": True, "objects": len(listing), "changes": {k: len(v) for k, v in changes.items()},
            "pipeline": state.message or "completed"}
