"""driftline's own TFX components (Python function components) around the standard ones.

* ``ValidateSpan``: TFDV validation of the span's statistics against the (frozen) schema, with
  drift against the previous span and train/eval skew (thresholds are parameters). Anomalies
  fail the run, with a report that names every feature and what is wrong.
* ``InfraCheck``: like TFX's InfraValidator, but checks what matters here: the SavedModel
  loads, its ``transform_features`` signature gives the streaming job's features exactly on
  a sample of raw examples (skew check of the transform), and its ``serving_default`` logits
  equal the streaming scorer's (``models.base.BaseModel`` on the served features).
* ``EvaluateCandidate``: blesses the candidate only if it is no worse than the champion (the
  current base model, or the constant prior the stream serves without one) on the eval slice:
  AUC, logloss and calibration thresholds. Scores with the streaming scorer, so what is
  evaluated is what will be served.
* ``RegistryPush``: publishes a blessed, infra-blessed model into ``models.registry`` (the
  SavedModel, ``base_model.npz`` and a manifest with data range, cutoff, fingerprint, metrics,
  blessing, parent) and promotes it.

Every component also writes its report as JSON into ``report_dir`` (the span's folder), which
is how ``pipelines.retrain`` reads the outcome back without querying ML Metadata.
"""
# no "from __future__ import annotations": TFX parses these signatures at run time

import glob
import json
import os
from pathlib import Path

from tfx import v1 as tfx
from tfx.types import artifact_utils, standard_artifacts

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")


def _report(report_dir: str, name: str, data: dict) -> None:
    Path(report_dir).mkdir(parents=True, exist_ok=True)
    tmp = Path(report_dir) / f".{name}.json.tmp"
    tmp.write_text(json.dumps(data, indent=1, sort_keys=True, default=str) + "\n")
    os.replace(tmp, Path(report_dir) / f"{name}.json")


def _records(examples, split: str, limit: int | None = None) -> list[bytes]:
    import tensorflow as tf

    uri = artifact_utils.get_split_uri([examples], split)
    files = sorted(glob.glob(os.path.join(uri, "*")))
    out = []
    for rec in tf.data.TFRecordDataset(files, compression_type="GZIP"):
        out.append(rec.numpy())
        if limit is not None and len(out) >= limit:
            break
    return out


def _columns(records: list[bytes]) -> dict:
    """label, weight, feature_indices, feature_values of serialized examples (numpy)."""
    import numpy as np
    import tensorflow as tf

    labels, weights, idx, vals = [], [], [], []
    for r in records:
        f = tf.train.Example.FromString(r).features.feature
        labels.append(f["label"].int64_list.value[0])
        weights.append(f["weight"].float_list.value[0] if f["weight"].float_list.value else 1.0)
        idx.append(list(f["feature_indices"].int64_list.value))
        vals.append(list(f["feature_values"].float_list.value))
    return {"label": np.array(labels, np.float64), "weight": np.array(weights, np.float64),
            "indices": np.array(idx, np.int64), "values": np.array(vals, np.float32)}


def _load_base(model) -> "object":
    from models.base import FILE, BaseModel
    from pipelines.tfx_module import NPZ_DIR

    return BaseModel.from_bytes((Path(model.uri) / "Format-Serving" / NPZ_DIR / FILE).read_bytes())


def _bless(artifact, ok: bool, name: str) -> None:
    artifact.set_int_custom_property("blessed", int(ok))
    Path(artifact.uri).mkdir(parents=True, exist_ok=True)
    (Path(artifact.uri) / (name if ok else f"NOT_{name}")).write_text("")


