"""The chat explorer of chapter 13, driven without a kernel, on two micro GPTs with random weights.

The replies it shows are checked against `finetune.chat_reply` itself, its grades against
`chats.grade_reply`, the template picture against `render_chat`'s ids and loss mask, and the
table of recorded chats against the conversations it is given.
"""

from __future__ import annotations

import pytest
import torch

from llmcourse.checks import ArgumentError
from llmcourse.data.tinyworld import World
from llmcourse.data.tinyworld.chats import Question, grade_reply
from llmcourse.finetune import chat_reply, render_chat
from llmcourse.model import GPT, GPTConfig
from llmcourse.widgets.chat import (
    ChatExplorer, chat_explorer, chat_tokens, conversation_html, example_questions, sample_chats_html,
    template_figure,
)

CHAT = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Where is Ardmark?"},
        {"role": "assistant", "content": "In the east."}, {"role": "user", "content": "And Zerland?"},
        {"role": "assistant", "content": "I don't know."}]


@pytest.fixture(scope="module")
def models(micro_tokenizer):
    """Two different micro GPTs (random weights, seeds 0 and 1) sharing the micro tokenizer. Their
    output layer is not tied to the embedding: a random tied model repeats its last input token,
    here <|assistant|>, which ends every reply at once."""
    pair = {}
    for seed, name in enumerate(("first", "second")):
        torch.manual_seed(seed)
        config = GPTConfig(vocab_size=micro_tokenizer.vocab_size, block_size=64, n_layer=1, n_head=2, n_embd=16,
                           tie_weights=False)
        pair[name] = (GPT(config).eval(), micro_tokenizer)
    return pair


def test_pressing_ask_fills_every_models_reply(models):
    explorer = chat_explorer(models, ["What is 2 plus 3?"], max_new_tokens=6)
    assert isinstance(explorer, ChatExplorer)
    question = "Who lives in Bramby?"
    explorer.question.value = question  # typing asks nothing yet
    assert "Who lives" not in explorer.message
    explorer.ask.click()
    messages = [{"role": "user", "content": question}]
    for name, (model, tokenizer) in models.items():
        expected = chat_reply(model, tokenizer, messages, 6)
        assert explorer.replies[name] == expected
        assert f"<b>{name}</b>" in explorer.outputs[name].value
    assert all(explorer.replies.values()), "every model wrote something"
    assert explorer.replies["first"] != explorer.replies["second"], "two different models, two replies"
    assert explorer.grades == {}, "a typed question has no reference answer"
    tokenizer = models["first"][1]
    assert explorer.prompt == tokenizer.decode(render_chat(tokenizer, messages, add_generation_prompt=True)[0])
    assert explorer.prompt.endswith("<|assistant|>") and "Who lives in Bramby?" in explorer.message


def test_choosing_an_example_asks_it_and_grades_the_replies(models):
    known = Question("Ardmark", "capital", "What is the capital of Ardmark?", "The capital of Ardmark is Bramby.",
                     ("Bramby",), "heldout")
    explorer = ChatExplorer(models, ["Hello!", known], max_new_tokens=5, system="Be brief.")
    assert explorer.question.value == "Hello!" and set(explorer.replies) == {"first", "second"}
    explorer.examples.value = 1
    assert explorer.question.value == known.text
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": known.text}]
    for name, (model, tokenizer) in models.items():
        reply = chat_reply(model, tokenizer, messages, 5)
        assert explorer.replies[name] == reply
        assert explorer.grades[name] == grade_reply(known, reply)
        assert explorer.grades[name] in explorer.outputs[name].value
    assert "Reference answer" in explorer.message and explorer.prompt.startswith("<|endoftext|><|system|>")


def test_a_never_seen_entity_expects_a_refusal_not_its_true_answer(models):
    never_seen = Question("Haveth", "region", "Where is Haveth?", "Haveth is a country in the west.", ("west",),
                          "unseen")
    explorer = ChatExplorer(models, [never_seen], max_new_tokens=4)
    assert "honest reply is a refusal" in explorer.message and "west" not in explorer.message
    for name, reply in explorer.replies.items():
        assert explorer.grades[name] == grade_reply(never_seen, reply) != "correct"


