"""The method registry: every method `adapt`, `fuse` and `report` know, in report order.

Adding a method = one module ending in `METHOD = ...` (or several instances, like `prompts`) (see `pipeline.methods.contract`), one line here,
one params block (if it has knobs), and its tests.
"""

from pipeline.methods import ape, isoclip, ncm, prompts, semobridge, semobridge_t, tip_adapter, zeroshot
from pipeline.methods.contract import Method

REGISTRY: dict[str, Method] = {m.name: m for m in (
    zeroshot.METHOD, ncm.METHOD, isoclip.METHOD, tip_adapter.METHOD, ape.METHOD, semobridge.METHOD,
    semobridge_t.METHOD, prompts.COOP, prompts.KDPL, prompts.KDPL_CA)}
