"""The model registry: atomic versions, checksums, refusals that keep the current model, and
the `driftline models` commands."""
import json

import pytest
from typer.testing import CliRunner

from models.ftrl import FTRL, FTRLParams
from models.online import OnlineConfig, OnlineLayer
from models.registry import Registry, RegistryError
from runners.cli import app
from runners.learner import write_snapshot


@pytest.fixture
def reg(tmp_path):
    r = Registry(tmp_path / "registry")
    for i in range(3):
        r.publish("base", {"model.bin": bytes([i]) * 100}, {"spec_fingerprint": "fp", "metrics": {"auc": 0.5 + i / 10}})
    return r


def test_versions_manifest_and_current(reg):
    assert reg.versions("base") == ["000000000001", "000000000002", "000000000003"]
    assert reg.current("base") == "000000000003"  # nothing promoted: the newest
    m = reg.verify("base", "000000000002").manifest
    assert m["version"] == "000000000002" and m["kind"] == "base" and m["metrics"]["auc"] == 0.6
    assert set(m["files"]) == {"model.bin"}


def test_in_progress_folders_are_not_versions(reg):
    (reg.root / "base" / ".000000000004.inprogress-1").mkdir()
    assert reg.versions("base")[-1] == "000000000003"


def test_corrupted_model_is_refused_and_current_kept(reg):
    reg.promote("base", "000000000002")
    (reg.root / "base" / "000000000003" / "model.bin").write_bytes(b"tampered")
    with pytest.raises(RegistryError, match="corrupted"):
        reg.promote("base", "000000000003")
    (reg.root / "base" / "000000000001" / "manifest.json").write_text("{not json")
    with pytest.raises(RegistryError, match="unreadable manifest"):
        reg.rollback("base", "000000000001")
    assert reg.current("base") == "000000000002"
    assert [h["version"] for h in reg.history("base")] == ["000000000002"]


def test_incompatible_fingerprint_is_refused(reg):
    with pytest.raises(RegistryError, match="fingerprint"):
        reg.promote("base", "000000000001", fingerprint="another-spec")
    assert reg.current("base") == "000000000003"


def test_rollback_only_to_an_earlier_version(reg):
    reg.rollback("base", "000000000001")
    assert reg.current("base") == "000000000001"
    with pytest.raises(RegistryError, match="not earlier"):
        reg.rollback("base", "000000000002")
    assert [h["action"] for h in reg.history("base")] == ["rollback"]


def test_republishing_a_version_needs_the_same_contents(reg):
    assert reg.publish("base", {"model.bin": bytes([1]) * 100}, {}, version="000000000002").version == "000000000002"
    with pytest.raises(RegistryError, match="different contents"):
        reg.publish("base", {"model.bin": b"other"}, {}, version="000000000002")


def test_delta_snapshots_go_through_the_registry(tmp_path):
    layer = OnlineLayer(OnlineConfig(ftrl=FTRLParams(l1=0.0)), 16, "fp")
    layer.ftrl.updates = 5
    path = write_snapshot(tmp_path / "registry", layer, 123)
    ref = Registry(tmp_path / "registry").verify("delta", "000000000005", fingerprint="fp")
    assert ref.path == path and ref.manifest["model"] == "ftrl_delta" and ref.manifest["event_time"] == 123
    assert FTRL.from_bytes((path / "weights.npz").read_bytes()).updates == 5


def test_models_cli(reg):
    runner = CliRunner()
    root = str(reg.root)
    r = runner.invoke(app, ["models", "list", "--kind", "base", "--registry", root])
    assert r.exit_code == 0 and "000000000003" in r.output
    r = runner.invoke(app, ["models", "show", "000000000002", "--kind", "base", "--registry", root])
    assert r.exit_code == 0 and json.loads(r.output)["version"] == "000000000002"
    # a base model's feature reference: summarized, or every bin with --full
    ref = {"n": 3, "train_range": [0, 9], "features": {"site": {"keys": [3, 5], "counts": [2, 1]}}}
    reg.publish("base", {"model.bin": b"m"}, {"feature_reference": ref}, version="000000000009")
    r = runner.invoke(app, ["models", "show", "000000000009", "--kind", "base", "--registry", root])
    assert json.loads(r.output)["feature_reference"] == {"n": 3, "train_range": [0, 9], "bins": {"site": 2}}
    r = runner.invoke(app, ["models", "show", "000000000009", "--kind", "base", "--registry", root, "--full"])
    assert json.loads(r.output)["feature_reference"] == ref
    r = runner.invoke(app, ["models", "rollback", "000000000001", "--kind", "base", "--registry", root])
    assert r.exit_code == 0 and reg.current("base") == "000000000001"
    (reg.root / "base" / "000000000003" / "model.bin").write_bytes(b"x")
    r = runner.invoke(app, ["models", "promote", "000000000003", "--kind", "base", "--registry", root])
    assert r.exit_code == 1 and "corrupted" in r.output and reg.current("base") == "000000000001"
