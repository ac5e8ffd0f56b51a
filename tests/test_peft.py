"""PEFT: LoRA, adapters, prefix tuning, AdaLoRA, BitFit on a tiny BERT.

What is checked, each against an independent reference:
- initialisation is an identity (outputs bit-equal to the base model's) for every method but
  prefix tuning, whose attention is checked against a hand-computed softmax instead;
- merged LoRA equals unmerged (1e-5), unmerge restores the weights bit for bit, merge_lora
  writes a folder transformers loads with the same outputs and refuses a bad merge;
- only the intended parameters get gradients, and after Trainer steps every other parameter
  is bit-identical;
- adapter folders round-trip (same outputs), hold exactly the expected tensors, are small,
  and fail with clear errors for a wrong base or wrong targets;
- the peft library loads a bertkit LoRA adapter and bertkit loads a peft one (same outputs);
- AdaLoRA's budget schedule against hand values, its allocation against hand-built scores,
  and a Trainer run that moves rank between modules and saves the allocation.
"""

from __future__ import annotations

import json
import math
import os
import warnings

import pytest
import torch
from safetensors.torch import load_file, save_file

from bertkit import (BertConfig, BertForQuestionAnswering, BertForSequenceClassification,
                     BertModel)
from bertkit.data.tasks import PaddingCollator
from bertkit.modeling.layers import split_heads
from bertkit.peft import (ADAPTER_CONFIG_NAME, ADAPTER_WEIGHTS_NAME, LoraLinear, PeftModel,
                          apply_peft, budget_at, load_adapter, merge_lora, on_step,
                          save_adapter)
from bertkit.peft.prefix import PrefixHook
from bertkit.training import Trainer, TrainingConfig
from bertkit.training.trainer import planned_steps

TINY = dict(vocab_size=99, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
            intermediate_size=37)
LABELS = {0: "neg", 1: "neu", 2: "pos"}
METHODS = {  # name -> (method, options): small sizes
    "lora": ("lora", dict(r=4, alpha=8)),
    "houlsby": ("adapter", dict(size=8)),
    "pfeiffer": ("adapter", dict(size=8, variant="pfeiffer")),
    "prefix": ("prefix", dict(length=3, mlp_hidden_size=16)),
    "adalora": ("adalora", dict(init_r=4, target_r=2, total_steps=3, t_init=0, t_final=1)),
    "bitfit": ("bitfit", {}),
}


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    # Tiny matmuls: a second thread only adds synchronisation (and the CI cores are shared).
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


@pytest.fixture(scope="module")
def base_folder(tmp_path_factory) -> str:
    """A tiny base BertModel folder (no head), with non-trivial LayerNorms and biases."""
    torch.manual_seed(1)
    model = BertModel(BertConfig(**TINY))
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "LayerNorm" in name or "norm" in name or name.endswith("bias"):
                p.add_(torch.randn_like(p) * 0.1)
    folder = str(tmp_path_factory.mktemp("base"))
    model.save_pretrained(folder)
    return folder


def task_model(base_folder: str, cls=BertForSequenceClassification) -> torch.nn.Module:
    kwargs = {"id2label": dict(LABELS)} if cls is BertForSequenceClassification else {}
    return cls.from_pretrained(base_folder, verbose=False, **kwargs)


def batch() -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(123)
    ids = torch.randint(5, 99, (3, 9), generator=g)                          # (B, T)
    mask = torch.ones_like(ids)
    mask[1, 5:] = 0
    mask[2, 7:] = 0
    return {"input_ids": ids, "attention_mask": mask}


def wrap(base_folder: str, key: str, cls=BertForSequenceClassification,
         model: torch.nn.Module | None = None) -> PeftModel:
    method, options = METHODS[key]
    model = task_model(base_folder, cls) if model is None else model
    return apply_peft(model, method, base_model_folder=base_folder, **options)


def perturb_trainable(peft: PeftModel, scale: float = 0.1, only: str = "") -> None:
    """Random values in every trainable tensor (as training would give; names starting with
    ``only``), fixed seed."""
    g = torch.Generator().manual_seed(7)
    with torch.no_grad():
        for name, p in peft.named_parameters():
            if p.requires_grad and name.startswith(only):
                p.add_(torch.randn(p.shape, generator=g) * scale)


