"""The trainer's device and precision paths (device.py), checked without a GPU.

What runs here: the training steps of both stages on PyTorch's "meta" device under a
guard that fails any operation mixing meta tensors with host tensors, which is the
mistake that would stop a CUDA run (a batch, an index or a freshly made tensor left on
the CPU); bfloat16 autocast on the CPU, the same autocast code CUDA takes; the device
names, the errors and the backend choice. What does not run here: CUDA kernels, NCCL,
bf16 speed and memory on a GPU (docs/RESULTS.md says what was measured where).
"""

import numpy as np
import pytest
import torch
from torch.overrides import TorchFunctionMode
from torch.utils._pytree import tree_flatten

from l2rec_train import device, paths
from l2rec_train.backbone import Backbone
from l2rec_train.collab import collab_step
from l2rec_train.config import Config
from l2rec_train.model import L2Rec
from l2rec_train.train import make_optimizer, train_step

META = torch.device("meta")


@pytest.fixture(autouse=True)
def meta_masks():
    """Boolean masks (u[mask]) need nonzero(), which meta tensors can only fake: as if
    every element were set. Shapes then still agree between scores and targets."""
    from torch.fx.experimental import _config

    with _config.patch(meta_nonzero_assume_all_nonzero=True):
        yield


class OneDeviceOnly(TorchFunctionMode):
    """Fails every torch operation whose tensor arguments (beyond 0-d scalars, which CUDA
    also takes from the host) live on more than one device."""

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        tensors = [a for a in tree_flatten((args, kwargs))[0] if isinstance(a, torch.Tensor)]
        devices = {str(t.device) for t in tensors if t.dim() > 0}
        if len(devices) > 1:
            raise AssertionError(f"{getattr(func, '__name__', func)} mixes devices {devices}")
        return func(*args, **kwargs)


def _tiny_model(encoder: str = "gru", fusion: str = "adaptive") -> L2Rec:
    if not paths.backbone_path().exists():
        pytest.skip("backbone missing: run scripts/fetch-assets")
    cfg = Config(
        name="tiny-device",
        encoder=encoder,
        fusion=fusion,
        phi_init="zero" if encoder == "gru" else "normal",
        views={"behavioral": {"experts": 3, "k": 2}, "semantic": {"experts": 2, "k": 1}},
        lora={"rank": 2, "alpha": 4.0, "layers": [17], "modules": ["attn_q", "attn_v"]},
        d_r=8,
        d_phi=3,
        max_items=5,
    )
    bb = Backbone(layers=range(17, 18), embeddings=False)
    torch.manual_seed(0)
    text = 30.0 * torch.randn(12, bb.config.n_embd) + 100.0
    return L2Rec(cfg, bb, 4, text)


def _batch(model: L2Rec, seed: int = 0) -> tuple:
    """A teacher-forcing batch as PromptSet builds it: host tensors, right padded."""
    g = torch.Generator().manual_seed(seed)
    d, B, T, M = model.backbone.config.n_embd, 2, 7, 3
    views = {
        v: (torch.randn(B, T, d, generator=g), torch.tensor([[2, 4, 6], [1, 3, 3]]))
        for v in ("behavioral", "semantic")
    }
    history = (torch.tensor([[0, 5, 7, 9], [3, 2, 0, 0]]), torch.tensor([[0, 1, 2], [0, 0, 0]]))
    inputs = {**views, "history": (*history, torch.tensor([3, 1]))}
    targets = torch.tensor([[5, 7, 9], [2, 0, 0]])
    mask = torch.tensor([[True, True, True], [True, False, False]])
    assert M == targets.shape[1]
    return torch.tensor([0, 3]), inputs, targets, mask


def test_a_training_step_keeps_every_tensor_on_the_models_device():
    model = device.place(_tiny_model(), META)
    assert model.device == META and model.backbone.device == META
    optimizer = make_optimizer(model, model.cfg)
    with OneDeviceOnly():
        ce, n = train_step(model, model, optimizer, _batch(model), model.cfg)
    assert ce.device == META and n == 4  # the step counts targets on the host
    for name, p in model.named_parameters():
        assert p.device == META, name
        if name.startswith(("experts.", "proj.", "fusion.", "encoder.")):
            assert p.grad is not None and p.grad.device == META, name


