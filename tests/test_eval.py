"""`rla-convert eval` on a tiny random Llama with a tokenizer trained in the test (nothing downloaded)."""
import json
import math
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F

from clitools import run_process
from rla_convert.eval import greedy_agreement, passkey_accuracy, perplexity, tokenize_text
from rla_convert.eval.passkey import answer_tokens, passkey_prompt

WORDS = ("the grass is green sky blue sun yellow here we go there and back again what pass key "
         "remember it a of to in is was for on with as by at from").split()


def _text(n_words=6000, seed=0):
    g = torch.Generator().manual_seed(seed)
    idx = torch.randint(len(WORDS), (n_words,), generator=g)
    return " ".join(WORDS[i] for i in idx) + " 0 1 2 3 4 5 6 7 8 9 ."


@pytest.fixture(scope="module")
def tiny_model_dir(tmp_path_factory):
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    out = tmp_path_factory.mktemp("tiny-llama")
    tok = Tokenizer(models.WordLevel(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.Whitespace(), pre_tokenizers.Digits(individual_digits=True)])
    tok.train_from_iterator([_text()], trainers.WordLevelTrainer(special_tokens=["<unk>", "<s>", "</s>"]))
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<unk>", bos_token="<s>", eos_token="</s>")
    fast.save_pretrained(out)
    cfg = LlamaConfig(vocab_size=len(fast), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=4096,
                      bos_token_id=1, eos_token_id=2, pad_token_id=2, tie_word_embeddings=False)
    torch.manual_seed(0)  # a random model, the same each run (see the agreement test)
    model = LlamaForCausalLM(cfg)
    with torch.no_grad():  # decisive logits: cached and uncached argmax never meet a rounding tie
        model.lm_head.weight.mul_(50)
    model.save_pretrained(out)
    (out / "heldout.txt").write_text(_text(seed=1))
    return out


