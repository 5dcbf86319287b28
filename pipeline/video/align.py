"""5-point face alignment: a similarity transform onto the ArcFace template, warped on the device.

As face-recognition pipelines align faces (insightface's ``face_align.norm_crop``, Deng et al. 2019,
"ArcFace"): the similarity (rotation, uniform scale, translation) that maps the five detected
landmarks onto the standard 112 x 112 template in the least-squares sense (Umeyama 1991,
"Least-squares estimation of transformation parameters between two point patterns", the estimate
scikit-image's ``SimilarityTransform`` makes), then the frame is resampled through its inverse
(bilinear, black outside the frame, as ``cv2.warpAffine`` does there). For another ``size`` the
template is scaled by size / 112, as insightface does for multiples of 112.

Both steps are batched torch (``torch.linalg.svd``, ``affine_grid`` / ``grid_sample``), so they run
on the detector's device with the frames already there; the tests check the estimate against
scikit-image's. Pixel coordinates put pixel centres at integers (OpenCV's, scikit-image's and
MTCNN's convention).
"""

import torch
import torch.nn.functional as F

# Eye centres, nose tip, mouth corners of a 112 x 112 aligned crop (insightface's ``arcface_dst``).
TEMPLATE_112 = (
    (38.2946, 51.6963),
    (73.5318, 51.5014),
    (56.0252, 71.7366),
    (41.5493, 92.3655),
    (70.7299, 92.2041),
)


def template(size: int = 112) -> torch.Tensor:
    """The five template points (5, 2) for a ``size`` x ``size`` crop, pixels."""
    return torch.tensor(TEMPLATE_112, dtype=torch.float64) * (size / 112)


def estimate_similarity(src: torch.Tensor, dst: torch.Tensor) -> torch.Tensor:
    """Least-squares similarity transforms mapping ``src`` points onto ``dst`` (Umeyama, with
    scale).

    Args:
        src: (B, N, 2) points, e.g. detected landmarks in frame pixels.
        dst: (N, 2) or (B, N, 2) target points, e.g. the template in crop pixels.
    Returns:
        (B, 2, 3) float64 matrices ``[s R | t]`` with ``dst ~ s R src + t``.
    """
    src = src.double()
    dst = dst.double().to(src.device).expand_as(src)
    mu_s, mu_d = src.mean(dim=1, keepdim=True), dst.mean(dim=1, keepdim=True)  # (B, 1, 2)
    s_c, d_c = src - mu_s, dst - mu_d  # (B, N, 2)
    cov = d_c.transpose(1, 2) @ s_c / src.shape[1]  # (B, 2, 2)
    U, S, Vh = torch.linalg.svd(cov)
    sign = torch.ones_like(S)  # (B, 2)
    sign[:, 1] = torch.sign(torch.det(U) * torch.det(Vh))  # a reflection is not a similarity
    sign[sign == 0] = 1.0
    R = U @ torch.diag_embed(sign) @ Vh  # (B, 2, 2)
    var_s = s_c.pow(2).sum(dim=2).mean(dim=1).clamp_min(1e-12)  # (B,)
    scale = (S * sign).sum(dim=1) / var_s  # (B,)
    t = mu_d[:, 0] - scale[:, None] * (R @ mu_s[:, 0, :, None])[..., 0]  # (B, 2)
    return torch.cat([scale[:, None, None] * R, t[..., None]], dim=2)


def invert_similarity(m: torch.Tensor) -> torch.Tensor:
    """The inverse of similarity matrices (B, 2, 3): ``x = A^-1 (y - t)``."""
    A, t = m[:, :, :2], m[:, :, 2:]
    A_inv = torch.linalg.inv(A)  # (B, 2, 2)
    return torch.cat([A_inv, -A_inv @ t], dim=2)


def apply_transform(m: torch.Tensor, points: torch.Tensor) -> torch.Tensor:
    """Points (B, N, 2) through matrices (B, 2, 3) -> (B, N, 2)."""
    m = m.to(points.dtype)
    return points @ m[:, :, :2].transpose(1, 2) + m[:, None, :, 2]


def warp_faces(frames: torch.Tensor, index: torch.Tensor, to_crop: torch.Tensor,
               size: int) -> torch.Tensor:
    """Aligned crops: each frame resampled through the inverse of its frame -> crop transform.

    Args:
        frames: uint8 (B, H, W, 3) decoded frames, on any device.
        index: (N,) long, the frame of each crop (a frame may give several crops, one per face).
        to_crop: (N, 2, 3) frame-pixel -> crop-pixel similarity of each crop
            (``estimate_similarity``).
        size: crop side S, pixels.
    Returns:
        uint8 (N, S, S, 3) crops on the frames' device.
    """
    if len(index) == 0:
        return torch.zeros((0, size, size, 3), dtype=torch.uint8, device=frames.device)
    H, W = frames.shape[1:3]
    # (N, 2, 3) crop pixel -> frame pixel
    to_frame = invert_similarity(to_crop.double()).to(frames.device)
    L, b = to_frame[:, :, :2], to_frame[:, :, 2]  # (N, 2, 2), (N, 2)
    # grid_sample's normalised coordinates (align_corners=False): pixel x <-> (2x + 1) / W - 1
    to_norm = torch.tensor([[2.0 / W, 0.0], [0.0, 2.0 / H]], dtype=torch.float64,
                           device=frames.device)
    offset = torch.tensor([1.0 / W - 1.0, 1.0 / H - 1.0], dtype=torch.float64, device=frames.device)
    half = size / 2.0
    centre = torch.full((2,), (size - 1) / 2.0, dtype=torch.float64, device=frames.device)
    theta = torch.empty((len(index), 2, 3), dtype=torch.float64, device=frames.device)
    theta[:, :, :2] = to_norm @ L * half  # output normalised -> input normalised
    theta[:, :, 2] = (to_norm @ (L @ centre + b)[..., None])[..., 0] + offset
    source = frames[index.to(frames.device)].permute(0, 3, 1, 2).float()  # (N, 3, H, W)
    # (N, S, S, 2)
    grid = F.affine_grid(theta.float(), [len(index), 3, size, size], align_corners=False)
    # (N, 3, S, S)
    crops = F.grid_sample(source, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    # (N, S, S, 3)
    return crops.round_().clamp_(0, 255).to(torch.uint8).permute(0, 2, 3, 1).contiguous()
