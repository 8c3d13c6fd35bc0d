"""Render one acquisition of a :class:`Subject`: HU volume (int16) and label map (uint8).

Extruded structures (body wall, lungs, spine, ribs, sternum, table) are drawn slice by slice
from 2-D maps computed once per acquisition (the patient only rolls about z); compact organs,
vessels, coronaries and calcifications are drawn on cropped 3-D boxes. Calcium blobs use exact
supersampled partial volume, so the peak HU on a coarse grid is what a scanner would show.
"""

from __future__ import annotations

import numpy as np

from aidnet.phantom.anatomy import Subject
from aidnet.phantom.shapes import Grid, paint_blob, paint_ellipsoid, paint_tube, ramp

LABEL_CORONARY, LABEL_OTHER_CALCIUM, LABEL_LUNG = 1, 2, 3
AIR = -1000.0


def _snorm(x, y, a, b_ant, b_post, e):
    v = y / np.where(y < 0, b_ant, b_post)
    return ((np.abs(x) / a) ** e + np.abs(v) ** e) ** (1.0 / e)


def _paint(buf, cov, hu):
    buf += cov * (hu - buf)


def _slices(sub: Subject, grid: Grid, table: bool, rng: np.random.Generator):
    """Body wall, lungs, skeleton and table, slice by slice. Returns (float32 HU, uint8 labels)."""
    p = sub.p
    nz, ny, nx = grid.shape
    w = grid.width
    xs, ys = grid.scanner_xy()
    X, Y = grid.to_patient_xy(xs[None, :], ys[:, None])
    e = p["body_exp"]
    rb = _snorm(X, Y, p["A"], p["Bant"], p["Bpost"], e)
    inside = np.nonzero(rb < 1.02)
    if inside[0].size == 0:
        raise ValueError("the body lies outside the field of view")
    jb = slice(max(inside[0].min() - 2, 0), min(inside[0].max() + 3, ny))
    ib = slice(max(inside[1].min() - 2, 0), min(inside[1].max() + 3, nx))
    X, Y, rb = X[jb, ib], Y[jb, ib], rb[jb, ib]
    f = p["fat"]
    rm = _snorm(X, Y, p["A"] - f, p["Bant"] - f, p["Bpost"] - f, e)
    rc = _snorm(X, Y, p["cav_a"], p["cav_ant"], p["cav_post"], e)
    l_body, l_mus, l_cav = p["Bant"], p["Bant"] - f, p["cav_ant"]
    abdomen = np.where(X < 10, p["hu_liver"], p["hu_mus"] - 8).astype(np.float32)
    # lungs: each fills its hemithorax (inside the cavity less a pleural margin, lateral to the
    # mediastinum, beside the spine down to the paravertebral gutter); the heart, great vessels
    # and airways painted later displace them. Apices taper; the bases are diaphragm domes whose
    # floor deepens towards the periphery, most posteriorly (costophrenic recesses).
    gap_a, gap_p, pl = p["gap_ant"], p["gap"], p["lung_exp"]
    margin = p["pleura"]
    rc_in = _snorm(X, Y, p["cav_a"] - margin, p["cav_ant"] - margin, p["cav_post"] - margin, e)
    t_y = np.clip((Y + p["cav_ant"]) / (p["cav_ant"] + p["vert_y"]), 0.0, 1.0)
    half_med = gap_a + (gap_p - gap_a) * t_y * t_y * (3 - 2 * t_y)  # anterior junction → posterior
    d_spine = np.hypot(X, Y - p["vert_y"]) - (p["rv"] + 6.0)
    la = (p["cav_a"] - gap_p) / 2 + 12
    lb = (p["cav_post"] + p["cav_ant"]) / 2 + 12
    cy = (p["cav_post"] - p["cav_ant"]) / 2
    lungs = []
    for side, dome in ((-1, p["domeR"]), (1, p["domeL"])):
        cx = side * (p["cav_a"] + gap_p) / 2
        norm = ((np.abs(X - cx) / la) ** pl + (np.abs(Y - cy) / lb) ** pl) ** (1.0 / pl)
        flat = np.minimum(np.minimum(side * X - half_med, d_spine), 40.0).astype(np.float32)
        # diaphragm: in-plane radius about a dome centre anterior-medial in the hemithorax
        q = np.hypot((X - cx + side * 0.1 * la) / (la - 12), (Y - cy + 0.3 * lb) / (lb - 12))
        lungs.append((norm.astype(np.float32), flat, np.minimum(q, 1.3).astype(np.float32), dome))
    lung_hu = (p["hu_lung"] + 40.0 * (Y - cy) / lb).astype(np.float32)
    # ribs on a band around the rib ellipse
    rr = _snorm(X, Y, p["cav_a"] + 6, p["cav_ant"] + 6, p["cav_post"] + 6, e)
    psi = np.arctan2(np.abs(X), Y) / np.pi
    band = np.nonzero((np.abs(rr - 0.95) < 0.12) & (psi > 0.1))
    rr_b, psi_b = rr[band], psi[band]
    rib_end = np.array([0.93] * 7 + [0.85] * 3 + [0.5] * 2)
    rib_cart = np.array([0.8] * 7 + [0.7] * 3 + [1.0] * 2)
    drop_b = p["rib_drop"] * psi_b**1.5
    # spine and sternum (fixed in-plane maps)
    dv = p["rv"] - np.hypot(X, Y - p["vert_y"])
    dcanal = 8.5 - np.hypot(X, Y - p["canal_y"])
    dring = 15.0 - np.hypot(X, Y - p["canal_y"])
    dspin = 1.0 - np.hypot(X / 4.5, (Y - p["canal_y"] - 30) / 16)
    cov_v, cov_canal = ramp(dv, w), ramp(dcanal, w)
    # the arch: a ring round the canal reaching forward into the body's back (the pedicles, so
    # body and arch are one bone, as in a real spine) and the spinous process
    cov_arch = np.maximum(ramp(dring, w) * (p["canal_y"] - 14 < Y), ramp(dspin * 4.5, w))
    cortex = float(p.get("hu_cortex", 650.0))
    vert_val = np.where(dv < 1.2, cortex, 230.0).astype(np.float32)
    dst = 1.0 - np.hypot(X / 16.0, (Y + p["cav_ant"] + 7) / 7.0)
    cov_st = ramp(dst * 7, w)
    st_val = np.where(dst * 7 < 1.0, 0.92 * cortex, 260.0).astype(np.float32)
    # table, in scanner coordinates under the patient's back
    table_rows = None
    if table:
        back = ys[jb][np.nonzero((rb < 1.0).any(axis=1))[0].max()]
        top = back + rng.uniform(0.5, 3.0) - 18.0 * (xs[None, ib] / 230.0) ** 2
        yy = ys[jb, None] - top
        shell = ((yy >= 0) & (yy < 4)) | ((yy >= 30) & (yy < 34))
        core = (yy >= 4) & (yy < 30)
        within = np.abs(xs[None, ib]) < 230
        table_val = np.where(shell, 250.0, np.where(core, -880.0, AIR)).astype(np.float32)
        table_rows = (shell | core) & within

    vol = np.full(grid.shape, AIR, dtype=np.float32)
    lab = np.zeros(grid.shape, dtype=np.uint8)
    buf = np.empty(X.shape, dtype=np.float32)
    for k, z in enumerate(grid.slice_z()):
        buf.fill(AIR)
        if table_rows is not None:
            buf[table_rows] = table_val[table_rows]
        sc = 1.0 - 0.12 * np.clip((40.0 - z) / 80.0, 0.0, 1.0)
        _paint(buf, ramp((1 - rb / sc) * l_body, w), p["hu_fat"])
        _paint(buf, ramp((1 - rm / sc) * l_mus, w), p["hu_mus"])
        cav_val: float | np.ndarray = p["hu_fat"] + 20 if z < p["domeR"] else abdomen
        _paint(buf, ramp((1 - rc / sc) * l_cav, w), cav_val)
        g = np.sqrt(np.clip(z / p["apex_h"], 0.0, 1.0))
        lung_cov = np.zeros_like(buf)
        if g > 0.05:
            inner = (1 - rc_in / sc) * (l_cav - margin)  # ≈ mm inside the pleural margin
            for rl, flat, q, dome in lungs:
                depth = np.minimum(np.minimum(flat, inner), (1 - rl / g) * min(la, lb) * g)
                if z > dome:  # below the dome top: only where the floor is lower than z
                    qz = np.sqrt((z - dome) / p["dome_h"])
                    depth = np.minimum(depth, (q - qz) * (la - 12))
                np.maximum(lung_cov, ramp(depth, w), out=lung_cov)
            _paint(buf, lung_cov, lung_hu)
        # spine: vertebral bodies and discs, posterior arch, canal
        phase = (z - p["vert_phase"]) % p["vert_period"]
        _paint(buf, cov_v, 85.0 if phase < 6 else vert_val)
        if 8 < phase < p["vert_period"] - 2:
            _paint(buf, cov_arch, 0.65 * cortex)
        _paint(buf, cov_canal, 15.0)
        if p["stern_z0"] < z < p["stern_z1"]:
            _paint(buf, cov_st, st_val)
        # ribs (bone posterior/lateral, cartilage anterior)
        q = (z - p["rib0"] - drop_b) / p["rib_period"]
        i = np.rint(q)
        ok = (i >= 0) & (i <= 11)
        ii = np.clip(i, 0, 11).astype(int)
        ok &= psi_b < rib_end[ii]
        dz = (q - i) * p["rib_period"]
        dr = (rr_b / sc - 0.95) * (p["cav_ant"] + 6)
        edge = np.maximum(np.abs(dz) / 5.5, np.abs(dr) / 4.5)
        cov = ramp((1 - edge) * 4.5, w) * ok
        val = np.where(psi_b > rib_cart[ii], 115.0, np.where(edge < 0.8, 260.0, cortex))
        sub_buf = buf[band]
        sub_buf += cov * (val - sub_buf)
        buf[band] = sub_buf
        vol[k, jb, ib] = buf
        lab[k, jb, ib][lung_cov >= 0.5] = LABEL_LUNG
    return vol, lab


