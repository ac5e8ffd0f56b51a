"""Task loaders and featurizers: every accepted format, every bad-data message, NER label
alignment and QA windows checked against transformers' BertTokenizerFast on the same vocab."""

import csv
import json
import string
import warnings

import numpy as np
import pytest
import torch

from bertkit.data.tasks import (IGNORE_INDEX, ClassificationExample, LabelMap, NerSentence,
                                PaddingCollator, QaExample, TruncationWarning, bio_entities,
                                build_label_map, check_labels, data_format,
                                encode_classification, encode_ner, encode_qa,
                                entities_from_text, load_classification, load_conll, load_squad,
                                ner_predictions_to_words, postprocess_qa, qa_gold, split_words)
from bertkit.data.parallel import load_parallel
from bertkit.tokenizer import Tokenizer
from bertkit.tasks.metrics import squad_metrics

# A tiny WordPiece vocab: some whole words, plus every letter and digit as a word start and
# as a "##" continuation, so any other lowercase word splits into several sub-tokens.
WORDS = ["the", "of", "in", "and", "is", "was", "to", "city", "river", "capital", "germany",
         "berlin", "paris", "france", "what", "which", "where", "who", "good", "bad", "film",
         "una", "##ffa", "##ble", "hohen", "##zoll", "##ern"]
