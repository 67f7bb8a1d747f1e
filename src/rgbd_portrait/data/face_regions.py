"""The region of a portrait that a speaking mouth moves, and how far the mouth is open, from its face-mesh
landmarks.

Mouth-only animation keeps the photo everywhere else; the motion stage learns to fill the region from the rest of
the frame and the audio (`train.motion.mouth_inpainting`). Both use these functions, so the region they see is
drawn the same way.
"""

from __future__ import annotations

import numpy as np
import torch

# MediaPipe face-mesh indices: the point below the nose, and the face outline's jaw from cheek to cheek; the
# inner lips' middle points, and the top of the face and the chin.
SUBNASALE = 2
JAW_OUTLINE = (132, 58, 172, 136, 150, 149, 176, 148, 152, 377, 400, 378, 379, 365, 397, 288, 361)
INNER_LIPS = (13, 14)
FACE_TOP_AND_CHIN = (10, 152)
# The open jaw drops by up to about a quarter of the nose-to-chin height: the region reaches that far below the
# chin, and a tenth of the jaw's width past its sides.
JAW_DROP = 0.25
SIDE_MARGIN = 0.1


def mouth_box(landmarks: np.ndarray) -> np.ndarray:
    """(top, bottom, left, right) in the landmarks' pixels: from below the nose to under the open chin, between
    the jaw's sides, given face-mesh `landmarks` (478, ≥2)."""
    jaw = np.asarray(landmarks, dtype=np.float64)[list(JAW_OUTLINE), :2]
    top = float(landmarks[SUBNASALE][1])
    chin = jaw[:, 1].max()
    margin = SIDE_MARGIN * (jaw[:, 0].max() - jaw[:, 0].min())
    return np.array(
        [top, chin + JAW_DROP * (chin - top), jaw[:, 0].min() - margin, jaw[:, 0].max() + margin], dtype=np.float32
    )


def mouth_opening(landmarks: np.ndarray) -> float:
    """Inner-lip distance over face height for 478 face-mesh landmarks (x, y[, z]) in any pixel units."""
    points = np.asarray(landmarks, dtype=np.float64)[:, :2]
    lips = np.linalg.norm(points[INNER_LIPS[0]] - points[INNER_LIPS[1]])
    height = np.linalg.norm(points[FACE_TOP_AND_CHIN[0]] - points[FACE_TOP_AND_CHIN[1]])
    return float(lips / height) if height > 0 else float("nan")


def box_cells(box: torch.Tensor, latent_size: tuple[int, int], side: int) -> torch.Tensor:
    """The latent cells (…, h, w) bool that boxes (…, 4) of `mouth_box` touch, in a `side`-pixel image (pixel
    centres at integers): a cell is in when the centre of any of its pixels is. A box of NaNs touches none."""
    height, width = latent_size
    top, bottom, left, right = (box[..., index, None] for index in range(4))
    # The first and last pixel centre of each cell along an axis.
    first_row = torch.arange(height, device=box.device) * (side / height)
    first_column = torch.arange(width, device=box.device) * (side / width)
    in_rows = (first_row + side / height - 1 >= top) & (first_row <= bottom)
    in_columns = (first_column + side / width - 1 >= left) & (first_column <= right)
    return in_rows[..., :, None] & in_columns[..., None, :]