def _organs(sub: Subject, grid: Grid, vol: np.ndarray, lab: np.ndarray) -> None:
    p = sub.p
    clear = {"clear_label": LABEL_LUNG}

    def vessel(pts, radii) -> None:  # blood in a sheath of fat
        paint_tube(vol, lab, grid, pts, radii + 3.0, p["hu_fat"], **clear)
        paint_tube(vol, lab, grid, pts, radii, p["hu_blood"], **clear)

    for name, pts, radii in sub.tubes:
        if name == "aorta_desc":
            continue
        if name in ("trachea", "bronchusL", "bronchusR"):
            paint_tube(vol, lab, grid, pts, radii + 2.0, p["hu_mus"], **clear)
            paint_tube(vol, lab, grid, pts, radii, -990.0, **clear)
        else:
            vessel(pts, radii)
    centre = np.array([p["hx"], p["hy"], p["hz"]])
    semi = np.array([p["ha"], p["hb"], p["hc"]])
    paint_ellipsoid(vol, lab, grid, centre, sub.heart_axes, semi + p["epi"], p["hu_fat"], **clear)
    paint_ellipsoid(vol, lab, grid, centre, sub.heart_axes, semi, p["hu_blood"] + 4, **clear)
    for name, pts, radii in sub.tubes:
        if name == "aorta_desc":  # after the heart, which it indents
            vessel(pts, radii)
    for pts, radii in sub.coronaries.values():
        paint_tube(vol, lab, grid, pts, radii, p["hu_blood"])
    for pts, radii in sub.lung_vessels:
        paint_tube(vol, lab, grid, pts, radii, p["hu_blood"] - 5, only_label=LABEL_LUNG)
    for c, r in sub.nodules:
        paint_ellipsoid(vol, lab, grid, c, np.eye(3), [r, r, r], 30.0, only_label=LABEL_LUNG)
    for c, axes, semi_b, hu in sub.distractors:
        paint_blob(vol, lab, grid, c, axes, semi_b, hu, LABEL_OTHER_CALCIUM)
    for c, axes, semi_b, hu in sub.plaques:
        paint_blob(vol, lab, grid, c, axes, semi_b, hu, LABEL_CORONARY)
    for c, axes, semi_b, hu in sub.metal:
        paint_blob(vol, lab, grid, c, axes, semi_b, hu, LABEL_OTHER_CALCIUM)


