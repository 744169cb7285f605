"""Round trip through a real S3-compatible server (moto's server mode) on loopback.

The server is a real HTTP endpoint started by the test; logitcache reaches it through zarr's
FsspecStore and s3fs exactly as it would reach AWS or MinIO (``AWS_ENDPOINT_URL``). The CLI runs
in this process (what is tested is the store on S3, not a process start-up): under the
endpoint's environment, and with no s3fs filesystem kept from an earlier call, as in a fresh process.
"""

from __future__ import annotations

import contextlib
import os

import numpy as np
import pytest

moto_server = pytest.importorskip("moto.server")
boto3 = pytest.importorskip("boto3")
s3fs = pytest.importorskip("s3fs")


@pytest.fixture(scope="module")
def s3_env():
    """The AWS_* settings that reach the server: credentials and ``AWS_ENDPOINT_URL``."""
    server = moto_server.ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    endpoint = f"http://{host}:{port}"
    creds = {"AWS_ACCESS_KEY_ID": "test", "AWS_SECRET_ACCESS_KEY": "test", "AWS_DEFAULT_REGION": "us-east-1"}
    boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1",
                 aws_access_key_id="test", aws_secret_access_key="test").create_bucket(Bucket="team")
    yield {**creds, "AWS_ENDPOINT_URL": endpoint}
    server.stop()


@pytest.fixture
def aws(monkeypatch):
    """``with aws(env):`` this process sees exactly ``env``'s AWS_* settings, and s3fs makes new
    clients from them (it caches filesystems by their arguments, not by the environment)."""
    @contextlib.contextmanager
    def use(env: dict[str, str]):
        with monkeypatch.context() as m:
            for key in [k for k in os.environ if k.startswith("AWS_")]:
                m.delenv(key)
            for key, value in env.items():
                m.setenv(key, value)
            s3fs.S3FileSystem.clear_instance_cache()
            try:
                yield
            finally:
                s3fs.S3FileSystem.clear_instance_cache()

    return use


@pytest.fixture
def cli(run_cli, aws):
    """``cli(argv, env) -> CliResult``: the CLI in this process under ``env`` (see ``aws``)."""

    def run(argv: list, env: dict[str, str]):
        with aws(env):
            return run_cli(argv)

    return run


def test_dump_info_verify_train_against_s3(s3_env, cli, tmp_path):
    url = "s3://team/caches/digits-r8.zarr"
    dumped = cli(["dump", "--teacher", "resnet8", "--random-init", "--dataset", "digits", "--views", "1",
                   "--topk", "5", "--chunk-samples", "512", "--out", url, "--quiet"], s3_env)
    assert dumped.code == 0, dumped.err
    assert f"complete: {url}" in dumped.out

    info = cli(["info", url], s3_env)
    assert info.code == 0, info.err
    assert "digits [train]  1,438 samples" in info.out and "top-5 fp16" in info.out

    verified = cli(["verify", url, "--random-init", "--samples", "32"], s3_env)
    assert verified.code == 0 and "OK" in verified.out, verified.err

    listed = cli(["ls", "--home", "s3://team/caches"], s3_env)
    assert listed.code == 0 and url in listed.out

    run = tmp_path / "run"
    trained = cli(["train", "--student", "resnet8", "--dataset", "digits", "--method", "kd", "--cache", url,
                    "--epochs", "1", "--out", str(run), "--quiet"], s3_env)
    assert trained.code == 0, trained.err
    assert (run / "summary.json").exists()


def test_s3_store_equals_local_store(s3_env, cli, aws, tmp_path):
    """The same dump to S3 and to a local folder gives the same arrays."""
    from logitcache.store.zarr_store import ZarrStore

    common = ["dump", "--teacher", "resnet8", "--random-init", "--dataset", "synthetic:n=96,size=8", "--views", "2",
              "--full", "--chunk-samples", "32", "--quiet"]
    url, local = "s3://team/eq.zarr", tmp_path / "eq.zarr"
    assert cli([*common, "--out", url], s3_env).code == 0
    assert cli([*common, "--out", str(local)], s3_env).code == 0
    with aws(s3_env):
        remote, here = ZarrStore.open(url), ZarrStore.open(local)
        for name in here.array_names():
            np.testing.assert_array_equal(remote.read(name), here.read(name), err_msg=name)


SMALL = ["dump", "--teacher", "resnet8", "--random-init", "--dataset", "synthetic:n=32,size=8", "--views", "1",
         "--topk", "3", "--chunk-samples", "16", "--device", "cpu", "--quiet"]


def _s3(env):
    return boto3.client("s3", endpoint_url=env["AWS_ENDPOINT_URL"], region_name="us-east-1",
                        aws_access_key_id="test", aws_secret_access_key="test")


def test_foreign_keys_on_s3_are_neither_built_on_nor_deleted(s3_env, cli):
    """As locally: no new store at a prefix holding someone's files, and --overwrite never deletes them."""
    s3 = _s3(s3_env)
    s3.put_object(Bucket="team", Key="notes/user_notes.txt", Body=b"mine")
    refused = cli([*SMALL, "--out", "s3://team/notes"], s3_env)
    assert refused.code == 2 and "is not a logitcache store (it holds user_notes.txt)" in refused.err
    url = "s3://team/kept.zarr"
    assert cli([*SMALL, "--out", url], s3_env).code == 0
    s3.put_object(Bucket="team", Key="kept.zarr/user_notes.txt", Body=b"mine")
    over = cli([*SMALL, "--out", url, "--views", "2", "--overwrite"], s3_env)
    assert over.code == 2 and "user_notes.txt" in over.err and "nothing was deleted" in over.err
    for key in ("notes/user_notes.txt", "kept.zarr/user_notes.txt", "kept.zarr/zarr.json"):
        s3.head_object(Bucket="team", Key=key)  # all still there
    s3.delete_object(Bucket="team", Key="kept.zarr/user_notes.txt")
    replaced = cli([*SMALL, "--out", url, "--views", "2", "--overwrite"], s3_env)
    assert replaced.code == 0 and "replaced" in replaced.out, replaced.err


def test_a_missing_bucket_or_a_dead_endpoint_is_one_line(s3_env, cli):
    import socket

    missing = cli([*SMALL, "--out", "s3://no-such-bucket/c.zarr"], s3_env)
    assert missing.code == 2 and missing.err.count("error:") == 1, missing.err
    assert "cannot use s3://no-such-bucket/c.zarr" in missing.err and "bucket" in missing.err
    with socket.socket() as s:  # a loopback port nobody listens at
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    # One try each (botocore and s3fs both retry with back-off): what is tested is the message.
    dead = {**s3_env, "AWS_ENDPOINT_URL": f"http://127.0.0.1:{port}", "AWS_MAX_ATTEMPTS": "1",
            "AWS_RETRY_MODE": "standard"}
    for argv in ([*SMALL, "--out", "s3://team/d.zarr"], ["info", "s3://team/d.zarr"]):
        result = cli(argv, dead)
        assert result.code == 2 and result.err.count("error:") == 1, (argv, result.err[-2000:])
        assert "Traceback" not in result.err and f"127.0.0.1:{port}" in result.err
