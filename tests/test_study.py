"""End-to-end studies on tiny generated data: schema, policies, cost, resume, determinism."""

import json

import numpy as np
import pytest
import torch

from ccr.cli import main
from ccr.config.schema import ConfigError
from ccr.io.checkpoint import from_bytes
from ccr.measure import results
from ccr.study.runner import Study, checkpoint_path
from tests.cli import _sets
from tests.conftest import counts


@pytest.fixture(scope="module")
def two_policy_run(tmp_path_factory):
    """One tiny study evaluated under reindex (main) and no_reindex (compare)."""
    from tests.conftest import TINY

    out = tmp_path_factory.mktemp("run")
    # every task's checkpoint kept, to compare galleries after each task with the final ones
    over = [*TINY, f"data.cache_dir={out / 'cache'}", "index.compare=[no_reindex]", "checkpoint.keep=10"]
    from ccr.study.configure import load_config

    study = Study(load_config(None, over), out / "study", progress=False)
    res = study.run()
    return study, res, out / "study"


def test_results_schema(two_policy_run):
    study, res, out = two_policy_run
    on_disk = json.loads((out / "results.json").read_text())
    assert on_disk["status"] == "complete"
    for key in ("config", "task_order", "recall", "metrics", "index_cost", "seed", "provenance", "by_policy"):
        assert key in on_disk
    assert on_disk["schema_version"] == results.SCHEMA_VERSION
    # one list of names: what the study wrote is exactly what ccr.measure.results says a study reports
    assert set(results.flat_metrics(on_disk)) == set(results.metric_names([1, 5, 10], ["no_reindex"]))
    n = len(on_disk["task_order"])
    for d in ("i2t", "t2i"):
        for k in ("1", "5", "10"):
            m = on_disk["recall"][d][k]
            assert len(m) == n and all(len(r) == n for r in m)
            assert all(m[s][i] is None for s in range(n) for i in range(n) if i > s)
            assert all(0 <= m[s][i] <= 100 for s in range(n) for i in range(s + 1))
            final = sum(m[-1]) / n
            assert on_disk["metrics"][f"{d}/R@{k}"] == pytest.approx(final)
            best = [max(m[s][i] for s in range(i, n - 1)) for i in range(n - 1)]
            assert on_disk["metrics"][f"forgetting/{d}/R@{k}"] == pytest.approx(
                sum(b - m[-1][i] for i, b in enumerate(best)) / (n - 1))
            assert on_disk["metrics"][f"bwt/{d}/R@{k}"] == pytest.approx(
                sum(m[-1][i] - m[i][i] for i in range(n - 1)) / (n - 1))
    rs = on_disk["rsum_matrix"]
    for s in range(n):  # rsum = R@1 + R@5 + R@10 of both directions, cell by cell
        for i in range(s + 1):
            want = sum(on_disk["recall"][d][k][s][i] for d in ("i2t", "t2i") for k in ("1", "5", "10"))
            assert rs[s][i] == pytest.approx(want)
    assert on_disk["metrics"]["rsum"] == pytest.approx(sum(rs[-1]) / n)
    c = on_disk["index_cost"]
    assert on_disk["metrics"]["index_cost/embedded"] == c["images_embedded"] + c["captions_embedded"]
    assert on_disk["config"]["seed"] == on_disk["seed"] == 0
    assert "torch" in on_disk["provenance"]["versions"] and "git" in on_disk["provenance"]
    assert (out / "config.yaml").is_file() and (out / "tokenizer" / "tokenizer_config.json").is_file()
    assert all(checkpoint_path(out, s, on_disk["task_order"]).is_file() for s in range(n))
    assert checkpoint_path(out, 1, ["round", "boxes"]).name == "02_boxes.pt"  # one numbering: from 1, as logs


