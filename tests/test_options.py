"""Options declared once (landscape_mpi/config/options.py): every command's parser is built from the fields of
its config dataclasses, with the fields' defaults and choices (typed: a Literal annotation); `to_argv` gives back
the arguments of a config."""

import argparse
import dataclasses
import importlib
import inspect
import pkgutil
import typing
from typing import Literal

import pytest

import landscape_mpi.config
from landscape_mpi.cli import build_parser, main
from landscape_mpi.config.compare import DEFAULT_LEVELS, CompareOptions
from landscape_mpi.config.errors import UserError
from landscape_mpi.config.experiments import ExperimentsList, ExperimentsReport, ExperimentsRun
from landscape_mpi.config.hessian import HessianConfig, HessianRun
from landscape_mpi.config.info import InfoOptions
from landscape_mpi.config.options import (
    add_options,
    cli_default,
    flag_of,
    from_args,
    literal_values,
    option,
    options_of,
    to_argv,
)
from landscape_mpi.config.plot import PlotOptions
from landscape_mpi.config.surface import Axis, DemoOptions, RunOptions, SurfaceConfig
from landscape_mpi.config.train import TrainConfig, TrainOptions
from plotting import cli as plot_cli

#: command -> the classes its options come from, and the arguments that are not options of a config
COMMANDS = {
    ("surface",): ((SurfaceConfig, RunOptions), set()),
    ("demo",): ((DemoOptions, SurfaceConfig, RunOptions), set()),
    ("hessian",): ((HessianConfig, HessianRun), set()),
    ("train",): ((TrainConfig, TrainOptions), set()),
    ("experiments", "run"): ((ExperimentsRun,), set()),
    ("experiments", "report"): ((ExperimentsReport,), set()),
    ("experiments", "list"): ((ExperimentsList,), set()),
    ("compare",): ((CompareOptions,), set()),
    ("info",): ((InfoOptions,), set()),
    ("landscape-plot",): ((PlotOptions,), set()),
}


def subparser(*names: str) -> argparse.ArgumentParser:
    if names == ("landscape-plot",):
        return plot_cli.build_parser()
    p = build_parser()
    for name in names:
        sub = next(a for a in p._actions if isinstance(a, argparse._SubParsersAction))
        p = sub.choices[name]
    return p


def actions(p: argparse.ArgumentParser) -> dict[str, argparse.Action]:
    return {a.dest: a for a in p._actions if not isinstance(a, (argparse._HelpAction, argparse._SubParsersAction))}


def fields_of(classes) -> dict:
    return {f.name: (f, opt, cls) for cls in classes for f, opt in options_of(cls)}


@pytest.mark.parametrize("command", list(COMMANDS), ids=" ".join)
def test_parser_is_built_from_the_fields(command):
    """One argument per field (and none written by hand), its flag from the field name, its default the
    field's: no default is written twice."""
    classes, extra = COMMANDS[command]
    declared = fields_of(classes)
    acts = actions(subparser(*command))
    skipped = set()
    if command == ("demo",):
        from landscape_mpi.cli.demo import FIXED

        skipped = set(FIXED)
    assert set(acts) == (set(declared) - skipped) | extra
    for dest, action in acts.items():
        f, opt, cls = declared[dest]
        if not opt.positional:
            assert action.option_strings == [flag_of(f, opt)]
            assert opt.flag or flag_of(f, opt).lstrip("-").replace("-", "_") in (f.name, "no_" + f.name)
        assert action.help and opt.help.split(" (")[0] in action.help.replace("%%", "%")
        if opt.choices and opt.parse is None:
            assert tuple(action.choices) == opt.choices
        if opt.many:  # several values: a positional taking one or more, or a flag given once per value
            assert action.nargs == "+" if opt.positional else isinstance(action, argparse._AppendAction)
            assert action.default is None and action.default == cli_default(f, opt)
            continue
        if f.default is dataclasses.MISSING:
            assert action.default is None
            # default_from: computed when not given (--checkpoint from --model hf:DIR); the class refuses a None
            assert action.required or opt.positional or opt.default_from is not None or (command == ("demo",)
                                                                                         and dest == "out")
            continue
        assert not action.required
        if opt.default_from is not None:
            assert action.default is None  # computed from the other options (dir_space)
        elif opt.parse is not None and f.default is not None:
            assert opt.parse(action.default) == f.default  # the default's text, parsed, is the default
        elif isinstance(action, (argparse._StoreTrueAction, argparse._StoreFalseAction)):
            assert action.default == f.default
        else:
            assert action.default == f.default and type(action.default) is type(f.default)
        assert action.default == cli_default(f, opt)


