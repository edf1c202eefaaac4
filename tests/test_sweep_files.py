"""The sweep files this repository ships (sweeps/): each one loads and every cell builds a valid config; the
field's protocols (MTIL, C-CLIP) have the tasks their papers use; the paper sweeps read data and weights by URI."""

from ccr.distributed.sweep_spec import load_spec
from tests.cli import REPO


def test_sweep_files_in_repo_are_valid():
    for name in ("default.yaml", "hpo.yaml", "regimes.yaml", *(f"tuned/{s}.yaml" for s in ("ewc", "lwf", "replay",
                                                                                           "compat"))):
        spec = load_spec(REPO / "sweeps" / name)
        assert spec.cells()
    for name in ("regimes.yaml", "regimes_defaults.yaml"):  # 4 regimes x 6 strategies x 2 orders x 5 seeds
        spec = load_spec(REPO / "sweeps" / name)
        cells = spec.cells()
        assert len(cells) == 240 and len({c["seed"] for c in cells}) == 5
        cfgs = [spec.config_for(c) for c in cells]
        assert {(tuple(c.tasks.pretrain), c.model.freeze) for c in cfgs} == {
            ((), "none"), (("pool",), "none"), (("pool",), "backbone"), ((), "backbone")}
    # the field's protocols: MTIL's 11 datasets in orders I and II, C-CLIP's 8 caption datasets (their data is the
    # user's, in a bucket): every cell builds a valid config, a sequence of one task per dataset
    mtil = load_spec(REPO / "sweeps" / "mtil.yaml")
    orders = {tuple(c["tasks.order"]) for c in mtil.cells()}
    assert len(orders) == 2 and all(len(o) == 11 for o in orders) and next(iter(orders))[0] in ("Aircraft",
                                                                                                "StanfordCars")
    for c in mtil.cells():
        cfg = mtil.config_for(c)
        assert cfg.data.kind == "sequence" and len(cfg.data.datasets) == 12 and cfg.eval.control == ["ImageNet"]
    cclip = load_spec(REPO / "sweeps" / "cclip.yaml")
    cfgs = [cclip.config_for(c) for c in cclip.cells()]
    assert [d.name for d in cfgs[0].data.datasets] == ["flickr30k", "coco", "pets", "lexica", "simpsons", "wikiart",
                                                       "kream", "sketch"]
    assert any(c.strategy.name == "cclip" and c.model.adapter.kind == "lora" for c in cfgs)
    distractors = load_spec(REPO / "sweeps" / "distractors.yaml")  # the large-gallery study of docs/reindexing.md
    cfgs = [distractors.config_for(c) for c in distractors.cells()]
    assert {c.strategy.name for c in cfgs} == {"finetune", "replay", "compat"}
    assert all(c.eval.distractors.endswith("shards-100000") and c.index.compare == ["no_reindex"] for c in cfgs)
    default = load_spec(REPO / "sweeps" / "default.yaml")
    names = {c["strategy.name"] for c in default.cells()}
    assert {"finetune", "joint"} < names and len(names) >= 4
    assert default.config_for(default.cells()[0]).index.compare == ["no_reindex"]


def test_the_paper_sweeps_read_data_and_weights_by_uri():
    from ccr.config.files import read_tree
    from ccr.config.schema import parse_config
    from ccr.io.staging import DATA_LOCATIONS

    for name in ("paper_base", "clip_base"):  # the sweeps' bases (their task orders read the data: a network)
        cfg = parse_config(read_tree(REPO / "sweeps" / f"{name}.yaml"))
        given = [getattr(cfg.data, k) for k in DATA_LOCATIONS if getattr(cfg.data, k)]
        weights = [w for w in (cfg.model.pretrained, cfg.model.image.pretrained, cfg.model.text.pretrained) if w]
        assert given and weights and all(v.startswith("s3://") for v in given + weights), (name, given, weights)
        assert cfg.data.image_cache == "shared"