VOCAB = (["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + list(".,!?'\"()-:;")
         + list(string.ascii_lowercase) + ["##" + c for c in string.ascii_lowercase]
         + list(string.digits) + ["##" + c for c in string.digits] + WORDS)


@pytest.fixture(scope="module")
def vocab_dir(tmp_path_factory):
    folder = tmp_path_factory.mktemp("vocab")
    (folder / "vocab.txt").write_text("\n".join(VOCAB) + "\n", encoding="utf-8")
    return folder


@pytest.fixture(scope="module")
def tok(vocab_dir):
    return Tokenizer.from_pretrained(vocab_dir)


@pytest.fixture(scope="module")
def hf_tok(vocab_dir):
    transformers = pytest.importorskip("transformers")
    return transformers.BertTokenizerFast.from_pretrained(str(vocab_dir))


def write(path, text):
    path.write_text(text, encoding="utf-8")
    return path


def write_table(path, header, rows):
    delimiter = "\t" if path.suffix == ".tsv" else ","
    with open(path, "w", encoding="utf-8", newline="") as f:
        w = csv.writer(f, delimiter=delimiter)
        w.writerow(header)
        w.writerows(rows)
    return path


def write_jsonl(path, header, rows):
    return write(path, "".join(json.dumps(dict(zip(header, r))) + "\n" for r in rows))


# =========================================================================== classification

NAMINGS = [  # header, rows, expected (text, text_pair, label)
    (["text", "label"], [["good film", "pos"], ["bad film", "neg"]],
     [("good film", None, "pos"), ("bad film", None, "neg")]),
    (["text", "text_pair", "label"], [["a", "b", "yes"], ["c", "d", "no"]],
     [("a", "b", "yes"), ("c", "d", "no")]),
    (["sentence", "label"], [["good film", "1"]], [("good film", None, "1")]),
    (["index", "sentence1", "sentence2", "label"], [["0", "s1", "s2", "entailment"]],
     [("s1", "s2", "entailment")]),
    (["index", "question", "sentence", "label"], [["0", "who?", "him.", "entailment"]],
     [("who?", "him.", "entailment")]),
    (["id", "qid1", "qid2", "question1", "question2", "is_duplicate"],
     [["0", "1", "2", "q one", "q two", "0"]], [("q one", "q two", "0")]),
    (["premise", "hypothesis", "gold_label"], [["p", "h", "neutral"]], [("p", "h", "neutral")]),
]


@pytest.mark.parametrize("ext", ["csv", "tsv", "jsonl"])
@pytest.mark.parametrize("header,rows,expected", NAMINGS,
                         ids=["text", "text_pair", "sst2", "rte", "qnli", "qqp", "mnli"])
def test_load_classification_every_format_and_naming(tmp_path, ext, header, rows, expected):
    path = tmp_path / f"data.{ext}"
    (write_jsonl if ext == "jsonl" else write_table)(path, header, rows)
    examples = load_classification(path)
    assert [(e.text, e.text_pair, e.label) for e in examples] == expected
    first_line = 1 if ext == "jsonl" else 2  # tables have a header line
    assert [e.line for e in examples] == list(range(first_line, first_line + len(rows)))


def test_jsonl_numbers_labels_blank_lines_and_line_numbers(tmp_path):
    path = write(tmp_path / "d.jsonl", '{"text": "a", "label": 1}\n\n{"text": "b", "label": 0}\n')
    examples = load_classification(path)
    assert [(e.label, e.line) for e in examples] == [("1", 1), ("0", 3)]
    reg = load_classification(path, regression=True)
    assert [e.label for e in reg] == [1.0, 0.0]


def test_csv_quoted_multiline_field_keeps_line_numbers(tmp_path):
    path = write(tmp_path / "d.csv", 'text,label\n"two\nlines",a\nnext,b\n')
    examples = load_classification(path)
    assert examples[0].text == "two\nlines"
    assert [e.line for e in examples] == [3, 4]  # the line where each record ends


def test_tsv_keeps_quotes_literally_like_glue(tmp_path):
    path = write(tmp_path / "d.tsv", 'sentence\tlabel\nhe said "hi\t1\n')
    assert load_classification(path)[0].text == 'he said "hi'


def test_csv_with_byte_order_mark(tmp_path):
    path = tmp_path / "d.csv"
    path.write_bytes("\ufefftext,label\nx,y\n".encode("utf-8"))
    assert load_classification(path)[0].text == "x"


def test_regression_labels_and_missing_labels(tmp_path):
    path = write(tmp_path / "d.tsv", "sentence1\tsentence2\tscore\na\tb\t3.8\nc\td\t0\n")
    assert [e.label for e in load_classification(path, regression=True)] == [3.8, 0.0]
    bad = write(tmp_path / "bad.csv", "text,label\nx,1.5\ny,high\n")
    with pytest.raises(ValueError, match=r"bad\.csv:3: regression label 'high' is not a number"):
        load_classification(bad, regression=True)
    unlabelled = write(tmp_path / "u.csv", "text\nx\n")
    assert load_classification(unlabelled, require_label=False)[0].label is None


def test_text_pair_may_be_empty_in_a_mixed_file(tmp_path):
    path = write(tmp_path / "d.csv", "text,text_pair,label\na,,x\nb,c,y\n")
    assert [e.text_pair for e in load_classification(path)] == [None, "c"]


@pytest.mark.parametrize("name,content,pattern", [
    ("empty.csv", "", r"empty\.csv is empty"),
    ("blank.jsonl", "\n  \n", r"blank\.jsonl is empty"),
    ("header.csv", "text,label\n", r"header\.csv holds a header but no examples"),
    ("cols.csv", "sentence_a,y\nx,1\n",
     r"cols\.csv:2: no text column.*columns found: sentence_a, y"),
    ("nolabel.tsv", "text\tcategory\nx\t1\n",
     r"nolabel\.tsv:2: no label column 'label'; columns found: text, category"),
    ("emptylabel.csv", "text,label\nx,1\ny,\n",
     r"emptylabel\.csv:3: empty label in column 'label'"),
    ("width.csv", "text,label\nx,1,extra\n", r"width\.csv:2: expected 2 columns .* found 3"),
    ("bad.jsonl", '{"text": "a", "label": "x"}\n{"text": "b", label: 1}\n',
     r"bad\.jsonl:2: malformed JSON line"),
    ("list.jsonl", '["a", "x"]\n', r"list\.jsonl:1: expected a JSON object per line, found list"),
    ("field.jsonl", '{"text": "a", "label": 1}\n{"txt": "b", "label": 1}\n',
     r"field\.jsonl:2: no text column.*columns found: txt, label"),
    ("num.jsonl", '{"text": 5, "label": 1}\n', r"num\.jsonl:1: field 'text' must be text"),
    ("data.txt", "text,label\nx,1\n", r"data\.txt: unknown data format '\.txt'"),
    ("squad.json", '{"data": []}', r"squad\.json: classification data must be \.csv"),
])
def test_classification_bad_data_messages(tmp_path, name, content, pattern):
    path = write(tmp_path / name, content)
    with pytest.raises(ValueError, match=pattern):
        load_classification(path)


def test_missing_file_and_format_detection(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.csv does not exist"):
        load_classification(tmp_path / "nope.csv")
    assert [data_format(p) for p in ("a.CSV", "b.tsv", "c.jsonl", "d.json")] == \
        ["csv", "tsv", "jsonl", "json"]
    with pytest.raises(ValueError, match="no extension"):
        data_format("train")


def test_label_map_sorted_and_stable():
    def ex(labels):
        return [ClassificationExample("t", None, lab, i + 1) for i, lab in enumerate(labels)]

    a = build_label_map(ex(["pos", "neg", "neutral", "neg"]))
    b = build_label_map(ex(["neutral", "pos", "neg"]))
    assert a == b and a.names == ("neg", "neutral", "pos")
    assert a.label2id == {"neg": 0, "neutral": 1, "pos": 2}
    assert a.id2label == {0: "neg", 1: "neutral", 2: "pos"} and len(a) == 3
    assert build_label_map(ex(["10", "2", "1"])).names == ("1", "2", "10")  # numeric order
    tags = build_label_map([NerSentence(["x", "y"], ["B-PER", "O"], [1, 2]),
                            NerSentence(["z"], ["I-PER"], [4])])
    assert tags.names == ("B-PER", "I-PER", "O")
    with pytest.raises(ValueError, match="regression data has no label map"):
        build_label_map([ClassificationExample("t", None, 0.5, 1)])


def test_check_labels_names_file_line_and_label(tmp_path):
    label2id = LabelMap(("neg", "pos")).label2id
    dev = write(tmp_path / "dev.csv", "text,label\na,pos\nb,neutral\n")
    check_labels(load_classification(dev)[:1], label2id, dev)  # all known: no error
    with pytest.raises(ValueError, match=r"dev\.csv:3: label 'neutral' never appears in the "
                                         r"training data \(training labels: neg, pos\)"):
        check_labels(load_classification(dev), label2id, dev)
    sentences = [NerSentence(["a", "b"], ["B-PER", "B-MISC"], [7, 8])]
    with pytest.raises(ValueError, match=r"test\.conll:8: label 'B-MISC'"):
        check_labels(sentences, {"B-PER": 0, "O": 1}, "test.conll")


def test_encode_classification_matches_transformers(tok, hf_tok):
    examples = [ClassificationExample("Berlin is the capital of Germany.", None, "pos", 2),
                ClassificationExample("good film", "bad film", "neg", 3),
                ClassificationExample("the " * 30, None, "pos", 4),  # over-long single
                ClassificationExample("what " * 20, "city " * 5, "neg", 5),  # over-long pair
                ClassificationExample("who", "paris " * 20, "pos", 6)]  # long second text
    label2id = {"neg": 0, "pos": 1}
    with pytest.warns(TruncationWarning, match="3 of 5 examples were longer than max_length=16"):
        ds = encode_classification(examples, tok, label2id, max_length=16)
    assert len(ds) == 5 and ds.num_truncated == 3 and ds.features is None
    for item, ex in zip(ds, examples):
        ref = hf_tok(ex.text, ex.text_pair, truncation=True, max_length=16)
        assert item["input_ids"] == ref["input_ids"]
        assert item["token_type_ids"] == ref["token_type_ids"]
        assert item["labels"] == label2id[ex.label]
        assert len(item["input_ids"]) <= 16


def test_encode_classification_regression_and_no_warning_when_short(tok):
    examples = [ClassificationExample("good", None, 4.5, 2),
                ClassificationExample("bad", "film", 1.0, 3),
                ClassificationExample("city", None, None, 4)]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        ds = encode_classification(examples, tok, None, max_length=16)
    assert [item.get("labels") for item in ds] == [4.5, 1.0, None]
    assert ds.num_truncated == 0
    with pytest.raises(ValueError, match="line 2: label 'x' is not in label2id"):
        encode_classification([ClassificationExample("a", None, "x", 2)], tok, {"y": 0})


def test_padding_collator():
    items = [{"input_ids": [5, 6, 7], "token_type_ids": [0, 0, 1], "labels": [1, -100, 2]},
             {"input_ids": [5], "token_type_ids": [0], "labels": [0]}]
    batch = PaddingCollator(pad_token_id=9)(items)
    assert batch["input_ids"].tolist() == [[5, 6, 7], [5, 9, 9]]
    assert batch["token_type_ids"].tolist() == [[0, 0, 1], [0, 0, 0]]
    assert batch["attention_mask"].tolist() == [[1, 1, 1], [1, 0, 0]]
    assert batch["labels"].tolist() == [[1, -100, 2], [0, -100, -100]]
    assert all(t.dtype == torch.long for t in batch.values())

    scalar = PaddingCollator(0, pad_to_multiple_of=4)(
        [{"input_ids": [1, 2], "labels": 1, "start_positions": 0},
         {"input_ids": [1, 2, 3, 4, 5], "labels": 0, "start_positions": 3}])
    assert scalar["input_ids"].shape == (2, 8) and scalar["attention_mask"].sum().item() == 7
    assert scalar["labels"].tolist() == [1, 0] and scalar["labels"].dtype == torch.long
    assert scalar["start_positions"].tolist() == [0, 3]
    reg = PaddingCollator(0)([{"input_ids": [1], "labels": 0.5}, {"input_ids": [1], "labels": 2.0}])
    assert reg["labels"].dtype == torch.float and reg["labels"].tolist() == [0.5, 2.0]


# =========================================================================== NER

CONLL = """-DOCSTART- -X- -X- O

EU NNP B-NP B-ORG
rejects VBZ B-VP O
German JJ B-NP B-MISC
call NN I-NP O
. . O O

Peter NNP B-NP B-PER
Blackburn NNP I-NP I-PER


-DOCSTART- -X- -X- O
BRUSSELS NNP B-NP B-LOC
1996-08-22 CD I-NP O"""


def test_load_conll(tmp_path):
    sentences = load_conll(write(tmp_path / "train.txt", CONLL))
    assert [s.tokens for s in sentences] == [["EU", "rejects", "German", "call", "."],
                                             ["Peter", "Blackburn"],
                                             ["BRUSSELS", "1996-08-22"]]
    assert [s.tags for s in sentences] == [["B-ORG", "O", "B-MISC", "O", "O"],
                                           ["B-PER", "I-PER"], ["B-LOC", "O"]]
    assert [s.lines for s in sentences] == [[3, 4, 5, 6, 7], [9, 10], [14, 15]]
    two_col = load_conll(write(tmp_path / "two.conll", "Paris B-LOC\nis O\n"))
    assert two_col[0].tags == ["B-LOC", "O"]


@pytest.mark.parametrize("content,pattern", [
    ("Paris B-LOC\nis\n", r"bad\.conll:2: expected a token and a tag .* one column: 'is'"),
    ("Paris LOC\n", r"bad\.conll:1: tag 'LOC' is not O, B-TYPE or I-TYPE"),
    ("\nParis B-LOC\n\nis E-LOC\n", r"bad\.conll:4: tag 'E-LOC'"),
    ("Paris B-\n", r"bad\.conll:1: tag 'B-'"),
    ("", r"bad\.conll is empty"),
    ("-DOCSTART- -X- O\n\n", r"bad\.conll holds no sentences"),
])
def test_conll_bad_data_messages(tmp_path, content, pattern):
    with pytest.raises(ValueError, match=pattern):
        load_conll(write(tmp_path / "bad.conll", content))


NER_SENTENCES = [
    NerSentence(["Angela", "Merkel", "visited", "Paris", "."],
                ["B-PER", "I-PER", "O", "B-LOC", "O"], [1, 2, 3, 4, 5]),
    NerSentence(["The", "unaffable", "Hohenzollern", "U.S.", "envoy"],
                ["O", "O", "B-PER", "B-LOC", "O"], [7, 8, 9, 10, 11]),
]


def test_encode_ner_labels_first_subtoken_only(tok, hf_tok):
    label_map = build_label_map(NER_SENTENCES)
    ds = encode_ner(NER_SENTENCES, tok, label_map.label2id, max_length=64)
    for item, feature, sentence in zip(ds, ds.features, NER_SENTENCES):
        ref = hf_tok(sentence.tokens, is_split_into_words=True)
        assert item["input_ids"] == ref["input_ids"]
        assert feature.word_ids == ref.word_ids()  # independent alignment
        seen = set()
        for j, w in enumerate(ref.word_ids()):
            if w is None or w in seen:
                assert item["labels"][j] == IGNORE_INDEX
            else:
                assert item["labels"][j] == label_map.label2id[sentence.tags[w]]
                seen.add(w)
        assert seen == set(range(len(sentence.tokens)))  # every word labelled exactly once
    # by hand: "unaffable" -> una ##ffa ##ble, "Hohenzollern" -> hohen ##zoll ##ern
    item = ds[1]
    tokens = tok.convert_ids_to_tokens(item["input_ids"])
    assert tokens[:8] == ["[CLS]", "the", "una", "##ffa", "##ble", "hohen", "##zoll", "##ern"]
    o, b_per = label_map.label2id["O"], label_map.label2id["B-PER"]
    assert item["labels"][:8] == [-100, o, o, -100, -100, b_per, -100, -100]


def test_encode_ner_truncation_and_predictions_back_to_words(tok):
    sentences = [NerSentence(["Berlin", "is", "the", "capital"], ["B-LOC", "O", "O", "O"],
                             [1, 2, 3, 4]), NER_SENTENCES[1]]
    label_map = build_label_map(NER_SENTENCES)
    with pytest.warns(TruncationWarning, match="1 of 2 sentences were longer than max_length=8"):
        ds = encode_ner(sentences, tok, label_map.label2id, max_length=8)
    assert ds.num_truncated == 1 and all(len(item["input_ids"]) <= 8 for item in ds)
    assert [f.num_words for f in ds.features] == [4, 5]
    # Predict the gold label on first sub-tokens and junk elsewhere, through a padded batch.
    batch = PaddingCollator(tok.pad_token_id)(list(ds))
    junk = label_map.label2id["B-LOC"]
    preds = torch.where(batch["labels"] == IGNORE_INDEX, torch.tensor(junk), batch["labels"])
    words = ner_predictions_to_words(preds, ds.features, label_map.id2label)
    assert words[0] == sentences[0].tags  # 6 tokens: not truncated
    # sentence 2 kept [CLS] the una ##ffa ##ble hohen ##zoll [SEP]: words 3, 4 were cut -> "O"
    assert words[1] == ["O", "O", "B-PER", "O", "O"]
    logits = torch.nn.functional.one_hot(preds, len(label_map)).float()  # (F, T, C)
    assert ner_predictions_to_words(logits, ds.features, list(label_map.names)) == words


def test_encode_ner_without_labels(tok):
    ds = encode_ner(NER_SENTENCES, tok, None, max_length=64)
    assert "labels" not in ds[0]
    with pytest.raises(ValueError, match="line 4: tag 'B-LOC' is not in label2id"):
        encode_ner(NER_SENTENCES[:1], tok, {"O": 0, "B-PER": 1, "I-PER": 2})


def test_bio_entities_agree_with_seqeval():
    from seqeval.metrics.sequence_labeling import get_entities

    assert bio_entities(["B-PER", "I-PER", "O", "I-LOC", "B-LOC", "I-ORG"]) == \
        [("PER", 0, 1), ("LOC", 3, 3), ("LOC", 4, 4), ("ORG", 5, 5)]
    rng = np.random.default_rng(0)
    tags = ["O", "B-PER", "I-PER", "B-LOC", "I-LOC"]
    for _ in range(300):
        seq = [str(t) for t in rng.choice(tags, size=rng.integers(0, 10))]
        assert bio_entities(seq) == get_entities(seq), seq


def test_split_words_and_entities_from_text(tok):
    text = "Angela Merkel visited the U.S. in  2019, said Reuters."
    words = split_words(text)
    assert [w for w, _, _ in words] == ["Angela", "Merkel", "visited", "the", "U", ".", "S",
                                        ".", "in", "2019", ",", "said", "Reuters", "."]
    assert all(text[s:e] == w for w, s, e in words)
    tags = ["B-PER", "I-PER", "O", "O", "B-LOC", "I-LOC", "I-LOC", "I-LOC", "O", "O", "O",
            "O", "I-ORG", "O"]  # an I- without B- still opens an entity (conlleval)
    entities = entities_from_text(text, tags)
    assert entities == [
        {"entity": "Angela Merkel", "label": "PER", "start": 0, "end": 13},
        {"entity": "U.S.", "label": "LOC", "start": 26, "end": 30},
        {"entity": "Reuters", "label": "ORG", "start": 46, "end": 53}]
    assert all(text[e["start"]:e["end"]] == e["entity"] for e in entities)
    with pytest.raises(ValueError, match="2 tags for 14 words"):
        entities_from_text(text, ["O", "O"])
    # the words feed encode_ner directly (prediction path)
    ds = encode_ner([NerSentence([w for w, _, _ in words], ["O"] * len(words), [])], tok)
    assert ds.features[0].num_words == len(words)


# =========================================================================== QA

CONTEXT = ("Berlin is the capital of Germany. The river Spree flows through Berlin, and the "
           "city is big. Paris is the capital of France; the river Seine flows through Paris. "
           "Which city is bigger is a question of taste, said the unaffable Hohenzollern.")


def squad_json(version="1.1"):
    def qa(qid, question, answers, **extra):
        return {"id": qid, "question": question, "answers": answers, **extra}

    start = CONTEXT.index("capital of France")
    qas = [qa("q1", "What is the capital of Germany?",
              [{"text": "Berlin", "answer_start": 0},
               {"text": "Berlin", "answer_start": CONTEXT.index("Berlin", 5)}]),
           qa("q2", "Which river flows through Paris?",
              [{"text": "Seine", "answer_start": CONTEXT.index("Seine")}]),
           qa("q3", "What is Paris?", [{"text": "capital of France", "answer_start": start}])]
    if version == "2.0":
        qas.append(qa("q4", "What is the capital of Spain?", [], is_impossible=True,
                      plausible_answers=[{"text": "Paris", "answer_start": 93}]))
    return {"version": version, "data": [{"title": "Cities", "paragraphs": [
        {"context": CONTEXT, "qas": qas}]}]}


def test_load_squad_v1_and_v2(tmp_path):
    v1 = load_squad(write(tmp_path / "v1.json", json.dumps(squad_json())))
    assert [e.id for e in v1] == ["q1", "q2", "q3"]
    assert v1[0].answers == [{"text": "Berlin", "answer_start": 0},
                             {"text": "Berlin", "answer_start": 64}]
    assert v1[1].question == "Which river flows through Paris?" and v1[1].context == CONTEXT
    assert not any(e.is_impossible for e in v1)
    v2 = load_squad(write(tmp_path / "v2.json", json.dumps(squad_json("2.0"))))
    assert v2[3].is_impossible and v2[3].answers == []
    assert qa_gold(v2) == {"q1": ["Berlin", "Berlin"], "q2": ["Seine"],
                           "q3": ["capital of France"], "q4": []}


def _broken(mutate):
    doc = squad_json("2.0")
    mutate(doc)
    return json.dumps(doc)


@pytest.mark.parametrize("name,content,pattern", [
    ("bad.json", _broken(lambda d: d["data"][0]["paragraphs"][0]["qas"][1]["answers"][0]
                         .update(answer_start=10)),
     r"bad\.json: question q2: answer 'Seine' is not at answer_start 10; the context there "
     r"reads 'the c'"),
    ("bad.json", '{"data": [\n{"paragraphs": []},\n{oops}]}', r"bad\.json:3: malformed JSON"),
    ("bad.json", "", r"bad\.json is empty"),
    ("bad.json", '{"version": "1.1"}', r"bad\.json: not SQuAD JSON: expected an object with a "
                                      r"'data' list"),
    ("bad.json", _broken(lambda d: d["data"][0]["paragraphs"][0]["qas"][2].pop("question")),
     r"bad\.json: data\[0\]\.paragraphs\[0\]\.qas\[2\] \(id q3\) has no 'question'"),
    ("bad.json", _broken(lambda d: d["data"][0]["paragraphs"][0].pop("context")),
     r"data\[0\]\.paragraphs\[0\] has no 'context' \(found: qas\)"),
    ("bad.json", _broken(lambda d: d["data"][0]["paragraphs"][0]["qas"][1].update(id="q1")),
     r"question id 'q1' appears more than once"),
    ("bad.json", _broken(lambda d: d["data"][0]["paragraphs"][0]["qas"][1].update(answers=[])),
     r"question q2 has no answers and is not marked is_impossible"),
    ("bad.json", _broken(lambda d: d["data"][0]["paragraphs"][0]["qas"][0]["answers"][0]
                         .update(answer_start="0")),
     r"answers\[0\]\.answer_start must be a int, found str"),
    ("squad.jsonl", "{}", r"squad\.jsonl: SQuAD data must be a \.json file"),
])
def test_squad_bad_data_messages(tmp_path, name, content, pattern):
    with pytest.raises(ValueError, match=pattern):
        load_squad(write(tmp_path / name, content))


def test_encode_qa_windows_match_transformers_and_cover_the_context(tok, hf_tok):
    examples = [QaExample("q1", "What is the capital of Germany?", CONTEXT,
                          [{"text": "Berlin", "answer_start": 64}]),
                QaExample("q3", "What is Paris?", CONTEXT,
                          [{"text": "capital of France",
                            "answer_start": CONTEXT.index("capital of France")}])]
    max_length, stride = 32, 12
    ds = encode_qa(examples, tok, max_length=max_length, doc_stride=stride)
    context_ref = hf_tok(CONTEXT, add_special_tokens=False, return_offsets_mapping=True)
    all_offsets = [tuple(o) for o in context_ref["offset_mapping"]]
    for ex in examples:
        feats = [(item, f) for item, f in zip(ds, ds.features) if f.example_id == ex.id]
        ref = hf_tok(ex.question, ex.context, truncation="only_second", max_length=max_length,
                     stride=stride, return_overflowing_tokens=True)
        assert [item["input_ids"] for item, _ in feats] == ref["input_ids"]
        assert [item["token_type_ids"] for item, _ in feats] == ref["token_type_ids"]
        assert len(feats) > 3
        # windows in order cover every context token; neighbours share exactly `stride`
        windows = [[o for o in f.offsets if o is not None] for _, f in feats]
        assert windows[0][0] == all_offsets[0] and windows[-1][-1] == all_offsets[-1]
        covered = sorted(set(o for w in windows for o in w))
        assert covered == all_offsets
        for a, b in zip(windows, windows[1:]):
            assert a[-stride:] == b[:stride]
        # the labelled span maps back to exactly the answer text; other windows point to CLS
        answer = ex.answers[0]
        a_start, a_end = answer["answer_start"], answer["answer_start"] + len(answer["text"])
        n_with_answer = 0
        for item, f in feats:
            s, e = item["start_positions"], item["end_positions"]
            inside = [o for o in f.offsets if o is not None]
            if inside[0][0] <= a_start and a_end <= inside[-1][1]:
                n_with_answer += 1
                assert 0 < s <= e
                assert ex.context[f.offsets[s][0]:f.offsets[e][1]] == answer["text"]
                assert item["token_type_ids"][s] == 1
            else:
                assert (s, e) == (0, 0)
        assert n_with_answer >= 2  # the overlap puts the answer in more than one window


def test_encode_qa_answer_cut_by_a_window_edge_points_to_cls(tok):
    # Many window layouts over a 3-token answer: a window that holds only part of it (the
    # first or the last token missing) must get (0, 0), never a span running into [SEP].
    answer = "capital of France"
    ex = QaExample("q3", "What is Paris?", CONTEXT,
                   [{"text": answer, "answer_start": CONTEXT.index(answer)}])
    a_start = ex.answers[0]["answer_start"]
    a_end = a_start + len(answer)
    n_partial = 0
    for max_length, stride in [(m, s) for m in range(16, 24) for s in (1, 3, 5)]:
        ds = encode_qa([ex], tok, max_length=max_length, doc_stride=stride)
        for item, f in zip(ds, ds.features):
            inside = [o for o in f.offsets if o is not None]
            whole = inside[0][0] <= a_start and a_end <= inside[-1][1]
            n_partial += (not whole) and inside[0][0] < a_end and a_start < inside[-1][1]
            s, e = item["start_positions"], item["end_positions"]
            if whole:
                assert ex.context[f.offsets[s][0]:f.offsets[e][1]] == answer
            else:
                assert (s, e) == (0, 0)
    assert n_partial > 3


def test_encode_qa_impossible_eval_mode_and_errors(tok):
    impossible = QaExample("q4", "Who?", CONTEXT, [], is_impossible=True)
    ds = encode_qa([impossible], tok, max_length=40, doc_stride=10)
    assert all((it["start_positions"], it["end_positions"]) == (0, 0) for it in ds)
    ev = encode_qa([impossible], tok, max_length=40, doc_stride=10, training=False)
    assert "start_positions" not in ev[0] and len(ev.features) == len(ds.features)
    long_q = QaExample("q5", "what " * 10, "Berlin.", [{"text": "Berlin", "answer_start": 0}])
    with pytest.warns(TruncationWarning, match="1 of 1 questions were longer than max_length=4"):
        ds = encode_qa([long_q], tok, max_length=16, doc_stride=2, max_query_length=4)
    assert ds[0]["input_ids"][:6] == tok.convert_tokens_to_ids(["[CLS]"] + ["what"] * 4
                                                               + ["[SEP]"])
    assert ds.features[0].context[ds.features[0].offsets[ds[0]["start_positions"]][0]:] \
        .startswith("Berlin")
    with pytest.raises(ValueError, match="question q5: max_length=12 leaves 5 context tokens"):
        encode_qa([long_q], tok, max_length=12, doc_stride=5, max_query_length=4)


def _logits_for(ds, spans, width):
    """(F, T) start/end logits: 0 everywhere, `spans[f] = (s, e, score)` raised per feature."""
    start = torch.zeros(len(ds), width)
    end = torch.zeros(len(ds), width)
    for f, (s, e, value) in spans.items():
        start[f, s] += value
        end[f, e] += value
    return start, end


def test_postprocess_picks_best_valid_span_across_windows(tok):
    ex = QaExample("q1", "What is the capital of Germany?", CONTEXT,
                   [{"text": "Berlin", "answer_start": 64}])
    ds = encode_qa([ex], tok, max_length=32, doc_stride=8, training=False)
    width = max(len(item["input_ids"]) for item in ds)
    ctx0 = [i for i, o in enumerate(ds.features[0].offsets) if o is not None]
    ctx1 = [i for i, o in enumerate(ds.features[1].offsets) if o is not None]
    ctx2 = [i for i, o in enumerate(ds.features[2].offsets) if o is not None]
    start, end = _logits_for(ds, {0: (ctx0[2], ctx0[4], 3.0), 2: (ctx2[1], ctx2[3], 4.0)}, width)
    start[0, 1] = 50.0  # a question token: never an answer
    end[0, 1] = 50.0
    # window 1: the top start comes after the top end (80 if it were allowed); every valid
    # span there scores -60
    start[1], end[1] = -100.0, -100.0
    start[1, ctx1[5]] = 40.0
    end[1, ctx1[2]] = 40.0
    out = postprocess_qa(ds.features, start, end)
    f = ds.features[2]
    a, b = f.offsets[ctx2[1]][0], f.offsets[ctx2[3]][1]
    assert out == {"q1": {"text": CONTEXT[a:b], "start": a, "end": b, "score": 8.0}}
    # max_answer_length=2 rules out both 3-token spans: the best remaining span is chosen
    short = postprocess_qa(ds.features, start, end, max_answer_length=2)["q1"]
    assert short["end"] - short["start"] < b - a and short["score"] < 8.0


def test_postprocess_version_2_null_answer(tok):
    ex = QaExample("q4", "What is the capital of Spain?", CONTEXT, [], is_impossible=True)
    ds = encode_qa([ex], tok, max_length=32, doc_stride=8, training=False)
    width = max(len(item["input_ids"]) for item in ds)
    ctx = [i for i, o in enumerate(ds.features[1].offsets) if o is not None]
    spans = {f: (0, 0, 5.0) for f in range(len(ds))}  # null score 10 in every window ...
    spans[3] = (0, 0, 2.0)  # ... but 4 in window 3: the question's null score is the minimum
    start, end = _logits_for(ds, spans, width)
    start[1, ctx[0]] += 1.5
    end[1, ctx[1]] += 1.5  # best span scores 3.0
    assert postprocess_qa(ds.features, start, end, version_2=True)["q4"] == \
        {"text": "", "start": None, "end": None, "score": 4.0}
    kept = postprocess_qa(ds.features, start, end, version_2=True, null_threshold=1.5)["q4"]
    assert kept["score"] == 3.0 and kept["text"]  # 4.0 does not beat 3.0 + 1.5
    assert postprocess_qa(ds.features, start, end)["q4"]["score"] == 3.0  # v1: never empty
    with pytest.raises(ValueError, match="features but 1 start"):
        postprocess_qa(ds.features, start[:1], end)


def test_qa_round_trip_gold_positions_give_exact_match(tmp_path, tok):
    examples = load_squad(write(tmp_path / "v2.json", json.dumps(squad_json("2.0"))))
    ds = encode_qa(examples, tok, max_length=40, doc_stride=12)
    batch = PaddingCollator(tok.pad_token_id)(list(ds))
    width = batch["input_ids"].shape[1]
    start = torch.nn.functional.one_hot(batch["start_positions"], width).float() * 10  # (F, T)
    end = torch.nn.functional.one_hot(batch["end_positions"], width).float() * 10
    preds = postprocess_qa(ds.features, start.numpy(), end.numpy(), version_2=True)
    assert preds["q4"]["text"] == ""  # only CLS is ever high for the impossible question
    m = squad_metrics({k: v["text"] for k, v in preds.items()}, qa_gold(examples))
    assert m == {"exact_match": 100.0, "f1": 100.0}


# =========================================================================== non-UTF-8 files
# "café" in Latin-1: the byte 0xe9 is not UTF-8. Each reader must name the file and the line.
LATIN1_CAFE = "café".encode("latin-1")
JSONL_LINE = b'{"text": "good film", "label": "pos"}\n'


def not_utf8(path, line):
    return f"{path}:{line}: not UTF-8 text (byte 0xe9); save the file as UTF-8"


@pytest.mark.parametrize("name, content, line", [
    ("a.csv", b"text,label\ngood,pos\n" + LATIN1_CAFE + b",neg\n", 3),
    ("a.tsv", b"text\tlabel\ngood\tpos\nbad\tneg\n" + LATIN1_CAFE + b"\tneg\n", 4),
    ("a.jsonl", JSONL_LINE + b'{"text": "' + LATIN1_CAFE + b'", "label": "neg"}\n', 2),
    # Far past the first read buffer: the line is still exact.
    ("big.jsonl", JSONL_LINE * 40000 + b'{"text": "' + LATIN1_CAFE + b'", "label": "neg"}\n',
     40001),
    ("first.csv", LATIN1_CAFE + b",label\n", 1),
], ids=["csv", "tsv", "jsonl", "deep-jsonl", "first-line"])
def test_non_utf8_classification_file_names_file_and_line(tmp_path, name, content, line):
    path = tmp_path / name
    path.write_bytes(content)
    with pytest.raises(ValueError) as error:
        load_classification(path)
    assert str(error.value) == not_utf8(path, line)


def test_non_utf8_conll_squad_and_parallel_files_name_file_and_line(tmp_path):
    conll = tmp_path / "a.conll"
    conll.write_bytes(b"Paris B-LOC\nis O\n\n" + LATIN1_CAFE + b" O\n")
    with pytest.raises(ValueError) as error:
        load_conll(conll)
    assert str(error.value) == not_utf8(conll, 4)
    squad = tmp_path / "a.json"
    squad.write_bytes(b'{"data": [\n{"title": "' + LATIN1_CAFE + b'"}]}')
    with pytest.raises(ValueError) as error:
        load_squad(squad)
    assert str(error.value) == not_utf8(squad, 2)
    tsv = tmp_path / "p.tsv"
    tsv.write_bytes(b"source\ttarget\nhello\tbonjour\ncoffee\t" + LATIN1_CAFE + b"\n")
    with pytest.raises(ValueError) as error:
        load_parallel(tsv)
    assert str(error.value) == not_utf8(tsv, 3)
    source, target = tmp_path / "src.txt", tmp_path / "tgt.txt"
    source.write_bytes(b"hello\ncoffee\n")
    target.write_bytes(b"bonjour\n" + LATIN1_CAFE + b"\n")
    with pytest.raises(ValueError) as error:
        load_parallel(source=source, target=target)
    assert str(error.value) == not_utf8(target, 2)
