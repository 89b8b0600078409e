"""Exports for other tools: ParaView (.vtp for a 2D surface, .vti for a 3D grid) and a standalone
interactive HTML surface (plotly, its JavaScript embedded so the file opens offline)."""

from __future__ import annotations

import base64

import numpy as np

from plotting.reader import PlotError, Surface


def _array(values, dtype: str, name: str = "", components: int = 1) -> str:
    """A VTK XML DataArray in the "binary" encoding: base64 of a UInt32 byte count then the raw
    little-endian values (NaN survives, unlike the ascii encoding, which VTK cannot parse for NaN)."""
    vtk_type, np_type = {"f8": ("Float64", "<f8"), "i8": ("Int64", "<i8")}[dtype]
    raw = np.ascontiguousarray(np.ravel(values), dtype=np_type).tobytes()
    payload = base64.b64encode(np.array([len(raw)], dtype="<u4").tobytes() + raw).decode()
    attrs = f' Name="{name}"' if name else ""
    if components > 1:
        attrs += f' NumberOfComponents="{components}"'
    return f'<DataArray type="{vtk_type}"{attrs} format="binary">{payload}</DataArray>'


def surface_height(surface: Surface, metric: str, log: bool = False, zmax: float | None = None,
                   upsample: int = 1) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(x, y, value, z) on the (optionally upsampled) grid: value is the metric, z the height drawn
    (log10 of it with `log`, clipped at `zmax`). Upsampling is cubic where the grid is complete and
    linear otherwise (missing points stay missing), with scipy's RegularGridInterpolator."""
    if surface.ndim != 2:
        raise PlotError(f"{surface.path} is a {surface.ndim}D grid; a .vtp/.html surface needs a 2D grid (use .vti)")
    x, y = surface.coords["x"], surface.coords["y"]
    v = surface.metric(metric)
    if upsample > 1:
        from scipy.interpolate import RegularGridInterpolator

        complete = np.isfinite(v).all() and len(x) >= 4 and len(y) >= 4
        interp = RegularGridInterpolator((x, y), v, method="cubic" if complete else "linear")
        x = np.linspace(x[0], x[-1], (len(x) - 1) * upsample + 1)
        y = np.linspace(y[0], y[-1], (len(y) - 1) * upsample + 1)
        X, Y = np.meshgrid(x, y, indexing="ij")
        v = interp(np.stack([X.ravel(), Y.ravel()], axis=1)).reshape(X.shape)
    z = v.astype(float).copy()
    if log:
        with np.errstate(divide="ignore", invalid="ignore"):
            z = np.where(z > 0, np.log10(z), np.nan)
    if zmax is not None:
        z = np.where(np.isfinite(z), np.minimum(z, zmax), z)
    return x, y, v, z


def write_vtp(surface: Surface, metric: str, path: str, log: bool = False, zmax: float | None = None,
              upsample: int = 1) -> str:
    """A PolyData file: one point per finite grid point at (x, y, z), a quad per grid cell whose four
    corners are finite, and the metric (unclipped) as point data."""
    x, y, v, z = surface_height(surface, metric, log, zmax, upsample)
    nx, ny = z.shape
    ids = -np.ones((nx, ny), dtype=np.int64)
    finite = np.isfinite(z)
    ids[finite] = np.arange(int(finite.sum()))
    X, Y = np.meshgrid(x, y, indexing="ij")
    points = np.stack([X[finite], Y[finite], z[finite]], axis=1)
    quads = []
    for i in range(nx - 1):
        for j in range(ny - 1):
            corner = (ids[i, j], ids[i + 1, j], ids[i + 1, j + 1], ids[i, j + 1])
            if min(corner) >= 0:
                quads.append(corner)
    connectivity = np.array(quads, dtype=np.int64).ravel()
    offsets = 4 * np.arange(1, len(quads) + 1)
    with open(path, "w") as f:
        f.write('<?xml version="1.0"?>\n'
                '<VTKFile type="PolyData" version="0.1" byte_order="LittleEndian" header_type="UInt32">\n'
                '<PolyData>\n'
                f'<Piece NumberOfPoints="{len(points)}" NumberOfVerts="0" NumberOfLines="0" NumberOfStrips="0" '
                f'NumberOfPolys="{len(quads)}">\n'
                f'<PointData Scalars="{metric}">\n'
                f'{_array(v[finite], "f8", metric)}\n{_array(z[finite], "f8", "height")}\n'
                '</PointData>\n<Points>\n'
                f'{_array(points, "f8", components=3)}\n'
                '</Points>\n<Polys>\n'
                f'{_array(connectivity, "i8", "connectivity")}\n{_array(offsets, "i8", "offsets")}\n'
                '</Polys>\n</Piece>\n</PolyData>\n</VTKFile>\n')
    return path


def write_vti(surface: Surface, path: str, metrics: list[str] | None = None) -> str:
    """An ImageData file of the whole grid (3D, or 2D/1D as a flat image): uniform spacing from the
    coordinates, every metric as point data, NaN where a point is not computed yet."""
    axes = [surface.coords[a] for a in ("x", "y", "z") if a in surface.coords]
    shape = [len(a) for a in axes] + [1] * (3 - len(axes))
    origin = [float(a[0]) for a in axes] + [0.0] * (3 - len(axes))
    spacing = [float(a[1] - a[0]) if len(a) > 1 else 1.0 for a in axes] + [1.0] * (3 - len(axes))
    metrics = metrics or [m for m in surface.values if m != "eig_ratio"]
    extent = " ".join(f"0 {n - 1}" for n in shape)
    arrays = []
    for m in metrics:
        v = surface.metric(m).reshape(shape)
        # VTK orders image points with x fastest; the file's arrays are C-ordered [i, j, k] (k fastest).
        arrays.append(_array(v.transpose(2, 1, 0), "f8", m))
    with open(path, "w") as f:
        f.write('<?xml version="1.0"?>\n'
                '<VTKFile type="ImageData" version="0.1" byte_order="LittleEndian" header_type="UInt32">\n'
                f'<ImageData WholeExtent="{extent}" Origin="{" ".join(map(repr, origin))}" '
                f'Spacing="{" ".join(map(repr, spacing))}">\n'
                f'<Piece Extent="{extent}">\n<PointData Scalars="{metrics[0]}">\n' + "\n".join(arrays) +
                '\n</PointData>\n<CellData/>\n</Piece>\n</ImageData>\n</VTKFile>\n')
    return path


def write_html(surface: Surface, metric: str, path: str, log: bool = False, zmax: float | None = None) -> str:
    """A standalone interactive 3D surface: plotly.js is embedded (no script from the network)."""
    import plotly.graph_objects as go

    x, y, v, z = surface_height(surface, metric, log, zmax)
    # plotly's surface takes z[row][col] with rows along y: the transpose of the file's [i, j] = (x[i], y[j]).
    zt = [[float(c) if np.isfinite(c) else None for c in row] for row in z.T]
    fig = go.Figure(go.Surface(x=[float(a) for a in x], y=[float(b) for b in y], z=zt, colorscale="Viridis",
                               colorbar={"title": f"log10 {metric}" if log else metric}))
    title = f"{surface.label()}: {metric}" + ("" if surface.complete else f" ({surface.progress()})")
    fig.update_layout(title=title, scene={"xaxis_title": "x", "yaxis_title": "y",
                                          "zaxis_title": f"log10 {metric}" if log else metric})
    fig.write_html(path, include_plotlyjs=True, full_html=True, include_mathjax=False,
                   config={"displaylogo": False})
    return path