def test_no_reindex_entries_are_bit_identical_to_those_after_their_task(two_policy_run):
    study, res, out = two_policy_run
    first = study.order[0]
    ck0 = from_bytes(checkpoint_path(out, 0, study.order).read_bytes(), "task 1")
    after_task1 = ck0["evaluator"]["states"]["no_reindex"]["galleries"]
    final = study.evaluator.states["no_reindex"].galleries
    for m in ("images", "captions"):
        assert np.array_equal(final[m].parts[first].emb, after_task1[m][first]["emb"])
        assert (final[m].parts[first].version == 0).all()


def test_reindex_entries_equal_the_final_models(two_policy_run):
    study, res, out = two_policy_run
    emb = study.embedder(study.model)
    last = len(study.order) - 1
    for t in study.order:
        for m in ("images", "captions"):
            part = study.evaluator.states["reindex"].galleries[m].parts[t]
            np.testing.assert_allclose(part.emb, emb.embed(m, part.ids), atol=1e-6)
            assert (part.version == last).all()


def test_index_cost_matches_policy(two_policy_run):
    study, res, out = two_policy_run
    ds, order = study.ds, study.order
    n_img = [len(ds.image_ids(t, "test")) for t in order]
    n_cap = [len(ds.caption_ids(t, "test")) for t in order]
    nr = res["by_policy"]["no_reindex"]["index_cost"]
    assert nr["images_embedded"] == sum(n_img) and nr["captions_embedded"] == sum(n_cap)
    rx = res["by_policy"]["reindex"]["index_cost"]
    assert rx["images_embedded"] == sum(sum(n_img[: s + 1]) for s in range(len(order)))
    assert rx["captions_embedded"] == sum(sum(n_cap[: s + 1]) for s in range(len(order)))
    assert res["index_cost"] == rx  # the main policy's numbers are the top-level ones


def test_policies_agree_on_the_diagonal(two_policy_run):
    """Right after learning task s, both policies index task s with θ_s: same recall."""
    _, res, _ = two_policy_run
    a, b = res["by_policy"]["reindex"]["recall"], res["by_policy"]["no_reindex"]["recall"]
    for d in ("i2t", "t2i"):
        for s in range(len(res["task_order"])):
            assert a[d]["1"][s][s] == b[d]["1"][s][s]


def test_cli_run_same_seed_same_numbers_and_resume(tiny_overrides, tmp_path, capsys):
    sets = [x for o in tiny_overrides for x in ("--set", o)]
    assert main(["run", "--out", str(tmp_path / "a"), "--quiet", *sets]) == 0
    assert "t2i R@1" in capsys.readouterr().out
    assert main(["run", "--out", str(tmp_path / "b"), "--quiet", *sets]) == 0
    ra = json.loads((tmp_path / "a" / "results.json").read_text())
    rb = json.loads((tmp_path / "b" / "results.json").read_text())
    assert ra["recall"] == rb["recall"] and ra["anatomy"] == rb["anatomy"]
    # checkpoint.keep=2 (the default): the first task's checkpoint was removed once the third was written
    order = ra["task_order"]
    assert sorted(p.name for p in (tmp_path / "b" / "checkpoints").iterdir()) == [f"02_{order[1]}.pt",
                                                                                  f"03_{order[2]}.pt"]
    # interrupt after task 2 of 3: drop the last checkpoint and the final results, then rerun; the
    # checkpoint left carries the name ccr 0.1 gave it (task_01.pt, counted from 0), which is still read
    checkpoint_path(tmp_path / "b", 2, order).unlink()
    checkpoint_path(tmp_path / "b", 1, order).rename(tmp_path / "b" / "checkpoints" / "task_01.pt")
    (tmp_path / "b" / "results.json").unlink()
    assert main(["run", "--out", str(tmp_path / "b"), "--quiet", *sets]) == 0
    rc = json.loads((tmp_path / "b" / "results.json").read_text())
    assert rc["recall"] == ra["recall"] and counts(rc["index_cost"]) == counts(ra["index_cost"])
    assert "resuming after task 2/3 (boxes) from " in (tmp_path / "b" / "log.txt").read_text()  # as "task 2/3: boxes"


