"""One synthetic subject: body habitus, thoracic organs, coronary tree, plaques and distractors.

All positions are patient millimetres: x to the patient's left, y anterior → posterior,
z head → feet with z = 0 at the lung apices. Drawn once per subject; both visits render it.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

Blob = tuple[np.ndarray, np.ndarray, np.ndarray, float]  # centre, axes (3×3 rows), semi-axes, HU


@dataclass
class Subject:
    p: dict[str, float]
    heart_axes: np.ndarray  # rows u (long axis, to apex), v (anterior), w (left / superior)
    tubes: list[tuple[str, np.ndarray, np.ndarray]] = field(
        default_factory=list
    )  # name, pts, radii
    coronaries: dict[str, tuple[np.ndarray, np.ndarray]] = field(default_factory=dict)
    lung_vessels: list[tuple[np.ndarray, np.ndarray]] = field(default_factory=list)
    nodules: list[tuple[np.ndarray, float]] = field(default_factory=list)
    plaques: list[Blob] = field(default_factory=list)
    distractors: list[Blob] = field(default_factory=list)
    metal: list[Blob] = field(default_factory=list)  # wires, clips, leads: labelled other calcium
    target_class: int = 0
    plaque_estimate: float = 0.0


def _unit(v) -> np.ndarray:
    v = np.asarray(v, dtype=np.float64)
    return v / np.linalg.norm(v)


def _frame(u) -> np.ndarray:
    """Orthonormal rows (u, a, b) with u given."""
    u = _unit(u)
    helper = np.array([0.0, 0.0, 1.0]) if abs(u[2]) < 0.9 else np.array([1.0, 0.0, 0.0])
    a = _unit(np.cross(u, helper))
    return np.stack([u, a, np.cross(u, a)])


def _random_axes(rng, along=None) -> np.ndarray:
    return _frame(rng.normal(size=3) if along is None else along)


def weight(hu: float) -> int:
    return 4 if hu >= 400 else 3 if hu >= 300 else 2 if hu >= 200 else 1


def _blob_estimate(semi, hu) -> float:
    """Agatston contribution of a fully resolved blob: volume × weight / 3."""
    return float(4.0 / 3.0 * np.pi * np.prod(semi) * weight(hu) / 3.0)


def _arc(path: np.ndarray, rng, skip: float = 4.0) -> tuple[np.ndarray, np.ndarray]:
    """A random point along a polyline (beyond ``skip`` mm) and the local direction."""
    total = _length(path)
    return _along(path, rng.uniform(min(skip, 0.5 * total), total))


def _length(path: np.ndarray) -> float:
    """A polyline's length (mm)."""
    return float(np.linalg.norm(np.diff(path, axis=0), axis=1).sum())


def _along(path: np.ndarray, s: float) -> tuple[np.ndarray, np.ndarray]:
    """The point ``s`` mm along a polyline (clipped to its ends) and the local direction."""
    seg = np.diff(path, axis=0)
    lengths = np.linalg.norm(seg, axis=1)
    s = float(np.clip(s, 0.0, lengths.sum()))
    i = int(np.searchsorted(np.cumsum(lengths), s))
    i = min(i, len(seg) - 1)
    t = (s - lengths[:i].sum()) / lengths[i]
    return path[i] + t * seg[i], _unit(seg[i])


def _surface(p, axes, theta, phi, off) -> np.ndarray:
    """Points on the heart ellipsoid surface (+ ``off`` mm), theta = 0 at the apex."""
    u, v, w = axes
    theta, phi = np.broadcast_arrays(
        np.atleast_1d(np.asarray(theta, float)), np.atleast_1d(np.asarray(phi, float))
    )
    c = np.array([p["hx"], p["hy"], p["hz"]])
    return (
        c
        + ((p["ha"] + off) * np.cos(theta))[:, None] * u
        + ((p["hb"] + off) * np.sin(theta) * np.cos(phi))[:, None] * v
        + ((p["hc"] + off) * np.sin(theta) * np.sin(phi))[:, None] * w
    )


