"""Tokenizer: exact agreement with transformers' BertTokenizerFast (and, for the BERT text rules,
with transformers' pure-Python BertTokenizerLegacy, an implementation independent of the Rust
engine) on the real MiniLM vocab and on a tiny cased vocab; vocab training and folder round
trips; error messages."""

import os
import pickle
import threading
import time

import pytest
import torch

from bertkit import Tokenizer

transformers = pytest.importorskip("transformers")

# Every kind of text the BERT rules treat specially.
TEXTS = [
    "Héllo Wörld! Crème brûlée, naïve café.",                   # accents, capitals
    "ÀÉÎÕÜ ǅ ß ﬁ İstanbul Ångström",                            # composed / compatibility chars
    "日本語のテキストと中文混合 text 한국어",                          # CJK (split per char), kana, hangul
    "I ❤️ emoji 😀🎉 👍🏽 flags 🇫🇷",                                # emoji, ZWJ-less modifiers
    "wait!!!...??? (really) --- ok;;; «quoted» ¿qué? 100%",     # punctuation runs, non-ASCII punct
    "ctrl\x00char\x07here\u200b\ufeff tab\tnew\nline\r\x85end",  # control, zero-width, format
    "a" * 300,                                                  # > 100 chars: one [UNK]
    "supercalifragilisticexpialidocious " + "b" * 100,          # exactly 100 chars: WordPiece runs
    "",
    "   \t\n  ",
    "[MASK] is a special token but [mask] and [MASK is not; [CLS][SEP]x",
    "don't won't it's U.S.A. $100.50 3.14 e-mail@x.com https://a.b/c?d=1#e",
    "The quick brown fox jumps over the lazy dog " * 3,
]
PAIRS = [
    "a question?", "", "日本", "Another SENTENCE, with punctuation!!", "   ", "x", "y" * 150,
    "naïve", "[SEP]", "ok", "pair number eleven", "short", "the end",
]


@pytest.fixture(scope="module")
def minilm_tokenizers(minilm_folder):
    return (Tokenizer.from_pretrained(minilm_folder),
            transformers.BertTokenizerFast.from_pretrained(minilm_folder))


def as_lists(encoding, key):
    value = encoding[key]
    if isinstance(value, torch.Tensor):
        value = value.tolist()
    return [[tuple(x) if isinstance(x, (list, tuple)) else x for x in row] for row in value]


def assert_same_encoding(ours, theirs, keys=("input_ids", "token_type_ids", "attention_mask")):
    for key in keys:
        assert as_lists(ours, key) == as_lists(theirs, key), key
    for i in range(len(ours["input_ids"])):
        assert ours.word_ids(i) == theirs.word_ids(i)
        assert ours.sequence_ids(i) == theirs.sequence_ids(i)


# ---------------------------------------------------------------------------- MiniLM vocab
def test_settings_read_from_folder(minilm_tokenizers):
    tok, hf = minilm_tokenizers
    assert tok.vocab_size == len(hf) == 30522
    assert (tok.pad_token_id, tok.unk_token_id, tok.cls_token_id, tok.sep_token_id,
            tok.mask_token_id) == (0, 100, 101, 102, 103)
    assert tok.do_lower_case is True and tok.model_max_length == 512
    assert tok.all_special_ids == sorted(hf.all_special_ids)


def test_single_texts_match_transformers(minilm_tokenizers):
    tok, hf = minilm_tokenizers
    ours = tok(TEXTS, return_offsets_mapping=True, return_special_tokens_mask=True)
    theirs = hf(TEXTS, padding=True, return_tensors="pt", return_offsets_mapping=True,
                return_special_tokens_mask=True)
    assert ours["input_ids"].shape == theirs["input_ids"].shape
    assert_same_encoding(ours, theirs, ("input_ids", "token_type_ids", "attention_mask",
                                        "offset_mapping", "special_tokens_mask"))
    # Spot checks against the BERT rules themselves, not only against the reference.
    assert tok.tokenize(TEXTS[0])[:4] == ["hello", "world", "!", "cr"]
    assert tok.tokenize("a" * 300) == ["[UNK]"]
    assert tok.tokenize("") == [] and tok.tokenize("  \t\n ") == []
    assert tok.tokenize("[MASK] x")[0] == "[MASK]" and tok.tokenize("[mask]") == ["[", "mask", "]"]
    assert tok.tokenize("日本") == ["日", "本"]


def test_single_texts_match_the_pure_python_reference(minilm_folder, minilm_tokenizers):
    tok, _ = minilm_tokenizers
    legacy_module = pytest.importorskip("transformers.models.bert.tokenization_bert_legacy")
    legacy = legacy_module.BertTokenizerLegacy(os.path.join(minilm_folder, "vocab.txt"))
    for text in TEXTS:
        assert tok([text], return_tensors=None)["input_ids"][0] == legacy(text)["input_ids"], text
        assert tok.tokenize(text) == legacy.tokenize(text), text


def test_pairs_match_transformers(minilm_tokenizers):
    tok, hf = minilm_tokenizers
    ours = tok(TEXTS, PAIRS, return_offsets_mapping=True, return_special_tokens_mask=True)
    theirs = hf(TEXTS, PAIRS, padding=True, return_tensors="pt", return_offsets_mapping=True,
                return_special_tokens_mask=True)
    assert_same_encoding(ours, theirs, ("input_ids", "token_type_ids", "attention_mask",
                                        "offset_mapping", "special_tokens_mask"))
    # An empty second segment still gets its [SEP], with token type 1.
    empty = tok(["hello"], [""], return_tensors=None)
    assert empty["input_ids"][0] == [101, 7592, 102, 102]
    assert empty["token_type_ids"][0] == [0, 0, 0, 1]


