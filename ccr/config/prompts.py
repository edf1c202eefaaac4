"""Class prompts: zero-shot classification sets (`eval.classification`) and the prompts and display names an
ImageFolder task's classes are trained and measured with (`data.kind: imagefolder`), checked alike."""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from ccr.errors import ConfigError

CLIP_TEMPLATE = "a photo of a {}."  # CLIP's (and ZSCL's) prompt where a classification set names none
SET_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*")  # a set's name is part of its metric names


def check_prompts(where: str, templates: list[str] | None, classes: dict[str, str] | list[str] | None) -> None:
    """The prompts and display names of classes (eval.classification's sets, data.kind=imagefolder's task): at
    least one template (None: CLIP's), each holding `{}` once, no empty display name."""
    if templates is not None and not templates:
        raise ConfigError(f"config key '{where}.templates': empty; give at least one prompt, as {CLIP_TEMPLATE!r}")
    for i, t in enumerate(templates or []):
        if not isinstance(t, str) or t.count("{}") != 1:
            raise ConfigError(f"config key '{where}.templates[{i}]': {t!r} must hold '{{}}' once, where the "
                              f"class name goes (as {CLIP_TEMPLATE!r})")
    names = classes.values() if isinstance(classes, dict) else classes or []
    if any(not n.strip() for n in names):
        raise ConfigError(f"config key '{where}.classes': a class's display name is empty")


@dataclass
class ClassificationSet:
    """A zero-shot classification set, measured at θ0 and after every task (eval.classification): the images
    of an ImageFolder tree, each classified among its class names by the text embeddings of the prompts."""

    name: str = ""  # its results' key and metric names: classification/<name>/top1
    path: str = ""  # a folder or URI in ImageFolder layout: one subfolder per class, the class's images inside
    templates: list[str] = field(default_factory=lambda: [CLIP_TEMPLATE])  # prompts, `{}` the class name
    # display names: a list in the order of the sorted class folders, or {folder: name}; by default the
    # folder names with "_" read as spaces
    classes: dict[str, str] | list[str] | None = None

    def check(self, where: str) -> None:
        if not SET_NAME.fullmatch(self.name):
            raise ConfigError(f"config key '{where}.name': a set needs a name of letters, digits, '_', '.' or '-' "
                              f"(it names its metrics), got {self.name!r}")
        if not self.path:
            raise ConfigError(f"config key '{where}.path': the set's ImageFolder (a folder or URI) is missing")
        check_prompts(where, self.templates, self.classes)
