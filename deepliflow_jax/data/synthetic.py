"""A procedural street-scene world with exact scene-flow ground truth, in KITTI's layout.

Each scene is a road (textured ground plane with lane markings and sidewalks), building
facades, parked cars and poles at KITTI-like depths, plus independently moving cars and
pedestrians; the camera moves forward with a little yaw and pitch. Both frames are
ray-cast with KITTI's calibration (scaled to the requested size), so for every pixel
of frame t the 3D point, its rigid motion and its projection into frame t+1 are known
exactly: optical flow, disparity at t (d0) and of the same point at t+1 (d1).

Ground-truth validity imitates KITTI's LiDAR-based ground truth: a pixel is valid when it
sees a surface (not the sky) closer than ``MAX_DEPTH`` and not above the LiDAR's upper
field-of-view limit (+2 degrees), and the point stays in front of the camera at t+1;
the flow, d0 and d1 maps share that mask (as in KITTI 2015) and it includes pixels
occluded at t+1 (KITTI's ``occ`` maps). ``flow_noc`` additionally holds the flow only
where the point is visible in frame t+1. ``disp_occ_1_transformedOnSecFrame`` is the
disparity map of frame t+1 in its own view under the same rule: the source of the second
frame's simulated LiDAR, sampled by the pipeline like the original samples KITTI's.

Scenes depend only on (seed, scene index). Textures are seeded value noise sampled
through a mip pyramid chosen from each pixel's footprint, so a surface point has almost
the same colour in both frames (brightness constancy) and distant texture does not alias.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import time
from pathlib import Path

import numpy as np

from deepliflow_jax.data import kitti
from deepliflow_jax.data.io import PathLike, write_png
from deepliflow_jax.fileio import claim_dir, write_json_atomic, write_text_atomic

# KITTI 2015 left colour camera (P2) at 375x1242 and the stereo baseline.
KITTI_SIZE = (375, 1242)
KITTI_FOCAL = 721.5377
KITTI_CX, KITTI_CY = 609.5593, 172.854
KITTI_BASELINE = 0.54
CAMERA_HEIGHT = 1.65
MAX_DEPTH = 80.0
MIN_DEPTH_T1 = 1.0
MAX_FLOW = 511.0
MAX_DISP = 255.0
LIDAR_UP_FOV = np.deg2rad(2.0)
LIDAR_ABOVE_CAMERA = 0.08
TEXTURE_SIZE = 256
GENERATOR_VERSION = 1
META_FILE = "synthetic.json"  # settings; also what marks a folder as a synthetic data set

# Surface ids: 0 sky, 1 ground, then 6 faces per box (2 + 6 * box + face).
SKY, GROUND = 0, 1
KIND_BUILDING, KIND_CAR, KIND_POLE, KIND_PEDESTRIAN = 0, 1, 2, 3


@dataclasses.dataclass(frozen=True)
class Camera:
    """Pinhole camera of a rectified stereo rig (disparity = fx * baseline / depth)."""

    height: int
    width: int
    fx: float
    fy: float
    cx: float
    cy: float
    baseline: float = KITTI_BASELINE

    @property
    def fb(self) -> float:
        """fx * baseline: disparity times depth."""
        return self.fx * self.baseline


def kitti_camera(height: int = KITTI_SIZE[0], width: int = KITTI_SIZE[1]) -> Camera:
    """KITTI's calibration scaled to ``height`` x ``width`` (same field of view).

    Raises:
      ValueError: a size below 16 pixels.
    """
    if height < 16 or width < 16:
        raise ValueError(f"height and width must be >= 16, got {height}x{width}")
    sy, sx = height / KITTI_SIZE[0], width / KITTI_SIZE[1]
    return Camera(height=height, width=width, fx=KITTI_FOCAL * sx, fy=KITTI_FOCAL * sy,
                  cx=KITTI_CX * sx, cy=KITTI_CY * sy)


def rot_y(angle: float) -> np.ndarray:
    """Rotation about the (downward) y axis: yaw."""
    c, s = np.cos(angle), np.sin(angle)
    return np.array([[c, 0.0, s], [0.0, 1.0, 0.0], [-s, 0.0, c]])


def rot_x(angle: float) -> np.ndarray:
    """Rotation about the x axis: pitch."""
    c, s = np.cos(angle), np.sin(angle)
    return np.array([[1.0, 0.0, 0.0], [0.0, c, -s], [0.0, s, c]])


@dataclasses.dataclass
class Scene:
    """One scene: boxes at t and t+1, camera pose at t+1 and surface appearance.

    World coordinates are the camera coordinates at t (x right, y down, z forward); the
    ground is the plane ``y = ground_y``. Box ``k`` is centred at ``centers0[k]`` with yaw
    ``yaw0[k]`` at t and at ``centers1[k]`` / ``yaw1[k]`` at t+1, half-sizes ``half[k]``.
    The camera at t+1 maps its coordinates to the world by ``x_w = ego_rot @ x + ego_t``.
    """

    centers0: np.ndarray
    yaw0: np.ndarray
    centers1: np.ndarray
    yaw1: np.ndarray
    half: np.ndarray
    kinds: np.ndarray
    ego_rot: np.ndarray
    ego_t: np.ndarray
    ground_y: float
    road_half_width: float
    lanes: np.ndarray
    surf_color: np.ndarray  # [n_surfaces, 3]
    surf_texel: np.ndarray  # [n_surfaces] metres per texel
    surf_contrast: np.ndarray  # [n_surfaces]
    surf_offset: np.ndarray  # [n_surfaces, 2] texture offsets (texels)
    surf_windows: np.ndarray  # [n_surfaces] bool, facade window pattern
    sky_color: np.ndarray  # [2, 3] horizon and zenith colours

    @property
    def num_boxes(self) -> int:
        """Number of boxes."""
        return len(self.half)

    def box_motion(self) -> tuple[np.ndarray, np.ndarray]:
        """Per box world motion t -> t+1 as (rotation [N, 3, 3], translation [N, 3])."""
        rots, trans = [], []
        for k in range(self.num_boxes):
            r = rot_y(self.yaw1[k]) @ rot_y(self.yaw0[k]).T
            rots.append(r)
            trans.append(self.centers1[k] - r @ self.centers0[k])
        return (np.asarray(rots).reshape(-1, 3, 3), np.asarray(trans).reshape(-1, 3))


# ----------------------------------------------------------------------------- textures


@functools.lru_cache(maxsize=4)
def texture_pyramid(seed: int, size: int = TEXTURE_SIZE) -> tuple[np.ndarray, np.ndarray]:
    """Periodic multi-octave value noise and its box-filtered mip levels.

    Args:
      seed: texture seed.
      size: level-0 size (power of two).

    Returns:
      ``(flat, offsets)``: all levels concatenated (float32, values about in [0, 1])
      and the start offset of each level (level ``l`` is ``size >> l`` square).
    """
    rng = np.random.default_rng(np.random.SeedSequence([seed, 7]))
    tex = np.zeros((size, size))
    amplitude, total = 1.0, 0.0
    cells = 4
    while cells <= size:
        grid = rng.uniform(size=(cells, cells))
        # Periodic bilinear upsampling of the random grid to the full size.
        pos = np.arange(size) * cells / size
        i0 = np.floor(pos).astype(int)
        f = pos - i0
        i1 = (i0 + 1) % cells
        rows = grid[i0] * (1 - f)[:, None] + grid[i1] * f[:, None]
        tex += amplitude * (rows[:, i0] * (1 - f) + rows[:, i1] * f)
        total += amplitude
        amplitude *= 0.7
        cells *= 2
    tex /= total
    tex = (tex - tex.min()) / (tex.max() - tex.min())
    levels = [tex]
    while levels[-1].shape[0] > 1:
        t = levels[-1]
        levels.append(0.25 * (t[0::2, 0::2] + t[1::2, 0::2] + t[0::2, 1::2] + t[1::2, 1::2]))
    offsets = np.cumsum([0] + [lv.size for lv in levels[:-1]])
    return (np.concatenate([lv.ravel() for lv in levels]).astype(np.float32),
            offsets.astype(np.int64))


def sample_texture(flat: np.ndarray, offsets: np.ndarray, s: np.ndarray, t: np.ndarray,
                   footprint: np.ndarray, size: int = TEXTURE_SIZE) -> np.ndarray:
    """Bilinear, wrapped lookup at texel coordinates (s, t) in the mip level whose texel
    matches ``footprint`` (level-0 texels per pixel)."""
    n_levels = len(offsets)
    _, exponent = np.frexp(np.maximum(footprint, np.float32(1e-6)) * np.float32(1.41421356))
    level = np.clip(exponent - 1, 0, n_levels - 1).astype(np.int32)  # round(log2(fp))
    scale = np.ldexp(np.float32(1.0), -level)
    mask = (np.int32(size) >> level) - 1  # sizes are powers of two: wrap with a mask
    x = s.astype(np.float32) * scale
    y = t.astype(np.float32) * scale
    x0f = np.floor(x)
    y0f = np.floor(y)
    fx = x - x0f
    fy = y - y0f
    x0 = x0f.astype(np.int32) & mask
    y0 = y0f.astype(np.int32) & mask
    x1 = (x0 + 1) & mask
    y1 = (y0 + 1) & mask
    base = np.take(offsets.astype(np.int32), level)
    r0 = base + y0 * (mask + 1)
    r1 = base + y1 * (mask + 1)
    top = np.take(flat, r0 + x0)
    top += (np.take(flat, r0 + x1) - top) * fx
    bottom = np.take(flat, r1 + x0)
    bottom += (np.take(flat, r1 + x1) - bottom) * fx
    return top + (bottom - top) * fy


# ------------------------------------------------------------------------ scene sampling


def _box(centers, half, kinds, x, z, width, height, length, kind, yaw=0.0, ground=CAMERA_HEIGHT):
    centers.append((x, ground - height / 2.0, z))
    half.append((width / 2.0, height / 2.0, length / 2.0))
    kinds.append((kind, yaw))


def sample_scene(rng: np.random.Generator) -> Scene:
    """Draws a random street scene (layout, motions, appearance).

    Args:
      rng: random generator (one per scene).

    Returns:
      A ``Scene``.
    """
    road = rng.uniform(3.5, 7.5)  # half width of the road
    road_center = rng.uniform(-1.0, 1.0)
    centers, half, meta = [], [], []
    # Building facades along both sides, some set back, with gaps.
    for side in (-1.0, 1.0):
        z = rng.uniform(-8.0, 2.0)
        setback = road + rng.uniform(2.0, 5.0)
        while z < 110.0:
            length = rng.uniform(6.0, 25.0)
            if rng.uniform() < 0.85:
                depth = rng.uniform(6.0, 12.0)
                x = road_center + side * (setback + rng.uniform(0.0, 3.0) + depth / 2.0)
                _box(centers, half, meta, x, z + length / 2.0, depth, rng.uniform(4.0, 18.0),
                     length, KIND_BUILDING)
            z += length + rng.uniform(0.0, 6.0)
    # Poles on the sidewalks.
    for _ in range(rng.integers(0, 7)):
        side = rng.choice([-1.0, 1.0])
        _box(centers, half, meta, road_center + side * (road + rng.uniform(0.5, 1.5)),
             rng.uniform(6.0, 60.0), 0.25, rng.uniform(2.5, 5.0), 0.25, KIND_POLE)
    # Parked cars along the kerbs.
    for _ in range(rng.integers(0, 8)):
        side = rng.choice([-1.0, 1.0])
        _box(centers, half, meta, road_center + side * (road - 1.1), rng.uniform(5.0, 60.0),
             rng.uniform(1.6, 1.9), rng.uniform(1.4, 1.7), rng.uniform(3.8, 4.8), KIND_CAR,
             yaw=rng.normal(0.0, 0.05))
    static = len(centers)
    # Moving cars in lanes (same direction or oncoming) and crossing pedestrians.
    velocities, yaw_rates = [], []
    for _ in range(rng.integers(1, 6)):
        lane = rng.uniform(-road + 1.2, road - 1.2)
        _box(centers, half, meta, road_center + lane, rng.uniform(8.0, 50.0),
             rng.uniform(1.6, 1.9), rng.uniform(1.4, 1.7), rng.uniform(3.8, 4.8), KIND_CAR,
             yaw=rng.normal(0.0, 0.1))
        speed = rng.uniform(0.3, 2.0) * (1.0 if rng.uniform() < 0.6 else -1.0)
        velocities.append((0.0, 0.0, speed))
        yaw_rates.append(rng.normal(0.0, 0.03))
    for _ in range(rng.integers(0, 4)):
        _box(centers, half, meta, road_center + rng.uniform(-road, road),
             rng.uniform(7.0, 35.0), 0.6, rng.uniform(1.5, 1.9), 0.5, KIND_PEDESTRIAN,
             yaw=rng.uniform(-np.pi, np.pi))
        velocities.append((rng.choice([-1.0, 1.0]) * rng.uniform(0.05, 0.2), 0.0,
                           rng.normal(0.0, 0.05)))
        yaw_rates.append(rng.normal(0.0, 0.05))

    centers0 = np.asarray(centers, np.float64).reshape(-1, 3)
    half_a = np.asarray(half, np.float64).reshape(-1, 3)
    kinds = np.asarray([m[0] for m in meta], np.int64)
    yaw0 = np.asarray([m[1] for m in meta], np.float64)
    centers1, yaw1 = centers0.copy(), yaw0.copy()
    for i, (vel, rate) in enumerate(zip(velocities, yaw_rates, strict=True)):
        k = static + i
        # Cars drive along their heading; pedestrians walk in the given direction.
        step = rot_y(yaw0[k]) @ np.asarray(vel) if kinds[k] == KIND_CAR else np.asarray(vel)
        centers1[k] = centers0[k] + step
        yaw1[k] = yaw0[k] + rate

    ego_speed = rng.uniform(0.0, 1.6)
    ego_rot = rot_y(rng.normal(0.0, np.deg2rad(1.0))) @ rot_x(rng.normal(0.0, np.deg2rad(0.3)))
    ego_t = np.array([rng.normal(0.0, 0.03), rng.normal(0.0, 0.01), ego_speed])
    lanes = road_center + np.array([0.0] + ([-road / 2.0, road / 2.0] if road > 5.5 else []))
    return _appearance(rng, Scene(
        centers0=centers0, yaw0=yaw0, centers1=centers1, yaw1=yaw1, half=half_a, kinds=kinds,
        ego_rot=ego_rot, ego_t=ego_t, ground_y=CAMERA_HEIGHT, road_half_width=road,
        lanes=lanes, surf_color=np.zeros((0, 3)), surf_texel=np.zeros(0),
        surf_contrast=np.zeros(0), surf_offset=np.zeros((0, 2)),
        surf_windows=np.zeros(0, bool), sky_color=np.zeros((2, 3))))


# Face shading in the box frame (constant under motion: brightness constancy holds).
_FACE_SHADE = np.array([0.80, 0.80, 1.00, 0.55, 0.90, 0.70])  # -x, +x, -y(top), +y, -z, +z


def _appearance(rng: np.random.Generator, scene: Scene) -> Scene:
    n = 2 + 6 * scene.num_boxes
    color = np.zeros((n, 3))
    texel = np.full(n, 0.05)
    contrast = np.full(n, 0.5)
    windows = np.zeros(n, bool)
    color[GROUND] = rng.uniform(0.25, 0.4) * np.array([1.0, 1.0, 1.05])
    texel[GROUND] = rng.uniform(0.02, 0.05)
    contrast[GROUND] = rng.uniform(0.4, 0.8)
    for k, kind in enumerate(scene.kinds):
        if kind == KIND_BUILDING:
            base = rng.uniform(0.3, 0.85) * rng.uniform(0.75, 1.0, 3)
            tex, con = rng.uniform(0.05, 0.2), rng.uniform(0.4, 0.9)
        elif kind == KIND_CAR:
            base = rng.uniform(0.1, 0.95, 3)
            tex, con = rng.uniform(0.02, 0.05), rng.uniform(0.3, 0.7)
        elif kind == KIND_POLE:
            base = np.full(3, rng.uniform(0.3, 0.7))
            tex, con = 0.02, 0.4
        else:
            base = rng.uniform(0.1, 0.8, 3)
            tex, con = rng.uniform(0.01, 0.03), 0.6
        sl = slice(2 + 6 * k, 8 + 6 * k)
        color[sl] = base[None] * _FACE_SHADE[:, None]
        texel[sl] = tex
        contrast[sl] = con
        # Windows on the facades seen from the street (the +-x faces).
        windows[2 + 6 * k: 4 + 6 * k] = kind == KIND_BUILDING and rng.uniform() < 0.8
    scene.surf_color = color.astype(np.float32)
    scene.surf_texel = texel.astype(np.float32)
    scene.surf_contrast = contrast.astype(np.float32)
    scene.surf_offset = rng.uniform(0, TEXTURE_SIZE, (n, 2)).astype(np.float32)
    scene.surf_windows = windows
    scene.sky_color = np.array([rng.uniform(0.75, 0.95, 3),
                                rng.uniform([0.3, 0.45, 0.7], [0.55, 0.7, 0.95])])
    return scene


# ----------------------------------------------------------------------------- rendering


@dataclasses.dataclass
class Render:
    """Per-pixel ray-cast result of one frame (depth is camera z; inf for the sky)."""

    depth: np.ndarray  # float32 [H, W]
    surface: np.ndarray  # int32 [H, W] surface id
    tex_s: np.ndarray  # float32 [H, W] surface coordinates in metres
    tex_t: np.ndarray
    cos: np.ndarray  # float32 [H, W] |cos| between ray and surface normal
    image: np.ndarray | None = None  # float32 [H, W, 3]


def _rays(camera: Camera) -> tuple[np.ndarray, np.ndarray]:
    rx = ((np.arange(camera.width) - camera.cx) / camera.fx).astype(np.float32)
    ry = ((np.arange(camera.height) - camera.cy) / camera.fy).astype(np.float32)
    return rx, ry


def _box_window(camera: Camera, cam_rot: np.ndarray, cam_t: np.ndarray, center: np.ndarray,
                rot: np.ndarray, half: np.ndarray, near: float = 0.05):
    """Pixel rectangle covering the box's projection (clipped to z >= near) and the
    smallest camera depth of the box, or None when it is out of view."""
    signs = np.array([[sx, sy, sz] for sx in (-1, 1) for sy in (-1, 1) for sz in (-1, 1)])
    corners = (signs * half) @ rot.T + center  # world
    cam = (corners - cam_t) @ cam_rot  # camera coordinates (x_c = R^T (x_w - t))
    pts = [p for p in cam if p[2] >= near]
    for i in range(8):
        for j in range(i + 1, 8):
            if np.sum(signs[i] != signs[j]) != 1:
                continue  # not an edge
            zi, zj = cam[i, 2], cam[j, 2]
            if (zi - near) * (zj - near) < 0:
                a = (near - zi) / (zj - zi)
                pts.append(cam[i] + a * (cam[j] - cam[i]))
    if not pts:
        return None
    pts = np.asarray(pts)
    u = camera.fx * pts[:, 0] / pts[:, 2] + camera.cx
    v = camera.fy * pts[:, 1] / pts[:, 2] + camera.cy
    x0 = max(int(np.floor(u.min())), 0)
    x1 = min(int(np.ceil(u.max())) + 1, camera.width)
    y0 = max(int(np.floor(v.min())), 0)
    y1 = min(int(np.ceil(v.max())) + 1, camera.height)
    if x0 >= x1 or y0 >= y1:
        return None
    return y0, y1, x0, x1, float(pts[:, 2].min())


def render_geometry(scene: Scene, camera: Camera, frame: int) -> Render:
    """Ray-casts frame 0 (t) or 1 (t+1): depth, surface ids and surface coordinates.

    Args:
      scene: the scene.
      camera: camera intrinsics.
      frame: 0 or 1.

    Returns:
      ``Render`` without the image.
    """
    if frame not in (0, 1):
        raise ValueError(f"frame must be 0 or 1, got {frame}")
    cam_rot = np.eye(3) if frame == 0 else scene.ego_rot
    cam_t = np.zeros(3) if frame == 0 else scene.ego_t
    centers = scene.centers0 if frame == 0 else scene.centers1
    yaws = scene.yaw0 if frame == 0 else scene.yaw1
    rx, ry = _rays(camera)
    norm = np.sqrt(rx[None, :] ** 2 + ry[:, None] ** 2 + np.float32(1.0))

    # Ground plane y_w = ground_y; world direction d = R r with r = (rx, ry, 1).
    r = cam_rot.astype(np.float32)
    dy = r[1, 0] * rx[None, :] + r[1, 1] * ry[:, None] + r[1, 2]
    with np.errstate(divide="ignore", invalid="ignore"):
        s = np.float32(scene.ground_y - cam_t[1]) / dy
    hit = (dy > 1e-6) & (s > 0)
    s = np.where(hit, s, np.float32(0.0))
    depth = np.where(hit, s, np.float32(np.inf))
    surface = hit.astype(np.int32) * GROUND
    dx = r[0, 0] * rx[None, :] + r[0, 1] * ry[:, None] + r[0, 2]
    dz = r[2, 0] * rx[None, :] + r[2, 1] * ry[:, None] + r[2, 2]
    tex_s = np.float32(cam_t[0]) + s * dx
    tex_t = np.float32(cam_t[2]) + s * dz
    cos = np.where(hit, dy / norm, np.float32(1.0))

    windows = []
    for k in range(scene.num_boxes):
        window = _box_window(camera, cam_rot, cam_t, centers[k], rot_y(yaws[k]), scene.half[k])
        if window is not None:
            windows.append((window[4], k, window[:4]))
    # Near to far, so that boxes hidden behind nearer surfaces are skipped cheaply.
    for nearest, k, (y0, y1, x0, x1) in sorted(windows):
        if depth[y0:y1, x0:x1].max() <= nearest:
            continue
        rot_b = rot_y(yaws[k])
        m = (rot_b.T @ cam_rot).astype(np.float32)  # camera ray -> box frame
        origin = (rot_b.T @ (cam_t - centers[k])).astype(np.float32)
        sub_x, sub_y = rx[x0:x1][None, :], ry[y0:y1][:, None]
        t_near = np.full((y1 - y0, x1 - x0), -np.inf, np.float32)
        t_far = np.full((y1 - y0, x1 - x0), np.inf, np.float32)
        axis = np.zeros((y1 - y0, x1 - x0), np.int8)
        dirs = []
        with np.errstate(divide="ignore", invalid="ignore"):
            for a in range(3):
                d = m[a, 0] * sub_x + m[a, 1] * sub_y + m[a, 2]
                dirs.append(d)
                inv = 1.0 / d
                ta = (-scene.half[k][a] - origin[a]) * inv
                tb = (scene.half[k][a] - origin[a]) * inv
                lo = np.minimum(ta, tb)
                hi = np.maximum(ta, tb)
                # A ray parallel to a slab outside it never hits (NaN from 0 * inf).
                lo = np.where(np.isnan(lo), np.inf, lo)
                hi = np.where(np.isnan(hi), -np.inf, hi)
                axis = np.where(lo > t_near, np.int8(a), axis)
                t_near = np.maximum(t_near, lo)
                t_far = np.minimum(t_far, hi)
        sub_depth = depth[y0:y1, x0:x1]
        hit = (t_near <= t_far) & (t_near > 0.05) & (t_near < sub_depth)
        if not hit.any():
            continue
        tn = t_near[hit]
        ax = axis[hit].astype(np.int64)
        dsel = np.stack([d[hit] for d in dirs])
        p = origin[:, None] + tn[None] * dsel  # hit point in the box frame
        d_axis = np.take_along_axis(dsel, ax[None], 0)[0]
        # Faces 2a (the -a side, entered with d_a > 0) and 2a + 1 (the +a side).
        face = 2 * ax + (d_axis < 0).astype(np.int64)
        u_axis = np.where(ax == 0, 2, 0)
        v_axis = np.where(ax == 1, 2, 1)
        sub_depth[hit] = tn
        surface[y0:y1, x0:x1][hit] = 2 + 6 * k + face
        tex_s[y0:y1, x0:x1][hit] = np.take_along_axis(p, u_axis[None], 0)[0] + scene.half[k][0]
        tex_t[y0:y1, x0:x1][hit] = np.take_along_axis(p, v_axis[None], 0)[0] + 37.0 * face
        cos[y0:y1, x0:x1][hit] = np.abs(d_axis) / norm[y0:y1, x0:x1][hit]
    return Render(depth=depth, surface=surface, tex_s=tex_s, tex_t=tex_t, cos=cos)


def _fmod(x: np.ndarray, period: float) -> np.ndarray:
    # Floor-based modulo: several times faster than np.mod on float32.
    p = np.float32(period)
    return x - np.floor(x * np.float32(1.0 / period)) * p


def surface_table(scene: Scene) -> np.ndarray:
    """Per-surface shading parameters ``[n, 8]``: RGB, 1 / texel, texture offsets (2),
    contrast, window flag."""
    return np.concatenate([scene.surf_color, 1.0 / scene.surf_texel[:, None],
                           scene.surf_offset, scene.surf_contrast[:, None],
                           scene.surf_windows[:, None]], axis=1).astype(np.float32)


def shade(scene: Scene, camera: Camera, render: Render, frame: int, texture_seed: int = 0
          ) -> np.ndarray:
    """Colours a rendered frame (textures, windows, lane markings, sky).

    Args:
      scene: the scene.
      camera: camera intrinsics.
      render: ``render_geometry`` output of the same frame.
      frame: 0 or 1 (the sky depends on the camera rotation).
      texture_seed: seed of the shared noise texture.

    Returns:
      float32 ``[H, W, 3]`` in [0, 1].
    """
    flat, offsets = texture_pyramid(texture_seed)
    sid = render.surface
    solid = sid != SKY
    rx, ry = _rays(camera)
    norm = np.sqrt(rx[None, :] ** 2 + ry[:, None] ** 2 + np.float32(1.0))
    columns = surface_table(scene).T.copy()
    inv_texel = np.take(columns[3], sid)
    depth = np.where(solid, render.depth, np.float32(1.0))
    # Metres covered by one pixel on the surface, in level-0 texels (picks the mip level).
    footprint = depth * norm * inv_texel / (np.float32(camera.fx)
                                            * np.maximum(render.cos, np.float32(0.05)))
    s = render.tex_s * inv_texel + np.take(columns[4], sid)
    t = render.tex_t * inv_texel + np.take(columns[5], sid)
    noise = sample_texture(flat, offsets, s, t, footprint)
    contrast = np.take(columns[6], sid)
    albedo = 1.0 - contrast + 2.0 * contrast * noise
    image = np.stack([np.take(columns[c], sid) for c in range(3)], axis=-1) * albedo[..., None]

    # Road: sidewalks lighter, lane markings and kerb lines (world x, z on the ground).
    ground = sid == GROUND
    x_w, z_w = render.tex_s, render.tex_t
    offset = np.abs(x_w - np.float32(scene.lanes[0]))
    side = ground & (offset > scene.road_half_width)
    image *= np.where(side[..., None], np.array([1.35, 1.3, 1.2], np.float32), np.float32(1.0))
    marks = np.abs(offset - np.float32(scene.road_half_width)) < 0.1
    dashed = _fmod(z_w, 9.0) < 3.0
    for i, lane in enumerate(scene.lanes):
        on = np.abs(x_w - np.float32(lane)) < 0.08
        marks |= (on & dashed) if i > 0 else on
    marks &= ground
    paint = (0.7 + 0.2 * albedo)[..., None]
    image = np.where(marks[..., None], paint, image)

    windows = np.take(columns[7], sid) > 0
    if windows.any():
        wt = _fmod(render.tex_t, 3.0)
        glass = windows & (_fmod(render.tex_s, 3.2) > 0.7) & (wt > 1.0) & (wt < 2.3)
        image = np.where(glass[..., None], image * np.float32(0.35) + np.float32(0.05), image)

    sky = ~solid
    rows = np.flatnonzero(sky.any(axis=1))
    if rows.size:
        band = slice(rows[0], rows[-1] + 1)
        cam_rot = (np.eye(3) if frame == 0 else scene.ego_rot).astype(np.float32)
        bx, by = rx[None, :], ry[band, None]
        n = norm[band]
        dx = (cam_rot[0, 0] * bx + cam_rot[0, 1] * by + cam_rot[0, 2]) / n
        dy = (cam_rot[1, 0] * bx + cam_rot[1, 1] * by + cam_rot[1, 2]) / n
        dz = (cam_rot[2, 0] * bx + cam_rot[2, 1] * by + cam_rot[2, 2]) / n
        elevation = np.clip(-dy, 0.0, 1.0)
        cloud = sample_texture(flat, offsets, np.arctan2(dx, dz) * np.float32(60.0),
                               elevation * np.float32(60.0) + np.float32(99.0),
                               np.ones_like(elevation))
        colors = scene.sky_color.astype(np.float32)
        sky_rgb = (colors[0] + (colors[1] - colors[0]) * elevation[..., None]) \
            * (0.85 + 0.3 * cloud)[..., None]
        image[band] = np.where(sky[band][..., None], sky_rgb, image[band])
    return np.clip(image, 0.0, 1.0).astype(np.float32)


@dataclasses.dataclass
class SyntheticFrame:
    """One generated frame pair with its exact ground truth (KITTI conventions).

    Attributes:
      image0, image1: uint8 ``[H, W, 3]``.
      flow: float32 ``[H, W, 2]`` (u, v) in pixels; ``d0``, ``d1``: float32 ``[H, W]``.
      valid: bool ``[H, W]`` ground-truth validity (shared by flow, d0, d1).
      noc: bool ``[H, W]``: valid and visible in frame t+1 (in the image, not occluded).
      disp1_second_view: float32 ``[H, W]`` disparity of frame t+1 in its own view.
      valid1: bool ``[H, W]`` validity of ``disp1_second_view``.
      scene, camera: what was rendered.
    """

    image0: np.ndarray
    image1: np.ndarray
    flow: np.ndarray
    d0: np.ndarray
    d1: np.ndarray
    valid: np.ndarray
    noc: np.ndarray
    disp1_second_view: np.ndarray
    valid1: np.ndarray
    scene: Scene
    camera: Camera


def _lidar_valid(render: Render, camera: Camera) -> np.ndarray:
    # Surface, in range and below the LiDAR's upper field-of-view limit.
    _, ry = _rays(camera)
    height_above = -ry[:, None] * render.depth - LIDAR_ABOVE_CAMERA
    with np.errstate(invalid="ignore"):
        below_fov = height_above <= render.depth * np.tan(LIDAR_UP_FOV)
    return (render.surface != SKY) & (render.depth <= MAX_DEPTH) & below_fov


def scene_flow_ground_truth(scene: Scene, camera: Camera, render0: Render, render1: Render
                            ) -> dict[str, np.ndarray]:
    """Exact flow, d0, d1 and masks of frame t from the scene's 3D motion.

    Args:
      scene: the scene.
      camera: camera intrinsics.
      render0, render1: ``render_geometry`` of frames 0 and 1.

    Returns:
      dict ``flow`` [H, W, 2], ``d0``, ``d1``, ``valid``, ``noc`` (see ``SyntheticFrame``).
    """
    h, w = camera.height, camera.width
    rx, ry = _rays(camera)
    valid = _lidar_valid(render0, camera)
    z0 = np.where(valid, render0.depth, np.float32(1.0))
    points = np.stack([np.broadcast_to(rx[None, :], (h, w)) * z0,
                       np.broadcast_to(ry[:, None], (h, w)) * z0, z0], axis=-1)
    # Rigid motion of each surface's object (ground and static boxes do not move), then
    # into the camera at t+1: x_c1 = R_e^T (x_w - t_e).
    rots, trans = scene.box_motion()
    ego_inv = scene.ego_rot.T
    f32 = np.float32
    moved = points @ ego_inv.T.astype(f32) - (scene.ego_t @ ego_inv.T).astype(f32)
    obj = np.where(render0.surface >= 2, (render0.surface - 2) // 6, -1)
    for k in range(scene.num_boxes):
        if np.allclose(rots[k], np.eye(3)) and not np.any(trans[k]):
            continue
        mine = obj == k
        if not mine.any():
            continue
        rot = ego_inv @ rots[k]
        moved[mine] = (points[mine] @ rot.T.astype(f32)
                       + ((trans[k] - scene.ego_t) @ ego_inv.T).astype(f32))
    z1 = moved[..., 2]
    valid &= z1 > MIN_DEPTH_T1
    z1 = np.where(valid, z1, 1.0)
    x1 = camera.fx * moved[..., 0] / z1 + camera.cx
    y1 = camera.fy * moved[..., 1] / z1 + camera.cy
    flow = np.stack([x1 - np.arange(w)[None, :], y1 - np.arange(h)[:, None]], axis=-1)
    d0 = np.where(valid, camera.fb / z0, 0.0)
    d1 = np.where(valid, camera.fb / z1, 0.0)
    # KITTI's 16-bit maps hold |flow| < 512 and disparities < 256: drop what they cannot.
    valid &= (np.abs(flow) < MAX_FLOW).all(axis=-1) & (d0 < MAX_DISP) & (d1 < MAX_DISP)
    d0 = np.where(valid, d0, 0.0)
    d1 = np.where(valid, d1, 0.0)
    # Visible at t+1: inside the image and the surface seen there is the same, as deep.
    xi = np.round(x1).astype(np.int64)
    yi = np.round(y1).astype(np.int64)
    inside = valid & (xi >= 0) & (xi < w) & (yi >= 0) & (yi < h)
    xi = np.clip(xi, 0, w - 1)
    yi = np.clip(yi, 0, h - 1)
    same = render1.surface[yi, xi] == render0.surface
    close = np.abs(render1.depth[yi, xi] - z1) <= 0.03 * z1 + 0.05
    noc = inside & same & close
    flow = np.where(valid[..., None], flow, 0.0)
    return {"flow": flow.astype(np.float32), "d0": d0.astype(np.float32),
            "d1": d1.astype(np.float32), "valid": valid, "noc": noc}


def scene_rng(seed: int, index: int) -> np.random.Generator:
    """The generator of scene ``index`` of the data set with ``seed``."""
    if seed < 0 or index < 0:
        raise ValueError(f"seed and index must be >= 0, got {seed}, {index}")
    return np.random.default_rng(np.random.SeedSequence([int(seed), int(index), 1]))


def make_frame(seed: int, index: int, height: int = KITTI_SIZE[0],
               width: int = KITTI_SIZE[1]) -> SyntheticFrame:
    """Generates scene ``index`` of the data set with ``seed`` (deterministic).

    Args:
      seed: data-set seed (also seeds the shared texture).
      index: scene index.
      height, width: image size (KITTI's calibration is scaled to it).

    Returns:
      A ``SyntheticFrame``.
    """
    camera = kitti_camera(height, width)
    scene = sample_scene(scene_rng(seed, index))
    render0 = render_geometry(scene, camera, 0)
    render1 = render_geometry(scene, camera, 1)
    image0 = shade(scene, camera, render0, 0, seed)
    image1 = shade(scene, camera, render1, 1, seed)
    gt = scene_flow_ground_truth(scene, camera, render0, render1)
    valid1 = _lidar_valid(render1, camera)
    disp1 = np.where(valid1, camera.fb / np.where(valid1, render1.depth, 1.0), 0.0)
    valid1 &= disp1 < MAX_DISP
    disp1 = np.where(valid1, disp1, 0.0)
    return SyntheticFrame(image0=_to_uint8(image0), image1=_to_uint8(image1), flow=gt["flow"],
                          d0=gt["d0"], d1=gt["d1"], valid=gt["valid"], noc=gt["noc"],
                          disp1_second_view=disp1.astype(np.float32), valid1=valid1,
                          scene=scene, camera=camera)


def _to_uint8(image: np.ndarray) -> np.ndarray:
    return np.round(image * np.float32(255.0)).astype(np.uint8)


def write_frame(root: PathLike, name: str, frame: SyntheticFrame, compression: int = 1,
                write_noc: bool = True) -> None:
    """Writes a frame pair into the KITTI layout under ``root/training``.

    Args:
      root: data-set root.
      name: frame id (``NNNNNN``).
      frame: the generated frame.
      compression: PNG zlib level (1 is fast).
      write_noc: also write ``flow_noc`` (flow visible at t+1, as KITTI's noc maps).
    """
    paths = kitti.frame_paths(root, name)
    write_png(paths["image0"], frame.image0, compression)
    write_png(paths["image1"], frame.image1, compression)
    kitti.write_disparity(paths["disp0"], frame.d0, compression)
    kitti.write_disparity(paths["disp1"], frame.d1, compression)
    kitti.write_flow(paths["flow"], frame.flow, frame.valid, compression)
    kitti.write_disparity(paths["disp1_second_view"], frame.disp1_second_view, compression)
    if write_noc:
        kitti.write_flow(_noc_path(root, name), frame.flow, frame.noc, compression)


def _noc_path(root: PathLike, name: str) -> Path:
    return Path(root) / kitti.SPLIT / "flow_noc" / f"{name}_10.png"


def _scene_done(root: PathLike, name: str, write_noc: bool) -> bool:
    """Every file of the scene is there (each is written atomically: there means complete)."""
    paths = list(kitti.frame_paths(root, name).values())
    return all(p.exists() for p in paths + ([_noc_path(root, name)] if write_noc else []))


def write_split_file(path: PathLike, num_scenes: int) -> Path:
    """A split file for ``num_scenes`` frames that repeats the original's 180/20 pattern.

    Returns:
      The path written.
    """
    pattern = kitti.read_split_file(None)
    lines = ["test" if pattern[i % len(pattern)] else "" for i in range(num_scenes)]
    path = Path(path)
    write_text_atomic(path, "\n".join(lines) + "\n")
    return path


def _progress(iterable, total: int, enabled: bool):
    if not enabled:
        return iterable
    try:
        from tqdm import tqdm  # optional
    except ImportError:
        return _plain_progress(iterable, total)
    return tqdm(iterable, total=total, desc="scenes")


def _plain_progress(iterable, total: int):
    start = time.perf_counter()
    for i, item in enumerate(iterable, 1):
        yield item
        if i == total or i % max(1, total // 20) == 0:
            rate = i / max(time.perf_counter() - start, 1e-9)
            print(f"scenes {i}/{total} ({rate:.1f}/s)", flush=True)


def _make_and_write(args) -> str:
    root, index, seed, height, width, compression, write_noc = args
    name = f"{index:06d}"
    write_frame(root, name, make_frame(seed, index, height, width), compression, write_noc)
    return name


def generate_dataset(output_dir: PathLike, num_scenes: int, height: int = KITTI_SIZE[0],
                     width: int = KITTI_SIZE[1], seed: int = 0, start_index: int = 0,
                     compression: int = 1, write_noc: bool = True, overwrite: bool = False,
                     progress: bool = True, num_workers: int = 1) -> dict:
    """Writes ``num_scenes`` synthetic frame pairs in the KITTI layout (resumable).

    Scenes that already have all their files are skipped unless ``overwrite``, so an
    interrupted run continues where it stopped (every file is written atomically, so
    an existing one is complete). Writes ``split.txt`` (the original's 180/20 pattern
    repeated: pass it as ``split_file`` to ``KittiSceneFlow``) and ``synthetic.json``
    (calibration and settings; written first, with ``num_scenes`` 0 until the scenes
    are done, it marks the folder as a synthetic data set).

    Args:
      output_dir: data-set root (``training/`` is created inside).
      num_scenes: number of frame pairs (> 0).
      height, width: image size.
      seed: data-set seed.
      start_index: index of the first scene (frame ids are ``%06d`` of the index).
      compression: PNG zlib level.
      write_noc: also write ``flow_noc``.
      overwrite: regenerate existing scenes.
      progress: show progress (tqdm if installed, else printed lines).
      num_workers: processes generating scenes in parallel (the output does not depend
        on it).

    Returns:
      Summary dict (root, scenes written / skipped, seconds, scenes per second).

    Raises:
      ValueError: bad counts, or ``synthetic.json`` records other settings.
      FileExistsError: ``output_dir`` is neither empty nor a synthetic data set:
        "refusing to write into DIR: it is not a deepliflow_jax synthetic data set
        (holds ...); remove it or choose another path".
    """
    if num_scenes <= 0:
        raise ValueError(f"num_scenes must be > 0, got {num_scenes}")
    if start_index < 0:
        raise ValueError(f"start_index must be >= 0, got {start_index}")
    if num_workers < 1:
        raise ValueError(f"num_workers must be >= 1, got {num_workers}")
    camera = kitti_camera(height, width)
    root = Path(output_dir).expanduser()
    # writes only into a new or empty folder or a synthetic data set (synthetic.json)
    claim_dir(root, META_FILE, "a deepliflow_jax synthetic data set")
    meta = {"generator": "deepliflow_jax.data.synthetic", "version": GENERATOR_VERSION,
            "seed": seed, "height": height, "width": width,
            "num_scenes": start_index + num_scenes,
            "camera": dataclasses.asdict(camera), "max_depth": MAX_DEPTH}
    meta_path = root / META_FILE
    if not meta_path.exists():  # the marker goes first; num_scenes counts finished scenes
        write_json_atomic(meta_path, {**meta, "num_scenes": 0}, sort_keys=False)
    elif not overwrite:
        old = json.loads(meta_path.read_text())
        for key in ("seed", "height", "width", "version"):
            if old.get(key) != meta[key]:
                raise ValueError(f"{meta_path} was written with {key}={old.get(key)!r}, not "
                                 f"{meta[key]!r}: use another output_dir or overwrite")
        meta["num_scenes"] = max(meta["num_scenes"], old.get("num_scenes", 0))
    start = time.perf_counter()
    todo = [i for i in range(start_index, start_index + num_scenes)
            if overwrite or not _scene_done(root, f"{i:06d}", write_noc)]
    jobs = [(root, i, seed, height, width, compression, write_noc) for i in todo]
    if num_workers == 1:
        for _ in _progress(map(_make_and_write, jobs), len(jobs), progress):
            pass
    else:
        import concurrent.futures
        import multiprocessing

        # spawn: the caller may have started threads (JAX) that fork would copy badly.
        with concurrent.futures.ProcessPoolExecutor(
                num_workers, mp_context=multiprocessing.get_context("spawn")) as pool:
            for _ in _progress(pool.map(_make_and_write, jobs, chunksize=4), len(jobs),
                               progress):
                pass
    written, skipped = len(jobs), num_scenes - len(jobs)
    seconds = time.perf_counter() - start
    write_split_file(root / "split.txt", meta["num_scenes"])
    write_json_atomic(meta_path, meta, sort_keys=False)
    return {"root": str(root), "written": written, "skipped": skipped, "seconds": seconds,
            "scenes_per_second": written / seconds if written and seconds > 0 else None}