def draw_subject(rng: np.random.Generator, target_class: int) -> Subject:
    """Draw a subject whose coronary plaques aim at Agatston class ``target_class``."""
    U = rng.uniform
    s = U(0.9, 1.1)
    p: dict[str, float] = {}
    # thoracic cavity (inside the ribs) first; fat and muscle add outwards (habitus)
    p["cav_a"] = U(108, 135) * s  # half width
    p["cav_ant"] = U(72, 100) * s  # centre → anterior wall (behind the sternum)
    p["cav_post"] = U(58, 78) * s  # centre → posterior wall (paravertebral gutters)
    p["fat"] = U(6, 28)
    p["mus"] = U(9, 15)
    p["mus_post"] = U(38, 52)
    p["body_exp"] = U(2.2, 3.0)
    p["A"] = p["cav_a"] + p["fat"] + p["mus"]  # body half width
    p["Bant"] = p["cav_ant"] + p["fat"] + p["mus"]
    p["Bpost"] = p["cav_post"] + p["fat"] + p["mus_post"]
    p["lung_h"] = U(245, 290)  # apex → deepest posterior costophrenic recess (left)
    p["dome_h"] = U(34, 48)  # dome top → lateral recess; posterior recesses reach 1.69×
    p["domeL"] = p["lung_h"] - 1.69 * p["dome_h"]
    p["domeR"] = p["domeL"] - U(8, 22)  # the right dome sits higher (liver)
    p["apex_h"] = U(40, 60)  # apex cap: the lungs reach full width this far below the apex
    p["gap"] = U(14, 22)  # half width of the posterior mediastinum between the lungs
    p["gap_ant"] = U(4, 12)  # half width at the anterior junction line
    p["pleura"] = U(3, 5)  # parietal pleura / intercostal margin inside the cavity
    p["lung_exp"] = U(2.2, 2.8)
    # tissue HU of this subject
    p["hu_fat"] = U(-115, -85)
    p["hu_mus"] = U(38, 52)
    p["hu_lung"] = U(-875, -820)
    p["hu_blood"] = U(32, 46)
    p["hu_liver"] = U(48, 65)
    # spine, ribs, sternum
    p["rv"] = U(15, 20)
    p["canal_y"] = p["cav_post"] + 6
    p["vert_y"] = p["canal_y"] - 9 - 3 - p["rv"]
    p["vert_period"] = U(24, 30)
    p["vert_phase"] = U(0, 30)
    p["rib0"] = U(8, 22)
    p["rib_period"] = U(20, 25)
    p["rib_drop"] = U(45, 80)
    p["stern_z0"] = U(30, 45)
    p["stern_z1"] = p["stern_z0"] + U(150, 180)
    # heart (centre, semi-axes, long axis): chambers and myocardium about 400–950 mL before the
    # fit to the chest below (an adult heart's range on CT)
    hs = U(1.0, 1.3)
    p["ha"], p["hb"], p["hc"] = (
        58 * hs * U(0.92, 1.08),
        40 * hs * U(0.9, 1.1),
        42 * hs * U(0.9, 1.1),
    )
    p["hx"] = U(18, 38)
    p["epi"] = U(3, 10)
    u = _unit([0.62 + U(-0.1, 0.1), -0.45 + U(-0.1, 0.1), 0.45 + U(-0.12, 0.12)])
    ant = np.array([0.0, -1.0, 0.0])
    v = _unit(ant - (ant @ u) * u)
    w = np.cross(u, v)
    if w[0] < 0:
        w = -w
    axes = np.stack([u, v, w])
    # the epicardial fat touches the anterior chest wall region and rests on the left dome
    semi = np.array([p["ha"], p["hb"], p["hc"]])
    ext = np.sqrt(((axes * (semi + p["epi"])[:, None]) ** 2).sum(0))
    # a large heart in a shallow chest is scaled to fit in front of the spine (the left atrium
    # reaches the vertebral body; the descending aorta, drawn after the heart, indents it)
    room = p["cav_ant"] + p["vert_y"] - p["rv"] - 2 - p["pleura"]
    if 2 * ext[1] > room:
        semi *= room / (2 * ext[1])
        p["ha"], p["hb"], p["hc"] = (float(v) for v in semi)
        ext = np.sqrt(((axes * (semi + p["epi"])[:, None]) ** 2).sum(0))
    p["hy"] = -p["cav_ant"] + p["pleura"] + U(0, 8) + ext[1]
    p["hz"] = p["domeL"] + U(-6, 8) - ext[2]
    sub = Subject(p=p, heart_axes=axes, target_class=int(target_class))

    # great vessels, airway
    hc = np.array([p["hx"], p["hy"], p["hz"]])
    root = hc - 0.78 * p["ha"] * u + 0.2 * p["hb"] * v
    p["root_x"], p["root_y"], p["root_z"] = root
    arch_z = U(45, 65)
    ra = U(13, 17)
    asc_top = np.array([root[0] - U(5, 12), root[1] - U(0, 8), arch_z + 18])
    desc_top = np.array([p["rv"] * 0.7 + U(4, 10), p["vert_y"] - p["rv"] - 0.5 * ra, arch_z + 18])
    mid = 0.5 * (asc_top + desc_top)
    alpha = np.linspace(0, np.pi, 13)
    arch = (
        mid
        + np.cos(alpha)[:, None] * (asc_top - mid)
        + np.sin(alpha)[:, None] * np.array([0.0, 0.0, -18.0])
    )
    asc = np.linspace(root, asc_top, 5)[:-1]
    desc = np.linspace(desc_top, desc_top + [4, -4, p["lung_h"] + 30 - desc_top[2]], 6)[1:]
    aorta = np.concatenate([asc, arch, desc])
    aorta_r = np.concatenate(
        [np.full(len(asc), ra * 1.05), np.linspace(ra, ra * 0.85, 13), np.full(len(desc), ra * 0.8)]
    )
    pa0 = root + np.array([22.0, -18.0, -4.0])
    bif = np.array([U(0, 10), U(-5, 8), arch_z + U(32, 45)])
    sub.tubes.append(
        (
            "trachea",
            np.array([[0, -5, -40], [0, 5, 40], [0, 12, bif[2] - 8]]),
            np.array([9.0, 9.0, 8.5]),
        )
    )
    car = np.array([0, 12, bif[2] - 8])
    sub.tubes.append(("bronchusL", np.array([car, car + [40, 8, 25]]), np.array([6.5, 5.0])))
    sub.tubes.append(("bronchusR", np.array([car, car + [-36, 6, 18]]), np.array([7.0, 5.5])))
    sub.tubes.append(
        ("svc", np.array([[-30 - U(0, 8), -12, 5], [-28, -8, root[2] + 8]]), np.array([9.0, 10.0]))
    )
    sub.tubes.append(("aorta", aorta, aorta_r))
    # the descending aorta again, painted after the heart where the two meet
    sub.tubes.append(("aorta_desc", aorta[len(asc) + 10 :], aorta_r[len(asc) + 10 :]))
    sub.tubes.append(("pa", np.array([pa0, bif]), np.array([13.0, 12.0])))
    sub.tubes.append(("lpa", np.array([bif, bif + [60, 12, 8]]), np.array([10.0, 7.0])))
    sub.tubes.append(("rpa", np.array([bif, bif + [-62, 8, 12]]), np.array([10.0, 7.0])))

    # coronary arteries on the epicardial surface
    off = 1.5
    tb = np.deg2rad(U(118, 128))  # atrioventricular groove
    t = np.linspace(0, 1, 14)
    bif_pt = _surface(p, axes, tb, np.deg2rad(35), off)[0]
    lm = np.stack([root + 0.4 * (bif_pt - root), bif_pt])
    lm = np.concatenate([root[None] + 0.9 * p["hb"] * 0.25 * w, lm])
    lad = _surface(p, axes, tb - t * (tb - np.deg2rad(12)), np.deg2rad(35 - 15 * t), off)
    lcx = _surface(p, axes, np.full_like(t, tb), np.deg2rad(35 + t * U(100, 140)), off)
    rca0 = _surface(p, axes, tb, np.deg2rad(-15), off)[0]
    rca = np.concatenate(
        [
            [root - 0.25 * p["hb"] * w, rca0],
            _surface(p, axes, np.full_like(t, tb), np.deg2rad(-15 - t * 165), off)[1:],
        ]
    )
    sub.coronaries = {
        "lm": (np.concatenate([lm, lad[:1]]), np.array([2.2, 2.2, 2.1, 2.0])),
        "lad": (lad, np.linspace(1.9, 0.9, len(lad))),
        "lcx": (lcx, np.linspace(1.7, 1.0, len(lcx))),
        "rca": (rca, np.linspace(2.0, 1.2, len(rca))),
    }

    # lung vessel trees and nodules
    for side in (-1, 1):
        hilum = np.array([side * (p["gap"] + 14), U(0, 12), bif[2] + U(10, 25)])
        for d0 in (
            [side * 0.5, 0.1, -1.0],
            [side * 1.0, 0.0, 0.1],
            [side * 0.6, 0.4, 0.9],
            [side * 0.6, -0.6, 0.4],
        ):
            stack = [(hilum, _unit(np.asarray(d0) + rng.normal(0, 0.15, 3)), 5.5, 55.0, 0)]
            while stack:
                a, d, r, length, gen = stack.pop()
                b = a + d * length
                sub.lung_vessels.append((np.stack([a, b]), np.array([r, r * 0.85])))
                if gen < 4:
                    for _ in range(2):
                        nd = _unit(d + rng.normal(0, 0.45, 3))
                        stack.append((b, nd, r * 0.72, length * U(0.55, 0.75), gen + 1))
        for _ in range(rng.integers(0, 4)):
            c = np.array(
                [
                    side * U(p["gap"] + 30, p["cav_a"] - 25),
                    U(-p["cav_ant"] + 30, p["cav_post"] - 25),
                    U(40, p["domeL"] - 30),
                ]
            )
            sub.nodules.append((c, U(2.5, 7.0)))

    distractor_rng = np.random.default_rng(rng.integers(2**63))  # drawn before the plaques
    # coronary plaques aimed at the target class (estimate = volume × weight / 3)
    if target_class > 0:
        goal = (
            np.exp(U(np.log(12), np.log(150)))
            if target_class == 1
            else np.exp(U(np.log(700), np.log(2200)))
        )
        names = ["lm", "lad", "lad", "lcx", "rca", "rca"]
        total, first = 0.0, True
        while total < goal and len(sub.plaques) < 40:
            name = names[rng.integers(len(names))]
            path, radii = sub.coronaries[name]
            centre, direction = _arc(path, rng)
            if target_class == 1:
                semi = (
                    np.array([U(2.0, 4.5), U(1.2, 2.0), U(1.0, 1.8)])
                    if first
                    else np.array([U(0.8, 3.5), U(0.6, 1.6), U(0.5, 1.4)])
                )
                hu = U(400, 1000) if first else U(150, 1100)
            else:
                semi = np.array([U(2.5, 7.0), U(1.4, 2.8), U(1.2, 2.4)])
                hu = U(300, 1100)
            est = _blob_estimate(semi, hu)
            if target_class == 1 and total + est > 1.6 * goal and not first:
                continue
            frame = _frame(direction)
            ang = U(0, 2 * np.pi)
            wall = frame[1] * np.cos(ang) + frame[2] * np.sin(ang)
            sub.plaques.append((centre + wall * float(radii.mean()) * 0.6, frame, semi, float(hu)))
            total += est
            first = False
        sub.plaque_estimate = total

    # distractors, drawn from their own generator so that they are independent of the class:
    # aortic wall, aortic valve / annulus and mitral annulus (beside the coronary ostia), costal
    # cartilage; the burden is heavy-tailed (log-uniform over ~3 decades), and heavy
    # calcification is common in CAC = 0 subjects too
    rng = distractor_rng
    U = rng.uniform
    if rng.random() < 0.85:
        burden = np.exp(U(np.log(30), np.log(30000)))
        share = [0.25, 0.25, 0.25, 0.15, 0.1]  # root, aortic annulus, mitral annulus, arch, ribs
        kinds = rng.choice(5, size=rng.integers(1, 6), replace=False, p=share)
        total = 0.0
        while total < burden and len(sub.distractors) < 250:
            kind = int(kinds[rng.integers(len(kinds))])
            hu = U(250, 1100)
            if kind in (0, 3):  # aortic wall: root and ascending / arch and descending
                part = aorta[: len(asc) + 3] if kind == 0 else aorta[len(asc) + 2 :]
                blobs = _aortic_plaque(part, ra * 0.92, rng)
                for centre, frame, semi in blobs[:-1]:
                    sub.distractors.append((centre, frame, semi, float(hu)))
                    total += _blob_estimate(semi, hu)
                centre, frame, semi = blobs[-1]
            elif kind in (1, 2):  # aortic valve annulus / mitral annulus
                if kind == 1:
                    ring_c, normal, rad = root, _unit(asc_top - root), 12.0
                else:
                    ring_c = hc - 0.55 * p["ha"] * u + 0.45 * p["hc"] * w + 0.15 * p["hb"] * v
                    normal, rad = u, 15.0
                fr = _frame(normal)
                ang = U(0, 2 * np.pi)
                radial = fr[1] * np.cos(ang) + fr[2] * np.sin(ang)
                centre = ring_c + radial * rad
                tangent = _unit(np.cross(normal, radial))
                frame = np.stack([tangent, normal, _unit(radial)])
                semi = np.array([U(2, 8), U(1.2, 3.0), U(1.0, 2.5)])
            else:  # costal cartilage near the sternum
                sign = rng.choice([-1.0, 1.0])
                psi = U(0.8, 0.93) * np.pi
                i = rng.integers(1, 7)
                z = p["rib0"] + i * p["rib_period"] + p["rib_drop"] * (psi / np.pi) ** 1.5
                ex, ey, e = p["cav_a"] + 6, p["cav_ant"] + 6, p["body_exp"]
                dx, dy = np.sin(psi), np.cos(psi)
                t = 1.0 / ((abs(dx) / ex) ** e + (abs(dy) / ey) ** e) ** (1.0 / e)
                centre = np.array([sign * dx * t, dy * t, z])
                frame = _random_axes(rng)
                semi = np.array([U(1.5, 4.5), U(1.0, 2.5), U(1.0, 2.0)])
            sub.distractors.append((centre, frame, semi, float(hu)))
            total += _blob_estimate(semi, hu)
    # calcified lymph nodes (old granulomatous disease), from a generator of their own drawn
    # last, so that the draws above are those of cohorts written before they existed
    _lymph_nodes(sub, np.random.default_rng(rng.integers(2**63)), car, bif, arch_z)
    # bone density and metal, from a generator of their own for the same reason
    _bone_and_metal(sub, np.random.default_rng(rng.integers(2**63)))
    return sub