@pytest.mark.parametrize("strategy", ["longest_first", "only_second", True])
def test_truncation_of_long_pairs_matches_transformers(minilm_tokenizers, strategy):
    tok, hf = minilm_tokenizers
    first = ["a fairly long first segment with many words in it " * 3, "short", "",
             "mid size text here", "one two"]
    second = ["tiny", "a second segment that is very long indeed " * 4, "",
              "another one", "three four five six seven eight nine ten eleven twelve"]
    if strategy == "only_second":  # the first segment must fit on its own
        first[0] = "fits"
    ours = tok(first, second, max_length=16, truncation=strategy, padding="max_length",
               return_offsets_mapping=True, return_special_tokens_mask=True)
    theirs = hf(first, second, max_length=16, truncation=strategy, padding="max_length",
                return_tensors="pt", return_offsets_mapping=True, return_special_tokens_mask=True)
    assert ours["input_ids"].shape == (5, 16)
    assert_same_encoding(ours, theirs, ("input_ids", "token_type_ids", "attention_mask",
                                        "offset_mapping", "special_tokens_mask"))
    if strategy == "only_second":
        # The first segment is kept whole: "[CLS] one two [SEP]" is intact in the last example.
        assert ours["input_ids"][4, :4].tolist() == [101, 2028, 2048, 102]


def test_only_second_truncation_impossible_is_a_clear_error(minilm_tokenizers):
    tok, _ = minilm_tokenizers
    with pytest.raises(ValueError, match="truncation='only_second' and max_length=8"):
        tok(["word " * 20], ["b"], max_length=8, truncation="only_second")


def test_no_truncation_and_pad_to_multiple_of(minilm_tokenizers):
    tok, hf = minilm_tokenizers
    texts = ["word " * 600, "short"]
    ours = tok(texts, truncation=False, padding=True, pad_to_multiple_of=8)
    theirs = hf(texts, truncation=False, padding=True, pad_to_multiple_of=8, return_tensors="pt")
    assert ours["input_ids"].shape[1] == 608
    assert_same_encoding(ours, theirs)
    # Default truncation stops at model_max_length (512), as transformers does.
    assert tok(texts)["input_ids"].shape == (2, 512)


def test_is_split_into_words_matches_transformers(minilm_tokenizers):
    tok, hf = minilm_tokenizers
    words = [["Héllo", "WORLD", "!!", "naïve"], ["日本", "a" * 150, "x", ""], ["don't"]]
    ours = tok(words, is_split_into_words=True, return_offsets_mapping=True)
    theirs = hf(words, is_split_into_words=True, padding=True, return_tensors="pt",
                return_offsets_mapping=True)
    assert_same_encoding(ours, theirs, ("input_ids", "token_type_ids", "attention_mask",
                                        "offset_mapping"))
    assert ours.word_ids(0) == [None, 0, 1, 2, 2, 3, None]
    assert ours.word_ids(1) == [None, 0, 0, 1, 2, None, None]  # "" is a word of no token
    # One pre-split example with a pre-split pair.
    ours = tok(["Hello", "there"], ["pair", "words"], is_split_into_words=True)
    theirs = hf(["Hello", "there"], ["pair", "words"], is_split_into_words=True,
                return_tensors="pt")
    assert_same_encoding(ours, theirs)
    assert ours["token_type_ids"].tolist() == [[0, 0, 0, 0, 1, 1, 1]]


def test_decode_matches_transformers(minilm_tokenizers):
    tok, hf = minilm_tokenizers
    for text in TEXTS + ["don't stop , ok . He said \"hi\" ! 3.14 ( x )", "the [MASK] unaffable"]:
        ids = tok(text)["input_ids"][0]
        for skip in (True, False):
            assert tok.decode(ids, skip_special_tokens=skip) == \
                hf.decode(ids.tolist(), skip_special_tokens=skip), (text, skip)
    assert tok.decode(tok("Un-affable, naïve!")["input_ids"][0]) == "un - affable, naive!"


def test_encode_plain_and_conversions(minilm_tokenizers):
    tok, hf = minilm_tokenizers
    assert tok.encode_plain(TEXTS) == [hf.encode(t, add_special_tokens=False) for t in TEXTS]
    assert tok.convert_tokens_to_ids(["hello", "not-a-token"]) == [7592, 100]
    assert tok.convert_ids_to_tokens([101, 7592, 102]) == ["[CLS]", "hello", "[SEP]"]
    assert tok.convert_ids_to_tokens(103) == "[MASK]"
    # encode_plain must not leave truncation/padding behind for the next call, nor the reverse.
    tok(["x"], max_length=4, padding="max_length")
    assert len(tok.encode_plain(["word " * 600])[0]) == 600


