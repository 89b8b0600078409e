"""The evaluation engine: every fast path against the eager oracle, the oracle against a direct computation,
fallbacks, BatchNorm recalibration, progress callbacks and user errors (landscape_mpi/engine/)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

import landscape_toys
from landscape_mpi.config.errors import UserError
from landscape_mpi.data.datasets import EvalSet
from landscape_mpi.directions.base import random_direction, space_keys
from landscape_mpi.engine import make_engine, recalibrate_bn
from landscape_mpi.models import build_model

CPU = torch.device("cpu")
COORDS = np.array([[0.0, 0.0], [0.4, -0.3], [-0.6, 0.8]])
SHAPES = {"digits_cnn": (1, 8, 8), "digits_mlp": (1, 8, 8), "resnet20": (3, 32, 32),
          "landscape_toys:make_model": (4,)}


def quiet(_: str) -> None:
    pass


def randomize_bn(model: nn.Module, seed: int = 0) -> nn.Module:
    """BatchNorm tensors far from their initial 0/1 values, so a wrong fold cannot pass by accident."""
    g = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            c = m.num_features
            m.running_mean.copy_(torch.rand(c, generator=g) - 0.5)
            m.running_var.copy_(0.5 + 1.5 * torch.rand(c, generator=g))
            if m.affine:
                m.weight.data.copy_(0.5 + torch.rand(c, generator=g))
                m.bias.data.copy_(0.4 * torch.rand(c, generator=g) - 0.2)
    return model


def setup(name: str, n_train: int = 40, n_test: int = 24, space: str = "weights", ignore: str = "biasbn",
          classes: int = 10):
    torch.manual_seed(0)
    model = randomize_bn(build_model(name)).eval()
    g = torch.Generator().manual_seed(1)
    keys = space_keys(model, space)
    state = model.state_dict()
    dirs = [random_direction(state, keys, g, "filter", ignore) for _ in range(2)]
    shape = SHAPES.get(name, (1, 8, 8))
    classes = 3 if name.startswith("landscape_toys") else classes
    data = [EvalSet("train", torch.randn(n_train, *shape, generator=g),
                    torch.randint(0, classes, (n_train,), generator=g)),
            EvalSet("test", torch.randn(n_test, *shape, generator=g),
                    torch.randint(0, classes, (n_test,), generator=g))]
    return model, dirs, data


def assert_matches(got: np.ndarray, want: np.ndarray, data: list[EvalSet], rtol: float = 1e-5) -> None:
    """Loss within rtol, accuracy the same number of hits."""
    assert got.shape == want.shape
    np.testing.assert_allclose(got[:, 0::2], want[:, 0::2], rtol=rtol, atol=0)
    n = np.array([len(s) for s in data])
    np.testing.assert_array_equal(np.rint(got[:, 1::2] * n), np.rint(want[:, 1::2] * n))


_ORACLE: dict = {}


def oracle(name: str, **kw) -> tuple:
    key = (name, tuple(sorted(kw.items())))
    if key not in _ORACLE:
        sizes = dict(n_train=12, n_test=8) if name == "resnet20" else {}
        model, dirs, data = setup(name, **sizes, **kw)
        want = make_engine(model, dirs, data, loss="ce", device=CPU, kind="eager", batch_size=16,
                           log=quiet).evaluate(COORDS)
        _ORACLE[key] = (model, dirs, data, want)
    return _ORACLE[key]


def direct_values(model: nn.Module, dirs, data: list[EvalSet], coords, loss: str = "ce") -> np.ndarray:
    """Independent of the engine: a fresh copy loaded with theta* + sum c d by load_state_dict, one batch."""
    out = []
    for c in coords:
        state = {k: v.clone() for k, v in model.state_dict().items()}
        for ci, d in zip(c, dirs):
            for k, v in d.items():
                state[k] = state[k] + float(ci) * v
        m = type(model)() if not isinstance(model, nn.Sequential) else landscape_toys.make_model()
        m.load_state_dict(state)
        m.eval()
        row = []
        with torch.no_grad():
            for s in data:
                logits = m(s.inputs).double()
                if loss == "ce":
                    value = F.cross_entropy(logits, s.labels).item()
                else:
                    p = torch.softmax(logits, 1)
                    value = ((p - F.one_hot(s.labels, p.shape[1]).double()) ** 2).mean().item()
                row += [value, (logits.argmax(1) == s.labels).double().mean().item()]
        out.append(row)
    return np.array(out)


@pytest.mark.parametrize("loss", ["ce", "mse"])
def test_eager_oracle_equals_direct_computation(loss):
    model, dirs, data = setup("digits_cnn")
    got = make_engine(model, dirs, data, loss=loss, device=CPU, kind="eager", batch_size=7, log=quiet).evaluate(COORDS)
    assert_matches(got, direct_values(model, dirs, data, COORDS, loss), data)
    # the caller's model is left at theta*
    assert all(torch.equal(a, b)
               for a, b in zip(model.state_dict().values(), setup("digits_cnn")[0].state_dict().values()))


@pytest.mark.parametrize("name", list(SHAPES))
@pytest.mark.parametrize("kind", ["folded", "channels_last", "batched", "auto"])
def test_fast_paths_match_eager(name, kind):
    model, dirs, data, want = oracle(name)
    logs: list[str] = []
    engine = make_engine(model, dirs, data, loss="ce", device=CPU, kind=kind, log=logs.append)
    assert engine.name != "eager", logs
    assert_matches(engine.evaluate(COORDS), want, data)
    # a second pass over the same points (weights recomputed from theta*, no drift), in reverse order
    assert_matches(engine.evaluate(COORDS[::-1])[::-1], want, data)


@pytest.mark.parametrize("name", ["digits_cnn", "digits_mlp", "resnet20"])
def test_flop_count_equals_torch_flop_counter(name):
    """The engine's hook-based count (it decides batched vs folded) against torch's own FLOP counter."""
    from torch.utils.flop_counter import FlopCounterMode

    from landscape_mpi.engine.fast import count_flops

    model, _, data, _ = oracle(name)
    x = data[0].inputs[:3]
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        model(x)
    assert count_flops(model, x) == pytest.approx(counter.get_total_flops() / 3, rel=1e-12)
    assert count_flops(model, x) > 0


def test_compact_uint8_images_give_the_same_values():
    """Images kept as uint8 on the device and normalized per batch (compact=True, the CUDA default) give the
    same bits as the float inputs, and the eager oracle's values; the engine really holds uint8 images.
    channels_last (uint8 images in NHWC layout) and batched (slices under vmap) are the two ways the engines
    read them; folded reads them as channels_last does, in NCHW."""
    from landscape_mpi.data.datasets import CIFAR_MEAN, CIFAR_STD, CompactImages, decode_images
    from landscape_mpi.engine.common import DecodedImages

    torch.manual_seed(0)
    model = randomize_bn(build_model("resnet20")).eval()
    g = torch.Generator().manual_seed(1)
    dirs = [random_direction(model.state_dict(), space_keys(model, "weights"), g, "filter", "biasbn") for _ in range(2)]
    mean, std = torch.tensor(CIFAR_MEAN).view(1, 3, 1, 1), torch.tensor(CIFAR_STD).view(1, 3, 1, 1)
    data = []
    for name, n in (("train", 7), ("test", 5)):
        raw = torch.randint(0, 256, (n, 3, 32, 32), generator=g, dtype=torch.uint8)
        data.append(EvalSet(name, decode_images(raw, mean, std), torch.randint(0, 10, (n,), generator=g),
                            compact=CompactImages(raw, mean, std)))
    coords = COORDS[:2]
    want = make_engine(model, dirs, data, loss="ce", device=CPU, kind="eager", batch_size=4, log=quiet).evaluate(coords)
    for kind in ("channels_last", "batched"):
        plain = make_engine(model, dirs, data, loss="ce", device=CPU, kind=kind, batch_size=4, compact=False,
                            log=quiet)
        logs: list[str] = []
        compact = make_engine(model, dirs, data, loss="ce", device=CPU, kind=kind, batch_size=4, compact=True,
                              log=logs.append)
        assert all(isinstance(s.inputs, DecodedImages) and s.inputs.raw.dtype == torch.uint8
                   for s in compact.data), logs
        assert any("uint8" in line for line in logs), logs
        got = compact.evaluate(coords)
        np.testing.assert_array_equal(got, plain.evaluate(coords))
        assert_matches(got, want, data)


def test_auto_choices():
    names = {}
    for name in ("digits_cnn", "resnet20"):
        model, dirs, data, _ = oracle(name)
        names[name] = make_engine(model, dirs, data, loss="ce", device=CPU, log=quiet)
    assert names["digits_cnn"].name == "batched" and names["digits_cnn"].group_size > 1
    assert names["resnet20"].name == "folded+channels_last" and names["resnet20"].group_size == 1


@pytest.mark.parametrize("kind", ["folded", "batched"])
def test_fold_per_point_when_directions_move_batchnorm(kind):
    # states space with ignore=none: d = w on every BatchNorm tensor, running statistics included, so the
    # BatchNorm scale changes across the grid and must be folded again at every point.
    model, dirs, data, want = oracle("digits_cnn", space="states", ignore="none")
    assert any(bool(d["bn1.running_var"].any()) for d in dirs)
    engine = make_engine(model, dirs, data, loss="ce", device=CPU, kind=kind, log=quiet)
    assert engine.tensors.dynamic, "expected per-point folding"
    assert_matches(engine.evaluate(COORDS), want, data)


def test_batched_groups_longer_and_shorter_than_group_size():
    model, dirs, data = setup("digits_mlp")
    coords = np.random.RandomState(0).uniform(-1, 1, (7, 2))
    want = make_engine(model, dirs, data, loss="mse", device=CPU, kind="eager", log=quiet).evaluate(coords)
    engine = make_engine(model, dirs, data, loss="mse", device=CPU, kind="batched", log=quiet)
    engine.group_size = 3  # 7 points: groups of 3, 3, 1
    assert_matches(engine.evaluate(coords), want, data)
    assert_matches(engine.evaluate(coords[:2]), want[:2], data)


def test_batch_size_changes_no_value():
    model, dirs, data, want = oracle("digits_cnn")
    for bs in (3, 1000):
        for kind in ("folded", "batched"):
            got = make_engine(model, dirs, data, loss="ce", device=CPU, kind=kind, batch_size=bs,
                              log=quiet).evaluate(COORDS)
            assert_matches(got, want, data)


class BNAfterReLU(nn.Module):
    """A user model with one foldable BatchNorm (after conv) and one that is not (after a ReLU)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 4, 3, padding=1)
        self.bn_ok = nn.BatchNorm2d(4)
        self.bn_after_relu = nn.BatchNorm2d(4)
        self.fc = nn.Linear(4 * 64, 10)

    def forward(self, x):
        return self.fc(self.bn_after_relu(torch.relu(self.bn_ok(self.conv(x)))).flatten(1))