def parse(*argv: str) -> argparse.Namespace:
    return build_parser().parse_args(list(argv))


def test_defaults_give_the_dataclass_defaults():
    a = parse("surface", "--model", "m", "--checkpoint", "c", "--out", "o.h5")
    assert from_args(SurfaceConfig, a) == SurfaceConfig(model="m", checkpoint="c")
    assert from_args(RunOptions, a) == RunOptions(out="o.h5")
    a = parse("hessian", "--model", "m", "--checkpoint", "c", "--out", "h.h5")
    assert from_args(HessianConfig, a) == HessianConfig(model="m", checkpoint="c", out="h.h5")
    a = parse("train", "--model", "m", "--out-dir", "d")
    assert from_args(TrainConfig, a) == TrainConfig(model="m", out_dir="d")
    assert from_args(TrainOptions, a).device == "auto"
    assert SurfaceConfig(model="m", checkpoint="c").x == Axis(-1.0, 1.0, 51)


def test_special_parsing():
    base = ("surface", "--model", "m", "--checkpoint", "c", "--out", "o.h5")
    c = from_args(SurfaceConfig, parse(*base, "--x=-2:2:5", "--y=0:1:3", "--splits", "test", "--metrics", "loss,eig"))
    assert (c.x, c.y, c.z, c.splits, c.eig) == (Axis(-2, 2, 5), Axis(0, 1, 3), None, ("test",), True)
    # dir_space: states with a target direction, weights without, unless given
    assert from_args(SurfaceConfig, parse(*base)).dir_space == "weights"
    assert from_args(SurfaceConfig, parse(*base, "--x-target", "t.pt")).dir_space == "states"
    assert from_args(SurfaceConfig, parse(*base, "--x-target", "t.pt", "--dir-space", "weights")).dir_space == "weights"
    assert from_args(TrainConfig, parse("train", "--model", "m", "--out-dir", "d", "--no-augment")).augment is False
    with pytest.raises(UserError, match="--metrics loss,hess: choose loss or loss,eig"):
        from_args(SurfaceConfig, parse(*base, "--metrics", "loss,hess"))
    with pytest.raises(UserError, match="--y=1:2: expected min:max:num"):
        from_args(SurfaceConfig, parse(*base, "--y=1:2"))


@pytest.mark.parametrize("argv, needle", [
    (("surface", "--model", "m", "--checkpoint", "c", "--out", "o", "--loss", "nll"), "invalid choice: 'nll'"),
    (("surface", "--model", "m", "--checkpoint", "c", "--out", "o", "--engine", "fastest"), "invalid choice"),
    (("hessian", "--model", "m", "--checkpoint", "c", "--out", "o", "--precision", "fp32"), "invalid choice"),
    (("train", "--model", "m", "--out-dir", "d", "--optimizer", "lbfgs"), "invalid choice: 'lbfgs'"),
    (("experiments", "list", "--scale", "huge"), "invalid choice: 'huge'"),
    (("surface", "--model", "m", "--out", "o"), "--checkpoint is required"),
    (("train", "--model", "m", "--out-dir", "d", "--epochs", "0"), "--epochs 0: must be at least 1"),
    (("surface", "--model", "m", "--checkpoint", "c", "--out", "o", "--metrics", "eig,x"), "--metrics eig,x"),
])
def test_choices_and_values_are_one_line_errors(capsys, argv, needle):
    assert main(list(argv)) == 2
    err = capsys.readouterr().err.strip()
    assert needle in err and len(err.splitlines()) == 1, err


