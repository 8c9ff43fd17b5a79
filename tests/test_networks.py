"""Tests of pipeline.networks: one contract over every registered network, then our three's extras."""

from __future__ import annotations

import re

import pytest
import torch
import torch.nn.functional as F

from pipeline.config import build_component
from pipeline.errors import ConfigError
from pipeline.networks import NETWORKS, DenseUNet, ResUNet, UNet, count_parameters, network_table
from pipeline.networks._base import pad_to_multiple
from pipeline.schema import Component

OURS = ("unet", "resunet", "denseunet")

# Small widths so the file runs in seconds on 2 CPU cores; a network missing here is tested
# with its defaults, so registering one is enough to have it tested.
SMALL = {
    "unet": {"channels": (4, 8, 16)},
    "resunet": {"channels": (4, 8, 16)},
    "denseunet": {"channels": (4, 8, 16), "growth_rate": 2, "dense_layers": 2},
    "monai_unet": {"channels": (4, 8, 16), "strides": (2, 2), "num_res_units": 1},
    "monai_basic_unet": {"features": (4, 4, 8, 8, 16, 4)},
    "monai_dynunet": {"strides": (1, 2, 2), "filters": (4, 8, 16)},
    "monai_segresnet": {"init_filters": 8, "blocks_down": (1, 1, 1), "blocks_up": (1, 1)},
}
SIZES = {(2, "even"): (32, 32), (2, "odd"): (37, 29), (3, "even"): (16, 16, 16), (3, "odd"): (17, 19, 15)}


@pytest.fixture(autouse=True)
def _seed_and_threads():
    torch.manual_seed(0)
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    yield
    torch.set_num_threads(threads)


def build(name: str, dims: int, out_channels: int = 3, **kwargs):
    return NETWORKS.build(name, dims, 1, out_channels, **{**SMALL.get(name, {}), **kwargs})


def input_size(net, dims: int, parity: str) -> tuple[int, ...]:
    size = SIZES[(dims, parity)]
    d = net.size_divisor
    if min(size) < 2 * d:  # keep >1 voxel at the coarsest level (instance norm needs it)
        size = (2 * d,) * dims if parity == "even" else (2 * d + 1, 2 * d + 3, 2 * d - 1)[:dims]
    return size


@pytest.mark.parametrize("parity", ["even", "odd"])
@pytest.mark.parametrize("dims", [2, 3])
@pytest.mark.parametrize("name", NETWORKS.names())
def test_contract_shape_backward_finite(name, dims, parity):
    net = build(name, dims).train()
    size = input_size(net, dims, parity)
    x = torch.randn(2, 1, *size, requires_grad=True)
    y = net(x)
    assert isinstance(y, torch.Tensor)
    assert y.shape == (2, 3, *size)
    assert torch.isfinite(y).all()
    (y**2).mean().backward()
    assert torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0
    grads = [p.grad for p in net.parameters() if p.requires_grad]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)
    net.eval()
    with torch.no_grad():
        assert net(x).shape == (2, 3, *size)


@pytest.mark.parametrize("name", NETWORKS.names())
def test_too_small_input_names_smallest_size(name):
    net = build(name, 2).eval()
    d = net.size_divisor
    assert isinstance(d, int) and d > 1
    ok = torch.zeros(1, 1, 2 * d, 2 * d)
    assert net(ok).shape[2:] == ok.shape[2:]
    with pytest.raises(ValueError, match=rf"too small: the smallest size this network accepts is {d} per axis"):
        net(torch.zeros(1, 1, 2 * d, d - 1))


@pytest.mark.parametrize("name", NETWORKS.names())
def test_wrong_rank_or_channels_shows_shape(name):
    net = build(name, 2)
    with pytest.raises(ValueError, match=r"expected a BCHW input with C=1, got shape \(1, 2, 32, 32\)"):
        net(torch.zeros(1, 2, 32, 32))
    with pytest.raises(ValueError, match=r"got shape \(1, 32, 32\)"):
        net(torch.zeros(1, 32, 32))


