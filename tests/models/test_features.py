"""Feature capture by forward hooks: values equal the model's own outputs, under eager and SDPA, for each family."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F

from distil.errors import DistilError
from distil.models.features import (
    Features,
    FeatureSpec,
    FeatureTap,
    map_layers,
    model_hidden_size,
    model_num_heads,
    model_num_layers,
)

FAMILIES = ("bert", "roberta", "mpnet", "distilbert")
SDPA_FAMILIES = ("bert", "roberta", "distilbert")  # MPNet has its own attention code and no SDPA path
SHAPE = {"hidden_size": 32, "num_hidden_layers": 4, "num_attention_heads": 4, "intermediate_size": 64}
ALL_LAYERS = FeatureSpec(embeddings=True, hidden_layers=(0, 1, 2, 3), attention_layers=(0, 1, 2, 3), qkv_layers=(0, 3))


def _build(family: str) -> torch.nn.Module:
    import transformers as tf

    torch.manual_seed(0)
    if family == "bert":
        return tf.BertModel(tf.BertConfig(vocab_size=100, max_position_embeddings=64, **SHAPE)).eval()
    if family == "roberta":
        cfg = tf.RobertaConfig(vocab_size=100, max_position_embeddings=66, pad_token_id=1, **SHAPE)
        return tf.RobertaModel(cfg).eval()
    if family == "mpnet":
        return tf.MPNetModel(tf.MPNetConfig(vocab_size=100, max_position_embeddings=66, **SHAPE)).eval()
    cfg = tf.DistilBertConfig(vocab_size=100, max_position_embeddings=64, dim=32, n_layers=4, n_heads=4, hidden_dim=64)
    return tf.DistilBertModel(cfg).eval()


@pytest.fixture(scope="module")
def _models() -> dict[str, torch.nn.Module]:
    return {family: _build(family) for family in FAMILIES}


@pytest.fixture
def models(_models):
    """family -> a fresh copy of a random 4-layer encoder (hidden 32, 4 heads, vocab 100), default attention."""
    return {family: copy.deepcopy(model) for family, model in _models.items()}


@pytest.fixture
def batch() -> dict[str, torch.Tensor]:
    """Two sequences of 7 tokens; the second has 3 padded positions."""
    generator = torch.Generator().manual_seed(1)
    input_ids = torch.randint(5, 100, (2, 7), generator=generator)
    attention_mask = torch.tensor([[1] * 7, [1] * 4 + [0] * 3])
    return {"input_ids": input_ids, "attention_mask": attention_mask}


def _capture(model, spec, batch) -> Features:
    with FeatureTap(model, spec).capture(batch["attention_mask"]) as feats:
        model(**batch)
    return feats


def _num_forward_hooks(model) -> int:
    return sum(len(module._forward_hooks) for module in model.modules())


def _eager_attentions(model, batch) -> tuple[torch.Tensor, ...]:
    eager = copy.deepcopy(model)
    if hasattr(eager, "set_attn_implementation") and eager._supports_sdpa:
        eager.set_attn_implementation("eager")
    with torch.no_grad():
        attentions = eager(**batch, output_attentions=True).attentions
    assert len(attentions) == model_num_layers(model)
    return attentions


@pytest.mark.parametrize("family", FAMILIES)
def test_embeddings_and_hidden_equal_output_hidden_states(models, batch, family):
    model = models[family]
    feats = _capture(model, FeatureSpec(embeddings=True, hidden_layers=(0, 2, 3)), batch)
    with torch.no_grad():
        reference = model(**batch, output_hidden_states=True).hidden_states

    assert feats.embeddings.shape == (2, 7, 32)
    torch.testing.assert_close(feats.embeddings, reference[0])
    assert sorted(feats.hidden) == [0, 2, 3]
    for layer, hidden in feats.hidden.items():
        assert hidden.shape == (2, 7, 32)
        torch.testing.assert_close(hidden, reference[layer + 1])


@pytest.mark.parametrize("family", FAMILIES)
def test_qkv_are_the_projection_outputs(models, batch, family):
    model = models[family]
    feats = _capture(model, FeatureSpec(hidden_layers=(0,), qkv_layers=(1,)), batch)
    from distil.models.features import attention_projections

    _, query, key, value = attention_projections(model, 1)
    layer_input = feats.hidden[0]  # layer 1 reads layer 0's output
    for captured, projection in ((feats.queries, query), (feats.keys, key), (feats.values, value)):
        assert list(captured) == [1]
        assert captured[1].shape == (2, 7, 32)
        torch.testing.assert_close(captured[1], projection(layer_input))


@pytest.mark.parametrize("family", FAMILIES)
def test_probs_equal_eager_output_attentions(models, batch, family):
    model = models[family]
    if family in SDPA_FAMILIES:
        model.set_attn_implementation("eager")
    feats = _capture(model, FeatureSpec(attention_layers=(0, 1, 2, 3)), batch)
    reference = _eager_attentions(model, batch)

    for layer in range(4):
        probs = feats.attention_probs(layer)
        assert probs.shape == (2, 4, 7, 7)
        torch.testing.assert_close(probs, reference[layer], atol=1e-5, rtol=0)
        torch.testing.assert_close(probs.sum(-1), torch.ones(2, 4, 7))
    assert feats.attention_probs(1)[1, :, :, 4:].abs().max() == 0  # padded keys get no attention


@pytest.mark.parametrize("family", SDPA_FAMILIES)
def test_sdpa_model_gives_the_eager_values_and_stays_sdpa(models, batch, family):
    model = models[family]
    assert model.config._attn_implementation == "sdpa"
    feats = _capture(model, FeatureSpec(attention_layers=(1, 3)), batch)
    assert model.config._attn_implementation == "sdpa"
    reference = _eager_attentions(model, batch)

    for layer in (1, 3):
        torch.testing.assert_close(feats.attention_probs(layer), reference[layer], atol=1e-5, rtol=0)
    # scores: what the eager softmax saw, on non-padded keys
    eager = copy.deepcopy(model)
    eager.set_attn_implementation("eager")
    eager_feats = _capture(eager, FeatureSpec(attention_layers=(3,)), batch)
    torch.testing.assert_close(feats.attention_scores(3), eager_feats.attention_scores(3))


def test_scores_are_scaled_qk_plus_padding_mask(tiny_bert, batch):
    feats = _capture(tiny_bert, FeatureSpec(attention_layers=(2,)), batch)
    q = feats.queries[2].view(2, 7, 4, 8).transpose(1, 2)  # (B, H, L, d_h)
    k = feats.keys[2].view(2, 7, 4, 8).transpose(1, 2)  # (B, H, L, d_h)
    expected = q @ k.transpose(-1, -2) / 8**0.5  # (B, H, L, L)
    scores = feats.attention_scores(2)
    assert scores.shape == (2, 4, 7, 7)
    torch.testing.assert_close(scores[0], expected[0])
    torch.testing.assert_close(scores[1, :, :, :4], expected[1, :, :, :4])
    assert (scores[1, :, :, 4:] == torch.finfo(scores.dtype).min).all()
    assert feats.attention_scores(2) is scores  # computed once per capture


def test_mpnet_scores_include_the_relative_position_bias(models, batch):
    model = models["mpnet"]
    feats = _capture(model, FeatureSpec(attention_layers=(0,)), batch)
    assert feats.position_bias.shape == (1, 4, 7, 7)
    with torch.no_grad():
        expected_bias = model.encoder.compute_position_bias(torch.zeros(1, 7, 32))  # (1, H, L, L)
    torch.testing.assert_close(feats.position_bias, expected_bias)
    q = feats.queries[0].view(2, 7, 4, 8).transpose(1, 2)  # (B, H, L, d_h)
    k = feats.keys[0].view(2, 7, 4, 8).transpose(1, 2)  # (B, H, L, d_h)
    unbiased = q @ k.transpose(-1, -2) / 8**0.5  # (B, H, L, L)
    torch.testing.assert_close(feats.attention_scores(0)[0], unbiased[0] + expected_bias[0])


def test_detach_removes_every_hook(tiny_bert, batch):
    baseline = _num_forward_hooks(tiny_bert)
    tap = FeatureTap(tiny_bert, ALL_LAYERS).attach()
    assert _num_forward_hooks(tiny_bert) > baseline
    tap.attach()  # idempotent
    tap.detach()
    assert _num_forward_hooks(tiny_bert) == baseline

    with FeatureTap(tiny_bert, ALL_LAYERS) as tap:
        assert tap.attached
    assert _num_forward_hooks(tiny_bert) == baseline
    _capture(tiny_bert, ALL_LAYERS, batch)  # capture() attaches only for its block
    assert _num_forward_hooks(tiny_bert) == baseline


def test_only_requested_layers_are_hooked(tiny_bert):
    baseline = {name: len(m._forward_hooks) for name, m in tiny_bert.named_modules()}
    spec = FeatureSpec(embeddings=True, hidden_layers=(1,), attention_layers=(2,), qkv_layers=(3,))
    with FeatureTap(tiny_bert, spec):
        hooked = sorted(name for name, m in tiny_bert.named_modules() if len(m._forward_hooks) > baseline[name])
    layer = "bert.encoder.layer"
    assert hooked == [
        "bert.embeddings",
        f"{layer}.1",
        f"{layer}.2.attention.self.key",
        f"{layer}.2.attention.self.query",
        f"{layer}.3.attention.self.key",
        f"{layer}.3.attention.self.query",
        f"{layer}.3.attention.self.value",
    ]


def test_nothing_is_kept_outside_capture(tiny_bert, batch):
    tap = FeatureTap(tiny_bert, FeatureSpec(hidden_layers=(0,))).attach()
    with tap.capture(batch["attention_mask"]) as feats:
        tiny_bert(**batch)
    first = feats.hidden[0]
    assert tap._features is None
    tiny_bert(input_ids=batch["input_ids"][:1])  # a forward outside capture records nothing
    assert feats.hidden[0] is first
    with tap.capture() as second:
        tiny_bert(**batch)
    assert second is not feats and second.hidden[0] is not first
    tap.detach()


def test_capture_without_forward_raises(tiny_bert):
    tap = FeatureTap(tiny_bert, FeatureSpec(hidden_layers=(1,)))
    with pytest.raises(DistilError, match=r"hidden\[1\]"), tap.capture():
        pass


def test_gradient_flows_to_student_params_through_features(tiny_bert, batch):
    student = tiny_bert.train()
    spec = FeatureSpec(embeddings=True, hidden_layers=(1,), attention_layers=(1,), qkv_layers=(1,))
    feats = _capture(student, spec, batch)
    loss = feats.embeddings.pow(2).mean() + feats.hidden[1].pow(2).mean() + feats.values[1].pow(2).mean()
    loss = loss + feats.attention_probs(1).pow(2).mean()
    loss.backward()
    attention = student.bert.encoder.layer[1].attention.self
    for param in (attention.query.weight, attention.key.weight, attention.value.weight):
        assert param.grad is not None and param.grad.abs().sum() > 0
    assert student.bert.embeddings.word_embeddings.weight.grad.abs().sum() > 0


def test_teacher_features_from_inference_mode_work_in_a_student_loss(tiny_bert, make_tiny_bert, batch):
    teacher, student = make_tiny_bert(), tiny_bert.train()
    spec = FeatureSpec(hidden_layers=(3,), attention_layers=(3,))
    with torch.inference_mode():
        teacher_feats = _capture(teacher, spec, batch)
    student_feats = _capture(student, spec, batch)
    teacher_hidden = teacher_feats.hidden[3]
    assert not teacher_hidden.is_inference() and not teacher_hidden.requires_grad
    loss = F.mse_loss(student_feats.hidden[3], teacher_hidden)
    loss = loss + F.mse_loss(student_feats.attention_probs(3), teacher_feats.attention_probs(3))
    loss.backward()
    assert student.bert.encoder.layer[3].attention.self.query.weight.grad is not None


def test_layer_out_of_range_names_field_and_range(tiny_bert):
    with pytest.raises(DistilError, match=r"FeatureSpec.attention_layers has layer 4.*valid 0..3"):
        FeatureTap(tiny_bert, FeatureSpec(attention_layers=(4,)))


@pytest.mark.parametrize("bad", [(-1,), (1.5,), (True,)])
def test_feature_spec_rejects_bad_indices(bad):
    with pytest.raises(DistilError, match="FeatureSpec.hidden_layers"):
        FeatureSpec(hidden_layers=bad)


def test_unsupported_model_is_named():
    from transformers import GPT2Config, GPT2Model

    gpt2 = GPT2Model(GPT2Config(vocab_size=50, n_embd=32, n_layer=2, n_head=4, n_positions=16))
    with pytest.raises(DistilError, match="GPT2Model is not supported"):
        FeatureTap(gpt2, FeatureSpec(attention_layers=(0,)))
    with pytest.raises(DistilError, match="GPT2Model has no `embeddings`"):
        FeatureTap(gpt2, FeatureSpec(embeddings=True))
    # hidden states need only the layer list, which GPT-2 has
    with FeatureTap(gpt2, FeatureSpec(hidden_layers=(1,))).capture() as feats:
        gpt2(input_ids=torch.tensor([[1, 2, 3]]))
    assert feats.hidden[1].shape == (1, 3, 32)
    with pytest.raises(DistilError, match="Linear has no .config"):
        FeatureTap(torch.nn.Linear(2, 2), FeatureSpec(hidden_layers=(0,)))


def test_capture_needs_a_2d_padding_mask(tiny_bert):
    tap = FeatureTap(tiny_bert, FeatureSpec(hidden_layers=(1,)))
    with pytest.raises(DistilError, match=r"\(B, L\) padding mask, got shape \(2, 1, 1, 7\)"):
        tap.capture(torch.ones(2, 1, 1, 7)).__enter__()


def test_uncaptured_attention_layer_raises(tiny_bert, batch):
    feats = _capture(tiny_bert, FeatureSpec(attention_layers=(1,)), batch)
    with pytest.raises(DistilError, match="layer 2 was not captured"):
        feats.attention_scores(2)


def test_config_helpers_read_each_family(models):
    for model in models.values():
        assert (model_num_layers(model), model_hidden_size(model), model_num_heads(model)) == (4, 32, 4)


@pytest.mark.parametrize(
    ("strategy", "student", "teacher", "expected"),
    [
        ("uniform", 4, 12, [(0, 2), (1, 5), (2, 8), (3, 11)]),  # TinyBERT-4 from BERT-base
        ("uniform", 3, 6, [(0, 1), (1, 3), (2, 5)]),
        ("uniform", 3, 4, [(0, 0), (1, 1), (2, 3)]),
        ("uniform", 2, 2, [(0, 0), (1, 1)]),
        ("last-k", 2, 6, [(0, 4), (1, 5)]),
        ([0, 2, 5], 3, 6, [(0, 0), (1, 2), (2, 5)]),
    ],
)
def test_map_layers(strategy, student, teacher, expected):
    assert map_layers(strategy, student, teacher) == expected


@pytest.mark.parametrize(
    ("strategy", "student", "teacher", "message"),
    [
        ("spread", 2, 6, "'spread' is unknown"),
        ("uniform", 4, 2, r"student layers \(4\) <= teacher layers \(2\)"),
        ("last-k", 4, 2, r"student layers \(4\) <= teacher layers \(2\)"),
        ([0, 1], 3, 6, "has 2 teacher layers, but the student has 3"),
        ([0, 6, 1], 3, 6, r"entry 1 \(student layer 1\) is teacher layer 6, outside .* 0..5"),
        ([0, -1], 2, 6, "teacher layer -1"),
        ("uniform", 0, 6, ">= 1 layer"),
    ],
)
def test_map_layers_errors(strategy, student, teacher, message):
    with pytest.raises(DistilError, match=message):
        map_layers(strategy, student, teacher)
