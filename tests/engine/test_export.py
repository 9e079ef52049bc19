"""Merge-and-export: the export of a trained demo adapter reloads with plain transformers and matches the
unmerged model; the chat template, generation config, Modelfile and GGUF are right; DoRA merges; quantized
bases are refused; bad input fails in one line."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

PROMPT = [{"role": "user", "content": "Who are you?"}]


def _cli(*args: str, timeout: int = 600) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "tunelab.cli", *args], capture_output=True, text=True, timeout=timeout)


def _logits(model, ids):
    import torch

    with torch.no_grad():
        return model(ids).logits


@pytest.fixture(scope="module")
def demo_export(demo_lora_run: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    """The demo run exported once (with GGUF; with the vLLM serve check where TUNELAB_VLLM_PYTHON names vLLM)."""
    import os

    out = tmp_path_factory.mktemp("export") / "merged"
    check = ["--serve-check"] if os.environ.get("TUNELAB_VLLM_PYTHON") else []
    result = _cli("export", "--run", str(demo_lora_run), "--out", str(out), "--gguf", "q8_0", "--shard-size", "8MB", *check)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return out, result.stdout


def test_export_reloads_in_plain_transformers_and_matches_unmerged(demo_export, demo_lora_run: Path, demo_model_dir: Path) -> None:
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    out, stdout = demo_export
    assert "verify: PASSED" in stdout and "greedy tokens match" in stdout
    assert (out / "model.safetensors.index.json").is_file() and len(list(out.glob("model-*.safetensors"))) >= 2
    tokenizer = AutoTokenizer.from_pretrained(out)
    ids = tokenizer.apply_chat_template(PROMPT, add_generation_prompt=True, return_tensors="pt", return_dict=True)["input_ids"]
    merged = AutoModelForCausalLM.from_pretrained(out)
    base = AutoModelForCausalLM.from_pretrained(demo_model_dir)
    base_logits = _logits(base, ids)
    unmerged = PeftModel.from_pretrained(base, demo_lora_run / "adapter")
    reference = _logits(unmerged, ids)
    assert (_logits(merged, ids) - reference).abs().max() < 1e-4
    assert (reference - base_logits).abs().max() > 0.1  # the adapter matters, so the match above means something
    generated = merged.generate(ids, max_new_tokens=6, do_sample=False)
    assert generated.shape[1] > ids.shape[1]
    report = json.loads((out / "tunelab_export.json").read_text())
    assert report["verify"]["passed"] and report["verify"]["max_abs_diff"] < report["verify"]["tolerance"]


def test_export_serves_with_the_registry_template(demo_export, demo_lora_run: Path) -> None:
    from transformers import AutoTokenizer, GenerationConfig

    from tunelab.core.config import load_config
    from tunelab.core.ollama import modelfile
    from tunelab.core.templates import registry

    out, _ = demo_export
    template = registry().get("chatml")
    assert (out / "chat_template.jinja").read_text() == template.serving_jinja  # no training-only generation tags
    tokenizer = AutoTokenizer.from_pretrained(out)
    rendered = tokenizer.apply_chat_template(PROMPT, add_generation_prompt=True, tokenize=False)
    assert rendered == template.render(PROMPT, add_generation_prompt=True).text
    generation = GenerationConfig.from_pretrained(out)
    eos = generation.eos_token_id if isinstance(generation.eos_token_id, list) else [generation.eos_token_id]
    assert tokenizer.convert_tokens_to_ids("<|im_end|>") in eos
    text = (out / "Modelfile").read_text()
    assert text == modelfile(template, base="./model-q8_0.gguf")
    assert 'PARAMETER stop "<|im_end|>"' in text and "<|im_start|>assistant" in text
    assert load_config(out / "tunelab_run.yaml") == load_config(demo_lora_run / "config.yaml")


def test_gguf_export_reads_back_with_the_merged_weights(demo_export) -> None:
    import gguf
    import numpy as np
    from safetensors.torch import load_file
    from transformers import AutoTokenizer

    from tunelab.engine.gguf import permute_qk

    out, _ = demo_export
    reader = gguf.GGUFReader(str(out / "model-q8_0.gguf"))
    tensors = {t.name: t for t in reader.tensors}
    weights = {}
    for shard in out.glob("model-*.safetensors"):
        weights.update(load_file(shard))
    config = json.loads((out / "config.json").read_text())
    assert len(tensors) == len(weights)  # untied demo: every HF tensor has its GGUF twin
    assert tensors["blk.0.attn_q.weight"].tensor_type == gguf.GGMLQuantizationType.Q8_0
    assert tensors["blk.0.attn_norm.weight"].tensor_type == gguf.GGMLQuantizationType.F32

    def values(name):
        t = tensors[name]
        return gguf.quants.dequantize(t.data, t.tensor_type)

    embed = weights["model.embed_tokens.weight"].numpy()
    assert np.abs(values("token_embd.weight").reshape(embed.shape) - embed).max() <= 0.005 * np.abs(embed).max()
    q = permute_qk(weights["model.layers.0.self_attn.q_proj.weight"].numpy(), config["num_attention_heads"])
    assert np.abs(values("blk.0.attn_q.weight").reshape(q.shape) - q).max() <= 0.005 * np.abs(q).max()
    tokenizer = AutoTokenizer.from_pretrained(out)
    fields = reader.fields
    assert int(fields["tokenizer.ggml.eos_token_id"].parts[-1][0]) == tokenizer.convert_tokens_to_ids("<|im_end|>")
    assert bytes(fields["tokenizer.chat_template"].parts[-1]).decode() == (out / "chat_template.jinja").read_text()
    assert int(fields["llama.block_count"].parts[-1][0]) == config["num_hidden_layers"]


CONVERSATION = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Who are you?"},
                {"role": "assistant", "content": "Tuna."}, {"role": "user", "content": "Who made you?"}]


def test_exported_and_gguf_templates_render_in_plain_jinja2_and_the_modelfile(demo_export) -> None:
    import gguf

    from tests.core.test_templates_serving import plain_jinja
    from tunelab.core.templates import registry

    out, _ = demo_export
    template = registry().get("chatml")
    folder_source = (out / "chat_template.jinja").read_text()
    gguf_source = bytes(gguf.GGUFReader(str(out / "model-q8_0.gguf")).fields["tokenizer.chat_template"].parts[-1]).decode()
    assert "endgeneration" in template.source  # the registry form carries the training tags ...
    for source in (folder_source, gguf_source):  # ... the exported forms do not, and plain jinja2 renders them
        assert "generation %}" not in source and "generation -%}" not in source
        rendered = plain_jinja().from_string(source).render(messages=CONVERSATION, add_generation_prompt=True, bos_token="<s>",
                                                             eos_token="<|im_end|>")
        assert rendered == template.render(CONVERSATION, add_generation_prompt=True).text
    go = (out / "Modelfile").read_text().split('TEMPLATE """', 1)[1].split('"""', 1)[0]
    with_system = go.split("{{ if .System }}", 1)[1].split("{{ else }}", 1)[0] if "{{ if .System }}" in go else go.split("{{ .Response }}")[0]
    filled = with_system.replace("{{ .System }}", "Be brief.").replace("{{ .Prompt }}", "Who made you?")
    single = plain_jinja().from_string(folder_source).render(messages=[CONVERSATION[0], CONVERSATION[3]], add_generation_prompt=True,
                                                             bos_token="", eos_token="<|im_end|>")
    assert filled == single  # Ollama renders a turn exactly as the exported template does


def test_export_loads_in_transformers_4(demo_export) -> None:
    """The export (tokenizer, chat template, weights) loads and generates the same tokens in transformers 4.x."""
    import os

    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    python = os.environ.get("TUNELAB_TF4_PYTHON")
    if not python:
        pytest.skip("TUNELAB_TF4_PYTHON is not set (make tf4-venv builds .venv-tf4 with transformers 4.x)")
    out, _ = demo_export
    script = (
        "import json, sys, transformers\n"
        "from transformers import AutoModelForCausalLM, AutoTokenizer\n"
        "tok = AutoTokenizer.from_pretrained(sys.argv[1]); model = AutoModelForCausalLM.from_pretrained(sys.argv[1])\n"
        "messages = json.loads(sys.argv[2])\n"
        "text = tok.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)\n"
        "ids = tok(text, add_special_tokens=False, return_tensors='pt').input_ids\n"
        "gen = model.generate(ids, max_new_tokens=8, do_sample=False)[0, ids.shape[1]:].tolist()\n"
        "print(json.dumps({'version': transformers.__version__, 'class': type(tok).__name__, 'text': text, 'ids': ids[0].tolist(), 'gen': gen}))\n"
    )
    result = subprocess.run([python, "-c", script, str(out), json.dumps(CONVERSATION)], capture_output=True, text=True, timeout=300,
                            env={**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": ""})
    assert result.returncode == 0, result.stderr[-3000:]
    old = json.loads(result.stdout.strip().splitlines()[-1])
    assert old["version"].startswith("4.") and old["class"] == "PreTrainedTokenizerFast"
    tokenizer = AutoTokenizer.from_pretrained(out)
    text = tokenizer.apply_chat_template(CONVERSATION, add_generation_prompt=True, tokenize=False)
    ids = tokenizer(text, add_special_tokens=False, return_tensors="pt").input_ids
    with torch.no_grad():
        gen = AutoModelForCausalLM.from_pretrained(out).generate(ids, max_new_tokens=8, do_sample=False)[0, ids.shape[1]:].tolist()
    assert (old["text"], old["ids"], old["gen"]) == (text, ids[0].tolist(), gen)


@pytest.mark.vllm
def test_vllm_serves_the_export_and_the_tab_shows_its_answer(demo_export, tmp_path: Path) -> None:
    """`tunelab export --serve-check`: vLLM (its CPU build in its own venv, its own transformers) serves the export
    with the exported chat template and generation config, answers as the adapter taught it, with the same text as
    transformers' greedy reply, and the Export tab shows the answer."""
    import os

    from tunelab.webui.i18n import load_translations
    from tunelab.webui.studio import Studio
    from tunelab.webui.tabs.export import report_markdown

    if not os.environ.get("TUNELAB_VLLM_PYTHON"):
        pytest.skip("TUNELAB_VLLM_PYTHON is not set (make vllm-venv builds .venv-vllm)")
    out, stdout = demo_export
    assert "serve check: PASSED" in stdout
    report = json.loads((out / "tunelab_export.json").read_text())
    served = report["serve_check"]
    assert "Tuna" in served["answer"] and served["matches_transformers"] and served["finish_reason"] == "stop"
    shown = report_markdown(Studio(runs_dir=tmp_path, translations=load_translations()), report)
    assert served["answer"] in shown and "vLLM serves it" in shown