#: Only metal reaches this value before noise (bone, plaques and distractors stay below 1700 HU).
METAL_FLOOR_HU = 2500.0


def _metal_streaks(vol: np.ndarray, grid: Grid, rng: np.random.Generator) -> None:
    """Streaks beside metal, slice by slice: bright and dark lines through the metal that fade
    with distance (beam hardening and photon starvation), stronger for more metal."""
    hot = np.flatnonzero(vol.max(axis=(1, 2)) >= METAL_FLOOR_HU)
    if hot.size == 0:
        return
    sy, sx = float(grid.spacing[1]), float(grid.spacing[2])
    ny, nx = vol.shape[1:]
    yy = (np.arange(ny, dtype=np.float32) * sy)[:, None]
    xx = (np.arange(nx, dtype=np.float32) * sx)[None, :]
    for k in hot:
        j, i = np.nonzero(vol[k] >= METAL_FLOOR_HU)
        area = j.size * sx * sy
        cy, cx = float(j.mean()) * sy, float(i.mean()) * sx
        dy, dx = yy - cy, xx - cx
        r = np.sqrt(dy * dy + dx * dx)
        fade = 1.0 / (1.0 + r / 30.0)
        strength = min(1.0, np.sqrt(area / 6.0))
        for theta in rng.uniform(0, np.pi, size=int(rng.integers(6, 15))):
            off = np.abs(dx * np.sin(theta) - dy * np.cos(theta))
            width = rng.uniform(0.6, 1.6)
            amp = strength * rng.uniform(40, 220) * rng.choice([-1.0, 1.0])
            vol[k] += (amp * np.exp(-((off / width) ** 2)) * fade).astype(np.float32)