class DataDependent(nn.Module):
    """Control flow on tensor values: torch.fx cannot trace it."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 4, 3, padding=1)
        self.bn = nn.BatchNorm2d(4)
        self.fc = nn.Linear(4 * 64, 10)

    def forward(self, x):
        y = self.bn(self.conv(x))
        if y.sum() > 0:
            y = torch.relu(y)
        return self.fc(y.flatten(1))


def user_setup(cls):
    torch.manual_seed(0)
    model = randomize_bn(cls()).eval()
    g = torch.Generator().manual_seed(1)
    dirs = [random_direction(model.state_dict(), space_keys(model, "weights"), g, "filter", "biasbn") for _ in range(2)]
    data = [EvalSet("train", torch.randn(30, 1, 8, 8, generator=g), torch.randint(0, 10, (30,), generator=g))]
    want = make_engine(model, dirs, data, loss="ce", device=CPU, kind="eager", log=quiet).evaluate(COORDS)
    return model, dirs, data, want


@pytest.mark.parametrize("kind", ["folded", "batched", "auto"])
def test_batchnorm_after_relu_is_left_unfolded_with_a_note(kind):
    model, dirs, data, want = user_setup(BNAfterReLU)
    logs: list[str] = []
    engine = make_engine(model, dirs, data, loss="ce", device=CPU, kind=kind, log=logs.append)
    assert any("bn_after_relu not folded" in line for line in logs), logs
    assert [p.bn for p in engine.tensors.pairs] == ["bn_ok"]
    assert_matches(engine.evaluate(COORDS), want, data)


@pytest.mark.parametrize("kind", ["folded", "batched", "compiled", "auto"])
def test_untraceable_model_falls_back_to_eager_with_a_note(kind):
    model, dirs, data, want = user_setup(DataDependent)
    logs: list[str] = []
    engine = make_engine(model, dirs, data, loss="ce", device=CPU, kind=kind, log=logs.append)
    assert engine.name == "eager"
    assert any("cannot trace" in line and "eager" in line for line in logs), logs
    assert_matches(engine.evaluate(COORDS), want, data, rtol=0)


def test_compiled_path_matches_eager():
    """kind="compiled" really compiles (inductor, C++ on CPU: dynamo records the graphs it captured) and gives the
    eager oracle's values. The user model of the toys (a BatchNorm MLP) keeps the compile time to seconds."""
    from torch._dynamo.utils import counters

    model, dirs, data, want = oracle("landscape_toys:make_model")
    if not inductor_compiles():
        # inductor cannot build here (ATEN_CPU_CAPABILITY=default): the engine must say so and give the oracle's
        # values uncompiled
        logs: list[str] = []
        engine = make_engine(model, dirs, data, loss="ce", device=CPU, kind="compiled", log=logs.append)
        assert_matches(engine.evaluate(COORDS), want, data)
        assert any("torch.compile failed" in line for line in logs), logs
        return
    torch._dynamo.reset()
    counters.clear()
    logs = []
    engine = make_engine(model, dirs, data, loss="ce", device=CPU, kind="compiled", log=logs.append)
    assert "compiled" in engine.name, logs
    assert_matches(engine.evaluate(COORDS), want, data)
    assert counters["stats"]["unique_graphs"] >= 1, dict(counters["stats"])
    assert_matches(engine.evaluate(COORDS[::-1])[::-1], want, data)  # the compiled graph reused, no drift
    assert not any("torch.compile failed" in line for line in logs), logs


