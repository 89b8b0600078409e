"""A written file checked against its kind's schema (`contract.SCHEMAS`): every dataset, group and attribute
must be an entry of the schema, of the entry's dtype and shape rule, and every entry written `always` (without
a placeholder in its name) must be there. Imports neither torch nor mpi4py.
"""

from __future__ import annotations

import json
import re

import h5py
import numpy as np

from landscape_mpi.files import contract
from landscape_mpi.files.reader import open_read

__all__ = ["schema_problems"]

#: The Python/numpy types an attribute of each scalar dtype reads back as.
_SCALARS = {"int": (np.integer,), "float": (np.floating,), "bool": (np.bool_, bool)}


def _text(v):
    return v.decode() if isinstance(v, bytes) else v


def _user_metrics(f: h5py.File) -> tuple[str, ...]:
    """The metric names of a user task (``--task package.module:factory``), from the file's declared columns."""
    try:
        task = json.loads(_text(f.attrs[contract.CONFIG_ATTR])).get("task", "")
        columns = json.loads(_text(f.attrs.get(contract.METRICS_ATTR, "[]")))
    except (KeyError, ValueError, AttributeError):
        return ()
    if ":" not in str(task):
        return ()
    return tuple(c.split("_", 1)[1] for c in columns if c.split("_", 1)[0] in contract.SPLITS and "_" in c)


def _dtype_problem(entry: contract.Entry, value) -> str | None:
    """What is wrong with the dtype of a dataset or attribute `value` (None: nothing)."""
    want = entry.dtype
    if want in ("str", "json"):
        if isinstance(value, h5py.Dataset):
            ok = h5py.check_string_dtype(value.dtype) is not None
        else:
            ok = isinstance(_text(value), str)
            if ok and want == "json":
                try:
                    json.loads(_text(value))
                except ValueError:
                    ok = False
        return None if ok else f"is not {want}"
    dtype = np.asarray(value).dtype if not isinstance(value, h5py.Dataset) else value.dtype
    if want == "tensor":
        return None if dtype.kind in "fiub" else f"is {dtype}, not a tensor's dtype"
    if want in _SCALARS:
        ok = isinstance(value, _SCALARS[want]) and not (want == "int" and isinstance(value, (bool, np.bool_)))
        return None if ok else f"is {type(value).__name__}, not {want}"
    return None if dtype == np.dtype(want) else f"is {dtype}, not {want}"


def _match(compiled, name: str) -> tuple[contract.Entry | None, dict]:
    """The entry whose name pattern `name` matches, and the placeholders' values in it."""
    for entry, pattern in compiled:
        m = pattern.match(name)
        if m:
            return entry, m.groupdict()
    return None, {}


def schema_problems(path: str) -> list[str]:
    """Every way in which the file at `path` departs from the schema of its ``file_kind``, one phrase each
    (empty: it conforms). Raises UserError for a file that is missing or not HDF5."""
    problems: list[str] = []
    bound: dict[str, object] = {}  # shape symbol -> its size (``grid``: the whole shape)

    def check_shape(entry: contract.Entry, name: str, shape: tuple, groups: dict) -> None:
        if entry.shape is None:
            return
        if entry.shape == ("grid",):
            symbols, sizes = ["grid"], [tuple(shape)]
        elif len(entry.shape) != len(shape):
            problems.append(f"{name}: shape {tuple(shape)}, the schema says {entry.shape}")
            return
        else:
            symbols, sizes = list(entry.shape), list(shape)
        for symbol, size in zip(symbols, sizes):
            if isinstance(symbol, int):
                if size != symbol:
                    problems.append(f"{name}: shape {tuple(shape)}, the schema says {entry.shape}")
                continue
            for placeholder, value in groups.items():
                symbol = symbol.replace(f"<{placeholder}>", value)
            if bound.setdefault(symbol, size) != size:
                problems.append(f"{name}: {symbol} = {size}, elsewhere in the file {bound[symbol]}")

    with open_read(path, None, fix="give a file written by landscape-mpi") as f:
        kind = str(_text(f.attrs.get(contract.FILE_KIND_ATTR, contract.KIND_SURFACE)))
        if kind not in contract.SCHEMAS:
            return [f"file_kind {kind!r} has no schema"]
        schema = contract.SCHEMAS[kind]
        values = {"metric": _user_metrics(f)}
        groups_allowed = [re.compile(p) for p in _group_patterns(schema, values)]
        attributes = [(e, e.pattern(values)) for e in schema if e.is_attribute]
        datasets = [(e, e.pattern(values)) for e in schema if not e.is_attribute]

        def check_attrs(obj_name: str, obj) -> None:
            for attr, value in obj.attrs.items():
                name = f"{obj_name}@{attr}"
                entry, groups = _match(attributes, name)
                if entry is None:
                    problems.append(f"{name}: an attribute the schema does not have")
                    continue
                problem = _dtype_problem(entry, value)
                if problem:
                    problems.append(f"{name}: {problem}")
                check_shape(entry, name, np.shape(value), groups)

        def visit(rel: str, obj) -> None:
            name = "/" + rel
            if isinstance(obj, h5py.Group):
                if not any(p.match(name) for p in groups_allowed):
                    problems.append(f"{name}: a group the schema does not have")
            else:
                entry, groups = _match(datasets, name)
                if entry is None:
                    problems.append(f"{name}: a dataset the schema does not have")
                else:
                    problem = _dtype_problem(entry, obj)
                    if problem:
                        problems.append(f"{name}: {problem}")
                    check_shape(entry, name, obj.shape, groups)
            check_attrs(name, obj)

        check_attrs("/", f)
        f.visititems(visit)
        for entry in schema:
            if entry.when == contract.ALWAYS and "<" not in entry.name:
                obj_name, _, attr = entry.name.partition("@")
                there = (obj_name in f and attr in f[obj_name].attrs) if attr else entry.name in f
                if not there:
                    problems.append(f"{entry.name}: written always, missing")
    return problems


def _group_patterns(schema, values: dict) -> list[str]:
    """Regular expressions of every group the schema's entries imply (the parents of their objects)."""
    out = []
    for entry in schema:
        parts = entry.name.partition("@")[0].strip("/").split("/")
        for depth in range(1, len(parts) if not entry.is_attribute else len(parts) + 1):
            out.append(contract.name_regex("/" + "/".join(parts[:depth]), values))
    return out