def expected_trainable(peft: PeftModel, key: str) -> set[str]:
    """The parameters each method should train, written from the papers' rules (not from the
    implementation): the method's own + the classifier head."""
    names = [n for n, _ in peft.named_parameters()]
    head = {n for n in names if n.startswith("model.classifier.")}
    if key in ("lora", "adalora"):
        own = {n for n in names if ".lora_" in n
               and any(f".attention.{t}.lora_" in n for t in ("query", "value"))}
    elif key == "houlsby":
        own = {n for n in names if ".adapters.attention." in n or ".adapters.ffn." in n
               or "_norm." in n}
    elif key == "pfeiffer":
        own = {n for n in names if ".adapters.ffn." in n}
    elif key == "prefix":
        own = {n for n in names if n.startswith("extra.prefix_encoder.")}
    else:
        own = {n for n in names if n.startswith("model.bert.") and n.endswith(".bias")}
    assert own, key
    return own | head


# =========================================================================== identity at init


@pytest.mark.parametrize("key", ["lora", "houlsby", "pfeiffer", "adalora", "bitfit"])
@pytest.mark.parametrize("cls", [BertForSequenceClassification, BertForQuestionAnswering])
def test_wrapped_model_equals_base_exactly_at_init(base_folder, key, cls):
    base = task_model(base_folder, cls).eval()
    with torch.no_grad():
        ref = base(**batch())
    peft = wrap(base_folder, key, model=base).eval()
    with torch.no_grad():
        out = peft(**batch())
    if cls is BertForSequenceClassification:
        assert torch.equal(out.logits, ref.logits)
    else:
        assert torch.equal(out.start_logits, ref.start_logits)
        assert torch.equal(out.end_logits, ref.end_logits)
    # ... and the method really is there: its parameters change the outputs once trained.
    perturb_trainable(peft)
    with torch.no_grad():
        moved = peft(**batch())
    first = moved.logits if cls is BertForSequenceClassification else moved.start_logits
    assert not torch.allclose(first, ref.logits if cls is BertForSequenceClassification
                              else ref.start_logits)


# =========================================================================== prefix tuning


def test_prefix_attention_equals_hand_computed_softmax_over_prefix_and_tokens(base_folder):
    """Prefix tuning is not an identity at init (P extra keys always take attention mass), so
    the check is the mechanism: softmax(q [Kp; K]ᵀ/√D + [0; padding bias]) [Vp; V]."""
    peft = wrap(base_folder, "prefix").eval()
    perturb_trainable(peft)
    attn = peft.model.bert.encoder.layers[1].attention
    hidden = torch.randn(3, 9, 32)
    mask = batch()["attention_mask"]
    bias = torch.zeros(3, 1, 1, 9).masked_fill(mask[:, None, None, :] == 0,
                                               torch.finfo(torch.float32).min)
    with torch.no_grad():
        fused, _ = attn(hidden, bias)
        explicit, probs = attn(hidden, bias, need_weights=True)
        q = split_heads(attn.query(hidden), 4)                                # (B, N, T, D)
        k = split_heads(attn.key(hidden), 4)
        v = split_heads(attn.value(hidden), 4)
        prefixes = peft.extra["prefix_encoder"].all_prefixes()                # (P, L*2*H)
        layer = prefixes.view(3, 2, 2, 4, 8)[:, 1]                            # (P, 2, N, D)
        pk = layer[:, 0].permute(1, 0, 2)                                     # (N, P, D)
        pv = layer[:, 1].permute(1, 0, 2)
        ref_probs, ref = [], []
        for b in range(3):
            keys = torch.cat([pk, k[b]], 1)                                   # (N, P+T, D)
            values = torch.cat([pv, v[b]], 1)
            scores = q[b] @ keys.transpose(1, 2) / math.sqrt(8)               # (N, T, P+T)
            scores[..., 3:] = scores[..., 3:].masked_fill(mask[b] == 0, float("-inf"))
            p = scores.softmax(-1)
            ref_probs.append(p)
            ref.append((p @ values).transpose(0, 1).reshape(9, 32))           # (T, H)
    assert torch.allclose(probs, torch.stack(ref_probs), atol=1e-6)
    assert torch.allclose(explicit, torch.stack(ref), atol=1e-5)
    assert torch.allclose(fused, torch.stack(ref), atol=1e-5)
    # The prefix is attended (positive mass) even by the padded row; the padding is not.
    assert bool((probs[1, :, :, :3].sum(-1) > 0.01).all())
    assert float(probs[1, :, :, 3 + 5:].abs().max()) == 0.0