def _load(path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    return AutoModelForCausalLM.from_pretrained(path).eval(), AutoTokenizer.from_pretrained(path)


def test_perplexity_matches_a_direct_computation(tiny_model_dir):
    model, tok = _load(tiny_model_dir)
    ids = tokenize_text(tok, (tiny_model_dir / "heldout.txt").read_text(), max_tokens=200)
    result = perplexity(model, ids, window=64, batch_size=2, progress=False)
    assert result["windows"] == 3 and result["tokens_scored"] == 3 * 63
    nll = 0.0
    with torch.no_grad():
        for w in range(3):
            x = ids[w * 64 : (w + 1) * 64][None]
            logits = model(x).logits[0]
            nll += F.cross_entropy(logits[:-1], x[0, 1:], reduction="sum").item()
    assert math.isclose(result["perplexity"], math.exp(nll / (3 * 63)), rel_tol=1e-5)


def test_a_model_agrees_with_itself_and_not_with_another(tiny_model_dir):
    from transformers import AutoModelForCausalLM

    model, tok = _load(tiny_model_dir)
    ids = tokenize_text(tok, (tiny_model_dir / "heldout.txt").read_text())
    same = greedy_agreement(model, model, ids, n_prompts=3, prompt_len=32, new_tokens=8, pad_token_id=2, progress=False)
    assert same["agreement"] == 1.0
    # fresh random weights, seeded like the fixture's model: a tiny random model can settle on one token, and
    # unseeded pairs that settled on the same one agreed fully now and then
    torch.manual_seed(1)
    other = AutoModelForCausalLM.from_config(model.config).eval()
    diff = greedy_agreement(other, model, ids, n_prompts=3, prompt_len=32, new_tokens=8, pad_token_id=2, progress=False)
    assert diff["agreement"] < 1.0


def test_passkey_prompt_hides_the_key_at_the_requested_length(tiny_model_dir):
    _, tok = _load(tiny_model_dir)
    for length in (128, 512):
        ids = passkey_prompt(tok, length, key=31415, depth=0.3)
        assert 0.85 * length <= len(ids) <= 1.05 * length
        assert "3 1 4 1 5" in tok.decode(ids) or "31415" in tok.decode(ids).replace(" ", "")


def test_passkey_accuracy_is_a_share(tiny_model_dir):
    model, tok = _load(tiny_model_dir)
    res = passkey_accuracy(model, tok, 128, n_prompts=2, progress=False)
    assert res["prompts"] == 2 and 0.0 <= res["accuracy"] <= 1.0


class _PeekingModel(torch.nn.Module):
    """Predicts each position's next input token (it sees the future): a perfect passkey reader.

    With ``miss_last`` it gets the very last token wrong, i.e. the last digit of the appended answer.
    """

    def __init__(self, vocab: int, miss_last: bool = False):
        super().__init__()
        self.anchor = torch.nn.Parameter(torch.zeros(1))
        self.vocab, self.miss_last = vocab, miss_last

    def forward(self, input_ids, use_cache=False):
        nxt = torch.roll(input_ids, -1, dims=1)
        if self.miss_last:
            nxt[:, -2] = (nxt[:, -2] + 1) % self.vocab
        return SimpleNamespace(logits=torch.nn.functional.one_hot(nxt, self.vocab).float())


def test_passkey_answer_is_tokenised_in_context():
    class SentencePieceLike:  # a standalone leading space becomes its own token, as with Metaspace
        def __call__(self, text, add_special_tokens=False):
            words = text.split(" ")
            return {"input_ids": [0 if w == "" else 1 + sum(map(ord, w)) for w in words]}

    tok = SentencePieceLike()
    text = "what is the pass key"
    answer = answer_tokens(tok, text, tok(text)["input_ids"], 31415)
    assert answer == [1 + sum(map(ord, "31415"))] and tok(" 31415")["input_ids"][0] == 0


def test_passkey_scores_the_answer_positions_exactly(tiny_model_dir):
    _, tok = _load(tiny_model_dir)
    assert passkey_accuracy(_PeekingModel(len(tok)), tok, 128, n_prompts=3, progress=False)["accuracy"] == 1.0
    assert passkey_accuracy(_PeekingModel(len(tok), miss_last=True), tok, 128, n_prompts=3, progress=False)["accuracy"] == 0.0


def test_eval_cli_writes_table_and_json(tiny_model_dir, tmp_path):
    out = tmp_path / "r.json"
    r = run_process("eval", str(tiny_model_dir), "--text", str(tiny_model_dir / "heldout.txt"), "--window", "64",
             "--passkey", "128", "--passkey-n", "2", "--teacher", str(tiny_model_dir),
             "--agreement-prompts", "2", "--json", str(out))
    assert r.returncode == 0, r.stderr
    data = json.loads(out.read_text())
    assert data["agreement"]["agreement"] == 1.0
    assert data["perplexity"]["perplexity"] > 1.0
    assert "perplexity" in r.stdout and "passkey@128" in r.stdout


@pytest.mark.parametrize("args, needle", [
    (["--text", "/no/such.txt"], "/no/such.txt"),
    ([], "nothing to evaluate"),
    (["--passkey", "12x"], "comma-separated"),
    (["--device", "cuda", "--passkey", "128"], "no CUDA"),
    (["--device", "tpu", "--passkey", "128"], "'tpu' is not a device; accepted: auto, cpu"),
    (["--passkey", "128", "--passkey-n", "0"], "--passkey-n"),
    (["--text", "README.md", "--window", "0"], "--window"),
    (["--text", "README.md", "--json", "/no/such/dir/x.json"], "/no/such/dir does not exist"),
    (["--text", "README.md", "--teacher", "no-such-teacher"], "no model 'no-such-teacher'"),
])
def test_eval_cli_bad_input_is_one_line(tiny_model_dir, args, needle):
    if "cuda" in args and torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    r = run_process("eval", str(tiny_model_dir), *args)
    assert r.returncode == 2
    assert needle in r.stderr and "Traceback" not in r.stderr
