"""``mf2m run`` with issue 14's pool: ``data.probes_per_identity`` (separate clean mates) and
``data.distractors_from`` (distractors from a second dataset).

The config tests need nothing; the end-to-end test needs ../shared/data/lfw and ../shared/data/celeba
(skipped without them): a small LFW folder and a small CelebA folder (files linked from ../shared), real
dlib face preparation, the attack, embed and search stages, with the small torch models of
``tests/attack_models.py``.
"""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import pytest
from attack_models import TinyMaskDetector, TinyRecognizer

from benchmark.report.collect import read_csv_rows
from benchmark.workflows.config import load_config
from benchmark.workflows.run import run_pipeline
from benchmark.workflows.splits import plan_split_of

POOL = """
name: pool
cache: {cache}
device: cpu
data: {{identities: 3, probes_per_identity: 2, max_images: 6, min_images: 3, templates: 1, seed: 0,
        distractors_from: ["folder:{celeba}"]}}
attack: {{fr: tiny-fr, md: tiny-md, methods: [none, solid, fgsm], params: {{fgsm: {{eps: 0.04}}}}}}
evaluate: {{models: [tiny-fr], fars: [1.0e-6, 1.0e-2], distractor_sizes: [4]}}
report: {{far: 1.0e-6, examples: 0}}
"""


def factory(name: str):
    return {"tiny-fr": lambda: TinyRecognizer(1), "tiny-md": lambda: TinyMaskDetector(2)}[name]()


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("data.probes_per_identity=five", "data.probes_per_identity must be an integer"),
        ("data.probes_per_identity=2", r"data.min_images \(2\) must exceed data.probes_per_identity \(2\)"),
        ("data.distractors_from={a: 1}", "data.distractors_from must be a list of dataset specs"),
        ("data.distractors_from=[folder:x, folder:x]", "names a dataset twice"),
        ("data.distractors_from=[folder:main]", "repeats the main dataset"),
    ],
)
def test_pool_config_errors_name_the_key(tmp_path, value, message):
    config = tmp_path / "c.yaml"
    config.write_text("data: {spec: 'folder:main', min_images: 2}\n")
    with pytest.raises(ValueError, match=message) as err:
        load_config(config, overrides=[value])
    assert str(config) in str(err.value)


def test_pool_config_reads_and_passes_the_settings(tmp_path):
    config = tmp_path / "c.yaml"
    config.write_text("data: {probes_per_identity: 5, min_images: 6, distractors_from: folder:b}\n")
    cfg = load_config(config)
    assert cfg.data.probes_per_identity == 5 and cfg.data.distractors_from == ["folder:b"]
    from benchmark.workflows.config import split_request

    assert split_request(cfg.data).probes_per_identity == 5
    assert load_config(tmp_path / "c.yaml", overrides=["data.distractors_from=[]"]).data.distractors_from == []


@pytest.fixture(scope="module")
def small_sets(shared_dir, tmp_path_factory) -> tuple[Path, Path]:
    """(LFW folder: 4 people × 8 photos + 6 people × 1, CelebA folder: 4 people × 2), linked from ../shared."""
    lfw, celeba = shared_dir / "data" / "lfw" / "images", shared_dir / "data" / "celeba" / "images"
    if not lfw.is_dir() or not celeba.is_dir():
        pytest.skip("../shared/data/lfw or ../shared/data/celeba is not present")
    base = tmp_path_factory.mktemp("pool")
    people = sorted(p for p in lfw.iterdir() if p.is_dir())
    many = [p for p in people if len(list(p.iterdir())) >= 8][:4]
    single = [p for p in people if len(list(p.iterdir())) == 1][:6]
    celeb = sorted(p for p in celeba.iterdir() if p.is_dir())[:4]
    for root, group, n in ((base / "lfw", many, 8), (base / "lfw", single, 1), (base / "celeba", celeb, 2)):
        for person in group:
            (root / person.name).mkdir(parents=True)
            for photo in sorted(person.iterdir())[:n]:
                (root / person.name / photo.name).symlink_to(photo)
    return base / "lfw", base / "celeba"