@tfx.dsl.components.component
def ValidateSpan(statistics: tfx.dsl.components.InputArtifact[standard_artifacts.ExampleStatistics],
                 schema: tfx.dsl.components.InputArtifact[standard_artifacts.Schema],
                 anomalies: tfx.dsl.components.OutputArtifact[standard_artifacts.ExampleAnomalies],
                 report_dir: tfx.dsl.components.Parameter[str],
                 previous_statistics: tfx.dsl.components.Parameter[str] = "",
                 drift_linf: tfx.dsl.components.Parameter[float] = 0.3,
                 drift_jsd: tfx.dsl.components.Parameter[float] = 0.3,
                 skew_linf: tfx.dsl.components.Parameter[float] = 0.3,
                 features: tfx.dsl.components.Parameter[str] = "",
                 drift_action: tfx.dsl.components.Parameter[str] = "fail") -> None:
    """Schema anomalies of both splits, drift of the train split against the previous span's
    train split, skew between train and eval; raises with a readable report if any.
    ``drift_action="warn"``: drift alone is reported (``drift_warnings``) but does not fail
    the span (features with a daily cycle drift between spans of different hours)."""
    import tensorflow_data_validation as tfdv
    from tensorflow_metadata.proto.v0 import schema_pb2

    sch = tfdv.load_schema_text(os.path.join(schema.uri, "schema.pbtxt"))
    watched = set(json.loads(features)) if features else {f.name for f in sch.feature}
    for f in sch.feature:
        if f.name not in watched:
            continue
        if f.type == schema_pb2.BYTES:
            f.drift_comparator.infinity_norm.threshold = drift_linf
            f.skew_comparator.infinity_norm.threshold = skew_linf
        elif f.type in (schema_pb2.FLOAT, schema_pb2.INT):
            f.drift_comparator.jensen_shannon_divergence.threshold = drift_jsd
    train = tfdv.load_stats_binary(os.path.join(artifact_utils.get_split_uri([statistics], "train"),
                                                "FeatureStats.pb"))
    evals = tfdv.load_stats_binary(os.path.join(artifact_utils.get_split_uri([statistics], "eval"),
                                                "FeatureStats.pb"))
    prev = tfdv.load_stats_binary(previous_statistics) if previous_statistics else None
    found, measured, warnings = {}, {}, {}
    train_result = tfdv.validate_statistics(train, sch, previous_statistics=prev, serving_statistics=evals)
    if drift_action == "warn" and prev is not None:
        # what fails without the previous span is blocking; what only drift adds is a warning
        blocking = tfdv.validate_statistics(train, sch, serving_statistics=evals)
        for feat, info in train_result.anomaly_info.items():
            if feat not in blocking.anomaly_info:
                warnings[f"train:{feat}"] = f"{info.short_description}: {info.description}"
        for ds in train_result.drift_skew_info:
            for m in ds.drift_measurements:
                measured.setdefault(f"train:{'.'.join(ds.path.step)}", []).append(
                    {"type": m.Type.Name(m.type), "value": m.value, "threshold": m.threshold})
        train_result = blocking
    for name, result in (("train", train_result), ("eval", tfdv.validate_statistics(evals, sch))):
        tfdv.write_anomalies_text(result, os.path.join(anomalies.uri, f"{name}_anomalies.pbtxt"))
        for feat, info in result.anomaly_info.items():
            found[f"{name}:{feat}"] = f"{info.short_description}: {info.description}"
        for ds in result.drift_skew_info:  # the measured distances, for the report
            for m in list(ds.drift_measurements) + list(ds.skew_measurements):
                measured.setdefault(f"{name}:{'.'.join(ds.path.step)}", []).append(
                    {"type": m.Type.Name(m.type), "value": m.value, "threshold": m.threshold})
    Path(report_dir).mkdir(parents=True, exist_ok=True)
    stats_copy = Path(report_dir) / "train_stats.pb"
    stats_copy.write_bytes(Path(artifact_utils.get_split_uri([statistics], "train"), "FeatureStats.pb").read_bytes())
    report = {"anomalies": found, "measurements": measured, "drift_warnings": warnings, "drift_action": drift_action,
              "drift_checked_against": previous_statistics or None, "thresholds": {
                  "drift_linf": drift_linf, "drift_jsd": drift_jsd, "skew_linf": skew_linf}}
    _report(report_dir, "validation", report)
    if report["anomalies"]:
        lines = "\n".join(f"  {k}: {v}" for k, v in sorted(report["anomalies"].items()))
        raise RuntimeError(f"data validation failed for this span ({len(report['anomalies'])} anomalies; "
                           f"report {Path(report_dir) / 'validation.json'}):\n{lines}")


