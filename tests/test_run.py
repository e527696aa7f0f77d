"""``mf2m run``: configs, the content-addressed cache, resumption, and the end-to-end pipeline.

The end-to-end tests need ../shared/data/lfw (skipped without it) and use the small real torch models
of ``tests/attack_models.py`` (seeded random weights) so they run in seconds; every other part is the
real thing: dlib preparation, the attack stage, the embed stage, the search stage and the report.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from attack_models import TinyMaskDetector, TinyRecognizer

from benchmark.report.collect import read_csv_rows
from benchmark.workflows.cache import stage_key
from benchmark.workflows.config import load_config
from benchmark.workflows.run import run_pipeline


class OtherRecognizer(TinyRecognizer):
    """A second recognizer (other weights) for the black-box columns."""

    name = "tiny-fr-b"


def factory(name: str):
    return {
        "tiny-fr": lambda: TinyRecognizer(1),
        "tiny-fr-b": lambda: OtherRecognizer(7),
        "tiny-md": lambda: TinyMaskDetector(2),
    }[name]()


CONFIG = """
name: toy
cache: {cache}
device: cpu
data: {{identities: 3, max_images: 3, templates: 3, distractors: 12, seed: 0}}
attack:
  fr: tiny-fr
  md: tiny-md
  methods: [none, solid, dm, fgsm]
  params: {{fgsm: {fgsm}}}
