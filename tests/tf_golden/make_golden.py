"""Golden fixtures computed by REAL TensorFlow kernels, for the pytest suite.

Regenerate (needs the TensorFlow venv, not the project's JAX env)::

    cd <repo root>
    /work/tfenv/bin/python tests/tf_golden/make_golden.py          # writes tests/fixtures/
    /work/tfenv/bin/python tests/tf_golden/make_golden.py --check  # also re-runs the net
                                                                   # as a TF1 graph (slower)

It was run with TensorFlow 2.21.0 (CPU) and numpy 2.4. Outputs (all float32
unless stated, inputs stored next to outputs):

* ``tests/fixtures/tf_ops_golden.npz``   per-op goldens (Part 1)
* ``tests/fixtures/tf_net_golden.npz``   the whole network, two cases (Part 2)
* ``tests/fixtures/tf_variables.json``   ``{original TF variable name: shape}`` of the
  full-size network, sorted by name

Weights of the network goldens come from ``tests/tf_golden/weights.py``
(``make_weights(json.load(tf_variables.json), seed=0)``), a pure-numpy generator
that the JAX side imports too.

Nothing from the original repository is imported or copied: the network below is
re-written from the semantics of the original TF 1.14 code (networks.py,
modules.py, deeplidarflow.py, utils/tf_utils.py, utils/warping_utils.py) using
TF kernels (tf.nn.conv2d, tf.nn.conv2d_transpose, tf.nn.max_pool_with_argmax +
tf.gather, tf.compat.v1.image.resize*, tf.nn.leaky_relu, tf.nn.softplus,
tf.pad, tf.gather_nd).

Variable naming rules (TF1 graph semantics) -- how the original names its variables
------------------------------------------------------------------------------------
DeepLiDARFlowNet opens ``variable_scope('inputs')`` (no variables), then
``variable_scope('model')`` and, inside it, ``variable_scope('guidance_network') as
scope``; it calls ``final_network`` for frame 0, then ``scope.reuse_variables()``,
then calls it again for frame 1. Then per level ``warping_layer_<l>`` /
``cost_volume_layer_<l>`` (no variables), ``scene_flow_estimator_<l>`` (l = 6..2)
and ``context_network``.

1. ``tf.variable_scope('x')`` (string) does two things: the VARIABLE scope becomes
   ``<parent var scope>/x`` (never uniquified), and it opens a NAME scope
   ``<current name scope>/x`` made unique by ``Graph.unique_name`` -- a name scope
   already used gets ``_1``, ``_2``, ... .
2. ``tf.get_variable(n)`` is named ``<variable scope>/n`` and honours reuse:
   with reuse=True it returns the existing variable (error if missing), with
   reuse=False it errors if it exists, AUTO_REUSE creates or returns.
3. ``tf.layers.conv2d(..., name='conv'+num, reuse=tf.AUTO_REUSE)`` (and
   ``conv2d_transpose`` with ``'deconv'+num``) open ``variable_scope('conv'+num)``
   and call get_variable('kernel') / get_variable('bias'):
   ``<var scope>/conv<num>/kernel`` [kh,kw,in,out] (transpose: [kh,kw,out,in]) and
   ``<var scope>/conv<num>/bias`` [out]. Shared between the two frames.
4. ``normal_convolution`` creates ``tf.get_variable('kernels_'+num)`` -> rule 2,
   shared between frames (e.g. ``.../rgb_guidance_connections/kernels_0b``,
   ``.../final_scene_flow_tensors/kernels__pyr_top`` with a DOUBLE underscore
   because num='_pyr_top'); and ``tf.Variable(name='biases'+num)`` [1,1,1,C],
   which IGNORES variable scopes and reuse: it is named by the current NAME scope,
   ``<name scope>/biases<num>`` (uniquified).
5. Hence frame 0 (first entry of every scope, name scope == variable scope) gives
   ``model/guidance_network/rgb_guidance_connections/biases0b`` etc.; frame 1
   re-enters ``rgb_features_encoder_decoder``, ``rgb_guidance_connections`` and
   ``final_scene_flow_tensors`` under the same name scope
   ``model/guidance_network/``, which uniquifies them to ``..._1``, so frame 1
   creates NEW bias variables
   ``model/guidance_network/rgb_guidance_connections_1/biases0b``,
   ``model/guidance_network/final_scene_flow_tensors_1/biases_pyr_top``,
   ``model/guidance_network/final_scene_flow_tensors_1/upsampling5to4/biases6to5``,
   ``model/guidance_network/final_scene_flow_tensors_1/refine4/biasesrefinement``,
   ... (nested scopes are fresh under the new parent name scope, so no suffix
   there), while every kernel and every tf.layers variable is shared.
   The original's released checkpoint therefore holds 2 x 15 normal-conv bias
   variables but one copy of everything else.

The eager implementation below (class ``EagerScopes``) emulates rules 1-5 to
produce names for a ``params`` dict; ``GraphScopes`` builds the same network
as a tf.compat.v1 graph with real ``variable_scope`` / ``get_variable`` /
``tf.compat.v1.Variable`` / ``scope.reuse_variables()`` (tf.layers is gone in
TF 2.21 with Keras 3, so it is emulated by ``variable_scope('conv'+num,
reuse=AUTO_REUSE)`` + ``get_variable('kernel'/'bias')``, which is what
tf.layers' base Layer does for a named layer with reuse=AUTO_REUSE). ``--check``
(and every default run: the name check is cheap) asserts that the graph's
variable names and shapes equal the eager ones, and with ``--check`` also runs
the graph in a Session with the same weights and compares the outputs.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys

import numpy as np

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("CUDA_VISIBLE_DEVICES", "")
import tensorflow as tf  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
from weights import checksum, make_weight, make_weights  # noqa: E402

v1 = tf.compat.v1
FIXTURES = os.path.normpath(os.path.join(HERE, "..", "fixtures"))

SEARCH_RANGE = 4
NCONV_EPS = 1e-5
LEAKY_CONV = 0.1  # utils/tf_utils.convolution / upconvolution, cost volume
# normal_convolution calls tf.nn.leaky_relu(x) with TF's default alpha:
LEAKY_NCONV = 0.2


# =============================================================================
# Variable providers: eager (emulated TF1 naming) and graph (real TF1 naming)
# =============================================================================
AUTO = "auto"


class EagerScopes:
    """Emulates TF1 variable_scope / name_scope / get_variable / tf.Variable naming.

    ``params`` maps original variable names to arrays. With ``params=None`` it
    records shapes and generates weights lazily with ``weights.make_weight`` (the
    same per-name generator ``make_weights`` uses).
    """

    def __init__(self, params=None, seed=0):
        self.params = params
        self.seed = seed
        self.vs = [("", False)]  # (variable-scope name, reuse in {False, True, AUTO})
        self.ns = [""]  # current name scope ('' or 'a/b/')
        self.names_in_use: dict[str, int] = {}
        self.shapes: dict[str, tuple] = {}
        self.values: dict[str, np.ndarray] = {}

    # Graph.unique_name
    def _unique(self, name):
        key = name.lower()
        i = self.names_in_use.get(key, 0)
        self.names_in_use[key] = i + 1
        if i > 0:
            base = key
            while key in self.names_in_use:
                key = f"{base}_{i}"
                i += 1
            self.names_in_use[key] = 1
            name = f"{name}_{i - 1}"
        return name

    @contextlib.contextmanager
    def variable_scope(self, name, reuse=None):
        parent, preuse = self.vs[-1]
        full = f"{parent}/{name}" if parent else name
        if preuse is True:
            r = True
        elif reuse is not None:
            r = reuse
        else:
            r = preuse
        ns = self._unique(self.ns[-1] + name) + "/"
        self.vs.append((full, r))
        self.ns.append(ns)
        try:
            yield
        finally:
            self.vs.pop()
            self.ns.pop()

    def reuse_variables(self):
        name, _ = self.vs[-1]
        self.vs[-1] = (name, True)

    def _create(self, full, shape):
        shape = tuple(int(s) for s in shape)
        self.shapes[full] = shape
        if self.params is None:
            self.values[full] = make_weight(full, shape, self.seed)
        else:
            v = np.asarray(self.params[full], np.float32)
            if v.shape != shape:
                raise ValueError(f"{full}: param shape {v.shape} != {shape}")
            self.values[full] = v
        return tf.constant(self.values[full])

    def get_variable(self, name, shape):
        scope, reuse = self.vs[-1]
        full = f"{scope}/{name}" if scope else name
        shape = tuple(int(s) for s in shape)
        if full in self.shapes:
            if reuse is False:
                raise ValueError(f"Variable {full} already exists")
            if self.shapes[full] != shape:
                raise ValueError(f"{full}: shape {shape} != {self.shapes[full]}")
            return tf.constant(self.values[full])
        if reuse is True:
            raise ValueError(f"Variable {full} does not exist")
        return self._create(full, shape)

    def layer_vars(self, layer_name, kshape, bshape):
        with self.variable_scope(layer_name, reuse=AUTO):
            return self.get_variable("kernel", kshape), self.get_variable("bias", bshape)

    def tf_variable(self, name, shape):
        full = self._unique(self.ns[-1] + name)
        assert full not in self.shapes, full
        return self._create(full, shape)


class GraphScopes:
    """The same interface on a real tf.compat.v1 graph (variables are real)."""

    @contextlib.contextmanager
    def variable_scope(self, name, reuse=None):
        with v1.variable_scope(name, reuse=v1.AUTO_REUSE if reuse == AUTO else reuse):
            yield

    def reuse_variables(self):
        v1.get_variable_scope().reuse_variables()

    def get_variable(self, name, shape):
        return v1.get_variable(name, shape=[int(s) for s in shape],
                               initializer=v1.zeros_initializer())

    def layer_vars(self, layer_name, kshape, bshape):
        with v1.variable_scope(layer_name, reuse=v1.AUTO_REUSE):
            return self.get_variable("kernel", kshape), self.get_variable("bias", bshape)

    def tf_variable(self, name, shape):
        return v1.Variable(tf.zeros([int(s) for s in shape]), name=name)


# =============================================================================
# TF-kernel building blocks (work eagerly and in a graph)
# =============================================================================
def leaky(x, alpha):
    return tf.nn.leaky_relu(x, alpha=alpha)


def convolution(S, x, filters, num, ksize=3, stride=1, dilation=1, act=True):
    """utils/tf_utils.convolution: tf.layers.conv2d SAME + bias + leaky(0.1)."""
    cin = int(x.shape[-1])
    k, b = S.layer_vars("conv" + num, (ksize, ksize, cin, filters), (filters,))
    y = tf.nn.conv2d(x, k, strides=stride, padding="SAME", dilations=dilation)
    y = tf.nn.bias_add(y, b)
    return leaky(y, LEAKY_CONV) if act else y


def upconvolution(S, x, filters, num, act=True):
    """utils/tf_utils.upconvolution: tf.layers.conv2d_transpose k4 s2 SAME (+bias)."""
    cin = int(x.shape[-1])
    k, b = S.layer_vars("deconv" + num, (4, 4, filters, cin), (filters,))
    h, w = int(x.shape[1]), int(x.shape[2])
    out_shape = tf.stack([tf.shape(x)[0], 2 * h, 2 * w, filters])
    y = tf.nn.conv2d_transpose(x, k, output_shape=out_shape, strides=2, padding="SAME")
    y = tf.nn.bias_add(y, b)
    return leaky(y, LEAKY_CONV) if act else y


def max_pool_normalized(data, confidence):
    """utils/tf_utils.max_pool_normalized: argmax of the confidence picks the data."""
    pooled_conf, idx = tf.nn.max_pool_with_argmax(
        confidence, ksize=[1, 2, 2, 1], strides=[1, 2, 2, 1], padding="VALID",
        include_batch_in_index=True)
    pooled_data = tf.gather(tf.reshape(data, [-1]), idx)
    return pooled_data, pooled_conf


def upsample_nearest2x(x):
    """utils/tf_utils.upsample: legacy resize_nearest_neighbor to 2x."""
    h, w = int(x.shape[1]), int(x.shape[2])
    return v1.image.resize_nearest_neighbor(x, (2 * h, 2 * w))


def normal_convolution(S, data, conf, filters, num):
    """networks.normal_convolution (construct + call; 3x3, stride 1, SAME)."""
    cin = int(conf.shape[-1])
    kernels = S.get_variable("kernels_" + num, (3, 3, cin, filters))
    biases = S.tf_variable("biases" + num, (1, 1, 1, filters))
    with S.variable_scope("computations"):
        f = tf.nn.softplus(kernels)
        den = tf.nn.conv2d(conf, f, strides=1, padding="SAME")
        numer = tf.nn.conv2d(data * conf, f, strides=1, padding="SAME")
        nconv = numer / (den + NCONV_EPS)
        nconv = nconv + biases
        nconv = leaky(nconv, LEAKY_NCONV)
        cout = den / tf.reshape(tf.reduce_sum(f, axis=(0, 1, 2)), [1, 1, 1, filters])
    return nconv, cout


def cost_volume(x, warped, sr=SEARCH_RANGE):
    """modules.CostVolumeLayer (2d): channel (dy+sr)*(2sr+1)+(dx+sr) holds
    mean_c(x[y,x,c] * warped[y+dy, x+dx, c]) / (2sr+1)^2, zero outside the image.

    Built with one tf.pad and slicing; channel order = the original's keys
    [dy, dx] sorted lexicographically. ``cost_volume_literal`` below re-does
    the original's incremental pad-by-one + crop-by-one procedure and is checked
    bit-identical to this one.
    """
    h, w = int(x.shape[1]), int(x.shape[2])
    p = tf.pad(warped, [[0, 0], [sr, sr], [sr, sr], [0, 0]])
    out = []
    for dy in range(-sr, sr + 1):
        for dx in range(-sr, sr + 1):
            s = p[:, sr + dy: sr + dy + h, sr + dx: sr + dx + w, :]
            out.append(tf.reduce_mean(s * x, axis=-1))
    return tf.stack(out, axis=3) / float((2 * sr + 1) ** 2)


def cost_volume_literal(x, warped, sr=SEARCH_RANGE):
    """Incremental shifting as in the original (pad 1 then crop 1 on the other side)."""
    def down(t):   # t'[y] = t[y+1]
        return tf.pad(t, [[0, 0], [0, 1], [0, 0], [0, 0]])[:, 1:]

    def up(t):     # t'[y] = t[y-1]
        return tf.pad(t, [[0, 0], [1, 0], [0, 0], [0, 0]])[:, :-1]

    def left(t):   # t'[x] = t[x+1]
        return tf.pad(t, [[0, 0], [0, 0], [0, 1], [0, 0]])[:, :, 1:]

    def right(t):  # t'[x] = t[x-1]
        return tf.pad(t, [[0, 0], [0, 0], [1, 0], [0, 0]])[:, :, :-1]

    total, keys = [], []
    rows = [warped]
    for i in range(sr + 1):
        if i:
            rows = [down(rows[0]), up(rows[1])]
        for side, r in enumerate(rows):
            total.append(tf.reduce_mean(r * x, axis=-1))
            keys.append([i * (-1) ** side, 0])
            prev = [r, r]
            for j in range(1, sr + 1):
                cols = [left(prev[0]), right(prev[1])]
                for cs, c in enumerate(cols):
                    total.append(tf.reduce_mean(c * x, axis=-1))
                    keys.append([i * (-1) ** side, j * (-1) ** cs])
                prev = cols
        if i == 0:
            rows = rows * 2
    total = [t for t, _ in sorted(zip(total, keys, strict=True), key=lambda p: p[1])]
    return tf.stack(total, axis=3) / float((2 * sr + 1) ** 2)


def bilinear_warp_2d(x, flow):
    """utils/warping_utils.bilinear_warp_2d: out[y,x] = bilerp of x at
    (y+fy, x+fx); the four integer corner indices are clamped to the image
    separately, the weights are NOT changed by the clamping."""
    shp = tf.shape(x)
    b, h, w = shp[0], shp[1], shp[2]
    gb, gy, gx = tf.meshgrid(tf.range(b), tf.range(h), tf.range(w), indexing="ij")
    gb = tf.cast(gb, tf.float32)
    gy = tf.cast(gy, tf.float32)
    gx = tf.cast(gx, tf.float32)
    fx, fy = tf.unstack(flow, axis=-1)
    fx0 = tf.floor(fx)
    fx1 = fx0 + 1
    fy0 = tf.floor(fy)
    fy1 = fy0 + 1
    hl = tf.cast(h - 1, tf.float32)
    wl = tf.cast(w - 1, tf.float32)
    y0 = tf.clip_by_value(gy + fy0, 0.0, hl)
    y1 = tf.clip_by_value(gy + fy1, 0.0, hl)
    x0 = tf.clip_by_value(gx + fx0, 0.0, wl)
    x1 = tf.clip_by_value(gx + fx1, 0.0, wl)

    def g(yy, xx):
        return tf.gather_nd(x, tf.cast(tf.stack([gb, yy, xx], axis=3), tf.int32))

    c00 = tf.expand_dims((fy1 - fy) * (fx1 - fx), 3)
    c01 = tf.expand_dims((fy1 - fy) * (fx - fx0), 3)
    c10 = tf.expand_dims((fy - fy0) * (fx1 - fx), 3)
    c11 = tf.expand_dims((fy - fy0) * (fx - fx0), 3)
    return c00 * g(y0, x0) + c01 * g(y0, x1) + c10 * g(y1, x0) + c11 * g(y1, x1)


# =============================================================================
# The network (networks.py / modules.py / deeplidarflow.py semantics)
# =============================================================================
FILTERS = [16, 32, 64, 96, 128, 196]


def rgb_encoder(S, rgb):
    enc = []
    x = rgb
    for lev, nf in zip(range(1, 7), FILTERS, strict=True):
        a = convolution(S, x, nf, f"{lev}a", stride=2)
        b = convolution(S, a, nf, f"{lev}b")
        enc.append((a, b))
        x = b
    return enc


def rgb_decoder(S, enc, confs):
    top = tf.concat([enc[-1][1], confs[0]], axis=-1)
    pyr = [convolution(S, top, 196, "_pyr_top", ksize=1)]
    for i in range(4, 0, -1):
        feat = enc[i][1]
        ch = int(feat.shape[-1])
        up = upconvolution(S, pyr[-1], ch, f"_upsample{i + 1}to{i}")
        x = tf.concat([up + feat, confs[5 - i]], axis=-1)
        pyr.append(convolution(S, x, ch, f"_refine{i}"))
    return pyr


def depth_encoder(S, depth, masks):
    enc = []
    data, conf = depth, masks
    for i, nf in zip(range(6), FILTERS, strict=True):
        data, conf = max_pool_normalized(data, conf)
        data, conf = normal_convolution(S, data, conf, nf, f"{i}b")
        enc.append((data, conf))
    return enc


def depth_decoder(S, enc):
    d, c = enc[-1]
    dec = [normal_convolution(S, d, c, 196, "_pyr_top")]
    for i in range(4, 0, -1):
        norm, conf = enc[i]
        ch = int(norm.shape[-1])
        with S.variable_scope(f"upsampling{i + 1}to{i}"):
            un, uc = normal_convolution(S, dec[-1][0], dec[-1][1], ch, f"{i + 2}to{i + 1}")
            un = upsample_nearest2x(un)
            uc = upsample_nearest2x(uc)
        with S.variable_scope(f"refine{i}"):
            dec.append(normal_convolution(S, un + norm, uc + conf, ch, "refinement"))
    return dec


def final_network(S, images, depth, masks):
    """networks.final_network.__call__ -> dict with the fused features (level 6..2),
    the depth-decoder confidences (6..2) and the depth-encoder confidences (1..6)."""
    with S.variable_scope("rgb_features_encoder_decoder"):
        renc = rgb_encoder(S, images)
    with S.variable_scope("rgb_guidance_connections"):
        denc = depth_encoder(S, depth, masks)
    with S.variable_scope("final_scene_flow_tensors"):
        ddec = depth_decoder(S, denc)
        confs = [c for _, c in ddec]
        rdec = rgb_decoder(S, renc, confs)
        depth_feats = []
        for i, (n, _) in enumerate(ddec):
            x = n
            for s in "abcd":
                x = convolution(S, x, 16, f"depth_refine_{s}{i}")
            depth_feats.append(x)
        fused = []
        for i, (f1, f2) in enumerate(zip(rdec, depth_feats, strict=True)):
            x = tf.concat([f1, f2], axis=3)
            for s in "abcd":
                x = convolution(S, x, 64, f"concat_refine_{s}{i}")
            fused.append(x)
    return {"features": fused, "depth_dec_conf": confs,
            "depth_enc_conf": [c for _, c in denc]}


def scene_flow_estimator(S, x, is_output):
    """modules.SceneFlowEstimator(dense=False)."""
    for num, nf in zip(["1", "2", "3", "4"], [128, 128, 96, 64], strict=True):
        x = convolution(S, x, nf, num)
    f = convolution(S, x, 32, "_f")
    w = convolution(S, f, 4, "_w", act=False)
    if is_output:
        return f, w
    up_flow = upconvolution(S, w, 4, "_up_flow", act=False)
    up_feat = upconvolution(S, f, 4, "_up_feature", act=False)
    return w, up_flow, up_feat


def context_network(S, x):
    widths = [128, 128, 128, 96, 64, 32, 4]
    dilations = [1, 2, 4, 8, 16, 1, 1]
    for num, nf, d in zip("1234567", widths, dilations, strict=True):
        x = convolution(S, x, nf, num, dilation=d, act=(num != "7"))
    return x


def deeplidarflow_net(S, batch_images, gt_shape, interp_shape=None):
    """deeplidarflow.DeepLiDARFlowNet. batch_images [B, 2, H, W, 4].

    Returns (flows, out_sf, debug): flows = [w6, w5, w4, w3, refined2] in network
    units (before x20), out_sf = 20 * legacy-bilinear resize of refined2 to gt_shape.
    """
    dbg = {}
    with S.variable_scope("inputs"):
        frames = [batch_images[:, 0], batch_images[:, 1]]
        if interp_shape is not None:
            frames = [v1.image.resize(f, interp_shape, method="nearest") for f in frames]
        imgs = [f[..., :3] for f in frames]
        disps = [f[..., 3:4] for f in frames]
        confs = [tf.cast(tf.cast(d, tf.bool), tf.float32) for d in disps]
    dbg["interp_input"] = tf.stack(frames, axis=1)

    with S.variable_scope("model"):
        with S.variable_scope("guidance_network"):
            g0 = final_network(S, imgs[0], disps[0], confs[0])
            S.reuse_variables()
            g1 = final_network(S, imgs[1], disps[1], confs[1])
        dbg["guidance"] = (g0, g1)

        up_flow = up_feat = None
        flows = []
        for i, (cl1, cl2) in enumerate(zip(g0["features"], g1["features"], strict=True)):
            lev = 6 - i
            with S.variable_scope(f"warping_layer_{lev}"):
                cw1 = cl2 if i == 0 else bilinear_warp_2d(
                    cl2, up_flow[..., :2] * 20.0 / (2 ** lev))
            with S.variable_scope(f"cost_volume_layer_{lev}"):
                cv = leaky(cost_volume(cl1, cw1), LEAKY_CONV)
            with S.variable_scope(f"scene_flow_estimator_{lev}"):
                parts = [cv, cl1, cw1]
                if up_flow is not None:
                    parts.append(up_flow)
                if up_feat is not None:
                    parts.append(up_feat)
                x = tf.concat(parts, axis=-1)
                if i != 4:
                    w, up_flow, up_feat = scene_flow_estimator(S, x, is_output=False)
                    flows.append(w)
                else:
                    f, w = scene_flow_estimator(S, x, is_output=True)
        dbg["flow2_unrefined"] = w
        with S.variable_scope("context_network"):
            refined = w + context_network(S, tf.concat([f, w], axis=-1))
            flows.append(refined)
    out_sf = 20.0 * v1.image.resize(refined, gt_shape, method="bilinear")
    return flows, out_sf, dbg


# =============================================================================
# Part 1: per-op goldens
# =============================================================================
def _np(t):
    return np.asarray(t.numpy() if hasattr(t, "numpy") else t)


def legacy_src(out_size, in_size):
    """TF legacy (align_corners=False, half_pixel_centers=False) source coords, float32."""
    scale = np.float32(in_size) / np.float32(out_size)
    return np.arange(out_size, dtype=np.float32) * scale


def np_resize_nearest(x, size):
    iy = np.minimum(np.floor(legacy_src(size[0], x.shape[1])).astype(int), x.shape[1] - 1)
    ix = np.minimum(np.floor(legacy_src(size[1], x.shape[2])).astype(int), x.shape[2] - 1)
    return x[:, iy][:, :, ix]


def np_resize_bilinear(x, size):
    def axis(out, n):
        s = legacy_src(out, n)
        lo = np.floor(s).astype(int)
        hi = np.minimum(lo + 1, n - 1)
        return lo, hi, (s - lo).astype(np.float32)
    y0, y1, fy = axis(size[0], x.shape[1])
    x0, x1, fx = axis(size[1], x.shape[2])
    fx = fx[None, None, :, None]
    top = x[:, y0][:, :, x0] + (x[:, y0][:, :, x1] - x[:, y0][:, :, x0]) * fx
    bot = x[:, y1][:, :, x0] + (x[:, y1][:, :, x1] - x[:, y1][:, :, x0]) * fx
    return top + (bot - top) * fy[None, :, None, None]


def np_bilinear_warp(x, flow):
    b, h, w, _ = x.shape
    out = np.zeros_like(x, dtype=np.float64)
    for bb in range(b):
        for yy in range(h):
            for xx in range(w):
                fx, fy = flow[bb, yy, xx]
                fx0, fy0 = np.floor(fx), np.floor(fy)
                for dy, cy in ((0, fy0 + 1 - fy), (1, fy - fy0)):
                    for dx, cx in ((0, fx0 + 1 - fx), (1, fx - fx0)):
                        sy = int(np.clip(yy + fy0 + dy, 0, h - 1))
                        sx = int(np.clip(xx + fx0 + dx, 0, w - 1))
                        out[bb, yy, xx] += cy * cx * x[bb, sy, sx]
    return out


def make_ops_golden(rng, notes):
    g = {}

    # ---- a. legacy resizes ------------------------------------------------------
    H, W = 375, 1242
    idx = (np.arange(H)[:, None] * W + np.arange(W)[None, :]).astype(np.float32)
    idx = idx[None, :, :, None]
    out = _np(v1.image.resize(idx, [384, 1216], method="nearest"))
    raw = _np(tf.raw_ops.ResizeNearestNeighbor(images=idx, size=[384, 1216],
                                               align_corners=False, half_pixel_centers=False))
    assert np.array_equal(out, raw), "compat.v1 resize nearest != raw legacy op"
    o = out[0, :, :, 0].astype(np.int64)
    rows, cols = o[:, 0] // W, o[0, :] % W
    assert np.array_equal(o, rows[:, None] * W + cols[None, :])
    g["resize_nn_big_in_hw"] = np.array([H, W], np.int32)
    g["resize_nn_big_out_hw"] = np.array([384, 1216], np.int32)
    g["resize_nn_big_src_rows"] = rows.astype(np.int32)
    g["resize_nn_big_src_cols"] = cols.astype(np.int32)
    for name, o_, n_, got in (("rows", 384, H, rows), ("cols", 1216, W, cols)):
        f32 = np.minimum(np.floor(legacy_src(o_, n_)).astype(int), n_ - 1)
        exact = np.minimum((np.arange(o_) * n_) // o_, n_ - 1)
        notes.append(f"resize nearest {n_}->{o_} {name}: float32 formula matches TF: "
                     f"{np.array_equal(f32, got)}; exact-rational floor(i*in/out) differs "
                     f"from TF at {int((exact != got).sum())} of {o_} indices")

    xb = rng.standard_normal((1, 96, 304, 1)).astype(np.float32)
    yb = _np(v1.image.resize(xb, [375, 1242], method="bilinear"))
    rb = _np(tf.raw_ops.ResizeBilinear(images=xb, size=[375, 1242], align_corners=False,
                                       half_pixel_centers=False))
    assert np.array_equal(yb, rb), "compat.v1 resize bilinear != raw legacy op"
    g["resize_bl_big_in"] = xb
    g["resize_bl_big_out"] = yb
    notes.append("resize bilinear 96x304->375x1242: max |TF - numpy float32 legacy "
                 f"formula| = {np.abs(yb - np_resize_bilinear(xb, (375, 1242))).max():.3g}")

    # 26x39 -> 22x33: a case where TF's float32 scale/product gives a different nearest
    # source index than the exact floor(i * in / out) (rows: 1 index, cols: 2 indices)
    for (h, w), (oh, ow) in (((5, 7), (8, 3)), ((6, 10), (13, 17)), ((13, 17), (6, 10)),
                             ((26, 39), (22, 33))):
        x = rng.standard_normal((1, h, w, 2)).astype(np.float32)
        key = f"{h}x{w}_to_{oh}x{ow}"
        for meth, short, raw_op in (("nearest", "nn", tf.raw_ops.ResizeNearestNeighbor),
                                    ("bilinear", "bl", tf.raw_ops.ResizeBilinear)):
            y = _np(v1.image.resize(x, [oh, ow], method=meth))
            r = _np(raw_op(images=x, size=[oh, ow], align_corners=False,
                           half_pixel_centers=False))
            assert np.array_equal(y, r), (meth, key)
            g[f"resize_{short}_{key}_in"] = x
            g[f"resize_{short}_{key}_out"] = y
        assert np.array_equal(g[f"resize_nn_{key}_out"], np_resize_nearest(x, (oh, ow)))
        assert np.abs(g[f"resize_bl_{key}_out"] - np_resize_bilinear(x, (oh, ow))).max() < 1e-5
    for n_, o_ in ((26, 22), (39, 33)):
        exact = (np.arange(o_) * n_) // o_
        f32 = np.minimum(np.floor(legacy_src(o_, n_)).astype(int), n_ - 1)
        notes.append(f"resize nearest {n_}->{o_}: TF (float32 scale*i) picks "
                     f"{f32[exact != f32].tolist()} where exact floor(i*in/out) gives "
                     f"{exact[exact != f32].tolist()} "
                     f"(at i={np.nonzero(exact != f32)[0].tolist()})")

    # nearest 2x upsample (utils/tf_utils.upsample)
    x = rng.standard_normal((1, 3, 5, 2)).astype(np.float32)
    g["upsample2x_in"] = x
    g["upsample2x_out"] = _np(upsample_nearest2x(tf.constant(x)))
    assert np.array_equal(g["upsample2x_out"], x.repeat(2, 1).repeat(2, 2))

    # ---- b. conv2d ----------------------------------------------------------------
    for h, w in ((8, 10), (7, 9)):
        x = rng.standard_normal((1, h, w, 3)).astype(np.float32)
        k = (rng.standard_normal((3, 3, 3, 4)) / 3).astype(np.float32)
        g[f"conv_s2_{h}x{w}_x"], g[f"conv_s2_{h}x{w}_k"] = x, k
        g[f"conv_s2_{h}x{w}_y"] = _np(tf.nn.conv2d(x, k, strides=2, padding="SAME"))
    for d, (h, w) in ((2, (7, 9)), (4, (7, 9)), (16, (16, 32))):
        x = rng.standard_normal((1, h, w, 3)).astype(np.float32)
        k = (rng.standard_normal((3, 3, 3, 4)) / 3).astype(np.float32)
        y = _np(tf.nn.conv2d(x, k, strides=1, padding="SAME", dilations=d))
        ya = _np(tf.nn.atrous_conv2d(x, k, rate=d, padding="SAME"))
        notes.append(f"conv2d dilation {d} on {h}x{w}: max |native dilated - "
                     f"atrous (space_to_batch)| = {np.abs(y - ya).max():.3g}")
        g[f"conv_d{d}_x"], g[f"conv_d{d}_k"], g[f"conv_d{d}_y"] = x, k, y
    x = rng.standard_normal((1, 5, 6, 7)).astype(np.float32)
    k = (rng.standard_normal((1, 1, 7, 4)) / 3).astype(np.float32)
    g["conv_1x1_x"], g["conv_1x1_k"] = x, k
    g["conv_1x1_y"] = _np(tf.nn.conv2d(x, k, strides=1, padding="SAME"))

    # ---- c. conv2d_transpose (tf.layers.conv2d_transpose k4 s2 SAME) ------------------
    for h, w in ((3, 5), (4, 4), (1, 2)):
        x = rng.standard_normal((1, h, w, 3)).astype(np.float32)
        k = (rng.standard_normal((4, 4, 2, 3)) / 3).astype(np.float32)  # [kh,kw,out,in]
        y = _np(tf.nn.conv2d_transpose(x, k, output_shape=[1, 2 * h, 2 * w, 2], strides=2,
                                       padding="SAME"))
        # reference: out[2*i + t - 1] += x[i] * k[t] (pad_before = 1 per spatial axis)
        ref = np.zeros((1, 2 * h + 4, 2 * w + 4, 2))
        for i in range(h):
            for j in range(w):
                for ty in range(4):
                    for tx in range(4):
                        ref[0, 2 * i + ty + 1, 2 * j + tx + 1] += k[ty, tx] @ x[0, i, j]
        ref = ref[:, 2:2 + 2 * h, 2:2 + 2 * w]
        assert np.abs(ref - y).max() < 1e-4, "conv2d_transpose placement"
        g[f"deconv_{h}x{w}_x"], g[f"deconv_{h}x{w}_k"], g[f"deconv_{h}x{w}_y"] = x, k, y
    notes.append("conv2d_transpose k4 s2 SAME, output 2x: out[2*i + t - 1] += k[t] x[i] "
                 "(crop 1 at the start and 2 at the end of the full 'VALID' transpose)")

    # ---- d. max_pool_with_argmax + gather ------------------------------------------------
    conf = np.zeros((2, 6, 8, 4), np.float32)
    conf[..., 0] = rng.integers(0, 2, (2, 6, 8))                      # binary mask: ties
    conf[..., 1] = (rng.random((2, 6, 8)) < 0.15).astype(np.float32)  # sparse: 0-windows
    conf[..., 2] = rng.integers(0, 3, (2, 6, 8)) * 0.25               # 3-level ties
    conf[0, :, :, 3] = 0.5                                            # all-equal nonzero
    conf[1, 2:4, 2:6, 3] = 1.0
    conf[:, 0:2, 0:2, :] = 0.0                                        # all-zero windows
    data = rng.standard_normal((2, 6, 8, 4)).astype(np.float32)
    pc, am = tf.nn.max_pool_with_argmax(conf, ksize=[1, 2, 2, 1], strides=[1, 2, 2, 1],
                                        padding="VALID", include_batch_in_index=True)
    pd_, pc2 = max_pool_normalized(tf.constant(data), tf.constant(conf))
    assert np.array_equal(_np(pc), _np(pc2))
    g["mp_conf"], g["mp_data"] = conf, data
    g["mp_pooled_conf"], g["mp_argmax"], g["mp_pooled_data"] = _np(pc), _np(am), _np(pd_)
    # tie-breaking: first max in row-major window order?
    B, Hh, Ww, C = conf.shape
    first = np.zeros(am.shape, np.int64)
    for b in range(B):
        for i in range(Hh // 2):
            for j in range(Ww // 2):
                for c in range(C):
                    win = conf[b, 2 * i:2 * i + 2, 2 * j:2 * j + 2, c].ravel()
                    t = int(np.argmax(win))
                    first[b, i, j, c] = ((b * Hh + 2 * i + t // 2) * Ww + 2 * j + t % 2) * C + c
    notes.append("max_pool_with_argmax ties: TF picks the FIRST maximum in row-major window "
                 f"order (incl. all-zero windows -> top-left): {np.array_equal(first, _np(am))}; "
                 "flat index = ((b*H + y)*W + x)*C + c, dtype " + str(_np(am).dtype))
    x = (rng.random((1, 7, 9, 2)) < 0.3).astype(np.float32)
    dx = rng.standard_normal((1, 7, 9, 2)).astype(np.float32)
    pd_, pc_ = max_pool_normalized(tf.constant(dx), tf.constant(x))
    _, am = tf.nn.max_pool_with_argmax(x, 2, 2, "VALID", include_batch_in_index=True)
    g["mp_odd_conf"], g["mp_odd_data"] = x, dx
    g["mp_odd_pooled_conf"], g["mp_odd_argmax"], g["mp_odd_pooled_data"] = (
        _np(pc_), _np(am), _np(pd_))

    # ---- e. activations ------------------------------------------------------------------
    a = np.array([-100, -7.5, -3, -1, -0.5, -0.01, 0, 0.01, 0.5, 1, 3, 7.5, 100], np.float32)
    g["act_x"] = a
    g["leaky_default_y"] = _np(tf.nn.leaky_relu(a))
    g["leaky_01_y"] = _np(tf.nn.leaky_relu(a, alpha=0.1))
    notes.append(f"tf.nn.leaky_relu default alpha = {float(g['leaky_default_y'][0] / a[0])}")
    s = np.concatenate([np.linspace(-120, 120, 49), [-30, -20, -15, -10, 10, 15, 15.5, 20, 30,
                                                     1e-3, -1e-3, 88, 89, -88, -89]])
    s = s.astype(np.float32)
    g["softplus_x"] = s
    g["softplus_y"] = _np(tf.nn.softplus(s))

    # ---- extras: cost volume, warp, one normalized convolution -------------------------
    x = rng.standard_normal((1, 5, 7, 3)).astype(np.float32)
    wp = rng.standard_normal((1, 5, 7, 3)).astype(np.float32)
    cv = _np(cost_volume(tf.constant(x), tf.constant(wp)))
    cvl = _np(cost_volume_literal(tf.constant(x), tf.constant(wp)))
    assert np.array_equal(cv, cvl), "pad+slice cost volume != literal incremental version"
    ref = np.zeros((1, 5, 7, 81))
    for dy in range(-4, 5):
        for dx in range(-4, 5):
            for yy in range(5):
                for xx in range(7):
                    if 0 <= yy + dy < 5 and 0 <= xx + dx < 7:
                        ref[0, yy, xx, (dy + 4) * 9 + dx + 4] = (
                            x[0, yy, xx] * wp[0, yy + dy, xx + dx]).mean() / 81
    assert np.abs(ref - cv).max() < 1e-6
    g["cv_x"], g["cv_warped"], g["cv_y"] = x, wp, cv

    x = rng.standard_normal((2, 5, 7, 3)).astype(np.float32)
    fl = rng.uniform(-8, 8, (2, 5, 7, 2)).astype(np.float32)
    fl[0, 0, 0] = [0.0, 0.0]
    fl[0, 0, 1] = [2.0, -1.0]          # integer flow
    fl[0, 1, 1] = [-0.25, 0.75]
    wy = _np(bilinear_warp_2d(tf.constant(x), tf.constant(fl)))
    assert np.abs(wy - np_bilinear_warp(x, fl)).max() < 1e-5
    g["warp_x"], g["warp_flow"], g["warp_y"] = x, fl, wy

    data = rng.standard_normal((1, 6, 8, 3)).astype(np.float32)
    conf = (rng.random((1, 6, 8, 3)) < 0.3).astype(np.float32) * rng.random((1, 6, 8, 3))
    conf = conf.astype(np.float32)
    conf[0, :3, :3, :] = 0.0  # a region without any support
    kern = (rng.standard_normal((3, 3, 3, 5)) * 0.5).astype(np.float32)
    bias = (rng.standard_normal((1, 1, 1, 5)) * 0.1).astype(np.float32)
    S = EagerScopes(params={"kernels_t": kern, "biasest": bias})
    n, c = normal_convolution(S, tf.constant(data), tf.constant(conf), 5, "t")
    g["nconv_data"], g["nconv_conf"], g["nconv_kernels"], g["nconv_biases"] = (
        data, conf, kern, bias)
    g["nconv_out"], g["nconv_cout"] = _np(n), _np(c)
    return g


# =============================================================================
# Part 2: network goldens
# =============================================================================
def make_inputs(rng, h, w):
    base = rng.uniform(-0.4, 0.6, (h, w, 3))
    f1 = np.roll(base, (1, 3), axis=(0, 1)) + rng.normal(0, 0.02, (h, w, 3))
    frames = []
    for img in (base, f1):
        img = np.clip(img, -0.4, 0.6)
        disp = np.where(rng.random((h, w)) < 0.05, rng.standard_normal((h, w)), 0.0)
        frames.append(np.concatenate([img, disp[..., None]], axis=-1))
    return np.stack(frames)[None].astype(np.float32)


def run_eager(params, x, gt_shape, interp_shape):
    S = EagerScopes(params=params)
    flows, out_sf, dbg = deeplidarflow_net(S, tf.constant(x), gt_shape, interp_shape)
    return S, flows, out_sf, dbg


def graph_variables_and_outputs(weights, x, gt_shape, interp_shape, run):
    """Build the net as a tf.compat.v1 graph; return ({name: shape}, outputs or None)."""
    g = tf.Graph()
    with g.as_default():
        S = GraphScopes()
        flows, out_sf, _ = deeplidarflow_net(S, tf.constant(x), gt_shape, interp_shape)
        gvars = v1.global_variables()
        names = {v.name[:-2]: tuple(v.shape.as_list()) for v in gvars}
        assert all(v.name.endswith(":0") for v in gvars)
        outs = None
        if run:
            with v1.Session(graph=g) as sess:
                sess.run(v1.global_variables_initializer())
                for v in gvars:
                    v.load(weights[v.name[:-2]], sess)
                outs = sess.run({"flows": flows, "out_sf": out_sf})
    return names, outs


def verify_tf1_naming_tiny():
    """A tiny TF1 graph exercising rules 1-5 directly (independent of the net code)."""
    g = tf.Graph()
    with g.as_default():
        with v1.variable_scope("model"):
            with v1.variable_scope("guidance_network") as scope:
                for _ in range(2):
                    with v1.variable_scope("rgb_guidance_connections"):
                        v1.get_variable("kernels_0b", [3, 3, 1, 2])
                        v1.Variable(tf.zeros([1, 1, 1, 2]), name="biases0b")
                        with v1.variable_scope("conv1a", reuse=v1.AUTO_REUSE):
                            v1.get_variable("kernel", [3, 3, 2, 2])
                            v1.get_variable("bias", [2])
                    with v1.variable_scope("final_scene_flow_tensors"):
                        with v1.variable_scope("upsampling5to4"):
                            v1.get_variable("kernels_6to5", [3, 3, 2, 2])
                            v1.Variable(tf.zeros([1, 1, 1, 2]), name="biases6to5")
                    scope.reuse_variables()
        got = sorted(v.name[:-2] for v in v1.global_variables())
    want = sorted([
        "model/guidance_network/rgb_guidance_connections/kernels_0b",
        "model/guidance_network/rgb_guidance_connections/biases0b",
        "model/guidance_network/rgb_guidance_connections/conv1a/kernel",
        "model/guidance_network/rgb_guidance_connections/conv1a/bias",
        "model/guidance_network/rgb_guidance_connections_1/biases0b",
        "model/guidance_network/final_scene_flow_tensors/upsampling5to4/kernels_6to5",
        "model/guidance_network/final_scene_flow_tensors/upsampling5to4/biases6to5",
        "model/guidance_network/final_scene_flow_tensors_1/upsampling5to4/biases6to5",
    ])
    assert got == want, (got, want)
    return got


def make_net_golden(rng, notes, check):
    g = {}
    # Record the variable list (lazy weights) on a small input; shapes don't depend on H, W.
    x1 = make_inputs(rng, 64, 128)
    S, flows_rec, out_rec, _ = run_eager(None, x1, [64, 128], None)
    var_shapes = dict(sorted(S.shapes.items()))
    weights = make_weights(var_shapes, seed=0)
    for k in var_shapes:
        assert np.array_equal(weights[k], S.values[k])

    # (i) FT3D-like: 64x128 used directly, output 64x128
    S1, flows, out_sf, dbg = run_eager(weights, x1, [64, 128], None)
    assert S1.shapes == S.shapes
    assert np.array_equal(_np(out_sf), _np(out_rec))
    levels = [6, 5, 4, 3, 2]
    g["i_input"] = x1
    g["i_gt_shape"] = np.array([64, 128], np.int32)
    for lev, f in zip(levels, flows, strict=True):
        g[f"i_flow{lev}"] = _np(f)
    g["i_flow2_unrefined"] = _np(dbg["flow2_unrefined"])
    g["i_out_sf"] = _np(out_sf)
    for fr, gd in enumerate(dbg["guidance"]):
        for lev, f, c in zip(levels, gd["features"], gd["depth_dec_conf"], strict=True):
            g[f"i_guid_feat_f{fr}_l{lev}"] = _np(f)
            g[f"i_depth_dec_conf_f{fr}_l{lev}"] = _np(c)
        for lev, c in zip(range(1, 7), gd["depth_enc_conf"], strict=True):
            g[f"i_depth_enc_conf_f{fr}_l{lev}"] = _np(c)

    # (ii) KITTI-like: 70x140 -> legacy nearest to 64x128 -> ... -> legacy bilinear to 70x140
    x2 = make_inputs(rng, 70, 140)
    _, flows2, out_sf2, dbg2 = run_eager(weights, x2, [70, 140], [64, 128])
    g["ii_input"] = x2
    g["ii_gt_shape"] = np.array([70, 140], np.int32)
    g["ii_interp_shape"] = np.array([64, 128], np.int32)
    g["ii_interp_input"] = _np(dbg2["interp_input"])
    for lev, f in zip(levels, flows2, strict=True):
        g[f"ii_flow{lev}"] = _np(f)
    g["ii_flow2_unrefined"] = _np(dbg2["flow2_unrefined"])
    g["ii_out_sf"] = _np(out_sf2)

    names = sorted(var_shapes)
    g["weight_names"] = np.array(names)
    g["weight_abs_sums"] = np.array([checksum(weights[n]) for n in names], np.float64)

    # --- naming verification against real TF1 graph semantics ---
    verify_tf1_naming_tiny()
    gnames, gouts = graph_variables_and_outputs(weights, x1, [64, 128], None, run=check)
    assert gnames == var_shapes, (
        f"graph names differ: only eager {sorted(set(var_shapes) - set(gnames))} "
        f"only graph {sorted(set(gnames) - set(var_shapes))}")
    notes.append(f"graph-mode TF1 variable names == eager emulation: {len(gnames)} variables")
    if check:
        d = max(np.abs(a - _np(b)).max() for a, b in zip(gouts["flows"], flows, strict=True))
        d = max(d, np.abs(gouts["out_sf"] - _np(out_sf)).max())
        notes.append(f"graph Session run vs eager, case (i): max |diff| = {d:.3g}")
        assert d < 1e-4
        _, gouts2 = graph_variables_and_outputs(weights, x2, [70, 140], [64, 128], run=True)
        d2 = max(np.abs(a - _np(b)).max() for a, b in zip(gouts2["flows"], flows2, strict=True))
        d2 = max(d2, np.abs(gouts2["out_sf"] - _np(out_sf2)).max())
        notes.append(f"graph Session run vs eager, case (ii): max |diff| = {d2:.3g}")
        assert d2 < 1e-4
    return g, var_shapes


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--check", action="store_true",
                    help="also run the net as a TF1 graph in a Session and compare")
    ap.add_argument("--out", default=FIXTURES)
    args = ap.parse_args()
    os.makedirs(args.out, exist_ok=True)
    notes = []

    ops = make_ops_golden(np.random.default_rng(1234), notes)
    net, var_shapes = make_net_golden(np.random.default_rng(5678), notes, args.check)

    for k, v in list(ops.items()) + list(net.items()):
        if v.dtype.kind == "f":
            assert np.all(np.isfinite(v)), k
    for case in ("i", "ii"):
        print(f"case ({case}):")
        for k in [f"{case}_flow{lev}" for lev in (6, 5, 4, 3)] + [
                f"{case}_flow2_unrefined", f"{case}_flow2", f"{case}_out_sf"]:
            v = net[k]
            stds = v.reshape(-1, v.shape[-1]).std(axis=0)
            print(f"  {k:22s} {str(v.shape):18s} std/ch {np.array2string(stds, precision=3)}"
                  f"  max|.| {np.abs(v).max():.3f}")
            assert stds.min() > 1e-3, f"{k} is (nearly) constant"
    for fr in (0, 1):
        for lev in (6, 5, 4, 3, 2):
            v = net[f"i_guid_feat_f{fr}_l{lev}"]
            c = net[f"i_depth_dec_conf_f{fr}_l{lev}"]
            print(f"  guidance f{fr} l{lev}: feat std {v.std():.3f}  "
                  f"dec-conf mean {c.mean():.3f} max {c.max():.3f}")

    np.savez_compressed(os.path.join(args.out, "tf_ops_golden.npz"), **ops)
    np.savez_compressed(os.path.join(args.out, "tf_net_golden.npz"), **net)
    with open(os.path.join(args.out, "tf_variables.json"), "w") as f:
        json.dump({k: list(v) for k, v in sorted(var_shapes.items())}, f, indent=1)
        f.write("\n")

    total = sum(int(np.prod(s)) for s in var_shapes.values())
    frame1 = sum(int(np.prod(s)) for k, s in var_shapes.items() if "_1/" in k)
    print(f"variables: {len(var_shapes)}, total parameters: {total} "
          f"({frame1} of them in the frame-1 copies of the normal-conv biases)")
    for n in notes:
        print("note:", n)
    for fn in ("tf_ops_golden.npz", "tf_net_golden.npz", "tf_variables.json"):
        print(f"{fn}: {os.path.getsize(os.path.join(args.out, fn)) / 1e6:.2f} MB")


if __name__ == "__main__":
    main()
