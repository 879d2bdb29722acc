"""retrain_on_new_data against a real S3 server (moto) and a real Prefect server: runs the pipeline only on change."""

from __future__ import annotations

import json

import yaml

from tests.flows.conftest import task_runs


def _subflow_runs(flow_run_id) -> list:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterParentFlowRunId

    task_runs(flow_run_id)  # wait until the server recorded the run's task runs (and so its subflows)
    with get_client(sync_client=True) as client:
        return client.read_flow_runs(flow_run_filter=FlowRunFilter(
            parent_flow_run_id=FlowRunFilterParentFlowRunId(any_=[flow_run_id])))


def test_retrain_runs_pipeline_only_when_the_prefix_changes(prefect_api, moto_server, s3_bucket, toy_project):
    import boto3

    from flows.retrain import retrain_on_new_data, variable_name

    s3 = boto3.client("s3", endpoint_url=moto_server)
    uri = f"s3://{s3_bucket}/incoming"
    for i in range(2):
        s3.put_object(Bucket=s3_bucket, Key=f"incoming/clip{i}.wav", Body=b"RIFF" + bytes([i]) * 100)
    state_file = toy_project.parent / "seen.json"
    kwargs = {"s3_uri": uri, "project_dir": str(toy_project), "state_file": str(state_file),
              "overrides": ["gate.min_speedup=1"], "return_state": True}

    # first poll: everything is new -> the pipeline runs on that prefix (written into params.yaml)
    state = retrain_on_new_data(**kwargs)
    assert state.is_completed(), state
    result = state.result()
    assert result["ran"] is True and result["objects"] == 2 and result["changes"]["new"] == 2
    params = yaml.safe_load((toy_project / "params.yaml").read_text())
    assert params["prepare"]["source"] == "s3" and params["prepare"]["input"] == uri
    pipeline_runs = _subflow_runs(state.state_details.flow_run_id)
    assert len(pipeline_runs) == 1 and pipeline_runs[0].state.is_completed()
    from prefect.variables import Variable

    seen = Variable.get(variable_name(uri))
    assert seen["objects"] == 2 and json.loads(state_file.read_text())["listing"].keys() == {"clip0.wav", "clip1.wav"}

    # second poll, nothing changed: no pipeline run
    state = retrain_on_new_data(**kwargs)
    assert state.is_completed() and state.message.startswith("no new data"), state
    assert _subflow_runs(state.state_details.flow_run_id) == []

    # a changed object and a new one: the pipeline runs again and the diff is reported
    s3.put_object(Bucket=s3_bucket, Key="incoming/clip1.wav", Body=b"RIFF" + b"x" * 100)
    s3.put_object(Bucket=s3_bucket, Key="incoming/sub/clip2.wav", Body=b"RIFF" + b"y" * 50)
    state = retrain_on_new_data(**kwargs)
    assert state.is_completed(), state
    assert state.result()["changes"] == {"new": 1, "removed": 0, "changed": 1}
    assert len(_subflow_runs(state.state_details.flow_run_id)) == 1
    assert Variable.get(variable_name(uri))["objects"] == 3


def test_retrain_does_not_record_data_when_the_pipeline_fails(prefect_api, moto_server, s3_bucket, toy_project):
    import boto3

    from flows.retrain import retrain_on_new_data, variable_name

    boto3.client("s3", endpoint_url=moto_server).put_object(Bucket=s3_bucket, Key="new/a.wav", Body=b"RIFF")
    uri = f"s3://{s3_bucket}/new"
    (toy_project / "FAIL_B").write_text("")
    state = retrain_on_new_data(s3_uri=uri, project_dir=str(toy_project), return_state=True)
    assert state.is_failed()
    from prefect.variables import Variable

    assert Variable.get(variable_name(uri), default=None) is None  # the next poll tries again