def test_return_lists_and_single_string(minilm_tokenizers):
    tok, hf = minilm_tokenizers
    single = tok("Hello world", "pair")
    assert single["input_ids"].tolist() == [hf("Hello world", "pair")["input_ids"]]
    lists = tok(["a b c", "a"], padding=False, return_tensors=None)
    assert lists["input_ids"] == [[101, 1037, 1038, 1039, 102], [101, 1037, 102]]
    assert lists.input_ids is lists["input_ids"]  # attribute access, as BatchEncoding
    same_length = tok(["a b", "c d"], padding=False)  # equal lengths need no padding
    assert same_length["input_ids"].shape == (2, 4)


# ---------------------------------------------------------------------------- purity, threads
TEN_WORDS = "one two three four five six seven eight nine ten"


def test_tokenize_is_not_changed_by_an_earlier_truncating_call(minilm_tokenizers):
    tok, hf = minilm_tokenizers
    tok(["x"], max_length=5, truncation=True)
    assert tok.tokenize(TEN_WORDS) == TEN_WORDS.split() == hf.tokenize(TEN_WORDS)
    tok(["x"], max_length=6, padding="max_length")
    assert tok.tokenize("x") == ["x"]
    assert tok.encode_plain([TEN_WORDS]) == [hf.encode(TEN_WORDS, add_special_tokens=False)]
    # The default call truncates to model_max_length, not to the last call's max_length.
    assert tok(["word " * 600])["input_ids"].shape == (1, 512)