def test_pool_run_on_lfw_and_celeba(small_sets, tmp_path):
    """On real LFW + CelebA faces: N probes per identity attacked, mates from mates.csv, distractors from both
    datasets, positive pairs = Σ probes × their identity's mates for the clean and the attacked probes."""
    lfw, celeba = small_sets
    config = tmp_path / "pool.yaml"
    config.write_text(POOL.format(cache=tmp_path / "cache", celeba=celeba))
    cfg = load_config(config, data=f"folder:{lfw}", out=str(tmp_path / "out"))
    record = run_pipeline(cfg, progress=False, model_factory=factory)
    split = Path(next(s["dir"] for s in record["stages"] if s["stage"] == "split"))
    probes, mates = read_csv_rows(split / "probes.csv"), read_csv_rows(split / "mates.csv")
    distractors = read_csv_rows(split / "distractors.csv")
    pool = Counter(r["identity"] for r in probes)
    assert len(pool) == 3 and set(pool.values()) == {2}  # N = 2 probes per identity
    n_mates = Counter(r["identity"] for r in mates)
    assert set(n_mates) == set(pool) and all(1 <= n <= 4 for n in n_mates.values())  # ≤ max_images − N
    assert not {r["key"] for r in probes} & {r["key"] for r in mates}
    # distractors from both datasets, each prepared in its own folder; no probe identity among them
    celeb_ids = {p.name for p in celeba.iterdir()}
    d_ids = {r["identity"] for r in distractors}
    assert d_ids & celeb_ids and d_ids - celeb_ids and not d_ids & set(pool)
    assert len({Path(r["path"]).parent.parent for r in distractors}) == 2
    split_json = json.loads((split / "split.json").read_text())
    assert [d["spec"] for d in split_json["distractors_datasets"]] == [f"folder:{celeba}"]
    assert split_json["accounting"]["roles"]["mates"]["obtained"] == len(mates)
    pairs = sum(n_mates[r["identity"]] for r in probes)
    out = Path(cfg.out)
    for method in ("none", "solid", "fgsm"):
        entry = next(e for e in record["entries"] if e["method"] == method)
        metrics = json.loads((out / entry["search"] / "metrics.json").read_text())
        c = metrics["counts"]
        assert (c["mates"], c["distractors"]) == (len(mates), len(distractors)), method
        if method == "none":
            assert (c["probes"], c["positive_pairs"]) == (len(probes), pairs)
            continue
        # the attack ran on the probes only, and its probes are paired with the split's mates by name
        attack = Path(next(s["dir"] for s in record["stages"] if s["stage"] == "attack" and s["label"] == method))
        attacked = read_csv_rows(attack / "attacked.csv")
        assert len(read_csv_rows(attack / "probes.csv")) == len(probes)
        assert c["probes"] == len(attacked) and c["positive_pairs"] == sum(n_mates[r["identity"]] for r in attacked)
    run = json.loads((out / "run.json").read_text())
    assert run["setting"]["mates"] == len(mates) and "mates" in run["setting"]["split"]
    # both datasets recorded under $DATA, the folder that holds the main one (no path of this machine)
    assert run["setting"]["data"].endswith(":$DATA/lfw") and run["setting"]["distractors_from"].startswith(
        "folder:$DATA/"
    )
    # the extra dataset's listing is an input of the split: another CelebA folder gives another split key
    _, _, inputs = plan_split_of(cfg, *reversed_listing(cfg))
    cfg.data.distractors_from = []
    _, _, without = plan_split_of(cfg, *reversed_listing(cfg))
    assert "distractors.0" in inputs and "distractors.0" not in without


def reversed_listing(cfg):
    """(dataset, listing) of the main dataset, in ``plan_split_of``'s argument order."""
    from benchmark.workflows.splits import listing_fingerprint

    listing, dataset = listing_fingerprint(cfg.data.spec)
    return dataset, listing