@pytest.mark.parametrize("make, message", [
    (lambda: RunOptions(out="o", engine="fastest"), "--engine fastest: choose one of auto, eager"),
    (lambda: SurfaceConfig(model="m", checkpoint="c", precision="fp16"), "--precision fp16: choose one of"),
    (lambda: SurfaceConfig(model="m", checkpoint="c", loss="nll"), "--loss nll: choose one of"),
    (lambda: SurfaceConfig(model="m", checkpoint="c", bn="train"), "--bn train: choose one of"),
    (lambda: SurfaceConfig(model="m", checkpoint="c", dir_space="all"), "--dir-space all: choose one of"),
    (lambda: RunOptions(out="o", batch_size=0), "--batch-size 0: must be positive"),
    (lambda: HessianConfig(model="m", checkpoint="c", out="o", precision="fp16"), "--precision fp16: choose one of"),
    (lambda: TrainConfig(model="m", out_dir="d", schedule="linear"), "--schedule linear: choose one of none, step, "
                                                                      "cosine"),
    (lambda: TrainConfig(model="m", out_dir="d", optimizer="lbfgs"), "--optimizer lbfgs: choose one of sgd, adam"),
    (lambda: SurfaceConfig(model="m", checkpoint="c", splits=("train", "val")), "--splits val: choose one of train, "
                                                                               "test"),
    (lambda: HessianConfig(model="m", checkpoint="c", out="o", splits=()), "--splits : choose train, test or"),
    (lambda: PlotOptions(files=("a.h5",), kind=("contour", "movie")), "--kind movie: choose one of 1d, contour"),
    (lambda: PlotOptions(files=("a.h5",), format="jpg"), "--format jpg: choose one of png, pdf, svg"),
    (lambda: PlotOptions(files=("a.h5",), dpi=0), "--dpi 0: must be at least 1"),
    (lambda: PlotOptions(files=("a.h5",), levels=1), "--levels 1: must be at least 2"),
    (lambda: PlotOptions(files=("a.h5",), upsample=0), "--upsample 0: must be at least 1"),
    (lambda: DemoOptions(points=0), "--points 0: must be at least 1"),
])
def test_option_values_are_checked_by_the_configs(make, message):
    """Configs built without the command line (experiments, library use) are checked where they are declared."""
    with pytest.raises(UserError) as info:
        make()
    assert str(info.value).startswith(message) and "\n" not in str(info.value)