def test_threads_with_different_settings_get_their_own_results(minilm_tokenizers):
    tok, _ = minilm_tokenizers
    texts, long_text = TEXTS + PAIRS, "word " * 300
    calls = [  # each thread repeats one call; all run at the same time on the same tokenizer
        lambda: tok(texts, max_length=6, padding="max_length", return_tensors=None),
        lambda: tok(texts, PAIRS * 2, max_length=21, truncation="longest_first",
                    return_tensors=None, return_offsets_mapping=True),
        lambda: tok(texts, truncation=False, padding=False, return_tensors=None),
        lambda: tok.tokenize(long_text),
    ]
    plain = lambda result: dict(result) if isinstance(result, dict) else result  # noqa: E731
    expected = [plain(call()) for call in calls]
    assert len(expected[3]) == 300 and len(expected[0]["input_ids"][0]) == 6
    assert max(len(ids) for ids in expected[1]["input_ids"]) == 21
    start, failures = threading.Barrier(len(calls)), []

    def hammer(index):
        start.wait()
        try:
            for _ in range(60):
                result = calls[index]()
                if plain(result) != expected[index]:
                    failures.append(f"call {index} gave a different result")
                    return
        except Exception as e:  # e.g. the engine's "Already borrowed" when settings change
            failures.append(f"call {index} raised {e!r}")

    threads = [threading.Thread(target=hammer, args=(i,)) for i in range(len(calls))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert failures == []


# ---------------------------------------------------------------------------- long texts
def assert_same_as_transformers(tok, hf, texts, pairs=None, **options):
    """Our (cut) encoding equals transformers' encoding of the whole texts, offsets included."""
    keys = ("input_ids", "token_type_ids", "attention_mask", "offset_mapping",
            "special_tokens_mask")
    options.update(padding="max_length", return_offsets_mapping=True,
                   return_special_tokens_mask=True)
    theirs = hf(texts, pairs, return_tensors="pt", **options) if pairs is not None \
        else hf(texts, return_tensors="pt", **options)
    assert_same_encoding(tok(texts, pairs, **options), theirs, keys)


# Long texts whose cut position falls on every kind of character the BERT rules treat
# specially (spaces, punctuation, accents and combining marks, CJK, control characters,
# special tokens, words over 100 characters).
LONG_TEXTS = [text * 12 for text in TEXTS[:8] + TEXTS[10:]] + \
    ["".join(TEXTS[i] + PAIRS[j] for i in range(len(TEXTS)) for j in (i, -i)),
     "日本語中文" * 300, "e\u0301\u0300 " * 400, "x" * 5000 + " tail", "   \t" * 500 + "late words",
     "[MASK]" * 400, "Ǆ!" * 900 + "\x85\u200b" * 100]


@pytest.mark.parametrize("max_length", [8, 9, 16, 17, 64])
def test_long_single_texts_are_cut_without_changing_the_result(minilm_tokenizers, max_length):
    tok, hf = minilm_tokenizers
    assert_same_as_transformers(tok, hf, LONG_TEXTS, max_length=max_length, truncation=True)


@pytest.mark.parametrize("strategy", ["longest_first", "only_second", "only_first"])
@pytest.mark.parametrize("max_length", [9, 16, 17])  # budgets of 6, 13 (odd) and 14 tokens
def test_long_pairs_are_cut_without_changing_the_result(minilm_tokenizers, strategy, max_length):
    tok, hf = minilm_tokenizers
    # Short enough for transformers, which builds every pair of overflow windows; the cut
    # starts at 8 characters per kept token (48 to 120 here).
    long = [text[:600] for text in LONG_TEXTS]
    if strategy == "longest_first":  # both sides long, or one side short, in either order
        others = [text[::-1][:450] if i % 2 else PAIRS[i % len(PAIRS)][:20]
                  for i, text in enumerate(long)]
        first, second = long + others, others + long
    else:  # the side that is never truncated must fit beside one token of the other
        short = ["", "x", "a question?", "日本", "naïve", "[SEP]"]
        short = [short[i % len(short)] for i in range(len(long))]
        first, second = (short, long) if strategy == "only_second" else (long, short)
    assert_same_as_transformers(tok, hf, first, second, max_length=max_length,
                                truncation=strategy)


def test_longest_first_keeps_which_side_is_longer(minilm_tokenizers):
    # With an even max_length the odd token left goes to the side with more tokens in the
    # whole text: here the first side's prefix is denser but the second side is longer.
    tok, hf = minilm_tokenizers
    dense, long = "a " * 100, "abcdefghij " * 10 + "b " * 150
    for first, second in [(dense, long), (long, dense), (dense, dense), (long, long + "c")]:
        for max_length in (8, 9, 16):
            assert_same_as_transformers(tok, hf, [first], [second], max_length=max_length,
                                        truncation="longest_first")


def test_a_cut_never_splits_a_special_token(minilm_tokenizers):
    # max_length 8 keeps 6 tokens: "a b c d e" and the [MASK], wherever the first place to cut
    # (56 characters) falls inside it; "[MASK" without its "]" is two other tokens.
    tok, hf = minilm_tokenizers
    texts = ["a b c d e" + " " * pad + "[MASK]" + " tail" * 30 for pad in range(40, 48)]
    assert_same_as_transformers(tok, hf, texts, max_length=8, truncation=True)
    assert (tok(texts, max_length=8)["input_ids"][:, 6] == tok.mask_token_id).all()


def test_ten_megabyte_text_is_cut_before_encoding(minilm_tokenizers):
    tok, hf = minilm_tokenizers
    text, cjk = "word " * 2_000_000, "日本語" * 3_500_000  # 10 MB each
    started = time.perf_counter()
    single = tok([text, cjk], max_length=16, return_offsets_mapping=True)
    pair = tok(["a question?"], [text], max_length=16, truncation="only_second")
    elapsed = time.perf_counter() - started  # 9 s and 1.7 GB when the whole text is encoded
    assert elapsed < 2.0, f"{elapsed:.1f} s"
    word = tok.convert_tokens_to_ids("word")
    assert single["input_ids"][0].tolist() == [101] + [word] * 14 + [102]
    assert single["offset_mapping"][0].tolist() == \
        [[0, 0]] + [[5 * i, 5 * i + 4] for i in range(14)] + [[0, 0]]
    assert single["input_ids"][1].tolist() == hf(cjk[:100], max_length=16, truncation=True)[
        "input_ids"]
    assert pair["input_ids"][0].tolist() == \
        hf("a question?", "word " * 20, max_length=16, truncation="only_second")["input_ids"]


# ---------------------------------------------------------------------------- flags, cased vocab
CASED_TEXTS = ["The Café and the CAFÉ", "naïve NAIVE Naïve", "Straße strasse", "Ünder über",
               "hello Hello HELLO World", "日本 THE the", "unable Crème"]


@pytest.mark.parametrize("do_lower_case", [True, False])
@pytest.mark.parametrize("strip_accents", [None, True, False])
def test_case_and_accent_flags_match_transformers(tiny_vocab, do_lower_case, strip_accents):
    ours = Tokenizer(tiny_vocab, do_lower_case=do_lower_case, strip_accents=strip_accents)
    theirs = transformers.BertTokenizerFast(
        vocab={t: i for i, t in enumerate(tiny_vocab)}, do_lower_case=do_lower_case,
        strip_accents=strip_accents)
    mine = ours(CASED_TEXTS, CASED_TEXTS[::-1], return_offsets_mapping=True)
    ref = theirs(CASED_TEXTS, CASED_TEXTS[::-1], padding=True, return_tensors="pt",
                 return_offsets_mapping=True)
    assert_same_encoding(mine, ref, ("input_ids", "token_type_ids", "attention_mask",
                                     "offset_mapping"))


def test_flags_change_the_ids_as_the_bert_rules_say(tiny_vocab):
    cased = Tokenizer(tiny_vocab, do_lower_case=False)
    assert cased.tokenize("Café CAFÉ") == ["Café", "CAFÉ"]
    assert Tokenizer(tiny_vocab, do_lower_case=False, strip_accents=True).tokenize("Café") == \
        ["C", "##a", "##f", "##e"]
    assert Tokenizer(tiny_vocab, do_lower_case=True).tokenize("Café CAFÉ") == ["cafe", "cafe"]
    assert Tokenizer(tiny_vocab, do_lower_case=True, strip_accents=False).tokenize("CAFÉ") == \
        ["café"]


@pytest.mark.parametrize("do_lower_case, strip_accents", [(False, None), (True, False),
                                                           (False, True)])
def test_folder_round_trip_keeps_flags_and_loads_in_transformers(tmp_path, tiny_vocab,
                                                                 do_lower_case, strip_accents):
    ours = Tokenizer(tiny_vocab, do_lower_case=do_lower_case, strip_accents=strip_accents,
                     model_max_length=64)
    ours.save_pretrained(tmp_path)
    assert (tmp_path / "vocab.txt").read_text(encoding="utf-8").splitlines() == tiny_vocab
    again = Tokenizer.from_pretrained(tmp_path)
    assert (again.do_lower_case, again.strip_accents, again.model_max_length) == \
        (do_lower_case, strip_accents, 64)
    theirs = transformers.BertTokenizerFast.from_pretrained(str(tmp_path))
    assert theirs.model_max_length == 64
    reference = ours(CASED_TEXTS, return_offsets_mapping=True)
    assert_same_encoding(again(CASED_TEXTS, return_offsets_mapping=True), reference,
                         ("input_ids", "token_type_ids", "attention_mask", "offset_mapping"))
    assert_same_encoding(reference, theirs(CASED_TEXTS, padding=True, return_tensors="pt",
                                           return_offsets_mapping=True),
                         ("input_ids", "token_type_ids", "attention_mask", "offset_mapping"))


def test_transformers_saved_tokenizer_folder_loads(tmp_path, tiny_vocab):
    # transformers 5 saves a BERT tokenizer as tokenizer.json + tokenizer_config.json, without
    # vocab.txt; "a folder written by transformers loads in bertkit" must hold for it too.
    theirs = transformers.BertTokenizerFast(vocab={t: i for i, t in enumerate(tiny_vocab)},
                                            do_lower_case=False)
    theirs.save_pretrained(str(tmp_path))
    ours = Tokenizer.from_pretrained(tmp_path)
    assert ours.vocab_size == len(tiny_vocab) and ours.do_lower_case is False
    assert_same_encoding(ours(CASED_TEXTS), theirs(CASED_TEXTS, padding=True, return_tensors="pt"))


def test_special_token_names_from_the_folder(tmp_path, tiny_vocab):
    vocab = ["<pad>" if t == "[PAD]" else t for t in tiny_vocab]
    (tmp_path / "vocab.txt").write_text("\n".join(vocab) + "\n", encoding="utf-8")
    (tmp_path / "special_tokens_map.json").write_text(
        '{"pad_token": {"content": "<pad>", "lstrip": false}}', encoding="utf-8")
    tok = Tokenizer.from_pretrained(tmp_path)
    assert tok.pad_token_id == 0 and tok.special_tokens["pad_token"] == "<pad>"
    assert tok(["a", "a b c"])["input_ids"][0].tolist() == [2, vocab.index("a"), 3, 0, 0]


def test_duplicate_vocab_line_round_trips(tmp_path, tiny_vocab):
    # Some published vocabs repeat a line; ids follow line numbers (the repeated token keeps its
    # last line, as transformers does) and save_pretrained must write every line back.
    vocab = tiny_vocab + ["the"] + ["zz"]
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "vocab.txt").write_text("\n".join(vocab) + "\n", encoding="utf-8")
    tok = Tokenizer.from_pretrained(tmp_path / "in")
    assert tok.convert_tokens_to_ids(["the", "zz"]) == [len(tiny_vocab), len(tiny_vocab) + 1]
    assert tok.vocab_size == len(vocab)  # the model needs an embedding row for every id
    tok.save_pretrained(tmp_path / "out")
    assert (tmp_path / "out" / "vocab.txt").read_text(encoding="utf-8").splitlines() == vocab


