import pytest
import torch

from animalclf.data.transforms import eval_transform, to_rgb
from animalclf.errors import UserError
from animalclf.models.archs import arch_spec
from animalclf.models.build import Preprocess, build_model, feature_layers, lite_imagenet_state, preprocess_for


def trainable(model):
    return {n for n, p in model.named_parameters() if p.requires_grad}


@pytest.mark.parametrize("arch, layers", [("efficientnet_b0", 18), ("efficientnet_lite0", 18), ("efficientnet_lite2", 23)])
def test_unfreeze_counts(arch, layers):
    assert arch_spec(arch).layers == layers == len(feature_layers(build_model(arch, 15, 0, "none")))
    head_only = trainable(build_model(arch, 15, 0, "none"))
    assert head_only == {"classifier.1.weight", "classifier.1.bias"}
    one = build_model(arch, 15, 1, "none")
    last = feature_layers(one)[-1]
    assert trainable(one) == head_only | {n for n, p in one.named_parameters() if any(p is q for q in last.parameters())}
    assert len(trainable(one)) > len(head_only)
    full = build_model(arch, 15, layers, "none")
    assert trainable(full) == {n for n, _ in full.named_parameters()}
    two = trainable(build_model(arch, 15, 2, "none"))
    assert trainable(one) < two < trainable(full)


def test_bad_arch_and_unfreeze_are_user_errors():
    with pytest.raises(UserError, match="Unknown arch 'resnet9'"):
        build_model("resnet9", 15, 0, "none")
    with pytest.raises(UserError, match="out of range for efficientnet_lite0.*0:18 \\(0 = head only"):
        build_model("efficientnet_lite0", 15, 19, "none")
    build_model("efficientnet_lite2", 15, 23, "none")  # Lite2 has 21 blocks


def test_b0_imagenet_offline_names_the_alternatives(monkeypatch, tmp_path):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))  # empty cache; no internet here
    try:
        build_model("efficientnet_b0", 15, 0, "imagenet")
    except UserError as e:
        msg = str(e)
        assert "--weights" in msg and "efficientnet_lite0" in msg and "\n" not in msg
    else:  # a machine with internet downloaded them: fine too
        assert (tmp_path / "hub" / "checkpoints").exists()


@pytest.mark.parametrize("arch", ["efficientnet_lite0", "efficientnet_lite2"])
def test_lite_imagenet_weights_recognise_a_zebra(arch, shared_data):
    import timm

    model = timm.create_model(f"tf_{arch}", pretrained=False)
    model.load_state_dict(lite_imagenet_state(model, arch))
    model.eval()
    from PIL import Image

    photo = sorted((shared_data / "Zebra").iterdir())[0]
    x = eval_transform(preprocess_for(arch))(to_rgb(Image.open(photo)))[None]
    with torch.no_grad():
        assert model(x).argmax().item() == 340  # ImageNet class 340: zebra


def test_rotation_pool_is_invariant_to_quarter_turns_and_keeps_the_state_dict():
    torch.manual_seed(0)
    plain = build_model("efficientnet_lite0", 5, 0, "none").eval()
    pooled = build_model("efficientnet_lite0", 5, 0, "none", rotation_pool=True).eval()
    pooled.load_state_dict(plain.state_dict())  # same keys: the pool is hooks, not modules
    assert list(pooled.state_dict()) == list(plain.state_dict())
    x = torch.randn(3, 3, 64, 64)
    with torch.no_grad():
        out = pooled(x)
        assert out.shape == (3, 5)
        for k in (1, 2, 3):
            torch.testing.assert_close(pooled(torch.rot90(x, k, (2, 3))), out, atol=1e-5, rtol=1e-5)
        assert not torch.allclose(plain(torch.rot90(x, 1, (2, 3))), plain(x), atol=1e-3)  # the plain model is not
        # the head sees the mean of the 4 turns' features: the same as pooling them by hand
        feats = [plain.forward_head(plain.forward_features(torch.rot90(x, k, (2, 3))), pre_logits=True) for k in range(4)]
        torch.testing.assert_close(out, plain.classifier(torch.stack(feats).mean(0)), atol=1e-5, rtol=1e-5)


def test_preprocess_of_an_older_checkpoint_has_no_autocontrast():
    d = preprocess_for("efficientnet_lite0", autocontrast=True).to_dict()
    assert Preprocess.from_dict(d).autocontrast
    del d["autocontrast"]
    assert not Preprocess.from_dict(d).autocontrast


def test_weights_file_roundtrip(tmp_path):
    a = build_model("efficientnet_lite0", 3, 0, "none")
    torch.save(a.state_dict(), tmp_path / "w.pt")
    b = build_model("efficientnet_lite0", 3, 0, str(tmp_path / "w.pt"))
    assert all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values()))
    c = build_model("efficientnet_lite0", 5, 0, str(tmp_path / "w.pt"))  # other head size: backbone only
    assert torch.equal(c.conv_stem.weight, a.conv_stem.weight) and c.classifier[1].out_features == 5
    with pytest.raises(UserError, match="not a file"):
        build_model("efficientnet_lite0", 3, 0, str(tmp_path / "missing.pt"))
    with pytest.raises(UserError, match="does not fit"):
        build_model("efficientnet_b0", 3, 0, str(tmp_path / "w.pt"))


def test_preprocess_scales_with_image_size():
    p = preprocess_for("efficientnet_b0", 112)
    assert (p.crop_size, p.resize_size) == (112, 128)
    assert preprocess_for("efficientnet_lite0").mean == (0.5, 0.5, 0.5)


def test_ensemble_returns_log_of_the_mean_probability():
    from animalclf.models.build import Ensemble

    torch.manual_seed(0)
    members = [torch.nn.Linear(4, 3) for _ in range(3)]
    x = torch.randn(5, 4)
    with torch.no_grad():
        out = Ensemble(members)(x)
        mean = torch.stack([m(x).softmax(1) for m in members]).mean(0)
        assert torch.allclose(out.softmax(1), mean, atol=1e-6) and torch.allclose(out.exp(), mean, atol=1e-6)
        assert not torch.allclose(mean, members[0](x).softmax(1))  # the members differ: the check means something
    assert sorted(Ensemble(members).state_dict())[0].startswith("members.0.")
