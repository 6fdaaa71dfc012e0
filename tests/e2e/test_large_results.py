"""Large results go to a bucket through the RunPod SDK's upload helper (an S3 server on
127.0.0.1: moto), small ones stay inline; without a bucket, or when the upload fails, a large
one is an error that says so, never an oversized inline response. Real pipeline, real speech."""

from __future__ import annotations

import dataclasses
import json
import os

import boto3
import pytest
import requests
from references import BASE_MODEL, FESTVOX, require_assets

import handler


@pytest.fixture(scope="module")
def s3():
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    endpoint = f"http://{host}:{port}"
    client = boto3.client("s3", endpoint_url=endpoint, aws_access_key_id="test", aws_secret_access_key="test", region_name="us-east-1")
    client.create_bucket(Bucket="results")
    yield endpoint
    server.stop()


@pytest.fixture
def worker_env(monkeypatch, tmp_path):
    require_assets()
    from references import ASSETS, LOCAL_MODELS

    for key, value in {"MODELS_DIR": str(LOCAL_MODELS), "MODEL": BASE_MODEL, "ALLOW_LOCAL_FILES": "true", "HF_HUB_OFFLINE": "1",
                       "NLTK_DATA": str(ASSETS / "nltk_data"), "WARMUP": "false", "PRELOAD_ALIGN_LANGUAGES": ""}.items():
        monkeypatch.setenv(key, value)
    for key in ("BUCKET_ENDPOINT_URL", "BUCKET_ACCESS_KEY_ID", "BUCKET_SECRET_ACCESS_KEY", "BUCKET_NAME", "RESULT_INLINE_LIMIT_BYTES"):
        monkeypatch.delenv(key, raising=False)
    return monkeypatch


def run_job(monkeypatch) -> dict:
    """``JOB`` through the in-process handler, its worker started with the ENV as it is now."""
    from settings import result_delivery_from_env

    predictor = handler.get_predictor()
    monkeypatch.setattr(predictor, "settings", dataclasses.replace(predictor.settings, results=result_delivery_from_env(os.environ)))
    return handler.handler(JOB)


JOB = {"id": "job-large-1", "input": {"audio_file": str(FESTVOX / "wav" / "ru_0002.wav"), "diarization": False}}


def test_small_result_stays_inline(worker_env, s3):
    worker_env.setenv("BUCKET_ENDPOINT_URL", s3)
    worker_env.setenv("BUCKET_ACCESS_KEY_ID", "test")
    worker_env.setenv("BUCKET_SECRET_ACCESS_KEY", "test")
    worker_env.setenv("BUCKET_NAME", "results")
    result = run_job(worker_env)
    assert result["segments"] and "result_url" not in result


def test_large_result_is_uploaded_and_linked(worker_env, s3):
    worker_env.setenv("BUCKET_ENDPOINT_URL", s3)
    worker_env.setenv("BUCKET_ACCESS_KEY_ID", "test")
    worker_env.setenv("BUCKET_SECRET_ACCESS_KEY", "test")
    worker_env.setenv("BUCKET_NAME", "results")
    worker_env.setenv("RESULT_INLINE_LIMIT_BYTES", "500")
    result = run_job(worker_env)
    assert result["segments"] == [] and result["result_bytes"] > 500
    assert result["detected_language"] == "ru"
    full = requests.get(result["result_url"], timeout=10).json()
    assert full["segments"] and full["segments"][0]["words"]
    assert len(json.dumps(full, ensure_ascii=False).encode()) == result["result_bytes"]


def test_large_result_without_bucket_is_an_error(worker_env):
    worker_env.setenv("RESULT_INLINE_LIMIT_BYTES", "500")
    result = run_job(worker_env)
    assert "segments" not in result, "an oversized result must not be returned inline"
    assert "over the inline limit of 500 bytes (RESULT_INLINE_LIMIT_BYTES)" in result["error"]
    assert "no bucket is configured" in result["error"]


def test_large_result_whose_upload_fails_is_an_error(worker_env, s3):
    worker_env.setenv("BUCKET_ENDPOINT_URL", s3)
    worker_env.setenv("BUCKET_ACCESS_KEY_ID", "test")
    worker_env.setenv("BUCKET_SECRET_ACCESS_KEY", "test")
    worker_env.setenv("BUCKET_NAME", "no-such-bucket")
    worker_env.setenv("RESULT_INLINE_LIMIT_BYTES", "500")
    result = run_job(worker_env)
    assert "segments" not in result and "uploading it to the bucket failed" in result["error"]


def test_result_close_to_the_limit_warns(worker_env):
    inline = run_job(worker_env)
    size = len(json.dumps({k: v for k, v in inline.items() if k != "logs"}, ensure_ascii=False).encode())
    worker_env.setenv("RESULT_INLINE_LIMIT_BYTES", str(int(size * 1.1)))
    result = run_job(worker_env)
    assert "result_url" not in result and any("close to the inline limit" in w for w in result["warnings"])