ROUND_TRIPS = {
    "surface": [SurfaceConfig(model="m", checkpoint="c"),
                SurfaceConfig(model="pkg.mod:f", checkpoint="c d.pt", x=Axis(-0.25, 0.5, 7), y=Axis(-1e-3, 1e-3, 3),
                              z=Axis(0.0, 1.0, 2), dataset="cifar10", data_root="/data", samples=100, splits=("test",),
                              loss="mse", norm="layer", ignore="none", seed=3, precision="bf16", bn="recalibrate",
                              bn_samples=50, eig=True, eig_tol=0.01),
                SurfaceConfig(model="m", checkpoint="c", x_target="t.pt", y=Axis(-1, 1, 3), y_target="u.pt"),
                SurfaceConfig(model="m", checkpoint="c", x_target="t.pt", dir_space="weights"),
                SurfaceConfig(model="m", checkpoint="c", y=Axis(-1, 1, 3), same_dir=True, dir_space="states"),
                SurfaceConfig(model="m", checkpoint="c", directions="pca", trajectory="run/epoch_*.pt"),
                SurfaceConfig(model="m", checkpoint="c", directions="file", dir_file="d.h5", dir_format="reference"),
                SurfaceConfig(model="m", checkpoint="c", directions="hessian", hessian_file="h.h5")],
    "run": [RunOptions(out="o.h5"),
            RunOptions(out="o.h5", overwrite=True, device="cpu", io="collective", threads=2, batch_size=64,
                       engine="eager", order="rows", chunk_size=3, flush_seconds=0.5, progress_seconds=2.0)],
    "hessian": [HessianConfig(model="m", checkpoint="run/epoch_*.pt", out="h.h5"),
                HessianConfig(model="m", checkpoint="c", out="h.h5", dataset="mnist1d", samples=10,
                              splits=("train", "test"), loss="mse", batch_size=7, precision="float64", top_k=3,
                              store_vectors=3, tol=0.0, maxiter=9, trace_probes=0, slq_runs=0, slq_steps=4,
                              slq_sigma=0.5, slq_grid=11, adaptive_rho=0.1, adaptive_samples=0, seed=5,
                              overwrite=True)],
    "train": [TrainConfig(model="m", out_dir="d"),
              TrainConfig(model="m", out_dir="d", dataset="cifar10", data_root="/data", samples=9, epochs=2,
                          batch_size=3, optimizer="adam", lr=1e-3, momentum=0.0, weight_decay=0.0, schedule="none",
                          augment=False, seed=4, save_every_iters=6)],
}
PARSERS = {"surface": (SurfaceConfig, RunOptions), "hessian": (HessianConfig, HessianRun),
           "train": (TrainConfig, TrainOptions)}


@pytest.mark.parametrize("kind", list(ROUND_TRIPS))
def test_to_argv_round_trip(kind):
    """from_args(parse(to_argv(cfg))) == cfg, through the real parsers of the commands."""
    for cfg in ROUND_TRIPS[kind]:
        cls = type(cfg)
        command = next(c for c, classes in PARSERS.items() if cls in classes)
        other = [c for c in PARSERS[command] if c is not cls][0]
        companion = {RunOptions: RunOptions(out="o.h5"), SurfaceConfig: SurfaceConfig(model="m", checkpoint="c"),
                     HessianRun: HessianRun(), TrainOptions: TrainOptions()}[other]
        argv = [command, *to_argv(cfg), *to_argv(companion)]
        a = build_parser().parse_args(argv)
        assert from_args(cls, a) == cfg, argv
        assert from_args(other, a) == companion


def test_to_argv_leaves_out_defaults_and_writes_values_with_equals():
    assert to_argv(SurfaceConfig(model="m", checkpoint="c")) == ["--model=m", "--checkpoint=c"]
    assert to_argv(SurfaceConfig(model="m", checkpoint="c", x=Axis(-1, 1, 5), eig=True)) == [
        "--model=m", "--checkpoint=c", "--x=-1:1:5", "--metrics=loss,eig"]
    assert to_argv(TrainConfig(model="m", out_dir="d", augment=False)) == ["--model=m", "--out-dir=d", "--no-augment"]
    assert to_argv(ExperimentsRun(name="width", tiny=True)) == ["width", "--tiny"]
    assert to_argv(PlotOptions(files=("a.h5", "b.h5"), kind=("1d", "vtp"))) == ["a.h5", "b.h5", "--kind=1d",
                                                                               "--kind=vtp"]


