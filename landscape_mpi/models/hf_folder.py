"""``--model hf:PATH``: a Hugging Face ``transformers`` model built from a local ``save_pretrained`` folder (or a
local Hub cache entry by repo id, `config.hub`), with no user factory.

The folder's ``config.json`` is read (offline) and the model built from it through the Auto class the task
chooses: ``AutoModelForCausalLM`` for ``--task lm``, ``AutoModelForSequenceClassification`` for ``--task
classify``; for another task (or a caller that names none) the class ``save_pretrained`` recorded in the
config's ``architectures``, else ``AutoModel``. Built with a fixed seed, in float32, without the generation
cache (``use_cache`` off: a grid point needs logits only). A forward that records a graph (grad enabled: the
Hessian's products, ``--metrics eig``, training) runs PyTorch's attention on its math kernel, the one with a
second derivative (the fused SDPA kernels have none); a grid point's forward (no grad) keeps the fast kernels
(`math_attention_when_differentiating`). The weights come from the folder itself, as
``--checkpoint`` (`models.read_state_dict`: one ``model.safetensors`` or the shards of
``model.safetensors.index.json``). Inside `models.parameters_on_meta` (a sharded group) the parameters are made
on the meta device as the model is built, so the whole model never exists on a rank.
"""

from __future__ import annotations

import os

import torch
from torch import nn

from landscape_mpi.config.errors import UserError
from landscape_mpi.config.hub import local_path

#: the Auto class of each built-in task
AUTO_CLASSES = {"lm": "AutoModelForCausalLM", "classify": "AutoModelForSequenceClassification"}
#: the seed of the initial values (overwritten by the folder's weights; fixed so that every rank agrees)
SEED = 0


def model_class(config, task: str | None, spec: str):
    """The transformers class that builds `config` for `task`."""
    import transformers

    if task in AUTO_CLASSES:
        return getattr(transformers, AUTO_CLASSES[task])
    for name in getattr(config, "architectures", None) or ():
        if hasattr(transformers, name):
            return getattr(transformers, name)
    return transformers.AutoModel


def build_pretrained(spec: str, task: str | None = None) -> nn.Module:
    """The model of ``hf:PATH`` (`spec`) for `task`, freshly initialized (its weights: `models.read_state_dict`
    of the same folder)."""
    folder = local_path(spec, "--model")
    if not os.path.isfile(os.path.join(folder, "config.json")):
        raise UserError(f"--model {spec}: {folder} has no config.json; give a folder written by "
                        f"save_pretrained (model.save_pretrained(DIR))")
    try:
        import transformers  # noqa: F401  (the hf extra)
    except ImportError:
        raise UserError(f"--model {spec} needs transformers (pip install 'landscape-mpi[hf]')") from None
    from transformers import AutoConfig

    try:
        config = AutoConfig.from_pretrained(folder, local_files_only=True)
    except Exception as exc:  # noqa: BLE001  (transformers raises many types for a config it cannot read)
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:200]
        raise UserError(f"--model {spec}: cannot read {folder}/config.json ({first})") from None
    if hasattr(config, "use_cache"):
        config.use_cache = False
    cls = model_class(config, task, spec)
    state = torch.random.get_rng_state()
    torch.manual_seed(SEED)
    try:
        model = cls.from_config(config) if hasattr(cls, "from_config") else cls(config)
        model = model.to(torch.float32)  # a folder saved in another dtype: its weights are cast on loading
    except ValueError as exc:  # an Auto class without a mapping for this config's model type
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:200]
        raise UserError(f"--model {spec} with --task {task}: {type(config).__name__} has no "
                        f"{cls.__name__} ({first}); choose the task the model was built for") from None
    finally:
        torch.random.set_rng_state(state)
    math_attention_when_differentiating(model)
    return model.eval()


def math_attention_when_differentiating(model: nn.Module) -> None:
    """Hooks on `model`: a forward with grad enabled runs ``scaled_dot_product_attention`` on the math kernel
    (composite, so twice differentiable: Hessian-vector products), a forward without grad on whichever kernel
    PyTorch picks."""
    from torch.nn.attention import SDPBackend, sdpa_kernel

    entered: list = []

    def before(module, args):
        context = sdpa_kernel([SDPBackend.MATH]) if torch.is_grad_enabled() else None
        if context is not None:
            context.__enter__()
        entered.append(context)

    def after(module, args, output):
        context = entered.pop() if entered else None
        if context is not None:
            context.__exit__(None, None, None)

    model.register_forward_pre_hook(before)
    model.register_forward_hook(after, always_call=True)