def _tiny_adapter(base_dir: Path, folder: Path, use_dora: bool) -> Path:
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    torch.manual_seed(1)
    model = AutoModelForCausalLM.from_pretrained(base_dir)
    # init_lora_weights=False: B is random, not zero, so the adapter changes the outputs
    peft_model = get_peft_model(model, LoraConfig(r=4, lora_alpha=8, target_modules="all-linear", use_dora=use_dora,
                                                  init_lora_weights=False))
    peft_model.save_pretrained(folder)
    AutoTokenizer.from_pretrained(base_dir).save_pretrained(folder)
    return folder


def test_dora_adapter_merges_and_bf16_export_stays_within_tolerance(tiny_model_dir: Path, tmp_path: Path) -> None:
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from tunelab.core.export_config import ExportConfig
    from tunelab.engine.export import export_model

    adapter = _tiny_adapter(tiny_model_dir, tmp_path / "dora", use_dora=True)
    assert json.loads((adapter / "adapter_config.json").read_text())["use_dora"] is True
    report = export_model(ExportConfig(adapter=str(adapter), out=str(tmp_path / "fp32"), dtype="fp32"))
    assert report["verify"]["passed"] and report["verify"]["adapter_effect"] > 100 * report["verify"]["max_abs_diff"]
    tokenizer = AutoTokenizer.from_pretrained(tmp_path / "fp32")
    ids = tokenizer("Hello there, who are you", return_tensors="pt").input_ids
    reference = _logits(PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny_model_dir), adapter), ids)
    assert (_logits(AutoModelForCausalLM.from_pretrained(tmp_path / "fp32"), ids) - reference).abs().max() < 1e-4

    report = export_model(ExportConfig(adapter=str(adapter), out=str(tmp_path / "bf16"), dtype="bf16"))
    config = json.loads((tmp_path / "bf16" / "config.json").read_text())
    assert config.get("dtype", config.get("torch_dtype")) == "bfloat16"
    assert report["verify"]["passed"] and report["verify"]["max_abs_diff"] > 0


