"""The benchmark runner never replaces the published results with a part of them."""

from __future__ import annotations

import pytest

from bench.__main__ import HERE, main


def test_only_without_update_refuses_to_replace_the_published_results(capsys):
    before = (HERE / "RESULTS.md").read_bytes()
    with pytest.raises(SystemExit) as stop:
        main(["--only", "augment"])
    assert stop.value.code == 2
    assert "add --update to replace just them, or --out FILE" in capsys.readouterr().err
    assert (HERE / "RESULTS.md").read_bytes() == before
