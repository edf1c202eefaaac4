"""A tiny CLIP that retrieves well above chance, then ccr's zero-shot row next to the one transformers computes.

    python scripts/tiny_clip_zero_shot.py [--steps 300] [--out runs/tiny_clip]

1. Builds a small random CLIP (tests/pretrained_fixture.py: a hub-style folder with a tokenizer trained with
   `tokenizers` on the generated benchmark's captions, and a CLIPImageProcessor), and trains it with its own
   loss (`CLIPModel(..., return_loss=True)`) on the generated benchmark's pretraining pool (every shape family,
   a neutral palette) for `--steps` steps; saves it with `save_pretrained`.
2. Runs a ccr study from that folder (`model.pretrained`, 3 tasks, 2 epochs each).
3. Prints the study's zero-shot row and the same row computed with transformers alone (the folder's processor,
   tokenizer and get_image_features / get_text_features), per task, t2i and i2t R@1; then the study's own tables,
   as `ccr run` prints them.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from ccr.data import load_dataset  # noqa: E402
from ccr.measure.tables import render  # noqa: E402
from ccr.study.configure import load_config  # noqa: E402
from ccr.study.runner import Study  # noqa: E402
from tests.pretrained_fixture import make_complete  # noqa: E402

DATA = ["data.n_tasks=3", "data.pretrain_pool=1500", "data.test_per_task=100", "train.threads=1"]


def recall_at_1(q: np.ndarray, g: np.ndarray, hit: np.ndarray) -> float:
    return 100.0 * float(np.mean(hit[np.arange(len(q)), np.argmax(q @ g.T, axis=1)]))


def main() -> None:
    import transformers as T
    from PIL import Image

    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=300)
    ap.add_argument("--out", default="runs/tiny_clip")
    args = ap.parse_args()
    out = Path(args.out)
    torch.set_num_threads(1)
    ds = load_dataset(load_config(None, DATA))
    folder = make_complete(out / "clip", "clip", image_size=32, corpus=list(ds.captions))
    model = T.CLIPModel.from_pretrained(folder)
    tok = T.AutoTokenizer.from_pretrained(folder)
    proc = T.AutoImageProcessor.from_pretrained(folder, backend="pil")
    pool = ds.image_ids("pool", "train")
    rng = np.random.default_rng(0)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=0.01)
    model.train()
    for step in range(args.steps):  # the model's own contrastive loss, one caption per image
        ids = rng.choice(pool, 64, replace=False)
        caps = [ds.captions[rng.choice(ds.captions_of([i]))] for i in ids]
        enc = tok(caps, padding=True, truncation=True, max_length=16, return_tensors="pt")
        pix = proc(images=[Image.fromarray(a.transpose(1, 2, 0)) for a in ds.images.load(ids).numpy()],
                   return_tensors="pt")
        loss = model(**enc, **pix, return_loss=True).loss
        loss.backward()
        opt.step()
        opt.zero_grad()
        if step % 100 == 0 or step == args.steps - 1:
            print(f"pretraining step {step}: loss {float(loss.detach()):.3f}")
    model.save_pretrained(folder)

    cfg = load_config(None, [*DATA, f"model.pretrained={folder}", "train.epochs=2", "train.lr=1e-4"])
    res = Study(cfg, out / "study", progress=False).run()
    model.eval()
    print(f"\n{'task':<10} {'ccr t2i':>8} {'transformers t2i':>17} {'ccr i2t':>8} {'transformers i2t':>17}")
    for i, task in enumerate(res["task_order"]):
        imgs = ds.image_ids(task, "test")
        cap_ids = ds.captions_of(imgs)
        owner = np.searchsorted(imgs, ds.caption_image[cap_ids])
        with torch.no_grad():
            fi = model.get_image_features(**proc(images=[Image.fromarray(a.transpose(1, 2, 0))
                                                         for a in ds.images.load(imgs).numpy()], return_tensors="pt"))
            ft = model.get_text_features(**tok([ds.captions[c] for c in cap_ids], padding="max_length",
                                               max_length=16, truncation=True, return_tensors="pt"))
        fi = F.normalize(getattr(fi, "pooler_output", fi), dim=-1).numpy()
        ft = F.normalize(getattr(ft, "pooler_output", ft), dim=-1).numpy()
        t2i = recall_at_1(ft, fi, owner[:, None] == np.arange(len(imgs))[None, :])
        i2t = recall_at_1(fi, ft, np.arange(len(imgs))[:, None] == owner[None, :])
        zs = res["zero_shot"]["recall"]
        print(f"{task:<10} {zs['t2i']['1'][i]:8.2f} {t2i:17.2f} {zs['i2t']['1'][i]:8.2f} {i2t:17.2f}")
    print(f"\nthe study's tables, as `ccr run` prints them (results: {out / 'study' / 'results.json'}):\n")
    print(render(res))


if __name__ == "__main__":
    main()