#: Reconstruction kernels: in-plane blur of the image (mm, Gaussian sigma), edge overshoot of
#: sharp kernels, and how the noise is shaped (sigma in pixels of a Gaussian that correlates it;
#: negative: the noise is high-passed, as sharp lung kernels leave it).
KERNELS = {
    "soft": (0.7, 0.0, 1.0),
    "standard": (0.45, 0.0, 0.6),
    "sharp": (0.3, 0.6, -1.0),
}


def _shaped_noise(white: np.ndarray, shape_px: float) -> np.ndarray:
    """White noise → noise with a kernel's texture, rescaled to unit standard deviation."""
    from scipy.ndimage import gaussian_filter

    if shape_px > 0:
        out = gaussian_filter(white, shape_px, mode="wrap")
    elif shape_px < 0:
        out = white - 0.8 * gaussian_filter(white, -shape_px, mode="wrap")
    else:
        return white
    out *= np.float32(1.0 / max(float(out.std()), 1e-6))
    return out


def render_visit(
    sub: Subject,
    grid: Grid,
    *,
    noise_hu: float,
    table: bool,
    rng: np.random.Generator,
    kernel: str = "standard",
) -> tuple[np.ndarray, np.ndarray]:
    """Noisy int16 HU array and uint8 label map of one acquisition.

    ``kernel`` (one of :data:`KERNELS`) blurs each slice in-plane by the kernel's point spread,
    adds a sharp kernel's edge overshoot, and gives the noise the kernel's texture (correlated
    for soft kernels, high-passed for sharp ones) at the standard deviation ``noise_hu``.
    """
    from scipy.ndimage import gaussian_filter

    psf_mm, overshoot, shape_px = KERNELS[kernel]
    sigma_px = psf_mm / float(grid.spacing[1])
    vol, lab = _slices(sub, grid, table, rng)
    _organs(sub, grid, vol, lab)
    if sub.metal:
        _metal_streaks(vol, grid, rng)
    out = np.empty(grid.shape, dtype=np.int16)
    white = np.empty(grid.shape[1:], dtype=np.float32)
    for k in range(grid.shape[0]):
        image = gaussian_filter(vol[k], sigma_px) if sigma_px > 0.05 else vol[k]
        if overshoot > 0:
            image = image + overshoot * (image - gaussian_filter(image, 1.0))
        rng.standard_normal(out=white, dtype=np.float32)
        noise = _shaped_noise(white, shape_px)
        noise *= noise_hu
        noise += image
        np.rint(noise, out=noise)
        np.clip(noise, -1024, 3071, out=noise)
        out[k] = noise
    return out, lab