@tfx.dsl.components.component
def InfraCheck(model: tfx.dsl.components.InputArtifact[standard_artifacts.Model],
               examples: tfx.dsl.components.InputArtifact[standard_artifacts.Examples],
               blessing: tfx.dsl.components.OutputArtifact[standard_artifacts.InfraBlessing],
               report_dir: tfx.dsl.components.Parameter[str],
               sample: tfx.dsl.components.Parameter[int] = 256,
               logit_tolerance: tfx.dsl.components.Parameter[float] = 1e-4) -> None:
    """The SavedModel loads; on a sample of raw eval examples its transform equals the served
    features (indices exactly, values to float32 rounding) and its logits equal the streaming
    scorer's to ``logit_tolerance``."""
    import numpy as np
    import tensorflow as tf

    report: dict = {"sample": 0}
    try:
        records = _records(examples, "eval", sample)
        cols = _columns(records)
        loaded = tf.saved_model.load(os.path.join(model.uri, "Format-Serving"))
        batch = tf.constant(records)
        t = loaded.signatures["transform_features"](examples=batch)
        served = loaded.signatures["serving_default"](examples=batch)
        idx, val = t["ftrl_indices"].numpy(), t["ftrl_values"].numpy()
        stream_logit = _load_base(model).logits(cols["indices"], cols["values"])
        report.update(sample=len(records),
                      transform_indices_equal=bool(np.array_equal(idx, cols["indices"])),
                      transform_values_max_abs_diff=float(np.abs(val - cols["values"]).max()),
                      logit_max_abs_diff=float(np.abs(served["logit"].numpy() - stream_logit).max()))
        ok = (report["transform_indices_equal"] and report["transform_values_max_abs_diff"] <= 1e-6
              and report["logit_max_abs_diff"] <= logit_tolerance)
        report["reason"] = "" if ok else "the SavedModel disagrees with the streaming path (see the diffs)"
    except Exception as e:  # noqa: BLE001 - a model that cannot load/score is simply not blessed
        ok, report["reason"] = False, f"{type(e).__name__}: {e}"
    report["blessed"] = ok
    _bless(blessing, ok, "INFRA_BLESSED")
    _report(report_dir, "infra", report)


def calibration_interval(expected: float, positives: float, alpha: float = 0.05) -> tuple[float, float]:
    """A (1 - alpha) interval for calibration = expected / observed positives, from the exact
    (Garwood) Poisson interval of the observed count: with 18 positives the count alone is
    uncertain by about -40 %/+60 %, so a point calibration outside a band proves little.

    >>> lo, hi = calibration_interval(18 * 0.5, 18)
    >>> round(lo, 2), round(hi, 2)
    (0.32, 0.84)
    """
    from scipy.stats import chi2

    k_lo = chi2.ppf(alpha / 2, 2 * positives) / 2 if positives > 0 else 0.0
    k_hi = chi2.ppf(1 - alpha / 2, 2 * positives + 2) / 2
    return float(expected / k_hi), (float(expected / k_lo) if k_lo > 0 else float("inf"))


def _metrics(p, y, w) -> dict:
    import numpy as np
    from sklearn.metrics import log_loss, roc_auc_score

    p = np.clip(p, 1e-7, 1 - 1e-7)
    expected, observed = float(np.sum(p * w)), float(np.sum(y * w))
    return {"logloss": float(log_loss(y, p, sample_weight=w, labels=[0, 1])),
            "auc": float(roc_auc_score(y, p, sample_weight=w)) if 0 < y.sum() < len(y) else None,
            "calibration": float(np.average(p, weights=w) / max(np.average(y, weights=w), 1e-12)),
            "calibration_ci95": list(calibration_interval(expected, observed)),
            "examples": int(len(y)), "positives": int(y.sum())}