def test_out_dir_with_other_config_is_refused(tiny_cfg, tmp_path):
    Study(tiny_cfg("data.n_tasks=2"), tmp_path / "o", progress=False).run()
    with pytest.raises(ConfigError, match="different config"):
        Study(tiny_cfg("data.n_tasks=2", "train.lr=0.01"), tmp_path / "o")


def test_thread_count_is_part_of_the_result(tiny_cfg, tmp_path):
    """The number of torch threads changes the numbers on a CPU: a study is never resumed with another
    one, whether it comes from the config (train.threads) or from the CPUs a trial was granted."""
    before = torch.get_num_threads()
    try:
        Study(tiny_cfg("data.n_tasks=2"), tmp_path / "o", progress=False, threads=1).run()
        with pytest.raises(ConfigError, match="different config"):  # `ccr run --set train.threads=2` there
            Study(tiny_cfg("data.n_tasks=2", "train.threads=2"), tmp_path / "o")
        checkpoint_path(tmp_path / "o", 1, ["round", "boxes"]).unlink()
        (tmp_path / "o" / "results.json").unlink()
        with pytest.raises(ConfigError, match=r"ran with 1 torch thread\(s\); resuming it with 2 would mix"):
            Study(tiny_cfg("data.n_tasks=2"), tmp_path / "o", progress=False, threads=2).run()
        res = Study(tiny_cfg("data.n_tasks=2"), tmp_path / "o", progress=False, threads=1).run()
        assert res["resumes"] == [0] and res["provenance"]["torch_threads"] == 1
    finally:
        torch.set_num_threads(before)


def test_cli_reports_bad_input_cleanly(tmp_path, capsys):
    assert main(["run", "--out", str(tmp_path), "--set", "strategy.name=nope"]) == 2
    err = capsys.readouterr().err
    assert "unknown strategy 'nope'" in err and "finetune" in err


def test_joint_trains_on_all_seen_tasks(tiny_cfg, tmp_path):
    res = Study(tiny_cfg("strategy.name=joint"), tmp_path, progress=False).run()
    sizes = [t["train_images"] for t in res["train"]]
    assert sizes == [48, 96, 144]


def test_seen_scope_and_vsepp_and_random_order(tiny_cfg, tmp_path):
    res = Study(tiny_cfg("eval.scope=seen", "train.loss=vsepp", "tasks.order=random", "seed=3"), tmp_path,
                progress=False).run()
    assert res["scope"] == "seen" and sorted(res["task_order"]) == ["boxes", "round", "triangles"]
    assert res["config"]["train"]["loss"] == "vsepp"


def test_karpathy_study_end_to_end(tmp_path):
    from ccr.study.configure import load_config
    from tests.conftest import TINY
    from tests.karpathy_fixture import make_karpathy

    kp = make_karpathy(tmp_path / "data")
    cfg = load_config(None, [*TINY, "data.kind=karpathy", f"data.path={kp['path']}", f"data.images={kp['images']}",
                             f"data.tasks_file={kp['tasks_file']}", "train.batch_size=4"])
    res = Study(cfg, tmp_path / "out", progress=False).run()
    assert res["task_order"] == ["animal", "vehicle"] and res["dataset"]["name"] == "dataset"