def test_merge_refuses_a_quantized_base(tiny_model_dir: Path) -> None:
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, BitsAndBytesConfig

    from tunelab.engine.export import QuantizedBaseError, merge_adapter

    quantized = AutoModelForCausalLM.from_pretrained(
        tiny_model_dir, quantization_config=BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_compute_dtype=torch.float32)
    )
    peft_model = get_peft_model(quantized, LoraConfig(r=4, target_modules="all-linear"))
    with pytest.raises(QuantizedBaseError, match="unquantized"):
        merge_adapter(peft_model)


def test_qlora_run_export_is_refused_then_done_unquantized(demo_lora_run: Path, tmp_path: Path) -> None:
    import shutil

    from tunelab.core.config import dump_config, load_config

    run = tmp_path / "qlora-run"
    shutil.copytree(demo_lora_run / "adapter", run / "adapter")
    shutil.copy(demo_lora_run / "status.json", run / "status.json")
    config = load_config(demo_lora_run / "config.yaml").model_copy(update={"method": "qlora", "quantization": "4bit"})
    (run / "config.yaml").write_text(dump_config(config))
    refused = _cli("export", "--run", str(run), "--no-verify")
    assert refused.returncode == 2 and "4bit quantized base" in refused.stderr and "--reload-unquantized" in refused.stderr
    assert "Traceback" not in refused.stderr and not (run / "merged").exists()
    done = _cli("export", "--run", str(run), "--reload-unquantized")
    assert done.returncode == 0, done.stderr[-2000:]
    assert "verify: PASSED" in done.stdout and (run / "merged" / "config.json").is_file()