@tfx.dsl.components.component
def EvaluateCandidate(model: tfx.dsl.components.InputArtifact[standard_artifacts.Model],
                      examples: tfx.dsl.components.InputArtifact[standard_artifacts.Examples],
                      blessing: tfx.dsl.components.OutputArtifact[standard_artifacts.ModelBlessing],
                      evaluation: tfx.dsl.components.OutputArtifact[standard_artifacts.ModelEvaluation],
                      report_dir: tfx.dsl.components.Parameter[str],
                      champion: tfx.dsl.components.Parameter[str] = "",
                      min_auc_delta: tfx.dsl.components.Parameter[float] = -0.005,
                      max_logloss_ratio: tfx.dsl.components.Parameter[float] = 1.01,
                      calibration_low: tfx.dsl.components.Parameter[float] = 0.5,
                      calibration_high: tfx.dsl.components.Parameter[float] = 2.0) -> None:
    """Candidate vs champion on the eval slice. ``champion``: JSON {"path": base_model.npz,
    "version": ...} of the current base model, or {"prior_rate": r} (the constant prior)."""
    import numpy as np

    from models.base import BaseModel

    cols = _columns(_records(examples, "eval"))
    y, w = cols["label"], cols["weight"]
    sig = lambda z: 1.0 / (1.0 + np.exp(-z))  # noqa: E731
    cand = _metrics(sig(_load_base(model).logits(cols["indices"], cols["values"])), y, w)
    champ_cfg = json.loads(champion) if champion else {"prior_rate": float(np.average(y, weights=w))}
    if "path" in champ_cfg:
        champ_p = sig(BaseModel.from_bytes(Path(champ_cfg["path"]).read_bytes()).logits(cols["indices"], cols["values"]))
    else:
        champ_p = np.full(len(y), champ_cfg["prior_rate"])
    champ = _metrics(champ_p, y, w)
    reasons = []
    if cand["auc"] is None:
        reasons.append("the eval slice has a single class: AUC undefined")
    elif champ["auc"] is not None and cand["auc"] < champ["auc"] + min_auc_delta:
        reasons.append(f"AUC {cand['auc']:.4f} < champion {champ['auc']:.4f} {min_auc_delta:+}")
    if cand["logloss"] > champ["logloss"] * max_logloss_ratio:
        reasons.append(f"logloss {cand['logloss']:.5f} > champion {champ['logloss']:.5f} x {max_logloss_ratio}")
    # refused only when the whole 95 % interval is outside the band (see calibration_interval)
    c_lo, c_hi = cand["calibration_ci95"]
    if c_hi < calibration_low or c_lo > calibration_high:
        reasons.append(f"calibration {cand['calibration']:.3f} (95 % interval [{c_lo:.3f}, {c_hi:.3f}], "
                       f"{cand['positives']} positives) outside [{calibration_low}, {calibration_high}]")
    ok = not reasons
    report = {"candidate": cand, "champion": {**champ, **{k: v for k, v in champ_cfg.items() if k != "path"}},
              "blessed": ok, "reasons": reasons, "thresholds": {
                  "min_auc_delta": min_auc_delta, "max_logloss_ratio": max_logloss_ratio,
                  "calibration": [calibration_low, calibration_high]}}
    Path(evaluation.uri).mkdir(parents=True, exist_ok=True)
    (Path(evaluation.uri) / "metrics.json").write_text(json.dumps(report, indent=1) + "\n")
    _bless(blessing, ok, "BLESSED")
    _report(report_dir, "evaluation", report)


@tfx.dsl.components.component
def RegistryPush(model: tfx.dsl.components.InputArtifact[standard_artifacts.Model],
                 blessing: tfx.dsl.components.InputArtifact[standard_artifacts.ModelBlessing],
                 infra_blessing: tfx.dsl.components.InputArtifact[standard_artifacts.InfraBlessing],
                 pushed_model: tfx.dsl.components.OutputArtifact[standard_artifacts.PushedModel],
                 registry: tfx.dsl.components.Parameter[str],
                 manifest: tfx.dsl.components.Parameter[str],
                 report_dir: tfx.dsl.components.Parameter[str]) -> None:
    """Publish + promote a model only if both blessings say so; else record why not."""
    from models.registry import Registry

    blessed = bool(blessing.get_int_custom_property("blessed"))
    infra = bool(infra_blessing.get_int_custom_property("blessed"))
    report: dict = {"pushed": False, "blessed": blessed, "infra_blessed": infra}
    if blessed and infra:
        src = Path(model.uri) / "Format-Serving"
        files = {p.relative_to(src).as_posix(): p.read_bytes() for p in sorted(src.rglob("*")) if p.is_file()}
        m = json.loads(manifest)
        evaluation = json.loads((Path(report_dir) / "evaluation.json").read_text())
        infra_report = json.loads((Path(report_dir) / "infra.json").read_text())
        training = json.loads((src / "assets.extra" / "training.json").read_text())
        reg = Registry(registry)
        ref = reg.publish("base", files, {**m, "model": "tfx_base", "metrics": evaluation["candidate"],
                                          "champion_metrics": evaluation["champion"], "blessing": {
                                              "blessed": True, "infra": infra_report}, "training": training,
                                          "tfx_model_uri": model.uri})
        reg.promote("base", ref.version, fingerprint=m["spec_fingerprint"], reason="push")
        report.update(pushed=True, version=ref.version, path=str(ref.path))
        pushed_model.set_int_custom_property("pushed", 1)
        pushed_model.set_string_custom_property("pushed_version", ref.version)
    else:
        pushed_model.set_int_custom_property("pushed", 0)
    _report(report_dir, "push", report)