def test_pretrained_encoders_load_from_local_paths(tmp_path):
    """Save a tiny BERT (with its own tokenizer) and ViT, then train a study from those paths."""
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers
    from transformers import BertConfig, BertModel, PreTrainedTokenizerFast, ViTConfig, ViTModel

    from ccr.study.configure import load_config
    from tests.conftest import TINY

    words = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "a", "the", "in", "red", "circle", "ring", "square",
             "frame", "triangle", "wedge", "small", "large", "top", "left", "right", "bottom", "center"]
    wp = Tokenizer(models.WordPiece({w: i for i, w in enumerate(words)}, unk_token="[UNK]"))
    wp.normalizer, wp.pre_tokenizer = normalizers.BertNormalizer(), pre_tokenizers.BertPreTokenizer()
    tok = PreTrainedTokenizerFast(tokenizer_object=wp, pad_token="[PAD]", unk_token="[UNK]", cls_token="[CLS]",
                                  sep_token="[SEP]", mask_token="[MASK]")
    BertModel(BertConfig(vocab_size=len(words), hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                         intermediate_size=64), add_pooling_layer=False).save_pretrained(tmp_path / "bert")
    tok.save_pretrained(tmp_path / "bert")
    ViTModel(ViTConfig(image_size=16, patch_size=4, hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                       intermediate_size=64), add_pooling_layer=False).save_pretrained(tmp_path / "vit")
    cfg = load_config(None, [*TINY, f"data.cache_dir={tmp_path / 'c'}", "data.n_tasks=2",
                             f"model.text.pretrained={tmp_path / 'bert'}",
                             f"model.image.pretrained={tmp_path / 'vit'}"])
    study = Study(cfg, tmp_path / "out", progress=False)
    study.build()
    # the weights really come from the saved files
    saved_bert, saved_vit = BertModel.from_pretrained(tmp_path / "bert"), ViTModel.from_pretrained(tmp_path / "vit")
    assert torch.equal(study.model.text_encoder.embeddings.word_embeddings.weight,
                       saved_bert.embeddings.word_embeddings.weight)
    assert torch.equal(study.model.image_encoder.embeddings.patch_embeddings.projection.weight,
                       saved_vit.embeddings.patch_embeddings.projection.weight)
    assert study.tokenizer.convert_tokens_to_ids("circle") == words.index("circle")
    res = study.run()
    assert res["status"] == "complete" and study.model.text_encoder.config.hidden_size == 32


def test_printed_tables_show_task_names_in_full():
    from ccr.measure.tables import matrix_table

    tasks = ["round", "a_task_with_a_long_name"]
    out = matrix_table("t2i R@1", [[40.0, None], [10.0, 35.5]], tasks)
    head, first, second = out.splitlines()[1:]
    assert head.split() == tasks and second.startswith("after a_task_with_a_long_name ")
    assert first.split()[-2:] == ["40.0", "-"] and second.split()[-2:] == ["10.0", "35.5"]


def test_val_split_results_for_selection_leave_test_numbers_unchanged(tiny_cfg, tmp_path):
    """data.val_per_task adds val items after all others: training and test numbers are bit-identical with
    and without them; every policy also gets the recall matrix on val items (val/ metrics), the one that
    HPO reads; a resumed study continues its val galleries."""
    from ccr.index.gallery import IndexState
    from ccr.measure.query import evaluate_step

    plain = Study(tiny_cfg("data.n_tasks=2", "index.compare=[no_reindex]"), tmp_path / "a", progress=False,
                  threads=1).run()
    cfg = tiny_cfg("data.n_tasks=2", "index.compare=[no_reindex]", "data.val_per_task=6")
    study = Study(cfg, tmp_path / "b", progress=False, threads=1)
    res = study.run()
    assert res["recall"] == plain["recall"] and res["by_policy"]["no_reindex"]["recall"] == \
        plain["by_policy"]["no_reindex"]["recall"]
    assert "val_recall" not in plain and "val/t2i/R@1" not in plain["metrics"]
    for p in ("reindex", "no_reindex"):
        pr = res["by_policy"][p]
        assert pr["metrics"]["val/t2i/R@1"] == pytest.approx(np.mean(pr["val_recall"]["t2i"]["1"][-1]))
        assert "val/forgetting/i2t/R@5" in pr["metrics"] and "val/rsum" in pr["metrics"]
    assert res["by_policy"]["reindex"]["val_recall"] != res["recall"]  # other items, other numbers
    # reindex on val after the last task = the final model on fresh val galleries
    emb = study.embedder(study.model)
    fresh = IndexState.empty(cfg.index)
    for t in study.order:
        for m in ("images", "captions"):
            ids = study.ds.image_ids(t, "val") if m == "images" else study.ds.caption_ids(t, "val")
            fresh.galleries[m].put(t, ids, emb.embed(m, ids), 0)
    rows = evaluate_step(fresh, emb, study.ds, study.order, "task", [1], "val")
    assert [rows["t2i"][t][1] for t in study.order] == res["by_policy"]["reindex"]["val_recall"]["t2i"]["1"][-1]
    # resume after task 1: the same val numbers
    checkpoint_path(tmp_path / "b", 1, study.order).unlink()
    (tmp_path / "b" / "results.json").unlink()
    again = Study(cfg, tmp_path / "b", progress=False, threads=1).run()
    assert again["by_policy"]["no_reindex"]["val_recall"] == res["by_policy"]["no_reindex"]["val_recall"]


