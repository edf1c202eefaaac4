"""A continual-learning strategy in a user's own file: fine-tuning with an L2 pull towards the weights the
previous task ended with. Run it with `plugins: [examples/l2_anchor.py]` and `strategy.name: l2_anchor`."""

from dataclasses import dataclass

from ccr.api import Strategy, register_strategy


@register_strategy
class L2Anchor(Strategy):
    name = "l2_anchor"

    @dataclass
    class Params:
        weight: float = 0.01  # strategy.params.l2_anchor.weight

    def before_task(self, ctx, model):
        self.anchor = {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}

    def loss_terms(self, ctx, model, batch):
        if ctx.index == 0:  # nothing to hold on to before the first task
            return {}
        pull = sum(((p - self.anchor[n]) ** 2).sum() for n, p in model.named_parameters() if n in self.anchor)
        return {"anchor_loss": self.params.weight * pull}