def test_evidence_config_loads_with_the_issue_settings():
    """configs/evidence.yaml: 80 × 5 probes, ≤ 20 mates, the FAR grid, fp32 embeddings, SFace and dlib, a stage
    store inside the run folder; no data path."""
    root = Path(__file__).resolve().parents[1] / "configs"
    cfg = load_config(root / "evidence.yaml", overrides=["data.distractors_from=[folder:/celeba]"])
    d, e = cfg.data, cfg.evaluate
    assert (d.identities, d.probes_per_identity, d.max_images, d.min_images) == (80, 5, 25, 6)
    assert d.spec is None and e.fars == [1e-6, 1e-5, 1e-4, 1e-3] and cfg.report.far == 1e-4
    assert e.distractor_sizes == [10, 100, 1000, 10000] and e.precision == "fp32"
    assert len(cfg.attack.methods) == 12 and d.distractors_from == ["folder:/celeba"]
    assert e.models == [cfg.attack.fr, "dlib"]  # Table 1 white-box, Table 2 black-box
    assert cfg.store == f"{cfg.out}/stages"


def test_template_reason_counts_only_the_main_datasets_held_images(tmp_path):
    """With extra distractor datasets the reason 'template identities hold N images' counts the main folder's."""
    from test_split import face_folder

    from benchmark.data.datasets import load_dataset
    from benchmark.data.split import SplitRequest, plan_split

    main = face_folder(tmp_path / "main", {**{f"p{i}": 4 for i in range(4)}, **{f"o{i}": 2 for i in range(6)}})
    extra = load_dataset(f"folder:{face_folder(tmp_path / 'extra', {f'x{i}': 2 for i in range(3)})}")
    plan = plan_split(
        load_dataset(f"folder:{main}"),
        SplitRequest(identities=4, max_images=4, min_images=3, templates=1),
        distractors_from=[extra],
    )
    assert len(plan.template_identities) == 1 and len(plan.distractors) == 5 * 2 + 3 * 2
    assert "1 template identities hold 2 images out of the gallery" in plan.reasons["distractors"]


def test_probes_of_an_identity_whose_mates_all_fail_preparation_are_dropped(lfw_dir, tmp_path):
    """(needs ../shared/data/lfw) Real LFW probes whose only mate is not a face: the split drops those probes
    (``no-mate-left``) so that the search never meets a probe identity without a mate."""
    import numpy as np

    from benchmark.data.datasets import load_dataset
    from benchmark.data.images import write_png
    from benchmark.data.split import SplitRequest, plan_split
    from benchmark.workflows.splits import SplitSources, split_stage

    people = sorted(p for p in (lfw_dir / "images").iterdir() if p.is_dir() and len(list(p.iterdir())) >= 3)[:2]
    root = tmp_path / "faces"
    for person in people:
        (root / person.name).mkdir(parents=True)
        for photo in sorted(person.iterdir())[:3]:
            (root / person.name / photo.name).symlink_to(photo)
    lone = people[0].name
    write_png(root / lone / "zz_not_a_face.png", np.full((64, 64, 3), 127, np.uint8))
    ds = load_dataset(f"folder:{root}")
    plan = plan_split(ds, SplitRequest(identities=2, max_images=None, min_images=3, templates=0, probes_per_identity=2))
    # the lone identity's mate is the grey square, the other's a real photo
    by_id = {p.name: [it for it in ds.items if it.identity == p.name] for p in people}
    plan.probes = by_id[lone][:2] + by_id[people[1].name][:2]
    plan.mates = [by_id[lone][-1], by_id[people[1].name][2]]
    config = tmp_path / "c.yaml"
    config.write_text(f"cache: {tmp_path / 'cache'}\ndata: {{min_images: 3, probes_per_identity: 2}}\n")
    cfg = load_config(config, data=f"folder:{root}")
    (tmp_path / "split").mkdir()
    split_stage(cfg, plan, SplitSources(ds, ds), tmp_path / "split", progress=False)
    probes = read_csv_rows(tmp_path / "split" / "probes.csv")
    assert {r["identity"] for r in probes} == {people[1].name} and len(probes) == 2
    record = json.loads((tmp_path / "split" / "split.json").read_text())
    assert record["skipped"]["probes"] == {it.key: "no-mate-left" for it in by_id[lone][:2]}
    assert list(record["skipped"]["mates"]) == [by_id[lone][-1].key]
    assert record["accounting"]["roles"]["probe identities"]["obtained"] == 1


