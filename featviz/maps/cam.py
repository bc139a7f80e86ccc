"""Class activation maps: the formulas of the CAM family, as tensor maths.

Every method draws M^c = ReLU(sum_k w^c_k A_k) (or its element-wise form) from a layer's
activations A: float32 (N, C, H, W) and, for the gradient methods, g = dY^c/dA: float32
(N, C, H, W), the gradient of the class LOGIT Y^c. Each function here is one method's weights
or map, with its paper; the model passes that produce A, g and the masked or ablated scores
live in :mod:`featviz.maps.explain`. Maps come out at the layer's resolution, float32 (N, H, W),
>= 0, unscaled; :func:`cam_at_input` brings them to the network input's size in [0, 1].
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

#: Every method, in the order the README presents them.
METHODS = ("cam", "gradcam", "gradcam++", "xgradcam", "layercam", "hirescam", "scorecam", "ablationcam",
           "eigencam")
#: Methods that need dY^c/dA (one backward per target rank and batch).
GRADIENT_METHODS = frozenset({"gradcam", "gradcam++", "xgradcam", "layercam", "hirescam"})
#: Methods whose map is sum_k w_k A_k with one weight per channel (their w goes into summary.json).
CHANNEL_WEIGHTING = frozenset({"cam", "gradcam", "gradcam++", "xgradcam", "scorecam", "ablationcam"})
#: Methods that explain no class (one map per photo, whatever the targets).
CLASS_FREE = frozenset({"eigencam"})


def weighted_map(activations: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """ReLU(sum_k w_k A_k): activations (N, C, H, W), weights (N, C) -> float32 (N, H, W) >= 0."""
    return torch.relu(torch.einsum("nchw,nc->nhw", activations.float(), weights.float()))


def cam_weights(fc_weight: torch.Tensor, classes: torch.Tensor) -> torch.Tensor:
    """CAM (Zhou et al., "Learning Deep Features for Discriminative Localization", CVPR 2016):
    w^c_k = W_{c,k}, the final linear layer's weight from channel k to class c, for a network that
    ends in global average pooling + that one linear layer (then Y^c = mean_ij sum_k w^c_k A_k(i,j)
    + b_c). fc_weight: (classes, C); classes: int64 (N,) -> (N, C)."""
    return fc_weight.float()[classes]


def gradcam_weights(grads: torch.Tensor) -> torch.Tensor:
    """Grad-CAM (Selvaraju et al., ICCV 2017): w^c_k = 1/(HW) sum_ij dY^c/dA_k(i,j).
    grads (N, C, H, W) -> (N, C)."""
    return grads.float().mean(dim=(2, 3))


def gradcampp_weights(activations: torch.Tensor, grads: torch.Tensor) -> torch.Tensor:
    """Grad-CAM++ (Chattopadhay et al., WACV 2018), the closed form for the exponential score
    S^c = exp(Y^c), whose higher derivatives are powers of g = dY^c/dA (the constant exp(Y^c)
    factors cancel once the map is scaled):

        alpha_k(i,j) = g^2 / (2 g^2 + sum_ab A_k(a,b) * g^3),   0 where g = 0
        w^c_k = sum_ij alpha_k(i,j) ReLU(g_k(i,j))

    As the paper's eq. 19 and pytorch-grad-cam; torch-cam sums A * g^3 over (a, b) instead, see
    the README. activations, grads (N, C, H, W) -> (N, C)."""
    g = grads.float()
    g2 = g * g
    total = activations.float().sum(dim=(2, 3), keepdim=True)
    denominator = 2 * g2 + total * g2 * g
    safe = torch.where(denominator != 0, denominator, torch.ones_like(denominator))
    alpha = torch.where((g != 0) & (denominator != 0), g2 / safe, torch.zeros_like(g2))
    return (alpha * torch.relu(g)).sum(dim=(2, 3))


def xgradcam_weights(activations: torch.Tensor, grads: torch.Tensor) -> torch.Tensor:
    """XGrad-CAM (Fu et al., "Axiom-based Grad-CAM", BMVC 2020):
    w^c_k = sum_ij (A_k(i,j) / sum_ab A_k(a,b)) dY^c/dA_k(i,j); a channel summing to 0 gets 0.
    activations, grads (N, C, H, W) -> (N, C)."""
    a = activations.float()
    total = a.sum(dim=(2, 3))
    numerator = (a * grads.float()).sum(dim=(2, 3))
    return torch.where(total != 0, numerator / torch.where(total != 0, total, torch.ones_like(total)),
                       torch.zeros_like(total))


def layercam_map(activations: torch.Tensor, grads: torch.Tensor) -> torch.Tensor:
    """Layer-CAM (Jiang et al., IEEE TIP 2021), element-wise:
    M^c(i,j) = ReLU(sum_k ReLU(dY^c/dA_k(i,j)) A_k(i,j)). -> (N, H, W)."""
    return torch.relu((torch.relu(grads.float()) * activations.float()).sum(dim=1))


def hirescam_map(activations: torch.Tensor, grads: torch.Tensor) -> torch.Tensor:
    """HiResCAM (Draelos & Carin, arXiv:2011.08891, 2020), element-wise:
    M^c(i,j) = ReLU(sum_k dY^c/dA_k(i,j) A_k(i,j)). -> (N, H, W)."""
    return torch.relu((grads.float() * activations.float()).sum(dim=1))


def eigencam_map(activations: torch.Tensor) -> torch.Tensor:
    """Eigen-CAM (Muhammad & Yeasin, IJCNN 2020): the projection of the activations on their
    first principal component, M(i,j) = ReLU((A(i,j) - mean) . v_1), with A seen as HW samples
    of C features (centred per channel, as pytorch-grad-cam does). An SVD leaves the sign of
    v_1 arbitrary; featviz fixes it so that the projection correlates positively with the
    channel-mean activation (1/C sum_k A_k), so the map shows where the layer is active rather
    than where it is not. activations (N, C, H, W) -> (N, H, W)."""
    n, c, h, w = activations.shape
    samples = activations.double().reshape(n, c, h * w).transpose(1, 2)  # (N, HW, C)
    centred = samples - samples.mean(dim=1, keepdim=True)
    _, _, vh = torch.linalg.svd(centred, full_matrices=False)
    projection = (centred @ vh[:, 0, :, None])[..., 0]  # (N, HW)
    mean_activation = samples.mean(dim=2)
    mean_activation = mean_activation - mean_activation.mean(dim=1, keepdim=True)
    sign = torch.where((projection * mean_activation).sum(dim=1) < 0, -1.0, 1.0).to(projection.dtype)
    return torch.relu(projection * sign[:, None]).reshape(n, h, w).float()


def scorecam_masks(activations: torch.Tensor, input_hw: tuple[int, int]) -> torch.Tensor:
    """Score-CAM's masks H_k: each channel upsampled to the input size (bilinear,
    ``align_corners=False``, as the authors' code) and min-max scaled to [0, 1] on its own (a
    constant channel gives an all-zero mask). activations (N, C, h, w) -> float32 (N, C, H, W).

    Constancy is decided on the channel at the layer's resolution: upsampling a constant channel
    (always, at a 1x1 layer) leaves rounding noise of ~1e-7 that min-max scaling would stretch
    to a full 0..1 mask."""
    flat = activations.float().flatten(2)
    varies = (flat.amax(dim=2) > flat.amin(dim=2))[:, :, None, None]  # (N, C, 1, 1)
    up = F.interpolate(activations.float(), size=input_hw, mode="bilinear", align_corners=False)
    low = up.amin(dim=(2, 3), keepdim=True)
    span = up.amax(dim=(2, 3), keepdim=True) - low
    varies = varies & (span > 0)
    return torch.where(varies, (up - low) / torch.where(varies, span, torch.ones_like(span)), torch.zeros_like(up))


def ablationcam_weights(logit: torch.Tensor, ablated: torch.Tensor) -> torch.Tensor:
    """Ablation-CAM (Desai & Ramaswamy, WACV 2020): w^c_k = (y^c - y^c_k) / y^c, the relative
    drop of the class logit when channel k of the layer is set to zero. logit (N,), ablated
    (N, C): the logit with each channel zeroed -> (N, C)."""
    y = logit.float()[:, None]
    safe = torch.where(y != 0, y, torch.ones_like(y))
    return torch.where(y != 0, (y - ablated.float()) / safe, torch.zeros_like(ablated.float()))


def cam_at_input(maps: torch.Tensor, input_hw: tuple[int, int]) -> torch.Tensor:
    """Layer-resolution maps float (N, h, w) -> float32 (N, H_in, W_in) in [0, 1]: bilinear
    upsampling (``align_corners=False``, each cell covers its own area, as the overlays) to the
    network input's size, then min-max scaling per map (a constant map becomes all 0). This is
    the map a faithfulness score should order the input's pixels by. Constancy is decided at the
    layer's resolution (see :func:`scorecam_masks`)."""
    flat = maps.float().flatten(1)
    varies = (flat.amax(dim=1) > flat.amin(dim=1))[:, None, None]  # (N, 1, 1)
    up = F.interpolate(maps.float()[:, None], size=input_hw, mode="bilinear", align_corners=False)[:, 0]
    low = up.amin(dim=(1, 2), keepdim=True)
    span = up.amax(dim=(1, 2), keepdim=True) - low
    varies = varies & (span > 0)
    return torch.where(varies, (up - low) / torch.where(varies, span, torch.ones_like(span)), torch.zeros_like(up))