def test_a_collaborative_step_keeps_every_tensor_on_the_models_device():
    model = device.place(_tiny_model(fusion="collab"), META)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    windows = [np.array([0, 5, 7, 9]), np.array([3, 2])]
    with OneDeviceOnly():
        ce, n = collab_step(model, optimizer, windows, "off")
    assert ce.device == META and n == 4
    assert model.encoder.gru.weight_ih_l0.grad.device == META


def test_the_guard_catches_a_host_tensor_in_a_device_computation():
    w = torch.ones(4, 4, device=META)
    with OneDeviceOnly(), pytest.raises(AssertionError, match="mixes devices"):
        torch.ones(2, 4) @ w  # meta's own checks let this one through


def test_bf16_autocast_trains_close_to_f32():
    """Same weights and batch: bf16's first loss is within 1% of f32's and its next steps
    follow f32's within 5%; the backbone's matmuls ran in bfloat16, the loss in float32."""
    losses = {}
    for amp in ("off", "bf16"):
        model = _tiny_model()
        model.cfg.train.amp = amp
        with torch.no_grad():  # B = 0 would hide the experts' precision
            for b in model.experts.parameters():
                b.normal_(std=0.05)
        optimizer = make_optimizer(model, model.cfg)
        losses[amp] = [
            float(train_step(model, model, optimizer, _batch(model), model.cfg)[0])
            for _ in range(3)
        ]
    f32, bf16 = np.array(losses["off"]), np.array(losses["bf16"])
    assert np.isfinite(bf16).all() and not np.array_equal(f32, bf16)  # bf16 really ran
    assert abs(bf16[0] - f32[0]) <= 0.01 * f32[0]
    assert (np.abs(bf16 - f32) <= 0.05 * f32).all(), (f32, bf16)
    model = _tiny_model()
    users, inputs, _, _ = _batch(model)
    h = inputs["semantic"][0]
    with device.autocast(torch.device("cpu"), "bf16"):
        assert model.backbone._linear(17, "attn_q", h, None).dtype == torch.bfloat16
        scores = model.scores(model.user_vectors(users, inputs)[:, 0])
        ce = torch.nn.functional.cross_entropy(scores, torch.tensor([1, 2]))
    assert ce.dtype == torch.float32


def test_ranks_come_back_on_the_host_whatever_the_scores_device():
    from l2rec_train import metrics

    scores = torch.tensor([[0.1, 0.9, 0.5, 0.5], [0.3, 0.2, 0.1, 0.0]])
    r = metrics.ranks(scores, torch.tensor([2, 0]), [np.array([1]), np.array([])])
    assert r.device.type == "cpu" and r.tolist() == [0, 0]


def test_device_names_and_what_this_machine_has():
    assert device.resolve("cpu") == torch.device("cpu")
    assert device.resolve("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")
    for bad in ("tpu", "cpu:1", "cuda:x:y", "gpu"):
        with pytest.raises(ValueError, match="train.device"):
            Config(train={"device": bad})
    with pytest.raises(ValueError, match="train.amp"):
        Config(train={"amp": "fp8"})
    if not torch.cuda.is_available():
        with pytest.raises(device.DeviceError, match="--device cpu"):
            device.resolve("cuda")
        with pytest.raises(SystemExit, match="sees no GPU|CPU-only"):
            device.resolve_or_exit("cuda:0")


def test_backend_is_nccl_between_gpus_and_gloo_between_cpus(monkeypatch):
    monkeypatch.delenv("L2REC_DIST_BACKEND", raising=False)
    assert device.backend(torch.device("cuda", 0)) == "nccl"
    assert device.backend(torch.device("cpu")) == "gloo"
    monkeypatch.setenv("L2REC_DIST_BACKEND", "gloo")
    assert device.backend(torch.device("cuda", 0)) == "gloo"


def test_to_moves_nested_batches_and_leaves_the_rest():
    batch = (torch.zeros(2), {"a": (torch.ones(1), None), "b": [torch.ones(3)]}, 7)
    moved = device.to(batch, META)
    assert moved[0].device == META and moved[1]["a"][0].device == META
    assert moved[1]["a"][1] is None and moved[1]["b"][0].device == META and moved[2] == 7
