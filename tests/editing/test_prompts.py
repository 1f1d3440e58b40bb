"""Context templates: the chat contexts (settings.chat_contexts) on a tiny model with a chat template."""

from app.editing.editor import Editor
from app.editing.prompts import chat_context_templates, encode_with_subject, fill
from app.editing.settings import CHAT_USER_TURNS
from tests.utils.editing import FACTS, tiny_lm, tiny_settings

CHAT = "{% for m in messages %}<{{ m['role'] }}> {{ m['content'] }}\n{% endfor %}<assistant> "


def test_chat_contexts_put_the_fact_in_the_assistant_turn_after_a_generic_user_request():
    lm = tiny_lm()
    tok = lm.tokenizer
    tok.chat_template = CHAT
    templates = chat_context_templates(tok, CHAT_USER_TURNS[:2])
    assert templates == [f"<user> {turn}\n<assistant> {{}}" for turn in CHAT_USER_TURNS[:2]]
    fact = FACTS[0]
    enc = encode_with_subject(tok, fill(templates[0], fact.prompt), fact.subject)
    # The subject's last token is read inside the assistant's turn.
    assert tok.decode(enc.ids[: enc.lookup + 1]).endswith("Danielle Darrieux")
    assert "<assistant>" in tok.decode(enc.ids[: enc.lookup])

    tok.chat_template = None
    assert chat_context_templates(tok, CHAT_USER_TURNS) == []


def test_the_editor_asks_its_facts_in_chat_contexts_too():
    lm = tiny_lm()
    lm.tokenizer.chat_template = CHAT
    settings = tiny_settings(max_steps=2, lambda_p=0.0, n_prefixes=1, chat_contexts=3)
    editor = Editor(lm, settings)
    assert len(editor.templates) == 1 + 1 + 3 and editor.templates[0] == "{}"
    assert editor.templates[2:] == chat_context_templates(lm.tokenizer, CHAT_USER_TURNS)
    result = editor.apply(FACTS, batch_id=1)
    assert all(d.u.shape[1] == len(FACTS) for d in result.deltas)