def test_prefix_padding_is_masked_and_a_masked_out_prefix_gives_the_base_back(base_folder,
                                                                              monkeypatch):
    b = batch()
    base = task_model(base_folder).eval()
    with torch.no_grad():
        ref = base(**b).logits
    peft = wrap(base_folder, "prefix", model=base).eval()
    perturb_trainable(peft, only="extra.")  # the prefixes, not the head
    with torch.no_grad():
        padded = peft(**b).logits
        # Row 1 alone, without its padding: same logits when the padding is masked.
        alone = peft(input_ids=b["input_ids"][1:2, :5]).logits
        assert torch.allclose(padded[1], alone[0], atol=1e-5)
        assert not torch.allclose(padded, ref, atol=1e-4)  # the prefix matters

        # The prefix columns are the first P: masking them with the finfo.min bias leaves
        # exactly the base model's attention (exp underflows to 0 for the prefix keys).
        original = PrefixHook.forward

        def masked_prefix(self, k, v, bias):
            k2, v2, bias2 = original(self, k, v, bias)
            if bias2 is None:
                bias2 = torch.zeros(k.size(0), 1, 1, k2.size(2), dtype=k.dtype)
            bias2 = bias2.clone()
            bias2[..., :k2.size(2) - k.size(2)] = torch.finfo(k.dtype).min
            return k2, v2, bias2

        monkeypatch.setattr(PrefixHook, "forward", masked_prefix)
        assert torch.allclose(peft(**b).logits, ref, atol=1e-6)


def test_prefix_round_trip_drops_the_mlp(base_folder, tmp_path):
    peft = wrap(base_folder, "prefix").eval()
    perturb_trainable(peft)
    with torch.no_grad():
        ref = peft(**batch()).logits
    peft.save_pretrained(tmp_path)
    saved = load_file(tmp_path / ADAPTER_WEIGHTS_NAME)
    assert saved["prompt_embeddings"].shape == (3, 2 * 2 * 32)  # (P, L * 2 * H), no MLP
    assert not any("mlp" in k or "embedding." in k for k in saved)
    loaded = load_adapter(tmp_path)
    assert [n for n, _ in loaded.extra.named_parameters()] == ["prefix_encoder.prefix"]
    with torch.no_grad():
        assert torch.allclose(loaded(**batch()).logits, ref, atol=1e-6)


# =========================================================================== LoRA merge


@pytest.mark.parametrize("key", ["lora", "adalora"])
def test_merged_equals_unmerged_and_unmerge_restores_weights(base_folder, key):
    peft = wrap(base_folder, key).eval()
    perturb_trainable(peft, 0.3)
    originals = {n: p.detach().clone() for n, p in peft.model.named_parameters()}
    with torch.no_grad():
        unmerged = peft(**batch()).logits
        peft.merge()
        merged = peft(**batch()).logits
        changed = [n for n, p in peft.model.named_parameters() if not torch.equal(p, originals[n])]
        peft.unmerge()
        again = peft(**batch()).logits
    assert (merged - unmerged).abs().max() <= 1e-5
    # Merging changed exactly the targeted weights; unmerging gives them back bit for bit.
    assert sorted(changed) == sorted(f"bert.encoder.layers.{i}.attention.{t}.weight"
                                     for i in range(2) for t in ("query", "value"))
    for n, p in peft.model.named_parameters():
        assert torch.equal(p, originals[n]), n
    assert torch.equal(again, unmerged)