def test_export_user_errors_are_one_line(demo_lora_run: Path, tmp_path: Path) -> None:
    missing = _cli("export", "--run", str(tmp_path / "nope"))
    assert missing.returncode == 2 and "no such run directory" in missing.stderr and "Traceback" not in missing.stderr
    (tmp_path / "taken").mkdir()
    (tmp_path / "taken" / "x").write_text("keep me")
    taken = _cli("export", "--run", str(demo_lora_run), "--out", str(tmp_path / "taken"))
    assert taken.returncode == 2 and "--overwrite" in taken.stderr and (tmp_path / "taken" / "x").read_text() == "keep me"
    bad = _cli("export", "--run", str(demo_lora_run), "--shard-size", "lots")
    assert bad.returncode == 2 and "shard_size" in bad.stderr and "5GB" in bad.stderr


def test_push_to_hub_offline_says_why(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # No hub here: the upload must fail with a message naming the repo and the cause, after the export exists.
    from tunelab.engine.export import ExportError, push_to_hub

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    (tmp_path / "config.json").write_text("{}")
    with pytest.raises(ExportError, match=r"pushing to someone/model failed"):
        push_to_hub(tmp_path, "someone/model", lambda message, **_: None)


def test_gguf_export_generates_like_transformers_in_llama_cpp(demo_export) -> None:
    llama_cpp = pytest.importorskip("llama_cpp", reason="llama-cpp-python is not installed (optional: it builds from source)")
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    out, _ = demo_export
    tokenizer = AutoTokenizer.from_pretrained(out)
    text = tokenizer.apply_chat_template(PROMPT, add_generation_prompt=True, tokenize=False)
    ids = tokenizer(text, add_special_tokens=False).input_ids
    llm = llama_cpp.Llama(model_path=str(out / "model-q8_0.gguf"), n_ctx=256, verbose=False)
    assert llm.tokenize(text.encode(), add_bos=False, special=True) == ids
    assert llm.token_eos() == tokenizer.convert_tokens_to_ids("<|im_end|>")
    theirs = llm.create_completion(text, max_tokens=10, temperature=0.0)["choices"][0]["text"]
    model = AutoModelForCausalLM.from_pretrained(out)
    with torch.no_grad():
        ours = model.generate(torch.tensor([ids]), max_new_tokens=10, do_sample=False)
    assert theirs == tokenizer.decode(ours[0, len(ids):], skip_special_tokens=True)
