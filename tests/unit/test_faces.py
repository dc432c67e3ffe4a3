"""The node pack's face restoration outside ComfyUI: geometry, the model check, and a frame restored with the
fixture RestoreFormer (a real spandrel architecture, random weights)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from spandrel.architectures.ESRGAN import ESRGAN

from custom_nodes import faces
from tests.conftest import face_image

cv2 = pytest.importorskip("cv2", reason="opencv-python-headless (the faces extra) is not installed")


def tiny_restoreformer() -> object:
    from spandrel.architectures.RestoreFormer import RestoreFormer

    torch.manual_seed(0)
    net = RestoreFormer(n_embed=64, embed_dim=32, ch=32, ch_mult=(1, 1, 2, 2, 4), num_res_blocks=1, z_channels=32)
    return faces.load_face_model(net.state_dict(), "tiny_restoreformer.safetensors")


def as_tensor(img) -> torch.Tensor:  # noqa: ANN001
    return torch.from_numpy(np.asarray(img, dtype=np.float32) / 255.0)


@pytest.mark.parametrize(("box", "size", "padding", "square"), [
    ((40, 40, 60, 60), (100, 100), 0.5, (30, 30, 70, 70)),       # grown by half its size each side
    ((0, 0, 20, 20), (100, 100), 0.5, (0, 0, 40, 40)),           # shifted inside at the corner
    ((90, 10, 100, 40), (100, 80), 0.0, (70, 10, 100, 40)),      # made square, kept inside on the right
    ((10, 10, 90, 70), (100, 80), 1.0, (10, 0, 90, 80)),         # larger than the image: its short side
])
def test_face_square(box, size, padding, square) -> None:  # noqa: ANN001
    assert faces.face_square(box, *size, padding) == square


def test_feather_is_zero_at_the_edges_and_one_inside() -> None:
    ramp = faces.feather(100)
    assert ramp[0] < 0.1 and ramp[-1] < 0.1 and ramp[50] == 1.0 and ramp == ramp[::-1]


def test_a_model_that_is_not_for_faces_is_refused_naming_it() -> None:
    state = ESRGAN(in_nc=3, out_nc=3, num_filters=16, num_blocks=1, scale=4).state_dict()
    with pytest.raises(ValueError, match=r"x4\.pth is an ESRGAN model for SR, not a face restoration model"):
        faces.load_face_model(state, "x4.pth")


def test_the_drawn_face_is_found() -> None:
    (box,) = faces.find_faces(np.asarray(face_image(128)))
    x0, y0, x1, y1 = box
    assert 60 < (x0 + x1) / 2 < 196 and 60 < (y0 + y1) / 2 < 196


def test_only_the_face_is_restored() -> None:
    model = tiny_restoreformer()
    image = as_tensor(face_image(128))
    out, found = faces.restore_image(model, image, strength=1.0, mode="detect faces", padding=0.3, device="cpu")
    assert found == 1 and out.shape == image.shape
    (box,) = faces.find_faces(np.asarray(face_image(128)))
    x0, y0, x1, y1 = faces.face_square(box, 256, 256, 0.3)
    outside = torch.ones(256, 256, dtype=torch.bool)
    outside[y0:y1, x0:x1] = False
    assert torch.equal(out[outside], image[outside])  # the rest of the frame is left exactly as it was
    assert (out[y0:y1, x0:x1] - image[y0:y1, x0:x1]).abs().mean() > 0.01


def test_strength_zero_and_no_face_leave_the_image_alone() -> None:
    model = tiny_restoreformer()
    image = as_tensor(face_image(128))
    out, _ = faces.restore_image(model, image, strength=0.0, mode="detect faces", padding=0.3, device="cpu")
    assert torch.allclose(out, image)
    flat = torch.full((96, 128, 3), 0.5)
    out, found = faces.restore_image(model, flat, strength=1.0, mode="detect faces", padding=0.3, device="cpu")
    assert found == 0 and torch.equal(out, flat)


def test_whole_image_mode_restores_a_face_crop_at_its_size() -> None:
    model = tiny_restoreformer()
    crop = as_tensor(face_image(64).resize((100, 120)))
    out, found = faces.restore_image(model, crop, strength=1.0, mode="whole image", padding=0.3, device="cpu")
    assert found == 1 and out.shape == crop.shape and (out - crop).abs().mean() > 0.01