def test_merge_lora_writes_a_folder_transformers_loads(base_folder, tmp_path):
    transformers = pytest.importorskip("transformers")
    peft = wrap(base_folder, "lora").eval()
    perturb_trainable(peft, 0.3)
    peft.model.config.extra["bertkit_task"] = "classification"
    with torch.no_grad():
        ref = peft(**batch()).logits
    peft.save_pretrained(tmp_path / "adapter")
    (tmp_path / "adapter" / "vocab.txt").write_text("[PAD]\n[UNK]\n", encoding="utf-8")
    report = merge_lora(tmp_path / "adapter", tmp_path / "merged")
    assert report["max_abs_diff"] <= 1e-5
    files = set(os.listdir(tmp_path / "merged"))
    assert {"config.json", "model.safetensors", "vocab.txt"} <= files
    assert not any(f.startswith("adapter") for f in files)
    assert not any("lora" in k for k in load_file(tmp_path / "merged" / "model.safetensors"))
    # A plain model: bertkit and transformers load it and give the adapter's outputs.
    ours = BertForSequenceClassification.from_pretrained(tmp_path / "merged", verbose=False).eval()
    assert ours.config.id2label == LABELS and ours.config.extra["bertkit_task"] == "classification"
    theirs = transformers.BertForSequenceClassification.from_pretrained(tmp_path / "merged").eval()
    with torch.no_grad():
        assert (ours(**batch()).logits - ref).abs().max() <= 1e-5
        assert (theirs(**batch()).logits - ref).abs().max() <= 1e-5


def test_merge_lora_refuses_a_merge_that_changes_the_outputs(base_folder, tmp_path, monkeypatch):
    peft = wrap(base_folder, "lora")
    perturb_trainable(peft, 0.3)
    peft.save_pretrained(tmp_path / "adapter")
    original = LoraLinear.merge

    def corrupted(self):  # a merge that folds in 1.01x the update
        original(self)
        with torch.no_grad():
            self.weight.add_(0.01 * self.delta_weight())

    monkeypatch.setattr(LoraLinear, "merge", corrupted)
    with pytest.raises(ValueError, match=r"changes the outputs on a probe batch by .*refusing "
                                         r"to write"):
        merge_lora(tmp_path / "adapter", tmp_path / "merged")
    assert not (tmp_path / "merged").exists()


def test_merge_lora_refuses_methods_that_cannot_merge(base_folder, tmp_path):
    wrap(base_folder, "houlsby").save_pretrained(tmp_path / "adapter")
    with pytest.raises(ValueError, match="adapter adapter; only lora and adalora"):
        merge_lora(tmp_path / "adapter", tmp_path / "merged")


# =========================================================================== what trains


@pytest.mark.parametrize("key", list(METHODS))
def test_only_intended_parameters_receive_gradients(base_folder, key):
    peft = wrap(base_folder, key).train()
    expected = expected_trainable(peft, key)
    assert {n for n, p in peft.named_parameters() if p.requires_grad} == expected
    out = peft(**batch(), labels=torch.tensor([0, 1, 2]))
    out.loss.backward()
    assert {n for n, p in peft.named_parameters() if p.grad is not None} == expected
    trainable, total = peft.count_parameters()
    assert trainable == sum(p.numel() for n, p in peft.named_parameters() if n in expected)
    assert f"trainable params {trainable:,} || all params {total:,}" in peft.summary()


def make_dataset(n: int = 24) -> list[dict]:
    g = torch.Generator().manual_seed(0)
    data = []
    for _ in range(n):
        length = int(torch.randint(4, 10, (1,), generator=g))
        ids = torch.randint(5, 99, (length,), generator=g).tolist()
        data.append({"input_ids": ids, "labels": ids[0] % 3})
    return data


def train(peft: PeftModel, out_dir, steps: int = 3, lr: float = 1e-2):
    config = TrainingConfig(out_dir=str(out_dir), max_steps=steps, batch_size=8, lr=lr,
                            progress_bar=False, tensorboard=False, plot=False, save_every=0,
                            log_every=100, device="cpu", mixed_precision="no", max_grad_norm=None)
    return Trainer(peft, config, make_dataset(), PaddingCollator(0), on_step=on_step).train()