@pytest.mark.parametrize("dims", [2, 3])
@pytest.mark.parametrize("name", OURS)
def test_deep_supervision_heads(name, dims):
    net = build(name, dims, deep_supervision=True, ds_heads=2).train()
    size = SIZES[(dims, "odd")]
    outs = net(torch.randn(2, 1, *size))
    assert isinstance(outs, list) and len(outs) == 3
    for k, out in enumerate(outs):
        assert out.shape == (2, 3, *(-(-s // 2**k) for s in size)), k
    sum(o.mean() for o in outs).backward()
    head_convs = [m for m in net.aux_heads.modules() if isinstance(m, (torch.nn.Conv2d, torch.nn.Conv3d))]
    assert len(head_convs) == 2 and all(c.weight.grad.abs().sum() > 0 for c in head_convs)
    net.eval()
    out = net(torch.randn(2, 1, *size))
    assert isinstance(out, torch.Tensor) and out.shape == (2, 3, *size)


@pytest.mark.parametrize("name", OURS)
def test_default_ds_heads_is_levels_minus_two(name):
    net = NETWORKS.build(name, 2, 1, 2, channels=(4, 8, 16, 32, 64), deep_supervision=True).train()
    assert len(net(torch.randn(2, 1, 32, 32))) == 1 + 3


@pytest.mark.parametrize("pad_mode", ["replicate", "zeros"])
@pytest.mark.parametrize("name", OURS)
def test_padding_is_at_the_end_and_cropped(name, pad_mode):
    net = build(name, 2, pad_mode=pad_mode).eval()
    x = torch.randn(1, 1, 37, 29)
    padded = pad_to_multiple(x, net.size_divisor, pad_mode)
    assert padded.shape[2:] == (40, 32)
    assert torch.equal(padded[:, :, :37, :29], x)
    expected_border = x[:, :, -1:, :29] if pad_mode == "replicate" else torch.zeros(1, 1, 1, 29)
    assert torch.equal(padded[:, :, 39:, :29], expected_border)
    with torch.no_grad():
        full = net(padded)
        assert torch.allclose(net(x), full[:, :, :37, :29], atol=1e-5)


def test_ds_head_cells_cover_input_blocks():
    """Head k at (padded / 2^k) cropped to ceil(input / 2^k): equal to the heads of the padded input."""
    net = build("unet", 2, deep_supervision=True, ds_heads=2).train()
    x = torch.randn(2, 1, 37, 29)
    with torch.no_grad():  # instance norm: same in train and eval, no running stats
        outs = net(x)
        outs_padded = net(pad_to_multiple(x, 4))
    for k, (a, b) in enumerate(zip(outs, outs_padded, strict=True)):
        assert torch.allclose(a, b[:, :, : a.shape[2], : a.shape[3]], atol=1e-5), k


@pytest.mark.parametrize(
    "kwargs, pattern",
    [
        ({"spatial_dims": 4}, r"spatial_dims must be 2 or 3, got 4"),
        ({"channels": ()}, r"channels needs at least 2 levels"),
        ({"channels": (4, 0)}, r"channels must be positive ints, got \(4, 0\)"),
        ({"norm": "layer"}, r"norm must be one of \['batch', 'instance', 'group'\], got 'layer'"),
        ({"act": "tanhh"}, r"act must be one of .*got 'tanhh'"),
        ({"dropout": 1.5}, r"dropout must be in \[0, 1\), got 1.5"),
        ({"pad_mode": "reflect"}, r"pad_mode must be one of \['replicate', 'zeros'\], got 'reflect'"),
        ({"upsample": "pixelshuffle"}, r"upsample must be one of \['transpose', 'interp'\]"),
        ({"ds_heads": 3}, r"ds_heads must be an int in \[1, 2\]"),
    ],
)
@pytest.mark.parametrize("name", OURS)
def test_bad_arguments_raise_value_error(name, kwargs, pattern):
    args = {"spatial_dims": 2, "in_channels": 1, "out_channels": 2, "channels": (4, 8, 16), **kwargs}
    with pytest.raises(ValueError, match=pattern):
        NETWORKS.build(name, **args)


def test_family_specific_arguments():
    with pytest.raises(ValueError, match=r"downsample must be one of \['pool', 'conv'\], got 'avg'"):
        UNet(2, 1, 2, downsample="avg")
    with pytest.raises(ValueError, match=r"dilations needs one entry per level \(3\)"):
        ResUNet(2, 1, 2, channels=(4, 8, 16), dilations=(1, 2))
    with pytest.raises(ValueError, match=r"dilations\[1\] must be a positive int or a non-empty list"):
        ResUNet(2, 1, 2, channels=(4, 8, 16), dilations=(1, (), 2))
    with pytest.raises(ValueError, match=r"growth_rate must be a positive int or one per level \(3\)"):
        DenseUNet(2, 1, 2, channels=(4, 8, 16), growth_rate=(4, 4))
    with pytest.raises(TypeError, match=r"checkpointing must be a bool, got 1"):
        DenseUNet(2, 1, 2, checkpointing=1)


@pytest.mark.parametrize("dims", [2, 3])
def test_unet_variants(dims):
    size = SIZES[(dims, "odd")]
    for kw in ({"downsample": "conv"}, {"upsample": "interp"}, {"norm": "group", "norm_groups": 4, "act": "prelu"}):
        net = build("unet", dims, **kw).train()
        assert net(torch.randn(2, 1, *size)).shape == (2, 3, *size), kw
    pooled, strided = build("unet", dims), build("unet", dims, downsample="conv")
    assert count_parameters(pooled) == count_parameters(strided)  # same convs, the first one strided


def test_resunet_dilations_and_parallel_branches():
    net = ResUNet(2, 1, 2, channels=(4, 8, 16, 32))
    assert net.dilations == ((1,), (1,), (1, 2), (1, 2, 4))
    assert [len(u.branches) for u in net.encoder] == [1, 1, 2, 3]
    assert net.encoder[3].branches[2][0].dilation == (4, 4)
    assert [len(u.branches) for u in net.decoder] == [1, 1, 2]
    plain = ResUNet(2, 1, 2, channels=(4, 8, 16, 32), dilations=1)
    assert all(len(u.branches) == 1 and u.branches[0][0].dilation == (1, 1) for u in plain.encoder)
    assert isinstance(plain.encoder[1].shortcut[0], torch.nn.Conv2d)  # projection where the shape changes
    assert isinstance(ResUNet(2, 4, 2, channels=(4, 8)).encoder[0].shortcut, torch.nn.Identity)


def test_denseunet_checkpointing_matches_plain():
    x = torch.randn(2, 1, 37, 29)
    nets = [build("denseunet", 2, checkpointing=c).train() for c in (False, True)]
    nets[1].load_state_dict(nets[0].state_dict())
    grads = []
    for net in nets:
        out = net(x)
        (out**2).mean().backward()
        grads.append([p.grad for p in net.parameters()])
    assert torch.allclose(nets[0](x), nets[1](x), atol=1e-6)
    for a, b in zip(*grads, strict=True):
        assert torch.allclose(a, b, atol=1e-6)


def test_denseunet_multiscale_input_receives_the_image():
    net = build("denseunet", 2, multiscale_input=True).train()
    assert len(net.inputs) == 2 and net.encoder[1].layers[0].norm.num_features == 4 + 4
    net(torch.randn(2, 1, 37, 29)).mean().backward()
    assert all(conv.weight.grad.abs().sum() > 0 for conv in net.inputs)
    assert count_parameters(net) > count_parameters(build("denseunet", 2))


def test_denseunet_default_growth_adds_block_width():
    net = DenseUNet(2, 1, 2, channels=(8, 16, 32), dense_layers=4)
    assert [b.layers[0].conv.out_channels for b in net.encoder] == [2, 4, 8]
    assert DenseUNet(2, 1, 2, channels=(8, 16, 32), growth_rate=6).encoder[2].layers[0].conv.out_channels == 6


def disks(n: int = 4, size: int = 32, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Noisy images of one disk each (``B1HW``) and their masks (``BHW``)."""
    g = torch.Generator().manual_seed(seed)
    yy, xx = torch.meshgrid(torch.arange(size), torch.arange(size), indexing="ij")
    images, masks = [], []
    for _ in range(n):
        cy, cx = torch.randint(8, size - 8, (2,), generator=g)
        r = torch.randint(4, 8, (1,), generator=g)
        mask = ((yy - cy) ** 2 + (xx - cx) ** 2 <= r**2).float()
        images.append(mask + 0.6 * torch.randn(size, size, generator=g))
        masks.append(mask.long())
    return torch.stack(images)[:, None], torch.stack(masks)


@pytest.mark.slow
@pytest.mark.parametrize("name", OURS)
def test_learns_to_segment_disks(name):
    x, y = disks()
    net = NETWORKS.build(name, 2, 1, 2, channels=(8, 16, 32))
    opt = torch.optim.Adam(net.parameters(), lr=1e-2)
    net.train()
    for _ in range(60):
        opt.zero_grad()
        F.cross_entropy(net(x), y).backward()
        opt.step()
    net.eval()
    with torch.no_grad():
        pred = net(x).argmax(1)
    dice = 2 * ((pred == 1) & (y == 1)).sum() / ((pred == 1).sum() + (y == 1).sum())
    assert dice >= 0.9


@pytest.mark.parametrize("name", OURS)
def test_built_from_config(name):
    raw = {"name": name, "spatial_dims": 3, "in_channels": 1, "out_channels": 2, "channels": [4, 8, 16]}
    raw.update({"norm": "group", "deep_supervision": True, "ds_heads": 1, "dropout": 0})
    spec = Component(NETWORKS).validate(raw, "network")
    net = build_component(spec, NETWORKS, where="network")
    assert isinstance(net, NETWORKS.get(name)) and net.size_divisor == 4 and net.deep_supervision
    with pytest.raises(ConfigError, match=r"network.deep_supervision: expected bool, got str 'yes'"):
        Component(NETWORKS).validate({**raw, "deep_supervision": "yes"}, "network")
    with pytest.raises(ConfigError, match=r"network.channel: .* no argument 'channel' \(did you mean 'channels'\?\)"):
        Component(NETWORKS).validate({**raw, "channel": [4, 8]}, "network")
    with pytest.raises(ConfigError, match=r"network: " + name + r": norm must be one of"):
        build_component({**spec, "norm": "layer"}, NETWORKS, where="network")


@pytest.mark.parametrize("name", NETWORKS.names())
def test_every_registered_default_validates_as_config(name):
    """Every default has a YAML-compatible type, so ``Component`` can check it."""
    params, _ = Component(NETWORKS).parameters(name)
    for pname, p in params.items():
        if pname in ("spatial_dims", "in_channels", "out_channels"):
            continue
        default = p.default
        assert default is None or isinstance(default, (bool, int, float, str, tuple)), (pname, default)
        if default is not None:
            value = list(default) if isinstance(default, tuple) else default
            raw = {"name": name, "spatial_dims": 2, "in_channels": 1, "out_channels": 2, pname: value}
            assert Component(NETWORKS).validate(raw, "network")[pname] == value


def test_network_table_lists_every_network_with_counts():
    table = network_table()
    for name in NETWORKS.names():
        row = re.search(rf"^\| {name} \| (\d+\.\d\d) M \| (\d+\.\d\d) M \| (\d+) \| \S.+ \|$", table, re.M)
        assert row, name
    row = re.search(r"^\| unet \| (\d+\.\d\d) M \| (\d+\.\d\d) M \| 16 \|", table, re.M)
    assert float(row.group(1)) == round(count_parameters(UNet(2, 1, 2)) / 1e6, 2)
    assert float(row.group(2)) == round(count_parameters(UNet(3, 1, 2)) / 1e6, 2)
    assert network_table(in_channels=4, out_channels=5) != table


# Anisotropic topologies (nnU-Net's pool_op_kernel_sizes / conv_kernel_sizes): thick-slice 3D data
# whose third axis is never pooled, and a 2D one pooling one axis once less.
ANISO = {
    3: {"strides": [[2, 2, 1], [2, 2, 1]], "kernel_sizes": [[3, 3, 1], [3, 3, 1], [3, 3, 3]], "size": (37, 45, 9)},
    2: {"strides": [[2, 2], [2, 1]], "kernel_sizes": [3, 3, [3, 1]], "size": (37, 23)},
}
ANISO_DIVISOR = {3: (4, 4, 1), 2: (4, 2)}


@pytest.mark.parametrize("dims", [2, 3])
@pytest.mark.parametrize("name", OURS)
def test_contract_anisotropic_strides(name, dims):
    spec = ANISO[dims]
    net = build(name, dims, strides=spec["strides"], kernel_sizes=spec["kernel_sizes"]).train()
    assert net.size_divisor == ANISO_DIVISOR[dims] and net.size_divisors == ANISO_DIVISOR[dims]
    x = torch.randn(2, 1, *spec["size"], requires_grad=True)
    y = net(x)
    assert y.shape == (2, 3, *spec["size"])
    (y**2).mean().backward()
    assert torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in net.parameters())
    net.eval()
    with torch.no_grad():
        assert net(x).shape == (2, 3, *spec["size"])


@pytest.mark.parametrize("name", OURS)
def test_anisotropic_deep_supervision_heads_per_axis(name):
    spec = ANISO[3]
    net = build(name, 3, strides=spec["strides"], kernel_sizes=spec["kernel_sizes"], deep_supervision=True, ds_heads=2)
    outs = net.train()(torch.randn(2, 1, *spec["size"]))
    assert [tuple(o.shape[2:]) for o in outs] == [(37, 45, 9), (19, 23, 9), (10, 12, 9)]


@pytest.mark.parametrize("name", OURS)
def test_unpooled_axis_with_kernel_one_keeps_slices_independent(name):
    """Strides 1 and kernels 1 along the third axis: every slice is segmented on its own (batch
    norm in eval mode mixes nothing), so changing slice 0 leaves the others' logits unchanged."""
    net = build(name, 3, strides=[[2, 2, 1]] * 2, kernel_sizes=[[3, 3, 1]] * 3, norm="batch").eval()
    x = torch.randn(1, 1, 20, 20, 5)
    x2 = x.clone()
    x2[..., 0] += 5.0
    with torch.no_grad():
        a, b = net(x), net(x2)
    assert torch.allclose(a[..., 1:], b[..., 1:], atol=1e-5)
    assert not torch.allclose(a[..., 0], b[..., 0], atol=1e-3)


def test_anisotropic_layers_and_nnunet_stride_convention():
    net = UNet(3, 1, 2, channels=(4, 8, 16), strides=[[1, 1, 1], [2, 2, 1], [2, 2, 2]], kernel_sizes=[[3, 3, 1], 3, 3])
    assert net.strides == ((2, 2, 1), (2, 2, 2)) and net.size_divisor == (4, 4, 2)
    assert net.encoder[0][0][0].kernel_size == (3, 3, 1) and net.encoder[0][0][0].padding == (1, 1, 0)
    assert net.encoder[1][0].kernel_size == (2, 2, 1)  # the max-pool of level 1
    assert net.up[0].conv.stride == (2, 2, 1) and net.up[1].conv.stride == (2, 2, 2)
    assert UNet(3, 1, 2, channels=(4, 8, 16), downsample="conv", strides=[[2, 2, 1], 2]).encoder[1][0][0].stride == (
        2,
        2,
        1,
    )
    res = ResUNet(3, 1, 2, channels=(4, 8, 16), strides=[[2, 2, 1], 2])
    assert res.encoder[1].branches[0][0].stride == (2, 2, 1) and res.encoder[1].shortcut[0].stride == (2, 2, 1)
    with pytest.raises(ValueError, match=r"too small: the smallest size this network accepts is \(4, 4, 2\)"):
        net(torch.zeros(1, 1, 8, 8, 1))


@pytest.mark.parametrize(
    "kwargs, pattern",
    [
        ({"strides": [2]}, r"strides needs 2 entries \(one int or 2 ints each\), got \[2\]"),
        ({"strides": [2, [2, 2, 2]]}, r"strides\[1\] must be a positive int or 2 of them \(1 or 2\)"),
        ({"strides": [2, 4]}, r"strides must be 1 or 2 per axis"),
        ({"kernel_sizes": [3, [3, 2], 3]}, r"kernel_sizes must be odd"),
        ({"kernel_sizes": [3, 3]}, r"kernel_sizes needs 3 entries"),
    ],
)
@pytest.mark.parametrize("name", OURS)
def test_bad_topology_raises(name, kwargs, pattern):
    with pytest.raises(ValueError, match=pattern):
        NETWORKS.build(name, 2, 1, 2, channels=(4, 8, 16), **kwargs)