def test_demo_builds_its_configs_without_touching_the_namespace():
    from landscape_mpi.cli.demo import configs

    a = parse("demo", "--out-dir", "d", "--points", "5", "--seed", "2", "--device", "cpu")
    before = dict(vars(a))
    demo, training, config, options = configs(a)
    assert vars(a) == before
    assert (demo.out_dir, demo.points, training.epochs, training.model) == ("d", 5, 10, "digits_cnn")
    assert config == SurfaceConfig(model="digits_cnn", checkpoint="d/digits_cnn/final.pt", x=Axis(-1, 1, 5),
                                   y=Axis(-1, 1, 5), seed=2)
    assert options == RunOptions(out="d/surface.h5", device="cpu")
    assert configs(parse("demo", "--out", "x.h5"))[3].out == "x.h5"
    demo, training, config, options = configs(parse("demo", "--out-dir", "d", "--task", "lm"))
    assert (training.model, training.dataset, training.epochs, training.optimizer) == ("gpt_tiny", "text", 3, "adam")
    assert (config.model, config.task, config.samples, options.out) == ("gpt_tiny", "lm", 128, "d/surface-lm.h5")
    assert config.x == config.y == Axis(-1, 1, 13)


def test_declaration_helper_on_a_small_class():
    @dataclasses.dataclass(frozen=True)
    class Opts:
        name: str = option(help="a name", positional=True)
        count: int = option(3, help="how many")
        ratio: float | None = option(None, help="a ratio")
        mode: Literal["a", "b"] = option("a", help="the mode")
        items: tuple = option(("p", "q"), help="items", parse=lambda s: tuple(s.split("+")), format="+".join)
        fast: bool = option(False, help="go fast")
        safe: bool = option(True, help="skip the checks")
        tags: tuple[Literal["u", "v"], ...] = option((), help="tags")
        level: Literal["low", "high"] | None = option(None, help="a level")

    p = argparse.ArgumentParser()
    add_options(p, Opts)
    helps = p.format_help()
    assert "--count COUNT" in helps and "(default: 3)" in helps and "--no-safe" in helps and "(default: p+q)" in helps
    assert "--mode {a,b}" in helps and "--tags {u,v}" in helps and "--level {low,high}" in helps
    o = from_args(Opts, p.parse_args(["n", "--items", "x+y", "--fast", "--no-safe", "--ratio", "0.5", "--tags", "v",
                                      "--tags", "u", "--level", "high", "--mode", "b"]))
    assert o == Opts(name="n", items=("x", "y"), fast=True, safe=False, ratio=0.5, tags=("v", "u"), level="high",
                     mode="b")
    assert from_args(Opts, p.parse_args(to_argv(o))) == o
    assert from_args(Opts, p.parse_args(["n"])).tags == ()
    with pytest.raises(SystemExit):  # argparse's own "invalid choice", from the same Literal
        p.parse_args(["n", "--tags", "w"])
    assert from_args(Opts, p.parse_args(["n"]), count=9).count == 9
    with pytest.raises(UserError, match="no option nope"):
        from_args(Opts, p.parse_args(["n"]), nope=1)


def test_hessian_top_k_1_needs_no_store_vectors():
    """--store-vectors follows --top-k when it is smaller than the default 2 (hessian --top-k 1 alone works)."""
    from landscape_mpi.config.hessian import HessianConfig

    assert HessianConfig(model="m", checkpoint="c", out="o", top_k=1).store_vectors == 1
    assert HessianConfig(model="m", checkpoint="c", out="o").store_vectors == 2
    assert HessianConfig(model="m", checkpoint="c", out="o", top_k=4, store_vectors=0).store_vectors == 0


def _config_classes() -> list[type]:
    """Every dataclass declared with options in landscape_mpi/config/ (the modules found, not a hand list)."""
    out = []
    for info in pkgutil.iter_modules(landscape_mpi.config.__path__):
        module = importlib.import_module(f"landscape_mpi.config.{info.name}")
        out += [c for _, c in inspect.getmembers(module, inspect.isclass)
                if c.__module__ == module.__name__ and dataclasses.is_dataclass(c) and options_of(c)]
    return out


