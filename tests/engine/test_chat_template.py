"""Prompt rendering with chat templates, including the thinking markers of reasoning models."""

from __future__ import annotations

from tercet.engine.base import Conversation, Turn
from tercet.engine.chat_template import HARMONY, NATIVE_THINK, SCRATCHPAD, ChatTemplate
from tercet.wire.content import TextBlockParam

# Shaped like Qwen3's template: it knows <think>, and closes an empty block when thinking is off.
QWEN_LIKE = (
    "{% for m in messages %}<|im_start|>{{ m.role }}\n{{ m.content }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n"
    "{% if enable_thinking is defined and not enable_thinking %}<think>\n\n</think>\n\n{% endif %}"
    "{% endif %}"
)
# Shaped like DeepSeek-R1's: the generation prompt itself opens the block.
R1_LIKE = (
    "{% for m in messages %}<|{{ m.role }}|>{{ m.content }}{% endfor %}"
    "{% if add_generation_prompt %}<|Assistant|><think>\n{% endif %}"
)
# Shaped like gpt-oss's harmony template: channels instead of <think>.
HARMONY_LIKE = (
    "{% for m in messages %}<|start|>{{ m.role }}<|message|>{{ m.content }}<|end|>{% endfor %}"
    "{% if add_generation_prompt %}<|start|>assistant{% endif %}"
    "{# the assistant writes <|channel|>analysis or <|channel|>final #}"
)
CHATML_NO_THINK = "{% for m in messages %}{{ m.role }}: {{ m.content }}\n{% endfor %}assistant:"


def conversation(thinking: bool) -> Conversation:
    return Conversation(
        system=[TextBlockParam(type="text", text="Be brief.")],
        turns=[Turn("user", [TextBlockParam(type="text", text="Hi")])],
        thinking=thinking,
    )


def template(source: str) -> ChatTemplate:
    return ChatTemplate(source, model_id="m", bos_token="<s>", eos_token="</s>")


def test_native_templates_are_recognised() -> None:
    assert template(QWEN_LIKE).thinking == NATIVE_THINK
    assert template(R1_LIKE).thinking == NATIVE_THINK
    assert template(CHATML_NO_THINK).thinking == SCRATCHPAD
    assert template(HARMONY_LIKE).thinking == HARMONY


def test_native_thinking_uses_the_template_and_opens_the_block_once() -> None:
    qwen = template(QWEN_LIKE)
    on = qwen.render(conversation(thinking=True))
    assert on.endswith("<|im_start|>assistant\n<think>\n")
    assert SCRATCHPAD.instruction not in on  # a native thinker needs no instruction
    off = qwen.render(conversation(thinking=False))
    assert off.endswith("<think>\n\n</think>\n\n")  # the template's own "no thinking"
    r1 = template(R1_LIKE).render(conversation(thinking=True))
    assert r1.endswith("<|Assistant|><think>\n") and r1.count("<think>") == 1


def test_scratchpad_thinking_asks_and_opens() -> None:
    plain = template(CHATML_NO_THINK)
    on = plain.render(conversation(thinking=True))
    assert SCRATCHPAD.instruction is not None and SCRATCHPAD.instruction in on
    assert on.endswith("assistant:<think>\n")
    assert "<think>" not in plain.render(conversation(thinking=False))


def test_harmony_thinks_in_the_analysis_channel_and_answers_in_final() -> None:
    harmony = template(HARMONY_LIKE)
    on = harmony.render(conversation(thinking=True))
    assert on.endswith("<|start|>assistant<|channel|>analysis<|message|>")
    off = harmony.render(conversation(thinking=False))
    assert off.endswith("<|start|>assistant<|channel|>final<|message|>")  # no thinking at all
    # At the budget the engine ends the analysis and opens the final channel itself.
    assert HARMONY.forced_close.startswith(HARMONY.close)
    assert HARMONY.forced_close.endswith(HARMONY.answer_open)
    assert HARMONY.reopen is None  # special-token markers: no thinking between tool calls


# Shaped like SmolLM2's: a default system prompt when the conversation has none, and a
# template that trims what it is given.
DEFAULT_SYSTEM = (
    "{% for m in messages %}{% if loop.first and m.role != 'system' %}<|im_start|>system\n"
    "You are helpful.<|im_end|>\n{% endif %}<|im_start|>{{ m.role }}\n{{ m.content }}"
    "<|im_end|>\n{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
TRIMMING = (
    "{% for m in messages %}<|im_start|>{{ m.role }}\n{{ m.content | trim }}<|im_end|>\n"
    "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def asked(*texts: str) -> Conversation:
    return Conversation(
        system=(), turns=[Turn("user", [TextBlockParam(type="text", text=t) for t in texts])]
    )


def test_the_template_header_before_the_first_message_is_located() -> None:
    marked = template(DEFAULT_SYSTEM).render_with_boundaries(asked("Hi", "there"))
    header = "<|im_start|>system\nYou are helpful.<|im_end|>\n<|im_start|>user\n"
    assert marked.text == header + "Hi\n\nthere<|im_end|>\n<|im_start|>assistant\n"
    assert marked.content_start == len(header)
    assert marked.ends == [len(header) + 2, len(header) + 9]


def test_a_template_that_moves_text_at_the_header_mark_still_gives_block_ends() -> None:
    # Trimming drops the leading spaces only while nothing precedes them: the mark did.
    marked = template(TRIMMING).render_with_boundaries(asked("  Hi"))
    assert marked.text == "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n"
    assert marked.content_start == 0
    assert marked.ends == [len("<|im_start|>user\nHi")]