def test_pickle_round_trip(minilm_tokenizers):
    # DataLoader workers started with "spawn" (macOS, Windows) and copy.deepcopy pickle the
    # tokenizer held by a dataset or collator.
    tok, _ = minilm_tokenizers
    again = pickle.loads(pickle.dumps(tok))
    assert torch.equal(again(TEXTS)["input_ids"], tok(TEXTS)["input_ids"])


# ---------------------------------------------------------------------------- training
CORPUS = [
    "The cat sat on the mat. The dog sat on the log.",
    "Cats and dogs are friends; the cats are sleeping and the dogs are running.",
    "A quick brown fox jumps over the lazy dog while the cat is watching.",
    "Naïve cafés serve crème brûlée to the cats and the dogs.",
] * 5


@pytest.mark.parametrize("lowercase", [True, False])
def test_train_round_trip_matches_transformers(tmp_path, lowercase):
    tok = Tokenizer.train(CORPUS, vocab_size=120, lowercase=lowercase, show_progress=False)
    assert [tok.convert_ids_to_tokens(i) for i in range(5)] == \
        ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    assert 5 < tok.vocab_size <= 120
    assert sorted(tok.vocab.values()) == list(range(tok.vocab_size))
    assert ("The" in tok.vocab) is (not lowercase)
    assert "cat" in tok.vocab or "cats" in tok.vocab  # frequent words are learned whole
    tok.save_pretrained(tmp_path)
    again = Tokenizer.from_pretrained(tmp_path)
    theirs = transformers.BertTokenizerFast.from_pretrained(str(tmp_path))
    probe = CORPUS[:4] + ["Unseen words: zebra QUIXOTIC 日本!", ""]
    reference = tok(probe, probe[::-1])
    assert_same_encoding(again(probe, probe[::-1]), reference)
    assert_same_encoding(reference, theirs(probe, probe[::-1], padding=True, return_tensors="pt"))
    assert tok.tokenize("zebra")  # characters seen in training cover unseen words
    assert "[UNK]" not in tok.tokenize("the cat sat")