#: share of aortic-wall plaques that are confluent sheets (see :func:`_aortic_plaque`)
AORTIC_SHEET_SHARE = 0.3


def _aortic_plaque(
    path: np.ndarray, radius: float, rng: np.random.Generator
) -> list[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """One calcified plaque in the aortic wall, as (centre, frame, semi-axes) blobs: a thin
    plaque elongated along the vessel, or (share :data:`AORTIC_SHEET_SHARE`) a confluent sheet
    of such blobs round part of the circumference (up to about a third) and up to a few
    centimetres along the vessel, following its curve: the crescents of an atherosclerotic
    arch, from a fraction of a millilitre to several."""
    U = rng.uniform
    s0, ang0 = U(0, _length(path)), U(0, 2 * np.pi)
    semi0 = np.array([U(1.5, 6), U(1.0, 2.5), U(0.6, 1.2)])
    n_ang, n_ax = 1, 1
    if rng.random() < AORTIC_SHEET_SHARE:
        n_ang, n_ax = int(rng.integers(2, 13)), int(rng.integers(1, 5))
        semi0[2] = U(0.8, 2.0)
    blobs = []
    for j in range(n_ax):
        point, direction = _along(path, s0 + (j - (n_ax - 1) / 2) * 1.5 * semi0[0])
        f = _frame(direction)
        for i in range(n_ang):
            ang = ang0 + (i - (n_ang - 1) / 2) * 1.5 * semi0[1] / radius
            out = f[1] * np.cos(ang) + f[2] * np.sin(ang)
            frame = np.stack([f[0], _unit(f[1] * -np.sin(ang) + f[2] * np.cos(ang)), _unit(out)])
            semi = semi0 * (U(0.8, 1.2, size=3) if n_ang * n_ax > 1 else 1.0)
            blobs.append((point + out * radius, frame, semi))
    return blobs


#: share of subjects with calcified mediastinal or hilar lymph nodes, whatever their CAC
LYMPH_NODE_SHARE = 0.3


def _lymph_nodes(sub: Subject, rng: np.random.Generator, carina, bifurcation, arch_z) -> None:
    """1–4 calcified nodes at the usual stations — subcarinal, hilar, right paratracheal,
    aortopulmonary window — outside the heart, as dense as plaques or denser: a hard negative
    (a calcified hilar node is a common finding on a CAC-free chest CT)."""
    if rng.random() >= LYMPH_NODE_SHARE:
        return
    U = rng.uniform
    p = sub.p
    for _ in range(rng.integers(1, 5)):
        station = rng.integers(4)
        if station == 0:  # subcarinal, between the main bronchi
            centre = carina + np.array([U(-6, 6), U(4, 12), U(10, 22)])
        elif station == 1:  # hilar, beside a main bronchus
            side = rng.choice([-1.0, 1.0])
            centre = np.array([side * (p["gap"] + U(6, 18)), U(-4, 12), bifurcation[2] + U(5, 30)])
        elif station == 2:  # right paratracheal, above the carina
            centre = np.array([-U(12, 20), U(-8, 4), U(arch_z - 10, carina[2] - 10)])
        else:  # aortopulmonary window, under the arch
            centre = np.array([U(4, 16), U(-10, 2), arch_z + U(20, 32)])
        radius = np.exp(U(np.log(2.0), np.log(7.0)))
        semi = radius * np.array([1.0, U(0.6, 1.0), U(0.5, 0.9)])
        # mostly dense and solid; some partly calcified (speckled, lower peak)
        hu = U(500, 1600) if rng.random() < 0.7 else U(200, 500)
        sub.distractors.append((centre, _random_axes(rng), semi, float(hu)))


#: share of subjects with sternal wires (after a sternotomy), surgical clips in the mediastinum
#: or on the heart, and a pacemaker or defibrillator lead, each drawn on its own and whatever
#: the subject's CAC: metal is a hard negative, never coronary calcium
METAL_SHARE = {"wires": 0.1, "clips": 0.1, "lead": 0.06}
#: attenuation of metal before the scanner's 3071 HU ceiling (steel and platinum lie far above
#: it; partial volume of a 1 mm wire on a coarse voxel still saturates)
METAL_HU = 12000.0


def _bone_and_metal(sub: Subject, rng: np.random.Generator) -> None:
    """Cortical bone density (the cortex of real ribs, sternum and vertebrae measures about
    900–1600 HU at diagnostic resolution) and, in some subjects, metal with its streaks."""
    U = rng.uniform
    p = sub.p
    p["hu_cortex"] = U(900, 1600)
    if rng.random() < METAL_SHARE["wires"]:  # sternal wires: loops around the sternum
        z0, z1 = p["stern_z0"] + 12, p["stern_z0"] + U(90, 130)
        cy = -p["cav_ant"] - 7
        for z in np.linspace(z0, z1, rng.integers(4, 8)):
            z = z + U(-3, 3)
            loop = np.linspace(0, 2 * np.pi, 17)
            pts = np.stack(
                [U(18, 22) * np.cos(loop), cy + U(8, 11) * np.sin(loop), np.full(17, z)], axis=1
            )
            sub.metal.extend(_wire(pts, radius=0.5, overlap=0.3))
            knot = np.array([U(-4, 4), cy - U(9, 12), z])
            sub.metal.append((knot, _random_axes(rng), np.array([2.0, 1.2, 1.0]), METAL_HU))
    if rng.random() < METAL_SHARE["clips"]:  # clips: on the heart's surface or the mediastinum
        for _ in range(rng.integers(2, 11)):
            if rng.random() < 0.6:
                centre = _surface(p, sub.heart_axes, U(0.2, 2.4), U(-np.pi, np.pi), 3.0)[0]
            else:
                centre = np.array([U(-25, 25), U(-30, 10), U(30, p["domeL"] * 0.55)])
            semi = np.array([U(2.5, 4.0), U(0.4, 0.7), U(0.6, 1.0)])
            sub.metal.append((centre, _random_axes(rng), semi, METAL_HU))
    if rng.random() < METAL_SHARE["lead"]:  # a lead: superior vena cava → right atrium → apex
        svc = next(pts for name, pts, _ in sub.tubes if name == "svc")
        centre = np.array([p["hx"], p["hy"], p["hz"]])
        apex = _surface(p, sub.heart_axes, 0.15, U(-1, 1), -4.0)[0]
        ra = centre - 0.35 * p["ha"] * sub.heart_axes[0] - 0.5 * p["hc"] * sub.heart_axes[2]
        path = np.concatenate([svc, [ra, 0.5 * (ra + apex), apex]])
        t = np.linspace(0, 1, 6)[:-1, None]  # each leg in five pieces
        fine = [a + t * (b - a) for a, b in zip(path[:-1], path[1:], strict=True)]
        sub.metal.extend(_wire(np.concatenate([*fine, path[-1:]]), radius=0.9, overlap=0.5))


def _wire(points: np.ndarray, radius: float, overlap: float) -> list[Blob]:
    """Metal along a polyline: one elongated blob per segment, each ``overlap`` mm longer at
    both ends so that the pieces join."""
    blobs = []
    for a, b in zip(points[:-1], points[1:], strict=True):
        seg = b - a
        semi = np.array([0.5 * np.linalg.norm(seg) + overlap, radius, radius])
        blobs.append((0.5 * (a + b), _frame(seg), semi, METAL_HU))
    return blobs
