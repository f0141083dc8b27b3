"""DeepLiDARFlow's architecture as data: every width, level and constant in one place.

Values of the original TF 1.14 release (``networks.py``, ``modules.py``,
``deeplidarflow.py``, ``utils/tf_utils.py``); the block files, the channel
widths (:mod:`.widths`) and the channel-dependency graph (:mod:`.channels`)
read them from here.
"""

#: pyramid levels with a scene-flow estimator, coarse to fine
LEVELS = (6, 5, 4, 3, 2)
#: output channels of the RGB encoder levels 1..6 (``conv{i}a``/``conv{i}b``), also
#: of the sparse-depth encoder (``nconv{i-1}b``) and both decoders per level
PYRAMID_FILTERS = (16, 32, 64, 96, 128, 196)
#: fusion module (``guidance_network/fusion``): the depth refinement convs and the
#: fused convs of every level
DEPTH_REFINE_FILTERS = 16
FUSED_FILTERS = 64
#: scene-flow estimator convs (``modules.SceneFlowEstimator``, non-dense)
ESTIMATOR_FILTERS = (("conv1", 128), ("conv2", 128), ("conv3", 96), ("conv4", 64), ("conv_f", 32))
#: scene-flow channels: u, v (optical flow), d0, d1 (disparities at t and t+1)
SF_CHANNELS = 4
#: context network ``conv1`` .. ``conv7``: (filters, dilation)
CONTEXT_LAYERS = ((128, 1), (128, 2), (128, 4), (96, 8), (64, 16), (32, 1), (4, 1))
#: cost-volume search range in pixels: (2 r + 1)^2 = 81 channels
SEARCH_RANGE = 4
CV_CHANNELS = (2 * SEARCH_RANGE + 1) ** 2
#: the network predicts flow / 20
FLOW_SCALE = 20.0
#: six stride-2 levels whose transposed convs must double exactly
SIZE_MULTIPLE = 64
#: leaky ReLU slope of ``tf_utils.convolution`` / ``upconvolution`` and the cost volume
LEAKY_SLOPE = 0.1
#: normalized convolutions: ``tf.nn.leaky_relu``'s default slope, and the denominator's eps
NCONV_SLOPE = 0.2
NCONV_EPS = 1e-5
#: frames t and t+1 run through the guidance network as one batch
NUM_FRAMES = 2