def inductor_compiles() -> bool:
    """Whether inductor can build C++ kernels in this CPU configuration. With ATen's capability forced to DEFAULT
    (ATEN_CPU_CAPABILITY=default: no vector ISA), torch 2.14.1's inductor emits `at::vec` code for some kernels
    that does not compile (seen on the folded BatchNorm MLP: "'at::vec' has not been declared"), so the engine
    must fall back; on every vector capability it compiles."""
    return torch.backends.cpu.get_cpu_capability() != "DEFAULT"


def test_compile_failure_falls_back_uncompiled_with_a_note(monkeypatch):
    model, dirs, data, want = oracle("digits_cnn")

    def broken_compile(module, **kw):
        def run(*args):
            raise RuntimeError("inductor: no C++ compiler")
        return run

    monkeypatch.setattr(torch, "compile", broken_compile)
    logs: list[str] = []
    engine = make_engine(model, dirs, data, loss="ce", device=CPU, kind="compiled", log=logs.append)
    assert_matches(engine.evaluate(COORDS), want, data)
    assert any("torch.compile failed" in line and "no C++ compiler" in line for line in logs), logs
    assert "compiled" not in engine.name


@pytest.mark.parametrize("kind", ["eager", "folded", "batched"])
def test_on_batch_reports_fractions_and_may_raise(kind):
    model, dirs, data, want = oracle("digits_cnn")
    engine = make_engine(model, dirs, data, loss="ce", device=CPU, kind=kind, batch_size=16, log=quiet)
    seen: list[float] = []
    engine.on_batch = seen.append
    engine.evaluate(COORDS[:2])
    assert seen == sorted(seen) and seen[0] > 0 and seen[-1] == pytest.approx(1.0)
    # 40 + 24 samples at 16 per batch: 3 + 2 batches per point, 2 points (eager) or one group (batched)
    assert len(seen) == (5 if engine.group_size > 1 else 10)

    class Stop(Exception):
        pass

    def stop(fraction: float) -> None:
        raise Stop

    engine.on_batch = stop
    with pytest.raises(Stop):
        engine.evaluate(COORDS[1:2])
    engine.on_batch = None
    assert_matches(engine.evaluate(COORDS), want, data)