def test_choices_are_typed_and_read_from_one_declaration():
    """Every option with choices is annotated with a Literal (directly, | None, or tuple[..., ...]): the parser's
    choices, check_choices and the module's tuple of values (ENGINES, BN_MODES, ...) all come from it."""
    classes = _config_classes()
    assert {SurfaceConfig, RunOptions, HessianConfig, TrainConfig, CompareOptions, InfoOptions, PlotOptions} <= set(
        classes)
    typed = 0
    for cls in classes:
        hints = typing.get_type_hints(cls)
        for f, opt in options_of(cls):
            literals = [h for h in _flatten(hints[f.name]) if typing.get_origin(h) is Literal]
            assert (opt.choices is not None) == bool(literals), (cls, f.name)
            if literals:
                assert opt.choices == literal_values(literals[0]), (cls, f.name)
                typed += 1
    assert typed >= 20
    from landscape_mpi.config import plot, surface

    assert surface.ENGINES == literal_values(surface.EngineKind) == options_of(RunOptions)[
        [f.name for f, _ in options_of(RunOptions)].index("engine")][1].choices
    assert plot.KINDS == plot.FIGURE_KINDS + plot.EXPORT_KINDS + plot.PATH_KINDS
    with pytest.raises(TypeError, match="choices are typed; annotate the field with a Literal"):
        option("a", help="x", choices=("a", "b"))


def _flatten(hint) -> list:
    """An annotation and the types inside it (``X | None``, ``tuple[X, ...]``)."""
    return [hint, *(h for arg in typing.get_args(hint) for h in _flatten(arg))]


@pytest.mark.parametrize("options", [
    CompareOptions(files=("a.h5",)),
    CompareOptions(files=("a b.h5", "c.h5"), metric="test_loss", radius=0.5, levels=(0.2, 3.0), json=True),
    InfoOptions(file="s.h5"), InfoOptions(file="s.h5", json=True),
    PlotOptions(files=("s.h5",)),
    PlotOptions(files=("s.h5", "t.h5"), kind=("contour", "vtp", "contour"), metric="test_acc", out="figs",
                format="svg", dpi=50, scale="log", log=True, vmin=-1.0, vmax=2.5, levels=7, zmax=3.0, upsample=2,
                fill_missing=True),
], ids=repr)
def test_compare_info_and_plot_round_trip(options):
    """The three commands that read files (compare, info, landscape-plot) are built from their dataclasses too:
    from_args(parse(to_argv(o))) == o through the real parsers, and the defaults are the dataclass defaults."""
    argv = to_argv(options)
    if isinstance(options, PlotOptions):
        a = plot_cli.build_parser().parse_args(argv)
    else:
        a = build_parser().parse_args([{CompareOptions: "compare", InfoOptions: "info"}[type(options)], *argv])
    assert from_args(type(options), a) == options, argv
    assert CompareOptions(files=("a",)).levels == DEFAULT_LEVELS == (0.1, 0.5, 1.0)


@pytest.mark.parametrize("argv, needle", [
    (("compare", "a.h5", "--levels", "0.1,x"), "--levels 0.1,x: expected comma-separated numbers"),
    (("compare", "a.h5", "--radius", "wide"), "argument --radius: invalid float value: 'wide'"),
    (("compare",), "the following arguments are required: files"),
    (("info",), "the following arguments are required: file"),
    (("landscape-plot", "a.h5", "--kind", "movie"), "argument --kind: invalid choice: 'movie'"),
    (("landscape-plot", "a.h5", "--format", "jpg"), "argument --format: invalid choice: 'jpg'"),
    (("landscape-plot",), "the following arguments are required: files"),
    (("landscape-plot", "a.h5", "--levels", "0"), "--levels 0: must be at least 2"),
])
def test_compare_info_and_plot_errors_are_one_line(capsys, argv, needle, tmp_path):
    """Bad options of the file-reading commands: one line, exit 2, before any file is opened (none exists)."""
    if argv[0] == "landscape-plot":
        assert plot_cli.main(list(argv[1:])) == 2
    else:
        assert main(list(argv)) == 2
    err = capsys.readouterr().err.strip()
    assert needle in err and len(err.splitlines()) == 1, err
