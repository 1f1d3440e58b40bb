"""Every error a user can hit says what is wrong, and the CLI exits non-zero with one line."""

import pytest
from typer.testing import CliRunner

from app.cli import app
from app.editing.adapters import adapter_for
from app.editing.model import ModelLoadError, load_model
from app.editing.types import EditError, EditRequest
from tests.utils.editing import build_tiny_model

runner = CliRunner()


def _edit(*extra, prompt="The mother tongue of {} is", subject="Danielle Darrieux", target="English"):
    return runner.invoke(app, ["edit", "--prompt", prompt, "--subject", subject, "--target", target, *extra])


def _one_line_error(result, fragment):
    assert result.exit_code == 2, result.output
    lines = [line for line in result.output.strip().splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error:"), result.output
    assert fragment in lines[0]


def test_missing_model_path(tmp_path):
    with pytest.raises(ModelLoadError, match="does not exist"):
        load_model(tmp_path / "nope")
    _one_line_error(_edit("--model", str(tmp_path / "nope")), "does not exist")


def test_folder_without_a_model(tmp_path):
    _one_line_error(_edit("--model", str(tmp_path)), "no config.json")


def test_file_that_is_not_gguf(tmp_path):
    f = tmp_path / "weights.bin"
    f.write_bytes(b"x")
    _one_line_error(_edit("--model", str(f)), "not a .gguf")


def test_unknown_architecture(tmp_path):
    from transformers import GPTNeoXConfig, GPTNeoXForCausalLM

    _, tok = build_tiny_model("llama")
    model = GPTNeoXForCausalLM(
        GPTNeoXConfig(
            vocab_size=len(tok), hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64
        )
    )
    with pytest.raises(EditError, match="unsupported architecture 'gpt_neox'"):
        adapter_for(model)
    model.save_pretrained(tmp_path / "neox")
    tok.save_pretrained(tmp_path / "neox")
    _one_line_error(_edit("--model", str(tmp_path / "neox")), "unsupported architecture")


def test_subject_not_in_prompt():
    with pytest.raises(EditError, match=r"write 'The mother tongue of \{\} is'"):
        EditRequest("The mother tongue of Danielle Darrieux is", "Danielle Darrieux", "English").validate()
    _one_line_error(_edit(prompt="The mother tongue of her is"), "exactly once")
    _one_line_error(_edit(prompt="{} and {} speak"), "exactly once")


def test_empty_target_and_subject():
    _one_line_error(_edit(target=" "), "target_new is empty")
    _one_line_error(_edit(subject=""), "subject is empty")


def test_target_longer_than_the_bound():
    _one_line_error(_edit(target="word " * 40), "bound is 128")


def test_layers_beyond_the_model(tiny_model_dir):
    _one_line_error(_edit("--model", str(tiny_model_dir), "--layers", "4,5,6"), "has 6 layers")


def test_unknown_preset():
    _one_line_error(_edit("--preset", "gpt9"), "unknown preset")


def test_edit_runs_on_a_tiny_model(tiny_model_dir, tmp_path):
    corpus = tmp_path / "c.txt"
    corpus.write_text("Paris is the capital of France. The river is long.\n" * 50)
    result = _edit(
        "--model",
        str(tiny_model_dir),
        "--layers",
        "1,2",
        "--corpus",
        str(corpus),
        "--cache-dir",
        str(tmp_path / "cache"),
        "--max-new-tokens",
        "3",
    )
    assert result.exit_code == 0, result.output
    assert "P(target) before → after" in result.output