def test_empty_or_too_long_questions_are_explained_not_raised(models):
    explorer = ChatExplorer(models, ["Hi"], max_new_tokens=4)
    explorer.question.value = "   "
    explorer.ask.click()
    assert explorer.replies == {} and "Type a question" in explorer.message
    assert all(output.value == "" for output in explorer.outputs.values())
    explorer.question.value = "where " * 80  # far more than the 64-token context
    explorer.ask.click()
    assert explorer.replies == {} and "Cannot ask this" in explorer.message
    with pytest.raises(ArgumentError, match="models is empty"):
        ChatExplorer({})


def test_chat_tokens_follow_render_chats_ids_and_mask(micro_tokenizer):
    ids, mask = render_chat(micro_tokenizer, CHAT)
    tokens = chat_tokens(micro_tokenizer, CHAT)
    assert [t.supervised for t in tokens] == mask
    assert "".join(t.text for t in tokens) == micro_tokenizer.decode(ids)
    assert tokens[0].role == "document" and tokens[0].text == "<|endoftext|>" and tokens[0].special
    # every message is its role token, its text and <|end|>, all of that message's role
    ends = [i for i, t in enumerate(tokens) if t.text == "<|end|>"]
    assert [tokens[i].role for i in ends] == [m["role"] for m in CHAT]
    assert all(t.supervised == (t.role == "assistant" and not t.text.startswith("<|assistant"))
               for t in tokens)
    with_prompt = chat_tokens(micro_tokenizer, CHAT[:2], add_generation_prompt=True)
    assert with_prompt[-1].text == "<|assistant|>" and not with_prompt[-1].supervised


def test_template_figure_draws_one_box_per_token(micro_tokenizer):
    fig = template_figure(micro_tokenizer, CHAT, chars_per_line=30)
    boxes = fig.axes[0].patches
    tokens = chat_tokens(micro_tokenizer, CHAT)
    assert len(boxes) == len(tokens)
    thick = [box.get_linewidth() > 1 for box in boxes]
    assert thick == [t.supervised for t in tokens], "the supervised tokens are outlined"
    rows = {round(box.get_y(), 3) for box in boxes}
    assert len(rows) > 1, "a narrow figure wraps the tokens onto several lines"


def test_sample_chats_table_has_a_row_per_user_turn_and_escapes_text():
    samples = {
        "base": [[{"role": "user", "content": "Q1"}, {"role": "assistant", "content": "<b>story</b>"}],
                 [{"role": "user", "content": "Q2"}, {"role": "assistant", "content": "a"},
                  {"role": "user", "content": "Q3"}, {"role": "assistant", "content": "b"}]],
        "tuned": [[{"role": "user", "content": "Q1"}, {"role": "assistant", "content": "A1"}],
                  [{"role": "user", "content": "Q2"}, {"role": "assistant", "content": "A2"},
                   {"role": "user", "content": "Q3"}, {"role": "assistant", "content": "A3"}]],
    }
    table = sample_chats_html(samples)
    assert table.count("<tr>") == 1 + 3  # a header, then Q1, Q2, Q3
    assert "&lt;b&gt;story&lt;/b&gt;" in table and "<b>story</b>" not in table
    assert table.index("Q3") < table.index("A3") and ">base<" in table and ">tuned<" in table
    with pytest.raises(ArgumentError, match="different questions"):
        sample_chats_html({"a": samples["base"], "b": samples["base"][::-1]})
    with pytest.raises(ArgumentError, match="same conversations"):
        sample_chats_html({"a": samples["base"], "b": samples["base"][:1]})
    assert "user" in conversation_html(samples["base"][0]) and "&lt;b&gt;" in conversation_html(samples["base"][0])


def test_example_questions_cover_each_kind_the_chapter_measures():
    examples = example_questions(World.generate(0))
    kinds = [q.split for q in examples if isinstance(q, Question)]
    assert kinds[:3] == ["sft", "heldout", "unseen"] and kinds.count("arithmetic") == 2
    assert any(isinstance(q, str) for q in examples)