@pytest.mark.parametrize("key", list(METHODS))
def test_base_weights_bit_identical_after_training(base_folder, key, tmp_path):
    peft = wrap(base_folder, key)
    expected = expected_trainable(peft, key)
    before = {n: p.detach().clone() for n, p in peft.named_parameters()}
    train(peft, tmp_path)
    frozen = [n for n in before if n not in expected]
    assert frozen
    for n in frozen:
        assert torch.equal(dict(peft.named_parameters())[n], before[n]), n
    moved = [n for n in expected if not torch.equal(dict(peft.named_parameters())[n], before[n])]
    assert any(not n.startswith("model.classifier.") for n in moved)  # the method trained
    # The Trainer's checkpoint folder is an adapter folder (save_pretrained of the wrapper).
    checkpoint = tmp_path / "checkpoints" / "step-3"
    assert {ADAPTER_CONFIG_NAME, ADAPTER_WEIGHTS_NAME} <= set(os.listdir(checkpoint))


# =========================================================================== save / load


@pytest.mark.parametrize("key", list(METHODS))
def test_adapter_round_trip_gives_the_same_outputs(base_folder, key, tmp_path):
    peft = wrap(base_folder, key).eval()
    perturb_trainable(peft)
    with torch.no_grad():
        ref = peft(**batch()).logits
    save_adapter(peft, tmp_path)
    config = json.loads((tmp_path / ADAPTER_CONFIG_NAME).read_text())
    info = config["bertkit"]
    assert config["base_model_name_or_path"] == os.path.abspath(base_folder)
    assert info["base"] == {"hidden_size": 32, "num_hidden_layers": 2, "vocab_size": 99,
                            "num_attention_heads": 4, "intermediate_size": 37}
    assert info["head_class"] == "BertForSequenceClassification"
    assert info["num_labels"] == 3 and info["id2label"] == {"0": "neg", "1": "neu", "2": "pos"}
    saved = load_file(tmp_path / ADAPTER_WEIGHTS_NAME)
    # The head is always saved.
    assert saved["base_model.model.classifier.weight"].shape == (3, 32)
    loaded = load_adapter(tmp_path)
    assert type(loaded.model) is BertForSequenceClassification and not loaded.training
    assert loaded.config.id2label == LABELS
    with torch.no_grad():
        assert torch.allclose(loaded(**batch()).logits, ref, atol=1e-6)


def test_lora_adapter_holds_exactly_peft_keys_and_is_small(base_folder, tmp_path):
    peft = wrap(base_folder, "lora")
    peft.save_pretrained(tmp_path / "adapter")
    task_model(base_folder).save_pretrained(tmp_path / "full")
    keys = set(load_file(tmp_path / "adapter" / ADAPTER_WEIGHTS_NAME))
    assert keys == {f"base_model.model.bert.encoder.layer.{i}.attention.self.{t}.lora_{ab}.weight"
                    for i in range(2) for t in ("query", "value") for ab in "AB"} | {
                       "base_model.model.classifier.weight", "base_model.model.classifier.bias"}
    config = json.loads((tmp_path / "adapter" / ADAPTER_CONFIG_NAME).read_text())
    assert (config["peft_type"], config["r"], config["lora_alpha"], config["task_type"]) == (
        "LORA", 4, 8, "SEQ_CLS")
    assert config["target_modules"] == ["query", "value"]
    assert config["modules_to_save"] == ["classifier"]
    size = lambda d: sum(os.path.getsize(d / f) for f in os.listdir(d))  # noqa: E731
    assert size(tmp_path / "adapter") < 0.1 * size(tmp_path / "full")