def test_train_from_files(tmp_path):
    paths = []
    for i in range(2):
        path = tmp_path / f"part{i}.txt"
        path.write_text("\n".join(CORPUS[i::2]), encoding="utf-8")
        paths.append(str(path))
    from_files = Tokenizer.train(paths, vocab_size=100, show_progress=False)
    # Not compared with a vocab trained on the same texts from an iterator: the tokenizers
    # trainer breaks count ties in hash-map order, so two runs on the same data can differ
    # (huggingface/tokenizers#1794). What must hold: the specials first, every character.
    assert from_files.vocab_size == 100
    assert [from_files.convert_ids_to_tokens(i) for i in range(5)] == \
        ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    assert all("[UNK]" not in from_files.tokenize(text) for text in CORPUS)
    with pytest.raises(FileNotFoundError, match="corpus file .*missing.txt does not exist"):
        Tokenizer.train(str(tmp_path / "missing.txt"), vocab_size=100, show_progress=False)
    with pytest.raises(ValueError, match="vocab_size must be above 5"):
        Tokenizer.train(CORPUS, vocab_size=5, show_progress=False)
    with pytest.raises(ValueError, match="corpus is empty"):
        Tokenizer.train(iter([]), vocab_size=50, show_progress=False)


def test_train_on_a_file_that_is_not_utf8_names_it(tmp_path):
    good = tmp_path / "good.txt"
    good.write_text("\n".join(CORPUS), encoding="utf-8")
    bad = tmp_path / "bad.txt"
    bad.write_bytes("naïve text\n".encode() + b"caf\xe9 latin-1\n")
    with pytest.raises(ValueError) as raised:
        Tokenizer.train([str(good), str(bad)], vocab_size=100, show_progress=False)
    assert str(raised.value) == f"{bad} is not UTF-8 text (byte 0xe9 at offset 15)"
    # A character cut by the 1 MiB reading chunk is still valid; the bad byte comes after it.
    head = b"a" * ((1 << 20) - 1) + "é".encode() + b"ok"
    bad.write_bytes(head + b"\xc3\x28\n")
    with pytest.raises(ValueError, match=rf"bad\.txt is not UTF-8 text \(byte 0xc3 at offset "
                                         rf"{len(head)}\)$"):
        Tokenizer.train(str(bad), vocab_size=100, show_progress=False)


# ---------------------------------------------------------------------------- errors
def test_folder_errors(tmp_path, tiny_vocab):
    with pytest.raises(FileNotFoundError, match="tokenizer folder .*absent does not exist"):
        Tokenizer.from_pretrained(tmp_path / "absent")
    with pytest.raises(FileNotFoundError, match="has no vocab.txt"):
        Tokenizer.from_pretrained(tmp_path)
    (tmp_path / "vocab.txt").write_text("\n", encoding="utf-8")
    with pytest.raises(ValueError, match="vocab.txt is empty"):
        Tokenizer.from_pretrained(tmp_path)
    (tmp_path / "vocab.txt").write_text("\n".join(t for t in tiny_vocab if t != "[MASK]"),
                                        encoding="utf-8")
    with pytest.raises(ValueError, match=r"vocab\.txt: the vocabulary lacks the special "
                                         r"token\(s\) \[MASK\]"):
        Tokenizer.from_pretrained(tmp_path)
    (tmp_path / "vocab.txt").write_text("\n".join(tiny_vocab), encoding="utf-8")
    (tmp_path / "tokenizer_config.json").write_text("{oops", encoding="utf-8")
    with pytest.raises(ValueError, match=r"tokenizer_config\.json is not valid JSON"):
        Tokenizer.from_pretrained(tmp_path)


def test_call_errors(tiny_vocab):
    tok = Tokenizer(tiny_vocab)
    with pytest.raises(ValueError, match="same length, got 2 texts and 1 text_pairs"):
        tok(["a", "b"], ["c"])
    with pytest.raises(TypeError, match=r"texts\[1\] must be a string, got NoneType"):
        tok(["a", None])
    with pytest.raises(TypeError, match=r"texts\[0\] must be a string, got int"):
        tok([5])
    with pytest.raises(TypeError, match=r"text_pairs\[0\] must be a string, got list"):
        tok(["a"], [["b"]])
    with pytest.raises(TypeError, match="texts must be a list of strings, got NoneType"):
        tok(None)
    with pytest.raises(TypeError, match="text must be a string, got int"):
        tok.tokenize(5)
    with pytest.raises(ValueError, match="different lengths; use padding=True"):
        tok(["a", "a b c"], padding=False, return_tensors="pt")
    with pytest.raises(ValueError, match="truncation must be"):
        tok(["a"], truncation="sideways")
    with pytest.raises(ValueError, match="padding must be"):
        tok(["a"], padding="left")
    with pytest.raises(ValueError, match="return_tensors must be 'pt' or None"):
        tok(["a"], return_tensors="np")
    with pytest.raises(ValueError, match="max_length 2 leaves no room"):
        tok(["a"], ["b"], max_length=2)


# ---------------------------------------------------------------------------- byte-level BPE
# A small byte-level BPE vocab (RoBERTa specials first), trained here and handed to
# transformers, whose RobertaTokenizerFast / GPT2TokenizerFast are the reference.
from bertkit.tokenizer import BPETokenizer  # noqa: E402


@pytest.fixture(scope="module")
def bpe_folders(tmp_path_factory):
    """Folders of one trained vocab: ours (vocab.json, merges.txt, tokenizer.json), and the
    RoBERTa and GPT-2 folders transformers saves from our vocab.json + merges.txt."""
    root = tmp_path_factory.mktemp("bpe")
    ours = BPETokenizer.train(CORPUS + TEXTS + PAIRS, vocab_size=400, show_progress=False)
    ours.save_pretrained(root / "ours")
    files = dict(vocab=str(root / "ours" / "vocab.json"), merges=str(root / "ours" / "merges.txt"))
    roberta = transformers.RobertaTokenizerFast(**files)
    roberta.save_pretrained(str(root / "roberta"))
    gpt2 = transformers.GPT2TokenizerFast(**files)
    gpt2.save_pretrained(str(root / "gpt2"))
    return root, roberta, gpt2