def test_precision_flags_and_bf16_close_to_fp32():
    model, dirs, data, want = oracle("digits_cnn")
    make_engine(model, dirs, data, loss="ce", device=CPU, precision="tf32", log=quiet)
    assert torch.backends.cuda.matmul.allow_tf32 and torch.backends.cudnn.allow_tf32
    make_engine(model, dirs, data, loss="ce", device=CPU, precision="fp32", log=quiet)
    assert not torch.backends.cuda.matmul.allow_tf32 and not torch.backends.cudnn.allow_tf32
    assert torch.get_float32_matmul_precision() == "highest"
    got = make_engine(model, dirs, data, loss="ce", device=CPU, precision="bf16", kind="folded",
                      log=quiet).evaluate(COORDS)
    np.testing.assert_allclose(got[:, 0::2], want[:, 0::2], rtol=5e-2)
    assert not np.array_equal(got[:, 0::2], want[:, 0::2])  # autocast did run in bfloat16


def test_recalibrate_sets_pooled_statistics_and_loss():
    torch.manual_seed(0)
    model = landscape_toys.make_model().eval()
    bn = model[1]
    bn.running_mean.fill_(5.0)  # wrong statistics
    bn.running_var.fill_(9.0)
    g = torch.Generator().manual_seed(3)
    dirs = [random_direction(model.state_dict(), space_keys(model, "weights"), g, "filter", "biasbn")]
    bn_data = EvalSet("train", torch.randn(50, 4, generator=g) * 2 + 1, torch.randint(0, 3, (50,), generator=g))
    data = [EvalSet("test", torch.randn(30, 4, generator=g), torch.randint(0, 3, (30,), generator=g))]
    # batch 16: 3 recalibration batches of 16-17 samples (pooled, not a mean of batch statistics)
    engine = make_engine(model, dirs, data, loss="ce", device=CPU, bn="recalibrate", bn_data=bn_data,
                         batch_size=16, log=quiet)
    assert engine.name == "eager"
    got = engine.evaluate(np.zeros((1, 1)))
    # the BatchNorm's input is model[0](x): its statistics, computed directly in float64
    h = (bn_data.inputs.double() @ model[0].weight.double().T + model[0].bias.double()).detach()
    mean, var = h.mean(0), h.var(0, unbiased=True)
    calibrated = engine.model[1]
    np.testing.assert_allclose(calibrated.running_mean.numpy(), mean.numpy(), rtol=1e-5)
    np.testing.assert_allclose(calibrated.running_var.numpy(), var.numpy(), rtol=1e-5)
    # the loss with those statistics, evaluated independently
    ref = landscape_toys.make_model()
    ref.load_state_dict(model.state_dict())
    ref[1].running_mean.copy_(mean.float())
    ref[1].running_var.copy_(var.float())
    ref.eval()
    with torch.no_grad():
        logits = ref(data[0].inputs)
    assert got[0, 0] == pytest.approx(F.cross_entropy(logits, data[0].labels).item(), rel=1e-5)
    assert got[0, 1] == pytest.approx((logits.argmax(1) == data[0].labels).float().mean().item())
    # the caller's model keeps its (wrong) statistics
    assert float(bn.running_mean[0]) == 5.0