def test_fresh_base_weights_are_saved_with_the_head(tmp_path):
    """A base folder without a pooler: the pooler is initialised fresh when loading, so the
    base folder cannot reproduce it and the adapter must carry it."""
    torch.manual_seed(3)
    BertModel(BertConfig(**TINY), add_pooling_layer=False).save_pretrained(tmp_path / "base")
    model = BertForSequenceClassification.from_pretrained(tmp_path / "base", verbose=False)
    peft = apply_peft(model, "lora", base_model_folder=str(tmp_path / "base"), r=2).eval()
    with torch.no_grad():
        ref = peft(**batch()).logits
    peft.save_pretrained(tmp_path / "adapter")
    keys = set(load_file(tmp_path / "adapter" / ADAPTER_WEIGHTS_NAME))
    assert {f"base_model.model.bert.pooler.dense.{p}" for p in ("weight", "bias")} <= keys
    torch.manual_seed(99)  # another fresh pooler on reload: the saved one must replace it
    with torch.no_grad():
        assert torch.equal(load_adapter(tmp_path / "adapter")(**batch()).logits, ref)


def test_base_mismatch_is_a_clear_error(base_folder, tmp_path):
    wrap(base_folder, "lora").save_pretrained(tmp_path / "adapter")
    BertModel(BertConfig(**{**TINY, "hidden_size": 48})).save_pretrained(tmp_path / "wide")
    BertModel(BertConfig(**{**TINY, "num_hidden_layers": 3})).save_pretrained(tmp_path / "deep")
    BertModel(BertConfig(**{**TINY, "vocab_size": 120})).save_pretrained(tmp_path / "vocab")
    for other, message in (("wide", "hidden_size 32 vs 48"), ("deep", "num_hidden_layers 2 vs 3"),
                           ("vocab", "vocab_size 99 vs 120")):
        with pytest.raises(ValueError, match=f"different base model than .*{other}.*{message}"):
            load_adapter(tmp_path / "adapter", base=tmp_path / other)
    with pytest.raises(ValueError, match="hidden_size 32 vs 48"):
        load_adapter(tmp_path / "adapter", base=BertForSequenceClassification(
            BertConfig(**{**TINY, "hidden_size": 48})))
    with pytest.raises(FileNotFoundError, match="names the base model folder .*does not exist"):
        load_adapter(tmp_path / "adapter", base=tmp_path / "nowhere")
    with pytest.raises(FileNotFoundError, match="adapter_config.json does not exist"):
        load_adapter(tmp_path / "wide")


def test_adapter_without_its_head_is_refused(base_folder, tmp_path):
    wrap(base_folder, "lora").save_pretrained(tmp_path)
    path = tmp_path / ADAPTER_WEIGHTS_NAME
    state = {k: v for k, v in load_file(path).items() if "classifier" not in k}
    save_file(state, path)
    with pytest.raises(ValueError, match=r"lacks 2 tensor\(s\).*classifier.*task head is never "
                                         r"initialised silently"):
        load_adapter(tmp_path)


def test_bad_targets_and_options_are_clear_errors(base_folder):
    with pytest.raises(ValueError, match=r"'querry' matches no module .* attention.query, "
                                         r"attention.key, attention.value, attention_output, "
                                         r"ffn.up, ffn.down \(HF names: attention.self.query, "
                                         r".*intermediate.dense"):
        apply_peft(task_model(base_folder), "lora", targets=["query", "querry"])
    with pytest.raises(ValueError, match=r"unknown option\(s\) \['rank'\] for PEFT method 'lora'"):
        apply_peft(task_model(base_folder), "lora", rank=4)
    with pytest.raises(ValueError, match="unknown PEFT method 'loha'; choose one of lora, adapter"):
        apply_peft(task_model(base_folder), "loha")
    with pytest.raises(ValueError, match="adalora needs option total_steps"):
        apply_peft(task_model(base_folder), "adalora")
    with pytest.raises(ValueError, match="must name its base model folder"):
        save_adapter(apply_peft(task_model(base_folder), "bitfit"), "unused")


def test_lora_targets_by_hf_name_suffix_and_regex(base_folder):
    peft = apply_peft(task_model(base_folder), "lora", targets=["intermediate.dense",
                                                                r".*layers\.1\.attention\.key"])
    wrapped = sorted(n for n, m in peft.model.named_modules() if isinstance(m, LoraLinear))
    assert wrapped == ["bert.encoder.layers.0.ffn.up", "bert.encoder.layers.1.attention.key",
                       "bert.encoder.layers.1.ffn.up"]