BPE_KEYS = ("input_ids", "attention_mask", "offset_mapping", "special_tokens_mask")


@pytest.mark.parametrize("folder", ["ours", "roberta"])
def test_bpe_roberta_matches_transformers(bpe_folders, folder):
    root, hf, _ = bpe_folders
    tok = Tokenizer.from_pretrained(root / folder)  # the folder's files choose BPE
    assert isinstance(tok, BPETokenizer) and tok.kind == "roberta"
    assert (tok.cls_token_id, tok.pad_token_id, tok.sep_token_id, tok.unk_token_id,
            tok.mask_token_id) == (0, 1, 2, 3, 4) == (hf.cls_token_id, hf.pad_token_id,
                                                      hf.sep_token_id, hf.unk_token_id,
                                                      hf.mask_token_id)
    options = dict(return_offsets_mapping=True, return_special_tokens_mask=True)
    for pairs in (None, PAIRS):
        ours = tok(TEXTS, pairs, **options)
        theirs = hf(TEXTS, pairs, padding=True, return_tensors="pt", **options)
        for key in BPE_KEYS:
            assert ours[key].tolist() == theirs[key].tolist(), (key, pairs is None)
        assert not ours["token_type_ids"].any()  # no token types
    # The pair layout by hand: <s> A </s></s> B </s>.
    a, b = tok.encode_plain(["hello world", "x"])
    assert tok("hello world", "x")["input_ids"][0].tolist() == [0, *a, 2, 2, *b, 2]
    assert tok.tokenize(" world") == hf.tokenize(" world") and tok.tokenize(" world")[0][0] == "Ġ"
    for text in TEXTS + ["<mask> is one token, <mask>x too"]:
        ids = tok(text)["input_ids"][0].tolist()
        for skip in (True, False):
            assert tok.decode(ids, skip_special_tokens=skip) == \
                hf.decode(ids, skip_special_tokens=skip), (text, skip)
    assert tok.decode(tok("Naïve 日本 😀!")["input_ids"][0]) == "Naïve 日本 😀!"  # bytes: lossless


@pytest.mark.parametrize("max_length", [5, 9, 17])
def test_bpe_truncation_of_long_texts_matches_transformers(bpe_folders, max_length):
    root, hf, _ = bpe_folders
    tok = Tokenizer.from_pretrained(root / "ours")
    long = [text[:600] for text in LONG_TEXTS]  # cut before encoding: results must not change
    options = dict(max_length=max_length, truncation=True, padding="max_length",
                   return_offsets_mapping=True, return_special_tokens_mask=True)
    for pairs in (None, [text[::-1][:300] for text in long]):
        if pairs is not None and max_length < 9:
            continue
        ours = tok(long, pairs, **options)
        theirs = hf(long, pairs, return_tensors="pt", **options)
        for key in BPE_KEYS:
            assert ours[key].tolist() == theirs[key].tolist(), key
    with pytest.raises(ValueError, match="max_length 4 leaves no room"):
        tok(["a"], ["b"], max_length=4)  # a pair has 4 special tokens


def test_bpe_gpt2_layout_matches_transformers(bpe_folders):
    root, _, hf = bpe_folders
    tok = Tokenizer.from_pretrained(root / "gpt2")
    assert tok.kind == "gpt2" and tok.pad_token_id is None and tok.cls_token_id is None
    eos = tok.eos_token_id
    assert eos == tok.bos_token_id == hf.eos_token_id == 400  # <|endoftext|> after the vocab
    ours = tok(TEXTS, padding=False, return_tensors=None, return_offsets_mapping=True)
    theirs = hf(TEXTS, return_offsets_mapping=True)
    assert ours["input_ids"] == theirs["input_ids"]  # no <s> </s>: the bare text
    assert [[tuple(o) for o in row] for row in ours["offset_mapping"]] == \
        [[tuple(o) for o in row] for row in theirs["offset_mapping"]]
    assert tok("a<|endoftext|>b", return_tensors=None)["input_ids"][0][1] == eos
    assert tok("one prompt")["input_ids"].tolist() == [hf("one prompt")["input_ids"]]
    with pytest.raises(ValueError, match="different lengths and this tokenizer has no pad token"):
        tok(TEXTS)
    with pytest.raises(ValueError, match="no pad token"):
        tok(TEXTS, padding="max_length", max_length=8)
    padded = BPETokenizer.from_pretrained(root / "gpt2", pad_token="<|endoftext|>")(
        ["a", "a cat sat"])
    assert padded["input_ids"][0, -1] == eos and padded["attention_mask"][0].tolist() == \
        [1] + [0] * (padded["input_ids"].shape[1] - 1)