evaluate: {{models: [tiny-fr, tiny-fr-b], fars: [1.0e-6, 1.0e-2], distractor_sizes: [4]}}
report: {{far: 1.0e-6, examples: 1}}
"""


def write_config(tmp: Path, fgsm: str = "{eps: 0.04}") -> Path:
    path = tmp / "toy.yaml"
    path.write_text(CONFIG.format(cache=tmp / "cache", fgsm=fgsm))
    return path


def test_config_errors_name_the_file(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: x\nattack: {fr: sface, colour: red}\n")
    with pytest.raises(ValueError, match=r"bad.yaml: attack: unknown key\(s\) colour"):
        load_config(bad)
    bad.write_text("attack: {methods: [mf2m, nope]}\n")
    with pytest.raises(ValueError, match="unknown method"):
        load_config(bad)
    bad.write_text("report: {far: 1.0e-5}\nevaluate: {fars: [1.0e-6]}\n")
    with pytest.raises(ValueError, match="not among evaluate.fars"):
        load_config(bad)
    with pytest.raises(FileNotFoundError):
        load_config(tmp_path / "missing.yaml")


def test_unknown_attack_parameter_is_rejected_when_the_config_loads(tmp_path):
    """A misspelt hyper-parameter stops ``load_config`` (before any stage), naming it and the likely intent."""
    bad = tmp_path / "bad.yaml"
    bad.write_text("attack: {params: {mf2m: {kernel_step: 80}}}\n")
    with pytest.raises(
        ValueError,
        match=r"bad.yaml: attack.params.mf2m: unknown mf2m hyper-parameter "
        r"'kernel_step' \(did you mean 'kernel_steps'\?\)",
    ):
        load_config(bad)
    bad.write_text("attack: {params: {solid: {eps: 0.1}}}\n")
    with pytest.raises(ValueError, match="solid is a plain mask"):
        load_config(bad)
    bad.write_text("attack: {params: {fgsm: {seed: 3}}}\n")
    with pytest.raises(ValueError, match="set the attack's seed instead"):
        load_config(bad)
    bad.write_text("attack: {params: {mf2n: {kernel_steps: 3}}}\n")
    with pytest.raises(ValueError, match="unknown method 'mf2n'"):
        load_config(bad)
    with pytest.raises(ValueError, match="unknown mf2m hyper-parameter 'kernel_step'"):  # --set is checked too
        load_config(tmp_path / "bad.yaml", overrides=["attack.params={mf2m: {kernel_step: 1}}"])
    bad.write_text("attack: {params: {mf2m: {kernel_steps: 3, noise_steps: 2}, i-fgsm: {steps: 2}}}\n")
    assert load_config(bad).attack.params["mf2m"] == {"kernel_steps": 3, "noise_steps": 2}


def test_shipped_configs_load():
    root = Path(__file__).resolve().parents[1] / "configs"
    t1 = load_config(root / "table1.yaml", data="lfw:/x")
    assert t1.evaluate.models == [t1.attack.fr] and len(t1.attack.methods) == 12
    t2 = load_config(root / "table2.yaml")
    assert "dlib" in t2.evaluate.models and t2.attack.fr not in t2.evaluate.models
    demo = load_config(root / "demo.yaml")
    assert demo.attack.params["mf2m"]["kernel_steps"] < 160


def test_set_overrides_config_values(tmp_path):
    root = Path(__file__).resolve().parents[1] / "configs"
    cfg = load_config(
        root / "table1.yaml",
        overrides=["data.identities=20", "data.max_images=2", "attack.params={mf2m: {kernel_steps: 80}}", "name=small"],
    )
    assert (cfg.data.identities, cfg.data.max_images, cfg.name) == (20, 2, "small")
    assert cfg.attack.params == {"mf2m": {"kernel_steps": 80}} and cfg.data.templates == 300
    with pytest.raises(ValueError, match="unknown key"):
        load_config(root / "table1.yaml", overrides=["data.identitys=20"])
    with pytest.raises(ValueError, match="SECTION.KEY=VALUE"):
        load_config(root / "table1.yaml", overrides=["data.identities"])
    with pytest.raises(ValueError, match="not among evaluate.fars"):
        load_config(root / "table1.yaml", overrides=["report.far=0.5"])


def test_stage_key_covers_the_stage_code(monkeypatch):
    """A change in the code implementing a stage gives new keys (stale results are never reused)."""
    from benchmark.manifest import code_fingerprint
    from benchmark.workflows import cache

    assert code_fingerprint("attack") != code_fingerprint("search")
    assert len(code_fingerprint("embed")) == 64
    before = stage_key("attack", {"method": "dm"}, {"split": "1"})
    monkeypatch.setattr(cache, "code_fingerprint", lambda stage: "edited")
    assert stage_key("attack", {"method": "dm"}, {"split": "1"}) != before


def test_stage_key_is_content_addressed():
    a = stage_key("embed", {"model": "m", "flip": False}, {"csv": "1"})
    assert a == stage_key("embed", {"flip": False, "model": "m"}, {"csv": "1"})  # order-free
    assert a != stage_key("embed", {"model": "m", "flip": True}, {"csv": "1"})
    assert a != stage_key("embed", {"model": "m", "flip": False}, {"csv": "2"})


@pytest.fixture(scope="module")
def first_run(lfw_dir, tmp_path_factory):
    pytest.importorskip("benchmark.embed.engine", reason="the embed stage is not in this checkout")
    tmp = tmp_path_factory.mktemp("run")
    cfg = load_config(write_config(tmp), data=f"lfw:{lfw_dir}", out=str(tmp / "out"))
    record = run_pipeline(cfg, progress=False, model_factory=factory)
    return tmp, cfg, record


def test_pipeline_end_to_end(first_run):
    """On LFW: every method × model evaluated, numbers in the tables equal the search outputs."""
    tmp, cfg, record = first_run
    out = Path(cfg.out)
    run = json.loads((out / "run.json").read_text())
    assert run["complete"] and run["format"] == "mf2m.run.v1"
    assert run["setting"]["data"] == run["config"]["data"]["spec"] == "lfw:$DATA/lfw"  # no path of this machine
    assert len(run["entries"]) == 8
    assert all(not s["cached"] for s in run["stages"])
    split = next(Path(s["dir"]) for s in run["stages"] if s["stage"] == "split")
    probes = read_csv_rows(split / "probes.csv")
    ids = {r["identity"] for r in probes}
    assert len(ids) == 3 and len(probes) <= 9
    # clean probes against themselves: an image is never its own mate
    none = next(e for e in run["entries"] if e["method"] == "none" and e["eval_model"] == "tiny-fr")
    metrics = json.loads((out / none["search"] / "metrics.json").read_text())
    per_id = [sum(r["identity"] == i for r in probes) for i in ids]
    assert metrics["counts"]["positive_pairs"] == sum(n * (n - 1) for n in per_id)
    assert metrics["counts"]["distractors"] == len(read_csv_rows(split / "distractors.csv"))
    # attacked probes keep the keys of their clean images (so the self-pair is excluded there too)
    dm = next(e for e in run["entries"] if e["method"] == "dm" and e["eval_model"] == "tiny-fr")
    dm_stage = next(Path(s["dir"]) for s in run["stages"] if s["stage"] == "attack" and s["label"] == "dm")
    attacked = read_csv_rows(dm_stage / "attacked.csv")
    assert {r["key"] for r in attacked} <= {r["key"] for r in probes}
    dm_metrics = json.loads((out / dm["search"] / "metrics.json").read_text())
    assert dm_metrics["counts"]["probes"] == len(attacked)
    # templates never share an identity with the probes or distractors
    templates = {r["identity"] for r in read_csv_rows(split / "templates.csv")}
    assert not templates & ids
    assert not templates & {r["identity"] for r in read_csv_rows(split / "distractors.csv")}
    # nor do distractors: a probe identity's leftover images (beyond max_images) are excluded and counted
    assert not ids & {r["identity"] for r in read_csv_rows(split / "distractors.csv")}
    excluded = json.loads((split / "split.json").read_text())["excluded_probe_identity_images"]
    assert set(excluded) == {"templates", "distractors"} and all(v >= 0 for v in excluded.values())
    # the report shows exactly the search's numbers
    rows = read_csv_rows(out / "report" / "table1.csv")
    dm_row = next(r for r in rows if r["method"] == "dm")
    assert float(dm_row["rank1"]) == dm_metrics["rank1"] and float(dm_row["auc"]) == dm_metrics["auc"]
    assert next(r for r in rows if r["method"] == "mf2m")["rank1"] == ""  # not run → empty
    p = [float(r["p_masked"]) for r in read_csv_rows(out / dm["attack"] / "probes.csv") if r["status"] == "ok"]
    assert float(dm_row["mask_rate"]) == pytest.approx(np.mean(np.array(p) > 0.5))
    t2 = read_csv_rows(out / "report" / "table2.csv")
    assert next(r for r in t2 if r["method"] == "fgsm")["tiny-fr-b:rank1"] != ""
    for name in (
        "index.html",
        "table1.md",
        "table1.tex",
        "table2.md",
        "plots/cmc_tiny-fr.png",
        "plots/roc_tiny-fr-b_from_tiny-fr.png",
        "examples/dm.png",
    ):
        assert (out / "report" / name).is_file(), name


def test_rerun_reuses_everything_and_changes_recompute_only_what_depends_on_them(first_run, lfw_dir):
    tmp, cfg, _ = first_run
    out = Path(cfg.out)
    again = run_pipeline(
        load_config(write_config(tmp), data=f"lfw:{lfw_dir}", out=str(out)), progress=False, model_factory=factory
    )
    assert all(s["cached"] for s in again["stages"])
    first = json.loads((out / "run.json").read_text())
    # another FGSM step size: the FGSM attack, its embeddings and searches rerun; nothing else
    changed = run_pipeline(
        load_config(write_config(tmp, "{eps: 0.02}"), data=f"lfw:{lfw_dir}", out=str(out)),
        progress=False,
        model_factory=factory,
    )
    ran = [s["label"] for s in changed["stages"] if not s["cached"]]
    assert "fgsm" in ran
    assert all("fgsm" in label for label in ran), ran

    def fgsm_keys(record):
        return {s["key"] for s in record["stages"] if "fgsm" in s["label"]}

    assert fgsm_keys(first).isdisjoint(fgsm_keys(changed))


def test_interrupted_stage_resumes(first_run, lfw_dir):
    """A stage folder without its completion record is resumed: the attack redoes only missing probes."""
    tmp, cfg, _ = first_run
    out = Path(cfg.out)
    run = json.loads((out / "run.json").read_text())
    solid = Path(next(s["dir"] for s in run["stages"] if s["stage"] == "attack" and s["label"] == "solid"))
    (solid / ".stage.json").unlink()
    lines = (solid / "rows.jsonl").read_text().splitlines()
    (solid / "rows.jsonl").write_text(lines[0] + "\n")  # as if killed after the first probe
    cfg2 = load_config(write_config(tmp), data=f"lfw:{lfw_dir}", out=str(out))
    record = run_pipeline(cfg2, progress=False, model_factory=factory)
    ran = [s for s in record["stages"] if not s["cached"]]
    assert [s["label"] for s in ran] == ["solid"]
    manifest = json.loads((solid / "manifest.json").read_text())
    assert manifest["summary"]["counts"]["processed_now"] == len(lines) - 1


def test_run_folder_keeps_raw_outputs_that_rederive_its_tables(first_run, tmp_path):
    """run.json names raw outputs inside the run folder; a copy without the cache re-renders identical tables."""
    import shutil

    from rederive import table_files

    from benchmark.report.build import build_report

    _, cfg, _ = first_run
    out = Path(cfg.out)
    run = json.loads((out / "run.json").read_text())
    for e in run["entries"]:
        for role in ("search", "attack"):
            if e[role] is not None:
                assert not Path(e[role]).is_absolute() and e[role].startswith("raw/"), e[role]
    dm = next(e for e in run["entries"] if e["method"] == "dm" and e["eval_model"] == "tiny-fr")
    search = out / dm["search"]
    assert {p.name for p in search.iterdir()} == {
        "metrics.json",
        "cmc.csv",
        "roc.csv",
        "per_probe.csv",
        "manifest.json",
    }
    # per_probe.csv: the best mate and its rank agree with topk.csv of the cached search stage; the attack
    # columns are the attack's own values
    per_probe = read_csv_rows(search / "per_probe.csv")
    assert list(per_probe[0]) == [
        "key",
        "identity",
        "source",
        "best_mate_score",
        "best_mate",
        "rank",
        "p_masked",
        "psnr",
        "ssim",
    ]
    stage = next(Path(s["dir"]) for s in run["stages"] if s["stage"] == "search" and s["label"] == "dm on tiny-fr")
    topk = read_csv_rows(stage / "topk.csv")
    metrics = json.loads((search / "metrics.json").read_text())
    assert len(per_probe) == metrics["counts"]["probes"]
    for row in per_probe:
        mine = [t for t in topk if t["probe"] == row["key"]]
        first = next(t for t in mine if t["role"] == "mate" and t["same_identity"] == "1")
        assert row["best_mate"] == first["gallery"] and float(row["best_mate_score"]) == float(first["score"])
        assert int(row["rank"]) == 1 + sum(
            t["role"] == "distractor" and int(t["rank"]) < int(first["rank"]) for t in mine
        )
    attack = read_csv_rows(out / dm["attack"] / "probes.csv")
    assert sorted(float(r["p_masked"]) for r in per_probe) == sorted(
        float(r["p_masked"]) for r in attack if r["status"] == "ok"
    )
    # a copy of the run folder alone (no cache) re-renders byte-identical tables
    copy = tmp_path / "copy"
    shutil.copytree(out, copy)
    build_report([str(copy)], tmp_path / "again")
    ours, again = table_files(out / "report"), table_files(tmp_path / "again")
    assert ours and ours.keys() == again.keys()
    assert all(ours[k] == again[k] for k in ours), [k for k in ours if ours[k] != again[k]]


STORE_CONFIG = """
name: stored
cache: cache
store: results/stored/stages
device: cpu
data: {{identities: 3, max_images: 3, templates: 3, distractors: 12, seed: 0, spec: "lfw:{lfw}"}}
attack: {{fr: tiny-fr, md: tiny-md, methods: [none, solid, fgsm]}}
evaluate: {{models: [tiny-fr, tiny-fr-b], fars: [1.0e-6, 1.0e-2], distractor_sizes: [4]}}
report: {{far: 1.0e-6, examples: 1}}
"""


def _run_in(checkout: Path, lfw_dir: Path, monkeypatch) -> dict:
    """``mf2m run`` of STORE_CONFIG from ``checkout`` (relative cache and store, as in a repository)."""
    monkeypatch.chdir(checkout)
    (checkout / "stored.yaml").write_text(STORE_CONFIG.format(lfw=lfw_dir))
    return run_pipeline(load_config(checkout / "stored.yaml"), progress=False, model_factory=factory)


def test_stage_store_continues_a_run_on_a_fresh_checkout(lfw_dir, tmp_path, monkeypatch):
    """Attacks and embeddings are stored without images; a fresh checkout holding only the store restores them
    (no attack runs, same tables); an embedding missing from the store makes its attack run again for images."""
    import shutil

    from rederive import table_files

    first_checkout, second = tmp_path / "a", tmp_path / "b"
    first_checkout.mkdir()
    first = _run_in(first_checkout, lfw_dir, monkeypatch)
    store = first_checkout / "results/stored/stages"
    stored = sorted(p.name.split("-")[0] for p in store.iterdir())
    assert (
        stored.count("attack") == 2 and stored.count("embed") == 2 * 2 * 2 + 2
    )  # attacked probes and their mates per model; the clean probes per model; never the distractors
    assert not [p for p in store.rglob("*") if p.suffix == ".png"]  # no images
    texts = [p.read_text() for p in store.rglob("*") if p.suffix in (".csv", ".json", ".jsonl")]
    assert not [t for t in texts if str(tmp_path) in t or "/work/" in t]  # no path of this machine
    assert any("$CACHE/attack-" in t for t in texts)
    assert all(json.loads((p / ".stage.json").read_text())["light"] for p in store.glob("attack-*"))
    tables = table_files(first_checkout / "results/stored/report")

    # a fresh checkout: only the committed store, at another place on disk
    shutil.copytree(store, second / "results/stored/stages")
    shutil.rmtree(first_checkout / "cache")  # the first machine's images are gone
    again = _run_in(second, lfw_dir, monkeypatch)
    ran = {(s["stage"], s["label"]) for s in again["stages"] if not s["cached"]}
    assert ran == {
        ("split", "probes/templates/distractors"),
        ("embed", "distractors on tiny-fr"),
        ("embed", "distractors on tiny-fr-b"),
    } | {("search", s["label"]) for s in first["stages"] if s["stage"] == "search"}, ran

    def kept_keys(record):  # the search keys follow the distractors' new features (a new manifest)
        return {s["key"] for s in record["stages"] if s["stage"] != "search"}

    assert kept_keys(again) == kept_keys(first)
    assert "restored from the stage store results/stored/stages" in again["summary"]
    assert table_files(second / "results/stored/report") == tables
    assert not list((second / "results/stored/report").rglob("examples/fgsm*"))  # no images, no example

    # an embedding the store lacks needs the attacked images: that attack runs again (only that one)
    shutil.rmtree(second / "cache")
    [lost] = [
        p
        for p in (second / "results/stored/stages").glob("embed-*")
        if json.loads((p / ".stage.json").read_text())["label"] == "fgsm on tiny-fr-b"
    ]
    shutil.rmtree(lost)
    third = _run_in(second, lfw_dir, monkeypatch)
    ran = [(s["stage"], s["label"]) for s in third["stages"] if not s["cached"]]
    assert ("attack", "fgsm") in ran and ("embed", "fgsm on tiny-fr-b") in ran
    assert ("attack", "solid") not in ran and ("embed", "fgsm on tiny-fr") not in ran
    assert table_files(second / "results/stored/report") == tables
    assert lost.is_dir()  # stored again


def test_raw_outputs_write_data_paths_as_named(tmp_path, monkeypatch):
    """The manifests a run folder keeps under raw/ name the data sets as run.json does (no ../shared/…)."""
    from benchmark.report import raw

    stage = tmp_path / "attack"
    stage.mkdir()
    (stage / "probes.csv").write_text("key,status\na,ok\n")
    (stage / "manifest.json").write_text('{"argv": ["run", "--data", "lfw:../shared/data/lfw"]}')
    kept = raw.keep_attack(tmp_path / "out", stage, "dm", {"lfw:../shared/data/lfw": "lfw:$DATA/lfw"})
    assert json.loads((kept / "manifest.json").read_text())["argv"] == ["run", "--data", "lfw:$DATA/lfw"]
    assert (kept / "probes.csv").read_text() == "key,status\na,ok\n"
    from benchmark.report.build import ReportOptions, build_report

    search = tmp_path / "search"
    search.mkdir()
    metrics = {"rank1": 0.5, "auc": 0.9, "tar_at_far": [], "counts": {"probes": 2}}
    (search / "metrics.json").write_text(json.dumps(metrics))
    monkeypatch.setattr("sys.argv", ["mf2m", "run", "--data", "lfw:../shared/data/lfw"])
    renames = {"lfw:../shared/data/lfw": "lfw:$DATA/lfw"}
    manifest = build_report([str(search)], tmp_path / "report", ReportOptions(renames=renames))
    assert (
        "../shared" not in json.dumps(manifest) and "../shared" not in (tmp_path / "report/manifest.json").read_text()
    )


def test_stage_store_writes_data_paths_as_named(tmp_path):
    """Text the store keeps names the data sets as given by ``renames`` (a command line in a manifest)."""
    from benchmark.workflows.cache import Cache

    cache = Cache(tmp_path / "cache", store=tmp_path / "store", renames={"lfw:../shared/data/lfw": "lfw:$DATA/lfw"})
    res = cache.run(
        "attack",
        "x",
        {},
        {},
        lambda f: (f / "manifest.json").write_text('{"argv": ["lfw:../shared/data/lfw"]}'),
        keep=True,
    )
    assert (res.dir / "manifest.json").read_text() == '{"argv": ["lfw:../shared/data/lfw"]}'  # the cache keeps it
    assert (tmp_path / "store" / res.dir.name / "manifest.json").read_text() == '{"argv": ["lfw:$DATA/lfw"]}'