# =========================================================================== peft interop


@pytest.fixture
def hf_peft():
    peft_lib = pytest.importorskip("peft")
    transformers = pytest.importorskip("transformers")
    return peft_lib, transformers


def test_bertkit_lora_adapter_loads_in_peft_with_the_same_outputs(base_folder, tmp_path, hf_peft):
    peft_lib, transformers = hf_peft
    peft = apply_peft(task_model(base_folder), "lora", base_model_folder=base_folder, r=4,
                      alpha=8, targets="query,value,ffn.up").eval()
    perturb_trainable(peft, 0.3)
    with torch.no_grad():
        ours = peft(**batch()).logits
    peft.save_pretrained(tmp_path)
    theirs_base = transformers.BertForSequenceClassification.from_pretrained(
        base_folder, num_labels=3)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # peft: "Unexpected keyword arguments ['bertkit']"
        theirs = peft_lib.PeftModel.from_pretrained(theirs_base, str(tmp_path)).eval()
    with torch.no_grad():
        assert (theirs(**batch()).logits - ours).abs().max() <= 1e-5


def test_peft_lora_adapter_loads_in_bertkit_with_the_same_outputs(base_folder, tmp_path, hf_peft):
    peft_lib, transformers = hf_peft
    model = transformers.BertForSequenceClassification.from_pretrained(base_folder, num_labels=3)
    config = peft_lib.LoraConfig(task_type="SEQ_CLS", r=2, lora_alpha=5,
                                 target_modules=["key", "output.dense"], rank_pattern={"key": 3},
                                 use_rslora=True)
    theirs = peft_lib.get_peft_model(model, config)
    g = torch.Generator().manual_seed(5)
    with torch.no_grad():
        for _, p in theirs.named_parameters():
            if p.requires_grad:
                p.add_(torch.randn(p.shape, generator=g) * 0.3)
    theirs.eval()
    with torch.no_grad():
        ref = theirs(**batch()).logits
    theirs.save_pretrained(str(tmp_path))
    ours = load_adapter(tmp_path)
    wrapped = {n: m.r for n, m in ours.model.named_modules() if isinstance(m, LoraLinear)}
    assert wrapped == {f"bert.encoder.layers.{i}.{name}": r for i in range(2) for name, r in
                       (("attention.key", 3), ("attention_output", 2), ("ffn.down", 2))}
    with torch.no_grad():
        assert (ours(**batch()).logits - ref).abs().max() <= 1e-5


# =========================================================================== AdaLoRA


def test_adalora_budget_schedule_matches_hand_values():
    # init 40, target 20, t_init 10, t_final 20, T 100: cubic over steps 10..80.
    args = dict(init_budget=40, target_budget=20, t_init=10, t_final=20, total_steps=100)
    assert budget_at(5, **args) == (40, False)
    assert budget_at(10, **args) == (40, False)
    assert budget_at(45, **args) == (int(20 * 0.5 ** 3 + 20), True)       # halfway: 22
    assert budget_at(17, **args) == (int(20 * 0.9 ** 3 + 20), True)       # 34.58 -> 34
    assert budget_at(80, **args) == (20, True)
    assert budget_at(95, **args) == (20, True)
    assert budget_at(45, delta_t=10, **args) == (22, False)
    assert budget_at(50, delta_t=10, **args)[1] is True


def test_adalora_allocation_keeps_the_highest_scoring_triplets(base_folder):
    peft = wrap(base_folder, "adalora")
    layers = peft.method.layers(peft)  # 4 modules x init_r 4
    # Hand-made importance: triplet i of module m scores 10 * m + i, via lora_E's entries only.
    for m, layer in enumerate(layers.values()):
        for buf in ("ipt_A", "unc_A", "ipt_B", "unc_B"):
            getattr(layer, buf).zero_()
        layer.ipt_E.copy_((10.0 * m + torch.arange(4.0))[:, None])
        layer.unc_E.fill_(1.0)
    with torch.no_grad():
        for layer in layers.values():
            layer.lora_E.fill_(1.0)
    peft.method.allocate(peft, budget=6)
    # The 6 best: module 3's four triplets, module 2's two best (2 and 3).
    assert list(peft.method.rank_allocation(peft).values()) == [0, 0, 2, 4]
    masks = [layer.rank_mask.tolist() for layer in layers.values()]
    assert masks[2] == [False, False, True, True]
    assert [layer.lora_E.view(-1).tolist() for layer in layers.values()][2] == [0, 0, 1, 1]