def test_bpe_saved_folder_loads_in_transformers(tmp_path, bpe_folders):
    root, hf, _ = bpe_folders
    ours = Tokenizer.from_pretrained(root / "roberta")
    ours.save_pretrained(tmp_path / "out")
    assert sorted(os.listdir(tmp_path / "out")) == ["merges.txt", "special_tokens_map.json",
                                                    "tokenizer.json", "tokenizer_config.json",
                                                    "vocab.json"]
    again = transformers.AutoTokenizer.from_pretrained(str(tmp_path / "out"))
    assert type(again).__name__ == "RobertaTokenizer"
    assert again(TEXTS, PAIRS)["input_ids"] == hf(TEXTS, PAIRS)["input_ids"]
    # Only vocab.json + merges.txt (older folders): the same tokenizer.
    os.remove(tmp_path / "out" / "tokenizer.json")
    files_only = Tokenizer.from_pretrained(tmp_path / "out")
    assert files_only(TEXTS, PAIRS)["input_ids"].tolist() == ours(TEXTS, PAIRS)["input_ids"].tolist()
    assert pickle.loads(pickle.dumps(files_only))(TEXTS)["input_ids"].tolist() == \
        ours(TEXTS)["input_ids"].tolist()


def test_bpe_errors(tmp_path):
    (tmp_path / "vocab.json").write_text('{"a": 0, "b": 1}', encoding="utf-8")
    (tmp_path / "merges.txt").write_text("#version: 0.2\na b\nab\n", encoding="utf-8")
    with pytest.raises(ValueError, match=r"merges\.txt line 3: a merge is two tokens"):
        Tokenizer.from_pretrained(tmp_path)
    (tmp_path / "merges.txt").write_text("#version: 0.2\na b\n", encoding="utf-8")
    with pytest.raises(ValueError, match=r"vocab\.json: the vocabulary lacks the special token"):
        Tokenizer.from_pretrained(tmp_path)
    with pytest.raises(ValueError, match="corpus is empty"):
        BPETokenizer.train(iter([]), vocab_size=300, show_progress=False)
    with pytest.raises(ValueError, match="vocab_size must be at least 261"):
        BPETokenizer.train(CORPUS, vocab_size=100, show_progress=False)


# ---------------------------------------------------------------------------- SentencePiece (ALBERT)
from bertkit.tokenizer import SentencePieceTokenizer  # noqa: E402


@pytest.fixture(scope="module")
def spiece_folder(tmp_path_factory):
    """A unigram spiece.model trained here by sentencepiece, with ALBERT's special pieces."""
    spm = pytest.importorskip("sentencepiece")
    root = tmp_path_factory.mktemp("spiece")
    corpus = root / "corpus.txt"
    corpus.write_text("\n".join(CORPUS + TEXTS + PAIRS), encoding="utf-8")
    spm.SentencePieceTrainer.train(
        input=str(corpus), model_prefix=str(root / "spiece"), vocab_size=150,
        model_type="unigram", pad_id=0, unk_id=1, bos_id=2, eos_id=3, pad_piece="<pad>",
        unk_piece="<unk>", bos_piece="[CLS]", eos_piece="[SEP]", user_defined_symbols=["[MASK]"],
        character_coverage=1.0, minloglevel=2)
    (root / "corpus.txt").unlink()
    (root / "spiece.vocab").unlink()
    return root


def test_albert_sentencepiece_matches_transformers(spiece_folder, tmp_path):
    tok = Tokenizer.from_pretrained(spiece_folder)  # spiece.model chooses SentencePiece
    hf = transformers.AlbertTokenizer.from_pretrained(str(spiece_folder))
    assert isinstance(tok, SentencePieceTokenizer)
    assert (tok.pad_token_id, tok.unk_token_id, tok.cls_token_id, tok.sep_token_id,
            tok.mask_token_id) == (0, 1, 2, 3, 4)
    keys = ("input_ids", "token_type_ids", "attention_mask", "offset_mapping")
    for pairs in (None, PAIRS):
        ours = tok(TEXTS, pairs, return_offsets_mapping=True)
        theirs = hf(TEXTS, pairs, padding=True, return_tensors="pt", return_offsets_mapping=True,
                    return_token_type_ids=True)
        for key in keys:
            assert ours[key].tolist() == theirs[key].tolist(), key
    long = [text[:600] for text in LONG_TEXTS]
    options = dict(max_length=9, truncation=True, padding="max_length",
                   return_offsets_mapping=True)
    assert tok(long, **options)["input_ids"].tolist() == \
        hf(long, return_tensors="pt", **options)["input_ids"].tolist()
    for text in TEXTS:
        ids = tok(text)["input_ids"][0].tolist()
        assert tok.decode(ids) == hf.decode(ids, skip_special_tokens=True), text
    assert tok.tokenize("Hello World")[0].startswith("▁")
    # Saved by bertkit: transformers and bertkit read the folder back to the same ids.
    tok.save_pretrained(tmp_path / "ours")
    again = transformers.AutoTokenizer.from_pretrained(str(tmp_path / "ours"))
    assert again(TEXTS, PAIRS)["input_ids"] == hf(TEXTS, PAIRS)["input_ids"]
    (tmp_path / "ours" / "spiece.model").unlink()  # tokenizer.json alone (transformers 5)
    assert Tokenizer.from_pretrained(tmp_path / "ours")(TEXTS)["input_ids"].tolist() == \
        tok(TEXTS)["input_ids"].tolist()


def test_spiece_errors(tmp_path):
    (tmp_path / "spiece.model").write_bytes(b"\x0a\xff\xff")
    with pytest.raises(ValueError, match=r"spiece\.model is not a SentencePiece model"):
        Tokenizer.from_pretrained(tmp_path)
