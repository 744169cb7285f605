"""Round trip through a real S3-compatible server (moto's server mode) on loopback.

The server is a real HTTP endpoint started by the test; logitcache reaches it through zarr's
FsspecStore and s3fs exactly as it would reach AWS or MinIO (``AWS_ENDPOINT_URL``).
"""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest

moto_server = pytest.importorskip("moto.server")
boto3 = pytest.importorskip("boto3")
pytest.importorskip("s3fs")


@pytest.fixture(scope="module")
def s3_env():
    server = moto_server.ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    endpoint = f"http://{host}:{port}"
    creds = {"AWS_ACCESS_KEY_ID": "test", "AWS_SECRET_ACCESS_KEY": "test", "AWS_DEFAULT_REGION": "us-east-1"}
    boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1",
                 aws_access_key_id="test", aws_secret_access_key="test").create_bucket(Bucket="team")
    yield {**os.environ, **creds, "AWS_ENDPOINT_URL": endpoint}
    server.stop()


def _cli(args, env):
    script = os.path.join(os.path.dirname(sys.executable), "logitcache")
    return subprocess.run([script, *args], env=env, capture_output=True, text=True, timeout=300)


def test_dump_info_verify_train_against_s3(s3_env, tmp_path):
    url = "s3://team/caches/digits-r8.zarr"
    dumped = _cli(["dump", "--teacher", "resnet8", "--random-init", "--dataset", "digits", "--views", "1",
                   "--topk", "5", "--chunk-samples", "512", "--out", url, "--quiet"], s3_env)
    assert dumped.returncode == 0, dumped.stderr
    assert f"complete: {url}" in dumped.stdout

    info = _cli(["info", url], s3_env)
    assert info.returncode == 0, info.stderr
    assert "digits [train]  1,438 samples" in info.stdout and "top-5 fp16" in info.stdout

    verified = _cli(["verify", url, "--random-init", "--samples", "32"], s3_env)
    assert verified.returncode == 0 and "OK" in verified.stdout, verified.stderr

    listed = _cli(["ls", "--home", "s3://team/caches"], s3_env)
    assert listed.returncode == 0 and url in listed.stdout

    run = tmp_path / "run"
    trained = _cli(["train", "--student", "resnet8", "--dataset", "digits", "--method", "kd", "--cache", url,
                    "--epochs", "1", "--out", str(run), "--quiet"], s3_env)
    assert trained.returncode == 0, trained.stderr
    assert (run / "summary.json").exists()


def test_s3_store_equals_local_store(s3_env, tmp_path):
    """The same dump to S3 and to a local folder gives the same arrays."""
    from logitcache.store.zarr_store import ZarrStore

    common = ["dump", "--teacher", "resnet8", "--random-init", "--dataset", "synthetic:n=96,size=8", "--views", "2",
              "--full", "--chunk-samples", "32", "--quiet"]
    url, local = "s3://team/eq.zarr", tmp_path / "eq.zarr"
    assert _cli([*common, "--out", url], s3_env).returncode == 0
    assert _cli([*common, "--out", str(local)], s3_env).returncode == 0
    old = os.environ.copy()
    os.environ.update({k: v for k, v in s3_env.items() if k.startswith("AWS_")})
    try:
        remote, here = ZarrStore.open(url), ZarrStore.open(local)
        for name in here.array_names():
            np.testing.assert_array_equal(remote.read(name), here.read(name), err_msg=name)
    finally:
        os.environ.clear()
        os.environ.update(old)


SMALL = ["dump", "--teacher", "resnet8", "--random-init", "--dataset", "synthetic:n=32,size=8", "--views", "1",
         "--topk", "3", "--chunk-samples", "16", "--device", "cpu", "--quiet"]


def _s3(env):
    return boto3.client("s3", endpoint_url=env["AWS_ENDPOINT_URL"], region_name="us-east-1",
                        aws_access_key_id="test", aws_secret_access_key="test")


def test_foreign_keys_on_s3_are_neither_built_on_nor_deleted(s3_env):
    """As locally: no new store at a prefix holding someone's files, and --overwrite never deletes them."""
    s3 = _s3(s3_env)
    s3.put_object(Bucket="team", Key="notes/user_notes.txt", Body=b"mine")
    refused = _cli([*SMALL, "--out", "s3://team/notes"], s3_env)
    assert refused.returncode == 2 and "is not a logitcache store (it holds user_notes.txt)" in refused.stderr
    url = "s3://team/kept.zarr"
    assert _cli([*SMALL, "--out", url], s3_env).returncode == 0
    s3.put_object(Bucket="team", Key="kept.zarr/user_notes.txt", Body=b"mine")
    over = _cli([*SMALL, "--out", url, "--views", "2", "--overwrite"], s3_env)
    assert over.returncode == 2 and "user_notes.txt" in over.stderr and "nothing was deleted" in over.stderr
    for key in ("notes/user_notes.txt", "kept.zarr/user_notes.txt", "kept.zarr/zarr.json"):
        s3.head_object(Bucket="team", Key=key)  # all still there
    s3.delete_object(Bucket="team", Key="kept.zarr/user_notes.txt")
    replaced = _cli([*SMALL, "--out", url, "--views", "2", "--overwrite"], s3_env)
    assert replaced.returncode == 0 and "replaced" in replaced.stdout, replaced.stderr


def test_a_missing_bucket_or_a_dead_endpoint_is_one_line(s3_env):
    import socket

    missing = _cli([*SMALL, "--out", "s3://no-such-bucket/c.zarr"], s3_env)
    assert missing.returncode == 2 and missing.stderr.count("error:") == 1, missing.stderr
    assert "cannot use s3://no-such-bucket/c.zarr" in missing.stderr and "bucket" in missing.stderr
    with socket.socket() as s:  # a loopback port nobody listens at
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    # One try each (botocore and s3fs both retry with back-off): what is tested is the message.
    dead = {**s3_env, "AWS_ENDPOINT_URL": f"http://127.0.0.1:{port}", "AWS_MAX_ATTEMPTS": "1",
            "AWS_RETRY_MODE": "standard"}
    for argv in ([*SMALL, "--out", "s3://team/d.zarr"], ["info", "s3://team/d.zarr"]):  # ~5 s each: s3fs retries
        result = _cli(argv, dead)
        assert result.returncode == 2 and result.stderr.count("error:") == 1, (argv, result.stderr[-2000:])
        assert "Traceback" not in result.stderr and "127.0.0.1" in result.stderr