def test_adalora_trainer_moves_rank_between_modules_and_saves_the_allocation(base_folder,
                                                                            tmp_path):
    steps = 10
    peft = apply_peft(task_model(base_folder), "adalora", base_model_folder=base_folder,
                      init_r=4, target_r=2, total_steps=steps, t_init=2, t_final=3,
                      targets="query,value,ffn.up")
    train(peft, tmp_path / "run", steps=steps, lr=2e-2)
    history = peft.method.history
    budgets = [h["budget"] for h in history]
    # Budget goes from 24 (6 modules x 4) to 12 (x 2) on the cubic schedule, then stays.
    assert budgets == [budget_at(h["step"], 24, 12, 2, 3, steps)[0] for h in history]
    assert budgets[0] < 24 and budgets[-1] == 12 and history[-1]["step"] == steps - 3
    final = peft.report()["rank_allocation"]
    assert sum(final.values()) == 12 and len(final) == 6
    assert sorted(set(final.values())) != [2]  # not uniform: rank moved between modules
    for h in history:
        assert sum(h["allocation"].values()) == h["budget"]
    peft.eval()
    with torch.no_grad():
        ref = peft(**batch()).logits
    peft.save_pretrained(tmp_path / "adapter")
    config = json.loads((tmp_path / "adapter" / ADAPTER_CONFIG_NAME).read_text())
    assert config["bertkit"]["rank_allocation"] == final == config["rank_pattern"]
    saved = load_file(tmp_path / "adapter" / ADAPTER_WEIGHTS_NAME)
    for module, rank in final.items():  # only the surviving triplets are stored
        assert saved[f"base_model.model.{module}.lora_E"].shape == (rank, 1)
        assert saved[f"base_model.model.{module}.lora_A"].shape == (rank, 32)
    loaded = load_adapter(tmp_path / "adapter")
    assert loaded.report()["rank_allocation"] == final
    with torch.no_grad():
        assert torch.allclose(loaded(**batch()).logits, ref, atol=1e-6)


def test_adalora_without_the_hook_warns_on_save(base_folder, tmp_path):
    peft = wrap(base_folder, "adalora").train()
    peft(**batch(), labels=torch.tensor([0, 1, 2])).loss.backward()
    with pytest.warns(UserWarning, match="trained without its on_step hook"):
        peft.save_pretrained(tmp_path)


def test_planned_steps_counts_updates():
    cfg = TrainingConfig(epochs=3, batch_size=8, grad_accum_steps=2, progress_bar=False)
    assert planned_steps(50, cfg) == math.ceil(3 * math.ceil(50 / 8) / 2)  # 7 batches/epoch: 11
    assert planned_steps(50, TrainingConfig(epochs=3, max_steps=5, batch_size=8)) == 5
    with pytest.raises(ValueError, match="AdaLoRA needs the planned number of steps"):
        planned_steps(50, TrainingConfig(time_budget="1m"))


def test_a_fine_tuned_base_with_another_head_size_still_loads(base_folder, tmp_path):
    """The adapter brings its head: a base folder holding a 2-label classifier does not clash
    with a 3-label adapter."""
    peft = wrap(base_folder, "lora").eval()
    perturb_trainable(peft)
    with torch.no_grad():
        ref = peft(**batch()).logits
    peft.save_pretrained(tmp_path / "adapter")
    two = BertForSequenceClassification.from_pretrained(base_folder, verbose=False, num_labels=2)
    two.save_pretrained(tmp_path / "two")
    loaded = load_adapter(tmp_path / "adapter", base=tmp_path / "two")
    with torch.no_grad():
        assert torch.equal(loaded(**batch()).logits, ref)