def test_screen_leaves_out_a_pool_person_hidden_in_another_dataset(small_sets, tmp_path):
    """A pool person's mate photos under an anonymous id in the other dataset: the identity screen finds them on
    the clean features, lists them in noise.txt, and every search leaves them out of the distractors."""
    lfw, celeba = small_sets
    config = tmp_path / "pool.yaml"

    def run(other: Path, name: str) -> tuple[dict, Path]:
        config.write_text(POOL.format(cache=tmp_path / "cache", celeba=other))
        cfg = load_config(config, data=f"folder:{lfw}", out=str(tmp_path / name))
        record = run_pipeline(cfg, progress=False, model_factory=factory)
        return record, next(Path(s["dir"]) for s in record["stages"] if s["stage"] == "screen")

    first, first_screen = run(celeba, "first")
    before = {f["identity"] for f in json.loads((first_screen / "screen.json").read_text())["flagged"]}
    split = Path(next(s["dir"] for s in first["stages"] if s["stage"] == "split"))
    mates = read_csv_rows(split / "mates.csv")
    person = mates[0]["identity"]
    # the other dataset again, plus an anonymous identity holding exactly that person's mate photos
    other = tmp_path / "other"
    for d in celeba.iterdir():
        (other / d.name).mkdir(parents=True)
        for photo in d.iterdir():
            (other / d.name / photo.name).symlink_to(photo.resolve())
    (other / "99999").mkdir()
    planted = [r["key"].split("/")[-1] for r in mates if r["identity"] == person]
    for photo in planted:
        (other / "99999" / photo).symlink_to((lfw / person / photo).resolve())
    record, screen = run(other, "second")
    rec = json.loads((screen / "screen.json").read_text())
    flagged = {f["identity"]: f for f in rec["flagged"]}
    assert "99999" in flagged and flagged["99999"]["pool_identity"] == {"tiny-fr": person}
    assert set(flagged) - {"99999"} <= before  # nothing else newly flagged
    assert flagged["99999"]["cosine"]["tiny-fr"] > rec["models"]["tiny-fr"]["threshold"]
    noise = (screen / "noise.txt").read_text().split()
    assert {f"99999/{p}" for p in planted} <= set(noise)
    split = Path(next(s["dir"] for s in record["stages"] if s["stage"] == "split"))
    n_dist = len(read_csv_rows(split / "distractors.csv"))
    out = tmp_path / "second"
    for entry in record["entries"]:
        counts = json.loads((out / entry["search"] / "metrics.json").read_text())["counts"]
        assert counts["distractors"] == n_dist - len(noise) and counts["noise_excluded"]["distractors"] == len(noise)
    run_json = json.loads((out / "run.json").read_text())
    assert "99999" in run_json["setting"]["screen"] and "left out" in run_json["setting"]["screen"]
    assert "Identity screen: " in (out / "report" / "table1.md").read_text()  # said in the caption
    # the run folder keeps what was left out and why (committed with the run)
    assert (out / "raw" / "screen" / "noise.txt").read_text() == (screen / "noise.txt").read_text()
    assert json.loads((out / "raw" / "screen" / "screen.json").read_text())["flagged"] == rec["flagged"]

    # a noise list (a data set's own label error: a pool person's photo filed under a distractor's name) leaves
    # its photos out of every search too; only the searches run again
    lfw_distractor = next(r["key"] for r in read_csv_rows(split / "distractors.csv") if not r["key"].startswith("9"))
    listed = tmp_path / "noise.txt"
    listed.write_text(f"# a label error\n{lfw_distractor}\n")
    cfg = load_config(
        config, data=f"folder:{lfw}", out=str(tmp_path / "third"), overrides=[f"evaluate.noise_lists=[{listed}]"]
    )
    third = run_pipeline(cfg, progress=False, model_factory=factory)
    assert {s["stage"] for s in third["stages"] if not s["cached"]} == {"search"}
    for entry in third["entries"]:
        counts = json.loads((tmp_path / "third" / entry["search"] / "metrics.json").read_text())["counts"]
        assert counts["distractors"] == n_dist - len(noise) - 1
    assert "(1 entries)" in third["setting"]["noise_lists"]
    assert "Noise lists (left out of every search)" in (tmp_path / "third" / "report" / "table1.md").read_text()
    missing = load_config(config, data=f"folder:{lfw}", overrides=["evaluate.noise_lists=[nowhere.txt]"])
    with pytest.raises(FileNotFoundError, match="nowhere.txt"):
        run_pipeline(missing, progress=False, model_factory=factory)