def test_recalibrate_conv_first_layer_and_every_point():
    model, dirs, data = setup("digits_cnn")
    bn_data = EvalSet("train", torch.randn(45, 1, 8, 8), torch.randint(0, 10, (45,)))
    engine = make_engine(model, dirs, data, loss="ce", device=CPU, bn="recalibrate", bn_data=bn_data,
                         batch_size=20, log=quiet)
    engine.evaluate(COORDS[1:2])
    w = model.conv1.weight.detach() + COORDS[1, 0] * dirs[0]["conv1.weight"] + COORDS[1, 1] * dirs[1]["conv1.weight"]
    h = F.conv2d(bn_data.inputs.double(), w.double(), model.conv1.bias.detach().double(), padding=1)
    h = h.transpose(0, 1).reshape(h.shape[1], -1)
    np.testing.assert_allclose(engine.model.bn1.running_mean.numpy(), h.mean(1).numpy(), rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(engine.model.bn1.running_var.numpy(), h.var(1).numpy(), rtol=1e-5)


def test_recalibrate_function_restores_eval_mode_after_an_exception():
    model = landscape_toys.make_model().eval()
    data = EvalSet("train", torch.randn(40, 4), torch.randint(0, 3, (40,)))

    def boom() -> None:
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        recalibrate_bn(model, data, 10, on_batch=boom)
    assert not any(m.training for m in model.modules())


# the option values themselves (kind, precision, loss, bn, batch size) are checked by the configs:
# tests/test_options.py::test_option_values_are_checked_by_the_configs
@pytest.mark.parametrize("kwargs, message", [
    (dict(bn="recalibrate"), "--bn recalibrate needs training samples"),
])
def test_user_errors(kwargs, message):
    model, dirs, data = setup("digits_mlp")
    args = dict(loss="ce", device=CPU, log=quiet)
    args.update(kwargs)
    with pytest.raises(UserError) as info:
        make_engine(model, dirs, data, **args)
    assert str(info.value).startswith(message) and "\n" not in str(info.value)


def test_recalibrate_without_batchnorm_is_a_user_error():
    model, dirs, data = setup("digits_mlp")
    with pytest.raises(UserError, match="no BatchNorm layer.*drop --bn recalibrate"):
        make_engine(model, dirs, data, loss="ce", device=CPU, bn="recalibrate", bn_data=data[0], log=quiet)