def test_leftovers_of_killed_writes_are_removed(tiny_overrides, tmp_path):
    out = tmp_path / "out"
    (out / "checkpoints").mkdir(parents=True)
    (out / ".ccr-results.json.k2j3.tmp").write_text("{half")
    (out / "checkpoints" / ".ccr-01_round.pt.x81.tmp").write_bytes(b"PK\x03")
    (out / ".ccr-tokenizer.a1.tmp").mkdir()
    (out / ".ccr-tokenizer.a1.tmp" / "tokenizer.json").write_text("{")
    assert main(["run", "--quiet", "--out", str(out), *_sets([*tiny_overrides, "data.n_tasks=2"])]) == 0
    assert not list(out.glob(".*.tmp")) and not list((out / "checkpoints").glob(".*.tmp"))
    assert (out / "tokenizer" / "tokenizer_config.json").is_file()
    assert oct((out / "tokenizer").stat().st_mode)[-3:] == "755"  # shared, not 0700


def test_a_checkpoint_of_another_study_is_refused_and_an_older_config_is_the_same_study(tiny_overrides, tmp_path,
                                                                                       capsys):
    """Resume checks the config a checkpoint was made with (config.yaml deleted, or a checkpoint copied in); a
    config.yaml written before keys existed (they are absent, at their defaults) is the same study."""
    import yaml

    a, b = tmp_path / "a", tmp_path / "b"
    base = [*tiny_overrides, "data.n_tasks=2", "train.threads=1"]
    assert main(["run", "--quiet", "--out", str(a), *_sets(base)]) == 0
    assert main(["run", "--quiet", "--out", str(b), *_sets([*base, "train.lr=0.01"])]) == 0
    order = json.loads((a / "results.json").read_text())["task_order"]
    # b's first checkpoint copied into a, whose own last checkpoint and results are gone
    checkpoint_path(a, 1, order).unlink()
    (a / "results.json").unlink()
    checkpoint_path(a, 0, order).write_bytes(checkpoint_path(b, 0, order).read_bytes())
    assert main(["run", "--quiet", "--out", str(a), *_sets(base)]) == 2
    assert "made by a study with a different config (train.lr)" in capsys.readouterr().err
    # an older ccr's config.yaml: without keys added since (at their defaults here)
    cfg = yaml.safe_load((b / "config.yaml").read_text())
    for sec, key in (("model", "pretrained"), ("model", "adapter"), ("eval", "transfer"), ("eval", "control"),
                     ("data", "control_per_task")):
        del cfg[sec][key]
    (b / "config.yaml").write_text(yaml.safe_dump(cfg))
    (b / "results.json").unlink()
    checkpoint_path(b, 1, order).unlink()
    assert main(["run", "--quiet", "--out", str(b), *_sets([*base, "train.lr=0.01"])]) == 0
    assert json.loads((b / "results.json").read_text())["resumes"] == [0]
    # a key that differs is named
    assert main(["run", "--quiet", "--out", str(b), *_sets([*base, "train.lr=0.02"])]) == 2
    assert "holds a study with a different config (train.lr)" in capsys.readouterr().err
