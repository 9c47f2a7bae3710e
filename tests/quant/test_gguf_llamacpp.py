"""llama.cpp runs the network tridiff export-gguf writes: on the tiny preset (YaRN factor
16 over original_max_position_embeddings 64, so the ramp between interpolated and kept
frequencies is exercised; head_dim 32 != hidden / heads; grouped KV) its logits on an
F32 file equal tridiff's at every prompt position, and its greedy tokens on an F16 file
equal tridiff's fp32 ones (same fp16-rounded weights). Positions stay below 64, where
the llama-4 query scale is 1. And on real weights: the bundled model exported F16
completes held-out prompts greedily exactly as tridiff does."""
import numpy as np
import pytest
import torch

pytest.importorskip("gguf", reason="needs the gguf package (requirements-cpu.txt / tridiff[bench])")
llama_cpp = pytest.importorskip("llama_cpp", reason="needs llama-cpp-python (bench extra)")

from tridiff import checkpoint as ckpt  # noqa: E402
from tridiff.config import preset  # noqa: E402
from tridiff.generate import generate  # noqa: E402
from tridiff.model import Model  # noqa: E402
from tridiff.quant.gguf import write_gguf  # noqa: E402

CFG = preset("tiny")
PROMPT = [5, 17, 300, 42, 7, 99, 256, 3]
NEW = 24   # positions 0..31 < original_max_position_embeddings = 64


@pytest.fixture(scope="module")
def weights():
    """fp16-representable values, so an F16 file holds them exactly."""
    return {k: v.to(torch.float16).to(torch.float32)
            for k, v in ckpt.random_tensors(CFG, seed=7, dtype=torch.float32).items()}


@pytest.fixture(scope="module")
def model(weights):
    m = Model(CFG, dtype=torch.float32)
    params = dict(m.named_parameters())
    with torch.no_grad():
        for name, t in weights.items():
            params[name].copy_(t)
    return m


def llama(path, **kw):
    return llama_cpp.Llama(model_path=str(path), n_ctx=64, n_batch=64, n_threads=1, n_threads_batch=1,
                           verbose=False, **kw)


def test_f32_file_logits_equal_tridiff_at_every_prompt_position(tmp_path, weights, model):
    path = tmp_path / "tiny-f32.gguf"
    write_gguf(path, CFG, weights.__getitem__, "f32")
    tokens = PROMPT + [11, 400, 128, 64, 1, 2, 3, 500] * 3   # 32 positions
    f32 = llama_cpp.GGML_TYPE_F32   # llama.cpp's KV cache is F16 unless asked otherwise
    llm = llama(path, logits_all=True, type_k=f32, type_v=f32)
    llm.eval(tokens)
    theirs = torch.from_numpy(np.array(llm.scores[:len(tokens)], dtype=np.float32))
    ours = model(torch.tensor([tokens]), model.new_cache(1, len(tokens)))[0]
    assert ours.std() > 1.0   # logits spread out, so the tolerance below is tight
    torch.testing.assert_close(theirs, ours, rtol=0, atol=1e-4)   # measured 6e-6


def test_f16_file_greedy_tokens_equal_tridiff_fp32(tmp_path, weights, model):
    path = tmp_path / "tiny-f16.gguf"
    write_gguf(path, CFG, weights.__getitem__, "f16")
    llm = llama(path)
    n_vocab = llm.n_vocab()
    llm.eval(PROMPT)
    theirs = []
    for _ in range(NEW):
        logits = np.ctypeslib.as_array(llama_cpp.llama_get_logits(llm.ctx), shape=(n_vocab,))
        theirs.append(int(logits.argmax()))
        llm.eval([theirs[-1]])
    ours = generate(model, [PROMPT], mode="ar", max_new_tokens=NEW, eos_id=-1).results[0].tokens
    assert list(ours) == theirs


def test_bundled_model_exported_f16_completes_like_tridiff(tmp_path):
    """Real weights: `tridiff export-gguf --type f16` of the bundled model (stored bf16),
    and llama.cpp's greedy completions of held-out prompts equal tridiff's AR ones."""
    from tridiff import models
    from tridiff.cli import main
    from tridiff.tokenizer import Tokenizer
    from tridiff.train import heldout

    src = models.path()
    path = tmp_path / "stdlib-f16.gguf"
    assert main(["export-gguf", "--type", "f16", str(src), str(path)]) == 0
    prompts = [p["ids"] for p in heldout.code_prompts(Tokenizer.from_pretrained(src), 3)]
    model = Model.from_pretrained(src, dtype=torch.float32, adapter=False)
    ours = generate(model, prompts, mode="ar", max_new_tokens=32, eos_id=-1).results
    llm = llama_cpp.Llama(model_path=str(path), n_ctx=256, n_threads=1, verbose=False)
    n_vocab = llm.n_vocab()
    for prompt, row in zip(prompts, ours):
        llm.reset()
        llm.eval(prompt)
        theirs = []
        for _ in range(32):
            theirs.append(int(np.ctypeslib.as_array(llama_cpp.llama_get_logits(llm.ctx), shape=(n_vocab,)).argmax()))
            llm.eval([theirs[-1]])
        assert theirs == list(row.tokens)
